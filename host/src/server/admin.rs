//! The admin listener: `GET /metrics` (Prometheus / OpenMetrics text),
//! `GET /healthz` (the process serves) and `GET /readyz` (every tenant
//! loaded: 200, else 503 naming the tenants that are not).

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;

use super::app::{App, HttpResponse, error_response, to_http};
use super::tenant::TenantStatus;
use crate::http::Response;

pub(crate) fn handle(app: &Arc<App>, request: &hyper::Request<Incoming>) -> HttpResponse {
    if request.method() != http::Method::GET && request.method() != http::Method::HEAD {
        return error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "the admin endpoints are GET only",
        );
    }
    match request.uri().path() {
        "/metrics" => {
            let body = app
                .metrics
                .render(app.runtime.instances_in_use(), &app.tenants);
            let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            response
        }
        "/healthz" => json(StatusCode::OK, serde_json::json!({ "status": "ok" })),
        "/readyz" => {
            let not_ready: Vec<serde_json::Value> = app
                .tenants
                .iter()
                .filter(|t| t.status() != TenantStatus::Ready)
                .map(|t| {
                    serde_json::json!({
                        "tenant": t.name,
                        "status": if t.status() == TenantStatus::Failed { "failed" } else { "loading" },
                    })
                })
                .collect();
            if not_ready.is_empty() {
                json(StatusCode::OK, serde_json::json!({ "status": "ready" }))
            } else {
                json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({ "status": "not ready", "tenants": not_ready }),
                )
            }
        }
        _ => error_response(
            StatusCode::NOT_FOUND,
            "the admin listener serves /metrics, /healthz and /readyz",
        ),
    }
}

fn json(status: StatusCode, value: serde_json::Value) -> HttpResponse {
    to_http(Response::json(status.as_u16(), &value))
}
