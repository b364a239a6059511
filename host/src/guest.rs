//! The Python side of the sandbox, embedded in the host binary, and the guest
//! filesystem layout both sides agree on.

use std::fs;
use std::path::Path;

/// Versions that shape a built image; part of every cache key.
pub const COMPONENTIZE_PY_VERSION: &str = "0.25.1";
pub const WASMTIME_VERSION: &str = "46.0.3";
/// The CPython version componentize-py embeds: dependencies are resolved for it.
pub const GUEST_PYTHON_VERSION: &str = "3.14";

/// The cache tag of the guest's bytecode files (`__pycache__/x.cpython-314.pyc`).
pub(crate) const PYC_TAG: &str = "cpython-314";

/// The module componentize-py imports at build time: it implements the WIT exports.
pub(crate) const APP_MODULE: &str = "pycage_guest";

/// Where the handler's files are mounted (read-only) for handler code to read.
pub const GUEST_APP_DIR: &str = "/app";
/// Where the handler's files were mounted while its modules were imported at
/// build time (componentize-py names mounts after their position in the
/// python path). Module `__file__`s and `sys.path` point here, so the same
/// files are mounted here too for imports made at request time.
pub(crate) const GUEST_IMPORT_DIR: &str = "/1";
/// Where CPython's standard library is mounted (read-only), as at build time.
pub(crate) const GUEST_STDLIB_DIR: &str = "/python";
/// The report the guest glue writes at build time, relative to the framework mount (/0).
pub(crate) const BUILD_REPORT: &str = "build-report.json";
/// The addresses and types of the snapshot's objects, written last at build
/// time, relative to the framework mount (see `crate::immortal`).
pub(crate) const SNAPSHOT_OBJECTS: &str = "snapshot-objects.bin";

/// The `pycage` package and the export glue, copied into every build.
pub(crate) const FRAMEWORK_FILES: &[(&str, &str)] = &[
    (
        "pycage/__init__.py",
        include_str!("../../guest-python/pycage/__init__.py"),
    ),
    (
        "pycage/_http.py",
        include_str!("../../guest-python/pycage/_http.py"),
    ),
    (
        "pycage/_router.py",
        include_str!("../../guest-python/pycage/_router.py"),
    ),
    (
        "pycage/_convert.py",
        include_str!("../../guest-python/pycage/_convert.py"),
    ),
    (
        "pycage_guest.py",
        include_str!("../../guest-python/pycage_guest.py"),
    ),
];

/// Build-time helper that exports the stdlib with precompiled bytecode.
pub(crate) const STDLIB_EXPORTER: &str = include_str!("../../guest-python/pycage_stdlib_export.py");
pub(crate) const STDLIB_EXPORTER_MODULE: &str = "pycage_stdlib_export";

/// Write the framework plus its per-build configuration into `dir`
/// (mounted at /0 during pre-initialisation).
pub(crate) fn write_framework(
    dir: &Path,
    entry_module: &str,
    layer_mounts: &[String],
) -> std::io::Result<()> {
    for (relative, source) in FRAMEWORK_FILES {
        let path = dir.join(relative);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(path, source)?;
    }
    // Values are written with {:?}, which for these ASCII strings is a valid
    // Python string literal.
    fs::write(
        dir.join("pycage_build_config.py"),
        format!(
            "ENTRY_MODULE = {entry_module:?}\nAPP_GUEST_DIR = {GUEST_IMPORT_DIR:?}\n\
             REPORT_PATH = \"/0/{BUILD_REPORT}\"\nOBJECTS_PATH = \"/0/{SNAPSHOT_OBJECTS}\"\nVENDOR_DIR = \"{GUEST_IMPORT_DIR}/{vendor}\"\n\
             LAYER_DIRS = {layer_mounts:?}\n",
            vendor = crate::deps::VENDOR_DIR,
        ),
    )
}
