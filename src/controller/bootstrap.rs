//! `bootstrap`: the first Secret of the controller's own AWSIAMRole, made with the operator's
//! AWS credentials.
//!
//! A controller running on seed credentials needs a valid Secret before its first pass; after
//! that it refreshes the Secret itself. This writes exactly what a pass would: the AWSIAMRole
//! (when absent), the complete managed Secret (all data keys, both ownership labels, the owner
//! reference to the role's UID) and the role's Ready status, so the first pass finds it up to
//! date and no long-lived key ever has to be stored in the cluster.

use jiff::Timestamp;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::PostParams;

use crate::controller::apply::{Executor, Outcome, Stage};
use crate::domain::arn::{BaseArn, RoleArn};

use crate::CommandOutput;
use crate::controller::plan::{
    Action, CredentialRequest, Issue, Op, Plan, PlanConfig, RefreshReason, human, ready_status,
};
use crate::controller::sts::{self, AwsOptions};
use crate::domain::crd::{AWSIAMRole, AWSIAMRoleSpec};
use crate::domain::model::{ObservedRole, ObservedSecret};
use crate::domain::secret::format_time;
use crate::{Error, Result};

/// Where `bootstrap` puts the controller's own AWSIAMRole unless told otherwise (the
/// original's `scripts/set_secret.sh` and deployment used the same).
pub const DEFAULT_NAMESPACE: &str = "kube-system";
pub const DEFAULT_NAME: &str = "kube-aws-iam-controller-iam-role";

/// What `bootstrap` writes, and with what.
#[derive(Clone, Debug)]
pub struct BootstrapConfig {
    /// The controller's own IAM role.
    pub role_arn: RoleArn,
    /// Namespace and name of the AWSIAMRole and its Secret.
    pub namespace: String,
    pub name: String,
    /// roleSessionDuration of a newly created AWSIAMRole, in seconds.
    pub session_duration: i64,
    /// Kubernetes API server URL overriding kubeconfig.
    pub apiserver: Option<String>,
    pub plan: crate::controller::plan::PlanConfig,
    /// STS set-up (the operator's own credentials: no seed).
    pub aws: AwsOptions,
}

/// Runs `bootstrap`. Exit code 0 when the Secret was written; errors exit 2.
pub async fn run(args: &BootstrapConfig) -> Result<CommandOutput> {
    let arn = args.role_arn.clone();
    let namespace = args.namespace.clone();
    let name = args.name.clone();
    let config = &args.plan;
    let client = crate::controller::pass::kube_client(args.apiserver.as_deref()).await?;
    let kube_err = |context: String| {
        move |e: kube::Error| Error::Kube {
            context,
            source: Box::new(e),
        }
    };

    // 1. The AWSIAMRole, created when absent; an existing one must name the same role.
    let roles: Api<AWSIAMRole> = Api::namespaced(client.clone(), &namespace);
    let existing = roles
        .get_opt(&name)
        .await
        .map_err(kube_err(format!("reading AWSIAMRole {namespace}/{name}")))?;
    let (stored, created) = match existing {
        Some(role) => (role, false),
        None => {
            let mut role = AWSIAMRole::new(
                &name,
                AWSIAMRoleSpec {
                    role_reference: arn.to_string(),
                    role_session_duration: Some(args.session_duration),
                },
            );
            role.metadata.namespace = Some(namespace.clone());
            let role = roles
                .create(&PostParams::default(), &role)
                .await
                .map_err(kube_err(format!("creating AWSIAMRole {namespace}/{name}")))?;
            (role, true)
        }
    };
    let value = serde_json::to_value(&stored).map_err(|e| Error::Serialize {
        what: "AWSIAMRole",
        message: e.to_string(),
    })?;
    let observed = ObservedRole::from_value(&value, &namespace).map_err(Error::Config)?;
    let spec = observed.spec.clone().map_err(|e| {
        Error::Config(format!(
            "the existing AWSIAMRole {namespace}/{name} is unusable: {e}"
        ))
    })?;
    let base = BaseArn::for_account(arn.partition(), arn.account())
        .map_err(|e| Error::Config(format!("--role-arn: {e}")))?;
    let wanted = crate::domain::arn::resolve(&spec.role_reference, Some(&base))
        .map_err(|e| Error::Config(format!("AWSIAMRole {namespace}/{name}: {e}")))?;
    if wanted != arn {
        return Err(Error::Config(format!(
            "the existing AWSIAMRole {namespace}/{name} names {wanted}, not {arn}; delete it or pass --name"
        )));
    }

    // 2. A name held by a Secret the controller does not manage is never overwritten.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let current = secrets
        .get_opt(&name)
        .await
        .map_err(kube_err(format!("reading Secret {namespace}/{name}")))?
        .map(|s| ObservedSecret::from_secret(&s));
    if let Some(found) = &current
        && !found.is_managed()
    {
        return Err(Error::Config(format!(
            "Secret {namespace}/{name} exists and is not managed by kube-aws-iam-controller; \
             refusing to overwrite it"
        )));
    }

    // 3. A one-action plan, applied by the executor every pass uses: assume the role once with
    //    the operator's credentials, write the complete managed Secret owned by the role, then
    //    the status a pass would write, so the first pass has nothing to do.
    let (source, _) = sts::connect(&AwsOptions {
        base_role_arn: Some(base),
        seed: None,
        ..args.aws.clone()
    })
    .await?;
    let now = Timestamp::now();
    let plan = plan_for(
        &observed,
        current.as_ref(),
        &arn,
        spec.duration(),
        config,
        now,
    )?;
    let report = Executor::new(client, Arc::new(source), 1)
        .apply(&plan)
        .await;
    let status_note = match report.actions.first().map(|a| &a.outcome) {
        Some(Outcome::Done) => String::new(),
        // The Secret is written; only the status is not.
        Some(Outcome::Failed {
            stage: Stage::Status,
            message,
        }) => format!(" (its status was not updated: {message}; the controller's first pass will)"),
        Some(Outcome::Failed { stage, message }) => {
            return Err(Error::Apply {
                stage: *stage,
                message: message.clone(),
            });
        }
        Some(Outcome::Superseded) => {
            return Err(Error::Apply {
                stage: Stage::Status,
                message: format!(
                    "AWSIAMRole {namespace}/{name} was deleted or re-created while bootstrap ran; run it again"
                ),
            });
        }
        Some(Outcome::NotStarted) | None => {
            return Err(Error::Apply {
                stage: Stage::Sts,
                message: "the executor did not start the action".into(),
            });
        }
    };
    let valid = report
        .earliest_expiry
        .map(|t| format!(", valid until {}", format_time(t)))
        .unwrap_or_default();
    Ok(CommandOutput {
        stdout: format!(
            "AWSIAMRole {namespace}/{name} {}\nSecret {namespace}/{name} written with credentials for {arn}{valid}{status_note}\n",
            if created { "created" } else { "exists" },
        ),
        notes: Vec::new(),
        exit_code: 0,
    })
}

/// The plan a pass would make for the controller's own AWSIAMRole, except that the credentials
/// are issued whatever the Secret in place holds: the operator asked for them (a Secret already
/// valid is refreshed with reason `Requested`). Policy is not consulted: the role is named by
/// the operator, not by a namespace.
fn plan_for<'a>(
    role: &'a ObservedRole,
    secret: Option<&'a ObservedSecret>,
    arn: &RoleArn,
    duration: i64,
    config: &PlanConfig,
    now: Timestamp,
) -> Result<Plan<'a>> {
    let session_name = crate::domain::arn::session_name(&role.namespace, &role.name);
    let extras = config
        .session
        .extras(&role.namespace, &role.name, &session_name)
        .map_err(|e| Error::Config(e.to_string()))?;
    let expiry = now
        .checked_add(jiff::SignedDuration::from_secs(duration))
        .unwrap_or(now);
    let issue = Issue {
        role,
        request: CredentialRequest {
            role_arn: arn.clone(),
            duration,
            session_name,
            extras,
        },
        status: ready_status(role, &arn.to_string(), expiry, None, now),
    };
    let op = match secret {
        None => Op::Create(issue),
        Some(secret) => Op::Refresh {
            issue,
            secret,
            reason: RefreshReason::Requested,
        },
    };
    let message = format!("assume {arn} for {} (bootstrap)", human(duration));
    Ok(Plan {
        now,
        actions: vec![Action {
            namespace: &role.namespace,
            name: &role.name,
            role_arn: Some(arn.to_string()),
            message,
            op,
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::plan::{ActionKind, Reason};

    fn role() -> ObservedRole {
        ObservedRole {
            namespace: DEFAULT_NAMESPACE.into(),
            name: DEFAULT_NAME.into(),
            uid: "uid-self".into(),
            generation: 1,
            ..ObservedRole::default()
        }
    }

    #[test]
    fn the_plan_creates_or_re_issues_the_own_secret_whatever_it_holds() {
        let arn: RoleArn = "arn:aws:iam::123456789012:role/controller".parse().unwrap();
        let now: Timestamp = "2026-11-26T12:00:00Z".parse().unwrap();
        let config = PlanConfig::default();
        let role = role();
        let planned = plan_for(&role, None, &arn, 3600, &config, now).unwrap();
        assert_eq!(planned.actions.len(), 1);
        let a = &planned.actions[0];
        assert_eq!(
            (a.kind(), a.reason()),
            (ActionKind::Create, Reason::Missing)
        );
        assert_eq!((a.namespace, a.name), (DEFAULT_NAMESPACE, DEFAULT_NAME));
        let issue = a.issue().unwrap();
        assert_eq!(issue.request.role_arn, arn);
        assert_eq!(issue.request.duration, 3600);
        assert_eq!(
            issue.request.session_name,
            crate::domain::arn::session_name(DEFAULT_NAMESPACE, DEFAULT_NAME)
        );
        assert_eq!(
            issue.status.expiration.as_deref(),
            Some("2026-11-26T13:00:00Z")
        );
        assert_eq!(
            issue.status.role_arn.as_deref(),
            Some(arn.to_string().as_str())
        );

        // A Secret in place, even a valid one, is refreshed in place: the operator asked.
        let existing = ObservedSecret {
            namespace: role.namespace.clone(),
            name: role.name.clone(),
            resource_version: Some("7".into()),
            ..ObservedSecret::default()
        };
        let planned = plan_for(&role, Some(&existing), &arn, 900, &config, now).unwrap();
        let a = &planned.actions[0];
        assert_eq!(
            (a.kind(), a.reason()),
            (ActionKind::Refresh, Reason::Requested)
        );
        assert_eq!(a.secret(), Some(&existing));
        assert!(!a.changes_nothing());
    }
}
