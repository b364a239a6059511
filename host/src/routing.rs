//! Which tenant a request is for, by its authority (Host) and path prefix,
//! read as strictly as HTTP/1.1 says (RFC 9112 §3.2, RFC 9110 §7.2), so that
//! no request reaches a tenant other than the one a proxy in front of
//! pycage would expect:
//!
//! - the authority comes from an absolute-form target when there is one
//!   (the Host header is then ignored), else from exactly one Host header;
//!   an HTTP/1.1 request with none, or with two, is a 400;
//! - a host is a reg-name or an IP literal with an optional port of at
//!   most 65535, compared case-insensitively and without a trailing dot
//!   (`shop.example.` is `shop.example`);
//! - the path's dot-segments are removed (`%2e` counts as `.`) before the
//!   prefix is matched, and the tenant sees that normalised path.
//!
//! All of it is pure, so it builds without the `runtime` feature for the
//! fuzz targets.

/// One way of reaching a tenant.
#[derive(Debug, Clone)]
struct Entry {
    host: Option<String>,
    prefix: Option<String>,
    tenant: usize,
}

/// The routing table. The most specific entry wins: one naming the host
/// beats one for any host, then the longer path prefix wins.
#[derive(Debug, Default, Clone)]
pub struct TenantRoutes {
    entries: Vec<Entry>,
}

/// Why a request cannot be routed at all (answered 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BadTarget {
    #[error("the request has no Host header")]
    MissingHost,
    #[error("the request has more than one Host header")]
    DuplicateHost,
    #[error("the Host header is not a valid host")]
    InvalidHost,
    #[error("the request target is not a valid path")]
    InvalidPath,
}

impl TenantRoutes {
    pub fn add(&mut self, tenant: usize, hosts: &[String], prefix: Option<&str>) {
        let prefix = prefix.map(str::to_owned);
        if hosts.is_empty() {
            self.entries.push(Entry {
                host: None,
                prefix,
                tenant,
            });
        } else {
            for host in hosts {
                let host = host.to_ascii_lowercase();
                self.entries.push(Entry {
                    host: Some(host.strip_suffix('.').unwrap_or(&host).to_owned()),
                    prefix: prefix.clone(),
                    tenant,
                });
            }
        }
        self.entries.sort_by_key(|e| {
            (
                std::cmp::Reverse(e.host.is_some()),
                std::cmp::Reverse(e.prefix.as_ref().map_or(0, String::len)),
            )
        });
    }

    /// The tenant for the normalised `host` (see [`host_of`]) and
    /// normalised `path` (see [`normalize_path`]), with the path the tenant
    /// sees (its prefix stripped).
    pub fn select<'p>(&self, host: Option<&str>, path: &'p str) -> Option<(usize, &'p str)> {
        self.entries.iter().find_map(|entry| {
            if let Some(wanted) = &entry.host
                && host != Some(wanted.as_str())
            {
                return None;
            }
            match &entry.prefix {
                None => Some((entry.tenant, path)),
                Some(prefix) => {
                    let rest = path.strip_prefix(prefix.as_str())?;
                    if rest.is_empty() {
                        Some((entry.tenant, "/"))
                    } else if rest.starts_with('/') {
                        Some((entry.tenant, rest))
                    } else {
                        None // "/shopping" is not under "/shop"
                    }
                }
            }
        })
    }
}

/// The host a request is for, lower-cased, without port or trailing dot.
///
/// `target_authority` is the authority of an absolute-form target, if the
/// request had one; `host_headers` are the values of every Host header;
/// `http11` says whether the request is HTTP/1.1 (HTTP/1.0 may omit Host).
pub fn host_of(
    target_authority: Option<&str>,
    host_headers: &[&[u8]],
    http11: bool,
) -> Result<Option<String>, BadTarget> {
    if host_headers.len() > 1 {
        return Err(BadTarget::DuplicateHost);
    }
    if let Some(authority) = target_authority {
        return parse_host(authority.as_bytes()).map(Some);
    }
    match host_headers.first() {
        Some(value) => parse_host(value).map(Some),
        None if http11 => Err(BadTarget::MissingHost),
        None => Ok(None),
    }
}

/// `host[:port]` (RFC 3986 `host [ ":" port ]`, no userinfo) as the bare
/// host, lower-cased, without a trailing dot.
pub fn parse_host(value: &[u8]) -> Result<String, BadTarget> {
    let text = std::str::from_utf8(value).map_err(|_| BadTarget::InvalidHost)?;
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (literal, after) = rest.split_once(']').ok_or(BadTarget::InvalidHost)?;
        let valid = !literal.is_empty()
            && literal
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.');
        if !valid {
            return Err(BadTarget::InvalidHost);
        }
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or(BadTarget::InvalidHost)?),
        };
        (format!("[{}]", literal.to_ascii_lowercase()), port)
    } else {
        let (host, port) = match text.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        };
        let host = host.strip_suffix('.').unwrap_or(host);
        let valid = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !valid {
            return Err(BadTarget::InvalidHost);
        }
        (host.to_ascii_lowercase(), port)
    };
    if let Some(port) = port {
        let valid = !port.is_empty()
            && port.len() <= 5
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u32>().is_ok_and(|p| p <= 65535);
        if !valid {
            return Err(BadTarget::InvalidHost);
        }
    }
    Ok(host)
}

/// `raw` (a request's path, still percent-encoded) with its dot-segments
/// removed (RFC 3986 §5.2.4). Percent-encoded unreserved characters and
/// slashes are decoded first, so that `/shop/%2e%2e/x` and `/shop/..%2Fx`
/// are `/x`: the path is matched, and seen by the tenant, with every
/// separator it has. Other escapes stay as they are, with upper-case hex.
pub fn normalize_path(raw: &str) -> Result<String, BadTarget> {
    if !raw.starts_with('/') {
        return Err(BadTarget::InvalidPath);
    }
    let decoded = decode_unreserved(raw)?;
    let mut segments: Vec<String> = Vec::new();
    let parts: Vec<&str> = decoded[1..].split('/').collect();
    let last = parts.len() - 1;
    for (index, part) in parts.iter().enumerate() {
        let segment = (*part).to_owned();
        match segment.as_str() {
            "." | ".." => {
                if segment == ".." {
                    segments.pop();
                }
                // `/a/..` is `/`, `/a/.` is `/a/`: a trailing dot-segment
                // leaves a trailing slash.
                if index == last {
                    segments.push(String::new());
                }
            }
            _ => segments.push(segment),
        }
    }
    Ok(format!("/{}", segments.join("/")))
}

/// Decode `%XX` escapes of unreserved characters (ALPHA, DIGIT, `-._~`)
/// and of `/`; upper-case the hex of the others.
fn decode_unreserved(segment: &str) -> Result<String, BadTarget> {
    let bytes = segment.as_bytes();
    let mut out = String::with_capacity(segment.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(BadTarget::InvalidPath)?;
            let value = std::str::from_utf8(hex)
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or(BadTarget::InvalidPath)?;
            if value.is_ascii_alphanumeric() || matches!(value, b'-' | b'.' | b'_' | b'~' | b'/') {
                out.push(value as char);
            } else {
                out.push_str(&format!("%{value:02X}"));
            }
            i += 3;
        } else {
            // The rest of the path is ASCII (the request line parser made
            // sure of it); anything else is kept as it came.
            let c = segment[i..].chars().next().expect("in bounds");
            out.push(c);
            i += c.len_utf8();
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn most_specific_route_wins() {
        let mut routes = TenantRoutes::default();
        routes.add(0, &[], None);
        routes.add(1, &[], Some("/shop"));
        routes.add(2, &["api.example".into()], None);
        routes.add(3, &["api.example".into()], Some("/v2"));
        assert_eq!(routes.select(Some("other"), "/x"), Some((0, "/x")));
        assert_eq!(routes.select(None, "/shop"), Some((1, "/")));
        assert_eq!(routes.select(None, "/shop/cart"), Some((1, "/cart")));
        assert_eq!(routes.select(None, "/shopping"), Some((0, "/shopping")));
        let api = parse_host(b"API.example:8080").unwrap();
        assert_eq!(routes.select(Some(&api), "/shop"), Some((2, "/shop")));
        assert_eq!(
            routes.select(Some("api.example"), "/v2/items"),
            Some((3, "/items"))
        );
    }

    #[test]
    fn no_catch_all_means_unknown_hosts_miss() {
        let mut routes = TenantRoutes::default();
        routes.add(0, &["a.test".into()], None);
        assert_eq!(routes.select(Some("b.test"), "/"), None);
        assert_eq!(routes.select(None, "/"), None);
        assert_eq!(routes.select(Some("[::1]"), "/"), None);
    }

    #[test]
    fn hosts_are_parsed_strictly() {
        assert_eq!(parse_host(b"Shop.Example.").unwrap(), "shop.example");
        assert_eq!(parse_host(b"shop.example:65535").unwrap(), "shop.example");
        assert_eq!(parse_host(b"[::1]:8080").unwrap(), "[::1]");
        assert_eq!(parse_host(b"127.0.0.1").unwrap(), "127.0.0.1");
        for bad in [
            &b"shop.example:99999"[..],
            b"shop.example:",
            b"shop.example:80:80",
            b"",
            b"a..b",
            b"user@shop.example",
            b"shop example",
            b"shop.example/x",
            b"[::1",
            b"[::1]x",
            b"\xff",
        ] {
            assert_eq!(parse_host(bad), Err(BadTarget::InvalidHost), "{bad:?}");
        }
        assert_eq!(
            host_of(None, &[b"a.test", b"b.test"], true),
            Err(BadTarget::DuplicateHost)
        );
        assert_eq!(host_of(None, &[], true), Err(BadTarget::MissingHost));
        assert_eq!(host_of(None, &[], false), Ok(None));
        // The absolute-form target's authority wins over Host.
        assert_eq!(
            host_of(Some("shop.test"), &[b"other.test"], true),
            Ok(Some("shop.test".into()))
        );
    }

    #[test]
    fn dot_segments_are_removed_before_routing() {
        for (raw, normal) in [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/shop/../x", "/x"),
            ("/shop/%2e%2e/x", "/x"),
            ("/shop/%2E./x", "/x"),
            ("/shop/./cart", "/shop/cart"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            ("/../../x", "/x"),
            ("/a//b", "/a//b"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/%7Euser/%41", "/~user/A"),
            ("/a%2Fb", "/a/b"),
            ("/shop/..%2Fx", "/x"),
            ("/shop%2F..%2Fadmin", "/admin"),
            ("/a%252Fb", "/a%252Fb"),
        ] {
            assert_eq!(normalize_path(raw).unwrap(), normal, "{raw}");
        }
        assert_eq!(normalize_path("x"), Err(BadTarget::InvalidPath));
        assert_eq!(normalize_path("/%zz"), Err(BadTarget::InvalidPath));
        assert_eq!(normalize_path("/%2"), Err(BadTarget::InvalidPath));
        let mut routes = TenantRoutes::default();
        routes.add(0, &[], None);
        routes.add(1, &[], Some("/shop"));
        for raw in [
            "/shop/../x",
            "/shop/%2e%2e/x",
            "/shop/%2E%2E/admin",
            "/shop/..%2fadmin",
        ] {
            let path = normalize_path(raw).unwrap();
            assert_eq!(routes.select(None, &path).map(|r| r.0), Some(0), "{raw}");
        }
    }
}
