//! The capabilities a host grants explicitly: key-value stores (SQLite and a
//! real redis-server), outbound HTTP to a real upstream on 127.0.0.1, and
//! variables. Each grant is exercised through real components; each refusal
//! is checked along with the next request being served.

mod common;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::{fixture, json, ok, redis, upstream};
use pycage::config::StoreConfig;
use pycage::grants::{AllowedHost, VariableSource, VariableSpec};
use pycage::limits::{KvLimits, OutboundLimits};
use pycage::{
    Cache, DispatchError, Exchange, Handler, Limits, LoadError, LoadOptions, Request, Runtime,
    RuntimeConfig,
};
use serde_json::Value;

/// A runtime of its own (its data directory, its stores), sharing the test
/// run's build cache.
struct Host {
    runtime: Runtime,
    _data: tempfile::TempDir,
}

fn host(stores: &[(&str, StoreConfig)], resolve: &[(&str, &str)]) -> Host {
    let data = tempfile::tempdir().unwrap();
    let mut config = RuntimeConfig::new(Cache::new(common::cache_dir()));
    config.data_dir = Some(data.path().to_path_buf());
    config.max_instances = 64;
    for (name, store) in stores {
        config
            .key_value_stores
            .insert((*name).to_owned(), store.clone());
    }
    config.outbound_resolve = resolve
        .iter()
        .map(|(name, ip)| ((*name).to_owned(), ip.parse::<IpAddr>().unwrap()))
        .collect::<BTreeMap<_, _>>();
    Host {
        runtime: Runtime::with_config(config).unwrap(),
        _data: data,
    }
}

/// Loads are serialised: parallel tests would otherwise build the same
/// image at once on a small machine.
fn try_load(host: &Host, relative: &str, options: &LoadOptions) -> Result<Handler, LoadError> {
    static LOADING: Mutex<()> = Mutex::new(());
    let _one = LOADING.lock().unwrap_or_else(|e| e.into_inner());
    host.runtime.load(&fixture(relative), options, &|_| {})
}

fn load(host: &Host, options: &LoadOptions) -> Handler {
    try_load(host, "grants", options).unwrap_or_else(|e| panic!("loading grants: {e}"))
}

fn kv_options(tenant: &str, stores: &[&str]) -> LoadOptions {
    LoadOptions {
        tenant: Some(tenant.to_owned()),
        key_value_stores: stores.iter().map(|s| (*s).to_owned()).collect(),
        ..LoadOptions::default()
    }
}

fn allowed(entries: &[String]) -> Vec<AllowedHost> {
    entries
        .iter()
        .map(|e| AllowedHost::parse(e).unwrap())
        .collect()
}

async fn call(h: &Handler, method: &str, target: &str, body: &[u8]) -> Exchange {
    h.dispatch(
        Request::new(method, target)
            .unwrap()
            .with_body(body.to_vec()),
    )
    .await
}

/// The probe's `{"ok": ..}` answer.
async fn probe(h: &Handler, method: &str, target: &str, body: &[u8]) -> Value {
    json(ok(&call(h, method, target, body).await))
}

fn value(answer: &Value) -> &Value {
    assert_eq!(answer["ok"], true, "expected success: {answer}");
    &answer["value"]
}

fn refusal(answer: &Value) -> String {
    assert_eq!(answer["ok"], false, "expected a refusal: {answer}");
    answer["message"].as_str().unwrap().to_owned()
}

async fn still_serves(h: &Handler) {
    let e = call(h, "GET", "/at-import", b"").await;
    assert_eq!(ok(&e).status, 200, "the next request must be served");
}

// ---------------------------------------------------------------- key-value

/// 1,000 increments, 64 at a time, spread over `handlers` (several hosts
/// sharing a store): exactly 1..=1000 come back, each once.
async fn count_to_1000(handlers: &[Handler], key: &str) {
    let gate = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let h = handlers[i % handlers.len()].clone();
        let gate = gate.clone();
        let target = format!("/incr/default/{key}");
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire().await.unwrap();
            let answer = probe(&h, "POST", &target, b"").await;
            value(&answer).as_i64().unwrap()
        }));
    }
    let mut seen = Vec::new();
    for task in tasks {
        seen.push(task.await.unwrap());
    }
    seen.sort_unstable();
    assert_eq!(
        seen,
        (1..=1000).collect::<Vec<i64>>(),
        "increments were lost or repeated"
    );
    let stored = probe(&handlers[0], "GET", &format!("/kv/default/{key}"), b"").await;
    assert_eq!(value(&stored), "1000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_counter_is_exact_under_64_concurrent_requests() {
    let host = host(&[], &[]);
    let h = load(&host, &kv_options("counter", &["default"]));
    count_to_1000(std::slice::from_ref(&h), "hits").await;
    still_serves(&h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_counter_is_exact_across_two_hosts() {
    let server = redis::start();
    let store = [("default", StoreConfig::Redis { url: server.url() })];
    // Two runtimes: two hosts, each with its own connection to the server.
    let (one, two) = (host(&store, &[]), host(&store, &[]));
    let a = load(&one, &kv_options("counter", &["default"]));
    let b = load(&two, &kv_options("counter", &["default"]));
    count_to_1000(&[a, b.clone()], "hits").await;
    still_serves(&b).await;
}

/// Tenants naming the same store see different data, whatever key names
/// they write.
async fn tenants_are_apart(host: &Host) {
    let a = load(host, &kv_options("tenant-a", &["default"]));
    let b = load(host, &kv_options("tenant-b", &["default"]));
    value(&probe(&a, "PUT", "/kv/default/shared", b"from a").await);
    assert_eq!(
        value(&probe(&b, "GET", "/kv/default/shared", b"").await),
        &Value::Null
    );
    value(&probe(&b, "PUT", "/kv/default/shared", b"from b").await);
    assert_eq!(
        value(&probe(&a, "GET", "/kv/default/shared", b"").await),
        "from a"
    );
    // Keys that look like another tenant's namespace are just keys.
    for key in [
        "pycage:kv:{tenant-b:default}",
        "}:keys",
        "tenant-b:default:shared",
        "...",
    ] {
        value(&probe(&a, "PUT", &format!("/kv/default/{key}"), b"planted").await);
    }
    let keys_b = value(&probe(&b, "GET", "/keys/default", b"").await).clone();
    assert_eq!(
        keys_b,
        serde_json::json!(["shared"]),
        "b sees only its own keys"
    );
    assert_eq!(
        value(&probe(&b, "GET", "/kv/default/shared", b"").await),
        "from b"
    );
    still_serves(&a).await;
}

#[tokio::test]
async fn tenants_with_the_same_store_name_see_different_data_on_sqlite() {
    tenants_are_apart(&host(&[], &[])).await;
}

#[tokio::test]
async fn tenants_with_the_same_store_name_see_different_data_on_redis() {
    let server = redis::start();
    tenants_are_apart(&host(
        &[("default", StoreConfig::Redis { url: server.url() })],
        &[],
    ))
    .await;
}

async fn every_operation(h: &Handler) {
    assert_eq!(
        value(&probe(h, "GET", "/exists/default/a", b"").await),
        false
    );
    value(&probe(h, "PUT", "/kv/default/a", b"1").await);
    assert_eq!(
        value(&probe(h, "GET", "/exists/default/a", b"").await),
        true
    );
    assert_eq!(value(&probe(h, "GET", "/kv/default/a", b"").await), "1");
    value(&probe(h, "DELETE", "/kv/default/a", b"").await);
    value(&probe(h, "DELETE", "/kv/default/a", b"").await); // absent: no error
    assert_eq!(
        value(&probe(h, "GET", "/kv/default/a", b"").await),
        &Value::Null
    );

    // Compare-and-swap of key c: whether it was set.
    let cas = async |expected: Value, new: &str| {
        let body = serde_json::json!({"expected": expected, "new": new}).to_string();
        value(&probe(h, "POST", "/cas/default/c", body.as_bytes()).await).clone()
    };
    assert_eq!(cas(Value::Null, "x").await, true);
    assert_eq!(cas(Value::Null, "y").await, false);
    assert_eq!(cas("wrong".into(), "y").await, false);
    assert_eq!(cas("x".into(), "z").await, true);
    assert_eq!(value(&probe(h, "GET", "/kv/default/c", b"").await), "z");

    let not_a_number = refusal(&probe(h, "POST", "/incr/default/c", b"").await);
    assert!(not_a_number.contains("not an integer"), "{not_a_number}");
    assert_eq!(
        value(&probe(h, "POST", "/incr/default/n?by=-5", b"").await),
        -5
    );

    // Paging: 1,000 keys a page, a cursor to the next.
    value(&probe(h, "POST", "/fill/default?n=1005", b"").await);
    let first = value(&probe(h, "GET", "/page/default", b"").await).clone();
    assert_eq!(first[0].as_array().unwrap().len(), 1000, "first page");
    let cursor = first[1]
        .as_str()
        .expect("a cursor after a full page")
        .to_owned();
    let rest =
        value(&probe(h, "GET", &format!("/page/default?cursor={cursor}"), b"").await).clone();
    let total = 1000 + rest[0].as_array().unwrap().len();
    assert_eq!(total, 1005 + 2, "every key once (k00000.. plus c and n)");
    assert_eq!(rest[1], Value::Null, "no cursor after the last page");
}

fn big_ops() -> Limits {
    Limits {
        kv: KvLimits {
            max_ops: 5000,
            ..KvLimits::default()
        },
        ..Limits::default()
    }
}

#[tokio::test]
async fn every_operation_works_on_sqlite() {
    let host = host(&[], &[]);
    let h = load(
        &host,
        &LoadOptions {
            limits: big_ops(),
            ..kv_options("ops", &["default"])
        },
    );
    every_operation(&h).await;
}

#[tokio::test]
async fn every_operation_works_on_redis() {
    let server = redis::start();
    let host = host(
        &[("default", StoreConfig::Redis { url: server.url() })],
        &[],
    );
    let h = load(
        &host,
        &LoadOptions {
            limits: big_ops(),
            ..kv_options("ops", &["default"])
        },
    );
    every_operation(&h).await;
}

async fn quotas(h: &Handler) {
    let mut e = call(h, "PUT", "/kv/default/a-key-far-too-long", b"v").await;
    let message = refusal(&json(ok(&e)));
    assert!(
        message.contains("key is 18 bytes, over the limit of 8"),
        "{message}"
    );
    assert!(e.usage.kv.quota_hit);

    e = call(h, "PUT", "/kv/default/big", &[b'v'; 17]).await;
    assert!(refusal(&json(ok(&e))).contains("value is 17 bytes, over the limit of 16"));

    for key in ["k1", "k2", "k3"] {
        value(&probe(h, "PUT", &format!("/kv/default/{key}"), b"v").await);
    }
    let full = refusal(&probe(h, "PUT", "/kv/default/k4", b"v").await);
    assert!(full.contains("3 keys"), "{full}");
    // Overwriting an existing key is still allowed, and so is freeing one.
    value(&probe(h, "PUT", "/kv/default/k1", b"w").await);
    value(&probe(h, "DELETE", "/kv/default/k3", b"").await);
    value(&probe(h, "PUT", "/kv/default/k4", b"v").await);

    // Bytes: 3 keys of 3 bytes with their values; a 16-byte value would
    // make 24.
    let bytes = refusal(&probe(h, "PUT", "/kv/default/k2", &[b'v'; 16]).await);
    assert!(bytes.contains("over its limit of 20"), "{bytes}");
    // Increments count against the bytes too, and a refused one leaves
    // nothing behind: 6 bytes held, + 8 of key + 16 of value is 30.
    value(&probe(h, "DELETE", "/kv/default/k4", b"").await);
    let grow = call(h, "POST", "/incr/default/n2345678?by=1000000000000000", b"").await;
    let grown = refusal(&json(ok(&grow)));
    assert!(grown.contains("over its limit of 20"), "{grown}");
    assert!(grow.usage.kv.quota_hit);
    assert_eq!(
        value(&probe(h, "GET", "/kv/default/n2345678", b"").await),
        &Value::Null
    );
    assert_eq!(
        value(&probe(h, "POST", "/incr/default/n2345678", b"").await),
        1
    );

    // Opening the store is an operation too: 1 + 5 gets.
    e = call(h, "GET", "/many-ops/default?n=5", b"").await;
    let ops = refusal(&json(ok(&e)));
    assert!(ops.contains("more than 5 key-value operations"), "{ops}");
    assert!(e.usage.kv.quota_hit);
    assert_eq!(e.usage.failure(), Some("kv_quota"));
    // Within the quota again on the next request.
    let next = call(h, "GET", "/many-ops/default?n=4", b"").await;
    assert_eq!(value(&json(ok(&next))), 4);
    assert!(!next.usage.kv.quota_hit);
}

fn small_quotas() -> Limits {
    Limits {
        kv: KvLimits {
            max_key_bytes: 8,
            max_value_bytes: 16,
            max_keys: 3,
            max_total_bytes: 20,
            max_ops: 5,
        },
        ..Limits::default()
    }
}

#[tokio::test]
async fn quotas_raise_in_the_guest_and_are_counted_on_sqlite() {
    let host = host(&[], &[]);
    quotas(&load(
        &host,
        &LoadOptions {
            limits: small_quotas(),
            ..kv_options("quota", &["default"])
        },
    ))
    .await;
}

#[tokio::test]
async fn quotas_raise_in_the_guest_and_are_counted_on_redis() {
    let server = redis::start();
    let host = host(
        &[("default", StoreConfig::Redis { url: server.url() })],
        &[],
    );
    quotas(&load(
        &host,
        &LoadOptions {
            limits: small_quotas(),
            ..kv_options("quota", &["default"])
        },
    ))
    .await;
}

#[tokio::test]
async fn stores_not_granted_are_refused() {
    let host = host(&[("other", StoreConfig::Sqlite { path: None })], &[]);
    let granted = load(&host, &kv_options("deny", &["default"]));
    let e = call(&granted, "GET", "/kv/other/x", b"").await;
    let message = refusal(&json(ok(&e)));
    assert!(
        message.contains("store 'other' is not granted"),
        "{message}"
    );
    assert!(e.usage.kv.denied);
    assert_eq!(e.usage.failure(), Some("kv_denied"));
    value(&probe(&granted, "GET", "/kv/default/x", b"").await);

    let nothing = load(&host, &LoadOptions::default());
    assert!(refusal(&probe(&nothing, "GET", "/kv/default/x", b"").await).contains("not granted"));
    still_serves(&nothing).await;
}

#[test]
fn a_store_that_cannot_be_opened_fails_the_load_naming_it() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("redis://127.0.0.1:{}/0", closed.port());
    let host = host(&[("gone", StoreConfig::Redis { url: url.clone() })], &[]);
    let error = try_load(&host, "grants", &kv_options("t", &["gone"]))
        .err()
        .expect("must fail");
    assert!(matches!(error, LoadError::Grant { .. }), "{error:?}");
    assert!(error.to_string().contains("`gone`"), "{error}");

    let error = try_load(&host, "grants", &kv_options("t", &["undefined"]))
        .err()
        .unwrap();
    assert!(error.to_string().contains("`undefined`"), "{error}");
    let error = try_load(&host, "grants", &kv_options("../escape", &["default"]))
        .err()
        .unwrap();
    assert!(error.to_string().contains("not a tenant name"), "{error}");
}

// ----------------------------------------------------------------- outbound

fn upstream() -> &'static upstream::Upstream {
    static UPSTREAM: OnceLock<upstream::Upstream> = OnceLock::new();
    UPSTREAM.get_or_init(upstream::start)
}

fn fetch_target(url: &str) -> String {
    let encoded: String = url::form_urlencoded_byte(url);
    format!("/fetch?url={encoded}")
}

/// A tiny percent-encoder for query values.
mod url {
    pub fn form_urlencoded_byte(text: &str) -> String {
        percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
    }
}

fn outbound_host() -> (Host, Handler) {
    let up = upstream();
    let host = host(&[], &[("upstream.test", "127.0.0.1")]);
    let options = LoadOptions {
        allowed_outbound_hosts: allowed(&[
            up.base(),
            format!("http://upstream.test:{}", up.port()),
        ]),
        ..LoadOptions::default()
    };
    let h = load(&host, &options);
    (host, h)
}

#[tokio::test]
async fn outbound_reaches_only_what_is_allowed() {
    let up = upstream();
    let (_host, h) = outbound_host();
    let base = up.base();
    let e = call(&h, "GET", &fetch_target(&format!("{base}/ok")), b"").await;
    let answer = json(ok(&e));
    assert_eq!(value(&answer)["status"], 200);
    assert_eq!(value(&answer)["body"], "hello from upstream");
    assert_eq!(e.usage.outbound.ok, 1);
    assert_eq!(e.usage.outbound.bytes, 19);

    let port = up.port();
    let refused = [
        (
            format!("http://localhost:{port}/ok"),
            "not in allowed_outbound_hosts",
        ),
        (
            format!("http://127.0.0.1:{}/ok", port + 1),
            "not in allowed_outbound_hosts",
        ),
        (
            format!("https://127.0.0.1:{port}/ok"),
            "not in allowed_outbound_hosts",
        ),
        // Allowed by name, but the name resolves to loopback.
        (
            format!("http://upstream.test:{port}/ok"),
            "internal address",
        ),
        // A redirect to a host that is not allowed is a new, refused request.
        (
            format!("{base}/redirect?to=http%3A%2F%2Flocalhost%3A{port}%2Fok"),
            "not in allowed_outbound_hosts",
        ),
        ("ftp://127.0.0.1/x".to_owned(), "only http and https"),
    ];
    for (url, why) in refused {
        let e = call(&h, "GET", &fetch_target(&url), b"").await;
        let message = refusal(&json(ok(&e)));
        assert!(message.contains(why), "{url}: {message}");
        if !url.starts_with("ftp") {
            assert!(e.usage.outbound.denied >= 1, "{url}: {:?}", e.usage);
            assert_eq!(e.usage.failure(), Some("outbound_denied"));
        }
    }
    // A redirect within the allow-list is followed.
    let followed = probe(
        &h,
        "GET",
        &fetch_target(&format!("{base}/redirect?to=%2Fok")),
        b"",
    )
    .await;
    assert_eq!(value(&followed)["body"], "hello from upstream");
    assert!(value(&followed)["url"].as_str().unwrap().ends_with("/ok"));
    still_serves(&h).await;
}

#[tokio::test]
async fn outbound_host_header_and_body_are_the_checked_ones() {
    let up = upstream();
    let (_host, h) = outbound_host();
    // The guest cannot name another Host than the authority checked.
    let target = format!(
        "{}&host=evil.example",
        fetch_target(&format!("{}/echo", up.base()))
    );
    let message = refusal(&probe(&h, "GET", &target, b"").await);
    assert!(message.contains("forbidden header"), "{message}");
    let echo = value(
        &probe(
            &h,
            "GET",
            &fetch_target(&format!("{}/echo", up.base())),
            b"",
        )
        .await,
    )
    .clone();
    let seen: Value = serde_json::from_str(echo["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        seen["host"],
        format!("127.0.0.1:{}", up.port()),
        "Host is the checked authority"
    );

    let body = vec![b'b'; 300_000];
    let posted = format!(
        "/fetch-post?url={}",
        url::form_urlencoded_byte(&format!("{}/echo", up.base()))
    );
    let answer = probe(&h, "POST", &posted, &body).await;
    let seen: Value = serde_json::from_str(value(&answer)["body"].as_str().unwrap()).unwrap();
    assert_eq!(seen["method"], "POST");
    assert_eq!(
        seen["body"].as_str().unwrap().len(),
        body.len(),
        "the whole body arrives"
    );
}

/// Hostile targets under the widest grant short of naming an address
/// (`http://*:PORT`): every spelling of loopback, unspecified and
/// metadata addresses is refused before a byte is sent, a userinfo that
/// names the allowed host does not change the host, and the next request
/// is served.
#[tokio::test]
async fn every_spelling_of_an_internal_address_is_refused() {
    let up = upstream();
    let port = up.port();
    let host = host(&[], &[]);
    let h = load(
        &host,
        &LoadOptions {
            allowed_outbound_hosts: allowed(&[format!("http://*:{port}"), "http://*".to_owned()]),
            ..LoadOptions::default()
        },
    );
    let targets = [
        format!("http://127.0.0.1:{port}/ok"),
        format!("http://127.1:{port}/ok"),
        format!("http://2130706433:{port}/ok"),
        format!("http://0x7f000001:{port}/ok"),
        format!("http://0177.0.0.1:{port}/ok"),
        format!("http://0.0.0.0:{port}/ok"),
        format!("http://0:{port}/ok"),
        format!("http://[::1]:{port}/ok"),
        format!("http://[::ffff:127.0.0.1]:{port}/ok"),
        format!("http://[::ffff:7f00:1]:{port}/ok"),
        format!("http://[64:ff9b::7f00:1]:{port}/ok"),
        format!("http://localhost:{port}/ok"),
        format!("http://LocalHost.:{port}/ok"),
        format!("http://evil.example@127.0.0.1:{port}/ok"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://[fd00:ec2::254]/latest/meta-data/".to_owned(),
        "http://metadata.google.internal/computeMetadata/v1/".to_owned(),
    ];
    for url in &targets {
        let e = call(&h, "GET", &fetch_target(url), b"").await;
        let answer = json(ok(&e));
        assert_eq!(answer["ok"], false, "{url} was reached: {answer}");
        let message = answer["message"].as_str().unwrap();
        assert!(!message.contains("hello from upstream"), "{url}: {message}");
        assert_eq!(e.usage.outbound.ok, 0, "{url}: {:?}", e.usage);
    }
    still_serves(&h).await;
}

/// Store names and keys a hostile guest might try: none opens a store it
/// was not granted or touches the host's files, and the next request is
/// served.
#[tokio::test]
async fn hostile_store_names_and_keys_stay_in_the_grant() {
    let host = host(&[], &[]);
    let h = load(&host, &kv_options("hostile", &["default"]));
    let raw = |store: &str, key: &str| {
        let enc = |t: &str| url::form_urlencoded_byte(t);
        format!("/raw-kv?store={}&key={}", enc(store), enc(key))
    };
    for store in [
        "../../etc",
        "default\0",
        "DEFAULT",
        "default/..",
        "/default",
        "x".repeat(300).as_str(),
    ] {
        let e = call(&h, "GET", &raw(store, "x"), b"").await;
        let answer = json(ok(&e));
        assert_eq!(answer["ok"], false, "store {store:?}: {answer}");
        assert!(
            answer["message"].as_str().unwrap().contains("not granted"),
            "{store:?}: {answer}"
        );
    }
    // Keys are data: path-like, NUL-bearing and bidi keys round-trip in the
    // granted store and name nothing else.
    for key in [
        "../../etc/passwd",
        "\0",
        "a\0b",
        "/",
        "\u{202e}",
        "pycage:kv:{other:default}",
    ] {
        value(&probe(&h, "PUT", &raw("default", key), b"planted").await);
        assert_eq!(
            value(&probe(&h, "GET", &raw("default", key), b"").await),
            "planted",
            "{key:?}"
        );
    }
    let other = load(&host, &kv_options("other", &["default"]));
    assert_eq!(
        value(&probe(&other, "GET", &raw("default", "../../etc/passwd"), b"").await),
        &Value::Null
    );
    let e = call(&h, "PUT", &raw("default", &"k".repeat(2000)), b"v").await;
    assert!(
        refusal(&json(ok(&e))).contains("over the limit"),
        "a 2,000-byte key"
    );
    still_serves(&h).await;
}

/// A guest that goes around pycage's Python wrappers and hoards what the
/// host keeps for it (header maps, unsent request bodies, compare-and-swap
/// handles with their values) is stopped at a bound, and the next request
/// is served.
#[tokio::test]
async fn host_side_resources_a_guest_hoards_are_bounded() {
    let host = host(&[], &[]);
    let h = load(&host, &kv_options("hoard", &["default"]));
    // wasmtime-wasi-http traps on a header map over its size limit.
    let big = call(&h, "GET", "/hoard/fields?n=1&size=20000", b"").await;
    assert!(
        matches!(&big.result, Err(DispatchError::Trap(m)) if m.contains("exceeds limit")),
        "a 20,000-byte header map: {:?}",
        big.result
    );
    still_serves(&h).await;
    let few = json(ok(
        &call(&h, "GET", "/hoard/fields?n=100&size=16000", b"").await
    ));
    assert_eq!(few["value"], 100, "{few}");
    let e = call(&h, "GET", "/hoard/fields?n=5000&size=16000", b"").await;
    assert!(
        e.result.is_err(),
        "5,000 header maps were kept: {:?}",
        e.result
    );
    assert_eq!(e.response().status, 500);
    still_serves(&h).await;

    let bodies = json(ok(&call(&h, "GET", "/hoard/bodies?n=10", b"").await));
    let room = bodies["room"].as_u64().unwrap();
    assert!(
        room > 0 && room <= 16 * 1024,
        "the host buffers {room} bytes of an unsent body"
    );
    let e = call(&h, "GET", "/hoard/bodies?n=5000", b"").await;
    assert!(
        e.result.is_err(),
        "5,000 unsent bodies were kept: {:?}",
        e.result
    );
    still_serves(&h).await;

    let cas = json(ok(&call(&h, "GET", "/hoard/cas/default?n=100", b"").await));
    assert_eq!(cas["ok"], false, "{cas}");
    assert!(
        cas["message"]
            .as_str()
            .unwrap()
            .contains("compare-and-swap handles"),
        "{cas}"
    );
    assert_eq!(cas["held"], 16);
    still_serves(&h).await;
}

/// Credentials in the authority would reach the upstream's Host header as
/// if they were part of the checked host: refused, whatever the guest's
/// wrapper does.
#[tokio::test]
async fn userinfo_in_the_authority_is_refused() {
    let up = upstream();
    let (_host, h) = outbound_host();
    for authority in [
        format!("user:pw@127.0.0.1:{}", up.port()),
        format!("x@127.0.0.1:{}", up.port()),
    ] {
        let target = format!(
            "/raw-authority?authority={}",
            url::form_urlencoded_byte(&authority)
        );
        let answer = json(ok(&call(&h, "GET", &target, b"").await));
        assert_eq!(answer["ok"], false, "{authority}: {answer}");
    }
    let target = format!(
        "/raw-authority?authority={}",
        url::form_urlencoded_byte(&format!("127.0.0.1:{}", up.port()))
    );
    assert_eq!(
        json(ok(&call(&h, "GET", &target, b"").await))["ok"],
        true,
        "the same without userinfo is sent"
    );
    still_serves(&h).await;
}

#[tokio::test]
async fn no_grant_means_no_outbound_requests() {
    let host = host(&[], &[]);
    let h = load(&host, &LoadOptions::default());
    let e = call(
        &h,
        "GET",
        &fetch_target(&format!("{}/ok", upstream().base())),
        b"",
    )
    .await;
    assert!(refusal(&json(ok(&e))).contains("not in allowed_outbound_hosts"));
    assert_eq!(e.usage.outbound.denied, 1);
    still_serves(&h).await;
}

#[tokio::test]
async fn outbound_limits_bound_requests_bytes_and_time() {
    let up = upstream();
    let host = host(&[], &[]);
    let limits = Limits {
        timeout: Duration::from_secs(2),
        outbound: OutboundLimits {
            max_requests: 3,
            max_response_bytes: 1000,
        },
        ..Limits::default()
    };
    let h = load(
        &host,
        &LoadOptions {
            limits,
            allowed_outbound_hosts: allowed(&[up.base()]),
            ..LoadOptions::default()
        },
    );
    let base = up.base();

    // A redirect loop ends at the request budget.
    let e = call(&h, "GET", &fetch_target(&format!("{base}/loop")), b"").await;
    let message = refusal(&json(ok(&e)));
    assert!(message.contains("3 outbound requests"), "{message}");
    assert!(e.usage.outbound.limit_hit);
    assert_eq!(e.usage.failure(), Some("outbound_limit"));

    // Response bytes: all responses of the request together.
    let e = call(&h, "GET", &fetch_target(&format!("{base}/big?n=5000")), b"").await;
    let message = refusal(&json(ok(&e)));
    assert!(
        message.contains("over this request's limit of 1000 bytes"),
        "{message}"
    );
    assert!(e.usage.outbound.limit_hit);
    let small = probe(&h, "GET", &fetch_target(&format!("{base}/big?n=1000")), b"").await;
    assert_eq!(value(&small)["length"], 1000);

    // The guest's own timeout.
    let started = Instant::now();
    let quick = format!("{}&timeout=0.3", fetch_target(&format!("{base}/slow")));
    let message = refusal(&probe(&h, "GET", &quick, b"").await);
    assert!(message.contains("timed out"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(2));

    // A blocked call still ends at the request's deadline: 504.
    let started = Instant::now();
    let e = call(&h, "GET", &fetch_target(&format!("{base}/slow")), b"").await;
    assert!(
        matches!(e.result, Err(DispatchError::Timeout(_))),
        "{:?}",
        e.result
    );
    assert_eq!(e.response().status, 504);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    still_serves(&h).await;
}

// ---------------------------------------------------------------- variables

fn secret_file(dir: &Path, value: &str) -> std::path::PathBuf {
    let path = dir.join("token");
    std::fs::write(&path, format!("{value}\n")).unwrap();
    path
}

#[tokio::test]
async fn variables_are_read_and_secrets_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "s3cr3t-T0KEN-4242";
    let host = host(&[], &[]);
    let h = load(
        &host,
        &LoadOptions {
            variables: vec![
                VariableSpec {
                    name: "region".into(),
                    source: VariableSource::Value("eu".into()),
                    secret: false,
                },
                VariableSpec {
                    name: "token".into(),
                    source: VariableSource::File(secret_file(dir.path(), secret)),
                    secret: true,
                },
            ],
            ..LoadOptions::default()
        },
    );
    assert_eq!(
        json(ok(&call(&h, "GET", "/var/region", b"").await))["value"],
        "eu"
    );
    // The guest that asks gets the value (and may answer with it).
    assert_eq!(
        json(ok(&call(&h, "GET", "/var/token", b"").await))["value"],
        secret
    );
    assert_eq!(
        json(ok(&call(&h, "GET", "/var/absent", b"").await))["value"],
        Value::Null
    );
    assert_eq!(
        json(ok(&call(&h, "GET", "/vars", b"").await))["names"],
        serde_json::json!(["region", "token"])
    );

    // Printed and raised: shown redacted everywhere pycage shows it.
    let e = call(&h, "GET", "/leak/token", b"").await;
    let stdout = String::from_utf8_lossy(&e.stdout.bytes).into_owned();
    let stderr = String::from_utf8_lossy(&e.stderr.bytes).into_owned();
    let Err(DispatchError::HandlerException { message, traceback }) = &e.result else {
        panic!("expected the handler's exception: {:?}", e.result);
    };
    let response = e.response();
    let shown = [
        stdout,
        stderr,
        message.clone(),
        traceback.clone(),
        format!("{:?}", e.result),
        String::from_utf8_lossy(&response.body).into_owned(),
    ];
    for text in &shown {
        assert!(!text.contains(secret), "secret shown: {text}");
    }
    assert!(shown[0].contains("stdout has [secret]"), "{}", shown[0]);
    assert!(message.contains("[secret]"), "{message}");
    still_serves(&h).await;
}

#[test]
fn a_missing_secret_fails_the_load_naming_it() {
    let host = host(&[], &[]);
    let options = LoadOptions {
        variables: vec![VariableSpec {
            name: "api_key".into(),
            source: VariableSource::Env("PYCAGE_TEST_SURELY_UNSET".into()),
            secret: true,
        }],
        ..LoadOptions::default()
    };
    let error = try_load(&host, "grants", &options)
        .err()
        .expect("must fail");
    let text = error.to_string();
    assert!(
        text.contains("api_key") && text.contains("PYCAGE_TEST_SURELY_UNSET"),
        "{text}"
    );
}

// --------------------------------------------------------------- build time

#[tokio::test]
async fn capabilities_are_refused_while_the_handler_is_imported() {
    let host = host(&[], &[]);
    let h = load(&host, &kv_options("import", &["default"]));
    let at_import = json(ok(&call(&h, "GET", "/at-import", b"").await));
    for what in ["kv", "fetch", "config"] {
        let message = at_import[what].as_str().unwrap();
        assert!(
            message.contains("not available while the handler is being imported"),
            "{what}: {message}"
        );
    }
    // The same grants work inside a request.
    value(&probe(&h, "GET", "/kv/default/x", b"").await);

    let error = try_load(
        &host,
        "grants_at_import",
        &kv_options("import", &["default"]),
    )
    .err()
    .expect("reading a store at import must fail the build");
    let text = error.to_string();
    assert!(matches!(error, LoadError::Import { .. }), "{error:?}");
    assert!(
        text.contains("CapabilityError") && text.contains("build time"),
        "{text}"
    );
}
