//! Where key-value data lives: the operations every backend provides, and
//! the process-wide registry that opens a tenant's store on the backend its
//! name is configured with.
//!
//! A backend value is one namespace: one tenant's one store. Tenant and
//! store names are validated (`grants::valid_name`: no `/`, `:` or `.`), so
//! the namespace a backend derives from them (a file name, a Redis key
//! prefix) can never reach another tenant's data, whatever keys the guest
//! writes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::redis::{RedisBackend, RedisServer};
use super::sqlite::SqliteBackend;
use crate::config::StoreConfig;
use crate::limits::KvLimits;

/// Why an operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KvError {
    /// A quota refused it (the message is for the guest).
    Quota(String),
    /// The operation does not apply (incrementing a value that is not an
    /// integer, say).
    Invalid(String),
    /// The backend failed (logged; the guest is told the store is
    /// unavailable).
    Backend(String),
}

/// One tenant's one store.
#[wasmtime_wasi::async_trait]
pub(crate) trait Backend: Send + Sync {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError>;
    /// Store `value`, within the per-store quotas of `limits`.
    async fn set(&self, key: &str, value: &[u8], limits: &KvLimits) -> Result<(), KvError>;
    async fn delete(&self, key: &str) -> Result<(), KvError>;
    async fn exists(&self, key: &str) -> Result<bool, KvError>;
    /// Up to `page` keys after `cursor`, and the cursor of the next page.
    async fn list_keys(
        &self,
        cursor: Option<&str>,
        page: usize,
    ) -> Result<(Vec<String>, Option<String>), KvError>;
    /// Add `delta` to the ASCII decimal integer under `key` (absent: 0).
    async fn increment(&self, key: &str, delta: i64, limits: &KvLimits) -> Result<i64, KvError>;
    /// Set `key` to `new` if its value is `expected` (`None`: absent);
    /// otherwise `Err(current value)`.
    async fn swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
        limits: &KvLimits,
    ) -> Result<Result<(), Option<Vec<u8>>>, KvError>;
}

/// A page of `list_keys` from up to `page + 1` keys in key order (one more
/// than a page, to learn whether another follows): the first `page`, and
/// the cursor of the next page, which is the last key of this one.
pub(crate) fn page_of(mut keys: Vec<String>, page: usize) -> (Vec<String>, Option<String>) {
    if keys.len() > page {
        keys.truncate(page);
        let next = keys.last().cloned();
        (keys, next)
    } else {
        (keys, None)
    }
}

/// The integer an increment starts from, from a stored value.
pub(crate) fn parse_integer(value: Option<&[u8]>) -> Result<i64, KvError> {
    match value {
        None => Ok(0),
        Some(bytes) => std::str::from_utf8(bytes)
            .ok()
            .and_then(|text| text.trim().parse::<i64>().ok())
            .ok_or_else(|| KvError::Invalid("the value is not an integer".into())),
    }
}

/// Opens tenants' stores, sharing what can be shared (one connection per
/// Redis server, one SQLite database per tenant and store).
pub(crate) struct Backends {
    stores: BTreeMap<String, StoreConfig>,
    data_dir: Option<PathBuf>,
    redis: Mutex<BTreeMap<String, Arc<RedisServer>>>,
    sqlite: Mutex<BTreeMap<PathBuf, Arc<SqliteBackend>>>,
}

impl Backends {
    /// `stores` by name; SQLite stores without a path live under
    /// `data_dir` (which must be set if any tenant uses one).
    pub(crate) fn new(stores: BTreeMap<String, StoreConfig>, data_dir: Option<PathBuf>) -> Self {
        Self {
            stores,
            data_dir,
            redis: Mutex::default(),
            sqlite: Mutex::default(),
        }
    }

    /// The store `store` of tenant `tenant`: opened (and checked reachable)
    /// now.
    pub(crate) fn open(&self, tenant: &str, store: &str) -> Result<Arc<dyn Backend>, String> {
        debug_assert!(crate::grants::valid_name(store));
        let config = self.stores.get(store).ok_or_else(|| {
            format!("store `{store}` is not defined (add [key_value_store.{store}])")
        })?;
        match config {
            StoreConfig::Sqlite { path } => {
                let root = match path {
                    Some(path) => path.clone(),
                    None => self
                        .data_dir
                        .as_ref()
                        .ok_or("no data directory: set PYCAGE_DATA_DIR (or HOME), or --data-dir")?
                        .join("kv"),
                };
                let file = root.join(tenant).join(format!("{store}.sqlite"));
                let mut open = self.sqlite.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(backend) = open.get(&file) {
                    return Ok(backend.clone());
                }
                let backend = Arc::new(SqliteBackend::open(&file)?);
                open.insert(file, backend.clone());
                Ok(backend)
            }
            StoreConfig::Redis { url } => {
                let server = {
                    let mut servers = self.redis.lock().unwrap_or_else(|e| e.into_inner());
                    match servers.get(url) {
                        Some(server) => server.clone(),
                        None => {
                            let server = Arc::new(RedisServer::connect(url)?);
                            servers.insert(url.clone(), server.clone());
                            server
                        }
                    }
                };
                Ok(Arc::new(RedisBackend::new(server, tenant, store)))
            }
        }
    }
}
