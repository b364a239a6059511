//! The tenants of a server and their load state: a tenant is reachable
//! (its routes exist) from the moment the server listens, answers 503 while
//! its handler loads or if it failed to, and serves once it is loaded.
//!
//! Loading builds images on a cache miss, which runs tenant code and can
//! take up to the build timeout; so `pycage serve --config` listens first
//! and loads tenants in the background, a few at a time, and one tenant's
//! broken or looping build never keeps the others (or the server) down.

use std::sync::{Arc, Mutex, OnceLock};

use tracing::{error, info};

use crate::build::LoadEvent;
use crate::config::{ServeConfig, TenantConfig};
use crate::error::LoadError;
use crate::guest_text;
use crate::runtime::{Handler, LoadOptions, Runtime};

/// A tenant: how requests reach it, and its handler once loaded.
#[derive(Clone)]
pub struct Tenant {
    pub name: String,
    /// Host names (lower-case, no port); empty means any host.
    pub hosts: Vec<String>,
    /// Path prefix such as "/shop", stripped before dispatch.
    pub path_prefix: Option<String>,
    state: Arc<OnceLock<Result<Handler, String>>>,
}

/// Where a tenant's handler stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantStatus {
    Loading,
    Ready,
    Failed,
}

impl Tenant {
    /// A tenant whose handler is loaded already.
    pub fn ready(
        name: impl Into<String>,
        handler: Handler,
        hosts: Vec<String>,
        path_prefix: Option<String>,
    ) -> Self {
        let tenant = Self::pending(name, hosts, path_prefix);
        let _ = tenant.state.set(Ok(handler));
        tenant
    }

    /// A tenant whose handler is not loaded yet (see [`load_tenants`]).
    pub fn pending(
        name: impl Into<String>,
        hosts: Vec<String>,
        path_prefix: Option<String>,
    ) -> Self {
        Self {
            name: name.into(),
            hosts,
            path_prefix,
            state: Arc::default(),
        }
    }

    /// The handler, once loaded.
    pub fn handler(&self) -> Option<&Handler> {
        self.state.get().and_then(|state| state.as_ref().ok())
    }

    pub fn status(&self) -> TenantStatus {
        match self.state.get() {
            None => TenantStatus::Loading,
            Some(Ok(_)) => TenantStatus::Ready,
            Some(Err(_)) => TenantStatus::Failed,
        }
    }

    /// Why loading failed, escaped for logs and terminals.
    pub fn failure(&self) -> Option<&str> {
        self.state
            .get()
            .and_then(|state| state.as_ref().err())
            .map(String::as_str)
    }
}

/// A tenant whose handler could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("tenant `{tenant}`: {source}")]
pub struct TenantLoadError {
    pub tenant: String,
    #[source]
    pub source: LoadError,
}

/// Every tenant of `config`, not loaded yet.
pub fn tenants(config: &ServeConfig) -> Vec<Tenant> {
    config
        .tenants
        .iter()
        .map(|t| Tenant::pending(&t.name, t.hosts.clone(), t.path_prefix.clone()))
        .collect()
}

/// How many tenants load at once: builds are CPU- and memory-heavy, and
/// each runs in a process of its own.
fn parallel_loads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4))
}

/// Load the handler of every tenant of `config` into `tenants` (as made by
/// [`tenants`]), building where needed, a few at a time. Blocks until all
/// are loaded or have failed; returns the failures (each is also logged and
/// recorded in its tenant). Any tenant not loaded by this call stays
/// `Loading`.
pub fn load_tenants(
    runtime: &Runtime,
    config: &ServeConfig,
    tenants: &[Tenant],
    on_event: &(dyn Fn(LoadEvent<'_>) + Sync),
) -> Vec<TenantLoadError> {
    let queue: Mutex<Vec<(&TenantConfig, &Tenant)>> =
        Mutex::new(config.tenants.iter().zip(tenants).rev().collect());
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..parallel_loads().min(tenants.len()) {
            scope.spawn(|| {
                loop {
                    let next = queue.lock().unwrap_or_else(|e| e.into_inner()).pop();
                    let Some((spec, tenant)) = next else { break };
                    if let Err(failure) = load_one(runtime, spec, tenant, on_event) {
                        failures
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(failure);
                    }
                }
            });
        }
    });
    failures.into_inner().unwrap_or_else(|e| e.into_inner())
}

fn load_one(
    runtime: &Runtime,
    spec: &TenantConfig,
    tenant: &Tenant,
    on_event: &(dyn Fn(LoadEvent<'_>) + Sync),
) -> Result<(), TenantLoadError> {
    let options = LoadOptions {
        module: spec.module.clone(),
        limits: spec.limits.clone(),
        max_concurrency: spec.max_concurrency,
        venv: spec.venv.clone(),
        tenant: Some(spec.name.clone()),
        key_value_stores: spec.key_value_stores.clone(),
        allowed_outbound_hosts: spec.allowed_outbound_hosts.clone(),
        variables: spec.variables.clone(),
    };
    match runtime.load(&spec.handler, &options, on_event) {
        Ok(handler) => {
            info!(tenant = %spec.name, handler = %spec.handler.display(), cached = handler.cache_hit(), "loaded");
            let _ = tenant.state.set(Ok(handler));
            Ok(())
        }
        Err(source) => {
            // Guest and tenant text may be in the message: one escaped line.
            let shown = guest_text::one_line(&source.to_string(), 64 << 10);
            error!(tenant = %spec.name, handler = %spec.handler.display(), error = %shown, "failed to load; the tenant answers 503");
            let _ = tenant.state.set(Err(shown));
            Err(TenantLoadError {
                tenant: spec.name.clone(),
                source,
            })
        }
    }
}
