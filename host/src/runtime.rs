//! The process-wide runtime (engine, linker, epoch ticker, cache) and the
//! cheap, cloneable [`Handler`] handle that dispatches requests.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::component::Linker;
use wasmtime::{Config, Engine};

use crate::builder::{self, Built, LoadEvent};
use crate::cache::Cache;
use crate::error::{DispatchError, LoadError};
use crate::http::Request;
use crate::limits::Limits;
use crate::sandbox::{self, Exchange, Mounts, SandboxState};
use crate::stage::HandlerSource;
use crate::wit::SandboxPre;

pub use crate::builder::RouteInfo;

/// How often the epoch advances; the granularity of request timeouts.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Longest a cache-miss build may take before loading fails.
pub const DEFAULT_BUILD_TIMEOUT: Duration = Duration::from_secs(300);

/// Made once per process: owns the wasmtime engine, the WASI linker, the
/// epoch ticker that enforces timeouts, and the build cache.
pub struct Runtime {
    engine: Engine,
    linker: Linker<SandboxState>,
    cache: Cache,
    build_timeout: Duration,
    ticker: EpochTicker,
}

/// Options for [`Runtime::load`].
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Entry module of a handler directory (default: app, handler or main).
    pub module: Option<String>,
    pub limits: Limits,
}

impl Runtime {
    /// A runtime whose build cache lives at `cache`.
    pub fn new(cache: Cache) -> anyhow::Result<Self> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        let ticker = EpochTicker::start(engine.clone());
        Ok(Self {
            engine,
            linker,
            cache,
            build_timeout: DEFAULT_BUILD_TIMEOUT,
            ticker,
        })
    }

    /// Change how long a cache-miss build may take.
    pub fn with_build_timeout(mut self, timeout: Duration) -> Self {
        self.build_timeout = timeout;
        self
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
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
        debug_assert!(!self.ticker.stop.load(Ordering::Relaxed));
        let source = HandlerSource::resolve(path, options.module.as_deref())?;
        let built = builder::ensure_built(
            &self.engine,
            &self.cache,
            &source,
            self.build_timeout,
            on_event,
        )?;
        let pre = self
            .linker
            .instantiate_pre(&built.component)
            .and_then(SandboxPre::new)
            .map_err(|source| LoadError::Compile {
                path: built.dir.clone(),
                source,
            })?;
        Ok(Handler {
            inner: Arc::new(HandlerInner {
                pre,
                app_dir: Built::app_dir(&built.dir),
                stdlib_dir: self.cache.stdlib_dir().join("python"),
                source: source.path,
                entry_module: built.meta.entry_module,
                cache_hit: built.cache_hit,
                limits: options.limits.clone(),
            }),
        })
    }
}

/// A loaded handler. Cloning is cheap; every dispatch runs in a fresh
/// instance, so clones may be used from many tasks at once.
#[derive(Clone)]
pub struct Handler {
    inner: Arc<HandlerInner>,
}

struct HandlerInner {
    pre: SandboxPre<SandboxState>,
    app_dir: PathBuf,
    stdlib_dir: PathBuf,
    source: PathBuf,
    entry_module: String,
    cache_hit: bool,
    limits: Limits,
}

impl Handler {
    fn mounts(&self) -> Mounts<'_> {
        Mounts {
            app: &self.inner.app_dir,
            stdlib: &self.inner.stdlib_dir,
        }
    }

    /// Run `request` in a brand-new instance and drop the instance afterwards.
    pub async fn dispatch(&self, request: Request) -> Exchange {
        sandbox::dispatch(&self.inner.pre, &self.mounts(), &self.inner.limits, request).await
    }

    /// The route table, as the guest reports it through its `routes` export.
    pub async fn routes(&self) -> Result<Vec<RouteInfo>, DispatchError> {
        let routes =
            sandbox::guest_routes(&self.inner.pre, &self.mounts(), &self.inner.limits).await?;
        Ok(routes
            .into_iter()
            .map(|r| RouteInfo {
                pattern: r.pattern,
                methods: r.methods,
                handler: r.handler,
            })
            .collect())
    }

    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// The handler file or directory this was loaded from.
    pub fn source(&self) -> &Path {
        &self.inner.source
    }

    pub fn entry_module(&self) -> &str {
        &self.inner.entry_module
    }

    /// The directory granted read-only to the guest at `/app`.
    pub fn app_dir(&self) -> &Path {
        &self.inner.app_dir
    }

    /// Whether loading found a ready image in the cache.
    pub fn cache_hit(&self) -> bool {
        self.inner.cache_hit
    }
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until dropped.
struct EpochTicker {
    stop: Arc<AtomicBool>,
}

impl EpochTicker {
    fn start(engine: Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("pycage-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawning the epoch ticker thread");
        Self { stop }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
