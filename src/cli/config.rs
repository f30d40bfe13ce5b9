//! Each subcommand's config, built from its flags. Validation that needs more than one flag,
//! or the environment, happens here, so the library below takes only checked values.

use jiff::Timestamp;

use super::args::{
    BootstrapArgs, ClusterArgs, CredentialsServerArgs, InjectArgs, LeaseArgs, MutationFlags,
    OutputArgs, PassArgs, PlanArgs, PlannerArgs, RunArgs, StsArgs, WebhookArgs,
};
use crate::controller::bootstrap::BootstrapConfig;
use crate::controller::commands::{LoopSettings, OfflinePlan, PassSetup};
use crate::controller::lease::LeaseConfig;
use crate::controller::observe::ObserveOptions;
use crate::controller::pass::{ControllerConfig, Rendering};
use crate::controller::plan::PlanConfig;
use crate::controller::sts::AwsOptions;
use crate::delivery::inject::InjectConfig;
use crate::delivery::mutate::MutateOptions;
use crate::delivery::webhook::WebhookConfig;
use crate::domain::arn::{BaseArn, RoleArn};
use crate::domain::policy::Policy;
use crate::domain::session::SessionOptions;
use crate::{Error, Result};

/// The planner's configuration.
pub fn plan_config(flags: &PlannerArgs) -> Result<PlanConfig> {
    let base_role_arn = flags
        .base_role_arn
        .as_deref()
        .map(|s| {
            s.parse::<BaseArn>()
                .map_err(|e| Error::Config(format!("--base-role-arn: {e}")))
        })
        .transpose()?;
    let refresh_limit = i64::try_from(flags.refresh_limit.as_secs())
        .map_err(|_| Error::Config("--refresh-limit is too large".into()))?;
    let session = SessionOptions {
        tags: flags.session_tags,
        source_identity: flags.source_identity,
        external_id_format: flags.external_id_format.clone(),
        cluster_name: flags.cluster_name.clone(),
    };
    session.validate().map_err(Error::Config)?;
    Ok(PlanConfig {
        base_role_arn,
        refresh_limit,
        session,
        policy: Policy {
            namespace_restrictions: flags.namespace_restrictions,
            allowed_role_patterns: flags.allowed_role_patterns.clone(),
        },
    })
}

/// How passes run; `watch` is `run`'s (`once` always lists).
pub fn controller_config(flags: &PassArgs, watch: bool) -> Result<ControllerConfig> {
    Ok(ControllerConfig {
        plan: plan_config(&flags.planner)?,
        observe: observe_options(&flags.cluster, flags.planner.namespace_restrictions),
        concurrency: flags.concurrency.get(),
        own_role: None,
        watch,
    })
}

fn observe_options(cluster: &ClusterArgs, namespaces: bool) -> ObserveOptions {
    ObserveOptions {
        namespace: cluster.namespace().map(str::to_string),
        namespaces,
        page_size: 0,
    }
}

fn aws_options(flags: &StsArgs) -> AwsOptions {
    AwsOptions {
        region: flags.region.clone(),
        base_role_arn: None,
        assume_role: flags.assume_role.clone(),
        rate: Some(flags.sts_rate),
        burst: Some(flags.sts_burst),
        seed: None,
    }
}

fn rendering(flags: &OutputArgs) -> Rendering {
    Rendering {
        format: flags.output,
        verbose: flags.verbose,
    }
}

fn pass_setup(flags: &PassArgs, watch: bool) -> Result<PassSetup> {
    Ok(PassSetup {
        controller: controller_config(flags, watch)?,
        apiserver: flags.cluster.apiserver.clone(),
        aws: aws_options(&flags.sts),
        lease: lease_config(&flags.lease)?,
        self_role: self_role(flags.self_role.as_deref())?,
        rendering: rendering(&flags.output),
        dry_run: flags.dry_run,
    })
}

/// `once`.
pub fn controller(flags: &PassArgs) -> Result<PassSetup> {
    pass_setup(flags, false)
}

/// `run` and the bare binary.
pub fn run(flags: &RunArgs) -> Result<(PassSetup, LoopSettings)> {
    Ok((
        pass_setup(&flags.pass, flags.watch)?,
        LoopSettings {
            interval: flags.interval,
            health_addr: flags.health_addr.clone(),
        },
    ))
}

/// `plan --from`, or `None` when `plan` reads the cluster.
pub fn offline_plan(flags: &PlanArgs) -> Result<Option<OfflinePlan>> {
    let Some(from) = &flags.from else {
        return Ok(None);
    };
    let now = match &flags.now {
        Some(s) => s
            .parse::<Timestamp>()
            .map_err(|e| Error::Config(format!("--now {s:?} is not an RFC 3339 time: {e}")))?,
        None => Timestamp::now(),
    };
    Ok(Some(OfflinePlan {
        from: from.clone(),
        now,
        namespace: flags.cluster.namespace().map(str::to_string),
        plan: plan_config(&flags.planner)?,
        rendering: rendering(&flags.output),
    }))
}

/// `plan` against the cluster: a dry run that needs no Lease.
pub fn live_plan(flags: &PlanArgs) -> Result<PassSetup> {
    Ok(PassSetup {
        controller: ControllerConfig {
            plan: plan_config(&flags.planner)?,
            observe: observe_options(&flags.cluster, flags.planner.namespace_restrictions),
            concurrency: 1,
            own_role: None,
            watch: false,
        },
        apiserver: flags.cluster.apiserver.clone(),
        aws: aws_options(&flags.sts),
        lease: None,
        self_role: None,
        rendering: rendering(&flags.output),
        dry_run: true,
    })
}

/// Leader election, or `None` when it is off.
pub fn lease_config(flags: &LeaseArgs) -> Result<Option<LeaseConfig>> {
    if !flags.leader_elect {
        return Ok(None);
    }
    let namespace = flags
        .lease_namespace
        .clone()
        .filter(|n| !n.is_empty())
        .or_else(|| {
            std::env::var("POD_NAMESPACE")
                .ok()
                .filter(|n| !n.is_empty())
        })
        .unwrap_or_else(|| crate::controller::lease::DEFAULT_LEASE_NAMESPACE.into());
    if flags.lease_name.is_empty() {
        return Err(Error::Config("--lease-name must not be empty".into()));
    }
    let config = LeaseConfig {
        namespace,
        name: flags.lease_name.clone(),
        identity: LeaseConfig::default_identity(),
        duration: flags.lease_duration,
        renew_deadline: flags.lease_renew_deadline,
        retry_period: flags.lease_retry_period,
        wait: flags.lease_wait,
    };
    config.validate().map_err(Error::Config)?;
    Ok(Some(config))
}

/// `--self-role` as (namespace, name).
pub fn self_role(flag: Option<&str>) -> Result<Option<(String, String)>> {
    match flag.filter(|s| !s.is_empty()) {
        Some(s) => match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Some((ns.to_string(), name.to_string())))
            }
            _ => Err(Error::Config(format!(
                "--self-role {s:?} is not NAMESPACE/NAME"
            ))),
        },
        None => Ok(None),
    }
}

/// `bootstrap`.
pub fn bootstrap(flags: &BootstrapArgs) -> Result<BootstrapConfig> {
    let role_arn: RoleArn = flags
        .role_arn
        .parse()
        .map_err(|e| Error::Config(format!("--role-arn: {e}")))?;
    if flags.name.is_empty() {
        return Err(Error::Config("--name must not be empty".into()));
    }
    Ok(BootstrapConfig {
        role_arn,
        namespace: flags
            .cluster
            .namespace()
            .unwrap_or(crate::controller::bootstrap::DEFAULT_NAMESPACE)
            .to_string(),
        name: flags.name.clone(),
        session_duration: flags.session_duration,
        apiserver: flags.cluster.apiserver.clone(),
        plan: plan_config(&flags.planner)?,
        aws: aws_options(&flags.sts),
    })
}

/// How a pod is mutated (`inject`, `webhook`).
pub fn mutation(flags: &MutationFlags) -> MutateOptions {
    MutateOptions {
        default_delivery: flags.default_delivery,
        sidecar_image: flags.sidecar_image.clone(),
        sidecar_port: flags.sidecar_port,
        region: flags.pod_region.clone(),
    }
}

/// `inject`.
pub fn inject(flags: InjectArgs) -> InjectConfig {
    InjectConfig {
        mutation: mutation(&flags.mutation),
        paths: flags.paths,
        role: flags.role,
    }
}

/// `credentials-server`.
pub fn credentials_server(
    flags: CredentialsServerArgs,
) -> crate::delivery::credentials_server::Config {
    crate::delivery::credentials_server::Config {
        listen: flags.listen,
        credentials_file: flags.credentials_file,
        probe: flags.probe,
    }
}

/// `webhook`.
pub fn webhook(flags: WebhookArgs) -> Result<WebhookConfig> {
    let addr = crate::controller::health::parse_addr(&flags.webhook_addr)
        .map_err(|e| Error::Config(format!("--webhook-addr {e}")))?;
    Ok(WebhookConfig {
        addr,
        mutation: mutation(&flags.mutation),
        tls_cert_file: flags.tls_cert_file,
        tls_key_file: flags.tls_key_file,
    })
}
