//! Capability `keyvalue`: per-tenant key-value stores on the standard
//! `wasi:keyvalue` interfaces (`store` and `atomics`, `0.2.0-draft2`, as
//! Spin 3.x links them).
//!
//! - link: `wasi:keyvalue/store` and `wasi:keyvalue/atomics`, for every
//!   image: a tenant with no grant gets `no-such-store` for every name;
//! - grant: at load, each store the tenant names is opened on its backend
//!   (SQLite or Redis, `backend`), in the tenant's own namespace, so a store
//!   that cannot be reached fails the load, not a request;
//! - prepare: a handle on the grant and fresh per-request counters.
//!
//! Quotas (`KvLimits`) are checked by the backends atomically with each
//! write (key and value sizes, keys and bytes per store) and here (operations
//! per request); exceeding one is an error value for the guest
//! (`KeyValueError` in Python) and a counted limit hit, never a host failure.

pub(crate) mod backend;
mod redis;
mod sqlite;

use std::collections::BTreeMap;
use std::sync::Arc;

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

use crate::contract::wit::{BucketRep, CasRep, kv_atomics, kv_store};
use crate::limits::KvLimits;
pub(crate) use backend::{Backend, Backends, KvError};

/// Keys returned per `list-keys` page.
const PAGE: usize = 1000;

/// What one tenant was granted: its stores, each in its own namespace.
#[derive(Clone, Default)]
pub(crate) struct KvGrant {
    pub stores: BTreeMap<String, Arc<dyn Backend>>,
    pub limits: KvLimits,
}

/// What a request did with its stores, for logs and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvUsage {
    /// Operations, of every kind.
    pub ops: u32,
    /// Whether a quota refused an operation.
    pub quota_hit: bool,
    /// Whether a store was named that is not granted.
    pub denied: bool,
    /// Whether a backend failed.
    pub failed: bool,
}

/// One instance's state.
pub(crate) struct KvState {
    grant: Arc<KvGrant>,
    pub usage: KvUsage,
    /// Compare-and-swap handles alive: each holds a value in host memory.
    live_cas: usize,
}

/// The most compare-and-swap handles one instance may hold at once; each
/// keeps the value it observed (up to `max_value_bytes`) in host memory.
const MAX_LIVE_CAS: usize = 16;

impl KvGrant {
    pub(crate) fn prepare(self: &Arc<Self>) -> KvState {
        KvState {
            grant: self.clone(),
            usage: KvUsage::default(),
            live_cas: 0,
        }
    }
}

/// What the host functions need from a Store.
pub(crate) struct KvView<'a> {
    pub state: &'a mut KvState,
    pub table: &'a mut ResourceTable,
}

struct Kv;

impl HasData for Kv {
    type Data<'a> = KvView<'a>;
}

/// Add `wasi:keyvalue/store` and `wasi:keyvalue/atomics` to `linker`.
pub(crate) fn link<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> KvView<'_>,
) -> wasmtime::Result<()> {
    kv_store::add_to_linker::<T, Kv>(linker, view)?;
    kv_atomics::add_to_linker::<T, Kv>(linker, view)
}

impl KvView<'_> {
    /// Count one operation against the request's budget.
    fn operation(&mut self) -> Result<(), kv_store::Error> {
        self.state.usage.ops = self.state.usage.ops.saturating_add(1);
        if self.state.usage.ops > self.state.grant.limits.max_ops {
            self.state.usage.quota_hit = true;
            return Err(kv_store::Error::Other(format!(
                "more than {} key-value operations in one request",
                self.state.grant.limits.max_ops
            )));
        }
        Ok(())
    }

    fn backend(&mut self, bucket: &Resource<BucketRep>) -> wasmtime::Result<Arc<dyn Backend>> {
        let store = &self.table.get(bucket)?.store;
        Ok(self.state.grant.stores[store].clone())
    }

    /// Check a key, count the operation and find the bucket's backend.
    fn begin(
        &mut self,
        bucket: &Resource<BucketRep>,
        key: Option<&str>,
    ) -> wasmtime::Result<Result<Arc<dyn Backend>, kv_store::Error>> {
        if let Some(key) = key
            && key.len() > self.state.grant.limits.max_key_bytes
        {
            self.state.usage.quota_hit = true;
            return Ok(Err(kv_store::Error::Other(format!(
                "the key is {} bytes, over the limit of {}",
                key.len(),
                self.state.grant.limits.max_key_bytes
            ))));
        }
        if let Err(error) = self.operation() {
            return Ok(Err(error));
        }
        self.backend(bucket).map(Ok)
    }

    /// A backend's error as the guest sees it, noted for the request's log.
    fn error(&mut self, error: KvError) -> kv_store::Error {
        match error {
            KvError::Quota(message) => {
                self.state.usage.quota_hit = true;
                kv_store::Error::Other(message)
            }
            KvError::Invalid(message) => kv_store::Error::Other(message),
            KvError::Backend(message) => {
                self.state.usage.failed = true;
                tracing::warn!(error = %message, "key-value backend failed");
                kv_store::Error::Other("the store is unavailable".into())
            }
        }
    }

    fn check_value(&mut self, value: &[u8]) -> Result<(), kv_store::Error> {
        let limit = self.state.grant.limits.max_value_bytes;
        if value.len() > limit {
            self.state.usage.quota_hit = true;
            return Err(kv_store::Error::Other(format!(
                "the value is {} bytes, over the limit of {limit}",
                value.len()
            )));
        }
        Ok(())
    }
}

/// `Ok(value)` of a backend result, or the guest's error for it.
macro_rules! settle {
    ($view:expr, $result:expr) => {
        match $result {
            Ok(value) => Ok(Ok(value)),
            Err(error) => Ok(Err($view.error(error))),
        }
    };
}

/// `?` for the nested `wasmtime::Result<Result<_, Error>>` the bindings use.
macro_rules! begin {
    ($view:expr, $bucket:expr, $key:expr) => {
        match $view.begin(&$bucket, $key)? {
            Ok(backend) => backend,
            Err(error) => return Ok(Err(error)),
        }
    };
}

impl kv_store::Host for KvView<'_> {
    async fn open(
        &mut self,
        identifier: String,
    ) -> wasmtime::Result<Result<Resource<BucketRep>, kv_store::Error>> {
        if let Err(error) = self.operation() {
            return Ok(Err(error));
        }
        if !self.state.grant.stores.contains_key(&identifier) {
            self.state.usage.denied = true;
            return Ok(Err(kv_store::Error::NoSuchStore));
        }
        Ok(Ok(self.table.push(BucketRep { store: identifier })?))
    }
}

impl kv_store::HostBucket for KvView<'_> {
    async fn get(
        &mut self,
        bucket: Resource<BucketRep>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, kv_store::Error>> {
        let backend = begin!(self, bucket, Some(&key));
        settle!(self, backend.get(&key).await)
    }

    async fn set(
        &mut self,
        bucket: Resource<BucketRep>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), kv_store::Error>> {
        let backend = begin!(self, bucket, Some(&key));
        if let Err(error) = self.check_value(&value) {
            return Ok(Err(error));
        }
        let limits = self.state.grant.limits;
        settle!(self, backend.set(&key, &value, &limits).await)
    }

    async fn delete(
        &mut self,
        bucket: Resource<BucketRep>,
        key: String,
    ) -> wasmtime::Result<Result<(), kv_store::Error>> {
        let backend = begin!(self, bucket, Some(&key));
        settle!(self, backend.delete(&key).await)
    }

    async fn exists(
        &mut self,
        bucket: Resource<BucketRep>,
        key: String,
    ) -> wasmtime::Result<Result<bool, kv_store::Error>> {
        let backend = begin!(self, bucket, Some(&key));
        settle!(self, backend.exists(&key).await)
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<BucketRep>,
        cursor: Option<String>,
    ) -> wasmtime::Result<Result<kv_store::KeyResponse, kv_store::Error>> {
        let backend = begin!(self, bucket, None);
        match backend.list_keys(cursor.as_deref(), PAGE).await {
            Ok((keys, cursor)) => Ok(Ok(kv_store::KeyResponse { keys, cursor })),
            Err(error) => Ok(Err(self.error(error))),
        }
    }

    async fn drop(&mut self, bucket: Resource<BucketRep>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl kv_atomics::Host for KvView<'_> {
    async fn increment(
        &mut self,
        bucket: Resource<BucketRep>,
        key: String,
        delta: i64,
    ) -> wasmtime::Result<Result<i64, kv_store::Error>> {
        let backend = begin!(self, bucket, Some(&key));
        let limits = self.state.grant.limits;
        settle!(self, backend.increment(&key, delta, &limits).await)
    }

    async fn swap(
        &mut self,
        cas: Resource<CasRep>,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), kv_atomics::CasError>> {
        let rep = self.table.delete(cas)?;
        self.state.live_cas = self.state.live_cas.saturating_sub(1);
        if let Err(error) = self.operation().and_then(|()| self.check_value(&value)) {
            return Ok(Err(kv_atomics::CasError::StoreError(error)));
        }
        let backend = self.state.grant.stores[&rep.store].clone();
        let limits = self.state.grant.limits;
        match backend
            .swap(&rep.key, rep.observed.as_deref(), &value, &limits)
            .await
        {
            Ok(Ok(())) => Ok(Ok(())),
            // Changed since the handle was made: a new handle on the
            // current value, for a retry.
            Ok(Err(current)) => {
                let fresh = self.table.push(CasRep {
                    store: rep.store,
                    key: rep.key,
                    observed: current,
                })?;
                self.state.live_cas += 1;
                Ok(Err(kv_atomics::CasError::CasFailed(fresh)))
            }
            Err(error) => Ok(Err(kv_atomics::CasError::StoreError(self.error(error)))),
        }
    }
}

impl kv_atomics::HostCas for KvView<'_> {
    async fn new(
        &mut self,
        bucket: Resource<BucketRep>,
        key: String,
    ) -> wasmtime::Result<Result<Resource<CasRep>, kv_store::Error>> {
        if self.state.live_cas >= MAX_LIVE_CAS {
            self.state.usage.quota_hit = true;
            return Ok(Err(kv_store::Error::Other(format!(
                "more than {MAX_LIVE_CAS} compare-and-swap handles alive at once"
            ))));
        }
        let backend = begin!(self, bucket, Some(&key));
        let store = self.table.get(&bucket)?.store.clone();
        match backend.get(&key).await {
            Ok(observed) => {
                let handle = self.table.push(CasRep {
                    store,
                    key,
                    observed,
                })?;
                self.state.live_cas += 1;
                Ok(Ok(handle))
            }
            Err(error) => Ok(Err(self.error(error))),
        }
    }

    async fn current(
        &mut self,
        cas: Resource<CasRep>,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, kv_store::Error>> {
        Ok(Ok(self.table.get(&cas)?.observed.clone()))
    }

    async fn drop(&mut self, cas: Resource<CasRep>) -> wasmtime::Result<()> {
        self.table.delete(cas)?;
        self.state.live_cas = self.state.live_cas.saturating_sub(1);
        Ok(())
    }
}
