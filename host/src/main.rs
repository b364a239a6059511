//! The `pycage` command: a thin layer over the library.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Errors made while serving a guest (an I/O error it can ask about, a
    // trap) would otherwise capture a host backtrace whenever RUST_BACKTRACE
    // is set: CPU time a guest could make the host spend, and host detail
    // the guest could read. Panics still print theirs (RUST_BACKTRACE).
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: first thing in main, before any thread exists.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
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
