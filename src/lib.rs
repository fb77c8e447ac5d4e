//! # moonlens — text search over camera frames, on the board
//!
//! A person types "a rabbit next to the full moon" on a serial console or a Unix socket and
//! gets back the camera frames that match. The library is layered; each layer knows only the
//! ones below it, and each binary is a thin shell over it.
//!
//! ```text
//! ingest:  source ──frame──▶ encoder.image ──embedding + kept outputs + regions──▶ index.append_frame
//! query:   transport ──bytes──▶ protocol::parse ──Request──▶ encoder.text ──▶ index.search_with
//!          transport ◀──bytes── protocol::emit  ◀──Response──────────────────┘
//! learn:   tag ──▶ index::tags ──▶ host::train::site ──bundle──▶ reload:
//!          index features ──▶ encoder::reproject ──▶ index.ml.next ──rename──▶ index
//! ```
//!
//! - [`bundle`]: read and verify a model bundle (`bundle.toml`, sha256 of every file).
//!   Knows nothing of tract.
//! - [`encoder`]: preprocessing, tokenization and the tract plans; `embed_image`,
//!   `embed_text` (routed to the bundle's multilingual text tower when the query needs it:
//!   by script, and by `encoder::language`'s classifier for unaccented text that is not
//!   English);
//!   `encoder::rewrite` unpacks 4-bit weight blocks before tract reads a graph;
//!   `encoder::reproject` cuts the head out of an image tower (kept outputs → embedding);
//!   `encoder::regions` runs the bridge over each cell of the backbone's feature map
//!   (region embeddings).
//! - [`error`]: one error type whose messages say what to do.
//! - [`index`]: the memory-mapped ring of quantized embeddings and thumbnails, and of the
//!   frozen backbones' outputs each embedding came from (`index::features`) and of a few
//!   region embeddings per frame (`index::regions`), exact top-k search (candidates
//!   re-scored by their best region), re-projection into another bundle; the operator's tags
//!   (`index::tags`)
//!   (`src/index/FORMAT.md`; the slot layout once, in `index::slot`).
//! - [`protocol`]: typed requests parsed from bounded lines of bytes (`protocol::parse`),
//!   typed replies rendered in the request's form (`protocol::emit`).
//! - [`source`]: frame sources (V4L2, a directory replay, a fault injector for tests).
//! - [`daemon`]: ingest, transports (socket, serial, console), watches, reload.
//! - `host` (feature `host`, workstation only): offline training of the projection heads
//!   (`host::train`, hand-written gradients), distillation of a multilingual text tower
//!   (`host::train::distill`), a new image head from an index's tags (`host::train::site`),
//!   export to a bundle (`host::export`), features cache,
//!   evaluation, contact sheets and benchmarks.
//!
//! ## In code
//!
//! The embedded default bundle, a fresh index, one frame in and one query out (what the
//! daemon does for every frame and every `search` line):
//!
//! ```
//! use moonlens::{bundle::Bundle, encoder::Encoder, index::Index};
//! use moonlens::index::search::Filter;
//! # fn main() -> moonlens::Result<()> {
//! let bundle = Bundle::open(concat!(env!("CARGO_MANIFEST_DIR"), "/models/default"))?;
//! let encoder = Encoder::load(&bundle)?;
//! let dir = std::env::temp_dir().join(format!("moonlens-doc-{}", std::process::id()));
//! # let _ = std::fs::remove_dir_all(&dir);
//! let index = Index::open_or_create(&dir, encoder.dim(), 100, bundle.id)?;
//! let rabbit = concat!(env!("CARGO_MANIFEST_DIR"), "/models/samples/rabbit.png");
//! let frame = image::open(rabbit).expect("a sample frame");
//! let id = index.append(0, "cam0", "rabbit.png", &encoder.embed_image(&frame)?, &[])?;
//! let hits = index.search(&encoder.embed_text("a rabbit")?, 5, &Filter::default());
//! assert_eq!(hits[0].seq, id);
//! # drop(index);
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok(())
//! # }
//! ```
//!
//! ```text
//! training:     pairs ──▶ host::features (frozen towers, cached) ──▶ host::train ──heads──▶
//!               host::export ──▶ bundle the daemon loads unchanged
//! distillation: parallel text ──▶ host::sentences (teacher targets, student inputs, cached)
//!               ──▶ host::train::distill ──head──▶ host::export (--teacher) ──▶ [multilingual]
//! ```
#![deny(unsafe_op_in_unsafe_fn)]

pub mod bundle;
pub mod daemon;
pub mod encoder;
pub mod error;
#[cfg(feature = "fleet")]
pub mod fleet;
#[cfg(feature = "host")]
pub mod host;
pub mod index;
pub mod protocol;
pub mod source;

pub use error::{Error, ErrorKind, Result};
