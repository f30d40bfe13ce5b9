//! The subcommands as library functions returning what to print, so tests run them without a
//! process and `main` stays a dispatcher.

use std::sync::Arc;

use jiff::Timestamp;

use crate::arn::BaseArn;
use crate::cli::{Options, PlanArgs};
use crate::lease::LeaseConfig;
use crate::observe::ObserveOptions;
use crate::pass::{Controller, ControllerConfig, Rendering, kube_client};
use crate::plan::PlanConfig;
use crate::plan::render::render;
use crate::policy::Policy;
use crate::session::SessionOptions;
use crate::sts::{self, AwsOptions};
use crate::{Error, Result, crd, offline, plan};

/// The planner's configuration from the command line.
pub fn plan_config(options: &Options) -> Result<PlanConfig> {
    let base_role_arn = options
        .base_role_arn
        .as_deref()
        .map(|s| {
            s.parse::<BaseArn>()
                .map_err(|e| Error::Config(format!("--base-role-arn: {e}")))
        })
        .transpose()?;
    let refresh_limit = i64::try_from(options.refresh_limit.as_secs())
        .map_err(|_| Error::Config("--refresh-limit is too large".into()))?;
    let session = SessionOptions {
        tags: options.session_tags,
        source_identity: options.source_identity,
        external_id_format: options.external_id_format.clone(),
        cluster_name: options.cluster_name.clone(),
    };
    session.validate().map_err(Error::Config)?;
    Ok(PlanConfig {
        base_role_arn,
        refresh_limit,
        session,
        policy: Policy {
            namespace_restrictions: options.namespace_restrictions,
            allowed_role_patterns: options.allowed_role_patterns.clone(),
        },
    })
}

/// How passes run, from the command line.
pub fn controller_config(options: &Options) -> Result<ControllerConfig> {
    Ok(ControllerConfig {
        plan: plan_config(options)?,
        observe: ObserveOptions {
            namespace: options.namespace().map(str::to_string),
            namespaces: options.namespace_restrictions,
            page_size: 0,
        },
        concurrency: options.concurrency.get(),
        own_role: None,
        watch: options.watch,
    })
}

/// Connects to Kubernetes and STS (`watch`: `run`'s state is kept by watches), discovering the base role ARN when it is not given. A dry
/// run makes only that read-only `GetCallerIdentity` call, so it resolves bare role names as
/// the real pass will; it never assumes a role.
async fn connect(options: &Options, dry_run: bool, watch: bool) -> Result<Controller> {
    let mut config = controller_config(options)?;
    config.watch = watch && !dry_run;
    let client = kube_client(options.apiserver.as_deref()).await?;
    let seed = crate::seed::detect()?.map(Arc::new);
    let aws = AwsOptions {
        region: options.region.clone(),
        base_role_arn: config.plan.base_role_arn.clone(),
        assume_role: options.assume_role.clone(),
        rate: Some(options.sts_rate),
        burst: Some(options.sts_burst),
        seed: seed.clone(),
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
        let rendering = Rendering {
            format: options.output,
            verbose: options.verbose,
        };
        return Ok(Controller::dry_run(client, config, rendering));
    }
    if let Some(seed) = &seed {
        tracing::info!(file = %seed.path().display(), "signing with seed credentials (re-read when the file changes)");
    }
    let (source, base) = sts::connect(&aws).await?;
    tracing::info!(base_role_arn = %base, "connected to STS");
    config.plan.base_role_arn = Some(base);
    config.own_role = self_role(options, seed.is_some())?;
    let elector = lease_config(options)?
        .map(|lease| Arc::new(crate::lease::LeaderElector::new(client.clone(), lease)));
    Ok(Controller::new(client, config, Arc::new(source))
        .with_seed(seed)
        .with_leader_election(elector))
}

/// The leader election settings from the command line, or `None` when it is off.
pub fn lease_config(options: &Options) -> Result<Option<LeaseConfig>> {
    if !options.leader_elect {
        return Ok(None);
    }
    let namespace = options
        .lease_namespace
        .clone()
        .filter(|n| !n.is_empty())
        .or_else(|| {
            std::env::var("POD_NAMESPACE")
                .ok()
                .filter(|n| !n.is_empty())
        })
        .unwrap_or_else(|| crate::lease::DEFAULT_LEASE_NAMESPACE.into());
    if options.lease_name.is_empty() {
        return Err(Error::Config("--lease-name must not be empty".into()));
    }
    let config = LeaseConfig {
        namespace,
        name: options.lease_name.clone(),
        identity: LeaseConfig::default_identity(),
        duration: options.lease_duration,
        renew_deadline: options.lease_renew_deadline,
        retry_period: options.lease_retry_period,
        wait: options.lease_wait,
    };
    config.validate().map_err(Error::Config)?;
    Ok(Some(config))
}

/// `--self-role` as (namespace, name); with seed credentials it defaults to the role
/// `bootstrap` creates.
pub fn self_role(options: &Options, seed: bool) -> Result<Option<(String, String)>> {
    match options.self_role.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Some((ns.to_string(), name.to_string())))
            }
            _ => Err(Error::Config(format!(
                "--self-role {s:?} is not NAMESPACE/NAME"
            ))),
        },
        None if seed => Ok(Some((
            crate::bootstrap::DEFAULT_NAMESPACE.into(),
            crate::bootstrap::DEFAULT_NAME.into(),
        ))),
        None => Ok(None),
    }
}

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
/// pass: no writes, and no STS call but `GetCallerIdentity` when the base ARN is not given).
pub async fn plan(options: &Options, args: &PlanArgs) -> Result<CommandOutput> {
    match &args.from {
        Some(_) => plan_offline(options, args),
        None => {
            let controller = connect(options, true, false).await?;
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
    let config = plan_config(options)?;
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
    let controller = connect(options, options.dry_run, false).await?;
    let (exit_code, rendered) = controller.once().await?;
    Ok(CommandOutput {
        stdout: rendered.unwrap_or_default(),
        notes: Vec::new(),
        exit_code,
    })
}

/// `run` (and the bare binary): the loop, until SIGTERM/SIGINT.
pub async fn run(options: &Options) -> Result<CommandOutput> {
    let controller = connect(options, options.dry_run, options.watch).await?;
    controller
        .run(options.interval, &options.health_addr)
        .await?;
    Ok(CommandOutput::default())
}
