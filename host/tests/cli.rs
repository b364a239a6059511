//! The `pycage` binary end to end: output, exit codes, messages.

mod common;

use std::process::{Command, Output};

use common::{cache_dir, fixture};

fn pycage(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pycage"))
        .args(args)
        .env("PYCAGE_CACHE_DIR", cache_dir())
        // An activated environment of the developer's would be granted too.
        .env_remove("VIRTUAL_ENV")
        .env_remove("CONDA_PREFIX")
        .output()
        .expect("running pycage")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn run_prints_the_body_and_exits_0() {
    let hello = fixture("hello/hello.py");
    let out = pycage(&[
        "run",
        hello.to_str().unwrap(),
        "--path",
        "/hello/ada",
        "-H",
        "User-Agent: demo",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), r#"{"hello": "ada", "agent": "demo"}"#);
}

#[test]
fn include_prints_status_line_and_headers() {
    let api = fixture("api");
    let out = pycage(&["run", api.to_str().unwrap(), "--path", "/tuple", "-i"]);
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    assert!(text.starts_with("HTTP/1.1 202 Accepted\r\n"), "{text}");
    assert!(
        text.contains("content-type: application/json\r\n"),
        "{text}"
    );
    assert!(text.ends_with("\r\n\r\n{\"created\": true}"), "{text}");
}

#[test]
fn post_with_data_query_and_method() {
    let api = fixture("api");
    let out = pycage(&[
        "run",
        api.to_str().unwrap(),
        "-X",
        "post",
        "--path",
        "/echo",
        "--query",
        "q=1",
        "-H",
        "Content-Type: application/json",
        "--data",
        "{\"k\": \"v\"}",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(body["method"], "POST");
    assert_eq!(body["query"], "q=1");
    assert_eq!(body["json"]["k"], "v");
}

#[test]
fn repeat_sends_to_fresh_instances() {
    let iso = fixture("isolation");
    let out = pycage(&[
        "run",
        iso.to_str().unwrap(),
        "--path",
        "/counter",
        "--repeat",
        "3",
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stdout(&out), r#"{"counter": 1}"#.repeat(3));
}

#[test]
fn not_found_exits_0_and_server_error_exits_1_with_traceback_on_stderr() {
    let api = fixture("api");
    let missing = pycage(&["run", api.to_str().unwrap(), "--path", "/missing"]);
    assert_eq!(missing.status.code(), Some(0));
    assert_eq!(stdout(&missing), r#"{"error":"Not Found"}"#);

    let boom = pycage(&["run", api.to_str().unwrap(), "--path", "/boom"]);
    assert_eq!(boom.status.code(), Some(1));
    let err = stderr(&boom);
    assert!(
        err.contains("pycage: handler raised an exception (ValueError: boom from the handler)"),
        "{err}"
    );
    assert!(
        err.contains("[guest traceback] Traceback (most recent call last):"),
        "{err}"
    );
}

#[test]
fn guest_output_is_prefixed_on_stderr_not_stdout() {
    let api = fixture("api");
    let out = pycage(&["run", api.to_str().unwrap(), "--path", "/print"]);
    assert_eq!(stdout(&out), "printed");
    let err = stderr(&out);
    assert!(err.contains("[guest stdout] hello from stdout\n"), "{err}");
    assert!(err.contains("[guest stderr] hello from stderr\n"), "{err}");
}

#[test]
fn load_errors_exit_2_name_the_line_and_print_nothing_on_stdout() {
    let broken = fixture("broken/syntax");
    let out = pycage(&["run", broken.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let expected = format!("{}:9: SyntaxError", broken.join("app.py").display());
    assert!(stderr(&out).contains(&expected), "{}", stderr(&out));

    let missing = pycage(&["run", "/nonexistent/handler.py"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(stderr(&missing).contains("handler not found: /nonexistent/handler.py"));
}

#[test]
fn usage_errors_exit_2() {
    let hello = fixture("hello/hello.py");
    let bad_header = pycage(&["run", hello.to_str().unwrap(), "-H", "no colon here"]);
    assert_eq!(bad_header.status.code(), Some(2));
    assert!(stderr(&bad_header).contains("must look like 'Name: value'"));
    let bad_path = pycage(&["run", hello.to_str().unwrap(), "--path", "relative"]);
    assert_eq!(bad_path.status.code(), Some(2));
    let unknown_flag = pycage(&["run", hello.to_str().unwrap(), "--bogus"]);
    assert_eq!(unknown_flag.status.code(), Some(2));
}

#[test]
fn routes_prints_the_table() {
    let api = fixture("api");
    let out = pycage(&["routes", api.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let items = text
        .lines()
        .find(|l| l.contains("/items/{item_id}"))
        .unwrap();
    assert!(items.starts_with("GET "), "{items}");
    assert!(items.ends_with("app.get_item"), "{items}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("POST,PUT") && l.contains("/items ")),
        "{text}"
    );
}

#[test]
fn build_fills_the_cache() {
    let hello = fixture("hello/hello.py");
    let out = pycage(&["build", hello.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("hello.py: "), "{}", stdout(&out));
    let again = pycage(&["build", hello.to_str().unwrap()]);
    assert!(
        stdout(&again).contains("already cached"),
        "{}",
        stdout(&again)
    );
}

#[test]
fn virtual_env_grants_its_packages_like_venv() {
    let venv = tempfile::tempdir().unwrap();
    let site = venv.path().join("lib/python3.11/site-packages");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(site.join("hostmod.py"), "ANSWER = 42\n").unwrap();
    let handler = tempfile::tempdir().unwrap();
    std::fs::write(
        handler.path().join("app.py"),
        "import hostmod\nfrom pycage import route\n@route('/')\ndef i():\n    return {'answer': hostmod.ANSWER}\n",
    )
    .unwrap();
    let run = |venv: Option<&std::path::Path>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_pycage"));
        command
            .args(["run", handler.path().to_str().unwrap()])
            .env("PYCAGE_CACHE_DIR", cache_dir())
            .env_remove("VIRTUAL_ENV")
            .env_remove("CONDA_PREFIX");
        if let Some(venv) = venv {
            command.env("VIRTUAL_ENV", venv);
        }
        command.output().unwrap()
    };
    let with = run(Some(venv.path()));
    assert_eq!(with.status.code(), Some(0), "{}", stderr(&with));
    assert_eq!(stdout(&with), r#"{"answer": 42}"#);
    // A grant made by the environment is always announced, --quiet or not.
    assert!(stderr(&with).contains("granting "), "{}", stderr(&with));
    let quiet = Command::new(env!("CARGO_BIN_EXE_pycage"))
        .args(["-q", "run", handler.path().to_str().unwrap()])
        .env("PYCAGE_CACHE_DIR", cache_dir())
        .env("VIRTUAL_ENV", venv.path())
        .output()
        .unwrap();
    assert_eq!(quiet.status.code(), Some(0), "{}", stderr(&quiet));
    assert!(stderr(&quiet).contains("granting "), "{}", stderr(&quiet));
    let without = run(None);
    assert_eq!(without.status.code(), Some(2));
    assert!(
        stderr(&without).contains("No module named 'hostmod'"),
        "{}",
        stderr(&without)
    );

    // An activated conda environment is honoured the same way; conda's
    // base environment (active in every shell) is not.
    let conda = |name: &str| {
        Command::new(env!("CARGO_BIN_EXE_pycage"))
            .args(["run", handler.path().to_str().unwrap()])
            .env("PYCAGE_CACHE_DIR", cache_dir())
            .env_remove("VIRTUAL_ENV")
            .env("CONDA_PREFIX", venv.path())
            .env("CONDA_DEFAULT_ENV", name)
            .output()
            .unwrap()
    };
    let project = conda("shop");
    assert_eq!(project.status.code(), Some(0), "{}", stderr(&project));
    assert_eq!(stdout(&project), r#"{"answer": 42}"#);
    assert!(
        stderr(&project).contains("granting "),
        "{}",
        stderr(&project)
    );
    let base = conda("base");
    assert_eq!(base.status.code(), Some(2), "{}", stderr(&base));
    assert!(!stderr(&base).contains("granting "), "{}", stderr(&base));
}

#[test]
fn declared_dependencies_without_pip_or_uv_name_what_to_install() {
    let handler = tempfile::tempdir().unwrap();
    std::fs::write(
        handler.path().join("app.py"),
        "from pycage import route\n@route('/')\ndef i():\n    return 'x'\n",
    )
    .unwrap();
    std::fs::write(
        handler.path().join("pyproject.toml"),
        "[project]\nname = 'x'\nversion = '0'\ndependencies = ['idna==3.10']\n",
    )
    .unwrap();
    let empty_path = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pycage"))
        .args(["build", handler.path().to_str().unwrap()])
        .env("PYCAGE_CACHE_DIR", cache.path())
        .env("PATH", empty_path.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("pyproject.toml: declares dependencies"),
        "{err}"
    );
    assert!(
        err.contains("its own pip") && err.contains("python3") && err.contains("install"),
        "{err}"
    );
    assert!(stdout(&out).is_empty());
}

#[test]
fn an_image_already_built_loads_without_any_installer_or_layer() {
    let deps = fixture("deps");
    let cache = tempfile::tempdir().unwrap();
    let with_path = |args: &[&str], path: Option<&std::path::Path>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_pycage"));
        command
            .args(args)
            .env("PYCAGE_CACHE_DIR", cache.path())
            .env_remove("VIRTUAL_ENV");
        if let Some(path) = path {
            command.env("PATH", path);
        }
        command.output().unwrap()
    };
    let built = with_path(&["build", deps.to_str().unwrap()], None);
    assert_eq!(built.status.code(), Some(0), "{}", stderr(&built));
    // The image holds its own copy of the layer: neither the shared layer
    // nor pip is needed to load it again.
    std::fs::remove_dir_all(cache.path().join("layers")).unwrap();
    let empty_path = tempfile::tempdir().unwrap();
    let out = with_path(
        &[
            "run",
            deps.to_str().unwrap(),
            "--path",
            "/domain/xn--bcher-kva.example",
        ],
        Some(empty_path.path()),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), r#"{"ascii": "xn--bcher-kva.example"}"#);
}

/// Text that a tenant or its guest chose (file names, exception messages,
/// tracebacks, route tables) reaches the terminal escaped: no terminal
/// control sequence, no forged line of pycage's own, no bidi override.
#[test]
fn guest_text_never_reaches_the_terminal_raw() {
    let forged = "\\x1b[2J\\rpycage: granting /etc (read-only)\\n\\u202eevil\\u2028INFO pycage::request tenant=other";
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("app.py"),
        format!(
            "# {nonce}\nraise RuntimeError(\"{forged}\")\n",
            nonce = dir.path().display()
        ),
    )
    .unwrap();
    // A tenant-chosen file name with an escape in it, skipped as a link.
    std::os::unix::fs::symlink("/etc/passwd", dir.path().join("x\u{1b}[31mred")).unwrap();
    let out = pycage(&["run", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert_clean(&err);
    assert!(err.contains("RuntimeError"), "{err}");
    assert!(err.contains("x\\u{1b}[31mred"), "{err}");

    let routes = tempfile::tempdir().unwrap();
    std::fs::write(
        routes.path().join("app.py"),
        format!(
            "# {nonce}\nfrom pycage import route\n\ndef f():\n    return 'x'\n\n\
             f.__qualname__ = '\\x1b]0;title\\x07\\u202eevil'\n\
             route('/\\u202ea\\nb')(f)\n",
            nonce = routes.path().display()
        ),
    )
    .unwrap();
    let out = pycage(&["routes", routes.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let table = stdout(&out);
    assert_clean(&table);
    assert_eq!(table.lines().count(), 1, "{table}");
}

/// Paths a tenant chose reach the terminal escaped in load errors too: a
/// handler that is a link whose target holds escapes, and a native module
/// whose file name does.
#[test]
fn tenant_chosen_paths_in_load_errors_are_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("link-h");
    std::os::unix::fs::symlink("/x\u{1b}[31m\u{1b}]0;T\u{7}\npycage: forged", &link).unwrap();
    let out = pycage(&["run", link.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert_clean(&stderr(&out));
    assert!(stderr(&out).contains("symbolic link"), "{}", stderr(&out));

    let native = tempfile::tempdir().unwrap();
    std::fs::write(native.path().join("app.py"), "from pycage import route\n").unwrap();
    std::fs::write(
        native
            .path()
            .join("\u{1b}]0;PWNED\u{7}\u{1b}[2J\npycage: ok.so"),
        b"\x7fELF",
    )
    .unwrap();
    let out = pycage(&["run", native.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert_clean(&stderr(&out));
    assert!(
        stderr(&out).contains("native extension"),
        "{}",
        stderr(&out)
    );
}

/// Builds work whatever the user's umask (a group-writable default is
/// common), and what they write into the cache is private all the same.
#[test]
fn a_permissive_umask_neither_breaks_builds_nor_opens_the_cache() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("app.py"),
        format!(
            "# {}\nfrom pycage import route\n@route('/')\ndef i():\n    return 'umask ok'\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_pycage"));
    command
        .args(["run", dir.path().to_str().unwrap()])
        .env("PYCAGE_CACHE_DIR", cache_dir())
        .env_remove("VIRTUAL_ENV");
    // SAFETY: umask only, between fork and exec.
    unsafe {
        command.pre_exec(|| {
            libc::umask(0o002);
            Ok(())
        });
    }
    let out = command.output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "umask ok");
    // Every file and directory of every entry is private.
    fn check(path: &std::path::Path) {
        let meta = std::fs::symlink_metadata(path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o022, 0, "{}", path.display());
        if meta.is_dir() {
            for entry in std::fs::read_dir(path).unwrap().flatten() {
                // Other tests' builds in progress (removed when done).
                if !entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with(".building-")
                {
                    check(&entry.path());
                }
            }
        }
    }
    check(&cache_dir().join("handlers"));
}

fn assert_clean(text: &str) {
    for bad in ['\u{1b}', '\r', '\u{202e}', '\u{2028}', '\u{7}'] {
        assert!(!text.contains(bad), "{bad:?} in:\n{text}");
    }
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("pycage: granting") || l.starts_with("INFO")),
        "a forged line in:\n{text}"
    );
}

/// With no cache directory configured there is no fallback into a shared
/// temporary directory.
#[test]
fn no_cache_directory_means_an_error_not_a_temp_dir() {
    let out = Command::new(env!("CARGO_BIN_EXE_pycage"))
        .args(["run", fixture("hello/hello.py").to_str().unwrap()])
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("PYCAGE_CACHE_DIR"),
        "{}",
        stderr(&out)
    );
}
