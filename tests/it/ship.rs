//! Shipping checks: the manifests render, the RBAC is exactly what the binary uses, and the
//! docs, examples, CronJob schedule and Dockerfile agree with the code.
//!
//! The RBAC proof runs the compiled binary (`plan`, `once --dry-run`, `once`, `run`,
//! `--namespace-restrictions`, `--namespace`) against the recording loopback API server
//! (`test-apiserver/`) and moto's STS, collects every (verb, group, resource, subresource)
//! it requested, and compares that set with the ClusterRole (and, for the leader Lease, the
//! namespaced Role) in `deploy/rbac.yaml` both ways.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Container, PodSpec, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::DeleteParams;
use kube::{Api, Client};
use kube_aws_iam_controller::crd::AWSIAMRole;
use kube_aws_iam_controller::plan::refresh;
use kube_aws_iam_controller::secret;
use serde_json::Value;

use crate::support::apiserver::{ApiServer, ApiServerBuilder, RecordedRequest};
use crate::support::argv;
use crate::support::harness::{
    BASE, Env, eventually, marked_managed_secret, marked_mixed_state, namespace, role,
    serve_as_controller, terminate, text, wait_ready,
};
use crate::support::moto::ScratchDir;
use crate::support::repo_root;

const BIN: &str = env!("CARGO_BIN_EXE_kube-aws-iam-controller");
/// Marker in credentials the tests seed; no output may contain it.
const SEEDED: &str = "SHIPSEEDED";
const SERVICE_ACCOUNT: &str = "kube-aws-iam-controller";
const CONTROLLER_NAMESPACE: &str = "kube-system";
/// The placeholder image every manifest uses (documented as such).
const IMAGE_NAME: &str = "registry.example.com/kube-aws-iam-controller";
/// Where pods mount the Secret; `credentials.process` names a file under it.
const MOUNT_PATH: &str = "/meta/aws-iam";
/// Command that regenerates docs/flags.md.
const REGENERATE_FLAGS: &str = "UPDATE_DOCS=1 cargo test --test it ship::flags_doc";

// ---------------------------------------------------------------------------------------------
// Helpers: files and YAML
// ---------------------------------------------------------------------------------------------

fn read(rel: &str) -> String {
    let path = repo_root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Every non-empty document of a multi-document YAML text.
pub(crate) fn yaml_docs(text: &str, what: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(text)
        .unwrap_or_else(|e| panic!("{what} is not valid YAML: {e}"))
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

fn docs_of(rel: &str) -> Vec<Value> {
    yaml_docs(&read(rel), rel)
}

pub(crate) fn kind_of(v: &Value) -> &str {
    v["kind"].as_str().unwrap_or_default()
}

/// The one object of `kind` in `docs`, decoded as `T`.
pub(crate) fn only<T: serde::de::DeserializeOwned>(docs: &[Value], kind: &str, what: &str) -> T {
    let found: Vec<&Value> = docs.iter().filter(|d| kind_of(d) == kind).collect();
    assert_eq!(
        found.len(),
        1,
        "{what}: expected one {kind}, found {}",
        found.len()
    );
    serde_json::from_value(found[0].clone())
        .unwrap_or_else(|e| panic!("{what}: the {kind} does not decode: {e}"))
}

pub(crate) fn kinds(docs: &[Value]) -> BTreeSet<String> {
    docs.iter().map(|d| kind_of(d).to_string()).collect()
}

/// `kubectl ARGS…` with no kubeconfig needed; fails clearly when kubectl is missing.
fn kubectl(args: &[&str], cwd: &Path) -> Output {
    std::process::Command::new("kubectl")
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap_or_else(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                panic!(
                    "kubectl must be on the PATH for these tests (kubectl 1.32 or later; install \
                     it from https://kubernetes.io/docs/tasks/tools/ or with your package manager)"
                )
            }
            panic!("running kubectl: {e}")
        })
}

pub(crate) fn kustomize(dir: &Path) -> Vec<Value> {
    let out = kubectl(&["kustomize", &dir.display().to_string()], &repo_root());
    assert!(
        out.status.success(),
        "`kubectl kustomize {}` failed:\n{}",
        dir.display(),
        text(&out.stderr)
    );
    yaml_docs(
        &text(&out.stdout),
        &format!("kubectl kustomize {}", dir.display()),
    )
}

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

/// The numeric user of the Dockerfile's last `USER` line.
pub(crate) fn dockerfile_uid() -> i64 {
    let dockerfile = read("Dockerfile");
    let user = dockerfile
        .lines()
        .filter_map(|l| l.trim().strip_prefix("USER "))
        .next_back()
        .expect("the Dockerfile sets a USER");
    user.split(':')
        .next()
        .and_then(|u| u.trim().parse().ok())
        .unwrap_or_else(|| panic!("the Dockerfile's USER {user:?} is not numeric"))
}

// ---------------------------------------------------------------------------------------------
// Manifests
// ---------------------------------------------------------------------------------------------

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
            &kube_aws_iam_controller::crd::crd_yaml().expect("CRD renders"),
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

/// `to` relative to `from` (both absolute).
pub(crate) fn relative_path(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<_> = from.components().collect();
    let to: Vec<_> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut path = PathBuf::new();
    for _ in common..from.len() {
        path.push("..");
    }
    for c in &to[common..] {
        path.push(c);
    }
    path
}

#[test]
fn deployment_runs_the_loop_with_probes_metrics_and_hardening() {
    let docs = docs_of("deploy/deployment.yaml");
    let d: Deployment = only(&docs, "Deployment", "deploy/deployment.yaml");
    assert_eq!(
        d.metadata.namespace.as_deref(),
        Some(CONTROLLER_NAMESPACE),
        "namespace"
    );
    let spec = d.spec.as_ref().unwrap();
    assert_eq!(
        spec.replicas,
        Some(2),
        "two replicas (one leads, one stands by)"
    );
    let strategy = spec.strategy.as_ref().expect("a strategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    let pod = pod_spec_of_deployment(&d);
    assert_hardened(pod, "deploy/deployment.yaml");
    let c = only_container(pod, "deploy/deployment.yaml");
    let a = args(c);
    assert!(
        a.is_empty() || a[0] == "run",
        "the Deployment runs the loop (`run` or no subcommand), got {a:?}"
    );
    for (name, field) in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
    ] {
        let from = c
            .env
            .iter()
            .flatten()
            .find(|e| e.name == name)
            .and_then(|e| e.value_from.as_ref()?.field_ref.as_ref())
            .map(|f| f.field_path.as_str());
        assert_eq!(from, Some(field), "{name} (Lease identity and namespace)");
    }
    assert!(
        env_value(c, "AWS_REGION").is_some_and(|r| !r.is_empty()),
        "AWS_REGION is set (STS needs a region; the original's manifest lacked one)"
    );
    let port = c
        .ports
        .iter()
        .flatten()
        .find(|p| p.container_port == 8080)
        .expect("container port 8080");
    let port_name = port.name.clone().expect("port 8080 is named");
    for (probe, path) in [
        (c.liveness_probe.as_ref(), "/healthz"),
        (c.readiness_probe.as_ref(), "/readyz"),
    ] {
        let get = probe
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("an HTTP probe on {path}"));
        assert_eq!(get.path.as_deref(), Some(path));
        let target = match &get.port {
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s) => s.clone(),
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(i) => i.to_string(),
        };
        assert!(
            target == port_name || target == "8080",
            "{path} probe targets port {target}"
        );
    }
    let annotations = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.clone())
        .unwrap_or_default();
    for (key, value) in [
        ("prometheus.io/scrape", "true"),
        ("prometheus.io/port", "8080"),
        ("prometheus.io/path", "/metrics"),
    ] {
        assert_eq!(
            annotations.get(key).map(String::as_str),
            Some(value),
            "{key}"
        );
    }
}

/// The seed-credentials overlay mounts the Secret `bootstrap` writes where
/// `AWS_SHARED_CREDENTIALS_FILE` points, and names the same AWSIAMRole as the controller's own.
#[test]
fn seed_overlay_runs_on_the_secret_bootstrap_writes() {
    use kube_aws_iam_controller::bootstrap::{DEFAULT_NAME, DEFAULT_NAMESPACE};
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

/// The CronJob runs `once` often enough for 1 h credentials under the refresh policy in the
/// code: a Secret is refreshed at the latest one period after it became due, and must then still
/// leave boto3's 15-minute advisory window plus time for kubelet to deliver the new Secret.
#[test]
fn cronjob_schedule_keeps_one_hour_credentials_fresh() {
    let docs = docs_of("cronjobs/cronjob.yaml");
    let cj: CronJob = only(&docs, "CronJob", "cronjobs/cronjob.yaml");
    assert_eq!(cj.metadata.namespace.as_deref(), Some(CONTROLLER_NAMESPACE));
    let spec = &cj.spec;
    assert_eq!(spec.concurrency_policy.as_deref(), Some("Forbid"));
    let pod = pod_spec_of_cronjob(&cj);
    assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
    assert_hardened(pod, "cronjobs/cronjob.yaml");
    let c = only_container(pod, "cronjobs/cronjob.yaml");
    assert_eq!(
        args(c),
        ["once"],
        "the CronJob runs one pass with the default refresh limit"
    );
    assert!(env_value(c, "AWS_REGION").is_some_and(|r| !r.is_empty()));

    let period = schedule_period_minutes(&spec.schedule) * 60;
    // The smallest margin any 1 h credential gets (jitter only adds to it).
    let lifetime = 3600;
    let refresh_limit = 15 * 60;
    let smallest = (0..1000)
        .map(|i| refresh::margin(lifetime, refresh_limit, &format!("uid-{i}")))
        .min()
        .unwrap();
    assert_eq!(
        smallest, 1800,
        "1 h credentials are due 30 minutes before expiry"
    );
    let boto3_advisory = 15 * 60;
    let kubelet_delivery = 2 * 60;
    assert!(
        smallest - period >= boto3_advisory + kubelet_delivery,
        "a run every {} min refreshes 1 h credentials as late as {} min before expiry; they must \
         still have boto3's 15 min plus 2 min for kubelet",
        period / 60,
        (smallest - period) / 60
    );
    // A hung pass ends before the next one is due (Forbid would skip it otherwise).
    let deadline = spec
        .job_template
        .spec
        .as_ref()
        .and_then(|s| s.active_deadline_seconds)
        .expect("activeDeadlineSeconds bounds a hung pass");
    assert!(
        deadline < period,
        "activeDeadlineSeconds {deadline} < period {period}"
    );
}

/// Minutes between runs of a `*/N * * * *` (or `M-59/N …`) schedule.
fn schedule_period_minutes(schedule: &str) -> i64 {
    let fields: Vec<&str> = schedule.split_whitespace().collect();
    assert!(
        fields.len() == 5 && fields[1..].iter().all(|f| *f == "*"),
        "schedule {schedule:?}: only every-N-minutes schedules (`*/N * * * *`) are checked"
    );
    let n: i64 = fields[0]
        .split_once('/')
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or_else(|| panic!("schedule {schedule:?}: minute field is not */N"));
    assert!(60 % n == 0, "schedule {schedule:?}: N must divide 60");
    n
}

#[test]
fn dry_run_job_plans_with_a_diff() {
    let docs = docs_of("cronjobs/dry-run-job.yaml");
    let job: Job = only(&docs, "Job", "cronjobs/dry-run-job.yaml");
    assert_eq!(
        job.metadata.namespace.as_deref(),
        Some(CONTROLLER_NAMESPACE)
    );
    let pod = pod_spec_of_job(&job);
    assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
    assert_hardened(pod, "cronjobs/dry-run-job.yaml");
    let a = args(only_container(pod, "cronjobs/dry-run-job.yaml"));
    assert_eq!(&a[..3], ["plan", "--output", "diff"], "args {a:?}");
}

#[test]
fn manifests_share_one_service_account_bound_to_the_cluster_role() {
    let docs = docs_of("deploy/rbac.yaml");
    let sa: ServiceAccount = only(&docs, "ServiceAccount", "deploy/rbac.yaml");
    assert_eq!(sa.metadata.name.as_deref(), Some(SERVICE_ACCOUNT));
    assert_eq!(sa.metadata.namespace.as_deref(), Some(CONTROLLER_NAMESPACE));
    let role: ClusterRole = only(&docs, "ClusterRole", "deploy/rbac.yaml");
    let binding: ClusterRoleBinding = only(&docs, "ClusterRoleBinding", "deploy/rbac.yaml");
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(
        binding.role_ref.api_group.as_deref(),
        Some("rbac.authorization.k8s.io")
    );
    assert_eq!(
        Some(binding.role_ref.name.as_str()),
        role.metadata.name.as_deref()
    );
    let subjects = binding.subjects.clone().unwrap_or_default();
    assert_eq!(subjects.len(), 1, "the binding has one subject");
    let s = &subjects[0];
    assert_eq!(
        (s.kind.as_str(), s.name.as_str(), s.namespace.as_deref()),
        (
            "ServiceAccount",
            SERVICE_ACCOUNT,
            Some(CONTROLLER_NAMESPACE)
        )
    );
    let d: Deployment = only(
        &docs_of("deploy/deployment.yaml"),
        "Deployment",
        "deployment",
    );
    assert_eq!(
        pod_spec_of_deployment(&d).service_account_name.as_deref(),
        Some(SERVICE_ACCOUNT)
    );
    let cj: CronJob = only(&docs_of("cronjobs/cronjob.yaml"), "CronJob", "cronjob");
    assert_eq!(
        pod_spec_of_cronjob(&cj).service_account_name.as_deref(),
        Some(SERVICE_ACCOUNT)
    );
}

// ---------------------------------------------------------------------------------------------
// RBAC proven by recording
// ---------------------------------------------------------------------------------------------

/// One kind of API request, as RBAC sees it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Access {
    verb: String,
    group: String,
    /// `resource` or `resource/subresource`.
    resource: String,
    /// For resources granted by a (namespaced) Role: the namespace of the request or grant;
    /// `None` for what the ClusterRole grants everywhere.
    namespace: Option<String>,
}

impl Access {
    fn of(r: &RecordedRequest, role_scoped: &BTreeSet<(String, String)>) -> Access {
        let resource = match &r.subresource {
            Some(sub) => format!("{}/{sub}", r.resource),
            None => r.resource.clone(),
        };
        let namespace = role_scoped
            .contains(&(r.group.clone(), resource.clone()))
            .then(|| r.namespace.clone().unwrap_or_default());
        Access {
            verb: r.verb.clone(),
            group: r.group.clone(),
            resource,
            namespace,
        }
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let group = if self.group.is_empty() {
            "\"\" (core)"
        } else {
            &self.group
        };
        write!(f, "{} {group} {}", self.verb, self.resource)?;
        if let Some(ns) = &self.namespace {
            write!(f, " in namespace {ns}")?;
        }
        Ok(())
    }
}

/// The (group, resource) pairs the Role of deploy/rbac.yaml grants in its namespace only.
fn role_scoped() -> BTreeSet<(String, String)> {
    granted()
        .into_iter()
        .filter(|a| a.namespace.is_some())
        .map(|a| (a.group, a.resource))
        .collect()
}

/// Grants of one rule list, in `namespace` (a Role's) or everywhere (the ClusterRole's).
fn grants_of(rules: &[PolicyRule], namespace: Option<&str>, what: &str) -> BTreeSet<Access> {
    let mut grants = BTreeSet::new();
    for (i, rule) in rules.iter().enumerate() {
        assert!(
            rule.resource_names.as_ref().is_none_or(Vec::is_empty),
            "{what} rule {i}: resourceNames are not used"
        );
        assert!(
            rule.non_resource_urls.as_ref().is_none_or(Vec::is_empty),
            "{what} rule {i}: nonResourceURLs are not needed (the controller makes no discovery call)"
        );
        let groups = rule.api_groups.clone().unwrap_or_default();
        let resources = rule.resources.clone().unwrap_or_default();
        for s in groups.iter().chain(&resources).chain(&rule.verbs) {
            assert!(!s.contains('*'), "{what} rule {i}: wildcard {s:?}");
        }
        for group in &groups {
            for resource in &resources {
                for verb in &rule.verbs {
                    grants.insert(Access {
                        verb: verb.clone(),
                        group: group.clone(),
                        resource: resource.clone(),
                        namespace: namespace.map(str::to_string),
                    });
                }
            }
        }
    }
    grants
}

/// Every (verb, group, resource[/subresource]) the ClusterRole of deploy/rbac.yaml grants,
/// and, scoped to its namespace, what its Role grants (bound to the controller's
/// ServiceAccount). Wildcards, resourceNames and nonResourceURLs are refused outright (least
/// privilege, and this comparison would not be exact with them).
fn granted() -> BTreeSet<Access> {
    let docs = docs_of("deploy/rbac.yaml");
    let role: ClusterRole = only(&docs, "ClusterRole", "deploy/rbac.yaml");
    assert!(
        role.aggregation_rule.is_none(),
        "the ClusterRole is not aggregated"
    );
    let mut grants = grants_of(
        role.rules.as_deref().unwrap_or_default(),
        None,
        "ClusterRole",
    );
    let ns_role: Role = only(&docs, "Role", "deploy/rbac.yaml");
    let binding: RoleBinding = only(&docs, "RoleBinding", "deploy/rbac.yaml");
    let ns = ns_role
        .metadata
        .namespace
        .clone()
        .expect("the Role's namespace");
    assert_eq!(binding.metadata.namespace.as_deref(), Some(ns.as_str()));
    assert_eq!(
        (
            binding.role_ref.kind.as_str(),
            binding.role_ref.name.as_str()
        ),
        ("Role", ns_role.metadata.name.as_deref().unwrap_or_default())
    );
    let subjects = binding.subjects.unwrap_or_default();
    assert!(
        subjects.iter().any(|s| s.kind == "ServiceAccount"
            && s.name == SERVICE_ACCOUNT
            && s.namespace.as_deref() == Some(CONTROLLER_NAMESPACE)),
        "the RoleBinding binds the controller's ServiceAccount"
    );
    grants.extend(grants_of(
        ns_role.rules.as_deref().unwrap_or_default(),
        Some(&ns),
        "Role",
    ));
    grants
}

/// The requests of each scenario, by access.
#[derive(Default)]
struct Usage {
    used: BTreeMap<Access, BTreeSet<String>>,
    non_resource: BTreeSet<String>,
    statuses: BTreeMap<Access, BTreeSet<u16>>,
}

impl Usage {
    /// Takes the requests `api` recorded since the last call and files them under `scenario`.
    fn collect(&mut self, api: &ApiServer, scenario: &str) -> BTreeSet<Access> {
        let mut seen = BTreeSet::new();
        let role_scoped = role_scoped();
        for r in api.requests() {
            if r.verb.is_empty() {
                self.non_resource.insert(format!("{} {}", r.method, r.path));
                continue;
            }
            let access = Access::of(&r, &role_scoped);
            self.used
                .entry(access.clone())
                .or_default()
                .insert(scenario.to_string());
            self.statuses
                .entry(access.clone())
                .or_default()
                .insert(r.status);
            seen.insert(access);
        }
        api.clear_requests();
        seen
    }
}

/// Runs the binary to completion (at most a minute) and asserts that it succeeds and that no
/// seeded credential is in its output.
async fn run_clean(env: &Env, args: &[&str]) -> Output {
    let out = env.run_ok(args).await;
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        !all.contains(SEEDED),
        "{args:?}: seeded credential in output"
    );
    out
}

/// Every action kind: create, refresh, update-status, delete, skip, blocked (three ways).
fn mixed_state() -> ApiServerBuilder {
    marked_mixed_state(SEEDED)
        .object(role("team-c", "fresh", "app-fresh"))
        .object(role("team-c", "stale", "app-stale"))
}

/// Gives team-c/fresh and team-c/stale valid Secrets owned by them (UIDs known only now);
/// `fresh` also gets its status, so it is up to date and `stale` needs only a status update.
async fn serve_team_c(client: &Client) {
    let now = Timestamp::now();
    let roles = Api::<AWSIAMRole>::namespaced(client.clone(), "team-c");
    for name in ["fresh", "stale"] {
        let r = roles.get(name).await.unwrap();
        serve_as_controller(client, &r, SEEDED, now, name == "fresh").await;
    }
}

/// The action kinds of a JSON plan.
fn planned_kinds(stdout: &[u8]) -> BTreeMap<String, String> {
    let plan: Value = serde_json::from_slice(stdout).expect("the plan is JSON");
    plan["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .map(|a| {
            (
                format!(
                    "{}/{}",
                    a["namespace"].as_str().unwrap(),
                    a["name"].as_str().unwrap()
                ),
                format!(
                    "{} {}",
                    a["action"].as_str().unwrap(),
                    a["reason"].as_str().unwrap()
                ),
            )
        })
        .collect()
}

/// The scenarios of the RBAC proof: all action kinds (plan, dry run, once), the loop (with a
/// repeated Event, which the recorder patches), namespace restrictions, one namespace.
async fn record_every_mode() -> Usage {
    let mut usage = Usage::default();

    // 1. Every action kind, planned (dry) first, then applied.
    let env = Env::start("ship-rbac-mixed", mixed_state()).await;
    serve_team_c(&env.client()).await;
    let out = run_clean(&env, &["plan", "--base-role-arn", BASE, "--output", "json"]).await;
    let planned = planned_kinds(&out.stdout);
    let expected: BTreeMap<String, String> = [
        ("team-a/expiring", "refresh OwnerChanged"),
        ("team-a/new", "create Missing"),
        ("team-a/orphan", "delete OwnerGone"),
        ("team-b/invalid", "blocked InvalidSpec"),
        ("team-b/taken", "blocked SecretConflict"),
        ("team-b/wrong-types", "blocked InvalidSpec"),
        ("team-c/fresh", "skip UpToDate"),
        ("team-c/stale", "update-status StatusStale"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(
        planned, expected,
        "the mixed state covers every action kind"
    );
    let plan_reads = usage.collect(&env.api, "plan");
    run_clean(&env, &["once", "--dry-run", "--base-role-arn", BASE]).await;
    let dry_reads = usage.collect(&env.api, "once --dry-run");
    for (scenario, seen) in [("plan", &plan_reads), ("once --dry-run", &dry_reads)] {
        assert!(
            seen.iter().all(|a| a.verb == "list" || a.verb == "get"),
            "{scenario} only reads: {seen:?}"
        );
    }
    let out = run_clean(&env, &["once"]).await;
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(
            "pass done: create=1, refresh=1, update-status=1, delete=1, skip=1, blocked=3;"
        ),
        "{stderr}"
    );
    assert_eq!(env.moto.calls("AssumeRole"), 2);
    usage.collect(&env.api, "once");
    drop(env);

    // 2. The loop with namespace restrictions (it watches AWSIAMRoles, managed Secrets and
    //    Namespaces): ready; an orphaned Secret is deleted after a GET confirms its AWSIAMRole
    //    is gone; a Secret deleted behind its back is re-created (a second CreateCredentials
    //    Event for the same role, which the recorder patches); SIGTERM.
    let orphan = role("team-a", "orphaned", "app-orphaned");
    let env = Env::start(
        "ship-rbac-run",
        ApiServer::builder()
            .object(namespace("team-a", Some(r#"["app-*"]"#)))
            .object(role("team-a", "looped", "app-looped"))
            .object(marked_managed_secret(
                SEEDED,
                &orphan,
                "",
                Timestamp::now(),
                3600,
            )),
    )
    .await;
    let port = crate::support::harness::free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = env
        .command(&argv(&format!(
            "run --interval 1s --namespace-restrictions --health-addr {addr}"
        )))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_ready(port).await;
    let secrets = Api::<Secret>::namespaced(env.client(), "team-a");
    let orphan_gone = eventually(Duration::from_secs(15), || async {
        secrets.get_opt("orphaned").await.ok().flatten().is_none()
    })
    .await;
    assert!(orphan_gone, "the loop deleted the orphaned Secret");
    let first = secrets.get("looped").await.unwrap().metadata.uid;
    secrets
        .delete("looped", &DeleteParams::default())
        .await
        .unwrap();
    let recreated = eventually(Duration::from_secs(15), || async {
        secrets
            .get_opt("looped")
            .await
            .ok()
            .flatten()
            .is_some_and(|s| s.metadata.uid != first)
    })
    .await;
    assert!(recreated, "the loop re-created the deleted Secret");
    let patched = env
        .api
        .wait_for_requests(Duration::from_secs(10), |rs| {
            rs.iter()
                .any(|r| r.resource == "events" && r.verb == "patch")
        })
        .await;
    assert!(patched, "the repeated Event was patched");
    assert_eq!(
        terminate(&mut child, Duration::from_secs(15)).await,
        Some(0)
    );
    usage.collect(&env.api, "run");
    drop(env);

    // 3. Namespace restrictions: allowed, blocked, and a Secret that must go.
    let now = Timestamp::now();
    let revoked = role("closed", "revoked", "app-revoked");
    let env = Env::start(
        "ship-rbac-restricted",
        ApiServer::builder()
            .object(namespace("open", Some(r#"["app-*"]"#)))
            .object(namespace("closed", None))
            .object(role("open", "ok", "app-ok"))
            .object(role("closed", "refused", "app-refused"))
            .object(revoked.clone())
            .object(marked_managed_secret(SEEDED, &revoked, "", now, 3600)),
    )
    .await;
    let out = run_clean(
        &env,
        &argv(&format!(
            "plan --namespace-restrictions --base-role-arn {BASE} --output json"
        )),
    )
    .await;
    let planned = planned_kinds(&out.stdout);
    assert_eq!(planned["open/ok"], "create Missing");
    assert_eq!(planned["closed/refused"], "blocked NotPermitted");
    assert_eq!(planned["closed/revoked"], "delete NotPermitted");
    usage.collect(&env.api, "plan --namespace-restrictions");
    run_clean(&env, &["once", "--namespace-restrictions"]).await;
    usage.collect(&env.api, "once --namespace-restrictions");
    assert!(
        Api::<Secret>::namespaced(env.client(), "closed")
            .get_opt("revoked")
            .await
            .unwrap()
            .is_none(),
        "the no longer permitted role lost its Secret"
    );

    // 4. One namespace, with and without restrictions (a GET of that Namespace).
    run_clean(
        &env,
        &["once", "--namespace", "open", "--namespace-restrictions"],
    )
    .await;
    usage.collect(&env.api, "once --namespace open --namespace-restrictions");
    run_clean(&env, &["once", "--namespace", "closed"]).await;
    usage.collect(&env.api, "once --namespace closed");
    usage
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_grants_exactly_what_the_binary_uses() {
    let usage = record_every_mode().await;
    let grants = granted();
    let mut report = String::from("requests the binary made (access: scenarios; statuses):\n");
    for (access, scenarios) in &usage.used {
        report.push_str(&format!(
            "  {access}: {}; {:?}\n",
            scenarios.iter().cloned().collect::<Vec<_>>().join(", "),
            usage.statuses[access]
        ));
    }
    eprintln!("{report}");
    assert!(
        usage.non_resource.is_empty(),
        "the binary made non-resource requests (discovery?) the RBAC does not cover: {:?}",
        usage.non_resource
    );
    let denied: Vec<String> = usage
        .used
        .iter()
        .filter(|(a, _)| !grants.contains(a))
        .map(|(a, s)| format!("{a} (in {s:?})"))
        .collect();
    assert!(
        denied.is_empty(),
        "deploy/rbac.yaml does not grant requests the binary makes:\n  {}\n{report}",
        denied.join("\n  ")
    );
    let unused: Vec<String> = grants
        .iter()
        .filter(|g| !usage.used.contains_key(g))
        .map(ToString::to_string)
        .collect();
    assert!(
        unused.is_empty(),
        "deploy/rbac.yaml grants what the binary never used (least privilege):\n  {}\n{report}",
        unused.join("\n  ")
    );
    // Every write succeeded against the API (the recording is of real, accepted requests).
    for (access, statuses) in &usage.statuses {
        if access.verb != "get" {
            assert!(
                statuses.iter().all(|s| (200..300).contains(s)),
                "{access} answered {statuses:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Documentation and examples
// ---------------------------------------------------------------------------------------------

/// Runs the binary with an empty environment (clap shows an environment variable's value in
/// `--help` when it is set) and returns its standard output.
fn help(args: &[&str]) -> String {
    let out = std::process::Command::new(BIN)
        .args(args)
        .env_clear()
        .output()
        .expect("the binary runs");
    assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    text(&out.stdout)
}

fn flags_markdown() -> String {
    let mut out = format!(
        "# Command-line reference\n\
         \n\
         <!-- Generated from the binary's --help; do not edit. tests/it/ship.rs fails when this \
         file differs from it. Regenerate with: {REGENERATE_FLAGS} -->\n\
         \n\
         Every flag can also be given as the environment variable shown with it (flag values \
         win). Durations are humantime (`10s`, `15m`, `1h 30m`). Each subcommand takes only its \
         own flags, after its name; without a subcommand the binary runs `run` with `run`'s \
         flags, as the original controller did.\n"
    );
    for command in [
        &[][..],
        &["run"],
        &["once"],
        &["plan"],
        &["crd"],
        &["bootstrap"],
        &["inject"],
        &["webhook"],
        &["credentials-server"],
    ] {
        let shown = ["kube-aws-iam-controller"]
            .iter()
            .chain(command)
            .copied()
            .collect::<Vec<_>>()
            .join(" ");
        let help = help(&[command, &["--help"]].concat());
        out.push_str(&format!("\n## `{shown} --help`\n\n```text\n{help}```\n"));
    }
    out
}

#[test]
fn flags_doc_matches_help() {
    let expected = flags_markdown();
    let path = repo_root().join("docs/flags.md");
    if std::env::var_os("UPDATE_DOCS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &expected).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != expected {
        let diff = similar::TextDiff::from_lines(&committed, &expected)
            .unified_diff()
            .header("docs/flags.md", "--help")
            .to_string();
        panic!(
            "docs/flags.md differs from the binary's --help; regenerate it with\n  \
             {REGENERATE_FLAGS}\n{diff}"
        );
    }
}

/// Every documentation page the docs index links to exists, and relative links in docs/ and
/// examples/ resolve.
#[test]
fn doc_links_resolve() {
    let mut broken = Vec::new();
    for dir in ["docs", "examples"] {
        for entry in std::fs::read_dir(repo_root().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "md") {
                continue;
            }
            let body = std::fs::read_to_string(&path).unwrap();
            for target in markdown_links(&body) {
                if target.contains("://")
                    || target.starts_with('#')
                    || target.starts_with("mailto:")
                {
                    continue;
                }
                let file = target.split('#').next().unwrap();
                if !path.parent().unwrap().join(file).exists() {
                    broken.push(format!("{}: {target}", path.display()));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// Targets of `[text](target)` links.
fn markdown_links(body: &str) -> Vec<String> {
    let mut links = Vec::new();
    let mut rest = body;
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        if let Some(end) = rest.find(')') {
            links.push(rest[..end].to_string());
            rest = &rest[end..];
        }
    }
    links
}

/// The example Deployment mounts the Secret of the example AWSIAMRole the way the controller
/// writes it, and the controller plans to create that Secret.
#[test]
fn example_mounts_the_secret_the_controller_writes() {
    let mut docs = Vec::new();
    for entry in std::fs::read_dir(repo_root().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            docs.extend(yaml_docs(
                &std::fs::read_to_string(&path).unwrap(),
                &path.display().to_string(),
            ));
        }
    }
    let role: AWSIAMRole = only(&docs, "AWSIAMRole", "examples/");
    let name = role.metadata.name.clone().expect("the AWSIAMRole is named");
    let d: Deployment = only(&docs, "Deployment", "examples/");
    let pod = pod_spec_of_deployment(&d);
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.secret.is_some())
        .expect("a Secret volume");
    let secret_volume = volume.secret.as_ref().unwrap();
    assert_eq!(
        secret_volume.secret_name.as_deref(),
        Some(name.as_str()),
        "the volume's Secret is named like the AWSIAMRole"
    );
    assert!(
        secret_volume.items.is_none(),
        "the whole Secret is mounted (credentials.process refers to credentials.json beside it)"
    );
    let c = only_container(pod, "examples/ Deployment");
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == volume.name)
        .expect("the container mounts the Secret volume");
    assert_eq!(mount.mount_path, MOUNT_PATH);
    assert!(
        mount.sub_path.is_none(),
        "a subPath mount is never updated, so refreshed credentials would not arrive"
    );
    assert_eq!(mount.read_only, Some(true));
    let file = env_value(c, "AWS_SHARED_CREDENTIALS_FILE").expect("AWS_SHARED_CREDENTIALS_FILE");
    let key = file
        .strip_prefix(&format!("{MOUNT_PATH}/"))
        .unwrap_or_else(|| panic!("{file} is not under {MOUNT_PATH}"));
    assert!(
        secret::DATA_KEYS.contains(&key),
        "{key} is not a key the controller writes ({:?})",
        secret::DATA_KEYS
    );
    assert_eq!(
        key,
        secret::KEY_PROCESS,
        "the example uses the refreshing credential_process profile"
    );
    assert!(
        secret::PROCESS_FILE.contains(&format!("cat {MOUNT_PATH}/{}", secret::KEY_JSON)),
        "credentials.process reads credentials.json from the mount path"
    );
    assert!(env_value(c, "AWS_REGION").is_some_and(|r| !r.is_empty()));

    let out = std::process::Command::new(BIN)
        .args([
            "plan",
            "--from",
            &repo_root().join("examples").display().to_string(),
            "--base-role-arn",
            BASE,
            "--output",
            "json",
        ])
        .env_clear()
        .output()
        .expect("the binary runs");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let plan: Value = serde_json::from_slice(&out.stdout).expect("a JSON plan");
    let actions = plan["actions"].as_array().unwrap();
    assert_eq!(actions.len(), 1, "{plan}");
    let a = &actions[0];
    assert_eq!(a["action"], "create", "{plan}");
    assert_eq!(a["reason"], "Missing");
    assert_eq!(a["name"], name.as_str());
    assert_eq!(
        a["roleArn"].as_str(),
        Some(format!("{BASE}{}", role.spec.role_reference).as_str())
    );
}

// ---------------------------------------------------------------------------------------------
// Container image
// ---------------------------------------------------------------------------------------------

#[test]
fn dockerfile_builds_the_binary_into_a_non_root_image() {
    let dockerfile = read("Dockerfile");
    let instructions: Vec<&str> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let froms: Vec<&str> = instructions
        .iter()
        .copied()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert!(froms.len() >= 2, "multi-stage: {froms:?}");
    assert!(
        dockerfile.contains("cargo build --release --locked"),
        "a locked release build"
    );
    let runtime = froms.last().unwrap();
    assert!(
        !runtime.contains(" AS "),
        "the last stage is the runtime: {runtime}"
    );
    assert!(dockerfile_uid() != 0, "the runtime user is not root");
    let entrypoint = instructions
        .iter()
        .find(|l| l.starts_with("ENTRYPOINT"))
        .expect("an ENTRYPOINT");
    assert!(
        entrypoint.contains("/kube-aws-iam-controller\""),
        "the binary is the entrypoint: {entrypoint}"
    );
    // Everything Cargo.toml names must be copied into the build stage and not be ignored.
    let manifest = read("Cargo.toml");
    let mut needed: BTreeSet<String> = ["Cargo.toml", "Cargo.lock", "src"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for line in manifest.lines() {
        if let Some(path) = line
            .trim()
            .strip_prefix("path = \"")
            .and_then(|p| p.strip_suffix('"'))
        {
            needed.insert(path.split('/').next().unwrap().to_string());
        }
        if line.trim() == "[[bench]]" {
            needed.insert("benches".into());
        }
        // Workspace members: cargo reads their manifests even to build one package.
        if let Some(members) = line
            .trim()
            .strip_prefix("members = [")
            .and_then(|m| m.strip_suffix(']'))
        {
            for member in members.split(',') {
                let member = member.trim().trim_matches('"');
                needed.insert(member.split('/').next().unwrap().to_string());
            }
        }
    }
    assert!(
        needed.contains("credentials-server"),
        "the sidecar crate is a workspace member: {needed:?}"
    );
    let copies: Vec<&str> = instructions
        .iter()
        .copied()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from="))
        .collect();
    let ignored = read(".dockerignore");
    for item in &needed {
        assert!(
            copies.iter().any(|c| c
                .split_whitespace()
                .any(|w| w.trim_end_matches('/') == item)),
            "the Dockerfile does not COPY {item} (needed by Cargo.toml)"
        );
        assert!(
            !ignored
                .lines()
                .any(|l| l.trim().trim_end_matches('/') == item),
            ".dockerignore excludes {item}"
        );
    }
    for heavy in ["target", ".git", ".venv"] {
        assert!(
            ignored
                .lines()
                .any(|l| l.trim().trim_end_matches('/') == heavy),
            ".dockerignore keeps {heavy}/ out of the build context"
        );
    }
}

/// New pods' sidecars run the small `credentials-server` binary at the path the mutation
/// writes; the image must build it and put it there, beside the controller (whose
/// `credentials-server` subcommand pods injected earlier still run).
#[test]
fn dockerfile_ships_the_sidecar_binary_where_the_mutation_points() {
    use kube_aws_iam_controller::delivery::mutate::{self, MutateOptions};
    let dockerfile = read("Dockerfile");
    // Continuation lines joined: one RUN instruction is one line.
    let joined = dockerfile.replace("\\\n", " ");
    let instructions: Vec<&str> = joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let runtime_from = instructions
        .iter()
        .rposition(|l| l.starts_with("FROM "))
        .expect("a FROM line");
    let (build, runtime) = instructions.split_at(runtime_from);

    let sidecar = mutate::sidecar(&MutateOptions::new("example.com/kaic:1"));
    let command = sidecar.command.clone().unwrap_or_default();
    assert_eq!(command, [mutate::SIDECAR_BINARY], "the sidecar's command");
    let probe = sidecar
        .startup_probe
        .and_then(|p| p.exec)
        .and_then(|e| e.command)
        .unwrap_or_default();
    assert_eq!(
        probe.first().map(String::as_str),
        Some(mutate::SIDECAR_BINARY),
        "the startup probe runs the binary itself"
    );
    let binary_name = mutate::SIDECAR_BINARY
        .rsplit('/')
        .next()
        .expect("a file name");

    // The build stage builds the bin (declared by the sidecar crate) in release mode.
    let manifest = read("credentials-server/Cargo.toml");
    assert!(
        manifest.contains(&format!("name = \"{binary_name}\"")),
        "credentials-server/Cargo.toml declares the bin {binary_name}"
    );
    let builds_it = build.iter().any(|l| {
        l.starts_with("RUN ")
            && l.contains("cargo build --release --locked")
            && l.contains(&format!("--bin {binary_name}"))
            && l.contains(&format!("target/release/{binary_name}"))
    });
    assert!(
        builds_it,
        "the build stage builds and installs {binary_name}: {build:#?}"
    );

    // The runtime stage copies it to exactly the path the mutation writes.
    let copied = runtime.iter().any(|l| {
        let words: Vec<&str> = l.split_whitespace().collect();
        words.first() == Some(&"COPY")
            && words.iter().any(|w| w.starts_with("--from="))
            && words.last() == Some(&mutate::SIDECAR_BINARY)
            && words
                .iter()
                .any(|w| w.ends_with(&format!("/{binary_name}")))
    });
    assert!(
        copied,
        "the runtime stage copies {binary_name} to {}: {runtime:#?}",
        mutate::SIDECAR_BINARY
    );
    // And the controller, whose subcommand older pods run, is still there.
    assert!(
        runtime.iter().any(|l| l.starts_with("COPY --from=")
            && l.ends_with("/usr/local/bin/kube-aws-iam-controller")),
        "the runtime stage still ships the controller"
    );
}
