//! `pycage serve`: an HTTP/1.1 front end (hyper) over loaded handlers, one
//! or many tenants per process.
//!
//! - [`tenants`] picks a tenant from a request's authority and path; it is
//!   pure, so it builds without the `runtime` feature for the fuzz targets.
//! - `tenant`: the tenants and their load state; `listen`: accepting
//!   connections within bounds; `app`: one request; `admin`: metrics and
//!   health; `metrics`: the Prometheus counters.

#[cfg(feature = "runtime")]
mod admin;
#[cfg(feature = "runtime")]
mod app;
#[cfg(feature = "runtime")]
mod listen;
#[cfg(feature = "runtime")]
pub mod metrics;
#[cfg(feature = "runtime")]
mod tenant;
pub use crate::routing as tenants;

#[cfg(feature = "runtime")]
pub use running::{Server, runtime_config};
#[cfg(feature = "runtime")]
pub use tenant::{Tenant, TenantLoadError, TenantStatus, load_tenants, tenants as pending_tenants};

#[cfg(feature = "runtime")]
mod running {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::Duration;

    use hyper_util::server::graceful::GracefulShutdown;
    use tokio::net::TcpListener;
    use tokio::sync::watch;
    use tracing::{info, warn};

    use super::app::{App, RequestIds};
    use super::metrics::Metrics;
    use super::tenant::Tenant;
    use super::tenants::TenantRoutes;
    use super::{admin, listen};
    use crate::build::cache::Cache;
    use crate::config::ServeConfig;
    use crate::runtime::{Runtime, RuntimeConfig};

    /// Most admin connections at once.
    const MAX_ADMIN_CONNECTIONS: usize = 16;

    /// Runtime settings that fit `config`: its instance count, its largest
    /// memory limit, its build limits, its data directory, key-value stores
    /// and outbound name overrides.
    pub fn runtime_config(config: &ServeConfig, cache: Cache) -> RuntimeConfig {
        let mut runtime = RuntimeConfig::new(cache);
        runtime.max_instances = config.max_instances;
        runtime.max_memory_bytes = config.max_memory_bytes();
        runtime.queue_timeout = config.queue_timeout;
        runtime.build_limits = config.build_limits;
        if config.data_dir.is_some() {
            runtime.data_dir = config.data_dir.clone();
        }
        runtime.key_value_stores = config.key_value_stores.clone();
        runtime.outbound_resolve = config.outbound_resolve.clone();
        runtime
    }

    /// A bound, not yet running server.
    pub struct Server {
        listener: TcpListener,
        admin: Option<TcpListener>,
        app: Arc<App>,
        shutdown_timeout: Duration,
        max_connections: usize,
    }

    impl Server {
        /// Bind the listener (and the admin listener, if any) of `config`
        /// without serving yet, so callers can learn the addresses (port 0
        /// picks a free port). `tenants` may still be loading (see
        /// [`load_tenants`](super::load_tenants)): until one is loaded its
        /// requests are answered 503.
        pub async fn bind(
            runtime: Arc<Runtime>,
            tenants: Vec<Tenant>,
            config: &ServeConfig,
        ) -> std::io::Result<Self> {
            let listener = TcpListener::bind(config.listen).await?;
            let admin = match config.admin_listen {
                Some(addr) => Some(TcpListener::bind(addr).await?),
                None => None,
            };
            let mut routes = TenantRoutes::default();
            for (index, tenant) in tenants.iter().enumerate() {
                routes.add(index, &tenant.hosts, tenant.path_prefix.as_deref());
            }
            Ok(Self {
                listener,
                admin,
                app: Arc::new(App {
                    runtime,
                    tenants,
                    routes,
                    metrics: Metrics::new(),
                    body_timeout: config.body_timeout,
                    request_ids: RequestIds::new(),
                }),
                shutdown_timeout: config.shutdown_timeout,
                max_connections: config.max_connections,
            })
        }

        pub fn local_addr(&self) -> SocketAddr {
            self.listener
                .local_addr()
                .expect("bound listener has an address")
        }

        pub fn admin_addr(&self) -> Option<SocketAddr> {
            self.admin.as_ref().and_then(|l| l.local_addr().ok())
        }

        /// Serve until `shutdown` completes; then stop accepting, let
        /// in-flight requests finish for up to the shutdown timeout, and
        /// return.
        pub async fn run(
            self,
            shutdown: impl std::future::Future<Output = ()>,
        ) -> std::io::Result<()> {
            let (stop_tx, stop_rx) = watch::channel(false);
            if let Some(admin) = self.admin {
                info!(address = %admin.local_addr().map(|a| a.to_string()).unwrap_or_default(),
                    "admin endpoints: /metrics, /healthz, /readyz");
                let app = self.app.clone();
                let handle = move |request: hyper::Request<hyper::body::Incoming>| {
                    let app = app.clone();
                    async move { admin::handle(&app, &request) }
                };
                tokio::spawn(listen::serve(
                    admin,
                    MAX_ADMIN_CONNECTIONS,
                    handle,
                    None,
                    stop_rx.clone(),
                ));
            }
            let graceful = GracefulShutdown::new();
            let app = self.app.clone();
            let handle = move |request| {
                let app = app.clone();
                async move { app.handle(request).await }
            };
            {
                let accepting = listen::serve(
                    self.listener,
                    self.max_connections,
                    handle,
                    Some(&graceful),
                    stop_rx,
                );
                tokio::pin!(accepting);
                tokio::select! {
                    () = &mut accepting => {}
                    () = shutdown => {
                        let _ = stop_tx.send(true);
                        accepting.await;
                    }
                }
            }
            info!(
                connections = graceful.count(),
                timeout = ?self.shutdown_timeout,
                "shutting down: no new connections, finishing in-flight requests"
            );
            tokio::select! {
                () = graceful.shutdown() => info!("all connections closed"),
                () = tokio::time::sleep(self.shutdown_timeout) => {
                    warn!("shutdown deadline passed; dropping the remaining connections");
                }
            }
            Ok(())
        }
    }
}
