//! The process-wide runtime (instance slots, epoch ticker, cache) and the
//! cheap, cloneable [`Handler`] handle that dispatches requests.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::component::Linker;
use wasmtime::{Config, Engine, EngineWeak, InstanceAllocationStrategy};

use crate::build::{self, BuildIsolation, BuildLimits, BuildSettings, LoadEvent};
use crate::cache::Cache;
use crate::engine;
use crate::error::{DispatchError, LoadError};
use crate::guest;
use crate::http::Request;
use crate::limits::Limits;
use crate::memory::{IdleBudget, ResetStats, SlotMemories};
use crate::preopens::{self, Preopens};
use crate::sandbox::{self, Exchange, SandboxState};
use crate::stacks::StackPool;
use crate::stage::HandlerSource;
use crate::wit::SandboxPre;

pub use crate::build::RouteInfo;

/// How often the epoch advances; the granularity of request timeouts.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(5);

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
}

/// Most routes a handler may declare, and the longest pattern, handler
/// name or method in its table (the glue refuses more at build time).
pub const MAX_ROUTES: usize = 4096;
const MAX_ROUTE_TEXT: usize = 1024;

/// libpython's function table has ~5,700 entries; this bounds its growth.
pub(crate) const MAX_TABLE_ELEMENTS: usize = 1 << 16;

/// The engine of one handler. Its linear memories come from `memories`
/// (see `crate::memory`), which is why each handler has an engine of its
/// own: a memory creator belongs to an engine, and each serves one image.
fn engine_config(memories: SlotMemories, stacks: &StackPool) -> Config {
    // Builds compile in their own engine (see `crate::build::job`); this one
    // only loads what they made.
    let mut wasm = engine::config(None);
    wasm.with_host_memory(Arc::new(memories))
        // Stacks are shared by all handlers and reused (see `crate::stacks`).
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

    /// Load the handler at `path` (a `.py` file or a directory), building
    /// and caching its sandbox image if needed. Blocking: a cache miss takes
    /// seconds. `on_event` receives progress and diagnostics.
    pub fn load(
        &self,
        path: &Path,
        options: &LoadOptions,
        on_event: &dyn Fn(LoadEvent<'_>),
    ) -> Result<Handler, LoadError> {
        let source = HandlerSource::resolve(path, options.module.as_deref())?;
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
        };
        let ready = build::ensure_built(
            &engine,
            &settings,
            &source,
            options.venv.as_deref(),
            on_event,
        )?;
        let built = ready.built;
        let app_dir = built.dir.join("app");
        let preopens = Preopens::from_handles(
            [
                (ready.stdlib, guest::GUEST_STDLIB_DIR.to_owned()),
                (
                    clone_fd(&built.app, &app_dir)?,
                    guest::GUEST_APP_DIR.to_owned(),
                ),
                (built.app, guest::GUEST_IMPORT_DIR.to_owned()),
            ]
            .into_iter()
            .chain(built.layers),
        );
        memories.set_image(built.memory_image);
        let mut linker = Linker::new(&engine);
        let pre = wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .and_then(|()| preopens::add_to_linker(&mut linker, SandboxState::preopens))
            .and_then(|()| linker.instantiate_pre(&built.component))
            .and_then(SandboxPre::new)
            .map_err(|source| LoadError::Compile {
                path: built.dir.clone(),
                source,
            })?;
        self.ticker.watch(&engine);
        Ok(Handler {
            inner: Arc::new(HandlerInner {
                pre,
                app_dir,
                preopens,
                source: source.path,
                entry_module: built.meta.entry_module,
                cache_hit: built.cache_hit,
                limits: options.limits.clone(),
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

/// A loaded handler. Cloning is cheap; every dispatch runs in a fresh
/// instance, so clones may be used from many tasks at once.
#[derive(Clone)]
pub struct Handler {
    inner: Arc<HandlerInner>,
}

struct HandlerInner {
    pre: SandboxPre<SandboxState>,
    app_dir: PathBuf,
    /// The read-only directories every instance is granted.
    preopens: Preopens,
    source: PathBuf,
    entry_module: String,
    cache_hit: bool,
    limits: Limits,
    teardown: Teardown,
    memories: SlotMemories,
    gate: Gate,
}

/// Admission control: a request needs one of the handler's own permits (if
/// it has a concurrency limit) and one runtime-wide instance slot. Waiting
/// is bounded so that overload turns into a quick 503, never a pile-up of
/// instances and their memories.
struct Gate {
    slots: Arc<Semaphore>,
    own: Option<Arc<Semaphore>>,
    queue_timeout: Duration,
}

impl Gate {
    async fn enter(
        &self,
    ) -> Result<(Option<OwnedSemaphorePermit>, OwnedSemaphorePermit), DispatchError> {
        let acquire = async {
            let own = match &self.own {
                Some(own) => Some(own.clone().acquire_owned().await.expect("never closed")),
                None => None,
            };
            let slot = self
                .slots
                .clone()
                .acquire_owned()
                .await
                .expect("never closed");
            (own, slot)
        };
        tokio::time::timeout(self.queue_timeout, acquire)
            .await
            .map_err(|_| DispatchError::Overloaded {
                waited: self.queue_timeout,
            })
    }
}

impl Handler {
    /// Run `request` in a brand-new instance and drop the instance afterwards.
    ///
    /// Waits (at most the runtime's queue timeout) for an instance slot.
    pub async fn dispatch(&self, request: Request) -> Exchange {
        let limit = self.inner.limits.max_request_body;
        if request.body.len() > limit {
            return Exchange::refused(DispatchError::RequestTooLarge {
                size: request.body.len(),
                limit,
            });
        }
        let permits = match self.inner.gate.enter().await {
            Ok(permits) => permits,
            Err(error) => return Exchange::refused(error),
        };
        let (mut exchange, spent) = sandbox::dispatch(
            &self.inner.pre,
            &self.inner.preopens,
            &self.inner.limits,
            request,
        )
        .await;
        match self.inner.teardown {
            Teardown::Background => {
                // A task on the runtime, not the blocking pool: the reset is
                // CPU work like the guest's own, and measured over HTTP the
                // extra thread hand-offs of spawn_blocking cost more than
                // they saved.
                tokio::spawn(async move {
                    drop(spent);
                    drop(permits);
                });
            }
            Teardown::Inline => {
                let started = Instant::now();
                drop(spent);
                exchange.timings.teardown = started.elapsed();
            }
        }
        exchange
    }

    /// For benchmarks only (`host/examples/bench.rs`): time `n` dispatches of
    /// `request` on one reused instance. Never for serving: state carries
    /// over between the calls, which is exactly what pycage exists to prevent.
    #[doc(hidden)]
    pub async fn bench_reused_instance(
        &self,
        request: Request,
        n: usize,
    ) -> Result<Vec<Duration>, DispatchError> {
        let _permits = self.inner.gate.enter().await?;
        sandbox::dispatch_reused(
            &self.inner.pre,
            &self.inner.preopens,
            &self.inner.limits,
            &request,
            n,
        )
        .await
    }

    /// For benchmarks: how this handler's memory slots have been reset.
    #[doc(hidden)]
    pub fn memory_resets(&self) -> ResetStats {
        self.inner.memories.stats()
    }

    /// The route table, as the guest reports it through its `routes` export.
    pub async fn routes(&self) -> Result<Vec<RouteInfo>, DispatchError> {
        let _permits = self.inner.gate.enter().await?;
        let routes =
            sandbox::guest_routes(&self.inner.pre, &self.inner.preopens, &self.inner.limits)
                .await?;
        // Guest-made: bounded here, escaped wherever it is shown.
        if routes.len() > MAX_ROUTES {
            return Err(DispatchError::InvalidResponse(format!(
                "the route table has {} entries, over the limit of {MAX_ROUTES}",
                routes.len()
            )));
        }
        let too_long = |text: &str| text.len() > MAX_ROUTE_TEXT;
        routes
            .into_iter()
            .map(|r| {
                if too_long(&r.pattern)
                    || too_long(&r.handler)
                    || r.methods.len() > 32
                    || r.methods.iter().any(|m| too_long(m))
                {
                    return Err(DispatchError::InvalidResponse(format!(
                        "a route entry is over {MAX_ROUTE_TEXT} bytes or 32 methods"
                    )));
                }
                Ok(RouteInfo {
                    pattern: r.pattern,
                    methods: r.methods,
                    handler: r.handler,
                })
            })
            .collect()
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

fn clone_fd(fd: &std::os::fd::OwnedFd, path: &Path) -> Result<std::os::fd::OwnedFd, LoadError> {
    fd.try_clone().map_err(|source| LoadError::Cache {
        path: path.to_path_buf(),
        source,
    })
}

/// Advances every loaded handler's engine's epoch every [`EPOCH_TICK`]
/// until dropped.
struct EpochTicker {
    stop: Arc<AtomicBool>,
    /// Weak, so that a dropped handler's engine is freed and forgotten.
    engines: Arc<Mutex<Vec<EngineWeak>>>,
}

impl EpochTicker {
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let engines: Arc<Mutex<Vec<EngineWeak>>> = Arc::default();
        let (flag, watched) = (stop.clone(), engines.clone());
        std::thread::Builder::new()
            .name("pycage-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    let mut engines = watched.lock().unwrap_or_else(|e| e.into_inner());
                    engines.retain(|weak| match weak.upgrade() {
                        Some(engine) => {
                            engine.increment_epoch();
                            true
                        }
                        None => false,
                    });
                }
            })
            .expect("spawning the epoch ticker thread");
        Self { stop, engines }
    }

    fn watch(&self, engine: &Engine) {
        let mut engines = self.engines.lock().unwrap_or_else(|e| e.into_inner());
        engines.push(engine.weak());
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
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
