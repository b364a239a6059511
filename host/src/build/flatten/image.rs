//! Move the pre-initialised heap out of the merged module's data segments
//! into a memory image (see `crate::instance::memory`).
//!
//! After pre-initialisation the whole CPython heap (~13 MiB) is a set of
//! active data segments. Left in the module, wasmtime would copy them into
//! every new instance; as an image, each instance maps them copy-on-write
//! and a reset copies back only the pages a request wrote.

use wasm_encoder::{ConstExpr, DataSection};

/// One data segment of the merged module, in order.
pub(super) struct Segment<'a> {
    pub(super) kind: SegmentKind,
    pub(super) data: &'a [u8],
}

pub(super) enum SegmentKind {
    Active {
        memory: u32,
        offset: ConstExpr,
        /// The offset's value, when it is a constant.
        at: Option<u64>,
    },
    Passive,
}

/// The merged module's memories: how many are imported, and the initial
/// size in bytes of each defined one (`None` for a kind an image cannot
/// stand for: 64-bit, shared, or custom page sizes).
pub(super) struct Memories {
    pub(super) imported: u32,
    pub(super) defined: Vec<Option<u64>>,
}

const WASM_PAGE: u64 = 64 << 10;

impl Memories {
    pub(super) fn initial_bytes(ty: &wasmparser::MemoryType) -> Option<u64> {
        if ty.memory64 || ty.shared || ty.page_size_log2.is_some() {
            return None;
        }
        ty.initial.checked_mul(WASM_PAGE)
    }
}

/// The image of the module's one defined memory: every active segment
/// applied in order to zeros, trailing zeros trimmed. `None` (keep the
/// segments) unless the module defines exactly one plain memory, imports
/// none, and every active segment writes it at a constant offset within
/// its initial size: then the segments are exactly the image.
pub(super) fn extract(segments: &[Segment<'_>], memories: &Memories) -> Option<Vec<u8>> {
    let [Some(initial)] = memories.defined[..] else {
        return None;
    };
    if memories.imported != 0 {
        return None;
    }
    let mut end = 0u64;
    for segment in segments {
        if let SegmentKind::Active { memory, at, .. } = &segment.kind {
            let at = at.filter(|_| *memory == 0)?;
            let segment_end = at.checked_add(segment.data.len() as u64)?;
            if segment_end > initial {
                // Instantiation would trap; keep that behaviour.
                return None;
            }
            end = end.max(segment_end);
        }
    }
    let mut image = vec![0u8; usize::try_from(end).ok()?];
    for segment in segments {
        if let SegmentKind::Active { at: Some(at), .. } = segment.kind {
            let at = at as usize;
            image[at..at + segment.data.len()].copy_from_slice(segment.data);
        }
    }
    let used = image
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |last| last + 1);
    image.truncate(used);
    Some(image)
}

/// Encode the segments. With the image taken, each active segment becomes
/// an empty passive one: data indices stay the same, and `memory.init` of
/// it still traps for any non-empty length, as it would after the active
/// segment was applied and dropped.
pub(super) fn encode(segments: &[Segment<'_>], image_taken: bool, data: &mut DataSection) {
    for segment in segments {
        match &segment.kind {
            SegmentKind::Active { .. } if image_taken => {
                data.passive([]);
            }
            SegmentKind::Active { memory, offset, .. } => {
                data.active(*memory, offset, segment.data.iter().copied());
            }
            SegmentKind::Passive => {
                data.passive(segment.data.iter().copied());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn active(at: u64, data: &[u8]) -> Segment<'_> {
        Segment {
            kind: SegmentKind::Active {
                memory: 0,
                offset: ConstExpr::i32_const(at as i32),
                at: Some(at),
            },
            data,
        }
    }

    fn one_memory(pages: u64) -> Memories {
        Memories {
            imported: 0,
            defined: vec![Some(pages * WASM_PAGE)],
        }
    }

    #[test]
    fn later_segments_win_and_trailing_zeros_go() {
        let segments = [active(2, b"abcd"), active(4, b"XY\0\0")];
        let image = extract(&segments, &one_memory(1)).unwrap();
        assert_eq!(image, b"\0\0abXY");
    }

    #[test]
    fn kept_when_not_exactly_one_plain_memory_written_at_constants() {
        let segments = [active(0, b"a")];
        let imported = Memories {
            imported: 1,
            defined: vec![Some(WASM_PAGE)],
        };
        assert!(extract(&segments, &imported).is_none());
        let two = Memories {
            imported: 0,
            defined: vec![Some(WASM_PAGE), Some(WASM_PAGE)],
        };
        assert!(extract(&segments, &two).is_none());
        let odd = Memories {
            imported: 0,
            defined: vec![None],
        };
        assert!(extract(&segments, &odd).is_none());
        let unknown = [Segment {
            kind: SegmentKind::Active {
                memory: 0,
                offset: ConstExpr::global_get(0),
                at: None,
            },
            data: b"a",
        }];
        assert!(extract(&unknown, &one_memory(1)).is_none());
        // Past the initial size: instantiation must still trap.
        assert!(extract(&[active(WASM_PAGE - 1, b"ab")], &one_memory(1)).is_none());
    }

    #[test]
    fn encoding_keeps_the_segment_count() {
        let segments = [
            active(0, b"a"),
            Segment {
                kind: SegmentKind::Passive,
                data: b"p",
            },
        ];
        let mut taken = DataSection::new();
        encode(&segments, true, &mut taken);
        let mut kept = DataSection::new();
        encode(&segments, false, &mut kept);
        assert_eq!(taken.len(), 2);
        assert_eq!(kept.len(), 2);
    }
}
