//! The gaps of CPython for WASI that pycage fills (`guest-python/pycage/_compat.py`),
//! through a real component whose handler imports everything it probes
//! lazily, at request time (fixtures/stdlib).

mod common;

use common::{get, handler, json, ok};
use serde_json::Value;

async fn probe(target: &str) -> Value {
    json(ok(&get(&handler("stdlib"), target).await))
}

fn refused<'a>(attempt: &'a Value, error: &str) -> &'a str {
    assert_eq!(attempt["ok"], false, "expected {error}: {attempt}");
    assert_eq!(attempt["error"], error, "{attempt}");
    attempt["message"].as_str().unwrap()
}

#[tokio::test]
async fn ssl_imports_and_configures_but_never_speaks_tls() {
    let body = probe("/ssl").await;
    assert_eq!(body["verify_mode"], 0, "{body}");
    assert_eq!(body["has_sni"], true);
    assert_eq!(body["is_oserror"], true);
    let message = refused(&body["wrap"], "SSLError");
    assert!(message.contains("TLS is not available"), "{message}");
    assert!(message.contains("pycage.fetch"), "{message}");
    // urllib gets as far as it can: no sockets, whatever it tries first.
    assert_eq!(body["urllib"]["ok"], false, "{body}");
}

#[tokio::test]
async fn the_sandbox_has_one_unprivileged_user() {
    let body = probe("/identity").await;
    for key in ["uid", "euid", "gid", "egid"] {
        assert_eq!(body[key], 1000, "{key}: {body}");
    }
    assert_eq!(body["groups"], serde_json::json!([1000]));
    assert_eq!(body["ppid"], 1);
    assert_eq!(body["user"], "pycage");
    assert_eq!(body["pw_name"], "pycage");
    refused(&body["root"], "KeyError");
    assert_eq!(body["umask"], serde_json::json!([0o022, 0o077]));
}

#[tokio::test]
async fn pbkdf2_hmac_gives_the_rfc_vectors() {
    let body = probe("/pbkdf2").await;
    assert_eq!(body["sha1_1"], "0c60c80f961f0e71f3a9b524af6012062fe037a6");
    assert_eq!(
        body["sha1_4096"],
        "4b007901b765489abead49d926f721d065a429c1"
    );
    assert_eq!(
        body["sha256_64"],
        "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc\
         49ca9cccf179b645991664b39d77ef317c71b845b1e30bd509112041d3a19783"
    );
    refused(&body["bad_iterations"], "ValueError");
}

#[tokio::test]
async fn temporary_files_live_in_memory_and_named_ones_in_tmp() {
    let body = probe("/tempfile").await;
    assert_eq!(body["binary"], 100_000);
    assert_eq!(body["text"], "héllo");
    let named = body["named"]["value"].as_str().unwrap();
    assert!(named.starts_with("/tmp/"), "{body}");
}

#[tokio::test]
async fn tmp_is_writable_in_memory_and_empty_in_every_request() {
    let h = handler("stdlib");
    for _ in 0..2 {
        // The first request's files are gone in the second.
        let body = json(ok(&get(&h, "/tmpdir").await));
        assert_eq!(body["fresh"], serde_json::json!([]), "{body}");
        assert_eq!(body["zipped"], "zipped");
        assert_eq!(body["listing"], serde_json::json!(["sub", "y.json"]));
        assert_eq!(body["size"], 8);
        assert_eq!(body["dir_removed"], true);
        assert_eq!(body["middle"], "cd");
        assert_eq!(body["whole"], "abcdefgh");
        assert_eq!(body["unlinked"], true);
        assert_eq!(body["rmtree"], true);
        // Only /tmp: the handler's own files stay read-only.
        assert_eq!(body["outside"]["ok"], false, "{body}");
    }
    // Filling /tmp is filling memory: the limit stops it, and the next
    // request is served.
    let filled = get(&h, "/tmpfill").await;
    match &filled.result {
        Err(pycage::DispatchError::MemoryLimit { .. }) => {}
        Ok(response) => assert_eq!(response.status, 500),
        other => panic!("expected the memory limit, got {other:?}"),
    }
    assert_eq!(
        json(ok(&get(&h, "/tmpdir").await))["fresh"],
        serde_json::json!([])
    );

    let body = json(ok(&get(&h, "/tmpclean").await));
    assert_eq!(body["left"], serde_json::json!(["d"]), "{body}");
    assert_eq!(body["size"], 3);
    assert_eq!(body["rolled"], true);
    assert_eq!(body["spooled_size"], 100);
    assert_eq!(
        body["walked"],
        serde_json::json!([["/tmp", []], ["/tmp/d", ["a", "b"]]])
    );
    assert_eq!(body["open_dir"]["error"], "IsADirectoryError", "{body}");
    assert_eq!(
        body["trailing_slash"]["error"], "NotADirectoryError",
        "{body}"
    );
    // Outside /tmp, the real functions answer (a read-only filesystem).
    assert_eq!(body["touch_outside"]["ok"], false, "{body}");
    assert_ne!(body["touch_outside"]["error"], "TypeError", "{body}");
}

#[tokio::test]
async fn threads_fail_saying_why_and_asyncio_works_when_imported_late() {
    let body = probe("/threads").await;
    for key in ["thread", "pool"] {
        let message = refused(&body[key], "RuntimeError");
        assert!(message.contains("WASI has no threads"), "{key}: {message}");
    }
    assert_eq!(body["lock"], true);
    let body = probe("/asyncio-late").await;
    assert_eq!(body["loop"], "PollLoop", "{body}");
}

#[tokio::test]
async fn bz2_and_lzma_import_and_refuse_use_while_gzip_works() {
    let body = probe("/compression").await;
    assert_eq!(body["gzip"], "round trip");
    let bz2 = refused(&body["bz2"], "RuntimeError");
    assert!(bz2.contains("without libbz2"), "{bz2}");
    let lzma = refused(&body["lzma"], "RuntimeError");
    assert!(lzma.contains("without liblzma"), "{lzma}");
    let mmap = refused(&body["mmap"], "OSError");
    assert!(mmap.contains("no memory mapping"), "{mmap}");
}
