//! Reading a handler from the user's disk: which files it consists of and
//! which module is its entry point.
//!
//! The files are read once into memory; the cache key is computed from those
//! bytes and, on a cache miss, exactly those bytes are written to a private
//! build directory. Nothing is ever written into the user's directory, and a
//! file that changes while we build cannot make the key and the image
//! disagree.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::LoadError;

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
/// Module names the sandbox itself uses; a handler may not shadow them.
const RESERVED_MODULES: &[&str] = &[
    "pycage",
    "pycage_guest",
    "pycage_build_config",
    "wit_world",
    "componentize_py_types",
    "componentize_py_runtime",
    "componentize_py_async_support",
    "poll_loop",
];

/// Bounds on what one handler may bring along.
pub const MAX_FILES: usize = 10_000;
pub const MAX_TOTAL_BYTES: u64 = 256 * 1024 * 1024;

/// A handler as given on the command line: a single file or a directory.
#[derive(Debug, Clone)]
pub struct HandlerSource {
    /// The file or directory, as the user named it (absolute).
    pub path: PathBuf,
    /// The directory relative paths are shown against in messages.
    pub display_root: PathBuf,
    pub is_file: bool,
    /// Dotted name of the module imported at build time.
    pub entry_module: String,
}

/// One file of the handler, relative to the handler root, with '/' separators.
#[derive(Debug, Clone)]
pub struct StagedFile {
    pub relative: String,
    pub contents: Vec<u8>,
}

/// Everything that goes into the sandbox image from the user's disk.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub files: Vec<StagedFile>,
    /// Entries left out, with the reason (symlinks, special files).
    pub skipped: Vec<(PathBuf, &'static str)>,
}

impl HandlerSource {
    /// Resolve `path` (a `.py` file or a directory) and its entry module.
    pub fn resolve(path: &Path, module: Option<&str>) -> Result<Self, LoadError> {
        let absolute = std::path::absolute(path).map_err(|source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let meta = fs::metadata(&absolute).map_err(|_| LoadError::NotFound {
            path: path.to_path_buf(),
        })?;
        if meta.is_file() {
            if absolute.extension().and_then(|e| e.to_str()) != Some("py") {
                return Err(LoadError::NotAHandler {
                    path: path.to_path_buf(),
                });
            }
            let stem = absolute
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_owned();
            check_module_name(path, &stem)?;
            let display_root = absolute.parent().map(Path::to_path_buf).unwrap_or_default();
            return Ok(Self {
                path: absolute,
                display_root,
                is_file: true,
                entry_module: stem,
            });
        }
        if !meta.is_dir() {
            return Err(LoadError::NotAHandler {
                path: path.to_path_buf(),
            });
        }
        let entry_module = match module {
            Some(name) => {
                check_module_name(path, name)?;
                let relative = name.replace('.', "/");
                let exists = absolute.join(format!("{relative}.py")).is_file()
                    || absolute.join(&relative).join("__init__.py").is_file();
                if !exists {
                    return Err(LoadError::EntryModuleMissing {
                        dir: path.to_path_buf(),
                        module: name.to_owned(),
                    });
                }
                name.to_owned()
            }
            None => ENTRY_CANDIDATES
                .iter()
                .find(|name| absolute.join(format!("{name}.py")).is_file())
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
        })
    }

    /// Read the handler's files: the one file, or the directory tree
    /// (see [`snapshot_tree`]).
    pub fn snapshot(&self) -> Result<Snapshot, LoadError> {
        if self.is_file {
            let mut snapshot = Snapshot::default();
            let contents = read(&self.path)?;
            let name = self
                .path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            snapshot.files.push(StagedFile {
                relative: name,
                contents,
            });
            return Ok(snapshot);
        }
        snapshot_tree(&self.path, &Tree::HANDLER)
    }

    /// Where a guest path under the handler mount lives on the user's disk.
    pub fn host_path_of(&self, relative: &str) -> PathBuf {
        self.display_root.join(relative)
    }
}

/// How a directory tree is read into a [`Snapshot`].
#[derive(Debug, Clone, Copy)]
pub struct Tree {
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
}

/// Read every regular file below `root`, bounded by [`MAX_FILES`] and
/// [`MAX_TOTAL_BYTES`]. Symlinks are never followed (a link could point
/// anywhere on the host); they and special files are reported in `skipped`.
pub fn snapshot_tree(root: &Path, tree: &Tree) -> Result<Snapshot, LoadError> {
    let mut snapshot = Snapshot::default();
    let mut total = 0u64;
    let mut pending = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = pending.pop() {
        let mut entries = fs::read_dir(&dir)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|source| LoadError::Io {
                path: dir.clone(),
                source,
            })?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                snapshot.skipped.push((path, "file name is not UTF-8"));
                continue;
            };
            // Left out silently: expected in every virtualenv, so a warning
            // on each load would only be noise.
            if prefix.is_empty() && tree.skipped_at_top(&name) {
                continue;
            }
            let relative = format!("{prefix}{name}");
            // file_type() does not follow symlinks.
            let kind = entry.file_type().map_err(|source| LoadError::Io {
                path: path.clone(),
                source,
            })?;
            if kind.is_symlink() {
                snapshot
                    .skipped
                    .push((path, "symbolic link (not followed)"));
            } else if kind.is_dir() {
                if !tree.skip_dirs.contains(&name.as_str()) {
                    pending.push((path, format!("{relative}/")));
                }
            } else if kind.is_file() && !tree.hard_links && is_hard_linked(&entry) {
                // Another name for this file may live anywhere on the
                // filesystem: it is not the directory's to grant.
                snapshot
                    .skipped
                    .push((path, "hard link (the file has other names)"));
            } else if kind.is_file() {
                let contents = read(&path)?;
                total += contents.len() as u64;
                if snapshot.files.len() >= MAX_FILES || total > MAX_TOTAL_BYTES {
                    return Err(LoadError::TooLarge {
                        path: root.to_path_buf(),
                        limit: format!("{MAX_FILES} files or {} MiB", MAX_TOTAL_BYTES >> 20),
                    });
                }
                snapshot.files.push(StagedFile { relative, contents });
            } else {
                snapshot.skipped.push((path, "not a regular file"));
            }
        }
    }
    snapshot.files.sort_by(|a, b| a.relative.cmp(&b.relative));
    Ok(snapshot)
}

impl Snapshot {
    /// Write the files below `dir` (a fresh, private directory).
    pub fn write_to(&self, dir: &Path) -> std::io::Result<()> {
        for file in &self.files {
            let target = dir.join(&file.relative);
            if let Some(parent) = target.parent() {
                fs::create_dir_all(parent)?;
            }
            fs::write(&target, &file.contents)?;
        }
        Ok(())
    }
}

#[cfg(unix)]
fn is_hard_linked(entry: &fs::DirEntry) -> bool {
    use std::os::unix::fs::MetadataExt;
    entry.metadata().is_ok_and(|m| m.nlink() > 1)
}

#[cfg(not(unix))]
fn is_hard_linked(_: &fs::DirEntry) -> bool {
    false
}

fn read(path: &Path) -> Result<Vec<u8>, LoadError> {
    fs::read(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn check_module_name(path: &Path, name: &str) -> Result<(), LoadError> {
    let valid = !name.is_empty()
        && name.split('.').all(|part| {
            let mut chars = part.chars();
            matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
                && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
        });
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
            .unwrap()
            .files
            .into_iter()
            .map(|f| f.relative)
            .collect();
        assert_eq!(names, ["app.py"]);

        let whole = HandlerSource::resolve(dir.path(), None).unwrap();
        assert_eq!(whole.entry_module, "app");
        let snap = whole.snapshot().unwrap();
        let names: Vec<_> = snap.files.iter().map(|f| f.relative.as_str()).collect();
        assert_eq!(names, ["app.py", "secret.txt"]);
        let skipped: Vec<_> = snap
            .skipped
            .iter()
            .map(|(p, _)| p.file_name().unwrap().to_owned())
            .collect();
        assert_eq!(skipped, ["linked", "passwd"]);
    }
}
