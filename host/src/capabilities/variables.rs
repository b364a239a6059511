//! Capability `variables`: configuration values and secrets for a tenant,
//! on `wasi:config/store` (`0.2.0-draft-2024-09-27`, Spin's).
//!
//! - link: `wasi:config/store`, for every image (no grant: no variables);
//! - grant: at load, each variable is resolved: a value from the config,
//!   the host's environment or a file; a missing source fails the load;
//! - prepare: a handle on the resolved values.
//!
//! A secret's value is only ever given to the guest that asks for it: it is
//! never logged, never in metrics, error bodies or `pycage routes`, and
//! where pycage shows what the guest printed it replaces the value with
//! `[secret]` (`Grants::redact`).

use std::collections::BTreeMap;

use wasmtime::component::{HasData, Linker};

use crate::contract::wit::config_store;
use crate::grants::{VariableSource, VariableSpec};

/// Longest variable value read from a file.
const MAX_FILE_BYTES: u64 = 64 << 10;

/// A tenant's resolved variables.
#[derive(Debug, Clone, Default)]
pub(crate) struct VariablesGrant {
    values: BTreeMap<String, String>,
    /// The values of the secret ones, to redact wherever guest text is shown.
    secrets: Vec<String>,
}

impl VariablesGrant {
    /// Resolve every spec; the error names the variable and the source.
    pub(crate) fn resolve(specs: &[VariableSpec]) -> Result<Self, String> {
        let mut grant = Self::default();
        for spec in specs {
            let value = match &spec.source {
                VariableSource::Value(value) => value.clone(),
                VariableSource::Env(name) => std::env::var(name).map_err(|_| {
                    format!(
                        "variable `{}`: the environment variable {name} is not set",
                        spec.name
                    )
                })?,
                VariableSource::File(path) => {
                    let bytes = crate::host_fs::untrusted::open_named(path)
                        .and_then(|(fd, stat)| {
                            crate::host_fs::untrusted::read_to_end(fd, &stat, MAX_FILE_BYTES, path)
                        })
                        .map_err(|e| format!("variable `{}`: {e}", spec.name))?;
                    let text = String::from_utf8(bytes).map_err(|_| {
                        format!("variable `{}`: {} is not UTF-8", spec.name, path.display())
                    })?;
                    text.strip_suffix('\n').unwrap_or(&text).to_owned()
                }
            };
            if spec.secret && !value.is_empty() {
                grant.secrets.push(value.clone());
            }
            grant.values.insert(spec.name.clone(), value);
        }
        // Longest first, so a secret inside another is not half-redacted.
        grant.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Ok(grant)
    }

    /// Replace every secret value in `text` with `[secret]`.
    pub(crate) fn redact(&self, text: &mut String) {
        for secret in &self.secrets {
            if text.contains(secret.as_str()) {
                *text = text.replace(secret.as_str(), REDACTED);
            }
        }
    }

    /// The same for bytes the guest printed (which need not be UTF-8).
    pub(crate) fn redact_bytes(&self, bytes: &mut Vec<u8>) {
        for secret in &self.secrets {
            let secret = secret.as_bytes();
            let mut out: Option<Vec<u8>> = None;
            let mut rest = &bytes[..];
            while let Some(at) = rest.windows(secret.len()).position(|w| w == secret) {
                let out = out.get_or_insert_with(|| Vec::with_capacity(bytes.len()));
                out.extend_from_slice(&rest[..at]);
                out.extend_from_slice(REDACTED.as_bytes());
                rest = &rest[at + secret.len()..];
            }
            if let Some(mut out) = out {
                out.extend_from_slice(rest);
                *bytes = out;
            }
        }
    }

    pub(crate) fn has_secrets(&self) -> bool {
        !self.secrets.is_empty()
    }
}

/// What a secret's value is shown as.
const REDACTED: &str = "[secret]";

struct Variables;

impl HasData for Variables {
    type Data<'a> = &'a VariablesGrant;
}

/// Add `wasi:config/store` to `linker`.
pub(crate) fn link<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> &VariablesGrant,
) -> wasmtime::Result<()> {
    config_store::add_to_linker::<T, Variables>(linker, view)
}

impl config_store::Host for &VariablesGrant {
    async fn get(
        &mut self,
        key: String,
    ) -> wasmtime::Result<Result<Option<String>, config_store::Error>> {
        Ok(Ok(self.values.get(&key).cloned()))
    }

    async fn get_all(
        &mut self,
    ) -> wasmtime::Result<Result<Vec<(String, String)>, config_store::Error>> {
        Ok(Ok(self
            .values
            .iter()
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_resolve_and_secrets_are_redacted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "from-a-file\n").unwrap();
        let specs = [
            VariableSpec {
                name: "region".into(),
                source: VariableSource::Value("eu".into()),
                secret: false,
            },
            VariableSpec {
                name: "token".into(),
                source: VariableSource::File(dir.path().join("token")),
                secret: true,
            },
        ];
        let grant = VariablesGrant::resolve(&specs).unwrap();
        assert_eq!(grant.values["token"], "from-a-file");
        let mut text = "key=from-a-file; region=eu".to_owned();
        grant.redact(&mut text);
        assert_eq!(text, "key=[secret]; region=eu");
        let mut bytes = b"\xff from-a-file, from-a-filefrom-a-file!".to_vec();
        grant.redact_bytes(&mut bytes);
        assert_eq!(bytes, b"\xff [secret], [secret][secret]!");
        let mut clean = b"nothing here".to_vec();
        grant.redact_bytes(&mut clean);
        assert_eq!(clean, b"nothing here");
        let missing = VariableSpec {
            name: "gone".into(),
            source: VariableSource::Env("PYCAGE_SURELY_UNSET_VARIABLE".into()),
            secret: true,
        };
        let error = VariablesGrant::resolve(&[missing]).unwrap_err();
        assert!(error.contains("PYCAGE_SURELY_UNSET_VARIABLE"), "{error}");
    }
}
