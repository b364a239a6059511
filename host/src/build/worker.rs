//! Where a build runs: in a child process under hard limits, or (for
//! trusted handlers only) on a thread of this process.
//!
//! A build imports the tenant's handler: its module-level code runs (inside
//! WASI CPython, under componentize-py's pre-initialisation) with no
//! memory limit of wasmtime's and with read-write access to its build
//! directories. So by default each build is a child process, `pycage
//! build-worker`, which the host starts with:
//!
//! - `RLIMIT_DATA` at the build's memory limit: the guest's linear memory,
//!   componentize-py and Cranelift together cannot take more (a memory bomb
//!   at import time ends as a `MemoryError` or an allocation failure);
//! - `RLIMIT_CPU` and a wall-clock deadline: past the build timeout the
//!   process group is killed (SIGKILL), not left running;
//! - `RLIMIT_FSIZE` and a watch over the build directory: past the disk
//!   limit (bytes allocated, or files created) the process group is killed;
//! - no environment but its own `TMPDIR`, inside the build directory, so
//!   that componentize-py's temporary directories (into which the guest
//!   can write too) go away with it;
//! - stdout and stderr read into bounded buffers (the rest is drained);
//! - `PR_SET_PDEATHSIG`, so that it dies with the host.
//!
//! The job goes in on stdin; the outcome comes back as a file in the job's
//! output directory, which no guest mount reaches.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use super::job::{self, Job, Outcome};
use super::supervise::{self, Stop};
use crate::host_fs::untrusted;
pub use crate::limits::BuildLimits;

/// The argument that makes the pycage binary a build worker.
pub const WORKER_ARG: &str = "build-worker";

/// Where builds run. Builds run the tenant's module-level code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildIsolation {
    /// In a child process, `program build-worker`, under [`BuildLimits`]:
    /// memory cap, CPU and wall deadlines, bounded output and disk; killed
    /// and cleaned up past its timeout. `program` is the pycage binary;
    /// `None` finds it: the running executable if it is pycage, else a
    /// `pycage` next to it or one directory up (where cargo puts the binary
    /// beside tests and examples).
    Process { program: Option<PathBuf> },
    /// On a thread of this process: no memory cap, no disk bound, and a
    /// build past its timeout is abandoned, not stopped. Only for handlers
    /// whose code is trusted.
    InProcess,
}

impl Default for BuildIsolation {
    fn default() -> Self {
        BuildIsolation::Process { program: None }
    }
}

/// Why a build produced no outcome.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum WorkerError {
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("exceeded its memory limit of {} MiB", .0 >> 20)]
    Memory(u64),
    #[error("exceeded its disk limit ({0})")]
    Disk(String),
    #[error("{0}")]
    Crashed(String),
    #[error(
        "no build worker: the pycage binary was not found next to {0}; set \
         RuntimeConfig::build_isolation to BuildIsolation::Process {{ program: Some(..) }}"
    )]
    NoWorker(String),
}

/// Run `job` as `isolation` says, within `limits`. `scratch` is the build
/// directory (the child's working and temporary directory, and what the
/// disk limit measures).
pub(crate) fn execute(
    job: &Job,
    isolation: &BuildIsolation,
    limits: &BuildLimits,
    scratch: &Path,
) -> Result<Outcome, WorkerError> {
    match isolation {
        BuildIsolation::InProcess => in_process(job, limits.timeout),
        BuildIsolation::Process { program } => {
            let program = match program {
                Some(program) => program.clone(),
                None => find_worker()?,
            };
            in_child(&program, job, limits, scratch)
        }
    }
}

/// The pycage binary: this one, or a sibling of this executable.
fn find_worker() -> Result<PathBuf, WorkerError> {
    let exe = std::env::current_exe().map_err(|e| WorkerError::NoWorker(e.to_string()))?;
    if exe.file_stem().is_some_and(|s| s == "pycage") {
        return Ok(exe);
    }
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    [dir.join("pycage"), dir.join("../pycage")]
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| WorkerError::NoWorker(exe.display().to_string()))
}

fn in_process(job: &Job, timeout: Duration) -> Result<Outcome, WorkerError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let job = job.clone();
    std::thread::Builder::new()
        .name("pycage-build".into())
        .stack_size(16 << 20)
        .spawn(move || {
            let _ = tx.send(job::run(&job));
        })
        .map_err(|e| WorkerError::Crashed(format!("cannot start the build thread: {e}")))?;
    match rx.recv_timeout(timeout) {
        Ok(outcome) => Ok(outcome),
        // A thread cannot be stopped: it is left to finish on its own.
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(WorkerError::Timeout(timeout)),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            Err(WorkerError::Crashed("the build thread panicked".into()))
        }
    }
}

fn in_child(
    program: &Path,
    job: &Job,
    limits: &BuildLimits,
    scratch: &Path,
) -> Result<Outcome, WorkerError> {
    let tmp = scratch.join("tmp");
    std::fs::create_dir_all(&tmp).map_err(|e| WorkerError::Crashed(e.to_string()))?;
    let mut command = Command::new(program);
    command
        .arg(WORKER_ARG)
        .env_clear()
        .env("TMPDIR", &tmp)
        .current_dir(scratch)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for name in ["PYCAGE_LOG", "RUST_BACKTRACE", "PYCAGE_PERFMAP"] {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
    supervise::confine(&mut command, limits);
    let mut child = command
        .spawn()
        .map_err(|e| WorkerError::Crashed(format!("cannot start {}: {e}", program.display())))?;
    let request = serde_json::to_vec(job).expect("a job serialises");
    if let Some(mut stdin) = child.stdin.take() {
        // A worker that died at once shows up in its exit status below.
        let _ = stdin.write_all(&request);
    }
    let ended = supervise::supervise(child, limits, scratch);
    if !ended.output.trim().is_empty() {
        tracing::debug!(output = %crate::guest_text::escape_controls(&ended.output), "build worker output");
    }
    match ended.stopped {
        Some(Stop::Timeout(_)) => return Err(WorkerError::Timeout(limits.timeout)),
        Some(Stop::Disk(what)) => return Err(WorkerError::Disk(what)),
        None => {}
    }
    let out_of_memory = supervise::out_of_memory(&ended.output);
    if !ended.status.success() {
        if out_of_memory {
            return Err(WorkerError::Memory(limits.memory_bytes));
        }
        return Err(WorkerError::Crashed(format!(
            "the build worker {}: {}",
            ended.status,
            crate::guest_text::one_line(ended.output.trim(), 4096)
        )));
    }
    let outcome = untrusted::read_file_in(&job.out_dir, job::OUTCOME, job::MAX_OUTCOME_BYTES)
        .map_err(|e| WorkerError::Crashed(e.to_string()))?
        .ok_or_else(|| WorkerError::Crashed("the build worker wrote no outcome".into()))?;
    let outcome: Outcome = serde_json::from_slice(&outcome)
        .map_err(|e| WorkerError::Crashed(format!("unreadable build outcome: {e}")))?;
    if out_of_memory && let Outcome::Failed(_) = outcome {
        return Err(WorkerError::Memory(limits.memory_bytes));
    }
    Ok(outcome)
}

/// Longest job description a worker reads from its stdin.
const MAX_JOB_BYTES: u64 = 1 << 20;

/// The worker's side: read a job from stdin, run it, write the outcome.
/// Exit status 0 whenever an outcome was written (a refused or failed
/// build included); 2 when the job could not be read or answered.
pub fn worker_main() -> ExitCode {
    if std::env::var_os("PYCAGE_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("PYCAGE_LOG")
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .try_init();
    }
    let mut request = Vec::new();
    if let Err(error) = std::io::stdin()
        .take(MAX_JOB_BYTES)
        .read_to_end(&mut request)
    {
        eprintln!("pycage build-worker: reading the job: {error}");
        return ExitCode::from(2);
    }
    let job: Job = match serde_json::from_slice(&request) {
        Ok(job) => job,
        Err(error) => {
            eprintln!(
                "pycage build-worker: not a job ({error}); this command is run by pycage itself"
            );
            return ExitCode::from(2);
        }
    };
    // componentize-py recurses deeply: a thread with a big stack.
    let worker_job = job.clone();
    let outcome = std::thread::Builder::new()
        .name("pycage-build".into())
        .stack_size(16 << 20)
        .spawn(move || job::run(&worker_job))
        .map(|thread| {
            thread
                .join()
                .unwrap_or_else(|_| Outcome::Failed("the build panicked".into()))
        })
        .unwrap_or_else(|e| Outcome::Failed(format!("cannot start the build thread: {e}")));
    let path = job.out_dir.join(job::OUTCOME);
    match std::fs::write(
        &path,
        serde_json::to_vec(&outcome).expect("an outcome serialises"),
    ) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("pycage build-worker: writing {}: {error}", path.display());
            ExitCode::from(2)
        }
    }
}
