//! Fuzz targets' shared entry points; the checks themselves live in
//! `checks.rs` so that `host/tests/fuzz_regressions.rs` runs the same code
//! over the saved inputs on a stable toolchain.

#[path = "checks.rs"]
pub mod checks;
