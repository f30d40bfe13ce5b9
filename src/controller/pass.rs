//! One pass (observe → plan → apply, or render in dry-run) and the drivers around it: `once`
//! (CronJob) and `run` (a loop with health and metrics, graceful on SIGTERM/SIGINT).
//!
//! `run` keeps its state with watches ([`crate::controller::store`]) unless `--watch=false`: a pass then
//! starts after a change (debounced), when the last plan says something falls due, and every
//! `--interval`, and reads the watched state instead of listing.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use kube::Client;
use tokio::sync::watch;

use crate::controller::apply::{Executor, PassReport};
use crate::controller::health::{self, Health};
use crate::controller::lease::LeaderElector;
use crate::controller::metrics::{Metrics, Trigger};
use crate::controller::observe::{ObserveOptions, find_conflicts, observe};
use crate::controller::plan::render::{OutputFormat, render, summary_line};
use crate::controller::plan::{Op, PlanConfig, plan};
use crate::controller::seed::SeedCredentials;
use crate::controller::store::Store;
use crate::controller::sts::CredentialSource;
use crate::domain::model::Observed;
use crate::{Error, Result};

/// How long in-flight work may take after SIGTERM/SIGINT before the process exits anyway.
/// With [`RELEASE_DEADLINE`] and a debounce, the process exits within 10 s of the signal
/// whatever the API server does (Kubernetes' grace period is 30 s).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(6);
/// Releasing the leader Lease on the way out is best effort: a hung API server cannot hold
/// the process longer than this (the Lease then expires on its own).
const RELEASE_DEADLINE: Duration = Duration::from_secs(2);
/// A change starts a pass once the watches have been quiet this long ...
const DEBOUNCE_QUIET: Duration = Duration::from_millis(150);
/// ... or this long after the first change of a burst, whichever comes first.
const DEBOUNCE_MAX: Duration = Duration::from_millis(600);
/// How long after the earliest due time its pass starts, so that Secrets falling due within
/// that second are refreshed by one pass (and the plan made then, in whole seconds, sees them
/// due); refresh margins are minutes long.
const DUE_SLACK: Duration = Duration::from_secs(1);

/// How passes run. `commands` builds it from the command line; tests and benchmarks build it
/// directly.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    pub plan: PlanConfig,
    pub observe: ObserveOptions,
    /// Actions (STS call and writes) in flight at once.
    pub concurrency: usize,
    /// The controller's own AWSIAMRole (namespace, name), applied before any other action.
    pub own_role: Option<(String, String)>,
    /// `run` keeps its state with watches (`--watch`); `once` and `plan` always list.
    pub watch: bool,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            plan: PlanConfig::default(),
            observe: ObserveOptions::default(),
            concurrency: 8,
            own_role: None,
            watch: false,
        }
    }
}

/// How a dry run prints its plan.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rendering {
    pub format: OutputFormat,
    /// Also list up-to-date roles.
    pub verbose: bool,
}

/// What a pass does with its plan, decided once when the controller is built.
enum Mode {
    Apply(Box<Executor>),
    /// No STS calls and no writes: the plan is rendered instead.
    DryRun(Rendering),
}

/// Everything a pass needs, built once.
pub struct Controller {
    client: Client,
    mode: Mode,
    observe: ObserveOptions,
    config: PlanConfig,
    pub metrics: Arc<Metrics>,
    /// Seed credentials the STS client signs with, when the controller runs on its own
    /// AWSIAMRole's Secret.
    seed: Option<Arc<SeedCredentials>>,
    /// Leader election (`None` when off or in a dry run, which writes nothing).
    elector: Option<Arc<LeaderElector>>,
    /// `run` keeps its state with watches.
    watch: bool,
}

/// What a pass produced.
pub struct PassOutcome {
    pub report: PassReport,
    /// The rendered plan (dry-run only).
    pub rendered: Option<String>,
    /// When the plan says something falls due next (see [`crate::controller::plan::Plan::next_due`]).
    pub next_due: Option<Timestamp>,
}

/// A kube client from kubeconfig or the in-cluster environment; `--apiserver` overrides the URL
/// (and is enough on its own, for an unauthenticated or proxied API).
pub async fn kube_client(apiserver: Option<&str>) -> Result<Client> {
    let url = apiserver
        .map(|u| {
            u.parse::<http::Uri>()
                .map_err(|e| Error::Config(format!("--apiserver {u:?}: {e}")))
        })
        .transpose()?;
    let config = match (kube::Config::infer().await, url) {
        (Ok(mut config), Some(url)) => {
            config.cluster_url = url;
            config
        }
        (Ok(config), None) => config,
        (Err(_), Some(url)) => kube::Config::new(url),
        (Err(e), None) => {
            return Err(Error::Config(format!(
                "no Kubernetes configuration (kubeconfig or in-cluster): {e}"
            )));
        }
    };
    Client::try_from(config).map_err(|e| Error::Config(format!("Kubernetes client: {e}")))
}

impl Controller {
    /// A controller that applies its plans, getting credentials from `source`.
    pub fn new(
        client: Client,
        config: ControllerConfig,
        source: Arc<dyn CredentialSource>,
    ) -> Self {
        let executor = Executor::new(client.clone(), source, config.concurrency)
            .run_first(config.own_role.clone())
            .confirming_orphans(config.watch);
        Self::with_mode(client, config, Mode::Apply(Box::new(executor)))
    }

    /// Signs with seed credentials: their expiry is exported and fails `/healthz`.
    pub fn with_seed(mut self, seed: Option<Arc<SeedCredentials>>) -> Self {
        self.seed = seed;
        self
    }

    /// Passes only while holding the leader Lease.
    pub fn with_leader_election(mut self, elector: Option<Arc<LeaderElector>>) -> Self {
        self.elector = elector;
        self
    }

    /// A controller that only renders its plans.
    pub fn dry_run(client: Client, config: ControllerConfig, rendering: Rendering) -> Self {
        Self::with_mode(client, config, Mode::DryRun(rendering))
    }

    fn with_mode(client: Client, config: ControllerConfig, mode: Mode) -> Self {
        Controller {
            client,
            mode,
            observe: config.observe,
            config: config.plan,
            metrics: Arc::new(Metrics::new()),
            seed: None,
            elector: None,
            watch: config.watch,
        }
    }

    /// One pass over listed objects. `Err` when the cluster could not be observed (nothing
    /// was applied).
    pub async fn pass(&self) -> Result<PassOutcome> {
        self.pass_from(None, None).await
    }

    /// What a pass plans from: the watched state when there is one, else fresh lists.
    async fn observe(&self, store: Option<&Store>) -> Result<Observed> {
        let Some(store) = store else {
            return observe(&self.client, &self.observe).await;
        };
        let mut observed = store
            .observed()
            .map_err(|stale| Error::Stale(stale.to_string()))?;
        // The names of the roles this state would create a Secret for: a foreign Secret there
        // is a conflict (the watch sees only managed Secrets); a managed one the watch has not
        // delivered yet leaves its role for the next pass. Only those names are read, so
        // roles blocked for another reason cost no GET.
        let held: std::collections::HashSet<(&str, &str)> = observed
            .secrets
            .iter()
            .map(|s| (s.namespace.as_str(), s.name.as_str()))
            .collect();
        let unserved = observed
            .roles
            .iter()
            .any(|r| !held.contains(&(r.namespace.as_str(), r.name.as_str())));
        drop(held);
        let creates: Vec<(String, String)> = if unserved {
            plan(&observed, Timestamp::now(), &self.config)
                .actions
                .iter()
                .filter(|a| matches!(a.op, Op::Create(_)))
                .map(|a| (a.namespace.to_string(), a.name.to_string()))
                .collect()
        } else {
            Vec::new()
        };
        let found = find_conflicts(&self.client, creates).await?;
        let unseen: std::collections::BTreeSet<(String, String)> = found
            .iter()
            .filter(|s| s.is_managed())
            .map(|s| (s.namespace.clone(), s.name.clone()))
            .collect();
        if !unseen.is_empty() {
            tracing::debug!(
                roles = unseen.len(),
                "left out of this pass: their Secrets exist but the watch has not shown them yet"
            );
            observed
                .roles
                .retain(|r| !unseen.contains(&(r.namespace.clone(), r.name.clone())));
        }
        let unmanaged = found.into_iter().filter(|s| !s.is_managed());
        observed
            .conflicts
            .extend(unmanaged.map(|s| (s.namespace, s.name)));
        Ok(observed)
    }

    /// One pass, from the watched state when `store` is given; `trigger` (in `run`) is named in
    /// the summary line.
    async fn pass_from(
        &self,
        store: Option<&Store>,
        trigger: Option<Trigger>,
    ) -> Result<PassOutcome> {
        let start = Instant::now();
        let observed = match self.observe(store).await {
            Ok(o) => o,
            Err(e) => {
                self.metrics.record_failed_pass(start.elapsed());
                return Err(e);
            }
        };
        let plan = plan(&observed, Timestamp::now(), &self.config);
        let next_due = plan.next_due();
        let (mut report, rendered) = match &self.mode {
            Mode::Apply(executor) => (executor.apply(&plan).await, None),
            Mode::DryRun(r) => (
                PassReport::default(),
                Some(render(&plan, r.format, r.verbose)),
            ),
        };
        report.duration = start.elapsed();
        // The roles' states come from the plan and what became of its actions.
        self.metrics.record_pass(&plan, &report, Timestamp::now());
        if let Some(expiry) = self.seed.as_ref().and_then(|s| s.expiration().ok()) {
            self.metrics.set_own_expiry(expiry);
        }
        match &self.mode {
            Mode::Apply(_) => match trigger {
                Some(trigger) => tracing::info!(trigger = trigger.as_str(), "{report}"),
                None => tracing::info!("{report}"),
            },
            Mode::DryRun(_) => tracing::info!(
                "dry run, nothing applied: {} took {:.3}s",
                summary_line(&plan.summary()),
                report.duration.as_secs_f64()
            ),
        }
        if let Some(store) = store {
            store.expect(&report.written);
        }
        Ok(PassOutcome {
            report,
            rendered,
            next_due,
        })
    }

    /// `once`: exit code 0 (all actions done), 1 (some failed), 2 (the pass could not run).
    pub async fn once(&self) -> Result<(u8, Option<String>)> {
        let Some(elector) = &self.elector else {
            let outcome = self.pass().await?;
            return Ok((u8::from(outcome.report.unresolved()), outcome.rendered));
        };
        // The same Lease as `run`: a CronJob never passes beside a Deployment or another Job.
        elector.acquire_within(elector.config().wait).await?;
        let (leading_tx, mut leading) = watch::channel(true);
        let (contact_tx, _) = watch::channel(Instant::now());
        let renew = {
            let elector = elector.clone();
            tokio::spawn(async move {
                tokio::time::sleep(elector.config().retry_period).await;
                elector.campaign(leading_tx, contact_tx).await
            })
        };
        let pass = self.pass();
        tokio::pin!(pass);
        let outcome = tokio::select! {
            outcome = &mut pass => outcome,
            _ = leading.wait_for(|l| !*l) => {
                tracing::error!("lost the leader lease during the pass; starting no further actions");
                self.stop_starting_actions(true);
                pass.await
            }
        };
        renew.abort();
        release(elector).await;
        let outcome = outcome?;
        Ok((u8::from(outcome.report.unresolved()), outcome.rendered))
    }

    /// `run`: passes until SIGTERM/SIGINT. With watches, a pass starts after a change
    /// (debounced), when the last plan says something falls due, and every `interval`; without,
    /// every `interval`. On a signal it stops starting new actions, lets in-flight ones finish
    /// (bounded), and returns. With leader election it passes only while it holds the Lease,
    /// and stands by (alive and ready, passing nothing) while another replica does; a standby
    /// keeps its watched state warm, so it passes at once when it takes over.
    pub async fn run(&self, interval: Duration, health_addr: &str) -> Result<()> {
        let addr = health::parse_addr(health_addr)
            .map_err(|e| Error::Config(format!("--health-addr {e}")))?;
        let health =
            Arc::new(Health::new(interval, self.metrics.clone()).with_seed(self.seed.clone()));
        let (bound, server) = health::start(addr, health.clone()).await?;
        tracing::info!(addr = %bound, "serving /healthz, /readyz and /metrics");
        let (leading_tx, mut leading) = watch::channel(self.elector.is_none());
        let (contact_tx, mut contact) = watch::channel(Instant::now());
        let (campaign, _senders) = match self.elector.clone() {
            Some(elector) => (
                Some(tokio::spawn(async move {
                    elector.campaign(leading_tx, contact_tx).await
                })),
                None,
            ),
            None => (None, Some((leading_tx, contact_tx))),
        };
        let store = self.watch.then(|| Store::new(self.observe.namespaces));
        // Dropped at the end of `run`, which stops the watches.
        let _watches = store.as_ref().map(|s| s.watch(&self.client, &self.observe));
        let mut changes = store.as_ref().map(|s| s.subscribe());
        if store.is_some() {
            tracing::info!(
                "watching AWSIAMRoles and managed Secrets; passing on change, when due and every {}",
                humantime::format_duration(interval)
            );
        }
        let shutdown = crate::serve::shutdown_signal();
        tokio::pin!(shutdown);
        let mut trigger = Trigger::Start;
        'passes: loop {
            if !*leading.borrow() {
                self.metrics.set_leader(false);
                tracing::info!("standing by until this replica holds the leader lease");
                if !stand_by(&mut leading, &mut contact, &health, shutdown.as_mut()).await {
                    break;
                }
                trigger = Trigger::Start;
            }
            self.metrics.set_leader(true);
            // No pass before every watched kind has been listed once.
            while let (Some(store), Some(changes)) = (&store, changes.as_mut()) {
                if store.synced() {
                    break;
                }
                tokio::select! {
                    _ = changes.changed() => {}
                    _ = leading.wait_for(|l| !*l) => continue 'passes,
                    _ = &mut shutdown => break 'passes,
                }
            }
            if let Some(changes) = changes.as_mut() {
                // What this pass reads includes every change so far.
                changes.borrow_and_update();
            }
            self.metrics.record_trigger(trigger);
            let pass = self.pass_from(store.as_deref(), Some(trigger));
            tokio::pin!(pass);
            let outcome = tokio::select! {
                outcome = &mut pass => outcome,
                _ = leading.wait_for(|l| !*l) => {
                    tracing::error!("lost the leader lease during a pass: starting no further actions");
                    self.finish_in_flight(pass).await;
                    self.stop_starting_actions(false);
                    continue;
                }
                _ = &mut shutdown => {
                    tracing::info!("shutting down: finishing in-flight work");
                    self.finish_in_flight(pass).await;
                    break;
                }
            };
            let mut due = None;
            match outcome {
                Ok(outcome) => {
                    health.pass_succeeded();
                    if let Some(text) = outcome.rendered {
                        print!("{text}");
                    }
                    due = outcome.next_due.filter(|_| store.is_some()).map(|at| {
                        let wait = Duration::try_from(at.duration_since(Timestamp::now()))
                            .unwrap_or(Duration::ZERO);
                        tokio::time::Instant::now() + wait + DUE_SLACK
                    });
                }
                Err(e) => tracing::error!(error = %e, %trigger, "pass failed; nothing was applied"),
            }
            // What the pass planned over and wrote is freed: its pages go back before idling.
            crate::serve::memory::release_free();
            let next_interval = tokio::time::Instant::now() + interval;
            trigger = tokio::select! {
                _ = tokio::time::sleep_until(next_interval) => Trigger::Interval,
                _ = sleep_until_some(due) => Trigger::Due,
                _ = settled_change(changes.as_mut()) => Trigger::Change,
                _ = leading.wait_for(|l| !*l) => continue,
                _ = &mut shutdown => break,
            };
        }
        if let Some(campaign) = campaign {
            campaign.abort();
        }
        if let Some(elector) = &self.elector {
            release(elector).await;
        }
        server.abort();
        tracing::info!("stopped");
        Ok(())
    }

    /// Whether the executor may start further actions; those in flight always finish.
    fn stop_starting_actions(&self, stop: bool) {
        if let Mode::Apply(executor) = &self.mode {
            executor.stop_flag().store(stop, Ordering::SeqCst);
        }
    }

    /// Starts no further actions of `pass` and gives those in flight a bounded time to finish.
    async fn finish_in_flight(&self, pass: Pin<&mut impl Future<Output = Result<PassOutcome>>>) {
        self.stop_starting_actions(true);
        if tokio::time::timeout(SHUTDOWN_GRACE, pass).await.is_err() {
            tracing::warn!("in-flight work did not finish in time");
        }
    }
}

/// Sleeps until `at`, or forever when there is no such time.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Waits for a change of the watched state, then until the burst it belongs to is over (no
/// change for [`DEBOUNCE_QUIET`], or [`DEBOUNCE_MAX`] after its first change): one pass for
/// a burst, not one per object. Never returns without watches.
async fn settled_change(changes: Option<&mut watch::Receiver<u64>>) {
    let Some(changes) = changes else {
        return std::future::pending().await;
    };
    if changes.changed().await.is_err() {
        return std::future::pending().await;
    }
    let deadline = tokio::time::Instant::now() + DEBOUNCE_MAX;
    loop {
        let quiet = (tokio::time::Instant::now() + DEBOUNCE_QUIET).min(deadline);
        tokio::select! {
            _ = tokio::time::sleep_until(quiet) => return,
            changed = changes.changed() => if changed.is_err() { return },
        }
    }
}

/// Waits, ready as a standby whenever the Lease's holder is seen renewing, until this replica
/// leads (true) or a shutdown signal comes (false).
async fn stand_by(
    leading: &mut watch::Receiver<bool>,
    contact: &mut watch::Receiver<Instant>,
    health: &Health,
    mut shutdown: Pin<&mut impl Future<Output = ()>>,
) -> bool {
    loop {
        tokio::select! {
            changed = leading.changed() => {
                if changed.is_err() || *leading.borrow() {
                    return true;
                }
            }
            _ = contact.changed() => {
                // A replica about to lead becomes ready by passing, like one without leader
                // election.
                if *leading.borrow() {
                    return true;
                }
                // The moment of that round trip, not now: a contact made while still leading,
                // before an outage, must not make a standby look healthy during it.
                let at = *contact.borrow_and_update();
                health.standby_ok(at);
            }
            _ = &mut shutdown => return false,
        }
    }
}

/// Gives the Lease up, waiting at most [`RELEASE_DEADLINE`].
async fn release(elector: &LeaderElector) {
    if tokio::time::timeout(RELEASE_DEADLINE, elector.release())
        .await
        .is_err()
    {
        tracing::warn!(
            "could not release the leader lease within {}s; it expires on its own",
            RELEASE_DEADLINE.as_secs()
        );
    }
}
