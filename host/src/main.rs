//! The `pycage` command: a thin layer over the library.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // The build worker is pycage re-run by itself (see `pycage::build`):
    // straight to it, with none of the CLI's parsing or logging.
    if std::env::args_os().nth(1).as_deref() == Some(pycage::BUILD_WORKER_ARG.as_ref()) {
        return pycage::run_build_worker();
    }
    let args = cli::args::Cli::parse();
    match cli::commands::execute(args) {
        Ok(code) => code,
        Err(failure) => {
            eprintln!("pycage: error: {failure}");
            failure.exit_code()
        }
    }
}
