//! Loading an unchanged handler without reading it again.
//!
//! A handler's cache key hashes every byte of its files, so a cache hit
//! used to read the whole tree (a 9,000-file `vendor/` took ~37 ms of a
//! `pycage run`, bigger files far more). The index remembers, per handler,
//! the key its files had and the [`Stamp`] of each file when they were read
//! (device, inode, size, mtime and ctime): when a walk that only stats the
//! tree finds the same stamps, the files are the ones that were hashed,
//! and the entry is loaded without reading them.
//!
//! Why a stamp is enough: any write to a file moves its ctime, which no one
//! can set back (not even with `utimes`), with the exception below; a file
//! replaced by another has another inode or device, or a new ctime. What a
//! stamp cannot tell apart
//! is two writes within one tick of the filesystem's clock, the second
//! after the read: so a tree with a file changed less than [`RACY`] before
//! it was read is not indexed (as git does with its index). A tenant who
//! could still fool it would only get its own previous build of the same
//! directory back. The index lives in the private cache root, each record
//! sealed with the cache's key like every manifest.
//!
//! One thing a stamp cannot see: writes through a shared memory mapping
//! after the first one to a page do not move mtime or ctime (on tmpfs,
//! never). So the index is only used where the directory's owner is the
//! one running pycage (`RuntimeConfig::trust_file_stamps`, on for the
//! CLI's one-shot commands), never for tenants' directories in `serve`.

use std::time::{Duration, SystemTime};

use super::{Cache, field, hasher, short};
use crate::build::stage::HandlerSource;
use crate::host_fs::private;

/// How recently a file may have changed, before the read, for its tree to
/// be indexed: well over any filesystem's timestamp granularity.
const RACY: Duration = Duration::from_secs(2);

const INDEX: &str = "index";
const CONTEXT: &str = "pycage handler index v1";

#[derive(serde::Serialize, serde::Deserialize)]
struct Record {
    fingerprint: String,
    key: String,
}

/// What identifies `source` as it is on disk: the toolchain (through the
/// key prefix every handler key has), the path, the entry module and app,
/// and every file's name and stamp, and what was left out.
fn fingerprint(source: &HandlerSource) -> String {
    let mut h = hasher();
    field(&mut h, b"handler-index");
    let toolchain = super::handler_key(&source.entry_spec(), &Default::default(), &[]);
    field(&mut h, toolchain.as_bytes());
    field(&mut h, source.path.as_os_str().as_encoded_bytes());
    field(&mut h, &[u8::from(source.is_file)]);
    let snapshot = source.snapshot();
    for file in &snapshot.files {
        let s = file.stamp;
        field(&mut h, file.relative.as_bytes());
        for n in [s.dev, s.ino, s.size] {
            h.update(&n.to_le_bytes());
        }
        for n in [s.mtime.0, s.mtime.1, s.ctime.0, s.ctime.1] {
            h.update(&n.to_le_bytes());
        }
    }
    for (path, reason) in &snapshot.skipped {
        field(&mut h, path.as_os_str().as_encoded_bytes());
        field(&mut h, reason.as_bytes());
    }
    short(h)
}

/// Whether a file of `source` changed less than [`RACY`] before `read_at`
/// (or after it): then its stamp may not tell a later write apart.
pub(crate) fn racy(source: &HandlerSource, read_at: SystemTime) -> bool {
    let Ok(read) = read_at.duration_since(SystemTime::UNIX_EPOCH) else {
        return true;
    };
    let limit = read.saturating_sub(RACY);
    source.snapshot().files.iter().any(|f| {
        [f.stamp.mtime, f.stamp.ctime].iter().any(|&(s, ns)| {
            u64::try_from(s)
                .map(|s| Duration::new(s, ns.clamp(0, 999_999_999) as u32) >= limit)
                .unwrap_or(true)
        })
    })
}

/// Where `source`'s record lives: one per handler path and entry, so that
/// a handler that keeps changing keeps one record, not one per version.
fn slot(source: &HandlerSource) -> String {
    let mut h = hasher();
    field(&mut h, b"handler-index-slot");
    field(&mut h, source.path.as_os_str().as_encoded_bytes());
    field(&mut h, source.entry_spec().as_bytes());
    short(h)
}

impl Cache {
    /// The handler key recorded for `source` (stamped) as it is now, if a
    /// sealed record of exactly these stamps is there.
    pub(crate) fn indexed(&self, source: &HandlerSource) -> Option<String> {
        let opened = self.open().ok()?;
        let index = private::open_dir(opened.root(), INDEX).ok()?;
        let (fd, stat) = private::open_file(&index, &slot(source)).ok()?;
        let bytes = crate::host_fs::untrusted::read_to_end(fd, &stat, 4096, &self.root).ok()?;
        let record: Record = opened.key().open(CONTEXT, &bytes)?;
        (record.fingerprint == fingerprint(source)).then_some(record.key)
    }

    /// Record that `source` (read) is `key`. Best effort: a failure only
    /// means the next load reads the files again.
    pub(crate) fn index(&self, source: &HandlerSource, key: &str) {
        let Ok(opened) = self.open() else { return };
        let dir = self.root.join(INDEX);
        if private::create_dir_all(&dir).is_err() {
            return;
        }
        let record = Record {
            fingerprint: fingerprint(source),
            key: key.to_owned(),
        };
        let sealed = opened.key().seal(CONTEXT, &record);
        let slot = slot(source);
        let temporary = dir.join(format!(
            ".{slot}.{}.{:x}",
            std::process::id(),
            rand_suffix()
        ));
        if private::write_file(&temporary, &sealed).is_ok()
            && std::fs::rename(&temporary, dir.join(&slot)).is_err()
        {
            let _ = std::fs::remove_file(&temporary);
        }
    }
}

/// Tells concurrent writers of one record apart (with the process id);
/// `write_file` refuses a name that exists, so a clash only skips a write.
fn rand_suffix() -> u64 {
    let mut bytes = [0u8; 8];
    let _ = rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty());
    u64::from_le_bytes(bytes)
}
