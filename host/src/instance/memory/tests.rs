//! The reset, checked on real wasm instances: whatever an instance writes,
//! wherever, and however much it grows, the next one sees the image.

use wasmtime::{Instance, Module, Store, TypedFunc};

use super::*;

/// 64 wasm pages (4 MiB, 1,024 host pages); the image covers the first
/// 40 pages, the rest starts as zeros.
const MEMORY_PAGES: usize = 64;
const WASM_PAGE: usize = 64 << 10;
const IMAGE_LEN: usize = 40 * WASM_PAGE - 123;

const PROBE: &str = r#"
    (module
      (memory (export "memory") 64)
      (func (export "peek") (param i32) (result i32)
        (i32.load8_u (local.get 0)))
      (func (export "poke") (param i32 i32)
        (i32.store8 (local.get 0) (local.get 1)))
      (func (export "grow") (param i32) (result i32)
        (memory.grow (local.get 0)))
      (func (export "size") (result i32)
        memory.size))
"#;

fn image() -> Vec<u8> {
    (0..IMAGE_LEN).map(|i| (i % 251) as u8 + 1).collect()
}

/// What a fresh memory holds at `at`.
fn expected(at: usize) -> u8 {
    if at < IMAGE_LEN {
        (at % 251) as u8 + 1
    } else {
        0
    }
}

struct Probe {
    store: Store<()>,
    peek: TypedFunc<i32, i32>,
    poke: TypedFunc<(i32, i32), ()>,
    grow: TypedFunc<i32, i32>,
    size: TypedFunc<(), i32>,
}

impl Probe {
    fn new(engine: &wasmtime::Engine, module: &Module) -> Probe {
        let mut store = Store::new(engine, ());
        let instance = Instance::new(&mut store, module, &[]).unwrap();
        Probe {
            peek: instance.get_typed_func(&mut store, "peek").unwrap(),
            poke: instance.get_typed_func(&mut store, "poke").unwrap(),
            grow: instance.get_typed_func(&mut store, "grow").unwrap(),
            size: instance.get_typed_func(&mut store, "size").unwrap(),
            store,
        }
    }

    fn peek(&mut self, at: usize) -> u8 {
        self.peek.call(&mut self.store, at as i32).unwrap() as u8
    }

    fn poke(&mut self, at: usize, value: u8) {
        self.poke
            .call(&mut self.store, (at as i32, i32::from(value)))
            .unwrap();
    }

    /// Check every 997th byte and both ends of each host page.
    fn assert_pristine(&mut self, round: usize) {
        assert_eq!(
            self.size.call(&mut self.store, ()).unwrap(),
            MEMORY_PAGES as i32
        );
        let len = MEMORY_PAGES * WASM_PAGE;
        let page = image::page_size();
        let points = (0..len)
            .step_by(997)
            .chain((0..len).step_by(page))
            .chain((page - 1..len).step_by(page));
        for at in points {
            assert_eq!(self.peek(at), expected(at), "byte {at} in round {round}");
        }
        // Past the initial size is out of bounds again, even after a grow.
        assert!(self.peek.call(&mut self.store, len as i32).is_err());
    }

    /// Write every other host page (hundreds of separate dirty runs, more
    /// than one scan returns at once), in the image and past it, then grow
    /// and write the new pages too.
    fn scribble(&mut self, value: u8) {
        let page = image::page_size();
        for at in (0..MEMORY_PAGES * WASM_PAGE).step_by(2 * page) {
            self.poke(at + 17, value);
        }
        let old = self.grow.call(&mut self.store, 2).unwrap();
        assert_eq!(old, MEMORY_PAGES as i32);
        for at in (MEMORY_PAGES * WASM_PAGE..(MEMORY_PAGES + 2) * WASM_PAGE).step_by(page) {
            self.poke(at, value);
        }
    }
}

fn rounds(keep_resident: usize) -> ResetStats {
    let (engine, memories, _dir) = test_engine(&image(), keep_resident);
    let module = Module::new(&engine, PROBE).unwrap();
    for round in 0..4 {
        let mut probe = Probe::new(&engine, &module);
        probe.assert_pristine(round);
        probe.scribble(0xee);
        assert_eq!(probe.peek(17), 0xee);
        // Dropping the store resets the slot; the next round reuses it.
    }
    // Two instances at once get two different slots, both pristine.
    let mut a = Probe::new(&engine, &module);
    let mut b = Probe::new(&engine, &module);
    a.scribble(1);
    b.assert_pristine(100);
    drop(a);
    b.assert_pristine(101);
    drop(b);
    Probe::new(&engine, &module).assert_pristine(102);
    memories.stats()
}

#[test]
fn copying_back_restores_every_written_page() {
    let stats = rounds(16 << 20);
    assert_eq!(stats.failed, 0);
    if cfg!(target_os = "linux") && pagemap::pagemap().is_some() {
        // Four rounds, `a`, `b` and the last probe; `b` and the last probe
        // (on `b`'s slot) only read, so they had nothing to copy back.
        assert_eq!((stats.copied, stats.remapped), (7, 0), "{stats:?}");
        // Each scribble wrote every other host page of the initial memory.
        let page = image::page_size() as u64;
        let scribbled = (MEMORY_PAGES * WASM_PAGE) as u64 / (2 * page);
        assert_eq!(stats.copied_bytes, 5 * scribbled * page, "{stats:?}");
    }
}

#[test]
fn remapping_restores_every_written_page() {
    // Nothing may be copied back: every reset of a written slot remaps
    // (the two that only read had nothing to copy).
    let stats = rounds(0);
    assert_eq!(stats.failed, 0);
    assert_eq!((stats.remapped, stats.copied_bytes), (5, 0), "{stats:?}");
}

#[test]
fn refuses_memories_it_cannot_serve() {
    let (engine, _memories, _dir) = test_engine(&image(), 16 << 20);
    // Smaller than the image: the image cannot be its initial contents.
    let small = Module::new(&engine, "(module (memory 1))").unwrap();
    let mut store = Store::new(&engine, ());
    assert!(Instance::new(&mut store, &small, &[]).is_err());
}
