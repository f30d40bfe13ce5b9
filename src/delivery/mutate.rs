//! The pure pod mutation: pod template + options → mutated pod template. No I/O, no API
//! lookups: the result depends on the pod and the options only, so the webhook and `inject`
//! agree, and a pod never races its Secret (kubelet waits for a non-optional Secret volume).
//!
//! The mutation only ever *adds* (a volume, mounts, environment variables, the sidecar), and
//! only what is absent: whatever the user wrote wins, and mutating a mutated pod changes nothing.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, EnvVar, EnvVarSource, ExecAction, ObjectFieldSelector, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, SecretVolumeSource,
    SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize as _;
use serde_json::Value;

use super::{
    CONTAINERS_ANNOTATION, CREDENTIALS_PATH, DELIVERY_ANNOTATION, Delivery, MOUNT_PATH, ROLE_LABEL,
    TOKEN_ENV,
};

/// Name of the Secret volume the mutation adds (and recognises as its own).
pub const VOLUME_NAME: &str = "aws-iam-credentials";
/// Name of the credentials endpoint sidecar (first init container).
pub const SIDECAR_NAME: &str = "aws-credentials-server";
/// Where the sidecar's own small binary lives in the controller's image (beside the
/// controller, which is the image's ENTRYPOINT): the sidecar names it as its command.
pub const SIDECAR_BINARY: &str = "/usr/local/bin/credentials-server";
/// The `credential_process` profile file of the Secret, for the `process` delivery.
pub const PROCESS_FILE: &str = "/meta/aws-iam/credentials.process";
/// The JSON credentials document of the Secret, which the sidecar serves.
pub const JSON_FILE: &str = "/meta/aws-iam/credentials.json";
/// The UID of the pod: the sidecar's authorization token. An SSRF in the app cannot learn
/// it, sidecar and app containers see the same value, and it keeps the mutation pure.
pub const TOKEN_FIELD_PATH: &str = "metadata.uid";

/// Region settings (`--pod-region`), added where absent.
const REGION_ENVS: [&str; 2] = ["AWS_REGION", "AWS_DEFAULT_REGION"];
const STS_REGIONAL_ENV: &str = "AWS_STS_REGIONAL_ENDPOINTS";
/// Longest Kubernetes object name (a DNS-1123 subdomain).
const MAX_NAME_LEN: usize = 253;

/// What the mutation needs beyond the pod itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MutateOptions {
    pub default_delivery: Delivery,
    pub sidecar_image: String,
    pub sidecar_port: u16,
    /// Region settings to add where absent.
    pub region: Option<String>,
}

impl MutateOptions {
    /// The flags' defaults (process delivery, the default port, no region) with this image.
    pub fn new(sidecar_image: impl Into<String>) -> Self {
        MutateOptions {
            default_delivery: Delivery::Process,
            sidecar_image: sidecar_image.into(),
            sidecar_port: super::DEFAULT_SIDECAR_PORT,
            region: None,
        }
    }
}

/// Why a labelled pod cannot be mutated. Every message names the field at fault and never
/// quotes more of the pod than the offending name (a pod spec may hold secrets in `env`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MutateError {
    #[error(
        "metadata.labels[{ROLE_LABEL}]: {value:?} is not a valid AWSIAMRole name (lower-case \
         letters, digits, '-' and '.', starting and ending with a letter or digit, at most \
         {MAX_NAME_LEN} characters)"
    )]
    InvalidRole { value: String },
    #[error(
        "metadata.annotations[{DELIVERY_ANNOTATION}]: {value:?} is not a delivery (expected \
         \"process\" or \"endpoint\")"
    )]
    UnknownDelivery { value: String },
    #[error("metadata.annotations[{CONTAINERS_ANNOTATION}]: names no container")]
    NoContainers,
    #[error(
        "metadata.annotations[{CONTAINERS_ANNOTATION}]: no container named {name:?} in \
         spec.containers or spec.initContainers"
    )]
    UnknownContainer { name: String },
    #[error(
        "spec.volumes[{VOLUME_NAME}]: a volume of this name already exists and is not Secret \
         {role:?}; rename it or remove it"
    )]
    VolumeConflict { role: String },
    #[error(
        "{field}[{container}].volumeMounts: {MOUNT_PATH} is already mounted from volume \
         {volume:?}; remove that mount or the kube-aws-iam-controller/role label"
    )]
    MountConflict {
        field: &'static str,
        container: String,
        volume: String,
    },
    #[error(
        "{field}[{container}].volumeMounts: {MOUNT_PATH} is mounted with a subPath, which \
         never sees the Secret's refreshed credentials; mount it without subPath"
    )]
    SubPathMount {
        field: &'static str,
        container: String,
    },
    #[error(
        "spec.containers[{SIDECAR_NAME}]: an app container has the credentials sidecar's name; \
         rename it"
    )]
    SidecarNameTaken,
    #[error(
        "{field}[{container}].ports: port {port} is the credentials sidecar's port; choose \
         another --sidecar-port or the process delivery"
    )]
    PortConflict {
        field: &'static str,
        container: String,
        port: u16,
    },
    #[error(
        "spec.hostNetwork: the endpoint delivery serves credentials on 127.0.0.1, which a \
         host-network pod shares with its node; use the process delivery"
    )]
    HostNetwork,
    #[error("{field}: {message}")]
    Malformed { field: String, message: String },
}

/// The JSON patch turning `object` — a Pod, or a pod template, as JSON with `metadata` and
/// `spec` — into its mutated form. `None` when the object is not opted in or already mutated.
///
/// The patch is the difference between the typed pod before and after the mutation, and holds
/// only `add` operations, so fields this program does not know survive it. The sidecar is
/// added as one operation at the front of `initContainers` (a plain array diff would rewrite
/// every init container into its neighbour).
pub fn patch(
    object: &Value,
    options: &MutateOptions,
) -> Result<Option<json_patch::Patch>, MutateError> {
    if !is_labelled(object) {
        return Ok(None);
    }
    let before = decode(object)?;
    let Some(after) = mutate(&before, options)? else {
        return Ok(None);
    };
    let before_inits = before
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref());
    let had_init = before_inits.is_some();
    let mut without_sidecar = after;
    let mut sidecar = None;
    if let Some(spec) = without_sidecar.spec.as_mut() {
        let inits = spec.init_containers.get_or_insert_with(Vec::new);
        let before_has = before_inits.is_some_and(|i| i.iter().any(|c| c.name == SIDECAR_NAME));
        if !before_has && inits.first().is_some_and(|c| c.name == SIDECAR_NAME) {
            sidecar = Some(inits.remove(0));
        }
        if !had_init && inits.is_empty() {
            spec.init_containers = None;
        }
    }
    let mut ops = json_patch::diff(&to_json(&before)?, &to_json(&without_sidecar)?);
    if let Some(sidecar) = sidecar {
        let sidecar = to_json(&sidecar)?;
        let (path, value) = if had_init {
            ("/spec/initContainers/0", sidecar)
        } else {
            ("/spec/initContainers", Value::Array(vec![sidecar]))
        };
        ops.0
            .push(json_patch::PatchOperation::Add(json_patch::AddOperation {
                path: json_patch::jsonptr::PointerBuf::parse(path)
                    .map_err(|e| malformed("spec.initContainers", &e.to_string()))?,
                value,
            }));
    }
    debug_assert!(only_adds(&ops), "the mutation only adds");
    Ok((!ops.0.is_empty()).then_some(ops))
}

fn only_adds(patch: &json_patch::Patch) -> bool {
    patch
        .0
        .iter()
        .all(|op| matches!(op, json_patch::PatchOperation::Add(_)))
}

/// `object` mutated: [`patch`] applied to a copy (what `inject` prints, what the webhook's
/// patch yields). `None` when nothing changes.
pub fn mutated(object: &Value, options: &MutateOptions) -> Result<Option<Value>, MutateError> {
    let Some(ops) = patch(object, options)? else {
        return Ok(None);
    };
    let mut out = object.clone();
    json_patch::patch(&mut out, &ops).map_err(|e| MutateError::Malformed {
        field: "spec".into(),
        message: format!("the mutation's patch does not apply: {e}"),
    })?;
    Ok(Some(out))
}

/// Whether the object carries the role label (whatever its value: a bad value is an error
/// of the mutation, not a reason to skip the pod).
pub fn is_labelled(object: &Value) -> bool {
    object
        .get("metadata")
        .and_then(|m| m.get("labels"))
        .and_then(|l| l.get(ROLE_LABEL))
        .is_some()
}

/// The typed mutation. `None` when the template is not opted in or already mutated.
pub fn mutate(
    template: &PodTemplateSpec,
    options: &MutateOptions,
) -> Result<Option<PodTemplateSpec>, MutateError> {
    let meta = template.metadata.clone().unwrap_or_default();
    let Some(role) = meta.labels.as_ref().and_then(|l| l.get(ROLE_LABEL)) else {
        return Ok(None);
    };
    if !is_object_name(role) {
        return Err(MutateError::InvalidRole {
            value: truncated(role),
        });
    }
    let delivery = delivery_of(&meta, options.default_delivery)?;
    let mut spec = template.spec.clone().unwrap_or_default();
    let chosen = chosen_containers(&meta, &spec)?;

    add_volume(&mut spec, role)?;
    match delivery {
        Delivery::Process => {
            for_each_chosen(&mut spec, &chosen, |field, c| {
                add_mount(field, c)?;
                add_env(c, "AWS_SHARED_CREDENTIALS_FILE", PROCESS_FILE);
                add_env(c, "AWS_CREDENTIAL_PROFILES_FILE", PROCESS_FILE);
                add_region(c, options);
                Ok(())
            })?;
        }
        Delivery::Endpoint => {
            check_endpoint_possible(&spec, options.sidecar_port)?;
            let url = format!(
                "http://127.0.0.1:{}{CREDENTIALS_PATH}",
                options.sidecar_port
            );
            for_each_chosen(&mut spec, &chosen, |_, c| {
                add_env(c, "AWS_CONTAINER_CREDENTIALS_FULL_URI", &url);
                add_env_var(c, token_env());
                add_region(c, options);
                Ok(())
            })?;
            let inits = spec.init_containers.get_or_insert_with(Vec::new);
            if !inits.iter().any(|c| c.name == SIDECAR_NAME) {
                inits.insert(0, sidecar(options));
            }
        }
    }
    let after = PodTemplateSpec {
        metadata: template.metadata.clone(),
        spec: Some(spec),
    };
    Ok((after != *template).then_some(after))
}

/// Decodes a Pod or pod template (JSON) into the typed template. Errors name the part that
/// does not decode, without quoting its values.
pub fn decode(object: &Value) -> Result<PodTemplateSpec, MutateError> {
    let Value::Object(map) = object else {
        return Err(malformed("(document)", "not a mapping"));
    };
    let metadata = map.get("metadata").filter(|m| !m.is_null());
    let metadata = metadata
        .map(|m| ObjectMeta::deserialize(m).map_err(|e| malformed("metadata", &e.to_string())))
        .transpose()?;
    let spec = match map.get("spec") {
        None | Some(Value::Null) => return Err(malformed("spec", "missing")),
        Some(Value::Object(_)) => {
            let mut raw = map["spec"].clone();
            quantities_as_strings(&mut raw);
            match PodSpec::deserialize(&raw) {
                Ok(spec) => spec,
                Err(e) => return Err(locate_spec_error(&raw, &e.to_string())),
            }
        }
        Some(_) => return Err(malformed("spec", "not a mapping")),
    };
    // Every container needs a name to be chosen, and Kubernetes rejects one without.
    if let Some((field, i, _)) = containers(&spec).find(|(_, _, c)| c.name.is_empty()) {
        return Err(malformed(&format!("{field}[{i}].name"), "missing or empty"));
    }
    Ok(PodTemplateSpec {
        metadata,
        spec: Some(spec),
    })
}

/// Every init container, then every app container: the field holding it, its index there, it.
fn containers(spec: &PodSpec) -> impl Iterator<Item = (&'static str, usize, &Container)> {
    let inits = spec.init_containers.iter().flatten().enumerate();
    let inits = inits.map(|(i, c)| ("spec.initContainers", i, c));
    let apps = spec.containers.iter().enumerate();
    inits.chain(apps.map(|(i, c)| ("spec.containers", i, c)))
}

/// Kubernetes reads a resource quantity written as a number (`cpu: 0.5`, `memory: 1000000`)
/// as if it were the string; the typed decoder does not. Only the copy used for decoding is
/// changed: the patch never touches these values, so the pod keeps them as written.
fn quantities_as_strings(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                match (key.as_str(), &mut *v) {
                    ("limits" | "requests" | "overhead", Value::Object(q)) => {
                        for n in q.values_mut() {
                            if let Value::Number(number) = n {
                                *n = Value::String(number.to_string());
                            }
                        }
                    }
                    ("sizeLimit", Value::Number(number)) => {
                        *v = Value::String(number.to_string());
                    }
                    _ => quantities_as_strings(v),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(quantities_as_strings),
        _ => {}
    }
}

/// Finds the list entry of a spec that fails to decode, for a message naming it.
fn locate_spec_error(spec: &Value, message: &str) -> MutateError {
    for (key, check) in [
        (
            "containers",
            decodes::<Container> as fn(&Value) -> Option<String>,
        ),
        ("initContainers", decodes::<Container>),
        ("volumes", decodes::<Volume>),
    ] {
        match spec.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    if let Some(e) = check(item) {
                        let at = item
                            .get("name")
                            .and_then(Value::as_str)
                            .filter(|n| is_object_name(n))
                            .map(str::to_string)
                            .unwrap_or_else(|| i.to_string());
                        return malformed(&format!("spec.{key}[{at}]"), &e);
                    }
                }
            }
            Some(_) => return malformed(&format!("spec.{key}"), "not a list"),
        }
    }
    malformed("spec", message)
}

fn decodes<T: serde::de::DeserializeOwned>(v: &Value) -> Option<String> {
    T::deserialize(v).err().map(|e| e.to_string())
}

/// A [`MutateError::Malformed`], with any quoted value in `message` redacted.
pub(super) fn malformed(field: &str, message: &str) -> MutateError {
    MutateError::Malformed {
        field: field.to_string(),
        // Decoder messages quote the offending value (`invalid type: string "…"`); a pod's
        // values may be secrets.
        message: crate::domain::text::drop_quoted(message),
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<Value, MutateError> {
    serde_json::to_value(value).map_err(|e| malformed("spec", &e.to_string()))
}

/// A DNS-1123 subdomain: what Kubernetes accepts as the name of an AWSIAMRole or a Secret.
pub fn is_object_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.split('.').all(|part| {
            let bytes = part.as_bytes();
            let edge = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
            bytes.first().is_some_and(edge)
                && bytes.last().is_some_and(edge)
                && bytes.iter().all(|b| edge(b) || *b == b'-')
        })
}

/// At most 64 characters of a user value, for an error message.
pub(crate) fn truncated(value: &str) -> String {
    let mut s: String = value.chars().take(64).collect();
    if s.len() < value.len() {
        s.push('…');
    }
    s
}

fn delivery_of(meta: &ObjectMeta, default: Delivery) -> Result<Delivery, MutateError> {
    match meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(DELIVERY_ANNOTATION))
        .map(String::as_str)
    {
        None => Ok(default),
        Some("process") => Ok(Delivery::Process),
        Some("endpoint") => Ok(Delivery::Endpoint),
        Some(other) => Err(MutateError::UnknownDelivery {
            value: truncated(other),
        }),
    }
}

/// Names of the containers to give credentials: the annotation's, or every container and
/// init container (never the sidecar).
fn chosen_containers(meta: &ObjectMeta, spec: &PodSpec) -> Result<Vec<String>, MutateError> {
    let all: Vec<&str> = containers(spec)
        .map(|(_, _, c)| c.name.as_str())
        .filter(|n| *n != SIDECAR_NAME)
        .collect();
    if spec.containers.iter().any(|c| c.name == SIDECAR_NAME) {
        return Err(MutateError::SidecarNameTaken);
    }
    let Some(list) = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(CONTAINERS_ANNOTATION))
    else {
        return Ok(all.into_iter().map(String::from).collect());
    };
    let mut chosen = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if !all.contains(&name) {
            return Err(MutateError::UnknownContainer {
                name: truncated(name),
            });
        }
        chosen.push(name.to_string());
    }
    if chosen.is_empty() {
        return Err(MutateError::NoContainers);
    }
    Ok(chosen)
}

fn for_each_chosen(
    spec: &mut PodSpec,
    chosen: &[String],
    mut f: impl FnMut(&'static str, &mut Container) -> Result<(), MutateError>,
) -> Result<(), MutateError> {
    for c in spec.init_containers.iter_mut().flatten() {
        if c.name != SIDECAR_NAME && chosen.contains(&c.name) {
            f("spec.initContainers", c)?;
        }
    }
    for c in &mut spec.containers {
        if chosen.contains(&c.name) {
            f("spec.containers", c)?;
        }
    }
    Ok(())
}

fn add_volume(spec: &mut PodSpec, role: &str) -> Result<(), MutateError> {
    let volumes = spec.volumes.get_or_insert_with(Vec::new);
    let same_secret = |s: &SecretVolumeSource| s.secret_name.as_deref() == Some(role);
    match volumes.iter().find(|v| v.name == VOLUME_NAME) {
        Some(v) if v.secret.as_ref().is_some_and(same_secret) => Ok(()),
        Some(_) => Err(MutateError::VolumeConflict {
            role: role.to_string(),
        }),
        None => {
            volumes.push(Volume {
                name: VOLUME_NAME.into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(role.to_string()),
                    optional: Some(false),
                    ..SecretVolumeSource::default()
                }),
                ..Volume::default()
            });
            Ok(())
        }
    }
}

fn mount() -> VolumeMount {
    VolumeMount {
        name: VOLUME_NAME.into(),
        mount_path: MOUNT_PATH.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

/// Adds the read-only Secret mount unless the container already has it; another volume at the
/// mount path, or the Secret through a subPath, is a conflict.
fn add_mount(field: &'static str, c: &mut Container) -> Result<(), MutateError> {
    let mounts = c.volume_mounts.get_or_insert_with(Vec::new);
    let existing = mounts
        .iter()
        .find(|m| m.mount_path.trim_end_matches('/') == MOUNT_PATH);
    match existing {
        Some(m) if m.name != VOLUME_NAME => Err(MutateError::MountConflict {
            field,
            container: c.name.clone(),
            volume: truncated(&m.name),
        }),
        Some(m)
            if m.sub_path.as_deref().is_some_and(|p| !p.is_empty())
                || m.sub_path_expr.as_deref().is_some_and(|p| !p.is_empty()) =>
        {
            Err(MutateError::SubPathMount {
                field,
                container: c.name.clone(),
            })
        }
        Some(_) => Ok(()),
        None => {
            mounts.push(mount());
            Ok(())
        }
    }
}

fn add_env(c: &mut Container, name: &str, value: &str) {
    add_env_var(
        c,
        EnvVar {
            name: name.into(),
            value: Some(value.into()),
            ..EnvVar::default()
        },
    );
}

/// Adds `var` unless the container sets a variable of that name (the user's value wins).
fn add_env_var(c: &mut Container, var: EnvVar) {
    let env = c.env.get_or_insert_with(Vec::new);
    if !env.iter().any(|e| e.name == var.name) {
        env.push(var);
    }
}

fn add_region(c: &mut Container, options: &MutateOptions) {
    if let Some(region) = &options.region {
        for name in REGION_ENVS {
            add_env(c, name, region);
        }
        add_env(c, STS_REGIONAL_ENV, "regional");
    }
}

fn token_env() -> EnvVar {
    EnvVar {
        name: TOKEN_ENV.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                // What the API server would default it to, so that stored and injected
                // manifests compare equal.
                api_version: Some("v1".into()),
                field_path: TOKEN_FIELD_PATH.into(),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// The endpoint listens on the pod's loopback interface: a host-network pod would share it
/// with the node, and a container port of the same number would clash.
fn check_endpoint_possible(spec: &PodSpec, port: u16) -> Result<(), MutateError> {
    if spec.host_network == Some(true) {
        return Err(MutateError::HostNetwork);
    }
    let uses_port = |c: &Container| {
        c.ports
            .iter()
            .flatten()
            .any(|p| p.container_port == i32::from(port))
    };
    match containers(spec).find(|(_, _, c)| c.name != SIDECAR_NAME && uses_port(c)) {
        Some((field, _, c)) => Err(MutateError::PortConflict {
            field,
            container: c.name.clone(),
            port,
        }),
        None => Ok(()),
    }
}

/// The native sidecar of the endpoint delivery: an init container with `restartPolicy:
/// Always`, whose startup probe holds back the app containers until it serves.
pub fn sidecar(options: &MutateOptions) -> Container {
    let listen = format!("127.0.0.1:{}", options.sidecar_port);
    let strings = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let quantity = |s: &str| Quantity(s.to_string());
    Container {
        name: SIDECAR_NAME.into(),
        image: Some(options.sidecar_image.clone()),
        command: Some(strings(&[SIDECAR_BINARY])),
        args: Some(strings(&[
            "--listen",
            &listen,
            "--credentials-file",
            JSON_FILE,
        ])),
        restart_policy: Some("Always".into()),
        env: Some(vec![token_env()]),
        volume_mounts: Some(vec![mount()]),
        startup_probe: Some(Probe {
            exec: Some(ExecAction {
                command: Some(strings(&[SIDECAR_BINARY, "--listen", &listen, "--probe"])),
            }),
            period_seconds: Some(1),
            timeout_seconds: Some(2),
            failure_threshold: Some(120),
            ..Probe::default()
        }),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), quantity("5m")),
                ("memory".to_string(), quantity("16Mi")),
            ])),
            limits: Some(BTreeMap::from([("memory".to_string(), quantity("64Mi"))])),
            ..ResourceRequirements::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            run_as_user: Some(65532),
            run_as_group: Some(65532),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..SeccompProfile::default()
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn options() -> MutateOptions {
        MutateOptions::new("example.com/kaic:1")
    }

    fn endpoint() -> MutateOptions {
        MutateOptions {
            default_delivery: Delivery::Endpoint,
            ..options()
        }
    }

    /// A labelled pod template: one init container `init`, app containers `app` and `side`.
    fn template() -> Value {
        json!({
            "metadata": {"labels": {"app": "web", ROLE_LABEL: "my-role"}},
            "spec": {
                "initContainers": [{"name": "init", "image": "busybox"}],
                "containers": [
                    {"name": "app", "image": "app:1"},
                    {"name": "side", "image": "side:1"}
                ]
            }
        })
    }

    /// A bare object labelled with role `r`, around `spec`.
    fn labelled(spec: Value) -> Value {
        json!({"metadata": {"labels": {ROLE_LABEL: "r"}}, "spec": spec})
    }

    fn mutate_ok(object: &Value, options: &MutateOptions) -> Value {
        mutated(object, options)
            .expect("mutation succeeds")
            .expect("mutation changes the object")
    }

    fn err(object: &Value, options: &MutateOptions) -> MutateError {
        patch(object, options).expect_err("mutation must fail")
    }

    fn mutates(object: &Value, options: &MutateOptions) -> bool {
        patch(object, options).unwrap().is_some()
    }

    /// Asserts that the mutation fails with `expected`; its message, for more checks.
    fn refused(object: &Value, options: &MutateOptions, expected: MutateError) -> String {
        let e = err(object, options);
        assert_eq!(e, expected, "{object}");
        e.to_string()
    }

    fn env<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
        container["env"]
            .as_array()?
            .iter()
            .find(|e| e["name"] == name)
    }

    fn env_value<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
        env(container, name).map(|e| e["value"].as_str().unwrap_or(""))
    }

    fn names(list: &Value) -> Vec<&str> {
        list.as_array()
            .map(|l| l.iter().filter_map(|c| c["name"].as_str()).collect())
            .unwrap_or_default()
    }

    fn expected_volume() -> Value {
        json!({"name": VOLUME_NAME, "secret": {"secretName": "my-role", "optional": false}})
    }

    fn expected_mount() -> Value {
        json!({"name": VOLUME_NAME, "mountPath": MOUNT_PATH, "readOnly": true})
    }

    fn with(mut object: Value, pointer: &str, value: Value) -> Value {
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        let slot = object.pointer_mut(parent).unwrap();
        match slot {
            Value::Object(m) => {
                m.insert(key.replace("~1", "/").replace("~0", "~"), value);
            }
            Value::Array(a) => a[key.parse::<usize>().unwrap()] = value,
            _ => panic!("{parent} is neither map nor list"),
        }
        object
    }

    fn annotated(key: &str, value: &str) -> Value {
        with(template(), "/metadata/annotations", json!({ key: value }))
    }

    /// The template with `value` as its role label.
    fn with_role(value: Value) -> Value {
        let pointer = format!("/metadata/labels/{}", ROLE_LABEL.replace('/', "~1"));
        with(template(), &pointer, value)
    }

    #[test]
    fn unlabelled_objects_are_left_alone() {
        for t in [
            with(template(), "/metadata/labels", json!({"app": "web"})),
            json!({"spec": {"containers": []}}),
            json!("text"),
            // Even a broken spec is nobody's business without the label.
            json!({"metadata": {}, "spec": 5}),
        ] {
            assert_eq!(patch(&t, &options()), Ok(None), "{t}");
        }
    }

    #[test]
    fn process_delivery_mounts_the_secret_and_points_every_container_at_the_process_file() {
        let out = mutate_ok(&template(), &options());
        assert_eq!(out["spec"]["volumes"], json!([expected_volume()]));
        let spec = &out["spec"];
        assert_eq!(names(&spec["initContainers"]), ["init"]);
        for c in [
            &spec["initContainers"][0],
            &spec["containers"][0],
            &spec["containers"][1],
        ] {
            assert_eq!(c["volumeMounts"], json!([expected_mount()]), "{c}");
            assert_eq!(
                c["env"],
                json!([
                    {"name": "AWS_SHARED_CREDENTIALS_FILE", "value": PROCESS_FILE},
                    {"name": "AWS_CREDENTIAL_PROFILES_FILE", "value": PROCESS_FILE}
                ]),
                "{c}"
            );
        }
        // Nothing else changed: metadata untouched, no region unless asked.
        assert_eq!(out["metadata"], template()["metadata"]);
        assert_eq!(out["spec"]["containers"][0]["image"], "app:1");
    }

    #[test]
    fn endpoint_delivery_adds_the_sidecar_first_and_only_env_to_the_apps() {
        let t = annotated(DELIVERY_ANNOTATION, "endpoint");
        let out = mutate_ok(&t, &options());
        let spec = &out["spec"];
        assert_eq!(names(&spec["initContainers"]), [SIDECAR_NAME, "init"]);
        assert_eq!(spec["volumes"], json!([expected_volume()]));
        let token = json!({"name": TOKEN_ENV, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.uid"}}});
        for c in [
            &spec["initContainers"][1],
            &spec["containers"][0],
            &spec["containers"][1],
        ] {
            assert!(c.get("volumeMounts").is_none(), "app got a mount: {c}");
            assert_eq!(
                c["env"],
                json!([
                    {"name": "AWS_CONTAINER_CREDENTIALS_FULL_URI", "value": "http://127.0.0.1:9911/credentials"},
                    token
                ]),
                "{c}"
            );
        }
        // The whole sidecar: no ports; its command is the small binary, not the image's
        // entrypoint (the controller).
        assert_eq!(
            spec["initContainers"][0],
            json!({
                "name": SIDECAR_NAME,
                "image": "example.com/kaic:1",
                "restartPolicy": "Always",
                "command": ["/usr/local/bin/credentials-server"],
                "args": [
                    "--listen", "127.0.0.1:9911",
                    "--credentials-file", "/meta/aws-iam/credentials.json"
                ],
                "env": [token],
                "volumeMounts": [expected_mount()],
                "startupProbe": {
                    "exec": {"command": [
                        "/usr/local/bin/credentials-server", "--listen", "127.0.0.1:9911", "--probe"
                    ]},
                    "periodSeconds": 1,
                    "timeoutSeconds": 2,
                    "failureThreshold": 120
                },
                "resources": {"requests": {"cpu": "5m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"]},
                    "readOnlyRootFilesystem": true,
                    "runAsGroup": 65532,
                    "runAsNonRoot": true,
                    "runAsUser": 65532,
                    "seccompProfile": {"type": "RuntimeDefault"}
                }
            })
        );
    }

    #[test]
    fn the_default_delivery_applies_without_the_annotation_and_the_annotation_wins() {
        let out = mutate_ok(&template(), &endpoint());
        assert_eq!(out["spec"]["initContainers"][0]["name"], SIDECAR_NAME);
        let out = mutate_ok(&annotated(DELIVERY_ANNOTATION, "process"), &endpoint());
        assert_eq!(names(&out["spec"]["initContainers"]), ["init"]);
        let file = env_value(&out["spec"]["containers"][0], "AWS_SHARED_CREDENTIALS_FILE");
        assert_eq!(file, Some(PROCESS_FILE));
    }

    #[test]
    fn the_sidecar_port_is_used_everywhere() {
        let o = MutateOptions {
            sidecar_port: 12345,
            ..endpoint()
        };
        let out = mutate_ok(&template(), &o);
        let s = out.to_string();
        assert!(!s.contains("9911"), "{s}");
        let app = &out["spec"]["containers"][0];
        let uri = env_value(app, "AWS_CONTAINER_CREDENTIALS_FULL_URI");
        assert_eq!(uri, Some("http://127.0.0.1:12345/credentials"));
        let sidecar = &out["spec"]["initContainers"][0];
        assert_eq!(sidecar["args"][1], "127.0.0.1:12345");
        let probe = &sidecar["startupProbe"]["exec"]["command"];
        assert_eq!(probe[2], "127.0.0.1:12345");
    }

    #[test]
    fn a_pod_without_init_containers_gets_an_init_container_list() {
        let mut t = template();
        t["spec"].as_object_mut().unwrap().remove("initContainers");
        let p = patch(&t, &endpoint()).unwrap().unwrap();
        let last = serde_json::to_value(p.0.last().unwrap()).unwrap();
        assert_eq!(last["op"], "add");
        assert_eq!(last["path"], "/spec/initContainers");
        let out = mutate_ok(&t, &endpoint());
        assert_eq!(names(&out["spec"]["initContainers"]), [SIDECAR_NAME]);
        // An explicit null list is replaced, not indexed into.
        let t = with(t, "/spec/initContainers", Value::Null);
        let out = mutate_ok(&t, &endpoint());
        assert_eq!(names(&out["spec"]["initContainers"]), [SIDECAR_NAME]);
    }

    #[test]
    fn an_empty_init_container_list_stays() {
        let t = with(template(), "/spec/initContainers", json!([]));
        for o in [options(), endpoint()] {
            let p = patch(&t, &o).unwrap().unwrap();
            assert!(only_adds(&p), "{p:?}");
            let out = mutate_ok(&t, &o);
            let expected: &[&str] = match o.default_delivery {
                Delivery::Process => &[],
                Delivery::Endpoint => &[SIDECAR_NAME],
            };
            assert_eq!(names(&out["spec"]["initContainers"]), expected);
            assert!(out["spec"]["initContainers"].is_array());
        }
    }

    #[test]
    fn the_containers_annotation_chooses_containers_and_init_containers() {
        let t = annotated(CONTAINERS_ANNOTATION, " side , init,");
        let out = mutate_ok(&t, &options());
        let spec = &out["spec"];
        assert!(spec["containers"][0].get("env").is_none());
        assert!(spec["containers"][0].get("volumeMounts").is_none());
        assert!(env(&spec["containers"][1], "AWS_SHARED_CREDENTIALS_FILE").is_some());
        assert!(env(&spec["initContainers"][0], "AWS_SHARED_CREDENTIALS_FILE").is_some());
        // Endpoint: the sidecar is there for the chosen ones only.
        let mut t = annotated(CONTAINERS_ANNOTATION, "app");
        t["metadata"]["annotations"][DELIVERY_ANNOTATION] = json!("endpoint");
        let out = mutate_ok(&t, &options());
        let spec = &out["spec"];
        assert!(env(&spec["containers"][0], TOKEN_ENV).is_some());
        assert!(spec["containers"][1].get("env").is_none());
        assert!(spec["initContainers"][1].get("env").is_none());
    }

    #[test]
    fn an_unknown_or_empty_container_list_is_an_error_naming_the_annotation() {
        let t = annotated(CONTAINERS_ANNOTATION, "app,nope");
        let nope = MutateError::UnknownContainer {
            name: "nope".into(),
        };
        assert_eq!(
            refused(&t, &options(), nope),
            "metadata.annotations[kube-aws-iam-controller/containers]: no container named \"nope\" in spec.containers or spec.initContainers"
        );
        for empty in [" , ", ""] {
            let t = annotated(CONTAINERS_ANNOTATION, empty);
            assert_eq!(
                refused(&t, &options(), MutateError::NoContainers),
                "metadata.annotations[kube-aws-iam-controller/containers]: names no container"
            );
        }
        // The sidecar is not a container one can choose.
        let mut t = annotated(CONTAINERS_ANNOTATION, SIDECAR_NAME);
        t["metadata"]["annotations"][DELIVERY_ANNOTATION] = json!("endpoint");
        let e = err(&t, &options());
        assert!(matches!(e, MutateError::UnknownContainer { .. }), "{e:?}");
    }

    #[test]
    fn an_unknown_delivery_is_an_error_naming_the_annotation() {
        for bad in ["Endpoint", "", "sidecar", "process "] {
            let value = bad.to_string();
            let t = annotated(DELIVERY_ANNOTATION, bad);
            let e = refused(&t, &options(), MutateError::UnknownDelivery { value });
            let field = "metadata.annotations[kube-aws-iam-controller/delivery]: ";
            assert!(e.starts_with(field), "{e}");
        }
    }

    #[test]
    fn the_role_label_must_be_an_object_name() {
        for bad in [
            "", "My-Role", "my_role", "-role", "role-", "a..b", ".a", "a.", "rôle", "a b",
        ] {
            let invalid = MutateError::InvalidRole { value: bad.into() };
            let e = refused(&with_role(json!(bad)), &options(), invalid);
            let field = "metadata.labels[kube-aws-iam-controller/role]: ";
            assert!(e.starts_with(field), "{e}");
        }
        for good in ["a", "0", "my-role", "a.b-c.d9", &"a".repeat(253)] {
            assert!(is_object_name(good), "{good:?}");
        }
        assert!(!is_object_name(&"a".repeat(254)));
        assert!(!is_object_name("a-.b"));
        assert!(!is_object_name("a.-b"));
        // A long bad value is shortened in the message.
        let msg = err(&with_role(json!("X".repeat(300))), &options()).to_string();
        assert!(msg.contains(&format!("{}…", "X".repeat(64))), "{msg}");
        assert!(!msg.contains(&"X".repeat(65)), "{msg}");
        // A label that is not a string is still an error, not a silent skip.
        assert!(
            matches!(err(&with_role(json!(7)), &options()), MutateError::Malformed { field, .. } if field == "metadata")
        );
    }

    #[test]
    fn the_users_environment_wins() {
        let mine = json!([
            {"name": "AWS_SHARED_CREDENTIALS_FILE", "value": "/mine"},
            {"name": "AWS_REGION", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "r"}}}
        ]);
        let t = with(template(), "/spec/containers/0/env", mine);
        let o = MutateOptions {
            region: Some("eu-central-1".into()),
            ..options()
        };
        let out = mutate_ok(&t, &o);
        assert_eq!(
            out["spec"]["containers"][0]["env"],
            json!([
                {"name": "AWS_SHARED_CREDENTIALS_FILE", "value": "/mine"},
                {"name": "AWS_REGION", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "r"}}},
                {"name": "AWS_CREDENTIAL_PROFILES_FILE", "value": PROCESS_FILE},
                {"name": "AWS_DEFAULT_REGION", "value": "eu-central-1"},
                {"name": "AWS_STS_REGIONAL_ENDPOINTS", "value": "regional"}
            ])
        );
        // Endpoint: a user's token or URL is kept too.
        let users = json!([{"name": TOKEN_ENV, "value": "t"}, {"name": "AWS_CONTAINER_CREDENTIALS_FULL_URI", "value": "http://x"}]);
        let t = with(template(), "/spec/containers/1/env", users.clone());
        let out = mutate_ok(&t, &endpoint());
        assert_eq!(out["spec"]["containers"][1]["env"], users);
    }

    #[test]
    fn region_settings_are_added_only_when_configured() {
        let o = MutateOptions {
            region: Some("us-west-2".into()),
            ..endpoint()
        };
        let out = mutate_ok(&template(), &o);
        for c in [
            &out["spec"]["containers"][0],
            &out["spec"]["initContainers"][1],
        ] {
            assert_eq!(env_value(c, "AWS_REGION"), Some("us-west-2"));
            assert_eq!(env_value(c, "AWS_DEFAULT_REGION"), Some("us-west-2"));
            assert_eq!(env_value(c, "AWS_STS_REGIONAL_ENDPOINTS"), Some("regional"));
        }
        // The sidecar does not talk to AWS.
        assert!(env(&out["spec"]["initContainers"][0], "AWS_REGION").is_none());
        let out = mutate_ok(&template(), &endpoint());
        assert!(!out.to_string().contains("AWS_REGION"));
    }

    #[test]
    fn the_users_own_copy_of_the_volume_and_mount_is_kept() {
        let volumes =
            json!([{"name": VOLUME_NAME, "secret": {"secretName": "my-role", "defaultMode": 288}}]);
        let mounts = json!([{"name": VOLUME_NAME, "mountPath": "/meta/aws-iam/"}]);
        let t = with(template(), "/spec/volumes", volumes.clone());
        let t = with(t, "/spec/containers/0/volumeMounts", mounts.clone());
        let out = mutate_ok(&t, &options());
        assert_eq!(out["spec"]["volumes"], volumes);
        assert_eq!(out["spec"]["containers"][0]["volumeMounts"], mounts);
        let side = &out["spec"]["containers"][1];
        assert_eq!(side["volumeMounts"], json!([expected_mount()]));
        // The volume mounted elsewhere too: the mount at the path is still added.
        let elsewhere = json!({"name": VOLUME_NAME, "mountPath": "/other"});
        let t = with(
            template(),
            "/spec/containers/0/volumeMounts",
            json!([elsewhere]),
        );
        let out = mutate_ok(&t, &options());
        let app = &out["spec"]["containers"][0];
        assert_eq!(app["volumeMounts"], json!([elsewhere, expected_mount()]));
    }

    #[test]
    fn a_different_volume_of_the_name_is_a_conflict() {
        for volume in [
            json!({"name": VOLUME_NAME, "secret": {"secretName": "other"}}),
            json!({"name": VOLUME_NAME, "secret": {}}),
            json!({"name": VOLUME_NAME, "emptyDir": {}}),
        ] {
            let t = with(template(), "/spec/volumes", json!([volume]));
            let role = "my-role".to_string();
            let e = refused(&t, &options(), MutateError::VolumeConflict { role });
            assert!(e.starts_with("spec.volumes[aws-iam-credentials]: "), "{e}");
            // Whatever the delivery: the sidecar mounts it too.
            assert_eq!(err(&t, &endpoint()).to_string(), e);
        }
    }

    #[test]
    fn another_mount_at_the_path_or_a_sub_path_is_a_conflict() {
        let mine = json!([{"name": "mine", "mountPath": "/meta/aws-iam"}]);
        let t = with(template(), "/spec/initContainers/0/volumeMounts", mine);
        let conflict = MutateError::MountConflict {
            field: "spec.initContainers",
            container: "init".into(),
            volume: "mine".into(),
        };
        assert_eq!(
            refused(&t, &options(), conflict),
            "spec.initContainers[init].volumeMounts: /meta/aws-iam is already mounted from volume \"mine\"; remove that mount or the kube-aws-iam-controller/role label"
        );
        // Not chosen: not its business.
        let mut t2 = t.clone();
        t2["metadata"]["annotations"] = json!({CONTAINERS_ANNOTATION: "app"});
        assert!(mutates(&t2, &options()));
        // The endpoint delivery mounts nothing into the apps.
        assert!(mutates(&t, &endpoint()));
        for (key, path) in [("subPath", "credentials"), ("subPathExpr", "$(X)")] {
            let m = json!({"name": VOLUME_NAME, "mountPath": "/meta/aws-iam", key: path});
            let t = with(template(), "/spec/containers/1/volumeMounts", json!([m]));
            let sub_path = MutateError::SubPathMount {
                field: "spec.containers",
                container: "side".into(),
            };
            let e = refused(&t, &options(), sub_path);
            assert!(e.starts_with("spec.containers[side].volumeMounts: "));
        }
        // An empty subPath is no subPath.
        let m = json!({"name": VOLUME_NAME, "mountPath": "/meta/aws-iam", "subPath": "", "subPathExpr": ""});
        let t = with(template(), "/spec/containers/1/volumeMounts", json!([m]));
        assert!(mutates(&t, &options()));
    }

    #[test]
    fn endpoint_refuses_host_network_port_clashes_and_a_taken_sidecar_name() {
        let t = with(template(), "/spec/hostNetwork", json!(true));
        let e = refused(&t, &endpoint(), MutateError::HostNetwork);
        assert!(e.starts_with("spec.hostNetwork: "));
        assert!(mutates(&t, &options()), "process works on the host network");
        let t = with(template(), "/spec/hostNetwork", json!(false));
        assert!(mutates(&t, &endpoint()));

        let ports = json!([{"containerPort": 8080}, {"containerPort": 9911}]);
        let t = with(template(), "/spec/containers/1/ports", ports);
        let clash = MutateError::PortConflict {
            field: "spec.containers",
            container: "side".into(),
            port: 9911,
        };
        let e = refused(&t, &endpoint(), clash);
        assert!(e.starts_with("spec.containers[side].ports: port 9911 "));
        let ports = json!([{"containerPort": 9911}]);
        let t = with(template(), "/spec/initContainers/0/ports", ports);
        assert!(matches!(
            err(&t, &endpoint()),
            MutateError::PortConflict {
                field: "spec.initContainers",
                ..
            }
        ));
        assert!(mutates(&t, &options()), "process has no port");

        let t = with(template(), "/spec/containers/1/name", json!(SIDECAR_NAME));
        assert_eq!(err(&t, &endpoint()), MutateError::SidecarNameTaken);
        assert_eq!(err(&t, &options()), MutateError::SidecarNameTaken);
    }

    #[test]
    fn malformed_specs_are_errors_naming_the_part_without_quoting_values() {
        let bad_annotations = json!({"metadata": {"labels": {ROLE_LABEL: "r"}, "annotations": []}, "spec": {"containers": []}});
        #[rustfmt::skip]
        let cases = [
            ("spec", "missing", json!({"metadata": {"labels": {ROLE_LABEL: "r"}}})),
            ("spec", "not a mapping", labelled(json!("x"))),
            ("spec", "not a mapping", labelled(json!([]))),
            ("spec.containers", "not a list", labelled(json!({"containers": {"a": 1}}))),
            ("spec.initContainers", "not a list", labelled(json!({"initContainers": 3, "containers": []}))),
            ("spec.containers[app]", "invalid type", labelled(json!({"containers": [
                {"name": "ok"}, {"name": "app", "env": [{"name": "K", "value": 12345}]}
            ]}))),
            ("spec.containers[1].name", "missing or empty", labelled(json!({"containers": [{"name": "a"}, {"image": "x"}]}))),
            ("spec.initContainers[0].name", "missing or empty", labelled(json!({"containers": [], "initContainers": [{"name": ""}]}))),
            ("spec.volumes[0]", "invalid type", labelled(json!({"containers": [], "volumes": ["v"]}))),
            ("spec", "invalid type", labelled(json!({"containers": [], "hostNetwork": "yes"}))),
            ("metadata", "invalid type", bad_annotations),
        ];
        for (field, expected, object) in cases {
            let e = err(&object, &options());
            let MutateError::Malformed { field: f, message } = &e else {
                panic!("{object}: {e:?}");
            };
            assert_eq!(f, field, "{object}");
            assert!(message.contains(expected), "{object}: {message}");
        }
        // A container named with something that is no name is pointed at by index.
        let t = labelled(json!({"containers": [{"name": "Bad Name", "env": 1}]}));
        assert!(
            matches!(err(&t, &options()), MutateError::Malformed { field, .. } if field == "spec.containers[0]")
        );
        assert_eq!(
            decode(&json!([1])),
            Err(malformed("(document)", "not a mapping"))
        );
        // A value of the wrong type is not quoted back (it may be a secret).
        let t = labelled(
            json!({"containers": [{"name": "app", "env": [{"name": "K", "value": ["SUPERSECRET"]}], "image": 5}]}),
        );
        let msg = err(&t, &options()).to_string();
        assert!(!msg.contains("SUPERSECRET"), "{msg}");
        let t = labelled(
            json!({"containers": [{"name": "app", "ports": [{"containerPort": "SUPERSECRET"}]}]}),
        );
        let msg = err(&t, &options()).to_string();
        assert!(!msg.contains("SUPERSECRET"), "{msg}");
        assert!(
            msg.starts_with("spec.containers[app]: invalid type: string \"…\""),
            "{msg}"
        );
    }

    #[test]
    fn numeric_quantities_decode_and_stay_as_written() {
        let t = labelled(json!({
            "overhead": {"cpu": 0.25},
            "containers": [{
                "name": "app",
                "resources": {"limits": {"cpu": 1, "memory": 1_000_000}, "requests": {"cpu": 0.5}}
            }],
            "volumes": [{"name": "scratch", "emptyDir": {"sizeLimit": 1024}}]
        }));
        let out = mutate_ok(&t, &endpoint());
        assert_eq!(
            out["spec"]["containers"][0]["resources"],
            t["spec"]["containers"][0]["resources"]
        );
        assert_eq!(out["spec"]["volumes"][0], t["spec"]["volumes"][0]);
        assert_eq!(out["spec"]["overhead"], json!({"cpu": 0.25}));
        assert_eq!(patch(&out, &endpoint()), Ok(None));
        // Elsewhere a number where a string belongs is still an error.
        let t = with(t, "/spec/containers/0/image", json!(5));
        let e = err(&t, &endpoint());
        assert!(matches!(e, MutateError::Malformed { .. }), "{e:?}");
    }

    /// The decoding copy: numbers under `limits`, `requests` and `overhead` and a numeric
    /// `sizeLimit` become the strings Kubernetes reads them as, at any depth and inside lists;
    /// every other number, and anything already a string, stays as it is.
    #[test]
    fn numeric_quantities_become_strings_and_nothing_else_does() {
        let mut spec = json!({
            "overhead": {"cpu": 0.25, "memory": "1Mi"},
            "terminationGracePeriodSeconds": 30,
            "initContainers": [{"name": "init", "resources": {"requests": {"memory": 1_000_000}}}],
            "containers": [{
                "name": "app",
                "ports": [{"containerPort": 8080}],
                "resources": {"limits": {"cpu": 1, "memory": "64Mi"}, "requests": {"cpu": 0.5}}
            }],
            "volumes": [
                {"name": "a", "emptyDir": {"sizeLimit": 1024}},
                {"name": "b", "emptyDir": {"sizeLimit": "1Gi"}}
            ],
            "limits": 7
        });
        quantities_as_strings(&mut spec);
        assert_eq!(
            spec,
            json!({
                "overhead": {"cpu": "0.25", "memory": "1Mi"},
                "terminationGracePeriodSeconds": 30,
                "initContainers": [{"name": "init", "resources": {"requests": {"memory": "1000000"}}}],
                "containers": [{
                    "name": "app",
                    "ports": [{"containerPort": 8080}],
                    "resources": {"limits": {"cpu": "1", "memory": "64Mi"}, "requests": {"cpu": "0.5"}}
                }],
                "volumes": [
                    {"name": "a", "emptyDir": {"sizeLimit": "1024"}},
                    {"name": "b", "emptyDir": {"sizeLimit": "1Gi"}}
                ],
                "limits": 7
            })
        );
        // A top-level list is walked too.
        let mut list = json!([{"resources": {"limits": {"cpu": 2}}}]);
        quantities_as_strings(&mut list);
        assert_eq!(list, json!([{"resources": {"limits": {"cpu": "2"}}}]));
        // And what decodes is what Kubernetes would have read.
        let template = decode(&labelled(json!({
            "containers": [{"name": "app", "resources": {"limits": {"memory": 1_000_000}}}],
            "volumes": [{"name": "s", "emptyDir": {"sizeLimit": 1024}}]
        })))
        .expect("numeric quantities decode");
        let spec = template.spec.unwrap();
        let limits = spec.containers[0]
            .resources
            .as_ref()
            .unwrap()
            .limits
            .as_ref();
        assert_eq!(limits.unwrap()["memory"].0, "1000000");
        let size = spec.volumes.unwrap()[0]
            .empty_dir
            .as_ref()
            .unwrap()
            .size_limit
            .clone();
        assert_eq!(size.map(|q| q.0), Some("1024".to_string()));
    }

    #[test]
    fn redaction_drops_every_quoted_part() {
        let redacted = |m: &str| match malformed("f", m) {
            MutateError::Malformed { message, .. } => message,
            other => panic!("{other:?}"),
        };
        assert_eq!(redacted("a \"b\" c \"d\" e"), "a \"…\" c \"…\" e");
        assert_eq!(redacted("open \"secret"), "open \"…\"");
        assert_eq!(redacted("none"), "none");
        assert_eq!(truncated("short"), "short");
        assert_eq!(truncated(&"é".repeat(64)), "é".repeat(64));
        assert_eq!(truncated(&"é".repeat(65)), format!("{}…", "é".repeat(64)));
    }

    #[test]
    fn unknown_fields_survive_and_the_sidecar_inherits_none() {
        let t = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "p", "labels": {ROLE_LABEL: "my-role"}, "annotations": {DELIVERY_ANNOTATION: "endpoint"}, "futureMeta": 1},
            "spec": {
                "futureSpec": {"x": [1, 2]},
                "initContainers": [{"name": "init", "futureField": "keep"}],
                "containers": [{"name": "app", "futureField": {"a": 1}, "env": [{"name": "A", "value": "1", "futureEnv": true}]}]
            },
            "status": {"phase": "Pending"}
        });
        let out = mutate_ok(&t, &options());
        assert_eq!(out["spec"]["futureSpec"], json!({"x": [1, 2]}));
        assert_eq!(out["metadata"]["futureMeta"], 1);
        assert_eq!(out["status"], json!({"phase": "Pending"}));
        assert_eq!(out["kind"], "Pod");
        let inits = &out["spec"]["initContainers"];
        assert_eq!(inits[1]["futureField"], "keep");
        assert!(inits[0].get("futureField").is_none());
        assert_eq!(out["spec"]["containers"][0]["futureField"], json!({"a": 1}));
        assert_eq!(out["spec"]["containers"][0]["env"][0]["futureEnv"], true);
        assert!(only_adds(&patch(&t, &options()).unwrap().unwrap()));
        let remove = serde_json::from_value(json!([{"op": "remove", "path": "/spec"}])).unwrap();
        assert!(!only_adds(&remove), "a removal is no addition");
    }

    #[test]
    fn the_patch_is_minimal() {
        let p = patch(&template(), &endpoint()).unwrap().unwrap();
        let ops: Vec<Value> =
            p.0.iter()
                .map(|op| serde_json::to_value(op).unwrap()["path"].take())
                .collect();
        assert_eq!(
            ops,
            [
                "/spec/containers/0/env",
                "/spec/containers/1/env",
                "/spec/initContainers/0/env",
                "/spec/volumes",
                "/spec/initContainers/0",
            ]
        );
    }

    #[test]
    fn mutating_twice_equals_once() {
        let variants = [
            template(),
            annotated(DELIVERY_ANNOTATION, "endpoint"),
            annotated(CONTAINERS_ANNOTATION, "app"),
        ];
        for o in [options(), endpoint()] {
            for t in &variants {
                let once = mutate_ok(t, &o);
                assert_eq!(patch(&once, &o), Ok(None), "{t}");
                // And through the typed entry point.
                let typed = decode(&once).unwrap();
                assert_eq!(mutate(&typed, &o), Ok(None));
            }
        }
    }
    /// Pod templates with a random mix of containers, user settings and annotations.
    fn arb_template() -> impl Strategy<Value = Value> {
        let env_names = prop::sample::subsequence(
            vec![
                "AWS_SHARED_CREDENTIALS_FILE",
                "AWS_CREDENTIAL_PROFILES_FILE",
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                TOKEN_ENV,
                "AWS_REGION",
                "OTHER",
            ],
            0..4,
        );
        let container =
            (env_names, any::<bool>(), any::<bool>()).prop_map(|(env, mount, extra)| {
                let mut c = json!({"image": "x"});
                if !env.is_empty() {
                    c["env"] = env
                        .iter()
                        .map(|n| json!({"name": n, "value": "user"}))
                        .collect();
                }
                if mount {
                    c["volumeMounts"] = json!([{"name": VOLUME_NAME, "mountPath": MOUNT_PATH}]);
                }
                if extra {
                    c["unknownField"] = json!({"k": [1]});
                }
                c
            });
        (
            prop::collection::vec(container.clone(), 1..4),
            prop::collection::vec(container, 0..3),
            prop::option::of(prop::sample::select(vec!["process", "endpoint"])),
            prop::option::of(prop::sample::subsequence(vec!["c0", "c1", "i0"], 1..3)),
            any::<bool>(),
        )
            .prop_map(|(containers, inits, delivery, chosen, volume)| {
                let name = |prefix: &str, list: Vec<Value>| -> Vec<Value> {
                    list.into_iter()
                        .enumerate()
                        .map(|(i, mut c)| {
                            c["name"] = json!(format!("{prefix}{i}"));
                            c
                        })
                        .collect()
                };
                let containers = name("c", containers);
                let inits = name("i", inits);
                let present: Vec<String> = containers
                    .iter()
                    .chain(&inits)
                    .map(|c| c["name"].as_str().unwrap().to_string())
                    .collect();
                let mut annotations = serde_json::Map::new();
                if let Some(d) = delivery {
                    annotations.insert(DELIVERY_ANNOTATION.into(), json!(d));
                }
                if let Some(chosen) = chosen {
                    let chosen: Vec<&str> = chosen
                        .into_iter()
                        .filter(|n| present.iter().any(|p| p == n))
                        .collect();
                    if !chosen.is_empty() {
                        annotations.insert(CONTAINERS_ANNOTATION.into(), json!(chosen.join(",")));
                    }
                }
                let mut spec = json!({"containers": containers});
                if !inits.is_empty() {
                    spec["initContainers"] = Value::Array(inits);
                }
                if volume {
                    spec["volumes"] = json!([{"name": VOLUME_NAME, "secret": {"secretName": "r"}}]);
                }
                json!({
                    "metadata": {"labels": {ROLE_LABEL: "r"}, "annotations": annotations},
                    "spec": spec
                })
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Mutating twice equals mutating once; the patch only adds; what the patch yields is
        /// what the typed mutation yields; and no user value is ever replaced.
        #[test]
        fn mutation_is_idempotent_additive_and_agrees_with_the_typed_form(
            t in arb_template(),
            region in prop::option::of(Just("eu-west-1".to_string())),
            default_endpoint in any::<bool>(),
        ) {
            let o = MutateOptions {
                region,
                default_delivery: if default_endpoint { Delivery::Endpoint } else { Delivery::Process },
                ..options()
            };
            let Some(p) = patch(&t, &o).unwrap() else {
                // The user wrote everything already: nothing to add, and the typed form agrees.
                prop_assert_eq!(mutate(&decode(&t).unwrap(), &o).unwrap(), None);
                return Ok(());
            };
            prop_assert!(only_adds(&p));
            let once = mutate_ok(&t, &o);
            prop_assert_eq!(patch(&once, &o), Ok(None));
            let typed = mutate(&decode(&t).unwrap(), &o).unwrap().unwrap();
            prop_assert_eq!(decode(&once).unwrap(), typed);
            // Every user env value is still there, unchanged.
            prop_assert_eq!(once.to_string().matches("\"user\"").count(), t.to_string().matches("\"user\"").count());
            for c in once["spec"]["containers"].as_array().unwrap() {
                if c.get("unknownField").is_some() {
                    prop_assert_eq!(&c["unknownField"], &json!({"k": [1]}));
                }
            }
        }
    }
}
