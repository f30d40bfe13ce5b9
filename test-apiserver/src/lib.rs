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
//! - `dryRun` is refused with 400 (the fake would perform the write).
//!
//! Tests observe and steer it through [`ApiServer::requests`], the write counters and fault
//! injection. Requests made through [`ApiServer::client`] (seeding and inspecting state) are
//! neither recorded nor delayed nor failed.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::hash::{BuildHasher as _, Hasher as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{CustomResourceExt as _, Resource};
use kube_aws_iam_controller::crd::AWSIAMRole;
use serde::Serialize;
use serde_json::{Map, Value, json};
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

type Body = Full<Bytes>;

// ---------------------------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------------------------

/// One request as the server received it, with the Kubernetes request attributes parsed from
/// the path (as the API server's RequestInfo would).
#[derive(Clone, Debug, PartialEq, Eq)]
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
        is_write_verb(&self.verb)
    }

    /// A request for `events` (core or events.k8s.io).
    pub fn is_event(&self) -> bool {
        self.resource == "events"
    }

    /// A request for the controller's leader Lease (`coordination.k8s.io` `leases`):
    /// bookkeeping between controllers, not a change to anything they manage.
    pub fn is_lease(&self) -> bool {
        self.group == "coordination.k8s.io" && self.resource == "leases"
    }

    /// A decoded query parameter, e.g. `param("limit")`.
    pub fn param(&self, key: &str) -> Option<String> {
        parse_query(&self.query)
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }
}

/// Collects initial objects, then starts the server.
#[derive(Default)]
pub struct ApiServerBuilder {
    objects: Vec<Value>,
}

impl ApiServerBuilder {
    /// Seed one object (any kind the fake knows; Namespaces included).
    pub fn object<K: Resource + Serialize>(mut self, obj: K) -> Self {
        self.objects
            .push(serde_json::to_value(&obj).expect("object serialises"));
        self
    }

    /// Seed many objects.
    pub fn objects<K: Resource + Serialize>(mut self, objs: impl IntoIterator<Item = K>) -> Self {
        for obj in objs {
            self = self.object(obj);
        }
        self
    }

    /// Seed one object given as JSON (must carry `apiVersion` and `kind`).
    pub fn json(mut self, obj: Value) -> Self {
        self.objects.push(obj);
        self
    }

    /// Build the fake with the seeded objects (stored as given, `status` included, like
    /// objects that existed before the test) and serve it on a free loopback port.
    pub async fn start(self) -> ApiServer {
        let (namespaces, objects): (Vec<Value>, Vec<Value>) = self
            .objects
            .into_iter()
            .partition(|o| o["apiVersion"] == "v1" && o["kind"] == "Namespace");
        let fake = kube_fake_client::ClientBuilder::new()
            .with_resource::<AWSIAMRole>()
            .with_status_subresource::<AwsIamRoleStatusMarker>()
            .with_resource::<NamespaceAlias>()
            .with_runtime_objects(objects)
            .build()
            .await
            .expect("kube-fake-client builds with the seeded objects");

        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("bound address");
        let url = format!("http://{addr}");
        let state = Arc::new(State {
            fake: fake.clone(),
            addr,
            requests: Mutex::new(Vec::new()),
            recorded: Notify::new(),
            faults: Mutex::new(Faults::default()),
            snapshots: Mutex::new(Snapshots::default()),
            write_lock: tokio::sync::Mutex::new(()),
            max_rv: AtomicU64::new(0),
            name_seed: std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish(),
            name_seq: AtomicU64::new(0),
        });
        let task = tokio::spawn(serve(listener, Arc::clone(&state)));

        let mut config = kube::Config::new(url.parse().expect("loopback URL parses"));
        config.headers.push((
            http::HeaderName::from_static(TEST_CLIENT_HEADER),
            HeaderValue::from_static("1"),
        ));
        let client = kube::Client::try_from(config).expect("loopback client builds");

        let server = ApiServer {
            url,
            addr,
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
    url: String,
    addr: SocketAddr,
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
        self.url.clone()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A client for seeding and inspecting state. It talks to the loopback URL, so it sees what
    /// the controller sees (paging, Namespaces, preconditions), but its requests are not
    /// recorded, delayed or failed. Built with kube's defaults (it retries 429/503/504).
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// The fake `kube::Client` itself, bypassing the server: no paging (lists are cut at
    /// `limit`, in random order), no Namespace paths, no preconditions. Prefer [`Self::client`].
    pub fn fake_client(&self) -> kube::Client {
        self.state.fake.clone()
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
            url = self.url
        );
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    /// Runs `kubectl --kubeconfig DIR/kubeconfig --cache-dir DIR/kubectl-cache ARGS…` on the
    /// blocking pool (the server keeps serving meanwhile). Panics if kubectl is not on the PATH.
    pub async fn kubectl(&self, dir: &Path, args: &[&str]) -> std::process::Output {
        let kubeconfig = self.write_kubeconfig(dir);
        let cache = dir.join("kubectl-cache");
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .arg("--cache-dir")
                .arg(&cache)
                .args(&args)
                .env_remove("KUBECONFIG")
                .output()
        })
        .await
        .expect("kubectl task")
        .unwrap_or_else(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                panic!(
                    "kubectl must be on the PATH for these tests (install it, e.g. \
                     `apt-get install kubectl` or from https://kubernetes.io/docs/tasks/tools/)"
                )
            }
            panic!("running kubectl: {e}")
        })
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
        lock(&self.state.requests)
            .iter()
            .filter(|r| r.is_write() && !r.is_event() && !r.is_lease())
            .count()
    }

    /// Recorded writes to one resource, subresources included: `"secrets"`, `"awsiamroles"`,
    /// `"events"`.
    pub fn write_count_for(&self, resource: &str) -> usize {
        lock(&self.state.requests)
            .iter()
            .filter(|r| r.is_write() && r.resource == resource)
            .count()
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
    /// requests not counted)
    /// answers `status_code` with a Kubernetes Status body and is not performed.
    pub fn fail_nth_write(&self, n: u64, status_code: u16) {
        assert!(n >= 1, "fail_nth_write counts from 1");
        lock(&self.state.faults).nth_writes.push((n, status_code));
    }

    /// While on, every write to `resource` (e.g. `"events"`, `"secrets"`) answers `status_code`.
    pub fn fail_writes(&self, resource: &str, status_code: Option<u16>) {
        let mut faults = lock(&self.state.faults);
        match status_code {
            Some(code) => faults.failing_writes.insert(resource.to_string(), code),
            None => faults.failing_writes.remove(resource),
        };
    }

    /// While on, every write to `resource` answers `status_code` with the request body quoted
    /// in its message, as some admission webhooks and API servers do; the quoted bodies are
    /// kept for [`Self::echoed_bodies`].
    pub fn echo_writes(&self, resource: &str, status_code: Option<u16>) {
        let mut faults = lock(&self.state.faults);
        match status_code {
            Some(code) => faults.echoing_writes.insert(resource.to_string(), code),
            None => faults.echoing_writes.remove(resource),
        };
    }

    /// The request bodies [`Self::echo_writes`] quoted back, oldest first.
    pub fn echoed_bodies(&self) -> Vec<Bytes> {
        lock(&self.state.faults).echoed.clone()
    }

    /// While on, list requests for `resource` (first pages and continuations) answer 500.
    pub fn fail_lists(&self, resource: &str, on: bool) {
        let mut faults = lock(&self.state.faults);
        if on {
            faults.failing_lists.insert(resource.to_string());
        } else {
            faults.failing_lists.remove(resource);
        }
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
    /// Serialises writes, so that a precondition check and its write are atomic.
    write_lock: tokio::sync::Mutex<()>,
    /// Highest resourceVersion seen; a list's resourceVersion is never older than this.
    max_rv: AtomicU64,
    name_seed: u64,
    name_seq: AtomicU64,
}

#[derive(Default)]
struct Faults {
    delay: Duration,
    /// (writes left until the failing one, status code).
    nth_writes: Vec<(u64, u16)>,
    failing_lists: HashSet<String>,
    failing_writes: HashMap<String, u16>,
    echoing_writes: HashMap<String, u16>,
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

    fn see_rv(&self, obj: &Value) {
        if let Some(rv) = obj["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|s| s.parse::<u64>().ok())
        {
            self.max_rv.fetch_max(rv, Ordering::SeqCst);
        }
    }

    /// A fault configured for this request, if any.
    fn injected_fault(&self, info: &RequestInfo, body: &Bytes) -> Option<Response<Body>> {
        let mut faults = lock(&self.faults);
        if info.verb == "list" && faults.failing_lists.contains(&info.resource) {
            return Some(status_response(
                500,
                &format!("injected list failure for {}", info.resource),
                None,
            ));
        }
        if !is_write_verb(&info.verb) {
            return None;
        }
        if info.resource != "events"
            && !(info.group == "coordination.k8s.io" && info.resource == "leases")
        {
            let mut fire = None;
            for (left, code) in faults.nth_writes.iter_mut() {
                *left -= 1;
                if *left == 0 && fire.is_none() {
                    fire = Some(*code);
                }
            }
            faults.nth_writes.retain(|(left, _)| *left > 0);
            if let Some(code) = fire {
                return Some(status_response(
                    code,
                    "injected write failure (fail_nth_write)",
                    info.details(),
                ));
            }
        }
        if let Some(&code) = faults.echoing_writes.get(&info.resource) {
            faults.echoed.push(body.clone());
            return Some(status_response(
                code,
                &format!(
                    "admission webhook \"echo.apiserver.test\" denied the request: {}",
                    String::from_utf8_lossy(body)
                ),
                info.details(),
            ));
        }
        if let Some(&code) = faults.failing_writes.get(&info.resource) {
            return Some(status_response(
                code,
                &format!("injected write failure for {}", info.resource),
                info.details(),
            ));
        }
        None
    }

    fn generated_name(&self, prefix: &str) -> String {
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        let mut x = self
            .name_seed
            .wrapping_add(self.name_seq.fetch_add(1, Ordering::SeqCst))
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        x ^= x >> 31;
        let suffix: String = (0..5)
            .map(|i| ALPHABET[((x >> (i * 8)) % ALPHABET.len() as u64) as usize] as char)
            .collect();
        format!("{prefix}{suffix}")
    }
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
    let info = RequestInfo::parse(&parts.method, parts.uri.path(), parts.uri.query());
    let response = match body.collect().await {
        Ok(body) => route(&state, &parts, &info, body.to_bytes(), from_test).await,
        Err(e) => status_response(400, &format!("reading the request body: {e}"), None),
    };
    if !from_test {
        let delay = lock(&state.faults).delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        state.record(info.recorded(response.status().as_u16()));
    }
    Ok(response)
}

async fn route(
    state: &State,
    parts: &http::request::Parts,
    info: &RequestInfo,
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
    match info.verb.as_str() {
        "list" => list(state, info, &query, from_test).await,
        "watch" => status_response(
            405,
            "watch is not supported by the test API server (kube-fake-client has no watch)",
            None,
        ),
        "get" => {
            let fwd = forward(state, Method::GET, info, &query, None, Bytes::new()).await;
            fwd.into_response(info)
        }
        _ => write(state, parts, info, &query, body).await,
    }
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

    fn into_response(self, info: &RequestInfo) -> Response<Body> {
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
    info: &RequestInfo,
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
                    let fwd = Forwarded { status, body };
                    if status.is_success()
                        && let Some(v) = fwd.json()
                    {
                        state.see_rv(&v);
                    }
                    fwd
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

async fn get_existing(state: &State, info: &RequestInfo) -> Option<Value> {
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

#[derive(Serialize, serde::Deserialize)]
struct ContinueToken {
    /// Format marker, so a token of another server is told apart.
    v: String,
    id: u64,
    start: usize,
}

const TOKEN_FORMAT: &str = "apiserver.test/v1";

fn encode_token(id: u64, start: usize) -> String {
    let token = ContinueToken {
        v: TOKEN_FORMAT.to_string(),
        id,
        start,
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&token).expect("token serialises"))
}

fn decode_token(token: &str) -> Option<ContinueToken> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()?;
    let token: ContinueToken = serde_json::from_slice(&bytes).ok()?;
    (token.v == TOKEN_FORMAT).then_some(token)
}

async fn list(
    state: &State,
    info: &RequestInfo,
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
    let identity = format!(
        "{}?labelSelector={}&fieldSelector={}",
        info.canonical_path(),
        param("labelSelector").unwrap_or(""),
        param("fieldSelector").unwrap_or("")
    );

    if let Some(token) = param("continue").filter(|s| !s.is_empty()) {
        let Some(token) = decode_token(token) else {
            return status_response(400, "continue key is not valid", None);
        };
        let expire = !from_test && std::mem::take(&mut lock(&state.faults).continue_410);
        let snapshot = {
            let mut snapshots = lock(&state.snapshots);
            if expire {
                snapshots.lists.retain(|(id, _)| *id != token.id);
            }
            snapshots
                .lists
                .iter()
                .find(|(id, _)| *id == token.id)
                .map(|(_, s)| Arc::clone(s))
        };
        let Some(snapshot) = snapshot else {
            return expired_response();
        };
        if snapshot.identity != identity {
            return status_response(
                400,
                "continue key is not valid: it belongs to another list request \
                 (path or selectors differ)",
                None,
            );
        }
        return page(state, token.id, &snapshot, token.start, limit);
    }

    // The fake must not cut the list; selectors pass through, re-encoded so it reads them.
    let forwarded: Vec<(String, String)> = query
        .iter()
        .filter(|(k, _)| k != "limit" && k != "continue")
        .cloned()
        .collect();
    let fwd = forward(state, Method::GET, info, &forwarded, None, Bytes::new()).await;
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
    items.sort_by_cached_key(sort_key);
    let item_rv = items
        .iter()
        .filter_map(|i| {
            i["metadata"]["resourceVersion"]
                .as_str()?
                .parse::<u64>()
                .ok()
        })
        .max()
        .unwrap_or(0);
    let rv = item_rv.max(state.max_rv.load(Ordering::SeqCst)).max(1);
    let snapshot = Snapshot {
        identity,
        kind: list["kind"].take(),
        api_version: list["apiVersion"].take(),
        resource_version: rv.to_string(),
        items,
        has_selector: param("labelSelector").is_some_and(|s| !s.is_empty())
            || param("fieldSelector").is_some_and(|s| !s.is_empty()),
    };
    match limit {
        Some(limit) if snapshot.items.len() > limit => {
            let snapshot = Arc::new(snapshot);
            let id = {
                let mut snapshots = lock(&state.snapshots);
                snapshots.next_id += 1;
                let id = snapshots.next_id;
                snapshots.lists.push_back((id, Arc::clone(&snapshot)));
                while snapshots.lists.len() > MAX_SNAPSHOTS {
                    snapshots.lists.pop_front();
                }
                id
            };
            page(state, id, &snapshot, 0, Some(limit))
        }
        _ => json_response(
            StatusCode::OK,
            &list_body(&snapshot, snapshot.items.clone(), None, None),
        ),
    }
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
    let items = snapshot.items[start..end].to_vec();
    let (token, remaining) = if end < total {
        // The real server cannot count what a selector would keep, so it leaves this out.
        let remaining = (!snapshot.has_selector).then_some(total - end);
        (Some(encode_token(id, end)), remaining)
    } else {
        lock(&state.snapshots).lists.retain(|(i, _)| *i != id);
        (None, None)
    };
    json_response(
        StatusCode::OK,
        &list_body(snapshot, items, token, remaining),
    )
}

fn list_body(
    snapshot: &Snapshot,
    items: Vec<Value>,
    token: Option<String>,
    remaining: Option<usize>,
) -> Value {
    let mut metadata = Map::new();
    metadata.insert("resourceVersion".into(), json!(snapshot.resource_version));
    if let Some(token) = token {
        metadata.insert("continue".into(), json!(token));
    }
    if let Some(remaining) = remaining {
        metadata.insert("remainingItemCount".into(), json!(remaining));
    }
    json!({
        "kind": snapshot.kind,
        "apiVersion": snapshot.api_version,
        "metadata": metadata,
        "items": items,
    })
}

fn sort_key(item: &Value) -> (String, String) {
    let meta = &item["metadata"];
    (
        meta["namespace"].as_str().unwrap_or("").to_string(),
        meta["name"].as_str().unwrap_or("").to_string(),
    )
}

fn expired_response() -> Response<Body> {
    status_response(
        410,
        "The provided continue parameter is too old to display a consistent list result. \
         You can start a new list without the continue parameter.",
        None,
    )
}

// ---------------------------------------------------------------------------------------------
// Writes
// ---------------------------------------------------------------------------------------------

async fn write(
    state: &State,
    parts: &http::request::Parts,
    info: &RequestInfo,
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
    let resource = served_resource(&info.group, &info.resource);
    let mut content_type = parts.headers.get(http::header::CONTENT_TYPE).cloned();

    let _serialised = state.write_lock.lock().await;
    match info.verb.as_str() {
        "create" => {
            let Some(obj) = body_json.as_mut().filter(|b| b.is_object()) else {
                return status_response(400, "create needs an object body", None);
            };
            if let Some(rejection) = check_body(info, resource, obj, false) {
                return rejection;
            }
            let meta = obj["metadata"].as_object_mut();
            let Some(meta) = meta else {
                return status_response(422, "metadata is required", info.details());
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
                        let name = state.generated_name(prefix);
                        meta.insert("name".into(), json!(name));
                    }
                    _ => {
                        return status_response(
                            422,
                            "metadata.name: Required value: name or generateName is required",
                            info.details(),
                        );
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
            if let Some(rejection) = fold_string_data(info, obj, true) {
                return rejection;
            }
        }
        "update" => {
            let Some(obj) = body_json.as_mut().filter(|b| b.is_object()) else {
                return status_response(400, "update needs an object body", None);
            };
            if let Some(rejection) = check_body(info, resource, obj, true) {
                return rejection;
            }
            if let Some(rejection) = check_uid(state, info, obj).await {
                return rejection;
            }
            if info.subresource.as_deref() == Some("status") {
                // Only status (and the resourceVersion precondition) of the body count.
                let Some(mut existing) = get_existing(state, info).await else {
                    return forward(state, Method::PUT, info, query, None, body)
                        .await
                        .into_response(info);
                };
                existing["status"] = obj.get("status").cloned().unwrap_or(Value::Null);
                if existing["status"].is_null() {
                    existing.as_object_mut().map(|o| o.remove("status"));
                }
                if let Some(rv) = obj["metadata"].get("resourceVersion") {
                    existing["metadata"]["resourceVersion"] = rv.clone();
                }
                *obj = existing;
            } else if let Some(rejection) = fold_string_data(info, obj, true) {
                return rejection;
            }
        }
        "patch" => {
            let is_json_patch = content_type
                .as_ref()
                .and_then(|c| c.to_str().ok())
                .is_some_and(|c| c.contains("json-patch"));
            if content_type.is_none() {
                content_type = Some(HeaderValue::from_static(
                    "application/strategic-merge-patch+json",
                ));
            }
            if let Some(patch) = body_json
                .as_mut()
                .filter(|b| b.is_object() && !is_json_patch)
            {
                if let Some(rejection) = check_uid(state, info, patch).await {
                    return rejection;
                }
                if info.subresource.as_deref() == Some("status") {
                    retain_status_fields(patch);
                } else if let Some(rejection) = fold_string_data(info, patch, false) {
                    return rejection;
                }
            }
        }
        "delete" => {
            if let Some(pre) = body_json.as_ref().map(|b| &b["preconditions"])
                && pre.is_object()
            {
                let Some(existing) = get_existing(state, info).await else {
                    return forward(state, Method::DELETE, info, query, None, body)
                        .await
                        .into_response(info);
                };
                let meta = &existing["metadata"];
                for (field, label) in [("uid", "UID"), ("resourceVersion", "ResourceVersion")] {
                    if let Some(want) = pre[field].as_str()
                        && meta[field].as_str() != Some(want)
                    {
                        return status_response(
                            409,
                            &format!(
                                "Precondition failed: {label} in precondition: {want}, \
                                 {label} in object meta: {}",
                                meta[field].as_str().unwrap_or("")
                            ),
                            info.details(),
                        );
                    }
                }
            }
        }
        _ => {}
    }
    let body = match &body_json {
        Some(v) => Bytes::from(v.to_string()),
        None => body,
    };
    let method = parts.method.clone();
    forward(state, method, info, query, content_type.as_ref(), body)
        .await
        .into_response(info)
}

/// Name, namespace and kind of a create/update body must agree with the URL.
fn check_body(
    info: &RequestInfo,
    resource: Option<&ServedResource>,
    obj: &Value,
    name_required: bool,
) -> Option<Response<Body>> {
    let meta = &obj["metadata"];
    if let (Some(url_ns), Some(body_ns)) = (&info.namespace, meta["namespace"].as_str())
        && !body_ns.is_empty()
        && body_ns != url_ns
    {
        return Some(status_response(
            400,
            "the namespace of the provided object does not match the namespace sent on the request",
            None,
        ));
    }
    if let Some(url_name) = &info.name {
        let body_name = meta["name"].as_str().unwrap_or("");
        if (name_required || !body_name.is_empty()) && body_name != url_name {
            return Some(status_response(
                400,
                &format!(
                    "the name of the object ({body_name}) does not match the name on the URL ({url_name})"
                ),
                None,
            ));
        }
    }
    if let (Some(resource), Some(kind)) = (resource, obj["kind"].as_str())
        && kind != resource.kind
    {
        return Some(status_response(
            400,
            &format!(
                "the kind of the object ({kind}) does not match the resource {} ({})",
                resource.plural, resource.kind
            ),
            None,
        ));
    }
    None
}

/// `metadata.uid` in an update or patch body is a precondition on the stored object.
async fn check_uid(state: &State, info: &RequestInfo, body: &Value) -> Option<Response<Body>> {
    let want = body["metadata"]["uid"].as_str().filter(|s| !s.is_empty())?;
    let existing = get_existing(state, info).await?;
    let have = existing["metadata"]["uid"].as_str().unwrap_or("");
    (have != want).then(|| {
        status_response(
            409,
            &format!(
                "Precondition failed: UID in precondition: {want}, UID in object meta: {have}"
            ),
            info.details(),
        )
    })
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
fn fold_string_data(info: &RequestInfo, obj: &mut Value, whole: bool) -> Option<Response<Body>> {
    if !(info.group.is_empty() && info.resource == "secrets") {
        return None;
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
                return Some(status_response(
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
    bad.map(|k| {
        status_response(
            422,
            &format!(
                "Secret is invalid: data[{k}]: Invalid value: {k:?}: a valid config key must \
                 consist of alphanumeric characters, '-', '_' or '.'"
            ),
            info.details(),
        )
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

#[derive(Clone, Debug, Default)]
struct RequestInfo {
    method: String,
    path: String,
    query: String,
    verb: String,
    group: String,
    version: String,
    resource: String,
    subresource: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
}

impl RequestInfo {
    fn parse(method: &Method, path: &str, query: Option<&str>) -> RequestInfo {
        let mut info = RequestInfo {
            method: method.to_string(),
            path: path.to_string(),
            query: query.unwrap_or("").to_string(),
            ..RequestInfo::default()
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
        let owned = |s: &&str| s.to_string();
        match rest {
            [] => return info,
            // /namespaces/NS/RESOURCE[/NAME[/SUBRESOURCE]], except a Namespace's own subresources.
            ["namespaces", ns, resource, tail @ ..]
                if !(tail.is_empty() && matches!(*resource, "status" | "finalize")) =>
            {
                info.namespace = Some(ns.to_string());
                info.resource = resource.to_string();
                info.name = tail.first().map(owned);
                info.subresource = tail.get(1).map(owned);
            }
            [resource, tail @ ..] => {
                info.resource = resource.to_string();
                info.name = tail.first().map(owned);
                info.subresource = tail.get(1).map(owned);
            }
        }
        let watch = parse_query(&info.query)
            .iter()
            .any(|(k, v)| k == "watch" && (v == "true" || v == "1"));
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

    fn canonical_path(&self) -> String {
        let mut path = if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        };
        if let Some(ns) = &self.namespace {
            path.push_str(&format!("/namespaces/{ns}"));
        }
        path.push('/');
        path.push_str(&self.resource);
        for part in [&self.name, &self.subresource].into_iter().flatten() {
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
        let mut alias = self.clone();
        alias.group = NS_ALIAS_GROUP.to_string();
        alias.version = "v1".to_string();
        alias.resource = NS_ALIAS_PLURAL.to_string();
        alias.canonical_path()
    }

    fn details(&self) -> Option<Value> {
        // Like the real server, `kind` here is the resource.
        Some(json!({
            "name": self.name.clone().unwrap_or_default(),
            "group": self.group,
            "kind": self.resource,
        }))
    }

    fn recorded(&self, status: u16) -> RecordedRequest {
        RecordedRequest {
            method: self.method.clone(),
            path: self.path.clone(),
            query: self.query.clone(),
            verb: self.verb.clone(),
            group: self.group.clone(),
            version: self.version.clone(),
            resource: self.resource.clone(),
            subresource: self.subresource.clone(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            status,
        }
    }
}

fn is_write_verb(verb: &str) -> bool {
    matches!(
        verb,
        "create" | "update" | "patch" | "delete" | "deletecollection"
    )
}

// ---------------------------------------------------------------------------------------------
// Discovery
// ---------------------------------------------------------------------------------------------

/// A resource the server announces in discovery.
#[derive(Clone, Debug)]
struct ServedResource {
    group: String,
    version: String,
    plural: String,
    singular: String,
    kind: String,
    namespaced: bool,
    short_names: Vec<String>,
    categories: Vec<String>,
    status: bool,
}

fn served_resources() -> &'static [ServedResource] {
    static SERVED: std::sync::OnceLock<Vec<ServedResource>> = std::sync::OnceLock::new();
    SERVED.get_or_init(build_served_resources)
}

fn build_served_resources() -> Vec<ServedResource> {
    let core =
        |plural: &str, kind: &str, namespaced: bool, short: &[&str], status: bool| ServedResource {
            group: String::new(),
            version: "v1".into(),
            plural: plural.into(),
            singular: kind.to_lowercase(),
            kind: kind.into(),
            namespaced,
            short_names: short.iter().map(|s| s.to_string()).collect(),
            categories: Vec::new(),
            status,
        };
    let crd = AWSIAMRole::crd();
    let names = &crd.spec.names;
    vec![
        core("namespaces", "Namespace", false, &["ns"], true),
        core("secrets", "Secret", true, &[], false),
        ServedResource {
            group: "events.k8s.io".into(),
            version: "v1".into(),
            plural: "events".into(),
            singular: "event".into(),
            kind: "Event".into(),
            namespaced: true,
            short_names: vec!["ev".into()],
            categories: Vec::new(),
            status: false,
        },
        ServedResource {
            group: AWSIAMRole::group(&()).into_owned(),
            version: AWSIAMRole::version(&()).into_owned(),
            plural: AWSIAMRole::plural(&()).into_owned(),
            singular: names
                .singular
                .clone()
                .unwrap_or_else(|| AWSIAMRole::kind(&()).to_lowercase()),
            kind: AWSIAMRole::kind(&()).into_owned(),
            namespaced: crd.spec.scope == "Namespaced",
            short_names: names.short_names.clone().unwrap_or_default(),
            categories: names.categories.clone().unwrap_or_default(),
            status: true,
        },
    ]
}

fn served_resource(group: &str, plural: &str) -> Option<&'static ServedResource> {
    served_resources()
        .iter()
        .find(|r| r.group == group && r.plural == plural)
}

fn discovery(state: &State, path: &str) -> Option<Value> {
    let resources = served_resources();
    let mut groups: Vec<(String, String)> = resources
        .iter()
        .filter(|r| !r.group.is_empty())
        .map(|r| (r.group.clone(), r.version.clone()))
        .collect();
    groups.sort();
    groups.dedup();
    let group_doc = |(group, version): &(String, String)| {
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
        ["api", version] => resource_list(resources, "", version),
        ["apis", group, version] => resource_list(resources, group, version),
        _ => None,
    }
}

fn resource_list(resources: &[ServedResource], group: &str, version: &str) -> Option<Value> {
    let served: Vec<&ServedResource> = resources
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    if served.is_empty() {
        return None;
    }
    let mut list = Vec::new();
    for r in served {
        let mut doc = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": RESOURCE_VERBS,
        });
        if !r.short_names.is_empty() {
            doc["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            doc["categories"] = json!(r.categories);
        }
        list.push(doc);
        if r.status {
            list.push(json!({
                "name": format!("{}/status", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": STATUS_VERBS,
            }));
        }
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
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
        .body(Full::new(body))
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
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode_component(k), decode_component(v))
        })
        .collect()
}

fn decode_component(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes everything but unreserved characters (spaces as `%20`, which the fake reads).
fn encode_query(pairs: &[(String, String)]) -> String {
    let encode = |s: &str| {
        let mut out = String::with_capacity(s.len());
        for b in s.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

// ---------------------------------------------------------------------------------------------
// Types registered with the fake
// ---------------------------------------------------------------------------------------------

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

/// `ClientBuilder::with_status_subresource` wants a `Default` instance to read the GVK from;
/// `AWSIAMRole` has none (its spec has no default), so this stands in for it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AwsIamRoleStatusMarker {
    api_version: String,
    kind: String,
    #[serde(skip)]
    metadata: ObjectMeta,
}

impl Default for AwsIamRoleStatusMarker {
    fn default() -> Self {
        AwsIamRoleStatusMarker {
            api_version: AWSIAMRole::api_version(&()).into_owned(),
            kind: AWSIAMRole::kind(&()).into_owned(),
            metadata: ObjectMeta::default(),
        }
    }
}

impl Resource for AwsIamRoleStatusMarker {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        AWSIAMRole::kind(&())
    }
    fn group(_: &()) -> Cow<'_, str> {
        AWSIAMRole::group(&())
    }
    fn version(_: &()) -> Cow<'_, str> {
        AWSIAMRole::version(&())
    }
    fn plural(_: &()) -> Cow<'_, str> {
        AWSIAMRole::plural(&())
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
        assert_eq!(decode_component("100%"), "100%");
        assert_eq!(decode_component("%4"), "%4");
    }

    #[test]
    fn request_info_parses_paths() {
        let i = RequestInfo::parse(&Method::GET, "/api/v1/namespaces", None);
        assert_eq!(
            (i.verb.as_str(), i.resource.as_str()),
            ("list", "namespaces")
        );
        assert!(i.is_namespace());
        let i = RequestInfo::parse(&Method::PATCH, "/api/v1/namespaces/x/status", None);
        assert_eq!(i.name.as_deref(), Some("x"));
        assert_eq!(i.subresource.as_deref(), Some("status"));
        assert_eq!(
            i.fake_path(),
            "/apis/namespaces.apiserver.test/v1/nsalias/x/status"
        );
        let i = RequestInfo::parse(
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
        let i = RequestInfo::parse(&Method::GET, "/api/v1/secrets", Some("watch=1"));
        assert_eq!(i.verb, "watch");
        let i = RequestInfo::parse(&Method::GET, "/apis/events.k8s.io/v1", None);
        assert_eq!(i.verb, "");
    }
}
