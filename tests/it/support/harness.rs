//! Driving the compiled binary in end-to-end tests: a loopback API server and moto STS, the
//! binary's environment, seeded objects, and checks that nothing leaks.
//!
//! [`Env`] starts moto, so it is in the full tier only; the other helpers serve both tiers.

use std::collections::BTreeMap;
#[cfg(feature = "full-tier")]
use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube_aws_iam_controller::controller::plan::ready_status;
use kube_aws_iam_controller::domain::crd::{AWSIAMRole, AWSIAMRoleSpec};
use kube_aws_iam_controller::domain::model::ObservedRole;
use kube_aws_iam_controller::domain::policy::ALLOWED_ROLES_ANNOTATION;
use kube_aws_iam_controller::domain::secret::{self, Credentials};
use serde_json::json;

use crate::support::ScratchDir;
use crate::support::apiserver::{ApiServer, ApiServerBuilder};
#[cfg(feature = "full-tier")]
use crate::support::moto::{self, Moto};

pub const BASE: &str = "arn:aws:iam::123456789012:role/";
/// Marker in credentials the tests seed; no output may contain it.
pub const SEEDED: &str = "E2ESEEDED";

#[cfg(feature = "full-tier")]
pub struct Env {
    pub api: ApiServer,
    pub moto: Moto,
    pub dir: ScratchDir,
    pub kubeconfig: PathBuf,
}

#[cfg(feature = "full-tier")]
impl Env {
    pub async fn start(label: &str, builder: ApiServerBuilder) -> Env {
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

    /// An environment whose API server holds just `role`.
    pub async fn with_role(label: &str, role: AWSIAMRole) -> Env {
        Env::start(label, ApiServer::builder().object(role)).await
    }

    pub fn command(&self, args: &[&str]) -> tokio::process::Command {
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
    pub async fn run(&self, args: &[&str]) -> Output {
        finish(self.command(args)).await
    }

    /// [`Env::run`], asserting that it succeeds.
    pub async fn run_ok(&self, args: &[&str]) -> Output {
        self.run_code(args, 0).await
    }

    /// [`Env::run`], asserting the exit code.
    pub async fn run_code(&self, args: &[&str], code: i32) -> Output {
        let out = self.run(args).await;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}; stderr:\n{stderr}");
        out
    }

    /// `run --interval INTERVAL`, stdout discarded, with its health server on a free loopback
    /// port, returned.
    pub fn run_loop(&self, interval: &str) -> (tokio::process::Command, u16) {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut cmd = self.command(&["run", "--interval", interval, "--health-addr", &addr]);
        cmd.stdout(std::process::Stdio::null());
        (cmd, port)
    }

    pub fn client(&self) -> Client {
        self.api.client()
    }
}

/// A client built from the kubeconfig the server writes, as the controller binary builds its
/// own: its requests are recorded and faulted (unlike [`ApiServer::client`]'s).
pub async fn kubeconfig_client(server: &ApiServer) -> Client {
    let dir = ScratchDir::new("kubeconfig-client");
    let path = server.write_kubeconfig(dir.path());
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).expect("kubeconfig parses");
    let options = kube::config::KubeConfigOptions::default();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .expect("kubeconfig loads");
    Client::try_from(config).expect("client builds")
}

/// Runs `cmd` (an [`Env::command`] with more set) to completion, at most a minute.
pub async fn finish(mut cmd: tokio::process::Command) -> Output {
    tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("the binary finishes within a minute")
        .expect("the binary starts")
}

/// Asserts the binary's exit code, showing its stderr when it differs.
#[track_caller]
pub fn assert_exit(out: &Output, code: i32) {
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(code),
        "exit code; stderr:\n{stderr}"
    );
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn role(ns: &str, name: &str, reference: &str) -> AWSIAMRole {
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

pub fn observed(role: &AWSIAMRole, uid: &str) -> ObservedRole {
    observed_at(role, uid, 1)
}

/// `role` as the controller observes it, with the given UID and generation.
pub fn observed_at(role: &AWSIAMRole, uid: &str, generation: i64) -> ObservedRole {
    let mut v = serde_json::to_value(role).unwrap();
    v["metadata"]["uid"] = json!(uid);
    v["metadata"]["generation"] = json!(generation);
    ObservedRole::from_value(&v, "").unwrap()
}

/// Serves `role` (as stored by the API, with its UID and generation) the way the controller
/// would have: an owned Secret with credentials issued `now` for an hour, and, with
/// `with_status`, the matching Ready status, so a pass finds it up to date.
pub async fn serve_as_controller(
    client: &Client,
    role: &AWSIAMRole,
    marker: &str,
    now: Timestamp,
    with_status: bool,
) {
    let ns = role.metadata.namespace.as_deref().unwrap();
    let o = observed_at(
        role,
        role.metadata.uid.as_deref().unwrap(),
        role.metadata.generation.unwrap_or(1),
    );
    let arn = format!("{BASE}{}", role.spec.role_reference);
    let creds = marked_credentials(marker, &o.name, now + SignedDuration::from_secs(3600));
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(
            &PostParams::default(),
            &secret::build(&o, &arn, &creds, now),
        )
        .await
        .unwrap();
    if with_status {
        let status = ready_status(&o, &arn, creds.expiration, None, now);
        Api::<AWSIAMRole>::namespaced(client.clone(), ns)
            .patch_status(
                &o.name,
                &PatchParams::default(),
                &Patch::Merge(&json!({ "status": status })),
            )
            .await
            .unwrap();
    }
}

/// Seeded credentials carrying `marker` (a test file's own [`SEEDED`]) in every value.
pub fn marked_credentials(marker: &str, tag: &str, expiration: Timestamp) -> Credentials {
    Credentials {
        access_key_id: format!("ASIA{marker}"),
        secret_access_key: format!("{marker}-secret-{tag}"),
        session_token: format!("{marker}-token-{tag}"),
        expiration,
    }
}

/// A managed Secret as the controller would have written it for `role` (owner UID unknown
/// until the fake assigns one, so it is owned by name only when `uid` is empty).
pub fn managed_secret(role: &AWSIAMRole, uid: &str, issued: Timestamp, lifetime: i64) -> Secret {
    marked_managed_secret(SEEDED, role, uid, issued, lifetime)
}

/// [`managed_secret`] with credentials carrying `marker`.
pub fn marked_managed_secret(
    marker: &str,
    role: &AWSIAMRole,
    uid: &str,
    issued: Timestamp,
    lifetime: i64,
) -> Secret {
    let r = observed(role, uid);
    let arn = format!("{BASE}{}", role.spec.role_reference);
    let creds = marked_credentials(
        marker,
        &r.name,
        issued + SignedDuration::from_secs(lifetime),
    );
    let mut s = secret::build(&r, &arn, &creds, issued);
    s.metadata.owner_references = None;
    s
}

/// Every credential value in a Secret's `credentials.json`.
pub fn credential_values(s: &Secret) -> Vec<String> {
    let data = s.data.as_ref().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&data[secret::KEY_JSON].0).unwrap();
    ["AccessKeyId", "SecretAccessKey", "SessionToken"]
        .iter()
        .map(|k| json[k].as_str().unwrap().to_string())
        .collect()
}

pub fn data_map(s: &Secret) -> BTreeMap<String, Vec<u8>> {
    s.data
        .as_ref()
        .unwrap()
        .iter()
        .map(|(k, ByteString(v))| (k.clone(), v.clone()))
        .collect()
}

pub fn assert_no_leak(out: &Output, values: &[String]) {
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
pub fn mixed_state() -> ApiServerBuilder {
    marked_mixed_state(SEEDED)
}

/// [`mixed_state`] with seeded credentials (and the foreign Secret's data) carrying `marker`.
pub fn marked_mixed_state(marker: &str) -> ApiServerBuilder {
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
        ByteString(format!("{marker}-foreign").into_bytes()),
    )]));
    let mut invalid = role("team-b", "invalid", "app-invalid");
    invalid.spec.role_session_duration = Some(899);
    ApiServer::builder()
        .object(role("team-a", "new", "app-new"))
        .object(expiring.clone())
        .object(marked_managed_secret(
            marker,
            &expiring,
            "",
            now - SignedDuration::from_mins(55),
            3600,
        ))
        .object(marked_managed_secret(
            marker,
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
pub async fn condition(client: &Client, ns: &str, name: &str) -> (String, String, String) {
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

/// Every Secret in the cluster.
pub async fn all_secrets(client: &Client) -> Vec<Secret> {
    let secrets = Api::<Secret>::all(client.clone());
    secrets.list(&ListParams::default()).await.unwrap().items
}

/// Every Event in the cluster.
pub async fn all_events(client: &Client) -> Vec<Event> {
    let events = Api::<Event>::all(client.clone());
    events.list(&ListParams::default()).await.unwrap().items
}

/// Asserts that for each (object name, reason) in `expected` some Event regarding that object
/// has that reason.
#[track_caller]
pub fn assert_events(events: &[Event], expected: &[(&str, &str)]) {
    let reasons: Vec<(&str, &str)> = events
        .iter()
        .map(|e| {
            let on = e.regarding.as_ref().and_then(|r| r.name.as_deref());
            (
                on.unwrap_or_default(),
                e.reason.as_deref().unwrap_or_default(),
            )
        })
        .collect();
    for expected in expected {
        assert!(
            reasons.contains(expected),
            "missing event {expected:?} in {reasons:?}"
        );
    }
}

/// Waits (at most 20 s) until the health server on `port` answers `/readyz` with 200.
pub async fn wait_ready(port: u16) {
    let ready = eventually(Duration::from_secs(20), || async {
        matches!(http_get(port, "/readyz").await, Some((200, _)))
    })
    .await;
    assert!(ready, "/readyz never became ready");
}

/// A Namespace, with the allowed-roles annotation when `allowed` is given.
pub fn namespace(name: &str, allowed: Option<&str>) -> Namespace {
    let annotation = |a: &str| BTreeMap::from([(ALLOWED_ROLES_ANNOTATION.to_string(), a.into())]);
    Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            annotations: allowed.map(annotation),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    }
}

/// Asserts the (status, reason) of `ns/name`'s Ready condition; returns its message.
pub async fn assert_condition(
    client: &Client,
    ns: &str,
    name: &str,
    expected: (&str, &str),
) -> String {
    let (status, reason, message) = condition(client, ns, name).await;
    let got = (status.as_str(), reason.as_str());
    assert_eq!(got, expected, "{ns}/{name}: {message}");
    message
}

/// A free loopback port for the health server (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
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
pub async fn eventually<F, Fut>(deadline: Duration, mut check: F) -> bool
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

/// Sends SIGTERM to a running child and waits for it to exit (at most `within`); its exit code.
pub async fn terminate(child: &mut tokio::process::Child, within: Duration) -> Option<i32> {
    let pid = child.id().expect("running").to_string();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(sent.success(), "SIGTERM delivered to {pid}");
    tokio::time::timeout(within, child.wait())
        .await
        .expect("exits after SIGTERM")
        .expect("wait for the child")
        .code()
}
