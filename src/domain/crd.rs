//! The `AWSIAMRole` custom resource, identical to the original controller's CRD plus
//! `status.conditions`, and printer columns that show the `Ready` condition (so `kubectl get
//! awsiamroles` tells which roles are not served and why) besides the role ARN and expiration.
//!
//! `Expires` is a `string` column on purpose: the API server renders `date` cells as the time
//! elapsed since the value, and an expiration lies in the future (it would read `<invalid>`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use kube::core::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::domain::text::type_name;

/// Default `roleSessionDuration` (seconds) when the spec leaves it out.
pub const DEFAULT_SESSION_DURATION: i64 = 3600;
/// Smallest `DurationSeconds` STS accepts.
pub const MIN_SESSION_DURATION: i64 = 900;
/// Largest `DurationSeconds` STS accepts (and only for roles whose MaxSessionDuration allows it).
pub const MAX_SESSION_DURATION: i64 = 43200;

/// Desired state: which IAM role to assume and for how long.
#[derive(
    CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema,
)]
#[kube(
    group = "zalando.org",
    version = "v1",
    kind = "AWSIAMRole",
    plural = "awsiamroles",
    singular = "awsiamrole",
    namespaced,
    category = "all",
    status = "AWSIAMRoleStatus",
    derive = "Default",
    doc = "Asks the controller for credentials of an AWS IAM role, written to a Secret of the same name.",
    printcolumn = r#"{"name":"Ready","type":"string","description":"Whether the Secret holds valid credentials for the current spec (the Ready condition's status)","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","description":"Why the role is or is not served (the Ready condition's reason)","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Role ARN","type":"string","description":"Full RoleARN","jsonPath":".status.roleARN"}"#,
    printcolumn = r#"{"name":"Expires","type":"string","description":"Expiration time of the current credentials provisioned for the role","jsonPath":".status.expiration"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct AWSIAMRoleSpec {
    /// IAM role name (optionally with a path, `path/to/name`) or full role ARN.
    #[schemars(length(min = 3))]
    pub role_reference: String,
    /// Session duration in seconds (900..=43200, default 3600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 900, max = 43200))]
    pub role_session_duration: Option<i64>,
}

/// Observed state as reported by the controller.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AWSIAMRoleStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, rename = "roleARN", skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
    /// Expiration of the credentials in the Secret (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration: Option<String>,
    /// Standard conditions; the controller maintains `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Attempts to issue credentials for this generation that failed in a row (STS refused or
    /// answered unusably, or the Secret could not be written). Cleared on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_attempts: Option<u32>,
    /// After a failed attempt: no new attempt (no STS call) before this time (RFC 3339), unless
    /// the spec changes. Cleared on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<String>,
}

impl AWSIAMRoleSpec {
    /// Effective session duration in seconds.
    pub fn duration(&self) -> i64 {
        self.role_session_duration
            .unwrap_or(DEFAULT_SESSION_DURATION)
    }

    /// Decodes and validates a spec from untyped JSON, naming the offending field.
    ///
    /// A cluster may run an old CRD without schema, so nothing the API server stored is trusted.
    /// Role-reference syntax is checked later, when it is resolved against the base ARN.
    pub fn from_value(spec: Option<&Value>) -> Result<Self, String> {
        let spec = match spec {
            None | Some(Value::Null) => return Err("spec is missing".into()),
            Some(Value::Object(map)) => map,
            Some(other) => return Err(format!("spec must be an object, got {}", type_name(other))),
        };
        let role_reference = match spec.get("roleReference") {
            None | Some(Value::Null) => return Err("spec.roleReference is missing".into()),
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                return Err(format!(
                    "spec.roleReference must be a string, got {}",
                    type_name(other)
                ));
            }
        };
        let role_session_duration = match spec.get("roleSessionDuration") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => match n.as_i64() {
                Some(d) if (MIN_SESSION_DURATION..=MAX_SESSION_DURATION).contains(&d) => Some(d),
                Some(d) => {
                    return Err(format!(
                        "spec.roleSessionDuration must be between {MIN_SESSION_DURATION} and {MAX_SESSION_DURATION} seconds, got {d}"
                    ));
                }
                None => {
                    return Err(format!(
                        "spec.roleSessionDuration must be a whole number of seconds, got {n}"
                    ));
                }
            },
            Some(other) => {
                return Err(format!(
                    "spec.roleSessionDuration must be an integer, got {}",
                    type_name(other)
                ));
            }
        };
        Ok(AWSIAMRoleSpec {
            role_reference,
            role_session_duration,
        })
    }
}

/// The CustomResourceDefinition as YAML, exactly what `deploy/crd.yaml` holds.
pub fn crd_yaml() -> crate::Result<String> {
    let crd = AWSIAMRole::crd();
    let yaml = serde_saphyr::to_string(&crd).map_err(|e| crate::Error::Serialize {
        what: "CustomResourceDefinition",
        message: e.to_string(),
    })?;
    Ok(format!(
        "# Generated by `kube-aws-iam-controller crd`; a test fails if this file drifts.\n---\n{yaml}"
    ))
}
