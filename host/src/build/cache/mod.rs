//! The build cache: where built sandbox images live and how they are keyed.
//!
//! Layout under the cache root:
//!
//! ```text
//! key                         the owner's secret key (see `seal`)
//! stdlib-<key>/python/        CPython's stdlib with precompiled .pyc (shared, read-only mount)
//! handlers/<key>/app/         the handler's files as built (read-only mount at /app)
//! handlers/<key>/sandbox.cwasm  the compiled, pre-initialised component
//! handlers/<key>/memory.img   the snapshot's heap, mapped by every instance
//! handlers/<key>/meta.json    build facts and the seals of the two files above
//! handlers/<key>/layers/<n>/  copies of the dependency layers (read-only mounts at /<n>)
//! layers/<key>/site-packages/ dependencies installed from a pyproject.toml (shared)
//! layers/<key>/layer.json     what the installer put there
//! code/<xx>/<hash>            Cranelift's compiled functions, shared by all builds
//! ```
//!
//! Entries are built in a temporary sibling directory and renamed into place,
//! so a reader never sees half an entry and concurrent builders of the same
//! key do not interfere. The cache holds native code that pycage loads, so
//! the root and every directory and file loaded from it must belong to the
//! current user and be writable by nobody else (`private`), and what pycage
//! runs from it is authenticated under the owner's key (`seal`).

pub(crate) mod code;
pub(crate) mod index;
pub(crate) mod seal;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use crate::build::deps::{Layer, LayerContents};
use crate::build::stage::Snapshot;
use crate::contract::{self, framework};
use crate::error::LoadError;
use crate::host_fs::private::{self, NotPrivate};
use crate::host_fs::untrusted::remove_tree;
use seal::SealKey;

/// Environment variable that overrides the cache location.
pub const CACHE_DIR_ENV: &str = "PYCAGE_CACHE_DIR";

/// Bumped whenever the layout or the meaning of a cached entry changes,
/// including the engine settings its compiled code was made for.
const LAYOUT_VERSION: &str = "6";

/// A build cache rooted at a directory. Cheap to clone; the root is
/// checked (and created, private, if missing) on first use.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
    opened: Arc<OnceLock<Arc<Opened>>>,
}

/// A checked cache root: its handle and its owner's key.
#[derive(Debug)]
pub(crate) struct Opened {
    root: OwnedFd,
    key: SealKey,
}

impl Opened {
    pub(crate) fn root(&self) -> &OwnedFd {
        &self.root
    }

    pub(crate) fn key(&self) -> &SealKey {
        &self.key
    }
}

impl Cache {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            opened: Arc::default(),
        }
    }

    /// `$PYCAGE_CACHE_DIR`, else `$XDG_CACHE_HOME/pycage`, else
    /// `~/.cache/pycage`. With none of them set there is no default: a
    /// shared directory such as the temp dir would let other local users
    /// plant entries, so the caller must name one.
    pub fn default_root() -> Result<PathBuf, LoadError> {
        let var = |name| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        var(CACHE_DIR_ENV)
            .or_else(|| var("XDG_CACHE_HOME").map(|p| p.join("pycage")))
            .or_else(|| var("HOME").map(|p| p.join(".cache").join("pycage")))
            .ok_or(LoadError::NoCacheDir)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The checked root: created private (0700) if missing, refused if
    /// another user owns it or others may write to it; with its key.
    pub(crate) fn open(&self) -> Result<Arc<Opened>, LoadError> {
        if let Some(opened) = self.opened.get() {
            return Ok(opened.clone());
        }
        let refuse = |e: NotPrivate| self.refuse(&self.root, e);
        let root = private::create_dir_all(&self.root).map_err(refuse)?;
        let key =
            SealKey::load_or_create(&root).map_err(|e| self.refuse(&self.root.join("key"), e))?;
        let opened = Arc::new(Opened { root, key });
        Ok(self.opened.get_or_init(|| opened).clone())
    }

    pub(crate) fn refuse(&self, path: &Path, reason: NotPrivate) -> LoadError {
        match reason {
            NotPrivate::Io(source) => LoadError::Cache {
                path: path.to_path_buf(),
                source,
            },
            other => LoadError::CacheNotPrivate {
                path: path.to_path_buf(),
                reason: other.to_string(),
            },
        }
    }

    pub(crate) fn handler_dir(&self, key: &str) -> PathBuf {
        self.root.join(HANDLERS).join(key)
    }

    pub(crate) fn layer_dir(&self, key: &str) -> PathBuf {
        self.root.join("layers").join(key)
    }

    /// pycage's own tools (the pinned pip wheel).
    pub(crate) fn tools_dir(&self) -> PathBuf {
        self.root.join("tools")
    }

    /// Cranelift's incremental compilation cache (see `code_cache`).
    pub(crate) fn code_dir(&self) -> PathBuf {
        self.root.join("code")
    }

    pub(crate) fn stdlib_dir(&self) -> PathBuf {
        self.root.join(stdlib_dir_name())
    }

    /// The handler entry `key`, if there is one: opened without following
    /// links, and refused unless it and `handlers/` are private.
    pub(crate) fn open_handler_entry(&self, key: &str) -> Result<Option<OwnedFd>, LoadError> {
        let opened = self.open()?;
        let handlers = match private::open_dir(opened.root(), HANDLERS) {
            Ok(fd) => fd,
            Err(NotPrivate::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.refuse(&self.root.join(HANDLERS), e)),
        };
        match private::open_dir(&handlers, key) {
            Ok(fd) => Ok(Some(fd)),
            Err(NotPrivate::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.refuse(&self.handler_dir(key), e)),
        }
    }

    /// The standard-library export's `python/` directory, checked private.
    pub(crate) fn open_stdlib(&self) -> Result<Option<OwnedFd>, LoadError> {
        let opened = self.open()?;
        let name = stdlib_dir_name();
        let dir = match private::open_dir(opened.root(), &name) {
            Ok(fd) => fd,
            Err(NotPrivate::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.refuse(&self.stdlib_dir(), e)),
        };
        match private::open_dir(&dir, "python") {
            Ok(fd) => Ok(Some(fd)),
            Err(NotPrivate::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.refuse(&self.stdlib_dir().join("python"), e)),
        }
    }

    /// A fresh private directory next to where `final_path` will be
    /// published; removed (however deep the tree a guest made in it) when
    /// dropped.
    pub(crate) fn scratch_for(&self, final_path: &Path) -> Result<Scratch, LoadError> {
        use std::os::unix::fs::PermissionsExt;
        self.open()?;
        let parent = final_path.parent().unwrap_or(&self.root);
        private::create_dir_all(parent).map_err(|e| self.refuse(parent, e))?;
        sweep_stale_scratch(parent);
        let path = tempfile::Builder::new()
            .prefix(".building-")
            .tempdir_in(parent)
            .map_err(|source| self.error(parent, source))?
            .keep();
        let scratch = Scratch { path };
        std::fs::set_permissions(&scratch.path, std::fs::Permissions::from_mode(0o700))
            .map_err(|source| self.error(&scratch.path, source))?;
        Ok(scratch)
    }

    /// Move the finished directory `built` to `final_path`. If another
    /// process published the same key first, its entry wins and ours is
    /// discarded.
    pub(crate) fn publish(&self, built: &Path, final_path: &Path) -> Result<(), LoadError> {
        match std::fs::rename(built, final_path) {
            Ok(()) => Ok(()),
            Err(_) if final_path.is_dir() => Ok(()),
            Err(source) => Err(self.error(final_path, source)),
        }
    }

    /// Move a damaged or tampered entry out of the way, so that it is
    /// rebuilt; it is deleted (links inside are not followed).
    pub(crate) fn discard(&self, path: &Path) {
        let aside = path.with_file_name(format!(
            ".discarded-{}-{}",
            path.file_name().unwrap_or_default().to_string_lossy(),
            std::process::id()
        ));
        if std::fs::rename(path, &aside).is_ok() {
            let _ = remove_tree(&aside);
        }
    }

    pub(crate) fn error(&self, path: &Path, source: std::io::Error) -> LoadError {
        LoadError::Cache {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A build directory: removed with everything in it when dropped, however
/// deep or wide the tree the build left (see `untrusted::remove_tree`).
#[derive(Debug)]
pub(crate) struct Scratch {
    path: PathBuf,
}

impl Scratch {
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(error) = remove_tree(&self.path) {
            tracing::warn!(path = %self.path.display(), %error, "could not remove a build directory");
        }
    }
}

/// Build directories untouched for this long belong to a pycage that was
/// killed mid-build (a live build's is at most its timeout old, and builds
/// time out within an hour).
const STALE_SCRATCH: std::time::Duration = std::time::Duration::from_secs(6 * 3600);

/// Remove what killed builds left in `dir` (`.building-*`, `.discarded-*`).
fn sweep_stale_scratch(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with(".building-") || name.starts_with(".discarded-")) {
            continue;
        }
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|modified| modified.elapsed().ok())
            .is_some_and(|age| age > STALE_SCRATCH);
        if stale && entry.file_type().is_ok_and(|t| t.is_dir()) {
            let _ = remove_tree(&entry.path());
        }
    }
}

/// Where handler entries live under the root.
const HANDLERS: &str = "handlers";

fn stdlib_dir_name() -> String {
    format!("stdlib-{}", stdlib_key())
}

fn hasher() -> blake3::Hasher {
    let mut h = blake3::Hasher::new();
    for part in [
        LAYOUT_VERSION,
        env!("CARGO_PKG_VERSION"),
        contract::COMPONENTIZE_PY_VERSION,
        contract::WASMTIME_VERSION,
    ] {
        field(&mut h, part.as_bytes());
    }
    h
}

/// Length-prefix every field so that no two different inputs hash alike.
fn field(h: &mut blake3::Hasher, bytes: &[u8]) {
    h.update(&(bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

fn short(h: blake3::Hasher) -> String {
    h.finalize().to_hex()[..32].to_owned()
}

/// Key of the shared stdlib export: depends only on the toolchain.
fn stdlib_key() -> String {
    let mut h = hasher();
    field(&mut h, framework::STDLIB_EXPORTER.as_bytes());
    short(h)
}

/// Key of an installed dependency layer: the toolchain, the guest's Python
/// version and the (normalised) requirement list. Identical lists share it.
pub(crate) fn layer_key(requirements: &[String]) -> String {
    let mut h = hasher();
    field(&mut h, b"dependency-layer");
    field(&mut h, contract::GUEST_PYTHON_VERSION.as_bytes());
    // How it was installed: the pinned pip and pycage's driver, and the
    // helper that builds source distributions.
    field(&mut h, crate::build::deps::install::PIP_VERSION.as_bytes());
    field(&mut h, crate::build::deps::install::DRIVER.as_bytes());
    field(&mut h, framework::SDIST_BUILDER.as_bytes());
    for requirement in requirements {
        field(&mut h, requirement.as_bytes());
    }
    short(h)
}

/// Key of one built handler: the toolchain, the guest framework, the WIT, the
/// entry module, every staged file (path and contents) and every layer.
pub(crate) fn handler_key(entry_module: &str, snapshot: &Snapshot, layers: &[Layer]) -> String {
    let mut h = hasher();
    for (name, text) in crate::contract::wit::guest_files() {
        field(&mut h, name.as_bytes());
        field(&mut h, text.as_bytes());
    }
    for (name, source) in framework::FRAMEWORK_FILES {
        field(&mut h, name.as_bytes());
        field(&mut h, source.as_bytes());
    }
    field(&mut h, entry_module.as_bytes());
    hash_files(&mut h, snapshot);
    for layer in layers {
        match &layer.contents {
            LayerContents::Files(files) => {
                field(&mut h, b"files");
                hash_files(&mut h, files);
            }
            LayerContents::Installed { key, .. } => {
                field(&mut h, b"installed");
                field(&mut h, key.as_bytes());
            }
        }
    }
    short(h)
}

fn hash_files(h: &mut blake3::Hasher, snapshot: &Snapshot) {
    field(h, &(snapshot.files.len() as u64).to_le_bytes());
    for file in &snapshot.files {
        field(h, file.relative.as_bytes());
        field(h, &file.contents);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::stage::StagedFile;

    fn snap(files: &[(&str, &str)]) -> Snapshot {
        Snapshot {
            files: files
                .iter()
                .map(|(r, c)| StagedFile {
                    stamp: Default::default(),
                    relative: (*r).into(),
                    contents: c.as_bytes().to_vec(),
                })
                .collect(),
            skipped: vec![],
        }
    }

    #[test]
    fn key_changes_with_content_path_and_entry() {
        let base = handler_key("app", &snap(&[("app.py", "x")]), &[]);
        assert_eq!(base, handler_key("app", &snap(&[("app.py", "x")]), &[]));
        assert_ne!(base, handler_key("app", &snap(&[("app.py", "y")]), &[]));
        assert_ne!(base, handler_key("main", &snap(&[("app.py", "x")]), &[]));
        assert_ne!(
            base,
            handler_key("app", &snap(&[("app.py", "x"), ("d.txt", "")]), &[])
        );
        // Moving bytes between path and contents must not collide.
        assert_ne!(
            handler_key("app", &snap(&[("ab", "c")]), &[]),
            handler_key("app", &snap(&[("a", "bc")]), &[])
        );
    }

    #[test]
    fn key_changes_with_layers() {
        let app = snap(&[("app.py", "x")]);
        let installed = |key: &str| Layer {
            origin: PathBuf::from("pyproject.toml"),
            contents: LayerContents::Installed {
                key: key.into(),
                dir: PathBuf::new(),
                requirements: Vec::new(),
            },
        };
        let files = |contents: &str| Layer {
            origin: PathBuf::from("venv"),
            contents: LayerContents::Files(snap(&[("pkg.py", contents)])),
        };
        let bare = handler_key("app", &app, &[]);
        let a = handler_key("app", &app, &[installed("a")]);
        assert_ne!(bare, a);
        assert_eq!(a, handler_key("app", &app, &[installed("a")]));
        assert_ne!(a, handler_key("app", &app, &[installed("b")]));
        assert_ne!(
            handler_key("app", &app, &[files("1")]),
            handler_key("app", &app, &[files("2")])
        );
        assert_ne!(
            layer_key(&["attrs==25.1.0".into()]),
            layer_key(&["attrs==25.3.0".into()])
        );
    }
}
