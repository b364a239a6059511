//! The read-only directories a handler's instances are granted, opened once
//! when the handler is loaded and handed to every instance as clones.
//!
//! `WasiCtxBuilder::preopened_dir` opens its directory by path, so building
//! each request's context that way cost three `openat` and three `close`
//! calls (path walks through the cache directory) per request. Here the
//! directories are opened at load, and pycage's own `get-directories`
//! (shadowing wasmtime-wasi's, which reads the per-context list) gives each
//! instance new descriptors that share those handles.
//!
//! Sharing a directory handle between instances shares no state between
//! them: every operation on it is relative to the handle (`openat`-style),
//! directory listings open their own descriptor, and the permissions are
//! the same read-only ones for every instance.

use std::path::Path;
use std::sync::Arc;

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::filesystem::{Descriptor, Dir};
use wasmtime_wasi::p2::bindings::filesystem::preopens;
use wasmtime_wasi::{DirPerms, FilePerms, OpenMode};

use crate::error::LoadError;

/// A handler's mounts: open directory handles and their guest paths, in
/// the order the guest sees them.
#[derive(Clone)]
pub(crate) struct Preopens(Arc<[(Dir, String)]>);

impl Preopens {
    /// Open each `(host directory, guest path)` read-only. The directories
    /// are the handler's entries in the build cache.
    pub(crate) fn open<'a>(
        mounts: impl IntoIterator<Item = (&'a Path, &'a str)>,
    ) -> Result<Self, LoadError> {
        let dirs = mounts
            .into_iter()
            .map(|(host, guest)| {
                let dir = cap_std::fs::Dir::open_ambient_dir(host, cap_std::ambient_authority())
                    .map_err(|source| LoadError::Cache {
                        path: host.to_path_buf(),
                        source,
                    })?;
                // Filesystem calls run on the calling thread: they are short
                // reads of local, read-only files, and a hand-off to tokio's
                // blocking pool and back cost more than the call.
                let dir = Dir::new(dir, DirPerms::READ, FilePerms::READ, OpenMode::READ, true);
                Ok((dir, guest.to_owned()))
            })
            .collect::<Result<Vec<_>, LoadError>>()?;
        Ok(Self(dirs.into()))
    }
}

/// What `get-directories` needs from a Store: the handler's preopens and
/// the resource table the new descriptors go into.
pub(crate) struct PreopensView<'a> {
    pub preopens: &'a Preopens,
    pub table: &'a mut ResourceTable,
}

impl preopens::Host for PreopensView<'_> {
    fn get_directories(&mut self) -> wasmtime::Result<Vec<(Resource<Descriptor>, String)>> {
        self.preopens
            .0
            .iter()
            .map(|(dir, guest)| {
                let descriptor = self.table.push(Descriptor::Dir(dir.clone()))?;
                Ok((descriptor, guest.clone()))
            })
            .collect()
    }
}

struct SharedPreopens;

impl HasData for SharedPreopens {
    type Data<'a> = PreopensView<'a>;
}

/// Replace wasmtime-wasi's `wasi:filesystem/preopens` in `linker` (which
/// must already hold the rest of WASI) with one that serves `view`'s
/// preopens.
pub(crate) fn add_to_linker<T: 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> PreopensView<'_>,
) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let added = preopens::add_to_linker::<T, SharedPreopens>(linker, view);
    linker.allow_shadowing(false);
    added
}
