//! Prometheus metrics (OpenMetrics text on `/metrics`). Updated from each pass's plan and
//! report, never from the planner. `docs/operations.md` lists every metric in a table that a
//! test regenerates from a scrape of the running binary.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use jiff::Timestamp;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Unit;

use crate::controller::apply::{Outcome, PassReport, Stage};
use crate::controller::plan::{ActionKind, Plan, Reason};
use crate::domain::secret;
use crate::serve::metrics::{MetricsRegistry, ResultLabel};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TriggerLabel {
    trigger: &'static str,
}

/// What started a pass of `run`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// The first pass, or the first after taking the leader Lease.
    Start,
    /// A watched object changed (debounced).
    Change,
    /// The last plan said something falls due now (a refresh margin, a `retryAfter`).
    Due,
    /// `--interval` passed since the last pass.
    Interval,
}

impl Trigger {
    pub const ALL: [Trigger; 4] = [
        Trigger::Start,
        Trigger::Change,
        Trigger::Due,
        Trigger::Interval,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Start => "start",
            Trigger::Change => "change",
            Trigger::Due => "due",
            Trigger::Interval => "interval",
        }
    }
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an AWSIAMRole stands after a pass: the `state` of `roles`. Every AWSIAMRole of the plan
/// is in exactly one; an orphaned Secret (its AWSIAMRole gone) is in none.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RoleState {
    /// Its credentials are served and its action succeeded (or there was nothing to do), so
    /// its status counts no failed attempt.
    Ready,
    /// The plan will not serve it until someone changes something: an invalid spec, a role the
    /// namespace may not use (its Secret is deleted), an unmanaged Secret holding the name.
    Blocked,
    /// Earlier attempts to issue its credentials failed; no STS call before its `retryAfter`.
    /// Whatever Secret it has stays in place meanwhile.
    BackingOff,
    /// Its action failed in this pass (AssumeRole, the Secret write or the status write).
    Failing,
    /// Its action was not carried out: a dry run, a shutdown or a lost leader Lease stopped
    /// it before it started, or the AWSIAMRole was deleted or re-created while it ran. The
    /// next pass plans it again.
    Pending,
}

impl RoleState {
    pub const ALL: [RoleState; 5] = [
        RoleState::Ready,
        RoleState::Blocked,
        RoleState::BackingOff,
        RoleState::Failing,
        RoleState::Pending,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RoleState::Ready => "ready",
            RoleState::Blocked => "blocked",
            RoleState::BackingOff => "backing_off",
            RoleState::Failing => "failing",
            RoleState::Pending => "pending",
        }
    }

    /// The state of the AWSIAMRole an action of `kind` and `reason` is for, once the action
    /// ended with `outcome`; `None` for the delete of an orphaned Secret, which has no
    /// AWSIAMRole. A blocked role stays blocked whatever its status write did: what it needs is
    /// a user's change, not a retry.
    pub fn of(kind: ActionKind, reason: Reason, outcome: &Outcome) -> Option<RoleState> {
        match (kind, reason) {
            (ActionKind::Delete, Reason::NotPermitted) => Some(RoleState::Blocked),
            (ActionKind::Delete, _) => None,
            (ActionKind::Blocked, Reason::BackingOff) => Some(RoleState::BackingOff),
            (ActionKind::Blocked, _) => Some(RoleState::Blocked),
            (
                ActionKind::Create
                | ActionKind::Refresh
                | ActionKind::UpdateStatus
                | ActionKind::Skip,
                _,
            ) => Some(match outcome {
                Outcome::Done => RoleState::Ready,
                Outcome::Failed { .. } => RoleState::Failing,
                Outcome::NotStarted | Outcome::Superseded => RoleState::Pending,
            }),
        }
    }
}

/// The AWSIAMRoles of a pass by state, and how long the credentials last that could not be
/// renewed: what `roles` and `failing_roles_earliest_expiry_seconds` export.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoleCensus {
    pub states: BTreeMap<RoleState, usize>,
    /// The earliest expiry of the credentials still in the Secrets of roles whose credentials
    /// could not be renewed: backing off, or failing at AssumeRole or at the Secret write. A
    /// role failing only at its status write got its new credentials and does not count.
    pub failing_expiry: Option<Timestamp>,
}

impl RoleCensus {
    /// Counts the roles of `plan` by the outcomes `report` gives their actions. An action the
    /// report does not name was not carried out (a dry run reports none), unless it needed
    /// nothing to be done.
    pub fn of(plan: &Plan<'_>, report: &PassReport) -> RoleCensus {
        let outcomes: HashMap<(&str, &str), &Outcome> = report
            .actions
            .iter()
            .map(|a| ((a.namespace.as_str(), a.name.as_str()), &a.outcome))
            .collect();
        let mut census = RoleCensus::default();
        for action in &plan.actions {
            let outcome = match outcomes.get(&(action.namespace, action.name)) {
                Some(outcome) => outcome,
                None if action.changes_nothing() => &Outcome::Done,
                None => &Outcome::NotStarted,
            };
            let Some(state) = RoleState::of(action.kind(), action.reason(), outcome) else {
                continue;
            };
            *census.states.entry(state).or_insert(0) += 1;
            let not_renewed = match (state, outcome) {
                (RoleState::BackingOff, _) => true,
                (RoleState::Failing, Outcome::Failed { stage, .. }) => *stage != Stage::Status,
                _ => false,
            };
            // The Secret as observed: what is still in place when no new one was written.
            let held = action
                .secret()
                .filter(|_| not_renewed)
                .and_then(|s| secret::decode(s).ok());
            if let Some(content) = held {
                census.failing_expiry = Some(
                    census
                        .failing_expiry
                        .map_or(content.expire, |e| e.min(content.expire)),
                );
            }
        }
        census
    }

    pub fn count(&self, state: RoleState) -> usize {
        self.states.get(&state).copied().unwrap_or(0)
    }
}

/// Expiries kept as times, so that the "seconds until" gauges count down between passes (and
/// keep counting while passes fail) instead of freezing at the last pass's value.
#[derive(Default)]
struct Expiries {
    /// Among the served AWSIAMRoles' Secrets.
    earliest: Option<Timestamp>,
    /// See [`RoleCensus::failing_expiry`].
    failing: Option<Timestamp>,
}

/// Seconds from `now` until `expiry`; +Inf without an expiry, so that an alert such as
/// `x < 1800` never fires when there is nothing to expire.
fn seconds_until(expiry: Option<Timestamp>, now: Timestamp) -> f64 {
    match expiry {
        Some(expiry) => (expiry.as_millisecond() - now.as_millisecond()) as f64 / 1000.0,
        None => f64::INFINITY,
    }
}

pub struct Metrics {
    registry: MetricsRegistry,
    pass_duration: Histogram,
    passes: Family<ResultLabel, Counter>,
    triggers: Family<TriggerLabel, Counter>,
    actions: Family<ActionLabels, Counter>,
    sts_calls: Family<ResultLabel, Counter>,
    managed_roles: Gauge,
    roles: Family<StateLabel, Gauge>,
    earliest_expiry: Gauge<f64, AtomicU64>,
    failing_expiry: Gauge<f64, AtomicU64>,
    expiries: Mutex<Expiries>,
    last_success: Gauge<f64, AtomicU64>,
    own_expiry: Gauge<f64, AtomicU64>,
    leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Results of actions (`Outcome::metric_label`), all exported from the start.
const ACTION_RESULTS: [&str; 4] = ["ok", "failed", "not_started", "superseded"];

impl Metrics {
    pub fn new() -> Self {
        let mut registry = MetricsRegistry::new("kube_aws_iam_controller");
        let pass_duration = Histogram::new(exponential_buckets(0.005, 2.0, 16));
        let passes = Family::<ResultLabel, Counter>::default();
        let triggers = Family::<TriggerLabel, Counter>::default();
        let actions = Family::<ActionLabels, Counter>::default();
        let sts_calls = Family::<ResultLabel, Counter>::default();
        let managed_roles = Gauge::default();
        let roles = Family::<StateLabel, Gauge>::default();
        let earliest_expiry = Gauge::<f64, AtomicU64>::default();
        let failing_expiry = Gauge::<f64, AtomicU64>::default();
        let last_success = Gauge::<f64, AtomicU64>::default();
        let own_expiry = Gauge::<f64, AtomicU64>::default();
        let leader = Gauge::default();
        // Names without the unit: `register_with_unit` appends `_seconds` and writes the
        // OpenMetrics `# UNIT` line.
        registry.register_with_unit(
            "pass_duration",
            "Duration of reconciliation passes (observation, plan and actions), in seconds",
            Unit::Seconds,
            pass_duration.clone(),
        );
        registry.register(
            "passes",
            "Reconciliation passes by result: ok, or failed when the cluster could not be observed",
            passes.clone(),
        );
        registry.register(
            "pass_triggers",
            "Passes of run by what started them: start, change, due, interval",
            triggers.clone(),
        );
        registry.register(
            "actions",
            "Plan actions by kind (create, refresh, update-status, delete, skip, blocked) and result (ok, failed, not_started, superseded)",
            actions.clone(),
        );
        registry.register(
            "sts_calls",
            "STS AssumeRole calls by result: ok, throttled, denied, error",
            sts_calls.clone(),
        );
        registry.register(
            "managed_roles",
            "AWSIAMRoles served with a readable Secret after the last pass",
            managed_roles.clone(),
        );
        registry.register(
            "roles",
            "AWSIAMRoles by state after the last pass: ready, blocked (a user must change something), backing_off (waiting for retryAfter after failures), failing (its action failed in the last pass), pending (its action was not carried out); all 0 on a standby replica",
            roles.clone(),
        );
        registry.register_with_unit(
            "earliest_expiry",
            "Seconds until the earliest credential expiry among the Secrets of served AWSIAMRoles; +Inf when there is none",
            Unit::Seconds,
            earliest_expiry.clone(),
        );
        registry.register_with_unit(
            "failing_roles_earliest_expiry",
            "Seconds until the earliest credential expiry among AWSIAMRoles whose credentials could not be renewed (failing or backing_off, with credentials still in their Secret); +Inf when there is none",
            Unit::Seconds,
            failing_expiry.clone(),
        );
        registry.register_with_unit(
            "last_success_timestamp",
            "Unix time, in seconds, at the end of the last pass that observed the cluster",
            Unit::Seconds,
            last_success.clone(),
        );
        registry.register_with_unit(
            "own_credentials_expiry_timestamp",
            "Unix time, in seconds, at which the controller's own seed credentials expire; 0 without seed credentials",
            Unit::Seconds,
            own_expiry.clone(),
        );
        registry.register(
            "leader",
            "1 while this process holds the leader Lease (or runs without leader election), else 0",
            leader.clone(),
        );
        // Every series from the start, so a standby replica shows that it never passed and a
        // rate or an alert over any label value has a series to read.
        for result in ["ok", "failed"] {
            passes.get_or_create(&ResultLabel { result }).inc_by(0);
        }
        for trigger in Trigger::ALL {
            triggers
                .get_or_create(&TriggerLabel {
                    trigger: trigger.as_str(),
                })
                .inc_by(0);
        }
        for kind in ActionKind::ALL {
            for result in ACTION_RESULTS {
                actions
                    .get_or_create(&ActionLabels {
                        action: kind.as_str(),
                        result,
                    })
                    .inc_by(0);
            }
        }
        for result in ["ok", "throttled", "denied", "error"] {
            sts_calls.get_or_create(&ResultLabel { result }).inc_by(0);
        }
        let metrics = Metrics {
            registry,
            pass_duration,
            passes,
            triggers,
            actions,
            sts_calls,
            managed_roles,
            roles,
            earliest_expiry,
            failing_expiry,
            expiries: Mutex::new(Expiries::default()),
            last_success,
            own_expiry,
            leader,
        };
        metrics.set_roles(&RoleCensus::default());
        metrics
    }

    /// The expiry of the credentials the controller itself signs with (seed credentials).
    pub fn set_own_expiry(&self, expiry: jiff::Timestamp) {
        self.own_expiry.set(expiry.as_second() as f64);
    }

    /// Counts a pass of `run` by what started it.
    pub fn record_trigger(&self, trigger: Trigger) {
        self.triggers
            .get_or_create(&TriggerLabel {
                trigger: trigger.as_str(),
            })
            .inc();
    }

    /// A replica that stands by reports no roles: only the leader's numbers are current, and a
    /// former leader's would never change again (nor resolve the alerts they raised).
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
        if !leading {
            self.set_roles(&RoleCensus::default());
            self.expiries().earliest = None;
        }
    }

    fn expiries(&self) -> std::sync::MutexGuard<'_, Expiries> {
        self.expiries.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_roles(&self, census: &RoleCensus) {
        for state in RoleState::ALL {
            self.roles
                .get_or_create(&StateLabel {
                    state: state.as_str(),
                })
                .set(census.count(state) as i64);
        }
        self.expiries().failing = census.failing_expiry;
    }

    /// Records a pass that observed the cluster (its actions may still have failed): `report`
    /// of applying `plan` (empty in a dry run).
    pub fn record_pass(&self, plan: &Plan<'_>, report: &PassReport, now: jiff::Timestamp) {
        self.pass_duration.observe(report.duration.as_secs_f64());
        self.passes
            .get_or_create(&ResultLabel { result: "ok" })
            .inc();
        for ((kind, result), n) in report.counts() {
            self.actions
                .get_or_create(&ActionLabels {
                    action: kind.as_str(),
                    result,
                })
                .inc_by(n as u64);
        }
        for (result, n) in &report.sts_calls {
            self.sts_calls
                .get_or_create(&ResultLabel { result })
                .inc_by(*n as u64);
        }
        self.managed_roles.set(report.managed_roles as i64);
        self.set_roles(&RoleCensus::of(plan, report));
        self.expiries().earliest = report.earliest_expiry;
        self.last_success.set(now.as_millisecond() as f64 / 1000.0);
    }

    /// Records a pass that could not observe the cluster.
    pub fn record_failed_pass(&self, duration: std::time::Duration) {
        self.pass_duration.observe(duration.as_secs_f64());
        self.passes
            .get_or_create(&ResultLabel { result: "failed" })
            .inc();
    }

    /// The OpenMetrics text exposition, the expiry gauges counted down to now.
    pub fn encode(&self) -> String {
        self.encode_at(Timestamp::now())
    }

    fn encode_at(&self, now: Timestamp) -> String {
        {
            let expiries = self.expiries();
            self.earliest_expiry
                .set(seconds_until(expiries.earliest, now));
            self.failing_expiry
                .set(seconds_until(expiries.failing, now));
        }
        self.registry.encode()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::controller::apply::ActionReport;
    use crate::controller::plan::tests::role;
    use crate::controller::plan::{PlanConfig, plan};
    use crate::domain::crd::AWSIAMRoleStatus;
    use crate::domain::model::{Observed, ObservedRole, ObservedSecret};

    const BASE: &str = "arn:aws:iam::123456789012:role/";

    fn now() -> Timestamp {
        "2026-11-26T12:00:00Z".parse().unwrap()
    }

    /// A Secret for `role` holding one-hour credentials that expire `left` seconds from now.
    fn secret_for(role: &ObservedRole, left: i64) -> ObservedSecret {
        let expiration = Timestamp::from_second(now().as_second() + left).unwrap();
        let issued = Timestamp::from_second(expiration.as_second() - 3600).unwrap();
        let creds = secret::Credentials {
            access_key_id: "ASIA".into(),
            secret_access_key: "s".into(),
            session_token: "t".into(),
            expiration,
        };
        let arn = format!("{BASE}app-{}", role.name);
        ObservedSecret::from_secret(&secret::build(role, &arn, &creds, issued))
    }

    fn report(outcomes: &[(&str, Outcome)], plan: &Plan<'_>) -> PassReport {
        let mut report = PassReport::default();
        for a in &plan.actions {
            let outcome = outcomes
                .iter()
                .find(|(name, _)| *name == a.name)
                .map_or(Outcome::Done, |(_, o)| o.clone());
            report.actions.push(ActionReport {
                namespace: a.namespace.into(),
                name: a.name.into(),
                kind: a.kind(),
                reason: a.reason(),
                outcome,
            });
        }
        report
    }

    fn failed(stage: Stage) -> Outcome {
        Outcome::Failed {
            stage,
            message: "m".into(),
        }
    }

    /// Every kind of action the planner makes for a role, in one observed state: which state
    /// each role ends in, and whose credentials count as not renewed.
    struct Cluster {
        observed: Observed,
        config: PlanConfig,
    }

    impl Cluster {
        fn new() -> Cluster {
            let new = role("new");
            let stopped = role("stopped");
            let denied = role("denied");
            let unwritable = role("unwritable");
            let status_refused = role("status-refused");
            let served = role("served");
            let mut waiting = role("waiting");
            waiting.status = Some(AWSIAMRoleStatus {
                observed_generation: Some(1),
                failed_attempts: Some(2),
                retry_after: Some("2026-11-26T12:01:00Z".into()),
                ..AWSIAMRoleStatus::default()
            });
            let mut invalid = role("invalid");
            invalid.spec = Err("spec.roleSessionDuration: below 900".into());
            let secrets = vec![
                // Due (within the margin); each is what stays in place if renewal fails.
                secret_for(&denied, 600),
                secret_for(&unwritable, 500),
                secret_for(&waiting, 400),
                // Renewed, only its status write failed: it must not count.
                secret_for(&status_refused, 100),
                // Fine; its status is missing, so it gets an UpdateStatus.
                secret_for(&served, 3000),
                // No AWSIAMRole: an orphan's delete, in no state.
                secret_for(&role("orphan"), 3000),
            ];
            let roles = vec![
                new,
                stopped,
                denied,
                unwritable,
                status_refused,
                served,
                waiting,
                invalid,
            ];
            let config = PlanConfig {
                base_role_arn: Some(BASE.parse().unwrap()),
                ..PlanConfig::default()
            };
            let observed = Observed {
                roles: roles.into_iter().map(Arc::new).collect(),
                secrets: secrets.into_iter().map(Arc::new).collect(),
                ..Observed::default()
            };
            Cluster { observed, config }
        }
    }

    #[test]
    fn every_role_is_in_exactly_one_state() {
        let cluster = Cluster::new();
        let plan = plan(&cluster.observed, now(), &cluster.config);
        let kinds: Vec<(&str, ActionKind, Reason)> = plan
            .actions
            .iter()
            .map(|a| (a.name, a.kind(), a.reason()))
            .collect();
        let expected_kinds = [
            ("denied", ActionKind::Refresh, Reason::Expiring),
            ("invalid", ActionKind::Blocked, Reason::InvalidSpec),
            ("new", ActionKind::Create, Reason::Missing),
            ("orphan", ActionKind::Delete, Reason::OwnerGone),
            ("served", ActionKind::UpdateStatus, Reason::StatusStale),
            ("status-refused", ActionKind::Refresh, Reason::Expiring),
            ("stopped", ActionKind::Create, Reason::Missing),
            ("unwritable", ActionKind::Refresh, Reason::Expiring),
            ("waiting", ActionKind::Blocked, Reason::BackingOff),
        ];
        assert_eq!(kinds, expected_kinds, "the state the census is tested on");
        let report = report(
            &[
                ("stopped", Outcome::NotStarted),
                ("denied", failed(Stage::Sts)),
                ("unwritable", failed(Stage::Secret)),
                ("status-refused", failed(Stage::Status)),
            ],
            &plan,
        );
        let census = RoleCensus::of(&plan, &report);
        let counts: Vec<(RoleState, usize)> = census.states.clone().into_iter().collect();
        assert_eq!(
            counts,
            [
                (RoleState::Ready, 2),      // new, served
                (RoleState::Blocked, 1),    // invalid
                (RoleState::BackingOff, 1), // waiting
                (RoleState::Failing, 3),    // denied, unwritable, status-refused
                (RoleState::Pending, 1),    // stopped
            ]
        );
        assert_eq!(
            census.states.values().sum::<usize>(),
            cluster.observed.roles.len(),
            "one state per AWSIAMRole, none for the orphan"
        );
        // `waiting` (400 s) is the earliest not renewed; `status-refused` (100 s) was renewed.
        assert_eq!(
            census.failing_expiry,
            Some(Timestamp::from_second(now().as_second() + 400).unwrap())
        );
    }

    #[test]
    fn a_dry_run_leaves_what_needs_an_action_pending() {
        let cluster = Cluster::new();
        let plan = plan(&cluster.observed, now(), &cluster.config);
        let census = RoleCensus::of(&plan, &PassReport::default());
        let counts: Vec<(RoleState, usize)> = census.states.into_iter().collect();
        assert_eq!(
            counts,
            [
                (RoleState::Blocked, 1),
                (RoleState::BackingOff, 1),
                (RoleState::Pending, 6),
            ]
        );
        assert_eq!(
            census.failing_expiry,
            Some(Timestamp::from_second(now().as_second() + 400).unwrap())
        );
    }

    #[test]
    fn states_by_action_and_outcome() {
        use ActionKind::*;
        let done = Outcome::Done;
        let sts = failed(Stage::Sts);
        let status = failed(Stage::Status);
        let cases = [
            (Create, Reason::Missing, &done, Some(RoleState::Ready)),
            (Create, Reason::Missing, &sts, Some(RoleState::Failing)),
            (Refresh, Reason::Expiring, &status, Some(RoleState::Failing)),
            (
                UpdateStatus,
                Reason::StatusStale,
                &status,
                Some(RoleState::Failing),
            ),
            (Skip, Reason::UpToDate, &done, Some(RoleState::Ready)),
            (
                Refresh,
                Reason::SpecChanged,
                &Outcome::NotStarted,
                Some(RoleState::Pending),
            ),
            (
                Create,
                Reason::Missing,
                &Outcome::Superseded,
                Some(RoleState::Pending),
            ),
            (
                Blocked,
                Reason::BackingOff,
                &done,
                Some(RoleState::BackingOff),
            ),
            (
                Blocked,
                Reason::InvalidSpec,
                &done,
                Some(RoleState::Blocked),
            ),
            (
                Blocked,
                Reason::SecretConflict,
                &status,
                Some(RoleState::Blocked),
            ),
            (
                Blocked,
                Reason::NotPermitted,
                &done,
                Some(RoleState::Blocked),
            ),
            (
                Blocked,
                Reason::NeedsBaseRoleArn,
                &done,
                Some(RoleState::Blocked),
            ),
            (
                Delete,
                Reason::NotPermitted,
                &done,
                Some(RoleState::Blocked),
            ),
            (
                Delete,
                Reason::NotPermitted,
                &status,
                Some(RoleState::Blocked),
            ),
            (Delete, Reason::OwnerGone, &done, None),
            (Delete, Reason::OwnerGone, &Outcome::Superseded, None),
        ];
        for (kind, reason, outcome, expected) in cases {
            assert_eq!(
                RoleState::of(kind, reason, outcome),
                expected,
                "{kind} {reason} {outcome:?}"
            );
        }
    }

    fn sample<'t>(text: &'t str, series: &str) -> &'t str {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    }

    const ROLES: &str = "kube_aws_iam_controller_roles";
    const FAILING_EXPIRY: &str = "kube_aws_iam_controller_failing_roles_earliest_expiry_seconds";
    const EARLIEST: &str = "kube_aws_iam_controller_earliest_expiry_seconds";

    #[test]
    fn every_state_is_exported_and_no_expiry_is_plus_inf() {
        let text = Metrics::new().encode_at(now());
        for state in RoleState::ALL {
            let series = format!("{ROLES}{{state=\"{}\"}}", state.as_str());
            assert_eq!(sample(&text, &series), "0");
        }
        assert_eq!(sample(&text, FAILING_EXPIRY), "+Inf");
        assert_eq!(sample(&text, EARLIEST), "+Inf");
        assert!(!text.contains(" inf\n"), "{text}");
        assert!(
            text.contains(&format!("# UNIT {FAILING_EXPIRY} seconds\n")),
            "{text}"
        );
    }

    #[test]
    fn expiries_count_down_between_passes_and_a_standby_reports_nothing() {
        let cluster = Cluster::new();
        let plan = plan(&cluster.observed, now(), &cluster.config);
        let report = report(&[("denied", failed(Stage::Sts))], &plan);
        let metrics = Metrics::new();
        metrics.record_pass(&plan, &report, now());
        let text = metrics.encode_at(now());
        assert_eq!(sample(&text, &format!("{ROLES}{{state=\"failing\"}}")), "1");
        assert_eq!(sample(&text, &format!("{ROLES}{{state=\"ready\"}}")), "5");
        assert_eq!(sample(&text, FAILING_EXPIRY), "400.0");
        // Ten seconds later, without a pass.
        let later = Timestamp::from_second(now().as_second() + 10).unwrap();
        assert_eq!(sample(&metrics.encode_at(later), FAILING_EXPIRY), "390.0");

        metrics.set_leader(false);
        let text = metrics.encode_at(later);
        for state in RoleState::ALL {
            let series = format!("{ROLES}{{state=\"{}\"}}", state.as_str());
            assert_eq!(sample(&text, &series), "0", "{series} on a standby");
        }
        assert_eq!(sample(&text, FAILING_EXPIRY), "+Inf");
        assert_eq!(sample(&text, EARLIEST), "+Inf");
    }

    /// What the alerts on STS read: calls by result, from the pass report, and passes that
    /// could not observe the cluster.
    #[test]
    fn sts_results_and_failed_passes_reach_their_counters() {
        let cluster = Cluster::new();
        let plan = plan(&cluster.observed, now(), &cluster.config);
        let mut report = report(&[("denied", failed(Stage::Sts))], &plan);
        report.sts_calls = [("ok", 4), ("throttled", 2), ("denied", 1)].into();
        let metrics = Metrics::new();
        metrics.record_pass(&plan, &report, now());
        metrics.record_failed_pass(std::time::Duration::from_millis(5));
        let text = metrics.encode_at(now());
        let sts = "kube_aws_iam_controller_sts_calls_total";
        assert_eq!(
            sample(&text, &format!("{sts}{{result=\"throttled\"}}")),
            "2"
        );
        assert_eq!(sample(&text, &format!("{sts}{{result=\"denied\"}}")), "1");
        assert_eq!(sample(&text, &format!("{sts}{{result=\"ok\"}}")), "4");
        assert_eq!(sample(&text, &format!("{sts}{{result=\"error\"}}")), "0");
        let passes = "kube_aws_iam_controller_passes_total";
        assert_eq!(sample(&text, &format!("{passes}{{result=\"ok\"}}")), "1");
        assert_eq!(
            sample(&text, &format!("{passes}{{result=\"failed\"}}")),
            "1"
        );
    }

    #[test]
    fn credentials_that_could_not_be_renewed_count_until_they_expire() {
        let mut cluster = Cluster::new();
        // Without `waiting` (backing off, 400 s), the failing roles hold the earliest expiry.
        cluster.observed.secrets.retain(|s| s.name != "waiting");
        let plan = plan(&cluster.observed, now(), &cluster.config);
        let in_seconds = |s: i64| Some(Timestamp::from_second(now().as_second() + s).unwrap());
        let all_failed = report(
            &[
                ("denied", failed(Stage::Sts)),
                ("unwritable", failed(Stage::Secret)),
                ("status-refused", failed(Stage::Status)),
            ],
            &plan,
        );
        // `status-refused` (100 s) got new credentials; `unwritable` (500 s) did not.
        assert_eq!(
            RoleCensus::of(&plan, &all_failed).failing_expiry,
            in_seconds(500)
        );
        let only_sts = report(&[("denied", failed(Stage::Sts))], &plan);
        assert_eq!(
            RoleCensus::of(&plan, &only_sts).failing_expiry,
            in_seconds(600)
        );
        assert_eq!(
            RoleCensus::of(&plan, &report(&[], &plan)).failing_expiry,
            None
        );
    }

    #[test]
    fn triggers_are_named_as_the_log_line_and_the_metric_name_them() {
        assert_eq!(
            Trigger::ALL.map(Trigger::as_str),
            ["start", "change", "due", "interval"]
        );
        assert_eq!(Trigger::Due.to_string(), "due");
        assert_eq!(format!("trigger={}", Trigger::Change), "trigger=change");
    }

    #[test]
    fn triggers_own_expiry_and_the_last_success_reach_their_series() {
        let cluster = Cluster::new();
        let plan = plan(&cluster.observed, now(), &cluster.config);
        let metrics = Metrics::new();
        metrics.record_trigger(Trigger::Change);
        metrics.record_trigger(Trigger::Change);
        metrics.record_trigger(Trigger::Due);
        let expiry = Timestamp::from_second(now().as_second() + 3600).unwrap();
        metrics.set_own_expiry(expiry);
        let at = Timestamp::from_millisecond(now().as_millisecond() + 250).unwrap();
        metrics.record_pass(&plan, &report(&[], &plan), at);
        let text = metrics.encode_at(now());
        let triggers = "kube_aws_iam_controller_pass_triggers_total";
        assert_eq!(
            sample(&text, &format!("{triggers}{{trigger=\"change\"}}")),
            "2"
        );
        assert_eq!(
            sample(&text, &format!("{triggers}{{trigger=\"due\"}}")),
            "1"
        );
        assert_eq!(
            sample(&text, &format!("{triggers}{{trigger=\"interval\"}}")),
            "0"
        );
        let number = |series: &str| sample(&text, series).parse::<f64>().unwrap();
        assert_eq!(
            number("kube_aws_iam_controller_own_credentials_expiry_timestamp_seconds"),
            expiry.as_second() as f64
        );
        assert_eq!(
            number("kube_aws_iam_controller_last_success_timestamp_seconds"),
            now().as_second() as f64 + 0.25
        );
        // The exposition at the current time holds the same families.
        assert!(
            metrics
                .encode()
                .contains(&format!("{triggers}{{trigger=\"change\"}} 2"))
        );
    }
}
