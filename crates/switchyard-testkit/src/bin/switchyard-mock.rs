//! `switchyard-mock`: the mock provider as a process, for the Python SDK tests and the load
//! harness.
//!
//! Prints exactly one line to stdout, `switchyard-mock listening on http://ADDR`, once the
//! socket is bound (harnesses parse it; use `--listen 127.0.0.1:0` for a free port). Logs go
//! to stderr (`RUST_LOG`, default `info`). Stops cleanly on SIGINT or SIGTERM. Further
//! misbehaviour is scripted at run time through the `/__mock/*` control API.

use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;

use clap::Parser;
use switchyard_testkit::mock::{Behavior, MockProvider};
use tracing_subscriber::EnvFilter;

/// Mock LLM provider speaking the OpenAI, Anthropic and Gemini wire formats.
#[derive(Debug, Parser)]
#[command(name = "switchyard-mock", version)]
struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Provider name used in answers ("{name} says: ...").
    #[arg(long, default_value = "mock")]
    name: String,
    /// Delay before the response headers, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Streams: delay before the first chunk, in milliseconds.
    #[arg(long, default_value_t = 0)]
    ttft_ms: u64,
    /// Streams: delay between chunks, in milliseconds.
    #[arg(long, default_value_t = 0)]
    chunk_delay_ms: u64,
    /// Fraction (0..=1) of requests that fail with 500, reproducibly.
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Require this provider key (401 otherwise).
    #[arg(long)]
    expect_api_key: Option<String>,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    threads: u16,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(args.threads))
        .enable_all()
        .build();
    match runtime {
        Ok(runtime) => runtime.block_on(run(args)),
        Err(error) => {
            tracing::error!(%error, "could not start the tokio runtime");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> ExitCode {
    let behavior = Behavior {
        latency_ms: args.latency_ms,
        ttft_ms: args.ttft_ms,
        chunk_delay_ms: args.chunk_delay_ms,
        error_rate: args.error_rate,
        ..Behavior::default()
    };
    let mut builder = MockProvider::builder()
        .name(args.name)
        .behavior(behavior)
        .listen(&args.listen);
    if let Some(key) = args.expect_api_key {
        builder = builder.expect_api_key(key);
    }
    let mock = match builder.spawn().await {
        Ok(mock) => mock,
        Err(error) => {
            tracing::error!(listen = %args.listen, %error, "could not start the mock provider");
            return ExitCode::FAILURE;
        }
    };

    // Listen for signals before announcing: a harness may send SIGTERM as soon as it has read
    // the line, and without a handler that would kill the process instead of stopping it.
    let shutdown = match shutdown_signal() {
        Ok(shutdown) => shutdown,
        Err(error) => {
            tracing::error!(%error, "cannot listen for SIGINT / SIGTERM");
            return ExitCode::FAILURE;
        }
    };

    let mut stdout = std::io::stdout().lock();
    let announced = writeln!(stdout, "switchyard-mock listening on {}", mock.base_url())
        .and_then(|()| stdout.flush());
    drop(stdout);
    if let Err(error) = announced {
        tracing::error!(%error, "could not write the listening line to stdout");
        return ExitCode::FAILURE;
    }
    tracing::info!(name = mock.name(), addr = %mock.addr(), threads = args.threads, "mock provider started");

    let signal = shutdown.await;
    tracing::info!(signal, "shutting down");
    mock.shutdown().await;
    ExitCode::SUCCESS
}

/// Installs the SIGINT and SIGTERM handlers now; the future completes with the name of the
/// first signal that arrives.
#[cfg(unix)]
fn shutdown_signal() -> std::io::Result<impl Future<Output = &'static str>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        }
    })
}

/// Completes on Ctrl-C.
#[cfg(not(unix))]
fn shutdown_signal() -> std::io::Result<impl Future<Output = &'static str>> {
    Ok(async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::warn!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
        "Ctrl-C"
    })
}
