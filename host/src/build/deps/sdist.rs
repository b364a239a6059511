//! Building a source distribution into a wheel inside the sandbox, for a
//! requirement that has no pure-Python wheel.
//!
//! The host only fetches (the installer driver downloads the sdist, checks
//! its hash and reads its `[build-system]`) and installs the build
//! requirements as pure wheels. The PEP 517 backend then runs in CPython on
//! WASI, as a build job (`guest-python/pycage_sdist_build.py`) under the
//! build's limits: no compiler, no processes, writes only into a scratch
//! directory that the disk limit measures. A package whose C extension is
//! optional builds its pure-Python version; one that needs native code
//! fails here, and the error says so. The host reads back only the result
//! file and the wheel it names, without following links, bounded.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Deserialize;

use super::install::{Pip, Sdist};
use crate::build::cache::Cache;
use crate::build::job::{Job, JobKind, Outcome};
use crate::build::worker::{self, BuildIsolation};
use crate::contract::{framework, wit};
use crate::host_fs::untrusted;
use crate::limits::BuildLimits;

/// What the guest's helper reports.
#[derive(Deserialize)]
struct BuildResult {
    ok: bool,
    #[serde(default)]
    wheel: String,
    #[serde(default)]
    error: String,
    #[serde(default)]
    detail: String,
}

const RESULT: &str = "result.json";
const MAX_RESULT_BYTES: u64 = 64 << 10;

/// Build `sdist` (downloaded into `archive_dir`) into a pure wheel in
/// `wheelhouse`, using `work` as the build's scratch directory. Returns the
/// wheel's file name, or why it could not be built.
#[allow(clippy::too_many_arguments)]
pub(super) fn build(
    pip: &Pip,
    sdist: &Sdist,
    archive_dir: &Path,
    work: &Path,
    wheelhouse: &Path,
    isolation: &BuildIsolation,
    deadline: Instant,
    limits: &BuildLimits,
) -> Result<String, String> {
    let io = |what: &Path, e: std::io::Error| format!("{}: {e}", what.display());
    let guest_work = work.join("work");
    let runner = work.join("runner");
    let build_env = work.join("build-env");
    let wit_dir = work.join("wit");
    let out = work.join("out");
    for dir in [&guest_work, &runner, &build_env, &wit_dir, &out] {
        fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    }
    // Read from the package: checked like the tenant's own requirements,
    // so none is a URL, a path or an option.
    let requires = sdist
        .requires
        .iter()
        .map(|r| {
            super::pyproject::parse(r)
                .ok_or_else(|| format!("its build requirement {r:?} is not a name from the index"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if !requires.is_empty() {
        pip.install_pure(&requires, &build_env, None, deadline, limits)
            .map_err(|output| {
                format!(
                    "its build requirements ({}) did not install as pure-Python wheels:\n{}",
                    sdist.requires.join(", "),
                    super::install::tail(&output, 12)
                )
            })?;
    }
    fs::copy(archive_dir.join(&sdist.file), runner.join(&sdist.file))
        .map_err(|e| io(&runner, e))?;
    fs::write(
        runner.join(format!("{}.py", framework::SDIST_BUILDER_MODULE)),
        framework::SDIST_BUILDER,
    )
    .map_err(|e| io(&runner, e))?;
    let job_file = serde_json::json!({
        "archive": sdist.file,
        "backend": sdist.backend,
        "backend_path": sdist.backend_path,
    });
    fs::write(runner.join("job.json"), job_file.to_string()).map_err(|e| io(&runner, e))?;
    wit::write_to(&wit_dir).map_err(|e| io(&wit_dir, e))?;

    let job = Job {
        kind: JobKind::Helper,
        cache_root: PathBuf::new(),
        wit_dir,
        world: crate::contract::wit::WORLD.into(),
        python_path: vec![guest_work.clone(), runner, build_env],
        app_module: framework::SDIST_BUILDER_MODULE.into(),
        report_dir: guest_work.clone(),
        out_dir: out,
        max_component_bytes: 0,
    };
    let limits = BuildLimits {
        timeout: deadline.saturating_duration_since(Instant::now()),
        ..*limits
    };
    // The helper ends its import with an exception once its result is
    // written, so that no snapshot is taken: a failed outcome is the
    // normal one, and the result file says how the build went.
    let failed = match worker::execute(&job, isolation, &limits, work) {
        Ok(Outcome::Built(_)) => String::new(),
        Ok(Outcome::Refused(report)) => report.message,
        // The cause is at the end, after what the build printed.
        Ok(Outcome::Failed(detail)) => super::install::tail(&detail, 12),
        Err(error) => return Err(format!("the build {error}")),
    };
    // Written by the guest: read without following links, bounded.
    let result = untrusted::read_file_in(&guest_work, RESULT, MAX_RESULT_BYTES)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("the build wrote no result: {failed}"))?;
    let result: BuildResult =
        serde_json::from_slice(&result).map_err(|e| format!("unreadable build result: {e}"))?;
    if !result.ok {
        return Err(format!(
            "{}\n{}",
            result.error,
            super::install::tail(&result.detail, 12)
        ));
    }
    let name = result
        .wheel
        .strip_prefix("dist/")
        .filter(|name| is_pure_wheel_name(name))
        .ok_or_else(|| format!("the build named {:?}, not a pure wheel", result.wheel))?;
    // Streamed, not held in memory: it may be as large as the disk limit.
    let (work_fd, _) = untrusted::open_named(&guest_work).map_err(|e| e.to_string())?;
    untrusted::copy_file_at(
        std::os::fd::AsFd::as_fd(&work_fd),
        Path::new(&result.wheel),
        limits.disk_bytes,
        &guest_work.join(&result.wheel),
        &wheelhouse.join(name),
    )
    .map_err(|e| e.to_string())?;
    Ok(name.to_owned())
}

/// Where a wheel built from `sdist` is kept: keyed by the archive's hash
/// and by how it is built, so any handler needing the same sdist reuses it.
fn wheel_cache_dir(cache: &Cache, sdist: &Sdist) -> PathBuf {
    let mut h = blake3::Hasher::new();
    for part in [
        sdist.sha256.as_bytes(),
        framework::SDIST_BUILDER.as_bytes(),
        super::install::PIP_VERSION.as_bytes(),
        crate::contract::GUEST_MARKERS.as_bytes(),
    ] {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part);
    }
    cache
        .root()
        .join("wheels")
        .join(&h.finalize().to_hex()[..32])
}

/// The wheel an earlier install built from `sdist`, copied into
/// `wheelhouse`; its file name.
pub(super) fn cached_wheel(cache: &Cache, sdist: &Sdist, wheelhouse: &Path) -> Option<String> {
    let dir = wheel_cache_dir(cache, sdist);
    let name = fs::read_dir(&dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|name| is_pure_wheel_name(name))?;
    fs::copy(dir.join(&name), wheelhouse.join(&name)).ok()?;
    Some(name)
}

/// Largest wheel kept in the cache (the cache has no eviction).
const MAX_KEPT_WHEEL: u64 = 64 << 20;

/// Keep the wheel just built and installed (fails open: the next install
/// builds it again).
pub(super) fn keep_wheel(cache: &Cache, sdist: &Sdist, wheelhouse: &Path, wheel: &str) {
    if fs::metadata(wheelhouse.join(wheel)).map_or(true, |m| m.len() > MAX_KEPT_WHEEL) {
        return;
    }
    let dir = wheel_cache_dir(cache, sdist);
    let Ok(scratch) = cache.scratch_for(&dir) else {
        return;
    };
    if fs::copy(wheelhouse.join(wheel), scratch.path().join(wheel)).is_ok()
        && crate::host_fs::private::restrict_tree(scratch.path()).is_ok()
    {
        let _ = cache.publish(scratch.path(), &dir);
    }
}

/// `name-version(-build)?-py3-none-any.whl`, in characters a file name
/// and pip's parser both take literally.
fn is_pure_wheel_name(name: &str) -> bool {
    name.len() <= 255
        && name.ends_with("-py3-none-any.whl")
        && name.split('-').count() >= 5
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b))
        && !name.starts_with('.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_pure_wheel_names_are_taken() {
        assert!(is_pure_wheel_name("markupsafe-3.0.4-py3-none-any.whl"));
        assert!(is_pure_wheel_name("PyYAML-6.0.4-1-py3-none-any.whl"));
        assert!(!is_pure_wheel_name("x-1-cp314-cp314-wasi_0_0_0_wasm32.whl"));
        assert!(!is_pure_wheel_name("../x-1-py3-none-any.whl"));
        assert!(!is_pure_wheel_name("x/y-1-py3-none-any.whl"));
        assert!(!is_pure_wheel_name("x-py3-none-any.whl"));
    }
}
