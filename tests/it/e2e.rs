//! End to end: the compiled binary against the loopback Kubernetes API (kube-fake-client behind
//! a real HTTP server, reached through a kubeconfig) and moto's STS (through
//! `AWS_ENDPOINT_URL_STS`), with the Secrets it writes read back by the real AWS CLI.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{ListParams, PostParams};
use kube_aws_iam_controller::domain::crd::AWSIAMRole;
use kube_aws_iam_controller::domain::secret;

use crate::support::apiserver::ApiServer;
use crate::support::argv;
use crate::support::assert_contains;
use crate::support::harness::*;
use crate::support::moto;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_serves_a_mixed_state_and_the_second_pass_is_a_no_op() {
    let env = Env::start("e2e-mixed", mixed_state()).await;
    let client = env.client();
    let start = Instant::now();
    let out = env.run(&["once"]).await;
    let took = start.elapsed();
    assert_eq!(out.status.code(), Some(0), "stderr:\n{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert_contains(&stderr, "pass done: create=1, refresh=1");
    // One GetCallerIdentity (base ARN discovery), one AssumeRole per new or expiring role.
    assert_eq!(env.moto.calls("GetCallerIdentity"), 1);
    assert_eq!(env.moto.calls("AssumeRole"), 2);

    let by_name: BTreeMap<String, Secret> = all_secrets(&client)
        .await
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
    let labels = taken.metadata.labels.as_ref().unwrap();
    assert!(!labels.contains_key("heritage"));
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
    assert_condition(&client, "team-b", "taken", ("False", "SecretConflict")).await;
    let (_, reason, message) = condition(&client, "team-b", "invalid").await;
    assert_eq!(reason, "InvalidSpec");
    assert!(message.contains("roleSessionDuration"), "{message}");
    let (_, reason, message) = condition(&client, "team-b", "wrong-types").await;
    assert_eq!(reason, "InvalidSpec");
    assert!(message.contains("must be"), "{message}");

    assert_events(
        &all_events(&client).await,
        &[
            ("new", "CreateCredentials"),
            ("expiring", "UpdateCredentials"),
            ("orphan", "DeleteCredentials"),
            ("taken", "SecretConflict"),
            ("invalid", "InvalidSpec"),
        ],
    );

    // The Secret's files work for SDK consumers, both ways.
    let data = data_map(&by_name["new"]);
    let arn =
        moto::caller_identity_with_credentials_file(&env.moto.endpoint(), &data, env.dir.path())
            .expect("the credentials file authenticates");
    assert!(arn.contains("assumed-role/app-new/team-a.new"), "{arn}");
    let arn = moto::caller_identity_with_credential_process(
        &env.moto.endpoint(),
        &data,
        env.dir.path(),
        moto::ProfileFile::SharedCredentials,
    )
    .expect("credential_process authenticates");
    assert!(arn.contains("assumed-role/app-new/team-a.new"), "{arn}");

    // Second pass: nothing to do, so no writes and no STS calls at all.
    env.moto.reset_counts();
    let writes = env.api.write_count();
    let events_written = env.api.write_count_for("events");
    let out = env.run_ok(&["once", "--base-role-arn", BASE]).await;
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
    for line in [
        format!("once --dry-run --base-role-arn {BASE} --output json --log-format json"),
        format!("plan --base-role-arn {BASE} --output diff --verbose"),
    ] {
        let args = argv(&line);
        let out = env.run_ok(&args).await;
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
    for r in roles.list(&ListParams::default()).await.unwrap().items {
        serve_as_controller(&client, &r, SEEDED, now, true).await;
    }
    env.api.clear_requests();
    let writes = env.api.write_count();
    let out = env.run_ok(&["once", "--base-role-arn", BASE]).await;
    assert_contains(&text(&out.stderr), "skip=600");
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
        .run(&argv(&format!(
            "once --base-role-arn {BASE} --sts-rate 20 --concurrency 16"
        )))
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_new_roles_health_and_metrics_and_stops_on_sigterm() {
    let env = Env::with_role("e2e-run", role("team-a", "first", "app-first")).await;
    let client = env.client();
    let interval = Duration::from_secs(2);
    let (mut run, port) = env.run_loop("2s");
    let mut child = run.stderr(Stdio::piped()).spawn().unwrap();
    wait_ready(port).await;
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

    assert_eq!(
        terminate(&mut child, Duration::from_secs(10)).await,
        Some(0),
        "exits 0 within 10 s of SIGTERM"
    );
    let stderr = text(&child.wait_with_output().await.unwrap().stderr);
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
    let env = Env::with_role("e2e-assume-role", role("team-a", "app", "app")).await;
    let out = env.run_ok(&["once", "--assume-role", "controller"]).await;
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

/// With `--namespace-restrictions`, a role a namespace may not use is never assumed and loses
/// its Secret; allowed roles are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_restrictions_are_enforced_live() {
    let now = Timestamp::now();
    let revoked = role("team-a", "revoked", "team-b/db");
    let builder = ApiServer::builder()
        .object(namespace("team-a", Some(r#"["team-a/*"]"#)))
        .object(namespace("team-b", None))
        .object(namespace("team-c", Some("not json")))
        .object(role("team-a", "allowed", "team-a/app"))
        .object(role(
            "team-a",
            "cross-account",
            "arn:aws:iam::210987654321:role/team-a/app",
        ))
        .object(revoked.clone())
        .object(managed_secret(&revoked, "", now, 3600))
        .object(role("team-b", "any", "team-b/db"))
        .object(role("team-c", "any", "team-a/app"));
    let env = Env::start("e2e-restrictions", builder).await;
    env.run_ok(&["once", "--namespace-restrictions", "--base-role-arn", BASE])
        .await;
    assert_eq!(
        env.moto.calls("AssumeRole"),
        1,
        "only the allowed role is assumed"
    );
    let client = env.client();
    let names: Vec<(String, String)> = all_secrets(&client)
        .await
        .into_iter()
        .map(|s| (s.metadata.namespace.unwrap(), s.metadata.name.unwrap()))
        .collect();
    assert_eq!(names, vec![("team-a".to_string(), "allowed".to_string())]);
    for (ns, name, hint) in [
        ("team-a", "cross-account", "not allowed in namespace"),
        ("team-a", "revoked", "not allowed in namespace"),
        (
            "team-b",
            "any",
            "no iam.amazonaws.com/allowed-roles annotation",
        ),
        ("team-c", "any", "not a JSON array"),
    ] {
        let message = assert_condition(&client, ns, name, ("False", "NotPermitted")).await;
        assert!(message.contains(hint), "{ns}/{name}: {message}");
    }
}

/// `--apiserver` overrides the kubeconfig's URL, and is enough without any kubeconfig.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apiserver_flag_works_without_kubeconfig() {
    let env = Env::start("e2e-apiserver-flag", mixed_state()).await;
    let url = env.api.url();
    let out = env
        .command(&argv(&format!(
            "once --dry-run --apiserver {url} --base-role-arn {BASE} --output json"
        )))
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["summary"]["create"], 1);
}
