//! Turning a handler into a cached, compiled sandbox image.
//!
//! The pipeline ([`ensure_built`]): stage the handler's files (read once,
//! without following links), key them with their dependency layers, and
//! load the sealed cache entry of that key if there is one. On a miss:
//! install declared dependencies, export the standard library (once per
//! toolchain), lay the inputs out for componentize-py, and hand the build
//! to a worker process under hard limits (`worker`), which imports the
//! handler, snapshots it, flattens and compiles the result (`job`). The
//! host then assembles the entry from what it staged plus the bytecode the
//! guest compiled (`entry`), seals and publishes it.

pub(crate) mod cache;
mod componentize;
pub(crate) mod deps;
mod entry;
pub(crate) mod export;
mod flatten;
mod immortal;
pub(crate) mod job;
mod report;
pub(crate) mod stage;
mod stdlib;
pub(crate) mod supervise;
pub(crate) mod worker;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use wasmtime::Engine;

use crate::contract::{self, framework, mounts, wit};
use crate::error::LoadError;
use crate::guest_text;
use cache::Cache;
use deps::{Layer, LayerContents};
pub(crate) use entry::Built;
use job::{Job, JobKind, Outcome};
use stage::{HandlerSource, Snapshot, Tree};
use worker::WorkerError;
pub use worker::{BuildIsolation, BuildLimits, WORKER_ARG, worker_main};

/// Progress and diagnostics while loading; the CLI prints them, an embedder
/// may log or ignore them. Paths and texts in them may come from the
/// tenant (file names) or the guest (build output): escape them before
/// showing them (`pycage::guest_text`).
#[derive(Debug)]
pub enum LoadEvent<'a> {
    /// A file or directory entry that was not copied into the image.
    Skipped { path: &'a Path, reason: &'a str },
    /// A one-time export of the standard library is starting.
    PreparingStdlib,
    /// Dependencies declared in a pyproject.toml are being installed (cache miss).
    InstallingDependencies {
        pyproject: &'a Path,
        installer: &'a str,
        requirements: &'a [String],
    },
    /// A requirement with no pure-Python wheel is being built from its
    /// source distribution, inside the sandbox.
    BuildingFromSource { requirement: &'a str },
    /// A virtualenv directory is copied in and granted read-only.
    Granting { path: &'a Path },
    /// The handler is being built (cache miss).
    Building { source: &'a Path },
    /// Output the handler printed while being imported at build time.
    BuildOutput { text: &'a str, truncated: bool },
    /// The build finished.
    Built { elapsed: Duration },
    /// The handler's files are exactly as when it was last loaded (same
    /// stamps): its cached image is used without reading them again.
    Unchanged { source: &'a Path },
}

/// How builds run: shared by every load of one runtime.
#[derive(Debug, Clone)]
pub(crate) struct BuildSettings {
    pub cache: Cache,
    pub isolation: BuildIsolation,
    pub limits: BuildLimits,
    /// The largest component worth compiling (see [`Job`]).
    pub max_component_bytes: u64,
    /// Record what each handler read looked like (`cache::index`), for
    /// [`ensure_indexed`]; see `RuntimeConfig::trust_file_stamps`.
    pub index_stamps: bool,
}

/// What a build reads besides the handler's own files: the stdlib export.
pub(crate) struct Ready {
    pub built: Built,
    pub stdlib: OwnedFd,
}

/// Bring `source` into the cache (building it on a miss) and load it.
pub(crate) fn ensure_built(
    engine: &Engine,
    settings: &BuildSettings,
    source: &HandlerSource,
    venv: Option<&Path>,
    on_event: &dyn Fn(LoadEvent<'_>),
) -> Result<Ready, LoadError> {
    let cache = &settings.cache;
    let snapshot = source.snapshot();
    let layers = staged_layers(settings, source, venv, on_event)?;
    let key = cache::handler_key(&source.entry_spec(), snapshot, &layers);
    if let Some(built) = entry::load(engine, cache, &key)? {
        let stdlib = stdlib::ensure(cache, &settings.isolation, &settings.limits, on_event)?;
        remember(settings, source, venv, &layers, &key);
        return Ok(Ready { built, stdlib });
    }

    let Begun {
        stdlib,
        started,
        deadline,
    } = begin_build(settings, source, &layers, on_event)?;
    let dir = cache.handler_dir(&key);
    let scratch = cache.scratch_for(&dir)?;
    let installed = installed_layers(&layers)?;
    let inputs = write_inputs(scratch.path(), source, snapshot, &layers, &installed, "")?;
    let out = scratch.path().join("out");
    private_dir(cache, &out)?;
    let job = Job {
        kind: JobKind::Handler,
        cache_root: cache.root().to_path_buf(),
        wit_dir: scratch.path().join("wit"),
        world: crate::contract::wit::WORLD.into(),
        python_path: inputs.python_path.clone(),
        app_module: contract::GLUE_MODULE.into(),
        report_dir: inputs.python_path[0].clone(),
        out_dir: out.clone(),
        max_component_bytes: settings.max_component_bytes,
    };
    let facts = run_job(&job, settings, source, deadline, scratch.path(), on_event)?;
    for warning in &facts.warnings {
        tracing::warn!(handler = %source.path.display(), "{warning}");
    }
    let entry_dir = scratch.path().join("entry");
    let assembled = entry::Inputs {
        snapshot,
        layers: inputs.layer_files,
        mounts: inputs.mounts,
    };
    entry::assemble(
        cache,
        &key,
        &entry_dir,
        &assembled,
        &out,
        &source.entry_module,
        &facts,
    )?;
    cache.publish(&entry_dir, &dir)?;
    drop(scratch);
    on_event(LoadEvent::Built {
        elapsed: started.elapsed(),
    });
    let mut built = entry::load(engine, cache, &key)?.ok_or_else(|| LoadError::Build {
        path: source.path.clone(),
        detail: "the entry just built did not load".into(),
    })?;
    built.cache_hit = false;
    remember(settings, source, venv, &layers, &key);
    Ok(Ready { built, stdlib })
}

/// The entry of an unchanged handler, found from its files' stamps alone
/// (`source` from [`HandlerSource::stamp`], see `cache::index`); `None`
/// if stamps are not trusted (`BuildSettings::index_stamps`) or the
/// handler is not known as it is now: then it is read and built as usual.
/// A virtualenv's trees are stamped and checked the same way.
pub(crate) fn ensure_indexed(
    engine: &Engine,
    settings: &BuildSettings,
    source: &HandlerSource,
    venv: Option<&Path>,
    on_event: &dyn Fn(LoadEvent<'_>),
) -> Result<Option<Ready>, LoadError> {
    let cache = &settings.cache;
    if !settings.index_stamps {
        return Ok(None);
    }
    let Some((key, venv_trees)) = cache.indexed(source, venv) else {
        return Ok(None);
    };
    let Some(built) = entry::load(engine, cache, &key)? else {
        return Ok(None);
    };
    for (path, reason) in &source.snapshot().skipped {
        on_event(LoadEvent::Skipped { path, reason });
    }
    // A virtualenv is announced as granted on every load, as when read.
    for tree in &venv_trees {
        for (path, reason) in &tree.snapshot.skipped {
            on_event(LoadEvent::Skipped { path, reason });
        }
        on_event(LoadEvent::Granting { path: &tree.path });
    }
    on_event(LoadEvent::Unchanged {
        source: &source.path,
    });
    let stdlib = stdlib::ensure(cache, &settings.isolation, &settings.limits, on_event)?;
    Ok(Some(Ready { built, stdlib }))
}

/// Index `source` (just read) as `key`, unless a file changed too recently
/// for its stamp to be trusted.
fn remember(
    settings: &BuildSettings,
    source: &HandlerSource,
    venv: Option<&Path>,
    layers: &[Layer],
    key: &str,
) {
    if !settings.index_stamps {
        return;
    }
    // The virtualenv's trees are the layers read from disk, site-packages first.
    let trees: Vec<_> = layers
        .iter()
        .filter_map(|layer| match &layer.contents {
            LayerContents::Files(snapshot) => Some((layer.origin.as_path(), snapshot)),
            LayerContents::Installed { .. } => None,
        })
        .collect();
    if !cache::index::racy(source, &trees, source.read_at) {
        settings
            .cache
            .index(source, venv.map(|venv| (venv, &trees[..])), key);
    }
}

/// What a handler was staged with is announced (files left out), and its
/// dependency layers found: installed ones (`deps::install_missing`
/// installs them) and virtualenv trees.
fn staged_layers(
    settings: &BuildSettings,
    source: &HandlerSource,
    venv: Option<&Path>,
    on_event: &dyn Fn(LoadEvent<'_>),
) -> Result<Vec<Layer>, LoadError> {
    let snapshot = source.snapshot();
    for (path, reason) in &snapshot.skipped {
        on_event(LoadEvent::Skipped { path, reason });
    }
    deps::layers(source, snapshot, venv, &settings.cache, on_event)
}

/// A cache-miss build, begun: the standard library's export, and when the
/// build's own time started and runs out.
struct Begun {
    stdlib: OwnedFd,
    started: Instant,
    deadline: Instant,
}

/// Install the missing dependency layers, make sure the standard library
/// is exported, and announce the build. Installing (source distributions
/// included) has a timeout of its own; the build then gets the whole
/// budget, from here.
fn begin_build(
    settings: &BuildSettings,
    source: &HandlerSource,
    layers: &[Layer],
    on_event: &dyn Fn(LoadEvent<'_>),
) -> Result<Begun, LoadError> {
    let cache = &settings.cache;
    deps::install_missing(
        layers,
        cache,
        &settings.isolation,
        &settings.limits,
        on_event,
    )?;
    let stdlib = stdlib::ensure(cache, &settings.isolation, &settings.limits, on_event)?;
    on_event(LoadEvent::Building {
        source: &source.path,
    });
    let started = Instant::now();
    Ok(Begun {
        stdlib,
        started,
        deadline: started + settings.limits.timeout,
    })
}

/// Run a handler's build `job` in a worker with what is left of the
/// build's time until `deadline`; the handler's output is shown, a refusal
/// or a failure becomes the load error that names it.
fn run_job(
    job: &Job,
    settings: &BuildSettings,
    source: &HandlerSource,
    deadline: Instant,
    scratch: &Path,
    on_event: &dyn Fn(LoadEvent<'_>),
) -> Result<job::BuiltFacts, LoadError> {
    let limits = BuildLimits {
        timeout: deadline.saturating_duration_since(Instant::now()),
        ..settings.limits
    };
    let facts = match worker::execute(job, &settings.isolation, &limits, scratch) {
        Ok(Outcome::Built(facts)) => facts,
        Ok(Outcome::Refused(report)) => {
            show_output(&report.output, report.output_truncated, on_event);
            return Err(memory_hint(report.into_error(source), &settings.limits));
        }
        Ok(Outcome::Failed(detail)) => {
            return Err(LoadError::Build {
                path: source.path.clone(),
                detail: guest_text::one_line(&detail, 16 << 10),
            });
        }
        Err(error) => return Err(worker_error(error, source, &settings.limits)),
    };
    show_output(&facts.output, facts.output_truncated, on_event);
    Ok(facts)
}

fn show_output(text: &str, truncated: bool, on_event: &dyn Fn(LoadEvent<'_>)) {
    if !text.is_empty() || truncated {
        on_event(LoadEvent::BuildOutput { text, truncated });
    }
}

/// A `MemoryError` at import time is most likely the build's memory limit.
fn memory_hint(error: LoadError, limits: &BuildLimits) -> LoadError {
    match error {
        LoadError::Import {
            location,
            message,
            traceback,
        } if message.starts_with("MemoryError") => LoadError::Import {
            location,
            message: format!(
                "{message} (importing the handler ran into the build's memory limit of {} MiB)",
                limits.memory_bytes >> 20
            ),
            traceback,
        },
        other => other,
    }
}

fn worker_error(error: WorkerError, source: &HandlerSource, limits: &BuildLimits) -> LoadError {
    let path = source.path.clone();
    match error {
        WorkerError::Timeout(_) => LoadError::BuildTimeout {
            path,
            timeout: limits.timeout,
        },
        WorkerError::Memory(limit) => LoadError::BuildLimit {
            path,
            what: format!("exceeded its memory limit of {} MiB", limit >> 20),
        },
        WorkerError::Disk(limit) => LoadError::BuildLimit {
            path,
            what: format!("wrote more than its disk limit ({limit})"),
        },
        other => LoadError::Build {
            path,
            detail: other.to_string(),
        },
    }
}

/// The installed layers' files, read from the cache.
fn installed_layers(layers: &[Layer]) -> Result<Vec<Option<Snapshot>>, LoadError> {
    layers
        .iter()
        .map(|layer| match &layer.contents {
            LayerContents::Files(_) => Ok(None),
            LayerContents::Installed { dir, .. } => {
                crate::build::stage::snapshot_tree(&dir.join(deps::SITE), &Tree::INSTALLED)
                    .map(Some)
            }
        })
        .collect()
}

/// The build's inputs, laid out for componentize-py.
struct Laid<'a> {
    /// Mounted at /0 (the framework), /1 (the handler), /2... (layers).
    python_path: Vec<PathBuf>,
    mounts: PathBuf,
    layer_files: Vec<&'a Snapshot>,
}

fn private_dir(cache: &Cache, dir: &Path) -> Result<(), LoadError> {
    crate::host_fs::private::create_dir_all(dir)
        .map(drop)
        .map_err(|e| cache.refuse(dir, e))
}

/// Write the framework (its build configuration ending with
/// `extra_config`), the WIT, the handler's files and its layers into the
/// build directory, fresh from what was staged.
fn write_inputs<'a>(
    scratch: &Path,
    source: &HandlerSource,
    snapshot: &'a Snapshot,
    layers: &'a [Layer],
    installed: &'a [Option<Snapshot>],
    extra_config: &str,
) -> Result<Laid<'a>, LoadError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| LoadError::Io { path, source }
    };
    let mounts = scratch.join("mounts");
    let framework_dir = mounts.join("framework");
    let wit_dir = scratch.join("wit");
    let app = entry::mount_dir(&mounts, None);
    let layer_mounts: Vec<String> = (0..layers.len()).map(mounts::layer).collect();
    framework::write_framework(
        &framework_dir,
        &source.entry_module,
        source.app_attribute.as_deref(),
        &layer_mounts,
        extra_config,
    )
    .map_err(io(&framework_dir))?;
    wit::write_to(&wit_dir).map_err(io(&wit_dir))?;
    snapshot.write_to(&app).map_err(io(&app))?;
    std::fs::create_dir_all(&app).map_err(io(&app))?;
    // The framework comes first (mounted at /0) so a handler file cannot
    // shadow it; the handler is /1, then the layers (see contract::mounts).
    let mut python_path = vec![framework_dir, app];
    let mut layer_files = Vec::new();
    for (index, (layer, installed)) in layers.iter().zip(installed).enumerate() {
        let files = match (&layer.contents, installed) {
            (LayerContents::Files(files), _) => files,
            (LayerContents::Installed { .. }, Some(files)) => files,
            (LayerContents::Installed { .. }, None) => unreachable!("read above"),
        };
        let dir = entry::mount_dir(&mounts, Some(index));
        files.write_to(&dir).map_err(io(&dir))?;
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        python_path.push(dir);
        layer_files.push(files);
    }
    Ok(Laid {
        python_path,
        mounts,
        layer_files,
    })
}
