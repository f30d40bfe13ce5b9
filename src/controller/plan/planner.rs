//! The planner: one pass over the observed state, and [`RolePlanner`], which plans one
//! AWSIAMRole in named steps. Pure: no clock, network, randomness or metrics.

use std::collections::HashMap;

use jiff::Timestamp;

use super::PlanConfig;
use super::action::{Action, CredentialRequest, Issue, Op, Plan};
use super::kinds::{BlockReason, Reason, RefreshReason};
use super::refresh;
use super::status::{
    human, not_ready_status, ready_status, shortened, stale_fields, status_matches,
};
use crate::domain::arn::{self, ResolveError};
use crate::domain::model::{Observed, ObservedRole, ObservedSecret};
use crate::domain::policy::{self, NamespaceRules};
use crate::domain::secret::{self, SecretContent, format_time};

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
            return Err(refuse(BlockReason::NotPermitted, why.0, Some(arn_text)));
        }
        let session_name = arn::session_name(&role.namespace, &role.name);
        let extras = match config
            .session
            .extras(&role.namespace, &role.name, &session_name)
        {
            Ok(extras) => extras,
            Err(e) => return Err(refuse(BlockReason::InvalidSpec, e.0, Some(arn_text))),
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
    let issued = secret.issued_at()?;
    let l = content.expire.as_second() - issued.as_second();
    // STS never issues less than 900 s: a shorter span means the annotation is wrong.
    (l >= crate::domain::crd::MIN_SESSION_DURATION).then_some(l)
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
