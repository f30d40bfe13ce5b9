//! Entry point: parse arguments, dispatch, map errors to exit codes. Everything else lives in
//! the library.

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser as _;
use kube_aws_iam_controller::cli::{Cli, Command};
use kube_aws_iam_controller::commands;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Some(Command::Crd) => commands::crd(),
        Some(Command::Plan(args)) => commands::plan(&cli.options, args),
        Some(Command::Once) | Some(Command::Run) | None => commands::live(&cli.options),
    };
    match result {
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
