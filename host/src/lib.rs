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
//! How the pieces fit:
//! - [`stage`] reads the handler's files; [`cache`] keys and stores built images;
//!   [`builder`] runs componentize-py and Cranelift on a cache miss (Cranelift
//!   reuses the functions it compiled before from `code_cache`).
//! - [`Runtime`] holds the instance slots; [`Handler`] is a loaded image with
//!   its own engine, whose linear memories [`memory`] maps from the image
//!   and resets by copying back only the pages a request wrote.
//! - [`sandbox`] runs one request in a fresh Store with read-only mounts and
//!   [`Limits`]; [`http`] validates what crosses the boundary.
//! - [`server`] is the multi-tenant HTTP front end (`pycage serve`), configured
//!   by [`config`] (`pycage.toml`).
//! - The contract with the guest is `wit/handler.wit` ([`wit`]); the guest
//!   side lives in `guest-python/` ([`guest`]).

// Sandbox memories are private file mappings reset with mmap (and, on
// Linux, listed with PAGEMAP_SCAN): see `memory`.
#[cfg(all(feature = "runtime", not(unix)))]
compile_error!("pycage's runtime needs a Unix host (Linux for the fast memory reset)");

#[cfg(feature = "runtime")]
pub mod build;
#[cfg(feature = "runtime")]
pub mod cache;
#[cfg(feature = "runtime")]
mod code_cache;
pub mod config;
#[cfg(feature = "runtime")]
pub(crate) mod deps;
#[cfg(feature = "runtime")]
mod engine;
pub mod error;
#[cfg(feature = "runtime")]
mod flatten;
#[cfg(feature = "runtime")]
pub mod guest;
pub mod guest_text;
pub mod http;
#[cfg(feature = "runtime")]
mod immortal;
pub mod limits;
#[cfg(feature = "runtime")]
mod memory;
#[cfg(feature = "runtime")]
pub mod output;
#[cfg(feature = "runtime")]
mod preopens;
#[cfg(feature = "runtime")]
pub mod runtime;
#[cfg(feature = "runtime")]
pub mod sandbox;
pub mod server;
#[cfg(feature = "runtime")]
mod stacks;
#[cfg(feature = "runtime")]
mod stage;
#[cfg(feature = "runtime")]
mod untrusted_fs;
#[cfg(feature = "runtime")]
pub mod wit;

#[cfg(feature = "runtime")]
pub use build::{BuildIsolation, BuildLimits, LoadEvent, RouteInfo};
#[cfg(feature = "runtime")]
pub use cache::Cache;
pub use error::{DispatchError, LoadError};
pub use http::{Request, RequestError, Response};
pub use limits::Limits;
#[doc(hidden)]
#[cfg(feature = "runtime")]
pub use memory::ResetStats;
#[cfg(feature = "runtime")]
pub use output::CapturedOutput;
#[cfg(feature = "runtime")]
pub use runtime::{Handler, LoadOptions, Runtime, RuntimeConfig, Teardown};
#[cfg(feature = "runtime")]
pub use sandbox::{Exchange, Timings};
