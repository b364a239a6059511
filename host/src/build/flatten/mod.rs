//! Flatten the pre-initialised component: one core module instead of ~14.
//!
//! componentize-py links CPython as a dynamic library set: `libc.so`,
//! `libpython3.14.so` and friends each become a core module that imports
//! the shared memory, the shared function table and the `__table_base`
//! globals from the linker's `main` module. Each library then fills its
//! slice of the table with element segments at `global.get __table_base`.
//! wasmtime can only precompute (and lazily initialise) tables that a module
//! defines itself with constant offsets, so every instantiation resolved all
//! ~5,700 table entries and wired ~14 instances' imports: most of a fresh
//! instance's cost.
//!
//! This pass merges every core module that can be merged into one (see
//! `merge`), so the table is defined where its segments are, at constant
//! offsets. What stays outside are the instances that need the merged
//! memory to exist first: wit-component's `fixup` module, which fills the
//! indirect-call table of its `shim` (merged like the rest) with imports
//! lowered with that memory. The component's
//! own interface (imports, exports, types) is untouched; only core-level
//! items are re-indexed, and those that depend on the merged instance are
//! moved after it.
//!
//! It is an optimisation: a component of a shape this pass does not know is
//! reported as `FlattenError::Unsupported` and the caller keeps the original.

mod analysis;
mod emit;
mod graph;
mod image;
mod merge;

use wasmparser::CanonicalFunction;

use analysis::Analysis;
use emit::Emitter;
use graph::{Graph, Step};

/// Why a component was not flattened.
#[derive(Debug, thiserror::Error)]
pub enum FlattenError {
    #[error("the component has a shape flattening does not handle: {0}")]
    Unsupported(String),
    #[error("the component does not parse: {0}")]
    Parse(#[from] wasmparser::BinaryReaderError),
    #[error("re-encoding failed: {0}")]
    Encode(String),
}

impl FlattenError {
    fn unsupported(what: impl Into<String>) -> Self {
        FlattenError::Unsupported(what.into())
    }
}

/// The result: the new component, how many core modules went into one, and
/// the initial contents of its memory when they were moved out of the data
/// segments (the component is then only runnable with `crate::instance::memory`).
pub struct Flattened {
    pub bytes: Vec<u8>,
    pub merged_modules: usize,
    pub memory_image: Option<Vec<u8>>,
}

/// Merge the component's core modules (see the module docs).
pub fn flatten(bytes: &[u8]) -> Result<Flattened, FlattenError> {
    let graph = Graph::parse(bytes)?;
    let analysis = Analysis::new(&graph)?;
    let merged = merge::merge(&analysis.plan)?;
    let mut emitter = Emitter::new(bytes, &graph, &analysis, merged.bytes);
    // Items that need the merged instance wait until it is written, which
    // is as soon as everything it imports exists.
    let mut deferred = Vec::new();
    if emitter.externals_ready() {
        emitter.emit_merged();
    }
    for step in &graph.steps {
        if !emitter.ready(step) {
            if emitter.merged.is_some() {
                return Err(FlattenError::unsupported(
                    "an item used before it is defined",
                ));
            }
            if let Step::Canon(CanonicalFunction::Lift { .. }, _) = step {
                // Moving a component-level definition would renumber the
                // component's own index space.
                return Err(FlattenError::unsupported("a lift before the merge point"));
            }
            deferred.push(step);
            continue;
        }
        emitter.emit(step)?;
        if emitter.merged.is_none() && emitter.externals_ready() {
            emitter.emit_merged();
            for step in std::mem::take(&mut deferred) {
                if !emitter.ready(step) {
                    return Err(FlattenError::unsupported("a deferred item is not ready"));
                }
                emitter.emit(step)?;
            }
        }
    }
    if emitter.merged.is_none() {
        return Err(FlattenError::unsupported(
            "the merge point was never reached",
        ));
    }
    emitter.writer.flush();
    Ok(Flattened {
        bytes: emitter.writer.out.finish(),
        merged_modules: analysis.plan.modules.len(),
        memory_image: merged.image,
    })
}

#[cfg(test)]
mod tests {
    use wasmtime::component::{Component, Linker};
    use wasmtime::{Engine, Store};

    use wasmparser::{Parser, Payload};

    use super::*;

    /// The dynamic-linking shape in miniature: `main` defines the memory,
    /// the table and the base globals; `lib` imports them and fills its
    /// slot of the table at `global.get __table_base`. `late` needs a
    /// function lowered with `main`'s memory, so it must stay outside, and
    /// the aliases of `main` come before the last lowering `lib` imports,
    /// so they have to be moved after the merged instance.
    const LINKED: &str = r#"
    (component
      (import "double" (func $double (param "x" s32) (result s32)))
      (core module $main
        (memory (export "memory") 1)
        (table (export "table") 4 funcref)
        (global (export "lib:table_base") i32 (i32.const 2))
        (global (export "lib:memory_base") i32 (i32.const 100))
        (global (export "big") i64 (i64.const 5000000000))
        (func $one (result i32) i32.const 1)
        (elem (i32.const 0) $one))
      (core module $lib
        (import "env" "memory" (memory 1))
        (import "env" "table" (table 4 funcref))
        (import "env" "__table_base" (global $tb i32))
        (import "env" "__memory_base" (global $mb i32))
        (import "host" "double" (func $double (param i32) (result i32)))
        (import "env" "big" (global $big i64))
        (global $copy i64 (global.get $big))
        (func (export "big") (result i64) global.get $copy)
        (type $t (func (result i32)))
        (func $seven (result i32) i32.const 7)
        (elem (global.get $tb) $seven)
        (data (global.get $mb) "\2a")
        (func (export "run") (result i32)
          (call_indirect (type $t) (i32.const 0))
          (call_indirect (type $t) (i32.const 2))
          i32.add
          (i32.load8_u (i32.const 100))
          i32.add
          (call $double (i32.const 1))
          i32.add))
      (core module $late
        (import "host" "double" (func $double (param i32) (result i32)))
        (func (export "go") (result i32) (call $double (i32.const 50))))
      (core instance $main (instantiate $main))
      (alias core export $main "memory" (core memory $memory))
      (alias core export $main "table" (core table $table))
      (alias core export $main "lib:table_base" (core global $tb))
      (alias core export $main "lib:memory_base" (core global $mb))
      (alias core export $main "big" (core global $big))
      (core instance $env
        (export "memory" (memory $memory))
        (export "table" (table $table))
        (export "__table_base" (global $tb))
        (export "__memory_base" (global $mb))
        (export "big" (global $big)))
      (core func $double_plain (canon lower (func $double)))
      (core instance $host (export "double" (func $double_plain)))
      (core instance $lib (instantiate $lib
        (with "env" (instance $env))
        (with "host" (instance $host))))
      (core func $double_mem (canon lower (func $double) (memory $memory)))
      (core instance $late_host (export "double" (func $double_mem)))
      (core instance $late (instantiate $late (with "host" (instance $late_host))))
      (alias core export $lib "run" (core func $run))
      (alias core export $late "go" (core func $go))
      (alias core export $lib "big" (core func $big_fn))
      (func (export "big") (result s64) (canon lift (core func $big_fn)))
      (func (export "run") (result s32) (canon lift (core func $run)))
      (func (export "go") (result s32) (canon lift (core func $go))))
    "#;

    fn call<R: wasmtime::component::ComponentType + wasmtime::component::Lift + 'static>(
        engine: &Engine,
        bytes: &[u8],
        export: &str,
    ) -> R {
        let component = Component::new(engine, bytes).unwrap();
        let mut linker = Linker::new(engine);
        linker
            .root()
            .func_wrap("double", |_, (x,): (i32,)| Ok((x * 2,)))
            .unwrap();
        let mut store = Store::new(engine, ());
        let instance = linker.instantiate(&mut store, &component).unwrap();
        let func = instance
            .get_typed_func::<(), (R,)>(&mut store, export)
            .unwrap();
        func.call(&mut store, ()).unwrap().0
    }

    /// Every core module in a component, as (imports, element and data
    /// offsets that are not constants).
    fn modules(bytes: &[u8]) -> Vec<(usize, usize)> {
        let mut found = Vec::new();
        let mut depth = 0;
        for payload in Parser::new(0).parse_all(bytes) {
            match payload.unwrap() {
                Payload::ModuleSection { .. } => {
                    depth += 1;
                    found.push((0, 0));
                }
                Payload::End(_) if depth > 0 => depth -= 1,
                Payload::ImportSection(r) if depth > 0 => {
                    found.last_mut().unwrap().0 = r.into_imports().count();
                }
                Payload::ElementSection(r) if depth > 0 => {
                    for e in r {
                        if let wasmparser::ElementKind::Active { offset_expr, .. } = e.unwrap().kind
                            && !is_const(&offset_expr)
                        {
                            found.last_mut().unwrap().1 += 1;
                        }
                    }
                }
                Payload::DataSection(r) if depth > 0 => {
                    for d in r {
                        if let wasmparser::DataKind::Active { offset_expr, .. } = d.unwrap().kind
                            && !is_const(&offset_expr)
                        {
                            found.last_mut().unwrap().1 += 1;
                        }
                    }
                }
                _ => (),
            }
        }
        found
    }

    fn is_const(expr: &wasmparser::ConstExpr<'_>) -> bool {
        let ops: Vec<_> = expr
            .get_operators_reader()
            .into_iter()
            .map(|op| op.unwrap())
            .collect();
        matches!(
            ops.as_slice(),
            [
                wasmparser::Operator::I32Const { .. },
                wasmparser::Operator::End
            ]
        )
    }

    #[test]
    fn merges_the_linked_modules_and_keeps_behaviour() {
        let original = wat::parse_str(LINKED).unwrap();
        let flat = flatten(&original).unwrap();
        assert_eq!(flat.merged_modules, 2, "main and lib merge; late stays");

        // One module for main+lib (with constant segment offsets), one for late.
        let before = modules(&original);
        let after = modules(&flat.bytes);
        assert_eq!(before.len(), 3);
        assert_eq!(after.len(), 2);
        assert_eq!(
            after[0],
            (1, 0),
            "merged: imports only `double`, folds offsets"
        );
        assert_eq!(before[1].1, 2, "lib's segments read globals before");

        // The data segments moved into the memory image: the flattened
        // component runs only with memories mapped from it.
        let image = flat
            .memory_image
            .as_deref()
            .expect("segments became an image");
        assert_eq!(image.len(), 101, "lib's byte at its memory base, 100");
        assert_eq!(image[100], 0x2a);
        let (with_image, _memories, _dir) = crate::instance::memory::test_engine(image, 1 << 20);
        let engine = Engine::default();
        for (engine, bytes) in [(&engine, &original), (&with_image, &flat.bytes)] {
            assert_eq!(call::<i32>(engine, bytes, "run"), 1 + 7 + 42 + 2);
            assert_eq!(call::<i32>(engine, bytes, "go"), 100);
            // An i64 global initialised from another module's stays an i64.
            assert_eq!(call::<i64>(engine, bytes, "big"), 5_000_000_000);
        }
    }

    #[test]
    fn other_shapes_are_refused_not_mangled() {
        let core_module = wat::parse_str("(module)").unwrap();
        assert!(matches!(
            flatten(&core_module),
            Err(FlattenError::Unsupported(_))
        ));
        let one_module =
            wat::parse_str("(component (core module $m) (core instance (instantiate $m)))")
                .unwrap();
        assert!(matches!(
            flatten(&one_module),
            Err(FlattenError::Unsupported(_))
        ));
        let twice = wat::parse_str(
            "(component (core module $m) (core instance (instantiate $m)) (core instance (instantiate $m)))",
        )
        .unwrap();
        assert!(matches!(flatten(&twice), Err(FlattenError::Unsupported(_))));
        assert!(flatten(b"\0asm\x0d\0\x01\0\x07\xff").is_err());
    }
}
