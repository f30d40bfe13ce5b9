//! `webhook`: a mutating admission webhook serving [`super::mutate`] as a JSON patch over TLS.
//!
//! One TLS listener serves `POST /mutate` (AdmissionReview `admission.k8s.io/v1`), `/healthz`,
//! `/readyz` and `/metrics`. The webhook never talks to the Kubernetes API: the mutation is a
//! pure function of the pod, so it needs no RBAC and cannot race an informer cache. The
//! serving certificate is re-read when its files change ([`tls`]).

pub mod admission;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::serve::metrics::{MetricsRegistry, ResultLabel};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

use self::admission::{Answer, MAX_BODY_BYTES, Outcome};
use self::tls::ReloadingCert;
use super::mutate::MutateOptions;
use crate::serve::httpd::{self, reply};
use crate::{CommandOutput, Error, Result};

/// A client that connects but never completes its TLS handshake is dropped after this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight requests may take to finish after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// What `webhook` serves, and where.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    pub addr: SocketAddr,
    /// PEM certificate chain, re-read when the file changes.
    pub tls_cert_file: PathBuf,
    /// PEM private key, re-read when the file changes.
    pub tls_key_file: PathBuf,
    pub mutation: MutateOptions,
}

/// The webhook's metrics, in its own registry (it shares no state with the controller loop).
pub struct WebhookMetrics {
    registry: MetricsRegistry,
    requests: Family<ResultLabel, Counter>,
    duration: Histogram,
    reloads: Family<ResultLabel, Counter>,
}

impl Default for WebhookMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl WebhookMetrics {
    pub fn new() -> Self {
        let mut registry = MetricsRegistry::new("kube_aws_iam_controller_webhook");
        let requests = Family::<ResultLabel, Counter>::default();
        let duration = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        let reloads = Family::<ResultLabel, Counter>::default();
        registry.register(
            "admission_requests",
            "AdmissionReview requests by result (mutated, unchanged, denied, invalid)",
            requests.clone(),
        );
        // `register_with_unit` appends `_seconds` and writes the OpenMetrics `# UNIT` line.
        registry.register_with_unit(
            "admission_duration",
            "Time from a /mutate request's headers to its answer, body read included, in seconds",
            prometheus_client::registry::Unit::Seconds,
            duration.clone(),
        );
        registry.register(
            "certificate_reloads",
            "Serving certificate reloads after its files changed, by result (ok, failed)",
            reloads.clone(),
        );
        for result in Outcome::ALL.map(Outcome::as_str) {
            requests.get_or_create(&ResultLabel { result }).inc_by(0);
        }
        for result in ["ok", "failed"] {
            reloads.get_or_create(&ResultLabel { result }).inc_by(0);
        }
        WebhookMetrics {
            registry,
            requests,
            duration,
            reloads,
        }
    }

    fn record(&self, outcome: Outcome, elapsed: Duration) {
        let result = outcome.as_str();
        self.requests.get_or_create(&ResultLabel { result }).inc();
        self.duration.observe(elapsed.as_secs_f64());
    }

    fn reloaded(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.reloads.get_or_create(&ResultLabel { result }).inc();
    }

    pub fn encode(&self) -> String {
        self.registry.encode()
    }
}

/// What every connection shares.
struct Shared {
    options: MutateOptions,
    metrics: Arc<WebhookMetrics>,
    stopping: AtomicBool,
}

pub async fn run(args: &WebhookConfig) -> Result<CommandOutput> {
    let addr = args.addr;
    let metrics = Arc::new(WebhookMetrics::new());
    let acceptor = acceptor(args, metrics.clone())?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Config(format!("--webhook-addr {addr}: cannot listen: {e}")))?;
    let bound = listener.local_addr().unwrap_or(addr);
    let shared = Arc::new(Shared {
        options: args.mutation.clone(),
        metrics,
        stopping: AtomicBool::new(false),
    });
    tracing::info!(
        addr = %bound,
        default_delivery = args.mutation.default_delivery.as_str(),
        "serving the admission webhook at /mutate, with /healthz, /readyz and /metrics, over TLS"
    );
    let stopping = shared.clone();
    let shutdown = async move {
        crate::serve::shutdown_signal().await;
        tracing::info!("shutting down: answering in-flight requests");
        // Load balancers stop sending before the listener closes.
        stopping.stopping.store(true, Ordering::SeqCst);
    };
    let limits = httpd::Limits {
        handshake_timeout: HANDSHAKE_TIMEOUT,
        drain: SHUTDOWN_GRACE,
        ..httpd::Limits::default()
    };
    let handler = move |req: Request<Incoming>| respond(req, shared.clone());
    httpd::serve(listener, acceptor, limits, handler, shutdown).await;
    tracing::info!("stopped");
    Ok(CommandOutput::default())
}

/// TLS 1.2/1.3 with the aws-lc-rs provider, HTTP/1.1, the reloading certificate.
fn acceptor(args: &WebhookConfig, metrics: Arc<WebhookMetrics>) -> Result<TlsAcceptor> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let certs = ReloadingCert::new(
        args.tls_cert_file.clone(),
        args.tls_key_file.clone(),
        provider.clone(),
        Box::new(move |ok| metrics.reloaded(ok)),
    )
    .map_err(|e| Error::Config(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS set-up: {e}")))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(certs));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

async fn respond(req: Request<Incoming>, shared: Arc<Shared>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    match (path, req.method()) {
        ("/mutate", &Method::POST) => {
            let started = Instant::now();
            let answer = mutate(req, &shared.options).await;
            shared.metrics.record(answer.outcome, started.elapsed());
            log(&answer);
            let status =
                StatusCode::from_u16(answer.http_status).unwrap_or(StatusCode::BAD_REQUEST);
            reply(status, answer.content_type, answer.body.into())
        }
        ("/mutate", _) => {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "POST an AdmissionReview\n");
            r.headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static("POST"));
            r
        }
        ("/healthz", _) => text(StatusCode::OK, "ok\n"),
        ("/readyz", _) if shared.stopping.load(Ordering::SeqCst) => {
            text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
        }
        ("/readyz", _) => text(StatusCode::OK, "ok\n"),
        ("/metrics", _) => reply(
            StatusCode::OK,
            httpd::METRICS_CONTENT_TYPE,
            shared.metrics.encode().into(),
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Reads the body (at most [`MAX_BODY_BYTES`]) and answers it.
async fn mutate<B>(req: Request<B>, options: &MutateOptions) -> Answer
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let too_large = || {
        admission::bare_error(
            413,
            format!(
                "the request body is larger than {} MiB; an AdmissionReview is far smaller",
                MAX_BODY_BYTES / (1024 * 1024)
            ),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return too_large();
    }
    let body = match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return too_large(),
        Err(e) => {
            return admission::bare_error(400, format!("cannot read the request body: {e}"));
        }
    };
    admission::review(&body, options)
}

fn log(answer: &Answer) {
    let message = answer.message.as_deref().unwrap_or_default();
    match answer.outcome {
        Outcome::Mutated | Outcome::Unchanged => tracing::debug!(
            uid = %answer.uid, namespace = %answer.namespace, pod = %answer.name,
            result = answer.outcome.as_str(), "admission"
        ),
        Outcome::Denied => tracing::warn!(
            uid = %answer.uid, namespace = %answer.namespace, pod = %answer.name, message,
            "admission denied: the pod asks for credentials it cannot be given"
        ),
        Outcome::Invalid => tracing::warn!(
            uid = %answer.uid, status = answer.http_status, message,
            "admission request refused: not a usable AdmissionReview"
        ),
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    reply(status, "text/plain; charset=utf-8", body.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> MutateOptions {
        MutateOptions::new("image")
    }

    /// A body beyond the cap is refused with 413 whether or not its length was declared
    /// (chunked bodies carry none); one at the cap is read and decoded.
    #[tokio::test]
    async fn bodies_are_capped_with_or_without_a_declared_length() {
        let big = Bytes::from(vec![b' '; MAX_BODY_BYTES + 1]);
        let undeclared = Request::post("/mutate")
            .body(Full::new(big.clone()))
            .unwrap();
        let a = mutate(undeclared, &options()).await;
        assert_eq!((a.http_status, a.outcome), (413, Outcome::Invalid));
        let declared = Request::post("/mutate")
            .header(header::CONTENT_LENGTH, big.len().to_string())
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(mutate(declared, &options()).await.http_status, 413);
        let at_cap = Request::post("/mutate")
            .body(Full::new(Bytes::from(vec![b' '; MAX_BODY_BYTES])))
            .unwrap();
        let a = mutate(at_cap, &options()).await;
        assert_eq!(a.http_status, 400, "read, then refused as not JSON");
        assert!(a.message.unwrap().contains("not JSON"));
    }

    #[test]
    fn metrics_start_at_zero_for_every_result() {
        let m = WebhookMetrics::new();
        m.record(Outcome::Denied, Duration::from_millis(1));
        m.reloaded(false);
        let text = m.encode();
        for (sample, value) in [
            ("admission_requests_total{result=\"mutated\"}", 0),
            ("admission_requests_total{result=\"unchanged\"}", 0),
            ("admission_requests_total{result=\"denied\"}", 1),
            ("admission_requests_total{result=\"invalid\"}", 0),
            ("admission_duration_seconds_count", 1),
            ("certificate_reloads_total{result=\"failed\"}", 1),
            ("certificate_reloads_total{result=\"ok\"}", 0),
        ] {
            let line = format!("kube_aws_iam_controller_webhook_{sample} {value}");
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
    }
}
