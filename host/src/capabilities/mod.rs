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
//! gets nothing else unless a grant here names it. Today: `files` (the
//! handler's read-only trees) and `stdio` (captured output). A new
//! capability is a new file here plus a field in [`Grants`] and
//! [`InstanceCaps`].

pub(crate) mod files;
pub(crate) mod output;
pub(crate) mod stdio;

use wasmtime::component::Linker;
use wasmtime_wasi::{WasiCtxBuilder, WasiView};

use files::{FilesState, FilesView, Preopens};
use stdio::{StdioGrant, StdioState};

/// Everything one handler was granted, validated at load.
#[derive(Clone)]
pub(crate) struct Grants {
    pub files: Preopens,
    pub stdio: StdioGrant,
}

/// What one instance holds of its grants, in its Store.
pub(crate) struct InstanceCaps {
    pub files: FilesState,
    pub stdio: StdioState,
}

impl Grants {
    /// One instance's state; `wasi` is its WASI context being built.
    pub(crate) fn prepare(&self, wasi: &mut WasiCtxBuilder) -> InstanceCaps {
        InstanceCaps {
            files: self.files.prepare(),
            stdio: self.stdio.prepare(wasi),
        }
    }

    /// The same grants with output discarded (calls whose output is not read).
    pub(crate) fn without_output(&self) -> Self {
        Self {
            files: self.files.clone(),
            stdio: StdioGrant::discarded(),
        }
    }
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

/// Link every capability into `linker`: WASI (whose context denies all but
/// what `prepare` adds), then the capabilities pycage implements itself.
pub(crate) fn link<T: WasiView + 'static>(
    linker: &mut Linker<T>,
    files_view: fn(&mut T) -> FilesView<'_>,
) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    files::link(linker, files_view)
}
