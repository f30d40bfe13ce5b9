//! The observed state a pass plans from, decoded object by object.
//!
//! Nothing here trusts its input: a cluster may run an old CRD without a schema, and offline
//! YAML is whatever a user wrote. An AWSIAMRole whose spec does not decode keeps its identity
//! and carries the error, so the planner can report it as `Blocked/InvalidSpec` while every
//! other role is served.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use base64::Engine as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use serde_json::Value;

use crate::domain::crd::{AWSIAMRoleSpec, AWSIAMRoleStatus};
use crate::domain::text::{excerpt, type_name, without_values};

/// The labels that make a Secret the controller's.
pub const HERITAGE_LABEL: &str = "heritage";
pub const HERITAGE_VALUE: &str = "kube-aws-iam-controller";
pub const TYPE_LABEL: &str = "type";
pub const TYPE_VALUE: &str = "awsiamrole";
/// When the credentials in a Secret were issued; gives their lifetime for the refresh policy.
pub const ISSUED_AT_ANNOTATION: &str = "kube-aws-iam-controller/issued-at";
/// A Secret is the controller's iff it carries both labels; nothing else is ever touched.
pub fn is_managed(labels: &BTreeMap<String, String>) -> bool {
    labels.get(HERITAGE_LABEL).map(String::as_str) == Some(HERITAGE_VALUE)
        && labels.get(TYPE_LABEL).map(String::as_str) == Some(TYPE_VALUE)
}

/// An object's labels, sorted by key and kept compactly: a boxed slice of boxed strings costs
/// a role's few labels a few dozen bytes, where a B-tree map allocates a node of half a
/// kilobyte for even one label (the watched state of `run` keeps every role's labels).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Labels(Box<[(Box<str>, Box<str>)]>);

impl Labels {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|i| &*self.0[i].1)
    }

    /// Pairs in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }

    /// As the map an object's metadata carries.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

impl From<BTreeMap<String, String>> for Labels {
    fn from(map: BTreeMap<String, String>) -> Self {
        // A B-tree map iterates in key order, which `get` relies on.
        Labels(
            map.into_iter()
                .map(|(k, v)| (k.into_boxed_str(), v.into_boxed_str()))
                .collect(),
        )
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Labels {
    /// Sorted by key; of repeated keys the last wins, as in a map.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> Self {
        let map: BTreeMap<String, String> = pairs
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        Labels::from(map)
    }
}

impl std::fmt::Debug for Labels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// `(namespace, name)`: how roles and their Secrets are paired.
pub type ObjectKey = (String, String);

/// One AWSIAMRole as observed.
#[derive(Clone, Debug, PartialEq)]
pub struct ObservedRole {
    pub namespace: String,
    pub name: String,
    /// Empty when unknown (hand-written offline input).
    pub uid: String,
    /// `metadata.generation`; 0 when unknown (the API server always sets it).
    pub generation: i64,
    pub resource_version: Option<String>,
    pub labels: Labels,
    /// The validated spec, or why it is unusable (naming the field).
    pub spec: Result<AWSIAMRoleSpec, String>,
    /// `None` when absent or undecodable (it is then rewritten).
    pub status: Option<AWSIAMRoleStatus>,
}

impl Default for ObservedRole {
    /// An identity-less role without a spec, as a base for building roles in tests.
    fn default() -> Self {
        ObservedRole {
            namespace: String::new(),
            name: String::new(),
            uid: String::new(),
            generation: 0,
            resource_version: None,
            labels: Labels::default(),
            spec: Err("spec is missing".into()),
            status: None,
        }
    }
}

/// One Secret as observed. Data values that are not valid base64 (possible only in offline
/// input) are kept out of `data` and named in `undecodable_keys`. `Debug` shows data keys and
/// sizes only, never values.
#[derive(Clone, Default, PartialEq)]
pub struct ObservedSecret {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub resource_version: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub owner_references: Vec<OwnerReference>,
    pub data: BTreeMap<String, Vec<u8>>,
    pub undecodable_keys: BTreeSet<String>,
    /// Set on the lean form kept between passes ([`ObservedSecret::lean`]): what reading the
    /// data gave when the Secret arrived. Its credential values are no longer in `data`.
    pub checked: Option<Checked>,
}

/// What the planner needs from a readable Secret (no credential material).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretContent {
    pub role_arn: String,
    pub expire: jiff::Timestamp,
    pub generation: i64,
}

/// A Secret's data, read once and then dropped: the verdict of reading it and a digest of all
/// of it. The digest makes two lean Secrets differ whenever their data differ (a credential
/// edited by hand wakes the loop and is judged again), without keeping any value.
#[derive(Clone, PartialEq, Eq)]
pub struct Checked {
    pub content: Result<SecretContent, String>,
    /// The role ARN the `role-arn` key names, when it is one (even in an unreadable Secret),
    /// and only when it is not the readable content's own (kept once).
    pub role_arn: Option<String>,
    /// Its AWSIAMRole owner references as `(name, uid)`, the only owners the planner asks
    /// about (the lean form drops the full references).
    pub owners: Box<[(Box<str>, Box<str>)]>,
    /// It carried both controller labels (which the lean form then drops).
    pub managed: bool,
    /// Its issued-at annotation (the only annotation the planner reads), when it is a time.
    pub issued_at: Option<jiff::Timestamp>,
    pub digest: [u8; 16],
}

impl std::fmt::Debug for Checked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let digest: String = self.digest.iter().map(|b| format!("{b:02x}")).collect();
        f.debug_struct("Checked")
            .field("content", &self.content)
            .field("role_arn", &self.role_arn)
            .field("owners", &self.owners)
            .field("managed", &self.managed)
            .field("issued_at", &self.issued_at)
            .field("digest", &digest)
            .finish()
    }
}

impl std::fmt::Debug for ObservedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let data: BTreeMap<&str, String> = self
            .data
            .iter()
            .map(|(k, v)| (k.as_str(), format!("<{} bytes>", v.len())))
            .collect();
        f.debug_struct("ObservedSecret")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("uid", &self.uid)
            .field("resource_version", &self.resource_version)
            .field("labels", &self.labels)
            .field("annotations", &self.annotations)
            .field("owner_references", &self.owner_references)
            .field("data", &data)
            .field("undecodable_keys", &self.undecodable_keys)
            .field("checked", &self.checked)
            .finish()
    }
}

/// Everything one pass plans from. Built with [`Observed::new`], which decides ownership
/// before any diffing: only Secrets carrying both controller labels are kept as Secrets; an
/// unmanaged Secret is remembered by name only, and only if an AWSIAMRole wants that name.
///
/// Objects are shared (`Arc`), so a pass of `run` plans over the watched state without copying
/// it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    pub roles: Vec<Arc<ObservedRole>>,
    /// Managed Secrets only.
    pub secrets: Vec<Arc<ObservedSecret>>,
    /// Names held by unmanaged Secrets that an AWSIAMRole would need.
    pub conflicts: BTreeSet<ObjectKey>,
    /// Namespace annotations, observed when namespace restrictions are on.
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
}

impl Observed {
    /// Partitions `secrets` into managed ones and name conflicts; unmanaged Secrets no role
    /// asks for are dropped here and never seen by the planner.
    pub fn new<R, S>(
        roles: Vec<R>,
        secrets: Vec<S>,
        namespaces: BTreeMap<String, BTreeMap<String, String>>,
    ) -> Self
    where
        R: Into<Arc<ObservedRole>>,
        S: Into<Arc<ObservedSecret>>,
    {
        let roles: Vec<Arc<ObservedRole>> = roles.into_iter().map(Into::into).collect();
        let wanted: BTreeSet<(&str, &str)> = roles
            .iter()
            .map(|r| (r.namespace.as_str(), r.name.as_str()))
            .collect();
        let mut conflicts = BTreeSet::new();
        let mut managed = Vec::new();
        for s in secrets {
            let s: Arc<ObservedSecret> = s.into();
            if s.is_managed() {
                managed.push(s);
            } else if wanted.contains(&(s.namespace.as_str(), s.name.as_str())) {
                conflicts.insert((s.namespace.clone(), s.name.clone()));
            }
        }
        Observed {
            roles,
            secrets: managed,
            conflicts,
            namespaces,
        }
    }

    /// Keeps only objects of one namespace (`--namespace`), so a scoped controller never
    /// treats another namespace's Secrets as orphans.
    pub fn scoped(mut self, namespace: &str) -> Self {
        self.roles.retain(|r| r.namespace == namespace);
        self.secrets.retain(|s| s.namespace == namespace);
        self.conflicts.retain(|(ns, _)| ns == namespace);
        self
    }
}

/// Reads `metadata.name` and `metadata.namespace`, the minimum to identify an object.
fn identity(v: &Value, default_namespace: &str) -> Result<(String, String), String> {
    let meta = match v.get("metadata") {
        Some(Value::Object(m)) => m,
        None | Some(Value::Null) => return Err("metadata is missing".into()),
        Some(other) => {
            return Err(format!(
                "metadata must be an object, got {}",
                type_name(other)
            ));
        }
    };
    let name = match meta.get("name") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        None | Some(Value::Null) => return Err("metadata.name is missing".into()),
        Some(Value::String(_)) => return Err("metadata.name is empty".into()),
        Some(other) => {
            return Err(format!(
                "metadata.name must be a string, got {}",
                type_name(other)
            ));
        }
    };
    let namespace = match meta.get("namespace") {
        None | Some(Value::Null) => default_namespace.to_string(),
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(other) => {
            return Err(format!(
                "metadata.namespace of {} must be a non-empty string, got {}",
                excerpt(&name),
                type_name(other)
            ));
        }
    };
    Ok((namespace, name))
}

fn object_meta(v: &Value) -> Result<ObjectMeta, String> {
    serde_json::from_value(v.get("metadata").cloned().unwrap_or(Value::Null)).map_err(|e| {
        format!(
            "metadata does not decode: {}",
            without_values(&e.to_string())
        )
    })
}

impl ObservedRole {
    /// Decodes an AWSIAMRole from untyped JSON. `Err` only when the object cannot even be
    /// identified (no name); every other defect is kept in `spec` for the planner.
    pub fn from_value(v: &Value, default_namespace: &str) -> Result<Self, String> {
        let (namespace, name) = identity(v, default_namespace)?;
        let (meta, spec) = match object_meta(v) {
            Ok(meta) => {
                let spec = AWSIAMRoleSpec::from_value(v.get("spec"));
                (meta, spec)
            }
            Err(e) => (ObjectMeta::default(), Err(e)),
        };
        let status = v
            .get("status")
            .and_then(|s| serde_json::from_value::<AWSIAMRoleStatus>(s.clone()).ok());
        Ok(ObservedRole {
            namespace,
            name,
            uid: meta.uid.unwrap_or_default(),
            generation: meta.generation.unwrap_or(0),
            resource_version: meta.resource_version,
            labels: meta.labels.unwrap_or_default().into(),
            spec,
            status,
        })
    }
}

impl ObservedSecret {
    /// Whether the Secret is the controller's (both labels, or a lean form made of one).
    pub fn is_managed(&self) -> bool {
        self.checked.as_ref().is_some_and(|c| c.managed) || is_managed(&self.labels)
    }

    /// The time the `kube-aws-iam-controller/issued-at` annotation gives, also from the lean
    /// form; `None` when it is missing or not an RFC 3339 time.
    pub fn issued_at(&self) -> Option<jiff::Timestamp> {
        match &self.checked {
            Some(checked) => checked.issued_at,
            None => self.annotations.get(ISSUED_AT_ANNOTATION)?.parse().ok(),
        }
    }

    /// Decodes a Secret from untyped JSON, folding `stringData` into `data` as the API server
    /// does. `Err` when it cannot be identified or its metadata is unusable (then it is not
    /// known to be managed and is left alone).
    pub fn from_value(v: &Value, default_namespace: &str) -> Result<Self, String> {
        let (namespace, name) = identity(v, default_namespace)?;
        let meta = object_meta(v)?;
        let mut data = BTreeMap::new();
        let mut undecodable_keys = BTreeSet::new();
        match v.get("data") {
            None | Some(Value::Null) => {}
            Some(Value::Object(map)) => {
                for (k, val) in map {
                    let decoded = val.as_str().and_then(|s| {
                        base64::engine::general_purpose::STANDARD
                            .decode(s.trim())
                            .ok()
                    });
                    match decoded {
                        Some(bytes) => {
                            data.insert(k.clone(), bytes);
                        }
                        None => {
                            undecodable_keys.insert(k.clone());
                        }
                    }
                }
            }
            // Still identified and (if labelled) managed: its data is unreadable, so the
            // planner re-issues it rather than creating over it.
            Some(_) => {
                undecodable_keys.insert(String::new());
            }
        }
        if let Some(Value::Object(map)) = v.get("stringData") {
            for (k, val) in map {
                match val {
                    Value::String(s) => {
                        undecodable_keys.remove(k);
                        data.insert(k.clone(), s.clone().into_bytes());
                    }
                    _ => {
                        undecodable_keys.insert(k.clone());
                    }
                }
            }
        }
        Ok(ObservedSecret {
            namespace,
            name,
            uid: meta.uid.unwrap_or_default(),
            resource_version: meta.resource_version,
            labels: meta.labels.unwrap_or_default(),
            annotations: meta.annotations.unwrap_or_default(),
            owner_references: meta.owner_references.unwrap_or_default(),
            data,
            undecodable_keys,
            checked: None,
        })
    }

    /// From a typed Secret (as the API returns it or as the controller builds it).
    pub fn from_secret(s: &Secret) -> Self {
        let meta = &s.metadata;
        let mut data: BTreeMap<String, Vec<u8>> = s
            .data
            .iter()
            .flatten()
            .map(|(k, ByteString(v))| (k.clone(), v.clone()))
            .collect();
        for (k, v) in s.string_data.iter().flatten() {
            data.insert(k.clone(), v.clone().into_bytes());
        }
        ObservedSecret {
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            uid: meta.uid.clone().unwrap_or_default(),
            resource_version: meta.resource_version.clone(),
            labels: meta.labels.clone().unwrap_or_default(),
            annotations: meta.annotations.clone().unwrap_or_default(),
            owner_references: meta.owner_references.clone().unwrap_or_default(),
            data,
            undecodable_keys: BTreeSet::new(),
            checked: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn wrong_types_keep_identity() {
        let r = ObservedRole::from_value(
            &json!({"metadata": {"name": "a", "namespace": "ns", "uid": "u", "generation": 3},
                    "spec": {"roleReference": ["x"], "roleSessionDuration": "3600"}}),
            "default",
        )
        .unwrap();
        assert_eq!(
            (r.namespace.as_str(), r.name.as_str(), r.generation),
            ("ns", "a", 3)
        );
        assert!(
            r.spec
                .unwrap_err()
                .contains("spec.roleReference must be a string")
        );

        let r = ObservedRole::from_value(
            &json!({"metadata": {"name": "a"}, "spec": {"roleReference": "app", "roleSessionDuration": "3600"}}),
            "default",
        )
        .unwrap();
        assert_eq!(r.namespace, "default");
        assert!(
            r.spec
                .unwrap_err()
                .contains("spec.roleSessionDuration must be an integer")
        );

        let r = ObservedRole::from_value(
            &json!({"metadata": {"name": "a", "labels": {"x": 1}}, "spec": {"roleReference": "app"}}),
            "default",
        )
        .unwrap();
        assert!(r.spec.unwrap_err().contains("metadata does not decode"));
        assert!(ObservedRole::from_value(&json!({"spec": {}}), "d").is_err());
    }

    #[test]
    fn secrets_fold_string_data_and_flag_bad_base64() {
        let s = ObservedSecret::from_value(
            &json!({"metadata": {"name": "a"}, "data": {"x": "aGk=", "y": "%%%"}, "stringData": {"z": "plain"}}),
            "default",
        )
        .unwrap();
        assert_eq!(s.data["x"], b"hi");
        assert_eq!(s.data["z"], b"plain");
        assert!(s.undecodable_keys.contains("y"));
    }

    #[test]
    fn labels_look_up_by_key_in_any_order() {
        let labels: Labels = [("b", "2"), ("a", "1"), ("c", "3"), ("a", "0")]
            .into_iter()
            .collect();
        assert_eq!(labels.len(), 3);
        assert_eq!(
            (labels.get("a"), labels.get("b"), labels.get("c")),
            (Some("0"), Some("2"), Some("3"))
        );
        assert_eq!(labels.get("d"), None);
        assert_eq!(labels.get(""), None);
        assert_eq!(
            labels.iter().collect::<Vec<_>>(),
            [("a", "0"), ("b", "2"), ("c", "3")]
        );
        assert_eq!(
            labels.to_map(),
            BTreeMap::from([
                ("a".into(), "0".into()),
                ("b".into(), "2".into()),
                ("c".into(), "3".into())
            ])
        );
        assert_eq!(format!("{labels:?}"), format!("{:?}", labels.to_map()));
        assert!(!labels.is_empty() && Labels::default().is_empty());
        let role = ObservedRole::from_value(
            &json!({"metadata": {"name": "a", "labels": {"team": "x", "app": "y"}}, "spec": {"roleReference": "r"}}),
            "default",
        )
        .unwrap();
        assert_eq!(
            (role.labels.get("app"), role.labels.get("team")),
            (Some("y"), Some("x"))
        );
    }
}
