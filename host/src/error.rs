//! Typed errors: one variant per way loading or dispatching can fail.
//!
//! Paths and texts in them may be the tenant's (file names) or the guest's
//! (messages, tracebacks): every message shows them escaped
//! (`guest_text`), so that printing an error as it is never lets a tenant
//! drive the terminal or forge a line.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// A path as shown in a message: escaped.
fn shown(path: &Path) -> String {
    crate::guest_text::escape_controls(&path.display().to_string())
}

/// A text as shown in a message: escaped, on one line, bounded.
fn text(value: &str) -> String {
    crate::guest_text::one_line(value, 16 << 10)
}

/// Why a handler could not be turned into a runnable sandbox.
///
/// Every variant names the file (and, where known, the line) at fault so the
/// message alone tells the author what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    #[error("handler not found: {}", shown(path))]
    NotFound { path: PathBuf },

    #[error(
        "{}: a handler must be a .py file or a directory ({})",
        shown(path),
        text(found)
    )]
    NotAHandler { path: PathBuf, found: String },

    /// Links are never followed inside what is granted; the handler itself
    /// (or an entry pycage must read) is one.
    #[error(
        "{}: is a symbolic link{}; pycage does not follow links in what it grants: name the \
         file or directory itself",
        shown(path),
        target.as_ref().map(|t| format!(" (to {})", shown(t))).unwrap_or_default()
    )]
    Link {
        path: PathBuf,
        target: Option<PathBuf>,
    },

    #[error(
        "{}: has other names (hard links), so it may live anywhere on the filesystem; pycage \
         grants only files that are the handler's alone: copy it instead",
        shown(path)
    )]
    HardLink { path: PathBuf },

    #[error(
        "{}: no entry module: the directory needs one of {candidates} (or pass --module)",
        shown(dir)
    )]
    NoEntryModule { dir: PathBuf, candidates: String },

    #[error(
        "{}: module `{}` not found in the handler directory",
        shown(dir),
        text(module)
    )]
    EntryModuleMissing { dir: PathBuf, module: String },

    #[error("{}: `{}` is not a valid Python module name", shown(path), text(name))]
    BadModuleName { path: PathBuf, name: String },

    #[error(
        "{}: `{}` is reserved by pycage; rename the handler's file",
        shown(path),
        text(module)
    )]
    ReservedModuleName { path: PathBuf, module: String },

    #[error("{}: over the size limit ({})", shown(path), text(limit))]
    TooLarge { path: PathBuf, limit: String },

    #[error("{}: SyntaxError: {}", text(location), text(message))]
    Syntax { location: String, message: String },

    // The traceback is already a `guest_text::block`: escaped, indented.
    #[error("{}: {}\n{traceback}", text(location), text(message))]
    Import {
        location: String,
        message: String,
        traceback: String,
    },

    #[error("{}: invalid route: {}", text(location), text(message))]
    Route { location: String, message: String },

    #[error(
        "{}: no routes: decorate a function with @route(\"/path\")",
        shown(path)
    )]
    NoRoutes { path: PathBuf },

    #[error(
        "{}: built for WIT `{}`, but this pycage speaks `{expected}`; rebuild it",
        shown(path),
        text(found)
    )]
    WitVersionMismatch {
        path: PathBuf,
        found: String,
        expected: String,
    },

    #[error(
        "{}: {what} limit {requested} is above the runtime maximum {maximum}",
        shown(path)
    )]
    LimitTooHigh {
        path: PathBuf,
        what: &'static str,
        requested: u64,
        maximum: u64,
    },

    /// A capability grant could not be made: a store that cannot be
    /// opened, a variable whose source is missing, a bad name.
    #[error("granting {what}: {}", text(reason))]
    Grant { what: &'static str, reason: String },

    #[error("{}: {}", shown(path), text(message))]
    Pyproject { path: PathBuf, message: String },

    #[error("virtualenv {}: {}", shown(path), text(message))]
    Venv { path: PathBuf, message: String },

    #[error(
        "{}: declares dependencies, which pycage installs with its own pip run by \
         `python3` (3.10 or newer), and there is no such python3 on PATH; install one \
         (for example `apt install python3`) and build again",
        shown(path)
    )]
    NoInstaller { path: PathBuf },

    #[error(
        "{}: installing the dependencies with {installer} failed:\n{}",
        shown(path),
        crate::guest_text::block(detail, 16 << 10)
    )]
    DependencyInstall {
        path: PathBuf,
        installer: &'static str,
        detail: String,
    },

    #[error(
        "{}: `{}` has no pure-Python wheel; its wheels are native (extension \
         module {}) and cannot run in the sandbox's WebAssembly CPython, and {}; use a \
         pure-Python alternative",
        shown(path),
        text(requirement),
        text(modules),
        crate::guest_text::block(source_build, 8 << 10)
    )]
    NativeOnly {
        path: PathBuf,
        requirement: String,
        modules: String,
        /// Why its source distribution did not give a pure wheel either.
        source_build: String,
    },

    #[error(
        "{}: `{}` has no pure-Python wheel, and {}",
        shown(path),
        text(requirement),
        crate::guest_text::block(detail, 8 << 10)
    )]
    SourceBuild {
        path: PathBuf,
        requirement: String,
        detail: String,
    },

    #[error(
        "{}: package `{}` contains the native extension module `{}`, which \
         cannot run in the sandbox's WebAssembly CPython; use a pure-Python package instead",
        shown(path),
        text(package),
        text(module)
    )]
    NativeExtension {
        path: PathBuf,
        package: String,
        module: String,
    },

    #[error("building the sandbox for {} timed out after {timeout:?}", shown(path))]
    BuildTimeout { path: PathBuf, timeout: Duration },

    #[error("building the sandbox for {} failed: {}", shown(path), text(detail))]
    Build { path: PathBuf, detail: String },

    #[error(
        "no build cache directory: set PYCAGE_CACHE_DIR (or XDG_CACHE_HOME or HOME), or pass \
         --cache-dir; pycage never falls back to a shared directory such as /tmp"
    )]
    NoCacheDir,

    #[error("cache {}: {}", shown(path), text(reason))]
    CacheNotPrivate { path: PathBuf, reason: String },

    #[error("building the sandbox for {}: the build {}", shown(path), text(what))]
    BuildLimit { path: PathBuf, what: String },

    #[error("cache {}: {source}", shown(path))]
    Cache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{}: {source}", shown(path))]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[cfg(feature = "runtime")]
    #[error("compiling the component {}: {source:#}", shown(path))]
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
#[non_exhaustive]
pub enum DispatchError {
    #[error("no route matches the path")]
    NotFound,

    #[error("method not allowed (allowed: {})", text(&allowed.join(", ")))]
    MethodNotAllowed { allowed: Vec<String> },

    #[error("handler raised {}", text(message))]
    HandlerException { message: String, traceback: String },

    #[error("request took longer than the {0:?} limit")]
    Timeout(Duration),

    #[error("instance exceeded its memory limit of {} MiB", limit_bytes >> 20)]
    MemoryLimit { limit_bytes: u64 },

    #[error("request body is {size} bytes, over the {limit}-byte limit")]
    RequestTooLarge { size: usize, limit: usize },

    #[error("response body is over the {limit}-byte limit")]
    ResponseTooLarge { limit: usize },

    #[error("handler returned an invalid response: {}", text(.0))]
    InvalidResponse(String),

    #[error("guest exhausted its call stack (recursion too deep)")]
    StackOverflow,

    #[error("handler exited the sandbox with status {0}")]
    Exited(i32),

    #[error("sandbox trapped: {}", text(.0))]
    Trap(String),

    #[error("could not start a sandbox instance: {}", text(.0))]
    Instantiate(String),

    #[error("no instance slot became free within {waited:?}")]
    Overloaded { waited: Duration },
}

impl DispatchError {
    /// Apply `f` to every text in the error that came from the guest.
    #[cfg(feature = "runtime")]
    pub(crate) fn texts_mut(&mut self, mut f: impl FnMut(&mut String)) {
        match self {
            DispatchError::MethodNotAllowed { allowed } => allowed.iter_mut().for_each(f),
            DispatchError::HandlerException { message, traceback } => {
                f(message);
                f(traceback);
            }
            DispatchError::InvalidResponse(text)
            | DispatchError::Trap(text)
            | DispatchError::Instantiate(text) => f(text),
            DispatchError::NotFound
            | DispatchError::Timeout(_)
            | DispatchError::MemoryLimit { .. }
            | DispatchError::RequestTooLarge { .. }
            | DispatchError::ResponseTooLarge { .. }
            | DispatchError::StackOverflow
            | DispatchError::Exited(_)
            | DispatchError::Overloaded { .. } => {}
        }
    }

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
