//! The process-wide runtime: the epoch ticker, the admission gate, the
//! pools of memory slots and fiber stacks, the build cache; and loading a
//! handler (build or cache hit, grants, engine, linker) into a [`Handler`].
//!
//! - `handler`: the loaded handler and its calls;
//! - `admission`: how many instances may be live, and the wait for one;
//! - `ticker`: the epoch clock behind request deadlines.

mod admission;
mod handler;
mod ticker;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use wasmtime::component::Linker;
use wasmtime::{Config, Engine, InstanceAllocationStrategy};

use crate::build::cache::Cache;
use crate::build::stage::HandlerSource;
use crate::build::{self, BuildIsolation, BuildSettings, LoadEvent};
use crate::capabilities::Grants;
use crate::capabilities::files::Preopens;
use crate::capabilities::keyvalue::{Backends, KvGrant};
use crate::capabilities::outbound::OutboundGrant;
use crate::capabilities::stdio::StdioGrant;
use crate::capabilities::variables::VariablesGrant;
use crate::config::{StoreConfig, default_stores};
use crate::contract::wit::SandboxPre;
use crate::contract::{engine, mounts};
use crate::error::LoadError;
use crate::grants::{self, AllowedHost, VariableSpec};
use crate::instance::memory::{IdleBudget, SlotMemories};
use crate::instance::stacks::StackPool;
use crate::instance::{self, Prepared};
use crate::limits::{BuildLimits, Limits};
use admission::Gate;
use handler::HandlerInner;
pub use handler::{Handler, RouteInfo};
use ticker::EpochTicker;

/// Process-wide settings for a [`Runtime`].
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub cache: Cache,
    /// Instances that may be live at once across all handlers. Requests
    /// beyond it wait (see `queue_timeout`). Also how many reset memory
    /// slots (and fiber stacks) are kept for reuse. Default: 64.
    pub max_instances: u32,
    /// The largest memory limit any handler may be given. Default: 512 MiB.
    pub max_memory_bytes: u64,
    /// How long a request may wait for a free instance slot before it is
    /// refused with [`DispatchError::Overloaded`]. Default: 1 s.
    pub queue_timeout: Duration,
    /// Most bytes a finished instance's memory slot may have written and
    /// still be reset by copying those pages back from the image; a slot
    /// whose instance wrote more is remapped instead (its next instance
    /// then faults pages in again). So it also bounds the private memory an
    /// idle slot holds. Default: 16 MiB (a hello request writes ~1 MiB).
    pub keep_resident_bytes: usize,
    /// Where cache-miss builds run, which run the tenant's module-level
    /// code. Default: a child process of the pycage binary, under
    /// `build_limits`.
    pub build_isolation: BuildIsolation,
    /// Time, memory and disk a cache-miss build may take (see
    /// [`BuildLimits`] for the defaults).
    pub build_limits: BuildLimits,
    /// When a finished request's instance is torn down. Default: in the
    /// background, after the response is returned.
    pub teardown: Teardown,
    /// Where SQLite key-value stores without a `path` keep their data
    /// (under `kv/<tenant>/<store>.sqlite`). Default: [`default_data_dir`].
    pub data_dir: Option<PathBuf>,
    /// The key-value stores handlers may be granted, by name. Default: one,
    /// `default`, on SQLite under `data_dir`.
    pub key_value_stores: BTreeMap<String, StoreConfig>,
    /// Names that outbound requests resolve to a fixed address instead of
    /// through DNS (like curl's `--resolve`). Default: none.
    pub outbound_resolve: BTreeMap<String, IpAddr>,
    /// Load a handler whose files have the same stamps (inode, size,
    /// mtime, change time) as when it was last read without reading them
    /// again (`build::cache::index`). Default: off, every load reads every
    /// file. Stamps vouch for a file only against someone who cannot write
    /// it unseen: a write through a shared memory mapping can leave them
    /// unchanged (on tmpfs, for as long as the mapping lives), so turn this
    /// on where the directory's owner is the one running pycage (the CLI's
    /// one-shot commands do), not for tenants' directories.
    pub trust_file_stamps: bool,
}

/// Where key-value data lives unless configured: `$PYCAGE_DATA_DIR`, else
/// `$XDG_DATA_HOME/pycage`, else `~/.local/share/pycage`.
pub fn default_data_dir() -> Option<PathBuf> {
    let from = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    from("PYCAGE_DATA_DIR")
        .or_else(|| from("XDG_DATA_HOME").map(|d| d.join("pycage")))
        .or_else(|| from("HOME").map(|d| d.join(".local/share/pycage")))
}

/// When a finished request's instance is torn down: its Store dropped and
/// its memory slot reset for the next instance (a copy of the pages it
/// wrote back from the image: tens of µs for a small request).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Teardown {
    /// After `dispatch` returns, in a task of its own on the tokio runtime,
    /// so the response does not wait for it. The instance slot and the
    /// handler's concurrency permit are released only when it is done, so
    /// admission control still counts the instance until its slot is free.
    #[default]
    Background,
    /// Before `dispatch` returns; [`Timings::teardown`](crate::Timings)
    /// then reports how long it took.
    Inline,
}

impl RuntimeConfig {
    pub fn new(cache: Cache) -> Self {
        Self {
            cache,
            max_instances: 64,
            max_memory_bytes: 512 << 20,
            queue_timeout: Duration::from_secs(1),
            keep_resident_bytes: 16 << 20,
            build_isolation: BuildIsolation::default(),
            build_limits: BuildLimits::default(),
            teardown: Teardown::default(),
            data_dir: default_data_dir(),
            key_value_stores: default_stores(),
            outbound_resolve: BTreeMap::new(),
            trust_file_stamps: false,
        }
    }
}

/// Made once per process: owns the instance slots, the epoch ticker that
/// enforces timeouts and the build cache. Each loaded handler gets its own
/// wasmtime engine, whose memory creator serves that handler's image.
pub struct Runtime {
    config: RuntimeConfig,
    stacks: StackPool,
    idle_memories: Arc<IdleBudget>,
    slots: Arc<Semaphore>,
    /// Stops the ticker thread when the runtime is dropped.
    ticker: EpochTicker,
    /// Opens the key-value stores handlers are granted.
    backends: Backends,
}

/// Options for [`Runtime::load`].
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Entry module of a handler directory (default: app, handler or main).
    pub module: Option<String>,
    pub limits: Limits,
    /// Most requests of this handler running at once (default: no limit
    /// beyond the runtime's instance slots). Excess requests queue.
    pub max_concurrency: Option<u32>,
    /// A virtualenv (or site-packages directory) whose packages, and the
    /// directories its `.pth` files add, are copied in and importable.
    pub venv: Option<PathBuf>,
    /// Whose data the key-value stores hold: handlers loaded with the same
    /// tenant and store name share it, and no other handler can reach it.
    /// A store name's rules apply (see [`grants::valid_name`]). Default:
    /// `default`.
    pub tenant: Option<String>,
    /// Key-value stores the handler may open, by name (names of
    /// [`RuntimeConfig::key_value_stores`]). Default: none.
    pub key_value_stores: Vec<String>,
    /// Where the handler's outbound HTTP requests may go. Default: nowhere.
    pub allowed_outbound_hosts: Vec<AllowedHost>,
    /// The handler's variables, plain and secret. Default: none.
    pub variables: Vec<VariableSpec>,
}

/// The engine of one handler. Its linear memories come from `memories`
/// (see `crate::instance::memory`), which is why each handler has an engine of its
/// own: a memory creator belongs to an engine, and each serves one image.
fn engine_config(memories: SlotMemories, stacks: &StackPool) -> Config {
    // Builds compile in their own engine (see `crate::build::job`); this one
    // only loads what they made.
    let mut wasm = engine::config(None);
    wasm.with_host_memory(Arc::new(memories))
        // Stacks are shared by all handlers and reused (see `crate::instance::stacks`).
        .with_host_stack(Arc::new(stacks.clone()))
        .allocation_strategy(InstanceAllocationStrategy::OnDemand);
    wasm
}

impl Runtime {
    /// A runtime with default settings whose build cache lives at `cache`.
    pub fn new(cache: Cache) -> anyhow::Result<Self> {
        Self::with_config(RuntimeConfig::new(cache))
    }

    pub fn with_config(config: RuntimeConfig) -> anyhow::Result<Self> {
        Ok(Self {
            stacks: StackPool::new(config.max_instances.max(1) as usize),
            idle_memories: IdleBudget::new(config.max_instances.max(1) as usize),
            slots: Arc::new(Semaphore::new(config.max_instances.max(1) as usize)),
            backends: Backends::new(config.key_value_stores.clone(), config.data_dir.clone()),
            config,
            ticker: EpochTicker::start(),
        })
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    pub fn cache(&self) -> &Cache {
        &self.config.cache
    }

    /// Instances holding a slot right now, across all handlers:
    /// running, or finished and still being torn down.
    pub fn instances_in_use(&self) -> usize {
        self.config.max_instances.max(1) as usize - self.slots.available_permits()
    }

    /// Export `tenant`'s handler as a standard `wasi:http` component for
    /// `target` into `dir` (new, empty, or an earlier export, which is
    /// replaced whole once the new one is complete), with its files and
    /// the manifest or command line granting what `tenant` is granted.
    /// Blocking: the build takes seconds. See [`crate::export`].
    pub fn export(
        &self,
        tenant: &crate::config::TenantConfig,
        target: crate::export::ExportTarget,
        dir: &Path,
        on_event: &dyn Fn(LoadEvent<'_>),
    ) -> Result<crate::export::Export, crate::export::ExportError> {
        let source = HandlerSource::resolve(&tenant.handler, tenant.module.as_deref())?;
        let settings = BuildSettings {
            cache: self.config.cache.clone(),
            isolation: self.config.build_isolation.clone(),
            limits: self.config.build_limits,
            max_component_bytes: self.config.max_memory_bytes + (128 << 20),
            index_stamps: false,
        };
        crate::export::write(&settings, tenant, &source, target, dir, on_event)
    }

    /// Load the handler at `path` (a `.py` file or a directory), building
    /// and caching its sandbox image if needed. Blocking: a cache miss takes
    /// seconds. `on_event` receives progress and diagnostics.
    pub fn load(
        &self,
        path: &Path,
        options: &LoadOptions,
        on_event: &dyn Fn(LoadEvent<'_>),
    ) -> Result<Handler, LoadError> {
        // With trusted stamps, only stamped first: an unchanged handler is
        // loaded from the cache without reading its files
        // (build::cache::index); otherwise read at once.
        let module = options.module.as_deref();
        let trust = self.config.trust_file_stamps;
        let source = if trust {
            HandlerSource::stamp(path, module)?
        } else {
            HandlerSource::resolve(path, module)?
        };
        // Grants first: a store that cannot be opened or a secret that is not
        // set fails before a build is spent on the handler.
        let kv = self.grant_stores(options)?;
        let variables =
            VariablesGrant::resolve(&options.variables).map_err(|reason| LoadError::Grant {
                what: "variables",
                reason,
            })?;
        if options.limits.memory_bytes > self.config.max_memory_bytes {
            return Err(LoadError::LimitTooHigh {
                path: path.to_path_buf(),
                what: "memory",
                requested: options.limits.memory_bytes,
                maximum: self.config.max_memory_bytes,
            });
        }
        let memories =
            SlotMemories::new(self.config.keep_resident_bytes, self.idle_memories.clone());
        let config = engine_config(memories.clone(), &self.stacks);
        let engine = Engine::new(&config).map_err(|error| LoadError::Compile {
            path: source.path.clone(),
            source: error,
        })?;
        let settings = BuildSettings {
            cache: self.config.cache.clone(),
            isolation: self.config.build_isolation.clone(),
            limits: self.config.build_limits,
            // A snapshot bigger than any instance may grow to can never run.
            max_component_bytes: self.config.max_memory_bytes + (128 << 20),
            index_stamps: trust,
        };
        let venv = options.venv.as_deref();
        let ready = match build::ensure_indexed(&engine, &settings, &source, venv, on_event)? {
            Some(ready) => ready,
            // Only stamped: the build needs the files themselves.
            None if trust => {
                let read = HandlerSource::resolve(path, module)?;
                build::ensure_built(&engine, &settings, &read, venv, on_event)?
            }
            None => build::ensure_built(&engine, &settings, &source, venv, on_event)?,
        };
        let built = ready.built;
        let app_dir = built.dir.join("app");
        let preopens = Preopens::from_handles(
            [
                (ready.stdlib, mounts::STDLIB.to_owned()),
                (clone_fd(&built.app, &app_dir)?, mounts::APP.to_owned()),
                (built.app, mounts::IMPORT.to_owned()),
            ]
            .into_iter()
            .chain(built.layers),
        );
        memories.set_image(built.memory_image);
        let mut linker = Linker::new(&engine);
        let pre = instance::link(&mut linker)
            .and_then(|()| linker.instantiate_pre(&built.component))
            .and_then(SandboxPre::new)
            .map_err(|source| LoadError::Compile {
                path: built.dir.clone(),
                source,
            })?;
        self.ticker.watch(&engine);
        let grants = Grants {
            files: preopens,
            stdio: StdioGrant {
                max_output_bytes: options.limits.max_output_bytes,
            },
            kv: Arc::new(kv),
            outbound: Arc::new(OutboundGrant {
                allowed: options.allowed_outbound_hosts.clone(),
                resolve: self.config.outbound_resolve.clone(),
                limits: options.limits.outbound,
            }),
            variables: Arc::new(variables),
        };
        Ok(Handler {
            inner: Arc::new(HandlerInner {
                prepared: Prepared::new(pre, grants, options.limits.clone()),
                app_dir,
                source: source.path,
                entry_module: built.meta.entry_module,
                cache_hit: built.cache_hit,
                teardown: self.config.teardown,
                memories,
                gate: Gate {
                    slots: self.slots.clone(),
                    own: options
                        .max_concurrency
                        .map(|n| Arc::new(Semaphore::new(n.max(1) as usize))),
                    queue_timeout: self.config.queue_timeout,
                },
            }),
        })
    }
}

impl Runtime {
    /// Open each store `options` grants, in the tenant's namespace.
    fn grant_stores(&self, options: &LoadOptions) -> Result<KvGrant, LoadError> {
        let tenant = options.tenant.as_deref().unwrap_or(grants::DEFAULT_TENANT);
        if !grants::valid_tenant(tenant) {
            return Err(LoadError::Grant {
                what: "tenant",
                reason: format!("`{tenant}` is not a tenant name (1-64 of a-z, 0-9, '_', '-')"),
            });
        }
        let mut stores = BTreeMap::new();
        for store in &options.key_value_stores {
            if !grants::valid_name(store) {
                return Err(LoadError::Grant {
                    what: "key-value store",
                    reason: format!("`{store}` is not a store name"),
                });
            }
            let backend = self
                .backends
                .open(tenant, store)
                .map_err(|reason| LoadError::Grant {
                    what: "key-value store",
                    reason: format!("`{store}`: {reason}"),
                })?;
            stores.insert(store.clone(), backend);
        }
        Ok(KvGrant {
            stores,
            limits: options.limits.kv,
        })
    }
}

fn clone_fd(fd: &std::os::fd::OwnedFd, path: &Path) -> Result<std::os::fd::OwnedFd, LoadError> {
    fd.try_clone().map_err(|source| LoadError::Cache {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Embedders share handlers across tasks and threads.
    #[test]
    fn handles_are_send_and_sync() {
        fn assert_send_sync<T: Send + Sync + Clone + 'static>() {}
        assert_send_sync::<Handler>();
        fn assert_shareable<T: Send + Sync>() {}
        assert_shareable::<Runtime>();
    }
}
