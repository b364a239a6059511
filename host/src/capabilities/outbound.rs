//! Capability `outbound`: HTTP requests to the hosts a tenant's
//! `allowed_outbound_hosts` names, on `wasi:http/outgoing-handler@0.2.0`
//! (through wasmtime-wasi-http, whose `send_request` hook is this policy).
//!
//! - link: `wasi:http/types` and `outgoing-handler`, for every image; with
//!   no grant every request is refused;
//! - grant: the allow-list, parsed at load (a bad entry fails the load);
//! - prepare: per-request counters and the request's deadline.
//!
//! Each request is checked here, in the host, before anything is sent:
//! its scheme, host and port must match an entry; the name is resolved
//! once (or taken from `[outbound] resolve`) and an internal address
//! (loopback, private, link-local such as the cloud metadata service, ...,
//! see `grants::is_internal`) is refused unless the matching entry names
//! that address itself; the connection goes to the address that was
//! checked, never to a second lookup (no DNS rebinding), and the `Host`
//! header is the authority that was checked. Redirects are not followed
//! here: each one is a new request, checked again. Bounds per request:
//! requests made, response bytes (all of them together), and time, which
//! never goes past the request's own deadline.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use wasmtime_wasi_http::p2::bindings::http::types::ErrorCode;
use wasmtime_wasi_http::p2::body::{HyperIncomingBody, HyperOutgoingBody};
use wasmtime_wasi_http::p2::types::{
    HostFutureIncomingResponse, IncomingResponse, OutgoingRequestConfig,
};
use wasmtime_wasi_http::p2::{HttpResult, WasiHttpHooks};

use crate::grants::{AllowedHost, is_internal};
use crate::limits::OutboundLimits;

/// What one tenant was granted.
#[derive(Debug, Clone, Default)]
pub(crate) struct OutboundGrant {
    pub allowed: Vec<AllowedHost>,
    /// Names that resolve to a fixed address instead of through DNS.
    pub resolve: BTreeMap<String, IpAddr>,
    pub limits: OutboundLimits,
}

/// What a request's outbound calls did, for logs and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboundUsage {
    /// Requests sent (a response came back).
    pub ok: u32,
    /// Requests refused by the policy (host, address, scheme).
    pub denied: u32,
    /// Requests that failed (connection, TLS, timeout).
    pub failed: u32,
    /// Whether a per-request bound was reached.
    pub limit_hit: bool,
    /// Response body bytes received.
    pub bytes: u64,
}

/// One instance's state: the `send_request` hook.
pub(crate) struct OutboundState {
    grant: Arc<OutboundGrant>,
    deadline: Instant,
    requests: u32,
    usage: Arc<Mutex<OutboundUsage>>,
}

impl OutboundGrant {
    /// State for an instance whose request must end by `deadline`.
    pub(crate) fn prepare(self: &Arc<Self>, deadline: Instant) -> OutboundState {
        OutboundState {
            grant: self.clone(),
            deadline,
            requests: 0,
            usage: Arc::default(),
        }
    }
}

impl OutboundState {
    pub(crate) fn usage(&self) -> OutboundUsage {
        *self.usage.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn note(&self, f: impl FnOnce(&mut OutboundUsage)) {
        f(&mut self.usage.lock().unwrap_or_else(|e| e.into_inner()));
    }

    fn refuse(&self, reason: String) -> HttpResult<HostFutureIncomingResponse> {
        self.note(|u| u.denied = u.denied.saturating_add(1));
        Err(ErrorCode::InternalError(Some(reason)).into())
    }
}

/// The most bytes a response head may take (hyper's read buffer; its
/// smallest allowed value is 8 KiB).
const RESPONSE_HEAD_BYTES: usize = 64 * 1024;

/// The size of the guest's outgoing body chunks, and how many the host
/// buffers before the guest must wait: a request body the guest never sends
/// holds at most this much host memory.
const OUTGOING_BODY_CHUNK: usize = 16 * 1024;

impl WasiHttpHooks for OutboundState {
    fn outgoing_body_buffer_chunks(&mut self) -> usize {
        1
    }

    fn outgoing_body_chunk_size(&mut self) -> usize {
        OUTGOING_BODY_CHUNK
    }

    fn send_request(
        &mut self,
        request: hyper::Request<HyperOutgoingBody>,
        config: OutgoingRequestConfig,
    ) -> HttpResult<HostFutureIncomingResponse> {
        let https = config.use_tls;
        let scheme = if https { "https" } else { "http" };
        let Some(authority) = request.uri().authority().cloned() else {
            return Err(ErrorCode::HttpRequestUriInvalid.into());
        };
        // A userinfo (`user@host`) would reach the Host header and the
        // upstream as if it were part of the checked authority.
        if authority.as_str().contains('@') {
            return self.refuse(format!(
                "{scheme}://{}: credentials in the URL are not sent; use an Authorization header",
                authority.host()
            ));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let url = format!("{scheme}://{authority}");
        let admitting: Vec<AllowedHost> = self
            .grant
            .allowed
            .iter()
            .filter(|entry| entry.admits(https, &host, port))
            .cloned()
            .collect();
        if admitting.is_empty() {
            return self.refuse(format!("{url} is not in allowed_outbound_hosts"));
        }
        self.requests = self.requests.saturating_add(1);
        if self.requests > self.grant.limits.max_requests {
            self.note(|u| u.limit_hit = true);
            return Err(ErrorCode::InternalError(Some(format!(
                "more than {} outbound requests in one request",
                self.grant.limits.max_requests
            )))
            .into());
        }
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(ErrorCode::ConnectionTimeout.into());
        }
        // The names in `resolve` are stored lower-case, without a trailing dot.
        let fixed = self.grant.resolve.get(&host).copied();
        let call = Call {
            url,
            host,
            port,
            https,
            authority: authority.to_string(),
            admitting,
            fixed,
            connect_timeout: config.connect_timeout.min(remaining),
            first_byte_timeout: config.first_byte_timeout.min(remaining),
            between_bytes_timeout: config.between_bytes_timeout.min(remaining),
            budget: Budget {
                max: self.grant.limits.max_response_bytes,
                usage: self.usage.clone(),
            },
        };
        let usage = self.usage.clone();
        let task = wasmtime_wasi::runtime::spawn(async move {
            let result = call.send(request).await;
            let mut usage = usage.lock().unwrap_or_else(|e| e.into_inner());
            match &result {
                Ok(_) => usage.ok = usage.ok.saturating_add(1),
                Err(ErrorCode::InternalError(Some(reason)))
                    if reason.contains("internal address") =>
                {
                    usage.denied = usage.denied.saturating_add(1)
                }
                Err(_) => usage.failed = usage.failed.saturating_add(1),
            }
            Ok(result)
        });
        Ok(HostFutureIncomingResponse::pending(task))
    }
}

/// One checked request on its way.
struct Call {
    url: String,
    host: String,
    port: u16,
    https: bool,
    authority: String,
    /// The allow-list entries that admitted it (one may name the address).
    admitting: Vec<AllowedHost>,
    /// An address from `[outbound] resolve`.
    fixed: Option<IpAddr>,
    connect_timeout: Duration,
    first_byte_timeout: Duration,
    between_bytes_timeout: Duration,
    budget: Budget,
}

impl Call {
    /// The addresses the host may be reached at: resolved once, and the
    /// internal ones only if an entry names them.
    async fn addresses(&self) -> Result<Vec<SocketAddr>, ErrorCode> {
        let candidates: Vec<IpAddr> = if let Ok(ip) = self.host.parse::<IpAddr>() {
            vec![ip]
        } else if let Some(ip) = self.fixed {
            vec![ip]
        } else {
            let lookup = tokio::net::lookup_host((self.host.as_str(), self.port));
            tokio::time::timeout(self.connect_timeout, lookup)
                .await
                .map_err(|_| ErrorCode::DnsTimeout)?
                .map_err(|_| {
                    ErrorCode::DnsError(
                        wasmtime_wasi_http::p2::bindings::http::types::DnsErrorPayload {
                            rcode: Some("address not available".into()),
                            info_code: Some(0),
                        },
                    )
                })?
                .map(|a| a.ip())
                .collect()
        };
        let allowed: Vec<SocketAddr> = candidates
            .iter()
            .filter(|ip| {
                !is_internal(**ip)
                    || self
                        .admitting
                        .iter()
                        .any(|e| e.names_address(&self.host, **ip))
            })
            .map(|ip| SocketAddr::new(*ip, self.port))
            .collect();
        if allowed.is_empty() {
            let shown = candidates
                .first()
                .map(|ip| ip.to_string())
                .unwrap_or_default();
            return Err(ErrorCode::InternalError(Some(format!(
                "{}: {} resolves to {shown}, an internal address, which allowed_outbound_hosts does \
                 not name (name the address itself to allow it)",
                self.url, self.host
            ))));
        }
        Ok(allowed)
    }

    async fn connect(&self) -> Result<tokio::net::TcpStream, ErrorCode> {
        let mut last = ErrorCode::ConnectionRefused;
        for address in self.addresses().await? {
            match tokio::time::timeout(
                self.connect_timeout,
                tokio::net::TcpStream::connect(address),
            )
            .await
            {
                Ok(Ok(stream)) => return Ok(stream),
                Ok(Err(_)) => last = ErrorCode::ConnectionRefused,
                Err(_) => last = ErrorCode::ConnectionTimeout,
            }
        }
        Err(last)
    }

    /// HTTP/1.1 over an established stream; the connection is driven on
    /// its own task, which ends with the response body or its sender.
    async fn handshake<IO>(
        &self,
        io: IO,
    ) -> Result<
        (
            hyper::client::conn::http1::SendRequest<HyperOutgoingBody>,
            wasmtime_wasi::runtime::AbortOnDropJoinHandle<()>,
        ),
        ErrorCode,
    >
    where
        IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        // A response head is bounded like a request head (64 KiB): the
        // guest can keep many responses' headers alive in its resource
        // table, so their size is host memory it controls.
        let mut builder = hyper::client::conn::http1::Builder::new();
        builder.max_buf_size(RESPONSE_HEAD_BYTES);
        let (sender, connection) =
            tokio::time::timeout(self.connect_timeout, builder.handshake(io))
                .await
                .map_err(|_| ErrorCode::ConnectionTimeout)?
                .map_err(|e| ErrorCode::InternalError(Some(format!("{}: {e}", self.url))))?;
        let worker = wasmtime_wasi::runtime::spawn(async move {
            let _ = connection.await;
        });
        Ok((sender, worker))
    }

    async fn send(
        self,
        mut request: hyper::Request<HyperOutgoingBody>,
    ) -> Result<IncomingResponse, ErrorCode> {
        use wasmtime_wasi_http::io::TokioIo;
        let tcp = self.connect().await?;
        let _ = tcp.set_nodelay(true);
        // The Host header is the authority that was checked.
        let host = hyper::header::HeaderValue::from_str(&self.authority)
            .map_err(|_| ErrorCode::HttpRequestUriInvalid)?;
        request.headers_mut().insert(hyper::header::HOST, host);
        *request.uri_mut() = http::Uri::builder()
            .path_and_query(
                request
                    .uri()
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/"),
            )
            .build()
            .map_err(|_| ErrorCode::HttpRequestUriInvalid)?;
        let (mut sender, worker) = if self.https {
            let name = rustls::pki_types::ServerName::try_from(self.host.clone())
                .map_err(|_| ErrorCode::TlsProtocolError)?;
            let tls = tokio::time::timeout(self.connect_timeout, TLS.connect(name, tcp))
                .await
                .map_err(|_| ErrorCode::ConnectionTimeout)?
                .map_err(|e| {
                    if e.to_string().contains("certificate") {
                        ErrorCode::TlsCertificateError
                    } else {
                        ErrorCode::TlsProtocolError
                    }
                })?;
            self.handshake(TokioIo::new(tls)).await?
        } else {
            self.handshake(TokioIo::new(tcp)).await?
        };
        let response = tokio::time::timeout(self.first_byte_timeout, sender.send_request(request))
            .await
            .map_err(|_| ErrorCode::ConnectionReadTimeout)?
            .map_err(|e| ErrorCode::InternalError(Some(format!("{}: {e}", self.url))))?;
        let budget = self.budget;
        let resp = response.map(|body| {
            Counted {
                inner: body
                    .map_err(|e| ErrorCode::InternalError(Some(e.to_string())))
                    .boxed_unsync(),
                budget,
            }
            .boxed_unsync()
        });
        Ok(IncomingResponse {
            resp,
            worker: Some(worker),
            between_bytes_timeout: self.between_bytes_timeout,
        })
    }
}

/// The response bytes one request may still receive, over all its calls.
#[derive(Clone)]
struct Budget {
    max: u64,
    usage: Arc<Mutex<OutboundUsage>>,
}

/// A response body that counts its bytes against the request's budget and
/// fails once it is spent.
struct Counted {
    inner: HyperIncomingBody,
    budget: Budget,
}

impl Body for Counted {
    type Data = Bytes;
    type Error = ErrorCode;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ErrorCode>>> {
        let frame = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &frame
            && let Some(data) = frame.data_ref()
        {
            let mut usage = self.budget.usage.lock().unwrap_or_else(|e| e.into_inner());
            usage.bytes += data.len() as u64;
            if usage.bytes > self.budget.max {
                usage.limit_hit = true;
                return Poll::Ready(Some(Err(ErrorCode::HttpResponseBodySize(Some(
                    self.budget.max,
                )))));
            }
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}

/// TLS for outbound requests: rustls with the platform's root
/// certificates (Mozilla's bundled ones where the platform has none).
static TLS: LazyLock<tokio_rustls::TlsConnector> = LazyLock::new(|| {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(certificate);
    }
    if roots.is_empty() {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
});
