//! `pycage serve`: an HTTP/1.1 front end (hyper) over loaded [`Handler`]s,
//! one or many tenants per process.
//!
//! Per request: pick the tenant by Host header and path prefix, enforce the
//! request body cap before any guest runs, dispatch to a fresh instance,
//! log one line (plus the guest's output, tagged), count it in the metrics.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HOST};
use http::{HeaderName, HeaderValue, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::metrics::Metrics;
use super::tenants::TenantRoutes;
use crate::builder::LoadEvent;
use crate::cache::Cache;
use crate::config::ServeConfig;
use crate::error::{DispatchError, LoadError};
use crate::http::{Request, Response};
use crate::output::escape_controls;
use crate::runtime::{Handler, LoadOptions, Runtime, RuntimeConfig};
use crate::sandbox::Exchange;

/// How long a client may take to send request headers (slow-loris bound).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head (request line + headers) the server buffers.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// A loaded handler and how requests reach it.
#[derive(Clone)]
pub struct Tenant {
    pub name: String,
    pub handler: Handler,
    /// Host names (lower-case, no port); empty means any host.
    pub hosts: Vec<String>,
    /// Path prefix such as "/shop", stripped before dispatch.
    pub path_prefix: Option<String>,
}

/// A tenant whose handler could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("tenant `{tenant}`: {source}")]
pub struct TenantLoadError {
    pub tenant: String,
    #[source]
    pub source: LoadError,
}

/// Runtime settings that fit `config`: its instance count and its largest
/// memory limit.
pub fn runtime_config(config: &ServeConfig, cache: Cache) -> RuntimeConfig {
    let mut runtime = RuntimeConfig::new(cache);
    runtime.max_instances = config.max_instances;
    runtime.max_memory_bytes = config.max_memory_bytes();
    runtime.queue_timeout = config.queue_timeout;
    runtime
}

/// Load (building where needed) every tenant of `config`.
pub fn load_tenants(
    runtime: &Runtime,
    config: &ServeConfig,
    on_event: &dyn Fn(LoadEvent<'_>),
) -> Result<Vec<Tenant>, TenantLoadError> {
    config
        .tenants
        .iter()
        .map(|tenant| {
            let options = LoadOptions {
                module: tenant.module.clone(),
                limits: tenant.limits.clone(),
                max_concurrency: tenant.max_concurrency,
                venv: tenant.venv.clone(),
            };
            let handler = runtime
                .load(&tenant.handler, &options, on_event)
                .map_err(|source| TenantLoadError {
                    tenant: tenant.name.clone(),
                    source,
                })?;
            info!(tenant = %tenant.name, handler = %tenant.handler.display(), cached = handler.cache_hit(), "loaded");
            Ok(Tenant {
                name: tenant.name.clone(),
                handler,
                hosts: tenant.hosts.clone(),
                path_prefix: tenant.path_prefix.clone(),
            })
        })
        .collect()
}

/// A bound, not yet running server.
pub struct Server {
    listener: TcpListener,
    admin: Option<TcpListener>,
    app: Arc<App>,
    shutdown_timeout: Duration,
}

struct App {
    runtime: Arc<Runtime>,
    tenants: Vec<Tenant>,
    routes: TenantRoutes,
    metrics: Metrics,
    next_id: AtomicU64,
}

type HttpResponse = hyper::Response<Full<Bytes>>;

impl Server {
    /// Bind the listener (and the admin listener, if any) without serving yet,
    /// so callers can learn the addresses (port 0 picks a free port).
    pub async fn bind(
        runtime: Arc<Runtime>,
        tenants: Vec<Tenant>,
        listen: SocketAddr,
        admin_listen: Option<SocketAddr>,
        shutdown_timeout: Duration,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let admin = match admin_listen {
            Some(addr) => Some(TcpListener::bind(addr).await?),
            None => None,
        };
        let mut routes = TenantRoutes::default();
        for (index, tenant) in tenants.iter().enumerate() {
            routes.add(index, &tenant.hosts, tenant.path_prefix.as_deref());
        }
        Ok(Self {
            listener,
            admin,
            app: Arc::new(App {
                runtime,
                tenants,
                routes,
                metrics: Metrics::new(),
                next_id: AtomicU64::new(1),
            }),
            shutdown_timeout,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serve until `shutdown` completes; then stop accepting, let in-flight
    /// requests finish for up to the shutdown timeout, and return.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> std::io::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        if let Some(admin) = self.admin {
            tokio::spawn(serve_admin(admin, self.app.clone(), stop_rx.clone()));
        }
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .max_buf_size(MAX_HEAD_BYTES);
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = self.listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(pair) => pair,
                        Err(error) => {
                            // Typically EMFILE: back off instead of spinning.
                            warn!(%error, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let app = self.app.clone();
                    let service = service_fn(move |request| {
                        let app = app.clone();
                        async move { Ok::<_, Infallible>(app.handle(request).await) }
                    });
                    let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
                    tokio::spawn(async move {
                        if let Err(error) = connection.await {
                            debug!(%peer, %error, "connection ended with an error");
                        }
                    });
                }
                () = &mut shutdown => break,
            }
        }
        drop(self.listener);
        let _ = stop_tx.send(true);
        info!(
            connections = graceful.count(),
            timeout = ?self.shutdown_timeout,
            "shutting down: no new connections, finishing in-flight requests"
        );
        tokio::select! {
            () = graceful.shutdown() => info!("all connections closed"),
            () = tokio::time::sleep(self.shutdown_timeout) => {
                warn!("shutdown deadline passed; dropping the remaining connections");
            }
        }
        Ok(())
    }
}

impl App {
    async fn handle(&self, request: hyper::Request<Incoming>) -> HttpResponse {
        let id = format!("{:016x}", self.next_id.fetch_add(1, Ordering::Relaxed));
        let started = Instant::now();
        let method = request.method().to_string();
        let path = request.uri().path().to_owned();
        let host = request
            .headers()
            .get(HOST)
            .and_then(|v| v.to_str().ok())
            .or(request.uri().host())
            .map(str::to_owned);

        let Some((index, tenant_path)) = self.routes.select(host.as_deref(), &path) else {
            let response =
                error_response(StatusCode::NOT_FOUND, "no tenant serves this host and path");
            info!(target: "pycage::request", tenant = "-", request_id = %id, %method, %path,
                status = 404, duration_ms = ms(started), "request");
            self.metrics
                .observe("-", 404, started.elapsed().as_secs_f64(), None);
            return with_request_id(response, &id);
        };
        let tenant = &self.tenants[index];
        let tenant_path = tenant_path.to_owned();
        let (status, limit, response) = match self.read_request(tenant, &tenant_path, request).await
        {
            Ok(pycage_request) => {
                let exchange = tenant.handler.dispatch(pycage_request).await;
                log_exchange(&tenant.name, &id, &exchange);
                let limit = exchange
                    .result
                    .as_ref()
                    .err()
                    .and_then(DispatchError::limit);
                let response = exchange.response();
                (response.status, limit, to_http(response))
            }
            Err(refusal) => refusal,
        };
        info!(target: "pycage::request", tenant = %tenant.name, request_id = %id, %method, %path,
            status, duration_ms = ms(started), limit = limit.unwrap_or("-"), "request");
        self.metrics
            .observe(&tenant.name, status, started.elapsed().as_secs_f64(), limit);
        with_request_id(response, &id)
    }

    /// Turn the HTTP request into a pycage request, refusing oversized or
    /// unreadable ones before any guest runs.
    async fn read_request(
        &self,
        tenant: &Tenant,
        tenant_path: &str,
        request: hyper::Request<Incoming>,
    ) -> Result<Request, (u16, Option<&'static str>, HttpResponse)> {
        let limit = tenant.handler.limits().max_request_body;
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
        let body = match Limited::new(body, limit).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(error) if error.is::<LengthLimitError>() => return Err(too_large(limit + 1)),
            Err(_) => {
                return Err((
                    400,
                    None,
                    error_response(StatusCode::BAD_REQUEST, "could not read the request body"),
                ));
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
            info!(target: "pycage::guest", tenant, request_id = id, stream, "{}", escape_controls(line));
        }
        if output.truncated {
            warn!(target: "pycage::guest", tenant, request_id = id, stream, "guest output over the limit was dropped");
        }
    }
    match &exchange.result {
        Err(DispatchError::HandlerException { message, traceback }) => {
            warn!(target: "pycage::guest", tenant, request_id = id, error = %escape_controls(message), "handler raised");
            for line in traceback.lines() {
                info!(target: "pycage::guest", tenant, request_id = id, stream = "traceback", "{}", escape_controls(line));
            }
        }
        Err(DispatchError::NotFound | DispatchError::MethodNotAllowed { .. }) | Ok(_) => {}
        Err(other) => {
            warn!(target: "pycage::request", tenant, request_id = id, error = %other, "request failed")
        }
    }
}

fn to_http(response: Response) -> HttpResponse {
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
        .unwrap_or_else(|_| error_response(StatusCode::INTERNAL_SERVER_ERROR, "invalid response"))
}

fn error_response(status: StatusCode, message: &str) -> HttpResponse {
    let body = serde_json::json!({ "error": message }).to_string();
    let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn with_request_id(mut response: HttpResponse, id: &str) -> HttpResponse {
    if let Ok(value) = HeaderValue::from_str(id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// The admin listener: `GET /metrics` only.
async fn serve_admin(listener: TcpListener, app: Arc<App>, mut stop: watch::Receiver<bool>) {
    info!(address = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "metrics at /metrics");
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
            _ = stop.changed() => return,
        };
        let app = app.clone();
        let service = service_fn(move |request: hyper::Request<Incoming>| {
            let app = app.clone();
            async move {
                Ok::<_, Infallible>(if request.uri().path() == "/metrics" {
                    let body = app.metrics.render(app.runtime.instances_in_use());
                    let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        HeaderValue::from_static(
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        ),
                    );
                    response
                } else {
                    error_response(StatusCode::NOT_FOUND, "only /metrics is served here")
                })
            }
        });
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
