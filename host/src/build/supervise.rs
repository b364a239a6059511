//! Running a child process that handles what a tenant chose (the build
//! worker, the dependency installer) under hard limits, and watching it:
//!
//! - `confine` sets, between fork and exec: `RLIMIT_DATA` (memory),
//!   `RLIMIT_FSIZE` (no file larger than the disk limit), `RLIMIT_CPU` (a
//!   backstop for the deadline), no core dumps, umask 077 (what it writes
//!   is private whatever the host's umask), its own process group (a kill
//!   reaches anything it starts) and `PR_SET_PDEATHSIG` (it dies with the
//!   host);
//! - `supervise` reads its output into bounded buffers, kills the group at
//!   the deadline, and measures the directory it writes to, killing the
//!   group past the disk limit, the file-count limit, or at a tree too deep
//!   or unreadable to measure. Files it unlinked but keeps open are in no
//!   tree: the free space of the directory's filesystem is watched too,
//!   and a fall of more than `FREE_SPACE_FACTOR` disk limits stops it.

use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use crate::host_fs::untrusted::{self, Measured};
use crate::limits::BuildLimits;

/// Files and directories a watched directory may hold: a staged handler
/// (`stage::MAX_FILES`), its layers and the bytecode the build writes
/// beside each module, with room to spare.
const MAX_FILES: usize = 4 * crate::build::stage::MAX_FILES;
/// Nesting a watched directory may have (also the most directory handles
/// a measurement holds open).
const MAX_DEPTH: usize = 64;
/// Shortest pause between two measurements; a measurement that takes long
/// (a big tree) spaces the next ones out, so that watching costs the host
/// at most a tenth of a core.
const MIN_POLL: Duration = Duration::from_millis(200);
/// Longest pause between two measurements, however slow the last one:
/// the watch must not fall behind a child that writes fast.
const MAX_POLL: Duration = Duration::from_secs(1);
/// How many disk limits the filesystem's free space may fall by during a
/// build before the build is stopped. The fall includes what other
/// processes write meanwhile (other builds, other tenants' stores), hence
/// the slack; what it catches is space no tree shows, held by files the
/// child unlinked and keeps open, which `RLIMIT_FSIZE` bounds only per file.
const FREE_SPACE_FACTOR: u64 = 2;
/// What is kept of each of the child's output streams.
const MAX_OUTPUT: usize = 64 << 10;

/// Why a supervised child was stopped, or how it ended badly.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum Stop {
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("exceeded its disk limit ({0})")]
    Disk(String),
}

/// How a supervised child ended.
pub(crate) struct Ended {
    pub status: ExitStatus,
    /// Its stdout and stderr, each cut at 64 KiB.
    pub output: String,
    /// Set when the supervisor killed it, or the kernel did for a limit.
    pub stopped: Option<Stop>,
}

/// Make `command` start confined by `limits` (see the module docs).
pub(crate) fn confine(command: &mut Command, limits: &BuildLimits) {
    // CPU seconds: every core busy for the whole timeout, and then some.
    // The soft limit sends SIGXCPU (reported as the timeout), the hard one
    // SIGKILL.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let cpu = limits.timeout.as_secs() * cores + 10;
    let rlimits = [
        (libc::RLIMIT_DATA, limits.memory_bytes, limits.memory_bytes),
        (libc::RLIMIT_FSIZE, limits.disk_bytes, limits.disk_bytes),
        (libc::RLIMIT_CPU, cpu, cpu + 10),
        (libc::RLIMIT_CORE, 0, 0),
    ];
    command.process_group(0);
    // SAFETY: only async-signal-safe calls (umask, setrlimit, prctl) between
    // fork and exec, on values computed before the fork.
    unsafe {
        command.pre_exec(move || {
            libc::umask(0o077);
            for (resource, soft, hard) in rlimits {
                let limit = libc::rlimit {
                    rlim_cur: soft as libc::rlim_t,
                    rlim_max: hard as libc::rlim_t,
                };
                if libc::setrlimit(resource, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            #[cfg(target_os = "linux")]
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Watch `child` (started from a [`confine`]d command, with piped stdout
/// and stderr) until it exits, killing its process group at the deadline
/// or when `watched` outgrows the disk limit.
pub(crate) fn supervise(mut child: Child, limits: &BuildLimits, watched: &Path) -> Ended {
    let started = Instant::now();
    let stdout = child.stdout.take().map(drain);
    let stderr = child.stderr.take().map(drain);
    let mut next_poll = started;
    let mut stopped: Option<Stop> = None;
    let free_at_start = free_bytes(watched);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) => {}
            Err(_) => break None,
        }
        if started.elapsed() >= limits.timeout {
            stopped = Some(Stop::Timeout(limits.timeout));
        } else if Instant::now() >= next_poll {
            let measuring = Instant::now();
            match untrusted::measure(watched, MAX_FILES, MAX_DEPTH) {
                Measured::Bytes(bytes) if bytes > limits.disk_bytes => {
                    stopped = Some(Stop::Disk(untrusted::format_bytes(limits.disk_bytes)));
                }
                Measured::Bytes(_) => {}
                Measured::Unbounded(what) => stopped = Some(Stop::Disk(what.to_owned())),
            }
            if let (Some(before), Some(now)) = (free_at_start, free_bytes(watched))
                && before.saturating_sub(now) > limits.disk_bytes.saturating_mul(FREE_SPACE_FACTOR)
            {
                stopped = Some(Stop::Disk(untrusted::format_bytes(limits.disk_bytes)));
            }
            next_poll = Instant::now() + MIN_POLL.max(measuring.elapsed() * 10).min(MAX_POLL);
        }
        if stopped.is_some() {
            kill_group(&child);
            break child.wait().ok();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = [stdout, stderr]
        .into_iter()
        .flatten()
        .map(|reader| String::from_utf8_lossy(&reader.join().unwrap_or_default()).into_owned())
        .collect::<Vec<_>>()
        .concat();
    let status = status.unwrap_or_else(|| ExitStatus::from_raw(libc::SIGKILL));
    // The kernel's own enforcement of the same limits.
    if stopped.is_none() {
        stopped = match status.signal() {
            Some(libc::SIGXFSZ) => Some(Stop::Disk(untrusted::format_bytes(limits.disk_bytes))),
            Some(libc::SIGXCPU) => Some(Stop::Timeout(limits.timeout)),
            _ => None,
        };
    }
    Ended {
        status,
        output,
        stopped,
    }
}

/// The bytes free to unprivileged users on `path`'s filesystem.
fn free_bytes(path: &Path) -> Option<u64> {
    let stat = rustix::fs::statvfs(path).ok()?;
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// Whether a child's output says it ran out of memory (Rust's allocation
/// failure, or an `ENOMEM` it reported).
pub(crate) fn out_of_memory(output: &str) -> bool {
    output.contains("memory allocation of")
        || output.contains("out of memory")
        || output.contains("Cannot allocate memory")
}

/// Read `stream` on a thread, keeping its first [`MAX_OUTPUT`] bytes and
/// discarding the rest, so that the child never blocks on a full pipe.
fn drain(mut stream: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut buffer = [0u8; 8192];
        while let Ok(n) = stream.read(&mut buffer) {
            if n == 0 {
                break;
            }
            let room = MAX_OUTPUT.saturating_sub(kept.len());
            kept.extend_from_slice(&buffer[..n.min(room)]);
        }
        kept
    })
}

fn kill_group(child: &Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill has no memory-safety preconditions; the group is the
        // child's own (`confine` gave it one).
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
}
