//! Frame sources behind one trait: a V4L2 camera, a directory replay, and a fault injector
//! that wraps either (the tests' first-class tool, like smoltcp's fault-injecting device).
//!
//! A source never ends the daemon: a transient failure is a [`Next::Failed`] event (counted,
//! logged, retried by the source itself), only a finite replay says [`Next::Done`].

pub mod convert;
pub mod dir;
pub mod fault;
#[cfg(target_os = "linux")]
pub mod v4l;

use crate::error::{Error, Result};
use image::DynamicImage;
use std::time::Duration;

pub struct Frame {
    pub image: DynamicImage,
    /// What the entry is called: a camera name or a replayed file name.
    pub label: String,
    pub ts_ms: i64,
}

pub enum Next {
    Frame(Frame),
    /// Nothing this time (a decode error, a device that vanished…); the source retries.
    Failed(String),
    /// A finite source has nothing more.
    Done,
}

pub trait FrameSource: Send {
    /// The source id stored with every entry (at most 16 bytes are kept).
    fn id(&self) -> &str;
    /// Blocks until the next frame or event.
    fn next(&mut self) -> Next;
    /// A live camera produces frames whether we keep up or not: when the encoder falls
    /// behind, its frames are dropped. A replay waits instead.
    fn is_live(&self) -> bool;
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Options shared by the sources, from the command line or config file.
#[derive(Debug, Clone)]
pub struct SourceOptions {
    pub fps: f64,
    pub width: u32,
    pub height: u32,
    pub looping: bool,
}

/// `v4l:/dev/videoN` or `dir:PATH`.
pub fn open(spec: &str, opts: &SourceOptions) -> Result<Box<dyn FrameSource>> {
    if let Some(path) = spec.strip_prefix("dir:") {
        return Ok(Box::new(dir::DirSource::open(
            path,
            Duration::from_secs_f64(1.0 / opts.fps.max(0.001)),
            opts.looping,
        )?));
    }
    if let Some(dev) = spec.strip_prefix("v4l:") {
        #[cfg(target_os = "linux")]
        return Ok(Box::new(v4l::V4lSource::new(dev, opts)));
        #[cfg(not(target_os = "linux"))]
        return Err(Error::new(format!(
            "v4l:{dev}: V4L2 cameras exist only on Linux"
        )));
    }
    Err(Error::new(format!(
        "source {spec:?}: use v4l:/dev/videoN or dir:PATH"
    )))
}
