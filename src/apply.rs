//! The executor: carries out a [`Plan`] against the Kubernetes API and STS.
//!
//! Each action runs as its own pipeline (STS call, Secret write, status, Event) with at most
//! `concurrency` in flight; STS calls additionally pass the source's rate limiter. A request
//! the API server refuses for a transient reason is tried again within the action ([`retry`]);
//! a failed action is recorded and retried by the next pass; it never stops the others. Every
//! status write is bound to the uid the plan observed: an action whose AWSIAMRole was deleted
//! or re-created meanwhile is superseded, never reported on the new object.

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
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::core::ApiResource;
use kube::core::DynamicObject;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource};
use serde_json::json;

use crate::crd::{AWSIAMRole, AWSIAMRoleStatus};
use crate::model::{
    HERITAGE_LABEL, HERITAGE_VALUE, ObservedRole, ObservedSecret, TYPE_LABEL, TYPE_VALUE,
    is_managed,
};
use crate::plan::{self, Action, ActionKind, Issue, Op, Plan};
use crate::secret::{self, Credentials, format_time};
use crate::sts::{CredentialSource, StsError, StsErrorKind};
use crate::text::{excerpt, kube_message, redact_echo, truncate};
use retry::Refusal;

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

/// How a request of an action that the API server did not carry out is answered: tried
/// again within the action when the cause is transient (a flaky API server must not cost a
/// new STS call nor a backoff period), otherwise handed to the action. Pure, so the policy
/// is unit-tested apart from any server.
///
/// kube's client already repeats 429, 503 and 504 answers in its transport (honouring a
/// `Retry-After` header); what reaches this policy has been through that.
pub mod retry {
    use std::time::Duration;

    /// Tries of one request, the first included.
    pub const MAX_TRIES: u32 = 4;
    /// The nominal pause after the first failed try; it doubles after each further one, and
    /// each pause is drawn from [2/3, 4/3) of its nominal value (so 100–200 ms, 200–400 ms,
    /// 400–800 ms: at most 1.4 s in all).
    pub const FIRST_DELAY: Duration = Duration::from_millis(150);
    /// No try starts later than this after the first one: it bounds slow answers and a
    /// server's `retryAfterSeconds` too, so an action never holds its slot for long.
    pub const BUDGET: Duration = Duration::from_secs(3);

    /// What a failed request says about the object and about trying again.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Refusal {
        /// Worth trying again as it was: 5xx, 429, 408 or a server timeout, a dropped or
        /// refused connection, a transport timeout. `retry_after` is the server's
        /// `details.retryAfterSeconds`, when it gave one.
        Transient { retry_after: Option<Duration> },
        /// 404: the object (or its namespace) does not exist.
        NotFound,
        /// 409 `AlreadyExists`: a create found the name taken.
        AlreadyExists,
        /// 409 because the object is no longer the one the request was bound to by uid (a
        /// `metadata.uid` or delete precondition): it was deleted and re-created.
        UidMismatch,
        /// Any other 409: the object changed since it was read (its resourceVersion).
        Conflict,
        /// A refusal trying again would not change (400, 403, 422, an admission denial) or an
        /// error of the client itself.
        Final,
    }

    /// Classifies a kube error.
    pub fn classify(e: &kube::Error) -> Refusal {
        match e {
            kube::Error::Api(status) => classify_status(status),
            // Connection refused, reset or dropped, a transport timeout, a broken body.
            kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => {
                Refusal::Transient { retry_after: None }
            }
            _ => Refusal::Final,
        }
    }

    /// Classifies an API server's `Status` answer (by code, or by reason when it has none).
    pub fn classify_status(s: &kube::core::Status) -> Refusal {
        let retry_after = s
            .details
            .as_ref()
            .map(|d| d.retry_after_seconds)
            .filter(|&secs| secs > 0)
            .map(|secs| Duration::from_secs(u64::from(secs)));
        let code = match (s.code, s.reason.as_str()) {
            (0, "NotFound") => 404,
            (0, "AlreadyExists" | "Conflict") => 409,
            (0, "TooManyRequests") => 429,
            (0, "Timeout" | "ServerTimeout" | "InternalError" | "ServiceUnavailable") => 500,
            (code, _) => code,
        };
        match code {
            404 => Refusal::NotFound,
            409 if s.reason == "AlreadyExists" => Refusal::AlreadyExists,
            409 if s
                .message
                .contains("Precondition failed: UID in precondition") =>
            {
                Refusal::UidMismatch
            }
            409 => Refusal::Conflict,
            408 | 429 | 500..=599 => Refusal::Transient { retry_after },
            _ => Refusal::Final,
        }
    }

    /// The pause before trying again after `tries` tries failed, the last with `refusal`,
    /// `elapsed` after the first began; `None` when not to try again: the refusal is not
    /// transient, the tries are used up, or the pause (at least the server's `retry_after`)
    /// would end beyond [`BUDGET`]. `seed` is any random number; it only draws the jitter.
    pub fn next_delay(
        refusal: Refusal,
        tries: u32,
        elapsed: Duration,
        seed: u64,
    ) -> Option<Duration> {
        let Refusal::Transient { retry_after } = refusal else {
            return None;
        };
        if tries >= MAX_TRIES {
            return None;
        }
        let delay = backoff(tries, seed).max(retry_after.unwrap_or_default());
        (elapsed + delay <= BUDGET).then_some(delay)
    }

    /// The jittered pause after the `tries`-th failed try (from 1): `FIRST_DELAY · 2^(tries−1)`
    /// times a factor in [2/3, 4/3) drawn from `seed`.
    pub fn backoff(tries: u32, seed: u64) -> Duration {
        let doublings = tries.clamp(1, 8) - 1;
        let nominal = FIRST_DELAY.as_millis() as u64 * (1 << doublings);
        let low = nominal * 2 / 3;
        let span = (nominal * 4 / 3 - low).max(1);
        Duration::from_millis(low + seed % span)
    }

    /// A random seed for [`backoff`] without a random-number dependency: std's hasher keys
    /// are random per process and change with each `RandomState`; `key` and the clock spread
    /// actions that fail together.
    pub fn seed(key: &str, tries: u32) -> u64 {
        use std::hash::BuildHasher as _;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        std::collections::hash_map::RandomState::new().hash_one((key, tries, nanos))
    }
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use kube::core::Status;
    use kube::core::response::StatusDetails;

    use super::retry::{self, BUDGET, FIRST_DELAY, MAX_TRIES, Refusal};
    use super::*;

    fn status(code: u16, reason: &str, message: &str) -> Status {
        Status::failure(message, reason).with_code(code)
    }

    fn api(code: u16, reason: &str, message: &str) -> kube::Error {
        kube::Error::Api(status(code, reason, message).boxed())
    }

    fn with_retry_after(s: Status, secs: u32) -> Status {
        s.with_details(StatusDetails {
            name: "app".into(),
            group: String::new(),
            kind: "secrets".into(),
            uid: String::new(),
            causes: Vec::new(),
            retry_after_seconds: secs,
        })
    }

    const TRANSIENT: Refusal = Refusal::Transient { retry_after: None };

    #[test]
    fn server_errors_throttling_and_timeouts_are_transient() {
        for code in [500, 502, 503, 504, 599, 429, 408] {
            assert_eq!(retry::classify(&api(code, "", "")), TRANSIENT, "{code}");
        }
        let hinted = with_retry_after(status(429, "TooManyRequests", "slow down"), 2);
        assert_eq!(
            retry::classify_status(&hinted),
            Refusal::Transient {
                retry_after: Some(Duration::from_secs(2))
            }
        );
        // A zero hint is no hint.
        let zero = with_retry_after(status(500, "InternalError", ""), 0);
        assert_eq!(retry::classify_status(&zero), TRANSIENT);
        // Without a code, the reason decides.
        for reason in [
            "Timeout",
            "ServerTimeout",
            "InternalError",
            "ServiceUnavailable",
            "TooManyRequests",
        ] {
            assert_eq!(retry::classify(&api(0, reason, "")), TRANSIENT, "{reason}");
        }
    }

    #[test]
    fn connection_and_transport_errors_are_transient() {
        let reset = || std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert_eq!(
            retry::classify(&kube::Error::Service(Box::new(reset()))),
            TRANSIENT
        );
        assert_eq!(
            retry::classify(&kube::Error::ReadEvents(reset())),
            TRANSIENT
        );
    }

    #[test]
    fn refusals_that_another_try_would_not_change_are_final() {
        for code in [400, 401, 403, 405, 410, 413, 415, 422, 499, 600] {
            assert_eq!(
                retry::classify(&api(code, "", "")),
                Refusal::Final,
                "{code}"
            );
        }
        assert_eq!(
            retry::classify(&api(0, "Forbidden", "")),
            Refusal::Final,
            "an unknown code with a non-transient reason"
        );
        let undecodable = serde_json::from_str::<u8>("x").unwrap_err();
        assert_eq!(
            retry::classify(&kube::Error::SerdeError(undecodable)),
            Refusal::Final
        );
        assert_eq!(
            retry::classify(&kube::Error::LinesCodecMaxLineLengthExceeded),
            Refusal::Final
        );
    }

    #[test]
    fn not_found_and_the_three_conflicts_are_told_apart() {
        assert_eq!(
            retry::classify(&api(404, "NotFound", "")),
            Refusal::NotFound
        );
        assert_eq!(retry::classify(&api(0, "NotFound", "")), Refusal::NotFound);
        let exists = "secrets \"app\" already exists";
        assert_eq!(
            retry::classify(&api(409, "AlreadyExists", exists)),
            Refusal::AlreadyExists
        );
        assert_eq!(
            retry::classify(&api(0, "AlreadyExists", exists)),
            Refusal::AlreadyExists
        );
        let replaced = "Precondition failed: UID in precondition: 1111, UID in object meta: 2222";
        assert_eq!(
            retry::classify(&api(409, "Conflict", replaced)),
            Refusal::UidMismatch
        );
        let modified = "Operation cannot be fulfilled on secrets \"app\": the object has been modified; please apply your changes to the latest version and try again";
        assert_eq!(
            retry::classify(&api(409, "Conflict", modified)),
            Refusal::Conflict
        );
        assert_eq!(retry::classify(&api(0, "Conflict", "")), Refusal::Conflict);
    }

    #[test]
    fn pauses_double_within_their_jitter_band() {
        let first = FIRST_DELAY.as_millis() as u64;
        for (tries, nominal) in [(1, first), (2, 2 * first), (3, 4 * first), (4, 8 * first)] {
            let (low, high) = (nominal * 2 / 3, nominal * 4 / 3);
            let pauses: Vec<u64> = (0..2000u64)
                .map(|seed| retry::backoff(tries, seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
                .map(|d| d.as_millis() as u64)
                .collect();
            assert!(pauses.iter().all(|&p| (low..high).contains(&p)), "{tries}");
            // The band is used, not one point of it.
            assert_eq!(pauses.iter().min(), Some(&low), "{tries}");
            assert_eq!(pauses.iter().max(), Some(&(high - 1)), "{tries}");
        }
        assert_eq!(retry::backoff(1, 0), Duration::from_millis(100));
        assert_eq!(retry::backoff(1, 99), Duration::from_millis(199));
        assert_eq!(retry::backoff(1, 100), Duration::from_millis(100));
        assert_eq!(
            retry::backoff(0, 0),
            retry::backoff(1, 0),
            "tries count from 1"
        );
        assert_eq!(
            retry::backoff(40, 0),
            retry::backoff(8, 0),
            "the doubling stops"
        );
    }

    #[test]
    fn only_transient_failures_are_tried_again_within_tries_and_budget() {
        let zero = Duration::ZERO;
        for tries in 1..MAX_TRIES {
            let delay = retry::next_delay(TRANSIENT, tries, zero, 7);
            assert_eq!(delay, Some(retry::backoff(tries, 7)), "{tries}");
        }
        assert_eq!(retry::next_delay(TRANSIENT, MAX_TRIES, zero, 7), None);
        assert_eq!(MAX_TRIES, 4);
        for refusal in [
            Refusal::Final,
            Refusal::NotFound,
            Refusal::AlreadyExists,
            Refusal::Conflict,
            Refusal::UidMismatch,
        ] {
            assert_eq!(retry::next_delay(refusal, 1, zero, 7), None, "{refusal:?}");
        }
        // The budget bounds the end of the pause, not its start.
        let pause = retry::backoff(1, 7);
        assert_eq!(
            retry::next_delay(TRANSIENT, 1, BUDGET - pause, 7),
            Some(pause)
        );
        let late = BUDGET - pause + Duration::from_millis(1);
        assert_eq!(retry::next_delay(TRANSIENT, 1, late, 7), None);
        // The worst case of every pause fits the budget with room for the requests.
        let worst: Duration = (1..MAX_TRIES)
            .map(|t| retry::backoff(t, u64::MAX - 1))
            .sum();
        assert!(worst < BUDGET / 2, "{worst:?}");
    }

    #[test]
    fn a_servers_retry_after_is_honoured_within_the_budget() {
        let hinted = |secs| Refusal::Transient {
            retry_after: Some(Duration::from_secs(secs)),
        };
        assert_eq!(
            retry::next_delay(hinted(1), 1, Duration::ZERO, 0),
            Some(Duration::from_secs(1))
        );
        // A shorter hint than the pause does not shorten it.
        let hint = Refusal::Transient {
            retry_after: Some(Duration::from_millis(1)),
        };
        assert_eq!(
            retry::next_delay(hint, 1, Duration::ZERO, 0),
            Some(retry::backoff(1, 0))
        );
        // One beyond the budget ends the tries: the action fails and backs off instead.
        assert_eq!(retry::next_delay(hinted(30), 1, Duration::ZERO, 0), None);
    }

    #[test]
    fn seeds_vary() {
        let seeds: std::collections::BTreeSet<u64> = (0..50)
            .map(|_| retry::seed("writing Secret a/b", 1))
            .collect();
        assert!(seeds.len() > 40, "{}", seeds.len());
    }

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
