//! Accepting connections, for the request and the admin listener alike:
//! bounded in number, backing off when accepting fails (file descriptors
//! exhausted), and every connection held to the same HTTP/1.1 bounds.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tracing::{debug, warn};

use super::app::HttpResponse;

/// How long a client may take to send a request's head, and how long an
/// idle keep-alive connection waits for the next one (slow-loris bound).
pub(crate) const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head (request line + headers), exactly.
pub(crate) const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most header fields in a request head.
const MAX_REQUEST_HEADERS: usize = 100;
/// After a failed accept (EMFILE, say), the pause before the next try;
/// doubled while failures go on, up to the maximum.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The HTTP/1.1 settings every connection is served with.
fn http1() -> http1::Builder {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_header_size(MAX_HEAD_BYTES)
        .max_headers(MAX_REQUEST_HEADERS);
    http
}

/// Serve `listener` until `stop` turns true: at most `max_connections`
/// connections at once (the rest wait in the listen backlog), each served
/// by `handle`. Connections are watched by `graceful`, if given, so that a
/// shutdown can wait for them.
pub(crate) async fn serve<H, F>(
    listener: TcpListener,
    max_connections: usize,
    handle: H,
    graceful: Option<&GracefulShutdown>,
    mut stop: watch::Receiver<bool>,
) where
    H: Fn(hyper::Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = HttpResponse> + Send + 'static,
{
    let http = http1();
    let slots = Arc::new(Semaphore::new(max_connections));
    let mut backoff = ACCEPT_BACKOFF;
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => permit.expect("never closed"),
            _ = stop.changed() => return,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => {
                backoff = ACCEPT_BACKOFF;
                pair
            }
            Err(error) => {
                // Typically EMFILE: pause instead of spinning on the error
                // and starving the connections already open.
                warn!(%error, pause = ?backoff, "accept failed");
                drop(permit);
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return,
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let handle = handle.clone();
        let service = service_fn(move |request| {
            let handle = handle.clone();
            async move { Ok::<_, Infallible>(handle(request).await) }
        });
        let connection = http.serve_connection(TokioIo::new(stream), service);
        let ended = move |result: Result<(), hyper::Error>| {
            if let Err(error) = result {
                debug!(%peer, %error, "connection ended with an error");
            }
            drop(permit);
        };
        match graceful {
            Some(graceful) => {
                let watched = graceful.watch(connection);
                tokio::spawn(async move { ended(watched.await) });
            }
            None => {
                tokio::spawn(async move { ended(connection.await) });
            }
        }
    }
}
