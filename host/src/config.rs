//! `pycage.toml`: the multi-tenant server configuration, and its validation.
//!
//! Every error names the file, the tenant (when there is one) and the key,
//! so an operator can fix a config without guessing.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::grants::{self, AllowedHost, VariableSource, VariableSpec};
use crate::limits::{BuildLimits, KvLimits, Limits, OutboundLimits, parse_duration};

/// Defaults of the `[server]` table.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_MAX_INSTANCES: u32 = 64;
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request's whole body may take to arrive.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Client connections open at once; more wait in the listen backlog.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    /// Where `/metrics` is served; `None` (the default) serves no admin endpoint.
    pub admin_listen: Option<SocketAddr>,
    pub max_instances: u32,
    pub queue_timeout: Duration,
    pub shutdown_timeout: Duration,
    /// How long a request's body may take to arrive (408 after that).
    pub body_timeout: Duration,
    /// Client connections served at once.
    pub max_connections: usize,
    /// Bounds on cache-miss builds (`build_timeout`, `build_memory_mib`,
    /// `build_disk_mib` in `[server]`).
    pub build_limits: BuildLimits,
    pub cache_dir: Option<PathBuf>,
    /// Where key-value stores keep their data (`server.data_dir`); default:
    /// as for the CLI (`PYCAGE_DATA_DIR`, ...).
    pub data_dir: Option<PathBuf>,
    /// The stores tenants may be granted, by name (`[key_value_store.NAME]`);
    /// `default` is SQLite unless defined otherwise.
    pub key_value_stores: BTreeMap<String, StoreConfig>,
    /// Names outbound requests resolve to these addresses instead of DNS
    /// (`[outbound] resolve`), like curl's `--resolve`.
    pub outbound_resolve: BTreeMap<String, IpAddr>,
    pub tenants: Vec<TenantConfig>,
}

/// Where one named key-value store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// One SQLite database per tenant under the data directory (or `path`).
    Sqlite { path: Option<PathBuf> },
    /// A Redis server, shared by every pycage host that names it; each
    /// tenant's keys live apart from every other's.
    Redis { url: String },
}

#[derive(Debug, Clone)]
pub struct TenantConfig {
    pub name: String,
    /// Handler file or directory (resolved against the config file's directory).
    pub handler: PathBuf,
    pub module: Option<String>,
    /// Host names (lower-case, without port) that reach this tenant; empty = any host.
    pub hosts: Vec<String>,
    /// Path prefix that reaches this tenant ("/shop"); stripped before dispatch.
    pub path_prefix: Option<String>,
    pub limits: Limits,
    pub max_concurrency: Option<u32>,
    /// A virtualenv whose packages this tenant may import (resolved against
    /// the config file's directory). Chosen by the operator, like `handler`.
    pub venv: Option<PathBuf>,
    /// Key-value stores this tenant may open (names of `key_value_stores`).
    pub key_value_stores: Vec<String>,
    /// Where its outbound requests may go; empty: nowhere.
    pub allowed_outbound_hosts: Vec<AllowedHost>,
    /// Its variables, plain and secret.
    pub variables: Vec<VariableSpec>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("{}: {}key `{key}`: {message}", path.display(), tenant.as_ref().map(|t| format!("tenant `{t}`: ")).unwrap_or_default())]
    Invalid {
        path: PathBuf,
        tenant: Option<String>,
        key: String,
        message: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    defaults: RawLimits,
    #[serde(default)]
    key_value_store: BTreeMap<String, RawStore>,
    #[serde(default)]
    outbound: RawOutbound,
    #[serde(default)]
    tenant: Vec<RawTenant>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    #[serde(rename = "type")]
    kind: String,
    url: Option<String>,
    path: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutbound {
    #[serde(default)]
    resolve: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawVariable {
    Plain(String),
    Spec {
        value: Option<String>,
        from_env: Option<String>,
        from_file: Option<PathBuf>,
        #[serde(default)]
        secret: bool,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    admin_listen: Option<String>,
    max_instances: Option<u32>,
    queue_timeout: Option<String>,
    shutdown_timeout: Option<String>,
    body_timeout: Option<String>,
    max_connections: Option<usize>,
    build_timeout: Option<String>,
    build_memory_mib: Option<u64>,
    build_disk_mib: Option<u64>,
    cache_dir: Option<PathBuf>,
    data_dir: Option<PathBuf>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    timeout: Option<String>,
    memory_mib: Option<u64>,
    max_request_body: Option<usize>,
    max_response_body: Option<usize>,
    max_output: Option<usize>,
    max_concurrency: Option<u32>,
    kv_max_key_bytes: Option<usize>,
    kv_max_value_bytes: Option<usize>,
    kv_max_keys: Option<u64>,
    kv_max_total_bytes: Option<u64>,
    kv_max_ops: Option<u32>,
    outbound_max_requests: Option<u32>,
    outbound_max_response_bytes: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    name: String,
    handler: PathBuf,
    module: Option<String>,
    #[serde(default)]
    hosts: Vec<String>,
    path_prefix: Option<String>,
    venv: Option<PathBuf>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    key_value_stores: Vec<String>,
    #[serde(default)]
    allowed_outbound_hosts: Vec<String>,
    #[serde(default)]
    variables: BTreeMap<String, RawVariable>,
}

impl ServeConfig {
    /// Read and validate a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, path, base)
    }

    /// Validate `text`; relative handler paths resolve against `base`.
    pub fn parse(text: &str, path: &Path, base: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let check = Check { path, base };
        let mut config = check.server(&raw.server)?;
        config.key_value_stores = check.stores(&raw.key_value_store)?;
        config.outbound_resolve = check.resolve(&raw.outbound)?;
        let defaults = check.limits(&raw.defaults, &Limits::default(), None, "defaults")?;
        if raw.tenant.is_empty() {
            return Err(check.invalid(None, "tenant", "at least one [[tenant]] is required"));
        }
        let mut names = HashSet::new();
        let mut routes = HashSet::new();
        for raw_tenant in &raw.tenant {
            let tenant = check.tenant(raw_tenant, &defaults, raw.defaults.max_concurrency)?;
            for store in &tenant.key_value_stores {
                if !config.key_value_stores.contains_key(store) {
                    return Err(check.invalid(
                        Some(&tenant.name),
                        "key_value_stores",
                        format!(
                            "store `{store}` is not defined: add a [key_value_store.{store}] table"
                        ),
                    ));
                }
            }
            if !names.insert(tenant.name.clone()) {
                return Err(check.invalid(
                    Some(&tenant.name),
                    "name",
                    "another tenant has the same name",
                ));
            }
            check.unique_routes(&tenant, &mut routes)?;
            config.tenants.push(tenant);
        }
        Ok(config)
    }

    /// A configuration with every server default and one tenant, `default`,
    /// for any host and path: `pycage serve HANDLER`.
    pub fn single(tenant: TenantConfig) -> Self {
        Self {
            listen: DEFAULT_LISTEN.parse().expect("a valid default address"),
            admin_listen: None,
            max_instances: DEFAULT_MAX_INSTANCES,
            queue_timeout: DEFAULT_QUEUE_TIMEOUT,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            build_limits: BuildLimits::default(),
            cache_dir: None,
            data_dir: None,
            key_value_stores: default_stores(),
            outbound_resolve: BTreeMap::new(),
            tenants: vec![tenant],
        }
    }

    /// The largest memory limit of any tenant (the runtime refuses larger ones).
    pub fn max_memory_bytes(&self) -> u64 {
        self.tenants
            .iter()
            .map(|t| t.limits.memory_bytes)
            .max()
            .unwrap_or(0)
    }
}

impl TenantConfig {
    /// A tenant named `name` for `handler`, reached by any host and path,
    /// with the default limits.
    pub fn new(name: impl Into<String>, handler: impl Into<PathBuf>) -> Self {
        Self {
            name: name.into(),
            handler: handler.into(),
            module: None,
            hosts: Vec::new(),
            path_prefix: None,
            limits: Limits::default(),
            max_concurrency: None,
            venv: None,
            key_value_stores: Vec::new(),
            allowed_outbound_hosts: Vec::new(),
            variables: Vec::new(),
        }
    }
}

/// The stores every config has unless it says otherwise: `default`, SQLite.
pub fn default_stores() -> BTreeMap<String, StoreConfig> {
    BTreeMap::from([(
        grants::DEFAULT_STORE.to_owned(),
        StoreConfig::Sqlite { path: None },
    )])
}

/// Validation of one file: every error names the file, the tenant and the key.
struct Check<'a> {
    path: &'a Path,
    base: &'a Path,
}

impl Check<'_> {
    fn invalid(&self, tenant: Option<&str>, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            tenant: tenant.map(str::to_owned),
            key: key.to_owned(),
            message: message.into(),
        }
    }

    fn address(&self, key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
        value.parse::<SocketAddr>().map_err(|_| {
            self.invalid(
                None,
                key,
                format!("`{value}` is not an address like 127.0.0.1:8080"),
            )
        })
    }

    fn duration(
        &self,
        tenant: Option<&str>,
        key: &str,
        value: &Option<String>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match value {
            None => Ok(default),
            Some(text) => parse_duration(text).map_err(|e| self.invalid(tenant, key, e)),
        }
    }

    fn mib(
        &self,
        key: &str,
        value: Option<u64>,
        default: u64,
        min: u64,
    ) -> Result<u64, ConfigError> {
        match value {
            None => Ok(default),
            Some(mib) if (min..=65536).contains(&mib) => Ok(mib << 20),
            Some(mib) => Err(self.invalid(None, key, format!("{mib} is not in {min}..=65536"))),
        }
    }

    /// The `[server]` table, with no tenants yet.
    fn server(&self, server: &RawServer) -> Result<ServeConfig, ConfigError> {
        let listen = self.address(
            "server.listen",
            server.listen.as_deref().unwrap_or(DEFAULT_LISTEN),
        )?;
        let admin_listen = match &server.admin_listen {
            Some(text) => Some(self.address("server.admin_listen", text)?),
            None => None,
        };
        // Port 0 picks a free port for each, so only fixed ports can clash.
        if admin_listen == Some(listen) && listen.port() != 0 {
            return Err(self.invalid(
                None,
                "server.admin_listen",
                "must differ from server.listen",
            ));
        }
        let max_instances = server.max_instances.unwrap_or(DEFAULT_MAX_INSTANCES);
        if !(1..=1024).contains(&max_instances) {
            return Err(self.invalid(
                None,
                "server.max_instances",
                format!("{max_instances} is not in 1..=1024"),
            ));
        }
        let max_connections = server.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
        if !(1..=65536).contains(&max_connections) {
            return Err(self.invalid(
                None,
                "server.max_connections",
                format!("{max_connections} is not in 1..=65536"),
            ));
        }
        let build = BuildLimits::default();
        Ok(ServeConfig {
            listen,
            admin_listen,
            max_instances,
            queue_timeout: self.duration(
                None,
                "server.queue_timeout",
                &server.queue_timeout,
                DEFAULT_QUEUE_TIMEOUT,
            )?,
            shutdown_timeout: self.duration(
                None,
                "server.shutdown_timeout",
                &server.shutdown_timeout,
                DEFAULT_SHUTDOWN_TIMEOUT,
            )?,
            body_timeout: self.duration(
                None,
                "server.body_timeout",
                &server.body_timeout,
                DEFAULT_BODY_TIMEOUT,
            )?,
            max_connections,
            build_limits: BuildLimits {
                timeout: self.duration(
                    None,
                    "server.build_timeout",
                    &server.build_timeout,
                    build.timeout,
                )?,
                memory_bytes: self.mib(
                    "server.build_memory_mib",
                    server.build_memory_mib,
                    build.memory_bytes,
                    256,
                )?,
                disk_bytes: self.mib(
                    "server.build_disk_mib",
                    server.build_disk_mib,
                    build.disk_bytes,
                    256,
                )?,
            },
            cache_dir: server.cache_dir.as_ref().map(|dir| self.base.join(dir)),
            data_dir: server.data_dir.as_ref().map(|dir| self.base.join(dir)),
            key_value_stores: BTreeMap::new(),
            outbound_resolve: BTreeMap::new(),
            tenants: Vec::new(),
        })
    }

    /// The `[key_value_store.NAME]` tables, with `default` added if absent.
    fn stores(
        &self,
        raw: &BTreeMap<String, RawStore>,
    ) -> Result<BTreeMap<String, StoreConfig>, ConfigError> {
        let mut stores = default_stores();
        for (name, store) in raw {
            let key = format!("key_value_store.{name}");
            if !grants::valid_name(name) {
                return Err(self.invalid(
                    None,
                    &key,
                    "a store name is 1-64 of a-z, 0-9, '_', '-', starting with a letter",
                ));
            }
            let config = match store.kind.as_str() {
                "sqlite" => {
                    if store.url.is_some() {
                        return Err(self.invalid(
                            None,
                            &format!("{key}.url"),
                            "a sqlite store has no url (use path)",
                        ));
                    }
                    StoreConfig::Sqlite {
                        path: store.path.as_ref().map(|p| self.base.join(p)),
                    }
                }
                "redis" => {
                    let url = store.url.clone().ok_or_else(|| {
                        self.invalid(
                            None,
                            &format!("{key}.url"),
                            "a redis store needs url = \"redis://host:port/db\"",
                        )
                    })?;
                    // rediss:// (TLS) is not built in: refused here rather
                    // than failing at load with a less clear error.
                    if !(url.starts_with("redis://") || url.starts_with("redis+unix://")) {
                        return Err(self.invalid(
                            None,
                            &format!("{key}.url"),
                            "not a redis:// or redis+unix:// URL (rediss://, Redis over TLS, \
                             is not supported: use a TLS tunnel to a local redis:// address)",
                        ));
                    }
                    if store.path.is_some() {
                        return Err(self.invalid(
                            None,
                            &format!("{key}.path"),
                            "a redis store has no path",
                        ));
                    }
                    StoreConfig::Redis { url }
                }
                other => {
                    return Err(self.invalid(
                        None,
                        &format!("{key}.type"),
                        format!("`{other}` is not sqlite or redis"),
                    ));
                }
            };
            stores.insert(name.clone(), config);
        }
        Ok(stores)
    }

    fn resolve(&self, raw: &RawOutbound) -> Result<BTreeMap<String, IpAddr>, ConfigError> {
        raw.resolve
            .iter()
            .map(|(name, address)| {
                let key = format!("outbound.resolve.{name}");
                let ip = address.parse::<IpAddr>().map_err(|_| {
                    self.invalid(None, &key, format!("`{address}` is not an IP address"))
                })?;
                Ok((name.trim_end_matches('.').to_ascii_lowercase(), ip))
            })
            .collect()
    }

    fn variables(
        &self,
        tenant: &str,
        raw: &BTreeMap<String, RawVariable>,
    ) -> Result<Vec<VariableSpec>, ConfigError> {
        let mut specs = Vec::new();
        for (name, variable) in raw {
            let key = format!("variables.{name}");
            if !grants::valid_variable_name(name) {
                return Err(self.invalid(
                    Some(tenant),
                    &key,
                    "a variable name is 1-64 of a-z, 0-9 and '_', starting with a letter",
                ));
            }
            let (source, secret) = match variable {
                RawVariable::Plain(value) => (VariableSource::Value(value.clone()), false),
                RawVariable::Spec {
                    value,
                    from_env,
                    from_file,
                    secret,
                } => {
                    let source = match (value, from_env, from_file) {
                        (Some(value), None, None) => VariableSource::Value(value.clone()),
                        (None, Some(env), None) => VariableSource::Env(env.clone()),
                        (None, None, Some(file)) => VariableSource::File(self.base.join(file)),
                        _ => {
                            return Err(self.invalid(
                                Some(tenant),
                                &key,
                                "give exactly one of value, from_env and from_file",
                            ));
                        }
                    };
                    (source, *secret)
                }
            };
            specs.push(VariableSpec {
                name: name.clone(),
                source,
                secret,
            });
        }
        Ok(specs)
    }

    /// One `[[tenant]]`; unset limits fall back to `[defaults]`.
    fn tenant(
        &self,
        t: &RawTenant,
        defaults: &Limits,
        default_concurrency: Option<u32>,
    ) -> Result<TenantConfig, ConfigError> {
        let name = t.name.as_str();
        if !grants::valid_tenant(name) {
            return Err(self.invalid(
                Some(name),
                "name",
                "use 1-64 characters from a-z, 0-9, '-' and '_'",
            ));
        }
        let handler = self.base.join(&t.handler);
        if !handler.exists() {
            return Err(self.invalid(
                Some(name),
                "handler",
                format!("{} does not exist", handler.display()),
            ));
        }
        let venv = t.venv.as_ref().map(|venv| self.base.join(venv));
        if let Some(venv) = &venv
            && !venv.is_dir()
        {
            return Err(self.invalid(
                Some(name),
                "venv",
                format!("{} is not a directory", venv.display()),
            ));
        }
        let mut hosts = Vec::new();
        for host in &t.hosts {
            let host = host.to_ascii_lowercase();
            let valid = !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
            if !valid {
                return Err(self.invalid(
                    Some(name),
                    "hosts",
                    format!("`{host}` is not a host name (no port, no scheme)"),
                ));
            }
            hosts.push(host);
        }
        if let Some(prefix) = &t.path_prefix {
            // Requests are matched after their dot-segments are removed, so
            // a prefix with one (`/a/../b`, `/.`) could never match.
            let valid = prefix.starts_with('/')
                && prefix.len() > 1
                && !prefix.ends_with('/')
                && !prefix.contains(['?', '#', '%', '{', '}'])
                && crate::routing::normalize_path(prefix).as_deref() == Ok(prefix.as_str());
            if !valid {
                return Err(self.invalid(
                    Some(name),
                    "path_prefix",
                    format!("`{prefix}` must look like /name (leading '/', no trailing '/')"),
                ));
            }
        }
        let limits = self.limits(&t.limits, defaults, Some(name), "limits")?;
        let max_concurrency = t.limits.max_concurrency.or(default_concurrency);
        if max_concurrency == Some(0) {
            return Err(self.invalid(Some(name), "limits.max_concurrency", "must be at least 1"));
        }
        for store in &t.key_value_stores {
            if !grants::valid_name(store) {
                return Err(self.invalid(
                    Some(name),
                    "key_value_stores",
                    format!("`{store}` is not a store name"),
                ));
            }
        }
        let allowed_outbound_hosts = t
            .allowed_outbound_hosts
            .iter()
            .map(|entry| {
                AllowedHost::parse(entry)
                    .map_err(|e| self.invalid(Some(name), "allowed_outbound_hosts", e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let variables = self.variables(name, &t.variables)?;
        Ok(TenantConfig {
            name: name.to_owned(),
            handler,
            module: t.module.clone(),
            hosts,
            path_prefix: t.path_prefix.clone(),
            limits,
            max_concurrency,
            venv,
            key_value_stores: t.key_value_stores.clone(),
            allowed_outbound_hosts,
            variables,
        })
    }

    /// No two tenants may claim the same host and prefix.
    fn unique_routes(
        &self,
        tenant: &TenantConfig,
        seen: &mut HashSet<(Option<String>, Option<String>)>,
    ) -> Result<(), ConfigError> {
        let hosts: Vec<Option<&str>> = if tenant.hosts.is_empty() {
            vec![None]
        } else {
            tenant.hosts.iter().map(|h| Some(h.as_str())).collect()
        };
        for host in hosts {
            if !seen.insert((host.map(str::to_owned), tenant.path_prefix.clone())) {
                return Err(self.invalid(
                    Some(&tenant.name),
                    "hosts",
                    format!(
                        "host {} with path prefix {} already routes to another tenant",
                        host.unwrap_or("(any)"),
                        tenant.path_prefix.as_deref().unwrap_or("(none)")
                    ),
                ));
            }
        }
        Ok(())
    }

    fn limits(
        &self,
        raw: &RawLimits,
        defaults: &Limits,
        tenant: Option<&str>,
        table: &str,
    ) -> Result<Limits, ConfigError> {
        let key = |name: &str| format!("{table}.{name}");
        let memory_bytes = match raw.memory_mib {
            Some(mib) if !(16..=16384).contains(&mib) => {
                return Err(self.invalid(
                    tenant,
                    &key("memory_mib"),
                    format!("{mib} is not in 16..=16384"),
                ));
            }
            Some(mib) => mib << 20,
            None => defaults.memory_bytes,
        };
        let positive = |name: &str, value: Option<usize>, default: usize| match value {
            Some(0) => Err(self.invalid(tenant, &key(name), "must be at least 1")),
            Some(v) => Ok(v),
            None => Ok(default),
        };
        Ok(Limits {
            timeout: self.duration(tenant, &key("timeout"), &raw.timeout, defaults.timeout)?,
            memory_bytes,
            max_request_body: positive(
                "max_request_body",
                raw.max_request_body,
                defaults.max_request_body,
            )?,
            max_response_body: positive(
                "max_response_body",
                raw.max_response_body,
                defaults.max_response_body,
            )?,
            max_output_bytes: positive("max_output", raw.max_output, defaults.max_output_bytes)?,
            kv: KvLimits {
                max_key_bytes: positive(
                    "kv_max_key_bytes",
                    raw.kv_max_key_bytes,
                    defaults.kv.max_key_bytes,
                )?,
                max_value_bytes: positive(
                    "kv_max_value_bytes",
                    raw.kv_max_value_bytes,
                    defaults.kv.max_value_bytes,
                )?,
                max_keys: raw.kv_max_keys.unwrap_or(defaults.kv.max_keys),
                max_total_bytes: raw
                    .kv_max_total_bytes
                    .unwrap_or(defaults.kv.max_total_bytes),
                max_ops: raw.kv_max_ops.unwrap_or(defaults.kv.max_ops),
            },
            outbound: OutboundLimits {
                max_requests: raw
                    .outbound_max_requests
                    .unwrap_or(defaults.outbound.max_requests),
                max_response_bytes: raw
                    .outbound_max_response_bytes
                    .unwrap_or(defaults.outbound.max_response_bytes),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ServeConfig, ConfigError> {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures");
        ServeConfig::parse(text, Path::new("pycage.toml"), &fixtures)
    }

    fn error(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn a_complete_config_parses_with_defaults_and_overrides() {
        let config = parse(
            r#"
            [server]
            listen = "127.0.0.1:0"
            admin_listen = "127.0.0.1:9100"
            max_instances = 8
            [defaults]
            timeout = "2s"
            [[tenant]]
            name = "hello"
            handler = "hello/hello.py"
            hosts = ["Hello.Example"]
            [[tenant]]
            name = "api"
            handler = "api"
            path_prefix = "/api"
            limits = { memory_mib = 64, timeout = "500ms" }
            "#,
        )
        .unwrap();
        assert_eq!(config.max_instances, 8);
        assert_eq!(config.tenants[0].hosts, ["hello.example"]);
        assert_eq!(config.tenants[0].limits.timeout, Duration::from_secs(2));
        assert_eq!(config.tenants[1].limits.timeout, Duration::from_millis(500));
        assert_eq!(config.tenants[1].limits.memory_bytes, 64 << 20);
        assert_eq!(config.max_memory_bytes(), Limits::default().memory_bytes);
        assert_eq!(config.queue_timeout, DEFAULT_QUEUE_TIMEOUT);
    }

    #[test]
    fn errors_name_the_tenant_and_the_key() {
        let e = error(
            "[[tenant]]\nname = \"a\"\nhandler = \"hello\"\nlimits = { timeout = \"soon\" }\n",
        );
        assert!(e.contains("tenant `a`: key `limits.timeout`"), "{e}");
        let e = error("[[tenant]]\nname = \"a\"\nhandler = \"nope\"\n");
        assert!(
            e.contains("tenant `a`: key `handler`") && e.contains("does not exist"),
            "{e}"
        );
        let e = error("[[tenant]]\nname = \"A b\"\nhandler = \"hello\"\n");
        assert!(e.contains("key `name`"), "{e}");
        let e = error(
            "[[tenant]]\nname = \"a\"\nhandler = \"hello\"\n[[tenant]]\nname = \"a\"\nhandler = \"api\"\npath_prefix=\"/x\"\n",
        );
        assert!(e.contains("same name"), "{e}");
        let e = error(
            "[[tenant]]\nname = \"a\"\nhandler = \"hello\"\n[[tenant]]\nname = \"b\"\nhandler = \"api\"\n",
        );
        assert!(
            e.contains("tenant `b`") && e.contains("already routes"),
            "{e}"
        );
        for prefix in ["/x/", "/.", "/a/../b", "/a/./b"] {
            let e = error(&format!(
                "[[tenant]]\nname = \"a\"\nhandler = \"hello\"\npath_prefix = \"{prefix}\"\n"
            ));
            assert!(e.contains("key `path_prefix`"), "{prefix}: {e}");
        }
        let e = error(
            "[server]\nlisten = \"localhost\"\n[[tenant]]\nname = \"a\"\nhandler = \"hello\"\n",
        );
        assert!(e.contains("key `server.listen`"), "{e}");
        let e = error("[[tenant]]\nname = \"a\"\nhandler = \"hello\"\nvenv = \"no-such-venv\"\n");
        assert!(e.contains("tenant `a`: key `venv`"), "{e}");
        let ok = parse("[[tenant]]\nname = \"a\"\nhandler = \"hello\"\nvenv = \"deps/vendor\"\n")
            .unwrap();
        assert!(
            ok.tenants[0]
                .venv
                .as_ref()
                .unwrap()
                .ends_with("deps/vendor")
        );
        let e = error("[server]\nmax_instance = 3\n");
        assert!(e.contains("unknown field `max_instance`"), "{e}");
        let e = error("");
        assert!(e.contains("at least one [[tenant]]"), "{e}");
        let e =
            error("[defaults]\nmemory_mib = 1\n[[tenant]]\nname = \"a\"\nhandler = \"hello\"\n");
        assert!(e.contains("key `defaults.memory_mib`"), "{e}");
    }
}
