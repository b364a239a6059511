//! Everything the CLI writes for humans on stderr, and the response on stdout.
//!
//! Guest output is untrusted: it is shown line by line behind a `[guest …]`
//! prefix with control characters escaped, so a handler can neither pass its
//! text off as pycage's own nor drive the terminal with escape sequences.

use std::io::{IsTerminal, Write};

pub use pycage::escape_controls;
use pycage::{CapturedOutput, LoadEvent, Response};

/// Prints load progress and diagnostics.
pub struct Reporter {
    quiet: bool,
    progress: bool,
}

impl Reporter {
    pub fn new(quiet: bool) -> Self {
        Self {
            quiet,
            progress: !quiet && std::io::stderr().is_terminal(),
        }
    }

    pub fn is_quiet(&self) -> bool {
        self.quiet
    }

    pub fn event(&self, event: LoadEvent<'_>) {
        // Always shown, even with --quiet: VIRTUAL_ENV can grant a
        // virtualenv without a flag, and a grant is never silent.
        if let LoadEvent::Granting { path } = event {
            eprintln!(
                "pycage: granting {} (read-only)",
                escape_controls(&path.display().to_string())
            );
            return;
        }
        if self.quiet {
            return;
        }
        match event {
            // The tenant chose the name: shown escaped.
            LoadEvent::Skipped { path, reason } => {
                eprintln!(
                    "pycage: warning: not granting {}: {reason}",
                    escape_controls(&path.display().to_string())
                );
            }
            LoadEvent::PreparingStdlib if self.progress => {
                eprintln!(
                    "pycage: preparing the Python standard library (once per pycage version)..."
                );
            }
            LoadEvent::InstallingDependencies {
                pyproject,
                installer,
                requirements,
            } if self.progress => {
                eprintln!(
                    "pycage: installing {} from {} with {installer}...",
                    requirements.join(", "),
                    pyproject.display()
                );
            }
            LoadEvent::BuildingFromSource { requirement } if self.progress => {
                eprintln!(
                    "pycage: building {} from source inside the sandbox (no pure-Python wheel)...",
                    escape_controls(requirement)
                );
            }
            LoadEvent::Building { source } if self.progress => {
                eprintln!(
                    "pycage: building the sandbox image for {} ...",
                    source.display()
                );
            }
            LoadEvent::Built { elapsed } if self.progress => {
                eprintln!(
                    "pycage: built in {:.1} s (cached for next time)",
                    elapsed.as_secs_f64()
                );
            }
            LoadEvent::BuildOutput { text, truncated } => {
                guest_lines("guest build", text.as_bytes(), truncated);
            }
            _ => {}
        }
    }
}

/// Show one captured stream of guest output on stderr.
pub fn guest_output(stream: &str, output: &CapturedOutput) {
    guest_lines(&format!("guest {stream}"), &output.bytes, output.truncated);
}

/// Show guest-provided text (a traceback, say) behind a prefix.
pub fn guest_lines(label: &str, bytes: &[u8], truncated: bool) {
    if bytes.is_empty() && !truncated {
        return;
    }
    let text = String::from_utf8_lossy(bytes);
    let mut err = std::io::stderr().lock();
    for line in text.lines() {
        let _ = writeln!(err, "[{label}] {}", escape_controls(line));
    }
    if truncated {
        let _ = writeln!(err, "[{label}] ... (output over the limit was dropped)");
    }
}

/// The response as written to stdout: body only, or `-i` style head + body.
pub fn response_bytes(response: &Response, include_head: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(response.body.len() + 256);
    if include_head {
        out.extend_from_slice(
            format!("HTTP/1.1 {} {}\r\n", response.status, response.reason()).as_bytes(),
        );
        for (name, value) in &response.headers {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            // Valid header bytes, but the handler chose them and they may
            // reach a terminal: C1 controls and bidi overrides are escaped.
            out.extend_from_slice(escape_controls(&String::from_utf8_lossy(value)).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(
            format!("content-length: {}\r\n\r\n", response.body.len()).as_bytes(),
        );
    }
    out.extend_from_slice(&response.body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_looks_like_curl() {
        let r = Response {
            status: 404,
            headers: vec![("content-type".into(), b"text/plain".to_vec())],
            body: b"no".to_vec(),
        };
        assert_eq!(
            response_bytes(&r, true),
            b"HTTP/1.1 404 Not Found\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nno"
        );
        assert_eq!(response_bytes(&r, false), b"no");
    }
}
