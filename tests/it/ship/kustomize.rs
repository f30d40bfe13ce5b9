//! The manifests as `kubectl kustomize` renders them (full tier: needs kubectl).

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube_aws_iam_controller::domain::secret;
use serde_json::Value;

use super::{
    IMAGE_NAME, MOUNT_PATH, args, assert_hardened, env_value, only_container, pod_spec_of_cronjob,
    pod_spec_of_deployment,
};
use crate::support::kubectl::kustomize;
use crate::support::manifests::{kind_of, kinds, only, relative_path, yaml_docs};
use crate::support::{ScratchDir, repo_root};

#[test]
fn kustomize_renders_deploy_and_cronjobs() {
    // What both render: the CRD and the RBAC.
    let shared = [
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
    ];
    let and = |kind: &str| -> BTreeSet<String> {
        shared
            .iter()
            .chain([&kind])
            .map(|s| s.to_string())
            .collect()
    };
    let deploy = kustomize(&repo_root().join("deploy"));
    assert_eq!(
        kinds(&deploy),
        and("Deployment"),
        "kinds rendered from deploy/"
    );
    assert_eq!(deploy.len(), 7, "one object of each kind in deploy/");

    let cronjobs = kustomize(&repo_root().join("cronjobs"));
    assert_eq!(
        kinds(&cronjobs),
        and("CronJob"),
        "kinds rendered from cronjobs/ (the CRD and RBAC of deploy/, a CronJob, no Deployment)"
    );
    // The shared objects are the same objects.
    for kind in shared {
        let a: Vec<&Value> = deploy.iter().filter(|d| kind_of(d) == kind).collect();
        let b: Vec<&Value> = cronjobs.iter().filter(|d| kind_of(d) == kind).collect();
        assert_eq!(a, b, "{kind} differs between deploy/ and cronjobs/");
    }
    // The rendered CRD is the generated one (compared typed: kustomize writes 43200.0 as 43200).
    let generated: CustomResourceDefinition = only(
        &yaml_docs(
            &kube_aws_iam_controller::domain::crd::crd_yaml().expect("CRD renders"),
            "the generated CRD",
        ),
        "CustomResourceDefinition",
        "the generated CRD",
    );
    let rendered: CustomResourceDefinition = only(&deploy, "CustomResourceDefinition", "deploy/");
    assert!(rendered == generated, "deploy/ renders the generated CRD");
}

/// A kustomization of one's own with `images:` replaces the placeholder image everywhere.
#[test]
fn kustomize_images_override_the_placeholder() {
    let dir = ScratchDir::new("ship-kustomize-overlay");
    // kustomize wants a relative path to a base directory.
    let relative = relative_path(dir.path(), &repo_root().join("cronjobs"));
    std::fs::write(
        dir.path().join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - {}\nimages:\n  - name: {IMAGE_NAME}\n    newName: ghcr.io/acme/kube-aws-iam-controller\n    newTag: v9.9.9\n",
            relative.display()
        ),
    )
    .unwrap();
    let rendered = kustomize(dir.path());
    let cronjob: CronJob = only(&rendered, "CronJob", "overlay");
    assert_eq!(
        only_container(pod_spec_of_cronjob(&cronjob), "overlay CronJob")
            .image
            .as_deref(),
        Some("ghcr.io/acme/kube-aws-iam-controller:v9.9.9")
    );
}

/// The seed-credentials overlay mounts the Secret `bootstrap` writes where
/// `AWS_SHARED_CREDENTIALS_FILE` points, and names the same AWSIAMRole as the controller's own.
#[test]
fn seed_overlay_runs_on_the_secret_bootstrap_writes() {
    use kube_aws_iam_controller::controller::bootstrap::{DEFAULT_NAME, DEFAULT_NAMESPACE};
    let rendered = kustomize(&repo_root().join("overlays/seed-credentials"));
    let d: Deployment = only(&rendered, "Deployment", "overlays/seed-credentials");
    assert_eq!(d.metadata.namespace.as_deref(), Some(DEFAULT_NAMESPACE));
    let pod = pod_spec_of_deployment(&d);
    assert_hardened(pod, "overlays/seed-credentials");
    let c = only_container(pod, "overlays/seed-credentials");
    let file = env_value(c, "AWS_SHARED_CREDENTIALS_FILE").expect("AWS_SHARED_CREDENTIALS_FILE");
    assert_eq!(file, format!("{MOUNT_PATH}/{}", secret::KEY_CREDENTIALS));
    assert!(
        env_value(c, "AWS_ACCESS_KEY_ID").is_none(),
        "no static key beside the seed (it would take precedence)"
    );
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == MOUNT_PATH)
        .expect("the own Secret is mounted");
    assert_eq!(mount.read_only, Some(true));
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .expect("the mounted volume");
    let source = volume.secret.as_ref().expect("a secret volume");
    assert_eq!(source.secret_name.as_deref(), Some(DEFAULT_NAME));
    assert_ne!(source.optional, Some(true), "the pod waits for bootstrap");
    assert!(
        args(c).contains(&format!("--self-role={DEFAULT_NAMESPACE}/{DEFAULT_NAME}").as_str()),
        "{:?}",
        args(c)
    );
}
