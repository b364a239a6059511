//! Bounded capture of a guest's stdout / stderr.
//!
//! wasmtime-wasi's `MemoryOutputPipe` traps the guest when it fills up, which
//! would turn a chatty handler into a failed request. This pipe instead keeps
//! the first `limit` bytes, silently drops the rest and remembers that it did,
//! so output is bounded without changing what the handler returns.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// What a guest wrote to one stream during one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CapturedOutput {
    pub bytes: Vec<u8>,
    /// True when the guest wrote more than the limit and the rest was dropped.
    pub truncated: bool,
}

#[derive(Debug, Default)]
struct Buffer {
    bytes: Vec<u8>,
    truncated: bool,
}

/// A cloneable handle on one capped buffer; every clone appends to the same one.
#[derive(Debug, Clone)]
pub(crate) struct CappedPipe {
    limit: usize,
    buffer: Arc<Mutex<Buffer>>,
}

impl CappedPipe {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            limit,
            buffer: Arc::default(),
        }
    }

    fn append(&self, data: &[u8]) {
        let mut buffer = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
        let room = self.limit.saturating_sub(buffer.bytes.len());
        if data.len() > room {
            buffer.truncated = true;
        }
        buffer
            .bytes
            .extend_from_slice(&data[..data.len().min(room)]);
    }

    pub(crate) fn take(&self) -> CapturedOutput {
        let mut buffer = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
        let taken = std::mem::take(&mut *buffer);
        CapturedOutput {
            bytes: taken.bytes,
            truncated: taken.truncated,
        }
    }
}

impl IsTerminal for CappedPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

/// How much the guest may write per call; writes beyond the cap are accepted
/// and discarded, so the guest never blocks or sees an error.
const WRITE_PERMIT: usize = 64 * 1024;

impl OutputStream for CappedPipe {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_PERMIT)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CappedPipe {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for CappedPipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.append(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_first_bytes_and_flags_the_rest() {
        let pipe = CappedPipe::new(5);
        pipe.append(b"abc");
        pipe.append(b"defgh");
        pipe.append(b"ij");
        let out = pipe.take();
        assert_eq!(out.bytes, b"abcde");
        assert!(out.truncated);
    }

    #[test]
    fn under_the_limit_is_not_truncated() {
        let pipe = CappedPipe::new(5);
        pipe.append(b"abcde");
        let out = pipe.take();
        assert_eq!(out.bytes, b"abcde");
        assert!(!out.truncated);
    }
}
