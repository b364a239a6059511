//! One Store: a brand-new instance of a handler's image, with its memory
//! cap and deadline armed and its capabilities prepared; the calls made on
//! it (`dispatch`, `routes`, and the reused-instance bench); and their
//! outcome, classified in one place (`outcome`).
//!
//! - `memory`: instances' linear memories, mapped from the image and reset
//!   by copying back only the pages a request wrote;
//! - `stacks`: reused fiber stacks;
//! - `limiter`: the memory cap.

mod limiter;
pub(crate) mod memory;
mod outcome;
pub(crate) mod stacks;

use std::time::{Duration, Instant};

use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{Store, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::{WasiHttpCtxView, WasiHttpView};

use crate::capabilities::files::FilesView;
use crate::capabilities::keyvalue::KvView;
use crate::capabilities::output::CapturedOutput;
use crate::capabilities::variables::VariablesGrant;
use crate::capabilities::{self, CapabilityUsage, Grants, InstanceCaps};
use crate::contract::wit::{SandboxPre, types};
use crate::error::DispatchError;
use crate::http::{Request, Response};
use crate::limits::Limits;
use limiter::MemoryLimiter;
use outcome::Ran;

/// How long after its timeout a guest that is still being polled is trapped.
const EPOCH_GRACE: Duration = Duration::from_millis(250);

/// Everything a request's Store owns; dropped with the Store.
pub(crate) struct StoreState {
    wasi: WasiCtx,
    table: ResourceTable,
    memory: MemoryLimiter,
    caps: InstanceCaps,
}

impl StoreState {
    /// For `capabilities::files::link`.
    fn files(&mut self) -> FilesView<'_> {
        FilesView {
            preopens: &self.caps.files,
            table: &mut self.table,
        }
    }

    fn kv(&mut self) -> KvView<'_> {
        KvView {
            state: &mut self.caps.kv,
            table: &mut self.table,
        }
    }

    fn variables(&mut self) -> &VariablesGrant {
        &self.caps.variables
    }
}

impl WasiHttpView for StoreState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.caps.http,
            table: &mut self.table,
            hooks: &mut self.caps.outbound,
        }
    }
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Add every capability's host functions to a handler's linker.
pub(crate) fn link(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
    capabilities::link(
        linker,
        capabilities::Views {
            files: StoreState::files,
            kv: StoreState::kv,
            variables: StoreState::variables,
        },
    )
}

/// A loaded handler's image, ready to be instantiated: the pre-linked
/// component, what its instances are granted, and the limits they run under.
pub(crate) struct Prepared {
    pre: SandboxPre<StoreState>,
    grants: Grants,
    limits: Limits,
}

/// Result of one dispatch, with what the guest printed along the way.
#[derive(Debug)]
pub struct Exchange {
    pub result: Result<Response, DispatchError>,
    pub stdout: CapturedOutput,
    pub stderr: CapturedOutput,
    /// Wall time from the start of instantiation to the end of the call.
    pub elapsed: Duration,
    /// Where that time went, and the teardown after it.
    pub timings: Timings,
    /// What the request did with its capabilities.
    pub usage: CapabilityUsage,
}

/// The phases of one dispatch (zero for a phase that did not run).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timings {
    /// Creating the Store and WASI context and instantiating the component.
    pub instantiate: Duration,
    /// The guest's `dispatch` call.
    pub call: Duration,
    /// Dropping the instance and its Store, which resets and returns the
    /// memory slot, if that happened before the dispatch returned
    /// ([`Teardown::Inline`](crate::Teardown::Inline)). Zero with the
    /// default [`Teardown::Background`](crate::Teardown::Background).
    pub teardown: Duration,
}

impl Exchange {
    /// An exchange that never reached a guest.
    pub(crate) fn refused(error: DispatchError) -> Self {
        Self {
            result: Err(error),
            stdout: CapturedOutput::default(),
            stderr: CapturedOutput::default(),
            elapsed: Duration::ZERO,
            timings: Timings::default(),
            usage: CapabilityUsage::default(),
        }
    }

    /// The response to send: the handler's, or the host's error response.
    pub fn response(&self) -> Response {
        match &self.result {
            Ok(response) => response.clone(),
            Err(error) => Response::for_error(error),
        }
    }
}

/// A finished request's instance, still holding its memory slot until
/// dropped.
///
/// Dropping it resets the slot for the next instance (see `memory`): most
/// of a request's teardown cost, which is why it is handed back separately
/// instead of being dropped before the response is returned.
pub(crate) struct Spent(#[allow(dead_code, reason = "held only to be dropped")] Store<StoreState>);

impl Prepared {
    pub(crate) fn new(pre: SandboxPre<StoreState>, grants: Grants, limits: Limits) -> Self {
        Self {
            pre,
            grants,
            limits,
        }
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// A new Store for one instance, with its limits armed.
    fn store(&self, grants: &Grants) -> Store<StoreState> {
        let mut wasi = capabilities::deny_all();
        let caps = grants.prepare(&mut wasi, Instant::now() + self.limits.timeout);
        let state = StoreState {
            wasi: wasi.build(),
            table: resource_table(),
            memory: MemoryLimiter::new(self.limits.memory_bytes),
            caps,
        };
        let mut store = Store::new(self.pre.engine(), state);
        store.limiter(|state| &mut state.memory);
        // A guest spinning in wasm code never returns to the async runtime on
        // its own: it would hold a tokio worker for its whole timeout,
        // stalling other requests and the timer that should stop it. So
        // every epoch tick it yields; the tokio timeout around each call then
        // ends it (and covers time blocked in host calls such as sleep). Past
        // the deadline plus a grace period the epoch callback traps, in case
        // the future keeps being polled anyway.
        let hard_deadline = Instant::now() + self.limits.timeout + EPOCH_GRACE;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if Instant::now() >= hard_deadline {
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        store
    }

    /// Run `request` in a new instance; the instance comes back to be
    /// dropped when convenient.
    pub(crate) async fn dispatch(&self, request: Request) -> (Exchange, Spent) {
        let started = Instant::now();
        let mut store = self.store(&self.grants);
        let wit_request = to_wit(request);
        let mut instantiated = None;
        let call = async {
            let instance = self.pre.instantiate_async(&mut store).await?;
            instantiated = Some(Instant::now());
            instance
                .pycage_handler_handler()
                .call_dispatch(&mut store, &wit_request)
                .await
        };
        let outcome = tokio::time::timeout(self.limits.timeout, call).await;
        let finished = Instant::now();
        let memory_hit = store.data().memory.hit();
        let ran = Ran {
            instantiated: instantiated.is_some(),
            outcome,
            memory_hit,
        };
        let result = outcome::classify(ran, &self.limits)
            .and_then(|answer| outcome::dispatch_answer(answer, memory_hit, &self.limits));
        let instantiated = instantiated.unwrap_or(finished);
        let timings = Timings {
            instantiate: instantiated - started,
            call: finished - instantiated,
            teardown: Duration::ZERO,
        };
        let (mut stdout, mut stderr) = store.data().caps.stdio.take();
        let mut result = result;
        self.grants
            .redact(&mut stdout.bytes, &mut stderr.bytes, result.as_mut().err());
        let exchange = Exchange {
            result,
            stdout,
            stderr,
            elapsed: timings.instantiate + timings.call,
            timings,
            usage: store.data().caps.usage(),
        };
        (exchange, Spent(store))
    }

    /// Instantiate once and ask the guest for its route table.
    pub(crate) async fn routes(&self) -> Result<Vec<types::Route>, DispatchError> {
        let mut store = self.store(&self.grants.without_output());
        let mut instantiated = false;
        let call = async {
            let instance = self.pre.instantiate_async(&mut store).await?;
            instantiated = true;
            instance
                .pycage_handler_handler()
                .call_routes(&mut store)
                .await
        };
        let outcome = tokio::time::timeout(self.limits.timeout, call).await;
        let memory_hit = store.data().memory.hit();
        let mut routes = outcome::classify(
            Ran {
                instantiated,
                outcome,
                memory_hit,
            },
            &self.limits,
        );
        if self.grants.has_secrets() {
            match &mut routes {
                Ok(routes) => {
                    for route in routes {
                        self.grants.redact_text(&mut route.pattern);
                        self.grants.redact_text(&mut route.handler);
                        route
                            .methods
                            .iter_mut()
                            .for_each(|m| self.grants.redact_text(m));
                    }
                }
                Err(error) => error.texts_mut(|text| self.grants.redact_text(text)),
            }
        }
        routes
    }

    /// For benchmarks only: instantiate once, then time `n` dispatches of
    /// `request` on that same instance. State carries over between the
    /// calls, so this is the lower bound for the Python work itself, not
    /// isolation.
    pub(crate) async fn dispatch_reused(
        &self,
        request: &Request,
        n: usize,
    ) -> Result<Vec<Duration>, DispatchError> {
        let mut store = self.store(&self.grants.without_output());
        let wit_request = to_wit(request.clone());
        let mut instantiated = false;
        let calls = async {
            let instance = self.pre.instantiate_async(&mut store).await?;
            instantiated = true;
            let handler = instance.pycage_handler_handler();
            let mut times = Vec::with_capacity(n);
            for _ in 0..n {
                let started = Instant::now();
                let _ = handler.call_dispatch(&mut store, &wit_request).await?;
                times.push(started.elapsed());
            }
            wasmtime::Result::Ok(times)
        };
        let outcome = tokio::time::timeout(self.limits.timeout, calls).await;
        let memory_hit = store.data().memory.hit();
        outcome::classify(
            Ran {
                instantiated,
                outcome,
                memory_hit,
            },
            &self.limits,
        )
    }
}

fn to_wit(request: Request) -> types::Request {
    types::Request {
        method: request.method,
        path: request.path,
        query: request.query,
        headers: request
            .headers
            .into_iter()
            .map(|(name, value)| types::Header { name, value })
            .collect(),
        body: request.body,
    }
}

/// The most resources (descriptors, streams, pollables, HTTP fields and
/// bodies, key-value handles) one instance may hold at once. Their host
/// memory is not linear memory, so the memory limit does not see it; this
/// bound, with the small per-resource bounds (`capabilities::outbound`,
/// `keyvalue`), keeps it to tens of MiB where wasmtime's default (1,000,000
/// entries) would let a guest take gigabytes.
const MAX_RESOURCES: usize = 2048;

fn resource_table() -> ResourceTable {
    let mut table = ResourceTable::new();
    table.set_max_capacity(MAX_RESOURCES);
    table
}
