//! `async def` handlers on pycage's event loop (`guest-python/pycage/_aio.py`),
//! through real components: timers, `gather`, `wait_for`, `asyncio.run` from
//! plain code, concurrent `fetch_async` calls to a real upstream on
//! 127.0.0.1, a cancelled fetch, and the request deadline ending a handler
//! that waits forever (the next request still served).

mod common;

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::{fixture, json, ok, upstream};
use pycage::grants::AllowedHost;
use pycage::{DispatchError, Handler, Limits, LoadOptions, Request};
use serde_json::Value;

fn upstream() -> &'static upstream::Upstream {
    static UPSTREAM: OnceLock<upstream::Upstream> = OnceLock::new();
    UPSTREAM.get_or_init(upstream::start)
}

/// fixtures/asyncapp, allowed to reach the upstream, with a short deadline.
fn handler() -> Handler {
    static LOADED: OnceLock<Handler> = OnceLock::new();
    static LOADING: Mutex<()> = Mutex::new(());
    let _one = LOADING.lock().unwrap_or_else(|e| e.into_inner());
    LOADED
        .get_or_init(|| {
            let options = LoadOptions {
                allowed_outbound_hosts: vec![AllowedHost::parse(&upstream().base()).unwrap()],
                limits: Limits {
                    timeout: Duration::from_secs(3),
                    ..Limits::default()
                },
                ..LoadOptions::default()
            };
            common::runtime()
                .load(&fixture("asyncapp"), &options, &|_| {})
                .unwrap_or_else(|e| panic!("loading asyncapp: {e}"))
        })
        .clone()
}

async fn get(target: &str) -> pycage::Exchange {
    handler()
        .dispatch(Request::new("GET", target).unwrap())
        .await
}

async fn get_json(target: &str) -> Value {
    json(ok(&get(target).await))
}

fn base_query() -> String {
    let base = upstream().base();
    format!(
        "base={}",
        percent_encoding::utf8_percent_encode(&base, percent_encoding::NON_ALPHANUMERIC)
    )
}

async fn still_serves() {
    assert_eq!(
        get_json("/hello/again").await["hello"],
        "again",
        "the next request must be served"
    );
}

#[tokio::test]
async fn async_handlers_are_awaited_with_timers_gather_and_timeouts() {
    assert_eq!(get_json("/hello/ada").await["hello"], "ada");

    // Five 200 ms sleeps gathered take ~200 ms, not 1 s: they wait together.
    let body = get_json("/gather-sleeps").await;
    let elapsed = body["elapsed"].as_f64().unwrap();
    assert!((0.19..0.6).contains(&elapsed), "{body}");

    let body = get_json("/wait-for").await;
    assert_eq!(body["timed_out"], true, "{body}");
    assert_eq!(body["scope_expired"], true, "{body}");
    assert!(body["elapsed"].as_f64().unwrap() < 1.0, "{body}");

    let body = get_json("/tasks").await;
    assert_eq!(body["order"], serde_json::json!(["fast", "middle", "slow"]));
    assert_eq!(body["queue"], "q");
    assert_eq!(body["loop"], "PollLoop");

    // asyncio.run and new_event_loop from a plain handler use the same loop.
    let body = get_json("/sync-run").await;
    assert_eq!(body["run"], 42, "{body}");
    assert_eq!(body["new_event_loop"], "loop", "{body}");

    // HTTPError raised in a coroutine is the response, as in a plain handler.
    let e = get("/teapot").await;
    assert_eq!(ok(&e).status, 418);
}

#[tokio::test]
async fn concurrent_fetches_overlap_and_a_cancelled_one_is_dropped() {
    // Four requests that each take 300 ms upstream, gathered: together
    // they take about 300 ms, not 1.2 s.
    let body = get_json(&format!("/fetch-many?{}", base_query())).await;
    assert_eq!(
        body["bodies"],
        serde_json::json!([
            "after 300 ms",
            "after 300 ms",
            "after 300 ms",
            "after 300 ms"
        ]),
        "{body}"
    );
    let elapsed = body["elapsed"].as_f64().unwrap();
    assert!((0.29..0.9).contains(&elapsed), "not concurrent: {body}");

    // wait_for gives up on a 5 s response after 200 ms; the instance goes
    // on and makes another request.
    let body = get_json(&format!("/fetch-cancel?{}", base_query())).await;
    assert_eq!(body["cancelled"], true, "{body}");
    assert_eq!(body["after"], "hello from upstream", "{body}");
    assert!(body["elapsed"].as_f64().unwrap() < 2.0, "{body}");

    // A request body larger than one stream write goes out whole, blocking
    // and awaited (the stream may close as soon as the last byte is sent).
    let sent = vec![b'x'; 100_000];
    let e = handler()
        .dispatch(
            Request::new("POST", &format!("/post-echo-sync?{}", base_query()))
                .unwrap()
                .with_body(sent.clone()),
        )
        .await;
    assert_eq!(json(ok(&e))["echoed_bytes"], 100_000);
    let e = handler()
        .dispatch(
            Request::new("POST", &format!("/post-echo?{}", base_query()))
                .unwrap()
                .with_body(sent),
        )
        .await;
    assert_eq!(json(ok(&e))["echoed_bytes"], 100_000);

    // The allow-list holds for the async variant too.
    let body = get_json("/fetch-denied").await;
    let refused = body["refused"].as_str().unwrap_or_default();
    assert!(refused.contains("not in allowed_outbound_hosts"), "{body}");
    still_serves().await;
}

#[tokio::test]
async fn the_deadline_ends_a_handler_that_waits_forever() {
    let started = Instant::now();
    let e = get("/forever").await;
    assert!(
        matches!(e.result, Err(DispatchError::Timeout(_))),
        "{:?}",
        e.result
    );
    assert!(started.elapsed() < Duration::from_secs(6));
    still_serves().await;
}

#[tokio::test]
async fn waiting_on_nothing_fails_at_once_and_sockets_are_refused() {
    // A future nothing can complete: a clear error now, not a hang until
    // the deadline.
    let started = Instant::now();
    let e = get("/stuck").await;
    match &e.result {
        Err(DispatchError::HandlerException { message, .. }) => {
            assert!(message.contains("nothing to wait for"), "{message}")
        }
        other => panic!("expected the handler's exception, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(2));

    let body = get_json("/sockets").await;
    assert!(body["error"].is_string(), "{body}");
    still_serves().await;
}

/// Misuse of fetch_async and the loop (found by attacking them): a
/// coroutine stepped without a loop, a loop abandoned with a request in
/// flight and collected, a thread asked for. Each is a Python result, not a
/// trap of the instance, and the next request is served.
#[tokio::test]
async fn misuse_of_the_loop_is_a_python_error_not_a_trap() {
    let body = get_json(&format!("/abuse/no-loop?{}", base_query())).await;
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("no running event loop"),
        "{body}"
    );
    let body = get_json(&format!("/abuse/abandoned-loop?{}", base_query())).await;
    assert_eq!(body["survived"], true, "{body}");
    let body = get_json("/abuse/to-thread").await;
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("threads are not available"),
        "{body}"
    );
    // An HTTPError raised in a TaskGroup is still the response.
    let e = get("/task-group-404").await;
    assert_eq!(ok(&e).status, 404);
    still_serves().await;
}
