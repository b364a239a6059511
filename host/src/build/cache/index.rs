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
//! A handler with a virtualenv (`--venv`) is indexed with the stamps of
//! the environment's trees too (site-packages and its `.pth` directories).
//!
//! One thing a stamp cannot see: writes through a shared memory mapping
//! after the first one to a page do not move mtime or ctime (on tmpfs,
//! never). So the index is only used where the directory's owner is the
//! one running pycage (`RuntimeConfig::trust_file_stamps`, on for the
//! CLI's one-shot commands), never for tenants' directories in `serve`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::{Cache, field, hasher, short};
use crate::build::deps::venv::{self, Granted};
use crate::build::stage::{HandlerSource, Snapshot};
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
    /// The `.pth` directories of the handler's virtualenv, after its
    /// site-packages: which trees to stamp next time.
    #[serde(default)]
    venv_dirs: Vec<PathBuf>,
}

/// A virtualenv's trees as the index sees them: real path and stamps.
pub(crate) type VenvTrees<'a> = [(&'a Path, &'a Snapshot)];

/// What identifies `source` as it is on disk: the toolchain (through the
/// key prefix every handler key has), the path, the entry module and app,
/// and every file's name and stamp, and what was left out; then the same
/// for each tree of its virtualenv, if it has one.
fn fingerprint(source: &HandlerSource, venv: &VenvTrees<'_>) -> String {
    let mut h = hasher();
    field(&mut h, b"handler-index");
    let toolchain = super::handler_key(&source.entry_spec(), &Default::default(), &[]);
    field(&mut h, toolchain.as_bytes());
    field(&mut h, source.path.as_os_str().as_encoded_bytes());
    field(&mut h, &[u8::from(source.is_file)]);
    stamp_fields(&mut h, source.snapshot());
    for (path, snapshot) in venv {
        field(&mut h, b"venv-tree");
        field(&mut h, path.as_os_str().as_encoded_bytes());
        stamp_fields(&mut h, snapshot);
    }
    short(h)
}

fn stamp_fields(h: &mut blake3::Hasher, snapshot: &Snapshot) {
    field(h, &(snapshot.files.len() as u64).to_le_bytes());
    for file in &snapshot.files {
        let s = file.stamp;
        field(h, file.relative.as_bytes());
        for n in [s.dev, s.ino, s.size] {
            h.update(&n.to_le_bytes());
        }
        for n in [s.mtime.0, s.mtime.1, s.ctime.0, s.ctime.1] {
            h.update(&n.to_le_bytes());
        }
    }
    for (path, reason) in &snapshot.skipped {
        field(h, path.as_os_str().as_encoded_bytes());
        field(h, reason.as_bytes());
    }
}

/// Whether a file of `source` or its virtualenv changed less than
/// [`RACY`] before `read_at` (or after it): then its stamp may not tell a
/// later write apart.
pub(crate) fn racy(source: &HandlerSource, venv: &VenvTrees<'_>, read_at: SystemTime) -> bool {
    let Ok(read) = read_at.duration_since(SystemTime::UNIX_EPOCH) else {
        return true;
    };
    let limit = read.saturating_sub(RACY);
    std::iter::once(source.snapshot())
        .chain(venv.iter().map(|(_, snapshot)| *snapshot))
        .flat_map(|snapshot| &snapshot.files)
        .any(|f| {
            [f.stamp.mtime, f.stamp.ctime].iter().any(|&(s, ns)| {
                u64::try_from(s)
                    .map(|s| Duration::new(s, ns.clamp(0, 999_999_999) as u32) >= limit)
                    .unwrap_or(true)
            })
        })
}

/// Where `source`'s record lives: one per handler path, entry and
/// virtualenv, so that a handler that keeps changing keeps one record,
/// not one per version.
fn slot(source: &HandlerSource, venv: Option<&Path>) -> String {
    let mut h = hasher();
    field(&mut h, b"handler-index-slot");
    field(&mut h, source.path.as_os_str().as_encoded_bytes());
    field(&mut h, source.entry_spec().as_bytes());
    if let Some(venv) = venv {
        field(&mut h, venv.as_os_str().as_encoded_bytes());
    }
    short(h)
}

impl Cache {
    /// The handler key recorded for `source` (stamped) and its virtualenv
    /// `venv` as they are now, if a sealed record of exactly these stamps
    /// is there; with the virtualenv's trees (stamped), which the caller
    /// announces as granted.
    pub(crate) fn indexed(
        &self,
        source: &HandlerSource,
        venv: Option<&Path>,
    ) -> Option<(String, Vec<Granted>)> {
        let opened = self.open().ok()?;
        let index = private::open_dir(opened.root(), INDEX).ok()?;
        let (fd, stat) = private::open_file(&index, &slot(source, venv)).ok()?;
        let bytes = crate::host_fs::untrusted::read_to_end(fd, &stat, 1 << 20, &self.root).ok()?;
        let record: Record = opened.key().open(CONTEXT, &bytes)?;
        let trees = match venv {
            Some(venv) => venv::stamp(venv, &record.venv_dirs).ok()?,
            None => Vec::new(),
        };
        let stamped: Vec<_> = trees
            .iter()
            .map(|t| (t.path.as_path(), &t.snapshot))
            .collect();
        (record.fingerprint == fingerprint(source, &stamped)).then_some((record.key, trees))
    }

    /// Record that `source` (read) with the virtualenv `venv` (its trees
    /// read: site-packages first) is `key`. Best effort: a failure only
    /// means the next load reads the files again.
    pub(crate) fn index(
        &self,
        source: &HandlerSource,
        venv: Option<(&Path, &VenvTrees<'_>)>,
        key: &str,
    ) {
        let Ok(opened) = self.open() else { return };
        let dir = self.root.join(INDEX);
        if private::create_dir_all(&dir).is_err() {
            return;
        }
        let trees = venv.map_or(&[][..], |(_, trees)| trees);
        let record = Record {
            fingerprint: fingerprint(source, trees),
            key: key.to_owned(),
            venv_dirs: trees
                .iter()
                .skip(1)
                .map(|(path, _)| path.to_path_buf())
                .collect(),
        };
        let sealed = opened.key().seal(CONTEXT, &record);
        let slot = slot(source, venv.map(|(path, _)| path));
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
