//! The guest framework's pure parts (`pycage._router`, `_http`, `_convert`)
//! unit-tested on the host's own python3, in well under a second: no
//! component build per case (`guest-python/tests`).

use std::path::Path;
use std::process::Command;

#[test]
fn framework_unit_tests_pass_on_the_hosts_python() {
    let guest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-python");
    let out = Command::new("python3")
        .args(["-B", "-m", "unittest", "discover", "-s", "tests", "-t", "."])
        .current_dir(&guest)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("PYTHONPATH")
        .output()
        .expect("python3 must be on PATH to test the guest framework");
    let report = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{report}");
    assert!(report.contains("OK"), "{report}");
    let ran: usize = report
        .lines()
        .find_map(|l| {
            l.strip_prefix("Ran ")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    assert!(ran >= 15, "only {ran} tests ran:\n{report}");
}
