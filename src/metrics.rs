//! Prometheus metrics (text format on `/metrics`). Updated from each pass's report, never from
//! the planner.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::apply::PassReport;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
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

pub struct Metrics {
    registry: Registry,
    pass_duration: Histogram,
    passes: Family<ResultLabel, Counter>,
    triggers: Family<TriggerLabel, Counter>,
    actions: Family<ActionLabels, Counter>,
    sts_calls: Family<ResultLabel, Counter>,
    managed_roles: Gauge,
    earliest_expiry: Gauge<f64, AtomicU64>,
    last_success: Gauge<f64, AtomicU64>,
    own_expiry: Gauge<f64, AtomicU64>,
    leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kube_aws_iam_controller");
        let pass_duration = Histogram::new(exponential_buckets(0.005, 2.0, 16));
        let passes = Family::<ResultLabel, Counter>::default();
        let triggers = Family::<TriggerLabel, Counter>::default();
        let actions = Family::<ActionLabels, Counter>::default();
        let sts_calls = Family::<ResultLabel, Counter>::default();
        let managed_roles = Gauge::default();
        let earliest_expiry = Gauge::<f64, AtomicU64>::default();
        let last_success = Gauge::<f64, AtomicU64>::default();
        let own_expiry = Gauge::<f64, AtomicU64>::default();
        let leader = Gauge::default();
        registry.register(
            "pass_duration_seconds",
            "Duration of reconciliation passes",
            pass_duration.clone(),
        );
        registry.register(
            "passes",
            "Reconciliation passes by result (ok, failed: observation failed)",
            passes.clone(),
        );
        registry.register(
            "pass_triggers",
            "Passes of run by what started them (start, change, due, interval)",
            triggers.clone(),
        );
        registry.register(
            "actions",
            "Plan actions by kind and result",
            actions.clone(),
        );
        registry.register(
            "sts_calls",
            "STS AssumeRole calls by result (ok, throttled, denied, error)",
            sts_calls.clone(),
        );
        registry.register(
            "managed_roles",
            "AWSIAMRoles served with a readable Secret",
            managed_roles.clone(),
        );
        registry.register(
            "earliest_expiry_seconds",
            "Seconds until the earliest credential expiry among managed Secrets",
            earliest_expiry.clone(),
        );
        registry.register(
            "last_success_timestamp_seconds",
            "Unix time of the end of the last pass that observed the cluster",
            last_success.clone(),
        );
        registry.register(
            "own_credentials_expiry_timestamp_seconds",
            "Unix time at which the controller's own seed credentials expire (0 without seed credentials)",
            own_expiry.clone(),
        );
        registry.register(
            "leader",
            "1 while this process holds the leader Lease (or runs without leader election)",
            leader.clone(),
        );
        // Zero samples from the start, so a standby replica shows that it never passed.
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
        for result in ["ok", "throttled", "denied", "error"] {
            sts_calls.get_or_create(&ResultLabel { result }).inc_by(0);
        }
        Metrics {
            registry,
            pass_duration,
            passes,
            triggers,
            actions,
            sts_calls,
            managed_roles,
            earliest_expiry,
            last_success,
            own_expiry,
            leader,
        }
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

    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// Records a pass that observed the cluster (its actions may still have failed).
    pub fn record_pass(&self, report: &PassReport, now: jiff::Timestamp) {
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
        if let Some(expiry) = report.earliest_expiry {
            self.earliest_expiry
                .set((expiry.as_second() - now.as_second()) as f64);
        }
        self.last_success.set(now.as_millisecond() as f64 / 1000.0);
    }

    /// Records a pass that could not observe the cluster.
    pub fn record_failed_pass(&self, duration: std::time::Duration) {
        self.pass_duration.observe(duration.as_secs_f64());
        self.passes
            .get_or_create(&ResultLabel { result: "failed" })
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
