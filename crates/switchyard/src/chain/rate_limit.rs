//! Stage 3: rate limits and load shedding, once the request is parsed and its route known
//! (limits can be per model, and token limits need the request's size).
//!
//! An admitted request carries its [`Admission`](crate::ratelimit::Admission) in the draft
//! event until its response ends, when the accounting stage settles it against the actual
//! usage. A refused one gets a 429 (or a 503 when shed or when the shared store is down and
//! the gateway fails closed), with `Retry-After` and OpenAI's `x-ratelimit-*` headers.

use std::time::Instant;

use switchyard_core::GatewayError;

use crate::app::AppState;
use crate::context::{Principal, RequestContext};
use crate::ratelimit::{OwnLimits, Refusal, Subject};
use crate::timing::Stage;

/// What the stage needs to know about the request.
pub struct Ask<'a> {
    /// The route or model it resolved to.
    pub model: &'a str,
    /// The OpenAI `user` field.
    pub user: Option<&'a str>,
    /// Estimated input tokens.
    pub input_tokens: u64,
    /// The client's output limit, if it set one.
    pub max_output_tokens: Option<u32>,
}

/// Admits the request or returns the error to answer with.
pub async fn admit(
    app: &AppState,
    context: &mut RequestContext,
    ask: Ask<'_>,
) -> Result<(), GatewayError> {
    let (own, team) = match &context.principal {
        Principal::Key(key) => (
            OwnLimits {
                rpm: key.settings.rpm,
                tpm: key.settings.tpm,
            },
            key.settings.team.clone(),
        ),
        Principal::Anonymous | Principal::MasterKey => (OwnLimits::default(), None),
    };
    if !app.limiter.is_active() && !own.is_some() {
        return Ok(());
    }
    let started = Instant::now();
    let output = ask
        .max_output_tokens
        .map_or(app.config.rate_limits.default_max_tokens, u64::from);
    let subject = Subject {
        key: context.principal.label().to_owned(),
        user: ask
            .user
            .filter(|user| !user.is_empty())
            .map(str::to_owned)
            .or_else(|| context.user_header.clone()),
        team,
        ip: context.client_ip,
        model: ask.model.to_owned(),
        priority: context.principal.priority(),
        tokens: ask.input_tokens.saturating_add(output),
        own,
    };
    let outcome = app.limiter.admit(&subject, context.deadline).await;
    context.timings.lap(Stage::RateLimit, started);
    match outcome {
        Ok(admission) => {
            context.rate_headers = admission.headers();
            if context.event.is_some() {
                context.record(|draft| draft.admissions.push(admission));
            }
            // Not accounted (no draft): dropping the admission settles it now.
            Ok(())
        }
        Err((refusal, headers)) => {
            context.rate_headers = headers;
            if let Refusal::Limited { limit, .. } = &refusal {
                let name = app.limiter.limits()[*limit].name.clone();
                context.record(|draft| draft.rate_limit = Some(name));
            }
            Err(app.limiter.error(&refusal))
        }
    }
}
