//! `switchyard demo`: the gateway over simulated providers (being written).

use crate::cli::DemoArgs;

/// Runs the demo.
pub async fn run(_args: DemoArgs) -> Result<(), String> {
    Err("the demo is not built yet".to_owned())
}
