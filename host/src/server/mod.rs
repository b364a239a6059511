//! `pycage serve`: an HTTP/1.1 front end (hyper) over loaded handlers, one or
//! many tenants per process.
//!
//! [`tenants`] picks a tenant from a request's Host header and path; it is
//! pure, so it builds without the `runtime` feature for the fuzz targets.
//! `serve` is the server itself and `metrics` its Prometheus counters.

#[cfg(feature = "runtime")]
pub mod metrics;
#[cfg(feature = "runtime")]
mod serve;
pub mod tenants;

#[cfg(feature = "runtime")]
pub use serve::{Server, Tenant, TenantLoadError, load_tenants, runtime_config};
