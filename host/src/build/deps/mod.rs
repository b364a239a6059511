//! A handler's dependencies: the trees put on the guest's `sys.path` besides
//! the handler's own files.
//!
//! - `vendor/` inside a handler directory is part of the handler's own tree
//!   (mounted with it); the guest puts it on `sys.path` right after the
//!   handler and processes its `.pth` files.
//! - `[project] dependencies` in the handler's `pyproject.toml` are installed
//!   as pure-Python wheels into a layer in the cache, keyed by the exact
//!   requirement list, so handlers with identical lists share one install.
//! - `--venv` adds a virtualenv's site-packages and the directories its
//!   `.pth` files name (editable installs).
//!
//! Each layer is copied into the handler's image and mounted read-only at
//! `/2`, `/3`, ... in this order, after the standard library, the framework
//! (`/0`) and the handler (`/1`): as in ordinary Python, a package can never
//! shadow the standard library, and the handler's own modules come first.
//! Every tree is checked for native extension modules, which cannot run in
//! a WebAssembly CPython, so that they fail the build, not a request.

pub(crate) mod install;
pub(crate) mod native;
pub(crate) mod pyproject;
mod sdist;
pub(crate) mod venv;

use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::build::LoadEvent;
use crate::build::cache::Cache;
use crate::build::stage::{self, HandlerSource, Snapshot, Tree};
use crate::build::worker::BuildIsolation;
use crate::error::LoadError;
use crate::limits::BuildLimits;

/// The file that declares dependencies, at the top of a handler directory.
pub const PYPROJECT: &str = "pyproject.toml";

/// One tree on the guest's `sys.path` besides the handler.
#[derive(Debug)]
pub struct Layer {
    /// Where it came from: the pyproject.toml, site-packages or `.pth` directory.
    pub origin: PathBuf,
    pub contents: LayerContents,
}

#[derive(Debug)]
pub enum LayerContents {
    /// Files read from the user's disk (they may change between loads, so
    /// their contents are part of the handler's cache key).
    Files(Snapshot),
    /// Declared dependencies, installed into `dir` in the cache. A layer is
    /// immutable once published, so its key stands for its contents.
    Installed {
        key: String,
        dir: PathBuf,
        requirements: Vec<String>,
    },
}

/// Where an installed layer keeps its packages, inside its cache entry.
pub(crate) const SITE: &str = "site-packages";
/// The record of what an installed layer holds.
const LAYER_RECORD: &str = "layer.json";

#[derive(Serialize)]
struct LayerRecord<'a> {
    installer: String,
    python_version: &'a str,
    requirements: &'a [String],
    installed: Vec<String>,
    /// Wheels built from source distributions inside the sandbox.
    built_from_source: Vec<String>,
}

/// The layers of `source`, after checking the handler's own tree
/// (`snapshot`) for native modules. Declared dependencies are only keyed
/// here: [`install_missing`] installs them when an image has to be built,
/// so loading an image that is already built never runs an installer.
pub(crate) fn layers(
    source: &HandlerSource,
    snapshot: &Snapshot,
    venv: Option<&Path>,
    cache: &Cache,
    on_event: &dyn Fn(LoadEvent<'_>),
) -> Result<Vec<Layer>, LoadError> {
    let vendor_root = format!("{}/", crate::contract::VENDOR_DIR);
    check_native(snapshot, &["", &vendor_root], &source.display_root)?;
    let mut layers = Vec::new();
    if !source.is_file
        && let Some(file) = snapshot.files.iter().find(|f| f.relative == PYPROJECT)
    {
        let path = source.path.join(PYPROJECT);
        let requirements =
            pyproject::dependencies(&path, &String::from_utf8_lossy(&file.contents))?;
        if !requirements.is_empty() {
            let key = crate::build::cache::layer_key(&requirements);
            layers.push(Layer {
                origin: path,
                contents: LayerContents::Installed {
                    dir: cache.layer_dir(&key),
                    key,
                    requirements,
                },
            });
        }
    }
    if let Some(venv) = venv {
        for granted in venv::read(venv)? {
            for (path, reason) in &granted.snapshot.skipped {
                on_event(LoadEvent::Skipped { path, reason });
            }
            check_native(&granted.snapshot, &[""], &granted.path)?;
            on_event(LoadEvent::Granting {
                path: &granted.path,
            });
            layers.push(Layer {
                origin: granted.path,
                contents: LayerContents::Files(granted.snapshot),
            });
        }
    }
    Ok(layers)
}

/// Refuse a tree holding an extension module built for the host.
fn check_native(snapshot: &Snapshot, roots: &[&str], origin: &Path) -> Result<(), LoadError> {
    match native::find(snapshot, roots).into_iter().next() {
        None => Ok(()),
        Some(found) => Err(LoadError::NativeExtension {
            path: origin.join(&found.relative),
            package: found.package,
            module: found.module,
        }),
    }
}

/// Install every declared-dependency layer that is not in the cache yet.
/// Each step of an install (a pip run, a source build) gets `timeout`.
pub(crate) fn install_missing(
    layers: &[Layer],
    cache: &Cache,
    isolation: &BuildIsolation,
    limits: &BuildLimits,
    on_event: &dyn Fn(LoadEvent<'_>),
) -> Result<(), LoadError> {
    for layer in layers {
        if let LayerContents::Installed {
            dir, requirements, ..
        } = &layer.contents
            && !dir.join(LAYER_RECORD).is_file()
        {
            install_layer(
                cache,
                isolation,
                &layer.origin,
                requirements,
                dir,
                limits,
                on_event,
            )?;
        }
    }
    Ok(())
}

/// Install `requirements` and publish them as the layer `dir`.
fn install_layer(
    cache: &Cache,
    isolation: &BuildIsolation,
    pyproject: &Path,
    requirements: &[String],
    dir: &Path,
    limits: &BuildLimits,
    on_event: &dyn Fn(LoadEvent<'_>),
) -> Result<(), LoadError> {
    let installer = format!("pycage's pip {}", install::PIP_VERSION);
    on_event(LoadEvent::InstallingDependencies {
        pyproject,
        installer: &installer,
        requirements,
    });
    let scratch = cache.scratch_for(dir)?;
    let site = scratch.path().join(SITE);
    fs::create_dir(&site).map_err(|e| cache.error(&site, e))?;
    // Beside the layer, not in it: removed before it is published.
    let work = scratch.path().join("install-work");
    fs::create_dir(&work).map_err(|e| cache.error(&work, e))?;
    let context = install::Context {
        cache,
        isolation,
        limits,
        work: &work,
    };
    let built_from_source = install::install(&context, pyproject, requirements, &site, &|what| {
        on_event(LoadEvent::BuildingFromSource { requirement: what })
    })?;
    crate::host_fs::untrusted::remove_tree(&work).map_err(|e| cache.error(&work, e))?;
    // Bounded like a handler's own tree; errors name the pyproject.toml,
    // since the scratch directory is gone by the time anyone reads them.
    let snapshot = stage::snapshot_tree(&site, &Tree::INSTALLED).map_err(|e| match e {
        LoadError::TooLarge { limit, .. } => LoadError::TooLarge {
            path: pyproject.to_path_buf(),
            limit,
        },
        other => other,
    })?;
    // A wheel tagged pure can still carry a native module.
    if let Some(found) = native::find(&snapshot, &[""]).into_iter().next() {
        return Err(LoadError::NativeExtension {
            path: pyproject.to_path_buf(),
            package: found.package,
            module: found.module,
        });
    }
    let record = LayerRecord {
        installer,
        python_version: crate::contract::GUEST_PYTHON_VERSION,
        requirements,
        installed: install::installed(&site),
        built_from_source,
    };
    let record_path = scratch.path().join(LAYER_RECORD);
    fs::write(
        &record_path,
        serde_json::to_vec_pretty(&record).expect("record serialises"),
    )
    .map_err(|e| cache.error(&record_path, e))?;
    // pip wrote with the host's umask: private before it is published.
    crate::host_fs::private::restrict_tree(scratch.path()).map_err(|e| cache.error(dir, e))?;
    cache.publish(scratch.path(), dir)
}
