//! `/metrics` as the real processes export it, for the tests that hold docs and alerts to it:
//! `run` after a pass that wrote a Secret, and `webhook` over TLS.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::ScratchDir;
use super::harness::{Env, free_port, http_get, role, terminate, wait_ready};
use super::https::{Ca, Client, Request};

/// `run` against the loopback API server and moto, after a pass that created a Secret (so
/// `actions_total` counts something): its `/metrics`.
pub async fn run_metrics(label: &str) -> String {
    let env = Env::with_role(label, role("team-a", "app", "app-role")).await;
    let log = env.dir.path().join("run.log");
    let (mut cmd, port) = env.run_loop("1s");
    let mut child = cmd
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("run starts");
    wait_ready(port).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = String::new();
    let body = loop {
        if let Some((200, body)) = http_get(port, "/metrics").await {
            if body.contains(
                "kube_aws_iam_controller_actions_total{action=\"create\",result=\"ok\"} 1",
            ) && body.contains("kube_aws_iam_controller_pass_duration_seconds_bucket{")
            {
                break body;
            }
            last = body;
        }
        if Instant::now() > deadline {
            let logs = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("no pass with an action showed in /metrics within 20 s:\n{last}\nlog:\n{logs}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        terminate(&mut child, Duration::from_secs(10)).await,
        Some(0),
        "run stops on SIGTERM"
    );
    body
}

/// The running webhook; killed on drop.
struct Webhook(std::process::Child);

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `webhook` serving a certificate for `localhost` from a test CA, before any admission
/// request: its `/metrics`, fetched over TLS trusting only that CA.
pub async fn webhook_metrics(label: &str) -> String {
    let dir = ScratchDir::new(label);
    let ca = Ca::new();
    let (cert, key, _) = ca.leaf("metrics");
    let (cert_file, key_file) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, key).unwrap();
    let port = free_port();
    let log = dir.path().join("webhook.log");
    let mut webhook = Webhook(
        Command::new(env!("CARGO_BIN_EXE_kube-aws-iam-controller"))
            .args(["webhook", "--webhook-addr", &format!("127.0.0.1:{port}")])
            .arg("--tls-cert-file")
            .arg(&cert_file)
            .arg("--tls-key-file")
            .arg(&key_file)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("webhook starts"),
    );
    let ca_pem = ca.cert.pem();
    let deadline = Instant::now() + Duration::from_secs(20);
    let reply = loop {
        let ca_pem = ca_pem.clone();
        let attempt = tokio::task::spawn_blocking(move || {
            Client::new(port, &ca_pem).send(&Request {
                path: "/metrics",
                ..Request::default()
            })
        })
        .await
        .unwrap();
        if let Ok(reply) = attempt {
            break reply;
        }
        if let Ok(Some(status)) = webhook.0.try_wait() {
            panic!(
                "the webhook exited with {status}:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "the webhook served no /metrics within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    drop(webhook);
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body
}
