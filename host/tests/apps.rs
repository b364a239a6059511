//! Existing WSGI and ASGI apps served unchanged (`guest-python/pycage/_apps.py`):
//! real Bottle, Falcon and Starlette from PyPI, installed by the build as
//! pyproject.toml dependencies, each request a fresh instance.

mod common;

use common::{fixture, handler, header, json, ok};
use pycage::{Exchange, Handler, LoadOptions, Request};

async fn send(h: &Handler, method: &str, target: &str, body: &[u8]) -> Exchange {
    h.dispatch(
        Request::new(method, target)
            .unwrap()
            .with_header("content-type", "application/json")
            .unwrap()
            .with_header("user-agent", "apps-test")
            .unwrap()
            .with_header("x-probe", "probed")
            .unwrap()
            .with_body(body.to_vec()),
    )
    .await
}

fn text(e: &Exchange) -> String {
    String::from_utf8_lossy(&ok(e).body).into_owned()
}

#[tokio::test]
async fn a_bottle_app_is_served_as_wsgi() {
    let h = handler("apps/bottle");
    let routes = h.routes().await.unwrap();
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0].handler, "wsgi app app:app");
    for _ in 0..2 {
        // A template, and a module-level counter that every fresh instance starts at 0.
        let e = send(&h, "GET", "/hello/ada", b"").await;
        assert_eq!(ok(&e).status, 200);
        assert_eq!(text(&e), "<b>Hello ada</b>, visit 1");
        assert!(
            header(ok(&e), "content-type")
                .unwrap()
                .starts_with("text/html")
        );
    }
    let e = send(&h, "POST", "/echo?x=1", br#"{"a": [1, 2]}"#).await;
    let body = json(ok(&e));
    assert_eq!(body["got"], serde_json::json!({"a": [1, 2]}));
    assert_eq!(body["query"], serde_json::json!({"x": "1"}));
    assert_eq!(body["agent"], "apps-test");
    let e = send(&h, "GET", "/teapot", b"").await;
    assert_eq!(ok(&e).status, 418);
    assert_eq!(header(ok(&e), "x-kind"), Some("teapot"));
    let e = send(&h, "GET", "/redirect", b"").await;
    assert!(matches!(ok(&e).status, 302 | 303), "{}", ok(&e).status);
    assert!(
        header(ok(&e), "location")
            .unwrap()
            .ends_with("/hello/again")
    );
    // The app's own 404 and 405.
    assert_eq!(ok(&send(&h, "GET", "/nope", b"").await).status, 404);
    assert_eq!(ok(&send(&h, "DELETE", "/echo", b"").await).status, 405);
    // HEAD: the app's headers, no body.
    let e = send(&h, "HEAD", "/hello/ada", b"").await;
    assert_eq!(ok(&e).status, 200);
    assert!(ok(&e).body.is_empty());
}

#[tokio::test]
async fn a_falcon_app_is_served_as_wsgi() {
    let h = handler("apps/falcon");
    let e = send(&h, "GET", "/things/7?q=x", b"").await;
    assert_eq!(json(ok(&e)), serde_json::json!({"id": 7, "q": "x"}));
    let e = send(&h, "POST", "/things/8", br#"{"k": "v"}"#).await;
    assert_eq!(ok(&e).status, 201);
    assert_eq!(json(ok(&e))["stored"], serde_json::json!({"k": "v"}));
    assert_eq!(ok(&send(&h, "GET", "/things/abc", b"").await).status, 404);
}

#[tokio::test]
async fn a_starlette_app_is_served_as_asgi() {
    let h = handler("apps/starlette");
    let routes = h.routes().await.unwrap();
    assert_eq!(routes[0].handler, "asgi app app:app");
    let e = send(&h, "GET", "/users/ada?page=2", b"").await;
    assert_eq!(
        json(ok(&e)),
        serde_json::json!({"user": "ada", "page": "2"})
    );
    let e = send(&h, "POST", "/users", br#"{"name": "grace"}"#).await;
    assert_eq!(ok(&e).status, 201);
    assert_eq!(header(ok(&e), "x-created"), Some("yes"));
    assert_eq!(json(ok(&e))["created"]["name"], "grace");
    // A streamed body is collected whole.
    let e = send(&h, "GET", "/stream", b"").await;
    assert_eq!(text(&e), "0\n1\n2\n3\n4\n");
    let e = send(&h, "GET", "/headers", b"").await;
    assert_eq!(text(&e), "probed");
    assert_eq!(ok(&send(&h, "GET", "/nope", b"").await).status, 404);
    assert_eq!(ok(&send(&h, "DELETE", "/users", b"").await).status, 405);
}

/// `--module MODULE:APP` picks the app by name, as gunicorn and uvicorn do;
/// a name that is missing or not an app fails the build saying so.
#[tokio::test]
async fn an_app_is_chosen_by_module_and_attribute() {
    let load = |module: &str| {
        common::runtime().load(
            &fixture("apps/bottle"),
            &LoadOptions {
                module: Some(module.to_owned()),
                ..LoadOptions::default()
            },
            &|_| {},
        )
    };
    let h = load("app:admin").unwrap();
    assert_eq!(h.routes().await.unwrap()[0].handler, "wsgi app app:admin");
    let e = send(&h, "GET", "/", b"").await;
    assert_eq!(text(&e), "admin");
    assert_eq!(ok(&send(&h, "GET", "/hello/ada", b"").await).status, 404);
    let h = load(":app").unwrap();
    assert_eq!(
        text(&send(&h, "GET", "/hello/x", b"").await),
        "<b>Hello x</b>, visit 1"
    );
    for (spec, expected) in [
        ("app:missing", "has no attribute 'missing'"),
        ("app:NOT_AN_APP", "not a WSGI or ASGI app"),
    ] {
        let error = load(spec).err().expect(spec).to_string();
        assert!(error.contains(expected), "{spec}: {error}");
    }
    let error = load("app:not-an-identifier").err().unwrap().to_string();
    assert!(error.contains("not-an-identifier"), "{error}");
}

/// Headers reach a WSGI app the way gunicorn passes them: a name with an
/// underscore (which would pass for another header) is dropped, repeated
/// cookies are joined as one Cookie header, a bad port is ignored.
#[tokio::test]
async fn wsgi_environ_cannot_be_spoofed_through_header_names() {
    let h = handler("apps/bottle");
    let request = Request::new("GET", "/environ?q=%E2%82%AC")
        .unwrap()
        .with_header("host", "example.com:\u{b2}")
        .unwrap()
        .with_header("x-forwarded-for", "1.1.1.1")
        .unwrap()
        .with_header("x_forwarded_for", "6.6.6.6")
        .unwrap()
        .with_header("content_length", "99")
        .unwrap()
        .with_header("cookie", "a=1")
        .unwrap()
        .with_header("cookie", "b=2")
        .unwrap();
    let e = h.dispatch(request).await;
    let body = json(ok(&e));
    assert_eq!(body["HTTP_X_FORWARDED_FOR"], "1.1.1.1", "{body}");
    assert_eq!(body["HTTP_COOKIE"], "a=1; b=2", "{body}");
    assert!(body["CONTENT_LENGTH"].is_null(), "{body}");
    assert_eq!(body["QUERY_STRING"], "q=%E2%82%AC", "{body}");
    assert_eq!(body["SERVER_PORT"], "80", "{body}");
}

#[tokio::test]
async fn a_flask_app_with_templates_and_a_blueprint_is_served_as_wsgi() {
    // Flask needs MarkupSafe, which has no pure-Python wheel: the build made
    // one from its source distribution inside the sandbox.
    let h = handler("apps/flask");
    let routes = h.routes().await.unwrap();
    assert_eq!(routes[0].handler, "wsgi app app:app");
    let e = send(&h, "GET", "/?name=%3Cb%3Eada%3C/b%3E", b"").await;
    assert_eq!(text(&e).trim(), "<h1>Hello, &lt;b&gt;ada&lt;/b&gt;!</h1>");
    // The blueprint, mounted at /shop: a template with url_for, and JSON.
    let e = send(&h, "GET", "/shop/", b"").await;
    assert_eq!(
        text(&e).trim(),
        "<ul><li>tea: 3.50</li><li>cake: 4.25</li></ul><a href=\"/shop/tea\">tea</a>"
    );
    let e = send(&h, "GET", "/shop/cake", b"").await;
    assert_eq!(
        json(ok(&e)),
        serde_json::json!({"item": "cake", "price": 4.25})
    );
    let e = send(&h, "POST", "/echo", br#"{"a": [1, 2]}"#).await;
    assert_eq!(
        json(ok(&e)),
        serde_json::json!({"got": {"a": [1, 2]}, "agent": "apps-test"})
    );
    // The app's own error handler, through abort() in the blueprint.
    let e = send(&h, "GET", "/shop/nope", b"").await;
    assert_eq!(ok(&e).status, 404);
    assert_eq!(json(ok(&e))["path"], "/shop/nope");
    assert_eq!(ok(&send(&h, "DELETE", "/echo", b"").await).status, 405);
}
