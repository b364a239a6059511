//! The multi-tenant server, embedded: real sockets on 127.0.0.1, a real
//! HTTP client, the fixture config `fixtures/pycage.toml`.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use common::client::{self, Reply, get};
use common::{cache_dir, fixture};
use pycage::config::ServeConfig;
use pycage::server::{self, Server};
use pycage::{Cache, Runtime};
use serde_json::json;

/// One server for the whole test binary, on ephemeral ports, running on a
/// runtime of its own so that it outlives individual tests.
struct Running {
    addr: SocketAddr,
    admin: SocketAddr,
}

fn config() -> ServeConfig {
    let mut config = ServeConfig::load(&fixture("pycage.toml")).expect("fixture config is valid");
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    config
}

fn server() -> &'static Running {
    static SERVER: OnceLock<Running> = OnceLock::new();
    SERVER.get_or_init(|| {
        let config = config();
        let runtime = Arc::new(
            Runtime::with_config(server::runtime_config(&config, Cache::new(cache_dir()))).unwrap(),
        );
        let tenants = server::pending_tenants(&config);
        let failures = server::load_tenants(&runtime, &config, &tenants, &|_| {});
        assert!(failures.is_empty(), "{failures:?}");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let server = Server::bind(runtime, tenants, &config).await.unwrap();
                tx.send(Running {
                    addr: server.local_addr(),
                    admin: server.admin_addr().unwrap(),
                })
                .unwrap();
                server.run(std::future::pending()).await.unwrap();
            });
        });
        rx.recv().unwrap()
    })
}

#[tokio::test]
async fn hundreds_of_concurrent_requests_to_several_tenants_without_cross_talk() {
    let addr = server().addr;
    let limit = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::new();
    for i in 0..300 {
        let limit = limit.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = limit.acquire().await.unwrap();
            let reply = match i % 3 {
                0 => get(addr, "alpha.localhost", "/whoami").await,
                1 => get(addr, "127.0.0.1", "/beta/whoami").await,
                _ => get(addr, "hello.localhost:8080", &format!("/v1/hello/user{i}")).await,
            };
            (i, reply)
        }));
    }
    for task in tasks {
        let (i, reply) = task.await.unwrap();
        assert_eq!(reply.status, 200, "request {i}: {}", reply.text());
        let expected = match i % 3 {
            0 => json!({"tenant": "alpha", "secret": "alpha-secret-7f3a"}),
            1 => json!({"tenant": "beta", "secret": "beta-secret-91c2"}),
            _ => json!({"hello": format!("user{i}"), "agent": null}),
        };
        assert_eq!(reply.json(), expected, "request {i}");
    }
}

async fn limit_reply(path: &str) -> Reply {
    let addr = server().addr;
    if path == "/limits/upload" {
        return client::send(addr, "POST", "127.0.0.1", path, vec![b'x'; 2048])
            .await
            .unwrap();
    }
    get(addr, "127.0.0.1", path).await
}

#[tokio::test]
async fn every_limit_is_reported_with_its_status_while_other_requests_flow() {
    let addr = server().addr;
    // Normal traffic to another tenant during the whole test.
    let background = tokio::spawn(async move {
        let mut served = 0;
        for _ in 0..40 {
            let reply = get(addr, "alpha.localhost", "/whoami").await;
            assert_eq!(reply.status, 200);
            served += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        served
    });
    let cases: &[(&str, u16, Option<&str>)] = &[
        ("/limits/loop", 504, Some("longer than the 2s limit")),
        ("/limits/regex", 504, Some("longer than the 2s limit")),
        ("/limits/sum", 504, Some("longer than the 2s limit")),
        ("/limits/sleep", 504, Some("longer than the 2s limit")),
        ("/limits/memory", 500, Some("memory limit of 64 MiB")),
        ("/limits/memory-list", 500, Some("memory limit of 64 MiB")),
        (
            "/limits/big-response",
            500,
            Some("over the 1048576-byte limit"),
        ),
        ("/limits/upload", 413, Some("over the 1024-byte limit")),
        ("/limits/recursion", 500, None),
        ("/limits/deep-c", 500, Some("exhausted its call stack")),
        ("/limits/many-headers", 500, None),
    ];
    // One at a time, so that a slow machine cannot turn a 500 into a 504.
    for &(path, status, detail) in cases {
        let reply = limit_reply(path).await;
        assert_eq!(reply.status, status, "{path}: {}", reply.text());
        if let Some(detail) = detail {
            let got = reply.json()["detail"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            assert!(
                got.contains(detail),
                "{path}: detail {got:?} should mention {detail:?}"
            );
        }
        // The same tenant serves its next request normally.
        assert_eq!(
            get(addr, "127.0.0.1", "/limits/ok").await.json(),
            json!({"ok": true}),
            "after {path}"
        );
    }
    assert_eq!(background.await.unwrap(), 40);
}

#[tokio::test]
async fn output_floods_are_truncated_not_fatal() {
    let reply = limit_reply("/limits/flood").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json(), json!({"flooded": true}));
}

#[tokio::test]
async fn a_tenant_cannot_read_another_tenants_files() {
    let addr = server().addr;
    let beta_secret = fixture("tenants/beta/secret.txt").canonicalize().unwrap();
    // The server removes dot-segments from request paths before routing,
    // so the walks go in the query string: the guest tries them, as given,
    // on its own filesystem.
    let attempts = [
        format!("/peek{}", beta_secret.display()),
        "/peek?path=/app/../beta/secret.txt".to_owned(),
        "/peek?path=/app/../../tenants/beta/secret.txt".to_owned(),
        "/peek?path=/1/../beta/secret.txt".to_owned(),
        format!("/peek?path={}", beta_secret.display()),
    ];
    for path in attempts {
        let reply = get(addr, "alpha.localhost", &path).await;
        assert_eq!(reply.status, 200, "{path}");
        let body = reply.json();
        assert!(
            body.get("error").is_some(),
            "{path} should fail, got {body}"
        );
        assert!(!reply.text().contains("beta-secret"), "{path} leaked");
    }
    let listing = get(addr, "alpha.localhost", "/listdir").await.json();
    let files: Vec<_> = listing["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert!(
        files.contains(&"secret.txt") && files.contains(&"app.py"),
        "{files:?}"
    );
    assert_eq!(
        get(addr, "alpha.localhost", "/whoami").await.json()["secret"],
        "alpha-secret-7f3a"
    );
}

#[tokio::test]
async fn unknown_hosts_and_prefixes_get_404_from_the_host() {
    let addr = server().addr;
    for (host, path) in [
        ("nobody.localhost", "/whoami"),
        ("127.0.0.1", "/gamma/whoami"),
        ("127.0.0.1", "/betamax"),
    ] {
        let reply = get(addr, host, path).await;
        assert_eq!(reply.status, 404, "{host}{path}");
        assert_eq!(
            reply.json(),
            json!({"error": "no tenant serves this host and path"})
        );
        assert!(reply.headers.contains_key("x-request-id"));
    }
    // A path inside a tenant that no route matches is the router's 404.
    let reply = get(addr, "127.0.0.1", "/beta/nope").await;
    assert_eq!(
        (reply.status, reply.json()),
        (404, json!({"error": "Not Found"}))
    );
}

#[tokio::test]
async fn metrics_count_requests_limits_and_instances() {
    let running = server();
    let upload = client::send(
        running.addr,
        "POST",
        "127.0.0.1",
        "/limits/upload",
        vec![0; 4096],
    )
    .await
    .unwrap();
    assert_eq!(upload.status, 413);
    assert_eq!(
        get(running.addr, "alpha.localhost", "/whoami").await.status,
        200
    );
    let metrics = get(running.admin, "127.0.0.1", "/metrics").await;
    assert_eq!(metrics.status, 200);
    let text = metrics.text();
    assert!(
        text.contains("pycage_requests_total{tenant=\"alpha\",status=\"2xx\"}"),
        "{text}"
    );
    assert!(
        text.contains("pycage_limit_hits_total{tenant=\"limits\",limit=\"request_body\"}"),
        "{text}"
    );
    assert!(
        text.contains("pycage_request_duration_seconds_bucket"),
        "{text}"
    );
    assert!(text.contains("pycage_instances_in_use"), "{text}");
    assert!(
        text.contains("pycage_tenant_ready{tenant=\"alpha\"} 1"),
        "{text}"
    );
    assert_eq!(get(running.admin, "127.0.0.1", "/").await.status, 404);
    assert_eq!(
        get(running.admin, "127.0.0.1", "/healthz").await.status,
        200
    );
    let ready = get(running.admin, "127.0.0.1", "/readyz").await;
    assert_eq!(
        (ready.status, ready.json()),
        (200, json!({"status": "ready"}))
    );
}

/// Send `request` as raw bytes on a new connection and return what came
/// back until the server closed it or `wait` passed.
async fn raw(addr: SocketAddr, request: &[u8], wait: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(wait, stream.read_to_end(&mut reply)).await;
    String::from_utf8_lossy(&reply).into_owned()
}

fn status_of(reply: &str) -> u16 {
    reply
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {reply:?}"))
}

/// Tenant routing reads the request as strictly as HTTP/1.1 says: no
/// request reaches a tenant other than the one a proxy in front expects.
#[tokio::test]
async fn host_and_target_are_read_strictly() {
    let addr = server().addr;
    let wait = Duration::from_secs(5);
    let cases: &[(&str, u16, Option<&str>)] = &[
        // Two Host headers, none, a bad port, a bad name: 400.
        (
            "GET /whoami HTTP/1.1\r\nHost: alpha.localhost\r\nHost: other\r\nConnection: close\r\n\r\n",
            400,
            None,
        ),
        (
            "GET /beta/whoami HTTP/1.1\r\nConnection: close\r\n\r\n",
            400,
            None,
        ),
        (
            "GET /whoami HTTP/1.1\r\nHost: alpha.localhost:99999\r\nConnection: close\r\n\r\n",
            400,
            None,
        ),
        (
            "GET /whoami HTTP/1.1\r\nHost: alpha..localhost\r\nConnection: close\r\n\r\n",
            400,
            None,
        ),
        // The authority of an absolute-form target wins over Host.
        (
            "GET http://alpha.localhost/whoami HTTP/1.1\r\nHost: nobody.localhost\r\nConnection: close\r\n\r\n",
            200,
            Some("alpha-secret"),
        ),
        // A trailing dot names the same host.
        (
            "GET /whoami HTTP/1.1\r\nHost: alpha.localhost.\r\nConnection: close\r\n\r\n",
            200,
            Some("alpha-secret"),
        ),
        // Dot-segments are removed before the prefix is matched.
        (
            "GET /beta/../whoami HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
            404,
            Some("no tenant serves"),
        ),
        (
            "GET /beta/%2e%2e/whoami HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
            404,
            Some("no tenant serves"),
        ),
        (
            "GET /limits/../beta/whoami HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
            200,
            Some("beta-secret"),
        ),
        (
            "GET /beta/./whoami HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
            200,
            Some("beta-secret"),
        ),
        // HTTP/1.0 may omit Host: only tenants for any host can match.
        (
            "GET /beta/whoami HTTP/1.0\r\n\r\n",
            200,
            Some("beta-secret"),
        ),
    ];
    for (request, status, body) in cases {
        let reply = raw(addr, request.as_bytes(), wait).await;
        assert_eq!(status_of(&reply), *status, "{request:?}\n{reply}");
        if let Some(body) = body {
            assert!(reply.contains(body), "{request:?}\n{reply}");
        }
    }
    assert_eq!(get(addr, "alpha.localhost", "/whoami").await.status, 200);
}

/// The request head is bounded at exactly 64 KiB, and request ids say
/// nothing about how many requests the server has served.
#[tokio::test]
async fn the_request_head_bound_is_exact_and_ids_are_opaque() {
    let addr = server().addr;
    let head = |size: usize| {
        let filler = "a".repeat(size);
        format!(
            "GET /whoami HTTP/1.1\r\nHost: alpha.localhost\r\nX-Fill: {filler}\r\nConnection: close\r\n\r\n"
        )
    };
    let fits = raw(addr, head(60 << 10).as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(status_of(&fits), 200);
    let over = raw(addr, head(65 << 10).as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(status_of(&over), 431, "{}", &over[..over.len().min(200)]);

    let a = get(addr, "alpha.localhost", "/whoami").await;
    let b = get(addr, "alpha.localhost", "/whoami").await;
    let id = |r: &Reply| {
        let text = r.headers["x-request-id"].to_str().unwrap().to_owned();
        u64::from_str_radix(&text, 16).unwrap()
    };
    let (a, b) = (id(&a), id(&b));
    assert!(
        a.abs_diff(b) > 1_000_000,
        "ids {a:x} and {b:x} look like a counter"
    );
}

thread_local! {
    static TINY_ADMIN: std::cell::Cell<Option<SocketAddr>> = const { std::cell::Cell::new(None) };
}

/// A server of its own with one instance slot, a short queue and a short
/// body timeout.
async fn tiny_server(
    shutdown: tokio::sync::oneshot::Receiver<()>,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let mut config = config();
    config.max_instances = 1;
    config.queue_timeout = Duration::from_millis(200);
    config.shutdown_timeout = Duration::from_secs(5);
    config.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    config.body_timeout = Duration::from_secs(1);
    config.tenants.retain(|t| t.name == "limits");
    let runtime = Arc::new(
        Runtime::with_config(server::runtime_config(&config, Cache::new(cache_dir()))).unwrap(),
    );
    let tenants = server::pending_tenants(&config);
    let failures =
        tokio::task::block_in_place(|| server::load_tenants(&runtime, &config, &tenants, &|_| {}));
    assert!(failures.is_empty(), "{failures:?}");
    let server = Server::bind(runtime, tenants, &config).await.unwrap();
    let addr = server.local_addr();
    TINY_ADMIN.with(|admin| admin.set(server.admin_addr()));
    let task = tokio::spawn(async move {
        server
            .run(async {
                let _ = shutdown.await;
            })
            .await
            .unwrap()
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_answers_503_with_retry_after_and_recovers() {
    let (_stop, rx) = tokio::sync::oneshot::channel();
    let (addr, _task) = tiny_server(rx).await;
    let slow =
        tokio::spawn(async move { get(addr, "127.0.0.1", "/limits/slow?seconds=0.8").await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let refused = get(addr, "127.0.0.1", "/limits/ok").await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.headers.get("retry-after").unwrap(), "1");
    assert_eq!(slow.await.unwrap().status, 200);
    assert_eq!(get(addr, "127.0.0.1", "/limits/ok").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_drains_in_flight_requests() {
    let (stop, rx) = tokio::sync::oneshot::channel();
    let (addr, task) = tiny_server(rx).await;
    let in_flight =
        tokio::spawn(async move { get(addr, "127.0.0.1", "/limits/slow?seconds=0.7").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.send(()).unwrap();
    let reply = in_flight.await.unwrap();
    assert_eq!(reply.status, 200, "the in-flight request must complete");
    assert_eq!(reply.json(), json!({"slow": true}));
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no new connections after shutdown"
    );
}

/// A body that trickles in, or an `Expect: 100-continue` that never sends
/// one, is cut off at the body timeout; idle admin connections are closed
/// at the header timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_and_idle_admin_connections_are_cut_off() {
    let (_stop, rx) = tokio::sync::oneshot::channel();
    let (addr, _task) = tiny_server(rx).await;
    let admin = TINY_ADMIN.with(|a| a.get()).unwrap();
    for request in [
        "POST /limits/ok HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly a little",
        "POST /limits/ok HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\nExpect: 100-continue\r\n\r\n",
    ] {
        let started = std::time::Instant::now();
        let reply = raw(addr, request.as_bytes(), Duration::from_secs(10)).await;
        assert!(reply.contains(" 408 "), "{request:?}\n{reply}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }
    assert_eq!(get(addr, "127.0.0.1", "/limits/ok").await.status, 200);
    // An admin connection that sends nothing is closed, not held.
    let started = std::time::Instant::now();
    let reply = raw(admin, b"", Duration::from_secs(20)).await;
    let held = started.elapsed();
    assert!(held < Duration::from_secs(15), "held {held:?}: {reply}");
    assert_eq!(get(admin, "127.0.0.1", "/healthz").await.status, 200);
}
