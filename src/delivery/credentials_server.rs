//! `credentials-server`: the sidecar of the `endpoint` delivery. It serves the mounted Secret's
//! `credentials.json` as a container-credentials document on 127.0.0.1.
//!
//! It runs in every opted-in pod, so it has its own small single-threaded runtime (built in
//! [`main`], not the controller's) and does nothing while nobody asks.

use clap::Args;

use crate::commands::CommandOutput;
use crate::{Error, Result};

#[derive(Debug, Args)]
pub struct CredentialsServerArgs {}

/// Runs the server until SIGTERM/SIGINT; builds its own runtime.
pub fn main(_args: &CredentialsServerArgs) -> Result<CommandOutput> {
    Err(Error::Unsupported(
        "credentials-server is not built yet".into(),
    ))
}
