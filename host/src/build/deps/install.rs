//! Installing a handler's declared dependencies into a cached layer with pip
//! (or uv), as pure-Python wheels only.
//!
//! Only wheels are accepted (`--only-binary=:all:`): building a source
//! distribution would run the package's own build code on the host, outside
//! any sandbox. pip is also told the guest's platform (any), implementation
//! (pure Python) and version, so that it picks pure wheels where a package
//! offers both kinds. Requirements are limited to index names and versions
//! (see `pyproject::dependencies`), so a tenant cannot point the installer
//! at a URL or a host path.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use super::native;
use crate::build::stage::{self, Tree};
use crate::build::supervise::{self, Stop};
use crate::contract::GUEST_PYTHON_VERSION;
use crate::error::LoadError;
use crate::limits::BuildLimits;

/// How pip is run: `-I` (isolated) keeps the working directory and the
/// PYTHON* environment out of `sys.path`, so no file of a tenant's can stand
/// in for pip's own modules.
const PIP_PREFIX: &[&str] = &["-I", "-m", "pip"];

/// The program that installs packages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Installer {
    /// `python3 -I -m pip`
    Pip,
    /// `uv pip`
    Uv,
}

impl Installer {
    pub fn name(self) -> &'static str {
        match self {
            Installer::Pip => "pip",
            Installer::Uv => "uv",
        }
    }

    /// pip if `python3 -I -m pip` works, else uv if `uv` is on PATH.
    pub fn detect() -> Option<Installer> {
        let empty = tempfile::tempdir().ok()?;
        let works = |program: &str, args: &[&str]| {
            Command::new(program)
                .args(args)
                .current_dir(empty.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if works("python3", &[PIP_PREFIX, &["--version"]].concat()) {
            Some(Installer::Pip)
        } else if works("uv", &["--version"]) {
            Some(Installer::Uv)
        } else {
            None
        }
    }

    /// The install command for `requirements` into `target`. `pure` targets
    /// the guest: pure-Python wheels for its Python version. Without it the
    /// host's own platform and version are used, only to find out which
    /// native module a package that failed needs.
    fn command(self, cwd: &Path, target: &Path, requirements: &[String], pure: bool) -> Command {
        let mut command = match self {
            Installer::Pip => {
                let mut c = Command::new("python3");
                c.args(PIP_PREFIX);
                c.args(["install", "--disable-pip-version-check", "--no-input"]);
                c.args(["--no-warn-conflicts", "--no-warn-script-location"]);
                c.arg("--root-user-action=ignore");
                c.args(["--no-compile", "--only-binary=:all:"]);
                // What a tenant makes the host download stays out of the
                // operator's pip cache.
                c.arg("--no-cache-dir");
                if pure {
                    c.args([
                        "--platform",
                        "any",
                        "--implementation",
                        "py",
                        "--abi",
                        "none",
                    ]);
                } else {
                    c.arg("--no-deps");
                }
                c
            }
            Installer::Uv => {
                // uv has no "pure wheels only" platform: it picks wheels for
                // the host, and the native-module scan refuses what cannot run.
                let mut c = Command::new("uv");
                c.args([
                    "pip",
                    "install",
                    "--only-binary",
                    ":all:",
                    "--no-python-downloads",
                    "--no-cache",
                ]);
                if !pure {
                    c.arg("--no-deps");
                }
                c
            }
        };
        if pure {
            command.args(["--python-version", GUEST_PYTHON_VERSION]);
        }
        command
            .arg("--target")
            .arg(target)
            .arg("--")
            .args(requirements)
            // Nothing relative resolves against the user's directory.
            .current_dir(cwd)
            // Our own interpreter settings must not leak into the installer.
            .env_remove("PYTHONPATH")
            .env("PYTHONNOUSERSITE", "1")
            .stdin(Stdio::null());
        command
    }
}

/// What a failed install printed, for the error message.
struct Failure {
    output: String,
}

/// Install `requirements` into `target` (an empty directory), giving up at
/// `deadline`.
pub(super) fn install(
    installer: Installer,
    pyproject: &Path,
    requirements: &[String],
    target: &Path,
    deadline: Instant,
    limits: &BuildLimits,
) -> Result<(), LoadError> {
    let cwd = tempfile::tempdir().map_err(|source| LoadError::Io {
        path: std::env::temp_dir(),
        source,
    })?;
    let command = installer.command(cwd.path(), target, requirements, true);
    let Err(failure) = run(command, target, deadline, limits) else {
        return Ok(());
    };
    let mut detail = tail(&failure.output, 40);
    // The usual reason: a package (or a dependency of one) has only native
    // wheels. Name its extension modules if so.
    if let Some(requirement) = unsatisfied(&failure.output) {
        if let Some(modules) = native_modules_of(installer, &requirement, deadline, limits) {
            return Err(LoadError::NativeOnly {
                path: pyproject.to_path_buf(),
                requirement,
                modules: modules.join(", "),
            });
        }
        detail.push_str(&format!(
            "\n(pycage installs wheels only, never source distributions, whose build would \
             run code on the host: `{requirement}` may have no pure-Python wheel)"
        ));
    }
    Err(LoadError::DependencyInstall {
        path: pyproject.to_path_buf(),
        installer: installer.name(),
        detail,
    })
}

/// Run `command` confined and watched like a build (see
/// `build::supervise`): its memory, time and the bytes it writes into
/// `target` are bounded, and it is killed (with anything it started) at the
/// deadline. A wheel is an archive a tenant chose: unpacked, it could be
/// any size.
fn run(
    mut command: Command,
    target: &Path,
    deadline: Instant,
    limits: &BuildLimits,
) -> Result<(), Failure> {
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
        None if ended.status.success() => Ok(()),
        None => Err(Failure {
            output: ended.output,
        }),
    }
}

/// The requirement pip (or uv) could not satisfy, from its error output.
fn unsatisfied(output: &str) -> Option<String> {
    for line in output.lines() {
        if let Some(rest) = line.split("No matching distribution found for ").nth(1) {
            return Some(rest.trim().to_owned());
        }
        // uv: "Because <name>==<v> has no wheels with a matching platform tag ..."
        if let Some(rest) = line.split("Because ").nth(1)
            && rest.contains("has no wheels with")
        {
            return rest.split_whitespace().next().map(str::to_owned);
        }
    }
    None
}

/// Install `requirement` alone for the host's platform, into a throwaway
/// directory, and list the native extension modules its wheel carries.
fn native_modules_of(
    installer: Installer,
    requirement: &str,
    deadline: Instant,
    limits: &BuildLimits,
) -> Option<Vec<String>> {
    let probe = tempfile::tempdir().ok()?;
    let (cwd, target) = (probe.path().join("cwd"), probe.path().join("site"));
    fs::create_dir(&cwd).ok()?;
    fs::create_dir(&target).ok()?;
    let command = installer.command(&cwd, &target, &[requirement.to_owned()], false);
    run(command, &target, deadline, limits).ok()?;
    let snapshot = stage::snapshot_tree(&target, &Tree::INSTALLED).ok()?;
    let modules: Vec<String> = native::find(&snapshot, &[""])
        .into_iter()
        .map(|m| m.module)
        .collect();
    (!modules.is_empty()).then_some(modules)
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
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
        assert_eq!(unsatisfied("ERROR: something else"), None);
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
    }
}
