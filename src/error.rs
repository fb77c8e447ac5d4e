//! One error type for the library: a message that says what failed and, where it can, what
//! to do about it. Context is prepended as the error travels up (`"loading bundle X: …"`).

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    msg: String,
}

/// The failures a caller may act on rather than only report; everything else is `Other`.
/// The kind survives [`Context`], so it reaches the top however much context is added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    Other,
    /// The index was built with another model bundle (re-index into a new directory).
    BundleMismatch,
    /// Another process holds the index's writer lock.
    IndexLocked,
    /// The file system cannot hold the ring (bytes needed vs free in the message).
    NoSpace,
    /// Every id of the index is spent (re-index into a new directory).
    IdsExhausted,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(msg: impl Into<String>) -> Self {
        Error::of(ErrorKind::Other, msg)
    }
    pub fn of(kind: ErrorKind, msg: impl Into<String>) -> Self {
        Error {
            kind,
            msg: msg.into(),
        }
    }
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
    pub fn message(&self) -> &str {
        &self.msg
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for Error {}

/// `result.context("reading X")?` prefixes the error with what was being done.
pub trait Context<T> {
    fn context(self, what: impl fmt::Display) -> Result<T>;
}

impl<T, E: fmt::Display + 'static> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl fmt::Display) -> Result<T> {
        self.map_err(|e| {
            // our own errors keep their kind; any other error type is `Other`
            let kind = (&e as &dyn std::any::Any)
                .downcast_ref::<Error>()
                .map_or(ErrorKind::Other, Error::kind);
            Error::of(kind, format!("{what}: {e}"))
        })
    }
}

/// `bail!("…")` returns an [`Error`] built with `format!`.
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => { return Err($crate::Error::new(format!($($arg)*))) };
}
