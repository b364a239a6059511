//! Shared by the integration tests: one runtime per test binary, one build
//! cache for the whole test run (so each fixture is built once), helpers.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

pub mod client;
pub mod redis;
pub mod upstream;

use pycage::{Cache, Exchange, Handler, LoadOptions, Request, Response, Runtime};

pub fn fixture(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(relative)
}

/// The cache shared by every test binary of this run.
pub fn cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("pycage-test-cache")
}

pub fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| Runtime::new(Cache::new(cache_dir())).expect("runtime"))
}

/// Load a fixture once per test binary; loads are serialised so that
/// parallel tests do not build the same image twice on a 2-core machine.
pub fn handler(relative: &str) -> Handler {
    static LOADED: OnceLock<Mutex<HashMap<String, Handler>>> = OnceLock::new();
    let mut loaded = LOADED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    loaded
        .entry(relative.to_owned())
        .or_insert_with(|| {
            runtime()
                .load(&fixture(relative), &LoadOptions::default(), &|_| {})
                .unwrap_or_else(|e| panic!("loading {relative}: {e}"))
        })
        .clone()
}

pub async fn send(handler: &Handler, request: Request) -> Exchange {
    handler.dispatch(request).await
}

pub async fn get(handler: &Handler, target: &str) -> Exchange {
    handler.dispatch(Request::new("GET", target).unwrap()).await
}

/// The response of an exchange that must have succeeded.
pub fn ok(exchange: &Exchange) -> &Response {
    match &exchange.result {
        Ok(response) => response,
        Err(error) => panic!(
            "expected a response, got {error:?}\nstderr: {}",
            String::from_utf8_lossy(&exchange.stderr.bytes)
        ),
    }
}

pub fn json(response: &Response) -> serde_json::Value {
    serde_json::from_slice(&response.body).unwrap_or_else(|e| {
        panic!(
            "body is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&response.body)
        )
    })
}

pub fn header<'a>(response: &'a Response, name: &str) -> Option<&'a str> {
    response
        .header(name)
        .map(|v| std::str::from_utf8(v).expect("ASCII header"))
}
