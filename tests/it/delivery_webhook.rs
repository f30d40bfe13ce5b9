//! The `webhook` subcommand as the API server meets it: the compiled binary over real TLS
//! (certificates from a test CA), AdmissionReview bodies shaped like kube-apiserver's
//! (`fixtures/webhook/`), posted by an HTTPS client (`support/https.rs`: rustls trusting only
//! the test CA and checking the host name) over keep-alive connections.
//!
//! By subject: [`admission`] (answers, bad bodies, no Kubernetes API call), [`lifecycle`]
//! (certificate rotation, start-up, SIGTERM, health and metrics); in the full tier,
//! `manifests` (the `deploy/webhook/` component rendered by kustomize) and `openssl_recipe`
//! (the documented certificates made with openssl).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kube_aws_iam_controller::delivery::mutate::MutateOptions;
use serde_json::Value;

use crate::support::ScratchDir;
use crate::support::harness::free_port;
use crate::support::https::{Ca, Client, Reply};
use crate::support::repo_root;
use crate::support::volume::SecretVolume;

mod admission;
mod lifecycle;

// The full tier: kubectl, openssl.
#[cfg(feature = "full-tier")]
mod manifests;
#[cfg(feature = "full-tier")]
mod openssl_recipe;

const BIN: &str = env!("CARGO_BIN_EXE_kube-aws-iam-controller");
const SIDECAR_IMAGE: &str = "registry.example.com/kube-aws-iam-controller:webhook-test";
/// A marker in a fixture pod's environment: no answer or log may contain it.
const SEEDED: &str = "WEBHOOKSEEDED";

fn fixture(name: &str) -> Value {
    let path = repo_root().join("fixtures/webhook").join(name);
    let body = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn options() -> MutateOptions {
    MutateOptions::new(SIDECAR_IMAGE)
}

// ---------------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// The webhook process
// ---------------------------------------------------------------------------------------------

/// The running binary; killed on drop. Its standard error goes to a file read by [`Self::logs`].
struct Webhook {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Webhook {
    fn start(dir: &Path, cert: &Path, key: &Path, env: &[(&str, String)]) -> Webhook {
        let port = free_port();
        let log = dir.join(format!("webhook-{port}.log"));
        let child = Command::new(BIN)
            .args([
                "webhook",
                "--webhook-addr",
                &format!("127.0.0.1:{port}"),
                "--tls-cert-file",
                &cert.display().to_string(),
                "--tls-key-file",
                &key.display().to_string(),
                "--sidecar-image",
                SIDECAR_IMAGE,
                "--default-delivery",
                "process",
            ])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "debug")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("the binary starts");
        let mut w = Webhook { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = w.child.try_wait() {
                panic!("the webhook exited with {status}:\n{}", w.logs());
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the webhook did not listen within 20 s:\n{}",
                w.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        w
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// AdmissionReviews go over one keep-alive connection, as the API server's would.
trait Review {
    fn review(&mut self, review: &Value) -> Reply;
}

impl Review for Client {
    fn review(&mut self, review: &Value) -> Reply {
        self.post_on("api", &review.to_string())
    }
}

/// One webhook serving a fresh CA's certificate, and a client trusting that CA.
struct Setup {
    dir: ScratchDir,
    ca: Ca,
    volume: SecretVolume,
    webhook: Webhook,
    client: Client,
}

fn setup(label: &str) -> Setup {
    setup_with_env(label, &[])
}

fn setup_with_env(label: &str, env: &[(&str, String)]) -> Setup {
    let dir = ScratchDir::new(label);
    let ca = Ca::new();
    let (cert, key, _) = ca.leaf("webhook one");
    // The serving pair, mounted the way kubelet mounts a Secret.
    let volume = SecretVolume::with(
        &format!("{label}-tls"),
        [("tls.crt", &cert), ("tls.key", &key)],
    );
    let webhook = Webhook::start(
        dir.path(),
        &volume.file("tls.crt"),
        &volume.file("tls.key"),
        env,
    );
    let client = Client::new(webhook.port, &ca.cert.pem());
    Setup {
        dir,
        ca,
        volume,
        webhook,
        client,
    }
}

/// The response of an AdmissionReview answer, after the envelope checks every answer must pass.
fn response_of(reply: &Reply, request: &Value) -> Value {
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.content_type, "application/json");
    let v = reply.json();
    assert_eq!(v["apiVersion"], "admission.k8s.io/v1", "{v}");
    assert_eq!(v["kind"], "AdmissionReview", "{v}");
    assert_eq!(
        v["response"]["uid"], request["request"]["uid"],
        "the answer carries the request's uid"
    );
    v["response"].clone()
}

/// The value of a counter or histogram sample in a /metrics body.
fn metric(body: &str, sample: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {sample} in\n{body}"))
}

fn requests_metric(body: &str, result: &str) -> f64 {
    metric(
        body,
        &format!("kube_aws_iam_controller_webhook_admission_requests_total{{result=\"{result}\"}}"),
    )
}
