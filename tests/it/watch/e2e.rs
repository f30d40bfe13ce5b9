//! The event-driven `run` end to end (full tier): the compiled binary keeps its state with
//! watches against the loopback API server and moto.

use std::process::Stdio;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube_aws_iam_controller::domain::crd::AWSIAMRole;
use kube_aws_iam_controller::domain::secret;

use crate::support::apiserver::ApiServer;
use crate::support::harness::{
    BASE, Env, eventually, http_get, role, serve_as_controller, terminate, wait_ready,
};

use super::secret_of;

/// The value of the first sample of `metric` (name with labels, as exported).
fn sample(metrics: &str, metric: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(metric)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {metric} in:\n{metrics}"))
}

async fn metrics(port: u16) -> String {
    let (code, body) = http_get(port, "/metrics").await.expect("/metrics answers");
    assert_eq!(code, 200);
    body
}

async fn passes(port: u16) -> f64 {
    sample(
        &metrics(port).await,
        "kube_aws_iam_controller_passes_total{result=\"ok\"}",
    )
}

fn generation_of(s: &Secret) -> String {
    let data = s.data.as_ref().expect("data");
    String::from_utf8(data[secret::KEY_GENERATION].0.clone()).unwrap()
}

async fn create_role(client: &Client, ns: &str, name: &str, reference: &str) {
    Api::<AWSIAMRole>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &role(ns, name, reference))
        .await
        .unwrap();
}

/// `run --interval 5m`: a new role, a Secret deleted by hand and a spec edit are each handled
/// within seconds, by passes the changes start (not the interval, nor a list).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_are_served_without_waiting_for_the_interval() {
    let env = Env::with_role("watch-changes", role("team-a", "first", "app-first")).await;
    let client = env.client();
    let (mut run, port) = env.run_loop("5m");
    let mut child = run.stderr(Stdio::null()).spawn().unwrap();
    wait_ready(port).await;
    assert!(secret_of(&client, "team-a", "first").await.is_some());

    // A new AWSIAMRole.
    create_role(&client, "team-a", "second", "app-second").await;
    let created = Instant::now();
    let served = eventually(Duration::from_secs(5), || async {
        secret_of(&client, "team-a", "second").await.is_some()
    })
    .await;
    assert!(
        served,
        "the new role was not served within 5 s (--interval 5m)"
    );
    eprintln!(
        "new AWSIAMRole served after {:.3}s",
        created.elapsed().as_secs_f64()
    );

    // A managed Secret deleted by hand.
    Api::<Secret>::namespaced(client.clone(), "team-a")
        .delete("first", &DeleteParams::default())
        .await
        .unwrap();
    let deleted = Instant::now();
    let back = eventually(Duration::from_secs(5), || async {
        secret_of(&client, "team-a", "first").await.is_some()
    })
    .await;
    assert!(back, "the deleted Secret was not written again within 5 s");
    eprintln!(
        "deleted Secret back after {:.3}s",
        deleted.elapsed().as_secs_f64()
    );

    // A spec edit re-issues (the Secret then names the new generation).
    let before = generation_of(&secret_of(&client, "team-a", "second").await.unwrap());
    let patch = serde_json::json!({"spec": {"roleReference": "app-second-v2"}});
    let edited = Api::<AWSIAMRole>::namespaced(client.clone(), "team-a")
        .patch("second", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let generation = edited.metadata.generation.unwrap().to_string();
    assert_ne!(before, generation);
    let reissued = eventually(Duration::from_secs(5), || async {
        let s = secret_of(&client, "team-a", "second").await;
        s.is_some_and(|s| {
            generation_of(&s) == generation
                && s.data.as_ref().unwrap()[secret::KEY_ROLE_ARN].0
                    == format!("{BASE}app-second-v2").into_bytes()
        })
    })
    .await;
    assert!(reissued, "the spec edit was not re-issued within 5 s");

    // None of it listed anything after the first lists: passes read the watched state.
    let reads: Vec<String> = env
        .api
        .requests()
        .into_iter()
        .filter(|r| r.verb == "list" && (r.resource == "awsiamroles" || r.resource == "secrets"))
        .map(|r| format!("{} {}?{}", r.verb, r.path, r.query))
        .collect();
    assert_eq!(
        reads.len(),
        2,
        "one list per kind, then watches: {reads:#?}"
    );
    let m = metrics(port).await;
    assert!(
        sample(
            &m,
            "kube_aws_iam_controller_pass_triggers_total{trigger=\"change\"}"
        ) >= 3.0,
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            "kube_aws_iam_controller_pass_triggers_total{trigger=\"interval\"}"
        ),
        0.0
    );
    assert_eq!(
        terminate(&mut child, Duration::from_secs(15)).await,
        Some(0)
    );
}

/// 500 AWSIAMRoles created at once (as one `kubectl apply` would) are served by a handful of
/// passes, not 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_roles_makes_a_handful_of_passes() {
    let env = Env::start("watch-burst", ApiServer::builder()).await;
    let client = env.client();
    let port = crate::support::harness::free_port();
    let addr = format!("127.0.0.1:{port}");
    let args = [
        "run",
        "--interval",
        "5m",
        "--health-addr",
        &addr,
        "--sts-rate",
        "2000",
        "--sts-burst",
        "500",
        "--concurrency",
        "16",
    ];
    let mut child = env
        .command(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_ready(port).await;
    let before = passes(port).await;
    let api = Api::<AWSIAMRole>::namespaced(client.clone(), "burst");
    let created = futures::future::join_all((0..500).map(|i| {
        let api = api.clone();
        async move {
            let r = role("burst", &format!("r{i:03}"), &format!("app-{i}"));
            api.create(&PostParams::default(), &r).await
        }
    }))
    .await;
    assert!(created.iter().all(Result::is_ok));
    let secrets = Api::<Secret>::namespaced(client.clone(), "burst");
    let all = eventually(Duration::from_secs(60), || async {
        secrets
            .list(&Default::default())
            .await
            .map(|l| l.items.len() == 500)
            .unwrap_or(false)
    })
    .await;
    assert!(all, "not every role of the burst was served within 60 s");
    // Let the passes that the controller's own writes start run out.
    let settled = eventually(Duration::from_secs(10), || async {
        let a = passes(port).await;
        tokio::time::sleep(Duration::from_millis(800)).await;
        passes(port).await == a
    })
    .await;
    assert!(settled, "passes never stopped");
    let made = passes(port).await - before;
    eprintln!("500 roles created at once: {made} passes");
    assert!(made <= 15.0, "{made} passes for a burst of 500 roles");
    assert_eq!(env.moto.calls("AssumeRole"), 500, "one AssumeRole per role");
    assert_eq!(
        terminate(&mut child, Duration::from_secs(15)).await,
        Some(0)
    );
}

/// Watches that break stop the controller from applying anything until a list succeeds again;
/// `/healthz` fails after 3 × interval; once the list answers, the state heals and the waiting
/// work is done. A first list that never succeeds means no pass at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_watch_applies_nothing_until_relisted() {
    let env = Env::with_role("watch-broken", role("team-a", "first", "app-first")).await;
    let client = env.client();
    let (mut run, port) = env.run_loop("1s");
    let mut child = run.stderr(Stdio::null()).spawn().unwrap();
    wait_ready(port).await;

    // Every watch is cut and no list of Secrets answers: the state is stale.
    env.api.fail_lists("secrets", true);
    env.api.fail_watches("secrets", true);
    env.api.break_watches();
    let broke = Instant::now();
    create_role(&client, "team-a", "second", "app-second").await;
    let unhealthy = eventually(Duration::from_secs(10), || async {
        matches!(http_get(port, "/healthz").await, Some((503, _)))
    })
    .await;
    assert!(
        unhealthy,
        "/healthz did not fail while the watch was broken"
    );
    let after = broke.elapsed();
    assert!(
        after >= Duration::from_secs(3),
        "/healthz failed after {after:?}, before 3 × interval"
    );
    assert!(
        secret_of(&client, "team-a", "second").await.is_none(),
        "a pass applied on a stale state"
    );
    let m = metrics(port).await;
    assert!(
        sample(
            &m,
            "kube_aws_iam_controller_passes_total{result=\"failed\"}"
        ) >= 1.0
    );

    // The API answers again: one relist heals the state and the new role is served.
    env.api.fail_lists("secrets", false);
    env.api.fail_watches("secrets", false);
    let served = eventually(Duration::from_secs(20), || async {
        secret_of(&client, "team-a", "second").await.is_some()
    })
    .await;
    assert!(served, "the role was not served after the watch healed");
    let healthy = eventually(Duration::from_secs(5), || async {
        matches!(http_get(port, "/healthz").await, Some((200, _)))
    })
    .await;
    assert!(healthy, "/healthz did not recover");
    assert_eq!(
        terminate(&mut child, Duration::from_secs(15)).await,
        Some(0)
    );
}

/// A controller whose first list of AWSIAMRoles never succeeds never passes: an orphaned
/// Secret (its role may simply not be listed yet) is not deleted, and it is never ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_pass_on_an_unsynced_state() {
    let owner = role("team-a", "gone", "app-gone");
    let api = ApiServer::builder().object(owner.clone());
    let env = Env::start("watch-unsynced", api).await;
    let client = env.client();
    let stored = Api::<AWSIAMRole>::namespaced(client.clone(), "team-a")
        .get("gone")
        .await
        .unwrap();
    serve_as_controller(&client, &stored, "UNSYNCED", Timestamp::now(), true).await;
    env.api.fail_lists("awsiamroles", true);
    // The role is deleted without its Secret (as if the cascade had not run yet): the
    // Secret is an orphan only a complete state may delete.
    let orphan = secret_of(&client, "team-a", "gone").await.unwrap();
    let mut unowned = orphan.clone();
    unowned.metadata.owner_references = None;
    Api::<Secret>::namespaced(client.clone(), "team-a")
        .replace("gone", &PostParams::default(), &unowned)
        .await
        .unwrap();
    Api::<AWSIAMRole>::namespaced(client.clone(), "team-a")
        .delete("gone", &DeleteParams::default())
        .await
        .unwrap();

    let (mut run, port) = env.run_loop("1s");
    let mut child = run.stderr(Stdio::null()).spawn().unwrap();
    let listing = env
        .api
        .wait_for_requests(Duration::from_secs(20), |r| {
            r.iter()
                .filter(|r| r.resource == "awsiamroles" && r.verb == "list")
                .count()
                >= 2
        })
        .await;
    assert!(listing, "the controller did not try to list AWSIAMRoles");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(matches!(http_get(port, "/readyz").await, Some((503, _))));
    assert_eq!(passes(port).await, 0.0, "a pass ran on an unsynced state");
    assert!(secret_of(&client, "team-a", "gone").await.is_some());
    assert_eq!(env.api.write_count_for("secrets"), 0);

    // Once the list succeeds, the orphan goes.
    env.api.fail_lists("awsiamroles", false);
    let deleted = eventually(Duration::from_secs(20), || async {
        secret_of(&client, "team-a", "gone").await.is_none()
    })
    .await;
    assert!(
        deleted,
        "the orphan was not deleted once the state was complete"
    );
    assert_eq!(
        terminate(&mut child, Duration::from_secs(15)).await,
        Some(0)
    );
}

/// An idle controller reads nothing: passes on `--interval` make no list and no GET, only the
/// Lease is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_passes_make_no_api_read() {
    let env = Env::with_role("watch-idle", role("team-a", "first", "app-first")).await;
    let (mut run, port) = env.run_loop("1s");
    let mut child = run.stderr(Stdio::piped()).spawn().unwrap();
    wait_ready(port).await;
    let served = eventually(Duration::from_secs(5), || async {
        env.moto.calls("AssumeRole") == 1
    })
    .await;
    assert!(served);
    // Settle, then watch three interval passes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    env.api.clear_requests();
    let before = passes(port).await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert!(
        passes(port).await - before >= 3.0,
        "the interval still passes"
    );
    let reads: Vec<String> = env
        .api
        .requests()
        .into_iter()
        .filter(|r| r.resource != "leases" && r.verb != "watch")
        .map(|r| format!("{} {}?{}", r.verb, r.path, r.query))
        .collect();
    assert!(reads.is_empty(), "idle passes read: {reads:#?}");
    assert_eq!(env.moto.calls("AssumeRole"), 1);
    assert_eq!(
        terminate(&mut child, Duration::from_secs(15)).await,
        Some(0)
    );
    // The summary line of each pass says what started it.
    let mut log = String::new();
    use tokio::io::AsyncReadExt as _;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .await
        .unwrap();
    let summaries: Vec<&str> = log.lines().filter(|l| l.contains("pass done")).collect();
    for trigger in ["start", "interval"] {
        let named = format!("trigger=\"{trigger}\"");
        assert!(
            summaries.iter().any(|l| l.contains(&named)),
            "no summary line with {named}: {summaries:#?}"
        );
    }
}

/// `--watch=false` behaves as before: a list of each kind every pass, no watch at all, and a
/// new role waits for the next interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_false_lists_every_pass() {
    let env = Env::with_role("watch-false", role("team-a", "first", "app-first")).await;
    let client = env.client();
    let port = crate::support::harness::free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = env
        .command(&[
            "run",
            "--watch=false",
            "--interval",
            "1s",
            "--health-addr",
            &addr,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_ready(port).await;
    create_role(&client, "team-a", "second", "app-second").await;
    let served = eventually(Duration::from_secs(5), || async {
        secret_of(&client, "team-a", "second").await.is_some()
    })
    .await;
    assert!(served);
    let before = passes(port).await;
    env.api.clear_requests();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let made = passes(port).await - before;
    let requests = env.api.requests();
    let lists = |resource: &str| {
        requests
            .iter()
            .filter(|r| r.verb == "list" && r.resource == resource)
            .count() as f64
    };
    assert!(made >= 2.0);
    assert!(lists("awsiamroles") >= made - 1.0 && lists("secrets") >= made - 1.0);
    assert!(
        requests.iter().all(|r| r.verb != "watch"),
        "a watch with --watch=false"
    );
    let m = metrics(port).await;
    assert_eq!(
        sample(
            &m,
            "kube_aws_iam_controller_pass_triggers_total{trigger=\"change\"}"
        ),
        0.0
    );
    assert_eq!(
        terminate(&mut child, Duration::from_secs(15)).await,
        Some(0)
    );
}
