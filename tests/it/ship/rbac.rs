//! The RBAC proof: runs the compiled binary (`plan`, `once --dry-run`, `once`, `run`,
//! `--namespace-restrictions`, `--namespace`) against the recording loopback API server
//! (`test-apiserver/`) and moto's STS (full tier), collects every (verb, group, resource,
//! subresource) it requested, and compares that set with the ClusterRole (and, for the leader
//! Lease, the namespaced Role) in `deploy/rbac.yaml` both ways.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::process::{Output, Stdio};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule, Role, RoleBinding};
use kube::api::DeleteParams;
use kube::{Api, Client};
use kube_aws_iam_controller::domain::crd::AWSIAMRole;
use serde_json::Value;

use super::{CONTROLLER_NAMESPACE, SERVICE_ACCOUNT};
use crate::support::apiserver::{ApiServer, ApiServerBuilder, RecordedRequest};
use crate::support::argv;
use crate::support::harness::{
    BASE, Env, eventually, marked_managed_secret, marked_mixed_state, namespace, role,
    serve_as_controller, terminate, text, wait_ready,
};
use crate::support::manifests::{docs_of, only};

/// Marker in credentials the tests seed; no output may contain it.
const SEEDED: &str = "SHIPSEEDED";

/// One kind of API request, as RBAC sees it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Access {
    verb: String,
    group: String,
    /// `resource` or `resource/subresource`.
    resource: String,
    /// For resources granted by a (namespaced) Role: the namespace of the request or grant;
    /// `None` for what the ClusterRole grants everywhere.
    namespace: Option<String>,
}

impl Access {
    fn of(r: &RecordedRequest, role_scoped: &BTreeSet<(String, String)>) -> Access {
        let resource = match &r.subresource {
            Some(sub) => format!("{}/{sub}", r.resource),
            None => r.resource.clone(),
        };
        let namespace = role_scoped
            .contains(&(r.group.clone(), resource.clone()))
            .then(|| r.namespace.clone().unwrap_or_default());
        Access {
            verb: r.verb.clone(),
            group: r.group.clone(),
            resource,
            namespace,
        }
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let group = if self.group.is_empty() {
            "\"\" (core)"
        } else {
            &self.group
        };
        write!(f, "{} {group} {}", self.verb, self.resource)?;
        if let Some(ns) = &self.namespace {
            write!(f, " in namespace {ns}")?;
        }
        Ok(())
    }
}

/// The (group, resource) pairs the Role of deploy/rbac.yaml grants in its namespace only.
fn role_scoped() -> BTreeSet<(String, String)> {
    granted()
        .into_iter()
        .filter(|a| a.namespace.is_some())
        .map(|a| (a.group, a.resource))
        .collect()
}

/// Grants of one rule list, in `namespace` (a Role's) or everywhere (the ClusterRole's).
fn grants_of(rules: &[PolicyRule], namespace: Option<&str>, what: &str) -> BTreeSet<Access> {
    let mut grants = BTreeSet::new();
    for (i, rule) in rules.iter().enumerate() {
        assert!(
            rule.resource_names.as_ref().is_none_or(Vec::is_empty),
            "{what} rule {i}: resourceNames are not used"
        );
        assert!(
            rule.non_resource_urls.as_ref().is_none_or(Vec::is_empty),
            "{what} rule {i}: nonResourceURLs are not needed (the controller makes no discovery call)"
        );
        let groups = rule.api_groups.clone().unwrap_or_default();
        let resources = rule.resources.clone().unwrap_or_default();
        for s in groups.iter().chain(&resources).chain(&rule.verbs) {
            assert!(!s.contains('*'), "{what} rule {i}: wildcard {s:?}");
        }
        for group in &groups {
            for resource in &resources {
                for verb in &rule.verbs {
                    grants.insert(Access {
                        verb: verb.clone(),
                        group: group.clone(),
                        resource: resource.clone(),
                        namespace: namespace.map(str::to_string),
                    });
                }
            }
        }
    }
    grants
}

/// Every (verb, group, resource[/subresource]) the ClusterRole of deploy/rbac.yaml grants,
/// and, scoped to its namespace, what its Role grants (bound to the controller's
/// ServiceAccount). Wildcards, resourceNames and nonResourceURLs are refused outright (least
/// privilege, and this comparison would not be exact with them).
fn granted() -> BTreeSet<Access> {
    let docs = docs_of("deploy/rbac.yaml");
    let role: ClusterRole = only(&docs, "ClusterRole", "deploy/rbac.yaml");
    assert!(
        role.aggregation_rule.is_none(),
        "the ClusterRole is not aggregated"
    );
    let mut grants = grants_of(
        role.rules.as_deref().unwrap_or_default(),
        None,
        "ClusterRole",
    );
    let ns_role: Role = only(&docs, "Role", "deploy/rbac.yaml");
    let binding: RoleBinding = only(&docs, "RoleBinding", "deploy/rbac.yaml");
    let ns = ns_role
        .metadata
        .namespace
        .clone()
        .expect("the Role's namespace");
    assert_eq!(binding.metadata.namespace.as_deref(), Some(ns.as_str()));
    assert_eq!(
        (
            binding.role_ref.kind.as_str(),
            binding.role_ref.name.as_str()
        ),
        ("Role", ns_role.metadata.name.as_deref().unwrap_or_default())
    );
    let subjects = binding.subjects.unwrap_or_default();
    assert!(
        subjects.iter().any(|s| s.kind == "ServiceAccount"
            && s.name == SERVICE_ACCOUNT
            && s.namespace.as_deref() == Some(CONTROLLER_NAMESPACE)),
        "the RoleBinding binds the controller's ServiceAccount"
    );
    grants.extend(grants_of(
        ns_role.rules.as_deref().unwrap_or_default(),
        Some(&ns),
        "Role",
    ));
    grants
}

/// The requests of each scenario, by access.
#[derive(Default)]
struct Usage {
    used: BTreeMap<Access, BTreeSet<String>>,
    non_resource: BTreeSet<String>,
    statuses: BTreeMap<Access, BTreeSet<u16>>,
}

impl Usage {
    /// Takes the requests `api` recorded since the last call and files them under `scenario`.
    fn collect(&mut self, api: &ApiServer, scenario: &str) -> BTreeSet<Access> {
        let mut seen = BTreeSet::new();
        let role_scoped = role_scoped();
        for r in api.requests() {
            if r.verb.is_empty() {
                self.non_resource.insert(format!("{} {}", r.method, r.path));
                continue;
            }
            let access = Access::of(&r, &role_scoped);
            self.used
                .entry(access.clone())
                .or_default()
                .insert(scenario.to_string());
            self.statuses
                .entry(access.clone())
                .or_default()
                .insert(r.status);
            seen.insert(access);
        }
        api.clear_requests();
        seen
    }
}

/// Runs the binary to completion (at most a minute) and asserts that it succeeds and that no
/// seeded credential is in its output.
async fn run_clean(env: &Env, args: &[&str]) -> Output {
    let out = env.run_ok(args).await;
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        !all.contains(SEEDED),
        "{args:?}: seeded credential in output"
    );
    out
}

/// Every action kind: create, refresh, update-status, delete, skip, blocked (three ways).
fn mixed_state() -> ApiServerBuilder {
    marked_mixed_state(SEEDED)
        .object(role("team-c", "fresh", "app-fresh"))
        .object(role("team-c", "stale", "app-stale"))
}

/// Gives team-c/fresh and team-c/stale valid Secrets owned by them (UIDs known only now);
/// `fresh` also gets its status, so it is up to date and `stale` needs only a status update.
async fn serve_team_c(client: &Client) {
    let now = Timestamp::now();
    let roles = Api::<AWSIAMRole>::namespaced(client.clone(), "team-c");
    for name in ["fresh", "stale"] {
        let r = roles.get(name).await.unwrap();
        serve_as_controller(client, &r, SEEDED, now, name == "fresh").await;
    }
}

/// The action kinds of a JSON plan.
fn planned_kinds(stdout: &[u8]) -> BTreeMap<String, String> {
    let plan: Value = serde_json::from_slice(stdout).expect("the plan is JSON");
    plan["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .map(|a| {
            (
                format!(
                    "{}/{}",
                    a["namespace"].as_str().unwrap(),
                    a["name"].as_str().unwrap()
                ),
                format!(
                    "{} {}",
                    a["action"].as_str().unwrap(),
                    a["reason"].as_str().unwrap()
                ),
            )
        })
        .collect()
}

/// The scenarios of the RBAC proof: all action kinds (plan, dry run, once), the loop (with a
/// repeated Event, which the recorder patches), namespace restrictions, one namespace.
async fn record_every_mode() -> Usage {
    let mut usage = Usage::default();

    // 1. Every action kind, planned (dry) first, then applied.
    let env = Env::start("ship-rbac-mixed", mixed_state()).await;
    serve_team_c(&env.client()).await;
    let out = run_clean(&env, &["plan", "--base-role-arn", BASE, "--output", "json"]).await;
    let planned = planned_kinds(&out.stdout);
    let expected: BTreeMap<String, String> = [
        ("team-a/expiring", "refresh OwnerChanged"),
        ("team-a/new", "create Missing"),
        ("team-a/orphan", "delete OwnerGone"),
        ("team-b/invalid", "blocked InvalidSpec"),
        ("team-b/taken", "blocked SecretConflict"),
        ("team-b/wrong-types", "blocked InvalidSpec"),
        ("team-c/fresh", "skip UpToDate"),
        ("team-c/stale", "update-status StatusStale"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(
        planned, expected,
        "the mixed state covers every action kind"
    );
    let plan_reads = usage.collect(&env.api, "plan");
    run_clean(&env, &["once", "--dry-run", "--base-role-arn", BASE]).await;
    let dry_reads = usage.collect(&env.api, "once --dry-run");
    for (scenario, seen) in [("plan", &plan_reads), ("once --dry-run", &dry_reads)] {
        assert!(
            seen.iter().all(|a| a.verb == "list" || a.verb == "get"),
            "{scenario} only reads: {seen:?}"
        );
    }
    let out = run_clean(&env, &["once"]).await;
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(
            "pass done: create=1, refresh=1, update-status=1, delete=1, skip=1, blocked=3;"
        ),
        "{stderr}"
    );
    assert_eq!(env.moto.calls("AssumeRole"), 2);
    usage.collect(&env.api, "once");
    drop(env);

    // 2. The loop with namespace restrictions (it watches AWSIAMRoles, managed Secrets and
    //    Namespaces): ready; an orphaned Secret is deleted after a GET confirms its AWSIAMRole
    //    is gone; a Secret deleted behind its back is re-created (a second CreateCredentials
    //    Event for the same role, which the recorder patches); SIGTERM.
    let orphan = role("team-a", "orphaned", "app-orphaned");
    let env = Env::start(
        "ship-rbac-run",
        ApiServer::builder()
            .object(namespace("team-a", Some(r#"["app-*"]"#)))
            .object(role("team-a", "looped", "app-looped"))
            .object(marked_managed_secret(
                SEEDED,
                &orphan,
                "",
                Timestamp::now(),
                3600,
            )),
    )
    .await;
    let port = crate::support::harness::free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = env
        .command(&argv(&format!(
            "run --interval 1s --namespace-restrictions --health-addr {addr}"
        )))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_ready(port).await;
    let secrets = Api::<Secret>::namespaced(env.client(), "team-a");
    let orphan_gone = eventually(Duration::from_secs(15), || async {
        secrets.get_opt("orphaned").await.ok().flatten().is_none()
    })
    .await;
    assert!(orphan_gone, "the loop deleted the orphaned Secret");
    let first = secrets.get("looped").await.unwrap().metadata.uid;
    secrets
        .delete("looped", &DeleteParams::default())
        .await
        .unwrap();
    let recreated = eventually(Duration::from_secs(15), || async {
        secrets
            .get_opt("looped")
            .await
            .ok()
            .flatten()
            .is_some_and(|s| s.metadata.uid != first)
    })
    .await;
    assert!(recreated, "the loop re-created the deleted Secret");
    let patched = env
        .api
        .wait_for_requests(Duration::from_secs(10), |rs| {
            rs.iter()
                .any(|r| r.resource == "events" && r.verb == "patch")
        })
        .await;
    assert!(patched, "the repeated Event was patched");
    assert_eq!(
        terminate(&mut child, Duration::from_secs(15)).await,
        Some(0)
    );
    usage.collect(&env.api, "run");
    drop(env);

    // 3. Namespace restrictions: allowed, blocked, and a Secret that must go.
    let now = Timestamp::now();
    let revoked = role("closed", "revoked", "app-revoked");
    let env = Env::start(
        "ship-rbac-restricted",
        ApiServer::builder()
            .object(namespace("open", Some(r#"["app-*"]"#)))
            .object(namespace("closed", None))
            .object(role("open", "ok", "app-ok"))
            .object(role("closed", "refused", "app-refused"))
            .object(revoked.clone())
            .object(marked_managed_secret(SEEDED, &revoked, "", now, 3600)),
    )
    .await;
    let out = run_clean(
        &env,
        &argv(&format!(
            "plan --namespace-restrictions --base-role-arn {BASE} --output json"
        )),
    )
    .await;
    let planned = planned_kinds(&out.stdout);
    assert_eq!(planned["open/ok"], "create Missing");
    assert_eq!(planned["closed/refused"], "blocked NotPermitted");
    assert_eq!(planned["closed/revoked"], "delete NotPermitted");
    usage.collect(&env.api, "plan --namespace-restrictions");
    run_clean(&env, &["once", "--namespace-restrictions"]).await;
    usage.collect(&env.api, "once --namespace-restrictions");
    assert!(
        Api::<Secret>::namespaced(env.client(), "closed")
            .get_opt("revoked")
            .await
            .unwrap()
            .is_none(),
        "the no longer permitted role lost its Secret"
    );

    // 4. One namespace, with and without restrictions (a GET of that Namespace).
    run_clean(
        &env,
        &["once", "--namespace", "open", "--namespace-restrictions"],
    )
    .await;
    usage.collect(&env.api, "once --namespace open --namespace-restrictions");
    run_clean(&env, &["once", "--namespace", "closed"]).await;
    usage.collect(&env.api, "once --namespace closed");
    usage
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_grants_exactly_what_the_binary_uses() {
    let usage = record_every_mode().await;
    let grants = granted();
    let mut report = String::from("requests the binary made (access: scenarios; statuses):\n");
    for (access, scenarios) in &usage.used {
        report.push_str(&format!(
            "  {access}: {}; {:?}\n",
            scenarios.iter().cloned().collect::<Vec<_>>().join(", "),
            usage.statuses[access]
        ));
    }
    eprintln!("{report}");
    assert!(
        usage.non_resource.is_empty(),
        "the binary made non-resource requests (discovery?) the RBAC does not cover: {:?}",
        usage.non_resource
    );
    let denied: Vec<String> = usage
        .used
        .iter()
        .filter(|(a, _)| !grants.contains(a))
        .map(|(a, s)| format!("{a} (in {s:?})"))
        .collect();
    assert!(
        denied.is_empty(),
        "deploy/rbac.yaml does not grant requests the binary makes:\n  {}\n{report}",
        denied.join("\n  ")
    );
    let unused: Vec<String> = grants
        .iter()
        .filter(|g| !usage.used.contains_key(g))
        .map(ToString::to_string)
        .collect();
    assert!(
        unused.is_empty(),
        "deploy/rbac.yaml grants what the binary never used (least privilege):\n  {}\n{report}",
        unused.join("\n  ")
    );
    // Every write succeeded against the API (the recording is of real, accepted requests).
    for (access, statuses) in &usage.statuses {
        if access.verb != "get" {
            assert!(
                statuses.iter().all(|s| (200..300).contains(s)),
                "{access} answered {statuses:?}"
            );
        }
    }
}
