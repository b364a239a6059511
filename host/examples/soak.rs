//! Soak / load test client for `pycage serve --config fixtures/soak.toml`.
//! Run it through `scripts/soak.sh`, which starts the server and passes:
//!
//!   soak ADDR SERVER_PID METRICS_ADDR [REQUESTS] [CONCURRENCY]
//!
//! Sends a fixed mix of normal and hostile requests (loopback only, bounded
//! count), checks every answer, and reports wrong answers, the server's RSS
//! and open file descriptors after warm-up and at the end, and the instances
//! still in use. Exits non-zero if any answer was wrong or anything leaked.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

// The same minimal hyper client the server tests use.
#[path = "../tests/common/client.rs"]
#[allow(dead_code)]
mod client;

/// One kind of request and how to judge its answer.
struct Case {
    name: &'static str,
    method: &'static str,
    host: &'static str,
    path: fn(u64) -> String,
    body: fn(u64) -> Vec<u8>,
    check: fn(u64, u16, &[u8]) -> bool,
    /// Share of the mix, in requests per hundred (0: only as `RARE`).
    weight: u64,
}

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).unwrap_or(serde_json::Value::Null)
}

fn no_body(_: u64) -> Vec<u8> {
    Vec::new()
}

const CASES: &[Case] = &[
    Case {
        name: "hello",
        method: "GET",
        host: "hello.localhost",
        path: |i| format!("/hello/u{i}"),
        body: no_body,
        check: |i, s, b| {
            s == 200 && json(b) == serde_json::json!({"hello": format!("u{i}"), "agent": null})
        },
        weight: 40,
    },
    Case {
        name: "item",
        method: "GET",
        host: "127.0.0.1",
        path: |i| format!("/api/items/{i}"),
        body: no_body,
        check: |i, s, b| s == 200 && json(b)["id"] == i,
        weight: 14,
    },
    Case {
        name: "echo",
        method: "POST",
        host: "127.0.0.1",
        path: |_| "/api/echo".into(),
        body: |i| format!("payload-{i}").into_bytes(),
        check: |i, s, b| s == 200 && json(b)["text"] == format!("payload-{i}"),
        weight: 10,
    },
    Case {
        name: "isolation",
        method: "GET",
        host: "127.0.0.1",
        path: |_| "/iso/counter".into(),
        body: no_body,
        check: |_, s, b| s == 200 && json(b) == serde_json::json!({"counter": 1}),
        weight: 10,
    },
    Case {
        name: "escape",
        method: "GET",
        host: "127.0.0.1",
        path: |_| "/hostile/fs/escape".into(),
        body: no_body,
        check: |_, s, b| s == 200 && !String::from_utf8_lossy(b).contains("\"ok\": true"),
        weight: 4,
    },
    Case {
        name: "write",
        method: "GET",
        host: "127.0.0.1",
        path: |_| "/hostile/fs/write".into(),
        body: no_body,
        check: |_, s, b| s == 200 && !String::from_utf8_lossy(b).contains("\"ok\": true"),
        weight: 4,
    },
    Case {
        name: "memory-bomb",
        method: "GET",
        host: "127.0.0.1",
        path: |_| "/hostile/exhaust/bytearray".into(),
        body: no_body,
        check: |_, s, _| s == 500,
        weight: 4,
    },
    Case {
        name: "exit",
        method: "GET",
        host: "127.0.0.1",
        path: |_| "/hostile/crash/os-exit".into(),
        body: no_body,
        check: |_, s, _| s == 500,
        weight: 3,
    },
    Case {
        name: "header-injection",
        method: "GET",
        host: "127.0.0.1",
        path: |_| "/hostile/bad/header-value".into(),
        body: no_body,
        check: |_, s, _| s == 500,
        weight: 3,
    },
    Case {
        name: "leftovers",
        method: "GET",
        host: "127.0.0.1",
        path: |_| "/hostile/state/check".into(),
        body: no_body,
        check: |_, s, b| s == 200 && json(b)["global"].is_null() && json(b)["file"] == false,
        weight: 3,
    },
    Case {
        name: "leave-state",
        method: "GET",
        host: "127.0.0.1",
        path: |_| "/hostile/state/leave".into(),
        body: no_body,
        check: |_, s, _| s == 200,
        weight: 3,
    },
    Case {
        name: "flood",
        method: "GET",
        host: "127.0.0.1",
        path: |_| "/hostile/exhaust/flood".into(),
        body: no_body,
        check: |_, s, _| s == 200,
        weight: 2,
    },
    Case {
        name: "infinite-loop",
        method: "GET",
        host: "127.0.0.1",
        path: |_| "/hostile/exhaust/loop".into(),
        body: no_body,
        check: |_, s, _| s == 504,
        weight: 0,
    },
];

/// Every this many requests, one that spins until the timeout.
const RARE_EVERY: u64 = 5000;

/// The case for request `i`: a fixed, deterministic interleaving of the mix.
fn pick(i: u64) -> &'static Case {
    if i % RARE_EVERY == RARE_EVERY - 1 {
        return CASES
            .iter()
            .find(|c| c.name == "infinite-loop")
            .expect("present");
    }
    let mut slot = (i * 37) % 100; // 37 is coprime with 100: spreads the kinds out
    for case in CASES {
        if slot < case.weight {
            return case;
        }
        slot -= case.weight;
    }
    &CASES[0]
}

/// One request of `case` on a new connection: (status, body).
async fn send(addr: SocketAddr, case: &Case, i: u64) -> Result<(u16, Vec<u8>), String> {
    let reply = client::send(
        addr,
        case.method,
        case.host,
        &(case.path)(i),
        (case.body)(i),
    )
    .await?;
    Ok((reply.status, reply.body))
}

fn proc_figures(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kb = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    (rss_kb, fds)
}

async fn metric(admin: SocketAddr, name: &str) -> Option<f64> {
    let reply = client::send(admin, "GET", "127.0.0.1", "/metrics", Vec::new())
        .await
        .ok()?;
    reply
        .text()
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
}

/// Send `count` requests from the mix with `concurrency` in flight.
async fn run(addr: SocketAddr, start: u64, count: u64, concurrency: usize) -> (u64, Vec<String>) {
    let next = Arc::new(AtomicU64::new(start));
    let wrong = Arc::new(std::sync::Mutex::new(Vec::new()));
    let done = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (next, wrong, done) = (next.clone(), wrong.clone(), done.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= start + count {
                        break;
                    }
                    let case = pick(i);
                    match send(addr, case, i).await {
                        Ok((status, body)) if (case.check)(i, status, &body) => {}
                        Ok((status, body)) => wrong.lock().unwrap().push(format!(
                            "#{i} {}: {status} {}",
                            case.name,
                            String::from_utf8_lossy(&body[..body.len().min(200)])
                        )),
                        Err(error) => wrong
                            .lock()
                            .unwrap()
                            .push(format!("#{i} {}: {error}", case.name)),
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    let wrong = std::mem::take(&mut *wrong.lock().unwrap());
    (done.load(Ordering::Relaxed), wrong)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: soak ADDR SERVER_PID METRICS_ADDR [REQUESTS] [CONCURRENCY]");
        std::process::exit(2);
    }
    let addr: SocketAddr = args[1].parse().expect("ADDR");
    let pid: u32 = args[2].parse().expect("SERVER_PID");
    let admin: SocketAddr = args[3].parse().expect("METRICS_ADDR");
    let total: u64 = args
        .get(4)
        .map_or(100_000, |v| v.parse().expect("REQUESTS"));
    let concurrency: usize = args.get(5).map_or(64, |v| v.parse().expect("CONCURRENCY"));

    let warmup = (total / 20).max(1000);
    let (_, warm_wrong) = run(addr, 0, warmup, concurrency).await;
    let (rss_start, fds_start) = proc_figures(pid);
    let started = Instant::now();
    // In quarters, sampling RSS after each, so a trend is visible: a leak
    // keeps growing, a pool that has reached its working set levels off.
    let (mut sent, mut wrong, mut rss_trace) = (0, Vec::new(), Vec::new());
    for quarter in 0..4u64 {
        let from = warmup + total * quarter / 4;
        let to = warmup + total * (quarter + 1) / 4;
        let (n, w) = run(addr, from, to - from, concurrency).await;
        sent += n;
        wrong.extend(w);
        rss_trace.push(proc_figures(pid).0 / 1024);
    }
    let elapsed = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss_end, fds_end) = proc_figures(pid);
    let in_use = metric(admin, "pycage_instances_in_use").await;

    println!(
        "soak: {sent} requests at concurrency {concurrency} in {:.1} s ({:.0} req/s), after {warmup} warm-up requests",
        elapsed.as_secs_f64(),
        sent as f64 / elapsed.as_secs_f64()
    );
    println!(
        "mix per 100: {}; infinite-loop 1/{RARE_EVERY}",
        CASES
            .iter()
            .filter(|c| c.weight > 0)
            .map(|c| format!("{} {}", c.name, c.weight))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "wrong answers: {} (warm-up: {})",
        wrong.len(),
        warm_wrong.len()
    );
    for line in wrong.iter().chain(&warm_wrong).take(20) {
        println!("  {line}");
    }
    println!(
        "server RSS: {} MiB after warm-up; after each quarter {} MiB; {} MiB at the end",
        rss_start / 1024,
        rss_trace
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        rss_end / 1024
    );
    println!("server open fds: {fds_start} after warm-up, {fds_end} at the end");
    println!(
        "instances in use at the end: {}",
        in_use.map_or("unknown".into(), |v| v.to_string())
    );
    let leaked = fds_end > fds_start + 8 || in_use != Some(0.0);
    if !wrong.is_empty() || !warm_wrong.is_empty() || leaked {
        println!("soak: FAILED");
        std::process::exit(1);
    }
    println!("soak: passed");
}
