//! The plan as a value: the actions ([`Op`] carries exactly what applying each needs), the
//! plan that holds them, and what every consumer reads of an action. Each [`Op`] variant is
//! described once, in [`Op::parts`]; the accessors of [`Action`] are read from there.

use jiff::Timestamp;

use super::kinds::{ActionKind, BlockReason, Reason, RefreshReason, Summary};
use crate::domain::arn::RoleArn;
use crate::domain::crd::AWSIAMRoleStatus;
use crate::domain::model::{ObservedRole, ObservedSecret};
use crate::domain::session::SessionExtras;

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

/// Everything the consumers of an action read of its [`Op`], gathered by one `match`.
pub struct Parts<'s, 'a> {
    pub kind: ActionKind,
    pub reason: Reason,
    /// The AWSIAMRole, unless the action is for an orphaned Secret.
    pub role: Option<&'a ObservedRole>,
    /// The managed Secret as observed.
    pub secret: Option<&'a ObservedSecret>,
    /// New credentials, for `Create` and `Refresh`.
    pub issue: Option<&'s Issue<'a>>,
    /// The status to write, when there is one.
    pub status: Option<&'s AWSIAMRoleStatus>,
}

impl<'a> Op<'a> {
    /// The one place that says, per variant, what kind and reason it is and which objects and
    /// writes it carries.
    pub fn parts(&self) -> Parts<'_, 'a> {
        let none = |kind, reason| Parts {
            kind,
            reason,
            role: None,
            secret: None,
            issue: None,
            status: None,
        };
        match self {
            Op::Create(issue) => Parts {
                role: Some(issue.role),
                issue: Some(issue),
                status: Some(&issue.status),
                ..none(ActionKind::Create, Reason::Missing)
            },
            Op::Refresh {
                issue,
                secret,
                reason,
            } => Parts {
                role: Some(issue.role),
                secret: Some(secret),
                issue: Some(issue),
                status: Some(&issue.status),
                ..none(ActionKind::Refresh, (*reason).into())
            },
            Op::UpdateStatus {
                role,
                secret,
                status,
                ..
            } => Parts {
                role: Some(role),
                secret: Some(secret),
                status: Some(status),
                ..none(ActionKind::UpdateStatus, Reason::StatusStale)
            },
            Op::Delete { secret, revoked } => {
                let reason = match revoked {
                    None => Reason::OwnerGone,
                    Some(_) => Reason::NotPermitted,
                };
                Parts {
                    role: revoked.as_ref().map(|(role, _)| *role),
                    secret: Some(secret),
                    status: revoked.as_ref().map(|(_, status)| status),
                    ..none(ActionKind::Delete, reason)
                }
            }
            Op::Skip { role, secret, .. } => Parts {
                role: Some(role),
                secret: Some(secret),
                ..none(ActionKind::Skip, Reason::UpToDate)
            },
            Op::Blocked {
                role,
                secret,
                reason,
                status,
            } => Parts {
                role: Some(role),
                secret: *secret,
                status: status.as_ref(),
                ..none(ActionKind::Blocked, (*reason).into())
            },
        }
    }
}

impl<'a> Action<'a> {
    pub fn kind(&self) -> ActionKind {
        self.op.parts().kind
    }

    pub fn reason(&self) -> Reason {
        self.op.parts().reason
    }

    /// The AWSIAMRole, unless the action is for an orphaned Secret.
    pub fn role(&self) -> Option<&'a ObservedRole> {
        self.op.parts().role
    }

    /// The managed Secret as observed.
    pub fn secret(&self) -> Option<&'a ObservedSecret> {
        self.op.parts().secret
    }

    /// New credentials, for `Create` and `Refresh`.
    pub fn issue(&self) -> Option<&Issue<'a>> {
        self.op.parts().issue
    }

    /// The status to write, when there is one.
    pub fn status(&self) -> Option<&AWSIAMRoleStatus> {
        self.op.parts().status
    }

    /// Applying it needs no API call: a skip, or a block whose status already says why.
    pub fn changes_nothing(&self) -> bool {
        matches!(self.op, Op::Skip { .. } | Op::Blocked { status: None, .. })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every variant's row of [`Op::parts`]: its kind, reason and exactly the objects and
    /// writes it carries, as every accessor of [`Action`] reports them.
    #[test]
    fn each_op_reports_its_own_parts() {
        let role = ObservedRole {
            namespace: "ns".into(),
            name: "app".into(),
            uid: "uid-app".into(),
            ..ObservedRole::default()
        };
        let secret = ObservedSecret {
            namespace: "ns".into(),
            name: "app".into(),
            uid: "uid-secret".into(),
            ..ObservedSecret::default()
        };
        let status = AWSIAMRoleStatus {
            role_arn: Some("arn:aws:iam::123456789012:role/app".into()),
            ..AWSIAMRoleStatus::default()
        };
        let issue = Issue {
            role: &role,
            request: CredentialRequest {
                role_arn: "arn:aws:iam::123456789012:role/app".parse().unwrap(),
                duration: 3600,
                session_name: "ns.app".into(),
                extras: SessionExtras::default(),
            },
            status: AWSIAMRoleStatus {
                expiration: Some("2026-11-26T13:00:00Z".into()),
                ..status.clone()
            },
        };
        let at: Timestamp = "2026-11-26T12:00:00Z".parse().unwrap();
        let action = |op| Action {
            namespace: "ns",
            name: "app",
            role_arn: None,
            message: String::new(),
            op,
        };
        // (op, kind, reason, role?, secret?, issue?, status written, changes nothing)
        let cases = [
            (
                Op::Create(issue.clone()),
                ActionKind::Create,
                Reason::Missing,
                true,
                false,
                true,
                Some(&issue.status),
                false,
            ),
            (
                Op::Refresh {
                    issue: issue.clone(),
                    secret: &secret,
                    reason: RefreshReason::RoleChanged,
                },
                ActionKind::Refresh,
                Reason::RoleChanged,
                true,
                true,
                true,
                Some(&issue.status),
                false,
            ),
            (
                Op::UpdateStatus {
                    role: &role,
                    secret: &secret,
                    expire: at,
                    due: at,
                    status: status.clone(),
                },
                ActionKind::UpdateStatus,
                Reason::StatusStale,
                true,
                true,
                false,
                Some(&status),
                false,
            ),
            (
                Op::Delete {
                    secret: &secret,
                    revoked: None,
                },
                ActionKind::Delete,
                Reason::OwnerGone,
                false,
                true,
                false,
                None,
                false,
            ),
            (
                Op::Delete {
                    secret: &secret,
                    revoked: Some((&role, status.clone())),
                },
                ActionKind::Delete,
                Reason::NotPermitted,
                true,
                true,
                false,
                Some(&status),
                false,
            ),
            (
                Op::Skip {
                    role: &role,
                    secret: &secret,
                    expire: at,
                    due: at,
                },
                ActionKind::Skip,
                Reason::UpToDate,
                true,
                true,
                false,
                None,
                true,
            ),
            (
                Op::Blocked {
                    role: &role,
                    secret: Some(&secret),
                    reason: BlockReason::NeedsBaseArn,
                    status: Some(status.clone()),
                },
                ActionKind::Blocked,
                Reason::NeedsBaseRoleArn,
                true,
                true,
                false,
                Some(&status),
                false,
            ),
            (
                Op::Blocked {
                    role: &role,
                    secret: None,
                    reason: BlockReason::SecretConflict,
                    status: None,
                },
                ActionKind::Blocked,
                Reason::SecretConflict,
                true,
                false,
                false,
                None,
                true,
            ),
        ];
        for (op, kind, reason, has_role, has_secret, has_issue, status, unchanged) in cases {
            let a = action(op);
            let what = format!("{kind} {reason}");
            assert_eq!((a.kind(), a.reason()), (kind, reason), "{what}");
            assert_eq!(a.role(), has_role.then_some(&role), "{what}");
            assert_eq!(a.secret(), has_secret.then_some(&secret), "{what}");
            assert_eq!(a.issue(), has_issue.then_some(&issue), "{what}");
            assert_eq!(a.status(), status, "{what}");
            assert_eq!(a.changes_nothing(), unchanged, "{what}");
            let plan = Plan {
                now: at,
                actions: vec![a],
            };
            assert_eq!(plan.is_converged(), unchanged, "{what}");
            assert_eq!(plan.summary().count(kind), 1, "{what}");
            assert_eq!(plan.summary().iter().map(|(_, n)| n).sum::<usize>(), 1);
        }
        // A refresh due exactly at the plan's own time is not waiting for the clock: the plan
        // made for that time handles it.
        let skip = |due| {
            action(Op::Skip {
                role: &role,
                secret: &secret,
                expire: at,
                due,
            })
        };
        let later = at.checked_add(jiff::SignedDuration::from_secs(1)).unwrap();
        let plan = Plan {
            now: at,
            actions: vec![skip(at)],
        };
        assert_eq!(plan.next_due(), None);
        let plan = Plan {
            now: at,
            actions: vec![skip(at), skip(later)],
        };
        assert_eq!(plan.next_due(), Some(later));
    }
}
