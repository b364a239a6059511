//! `pycage serve` as a process: start-up, config errors, signals.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::client::get;
use common::{cache_dir, fixture};

fn pycage() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pycage"));
    command.env("PYCAGE_CACHE_DIR", cache_dir());
    command
}

/// Start `pycage serve ARGS` and wait for its "listening on" log line
/// (and, with `--config`, for its tenants to have loaded).
fn start(args: &[&str]) -> (Child, SocketAddr, std::thread::JoinHandle<Vec<String>>) {
    let started = start_with(pycage(), args);
    (started.child, started.addr, started.logs)
}

struct Started {
    child: Child,
    addr: SocketAddr,
    /// The admin address, if `--admin-listen` was given.
    admin: Option<SocketAddr>,
    logs: std::thread::JoinHandle<Vec<String>>,
}

fn start_with(mut command: Command, args: &[&str]) -> Started {
    let background = args.contains(&"--config");
    let mut child = command
        .arg("serve")
        .args(args)
        .args(["--listen", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let (loaded_tx, loaded_rx) = std::sync::mpsc::channel();
    // Keep draining stderr so the server never blocks on a full pipe.
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let addr = rest.split_whitespace().next().unwrap().to_owned();
                let admin = rest
                    .split("admin on http://")
                    .nth(1)
                    .map(|a| a.split('/').next().unwrap().to_owned());
                let _ = tx.send((addr, admin));
            }
            if line.contains("tenants loaded") {
                let _ = loaded_tx.send(());
            }
            lines.push(line);
        }
        lines
    });
    let (addr, admin) = rx
        .recv_timeout(Duration::from_secs(300))
        .expect("server did not report its address");
    if background {
        loaded_rx
            .recv_timeout(Duration::from_secs(600))
            .expect("server did not report its tenants loaded");
    }
    Started {
        child,
        addr: addr.parse().unwrap(),
        admin: admin.map(|a| a.parse().unwrap()),
        logs: reader,
    }
}

fn terminate(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_a_single_handler_and_drains_on_sigterm() {
    let hello = fixture("limits");
    let (mut child, addr, logs) = start(&[hello.to_str().unwrap(), "--timeout", "5s"]);
    assert_eq!(get(addr, "127.0.0.1", "/ok").await.status, 200);

    let in_flight = tokio::spawn(async move { get(addr, "127.0.0.1", "/slow?seconds=1").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    terminate(&child);
    let reply = in_flight.await.unwrap();
    assert_eq!(
        reply.status,
        200,
        "in-flight request must finish: {}",
        reply.text()
    );
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    let logs = logs.join().unwrap().join("\n");
    assert!(logs.contains("SIGTERM received"), "{logs}");
    assert!(
        logs.contains("tenant=default")
            && logs.contains("path=/slow")
            && logs.contains("status=200"),
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_the_fixture_config_with_tagged_guest_logs() {
    let config = fixture("pycage.toml");
    let (child, addr, logs) = start(&[
        "--config",
        config.to_str().unwrap(),
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(
        get(addr, "alpha.localhost", "/whoami").await.json()["tenant"],
        "alpha"
    );
    assert_eq!(get(addr, "127.0.0.1", "/limits/flood").await.status, 200);
    terminate(&child);
    let logs = logs.join().unwrap().join("\n");
    let guest_line = logs
        .lines()
        .find(|l| l.contains("pycage::guest") && l.contains("yyyy"))
        .unwrap_or_else(|| panic!("no guest output in logs:\n{logs}"));
    assert!(
        guest_line.contains("tenant=\"limits\"") && guest_line.contains("request_id="),
        "{guest_line}"
    );
    assert!(
        logs.contains("guest output over the limit was dropped"),
        "{logs}"
    );
}

#[test]
fn bad_configs_fail_at_start_naming_tenant_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let hello = fixture("hello");
    let cases = [
        (
            format!(
                "[[tenant]]\nname = \"shop\"\nhandler = \"{}\"\nlimits = {{ memory_mib = 1 }}\n",
                hello.display()
            ),
            "tenant `shop`: key `limits.memory_mib`",
        ),
        (
            "[[tenant]]\nname = \"shop\"\nhandler = \"missing-dir\"\n".to_owned(),
            "tenant `shop`: key `handler`",
        ),
        ("[server]\nlisten = 8080\n".to_owned(), "invalid type"),
    ];
    for (text, expected) in cases {
        let path = dir.path().join("pycage.toml");
        std::fs::write(&path, &text).unwrap();
        let out = pycage()
            .args(["serve", "--config", path.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}\n{stderr}");
        assert!(
            stderr.contains(expected),
            "expected {expected:?} in:\n{stderr}"
        );
        assert!(stderr.contains("pycage.toml"), "{stderr}");
    }
}

/// A tenant whose handler cannot load answers 503 and shows in readiness,
/// while the server listens and the other tenants serve; with a single
/// handler on the command line, a broken one is exit status 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_tenant_answers_503_while_the_others_serve() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pycage.toml");
    std::fs::write(
        &path,
        format!(
            "[[tenant]]\nname = \"broken\"\nhandler = \"{}\"\npath_prefix = \"/broken\"\n\
             [[tenant]]\nname = \"hello\"\nhandler = \"{}\"\n",
            fixture("broken/syntax").display(),
            fixture("hello/hello.py").display()
        ),
    )
    .unwrap();
    let (child, addr, logs) = start(&[
        "--config",
        path.to_str().unwrap(),
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    let hello = get(addr, "127.0.0.1", "/hello/ada").await;
    assert_eq!(hello.status, 200, "{}", hello.text());
    let broken = get(addr, "127.0.0.1", "/broken/x").await;
    assert_eq!(broken.status, 503, "{}", broken.text());
    assert!(broken.headers.contains_key("retry-after"));
    assert!(
        broken.text().contains("failed to load"),
        "{}",
        broken.text()
    );
    terminate(&child);
    let logs = logs.join().unwrap().join("\n");
    assert!(
        logs.contains("tenant=broken") && logs.contains("SyntaxError"),
        "{logs}"
    );

    let out = pycage()
        .args(["serve", fixture("broken/syntax").to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("SyntaxError"));
}

/// With its file descriptors exhausted, the server backs off instead of
/// spinning on failed accepts, and serves again once connections close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fd_exhaustion_does_not_spin_the_accept_loop() {
    use std::os::unix::process::CommandExt;
    let hello = fixture("hello/hello.py");
    let mut command = pycage();
    command
        .args(["serve", hello.to_str().unwrap(), "--listen", "127.0.0.1:0"])
        .args(["--admin-listen", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null());
    // SAFETY: setrlimit only, between fork and exec.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 128,
                rlim_max: 128,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let addr = rest.split_whitespace().next().unwrap().to_owned();
                let admin = rest.split("admin on http://").nth(1).unwrap();
                let admin = admin.split('/').next().unwrap().to_owned();
                let _ = tx.send((addr, admin));
            }
        }
    });
    let (addr, admin) = rx.recv_timeout(Duration::from_secs(300)).unwrap();
    let addr: SocketAddr = addr.parse().unwrap();
    let admin: SocketAddr = admin.parse().unwrap();
    assert_eq!(get(addr, "127.0.0.1", "/hello/x").await.status, 200);
    // More idle connections than the server has descriptors left, on both
    // listeners.
    let mut held = Vec::new();
    for target in [addr, admin] {
        for _ in 0..150 {
            if let Ok(stream) = tokio::net::TcpStream::connect(target).await {
                held.push(stream);
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu = || {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap();
        let fields: Vec<u64> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .skip(11)
            .take(2)
            .map(|f| f.parse().unwrap())
            .collect();
        fields[0] + fields[1]
    };
    let before = cpu();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ticks = cpu() - before;
    // Clock ticks are 1/100 s: a spinning loop would burn ~300 in 3 s.
    assert!(ticks < 60, "the server used {ticks} ticks of CPU in 3 s");
    drop(held);
    // The idle connections are closed at the header timeout at the latest.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Ok(reply)) = tokio::time::timeout(
            Duration::from_secs(2),
            common::client::send(addr, "GET", "127.0.0.1", "/hello/y", Vec::new()),
        )
        .await
        {
            assert_eq!(reply.status, 200);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the server never recovered"
        );
    }
    assert_eq!(get(admin, "127.0.0.1", "/healthz").await.status, 200);
    terminate(&child);
    let _ = child.wait();
}

#[test]
fn serve_needs_a_handler_or_a_config() {
    let out = pycage().arg("serve").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// `pycage serve` with the capability flags, SIGKILLed after its writes
/// were acknowledged: a new server on the same data directory has them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_key_value_writes_survive_kill_9() {
    let data = tempfile::tempdir().unwrap();
    let handler = fixture("grants");
    let args = [
        handler.to_str().unwrap(),
        "--kv",
        "default",
        "--data-dir",
        data.path().to_str().unwrap(),
    ];
    let first = start_with(pycage(), &args);
    for i in 1..=50 {
        let reply = common::client::send(
            first.addr,
            "POST",
            "127.0.0.1",
            "/incr/default/n",
            Vec::new(),
        )
        .await
        .unwrap();
        assert_eq!(reply.json()["value"], i, "{}", reply.text());
    }
    // Outbound is not granted: the log line names the failed capability.
    let denied = get(
        first.addr,
        "127.0.0.1",
        "/fetch?url=http%3A%2F%2F127.0.0.1%3A9%2F",
    )
    .await;
    assert_eq!(denied.json()["ok"], false);
    let mut child = first.child;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let logs = first.logs.join().unwrap().join("\n");
    assert!(
        logs.lines()
            .any(|l| l.contains("path=/fetch") && l.contains("capability=\"outbound_denied\"")),
        "{logs}"
    );

    let second = start_with(pycage(), &args);
    let reply = get(second.addr, "127.0.0.1", "/kv/default/n").await;
    assert_eq!(reply.json()["value"], "50", "{}", reply.text());
    let reply = common::client::send(
        second.addr,
        "POST",
        "127.0.0.1",
        "/incr/default/n",
        Vec::new(),
    )
    .await
    .unwrap();
    assert_eq!(reply.json()["value"], 51);
    let mut child = second.child;
    child.kill().unwrap();
    child.wait().unwrap();
}

/// The capabilities example, as README shows it: fixtures/shop.toml with
/// its upstream, its store and its secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shop_example_serves_with_its_grants_and_never_shows_its_secret() {
    let upstream = common::upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let config = std::fs::read_to_string(fixture("shop.toml"))
        .unwrap()
        .replace("127.0.0.1:8089", &upstream.addr.to_string())
        .replace(
            "handler = \"shop\"",
            &format!("handler = {:?}", fixture("shop").to_str().unwrap()),
        );
    let config_path = dir.path().join("shop.toml");
    std::fs::write(&config_path, config).unwrap();
    let secret = "tok-9f8e7d6c5b4a";
    let mut command = pycage();
    command
        .env("SHOP_WEATHER_TOKEN", secret)
        .env("PYCAGE_DATA_DIR", dir.path().join("data"));
    let started = start_with(
        command,
        &[
            "--config",
            config_path.to_str().unwrap(),
            "--admin-listen",
            "127.0.0.1:0",
        ],
    );
    let addr = started.addr;
    for n in 1..=2 {
        let reply = common::client::send(addr, "POST", "127.0.0.1", "/visits/home", b"hi".to_vec())
            .await
            .unwrap();
        assert_eq!(reply.json()["visits"], n, "{}", reply.text());
    }
    assert_eq!(
        get(addr, "127.0.0.1", "/visits/home").await.json()["visits"],
        2
    );
    assert_eq!(
        get(addr, "127.0.0.1", "/about").await.json()["region"],
        "eu"
    );
    let weather = get(addr, "127.0.0.1", "/weather/paris").await;
    assert_eq!(weather.status, 200, "{}", weather.text());
    let data = &weather.json()["data"];
    assert_eq!(data["city"], "paris");
    // The upstream got the secret; the guest chose to echo it back here.
    assert_eq!(data["authorization"], format!("Bearer {secret}"));

    let metrics = get(started.admin.unwrap(), "127.0.0.1", "/metrics")
        .await
        .text();
    for line in [
        "pycage_kv_operations_total{tenant=\"shop\"}",
        "pycage_outbound_requests_total{tenant=\"shop\",outcome=\"ok\"} 1",
        "pycage_outbound_response_bytes_total{tenant=\"shop\"}",
    ] {
        assert!(metrics.contains(line), "{line} not in:\n{metrics}");
    }
    assert!(!metrics.contains(secret));
    terminate(&started.child);
    let logs = started.logs.join().unwrap().join("\n");
    assert!(logs.contains("path=/weather/paris"), "{logs}");
    assert!(!logs.contains(secret), "the secret is in the log:\n{logs}");
}
