//! Active health checks: for each provider that configures one, a background task probes it
//! every `interval` (its model list, or a one-token completion when `model` is set) and marks
//! it healthy or not, so that routing skips a dead provider before user traffic finds out.

use std::sync::Arc;

use switchyard_core::config::{HealthCheck, Provider};
use switchyard_core::provider::{self, CallInfo};
use switchyard_core::wire::{ChatMessage, ChatRequest, Role};
use tokio::time::Instant;

use crate::app::AppState;
use crate::transport::CallLimits;

/// Starts one probe task per provider with a health check. They stop with the runtime.
pub fn spawn_all(app: &AppState) {
    for provider in &app.config.providers {
        if let Some(check) = provider.health_check.clone() {
            tokio::spawn(run(app.clone(), Arc::clone(provider), check));
        }
    }
}

async fn run(app: AppState, provider: Arc<Provider>, check: HealthCheck) {
    // The first probe comes one interval after start: providers start out trusted.
    let mut interval = tokio::time::interval_at(Instant::now() + check.interval, check.interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let error = probe(&app, &provider, &check).await.err();
        if let Some(state) = app.tracker.provider(&provider.name) {
            state.record_check(error);
        }
    }
}

/// One probe: `Ok` when the provider answered 2xx in time.
pub async fn probe(
    app: &AppState,
    provider: &Arc<Provider>,
    check: &HealthCheck,
) -> Result<(), String> {
    let request = match &check.model {
        None => provider::models_request(provider),
        Some(model) => {
            let mut probe = ChatRequest {
                model: model.clone(),
                messages: vec![ChatMessage::text(Role::User, "ping")],
                ..ChatRequest::default()
            };
            probe.max_tokens = Some(1);
            let call = CallInfo {
                provider,
                model,
                now_unix: 0,
                request_id: "health-check",
            };
            provider::chat_request(&call, &probe)
        }
    }
    .map_err(|error| error.message.to_string())?;
    let deadline = Instant::now() + check.timeout;
    let limits = CallLimits {
        first_byte: check.timeout,
        idle: check.timeout,
        deadline,
        request_deadline: deadline,
    };
    let response = app
        .transport
        .send(provider, request, limits)
        .await
        .map_err(|error| error.message.to_string())?;
    app.transport
        .read_body(provider, response, limits)
        .await
        .map(|_| ())
        .map_err(|error| error.message.to_string())
}
