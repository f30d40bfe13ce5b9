//! The manifests as written: the Deployment, the CronJob and its dry-run Job, the RBAC's
//! ServiceAccount and binding.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube_aws_iam_controller::controller::plan::refresh;

use super::{
    CONTROLLER_NAMESPACE, SERVICE_ACCOUNT, args, assert_hardened, env_value, only_container,
    pod_spec_of_cronjob, pod_spec_of_deployment, pod_spec_of_job,
};
use crate::support::manifests::{docs_of, only};

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
