//! `kube-aws-iam-controller credentials-server`: the `endpoint` delivery's sidecar as a
//! subcommand of the controller, which pods injected by earlier versions still run. New pods
//! run the small `credentials-server` binary shipped beside the controller in the same image;
//! both serve through the `kube-aws-iam-credentials-server` library, so they behave alike
//! (flags, variables, answers, exit codes).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use kube_aws_iam_credentials_server as sidecar;

pub use sidecar::{DEFAULT_CREDENTIALS_FILE, MIN_TOKEN_LEN};

use super::TOKEN_ENV;
use crate::CommandOutput;
use crate::{Error, Result};

#[derive(Debug, Args)]
pub struct CredentialsServerArgs {
    /// Loopback address to serve on (127.0.0.0/8 or ::1; anything else is refused).
    #[arg(
        long,
        value_name = "ADDR",
        default_value_t = SocketAddr::from(([127, 0, 0, 1], super::DEFAULT_SIDECAR_PORT)),
        env = "KUBE_AWS_IAM_CONTROLLER_LISTEN"
    )]
    pub listen: SocketAddr,
    /// The mounted Secret's credentials.json (credential_process document); re-read whenever
    /// it changes.
    #[arg(
        long,
        value_name = "PATH",
        default_value = DEFAULT_CREDENTIALS_FILE,
        env = "KUBE_AWS_IAM_CONTROLLER_CREDENTIALS_FILE"
    )]
    pub credentials_file: PathBuf,
    /// Ask the server running at --listen for /ready and exit 0 if it is ready, 1 if not (the
    /// sidecar's startup probe; needs no token).
    #[arg(long)]
    pub probe: bool,
}

/// Runs the server until SIGTERM/SIGINT end the process (exit code 0), or answers `--probe`.
/// Returns an error only when the server cannot start.
pub fn main(args: &CredentialsServerArgs) -> Result<CommandOutput> {
    let config = sidecar::Config {
        listen: args.listen,
        credentials_file: args.credentials_file.clone(),
        probe: args.probe,
    };
    if config.probe {
        return Ok(match sidecar::probe(config.listen) {
            Ok(stdout) => CommandOutput {
                stdout,
                ..CommandOutput::default()
            },
            Err(stdout) => CommandOutput {
                stdout,
                exit_code: 1,
                ..CommandOutput::default()
            },
        });
    }
    match sidecar::serve(&config, std::env::var_os(TOKEN_ENV).as_deref()) {
        Ok(never) => match never {},
        Err(sidecar::Error::Config(message)) => Err(Error::Config(message)),
        Err(sidecar::Error::Listen { addr, source }) => Err(Error::Server {
            addr: addr.to_string(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::{CREDENTIALS_PATH, DEFAULT_SIDECAR_PORT, MOUNT_PATH, READY_PATH};

    #[test]
    fn default_file_is_the_json_key_in_the_mount() {
        assert_eq!(
            DEFAULT_CREDENTIALS_FILE,
            format!("{MOUNT_PATH}/{}", crate::secret::KEY_JSON)
        );
    }

    /// The mutation writes the pod side of the contract from the controller's constants; the
    /// sidecar serves from its own.
    #[test]
    fn the_pod_and_the_sidecar_agree() {
        assert_eq!(DEFAULT_SIDECAR_PORT, sidecar::DEFAULT_PORT);
        assert_eq!(CREDENTIALS_PATH, sidecar::CREDENTIALS_PATH);
        assert_eq!(READY_PATH, sidecar::READY_PATH);
        assert_eq!(TOKEN_ENV, sidecar::TOKEN_ENV);
        assert_eq!(crate::delivery::mutate::JSON_FILE, DEFAULT_CREDENTIALS_FILE);
    }

    #[test]
    fn the_subcommand_reads_the_same_variables_as_the_binary() {
        use clap::CommandFactory as _;
        let command = crate::cli::Cli::command();
        let subcommand = command
            .find_subcommand("credentials-server")
            .expect("the credentials-server subcommand");
        let env = |id: &str| {
            subcommand
                .get_arguments()
                .find(|a| a.get_id() == id)
                .and_then(|a| a.get_env())
                .and_then(|e| e.to_str())
                .map(str::to_string)
        };
        assert_eq!(env("listen").as_deref(), Some(sidecar::LISTEN_ENV));
        assert_eq!(
            env("credentials_file").as_deref(),
            Some(sidecar::CREDENTIALS_FILE_ENV)
        );
    }

    #[test]
    fn start_up_errors_keep_their_kind() {
        let args = CredentialsServerArgs {
            listen: "0.0.0.0:9911".parse().unwrap(),
            credentials_file: DEFAULT_CREDENTIALS_FILE.into(),
            probe: false,
        };
        let e = main(&args).unwrap_err();
        assert!(
            matches!(&e, Error::Config(m) if m.contains("not a loopback address")),
            "{e}"
        );
        assert_eq!(e.exit_code(), 2);
    }
}
