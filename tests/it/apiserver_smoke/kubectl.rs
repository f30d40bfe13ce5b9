//! kubectl against the loopback API server (full tier: needs kubectl on the PATH).

use std::path::Path;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::{Value, json};

use super::{role, secret};
use crate::support::ScratchDir;
use crate::support::apiserver::ApiServer;
use crate::support::argv;
use crate::support::harness::kubeconfig_client;

/// `kubectl ARGS…` against the server, given its kubeconfig by `--kubeconfig` or, with
/// `via_env`, by `KUBECONFIG`; run on the blocking pool so that the server keeps serving.
/// Returns stdout; panics unless kubectl succeeded.
async fn kubectl(server: &ApiServer, dir: &Path, via_env: bool, args: &[&str]) -> String {
    let kubeconfig = server.write_kubeconfig(dir);
    let mut command = std::process::Command::new("kubectl");
    command.arg("--cache-dir").arg(dir.join("kubectl-cache"));
    if via_env {
        command.env("KUBECONFIG", &kubeconfig);
    } else {
        command
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .env_remove("KUBECONFIG");
    }
    command.args(args);
    let out = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("kubectl task")
        .unwrap_or_else(|e| {
            panic!(
                "running kubectl (it must be on the PATH for the full test tier, `make test`): {e}"
            )
        });
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "kubectl {args:?} failed ({}):\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// (namespace, name) of every item of a list.
fn names(list: &Value) -> Vec<(&str, &str)> {
    let items = list["items"].as_array().expect("items");
    fn meta<'a>(i: &'a Value, k: &str) -> &'a str {
        i["metadata"][k].as_str().unwrap_or("")
    }
    items
        .iter()
        .map(|i| (meta(i, "namespace"), meta(i, "name")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_reads_the_fake_through_the_kubeconfig() {
    let dir = ScratchDir::new("apiserver-smoke-kubectl");
    let dir = dir.path();
    // Seeded objects are stored in the fake and served over HTTP; Namespaces are seeded through
    // the server (the fake cannot address them by path).
    let server = ApiServer::builder()
        .object(secret("team-a", "db", &[("app", "x")]))
        .object(role("team-a", "app"))
        .object(Namespace {
            metadata: ObjectMeta {
                name: Some("team-a".into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        })
        .start()
        .await;

    let args = ["get", "secrets", "-A", "-o", "json"];
    let list: Value = serde_json::from_str(&kubectl(&server, dir, false, &args).await).unwrap();
    assert_eq!(names(&list), vec![("team-a", "db")]);
    assert_eq!(
        list["items"][0]["data"]["credentials"],
        json!("W2RlZmF1bHRdCg==")
    );
    // kubectl paged (limit=500) and was recorded with the verb it meant.
    let lists: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.verb == "list" && r.resource == "secrets")
        .collect();
    assert_eq!(lists.len(), 1, "{lists:?}");
    assert_eq!(lists[0].param("limit").as_deref(), Some("500"));
    assert_eq!(lists[0].namespace, None);

    let table = kubectl(&server, dir, false, &["get", "awsiamroles", "-A"]).await;
    assert!(table.contains("team-a") && table.contains("app"), "{table}");

    let args = argv("get awsiamroles.zalando.org -n team-a -o json");
    let list: Value = serde_json::from_str(&kubectl(&server, dir, false, &args).await).unwrap();
    assert_eq!(names(&list), vec![("team-a", "app")]);
    assert_eq!(list["items"][0]["spec"]["roleReference"], json!("app-role"));

    // What the README's offline `plan --from` reads.
    let args = ["get", "awsiamroles,secrets,namespaces", "-A", "-o", "json"];
    let list: Value = serde_json::from_str(&kubectl(&server, dir, false, &args).await).unwrap();
    let kinds: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["kind"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(kinds, vec!["AWSIAMRole", "Secret", "Namespace"], "{list}");

    // KUBECONFIG in the environment works as well as --kubeconfig.
    let out = kubectl(&server, dir, true, &["get", "namespaces", "-o", "name"]).await;
    assert_eq!(out, "namespace/team-a\n");

    // Namespaces behave like any object at their real paths.
    let namespaces: Api<Namespace> = Api::all(kubeconfig_client(&server).await);
    let ns = namespaces.get("team-a").await.unwrap();
    assert_eq!(ns.status.and_then(|s| s.phase).as_deref(), Some("Active"));
    let annotation =
        json!({"metadata": {"annotations": {"iam.amazonaws.com/allowed-roles": "[\"app-role\"]"}}});
    let patched = namespaces
        .patch(
            "team-a",
            &PatchParams::default(),
            &Patch::Merge(&annotation),
        )
        .await
        .unwrap();
    assert_eq!(patched.metadata.annotations.unwrap().len(), 1);
    let missing = namespaces.get("nope").await.unwrap_err();
    assert!(
        matches!(missing, kube::Error::Api(ref s) if s.code == 404 && s.message.contains("namespaces")),
        "{missing:?}"
    );
    namespaces
        .delete("team-a", &DeleteParams::default())
        .await
        .unwrap();
    assert!(
        namespaces
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    let ns_requests: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.resource == "namespaces")
        .map(|r| format!("{} {}", r.verb, r.name.unwrap_or_default()))
        .collect();
    assert_eq!(
        ns_requests,
        [
            "list ",
            "list ",
            "get team-a",
            "patch team-a",
            "get nope",
            "delete team-a",
            "list "
        ]
    );
}
