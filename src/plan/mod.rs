//! The pure planner: observed state + clock + configuration → [`Plan`].
//!
//! Planning never reads a clock, the network, randomness or metrics, so the same input always
//! gives the same plan, offline and live alike. The plan borrows the [`Observed`] state it was
//! made from; the executor and the renderers read the objects through it.

pub mod refresh;
pub mod render;

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde::Serialize;

use crate::arn::{self, BaseArn, RoleArn};
use crate::crd::AWSIAMRoleStatus;
use crate::model::{Observed, ObservedRole, ObservedSecret};
use crate::policy::{self, NamespaceRules, Policy};
use crate::secret::{self, SecretContent, format_time};
use crate::session::{SessionExtras, SessionOptions};

/// The condition type the controller maintains on every AWSIAMRole.
pub const READY: &str = "Ready";
/// `Ready=True` reason.
pub const CREDENTIALS_READY: &str = "CredentialsReady";

/// What the planner needs to know beyond the observed state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanConfig {
    /// Prefix for bare role names; `None` only offline without `--base-role-arn`.
    pub base_role_arn: Option<BaseArn>,
    /// `--refresh-limit`, in seconds: the smallest refresh margin.
    pub refresh_limit: i64,
    pub policy: Policy,
    pub session: SessionOptions,
}

impl Default for PlanConfig {
    fn default() -> Self {
        PlanConfig {
            base_role_arn: None,
            refresh_limit: 15 * 60,
            policy: Policy::default(),
            session: SessionOptions::default(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ActionKind {
    Create,
    Refresh,
    UpdateStatus,
    Delete,
    Skip,
    Blocked,
}

impl ActionKind {
    pub const ALL: [ActionKind; 6] = [
        ActionKind::Create,
        ActionKind::Refresh,
        ActionKind::UpdateStatus,
        ActionKind::Delete,
        ActionKind::Skip,
        ActionKind::Blocked,
    ];

    /// Name in every rendering (`update-status`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Create => "create",
            ActionKind::Refresh => "refresh",
            ActionKind::UpdateStatus => "update-status",
            ActionKind::Delete => "delete",
            ActionKind::Skip => "skip",
            ActionKind::Blocked => "blocked",
        }
    }

    /// Terraform-like marker in the text plan.
    pub fn symbol(self) -> char {
        match self {
            ActionKind::Create => '+',
            ActionKind::Refresh | ActionKind::UpdateStatus => '~',
            ActionKind::Delete => '-',
            ActionKind::Skip => '=',
            ActionKind::Blocked => '!',
        }
    }

    /// Whether applying this action calls STS.
    pub fn needs_credentials(self) -> bool {
        matches!(self, ActionKind::Create | ActionKind::Refresh)
    }
}

impl fmt::Display for ActionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an action was chosen (SPEC §3); also the Event and condition reason where one applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    Missing,
    Unreadable,
    OwnerChanged,
    RoleChanged,
    SpecChanged,
    Expiring,
    StatusStale,
    OwnerGone,
    NotPermitted,
    UpToDate,
    InvalidSpec,
    SecretConflict,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Missing => "Missing",
            Reason::Unreadable => "Unreadable",
            Reason::OwnerChanged => "OwnerChanged",
            Reason::RoleChanged => "RoleChanged",
            Reason::SpecChanged => "SpecChanged",
            Reason::Expiring => "Expiring",
            Reason::StatusStale => "StatusStale",
            Reason::OwnerGone => "OwnerGone",
            Reason::NotPermitted => "NotPermitted",
            Reason::UpToDate => "UpToDate",
            Reason::InvalidSpec => "InvalidSpec",
            Reason::SecretConflict => "SecretConflict",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The STS call a `Create` or `Refresh` needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialRequest {
    pub role_arn: RoleArn,
    /// `DurationSeconds`.
    pub duration: i64,
    pub session_name: String,
    /// Session tags, source identity and external ID, when configured.
    pub extras: SessionExtras,
}

/// One entry of the plan: an AWSIAMRole (with its Secret, if any) or an orphaned Secret.
#[derive(Clone, Debug, PartialEq)]
pub struct Action<'a> {
    pub kind: ActionKind,
    pub reason: Reason,
    pub namespace: &'a str,
    pub name: &'a str,
    /// The role the credentials are (or would be) for, when known.
    pub role_arn: Option<String>,
    /// Human explanation; never contains credential material.
    pub message: String,
    pub role: Option<&'a ObservedRole>,
    /// The existing managed Secret this action replaces or deletes.
    pub secret: Option<&'a ObservedSecret>,
    /// Set for `Create` and `Refresh`.
    pub request: Option<CredentialRequest>,
    /// The status to write, when it differs from the observed one. For `Create`/`Refresh` the
    /// expiration is the planned one; the executor rewrites it with what STS returned.
    pub status: Option<AWSIAMRoleStatus>,
}

/// Counts per action kind (the `summary` of the JSON rendering).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub create: usize,
    pub refresh: usize,
    #[serde(rename = "update-status")]
    pub update_status: usize,
    pub delete: usize,
    pub skip: usize,
    pub blocked: usize,
}

impl Summary {
    pub fn count(&self, kind: ActionKind) -> usize {
        match kind {
            ActionKind::Create => self.create,
            ActionKind::Refresh => self.refresh,
            ActionKind::UpdateStatus => self.update_status,
            ActionKind::Delete => self.delete,
            ActionKind::Skip => self.skip,
            ActionKind::Blocked => self.blocked,
        }
    }

    fn add(&mut self, kind: ActionKind) {
        *match kind {
            ActionKind::Create => &mut self.create,
            ActionKind::Refresh => &mut self.refresh,
            ActionKind::UpdateStatus => &mut self.update_status,
            ActionKind::Delete => &mut self.delete,
            ActionKind::Skip => &mut self.skip,
            ActionKind::Blocked => &mut self.blocked,
        } += 1;
    }
}

/// A plan: every AWSIAMRole and every managed Secret exactly once, sorted by namespace, name.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan<'a> {
    /// The clock the plan was made for.
    pub now: Timestamp,
    pub actions: Vec<Action<'a>>,
}

impl Plan<'_> {
    pub fn summary(&self) -> Summary {
        let mut s = Summary::default();
        for a in &self.actions {
            s.add(a.kind);
        }
        s
    }

    /// True when applying the plan would change nothing (only skips and unchanged blocks).
    pub fn is_converged(&self) -> bool {
        self.actions.iter().all(|a| {
            a.kind == ActionKind::Skip || (a.kind == ActionKind::Blocked && a.status.is_none())
        })
    }
}

/// Computes the plan. Pure: the same arguments always give the same plan.
pub fn plan<'a>(observed: &'a Observed, now: Timestamp, config: &PlanConfig) -> Plan<'a> {
    let mut secrets: HashMap<(&str, &str), &ObservedSecret> = observed
        .secrets
        .iter()
        .map(|s| ((s.namespace.as_str(), s.name.as_str()), s))
        .collect();
    // Each namespace's allowed roles, read once per plan (only with restrictions on).
    let mut rules: HashMap<&str, NamespaceRules> = HashMap::new();
    if config.policy.namespace_restrictions {
        for role in &observed.roles {
            rules.entry(role.namespace.as_str()).or_insert_with(|| {
                policy::namespace_rules(
                    &role.namespace,
                    observed.namespaces.get(&role.namespace),
                    config.base_role_arn.as_ref(),
                )
            });
        }
    }
    let mut actions = Vec::with_capacity(observed.roles.len() + secrets.len());
    for role in &observed.roles {
        let secret = secrets.remove(&(role.namespace.as_str(), role.name.as_str()));
        // Only a role without a managed Secret can collide with an unmanaged one.
        let conflict = secret.is_none()
            && observed
                .conflicts
                .contains(&(role.namespace.clone(), role.name.clone()));
        let rules = rules.get(role.namespace.as_str());
        actions.push(plan_role(role, secret, conflict, rules, now, config));
    }
    for secret in secrets.into_values() {
        let role_arn = secret::role_arn_of(secret);
        actions.push(Action {
            kind: ActionKind::Delete,
            reason: Reason::OwnerGone,
            namespace: &secret.namespace,
            name: &secret.name,
            role_arn,
            message: format!("AWSIAMRole {:?} no longer exists", secret.name),
            role: None,
            secret: Some(secret),
            request: None,
            status: None,
        });
    }
    actions.sort_by(|a, b| (a.namespace, a.name).cmp(&(b.namespace, b.name)));
    Plan { now, actions }
}

fn plan_role<'a>(
    role: &'a ObservedRole,
    secret: Option<&'a ObservedSecret>,
    conflict: bool,
    rules: Option<&NamespaceRules>,
    now: Timestamp,
    config: &PlanConfig,
) -> Action<'a> {
    let content = secret.map(secret::decode);
    let readable = content.as_ref().and_then(|c| c.as_ref().ok());
    let mut action = Action {
        kind: ActionKind::Skip,
        reason: Reason::UpToDate,
        namespace: &role.namespace,
        name: &role.name,
        role_arn: None,
        message: String::new(),
        role: Some(role),
        secret,
        request: None,
        status: None,
    };
    let blocked = |mut action: Action<'a>, reason: Reason, message: String| {
        let desired = not_ready_status(role, reason, &message, readable, now);
        action.kind = ActionKind::Blocked;
        action.reason = reason;
        action.status = (!status_matches(role.status.as_ref(), &desired)).then_some(desired);
        action.message = message;
        action
    };

    let spec = match &role.spec {
        Ok(spec) => spec,
        Err(e) => return blocked(action, Reason::InvalidSpec, e.clone()),
    };
    let arn = match arn::resolve(&spec.role_reference, config.base_role_arn.as_ref()) {
        Ok(arn) => arn,
        Err(e) => {
            return blocked(
                action,
                Reason::InvalidSpec,
                format!("spec.roleReference: {e}"),
            );
        }
    };
    let arn_text = arn.to_string();
    action.role_arn = Some(arn_text.clone());
    if let Err(why) = config.policy.check(
        &role.namespace,
        &arn_text,
        rules,
        config.base_role_arn.as_ref(),
    ) {
        if secret.is_some() {
            let desired = not_ready_status(role, Reason::NotPermitted, &why, None, now);
            action.kind = ActionKind::Delete;
            action.reason = Reason::NotPermitted;
            action.message = format!("{why}; its Secret is deleted");
            action.status = Some(desired);
            return action;
        }
        return blocked(action, Reason::NotPermitted, why);
    }
    let duration = spec.duration();
    let session_name = arn::session_name(&role.namespace, &role.name);
    let extras = match config
        .session
        .extras(&role.namespace, &role.name, &session_name)
    {
        Ok(extras) => extras,
        Err(e) => return blocked(action, Reason::InvalidSpec, e),
    };
    let request = || CredentialRequest {
        role_arn: arn.clone(),
        duration,
        session_name: session_name.clone(),
        extras: extras.clone(),
    };
    let planned_expiry = now
        .checked_add(jiff::SignedDuration::from_secs(duration))
        .unwrap_or(now);
    // Create and Refresh: new credentials, with the status they will give.
    let issue = |mut action: Action<'a>, kind: ActionKind, reason: Reason, message: String| {
        action.kind = kind;
        action.reason = reason;
        action.message = message;
        action.status = Some(ready_status(role, &arn_text, planned_expiry, None, now));
        action.request = Some(request());
        action
    };
    let Some(secret) = secret else {
        if conflict {
            return blocked(
                action,
                Reason::SecretConflict,
                format!(
                    "a Secret named {:?} without the controller's labels exists; it is left alone",
                    role.name
                ),
            );
        }
        let message = format!("assume {arn} for {}", human(duration));
        return issue(action, ActionKind::Create, Reason::Missing, message);
    };
    let refresh = |action: Action<'a>, reason: Reason, message: String| {
        issue(action, ActionKind::Refresh, reason, message)
    };
    let content = match readable {
        Some(c) => c,
        None => {
            let why = match content {
                Some(Err(e)) => e,
                _ => String::from("unknown"),
            };
            return refresh(
                action,
                Reason::Unreadable,
                format!("Secret is unreadable: {why}"),
            );
        }
    };
    if !secret::owned_by(secret, role) {
        return refresh(
            action,
            Reason::OwnerChanged,
            format!(
                "Secret is not owned by this AWSIAMRole (uid {}); re-issue and re-own it in place",
                display_uid(&role.uid)
            ),
        );
    }
    if content.role_arn != arn_text {
        return refresh(
            action,
            Reason::RoleChanged,
            format!(
                "Secret holds credentials for {}, the AWSIAMRole resolves to {arn_text}",
                content.role_arn
            ),
        );
    }
    if content.generation != role.generation {
        return refresh(
            action,
            Reason::SpecChanged,
            format!(
                "Secret was issued for generation {}, the AWSIAMRole is at generation {}",
                content.generation, role.generation
            ),
        );
    }
    let known_lifetime = lifetime(secret, content);
    let lifetime = known_lifetime.unwrap_or(duration);
    let margin = refresh::margin(lifetime, config.refresh_limit, jitter_key(role));
    let remaining = content.expire.as_second() - now.as_second();
    let expire = format_time(content.expire);
    if remaining <= margin {
        let message = if remaining <= 0 {
            format!("credentials expired at {expire}")
        } else {
            format!(
                "credentials expire at {expire} (in {}), within the refresh margin of {}",
                human(remaining),
                human(margin)
            )
        };
        return refresh(action, Reason::Expiring, message);
    }
    let due = format_time(
        jiff::Timestamp::from_second(content.expire.as_second() - margin).unwrap_or(content.expire),
    );
    let granted = shortened(known_lifetime, duration);
    let desired = ready_status(role, &content.role_arn, content.expire, granted, now);
    if status_matches(role.status.as_ref(), &desired) {
        action.message = format!("credentials valid until {expire}, refresh due at {due}");
        return action;
    }
    action.kind = ActionKind::UpdateStatus;
    action.reason = Reason::StatusStale;
    action.message = format!(
        "credentials valid until {expire}; status differs in {}",
        stale_fields(role.status.as_ref(), &desired).join(", ")
    );
    action.status = Some(desired);
    action
}

/// Lifetime of the Secret's credentials from the issued-at annotation, when it is plausible.
pub fn lifetime(secret: &ObservedSecret, content: &SecretContent) -> Option<i64> {
    let issued: Timestamp = secret
        .annotations
        .get(secret::ISSUED_AT_ANNOTATION)?
        .parse()
        .ok()?;
    let l = content.expire.as_second() - issued.as_second();
    // STS never issues less than 900 s: a shorter span means the annotation is wrong.
    (l >= crate::crd::MIN_SESSION_DURATION).then_some(l)
}

/// The UID spreads refreshes; hand-written input without one falls back to the name.
fn jitter_key(role: &ObservedRole) -> &str {
    if role.uid.is_empty() {
        &role.name
    } else {
        &role.uid
    }
}

fn display_uid(uid: &str) -> &str {
    if uid.is_empty() { "unknown" } else { uid }
}

/// `3600` → `1h`, `1872` → `31m 12s`.
pub fn human(seconds: i64) -> String {
    humantime::format_duration(Duration::from_secs(seconds.max(0) as u64)).to_string()
}

/// The granted lifetime when it is clearly shorter than the `requested` duration (STS capped
/// it, e.g. for role chaining); a minute of slack absorbs clock skew and latency.
pub fn shortened(lifetime: Option<i64>, requested: i64) -> Option<i64> {
    lifetime.filter(|l| l + 60 < requested)
}

/// Status for an AWSIAMRole whose Secret holds valid credentials for `role_arn`.
///
/// `granted` is the lifetime STS granted when it was shorter than the spec asked for (see
/// [`shortened`]); the message then says so, so a user sees why a 12 h role refreshes hourly.
pub fn ready_status(
    role: &ObservedRole,
    role_arn: &str,
    expiration: Timestamp,
    granted: Option<i64>,
    now: Timestamp,
) -> AWSIAMRoleStatus {
    let expiration = format_time(expiration);
    let mut message = format!("credentials for {role_arn} valid until {expiration}");
    if let Some(granted) = granted {
        let requested = role.spec.as_ref().map(|s| s.duration()).unwrap_or_default();
        message.push_str(&format!(
            "; STS granted {} instead of the requested {} (role chaining caps sessions at 1h)",
            human(granted),
            human(requested)
        ));
    }
    with_ready(
        role,
        true,
        CREDENTIALS_READY,
        message,
        Some(role_arn.to_string()),
        Some(expiration),
        now,
    )
}

/// Status for an AWSIAMRole that is not served. `secret` is the readable Secret left in place,
/// if any, whose role and expiration the status keeps reporting.
pub fn not_ready_status(
    role: &ObservedRole,
    reason: Reason,
    message: &str,
    secret: Option<&SecretContent>,
    now: Timestamp,
) -> AWSIAMRoleStatus {
    not_ready_status_with(role, reason.as_str(), message, secret, now)
}

/// As [`not_ready_status`] with a free-form reason (the executor's `GetCredentialsFailed`).
pub fn not_ready_status_with(
    role: &ObservedRole,
    reason: &str,
    message: &str,
    secret: Option<&SecretContent>,
    now: Timestamp,
) -> AWSIAMRoleStatus {
    with_ready(
        role,
        false,
        reason,
        message.to_string(),
        secret.map(|c| c.role_arn.clone()),
        secret.map(|c| format_time(c.expire)),
        now,
    )
}

fn with_ready(
    role: &ObservedRole,
    ready: bool,
    reason: &str,
    message: String,
    role_arn: Option<String>,
    expiration: Option<String>,
    now: Timestamp,
) -> AWSIAMRoleStatus {
    let status = if ready { "True" } else { "False" };
    let previous = role.status.as_ref();
    let transition = previous
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == READY))
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(Timestamp::from_second(now.as_second()).unwrap_or(now)));
    let mut conditions: Vec<Condition> = previous
        .map(|s| {
            s.conditions
                .iter()
                .filter(|c| c.type_ != READY)
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    conditions.push(Condition {
        type_: READY.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: Some(role.generation),
        last_transition_time: transition,
    });
    AWSIAMRoleStatus {
        observed_generation: Some(role.generation),
        role_arn,
        expiration,
        conditions,
    }
}

/// The parts of the Ready condition that matter for staleness (not its transition time).
fn ready_fields(s: &AWSIAMRoleStatus) -> Option<(&str, &str, &str, Option<i64>)> {
    s.conditions.iter().find(|c| c.type_ == READY).map(|c| {
        (
            c.status.as_str(),
            c.reason.as_str(),
            c.message.as_str(),
            c.observed_generation,
        )
    })
}

/// Whether `current` already says what `desired` says (transition times aside).
pub fn status_matches(current: Option<&AWSIAMRoleStatus>, desired: &AWSIAMRoleStatus) -> bool {
    stale_fields(current, desired).is_empty()
}

fn stale_fields(
    current: Option<&AWSIAMRoleStatus>,
    desired: &AWSIAMRoleStatus,
) -> Vec<&'static str> {
    let empty = AWSIAMRoleStatus::default();
    let current = current.unwrap_or(&empty);
    let same_time = |a: &Option<String>, b: &Option<String>| match (a, b) {
        (Some(a), Some(b)) => {
            a == b
                || a.parse::<Timestamp>()
                    .ok()
                    .zip(b.parse::<Timestamp>().ok())
                    .is_some_and(|(a, b)| a == b)
        }
        (a, b) => a == b,
    };
    let mut stale = Vec::new();
    if current.observed_generation != desired.observed_generation {
        stale.push("observedGeneration");
    }
    if current.role_arn != desired.role_arn {
        stale.push("roleARN");
    }
    if !same_time(&current.expiration, &desired.expiration) {
        stale.push("expiration");
    }
    if ready_fields(current) != ready_fields(desired) {
        stale.push("Ready condition");
    }
    stale
}
