//! Typed errors: one variant per way loading or dispatching can fail.

use std::path::PathBuf;
use std::time::Duration;

/// Why a handler could not be turned into a runnable sandbox.
///
/// Every variant names the file (and, where known, the line) at fault so the
/// message alone tells the author what to fix.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("handler not found: {}", path.display())]
    NotFound { path: PathBuf },

    #[error("{}: a handler must be a .py file or a directory ({found})", path.display())]
    NotAHandler { path: PathBuf, found: String },

    /// Links are never followed inside what is granted; the handler itself
    /// (or an entry pycage must read) is one.
    #[error(
        "{}: is a symbolic link{}; pycage does not follow links in what it grants: name the \
         file or directory itself",
        path.display(),
        target.as_ref().map(|t| format!(" (to {})", t.display())).unwrap_or_default()
    )]
    Link {
        path: PathBuf,
        target: Option<PathBuf>,
    },

    #[error(
        "{}: no entry module: the directory needs one of {candidates} (or pass --module)",
        dir.display()
    )]
    NoEntryModule { dir: PathBuf, candidates: String },

    #[error("{}: module `{module}` not found in the handler directory", dir.display())]
    EntryModuleMissing { dir: PathBuf, module: String },

    #[error("{}: `{name}` is not a valid Python module name", path.display())]
    BadModuleName { path: PathBuf, name: String },

    #[error("{}: `{module}` is reserved by pycage; rename the handler's file", path.display())]
    ReservedModuleName { path: PathBuf, module: String },

    #[error("{}: over the size limit ({limit})", path.display())]
    TooLarge { path: PathBuf, limit: String },

    #[error("{location}: SyntaxError: {message}")]
    Syntax { location: String, message: String },

    #[error("{location}: {message}\n{traceback}")]
    Import {
        location: String,
        message: String,
        traceback: String,
    },

    #[error("{location}: invalid route: {message}")]
    Route { location: String, message: String },

    #[error("{}: no routes: decorate a function with @route(\"/path\")", path.display())]
    NoRoutes { path: PathBuf },

    #[error(
        "{}: built for WIT `{found}`, but this pycage speaks `{expected}`; rebuild it",
        path.display()
    )]
    WitVersionMismatch {
        path: PathBuf,
        found: String,
        expected: String,
    },

    #[error("{}: {what} limit {requested} is above the runtime maximum {maximum}", path.display())]
    LimitTooHigh {
        path: PathBuf,
        what: &'static str,
        requested: u64,
        maximum: u64,
    },

    #[error("{}: {message}", path.display())]
    Pyproject { path: PathBuf, message: String },

    #[error("virtualenv {}: {message}", path.display())]
    Venv { path: PathBuf, message: String },

    #[error(
        "{}: declares dependencies, but neither pip (`python3 -m pip`) nor uv is on PATH; \
         install one of them (for example `apt install python3-pip`) and build again",
        path.display()
    )]
    NoInstaller { path: PathBuf },

    #[error("{}: installing the dependencies with {installer} failed:\n{detail}", path.display())]
    DependencyInstall {
        path: PathBuf,
        installer: &'static str,
        detail: String,
    },

    #[error(
        "{}: `{requirement}` has no pure-Python wheel; its wheels are native (extension \
         module {modules}) and cannot run in the sandbox's WebAssembly CPython; use a \
         pure-Python alternative",
        path.display()
    )]
    NativeOnly {
        path: PathBuf,
        requirement: String,
        modules: String,
    },

    #[error(
        "{}: package `{package}` contains the native extension module `{module}`, which \
         cannot run in the sandbox's WebAssembly CPython; use a pure-Python package instead",
        path.display()
    )]
    NativeExtension {
        path: PathBuf,
        package: String,
        module: String,
    },

    #[error("building the sandbox for {} timed out after {timeout:?}", path.display())]
    BuildTimeout { path: PathBuf, timeout: Duration },

    #[error("building the sandbox for {} failed: {detail}", path.display())]
    Build { path: PathBuf, detail: String },

    #[error(
        "no build cache directory: set PYCAGE_CACHE_DIR (or XDG_CACHE_HOME or HOME), or pass \
         --cache-dir; pycage never falls back to a shared directory such as /tmp"
    )]
    NoCacheDir,

    #[error("cache {}: {reason}", path.display())]
    CacheNotPrivate { path: PathBuf, reason: String },

    #[error("building the sandbox for {}: the build {what}", path.display())]
    BuildLimit { path: PathBuf, what: String },

    #[error("cache {}: {source}", path.display())]
    Cache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[cfg(feature = "runtime")]
    #[error("compiling the component {}: {source:#}", path.display())]
    Compile {
        path: PathBuf,
        #[source]
        source: wasmtime::Error,
    },
}

/// Why one request did not produce a handler response.
///
/// The HTTP status each maps to is given by [`DispatchError::status`].
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("no route matches the path")]
    NotFound,

    #[error("method not allowed (allowed: {})", allowed.join(", "))]
    MethodNotAllowed { allowed: Vec<String> },

    #[error("handler raised {message}")]
    HandlerException { message: String, traceback: String },

    #[error("request took longer than the {0:?} limit")]
    Timeout(Duration),

    #[error("instance exceeded its memory limit of {} MiB", limit_bytes >> 20)]
    MemoryLimit { limit_bytes: u64 },

    #[error("request body is {size} bytes, over the {limit}-byte limit")]
    RequestTooLarge { size: usize, limit: usize },

    #[error("response body is over the {limit}-byte limit")]
    ResponseTooLarge { limit: usize },

    #[error("handler returned an invalid response: {0}")]
    InvalidResponse(String),

    #[error("guest exhausted its call stack (recursion too deep)")]
    StackOverflow,

    #[error("handler exited the sandbox with status {0}")]
    Exited(i32),

    #[error("sandbox trapped: {0}")]
    Trap(String),

    #[error("could not start a sandbox instance: {0}")]
    Instantiate(String),

    #[error("no instance slot became free within {waited:?}")]
    Overloaded { waited: Duration },
}

impl DispatchError {
    /// Which limit stopped the request, if one did (for logs and metrics).
    pub fn limit(&self) -> Option<&'static str> {
        match self {
            DispatchError::Timeout(_) => Some("timeout"),
            DispatchError::MemoryLimit { .. } => Some("memory"),
            DispatchError::RequestTooLarge { .. } => Some("request_body"),
            DispatchError::ResponseTooLarge { .. } => Some("response_body"),
            DispatchError::Overloaded { .. } => Some("concurrency"),
            DispatchError::StackOverflow => Some("stack"),
            _ => None,
        }
    }

    /// The HTTP status a server should answer with.
    pub fn status(&self) -> u16 {
        match self {
            DispatchError::NotFound => 404,
            DispatchError::MethodNotAllowed { .. } => 405,
            DispatchError::RequestTooLarge { .. } => 413,
            DispatchError::Timeout(_) => 504,
            DispatchError::Instantiate(_) | DispatchError::Overloaded { .. } => 503,
            DispatchError::HandlerException { .. }
            | DispatchError::MemoryLimit { .. }
            | DispatchError::ResponseTooLarge { .. }
            | DispatchError::InvalidResponse(_)
            | DispatchError::StackOverflow
            | DispatchError::Exited(_)
            | DispatchError::Trap(_) => 500,
        }
    }
}
