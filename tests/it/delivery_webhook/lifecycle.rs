//! The webhook's life: a certificate rotated while serving, start-up without a usable pair,
//! SIGTERM, and health, readiness and metrics over TLS.

use std::process::Command;
use std::time::{Duration, Instant};

use super::{BIN, Review as _, fixture, metric, requests_metric, response_of, setup};
use crate::support::ScratchDir;
use crate::support::harness::text;

/// cert-manager renews the certificate: kubelet swaps the Secret volume's `..data` symlink. The
/// next handshakes serve the new certificate while connections opened before keep being
/// answered; a broken update is logged and the last good pair stays in service.
#[test]
fn a_rotated_certificate_is_served_without_a_restart() {
    let mut s = setup("webhook-rotation");
    let request = fixture("unlabelled-pod.json");
    let first = s.client.review(&request);
    response_of(&first, &request);

    let (cert, key, second_digest) = s.ca.leaf("webhook two");
    assert_ne!(first.cert_sha256, second_digest);
    s.volume.update([("tls.crt", &cert), ("tls.key", &key)]);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let fresh = s.client.get("/healthz");
        if fresh.cert_sha256 == second_digest {
            break;
        }
        assert_eq!(
            fresh.cert_sha256, first.cert_sha256,
            "an unknown certificate"
        );
        assert!(
            Instant::now() < deadline,
            "the new certificate was not served within 15 s:\n{}",
            s.webhook.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The connection opened before the rotation still answers (with the old certificate).
    let old = s.client.review(&request);
    assert!(
        old.reused,
        "the request went over the pre-rotation connection"
    );
    assert_eq!(old.cert_sha256, first.cert_sha256);
    assert_eq!(response_of(&old, &request)["allowed"], true);

    // A broken update: the second pair stays in service.
    let (_, other_key, _) = s.ca.leaf("unrelated");
    let (third_cert, _, _) = s.ca.leaf("webhook three");
    s.volume
        .update([("tls.crt", &third_cert), ("tls.key", &other_key)]);
    let logged = {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let fresh = s.client.get("/healthz");
            assert_eq!(fresh.status, 200);
            assert_eq!(
                fresh.cert_sha256, second_digest,
                "a mismatched pair was served"
            );
            let metrics = s.client.get("/metrics").body;
            if metric(
                &metrics,
                "kube_aws_iam_controller_webhook_certificate_reloads_total{result=\"failed\"}",
            ) >= 1.0
            {
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    assert!(logged, "the failed reload was not counted");
    let logs = s.webhook.logs();
    assert!(
        logs.contains("does not belong to --tls-cert-file"),
        "the failure is logged with its reason:\n{logs}"
    );
    assert!(!logs.contains("PRIVATE KEY"), "key material in the logs");
    let metrics = s.client.get("/metrics").body;
    assert_eq!(
        metric(
            &metrics,
            "kube_aws_iam_controller_webhook_certificate_reloads_total{result=\"ok\"}"
        ),
        1.0
    );
    drop(s.dir);
}

/// Start-up refuses a pair that does not load, naming the flag, and exits 2.
#[test]
fn start_up_fails_clearly_without_a_usable_certificate() {
    let dir = ScratchDir::new("webhook-no-cert");
    let key = dir.path().join("tls.key");
    std::fs::write(&key, "not a key").unwrap();
    let out = Command::new(BIN)
        .args([
            "webhook",
            "--webhook-addr",
            "127.0.0.1:0",
            "--tls-cert-file",
            &dir.path().join("missing.crt").display().to_string(),
            "--tls-key-file",
            &key.display().to_string(),
        ])
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("--tls-cert-file"), "{stderr}");
}

/// SIGTERM: the webhook stops accepting, answers what is in flight, and exits 0.
#[test]
fn sigterm_stops_the_webhook_cleanly() {
    let mut s = setup("webhook-sigterm");
    let request = fixture("unlabelled-pod.json");
    response_of(&s.client.review(&request), &request);
    let pid = s.webhook.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = s.webhook.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "still running 15 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "{}", s.webhook.logs());
    assert!(s.webhook.logs().contains("stopped"));
}

#[test]
fn health_readiness_and_metrics_are_served_over_tls() {
    let mut s = setup("webhook-health");
    for path in ["/healthz", "/readyz"] {
        let reply = s.client.get(path);
        assert_eq!((reply.status, reply.body.as_str()), (200, "ok\n"), "{path}");
    }
    assert_eq!(s.client.get("/nope").status, 404);
    let request = fixture("labelled-pod.json");
    response_of(&s.client.review(&request), &request);
    let reply = s.client.get("/metrics");
    assert_eq!(reply.status, 200);
    assert!(
        reply
            .content_type
            .starts_with("application/openmetrics-text")
    );
    let body = reply.body;
    for result in ["mutated", "unchanged", "denied", "invalid"] {
        requests_metric(&body, result);
    }
    assert_eq!(requests_metric(&body, "mutated"), 1.0, "{body}");
    assert_eq!(
        metric(
            &body,
            "kube_aws_iam_controller_webhook_admission_duration_seconds_count"
        ),
        1.0,
        "{body}"
    );
    assert!(body.ends_with("# EOF\n"));
}
