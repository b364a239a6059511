//! Which tenant a request is for, by Host header and path prefix.

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
                self.entries.push(Entry {
                    host: Some(host.to_ascii_lowercase()),
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

    /// The tenant for `host` (any case, port allowed) and raw `path`, with
    /// the path the tenant sees (its prefix stripped).
    pub fn select<'p>(&self, host: Option<&str>, path: &'p str) -> Option<(usize, &'p str)> {
        let host = host.map(|h| strip_port(h).to_ascii_lowercase());
        self.entries.iter().find_map(|entry| {
            if let Some(wanted) = &entry.host
                && host.as_deref() != Some(wanted.as_str())
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

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // [v6]:port
        return host.split_once(']').map_or(host, |(h, _)| &h[1..]);
    }
    host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.chars().all(|c| c.is_ascii_digit()) {
            h
        } else {
            host
        }
    })
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
        assert_eq!(
            routes.select(Some("API.example:8080"), "/shop"),
            Some((2, "/shop"))
        );
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
        assert_eq!(routes.select(Some("[::1]:80"), "/"), None);
    }
}
