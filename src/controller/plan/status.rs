//! The statuses the planner and the executor write: Ready or not, with the retry state of
//! failed attempts, and whether a status already says what a desired one says.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::refresh;
use crate::domain::crd::AWSIAMRoleStatus;
use crate::domain::model::ObservedRole;
use crate::domain::secret::{SecretContent, format_time};

/// The condition type the controller maintains on every AWSIAMRole.
pub const READY: &str = "Ready";
/// `Ready=True` reason.
pub const CREDENTIALS_READY: &str = "CredentialsReady";

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

pub(super) fn stale_fields(
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
