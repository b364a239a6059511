//! `pycage serve` as a replicated, stateless tier (issue 20): two server
//! processes started with the same `pycage.toml`, sharing one real
//! `redis-server` on 127.0.0.1 and one build cache, are interchangeable
//! behind a load balancer. Everything goes over real HTTP on loopback: the
//! tenants' traffic to each replica's listener, the load balancer's health
//! checks to each replica's admin listener.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::client::{Reply, send};
use common::{cache_dir, fixture, redis};
use serde_json::Value;

/// Requests spread over the replicas, and clients sending them at once.
const INCREMENTS: usize = 1000;
const CLIENTS: usize = 8;

/// One `pycage serve --config` process with its listener and admin
/// listener; SIGKILLed when dropped.
struct Replica {
    name: &'static str,
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
    /// Its own data directory: nothing local is shared between replicas.
    _data: tempfile::TempDir,
}

impl Replica {
    /// Start `pycage serve --config CONFIG` on free loopback ports, with the
    /// test run's build cache; returns once it listens (its tenants may
    /// still be loading: see [`Replica::wait_ready`]).
    fn start(name: &'static str, config: &Path) -> Replica {
        let data = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_pycage"))
            .env("PYCAGE_CACHE_DIR", cache_dir())
            .env("PYCAGE_DATA_DIR", data.path())
            .arg("serve")
            .arg("--config")
            .arg(config)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start pycage serve");
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        // Keep draining stderr so the server never blocks on a full pipe.
        let kept = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr = rest.split_whitespace().next().map(str::to_owned);
                    let admin = rest
                        .split("admin on http://")
                        .nth(1)
                        .and_then(|a| a.split('/').next())
                        .map(str::to_owned);
                    let _ = tx.send((addr, admin));
                }
                kept.lock().unwrap().push(line);
            }
        });
        let (addr, admin) = rx
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| {
                panic!(
                    "replica {name} did not report its addresses:\n{}",
                    logs.lock().unwrap().join("\n")
                )
            });
        let parse = |a: Option<String>| -> SocketAddr {
            a.and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("replica {name}: no address in its listening line"))
        };
        Replica {
            name,
            child,
            addr: parse(addr),
            admin: parse(admin),
            logs,
            _data: data,
        }
    }

    fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Poll `/readyz` as a load balancer would until it says 200 (every
    /// tenant loaded). While tenants load it is 503 naming them; a cold
    /// cache means a build first, hence the long deadline.
    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            match send(self.admin, "GET", "127.0.0.1", "/readyz", Vec::new()).await {
                Ok(reply) if reply.status == 200 => return,
                Ok(reply) => {
                    assert_eq!(reply.status, 503, "replica {}: {}", self.name, reply.text());
                    let body = reply.json();
                    assert_eq!(body["status"], "not ready", "{body}");
                    assert!(
                        body["tenants"]
                            .as_array()
                            .is_some_and(|t| t.iter().all(|t| t["status"] == "loading")),
                        "replica {}: a tenant failed to load: {body}\n{}",
                        self.name,
                        self.logs()
                    );
                }
                Err(e) => panic!("replica {}: /readyz: {e}\n{}", self.name, self.logs()),
            }
            assert!(
                Instant::now() < deadline,
                "replica {} never became ready:\n{}",
                self.name,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `GET /healthz` and `GET /readyz` on the admin listener both 200.
    async fn assert_healthy_and_ready(&self) {
        let health = self.admin_get("/healthz").await;
        assert_eq!(
            health.status,
            200,
            "replica {}: {}",
            self.name,
            health.text()
        );
        assert_eq!(health.json()["status"], "ok");
        let ready = self.admin_get("/readyz").await;
        assert_eq!(ready.status, 200, "replica {}: {}", self.name, ready.text());
        assert_eq!(ready.json()["status"], "ready");
    }

    async fn admin_get(&self, path: &str) -> Reply {
        send(self.admin, "GET", "127.0.0.1", path, Vec::new())
            .await
            .unwrap_or_else(|e| panic!("replica {}: GET {path} (admin): {e}", self.name))
    }

    /// A request to a tenant through this replica: the grants probe's
    /// `{"ok": true, "value": ..}` answer's value.
    async fn probe(&self, method: &str, path: &str, body: &[u8]) -> Value {
        let reply = send(self.addr, method, "127.0.0.1", path, body.to_vec())
            .await
            .unwrap_or_else(|e| panic!("replica {}: {method} {path}: {e}", self.name));
        assert_eq!(
            reply.status,
            200,
            "replica {}: {method} {path}: {}",
            self.name,
            reply.text()
        );
        let answer = reply.json();
        assert_eq!(
            answer["ok"], true,
            "replica {}: {method} {path}: {answer}",
            self.name
        );
        answer["value"].clone()
    }

    /// SIGKILL, as a crashed host or a lost VM: no drain.
    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The config every replica is started with: two tenants of the grants
/// probe, each granted the store `shared` on the one redis-server.
fn write_config(dir: &Path, redis_url: &str) -> std::path::PathBuf {
    let handler = fixture("grants");
    let handler = handler.to_str().unwrap();
    let text = format!(
        "[key_value_store.shared]\n\
         type = \"redis\"\n\
         url = {redis_url:?}\n\
         \n\
         [[tenant]]\n\
         name = \"alpha\"\n\
         handler = {handler:?}\n\
         path_prefix = \"/alpha\"\n\
         key_value_stores = [\"shared\"]\n\
         \n\
         [[tenant]]\n\
         name = \"beta\"\n\
         handler = {handler:?}\n\
         path_prefix = \"/beta\"\n\
         key_value_stores = [\"shared\"]\n"
    );
    let path = dir.join("pycage.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// 1,000 increments over real HTTP, 8 clients at once, each alternating
/// between the replicas: starting from `before`, every value
/// `before + 1..=before + 1000` comes back exactly once, every response is
/// 200, and each replica served its share.
async fn increments_spread_over(replicas: &[Arc<Replica>], before: i64) {
    let per_client = INCREMENTS / CLIENTS;
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let replicas = replicas.to_vec();
        clients.push(tokio::spawn(async move {
            let mut seen = Vec::with_capacity(per_client);
            for i in 0..per_client {
                let which = (c + i) % replicas.len();
                let value = replicas[which]
                    .probe("POST", "/alpha/incr/shared/hits", b"")
                    .await;
                seen.push((which, value.as_i64().expect("an integer")));
            }
            seen
        }));
    }
    let mut values = Vec::new();
    let mut served = vec![0; replicas.len()];
    for client in clients {
        for (which, value) in client.await.unwrap() {
            served[which] += 1;
            values.push(value);
        }
    }
    values.sort_unstable();
    assert_eq!(
        values,
        (before + 1..=before + INCREMENTS as i64).collect::<Vec<_>>(),
        "increments were lost or repeated across replicas"
    );
    assert_eq!(served, vec![INCREMENTS / replicas.len(); replicas.len()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_sharing_redis_are_interchangeable() {
    let started = Instant::now();
    let server = redis::start();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &server.url());

    // Two replicas, same config, same build cache, started together: on a
    // cold cache each builds the image, and two builds into one cache are
    // safe (each builds in a directory of its own and renames it in).
    let a = Replica::start("A", &config);
    let b = Replica::start("B", &config);
    a.wait_ready().await;
    b.wait_ready().await;
    let ready_after = started.elapsed();
    a.assert_healthy_and_ready().await;
    b.assert_healthy_and_ready().await;
    let (a, b) = (Arc::new(a), Arc::new(b));

    // The counter is exact whichever replica each request reaches.
    let counting = Instant::now();
    increments_spread_over(&[a.clone(), b.clone()], 0).await;
    let counted_in = counting.elapsed();
    for r in [&a, &b] {
        assert_eq!(r.probe("GET", "/alpha/kv/shared/hits", b"").await, "1000");
        // The other tenant names the same store and sees none of it.
        assert_eq!(
            r.probe("GET", "/beta/kv/shared/hits", b"").await,
            Value::Null
        );
    }

    // A tenant's data written through one replica is read through the other.
    a.probe("PUT", "/alpha/kv/shared/greeting", b"written through A")
        .await;
    assert_eq!(
        b.probe("GET", "/alpha/kv/shared/greeting", b"").await,
        "written through A"
    );
    b.probe("PUT", "/beta/kv/shared/note", b"written through B")
        .await;
    assert_eq!(
        a.probe("GET", "/beta/kv/shared/note", b"").await,
        "written through B"
    );
    assert_eq!(
        b.probe("GET", "/alpha/kv/shared/note", b"").await,
        Value::Null
    );
    assert_eq!(
        a.probe("GET", "/beta/kv/shared/greeting", b"").await,
        Value::Null
    );

    // A replica dies without draining: its listener and its admin endpoints
    // refuse connections (a load balancer takes it out), and the other
    // replica stays healthy, ready and serving the same state.
    let mut a = Arc::into_inner(a).expect("no client holds replica A");
    a.kill();
    for (what, addr, path) in [
        ("listener", a.addr, "/alpha/kv/shared/hits"),
        ("admin /healthz", a.admin, "/healthz"),
        ("admin /readyz", a.admin, "/readyz"),
    ] {
        let refused = send(addr, "GET", "127.0.0.1", path, Vec::new()).await;
        assert!(
            refused.is_err(),
            "the killed replica's {what} still answers: {refused:?}"
        );
    }
    b.assert_healthy_and_ready().await;
    assert_eq!(b.probe("POST", "/alpha/incr/shared/hits", b"").await, 1001);
    assert_eq!(
        b.probe("GET", "/alpha/kv/shared/greeting", b"").await,
        "written through A"
    );

    // A replacement started from the same config (another host, no state
    // of its own) picks up where the dead one left off.
    let c = Arc::new(Replica::start("C", &config));
    c.wait_ready().await;
    c.assert_healthy_and_ready().await;
    assert_eq!(c.probe("GET", "/alpha/kv/shared/hits", b"").await, "1001");
    increments_spread_over(&[b.clone(), c.clone()], 1001).await;
    assert_eq!(b.probe("GET", "/alpha/kv/shared/hits", b"").await, "2001");
    eprintln!(
        "replicas ready after {ready_after:.1?}; {INCREMENTS} increments over two replicas in \
         {counted_in:.1?}; whole test {:.1?}",
        started.elapsed()
    );
}
