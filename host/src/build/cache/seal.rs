//! Authenticating what pycage stored in its cache, so that a file swapped
//! in by anyone else is refused rather than loaded.
//!
//! The cache root holds a key private to its owner (`key`, 32 random bytes,
//! mode 0600). Each handler entry's manifest (`meta.json`) carries a MAC
//! under that key over its body, and the body records, for every file the
//! host maps or runs (the compiled component, the memory image), its
//! length and BLAKE3 hash plus the identity of the file it was written as
//! (device, inode, change time). Loading checks the MAC, then each file on
//! its open handle: if the identity and length are unchanged the file is
//! the one written (its change time moves on any write, and only root can
//! set it back), otherwise its contents are hashed and compared. Compiled
//! functions in `code/` carry a MAC under the same key.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{Mode, OFlags, Stat};
use serde::{Deserialize, Serialize};

use crate::host_fs::private::{self, NotPrivate};

/// The key file's name in the cache root.
const KEY_FILE: &str = "key";
const KEY_LEN: usize = blake3::KEY_LEN;

/// The cache owner's secret key.
#[derive(Clone)]
pub(crate) struct SealKey([u8; KEY_LEN]);

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(..)")
    }
}

impl SealKey {
    /// The key of the cache whose (checked) root is `root`: read, or made
    /// on first use. The file must be private and exactly 32 bytes.
    pub(crate) fn load_or_create(root: &OwnedFd) -> Result<Self, NotPrivate> {
        match private::open_secret_file(root, KEY_FILE) {
            Ok((fd, _)) => {
                let mut key = [0u8; KEY_LEN];
                let mut file = std::fs::File::from(fd);
                file.read_exact(&mut key)?;
                let mut rest = [0u8; 1];
                if file.read(&mut rest)? != 0 {
                    return Err(NotPrivate::Io(io::Error::other(
                        "the cache key file is not 32 bytes",
                    )));
                }
                Ok(Self(key))
            }
            Err(NotPrivate::Io(error)) if error.kind() == io::ErrorKind::NotFound => {
                let mut key = [0u8; KEY_LEN];
                let mut filled = 0;
                while filled < KEY_LEN {
                    filled += rustix::rand::getrandom(
                        &mut key[filled..],
                        rustix::rand::GetRandomFlags::empty(),
                    )
                    .map_err(io::Error::from)?;
                }
                // Written aside and linked into place, so that a concurrent
                // first use sees a whole key or none.
                let temp = format!(".{KEY_FILE}-{}", std::process::id());
                let fd = rustix::fs::openat(
                    root,
                    temp.as_str(),
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::TRUNC
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(io::Error::from)?;
                let mut file = std::fs::File::from(fd);
                file.write_all(&key)?;
                file.sync_all()?;
                let linked = rustix::fs::linkat(
                    root,
                    temp.as_str(),
                    root,
                    KEY_FILE,
                    rustix::fs::AtFlags::empty(),
                );
                let _ = rustix::fs::unlinkat(root, temp.as_str(), rustix::fs::AtFlags::empty());
                match linked {
                    Ok(()) => Ok(Self(key)),
                    // Another process made the key first: use theirs.
                    Err(rustix::io::Errno::EXIST) => Self::load_or_create(root),
                    Err(error) => Err(NotPrivate::Io(error.into())),
                }
            }
            Err(other) => Err(other),
        }
    }

    /// A key for tests and in-memory uses.
    #[cfg(test)]
    pub(crate) fn fixed(byte: u8) -> Self {
        Self([byte; KEY_LEN])
    }

    /// The MAC of `bytes` in the domain `context`.
    pub(crate) fn mac(&self, context: &str, bytes: &[u8]) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new_keyed(&self.0);
        hasher.update(&(context.len() as u64).to_le_bytes());
        hasher.update(context.as_bytes());
        hasher.update(bytes);
        *hasher.finalize().as_bytes()
    }

    /// Whether `mac` is the MAC of `bytes` in `context` (constant time).
    pub(crate) fn verify(&self, context: &str, bytes: &[u8], mac: &[u8]) -> bool {
        let expected = blake3::Hash::from(self.mac(context, bytes));
        <[u8; 32]>::try_from(mac).is_ok_and(|mac| expected == blake3::Hash::from(mac))
    }

    /// `body` as a sealed document: the body's JSON text and its MAC.
    pub(crate) fn seal<T: Serialize>(&self, context: &str, body: &T) -> Vec<u8> {
        let text = serde_json::to_string(body).expect("a manifest serialises");
        let mac = blake3::Hash::from(self.mac(context, text.as_bytes())).to_hex();
        serde_json::to_vec_pretty(&Sealed {
            body: text,
            mac: mac.to_string(),
        })
        .expect("a sealed manifest serialises")
    }

    /// The body of a document [`seal`](Self::seal) wrote under this key, or
    /// `None` if it is not one (malformed, another key, altered).
    pub(crate) fn open<T: for<'de> Deserialize<'de>>(
        &self,
        context: &str,
        document: &[u8],
    ) -> Option<T> {
        let sealed: Sealed = serde_json::from_slice(document).ok()?;
        let mac = blake3::Hash::from_hex(&sealed.mac).ok()?;
        if !self.verify(context, sealed.body.as_bytes(), mac.as_bytes()) {
            return None;
        }
        serde_json::from_str(&sealed.body).ok()
    }
}

#[derive(Serialize, Deserialize)]
struct Sealed {
    body: String,
    mac: String,
}

/// What a manifest records of one file it vouches for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FileSeal {
    pub name: String,
    pub len: u64,
    pub blake3: String,
    pub dev: u64,
    pub ino: u64,
    pub ctime: (i64, i64),
}

/// How a file matched its seal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Match {
    /// Same file, never written since: not read.
    Identity,
    /// Another file (copied, restored) with the same contents.
    Contents,
}

impl FileSeal {
    /// Seal the file `name` in `dir` as it is now.
    pub(crate) fn of(dir: impl AsFd, name: &str) -> io::Result<Self> {
        let (fd, stat) = private::open_file(dir, name).map_err(|e| match e {
            NotPrivate::Io(error) => error,
            other => io::Error::other(other.to_string()),
        })?;
        Ok(Self {
            name: name.to_owned(),
            len: stat.st_size as u64,
            blake3: hash_fd(&fd)?.to_hex().to_string(),
            dev: stat.st_dev,
            ino: stat.st_ino,
            ctime: (stat.st_ctime, stat.st_ctime_nsec as i64),
        })
    }

    /// Whether the open file (`fd`, `stat`) is the one sealed.
    pub(crate) fn matches(&self, fd: &OwnedFd, stat: &Stat) -> io::Result<Option<Match>> {
        if stat.st_size as u64 != self.len {
            return Ok(None);
        }
        let same_file = stat.st_dev == self.dev
            && stat.st_ino == self.ino
            && (stat.st_ctime, stat.st_ctime_nsec as i64) == self.ctime;
        if same_file {
            return Ok(Some(Match::Identity));
        }
        let hash = hash_fd(fd)?;
        let sealed = blake3::Hash::from_hex(&self.blake3).map_err(io::Error::other)?;
        Ok((hash == sealed).then_some(Match::Contents))
    }
}

/// BLAKE3 of a file's contents, read through a duplicate of `fd` from
/// offset 0.
fn hash_fd(fd: &OwnedFd) -> io::Result<blake3::Hash> {
    let mut file = std::fs::File::from(fd.try_clone()?);
    std::io::Seek::seek(&mut file, io::SeekFrom::Start(0))?;
    let mut hasher = blake3::Hasher::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_made_once_and_kept_private() {
        let dir = tempfile::tempdir().unwrap();
        let root = private::create_dir_all(&dir.path().join("c")).unwrap();
        let first = SealKey::load_or_create(&root).unwrap();
        let again = SealKey::load_or_create(&root).unwrap();
        assert_eq!(first.0, again.0);
        let mode = std::fs::metadata(dir.path().join("c/key")).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o600
        );
        std::fs::write(dir.path().join("c/key"), b"short").unwrap();
        assert!(SealKey::load_or_create(&root).is_err());
    }

    #[test]
    fn sealed_documents_open_only_unaltered_and_under_their_key() {
        let key = SealKey::fixed(1);
        let sealed = key.seal("entry", &vec![1u32, 2, 3]);
        assert_eq!(key.open::<Vec<u32>>("entry", &sealed), Some(vec![1, 2, 3]));
        assert_eq!(key.open::<Vec<u32>>("other", &sealed), None);
        assert_eq!(SealKey::fixed(2).open::<Vec<u32>>("entry", &sealed), None);
        let text = String::from_utf8(sealed)
            .unwrap()
            .replace("[1,2,3]", "[1,2,4]");
        assert_eq!(key.open::<Vec<u32>>("entry", text.as_bytes()), None);
    }

    #[test]
    fn a_sealed_file_matches_itself_a_copy_but_not_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let root = private::create_dir_all(&dir.path().join("c")).unwrap();
        std::fs::write(dir.path().join("c/code"), b"native code").unwrap();
        let seal = FileSeal::of(&root, "code").unwrap();
        let check = || {
            let (fd, stat) = private::open_file(&root, "code").unwrap();
            seal.matches(&fd, &stat).unwrap()
        };
        assert_eq!(check(), Some(Match::Identity));
        // Replaced by a copy with the same bytes: accepted after hashing.
        std::fs::copy(dir.path().join("c/code"), dir.path().join("c/copy")).unwrap();
        std::fs::rename(dir.path().join("c/copy"), dir.path().join("c/code")).unwrap();
        assert_eq!(check(), Some(Match::Contents));
        // Swapped for other code of the same length: refused.
        std::fs::write(dir.path().join("c/code"), b"evil   code").unwrap();
        assert_eq!(check(), None);
    }
}
