//! One request through the server: find its tenant (strict Host and path
//! rules, see `tenants`), read its body within the size and time bounds
//! before any guest runs, dispatch it to a fresh instance, log one line
//! (plus the guest's output, tagged and escaped) and count it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HOST};
use http::{HeaderName, HeaderValue, StatusCode, Version};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use tracing::{info, warn};

use super::metrics::Metrics;
use super::tenant::{Tenant, TenantStatus};
use crate::error::DispatchError;
use crate::guest_text::escape_controls;
use crate::http::{Request, Response};
use crate::instance::Exchange;
use crate::routing::{self, TenantRoutes};
use crate::runtime::Runtime;

pub(crate) type HttpResponse = hyper::Response<Full<Bytes>>;

/// Everything requests share.
pub(crate) struct App {
    pub runtime: Arc<Runtime>,
    pub tenants: Vec<Tenant>,
    pub routes: TenantRoutes,
    pub metrics: Metrics,
    pub body_timeout: Duration,
    pub request_ids: RequestIds,
}

/// A refusal before any guest ran: status, the limit hit, the response.
type Refusal = (u16, Option<&'static str>, HttpResponse);

impl App {
    pub(crate) async fn handle(&self, request: hyper::Request<Incoming>) -> HttpResponse {
        let id = self.request_ids.next();
        let started = Instant::now();
        let method = request.method().to_string();
        let head = request.method() == http::Method::HEAD;
        let raw_path = request.uri().path().to_owned();
        let target = match self.route(&request) {
            Ok(target) => target,
            Err((status, message)) => {
                info!(target: "pycage::request", tenant = "-", request_id = %id, %method,
                    path = %raw_path, status = status.as_u16(), duration_ms = ms(started), "request");
                self.metrics
                    .observe("-", status.as_u16(), started.elapsed().as_secs_f64(), None);
                return finish(error_response(status, &message), &id, head);
            }
        };
        let (index, tenant_path) = target;
        let tenant = &self.tenants[index];
        let mut capability = None;
        let (status, limit, response) = match tenant.handler() {
            None => self.unavailable(tenant),
            Some(handler) => match self.read_request(handler, &tenant_path, request).await {
                Ok(pycage_request) => {
                    let exchange = handler.dispatch(pycage_request).await;
                    log_exchange(&tenant.name, &id, &exchange);
                    self.metrics.observe_usage(&tenant.name, &exchange.usage);
                    capability = exchange.usage.failure();
                    let limit = exchange
                        .result
                        .as_ref()
                        .err()
                        .and_then(DispatchError::limit);
                    let response = exchange.response();
                    (response.status, limit, to_http(response))
                }
                Err(refusal) => refusal,
            },
        };
        info!(target: "pycage::request", tenant = %tenant.name, request_id = %id, %method,
            path = %raw_path, status, duration_ms = ms(started), limit = limit.unwrap_or("-"),
            capability = capability.unwrap_or("-"), "request");
        self.metrics
            .observe(&tenant.name, status, started.elapsed().as_secs_f64(), limit);
        finish(response, &id, head)
    }

    /// The tenant and the (normalised, prefix-stripped) path it sees.
    fn route(
        &self,
        request: &hyper::Request<Incoming>,
    ) -> Result<(usize, String), (StatusCode, String)> {
        let host_headers: Vec<&[u8]> = request
            .headers()
            .get_all(HOST)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        let bad = |e: routing::BadTarget| (StatusCode::BAD_REQUEST, e.to_string());
        let http11 = request.version() != Version::HTTP_10 && request.version() != Version::HTTP_09;
        let host = routing::host_of(
            request.uri().authority().map(|a| a.as_str()),
            &host_headers,
            http11,
        )
        .map_err(bad)?;
        let path = routing::normalize_path(request.uri().path()).map_err(bad)?;
        let (index, tenant_path) = self.routes.select(host.as_deref(), &path).ok_or_else(|| {
            (
                StatusCode::NOT_FOUND,
                "no tenant serves this host and path".to_owned(),
            )
        })?;
        Ok((index, tenant_path.to_owned()))
    }

    fn unavailable(&self, tenant: &Tenant) -> Refusal {
        let (message, retry) = match tenant.status() {
            TenantStatus::Failed => ("this tenant failed to load; see the server log", "30"),
            _ => ("this tenant is still loading", "5"),
        };
        let mut response = error_response(StatusCode::SERVICE_UNAVAILABLE, message);
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from_static(retry));
        (503, Some("unavailable"), response)
    }

    /// Turn the HTTP request into a pycage request, refusing oversized,
    /// slow or unreadable ones before any guest runs.
    async fn read_request(
        &self,
        handler: &crate::runtime::Handler,
        tenant_path: &str,
        request: hyper::Request<Incoming>,
    ) -> Result<Request, Refusal> {
        let limit = handler.limits().max_request_body;
        let too_large = |size: usize| {
            let error = DispatchError::RequestTooLarge { size, limit };
            (413, error.limit(), to_http(Response::for_error(&error)))
        };
        let declared = request
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(size) = declared
            && size > limit as u64
        {
            return Err(too_large(usize::try_from(size).unwrap_or(usize::MAX)));
        }
        let (parts, body) = request.into_parts();
        // The whole body must arrive within the body timeout, however it
        // trickles in (an `Expect: 100-continue` that never sends included).
        let collected =
            tokio::time::timeout(self.body_timeout, Limited::new(body, limit).collect());
        let body = match collected.await {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(error)) if error.is::<LengthLimitError>() => return Err(too_large(limit + 1)),
            Ok(Err(_)) => {
                return Err((
                    400,
                    None,
                    error_response(StatusCode::BAD_REQUEST, "could not read the request body"),
                ));
            }
            Err(_) => {
                let mut response = error_response(
                    StatusCode::REQUEST_TIMEOUT,
                    "the request body did not arrive in time",
                );
                response
                    .headers_mut()
                    .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
                return Err((408, Some("body_timeout"), response));
            }
        };
        let target = match parts.uri.query() {
            Some(query) => format!("{tenant_path}?{query}"),
            None => tenant_path.to_owned(),
        };
        let mut request = Request::new(parts.method.as_str(), &target).map_err(|error| {
            (
                400,
                None,
                error_response(StatusCode::BAD_REQUEST, &error.to_string()),
            )
        })?;
        request.headers = parts
            .headers
            .iter()
            .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
            .collect();
        request.body = body.to_vec();
        Ok(request)
    }
}

fn ms(started: Instant) -> f64 {
    (started.elapsed().as_secs_f64() * 1e6).round() / 1e3
}

/// Log what the guest printed and, for failures, why (tracebacks go to the
/// log, never to the client).
fn log_exchange(tenant: &str, id: &str, exchange: &Exchange) {
    for (stream, output) in [("stdout", &exchange.stdout), ("stderr", &exchange.stderr)] {
        for line in String::from_utf8_lossy(&output.bytes).lines() {
            // The guest's text goes last, in a field of its own: it cannot
            // pass for the fields before it.
            info!(target: "pycage::guest", tenant, request_id = id, stream, line = %escape_controls(line), "guest output");
        }
        if output.truncated {
            warn!(target: "pycage::guest", tenant, request_id = id, stream, "guest output over the limit was dropped");
        }
    }
    match &exchange.result {
        Err(DispatchError::HandlerException { message, traceback }) => {
            warn!(target: "pycage::guest", tenant, request_id = id, error = %escape_controls(message.as_str()), "handler raised");
            for line in traceback.lines() {
                info!(target: "pycage::guest", tenant, request_id = id, stream = "traceback", line = %escape_controls(line), "guest output");
            }
        }
        Err(DispatchError::NotFound | DispatchError::MethodNotAllowed { .. }) | Ok(_) => {}
        Err(other) => {
            warn!(target: "pycage::request", tenant, request_id = id, error = %escape_controls(&other.to_string()), "request failed")
        }
    }
}

pub(crate) fn to_http(response: Response) -> HttpResponse {
    let mut builder = hyper::Response::builder().status(response.status);
    for (name, value) in &response.headers {
        // Already validated at the sandbox boundary; skip rather than panic.
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            builder = builder.header(name, value);
        }
    }
    builder
        .body(Full::new(Bytes::from(response.body)))
        .unwrap_or_else(|_| {
            let mut fallback = hyper::Response::new(Full::new(Bytes::from_static(b"")));
            *fallback.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            fallback
        })
}

/// A small JSON error from the host itself.
pub(crate) fn error_response(status: StatusCode, message: &str) -> HttpResponse {
    to_http(Response::host_error(status.as_u16(), message))
}

/// The response as sent: with its request id, and for HEAD without a body
/// (hyper would not send it, but would announce its length), whatever
/// answered: the handler, or the host with an error.
fn finish(response: HttpResponse, id: &str, head: bool) -> HttpResponse {
    let mut response = with_request_id(response, id);
    if head {
        *response.body_mut() = Full::new(Bytes::new());
    }
    response
}

fn with_request_id(mut response: HttpResponse, id: &str) -> HttpResponse {
    if let Ok(value) = HeaderValue::from_str(id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// Request ids that are unique in this process but tell a client nothing
/// about other requests (how many the server has served, or for whom): a
/// counter under a keyed hash whose key is random per process.
pub(crate) struct RequestIds {
    key: [u8; 32],
    counter: AtomicU64,
}

impl RequestIds {
    pub(crate) fn new() -> Self {
        let mut key = [0u8; 32];
        let mut filled = 0;
        while filled < key.len() {
            match rustix::rand::getrandom(&mut key[filled..], rustix::rand::GetRandomFlags::empty())
            {
                Ok(n) => filled += n,
                // No entropy source: the ids are still unique, just guessable.
                Err(_) => break,
            }
        }
        Self {
            key,
            counter: AtomicU64::new(0),
        }
    }

    pub(crate) fn next(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let hash = blake3::keyed_hash(&self.key, &n.to_le_bytes());
        hash.to_hex()[..16].to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_unique_and_not_a_counter() {
        let ids = RequestIds::new();
        let seen: std::collections::HashSet<String> = (0..10_000).map(|_| ids.next()).collect();
        assert_eq!(seen.len(), 10_000);
        let other = RequestIds::new();
        assert_ne!(ids.next(), other.next());
        let first = RequestIds::new().next();
        assert_ne!(first, format!("{:016x}", 0));
        assert_ne!(first, format!("{:016x}", 1));
    }
}
