//! `kube-aws-iam-controller credentials-server`: the `endpoint` delivery's sidecar as a
//! subcommand of the controller, which pods injected by earlier versions still run. New pods
//! run the small `credentials-server` binary shipped beside the controller in the same image;
//! both serve through the `kube-aws-iam-credentials-server` library, so they behave alike
//! (flags, variables, answers, exit codes).

use kube_aws_iam_credentials_server as sidecar;

pub use sidecar::{Config, DEFAULT_CREDENTIALS_FILE, MIN_TOKEN_LEN};

use super::TOKEN_ENV;
use crate::CommandOutput;
use crate::{Error, Result};

/// Runs the server until SIGTERM/SIGINT end the process (exit code 0), or answers `--probe`.
/// Returns an error only when the server cannot start.
pub fn main(config: &Config) -> Result<CommandOutput> {
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
    match sidecar::serve(config, std::env::var_os(TOKEN_ENV).as_deref()) {
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
            format!("{MOUNT_PATH}/{}", crate::domain::secret::KEY_JSON)
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
    fn start_up_errors_keep_their_kind() {
        let config = Config {
            listen: "0.0.0.0:9911".parse().unwrap(),
            credentials_file: DEFAULT_CREDENTIALS_FILE.into(),
            probe: false,
        };
        let e = main(&config).unwrap_err();
        assert!(
            matches!(&e, Error::Config(m) if m.contains("not a loopback address")),
            "{e}"
        );
        assert_eq!(e.exit_code(), 2);
    }
}
