//! The controller's subcommands as library functions taking their configs (built by the
//! command line) and returning what to print, so tests run them without a process.

use std::sync::Arc;

use jiff::Timestamp;

use crate::controller::lease::LeaseConfig;
use crate::controller::pass::{Controller, ControllerConfig, Rendering, kube_client};
use crate::controller::plan::PlanConfig;
use crate::controller::plan::render::render;
use crate::controller::sts::{self, AwsOptions};
use crate::{CommandOutput, Result, controller::offline, controller::plan, domain::crd};

/// Everything a pass against the cluster needs, built by the command line (clap-free).
#[derive(Clone, Debug)]
pub struct PassSetup {
    pub controller: ControllerConfig,
    /// Kubernetes API server URL overriding kubeconfig / in-cluster configuration.
    pub apiserver: Option<String>,
    /// STS set-up; the seed credentials are detected when connecting.
    pub aws: AwsOptions,
    /// Leader election, or `None` when it is off.
    pub lease: Option<LeaseConfig>,
    /// `--self-role` as (namespace, name), when given.
    pub self_role: Option<(String, String)>,
    pub rendering: Rendering,
    pub dry_run: bool,
}

/// `run`'s loop settings.
#[derive(Clone, Debug)]
pub struct LoopSettings {
    /// Longest time between passes.
    pub interval: std::time::Duration,
    /// Address of /healthz, /readyz and /metrics.
    pub health_addr: String,
}

/// `plan --from`: offline inputs.
#[derive(Clone, Debug)]
pub struct OfflinePlan {
    pub from: std::path::PathBuf,
    /// The time to plan for.
    pub now: Timestamp,
    /// Only this namespace's objects.
    pub namespace: Option<String>,
    pub plan: PlanConfig,
    pub rendering: Rendering,
}

/// Connects to Kubernetes and STS (`watch`: `run`'s state is kept by watches), discovering the base role ARN when it is not given. A dry
/// run makes only that read-only `GetCallerIdentity` call, so it resolves bare role names as
/// the real pass will; it never assumes a role.
async fn connect(setup: &PassSetup, dry_run: bool, watch: bool) -> Result<Controller> {
    let mut config = setup.controller.clone();
    config.watch = watch && !dry_run;
    let client = kube_client(setup.apiserver.as_deref()).await?;
    let seed = crate::controller::seed::detect()?.map(Arc::new);
    let aws = AwsOptions {
        base_role_arn: config.plan.base_role_arn.clone(),
        seed: seed.clone(),
        ..setup.aws.clone()
    };
    if dry_run {
        match sts::discover(&aws).await {
            Ok(base) => {
                tracing::info!(base_role_arn = %base, "dry run: base role ARN known, no role is assumed");
                config.plan.base_role_arn = Some(base);
            }
            // Planning still works without AWS: bare names are then blocked with a hint to
            // pass --base-role-arn, where a real pass would stop here.
            Err(e) => tracing::warn!("dry run without a base role ARN (pass --base-role-arn): {e}"),
        }
        return Ok(Controller::dry_run(client, config, setup.rendering));
    }
    if let Some(seed) = &seed {
        tracing::info!(file = %seed.path().display(), "signing with seed credentials (re-read when the file changes)");
    }
    let (source, base) = sts::connect(&aws).await?;
    tracing::info!(base_role_arn = %base, "connected to STS");
    config.plan.base_role_arn = Some(base);
    config.own_role = match &setup.self_role {
        Some(role) => Some(role.clone()),
        // With seed credentials the controller's own role is the one `bootstrap` creates.
        None if seed.is_some() => Some((
            crate::controller::bootstrap::DEFAULT_NAMESPACE.into(),
            crate::controller::bootstrap::DEFAULT_NAME.into(),
        )),
        None => None,
    };
    let elector = setup.lease.clone().map(|lease| {
        Arc::new(crate::controller::lease::LeaderElector::new(
            client.clone(),
            lease,
        ))
    });
    Ok(Controller::new(client, config, Arc::new(source))
        .with_seed(seed)
        .with_leader_election(elector))
}

/// `crd`: the CustomResourceDefinition YAML.
pub fn crd() -> Result<CommandOutput> {
    Ok(CommandOutput {
        stdout: crd::crd_yaml()?,
        ..CommandOutput::default()
    })
}

/// `plan` against the cluster: a dry-run pass (no writes, and no STS call but
/// `GetCallerIdentity` when the base ARN is not given).
pub async fn plan(setup: &PassSetup) -> Result<CommandOutput> {
    let controller = connect(setup, true, false).await?;
    let (_, rendered) = controller.once().await?;
    Ok(CommandOutput {
        stdout: rendered.unwrap_or_default(),
        ..CommandOutput::default()
    })
}

/// `plan --from PATH`: offline, synchronous, no cluster and no AWS.
pub fn plan_offline(args: &OfflinePlan) -> Result<CommandOutput> {
    let loaded = offline::load(&args.from)?;
    let observed = match args.namespace.as_deref() {
        Some(ns) => loaded.observed.scoped(ns),
        None => loaded.observed,
    };
    let plan = plan::plan(&observed, args.now, &args.plan);
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
        stdout: render(&plan, args.rendering.format, args.rendering.verbose),
        notes,
        exit_code: 0,
    })
}

/// `once`: one pass against the cluster (printing the plan with `--dry-run`).
pub async fn once(setup: &PassSetup) -> Result<CommandOutput> {
    let controller = connect(setup, setup.dry_run, false).await?;
    let (exit_code, rendered) = controller.once().await?;
    Ok(CommandOutput {
        stdout: rendered.unwrap_or_default(),
        notes: Vec::new(),
        exit_code,
    })
}

/// `run` (and the bare binary): the loop, until SIGTERM/SIGINT.
pub async fn run(setup: &PassSetup, looping: &LoopSettings) -> Result<CommandOutput> {
    let controller = connect(setup, setup.dry_run, setup.controller.watch).await?;
    controller
        .run(looping.interval, &looping.health_addr)
        .await?;
    Ok(CommandOutput::default())
}
