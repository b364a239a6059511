//! The standard library every handler imports from: exported once per
//! toolchain by a build job that runs pycage's own exporter (no tenant
//! code), with bytecode precompiled, into `stdlib-<key>/python/`.

use std::os::fd::OwnedFd;

use super::LoadEvent;
use super::job::{Job, JobKind, Outcome};
use super::worker::{self, BuildIsolation, BuildLimits};
use crate::build::cache::Cache;
use crate::contract::framework;
use crate::contract::wit;
use crate::error::LoadError;

/// The exported standard library's `python/` directory: from the cache,
/// or exported now.
pub(crate) fn ensure(
    cache: &Cache,
    isolation: &BuildIsolation,
    limits: &BuildLimits,
    on_event: &dyn Fn(LoadEvent<'_>),
) -> Result<OwnedFd, LoadError> {
    if let Some(dir) = cache.open_stdlib()? {
        return Ok(dir);
    }
    on_event(LoadEvent::PreparingStdlib);
    let dir = cache.stdlib_dir();
    let scratch = cache.scratch_for(&dir)?;
    let io = |path: &std::path::Path, source| cache.error(path, source);
    let exporter = scratch.path().join("exporter");
    let wit_dir = scratch.path().join("wit");
    let out = scratch.path().join("out");
    let work = scratch.path().join("work");
    for d in [&exporter, &wit_dir, &out, &work] {
        std::fs::create_dir_all(d).map_err(|e| io(d, e))?;
    }
    std::fs::write(
        exporter.join(format!("{}.py", framework::STDLIB_EXPORTER_MODULE)),
        framework::STDLIB_EXPORTER,
    )
    .map_err(|e| io(&exporter, e))?;
    wit::write_to(&wit_dir).map_err(|e| io(&wit_dir, e))?;
    // The exporter writes to /0 while being imported; the component
    // componentize-py then makes is of no use and is discarded.
    let job = Job {
        kind: JobKind::Helper,
        cache_root: cache.root().to_path_buf(),
        wit_dir: wit_dir.clone(),
        world: crate::contract::wit::WORLD.into(),
        python_path: vec![out.clone(), exporter.clone()],
        app_module: framework::STDLIB_EXPORTER_MODULE.into(),
        report_dir: out.clone(),
        out_dir: work,
        max_component_bytes: 0,
    };
    let failed = |detail: String| LoadError::Build {
        path: dir.clone(),
        detail: format!("exporting the standard library: {detail}"),
    };
    match worker::execute(&job, isolation, limits, scratch.path()) {
        Ok(Outcome::Built(_)) => {}
        Ok(Outcome::Refused(report)) => return Err(failed(report.message)),
        Ok(Outcome::Failed(detail)) => return Err(failed(detail)),
        Err(error) => return Err(failed(error.to_string())),
    }
    if !out.join("python").is_dir() {
        return Err(failed("the export produced nothing".into()));
    }
    let publish = scratch.path().join("publish");
    crate::host_fs::private::create_dir_all(&publish).map_err(|e| cache.refuse(&publish, e))?;
    std::fs::rename(out.join("python"), publish.join("python")).map_err(|e| io(&out, e))?;
    // Made through WASI with the process umask: private, before it is used.
    crate::host_fs::private::restrict_tree(&publish.join("python")).map_err(|e| io(&publish, e))?;
    let _ = std::fs::rename(
        out.join("export-report.txt"),
        publish.join("export-report.txt"),
    );
    cache.publish(&publish, &dir)?;
    drop(scratch);
    cache
        .open_stdlib()?
        .ok_or_else(|| failed("the export vanished".into()))
}
