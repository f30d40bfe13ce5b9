//! `webhook`: a mutating admission webhook serving [`super::mutate`] as a JSON patch over TLS.

use clap::Args;

use crate::cli::Options;
use crate::commands::CommandOutput;
use crate::{Error, Result};

#[derive(Debug, Args)]
pub struct WebhookArgs {}

pub async fn run(_options: &Options, _args: &WebhookArgs) -> Result<CommandOutput> {
    Err(Error::Unsupported("webhook is not built yet".into()))
}
