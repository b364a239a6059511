//! What one request, and one cache-miss build, may consume. Every field has a
//! documented default.

use std::time::Duration;

/// Per-request bounds, enforced by the host whatever the guest does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock time for instantiation plus the handler call. Default 10 s.
    pub timeout: Duration,
    /// Total linear memory of one instance. Default 256 MiB.
    pub memory_bytes: u64,
    /// Largest request body passed to a guest. Default 10 MiB.
    pub max_request_body: usize,
    /// Largest response accepted from a guest: its body and headers
    /// together. Default 10 MiB.
    pub max_response_body: usize,
    /// Captured bytes per output stream (stdout, stderr) per request; the
    /// rest is dropped and flagged. Default 64 KiB.
    pub max_output_bytes: usize,
    /// Key-value quotas (per tenant and store, and per request).
    pub kv: KvLimits,
    /// Outbound HTTP bounds (per request).
    pub outbound: OutboundLimits,
}

/// Quotas on a tenant's key-value stores. Exceeding one is an exception in
/// the guest (`KeyValueError`) and a counted limit hit, never a failure of
/// the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLimits {
    /// Longest key, in bytes. Default 1 KiB.
    pub max_key_bytes: usize,
    /// Largest value, in bytes. Default 1 MiB.
    pub max_value_bytes: usize,
    /// Most keys in one store. Default 100,000.
    pub max_keys: u64,
    /// Most bytes (keys and values) in one store. Default 256 MiB.
    pub max_total_bytes: u64,
    /// Most operations one request may make, over all its stores. Default 1,000.
    pub max_ops: u32,
}

impl Default for KvLimits {
    fn default() -> Self {
        Self {
            max_key_bytes: 1 << 10,
            max_value_bytes: 1 << 20,
            max_keys: 100_000,
            max_total_bytes: 256 << 20,
            max_ops: 1000,
        }
    }
}

/// Bounds on one request's outbound HTTP. The request's own timeout bounds
/// every outbound call's time as well.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboundLimits {
    /// Most outbound requests (redirects included). Default 16.
    pub max_requests: u32,
    /// Most response bytes, over all of them. Default 10 MiB.
    pub max_response_bytes: u64,
}

impl Default for OutboundLimits {
    fn default() -> Self {
        Self {
            max_requests: 16,
            max_response_bytes: 10 << 20,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            memory_bytes: 256 << 20,
            max_request_body: 10 << 20,
            max_response_body: 10 << 20,
            max_output_bytes: 64 << 10,
            kv: KvLimits::default(),
            outbound: OutboundLimits::default(),
        }
    }
}

/// Bounds on one cache-miss build, which runs the tenant's module-level
/// code: enforced on the build worker process (see
/// `pycage::BuildIsolation::Process`), and on installing its declared
/// dependencies (source distributions built in the sandbox included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildLimits {
    /// Wall clock, for the import, the snapshot and the compile together;
    /// each step of installing dependencies that are not cached yet (a pip
    /// run, a download, one source build) gets the same, before. Default:
    /// 120 s.
    pub timeout: Duration,
    /// Memory of the build process (`RLIMIT_DATA`). Default: 1.5 GiB (a
    /// build of a small handler peaks near 450 MB).
    pub memory_bytes: u64,
    /// Bytes the build may allocate on disk, componentize-py's temporary
    /// files and the guest's writes included. Default: 1 GiB (a build of a
    /// small handler uses ~150 MB).
    pub disk_bytes: u64,
}

impl Default for BuildLimits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(120),
            memory_bytes: 1536 << 20,
            disk_bytes: 1 << 30,
        }
    }
}

/// Parse a duration written like `500ms`, `10s`, `2m` or `3` (seconds),
/// between 1 ms and 1 h.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 500ms, 10s or 2m"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" | "" => value,
        "m" => value * 60.0,
        _ => return Err(format!("unknown unit `{unit}` (use ms, s or m)")),
    };
    if !(0.001..=3600.0).contains(&seconds) {
        return Err("duration must be between 1ms and 1h".into());
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("2h").is_err());
        assert!(parse_duration("abc").is_err());
        assert!(parse_duration("10 parsecs").is_err());
    }
}
