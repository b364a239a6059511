//! The handler API end to end: real components, real wasmtime, one fresh
//! instance per request.

mod common;

use std::time::{Duration, Instant};

use common::{get, handler, header, json, ok, send};
use pycage::{
    Cache, DispatchError, Handler, LoadOptions, Request, Runtime, RuntimeConfig, Teardown,
};
use serde_json::json;

#[tokio::test]
async fn hello_example_answers_with_json() {
    let h = handler("hello/hello.py");
    let request = Request::new("GET", "/hello/ada")
        .unwrap()
        .with_header("User-Agent", "demo")
        .unwrap();
    let exchange = send(&h, request).await;
    let response = ok(&exchange);
    assert_eq!(response.status, 200);
    assert_eq!(header(response, "content-type"), Some("application/json"));
    assert_eq!(response.body, br#"{"hello": "ada", "agent": "demo"}"#);
}

/// A runtime of its own over the shared test cache, and hello loaded in it.
fn hello_in(config: impl FnOnce(&mut RuntimeConfig)) -> (Runtime, Handler) {
    let mut settings = RuntimeConfig::new(Cache::new(common::cache_dir()));
    config(&mut settings);
    let runtime = Runtime::with_config(settings).unwrap();
    let handler = runtime
        .load(
            &common::fixture("hello/hello.py"),
            &LoadOptions::default(),
            &|_| {},
        )
        .unwrap();
    (runtime, handler)
}

#[tokio::test]
async fn an_exchange_reports_where_its_time_went() {
    let (_runtime, h) = hello_in(|c| c.teardown = Teardown::Inline);
    let exchange = get(&h, "/hello/ada").await;
    ok(&exchange);
    let t = exchange.timings;
    assert!(t.instantiate > Duration::ZERO, "{t:?}");
    assert!(t.call > Duration::ZERO, "{t:?}");
    assert!(t.teardown > Duration::ZERO, "{t:?}");
    assert_eq!(exchange.elapsed, t.instantiate + t.call);
    // A request refused before any instance has no phases at all.
    let refused = h
        .dispatch(
            Request::new("GET", "/hello/ada")
                .unwrap()
                .with_body(vec![0; 11 << 20]),
        )
        .await;
    assert!(matches!(
        refused.result,
        Err(DispatchError::RequestTooLarge { .. })
    ));
    assert_eq!(refused.timings, pycage::Timings::default());
}

/// By default the instance is torn down after the exchange is returned, and
/// its slot stays taken until then: with a single slot, back-to-back
/// requests wait for the previous teardown instead of running beside it.
#[tokio::test]
async fn background_teardown_holds_the_slot_until_it_is_done() {
    let (runtime, h) = hello_in(|c| c.max_instances = 1);
    for _ in 0..20 {
        let exchange = get(&h, "/hello/ada").await;
        ok(&exchange);
        assert_eq!(exchange.timings.teardown, Duration::ZERO);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while runtime.instances_in_use() > 0 {
        assert!(
            Instant::now() < deadline,
            "the last slot was never released"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Concurrent requests too: each queues for the one slot, none fails.
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let h = h.clone();
            tokio::spawn(async move { get(&h, "/hello/ada").await })
        })
        .collect();
    for task in tasks {
        ok(&task.await.unwrap());
    }
}

#[tokio::test]
async fn path_parameters_are_converted_by_annotation() {
    let h = handler("api");
    let response = get(&h, "/items/42?full=yes").await;
    assert_eq!(
        json(ok(&response)),
        json!({"id": 42, "type": "int", "full": "yes"})
    );
    // Not an int: the parameterised route does not match at all.
    let miss = get(&h, "/items/abc").await;
    assert!(
        matches!(miss.result, Err(DispatchError::NotFound)),
        "{:?}",
        miss.result
    );
    let rest = get(&h, "/files/a/b/c.txt").await;
    assert_eq!(json(ok(&rest)), json!({"rest": "a/b/c.txt"}));
}

#[tokio::test]
async fn static_routes_win_over_parameterised_ones() {
    let h = handler("api");
    let response = get(&h, "/items/new").await;
    assert_eq!(json(ok(&response)), json!({"static": true}));
}

#[tokio::test]
async fn unknown_path_is_404_and_wrong_method_is_405_with_allow() {
    let h = handler("api");
    let missing = get(&h, "/nope").await;
    assert!(matches!(missing.result, Err(DispatchError::NotFound)));
    assert_eq!(missing.response().status, 404);

    let wrong = send(&h, Request::new("DELETE", "/items").unwrap()).await;
    match &wrong.result {
        Err(DispatchError::MethodNotAllowed { allowed }) => assert_eq!(allowed, &["POST", "PUT"]),
        other => panic!("expected 405, got {other:?}"),
    }
    assert_eq!(header(&wrong.response(), "allow"), Some("POST, PUT"));

    // A GET route answers HEAD with headers and no body.
    let head = send(&h, Request::new("HEAD", "/").unwrap()).await;
    assert_eq!(ok(&head).status, 200);
    assert!(ok(&head).body.is_empty());
}

#[tokio::test]
async fn json_echo_sees_method_query_headers_and_body() {
    let h = handler("api");
    let request = Request::new("POST", "/echo?a=1&a=2&b=x%20y")
        .unwrap()
        .with_header("Content-Type", "application/json")
        .unwrap()
        .with_header("X-Custom", "Value")
        .unwrap()
        .with_body(br#"{"n": [1, 2, 3], "s": "\u00e9"}"#.to_vec());
    let exchange = send(&h, request).await;
    let body = json(ok(&exchange));
    assert_eq!(body["method"], "POST");
    assert_eq!(body["path"], "/echo");
    assert_eq!(body["params"], json!({"a": ["1", "2"], "b": ["x y"]}));
    assert_eq!(body["json"], json!({"n": [1, 2, 3], "s": "é"}));
    assert_eq!(body["headers"]["x-custom"], "Value");
}

#[tokio::test]
async fn post_returns_201_with_location_and_bad_json_is_400() {
    let h = handler("api");
    let created = send(
        &h,
        Request::new("PUT", "/items")
            .unwrap()
            .with_body(b"[1]".to_vec()),
    )
    .await;
    let response = ok(&created);
    assert_eq!(response.status, 201);
    assert_eq!(header(response, "location"), Some("/items/1"));
    assert_eq!(json(response), json!([1]));

    let bad = send(
        &h,
        Request::new("POST", "/items")
            .unwrap()
            .with_body(b"{nope".to_vec()),
    )
    .await;
    let response = ok(&bad);
    assert_eq!(response.status, 400);
    assert!(
        json(response)["error"]
            .as_str()
            .unwrap()
            .contains("not valid JSON")
    );
}

#[tokio::test]
async fn binary_and_non_utf8_bodies_pass_through_untouched() {
    let h = handler("api");
    let body: Vec<u8> = (0..=255u8).chain([0xff, 0xfe, 0x00, 0xc3]).collect();
    let exchange = send(
        &h,
        Request::new("POST", "/bytes")
            .unwrap()
            .with_body(body.clone()),
    )
    .await;
    let response = ok(&exchange);
    assert_eq!(
        header(response, "content-type"),
        Some("application/octet-stream")
    );
    let expected: Vec<u8> = body.into_iter().rev().collect();
    assert_eq!(response.body, expected);

    // Non-UTF-8 text is decoded with replacement characters, not an error.
    let echo = send(
        &h,
        Request::new("POST", "/echo")
            .unwrap()
            .with_body(vec![b'a', 0xff, b'b']),
    )
    .await;
    assert_eq!(json(ok(&echo))["text"], "a\u{fffd}b");
}

#[tokio::test]
async fn unicode_paths_and_bodies() {
    let h = handler("api");
    let exchange = get(&h, "/unicode/%C3%A9t%C3%A9").await;
    let response = ok(&exchange);
    assert_eq!(
        header(response, "content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(
        String::from_utf8(response.body.clone()).unwrap(),
        "été — ünïcødé ✓ 🐍"
    );
    assert_eq!(header(response, "x-len"), Some("3"));
}

#[tokio::test]
async fn headers_are_case_insensitive_and_repeatable() {
    let h = handler("api");
    let request = Request::new("GET", "/headers")
        .unwrap()
        .with_header("user-agent", "tester/1")
        .unwrap();
    let exchange = send(&h, request).await;
    let response = ok(&exchange);
    assert_eq!(header(response, "x-seen-agent"), Some("tester/1"));
    let cookies: Vec<_> = response
        .headers
        .iter()
        .filter(|(n, _)| n == "set-cookie")
        .collect();
    assert_eq!(cookies.len(), 2);
}

#[tokio::test]
async fn handler_reads_its_own_data_files() {
    let h = handler("api");
    let exchange = get(&h, "/data").await;
    assert_eq!(
        json(ok(&exchange)),
        json!({
            "greeting": "hello from a data file",
            "config": {"mode": "test", "n": 3},
            "at_import": true
        })
    );
}

/// The build makes every object alive at the end of the import immortal,
/// so that requests do not write their reference counts (see
/// host/src/immortal.rs); a silent failure there would only be slower, so
/// check it took effect. What a request creates stays mortal.
#[tokio::test]
async fn snapshot_objects_are_immortal_and_new_ones_are_not() {
    let h = handler("api");
    assert_eq!(
        json(ok(&get(&h, "/immortal").await)),
        json!({"module_global": true, "function": true, "made_here": false})
    );
}

#[tokio::test]
async fn stdlib_module_not_imported_at_build_time_imports_lazily() {
    let h = handler("api");
    for _ in 0..2 {
        let exchange = get(&h, "/lazy").await;
        assert_eq!(json(ok(&exchange)), json!({"sum": "0.3"}));
    }
}

#[tokio::test]
async fn none_is_204_and_tuples_set_the_status() {
    let h = handler("api");
    let none = send(&h, Request::new("DELETE", "/nothing").unwrap()).await;
    assert_eq!(ok(&none).status, 204);
    assert!(ok(&none).body.is_empty());
    let tuple = get(&h, "/tuple").await;
    assert_eq!(ok(&tuple).status, 202);
    let teapot = get(&h, "/teapot").await;
    assert_eq!(ok(&teapot).status, 418);
    assert_eq!(json(ok(&teapot)), json!({"error": "short and stout"}));
}

#[tokio::test]
async fn handler_exception_is_a_500_with_the_traceback() {
    let h = handler("api");
    let exchange = get(&h, "/boom").await;
    match &exchange.result {
        Err(DispatchError::HandlerException { message, traceback }) => {
            assert_eq!(message, "ValueError: boom from the handler");
            assert!(
                traceback.contains("Traceback (most recent call last)"),
                "{traceback}"
            );
            assert!(traceback.contains("app.py\", line"), "{traceback}");
            assert!(traceback.contains("in boom"), "{traceback}");
        }
        other => panic!("expected a handler exception, got {other:?}"),
    }
    let response = exchange.response();
    assert_eq!(response.status, 500);
    assert!(
        !String::from_utf8_lossy(&response.body).contains("boom"),
        "tracebacks never reach the client"
    );
    // The host carries on.
    assert_eq!(ok(&get(&h, "/").await).status, 200);
}

#[tokio::test]
async fn unconvertible_return_values_and_bad_statuses_are_500() {
    let h = handler("api");
    let set = get(&h, "/bad-return").await;
    match &set.result {
        Err(DispatchError::HandlerException { message, .. }) => {
            assert!(
                message.starts_with("TypeError: cannot send a set"),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }
    let status = get(&h, "/bad-status").await;
    assert_eq!(status.response().status, 500);
}

#[tokio::test]
async fn guest_output_is_captured_per_request() {
    let h = handler("api");
    let exchange = get(&h, "/print").await;
    assert_eq!(ok(&exchange).body, b"printed");
    assert_eq!(exchange.stdout.bytes, b"hello from stdout\n");
    assert_eq!(exchange.stderr.bytes, b"hello from stderr\n");
    let quiet = get(&h, "/").await;
    assert!(quiet.stdout.bytes.is_empty());
}

#[tokio::test]
async fn routes_come_from_the_guest_export() {
    let h = handler("api");
    let routes = h.routes().await.unwrap();
    let first = &routes[0];
    assert_eq!(
        (first.pattern.as_str(), first.handler.as_str()),
        ("/", "app.index")
    );
    // Static routes are listed (and matched) before parameterised ones.
    let items_new = routes
        .iter()
        .position(|r| r.pattern == "/items/new")
        .unwrap();
    let items_param = routes
        .iter()
        .position(|r| r.pattern == "/items/{item_id}")
        .unwrap();
    assert!(items_new < items_param);
    let create = routes.iter().find(|r| r.pattern == "/items").unwrap();
    assert_eq!(create.methods, ["POST", "PUT"]);
}

#[tokio::test]
async fn lazy_imports_load_bytecode_instead_of_compiling_source() {
    let h = handler("api");
    let exchange = get(&h, "/lazy-bytecode").await;
    let body = json(ok(&exchange));
    assert_eq!(
        body["preloaded"],
        json!([]),
        "the modules must not be in the build snapshot"
    );
    assert_eq!(
        body["compiled"],
        json!([]),
        "no source may be compiled at request time"
    );
    assert_eq!(body["half"], "1/2");
    assert_eq!(body["helper"], 42);
}
