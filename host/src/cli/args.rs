//! Argument definitions (clap).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "pycage",
    version,
    about = "Run untrusted Python HTTP handlers in a WebAssembly sandbox, one fresh CPython per request",
    long_about = "Run untrusted Python HTTP handlers in a WebAssembly sandbox, one fresh CPython per request.\n\n\
        A handler is a .py file or a directory (entry module app.py, handler.py or main.py). \
        The first use builds a sandbox image (a few seconds) and caches it; later uses of \
        unchanged files start from the cache.\n\n\
        Inside the sandbox the handler sees only its own files, read-only, at /app. \
        It gets no environment variables, no network, no processes and no other files.",
    after_help = "Exit status: 0 when the response status is below 500; 1 when it is 500 or above \
        or the sandbox failed; 2 for usage errors and handlers that cannot be loaded.\n\n\
        PYCAGE_LOG=debug also logs pycage's own debug messages to stderr, e.g. how long each \
        build phase took; any other value is a tracing filter (PYCAGE_LOG=debug,wasmtime=info)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Build cache directory; it must belong to you and be writable by nobody else
    /// [default: $XDG_CACHE_HOME/pycage or ~/.cache/pycage]
    #[arg(long, global = true, env = "PYCAGE_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Print no progress or build diagnostics (errors and grants are still printed)
    #[arg(long, short = 'q', global = true)]
    pub quiet: bool,

    /// Longest a cache-miss build may take (installing dependencies, importing the handler,
    /// compiling), e.g. 90s, 5m [default: 120s, or server.build_timeout from --config]
    #[arg(long, global = true, value_name = "DURATION", value_parser = pycage::limits::parse_duration)]
    pub build_timeout: Option<Duration>,

    /// Memory a cache-miss build may use, in MiB; the build runs the handler's module-level code
    /// in a separate process capped at this [default: 1536, or server.build_memory_mib]
    #[arg(long, global = true, value_name = "MIB", value_parser = clap::value_parser!(u64).range(256..=65536))]
    pub build_memory_mib: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Send a request to a handler and print the response body
    Run(RunArgs),
    /// Print the handler's route table
    Routes(HandlerArgs),
    /// Build the handler's sandbox image into the cache without running it
    Build(HandlerArgs),
    /// Serve a handler, or every tenant of a config file, over HTTP/1.1
    #[command(
        after_help = "Logs go to stderr (filter with PYCAGE_LOG, e.g. PYCAGE_LOG=debug). \
        SIGINT or SIGTERM stops accepting connections and lets in-flight requests finish \
        for up to the shutdown timeout."
    )]
    Serve(ServeArgs),
    /// Export a handler as a standard wasi:http component, with its files and a spin.toml or
    /// `wasmtime serve` command line, to run on Spin, SpinKube, wasmCloud or `wasmtime serve`
    #[command(
        after_help = "With --config FILE, --tenant NAME picks the tenant to export; its grants \
        and limits come from the file. The export is built from the same handler, framework and \
        grants as `pycage serve`, and answers the same way. DIR must be new, empty, or an earlier export \
        (replaced whole once the new one is complete). DIR/README.md says how to run it and \
        what the target host does not enforce of the tenant's grants and limits."
    )]
    Export(ExportArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TargetArg {
    /// `wasmtime serve` 46 (and other wasi:http/proxy hosts with the CLI interfaces): imports
    /// only what the tenant is granted; writes serve.sh with the exact command line
    WasiHttp,
    /// Spin 3.x and SpinKube: imports the interface versions Spin links; writes spin.toml
    Spin,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Handler to export (omit when using --config with --tenant)
    #[arg(
        value_name = "HANDLER",
        required_unless_present = "config",
        conflicts_with = "config"
    )]
    pub handler: Option<PathBuf>,

    /// Entry module of a directory handler [default: the first of app, handler, main];
    /// MODULE:APP (or :APP) exports the module's attribute APP as a WSGI or ASGI app
    #[arg(
        long,
        visible_alias = "app",
        value_name = "MODULE[:APP]",
        requires = "handler"
    )]
    pub module: Option<String>,

    /// Virtualenv whose packages the handler may import
    #[arg(long, value_name = "DIR", requires = "handler")]
    pub venv: Option<PathBuf>,

    /// Export a tenant of this configuration file (with --tenant NAME, unless it has only one);
    /// its handler, module, venv, limits and grants are used
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Which host the export is for
    #[arg(long, value_enum, value_name = "TARGET")]
    pub target: TargetArg,

    /// Directory to write the export into
    #[arg(long, short = 'o', value_name = "DIR")]
    pub output: PathBuf,

    #[command(flatten)]
    pub limits: LimitArgs,

    #[command(flatten)]
    pub grants: GrantArgs,
}

#[derive(Debug, Args)]
pub struct HandlerArgs {
    /// A handler .py file (only that file is granted) or a directory (the whole tree is granted)
    #[arg(value_name = "HANDLER")]
    pub handler: PathBuf,

    /// Entry module of a directory handler [default: the first of app, handler, main];
    /// MODULE:APP (or :APP) serves the module's attribute APP as a WSGI or ASGI app
    #[arg(long, visible_alias = "app", value_name = "MODULE[:APP]")]
    pub module: Option<String>,

    /// Also make this virtualenv's packages importable (copied in, read-only; `.pth` files are
    /// honoured, so editable installs work). Without the flag: VIRTUAL_ENV, else an activated
    /// conda environment's CONDA_PREFIX (not conda's base environment). A directory handler's
    /// own vendor/ and pyproject.toml dependencies need no flag
    #[arg(long, env = "VIRTUAL_ENV", value_name = "DIR")]
    pub venv: Option<PathBuf>,
}

impl HandlerArgs {
    /// The environment to grant: `--venv` or `VIRTUAL_ENV`, else the active
    /// conda environment. conda's base environment is conda's own
    /// installation, active in every shell, not a project's: never taken
    /// implicitly.
    pub fn venv(&self) -> Option<PathBuf> {
        self.venv.clone().or_else(|| {
            let prefix = std::env::var_os("CONDA_PREFIX").filter(|p| !p.is_empty())?;
            let base = std::env::var_os("CONDA_DEFAULT_ENV").is_some_and(|name| name == "base");
            (!base).then(|| PathBuf::from(prefix))
        })
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub handler: HandlerArgs,

    /// HTTP method
    #[arg(long, short = 'X', default_value = "GET", value_name = "METHOD")]
    pub method: String,

    /// Request path, optionally with a query ("/items/3?full=1")
    #[arg(long, default_value = "/", value_name = "PATH")]
    pub path: String,

    /// Query string (without '?'); appended to any query in --path
    #[arg(long, value_name = "QUERY")]
    pub query: Option<String>,

    /// Request header, e.g. -H 'Accept: application/json' (repeatable)
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
    pub headers: Vec<String>,

    /// Request body
    #[arg(long, short = 'd', value_name = "STR", conflicts_with = "data_file")]
    pub data: Option<String>,

    /// Read the request body from a file ('-' for stdin)
    #[arg(long, value_name = "FILE")]
    pub data_file: Option<PathBuf>,

    /// Print the status line and headers before the body, like curl -i
    #[arg(long, short = 'i')]
    pub include: bool,

    /// Send the request N times, each to a fresh instance, printing each response
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub repeat: u32,

    #[command(flatten)]
    pub limits: LimitArgs,

    #[command(flatten)]
    pub grants: GrantArgs,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Handler to serve as the only tenant (omit when using --config)
    #[arg(
        value_name = "HANDLER",
        required_unless_present = "config",
        conflicts_with = "config"
    )]
    pub handler: Option<PathBuf>,

    /// Entry module of a directory handler [default: the first of app, handler, main];
    /// MODULE:APP (or :APP) serves the module's attribute APP as a WSGI or ASGI app
    #[arg(
        long,
        visible_alias = "app",
        value_name = "MODULE[:APP]",
        requires = "handler"
    )]
    pub module: Option<String>,

    /// Virtualenv whose packages the handler may import (with --config: `venv` per tenant)
    #[arg(long, value_name = "DIR", requires = "handler")]
    pub venv: Option<PathBuf>,

    /// Multi-tenant configuration (pycage.toml); limits then come from the file
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address to listen on [default: 127.0.0.1:8080, or server.listen from --config]
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// Serve Prometheus metrics at http://ADDR/metrics [default: off]
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,

    /// Sandbox instances live at once, across all tenants [default: 64]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_instances: Option<u32>,

    /// Most concurrent requests for the single handler [default: max-instances]
    #[arg(long, value_name = "N", conflicts_with = "config", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrency: Option<u32>,

    /// How long a request may wait for a free instance before a 503 [default: 1s]
    #[arg(long, value_name = "DURATION", value_parser = pycage::limits::parse_duration)]
    pub queue_timeout: Option<Duration>,

    /// How long in-flight requests may take to finish after SIGINT/SIGTERM [default: 10s]
    #[arg(long, value_name = "DURATION", value_parser = pycage::limits::parse_duration)]
    pub shutdown_timeout: Option<Duration>,

    #[command(flatten)]
    pub limits: LimitArgs,

    #[command(flatten)]
    pub grants: GrantArgs,
}

/// Capabilities for a handler run from the command line; with `serve
/// --config` they come from the file instead. Nothing is granted by default.
#[derive(Debug, Args, Default)]
#[command(next_help_heading = "Capabilities (none by default)")]
pub struct GrantArgs {
    /// Grant the key-value store NAME (repeatable). `--kv default` is a SQLite database under
    /// the data directory; `--kv NAME=redis://HOST:PORT/DB` defines NAME on a Redis server
    #[arg(long = "kv", value_name = "NAME[=redis://...]")]
    pub kv: Vec<String>,

    /// Allow outbound HTTP requests to URL's scheme, host and port (repeatable), as Spin writes
    /// them: https://api.example.com, https://*.example.com, http://127.0.0.1:8089,
    /// http://localhost:* [default: no outbound requests]
    #[arg(long = "allow-outbound", value_name = "URL")]
    pub allow_outbound: Vec<String>,

    /// Resolve NAME to ADDRESS for outbound requests instead of using DNS, like curl's --resolve
    /// (repeatable)
    #[arg(long = "resolve", value_name = "NAME=ADDRESS")]
    pub resolve: Vec<String>,

    /// A variable the handler reads with pycage.config.get(NAME) (repeatable)
    #[arg(long = "var", value_name = "NAME=VALUE")]
    pub vars: Vec<String>,

    /// A secret variable whose value is the host's environment variable ENV; it is redacted
    /// from everything pycage prints (repeatable)
    #[arg(long = "secret", value_name = "NAME=ENV")]
    pub secrets: Vec<String>,

    /// Whose key-value data the stores hold: handlers run with the same tenant name share it
    /// [default: default]
    #[arg(long, value_name = "NAME")]
    pub tenant: Option<String>,

    /// Where SQLite key-value stores keep their data
    /// [default: $XDG_DATA_HOME/pycage or ~/.local/share/pycage]
    #[arg(long, env = "PYCAGE_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

/// Per-request limits; each unset flag keeps `pycage::Limits::default()`.
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// Wall-clock limit per request, e.g. 500ms, 10s, 2m [default: 10s]
    #[arg(long, value_name = "DURATION", value_parser = pycage::limits::parse_duration)]
    pub timeout: Option<Duration>,

    /// Memory limit per instance in MiB [default: 256]
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u64).range(16..=65536))]
    pub memory_mib: Option<u64>,

    /// Largest request body in bytes [default: 10485760]
    #[arg(long, value_name = "BYTES")]
    pub max_request_body: Option<usize>,

    /// Largest response (body and headers) in bytes [default: 10485760]
    #[arg(long, value_name = "BYTES")]
    pub max_response_body: Option<usize>,

    /// Captured guest stdout/stderr per request and stream, in bytes (the rest is dropped)
    /// [default: 65536]
    #[arg(long, value_name = "BYTES")]
    pub max_output: Option<usize>,
}

impl LimitArgs {
    /// The limits the flags ask for.
    pub fn limits(&self) -> pycage::Limits {
        let defaults = pycage::Limits::default();
        pycage::Limits {
            timeout: self.timeout.unwrap_or(defaults.timeout),
            memory_bytes: self
                .memory_mib
                .map_or(defaults.memory_bytes, |mib| mib << 20),
            max_request_body: self.max_request_body.unwrap_or(defaults.max_request_body),
            max_response_body: self.max_response_body.unwrap_or(defaults.max_response_body),
            max_output_bytes: self.max_output.unwrap_or(defaults.max_output_bytes),
            ..defaults
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    /// The defaults the help text states are the library's.
    #[test]
    fn stated_defaults_are_the_librarys() {
        use clap::CommandFactory;
        let limits = pycage::Limits::default();
        let build = pycage::BuildLimits::default();
        let help = Cli::command().render_long_help().to_string()
            + &Cli::command()
                .find_subcommand_mut("run")
                .unwrap()
                .render_long_help()
                .to_string();
        for stated in [
            format!("[default: {}s]", limits.timeout.as_secs()),
            format!("[default: {}]", limits.memory_bytes >> 20),
            format!("[default: {}]", limits.max_request_body),
            format!("[default: {}]", limits.max_output_bytes),
            format!("[default: {}s", build.timeout.as_secs()),
            format!("[default: {}", build.memory_bytes >> 20),
        ] {
            assert!(help.contains(&stated), "{stated} not in:\n{help}");
        }
    }
}
