//! Inputs the fuzzers found (or that pin an edge case) replayed through the
//! same checks the fuzz targets run (`host/fuzz/src/checks.rs`), on stable.

#[path = "../fuzz/src/checks.rs"]
mod checks;

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target);
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        check(&data);
        count += 1;
    }
    count
}

#[test]
fn request_inputs() {
    assert!(replay("request", checks::check_request) > 0);
}

#[test]
fn response_inputs() {
    assert!(replay("response", checks::check_response) > 0);
}

#[test]
fn config_inputs() {
    assert!(replay("config", checks::check_config) > 0);
}

#[test]
fn tenant_routes_inputs() {
    assert!(replay("tenant_routes", checks::check_tenant_routes) > 0);
}
