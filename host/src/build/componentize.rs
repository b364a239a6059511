//! The one call into componentize-py: import the app module inside a
//! pre-initialised CPython and write the snapshot as a component.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The Python module each imported interface is bound as, under
/// `wit_world.imports` (what `guest-python/pycage` imports). Named here
/// because componentize-py's own names depend on which other interfaces
/// share a short name (`store`, `types`), which would change the module
/// names whenever an import is added.
const IMPORT_MODULES: &[(&str, &str)] = &[
    ("wasi:keyvalue/store@0.2.0-draft2", "kv_store"),
    ("wasi:keyvalue/atomics@0.2.0-draft2", "kv_atomics"),
    ("wasi:config/store@0.2.0-draft-2024-09-27", "config_store"),
    // The versions `wasmtime serve` links, for `pycage export --target
    // wasi-http`: the same functions under the same modules.
    ("wasi:keyvalue/store@0.2.0-draft", "kv_store"),
    ("wasi:keyvalue/atomics@0.2.0-draft", "kv_atomics"),
    ("wasi:config/store@0.2.0-rc.1", "config_store"),
    ("wasi:http/types@0.2.0", "http_types"),
    ("wasi:http/outgoing-handler@0.2.0", "outgoing_handler"),
    ("wasi:io/streams@0.2.0", "io_streams"),
    ("wasi:io/poll@0.2.0", "io_poll"),
    ("wasi:io/error@0.2.0", "io_error"),
    ("wasi:clocks/monotonic-clock@0.2.0", "monotonic_clock"),
];

/// Run componentize-py for `world` (of the package in `wit_dir`) on the
/// calling thread (its future is `!Send`, so it
/// gets a current-thread runtime of its own). The error text may hold what
/// the guest printed.
pub(crate) fn run(
    wit_dir: &Path,
    world: &str,
    python_path: &[PathBuf],
    app_name: &str,
    output: &Path,
) -> Result<(), String> {
    let paths: Vec<String> = python_path
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
    let empty = HashMap::new();
    let imports: HashMap<&str, &str> = IMPORT_MODULES.iter().copied().collect();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| {
            rt.block_on(
                componentize_py::ComponentGenerator {
                    wit_paths: &[wit_dir],
                    worlds: &[world],
                    features: &[],
                    all_features: false,
                    world_module: None,
                    python_path: &paths,
                    module_worlds: &[],
                    app_name,
                    output_path: output,
                    add_to_linker: None,
                    stub_wasi: false,
                    import_interface_names: &imports,
                    export_interface_names: &empty,
                    full_names: false,
                    intersect_world: None,
                }
                .generate(),
            )
        })
        .map_err(|e| format!("{e:#}"))
}
