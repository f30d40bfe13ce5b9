//! Logging set-up: text or JSON lines on stderr, filtered by RUST_LOG (default `info`, or
//! `debug` for this crate with `--debug`). Standard output is left to plans.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

pub fn init(debug: bool, format: LogFormat) {
    // kube-client logs a response body it cannot decode at warn level; such a body may be an
    // object with data in it, so its logs are kept to errors unless RUST_LOG asks otherwise.
    let default = if debug {
        "info,kube_client=error,kube_aws_iam_controller=debug"
    } else {
        "info,kube_client=error"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    // A second initialisation (tests) is harmless: the first subscriber stays.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
