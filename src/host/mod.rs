//! Workstation-only work (feature `host`): evaluation, benchmarks, pairs files, progress.

pub mod bench;
pub mod crash;
pub mod eval;
pub mod pairs;
pub mod progress;
