//! A memory image: the guest's linear memory as pre-initialisation left it,
//! stored as a file that every slot maps privately (copy-on-write).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::ptr::NonNull;

/// The image's bytes, mapped read-only: the file to map into slots and the
/// source that dirty pages are copied back from.
pub(crate) struct MemoryImage {
    file: Option<File>,
    bytes: Option<NonNull<u8>>,
    len: usize,
}

// SAFETY: the mapping is read-only and lives as long as the value; sharing
// it between threads is sharing immutable bytes.
unsafe impl Send for MemoryImage {}
unsafe impl Sync for MemoryImage {}

impl MemoryImage {
    /// No image: memory starts as zeros (wasmtime then applies any data
    /// segments the module still has).
    pub(crate) fn empty() -> Self {
        Self {
            file: None,
            bytes: None,
            len: 0,
        }
    }

    /// Map the image file at `path`. Its length must be a multiple of the
    /// host page size (`write` pads it).
    #[cfg(test)]
    pub(crate) fn open(path: &Path) -> io::Result<Self> {
        Self::from_file(File::open(path)?)
    }

    /// Map the open image `file`.
    pub(crate) fn from_file(file: File) -> io::Result<Self> {
        let len = usize::try_from(file.metadata()?.len()).map_err(io::Error::other)?;
        if !len.is_multiple_of(page_size()) {
            return Err(io::Error::other(format!(
                "{len} bytes is not a whole number of pages"
            )));
        }
        if len == 0 {
            return Ok(Self::empty());
        }
        // SAFETY: a fresh read-only private mapping of a file we opened; no
        // Rust reference points into the address range it takes.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            file: Some(file),
            bytes: NonNull::new(ptr.cast()),
            len,
        })
    }

    /// Write `bytes`, padded with zeros to whole pages, as a new image file
    /// private to this user (0600).
    pub(crate) fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)?;
        file.write_all(bytes)?;
        let padding = bytes.len().next_multiple_of(page_size()) - bytes.len();
        file.write_all(&vec![0; padding])
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn file(&self) -> Option<&File> {
        self.file.as_ref()
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        match self.bytes {
            // SAFETY: `ptr` maps `len` readable bytes until `self` is dropped.
            Some(ptr) => unsafe { std::slice::from_raw_parts(ptr.as_ptr(), self.len) },
            None => &[],
        }
    }
}

impl Drop for MemoryImage {
    fn drop(&mut self) {
        if let Some(ptr) = self.bytes {
            // SAFETY: unmapping exactly the mapping `open` made.
            unsafe { libc::munmap(ptr.as_ptr().cast(), self.len) };
        }
    }
}

impl std::fmt::Debug for MemoryImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryImage")
            .field("len", &self.len)
            .finish()
    }
}

pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
}
