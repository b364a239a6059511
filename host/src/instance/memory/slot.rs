//! One slot: the address-space reservation a guest's linear memory lives
//! in, mapped from the memory image, and its reset between instances.

use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;

use super::image::{MemoryImage, page_size};

/// The shape wasmtime asks for: `initial` accessible bytes, never moving
/// within `reservation` bytes, followed by `guard` inaccessible bytes (the
/// compiled code elides bounds checks that the reservation and guard cover).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub initial: usize,
    pub reservation: usize,
    pub guard: usize,
}

/// How a reset restored the memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reset {
    /// The private pages were copied back from the image (or zeroed): this
    /// many bytes. The slot keeps its pages mapped, so the next instance
    /// takes no page faults on them.
    Copied(usize),
    /// The initial range was mapped anew: everything private was dropped,
    /// and the next instance faults pages in again as it touches them.
    Remapped,
}

pub(crate) struct Slot {
    /// The whole reservation: a guard before the memory, the memory's
    /// reservation, the guard after it.
    mapping: NonNull<u8>,
    mapping_len: usize,
    base: NonNull<u8>,
    geometry: Geometry,
    accessible: usize,
    /// Scratch list of dirty runs, kept to avoid allocating on every reset.
    runs: Vec<Range<usize>>,
}

// SAFETY: a slot owns its mapping exclusively; the raw pointers are only
// addresses of that mapping, used by whichever thread holds the slot.
unsafe impl Send for Slot {}
unsafe impl Sync for Slot {}

impl Slot {
    /// Reserve the address space and map the image's initial contents.
    pub(crate) fn new(image: &MemoryImage, geometry: Geometry) -> io::Result<Slot> {
        let page = page_size();
        let aligned = |n: usize| n.is_multiple_of(page);
        if !(aligned(geometry.initial) && aligned(geometry.reservation) && aligned(geometry.guard))
            || geometry.initial > geometry.reservation
        {
            return Err(io::Error::other(format!(
                "unusable memory geometry {geometry:?}"
            )));
        }
        if image.len() > geometry.initial {
            return Err(io::Error::other(format!(
                "the memory image ({} bytes) is larger than the memory ({} bytes)",
                image.len(),
                geometry.initial
            )));
        }
        // A guard before the memory as well as after it, as wasmtime's own
        // allocator does: defence in depth against a miscompiled offset.
        let mapping_len = geometry
            .guard
            .checked_mul(2)
            .and_then(|g| g.checked_add(geometry.reservation))
            .ok_or_else(|| io::Error::other("memory reservation overflows"))?;
        // SAFETY: a fresh anonymous reservation; nothing else uses its range.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapping_len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mapping = NonNull::new(ptr.cast::<u8>()).expect("mmap succeeded");
        // SAFETY: `guard` bytes into a mapping of `mapping_len > guard` bytes.
        let base = unsafe { mapping.add(geometry.guard) };
        let mut slot = Slot {
            mapping,
            mapping_len,
            base,
            geometry,
            accessible: 0,
            runs: Vec::new(),
        };
        // Page-sized tracking: a transparent huge page would turn a one-byte
        // write into a 2 MiB reset.
        #[cfg(target_os = "linux")]
        // SAFETY: advice on our own reservation; failure only costs speed.
        unsafe {
            libc::madvise(
                slot.base.as_ptr().cast(),
                geometry.reservation,
                libc::MADV_NOHUGEPAGE,
            );
        }
        slot.map_initial(image)?;
        Ok(slot)
    }

    pub(crate) fn geometry(&self) -> Geometry {
        self.geometry
    }

    pub(crate) fn base(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    pub(crate) fn accessible(&self) -> usize {
        self.accessible
    }

    /// Make `size` bytes accessible (the memory grew). Never moves.
    pub(crate) fn grow_to(&mut self, size: usize) -> io::Result<()> {
        if size <= self.accessible {
            return Ok(());
        }
        if size > self.geometry.reservation || !size.is_multiple_of(page_size()) {
            return Err(io::Error::other(format!(
                "cannot grow memory to {size} bytes (reservation {})",
                self.geometry.reservation
            )));
        }
        // SAFETY: the range lies inside our reservation, past what is
        // accessible now, so no live reference points into it.
        let rc = unsafe {
            libc::mprotect(
                self.base.as_ptr().add(self.accessible).cast(),
                size - self.accessible,
                libc::PROT_READ | libc::PROT_WRITE,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        self.accessible = size;
        Ok(())
    }

    /// Bring the memory back to exactly the image's initial contents and
    /// size, for the next instance.
    ///
    /// Pages the last instance wrote are copied back from the image (or
    /// zeroed past its end) when the kernel can list them and they total at
    /// most `keep_resident` bytes; otherwise the initial range is mapped
    /// anew. Growth beyond the initial size is always mapped anew as
    /// inaccessible zeros. An error leaves the slot unusable: drop it.
    pub(crate) fn reset(&mut self, image: &MemoryImage, keep_resident: usize) -> io::Result<Reset> {
        let initial = self.geometry.initial;
        if self.accessible > initial {
            // SAFETY: the grown range lies inside our reservation and the
            // instance that used it is gone.
            unsafe {
                self.map_fixed(
                    initial..self.accessible,
                    libc::PROT_NONE,
                    libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    None,
                )?
            };
            self.accessible = initial;
        }
        if let Some(copied) = self.copy_back_private_pages(image, keep_resident)? {
            return Ok(Reset::Copied(copied));
        }
        self.map_initial(image)?;
        Ok(Reset::Remapped)
    }

    /// Copy back what the scan lists as private; `None` when the kernel
    /// cannot scan or there is more than `keep_resident` to copy.
    #[cfg(target_os = "linux")]
    fn copy_back_private_pages(
        &mut self,
        image: &MemoryImage,
        keep_resident: usize,
    ) -> io::Result<Option<usize>> {
        let Some(pagemap) = super::pagemap::pagemap() else {
            return Ok(None);
        };
        let base = self.base.as_ptr() as usize;
        let initial = base..base + self.geometry.initial;
        let mut runs = std::mem::take(&mut self.runs);
        runs.clear();
        let mut total = 0usize;
        let scanned = pagemap.private_runs(initial.clone(), |run| {
            total = total.saturating_add(run.len());
            runs.push(run);
        });
        let result = match scanned {
            Err(error) => {
                tracing::debug!(%error, "PAGEMAP_SCAN failed; remapping the slot");
                Ok(None)
            }
            Ok(()) if total > keep_resident => Ok(None),
            Ok(()) => {
                for run in &runs {
                    if run.start < initial.start || run.end > initial.end || run.start > run.end {
                        return Err(io::Error::other("PAGEMAP_SCAN listed a foreign range"));
                    }
                    self.restore(image, run.start - base..run.end - base);
                }
                Ok(Some(total))
            }
        };
        self.runs = runs;
        result
    }

    #[cfg(not(target_os = "linux"))]
    fn copy_back_private_pages(&mut self, _: &MemoryImage, _: usize) -> io::Result<Option<usize>> {
        Ok(None)
    }

    /// Write the initial contents over `range` (offsets into the memory,
    /// within the initial size): the image's bytes, zeros past its end.
    fn restore(&mut self, image: &MemoryImage, range: Range<usize>) {
        let source = image.bytes();
        let copied = range.start.min(source.len())..range.end.min(source.len());
        let zeroed = range.start.max(source.len())..range.end;
        // SAFETY: `range` lies within the initial size, which is mapped
        // read-write; the image is a separate mapping, so they cannot
        // overlap; no instance uses the slot during a reset.
        unsafe {
            let dst = self.base.as_ptr();
            if !copied.is_empty() {
                std::ptr::copy_nonoverlapping(
                    source.as_ptr().add(copied.start),
                    dst.add(copied.start),
                    copied.len(),
                );
            }
            if !zeroed.is_empty() {
                std::ptr::write_bytes(dst.add(zeroed.start), 0, zeroed.len());
            }
        }
    }

    /// Map the initial range afresh: the image privately, then zeros.
    fn map_initial(&mut self, image: &MemoryImage) -> io::Result<()> {
        let rw = libc::PROT_READ | libc::PROT_WRITE;
        // SAFETY: both ranges lie inside our reservation and no instance
        // uses the slot while it is (re)mapped.
        unsafe {
            if let Some(file) = image.file() {
                self.map_fixed(0..image.len(), rw, 0, Some(file.as_raw_fd()))?;
            }
            if self.geometry.initial > image.len() {
                self.map_fixed(
                    image.len()..self.geometry.initial,
                    rw,
                    libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    None,
                )?;
            }
        }
        self.accessible = self.geometry.initial;
        Ok(())
    }

    /// Replace `range` (offsets into the memory) with a new private mapping.
    ///
    /// # Safety
    /// `range` must lie within the reservation, and nothing may be using
    /// the pages it replaces.
    unsafe fn map_fixed(
        &mut self,
        range: Range<usize>,
        prot: libc::c_int,
        flags: libc::c_int,
        fd: Option<libc::c_int>,
    ) -> io::Result<()> {
        debug_assert!(range.end <= self.geometry.reservation);
        if range.is_empty() {
            return Ok(());
        }
        // SAFETY: per the caller's contract.
        let ptr = unsafe {
            libc::mmap(
                self.base.as_ptr().add(range.start).cast(),
                range.len(),
                prot,
                libc::MAP_PRIVATE | libc::MAP_FIXED | flags,
                fd.unwrap_or(-1),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the reservation `new` made.
        unsafe { libc::munmap(self.mapping.as_ptr().cast(), self.mapping_len) };
    }
}
