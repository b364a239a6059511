//! Capability `files`: the read-only directories a handler's instances are
//! granted, opened once when the handler is loaded and handed to every
//! instance as clones.
//!
//! - link: pycage's own `wasi:filesystem/preopens` replaces wasmtime-wasi's;
//! - grant: the handler's directories in its cache entry (and the standard
//!   library), opened without following links, read-only;
//! - prepare: a clone of the shared handles.
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

use std::os::fd::OwnedFd;
use std::sync::Arc;

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::filesystem::{Descriptor, Dir};
use wasmtime_wasi::p2::bindings::filesystem::preopens;
use wasmtime_wasi::{DirPerms, FilePerms, OpenMode};

/// A handler's mounts: open directory handles and their guest paths, in
/// the order the guest sees them.
#[derive(Clone)]
pub(crate) struct Preopens(Arc<[(Dir, String)]>);

/// What an instance holds of this capability: the same handles.
pub(crate) type FilesState = Preopens;

impl Preopens {
    /// One instance's state.
    pub(crate) fn prepare(&self) -> FilesState {
        self.clone()
    }
}

impl Preopens {
    /// Grant each open directory `(handle, guest path)` read-only. The
    /// handles are the handler's entries in the build cache, opened (and
    /// checked) without following links.
    pub(crate) fn from_handles(mounts: impl IntoIterator<Item = (OwnedFd, String)>) -> Self {
        let dirs: Vec<(Dir, String)> = mounts
            .into_iter()
            .map(|(fd, guest)| {
                let dir = cap_std::fs::Dir::from_std_file(std::fs::File::from(fd));
                // Filesystem calls run on the calling thread: they are short
                // reads of local, read-only files, and a hand-off to tokio's
                // blocking pool and back cost more than the call.
                let dir = Dir::new(dir, DirPerms::READ, FilePerms::READ, OpenMode::READ, true);
                (dir, guest)
            })
            .collect();
        Self(dirs.into())
    }
}

/// What `get-directories` needs from a Store: the handler's preopens and
/// the resource table the new descriptors go into.
pub(crate) struct FilesView<'a> {
    pub preopens: &'a Preopens,
    pub table: &'a mut ResourceTable,
}

impl preopens::Host for FilesView<'_> {
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
    type Data<'a> = FilesView<'a>;
}

/// Replace wasmtime-wasi's `wasi:filesystem/preopens` in `linker` (which
/// must already hold the rest of WASI) with one that serves `view`'s
/// preopens.
pub(crate) fn link<T: 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> FilesView<'_>,
) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let added = preopens::add_to_linker::<T, SharedPreopens>(linker, view);
    linker.allow_shadowing(false);
    added
}
