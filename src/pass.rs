//! One pass (observe → plan → apply, or render in dry-run) and the drivers around it: `once`
//! (CronJob) and `run` (a loop with health and metrics, graceful on SIGTERM/SIGINT).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use kube::Client;
use tokio::sync::watch;

use crate::apply::{Executor, PassReport};
use crate::lease::LeaderElector;
use crate::metrics::Metrics;
use crate::observe::{ObserveOptions, observe};
use crate::plan::render::{OutputFormat, render, summary_line};
use crate::plan::{PlanConfig, plan};
use crate::seed::SeedCredentials;
use crate::server::{self, Health};
use crate::sts::CredentialSource;
use crate::{Error, Result};

/// How long in-flight work may take after SIGTERM/SIGINT before the process exits anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(8);

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
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            plan: PlanConfig::default(),
            observe: ObserveOptions::default(),
            concurrency: 8,
            own_role: None,
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
}

/// What a pass produced.
pub struct PassOutcome {
    pub report: PassReport,
    /// The rendered plan (dry-run only).
    pub rendered: Option<String>,
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
            .run_first(config.own_role.clone());
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
        }
    }

    /// One pass. `Err` when the cluster could not be observed (nothing was applied).
    pub async fn pass(&self) -> Result<PassOutcome> {
        let start = Instant::now();
        let observed = match observe(&self.client, &self.observe).await {
            Ok(o) => o,
            Err(e) => {
                self.metrics.record_failed_pass(start.elapsed());
                return Err(e);
            }
        };
        let plan = plan(&observed, Timestamp::now(), &self.config);
        let (mut report, rendered) = match &self.mode {
            Mode::Apply(executor) => (executor.apply(&plan).await, None),
            Mode::DryRun(r) => (
                PassReport::default(),
                Some(render(&plan, r.format, r.verbose)),
            ),
        };
        report.duration = start.elapsed();
        self.metrics.record_pass(&report, Timestamp::now());
        if let Some(expiry) = self.seed.as_ref().and_then(|s| s.expiration().ok()) {
            self.metrics.set_own_expiry(expiry);
        }
        match &self.mode {
            Mode::Apply(_) => tracing::info!("{report}"),
            Mode::DryRun(_) => tracing::info!(
                "dry run, nothing applied: {} took {:.3}s",
                summary_line(&plan.summary()),
                report.duration.as_secs_f64()
            ),
        }
        Ok(PassOutcome { report, rendered })
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
        elector.release().await;
        let outcome = outcome?;
        Ok((u8::from(outcome.report.unresolved()), outcome.rendered))
    }

    /// `run`: a pass every `interval` until SIGTERM/SIGINT. On a signal it stops starting new
    /// actions, lets in-flight ones finish (bounded), and returns. With leader election it
    /// passes only while it holds the Lease, and stands by (alive and ready, passing nothing)
    /// while another replica does.
    pub async fn run(&self, interval: Duration, health_addr: &str) -> Result<()> {
        let addr = server::parse_addr(health_addr)
            .map_err(|e| Error::Config(format!("--health-addr {e}")))?;
        let health =
            Arc::new(Health::new(interval, self.metrics.clone()).with_seed(self.seed.clone()));
        let (bound, server) = server::start(addr, health.clone()).await?;
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
        let shutdown = shutdown_signal();
        tokio::pin!(shutdown);
        loop {
            if !*leading.borrow() {
                self.metrics.set_leader(false);
                tracing::info!("standing by until this replica holds the leader lease");
                if !stand_by(&mut leading, &mut contact, &health, shutdown.as_mut()).await {
                    break;
                }
            }
            self.metrics.set_leader(true);
            let pass = self.pass();
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
            match outcome {
                Ok(outcome) => {
                    health.pass_succeeded();
                    if let Some(text) = outcome.rendered {
                        print!("{text}");
                    }
                }
                Err(e) => tracing::error!(error = %e, "pass failed; nothing was applied"),
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = leading.wait_for(|l| !*l) => {}
                _ = &mut shutdown => break,
            }
        }
        if let Some(campaign) = campaign {
            campaign.abort();
        }
        if let Some(elector) = &self.elector {
            elector.release().await;
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
                health.standby_ok();
            }
            _ = &mut shutdown => return false,
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
pub(crate) async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
