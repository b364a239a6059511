//! The `pycage` command: a thin layer over the library.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::args::Cli::parse();
    match cli::commands::execute(args) {
        Ok(code) => code,
        Err(failure) => {
            eprintln!("pycage: error: {failure}");
            failure.exit_code()
        }
    }
}
