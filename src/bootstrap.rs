//! `bootstrap`: the first Secret of the controller's own AWSIAMRole, made with the operator's
//! AWS credentials.
//!
//! A controller running on seed credentials needs a valid Secret before its first pass; after
//! that it refreshes the Secret itself. This writes exactly what a pass would: the AWSIAMRole
//! (when absent), the complete managed Secret (all data keys, both ownership labels, the owner
//! reference to the role's UID) and the role's Ready status, so the first pass finds it up to
//! date and no long-lived key ever has to be stored in the cluster.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use kube::core::{ApiResource, DynamicObject};
use serde_json::json;

use crate::CommandOutput;
use crate::arn::{BaseArn, RoleArn};
use crate::crd::{AWSIAMRole, AWSIAMRoleSpec};
use crate::model::ObservedRole;
use crate::plan::{CredentialRequest, ready_status, shortened};
use crate::secret::{self, format_time};
use crate::sts::{self, AwsOptions, CredentialSource as _};
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
    pub plan: crate::plan::PlanConfig,
    /// STS set-up (the operator's own credentials: no seed).
    pub aws: AwsOptions,
}

/// Runs `bootstrap`. Exit code 0 when the Secret was written; errors exit 2.
pub async fn run(args: &BootstrapConfig) -> Result<CommandOutput> {
    let arn = args.role_arn.clone();
    let namespace = args.namespace.clone();
    let name = args.name.clone();
    let config = &args.plan;
    let client = crate::pass::kube_client(args.apiserver.as_deref()).await?;
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
    let wanted = crate::arn::resolve(&spec.role_reference, Some(&base))
        .map_err(|e| Error::Config(format!("AWSIAMRole {namespace}/{name}: {e}")))?;
    if wanted != arn {
        return Err(Error::Config(format!(
            "the existing AWSIAMRole {namespace}/{name} names {wanted}, not {arn}; delete it or pass --name"
        )));
    }

    // 2. A name held by a Secret the controller does not manage is never overwritten.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let current = secrets
        .get_metadata_opt(&name)
        .await
        .map_err(kube_err(format!("reading Secret {namespace}/{name}")))?;
    if let Some(meta) = &current
        && !secret::is_managed(&meta.metadata.labels.clone().unwrap_or_default())
    {
        return Err(Error::Config(format!(
            "Secret {namespace}/{name} exists and is not managed by kube-aws-iam-controller; \
             refusing to overwrite it"
        )));
    }

    // 3. Assume the role once with the operator's credentials.
    let (source, _) = sts::connect(&AwsOptions {
        base_role_arn: Some(base),
        seed: None,
        ..args.aws.clone()
    })
    .await?;
    let session_name = crate::arn::session_name(&namespace, &name);
    let extras = config
        .session
        .extras(&namespace, &name, &session_name)
        .map_err(Error::Config)?;
    let request = CredentialRequest {
        role_arn: arn.clone(),
        duration: spec.duration(),
        session_name,
        extras,
    };
    let issued = source
        .assume(&request)
        .await
        .map_err(|e| Error::Aws(format!("AssumeRole {arn} failed: {e}")))?;
    let issued_at = Timestamp::now();

    // 4. The complete managed Secret, owned by the role.
    let mut desired = secret::build(&observed, &arn.to_string(), &issued, issued_at);
    match current {
        None => secrets.create(&PostParams::default(), &desired).await,
        Some(meta) => {
            desired.metadata.resource_version = meta.metadata.resource_version;
            secrets
                .replace(&name, &PostParams::default(), &desired)
                .await
        }
    }
    .map_err(kube_err(format!("writing Secret {namespace}/{name}")))?;

    // 5. The status a pass would write, so the first pass has nothing to do.
    let lifetime = issued.expiration.as_second() - issued_at.as_second();
    let status = ready_status(
        &observed,
        &arn.to_string(),
        issued.expiration,
        shortened(Some(lifetime), request.duration),
        issued_at,
    );
    let api: Api<DynamicObject> =
        Api::namespaced_with(client, &namespace, &ApiResource::erase::<AWSIAMRole>(&()));
    let status_note = match api
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({ "status": status })),
        )
        .await
    {
        Ok(_) => String::new(),
        Err(e) => format!(
            " (its status was not updated: {}; the controller's first pass will)",
            crate::text::kube_message(&e)
        ),
    };
    Ok(CommandOutput {
        stdout: format!(
            "AWSIAMRole {namespace}/{name} {}\nSecret {namespace}/{name} written with credentials for {arn}, valid until {}{status_note}\n",
            if created { "created" } else { "exists" },
            format_time(issued.expiration),
        ),
        notes: Vec::new(),
        exit_code: 0,
    })
}
