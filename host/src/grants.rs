//! What a tenant may be granted beyond its files, as the operator writes it
//! (`pycage.toml`, `pycage run` flags): key-value store names, outbound
//! hosts, variables. Parsing and validation only, no runtime, so that a bad
//! grant is a config error at start-up and the fuzz targets can build it.
//!
//! The names mirror Spin's manifest (`key_value_stores`,
//! `allowed_outbound_hosts`, `variables`), and so does the allow-list
//! syntax: `https://api.example.com`, `https://*.example.com`,
//! `http://127.0.0.1:8089`, `*://localhost:*`.

use std::net::IpAddr;

/// The store every tenant may name without defining it: SQLite under the
/// data directory.
pub const DEFAULT_STORE: &str = "default";

/// Whose data a handler's stores hold when the embedder names no tenant.
pub const DEFAULT_TENANT: &str = "default";

/// Whether `name` can name a tenant: 1–64 of `a-z0-9_-` (it becomes a
/// directory name and part of a Redis key, so never `/`, `.` or `:`).
pub fn valid_tenant(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// Whether `name` can name a store or a variable: 1–64 of `a-z0-9_-`,
/// starting with a letter (it becomes part of a file name and a Redis key).
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// Whether `name` can name a variable: as a store name, without `-`
/// (Spin's rule, so that it maps to an environment variable one to one).
pub fn valid_variable_name(name: &str) -> bool {
    valid_name(name) && !name.contains('-')
}

/// Which scheme an allow-list entry admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemePattern {
    Http,
    Https,
    Any,
}

/// Which host an allow-list entry admits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// Exactly this name (lower case, no trailing dot).
    Name(String),
    /// Any name ending in `.{suffix}` (from `*.suffix`).
    Subdomains(String),
    /// This IP address, written as one: the entry names the address itself,
    /// so it may be private or loopback.
    Ip(IpAddr),
    /// Any host (`*`): public addresses only.
    Any,
}

/// Which port an allow-list entry admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortPattern {
    Exact(u16),
    /// None written: the scheme's default (80 for http, 443 for https).
    SchemeDefault,
    /// `:*`.
    Any,
}

/// One entry of `allowed_outbound_hosts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHost {
    pub scheme: SchemePattern,
    pub host: HostPattern,
    pub port: PortPattern,
    /// The entry as written, for messages.
    pub written: String,
}

impl AllowedHost {
    /// Parse `scheme://host[:port]`, where scheme is `http`, `https` or `*`,
    /// host a name, `*.name`, `*` or an IP literal (`[v6]`), and port a
    /// number or `*`. No path, user or query.
    pub fn parse(entry: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("`{entry}` {why}");
        let (scheme, rest) = entry
            .split_once("://")
            .ok_or_else(|| bad("needs a scheme: http://, https:// or *://"))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => SchemePattern::Http,
            "https" => SchemePattern::Https,
            "*" => SchemePattern::Any,
            _ => return Err(bad("has a scheme other than http, https or *")),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) || rest.is_empty() {
            return Err(bad(
                "must be scheme://host[:port] with no path, user or query",
            ));
        }
        let (host, port) =
            split_host_port(rest).ok_or_else(|| bad("has an invalid host or port"))?;
        let port = match port {
            None => PortPattern::SchemeDefault,
            Some("*") => PortPattern::Any,
            Some(port) => PortPattern::Exact(
                port.parse::<u16>()
                    .map_err(|_| bad("has an invalid port"))?,
            ),
        };
        let host = if host == "*" {
            HostPattern::Any
        } else if let Some(literal) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            HostPattern::Ip(
                literal
                    .parse()
                    .map_err(|_| bad("has an invalid IPv6 address"))?,
            )
        } else if let Ok(ip) = host.parse::<std::net::Ipv4Addr>() {
            HostPattern::Ip(IpAddr::V4(ip))
        } else if let Some(suffix) = host.strip_prefix("*.") {
            HostPattern::Subdomains(dns_name(suffix).ok_or_else(|| bad("has an invalid host"))?)
        } else {
            HostPattern::Name(dns_name(&host).ok_or_else(|| bad("has an invalid host"))?)
        };
        Ok(Self {
            scheme,
            host,
            port,
            written: entry.to_owned(),
        })
    }

    /// Whether this entry admits `scheme://host:port` (host lower case,
    /// without brackets or trailing dot).
    pub fn admits(&self, https: bool, host: &str, port: u16) -> bool {
        let scheme = match self.scheme {
            SchemePattern::Any => true,
            SchemePattern::Https => https,
            SchemePattern::Http => !https,
        };
        let port = match self.port {
            PortPattern::SchemeDefault => port == if https { 443 } else { 80 },
            PortPattern::Any => true,
            PortPattern::Exact(wanted) => wanted == port,
        };
        let host_ok = match &self.host {
            HostPattern::Any => true,
            HostPattern::Name(name) => name == host,
            HostPattern::Subdomains(suffix) => host
                .strip_suffix(suffix.as_str())
                .is_some_and(|head| head.ends_with('.') && head.len() > 1),
            HostPattern::Ip(ip) => host.parse::<IpAddr>().is_ok_and(|h| h == *ip),
        };
        scheme && port && host_ok
    }

    /// Whether this entry names `address` itself, which then may be reached
    /// even if it is private or loopback: an IP literal equal to it, or
    /// `localhost` for a loopback address.
    pub fn names_address(&self, host: &str, address: IpAddr) -> bool {
        match &self.host {
            HostPattern::Ip(ip) => *ip == address,
            HostPattern::Name(name) => {
                name == "localhost" && host == "localhost" && address.is_loopback()
            }
            _ => false,
        }
    }
}

/// `host[:port]` split; the host is lower-cased, a trailing dot dropped.
fn split_host_port(text: &str) -> Option<(String, Option<&str>)> {
    if text.starts_with('[') {
        let end = text.find(']')?;
        let (host, rest) = text.split_at(end + 1);
        let port = match rest {
            "" => None,
            _ => Some(rest.strip_prefix(':')?),
        };
        return Some((host.to_ascii_lowercase(), port));
    }
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (text, None),
    };
    if host.is_empty() {
        return None;
    }
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    Some((host, port))
}

/// A DNS name (letters, digits, `-`, `_`, dots between labels).
fn dns_name(name: &str) -> Option<String> {
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    valid.then_some(name)
}

/// Whether an address is one that outbound requests may not reach unless
/// an allow-list entry names it: loopback, private, link-local (the cloud
/// metadata services live there), shared (CGNAT), unspecified, multicast,
/// broadcast, documentation and IPv6 unique-local or site-local ranges, and
/// IPv4 addresses inside IPv6 ones (mapped or translated).
pub fn is_internal(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b)) // shared address space
                || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
                || (a == 198 && (b == 18 || b == 19)) // benchmarking
                || a >= 240 // reserved
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            let segments = v6.segments();
            // 64:ff9b::/96 translates to IPv4: judge the embedded address.
            if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let v4 = std::net::Ipv4Addr::new(
                    (segments[6] >> 8) as u8,
                    segments[6] as u8,
                    (segments[7] >> 8) as u8,
                    segments[7] as u8,
                );
                return is_internal(IpAddr::V4(v4));
            }
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (segments[0] & 0xfe00) == 0xfc00 // unique local (fd00:ec2::254 too)
                || (segments[0] & 0xffc0) == 0xfe80 // link local
                || (segments[0] & 0xffc0) == 0xfec0 // site local
                || segments[0] == 0x2001 && segments[1] == 0x0db8 // documentation
                || segments[..6] == [0, 0, 0, 0, 0, 0] // ::/96, IPv4-compatible
        }
    }
}

/// Where a variable's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VariableSource {
    /// Written in the config.
    Value(String),
    /// The host's environment variable of that name, read at load.
    Env(String),
    /// A file's contents (one trailing newline removed), read at load.
    File(std::path::PathBuf),
}

/// One entry of `variables`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VariableSpec {
    pub name: String,
    pub source: VariableSource,
    /// Never shown: not in logs, metrics, error bodies or `pycage routes`
    /// (and redacted from what the guest prints, where pycage shows it).
    pub secret: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(entry: &str) -> AllowedHost {
        AllowedHost::parse(entry).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn allow_list_entries_parse_like_spin_and_match_exactly() {
        let api = allowed("https://api.example.com");
        assert!(api.admits(true, "api.example.com", 443));
        assert!(!api.admits(false, "api.example.com", 80), "scheme");
        assert!(!api.admits(true, "api.example.com", 8443), "port");
        assert!(!api.admits(true, "evil.example.com", 443), "host");
        assert!(!api.admits(true, "api.example.com.evil", 443));

        let sub = allowed("https://*.example.com");
        assert!(sub.admits(true, "a.example.com", 443));
        assert!(sub.admits(true, "a.b.example.com", 443));
        assert!(!sub.admits(true, "example.com", 443));
        assert!(!sub.admits(true, "badexample.com", 443));

        let local = allowed("http://127.0.0.1:8089");
        assert!(local.admits(false, "127.0.0.1", 8089));
        assert!(!local.admits(false, "127.0.0.1", 8090));
        assert!(local.names_address("127.0.0.1", "127.0.0.1".parse().unwrap()));

        let any_port = allowed("*://localhost:*");
        assert!(any_port.admits(false, "localhost", 1234) && any_port.admits(true, "localhost", 1));
        assert!(any_port.names_address("localhost", "::1".parse().unwrap()));
        assert!(
            !allowed("https://*.example.com")
                .names_address("a.example.com", "10.0.0.1".parse().unwrap())
        );

        let v6 = allowed("http://[::1]:8080");
        assert!(v6.admits(false, "::1", 8080));

        for bad in [
            "api.example.com",
            "ftp://x",
            "https://user@x",
            "https://x/path",
            "https://x:99999",
            "https://",
            "https://a..b",
            "https://[::1",
        ] {
            assert!(AllowedHost::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn internal_addresses_are_told_apart() {
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "::7f00:1",
            "2001:db8::1",
        ] {
            assert!(is_internal(internal.parse().unwrap()), "{internal}");
        }
        for public in [
            "93.184.216.34",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(!is_internal(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn names_are_checked() {
        assert!(valid_name("default") && valid_name("weather_token") && valid_name("a-b1"));
        for bad in ["", "A", "1a", "a:b", "a/b", "a.b", &"a".repeat(65)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
