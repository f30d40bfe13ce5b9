//! The pure planner: observed state + clock + configuration → [`Plan`].
//!
//! Planning never reads a clock, the network, randomness or metrics, so the same input always
//! gives the same plan, offline and live alike. The plan borrows the [`Observed`] state it was
//! made from; the executor and the renderers read the objects through it.
//!
//! By concern: [`kinds`] holds the tables of action kinds and reasons, [`action`] the plan as a
//! value, [`planner`] the steps that choose each action, [`status`] the statuses written,
//! [`refresh`] when credentials fall due and [`render`] the renderings.

pub mod action;
pub mod kinds;
mod planner;
pub mod refresh;
pub mod render;
pub mod status;

pub use action::{Action, CredentialRequest, Issue, Op, Parts, Plan};
pub use kinds::{ActionKind, BlockReason, KindInfo, Reason, RefreshReason, Summary};
pub use planner::{lifetime, plan};
pub use status::{
    CREDENTIALS_READY, READY, count_failure, human, not_ready_status, ready_status, shortened,
    status_matches,
};

use crate::domain::arn::BaseArn;
#[cfg(doc)]
use crate::domain::model::Observed;
use crate::domain::policy::Policy;
use crate::domain::session::SessionOptions;

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

#[cfg(test)]
pub(crate) mod tests {
    use jiff::Timestamp;

    use super::*;
    use crate::domain::model::{Observed, ObservedRole, ObservedSecret};
    use crate::domain::secret;

    /// A role with a UID, generation 1 and a valid spec (shared by other modules' tests).
    pub(crate) fn role(name: &str) -> ObservedRole {
        ObservedRole {
            namespace: "ns".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            generation: 1,
            spec: Ok(crate::domain::crd::AWSIAMRoleSpec {
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
}
