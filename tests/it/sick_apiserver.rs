//! The compiled `run` against an API server that stops answering (it accepts connections and
//! the requests take effect, but no answer comes back: the loopback server's response delay):
//! SIGTERM is honoured within 10 s, and `/healthz` gives one steady answer through the outage.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::argv;
use crate::support::harness::{Env, http_get, role, wait_ready};

/// Lease timings short enough for a test: a leader that cannot renew steps down after 2 s.
const LEASE: &str = "--lease-duration 3s --lease-renew-deadline 2s --lease-retry-period 500ms";

fn run_args(port: u16, extra: &str) -> Vec<String> {
    let mut args = vec![
        "run".to_string(),
        "--interval".into(),
        "1s".into(),
        "--health-addr".into(),
        format!("127.0.0.1:{port}"),
    ];
    args.extend(argv(extra).into_iter().map(str::to_string));
    args
}

fn spawn(env: &Env, args: &[String]) -> tokio::process::Child {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    env.command(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// SIGTERM while every API request hangs: the process exits 0 within 10 s (in-flight work and
/// the Lease release are bounded), in both modes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_is_honoured_while_the_api_server_hangs() {
    for mode in ["--watch=true", "--watch=false"] {
        let env = Env::with_role("sick-sigterm", role("team-a", "first", "app-first")).await;
        let port = crate::support::harness::free_port();
        let mut child = spawn(&env, &run_args(port, &format!("{mode} {LEASE}")));
        wait_ready(port).await;
        env.api.set_delay(Duration::from_secs(3600));
        // Let Lease renewals and interval passes start hanging.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let pid = child.id().expect("running").to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(sent.success());
        let signalled = Instant::now();
        let exited = tokio::time::timeout(Duration::from_secs(20), child.wait()).await;
        let took = signalled.elapsed();
        let status = exited
            .unwrap_or_else(|_| panic!("{mode}: still running 20 s after SIGTERM"))
            .unwrap();
        eprintln!(
            "{mode}: exited {:.2}s after SIGTERM with the API server hanging",
            took.as_secs_f64()
        );
        assert_eq!(status.code(), Some(0), "{mode}");
        assert!(
            took <= Duration::from_secs(10),
            "{mode}: exit took {took:?}"
        );
        env.api.set_delay(Duration::ZERO);
    }
}

/// An outage of the API server (every answer withheld for 12 s): `/healthz` turns 503 once
/// the process could not do its job for 3 × interval, stays 503 — no flapping when the leader
/// steps down to standby — and is 200 again once the API answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_is_steady_through_an_api_outage() {
    let env = Env::with_role("sick-health", role("team-a", "first", "app-first")).await;
    let port = crate::support::harness::free_port();
    let mut child = spawn(&env, &run_args(port, LEASE));
    wait_ready(port).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    env.api.set_delay(Duration::from_secs(60));
    let outage = Instant::now();
    let mut answers: Vec<(f64, u16)> = Vec::new();
    while outage.elapsed() < Duration::from_secs(12) {
        let code = http_get(port, "/healthz").await.map_or(0, |(c, _)| c);
        answers.push((outage.elapsed().as_secs_f64(), code));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    env.api.set_delay(Duration::ZERO);
    let healed = Instant::now();
    let first_down = answers
        .iter()
        .find(|(_, c)| *c == 503)
        .map(|(t, _)| *t)
        .unwrap_or_else(|| panic!("/healthz never failed during the outage: {answers:?}"));
    assert!(
        first_down >= 3.0,
        "/healthz failed {first_down:.1}s into the outage, before 3 × interval"
    );
    let flaps: Vec<_> = answers
        .iter()
        .filter(|(t, c)| *t > first_down && *c != 503)
        .collect();
    assert!(
        flaps.is_empty(),
        "/healthz flapped after {first_down:.1}s: {flaps:?}"
    );
    eprintln!("/healthz: 503 from {first_down:.1}s into the outage, steady until it ended (12 s)");

    let mut recovered = None;
    while healed.elapsed() < Duration::from_secs(30) {
        if matches!(http_get(port, "/healthz").await, Some((200, _))) {
            recovered = Some(healed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let recovered = recovered.expect("/healthz did not recover after the outage");
    eprintln!(
        "/healthz: 200 again {:.1}s after the outage",
        recovered.as_secs_f64()
    );
    let _ = child.start_kill();
    let _ = child.wait().await;
}
