//! The metric table of `docs/operations.md` is what the binary exports: it is generated from a
//! scrape of `/metrics` of a real `run` (loopback API server, moto STS) and of a real `webhook`
//! (over TLS, a test CA's certificate), and a test fails when the committed table differs.
//! `UPDATE_DOCS=1` (or `make docs`) rewrites it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_rustls::rustls;

use crate::support::apiserver::ApiServer;
use crate::support::harness::{BASE, Env, free_port, http_get, wait_ready};
use crate::support::moto::ScratchDir;
use crate::support::repo_root;

const DOC: &str = "docs/operations.md";
const BEGIN: &str =
    "<!-- BEGIN generated metrics: UPDATE_DOCS=1 cargo test --test it metrics_doc -->";
const END: &str = "<!-- END generated metrics -->";
const REGENERATE: &str = "UPDATE_DOCS=1 cargo test --test it metrics_doc";

/// One metric family as exported.
#[derive(Debug, Default)]
struct Family {
    name: String,
    kind: String,
    unit: Option<String>,
    help: String,
    /// Label name → every value seen (sorted); a histogram's `le` is left out.
    labels: BTreeMap<String, BTreeSet<String>>,
}

/// The families of an OpenMetrics text exposition, in the order exported.
fn families(text: &str) -> Vec<Family> {
    let mut out: Vec<Family> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let Some((keyword, rest)) = rest.split_once(' ') else {
                continue;
            };
            let (name, value) = rest.split_once(' ').unwrap_or((rest, ""));
            if keyword == "HELP" {
                out.push(Family {
                    name: name.to_string(),
                    help: value.to_string(),
                    ..Family::default()
                });
                continue;
            }
            let family = out
                .last_mut()
                .filter(|f| f.name == name)
                .unwrap_or_else(|| panic!("{line:?} does not follow its HELP line"));
            match keyword {
                "TYPE" => family.kind = value.to_string(),
                "UNIT" => family.unit = Some(value.to_string()),
                other => panic!("unexpected descriptor {other:?} in {line:?}"),
            }
            continue;
        }
        if line.is_empty() {
            continue;
        }
        let (series, _value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not a sample: {line:?}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, labels.strip_suffix('}').expect("closing brace")),
            None => (series, ""),
        };
        // Samples follow their family's descriptors.
        let family = out
            .last_mut()
            .filter(|f| name.starts_with(f.name.as_str()))
            .unwrap_or_else(|| panic!("sample {line:?} does not follow its family's HELP"));
        for pair in labels.split(',').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').expect("label=value");
            let value = value.trim_matches('"');
            if key == "le" && family.kind == "histogram" {
                continue;
            }
            family
                .labels
                .entry(key.to_string())
                .or_default()
                .insert(value.to_string());
        }
    }
    out
}

/// Markdown table rows: the series name to query, type, labels with their values, help.
fn table(families: &[Family]) -> String {
    let mut out = String::from("| metric | type | labels | help |\n|---|---|---|---|\n");
    for f in families {
        let name = match f.kind.as_str() {
            "counter" => format!("{}_total", f.name),
            _ => f.name.clone(),
        };
        let labels: Vec<String> = f
            .labels
            .iter()
            .map(|(key, values)| {
                let values: Vec<String> = values.iter().map(|v| format!("`{v}`")).collect();
                format!("`{key}`: {}", values.join(", "))
            })
            .collect();
        let kind = match &f.unit {
            Some(unit) => format!("{} ({unit})", f.kind),
            None => f.kind.clone(),
        };
        out.push_str(&format!(
            "| `{name}` | {kind} | {} | {} |\n",
            labels.join("<br>"),
            f.help.replace('|', "\\|")
        ));
    }
    out
}

/// The generated part of the document, markers included.
fn generated(run: &str, webhook: &str) -> String {
    format!(
        "{BEGIN}\n\n`run`, on `--health-addr`:\n\n{}\n`webhook`, on `--webhook-addr` (HTTPS):\n\n{}\n{END}",
        table(&families(run)),
        table(&families(webhook)),
    )
}

/// `/metrics` of `run` against an empty cluster, after its first pass.
async fn scrape_run() -> String {
    let env = Env::start("metrics-doc", ApiServer::builder()).await;
    let (mut cmd, port) = env.run_loop("10s");
    cmd.arg("--base-role-arn").arg(BASE).stderr(Stdio::null());
    let mut child = cmd.spawn().expect("the binary starts");
    wait_ready(port).await;
    let (code, body) = http_get(port, "/metrics").await.expect("/metrics answers");
    assert_eq!(code, 200, "{body}");
    let _ = child.kill().await;
    body
}

/// A test CA and a serving certificate it signed for `localhost`: (CA PEM, cert PEM, key PEM).
fn certificates() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "metrics doc test CA");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

/// GET `path` over TLS from 127.0.0.1:`port`, trusting only `ca_pem`, as `localhost`; the
/// body of a 200 answer, or `None` while the server does not answer.
async fn https_get(port: u16, path: &str, ca_pem: &str) -> Option<String> {
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    let ca = rustls::pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap();
    roots.add(ca).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    // A server may close without TLS's close_notify; what arrived before is the answer.
    let _ = tls.read_to_end(&mut response).await;
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

/// `/metrics` of `webhook`, before any admission request.
async fn scrape_webhook() -> String {
    let dir = ScratchDir::new("metrics-doc-webhook");
    let (ca, cert, key) = certificates();
    let write = |name: &str, body: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, body).unwrap();
        path.display().to_string()
    };
    let (cert, key) = (write("tls.crt", &cert), write("tls.key", &key));
    let port = free_port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_kube-aws-iam-controller"))
        .args(["webhook", "--webhook-addr", &format!("127.0.0.1:{port}")])
        .args(["--tls-cert-file", &cert, "--tls-key-file", &key])
        .args([
            "--sidecar-image",
            "registry.example.com/kube-aws-iam-controller:doc",
        ])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the binary starts");
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        if let Some(body) = https_get(port, "/metrics", &ca).await {
            break body;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the webhook exited with {status}");
        }
        assert!(
            Instant::now() < deadline,
            "the webhook served no /metrics within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let _ = child.kill().await;
    body
}

/// Replaces the generated part of `doc` (between the markers) with `generated`.
fn splice(doc: &str, generated: &str, path: &Path) -> String {
    let start = doc
        .find(BEGIN)
        .unwrap_or_else(|| panic!("{}: no {BEGIN:?}", path.display()));
    let end = doc[start..]
        .find(END)
        .map(|e| start + e + END.len())
        .unwrap_or_else(|| panic!("{}: no {END:?} after the begin marker", path.display()));
    format!("{}{generated}{}", &doc[..start], &doc[end..])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_doc_matches_what_the_binary_exports() {
    let run = scrape_run().await;
    let webhook = scrape_webhook().await;
    // The names the alerting rules and dashboards are written against.
    for name in [
        "# TYPE kube_aws_iam_controller_roles gauge",
        "# TYPE kube_aws_iam_controller_failing_roles_earliest_expiry_seconds gauge",
    ] {
        assert!(run.lines().any(|l| l == name), "{name} not in\n{run}");
    }
    for f in families(&run).iter().chain(&families(&webhook)) {
        assert!(!f.help.is_empty(), "{} has no help", f.name);
        assert!(
            f.kind != "counter" || !f.name.ends_with("_total"),
            "{}: the family name of a counter has no _total (its samples do)",
            f.name
        );
        if f.name.ends_with("_seconds") {
            assert_eq!(f.unit.as_deref(), Some("seconds"), "{} has no UNIT", f.name);
            assert!(f.help.contains("econds"), "{}: help names no unit", f.name);
        }
    }
    let expected = generated(&run, &webhook);
    let path = repo_root().join(DOC);
    let committed = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let updated = splice(&committed, &expected, &path);
    if std::env::var_os("UPDATE_DOCS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &updated).unwrap();
        return;
    }
    if committed != updated {
        let diff = similar::TextDiff::from_lines(&committed, &updated)
            .unified_diff()
            .header(DOC, "/metrics")
            .to_string();
        panic!(
            "{DOC}'s metric table differs from what the binary exports; regenerate it with\n  {REGENERATE}\n{diff}"
        );
    }
}

#[test]
fn families_are_read_with_their_label_values() {
    let text = "# HELP x_requests Requests by result.\n# TYPE x_requests counter\n\
                x_requests_total{result=\"ok\"} 1\nx_requests_total{result=\"failed\"} 0\n\
                # HELP x_duration_seconds Duration, in seconds.\n# TYPE x_duration_seconds histogram\n\
                # UNIT x_duration_seconds seconds\nx_duration_seconds_sum 0.0\n\
                x_duration_seconds_count 0\nx_duration_seconds_bucket{le=\"+Inf\"} 0\n# EOF\n";
    let table = table(&families(text));
    assert_eq!(
        table,
        "| metric | type | labels | help |\n|---|---|---|---|\n\
         | `x_requests_total` | counter | `result`: `failed`, `ok` | Requests by result. |\n\
         | `x_duration_seconds` | histogram (seconds) |  | Duration, in seconds. |\n"
    );
}
