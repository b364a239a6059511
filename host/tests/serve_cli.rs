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

/// Start `pycage serve ARGS` and wait for its "listening on" log line.
fn start(args: &[&str]) -> (Child, SocketAddr, std::thread::JoinHandle<Vec<String>>) {
    let mut child = pycage()
        .arg("serve")
        .args(args)
        .args(["--listen", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    // Keep draining stderr so the server never blocks on a full pipe.
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let addr = rest.split_whitespace().next().unwrap().to_owned();
                let _ = tx.send(addr);
            }
            lines.push(line);
        }
        lines
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(300))
        .expect("server did not report its address")
        .parse()
        .unwrap();
    (child, addr, reader)
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
        (
            format!(
                "[[tenant]]\nname = \"broken\"\nhandler = \"{}\"\n",
                fixture("broken/syntax").display()
            ),
            "tenant `broken`: ",
        ),
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
        assert!(
            stderr.contains("pycage.toml") || expected.starts_with("tenant `broken`"),
            "{stderr}"
        );
    }
}

#[test]
fn serve_needs_a_handler_or_a_config() {
    let out = pycage().arg("serve").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}
