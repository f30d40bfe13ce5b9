//! Leader election on a `coordination.k8s.io/v1` Lease, so that two controllers never pass at
//! the same time: the replicas of a `run` Deployment, or a `once` CronJob beside them.
//!
//! Every change to the Lease is a read followed by an update conditioned on the
//! `resourceVersion` read (or a create that fails when someone else created it first), so two
//! candidates cannot both believe they won. A follower judges expiry by how long it has seen
//! the same lease record unchanged on its own monotonic clock (the holder's clock does not
//! matter), or, for a record last renewed long ago by wall clock (a crashed holder before this
//! process started), by `renewTime` plus twice the lease duration. A holder that cannot renew
//! within the renew deadline steps down before any follower may take over.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::watch;

use crate::domain::text::kube_message;

/// Default Lease name (one per cluster; `run` and `once` share it).
pub const DEFAULT_LEASE_NAME: &str = "kube-aws-iam-controller";
/// Default Lease namespace when neither the flag nor `POD_NAMESPACE` names one.
pub const DEFAULT_LEASE_NAMESPACE: &str = "kube-system";

/// Where the Lease lives, who we are, and the timing (controller-runtime's defaults:
/// 15 s lease, 10 s renew deadline, 2 s retry period).
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
    /// How long `once` waits for a Lease someone else holds.
    pub wait: Duration,
}

impl LeaseConfig {
    /// Checks the timings make sense together: a holder must give up before a follower may
    /// take over, and renew more than once in its deadline.
    pub fn validate(&self) -> Result<(), String> {
        if self.duration < Duration::from_secs(1) {
            return Err("--lease-duration must be at least 1s".into());
        }
        if self.renew_deadline >= self.duration {
            return Err("--lease-renew-deadline must be shorter than --lease-duration".into());
        }
        if self.retry_period.is_zero() || self.retry_period * 2 > self.renew_deadline {
            return Err(
                "--lease-retry-period must be positive and at most half of --lease-renew-deadline"
                    .into(),
            );
        }
        Ok(())
    }

    /// This process's identity: the pod name (or the host name) and the process id, so two
    /// processes on one host are two candidates.
    pub fn default_identity() -> String {
        let host = std::env::var("POD_NAME")
            .ok()
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
            .or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .ok()
                    .map(|h| h.trim().to_string())
                    .filter(|h| !h.is_empty())
            })
            .unwrap_or_else(|| "kube-aws-iam-controller".into());
        format!("{host}_{}", std::process::id())
    }
}

/// What one attempt found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// We hold the Lease (just acquired or renewed).
    Leading,
    /// Someone else holds a live Lease.
    Following { holder: String },
}

/// Errors talking to the API about the Lease.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("Lease {namespace}/{name}: {message}")]
    Api {
        namespace: String,
        name: String,
        message: String,
    },
    #[error(
        "Lease {namespace}/{name} is held by {holder}: another controller (a `run` replica or \
         another `once`) is passing; waited {waited}"
    )]
    Held {
        namespace: String,
        name: String,
        holder: String,
        waited: String,
    },
}

/// The record a follower watches for changes, and when it last changed.
struct Observation {
    key: (Option<String>, Option<Timestamp>, Option<i32>),
    since: Instant,
}

/// One candidate.
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
    observed: Mutex<Option<Observation>>,
}

impl LeaderElector {
    pub fn new(client: Client, config: LeaseConfig) -> Self {
        LeaderElector {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: Mutex::new(None),
        }
    }

    pub fn config(&self) -> &LeaseConfig {
        &self.config
    }

    fn error(&self, e: &kube::Error) -> LeaseError {
        LeaseError::Api {
            namespace: self.config.namespace.clone(),
            name: self.config.name.clone(),
            message: kube_message(e),
        }
    }

    fn spec(&self, now: Timestamp, acquire: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.config.duration.as_secs().max(1)).unwrap_or(i32::MAX),
            ),
            acquire_time: Some(acquire.unwrap_or(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// One round: create, renew or take over the Lease if we may; otherwise report its holder.
    pub async fn try_acquire_or_renew(&self) -> Result<Attempt, LeaseError> {
        let now = Timestamp::now();
        let current = self.api.get_opt(&self.config.name).await;
        let Some(mut lease) = current.map_err(|e| self.error(&e))? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(now, None, 0)),
            };
            let created = self.api.create(&PostParams::default(), &lease).await;
            return self.written(created, "created");
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let unchanged_for = self.unchanged_for(&spec, holder.clone());
        let mine = holder.as_deref() == Some(self.config.identity.as_str());
        if !mine && let Some(holder) = holder {
            if !self.expired(&spec, unchanged_for, now) {
                return Ok(Attempt::Following { holder });
            }
            tracing::info!(previous = %holder, "the leader lease expired; taking it over");
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!mine);
        let acquire = if mine { spec.acquire_time } else { None };
        lease.spec = Some(self.spec(now, acquire, transitions));
        let params = PostParams::default();
        let replaced = self.api.replace(&self.config.name, &params, &lease).await;
        self.written(replaced, "changed")
    }

    /// How long this candidate has seen the Lease's holder, renew time and transitions unchanged
    /// (by its own monotonic clock, so another node's clock cannot make a lease look expired).
    fn unchanged_for(&self, spec: &LeaseSpec, holder: Option<String>) -> Duration {
        let key = (
            holder,
            spec.renew_time.as_ref().map(|t| t.0),
            spec.lease_transitions,
        );
        let mut observed = self.observed.lock().unwrap_or_else(|p| p.into_inner());
        match observed.as_ref() {
            Some(o) if o.key == key => o.since.elapsed(),
            _ => {
                *observed = Some(Observation {
                    key,
                    since: Instant::now(),
                });
                Duration::ZERO
            }
        }
    }

    /// Whether another holder's Lease may be taken over: unchanged for its whole duration, or
    /// renewed longer ago than twice that by the wall clock.
    fn expired(&self, spec: &LeaseSpec, unchanged_for: Duration, now: Timestamp) -> bool {
        let duration = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map(Duration::from_secs)
            .unwrap_or(self.config.duration);
        let stale_by_wall_clock = spec.renew_time.as_ref().is_none_or(|t| {
            let age = now.duration_since(t.0).as_secs_f64();
            age > 2.0 * duration.as_secs_f64()
        });
        unchanged_for >= duration || stale_by_wall_clock
    }

    /// The outcome of writing the Lease; a conflict means another candidate `raced` it first.
    fn written(&self, result: kube::Result<Lease>, raced: &str) -> Result<Attempt, LeaseError> {
        match result {
            Ok(_) => Ok(Attempt::Leading),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Following {
                holder: format!("another candidate ({raced} it first)"),
            }),
            Err(e) => Err(self.error(&e)),
        }
    }

    /// One round trip, bounded: an API server that accepts connections and never answers must
    /// not keep a leader from stepping down before its renew deadline (half of it, so a
    /// retry still fits).
    async fn bounded_attempt(&self) -> Result<Attempt, LeaseError> {
        let deadline = self.config.renew_deadline / 2;
        match tokio::time::timeout(deadline, self.try_acquire_or_renew()).await {
            Ok(attempt) => attempt,
            Err(_) => Err(LeaseError::Api {
                namespace: self.config.namespace.clone(),
                name: self.config.name.clone(),
                message: format!(
                    "the API server did not answer within {}",
                    humantime::format_duration(deadline)
                ),
            }),
        }
    }

    /// Gives the Lease up (only if we still hold it), so a successor need not wait for expiry.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.config.name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!(lease = %self.config.name, "released the leader lease"),
            Err(e) => {
                tracing::warn!(error = %kube_message(&e), "could not release the leader lease")
            }
        }
    }

    /// Waits (at most `wait`) until we hold the Lease; for `once`.
    pub async fn acquire_within(&self, wait: Duration) -> Result<(), LeaseError> {
        let start = Instant::now();
        let mut logged = false;
        loop {
            let attempt = self.bounded_attempt().await;
            match attempt {
                Ok(Attempt::Leading) => return Ok(()),
                Ok(Attempt::Following { holder }) => {
                    if start.elapsed() >= wait {
                        return Err(LeaseError::Held {
                            namespace: self.config.namespace.clone(),
                            name: self.config.name.clone(),
                            holder,
                            waited: humantime::format_duration(Duration::from_secs(
                                start.elapsed().as_secs(),
                            ))
                            .to_string(),
                        });
                    }
                    if !logged {
                        tracing::info!(%holder, "waiting for the leader lease");
                        logged = true;
                    }
                }
                Err(e) if start.elapsed() >= wait => return Err(e),
                Err(e) => tracing::warn!(error = %e, "leader lease"),
            }
            tokio::time::sleep(self.config.retry_period).await;
        }
    }

    /// Keeps trying to lead (and then to renew) every retry period, publishing whether we lead
    /// and, on every successful round trip, that the API was reachable. A leader that cannot
    /// renew within the renew deadline, or finds another holder, publishes `false`.
    pub async fn campaign(&self, leading: watch::Sender<bool>, contact: watch::Sender<Instant>) {
        // Called right after acquiring (by `once`), the Lease was renewed just now.
        let mut last_renew = leading.borrow().then(Instant::now);
        loop {
            let attempt = self.bounded_attempt().await;
            let was = *leading.borrow();
            let now_leading = match (&attempt, was) {
                (Ok(Attempt::Leading), _) => {
                    last_renew = Some(Instant::now());
                    true
                }
                (Ok(Attempt::Following { holder }), true) => {
                    tracing::error!(%holder, "lost the leader lease to another holder");
                    false
                }
                (Err(e), true) => {
                    let overdue =
                        last_renew.is_none_or(|t| t.elapsed() >= self.config.renew_deadline);
                    if overdue {
                        tracing::error!(error = %e, "could not renew the leader lease within the renew deadline; stepping down");
                        false
                    } else {
                        tracing::warn!(error = %e, "leader lease renewal failed; retrying");
                        true
                    }
                }
                (Ok(Attempt::Following { .. }), false) => false,
                (Err(e), false) => {
                    tracing::warn!(error = %e, "leader lease");
                    false
                }
            };
            if now_leading != was {
                if now_leading {
                    tracing::info!(identity = %self.config.identity, "became the leader");
                }
                leading.send_replace(now_leading);
            }
            // After `leading`, so a receiver that sees the contact also sees who leads.
            if attempt.is_ok() {
                contact.send_replace(Instant::now());
            }
            tokio::time::sleep(self.config.retry_period).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(duration: u64, deadline: u64, retry: u64) -> LeaseConfig {
        LeaseConfig {
            namespace: "kube-system".into(),
            name: DEFAULT_LEASE_NAME.into(),
            identity: "a_1".into(),
            duration: Duration::from_secs(duration),
            renew_deadline: Duration::from_secs(deadline),
            retry_period: Duration::from_secs(retry),
            wait: Duration::from_secs(30),
        }
    }

    #[test]
    fn a_holder_gives_up_before_a_follower_may_take_over() {
        assert_eq!(config(15, 10, 2).validate(), Ok(()));
        let e = config(10, 10, 2).validate().unwrap_err();
        assert!(e.contains("--lease-renew-deadline"), "{e}");
        let e = config(15, 10, 6).validate().unwrap_err();
        assert!(e.contains("--lease-retry-period"), "{e}");
        let e = config(0, 0, 0).validate().unwrap_err();
        assert!(e.contains("--lease-duration"), "{e}");
    }

    #[test]
    fn identities_of_two_processes_differ_by_pid() {
        let id = LeaseConfig::default_identity();
        assert!(id.ends_with(&format!("_{}", std::process::id())), "{id}");
    }
}
