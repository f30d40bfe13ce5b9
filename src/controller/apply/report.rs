//! What a pass did: per-action outcomes, summarised for the log line, metrics and the exit code.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use jiff::Timestamp;

use crate::controller::plan::{self, ActionKind};

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
