//! Capability `stdio`: the guest's stdout and stderr, captured per
//! instance into bounded buffers (`output`); no stdin.
//!
//! - link: part of wasmtime-wasi's CLI interfaces (see `capabilities::link`);
//! - grant: the per-stream bound from the handler's limits;
//! - prepare: two fresh capped pipes, set as the instance's stdout and
//!   stderr.

use wasmtime_wasi::WasiCtxBuilder;

use super::output::{CappedPipe, CapturedOutput};

/// What a handler was granted: the bytes kept per stream per request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StdioGrant {
    pub max_output_bytes: usize,
}

/// One instance's output buffers.
pub(crate) struct StdioState {
    stdout: CappedPipe,
    stderr: CappedPipe,
}

impl StdioGrant {
    /// Fresh buffers, wired into the instance's WASI context.
    pub(crate) fn prepare(&self, wasi: &mut WasiCtxBuilder) -> StdioState {
        let state = StdioState {
            stdout: CappedPipe::new(self.max_output_bytes),
            stderr: CappedPipe::new(self.max_output_bytes),
        };
        wasi.stdout(state.stdout.clone())
            .stderr(state.stderr.clone());
        state
    }

    /// Buffers that keep nothing, for calls whose output nobody reads.
    pub(crate) fn discarded() -> Self {
        Self {
            max_output_bytes: 0,
        }
    }
}

impl StdioState {
    /// What the guest wrote, stdout then stderr.
    pub(crate) fn take(&self) -> (CapturedOutput, CapturedOutput) {
        (self.stdout.take(), self.stderr.take())
    }
}
