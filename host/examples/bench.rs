//! What a fresh interpreter per request costs, measured through the
//! embedding API in one run on this machine, against its baselines:
//!
//! 1. a fresh instance per request (instantiate + dispatch + teardown), with
//!    the split of each phase;
//! 2. the same dispatch on one reused instance (no isolation: the Python
//!    work alone), and the 1st, 2nd and 4th call on new instances (what a
//!    first call pays beyond it);
//! 3. a native `python3` process per request running the same handler
//!    through the same framework code (`scripts/bench_native.py`);
//! 4. host RSS per concurrently live instance, and at 64 in flight;
//! 5. cold paths: `pycage run` on a cache hit, and cache-miss builds.
//!
//! HTTP throughput is measured by `scripts/bench-serve.sh`; `scripts/bench.sh`
//! runs both. Usage (release build):
//!
//!     bench PYCAGE_BINARY JSON_OUT [ITERATIONS] [--quick]
//!
//! `--quick` measures only 1 and 2, for trying a lever.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use pycage::{Cache, Handler, Limits, LoadOptions, Request, Runtime, RuntimeConfig, Teardown};
use serde_json::{Value, json};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Median and 99th percentile, in microseconds.
fn stats(samples: &mut [Duration]) -> (f64, f64) {
    samples.sort();
    let at = |q: f64| {
        let index = ((samples.len() - 1) as f64 * q).round() as usize;
        samples[index].as_secs_f64() * 1e6
    };
    (at(0.5), at(0.99))
}

/// The printed table and the JSON written at the end, filled side by side.
#[derive(Default)]
struct Report {
    table: Vec<(String, f64, f64)>,
    results: serde_json::Map<String, Value>,
}

impl Report {
    /// Record `samples` as row `label` and JSON entry `key`; returns the p50 in µs.
    fn add(&mut self, key: &str, label: &str, samples: &mut [Duration]) -> f64 {
        let (p50, p99) = stats(samples);
        self.table.push((label.to_owned(), p50, p99));
        self.results.insert(
            key.into(),
            json!({ "p50_us": p50, "p99_us": p99, "samples": samples.len() }),
        );
        p50
    }
}

fn hello_request() -> Request {
    Request::new("GET", "/hello/ada")
        .unwrap()
        .with_header("user-agent", "bench")
        .unwrap()
}

async fn fresh_instances(handler: &Handler, n: usize) -> [Vec<Duration>; 4] {
    let mut phases: [Vec<Duration>; 4] = Default::default();
    for _ in 0..n {
        let started = Instant::now();
        let exchange = handler.dispatch(hello_request()).await;
        let total = started.elapsed();
        assert_eq!(exchange.response().status, 200, "{:?}", exchange.result);
        let t = exchange.timings;
        for (samples, value) in phases
            .iter_mut()
            .zip([total, t.instantiate, t.call, t.teardown])
        {
            samples.push(value);
        }
    }
    phases
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// RSS with `live` instances in flight (each sleeping), over the idle RSS.
async fn memory(runtime: &Runtime, live: usize) -> Value {
    let limits = Limits {
        timeout: Duration::from_secs(30),
        ..Limits::default()
    };
    let options = LoadOptions {
        limits,
        ..LoadOptions::default()
    };
    let handler = runtime
        .load(&repo().join("fixtures/limits"), &options, &|_| {})
        .expect("limits fixture");
    for _ in 0..live {
        handler.dispatch(Request::new("GET", "/ok").unwrap()).await;
    }
    let idle = rss_kib();
    let tasks: Vec<_> = (0..live)
        .map(|_| {
            let handler = handler.clone();
            tokio::spawn(async move {
                let request = Request::new("GET", "/slow?seconds=2").unwrap();
                handler.dispatch(request).await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let busy = rss_kib();
    let in_use = runtime.instances_in_use();
    for task in tasks {
        let exchange = task.await.unwrap();
        assert_eq!(exchange.response().status, 200, "{:?}", exchange.result);
    }
    json!({
        "live_instances": in_use,
        "idle_rss_mib": idle / 1024,
        "rss_at_live_mib": busy / 1024,
        "per_instance_kib": (busy.saturating_sub(idle)) / (in_use.max(1) as u64),
    })
}

/// The real `python3` executable behind PATH.
fn native_python() -> PathBuf {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 is on PATH");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn time_command(command: &mut Command) -> Duration {
    let started = Instant::now();
    let out = command.output().expect("command runs");
    let elapsed = started.elapsed();
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    elapsed
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    args.retain(|a| a != "--quick");
    if args.len() < 3 {
        eprintln!("usage: bench PYCAGE_BINARY JSON_OUT [ITERATIONS] [--quick]");
        std::process::exit(2);
    }
    let pycage = PathBuf::from(&args[1]);
    let json_out = PathBuf::from(&args[2]);
    let n: usize = args.get(3).map_or(2000, |v| v.parse().expect("ITERATIONS"));
    let hello = repo().join("fixtures/hello/hello.py");
    let mut report = Report::default();

    // PYCAGE_BENCH_KEEP_RESIDENT_MIB varies how many written bytes a memory
    // slot may copy back instead of being remapped, one of the levers the
    // per-phase split shows the effect of.
    let mut config = RuntimeConfig::new(Cache::new(
        Cache::default_root().expect("set PYCAGE_CACHE_DIR or HOME"),
    ));
    if let Ok(mib) = std::env::var("PYCAGE_BENCH_KEEP_RESIDENT_MIB") {
        config.keep_resident_bytes = mib.parse::<usize>().expect("MiB") << 20;
    }
    let keep_resident_mib = config.keep_resident_bytes >> 20;
    let load = |teardown| {
        let runtime = Runtime::with_config(RuntimeConfig {
            teardown,
            ..config.clone()
        })
        .expect("runtime");
        let handler = runtime
            .load(&hello, &LoadOptions::default(), &|_| {})
            .expect("hello fixture");
        (runtime, handler)
    };

    // 1. A fresh instance per request: first with the teardown inside the
    // request, to split where the time goes, then as served (the default),
    // with the teardown after the response.
    let (inline_runtime, inline) = load(Teardown::Inline);
    fresh_instances(&inline, 200).await; // warm the memory slots and caches
    let warm = inline.memory_resets();
    let [mut total, mut inst, mut call, mut teardown] = fresh_instances(&inline, n).await;
    let resets = inline.memory_resets();
    let copied = resets.copied - warm.copied;
    let copied_kib = (resets.copied_bytes - warm.copied_bytes) / copied.max(1) / 1024;
    let remapped = resets.remapped - warm.remapped;
    let inline_p50 = report.add(
        "fresh_total_inline_teardown",
        "fresh instance, teardown inline",
        &mut total,
    );
    report.add("fresh_instantiate", "  instantiate", &mut inst);
    report.add("fresh_call", "  dispatch call", &mut call);
    report.add("fresh_teardown", "  teardown", &mut teardown);
    // Where the fresh call's extra cost sits: the 1st, 2nd and 4th call on
    // each of many new instances (lazy table entries and the interpreter's
    // first pass are paid by the first). Measured here, before the reused
    // instance below: its slot, written by thousands of calls, would make
    // every later reset copy megabytes and leave the next call's caches cold.
    let mut nth: [Vec<Duration>; 4] = Default::default();
    for _ in 0..(n / 8).max(50) {
        let calls = inline
            .bench_reused_instance(hello_request(), nth.len())
            .await
            .expect("reused dispatch");
        for (series, call) in nth.iter_mut().zip(calls) {
            series.push(call);
        }
    }
    for (index, label) in [(0, "1st"), (1, "2nd"), (3, "4th")] {
        report.add(
            &format!("instance_call_{}", index + 1),
            &format!("  {label} call on a new instance"),
            &mut nth[index],
        );
    }

    // Its slots' resident memory must not count in the memory figures.
    drop((inline, inline_runtime));
    let (runtime, handler) = load(Teardown::Background);
    fresh_instances(&handler, 200).await;
    let [mut total, ..] = fresh_instances(&handler, n).await;
    let fresh_p50 = report.add(
        "fresh_total",
        "fresh instance (default: teardown after)",
        &mut total,
    );

    // 2. The same dispatch on one reused instance.
    let mut reused = handler
        .bench_reused_instance(hello_request(), n)
        .await
        .expect("reused dispatch");
    let reused_p50 = report.add("reused_call", "reused instance: dispatch", &mut reused);
    let slow = if quick {
        eprintln!(
            "RSS after the series: {} MiB, {} instances in use",
            rss_kib() / 1024,
            runtime.instances_in_use()
        );
        None
    } else {
        Some(slow_paths(&runtime, &pycage, &hello, &mut report).await)
    };

    // What a request waits for beyond the Python work itself, and what the
    // machine spends on it (the teardown included).
    let overhead = fresh_p50 - reused_p50;
    let overhead_inline = inline_p50 - reused_p50;
    println!(
        "pycage bench: {n} requests per in-process series, GET /hello/ada (fixtures/hello), {} cores, slots copy back up to {keep_resident_mib} MiB",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("{:<42} {:>12} {:>12}", "what", "p50", "p99");
    for (what, p50, p99) in &report.table {
        let unit = |us: f64| {
            if us >= 10_000_000.0 {
                format!("{:.1} s", us / 1e6)
            } else if us >= 10_000.0 {
                format!("{:.1} ms", us / 1000.0)
            } else {
                format!("{us:.0} µs")
            }
        };
        println!("{what:<42} {:>12} {:>12}", unit(*p50), unit(*p99));
    }
    println!(
        "fresh-instance overhead (fresh - reused dispatch, p50): {overhead:.0} µs as served, {overhead_inline:.0} µs with the teardown inline; fresh/reused {:.1}x",
        fresh_p50 / reused_p50,
    );
    println!(
        "memory resets in the inline series: {copied} copied back {copied_kib} KiB each, {remapped} remapped"
    );
    let mut results = report.results;
    results.insert(
        "resets".into(),
        json!({ "copied": copied, "copied_kib_each": copied_kib, "remapped": remapped }),
    );
    if let Some((native_p50, memory)) = slow {
        println!(
            "native process/fresh {:.1}x; memory: {} MiB idle; {} MiB with {} instances in flight; {} KiB per live instance",
            native_p50 / fresh_p50,
            memory["idle_rss_mib"],
            memory["rss_at_live_mib"],
            memory["live_instances"],
            memory["per_instance_kib"]
        );
        results.insert("memory".into(), memory);
    }
    results.insert("fresh_overhead_p50_us".into(), json!(overhead));
    results.insert(
        "fresh_overhead_inline_teardown_p50_us".into(),
        json!(overhead_inline),
    );
    results.insert("keep_resident_mib".into(), json!(keep_resident_mib));
    if let Some(parent) = json_out.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(
        &json_out,
        serde_json::to_vec_pretty(&Value::Object(results)).unwrap(),
    )
    .unwrap();
    println!("wrote {}", json_out.display());
}

/// 3, 4 and 5: the native baseline, memory and the cold paths (slow).
async fn slow_paths(
    runtime: &Runtime,
    pycage: &Path,
    hello: &Path,
    report: &mut Report,
) -> (f64, Value) {
    // 3. A native CPython process per request: the interpreter itself (not
    // a version-manager shim in front of it), with bytecode caching on and
    // warmed, as a deployed service would have it.
    let python = native_python();
    let native_once = || {
        time_command(
            Command::new(&python)
                .arg(repo().join("scripts/bench_native.py"))
                .arg(repo().join("fixtures/hello"))
                .args(["hello", "GET", "/hello/ada"])
                .env_remove("PYTHONDONTWRITEBYTECODE"),
        )
    };
    native_once();
    let mut native: Vec<Duration> = (0..40).map(|_| native_once()).collect();
    let native_p50 = report.add("native_process", "native python3 process", &mut native);
    report.results.insert("native_python".into(), json!(python));

    // 5. Cold paths: the CLI on a cache hit, and builds on a miss.
    let mut cli_hit: Vec<Duration> = (0..30)
        .map(|_| {
            time_command(
                Command::new(pycage)
                    .args(["-q", "run"])
                    .arg(hello)
                    .args(["--path", "/hello/ada"]),
            )
        })
        .collect();
    report.add("cli_cache_hit", "pycage run (cache hit)", &mut cli_hit);
    let empty = tempfile::tempdir().unwrap();
    let build = |handler: &Path| {
        time_command(
            Command::new(pycage)
                .args(["-q", "build"])
                .arg(handler)
                .env("PYCAGE_CACHE_DIR", empty.path()),
        )
    };
    let mut first_build = vec![build(hello)];
    let mut handler_build = vec![build(&repo().join("fixtures/api"))];
    report.add(
        "build_empty_cache",
        "build, empty cache (with stdlib)",
        &mut first_build,
    );
    report.add("build_miss", "build, handler miss", &mut handler_build);

    // 4. Memory.
    let memory = memory(runtime, 64).await;
    (native_p50, memory)
}
