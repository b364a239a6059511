//! Handler dependencies with real packages from PyPI: a pyproject.toml layer,
//! vendor/, a virtualenv with an editable (.pth) install, and native-only
//! packages refused at build time. Needs `python3 -m pip` and PyPI.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{fixture, get, json, ok, runtime};
use pycage::{Cache, LoadError, LoadOptions, Runtime};

fn python(args: &[&str], cwd: &Path) {
    python_in("python3", args, cwd);
}

/// A minimal handler directory whose pyproject.toml declares `dependency`.
fn handler_declaring(dependency: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("app.py"),
        "from pycage import route\n@route('/')\ndef i():\n    return 'x'\n",
    )
    .unwrap();
    fs::write(
        dir.path().join("pyproject.toml"),
        format!("[project]\nname = \"x\"\nversion = \"0\"\ndependencies = [{dependency:?}]\n"),
    )
    .unwrap();
    dir
}

/// A copy of a fixture directory to modify.
fn copy_fixture(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let from = fixture(name);
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        for entry in fs::read_dir(from.join(&relative)).unwrap() {
            let entry = entry.unwrap();
            let rel = relative.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                fs::create_dir_all(dir.path().join(&rel)).unwrap();
                pending.push(rel);
            } else {
                fs::copy(entry.path(), dir.path().join(&rel)).unwrap();
            }
        }
    }
    dir
}

fn load(path: &Path, options: &LoadOptions) -> Result<pycage::Handler, LoadError> {
    runtime().load(path, options, &|_| {})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyproject_and_vendor_packages_import_at_build_time_and_lazily() {
    let handler = common::handler("deps");

    let where_ = json(ok(&get(&handler, "/where").await));
    assert_eq!(where_["versions"]["attrs"], "25.3.0");
    assert_eq!(
        where_["versions"]["six"], "1.17.0",
        "python-dateutil brought six"
    );
    // The layer is mounted after the handler; vendor/ is part of the handler.
    assert_eq!(where_["files"]["attr"], "/2/attr/__init__.py");
    assert_eq!(where_["files"]["six"], "/2/six.py");
    assert_eq!(
        where_["files"]["slugify_lite"],
        "/1/vendor/slugify_lite/__init__.py"
    );
    assert_eq!(where_["python"], pycage::GUEST_PYTHON_VERSION);
    assert_eq!(where_["fresh"], true);
    assert_eq!(where_["bytecode"], true);

    // attrs (module level) + dateutil (lazy) + the vendored package.
    let event = json(ok(&get(
        &handler,
        "/event?title=Hello%20World&when=2024-02-29T12:00:00Z",
    )
    .await));
    assert_eq!(event["slug"], "hello-world");
    assert_eq!(event["when"], "2024-02-29T12:00:00+00:00");
    assert_eq!(event["weekday"], "Thursday");

    let domain = json(ok(&get(&handler, "/domain/b%C3%BCcher.example").await));
    assert_eq!(domain["ascii"], "xn--bcher-kva.example");

    // Neither the shared layer nor vendor/ can be changed by the guest...
    let tamper = json(ok(&get(&handler, "/tamper").await));
    assert_eq!(tamper["layer"], "PermissionError");
    assert_eq!(tamper["vendor"], "PermissionError");
    // ...and the next request is served as before.
    assert_eq!(
        json(ok(&get(&handler, "/where").await))["versions"]["attrs"],
        "25.3.0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_dependencies_hit_the_cache_and_a_changed_one_rebuilds() {
    // Its own cache, so that the first load here is a real miss.
    let cache = tempfile::tempdir().unwrap();
    let runtime = Runtime::new(Cache::new(cache.path())).unwrap();
    let dir = copy_fixture("deps");
    let options = LoadOptions::default();

    let first = runtime.load(dir.path(), &options, &|_| {}).unwrap();
    assert!(!first.cache_hit());
    let again = runtime.load(dir.path(), &options, &|_| {}).unwrap();
    assert!(again.cache_hit(), "nothing changed");

    let pyproject = dir.path().join("pyproject.toml");
    let text = fs::read_to_string(&pyproject).unwrap();
    fs::write(&pyproject, text.replace("attrs==25.3.0", "attrs==25.1.0")).unwrap();
    let changed = runtime.load(dir.path(), &options, &|_| {}).unwrap();
    assert!(!changed.cache_hit(), "a changed dependency rebuilds");
    let versions = json(ok(&get(&changed, "/where").await))["versions"].clone();
    assert_eq!(versions["attrs"], "25.1.0");
    assert_eq!(
        json(ok(&get(&first, "/where").await))["versions"]["attrs"],
        "25.3.0",
        "the earlier image keeps its own layer"
    );
    let layers = fs::read_dir(cache.path().join("layers")).unwrap().count();
    assert_eq!(layers, 2, "one layer per distinct requirement list");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_virtualenv_with_an_editable_install_and_pth_files() {
    let work = tempfile::tempdir().unwrap();
    let venv = work.path().join("venv");
    python(&["-m", "venv", venv.to_str().unwrap()], work.path());
    let pip = venv.join("bin/python");
    let pip = pip.to_str().unwrap();
    // An editable install of a src-layout project: setuptools records it as
    // a path in a .pth file pointing outside site-packages.
    let project = work.path().join("greetlib");
    fs::create_dir_all(project.join("src/greetlib")).unwrap();
    fs::write(
        project.join("pyproject.toml"),
        "[build-system]\nrequires = [\"setuptools>=61\"]\nbuild-backend = \"setuptools.build_meta\"\n\
         [project]\nname = \"greetlib\"\nversion = \"0.1.0\"\n",
    )
    .unwrap();
    fs::write(
        project.join("src/greetlib/__init__.py"),
        "def greet(name):\n    return f'hello, {name}'\n",
    )
    .unwrap();
    let quiet = ["-m", "pip", "install", "-q", "--disable-pip-version-check"];
    let editable = [&quiet[..], &["-e", project.to_str().unwrap()]].concat();
    python_in(pip, &editable, work.path());
    python_in(pip, &[&quiet[..], &["idna==3.10"]].concat(), work.path());

    let handler_dir = work.path().join("handler");
    fs::create_dir(&handler_dir).unwrap();
    fs::write(
        handler_dir.join("app.py"),
        "import idna\nfrom pycage import route\n\n\
         @route('/')\ndef index():\n    import greetlib\n    \
         return {'greet': greetlib.greet('ada'), 'idna': idna.__version__, 'from': greetlib.__file__}\n",
    )
    .unwrap();

    let options = LoadOptions {
        venv: Some(venv.clone()),
        ..LoadOptions::default()
    };
    let handler = load(&handler_dir, &options).unwrap();
    let body = json(ok(&get(&handler, "/").await));
    assert_eq!(body["greet"], "hello, ada");
    assert_eq!(body["idna"], "3.10");
    // site-packages is /2, the editable project's src/ is /3.
    assert_eq!(body["from"], "/3/greetlib/__init__.py");

    // Changing the editable project's source changes the image.
    fs::write(
        project.join("src/greetlib/__init__.py"),
        "def greet(name):\n    return f'hi, {name}'\n",
    )
    .unwrap();
    let rebuilt = load(&handler_dir, &options).unwrap();
    assert!(!rebuilt.cache_hit());
    assert_eq!(json(ok(&get(&rebuilt, "/").await))["greet"], "hi, ada");

    // Without the venv the same handler cannot import idna: nothing leaks in.
    let error = load(&handler_dir, &LoadOptions::default())
        .map(|_| ())
        .unwrap_err();
    assert!(
        error.to_string().contains("No module named 'idna'"),
        "{error}"
    );
}

fn python_in(python: &str, args: &[&str], cwd: &Path) {
    let out = Command::new(python)
        .args(args)
        .current_dir(cwd)
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        .output()
        .unwrap_or_else(|e| panic!("{python}: {e}"));
    assert!(
        out.status.success(),
        "{python} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_package_with_only_native_wheels_is_refused_naming_the_extension() {
    // pydantic needs pydantic-core, whose wheels are all native.
    let dir = handler_declaring("pydantic==2.13.4");
    let error = load(dir.path(), &LoadOptions::default())
        .map(|_| ())
        .unwrap_err();
    match &error {
        LoadError::NativeOnly {
            requirement,
            modules,
            source_build,
            ..
        } => {
            assert!(requirement.starts_with("pydantic-core"), "{error}");
            assert!(modules.contains("pydantic_core._pydantic_core"), "{error}");
            // Its sdist needs maturin (a Rust build tool, native wheels
            // only) to build: that is said too.
            assert!(source_build.contains("maturin"), "{error}");
        }
        other => panic!("expected NativeOnly, got {other:?}"),
    }
    assert!(error.to_string().contains("pyproject.toml"), "{error}");
}

#[test]
fn a_native_extension_in_vendor_is_refused_naming_package_and_module() {
    let dir = copy_fixture("deps");
    fs::remove_file(dir.path().join("pyproject.toml")).unwrap();
    // What `pip install --target vendor` does for the host's platform.
    python(
        &[
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "--no-deps",
            "--only-binary=:all:",
            "--target",
            "vendor",
            "pydantic-core==2.46.4",
        ],
        dir.path(),
    );
    let error = load(dir.path(), &LoadOptions::default())
        .map(|_| ())
        .unwrap_err();
    match &error {
        LoadError::NativeExtension {
            path,
            package,
            module,
        } => {
            assert_eq!(module, "pydantic_core._pydantic_core");
            assert_eq!(package.replace('-', "_"), "pydantic_core");
            assert!(
                path.starts_with(dir.path().join("vendor/pydantic_core")),
                "{error}"
            );
        }
        other => panic!("expected NativeExtension, got {other:?}"),
    }
}

#[test]
fn requirements_that_are_not_index_names_are_refused_before_any_install() {
    for bad in [
        "evil @ https://example.com/evil.whl",
        "../../etc",
        "--index-url=http://x",
    ] {
        let dir = handler_declaring(bad);
        let error = load(dir.path(), &LoadOptions::default())
            .map(|_| ())
            .unwrap_err();
        assert!(
            matches!(error, LoadError::Pyproject { .. }),
            "{bad}: {error:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_without_dependencies_cannot_reach_another_tenants_layer() {
    // The deps fixture's layer is in the same cache and mounted at /2 for it.
    let with_layer = common::handler("deps");
    assert_eq!(
        json(ok(&get(&with_layer, "/where").await))["files"]["six"],
        "/2/six.py"
    );
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("app.py"),
        "import os\nfrom pycage import route\n\n\
         def attempt(f):\n    try:\n        return repr(f())\n    except OSError as e:\n        return type(e).__name__\n\n\
         @route('/')\ndef i():\n    return {'read': attempt(lambda: open('/2/six.py').read(10)),\n            \
         'list': attempt(lambda: os.listdir('/2')),\n            \
         'cache': attempt(lambda: os.listdir('/app/../layers'))}\n",
    )
    .unwrap();
    let handler = load(dir.path(), &LoadOptions::default()).unwrap();
    let body = json(ok(&get(&handler, "/").await));
    for (what, outcome) in body.as_object().unwrap() {
        let outcome = outcome.as_str().unwrap();
        assert!(
            outcome.ends_with("Error"),
            "{what} should have failed: {outcome}"
        );
    }
    assert_eq!(
        json(ok(&get(&with_layer, "/where").await))["versions"]["attrs"],
        "25.3.0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packages_without_a_pure_wheel_are_built_from_source_inside_the_sandbox() {
    // markupsafe, pyyaml and msgpack publish native wheels and an sdist
    // with a pure-Python fallback: each is built in the sandbox, where no
    // C extension can compile.
    let cache = tempfile::tempdir().unwrap();
    let runtime = Runtime::new(Cache::new(cache.path())).unwrap();
    let building = std::sync::Mutex::new(Vec::new());
    let handler = runtime
        .load(&fixture("sdists"), &LoadOptions::default(), &|event| {
            if let pycage::LoadEvent::BuildingFromSource { requirement } = event {
                building.lock().unwrap().push(requirement.to_owned());
            }
        })
        .unwrap();
    let mut built = building.into_inner().unwrap();
    built.sort();
    assert_eq!(built.len(), 3, "{built:?}");
    assert!(built[0].starts_with("markupsafe==3.0.3"), "{built:?}");
    assert!(built[1].starts_with("msgpack==1.1.2"), "{built:?}");
    assert!(built[2].starts_with("pyyaml==6.0.3"), "{built:?}");

    let packed = json(ok(&get(&handler, "/msgpack").await));
    assert_eq!(packed["implementation"], "msgpack.fallback");
    assert_eq!(
        packed["back"],
        serde_json::json!({"n": [1, 2, 3], "s": "é"})
    );
    assert_eq!(packed["packed"], "82a16e93010203a173a2c3a9");
    let escaped = json(ok(&get(&handler, "/escape?s=%3Ca%26b%3E").await));
    assert_eq!(escaped["escaped"], "&lt;a&amp;b&gt;");
    assert_eq!(escaped["speedups"], "markupsafe", "the pure-Python escape");
    let parsed = common::send(
        &handler,
        pycage::Request::new("POST", "/yaml")
            .unwrap()
            .with_body(b"a: [1, 2]\nb: {c: true}\n".to_vec()),
    )
    .await;
    assert_eq!(
        json(ok(&parsed)),
        serde_json::json!({"parsed": {"a": [1, 2], "b": {"c": true}}, "libyaml": false})
    );

    // The layer records what was built, and the wheels are kept: another
    // handler needing one of them does not build it again.
    let layer = fs::read_dir(cache.path().join("layers"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.join("layer.json").is_file())
        .unwrap();
    let record: serde_json::Value =
        serde_json::from_slice(&fs::read(layer.join("layer.json")).unwrap()).unwrap();
    let from_source = record["built_from_source"].as_array().unwrap();
    assert_eq!(from_source.len(), 3, "{record}");
    assert!(
        from_source
            .iter()
            .all(|w| w.as_str().unwrap().ends_with("-py3-none-any.whl")),
        "{record}"
    );
    let again = handler_declaring("msgpack==1.1.2");
    let rebuilt = std::sync::atomic::AtomicBool::new(false);
    runtime
        .load(again.path(), &LoadOptions::default(), &|event| {
            if matches!(event, pycage::LoadEvent::BuildingFromSource { .. }) {
                rebuilt.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        })
        .unwrap();
    assert!(!rebuilt.into_inner(), "the kept wheel was reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requirements_are_resolved_for_the_guest_python_not_the_host() {
    // networkx 3.7 requires Python >= 3.12 (the host's may be older);
    // markers are evaluated as CPython 3.14 on WASI.
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("app.py"),
        "import importlib.util, sys\n\
         from pycage import route\n\
         @route('/')\n\
         def i():\n\
         \x20   import networkx\n\
         \x20   g = networkx.path_graph(4)\n\
         \x20   return {'networkx': networkx.__version__,\n\
         \x20           'path': networkx.shortest_path_length(g, 0, 3),\n\
         \x20           'six': importlib.util.find_spec('six') is not None,\n\
         \x20           'idna': importlib.util.find_spec('idna') is not None}\n",
    )
    .unwrap();
    fs::write(
        dir.path().join("pyproject.toml"),
        "[project]\nname = \"x\"\nversion = \"0\"\ndependencies = [\n\
         \"networkx==3.7\",\n\
         \"six==1.17.0; sys_platform == 'wasi' and python_version >= '3.14'\",\n\
         \"idna==3.10; sys_platform == 'linux'\",\n]\n",
    )
    .unwrap();
    let handler = load(dir.path(), &LoadOptions::default()).unwrap();
    assert_eq!(
        json(ok(&get(&handler, "/").await)),
        serde_json::json!({"networkx": "3.7", "path": 3, "six": true, "idna": false})
    );
}

/// A package's metadata can name a direct URL or a local path, which pip
/// would build on the host even with --only-binary. pycage's pip refuses
/// it before anything is fetched or run. The index here is a directory
/// (`file://`) holding one wheel whose `Requires-Dist` points at a local
/// project with a build backend that would leave a mark.
#[test]
fn a_dependency_naming_a_url_or_path_is_refused_and_nothing_is_built_on_the_host() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path();
    let mark = root.join("PWNED");
    let project = root.join("evilproj");
    fs::create_dir_all(&project).unwrap();
    fs::write(
        project.join("pyproject.toml"),
        "[build-system]\nrequires = []\nbuild-backend = \"evil\"\nbackend-path = [\".\"]\n",
    )
    .unwrap();
    fs::write(
        project.join("evil.py"),
        format!(
            "open({:?}, 'w').write('host code ran')\n",
            mark.to_str().unwrap()
        ),
    )
    .unwrap();
    let index = root.join("index");
    let script = r#"
import base64, hashlib, os, sys, zipfile
index, target = sys.argv[1], sys.argv[2]
os.makedirs(os.path.join(index, "urldep"))
name = "urldep-1.0-py3-none-any.whl"
files = {
    "urldep/__init__.py": b"",
    "urldep-1.0.dist-info/METADATA": (
        "Metadata-Version: 2.1\nName: urldep\nVersion: 1.0\n"
        f"Requires-Dist: evil @ file://{target}\n"
    ).encode(),
    "urldep-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = []
with zipfile.ZipFile(os.path.join(index, "urldep", name), "w") as z:
    for path, data in files.items():
        z.writestr(path, data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append("urldep-1.0.dist-info/RECORD,,")
    z.writestr("urldep-1.0.dist-info/RECORD", "\n".join(record) + "\n")
with open(os.path.join(index, "urldep", "index.html"), "w") as f:
    f.write(f'<a href="{name}">{name}</a>\n')
"#;
    let made = Command::new("python3")
        .args([
            "-c",
            script,
            index.to_str().unwrap(),
            project.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(made.success());
    let handler = handler_declaring("urldep==1.0");
    let cache = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pycage"))
        .args(["build", handler.path().to_str().unwrap()])
        .env("PYCAGE_CACHE_DIR", cache.path())
        .env("PIP_INDEX_URL", format!("file://{}", index.display()))
        .env_remove("VIRTUAL_ENV")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("refused evil @ file://"),
        "pip's refusal is shown: {stderr}"
    );
    assert!(
        !mark.exists(),
        "the project's build backend ran on the host"
    );
    // The same handler with a plain dependency still builds (the refusal
    // is of that requirement, not of installing).
    let fine = handler_declaring("six==1.17.0");
    let out = Command::new(env!("CARGO_BIN_EXE_pycage"))
        .args(["build", fine.path().to_str().unwrap()])
        .env("PYCAGE_CACHE_DIR", cache.path())
        .env_remove("VIRTUAL_ENV")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
