//! Applies a plan to observed state in memory, with a deterministic fake credential source,
//! the way the executor applies it to a cluster: the Secret comes from `secret::build`, the
//! status from the plan (rewritten with the issued expiration for new credentials).

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::controller::plan::{Op, Plan, ready_status};
use crate::domain::model::{Observed, ObservedRole, ObservedSecret};
use crate::domain::secret::{self, Credentials};
use jiff::{SignedDuration, Timestamp};

/// Marker in every fake credential this module issues; tests assert it is never rendered.
pub const CANARY: &str = "SIMCANARY";

/// Deterministic credentials for `session`, valid `duration` seconds from `now`.
pub fn fake_credentials(session: &str, now: Timestamp, duration: i64) -> Credentials {
    Credentials {
        access_key_id: format!("ASIA{CANARY}{}", session.len()),
        secret_access_key: format!("{CANARY}-secret-{session}"),
        session_token: format!("{CANARY}-token-{session}"),
        expiration: now + SignedDuration::from_secs(duration),
    }
}

/// The state after applying every action of `plan` successfully at `plan.now`.
pub fn apply(observed: &Observed, plan: &Plan<'_>) -> Observed {
    let now = plan.now;
    let mut roles: Vec<ObservedRole> = observed.roles.iter().map(|r| (**r).clone()).collect();
    let mut secrets: BTreeMap<(String, String), ObservedSecret> = observed
        .secrets
        .iter()
        .map(|s| ((s.namespace.clone(), s.name.clone()), (**s).clone()))
        .collect();
    for action in &plan.actions {
        let key = (action.namespace.to_string(), action.name.to_string());
        let role = roles
            .iter_mut()
            .find(|r| r.namespace == action.namespace && r.name == action.name);
        match (&action.op, role) {
            (Op::Create(issue) | Op::Refresh { issue, .. }, Some(role)) => {
                let req = &issue.request;
                let creds = fake_credentials(&req.session_name, now, req.duration);
                let arn = req.role_arn.to_string();
                let built = secret::build(role, &arn, &creds, now);
                let mut written = ObservedSecret::from_secret(&built);
                // Replacing keeps the object's identity; creating gets a new one.
                written.uid = action
                    .secret()
                    .map(|s| s.uid.clone())
                    .unwrap_or_else(|| format!("uid-secret-{}-{}", key.0, key.1));
                secrets.insert(key, written);
                role.status = Some(ready_status(role, &arn, creds.expiration, None, now));
            }
            (op, role) => {
                if matches!(op, Op::Delete { .. }) {
                    secrets.remove(&key);
                }
                if let (Some(role), Some(status)) = (role, action.status()) {
                    role.status = Some(status.clone());
                }
            }
        }
    }
    Observed {
        roles: roles.into_iter().map(Arc::new).collect(),
        secrets: secrets.into_values().map(Arc::new).collect(),
        conflicts: observed.conflicts.clone(),
        namespaces: observed.namespaces.clone(),
    }
}
