//! Host-side request and response values and the checks at the boundary.
//!
//! Requests are validated before a guest sees them; responses are validated
//! after the guest produced them, because the guest is untrusted: a status
//! outside 100..=599 or a header that could split an HTTP response never
//! leaves the host.

use http::{HeaderName, HeaderValue, Method, StatusCode};
use percent_encoding::percent_decode_str;

use crate::error::DispatchError;

/// Framing and connection headers are the host's business, not the handler's:
/// they are dropped from handler responses so a handler cannot desynchronise
/// the connection (e.g. with a false Content-Length).
const HOST_OWNED_HEADERS: &[&str] = &[
    "connection",
    "content-length",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Most headers a handler response may carry.
pub const MAX_RESPONSE_HEADERS: usize = 100;
/// Most bytes those headers may take together (each counted as
/// `name: value\r\n`). They also count towards the response size limit.
pub const MAX_RESPONSE_HEAD_BYTES: usize = 64 << 10;

fn reason_phrase(status: u16) -> Option<&'static str> {
    StatusCode::from_u16(status).ok()?.canonical_reason()
}

/// A request as handed to a handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Method token, e.g. "GET" (case-sensitive, as in HTTP).
    pub method: String,
    /// Percent-decoded path starting with "/".
    pub path: String,
    /// Raw query string without "?".
    pub query: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

/// Why a request cannot be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum RequestError {
    #[error("invalid method `{0}`")]
    Method(String),
    #[error("invalid path `{0}`: it must start with '/' and decode to UTF-8")]
    Path(String),
    #[error("invalid header name `{0}`")]
    HeaderName(String),
    #[error("invalid value for header `{0}`")]
    HeaderValue(String),
}

impl Request {
    /// A request for `target` ("/path" or "/path?query"), with no headers or body.
    pub fn new(method: &str, target: &str) -> Result<Self, RequestError> {
        Method::from_bytes(method.as_bytes()).map_err(|_| RequestError::Method(method.into()))?;
        let (raw_path, query) = target.split_once('?').unwrap_or((target, ""));
        if !raw_path.starts_with('/') {
            return Err(RequestError::Path(target.into()));
        }
        let path = percent_decode_str(raw_path)
            .decode_utf8()
            .map_err(|_| RequestError::Path(target.into()))?
            .into_owned();
        Ok(Self {
            method: method.to_owned(),
            path,
            query: query.to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
        })
    }

    /// Append a header after checking its name and value.
    pub fn with_header(
        mut self,
        name: &str,
        value: impl AsRef<[u8]>,
    ) -> Result<Self, RequestError> {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| RequestError::HeaderName(name.into()))?;
        let value = HeaderValue::from_bytes(value.as_ref())
            .map_err(|_| RequestError::HeaderValue(name.to_string()))?;
        self.headers
            .push((name.to_string(), value.as_bytes().to_vec()));
        Ok(self)
    }

    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }
}

/// A response produced by a handler or, for errors, by the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The standard reason phrase ("OK", "Not Found", ...), or "" if none.
    pub fn reason(&self) -> &'static str {
        reason_phrase(self.status).unwrap_or("")
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// A JSON response made by the host (`content-type: application/json`).
    pub fn json(status: u16, body: &serde_json::Value) -> Self {
        Self {
            status,
            headers: vec![("content-type".to_owned(), b"application/json".to_vec())],
            body: body.to_string().into_bytes(),
        }
    }

    /// The host's own error: `{"error": message}` with `status`.
    pub fn host_error(status: u16, message: &str) -> Self {
        Self::json(status, &serde_json::json!({ "error": message }))
    }

    /// The response a server sends when dispatch failed: a small JSON body
    /// that never includes guest details (tracebacks stay in the logs).
    pub fn for_error(error: &DispatchError) -> Self {
        let status = error.status();
        let reason = reason_phrase(status).unwrap_or("Error");
        // A limit is the operator's policy, safe and useful to name; anything
        // about the guest's own failure stays in the logs.
        let body = match error.limit() {
            Some(_) => serde_json::json!({ "error": reason, "detail": error.to_string() }),
            None => serde_json::json!({ "error": reason }),
        };
        let mut response = Self::json(status, &body);
        match error {
            DispatchError::MethodNotAllowed { allowed } => {
                response
                    .headers
                    .push(("allow".to_owned(), allowed.join(", ").into_bytes()));
            }
            DispatchError::Overloaded { .. } => {
                response
                    .headers
                    .push(("retry-after".to_owned(), b"1".to_vec()));
            }
            _ => {}
        }
        response
    }

    /// Check a response that came from the guest; drop host-owned headers
    /// and the body of a status that has none (204, 205, 304). `max_size`
    /// bounds the body and the headers together.
    pub fn from_guest(
        status: u16,
        headers: Vec<(String, Vec<u8>)>,
        mut body: Vec<u8>,
        max_size: usize,
    ) -> Result<Self, DispatchError> {
        // 1xx are interim responses (and 101 switches protocols): a handler
        // answers with a final one.
        if !(200..=599).contains(&status) {
            return Err(DispatchError::InvalidResponse(format!(
                "status {status} is not in 200..=599"
            )));
        }
        if headers.len() > MAX_RESPONSE_HEADERS {
            return Err(DispatchError::InvalidResponse(format!(
                "{} headers, over the limit of {MAX_RESPONSE_HEADERS}",
                headers.len()
            )));
        }
        let head: usize = headers
            .iter()
            .map(|(name, value)| name.len() + value.len() + 4)
            .sum();
        if head > MAX_RESPONSE_HEAD_BYTES {
            return Err(DispatchError::InvalidResponse(format!(
                "{head} bytes of headers, over the limit of {MAX_RESPONSE_HEAD_BYTES}"
            )));
        }
        if matches!(status, 204 | 205 | 304) {
            body.clear();
        }
        if body.len().saturating_add(head) > max_size {
            return Err(DispatchError::ResponseTooLarge { limit: max_size });
        }
        let mut checked = Vec::with_capacity(headers.len());
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                DispatchError::InvalidResponse(format!("invalid header name {name:?}"))
            })?;
            HeaderValue::from_bytes(&value).map_err(|_| {
                DispatchError::InvalidResponse(format!("invalid value for header `{name}`"))
            })?;
            if !HOST_OWNED_HEADERS.contains(&name.as_str()) {
                checked.push((name.to_string(), value));
            }
        }
        Ok(Self {
            status,
            headers: checked,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_target_is_split_and_decoded() {
        let r = Request::new("GET", "/caf%C3%A9/x?a=1&b=%20").unwrap();
        assert_eq!(r.path, "/café/x");
        assert_eq!(r.query, "a=1&b=%20");
        assert_eq!(
            Request::new("GET", "nope"),
            Err(RequestError::Path("nope".into()))
        );
        assert!(Request::new("GET", "/%FF").is_err());
        assert!(Request::new("G ET", "/").is_err());
    }

    #[test]
    fn request_headers_are_checked() {
        let r = Request::new("GET", "/").unwrap();
        assert!(r.clone().with_header("x-ok", "fine").is_ok());
        assert!(r.clone().with_header("bad name", "v").is_err());
        assert!(r.with_header("x", "a\r\nb").is_err());
    }

    #[test]
    fn guest_responses_are_validated() {
        let ok = Response::from_guest(
            200,
            vec![
                ("X-A".into(), b"1".to_vec()),
                ("Content-Length".into(), b"999".to_vec()),
            ],
            b"hi".to_vec(),
            100,
        )
        .unwrap();
        assert_eq!(ok.headers, vec![("x-a".to_owned(), b"1".to_vec())]);
        assert!(Response::from_guest(600, vec![], vec![], 10).is_err());
        assert!(Response::from_guest(99, vec![], vec![], 10).is_err());
        // No interim or protocol-switching responses from a handler.
        assert!(Response::from_guest(101, vec![], vec![], 10).is_err());
        assert!(Response::from_guest(100, vec![], vec![], 10).is_err());
        // Statuses without content lose what the handler put there.
        for status in [204, 205, 304] {
            let r = Response::from_guest(status, vec![], b"body".to_vec(), 10).unwrap();
            assert!(r.body.is_empty(), "{status}");
        }
        // Headers count towards the size limit and have a bound of their own.
        assert!(matches!(
            Response::from_guest(200, vec![("x".into(), vec![b'a'; 8])], vec![0; 5], 10),
            Err(DispatchError::ResponseTooLarge { .. })
        ));
        let huge = vec![("allow".to_owned(), vec![b'G'; MAX_RESPONSE_HEAD_BYTES])];
        assert!(matches!(
            Response::from_guest(200, huge, vec![], usize::MAX),
            Err(DispatchError::InvalidResponse(_))
        ));
        assert!(
            Response::from_guest(200, vec![("x".into(), b"a\nb".to_vec())], vec![], 10).is_err()
        );
        assert!(
            Response::from_guest(200, vec![("a b".into(), b"v".to_vec())], vec![], 10).is_err()
        );
        assert!(matches!(
            Response::from_guest(200, vec![], vec![0; 11], 10),
            Err(DispatchError::ResponseTooLarge { limit: 10 })
        ));
    }

    #[test]
    fn error_responses_carry_allow() {
        let r = Response::for_error(&DispatchError::MethodNotAllowed {
            allowed: vec!["GET".into(), "HEAD".into()],
        });
        assert_eq!(r.status, 405);
        assert_eq!(r.header("Allow"), Some(&b"GET, HEAD"[..]));
    }
}
