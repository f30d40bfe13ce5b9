//! `inject`: the offline shell around [`super::mutate`] (multi-document YAML in and out).

use clap::Args;

use crate::commands::CommandOutput;
use crate::{Error, Result};

#[derive(Debug, Args)]
pub struct InjectArgs {}

pub fn run(_args: &InjectArgs) -> Result<CommandOutput> {
    Err(Error::Unsupported("inject is not built yet".into()))
}
