//! Installing a handler's declared dependencies into a cached layer with
//! pycage's own, pinned pip, resolving for the guest.
//!
//! pip comes from the package index as a hash-pinned wheel, cached once,
//! and runs under the host's `python3` through `installer.py`, which gives
//! it the guest's environment markers (CPython 3.14 on WASI) whatever
//! interpreter runs it; `--python-version` makes `Requires-Python` the
//! guest's too. So the result depends on neither the host's pip nor its
//! Python. Only wheels are installed (`--only-binary=:all:`, pure ones:
//! platform any, implementation py, abi none): a requirement with no pure
//! wheel has its source distribution built inside the sandbox
//! (`sdist`), never on the host. Requirements are limited to index names
//! and versions (see `pyproject::dependencies`), so a tenant cannot point
//! the installer at a URL or a host path.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde::Deserialize;

use super::{native, sdist};
use crate::build::cache::Cache;
use crate::build::stage::{self, Tree};
use crate::build::supervise::{self, Stop};
use crate::build::worker::BuildIsolation;
use crate::contract::{GUEST_MARKERS, GUEST_PYTHON_VERSION};
use crate::error::LoadError;
use crate::limits::BuildLimits;

/// The pip pycage installs with: version, wheel, its sha256 and where the
/// package index serves it.
pub(crate) const PIP_VERSION: &str = "26.3";
const PIP_WHEEL: &str = "pip-26.3-py3-none-any.whl";
const PIP_SHA256: &str = "f3b60b20ffaadd4415ed7957212a38ac63fa4c5fa375bd0f4a797777940fad13";
const PIP_URL: &str = "https://files.pythonhosted.org/packages/07/25/\
    ee8c38ae72d66b844ce8eb9711ba905dba21ca1a8a0c960057c41cd23337/pip-26.3-py3-none-any.whl";
/// The driver the host's python3 runs (see its docstring).
pub(crate) const DRIVER: &str = include_str!("installer.py");
/// The interpreter that runs pip (never a package's code).
const PYTHON: &str = "python3";
/// Most source distributions one install builds in the sandbox.
const MAX_SOURCE_BUILDS: usize = 8;
/// Largest source distribution downloaded.
const MAX_SDIST_BYTES: u64 = 64 << 20;

/// pycage's pip, ready to run: its cached wheel and the driver script.
pub(crate) struct Pip {
    wheel: PathBuf,
    driver: PathBuf,
}

/// A source distribution the driver fetched.
#[derive(Debug, Deserialize)]
pub(crate) struct Sdist {
    pub file: String,
    pub sha256: String,
    pub requires: Vec<String>,
    pub backend: String,
    pub backend_path: Vec<String>,
}

#[derive(Deserialize)]
struct Fetched {
    found: bool,
    #[serde(flatten)]
    sdist: Option<Sdist>,
}

impl Pip {
    /// The pinned pip, downloaded into the cache on first use, with the
    /// driver written into `work`.
    pub(crate) fn ensure(
        cache: &Cache,
        work: &Path,
        pyproject: &Path,
        deadline: Instant,
        limits: &BuildLimits,
    ) -> Result<Pip, LoadError> {
        let driver = work.join("installer.py");
        fs::write(&driver, DRIVER).map_err(|e| cache.error(&driver, e))?;
        let no_python = || LoadError::NoInstaller {
            path: pyproject.to_path_buf(),
        };
        let works = Command::new(PYTHON)
            .args([
                "-I",
                "-c",
                "import sys; sys.exit(sys.version_info < (3, 10))",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !works {
            return Err(no_python());
        }
        let tools = cache.tools_dir();
        let wheel = tools.join(PIP_WHEEL);
        if !wheel.is_file() {
            let scratch = cache.scratch_for(&wheel)?;
            let fetched = scratch.path().join(PIP_WHEEL);
            let mut command = Command::new(PYTHON);
            command
                .arg("-I")
                .arg(&driver)
                .args(["fetch-pip", PIP_URL, PIP_SHA256])
                .arg(&fetched)
                .current_dir(scratch.path())
                .stdin(Stdio::null());
            run(command, scratch.path(), deadline, limits).map_err(|failure| {
                LoadError::DependencyInstall {
                    path: pyproject.to_path_buf(),
                    installer: "pip",
                    detail: format!(
                        "could not fetch pycage's pip {PIP_VERSION} ({PIP_URL}):\n{}",
                        tail(&failure.output, 12)
                    ),
                }
            })?;
            // First one wins if two builds fetch at once; both checked the hash.
            if let Err(e) = fs::rename(&fetched, &wheel)
                && !wheel.is_file()
            {
                return Err(cache.error(&wheel, e));
            }
        }
        Ok(Pip { wheel, driver })
    }

    /// `python3 -I installer.py COMMAND WHEEL SHA MARKERS`; our own
    /// interpreter settings must not leak into it.
    fn driver(&self, command: &str) -> Command {
        let mut driver = Command::new(PYTHON);
        driver
            .arg("-I")
            .arg(&self.driver)
            .arg(command)
            .arg(&self.wheel)
            .arg(PIP_SHA256)
            .arg(GUEST_MARKERS)
            .env_remove("PYTHONPATH")
            .stdin(Stdio::null());
        driver
    }

    /// `python3 -I installer.py pip WHEEL SHA MARKERS install ...`.
    fn pip(&self, cwd: &Path) -> Command {
        let mut command = self.driver("pip");
        command
            .args(["install", "--disable-pip-version-check", "--no-input"])
            .args(["--no-warn-conflicts", "--no-warn-script-location"])
            .arg("--root-user-action=ignore")
            .args(["--no-compile", "--only-binary=:all:"])
            // What a tenant makes the host download stays out of the
            // operator's pip cache.
            .arg("--no-cache-dir")
            // Nothing relative resolves against the user's directory.
            .current_dir(cwd)
            .env("PYTHONNOUSERSITE", "1");
        command
    }

    /// Install `requirements` as pure wheels for the guest into `target`
    /// (emptied first), also taking wheels from `find_links`. Fails with
    /// what pip printed.
    pub(crate) fn install_pure(
        &self,
        requirements: &[String],
        target: &Path,
        find_links: Option<&Path>,
        deadline: Instant,
        limits: &BuildLimits,
    ) -> Result<(), String> {
        empty_dir(target).map_err(|e| format!("{}: {e}", target.display()))?;
        let cwd = tempfile::tempdir().map_err(|e| e.to_string())?;
        // pip unpacks into its temporary directory first: that is put
        // beside the target and watched with it, so the disk limit
        // counts it and nothing is left behind when pip is killed.
        let watched = target.parent().unwrap_or(target);
        let tmp = watched.join(".pip-tmp");
        empty_dir(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
        let mut command = self.pip(cwd.path());
        command.env("TMPDIR", &tmp);
        command.args([
            "--platform",
            "any",
            "--implementation",
            "py",
            "--abi",
            "none",
        ]);
        command.args(["--python-version", GUEST_PYTHON_VERSION]);
        if let Some(links) = find_links {
            command.arg("--find-links").arg(links);
        }
        command
            .arg("--target")
            .arg(target)
            .arg("--")
            .args(requirements);
        let ran = run(command, watched, deadline, limits);
        let _ = crate::host_fs::untrusted::remove_tree(&tmp);
        ran.map(drop).map_err(|f| f.output)
    }

    /// The newest source distribution of `requirement` for the guest,
    /// downloaded into `dest`; `None` if the index has none.
    fn fetch_sdist(
        &self,
        requirement: &str,
        dest: &Path,
        deadline: Instant,
        limits: &BuildLimits,
    ) -> Result<Option<Sdist>, String> {
        let mut command = self.driver("fetch-sdist");
        command
            .arg(requirement)
            .arg(dest)
            .arg(MAX_SDIST_BYTES.to_string())
            .current_dir(dest);
        let output = run(command, dest, deadline, limits).map_err(|f| tail(&f.output, 12))?;
        let line = output
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .unwrap_or("");
        let fetched: Fetched =
            serde_json::from_str(line).map_err(|e| format!("unreadable fetch result: {e}"))?;
        Ok(if fetched.found { fetched.sdist } else { None })
    }
}

/// Remove everything in `dir` (links are removed, never followed), or create it.
fn empty_dir(dir: &Path) -> std::io::Result<()> {
    if dir.exists() {
        crate::host_fs::untrusted::remove_tree(dir)?;
    }
    fs::create_dir_all(dir)
}

/// What a failed install printed, for the error message.
struct Failure {
    output: String,
}

/// Everything an install needs besides the requirements.
pub(crate) struct Context<'a> {
    pub cache: &'a Cache,
    pub isolation: &'a BuildIsolation,
    pub limits: &'a BuildLimits,
    /// Private scratch space, removed with the layer's scratch directory.
    pub work: &'a Path,
}

/// Install `requirements` into `target` (an empty directory). A
/// requirement with no pure wheel is built from source in the sandbox
/// (then the install is tried again, taking that wheel); `on_source_build`
/// hears of each. Returns the wheels built that way.
pub(super) fn install(
    context: &Context<'_>,
    pyproject: &Path,
    requirements: &[String],
    target: &Path,
    on_source_build: &dyn Fn(&str),
) -> Result<Vec<String>, LoadError> {
    let limits = context.limits;
    // Each step (one pip run, one fetch, one source build) gets the build
    // timeout: at most 2 + 3 x MAX_SOURCE_BUILDS of them.
    let deadline = || Instant::now() + limits.timeout;
    let pip = Pip::ensure(context.cache, context.work, pyproject, deadline(), limits)?;
    let wheelhouse = context.work.join("wheelhouse");
    let sdists = context.work.join("sdists");
    for dir in [&wheelhouse, &sdists] {
        fs::create_dir_all(dir).map_err(|e| context.cache.error(dir, e))?;
    }
    let mut built: Vec<String> = Vec::new();
    // Wheels built here, kept in the cache once the install took them.
    let mut to_keep: Vec<(Sdist, String)> = Vec::new();
    loop {
        let Err(output) =
            pip.install_pure(requirements, target, Some(&wheelhouse), deadline(), limits)
        else {
            for (sdist, wheel) in &to_keep {
                sdist::keep_wheel(context.cache, sdist, &wheelhouse, wheel);
            }
            return Ok(built);
        };
        let failed = |detail: String| LoadError::DependencyInstall {
            path: pyproject.to_path_buf(),
            installer: "pip",
            detail,
        };
        let Some(requirement) = unsatisfied(&output) else {
            return Err(failed(tail(&output, 40)));
        };
        if built.len() >= MAX_SOURCE_BUILDS {
            return Err(failed(format!(
                "{}\n(pycage builds at most {MAX_SOURCE_BUILDS} source distributions per install)",
                tail(&output, 40)
            )));
        }
        let why_not = match pip.fetch_sdist(&requirement, &sdists, deadline(), limits) {
            Ok(Some(sdist)) if built.iter().any(|w| same_project(w, &sdist.file)) => {
                format!(
                    "its source distribution {} was built, and pip still found no match",
                    sdist.file
                )
            }
            Ok(Some(sdist)) => {
                let work = context.work.join(format!("build-{}", built.len()));
                let cached = sdist::cached_wheel(context.cache, &sdist, &wheelhouse);
                let fresh = cached.is_none();
                if fresh {
                    on_source_build(&format!("{} ({})", requirement, sdist.file));
                }
                let result = match cached {
                    Some(wheel) => Ok(wheel),
                    None => sdist::build(
                        &pip,
                        &sdist,
                        &sdists,
                        &work,
                        &wheelhouse,
                        context.isolation,
                        deadline(),
                        limits,
                    ),
                };
                match result {
                    Ok(wheel) => {
                        // The build's scratch (source, component) is done with.
                        let _ = crate::host_fs::untrusted::remove_tree(&work);
                        built.push(wheel.clone());
                        if fresh {
                            to_keep.push((sdist, wheel));
                        }
                        continue;
                    }
                    Err(detail) => format!(
                        "building its source distribution {} inside the sandbox failed: {detail}",
                        sdist.file
                    ),
                }
            }
            Ok(None) => "it has no source distribution for the guest's Python either".to_owned(),
            Err(detail) => format!("fetching its source distribution failed: {detail}"),
        };
        // The usual reason: the package needs native code. Name its
        // extension modules if its host wheel shows them.
        if let Some(modules) = native_modules_of(&pip, &requirement, deadline(), limits) {
            return Err(LoadError::NativeOnly {
                path: pyproject.to_path_buf(),
                requirement,
                modules: modules.join(", "),
                source_build: why_not,
            });
        }
        return Err(LoadError::SourceBuild {
            path: pyproject.to_path_buf(),
            requirement,
            detail: why_not,
        });
    }
}

/// Whether wheel file `wheel` and sdist file `sdist` are the same project
/// (names compared as the index normalises them).
fn same_project(wheel: &str, sdist: &str) -> bool {
    let normal = |s: &str| s.to_ascii_lowercase().replace(['-', '.'], "_");
    let wheel_name = wheel.split('-').next().unwrap_or(wheel);
    let sdist_name = sdist
        .strip_suffix(".tar.gz")
        .and_then(|s| s.rsplit_once('-'))
        .map_or(sdist, |(name, _)| name);
    normal(wheel_name) == normal(sdist_name)
}

/// Run `command` confined and watched like a build (see
/// `build::supervise`): its memory, time and the bytes it writes into
/// `target` are bounded, and it is killed (with anything it started) at the
/// deadline. A wheel is an archive a tenant chose: unpacked, it could be
/// any size. Returns what it printed.
fn run(
    mut command: Command,
    target: &Path,
    deadline: Instant,
    limits: &BuildLimits,
) -> Result<String, Failure> {
    let limits = BuildLimits {
        timeout: deadline.saturating_duration_since(Instant::now()),
        ..*limits
    };
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    supervise::confine(&mut command, &limits);
    let child = command.spawn().map_err(|e| Failure {
        output: format!("could not start {:?}: {e}", command.get_program()),
    })?;
    let ended = supervise::supervise(child, &limits, target);
    match ended.stopped {
        Some(Stop::Timeout(_)) => Err(Failure {
            output: format!("{}\n(stopped: the build timeout ran out)", ended.output),
        }),
        Some(Stop::Disk(what)) => Err(Failure {
            output: format!(
                "{}\n(stopped: the installed packages exceeded the build's disk limit: {what})",
                ended.output
            ),
        }),
        None if ended.status.success() => Ok(ended.output),
        None => Err(Failure {
            output: ended.output,
        }),
    }
}

/// The requirement pip could not satisfy, from its error line, checked
/// like a declared one (the text may come from any package's metadata).
fn unsatisfied(output: &str) -> Option<String> {
    output.lines().find_map(|line| {
        let rest = line.strip_prefix("ERROR: No matching distribution found for ")?;
        // "pydantic-core==2.46.4 (from pydantic)": the requirement alone.
        let requirement = rest.split(" (from ").next().unwrap_or(rest);
        super::pyproject::parse(requirement.trim())
    })
}

/// Install `requirement` alone for the host's platform, into a throwaway
/// directory, and list the native extension modules its wheel carries.
fn native_modules_of(
    pip: &Pip,
    requirement: &str,
    deadline: Instant,
    limits: &BuildLimits,
) -> Option<Vec<String>> {
    let probe = tempfile::tempdir().ok()?;
    let (cwd, target) = (probe.path().join("cwd"), probe.path().join("site"));
    let tmp = probe.path().join("tmp");
    for dir in [&cwd, &target, &tmp] {
        fs::create_dir(dir).ok()?;
    }
    let mut command = pip.pip(&cwd);
    command
        .env("TMPDIR", &tmp)
        .arg("--no-deps")
        .arg("--target")
        .arg(&target)
        .arg("--")
        .arg(requirement);
    run(command, probe.path(), deadline, limits).ok()?;
    let snapshot = stage::snapshot_tree(&target, &Tree::INSTALLED).ok()?;
    let modules: Vec<String> = native::find(&snapshot, &[""])
        .into_iter()
        .map(|m| m.module)
        .collect();
    (!modules.is_empty()).then_some(modules)
}

/// The last `lines` lines of `text`.
pub(super) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.trim_end().lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The installed distributions in `site` as "name==version", for the record.
pub(super) fn installed(site: &Path) -> Vec<String> {
    let mut found: Vec<String> = fs::read_dir(site)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let stem = name.strip_suffix(".dist-info")?;
            let (dist, version) = stem.split_once('-')?;
            Some(format!("{dist}=={version}"))
        })
        .collect();
    found.sort();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_unsatisfied_requirement() {
        let pip = "ERROR: Could not find a version that satisfies the requirement \
                   pydantic-core==2.46.4 (from pydantic) (from versions: 0.0.1)\n\
                   ERROR: No matching distribution found for pydantic-core==2.46.4\n";
        assert_eq!(unsatisfied(pip).as_deref(), Some("pydantic-core==2.46.4"));
        let from = "ERROR: No matching distribution found for markupsafe>=2.0 (from jinja2)\n";
        assert_eq!(unsatisfied(from).as_deref(), Some("markupsafe>=2.0"));
        // Only pip's own error line, and only a plain index requirement.
        let echoed = "Ignoring x: markers 'No matching distribution found for .. (from x' ...\n";
        assert_eq!(unsatisfied(echoed), None);
        let path = "ERROR: No matching distribution found for ../up\n";
        assert_eq!(unsatisfied(path), None);
        assert_eq!(unsatisfied("ERROR: something else"), None);
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
    }
}
