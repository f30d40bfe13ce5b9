//! The command line, and nothing below it knows of it: clap's flag groups ([`args`]), one per
//! concern, composed per subcommand so each subcommand accepts (and `--help` shows) only the
//! flags it reads; the configs each subcommand builds from them ([`config`]); and the dispatch
//! that hands those configs to the library ([`execute`]).

pub mod args;
pub mod config;

pub use args::*;

use crate::{CommandOutput, Result, controller::commands, delivery, serve::telemetry};

/// Runs the parsed command line: builds its config, starts what it needs, returns what to
/// print. The sidecar and the offline commands never start the multi-threaded runtime.
pub fn execute(cli: Cli) -> Result<CommandOutput> {
    let Cli { command, run } = cli;
    match command {
        Some(Command::Crd) => commands::crd(),
        Some(Command::Inject(args)) => delivery::inject::run(&config::inject(args)),
        // The sidecar builds its own small runtime and keeps logging minimal.
        Some(Command::CredentialsServer(args)) => {
            delivery::credentials_server::main(&config::credentials_server(args))
        }
        command => {
            let logging = match &command {
                Some(Command::Run(args)) => &args.logging,
                Some(Command::Once(args)) => &args.logging,
                Some(Command::Plan(args)) => &args.logging,
                Some(Command::Bootstrap(args)) => &args.logging,
                Some(Command::Webhook(args)) => &args.logging,
                _ => &run.logging,
            };
            telemetry::init(logging.debug, logging.log_format);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(|e| crate::Error::Runtime(e.to_string()))?;
            let result = runtime.block_on(async move {
                match command {
                    Some(Command::Plan(args)) => plan(*args).await,
                    Some(Command::Once(args)) => {
                        commands::once(&config::controller(&args.pass)?).await
                    }
                    Some(Command::Bootstrap(args)) => {
                        crate::controller::bootstrap::run(&config::bootstrap(&args)?).await
                    }
                    Some(Command::Webhook(args)) => {
                        delivery::webhook::run(&config::webhook(args)?).await
                    }
                    Some(Command::Run(args)) => run_loop(*args).await,
                    None => run_loop(run).await,
                    Some(Command::Crd | Command::Inject(_) | Command::CredentialsServer(_)) => {
                        unreachable!("handled without the runtime")
                    }
                }
            });
            // Tasks still waiting on a hung API server must not hold the exit.
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            result
        }
    }
}

async fn plan(args: PlanArgs) -> Result<CommandOutput> {
    match config::offline_plan(&args)? {
        Some(offline) => commands::plan_offline(&offline),
        None => commands::plan(&config::live_plan(&args)?).await,
    }
}

async fn run_loop(args: RunArgs) -> Result<CommandOutput> {
    let (setup, looping) = config::run(&args)?;
    commands::run(&setup, &looping).await
}
