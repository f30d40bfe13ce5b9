//! Observation: the reads of the cluster a pass plans from. Paged lists of AWSIAMRoles and managed
//! Secrets (and Namespaces with namespace restrictions), decoded object by object, plus a
//! metadata-only GET for each name an AWSIAMRole needs that no managed Secret holds.
//!
//! Any failed read fails the whole observation: a pass that did not see everything applies
//! nothing, above all no deletes.

use std::collections::{BTreeMap, BTreeSet};

use futures::StreamExt as _;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{ListParams, ObjectList};
use kube::{Api, Client, Resource};
use serde_json::Value;

use crate::domain::crd::AWSIAMRole;
use crate::domain::model::{HERITAGE_LABEL, HERITAGE_VALUE, TYPE_LABEL, TYPE_VALUE};
use crate::domain::model::{Observed, ObservedRole, ObservedSecret};
use crate::{Error, Result};

/// Page size of every list.
pub const PAGE_SIZE: u32 = 500;
/// How often a list restarts after its continue token expired (410 Gone).
const MAX_RESTARTS: usize = 3;
/// Concurrent GETs when looking for name conflicts.
const GET_CONCURRENCY: usize = 16;

#[derive(Clone, Debug, Default)]
pub struct ObserveOptions {
    /// `--namespace`: only this namespace.
    pub namespace: Option<String>,
    /// Read Namespaces' annotations (namespace restrictions are on).
    pub namespaces: bool,
    /// Page size; 0 means [`PAGE_SIZE`].
    pub page_size: u32,
}

/// The label selector of managed Secrets.
pub fn managed_selector() -> String {
    format!("{HERITAGE_LABEL}={HERITAGE_VALUE},{TYPE_LABEL}={TYPE_VALUE}")
}

/// Reads everything a pass plans from.
pub async fn observe(client: &Client, options: &ObserveOptions) -> Result<Observed> {
    let page = if options.page_size == 0 {
        PAGE_SIZE
    } else {
        options.page_size
    };
    let ns = options.namespace.as_deref();
    let roles_path = collection::<AWSIAMRole>(client, ns);
    let secrets_path = collection::<Secret>(client, ns);
    let roles = list_all(client, &roles_path, None, page, |item| {
        ObservedRole::from_value(&item, "")
            .inspect_err(
                |e| tracing::warn!(error = %e, "ignoring an AWSIAMRole that cannot be identified"),
            )
            .ok()
    })
    .await?;
    let mut secrets = list_all(client, &secrets_path, Some(&managed_selector()), page, |item| {
        ObservedSecret::from_value(&item, "")
            .inspect_err(|e| tracing::warn!(error = %e, "ignoring a managed Secret that cannot be decoded"))
            .ok()
    })
    .await?;
    let namespaces = if options.namespaces {
        namespace_annotations(client, ns, page).await?
    } else {
        BTreeMap::new()
    };
    let conflicts = holders(client, &roles, &secrets).await?;
    secrets.extend(conflicts);
    Ok(Observed::new(roles, secrets, namespaces))
}

/// The Secrets (metadata only) holding the names of AWSIAMRoles that have no managed Secret in
/// `secrets`. A role whose spec is unusable is blocked whatever holds its name: no GET for it.
async fn holders(
    client: &Client,
    roles: &[ObservedRole],
    secrets: &[ObservedSecret],
) -> Result<Vec<ObservedSecret>> {
    let held: BTreeSet<(&str, &str)> = secrets
        .iter()
        .map(|s| (s.namespace.as_str(), s.name.as_str()))
        .collect();
    let unserved: Vec<(String, String)> = roles
        .iter()
        .filter(|r| r.spec.is_ok() && !held.contains(&(r.namespace.as_str(), r.name.as_str())))
        .map(|r| (r.namespace.clone(), r.name.clone()))
        .collect();
    find_conflicts(client, unserved).await
}

/// Lists a collection page by page, restarting when the continue token expired. Each page is
/// decoded as it arrives (`decode` drops what it cannot use), so the raw JSON of at most one
/// page is held at a time.
async fn list_all<T>(
    client: &Client,
    path: &str,
    selector: Option<&str>,
    page: u32,
    mut decode: impl FnMut(Value) -> Option<T>,
) -> Result<Vec<T>> {
    let mut restarts = 0;
    'restart: loop {
        let mut items = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut params = ListParams::default().limit(page);
            if let Some(selector) = selector {
                params = params.labels(selector);
            }
            if let Some(t) = &token {
                params = params.continue_token(t);
            }
            let request =
                kube::core::Request::new(path)
                    .list(&params)
                    .map_err(|e| Error::Kube {
                        context: format!("building the list request for {path}"),
                        source: Box::new(kube::Error::BuildRequest(e)),
                    })?;
            match client.request::<ObjectList<Value>>(request).await {
                Ok(list) => {
                    items.extend(list.items.into_iter().filter_map(&mut decode));
                    match list.metadata.continue_ {
                        Some(t) if !t.is_empty() => token = Some(t),
                        _ => return Ok(items),
                    }
                }
                Err(kube::Error::Api(s)) if s.code == 410 && restarts < MAX_RESTARTS => {
                    restarts += 1;
                    tracing::info!(
                        path,
                        "list continue token expired; listing again from the start"
                    );
                    continue 'restart;
                }
                Err(e) => {
                    return Err(Error::Kube {
                        context: format!("listing {path}"),
                        source: Box::new(e),
                    });
                }
            }
        }
    }
}

/// The URL of `K`'s collection, in one namespace or all of them. Lists go through
/// [`list_all`] untyped, so one undecodable object cannot fail a whole list.
fn collection<K>(client: &Client, namespace: Option<&str>) -> String
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>,
{
    let api: Api<K> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    api.resource_url().to_string()
}

/// `iam.amazonaws.com/allowed-roles` and friends, per namespace.
async fn namespace_annotations(
    client: &Client,
    only: Option<&str>,
    page: u32,
) -> Result<BTreeMap<String, BTreeMap<String, String>>> {
    let api: Api<Namespace> = Api::all(client.clone());
    let annotations = |ns: Namespace| {
        let meta = ns.metadata;
        Some((meta.name?, meta.annotations.unwrap_or_default()))
    };
    let Some(ns) = only else {
        let decode = |v| serde_json::from_value(v).ok().and_then(annotations);
        let all = list_all(client, api.resource_url(), None, page, decode).await?;
        return Ok(all.into_iter().collect());
    };
    match api.get_opt(ns).await {
        Ok(found) => Ok(found.and_then(annotations).into_iter().collect()),
        Err(e) => Err(Error::Kube {
            context: format!("reading namespace {ns}"),
            source: Box::new(e),
        }),
    }
}

/// Metadata of the Secrets holding these names (`(namespace, name)`), which AWSIAMRoles without
/// a managed Secret need. Only metadata is read: the controller never reads a foreign Secret's
/// data.
pub async fn find_conflicts(
    client: &Client,
    keys: Vec<(String, String)>,
) -> Result<Vec<ObservedSecret>> {
    let results: Vec<Result<Option<ObservedSecret>>> = futures::stream::iter(keys)
        .map(|(ns, name)| async move {
            let api: Api<Secret> = Api::namespaced(client.clone(), &ns);
            match api.get_metadata_opt(&name).await {
                Ok(Some(meta)) => Ok(Some(ObservedSecret {
                    namespace: ns,
                    name,
                    uid: meta.metadata.uid.unwrap_or_default(),
                    resource_version: meta.metadata.resource_version,
                    labels: meta.metadata.labels.unwrap_or_default(),
                    owner_references: meta.metadata.owner_references.unwrap_or_default(),
                    ..ObservedSecret::default()
                })),
                Ok(None) => Ok(None),
                Err(e) => Err(Error::Kube {
                    context: format!("reading Secret {ns}/{name}"),
                    source: Box::new(e),
                }),
            }
        })
        .buffer_unordered(GET_CONCURRENCY)
        .collect()
        .await;
    results.into_iter().filter_map(Result::transpose).collect()
}
