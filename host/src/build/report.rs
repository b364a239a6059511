//! Reading the build report (`contract::report`): guest-written, so opened
//! without following links, bounded, parsed defensively, and every text in
//! it escaped and bounded before it becomes part of an error message.

use std::path::Path;

use super::stage::HandlerSource;
pub(crate) use crate::contract::report::Report;
use crate::contract::{self, mounts};
use crate::error::LoadError;
use crate::guest_text;
use crate::host_fs::untrusted;

/// Largest report the host reads; the glue bounds output and traceback
/// to 64 KiB each.
const MAX_REPORT_BYTES: u64 = 1 << 20;
/// Bounds on the texts taken from it.
const MAX_MESSAGE: usize = 2 << 10;
const MAX_TRACEBACK: usize = 64 << 10;
const MAX_OUTPUT: usize = 64 << 10;

/// The report in the framework mount `dir`, if the guest wrote one.
pub(crate) fn read(dir: &Path) -> Result<Option<Report>, String> {
    let Some(bytes) = untrusted::read_file_in(dir, contract::BUILD_REPORT, MAX_REPORT_BYTES)
        .map_err(|e| e.to_string())?
    else {
        return Ok(None);
    };
    let mut report: Report =
        serde_json::from_slice(&bytes).map_err(|e| format!("malformed build report: {e}"))?;
    report.output = guest_text::bounded(&report.output, MAX_OUTPUT).into_owned();
    Ok(Some(report))
}

impl Report {
    /// The load error this failure report describes, for `source`. Paths
    /// the guest names are kept only if they are files of the handler;
    /// texts are escaped and bounded.
    pub(crate) fn into_error(self, source: &HandlerSource) -> LoadError {
        let guest_prefix = format!("{}/", mounts::IMPORT);
        let host_prefix = format!("{}/", source.display_root.display());
        let file = self
            .file
            .as_deref()
            .and_then(|f| f.strip_prefix(&guest_prefix))
            .filter(|relative| source.snapshot().has(relative))
            .map(|relative| source.host_path_of(relative));
        let location = match (&file, self.line) {
            (Some(file), Some(line)) => format!("{}:{line}", file.display()),
            (Some(file), None) => file.display().to_string(),
            (None, _) => source.path.display().to_string(),
        };
        let location = guest_text::escape_controls(&location);
        let message = guest_text::one_line(&self.message, MAX_MESSAGE);
        match self.kind.as_str() {
            "syntax-error" => LoadError::Syntax { location, message },
            "no-routes" => LoadError::NoRoutes {
                path: file.unwrap_or_else(|| source.path.clone()),
            },
            "route-error" => LoadError::Route { location, message },
            _ => {
                let traceback = self
                    .traceback
                    .replace(&format!("\"{guest_prefix}"), &format!("\"{host_prefix}"));
                LoadError::Import {
                    location,
                    message,
                    traceback: guest_text::block(&traceback, MAX_TRACEBACK),
                }
            }
        }
    }
}
