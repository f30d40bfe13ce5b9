//! The subcommands as library functions returning what to print, so tests run them without a
//! process and `main` stays a dispatcher.

use jiff::Timestamp;

use crate::cli::{Options, PlanArgs};
use crate::pass::Controller;
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

/// `plan`: compute and render the plan, offline (`--from`) or from the cluster (a dry-run
/// pass: no STS calls, no writes).
pub async fn plan(options: &Options, args: &PlanArgs) -> Result<CommandOutput> {
    match &args.from {
        Some(_) => plan_offline(options, args),
        None => {
            let controller = Controller::connect(options, true).await?;
            let (_, rendered) = controller.once().await?;
            Ok(CommandOutput {
                stdout: rendered.unwrap_or_default(),
                ..CommandOutput::default()
            })
        }
    }
}

/// `plan --from PATH`: offline, synchronous, no cluster and no AWS.
pub fn plan_offline(options: &Options, args: &PlanArgs) -> Result<CommandOutput> {
    let Some(from) = &args.from else {
        return Err(Error::Config("plan_offline needs --from PATH".into()));
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
    let needs_base = |a: &plan::Action<'_>| {
        matches!(
            a.op,
            plan::Op::Blocked {
                reason: plan::BlockReason::NeedsBaseArn,
                ..
            }
        )
    };
    if plan.actions.iter().any(needs_base) {
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

/// `once`: one pass against the cluster (printing the plan with `--dry-run`).
pub async fn once(options: &Options) -> Result<CommandOutput> {
    let controller = Controller::connect(options, options.dry_run).await?;
    let (exit_code, rendered) = controller.once().await?;
    Ok(CommandOutput {
        stdout: rendered.unwrap_or_default(),
        notes: Vec::new(),
        exit_code,
    })
}

/// `run` (and the bare binary): the loop, until SIGTERM/SIGINT.
pub async fn run(options: &Options) -> Result<CommandOutput> {
    let controller = Controller::connect(options, options.dry_run).await?;
    controller
        .run(options.interval, &options.health_addr)
        .await?;
    Ok(CommandOutput::default())
}
