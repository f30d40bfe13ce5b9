//! One pass (observe → plan → apply, or render in dry-run) and the drivers around it: `once`
//! (CronJob) and `run` (a loop with health and metrics, graceful on SIGTERM/SIGINT).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use kube::Client;

use crate::apply::{Executor, PassReport};
use crate::cli::Options;
use crate::metrics::Metrics;
use crate::observe::{ObserveOptions, observe};
use crate::plan::render::{OutputFormat, render};
use crate::plan::{PlanConfig, plan};
use crate::server::{self, Health};
use crate::sts::{self, AwsOptions, CredentialSource};
use crate::{Error, Result};

/// How long in-flight work may take after SIGTERM/SIGINT before the process exits anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(8);

/// Everything a pass needs, built once.
pub struct Controller {
    client: Client,
    /// `None` in dry-run: no STS calls, no writes.
    executor: Option<Executor>,
    observe: ObserveOptions,
    config: PlanConfig,
    output: OutputFormat,
    verbose: bool,
    pub metrics: Arc<Metrics>,
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
    /// Connects to Kubernetes and (unless `dry_run`) to STS, resolving the base role ARN.
    pub async fn connect(options: &Options, dry_run: bool) -> Result<Controller> {
        let mut config = options.plan_config()?;
        let client = kube_client(options.apiserver.as_deref()).await?;
        let executor = if dry_run {
            None
        } else {
            let (source, base) = sts::connect(&AwsOptions {
                region: options.region.clone(),
                base_role_arn: config.base_role_arn.clone(),
                assume_role: options.assume_role.clone(),
                rate: Some(options.sts_rate),
                burst: Some(options.sts_burst),
            })
            .await?;
            tracing::info!(base_role_arn = %base, "connected to STS");
            config.base_role_arn = Some(base);
            Some(Executor::new(
                client.clone(),
                Arc::new(source),
                options.concurrency.get(),
            ))
        };
        Ok(Self::new(client, executor, options, config))
    }

    /// A controller from parts (tests inject their own credential source).
    pub fn with_source(
        client: Client,
        source: Option<Arc<dyn CredentialSource>>,
        options: &Options,
        config: PlanConfig,
    ) -> Self {
        let executor = source.map(|s| Executor::new(client.clone(), s, options.concurrency.get()));
        Self::new(client, executor, options, config)
    }

    fn new(
        client: Client,
        executor: Option<Executor>,
        options: &Options,
        config: PlanConfig,
    ) -> Self {
        Controller {
            client,
            executor,
            observe: ObserveOptions {
                namespace: options.namespace().map(str::to_string),
                namespaces: options.namespace_restrictions,
                page_size: 0,
            },
            config,
            output: options.output,
            verbose: options.verbose,
            metrics: Arc::new(Metrics::new()),
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
        let now = Timestamp::now();
        let plan = plan(&observed, now, &self.config);
        let (mut report, rendered) = match &self.executor {
            Some(executor) => (executor.apply(&plan).await, None),
            None => {
                let report = PassReport {
                    actions: plan
                        .actions
                        .iter()
                        .map(|a| crate::apply::ActionReport {
                            namespace: a.namespace.to_string(),
                            name: a.name.to_string(),
                            kind: a.kind,
                            reason: a.reason,
                            outcome: crate::apply::Outcome::NotStarted,
                        })
                        .collect(),
                    ..PassReport::default()
                };
                (report, Some(render(&plan, self.output, self.verbose)))
            }
        };
        report.duration = start.elapsed();
        self.metrics.record_pass(&report, Timestamp::now());
        if self.executor.is_some() {
            tracing::info!("{report}");
        } else {
            tracing::info!(
                "dry run, nothing applied: {} took {:.3}s",
                crate::plan::render::summary_line(&plan.summary()),
                report.duration.as_secs_f64()
            );
        }
        Ok(PassOutcome { report, rendered })
    }

    /// `once`: exit code 0 (all actions done), 1 (some failed), 2 (the pass could not run).
    pub async fn once(&self) -> Result<(u8, Option<String>)> {
        let outcome = self.pass().await?;
        let code = if outcome.report.failed() > 0 { 1 } else { 0 };
        Ok((code, outcome.rendered))
    }

    /// `run`: a pass every `interval` until SIGTERM/SIGINT. On a signal it stops starting new
    /// actions, lets in-flight ones finish (bounded), and returns.
    pub async fn run(&self, interval: Duration, health_addr: &str) -> Result<()> {
        let addr = server::parse_addr(health_addr)
            .map_err(|e| Error::Config(format!("--health-addr {e}")))?;
        let health = Arc::new(Health::new(interval, self.metrics.clone()));
        let (bound, server) = server::start(addr, health.clone()).await?;
        tracing::info!(addr = %bound, "serving /healthz, /readyz and /metrics");
        let shutdown = shutdown_signal();
        tokio::pin!(shutdown);
        let result = loop {
            let pass = self.pass();
            tokio::pin!(pass);
            let outcome = tokio::select! {
                outcome = &mut pass => outcome,
                _ = &mut shutdown => {
                    tracing::info!("shutting down: finishing in-flight work");
                    if let Some(ex) = &self.executor {
                        ex.stop_flag().store(true, Ordering::SeqCst);
                    }
                    if tokio::time::timeout(SHUTDOWN_GRACE, &mut pass).await.is_err() {
                        tracing::warn!("in-flight work did not finish in time");
                    }
                    break Ok(());
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
                _ = &mut shutdown => break Ok(()),
            }
        };
        server.abort();
        tracing::info!("stopped");
        result
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
