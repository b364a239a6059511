//! `pycage export`, served by other hosts: the exported component runs on
//! `examples/wasi_http_host` (wasmtime-wasi-http 46.0.3, one Store per
//! request, exactly as `wasmtime serve -Scli` links it; or Spin 3.x's
//! interfaces with `--profile spin`) and answers like `pycage serve`.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use pycage::config::TenantConfig;
use pycage::export::{Export, ExportError, ExportTarget};
use pycage::grants::{AllowedHost, VariableSource, VariableSpec};

use common::client::{self, Reply};
use common::{cache_dir, fixture, runtime};

/// A server process, killed when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawn `command` and wait for `marker` followed by the address on its
/// stderr; its later output is drained (and echoed, for failures).
fn spawn(mut command: Command, marker: &'static str) -> Server {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split(marker).nth(1) {
                let addr = rest
                    .trim_end_matches('/')
                    .split(['/', ' '])
                    .next()
                    .unwrap()
                    .to_owned();
                let _ = tx.send(Ok(addr));
            }
            eprintln!("  | {line}");
            lines.push(line);
        }
        let _ = tx.send(Err(lines.join("\n")));
    });
    let addr = match rx.recv_timeout(Duration::from_secs(600)) {
        Ok(Ok(addr)) => addr,
        Ok(Err(output)) => panic!("the server exited before listening:\n{output}"),
        Err(_) => panic!("the server did not report its address"),
    };
    Server {
        child,
        addr: addr.parse().unwrap(),
    }
}

/// `pycage serve HANDLER` on a free port.
fn pycage_serve(handler: &Path) -> Server {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pycage"));
    command
        .env("PYCAGE_CACHE_DIR", cache_dir())
        .arg("serve")
        .arg(handler)
        .args(["--listen", "127.0.0.1:0"]);
    spawn(command, "listening on http://")
}

/// The peer host, built by `cargo test` with the examples.
fn peer_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let peer = dir.join("examples").join("wasi_http_host");
    assert!(
        peer.is_file(),
        "{} is missing: `cargo test` builds it (cargo build --example wasi_http_host)",
        peer.display()
    );
    peer
}

/// Run the export's own command line (`serve.sh`) with the peer host in
/// place of `wasmtime serve`, on a free port, plus `extra` flags.
fn serve_export(export: &Export, extra: &[&str]) -> Server {
    let words: Vec<String> = shell_words(&export.command);
    assert_eq!(&words[..2], ["wasmtime", "serve"], "{}", export.command);
    let mut args: Vec<String> = words[2..].to_vec();
    let addr = args.iter().position(|w| w == "--addr").unwrap();
    args[addr + 1] = "127.0.0.1:0".into();
    let component = args.pop().unwrap();
    let mut command = Command::new(peer_binary());
    command
        .current_dir(&export.dir)
        .args(&args)
        .args(extra)
        .arg(component);
    spawn(command, "Serving HTTP on http://")
}

/// Split a command line the way `sh` would for what `pycage export` writes
/// (plain words, single quotes, `'\''`, and double-quoted words, taken as
/// written).
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    // The quote character a quoted part opened with.
    let mut quoted: Option<char> = None;
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' if quoted.is_none() => {
                quoted = Some(c);
                in_word = true;
            }
            _ if quoted == Some(c) => quoted = None,
            '\\' if quoted.is_none() => {
                word.extend(chars.next());
                in_word = true;
            }
            ' ' if quoted.is_none() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            _ => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// Export into a directory of its own per `name` and target (tests that
/// run at once must use different names: a test may be serving one while
/// another would replace it).
fn export(name: &str, tenant: TenantConfig, target: ExportTarget) -> Export {
    static LOCK: OnceLock<std::sync::Mutex<()>> = OnceLock::new();
    let _serial = LOCK.get_or_init(Default::default).lock();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("exports")
        .join(format!("{name}-{}", target.name()));
    runtime()
        .export(&tenant, target, &dir, &|_| {})
        .unwrap_or_else(|e| panic!("exporting {name}: {e}"))
}

/// A request for `example.test` on a new connection, and the reply.
async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    client::send_with_headers(addr, method, "example.test", path, headers, body.to_vec())
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// The reply without what differs by design: the date, pycage's request
/// id, and the order of JSON object keys (a handler that echoes request
/// headers sees them in each server's order).
fn comparable(reply: &Reply) -> (u16, Vec<(String, String)>, String) {
    let mut headers: Vec<(String, String)> = reply
        .headers
        .iter()
        .filter(|(name, _)| !matches!(name.as_str(), "date" | "x-request-id"))
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    headers.sort();
    let body = match serde_json::from_slice::<serde_json::Value>(&reply.body) {
        Ok(json) => json.to_string(),
        Err(_) => reply.text(),
    };
    (reply.status, headers, body)
}

type Case = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static [u8],
);

/// Send every case to both servers; they must answer the same.
async fn same_answers(pycage: SocketAddr, peer: SocketAddr, cases: &[Case]) -> Vec<Reply> {
    let mut replies = Vec::new();
    for (method, path, headers, body) in cases {
        let ours = send(pycage, method, path, headers, body).await;
        let theirs = send(peer, method, path, headers, body).await;
        assert_eq!(
            comparable(&ours),
            comparable(&theirs),
            "{method} {path}: pycage serve (left) and the export (right) differ"
        );
        replies.push(theirs);
    }
    replies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_handlers_answer_like_pycage_serve() {
    let hello = fixture("hello/hello.py");
    let api = fixture("api");
    let hello_export = export(
        "hello",
        TenantConfig::new("hello", &hello),
        ExportTarget::WasiHttp,
    );
    let api_export = export(
        "api",
        TenantConfig::new("api", &api),
        ExportTarget::WasiHttp,
    );
    assert!(hello_export.component.is_file());
    assert!(
        api_export
            .mounts
            .iter()
            .any(|m| m.destination == "/app" && m.source == "files/app")
    );

    let (ours, theirs) = (pycage_serve(&hello), serve_export(&hello_export, &[]));
    let replies = same_answers(
        ours.addr,
        theirs.addr,
        &[
            ("GET", "/hello/ada", &[("user-agent", "export-test")], b""),
            ("GET", "/", &[], b""),
            ("POST", "/hello/ada", &[], b""),
            ("HEAD", "/hello/ada", &[], b""),
        ],
    )
    .await;
    assert_eq!(replies[0].json()["hello"], "ada");
    assert_eq!(replies[0].json()["agent"], "export-test");
    assert_eq!(replies[1].status, 404);
    assert_eq!(replies[2].status, 405);
    assert!(replies[3].body.is_empty());
    drop((ours, theirs));

    let (ours, theirs) = (pycage_serve(&api), serve_export(&api_export, &[]));
    let echo = br#"{"a": [1, 2], "s": "\u00e9"}"#;
    let big = vec![b'x'; 300_000];
    let big: &'static [u8] = Box::leak(big.into_boxed_slice());
    let replies = same_answers(
        ours.addr,
        theirs.addr,
        &[
            ("GET", "/", &[], b""),
            ("GET", "/items/42?full=1", &[], b""),
            ("GET", "/items/new", &[], b""),
            ("GET", "/missing", &[], b""),
            ("HEAD", "/missing", &[], b""),
            ("GET", "/files/%zz", &[], b""),
            ("GET", "/files/%ff", &[], b""),
            ("DELETE", "/items/3", &[], b""),
            ("HEAD", "/items/3", &[], b""),
            (
                "POST",
                "/echo?x=1&x=2",
                &[("content-type", "application/json"), ("x-custom", "v")],
                echo,
            ),
            ("POST", "/bytes", &[], big),
            ("GET", "/files/a/b/../c", &[], b""),
            ("GET", "/unicode/caf%C3%A9", &[], b""),
            ("GET", "/data", &[], b""),
            ("GET", "/lazy", &[], b""),
            ("GET", "/counter", &[], b""),
            ("GET", "/counter", &[], b""),
            ("GET", "/tuple", &[], b""),
            ("DELETE", "/nothing", &[], b""),
            ("GET", "/teapot", &[], b""),
            ("GET", "/boom", &[], b""),
            ("GET", "/bad-return", &[], b""),
        ],
    )
    .await;
    let echoed = replies[9].json();
    assert_eq!(echoed["json"]["s"], "é");
    assert_eq!(echoed["params"]["x"], serde_json::json!(["1", "2"]));
    assert_eq!(
        echoed["headers"]["host"], "example.test",
        "Host from the authority"
    );
    assert_eq!(echoed["headers"]["x-custom"], "v");
    assert_eq!(replies[10].body.len(), 300_000, "a body in many chunks");
    let data = &replies[13];
    assert_eq!(data.status, 200, "a data file: {}", data.text());
    let lazy = &replies[14];
    assert_eq!(lazy.status, 200, "a lazy import: {}", lazy.text());
    assert_eq!(replies[15].json()["counter"], 1);
    assert_eq!(
        replies[16].json()["counter"],
        1,
        "every request starts afresh"
    );
    assert_eq!(replies[19].status, 418);
    assert_eq!(replies[20].status, 500);
    assert_eq!(replies[20].text(), r#"{"error":"Internal Server Error"}"#);
    assert_eq!(replies[4].status, 404);
    assert!(replies[4].body.is_empty(), "no body for HEAD");
    assert_eq!(replies[5].status, 400);
    assert_eq!(replies[6].status, 400);
}

fn caps_tenant(upstream: &str) -> TenantConfig {
    let mut tenant = TenantConfig::new("caps", fixture("export_caps"));
    tenant.limits.max_request_body = 1000;
    tenant.key_value_stores = vec!["default".into()];
    tenant.allowed_outbound_hosts = vec![AllowedHost::parse(upstream).unwrap()];
    tenant.variables = vec![
        VariableSpec {
            name: "greeting".into(),
            source: VariableSource::Value("hello from spin".into()),
            secret: false,
        },
        VariableSpec {
            name: "token".into(),
            source: VariableSource::Value("never-written-down".into()),
            secret: true,
        },
    ];
    tenant
}

/// Every interface Spin 3.x links for a component (spin v3.6.3:
/// `wasi:cli/imports@0.2.x`, `wasi:http/outgoing-handler`, wasi:keyvalue
/// 0.2.0-draft2, wasi:config 0.2.0-draft-2024-09-27; fermyon:spin left
/// out, an export never imports it). `0.2.x` imports link semver-wise.
fn spin_links(import: &str) -> bool {
    let (name, version) = import.split_once('@').unwrap_or((import, ""));
    let wasi_02 = [
        "wasi:cli/environment",
        "wasi:cli/exit",
        "wasi:cli/stdin",
        "wasi:cli/stdout",
        "wasi:cli/stderr",
        "wasi:cli/terminal-input",
        "wasi:cli/terminal-output",
        "wasi:cli/terminal-stdin",
        "wasi:cli/terminal-stdout",
        "wasi:cli/terminal-stderr",
        "wasi:clocks/monotonic-clock",
        "wasi:clocks/wall-clock",
        "wasi:filesystem/types",
        "wasi:filesystem/preopens",
        "wasi:io/error",
        "wasi:io/poll",
        "wasi:io/streams",
        "wasi:random/random",
        "wasi:random/insecure",
        "wasi:random/insecure-seed",
        "wasi:sockets/network",
        "wasi:sockets/instance-network",
        "wasi:sockets/udp",
        "wasi:sockets/udp-create-socket",
        "wasi:sockets/tcp",
        "wasi:sockets/tcp-create-socket",
        "wasi:sockets/ip-name-lookup",
        "wasi:http/types",
        "wasi:http/outgoing-handler",
    ];
    let exact = [
        "wasi:keyvalue/store@0.2.0-draft2",
        "wasi:keyvalue/atomics@0.2.0-draft2",
        "wasi:keyvalue/batch@0.2.0-draft2",
        "wasi:config/store@0.2.0-draft-2024-09-27",
    ];
    (wasi_02.contains(&name) && version.starts_with("0.2.") && !version.contains('-'))
        || exact.contains(&import)
}

fn imports_of(export: &Export) -> Vec<String> {
    let engine = wasmtime::Engine::default();
    let component = wasmtime::component::Component::from_file(&engine, &export.component).unwrap();
    component
        .component_type()
        .imports(&engine)
        .map(|(name, _)| name.to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spin_export_links_what_spin_links_and_its_capabilities_work_there() {
    let upstream = common::upstream::start();
    let tenant = caps_tenant(&upstream.base());
    let spin = export("caps", tenant.clone(), ExportTarget::Spin);

    // The manifest grants what the tenant is granted, and no secret.
    let manifest = std::fs::read_to_string(spin.dir.join("spin.toml")).unwrap();
    assert!(!manifest.contains("never-written-down"), "{manifest}");
    let parsed: toml::Table = toml::from_str(&manifest).unwrap();
    let component = &parsed["component"]["caps"];
    assert_eq!(component["key_value_stores"][0].as_str(), Some("default"));
    assert_eq!(
        component["allowed_outbound_hosts"][0].as_str(),
        Some(upstream.base().as_str())
    );
    let files = component["files"].as_array().unwrap();
    assert_eq!(files.len(), spin.mounts.len());

    // Exactly Spin's interfaces: every import is one Spin links...
    let imports = imports_of(&spin);
    let foreign: Vec<&String> = imports.iter().filter(|i| !spin_links(i)).collect();
    assert!(foreign.is_empty(), "Spin does not link {foreign:?}");
    assert!(
        imports
            .iter()
            .any(|i| i == "wasi:keyvalue/store@0.2.0-draft2")
    );
    // ...and the wasi-http export, with wasmtime's key-value, is not.
    // Its own directory: another test serves the "caps" wasi-http export.
    let wasmtime_export = export("caps-imports", tenant.clone(), ExportTarget::WasiHttp);
    let wasmtime_imports = imports_of(&wasmtime_export);
    assert!(
        wasmtime_imports
            .iter()
            .any(|i| i == "wasi:keyvalue/store@0.2.0-draft" && !spin_links(i)),
        "{wasmtime_imports:?}"
    );

    // Served with Spin's interfaces, by the manifest's mounts.
    let mut args: Vec<String> = vec!["--profile".into(), "spin".into()];
    for file in files {
        args.push("--dir".into());
        args.push(format!(
            "{}::{}",
            file["source"].as_str().unwrap(),
            file["destination"].as_str().unwrap()
        ));
    }
    args.extend([
        "--kv-store".into(),
        "default".into(),
        "-Sconfig-var=greeting=hello from spin".into(),
        "--addr".into(),
        "127.0.0.1:0".into(),
    ]);
    let mut command = Command::new(peer_binary());
    command
        .current_dir(&spin.dir)
        .args(&args)
        .arg("handler.wasm");
    let peer = spawn(command, "Serving HTTP on http://");
    let get = |path: String| async move { send(peer.addr, "GET", &path, &[], b"").await };
    assert_eq!(get("/count".into()).await.json()["count"], 1);
    assert_eq!(
        get("/count".into()).await.json()["count"],
        2,
        "kept across requests"
    );
    assert_eq!(
        get("/greeting".into()).await.json()["greeting"],
        "hello from spin"
    );
    let fetched = get(format!("/upstream?url={}/ok", upstream.base())).await;
    assert_eq!(fetched.status, 200, "{}", fetched.text());
    assert_eq!(fetched.json()["body"], "hello from upstream");
    assert_eq!(
        get("/other-store".into()).await.json()["refused"],
        "KeyValueError"
    );
    drop(peer);

    // A host that links anything else refuses the Spin export: wasmtime's
    // versions of key-value and config.
    let mut command = Command::new(peer_binary());
    command.current_dir(&spin.dir).args([
        "-Skeyvalue",
        "-Sconfig",
        "--addr",
        "127.0.0.1:0",
        "handler.wasm",
    ]);
    let output = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("wasi:keyvalue/store@0.2.0-draft2")
            || stderr.contains("wasi:config/store@0.2.0-draft-2024-09-27"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wasi_http_export_links_wasmtime_s_interfaces_where_granted() {
    let upstream = common::upstream::start();
    let export = export(
        "caps",
        caps_tenant(&upstream.base()),
        ExportTarget::WasiHttp,
    );
    assert!(!export.command.contains("never-written-down"));
    assert!(export.command.contains(" -Skeyvalue "));
    assert!(export.command.contains(" -Sconfig "));
    assert!(
        export
            .caveats
            .iter()
            .any(|c| c.contains("no outbound allow-list")),
        "{:?}",
        export.caveats
    );
    let serve_sh = std::fs::read_to_string(export.dir.join("serve.sh")).unwrap();
    assert!(serve_sh.starts_with("#!/bin/sh\n"));
    let readme = std::fs::read_to_string(export.dir.join("README.md")).unwrap();
    assert!(readme.contains(&export.command), "{readme}");
    // A secret with a comma would add wasmtime options: serve.sh refuses it
    // before wasmtime runs.
    let refused = Command::new(export.dir.join("serve.sh"))
        .env("PYCAGE_VAR_TOKEN", "tok,inherit-env,inherit-network")
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("PYCAGE_VAR_TOKEN has a comma"));

    // A secret is read from the environment when the command runs.
    let peer = {
        let mut words = shell_words(&export.command);
        for word in &mut words {
            if word.contains("${PYCAGE_VAR_TOKEN") {
                *word = "-Sconfig-var=token=from-env".into();
            }
        }
        let exported = Export {
            command: words
                .iter()
                .map(|w| {
                    if w.contains(' ') {
                        format!("'{w}'")
                    } else {
                        w.clone()
                    }
                })
                .collect::<Vec<_>>()
                .join(" "),
            ..export.clone()
        };
        serve_export(&exported, &[])
    };
    let greeting = send(peer.addr, "GET", "/greeting", &[], b"").await;
    assert_eq!(greeting.json()["greeting"], "hello from spin");
    // wasmtime's in-memory store opens only the store named "": said in
    // the caveats, and an error the handler sees.
    assert_eq!(send(peer.addr, "GET", "/count", &[], b"").await.status, 500);
    assert!(
        export
            .caveats
            .iter()
            .any(|c| c.contains("opens only the store named"))
    );
    let fetched = send(
        peer.addr,
        "GET",
        &format!("/upstream?url={}/ok", upstream.base()),
        &[],
        b"",
    )
    .await;
    assert_eq!(fetched.status, 200, "{}", fetched.text());

    // Hostile requests and responses: refused as `pycage serve` refuses
    // them, and the next request is served.
    let declared = send(peer.addr, "POST", "/size", &[], &[b'x'; 2000]).await;
    assert_eq!(declared.status, 413, "{}", declared.text());
    assert_eq!(
        declared.json()["detail"],
        "request body is 2000 bytes, over the 1000-byte limit"
    );
    let chunked = chunked_post(peer.addr, "/size", 5000).await;
    assert!(chunked.starts_with("HTTP/1.1 413"), "{chunked}");
    assert!(chunked.contains("over the 1000-byte limit"), "{chunked}");
    let fits = send(peer.addr, "POST", "/size", &[], &[b'x'; 1000]).await;
    assert_eq!(fits.json()["size"], 1000);
    for path in ["/bad-header", "/many-headers"] {
        let refused = send(peer.addr, "GET", path, &[], b"").await;
        assert_eq!(refused.status, 500, "{path}: {}", refused.text());
        assert!(!refused.headers.contains_key("set-cookie"));
    }
    let owned = send(peer.addr, "GET", "/host-owned", &[], b"").await;
    assert_eq!(owned.status, 200);
    assert_eq!(owned.headers["x-kept"], "yes");
    assert_eq!(
        owned.headers["content-length"], "4",
        "the host's own length"
    );
    assert_eq!(owned.text(), "body");
    assert_eq!(
        send(peer.addr, "GET", "/greeting", &[], b"").await.status,
        200,
        "still serving"
    );
}

/// POST `size` bytes with chunked transfer encoding (no declared length)
/// on a raw connection; the response head and body as text.
async fn chunked_post(addr: SocketAddr, path: &str, size: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: example.test\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    for _ in 0..size / 500 {
        let chunk = format!("1f4\r\n{}\r\n", "y".repeat(500));
        if stream.write_all(chunk.as_bytes()).await.is_err() {
            break; // the server answered and closed early
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply).await;
    String::from_utf8_lossy(&reply).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_granted_nothing_exports_without_those_interfaces_and_reads_as_in_pycage() {
    let bare = export(
        "caps-bare",
        TenantConfig::new("bare", fixture("export_caps")),
        ExportTarget::WasiHttp,
    );
    let imports = imports_of(&bare);
    assert!(
        !imports
            .iter()
            .any(|i| i.starts_with("wasi:keyvalue") || i.starts_with("wasi:config")),
        "{imports:?}"
    );
    assert!(!bare.command.contains("-Skeyvalue") && !bare.command.contains("-Sconfig"));
    let peer = serve_export(&bare, &[]);
    // No variable is set, no store granted: what `pycage serve` says too.
    let greeting = send(peer.addr, "GET", "/greeting", &[], b"").await;
    assert_eq!(greeting.json()["greeting"], serde_json::Value::Null);
    let store = send(peer.addr, "GET", "/other-store", &[], b"").await;
    assert_eq!(store.json()["refused"], "KeyValueError");
}

#[test]
fn an_export_never_overwrites_what_it_did_not_write() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("mine");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("notes.txt"), "keep me").unwrap();
    let tenant = TenantConfig::new("hello", fixture("hello/hello.py"));
    let error = runtime()
        .export(&tenant, ExportTarget::Spin, &dir, &|_| {})
        .unwrap_err();
    assert!(matches!(error, ExportError::OutputInUse { .. }), "{error}");
    assert_eq!(
        std::fs::read_to_string(dir.join("notes.txt")).unwrap(),
        "keep me"
    );

    // An earlier export is replaced whole, read-only files included.
    let fresh = root.path().join("export");
    let first = runtime()
        .export(&tenant, ExportTarget::Spin, &fresh, &|_| {})
        .unwrap();
    assert!(first.dir.join("spin.toml").is_file());
    let second = runtime()
        .export(&tenant, ExportTarget::WasiHttp, &fresh, &|_| {})
        .unwrap();
    assert!(second.dir.join("serve.sh").is_file());
    assert!(!fresh.join("spin.toml").exists(), "the old export is gone");
    // `-o .` inside an earlier export replaces it (staged beside it).
    let again = Command::new(env!("CARGO_BIN_EXE_pycage"))
        .env("PYCAGE_CACHE_DIR", cache_dir())
        .current_dir(&fresh)
        .args(["-q", "export", "--target", "spin", "-o", "."])
        .arg(fixture("hello/hello.py"))
        .output()
        .unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(fresh.join("spin.toml").is_file() && !fresh.join("serve.sh").exists());
    // Never inside the handler's tree (it would be copied into the next
    // export), nor around it (it would be deleted with the export).
    let tree = root.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    std::fs::write(tree.join("app.py"), "from pycage import route\n").unwrap();
    let inside = runtime()
        .export(
            &TenantConfig::new("t", &tree),
            ExportTarget::Spin,
            &tree.join("out"),
            &|_| {},
        )
        .unwrap_err();
    assert!(
        matches!(inside, ExportError::OutputOverlaps { .. }),
        "{inside}"
    );
    assert!(!tree.join("out").exists());

    // Spin's naming rules are checked before anything is built.
    let mut odd = tenant.clone();
    odd.variables = vec![VariableSpec {
        name: "my_2fa".into(),
        source: VariableSource::Value("x".into()),
        secret: false,
    }];
    let error = runtime()
        .export(&odd, ExportTarget::Spin, &root.path().join("odd"), &|_| {})
        .unwrap_err();
    assert!(error.to_string().contains("my_2fa"), "{error}");
}

#[test]
fn the_cli_refuses_a_foreign_output_directory_and_explains_itself() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("keep.txt"), "mine").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_pycage"))
        .env("PYCAGE_CACHE_DIR", cache_dir())
        .args(["export", "--target", "spin", "-o"])
        .arg(root.path())
        .arg(fixture("hello/hello.py"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("is not an earlier export"), "{stderr}");
    assert!(root.path().join("keep.txt").is_file());

    let help = Command::new(env!("CARGO_BIN_EXE_pycage"))
        .args(["export", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for needle in ["wasi-http", "spin", "--output", "--config", "README.md"] {
        assert!(help.contains(needle), "{needle} missing from:\n{help}");
    }
}
