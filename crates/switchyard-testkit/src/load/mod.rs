//! The load harness: measures the gateway as a whole process against the mock provider,
//! and the mock alone as the baseline, on this machine.
//!
//! Every performance claim about Switchyard is measured with this harness (the
//! `switchyard-load` binary, usually run through `scripts/load.sh`). It starts both as
//! child processes, loads each in turn with the same closed-loop traffic, and reports
//! throughput, latency, CPU and memory per scenario, with the added cost of the gateway.
//!
//! # Layout
//!
//! - [`options`]: the command line, and the checks that keep a run bounded.
//! - [`child`]: starting the mock and the gateway, reading their listening line, killing
//!   them on every way out; the gateway's config file.
//! - [`generator`]: the load generator itself (hyper client connections on a runtime of
//!   their own, HDR histograms). Knows nothing about processes.
//! - [`procfs`]: CPU time, RSS and machine facts from `/proc`, parsed by pure functions.
//! - [`harness`]: one run, in order: start, scenarios with sampling, figures.
//! - [`report`]: the figures, the markdown table, the target checks, JSON.
//! - [`chaos`]: the `--chaos` run instead: three providers behind one route, one of them
//!   failing and recovering under steady load; [`chaos_report`] is its figures and table.
//! - [`control`]: one-off calls to the mock's `/__mock/*` API and the gateway's admin API.
//! - [`error`]: why a run could not be carried out (a missed target is not an error).
//!
//! The harness only ever loads loopback addresses, and every scenario ends by itself.

pub mod chaos;
pub mod chaos_report;
pub mod child;
pub mod control;
pub mod error;
pub mod generator;
pub mod harness;
pub mod options;
pub mod procfs;
pub mod report;

pub use chaos_report::ChaosReport;
pub use error::LoadError;
pub use harness::{Children, run};
pub use options::LoadOptions;
pub use report::Report;
