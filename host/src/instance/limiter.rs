//! The memory cap of one instance, and the table bound.

use wasmtime::ResourceLimiter;

/// libpython's function table has ~5,700 entries; this bounds its growth.
const MAX_TABLE_ELEMENTS: usize = 1 << 16;

/// Caps the total linear memory of the instance and remembers whether the
/// cap was what stopped it (so a MemoryError can be reported as a limit).
pub(crate) struct MemoryLimiter {
    limit: usize,
    total: usize,
    hit: bool,
}

impl MemoryLimiter {
    pub(crate) fn new(limit_bytes: u64) -> Self {
        Self {
            limit: usize::try_from(limit_bytes).unwrap_or(usize::MAX),
            total: 0,
            hit: false,
        }
    }

    /// Whether a growth was refused because of the cap.
    pub(crate) fn hit(&self) -> bool {
        self.hit
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.total - current.min(self.total) + desired;
        if total > self.limit {
            self.hit = true;
            return Ok(false);
        }
        self.total = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}
