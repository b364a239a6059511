//! Linear memory for sandbox instances, reset between requests by copying
//! back only the pages a request wrote.
//!
//! wasmtime 46's pooling allocator resets a slot by copying the whole kept-
//! resident prefix back from the image (~13 MiB for this CPython: most of
//! a request's cost), or scans for dirty pages but gives up after 32 runs
//! of them (a hello request writes ~230 pages in ~160 runs). So pycage
//! supplies the memories itself ([`wasmtime::MemoryCreator`]):
//!
//! - the build moves the pre-initialised heap out of the module's data
//!   segments into a [`MemoryImage`] file (see `flatten`), so wasmtime has
//!   nothing to copy at instantiation;
//! - each slot maps that file privately: pages a guest only reads stay the
//!   file's shared pages, pages it writes become private copies;
//! - when the instance is dropped, `PAGEMAP_SCAN` lists the private pages
//!   (present or swapped out) and exactly those are copied back, however
//!   scattered; the slot then goes back to its handler's idle list.
//!
//! Every fallback is the safe one: no scan (old kernel, not Linux), a failed
//! scan, or more private pages than `keep_resident` remap the whole range
//! from the file; any error during a reset drops the slot.

mod image;
#[cfg(target_os = "linux")]
mod pagemap;
mod slot;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use wasmtime::{LinearMemory, MemoryCreator, MemoryType};

pub(crate) use image::{MemoryImage, page_size};
use slot::{Geometry, Reset, Slot};

/// Counters of one handler's memory resets, for benchmarks and metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ResetStats {
    /// Resets that copied private pages back.
    pub copied: u64,
    /// Bytes those resets copied (or zeroed).
    pub copied_bytes: u64,
    /// Resets that mapped the whole initial range anew.
    pub remapped: u64,
    /// Slots dropped because a reset failed.
    pub failed: u64,
}

/// The memory creator of one handler's engine: hands out slots mapped from
/// that handler's image and takes them back, reset, when instances end.
#[derive(Clone)]
pub(crate) struct SlotMemories(Arc<Pool>);

struct Pool {
    /// Set once the handler is built; until then no memory can be made.
    image: OnceLock<MemoryImage>,
    idle: Mutex<Vec<Slot>>,
    keep_resident: usize,
    budget: Arc<IdleBudget>,
    copied: AtomicU64,
    copied_bytes: AtomicU64,
    remapped: AtomicU64,
    failed: AtomicU64,
}

/// How many reset slots all handlers together keep for reuse: each holds
/// address space and the private pages its last instance wrote.
pub(crate) struct IdleBudget {
    idle: AtomicUsize,
    max: usize,
}

impl IdleBudget {
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(IdleBudget {
            idle: AtomicUsize::new(0),
            max,
        })
    }

    fn try_take(&self) -> bool {
        self.idle
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok()
    }

    fn give_back(&self, n: usize) {
        self.idle.fetch_sub(n, Ordering::AcqRel);
    }
}

impl SlotMemories {
    /// `keep_resident`: most private bytes a reset copies back instead of
    /// remapping. `budget`: how many reset slots may be kept for reuse.
    pub(crate) fn new(keep_resident: usize, budget: Arc<IdleBudget>) -> Self {
        SlotMemories(Arc::new(Pool {
            image: OnceLock::new(),
            idle: Mutex::new(Vec::new()),
            keep_resident,
            budget,
            copied: AtomicU64::new(0),
            copied_bytes: AtomicU64::new(0),
            remapped: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }))
    }

    /// Give the creator its image; only the first call has an effect.
    pub(crate) fn set_image(&self, image: MemoryImage) {
        let _ = self.0.image.set(image);
    }

    pub(crate) fn stats(&self) -> ResetStats {
        let pool = &self.0;
        ResetStats {
            copied: pool.copied.load(Ordering::Relaxed),
            copied_bytes: pool.copied_bytes.load(Ordering::Relaxed),
            remapped: pool.remapped.load(Ordering::Relaxed),
            failed: pool.failed.load(Ordering::Relaxed),
        }
    }
}

impl Pool {
    fn take(&self, geometry: Geometry) -> Option<Slot> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let position = idle.iter().rposition(|s| s.geometry() == geometry)?;
        self.budget.give_back(1);
        Some(idle.swap_remove(position))
    }

    /// Reset `slot` and keep it for the next instance, or drop it.
    fn put_back(&self, mut slot: Slot) {
        let Some(image) = self.image.get() else {
            return;
        };
        match slot.reset(image, self.keep_resident) {
            Ok(Reset::Copied(bytes)) => {
                self.copied.fetch_add(1, Ordering::Relaxed);
                self.copied_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
            }
            Ok(Reset::Remapped) => {
                self.remapped.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, "resetting a memory slot failed; dropping it");
                return;
            }
        }
        if self.budget.try_take() {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            idle.push(slot);
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let idle = self.idle.get_mut().unwrap_or_else(|e| e.into_inner());
        self.budget.give_back(idle.len());
    }
}

// SAFETY: every memory is a private reservation of `reservation + guard`
// bytes (plus a guard before it) that never moves, with exactly
// `byte_size` bytes read-write and the rest inaccessible, as compiled code
// that elides bounds checks requires. Its initial contents are the image,
// not zeros: the build removed the data segments the image replaces.
unsafe impl MemoryCreator for SlotMemories {
    fn new_memory(
        &self,
        ty: MemoryType,
        minimum: usize,
        _maximum: Option<usize>,
        reserved_size_in_bytes: Option<usize>,
        guard_size_in_bytes: usize,
    ) -> Result<Box<dyn LinearMemory>, String> {
        if ty.is_shared() || ty.is_64() {
            return Err(format!("pycage does not provide {ty:?} memories"));
        }
        let reservation = reserved_size_in_bytes
            .filter(|&r| r >= minimum)
            .ok_or("the engine must reserve address space for each memory")?;
        let image = self
            .0
            .image
            .get()
            .ok_or("the handler's memory image is not loaded")?;
        let geometry = Geometry {
            initial: minimum,
            reservation,
            guard: guard_size_in_bytes,
        };
        let slot = match self.0.take(geometry) {
            Some(slot) => slot,
            None => Slot::new(image, geometry).map_err(|e| format!("mapping a memory: {e}"))?,
        };
        Ok(Box::new(SlotMemory {
            slot: Some(slot),
            pool: self.0.clone(),
        }))
    }
}

/// A live instance's memory; goes back to the pool when wasmtime drops it.
struct SlotMemory {
    slot: Option<Slot>,
    pool: Arc<Pool>,
}

impl SlotMemory {
    fn slot(&self) -> &Slot {
        self.slot.as_ref().expect("present until dropped")
    }
}

// SAFETY: see `MemoryCreator for SlotMemories`.
unsafe impl LinearMemory for SlotMemory {
    fn byte_size(&self) -> usize {
        self.slot().accessible()
    }

    fn byte_capacity(&self) -> usize {
        self.slot().geometry().reservation
    }

    fn grow_to(&mut self, new_size: usize) -> wasmtime::Result<()> {
        let slot = self.slot.as_mut().expect("present until dropped");
        slot.grow_to(new_size)
            .map_err(|e| wasmtime::format_err!("growing memory: {e}"))
    }

    fn as_ptr(&self) -> *mut u8 {
        self.slot().base()
    }
}

impl Drop for SlotMemory {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            self.pool.put_back(slot);
        }
    }
}

/// An engine whose memories come from `image`, for tests of this module and
/// of the build's image extraction. The directory holds the image file.
#[cfg(test)]
pub(crate) fn test_engine(
    image: &[u8],
    keep_resident: usize,
) -> (wasmtime::Engine, SlotMemories, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("memory.img");
    MemoryImage::write(&path, image).unwrap();
    let memories = SlotMemories::new(keep_resident, IdleBudget::new(4));
    memories.set_image(MemoryImage::open(&path).unwrap());
    let mut config = wasmtime::Config::new();
    config
        .memory_init_cow(false)
        .with_host_memory(Arc::new(memories.clone()));
    (wasmtime::Engine::new(&config).unwrap(), memories, dir)
}

#[cfg(test)]
mod tests;
