//! What one request may consume. Every field has a documented default.

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
    /// Largest response body accepted from a guest. Default 10 MiB.
    pub max_response_body: usize,
    /// Captured bytes per output stream (stdout, stderr) per request; the
    /// rest is dropped and flagged. Default 64 KiB.
    pub max_output_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            memory_bytes: 256 << 20,
            max_request_body: 10 << 20,
            max_response_body: 10 << 20,
            max_output_bytes: 64 << 10,
        }
    }
}
