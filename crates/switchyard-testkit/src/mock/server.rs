//! The accept loop: the only part of the mock that touches sockets.
//!
//! Each accepted connection gets `TCP_NODELAY` (a response written in two parts must not wait
//! on a delayed ACK) and is served by hyper-util's auto builder (HTTP/1.1, or HTTP/2 with prior
//! knowledge) in a task of a [`JoinSet`]. Dropping the accept loop drops the set, which aborts
//! every connection: that is how shutdown reaches hanging requests and half-sent streams.

use std::error::Error;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use super::dispatch;
use super::state::Shared;

/// Pause after a failed accept (out of file descriptors, say) so the loop does not spin.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(10);

/// The error a request's handler returns to make hyper close the connection without a
/// response, or to cut a streamed body short. It is the mock's way to simulate a reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConnectionAbort;

impl fmt::Display for ConnectionAbort {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("mock provider aborted the connection on purpose")
    }
}

impl Error for ConnectionAbort {}

/// Accepts and serves connections until the returned future is dropped.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if let Err(error) = stream.set_nodelay(true) {
                        tracing::debug!(%peer, %error, "could not set TCP_NODELAY");
                    }
                    let shared = Arc::clone(&shared);
                    let builder = Arc::clone(&builder);
                    connections.spawn(async move {
                        let service = service_fn(move |request| {
                            dispatch::handle(Arc::clone(&shared), request)
                        });
                        let served = builder.serve_connection(TokioIo::new(stream), service).await;
                        if let Err(error) = served {
                            // Expected whenever a behaviour resets the connection.
                            tracing::trace!(%peer, %error, "connection ended with an error");
                        }
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
                }
            },
            // Reap finished connections so the set does not grow with every connection served.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}
