//! The subcommands as library functions returning what to print, so tests run them without a
//! process and `main` stays a dispatcher.

use jiff::Timestamp;

use crate::cli::{Options, PlanArgs};
use crate::plan::render::render;
use crate::{Error, Result, crd, offline, plan};

/// What a command produced: its standard output, warnings for standard error, its exit code.
#[derive(Debug, Default)]
pub struct CommandOutput {
    pub stdout: String,
    pub notes: Vec<String>,
    pub exit_code: u8,
}

/// `crd`: the CustomResourceDefinition YAML.
pub fn crd() -> Result<CommandOutput> {
    Ok(CommandOutput {
        stdout: crd::crd_yaml()?,
        ..CommandOutput::default()
    })
}

/// `plan`: compute and render the plan. Offline (`--from`) only, for now.
pub fn plan(options: &Options, args: &PlanArgs) -> Result<CommandOutput> {
    let Some(from) = &args.from else {
        return Err(Error::Unsupported(
            "planning against a cluster is not implemented yet; plan offline with `plan --from PATH`"
                .into(),
        ));
    };
    let config = options.plan_config()?;
    let now = match &args.now {
        Some(s) => s
            .parse::<Timestamp>()
            .map_err(|e| Error::Config(format!("--now {s:?} is not an RFC 3339 time: {e}")))?,
        None => Timestamp::now(),
    };
    let loaded = offline::load(from)?;
    let observed = match options.namespace() {
        Some(ns) => loaded.observed.scoped(ns),
        None => loaded.observed,
    };
    let plan = plan::plan(&observed, now, &config);
    let mut notes: Vec<String> = loaded.notes.iter().map(ToString::to_string).collect();
    if config.base_role_arn.is_none()
        && plan
            .actions
            .iter()
            .any(|a| a.message.contains("needs a base role ARN"))
    {
        notes.push(
            "some roles use bare names: pass --base-role-arn (e.g. arn:aws:iam::123456789012:role/) to resolve them"
                .into(),
        );
    }
    Ok(CommandOutput {
        stdout: render(&plan, options.output, options.verbose),
        notes,
        exit_code: 0,
    })
}

/// `run` / `once` against a cluster: not implemented yet.
pub fn live(_options: &Options) -> Result<CommandOutput> {
    Err(Error::Unsupported(
        "reconciling a cluster (`run`, `once`) is not implemented yet; `plan --from PATH` and `crd` work"
            .into(),
    ))
}
