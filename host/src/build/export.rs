//! The build behind `pycage export`: the same handler, framework and
//! dependency layers as an image, imported by componentize-py under a
//! second glue (`pycage_http_guest`) into a plain component that exports
//! `wasi:http/incoming-handler@0.2.0`, and the files it reads at request
//! time laid out next to it:
//!
//! | in the export | guest path | what |
//! | --- | --- | --- |
//! | `files/python` | `/python` | the standard library, with bytecode |
//! | `files/app` | `/1` and `/app` | the handler's files, with the bytecode its build compiled |
//! | `files/2`, `files/3`, ... | `/2`, `/3`, ... | dependency layers, with bytecode |
//!
//! None of pycage's image work (flattening, the memory image, immortal
//! objects, compilation) is applied: other hosts load the component as
//! componentize-py made it. Like an image build, the guest runs in a worker
//! under the build's limits, and nothing it wrote is taken but the
//! component (bounded) and the bytecode of the staged `.py` files.

use std::path::{Path, PathBuf};

use super::job::{COMPONENT, Job, JobKind};
use super::stage::HandlerSource;
use super::{BuildSettings, LoadEvent, entry};
use crate::contract::{self, mounts, wit};
use crate::error::LoadError;
use crate::host_fs::untrusted;

/// The component's file name in an export.
pub(crate) const COMPONENT_FILE: &str = "handler.wasm";
/// The directory of the files it mounts.
pub(crate) const FILES_DIR: &str = "files";
/// Under [`FILES_DIR`]: the standard library and the handler's tree.
pub(crate) const STDLIB_DIR: &str = "python";
pub(crate) const APP_DIR: &str = "app";
/// The most bytes of standard library copied (it is ~30 MiB).
const MAX_STDLIB_BYTES: u64 = 512 << 20;

/// One directory of the export and where the guest expects it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Relative to the export directory, e.g. `files/app`.
    pub source: String,
    /// The guest path, e.g. `/app`.
    pub destination: String,
}

/// What an export build wrote into its directory.
#[derive(Debug, Clone)]
pub(crate) struct ExportedComponent {
    /// The directories to mount, in order.
    pub mounts: Vec<Mount>,
}

/// Build the export of `source` into `dest` (a fresh directory); `imports`
/// are the interfaces its world imports besides WASI.
pub(crate) fn build(
    settings: &BuildSettings,
    source: &HandlerSource,
    venv: Option<&Path>,
    imports: &[&str],
    limits: &crate::limits::Limits,
    dest: &Path,
    on_event: &dyn Fn(LoadEvent<'_>),
) -> Result<ExportedComponent, LoadError> {
    let cache = &settings.cache;
    let snapshot = source.snapshot();
    let layers = super::staged_layers(settings, source, venv, on_event)?;
    // The standard library is exported once per toolchain, in the cache;
    // it is copied from there below.
    let super::Begun {
        started, deadline, ..
    } = super::begin_build(settings, source, &layers, on_event)?;
    let key = super::cache::handler_key(&source.entry_spec(), snapshot, &layers);
    let scratch = cache.scratch_for(&cache.handler_dir(&format!("export-{key}")))?;
    let installed = super::installed_layers(&layers)?;
    // The request and response size limits the glue applies (pycage's host
    // applies them around the guest; another host does not know them), and
    // how wasmtime's key-value interface pages and counts (`pycage.kv`).
    let kv_draft = imports.contains(&"wasi:keyvalue/store@0.2.0-draft");
    let extra_config = format!(
        "MAX_REQUEST_BODY = {}\nMAX_RESPONSE_BODY = {}\nOPTIONAL_CAPABILITIES = True\n\
         KV_DRAFT = {}\n",
        limits.max_request_body,
        limits.max_response_body,
        if kv_draft { "True" } else { "False" },
    );
    let inputs = super::write_inputs(
        scratch.path(),
        source,
        snapshot,
        &layers,
        &installed,
        &extra_config,
    )?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| LoadError::Io { path, source }
    };
    let wit_dir = scratch.path().join("wit-export");
    wit::write_export_to(&wit_dir, imports).map_err(io(&wit_dir))?;
    let out = scratch.path().join("out");
    super::private_dir(cache, &out)?;
    let job = Job {
        kind: JobKind::Export,
        cache_root: cache.root().to_path_buf(),
        wit_dir,
        world: wit::EXPORT_WORLD.into(),
        python_path: inputs.python_path.clone(),
        app_module: contract::HTTP_GLUE_MODULE.into(),
        report_dir: inputs.python_path[0].clone(),
        out_dir: out.clone(),
        max_component_bytes: settings.max_component_bytes,
    };
    super::run_job(&job, settings, source, deadline, scratch.path(), on_event)?;

    // The component: written by the worker from what the guest made, so
    // read back without following links and bounded.
    let component = out.join(COMPONENT);
    let (fd, stat) = untrusted::open_named(&component).map_err(super::stage::load_error)?;
    let bytes = untrusted::read_to_end(fd, &stat, settings.max_component_bytes, &component)
        .map_err(super::stage::load_error)?;
    std::fs::create_dir_all(dest).map_err(io(dest))?;
    std::fs::write(dest.join(COMPONENT_FILE), &bytes).map_err(io(dest))?;
    drop(bytes);

    let files = dest.join(FILES_DIR);
    let mut budget = super::stage::MAX_TOTAL_BYTES;
    let app = files.join(APP_DIR);
    entry::write_tree(snapshot, &app).map_err(io(&app))?;
    let seen = entry::mount_dir(&inputs.mounts, None);
    entry::copy_bytecode(snapshot, &seen, &app, &mut budget).map_err(bytecode_error(dest))?;
    let mut layer_mounts = Vec::new();
    for (index, files_of_layer) in inputs.layer_files.iter().enumerate() {
        let guest = mounts::layer(index);
        let name = guest.trim_start_matches('/').to_owned();
        let dir = files.join(&name);
        entry::write_tree(files_of_layer, &dir).map_err(io(&dir))?;
        let seen = entry::mount_dir(&inputs.mounts, Some(index));
        entry::copy_bytecode(files_of_layer, &seen, &dir, &mut budget)
            .map_err(bytecode_error(dest))?;
        layer_mounts.push(Mount {
            source: format!("{FILES_DIR}/{name}"),
            destination: guest,
        });
    }
    drop(scratch);
    let stdlib_from = cache.stdlib_dir().join("python");
    let stdlib_to = files.join(STDLIB_DIR);
    let mut budget_stdlib = MAX_STDLIB_BYTES;
    copy_tree(&stdlib_from, &stdlib_to, &mut budget_stdlib).map_err(io(&stdlib_from))?;

    let app_source = format!("{FILES_DIR}/{APP_DIR}");
    let mut all = vec![
        Mount {
            source: format!("{FILES_DIR}/{STDLIB_DIR}"),
            destination: mounts::STDLIB.into(),
        },
        Mount {
            source: app_source.clone(),
            destination: mounts::IMPORT.into(),
        },
        Mount {
            source: app_source,
            destination: mounts::APP.into(),
        },
    ];
    all.extend(layer_mounts);
    on_event(LoadEvent::Built {
        elapsed: started.elapsed(),
    });
    Ok(ExportedComponent { mounts: all })
}

fn bytecode_error(dest: &Path) -> impl Fn(untrusted::ReadError) -> LoadError + '_ {
    move |error| LoadError::Build {
        path: dest.to_path_buf(),
        detail: format!("copying the build's bytecode: {error}"),
    }
}

/// Copy the directory tree `from` (pycage's own standard-library export in
/// the cache) to `to`: regular files and directories only, links and
/// anything else left out, at most `budget` bytes.
fn copy_tree(from: &Path, to: &Path, budget: &mut u64) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    let mut pending: Vec<PathBuf> = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        for item in std::fs::read_dir(from.join(&relative))? {
            let item = item?;
            let name = relative.join(item.file_name());
            // `file_type` does not follow links.
            let kind = item.file_type()?;
            if kind.is_dir() {
                std::fs::create_dir_all(to.join(&name))?;
                pending.push(name);
            } else if kind.is_file() {
                let size = item.metadata()?.len();
                *budget = budget.checked_sub(size).ok_or_else(|| {
                    std::io::Error::other("the standard library is larger than expected")
                })?;
                std::fs::copy(from.join(&name), to.join(&name))?;
            }
        }
    }
    Ok(())
}
