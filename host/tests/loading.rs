//! Loading: clear errors for handlers that cannot load, and the build cache.

mod common;

use std::cell::RefCell;
use std::fs;

use common::{cache_dir, fixture, get, ok};
use pycage::{Cache, LoadError, LoadEvent, LoadOptions, Runtime, RuntimeConfig};

fn load_error(relative: &str) -> LoadError {
    match common::runtime().load(&fixture(relative), &LoadOptions::default(), &|_| {}) {
        Ok(_) => panic!("{relative} should not load"),
        Err(error) => error,
    }
}

#[test]
fn syntax_error_names_file_and_line() {
    match load_error("broken/syntax") {
        LoadError::Syntax { location, message } => {
            let expected = format!("{}:9", fixture("broken/syntax").join("app.py").display());
            assert_eq!(location, expected);
            assert!(
                message.contains("invalid syntax") || message.contains("expected"),
                "{message}"
            );
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }
}

#[test]
fn import_error_names_file_and_line() {
    match load_error("broken/import_error") {
        error @ LoadError::Import { .. } => {
            let text = error.to_string();
            let expected = format!(
                "{}:3",
                fixture("broken/import_error").join("app.py").display()
            );
            assert!(text.starts_with(&expected), "{text}");
            assert!(
                text.contains("ModuleNotFoundError: No module named 'definitely_not_a_module'"),
                "{text}"
            );
        }
        other => panic!("expected an import error, got {other:?}"),
    }
}

#[test]
fn module_without_routes_is_refused() {
    assert!(matches!(
        load_error("broken/no_routes"),
        LoadError::NoRoutes { .. }
    ));
}

#[test]
fn route_naming_a_missing_parameter_is_refused() {
    match load_error("broken/bad_route") {
        LoadError::Route { location, message } => {
            assert!(location.ends_with("app.py:4"), "{location}");
            assert!(message.contains("no keyword parameter 'id'"), "{message}");
        }
        other => panic!("expected a route error, got {other:?}"),
    }
}

#[test]
fn handler_named_like_a_stdlib_module_is_refused() {
    let error = load_error("broken/stdlib_name/json.py");
    assert!(
        error.to_string().contains("taken by the standard library"),
        "{error}"
    );
}

#[test]
fn missing_paths_and_wrong_files_are_refused_before_building() {
    assert!(matches!(
        load_error("does/not/exist.py"),
        LoadError::NotFound { .. }
    ));
    assert!(matches!(
        load_error("api/data/greeting.txt"),
        LoadError::NotAHandler { .. }
    ));
    assert!(matches!(
        load_error("api/data"),
        LoadError::NoEntryModule { .. }
    ));
}

/// Functions in the shared compiled-code cache (`<cache>/code/<xx>/<hash>`).
fn code_cache_entries() -> usize {
    fs::read_dir(cache_dir().join("code"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|fan_out| fs::read_dir(fan_out.path()).ok())
        .map(|entries| entries.count())
        .sum()
}

#[tokio::test]
async fn cache_hit_skips_the_build_and_a_change_rebuilds() {
    let dir = tempfile::tempdir().unwrap();
    let handler_path = dir.path().join("svc.py");
    // A nonce keeps this run's key apart from earlier runs sharing the cache.
    let nonce = format!("# {}\n", dir.path().display());
    let source = |answer: &str| {
        format!("{nonce}from pycage import route\n\n@route('/')\ndef i():\n    return '{answer}'\n")
    };
    fs::write(&handler_path, source("one")).unwrap();
    // A runtime of its own, sharing the stdlib export with the other tests.
    let runtime = Runtime::new(Cache::new(cache_dir())).unwrap();
    let builds = RefCell::new(0);
    let count = |event: LoadEvent<'_>| {
        if let LoadEvent::Building { .. } = event {
            *builds.borrow_mut() += 1;
        }
    };

    let first = runtime
        .load(&handler_path, &LoadOptions::default(), &count)
        .unwrap();
    let second = runtime
        .load(&handler_path, &LoadOptions::default(), &count)
        .unwrap();
    assert!(!first.cache_hit());
    assert!(second.cache_hit());
    // The image is flattened: CPython's core modules were merged into one
    // (the per-request speed depends on it; see host/src/flatten).
    let meta = fs::read(first.app_dir().parent().unwrap().join("meta.json")).unwrap();
    let sealed: serde_json::Value = serde_json::from_slice(&meta).unwrap();
    // The manifest is sealed under the cache's key: its body, and a MAC.
    assert_eq!(sealed["mac"].as_str().unwrap().len(), 64, "{sealed}");
    let meta: serde_json::Value = serde_json::from_str(sealed["body"].as_str().unwrap()).unwrap();
    assert!(meta["merged_modules"].as_u64().unwrap() > 10, "{meta}");
    // The heap left the data segments for a memory image that instances
    // map instead of copying (see host/src/memory): megabytes of it.
    assert_eq!(meta["memory_image"], true, "{meta}");
    let image = first.app_dir().parent().unwrap().join("memory.img");
    assert!(fs::metadata(&image).unwrap().len() > 4 << 20);
    // The snapshot's objects were made immortal in it (see host/src/immortal.rs).
    assert!(
        meta["immortal_objects"].as_u64().unwrap() > 10_000,
        "{meta}"
    );
    assert_eq!(*builds.borrow(), 1, "the second load must not build");
    assert_eq!(ok(&get(&second, "/").await).body, b"one");

    fs::write(&handler_path, source("two")).unwrap();
    let compiled_before = code_cache_entries();
    let changed = runtime
        .load(&handler_path, &LoadOptions::default(), &count)
        .unwrap();
    assert!(!changed.cache_hit());
    assert_eq!(*builds.borrow(), 2);
    assert_eq!(ok(&get(&changed, "/").await).body, b"two");
    // The rebuild reused the functions Cranelift compiled for the first
    // build (libpython is the same) and added only a few new ones. Other
    // tests building at the same time add a few hundred each, far below.
    // (Saturating: a build elsewhere may have emptied a full cache meanwhile.)
    let added = code_cache_entries().saturating_sub(compiled_before);
    assert!(
        compiled_before > 10_000 && added < compiled_before / 5,
        "{compiled_before} compiled functions cached before the rebuild, {added} added by it"
    );
    // The user's directory was never written to.
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["svc.py"]);
}

#[tokio::test]
async fn a_single_file_handler_is_granted_only_that_file() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("secret.txt"), "sibling secret").unwrap();
    let handler_path = dir.path().join("peek.py");
    fs::write(
        &handler_path,
        "import os\nfrom pycage import route\n\n@route('/')\ndef i():\n    return sorted(os.listdir('/app'))\n",
    )
    .unwrap();
    let handler = common::runtime()
        .load(&handler_path, &LoadOptions::default(), &|_| {})
        .unwrap();
    let listing = common::json(ok(&get(&handler, "/").await));
    let names: Vec<_> = listing
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(names.contains(&"peek.py"), "{names:?}");
    assert!(!names.contains(&"secret.txt"), "{names:?}");
}

/// An entry whose compiled code was swapped is refused and rebuilt, never
/// loaded: its manifest's seal no longer matches.
#[tokio::test]
async fn a_tampered_entry_is_rebuilt_not_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let handler_path = dir.path().join("tamper.py");
    fs::write(
        &handler_path,
        format!(
            "# {}\nfrom pycage import route\n\n@route('/')\ndef i():\n    return 'genuine'\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let runtime = Runtime::new(Cache::new(cache_dir())).unwrap();
    let builds = RefCell::new(0);
    let count = |event: LoadEvent<'_>| {
        if let LoadEvent::Building { .. } = event {
            *builds.borrow_mut() += 1;
        }
    };
    let first = runtime
        .load(&handler_path, &LoadOptions::default(), &count)
        .unwrap();
    let entry = first.app_dir().parent().unwrap().to_path_buf();
    drop(first);
    // Same length, other bytes: only the seal can tell.
    let artifact = entry.join("sandbox.cwasm");
    let mut bytes = fs::read(&artifact).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    let swapped = entry.join("swapped");
    fs::write(&swapped, &bytes).unwrap();
    fs::rename(&swapped, &artifact).unwrap();
    let again = runtime
        .load(&handler_path, &LoadOptions::default(), &count)
        .unwrap();
    assert!(
        !again.cache_hit(),
        "a tampered entry must not be a cache hit"
    );
    assert_eq!(*builds.borrow(), 2);
    assert_eq!(ok(&get(&again, "/").await).body, b"genuine");

    // A manifest rewritten without the key is refused the same way.
    let meta = entry.join("meta.json");
    let text = fs::read_to_string(&meta).unwrap();
    let forged = text.replace("\\\"layers\\\":0", "\\\"layers\\\":1");
    assert_ne!(text, forged, "{text}");
    fs::write(&meta, forged).unwrap();
    let third = runtime
        .load(&handler_path, &LoadOptions::default(), &count)
        .unwrap();
    assert!(!third.cache_hit());
    assert_eq!(ok(&get(&third, "/").await).body, b"genuine");
}

/// A cache root that other users can write to, or that another user owns,
/// is refused: it could hold native code planted by someone else.
#[test]
fn a_cache_others_can_write_or_own_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    fs::create_dir(&shared).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
    let runtime = Runtime::new(Cache::new(&shared)).unwrap();
    match runtime.load(&fixture("hello/hello.py"), &LoadOptions::default(), &|_| {}) {
        Err(error @ LoadError::CacheNotPrivate { .. }) => {
            assert!(
                error.to_string().contains("writable by other users"),
                "{error}"
            )
        }
        Err(other) => panic!("expected a refusal, got {other}"),
        Ok(_) => panic!("a world-writable cache was used"),
    }
    // Nothing was written into it.
    assert_eq!(fs::read_dir(&shared).unwrap().count(), 0);

    // Owned by another user (only root can arrange that here).
    if std::env::var("USER").as_deref() == Ok("root") || is_root() {
        let theirs = dir.path().join("theirs");
        fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        fs::set_permissions(&theirs, fs::Permissions::from_mode(0o755)).unwrap();
        let runtime = Runtime::new(Cache::new(&theirs)).unwrap();
        match runtime.load(&fixture("hello/hello.py"), &LoadOptions::default(), &|_| {}) {
            Err(error @ LoadError::CacheNotPrivate { .. }) => {
                assert!(error.to_string().contains("owned by user 65534"), "{error}")
            }
            Err(other) => panic!("expected a refusal, got {other}"),
            Ok(_) => panic!("another user's cache was used"),
        }
    }
}

fn is_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// With `trust_file_stamps` (the CLI's), an unchanged handler is loaded from
/// the cache on its files' stamps alone (build::cache::index); any write is
/// seen, even one that keeps the size and puts the mtime back; a tree
/// changed too recently to trust its stamps is read again. Without it
/// (the default, and `serve`), every load reads.
#[tokio::test]
async fn an_unchanged_handler_loads_without_reading_its_files_and_any_write_is_seen() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let nonce = format!("# {}\n", root.display());
    let source = |answer: &str| {
        format!(
            "{nonce}from pycage import route\nfrom lib import VALUE\n\n@route('/')\ndef i():\n    return '{answer}' + VALUE\n"
        )
    };
    fs::write(root.join("app.py"), source("one")).unwrap();
    fs::create_dir(root.join("lib")).unwrap();
    fs::write(root.join("lib/__init__.py"), "VALUE = '-a'\n").unwrap();
    let mut config = RuntimeConfig::new(Cache::new(cache_dir()));
    config.trust_file_stamps = true;
    let runtime = Runtime::with_config(config).unwrap();
    let events = RefCell::new(Vec::new());
    let record = |event: LoadEvent<'_>| {
        let name = match event {
            LoadEvent::Building { .. } => "built",
            LoadEvent::Unchanged { .. } => "unchanged",
            _ => return,
        };
        events.borrow_mut().push(name);
    };
    let load = || {
        runtime
            .load(root, &LoadOptions::default(), &record)
            .unwrap()
    };

    // Just written: too recent to index, so the next load reads again.
    load();
    assert_eq!(*events.borrow(), ["built"]);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    load();
    assert_eq!(*events.borrow(), ["built"], "read again, a cache hit");
    // That read was old enough to index: this load only stats.
    let h = load();
    assert_eq!(*events.borrow(), ["built", "unchanged"]);
    assert_eq!(ok(&get(&h, "/").await).body, b"one-a");

    // Same size, mtime put back: the ctime still gives the write away.
    let lib = root.join("lib/__init__.py");
    let mtime = fs::metadata(&lib).unwrap().modified().unwrap();
    fs::write(&lib, "VALUE = '-b'\n").unwrap();
    fs::File::options()
        .write(true)
        .open(&lib)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let h = load();
    assert_eq!(events.borrow().last(), Some(&"built"));
    assert_eq!(ok(&get(&h, "/").await).body, b"one-b");
    // A file added is seen too.
    fs::write(root.join("extra.py"), "").unwrap();
    load();
    assert_eq!(events.borrow().last(), Some(&"built"));

    // A runtime that does not trust stamps never takes the short way.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    load();
    let untrusting = Runtime::new(Cache::new(cache_dir())).unwrap();
    events.borrow_mut().clear();
    untrusting
        .load(root, &LoadOptions::default(), &record)
        .unwrap();
    assert!(events.borrow().is_empty(), "{:?}", events.borrow());
}

/// The same with a virtualenv: its trees (site-packages and a `.pth`
/// directory) are stamped too, announced as granted on every load, and a
/// write in either is seen.
#[tokio::test]
async fn an_unchanged_handler_with_a_virtualenv_loads_from_stamps_and_sees_its_writes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("handler");
    let site = dir.path().join("venv/lib/python3.14/site-packages");
    let editable = dir.path().join("project");
    fs::create_dir_all(&root).unwrap();
    fs::create_dir_all(&site).unwrap();
    fs::create_dir_all(&editable).unwrap();
    fs::write(
        root.join("app.py"),
        format!(
            "# {}\nfrom pycage import route\nimport sitemod, projmod\n\n@route('/')\ndef i():\n    return sitemod.V + projmod.V\n",
            root.display()
        ),
    )
    .unwrap();
    fs::write(site.join("sitemod.py"), "V = 'a'\n").unwrap();
    fs::write(
        site.join("project.pth"),
        format!("{}\n", editable.display()),
    )
    .unwrap();
    fs::write(editable.join("projmod.py"), "V = 'x'\n").unwrap();
    let mut config = RuntimeConfig::new(Cache::new(cache_dir()));
    config.trust_file_stamps = true;
    let runtime = Runtime::with_config(config).unwrap();
    let events = RefCell::new(Vec::new());
    let record = |event: LoadEvent<'_>| {
        let name = match event {
            LoadEvent::Building { .. } => "built",
            LoadEvent::Unchanged { .. } => "unchanged",
            LoadEvent::Granting { .. } => "granting",
            _ => return,
        };
        events.borrow_mut().push(name);
    };
    let options = LoadOptions {
        venv: Some(dir.path().join("venv")),
        ..LoadOptions::default()
    };
    let load = || runtime.load(&root, &options, &record).unwrap();

    std::thread::sleep(std::time::Duration::from_millis(2100));
    load();
    let h = load();
    assert_eq!(
        *events.borrow(),
        [
            "granting",
            "granting",
            "built",
            "granting",
            "granting",
            "unchanged"
        ]
    );
    assert_eq!(ok(&get(&h, "/").await).body, b"ax");

    // A write in the .pth directory, then in site-packages, same size and
    // mtime put back each time: both seen.
    for (file, text, expected) in [
        (editable.join("projmod.py"), "V = 'y'\n", &b"ay"[..]),
        (site.join("sitemod.py"), "V = 'b'\n", &b"by"[..]),
    ] {
        let mtime = fs::metadata(&file).unwrap().modified().unwrap();
        fs::write(&file, text).unwrap();
        fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        let h = load();
        assert_eq!(events.borrow().last(), Some(&"built"));
        assert_eq!(ok(&get(&h, "/").await).body, expected);
    }
}
