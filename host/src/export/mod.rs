//! `pycage export`: a tenant's handler as a standard `wasi:http` component
//! that other hosts run (Spin and SpinKube, wasmCloud, `wasmtime serve`),
//! with its files and the target's manifest or command line written next
//! to it.
//!
//! The same handler, framework and grants as `pycage serve`; what differs
//! is who enforces them. The manifest ([`spin`]) or command line
//! ([`wasmtime`]) grants the other host exactly what the tenant's
//! configuration grants, and the export's README says what that host
//! cannot enforce.

mod readme;
pub mod spin;
pub mod wasmtime;

use std::path::{Path, PathBuf};

pub use crate::build::export::Mount;
use crate::build::export::{self as built, COMPONENT_FILE};
use crate::config::TenantConfig;
use crate::error::LoadError;

/// Marks a directory `pycage export` wrote, so that exporting again may
/// replace it (and nothing else).
const MARKER: &str = ".pycage-export";

/// Which host the export is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportTarget {
    /// `wasmtime serve` (and any host of `wasi:http/proxy` plus the CLI
    /// interfaces): imports only the interfaces the tenant is granted, in
    /// the versions wasmtime links.
    WasiHttp,
    /// Spin 3.x and SpinKube: the interface versions Spin links, and a
    /// `spin.toml`.
    Spin,
}

impl ExportTarget {
    pub fn name(self) -> &'static str {
        match self {
            ExportTarget::WasiHttp => "wasi-http",
            ExportTarget::Spin => "spin",
        }
    }

    /// The interfaces the component imports besides WASI's CLI set.
    fn imports(self, tenant: &TenantConfig) -> Vec<&'static str> {
        let mut imports = vec!["wasi:http/outgoing-handler@0.2.0"];
        match self {
            ExportTarget::Spin => imports.extend([
                spin::KEYVALUE_STORE,
                spin::KEYVALUE_ATOMICS,
                spin::CONFIG_STORE,
            ]),
            ExportTarget::WasiHttp => {
                if !tenant.key_value_stores.is_empty() {
                    imports.extend([wasmtime::KEYVALUE_STORE, wasmtime::KEYVALUE_ATOMICS]);
                }
                if !tenant.variables.is_empty() {
                    imports.push(wasmtime::CONFIG_STORE);
                }
            }
        }
        imports
    }
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// The handler could not be built (as `pycage build` would say).
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The output directory holds something `pycage export` did not write.
    #[error(
        "{}: exists and is not an earlier export (no {MARKER} in it); choose a new or empty directory",
        path.display()
    )]
    OutputInUse { path: PathBuf },
    /// The output directory is the handler's tree, inside it, or holds it.
    #[error(
        "{}: overlaps the handler {} (choose a directory outside it)",
        path.display(),
        handler.display()
    )]
    OutputOverlaps { path: PathBuf, handler: PathBuf },
    /// The target cannot be given the tenant's grants as they are written.
    #[error("cannot export for {target}: {reason}")]
    Unsupported {
        target: &'static str,
        reason: String,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct Export {
    pub dir: PathBuf,
    pub target: ExportTarget,
    /// The component, inside `dir`.
    pub component: PathBuf,
    /// The directories the component mounts, relative to `dir`.
    pub mounts: Vec<Mount>,
    /// How to serve it from `dir` (for `wasi-http`: the `wasmtime serve`
    /// command line; for `spin`: `spin up`).
    pub command: String,
    /// What the target host does not enforce of the tenant's grants and
    /// limits, one sentence each.
    pub caveats: Vec<String>,
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> ExportError + '_ {
    move |source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Build `tenant`'s export for `target` into `dir` (see
/// [`crate::Runtime::export`]).
pub(crate) fn write(
    settings: &crate::build::BuildSettings,
    tenant: &TenantConfig,
    source: &crate::build::stage::HandlerSource,
    target: ExportTarget,
    dir: &Path,
    on_event: &dyn Fn(crate::LoadEvent<'_>),
) -> Result<Export, ExportError> {
    if target == ExportTarget::Spin
        && let Some(reason) = spin::unsupported(tenant)
    {
        return Err(ExportError::Unsupported {
            target: target.name(),
            reason,
        });
    }
    let dir = &output_path(dir, &tenant.handler)?;
    check_output(dir)?;
    let parent = dir.parent().unwrap_or(Path::new("/")).to_path_buf();
    std::fs::create_dir_all(&parent).map_err(io_error(&parent))?;
    // Written beside `dir` and moved into place whole: a failed export
    // leaves an earlier one as it was.
    let staging = Staging(
        tempfile::Builder::new()
            .prefix(".pycage-export-")
            .tempdir_in(&parent)
            .map_err(io_error(&parent))?
            .keep(),
    );
    let imports = target.imports(tenant);
    let component = built::build(
        settings,
        source,
        tenant.venv.as_deref(),
        &imports,
        &tenant.limits,
        staging.path(),
        on_event,
    )?;
    let mut export = Export {
        dir: dir.clone(),
        target,
        component: dir.join(COMPONENT_FILE),
        mounts: component.mounts,
        command: String::new(),
        caveats: Vec::new(),
    };
    match target {
        ExportTarget::Spin => {
            let manifest = spin::manifest(tenant, &export.mounts);
            let path = staging.path().join(spin::MANIFEST);
            std::fs::write(&path, manifest).map_err(io_error(&path))?;
            export.command = spin::COMMAND.into();
            export.caveats = spin::caveats(tenant);
        }
        ExportTarget::WasiHttp => {
            export.command = wasmtime::command(tenant, &export.mounts);
            export.caveats = wasmtime::caveats(tenant);
            let path = staging.path().join(wasmtime::SCRIPT);
            std::fs::write(&path, wasmtime::script(tenant, &export.command))
                .map_err(io_error(&path))?;
            set_mode(&path, 0o755).map_err(io_error(&path))?;
        }
    }
    // Read-only on disk: `wasmtime serve` grants its `--dir`s read-write.
    let files = staging.path().join(built::FILES_DIR);
    set_tree_modes(&files, 0o555, 0o444).map_err(io_error(&files))?;
    let text = readme::render(tenant, &export);
    let path = staging.path().join("README.md");
    std::fs::write(&path, text).map_err(io_error(&path))?;
    let marker = staging.path().join(MARKER);
    std::fs::write(&marker, format!("{}\n", target.name())).map_err(io_error(&marker))?;
    // Readable by whoever deploys it (the staging directory is private).
    set_mode(staging.path(), 0o755).map_err(io_error(staging.path()))?;

    check_output(dir)?;
    // The earlier export is moved aside, the new one into its place, and
    // only then is the old one removed: `dir` is never half written.
    let old = match std::fs::symlink_metadata(dir) {
        Ok(_) => {
            let aside = Staging(
                tempfile::Builder::new()
                    .prefix(".pycage-export-old-")
                    .tempdir_in(&parent)
                    .map_err(io_error(&parent))?
                    .keep(),
            );
            let into = aside.0.join("export");
            std::fs::rename(dir, &into).map_err(io_error(dir))?;
            Some((aside, into))
        }
        Err(_) => None,
    };
    if let Err(source) = std::fs::rename(&staging.0, dir) {
        if let Some((aside, into)) = old
            && std::fs::rename(&into, dir).is_err()
        {
            // Neither in place: keep the earlier export where it is, and say so.
            std::mem::forget(aside);
            return Err(ExportError::Io {
                path: dir.to_path_buf(),
                source: std::io::Error::other(format!(
                    "{source}; the earlier export is left at {}",
                    into.display()
                )),
            });
        }
        return Err(ExportError::Io {
            path: dir.to_path_buf(),
            source,
        });
    }
    std::mem::forget(staging);
    drop(old);
    Ok(export)
}

/// A directory of ours beside the output, removed when dropped (without
/// following links, its read-only directories made writable through their
/// handles: the old export may still be served, its guest running).
struct Staging(PathBuf);

impl Staging {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = crate::host_fs::untrusted::remove_tree(&self.0);
    }
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Set the mode of every directory (`dirs`) and regular file (`files`)
/// below and including `root`, links left alone and not followed. A
/// directory is made writable before it is entered and set last. Only for
/// the staging directory, which is private and which nothing runs from.
fn set_tree_modes(root: &Path, dirs: u32, files: u32) -> std::io::Result<()> {
    set_mode(root, 0o755)?;
    for item in std::fs::read_dir(root)? {
        let item = item?;
        let kind = item.file_type()?;
        if kind.is_dir() {
            set_tree_modes(&item.path(), dirs, files)?;
        } else if kind.is_file() {
            set_mode(&item.path(), files)?;
        }
    }
    set_mode(root, dirs)
}

/// `dir` made absolute (`.` and `..` resolved as written, links not), so
/// that the staging directory lands beside it, never inside it; refused if
/// it names no directory of its own (`/`, `..`) or overlaps the handler's
/// tree (an export inside the handler would copy itself into the next one;
/// a handler inside the export would be deleted with it).
fn output_path(dir: &Path, handler: &Path) -> Result<PathBuf, ExportError> {
    let absolute = std::path::absolute(dir).map_err(io_error(dir))?;
    let mut clean = PathBuf::new();
    for part in absolute.components() {
        match part {
            std::path::Component::ParentDir => {
                clean.pop();
            }
            std::path::Component::CurDir => {}
            other => clean.push(other),
        }
    }
    if clean.file_name().is_none() {
        return Err(ExportError::OutputInUse { path: clean });
    }
    let handler = std::fs::canonicalize(handler).unwrap_or_else(|_| handler.to_path_buf());
    // Links resolved in the longest part that exists; the rest is created.
    let mut real = clean.clone();
    let mut rest = Vec::new();
    while std::fs::canonicalize(&real).is_err() {
        match (real.file_name(), real.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name.to_owned());
                real = parent.to_path_buf();
            }
            _ => break,
        }
    }
    let mut real = std::fs::canonicalize(&real).unwrap_or(real);
    real.extend(rest.iter().rev());
    let real = real.as_path();
    // A one-file handler grants only that file: an export beside it is fine.
    let inside_handler = handler.is_dir() && real.starts_with(&handler);
    if inside_handler || handler.starts_with(real) {
        return Err(ExportError::OutputOverlaps {
            path: clean,
            handler: handler.to_path_buf(),
        });
    }
    Ok(clean)
}

/// `dir` may be written: it does not exist, is an empty directory, or is an
/// earlier export (a real directory with the marker in it).
fn check_output(dir: &Path) -> Result<(), ExportError> {
    let metadata = match std::fs::symlink_metadata(dir) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ExportError::Io {
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    let in_use = || ExportError::OutputInUse {
        path: dir.to_path_buf(),
    };
    if !metadata.is_dir() {
        return Err(in_use());
    }
    let empty = std::fs::read_dir(dir)
        .map_err(io_error(dir))?
        .next()
        .is_none();
    let marked = std::fs::symlink_metadata(dir.join(MARKER)).is_ok_and(|m| m.is_file());
    if empty || marked {
        Ok(())
    } else {
        Err(in_use())
    }
}

/// Quote `text` for a POSIX shell (single quotes), unless it needs none.
pub(crate) fn shell_quote(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+".contains(c));
    if plain {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting_is_safe() {
        assert_eq!(shell_quote("files/app::/app"), "files/app::/app");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's $HOME"), r"'it'\''s $HOME'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn only_empty_or_marked_directories_are_replaced() {
        let root = tempfile::tempdir().unwrap();
        let fresh = root.path().join("new");
        assert!(check_output(&fresh).is_ok());
        std::fs::create_dir(&fresh).unwrap();
        assert!(check_output(&fresh).is_ok(), "empty");
        std::fs::write(fresh.join("notes.txt"), "mine").unwrap();
        assert!(matches!(
            check_output(&fresh),
            Err(ExportError::OutputInUse { .. })
        ));
        std::fs::write(fresh.join(MARKER), "spin\n").unwrap();
        assert!(check_output(&fresh).is_ok(), "an earlier export");
        let file = root.path().join("file");
        std::fs::write(&file, "x").unwrap();
        assert!(check_output(&file).is_err());
        let link = root.path().join("link");
        std::os::unix::fs::symlink(&fresh, &link).unwrap();
        assert!(check_output(&link).is_err(), "a link is not followed");
    }
}
