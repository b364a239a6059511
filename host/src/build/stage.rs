//! Reading a handler from the user's disk: which files it consists of and
//! which module is its entry point.
//!
//! The tenant controls every byte of its handler directory and may change
//! it while pycage reads it, so the tree is read through
//! [`crate::host_fs::untrusted`]: every entry opened once relative to its parent's
//! handle, never through a link, its type and size checked on the open
//! handle, every read bounded. The files are read once into memory; the
//! cache key is computed from those bytes and, on a cache miss, exactly
//! those bytes are written to a private build directory. Nothing is ever
//! written into the user's directory, and a file that changes while we
//! build cannot make the key and the image disagree.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use crate::contract::RESERVED_MODULES;
use crate::error::LoadError;
use crate::host_fs::untrusted::{self, ReadError, Take, TreeLimits, TreeRules};

pub(crate) use crate::host_fs::untrusted::TreeFile as StagedFile;

/// Directory entries never copied into a sandbox image.
const SKIPPED_DIRS: &[&str] = &[
    "__pycache__",
    ".git",
    ".hg",
    ".svn",
    ".venv",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
    ".tox",
    ".nox",
];
/// Entry modules tried, in order, when a directory is given without `--module`.
pub const ENTRY_CANDIDATES: &[&str] = &["app", "handler", "main"];

/// Bounds on what one handler (or one dependency tree) may bring along: a
/// single-file handler is bounded by [`MAX_TOTAL_BYTES`] too. Real
/// dependency trees run to thousands of files (boto3 with botocore ~5,000);
/// the bytes, which the host holds in memory while it stages them, are the
/// bound that protects it.
pub const MAX_FILES: usize = 50_000;
pub const MAX_TOTAL_BYTES: u64 = 256 * 1024 * 1024;
/// Directory entries looked at per tree, taken or not, and nesting depth.
const MAX_ENTRIES: usize = 200_000;
const MAX_DEPTH: usize = 64;

const LIMITS: TreeLimits = TreeLimits {
    max_files: MAX_FILES,
    max_bytes: MAX_TOTAL_BYTES,
    max_entries: MAX_ENTRIES,
    max_depth: MAX_DEPTH,
};

/// A handler as given on the command line: a single file or a directory,
/// read once when it is resolved.
#[derive(Debug)]
pub(crate) struct HandlerSource {
    /// The file or directory, as the user named it (absolute).
    pub path: PathBuf,
    /// The directory relative paths are shown against in messages.
    pub display_root: PathBuf,
    pub is_file: bool,
    /// Dotted name of the module imported at build time.
    pub entry_module: String,
    /// The attribute of the entry module to serve as a WSGI or ASGI app
    /// (`--module MODULE:APP`); without it, the module's routes or an
    /// `app` / `application` it defines.
    pub app_attribute: Option<String>,
    /// When the files were read (or stamped): a file changed shortly
    /// before may change again unseen by its stamp (`cache::index`).
    pub read_at: std::time::SystemTime,
    snapshot: Snapshot,
}

/// Everything that goes into the sandbox image from the user's disk.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    pub files: Vec<StagedFile>,
    /// Entries left out, with the reason (symlinks, special files).
    pub skipped: Vec<(PathBuf, &'static str)>,
}

impl Snapshot {
    /// Whether the tree has a file at `relative`.
    pub(crate) fn has(&self, relative: &str) -> bool {
        self.files
            .binary_search_by(|f| f.relative.as_str().cmp(relative))
            .is_ok()
    }
}

/// A read failure as a load error.
pub(crate) fn load_error(error: ReadError) -> LoadError {
    match error {
        ReadError::Io { path, source } => LoadError::Io { path, source },
        ReadError::TooLarge { path, limit } => LoadError::TooLarge { path, limit },
        ReadError::Link { path } => {
            let target = std::fs::read_link(&path).ok();
            LoadError::Link { path, target }
        }
        ReadError::WrongType { path, found, .. } => LoadError::NotAHandler {
            path,
            found: found.to_owned(),
        },
    }
}

impl HandlerSource {
    /// Open `path` (a `.py` file or a directory), read its files and find
    /// its entry module.
    pub(crate) fn resolve(path: &Path, module: Option<&str>) -> Result<Self, LoadError> {
        Self::open(path, module, true)
    }

    /// `resolve` without reading any file: the same files, each with only
    /// its [`Stamp`](untrusted::Stamp), for telling cheaply whether the
    /// handler is exactly as it was when last read (`build::cache::index`).
    pub(crate) fn stamp(path: &Path, module: Option<&str>) -> Result<Self, LoadError> {
        Self::open(path, module, false)
    }

    fn open(path: &Path, module: Option<&str>, contents: bool) -> Result<Self, LoadError> {
        let read_at = std::time::SystemTime::now();
        let (module, app_attribute) = split_app(path, module)?;
        let absolute = std::path::absolute(path).map_err(|source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let (fd, stat) = untrusted::open_named(&absolute).map_err(|e| match e {
            ReadError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                LoadError::NotFound {
                    path: path.to_path_buf(),
                }
            }
            other => load_error(other),
        })?;
        if untrusted::file_type(&stat) == rustix::fs::FileType::RegularFile {
            if absolute.extension().and_then(|e| e.to_str()) != Some("py") {
                return Err(LoadError::NotAHandler {
                    path: path.to_path_buf(),
                    found: "not a .py file".into(),
                });
            }
            let stem = absolute
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_owned();
            check_module_name(path, &stem)?;
            if let Some(name) = module
                && name != stem
            {
                return Err(LoadError::EntryModuleMissing {
                    dir: path.to_path_buf(),
                    module: name.to_owned(),
                });
            }
            // As in a directory handler: a file with other names may live
            // anywhere on the filesystem, and is not its directory's to grant.
            if stat.st_nlink > 1 {
                return Err(LoadError::HardLink {
                    path: path.to_path_buf(),
                });
            }
            let stamp = untrusted::Stamp::of(&stat);
            let contents = if contents {
                untrusted::read_to_end(fd, &stat, MAX_TOTAL_BYTES, &absolute).map_err(load_error)?
            } else if stamp.size > MAX_TOTAL_BYTES {
                return Err(LoadError::TooLarge {
                    path: path.to_path_buf(),
                    limit: untrusted::format_bytes(MAX_TOTAL_BYTES),
                });
            } else {
                Vec::new()
            };
            let name = absolute
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let display_root = absolute.parent().map(Path::to_path_buf).unwrap_or_default();
            return Ok(Self {
                path: absolute,
                display_root,
                is_file: true,
                entry_module: stem,
                app_attribute,
                read_at,
                snapshot: Snapshot {
                    files: vec![StagedFile {
                        relative: name,
                        contents,
                        stamp,
                    }],
                    skipped: Vec::new(),
                },
            });
        }
        let snapshot = walk_tree(fd.as_fd(), &absolute, &Tree::HANDLER, contents)?;
        let entry_module = match module {
            Some(name) => {
                check_module_name(path, name)?;
                let relative = name.replace('.', "/");
                if !snapshot.has(&format!("{relative}.py"))
                    && !snapshot.has(&format!("{relative}/__init__.py"))
                {
                    return Err(LoadError::EntryModuleMissing {
                        dir: path.to_path_buf(),
                        module: name.to_owned(),
                    });
                }
                name.to_owned()
            }
            None => ENTRY_CANDIDATES
                .iter()
                .find(|name| snapshot.has(&format!("{name}.py")))
                .map(|name| (*name).to_owned())
                .ok_or_else(|| LoadError::NoEntryModule {
                    dir: path.to_path_buf(),
                    candidates: ENTRY_CANDIDATES
                        .iter()
                        .map(|n| format!("{n}.py"))
                        .collect::<Vec<_>>()
                        .join(", "),
                })?,
        };
        Ok(Self {
            display_root: absolute.clone(),
            path: absolute,
            is_file: false,
            entry_module,
            app_attribute,
            read_at,
            snapshot,
        })
    }

    /// What the build imports and serves, as one string for the cache key:
    /// `MODULE` or `MODULE:APP`.
    pub(crate) fn entry_spec(&self) -> String {
        match &self.app_attribute {
            Some(app) => format!("{}:{app}", self.entry_module),
            None => self.entry_module.clone(),
        }
    }

    /// The handler's files: the one file, or the directory tree.
    pub(crate) fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// Where a guest path under the handler mount lives on the user's disk.
    pub(crate) fn host_path_of(&self, relative: &str) -> PathBuf {
        self.display_root.join(relative)
    }
}

/// How a directory tree is read into a [`Snapshot`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tree {
    /// Directory names never descended into.
    pub skip_dirs: &'static [&'static str],
    /// Top-level entries left out: e.g. installers in a virtualenv, which
    /// are of no use inside the sandbox. A name also matches its
    /// distribution's metadata directory (`name-*.dist-info`).
    pub skip_top: &'static [&'static str],
    /// Whether files with other names (hard links) are taken. A tenant's
    /// directory may not grant a file it does not own; an environment the
    /// operator names (`--venv`) may, since installers such as uv hard-link
    /// from their cache.
    pub hard_links: bool,
}

impl Tree {
    /// A tenant's handler directory.
    pub const HANDLER: Tree = Tree {
        skip_dirs: SKIPPED_DIRS,
        skip_top: &[],
        hard_links: false,
    };
    /// What an installer wrote with `--target`.
    pub const INSTALLED: Tree = Tree {
        skip_dirs: SKIPPED_DIRS,
        // Console scripts: not importable.
        skip_top: &["bin"],
        hard_links: true,
    };
    /// A virtualenv's site-packages, or a directory its `.pth` files add.
    /// Packaging tools are left out: they cannot run in the sandbox.
    pub const VENV: Tree = Tree {
        skip_dirs: SKIPPED_DIRS,
        skip_top: &[
            "pip",
            "setuptools",
            "pkg_resources",
            "_distutils_hack",
            "distutils-precedence.pth",
            "_virtualenv.py",
            "_virtualenv.pth",
        ],
        hard_links: true,
    };

    fn skipped_at_top(&self, name: &str) -> bool {
        self.skip_top.iter().any(|skip| {
            let dist_info = name
                .strip_prefix(skip)
                .is_some_and(|rest| rest.starts_with('-') && rest.ends_with(".dist-info"));
            name == *skip || dist_info
        })
    }

    fn take(&self, relative: &str, is_dir: bool) -> Take {
        let (parent, name) = relative.rsplit_once('/').unwrap_or(("", relative));
        // Left out silently: expected in every virtualenv, so a warning
        // on each load would only be noise.
        if parent.is_empty() && self.skipped_at_top(name) {
            return Take::Quietly;
        }
        if is_dir && self.skip_dirs.contains(&name) {
            return Take::Quietly;
        }
        Take::Yes
    }
}

/// Read every regular file below the open directory `root` (shown as
/// `shown_as`), bounded by [`MAX_FILES`] and [`MAX_TOTAL_BYTES`]. Symlinks
/// are never followed (a link could point anywhere on the host); they and
/// special files are reported in `skipped`.
pub(crate) fn read_tree(
    root: std::os::fd::BorrowedFd<'_>,
    shown_as: &Path,
    tree: &Tree,
) -> Result<Snapshot, LoadError> {
    walk_tree(root, shown_as, tree, true)
}

/// [`read_tree`] without reading contents: only the stamps (see
/// `cache::index`).
pub(crate) fn stamp_tree_at(
    root: std::os::fd::BorrowedFd<'_>,
    shown_as: &Path,
    tree: &Tree,
) -> Result<Snapshot, LoadError> {
    walk_tree(root, shown_as, tree, false)
}

/// [`read_tree`], or with `contents` false only stamped (see
/// [`TreeRules::contents`]).
fn walk_tree(
    root: std::os::fd::BorrowedFd<'_>,
    shown_as: &Path,
    tree: &Tree,
    contents: bool,
) -> Result<Snapshot, LoadError> {
    let rules = TreeRules {
        limits: LIMITS,
        hard_links: tree.hard_links,
        filter: &|relative, is_dir| tree.take(relative, is_dir),
        contents,
    };
    let read = untrusted::read_tree(root, &rules, shown_as).map_err(load_error)?;
    Ok(Snapshot {
        files: read.files,
        skipped: read
            .skipped
            .into_iter()
            .map(|(relative, reason)| (shown_as.join(relative), reason))
            .collect(),
    })
}

/// [`read_tree`] of the directory at `root`, which is opened without
/// following a link in its last component.
pub(crate) fn snapshot_tree(root: &Path, tree: &Tree) -> Result<Snapshot, LoadError> {
    read_tree(open_tree(root)?.as_fd(), root, tree)
}

/// [`snapshot_tree`], stamps only.
pub(crate) fn stamp_tree(root: &Path, tree: &Tree) -> Result<Snapshot, LoadError> {
    stamp_tree_at(open_tree(root)?.as_fd(), root, tree)
}

/// The directory `root` (its last component not followed).
fn open_tree(root: &Path) -> Result<std::os::fd::OwnedFd, LoadError> {
    let (fd, stat) = untrusted::open_named(root).map_err(load_error)?;
    if untrusted::file_type(&stat) != rustix::fs::FileType::Directory {
        return Err(LoadError::Io {
            path: root.to_path_buf(),
            source: std::io::Error::from(std::io::ErrorKind::NotADirectory),
        });
    }
    Ok(fd)
}

impl Snapshot {
    /// Write the files below `dir` (a fresh directory), private to this
    /// user whatever the umask.
    pub(crate) fn write_to(&self, dir: &Path) -> std::io::Result<()> {
        for file in &self.files {
            crate::host_fs::private::write_file(&dir.join(&file.relative), &file.contents)?;
        }
        Ok(())
    }
}

/// `MODULE[:APP]` (gunicorn's and uvicorn's form) into the module, if
/// named, and the app attribute, if any; `:APP` alone keeps the default
/// module. The attribute is a Python identifier.
fn split_app<'a>(
    path: &Path,
    module: Option<&'a str>,
) -> Result<(Option<&'a str>, Option<String>), LoadError> {
    let Some((name, app)) = module.and_then(|m| m.split_once(':')) else {
        return Ok((module, None));
    };
    if !is_identifier(app) {
        return Err(LoadError::BadModuleName {
            path: path.to_path_buf(),
            name: module.unwrap_or_default().to_owned(),
        });
    }
    Ok(((!name.is_empty()).then_some(name), Some(app.to_owned())))
}

/// An ASCII Python identifier.
fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

fn check_module_name(path: &Path, name: &str) -> Result<(), LoadError> {
    let valid = !name.is_empty() && name.split('.').all(is_identifier);
    if !valid {
        return Err(LoadError::BadModuleName {
            path: path.to_path_buf(),
            name: name.to_owned(),
        });
    }
    let top = name.split('.').next().unwrap_or(name);
    if RESERVED_MODULES.contains(&top) || top.starts_with("componentize_py") {
        return Err(LoadError::ReservedModuleName {
            path: path.to_path_buf(),
            module: top.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn module_names_are_checked() {
        let p = Path::new("x");
        assert!(check_module_name(p, "hello").is_ok());
        assert!(check_module_name(p, "pkg.api").is_ok());
        assert!(matches!(
            check_module_name(p, "my-handler"),
            Err(LoadError::BadModuleName { .. })
        ));
        assert!(matches!(
            check_module_name(p, "1st"),
            Err(LoadError::BadModuleName { .. })
        ));
        assert!(matches!(
            check_module_name(p, "pycage"),
            Err(LoadError::ReservedModuleName { .. })
        ));
        assert!(matches!(
            check_module_name(p, "wit_world.x"),
            Err(LoadError::ReservedModuleName { .. })
        ));
    }

    #[test]
    fn a_single_file_grants_only_that_file_and_a_directory_skips_links() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("app.py"), "x = 1\n").unwrap();
        fs::write(dir.path().join("secret.txt"), "sibling").unwrap();
        fs::create_dir(dir.path().join("__pycache__")).unwrap();
        fs::write(dir.path().join("__pycache__/app.pyc"), "junk").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("passwd")).unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), "outside").unwrap();
        fs::hard_link(outside.path().join("secret"), dir.path().join("linked")).unwrap();

        let file = HandlerSource::resolve(&dir.path().join("app.py"), None).unwrap();
        let names: Vec<_> = file
            .snapshot()
            .files
            .iter()
            .map(|f| f.relative.as_str())
            .collect();
        assert_eq!(names, ["app.py"]);

        let whole = HandlerSource::resolve(dir.path(), None).unwrap();
        assert_eq!(whole.entry_module, "app");
        let snap = whole.snapshot();
        let names: Vec<_> = snap.files.iter().map(|f| f.relative.as_str()).collect();
        assert_eq!(names, ["app.py", "secret.txt"]);
        let mut skipped: Vec<_> = snap
            .skipped
            .iter()
            .map(|(p, _)| p.file_name().unwrap().to_owned())
            .collect();
        skipped.sort();
        assert_eq!(skipped, ["linked", "passwd"]);
    }

    #[test]
    fn a_handler_that_is_a_link_or_too_large_is_refused_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("real.py"), "x = 1\n").unwrap();
        std::os::unix::fs::symlink(dir.path().join("real.py"), dir.path().join("link.py")).unwrap();
        match HandlerSource::resolve(&dir.path().join("link.py"), None) {
            Err(LoadError::Link { target, .. }) => {
                assert_eq!(
                    target.as_deref(),
                    Some(dir.path().join("real.py").as_path())
                )
            }
            other => panic!("expected a link error, got {other:?}"),
        }
        // A sparse single-file handler far over the bound: refused from its
        // size on the handle, not after reading it.
        let big = fs::File::create(dir.path().join("big.py")).unwrap();
        big.set_len(MAX_TOTAL_BYTES + 1).unwrap();
        assert!(matches!(
            HandlerSource::resolve(&dir.path().join("big.py"), None),
            Err(LoadError::TooLarge { .. })
        ));
        // A single file with other names is refused, as a directory skips one.
        let elsewhere = tempfile::tempdir().unwrap();
        fs::write(elsewhere.path().join("secret.py"), "x = 1\n").unwrap();
        fs::hard_link(
            elsewhere.path().join("secret.py"),
            dir.path().join("linked.py"),
        )
        .unwrap();
        assert!(matches!(
            HandlerSource::resolve(&dir.path().join("linked.py"), None),
            Err(LoadError::HardLink { .. })
        ));
        // The entry module is looked for in what was read, not by path.
        let tree = tempfile::tempdir().unwrap();
        fs::create_dir(tree.path().join("pkg")).unwrap();
        fs::write(tree.path().join("pkg/__init__.py"), "").unwrap();
        std::os::unix::fs::symlink(dir.path().join("real.py"), tree.path().join("app.py")).unwrap();
        assert!(matches!(
            HandlerSource::resolve(tree.path(), None),
            Err(LoadError::NoEntryModule { .. })
        ));
        assert_eq!(
            HandlerSource::resolve(tree.path(), Some("pkg"))
                .unwrap()
                .entry_module,
            "pkg"
        );
    }

    /// The race staging used to lose: a file swapped for a link to a host
    /// file, or for a FIFO, while the tree is read. Whatever the timing,
    /// the host file is never read and the read never blocks.
    #[test]
    fn a_file_swapped_mid_read_never_leaks_or_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let secret = tempfile::NamedTempFile::new().unwrap();
        fs::write(secret.path(), "HOST SECRET").unwrap();
        let root = dir.path().to_path_buf();
        fs::write(root.join("app.py"), "x = 1").unwrap();
        for i in 0..50 {
            fs::write(root.join(format!("pad{i}.py")), "pad").unwrap();
        }
        fs::write(root.join("data.txt"), "tenant data").unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let swapper = {
            let (root, stop, target) = (root.clone(), stop.clone(), secret.path().to_path_buf());
            std::thread::spawn(move || {
                let fifo_mode = rustix::fs::Mode::from_raw_mode(0o600);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = fs::remove_file(root.join("swap"));
                    let _ = std::os::unix::fs::symlink(&target, root.join("swap"));
                    let _ = fs::rename(root.join("swap"), root.join("data.txt"));
                    let _ = rustix::fs::mkfifoat(rustix::fs::CWD, root.join("swap"), fifo_mode);
                    let _ = fs::rename(root.join("swap"), root.join("data.txt"));
                    let _ = fs::write(root.join("swap"), "tenant data");
                    let _ = fs::rename(root.join("swap"), root.join("data.txt"));
                }
            })
        };
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let reader = {
            let root = root.clone();
            std::thread::spawn(move || {
                for _ in 0..300 {
                    if let Ok(source) = HandlerSource::resolve(&root, None) {
                        for file in &source.snapshot().files {
                            assert_ne!(file.contents, b"HOST SECRET", "{}", file.relative);
                        }
                    }
                }
                let _ = done_tx.send(());
            })
        };
        let finished = done_rx.recv_timeout(std::time::Duration::from_secs(120));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        swapper.join().unwrap();
        assert!(finished.is_ok(), "staging blocked (on a FIFO?)");
        reader.join().unwrap();
    }
}
