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

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures::StreamExt as _;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::core::ApiResource;
use kube::core::DynamicObject;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource};
use serde_json::json;

use crate::crd::{AWSIAMRole, AWSIAMRoleStatus};
use crate::model::{ObservedRole, ObservedSecret};
use crate::plan::{self, Action, ActionKind, Issue, Op, Plan};
use crate::secret::{self, Credentials, format_time};
use crate::sts::{CredentialSource, StsError, StsErrorKind};
use crate::text::{kube_message, redact_echo, truncate};

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
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Outcome {
    /// Carried out (for `Skip` and unchanged `Blocked`: nothing needed).
    #[default]
    Done,
    Failed {
        stage: Stage,
        message: String,
    },
    /// Not started because the controller is shutting down.
    NotStarted,
    /// Not sent: the cluster changed since it was observed (an orphan's AWSIAMRole is back);
    /// the next pass plans it again.
    Superseded,
}

impl Outcome {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Outcome::Done => "ok",
            Outcome::Failed { .. } => "failed",
            Outcome::NotStarted => "not_started",
            Outcome::Superseded => "superseded",
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
    /// The writes that succeeded, for a watched state to wait for before it plans those
    /// objects again.
    pub written: Vec<Written>,
}

/// Which object a write changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WrittenKind {
    Secret,
    Role,
}

/// A write the executor made: until a watch shows the object past `replaced`, the watched
/// state still holds what the plan was made from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    pub kind: WrittenKind,
    pub namespace: String,
    pub name: String,
    /// The resourceVersion the write replaced or deleted; `None` when it created the object.
    pub replaced: Option<String>,
}

impl PassReport {
    pub fn failed(&self) -> usize {
        self.actions
            .iter()
            .filter(|a| matches!(a.outcome, Outcome::Failed { .. }))
            .count()
    }

    /// Whether the pass left work undone: an action failed or was not started (the controller
    /// stopped, or lost the leader Lease, mid-pass), or a role is still waiting out earlier
    /// failures (its status says why). `once` exits 1 then.
    pub fn unresolved(&self) -> bool {
        self.actions
            .iter()
            .any(|a| a.outcome != Outcome::Done || a.reason == plan::Reason::BackingOff)
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
            let superseded = counts.get(&(kind, "superseded")).copied().unwrap_or(0);
            if superseded > 0 {
                part.push_str(&format!(" ({superseded} superseded)"));
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
    /// GET an orphan's AWSIAMRole just before deleting its Secret (the plan came from a
    /// watched state, which may lag).
    confirm_orphans: bool,
    /// Writes of the pass under way.
    written: std::sync::Mutex<Vec<Written>>,
}

/// What one action did, before it is named in the report.
#[derive(Default)]
struct Done {
    outcome: Outcome,
    sts: Option<&'static str>,
    writes: usize,
    /// Expiry of credentials this action issued.
    issued_expiry: Option<Timestamp>,
}

impl Done {
    fn fail(self, stage: Stage, message: String) -> Done {
        Done {
            outcome: Outcome::Failed { stage, message },
            issued_expiry: None,
            ..self
        }
    }
}

/// The step of issuing credentials that failed; it decides the reason the role is told.
#[derive(Clone, Copy)]
enum Failed {
    /// AssumeRole failed, or gave credentials that cannot be used.
    Assume,
    /// STS answered but the Secret was not written.
    Write,
}

impl Executor {
    pub fn new(client: Client, source: Arc<dyn CredentialSource>, concurrency: usize) -> Self {
        let reporter = Reporter {
            controller: REPORTING_CONTROLLER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Executor {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            source,
            concurrency: concurrency.max(1),
            stopping: Arc::new(AtomicBool::new(false)),
            first: None,
            confirm_orphans: false,
            written: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Confirms every orphan delete with a GET of its AWSIAMRole just before it is sent.
    pub fn confirming_orphans(mut self, confirm: bool) -> Self {
        self.confirm_orphans = confirm;
        self
    }

    fn wrote(&self, kind: WrittenKind, namespace: &str, name: &str, replaced: Option<String>) {
        let written = Written {
            kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
            replaced,
        };
        self.written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(written);
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
            .filter(|a| !a.changes_nothing())
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
            let done = outcomes.remove(&(a.namespace, a.name)).unwrap_or_default();
            // What is served after the pass: fresh credentials, or the Secret that was fine.
            let served = match (&a.op, &done.outcome) {
                (Op::Create(_) | Op::Refresh { .. }, Outcome::Done) => done.issued_expiry,
                (Op::Skip { expire, .. } | Op::UpdateStatus { expire, .. }, _) => Some(*expire),
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
                kind: a.kind(),
                reason: a.reason(),
                outcome: done.outcome,
            });
        }
        report.written =
            std::mem::take(&mut *self.written.lock().unwrap_or_else(|e| e.into_inner()));
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
                        ..Done::default()
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
        match &action.op {
            Op::Create(issue) => self.issue(action, issue, None).await,
            Op::Refresh { issue, secret, .. } => self.issue(action, issue, Some(secret)).await,
            Op::Delete { secret, revoked } => self.delete(action, secret, revoked.as_ref()).await,
            Op::UpdateStatus { role, status, .. } => self.write_status(role, status).await,
            Op::Blocked {
                role,
                status: Some(status),
                ..
            } => {
                let done = self.write_status(role, status).await;
                if done.outcome == Outcome::Done {
                    let reason = action.reason().as_str();
                    self.event(
                        role,
                        EventType::Warning,
                        reason,
                        "Validate",
                        &action.message,
                    )
                    .await;
                }
                done
            }
            Op::Skip { .. } | Op::Blocked { status: None, .. } => Done::default(),
        }
    }

    /// Create or Refresh: assume the role, write the Secret, then an Event and the status.
    async fn issue(
        &self,
        action: &Action<'_>,
        issue: &Issue<'_>,
        existing: Option<&ObservedSecret>,
    ) -> Done {
        let role = issue.role;
        let credentials = match self.source.assume(&issue.request).await {
            Ok(credentials) => credentials,
            Err(e) => return self.assume_failed(issue, existing, e).await,
        };
        let done = Done {
            sts: Some("ok"),
            ..Done::default()
        };
        let issued_at = Timestamp::now();
        let credentials = &credentials;
        let arn = issue.request.role_arn.to_string();
        if let Err(message) = self
            .write_secret(role, existing, &arn, credentials, issued_at)
            .await
        {
            let message = format!("new credentials for {arn} were not stored: {message}");
            let (writes, message) = self
                .report_failure(role, existing, Failed::Write, message, true)
                .await;
            return Done { writes, ..done }.fail(Stage::Secret, message);
        }
        let (reason, verb) = match existing {
            None => (reasons::CREATE_CREDENTIALS, "created"),
            Some(_) => (reasons::UPDATE_CREDENTIALS, "refreshed"),
        };
        let note = format!(
            "credentials for {arn} {verb} ({}), valid until {}",
            action.reason(),
            format_time(credentials.expiration)
        );
        self.event(role, EventType::Normal, reason, "AssumeRole", &note)
            .await;
        tracing::info!(namespace = %role.namespace, name = %role.name, role_arn = %arn, reason = %action.reason(), "credentials {verb}");
        let lifetime = credentials.expiration.as_second() - issued_at.as_second();
        let granted = plan::shortened(Some(lifetime), issue.request.duration);
        let status = plan::ready_status(role, &arn, credentials.expiration, granted, issued_at);
        let done = Done { writes: 1, ..done };
        if let Err(message) = self.patch_status(role, &status).await {
            return done.fail(Stage::Status, message);
        }
        Done {
            writes: 2,
            issued_expiry: Some(credentials.expiration),
            ..done
        }
    }

    /// A failed AssumeRole: the role's status and a Warning Event say why; the Secret in place
    /// (if any) is left for the next pass.
    async fn assume_failed(
        &self,
        issue: &Issue<'_>,
        existing: Option<&ObservedSecret>,
        e: StsError,
    ) -> Done {
        let (role, arn) = (issue.role, &issue.request.role_arn);
        let message = match e.kind {
            StsErrorKind::Denied => format!("AssumeRole {arn} denied: {e}"),
            StsErrorKind::Throttled => format!("AssumeRole {arn} throttled: {e}"),
            StsErrorKind::AboveMaxSessionDuration => format!(
                "AssumeRole {arn} refused roleSessionDuration {}: it exceeds the IAM role's MaxSessionDuration (raise that or lower spec.roleSessionDuration): {e}",
                crate::plan::human(issue.request.duration)
            ),
            StsErrorKind::UnusableReply => {
                format!("AssumeRole {arn} gave unusable credentials, not written: {e}")
            }
            _ => format!("AssumeRole {arn} failed: {e}"),
        };
        // A request that never reached STS cost nothing there and is no fault of the role's:
        // it is tried again on the next pass.
        let back_off = e.kind != StsErrorKind::Unreachable;
        let (writes, message) = self
            .report_failure(role, existing, Failed::Assume, message, back_off)
            .await;
        let done = Done {
            sts: Some(e.kind.metric_label()),
            writes,
            ..Done::default()
        };
        done.fail(Stage::Sts, message)
    }

    /// Tells the AWSIAMRole why its credentials were not renewed: a Warning Event, the log, and
    /// a not-ready status naming the failure and the expiry of the Secret still in place; with
    /// `back_off`, the status also counts the failure and says when the next attempt may be
    /// made. Returns the writes made (0 or 1) and the message as told.
    async fn report_failure(
        &self,
        role: &ObservedRole,
        existing: Option<&ObservedSecret>,
        failed: Failed,
        message: String,
        back_off: bool,
    ) -> (usize, String) {
        let current = existing.and_then(|s| secret::decode(s).ok());
        let message = match &current {
            Some(c) => format!(
                "{message}; the Secret in place is kept (valid until {})",
                format_time(c.expire)
            ),
            None => message,
        };
        let (reason, action, what) = match failed {
            Failed::Assume => (
                reasons::GET_CREDENTIALS_FAILED,
                "AssumeRole",
                "could not get credentials",
            ),
            Failed::Write => (
                reasons::WRITE_SECRET_FAILED,
                "WriteSecret",
                "could not store credentials",
            ),
        };
        tracing::warn!(namespace = %role.namespace, name = %role.name, error = %message, "{what}");
        let now = Timestamp::now();
        let mut status = plan::not_ready_status(role, reason, &message, current.as_ref(), now);
        if back_off {
            status = plan::count_failure(role, status, now);
        }
        let written = !plan::status_matches(role.status.as_ref(), &status)
            && self.patch_status(role, &status).await.is_ok();
        self.event(role, EventType::Warning, reason, action, &message)
            .await;
        (usize::from(written), message)
    }

    /// Creates the Secret, or replaces the observed one (its resourceVersion guards the write).
    async fn write_secret(
        &self,
        role: &ObservedRole,
        existing: Option<&ObservedSecret>,
        arn: &str,
        credentials: &Credentials,
        issued_at: Timestamp,
    ) -> Result<(), String> {
        let mut desired = secret::build(role, arn, credentials, issued_at);
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &role.namespace);
        let replaced = existing.and_then(|e| e.resource_version.clone());
        let written = match existing {
            None => api.create(&PostParams::default(), &desired).await,
            Some(_) => {
                desired.metadata.resource_version = replaced.clone();
                api.replace(&role.name, &PostParams::default(), &desired)
                    .await
            }
        };
        if written.is_ok() {
            self.wrote(WrittenKind::Secret, &role.namespace, &role.name, replaced);
        }
        written.map(|_| ()).map_err(|e| {
            // The request carried the credentials; a server may quote it back.
            let mut known = vec![
                credentials.secret_access_key.clone(),
                credentials.session_token.clone(),
            ];
            for value in desired.data.iter().flat_map(|d| d.values()) {
                known.push(BASE64.encode(&value.0));
                known.push(String::from_utf8_lossy(&value.0).into_owned());
            }
            format!(
                "writing Secret {}/{}: {}",
                role.namespace,
                role.name,
                redact_echo(&kube_message(&e), &known)
            )
        })
    }

    /// Delete with preconditions, so a Secret changed since it was listed is never deleted;
    /// then tell the role (or, for an orphan, the Secret's Events) and write the role's status.
    async fn delete(
        &self,
        action: &Action<'_>,
        existing: &ObservedSecret,
        revoked: Option<&(&ObservedRole, AWSIAMRoleStatus)>,
    ) -> Done {
        let done = Done::default();
        if revoked.is_none() && self.confirm_orphans {
            match self.role_exists(&existing.namespace, &existing.name).await {
                Ok(false) => {}
                Ok(true) => {
                    tracing::info!(namespace = %existing.namespace, name = %existing.name, "not deleting the Secret: its AWSIAMRole exists again");
                    return Done {
                        outcome: Outcome::Superseded,
                        ..done
                    };
                }
                Err(message) => return done.fail(Stage::Secret, message),
            }
        }
        if let Err(message) = self.delete_secret(existing).await {
            return done.fail(Stage::Secret, message);
        }
        let reason = action.reason();
        tracing::info!(namespace = %existing.namespace, name = %existing.name, reason = %reason, "Secret deleted");
        let note = format!("Secret deleted ({reason}): {}", action.message);
        let done = Done { writes: 1, ..done };
        let (event, action) = (reasons::DELETE_CREDENTIALS, "DeleteSecret");
        let Some((role, status)) = revoked else {
            let reference = reference::<Secret>(&existing.namespace, &existing.name, &existing.uid);
            self.publish(&reference, EventType::Normal, event, action, &note)
                .await;
            return done;
        };
        self.event(role, EventType::Normal, event, action, &note)
            .await;
        if let Err(message) = self.patch_status(role, status).await {
            return done.fail(Stage::Status, message);
        }
        Done { writes: 2, ..done }
    }

    /// Whether an AWSIAMRole of that name exists now (any uid: a new one re-owns the Secret).
    async fn role_exists(&self, namespace: &str, name: &str) -> Result<bool, String> {
        let api: Api<DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            namespace,
            &ApiResource::erase::<AWSIAMRole>(&()),
        );
        match api.get_metadata_opt(name).await {
            Ok(found) => Ok(found.is_some()),
            Err(e) => Err(format!(
                "confirming that AWSIAMRole {namespace}/{name} is gone before deleting its Secret: {}",
                kube_message(&e)
            )),
        }
    }

    async fn delete_secret(&self, existing: &ObservedSecret) -> Result<(), String> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &existing.namespace);
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(existing.uid.clone()).filter(|u| !u.is_empty()),
                resource_version: existing.resource_version.clone(),
            }),
            ..DeleteParams::default()
        };
        match api.delete(&existing.name, &params).await {
            Ok(_) => {
                self.wrote(
                    WrittenKind::Secret,
                    &existing.namespace,
                    &existing.name,
                    existing.resource_version.clone(),
                );
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
            Err(e) => {
                let message = format!(
                    "deleting Secret {}/{}: {}",
                    existing.namespace,
                    existing.name,
                    kube_message(&e)
                );
                tracing::warn!(namespace = %existing.namespace, name = %existing.name, error = %message, "delete failed");
                Err(message)
            }
        }
    }

    /// UpdateStatus and newly Blocked: write the status the plan computed.
    async fn write_status(&self, role: &ObservedRole, status: &AWSIAMRoleStatus) -> Done {
        match self.patch_status(role, status).await {
            Ok(()) => Done {
                writes: 1,
                ..Done::default()
            },
            Err(message) => Done::default().fail(Stage::Status, message),
        }
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
                "failedAttempts": status.failed_attempts,
                "retryAfter": status.retry_after,
            }
        });
        api.patch_status(&role.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|_| {
                let replaced = role.resource_version.clone();
                self.wrote(WrittenKind::Role, &role.namespace, &role.name, replaced);
            })
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
        let reference = reference::<AWSIAMRole>(&role.namespace, &role.name, &role.uid);
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

const REPORTING_CONTROLLER: &str = "kube-aws-iam-controller";

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
fn reference<K: Resource<DynamicType = ()>>(
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
