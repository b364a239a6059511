//! A plain `wasi:http` host, to test and benchmark what `pycage export`
//! writes against the peer users would run instead: it serves a component
//! the way `wasmtime serve -Scli` 46 does (wasmtime-wasi-http, one Store
//! and one instance per request, the CLI interfaces linked besides the
//! proxy world) and takes the same flags, so an export's `serve.sh`
//! command line runs here with `wasmtime serve` replaced by this binary
//! (a leading `serve` is skipped, so a link named `wasmtime` to it runs an
//! export's `serve.sh` as it is).
//!
//! `--profile spin` links the interfaces Spin 3.x links instead of
//! wasmtime's: `wasi:keyvalue@0.2.0-draft2` (stores named with `--kv-store`,
//! kept in memory across requests, like Spin's default store) and
//! `wasi:config/store@0.2.0-draft-2024-09-27` (values from `-Sconfig-var`).
//! A component importing anything else fails to link, naming the import.
//!
//! ```text
//! wasi_http_host [--profile wasmtime|spin] [--addr ADDR] [--dir HOST::GUEST]...
//!                [-Scli] [-Skeyvalue] [-Sconfig] [-Sconfig-var=NAME=VALUE]...
//!                [-Wmax-memory-size=BYTES] [-Wtimeout=DURATION] [--kv-store NAME]...
//!                COMPONENT
//! ```
//!
//! It prints `Serving HTTP on http://ADDR/` on stderr once it listens (as
//! `wasmtime serve` does). Not a production server: no TLS, no limits on
//! connections.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use http_body_util::BodyExt;
use hyper::server::conn::http1;
use wasmtime::component::{Component, Linker, Resource, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimits,
    StoreLimitsBuilder,
};
use wasmtime_wasi::{DirPerms, FilePerms, WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::WasiHttpCtx;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::p2::{WasiHttpCtxView, WasiHttpView};

/// Spin 3.x's versions of key-value and config, implemented in memory.
mod spin {
    wasmtime::component::bindgen!({
        path: "../wit",
        inline: "
            package peer:spin;
            world spin-imports {
                import wasi:keyvalue/store@0.2.0-draft2;
                import wasi:keyvalue/atomics@0.2.0-draft2;
                import wasi:config/store@0.2.0-draft-2024-09-27;
            }
        ",
        world: "peer:spin/spin-imports",
        with: {
            "wasi:keyvalue/store.bucket": super::Bucket,
            "wasi:keyvalue/atomics.cas": super::Cas,
        },
    });
}
use spin::wasi::config::store as config_store;
use spin::wasi::keyvalue::{atomics, store};

pub struct Bucket {
    name: String,
}

pub struct Cas {
    store: String,
    key: String,
    observed: Option<Vec<u8>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Profile {
    Wasmtime,
    Spin,
}

struct Options {
    profile: Profile,
    addr: SocketAddr,
    dirs: Vec<(String, String)>,
    keyvalue: bool,
    config: bool,
    config_vars: Vec<(String, String)>,
    max_memory: Option<usize>,
    timeout: Option<Duration>,
    kv_stores: HashSet<String>,
    component: String,
}

fn parse_args() -> anyhow::Result<Options> {
    let mut options = Options {
        profile: Profile::Wasmtime,
        addr: "127.0.0.1:8080".parse()?,
        dirs: Vec::new(),
        keyvalue: false,
        config: false,
        config_vars: Vec::new(),
        max_memory: None,
        timeout: None,
        kv_stores: HashSet::new(),
        component: String::new(),
    };
    let mut args = std::env::args().skip(1).peekable();
    // `wasmtime serve ...` works with this binary in wasmtime's place.
    if args.peek().is_some_and(|first| first == "serve") {
        args.next();
    }
    let mut positional = Vec::new();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--profile" => {
                options.profile = match value("--profile")?.as_str() {
                    "wasmtime" => Profile::Wasmtime,
                    "spin" => Profile::Spin,
                    other => bail!("unknown profile {other}"),
                }
            }
            "--addr" => options.addr = value("--addr")?.parse()?,
            "--dir" => {
                let dir = value("--dir")?;
                let (host, guest) = dir.split_once("::").unwrap_or((&dir, &dir));
                options.dirs.push((host.to_owned(), guest.to_owned()));
            }
            "--kv-store" => {
                options.kv_stores.insert(value("--kv-store")?);
            }
            "-Scli" => {}
            "-Skeyvalue" => options.keyvalue = true,
            "-Sconfig" => options.config = true,
            _ if arg.starts_with("-Sconfig-var=") => {
                let pair = &arg["-Sconfig-var=".len()..];
                let (name, value) = pair.split_once('=').context("-Sconfig-var=NAME=VALUE")?;
                options
                    .config_vars
                    .push((name.to_owned(), value.to_owned()));
            }
            _ if arg.starts_with("-Wmax-memory-size=") => {
                options.max_memory = Some(arg["-Wmax-memory-size=".len()..].parse()?);
            }
            _ if arg.starts_with("-Wtimeout=") => {
                let text = &arg["-Wtimeout=".len()..];
                let millis: u64 = text.strip_suffix("ms").context("-Wtimeout=Nms")?.parse()?;
                options.timeout = Some(Duration::from_millis(millis));
            }
            _ if arg.starts_with('-') => bail!("unknown flag {arg}"),
            _ => positional.push(arg),
        }
    }
    options.component = match positional.as_slice() {
        [component] => component.clone(),
        _ => bail!("give exactly one COMPONENT"),
    };
    Ok(options)
}

/// State shared by every request.
struct Shared {
    pre: ProxyPre<Host>,
    options: Options,
    /// Spin profile: every store's data, kept across requests.
    spin_data: Mutex<BTreeMap<String, BTreeMap<String, Vec<u8>>>>,
    wasmtime_kv: Option<wasmtime_wasi_keyvalue::WasiKeyValueCtx>,
    wasmtime_config: wasmtime_wasi_config::WasiConfigVariables,
}

/// One request's Store data.
struct Host {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    limits: StoreLimits,
    shared: Option<Arc<Shared>>,
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for Host {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: Default::default(),
        }
    }
}

impl Host {
    fn shared(&self) -> &Shared {
        self.shared.as_ref().expect("set before the guest runs")
    }
}

impl store::Host for Host {
    fn open(&mut self, identifier: String) -> Result<Resource<Bucket>, store::Error> {
        if !self.shared().options.kv_stores.contains(&identifier) {
            return Err(store::Error::AccessDenied);
        }
        self.table
            .push(Bucket { name: identifier })
            .map_err(|e| store::Error::Other(e.to_string()))
    }
}

impl Host {
    fn bucket_name(&self, bucket: &Resource<Bucket>) -> Result<String, store::Error> {
        self.table
            .get(bucket)
            .map(|b| b.name.clone())
            .map_err(|e| store::Error::Other(e.to_string()))
    }

    fn with_store<R>(&self, name: &str, f: impl FnOnce(&mut BTreeMap<String, Vec<u8>>) -> R) -> R {
        let mut data = self.shared().spin_data.lock().unwrap();
        f(data.entry(name.to_owned()).or_default())
    }
}

impl store::HostBucket for Host {
    fn get(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> Result<Option<Vec<u8>>, store::Error> {
        let name = self.bucket_name(&bucket)?;
        Ok(self.with_store(&name, |s| s.get(&key).cloned()))
    }

    fn set(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), store::Error> {
        let name = self.bucket_name(&bucket)?;
        self.with_store(&name, |s| s.insert(key, value));
        Ok(())
    }

    fn delete(&mut self, bucket: Resource<Bucket>, key: String) -> Result<(), store::Error> {
        let name = self.bucket_name(&bucket)?;
        self.with_store(&name, |s| s.remove(&key));
        Ok(())
    }

    fn exists(&mut self, bucket: Resource<Bucket>, key: String) -> Result<bool, store::Error> {
        let name = self.bucket_name(&bucket)?;
        Ok(self.with_store(&name, |s| s.contains_key(&key)))
    }

    fn list_keys(
        &mut self,
        bucket: Resource<Bucket>,
        _cursor: Option<String>,
    ) -> Result<store::KeyResponse, store::Error> {
        let name = self.bucket_name(&bucket)?;
        let keys = self.with_store(&name, |s| s.keys().cloned().collect());
        Ok(store::KeyResponse { keys, cursor: None })
    }

    fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl atomics::Host for Host {
    fn increment(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        delta: i64,
    ) -> Result<i64, store::Error> {
        let name = self.bucket_name(&bucket)?;
        self.with_store(&name, |s| {
            let current = match s.get(&key) {
                Some(bytes) => std::str::from_utf8(bytes)
                    .ok()
                    .and_then(|t| t.parse::<i64>().ok())
                    .ok_or_else(|| store::Error::Other("not an integer".into()))?,
                None => 0,
            };
            let next = current
                .checked_add(delta)
                .ok_or_else(|| store::Error::Other("overflow".into()))?;
            s.insert(key, next.to_string().into_bytes());
            Ok(next)
        })
    }

    fn swap(&mut self, cas: Resource<Cas>, value: Vec<u8>) -> Result<(), atomics::CasError> {
        let cas = self
            .table
            .delete(cas)
            .map_err(|e| atomics::CasError::StoreError(store::Error::Other(e.to_string())))?;
        let store_name = cas.store.clone();
        let swapped = self.with_store(&store_name, |s| {
            if s.get(&cas.key) == cas.observed.as_ref() {
                s.insert(cas.key.clone(), value);
                true
            } else {
                false
            }
        });
        if swapped {
            Ok(())
        } else {
            let again = self
                .table
                .push(cas)
                .map_err(|e| atomics::CasError::StoreError(store::Error::Other(e.to_string())))?;
            Err(atomics::CasError::CasFailed(again))
        }
    }
}

impl atomics::HostCas for Host {
    fn new(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> Result<Resource<Cas>, store::Error> {
        let name = self.bucket_name(&bucket)?;
        let observed = self.with_store(&name, |s| s.get(&key).cloned());
        self.table
            .push(Cas {
                store: name,
                key,
                observed,
            })
            .map_err(|e| store::Error::Other(e.to_string()))
    }

    fn current(&mut self, cas: Resource<Cas>) -> Result<Option<Vec<u8>>, store::Error> {
        self.table
            .get(&cas)
            .map(|c| c.observed.clone())
            .map_err(|e| store::Error::Other(e.to_string()))
    }

    fn drop(&mut self, cas: Resource<Cas>) -> wasmtime::Result<()> {
        self.table.delete(cas)?;
        Ok(())
    }
}

impl config_store::Host for Host {
    fn get(&mut self, key: String) -> Result<Option<String>, config_store::Error> {
        let vars = &self.shared().options.config_vars;
        Ok(vars.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone()))
    }

    fn get_all(&mut self) -> Result<Vec<(String, String)>, config_store::Error> {
        Ok(self.shared().options.config_vars.clone())
    }
}

struct Spin;
impl wasmtime::component::HasData for Spin {
    type Data<'a> = &'a mut Host;
}

fn link(linker: &mut Linker<Host>, options: &Options) -> anyhow::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)?;
    match options.profile {
        Profile::Spin => {
            store::add_to_linker::<Host, Spin>(linker, |h| h)?;
            atomics::add_to_linker::<Host, Spin>(linker, |h| h)?;
            config_store::add_to_linker::<Host, Spin>(linker, |h| h)?;
        }
        Profile::Wasmtime => {
            if options.keyvalue {
                wasmtime_wasi_keyvalue::add_to_linker(linker, |h: &mut Host| {
                    let shared = h.shared.as_ref().expect("set before the guest runs");
                    wasmtime_wasi_keyvalue::WasiKeyValue::new(
                        shared.wasmtime_kv.as_ref().expect("-Skeyvalue"),
                        &mut h.table,
                    )
                })?;
            }
            if options.config {
                wasmtime_wasi_config::add_to_linker(linker, |h: &mut Host| {
                    let shared = h.shared.as_ref().expect("set before the guest runs");
                    wasmtime_wasi_config::WasiConfig::from(&shared.wasmtime_config)
                })?;
            }
        }
    }
    Ok(())
}

impl Shared {
    fn store(self: &Arc<Self>) -> anyhow::Result<Store<Host>> {
        let mut wasi = WasiCtx::builder();
        wasi.inherit_stdout().inherit_stderr();
        for (host, guest) in &self.options.dirs {
            // As `wasmtime serve` grants them: read-write.
            wasi.preopened_dir(host, guest, DirPerms::all(), FilePerms::all())?;
        }
        let mut limits = StoreLimitsBuilder::new();
        if let Some(max) = self.options.max_memory {
            limits = limits.memory_size(max);
        }
        let mut store = Store::new(
            self.pre.engine(),
            Host {
                wasi: wasi.build(),
                http: WasiHttpCtx::new(),
                table: ResourceTable::new(),
                limits: limits.build(),
                shared: Some(self.clone()),
            },
        );
        store.limiter(|h| &mut h.limits);
        if let Some(timeout) = self.options.timeout {
            store.set_epoch_deadline((timeout.as_millis() / 10).max(1) as u64);
            store.epoch_deadline_trap();
        }
        Ok(store)
    }

    async fn handle(
        self: Arc<Self>,
        request: hyper::Request<hyper::body::Incoming>,
    ) -> anyhow::Result<hyper::Response<HyperOutgoingBody>> {
        let mut store = self.store()?;
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let request = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, request)?;
        let out = store.data_mut().http().new_response_outparam(sender)?;
        let pre = self.pre.clone();
        let task = tokio::task::spawn(async move {
            let proxy = pre.instantiate_async(&mut store).await?;
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, request, out)
                .await
        });
        match receiver.await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) => Err(error.into()),
            Err(_) => {
                let error = match task.await {
                    Ok(Ok(())) => anyhow::anyhow!("the guest never set a response"),
                    Ok(Err(error)) => anyhow::anyhow!("{error:?}"),
                    Err(error) => error.into(),
                };
                Err(error)
            }
        }
    }
}

fn main() -> anyhow::Result<()> {
    let options = parse_args()?;
    let mut config = Config::new();
    if options.timeout.is_some() {
        config.epoch_interruption(true);
    }
    // As `wasmtime serve` does: the pooling allocator with its defaults
    // (the memory cap applied to its slots too), unless the host cannot
    // reserve the address space for it.
    let mut pooling = PoolingAllocationConfig::default();
    if let Some(max) = options.max_memory {
        pooling.max_memory_size(max);
    }
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
    let engine = match Engine::new(&config) {
        Ok(engine) => engine,
        Err(_) => {
            config.allocation_strategy(InstanceAllocationStrategy::OnDemand);
            Engine::new(&config)?
        }
    };
    let component = Component::from_file(&engine, &options.component)
        .map_err(|e| anyhow::anyhow!("loading {}: {e:?}", options.component))?;
    let mut linker = Linker::new(&engine);
    link(&mut linker, &options)?;
    // A component importing what this profile does not link fails here,
    // naming the import.
    let pre = linker
        .instantiate_pre(&component)
        .and_then(ProxyPre::new)
        .map_err(|e| anyhow::anyhow!("linking {}: {e:?}", options.component))?;
    if options.timeout.is_some() {
        let engine = engine.clone();
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(10));
                engine.increment_epoch();
            }
        });
    }
    let wasmtime_kv = options
        .keyvalue
        .then(|| wasmtime_wasi_keyvalue::WasiKeyValueCtxBuilder::new().build());
    let wasmtime_config = options.config_vars.iter().cloned().collect();
    let shared = Arc::new(Shared {
        pre,
        options,
        spin_data: Mutex::new(BTreeMap::new()),
        wasmtime_kv,
        wasmtime_config,
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(shared))
}

async fn serve(shared: Arc<Shared>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(shared.options.addr).await?;
    eprintln!("Serving HTTP on http://{}/", listener.local_addr()?);
    loop {
        let (client, _) = listener.accept().await?;
        let shared = shared.clone();
        tokio::task::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let shared = shared.clone();
                async move {
                    match shared.handle(request).await {
                        Ok(response) => Ok::<_, std::convert::Infallible>(response),
                        Err(error) => {
                            eprintln!("error: {error:#}");
                            let body = http_body_util::Empty::new()
                                .map_err(|never| match never {})
                                .boxed_unsync();
                            let mut response = hyper::Response::new(body);
                            *response.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
                            Ok(response)
                        }
                    }
                }
            });
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(client), service)
                .await;
        });
    }
}
