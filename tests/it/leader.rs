//! Leader election end to end: two `run` replicas against the loopback API server share the
//! work of one (only the Lease holder writes or calls STS), the standby takes over when the
//! leader is killed, and `once` takes the same Lease, so two controllers never pass together;
//! a `once` whose Lease is taken mid-pass starts no further action and exits 1.

use std::process::Stdio;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::DeleteParams;
use tokio::process::Child;

use crate::support::apiserver::ApiServer;
use crate::support::argv;
use crate::support::assert_contains;
use crate::support::harness::*;

const LEASE_NS: &str = "kube-system";
const LEASE_NAME: &str = "kube-aws-iam-controller";

/// A Lease that outlives any start-up delay, so taking it quickly proves it was released.
const SLOW: &str = "--lease-duration 30s --lease-renew-deadline 10s --lease-retry-period 1s";

/// Short timings for tests that do not measure failover.
const FAST: &str = "--lease-duration 4s --lease-renew-deadline 3s --lease-retry-period 1s";

fn roles(n: usize) -> crate::support::apiserver::ApiServerBuilder {
    ApiServer::builder().objects((0..n).map(|i| role("team-a", &format!("app-{i}"), "app")))
}

/// The value of an unlabelled (or fully labelled) sample, e.g. `…_leader` or
/// `…_sts_calls_total{result="ok"}`.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

const LEADER: &str = "kube_aws_iam_controller_leader";
const PASSES_OK: &str = "kube_aws_iam_controller_passes_total{result=\"ok\"}";
const STS_OK: &str = "kube_aws_iam_controller_sts_calls_total{result=\"ok\"}";

struct Replica {
    child: Child,
    port: u16,
}

impl Replica {
    fn start(env: &Env, name: &str, extra: &[&str]) -> Replica {
        let (mut run, port) = env.run_loop("1s");
        let log = std::fs::File::create(env.dir.path().join(format!("{name}.log"))).unwrap();
        let child = run.args(extra).stderr(Stdio::from(log)).spawn().unwrap();
        Replica { child, port }
    }

    async fn metric(&self, series: &str) -> Option<f64> {
        let (_, body) = http_get(self.port, "/metrics").await?;
        sample(&body, series)
    }

    async fn leading(&self) -> bool {
        self.metric(LEADER).await == Some(1.0)
    }

    async fn terminate(mut self) -> Option<i32> {
        crate::support::harness::terminate(&mut self.child, Duration::from_secs(20)).await
    }
}

async fn lease_holder(client: &kube::Client) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), LEASE_NS)
        .get_opt(LEASE_NAME)
        .await
        .unwrap()
        .and_then(|l| l.spec?.holder_identity)
}

async fn all_served(client: &kube::Client, n: usize) -> bool {
    let api = Api::<Secret>::namespaced(client.clone(), "team-a");
    for i in 0..n {
        let name = format!("app-{i}");
        if api.get_opt(&name).await.ok().flatten().is_none() {
            return false;
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_pass_as_one_and_the_standby_takes_over_with_default_timings() {
    let env = Env::start("leader-failover", roles(3)).await;
    let client = env.client();
    let a = Replica::start(&env, "a", &[]);
    let b = Replica::start(&env, "b", &[]);
    assert!(
        eventually(Duration::from_secs(30), || all_served(&client, 3)).await,
        "the roles were not served"
    );
    // Both are ready (the standby too: it can take over), exactly one leads.
    let both_ready = eventually(Duration::from_secs(15), || async {
        http_get(a.port, "/readyz").await.map(|r| r.0) == Some(200)
            && http_get(b.port, "/readyz").await.map(|r| r.0) == Some(200)
    })
    .await;
    assert!(both_ready, "a standby replica is ready");
    // Several intervals with both running: the work was done once.
    let leader_passes = eventually(Duration::from_secs(15), || async {
        let (pa, pb) = (a.metric(PASSES_OK).await, b.metric(PASSES_OK).await);
        pa.unwrap_or(0.0) + pb.unwrap_or(0.0) >= 4.0
    })
    .await;
    assert!(leader_passes);
    let (a_leads, b_leads) = (a.leading().await, b.leading().await);
    assert!(
        a_leads ^ b_leads,
        "exactly one leader (a: {a_leads}, b: {b_leads})"
    );
    let (leader, standby) = if a_leads { (a, b) } else { (b, a) };
    assert_eq!(
        standby.metric(PASSES_OK).await,
        Some(0.0),
        "the standby never passed"
    );
    assert_eq!(
        standby.metric(STS_OK).await,
        Some(0.0),
        "the standby never called STS"
    );
    assert_eq!(leader.metric(STS_OK).await, Some(3.0));
    assert_eq!(env.moto.calls("AssumeRole"), 3, "each role assumed once");
    assert_eq!(
        env.api.write_count_for("secrets"),
        3,
        "each Secret written once"
    );
    let holder = lease_holder(&client).await.expect("a holder");
    assert!(
        holder.ends_with(&format!("_{}", leader.child.id().unwrap())),
        "the Lease names the leader: {holder}"
    );

    // Kill the leader outright (no release): the standby takes over once the Lease expires.
    let mut leader = leader;
    leader.child.start_kill().unwrap();
    let killed = Instant::now();
    let _ = leader.child.wait().await;
    // Replaced once it has passed as the new leader (its state is warm: it watched all along).
    let took_over = eventually(Duration::from_secs(30), || async {
        standby.leading().await && standby.metric(PASSES_OK).await.unwrap_or(0.0) >= 1.0
    })
    .await;
    let failover = killed.elapsed();
    assert!(took_over, "the standby never took over");
    eprintln!(
        "failover after SIGKILL with the default timings (15s lease, 10s renew deadline, 2s retry): passed as leader after {:.1}s",
        failover.as_secs_f64()
    );
    // --lease-duration, plus the retry period in which the standby last saw the Lease change
    // and one pass (1s).
    assert!(
        failover <= Duration::from_secs(15 + 2 + 1 + 1),
        "failover took {failover:?}"
    );
    // The new leader works: a deleted Secret comes back.
    Api::<Secret>::namespaced(client.clone(), "team-a")
        .delete("app-0", &DeleteParams::default())
        .await
        .unwrap();
    assert!(eventually(Duration::from_secs(15), || all_served(&client, 3)).await);
    assert!(
        eventually(Duration::from_secs(10), || async {
            standby.metric(STS_OK).await == Some(1.0)
        })
        .await,
        "the new leader made the STS call"
    );

    // A graceful stop releases the Lease: a third replica takes over within a retry period.
    let third = Replica::start(&env, "c", &[]);
    wait_ready(third.port).await;
    assert!(!third.leading().await);
    assert_eq!(standby.terminate().await, Some(0));
    let stopping = Instant::now();
    let took_over = eventually(Duration::from_secs(10), || third.leading()).await;
    let handover = stopping.elapsed();
    assert!(took_over, "the third replica never took over");
    eprintln!(
        "take-over after SIGTERM of the leader: {:.1}s after it exited",
        handover.as_secs_f64()
    );
    assert!(
        handover <= Duration::from_secs(2 + 1),
        "take-over after the leader's exit took {handover:?} (retry period 2s)"
    );
    assert_eq!(third.terminate().await, Some(0));
    assert_eq!(lease_holder(&client).await, None, "released on SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_takes_the_same_lease_as_run() {
    let env = Env::start("leader-once", roles(3)).await;
    let client = env.client();

    // Two `once` at the same time: one passes, the other waits for the Lease and then finds
    // nothing to do. Every role is assumed once, not twice.
    let mut args = vec!["once"];
    args.extend(argv(FAST));
    let (first, second) = tokio::join!(env.run(&args), env.run(&args));
    for out in [&first, &second] {
        assert_eq!(out.status.code(), Some(0), "stderr:\n{}", text(&out.stderr));
    }
    assert_eq!(env.moto.calls("AssumeRole"), 3, "{:?}", env.moto.counts());
    assert!(all_served(&client, 3).await);
    assert_eq!(lease_holder(&client).await, None, "each once released it");

    // While `run` holds the Lease, `once` waits its bounded time and exits 2 naming the holder.
    let run = Replica::start(&env, "run", &argv(SLOW));
    assert!(eventually(Duration::from_secs(15), || run.leading()).await);
    let mut args = vec!["once", "--lease-wait", "2s"];
    args.extend(argv(SLOW));
    let started = Instant::now();
    let assumed = env.moto.calls("AssumeRole");
    let out = env.run_code(&args, 2).await;
    assert_eq!(
        env.moto.calls("AssumeRole"),
        assumed,
        "a once without the Lease assumed a role"
    );
    let stderr = text(&out.stderr);
    let holder = lease_holder(&client).await.unwrap();
    assert_contains(&stderr, &format!("is held by {holder}"));
    assert_contains(&stderr, "waited 2s");
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert!(!stderr.contains("pass done"), "{stderr}");

    // Once `run` stops (releasing the Lease), `once` gets it without waiting for expiry.
    assert_eq!(run.terminate().await, Some(0));
    let started = Instant::now();
    env.run_ok(&args).await;
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}: the Lease was not released (it would be taken over after 30s)",
        started.elapsed()
    );

    // --leader-elect=false never touches the Lease.
    env.api.clear_requests();
    env.run_ok(&["once", "--leader-elect=false"]).await;
    assert!(env.api.requests().iter().all(|r| r.resource != "leases"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_stops_starting_actions_when_its_lease_is_taken_mid_pass() {
    let n = 40;
    let env = Env::start("leader-lost", roles(n)).await;
    let client = env.client();
    // Slow answers and one action at a time stretch the pass over several renewals.
    env.api.set_delay(Duration::from_millis(100));
    let mut args = vec!["once", "--concurrency", "1"];
    args.extend(argv(FAST));
    let once = env.command(&args).output();
    let steal = async {
        let started = eventually(Duration::from_secs(30), || async {
            secret_creates(&env) >= 2
        })
        .await;
        assert!(started, "the pass did not start");
        // Another controller takes the Lease (as after this one missed its renew deadline).
        let leases = Api::<Lease>::namespaced(client.clone(), LEASE_NS);
        let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(jiff::Timestamp::now());
        let patch = serde_json::json!({"spec": {
            "holderIdentity": "intruder",
            "renewTime": now,
            "leaseDurationSeconds": 60,
        }});
        leases
            .patch(
                LEASE_NAME,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await
            .unwrap();
        secret_creates(&env)
    };
    let (out, at_steal) = tokio::join!(
        async {
            tokio::time::timeout(Duration::from_secs(90), once)
                .await
                .expect("once finishes")
                .unwrap()
        },
        steal
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("lost the leader lease to another holder")
            && stderr.contains("lost the leader lease during the pass"),
        "{stderr}"
    );
    // Work was left undone, so the Job fails and the next run (or the new leader) does it.
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    // It noticed within a renewal (1s) and the action then in flight; it started no more.
    let created = secret_creates(&env);
    assert!(
        created < n && created <= at_steal + 12,
        "{created} Secrets created, {at_steal} when the Lease was taken"
    );
    assert!(stderr.contains("not started"), "{stderr}");
    // The new holder's Lease is left as it is: not renewed over, not released.
    assert_eq!(lease_holder(&client).await.as_deref(), Some("intruder"));
}

fn secret_creates(env: &Env) -> usize {
    env.api
        .requests()
        .iter()
        .filter(|r| r.resource == "secrets" && r.verb == "create" && r.status < 300)
        .count()
}
