//! Prometheus / OpenMetrics counters for the server, served on the admin address.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

pub struct Metrics {
    registry: Registry,
    requests: Family<Labels, Counter>,
    latency: Family<Labels, Histogram>,
    limit_hits: Family<Labels, Counter>,
    instances_in_use: Gauge,
    tenant_ready: Family<Labels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("pycage");
        let requests = Family::<Labels, Counter>::default();
        let latency = Family::<Labels, Histogram>::new_with_constructor(|| {
            // 1 ms .. ~16 s in powers of two.
            Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.001, 2.0, 15,
            ))
        });
        let limit_hits = Family::<Labels, Counter>::default();
        let instances_in_use = Gauge::default();
        let tenant_ready = Family::<Labels, Gauge>::default();
        registry.register(
            "requests",
            "Requests answered, by tenant and status class",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request received to response ready, by tenant",
            latency.clone(),
        );
        registry.register(
            "limit_hits",
            "Requests stopped by a limit, by tenant and limit",
            limit_hits.clone(),
        );
        registry.register(
            "instances_in_use",
            "Sandbox instances live right now",
            instances_in_use.clone(),
        );
        registry.register(
            "tenant_ready",
            "1 if the tenant's handler is loaded, 0 while it loads or if it failed to",
            tenant_ready.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            limit_hits,
            instances_in_use,
            tenant_ready,
        }
    }

    pub fn observe(&self, tenant: &str, status: u16, seconds: f64, limit: Option<&'static str>) {
        let class = format!("{}xx", status / 100);
        self.requests
            .get_or_create(&vec![("tenant", tenant.to_owned()), ("status", class)])
            .inc();
        self.latency
            .get_or_create(&vec![("tenant", tenant.to_owned())])
            .observe(seconds);
        if let Some(limit) = limit {
            self.limit_hits
                .get_or_create(&vec![
                    ("tenant", tenant.to_owned()),
                    ("limit", limit.to_owned()),
                ])
                .inc();
        }
    }

    /// The text exposition, with the gauges read at scrape time.
    pub fn render(&self, instances_in_use: usize, tenants: &[super::Tenant]) -> String {
        self.instances_in_use.set(instances_in_use as i64);
        for tenant in tenants {
            let ready = tenant.status() == super::TenantStatus::Ready;
            self.tenant_ready
                .get_or_create(&vec![("tenant", tenant.name.clone())])
                .set(i64::from(ready));
        }
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_gauge() {
        let m = Metrics::new();
        m.observe("shop", 200, 0.002, None);
        m.observe("shop", 504, 1.0, Some("timeout"));
        let text = m.render(3, &[super::super::Tenant::pending("shop", vec![], None)]);
        assert!(
            text.contains("pycage_requests_total{tenant=\"shop\",status=\"2xx\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("pycage_requests_total{tenant=\"shop\",status=\"5xx\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("pycage_limit_hits_total{tenant=\"shop\",limit=\"timeout\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("pycage_request_duration_seconds_count{tenant=\"shop\"} 2"),
            "{text}"
        );
        assert!(text.contains("pycage_instances_in_use 3"), "{text}");
        assert!(
            text.contains("pycage_tenant_ready{tenant=\"shop\"} 0"),
            "{text}"
        );
    }
}
