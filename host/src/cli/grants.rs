//! The capability flags of `run` and `serve HANDLER`, checked and turned
//! into what a config file's tenant would say.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use pycage::config::StoreConfig;
use pycage::grants::{self, AllowedHost, VariableSource, VariableSpec};

use super::args::GrantArgs;

/// What the flags grant, checked.
#[derive(Debug, Default)]
pub struct FlagGrants {
    pub tenant: Option<String>,
    /// Stores the flags define (`--kv NAME=redis://...`), on top of the
    /// default ones.
    pub stores: BTreeMap<String, StoreConfig>,
    /// Stores the handler is granted.
    pub granted: Vec<String>,
    pub allowed_outbound_hosts: Vec<AllowedHost>,
    pub resolve: BTreeMap<String, IpAddr>,
    pub variables: Vec<VariableSpec>,
    pub data_dir: Option<PathBuf>,
}

impl FlagGrants {
    /// Whether any flag but `--data-dir` (which `PYCAGE_DATA_DIR` may set)
    /// was given.
    pub fn grants_anything(args: &GrantArgs) -> bool {
        Self::grants_capabilities(args) || args.tenant.is_some()
    }

    /// Whether a capability flag was given (`--tenant` and `--data-dir`
    /// grant none themselves).
    pub fn grants_capabilities(args: &GrantArgs) -> bool {
        !(args.kv.is_empty()
            && args.allow_outbound.is_empty()
            && args.resolve.is_empty()
            && args.vars.is_empty()
            && args.secrets.is_empty())
    }

    /// Check the flags; the error names the flag and says what is wrong.
    pub fn parse(args: &GrantArgs) -> Result<Self, String> {
        let mut grants = FlagGrants {
            tenant: args.tenant.clone(),
            data_dir: args.data_dir.clone(),
            ..Self::default()
        };
        if let Some(tenant) = &args.tenant
            && !grants::valid_tenant(tenant)
        {
            return Err(format!(
                "--tenant {tenant}: use 1-64 characters from a-z, 0-9, '-' and '_'"
            ));
        }
        for entry in &args.kv {
            let (name, url) = match entry.split_once('=') {
                Some((name, url)) => (name, Some(url)),
                None => (entry.as_str(), None),
            };
            if !grants::valid_name(name) {
                return Err(format!(
                    "--kv {entry}: a store name is 1-64 of a-z, 0-9, '_', '-', starting with a letter"
                ));
            }
            if let Some(url) = url {
                if !url.starts_with("redis://") {
                    return Err(format!(
                        "--kv {name}=...: not a redis:// URL (rediss://, Redis over TLS, is not \
                         supported)"
                    ));
                }
                grants.stores.insert(
                    name.to_owned(),
                    StoreConfig::Redis {
                        url: url.to_owned(),
                    },
                );
            } else if name != grants::DEFAULT_STORE {
                grants
                    .stores
                    .insert(name.to_owned(), StoreConfig::Sqlite { path: None });
            }
            if !grants.granted.iter().any(|g| g == name) {
                grants.granted.push(name.to_owned());
            }
        }
        for entry in &args.allow_outbound {
            grants.allowed_outbound_hosts.push(
                AllowedHost::parse(entry).map_err(|e| format!("--allow-outbound {entry}: {e}"))?,
            );
        }
        for entry in &args.resolve {
            let (name, address) = entry
                .split_once('=')
                .ok_or_else(|| format!("--resolve {entry}: write NAME=ADDRESS"))?;
            let address: IpAddr = address
                .parse()
                .map_err(|_| format!("--resolve {entry}: `{address}` is not an IP address"))?;
            grants
                .resolve
                .insert(name.trim_end_matches('.').to_ascii_lowercase(), address);
        }
        let mut variable = |flag: &str, entry: &str, secret: bool| -> Result<(), String> {
            let (name, value) = entry.split_once('=').ok_or_else(|| {
                format!(
                    "{flag} {entry}: write NAME={}",
                    if secret { "ENV" } else { "VALUE" }
                )
            })?;
            if !grants::valid_variable_name(name) {
                return Err(format!(
                    "{flag} {name}=...: a variable name is 1-64 of a-z, 0-9 and '_', starting with a letter"
                ));
            }
            if grants.variables.iter().any(|v| v.name == name) {
                return Err(format!("{flag} {name}=...: the variable is given twice"));
            }
            let source = if secret {
                VariableSource::Env(value.to_owned())
            } else {
                VariableSource::Value(value.to_owned())
            };
            grants.variables.push(VariableSpec {
                name: name.to_owned(),
                source,
                secret,
            });
            Ok(())
        };
        for entry in &args.vars {
            variable("--var", entry, false)?;
        }
        for entry in &args.secrets {
            variable("--secret", entry, true)?;
        }
        Ok(grants)
    }
}
