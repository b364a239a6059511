//! Argument definitions (clap).

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
        or the sandbox failed; 2 for usage errors and handlers that cannot be loaded."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Build cache directory [default: $XDG_CACHE_HOME/pycage or ~/.cache/pycage]
    #[arg(long, global = true, env = "PYCAGE_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Print no progress or build diagnostics (errors are still printed)
    #[arg(long, short = 'q', global = true)]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Send a request to a handler and print the response body
    Run(RunArgs),
    /// Print the handler's route table
    Routes(HandlerArgs),
    /// Build the handler's sandbox image into the cache without running it
    Build(HandlerArgs),
}

#[derive(Debug, Args)]
pub struct HandlerArgs {
    /// A handler .py file (only that file is granted) or a directory (the whole tree is granted)
    #[arg(value_name = "HANDLER")]
    pub handler: PathBuf,

    /// Entry module of a directory handler [default: the first of app, handler, main]
    #[arg(long, value_name = "NAME")]
    pub module: Option<String>,
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
}

#[derive(Debug, Args)]
pub struct LimitArgs {
    /// Wall-clock limit per request, e.g. 500ms, 10s, 2m
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Memory limit per instance in MiB
    #[arg(long, value_name = "MIB", default_value_t = 256, value_parser = clap::value_parser!(u64).range(16..=65536))]
    pub memory_mib: u64,

    /// Largest request body in bytes
    #[arg(long, value_name = "BYTES", default_value_t = 10 << 20)]
    pub max_request_body: usize,

    /// Largest response body in bytes
    #[arg(long, value_name = "BYTES", default_value_t = 10 << 20)]
    pub max_response_body: usize,

    /// Captured guest stdout/stderr per request and stream, in bytes (the rest is dropped)
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 10)]
    pub max_output: usize,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 500ms, 10s or 2m"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" | "" => value,
        "m" => value * 60.0,
        _ => return Err(format!("unknown unit `{unit}` (use ms, s or m)")),
    };
    if !(0.001..=3600.0).contains(&seconds) {
        return Err("duration must be between 1ms and 1h".into());
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("1h").is_err());
        assert!(parse_duration("abc").is_err());
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
