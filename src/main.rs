//! Entry point: parse, dispatch, print, map errors to exit codes. Everything else lives in the
//! library.

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser as _;
use kube_aws_iam_controller::cli::{self, Cli};

fn main() -> ExitCode {
    match cli::execute(Cli::parse()) {
        Ok(output) => {
            let mut stdout = std::io::stdout().lock();
            // A closed pipe (`| head`) is not an error worth reporting.
            let _ = stdout.write_all(output.stdout.as_bytes());
            for note in output.notes {
                eprintln!("warning: {note}");
            }
            ExitCode::from(output.exit_code)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
