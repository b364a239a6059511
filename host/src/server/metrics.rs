//! Prometheus / OpenMetrics counters for the server, served on the admin address.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::CapabilityUsage;

type Labels = Vec<(&'static str, String)>;

pub struct Metrics {
    registry: Registry,
    requests: Family<Labels, Counter>,
    latency: Family<Labels, Histogram>,
    limit_hits: Family<Labels, Counter>,
    instances_in_use: Gauge,
    tenant_ready: Family<Labels, Gauge>,
    kv_operations: Family<Labels, Counter>,
    kv_errors: Family<Labels, Counter>,
    outbound_requests: Family<Labels, Counter>,
    outbound_bytes: Family<Labels, Counter>,
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
        let kv_operations = Family::<Labels, Counter>::default();
        let kv_errors = Family::<Labels, Counter>::default();
        let outbound_requests = Family::<Labels, Counter>::default();
        let outbound_bytes = Family::<Labels, Counter>::default();
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
            "Requests stopped by a limit, and capability quotas reached, by tenant and limit",
            limit_hits.clone(),
        );
        registry.register(
            "kv_operations",
            "Key-value operations made by requests, by tenant",
            kv_operations.clone(),
        );
        registry.register(
            "kv_errors",
            "Requests whose key-value operations were refused (denied: a store not granted) or \
             failed (the backend), by tenant",
            kv_errors.clone(),
        );
        registry.register(
            "outbound_requests",
            "Outbound HTTP requests, by tenant and outcome (ok, denied, failed)",
            outbound_requests.clone(),
        );
        registry.register(
            "outbound_response_bytes",
            "Outbound HTTP response body bytes received, by tenant",
            outbound_bytes.clone(),
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
            kv_operations,
            kv_errors,
            outbound_requests,
            outbound_bytes,
        }
    }

    /// What one request did with its capabilities.
    pub fn observe_usage(&self, tenant: &str, usage: &CapabilityUsage) {
        let labels = |extra: Option<(&'static str, &str)>| {
            let mut labels = vec![("tenant", tenant.to_owned())];
            labels.extend(extra.map(|(k, v)| (k, v.to_owned())));
            labels
        };
        if usage.kv.ops > 0 {
            self.kv_operations
                .get_or_create(&labels(None))
                .inc_by(u64::from(usage.kv.ops));
        }
        for (kind, happened) in [("denied", usage.kv.denied), ("failed", usage.kv.failed)] {
            if happened {
                self.kv_errors
                    .get_or_create(&labels(Some(("kind", kind))))
                    .inc();
            }
        }
        let out = &usage.outbound;
        for (outcome, n) in [
            ("ok", out.ok),
            ("denied", out.denied),
            ("failed", out.failed),
        ] {
            if n > 0 {
                self.outbound_requests
                    .get_or_create(&labels(Some(("outcome", outcome))))
                    .inc_by(u64::from(n));
            }
        }
        if out.bytes > 0 {
            self.outbound_bytes
                .get_or_create(&labels(None))
                .inc_by(out.bytes);
        }
        for (limit, hit) in [
            ("kv_quota", usage.kv.quota_hit),
            ("outbound", out.limit_hit),
        ] {
            if hit {
                self.limit_hits
                    .get_or_create(&labels(Some(("limit", limit))))
                    .inc();
            }
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
        let mut usage = CapabilityUsage::default();
        usage.kv.ops = 3;
        usage.kv.quota_hit = true;
        usage.outbound.ok = 2;
        usage.outbound.denied = 1;
        usage.outbound.bytes = 10;
        m.observe_usage("shop", &usage);
        let text = m.render(0, &[]);
        for line in [
            "pycage_kv_operations_total{tenant=\"shop\"} 3",
            "pycage_limit_hits_total{tenant=\"shop\",limit=\"kv_quota\"} 1",
            "pycage_outbound_requests_total{tenant=\"shop\",outcome=\"ok\"} 2",
            "pycage_outbound_requests_total{tenant=\"shop\",outcome=\"denied\"} 1",
            "pycage_outbound_response_bytes_total{tenant=\"shop\"} 10",
        ] {
            assert!(text.contains(line), "{line} not in {text}");
        }
        assert!(
            text.contains("pycage_tenant_ready{tenant=\"shop\"} 0"),
            "{text}"
        );
    }
}
