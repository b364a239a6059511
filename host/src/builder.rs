//! Turning a handler into a cached, compiled sandbox image.
//!
//! A cache miss runs componentize-py (which imports the handler inside a
//! pre-initialised CPython and snapshots it), then Cranelift-compiles the
//! component once and stores the native artifact. A cache hit does neither.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use wasmtime::Engine;
use wasmtime::component::Component;

use crate::cache::{self, Cache};
use crate::code_cache::{CODE_CACHE_LIMIT, CodeCache};
use crate::deps::{self, Layer};
use crate::error::LoadError;
use crate::flatten::{self, FlattenError};
use crate::guest;
use crate::immortal;
use crate::memory::MemoryImage;
use crate::stage::{HandlerSource, Snapshot};
use crate::wit;

/// One row of the route table, as declared with `@route`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteInfo {
    pub pattern: String,
    pub methods: Vec<String>,
    pub handler: String,
}

/// What is recorded next to a built image.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Meta {
    pub pycage_version: String,
    pub wit_version: String,
    pub entry_module: String,
    /// How many dependency layers are mounted (at /2, /3, ...).
    #[serde(default)]
    pub layers: usize,
    /// How many core modules `flatten` merged into one (0: kept apart).
    #[serde(default)]
    pub merged_modules: usize,
    /// Whether the memory's initial contents are in `memory.img` instead
    /// of the component's data segments (see `crate::memory`).
    #[serde(default)]
    pub memory_image: bool,
    /// How many of the snapshot's Python objects were made immortal in the
    /// memory image (see `crate::immortal`).
    #[serde(default)]
    pub immortal_objects: usize,
}

/// Progress and diagnostics while loading; the CLI prints them, an embedder
/// may log or ignore them.
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
    /// A virtualenv directory is copied in and granted read-only.
    Granting { path: &'a Path },
    /// The handler is being built (cache miss).
    Building { source: &'a Path },
    /// Output the handler printed while being imported at build time.
    BuildOutput { text: &'a str, truncated: bool },
    /// The build finished.
    Built { elapsed: Duration },
}

/// A built image in the cache.
pub(crate) struct Built {
    pub dir: PathBuf,
    pub meta: Meta,
    pub component: Component,
    /// The memory's initial contents (empty when they are data segments).
    pub memory_image: MemoryImage,
    pub cache_hit: bool,
}

impl Built {
    pub(crate) fn app_dir(dir: &Path) -> PathBuf {
        dir.join("app")
    }

    /// The host directories of the dependency layers with their guest mounts.
    pub(crate) fn layer_mounts(&self) -> Vec<(PathBuf, String)> {
        (0..self.meta.layers)
            .map(|index| {
                let mount = Layer::mount(index);
                (layer_dir(&self.dir, &mount), mount)
            })
            .collect()
    }
}

/// Where the copy of the layer mounted at `mount` ("/2") lives in an image.
fn layer_dir(image: &Path, mount: &str) -> PathBuf {
    image.join("layers").join(mount.trim_start_matches('/'))
}

const ARTIFACT: &str = "sandbox.cwasm";
const MEMORY_IMAGE: &str = "memory.img";
const META: &str = "meta.json";

/// Bring `source` into the cache (building it on a miss) and load its component.
pub(crate) fn ensure_built(
    engine: &Engine,
    cache: &Cache,
    source: &HandlerSource,
    venv: Option<&Path>,
    build_timeout: Duration,
    on_event: &dyn Fn(LoadEvent<'_>),
) -> Result<Built, LoadError> {
    let snapshot = source.snapshot()?;
    for (path, reason) in &snapshot.skipped {
        on_event(LoadEvent::Skipped { path, reason });
    }
    let layers = deps::layers(source, &snapshot, venv, cache, on_event)?;
    let key = cache::handler_key(&source.entry_module, &snapshot, &layers);
    let dir = cache.handler_dir(&key);
    if let Some(built) = load_cached(engine, cache, &dir)? {
        return Ok(built);
    }

    deps::install_missing(&layers, cache, build_timeout, on_event)?;
    let stdlib = ensure_stdlib(cache, build_timeout, on_event)?;
    debug_assert!(stdlib.is_dir());
    let started = Instant::now();
    on_event(LoadEvent::Building {
        source: &source.path,
    });
    let scratch = cache.scratch_for(&dir)?;
    let layer_dirs = write_inputs(scratch.path(), &snapshot, &layers)?;
    let meta = build_into(
        engine,
        cache,
        source,
        &layer_dirs,
        scratch.path(),
        build_timeout,
        on_event,
    )?;
    cache.publish(scratch, &dir)?;
    on_event(LoadEvent::Built {
        elapsed: started.elapsed(),
    });
    let component = deserialize(engine, &dir)?;
    let memory_image = open_memory_image(cache, &dir, &meta)?;
    Ok(Built {
        dir,
        meta,
        component,
        memory_image,
        cache_hit: false,
    })
}

fn load_cached(engine: &Engine, cache: &Cache, dir: &Path) -> Result<Option<Built>, LoadError> {
    let meta_path = dir.join(META);
    let Ok(text) = fs::read_to_string(&meta_path) else {
        return Ok(None);
    };
    let meta: Meta = serde_json::from_str(&text).map_err(|e| {
        cache.error(
            &meta_path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        )
    })?;
    let component = deserialize(engine, dir)?;
    let memory_image = open_memory_image(cache, dir, &meta)?;
    Ok(Some(Built {
        dir: dir.to_path_buf(),
        meta,
        component,
        memory_image,
        cache_hit: true,
    }))
}

/// The image `meta` says the build wrote; a missing or unreadable one is an
/// error, never a memory of zeros.
fn open_memory_image(cache: &Cache, dir: &Path, meta: &Meta) -> Result<MemoryImage, LoadError> {
    if !meta.memory_image {
        return Ok(MemoryImage::empty());
    }
    let path = dir.join(MEMORY_IMAGE);
    MemoryImage::open(&path).map_err(|e| cache.error(&path, e))
}

fn deserialize(engine: &Engine, dir: &Path) -> Result<Component, LoadError> {
    let path = dir.join(ARTIFACT);
    // SAFETY: the artifact was produced by `Component::serialize` of this very
    // engine configuration and written by us into the private cache root;
    // wasmtime additionally checks its header against this engine's version
    // and settings before using it.
    let component = unsafe { Component::deserialize_file(engine, &path) }.map_err(|source| {
        LoadError::Compile {
            path: path.clone(),
            source,
        }
    })?;
    check_wit(engine, &component, path)?;
    Ok(component)
}

/// Refuse a component that does not export our WIT interface at our version.
fn check_wit(engine: &Engine, component: &Component, path: PathBuf) -> Result<(), LoadError> {
    wit::check_exports(engine, component).map_err(|found| LoadError::WitVersionMismatch {
        path,
        found,
        expected: format!("{}@{}", wit::WIT_INTERFACE, wit::WIT_VERSION),
    })
}

/// Write the handler's files and copies of its layers into the image being
/// built; returns the layers' directories in mount order.
fn write_inputs(
    scratch: &Path,
    snapshot: &Snapshot,
    layers: &[Layer],
) -> Result<Vec<PathBuf>, LoadError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| LoadError::Io { path, source }
    };
    let app = Built::app_dir(scratch);
    snapshot.write_to(&app).map_err(io(&app))?;
    let mut layer_dirs = Vec::new();
    for (index, layer) in layers.iter().enumerate() {
        let dir = layer_dir(scratch, &Layer::mount(index));
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        layer.write_to(&dir)?;
        layer_dirs.push(dir);
    }
    Ok(layer_dirs)
}

fn build_into(
    engine: &Engine,
    cache: &Cache,
    source: &HandlerSource,
    layer_dirs: &[PathBuf],
    scratch: &Path,
    build_timeout: Duration,
    on_event: &dyn Fn(LoadEvent<'_>),
) -> Result<Meta, LoadError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| cache.error(&path, source)
    };
    let app = Built::app_dir(scratch);
    let framework = scratch.join("framework");
    let wit_dir = scratch.join("wit");
    let wasm = scratch.join("component.wasm");
    let mounts: Vec<String> = (0..layer_dirs.len()).map(Layer::mount).collect();
    guest::write_framework(&framework, &source.entry_module, &mounts).map_err(io(&framework))?;
    fs::create_dir_all(&wit_dir).map_err(io(&wit_dir))?;
    fs::write(wit_dir.join("handler.wit"), wit::WIT_SOURCE).map_err(io(&wit_dir))?;

    // The framework comes first (mounted at /0) so a handler file cannot
    // shadow it; the handler is /1 (see guest::GUEST_IMPORT_DIR), then the
    // layers (see deps::Layer::mount).
    let mut python_path = vec![framework.as_path(), app.as_path()];
    python_path.extend(layer_dirs.iter().map(PathBuf::as_path));
    let phase = Instant::now();
    let generated = componentize(
        &wit_dir,
        &python_path,
        guest::APP_MODULE,
        &wasm,
        build_timeout,
    );
    let report = read_report(&framework.join(guest::BUILD_REPORT));
    if let Some(report) = &report
        && !report.output.is_empty()
    {
        on_event(LoadEvent::BuildOutput {
            text: &report.output,
            truncated: report.output_truncated,
        });
    }
    match (report, generated) {
        (Some(report), _) if !report.ok => return Err(report.into_error(source)),
        (_, Err(BuildFailure::Timeout)) => {
            return Err(LoadError::BuildTimeout {
                path: source.path.clone(),
                timeout: build_timeout,
            });
        }
        (_, Err(BuildFailure::Failed(detail))) => {
            return Err(LoadError::Build {
                path: source.path.clone(),
                detail,
            });
        }
        (None, Ok(())) => {
            return Err(LoadError::Build {
                path: source.path.clone(),
                detail: "the guest wrote no build report".into(),
            });
        }
        (Some(_), Ok(())) => (),
    };
    tracing::debug!(elapsed = ?phase.elapsed(), "componentize-py generated the component");
    let phase = Instant::now();
    CodeCache::new(cache.code_dir()).trim(CODE_CACHE_LIMIT);
    let generated = fs::read(&wasm).map_err(io(&wasm))?;
    let (component, merged_modules, mut memory_image) = compile(engine, &generated, &wasm)?;
    let immortal_objects = match &mut memory_image {
        Some(image) => immortalize(image, &framework.join(guest::SNAPSHOT_OBJECTS)),
        None => 0,
    };
    check_wit(engine, &component, source.path.clone())?;
    let artifact = component.serialize().map_err(|source| LoadError::Compile {
        path: wasm.clone(),
        source,
    })?;
    fs::write(scratch.join(ARTIFACT), artifact).map_err(io(scratch))?;
    if let Some(image) = &memory_image {
        let path = scratch.join(MEMORY_IMAGE);
        MemoryImage::write(&path, image).map_err(io(&path))?;
    }
    tracing::debug!(elapsed = ?phase.elapsed(), merged_modules, "flattened, compiled and serialised the component");
    let meta = Meta {
        pycage_version: env!("CARGO_PKG_VERSION").into(),
        wit_version: wit::WIT_VERSION.into(),
        entry_module: source.entry_module.clone(),
        layers: layer_dirs.len(),
        merged_modules,
        memory_image: memory_image.is_some(),
        immortal_objects,
    };
    let meta_json = serde_json::to_vec_pretty(&meta).expect("meta serialises");
    fs::write(scratch.join(META), meta_json).map_err(io(scratch))?;
    for leftover in [&framework, &wit_dir] {
        fs::remove_dir_all(leftover).map_err(io(leftover))?;
    }
    fs::remove_file(&wasm).map_err(io(&wasm))?;
    Ok(meta)
}

/// Make the objects the guest listed immortal in `image`; returns how many.
/// Fails open: without the listing the image is only slower to reset.
fn immortalize(image: &mut [u8], listing: &Path) -> usize {
    let listing = match fs::read(listing) {
        Ok(listing) => listing,
        Err(error) => {
            tracing::warn!(%error, path = %listing.display(), "no snapshot object listing; objects stay mortal");
            return 0;
        }
    };
    let done = immortal::apply(image, &listing);
    if done.patched == 0 && done.listed > 0 {
        tracing::warn!(
            listed = done.listed,
            "no listed object matched the memory image"
        );
    }
    tracing::debug!(
        listed = done.listed,
        patched = done.patched,
        "made the snapshot's objects immortal"
    );
    done.patched
}

/// What `compile` made: the component, how many modules were merged, and
/// the memory image moved out of its data segments, if it was.
type Compiled = (Component, usize, Option<Vec<u8>>);

/// Compile the generated component, flattened when possible (see
/// `flatten`). Fail open: an unflattened component is slower per request,
/// not wrong, so a flattening bug (an error, a panic, or output wasmtime
/// rejects) costs speed, not the build or a server loading the handler.
fn compile(engine: &Engine, generated: &[u8], path: &Path) -> Result<Compiled, LoadError> {
    let flattened = std::panic::catch_unwind(|| flatten::flatten(generated))
        .unwrap_or_else(|_| Err(FlattenError::Unsupported("the pass panicked".into())));
    match flattened {
        Ok(flat) => match Component::new(engine, &flat.bytes) {
            Ok(component) => return Ok((component, flat.merged_modules, flat.memory_image)),
            Err(error) => tracing::warn!(
                error = %format!("{error:#}"),
                path = %path.display(),
                "wasmtime rejected the flattened component; compiling it unmerged"
            ),
        },
        Err(error) => tracing::warn!(
            %error,
            path = %path.display(),
            "kept the component's core modules apart"
        ),
    }
    let component = Component::new(engine, generated).map_err(|source| LoadError::Compile {
        path: path.to_path_buf(),
        source,
    })?;
    Ok((component, 0, None))
}

/// Export the stdlib with precompiled bytecode, once per toolchain.
fn ensure_stdlib(
    cache: &Cache,
    build_timeout: Duration,
    on_event: &dyn Fn(LoadEvent<'_>),
) -> Result<PathBuf, LoadError> {
    let dir = cache.stdlib_dir();
    if dir.join("python").is_dir() {
        return Ok(dir);
    }
    on_event(LoadEvent::PreparingStdlib);
    let scratch = cache.scratch_for(&dir)?;
    let io = |path: &Path, source| cache.error(path, source);
    let exporter = scratch.path().join("exporter");
    let wit_dir = scratch.path().join("wit");
    let out = scratch.path().join("out");
    for d in [&exporter, &wit_dir, &out] {
        fs::create_dir_all(d).map_err(|e| io(d, e))?;
    }
    fs::write(
        exporter.join(format!("{}.py", guest::STDLIB_EXPORTER_MODULE)),
        guest::STDLIB_EXPORTER,
    )
    .map_err(|e| io(&exporter, e))?;
    fs::write(wit_dir.join("handler.wit"), wit::WIT_SOURCE).map_err(|e| io(&wit_dir, e))?;
    // The exporter does its work while being imported; the component
    // componentize-py then writes is of no use and is discarded.
    let discard = scratch.path().join("discard.wasm");
    // The exporter writes to /0; its own module is found through /1.
    match componentize(
        &wit_dir,
        &[&out, &exporter],
        guest::STDLIB_EXPORTER_MODULE,
        &discard,
        build_timeout,
    ) {
        Ok(()) => {}
        Err(failure) => {
            return Err(LoadError::Build {
                path: dir.clone(),
                detail: format!("exporting the standard library: {failure}"),
            });
        }
    }
    if !out.join("python").is_dir() {
        return Err(LoadError::Build {
            path: dir,
            detail: "the standard library export produced nothing".into(),
        });
    }
    fs::rename(out.join("python"), scratch.path().join("python")).map_err(|e| io(&out, e))?;
    fs::rename(
        out.join("export-report.txt"),
        scratch.path().join("export-report.txt"),
    )
    .ok();
    for d in [&exporter, &wit_dir, &out] {
        fs::remove_dir_all(d).map_err(|e| io(d, e))?;
    }
    let _ = fs::remove_file(&discard);
    cache.publish(scratch, &dir)?;
    Ok(dir)
}

#[derive(Debug)]
enum BuildFailure {
    Timeout,
    Failed(String),
}

impl std::fmt::Display for BuildFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BuildFailure::Timeout => f.write_str("timed out"),
            BuildFailure::Failed(detail) => f.write_str(detail),
        }
    }
}

/// Run componentize-py. Its future is `!Send`, so it gets a thread and a
/// current-thread runtime of its own; the caller waits at most `timeout`.
fn componentize(
    wit_dir: &Path,
    python_path: &[&Path],
    app_name: &str,
    output: &Path,
    timeout: Duration,
) -> Result<(), BuildFailure> {
    let wit_dir = wit_dir.to_path_buf();
    let python_path: Vec<String> = python_path
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let app_name = app_name.to_owned();
    let output = output.to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("pycage-componentize".into())
        .stack_size(16 << 20)
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| {
                    let paths: Vec<&str> = python_path.iter().map(String::as_str).collect();
                    let empty = HashMap::new();
                    rt.block_on(
                        componentize_py::ComponentGenerator {
                            wit_paths: &[&wit_dir],
                            worlds: &["sandbox"],
                            features: &[],
                            all_features: false,
                            world_module: None,
                            python_path: &paths,
                            module_worlds: &[],
                            app_name: &app_name,
                            output_path: &output,
                            add_to_linker: None,
                            stub_wasi: false,
                            import_interface_names: &empty,
                            export_interface_names: &empty,
                            full_names: false,
                            intersect_world: None,
                        }
                        .generate(),
                    )
                });
            let _ = tx.send(result.map_err(|e| format!("{e:#}")));
        })
        .map_err(|e| BuildFailure::Failed(format!("cannot start the build thread: {e}")))?;
    match rx.recv_timeout(timeout) {
        Ok(result) => result.map_err(BuildFailure::Failed),
        // The thread cannot be cancelled; it is left to finish on its own.
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(BuildFailure::Timeout),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            Err(BuildFailure::Failed("the build thread panicked".into()))
        }
    }
}

/// What `pycage_guest.py` reports after importing the handler at build time.
/// Written by guest code, so it is parsed defensively and bounded.
#[derive(Debug, Deserialize)]
struct Report {
    ok: bool,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    file: Option<String>,
    #[serde(default)]
    line: Option<u32>,
    #[serde(default)]
    traceback: String,
    #[serde(default)]
    output: String,
    #[serde(default)]
    output_truncated: bool,
}

const MAX_REPORT_BYTES: u64 = 4 << 20;

fn read_report(path: &Path) -> Option<Report> {
    let meta = fs::metadata(path).ok()?;
    if meta.len() > MAX_REPORT_BYTES {
        return None;
    }
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

impl Report {
    fn into_error(self, source: &HandlerSource) -> LoadError {
        let guest_prefix = format!("{}/", guest::GUEST_IMPORT_DIR);
        let host_prefix = format!("{}/", source.display_root.display());
        let file = self
            .file
            .as_deref()
            .and_then(|f| f.strip_prefix(&guest_prefix))
            .map(|relative| source.host_path_of(relative));
        let location = match (&file, self.line) {
            (Some(file), Some(line)) => format!("{}:{line}", file.display()),
            (Some(file), None) => file.display().to_string(),
            (None, _) => source.path.display().to_string(),
        };
        let traceback = self
            .traceback
            .replace(&format!("\"{guest_prefix}"), &format!("\"{host_prefix}"));
        match self.kind.as_str() {
            "syntax-error" => LoadError::Syntax {
                location,
                message: self.message,
            },
            "no-routes" => LoadError::NoRoutes {
                path: file.unwrap_or_else(|| source.path.clone()),
            },
            "route-error" => LoadError::Route {
                location,
                message: self.message,
            },
            _ => LoadError::Import {
                location,
                message: self.message,
                traceback,
            },
        }
    }
}
