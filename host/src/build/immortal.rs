//! Make the snapshot's Python objects immortal in its memory image.
//!
//! Every object CPython touches gets its reference count written: reading a
//! module global, calling a function, instantiating a class all increment
//! and then decrement counts of objects that live in the snapshot. Those
//! writes are usually net zero, but each one turns a page of the image into
//! a private copy that the instance's reset must copy back (measured with
//! `bench --quick`: this pass took a hello request from 210 written pages
//! to 111).
//!
//! CPython 3.12+ skips reference counting for immortal objects: on 32-bit
//! targets, those whose count is at least 2^30. The guest glue lists every
//! object alive at the end of the build (address and type address, two
//! little-endian u32 each), keeps them alive until the snapshot is taken,
//! and freezes them out of the cyclic collector; this pass then sets their
//! counts to CPython's initial immortal value in the image.
//!
//! Only words that look exactly like a live object's header are written:
//! the type word must match the listing and the count must be a plausible
//! mortal count. Anything else is skipped, so a listing that does not match
//! the image (another layout, a truncated file) changes nothing.
//!
//! What this changes for a handler: objects that existed at build time are
//! never deallocated during a request, so dropping one does not run its
//! `__del__` or weakref callbacks and `sys.getrefcount` reports a large
//! number for it. Each instance is discarded after one request anyway.

/// CPython's `_Py_IMMORTAL_INITIAL_REFCNT` for 32-bit builds (5 << 28).
const IMMORTAL_REFCNT: u32 = 5 << 28;
/// `_Py_IMMORTAL_MINIMUM_REFCNT` for 32-bit builds: counts at or above it
/// are immortal already (static objects, interned strings).
const IMMORTAL_MINIMUM: u32 = 1 << 30;

/// What [`apply`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Immortalized {
    /// Objects the guest listed.
    pub listed: usize,
    /// Objects whose count was set to immortal.
    pub patched: usize,
}

/// Set the reference count of every listed object in `image` to immortal.
pub(crate) fn apply(image: &mut [u8], listing: &[u8]) -> Immortalized {
    let mut done = Immortalized {
        listed: listing.len() / 8,
        patched: 0,
    };
    if !listing.len().is_multiple_of(8) {
        // Not a listing this version wrote: touch nothing.
        return done;
    }
    for entry in listing.chunks_exact(8) {
        let address = u32::from_le_bytes(entry[..4].try_into().expect("4 bytes")) as usize;
        let ty = &entry[4..];
        if !address.is_multiple_of(4) {
            continue;
        }
        let Some(header) = address
            .checked_add(8)
            .and_then(|end| image.get_mut(address..end))
        else {
            continue;
        };
        let count = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
        if header[4..] != *ty || count == 0 || count >= IMMORTAL_MINIMUM {
            continue;
        }
        header[..4].copy_from_slice(&IMMORTAL_REFCNT.to_le_bytes());
        done.patched += 1;
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(address: u32, ty: u32) -> [u8; 8] {
        let mut e = [0; 8];
        e[..4].copy_from_slice(&address.to_le_bytes());
        e[4..].copy_from_slice(&ty.to_le_bytes());
        e
    }

    fn header(image: &mut [u8], address: usize, count: u32, ty: u32) {
        image[address..address + 4].copy_from_slice(&count.to_le_bytes());
        image[address + 4..address + 8].copy_from_slice(&ty.to_le_bytes());
    }

    fn count(image: &[u8], address: usize) -> u32 {
        u32::from_le_bytes(image[address..address + 4].try_into().unwrap())
    }

    #[test]
    fn only_matching_mortal_headers_are_patched() {
        let mut image = vec![0u8; 256];
        header(&mut image, 16, 3, 0x1000); // a live object
        header(&mut image, 32, 7, 0x2000); // listed with another type
        header(&mut image, 48, 7 << 28, 0x1000); // statically immortal
        header(&mut image, 64, 0, 0x1000); // a count of zero is no live object
        let listing: Vec<u8> = [
            entry(16, 0x1000),
            entry(32, 0x1000),
            entry(48, 0x1000),
            entry(64, 0x1000),
            entry(250, 0x1000), // runs past the image
            entry(18, 0x1000),  // misaligned
            entry(u32::MAX - 3, 0x1000),
        ]
        .concat();
        let before = image.clone();
        let done = apply(&mut image, &listing);
        assert_eq!(
            done,
            Immortalized {
                listed: 7,
                patched: 1
            }
        );
        assert_eq!(count(&image, 16), IMMORTAL_REFCNT);
        assert!(count(&image, 16) >= IMMORTAL_MINIMUM);
        // Nothing else changed.
        image[16..20].copy_from_slice(&before[16..20]);
        assert_eq!(image, before);
    }

    #[test]
    fn a_malformed_listing_changes_nothing() {
        let mut image = vec![0u8; 64];
        header(&mut image, 8, 1, 0x10);
        let mut listing = entry(8, 0x10).to_vec();
        listing.push(0);
        let before = image.clone();
        assert_eq!(apply(&mut image, &listing).patched, 0);
        assert_eq!(image, before);
    }
}
