//! Shipping checks: the manifests render, the RBAC is exactly what the binary uses, and the
//! docs, examples, CronJob schedule and Dockerfile agree with the code. One module per subject;
//! what renders with kubectl or runs the binary against moto is in the full tier.
//!
//! The pod hardening every controller pod must have is checked here, for the manifests as
//! written ([`manifests`]) and as kustomize renders them ([`kustomize`]).

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Container, PodSpec};

use crate::support::manifests::dockerfile_uid;

mod dockerfile;
mod docs;
mod manifests;

// The full tier: kubectl, moto.
#[cfg(feature = "full-tier")]
mod kustomize;
#[cfg(feature = "full-tier")]
mod rbac;

const BIN: &str = env!("CARGO_BIN_EXE_kube-aws-iam-controller");
const SERVICE_ACCOUNT: &str = "kube-aws-iam-controller";
const CONTROLLER_NAMESPACE: &str = "kube-system";
/// The placeholder image every manifest uses (documented as such).
const IMAGE_NAME: &str = "registry.example.com/kube-aws-iam-controller";
/// Where pods mount the Secret; `credentials.process` names a file under it.
const MOUNT_PATH: &str = "/meta/aws-iam";

fn pod_spec_of_deployment(d: &Deployment) -> &PodSpec {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("the Deployment has a pod spec")
}

fn pod_spec_of_cronjob(c: &CronJob) -> &PodSpec {
    c.spec
        .job_template
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("the CronJob has a pod spec")
}

fn pod_spec_of_job(j: &Job) -> &PodSpec {
    j.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("the Job has a pod spec")
}

fn only_container<'a>(spec: &'a PodSpec, what: &str) -> &'a Container {
    assert_eq!(spec.containers.len(), 1, "{what}: one container");
    &spec.containers[0]
}

fn env_value<'a>(c: &'a Container, name: &str) -> Option<&'a str> {
    c.env
        .as_ref()?
        .iter()
        .find(|e| e.name == name)
        .and_then(|e| e.value.as_deref())
}

fn args(c: &Container) -> Vec<&str> {
    c.args.iter().flatten().map(String::as_str).collect()
}

/// The hardening every controller pod must have: non-root, read-only root filesystem, no
/// privilege escalation, no capabilities, the runtime's seccomp profile, the ServiceAccount
/// bound by the RBAC, the placeholder image with the crate's version.
fn assert_hardened(spec: &PodSpec, what: &str) {
    assert_eq!(
        spec.service_account_name.as_deref(),
        Some(SERVICE_ACCOUNT),
        "{what}: serviceAccountName"
    );
    let pod = spec
        .security_context
        .as_ref()
        .unwrap_or_else(|| panic!("{what}: pod securityContext"));
    assert_eq!(pod.run_as_non_root, Some(true), "{what}: runAsNonRoot");
    assert_eq!(
        pod.run_as_user,
        Some(dockerfile_uid()),
        "{what}: runAsUser is the Dockerfile's USER"
    );
    assert_eq!(
        pod.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
        Some("RuntimeDefault"),
        "{what}: seccompProfile"
    );
    let c = only_container(spec, what);
    assert_eq!(
        c.image.as_deref(),
        Some(format!("{IMAGE_NAME}:{}", env!("CARGO_PKG_VERSION")).as_str()),
        "{what}: the placeholder image, tagged with the crate version"
    );
    let sc = c
        .security_context
        .as_ref()
        .unwrap_or_else(|| panic!("{what}: container securityContext"));
    assert_eq!(
        sc.allow_privilege_escalation,
        Some(false),
        "{what}: allowPrivilegeEscalation"
    );
    assert_eq!(
        sc.read_only_root_filesystem,
        Some(true),
        "{what}: readOnlyRootFilesystem"
    );
    assert_eq!(
        sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
        Some(vec!["ALL".to_string()]),
        "{what}: capabilities drop ALL"
    );
    let resources = c
        .resources
        .as_ref()
        .unwrap_or_else(|| panic!("{what}: resources"));
    for (kind, quantities) in [
        ("request", &resources.requests),
        ("limit", &resources.limits),
    ] {
        let memory = quantities
            .as_ref()
            .is_some_and(|q| q.contains_key("memory"));
        assert!(memory, "{what}: a memory {kind}");
    }
}
