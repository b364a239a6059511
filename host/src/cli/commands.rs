//! The subcommands. Each loads the handler through the library API, then
//! does its one thing.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use pycage::config::{ServeConfig, TenantConfig};
use pycage::export::{ExportError, ExportTarget};
use pycage::server::{self, Server};
use pycage::{
    BuildLimits, Cache, DispatchError, Handler, Limits, LoadError, LoadOptions, Request, Runtime,
    RuntimeConfig,
};
use tracing::info;

use super::args::{
    Cli, Command, ExportArgs, GrantArgs, HandlerArgs, LimitArgs, RunArgs, ServeArgs, TargetArg,
};
use super::display::{self, Reporter};
use super::grants::FlagGrants;

/// A failure that ends the command, with the exit status it maps to.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Bad arguments: exit 2.
    #[error("{0}")]
    Usage(String),
    /// The handler cannot be loaded: exit 2.
    #[error("{0}")]
    Load(#[from] LoadError),
    /// The sandbox or the host failed: exit 1.
    #[error("{0:#}")]
    Runtime(anyhow::Error),
}

impl Failure {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Failure::Usage(_) | Failure::Load(_) => ExitCode::from(2),
            Failure::Runtime(_) => ExitCode::from(1),
        }
    }
}

/// What every command shares: where the cache is and how builds run.
struct Common {
    cache_dir: Option<PathBuf>,
    build_timeout: Option<std::time::Duration>,
    build_memory_mib: Option<u64>,
}

impl Common {
    /// The cache named on the command line, `fallback` (a config file's),
    /// or the default one.
    fn cache(&self, fallback: Option<PathBuf>) -> Result<Cache, Failure> {
        let root = match self.cache_dir.clone().or(fallback) {
            Some(root) => root,
            None => Cache::default_root()?,
        };
        Ok(Cache::new(root))
    }

    /// Build limits: the flags over `base` (a config file's, or the defaults).
    fn build_limits(&self, base: BuildLimits) -> BuildLimits {
        BuildLimits {
            timeout: self.build_timeout.unwrap_or(base.timeout),
            memory_bytes: self
                .build_memory_mib
                .map_or(base.memory_bytes, |mib| mib << 20),
            ..base
        }
    }
}

pub fn execute(cli: Cli) -> Result<ExitCode, Failure> {
    let reporter = Reporter::new(cli.quiet);
    let common = Common {
        cache_dir: cli.cache_dir.clone(),
        build_timeout: cli.build_timeout,
        build_memory_mib: cli.build_memory_mib,
    };
    // `serve` always logs; the one-shot commands only when asked, so that
    // their stderr stays the handler's and pycage's own messages.
    if matches!(cli.command, Command::Serve(_)) || std::env::var_os("PYCAGE_LOG").is_some() {
        init_logging();
    }
    match cli.command {
        Command::Run(args) => run(&common, &reporter, args),
        Command::Routes(args) => routes(&common, &reporter, args),
        Command::Build(args) => build(&common, &reporter, args),
        Command::Serve(args) => serve(&common, &reporter, args),
        Command::Export(args) => export(&common, &reporter, args),
    }
}

/// Instance slots for one-shot commands: requests run one at a time.
const CLI_INSTANCES: u32 = 2;

fn load(
    common: &Common,
    reporter: &Reporter,
    args: &HandlerArgs,
    limits: Limits,
    grants: &GrantArgs,
) -> Result<Handler, Failure> {
    let grants = FlagGrants::parse(grants).map_err(Failure::Usage)?;
    let mut config = RuntimeConfig::new(common.cache(None)?);
    config.build_limits = common.build_limits(BuildLimits::default());
    config.max_instances = CLI_INSTANCES;
    config.max_memory_bytes = limits.memory_bytes;
    if grants.data_dir.is_some() {
        config.data_dir = grants.data_dir.clone();
    }
    config.key_value_stores.extend(grants.stores);
    config.outbound_resolve = grants.resolve;
    // One-shot commands on the user's own directory: an unchanged handler
    // loads without being read again (see RuntimeConfig::trust_file_stamps).
    config.trust_file_stamps = true;
    let runtime = Runtime::with_config(config).map_err(Failure::Runtime)?;
    let options = LoadOptions {
        module: args.module.clone(),
        limits,
        max_concurrency: None,
        venv: args.venv(),
        tenant: grants.tenant,
        key_value_stores: grants.granted,
        allowed_outbound_hosts: grants.allowed_outbound_hosts,
        variables: grants.variables,
    };
    Ok(runtime.load(&args.handler, &options, &|event| reporter.event(event))?)
}

fn block_on<F: std::future::Future>(future: F) -> Result<F::Output, Failure> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(e.into()))?;
    Ok(rt.block_on(future))
}

fn limits(args: &LimitArgs) -> Limits {
    args.limits()
}

/// Build the request from the flags before anything is loaded, so a typo is
/// a usage error (exit 2) rather than a wasted build.
fn request(args: &RunArgs) -> Result<Request, Failure> {
    let mut target = args.path.clone();
    if let Some(query) = &args.query {
        target.push(if target.contains('?') { '&' } else { '?' });
        target.push_str(query.trim_start_matches('?'));
    }
    let method = args.method.to_ascii_uppercase();
    let mut request = Request::new(&method, &target).map_err(|e| Failure::Usage(e.to_string()))?;
    for header in &args.headers {
        let (name, value) = header.split_once(':').ok_or_else(|| {
            Failure::Usage(format!("header `{header}` must look like 'Name: value'"))
        })?;
        request = request
            .with_header(name.trim(), value.trim())
            .map_err(|e| Failure::Usage(e.to_string()))?;
    }
    let body = match (&args.data, &args.data_file) {
        (Some(data), _) => data.clone().into_bytes(),
        (None, Some(path)) if path.as_os_str() == "-" => {
            let mut body = Vec::new();
            std::io::stdin()
                .read_to_end(&mut body)
                .map_err(|e| Failure::Usage(format!("reading the body from stdin: {e}")))?;
            body
        }
        (None, Some(path)) => std::fs::read(path).map_err(|e| {
            Failure::Usage(format!("reading the body from {}: {e}", path.display()))
        })?,
        (None, None) => Vec::new(),
    };
    Ok(request.with_body(body))
}

fn run(common: &Common, reporter: &Reporter, args: RunArgs) -> Result<ExitCode, Failure> {
    let request = request(&args)?;
    let handler = load(
        common,
        reporter,
        &args.handler,
        limits(&args.limits),
        &args.grants,
    )?;
    let mut worst = 0u16;
    block_on(async {
        for _ in 0..args.repeat {
            let exchange = handler.dispatch(request.clone()).await;
            display::guest_output("stdout", &exchange.stdout);
            display::guest_output("stderr", &exchange.stderr);
            if let Err(error) = &exchange.result {
                report_dispatch_error(error);
            }
            let response = exchange.response();
            worst = worst.max(response.status);
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(&display::response_bytes(&response, args.include))
                .and_then(|()| stdout.flush())
                .map_err(|e| Failure::Runtime(e.into()))?;
        }
        Ok::<_, Failure>(())
    })??;
    Ok(if worst >= 500 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Explain on stderr why the host answered with an error status. Router
/// outcomes (404, 405) are ordinary responses and need no explanation.
fn report_dispatch_error(error: &DispatchError) {
    match error {
        DispatchError::NotFound | DispatchError::MethodNotAllowed { .. } => {}
        DispatchError::HandlerException { message, traceback } => {
            eprintln!(
                "pycage: handler raised an exception ({})",
                display::escape_controls(message)
            );
            display::guest_lines("guest traceback", traceback.as_bytes(), false);
        }
        other => eprintln!("pycage: {other} (status {})", other.status()),
    }
}

fn routes(common: &Common, reporter: &Reporter, args: HandlerArgs) -> Result<ExitCode, Failure> {
    let handler = load(
        common,
        reporter,
        &args,
        Limits::default(),
        &GrantArgs::default(),
    )?;
    let routes = block_on(handler.routes())?.map_err(|e| Failure::Runtime(e.into()))?;
    // Every field is the guest's: escaped before it reaches the terminal.
    let rows: Vec<[String; 3]> = routes
        .iter()
        .map(|r| {
            [
                display::escape_controls(&r.methods.join(",")),
                display::escape_controls(&r.pattern),
                display::escape_controls(&r.handler),
            ]
        })
        .collect();
    let width = rows.iter().map(|r| r[0].chars().count()).max().unwrap_or(0);
    let pattern_width = rows.iter().map(|r| r[1].chars().count()).max().unwrap_or(0);
    let mut out = String::new();
    for [methods, pattern, handler] in rows {
        out.push_str(&format!(
            "{methods:<width$}  {pattern:<pattern_width$}  {handler}\n"
        ));
    }
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}

fn build(common: &Common, reporter: &Reporter, args: HandlerArgs) -> Result<ExitCode, Failure> {
    let handler = load(
        common,
        reporter,
        &args,
        Limits::default(),
        &GrantArgs::default(),
    )?;
    let state = if handler.cache_hit() {
        "already cached"
    } else {
        "built"
    };
    println!(
        "{}: {state} ({})",
        args.handler.display(),
        handler
            .app_dir()
            .parent()
            .unwrap_or(handler.app_dir())
            .display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The configuration `serve` runs with: the file's, or a single catch-all
/// tenant built from the flags; command-line flags override the file.
fn serve_config(args: &ServeArgs) -> Result<ServeConfig, Failure> {
    let mut config = match (&args.config, &args.handler) {
        (Some(path), _) => {
            if FlagGrants::grants_anything(&args.grants) {
                return Err(Failure::Usage(
                    "with --config, capabilities are granted per tenant in the file \
                     (key_value_stores, allowed_outbound_hosts, variables), not by flags"
                        .into(),
                ));
            }
            let mut config = ServeConfig::load(path).map_err(|e| Failure::Usage(e.to_string()))?;
            if config.data_dir.is_none() {
                config.data_dir = args.grants.data_dir.clone();
            }
            config
        }
        (None, Some(handler)) => {
            let grants = FlagGrants::parse(&args.grants).map_err(Failure::Usage)?;
            let mut config = ServeConfig::single(TenantConfig {
                module: args.module.clone(),
                limits: limits(&args.limits),
                max_concurrency: args.max_concurrency,
                venv: args.venv.clone(),
                key_value_stores: grants.granted,
                allowed_outbound_hosts: grants.allowed_outbound_hosts,
                variables: grants.variables,
                ..TenantConfig::new(grants.tenant.as_deref().unwrap_or("default"), handler)
            });
            config.key_value_stores.extend(grants.stores);
            config.outbound_resolve = grants.resolve;
            config.data_dir = grants.data_dir;
            config
        }
        (None, None) => return Err(Failure::Usage("give a HANDLER or --config FILE".into())),
    };
    config.listen = args.listen.unwrap_or(config.listen);
    config.admin_listen = args.admin_listen.or(config.admin_listen);
    config.max_instances = args.max_instances.unwrap_or(config.max_instances);
    config.queue_timeout = args.queue_timeout.unwrap_or(config.queue_timeout);
    config.shutdown_timeout = args.shutdown_timeout.unwrap_or(config.shutdown_timeout);
    Ok(config)
}

fn serve(common: &Common, reporter: &Reporter, args: ServeArgs) -> Result<ExitCode, Failure> {
    let config = serve_config(&args)?;
    let mut runtime_config =
        server::runtime_config(&config, common.cache(config.cache_dir.clone())?);
    runtime_config.build_limits = common.build_limits(runtime_config.build_limits);
    let runtime = Arc::new(Runtime::with_config(runtime_config).map_err(Failure::Runtime)?);
    let tenants = server::pending_tenants(&config);
    // One handler from the command line: a handler that cannot load is the
    // developer's error to see at once (exit 2), before anything listens.
    // A config's tenants load in the background once the server listens,
    // and one that fails answers 503 while the others serve.
    let background = args.config.is_some();
    if !background {
        let failures = server::load_tenants(&runtime, &config, &tenants, &|e| reporter.event(e));
        if let Some(failure) = failures.into_iter().next() {
            return Err(Failure::Load(failure.source));
        }
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(e.into()))?;
    rt.block_on(async {
        let server = Server::bind(runtime.clone(), tenants.clone(), &config)
            .await
            .map_err(|e| {
                Failure::Runtime(anyhow::anyhow!("cannot listen on {}: {e}", config.listen))
            })?;
        info!(
            "listening on http://{}{}",
            server.local_addr(),
            server
                .admin_addr()
                .map(|a| format!(" (admin on http://{a}/metrics, /healthz, /readyz)"))
                .unwrap_or_default()
        );
        if background {
            let config = config.clone();
            let quiet = reporter.is_quiet();
            std::thread::Builder::new()
                .name("pycage-load".into())
                .spawn(move || {
                    let reporter = Reporter::new(quiet);
                    let failures =
                        server::load_tenants(&runtime, &config, &tenants, &|e| reporter.event(e));
                    info!(
                        ready = tenants.len() - failures.len(),
                        failed = failures.len(),
                        "tenants loaded"
                    );
                })
                .map_err(|e| Failure::Runtime(e.into()))?;
        }
        server
            .run(shutdown_signal())
            .await
            .map_err(|e| Failure::Runtime(e.into()))
    })?;
    Ok(ExitCode::SUCCESS)
}

fn init_logging() {
    let directives = log_directives(std::env::var("PYCAGE_LOG").ok().as_deref());
    let filter = tracing_subscriber::EnvFilter::try_new(&directives)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter)
        .init();
}

/// The tracing filter for `PYCAGE_LOG`. A bare level (`debug`) applies to
/// pycage's own logs: at debug level Cranelift and wit-component log every
/// function they compile, tens of thousands of lines per build. Anything
/// else is a tracing filter, used as given.
fn log_directives(value: Option<&str>) -> String {
    match value.map(str::trim) {
        None | Some("") => "info".into(),
        Some(level)
            if ["trace", "debug", "info", "warn", "error", "off"]
                .contains(&level.to_ascii_lowercase().as_str()) =>
        {
            format!("warn,pycage={level}")
        }
        Some(filter) => filter.into(),
    }
}

/// Resolves on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!("SIGINT received"),
        _ = terminate.recv() => info!("SIGTERM received"),
    }
}

/// The tenant an export is for: one of the file's (`--tenant` picks it), or
/// one made from the handler and the flags, as `serve HANDLER` would.
fn export_tenant(args: &ExportArgs) -> Result<(TenantConfig, Option<ServeConfig>), Failure> {
    match (&args.config, &args.handler) {
        (Some(path), _) => {
            // `--tenant` picks the file's tenant here; every other grant or
            // limit flag would contradict the file.
            let limits = &args.limits;
            let limit_flags = limits.timeout.is_some()
                || limits.memory_mib.is_some()
                || limits.max_request_body.is_some()
                || limits.max_response_body.is_some()
                || limits.max_output.is_some();
            if FlagGrants::grants_capabilities(&args.grants) || limit_flags {
                return Err(Failure::Usage(
                    "with --config, the tenant's grants and limits come from the file, not from \
                     flags (--tenant NAME picks the tenant)"
                        .into(),
                ));
            }
            let config = ServeConfig::load(path).map_err(|e| Failure::Usage(e.to_string()))?;
            let names: Vec<&str> = config.tenants.iter().map(|t| t.name.as_str()).collect();
            let tenant = match (&args.grants.tenant, config.tenants.as_slice()) {
                (Some(name), tenants) => {
                    tenants.iter().find(|t| &t.name == name).ok_or_else(|| {
                        Failure::Usage(format!(
                            "{}: no tenant `{name}` (it has: {})",
                            path.display(),
                            names.join(", ")
                        ))
                    })?
                }
                (None, [only]) => only,
                (None, _) => {
                    return Err(Failure::Usage(format!(
                        "{}: name the tenant to export with --tenant (one of: {})",
                        path.display(),
                        names.join(", ")
                    )));
                }
            };
            let tenant = tenant.clone();
            Ok((tenant, Some(config)))
        }
        (None, Some(handler)) => {
            let grants = FlagGrants::parse(&args.grants).map_err(Failure::Usage)?;
            Ok((
                TenantConfig {
                    module: args.module.clone(),
                    limits: limits(&args.limits),
                    venv: args.venv.clone(),
                    key_value_stores: grants.granted,
                    allowed_outbound_hosts: grants.allowed_outbound_hosts,
                    variables: grants.variables,
                    ..TenantConfig::new(
                        grants.tenant.unwrap_or_else(|| export_name(handler)),
                        handler,
                    )
                },
                None,
            ))
        }
        (None, None) => Err(Failure::Usage("give a HANDLER or --config FILE".into())),
    }
}

/// The name an export of a handler given on the command line goes by (the
/// Spin application and component): its file or directory name, in the
/// characters a tenant name may have.
fn export_name(handler: &std::path::Path) -> String {
    let stem = std::fs::canonicalize(handler)
        .unwrap_or_else(|_| handler.to_path_buf())
        .file_stem()
        .map(|s| s.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let name: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if pycage::grants::valid_tenant(&name) {
        name
    } else {
        "app".into()
    }
}

fn export(common: &Common, reporter: &Reporter, args: ExportArgs) -> Result<ExitCode, Failure> {
    let (tenant, config) = export_tenant(&args)?;
    let target = match args.target {
        TargetArg::WasiHttp => ExportTarget::WasiHttp,
        TargetArg::Spin => ExportTarget::Spin,
    };
    let cache_dir = config.as_ref().and_then(|c| c.cache_dir.clone());
    let mut runtime_config = RuntimeConfig::new(common.cache(cache_dir)?);
    let base = config
        .as_ref()
        .map_or(BuildLimits::default(), |c| c.build_limits);
    runtime_config.build_limits = common.build_limits(base);
    runtime_config.max_instances = CLI_INSTANCES;
    runtime_config.max_memory_bytes = tenant.limits.memory_bytes;
    let runtime = Runtime::with_config(runtime_config).map_err(Failure::Runtime)?;
    let export = runtime
        .export(&tenant, target, &args.output, &|event| {
            reporter.event(event)
        })
        .map_err(|error| match error {
            ExportError::Load(error) => Failure::Load(error),
            ExportError::OutputInUse { .. }
            | ExportError::OutputOverlaps { .. }
            | ExportError::Unsupported { .. } => Failure::Usage(error.to_string()),
            other => Failure::Runtime(other.into()),
        })?;
    println!(
        "exported `{}` for {} to {}",
        tenant.name,
        target.name(),
        export.dir.display()
    );
    match target {
        // serve.sh checks what the bare command line cannot (see its caveats).
        ExportTarget::WasiHttp => println!(
            "  run it with: {}",
            export.dir.join(pycage::export::wasmtime::SCRIPT).display()
        ),
        ExportTarget::Spin => println!("  run it there with: {}", export.command),
    }
    for caveat in &export.caveats {
        println!("  note: {caveat}");
    }
    println!("  see {}", export.dir.join("README.md").display());
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::log_directives;

    #[test]
    fn a_bare_level_is_pycage_s_own() {
        assert_eq!(log_directives(None), "info");
        assert_eq!(log_directives(Some("debug")), "warn,pycage=debug");
        assert_eq!(log_directives(Some("TRACE")), "warn,pycage=TRACE");
        assert_eq!(
            log_directives(Some("debug,cranelift=info")),
            "debug,cranelift=info"
        );
        assert_eq!(
            log_directives(Some("pycage::guest=debug")),
            "pycage::guest=debug"
        );
    }
}
