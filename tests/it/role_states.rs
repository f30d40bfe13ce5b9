//! What `roles{state}` and `failing_roles_earliest_expiry_seconds` tell an operator, from the
//! compiled binary's `/metrics`: a role STS keeps denying is `failing` in the pass that tried it,
//! then `backing_off` (with no further STS call) until its `retryAfter`, and the expiry gauge
//! falls to what its Secret has left; a served role is `ready`, an invalid one `blocked`; once the
//! failing role is gone the gauge reads +Inf.
//!
//! STS is a stub on loopback that speaks the query protocol the SDK sends and denies one role
//! (moto grants every AssumeRole); the API is the loopback test API server. `--watch=false` with
//! a 2 s interval makes one pass every 2 s, so each state lasts long enough to be scraped.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams};
use kube_aws_iam_controller::domain::crd::AWSIAMRole;

use crate::support::ScratchDir;
use crate::support::apiserver::ApiServer;
use crate::support::harness::{
    BASE, free_port, http_get, marked_managed_secret, role, terminate, wait_ready,
};
use crate::support::moto::aws_env;

const MARKER: &str = "ROLESTATESEEDED";
const ROLES: &str = "kube_aws_iam_controller_roles";
const FAILING_EXPIRY: &str = "kube_aws_iam_controller_failing_roles_earliest_expiry_seconds";

/// STS on 127.0.0.1: AssumeRole denied (403 AccessDenied) for roles named in `denied`, one-hour
/// credentials for any other; every AssumeRole's role name is recorded. Stopped on drop.
struct StubSts {
    endpoint: String,
    calls: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StubSts {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StubSts {
    async fn start(denied: &'static [&'static str]) -> StubSts {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let calls = Arc::new(Mutex::new(Vec::new()));
        let recorded = calls.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let calls = recorded.clone();
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req| answer(req, calls.clone(), denied));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        StubSts {
            endpoint,
            calls,
            task,
        }
    }

    /// AssumeRole calls for the role named `name`.
    fn calls(&self, name: &str) -> usize {
        let calls = self.calls.lock().unwrap();
        calls.iter().filter(|c| c.as_str() == name).count()
    }
}

async fn answer(
    req: Request<Incoming>,
    calls: Arc<Mutex<Vec<String>>>,
    denied: &[&str],
) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let form: BTreeMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    let reply = |status: u16, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        Ok(r)
    };
    if form.get("Action").map(String::as_str) != Some("AssumeRole") {
        return reply(
            400,
            error_body("InvalidAction", "only AssumeRole is stubbed"),
        );
    }
    let arn = form.get("RoleArn").cloned().unwrap_or_default();
    let name = arn.rsplit('/').next().unwrap_or_default().to_string();
    calls.lock().unwrap().push(name.clone());
    if denied.contains(&name.as_str()) {
        let message = format!("not authorized to perform sts:AssumeRole on {arn}");
        return reply(403, error_body("AccessDenied", &message));
    }
    let expiration = Timestamp::now() + SignedDuration::from_secs(3600);
    let body = format!(
        "<AssumeRoleResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><AssumeRoleResult>\
         <AssumedRoleUser><AssumedRoleId>AROASTUB:{name}</AssumedRoleId><Arn>arn:aws:sts::123456789012:assumed-role/{name}/s</Arn></AssumedRoleUser>\
         <Credentials><AccessKeyId>ASIASTUB</AccessKeyId><SecretAccessKey>{MARKER}-secret</SecretAccessKey><SessionToken>{MARKER}-token</SessionToken><Expiration>{expiration}</Expiration></Credentials>\
         </AssumeRoleResult><ResponseMetadata><RequestId>r</RequestId></ResponseMetadata></AssumeRoleResponse>"
    );
    reply(200, body)
}

fn error_body(code: &str, message: &str) -> String {
    format!(
        "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error><RequestId>r</RequestId></ErrorResponse>"
    )
}

/// The value of one series in a scrape (`+Inf` parses as infinity).
fn value(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{metrics}"))
}

fn state(metrics: &str, state: &str) -> f64 {
    value(metrics, &format!("{ROLES}{{state=\"{state}\"}}"))
}

/// Every state's count, for failure messages and exact comparisons.
fn states(metrics: &str) -> Vec<(&'static str, f64)> {
    ["ready", "blocked", "backing_off", "failing", "pending"]
        .into_iter()
        .map(|s| (s, state(metrics, s)))
        .collect()
}

async fn scrape(port: u16) -> String {
    let (code, body) = http_get(port, "/metrics").await.expect("/metrics answers");
    assert_eq!(code, 200, "{body}");
    body
}

/// Scrapes every 50 ms until `done` holds of a scrape (true) or 10 s passed (false); the last
/// scrape.
async fn scrape_until(port: u16, done: impl Fn(&str) -> bool) -> (bool, String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = scrape(port).await;
        if done(&metrics) {
            return (true, metrics);
        }
        if Instant::now() > deadline {
            return (false, metrics);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_role_is_failing_then_backing_off_and_its_expiry_is_exported() {
    let now = Timestamp::now();
    let denied = role("team-a", "denied", "denied");
    // Five minutes left of one hour: due for refresh, and what stays in place when it fails.
    let expires = now + SignedDuration::from_secs(300);
    let held = marked_managed_secret(
        MARKER,
        &denied,
        "",
        now - SignedDuration::from_secs(3300),
        3600,
    );
    let mut invalid = role("team-a", "invalid", "app-invalid");
    invalid.spec.role_session_duration = Some(899);
    let api = ApiServer::builder()
        .object(role("team-a", "healthy", "app-healthy"))
        .object(invalid)
        .object(denied)
        .object(held)
        .start()
        .await;
    let sts = StubSts::start(&["denied"]).await;
    let dir = ScratchDir::new("role-states");
    let kubeconfig = api.write_kubeconfig(dir.path());
    let log = dir.path().join("run.log");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_kube-aws-iam-controller"))
        .args(["run", "--watch=false", "--interval", "2s"])
        .args(["--health-addr", &addr, "--base-role-arn", BASE])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "info")
        .envs(aws_env(&sts.endpoint))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("the binary starts");
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_ready(port).await;

    // The first pass: served, blocked, denied.
    let first = scrape(port).await;
    let passes = value(
        &first,
        "kube_aws_iam_controller_passes_total{result=\"ok\"}",
    );
    assert_eq!(
        passes,
        1.0,
        "scraped after the first pass only:\n{}",
        logs()
    );
    assert_eq!(
        states(&first),
        [
            ("ready", 1.0),
            ("blocked", 1.0),
            ("backing_off", 0.0),
            ("failing", 1.0),
            ("pending", 0.0)
        ],
        "{}",
        logs()
    );
    let left = value(&first, FAILING_EXPIRY);
    let expected = (expires.as_millisecond() - Timestamp::now().as_millisecond()) as f64 / 1000.0;
    assert!(
        (left - expected).abs() < 2.0,
        "the failing role's Secret has {expected:.1} s left; exported {left}"
    );
    assert_eq!(sts.calls("denied"), 1);

    // The next pass finds the role waiting for its retryAfter: no STS call, the same Secret.
    let (waited, backing_off) = scrape_until(port, |m| state(m, "backing_off") == 1.0).await;
    assert!(waited, "never backing_off:\n{backing_off}\n{}", logs());
    assert_eq!(
        states(&backing_off),
        [
            ("ready", 1.0),
            ("blocked", 1.0),
            ("backing_off", 1.0),
            ("failing", 0.0),
            ("pending", 0.0)
        ]
    );
    let left = value(&backing_off, FAILING_EXPIRY);
    let expected = (expires.as_millisecond() - Timestamp::now().as_millisecond()) as f64 / 1000.0;
    assert!(
        (left - expected).abs() < 2.0 && left < 300.0,
        "backing off, the Secret has {expected:.1} s left; exported {left}"
    );
    assert_eq!(sts.calls("denied"), 1, "no STS call while backing off");
    assert_eq!(sts.calls("app-healthy"), 1);

    // With the failing role gone, nothing is left to expire: +Inf, so `x < 1800` stays quiet.
    Api::<AWSIAMRole>::namespaced(api.client(), "team-a")
        .delete("denied", &DeleteParams::default())
        .await
        .unwrap();
    let (cleared, gone) = scrape_until(port, |m| state(m, "backing_off") == 0.0).await;
    assert!(cleared, "the deleted role is still counted:\n{gone}");
    assert!(
        gone.lines().any(|l| l == format!("{FAILING_EXPIRY} +Inf")),
        "{gone}"
    );
    assert_eq!(state(&gone, "failing"), 0.0);
    assert_eq!(state(&gone, "ready"), 1.0);
    assert_eq!(state(&gone, "blocked"), 1.0);

    assert_eq!(
        terminate(&mut child, Duration::from_secs(15)).await,
        Some(0)
    );
    assert!(!logs().contains(MARKER), "a credential value in the log");
}
