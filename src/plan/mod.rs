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

use crate::arn::{self, BaseArn, ResolveError, RoleArn};
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

/// Why an action was chosen, as renderings, Events and conditions name it.
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
    /// A bare role name in a plan made without a base role ARN: the planning run lacks
    /// `--base-role-arn`; the spec is fine.
    NeedsBaseRoleArn,
    SecretConflict,
    /// Issuing credentials failed lately; no STS call before the status's `retryAfter`.
    BackingOff,
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
            Reason::NeedsBaseRoleArn => "NeedsBaseRoleArn",
            Reason::SecretConflict => "SecretConflict",
            Reason::BackingOff => "BackingOff",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why credentials are issued again over an existing managed Secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RefreshReason {
    Unreadable,
    OwnerChanged,
    RoleChanged,
    SpecChanged,
    Expiring,
}

/// Why an AWSIAMRole is not served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlockReason {
    InvalidSpec,
    /// A bare role name and no base role ARN to resolve it with (a plan made offline, or a
    /// dry run that could not call `GetCallerIdentity`): the plan lacks `--base-role-arn`, so
    /// it is not reported as `InvalidSpec`. A real pass always has a base.
    NeedsBaseArn,
    NotPermitted,
    SecretConflict,
    /// The last attempts to issue credentials failed (see [`refresh::retry_delay`]); the next
    /// one waits for the status's `retryAfter`. Whatever Secret is in place stays.
    BackingOff,
}

impl From<RefreshReason> for Reason {
    fn from(r: RefreshReason) -> Reason {
        match r {
            RefreshReason::Unreadable => Reason::Unreadable,
            RefreshReason::OwnerChanged => Reason::OwnerChanged,
            RefreshReason::RoleChanged => Reason::RoleChanged,
            RefreshReason::SpecChanged => Reason::SpecChanged,
            RefreshReason::Expiring => Reason::Expiring,
        }
    }
}

impl From<BlockReason> for Reason {
    fn from(r: BlockReason) -> Reason {
        match r {
            BlockReason::InvalidSpec => Reason::InvalidSpec,
            BlockReason::NeedsBaseArn => Reason::NeedsBaseRoleArn,
            BlockReason::NotPermitted => Reason::NotPermitted,
            BlockReason::SecretConflict => Reason::SecretConflict,
            BlockReason::BackingOff => Reason::BackingOff,
        }
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

/// New credentials for an AWSIAMRole and the status they will give it. The status carries the
/// planned expiration; the executor replaces it with the one STS granted.
#[derive(Clone, Debug, PartialEq)]
pub struct Issue<'a> {
    pub role: &'a ObservedRole,
    pub request: CredentialRequest,
    pub status: AWSIAMRoleStatus,
}

/// What applying an action does. Each kind carries exactly what it needs, so the executor,
/// the renderers and the simulator never meet a half-filled action.
#[derive(Clone, Debug, PartialEq)]
pub enum Op<'a> {
    /// No managed Secret yet: assume the role and create it.
    Create(Issue<'a>),
    /// Assume the role again and replace the managed Secret in place.
    Refresh {
        issue: Issue<'a>,
        secret: &'a ObservedSecret,
        reason: RefreshReason,
    },
    /// The Secret is current (valid until `expire`, due for a refresh at `due`); only the
    /// status says otherwise.
    UpdateStatus {
        role: &'a ObservedRole,
        secret: &'a ObservedSecret,
        expire: Timestamp,
        due: Timestamp,
        status: AWSIAMRoleStatus,
    },
    /// Delete a managed Secret. `revoked` holds its AWSIAMRole and that role's new status when
    /// the role may no longer be used; `None` means the AWSIAMRole is gone.
    Delete {
        secret: &'a ObservedSecret,
        revoked: Option<(&'a ObservedRole, AWSIAMRoleStatus)>,
    },
    /// Nothing to do: the Secret is valid until `expire` and the status says so; its refresh
    /// is due at `due`.
    Skip {
        role: &'a ObservedRole,
        secret: &'a ObservedSecret,
        expire: Timestamp,
        due: Timestamp,
    },
    /// Not served. `status` is the one to write when the current one does not say why yet;
    /// a Secret already in place is left alone.
    Blocked {
        role: &'a ObservedRole,
        secret: Option<&'a ObservedSecret>,
        reason: BlockReason,
        status: Option<AWSIAMRoleStatus>,
    },
}

/// One entry of the plan: an AWSIAMRole (with its Secret, if any) or an orphaned Secret.
#[derive(Clone, Debug, PartialEq)]
pub struct Action<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    /// The role the credentials are (or would be) for, when known.
    pub role_arn: Option<String>,
    /// Human explanation; never contains credential material.
    pub message: String,
    pub op: Op<'a>,
}

impl<'a> Action<'a> {
    pub fn kind(&self) -> ActionKind {
        match self.op {
            Op::Create(_) => ActionKind::Create,
            Op::Refresh { .. } => ActionKind::Refresh,
            Op::UpdateStatus { .. } => ActionKind::UpdateStatus,
            Op::Delete { .. } => ActionKind::Delete,
            Op::Skip { .. } => ActionKind::Skip,
            Op::Blocked { .. } => ActionKind::Blocked,
        }
    }

    pub fn reason(&self) -> Reason {
        match &self.op {
            Op::Create(_) => Reason::Missing,
            Op::Refresh { reason, .. } => (*reason).into(),
            Op::UpdateStatus { .. } => Reason::StatusStale,
            Op::Delete { revoked: None, .. } => Reason::OwnerGone,
            Op::Delete {
                revoked: Some(_), ..
            } => Reason::NotPermitted,
            Op::Skip { .. } => Reason::UpToDate,
            Op::Blocked { reason, .. } => (*reason).into(),
        }
    }

    /// The AWSIAMRole, unless the action is for an orphaned Secret.
    pub fn role(&self) -> Option<&'a ObservedRole> {
        match &self.op {
            Op::Create(issue) | Op::Refresh { issue, .. } => Some(issue.role),
            Op::UpdateStatus { role, .. } | Op::Skip { role, .. } | Op::Blocked { role, .. } => {
                Some(role)
            }
            Op::Delete { revoked, .. } => revoked.as_ref().map(|(role, _)| *role),
        }
    }

    /// The managed Secret as observed.
    pub fn secret(&self) -> Option<&'a ObservedSecret> {
        match &self.op {
            Op::Create(_) => None,
            Op::Refresh { secret, .. }
            | Op::UpdateStatus { secret, .. }
            | Op::Delete { secret, .. }
            | Op::Skip { secret, .. } => Some(secret),
            Op::Blocked { secret, .. } => *secret,
        }
    }

    /// New credentials, for `Create` and `Refresh`.
    pub fn issue(&self) -> Option<&Issue<'a>> {
        match &self.op {
            Op::Create(issue) | Op::Refresh { issue, .. } => Some(issue),
            _ => None,
        }
    }

    /// The status to write, when there is one.
    pub fn status(&self) -> Option<&AWSIAMRoleStatus> {
        match &self.op {
            Op::Create(issue) | Op::Refresh { issue, .. } => Some(&issue.status),
            Op::UpdateStatus { status, .. } => Some(status),
            Op::Delete { revoked, .. } => revoked.as_ref().map(|(_, status)| status),
            Op::Blocked { status, .. } => status.as_ref(),
            Op::Skip { .. } => None,
        }
    }

    /// Applying it needs no API call: a skip, or a block whose status already says why.
    pub fn changes_nothing(&self) -> bool {
        matches!(self.op, Op::Skip { .. } | Op::Blocked { status: None, .. })
    }
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
            s.add(a.kind());
        }
        s
    }

    /// True when applying the plan would change nothing.
    pub fn is_converged(&self) -> bool {
        self.actions.iter().all(Action::changes_nothing)
    }

    /// The earliest moment after `now` at which planning the same state would give another
    /// plan: a Secret's refresh falls due, or a role backing off may be tried again. `None`
    /// when nothing is waiting for the clock. The loop of `run` sets a timer for it.
    pub fn next_due(&self) -> Option<Timestamp> {
        self.actions
            .iter()
            .filter_map(|a| match &a.op {
                Op::Skip { due, .. } | Op::UpdateStatus { due, .. } => Some(*due),
                Op::Blocked {
                    role,
                    reason: BlockReason::BackingOff,
                    ..
                } => role.status.as_ref()?.retry_after.as_deref()?.parse().ok(),
                _ => None,
            })
            .filter(|due| *due > self.now)
            .min()
    }
}

/// Computes the plan. Pure: the same arguments always give the same plan.
pub fn plan<'a>(observed: &'a Observed, now: Timestamp, config: &PlanConfig) -> Plan<'a> {
    let mut secrets: HashMap<(&str, &str), &ObservedSecret> = observed
        .secrets
        .iter()
        .map(|s| ((s.namespace.as_str(), s.name.as_str()), &**s))
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
    for role in observed.roles.iter().map(|r| &**r) {
        let secret = secrets.remove(&(role.namespace.as_str(), role.name.as_str()));
        // Only a role without a managed Secret can collide with an unmanaged one.
        let conflict = secret.is_none()
            && observed
                .conflicts
                .contains(&(role.namespace.clone(), role.name.clone()));
        let rules = rules.get(role.namespace.as_str());
        let step = RolePlanner { role, now, config };
        actions.push(step.plan(secret, conflict, rules));
    }
    for secret in secrets.into_values() {
        actions.push(Action {
            namespace: &secret.namespace,
            name: &secret.name,
            role_arn: secret::role_arn_of(secret),
            message: format!("AWSIAMRole {:?} no longer exists", secret.name),
            op: Op::Delete {
                secret,
                revoked: None,
            },
        });
    }
    actions.sort_by(|a, b| (a.namespace, a.name).cmp(&(b.namespace, b.name)));
    Plan { now, actions }
}

/// What a usable spec asks for: the resolved role and the STS call that serves it.
struct Target {
    arn: String,
    request: CredentialRequest,
}

/// Why a spec cannot be served as it stands.
struct Refusal {
    reason: BlockReason,
    message: String,
    /// The resolved role, when resolution got that far.
    role_arn: Option<String>,
}

/// How long the Secret's credentials have left before they are due.
struct Remaining {
    /// Refresh once no more than this many seconds remain.
    margin: i64,
    /// The lifetime the issued-at annotation shows, when plausible.
    lifetime: Option<i64>,
}

/// Plans one AWSIAMRole in named steps: validate the spec and policy, then the Secret's
/// ownership and content, its expiry, and last the status.
struct RolePlanner<'a, 'c> {
    role: &'a ObservedRole,
    now: Timestamp,
    config: &'c PlanConfig,
}

impl<'a> RolePlanner<'a, '_> {
    fn plan(
        &self,
        secret: Option<&'a ObservedSecret>,
        conflict: bool,
        rules: Option<&NamespaceRules>,
    ) -> Action<'a> {
        let held = secret.map(|s| (s, secret::decode(s)));
        let target = match self.target(rules) {
            Ok(target) => target,
            Err(refusal) => {
                let readable = held.as_ref().and_then(|(_, c)| c.as_ref().ok());
                return self.refuse(secret, readable, refusal);
            }
        };
        let Some((secret, content)) = held else {
            if conflict {
                let message = format!(
                    "a Secret named {:?} without the controller's labels exists; it is left alone",
                    self.role.name
                );
                let refusal = Refusal {
                    reason: BlockReason::SecretConflict,
                    message,
                    role_arn: Some(target.arn),
                };
                return self.refuse(None, None, refusal);
            }
            let message = format!(
                "assume {} for {}",
                target.arn,
                human(target.request.duration)
            );
            return self.attempt(&target, message, Op::Create(self.issue(&target)));
        };
        let checked = content
            .map_err(|why| {
                (
                    RefreshReason::Unreadable,
                    format!("Secret is unreadable: {why}"),
                )
            })
            .and_then(|content| {
                self.check_secret(secret, &content, &target)?;
                let remaining = self.check_expiry(secret, &content, &target)?;
                Ok((content, remaining))
            });
        match checked {
            Ok((content, remaining)) => self.settle_status(secret, &content, &target, remaining),
            Err((reason, message)) => {
                let issue = self.issue(&target);
                let op = Op::Refresh {
                    issue,
                    secret,
                    reason,
                };
                self.attempt(&target, message, op)
            }
        }
    }

    fn action(&self, target: &Target, message: String, op: Op<'a>) -> Action<'a> {
        Action {
            namespace: &self.role.namespace,
            name: &self.role.name,
            role_arn: Some(target.arn.clone()),
            message,
            op,
        }
    }

    /// Last step of a Create or Refresh: after failed attempts the role waits for its
    /// `retryAfter`, so a role that keeps failing costs no STS call each pass. A changed spec
    /// is tried at once.
    fn attempt(&self, target: &Target, message: String, op: Op<'a>) -> Action<'a> {
        let Some((attempts, until)) = self.backing_off() else {
            return self.action(target, message, op);
        };
        let secret = match &op {
            Op::Refresh { secret, .. } => Some(*secret),
            _ => None,
        };
        let message = format!(
            "{attempts} failed attempt(s) in a row; no STS call before {} (then: {message})",
            format_time(until)
        );
        let op = Op::Blocked {
            role: self.role,
            secret,
            reason: BlockReason::BackingOff,
            status: None,
        };
        self.action(target, message, op)
    }

    /// The failed attempts and the time to wait for, while the status asks to wait. A
    /// `retryAfter` further ahead than any delay the controller sets (a hand edit, another
    /// clock) is not obeyed.
    fn backing_off(&self) -> Option<(u32, Timestamp)> {
        let status = self.role.status.as_ref()?;
        if status.observed_generation != Some(self.role.generation) {
            return None;
        }
        let until: Timestamp = status.retry_after.as_deref()?.parse().ok()?;
        let waits =
            until > self.now && until.as_second() - self.now.as_second() <= refresh::MAX_RETRY;
        waits.then_some((status.failed_attempts.unwrap_or(1), until))
    }

    /// Step 1: the spec decodes, its role resolves, the policy allows it and the session
    /// options fit it.
    fn target(&self, rules: Option<&NamespaceRules>) -> Result<Target, Refusal> {
        let (role, config) = (self.role, self.config);
        let refuse = |reason, message, role_arn| Refusal {
            reason,
            message,
            role_arn,
        };
        let spec = role
            .spec
            .as_ref()
            .map_err(|e| refuse(BlockReason::InvalidSpec, e.clone(), None))?;
        let arn =
            arn::resolve(&spec.role_reference, config.base_role_arn.as_ref()).map_err(|e| {
                // Only a spec error names the field; a missing base is the plan's.
                match e {
                    ResolveError::NeedsBase(_) => {
                        refuse(BlockReason::NeedsBaseArn, e.to_string(), None)
                    }
                    ResolveError::Invalid(_) => refuse(
                        BlockReason::InvalidSpec,
                        format!("spec.roleReference: {e}"),
                        None,
                    ),
                }
            })?;
        let arn_text = arn.to_string();
        if let Err(why) = config.policy.check(
            &role.namespace,
            &arn_text,
            rules,
            config.base_role_arn.as_ref(),
        ) {
            return Err(refuse(BlockReason::NotPermitted, why, Some(arn_text)));
        }
        let session_name = arn::session_name(&role.namespace, &role.name);
        let extras = match config
            .session
            .extras(&role.namespace, &role.name, &session_name)
        {
            Ok(extras) => extras,
            Err(e) => return Err(refuse(BlockReason::InvalidSpec, e, Some(arn_text))),
        };
        Ok(Target {
            arn: arn_text,
            request: CredentialRequest {
                role_arn: arn,
                duration: spec.duration(),
                session_name,
                extras,
            },
        })
    }

    /// A refused role is blocked, except that a Secret for a role it may no longer use is
    /// deleted.
    fn refuse(
        &self,
        secret: Option<&'a ObservedSecret>,
        readable: Option<&SecretContent>,
        refusal: Refusal,
    ) -> Action<'a> {
        let (role, now) = (self.role, self.now);
        let Refusal {
            reason,
            message,
            role_arn,
        } = refusal;
        let (message, op) = match secret {
            Some(secret) if reason == BlockReason::NotPermitted => {
                let status =
                    not_ready_status(role, Reason::NotPermitted.as_str(), &message, None, now);
                let op = Op::Delete {
                    secret,
                    revoked: Some((role, status)),
                };
                (format!("{message}; its Secret is deleted"), op)
            }
            _ => {
                let reason_text = Reason::from(reason).as_str();
                let desired = not_ready_status(role, reason_text, &message, readable, now);
                let status = (!status_matches(role.status.as_ref(), &desired)).then_some(desired);
                let op = Op::Blocked {
                    role,
                    secret,
                    reason,
                    status,
                };
                (message, op)
            }
        };
        Action {
            namespace: &role.namespace,
            name: &role.name,
            role_arn,
            message,
            op,
        }
    }

    /// New credentials, with the status they will give.
    fn issue(&self, target: &Target) -> Issue<'a> {
        let expiry = self
            .now
            .checked_add(jiff::SignedDuration::from_secs(target.request.duration))
            .unwrap_or(self.now);
        Issue {
            role: self.role,
            request: target.request.clone(),
            status: ready_status(self.role, &target.arn, expiry, None, self.now),
        }
    }

    /// Step 2: the Secret belongs to this AWSIAMRole and holds credentials for what its spec
    /// asks now.
    fn check_secret(
        &self,
        secret: &ObservedSecret,
        content: &SecretContent,
        target: &Target,
    ) -> Result<(), (RefreshReason, String)> {
        let role = self.role;
        if !secret::owned_by(secret, role) {
            return Err((
                RefreshReason::OwnerChanged,
                format!(
                    "Secret is not owned by this AWSIAMRole (uid {}); re-issue and re-own it in place",
                    display_uid(&role.uid)
                ),
            ));
        }
        if content.role_arn != target.arn {
            return Err((
                RefreshReason::RoleChanged,
                format!(
                    "Secret holds credentials for {}, the AWSIAMRole resolves to {}",
                    content.role_arn, target.arn
                ),
            ));
        }
        if content.generation != role.generation {
            return Err((
                RefreshReason::SpecChanged,
                format!(
                    "Secret was issued for generation {}, the AWSIAMRole is at generation {}",
                    content.generation, role.generation
                ),
            ));
        }
        Ok(())
    }

    /// Step 3: the credentials are not yet within their refresh margin (see
    /// [`refresh::margin`]).
    fn check_expiry(
        &self,
        secret: &ObservedSecret,
        content: &SecretContent,
        target: &Target,
    ) -> Result<Remaining, (RefreshReason, String)> {
        let known = lifetime(secret, content);
        let margin = refresh::margin(
            known.unwrap_or(target.request.duration),
            self.config.refresh_limit,
            jitter_key(self.role),
        );
        let remaining = content.expire.as_second() - self.now.as_second();
        if remaining > margin {
            return Ok(Remaining {
                margin,
                lifetime: known,
            });
        }
        let expire = format_time(content.expire);
        let message = if remaining <= 0 {
            format!("credentials expired at {expire}")
        } else {
            format!(
                "credentials expire at {expire} (in {}), within the refresh margin of {}",
                human(remaining),
                human(margin)
            )
        };
        Err((RefreshReason::Expiring, message))
    }

    /// Step 4: the Secret is fine; the status says so already (skip) or is rewritten.
    fn settle_status(
        &self,
        secret: &'a ObservedSecret,
        content: &SecretContent,
        target: &Target,
        remaining: Remaining,
    ) -> Action<'a> {
        let (role, now) = (self.role, self.now);
        let expire = format_time(content.expire);
        let due = Timestamp::from_second(content.expire.as_second() - remaining.margin)
            .unwrap_or(content.expire);
        let granted = shortened(remaining.lifetime, target.request.duration);
        let desired = ready_status(role, &content.role_arn, content.expire, granted, now);
        let stale = stale_fields(role.status.as_ref(), &desired);
        if stale.is_empty() {
            let message = format!(
                "credentials valid until {expire}, refresh due at {}",
                format_time(due)
            );
            let op = Op::Skip {
                role,
                secret,
                expire: content.expire,
                due,
            };
            return self.action(target, message, op);
        }
        let message = format!(
            "credentials valid until {expire}; status differs in {}",
            stale.join(", ")
        );
        let op = Op::UpdateStatus {
            role,
            secret,
            expire: content.expire,
            due,
            status: desired,
        };
        self.action(target, message, op)
    }
}

/// Lifetime of the Secret's credentials from the issued-at annotation, when it is plausible.
pub fn lifetime(secret: &ObservedSecret, content: &SecretContent) -> Option<i64> {
    let issued: Timestamp = secret.issued_at()?.parse().ok()?;
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

/// Status for an AWSIAMRole that is not served, with the plan's reason or the executor's
/// `GetCredentialsFailed`. `secret` is the readable Secret left in place, if any, whose role and
/// expiration the status keeps reporting.
pub fn not_ready_status(
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
        failed_attempts: None,
        retry_after: None,
    }
}

/// `status` (a not-ready one, after a failed attempt to issue credentials) with one more failed
/// attempt for this generation and the time before which the planner makes no new one (see
/// [`refresh::retry_delay`]).
pub fn count_failure(
    role: &ObservedRole,
    status: AWSIAMRoleStatus,
    now: Timestamp,
) -> AWSIAMRoleStatus {
    let before = role
        .status
        .as_ref()
        .filter(|s| s.observed_generation == Some(role.generation))
        .and_then(|s| s.failed_attempts)
        .unwrap_or(0);
    let attempts = before.saturating_add(1);
    let until = now
        .checked_add(jiff::SignedDuration::from_secs(refresh::retry_delay(
            attempts,
        )))
        .unwrap_or(now);
    AWSIAMRoleStatus {
        failed_attempts: Some(attempts),
        retry_after: Some(format_time(until)),
        ..status
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
    if current.failed_attempts != desired.failed_attempts
        || !same_time(&current.retry_after, &desired.retry_after)
    {
        stale.push("retry state");
    }
    stale
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(name: &str) -> ObservedRole {
        ObservedRole {
            namespace: "ns".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            generation: 1,
            spec: Ok(crate::crd::AWSIAMRoleSpec {
                role_reference: format!("app-{name}"),
                role_session_duration: None,
            }),
            ..ObservedRole::default()
        }
    }

    /// A Secret for `role` holding one-hour credentials issued `age` seconds before `now`.
    fn served(role: &ObservedRole, now: Timestamp, age: i64) -> ObservedSecret {
        let issued = Timestamp::from_second(now.as_second() - age).unwrap();
        let creds = secret::Credentials {
            access_key_id: "ASIA".into(),
            secret_access_key: "s".into(),
            session_token: "t".into(),
            expiration: Timestamp::from_second(issued.as_second() + 3600).unwrap(),
        };
        let arn = format!("arn:aws:iam::123456789012:role/app-{}", role.name);
        ObservedSecret::from_secret(&secret::build(role, &arn, &creds, issued))
    }

    #[test]
    fn next_due_is_the_earliest_refresh_margin_or_retry() {
        let now: Timestamp = "2026-11-26T12:00:00Z".parse().unwrap();
        let config = PlanConfig {
            base_role_arn: Some("arn:aws:iam::123456789012:role/".parse().unwrap()),
            ..PlanConfig::default()
        };
        let a = role("a");
        let secret = served(&a, now, 600);
        let content = secret::decode(&secret).unwrap();
        assert_eq!(lifetime(&secret, &content), Some(3600));
        assert_eq!(
            secret::role_arn_of(&secret).as_deref(),
            Some("arn:aws:iam::123456789012:role/app-a")
        );
        let margin = refresh::margin(3600, config.refresh_limit, "uid-a");
        let refresh_at = Timestamp::from_second(content.expire.as_second() - margin).unwrap();
        let observed = Observed::new(vec![a.clone()], vec![secret.clone()], Default::default());
        let planned = plan(&observed, now, &config);
        let first = &planned.actions[0];
        assert!(
            matches!(first.op, Op::Skip { due, .. } | Op::UpdateStatus { due, .. } if due == refresh_at),
            "{} {}: {}",
            first.kind(),
            first.reason(),
            first.message
        );
        assert_eq!(planned.next_due(), Some(refresh_at));

        // A role backing off until a minute from now falls due first.
        let mut b = role("b");
        let waiting = count_failure(&b, not_ready_status(&b, "X", "failed", None, now), now);
        b.status = Some(waiting.clone());
        let retry: Timestamp = waiting.retry_after.unwrap().parse().unwrap();
        let observed = Observed::new(vec![a, b], vec![secret], Default::default());
        let planned = plan(&observed, now, &config);
        assert_eq!(planned.actions[1].reason(), Reason::BackingOff);
        assert_eq!(planned.next_due(), Some(retry));
        // Nothing is due at or before the plan's own time.
        assert_eq!(plan(&observed, retry, &config).next_due(), Some(refresh_at));
        assert_eq!(plan(&observed, refresh_at, &config).next_due(), None);
    }

    #[test]
    fn failures_are_counted_per_generation_and_cleared_by_success() {
        let now: Timestamp = "2026-11-26T12:00:00Z".parse().unwrap();
        let mut role = ObservedRole {
            generation: 2,
            ..ObservedRole::default()
        };
        let failed = |role: &ObservedRole| {
            count_failure(role, not_ready_status(role, "X", "failed", None, now), now)
        };
        let first = failed(&role);
        assert_eq!(first.failed_attempts, Some(1));
        assert_eq!(first.retry_after.as_deref(), Some("2026-11-26T12:00:30Z"));
        assert_eq!(first.observed_generation, Some(2));
        role.status = Some(first);
        let second = failed(&role);
        assert_eq!(second.failed_attempts, Some(2));
        assert_eq!(second.retry_after.as_deref(), Some("2026-11-26T12:01:00Z"));
        role.status = Some(second.clone());
        // A spec edit starts the count again.
        role.generation = 3;
        let edited = failed(&role);
        assert_eq!(edited.failed_attempts, Some(1));
        // Success clears the retry state, and a status still holding it is stale.
        let arn = "arn:aws:iam::123456789012:role/x";
        let ready = ready_status(&role, arn, now, None, now);
        assert_eq!(
            (ready.failed_attempts, ready.retry_after.clone()),
            (None, None)
        );
        let mut leftover = ready.clone();
        leftover.failed_attempts = Some(2);
        assert!(!status_matches(Some(&leftover), &ready));
        let mut leftover = ready.clone();
        leftover.retry_after = second.retry_after;
        assert!(!status_matches(Some(&leftover), &ready));
        assert!(status_matches(Some(&ready), &ready));
    }
}
