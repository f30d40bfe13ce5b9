//! Entry point: parse arguments, dispatch, map errors to exit codes. Everything else lives in
//! the library.

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser as _;
use kube_aws_iam_controller::cli::{Cli, Command};
use kube_aws_iam_controller::{commands, delivery, telemetry};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Some(Command::Crd) => commands::crd(),
        Some(Command::Inject(args)) => delivery::inject::run(args),
        // The sidecar builds its own small runtime and keeps logging minimal.
        Some(Command::CredentialsServer(args)) => delivery::credentials_server::main(args),
        command => {
            telemetry::init(cli.options.debug, cli.options.log_format);
            match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => {
                    let result = runtime.block_on(async {
                        match command {
                            Some(Command::Plan(args)) => commands::plan(&cli.options, args).await,
                            Some(Command::Once) => commands::once(&cli.options).await,
                            Some(Command::Bootstrap(args)) => {
                                kube_aws_iam_controller::bootstrap::run(&cli.options, args).await
                            }
                            Some(Command::Webhook(args)) => {
                                delivery::webhook::run(&cli.options, args).await
                            }
                            _ => commands::run(&cli.options).await,
                        }
                    });
                    // Tasks still waiting on a hung API server must not hold the exit.
                    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
                    result
                }
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return ExitCode::from(2);
                }
            }
        }
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
