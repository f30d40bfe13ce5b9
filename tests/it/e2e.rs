//! End to end: the compiled binary against the loopback Kubernetes API (kube-fake-client behind
//! a real HTTP server, reached through a kubeconfig) and moto's STS (through
//! `AWS_ENDPOINT_URL_STS`), with the Secrets it writes read back by the real AWS CLI.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, ObjectMeta, PostParams};
use kube::{Api, Client};
use kube_aws_iam_controller::crd::{AWSIAMRole, AWSIAMRoleSpec};
use kube_aws_iam_controller::model::ObservedRole;
use kube_aws_iam_controller::plan::ready_status;
use kube_aws_iam_controller::secret::{self, Credentials};
use serde_json::json;

use crate::support::apiserver::{ApiServer, ApiServerBuilder};
use crate::support::moto::{self, Moto, ScratchDir};

const BASE: &str = "arn:aws:iam::123456789012:role/";
/// Marker in credentials the tests seed; no output may contain it.
const SEEDED: &str = "E2ESEEDED";

struct Env {
    api: ApiServer,
    moto: Moto,
    dir: ScratchDir,
    kubeconfig: PathBuf,
}

impl Env {
    async fn start(label: &str, builder: ApiServerBuilder) -> Env {
        let api = builder.start().await;
        let moto = Moto::start();
        let dir = ScratchDir::new(label);
        let kubeconfig = api.write_kubeconfig(dir.path());
        Env {
            api,
            moto,
            dir,
            kubeconfig,
        }
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_kube-aws-iam-controller"));
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("KUBECONFIG", &self.kubeconfig)
            .env("RUST_LOG", "info")
            .envs(moto::aws_env(&self.moto.endpoint()))
            .kill_on_drop(true);
        cmd
    }

    /// Runs the binary to completion (at most a minute).
    async fn run(&self, args: &[&str]) -> Output {
        let child = self.command(args).output();
        tokio::time::timeout(Duration::from_secs(60), child)
            .await
            .expect("the binary finishes within a minute")
            .expect("the binary starts")
    }

    fn client(&self) -> Client {
        self.api.client()
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn role(ns: &str, name: &str, reference: &str) -> AWSIAMRole {
    let mut r = AWSIAMRole::new(
        name,
        AWSIAMRoleSpec {
            role_reference: reference.into(),
            role_session_duration: None,
        },
    );
    r.metadata.namespace = Some(ns.into());
    r
}

fn observed(role: &AWSIAMRole, uid: &str) -> ObservedRole {
    let mut v = serde_json::to_value(role).unwrap();
    v["metadata"]["uid"] = json!(uid);
    v["metadata"]["generation"] = json!(1);
    ObservedRole::from_value(&v, "").unwrap()
}

fn seeded_credentials(tag: &str, expiration: Timestamp) -> Credentials {
    Credentials {
        access_key_id: format!("ASIA{SEEDED}"),
        secret_access_key: format!("{SEEDED}-secret-{tag}"),
        session_token: format!("{SEEDED}-token-{tag}"),
        expiration,
    }
}

/// A managed Secret as the controller would have written it for `role` (owner UID unknown
/// until the fake assigns one, so it is owned by name only when `uid` is empty).
fn managed_secret(role: &AWSIAMRole, uid: &str, issued: Timestamp, lifetime: i64) -> Secret {
    let r = observed(role, uid);
    let arn = format!("{BASE}{}", role.spec.role_reference);
    let creds = seeded_credentials(&r.name, issued + SignedDuration::from_secs(lifetime));
    let mut s = secret::build(&r, &arn, &creds, issued);
    s.metadata.owner_references = None;
    s
}

/// Every credential value in a Secret's `credentials.json`.
fn credential_values(s: &Secret) -> Vec<String> {
    let data = s.data.as_ref().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&data[secret::KEY_JSON].0).unwrap();
    ["AccessKeyId", "SecretAccessKey", "SessionToken"]
        .iter()
        .map(|k| json[k].as_str().unwrap().to_string())
        .collect()
}

fn data_map(s: &Secret) -> BTreeMap<String, Vec<u8>> {
    s.data
        .as_ref()
        .unwrap()
        .iter()
        .map(|(k, ByteString(v))| (k.clone(), v.clone()))
        .collect()
}

fn assert_no_leak(out: &Output, values: &[String]) {
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(!all.contains(SEEDED), "seeded credential in output");
    for v in values {
        assert!(
            !all.contains(v.as_str()),
            "a credential value appears in the output"
        );
    }
}

/// The mixed state of the issue: new, expiring, orphaned, conflicting and invalid roles.
fn mixed_state() -> ApiServerBuilder {
    let now = Timestamp::now();
    let expiring = role("team-a", "expiring", "app-expiring");
    let orphan_owner = role("team-a", "orphan", "app-orphan");
    let mut foreign = Secret {
        metadata: ObjectMeta {
            name: Some("taken".into()),
            namespace: Some("team-b".into()),
            labels: Some(BTreeMap::from([("app".to_string(), "other".to_string())])),
            ..ObjectMeta::default()
        },
        ..Secret::default()
    };
    foreign.data = Some(BTreeMap::from([(
        "token".to_string(),
        ByteString(format!("{SEEDED}-foreign").into_bytes()),
    )]));
    let mut invalid = role("team-b", "invalid", "app-invalid");
    invalid.spec.role_session_duration = Some(899);
    ApiServer::builder()
        .object(role("team-a", "new", "app-new"))
        .object(expiring.clone())
        .object(managed_secret(
            &expiring,
            "",
            now - SignedDuration::from_mins(55),
            3600,
        ))
        .object(managed_secret(
            &orphan_owner,
            "",
            now - SignedDuration::from_mins(10),
            3600,
        ))
        .object(role("team-b", "taken", "app-taken"))
        .object(foreign)
        .object(invalid)
        .json(json!({
            "apiVersion": "zalando.org/v1", "kind": "AWSIAMRole",
            "metadata": {"name": "wrong-types", "namespace": "team-b"},
            "spec": {"roleReference": ["app"], "roleSessionDuration": "3600"}
        }))
}

/// The Ready condition, read untyped (a role with a malformed spec does not decode).
async fn condition(client: &Client, ns: &str, name: &str) -> (String, String, String) {
    let api: Api<kube::core::DynamicObject> = Api::namespaced_with(
        client.clone(),
        ns,
        &kube::core::ApiResource::erase::<AWSIAMRole>(&()),
    );
    let r = api.get(name).await.unwrap();
    let c = r.data["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .unwrap_or_else(|| panic!("{ns}/{name} has no Ready condition"));
    let field = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    (field("status"), field("reason"), field("message"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_serves_a_mixed_state_and_the_second_pass_is_a_no_op() {
    let env = Env::start("e2e-mixed", mixed_state()).await;
    let client = env.client();
    let start = Instant::now();
    let out = env.run(&["once"]).await;
    let took = start.elapsed();
    assert_eq!(out.status.code(), Some(0), "stderr:\n{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("pass done: create=1, refresh=1"),
        "{stderr}"
    );
    // One GetCallerIdentity (base ARN discovery), one AssumeRole per new or expiring role.
    assert_eq!(env.moto.calls("GetCallerIdentity"), 1);
    assert_eq!(env.moto.calls("AssumeRole"), 2);

    let secrets = Api::<Secret>::all(client.clone());
    let by_name: BTreeMap<String, Secret> = secrets
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|s| (s.metadata.name.clone().unwrap(), s))
        .collect();
    assert!(!by_name.contains_key("orphan"), "orphan deleted");
    let taken = &by_name["taken"];
    assert_eq!(
        taken.data.as_ref().unwrap()["token"].0,
        format!("{SEEDED}-foreign").into_bytes(),
        "an unmanaged Secret is never touched"
    );
    assert!(
        taken
            .metadata
            .labels
            .as_ref()
            .unwrap()
            .get("heritage")
            .is_none()
    );
    let mut leaked = Vec::new();
    for (name, reference) in [("new", "app-new"), ("expiring", "app-expiring")] {
        let s = &by_name[name];
        let data = s.data.as_ref().unwrap();
        assert_eq!(
            data["role-arn"].0,
            format!("{BASE}{reference}").into_bytes()
        );
        assert!(secret::is_managed(s.metadata.labels.as_ref().unwrap()));
        let owner = &s.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str()),
            ("AWSIAMRole", name)
        );
        let values = credential_values(s);
        assert!(
            !values.iter().any(|v| v.contains(SEEDED)),
            "{name} holds new credentials"
        );
        leaked.extend(values);
    }
    assert_no_leak(&out, &leaked);

    assert_eq!(condition(&client, "team-a", "new").await.0, "True");
    assert_eq!(condition(&client, "team-a", "expiring").await.0, "True");
    let (status, reason, _) = condition(&client, "team-b", "taken").await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "SecretConflict")
    );
    let (_, reason, message) = condition(&client, "team-b", "invalid").await;
    assert_eq!(reason, "InvalidSpec");
    assert!(message.contains("roleSessionDuration"), "{message}");
    let (_, reason, message) = condition(&client, "team-b", "wrong-types").await;
    assert_eq!(reason, "InvalidSpec");
    assert!(message.contains("must be"), "{message}");

    let events = Api::<Event>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    let reasons: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            let on = e
                .regarding
                .as_ref()
                .and_then(|r| r.name.clone())
                .unwrap_or_default();
            (on, e.reason.clone().unwrap_or_default())
        })
        .collect();
    for expected in [
        ("new", "CreateCredentials"),
        ("expiring", "UpdateCredentials"),
        ("orphan", "DeleteCredentials"),
        ("taken", "SecretConflict"),
        ("invalid", "InvalidSpec"),
    ] {
        assert!(
            reasons.contains(&(expected.0.to_string(), expected.1.to_string())),
            "missing event {expected:?} in {reasons:?}"
        );
    }

    // The Secret's files work for SDK consumers, both ways.
    let data = data_map(&by_name["new"]);
    let arn =
        moto::caller_identity_with_credentials_file(&env.moto.endpoint(), &data, env.dir.path())
            .expect("the credentials file authenticates");
    assert!(arn.contains("assumed-role/app-new/team-a.new"), "{arn}");
    let arn =
        moto::caller_identity_with_credential_process(&env.moto.endpoint(), &data, env.dir.path())
            .expect("credential_process authenticates");
    assert!(arn.contains("assumed-role/app-new/team-a.new"), "{arn}");

    // Second pass: nothing to do, so no writes and no STS calls at all.
    env.moto.reset_counts();
    let writes = env.api.write_count();
    let events_written = env.api.write_count_for("events");
    let out = env.run(&["once", "--base-role-arn", BASE]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        env.api.write_count(),
        writes,
        "second pass wrote:\n{}",
        text(&out.stderr)
    );
    assert_eq!(env.api.write_count_for("events"), events_written);
    assert_eq!(env.moto.total_calls(), 0);
    eprintln!(
        "mixed-state figures: first pass {:.2}s, {} writes; second pass 0 writes, 0 STS calls",
        took.as_secs_f64(),
        writes
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_changes_nothing_and_prints_no_credential() {
    let env = Env::start("e2e-dry-run", mixed_state()).await;
    for args in [
        vec![
            "once",
            "--dry-run",
            "--base-role-arn",
            BASE,
            "--output",
            "json",
            "--log-format",
            "json",
        ],
        vec![
            "plan",
            "--base-role-arn",
            BASE,
            "--output",
            "diff",
            "--verbose",
        ],
    ] {
        let out = env.run(&args).await;
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert_no_leak(&out, &[]);
        let stdout = text(&out.stdout);
        if args.contains(&"json") {
            let summary = text(&out.stderr)
                .lines()
                .map(|l| {
                    serde_json::from_str::<serde_json::Value>(l)
                        .unwrap_or_else(|_| panic!("not a JSON line: {l}"))
                })
                .find(|l| {
                    l["message"].as_str().is_some_and(|m| {
                        m.starts_with("dry run, nothing applied: Plan: 1 to create, 1 to refresh")
                    })
                });
            assert!(
                summary.is_some(),
                "no summary line in {}",
                text(&out.stderr)
            );
            let plan: serde_json::Value = serde_json::from_str(&stdout).unwrap();
            let got: Vec<(String, String)> = plan["actions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| {
                    (
                        a["name"].as_str().unwrap().to_string(),
                        a["action"].as_str().unwrap().to_string(),
                    )
                })
                .collect();
            for expected in [
                ("new", "create"),
                ("expiring", "refresh"),
                ("orphan", "delete"),
                ("taken", "blocked"),
                ("invalid", "blocked"),
                ("wrong-types", "blocked"),
            ] {
                assert!(
                    got.contains(&(expected.0.into(), expected.1.into())),
                    "{got:?}"
                );
            }
        } else {
            assert!(stdout.contains("<redacted>"), "{stdout}");
        }
    }
    assert_eq!(env.api.write_count(), 0);
    assert_eq!(env.api.write_count_for("events"), 0);
    assert_eq!(env.moto.total_calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_are_paged_and_a_steady_state_writes_nothing() {
    // 600 served roles: more than one page of 500 for both lists.
    let now = Timestamp::now();
    let mut builder = ApiServer::builder();
    for i in 0..600 {
        let r = role("bulk", &format!("r{i:03}"), &format!("app-{i}"));
        builder = builder.object(r);
    }
    let env = Env::start("e2e-paging", builder).await;
    let client = env.client();
    // Secrets and statuses as the controller writes them, for the UIDs the API assigned.
    let roles = Api::<AWSIAMRole>::namespaced(client.clone(), "bulk");
    let secrets = Api::<Secret>::namespaced(client.clone(), "bulk");
    for r in roles.list(&ListParams::default()).await.unwrap().items {
        let uid = r.metadata.uid.clone().unwrap();
        let generation = r.metadata.generation.unwrap_or(1);
        let mut o = observed(&r, &uid);
        o.generation = generation;
        let arn = format!("{BASE}{}", r.spec.role_reference);
        let creds = seeded_credentials(&o.name, now + SignedDuration::from_secs(3600));
        secrets
            .create(
                &PostParams::default(),
                &secret::build(&o, &arn, &creds, now),
            )
            .await
            .unwrap();
        let status = ready_status(&o, &arn, creds.expiration, None, now);
        let patch = json!({"status": status});
        roles
            .patch_status(
                &o.name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await
            .unwrap();
    }
    env.api.clear_requests();
    let writes = env.api.write_count();
    let out = env.run(&["once", "--base-role-arn", BASE]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("skip=600"),
        "{}",
        text(&out.stderr)
    );
    assert_no_leak(&out, &[]);
    assert_eq!(env.api.write_count(), writes);
    assert_eq!(env.moto.total_calls(), 0);
    let lists = env.api.requests();
    for resource in ["awsiamroles", "secrets"] {
        let pages: Vec<_> = lists
            .iter()
            .filter(|r| r.verb == "list" && r.resource == resource)
            .collect();
        assert_eq!(pages.len(), 2, "{resource}: {} list requests", pages.len());
        assert!(
            pages[1].param("continue").is_some(),
            "{resource}: second page uses continue"
        );
        assert_eq!(pages[0].param("limit").as_deref(), Some("500"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sts_rate_limit_is_respected() {
    let mut builder = ApiServer::builder();
    for i in 0..60 {
        builder = builder.object(role("rate", &format!("r{i:02}"), &format!("app-{i}")));
    }
    let env = Env::start("e2e-rate", builder).await;
    let start = Instant::now();
    let out = env
        .run(&[
            "once",
            "--base-role-arn",
            BASE,
            "--sts-rate",
            "20",
            "--concurrency",
            "16",
        ])
        .await;
    let took = start.elapsed();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(env.moto.calls("AssumeRole"), 60);
    // 60 calls at 20/s with a burst of 1 cannot finish in less than 59/20 s.
    assert!(
        took >= Duration::from_millis(2500),
        "60 calls at 20/s took {took:?}"
    );
    eprintln!(
        "60 AssumeRole calls at --sts-rate 20 took {:.2}s",
        took.as_secs_f64()
    );
}

/// A free loopback port for the health server (bound and released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.ok()?;
    let response = String::from_utf8_lossy(&response).into_owned();
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((code, body))
}

/// Polls `check` every 50 ms until it holds or `deadline` passes.
async fn eventually<F, Fut>(deadline: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_new_roles_health_and_metrics_and_stops_on_sigterm() {
    let env = Env::start(
        "e2e-run",
        ApiServer::builder().object(role("team-a", "first", "app-first")),
    )
    .await;
    let client = env.client();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let interval = Duration::from_secs(2);
    let mut child = env
        .command(&["run", "--interval", "2s", "--health-addr", &addr])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let ready = eventually(Duration::from_secs(20), || async {
        matches!(http_get(port, "/readyz").await, Some((200, _)))
    })
    .await;
    assert!(ready, "/readyz never became ready");
    assert!(matches!(http_get(port, "/healthz").await, Some((200, _))));
    let secrets = Api::<Secret>::namespaced(client.clone(), "team-a");
    assert!(secrets.get_opt("first").await.unwrap().is_some());

    // A role created while the loop runs is served within two intervals.
    Api::<AWSIAMRole>::namespaced(client.clone(), "team-a")
        .create(
            &PostParams::default(),
            &role("team-a", "second", "app-second"),
        )
        .await
        .unwrap();
    let created = Instant::now();
    let served = eventually(interval * 2 + Duration::from_secs(1), || async {
        secrets.get_opt("second").await.ok().flatten().is_some()
    })
    .await;
    assert!(served, "the new role was not served within two intervals");
    eprintln!(
        "new AWSIAMRole served after {:.2}s (interval 2s)",
        created.elapsed().as_secs_f64()
    );

    let (code, metrics) = http_get(port, "/metrics").await.expect("/metrics answers");
    assert_eq!(code, 200);
    for family in [
        "kube_aws_iam_controller_pass_duration_seconds",
        "kube_aws_iam_controller_actions_total",
        "kube_aws_iam_controller_sts_calls_total{result=\"ok\"}",
        "kube_aws_iam_controller_managed_roles",
        "kube_aws_iam_controller_earliest_expiry_seconds",
        "kube_aws_iam_controller_last_success_timestamp_seconds",
    ] {
        assert!(
            metrics.contains(family),
            "/metrics lacks {family}:\n{metrics}"
        );
    }

    let pid = child.id().expect("running").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits within 10 s of SIGTERM")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let mut stderr = String::new();
    use tokio::io::AsyncReadExt;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .await
        .unwrap();
    assert!(stderr.contains("stopped"), "{stderr}");
    let values: Vec<String> = secrets
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .flat_map(credential_values)
        .collect();
    for v in values {
        assert!(
            !stderr.contains(&v),
            "a credential value appears in the log"
        );
    }
}

/// `--assume-role`: the controller assumes its own role first (through aws-config's
/// auto-refreshing provider) and application roles with those credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assume_role_chains_through_the_controller_role() {
    let env = Env::start(
        "e2e-assume-role",
        ApiServer::builder().object(role("team-a", "app", "app")),
    )
    .await;
    let out = env.run(&["once", "--assume-role", "controller"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // One AssumeRole for the controller role, one for the application role.
    assert_eq!(env.moto.calls("AssumeRole"), 2);
    let s = Api::<Secret>::namespaced(env.client(), "team-a")
        .get("app")
        .await
        .unwrap();
    assert_no_leak(&out, &credential_values(&s));
    let arn = moto::caller_identity_with_credentials_file(
        &env.moto.endpoint(),
        &data_map(&s),
        env.dir.path(),
    )
    .expect("the credentials file authenticates");
    assert!(arn.contains("assumed-role/app/team-a.app"), "{arn}");
}
