//! kube-aws-iam-controller: hands AWS IAM role credentials to pods through Secrets.
//!
//! The controller is a declarative state-diff batch reconciler. One pass *observes* the
//! cluster, *plans* with a pure function ([`controller::plan::plan`]) and *applies* the plan. This crate
//! holds everything but argument parsing, so tests drive it directly.
// One `unsafe` call in the whole crate: `serve::memory` asks glibc for freed pages back.
#![deny(unsafe_code)]

pub mod cli;
pub mod controller;
pub mod delivery;
pub mod domain;
/// The fuzzing oracle, shared by `fuzz/` and the integration tests (feature `fuzzing`).
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod serve;

/// Errors that end a command (as opposed to per-object problems, which become plan actions).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value (flag or environment variable) is unusable.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// `plan --from` found nothing it could read.
    #[error("no readable input: {0}")]
    NoInput(String),
    /// Reading an input file failed.
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Serialising an object (CRD, JSON plan) failed.
    #[error("cannot serialise {what}: {message}")]
    Serialize { what: &'static str, message: String },
    /// The controller's own AWS set-up failed (credentials, identity).
    #[error("AWS: {0}")]
    Aws(String),
    /// The Kubernetes API could not be reached or refused a read the pass needs.
    #[error("Kubernetes API: {context}: {source}")]
    Kube {
        context: String,
        #[source]
        source: Box<kube::Error>,
    },
    /// The health/metrics server could not start.
    #[error("health server on {addr}: {source}")]
    Server {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// Leader election: the Lease could not be read or written, or another holder kept it.
    #[error(transparent)]
    Lease(#[from] controller::lease::LeaseError),
    /// The watched state is incomplete (not listed yet, or a watch broke and has not been
    /// relisted): the pass applied nothing.
    #[error("watched state is stale: {0}")]
    Stale(String),
    /// The controller's own seed credentials file is unusable.
    #[error(transparent)]
    Seed(#[from] controller::seed::SeedError),
    /// An action the executor carried out for a command (not a pass) failed: `bootstrap`'s
    /// AssumeRole or Secret write. The message is safe to show.
    #[error("{message}")]
    Apply {
        stage: controller::apply::Stage,
        message: String,
    },
    /// `inject` refused its input (it prints nothing rather than half a bundle).
    #[error("inject: {0}")]
    Inject(String),
    /// The async runtime could not start.
    #[error("cannot start the async runtime: {0}")]
    Runtime(String),
}

impl Error {
    /// Stable label for metrics and logs (never derived from `Debug`).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Config(_) => "config",
            Error::NoInput(_) => "no_input",
            Error::Io { .. } => "io",
            Error::Serialize { .. } => "serialize",
            Error::Inject(_) => "inject",
            Error::Aws(_) => "aws",
            Error::Kube { .. } => "kube",
            Error::Server { .. } => "server",
            Error::Lease(_) => "lease",
            Error::Seed(_) => "seed",
            Error::Stale(_) => "stale",
            Error::Runtime(_) => "runtime",
            Error::Apply { .. } => "apply",
        }
    }

    /// Process exit code, as for a pass: 1 when the command ran and an action it carried out
    /// failed (an STS or API error), 2 when it could not run at all (configuration, input, the
    /// API server or the controller's own credentials unusable).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Apply { .. } => 1,
            Error::Config(_)
            | Error::NoInput(_)
            | Error::Io { .. }
            | Error::Serialize { .. }
            | Error::Aws(_)
            | Error::Kube { .. }
            | Error::Server { .. }
            | Error::Lease(_)
            | Error::Stale(_)
            | Error::Seed(_)
            | Error::Inject(_)
            | Error::Runtime(_) => 2,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_action_that_failed_exits_1_and_a_command_that_could_not_run_2() {
        let failed = Error::Apply {
            stage: controller::apply::Stage::Sts,
            message: "AccessDenied".into(),
        };
        assert_eq!(failed.exit_code(), 1);
        assert_eq!(Error::Config("x".into()).exit_code(), 2);
        assert_eq!(Error::Stale("x".into()).exit_code(), 2);
        assert_eq!(Error::NoInput("x".into()).exit_code(), 2);
    }
}

/// What a command produced: its standard output, warnings for standard error, its exit code.
#[derive(Debug, Default)]
pub struct CommandOutput {
    pub stdout: String,
    pub notes: Vec<String>,
    pub exit_code: u8,
}
