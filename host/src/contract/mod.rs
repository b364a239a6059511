//! What the host and the guest agree on: the WIT interface, the guest's
//! filesystem layout, the names and versions an image is built with, the
//! Python files embedded in the host, the build report's schema, and the
//! engine settings an image is compiled for (which the build and the
//! runtime must share). It depends on nothing else in the crate; everything
//! else may depend on it.

pub(crate) mod engine;
pub(crate) mod framework;
pub(crate) mod guest_http;
pub(crate) mod report;
pub(crate) mod wit;

/// Versions that shape a built image; part of every cache key.
pub(crate) const COMPONENTIZE_PY_VERSION: &str = "0.25.1";
pub(crate) const WASMTIME_VERSION: &str = "46.0.3";
/// The CPython version componentize-py embeds: dependencies are resolved for it.
pub const GUEST_PYTHON_VERSION: &str = "3.14";
/// The guest's PEP 508 environment markers, as its interpreter reports
/// them (`platform`, `sys`, `os` inside the sandbox): the installer
/// evaluates requirements' markers with these, not the host's.
pub(crate) const GUEST_MARKERS: &str = r#"{"implementation_name": "cpython", "implementation_version": "3.14.0", "os_name": "posix", "platform_machine": "wasm32", "platform_python_implementation": "CPython", "platform_release": "0.0.0", "platform_system": "wasi", "platform_version": "0.0.0", "python_full_version": "3.14.0", "python_version": "3.14", "sys_platform": "wasi"}"#;
/// The cache tag of the guest's bytecode files (`__pycache__/x.cpython-314.pyc`).
pub(crate) const PYC_TAG: &str = "cpython-314";

/// The module componentize-py imports at build time: it implements the WIT exports.
pub(crate) const GLUE_MODULE: &str = "pycage_guest";
/// The module componentize-py imports for `pycage export`: it implements
/// `wasi:http/incoming-handler@0.2.0` instead.
pub(crate) const HTTP_GLUE_MODULE: &str = "pycage_http_guest";

/// The guest's mounts. componentize-py names the mounts of its python path
/// after their position (`/0`, `/1`, ...), and module `__file__`s and
/// `sys.path` keep those names in the snapshot, so request time mounts the
/// same trees at the same names:
///
/// | guest path | what | when |
/// | --- | --- | --- |
/// | `/python` | CPython's standard library | build and request time |
/// | `/0` | the framework and the glue (writable: the build report) | build time only |
/// | `/1` | the handler's files, as imported | build and request time |
/// | `/2`, `/3`, ... | dependency layers, in order | build and request time |
/// | `/app` | the handler's files again, for handler code to read | request time |
pub(crate) mod mounts {
    /// CPython's standard library.
    pub(crate) const STDLIB: &str = "/python";
    /// The framework mount, where the glue writes its report at build time.
    pub(crate) const FRAMEWORK: &str = "/0";
    /// The handler's tree as its modules were imported.
    pub(crate) const IMPORT: &str = "/1";
    /// The handler's tree for handler code to read.
    pub(crate) const APP: &str = "/app";
    /// Mount number of the first dependency layer.
    pub(crate) const FIRST_LAYER: usize = 2;

    /// The guest directory layer number `index` (from 0) is mounted at.
    pub(crate) fn layer(index: usize) -> String {
        format!("/{}", index + FIRST_LAYER)
    }
}

/// The handler subdirectory whose packages are importable (after the handler).
pub(crate) const VENDOR_DIR: &str = "vendor";

/// The build report the glue writes, in the framework mount.
pub(crate) const BUILD_REPORT: &str = "build-report.json";
/// The addresses and types of the snapshot's objects, written last at build
/// time in the framework mount (see `build::immortal`).
pub(crate) const SNAPSHOT_OBJECTS: &str = "snapshot-objects.bin";

/// Module names the sandbox itself uses; a handler may not shadow them
/// (nor anything starting with `componentize_py`).
pub(crate) const RESERVED_MODULES: &[&str] = &[
    "pycage",
    "pycage_guest",
    "pycage_http_guest",
    "pycage_build_config",
    "wit_world",
    "componentize_py_types",
    "componentize_py_runtime",
    "componentize_py_async_support",
    "poll_loop",
];

/// Most routes a handler may declare (the glue refuses more at build time,
/// the host at request time), and the longest pattern, handler name or
/// method in its table.
pub(crate) const MAX_ROUTES: usize = 4096;
pub(crate) const MAX_ROUTE_TEXT: usize = 1024;
