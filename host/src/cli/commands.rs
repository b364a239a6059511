//! The subcommands. Each loads the handler through the library API, then
//! does its one thing.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use pycage::config::{self, ServeConfig, TenantConfig};
use pycage::server::{self, Server};
use pycage::{
    Cache, DispatchError, Handler, Limits, LoadError, LoadOptions, Request, Runtime, RuntimeConfig,
};
use tracing::info;

use super::args::{Cli, Command, HandlerArgs, LimitArgs, RunArgs, ServeArgs};
use super::display::{self, Reporter};

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

pub fn execute(cli: Cli) -> Result<ExitCode, Failure> {
    let reporter = Reporter::new(cli.quiet);
    let cache = || Cache::new(cli.cache_dir.clone().unwrap_or_else(Cache::default_root));
    // `serve` always logs; the one-shot commands only when asked, so that
    // their stderr stays the handler's and pycage's own messages.
    if matches!(cli.command, Command::Serve(_)) || std::env::var_os("PYCAGE_LOG").is_some() {
        init_logging();
    }
    match cli.command {
        Command::Run(args) => run(cache(), &reporter, args),
        Command::Routes(args) => routes(cache(), &reporter, args),
        Command::Build(args) => build(cache(), &reporter, args),
        Command::Serve(args) => serve(cli.cache_dir.clone(), &reporter, args),
    }
}

/// Instance slots for one-shot commands: requests run one at a time.
const CLI_INSTANCES: u32 = 2;

fn load(
    cache: Cache,
    reporter: &Reporter,
    args: &HandlerArgs,
    limits: Limits,
) -> Result<Handler, Failure> {
    let mut config = RuntimeConfig::new(cache);
    config.max_instances = CLI_INSTANCES;
    config.max_memory_bytes = limits.memory_bytes;
    let runtime = Runtime::with_config(config).map_err(Failure::Runtime)?;
    let options = LoadOptions {
        module: args.module.clone(),
        limits,
        max_concurrency: None,
        venv: args.venv.clone(),
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
    Limits {
        timeout: args.timeout,
        memory_bytes: args.memory_mib << 20,
        max_request_body: args.max_request_body,
        max_response_body: args.max_response_body,
        max_output_bytes: args.max_output,
    }
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

fn run(cache: Cache, reporter: &Reporter, args: RunArgs) -> Result<ExitCode, Failure> {
    let request = request(&args)?;
    let handler = load(cache, reporter, &args.handler, limits(&args.limits))?;
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

fn routes(cache: Cache, reporter: &Reporter, args: HandlerArgs) -> Result<ExitCode, Failure> {
    let handler = load(cache, reporter, &args, Limits::default())?;
    let routes = block_on(handler.routes())?.map_err(|e| Failure::Runtime(e.into()))?;
    let width = routes
        .iter()
        .map(|r| r.methods.join(",").len())
        .max()
        .unwrap_or(0);
    let pattern_width = routes.iter().map(|r| r.pattern.len()).max().unwrap_or(0);
    let mut out = String::new();
    for route in routes {
        out.push_str(&format!(
            "{:<width$}  {:<pattern_width$}  {}\n",
            route.methods.join(","),
            route.pattern,
            route.handler
        ));
    }
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}

fn build(cache: Cache, reporter: &Reporter, args: HandlerArgs) -> Result<ExitCode, Failure> {
    let handler = load(cache, reporter, &args, Limits::default())?;
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
        (Some(path), _) => ServeConfig::load(path).map_err(|e| Failure::Usage(e.to_string()))?,
        (None, Some(handler)) => ServeConfig {
            listen: config::DEFAULT_LISTEN.parse().expect("valid default"),
            admin_listen: None,
            max_instances: config::DEFAULT_MAX_INSTANCES,
            queue_timeout: config::DEFAULT_QUEUE_TIMEOUT,
            shutdown_timeout: config::DEFAULT_SHUTDOWN_TIMEOUT,
            cache_dir: None,
            tenants: vec![TenantConfig {
                name: "default".into(),
                handler: handler.clone(),
                module: args.module.clone(),
                hosts: Vec::new(),
                path_prefix: None,
                limits: limits(&args.limits),
                max_concurrency: args.max_concurrency,
                venv: args.venv.clone(),
            }],
        },
        (None, None) => return Err(Failure::Usage("give a HANDLER or --config FILE".into())),
    };
    config.listen = args.listen.unwrap_or(config.listen);
    config.admin_listen = args.admin_listen.or(config.admin_listen);
    config.max_instances = args.max_instances.unwrap_or(config.max_instances);
    config.queue_timeout = args.queue_timeout.unwrap_or(config.queue_timeout);
    config.shutdown_timeout = args.shutdown_timeout.unwrap_or(config.shutdown_timeout);
    Ok(config)
}

fn serve(
    cache_dir: Option<PathBuf>,
    reporter: &Reporter,
    args: ServeArgs,
) -> Result<ExitCode, Failure> {
    let config = serve_config(&args)?;
    let cache_root = cache_dir
        .or(config.cache_dir.clone())
        .unwrap_or_else(Cache::default_root);
    let runtime_config = server::runtime_config(&config, Cache::new(cache_root));
    let runtime = Arc::new(Runtime::with_config(runtime_config).map_err(Failure::Runtime)?);
    let tenants = server::load_tenants(&runtime, &config, &|event| reporter.event(event))
        .map_err(|e| Failure::Usage(e.to_string()))?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(e.into()))?;
    rt.block_on(async {
        let server = Server::bind(
            runtime,
            tenants,
            config.listen,
            config.admin_listen,
            config.shutdown_timeout,
        )
        .await
        .map_err(|e| {
            Failure::Runtime(anyhow::anyhow!("cannot listen on {}: {e}", config.listen))
        })?;
        info!(
            "listening on http://{}{}",
            server.local_addr(),
            server
                .admin_addr()
                .map(|a| format!(" (metrics on http://{a}/metrics)"))
                .unwrap_or_default()
        );
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
