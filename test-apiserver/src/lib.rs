//! A loopback HTTP Kubernetes API server for tests.
//!
//! It serves the in-memory API of `kube-fake-client` on `127.0.0.1:<free port>`, so the compiled
//! controller, `kubectl` and any `kube::Client` reach it through an ordinary kubeconfig. Every
//! API request is forwarded to the fake `kube::Client` with `Client::send`; around that the server
//! adds what the fake lacks and corrects what would make it lie:
//!
//! - discovery (`/version`, `/api`, `/apis`, group versions) for the kinds the controller uses;
//! - real paging: the fake cuts a list at `limit`, never returns a `continue` token and lists in
//!   random order. Here every list is sorted by (namespace, name) and paged from a snapshot taken
//!   by its first page (like the real server, a paged list is consistent); tokens are opaque;
//! - label selectors as the real server reads them (the fake does not decode `+` as a space, so
//!   `key in (a,b)` or `key notin (a)` matched nothing);
//! - Namespaces (the fake's path parser cannot address `/api/v1/namespaces[/NAME]`; they are stored
//!   under an alias resource and served at the real paths);
//! - delete preconditions (uid, resourceVersion) and `metadata.uid` preconditions on update and
//!   patch, which the fake ignores (writes through the server are serialised, so the check and
//!   the write are atomic);
//! - status-subresource semantics the fake skips: `status` is dropped on create, a status update
//!   or merge patch changes only `status` (and reads `metadata.resourceVersion` as precondition);
//! - `generateName`, Secret `stringData` folded into `data`, Secret key validation, body/URL
//!   name, namespace and kind mismatches (400), and server-set metadata stripped on create;
//! - `dryRun` is refused with 400 (the fake would perform the write);
//! - Tables for `kubectl get` (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`, on get
//!   and list; `includeObject`, `noHeaders`): a custom resource is printed by the
//!   `additionalPrinterColumns` of its CustomResourceDefinition as stored
//!   (`apiextensions.k8s.io/v1` CRDs can be created and are served), or, while none is stored,
//!   of the AWSIAMRole CRD this server is built with; Secrets and Namespaces by the real
//!   server's printers, anything else by the generic `Name`, `Created At` (Events too, which a
//!   real server prints with their own columns). Watches are never Tables;
//! - core/v1 Events (`get`, `list`, what `kubectl describe` reads with `involvedObject.*` field
//!   selectors) as a read-only view of the events.k8s.io/v1 Events the controller writes, as
//!   the real server stores one object for both APIs; core/v1 writes and watches answer 405;
//! - watches, which the fake has not at all (see below).
//!
//! # Watches
//!
//! `GET <collection>?watch=true` (or `watch=1`), cluster-wide or in a namespace, for every
//! resource the fake stores (Namespaces with their real apiVersion, kind and paths), answers
//! like a real API server: `200`, `Content-Type: application/json`, a chunked stream of
//! newline-delimited `{"type":"ADDED|MODIFIED|DELETED|BOOKMARK|ERROR","object":{…}}`.
//!
//! - `resourceVersion=N`: every change newer than N, in resourceVersion order, then the live
//!   changes. Absent or `"0"`: synthetic ADDED events for the current objects first (sorted by
//!   namespace and name), then the live changes. `sendInitialEvents=true` (with
//!   `resourceVersionMatch=NotOlderThan` and `allowWatchBookmarks=true`) also sends the
//!   current objects, then a BOOKMARK annotated `k8s.io/initial-events-end: "true"`.
//! - A resourceVersion older than the retained history (the last 10,000 changes by default,
//!   [`ApiServerBuilder::watch_history`]; [`ApiServer::compact`] drops it all) answers `200`
//!   with one ERROR event, a `Status` with `code: 410` and `reason: Expired`, and closes, as
//!   after an etcd compaction: kube-runtime's watcher then lists again.
//! - `labelSelector` (parsed as lists parse it) and `fieldSelector` (`field=value`,
//!   `field==value`, `field!=value` on any field path, e.g. `metadata.name`,
//!   `metadata.namespace`): an object modified into the selection is sent as ADDED, out of it
//!   as DELETED, as the real server does.
//! - `timeoutSeconds` ends the stream cleanly after that long (default 30 minutes).
//! - `allowWatchBookmarks=true`: a BOOKMARK (only `apiVersion`, `kind` and
//!   `metadata.resourceVersion`) once the replay is sent, then every
//!   [`ApiServerBuilder::bookmark_interval`] (1 s by default; about a minute on real servers).
//!
//! Every change is an event: creates, updates, patches, status writes, deletes and
//! deletecollections through the server (by anyone, [`ApiServer::client`] included), and the
//! deletions the fake makes in cascade (deleting an owner deletes the objects whose
//! ownerReferences name its uid). Each event carries the object as a GET returns it; a
//! DELETED event carries the object's last state with a new resourceVersion, drawn from the
//! fake's counter like every other one. Seeded objects exist before any watch: a watch from
//! a list's resourceVersion does not see them again, one from `"0"` lists them.
//!
//! Writes are serialised (`write_lock`) and each change is recorded under that lock right
//! after the fake performed it; a list reads the fake under the same lock and reports the
//! newest recorded resourceVersion, so a list followed by a watch from its resourceVersion
//! neither misses nor repeats a change. Live events reach each open watch through its own
//! channel (a write costs O(watches of its resource), never a list of the fake).
//!
//! Faults: [`ApiServer::break_watches`] drops every open stream mid-body (as a broken
//! connection), [`ApiServer::fail_watches`] answers new watches of a resource with 500, and
//! [`ApiServer::watch_count`] / [`ApiServer::wait_for_watches`] tell how many are open.
//!
//! Tests observe and steer it through [`ApiServer::requests`] (a watch is recorded with verb
//! `watch` and status 200 when its stream starts), the write counters, the traffic counter
//! ([`ApiServer::bytes_sent`]) and fault injection. Requests made through
//! [`ApiServer::client`] (seeding and inspecting state) are neither recorded nor delayed nor
//! failed nor counted as traffic.

use std::borrow::Cow;
mod table;
mod watch;
#[cfg(test)]
mod watch_tests;

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::hash::{BuildHasher as _, Hasher as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{CustomResourceExt as _, Resource};
use kube_aws_iam_controller::domain::crd::AWSIAMRole;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};

/// Header that marks requests of [`ApiServer::client`]: not recorded, delayed or failed.
const TEST_CLIENT_HEADER: &str = "x-apiserver-test-client";
/// Where Namespaces live inside the fake (its parser mistakes `/api/v1/namespaces/X` for a
/// namespaced path, so Namespaces cannot be stored at their real resource).
const NS_ALIAS_GROUP: &str = "namespaces.apiserver.test";
const NS_ALIAS_PLURAL: &str = "nsalias";
/// Paged-list snapshots kept at once; older ones expire (their tokens then answer 410).
const MAX_SNAPSHOTS: usize = 64;
const RESOURCE_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
];
const STATUS_VERBS: &[&str] = &["get", "patch", "update"];

type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A response body: whole, or a watch's stream.
type Body = UnsyncBoxBody<Bytes, BoxError>;

// ---------------------------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------------------------

/// One request as the server received it, with the Kubernetes request attributes parsed from
/// the path (as the API server's RequestInfo would).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordedRequest {
    /// HTTP method, e.g. `GET`.
    pub method: String,
    /// URL path, e.g. `/api/v1/namespaces/default/secrets`.
    pub path: String,
    /// Raw (still encoded) query string, `""` when there is none.
    pub query: String,
    /// Kubernetes verb: get, list, watch, create, update, patch, delete, deletecollection;
    /// `""` for non-resource requests (discovery, `/version`).
    pub verb: String,
    /// API group, `""` for the core group.
    pub group: String,
    pub version: String,
    /// Resource (plural), e.g. `secrets`, `awsiamroles`, `events`; `""` for non-resource requests.
    pub resource: String,
    /// Subresource, e.g. `status`.
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// HTTP status the server answered with.
    pub status: u16,
}

impl RecordedRequest {
    /// create, update, patch, delete or deletecollection.
    pub fn is_write(&self) -> bool {
        matches!(
            self.verb.as_str(),
            "create" | "update" | "patch" | "delete" | "deletecollection"
        )
    }

    /// A decoded query parameter, e.g. `param("limit")`.
    pub fn param(&self, key: &str) -> Option<String> {
        parse_query(&self.query)
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// Events (core or events.k8s.io) and the controller's leader Lease: bookkeeping, not a
    /// change to anything the controller manages, so neither counted nor failed as a write.
    fn is_bookkeeping(&self) -> bool {
        self.resource == "events"
            || (self.group == "coordination.k8s.io" && self.resource == "leases")
    }
}

/// Collects initial objects, then starts the server.
#[derive(Default)]
pub struct ApiServerBuilder {
    objects: Vec<Value>,
    bookmark_interval: Option<Duration>,
    watch_history: Option<usize>,
}

impl ApiServerBuilder {
    /// Seed one object (any kind the fake knows; Namespaces included).
    pub fn object<K: Resource + Serialize>(self, obj: K) -> Self {
        self.json(serde_json::to_value(&obj).expect("object serialises"))
    }

    /// Seed many objects.
    pub fn objects<K: Resource + Serialize>(self, objs: impl IntoIterator<Item = K>) -> Self {
        objs.into_iter().fold(self, Self::object)
    }

    /// Seed one object given as JSON (must carry `apiVersion` and `kind`).
    pub fn json(mut self, obj: Value) -> Self {
        self.objects.push(obj);
        self
    }

    /// How often watches with `allowWatchBookmarks=true` get a BOOKMARK (default 1 s).
    pub fn bookmark_interval(mut self, interval: Duration) -> Self {
        self.bookmark_interval = Some(interval);
        self
    }

    /// How many changes are kept for watches resuming from an older resourceVersion (default
    /// 10,000); a watch from before the oldest kept answers 410 Expired.
    pub fn watch_history(mut self, events: usize) -> Self {
        self.watch_history = Some(events);
        self
    }

    /// Build the fake with the seeded objects (stored as given, `status` included, like
    /// objects that existed before the test, except `metadata.resourceVersion`, which the
    /// server assigns) and serve it on a free loopback port.
    pub async fn start(self) -> ApiServer {
        let (namespaces, mut objects): (Vec<Value>, Vec<Value>) = self
            .objects
            .into_iter()
            .partition(|o| o["apiVersion"] == "v1" && o["kind"] == "Namespace");
        // ResourceVersions come from the fake's one counter, so that watches can order changes.
        for obj in &mut objects {
            if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.remove("resourceVersion");
            }
        }
        objects.push(watch::counter_object());
        let fake = kube_fake_client::ClientBuilder::new()
            .with_resource::<AWSIAMRole>()
            .with_status_subresource::<AWSIAMRole>()
            .with_resource::<NamespaceAlias>()
            .with_resource::<ResourceVersionCounter>()
            .with_runtime_objects(objects)
            .build()
            .await
            .expect("kube-fake-client builds with the seeded objects");

        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind a loopback port");
        let state = Arc::new(State {
            fake,
            addr: listener.local_addr().expect("bound address"),
            requests: Mutex::new(Vec::new()),
            recorded: Notify::new(),
            faults: Mutex::new(Faults::default()),
            snapshots: Mutex::new(Snapshots::default()),
            write_lock: tokio::sync::Mutex::new(()),
            hub: Mutex::new(watch::Hub::new(
                self.watch_history.unwrap_or(watch::DEFAULT_HISTORY),
            )),
            breaks: tokio::sync::watch::Sender::new(0),
            watches_changed: Notify::new(),
            bookmark_interval: self
                .bookmark_interval
                .unwrap_or(watch::DEFAULT_BOOKMARK_INTERVAL)
                .max(Duration::from_millis(1)),
            bytes_sent: AtomicU64::new(0),
        });
        {
            // The seeded objects are the state before history begins.
            let _serialised = state.write_lock.lock().await;
            let head = watch::next_rv(&state).await;
            for served in served_resources() {
                let info = RecordedRequest {
                    group: served.group.clone(),
                    version: served.version.clone(),
                    resource: served.doc["name"].as_str().unwrap_or("").to_string(),
                    ..RecordedRequest::default()
                };
                if let Err(response) = watch::load_locked(&state, &info).await {
                    panic!("mirroring {}: {}", info.resource, response.status());
                }
            }
            let mut hub = lock(&state.hub);
            hub.head_rv = hub.head_rv.max(head);
            hub.compact();
        }
        let task = tokio::spawn(serve(listener, Arc::clone(&state)));

        let url = format!("http://{}", state.addr);
        let mut config = kube::Config::new(url.parse().expect("loopback URL parses"));
        config.headers.push((
            http::HeaderName::from_static(TEST_CLIENT_HEADER),
            HeaderValue::from_static("1"),
        ));
        let client = kube::Client::try_from(config).expect("loopback client builds");
        let server = ApiServer {
            state,
            client,
            task: Some(task),
        };
        // Namespaces go through the server so they land in the alias store.
        let api: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(server.client());
        for mut ns in namespaces {
            if let Some(meta) = ns.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.remove("resourceVersion");
            }
            let ns = serde_json::from_value(ns).expect("a Namespace");
            api.create(&kube::api::PostParams::default(), &ns)
                .await
                .expect("seed Namespace");
        }
        server
    }
}

/// The running server. Dropping it (or [`ApiServer::shutdown`]) stops it.
pub struct ApiServer {
    state: Arc<State>,
    client: kube::Client,
    task: Option<JoinHandle<()>>,
}

impl ApiServer {
    /// A server over an empty fake.
    pub async fn start() -> ApiServer {
        Self::builder().start().await
    }

    /// A builder that seeds initial objects.
    pub fn builder() -> ApiServerBuilder {
        ApiServerBuilder::default()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.state.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.state.addr
    }

    /// A client for seeding and inspecting state. It talks to the loopback URL, so it sees what
    /// the controller sees (paging, Namespaces, preconditions), but its requests are not
    /// recorded, delayed or failed. Built with kube's defaults (it retries 429/503/504).
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// Writes `dir/kubeconfig` (cluster `http://127.0.0.1:PORT`, context `apiserver-test` with
    /// namespace `default`, a user without credentials) and returns its path. Usable with
    /// `kubectl --kubeconfig`, `KUBECONFIG` and `kube::Config::from_custom_kubeconfig`.
    pub fn write_kubeconfig(&self, dir: &Path) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1
kind: Config
clusters:
- name: apiserver-test
  cluster:
    server: {url}
contexts:
- name: apiserver-test
  context:
    cluster: apiserver-test
    user: apiserver-test
    namespace: default
current-context: apiserver-test
users:
- name: apiserver-test
  user: {{}}
preferences: {{}}
",
            url = self.url()
        );
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    /// Every recorded request, in order of completion.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.state.requests).clone()
    }

    pub fn clear_requests(&self) {
        lock(&self.state.requests).clear();
    }

    /// Recorded writes (create, update, patch, delete, deletecollection; attempts, whatever
    /// they answered), Events and the leader Lease excluded.
    pub fn write_count(&self) -> usize {
        self.count_writes(|r| !r.is_bookkeeping())
    }

    /// Recorded writes to one resource, subresources included: `"secrets"`, `"awsiamroles"`,
    /// `"events"`.
    pub fn write_count_for(&self, resource: &str) -> usize {
        self.count_writes(|r| r.resource == resource)
    }

    fn count_writes(&self, pred: impl Fn(&RecordedRequest) -> bool) -> usize {
        let requests = lock(&self.state.requests);
        requests.iter().filter(|r| r.is_write() && pred(r)).count()
    }

    /// Waits until `pred` holds for the recorded requests (re-checked on every new record),
    /// at most `timeout`. Returns whether it held.
    pub async fn wait_for_requests(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&[RecordedRequest]) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.state.recorded.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if pred(&lock(&self.state.requests)) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return pred(&lock(&self.state.requests));
            }
        }
    }

    /// The `n`-th write from now on (1-based; Events, the leader Lease and [`Self::client`]
    /// requests not counted) answers `status_code` with a Kubernetes Status body and is not
    /// performed.
    pub fn fail_nth_write(&self, n: u64, status_code: u16) {
        assert!(n >= 1, "fail_nth_write counts from 1");
        lock(&self.state.faults).nth_writes.push((n, status_code));
    }

    /// While on, every write to `resource` (e.g. `"events"`, `"secrets"`) answers `status_code`.
    pub fn fail_writes(&self, resource: &str, status_code: Option<u16>) {
        self.set_fault("write", resource, status_code.map(|c| (c, false)));
    }

    /// Like [`Self::fail_writes`], with the request body quoted in the message, as some
    /// admission webhooks and API servers do; the quoted bodies are kept for
    /// [`Self::echoed_bodies`]. The last of the two calls for a resource decides.
    pub fn echo_writes(&self, resource: &str, status_code: Option<u16>) {
        self.set_fault("write", resource, status_code.map(|c| (c, true)));
    }

    /// The request bodies [`Self::echo_writes`] quoted back, oldest first.
    pub fn echoed_bodies(&self) -> Vec<Bytes> {
        lock(&self.state.faults).echoed.clone()
    }

    /// While on, list requests for `resource` (first pages and continuations) answer 500.
    pub fn fail_lists(&self, resource: &str, on: bool) {
        self.set_fault("list", resource, on.then_some((500, false)));
    }

    fn set_fault(&self, kind: &'static str, resource: &str, answer: Option<(u16, bool)>) {
        let by_resource = &mut lock(&self.state.faults).by_resource;
        let key = (kind, resource.to_string());
        match answer {
            Some(answer) => by_resource.insert(key, answer),
            None => by_resource.remove(&key),
        };
    }

    /// The next list request carrying a `continue` token answers 410 Gone (`reason: Expired`),
    /// as when etcd compacted the snapshot; that token stays expired.
    pub fn fail_continue_with_410(&self) {
        lock(&self.state.faults).continue_410 = true;
    }

    /// Delays every response by `delay` (after the request took effect). `Duration::ZERO` ends it.
    pub fn set_delay(&self, delay: Duration) {
        lock(&self.state.faults).delay = delay;
    }

    /// While on, new watch requests for `resource` answer 500 (open watches go on).
    pub fn fail_watches(&self, resource: &str, on: bool) {
        self.set_fault("watch", resource, on.then_some((500, false)));
    }

    /// Drops the whole watch history, as an etcd compaction: a watch from an older
    /// resourceVersion than the current one answers 410 Expired (open watches go on).
    pub fn compact(&self) {
        lock(&self.state.hub).compact();
    }

    /// Ends every open watch stream at once, mid-body, as a dropped connection: the client
    /// reads an error (kube's watcher then watches again from its last resourceVersion).
    pub fn break_watches(&self) {
        self.state.breaks.send_modify(|n| *n += 1);
    }

    /// Watch streams open now.
    pub fn watch_count(&self) -> usize {
        lock(&self.state.hub).watch_count()
    }

    /// Waits until `pred` holds for the number of open watch streams (re-checked whenever one
    /// opens or ends), at most `timeout`. Returns whether it held.
    pub async fn wait_for_watches(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(usize) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.state.watches_changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if pred(self.watch_count()) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return pred(self.watch_count());
            }
        }
    }

    /// The resourceVersion of the newest change (what a list now reports).
    pub fn resource_version(&self) -> u64 {
        lock(&self.state.hub).head_rv
    }

    /// Response body bytes sent so far to clients other than [`Self::client`] (watch streams
    /// counted as they are sent), since the start or [`Self::reset_traffic`].
    pub fn bytes_sent(&self) -> u64 {
        self.state.bytes_sent.load(Ordering::Relaxed)
    }

    /// Restarts [`Self::bytes_sent`] from zero.
    pub fn reset_traffic(&self) {
        self.state.bytes_sent.store(0, Ordering::Relaxed);
    }

    /// Stops accepting and closes every connection; returns once the listener is closed.
    pub async fn shutdown(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------------

struct State {
    fake: kube::Client,
    addr: SocketAddr,
    requests: Mutex<Vec<RecordedRequest>>,
    recorded: Notify,
    faults: Mutex<Faults>,
    snapshots: Mutex<Snapshots>,
    /// Serialises writes, so that a precondition check and its write are atomic, and so that
    /// each change is recorded for watches before the next one; lists read under it too.
    write_lock: tokio::sync::Mutex<()>,
    /// The mirror of the stored objects, the watch history and the open watches.
    hub: Mutex<watch::Hub>,
    /// Bumped by [`ApiServer::break_watches`].
    breaks: tokio::sync::watch::Sender<u64>,
    /// Notified when a watch opens or ends.
    watches_changed: Notify,
    bookmark_interval: Duration,
    /// Response body bytes sent to clients other than the test client.
    bytes_sent: AtomicU64,
}

#[derive(Default)]
struct Faults {
    delay: Duration,
    /// (writes left until the failing one, status code).
    nth_writes: Vec<(u64, u16)>,
    /// ("list" or "write", resource) → (status code, whether the message quotes the body).
    by_resource: HashMap<(&'static str, String), (u16, bool)>,
    echoed: Vec<Bytes>,
    continue_410: bool,
}

#[derive(Default)]
struct Snapshots {
    next_id: u64,
    /// Oldest first.
    lists: VecDeque<(u64, Arc<Snapshot>)>,
}

/// The sorted result of a list's first page, from which its continuations are served.
struct Snapshot {
    identity: String,
    kind: Value,
    api_version: Value,
    resource_version: String,
    items: Vec<Value>,
    has_selector: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl State {
    fn record(&self, request: RecordedRequest) {
        lock(&self.requests).push(request);
        self.recorded.notify_waiters();
    }

    /// A fault configured for this request, if any.
    fn injected_fault(&self, info: &RecordedRequest, body: &Bytes) -> Option<Response<Body>> {
        let mut faults = lock(&self.faults);
        let kind = match info.verb.as_str() {
            "list" => "list",
            "watch" => "watch",
            _ if info.is_write() => "write",
            _ => return None,
        };
        if kind == "write" && !info.is_bookkeeping() {
            let mut fire = None;
            for (left, code) in faults.nth_writes.iter_mut() {
                *left -= 1;
                if *left == 0 && fire.is_none() {
                    fire = Some(*code);
                }
            }
            faults.nth_writes.retain(|(left, _)| *left > 0);
            if let Some(code) = fire {
                let message = "injected write failure (fail_nth_write)";
                return Some(status_response(code, message, info.details()));
            }
        }
        let (code, echo) = *faults.by_resource.get(&(kind, info.resource.clone()))?;
        let message = if echo {
            faults.echoed.push(body.clone());
            format!(
                "admission webhook \"echo.apiserver.test\" denied the request: {}",
                String::from_utf8_lossy(body)
            )
        } else {
            format!("injected {kind} failure for {}", info.resource)
        };
        let details = (kind == "write").then(|| info.details()).flatten();
        Some(status_response(code, &message, details))
    }
}

/// `prefix` and five random characters, from the alphabet the real server uses.
fn generated_name(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    // Every RandomState has fresh keys, so each hash is a new random number.
    let x = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let suffix: String = (0..5)
        .map(|i| ALPHABET[((x >> (i * 8)) % ALPHABET.len() as u64) as usize] as char)
        .collect();
    format!("{prefix}{suffix}")
}

/// `metadata.resourceVersion` as a number.
fn rv_of(obj: &Value) -> Option<u64> {
    obj["metadata"]["resourceVersion"].as_str()?.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// Serving
// ---------------------------------------------------------------------------------------------

async fn serve(listener: TcpListener, state: Arc<State>) {
    // Owned here so that aborting this task closes every connection too.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(stream, Arc::clone(&state)));
                }
                // Out of descriptors and the like: let connections finish before retrying.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve_connection(stream: TcpStream, state: Arc<State>) {
    let _ = stream.set_nodelay(true);
    let service = hyper::service::service_fn(move |req| handle(Arc::clone(&state), req));
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let from_test = parts.headers.contains_key(TEST_CLIENT_HEADER);
    let info = RecordedRequest::parse(&parts.method, parts.uri.path(), parts.uri.query());
    let response = match body.collect().await {
        Ok(body) => route(&state, &parts, &info, body.to_bytes(), from_test).await,
        Err(e) => status_response(400, &format!("reading the request body: {e}"), None),
    };
    let response = if from_test {
        response
    } else {
        let counted = Arc::clone(&state);
        response.map(move |body| {
            body.map_frame(move |frame| {
                if let Some(data) = frame.data_ref() {
                    counted
                        .bytes_sent
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                frame
            })
            .boxed_unsync()
        })
    };
    if !from_test {
        let delay = lock(&state.faults).delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        state.record(RecordedRequest {
            status: response.status().as_u16(),
            ..info
        });
    }
    Ok(response)
}

async fn route(
    state: &Arc<State>,
    parts: &http::request::Parts,
    info: &RecordedRequest,
    body: Bytes,
    from_test: bool,
) -> Response<Body> {
    if info.verb.is_empty() {
        if parts.method != Method::GET {
            return status_response(405, "the server does not allow this method", None);
        }
        return match discovery(state, parts.uri.path()) {
            Some(doc) => json_response(StatusCode::OK, &doc),
            None => status_response(
                404,
                "the server could not find the requested resource",
                None,
            ),
        };
    }
    if !from_test && let Some(fault) = state.injected_fault(info, &body) {
        return fault;
    }
    let query = parse_query(parts.uri.query().unwrap_or(""));
    if info.is_core_event() && !matches!(info.verb.as_str(), "get" | "list") {
        return status_response(
            405,
            "the test API server serves core/v1 Events for reading only: they are stored as \
             events.k8s.io/v1 Events, which take writes and watches",
            info.details(),
        );
    }
    let table = match info.verb.as_str() {
        "get" | "list" => match table::requested(parts.headers.get(http::header::ACCEPT), &query) {
            Ok(table) => table,
            Err(message) => return status_response(400, &message, None),
        },
        _ => None,
    };
    let response = match info.verb.as_str() {
        "list" => list(state, info, &query, from_test).await,
        "watch" => watch::watch(state, info, &query).await,
        "get" => {
            let mut fwd = forward(
                state,
                Method::GET,
                &info.storage(),
                &query,
                None,
                Bytes::new(),
            )
            .await;
            if info.is_core_event()
                && fwd.status.is_success()
                && let Some(event) = fwd.json()
            {
                fwd.body = Bytes::from(core_event(event).to_string());
            }
            fwd.into_response(info)
        }
        _ => write(state, parts, info, &query, body).await,
    };
    match table {
        Some(request) if response.status() == StatusCode::OK => {
            as_table(state, info, request, response).await
        }
        _ => response,
    }
}

// ---------------------------------------------------------------------------------------------
// Tables and core/v1 Events
// ---------------------------------------------------------------------------------------------

/// A successful get or list answered as the Table the client asked for instead.
async fn as_table(
    state: &State,
    info: &RecordedRequest,
    request: table::TableRequest,
    response: Response<Body>,
) -> Response<Body> {
    let body = match response.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => return status_response(500, &format!("reading the answer: {e}"), None),
    };
    let Ok(mut answer) = serde_json::from_slice::<Value>(&body) else {
        return status_response(500, "the answer to print is not JSON", None);
    };
    let printer = match printer_for(state, info).await {
        Ok(printer) => printer,
        Err(message) => return status_response(500, &message, None),
    };
    let (items, metadata) = match answer.get_mut("items").map(Value::take) {
        Some(Value::Array(items)) => (items, answer["metadata"].take()),
        _ => {
            let rv = answer["metadata"]["resourceVersion"].clone();
            (vec![answer], json!({"resourceVersion": rv}))
        }
    };
    let now = k8s_openapi::jiff::Timestamp::now();
    json_response(
        StatusCode::OK,
        &printer.table(request, &items, metadata, now),
    )
}

/// How a resource's rows are printed: a custom resource by the columns of its stored
/// CustomResourceDefinition (`<plural>.<group>`), or, while none is stored, of the AWSIAMRole
/// CRD this server is built with; other resources by their built-in printer.
async fn printer_for(state: &State, info: &RecordedRequest) -> Result<table::Printer, String> {
    if !info.group.is_empty() {
        let crd_request = RecordedRequest {
            verb: "get".into(),
            group: "apiextensions.k8s.io".into(),
            version: "v1".into(),
            resource: "customresourcedefinitions".into(),
            name: Some(format!("{}.{}", info.resource, info.group)),
            ..RecordedRequest::default()
        };
        let fwd = forward(state, Method::GET, &crd_request, &[], None, Bytes::new()).await;
        let stored = if fwd.status.is_success() {
            fwd.json()
        } else {
            None
        };
        let builtin = || {
            let crd = AWSIAMRole::crd();
            (crd.spec.group == info.group && crd.spec.names.plural == info.resource)
                .then(|| serde_json::to_value(crd).ok())
                .flatten()
        };
        if let Some(crd) = stored.or_else(builtin) {
            return table::Printer::for_crd(&crd, &info.version);
        }
    }
    Ok(table::Printer::builtin(&info.group, &info.resource))
}

/// An events.k8s.io/v1 Event as core/v1 shows it (the real server stores one object and
/// converts it for either API; the field names differ).
fn core_event(event: Value) -> Value {
    let Value::Object(mut from) = event else {
        return event;
    };
    let mut event = serde_json::Map::new();
    event.insert("apiVersion".into(), json!("v1"));
    event.insert("kind".into(), json!("Event"));
    for (from_key, to_key) in [
        ("metadata", "metadata"),
        ("regarding", "involvedObject"),
        ("related", "related"),
        ("reason", "reason"),
        ("note", "message"),
        ("type", "type"),
        ("action", "action"),
        ("eventTime", "eventTime"),
        ("series", "series"),
        ("reportingController", "reportingComponent"),
        ("reportingInstance", "reportingInstance"),
        ("deprecatedSource", "source"),
        ("deprecatedFirstTimestamp", "firstTimestamp"),
        ("deprecatedLastTimestamp", "lastTimestamp"),
        ("deprecatedCount", "count"),
    ] {
        if let Some(value) = from.remove(from_key).filter(|v| !v.is_null()) {
            event.insert(to_key.into(), value);
        }
    }
    Value::Object(event)
}

// ---------------------------------------------------------------------------------------------
// Forwarding to the fake
// ---------------------------------------------------------------------------------------------

struct Forwarded {
    status: StatusCode,
    body: Bytes,
}

impl Forwarded {
    fn status(code: u16, message: &str) -> Forwarded {
        Forwarded {
            status: StatusCode::from_u16(code).expect("valid status"),
            body: Bytes::from(status_body(code, message, None).to_string()),
        }
    }

    fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    fn into_response(self, info: &RecordedRequest) -> Response<Body> {
        if info.is_namespace() {
            // Hide the alias: error messages name it, lists carry its apiVersion.
            if let Some(mut v) = self.json() {
                fix_alias(&mut v);
                return json_response(self.status, &v);
            }
        }
        bytes_response(self.status, self.body)
    }
}

async fn forward(
    state: &State,
    method: Method,
    info: &RecordedRequest,
    query: &[(String, String)],
    content_type: Option<&HeaderValue>,
    body: Bytes,
) -> Forwarded {
    let mut uri = info.fake_path();
    if !query.is_empty() {
        uri.push('?');
        uri.push_str(&encode_query(query));
    }
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(ct) = content_type {
        request = request.header(http::header::CONTENT_TYPE, ct);
    } else if !body.is_empty() {
        request = request.header(http::header::CONTENT_TYPE, "application/json");
    }
    let request = match request.body(kube::client::Body::from(body)) {
        Ok(request) => request,
        Err(e) => return Forwarded::status(400, &format!("invalid request: {e}")),
    };
    match state.fake.send(request).await {
        Ok(response) => {
            let status = response.status();
            match response.into_body().collect().await {
                Ok(body) => {
                    let body = body.to_bytes();
                    Forwarded { status, body }
                }
                Err(e) => Forwarded::status(500, &format!("reading the fake's response: {e}")),
            }
        }
        // The fake answers requests it cannot parse with a service error, not a Status.
        Err(e) => {
            let message = e.to_string();
            if message.contains("Invalid path") {
                Forwarded::status(404, "the server could not find the requested resource")
            } else if message.contains("required for") {
                Forwarded::status(405, &message)
            } else {
                Forwarded::status(400, &message)
            }
        }
    }
}

async fn get_existing(state: &State, info: &RecordedRequest) -> Option<Value> {
    let mut get = info.clone();
    get.subresource = None;
    let fwd = forward(state, Method::GET, &get, &[], None, Bytes::new()).await;
    if fwd.status.is_success() {
        fwd.json()
    } else {
        None
    }
}

// ---------------------------------------------------------------------------------------------
// Lists and paging
// ---------------------------------------------------------------------------------------------

/// Marks this server's tokens, so a token of another server is told apart.
const TOKEN_PREFIX: &str = "apiserver.test/v1:";

/// An opaque `continue` token: the snapshot's id and where the next page starts.
fn encode_token(id: u64, start: usize) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{TOKEN_PREFIX}{id}:{start}"))
}

fn decode_token(token: &str) -> Option<(u64, usize)> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (id, start) = text.strip_prefix(TOKEN_PREFIX)?.split_once(':')?;
    Some((id.parse().ok()?, start.parse().ok()?))
}

async fn list(
    state: &State,
    info: &RecordedRequest,
    query: &[(String, String)],
    from_test: bool,
) -> Response<Body> {
    let param = |key: &str| {
        query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    let limit = match param("limit").filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => match s.parse::<usize>() {
            Ok(0) => None,
            Ok(n) => Some(n),
            Err(_) => return status_response(400, &format!("invalid limit {s:?}"), None),
        },
    };
    let (labels, fields) = (
        param("labelSelector").unwrap_or(""),
        param("fieldSelector").unwrap_or(""),
    );
    let identity = format!(
        "{}?labelSelector={labels}&fieldSelector={fields}",
        info.canonical_path()
    );

    if let Some(token) = param("continue").filter(|s| !s.is_empty()) {
        return continue_list(state, token, &identity, limit, from_test);
    }

    // The fake reads `field=value` only; field selectors are applied here, as watches do.
    let field_selector = match watch::FieldSelector::parse(fields) {
        Ok(selector) => selector,
        Err(e) => return status_response(400, &e, None),
    };
    // The fake must not cut the list; label selectors pass through, re-encoded so it reads
    // them.
    let forwarded: Vec<(String, String)> = query
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "limit" | "continue" | "fieldSelector"))
        .cloned()
        .collect();
    // Read under the write lock: every change the fake shows has been recorded for watches,
    // and none after `head` has, so a watch from the list's resourceVersion misses nothing.
    let source = info.storage();
    let (fwd, head) = {
        let _serialised = state.write_lock.lock().await;
        let _ = watch::load_locked(state, &source).await;
        let fwd = forward(state, Method::GET, &source, &forwarded, None, Bytes::new()).await;
        (fwd, lock(&state.hub).head_rv)
    };
    if !fwd.status.is_success() {
        return fwd.into_response(info);
    }
    let Some(mut list) = fwd.json() else {
        return status_response(500, "the fake answered a list that is not JSON", None);
    };
    if info.is_namespace() {
        fix_alias(&mut list);
    }
    let mut items = match list.get_mut("items").map(Value::take) {
        Some(Value::Array(items)) => items,
        _ => Vec::new(),
    };
    if info.is_core_event() {
        list["apiVersion"] = json!("v1");
        list["kind"] = json!("EventList");
        items = items.into_iter().map(core_event).collect();
    }
    if !field_selector.is_empty() {
        items.retain(|item| field_selector.matches_value(item));
    }
    items.sort_by_cached_key(sort_key);
    let item_rv = items.iter().filter_map(rv_of).max().unwrap_or(0);
    let rv = item_rv.max(head).max(1);
    let snapshot = Snapshot {
        identity,
        kind: list["kind"].take(),
        api_version: list["apiVersion"].take(),
        resource_version: rv.to_string(),
        items,
        has_selector: !labels.is_empty() || !fields.is_empty(),
    };
    let snapshot = Arc::new(snapshot);
    // Kept for its continuations only when it spans pages (id 0: served whole).
    let id = match limit {
        Some(limit) if snapshot.items.len() > limit => {
            let mut snapshots = lock(&state.snapshots);
            snapshots.next_id += 1;
            let id = snapshots.next_id;
            snapshots.lists.push_back((id, Arc::clone(&snapshot)));
            while snapshots.lists.len() > MAX_SNAPSHOTS {
                snapshots.lists.pop_front();
            }
            id
        }
        _ => 0,
    };
    page(state, id, &snapshot, 0, limit)
}

/// The next page of a list started earlier, from the snapshot its `continue` token names: 410
/// once that snapshot is gone (or the test asked for it to expire), 400 for a token of another
/// request.
fn continue_list(
    state: &State,
    token: &str,
    identity: &str,
    limit: Option<usize>,
    from_test: bool,
) -> Response<Body> {
    let Some((id, start)) = decode_token(token) else {
        return status_response(400, "continue key is not valid", None);
    };
    let expire = !from_test && std::mem::take(&mut lock(&state.faults).continue_410);
    let snapshot = {
        let mut snapshots = lock(&state.snapshots);
        if expire {
            snapshots.lists.retain(|(i, _)| *i != id);
        }
        snapshots
            .lists
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, s)| Arc::clone(s))
    };
    let Some(snapshot) = snapshot else {
        return status_response(
            410,
            "The provided continue parameter is too old to display a consistent list \
             result. You can start a new list without the continue parameter.",
            None,
        );
    };
    if snapshot.identity != identity {
        return status_response(
            400,
            "continue key is not valid: it belongs to another list request \
             (path or selectors differ)",
            None,
        );
    }
    page(state, id, &snapshot, start, limit)
}

fn page(
    state: &State,
    id: u64,
    snapshot: &Snapshot,
    start: usize,
    limit: Option<usize>,
) -> Response<Body> {
    let total = snapshot.items.len();
    let start = start.min(total);
    let end = limit.map_or(total, |l| start.saturating_add(l).min(total));
    let mut metadata = json!({"resourceVersion": snapshot.resource_version});
    if end < total {
        metadata["continue"] = json!(encode_token(id, end));
        // The real server cannot count what a selector would keep, so it leaves this out.
        if !snapshot.has_selector {
            metadata["remainingItemCount"] = json!(total - end);
        }
    } else {
        lock(&state.snapshots).lists.retain(|(i, _)| *i != id);
    }
    let list = json!({
        "kind": snapshot.kind,
        "apiVersion": snapshot.api_version,
        "metadata": metadata,
        "items": snapshot.items[start..end],
    });
    json_response(StatusCode::OK, &list)
}

fn sort_key(item: &Value) -> (String, String) {
    let meta = &item["metadata"];
    (
        meta["namespace"].as_str().unwrap_or("").to_string(),
        meta["name"].as_str().unwrap_or("").to_string(),
    )
}

// ---------------------------------------------------------------------------------------------
// Writes
// ---------------------------------------------------------------------------------------------

/// A request refused before it reaches the fake: the answer to send.
type Refused = Box<Response<Body>>;

fn refuse(code: u16, message: &str, details: Option<Value>) -> Refused {
    Box::new(status_response(code, message, details))
}

async fn write(
    state: &State,
    parts: &http::request::Parts,
    info: &RecordedRequest,
    query: &[(String, String)],
    body: Bytes,
) -> Response<Body> {
    let mut body_json: Option<Value> = if body.is_empty() {
        None
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => Some(v),
            Err(e) => {
                return status_response(400, &format!("the request body is not JSON: {e}"), None);
            }
        }
    };
    let dry_run_in_body = body_json
        .as_ref()
        .is_some_and(|b| b.get("dryRun").is_some_and(|d| d != &json!([])));
    if dry_run_in_body || query.iter().any(|(k, _)| k == "dryRun") {
        return status_response(
            400,
            "dryRun is not supported by the test API server (kube-fake-client would perform \
             the write)",
            None,
        );
    }
    let mut content_type = parts.headers.get(http::header::CONTENT_TYPE).cloned();
    let _serialised = state.write_lock.lock().await;
    // Mirrored before the change, so that its event knows the former state. A resource that
    // cannot be listed is not watchable either; the write goes on.
    let _ = watch::load_locked(state, info).await;
    let prepared = match info.verb.as_str() {
        "create" => prepare_create(info, body_json.as_mut()),
        "update" => prepare_update(state, info, body_json.as_mut()).await,
        "patch" => {
            let is_json_patch = content_type
                .as_ref()
                .and_then(|c| c.to_str().ok())
                .is_some_and(|c| c.contains("json-patch"));
            content_type.get_or_insert(HeaderValue::from_static(
                "application/strategic-merge-patch+json",
            ));
            match body_json.as_mut() {
                Some(patch) if patch.is_object() && !is_json_patch => {
                    prepare_patch(state, info, patch).await
                }
                _ => Ok(()),
            }
        }
        "delete" => match &body_json {
            Some(body) => check_preconditions(state, info, body).await,
            None => Ok(()),
        },
        _ => Ok(()),
    };
    if let Err(refused) = prepared {
        return *refused;
    }
    let body = match &body_json {
        Some(v) => Bytes::from(v.to_string()),
        None => body,
    };
    let method = parts.method.clone();
    let fwd = forward(state, method, info, query, content_type.as_ref(), body).await;
    watch::record_write(state, info, &fwd).await;
    fwd.into_response(info)
}

/// A create body as the API server would store it: server-set fields dropped, a name generated
/// from `generateName`, status reset where it is a subresource, a Secret's `stringData` folded.
fn prepare_create(info: &RecordedRequest, body: Option<&mut Value>) -> Result<(), Refused> {
    let Some(obj) = body.filter(|b| b.is_object()) else {
        return Err(refuse(400, "create needs an object body", None));
    };
    let resource = served_resource(&info.group, &info.resource);
    check_body(info, resource, obj, false)?;
    let Some(meta) = obj["metadata"].as_object_mut() else {
        return Err(refuse(422, "metadata is required", info.details()));
    };
    for server_set in [
        "uid",
        "creationTimestamp",
        "generation",
        "deletionTimestamp",
        "selfLink",
        "managedFields",
    ] {
        meta.remove(server_set);
    }
    if meta
        .get("name")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        match meta.get("generateName").and_then(Value::as_str) {
            Some(prefix) if !prefix.is_empty() => {
                let name = generated_name(prefix);
                meta.insert("name".into(), json!(name));
            }
            _ => {
                return Err(refuse(
                    422,
                    "metadata.name: Required value: name or generateName is required",
                    info.details(),
                ));
            }
        }
    }
    if resource.is_some_and(|r| r.status) {
        obj.as_object_mut().map(|o| o.remove("status"));
    }
    if info.is_namespace() {
        obj["apiVersion"] = json!("v1");
        obj["kind"] = json!("Namespace");
        if obj["status"]["phase"].is_null() {
            obj["status"] = json!({"phase": "Active"});
        }
    }
    fold_string_data(info, obj, true)
}

/// An update body checked against the URL and the stored object's preconditions; on the status
/// subresource, the stored object with only its status (and resourceVersion) taken from the body.
async fn prepare_update(
    state: &State,
    info: &RecordedRequest,
    body: Option<&mut Value>,
) -> Result<(), Refused> {
    let Some(obj) = body.filter(|b| b.is_object()) else {
        return Err(refuse(400, "update needs an object body", None));
    };
    check_body(
        info,
        served_resource(&info.group, &info.resource),
        obj,
        true,
    )?;
    check_preconditions(state, info, obj).await?;
    if info.subresource.as_deref() != Some("status") {
        return fold_string_data(info, obj, true);
    }
    // Without a stored object the fake answers (404) as it would.
    if let Some(mut existing) = get_existing(state, info).await {
        existing["status"] = obj.get("status").cloned().unwrap_or(Value::Null);
        if existing["status"].is_null() {
            existing.as_object_mut().map(|o| o.remove("status"));
        }
        if let Some(rv) = obj["metadata"].get("resourceVersion") {
            existing["metadata"]["resourceVersion"] = rv.clone();
        }
        *obj = existing;
    }
    Ok(())
}

/// A merge patch checked against the stored object's preconditions; on the status subresource
/// only its status counts, elsewhere a Secret's `stringData` is folded.
async fn prepare_patch(
    state: &State,
    info: &RecordedRequest,
    patch: &mut Value,
) -> Result<(), Refused> {
    check_preconditions(state, info, patch).await?;
    if info.subresource.as_deref() == Some("status") {
        retain_status_fields(patch);
        Ok(())
    } else {
        fold_string_data(info, patch, false)
    }
}

/// Name, namespace and kind of a create/update body must agree with the URL.
fn check_body(
    info: &RecordedRequest,
    resource: Option<&ServedResource>,
    obj: &Value,
    name_required: bool,
) -> Result<(), Refused> {
    let meta = &obj["metadata"];
    if let (Some(url_ns), Some(body_ns)) = (&info.namespace, meta["namespace"].as_str())
        && !body_ns.is_empty()
        && body_ns != url_ns
    {
        return Err(refuse(
            400,
            "the namespace of the provided object does not match the namespace sent on the request",
            None,
        ));
    }
    if let Some(url_name) = &info.name {
        let body_name = meta["name"].as_str().unwrap_or("");
        if (name_required || !body_name.is_empty()) && body_name != url_name {
            return Err(refuse(
                400,
                &format!(
                    "the name of the object ({body_name}) does not match the name on the URL ({url_name})"
                ),
                None,
            ));
        }
    }
    if let (Some(resource), Some(kind)) = (resource, obj["kind"].as_str())
        && kind != resource.kind()
    {
        return Err(refuse(
            400,
            &format!(
                "the kind of the object ({kind}) does not match the resource {} ({})",
                resource.doc["name"].as_str().unwrap_or(""),
                resource.kind()
            ),
            None,
        ));
    }
    Ok(())
}

/// Preconditions on the stored object, which the fake ignores: `uid` and `resourceVersion` of a
/// delete's `preconditions`, a non-empty `metadata.uid` in an update or patch body.
async fn check_preconditions(
    state: &State,
    info: &RecordedRequest,
    body: &Value,
) -> Result<(), Refused> {
    let pre = if info.verb == "delete" {
        body["preconditions"].clone()
    } else {
        json!({"uid": body["metadata"]["uid"].as_str().filter(|s| !s.is_empty())})
    };
    let fields = [("uid", "UID"), ("resourceVersion", "ResourceVersion")];
    if fields
        .iter()
        .all(|(field, _)| pre[field].as_str().is_none())
    {
        return Ok(());
    }
    let Some(existing) = get_existing(state, info).await else {
        return Ok(());
    };
    let failed = fields.into_iter().find_map(|(field, label)| {
        let want = pre[field].as_str()?;
        let have = existing["metadata"][field].as_str();
        (have != Some(want)).then(|| {
            refuse(
                409,
                &format!(
                    "Precondition failed: {label} in precondition: {want}, \
                     {label} in object meta: {}",
                    have.unwrap_or("")
                ),
                info.details(),
            )
        })
    });
    failed.map_or(Ok(()), Err)
}

/// A merge patch of the status subresource changes only `status`; `metadata.resourceVersion`
/// and `metadata.uid` stay as preconditions.
fn retain_status_fields(patch: &mut Value) {
    let Some(obj) = patch.as_object_mut() else {
        return;
    };
    obj.retain(|k, _| matches!(k.as_str(), "status" | "metadata" | "apiVersion" | "kind"));
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.retain(|k, _| matches!(k.as_str(), "resourceVersion" | "uid" | "name" | "namespace"));
    }
}

/// Secrets: validate keys and fold `stringData` into `data` (base64), as the API server does.
fn fold_string_data(info: &RecordedRequest, obj: &mut Value, whole: bool) -> Result<(), Refused> {
    if !(info.group.is_empty() && info.resource == "secrets") {
        return Ok(());
    }
    let string_data = obj
        .as_object_mut()
        .and_then(|o| o.remove("stringData"))
        .unwrap_or(Value::Null);
    let mut keys: Vec<String> = Vec::new();
    if whole && let Some(data) = obj["data"].as_object() {
        keys.extend(data.keys().cloned());
    }
    if let Some(sd) = string_data.as_object() {
        keys.extend(sd.keys().cloned());
        if !obj["data"].is_object() {
            obj["data"] = json!({});
        }
        for (k, v) in sd {
            let Some(s) = v.as_str() else {
                return Err(refuse(
                    400,
                    &format!("stringData[{k}] must be a string"),
                    info.details(),
                ));
            };
            obj["data"][k] = json!(base64::engine::general_purpose::STANDARD.encode(s));
        }
    }
    let bad = keys.iter().find(|k| {
        k.is_empty()
            || k.len() > 253
            || !k
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    });
    bad.map_or(Ok(()), |k| {
        Err(refuse(
            422,
            &format!(
                "Secret is invalid: data[{k}]: Invalid value: {k:?}: a valid config key must \
                 consist of alphanumeric characters, '-', '_' or '.'"
            ),
            info.details(),
        ))
    })
}

/// Rewrites what the Namespace alias leaks into a response.
fn fix_alias(v: &mut Value) {
    if let Some(api_version) = v.get_mut("apiVersion")
        && api_version
            .as_str()
            .is_some_and(|a| a.starts_with(NS_ALIAS_GROUP))
    {
        *api_version = json!("v1");
    }
    if let Some(message) = v.get_mut("message")
        && let Some(text) = message.as_str()
    {
        *message = json!(text.replace(NS_ALIAS_PLURAL, "namespaces"));
    }
}

// ---------------------------------------------------------------------------------------------
// Request attributes
// ---------------------------------------------------------------------------------------------

impl RecordedRequest {
    /// The request attributes of `method path?query` (`status` is set once it is answered).
    fn parse(method: &Method, path: &str, query: Option<&str>) -> RecordedRequest {
        let mut info = RecordedRequest {
            method: method.to_string(),
            path: path.to_string(),
            query: query.unwrap_or("").to_string(),
            ..RecordedRequest::default()
        };
        let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let rest = match parts.as_slice() {
            ["api", version, rest @ ..] => {
                info.version = version.to_string();
                rest
            }
            ["apis", group, version, rest @ ..] => {
                info.group = group.to_string();
                info.version = version.to_string();
                rest
            }
            _ => return info,
        };
        let (resource, tail) = match rest {
            [] => return info,
            // /namespaces/NS/RESOURCE[/NAME[/SUBRESOURCE]], except a Namespace's own subresources.
            ["namespaces", ns, resource, tail @ ..]
                if !(tail.is_empty() && matches!(*resource, "status" | "finalize")) =>
            {
                info.namespace = Some(ns.to_string());
                (resource, tail)
            }
            [resource, tail @ ..] => (resource, tail),
        };
        info.resource = resource.to_string();
        info.name = tail.first().map(|s| s.to_string());
        info.subresource = tail.get(1).map(|s| s.to_string());
        let watch = info.param("watch").is_some_and(|v| v == "true" || v == "1");
        info.verb = match (method.as_str(), info.name.is_some()) {
            ("GET", true) => "get",
            ("GET", false) if watch => "watch",
            ("GET", false) => "list",
            ("POST", _) => "create",
            ("PUT", _) => "update",
            ("PATCH", _) => "patch",
            ("DELETE", true) => "delete",
            ("DELETE", false) => "deletecollection",
            _ => "unknown",
        }
        .to_string();
        info
    }

    fn is_namespace(&self) -> bool {
        self.group.is_empty() && self.resource == "namespaces" && self.namespace.is_none()
    }

    /// core/v1 Events, served from the events.k8s.io/v1 store.
    fn is_core_event(&self) -> bool {
        self.group.is_empty() && self.resource == "events"
    }

    /// The request whose objects this one reads: itself, or for core/v1 Events the same
    /// collection or object in events.k8s.io/v1.
    fn storage(&self) -> RecordedRequest {
        if !self.is_core_event() {
            return self.clone();
        }
        RecordedRequest {
            group: "events.k8s.io".into(),
            version: "v1".into(),
            ..self.clone()
        }
    }

    fn canonical_path(&self) -> String {
        let mut path = if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        };
        if let Some(ns) = &self.namespace {
            path.push_str(&format!("/namespaces/{ns}"));
        }
        for part in [
            Some(&self.resource),
            self.name.as_ref(),
            self.subresource.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            path.push('/');
            path.push_str(part);
        }
        path
    }

    /// The path of this request inside the fake (Namespaces live under the alias).
    fn fake_path(&self) -> String {
        if !self.is_namespace() {
            return self.canonical_path();
        }
        RecordedRequest {
            group: NS_ALIAS_GROUP.to_string(),
            version: "v1".to_string(),
            resource: NS_ALIAS_PLURAL.to_string(),
            ..self.clone()
        }
        .canonical_path()
    }

    fn details(&self) -> Option<Value> {
        // Like the real server, `kind` here is the resource.
        Some(json!({
            "name": self.name.clone().unwrap_or_default(),
            "group": self.group,
            "kind": self.resource,
        }))
    }
}

// ---------------------------------------------------------------------------------------------
// Discovery
// ---------------------------------------------------------------------------------------------

/// A resource the server announces in discovery: its group/version, whether it has a status
/// subresource, and its `APIResource` document (`name`, `singularName`, `kind`, …).
struct ServedResource {
    group: String,
    version: String,
    status: bool,
    doc: Value,
}

impl ServedResource {
    fn kind(&self) -> &str {
        self.doc["kind"].as_str().unwrap_or("")
    }
}

fn served_resources() -> &'static [ServedResource] {
    static SERVED: OnceLock<Vec<ServedResource>> = OnceLock::new();
    SERVED.get_or_init(|| {
        let served = |api_version: &str, status: bool, mut doc: Value| {
            let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
            if let Some(doc) = doc.as_object_mut() {
                doc.retain(|_, v| !v.is_null() && v != &json!([]));
            }
            ServedResource {
                group: group.into(),
                version: version.into(),
                status,
                doc,
            }
        };
        let crd = AWSIAMRole::crd();
        let names = &crd.spec.names;
        vec![
            served(
                "v1",
                true,
                json!({"name": "namespaces", "singularName": "namespace", "namespaced": false,
                       "kind": "Namespace", "shortNames": ["ns"]}),
            ),
            served(
                "v1",
                false,
                json!({"name": "secrets", "singularName": "secret", "namespaced": true,
                       "kind": "Secret"}),
            ),
            served(
                "events.k8s.io/v1",
                false,
                json!({"name": "events", "singularName": "event", "namespaced": true,
                       "kind": "Event", "shortNames": ["ev"]}),
            ),
            served(
                "apiextensions.k8s.io/v1",
                true,
                json!({"name": "customresourcedefinitions",
                       "singularName": "customresourcedefinition", "namespaced": false,
                       "kind": "CustomResourceDefinition", "shortNames": ["crd", "crds"],
                       "categories": ["api-extensions"]}),
            ),
            served(
                &AWSIAMRole::api_version(&()),
                true,
                json!({
                    "name": names.plural,
                    "singularName": names.singular.clone()
                        .unwrap_or_else(|| names.kind.to_lowercase()),
                    "namespaced": crd.spec.scope == "Namespaced",
                    "kind": names.kind,
                    "shortNames": names.short_names,
                    "categories": names.categories,
                }),
            ),
        ]
    })
}

fn served_resource(group: &str, plural: &str) -> Option<&'static ServedResource> {
    served_resources()
        .iter()
        .find(|r| r.group == group && r.doc["name"] == plural)
}

fn discovery(state: &State, path: &str) -> Option<Value> {
    let mut groups: Vec<(&str, &str)> = served_resources()
        .iter()
        .filter(|r| !r.group.is_empty())
        .map(|r| (r.group.as_str(), r.version.as_str()))
        .collect();
    groups.sort();
    groups.dedup();
    let group_doc = |&(group, version): &(&str, &str)| {
        let gv = json!({"groupVersion": format!("{group}/{version}"), "version": version});
        json!({"name": group, "versions": [gv.clone()], "preferredVersion": gv})
    };
    let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match parts.as_slice() {
        ["version"] => Some(json!({
            "major": "1",
            "minor": "34",
            "gitVersion": "v1.34.0-apiserver-test",
            "gitCommit": "0000000000000000000000000000000000000000",
            "gitTreeState": "clean",
            "buildDate": "2025-01-01T00:00:00Z",
            "goVersion": "go1.24",
            "compiler": "gc",
            "platform": "linux/amd64",
        })),
        ["healthz" | "livez" | "readyz"] => Some(json!("ok")),
        ["api"] => Some(json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": state.addr.to_string()}
            ],
        })),
        ["apis"] => Some(json!({
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": groups.iter().map(group_doc).collect::<Vec<_>>(),
        })),
        ["apis", group] => groups.iter().find(|(g, _)| g == group).map(|g| {
            let mut doc = group_doc(g);
            doc["kind"] = json!("APIGroup");
            doc["apiVersion"] = json!("v1");
            doc
        }),
        ["api", version] => resource_list("", version),
        ["apis", group, version] => resource_list(group, version),
        _ => None,
    }
}

/// The `APIResourceList` of one group version: each resource, then its status subresource.
fn resource_list(group: &str, version: &str) -> Option<Value> {
    let mut list = Vec::new();
    for r in served_resources()
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let mut doc = r.doc.clone();
        doc["verbs"] = json!(RESOURCE_VERBS);
        list.push(doc);
        if r.status {
            list.push(json!({
                "name": format!("{}/status", r.doc["name"].as_str().unwrap_or("")),
                "singularName": "",
                "namespaced": r.doc["namespaced"],
                "kind": r.doc["kind"],
                "verbs": STATUS_VERBS,
            }));
        }
    }
    if (group, version) == ("", "v1") {
        // core/v1 Events: a read-only view of the events.k8s.io/v1 store.
        list.push(
            json!({"name": "events", "singularName": "event", "namespaced": true,
                         "kind": "Event", "shortNames": ["ev"], "verbs": ["get", "list"]}),
        );
    }
    if list.is_empty() {
        return None;
    }
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": format!("{group}/{version}").trim_start_matches('/'),
        "resources": list,
    }))
}

// ---------------------------------------------------------------------------------------------
// Responses, queries
// ---------------------------------------------------------------------------------------------

fn bytes_response(status: StatusCode, body: Bytes) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(
            Full::new(body)
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .expect("response builds")
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    bytes_response(status, Bytes::from(body.to_string()))
}

fn reason_for(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        409 => "Conflict",
        410 => "Expired",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "InternalError",
    }
}

fn status_body(code: u16, message: &str, details: Option<Value>) -> Value {
    let mut body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason_for(code),
        "code": code,
    });
    if let Some(details) = details {
        body["details"] = details;
    }
    body
}

/// A Kubernetes `Status` error response.
fn status_response(code: u16, message: &str, details: Option<Value>) -> Response<Body> {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, &status_body(code, message, details))
}

/// Decodes `application/x-www-form-urlencoded` pairs (`+` is a space, as Go and kube encode it).
fn parse_query(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect()
}

/// Encodes pairs with spaces as `%20`, which the fake reads (it does not read `+` as a space;
/// a literal `+` is encoded as `%2B`, so every `+` left is a space).
fn encode_query(pairs: &[(String, String)]) -> String {
    let encoded = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();
    encoded.replace('+', "%20")
}

// ---------------------------------------------------------------------------------------------
// Types registered with the fake
// ---------------------------------------------------------------------------------------------

/// Registers the hidden resource whose one object is updated to draw a resourceVersion (the
/// fake gives deletions none).
struct ResourceVersionCounter {
    metadata: ObjectMeta,
}

impl Resource for ResourceVersionCounter {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        watch::RV_COUNTER_KIND.into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        watch::RV_COUNTER_GROUP.into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        watch::RV_COUNTER_PLURAL.into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Registers the Namespace alias resource with the fake's registry.
struct NamespaceAlias {
    metadata: ObjectMeta,
}

impl Resource for NamespaceAlias {
    type DynamicType = ();
    type Scope = k8s_openapi::ClusterResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "Namespace".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        NS_ALIAS_GROUP.into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        NS_ALIAS_PLURAL.into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GET `path` through the test client with `accept`, as JSON (panics unless 2xx).
    async fn get_json(server: &ApiServer, path: &str, accept: &str) -> Value {
        let request = Request::get(path)
            .header(http::header::ACCEPT, accept)
            .body(Vec::new())
            .unwrap();
        let text = server.client().request_text(request).await.unwrap();
        serde_json::from_str(&text).unwrap()
    }

    const TABLE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";

    fn column_names(table: &Value) -> Vec<&str> {
        table["columnDefinitions"]
            .as_array()
            .unwrap_or_else(|| panic!("no columns: {table}"))
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect()
    }

    fn role_json(name: &str) -> Value {
        json!({"apiVersion": "zalando.org/v1", "kind": "AWSIAMRole",
               "metadata": {"name": name, "namespace": "ns"},
               "spec": {"roleReference": "app"}})
    }

    #[tokio::test]
    async fn tables_follow_the_stored_crd() {
        let server = ApiServer::builder()
            .json(role_json("a"))
            .json(role_json("b"))
            .start()
            .await;
        let roles = "/apis/zalando.org/v1/namespaces/ns/awsiamroles";
        // Before any CRD is stored: the one the server is built with.
        let table = get_json(&server, roles, TABLE).await;
        assert_eq!(table["kind"], "Table");
        assert_eq!(
            column_names(&table),
            ["Name", "Ready", "Reason", "Role ARN", "Expires", "Age"]
        );
        let rows = table["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0]["cells"][0], "a");
        assert_eq!(rows[0]["cells"][1], Value::Null);

        // A stored CRD with other columns decides.
        let mut crd = serde_json::to_value(AWSIAMRole::crd()).unwrap();
        crd["spec"]["versions"][0]["additionalPrinterColumns"] = json!([
            {"name": "Reference", "type": "string", "jsonPath": ".spec.roleReference"}
        ]);
        let api: kube::Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
            kube::Api::all(server.client());
        api.create(
            &kube::api::PostParams::default(),
            &serde_json::from_value(crd).unwrap(),
        )
        .await
        .unwrap();
        let table = get_json(&server, &format!("{roles}?limit=1"), TABLE).await;
        assert_eq!(column_names(&table), ["Name", "Reference"]);
        assert_eq!(table["rows"][0]["cells"], json!(["a", "app"]));
        let token = table["metadata"]["continue"]
            .as_str()
            .expect("a paged Table");
        let next = format!("{roles}?limit=1&continue={token}");
        let table = get_json(&server, &next, TABLE).await;
        assert_eq!(table["rows"][0]["cells"], json!(["b", "app"]));
        // One object is a one-row Table; plain JSON is still the object.
        let table = get_json(&server, &format!("{roles}/b"), TABLE).await;
        assert_eq!(table["rows"].as_array().unwrap().len(), 1);
        assert!(table["metadata"]["resourceVersion"].is_string());
        let plain = get_json(&server, &format!("{roles}/b"), "application/json").await;
        assert_eq!(plain["kind"], "AWSIAMRole");
        // Built-in resources get their printers.
        let table = get_json(&server, "/api/v1/namespaces/ns/secrets", TABLE).await;
        assert_eq!(column_names(&table), ["Name", "Type", "Data", "Age"]);
        let crds = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";
        let table = get_json(&server, crds, TABLE).await;
        assert_eq!(column_names(&table), ["Name", "Created At"]);
        assert_eq!(table["rows"][0]["cells"][0], "awsiamroles.zalando.org");
    }

    #[tokio::test]
    async fn core_events_are_a_view_of_events_k8s_io() {
        let event = |name: &str, regarding: &str| {
            json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
                   "metadata": {"name": name, "namespace": "ns"},
                   "eventTime": "2026-01-01T10:00:00.000000Z",
                   "regarding": {"apiVersion": "zalando.org/v1", "kind": "AWSIAMRole",
                                 "name": regarding, "namespace": "ns", "uid": "u-1"},
                   "reason": "InvalidSpec", "note": "spec.roleReference is missing",
                   "type": "Warning", "action": "Validate",
                   "reportingController": "kube-aws-iam-controller",
                   "reportingInstance": "pod-1"})
        };
        let server = ApiServer::builder()
            .json(event("a.1", "a"))
            .json(event("b.1", "b"))
            .start()
            .await;
        let selector = "involvedObject.name=a,involvedObject.namespace=ns,\
                        involvedObject.kind=AWSIAMRole,involvedObject.uid=u-1";
        let path = format!(
            "/api/v1/namespaces/ns/events?limit=500&fieldSelector={}",
            selector.replace('=', "%3D").replace(',', "%2C")
        );
        let list = get_json(&server, &path, "application/json").await;
        assert_eq!(
            (&list["kind"], &list["apiVersion"]),
            (&json!("EventList"), &json!("v1"))
        );
        let items = list["items"].as_array().unwrap();
        assert_eq!(items.len(), 1, "{list}");
        let e = &items[0];
        assert_eq!(
            (&e["kind"], &e["apiVersion"]),
            (&json!("Event"), &json!("v1"))
        );
        assert_eq!(e["involvedObject"]["name"], "a");
        assert_eq!(e["message"], "spec.roleReference is missing");
        assert_eq!(e["reportingComponent"], "kube-aws-iam-controller");
        assert_eq!(e["eventTime"], "2026-01-01T10:00:00.000000Z");
        assert!(e.get("regarding").is_none() && e.get("note").is_none());
        let one = get_json(
            &server,
            "/api/v1/namespaces/ns/events/b.1",
            "application/json",
        )
        .await;
        assert_eq!(one["involvedObject"]["name"], "b");
        // Discovery names the view, read-only; writes to it are refused.
        let core = get_json(&server, "/api/v1", "application/json").await;
        let events = core["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "events")
            .expect("core/v1 events in discovery");
        assert_eq!(events["verbs"], json!(["get", "list"]));
        let request = Request::post("/api/v1/namespaces/ns/events")
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(
                serde_json::to_vec(&json!({"apiVersion": "v1", "kind": "Event",
                                             "metadata": {"name": "c"}}))
                .unwrap(),
            )
            .unwrap();
        match server.client().request_text(request).await {
            Err(kube::Error::Api(status)) => assert_eq!(status.code, 405),
            other => panic!("a core/v1 Event write was not refused: {other:?}"),
        }
    }

    #[test]
    fn query_round_trip_reads_plus_as_space() {
        let pairs = parse_query("labelSelector=a+in+%28x%2Cy%29&limit=5&continue=");
        assert_eq!(
            pairs,
            vec![
                ("labelSelector".into(), "a in (x,y)".into()),
                ("limit".into(), "5".into()),
                ("continue".into(), "".into()),
            ]
        );
        assert_eq!(
            encode_query(&pairs[..1]),
            "labelSelector=a%20in%20%28x%2Cy%29"
        );
        assert_eq!(
            encode_query(&[("a+b".into(), "1+1 = 2".into())]),
            "a%2Bb=1%2B1%20%3D%202"
        );
        assert_eq!(
            parse_query("p=100%&q=%4"),
            vec![("p".into(), "100%".into()), ("q".into(), "%4".into())]
        );
    }

    #[test]
    fn request_info_parses_paths() {
        let i = RecordedRequest::parse(&Method::GET, "/api/v1/namespaces", None);
        assert_eq!(
            (i.verb.as_str(), i.resource.as_str()),
            ("list", "namespaces")
        );
        assert!(i.is_namespace());
        let i = RecordedRequest::parse(&Method::PATCH, "/api/v1/namespaces/x/status", None);
        assert_eq!(i.name.as_deref(), Some("x"));
        assert_eq!(i.subresource.as_deref(), Some("status"));
        assert_eq!(
            i.fake_path(),
            "/apis/namespaces.apiserver.test/v1/nsalias/x/status"
        );
        let i = RecordedRequest::parse(
            &Method::PATCH,
            "/apis/zalando.org/v1/namespaces/ns/awsiamroles/r/status",
            Some("fieldManager=x"),
        );
        assert_eq!(
            (
                i.verb.as_str(),
                i.group.as_str(),
                i.namespace.as_deref(),
                i.resource.as_str(),
                i.name.as_deref(),
                i.subresource.as_deref()
            ),
            (
                "patch",
                "zalando.org",
                Some("ns"),
                "awsiamroles",
                Some("r"),
                Some("status")
            )
        );
        let i = RecordedRequest::parse(&Method::GET, "/api/v1/secrets", Some("watch=1"));
        assert_eq!(i.verb, "watch");
        let i = RecordedRequest::parse(&Method::GET, "/apis/events.k8s.io/v1", None);
        assert_eq!(i.verb, "");
    }
}
