//! The Python side of the sandbox, embedded in the host binary: the `pycage`
//! package handler authors import, the export glue, and the build-time
//! standard-library exporter; and the per-build configuration written next
//! to them.

use std::fs;
use std::path::Path;

use super::{BUILD_REPORT, SNAPSHOT_OBJECTS, VENDOR_DIR, mounts};

/// The `pycage` package and the export glue, copied into every build.
pub(crate) const FRAMEWORK_FILES: &[(&str, &str)] = &[
    (
        "pycage/__init__.py",
        include_str!("../../../guest-python/pycage/__init__.py"),
    ),
    (
        "pycage/_http.py",
        include_str!("../../../guest-python/pycage/_http.py"),
    ),
    (
        "pycage/_router.py",
        include_str!("../../../guest-python/pycage/_router.py"),
    ),
    (
        "pycage/_convert.py",
        include_str!("../../../guest-python/pycage/_convert.py"),
    ),
    (
        "pycage/_capabilities.py",
        include_str!("../../../guest-python/pycage/_capabilities.py"),
    ),
    (
        "pycage/_fetch.py",
        include_str!("../../../guest-python/pycage/_fetch.py"),
    ),
    (
        "pycage/_aio.py",
        include_str!("../../../guest-python/pycage/_aio.py"),
    ),
    (
        "pycage/_apps.py",
        include_str!("../../../guest-python/pycage/_apps.py"),
    ),
    (
        "pycage/_compat.py",
        include_str!("../../../guest-python/pycage/_compat.py"),
    ),
    (
        "pycage/_tmpfs.py",
        include_str!("../../../guest-python/pycage/_tmpfs.py"),
    ),
    (
        "pycage/_ssl.py",
        include_str!("../../../guest-python/pycage/_ssl.py"),
    ),
    (
        "pycage/kv.py",
        include_str!("../../../guest-python/pycage/kv.py"),
    ),
    (
        "pycage/config.py",
        include_str!("../../../guest-python/pycage/config.py"),
    ),
    (
        "pycage/_glue/__init__.py",
        include_str!("../../../guest-python/pycage/_glue/__init__.py"),
    ),
    (
        "pycage/_glue/load.py",
        include_str!("../../../guest-python/pycage/_glue/load.py"),
    ),
    (
        "pycage/_glue/snapshot.py",
        include_str!("../../../guest-python/pycage/_glue/snapshot.py"),
    ),
    (
        "pycage/_glue/exports.py",
        include_str!("../../../guest-python/pycage/_glue/exports.py"),
    ),
    (
        "pycage/_glue/warm.py",
        include_str!("../../../guest-python/pycage/_glue/warm.py"),
    ),
    (
        "pycage/_glue/wasi_http.py",
        include_str!("../../../guest-python/pycage/_glue/wasi_http.py"),
    ),
    (
        "pycage_guest.py",
        include_str!("../../../guest-python/pycage_guest.py"),
    ),
    (
        "pycage_http_guest.py",
        include_str!("../../../guest-python/pycage_http_guest.py"),
    ),
];

/// Build-time helper that exports the stdlib with precompiled bytecode.
pub(crate) const STDLIB_EXPORTER: &str =
    include_str!("../../../guest-python/pycage_stdlib_export.py");
pub(crate) const STDLIB_EXPORTER_MODULE: &str = "pycage_stdlib_export";

/// Build-time helper that builds a source distribution into a wheel.
pub(crate) const SDIST_BUILDER: &str = include_str!("../../../guest-python/pycage_sdist_build.py");
pub(crate) const SDIST_BUILDER_MODULE: &str = "pycage_sdist_build";

/// Write the framework plus its per-build configuration into `dir`
/// (mounted at /0 during pre-initialisation); `extra_config` (Python
/// assignments) ends the configuration.
pub(crate) fn write_framework(
    dir: &Path,
    entry_module: &str,
    app_attribute: Option<&str>,
    layer_mounts: &[String],
    extra_config: &str,
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
    let framework = mounts::FRAMEWORK;
    let import = mounts::IMPORT;
    let app = app_attribute.map_or("None".to_owned(), |a| format!("{a:?}"));
    fs::write(
        dir.join("pycage_build_config.py"),
        format!(
            "ENTRY_MODULE = {entry_module:?}\nAPP_ATTRIBUTE = {app}\nIMPORT_DIR = {import:?}\n\
             REPORT_PATH = \"{framework}/{BUILD_REPORT}\"\n\
             OBJECTS_PATH = \"{framework}/{SNAPSHOT_OBJECTS}\"\n\
             VENDOR_DIR = \"{import}/{VENDOR_DIR}\"\nLAYER_DIRS = {layer_mounts:?}\n{extra_config}",
        ),
    )
}
