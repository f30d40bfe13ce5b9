//! The executor: carries out a [`Plan`] against the Kubernetes API and STS.
//!
//! Each action runs as its own pipeline (STS call, Secret write, status, Event) with at most
//! `concurrency` in flight; STS calls additionally pass the source's rate limiter. A failed
//! action is recorded and retried by the next pass; it never stops the others.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::core::ApiResource;
use kube::core::DynamicObject;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client};
use serde_json::json;

use crate::crd::{AWSIAMRole, AWSIAMRoleStatus};
use crate::model::ObservedRole;
use crate::plan::{self, Action, ActionKind, Plan, status_matches};
use crate::secret::{self, format_time};
use crate::sts::{CredentialSource, StsErrorKind};

/// Event reasons (the original's three plus this project's).
pub mod reasons {
    pub const CREATE_CREDENTIALS: &str = "CreateCredentials";
    pub const UPDATE_CREDENTIALS: &str = "UpdateCredentials";
    pub const GET_CREDENTIALS_FAILED: &str = "GetCredentialsFailed";
    pub const DELETE_CREDENTIALS: &str = "DeleteCredentials";
}

/// Where an action failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    Sts,
    Secret,
    Status,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Sts => "sts",
            Stage::Secret => "secret",
            Stage::Status => "status",
        }
    }
}

/// The result of one action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Carried out (for `Skip` and unchanged `Blocked`: nothing needed).
    Done,
    Failed {
        stage: Stage,
        message: String,
    },
    /// Not started because the controller is shutting down.
    NotStarted,
}

impl Outcome {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Outcome::Done => "ok",
            Outcome::Failed { .. } => "failed",
            Outcome::NotStarted => "not_started",
        }
    }
}

/// One action's outcome, named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActionReport {
    pub namespace: String,
    pub name: String,
    pub kind: ActionKind,
    pub reason: plan::Reason,
    pub outcome: Outcome,
}

/// What a pass did: per-action outcomes and the counts the summary line and metrics show.
#[derive(Clone, Debug, Default)]
pub struct PassReport {
    pub actions: Vec<ActionReport>,
    /// STS calls by result label (`ok`, `throttled`, `denied`, `error`).
    pub sts_calls: BTreeMap<&'static str, usize>,
    /// Writes to Secrets and AWSIAMRole statuses (Events not counted).
    pub writes: usize,
    pub duration: Duration,
    /// AWSIAMRoles served (with a readable Secret) after the pass, when known.
    pub managed_roles: usize,
    /// Earliest expiry among the Secrets, when known.
    pub earliest_expiry: Option<Timestamp>,
}

impl PassReport {
    pub fn failed(&self) -> usize {
        self.actions
            .iter()
            .filter(|a| matches!(a.outcome, Outcome::Failed { .. }))
            .count()
    }

    /// Counts by (action kind, outcome label).
    pub fn counts(&self) -> BTreeMap<(ActionKind, &'static str), usize> {
        let mut counts = BTreeMap::new();
        for a in &self.actions {
            *counts
                .entry((a.kind, a.outcome.metric_label()))
                .or_insert(0) += 1;
        }
        counts
    }
}

impl fmt::Display for PassReport {
    /// The one summary line every pass ends with.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let counts = self.counts();
        let mut parts = Vec::new();
        for kind in ActionKind::ALL {
            let ok = counts.get(&(kind, "ok")).copied().unwrap_or(0);
            let failed = counts.get(&(kind, "failed")).copied().unwrap_or(0);
            let skipped = counts.get(&(kind, "not_started")).copied().unwrap_or(0);
            let mut part = format!("{}={ok}", kind.as_str());
            if failed > 0 {
                part.push_str(&format!(" ({failed} failed)"));
            }
            if skipped > 0 {
                part.push_str(&format!(" ({skipped} not started)"));
            }
            parts.push(part);
        }
        let sts: Vec<String> = self
            .sts_calls
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        write!(
            f,
            "pass done: {}; sts calls: {}; writes: {}; took {:.3}s",
            parts.join(", "),
            if sts.is_empty() {
                "0".into()
            } else {
                sts.join(" ")
            },
            self.writes,
            self.duration.as_secs_f64()
        )
    }
}

/// Carries out plans.
pub struct Executor {
    client: Client,
    source: Arc<dyn CredentialSource>,
    recorder: Recorder,
    concurrency: usize,
    stopping: Arc<AtomicBool>,
    /// The controller's own AWSIAMRole (namespace, name): its action runs, and finishes,
    /// before any other, so the credentials the controller signs with are renewed first.
    first: Option<(String, String)>,
}

/// What one action did, before it is named in the report.
struct Done {
    outcome: Outcome,
    sts: Option<&'static str>,
    writes: usize,
    /// Expiry of credentials this action issued.
    issued_expiry: Option<Timestamp>,
}

impl Executor {
    pub fn new(client: Client, source: Arc<dyn CredentialSource>, concurrency: usize) -> Self {
        let reporter = Reporter {
            controller: "kube-aws-iam-controller".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Executor {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            source,
            concurrency: concurrency.max(1),
            stopping: Arc::new(AtomicBool::new(false)),
            first: None,
        }
    }

    /// Runs the action of AWSIAMRole `namespace/name` before all others in every pass.
    pub fn run_first(mut self, role: Option<(String, String)>) -> Self {
        self.first = role;
        self
    }

    /// Set to stop starting new actions (in-flight ones finish).
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stopping.clone()
    }

    /// Applies every action of `plan`; never fails as a whole.
    pub async fn apply(&self, plan: &Plan<'_>) -> PassReport {
        let start = Instant::now();
        let mut report = PassReport::default();
        let is_first = |a: &Action<'_>| {
            self.first
                .as_ref()
                .is_some_and(|(ns, name)| a.namespace == ns && a.name == name)
        };
        let (first, rest): (Vec<&Action<'_>>, Vec<&Action<'_>>) = plan
            .actions
            .iter()
            .filter(|a| !is_noop(a))
            .partition(|a| is_first(a));
        let mut results = self.run_all(first).await;
        results.extend(self.run_all(rest).await);
        let mut outcomes: BTreeMap<(&str, &str), Done> = BTreeMap::new();
        for (a, done) in results {
            if let Some(label) = done.sts {
                *report.sts_calls.entry(label).or_insert(0) += 1;
            }
            report.writes += done.writes;
            outcomes.insert((a.namespace, a.name), done);
        }
        for a in &plan.actions {
            let done = outcomes.remove(&(a.namespace, a.name));
            let issued = done.as_ref().and_then(|d| d.issued_expiry);
            let outcome = done.map(|d| d.outcome).unwrap_or(Outcome::Done);
            // What is served after the pass: fresh credentials, or the Secret that was fine.
            let served = match (a.kind, &outcome) {
                (ActionKind::Create | ActionKind::Refresh, Outcome::Done) => issued,
                (ActionKind::Skip | ActionKind::UpdateStatus, _) => a
                    .secret
                    .and_then(|s| secret::decode(s).ok())
                    .map(|c| c.expire),
                _ => None,
            };
            if let Some(expiry) = served {
                report.managed_roles += 1;
                report.earliest_expiry =
                    Some(report.earliest_expiry.map_or(expiry, |e| e.min(expiry)));
            }
            report.actions.push(ActionReport {
                namespace: a.namespace.to_string(),
                name: a.name.to_string(),
                kind: a.kind,
                reason: a.reason,
                outcome,
            });
        }
        report.duration = start.elapsed();
        report
    }

    /// Runs `work` with at most `concurrency` actions in flight; none start once stopping.
    async fn run_all<'p, 'a>(&self, work: Vec<&'p Action<'a>>) -> Vec<(&'p Action<'a>, Done)> {
        futures::stream::iter(work)
            .map(|a| async move {
                if self.stopping.load(Ordering::SeqCst) {
                    let done = Done {
                        outcome: Outcome::NotStarted,
                        sts: None,
                        writes: 0,
                        issued_expiry: None,
                    };
                    return (a, done);
                }
                (a, self.apply_one(a).await)
            })
            .buffer_unordered(self.concurrency)
            .collect()
            .await
    }

    async fn apply_one(&self, action: &Action<'_>) -> Done {
        let result = match action.kind {
            ActionKind::Create | ActionKind::Refresh => self.issue(action).await,
            ActionKind::Delete => self.delete(action).await,
            ActionKind::UpdateStatus | ActionKind::Blocked => self.status_only(action).await,
            ActionKind::Skip => Ok(Done {
                outcome: Outcome::Done,
                sts: None,
                writes: 0,
                issued_expiry: None,
            }),
        };
        match result {
            Ok(done) => done,
            Err(done) => done,
        }
    }

    /// Create or Refresh: assume the role, write the Secret, then the status and an Event.
    async fn issue(&self, action: &Action<'_>) -> Result<Done, Done> {
        let (Some(role), Some(request)) = (action.role, action.request.as_ref()) else {
            return Err(failed(
                Stage::Sts,
                "action carries no role or request".into(),
                None,
                0,
            ));
        };
        let issued = match self.source.assume(request).await {
            Ok(issued) => issued,
            Err(e) => {
                let label = e.kind.metric_label();
                let message = match e.kind {
                    StsErrorKind::Denied => format!("AssumeRole {} denied: {e}", request.role_arn),
                    StsErrorKind::Throttled => {
                        format!("AssumeRole {} throttled: {e}", request.role_arn)
                    }
                    _ => format!("AssumeRole {} failed: {e}", request.role_arn),
                };
                tracing::warn!(namespace = action.namespace, name = action.name, error = %message, "could not get credentials");
                let current = action.secret.and_then(|s| secret::decode(s).ok());
                let status = plan::not_ready_status_with(
                    role,
                    reasons::GET_CREDENTIALS_FAILED,
                    &message,
                    current.as_ref(),
                    Timestamp::now(),
                );
                let mut writes = 0;
                if !status_matches(role.status.as_ref(), &status)
                    && self.patch_status(role, &status).await.is_ok()
                {
                    writes += 1;
                }
                self.event(
                    role,
                    EventType::Warning,
                    reasons::GET_CREDENTIALS_FAILED,
                    "AssumeRole",
                    &message,
                )
                .await;
                return Err(failed(Stage::Sts, message, Some(label), writes));
            }
        };
        let issued_at = Timestamp::now();
        let arn = request.role_arn.to_string();
        let mut desired = secret::build(role, &arn, &issued.credentials, issued_at);
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &role.namespace);
        let written = match action.secret {
            None => api.create(&PostParams::default(), &desired).await,
            Some(existing) => {
                desired.metadata.resource_version = existing.resource_version.clone();
                api.replace(&role.name, &PostParams::default(), &desired)
                    .await
            }
        };
        if let Err(e) = written {
            let message = format!(
                "writing Secret {}/{}: {}",
                role.namespace,
                role.name,
                kube_message(&e)
            );
            tracing::warn!(namespace = action.namespace, name = action.name, error = %message, "write failed");
            return Err(failed(Stage::Secret, message, Some("ok"), 0));
        }
        let lifetime = issued.credentials.expiration.as_second() - issued_at.as_second();
        let granted = plan::shortened(Some(lifetime), request.duration);
        let status = plan::ready_status(
            role,
            &arn,
            issued.credentials.expiration,
            granted,
            issued_at,
        );
        let (reason, verb) = if action.secret.is_none() {
            (reasons::CREATE_CREDENTIALS, "created")
        } else {
            (reasons::UPDATE_CREDENTIALS, "refreshed")
        };
        let note = format!(
            "credentials for {arn} {verb} ({}), valid until {}",
            action.reason,
            format_time(issued.credentials.expiration)
        );
        self.event(role, EventType::Normal, reason, "AssumeRole", &note)
            .await;
        tracing::info!(namespace = action.namespace, name = action.name, role_arn = %arn, reason = %action.reason, "credentials {verb}");
        if let Err(e) = self.patch_status(role, &status).await {
            return Err(failed(Stage::Status, e, Some("ok"), 1));
        }
        Ok(Done {
            outcome: Outcome::Done,
            sts: Some("ok"),
            writes: 2,
            issued_expiry: Some(issued.credentials.expiration),
        })
    }

    /// Delete with preconditions, so a Secret changed since it was listed is never deleted.
    async fn delete(&self, action: &Action<'_>) -> Result<Done, Done> {
        let Some(existing) = action.secret else {
            return Err(failed(
                Stage::Secret,
                "delete without a Secret".into(),
                None,
                0,
            ));
        };
        let api: Api<Secret> = Api::namespaced(self.client.clone(), action.namespace);
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(existing.uid.clone()).filter(|u| !u.is_empty()),
                resource_version: existing.resource_version.clone(),
            }),
            ..DeleteParams::default()
        };
        match api.delete(action.name, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.is_not_found() => {}
            Err(e) => {
                let message = format!(
                    "deleting Secret {}/{}: {}",
                    action.namespace,
                    action.name,
                    kube_message(&e)
                );
                tracing::warn!(namespace = action.namespace, name = action.name, error = %message, "delete failed");
                return Err(failed(Stage::Secret, message, None, 0));
            }
        }
        tracing::info!(namespace = action.namespace, name = action.name, reason = %action.reason, "Secret deleted");
        let note = format!("Secret deleted ({}): {}", action.reason, action.message);
        let mut writes = 1;
        match action.role {
            Some(role) => {
                self.event(
                    role,
                    EventType::Normal,
                    reasons::DELETE_CREDENTIALS,
                    "DeleteSecret",
                    &note,
                )
                .await;
                if let Some(status) = &action.status {
                    if let Err(e) = self.patch_status(role, status).await {
                        return Err(failed(Stage::Status, e, None, writes));
                    }
                    writes += 1;
                }
            }
            None => {
                let reference = ObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Secret".into()),
                    name: Some(existing.name.clone()),
                    namespace: Some(existing.namespace.clone()),
                    uid: Some(existing.uid.clone()).filter(|u| !u.is_empty()),
                    ..ObjectReference::default()
                };
                self.publish(
                    &reference,
                    EventType::Normal,
                    reasons::DELETE_CREDENTIALS,
                    "DeleteSecret",
                    &note,
                )
                .await;
            }
        }
        Ok(Done {
            outcome: Outcome::Done,
            sts: None,
            writes,
            issued_expiry: None,
        })
    }

    /// UpdateStatus and Blocked: write the status the plan computed (and, for a newly blocked
    /// role, say why in an Event).
    async fn status_only(&self, action: &Action<'_>) -> Result<Done, Done> {
        let (Some(role), Some(status)) = (action.role, action.status.as_ref()) else {
            return Ok(Done {
                outcome: Outcome::Done,
                sts: None,
                writes: 0,
                issued_expiry: None,
            });
        };
        if let Err(e) = self.patch_status(role, status).await {
            return Err(failed(Stage::Status, e, None, 0));
        }
        if action.kind == ActionKind::Blocked {
            self.event(
                role,
                EventType::Warning,
                action.reason.as_str(),
                "Validate",
                &action.message,
            )
            .await;
        }
        Ok(Done {
            outcome: Outcome::Done,
            sts: None,
            writes: 1,
            issued_expiry: None,
        })
    }

    /// Merge-patches the status subresource. Absent fields are sent as `null` so stale values
    /// (a deleted Secret's role and expiry) are removed.
    async fn patch_status(
        &self,
        role: &ObservedRole,
        status: &AWSIAMRoleStatus,
    ) -> Result<(), String> {
        // Untyped, so the response decodes even when the stored spec does not (the reason the
        // role is blocked may be exactly that).
        let api: Api<DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            &role.namespace,
            &ApiResource::erase::<AWSIAMRole>(&()),
        );
        let patch = json!({
            "status": {
                "observedGeneration": status.observed_generation,
                "roleARN": status.role_arn,
                "expiration": status.expiration,
                "conditions": status.conditions,
            }
        });
        api.patch_status(&role.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|_| ())
            .map_err(|e| {
                let message = format!(
                    "updating status of AWSIAMRole {}/{}: {}",
                    role.namespace,
                    role.name,
                    kube_message(&e)
                );
                tracing::warn!(namespace = %role.namespace, name = %role.name, error = %message, "status update failed");
                message
            })
    }

    async fn event(
        &self,
        role: &ObservedRole,
        type_: EventType,
        reason: &str,
        action: &str,
        note: &str,
    ) {
        let reference = ObjectReference {
            api_version: Some("zalando.org/v1".into()),
            kind: Some("AWSIAMRole".into()),
            name: Some(role.name.clone()),
            namespace: Some(role.namespace.clone()),
            uid: Some(role.uid.clone()).filter(|u| !u.is_empty()),
            ..ObjectReference::default()
        };
        self.publish(&reference, type_, reason, action, note).await;
    }

    /// Events are best effort: a failure is logged and never fails the action.
    async fn publish(
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
        if let Err(e) = self.recorder.publish(&event, reference).await {
            tracing::debug!(reason, error = %kube_message(&e), "could not publish event");
        }
    }
}

fn failed(stage: Stage, message: String, sts: Option<&'static str>, writes: usize) -> Done {
    Done {
        outcome: Outcome::Failed { stage, message },
        sts,
        writes,
        issued_expiry: None,
    }
}

/// Skips and blocked roles whose status already says why need no API call.
fn is_noop(a: &Action<'_>) -> bool {
    a.kind == ActionKind::Skip || (a.kind == ActionKind::Blocked && a.status.is_none())
}

/// A short, credential-free description of a kube error (API status message or transport).
pub fn kube_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} {} ({})", s.code, s.reason, s.message),
        other => other.to_string(),
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}
