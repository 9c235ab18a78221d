//! `switchyard-load`: runs the load harness and prints its report.
//!
//! The process-level parts live here: the runtime that watches the children, the signals
//! that end a run early (the children are killed either way), the exit status, and where
//! the report goes. Everything else is in `switchyard_testkit::load`.

use std::process::ExitCode;

use clap::Parser;
use switchyard_testkit::load::{self, Children, LoadError, LoadOptions};

fn main() -> ExitCode {
    let options = LoadOptions::parse();
    // The orchestration needs little: child pipes, /proc sampling, signals. The load
    // generator gets a runtime of its own per scenario.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("switchyard-load: cannot start a runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(options))
}

async fn run(options: LoadOptions) -> ExitCode {
    let mut children = Children::default();
    let result = tokio::select! {
        result = run_mode(&options, &mut children) => result,
        signal = shutdown_signal() => Err(LoadError::Interrupted(signal)),
    };
    // Whatever happened, no child outlives the harness.
    children.shutdown().await;

    let report = match result {
        Ok(report) => report,
        Err(error) => {
            eprintln!("switchyard-load: {error}");
            return match error {
                LoadError::Interrupted(_) => ExitCode::from(130),
                _ => ExitCode::FAILURE,
            };
        }
    };
    println!("{}", report.markdown);
    if let Some(path) = &options.json {
        let written = report
            .json
            .and_then(|json| serde_json::to_string_pretty(&json))
            .map_err(std::io::Error::other)
            .and_then(|json| std::fs::write(path, json + "\n"));
        if let Err(error) = written {
            eprintln!("switchyard-load: writing {}: {error}", path.display());
            return ExitCode::FAILURE;
        }
        eprintln!("switchyard-load: wrote {}", path.display());
    }
    ExitCode::SUCCESS
}

/// What a run printed and what its JSON file holds, whichever mode ran.
struct Rendered {
    markdown: String,
    json: serde_json::Result<serde_json::Value>,
}

/// Runs the chaos scenario with `--chaos`, else the direct/gateway scenarios.
async fn run_mode(options: &LoadOptions, children: &mut Children) -> Result<Rendered, LoadError> {
    let (markdown, json) = if options.chaos {
        let report = load::chaos::run(options, children).await?;
        (report.to_markdown(), serde_json::to_value(&report))
    } else {
        let report = load::run(options, children).await?;
        (report.to_markdown(), serde_json::to_value(&report))
    };
    Ok(Rendered { markdown, json })
}

/// Completes on Ctrl-C, SIGTERM or SIGHUP, naming the signal.
async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let wait_for = |kind: SignalKind| async move {
        match signal(kind) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            // Without the handler the default action (exit) still applies to that signal,
            // and kill_on_drop cannot run then; nothing better to do than wait for others.
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = wait_for(SignalKind::interrupt()) => "SIGINT",
        _ = wait_for(SignalKind::terminate()) => "SIGTERM",
        _ = wait_for(SignalKind::hangup()) => "SIGHUP",
    }
}
