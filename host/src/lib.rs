//! pycage: run untrusted Python HTTP handlers in CPython compiled to
//! WebAssembly, one brand-new interpreter instance per request.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use pycage::{Cache, LoadOptions, Request, Runtime};
//!
//! let runtime = Runtime::new(Cache::new(Cache::default_root()?))?;
//! let handler = runtime.load("hello.py".as_ref(), &LoadOptions::default(), &|_| {})?;
//! let exchange = handler.dispatch(Request::new("GET", "/hello/ada")?).await;
//! let response = exchange.response();
//! println!("{} {}", response.status, String::from_utf8_lossy(&response.body));
//! # Ok(()) }
//! ```
//!
//! The pipeline, one folder per stage, dependencies running one way:
//!
//! - `contract`: what host and guest agree on (WIT, mounts, names,
//!   versions, the embedded Python files, the build report); depends on
//!   nothing.
//! - `build`: handler files to a cached, sealed image: staging, dependency
//!   layers, the cache, the standard-library export, the build worker
//!   (componentize-py, flatten, immortal objects, compile).
//! - `capabilities`: what an instance may be granted (files, stdio), each
//!   with its link / grant / prepare phases.
//! - `instance`: one Store: memory slots, stacks, the memory cap, the
//!   deadline, the calls and their outcome.
//! - `runtime`: engines, the epoch ticker, admission, loading, [`Handler`].
//! - [`server`]: the multi-tenant HTTP front end (`pycage serve`),
//!   configured by [`config`]; and the `pycage` binary on top.
//!
//! Without the default `runtime` feature the crate is only the parsers of
//! untrusted data ([`http`], [`config`], [`limits`], tenant routing), which
//! is what the fuzz targets build.

// Sandbox memories are private file mappings reset with mmap (and, on
// Linux, listed with PAGEMAP_SCAN): see `instance::memory`.
#[cfg(all(feature = "runtime", not(unix)))]
compile_error!("pycage's runtime needs a Unix host (Linux for the fast memory reset)");

#[cfg(feature = "runtime")]
mod build;
#[cfg(feature = "runtime")]
mod capabilities;
pub mod config;
#[cfg(feature = "runtime")]
mod contract;
pub mod error;
#[cfg(feature = "runtime")]
pub mod export;
pub mod grants;
mod guest_text;
#[cfg(feature = "runtime")]
mod host_fs;
pub mod http;
#[cfg(feature = "runtime")]
mod instance;
pub mod limits;
pub mod routing;
#[cfg(feature = "runtime")]
mod runtime;
pub mod server;

#[cfg(feature = "runtime")]
pub use build::cache::Cache;
#[cfg(feature = "runtime")]
pub use build::{BuildIsolation, LoadEvent};
#[cfg(feature = "runtime")]
pub use capabilities::CapabilityUsage;
#[cfg(feature = "runtime")]
pub use capabilities::keyvalue::KvUsage;
#[cfg(feature = "runtime")]
pub use capabilities::outbound::OutboundUsage;
#[cfg(feature = "runtime")]
pub use capabilities::output::CapturedOutput;
#[cfg(feature = "runtime")]
pub use contract::GUEST_PYTHON_VERSION;
pub use error::{DispatchError, LoadError};
pub use guest_text::escape_controls;
pub use http::{Request, RequestError, Response};
#[doc(hidden)]
#[cfg(feature = "runtime")]
pub use instance::memory::ResetStats;
#[cfg(feature = "runtime")]
pub use instance::{Exchange, Timings};
pub use limits::{BuildLimits, Limits};
#[cfg(feature = "runtime")]
pub use runtime::{
    Handler, LoadOptions, RouteInfo, Runtime, RuntimeConfig, Teardown, default_data_dir,
};

/// The argument that makes the `pycage` binary a build worker, and the
/// worker's entry point: a binary that is to serve as
/// [`BuildIsolation::Process`]'s program calls [`run_build_worker`] when
/// its first argument is this.
#[cfg(feature = "runtime")]
pub use build::{WORKER_ARG as BUILD_WORKER_ARG, worker_main as run_build_worker};
