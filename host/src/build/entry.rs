//! A handler's entry in the cache: assembled by the host from what it
//! staged and what the worker produced, sealed, and loaded back.
//!
//! Nothing the guest wrote at build time is published as it lies: the
//! entry's files are the bytes the host staged, plus, for each staged
//! `.py`, the bytecode the guest compiled for it (`__pycache__/*.pyc`, read
//! without following links and bounded). Anything else the guest wrote
//! into its build directories is discarded with them.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use wasmtime::Engine;
use wasmtime::component::Component;

use super::job::{ARTIFACT, BuiltFacts, MEMORY_IMAGE};
use crate::build::cache::Cache;
use crate::build::cache::seal::{FileSeal, Match};
use crate::build::stage::{MAX_TOTAL_BYTES, Snapshot};
use crate::contract::wit;
use crate::contract::{self, mounts};
use crate::error::LoadError;
use crate::host_fs::private;
use crate::host_fs::untrusted::{self, ReadError};
use crate::instance::memory::MemoryImage;

const META: &str = "meta.json";
const APP: &str = "app";
const LAYERS: &str = "layers";
/// The MAC domain of an entry's manifest: the entry's key is part of it,
/// so a manifest (with the files it vouches for) copied into another
/// entry's place does not verify there.
fn context(entry_key: &str) -> String {
    format!("pycage handler entry {entry_key}")
}
/// Longest manifest read back.
const MAX_META_BYTES: u64 = 1 << 20;
/// No compiled module is anywhere near this big; `.pyc` files larger than
/// it are not kept.
const MAX_PYC_BYTES: u64 = 16 << 20;

/// What is recorded next to a built image.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Meta {
    pub pycage_version: String,
    pub wit_version: String,
    pub entry_module: String,
    /// How many dependency layers are mounted (at /2, /3, ...).
    pub layers: usize,
    /// How many core modules `flatten` merged into one (0: kept apart).
    pub merged_modules: usize,
    /// Whether the memory's initial contents are in `memory.img` instead
    /// of the component's data segments (see `crate::instance::memory`).
    pub memory_image: bool,
    /// How many of the snapshot's Python objects were made immortal in the
    /// memory image (see `crate::build::immortal`).
    pub immortal_objects: usize,
    /// The files the host maps or runs.
    pub files: Vec<FileSeal>,
}

/// A loaded entry.
pub(crate) struct Built {
    pub dir: PathBuf,
    pub meta: Meta,
    pub component: Component,
    /// The memory's initial contents (empty when they are data segments).
    pub memory_image: MemoryImage,
    /// The handler's files (mounted at /app and /1).
    pub app: OwnedFd,
    /// The dependency layers' copies with their guest mounts.
    pub layers: Vec<(OwnedFd, String)>,
    pub cache_hit: bool,
}

/// The inputs of one handler build, as the guest saw them.
pub(crate) struct Inputs<'a> {
    pub snapshot: &'a Snapshot,
    /// The files of each dependency layer, in mount order.
    pub layers: Vec<&'a Snapshot>,
    /// Where the worker mounted them (see [`mount_dir`]).
    pub mounts: PathBuf,
}

/// Write the entry into `entry` (a new directory) from the staged files,
/// the guest's bytecode for them and the worker's artifacts in `out`;
/// seal it.
pub(crate) fn assemble(
    cache: &Cache,
    entry_key: &str,
    entry: &Path,
    inputs: &Inputs<'_>,
    out: &Path,
    entry_module: &str,
    facts: &BuiltFacts,
) -> Result<(), LoadError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| LoadError::Cache { path, source }
    };
    let bounded = |e: ReadError| match e {
        ReadError::TooLarge { limit, .. } => LoadError::TooLarge {
            path: entry.to_path_buf(),
            limit: format!("bytecode the build wrote: {limit}"),
        },
        other => LoadError::Build {
            path: entry.to_path_buf(),
            detail: format!("reading the build's bytecode: {other}"),
        },
    };
    private::create_dir_all(entry).map_err(|e| cache.refuse(entry, e))?;
    let app = entry.join(APP);
    let mut budget = MAX_TOTAL_BYTES;
    write_tree(inputs.snapshot, &app).map_err(io(&app))?;
    let seen = mount_dir(&inputs.mounts, None);
    copy_bytecode(inputs.snapshot, &seen, &app, &mut budget).map_err(bounded)?;
    for (index, files) in inputs.layers.iter().enumerate() {
        let dir = entry
            .join(LAYERS)
            .join(mounts::layer(index).trim_start_matches('/'));
        write_tree(files, &dir).map_err(io(&dir))?;
        let seen = mount_dir(&inputs.mounts, Some(index));
        copy_bytecode(files, &seen, &dir, &mut budget).map_err(bounded)?;
    }
    let mut seals = Vec::new();
    for name in [ARTIFACT, MEMORY_IMAGE] {
        let from = out.join(name);
        if name == MEMORY_IMAGE && !facts.memory_image {
            continue;
        }
        std::fs::rename(&from, entry.join(name)).map_err(io(&from))?;
        let dir = private::open_root(entry).map_err(|e| cache.refuse(entry, e))?;
        seals.push(FileSeal::of(&dir, name).map_err(io(&entry.join(name)))?);
    }
    let meta = Meta {
        pycage_version: env!("CARGO_PKG_VERSION").into(),
        wit_version: wit::WIT_VERSION.into(),
        entry_module: entry_module.to_owned(),
        layers: inputs.layers.len(),
        merged_modules: facts.merged_modules,
        memory_image: facts.memory_image,
        immortal_objects: facts.immortal_objects,
        files: seals,
    };
    let key = cache.open()?;
    let sealed = key.key().seal(&context(entry_key), &meta);
    private::write_file(&entry.join(META), &sealed).map_err(io(&entry.join(META)))
}

/// Where the guest saw the handler's tree (`None`) or layer `n` during the
/// build, inside the mounts directory.
pub(crate) fn mount_dir(mounts: &Path, layer: Option<usize>) -> PathBuf {
    match layer {
        None => mounts.join(APP),
        Some(index) => mounts.join(LAYERS).join(index.to_string()),
    }
}

/// Write `snapshot`'s files below `dir`, private.
pub(crate) fn write_tree(snapshot: &Snapshot, dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)?;
    snapshot.write_to(dir)
}

/// For each `.py` in `snapshot`, copy the bytecode the guest compiled for
/// it (`<dir>/__pycache__/<stem>.<tag>.pyc` in `mount`) to the same place
/// below `dir`. Missing bytecode is fine (the module then compiles when
/// imported); what is read is bounded by `budget`.
pub(crate) fn copy_bytecode(
    snapshot: &Snapshot,
    mount: &Path,
    dir: &Path,
    budget: &mut u64,
) -> Result<(), ReadError> {
    let Ok((mount_fd, _)) = untrusted::open_named(mount) else {
        return Ok(());
    };
    for file in &snapshot.files {
        let Some(stem_path) = file.relative.strip_suffix(".py") else {
            continue;
        };
        let (parent, stem) = match stem_path.rsplit_once('/') {
            Some((parent, stem)) => (format!("{parent}/"), stem),
            None => (String::new(), stem_path),
        };
        let relative = format!("{parent}__pycache__/{stem}.{}.pyc", contract::PYC_TAG);
        let limit = MAX_PYC_BYTES.min(*budget);
        let bytes = match untrusted::read_file_at(
            mount_fd.as_fd(),
            Path::new(&relative),
            limit,
            &mount.join(&relative),
        ) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => continue,
            // A guest that planted a link or a FIFO there gets no bytecode.
            Err(ReadError::Link { .. } | ReadError::WrongType { .. }) => continue,
            Err(other) => return Err(other),
        };
        *budget -= bytes.len() as u64;
        let target = dir.join(&relative);
        private::write_file(&target, &bytes).map_err(|source| ReadError::Io {
            path: target.clone(),
            source,
        })?;
    }
    Ok(())
}

/// Load the entry `key`, if it is in the cache and intact. An entry that
/// fails verification is discarded (with a warning) and reported absent,
/// so that it is rebuilt.
pub(crate) fn load(engine: &Engine, cache: &Cache, key: &str) -> Result<Option<Built>, LoadError> {
    let Some(entry) = cache.open_handler_entry(key)? else {
        return Ok(None);
    };
    let dir = cache.handler_dir(key);
    match verify(engine, cache, key, &entry, &dir) {
        Ok(built) => Ok(Some(built)),
        Err(Verify::Absent) => Ok(None),
        Err(Verify::Refused(reason)) => {
            tracing::warn!(entry = %dir.display(), %reason, "cache entry failed verification; rebuilding it");
            cache.discard(&dir);
            Ok(None)
        }
        Err(Verify::Error(error)) => Err(error),
    }
}

enum Verify {
    /// Half an entry (no manifest yet): treated as missing.
    Absent,
    /// Not what pycage wrote.
    Refused(String),
    Error(LoadError),
}

fn verify(
    engine: &Engine,
    cache: &Cache,
    key: &str,
    entry: &OwnedFd,
    dir: &Path,
) -> Result<Built, Verify> {
    let opened = cache.open().map_err(Verify::Error)?;
    let refused = |what: &str, e: private::NotPrivate| Verify::Refused(format!("{what}: {e}"));
    let (fd, stat) = match private::open_file(entry, META) {
        Ok(pair) => pair,
        Err(private::NotPrivate::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Verify::Absent);
        }
        Err(e) => return Err(refused(META, e)),
    };
    let document = untrusted::read_to_end(fd, &stat, MAX_META_BYTES, &dir.join(META))
        .map_err(|e| Verify::Refused(e.to_string()))?;
    let meta: Meta = opened
        .key()
        .open(&context(key), &document)
        .ok_or_else(|| Verify::Refused(format!("{META} is not sealed under this cache's key")))?;
    let mut verified = Vec::new();
    for seal in &meta.files {
        let (fd, stat) =
            private::open_file(entry, &seal.name).map_err(|e| refused(&seal.name, e))?;
        match seal.matches(&fd, &stat) {
            Ok(Some(Match::Identity | Match::Contents)) => verified.push((seal.name.as_str(), fd)),
            Ok(None) => {
                return Err(Verify::Refused(format!(
                    "{} does not match its seal",
                    seal.name
                )));
            }
            Err(e) => return Err(Verify::Refused(format!("{}: {e}", seal.name))),
        }
    }
    let take = |name: &str, verified: &mut Vec<(&str, OwnedFd)>| {
        verified
            .iter()
            .position(|(n, _)| *n == name)
            .map(|i| verified.swap_remove(i).1)
    };
    let artifact = take(ARTIFACT, &mut verified)
        .ok_or_else(|| Verify::Refused(format!("the manifest vouches for no {ARTIFACT}")))?;
    let component = deserialize(engine, &artifact, &dir.join(ARTIFACT)).map_err(Verify::Error)?;
    let memory_image = if meta.memory_image {
        let image = take(MEMORY_IMAGE, &mut verified).ok_or_else(|| {
            Verify::Refused(format!("the manifest vouches for no {MEMORY_IMAGE}"))
        })?;
        MemoryImage::from_file(std::fs::File::from(image))
            .map_err(|e| Verify::Error(cache.error(&dir.join(MEMORY_IMAGE), e)))?
    } else {
        MemoryImage::empty()
    };
    let app = private::open_dir(entry, APP).map_err(|e| refused(APP, e))?;
    let mut layers = Vec::new();
    if meta.layers > 0 {
        let layers_dir = private::open_dir(entry, LAYERS).map_err(|e| refused(LAYERS, e))?;
        for index in 0..meta.layers {
            let mount = mounts::layer(index);
            let fd = private::open_dir(&layers_dir, mount.trim_start_matches('/'))
                .map_err(|e| refused(&mount, e))?;
            layers.push((fd, mount));
        }
    }
    Ok(Built {
        dir: dir.to_path_buf(),
        meta,
        component,
        memory_image,
        app,
        layers,
        cache_hit: true,
    })
}

/// Deserialize the verified artifact `fd`. wasmtime maps a file by path, so
/// it is given the path of this very open file (`/proc/self/fd/N`), which
/// no rename in the cache can redirect; without `/proc` the bytes are read.
fn deserialize(engine: &Engine, fd: &OwnedFd, shown_as: &Path) -> Result<Component, LoadError> {
    let compile_error = |source| LoadError::Compile {
        path: shown_as.to_path_buf(),
        source,
    };
    let proc_path = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    let component = if proc_path.exists() {
        // SAFETY: the file is the one pycage's build serialised with this
        // engine configuration, verified against its seal on this handle;
        // wasmtime also checks its header against this engine's version
        // and settings before using it.
        unsafe { Component::deserialize_file(engine, &proc_path) }.map_err(compile_error)?
    } else {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(
            &mut std::fs::File::from(fd.try_clone().map_err(|e| LoadError::Cache {
                path: shown_as.to_path_buf(),
                source: e,
            })?),
            &mut bytes,
        )
        .map_err(|e| LoadError::Cache {
            path: shown_as.to_path_buf(),
            source: e,
        })?;
        // SAFETY: as above.
        unsafe { Component::deserialize(engine, &bytes) }.map_err(compile_error)?
    };
    wit::check_exports(engine, &component).map_err(|found| LoadError::WitVersionMismatch {
        path: shown_as.to_path_buf(),
        found,
        expected: format!("{}@{}", wit::WIT_INTERFACE, wit::WIT_VERSION),
    })?;
    Ok(component)
}
