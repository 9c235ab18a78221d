//! The Worker itself (wasm32 only): the `fetch` entry point and its routes, the per-isolate
//! gateway state, and answers for errors. The request path of `/v1/chat/completions` is in
//! [`chat`], the stores in [`store`], the rate-limit Durable Object in [`limiter`].
//!
//! Routes: `POST /v1/chat/completions`, `POST /v1/embeddings`, `GET /v1/models`, `GET /admin/analytics`,
//! `GET /healthz`. Everything else is a 404 in OpenAI's error shape.

mod chat;
mod limiter;
mod store;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use switchyard_core::config::{self, Config};
use switchyard_core::error::{ErrorKind, GatewayError, Origin};
use switchyard_core::routing::ModelRouter;
use worker::{Context, Date, Env, Headers, Request, Response, event};

use crate::auth::{self, Principal};
use crate::health::Breakers;
use crate::respond;
use crate::settings::{self, CONFIG_VAR};

/// What an isolate builds once from its vars and secrets (they cannot change under it).
pub(crate) struct Gateway {
    /// The validated config.
    pub config: Config,
    /// Model names to targets.
    pub router: ModelRouter,
    /// The isolate's circuit breakers (never borrowed across an `.await`).
    pub breakers: RefCell<Breakers>,
}

thread_local! {
    /// The isolate's gateway, built on its first request. A Worker isolate runs one request
    /// at a time on one thread, so a thread-local cell is its whole state.
    static GATEWAY: RefCell<Option<Rc<Gateway>>> = const { RefCell::new(None) };
}

/// Reads the Worker's secrets, then its vars, for the core's config validation.
struct WorkerEnv<'a>(&'a Env);

impl config::Env for WorkerEnv<'_> {
    fn var(&self, name: &str) -> Option<String> {
        self.0
            .secret(name)
            .map(|value| value.to_string())
            .or_else(|_| self.0.var(name).map(|value| value.to_string()))
            .ok()
            .filter(|value| !value.is_empty())
    }
}

fn gateway(env: &Env) -> Result<Rc<Gateway>, GatewayError> {
    if let Some(gateway) = GATEWAY.with(|cell| cell.borrow().clone()) {
        return Ok(gateway);
    }
    let toml = env.var(CONFIG_VAR).ok().map(|value| value.to_string());
    let config = settings::load(toml.as_deref(), &WorkerEnv(env)).map_err(|error| {
        GatewayError::new(
            ErrorKind::Internal,
            Origin::Gateway,
            format!("the Worker's configuration is invalid: {error}"),
        )
        .with_code("config_invalid")
    })?;
    let router = ModelRouter::new(&config);
    let breakers = RefCell::new(Breakers::new(config.routing.breaker.clone()));
    let gateway = Rc::new(Gateway {
        config,
        router,
        breakers,
    });
    GATEWAY.with(|cell| *cell.borrow_mut() = Some(Rc::clone(&gateway)));
    Ok(gateway)
}

/// Unix milliseconds now.
pub(crate) fn now_ms() -> u64 {
    Date::now().as_millis()
}

/// Unix nanoseconds now (millisecond resolution), the time the core's policies take.
pub(crate) fn now_nanos() -> u64 {
    now_ms().saturating_mul(1_000_000)
}

/// 16 random bytes as a request id (`Math.random` is enough for ids; nothing secret here).
fn new_request_id() -> String {
    let mut bytes = [0u8; 16];
    for byte in &mut bytes {
        // A random double in [0, 1) scaled to a byte; the cast cannot overflow.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        {
            *byte = (worker::js_sys::Math::random() * 256.0) as u8;
        }
    }
    respond::request_id(&bytes)
}

/// A uniformly distributed `u64` for the weighted and least-latency strategies.
pub(crate) fn random_u64() -> u64 {
    let high = (worker::js_sys::Math::random() * 4_294_967_296.0) as u64;
    let low = (worker::js_sys::Math::random() * 4_294_967_296.0) as u64;
    (high << 32) | (low & 0xffff_ffff)
}

/// The answer for an error: OpenAI's body, its status, `Retry-After` when known, and any
/// extra headers (rate-limit figures).
pub(crate) fn error_response(
    error: &GatewayError,
    extra: &[(&'static str, String)],
) -> worker::Result<Response> {
    let headers = Headers::new();
    headers.set("content-type", "application/json")?;
    if let Some(wait) = error.retry_after {
        headers.set(
            "retry-after",
            &wait.as_secs_f64().ceil().max(1.0).to_string(),
        )?;
    }
    for (name, value) in extra {
        headers.set(name, value)?;
    }
    Ok(Response::from_bytes(error.to_json())?
        .with_status(error.status())
        .with_headers(headers))
}

/// A JSON answer.
pub(crate) fn json_response(body: Vec<u8>) -> worker::Result<Response> {
    let response = Response::from_bytes(body)?;
    response.headers().set("content-type", "application/json")?;
    Ok(response)
}

/// Who is calling, or the 401.
pub(crate) async fn authenticate(
    req: &Request,
    env: &Env,
    gateway: &Gateway,
) -> Result<Principal, GatewayError> {
    let authorization = req.headers().get("authorization").ok().flatten();
    let x_api_key = req.headers().get("x-api-key").ok().flatten();
    let Some(secret) = auth::presented(authorization.as_deref(), x_api_key.as_deref()) else {
        return Err(auth::refused(None));
    };
    if let Some(master) = &gateway.config.server.master_key
        && auth::is_master(secret, master.expose())
    {
        return Ok(Principal::Master);
    }
    if !auth::is_virtual(secret) {
        return Err(auth::refused(None));
    }
    let key = store::find_key(env, &auth::hash_hex(secret))
        .await?
        .ok_or_else(|| auth::refused(None))?;
    key.check(now_ms())
        .map_err(|why| auth::refused(Some(why)))?;
    Ok(Principal::Key(Arc::new(key)))
}

#[event(fetch)]
async fn fetch(req: Request, env: Env, ctx: Context) -> worker::Result<Response> {
    let started_ms = now_ms();
    let request_id = new_request_id();
    let mut response = match route(req, &env, &ctx, &request_id, started_ms).await {
        Ok(response) => response,
        Err(error) => error_response(&error, &[])?,
    };
    response
        .headers_mut()
        .set(respond::REQUEST_ID, &request_id)?;
    Ok(response)
}

async fn route(
    req: Request,
    env: &Env,
    ctx: &Context,
    request_id: &str,
    started_ms: u64,
) -> Result<Response, GatewayError> {
    let path = req.path();
    let method = req.method();
    if path == "/healthz" {
        return Response::ok("ok").map_err(internal);
    }
    let gateway = gateway(env)?;
    match (method, path.as_str()) {
        (worker::Method::Post, "/v1/chat/completions") => {
            chat::handle(false, req, env, ctx, &gateway, request_id, started_ms).await
        }
        (worker::Method::Post, "/v1/embeddings") => {
            chat::handle(true, req, env, ctx, &gateway, request_id, started_ms).await
        }
        (worker::Method::Get, "/v1/models") => {
            authenticate(&req, env, &gateway).await?;
            let list = gateway.router.list();
            let body = serde_json::to_vec(&list)
                .map_err(|_| GatewayError::internal("could not encode the model list"))?;
            json_response(body).map_err(internal)
        }
        (worker::Method::Get, "/admin/analytics") => {
            let principal = authenticate(&req, env, &gateway).await?;
            if !principal.is_admin() {
                return Err(GatewayError::new(
                    ErrorKind::PermissionDenied,
                    Origin::Client,
                    "The admin API needs the master key",
                ));
            }
            let url = req.url().map_err(internal)?;
            let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
            store::analytics(env, &pairs).await
        }
        (_, "/v1/chat/completions" | "/v1/embeddings" | "/v1/models" | "/admin/analytics") => {
            Err(GatewayError::new(
                ErrorKind::MethodNotAllowed,
                Origin::Client,
                format!("{path} does not take this method"),
            ))
        }
        _ => Err(GatewayError::new(
            ErrorKind::NotFound,
            Origin::Client,
            format!("Unknown path {path}"),
        )),
    }
}

/// A runtime failure (a binding, a JavaScript exception) as a 500 that names it.
pub(crate) fn internal(error: worker::Error) -> GatewayError {
    GatewayError::internal(format!("the Worker runtime failed: {error}"))
}
