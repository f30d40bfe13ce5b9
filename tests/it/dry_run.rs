//! A live dry run plans what the pass will do: without `--base-role-arn` it discovers the base
//! the way a real pass does (the read-only `GetCallerIdentity`), so bare names and
//! `path/name` references are planned, not blocked, and it still assumes no role and writes
//! nothing. Offline, a plan without a base blames the plan's flags, not the role's spec.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Output;

use jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube_aws_iam_controller::domain::crd::AWSIAMRole;
use kube_aws_iam_controller::domain::secret;

use crate::support::apiserver::{ApiServer, ApiServerBuilder};
use crate::support::assert_contains;
use crate::support::harness::*;

/// (action, namespace, name) → (reason, roleArn) of every action that is not a skip.
type Planned = BTreeMap<(String, String, String), (String, String)>;

/// Bare names, `path/name` and full ARNs, new and with expiring Secrets, and an orphan.
fn live_state() -> ApiServerBuilder {
    let now = Timestamp::now();
    let orphan = role("team-a", "orphan", "app-orphan");
    ApiServer::builder()
        .object(role("team-a", "bare", "app-bare"))
        .object(role("team-a", "pathed", "team/app-pathed"))
        .object(role(
            "team-b",
            "full",
            "arn:aws:iam::123456789012:role/app-full",
        ))
        .object(role("team-a", "expiring-bare", "app-expiring"))
        .object(role("team-b", "expiring-path", "team/app-expiring-path"))
        .object(managed_secret(
            &orphan,
            "",
            now - SignedDuration::from_mins(10),
            3600,
        ))
}

fn planned(json: &str) -> (Planned, usize) {
    let v: serde_json::Value =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("the plan is JSON ({e}):\n{json}"));
    let actions = v["actions"].as_array().expect("actions");
    let field = |a: &serde_json::Value, k: &str| a[k].as_str().unwrap_or_default().to_string();
    let mut out = Planned::new();
    let mut skips = 0;
    for a in actions {
        if field(a, "action") == "skip" {
            skips += 1;
            continue;
        }
        out.insert(
            (field(a, "action"), field(a, "namespace"), field(a, "name")),
            (field(a, "reason"), field(a, "roleArn")),
        );
    }
    (out, skips)
}

/// Gives a stored role the Secret the controller wrote for it 55 minutes ago (owned by its
/// UID, an hour's credentials), so the only thing wrong with it is its expiry.
async fn seed_expiring(env: &Env, ns: &str, name: &str) {
    let client = env.client();
    let stored = Api::<AWSIAMRole>::namespaced(client.clone(), ns);
    let stored = stored.get(name).await.unwrap();
    let issued = Timestamp::now() - SignedDuration::from_mins(55);
    serve_as_controller(&client, &stored, SEEDED, issued, false).await;
}

/// (namespace, name) → (`role-arn`, `expire`) of every managed Secret.
async fn managed_secrets(env: &Env) -> BTreeMap<(String, String), (String, String)> {
    all_secrets(&env.client())
        .await
        .into_iter()
        .filter(|s| s.metadata.labels.as_ref().is_some_and(secret::is_managed))
        .map(|s| {
            let data = s.data.clone().unwrap_or_default();
            let get = |k: &str| {
                data.get(k)
                    .map(|v| String::from_utf8_lossy(&v.0).into_owned())
                    .unwrap_or_default()
            };
            (
                (
                    s.metadata.namespace.clone().unwrap_or_default(),
                    s.metadata.name.clone().unwrap_or_default(),
                ),
                (get("role-arn"), get("expire")),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_dry_run_plans_exactly_what_the_next_pass_does() {
    let env = Env::start("dry-run-live", live_state()).await;
    seed_expiring(&env, "team-a", "expiring-bare").await;
    seed_expiring(&env, "team-b", "expiring-path").await;
    env.api.clear_requests();

    // The dry runs, without --base-role-arn: `plan` and `once --dry-run` agree.
    let plan_out = env.run_ok(&["plan", "--output", "json"]).await;
    let dry_out = env.run_ok(&["once", "--dry-run", "--output", "json"]).await;
    let (plan, _) = planned(&text(&plan_out.stdout));
    let (dry, _) = planned(&text(&dry_out.stdout));
    assert_eq!(plan, dry, "plan and once --dry-run differ");
    assert!(
        !plan.keys().any(|(action, _, _)| action == "blocked"),
        "a live dry run blocks nothing here: {plan:#?}"
    );
    // Read-only: one GetCallerIdentity per run, no role assumed, nothing written.
    assert_eq!(env.moto.calls("AssumeRole"), 0, "{:?}", env.moto.counts());
    assert_eq!(env.moto.calls("GetCallerIdentity"), 2);
    assert_eq!(env.api.write_count(), 0, "{:#?}", env.api.requests());
    assert_eq!(env.api.write_count_for("events"), 0);
    for out in [&plan_out, &dry_out] {
        assert_no_leak(out, &[]);
    }

    // What the plan says, object by object.
    let expected: BTreeSet<(&str, &str, &str, &str)> = [
        ("create", "team-a", "bare", "Missing"),
        ("create", "team-a", "pathed", "Missing"),
        ("create", "team-b", "full", "Missing"),
        ("refresh", "team-a", "expiring-bare", "Expiring"),
        ("refresh", "team-b", "expiring-path", "Expiring"),
        ("delete", "team-a", "orphan", "OwnerGone"),
    ]
    .into_iter()
    .collect();
    let got: BTreeSet<(&str, &str, &str, &str)> = plan
        .iter()
        .map(|((a, ns, n), (reason, _))| (a.as_str(), ns.as_str(), n.as_str(), reason.as_str()))
        .collect();
    assert_eq!(got, expected, "{plan:#?}");

    // The real pass, still without --base-role-arn.
    let before = managed_secrets(&env).await;
    env.moto.reset_counts();
    env.api.clear_requests();
    env.run_ok(&["once"]).await;
    let after = managed_secrets(&env).await;

    // What it did, read off the cluster: created, replaced and deleted managed Secrets.
    let mut done: BTreeMap<(String, String, String), String> = BTreeMap::new();
    for (key, (arn, expire)) in &after {
        let action = match before.get(key) {
            None => "create",
            Some((_, old)) if old != expire => "refresh",
            Some(_) => continue,
        };
        done.insert((action.into(), key.0.clone(), key.1.clone()), arn.clone());
    }
    for (key, (arn, _)) in &before {
        if !after.contains_key(key) {
            done.insert(("delete".into(), key.0.clone(), key.1.clone()), arn.clone());
        }
    }
    assert_eq!(
        plan.keys().collect::<BTreeSet<_>>(),
        done.keys().collect::<BTreeSet<_>>(),
        "the dry run's plan is not what the pass did"
    );
    // Every issued Secret holds the role ARN the plan named.
    for (key, arn) in &done {
        if key.0 != "delete" {
            assert_eq!(&plan[key].1, arn, "{key:?}");
        }
    }
    // One AssumeRole per create or refresh the plan listed, one Secret write per action.
    let issued = plan.keys().filter(|(a, _, _)| a != "delete").count();
    assert_eq!(
        env.moto.calls("AssumeRole"),
        issued,
        "{:?}",
        env.moto.counts()
    );
    let secret_writes = env.api.write_count_for("secrets");
    assert_eq!(secret_writes, plan.len(), "{:#?}", env.api.requests());

    // Afterwards the live plan is all skips, again without writes or AssumeRole.
    env.moto.reset_counts();
    env.api.clear_requests();
    let again = env.run_ok(&["plan", "--output", "json"]).await;
    let (rest, skips) = planned(&text(&again.stdout));
    assert!(rest.is_empty(), "after the pass: {rest:#?}");
    assert_eq!(skips, 5, "{}", text(&again.stdout));
    assert_eq!(env.moto.calls("AssumeRole"), 0);
    assert_eq!(env.api.write_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_plan_without_a_base_blames_the_plan_not_the_spec() {
    let env = Env::start("dry-run-offline", ApiServer::builder()).await;
    let input = env.dir.path().join("roles.yaml");
    std::fs::write(
        &input,
        "apiVersion: zalando.org/v1\nkind: AWSIAMRole\nmetadata: {name: bare, namespace: team-a, uid: u1, generation: 1}\nspec: {roleReference: team/app-bare}\n---\napiVersion: zalando.org/v1\nkind: AWSIAMRole\nmetadata: {name: bad, namespace: team-a, uid: u2, generation: 1}\nspec: {roleReference: \"/app-bad\"}\n",
    )
    .unwrap();
    let input = input.to_str().expect("a UTF-8 scratch path");
    let plan = ["plan", "--from", input, "--output", "json"];
    // The action planned for `bare`, from a JSON plan on stdout.
    let action = |out: &Output| {
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let actions = v["actions"].as_array().unwrap();
        let bare = actions.iter().find(|a| a["name"] == "bare");
        bare.unwrap_or_else(|| panic!("no action for bare: {v}"))
            .clone()
    };
    let out = env.run_ok(&plan).await;
    let bare = action(&out);
    assert_eq!(bare["action"], "blocked", "{bare}");
    assert_eq!(bare["reason"], "NeedsBaseRoleArn", "{bare}");
    let message = bare["message"].as_str().unwrap();
    assert!(message.contains("--base-role-arn"), "{message}");
    assert!(
        !message.contains("spec."),
        "the spec is not to blame: {message}"
    );
    assert_contains(&text(&out.stderr), "--base-role-arn");
    // Offline means no STS at all.
    assert_eq!(env.moto.total_calls(), 0);
    // With a base, the same role is planned.
    let out = env
        .run(&[&plan[..], &["--base-role-arn", BASE]].concat())
        .await;
    let bare = action(&out);
    assert_eq!(bare["action"], "create", "{bare}");
    assert_eq!(
        bare["roleArn"],
        format!("{BASE}team/app-bare").as_str(),
        "{bare}"
    );
}

/// A live dry run whose `GetCallerIdentity` fails still plans: it warns, and bare names are
/// blocked as the plan's missing flag rather than failing the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_dry_run_without_sts_warns_and_blames_the_plan() {
    let env = Env::with_role("dry-run-no-sts", role("team-a", "bare", "app-bare")).await;
    // Nothing listens there: the discovery fails at once.
    let closed = format!("http://127.0.0.1:{}", free_port());
    let mut plan = env.command(&["plan", "--output", "json"]);
    plan.env("AWS_ENDPOINT_URL_STS", &closed)
        .env("AWS_ENDPOINT_URL", &closed);
    let out = finish(plan).await;
    assert_exit(&out, 0);
    let stderr = text(&out.stderr);
    assert_contains(&stderr, "dry run without a base role ARN");
    let (plan, _) = planned(&text(&out.stdout));
    let (reason, _) = &plan[&("blocked".into(), "team-a".into(), "bare".into())];
    assert_eq!(reason, "NeedsBaseRoleArn");
    assert_eq!(env.api.write_count(), 0);
    assert_no_leak(&out, &[]);
}
