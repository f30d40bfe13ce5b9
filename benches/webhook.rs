//! Admission latency of the `webhook` subcommand. Run with `cargo bench --bench webhook`.
//!
//! Starts the release binary with a certificate from a throw-away CA and, like the API server,
//! POSTs AdmissionReviews over keep-alive TLS: `WEBHOOK_BENCH_REQUESTS` (default 2,000) reviews
//! of a typical labelled pod (`fixtures/webhook/labelled-pod.json`, a Deployment's pod with an
//! init container and two containers, ~7 KiB) one after the other on one connection, then the
//! same number spread over 8 concurrent connections. Each latency is measured by the client
//! from writing the request to having read the whole answer. Prints p50/p90/p99/max; the budget
//! is p99 < 5 ms. Checks no timing, but exits 1 when an answer is wrong (not 200, another uid,
//! no patch for the labelled pod).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls;

/// The server: this build's binary, or `WEBHOOK_BENCH_BIN` (e.g. a release binary built
/// earlier, when the client is built quickly without optimisation).
fn server_bin() -> String {
    std::env::var("WEBHOOK_BENCH_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_kube-aws-iam-controller").to_string())
}
const BUDGET_P99: Duration = Duration::from_millis(5);

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The server's process id, so that [`fail`] (which exits without running destructors) stops it.
static SERVER_PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

fn fail(message: &str) -> ! {
    eprintln!("webhook bench: {message}");
    if let Some(pid) = SERVER_PID.get() {
        let _ = std::process::Command::new("kill")
            .arg(pid.to_string())
            .status();
    }
    std::process::exit(1)
}

fn main() {
    let requests: usize = std::env::var("WEBHOOK_BENCH_REQUESTS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(2000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(&format!("runtime: {e}")));
    runtime.block_on(bench(requests));
}

async fn bench(requests: usize) {
    let dir = std::env::temp_dir().join(format!("webhook-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| fail(&e.to_string()));

    // A CA and a serving certificate for localhost.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let cert_path = dir.join("tls.crt");
    let key_path = dir.join("tls.key");
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| fail(&e.to_string()));
    let _server = Child(
        std::process::Command::new(server_bin())
            .args([
                "webhook",
                "--webhook-addr",
                &format!("127.0.0.1:{port}"),
                "--tls-cert-file",
                &cert_path.display().to_string(),
                "--tls-key-file",
                &key_path.display().to_string(),
            ])
            .env_clear()
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| fail(&format!("starting {}: {e}", server_bin()))),
    );
    let _ = SERVER_PID.set(_server.0.id());
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            fail("the webhook did not listen within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(ca_cert.der().clone())
        .unwrap_or_else(|e| fail(&e.to_string()));
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = TlsConnector::from(Arc::new(config));

    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/webhook/labelled-pod.json"
    );
    let review: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture).unwrap_or_else(|e| fail(&format!("{fixture}: {e}"))),
    )
    .unwrap_or_else(|e| fail(&format!("{fixture}: {e}")));
    let body = Bytes::from(serde_json::to_vec(&review).unwrap());
    let uid = review["request"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string();

    println!(
        "webhook admission latency: labelled pod, {} byte AdmissionReview, release binary over TLS 1.3 keep-alive",
        body.len()
    );
    let sequential = run_connection(&connector, port, &body, &uid, requests, 200).await;
    let (patched, mut latencies) = sequential;
    report("1 connection, sequential", &mut latencies, requests);
    println!(
        "  answers carried a patch: {}",
        if patched {
            "yes"
        } else {
            "no (the mutation returned none)"
        }
    );

    let per = requests.div_ceil(8);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let connector = connector.clone();
        let body = body.clone();
        let uid = uid.clone();
        tasks.push(tokio::spawn(async move {
            run_connection(&connector, port, &body, &uid, per, 20).await
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        let (_, l) = t.await.unwrap_or_else(|e| fail(&e.to_string()));
        all.extend(l);
    }
    report("8 connections, concurrent", &mut all, per * 8);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `n` reviews on one keep-alive connection after `warm_up` unmeasured ones: whether the
/// answers carried a patch, and each measured latency.
async fn run_connection(
    connector: &TlsConnector,
    port: u16,
    body: &Bytes,
    uid: &str,
    n: usize,
    warm_up: usize,
) -> (bool, Vec<Duration>) {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap_or_else(|e| fail(&e.to_string()));
    tcp.set_nodelay(true).ok();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector
        .connect(name, tcp)
        .await
        .unwrap_or_else(|e| fail(&format!("TLS: {e}")));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap_or_else(|e| fail(&e.to_string()));
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            eprintln!("webhook bench: connection: {e}");
        }
    });
    let mut latencies = Vec::with_capacity(n);
    let mut patched = true;
    for i in 0..warm_up + n {
        let request = http::Request::post("/mutate")
            .header(http::header::HOST, "localhost")
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "application/json, */*")
            .body(Full::new(body.clone()))
            .unwrap();
        // The previous answer is read; wait until the connection takes the next request.
        sender
            .ready()
            .await
            .unwrap_or_else(|e| fail(&format!("connection before request {i}: {e}")));
        let started = Instant::now();
        let response = sender
            .send_request(request)
            .await
            .unwrap_or_else(|e| fail(&format!("request {i}: {e}")));
        let status = response.status();
        let answer = response
            .into_body()
            .collect()
            .await
            .unwrap_or_else(|e| fail(&e.to_string()))
            .to_bytes();
        let elapsed = started.elapsed();
        if status != 200 {
            fail(&format!("answer {i}: HTTP {status}"));
        }
        let v: Value = serde_json::from_slice(&answer)
            .unwrap_or_else(|e| fail(&format!("answer {i} is not JSON: {e}")));
        if v["response"]["uid"] != uid || v["response"]["allowed"] != true {
            fail(&format!("answer {i} is wrong: {v}"));
        }
        patched &= v["response"]["patchType"] == "JSONPatch";
        if i >= warm_up {
            latencies.push(elapsed);
        }
    }
    (patched, latencies)
}

fn report(label: &str, latencies: &mut [Duration], n: usize) {
    latencies.sort();
    let at = |q: f64| {
        let i = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i]
    };
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let p99 = at(0.99);
    println!(
        "  {label}: {n} requests  p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  max {:.3} ms  (budget p99 < {} ms: {})",
        ms(at(0.50)),
        ms(at(0.90)),
        ms(p99),
        ms(at(1.0)),
        BUDGET_P99.as_millis(),
        if p99 < BUDGET_P99 { "met" } else { "MISSED" }
    );
}
