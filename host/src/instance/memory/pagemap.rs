//! Linux's `PAGEMAP_SCAN` ioctl (6.7+): which pages of a mapping hold data
//! private to this process.
//!
//! A slot maps the memory image privately: a page the guest never wrote is
//! still the image file's page (or the shared zero page); a page it wrote is
//! a private copy, present or swapped out. Only those need resetting, and
//! one scan lists them all, however scattered.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::sync::LazyLock;

// Page categories, from <linux/fs.h>.
const PAGE_IS_FILE: u64 = 1 << 2;
const PAGE_IS_PRESENT: u64 = 1 << 3;
const PAGE_IS_SWAPPED: u64 = 1 << 4;
const PAGE_IS_PFNZERO: u64 = 1 << 5;

/// `struct page_region`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

/// `struct pm_scan_arg`.
#[repr(C)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// `_IOWR('f', 16, struct pm_scan_arg)`.
const PAGEMAP_SCAN: u64 = (3 << 30) | ((size_of::<PmScanArg>() as u64) << 16) | (0x66 << 8) | 16;

/// Regions returned per ioctl; a scan resumes until the range is covered.
const REGIONS_PER_CALL: usize = 128;

/// This process's `/proc/self/pagemap`, if it supports `PAGEMAP_SCAN`.
///
/// Opened once. A forked child would see its parent's page map through it,
/// but pycage only forks to exec (dependency installers), never to scan.
pub(crate) fn pagemap() -> Option<&'static PageMap> {
    static PAGEMAP: LazyLock<Option<PageMap>> = LazyLock::new(PageMap::open);
    PAGEMAP.as_ref()
}

pub(crate) struct PageMap(File);

impl PageMap {
    fn open() -> Option<PageMap> {
        let map = PageMap(File::open("/proc/self/pagemap").ok()?);
        // An empty scan tells whether the kernel knows the ioctl at all.
        let mut none = [PageRegion::default(); 1];
        map.scan(0..0, &mut none).ok()?;
        Some(map)
    }

    /// Calls `each` with every run of pages in `range` that holds private
    /// data: present or swapped out, and neither a file's page nor the
    /// shared zero page. Runs are in address order and do not overlap.
    ///
    /// Scanning an address range has no memory-safety requirements: the
    /// kernel walks the page tables and skips what is not mapped.
    pub(crate) fn private_runs(
        &self,
        range: Range<usize>,
        mut each: impl FnMut(Range<usize>),
    ) -> io::Result<()> {
        let mut regions = [PageRegion::default(); REGIONS_PER_CALL];
        let mut start = range.start;
        while start < range.end {
            let (found, walk_end) = self.scan(start..range.end, &mut regions)?;
            for region in &regions[..found] {
                each(to_usize(region.start)?..to_usize(region.end)?);
            }
            let walk_end = to_usize(walk_end)?;
            if walk_end <= start {
                // The kernel promises progress; never spin if it makes none.
                return Err(io::Error::other("PAGEMAP_SCAN made no progress"));
            }
            start = walk_end;
        }
        Ok(())
    }

    /// One ioctl: fills `regions`, returns how many and where the walk ended.
    fn scan(&self, range: Range<usize>, regions: &mut [PageRegion]) -> io::Result<(usize, u64)> {
        let mut arg = PmScanArg {
            size: size_of::<PmScanArg>() as u64,
            flags: 0,
            start: range.start as u64,
            end: range.end as u64,
            walk_end: 0,
            vec: regions.as_mut_ptr() as u64,
            vec_len: regions.len() as u64,
            max_pages: 0,
            // "Not a file page, not the zero page" ...
            category_inverted: PAGE_IS_FILE | PAGE_IS_PFNZERO,
            category_mask: PAGE_IS_FILE | PAGE_IS_PFNZERO,
            // ... "and present or swapped out": a private page that went to
            // swap still holds the previous request's data.
            category_anyof_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
            // Report no categories, so that neighbouring matches merge.
            return_mask: 0,
        };
        // SAFETY: `arg` is a valid pm_scan_arg whose `vec` points at
        // `regions.len()` writable page_region structs; the kernel writes
        // only those and `arg` itself.
        let found = unsafe {
            libc::ioctl(
                self.0.as_raw_fd(),
                PAGEMAP_SCAN as libc::Ioctl,
                &mut arg as *mut PmScanArg,
            )
        };
        let found = usize::try_from(found).map_err(|_| io::Error::last_os_error())?;
        if found > regions.len() {
            return Err(io::Error::other("PAGEMAP_SCAN reported too many regions"));
        }
        Ok((found, arg.walk_end))
    }
}

fn to_usize(value: u64) -> io::Result<usize> {
    usize::try_from(value).map_err(|_| io::Error::other("PAGEMAP_SCAN address out of range"))
}
