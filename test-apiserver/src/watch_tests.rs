//! Watches driven by kube's own clients: `kube::runtime::watcher` and `Api::watch`.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::pin::Pin;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Resource as _, ResourceExt as _};
use kube_aws_iam_controller::domain::crd::{AWSIAMRole, AWSIAMRoleSpec};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::ApiServer;

/// Longest wait for anything the server should do promptly.
const DEADLINE: Duration = Duration::from_secs(20);

/// The next item of `stream`.
async fn poll_item<S>(stream: &mut S) -> Option<S::Item>
where
    S: WatchStreamExt + Unpin,
{
    std::future::poll_fn(|cx| Pin::new(&mut *stream).poll_next(cx)).await
}

/// The next item of `stream`, failing the test when none comes before [`DEADLINE`].
async fn next<S>(stream: &mut S) -> Option<S::Item>
where
    S: WatchStreamExt + Unpin,
{
    tokio::time::timeout(DEADLINE, poll_item(stream))
        .await
        .expect("the stream yields before the deadline")
}

/// kube's watcher, polled by a task of its own (it opens its watch only when polled after
/// InitDone, as a controller's would be); its events arrive on `events`.
struct Watching<K> {
    events: mpsc::UnboundedReceiver<watcher::Result<Event<K>>>,
    task: tokio::task::JoinHandle<()>,
}

impl<K> Drop for Watching<K> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn spawn_watcher<K>(api: Api<K>, config: watcher::Config) -> Watching<K>
where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let (tx, events) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut stream = Box::pin(watcher::watcher(api, config));
        while let Some(event) = poll_item(&mut stream).await {
            if tx.send(event).is_err() {
                return;
            }
        }
    });
    Watching { events, task }
}

impl<K: Debug> Watching<K> {
    /// Reads events until one satisfies `pred` (failing the test after [`DEADLINE`]);
    /// returns all read, that one last.
    async fn until(
        &mut self,
        mut pred: impl FnMut(&watcher::Result<Event<K>>) -> bool,
    ) -> Vec<watcher::Result<Event<K>>> {
        let mut seen = Vec::new();
        loop {
            let event = tokio::time::timeout(DEADLINE, self.events.recv()).await;
            let event = match event {
                Ok(Some(event)) => event,
                Ok(None) => panic!("the watcher stream ended after {seen:?}"),
                Err(_) => panic!("no awaited event before the deadline; seen {seen:?}"),
            };
            let done = pred(&event);
            seen.push(event);
            if done {
                return seen;
            }
        }
    }
}

fn is_init_done<K>(e: &watcher::Result<Event<K>>) -> bool {
    matches!(e, Ok(Event::InitDone))
}

/// A client whose requests are recorded, counted and faulted (unlike `ApiServer::client`'s).
fn plain_client(server: &ApiServer) -> kube::Client {
    let config = kube::Config::new(server.url().parse().expect("URL"));
    kube::Client::try_from(config).expect("client builds")
}

fn role(ns: &str, name: &str) -> AWSIAMRole {
    let mut role = AWSIAMRole::new(
        name,
        AWSIAMRoleSpec {
            role_reference: format!("role-{name}"),
            role_session_duration: None,
        },
    );
    role.metadata.namespace = Some(ns.into());
    role
}

fn secret(ns: &str, name: &str, labels: &[(&str, &str)]) -> Secret {
    let labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        ..Secret::default()
    }
}

fn rv<K: kube::Resource>(obj: &K) -> u64 {
    obj.resource_version()
        .expect("a resourceVersion")
        .parse()
        .expect("a numeric resourceVersion")
}

/// The raw newline-delimited events of a watch that ends by its `timeoutSeconds`.
async fn raw_watch(server: &ApiServer, path_and_query: &str) -> Vec<Value> {
    let request = http::Request::get(path_and_query)
        .body(Vec::new())
        .expect("request");
    let text = tokio::time::timeout(DEADLINE, plain_client(server).request_text(request))
        .await
        .expect("the watch ends by its timeoutSeconds")
        .expect("the watch answers");
    text.lines()
        .map(|line| serde_json::from_str(line).expect("each line is JSON"))
        .collect()
}

fn types(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e["type"].as_str().unwrap_or(""))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_lists_then_follows_creates_updates_status_and_deletes() {
    let server = ApiServer::builder()
        .objects([role("team", "a"), role("team", "b")])
        .object(secret("team", "unrelated", &[]))
        .start()
        .await;
    let roles: Api<AWSIAMRole> = Api::all(plain_client(&server));
    let mut stream = spawn_watcher(roles, watcher::Config::default());

    let initial = stream.until(is_init_done).await;
    let mut listed: Vec<String> = initial
        .iter()
        .filter_map(|e| match e {
            Ok(Event::InitApply(r)) => Some(r.name_any()),
            _ => None,
        })
        .collect();
    listed.sort();
    assert_eq!(listed, ["a", "b"], "{initial:?}");
    assert!(matches!(initial[0], Ok(Event::Init)));
    assert!(server.wait_for_watches(DEADLINE, |n| n == 1).await);
    // The request is recorded once its answer has started, just after the watch registered.
    let recorded = server
        .wait_for_requests(DEADLINE, |r| r.iter().any(|r| r.verb == "watch"))
        .await;
    assert!(recorded, "the watch is recorded when it starts");
    let recorded = server.requests();
    let watch = recorded
        .iter()
        .find(|r| r.verb == "watch")
        .expect("the watch is recorded when it starts");
    assert_eq!(
        (watch.status, watch.resource.as_str()),
        (200, "awsiamroles")
    );

    let api: Api<AWSIAMRole> = Api::namespaced(server.client(), "team");
    let created = api
        .create(&PostParams::default(), &role("team", "c"))
        .await
        .unwrap();
    let events = stream
        .until(|e| matches!(e, Ok(Event::Apply(r)) if r.name_any() == "c"))
        .await;
    let Some(Ok(Event::Apply(seen))) = events.last() else {
        unreachable!()
    };
    assert_eq!(rv(seen), rv(&created));
    assert_eq!(events.len(), 1, "nothing else changed: {events:?}");

    let patch = json!({"spec": {"roleSessionDuration": 7200}});
    let patched = api
        .patch("c", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let events = stream.until(|e| matches!(e, Ok(Event::Apply(_)))).await;
    let Some(Ok(Event::Apply(seen))) = events.last() else {
        unreachable!()
    };
    assert_eq!(seen.spec.role_session_duration, Some(7200));
    assert_eq!(rv(seen), rv(&patched));

    let status = json!({"status": {"roleARN": "arn:aws:iam::1:role/c"}});
    let with_status = api
        .patch_status("c", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    let events = stream.until(|e| matches!(e, Ok(Event::Apply(_)))).await;
    let Some(Ok(Event::Apply(seen))) = events.last() else {
        unreachable!()
    };
    let arn = seen.status.as_ref().and_then(|s| s.role_arn.as_deref());
    assert_eq!(arn, Some("arn:aws:iam::1:role/c"));
    assert_eq!(seen.spec.role_session_duration, Some(7200));
    assert_eq!(rv(seen), rv(&with_status));

    api.delete("c", &DeleteParams::default()).await.unwrap();
    let events = stream.until(|e| matches!(e, Ok(Event::Delete(_)))).await;
    let Some(Ok(Event::Delete(gone))) = events.last() else {
        unreachable!()
    };
    assert_eq!(gone.name_any(), "c");
    // The last state, with a resourceVersion of its own.
    assert_eq!(gone.spec.role_session_duration, Some(7200));
    assert!(rv(gone) > rv(&with_status));
    assert_eq!(rv(gone), server.resource_version());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_from_the_lists_version_neither_misses_nor_repeats() {
    let server = ApiServer::builder()
        .objects([role("team", "seeded-1"), role("other", "seeded-2")])
        .start()
        .await;
    let all: Api<AWSIAMRole> = Api::all(plain_client(&server));
    let list = all.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 2);
    let list_rv = list.metadata.resource_version.clone().unwrap();
    assert_eq!(list_rv, server.resource_version().to_string());

    let api: Api<AWSIAMRole> = Api::namespaced(server.client(), "team");
    api.create(&PostParams::default(), &role("team", "new"))
        .await
        .unwrap();
    api.delete("seeded-1", &DeleteParams::default())
        .await
        .unwrap();

    // From the list: only what changed after it, in order.
    let stream = all
        .watch(&WatchParams::default().timeout(1), &list_rv)
        .await
        .unwrap();
    let mut stream = std::pin::pin!(stream);
    let mut seen = Vec::new();
    while let Some(event) = next(&mut stream).await {
        match event.unwrap() {
            WatchEvent::Added(r) => seen.push(("ADDED", r.name_any(), rv(&r))),
            WatchEvent::Modified(r) => seen.push(("MODIFIED", r.name_any(), rv(&r))),
            WatchEvent::Deleted(r) => seen.push(("DELETED", r.name_any(), rv(&r))),
            WatchEvent::Bookmark(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    let kinds: Vec<(&str, &str)> = seen.iter().map(|(t, n, _)| (*t, n.as_str())).collect();
    assert_eq!(kinds, [("ADDED", "new"), ("DELETED", "seeded-1")]);
    assert!(seen[0].2 > list_rv.parse().unwrap() && seen[1].2 > seen[0].2);

    // From "0": the current objects (sorted by namespace and name) as ADDED.
    let events = raw_watch(
        &server,
        "/apis/zalando.org/v1/awsiamroles?watch=true&timeoutSeconds=1",
    )
    .await;
    let names: Vec<(&str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap(),
                e["object"]["metadata"]["name"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(names, [("ADDED", "seeded-2"), ("ADDED", "new")]);

    // Namespaced: only that namespace.
    let team: Api<AWSIAMRole> = Api::namespaced(plain_client(&server), "team");
    let stream = team
        .watch(&WatchParams::default().timeout(1), "0")
        .await
        .unwrap();
    let mut stream = std::pin::pin!(stream);
    let mut names = Vec::new();
    while let Some(event) = next(&mut stream).await {
        if let WatchEvent::Added(r) = event.unwrap() {
            names.push(r.name_any());
        }
    }
    assert_eq!(names, ["new"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_selector_transitions_are_added_and_deleted() {
    let server = ApiServer::start().await;
    let secrets: Api<Secret> = Api::namespaced(server.client(), "ns");
    let from = server.resource_version().to_string();
    secrets
        .create(&PostParams::default(), &secret("ns", "s", &[("app", "x")]))
        .await
        .unwrap();
    secrets
        .create(
            &PostParams::default(),
            &secret("ns", "other", &[("app", "x")]),
        )
        .await
        .unwrap();
    let relabel = |app: &str| json!({"metadata": {"labels": {"app": app}}});
    for app in ["y", "z", "x"] {
        secrets
            .patch("s", &PatchParams::default(), &Patch::Merge(&relabel(app)))
            .await
            .unwrap();
    }
    secrets
        .patch(
            "s",
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"annotations": {"a": "b"}}})),
        )
        .await
        .unwrap();

    let events = raw_watch(
        &server,
        &format!(
            "/api/v1/namespaces/ns/secrets?watch=1&resourceVersion={from}&timeoutSeconds=1\
             &labelSelector=app%3Dx&fieldSelector=metadata.name%21%3Dother"
        ),
    )
    .await;
    assert_eq!(
        types(&events),
        ["ADDED", "DELETED", "ADDED", "MODIFIED"],
        "{events:#?}"
    );
    // Out of the selection: the former state (still selected) at the change's version.
    assert_eq!(events[1]["object"]["metadata"]["labels"]["app"], "x");
    let versions: Vec<u64> = events
        .iter()
        .map(|e| {
            e["object"]["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");

    // kube's watcher with the same selector.
    let api: Api<Secret> = Api::namespaced(plain_client(&server), "ns");
    let config = watcher::Config::default().labels("app=x");
    let mut stream = spawn_watcher(api, config);
    let initial = stream.until(is_init_done).await;
    assert_eq!(initial.len(), 4, "Init, two secrets, InitDone: {initial:?}");
    secrets
        .patch("s", &PatchParams::default(), &Patch::Merge(&relabel("y")))
        .await
        .unwrap();
    let events = stream.until(|e| matches!(e, Ok(Event::Delete(_)))).await;
    assert_eq!(events.len(), 1, "{events:?}");
    secrets
        .patch("s", &PatchParams::default(), &Patch::Merge(&relabel("x")))
        .await
        .unwrap();
    let events = stream.until(|e| matches!(e, Ok(Event::Apply(_)))).await;
    assert_eq!(events.len(), 1, "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_answers_410_and_the_watcher_lists_again() {
    // No periodic bookmark moves the watcher past the compaction.
    let server = ApiServer::builder()
        .bookmark_interval(Duration::from_secs(3600))
        .object(role("team", "a"))
        .start()
        .await;
    let old = server.resource_version();
    let secrets: Api<Secret> = Api::namespaced(server.client(), "team");
    secrets
        .create(&PostParams::default(), &secret("team", "s", &[]))
        .await
        .unwrap();

    // Still retained: the watch resumes.
    let events = raw_watch(
        &server,
        &format!("/api/v1/secrets?watch=true&resourceVersion={old}&timeoutSeconds=1"),
    )
    .await;
    assert_eq!(types(&events), ["ADDED"]);

    server.compact();
    let events = raw_watch(
        &server,
        &format!("/api/v1/secrets?watch=true&resourceVersion={old}&timeoutSeconds=30"),
    )
    .await;
    assert_eq!(types(&events), ["ERROR"]);
    let status = &events[0]["object"];
    assert_eq!(
        (status["kind"].as_str(), status["code"].as_u64()),
        (Some("Status"), Some(410))
    );
    assert_eq!(status["reason"], "Expired");
    let head = server.resource_version();
    assert_eq!(
        status["message"],
        format!("too old resource version: {old} ({head})")
    );

    // kube's watcher: its resourceVersion (from the list, before the Secret) is compacted by
    // the time its watch is broken and resumed; it lists again.
    let roles: Api<AWSIAMRole> = Api::all(plain_client(&server));
    let mut stream = spawn_watcher(roles, watcher::Config::default());
    stream.until(is_init_done).await;
    assert!(server.wait_for_watches(DEADLINE, |n| n == 1).await);
    secrets
        .create(&PostParams::default(), &secret("team", "t", &[]))
        .await
        .unwrap();
    server.compact();
    server.break_watches();
    let events = stream
        .until(|e| matches!(e, Err(watcher::Error::WatchError(s)) if s.code == 410))
        .await;
    assert!(events.len() <= 2, "{events:?}");
    let relisted = stream.until(is_init_done).await;
    assert!(matches!(relisted[0], Ok(Event::Init)), "{relisted:?}");
    assert_eq!(relisted.len(), 3, "Init, the role, InitDone: {relisted:?}");
    let lists = server
        .requests()
        .iter()
        .filter(|r| r.verb == "list" && r.resource == "awsiamroles")
        .count();
    assert_eq!(lists, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cascading_delete_is_seen_as_deleted_dependents() {
    let server = ApiServer::start().await;
    let roles: Api<AWSIAMRole> = Api::namespaced(server.client(), "team");
    let owner = roles
        .create(&PostParams::default(), &role("team", "app"))
        .await
        .unwrap();
    let mut owned = secret("team", "app", &[]);
    owned.metadata.owner_references = Some(vec![OwnerReference {
        api_version: AWSIAMRole::api_version(&()).into(),
        kind: AWSIAMRole::kind(&()).into(),
        name: "app".into(),
        uid: owner.uid().expect("a uid"),
        controller: Some(true),
        ..OwnerReference::default()
    }]);
    let secrets: Api<Secret> = Api::namespaced(server.client(), "team");
    secrets
        .create(&PostParams::default(), &owned)
        .await
        .unwrap();
    secrets
        .create(&PostParams::default(), &secret("team", "unowned", &[]))
        .await
        .unwrap();

    let watched: Api<Secret> = Api::all(plain_client(&server));
    let mut stream = spawn_watcher(watched, watcher::Config::default());
    stream.until(is_init_done).await;
    let before = server.resource_version();

    roles.delete("app", &DeleteParams::default()).await.unwrap();
    let events = stream.until(|e| matches!(e, Ok(Event::Delete(_)))).await;
    let Some(Ok(Event::Delete(gone))) = events.last() else {
        unreachable!()
    };
    assert_eq!(gone.name_any(), "app");
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(secrets.get_opt("app").await.unwrap().is_none());
    assert!(secrets.get_opt("unowned").await.unwrap().is_some());

    // The owner's deletion first, then its dependent's, each with its own version.
    let events = raw_watch(
        &server,
        &format!(
            "/apis/zalando.org/v1/awsiamroles?watch=true&resourceVersion={before}&timeoutSeconds=1"
        ),
    )
    .await;
    assert_eq!(types(&events), ["DELETED"]);
    let role_rv: u64 = events[0]["object"]["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(role_rv > before && rv(gone) > role_rv);

    // deletecollection: one DELETED per object removed.
    let from = server.resource_version();
    secrets
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await
        .unwrap();
    let events = raw_watch(
        &server,
        &format!("/api/v1/secrets?watch=true&resourceVersion={from}&timeoutSeconds=1"),
    )
    .await;
    assert_eq!(types(&events), ["DELETED"]);
    assert_eq!(events[0]["object"]["metadata"]["name"], "unowned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_stream_with_their_real_kind_and_bookmarks_follow_the_replay() {
    let mut team = Namespace::default();
    team.metadata.name = Some("team".into());
    let server = ApiServer::builder().object(team).start().await;
    let from = server.resource_version();
    let api: Api<Namespace> = Api::all(server.client());
    let mut extra = Namespace::default();
    extra.metadata.name = Some("extra".into());
    api.create(&PostParams::default(), &extra).await.unwrap();
    api.delete("extra", &DeleteParams::default()).await.unwrap();

    let events = raw_watch(
        &server,
        "/api/v1/namespaces?watch=true&resourceVersion=0&allowWatchBookmarks=true&timeoutSeconds=2",
    )
    .await;
    let head = server.resource_version().to_string();
    let kinds = types(&events);
    assert_eq!(kinds[..2], ["ADDED", "BOOKMARK"], "{events:#?}");
    assert!(kinds[2..].iter().all(|k| *k == "BOOKMARK"), "{kinds:?}");
    assert!(
        kinds.len() >= 3,
        "a periodic bookmark within 2 s: {kinds:?}"
    );
    assert_eq!(events[0]["object"]["apiVersion"], "v1");
    assert_eq!(events[0]["object"]["kind"], "Namespace");
    assert_eq!(events[0]["object"]["metadata"]["name"], "team");
    assert_eq!(
        events[1]["object"],
        json!({"kind": "Namespace", "apiVersion": "v1", "metadata": {"resourceVersion": head}})
    );

    // History, deletion included, under the real apiVersion.
    let events = raw_watch(
        &server,
        &format!("/api/v1/namespaces?watch=true&resourceVersion={from}&timeoutSeconds=1"),
    )
    .await;
    let seen: Vec<(&str, &str, &str)> = events
        .iter()
        .map(|e| {
            let o = &e["object"];
            (
                e["type"].as_str().unwrap(),
                o["apiVersion"].as_str().unwrap(),
                o["metadata"]["name"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(seen, [("ADDED", "v1", "extra"), ("DELETED", "v1", "extra")]);

    // The streaming-list strategy: initial events, then the bookmark marking their end.
    let api: Api<Namespace> = Api::all(plain_client(&server));
    let config = watcher::Config::default().streaming_lists();
    let mut stream = spawn_watcher(api, config);
    let initial = stream.until(is_init_done).await;
    let names: Vec<String> = initial
        .iter()
        .filter_map(|e| match e {
            Ok(Event::InitApply(ns)) => Some(ns.name_any()),
            _ => None,
        })
        .collect();
    assert_eq!(names, ["team"], "{initial:?}");
    assert!(
        !server.requests().iter().any(|r| r.verb == "list"),
        "no list with streaming lists"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_seconds_ends_the_stream_cleanly() {
    let server = ApiServer::start().await;
    let api: Api<Secret> = Api::all(plain_client(&server));
    let started = tokio::time::Instant::now();
    let stream = api
        .watch(&WatchParams::default().timeout(1), "0")
        .await
        .unwrap();
    let mut stream = std::pin::pin!(stream);
    assert!(server.wait_for_watches(DEADLINE, |n| n == 1).await);
    // No error: after the bookmark that follows the (empty) replay, the stream just ends.
    while let Some(event) = next(&mut stream).await {
        assert!(matches!(event, Ok(WatchEvent::Bookmark(_))), "{event:?}");
    }
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert!(server.wait_for_watches(DEADLINE, |n| n == 0).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_watches_drops_every_stream_and_the_watcher_resumes() {
    let server = ApiServer::start().await;
    let secrets: Api<Secret> = Api::namespaced(server.client(), "ns");
    let api: Api<Secret> = Api::all(plain_client(&server));
    let mut stream = spawn_watcher(api.clone(), watcher::Config::default());
    stream.until(is_init_done).await;
    let raw = api.watch(&WatchParams::default(), "0").await.unwrap();
    let mut raw = std::pin::pin!(raw);
    assert!(server.wait_for_watches(DEADLINE, |n| n == 2).await);

    server.break_watches();
    // The raw stream fails (or ends) instead of running to its timeout.
    loop {
        match next(&mut raw).await {
            None | Some(Err(_)) => break,
            Some(Ok(WatchEvent::Bookmark(_))) => {}
            Some(Ok(event)) => panic!("unexpected {event:?}"),
        }
    }
    // The watcher watches again from where it was, without listing.
    let resumed = server
        .wait_for_requests(DEADLINE, |r| {
            r.iter().filter(|r| r.verb == "watch").count() >= 3
        })
        .await;
    assert!(resumed);
    secrets
        .create(&PostParams::default(), &secret("ns", "after", &[]))
        .await
        .unwrap();
    let events = stream.until(|e| matches!(e, Ok(Event::Apply(_)))).await;
    let Some(Ok(Event::Apply(seen))) = events.last() else {
        unreachable!()
    };
    assert_eq!(seen.name_any(), "after");
    assert!(
        events[..events.len() - 1].iter().all(Result::is_err),
        "{events:?}"
    );
    let lists = server
        .requests()
        .iter()
        .filter(|r| r.verb == "list")
        .count();
    assert_eq!(lists, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_watches_answers_500_until_turned_off() {
    let server = ApiServer::start().await;
    let api: Api<Secret> = Api::all(plain_client(&server));
    server.fail_watches("secrets", true);
    // kube reads the Status of a failed watch as the stream's first item.
    let refused = match api.watch(&WatchParams::default(), "0").await {
        Ok(stream) => next(&mut std::pin::pin!(stream)).await.expect("an item"),
        Err(e) => Err(e),
    };
    match refused {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 500),
        other => panic!("expected a 500 Status, got {other:?}"),
    }
    let last = server.requests().pop().expect("recorded");
    assert_eq!((last.verb.as_str(), last.status), ("watch", 500));
    // Other resources watch on.
    let roles: Api<AWSIAMRole> = Api::all(plain_client(&server));
    assert!(
        roles
            .watch(&WatchParams::default().timeout(1), "0")
            .await
            .is_ok()
    );
    server.fail_watches("secrets", false);
    assert!(
        api.watch(&WatchParams::default().timeout(1), "0")
            .await
            .is_ok()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_counts_bodies_sent_to_other_clients_only() {
    let server = ApiServer::builder()
        .objects([role("team", "a"), role("team", "b")])
        .start()
        .await;
    let test_api: Api<AWSIAMRole> = Api::all(server.client());
    test_api.list(&ListParams::default()).await.unwrap();
    assert_eq!(server.bytes_sent(), 0);

    let request = http::Request::get("/apis/zalando.org/v1/awsiamroles")
        .body(Vec::new())
        .unwrap();
    let text = plain_client(&server).request_text(request).await.unwrap();
    assert_eq!(server.bytes_sent(), text.len() as u64);

    server.reset_traffic();
    let events = raw_watch(
        &server,
        "/apis/zalando.org/v1/awsiamroles?watch=true&timeoutSeconds=1",
    )
    .await;
    assert_eq!(events.len(), 2);
    let streamed: usize = events.iter().map(|e| e.to_string().len() + 1).sum();
    assert_eq!(server.bytes_sent(), streamed as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_watch_parameters_are_refused() {
    let server = ApiServer::start().await;
    let client = plain_client(&server);
    for query in [
        "resourceVersion=abc",
        "labelSelector=a%20in%20(",
        "fieldSelector=metadata.name",
        "timeoutSeconds=x",
        "sendInitialEvents=true&allowWatchBookmarks=true",
        "sendInitialEvents=true&resourceVersionMatch=NotOlderThan",
    ] {
        let request = http::Request::get(format!("/api/v1/secrets?watch=true&{query}"))
            .body(Vec::new())
            .unwrap();
        let answer = client.request_text(request).await;
        match answer {
            Err(kube::Error::Api(s)) => assert!(s.code == 400 || s.code == 422, "{query}: {s:?}"),
            other => panic!("{query}: expected a refusal, got {other:?}"),
        }
    }
    let request = http::Request::get("/apis/nothing.example/v1/things?watch=true")
        .body(Vec::new())
        .unwrap();
    match client.request_text(request).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 404),
        other => panic!("expected 404, got {other:?}"),
    }
}

/// Raw HTTP/1.1 on a socket: what a broken watch and a finished one look like on the wire.
struct RawConnection(tokio::net::TcpStream);

impl RawConnection {
    async fn get(server: &ApiServer, path_and_query: &str) -> RawConnection {
        let stream = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
        let request = format!("GET {path_and_query} HTTP/1.1\r\nHost: apiserver\r\n\r\n");
        let mut sent = 0;
        while sent < request.len() {
            stream.writable().await.unwrap();
            match stream.try_write(&request.as_bytes()[sent..]) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("writing the request: {e}"),
            }
        }
        RawConnection(stream)
    }

    /// Reads until `done` holds for all read so far, or the peer closes (then `closed`).
    async fn read_until(&self, buf: &mut Vec<u8>, done: impl Fn(&[u8]) -> bool) -> bool {
        let read = async {
            let mut chunk = [0u8; 16 * 1024];
            loop {
                if done(buf) {
                    return false;
                }
                self.0.readable().await.unwrap();
                match self.0.try_read(&mut chunk) {
                    Ok(0) => return true,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    // A reset is a close too.
                    Err(_) => return true,
                }
            }
        };
        tokio::time::timeout(DEADLINE, read)
            .await
            .expect("read before the deadline")
    }
}

fn ends_with(suffix: &'static [u8]) -> impl Fn(&[u8]) -> bool {
    move |buf| buf.ends_with(suffix)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_wire_a_timeout_ends_the_chunked_body_and_a_break_cuts_it() {
    let server = ApiServer::start().await;
    let path = "/api/v1/secrets?watch=true&allowWatchBookmarks=true";

    let finished = RawConnection::get(&server, &format!("{path}&timeoutSeconds=1")).await;
    let mut buf = Vec::new();
    let closed = finished
        .read_until(&mut buf, ends_with(b"\r\n0\r\n\r\n"))
        .await;
    let text = String::from_utf8_lossy(&buf).to_lowercase();
    assert!(
        !closed,
        "the connection stays open after the last chunk: {text}"
    );
    assert!(text.starts_with("http/1.1 200 ok\r\n"), "{text}");
    assert!(text.contains("transfer-encoding: chunked"), "{text}");
    assert!(text.contains("content-type: application/json"), "{text}");
    assert!(text.contains("\"type\":\"bookmark\""), "{text}");

    let broken = RawConnection::get(&server, &format!("{path}&timeoutSeconds=60")).await;
    let mut buf = Vec::new();
    broken
        .read_until(&mut buf, |b| b.ends_with(b"}\n\r\n"))
        .await;
    assert!(server.wait_for_watches(DEADLINE, |n| n == 1).await);
    server.break_watches();
    let closed = broken.read_until(&mut buf, |_| false).await;
    assert!(closed);
    assert!(!buf.ends_with(b"0\r\n\r\n"), "no last chunk: {buf:?}");
    assert!(server.wait_for_watches(DEADLINE, |n| n == 0).await);

    // A client that goes away is noticed (at the latest by the next bookmark).
    let gone = RawConnection::get(&server, &format!("{path}&timeoutSeconds=60")).await;
    assert!(server.wait_for_watches(DEADLINE, |n| n == 1).await);
    drop(gone);
    assert!(server.wait_for_watches(DEADLINE, |n| n == 0).await);
}
