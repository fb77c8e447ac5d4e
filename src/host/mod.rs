//! Workstation-only work (feature `host`): evaluation, training, export, benchmarks, pictures.

pub mod bench;
pub mod cli;
pub mod completions;
pub mod crash;
pub mod eval;
pub mod export;
pub mod features;
#[cfg(feature = "fleet")]
pub mod fleet_bench;
pub mod font;
pub mod fuzz;
pub mod pairs;
pub mod parity;
pub mod plot;
pub mod progress;
pub mod route;
pub mod sentences;
pub mod sheet;
pub mod train;
