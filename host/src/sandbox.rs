//! One request in one brand-new instance: the capabilities it gets, the
//! limits it runs under, and how its outcome is classified.

use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store, Trap, UpdateDeadline};
use wasmtime_wasi::{I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::error::DispatchError;
use crate::guest_text;
use crate::http::{Request, Response};
use crate::limits::Limits;
use crate::output::{CappedPipe, CapturedOutput};
use crate::preopens::{Preopens, PreopensView};
use crate::runtime::MAX_TABLE_ELEMENTS;
use crate::wit::{SandboxPre, types};

/// How long after its timeout a guest that is still being polled is trapped.
const EPOCH_GRACE: Duration = Duration::from_millis(250);

/// Everything a request's Store owns; dropped with the Store.
pub(crate) struct SandboxState {
    wasi: WasiCtx,
    table: ResourceTable,
    memory: MemoryLimiter,
    /// The handler's read-only directories (see `crate::preopens`).
    preopens: Preopens,
}

impl SandboxState {
    /// For `crate::preopens::add_to_linker`.
    pub(crate) fn preopens(&mut self) -> PreopensView<'_> {
        PreopensView {
            preopens: &self.preopens,
            table: &mut self.table,
        }
    }
}

impl WasiView for SandboxState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Caps the total linear memory of the instance and remembers whether the
/// cap was what stopped it (so a MemoryError can be reported as a limit).
struct MemoryLimiter {
    limit: usize,
    total: usize,
    hit: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.total - current.min(self.total) + desired;
        if total > self.limit {
            self.hit = true;
            return Ok(false);
        }
        self.total = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
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

/// The WASI context for one request: captured output and nothing else: no
/// environment, no arguments, no stdin, no sockets. Its read-only
/// directories come from the handler's [`Preopens`], not from this context.
fn wasi_ctx(stdout: &CappedPipe, stderr: &CappedPipe) -> WasiCtx {
    WasiCtxBuilder::new()
        // Files the guest opens run their calls on the calling thread, like
        // the directories (see `crate::preopens`): short reads of local,
        // read-only files, for which a hand-off to tokio's blocking pool
        // and back cost more than the call. wasmtime-wasi takes this flag
        // from the context when it opens a file.
        .allow_blocking_current_thread(true)
        .stdout(stdout.clone())
        .stderr(stderr.clone())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build()
}

/// A new Store for one instance, with its limits armed.
fn new_store(
    pre: &SandboxPre<SandboxState>,
    preopens: &Preopens,
    limits: &Limits,
    stdout: &CappedPipe,
    stderr: &CappedPipe,
) -> Store<SandboxState> {
    let state = SandboxState {
        wasi: wasi_ctx(stdout, stderr),
        table: ResourceTable::new(),
        preopens: preopens.clone(),
        memory: MemoryLimiter {
            limit: usize::try_from(limits.memory_bytes).unwrap_or(usize::MAX),
            total: 0,
            hit: false,
        },
    };
    let mut store = Store::new(pre.engine(), state);
    store.limiter(|state| &mut state.memory);
    // A guest spinning in wasm code never returns to the async runtime on its
    // own: it would hold a tokio worker for its whole timeout, stalling other
    // requests and the timer that should stop it. So every epoch tick it
    // yields; the tokio timeout around each call then ends it (and covers
    // time blocked in host calls such as sleep). Past the deadline plus a
    // grace period the epoch callback traps, in case the future keeps being
    // polled anyway.
    let hard_deadline = Instant::now() + limits.timeout + EPOCH_GRACE;
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

/// A finished request's instance, still holding its memory slot until
/// dropped.
///
/// Dropping it resets the slot for the next instance (see `crate::memory`):
/// most of a request's teardown cost, which is why it is handed back
/// separately instead of being dropped before the response is returned.
pub(crate) struct Spent(
    #[allow(dead_code, reason = "held only to be dropped")] Store<SandboxState>,
);

pub(crate) async fn dispatch(
    pre: &SandboxPre<SandboxState>,
    preopens: &Preopens,
    limits: &Limits,
    request: Request,
) -> (Exchange, Spent) {
    let stdout = CappedPipe::new(limits.max_output_bytes);
    let stderr = CappedPipe::new(limits.max_output_bytes);
    let mut timings = Timings::default();
    let (result, spent) = run(
        pre,
        preopens,
        limits,
        request,
        &stdout,
        &stderr,
        &mut timings,
    )
    .await;
    let exchange = Exchange {
        result,
        stdout: stdout.take(),
        stderr: stderr.take(),
        elapsed: timings.instantiate + timings.call,
        timings,
    };
    (exchange, spent)
}

async fn run(
    pre: &SandboxPre<SandboxState>,
    preopens: &Preopens,
    limits: &Limits,
    request: Request,
    stdout: &CappedPipe,
    stderr: &CappedPipe,
    timings: &mut Timings,
) -> (Result<Response, DispatchError>, Spent) {
    let started = Instant::now();
    let mut store = new_store(pre, preopens, limits, stdout, stderr);

    let wit_request = to_wit(request);
    let mut instantiated = None;
    let call = async {
        let instance = pre.instantiate_async(&mut store).await?;
        instantiated = Some(Instant::now());
        instance
            .pycage_handler_handler()
            .call_dispatch(&mut store, &wit_request)
            .await
    };
    let outcome = tokio::time::timeout(limits.timeout, call).await;
    let finished = Instant::now();
    let memory_hit = store.data().memory.hit;
    let result = match (instantiated, outcome) {
        // Instantiating failed, and not because the image is larger than
        // the memory limit: the host could not provide the instance (a
        // memory slot, say), which is not the guest's doing.
        (None, Ok(Err(error))) if !memory_hit => {
            Err(DispatchError::Instantiate(format!("{error:#}")))
        }
        (_, outcome) => settle_dispatch(outcome, memory_hit, limits),
    };
    let instantiated = instantiated.unwrap_or(finished);
    timings.instantiate = instantiated - started;
    timings.call = finished - instantiated;
    (result, Spent(store))
}

/// The outcome of the guest's `dispatch` call, classified.
fn settle_dispatch(
    outcome: Result<
        wasmtime::Result<Result<types::Response, types::DispatchError>>,
        tokio::time::error::Elapsed,
    >,
    memory_hit: bool,
    limits: &Limits,
) -> Result<Response, DispatchError> {
    let memory_error = || DispatchError::MemoryLimit {
        limit_bytes: limits.memory_bytes,
    };
    match outcome {
        Err(_elapsed) => Err(DispatchError::Timeout(limits.timeout)),
        Ok(Err(error)) => Err(if memory_hit {
            memory_error()
        } else {
            classify_failure(&error, limits)
        }),
        Ok(Ok(Err(types::DispatchError::NotFound))) => Err(DispatchError::NotFound),
        Ok(Ok(Err(types::DispatchError::MethodNotAllowed(allowed)))) => allowed_methods(allowed)
            .and_then(|allowed| Err(DispatchError::MethodNotAllowed { allowed })),
        Ok(Ok(Err(types::DispatchError::HandlerException(info)))) => {
            if memory_hit && info.message.starts_with("MemoryError") {
                Err(memory_error())
            } else {
                // The glue bounds these too, but the glue is guest code.
                Err(DispatchError::HandlerException {
                    message: guest_text::bounded(&info.message, MAX_EXCEPTION_MESSAGE).into_owned(),
                    traceback: guest_text::bounded(&info.traceback, MAX_TRACEBACK).into_owned(),
                })
            }
        }
        Ok(Ok(Ok(response))) => Response::from_guest(
            response.status,
            response
                .headers
                .into_iter()
                .map(|h| (h.name, h.value))
                .collect(),
            response.body,
            limits.max_response_body,
        ),
    }
}

/// Bounds on what a guest's exception report may hold, in bytes.
const MAX_EXCEPTION_MESSAGE: usize = 4 << 10;
const MAX_TRACEBACK: usize = 64 << 10;
/// Most methods a 405's `Allow` header may list.
const MAX_ALLOWED_METHODS: usize = 32;

/// The methods a guest says a path allows, for the `Allow` header: each
/// must be an HTTP method token, and there may be at most
/// [`MAX_ALLOWED_METHODS`] of them (duplicates dropped).
fn allowed_methods(allowed: Vec<String>) -> Result<Vec<String>, DispatchError> {
    let mut methods: Vec<String> = Vec::with_capacity(allowed.len().min(MAX_ALLOWED_METHODS));
    for method in allowed {
        let valid = !method.is_empty()
            && method.len() <= 32
            && http::Method::from_bytes(method.as_bytes()).is_ok();
        if !valid {
            return Err(DispatchError::InvalidResponse(format!(
                "the allowed methods include {}, which is not an HTTP method",
                guest_text::one_line(&method, 64)
            )));
        }
        if !methods.contains(&method) {
            methods.push(method);
        }
        if methods.len() > MAX_ALLOWED_METHODS {
            return Err(DispatchError::InvalidResponse(format!(
                "more than {MAX_ALLOWED_METHODS} allowed methods"
            )));
        }
    }
    Ok(methods)
}

/// For benchmarks only: instantiate once, then time `n` dispatches of
/// `request` on that same instance. State carries over between the calls,
/// so this is the lower bound for the Python work itself, not isolation.
pub(crate) async fn dispatch_reused(
    pre: &SandboxPre<SandboxState>,
    preopens: &Preopens,
    limits: &Limits,
    request: &Request,
    n: usize,
) -> Result<Vec<Duration>, DispatchError> {
    let sink = CappedPipe::new(0);
    let mut store = new_store(pre, preopens, limits, &sink, &sink);
    let wit_request = to_wit(request.clone());
    let calls = async {
        let instance = pre.instantiate_async(&mut store).await?;
        let handler = instance.pycage_handler_handler();
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            let started = Instant::now();
            let _ = handler.call_dispatch(&mut store, &wit_request).await?;
            times.push(started.elapsed());
        }
        wasmtime::Result::Ok(times)
    };
    settle(tokio::time::timeout(limits.timeout, calls).await, limits)
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

/// Why instantiating or calling the guest failed (other than a memory cap).
fn classify_failure(error: &wasmtime::Error, limits: &Limits) -> DispatchError {
    if let Some(exit) = error.downcast_ref::<I32Exit>() {
        return DispatchError::Exited(exit.0);
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => DispatchError::Timeout(limits.timeout),
        Some(Trap::StackOverflow) => DispatchError::StackOverflow,
        // The trap code alone; the wasm backtrace is noise to operators.
        Some(trap) => DispatchError::Trap(trap.to_string()),
        None => DispatchError::Trap(error.root_cause().to_string()),
    }
}

/// Instantiate once and ask the guest for its route table.
pub(crate) async fn guest_routes(
    pre: &SandboxPre<SandboxState>,
    preopens: &Preopens,
    limits: &Limits,
) -> Result<Vec<types::Route>, DispatchError> {
    let sink = CappedPipe::new(0);
    let mut store = new_store(pre, preopens, limits, &sink, &sink);
    let call = async {
        let instance = pre.instantiate_async(&mut store).await?;
        instance
            .pycage_handler_handler()
            .call_routes(&mut store)
            .await
    };
    settle(tokio::time::timeout(limits.timeout, call).await, limits)
}

/// The outcome of a guest call made under `limits.timeout`, for calls whose
/// result needs no further reading (everything but `dispatch`).
fn settle<T>(
    outcome: Result<wasmtime::Result<T>, tokio::time::error::Elapsed>,
    limits: &Limits,
) -> Result<T, DispatchError> {
    match outcome {
        Err(_) => Err(DispatchError::Timeout(limits.timeout)),
        Ok(Err(error)) => Err(classify_failure(&error, limits)),
        Ok(Ok(value)) => Ok(value),
    }
}
