//! Seed credentials end to end (full tier): the compiled binary against the loopback API server
//! and moto.
//!
//! moto is reached through the counting proxy, which records the access key ID of every call
//! (SigV4 `Credential=AKID/…`), so each assertion names the key that actually signed.

use std::process::Stdio;
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use kube_aws_iam_controller::domain::crd::AWSIAMRole;
use kube_aws_iam_controller::domain::model::ObservedSecret;
use kube_aws_iam_controller::domain::secret::{self, Credentials};
use tokio::process::Command;

use crate::support::apiserver::ApiServer;
use crate::support::assert_contains;
use crate::support::harness::*;
use crate::support::moto::SignedCall;
use crate::support::volume::SecretVolume;

use super::{SELF_NAME, SELF_NS};

const SELF_ARN: &str = "arn:aws:iam::123456789012:role/kube-aws-iam-controller";
/// The access key the test environment gives the operator (see `moto::aws_env`).
const OPERATOR_KEY: &str = "testing";

fn assume_calls(calls: &[SignedCall]) -> Vec<&SignedCall> {
    calls.iter().filter(|c| c.action == "AssumeRole").collect()
}

async fn self_secret(client: &kube::Client) -> Secret {
    Api::<Secret>::namespaced(client.clone(), SELF_NS)
        .get(SELF_NAME)
        .await
        .expect("the controller's own Secret exists")
}

fn access_key(s: &Secret) -> String {
    credential_values(s).remove(0)
}

/// The binary as the controller's pod runs it: its only credentials are the seed in `volume`.
fn on_seed<'a>(cmd: &'a mut Command, volume: &SecretVolume) -> &'a mut Command {
    cmd.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env("AWS_SHARED_CREDENTIALS_FILE", volume.file("credentials"))
}

/// Expired seed credentials with access key `key` (the rest marked [`SEEDED`]).
fn expired_seed(key: &str, expiration: Timestamp) -> Credentials {
    Credentials {
        access_key_id: key.into(),
        secret_access_key: format!("{SEEDED}-expired-secret"),
        session_token: format!("{SEEDED}-expired-token"),
        expiration,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_writes_the_complete_secret_a_pass_finds_up_to_date() {
    let env = Env::start("seed-bootstrap", ApiServer::builder()).await;
    let client = env.client();

    let out = env.run_ok(&["bootstrap", "--role-arn", SELF_ARN]).await;
    assert_contains(
        &text(&out.stdout),
        &format!("AWSIAMRole {SELF_NS}/{SELF_NAME} created"),
    );
    let role = Api::<AWSIAMRole>::namespaced(client.clone(), SELF_NS)
        .get(SELF_NAME)
        .await
        .expect("bootstrap created the AWSIAMRole");
    assert_eq!(role.spec.role_reference, SELF_ARN);
    let s = self_secret(&client).await;
    assert_no_leak(&out, &credential_values(&s));

    // All six keys, readable by the controller's own decoder; both labels; owned by the role.
    let data = data_map(&s);
    for key in secret::DATA_KEYS {
        assert!(data.contains_key(key), "key {key} missing");
    }
    let observed = ObservedSecret::from_secret(&s);
    let content = secret::decode(&observed).expect("a readable managed Secret");
    assert_eq!(content.role_arn, SELF_ARN);
    assert!(secret::is_managed(s.metadata.labels.as_ref().unwrap()));
    let owner = &s.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("AWSIAMRole", SELF_NAME)
    );
    assert_eq!(Some(&owner.uid), role.metadata.uid.as_ref());
    assert_eq!(owner.controller, Some(true));
    assert_condition(&client, SELF_NS, SELF_NAME, ("True", "CredentialsReady")).await;

    // Exactly one AssumeRole, for the role, signed with the operator's key.
    let calls = env.moto.signed_calls();
    let assumed = assume_calls(&calls);
    assert_eq!(assumed.len(), 1, "{calls:?}");
    assert_eq!(assumed[0].role_arn.as_deref(), Some(SELF_ARN));
    assert_eq!(assumed[0].access_key_id.as_deref(), Some(OPERATOR_KEY));

    // A pass finds it up to date: no STS call, nothing written.
    let out = env
        .run_ok(&["once", "--base-role-arn", BASE, "--leader-elect=false"])
        .await;
    assert_contains(&text(&out.stderr), "skip=1, blocked=0;");
    assert_eq!(env.moto.calls("AssumeRole"), 1);

    // Again: the role exists, the Secret is replaced with a new session.
    let out = env.run_ok(&["bootstrap", "--role-arn", SELF_ARN]).await;
    assert_contains(&text(&out.stdout), "exists");
    assert_ne!(access_key(&self_secret(&client).await), access_key(&s));

    // A different ARN for the existing role, or a foreign Secret of that name: refused (2).
    let other = format!("{BASE}other");
    let out = env.run_code(&["bootstrap", "--role-arn", &other], 2).await;
    assert!(text(&out.stderr).contains(&format!("not {other}")));
    let mut foreign = Secret::default();
    foreign.metadata.name = Some("taken".into());
    foreign.metadata.namespace = Some(SELF_NS.into());
    Api::<Secret>::namespaced(client.clone(), SELF_NS)
        .create(&PostParams::default(), &foreign)
        .await
        .unwrap();
    let before = env.moto.calls("AssumeRole");
    let out = env
        .run_code(&["bootstrap", "--role-arn", SELF_ARN, "--name", "taken"], 2)
        .await;
    assert_contains(&text(&out.stderr), "not managed by kube-aws-iam-controller");
    assert_eq!(env.moto.calls("AssumeRole"), before, "refused before STS");
}

/// Waits until `ns/name` has a Secret whose UID differs from `old` (re-created by the loop).
async fn recreated(client: &kube::Client, ns: &str, name: &str, old: Option<String>) -> Secret {
    let api = Api::<Secret>::namespaced(client.clone(), ns);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(s) = api.get_opt(name).await.ok().flatten()
            && s.metadata.uid != old
        {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{ns}/{name} was not (re-)created"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn delete_secret(client: &kube::Client, ns: &str, name: &str) -> Option<String> {
    let api = Api::<Secret>::namespaced(client.clone(), ns);
    let uid = api.get(name).await.unwrap().metadata.uid;
    api.delete(name, &DeleteParams::default()).await.unwrap();
    uid
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_on_seed_credentials_follows_kubelet_swaps_and_never_signs_expired() {
    let env = Env::with_role("seed-run", role("team-a", "app", "app-one")).await;
    let client = env.client();
    env.run_ok(&["bootstrap", "--role-arn", SELF_ARN]).await;
    let seed_secret = self_secret(&client).await;
    let key1 = access_key(&seed_secret);
    let mut secrets_seen = credential_values(&seed_secret);

    // The controller's pod: its own Secret mounted at a kubelet-style volume, no static keys.
    let mut volume = SecretVolume::with("seed-run-volume", data_map(&seed_secret));
    assert!(volume.path().join("..data").is_symlink());
    let log_path = env.dir.path().join("run.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let (mut run, port) = env.run_loop("1s");
    let mut child = on_seed(&mut run, &volume)
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();

    // 1. The first pass creates team-a/app, signed with the mounted session.
    let app = recreated(&client, "team-a", "app", None).await;
    secrets_seen.extend(credential_values(&app));
    let calls = env.moto.signed_calls();
    let after_bootstrap: Vec<&SignedCall> = calls.iter().skip(1).collect();
    assert!(!after_bootstrap.is_empty());
    assert!(
        after_bootstrap
            .iter()
            .all(|c| c.access_key_id.as_deref() == Some(key1.as_str())),
        "every call of the controller is signed with the seed session: {after_bootstrap:?}"
    );
    let metrics = http_get(port, "/metrics").await.unwrap().1;
    let expiry = secret::decode(&ObservedSecret::from_secret(&seed_secret))
        .unwrap()
        .expire;
    assert!(
        metrics.contains(&format!(
            "kube_aws_iam_controller_own_credentials_expiry_timestamp_seconds {}",
            expiry.as_second()
        )),
        "{metrics}"
    );

    // 2. Its own Secret is refreshed (deleted here to force it); kubelet projects the new one;
    //    every call from then on is signed with the new session, without a restart.
    let old = delete_secret(&client, SELF_NS, SELF_NAME).await;
    let refreshed = recreated(&client, SELF_NS, SELF_NAME, old).await;
    let key2 = access_key(&refreshed);
    assert_ne!(key2, key1);
    secrets_seen.extend(credential_values(&refreshed));
    let calls = env.moto.signed_calls();
    let own = assume_calls(&calls)
        .into_iter()
        .rev()
        .find(|c| c.role_arn.as_deref() == Some(SELF_ARN))
        .expect("the own role was assumed");
    assert_eq!(own.access_key_id.as_deref(), Some(key1.as_str()));
    let mark = env.moto.signed_calls().len();
    volume.update(data_map(&refreshed));
    let old = delete_secret(&client, "team-a", "app").await;
    let app = recreated(&client, "team-a", "app", old).await;
    secrets_seen.extend(credential_values(&app));
    let after_swap: Vec<SignedCall> = env.moto.signed_calls().split_off(mark);
    assert!(
        !assume_calls(&after_swap).is_empty(),
        "team-a/app was assumed after the swap"
    );
    assert!(
        after_swap
            .iter()
            .all(|c| c.access_key_id.as_deref() == Some(key2.as_str())),
        "after the swap every call is signed with the new session: {after_swap:?}"
    );

    // 3. Expired seed credentials: nothing is signed with them; the role says why; /healthz
    //    fails naming the file and the expiry; the metric shows it.
    let expired_at = Timestamp::now() - SignedDuration::from_hours(1);
    let expired_at = Timestamp::from_second(expired_at.as_second()).unwrap();
    let stale = expired_seed("ASIAEXPIREDSEED", expired_at);
    let mark = env.moto.signed_calls().len();
    volume.update(secret::encode(&stale, SELF_ARN, 1));
    let old = delete_secret(&client, "team-a", "app").await;
    let failed = eventually(Duration::from_secs(20), || async {
        let (status, reason, message) = condition(&client, "team-a", "app").await;
        status == "False" && reason == "GetCredentialsFailed" && message.contains("expired")
    })
    .await;
    let (_, _, message) = condition(&client, "team-a", "app").await;
    assert!(failed, "team-a/app reports the expired seed: {message}");
    assert!(
        message.contains(&volume.file("credentials").display().to_string())
            && message.contains(&secret::format_time(expired_at)),
        "the message names the file and the expiry: {message}"
    );
    let (code, body) = http_get(port, "/healthz").await.unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("expired at"), "{body}");
    let metrics = http_get(port, "/metrics").await.unwrap().1;
    assert!(
        metrics.contains(&format!(
            "kube_aws_iam_controller_own_credentials_expiry_timestamp_seconds {}",
            expired_at.as_second()
        )),
        "{metrics}"
    );
    let after_expiry: Vec<SignedCall> = env.moto.signed_calls().split_off(mark);
    assert!(
        after_expiry
            .iter()
            .all(|c| c.access_key_id.as_deref() != Some("ASIAEXPIREDSEED")),
        "nothing is signed with expired credentials: {after_expiry:?}"
    );
    assert!(
        assume_calls(&after_expiry).is_empty(),
        "no AssumeRole left the controller: {after_expiry:?}"
    );

    // 4. kubelet projects a valid Secret again: healthy, served, no restart.
    volume.update(data_map(&refreshed));
    let app = recreated(&client, "team-a", "app", old).await;
    secrets_seen.extend(credential_values(&app));
    let healthy = eventually(Duration::from_secs(10), || async {
        http_get(port, "/healthz").await.map(|(c, _)| c) == Some(200)
    })
    .await;
    assert!(healthy, "/healthz recovers once the file is valid again");

    assert_eq!(
        terminate(&mut child, Duration::from_secs(15)).await,
        Some(0)
    );
    let logs = std::fs::read_to_string(&log_path).unwrap();
    assert_contains(&logs, "read the controller's own credentials");
    assert!(!logs.contains(SEEDED), "seeded credential in the log");
    for v in secrets_seen.iter().filter(|v| !v.starts_with("ASIA")) {
        assert!(!logs.contains(v.as_str()), "a credential value in the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_seed_at_start_up_reaches_no_sts_and_exits_2() {
    let env = Env::with_role("seed-expired-start", role("team-a", "app", "app-one")).await;
    let stale = expired_seed(
        "ASIAEXPIREDATSTART",
        "2026-01-01T00:00:00Z".parse().unwrap(),
    );
    let volume = SecretVolume::with("seed-expired-volume", secret::encode(&stale, SELF_ARN, 1));
    let mut once = env.command(&["once"]);
    on_seed(&mut once, &volume);
    let out = finish(once).await;
    assert_exit(&out, 2);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{} expired at 2026-01-01T00:00:00Z",
            volume.file("credentials").display()
        )),
        "{stderr}"
    );
    assert_no_leak(&out, &[]);
    assert_eq!(
        env.moto.signed_calls(),
        Vec::<SignedCall>::new(),
        "nothing reached STS"
    );
}

/// `--assume-role` on seed credentials: the intermediate role is assumed with the mounted
/// session, and every AssumeRole for an AWSIAMRole is signed with the intermediate session,
/// never with the seed itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assume_role_chains_from_the_seed_session() {
    const HOP: &str = "arn:aws:iam::123456789012:role/hop";
    let env = Env::with_role("seed-hop", role("team-a", "app", "app-one")).await;
    let client = env.client();
    env.run_ok(&["bootstrap", "--role-arn", SELF_ARN]).await;
    let seed_key = access_key(&self_secret(&client).await);
    let volume = SecretVolume::with("seed-hop-volume", data_map(&self_secret(&client).await));
    let mark = env.moto.signed_calls().len();
    // Force the controller's own role to be renewed too (through the hop).
    delete_secret(&client, SELF_NS, SELF_NAME).await;
    let mut once = env.command(&["once", "--assume-role", HOP]);
    on_seed(&mut once, &volume);
    let out = finish(once).await;
    assert_exit(&out, 0);
    let calls = env.moto.signed_calls().split_off(mark);
    let assumed = assume_calls(&calls);
    let hops: Vec<_> = assumed
        .iter()
        .filter(|c| c.role_arn.as_deref() == Some(HOP))
        .collect();
    assert_eq!(
        hops.len(),
        1,
        "the hop is assumed once and cached: {calls:?}"
    );
    assert_eq!(hops[0].access_key_id.as_deref(), Some(seed_key.as_str()));
    let chained: Vec<_> = assumed
        .iter()
        .filter(|c| c.role_arn.as_deref() != Some(HOP))
        .collect();
    let targets: std::collections::BTreeSet<_> = chained
        .iter()
        .filter_map(|c| c.role_arn.as_deref())
        .collect();
    assert_eq!(
        targets,
        [SELF_ARN, "arn:aws:iam::123456789012:role/app-one"].into(),
        "{calls:?}"
    );
    let keys: std::collections::BTreeSet<_> =
        chained.iter().map(|c| c.access_key_id.clone()).collect();
    assert_eq!(keys.len(), 1, "one hop session signs them all: {calls:?}");
    for c in &chained {
        let key = c.access_key_id.as_deref().unwrap_or_default();
        assert!(
            key != seed_key && key != OPERATOR_KEY && !key.is_empty(),
            "{c:?} is signed with the hop's session, not the seed"
        );
    }
    assert_no_leak(&out, &credential_values(&self_secret(&client).await));
}
