//! End to end (full tier): the compiled binary runs `once` against the loopback API server
//! seeded with raw JSON objects (which a schema-less CRD lets through) and moto's STS.

use std::collections::BTreeMap;
use std::process::Output;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::core::{ApiResource, DynamicObject};
use kube::{Api, Client};
use kube_aws_iam_controller::domain::arn::{self, MAX_SESSION_NAME};
use kube_aws_iam_controller::domain::crd::AWSIAMRole;
use kube_aws_iam_controller::domain::model::{ObservedRole, ObservedSecret};
use kube_aws_iam_controller::domain::secret;
use serde_json::{Value, json};

use super::{NS, has_raw_control};
use crate::support::DEFAULT_BASE_ARN as BASE;
use crate::support::apiserver::{ApiServer, ApiServerBuilder};
use crate::support::assert_contains;
use crate::support::harness::{
    Env, all_events, assert_condition, condition, data_map, marked_credentials, text,
};
use crate::support::moto;

/// Marker in every credential (and in the garbage) the end-to-end tests seed.
const SEEDED: &str = "HOSTILESEEDED";
/// Longest line the binary may print: the 1 MB reference must never be echoed.
const MAX_LINE: usize = 2048;

/// Exit code 0 (blocked roles do not fail a pass), never 101 (a panic); no seeded credential
/// and no overlong line in the output.
fn assert_clean_run(out: &Output) {
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    let excerpt: String = stderr.chars().take(4000).collect();
    assert_ne!(
        out.status.code(),
        Some(101),
        "the binary panicked:\n{excerpt}"
    );
    assert_eq!(out.status.code(), Some(0), "stderr:\n{excerpt}");
    for (stream, s) in [("stdout", &stdout), ("stderr", &stderr)] {
        assert!(!s.contains(SEEDED), "{stream} holds a seeded credential");
        assert!(!s.contains("panicked"), "{stream}: {excerpt}");
        if let Some(long) = s.lines().find(|l| l.len() > MAX_LINE) {
            panic!(
                "{stream} has a line of {} bytes: {}…",
                long.len(),
                long.chars().take(200).collect::<String>()
            );
        }
    }
}

fn role_json(name: &str, spec: Value) -> Value {
    let mut v = json!({
        "apiVersion": "zalando.org/v1", "kind": "AWSIAMRole",
        "metadata": {"name": name, "namespace": NS},
    });
    if !spec.is_null() {
        v["spec"] = spec;
    }
    v
}

fn reference(name: &str, reference: &str) -> Value {
    role_json(name, json!({"roleReference": reference}))
}

/// A managed Secret whose every data key holds binary garbage (NUL, 0xff, escapes, the marker).
fn garbage_secret(name: &str, owner: Option<OwnerReference>) -> Secret {
    let data = secret::DATA_KEYS
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let mut v: Vec<u8> = (0..40u8)
                .map(|b| b.wrapping_mul(37).wrapping_add(i as u8 * 11) ^ 0xa5)
                .collect();
            v.extend_from_slice(b"\x00\xff\xfe\x1b[2J\n");
            v.extend_from_slice(SEEDED.as_bytes());
            (k.to_string(), ByteString(v))
        })
        .collect();
    let mut s = labelled_secret(name);
    s.metadata.owner_references = owner.map(|o| vec![o]);
    s.data = Some(data);
    s
}

fn labelled_secret(name: &str) -> Secret {
    let mut s = Secret::default();
    s.metadata.name = Some(name.into());
    s.metadata.namespace = Some(NS.into());
    s.metadata.labels = Some(BTreeMap::from([
        (
            secret::HERITAGE_LABEL.to_string(),
            secret::HERITAGE_VALUE.to_string(),
        ),
        (
            secret::TYPE_LABEL.to_string(),
            secret::TYPE_VALUE.to_string(),
        ),
    ]));
    s.type_ = Some("Opaque".into());
    s
}

/// A readable managed Secret with seeded credentials, owned by a ConfigMap of the same name.
fn configmap_owned_secret(name: &str) -> Secret {
    let role = ObservedRole::from_value(&reference(name, name), NS).unwrap();
    let issued = Timestamp::now() - SignedDuration::from_mins(10);
    let mut s = secret::build(
        &role,
        &format!("{BASE}{name}"),
        &marked_credentials(
            SEEDED,
            name,
            Timestamp::now() + SignedDuration::from_mins(50),
        ),
        issued,
    );
    s.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        name: name.into(),
        uid: "0000c0f1-0000-4000-8000-000000000001".into(),
        controller: Some(true),
        block_owner_deletion: None,
    }]);
    s
}

/// 253 characters: the longest Kubernetes object name.
fn long_name() -> String {
    let name: String = format!("r253-{}", "abcdefghij".repeat(25))
        .chars()
        .take(253)
        .collect();
    assert_eq!(name.len(), 253);
    name
}

/// The hostile objects of the end-to-end pass, with the field each message must name.
fn hostile_roles() -> Vec<(&'static str, Value, &'static str)> {
    let huge: String = "x".repeat(1 << 20);
    vec![
        (
            "duration-string",
            role_json(
                "duration-string",
                json!({"roleReference": "app", "roleSessionDuration": "3600"}),
            ),
            "spec.roleSessionDuration",
        ),
        (
            "duration-fraction",
            role_json(
                "duration-fraction",
                json!({"roleReference": "app", "roleSessionDuration": 3600.5}),
            ),
            "spec.roleSessionDuration",
        ),
        (
            "reference-list",
            role_json("reference-list", json!({"roleReference": ["app"]})),
            "spec.roleReference",
        ),
        (
            "reference-map",
            role_json("reference-map", json!({"roleReference": {"name": "app"}})),
            "spec.roleReference",
        ),
        (
            "spec-missing",
            role_json("spec-missing", Value::Null),
            "spec",
        ),
        (
            "spec-string",
            role_json("spec-string", json!("roleReference=app")),
            "spec",
        ),
        (
            "reference-1mb",
            reference("reference-1mb", &huge),
            "spec.roleReference",
        ),
        (
            "reference-control",
            reference("reference-control", "app\u{0}\u{1b}[31m\n+ create x/y"),
            "spec.roleReference",
        ),
        (
            "reference-unicode",
            reference("reference-unicode", "r\u{f4}le\u{202e}nimda"),
            "spec.roleReference",
        ),
        (
            "arn-partition",
            reference("arn-partition", "arn:azure:iam::123456789012:role/app"),
            "spec.roleReference",
        ),
        (
            "arn-service",
            reference(
                "arn-service",
                "arn:aws:sts::123456789012:assumed-role/app/session",
            ),
            "spec.roleReference",
        ),
        (
            "arn-resource",
            reference("arn-resource", "arn:aws:iam::123456789012:user/app"),
            "spec.roleReference",
        ),
        (
            "traversal-parent",
            reference("traversal-parent", "../admin"),
            "spec.roleReference",
        ),
        (
            "traversal-middle",
            reference("traversal-middle", "a/../b"),
            "spec.roleReference",
        ),
        (
            "traversal-arn",
            reference("traversal-arn", "arn:aws:iam::123456789012:role/../x"),
            "spec.roleReference",
        ),
        (
            "name-65",
            reference("name-65", &"r".repeat(65)),
            "spec.roleReference",
        ),
    ]
}

/// Well-formed roles served in the same pass: (name, resolved ARN).
fn well_formed() -> Vec<(String, String)> {
    vec![
        ("good-name".into(), format!("{BASE}good-name")),
        ("good-path".into(), format!("{BASE}team/good-path")),
        ("good-arn".into(), format!("{BASE}good-arn")),
        ("name-64".into(), format!("{BASE}{}", "r".repeat(64))),
        (long_name(), format!("{BASE}good-long")),
        // Their Secrets were garbage or foreign-owned; they are re-issued in place.
        ("garbage".into(), format!("{BASE}garbage")),
        ("configmap-owned".into(), format!("{BASE}configmap-owned")),
    ]
}

fn hostile_state() -> ApiServerBuilder {
    let mut b = ApiServer::builder()
        .json(reference("good-name", "good-name"))
        .json(reference("good-path", "team/good-path"))
        .json(role_json(
            "good-arn",
            json!({"roleReference": format!("{BASE}good-arn"), "roleSessionDuration": 43200}),
        ))
        .json(reference("name-64", &"r".repeat(64)))
        .json(reference(&long_name(), "good-long"))
        .json(reference("garbage", "garbage"))
        .object(garbage_secret("garbage", None))
        .json(reference("configmap-owned", "configmap-owned"))
        .object(configmap_owned_secret("configmap-owned"))
        // A managed Secret of garbage whose AWSIAMRole is gone.
        .object(garbage_secret(
            "orphan-garbage",
            Some(OwnerReference {
                api_version: "zalando.org/v1".into(),
                kind: "AWSIAMRole".into(),
                name: "orphan-garbage".into(),
                uid: "0000dead-0000-4000-8000-000000000001".into(),
                controller: Some(true),
                block_owner_deletion: None,
            }),
        ));
    for (_, object, _) in hostile_roles() {
        b = b.json(object);
    }
    b
}

async fn uid_of(client: &Client, name: &str) -> String {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), NS, &ApiResource::erase::<AWSIAMRole>(&()));
    api.get(name).await.unwrap().metadata.uid.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_blocks_hostile_objects_and_serves_every_well_formed_role() {
    let env = Env::start("hostile-e2e", hostile_state()).await;
    let client = env.client();
    let secrets = Api::<Secret>::namespaced(client.clone(), NS);
    let uid_before = |s: &Secret| s.metadata.uid.clone().unwrap();
    let garbage_uid = uid_before(&secrets.get("garbage").await.unwrap());
    let foreign_uid = uid_before(&secrets.get("configmap-owned").await.unwrap());

    let out = env.run(&["once", "--base-role-arn", BASE]).await;
    assert_clean_run(&out);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(
            "pass done: create=5, refresh=2, update-status=0, delete=1, skip=0, blocked=16"
        ),
        "{}",
        stderr.chars().take(4000).collect::<String>()
    );

    // Every hostile role: Ready=False, InvalidSpec, the field named, short and escaped.
    for (name, _, field) in hostile_roles() {
        let message = assert_condition(&client, NS, name, ("False", "InvalidSpec")).await;
        assert!(
            message.contains(field),
            "{name}: {message:?} does not name {field}"
        );
        assert!(
            message.len() < 400,
            "{name}: message of {} bytes",
            message.len()
        );
        assert!(!has_raw_control(&message), "{name}: {message:?}");
    }
    let (_, _, message) = condition(&client, NS, "reference-1mb").await;
    assert!(message.contains("(1048576 characters)"), "{message}");

    // Every well-formed role: a readable Secret for the right ARN, Ready=True.
    let output = format!("{}{}", text(&out.stdout), stderr);
    for (name, arn) in well_formed() {
        let s = secrets
            .get_opt(&name)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no Secret for {name}"));
        let content = secret::decode(&ObservedSecret::from_secret(&s))
            .unwrap_or_else(|e| panic!("{name}: the Secret does not decode: {e}"));
        assert_eq!(content.role_arn, arn, "{name}");
        assert_condition(&client, NS, &name, ("True", "CredentialsReady")).await;
        let json: Value =
            serde_json::from_slice(&s.data.as_ref().unwrap()[secret::KEY_JSON].0).unwrap();
        for key in ["AccessKeyId", "SecretAccessKey", "SessionToken"] {
            let value = json[key].as_str().unwrap();
            assert!(
                !value.contains(SEEDED),
                "{name}: still the seeded credentials"
            );
            assert!(
                !output.contains(value),
                "{name}: {key} appears in the output"
            );
        }
        let role_uid = uid_of(&client, &name).await;
        let owners = s.metadata.owner_references.clone().unwrap_or_default();
        assert!(
            owners.len() == 1 && owners[0].kind == "AWSIAMRole" && owners[0].uid == role_uid,
            "{name}: owners {owners:?}"
        );
    }
    // Refreshed in place: the same objects, not deleted and re-created.
    assert_eq!(
        uid_before(&secrets.get("garbage").await.unwrap()),
        garbage_uid
    );
    assert_eq!(
        uid_before(&secrets.get("configmap-owned").await.unwrap()),
        foreign_uid
    );
    assert!(secrets.get_opt("orphan-garbage").await.unwrap().is_none());
    // The blocked roles got no Secret.
    for (name, _, _) in hostile_roles() {
        assert!(secrets.get_opt(name).await.unwrap().is_none(), "{name}");
    }

    // The 253-character name: STS saw a 64-character session name ending in a hash.
    let long = long_name();
    let s = secrets.get(&long).await.unwrap();
    let data = data_map(&s);
    let caller =
        moto::caller_identity_with_credentials_file(&env.moto.endpoint(), &data, env.dir.path())
            .expect("the long-named role's credentials authenticate");
    let session = caller.rsplit('/').next().unwrap();
    assert_eq!(session, arn::session_name(NS, &long));
    assert_eq!(session.len(), MAX_SESSION_NAME, "{caller}");
    assert!(session.starts_with("hostile.r253-"), "{caller}");

    // Events say why, briefly, without credentials.
    let events = all_events(&client).await;
    let invalid = events
        .iter()
        .filter(|e| e.reason.as_deref() == Some("InvalidSpec"))
        .count();
    assert_eq!(invalid, hostile_roles().len(), "InvalidSpec events");
    for e in &events {
        let note = e.note.clone().unwrap_or_default();
        assert!(
            note.len() < 1024 && !note.contains(SEEDED),
            "event note {note:?}"
        );
    }

    // The second pass has nothing to do: no writes, no STS calls, the same blocked roles.
    env.moto.reset_counts();
    env.api.clear_requests();
    let out = env.run(&["once", "--base-role-arn", BASE]).await;
    assert_clean_run(&out);
    assert_eq!(env.api.write_count(), 0, "{}", text(&out.stderr));
    assert_eq!(env.moto.total_calls(), 0);
    assert_contains(&text(&out.stderr), "skip=7, blocked=16");
    eprintln!(
        "hostile end to end: {} hostile objects blocked, 2 garbage/foreign Secrets refreshed in \
         place, 1 garbage orphan deleted, 5 roles created; longest output line {} bytes",
        hostile_roles().len(),
        stderr.lines().map(str::len).max().unwrap_or(0)
    );
}

/// `--namespace-restrictions` with allowed-roles annotations that are not JSON arrays of
/// strings: nothing is allowed there (NotPermitted, the annotation named); an annotated
/// namespace next to them is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_allowed_roles_annotations_permit_nothing() {
    let namespace = |name: &str, allowed: &str| {
        json!({"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": name, "annotations": {"iam.amazonaws.com/allowed-roles": allowed}}})
    };
    let role = |ns: &str, name: &str, reference: &str| {
        json!({"apiVersion": "zalando.org/v1", "kind": "AWSIAMRole",
               "metadata": {"name": name, "namespace": ns}, "spec": {"roleReference": reference}})
    };
    let bad = [
        ("bad-json", "[\"*\""),
        ("bad-object", "{\"allowed\": [\"*\"]}"),
        ("bad-numbers", "[1, 2]"),
    ];
    let mut b = ApiServer::builder()
        .json(namespace("open", "[\"app\"]"))
        .json(role("open", "app", "app"))
        .json(role("open", "other", "admin"));
    for (ns, allowed) in bad {
        b = b.json(namespace(ns, allowed)).json(role(ns, "app", "app"));
    }
    let env = Env::start("hostile-ns", b).await;
    let client = env.client();
    let out = env
        .run(&["once", "--base-role-arn", BASE, "--namespace-restrictions"])
        .await;
    assert_clean_run(&out);
    for (ns, _) in bad {
        let message = assert_condition(&client, ns, "app", ("False", "NotPermitted")).await;
        assert!(
            message.contains("iam.amazonaws.com/allowed-roles")
                && message.contains("not a JSON array"),
            "{ns}: {message}"
        );
        assert!(
            Api::<Secret>::namespaced(client.clone(), ns)
                .get_opt("app")
                .await
                .unwrap()
                .is_none()
        );
    }
    let (status, _, _) = condition(&client, "open", "app").await;
    assert_eq!(status, "True");
    let (_, reason, _) = condition(&client, "open", "other").await;
    assert_eq!(reason, "NotPermitted");
    // Only the allowed role was assumed.
    assert_eq!(env.moto.calls("AssumeRole"), 1);
}
