//! Cranelift's incremental compilation cache, kept on disk in the build cache.
//!
//! Every handler image contains the same libpython, libc and runtime glue;
//! only the small bindings module and the memory snapshot differ. Cranelift
//! keys each function by a hash of its IR and the target, so a handler-miss
//! build finds almost all of its ~15,000 functions here and compiles only
//! what is new (measured in the README's performance section).
//!
//! Entries are native code that is linked into later builds, so they live
//! under the same private cache root as the images, and each file starts
//! with a MAC of its value under the cache owner's key (`cache::seal`): a
//! torn, damaged or planted entry reads as a miss and is compiled afresh,
//! never linked.

use std::borrow::Cow;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use wasmtime::CacheStore;

use crate::build::cache::seal::SealKey;

/// Length of the MAC in front of each value.
const CHECKSUM_LEN: usize = blake3::OUT_LEN;
/// The MAC's domain: the entry's own key is in it, so that a valid entry
/// moved to another key's place is refused there.
fn context(key: &[u8]) -> String {
    format!("pycage code cache entry {}", blake3::hash(key).to_hex())
}
/// No compiled function is anywhere near this big; a larger file is not one.
const MAX_ENTRY_BYTES: u64 = 64 << 20;

/// Beyond this many bytes of entries the cache is emptied before the next
/// build. One toolchain's functions take ~35 MB and each new handler adds
/// ~1 MB, so this is hundreds of builds; the build after a trim compiles
/// everything again (a few seconds more) and refills it.
pub(crate) const CODE_CACHE_LIMIT: u64 = 512 << 20;

#[derive(Debug)]
pub(crate) struct CodeCache {
    dir: PathBuf,
    key: SealKey,
}

impl CodeCache {
    /// A cache whose entries live under `dir` (created on first insert),
    /// sealed with `key`.
    pub(crate) fn new(dir: PathBuf, key: SealKey) -> Self {
        Self { dir, key }
    }

    /// `<dir>/<first two hex digits>/<hex>`, from a hash of the key: keys
    /// are opaque bytes, file names must not be.
    fn entry(&self, key: &[u8]) -> PathBuf {
        let hex = blake3::hash(key).to_hex();
        self.dir.join(&hex[..2]).join(hex.as_str())
    }

    /// Empty the cache if its entries exceed `limit` bytes: the bound on
    /// what compiling can leave on disk. Nothing tracks which entries are
    /// still used, so all go; failures are ignored (it is only a cache).
    pub(crate) fn trim(&self, limit: u64) {
        let total: u64 = fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|fan_out| fs::read_dir(fan_out.path()).ok())
            .flatten()
            .flatten()
            .filter_map(|entry| entry.metadata().ok())
            .map(|metadata| metadata.len())
            .sum();
        if total > limit {
            tracing::info!(
                bytes = total,
                limit,
                "emptying the compiled-code cache at {}",
                self.dir.display()
            );
            let _ = fs::remove_dir_all(&self.dir);
        }
    }

    fn write(&self, key: &[u8], path: &Path, value: &[u8]) -> std::io::Result<()> {
        let parent = path.parent().expect("entries live in a fan-out directory");
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true);
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(parent)?;
        // Written aside and renamed into place, so that a reader (another
        // compile thread, another pycage) sees a whole entry or none.
        let mut file = tempfile::NamedTempFile::new_in(parent)?;
        file.write_all(&self.key.mac(&context(key), value))?;
        file.write_all(value)?;
        file.persist(path).map_err(|e| e.error)?;
        Ok(())
    }
}

impl CacheStore for CodeCache {
    fn get(&self, key: &[u8]) -> Option<Cow<'_, [u8]>> {
        let path = self.entry(key);
        let mut bytes = crate::host_fs::untrusted::read_file_in(
            path.parent()?,
            path.file_name()?.to_str()?,
            MAX_ENTRY_BYTES,
        )
        .ok()??;
        if bytes.len() < CHECKSUM_LEN {
            return None;
        }
        let value = &bytes[CHECKSUM_LEN..];
        if !self
            .key
            .verify(&context(key), value, &bytes[..CHECKSUM_LEN])
        {
            return None;
        }
        bytes.drain(..CHECKSUM_LEN);
        Some(Cow::Owned(bytes))
    }

    fn insert(&self, key: &[u8], value: Vec<u8>) -> bool {
        // A failed write only costs a recompile next time.
        self.write(key, &self.entry(key), &value).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_misses_on_damage() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CodeCache::new(dir.path().join("code"), SealKey::fixed(7));
        assert!(cache.get(b"key").is_none());
        assert!(cache.insert(b"key", b"compiled code".to_vec()));
        assert_eq!(cache.get(b"key").as_deref(), Some(&b"compiled code"[..]));
        assert!(cache.get(b"other key").is_none());

        // A flipped byte or a truncated file is a miss, not bad code.
        let path = cache.entry(b"key");
        let mut bytes = fs::read(&path).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert!(cache.get(b"key").is_none());
        fs::write(&path, &bytes[..10]).unwrap();
        assert!(cache.get(b"key").is_none());

        // An entry sealed under another cache's key is not linked, nor one
        // moved to another entry's place.
        let other = CodeCache::new(dir.path().join("code"), SealKey::fixed(8));
        assert!(cache.insert(b"key", b"compiled code".to_vec()));
        assert!(other.get(b"key").is_none());
        let moved_to = cache.entry(b"other key");
        fs::create_dir_all(moved_to.parent().unwrap()).unwrap();
        fs::copy(cache.entry(b"key"), &moved_to).unwrap();
        assert!(cache.get(b"other key").is_none());

        // Re-inserting repairs it.
        assert!(cache.insert(b"key", b"compiled code".to_vec()));
        assert_eq!(cache.get(b"key").as_deref(), Some(&b"compiled code"[..]));
    }

    #[test]
    fn trim_empties_only_past_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CodeCache::new(dir.path().join("code"), SealKey::fixed(7));
        cache.trim(0); // no directory yet: nothing to do
        for key in [&b"a"[..], b"b", b"c"] {
            assert!(cache.insert(key, vec![7; 1000]));
        }
        let stored = 3 * (1000 + CHECKSUM_LEN as u64);
        cache.trim(stored);
        assert!(cache.get(b"a").is_some());
        cache.trim(stored - 1);
        assert!(cache.get(b"a").is_none() && cache.get(b"c").is_none());
        // And it fills again afterwards.
        assert!(cache.insert(b"a", vec![7; 1000]));
        assert!(cache.get(b"a").is_some());
    }
}
