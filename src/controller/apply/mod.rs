//! The executor: carries out a [`Plan`] against the Kubernetes API and STS.
//!
//! Each action runs as its own pipeline (STS call, Secret write, status, Event) with at most
//! `concurrency` in flight; STS calls additionally pass the source's rate limiter. A request
//! the API server refuses for a transient reason is tried again within the action ([`retry`]);
//! a failed action is recorded and retried by the next pass; it never stops the others. Every
//! status write is bound to the uid the plan observed: an action whose AWSIAMRole was deleted
//! or re-created meanwhile is superseded, never reported on the new object.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures::StreamExt as _;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::core::ApiResource;
use kube::core::DynamicObject;
use kube::runtime::events::{EventType, Recorder, Reporter};
use kube::{Api, Client, Resource};
use serde_json::json;

use crate::controller::plan::{self, Action, Issue, Op, Plan};
use crate::controller::sts::{CredentialSource, StsError, StsErrorKind};
use crate::domain::crd::{AWSIAMRole, AWSIAMRoleStatus};
use crate::domain::model::{
    HERITAGE_LABEL, HERITAGE_VALUE, ObservedRole, ObservedSecret, TYPE_LABEL, TYPE_VALUE,
    is_managed,
};
use crate::domain::secret::{self, Credentials, format_time};
use crate::domain::text::{excerpt, kube_message, redact_echo};
use retry::Refusal;

mod events;
mod report;
pub mod retry;

use events::{REPORTING_CONTROLLER, reference};
pub use events::{event_name, reasons};
pub use report::{ActionReport, Outcome, PassReport, Stage, Written, WrittenKind};

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

/// Why a request of an action did not take effect.
enum Refused {
    /// The AWSIAMRole the action is for is gone or was re-created under its name since the
    /// plan observed it (what was refused, for the log): nobody's failure, nothing is told to
    /// the new object, the next pass plans it.
    Superseded(String),
    /// A failure to report; the message is safe to show.
    Failed(String),
}

/// What a Secret write does.
enum Target {
    Create,
    /// Replace the Secret, guarded by this resourceVersion (when known).
    Replace(Option<String>),
}

/// Whether a Secret read again after a write conflicted may be replaced for an AWSIAMRole.
#[derive(Debug, PartialEq, Eq)]
enum Takeover {
    /// The controller's and this very AWSIAMRole's (by name alone when its uid is unknown).
    Own,
    /// The controller's, owned by another uid of this name or by no AWSIAMRole: an earlier
    /// AWSIAMRole's if this one still exists (the planner re-owns such a Secret in place).
    Earlier,
    /// Not to be touched, and why.
    Refuse(String),
}

/// Judges a Secret read again (its metadata) for `role`: only a Secret with both controller
/// labels, owned by no AWSIAMRole of another name, may be overwritten.
fn takeover(meta: &ObjectMeta, role: &ObservedRole) -> Takeover {
    if !meta.labels.as_ref().is_some_and(is_managed) {
        return Takeover::Refuse(format!(
            "it no longer carries both labels {HERITAGE_LABEL}={HERITAGE_VALUE} and {TYPE_LABEL}={TYPE_VALUE}, so it is not the controller's"
        ));
    }
    let group = AWSIAMRole::group(&());
    let owners: Vec<&OwnerReference> = meta
        .owner_references
        .iter()
        .flatten()
        .filter(|o| {
            o.kind == AWSIAMRole::kind(&()) && o.api_version.split('/').next() == Some(&group)
        })
        .collect();
    if let Some(other) = owners.iter().find(|o| o.name != role.name) {
        return Takeover::Refuse(format!(
            "it is owned by AWSIAMRole {}",
            excerpt(&other.name)
        ));
    }
    if owners
        .iter()
        .any(|o| role.uid.is_empty() || o.uid == role.uid)
    {
        Takeover::Own
    } else {
        Takeover::Earlier
    }
}

/// The action's AWSIAMRole is gone or was re-created since the plan observed it: what the
/// action did stays counted in `done`, nothing more is written or told, and the next pass
/// plans the object that holds the name now.
fn superseded(role: &ObservedRole, done: Done, why: &str) -> Done {
    tracing::info!(namespace = %role.namespace, name = %role.name, uid = %role.uid, refused = %why, "the AWSIAMRole was deleted or re-created while its action ran; superseded");
    Done {
        outcome: Outcome::Superseded,
        issued_expiry: None,
        ..done
    }
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

    /// Create or Refresh: assume the role, write the Secret, then the status and an Event.
    /// The credentials are obtained once: a write the API server refuses for a transient
    /// reason is tried again with them ([`retry`]), never with another AssumeRole.
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
        match self
            .write_secret(role, existing, &arn, credentials, issued_at)
            .await
        {
            Ok(()) => {}
            Err(Refused::Superseded(why)) => return superseded(role, done, &why),
            Err(Refused::Failed(message)) => {
                let message = format!("new credentials for {arn} were not stored: {message}");
                return self
                    .report_failure(role, existing, Failed::Write, message, true, done)
                    .await;
            }
        }
        let done = Done { writes: 1, ..done };
        let lifetime = credentials.expiration.as_second() - issued_at.as_second();
        let granted = plan::shortened(Some(lifetime), issue.request.duration);
        let status = plan::ready_status(role, &arn, credentials.expiration, granted, issued_at);
        // The status first: bound to the observed uid, it also tells whether the AWSIAMRole
        // is still the one the credentials were issued for.
        let status_failed = match self.patch_status(role, &status).await {
            Ok(()) => None,
            Err(Refused::Superseded(why)) => return superseded(role, done, &why),
            Err(Refused::Failed(message)) => Some(message),
        };
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
        match status_failed {
            None => Done {
                writes: 2,
                issued_expiry: Some(credentials.expiration),
                ..done
            },
            Some(message) => done.fail(Stage::Status, message),
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
                crate::controller::plan::human(issue.request.duration)
            ),
            StsErrorKind::UnusableReply => {
                format!("AssumeRole {arn} gave unusable credentials, not written: {e}")
            }
            _ => format!("AssumeRole {arn} failed: {e}"),
        };
        // A request that never reached STS cost nothing there and is no fault of the role's:
        // it is tried again on the next pass.
        let back_off = e.kind != StsErrorKind::Unreachable;
        let done = Done {
            sts: Some(e.kind.metric_label()),
            ..Done::default()
        };
        self.report_failure(role, existing, Failed::Assume, message, back_off, done)
            .await
    }

    /// Tells the AWSIAMRole why its credentials were not renewed: a not-ready status naming the
    /// failure and the expiry of the Secret still in place, a Warning Event and the log; with
    /// `back_off`, the status also counts the failure and says when the next attempt may be
    /// made. The status is bound to the observed uid: when the AWSIAMRole turns out to be gone
    /// or re-created, nothing is told (the failure is nobody's) and the action is superseded.
    /// Returns `done` with the status write counted and the outcome.
    async fn report_failure(
        &self,
        role: &ObservedRole,
        existing: Option<&ObservedSecret>,
        failed: Failed,
        message: String,
        back_off: bool,
        mut done: Done,
    ) -> Done {
        let current = existing.and_then(|s| secret::decode(s).ok());
        let message = match &current {
            Some(c) => format!(
                "{message}; the Secret in place is kept (valid until {})",
                format_time(c.expire)
            ),
            None => message,
        };
        let (reason, action, what, stage) = match failed {
            Failed::Assume => (
                reasons::GET_CREDENTIALS_FAILED,
                "AssumeRole",
                "could not get credentials",
                Stage::Sts,
            ),
            Failed::Write => (
                reasons::WRITE_SECRET_FAILED,
                "WriteSecret",
                "could not store credentials",
                Stage::Secret,
            ),
        };
        let now = Timestamp::now();
        let mut status = plan::not_ready_status(role, reason, &message, current.as_ref(), now);
        if back_off {
            status = plan::count_failure(role, status, now);
        }
        if !plan::status_matches(role.status.as_ref(), &status) {
            match self.patch_status(role, &status).await {
                Ok(()) => done.writes += 1,
                Err(Refused::Superseded(why)) => {
                    tracing::info!(namespace = %role.namespace, name = %role.name, error = %message, "{what}; not reported");
                    return superseded(role, done, &why);
                }
                // Logged there; the Event and the outcome still say why.
                Err(Refused::Failed(_)) => {}
            }
        }
        tracing::warn!(namespace = %role.namespace, name = %role.name, error = %message, "{what}");
        self.event(role, EventType::Warning, reason, action, &message)
            .await;
        done.fail(stage, message)
    }

    /// Creates the Secret, or replaces the observed one (its resourceVersion guards the
    /// write), with transient failures tried again ([`retry`]). A create that finds the name
    /// taken, or a replace that finds the Secret changed, reads it again and replaces that
    /// once, and only if it is still the controller's and this AWSIAMRole's (or an earlier one's
    /// of the same name, [`takeover`]). A replace that finds the Secret gone creates it once.
    /// Superseded when the AWSIAMRole turns out to be gone or re-created (a write refused with
    /// 404, or a Secret owned by another uid, is checked against it).
    async fn write_secret(
        &self,
        role: &ObservedRole,
        existing: Option<&ObservedSecret>,
        arn: &str,
        credentials: &Credentials,
        issued_at: Timestamp,
    ) -> Result<(), Refused> {
        let mut desired = secret::build(role, arn, credentials, issued_at);
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &role.namespace);
        // The request carries the credentials; a server may quote it back.
        let mut known = vec![
            credentials.secret_access_key.clone(),
            credentials.session_token.clone(),
        ];
        for value in desired.data.iter().flat_map(|d| d.values()) {
            known.push(BASE64.encode(&value.0));
            known.push(String::from_utf8_lossy(&value.0).into_owned());
        }
        let describe = |e: &kube::Error| {
            format!(
                "writing Secret {}/{}: {}",
                role.namespace,
                role.name,
                redact_echo(&kube_message(e), &known)
            )
        };
        let params = PostParams::default();
        let mut target = match existing {
            None => Target::Create,
            Some(e) => Target::Replace(e.resource_version.clone()),
        };
        let (mut reread, mut recreated) = (false, false);
        loop {
            let written = match &target {
                Target::Create => {
                    self.retrying(|| api.create(&params, &desired), &describe)
                        .await
                }
                Target::Replace(version) => {
                    desired.metadata.resource_version = version.clone();
                    let desired = &desired;
                    self.retrying(|| api.replace(&role.name, &params, desired), &describe)
                        .await
                }
            };
            let e = match written {
                Ok(_) => {
                    let replaced = match target {
                        Target::Create => None,
                        Target::Replace(version) => version,
                    };
                    self.wrote(WrittenKind::Secret, &role.namespace, &role.name, replaced);
                    return Ok(());
                }
                Err(e) => e,
            };
            let message = describe(&e);
            match (retry::classify(&e), &target) {
                (Refusal::AlreadyExists | Refusal::Conflict, _) if !reread => {
                    reread = true;
                    tracing::info!(namespace = %role.namespace, name = %role.name, error = %message, "Secret created or changed meanwhile; reading it again");
                    target = self.reread(role, &message).await?;
                }
                (Refusal::NotFound, Target::Replace(_)) if !recreated => {
                    recreated = true;
                    self.confirm_role(role, &message).await?;
                    tracing::info!(namespace = %role.namespace, name = %role.name, "Secret deleted meanwhile; creating it");
                    target = Target::Create;
                }
                (Refusal::NotFound, _) => {
                    // Its namespace is gone (and with it the AWSIAMRole), or it was deleted.
                    self.confirm_role(role, &message).await?;
                    return Err(Refused::Failed(message));
                }
                _ => return Err(Refused::Failed(message)),
            }
        }
    }

    /// The Secret read again after a write found the name taken or the Secret changed (the
    /// refusal `refused`): replace it at its new resourceVersion if it may be taken over, create
    /// it if it is gone now (the AWSIAMRole confirmed), else refuse.
    async fn reread(&self, role: &ObservedRole, refused: &str) -> Result<Target, Refused> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &role.namespace);
        let describe = |e: &kube::Error| {
            format!(
                "{refused}; reading Secret {}/{} again: {}",
                role.namespace,
                role.name,
                kube_message(e)
            )
        };
        // Metadata only: the credentials in place are not needed to judge it.
        let found = match self
            .retrying(|| api.get_metadata_opt(&role.name), &describe)
            .await
        {
            Ok(found) => found,
            Err(e) => return Err(Refused::Failed(describe(&e))),
        };
        let Some(found) = found else {
            self.confirm_role(role, refused).await?;
            return Ok(Target::Create);
        };
        let version = found.metadata.resource_version.clone();
        match takeover(&found.metadata, role) {
            Takeover::Own => Ok(Target::Replace(version)),
            // Only while this AWSIAMRole exists is the other owner an earlier one.
            Takeover::Earlier => {
                self.confirm_role(role, refused).await?;
                Ok(Target::Replace(version))
            }
            Takeover::Refuse(why) => Err(Refused::Failed(format!(
                "{refused}; read again, Secret {}/{} is not overwritten: {why}",
                role.namespace, role.name
            ))),
        }
    }

    /// `Ok` when the AWSIAMRole the plan observed still exists (same uid, when it is known).
    /// Superseded when it is gone or another object of its name replaced it: `refused`, what
    /// did not happen, is then nobody's failure. Failed (with `refused`) when it cannot be read.
    async fn confirm_role(&self, role: &ObservedRole, refused: &str) -> Result<(), Refused> {
        let api: Api<DynamicObject> = self.roles(&role.namespace);
        let describe = |e: &kube::Error| {
            format!(
                "reading AWSIAMRole {}/{}: {}",
                role.namespace,
                role.name,
                kube_message(e)
            )
        };
        match self
            .retrying(|| api.get_metadata_opt(&role.name), &describe)
            .await
        {
            Ok(Some(found))
                if role.uid.is_empty() || found.metadata.uid.as_deref() == Some(&role.uid) =>
            {
                Ok(())
            }
            Ok(_) => Err(Refused::Superseded(refused.to_string())),
            Err(e) => Err(Refused::Failed(format!("{refused}; {}", describe(&e)))),
        }
    }

    /// Runs `request` until it succeeds or fails for good: a transient failure is tried again
    /// after a jittered pause ([`retry::next_delay`]), unless the executor is stopping. Each
    /// failure tried again is logged through `describe`, which must make it safe to show.
    async fn retrying<T, Fut>(
        &self,
        mut request: impl FnMut() -> Fut,
        describe: &dyn Fn(&kube::Error) -> String,
    ) -> Result<T, kube::Error>
    where
        Fut: Future<Output = Result<T, kube::Error>>,
    {
        let start = Instant::now();
        let mut tries = 0;
        loop {
            tries += 1;
            let e = match request().await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let refusal = retry::classify(&e);
            if !matches!(refusal, Refusal::Transient { .. }) || self.stopping.load(Ordering::SeqCst)
            {
                return Err(e);
            }
            let message = describe(&e);
            let seed = retry::seed(&message, tries);
            let Some(delay) = retry::next_delay(refusal, tries, start.elapsed(), seed) else {
                return Err(e);
            };
            tracing::info!(tries, delay_ms = delay.as_millis() as u64, error = %message, "transient API failure; trying again");
            tokio::time::sleep(delay).await;
        }
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
        let patched = self.patch_status(role, status).await;
        if let Err(Refused::Superseded(why)) = &patched {
            return superseded(role, done, why);
        }
        self.event(role, EventType::Normal, event, action, &note)
            .await;
        match patched {
            Err(Refused::Failed(message)) => done.fail(Stage::Status, message),
            _ => Done { writes: 2, ..done },
        }
    }

    /// AWSIAMRoles of `namespace`, untyped, so a read or a status patch decodes even when the
    /// stored spec does not.
    fn roles(&self, namespace: &str) -> Api<DynamicObject> {
        Api::namespaced_with(
            self.client.clone(),
            namespace,
            &ApiResource::erase::<AWSIAMRole>(&()),
        )
    }

    /// Whether an AWSIAMRole of that name exists now (any uid: a new one re-owns the Secret).
    async fn role_exists(&self, namespace: &str, name: &str) -> Result<bool, String> {
        let api: Api<DynamicObject> = self.roles(namespace);
        let describe = |e: &kube::Error| {
            format!(
                "confirming that AWSIAMRole {namespace}/{name} is gone before deleting its Secret: {}",
                kube_message(e)
            )
        };
        match self
            .retrying(|| api.get_metadata_opt(name), &describe)
            .await
        {
            Ok(found) => Ok(found.is_some()),
            Err(e) => Err(describe(&e)),
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
        let describe = |e: &kube::Error| {
            format!(
                "deleting Secret {}/{}: {}",
                existing.namespace,
                existing.name,
                kube_message(e)
            )
        };
        match self
            .retrying(|| api.delete(&existing.name, &params), &describe)
            .await
        {
            Ok(_) => {
                self.wrote(
                    WrittenKind::Secret,
                    &existing.namespace,
                    &existing.name,
                    existing.resource_version.clone(),
                );
                Ok(())
            }
            // Gone already (or deleted by a try whose answer was lost).
            Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
            Err(e) => {
                let message = describe(&e);
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
            Err(Refused::Superseded(why)) => superseded(role, Done::default(), &why),
            Err(Refused::Failed(message)) => Done::default().fail(Stage::Status, message),
        }
    }

    /// Merge-patches the status subresource. Absent fields are sent as `null` so stale values
    /// (a deleted Secret's role and expiry) are removed. The patch carries the uid the plan
    /// observed (when known) as a precondition, so it never lands on another AWSIAMRole of the
    /// same name: refused because the object is gone (404) or replaced (409), it is
    /// superseded.
    async fn patch_status(
        &self,
        role: &ObservedRole,
        status: &AWSIAMRoleStatus,
    ) -> Result<(), Refused> {
        // Untyped, so the response decodes even when the stored spec does not (the reason the
        // role is blocked may be exactly that).
        let api: Api<DynamicObject> = self.roles(&role.namespace);
        let mut patch = json!({
            "status": {
                "observedGeneration": status.observed_generation,
                "roleARN": status.role_arn,
                "expiration": status.expiration,
                "conditions": status.conditions,
                "failedAttempts": status.failed_attempts,
                "retryAfter": status.retry_after,
            }
        });
        if !role.uid.is_empty() {
            patch["metadata"] = json!({ "uid": role.uid });
        }
        let (params, merge) = (PatchParams::default(), Patch::Merge(&patch));
        let describe = |e: &kube::Error| {
            format!(
                "updating status of AWSIAMRole {}/{}: {}",
                role.namespace,
                role.name,
                kube_message(e)
            )
        };
        let e = match self
            .retrying(|| api.patch_status(&role.name, &params, &merge), &describe)
            .await
        {
            Ok(_) => {
                let replaced = role.resource_version.clone();
                self.wrote(WrittenKind::Role, &role.namespace, &role.name, replaced);
                return Ok(());
            }
            Err(e) => e,
        };
        let message = describe(&e);
        let refused = match retry::classify(&e) {
            Refusal::UidMismatch => Refused::Superseded(message),
            // Gone, or a server without the status subresource: the AWSIAMRole tells which.
            Refusal::NotFound => match self.confirm_role(role, &message).await {
                Ok(()) => Refused::Failed(message),
                Err(refused) => refused,
            },
            _ => Refused::Failed(message),
        };
        if let Refused::Failed(message) = &refused {
            tracing::warn!(namespace = %role.namespace, name = %role.name, error = %message, "status update failed");
        }
        Err(refused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(labels: &[(&str, &str)], owners: &[(&str, &str, &str)]) -> ObjectMeta {
        ObjectMeta {
            name: Some("app".into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            owner_references: Some(
                owners
                    .iter()
                    .map(|(api_version, kind, name_uid)| {
                        let (name, uid) = name_uid.split_once('/').unwrap();
                        OwnerReference {
                            api_version: api_version.to_string(),
                            kind: kind.to_string(),
                            name: name.into(),
                            uid: uid.into(),
                            ..OwnerReference::default()
                        }
                    })
                    .collect(),
            ),
            resource_version: Some("7".into()),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn only_the_controllers_secret_of_this_name_is_taken_over() {
        let managed = [(HERITAGE_LABEL, HERITAGE_VALUE), (TYPE_LABEL, TYPE_VALUE)];
        let role = ObservedRole {
            namespace: "team-a".into(),
            name: "app".into(),
            uid: "uid-new".into(),
            ..ObservedRole::default()
        };
        let ours = ("zalando.org/v1", "AWSIAMRole", "app/uid-new");
        let earlier = ("zalando.org/v1", "AWSIAMRole", "app/uid-old");
        assert_eq!(takeover(&meta(&managed, &[ours]), &role), Takeover::Own);
        assert_eq!(
            takeover(&meta(&managed, &[earlier]), &role),
            Takeover::Earlier
        );
        assert_eq!(takeover(&meta(&managed, &[]), &role), Takeover::Earlier);
        // Another kind's or group's reference is not an AWSIAMRole's.
        let deployment = ("apps/v1", "Deployment", "app/uid-new");
        let other_group = ("example.com/v1", "AWSIAMRole", "app/uid-new");
        assert_eq!(
            takeover(&meta(&managed, &[deployment, other_group]), &role),
            Takeover::Earlier
        );
        // Without a known uid the name decides.
        let anonymous = ObservedRole {
            uid: String::new(),
            ..role.clone()
        };
        assert_eq!(
            takeover(&meta(&managed, &[earlier]), &anonymous),
            Takeover::Own
        );
        // Lost a label, or owned by another AWSIAMRole: refused.
        for labels in [
            &[(HERITAGE_LABEL, HERITAGE_VALUE)][..],
            &[(TYPE_LABEL, TYPE_VALUE)][..],
            &[(HERITAGE_LABEL, "someone-else"), (TYPE_LABEL, TYPE_VALUE)][..],
            &[][..],
        ] {
            let judged = takeover(&meta(labels, &[ours]), &role);
            assert!(
                matches!(&judged, Takeover::Refuse(why) if why.contains("heritage=kube-aws-iam-controller")),
                "{labels:?}: {judged:?}"
            );
        }
        let mut unlabelled = meta(&managed, &[ours]);
        unlabelled.labels = None;
        assert!(matches!(takeover(&unlabelled, &role), Takeover::Refuse(_)));
        let foreign = ("zalando.org/v1", "AWSIAMRole", "other/uid-x");
        assert!(matches!(
            takeover(&meta(&managed, &[ours, foreign]), &role),
            Takeover::Refuse(why) if why.contains("\"other\"")
        ));
    }
}
