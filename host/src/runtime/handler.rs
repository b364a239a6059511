//! A loaded handler: the cheap, cloneable handle requests go through. Each
//! dispatch waits for admission, runs in a fresh instance (`instance`), and
//! hands the spent instance to its teardown.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::Teardown;
use super::admission::Gate;
use crate::contract::{MAX_ROUTE_TEXT, MAX_ROUTES};
use crate::error::DispatchError;
use crate::http::Request;
use crate::instance::memory::{ResetStats, SlotMemories};
use crate::instance::{Exchange, Prepared};
use crate::limits::Limits;

/// One row of the route table, as declared with `@route`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteInfo {
    pub pattern: String,
    pub methods: Vec<String>,
    pub handler: String,
}

/// A loaded handler. Cloning is cheap; every dispatch runs in a fresh
/// instance, so clones may be used from many tasks at once.
#[derive(Clone)]
pub struct Handler {
    pub(super) inner: Arc<HandlerInner>,
}

pub(super) struct HandlerInner {
    pub prepared: Prepared,
    pub app_dir: PathBuf,
    pub source: PathBuf,
    pub entry_module: String,
    pub cache_hit: bool,
    pub teardown: Teardown,
    pub memories: SlotMemories,
    pub gate: Gate,
}

impl Handler {
    /// Run `request` in a brand-new instance and drop the instance afterwards.
    ///
    /// Waits (at most the runtime's queue timeout) for an instance slot.
    pub async fn dispatch(&self, request: Request) -> Exchange {
        let limit = self.inner.prepared.limits().max_request_body;
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
        let (mut exchange, spent) = self.inner.prepared.dispatch(request).await;
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
        self.inner.prepared.dispatch_reused(&request, n).await
    }

    /// For benchmarks: how this handler's memory slots have been reset.
    #[doc(hidden)]
    pub fn memory_resets(&self) -> ResetStats {
        self.inner.memories.stats()
    }

    /// The route table, as the guest reports it through its `routes` export.
    pub async fn routes(&self) -> Result<Vec<RouteInfo>, DispatchError> {
        let _permits = self.inner.gate.enter().await?;
        let routes = self.inner.prepared.routes().await?;
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
        self.inner.prepared.limits()
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
