//! Events: the reasons the executor reports, and publishing them. kube's Recorder names an
//! Event after its object, which the API server rejects for long names; those are written here
//! under a shortened, hashed name.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::PostParams;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource};

use super::Executor;
use crate::domain::crd::AWSIAMRole;
use crate::domain::model::ObservedRole;
use crate::domain::text::{kube_message, truncate};

/// Event reasons (the original's three plus this project's).
pub mod reasons {
    pub const CREATE_CREDENTIALS: &str = "CreateCredentials";
    pub const UPDATE_CREDENTIALS: &str = "UpdateCredentials";
    pub const GET_CREDENTIALS_FAILED: &str = "GetCredentialsFailed";
    /// New credentials were issued but the API server refused the Secret write (an immutable
    /// Secret, RBAC, an admission webhook's denial).
    pub const WRITE_SECRET_FAILED: &str = "WriteSecretFailed";
    pub const DELETE_CREDENTIALS: &str = "DeleteCredentials";
}

impl Executor {
    pub(super) async fn event(
        &self,
        role: &ObservedRole,
        type_: EventType,
        reason: &str,
        action: &str,
        note: &str,
    ) {
        let reference = reference::<AWSIAMRole>(&role.namespace, &role.name, &role.uid);
        self.publish(&reference, type_, reason, action, note).await;
    }

    /// Events are best effort: a failure is logged and never fails the action.
    pub(super) async fn publish(
        &self,
        reference: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: &str,
    ) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(truncate(note, 1024)),
            action: action.into(),
            secondary: None,
        };
        let name = reference.name.as_deref().unwrap_or_default();
        let published = if name.len() <= MAX_RECORDER_NAME {
            self.recorder.publish(&event, reference).await
        } else {
            self.publish_long(&event, reference, name).await
        };
        if let Err(e) = published {
            tracing::debug!(reason, error = %kube_message(&e), "could not publish event");
        }
    }

    /// kube's Recorder names an Event `<object name>.<hex nanoseconds>`, which a real API server
    /// rejects above 253 characters; objects with longer names get their Event written here, named
    /// from a shortened, hashed object name. Its `regarding` still names the object in full, so
    /// `kubectl describe` finds it.
    async fn publish_long(
        &self,
        event: &Event,
        reference: &ObjectReference,
        name: &str,
    ) -> Result<(), kube::Error> {
        use k8s_openapi::api::events::v1::Event as K8sEvent;
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
        let now = Timestamp::now();
        let namespace = reference.namespace.clone().unwrap_or_default();
        let k8s_event = K8sEvent {
            metadata: kube::api::ObjectMeta {
                name: Some(event_name(name, now)),
                namespace: Some(namespace.clone()),
                ..kube::api::ObjectMeta::default()
            },
            action: Some(event.action.clone()),
            reason: Some(event.reason.clone()),
            note: event.note.clone(),
            event_time: Some(MicroTime(now)),
            regarding: Some(reference.clone()),
            reporting_controller: Some(REPORTING_CONTROLLER.into()),
            reporting_instance: Some(
                std::env::var("POD_NAME").unwrap_or_else(|_| REPORTING_CONTROLLER.into()),
            ),
            type_: Some(
                match event.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .into(),
            ),
            ..K8sEvent::default()
        };
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), &namespace);
        api.create(&PostParams::default(), &k8s_event)
            .await
            .map(|_| ())
    }
}

pub(super) const REPORTING_CONTROLLER: &str = "kube-aws-iam-controller";

/// Longest object name whose Recorder-built Event name (`<name>.<up to 16 hex digits>`) stays
/// within the 253 characters of a DNS subdomain.
const MAX_RECORDER_NAME: usize = 253 - 1 - 16;

/// `<name cut to fit>-<8 hex digits of its SHA-256>.<hex nanoseconds>`: at most 253 characters, a
/// valid DNS subdomain for any valid object name, distinct for names that share their first 220
/// characters.
pub fn event_name(object_name: &str, now: Timestamp) -> String {
    use sha2::{Digest as _, Sha256};
    let digest = Sha256::digest(object_name.as_bytes());
    let hash: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    let keep = MAX_RECORDER_NAME - 1 - hash.len();
    let prefix = truncate(object_name, keep);
    let prefix = prefix.trim_end_matches(['.', '-']);
    format!("{prefix}-{hash}.{:x}", now.as_nanosecond())
}

/// What an Event is about: an object of kind `K` (its UID, when known, pins the very object).
pub(super) fn reference<K: Resource<DynamicType = ()>>(
    namespace: &str,
    name: &str,
    uid: &str,
) -> ObjectReference {
    ObjectReference {
        api_version: Some(K::api_version(&()).into()),
        kind: Some(K::kind(&()).into()),
        name: Some(name.into()),
        namespace: Some(namespace.into()),
        uid: Some(uid.into()).filter(|u: &String| !u.is_empty()),
        ..ObjectReference::default()
    }
}
