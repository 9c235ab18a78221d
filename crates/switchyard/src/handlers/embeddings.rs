//! `POST /v1/embeddings`: parse, route, rate limit, cache, then failover over the targets
//! through the adapters.

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use switchyard_core::GatewayError;
use switchyard_core::provider;
use switchyard_core::wire::EmbeddingsRequest;

use super::read_body;
use crate::app::AppState;
use crate::chain::cache::{self, Begin};
use crate::context::{RequestContext, TakenContext};
use crate::failover::RequestFacts;
use crate::telemetry::Operation;
use crate::timing::Stage;
use tracing::Instrument;

/// The handler.
pub async fn embeddings(
    State(app): State<AppState>,
    TakenContext(mut context): TakenContext,
    body: Body,
) -> Response {
    let outcome = tokio::time::timeout_at(context.deadline, handle(&app, &mut context, body)).await;
    super::conclude(&context, outcome)
}

async fn handle(
    app: &AppState,
    context: &mut RequestContext,
    body: Body,
) -> Result<Response, GatewayError> {
    let started = std::time::Instant::now();
    let (body, request) = async {
        let body = read_body(body, app.config.server.max_body_bytes).await?;
        let request = EmbeddingsRequest::from_bytes(body.clone())?;
        Ok::<_, GatewayError>((body, request))
    }
    .instrument(Stage::Parse.span(&context.span))
    .await?;
    let started = context.timings.lap(Stage::Parse, started);
    let resolution = Stage::Route
        .span(&context.span)
        .in_scope(|| app.router.resolve(&request.model))?;
    context.timings.lap(Stage::Route, started);
    crate::chain::auth::authorize_model(
        &context.principal,
        &request.model,
        resolution.route_name(),
    )?;
    let facts = RequestFacts {
        stream: false,
        input_tokens: super::estimate_input_tokens(&body),
        max_output_tokens: Some(0),
        deadline: context.deadline,
    };
    super::record_baseline(app, context, &resolution);
    let resolution = super::choose_tier(app, context, resolution, None)?;
    let cheaper = super::downgrade(app, context, &resolution, &facts).await?;
    let resolution = match &cheaper {
        Some(route) => app.router.resolve(route)?,
        None => resolution,
    };
    super::record_route(context, &resolution);
    let plan = super::plan(app, &resolution);
    crate::chain::rate_limit::admit(
        app,
        context,
        crate::chain::rate_limit::Ask {
            model: resolution.route_name(),
            user: request.user.as_deref(),
            input_tokens: facts.input_tokens,
            max_output_tokens: facts.max_output_tokens,
        },
    )
    .await?;
    let fill = match cache::begin(
        app,
        context,
        cache::Ask {
            endpoint: "/v1/embeddings",
            route: resolution.route_name(),
            targets: resolution.targets(),
            sampled: false,
            uncacheable: false,
            body: &body,
        },
    )
    .await?
    {
        Begin::Hit(entry) => return Ok(cache::json_hit(context, &entry)),
        Begin::Miss(fill) => fill,
    };
    super::complete(
        app,
        context,
        super::Upstream {
            plan: &plan,
            facts,
            fill,
        },
        Operation::Embeddings,
        |call| provider::embeddings_request(call, &request),
        |call, body| provider::embeddings_response(call, &request, body),
    )
    .await
}
