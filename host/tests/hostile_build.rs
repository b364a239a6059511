//! Handlers that attack the host while being built (`fixtures/hostile_build`):
//! their module-level code runs in the build worker. Each case asserts that
//! the attack failed, that the host stayed within its bounds, and that a
//! normal handler still builds and serves afterwards.

mod common;

use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{cache_dir, fixture, get, ok};
use pycage::{BuildLimits, Cache, LoadError, LoadOptions, Runtime, RuntimeConfig};

/// A runtime whose builds have small memory and disk limits, so that each
/// attack hits one quickly.
fn strict() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        let mut config = RuntimeConfig::new(Cache::new(cache_dir()));
        config.build_limits = BuildLimits {
            timeout: Duration::from_secs(180),
            memory_bytes: 1024 << 20,
            disk_bytes: 384 << 20,
        };
        Runtime::with_config(config).unwrap()
    })
}

/// The fixture copied to a fresh directory (with a nonce, so that earlier
/// runs sharing the cache do not make it a cache hit), then loaded. One
/// build at a time: on two cores, concurrent builds would only measure
/// each other.
fn build(name: &str, runtime: &Runtime) -> (Result<pycage::Handler, LoadError>, tempfile::TempDir) {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let source = std::fs::read_to_string(fixture(&format!("hostile_build/{name}/app.py"))).unwrap();
    std::fs::write(
        dir.path().join("app.py"),
        format!("# {}\n{source}", dir.path().display()),
    )
    .unwrap();
    let loaded = runtime.load(dir.path(), &LoadOptions::default(), &|_| {});
    (loaded, dir)
}

/// After every attack a normal handler loads and serves.
async fn still_building() {
    let handler = strict()
        .load(&fixture("hello/hello.py"), &LoadOptions::default(), &|_| {})
        .expect("hello still loads");
    assert_eq!(ok(&get(&handler, "/hello/ada").await).status, 200);
}

/// The peak resident memory of this (host) process.
fn host_peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        << 10
}

#[tokio::test]
async fn a_build_report_linked_out_of_its_mount_is_not_followed() {
    let (loaded, _dir) = build("report_link", strict());
    match loaded {
        Err(LoadError::Build { detail, .. }) => {
            assert!(detail.contains("symbolic link"), "{detail}")
        }
        Err(other) => panic!("expected a build failure, got {other}"),
        Ok(_) => panic!("a forged report was accepted"),
    }
    still_building().await;
}

#[tokio::test]
async fn a_sparse_build_report_is_refused_from_its_size() {
    let started = Instant::now();
    let (loaded, _dir) = build("report_sparse", strict());
    match loaded {
        Err(LoadError::Build { detail, .. }) => {
            assert!(detail.contains("more than"), "{detail}")
        }
        Err(other) => panic!("expected a build failure, got {other}"),
        Ok(_) => panic!("a sparse report was accepted"),
    }
    // Refused from its size on the handle, not after reading 256 MiB.
    assert!(started.elapsed() < Duration::from_secs(120));
    assert!(host_peak_rss() < 1 << 30, "host RSS {}", host_peak_rss());
    still_building().await;
}

#[tokio::test]
async fn a_linked_object_listing_is_ignored_and_the_handler_still_serves() {
    let (loaded, _dir) = build("objects_link", strict());
    let handler = loaded.expect("a bad listing only costs speed");
    assert_eq!(ok(&get(&handler, "/").await).body, b"served anyway");
}

#[tokio::test]
async fn files_written_at_build_time_never_reach_the_image() {
    let (loaded, dir) = build("leftovers", strict());
    let handler = loaded.expect("leftovers builds");
    let body = common::json(ok(&get(&handler, "/").await));
    assert_eq!(body["planted"], false, "{body}");
    let names: Vec<&str> = body["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert!(
        names.iter().all(|n| ["app.py", "__pycache__"].contains(n)),
        "{names:?}"
    );
    // The published entry holds the staged file and its bytecode, no more.
    let entry = handler.app_dir();
    let mut published = Vec::new();
    walk(entry, entry, &mut published);
    published.sort();
    assert_eq!(published, ["__pycache__/app.cpython-314.pyc", "app.py"]);
    // And the user's directory was never written to.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["app.py"]);
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let kind = entry.file_type().unwrap();
        assert!(!kind.is_symlink(), "{}", entry.path().display());
        if kind.is_dir() {
            walk(root, &entry.path(), out);
        } else {
            let relative = entry.path().strip_prefix(root).unwrap().to_owned();
            out.push(relative.display().to_string());
        }
    }
}

#[tokio::test]
async fn a_build_that_floods_the_disk_is_stopped_at_its_limit() {
    let started = Instant::now();
    let (loaded, _dir) = build("disk_flood", strict());
    match loaded {
        Err(error @ LoadError::BuildLimit { .. }) => {
            assert!(error.to_string().contains("disk limit"), "{error}")
        }
        Err(other) => panic!("expected the disk limit, got {other}"),
        Ok(_) => panic!("a disk flood built"),
    }
    assert!(started.elapsed() < Duration::from_secs(120));
    still_building().await;
}

/// Files unlinked while kept open are in no tree the watch can measure,
/// and each stays under the per-file limit: the filesystem's free space
/// catches them.
#[tokio::test]
async fn a_build_that_floods_the_disk_with_unlinked_files_is_stopped() {
    let started = Instant::now();
    let (loaded, _dir) = build("unlinked_flood", strict());
    match loaded {
        Err(error @ LoadError::BuildLimit { .. }) => {
            assert!(error.to_string().contains("disk limit"), "{error}")
        }
        Err(other) => panic!("expected the disk limit, got {other}"),
        Ok(_) => panic!("an unlinked-file flood built"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "took {:?}",
        started.elapsed()
    );
    still_building().await;
}

/// A tree deeper than any recursive walk or descriptor limit stops the
/// build (the host process survives it) and is removed with the build
/// directory.
#[tokio::test]
async fn a_build_that_nests_directories_thousands_deep_is_stopped_and_removed() {
    let (loaded, dir) = build("deep_tree", strict());
    match loaded {
        Err(error @ LoadError::BuildLimit { .. }) => {
            assert!(error.to_string().contains("nested"), "{error}")
        }
        Err(other) => panic!("expected the disk limit, got {other}"),
        Ok(_) => panic!("a 5,000-deep tree built"),
    }
    assert_no_build_dir_left(&dir);
    still_building().await;
}

/// No build directory of the handler in `dir` is left in the cache.
fn assert_no_build_dir_left(dir: &tempfile::TempDir) {
    let marker = dir.path().display().to_string();
    let leftovers: Vec<_> = std::fs::read_dir(cache_dir().join("handlers"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".building-"))
        .filter(|e| {
            std::fs::read_to_string(e.path().join("mounts/app/app.py"))
                .is_ok_and(|text| text.contains(&marker))
        })
        .collect();
    assert!(
        leftovers.is_empty(),
        "left behind: {:?}",
        leftovers[0].path()
    );
}

#[tokio::test]
async fn an_import_time_memory_bomb_is_stopped_at_the_build_memory_limit() {
    let started = Instant::now();
    let (loaded, _dir) = build("memory_bomb", strict());
    match loaded {
        Err(error @ (LoadError::Import { .. } | LoadError::BuildLimit { .. })) => {
            let text = error.to_string();
            assert!(text.contains("memory limit of 1024 MiB"), "{text}")
        }
        Err(other) => panic!("expected the memory limit, got {other}"),
        Ok(_) => panic!("a memory bomb built"),
    }
    assert!(started.elapsed() < Duration::from_secs(120));
    // The bomb went off in the worker, not here.
    assert!(host_peak_rss() < 1 << 30, "host RSS {}", host_peak_rss());
    still_building().await;
}

#[tokio::test]
async fn an_import_time_loop_is_killed_at_the_build_timeout_and_cleaned_up() {
    let mut config = RuntimeConfig::new(Cache::new(cache_dir()));
    config.build_limits.timeout = Duration::from_secs(20);
    let runtime = Runtime::with_config(config).unwrap();
    // The standard library is exported first (once per cache), so that the
    // timeout measures only this build.
    runtime
        .load(&fixture("hello/hello.py"), &LoadOptions::default(), &|_| {})
        .unwrap();
    let started = Instant::now();
    let (loaded, dir) = build("import_loop", &runtime);
    let took = started.elapsed();
    assert!(
        matches!(loaded, Err(LoadError::BuildTimeout { .. })),
        "{:?}",
        loaded.err()
    );
    assert!(took < Duration::from_secs(40), "gave up after {took:?}");
    // The worker was killed and reaped before the load returned; its build
    // directory is gone, componentize-py's temporary directories with it.
    let marker = dir.path().display().to_string();
    let leftovers: Vec<_> = std::fs::read_dir(cache_dir().join("handlers"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".building-"))
        .filter(|e| {
            std::fs::read_to_string(e.path().join("mounts/app/app.py"))
                .is_ok_and(|text| text.contains(&marker))
        })
        .collect();
    assert!(
        leftovers.is_empty(),
        "left behind: {:?}",
        leftovers[0].path()
    );
    still_building().await;
}
