//! The one call into componentize-py: import the app module inside a
//! pre-initialised CPython and write the snapshot as a component.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The world in `wit/handler.wit` that images implement.
const WORLD: &str = "sandbox";

/// Run componentize-py on the calling thread (its future is `!Send`, so it
/// gets a current-thread runtime of its own). The error text may hold what
/// the guest printed.
pub(crate) fn run(
    wit_dir: &Path,
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
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| {
            rt.block_on(
                componentize_py::ComponentGenerator {
                    wit_paths: &[wit_dir],
                    worlds: &[WORLD],
                    features: &[],
                    all_features: false,
                    world_module: None,
                    python_path: &paths,
                    module_worlds: &[],
                    app_name,
                    output_path: output,
                    add_to_linker: None,
                    stub_wasi: false,
                    import_interface_names: &empty,
                    export_interface_names: &empty,
                    full_names: false,
                    intersect_world: None,
                }
                .generate(),
            )
        })
        .map_err(|e| format!("{e:#}"))
}
