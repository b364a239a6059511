//! Invariants of every place the host parses or converts untrusted data.
//! Each `check_*` takes raw fuzzer bytes and panics if an invariant breaks.

use arbitrary::{Arbitrary, Unstructured};
use pycage::config::ServeConfig;
use pycage::http::{Request, Response};
use pycage::server::tenants::{self, TenantRoutes};

/// HTTP request line + headers -> the request handed to a guest.
#[derive(Debug, Arbitrary)]
struct RequestInput {
    method: String,
    target: String,
    headers: Vec<(String, Vec<u8>)>,
}

pub fn check_request(data: &[u8]) {
    let Ok(input) = RequestInput::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let Ok(mut request) = Request::new(&input.method, &input.target) else {
        return;
    };
    assert!(request.path.starts_with('/'), "path {:?}", request.path);
    // The query is everything after the first '?', verbatim (it may itself
    // contain '?': found by this target, an over-strict first version).
    match input.target.split_once('?') {
        Some((_, query)) => assert_eq!(request.query, query),
        None => assert!(request.query.is_empty()),
    }
    assert_eq!(request.method, input.method);
    for (name, value) in &input.headers {
        match request.clone().with_header(name, value) {
            Ok(next) => {
                let (stored_name, stored_value) = next.headers.last().unwrap();
                assert!(http::HeaderName::from_bytes(stored_name.as_bytes()).is_ok());
                assert!(!stored_value.iter().any(|b| matches!(b, b'\r' | b'\n' | 0)));
                request = next;
            }
            Err(_) => continue,
        }
    }
}

/// A guest's response -> what the host sends.
#[derive(Debug, Arbitrary)]
struct ResponseInput {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    max_body: u16,
}

pub fn check_response(data: &[u8]) {
    let Ok(input) = ResponseInput::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let max_body = usize::from(input.max_body);
    let Ok(response) = Response::from_guest(input.status, input.headers, input.body, max_body)
    else {
        return;
    };
    assert!((200..=599).contains(&response.status));
    let head: usize = response
        .headers
        .iter()
        .map(|(name, value)| name.len() + value.len() + 4)
        .sum();
    assert!(head <= pycage::http::MAX_RESPONSE_HEAD_BYTES);
    assert!(response.body.len() + head <= max_body);
    if matches!(response.status, 204 | 205 | 304) {
        assert!(response.body.is_empty());
    }
    assert!(response.headers.len() <= pycage::http::MAX_RESPONSE_HEADERS);
    let mut builder = http::Response::builder().status(response.status);
    for (name, value) in &response.headers {
        assert!(!["content-length", "transfer-encoding", "connection"].contains(&name.as_str()));
        assert!(
            !value.iter().any(|b| matches!(b, b'\r' | b'\n' | 0)),
            "{name}: {value:?}"
        );
        builder = builder.header(name.as_str(), value.as_slice());
    }
    builder
        .body(())
        .expect("a validated response always builds");
}

/// `pycage.toml` text -> a validated config (or an error, never a panic).
pub fn check_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let base = std::env::temp_dir();
    if let Ok(config) = ServeConfig::parse(text, std::path::Path::new("fuzz.toml"), &base) {
        assert!(!config.tenants.is_empty());
        for tenant in &config.tenants {
            assert!(!tenant.name.is_empty() && tenant.name.len() <= 64);
            if let Some(prefix) = &tenant.path_prefix {
                assert!(prefix.starts_with('/') && !prefix.ends_with('/'));
            }
            assert!(tenant.limits.memory_bytes >= 16 << 20);
        }
    }
}

/// Host header + path -> tenant and the path it sees.
#[derive(Debug, Arbitrary)]
struct RoutesInput {
    tenants: Vec<(Vec<String>, Option<String>)>,
    host: Option<Vec<u8>>,
    path: String,
}

pub fn check_tenant_routes(data: &[u8]) {
    let Ok(input) = RoutesInput::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let mut routes = TenantRoutes::default();
    for (index, (hosts, prefix)) in input.tenants.iter().enumerate() {
        routes.add(index, hosts, prefix.as_deref());
    }
    let host = match &input.host {
        Some(value) => match tenants::parse_host(value) {
            Ok(host) => {
                // A parsed host is bare: no port, no trailing dot, lower case.
                assert!(!host.ends_with('.'), "{host:?}");
                assert_eq!(host, host.to_ascii_lowercase());
                assert!(host.starts_with('[') || !host.contains(':'), "{host:?}");
                Some(host)
            }
            Err(_) => return,
        },
        None => None,
    };
    let Ok(path) = tenants::normalize_path(&input.path) else {
        return;
    };
    // Normalised: rooted, no dot-segment left, and normalising again
    // changes nothing.
    assert!(path.starts_with('/'), "{path:?}");
    assert!(
        !path
            .split('/')
            .any(|segment| segment == "." || segment == ".."),
        "{path:?} from {:?}",
        input.path
    );
    assert_eq!(tenants::normalize_path(&path).as_deref(), Ok(path.as_str()));
    if let Some((tenant, seen)) = routes.select(host.as_deref(), &path) {
        assert!(tenant < input.tenants.len());
        assert!(seen.starts_with('/'), "{seen:?}");
        assert!(
            path.ends_with(seen) || seen == "/",
            "{seen:?} is not part of {path:?}"
        );
        if let Some(prefix) = &input.tenants[tenant].1 {
            assert!(path.starts_with(prefix.as_str()));
        }
    }
}
