//! `/healthz`, `/readyz` and `/metrics` for `run`.
//!
//! The server is started before the first pass and runs beside the loop (the original started
//! its health server with a blocking call before its loop, so liveness could only fail).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::controller::metrics::Metrics;
use crate::serve::httpd;
use crate::{Error, Result};

/// Liveness and readiness, fed by the loop.
pub struct Health {
    started: Instant,
    interval: Duration,
    last_success: Mutex<Option<Instant>>,
    pub metrics: Arc<Metrics>,
    /// Seed credentials, whose expiry fails liveness (see [`crate::controller::seed`]).
    seed: Option<Arc<crate::controller::seed::SeedCredentials>>,
}

impl Health {
    pub fn new(interval: Duration, metrics: Arc<Metrics>) -> Self {
        Health {
            started: Instant::now(),
            interval,
            last_success: Mutex::new(None),
            metrics,
            seed: None,
        }
    }

    /// Makes `/healthz` fail while the controller's own seed credentials are expired.
    pub fn with_seed(
        mut self,
        seed: Option<Arc<crate::controller::seed::SeedCredentials>>,
    ) -> Self {
        self.seed = seed;
        self
    }

    /// Why the controller's own credentials are unusable, if they are (re-read when the
    /// mounted file changed, so a kubelet update heals this without a restart).
    pub fn own_credentials_problem(&self) -> Option<String> {
        let seed = self.seed.as_ref()?;
        match seed.expiration() {
            Ok(expiry) => {
                self.metrics.set_own_expiry(expiry);
                seed.credentials().err().map(|e| e.to_string())
            }
            Err(e) => Some(e.to_string()),
        }
    }

    /// A standby replica reached the API at `at` (its Lease round trip succeeded): it is
    /// alive and ready to take over, though it runs no passes. An older contact never moves
    /// the clock back, so health does not flap when a leader steps down during an outage.
    pub fn standby_ok(&self, at: Instant) {
        self.succeeded_at(at);
    }

    /// A pass observed the cluster and applied its plan (some actions may have failed).
    pub fn pass_succeeded(&self) {
        self.succeeded_at(Instant::now());
    }

    fn succeeded_at(&self, at: Instant) {
        if let Ok(mut last) = self.last_success.lock() {
            *last = Some(last.map_or(at, |l| l.max(at)));
        }
    }

    fn last(&self) -> Option<Instant> {
        self.last_success.lock().ok().and_then(|l| *l)
    }

    /// Live while a pass succeeded within 3 × interval (counting from start-up before the
    /// first one).
    pub fn is_live(&self) -> bool {
        self.is_live_at(Instant::now())
    }

    fn is_live_at(&self, now: Instant) -> bool {
        let since = self.last().unwrap_or(self.started);
        now.saturating_duration_since(since) <= self.interval * 3 + Duration::from_secs(1)
    }

    /// Ready once a pass succeeded.
    pub fn is_ready(&self) -> bool {
        self.last().is_some()
    }
}

pub use crate::serve::httpd::parse_addr;

/// Binds the listener (so a busy port fails start-up) and serves until the task is dropped.
pub async fn start(
    addr: SocketAddr,
    health: Arc<Health>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let (listener, local) = httpd::bind(addr).await.map_err(|source| Error::Server {
        addr: addr.to_string(),
        source,
    })?;
    let handler = move |req: Request<Incoming>| respond(req, health.clone());
    let task = tokio::spawn(httpd::serve(
        listener,
        httpd::Plain,
        httpd::Limits::default(),
        handler,
        std::future::pending(),
    ));
    Ok((local, task))
}

async fn respond(req: Request<Incoming>, health: Arc<Health>) -> Response<Full<Bytes>> {
    let own_problem = match req.uri().path() {
        "/healthz" | "/metrics" => health.own_credentials_problem(),
        _ => None,
    };
    match req.uri().path() {
        "/healthz" if own_problem.is_some() => httpd::reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            format!("{}\n", own_problem.unwrap_or_default()).into(),
        ),
        "/healthz" if health.is_live() => httpd::text(StatusCode::OK, "ok\n"),
        "/healthz" => httpd::text(
            StatusCode::SERVICE_UNAVAILABLE,
            "no successful pass within 3 intervals\n",
        ),
        "/readyz" if health.is_ready() => httpd::text(StatusCode::OK, "ok\n"),
        "/readyz" => httpd::text(
            StatusCode::SERVICE_UNAVAILABLE,
            "no pass has succeeded yet\n",
        ),
        "/metrics" => httpd::reply(
            StatusCode::OK,
            httpd::METRICS_CONTENT_TYPE,
            health.metrics.encode().into(),
        ),
        _ => httpd::text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_needs_recent_success() {
        let h = Health::new(Duration::from_secs(10), Arc::new(Metrics::new()));
        assert!(!h.is_ready());
        assert!(h.is_live(), "live during the first intervals");
        assert!(!h.is_live_at(Instant::now() + Duration::from_secs(32)));
        h.pass_succeeded();
        assert!(h.is_live() && h.is_ready());
        assert!(h.is_live_at(Instant::now() + Duration::from_secs(30)));
        assert!(!h.is_live_at(Instant::now() + Duration::from_secs(32)));
    }

    #[test]
    fn an_old_contact_does_not_revive_health() {
        let h = Health::new(Duration::from_secs(1), Arc::new(Metrics::new()));
        let start = Instant::now();
        h.pass_succeeded();
        // A contact from before the last success (made while leading) moves nothing.
        h.standby_ok(start - Duration::from_secs(60));
        assert!(!h.is_live_at(Instant::now() + Duration::from_secs(5)));
        assert!(h.is_live_at(Instant::now() + Duration::from_secs(3)));
        // A newer one does.
        h.standby_ok(Instant::now() + Duration::from_secs(3));
        assert!(h.is_live_at(Instant::now() + Duration::from_secs(5)));
    }
}
