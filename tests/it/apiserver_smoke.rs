//! Smoke tests of the loopback API server: the tools and clients the end-to-end tests rely on
//! (kubectl, a kubeconfig-built kube::Client) work against it, and it pages, records and fails
//! the way the other tests assume.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Resource as _;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube_aws_iam_controller::domain::crd::{AWSIAMRole, AWSIAMRoleStatus};
use serde_json::json;

use crate::support::apiserver::ApiServer;
use crate::support::harness::{self, kubeconfig_client};

#[cfg(feature = "full-tier")]
mod kubectl;

fn secret(ns: &str, name: &str, labels: &[(&str, &str)]) -> Secret {
    let labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            labels: Some(labels.collect()),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            "credentials".to_string(),
            ByteString(b"[default]\n".to_vec()),
        )])),
        type_: Some("Opaque".into()),
        ..Secret::default()
    }
}

fn role(ns: &str, name: &str) -> AWSIAMRole {
    let mut role = harness::role(ns, name, "app-role");
    role.spec.role_session_duration = Some(3600);
    role
}

fn event(name: &str) -> Event {
    Event {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            ..ObjectMeta::default()
        },
        event_time: Some(MicroTime(jiff::Timestamp::now())),
        reason: Some("CreateCredentials".into()),
        action: Some("Create".into()),
        reporting_controller: Some("kube-aws-iam-controller".into()),
        reporting_instance: Some("test".into()),
        type_: Some("Normal".into()),
        ..Event::default()
    }
}

/// The code and reason of the Status a request was refused with.
fn failure<T: std::fmt::Debug>(result: kube::Result<T>) -> (u16, String) {
    match result {
        Err(kube::Error::Api(s)) => (s.code, s.reason),
        other => panic!("expected a Status error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubeconfig_client_creates_lists_and_patches_status() {
    // Seeded objects are stored as given, status included (as if written before the test).
    let server = ApiServer::builder()
        .json(json!({
            "apiVersion": "zalando.org/v1",
            "kind": "AWSIAMRole",
            "metadata": {"name": "seeded", "namespace": "team-a"},
            "spec": {"roleReference": "seeded-role"},
            "status": {"roleARN": "arn:aws:iam::123456789012:role/seeded-role"},
        }))
        .start()
        .await;
    let client = kubeconfig_client(&server).await;
    let roles: Api<AWSIAMRole> = Api::namespaced(client, "team-a");

    // A status in the create body is dropped, as with a real status subresource.
    let mut new = role("team-a", "app");
    new.status = Some(AWSIAMRoleStatus {
        role_arn: Some("arn:aws:iam::1:role/sneaky".into()),
        ..AWSIAMRoleStatus::default()
    });
    let created = roles.create(&PostParams::default(), &new).await.unwrap();
    assert_eq!(created.status, None);
    assert!(created.metadata.uid.is_some());

    let listed = roles.list(&ListParams::default()).await.unwrap();
    assert_eq!(listed.items.len(), 2);
    assert_eq!(listed.items[0].metadata.name.as_deref(), Some("app"));
    assert_eq!(listed.items[0].spec, new.spec);
    assert_eq!(
        listed.items[1]
            .status
            .as_ref()
            .and_then(|s| s.role_arn.as_deref()),
        Some("arn:aws:iam::123456789012:role/seeded-role")
    );

    let status = json!({
        "status": {
            "roleARN": "arn:aws:iam::123456789012:role/app-role",
            "expiration": "2026-11-26T23:30:00Z",
            "observedGeneration": 1,
        },
        // Ignored on the status subresource: only status changes.
        "spec": {"roleReference": "other"},
        "metadata": {"labels": {"sneaky": "yes"}},
    });
    let patched = roles
        .patch_status("app", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    assert_eq!(patched.spec, new.spec, "status patch left spec alone");
    let got = roles.get("app").await.unwrap();
    assert_eq!(got.spec, new.spec);
    assert_eq!(got.metadata.labels, created.metadata.labels);
    let got_status = got.status.expect("status set");
    assert_eq!(
        got_status.role_arn.as_deref(),
        Some("arn:aws:iam::123456789012:role/app-role")
    );
    assert_eq!(
        got_status.expiration.as_deref(),
        Some("2026-11-26T23:30:00Z")
    );

    // A spec write does not clobber status.
    let spec_patch = json!({"spec": {"roleSessionDuration": 7200}});
    let after = roles
        .patch("app", &PatchParams::default(), &Patch::Merge(&spec_patch))
        .await
        .unwrap();
    assert_eq!(after.spec.role_session_duration, Some(7200));
    assert_eq!(after.status.as_ref(), Some(&got_status));

    // A stale resourceVersion conflicts.
    let mut stale = json!({"metadata": {"resourceVersion": created.metadata.resource_version}, "status": {"expiration": "x"}});
    stale["status"]["roleARN"] = json!("y");
    let params = PatchParams::default();
    let stale = roles
        .patch_status("app", &params, &Patch::Merge(&stale))
        .await;
    assert_eq!(failure(stale).0, 409);

    let requests = server.requests();
    let status_patches: Vec<_> = requests
        .iter()
        .filter(|r| r.verb == "patch" && r.subresource.as_deref() == Some("status"))
        .collect();
    assert_eq!(status_patches.len(), 2);
    assert_eq!(status_patches[0].resource, "awsiamroles");
    assert_eq!(status_patches[0].group, "zalando.org");
    assert_eq!(status_patches[0].namespace.as_deref(), Some("team-a"));
    assert_eq!(status_patches[0].name.as_deref(), Some("app"));
    assert_eq!(server.write_count_for("awsiamroles"), 4);
    assert_eq!(server.write_count(), 4);
}

fn ns_name(s: &Secret) -> (String, String) {
    let meta = &s.metadata;
    (meta.namespace.clone().unwrap(), meta.name.clone().unwrap())
}

/// Every page of a list, following `continue`: the items and each page's remainingItemCount.
async fn list_pages(api: &Api<Secret>, mut params: ListParams) -> (Vec<Secret>, Vec<Option<i64>>) {
    let (mut items, mut remaining) = (Vec::new(), Vec::new());
    loop {
        let page = api.list(&params).await.unwrap();
        remaining.push(page.metadata.remaining_item_count);
        items.extend(page.items);
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => return (items, remaining),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_are_paged_sorted_and_complete() {
    // Names chosen so that creation order is not the sorted order.
    let secrets: Vec<Secret> = (0..1234)
        .map(|i| {
            let ns = format!("ns-{}", (i * 7) % 5);
            let name = format!("s-{:04}", (i * 613) % 1234);
            let managed = if i % 2 == 0 { "yes" } else { "no" };
            secret(&ns, &name, &[("managed", managed)])
        })
        .collect();
    let mut expected: Vec<(String, String)> = secrets.iter().map(ns_name).collect();
    expected.sort();
    let server = ApiServer::builder().objects(secrets).start().await;
    let client = kubeconfig_client(&server).await;
    server.clear_requests();

    let api: Api<Secret> = Api::all(client.clone());
    let (items, remaining) = list_pages(&api, ListParams::default().limit(500)).await;
    let seen: Vec<_> = items.iter().map(ns_name).collect();
    assert_eq!(seen.len(), 1234);
    assert_eq!(
        seen, expected,
        "every Secret exactly once, in (namespace, name) order"
    );
    assert_eq!(remaining, vec![Some(734), Some(234), None]);
    let lists: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.verb == "list")
        .collect();
    assert_eq!(lists.len(), 3, "{lists:?}");
    assert!(
        lists
            .iter()
            .all(|r| r.resource == "secrets" && r.status == 200)
    );
    assert_eq!(lists[0].param("continue"), None);
    assert!(lists[1].param("continue").is_some());

    // Namespaced, with label selectors (equality and set-based), still paged and complete.
    let ns_api: Api<Secret> = Api::namespaced(client, "ns-3");
    for selector in [
        "managed=yes",
        "managed in (yes)",
        "managed,managed notin (no)",
    ] {
        let params = ListParams::default().labels(selector).limit(100);
        let (items, remaining) = list_pages(&ns_api, params).await;
        assert!(remaining.iter().all(Option::is_none), "{remaining:?}");
        let got: Vec<String> = items
            .into_iter()
            .map(|s| s.metadata.name.unwrap())
            .collect();
        // The seeding formula again: even indexes are managed=yes.
        let mut want: Vec<String> = (0..1234)
            .filter(|i| i % 2 == 0 && (i * 7) % 5 == 3)
            .map(|i| format!("s-{:04}", (i * 613) % 1234))
            .collect();
        want.sort();
        assert!(want.len() > 100, "the selector case spans pages");
        assert_eq!(got, want, "selector {selector}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continue_can_expire_with_410() {
    let server = ApiServer::builder()
        .objects((0..10).map(|i| secret("default", &format!("s{i}"), &[])))
        .start()
        .await;
    let api: Api<Secret> = Api::default_namespaced(kubeconfig_client(&server).await);

    let limit4 = ListParams::default().limit(4);
    let first = api.list(&limit4).await.unwrap();
    let token = first.metadata.continue_.clone().expect("more to come");
    server.fail_continue_with_410();
    // The token expires and stays expired; a restarted list pages normally again.
    for _ in 0..2 {
        let expired = api.list(&limit4.clone().continue_token(&token)).await;
        assert_eq!(failure(expired), (410, "Expired".into()));
    }
    let restart = api.list(&limit4).await.unwrap();
    let token = restart.metadata.continue_.expect("more to come");
    let second = api.list(&limit4.clone().continue_token(&token)).await;
    let second = second.unwrap();
    assert_eq!(second.items.len(), 4);

    // A token is bound to its list: another selector is rejected.
    let token = second.metadata.continue_.as_deref().unwrap();
    let other = limit4.labels("x=y").continue_token(token);
    assert_eq!(failure(api.list(&other).await).0, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_nth_write_fails_exactly_that_write() {
    let server = ApiServer::start().await;
    let client = kubeconfig_client(&server).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let events: Api<Event> = Api::namespaced(client, "default");

    server.fail_nth_write(2, 500);
    secrets
        .create(&PostParams::default(), &secret("default", "a", &[]))
        .await
        .unwrap();
    // Events are not counted as writes.
    events
        .create(&PostParams::default(), &event("a.1"))
        .await
        .unwrap();
    let b = secret("default", "b", &[]);
    let b = secrets.create(&PostParams::default(), &b).await;
    assert_eq!(failure(b), (500, "InternalError".into()));
    secrets
        .create(&PostParams::default(), &secret("default", "c", &[]))
        .await
        .unwrap();

    let inspect: Api<Secret> = Api::namespaced(server.client(), "default");
    assert!(
        inspect.get_opt("b").await.unwrap().is_none(),
        "b was not written"
    );
    assert!(inspect.get_opt("c").await.unwrap().is_some());
    assert_eq!(server.write_count(), 3, "attempts, events excluded");
    assert_eq!(server.write_count_for("secrets"), 3);
    assert_eq!(server.write_count_for("events"), 1);
    let statuses: Vec<u16> = server
        .requests()
        .iter()
        .filter(|r| r.is_write() && r.resource != "events")
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, vec![201, 500, 201]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_preconditions_are_enforced() {
    let server = ApiServer::builder()
        .object(secret("default", "s", &[]))
        .start()
        .await;
    let api: Api<Secret> = Api::default_namespaced(kubeconfig_client(&server).await);
    let current = api.get("s").await.unwrap();
    let uid = current.metadata.uid.clone().unwrap();
    let rv = current.metadata.resource_version.clone().unwrap();

    for pre in [
        Preconditions {
            uid: Some("not-the-uid".into()),
            resource_version: None,
        },
        Preconditions {
            uid: Some(uid.clone()),
            resource_version: Some(format!("{rv}0")),
        },
    ] {
        let params = DeleteParams::default().preconditions(pre.clone());
        let delete = api.delete("s", &params).await;
        assert_eq!(failure(delete), (409, "Conflict".into()), "{pre:?}");
        assert!(api.get_opt("s").await.unwrap().is_some(), "still there");
    }

    // Same preconditions on update: a uid in the body must match.
    let mut wrong_uid = current.clone();
    wrong_uid.metadata.uid = Some("not-the-uid".into());
    let replace = api.replace("s", &PostParams::default(), &wrong_uid).await;
    assert_eq!(failure(replace).0, 409);

    api.delete(
        "s",
        &DeleteParams::default().preconditions(Preconditions {
            uid: Some(uid),
            resource_version: Some(rv),
        }),
    )
    .await
    .unwrap();
    assert!(api.get_opt("s").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_delay_and_shutdown() {
    let server = ApiServer::builder()
        .object(secret("default", "s", &[]))
        .object(role("default", "r"))
        .start()
        .await;
    let client = kubeconfig_client(&server).await;
    let secrets: Api<Secret> = Api::all(client.clone());
    let roles: Api<AWSIAMRole> = Api::all(client.clone());

    // A failing resource fails its lists only, and only for clients other than the server's own.
    let all = ListParams::default();
    server.fail_lists("secrets", true);
    assert_eq!(failure(secrets.list(&all).await).0, 500);
    assert_eq!(roles.list(&all).await.unwrap().items.len(), 1);
    let inspect = Api::<Secret>::all(server.client());
    assert_eq!(inspect.list(&all).await.unwrap().items.len(), 1);
    server.fail_lists("secrets", false);
    assert_eq!(secrets.list(&all).await.unwrap().items.len(), 1);

    server.fail_writes("events", Some(403));
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let create = events.create(&PostParams::default(), &event("e")).await;
    assert_eq!(failure(create), (403, "Forbidden".into()));
    server.fail_writes("events", None);

    // generateName and stringData behave as on a real server.
    let mut generated = secret("default", "", &[]);
    generated.metadata.name = None;
    generated.metadata.generate_name = Some("gen-".into());
    generated.string_data = Some(BTreeMap::from([("plain".to_string(), "text".to_string())]));
    let created = Api::<Secret>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &generated)
        .await
        .unwrap();
    let name = created.metadata.name.unwrap();
    assert!(name.starts_with("gen-") && name.len() == 9, "{name}");
    assert_eq!(created.string_data, None);
    assert_eq!(
        created.data.unwrap().get("plain"),
        Some(&ByteString(b"text".to_vec()))
    );

    server.set_delay(Duration::from_millis(300));
    let started = Instant::now();
    roles.list(&all).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    server.set_delay(Duration::ZERO);

    // Every request carried the attributes the other tests filter on.
    assert!(
        server
            .wait_for_requests(Duration::from_secs(5), |rs| rs
                .iter()
                .any(|r| r.verb == "list" && r.resource == "awsiamroles"))
            .await
    );

    let addr = server.addr();
    assert_eq!(server.url(), format!("http://{addr}"));
    server.shutdown().await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener closed after shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_recorder_creates_then_patches_events() {
    use kube::runtime::events::{Event as RecorderEvent, EventType, Recorder, Reporter};

    let server = ApiServer::builder()
        .object(role("team-a", "app"))
        .start()
        .await;
    let client = kubeconfig_client(&server).await;
    let role = Api::<AWSIAMRole>::namespaced(client.clone(), "team-a")
        .get("app")
        .await
        .unwrap();
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "kube-aws-iam-controller".into(),
            instance: None,
        },
    );
    let event = RecorderEvent {
        type_: EventType::Normal,
        reason: "CreateCredentials".into(),
        note: Some("credentials written".into()),
        action: "Create".into(),
        secondary: None,
    };
    let reference = role.object_ref(&());
    recorder.publish(&event, &reference).await.unwrap();
    recorder.publish(&event, &reference).await.unwrap();

    let events = Api::<Event>::namespaced(server.client(), "team-a")
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(events.items.len(), 1, "the repeat became a series");
    assert_eq!(events.items[0].series.as_ref().map(|s| s.count), Some(2));
    let verbs: Vec<String> = server
        .requests()
        .into_iter()
        .filter(|r| r.resource == "events")
        .map(|r| format!("{} {}", r.verb, r.group))
        .collect();
    assert_eq!(verbs, vec!["create events.k8s.io", "patch events.k8s.io"]);
    assert_eq!(server.write_count(), 0, "events are not counted as writes");
    assert_eq!(server.write_count_for("events"), 2);
}
