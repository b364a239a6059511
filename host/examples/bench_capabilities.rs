//! What a capability adds to a request, measured through the embedding API
//! against its baseline in the same run: the same handler (fixtures/grants)
//! answering a route that uses no capability, then one `kv.get` on SQLite,
//! one on Redis (a private `redis-server` on 127.0.0.1, if installed), and
//! one `fetch` to an upstream on 127.0.0.1. Every call is a fresh instance.
//!
//!     bench_capabilities [ITERATIONS]        (release build; default 2000)
//!
//! `scripts/bench-capabilities.sh` builds and runs it.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pycage::config::StoreConfig;
use pycage::grants::AllowedHost;
use pycage::{Cache, Handler, LoadOptions, Request, Runtime, RuntimeConfig};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A tiny HTTP/1.1 upstream: every request gets the same 5-byte answer.
fn upstream() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || serve(stream));
        }
    });
    port
}

fn serve(mut stream: TcpStream) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // One request head at a time (the guest sends no body here).
        while !buffer.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
        let end = buffer.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        buffer.drain(..end);
        let reply =
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-type: text/plain\r\n\r\nhello";
        if stream.write_all(reply).is_err() {
            return;
        }
    }
}

struct Redis(Child, u16);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis() -> Option<Redis> {
    let port = TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let redis = Redis(child, port);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(redis);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn median_us(samples: &mut [Duration]) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1e6
}

async fn time(handler: &Handler, target: &str, n: usize) -> f64 {
    // Warm-up: first instances, first connections.
    for _ in 0..20 {
        handler.dispatch(Request::new("GET", target).unwrap()).await;
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let exchange = handler.dispatch(Request::new("GET", target).unwrap()).await;
        samples.push(started.elapsed());
        let response = exchange.response();
        assert_eq!(response.status, 200, "{target}: {:?}", exchange.result);
        let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
        assert_ne!(body["ok"], false, "{target}: {body}");
    }
    median_us(&mut samples)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("ITERATIONS is a number"))
        .unwrap_or(2000);
    let data = tempfile::tempdir().unwrap();
    let redis = redis();
    let mut stores = BTreeMap::new();
    stores.insert("default".to_owned(), StoreConfig::Sqlite { path: None });
    if let Some(r) = &redis {
        let url = format!("redis://127.0.0.1:{}/0", r.1);
        stores.insert("shared".to_owned(), StoreConfig::Redis { url });
    }
    let mut config = RuntimeConfig::new(Cache::new(Cache::default_root().unwrap()));
    config.data_dir = Some(data.path().to_path_buf());
    config.key_value_stores = stores.clone();
    let runtime = Runtime::with_config(config).unwrap();
    let port = upstream();
    let options = LoadOptions {
        tenant: Some("bench".into()),
        key_value_stores: stores.keys().cloned().collect(),
        allowed_outbound_hosts: vec![
            AllowedHost::parse(&format!("http://127.0.0.1:{port}")).unwrap(),
        ],
        ..LoadOptions::default()
    };
    let handler = runtime
        .load(&repo().join("fixtures/grants"), &options, &|_| {})
        .expect("loading fixtures/grants");
    handler
        .dispatch(
            Request::new("PUT", "/kv/default/x")
                .unwrap()
                .with_body(b"v".to_vec()),
        )
        .await;
    if redis.is_some() {
        handler
            .dispatch(
                Request::new("PUT", "/kv/shared/x")
                    .unwrap()
                    .with_body(b"v".to_vec()),
            )
            .await;
    }

    println!("fresh instance per call, {n} calls each, p50 in µs (fixtures/grants)");
    let base = time(&handler, "/at-import", n).await;
    println!("{:<44} {base:>8.1}", "no capability (baseline)");
    let mut rows = vec![("kv.get, SQLite", "/kv/default/x".to_owned())];
    if redis.is_some() {
        rows.push(("kv.get, Redis on 127.0.0.1", "/kv/shared/x".to_owned()));
    } else {
        println!("(redis-server not installed: no Redis row)");
    }
    let url = format!("http://127.0.0.1:{port}/");
    let encoded = percent_encoding::utf8_percent_encode(&url, percent_encoding::NON_ALPHANUMERIC);
    rows.push((
        "fetch, upstream on 127.0.0.1",
        format!("/fetch?url={encoded}"),
    ));
    for (label, target) in rows {
        let p50 = time(&handler, &target, n).await;
        println!(
            "{label:<44} {p50:>8.1}   +{:.1} over the baseline",
            p50 - base
        );
    }
}
