//! The listener: accepts connections (with `TCP_NODELAY`), serves HTTP/1.1 and HTTP/2 with a
//! header read timeout, and shuts down gracefully: on the shutdown signal it stops accepting,
//! marks itself not ready, and lets in-flight requests and streams finish for up to the
//! configured grace period; then it drops the connections still open (their requests are
//! recorded, error class `shutdown`) and flushes analytics, spend, alerts and traces.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::app::{self, AppState};

/// Binds the listening socket, with a message that names the address on failure.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr)
        .await
        .map_err(|error| format!("could not listen on {addr}: {error}"))
}

/// Serves until `shutdown` resolves, then drains: readiness fails at once, connections are
/// still accepted for `drain_delay` (so a load balancer can notice), then the listener closes
/// and in-flight requests get up to `shutdown_grace` to finish.
pub async fn serve(listener: TcpListener, state: AppState, shutdown: impl Future<Output = ()>) {
    let router = app::router(state.clone());
    crate::health_check::spawn_all(&state);
    spawn_limiter_sweep(&state);
    spawn_cache_sweep(&state);
    spawn_key_reload(&state);
    crate::alerts::spawn(&state);
    crate::telegram::spawn_poller(&state);
    state
        .budgets
        .spawn_flusher(state.config.analytics.flush_interval);
    let keys = Arc::clone(&state.keys);
    state
        .budgets
        .spawn_forecaster(crate::budget::forecast::FORECAST_INTERVAL, move || {
            keys.list()
        });
    let receiver = state
        .event_receiver
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    if let Some(receiver) = receiver {
        state.analytics.spawn(
            receiver,
            Arc::clone(&state.metrics),
            state.events.shared_counts(),
            state
                .config
                .routes
                .iter()
                .map(|route| route.name.clone())
                .collect(),
        );
    }
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(state.config.server.header_read_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(20));
    let header_read_timeout = state.config.server.header_read_timeout;
    let graceful = GracefulShutdown::new();
    // Set when the shutdown grace is over: the connections still open are dropped, which ends
    // their requests (each leaves its event, error class `shutdown`).
    let (abort, aborted) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    let mut stop_accepting: Option<tokio::time::Instant> = None;
    loop {
        let drain_over = async {
            match stop_accepting {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                // Without it, a response written in two parts waits for the client's delayed ACK.
                if let Err(error) = stream.set_nodelay(true) {
                    tracing::debug!(%error, "could not set TCP_NODELAY");
                }
                let service = TowerToHyperService::new(router.clone().map_request(
                    move |mut request: http::Request<hyper::body::Incoming>| {
                        request.extensions_mut().insert(crate::context::PeerAddr(peer));
                        request
                    },
                ));
                let builder = builder.clone();
                let watcher = graceful.watcher();
                let open = ConnectionCount::new(&state);
                let mut aborted = aborted.clone();
                tokio::spawn(async move {
                    let _open = open;
                    let served = async move {
                        // hyper's header timeout starts with the first byte; a client that
                        // connects and sends nothing would hold the socket forever.
                        if tokio::time::timeout(header_read_timeout, stream.readable()).await.is_err() {
                            tracing::debug!(%peer, "closing a connection that sent nothing");
                            return;
                        }
                        let connection = builder
                            .serve_connection_with_upgrades(TokioIo::new(stream), service)
                            .into_owned();
                        if let Err(error) = watcher.watch(connection).await {
                            tracing::debug!(%peer, error = %error, "connection ended with an error");
                        }
                    };
                    tokio::select! {
                        () = served => {}
                        _ = aborted.wait_for(|aborted| *aborted) => {
                            tracing::debug!(%peer, "connection closed at the end of the shutdown grace");
                        }
                    }
                });
            }
            () = &mut shutdown, if stop_accepting.is_none() => {
                state.ready.store(false, Ordering::Relaxed);
                let delay = state.config.server.drain_delay;
                tracing::info!(?delay, "shutting down: not ready; still accepting during the drain delay");
                stop_accepting = Some(tokio::time::Instant::now() + delay);
            }
            () = drain_over => break,
        }
    }
    drop(listener);
    drop(aborted);
    let grace = state.config.server.shutdown_grace;
    tracing::info!(?grace, "listener closed; letting in-flight requests finish");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(grace) => {
            tracing::warn!("shutdown grace period over; closing the remaining connections");
            state.closing.store(true, Ordering::Relaxed);
            // A send fails only when no connection is left to receive it.
            let _ = abort.send(true);
            // Each connection's task drops its receiver as it ends.
            if tokio::time::timeout(ABORT_WAIT, abort.closed()).await.is_err() {
                tracing::warn!("some connections did not close after the shutdown grace");
            }
        }
    }
    if !state.events.all_ended(ABORT_WAIT).await {
        tracing::warn!("some requests had not ended at the final analytics flush");
    }
    // Every response has ended (or been dropped), so every request event is in the channel.
    state.analytics.shutdown().await;
    if let Err(error) = state.budgets.flush().await {
        tracing::error!(%error, "could not write the spend ledger at shutdown");
    }
    state.alerts.persist(crate::cache::unix_ms()).await;
    // Every root span has ended with its response: export what is pending.
    if let Some(telemetry) = &state.telemetry {
        telemetry.shutdown().await;
    }
}

/// Forgets idle in-memory rate-limit counters once a minute, so that one-off users and IPs
/// do not accumulate. The task ends with the limiter's last user.
fn spawn_limiter_sweep(state: &AppState) {
    if state.config.rate_limits.limits.is_empty() {
        return;
    }
    let limiter = Arc::downgrade(&state.limiter);
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(Duration::from_secs(60));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval.tick().await;
        loop {
            interval.tick().await;
            let Some(limiter) = limiter.upgrade() else {
                return;
            };
            let remaining = limiter.sweep();
            tracing::debug!(remaining, "swept idle rate-limit counters");
        }
    });
}

/// Reclaims the memory of expired cached answers every second, even when no request comes
/// to trigger moka's own housekeeping. The task ends with the cache's last user.
fn spawn_cache_sweep(state: &AppState) {
    let Some(cache) = &state.cache else {
        return;
    };
    let cache = Arc::downgrade(cache);
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(Duration::from_secs(1));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let Some(cache) = cache.upgrade() else {
                return;
            };
            cache.sweep();
        }
    });
}

/// Reloads the virtual keys when another process (the CLI, another instance) changed them,
/// checking every `keys::POLL`, so a revoked key stops working here within that time. While
/// the store cannot be reached the index keeps the keys loaded last; the failure is logged
/// when it starts, then once a minute (`keys::ReloadFailures`), and its end is logged too.
fn spawn_key_reload(state: &AppState) {
    let keys = Arc::downgrade(&state.keys);
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(crate::keys::POLL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failures = crate::keys::ReloadFailures::default();
        loop {
            interval.tick().await;
            let Some(keys) = keys.upgrade() else {
                return;
            };
            let reloaded = keys.reload().await;
            let store = keys.store_kind();
            drop(keys);
            let now = std::time::Instant::now();
            match reloaded {
                Ok(changed) => {
                    if changed {
                        tracing::debug!("virtual keys reloaded");
                    }
                    if let Some(failing_for) = failures.succeeded(now) {
                        tracing::info!(
                            store,
                            ?failing_for,
                            "virtual keys reload again from their store"
                        );
                    }
                }
                Err(error) => match failures.failed(now) {
                    Some(failing_for) => tracing::warn!(
                        store,
                        %error,
                        ?failing_for,
                        "could not reload the virtual keys; serving the ones loaded last"
                    ),
                    None => tracing::debug!(store, %error, "could not reload the virtual keys"),
                },
            }
        }
    });
}

/// Counts a client connection as open until dropped.
struct ConnectionCount(AppState);

impl ConnectionCount {
    fn new(state: &AppState) -> Self {
        state.connections.fetch_add(1, Ordering::Relaxed);
        ConnectionCount(state.clone())
    }
}

impl Drop for ConnectionCount {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How long shutdown waits for the connections still open after the grace to be dropped.
const ABORT_WAIT: Duration = Duration::from_secs(2);

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!("received SIGINT"),
        () = terminate => tracing::info!("received SIGTERM"),
    }
}
