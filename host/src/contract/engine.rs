//! The wasmtime settings every compiled image depends on, shared by the
//! runtime (which loads images) and the build worker (which compiles them):
//! a compiled component only loads into an engine configured alike.

use std::sync::Arc;

use wasmtime::{CacheStore, Config};

/// A configuration with the settings that shape compiled code. The runtime
/// adds its memory and stack creators on top; they do not change the code.
/// `code_cache` is where compiled functions are kept, when compiling.
pub(crate) fn config(code_cache: Option<Arc<dyn CacheStore>>) -> Config {
    let mut wasm = Config::new();
    wasm.wasm_component_model(true)
        .epoch_interruption(true)
        // wasmtime's own copy-on-write images assume its own mappings; ours
        // map the image the build moved out of the data segments.
        .memory_init_cow(false)
        // The guest is a synchronous component: no async exports, streams
        // or futures. With the component model's concurrency machinery on,
        // every Store keeps a parked fiber that its drop must resume with an
        // error, and wasmtime captures a backtrace for that error whenever
        // RUST_BACKTRACE is set: ~20 µs per request for nothing. Off, the
        // async features that need it are refused at compile time too.
        .concurrency_support(false);
    // Set PYCAGE_PERFMAP=1 to have `perf` name the guest's functions: wasmtime
    // then writes /tmp/perf-<pid>.map. For profiling only.
    if std::env::var_os("PYCAGE_PERFMAP").is_some() {
        wasm.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    if let Some(code_cache) = code_cache {
        // Only compilation consults it; requests never do.
        wasm.enable_incremental_compilation(code_cache)
            .expect("the engine has a compiler");
    }
    wasm
}
