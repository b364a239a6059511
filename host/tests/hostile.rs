//! The hostile suite: handlers that attack the sandbox (`fixtures/hostile`).
//! Every case asserts both that the attack failed and that the host serves
//! the next normal request correctly.

mod common;

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use common::{get, ok, runtime};
use pycage::{DispatchError, Exchange, Handler, Limits, LoadOptions};
use serde_json::{Value, json};

/// The fixture, copied with a hard link planted to a secret outside it.
fn hostile() -> Handler {
    static HANDLER: OnceLock<(Handler, tempfile::TempDir)> = OnceLock::new();
    HANDLER
        .get_or_init(|| {
            let work = tempfile::tempdir().unwrap();
            let copy = work.path().join("hostile");
            copy_tree(&common::fixture("hostile"), &copy);
            let secret = work.path().join("outside-secret.txt");
            std::fs::write(&secret, "outside secret").unwrap();
            std::fs::hard_link(&secret, copy.join("planted_hardlink.txt")).unwrap();
            let options = LoadOptions {
                limits: Limits {
                    timeout: Duration::from_secs(2),
                    memory_bytes: 128 << 20,
                    max_output_bytes: 8 << 10,
                    ..Limits::default()
                },
                ..LoadOptions::default()
            };
            let handler = runtime()
                .load(&copy, &options, &|_| {})
                .expect("hostile fixture loads");
            (handler, work)
        })
        .0
        .clone()
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        let kind = entry.file_type().unwrap();
        if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path()).unwrap(), &target).unwrap();
        } else if kind.is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// After every attack, a normal request must be served correctly.
async fn still_serving(h: &Handler, after: &str) {
    let exchange = get(h, "/ok").await;
    assert_eq!(
        common::json(ok(&exchange)),
        json!({"ok": true}),
        "host stopped serving after {after}"
    );
}

/// Every attempt in the route's report must have been refused.
async fn all_refused(target: &str) -> Value {
    let h = hostile();
    let exchange = get(&h, target).await;
    let body = common::json(ok(&exchange));
    let attempts = body["attempts"]
        .as_object()
        .unwrap_or_else(|| panic!("{target}: {body}"));
    let escaped: Vec<_> = attempts
        .iter()
        .filter(|(_, outcome)| outcome["ok"] != false)
        .collect();
    assert!(
        escaped.is_empty(),
        "{target}: these attempts were not refused: {escaped:?}"
    );
    still_serving(&h, target).await;
    body
}

#[tokio::test]
async fn filesystem_escapes_fail() {
    all_refused("/fs/escape").await;
}

#[tokio::test]
async fn path_tricks_fail() {
    all_refused("/fs/tricks").await;
}

#[tokio::test]
async fn writes_anywhere_fail_and_leave_the_host_untouched() {
    all_refused("/fs/write").await;
    // /tmp takes the write, in the instance's memory, not on the host.
    let tmp = get(&hostile(), "/fs/tmp").await;
    assert_eq!(common::json(ok(&tmp))["read_back"], "pwned");
    let app = hostile().app_dir().to_path_buf();
    assert!(
        !app.join("planted.txt").exists()
            && !app.join("newdir").exists()
            && !app.join("link").exists()
    );
    assert!(
        std::fs::read_to_string(app.join("app.py"))
            .unwrap()
            .contains("Hostile handlers")
    );
    assert!(
        !Path::new("/tmp/x").exists()
            || std::fs::read_to_string("/tmp/x").unwrap_or_default() != "pwned"
    );
}

#[tokio::test]
async fn processes_signals_and_ctypes_are_unavailable() {
    all_refused("/proc/spawn").await;
}

#[tokio::test]
async fn sockets_dns_and_urllib_fail() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    all_refused(&format!("/net?port={port}")).await;
    assert!(
        listener.accept().is_err(),
        "the guest reached a host socket"
    );
}

#[tokio::test]
async fn host_environment_and_arguments_are_not_visible() {
    // SAFETY: set before the guest runs; no other thread of this test binary reads it.
    unsafe { std::env::set_var("PYCAGE_HOSTILE_SECRET", "s3cret") };
    let h = hostile();
    let exchange = get(&h, "/proc/environment").await;
    let body = common::json(ok(&exchange));
    let names: Vec<_> = body["environ"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    for name in &names {
        assert!(
            ["PYTHONHOME", "PYTHONPATH", "PYTHONUNBUFFERED"].contains(&name.as_str()),
            "{name} visible"
        );
    }
    assert!(!exchange.stdout.bytes.windows(6).any(|w| w == b"s3cret"));
    let argv = body["argv"].to_string() + &body["orig_argv"].to_string();
    assert!(
        !argv.contains("pycage") && !argv.contains("hostile"),
        "host argv leaked: {argv}"
    );
    still_serving(&h, "/proc/environment").await;
}

/// Which error an attack must end in.
type Expectation = fn(&DispatchError) -> bool;

fn expect_error(exchange: &Exchange, what: &str, check: impl Fn(&DispatchError) -> bool) {
    match &exchange.result {
        Err(error) if check(error) => assert!(error.status() >= 500, "{what}: {error}"),
        other => panic!("{what}: unexpected outcome {other:?}"),
    }
}

#[tokio::test]
async fn exits_and_crashes_end_only_the_request() {
    let h = hostile();
    let cases: &[(&str, Expectation)] = &[
        // WASI carries only success or failure: os._exit(3) arrives as 1.
        (
            "/crash/os-exit",
            |e| matches!(e, DispatchError::Exited(code) if *code != 0),
        ),
        (
            "/crash/sys-exit",
            |e| matches!(e, DispatchError::HandlerException { message, .. } if message.starts_with("SystemExit")),
        ),
        (
            "/crash/keyboard-interrupt",
            |e| matches!(e, DispatchError::HandlerException { message, .. } if message.starts_with("KeyboardInterrupt")),
        ),
        ("/crash/faulthandler", |e| {
            matches!(
                e,
                DispatchError::Trap(_) | DispatchError::HandlerException { .. }
            )
        }),
        ("/crash/abort", |e| {
            matches!(
                e,
                DispatchError::Trap(_)
                    | DispatchError::Exited(_)
                    | DispatchError::HandlerException { .. }
            )
        }),
    ];
    for (target, check) in cases {
        let exchange = get(&h, target).await;
        expect_error(&exchange, target, check);
        still_serving(&h, target).await;
    }
    // Raising in __del__ and in atexit hooks harms nobody: there is no shutdown.
    let exchange = get(&h, "/proc/del").await;
    assert_eq!(common::json(ok(&exchange)), json!({"survived": true}));
    still_serving(&h, "/proc/del").await;
}

#[tokio::test]
async fn memory_bombs_and_loops_hit_their_limits() {
    let h = hostile();
    for target in ["/exhaust/string", "/exhaust/dict", "/exhaust/bytearray"] {
        let exchange = get(&h, target).await;
        expect_error(&exchange, target, |e| {
            matches!(e, DispatchError::MemoryLimit { .. })
                || matches!(e, DispatchError::HandlerException { message, .. } if message.starts_with("MemoryError") || message.starts_with("OverflowError"))
        });
        still_serving(&h, target).await;
    }
    let exchange = get(&h, "/exhaust/loop").await;
    expect_error(&exchange, "/exhaust/loop", |e| {
        matches!(e, DispatchError::Timeout(_))
    });
    still_serving(&h, "/exhaust/loop").await;
}

#[tokio::test]
async fn output_floods_are_capped() {
    let h = hostile();
    let exchange = get(&h, "/exhaust/flood").await;
    assert_eq!(common::json(ok(&exchange)), json!({"flooded": true}));
    assert!(exchange.stdout.truncated);
    assert_eq!(exchange.stdout.bytes.len(), 8 << 10);
    still_serving(&h, "/exhaust/flood").await;
}

#[tokio::test]
async fn invalid_responses_never_reach_the_client() {
    let h = hostile();
    for target in [
        "/bad/header-name",
        "/bad/header-value",
        "/bad/status",
        "/bad/status-type",
        "/bad/unserialisable",
        "/bad/nan",
        "/bad/corrupt-framework",
        "/bad/switching-protocols",
        "/bad/continue",
        "/bad/huge-headers",
        "/bad/huge-allow",
        "/bad/escape-allow",
    ] {
        let exchange = get(&h, target).await;
        assert!(exchange.result.is_err(), "{target}: {:?}", exchange.result);
        let response = exchange.response();
        assert_eq!(response.status, 500, "{target}");
        assert!(
            response.header("set-cookie").is_none(),
            "{target}: header injection"
        );
        still_serving(&h, target).await;
    }
    // The Allow header the host would build is never out of bounds or raw.
    for target in ["/bad/huge-allow", "/bad/escape-allow"] {
        let response = get(&h, target).await.response();
        assert!(response.header("allow").is_none(), "{target}");
    }
    // A status without content loses the body the handler gave it.
    let exchange = get(&h, "/bad/reset-content").await;
    let response = ok(&exchange);
    assert_eq!(response.status, 205);
    assert!(response.body.is_empty());
    // A guest's exception report is bounded by the host, whatever the glue does.
    match get(&h, "/bad/exception-flood").await.result {
        Err(DispatchError::HandlerException { message, traceback }) => {
            assert!(message.len() < 8 << 10, "{} bytes", message.len());
            assert!(traceback.len() < 80 << 10, "{} bytes", traceback.len());
        }
        other => panic!("expected the exception, got {other:?}"),
    }
    still_serving(&h, "/bad/exception-flood").await;
    // Framing headers from the handler are dropped; the host frames the body.
    let exchange = get(&h, "/bad/content-length").await;
    let response = ok(&exchange);
    assert_eq!(response.body, b"short");
    assert!(
        response.header("content-length").is_none()
            && response.header("transfer-encoding").is_none()
    );
}

#[tokio::test]
async fn nothing_survives_into_the_next_request() {
    let h = hostile();
    let left = get(&h, "/state/leave").await;
    let body = common::json(ok(&left));
    assert!(
        body["attempts"]
            .as_object()
            .unwrap()
            .values()
            .all(|o| o["ok"] == false),
        "{body}"
    );
    let check = get(&h, "/state/check").await;
    assert_eq!(
        common::json(ok(&check)),
        json!({"global": null, "builtins": null, "environ": null, "module_attr": null, "sys_modules": false, "file": false, "tmp": false})
    );
}

/// A handler whose snapshot alone is larger than its memory limit cannot be
/// instantiated: that is the memory limit's doing, and reported as such (not
/// as the host failing to provide an instance).
#[tokio::test]
async fn a_snapshot_larger_than_the_memory_limit_hits_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("heavy.py");
    std::fs::write(
        &path,
        "from pycage import route\n\nBLOB = bytearray(24 << 20)\n\n\
         @route('/')\ndef size():\n    return {'size': len(BLOB)}\n",
    )
    .unwrap();
    let limited = LoadOptions {
        limits: Limits {
            memory_bytes: 16 << 20,
            ..Limits::default()
        },
        ..LoadOptions::default()
    };
    let h = runtime().load(&path, &limited, &|_| {}).expect("loads");
    let exchange = get(&h, "/").await;
    expect_error(
        &exchange,
        "/",
        |e| matches!(e, DispatchError::MemoryLimit { limit_bytes } if *limit_bytes == 16 << 20),
    );
    // The route table comes from an instance too, and is classified the
    // same way (it used to be reported as a trap).
    match h.routes().await {
        Err(DispatchError::MemoryLimit { limit_bytes }) => assert_eq!(limit_bytes, 16 << 20),
        other => panic!("expected the memory limit, got {other:?}"),
    }
    // The same image under the default limit serves.
    let roomy = runtime()
        .load(&path, &LoadOptions::default(), &|_| {})
        .expect("loads");
    assert_eq!(
        common::json(ok(&get(&roomy, "/").await)),
        json!({"size": 24 << 20})
    );
}
