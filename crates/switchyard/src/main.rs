//! The `switchyard` binary.

use clap::Parser;

// glibc's malloc was a fifth of the gateway's CPU under load (perf, load harness at
// concurrency 32); mimalloc's thread-local free lists take most of that away.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // The log subscriber is installed by the commands that serve
    // (`switchyard::telemetry::init`).
    switchyard::install_crypto_provider();
    let cli = switchyard::cli::Cli::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = cli.workers {
        builder.worker_threads(usize::from(workers));
    }
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("switchyard: could not start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(switchyard::cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("switchyard: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}
