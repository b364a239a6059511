//! What a guest can be granted, one self-contained unit per capability,
//! each with three phases (as Spin's factors have):
//!
//! - **link**, once per engine: add the capability's host functions to the
//!   linker;
//! - **grant**, when a handler is loaded: validate what this handler is
//!   given, so that a bad grant fails the load, never a request;
//! - **prepare**, per instance: make the instance's state from the grant,
//!   as cheaply as a clone of shared handles.
//!
//! Deny by default: the WASI context an instance starts from grants no
//! environment, arguments, stdin, sockets or name lookups, and an instance
//! gets nothing else unless a grant here names it: `files` (the handler's
//! read-only trees), `stdio` (captured output), `keyvalue` (the stores it
//! was granted), `outbound` (HTTP to the hosts it was granted), `variables`
//! (its configuration values and secrets). Every image imports all of them;
//! without a grant, the implementation refuses. A new capability is a new
//! file here plus a field in [`Grants`] and [`InstanceCaps`].

pub(crate) mod files;
pub(crate) mod keyvalue;
pub(crate) mod outbound;
pub(crate) mod output;
pub(crate) mod stdio;
pub(crate) mod variables;

use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::Linker;
use wasmtime_wasi::{WasiCtxBuilder, WasiView};
use wasmtime_wasi_http::p2::WasiHttpView;

use files::{FilesState, FilesView, Preopens};
use keyvalue::{KvGrant, KvState, KvUsage, KvView};
use outbound::{OutboundGrant, OutboundState, OutboundUsage};
use stdio::{StdioGrant, StdioState};
use variables::VariablesGrant;

/// Everything one handler was granted, validated at load.
#[derive(Clone)]
pub(crate) struct Grants {
    pub files: Preopens,
    pub stdio: StdioGrant,
    pub kv: Arc<KvGrant>,
    pub outbound: Arc<OutboundGrant>,
    pub variables: Arc<VariablesGrant>,
}

/// What one instance holds of its grants, in its Store.
pub(crate) struct InstanceCaps {
    pub files: FilesState,
    pub stdio: StdioState,
    pub kv: KvState,
    pub outbound: OutboundState,
    pub variables: Arc<VariablesGrant>,
    pub http: wasmtime_wasi_http::WasiHttpCtx,
}

/// What a request did with its capabilities, for logs and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CapabilityUsage {
    pub kv: KvUsage,
    pub outbound: OutboundUsage,
}

impl CapabilityUsage {
    /// The capability that refused or failed something, for the log line.
    pub fn failure(&self) -> Option<&'static str> {
        if self.kv.quota_hit {
            Some("kv_quota")
        } else if self.kv.denied {
            Some("kv_denied")
        } else if self.kv.failed {
            Some("kv_failed")
        } else if self.outbound.limit_hit {
            Some("outbound_limit")
        } else if self.outbound.denied > 0 {
            Some("outbound_denied")
        } else if self.outbound.failed > 0 {
            Some("outbound_failed")
        } else {
            None
        }
    }
}

impl InstanceCaps {
    pub(crate) fn usage(&self) -> CapabilityUsage {
        CapabilityUsage {
            kv: self.kv.usage,
            outbound: self.outbound.usage(),
        }
    }
}

impl Grants {
    /// One instance's state; `wasi` is its WASI context being built, and
    /// its request must end by `deadline`.
    pub(crate) fn prepare(&self, wasi: &mut WasiCtxBuilder, deadline: Instant) -> InstanceCaps {
        InstanceCaps {
            files: self.files.prepare(),
            stdio: self.stdio.prepare(wasi),
            kv: self.kv.prepare(),
            outbound: self.outbound.prepare(deadline),
            variables: self.variables.clone(),
            http: http_ctx(),
        }
    }

    /// The same grants with output discarded (calls whose output is not read).
    pub(crate) fn without_output(&self) -> Self {
        Self {
            stdio: StdioGrant::discarded(),
            ..self.clone()
        }
    }

    /// Replace every secret variable's value in what `exchange` shows of
    /// the guest: its output and the texts of its error (see `variables`).
    pub(crate) fn redact(
        &self,
        stdout: &mut Vec<u8>,
        stderr: &mut Vec<u8>,
        error: Option<&mut crate::error::DispatchError>,
    ) {
        if !self.variables.has_secrets() {
            return;
        }
        self.variables.redact_bytes(stdout);
        self.variables.redact_bytes(stderr);
        if let Some(error) = error {
            error.texts_mut(|text| self.variables.redact(text));
        }
    }

    pub(crate) fn has_secrets(&self) -> bool {
        self.variables.has_secrets()
    }

    /// Replace every secret variable's value in `text`.
    pub(crate) fn redact_text(&self, text: &mut String) {
        self.variables.redact(text);
    }
}

/// The most bytes of headers the guest may put in one `fields` it builds
/// (wasmtime-wasi-http's default is 128 KiB, per fields, of which a guest
/// may hold many).
const FIELDS_BYTES: usize = 16 * 1024;

fn http_ctx() -> wasmtime_wasi_http::WasiHttpCtx {
    let mut http = wasmtime_wasi_http::WasiHttpCtx::new();
    http.set_field_size_limit(FIELDS_BYTES);
    http
}

/// The base WASI context every instance starts from: nothing granted.
pub(crate) fn deny_all() -> WasiCtxBuilder {
    let mut wasi = WasiCtxBuilder::new();
    // Files the guest opens run their calls on the calling thread, like the
    // directories (see `files`): short reads of local, read-only files, for
    // which a hand-off to tokio's blocking pool and back cost more than the
    // call. wasmtime-wasi takes this flag from the context when it opens a
    // file.
    wasi.allow_blocking_current_thread(true)
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    wasi
}

/// How the capabilities reach their state in a Store.
pub(crate) struct Views<T> {
    pub files: fn(&mut T) -> FilesView<'_>,
    pub kv: fn(&mut T) -> KvView<'_>,
    pub variables: fn(&mut T) -> &VariablesGrant,
}

/// Link every capability into `linker`: WASI (whose context denies all but
/// what `prepare` adds), `wasi:http` (whose hook is `outbound`), then the
/// capabilities pycage implements itself.
pub(crate) fn link<T: WasiView + WasiHttpView + Send + 'static>(
    linker: &mut Linker<T>,
    views: Views<T>,
) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)?;
    keyvalue::link(linker, views.kv)?;
    variables::link(linker, views.variables)?;
    let files_view = views.files;
    files::link(linker, files_view)
}
