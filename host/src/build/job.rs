//! What a build worker does: run componentize-py on the inputs the host
//! prepared (which imports the tenant's handler inside a pre-initialised
//! CPython), then flatten, make the snapshot's objects immortal and compile
//! the result. Everything here processes what tenant code produced, so it
//! runs in the worker process, under its limits (see `worker`).
//!
//! A job and its outcome are plain data (JSON), sent to the worker on its
//! stdin and read back from a file the worker writes outside every
//! directory the guest could write.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use wasmtime::Engine;
use wasmtime::component::Component;

use super::componentize;
use super::report::{self, Report};
use crate::build::cache::Cache;
use crate::build::cache::code::CodeCache;
use crate::build::flatten::{self, FlattenError};
use crate::build::immortal;
use crate::contract;
use crate::contract::engine;
use crate::contract::wit;
use crate::host_fs::untrusted;
use crate::instance::memory::MemoryImage;

/// The component componentize-py made, in the job's output directory.
pub(crate) const COMPONENT: &str = "component.wasm";
/// The compiled component, in the job's output directory.
pub(crate) const ARTIFACT: &str = "sandbox.cwasm";
/// The memory image moved out of the component (see `crate::instance::memory`).
pub(crate) const MEMORY_IMAGE: &str = "memory.img";
/// The worker's answer, in the job's output directory.
pub(crate) const OUTCOME: &str = "outcome.json";
/// Longest outcome the host reads back.
pub(crate) const MAX_OUTCOME_BYTES: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum JobKind {
    /// Import a handler and compile the snapshot.
    Handler,
    /// Import a handler for `pycage export`: the component componentize-py
    /// made is the product, left as it is (portable, not compiled).
    Export,
    /// Run one of pycage's build-time helpers (the standard-library
    /// exporter, the source-distribution builder): what it writes is the
    /// product, the component is discarded.
    Helper,
}

/// One build, as the host hands it to a worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Job {
    pub kind: JobKind,
    /// The build cache: its key seals compiled functions (`code/`).
    pub cache_root: PathBuf,
    pub wit_dir: PathBuf,
    /// The world of `wit_dir`'s package the component implements.
    pub world: String,
    /// Mounted at /0, /1, ... during pre-initialisation; the guest may
    /// write into all of them.
    pub python_path: Vec<PathBuf>,
    pub app_module: String,
    /// Where the guest writes its build report and object listing (the
    /// framework mount, /0).
    pub report_dir: PathBuf,
    /// Where the worker writes the component, the artifacts and the
    /// outcome: never mounted into the guest.
    pub out_dir: PathBuf,
    /// The largest component (snapshot included) worth compiling: an
    /// instance could never start from a bigger one.
    pub max_component_bytes: u64,
}

/// What a worker reports back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Outcome {
    /// The image is in the output directory.
    Built(BuiltFacts),
    /// The guest reported that the handler cannot load.
    Refused(Report),
    /// componentize-py or the compiler failed; the detail may hold guest
    /// text.
    Failed(String),
}

/// Facts about a built image, recorded in its manifest.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct BuiltFacts {
    /// What the handler printed while being imported.
    pub output: String,
    pub output_truncated: bool,
    pub merged_modules: usize,
    pub memory_image: bool,
    pub immortal_objects: usize,
    /// What the operator should hear about (a fail-open step that failed).
    pub warnings: Vec<String>,
}

/// Run `job` in this process.
pub(crate) fn run(job: &Job) -> Outcome {
    let component_wasm = job.out_dir.join(COMPONENT);
    let generated = componentize::run(
        &job.wit_dir,
        &job.world,
        &job.python_path,
        &job.app_module,
        &component_wasm,
    );
    if job.kind == JobKind::Helper {
        return match generated {
            Ok(()) => Outcome::Built(BuiltFacts::default()),
            Err(detail) => Outcome::Failed(detail),
        };
    }
    let report = report::read(&job.report_dir);
    match (report, generated) {
        (Ok(Some(report)), _) if !report.ok => Outcome::Refused(report),
        (_, Err(detail)) => Outcome::Failed(detail),
        (Err(error), Ok(())) => {
            Outcome::Failed(format!("reading the guest's build report: {error}"))
        }
        (Ok(None), Ok(())) => Outcome::Failed("the guest wrote no build report".into()),
        (Ok(Some(report)), Ok(())) if job.kind == JobKind::Export => Outcome::Built(BuiltFacts {
            output: report.output,
            output_truncated: report.output_truncated,
            ..BuiltFacts::default()
        }),
        (Ok(Some(report)), Ok(())) => match compile(job, &component_wasm) {
            Ok(mut facts) => {
                facts.output = report.output;
                facts.output_truncated = report.output_truncated;
                Outcome::Built(facts)
            }
            Err(detail) => Outcome::Failed(detail),
        },
    }
}

/// Flatten, immortalise and compile the generated component into the
/// output directory.
fn compile(job: &Job, component_wasm: &Path) -> Result<BuiltFacts, String> {
    let cache = Cache::new(&job.cache_root);
    let key = cache.open().map_err(|e| e.to_string())?.key().clone();
    let code_cache = Arc::new(CodeCache::new(cache.code_dir(), key));
    code_cache.trim(crate::build::cache::code::CODE_CACHE_LIMIT);
    let engine = Engine::new(&engine::config(Some(code_cache))).map_err(|e| format!("{e:#}"))?;

    let (fd, stat) = untrusted::open_named(component_wasm).map_err(|e| e.to_string())?;
    let generated = untrusted::read_to_end(fd, &stat, job.max_component_bytes, component_wasm)
        .map_err(|e| format!("{e} (the snapshot is larger than any instance could start from)"))?;
    let _ = std::fs::remove_file(component_wasm);
    let mut warnings = Vec::new();
    let (component, merged_modules, mut memory_image) =
        flatten_and_compile(&engine, &generated, &mut warnings)?;
    drop(generated);
    let immortal_objects = match &mut memory_image {
        Some(image) => immortalize(image, &job.report_dir, &mut warnings),
        None => 0,
    };
    wit::check_exports(&engine, &component).map_err(|found| {
        format!(
            "the component exports {found}, not {}@{}",
            wit::WIT_INTERFACE,
            wit::WIT_VERSION
        )
    })?;
    let artifact = component.serialize().map_err(|e| format!("{e:#}"))?;
    let write = |name: &str, bytes: &[u8]| {
        crate::host_fs::private::write_file(&job.out_dir.join(name), bytes)
            .map_err(|e| format!("writing {name}: {e}"))
    };
    write(ARTIFACT, &artifact)?;
    if let Some(image) = &memory_image {
        MemoryImage::write(&job.out_dir.join(MEMORY_IMAGE), image)
            .map_err(|e| format!("writing {MEMORY_IMAGE}: {e}"))?;
    }
    Ok(BuiltFacts {
        merged_modules,
        memory_image: memory_image.is_some(),
        immortal_objects,
        warnings,
        ..BuiltFacts::default()
    })
}

/// Make the objects the guest listed immortal in `image`; returns how many.
/// Fails open: without the listing the image is only slower to reset.
fn immortalize(image: &mut [u8], report_dir: &Path, warnings: &mut Vec<String>) -> usize {
    // The guest wrote the listing: read without following links, bounded
    // (two words per object; more objects than the image has room for
    // cannot be real).
    let max = image.len() as u64 / 2;
    let listing = match untrusted::read_file_in(report_dir, contract::SNAPSHOT_OBJECTS, max) {
        Ok(Some(listing)) => listing,
        Ok(None) => {
            warnings.push("no snapshot object listing; objects stay mortal".into());
            return 0;
        }
        Err(error) => {
            warnings.push(format!(
                "unreadable snapshot object listing ({error}); objects stay mortal"
            ));
            return 0;
        }
    };
    let done = immortal::apply(image, &listing);
    if done.patched == 0 && done.listed > 0 {
        warnings.push(format!(
            "none of the {} listed objects matched the memory image",
            done.listed
        ));
    }
    done.patched
}

/// What `flatten_and_compile` made: the component, how many modules were
/// merged, and the memory image moved out of its data segments, if it was.
type Compiled = (Component, usize, Option<Vec<u8>>);

/// Compile the generated component, flattened when possible (see
/// `flatten`). Fail open: an unflattened component is slower per request,
/// not wrong, so a flattening bug (an error, a panic, or output wasmtime
/// rejects) costs speed, not the build.
fn flatten_and_compile(
    engine: &Engine,
    generated: &[u8],
    warnings: &mut Vec<String>,
) -> Result<Compiled, String> {
    let flattened = std::panic::catch_unwind(|| flatten::flatten(generated))
        .unwrap_or_else(|_| Err(FlattenError::Unsupported("the pass panicked".into())));
    match flattened {
        Ok(flat) => match Component::new(engine, &flat.bytes) {
            Ok(component) => return Ok((component, flat.merged_modules, flat.memory_image)),
            Err(error) => warnings.push(format!(
                "wasmtime rejected the flattened component ({error:#}); compiled it unmerged"
            )),
        },
        Err(error) => warnings.push(format!("kept the component's core modules apart: {error}")),
    }
    let component = Component::new(engine, generated).map_err(|e| format!("{e:#}"))?;
    Ok((component, 0, None))
}
