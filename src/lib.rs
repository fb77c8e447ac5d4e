//! # moonlens — text search over camera frames, on the board
//!
//! A person types "a rabbit next to the full moon" on a serial console or a Unix socket and
//! gets back the camera frames that match. The library is layered; each layer knows only the
//! ones below it, and each binary is a thin shell over it.
//!
//! ```text
//! ingest:  source ──frame──▶ encoder.image ──embedding──▶ index.append
//! query:   transport ──bytes──▶ protocol::parse ──Request──▶ encoder.text ──▶ index.search
//!          transport ◀──bytes── protocol::render ◀──Response──────────────────┘
//! ```
//!
//! - [`bundle`]: read and verify a model bundle (`bundle.toml`, sha256 of every file).
//!   Knows nothing of tract.
//! - [`encoder`]: preprocessing, tokenization and the two tract plans; `embed_image`,
//!   `embed_text`.
//! - [`error`]: one error type whose messages say what to do.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod bundle;
pub mod cli;
pub mod daemon;
pub mod encoder;
pub mod error;
#[cfg(feature = "host")]
pub mod host;
pub mod index;
pub mod protocol;
pub mod source;

pub use error::{Error, Result};
