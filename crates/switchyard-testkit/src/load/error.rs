//! Why a load run could not be carried out.
//!
//! These are failures of the harness or of a child's start-up. A slow gateway, a missed
//! target, even requests that fail under load are results, reported in the table, and
//! never an error here.

use std::path::PathBuf;

/// A reason the harness stopped before it had a report.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A binary to start is not there; usually it has not been built.
    #[error(
        "the {role} binary {} does not exist (build it with `cargo build --release`, or pass its path)",
        path.display()
    )]
    MissingBinary { role: &'static str, path: PathBuf },

    /// The operating system refused to start a child.
    #[error("could not start the {role} ({}): {source}", path.display())]
    Spawn {
        role: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },

    /// A child started but never said where it listens.
    #[error("the {role} did not start: {reason}{}", show_output(output))]
    Startup {
        role: &'static str,
        reason: String,
        output: String,
    },

    /// A child died while the harness still needed it.
    #[error("the {role} exited during the run ({status}){}", show_output(output))]
    ChildExited {
        role: &'static str,
        status: String,
        output: String,
    },

    /// The request body is not usable.
    #[error("request body: {0}")]
    Body(String),

    /// A file or `/proc` read or write failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },

    /// The load generator could not be set up (runtime, thread, histogram).
    #[error("load generator: {0}")]
    Generator(String),

    /// A call to a child's control API (the mock's `/__mock/*`) failed, so the run could
    /// not do what its scenario says.
    #[error("control call to the {role}: {message}")]
    Control { role: &'static str, message: String },

    /// A signal asked the harness to stop.
    #[error("interrupted by {0}")]
    Interrupted(&'static str),
}

fn show_output(output: &str) -> String {
    if output.trim().is_empty() {
        String::new()
    } else {
        format!("\n--- its last output ---\n{output}")
    }
}
