//! The state `run` plans from, kept current by watches (the step between *observe* and *plan*
//! of the event-driven loop).
//!
//! Each watched kind — AWSIAMRoles, managed Secrets and, with namespace restrictions,
//! Namespaces — is fed by kube-runtime's watcher: one paged list, then a watch resumed from the
//! last resourceVersion (a clean end of a watch is resumed without a list), a relist on 410
//! Gone. An event only *wakes* the loop (the version counter of [`Store::subscribe`]); the pass
//! still plans over the whole state, so a missed or duplicated event costs nothing.
//!
//! The store is observation, not truth, and may lag. [`Store::observed`] refuses to hand out a
//! state until every kind has completed its first list, and while a watch is broken and not
//! yet relisted: passes then apply nothing. A watch that fails is dropped and, after a backoff,
//! started again with a full list, so a state is stale from the first error until that list
//! completes.
//!
//! It is lean: objects are kept as the planner reads them ([`ObservedRole`],
//! [`ObservedSecret::lean`]): no managedFields, no annotations but the controller's, and no
//! credential values — a Secret's data is checked when it arrives and only the verdict, the
//! non-secret keys and a digest stay.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasher as _, RandomState};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use hashbrown::HashTable;
use hashbrown::hash_table::Entry;
use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::controller::apply::{Written, WrittenKind};
use crate::controller::observe::{ObserveOptions, managed_selector};
use crate::domain::crd::AWSIAMRole;
use crate::domain::model::{ObjectKey, Observed, ObservedRole, ObservedSecret};

/// First wait before a failed watch is started again; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long an own write may stay unseen by the watch before the state is trusted again.
const EXPECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Objects per page of a watch's list: one page of whole objects (credentials included) is
/// decoded at a time, so a smaller page keeps the transient peak, and with it the resident
/// memory a long-running process keeps, small.
const LIST_PAGE_SIZE: u32 = 100;
/// Server-side timeout of each watch request (kube-runtime resumes it from the last
/// resourceVersion when it ends).
const WATCH_TIMEOUT_SECONDS: u32 = 290;

/// The kinds the store watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WatchedKind {
    Roles,
    Secrets,
    Namespaces,
}

impl WatchedKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WatchedKind::Roles => "awsiamroles",
            WatchedKind::Secrets => "secrets",
            WatchedKind::Namespaces => "namespaces",
        }
    }
}

impl fmt::Display for WatchedKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the store cannot give a state to plan from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stale {
    /// A kind has not completed its first list yet.
    NotSynced(WatchedKind),
    /// A kind's watch failed and has not been relisted yet.
    Broken { kind: WatchedKind, error: String },
    /// A kind is being listed again (after an error or a 410 Gone).
    Relisting(WatchedKind),
}

impl fmt::Display for Stale {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stale::NotSynced(kind) => write!(f, "the first list of {kind} has not completed"),
            Stale::Broken { kind, error } => {
                write!(
                    f,
                    "the watch of {kind} is broken and not relisted yet: {error}"
                )
            }
            Stale::Relisting(kind) => write!(f, "{kind} are being listed again"),
        }
    }
}

/// Where one kind stands.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
enum Phase {
    /// Never listed completely.
    #[default]
    Unsynced,
    /// Listed, and the watch has reported no error since.
    Fresh,
    /// A relist is under way; the objects from before it are kept until it completes.
    Relisting,
    /// The watch failed; it is started again (with a list) after a backoff.
    Broken(String),
}

/// What a kept object is found by: its namespace (empty for a cluster-scoped object) and name.
pub trait Keyed {
    fn key(&self) -> (&str, &str);
}

impl Keyed for ObservedRole {
    fn key(&self) -> (&str, &str) {
        (&self.namespace, &self.name)
    }
}

impl Keyed for ObservedSecret {
    fn key(&self) -> (&str, &str) {
        (&self.namespace, &self.name)
    }
}

impl<T: Keyed> Keyed for Arc<T> {
    fn key(&self) -> (&str, &str) {
        (**self).key()
    }
}

/// An object kept with its key beside it (a Namespace's annotations).
impl<T> Keyed for (ObjectKey, T) {
    fn key(&self) -> (&str, &str) {
        (&self.0.0, &self.0.1)
    }
}

/// One kind's objects, found by the key each object carries. A map from `(namespace, name)`
/// would keep a second copy of both strings per object, which at 10,000 roles is a few hundred
/// bytes per role of the watched state.
struct Objects<T> {
    table: HashTable<T>,
    hasher: RandomState,
}

impl<T> Default for Objects<T> {
    fn default() -> Self {
        Objects {
            table: HashTable::new(),
            hasher: RandomState::new(),
        }
    }
}

impl<T: Keyed> Objects<T> {
    fn get(&self, key: (&str, &str)) -> Option<&T> {
        self.table
            .find(self.hasher.hash_one(key), |o| o.key() == key)
    }

    /// Keeps `object`, replacing the one of its key; returns the replaced one.
    fn insert(&mut self, object: T) -> Option<T> {
        let Objects { table, hasher } = self;
        let hash = hasher.hash_one(object.key());
        match table.entry(
            hash,
            |o| o.key() == object.key(),
            |o| hasher.hash_one(o.key()),
        ) {
            Entry::Occupied(mut kept) => Some(std::mem::replace(kept.get_mut(), object)),
            Entry::Vacant(slot) => {
                slot.insert(object);
                None
            }
        }
    }

    fn remove(&mut self, key: (&str, &str)) -> Option<T> {
        self.table
            .find_entry(self.hasher.hash_one(key), |o| o.key() == key)
            .ok()
            .map(|kept| kept.remove().0)
    }

    fn iter(&self) -> impl Iterator<Item = &T> {
        self.table.iter()
    }

    fn len(&self) -> usize {
        self.table.len()
    }
}

/// The same objects under the same keys.
impl<T: Keyed + PartialEq> PartialEq for Objects<T> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().all(|o| other.get(o.key()) == Some(o))
    }
}

/// One kind's objects and phase.
struct Kind<T> {
    phase: Phase,
    objects: Objects<T>,
    /// Objects of a relist under way, swapped in when it completes.
    buffer: Option<Objects<T>>,
    /// The controller's own writes the watch has not shown yet: the resourceVersion each one
    /// replaced (`None`: it created the object), and when it was made.
    expected: HashMap<ObjectKey, (Option<String>, Instant)>,
}

impl<T> Default for Kind<T> {
    fn default() -> Self {
        Kind {
            phase: Phase::Unsynced,
            objects: Objects::default(),
            buffer: None,
            expected: HashMap::new(),
        }
    }
}

/// The resourceVersion of a kept object.
pub trait Versioned {
    fn resource_version(&self) -> Option<&str>;
}

impl Versioned for ObservedRole {
    fn resource_version(&self) -> Option<&str> {
        self.resource_version.as_deref()
    }
}

impl Versioned for ObservedSecret {
    fn resource_version(&self) -> Option<&str> {
        self.resource_version.as_deref()
    }
}

impl<T: Versioned> Versioned for Arc<T> {
    fn resource_version(&self) -> Option<&str> {
        (**self).resource_version()
    }
}

impl<T: Versioned> Versioned for (ObjectKey, T) {
    fn resource_version(&self) -> Option<&str> {
        self.1.resource_version()
    }
}

impl Versioned for BTreeMap<String, String> {
    fn resource_version(&self) -> Option<&str> {
        None
    }
}

impl<T: Versioned + Keyed> Kind<T> {
    /// Whether the kept object still is the one an own write replaced (or, for a create, is
    /// still missing): the watch has not delivered that write yet.
    fn lags(&self, key: &ObjectKey, replaced: Option<&str>) -> bool {
        let current = self.objects.get((&key.0, &key.1));
        match replaced {
            None => current.is_none(),
            Some(rv) => current.is_some_and(|o| o.resource_version() == Some(rv)),
        }
    }

    /// Keys whose own writes the watch has not shown yet; settled expectations are dropped,
    /// and so are those older than [`EXPECT_TIMEOUT`] (a watch never leaves a write out for
    /// long: a relist shows every object).
    fn lagging(&mut self) -> Vec<ObjectKey> {
        let mut lagging = Vec::new();
        let expected = std::mem::take(&mut self.expected);
        for (key, (replaced, at)) in expected {
            if at.elapsed() < EXPECT_TIMEOUT && self.lags(&key, replaced.as_deref()) {
                lagging.push(key.clone());
                self.expected.insert(key, (replaced, at));
            }
        }
        lagging
    }
}

impl<T: PartialEq + Versioned + Keyed> Kind<T> {
    /// Applies one watcher event; returns whether the state a pass would see changed.
    fn apply(&mut self, event: Event<T>) -> bool {
        match event {
            Event::Init => {
                self.buffer = Some(Objects::default());
                if self.phase == Phase::Fresh {
                    self.phase = Phase::Relisting;
                }
                false
            }
            Event::InitApply(object) => {
                self.buffer
                    .get_or_insert_with(Objects::default)
                    .insert(object);
                false
            }
            Event::InitDone => {
                let listed = self.buffer.take().unwrap_or_default();
                let changed = listed != self.objects || self.phase != Phase::Fresh;
                self.objects = listed;
                self.phase = Phase::Fresh;
                changed
            }
            Event::Apply(object) => {
                if !self.expected.is_empty() {
                    let (namespace, name) = object.key();
                    let key = (namespace.to_string(), name.to_string());
                    let settled = self.expected.get(&key).is_some_and(|(replaced, _)| {
                        replaced.as_deref() != object.resource_version()
                    });
                    if settled {
                        self.expected.remove(&key);
                    }
                }
                if let Some(buffer) = &mut self.buffer {
                    buffer.insert(object);
                    return false;
                }
                let changed = self.objects.get(object.key()) != Some(&object);
                self.objects.insert(object);
                changed
            }
            Event::Delete(object) => {
                let (namespace, name) = object.key();
                self.expected
                    .remove(&(namespace.to_string(), name.to_string()));
                if let Some(buffer) = &mut self.buffer {
                    buffer.remove(object.key());
                    return false;
                }
                self.objects.remove(object.key()).is_some()
            }
        }
    }

    fn broken(&mut self, error: String) {
        self.phase = Phase::Broken(error);
        self.buffer = None;
    }

    fn stale(&self, kind: WatchedKind) -> Option<Stale> {
        match &self.phase {
            Phase::Fresh => None,
            Phase::Unsynced => Some(Stale::NotSynced(kind)),
            Phase::Relisting => Some(Stale::Relisting(kind)),
            Phase::Broken(error) => Some(Stale::Broken {
                kind,
                error: error.clone(),
            }),
        }
    }
}

#[derive(Default)]
struct Inner {
    roles: Kind<Arc<ObservedRole>>,
    secrets: Kind<Arc<ObservedSecret>>,
    /// Only with namespace restrictions: each Namespace's annotations under `("", name)`.
    namespaces: Option<Kind<(ObjectKey, BTreeMap<String, String>)>>,
}

impl Inner {
    fn stale(&self) -> Option<Stale> {
        self.roles
            .stale(WatchedKind::Roles)
            .or_else(|| self.secrets.stale(WatchedKind::Secrets))
            .or_else(|| {
                self.namespaces
                    .as_ref()
                    .and_then(|n| n.stale(WatchedKind::Namespaces))
            })
    }
}

/// The watched state, shared by the watch tasks and the loop.
pub struct Store {
    inner: Mutex<Inner>,
    /// Bumped on every change a pass would see; the loop waits on it.
    version: watch::Sender<u64>,
    /// Since when the state is stale (for logs), `None` while it is fresh.
    stale_since: Mutex<Option<Instant>>,
}

impl Store {
    /// An empty, unsynced store; `namespaces` when namespace restrictions are on.
    pub fn new(namespaces: bool) -> Arc<Self> {
        let inner = Inner {
            namespaces: namespaces.then(Kind::default),
            ..Inner::default()
        };
        Arc::new(Store {
            inner: Mutex::new(inner),
            version: watch::channel(0).0,
            // Stale until every kind has been listed once.
            stale_since: Mutex::new(Some(Instant::now())),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A receiver whose value changes whenever the state a pass would see changes (including
    /// when it turns fresh or stale).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    fn bump(&self) {
        self.version.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Remembers the controller's own writes: until the watch shows each of them, the object
    /// (AWSIAMRole and Secret of that name) is left out of the state, so a pass never plans
    /// from what a write already replaced (which would cost a second AssumeRole and a
    /// conflicting write).
    pub fn expect(&self, written: &[Written]) {
        if written.is_empty() {
            return;
        }
        let mut inner = self.lock();
        let now = Instant::now();
        for w in written {
            let key = (w.namespace.clone(), w.name.clone());
            let kind_expected = match w.kind {
                WrittenKind::Secret => &mut inner.secrets.expected,
                WrittenKind::Role => &mut inner.roles.expected,
            };
            // The first write of a series replaced what the state still shows.
            kind_expected
                .entry(key)
                .or_insert_with(|| (w.replaced.clone(), now));
        }
    }

    /// The state to plan from, or why there is none. It holds no credential values; objects
    /// whose own writes the watch has not shown yet are left out (the next change plans them).
    pub fn observed(&self) -> Result<Observed, Stale> {
        let mut inner = self.lock();
        if let Some(stale) = inner.stale() {
            return Err(stale);
        }
        let mut lagging_keys = inner.roles.lagging();
        lagging_keys.extend(inner.secrets.lagging());
        let lagging: HashSet<(&str, &str)> = lagging_keys
            .iter()
            .map(|(ns, name)| (ns.as_str(), name.as_str()))
            .collect();
        if !lagging.is_empty() {
            tracing::debug!(
                objects = lagging.len(),
                "left out of this pass until the watch shows the controller's own writes"
            );
        }
        let roles = kept(&inner.roles.objects, &lagging);
        let secrets = kept(&inner.secrets.objects, &lagging);
        let namespaces = inner
            .namespaces
            .as_ref()
            .map(|n| {
                n.objects
                    .iter()
                    .map(|((_, name), annotations)| (name.clone(), annotations.clone()))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Observed::new(roles, secrets, namespaces))
    }

    /// Whether every kind has completed its first list (it may be stale again since).
    pub fn synced(&self) -> bool {
        let inner = self.lock();
        let listed = |phase: &Phase| *phase != Phase::Unsynced;
        listed(&inner.roles.phase)
            && listed(&inner.secrets.phase)
            && inner.namespaces.as_ref().is_none_or(|n| listed(&n.phase))
    }

    fn update(&self, change: impl FnOnce(&mut Inner) -> bool) {
        let (changed, stale) = {
            let mut inner = self.lock();
            let changed = change(&mut inner);
            (changed, inner.stale())
        };
        let mut since = self.stale_since.lock().unwrap_or_else(|e| e.into_inner());
        let turned = match (&stale, since.is_some()) {
            (Some(why), false) => {
                tracing::warn!(reason = %why, "watched state is stale: passes apply nothing until it is listed again");
                *since = Some(Instant::now());
                true
            }
            (None, true) => {
                let for_ = since.take().map(|s| s.elapsed()).unwrap_or_default();
                tracing::info!(
                    stale_for_seconds = for_.as_secs_f64(),
                    "watched state is complete: every kind listed, watches running"
                );
                true
            }
            _ => false,
        };
        drop(since);
        if turned && stale.is_none() {
            // A list has just completed: its pages of whole objects are freed.
            crate::serve::memory::release_free();
        }
        if changed || turned {
            self.bump();
        }
    }

    /// Starts the watches. They run until the returned set is dropped or aborted.
    pub fn watch(self: &Arc<Self>, client: &Client, options: &ObserveOptions) -> JoinSet<()> {
        let mut tasks = JoinSet::new();
        let ns = options.namespace.as_deref();
        let resource = ApiResource::erase::<AWSIAMRole>(&());
        let roles: Api<DynamicObject> = match ns {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
            None => Api::all_with(client.clone(), &resource),
        };
        let secret_resource = ApiResource::erase::<k8s_openapi::api::core::v1::Secret>(&());
        let secrets: Api<DynamicObject> = match ns {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &secret_resource),
            None => Api::all_with(client.clone(), &secret_resource),
        };
        let config = || {
            watcher::Config::default()
                .timeout(WATCH_TIMEOUT_SECONDS)
                .page_size(LIST_PAGE_SIZE)
        };
        tasks.spawn(feed(
            self.clone(),
            WatchedKind::Roles,
            roles,
            config(),
            |inner: &mut Inner| &mut inner.roles,
            lean_role,
        ));
        tasks.spawn(feed(
            self.clone(),
            WatchedKind::Secrets,
            secrets,
            config().labels(&managed_selector()),
            |inner: &mut Inner| &mut inner.secrets,
            lean_secret,
        ));
        if self.lock().namespaces.is_some() {
            let namespaces: Api<DynamicObject> =
                Api::all_with(client.clone(), &ApiResource::erase::<Namespace>(&()));
            let mut config = config();
            if let Some(ns) = ns {
                config = config.fields(&format!("metadata.name={ns}"));
            }
            tasks.spawn(feed(
                self.clone(),
                WatchedKind::Namespaces,
                namespaces,
                config,
                |inner: &mut Inner| inner.namespaces.get_or_insert_with(Kind::default),
                lean_namespace,
            ));
        }
        tasks
    }
}

/// Clones of the objects whose keys are not `left_out`.
fn kept<T: Clone + Keyed>(objects: &Objects<T>, left_out: &HashSet<(&str, &str)>) -> Vec<T> {
    objects
        .iter()
        .filter(|o| left_out.is_empty() || !left_out.contains(&o.key()))
        .cloned()
        .collect()
}

/// Keys and lean forms of the three kinds. `None` drops an object that cannot be identified
/// (a real API server never sends one).
fn lean_role(object: DynamicObject) -> Option<Arc<ObservedRole>> {
    let value = serde_json::to_value(object).ok()?;
    let role = ObservedRole::from_value(&value, "")
        .inspect_err(
            |e| tracing::warn!(error = %e, "ignoring an AWSIAMRole that cannot be identified"),
        )
        .ok()?;
    Some(Arc::new(role))
}

fn lean_secret(object: DynamicObject) -> Option<Arc<ObservedSecret>> {
    let value = serde_json::to_value(object).ok()?;
    let secret = ObservedSecret::from_value(&value, "")
        .inspect_err(
            |e| tracing::warn!(error = %e, "ignoring a managed Secret that cannot be decoded"),
        )
        .ok()
        .map(crate::domain::secret::lean)?;
    Some(Arc::new(secret))
}

fn lean_namespace(object: DynamicObject) -> Option<(ObjectKey, BTreeMap<String, String>)> {
    let name = object.metadata.name?;
    let annotations = object.metadata.annotations.unwrap_or_default();
    Some(((String::new(), name), annotations))
}

/// Feeds one kind from its watcher until the task is aborted. A watch error marks the kind
/// broken and drops the stream; after a backoff a new watcher lists again, which makes the
/// kind fresh once that list completes.
async fn feed<T: PartialEq + Versioned + Keyed + Send + 'static>(
    store: Arc<Store>,
    kind: WatchedKind,
    api: Api<DynamicObject>,
    config: watcher::Config,
    slot: fn(&mut Inner) -> &mut Kind<T>,
    lean: fn(DynamicObject) -> Option<T>,
) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let stream = watcher::watcher(api.clone(), config.clone());
        futures::pin_mut!(stream);
        let error = loop {
            match stream.next().await {
                Some(Ok(event)) => {
                    let listed = matches!(event, Event::InitDone);
                    let event = lean_event(event, lean);
                    store.update(|inner| match event {
                        Some(event) => slot(inner).apply(event),
                        None => false,
                    });
                    if listed {
                        backoff = FIRST_BACKOFF;
                        tracing::debug!(%kind, "listed; watching for changes");
                    }
                }
                Some(Err(e)) => break e.to_string(),
                None => break "the watch stream ended".to_string(),
            }
        };
        tracing::warn!(%kind, error = %error, retry_in = ?backoff, "watch failed; listing again after a backoff");
        store.update(|inner| {
            slot(inner).broken(error);
            false
        });
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// The event with its object in lean form; `None` when the object cannot be identified.
fn lean_event<T>(
    event: Event<DynamicObject>,
    lean: fn(DynamicObject) -> Option<T>,
) -> Option<Event<T>> {
    Some(match event {
        Event::Init => Event::Init,
        Event::InitDone => Event::InitDone,
        Event::InitApply(o) => Event::InitApply(lean(o)?),
        Event::Apply(o) => Event::Apply(lean(o)?),
        Event::Delete(o) => Event::Delete(lean(o)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> ObjectKey {
        ("ns".into(), name.into())
    }

    #[test]
    fn a_relist_replaces_the_objects_only_when_it_completes() {
        let mut kind: Kind<(ObjectKey, u32)> = Kind::default();
        assert_eq!(
            kind.stale(WatchedKind::Roles),
            Some(Stale::NotSynced(WatchedKind::Roles))
        );
        assert!(!kind.apply(Event::Init));
        assert!(!kind.apply(Event::InitApply((key("a"), 1))));
        assert_eq!(kind.objects.len(), 0, "listed objects wait for InitDone");
        assert!(kind.apply(Event::InitDone));
        assert_eq!(kind.stale(WatchedKind::Roles), None);
        assert_eq!(kind.objects.get(("ns", "a")), Some(&(key("a"), 1)));

        assert!(kind.apply(Event::Apply((key("b"), 2))));
        assert!(
            !kind.apply(Event::Apply((key("b"), 2))),
            "an unchanged object wakes nothing"
        );
        assert!(kind.apply(Event::Delete((key("a"), 1))));
        assert!(!kind.apply(Event::Delete((key("a"), 1))));

        // A relist (410 Gone): stale until it completes; objects it no longer lists are gone.
        assert!(!kind.apply(Event::Init));
        assert_eq!(
            kind.stale(WatchedKind::Roles),
            Some(Stale::Relisting(WatchedKind::Roles))
        );
        assert!(!kind.apply(Event::InitApply((key("c"), 3))));
        assert!(!kind.apply(Event::Apply((key("d"), 4))));
        assert_eq!(
            kind.objects.len(),
            1,
            "the old state is kept during the relist"
        );
        assert!(kind.apply(Event::InitDone));
        let mut names: Vec<_> = kind.objects.iter().map(|(k, _)| k.1.clone()).collect();
        names.sort();
        assert_eq!(names, ["c", "d"]);
    }

    impl Versioned for u32 {
        fn resource_version(&self) -> Option<&str> {
            None
        }
    }

    fn secret(name: &str, rv: &str) -> Arc<ObservedSecret> {
        let s = ObservedSecret {
            namespace: "ns".into(),
            name: name.into(),
            resource_version: Some(rv.into()),
            labels: BTreeMap::from([
                ("heritage".into(), "kube-aws-iam-controller".into()),
                ("type".into(), "awsiamrole".into()),
            ]),
            ..ObservedSecret::default()
        };
        Arc::new(s)
    }

    fn role(name: &str, rv: &str) -> Arc<ObservedRole> {
        let r = ObservedRole {
            namespace: "ns".into(),
            name: name.into(),
            resource_version: Some(rv.into()),
            ..ObservedRole::default()
        };
        Arc::new(r)
    }

    fn written(kind: WrittenKind, name: &str, replaced: Option<&str>) -> Written {
        Written {
            kind,
            namespace: "ns".into(),
            name: name.into(),
            replaced: replaced.map(str::to_string),
        }
    }

    fn names(observed: &Observed) -> (Vec<String>, Vec<String>) {
        let mut roles: Vec<String> = observed.roles.iter().map(|r| r.name.clone()).collect();
        let mut secrets: Vec<String> = observed.secrets.iter().map(|s| s.name.clone()).collect();
        roles.sort();
        secrets.sort();
        (roles, secrets)
    }

    #[test]
    fn own_writes_leave_their_objects_out_until_the_watch_shows_them() {
        let store = Store::new(false);
        store.update(|inner| {
            inner.roles.apply(Event::Init);
            for (name, rv) in [("a", "1"), ("b", "2"), ("c", "3")] {
                inner.roles.apply(Event::InitApply(role(name, rv)));
            }
            inner.roles.apply(Event::InitDone);
            inner.secrets.apply(Event::Init);
            inner.secrets.apply(Event::InitApply(secret("b", "4")));
            inner.secrets.apply(Event::InitApply(secret("c", "5")));
            inner.secrets.apply(Event::InitDone)
        });
        // a: Secret created; b: Secret replaced; c: status patched.
        store.expect(&[
            written(WrittenKind::Secret, "a", None),
            written(WrittenKind::Role, "a", Some("1")),
            written(WrittenKind::Secret, "b", Some("4")),
            written(WrittenKind::Role, "c", Some("3")),
        ]);
        let lagging = store.observed().unwrap();
        assert_eq!(
            names(&lagging),
            (vec![], vec![]),
            "every key waits for its write"
        );

        // The Secret of a arrives, its status not yet: a still waits.
        store.update(|inner| inner.secrets.apply(Event::Apply(secret("a", "6"))));
        assert_eq!(names(&store.observed().unwrap()).0, Vec::<String>::new());
        store.update(|inner| inner.roles.apply(Event::Apply(role("a", "7"))));
        // An event still showing the replaced version settles nothing.
        store.update(|inner| inner.secrets.apply(Event::Apply(secret("b", "4"))));
        store.update(|inner| inner.roles.apply(Event::Apply(role("c", "8"))));
        assert_eq!(
            names(&store.observed().unwrap()),
            (vec!["a".into(), "c".into()], vec!["a".into(), "c".into()])
        );
        // A Secret deleted after the write settles it too.
        store.update(|inner| inner.secrets.apply(Event::Delete(secret("b", "4"))));
        assert_eq!(names(&store.observed().unwrap()).0, ["a", "b", "c"]);

        // A write whose event arrived before the pass reported it holds nothing back.
        store.update(|inner| inner.secrets.apply(Event::Apply(secret("c", "9"))));
        store.expect(&[written(WrittenKind::Secret, "c", Some("5"))]);
        assert_eq!(names(&store.observed().unwrap()).1, ["a", "c"]);
        assert!(store.lock().secrets.expected.is_empty());

        // An expectation the watch never settles stops holding the object back.
        store.expect(&[written(WrittenKind::Secret, "z", None)]);
        store
            .lock()
            .secrets
            .expected
            .values_mut()
            .for_each(|(_, at)| {
                *at = Instant::now() - EXPECT_TIMEOUT;
            });
        store.observed().unwrap();
        assert!(store.lock().secrets.expected.is_empty());
    }

    fn dynamic(value: serde_json::Value) -> DynamicObject {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn objects_are_kept_lean_and_keyed_by_namespace_and_name() {
        let role = lean_role(dynamic(serde_json::json!({
            "apiVersion": "zalando.org/v1", "kind": "AWSIAMRole",
            "metadata": {"name": "app", "namespace": "team", "uid": "u1", "resourceVersion": "7",
                         "managedFields": [{"manager": "kubectl"}]},
            "spec": {"roleReference": ["not a string"]}
        })))
        .unwrap();
        assert_eq!(role.key(), ("team", "app"));
        assert_eq!(
            (role.uid.as_str(), role.resource_version.as_deref()),
            ("u1", Some("7"))
        );
        assert!(
            role.spec.is_err(),
            "an undecodable spec is kept as its error"
        );

        let data = crate::domain::secret::encode(
            &crate::domain::secret::Credentials {
                access_key_id: "ASIAKEPT".into(),
                secret_access_key: "never-kept".into(),
                session_token: "token-never-kept".into(),
                expiration: "2026-11-26T23:00:00Z".parse().unwrap(),
            },
            "arn:aws:iam::123456789012:role/app",
            3,
        );
        use base64::Engine as _;
        let data: serde_json::Map<String, serde_json::Value> = data
            .into_iter()
            .map(|(k, v)| {
                (
                    k,
                    base64::engine::general_purpose::STANDARD.encode(v).into(),
                )
            })
            .collect();
        let secret = lean_secret(dynamic(serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "app", "namespace": "team", "resourceVersion": "8",
                         "labels": {"heritage": "kube-aws-iam-controller", "type": "awsiamrole"}},
            "data": data
        })))
        .unwrap();
        assert_eq!(secret.key(), ("team", "app"));
        assert!(secret.is_managed() && secret.data.is_empty());
        assert_eq!(
            crate::domain::secret::decode(&secret).unwrap().generation,
            3
        );
        assert!(!format!("{secret:?}").contains("never-kept"));

        let (k, annotations) = lean_namespace(dynamic(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "team", "annotations": {"a": "b"}}
        })))
        .unwrap();
        assert_eq!(k, (String::new(), "team".to_string()));
        assert_eq!(annotations["a"], "b");

        // Events carry their object in lean form; list markers pass through.
        let event = lean_event(
            Event::Apply(dynamic(serde_json::json!({
                "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}
            }))),
            lean_namespace,
        );
        assert!(matches!(event, Some(Event::Apply(((_, n), _))) if n == "x"));
        assert!(matches!(
            lean_event(Event::Init, lean_namespace),
            Some(Event::Init)
        ));
        assert!(matches!(
            lean_event(Event::InitDone, lean_namespace),
            Some(Event::InitDone)
        ));
        let nameless =
            dynamic(serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {}}));
        assert!(lean_event(Event::Delete(nameless), lean_namespace).is_none());
    }

    #[test]
    fn objects_are_found_replaced_and_removed_by_their_own_key() {
        let mut objects = Objects::default();
        assert_eq!(objects.len(), 0);
        assert_eq!(objects.insert((key("a"), 1)), None);
        assert_eq!(objects.insert((("other".into(), "a".into()), 2)), None);
        assert_eq!(objects.insert((key("a"), 3)), Some((key("a"), 1)));
        assert_eq!(objects.len(), 2);
        assert_eq!(objects.get(("ns", "a")), Some(&(key("a"), 3)));
        assert_eq!(objects.get(("other", "a")).map(|o| o.1), Some(2));
        assert_eq!(objects.get(("ns", "b")), None);

        let mut same = Objects::default();
        same.insert((("other".into(), "a".into()), 2));
        assert!(same != objects, "fewer objects");
        same.insert((key("a"), 4));
        assert!(same != objects, "another object under the same key");
        same.insert((key("a"), 3));
        assert!(same == objects);
        same.remove(("ns", "a"));
        same.insert((key("b"), 3));
        assert!(same != objects, "the same count under other keys");

        assert_eq!(objects.remove(("ns", "a")), Some((key("a"), 3)));
        assert_eq!(objects.remove(("ns", "a")), None);
        assert_eq!(objects.len(), 1);
    }

    #[test]
    fn stale_states_say_which_kind_and_why() {
        assert_eq!(
            Stale::NotSynced(WatchedKind::Roles).to_string(),
            "the first list of awsiamroles has not completed"
        );
        let broken = Stale::Broken {
            kind: WatchedKind::Secrets,
            error: "connection reset".into(),
        };
        assert_eq!(
            broken.to_string(),
            "the watch of secrets is broken and not relisted yet: connection reset"
        );
        assert_eq!(
            Stale::Relisting(WatchedKind::Namespaces).to_string(),
            "namespaces are being listed again"
        );
    }

    #[test]
    fn a_broken_watch_is_stale_until_a_complete_list() {
        let mut kind: Kind<(ObjectKey, u32)> = Kind::default();
        kind.apply(Event::Init);
        kind.apply(Event::InitDone);
        kind.broken("connection reset".into());
        assert!(matches!(
            kind.stale(WatchedKind::Secrets),
            Some(Stale::Broken { .. })
        ));
        // Events of the new watcher's list do not heal it before InitDone.
        kind.apply(Event::Init);
        kind.apply(Event::InitApply((key("a"), 1)));
        assert!(kind.stale(WatchedKind::Secrets).is_some());
        assert!(kind.apply(Event::InitDone), "turning fresh is a change");
        assert_eq!(kind.stale(WatchedKind::Secrets), None);
    }

    #[test]
    fn an_identical_relist_is_still_a_change_when_it_heals() {
        let mut kind: Kind<(ObjectKey, u32)> = Kind::default();
        kind.apply(Event::Init);
        kind.apply(Event::InitApply((key("a"), 1)));
        kind.apply(Event::InitDone);
        kind.apply(Event::Init);
        kind.apply(Event::InitApply((key("a"), 1)));
        assert!(kind.apply(Event::InitDone));
        // A relist of a fresh kind with the same objects changes nothing.
        kind.phase = Phase::Fresh;
        let mut same = Objects::default();
        same.insert((key("a"), 1));
        kind.buffer = Some(same);
        assert!(!kind.apply(Event::InitDone));
    }

    #[test]
    fn the_store_hands_out_nothing_before_every_kind_listed() {
        let store = Store::new(true);
        assert_eq!(store.observed(), Err(Stale::NotSynced(WatchedKind::Roles)));
        store.update(|inner| {
            inner.roles.apply(Event::Init);
            inner.roles.apply(Event::InitDone)
        });
        store.update(|inner| {
            inner.secrets.apply(Event::Init);
            inner.secrets.apply(Event::InitDone)
        });
        assert_eq!(
            store.observed(),
            Err(Stale::NotSynced(WatchedKind::Namespaces))
        );
        assert!(!store.synced());
        let before = *store.subscribe().borrow();
        store.update(|inner| {
            let ns = inner.namespaces.as_mut().unwrap();
            ns.apply(Event::Init);
            ns.apply(Event::InitApply((
                (String::new(), "team".into()),
                BTreeMap::from([("a".into(), "b".into())]),
            )));
            ns.apply(Event::InitDone)
        });
        assert!(store.synced());
        assert_ne!(
            *store.subscribe().borrow(),
            before,
            "turning fresh wakes the loop"
        );
        let observed = store.observed().unwrap();
        assert_eq!(observed.namespaces["team"]["a"], "b");
    }
}
