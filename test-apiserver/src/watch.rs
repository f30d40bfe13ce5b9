//! Watches: a mirror of the stored objects, the retained event history, and the streams.
//!
//! Every change goes through [`record_write`] while the server's `write_lock` is held, right
//! after the fake performed it: the change is applied to the mirror ([`Hub::stores`]), appended
//! to the bounded history and handed to every open watch of its resource (one unbounded channel
//! per watch, so a write costs O(watches of that resource)). Lists read the fake under the same
//! lock and report [`Hub::head_rv`], so a list and a watch from its resourceVersion neither miss
//! nor repeat a change.
//!
//! The fake gives every create, update and patch a new resourceVersion from one counter, but a
//! delete none: a deletion takes a fresh one by updating a hidden counter object
//! ([`RV_COUNTER_NAME`]), so DELETED events are ordered with everything else.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{BufMut as _, Bytes, BytesMut};
use http::{Method, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Frame;
use kube::core::{Selector, SelectorExt as _};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::{
    Body, BoxError, Forwarded, RecordedRequest, Refused, State, fix_alias, forward, lock, refuse,
    rv_of, status_body, status_response,
};

/// The hidden resource whose single object is updated to draw a resourceVersion from the fake.
pub(crate) const RV_COUNTER_GROUP: &str = "counter.apiserver.test";
pub(crate) const RV_COUNTER_PLURAL: &str = "rvcounters";
pub(crate) const RV_COUNTER_KIND: &str = "ResourceVersionCounter";
/// The fake registers custom resources as namespaced.
pub(crate) const RV_COUNTER_NAMESPACE: &str = "apiserver-test-internal";
pub(crate) const RV_COUNTER_NAME: &str = "counter";
/// Watch events retained by default for resuming watches.
pub(crate) const DEFAULT_HISTORY: usize = 10_000;
/// Bookmark period by default (the real server's is about a minute).
pub(crate) const DEFAULT_BOOKMARK_INTERVAL: Duration = Duration::from_secs(1);
/// A watch without `timeoutSeconds` ends after this long (the real server's minimum request
/// timeout).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);
/// A watch frame carries events until it is about this large.
const FRAME_BYTES: usize = 64 * 1024;
/// Live events taken from a watch's channel at once.
const DRAIN_BATCH: usize = 1024;
const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";

// ---------------------------------------------------------------------------------------------
// Objects, events, the hub
// ---------------------------------------------------------------------------------------------

/// A resource as requests address it: API group and plural (Namespaces by their real name).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(crate) struct ResKey {
    group: String,
    resource: String,
}

impl ResKey {
    pub(crate) fn of(info: &RecordedRequest) -> ResKey {
        ResKey {
            group: info.group.clone(),
            resource: info.resource.clone(),
        }
    }
}

/// One stored object as a GET returns it, serialised once, with what watches filter on.
pub(crate) struct Obj {
    json: Bytes,
    namespace: String,
    name: String,
    rv: u64,
    uid: Option<String>,
    owners: Vec<String>,
    labels: BTreeMap<String, String>,
}

impl Obj {
    fn new(value: &Value) -> Obj {
        let meta = &value["metadata"];
        let text = |key: &str| meta[key].as_str().unwrap_or("").to_string();
        Obj {
            json: Bytes::from(value.to_string()),
            namespace: text("namespace"),
            name: text("name"),
            rv: rv_of(value).unwrap_or(0),
            uid: meta["uid"]
                .as_str()
                .filter(|u| !u.is_empty())
                .map(str::to_string),
            owners: meta["ownerReferences"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r["uid"].as_str().map(str::to_string))
                .collect(),
            labels: meta["labels"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect(),
        }
    }

    fn value(&self) -> Value {
        serde_json::from_slice(&self.json).unwrap_or(Value::Null)
    }

    /// This object as it was, with another resourceVersion (a deletion's).
    fn with_rv(&self, rv: u64) -> Obj {
        let mut value = self.value();
        value["metadata"]["resourceVersion"] = json!(rv.to_string());
        Obj::new(&value)
    }

    fn key(&self) -> (String, String) {
        (self.namespace.clone(), self.name.clone())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Change {
    Added,
    Modified,
    Deleted,
}

/// One committed change. `obj` is the new state (for a deletion: the last state with the
/// deletion's resourceVersion); `prev` the state before a modification.
pub(crate) struct Event {
    rv: u64,
    res: ResKey,
    change: Change,
    obj: Arc<Obj>,
    prev: Option<Arc<Obj>>,
}

/// The objects of one resource, by (namespace, name).
struct Store {
    version: String,
    kind: String,
    api_version: String,
    objects: BTreeMap<(String, String), Arc<Obj>>,
}

struct Watcher {
    res: ResKey,
    namespace: Option<String>,
    tx: mpsc::UnboundedSender<Arc<Event>>,
}

/// (resource, namespace, name) of a stored object.
type ObjRef = (ResKey, String, String);

/// The mirror of the fake's objects, the event history and the open watches.
pub(crate) struct Hub {
    stores: HashMap<ResKey, Store>,
    /// Owner uid → objects whose ownerReferences name it.
    owners: HashMap<String, HashSet<ObjRef>>,
    /// Oldest first; every event's rv is above `compacted_rv`.
    history: VecDeque<Arc<Event>>,
    history_limit: usize,
    /// A watch from an older resourceVersion answers 410 Expired.
    compacted_rv: u64,
    /// The resourceVersion of the newest committed change.
    pub(crate) head_rv: u64,
    watchers: HashMap<u64, Watcher>,
    next_id: u64,
}

impl Hub {
    pub(crate) fn new(history_limit: usize) -> Hub {
        Hub {
            stores: HashMap::new(),
            owners: HashMap::new(),
            history: VecDeque::new(),
            history_limit,
            compacted_rv: 0,
            head_rv: 0,
            watchers: HashMap::new(),
            next_id: 0,
        }
    }

    /// Drops the whole history: a watch from before now answers 410 Expired.
    pub(crate) fn compact(&mut self) {
        self.history.clear();
        self.compacted_rv = self.head_rv;
    }

    pub(crate) fn watch_count(&self) -> usize {
        self.watchers.len()
    }

    fn index_owners(&mut self, res: &ResKey, obj: &Obj, add: bool) {
        for owner in &obj.owners {
            let entry = (res.clone(), obj.namespace.clone(), obj.name.clone());
            if add {
                self.owners.entry(owner.clone()).or_default().insert(entry);
            } else if let Some(set) = self.owners.get_mut(owner) {
                set.remove(&entry);
                if set.is_empty() {
                    self.owners.remove(owner);
                }
            }
        }
    }

    /// Applies a change to the mirror, appends it to the history and hands it to the watches
    /// of its resource. A change of a resource that is not mirrored only advances `head_rv`.
    fn commit(&mut self, res: &ResKey, obj: Obj, deleted: bool) {
        let obj = Arc::new(obj);
        self.head_rv = self.head_rv.max(obj.rv);
        let Some(store) = self.stores.get_mut(res) else {
            return;
        };
        let prev = if deleted {
            store.objects.remove(&obj.key())
        } else {
            store.objects.insert(obj.key(), Arc::clone(&obj))
        };
        if let Some(prev) = &prev {
            self.index_owners(res, prev, false);
        }
        if !deleted {
            self.index_owners(res, &obj, true);
        }
        let change = match (deleted, &prev) {
            (true, _) => Change::Deleted,
            (false, Some(_)) => Change::Modified,
            (false, None) => Change::Added,
        };
        let event = Arc::new(Event {
            rv: obj.rv,
            res: res.clone(),
            change,
            prev: prev.filter(|_| change == Change::Modified),
            obj,
        });
        self.history.push_back(Arc::clone(&event));
        while self.history.len() > self.history_limit {
            if let Some(old) = self.history.pop_front() {
                self.compacted_rv = self.compacted_rv.max(old.rv);
            }
        }
        self.watchers.retain(|_, w| {
            let concerned = w.res == event.res
                && w.namespace
                    .as_ref()
                    .is_none_or(|ns| *ns == event.obj.namespace);
            !concerned || w.tx.send(Arc::clone(&event)).is_ok()
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Recording changes (the write lock is held)
// ---------------------------------------------------------------------------------------------

/// The request that reads `res` (cluster-wide, or one object) in the fake.
fn object_request(
    info_like: &RecordedRequest,
    namespace: Option<&str>,
    name: Option<&str>,
) -> RecordedRequest {
    RecordedRequest {
        method: "GET".into(),
        verb: if name.is_some() { "get" } else { "list" }.into(),
        group: info_like.group.clone(),
        version: info_like.version.clone(),
        resource: info_like.resource.clone(),
        namespace: namespace.filter(|ns| !ns.is_empty()).map(str::to_string),
        name: name.map(str::to_string),
        ..RecordedRequest::default()
    }
}

/// Mirrors the resource of `info` (all namespaces) if it is not yet: from then on every change
/// to it is recorded. The caller holds the write lock. Fails with the fake's answer when the
/// resource cannot be listed (unknown resource).
pub(crate) async fn load_locked(state: &State, info: &RecordedRequest) -> Result<(), Refused> {
    let res = ResKey::of(info);
    if lock(&state.hub).stores.contains_key(&res) {
        return Ok(());
    }
    let list_info = object_request(info, None, None);
    let fwd = forward(state, Method::GET, &list_info, &[], None, Bytes::new()).await;
    if !fwd.status.is_success() {
        return Err(Box::new(fwd.into_response(&list_info)));
    }
    let Some(mut list) = fwd.json() else {
        return Err(refuse(
            500,
            "the fake answered a list that is not JSON",
            None,
        ));
    };
    let namespaces = info.is_namespace();
    if namespaces {
        fix_alias(&mut list);
    }
    let mut store = Store {
        version: info.version.clone(),
        kind: list["kind"]
            .as_str()
            .and_then(|k| k.strip_suffix("List"))
            .unwrap_or("")
            .to_string(),
        api_version: list["apiVersion"].as_str().unwrap_or("").to_string(),
        objects: BTreeMap::new(),
    };
    let mut hub = lock(&state.hub);
    if hub.stores.contains_key(&res) {
        return Ok(());
    }
    let items = list["items"].as_array_mut().map(std::mem::take);
    for mut item in items.into_iter().flatten() {
        if namespaces {
            fix_alias(&mut item);
        }
        let obj = Arc::new(Obj::new(&item));
        hub.head_rv = hub.head_rv.max(obj.rv);
        hub.index_owners(&res, &obj, true);
        store.objects.insert(obj.key(), obj);
    }
    hub.stores.insert(res, store);
    Ok(())
}

/// A fresh resourceVersion from the fake's counter (the hidden counter object is updated).
pub(crate) async fn next_rv(state: &State) -> u64 {
    let counter = RecordedRequest {
        group: RV_COUNTER_GROUP.into(),
        version: "v1".into(),
        resource: RV_COUNTER_PLURAL.into(),
        namespace: Some(RV_COUNTER_NAMESPACE.into()),
        name: Some(RV_COUNTER_NAME.into()),
        ..RecordedRequest::default()
    };
    let body = counter_object().to_string();
    let fwd = forward(state, Method::PUT, &counter, &[], None, Bytes::from(body)).await;
    fwd.json()
        .as_ref()
        .and_then(rv_of)
        .filter(|_| fwd.status.is_success())
        .unwrap_or_else(|| {
            panic!(
                "the fake refused the resourceVersion counter update: {} {}",
                fwd.status,
                String::from_utf8_lossy(&fwd.body)
            )
        })
}

/// The hidden object whose updates draw resourceVersions.
pub(crate) fn counter_object() -> Value {
    json!({
        "apiVersion": format!("{RV_COUNTER_GROUP}/v1"),
        "kind": RV_COUNTER_KIND,
        "metadata": {"name": RV_COUNTER_NAME, "namespace": RV_COUNTER_NAMESPACE},
    })
}

/// Records the change a successful write made (the caller holds the write lock and has
/// mirrored the resource with [`load_locked`]): the object the fake answered, a deletion with
/// the objects the fake deleted in cascade, or the objects a deletecollection removed.
pub(crate) async fn record_write(state: &State, info: &RecordedRequest, fwd: &Forwarded) {
    if !fwd.status.is_success() {
        return;
    }
    let res = ResKey::of(info);
    match info.verb.as_str() {
        "create" | "update" | "patch"
            if info.subresource.as_deref().is_none_or(|s| s == "status") =>
        {
            let Some(mut obj) = fwd.json().filter(|o| rv_of(o).is_some()) else {
                return;
            };
            if info.is_namespace() {
                fix_alias(&mut obj);
            }
            let meta = &obj["metadata"];
            let finalizers = meta["finalizers"].as_array().map_or(0, Vec::len);
            if info.verb != "create" && !meta["deletionTimestamp"].is_null() && finalizers == 0 {
                // The fake deletes an object whose last finalizer is removed and answers its
                // former state.
                removed(state, vec![(res, obj)]).await;
            } else {
                lock(&state.hub).commit(&res, Obj::new(&obj), false);
            }
        }
        "delete" if info.subresource.is_none() => {
            let Some(mut obj) = fwd.json().filter(|o| o["kind"] != "Status") else {
                return;
            };
            if info.is_namespace() {
                fix_alias(&mut obj);
            }
            removed(state, vec![(res, obj)]).await;
        }
        "deletecollection" => {
            // Which objects went: those of the collection the mirror has and the fake lost.
            let list_info = object_request(info, info.namespace.as_deref(), None);
            let fwd = forward(state, Method::GET, &list_info, &[], None, Bytes::new()).await;
            let Some(list) = fwd.json().filter(|_| fwd.status.is_success()) else {
                return;
            };
            let left: HashSet<(String, String)> = list["items"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|o| {
                    let meta = &o["metadata"];
                    let text = |k: &str| meta[k].as_str().unwrap_or("").to_string();
                    (text("namespace"), text("name"))
                })
                .collect();
            let gone: Vec<(ResKey, Value)> = {
                let hub = lock(&state.hub);
                let Some(store) = hub.stores.get(&res) else {
                    return;
                };
                store
                    .objects
                    .iter()
                    .filter(|((ns, _), _)| info.namespace.as_ref().is_none_or(|want| want == ns))
                    .filter(|(key, _)| !left.contains(*key))
                    .map(|(_, obj)| (res.clone(), obj.value()))
                    .collect()
            };
            removed(state, gone).await;
        }
        _ => {}
    }
}

/// Records the deletion of `gone` (each object in its last state), then of every object the
/// fake deleted with them because their ownerReferences named a deleted uid (transitively).
async fn removed(state: &State, mut gone: Vec<(ResKey, Value)>) {
    gone.reverse();
    while let Some((res, mut obj)) = gone.pop() {
        let rv = next_rv(state).await;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let obj = Obj::new(&obj);
        let uid = obj.uid.clone();
        let dependents: Vec<(ObjRef, String, Value)> = {
            let mut hub = lock(&state.hub);
            hub.commit(&res, obj, true);
            uid.and_then(|uid| hub.owners.get(&uid))
                .into_iter()
                .flatten()
                .filter_map(|r| {
                    let store = hub.stores.get(&r.0)?;
                    let obj = store.objects.get(&(r.1.clone(), r.2.clone()))?;
                    Some((r.clone(), store.version.clone(), obj.value()))
                })
                .collect()
        };
        for ((dep_res, ns, name), version, value) in dependents {
            let like = RecordedRequest {
                group: dep_res.group.clone(),
                version,
                resource: dep_res.resource.clone(),
                ..RecordedRequest::default()
            };
            let get = object_request(&like, Some(&ns), Some(&name));
            let fwd = forward(state, Method::GET, &get, &[], None, Bytes::new()).await;
            if fwd.status == StatusCode::NOT_FOUND {
                gone.push((dep_res, value));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Selectors
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
struct FieldRequirement {
    field: String,
    equal: bool,
    value: String,
}

/// A field selector: `field=value`, `field==value`, `field!=value`, comma-separated. Any
/// field path of the object works (`metadata.name`, `metadata.namespace`, `type`,
/// `status.phase`, …); a missing field reads as `""`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct FieldSelector(Vec<FieldRequirement>);

impl FieldSelector {
    pub(crate) fn parse(text: &str) -> Result<FieldSelector, String> {
        let mut reqs = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, true, v)
            } else {
                return Err(format!(
                    "invalid field selector {text:?}: {part:?} has no operator"
                ));
            };
            let field = field.trim();
            if field.is_empty() {
                return Err(format!("invalid field selector {text:?}: empty field"));
            }
            reqs.push(FieldRequirement {
                field: field.to_string(),
                equal,
                value: value.trim().to_string(),
            });
        }
        Ok(FieldSelector(reqs))
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `value` (an object as JSON) matches.
    pub(crate) fn matches_value(&self, value: &Value) -> bool {
        self.0.iter().all(|req| {
            let mut at = value;
            for step in req.field.split('.') {
                at = &at[step];
            }
            let have = match at {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            (have == req.value) == req.equal
        })
    }

    fn matches(&self, obj: &Obj) -> bool {
        let metadata_only = self
            .0
            .iter()
            .all(|r| matches!(r.field.as_str(), "metadata.name" | "metadata.namespace"));
        if !metadata_only {
            return self.matches_value(&obj.value());
        }
        self.0.iter().all(|r| {
            let have = if r.field == "metadata.name" {
                &obj.name
            } else {
                &obj.namespace
            };
            (*have == r.value) == r.equal
        })
    }
}

/// What a watch keeps: a label selector (parsed as lists parse it) and a field selector.
struct Filter {
    labels: Option<Selector>,
    fields: FieldSelector,
}

impl Filter {
    fn matches(&self, obj: &Obj) -> bool {
        self.labels.as_ref().is_none_or(|s| s.matches(&obj.labels)) && self.fields.matches(obj)
    }

    /// The event a watch with this filter sends for `event`, as the real server's: an object
    /// modified into the selection is ADDED, out of it DELETED (its former state with the
    /// event's resourceVersion).
    fn transform(&self, event: &Event) -> Option<(&'static str, Bytes)> {
        let now = self.matches(&event.obj);
        match event.change {
            Change::Added => now.then(|| ("ADDED", event.obj.json.clone())),
            Change::Deleted => now.then(|| ("DELETED", event.obj.json.clone())),
            Change::Modified => {
                let before = event.prev.as_ref().is_some_and(|p| self.matches(p));
                match (before, now) {
                    (true, true) => Some(("MODIFIED", event.obj.json.clone())),
                    (false, true) => Some(("ADDED", event.obj.json.clone())),
                    (true, false) => {
                        let prev = event.prev.as_ref()?;
                        Some(("DELETED", prev.with_rv(event.rv).json))
                    }
                    (false, false) => None,
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Serving a watch
// ---------------------------------------------------------------------------------------------

enum Start {
    /// Synthetic ADDED events for the current objects, then live changes.
    Current,
    /// Every retained change newer than this resourceVersion, then live changes.
    After(u64),
    /// Live changes only (`sendInitialEvents=false` without a resourceVersion).
    Now,
}

struct WatchRequest {
    start: Start,
    initial_events: bool,
    bookmarks: bool,
    timeout: Duration,
    filter: Filter,
}

fn parse_request(query: &[(String, String)]) -> Result<WatchRequest, Refused> {
    let param = |key: &str| {
        query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    let flag = |key: &str| param(key).map(|v| v == "true" || v == "1");
    let bad = |message: String| Err(refuse(400, &message, None));
    let bookmarks = flag("allowWatchBookmarks").unwrap_or(false);
    let send_initial = flag("sendInitialEvents");
    let rv = param("resourceVersion").unwrap_or("");
    let start = match (rv, send_initial) {
        (_, Some(true)) => Start::Current,
        ("" | "0", Some(false)) => Start::Now,
        ("" | "0", None) => Start::Current,
        (rv, _) => match rv.parse::<u64>() {
            Ok(rv) => Start::After(rv),
            Err(_) => return bad(format!("invalid resource version: {rv:?}")),
        },
    };
    if send_initial.is_some() {
        if param("resourceVersionMatch") != Some("NotOlderThan") {
            return Err(refuse(
                422,
                "resourceVersionMatch: Forbidden: sendInitialEvents requires setting \
                 resourceVersionMatch to NotOlderThan",
                None,
            ));
        }
        if send_initial == Some(true) && !bookmarks {
            return Err(refuse(
                422,
                "allowWatchBookmarks: Forbidden: sendInitialEvents requires \
                 allowWatchBookmarks=true",
                None,
            ));
        }
    }
    let timeout = match param("timeoutSeconds").filter(|s| !s.is_empty()) {
        None => DEFAULT_WATCH_TIMEOUT,
        Some(s) => match s.parse::<u64>() {
            Ok(0) => DEFAULT_WATCH_TIMEOUT,
            Ok(n) => Duration::from_secs(n),
            Err(_) => return bad(format!("invalid timeoutSeconds {s:?}")),
        },
    };
    let labels = match param("labelSelector")
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        None => None,
        Some(text) => match kube_fake_client::label_selector::parse_label_selector(text) {
            Ok(selector) => Some(selector),
            Err(e) => return bad(format!("unable to parse requirement: {e}")),
        },
    };
    let fields = match FieldSelector::parse(param("fieldSelector").unwrap_or("")) {
        Ok(fields) => fields,
        Err(e) => return bad(e),
    };
    Ok(WatchRequest {
        start,
        initial_events: send_initial == Some(true),
        bookmarks,
        timeout,
        filter: Filter { labels, fields },
    })
}

/// `GET <collection>?watch=true`.
pub(crate) async fn watch(
    state: &Arc<State>,
    info: &RecordedRequest,
    query: &[(String, String)],
) -> Response<Body> {
    let request = match parse_request(query) {
        Ok(request) => request,
        Err(response) => return *response,
    };
    let res = ResKey::of(info);
    if !lock(&state.hub).stores.contains_key(&res) {
        let _serialised = state.write_lock.lock().await;
        if let Err(response) = load_locked(state, info).await {
            return *response;
        }
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let in_scope = |obj: &Obj| {
        info.namespace
            .as_ref()
            .is_none_or(|ns| *ns == obj.namespace)
    };
    let mut pending = VecDeque::new();
    let (head, floor, id, kind, api_version, broken) = {
        let mut hub = lock(&state.hub);
        let head = hub.head_rv;
        let Some(store) = hub.stores.get(&res) else {
            return status_response(500, "the watched resource is not mirrored", None);
        };
        let (kind, api_version) = (store.kind.clone(), store.api_version.clone());
        let floor = match request.start {
            Start::Current => {
                let current = store.objects.values().filter(|o| in_scope(o));
                pending.extend(current.map(|o| Out::Initial(Arc::clone(o))));
                head
            }
            Start::Now => head,
            Start::After(rv) => {
                if rv < hub.compacted_rv {
                    let message = format!("too old resource version: {rv} ({})", hub.compacted_rv);
                    let event =
                        json!({"type": "ERROR", "object": status_body(410, &message, None)});
                    let mut line = event.to_string();
                    line.push('\n');
                    return crate::bytes_response(StatusCode::OK, Bytes::from(line));
                }
                let replay = hub.history.iter().filter(|e| e.rv > rv && e.res == res);
                pending.extend(
                    replay
                        .filter(|e| in_scope(&e.obj))
                        .map(|e| Out::Event(Arc::clone(e))),
                );
                rv
            }
        };
        hub.next_id += 1;
        let id = hub.next_id;
        // Subscribed before the watch counts as open: a `break_watches` that follows
        // `wait_for_watches` must reach it.
        let broken = state.breaks.subscribe();
        let watcher = Watcher {
            res,
            namespace: info.namespace.clone(),
            tx,
        };
        hub.watchers.insert(id, watcher);
        (head, floor, id, kind, api_version, broken)
    };
    state.watches_changed.notify_waiters();
    if request.bookmarks {
        pending.push_back(Out::Bookmark {
            rv: head.max(floor),
            initial_end: request.initial_events,
        });
    }
    let period = state.bookmark_interval;
    let stream = WatchStream {
        guard: WatcherGuard {
            state: Arc::clone(state),
            id,
        },
        rx,
        pending,
        filter: request.filter,
        floor,
        kind,
        api_version,
        bookmarks: request
            .bookmarks
            .then(|| tokio::time::interval_at(Instant::now() + period, period)),
        deadline: Instant::now() + request.timeout,
        broken,
        done: false,
    };
    Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(WatchBody::new(stream).boxed_unsync())
        .expect("response builds")
}

/// Unregisters a watch when its stream is dropped (ended, broken or disconnected).
struct WatcherGuard {
    state: Arc<State>,
    id: u64,
}

impl Drop for WatcherGuard {
    fn drop(&mut self) {
        lock(&self.state.hub).watchers.remove(&self.id);
        self.state.watches_changed.notify_waiters();
    }
}

enum Out {
    Initial(Arc<Obj>),
    Event(Arc<Event>),
    Bookmark { rv: u64, initial_end: bool },
}

enum Wake {
    Broken,
    Timeout,
    Event(Option<Arc<Event>>),
    Bookmark,
}

struct WatchStream {
    guard: WatcherGuard,
    rx: mpsc::UnboundedReceiver<Arc<Event>>,
    /// What is still to be sent, in order.
    pending: VecDeque<Out>,
    filter: Filter,
    /// Changes up to this resourceVersion are not sent.
    floor: u64,
    kind: String,
    api_version: String,
    bookmarks: Option<tokio::time::Interval>,
    deadline: Instant,
    broken: tokio::sync::watch::Receiver<u64>,
    done: bool,
}

fn push_line(buf: &mut BytesMut, kind: &str, object: &[u8]) {
    buf.put_slice(b"{\"type\":\"");
    buf.put_slice(kind.as_bytes());
    buf.put_slice(b"\",\"object\":");
    buf.put_slice(object);
    buf.put_slice(b"}\n");
}

impl WatchStream {
    /// Up to about [`FRAME_BYTES`] of pending events, `None` when none is left to send.
    fn render(&mut self) -> Option<Bytes> {
        let mut buf = BytesMut::new();
        while buf.len() < FRAME_BYTES {
            let Some(out) = self.pending.pop_front() else {
                break;
            };
            match out {
                Out::Initial(obj) => {
                    if self.filter.matches(&obj) {
                        push_line(&mut buf, "ADDED", &obj.json);
                    }
                }
                Out::Event(event) => {
                    if event.rv > self.floor
                        && let Some((kind, json)) = self.filter.transform(&event)
                    {
                        push_line(&mut buf, kind, &json);
                    }
                }
                Out::Bookmark { rv, initial_end } => {
                    let mut metadata = json!({"resourceVersion": rv.to_string()});
                    if initial_end {
                        metadata["annotations"] = json!({INITIAL_EVENTS_END: "true"});
                    }
                    let object = json!({
                        "kind": self.kind,
                        "apiVersion": self.api_version,
                        "metadata": metadata,
                    });
                    push_line(&mut buf, "BOOKMARK", object.to_string().as_bytes());
                }
            }
        }
        (!buf.is_empty()).then(|| buf.freeze())
    }

    /// A bookmark at the newest committed resourceVersion, after the changes up to it (which
    /// are all in the channel already: they were handed over before `head_rv` moved).
    fn queue_bookmark(&mut self) {
        let head = lock(&self.guard.state.hub).head_rv;
        while let Ok(event) = self.rx.try_recv() {
            self.pending.push_back(Out::Event(event));
        }
        let at = self
            .pending
            .iter()
            .take_while(|o| matches!(o, Out::Event(e) if e.rv <= head))
            .count();
        let rv = head.max(self.floor);
        self.pending.insert(
            at,
            Out::Bookmark {
                rv,
                initial_end: false,
            },
        );
    }

    async fn next_frame(mut self) -> (Option<Result<Frame<Bytes>, BoxError>>, WatchStream) {
        loop {
            if self.done {
                return (None, self);
            }
            if self.broken.has_changed().unwrap_or(false) {
                return self.fail();
            }
            if Instant::now() >= self.deadline {
                self.done = true;
                return (None, self);
            }
            if let Some(frame) = self.render() {
                return (Some(Ok(Frame::data(frame))), self);
            }
            let wake = {
                let WatchStream {
                    rx,
                    bookmarks,
                    deadline,
                    broken,
                    ..
                } = &mut self;
                let tick = async {
                    match bookmarks {
                        Some(interval) => {
                            interval.tick().await;
                        }
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    biased;
                    _ = broken.changed() => Wake::Broken,
                    _ = tokio::time::sleep_until(*deadline) => Wake::Timeout,
                    event = rx.recv() => Wake::Event(event),
                    _ = tick => Wake::Bookmark,
                }
            };
            match wake {
                Wake::Broken => return self.fail(),
                Wake::Timeout => {
                    self.done = true;
                    return (None, self);
                }
                Wake::Event(None) => {
                    self.done = true;
                    return (None, self);
                }
                Wake::Event(Some(event)) => {
                    self.pending.push_back(Out::Event(event));
                    while self.pending.len() < DRAIN_BATCH {
                        match self.rx.try_recv() {
                            Ok(event) => self.pending.push_back(Out::Event(event)),
                            Err(_) => break,
                        }
                    }
                }
                Wake::Bookmark => self.queue_bookmark(),
            }
        }
    }

    /// Ends the body with an error: hyper drops the connection mid-stream, as a broken
    /// connection would.
    fn fail(mut self) -> (Option<Result<Frame<Bytes>, BoxError>>, WatchStream) {
        self.done = true;
        let error = std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "watch broken by ApiServer::break_watches",
        );
        (Some(Err(Box::new(error))), self)
    }
}

type NextFrame =
    Pin<Box<dyn Future<Output = (Option<Result<Frame<Bytes>, BoxError>>, WatchStream)> + Send>>;

/// The streaming body of a watch.
struct WatchBody {
    next: Option<NextFrame>,
}

impl WatchBody {
    fn new(stream: WatchStream) -> WatchBody {
        WatchBody {
            next: Some(Box::pin(stream.next_frame())),
        }
    }
}

impl hyper::body::Body for WatchBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(next) = self.next.as_mut() else {
            return Poll::Ready(None);
        };
        let (frame, stream) = ready!(next.as_mut().poll(cx));
        self.next = match &frame {
            Some(Ok(_)) => Some(Box::pin(stream.next_frame())),
            _ => None,
        };
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.next.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(value: Value) -> Obj {
        Obj::new(&value)
    }

    #[test]
    fn field_selectors_read_equality_and_inequality() {
        let o = obj(json!({"metadata": {"name": "a", "namespace": "ns"}, "type": "Opaque"}));
        let sel = |s: &str| FieldSelector::parse(s).unwrap();
        assert!(sel("").matches(&o));
        assert!(sel("metadata.name=a").matches(&o));
        assert!(sel("metadata.name==a,metadata.namespace=ns").matches(&o));
        assert!(!sel("metadata.name!=a").matches(&o));
        assert!(sel("metadata.namespace!=other").matches(&o));
        assert!(sel("type=Opaque").matches(&o));
        assert!(!sel("type!=Opaque").matches(&o));
        assert!(sel("status.phase=").matches(&o));
        assert!(FieldSelector::parse("metadata.name").is_err());
    }

    #[test]
    fn selector_transitions_become_added_and_deleted() {
        let labelled = |app: &str, rv: &str| {
            Arc::new(obj(json!({"metadata": {
                "name": "a", "namespace": "ns", "resourceVersion": rv, "labels": {"app": app}
            }})))
        };
        let filter = Filter {
            labels: Some(kube_fake_client::label_selector::parse_label_selector("app=x").unwrap()),
            fields: FieldSelector::default(),
        };
        let event = |prev: &str, now: &str| Event {
            rv: 7,
            res: ResKey {
                group: String::new(),
                resource: "secrets".into(),
            },
            change: Change::Modified,
            obj: labelled(now, "7"),
            prev: Some(labelled(prev, "5")),
        };
        let kind = |e: &Event| filter.transform(e).map(|(k, _)| k);
        assert_eq!(kind(&event("x", "x")), Some("MODIFIED"));
        assert_eq!(kind(&event("y", "x")), Some("ADDED"));
        assert_eq!(kind(&event("y", "z")), None);
        let (k, json) = filter.transform(&event("x", "y")).unwrap();
        assert_eq!(k, "DELETED");
        let gone: Value = serde_json::from_slice(&json).unwrap();
        // The former state (still selected) with the change's resourceVersion.
        assert_eq!(gone["metadata"]["labels"]["app"], "x");
        assert_eq!(gone["metadata"]["resourceVersion"], "7");
    }
}
