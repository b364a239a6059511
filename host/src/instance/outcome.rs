//! How a call on an instance ended, classified in one place for every call
//! (`dispatch`, `routes`, the reused-instance bench): which limit stopped
//! it, whether the host could not start the instance, how the guest failed;
//! and, for `dispatch`, what the guest's answer means at the boundary.

use wasmtime::Trap;
use wasmtime_wasi::I32Exit;

use crate::contract::wit::types;
use crate::error::DispatchError;
use crate::guest_text;
use crate::http::Response;
use crate::limits::Limits;

/// Bounds on what a guest's exception report may hold, in bytes.
const MAX_EXCEPTION_MESSAGE: usize = 4 << 10;
const MAX_TRACEBACK: usize = 64 << 10;
/// Most methods a 405's `Allow` header may list.
const MAX_ALLOWED_METHODS: usize = 32;

/// What running one call produced, before it is classified.
pub(crate) struct Ran<T> {
    /// Whether the instance was created (the call itself then ran).
    pub instantiated: bool,
    /// `Err` when the call's timeout ran out.
    pub outcome: Result<wasmtime::Result<T>, tokio::time::error::Elapsed>,
    /// Whether the memory cap refused a growth.
    pub memory_hit: bool,
}

/// The value the call returned, or why there is none.
pub(crate) fn classify<T>(ran: Ran<T>, limits: &Limits) -> Result<T, DispatchError> {
    match ran.outcome {
        Err(_elapsed) => Err(DispatchError::Timeout(limits.timeout)),
        Ok(Ok(value)) => Ok(value),
        // The cap was hit: while instantiating (an image larger than the
        // limit) or while running, that is the limit's doing.
        Ok(Err(_)) if ran.memory_hit => Err(memory_limit(limits)),
        // The host could not provide the instance (a memory slot, say):
        // not the guest's doing.
        Ok(Err(error)) if !ran.instantiated => {
            Err(DispatchError::Instantiate(format!("{error:#}")))
        }
        Ok(Err(error)) => Err(failure(&error, limits)),
    }
}

fn memory_limit(limits: &Limits) -> DispatchError {
    DispatchError::MemoryLimit {
        limit_bytes: limits.memory_bytes,
    }
}

/// Why a running guest call failed (other than a memory cap).
fn failure(error: &wasmtime::Error, limits: &Limits) -> DispatchError {
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

/// What the guest's `dispatch` answered, checked at the boundary: a
/// response the host may send, or the error it stands for.
pub(crate) fn dispatch_answer(
    answer: Result<types::Response, types::DispatchError>,
    memory_hit: bool,
    limits: &Limits,
) -> Result<Response, DispatchError> {
    match answer {
        Err(types::DispatchError::NotFound) => Err(DispatchError::NotFound),
        Err(types::DispatchError::MethodNotAllowed(allowed)) => allowed_methods(allowed)
            .and_then(|allowed| Err(DispatchError::MethodNotAllowed { allowed })),
        Err(types::DispatchError::HandlerException(info)) => {
            if memory_hit && info.message.starts_with("MemoryError") {
                Err(memory_limit(limits))
            } else {
                // The glue bounds these too, but the glue is guest code.
                Err(DispatchError::HandlerException {
                    message: guest_text::bounded(&info.message, MAX_EXCEPTION_MESSAGE).into_owned(),
                    traceback: guest_text::bounded(&info.traceback, MAX_TRACEBACK).into_owned(),
                })
            }
        }
        Ok(response) => Response::from_guest(
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ran<T>(instantiated: bool, outcome: wasmtime::Result<T>, memory_hit: bool) -> Ran<T> {
        Ran {
            instantiated,
            outcome: Ok(outcome),
            memory_hit,
        }
    }

    /// One classifier for every call: a failed instantiation is the host's
    /// (unless the memory cap caused it), whichever export was called.
    #[test]
    fn instantiation_failures_and_memory_caps_are_told_apart() {
        let limits = Limits::default();
        let err = || wasmtime::Error::msg("no slot");
        assert!(matches!(
            classify(ran::<()>(false, Err(err()), false), &limits),
            Err(DispatchError::Instantiate(_))
        ));
        assert!(matches!(
            classify(ran::<()>(false, Err(err()), true), &limits),
            Err(DispatchError::MemoryLimit { .. })
        ));
        assert!(matches!(
            classify(ran::<()>(true, Err(err()), false), &limits),
            Err(DispatchError::Trap(_))
        ));
        assert!(matches!(classify(ran(true, Ok(7), true), &limits), Ok(7)));
    }

    #[test]
    fn allowed_methods_are_tokens_and_bounded() {
        assert_eq!(
            allowed_methods(vec!["GET".into(), "HEAD".into(), "GET".into()]).unwrap(),
            ["GET", "HEAD"]
        );
        assert!(allowed_methods(vec!["G\u{1b}T".into()]).is_err());
        assert!(allowed_methods(vec!["".into()]).is_err());
        let many: Vec<String> = (0..40).map(|i| format!("M{i}")).collect();
        assert!(allowed_methods(many).is_err());
    }
}
