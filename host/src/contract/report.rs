//! The build report the glue writes after importing the handler
//! (`guest-python/pycage/_glue/load.py`). Guest-written: the host reads it
//! without following links and bounded, and escapes every text in it
//! (`build::report`).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Report {
    pub ok: bool,
    /// For a failure: `syntax-error`, `import-error`, `route-error` or
    /// `no-routes`.
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub message: String,
    /// The guest path of the handler file at fault, and the line.
    #[serde(default)]
    pub file: Option<String>,
    #[serde(default)]
    pub line: Option<u32>,
    #[serde(default)]
    pub traceback: String,
    /// What the handler printed while being imported (bounded by the glue).
    #[serde(default)]
    pub output: String,
    #[serde(default)]
    pub output_truncated: bool,
}
