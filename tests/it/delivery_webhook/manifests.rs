//! The `deploy/webhook/` component as `kubectl kustomize` renders it (full tier: needs kubectl):
//! a highly available webhook without RBAC, and the documented overlay's sidecar image.

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube_aws_iam_controller::delivery::ROLE_LABEL;
use serde_json::Value;

use crate::support::kubectl::kustomize;
use crate::support::manifests::{dockerfile_uid, kind_of, kinds, only, relative_path};
use crate::support::{ScratchDir, repo_root};

/// A kustomization deploying the controller with the webhook component, as docs/webhook.md
/// shows it.
fn render_with_component(extra: &str) -> Vec<Value> {
    let dir = ScratchDir::new("webhook-kustomize");
    let deploy = relative_path(dir.path(), &repo_root().join("deploy"));
    let component = relative_path(dir.path(), &repo_root().join("deploy/webhook"));
    std::fs::write(
        dir.path().join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - {}\ncomponents:\n  - {}\n{extra}",
            deploy.display(),
            component.display()
        ),
    )
    .unwrap();
    kustomize(dir.path())
}

#[test]
fn the_component_renders_a_highly_available_webhook_without_rbac() {
    let docs = render_with_component("");
    let found = kinds(&docs);
    for kind in [
        "Deployment",
        "PodDisruptionBudget",
        "Service",
        "ServiceAccount",
        "MutatingWebhookConfiguration",
        "Issuer",
        "Certificate",
    ] {
        assert!(found.contains(kind), "no {kind} rendered: {found:?}");
    }
    let webhook_docs: Vec<Value> = docs
        .iter()
        .filter(|d| {
            d["metadata"]["labels"]["app.kubernetes.io/name"] == "kube-aws-iam-controller-webhook"
                || kind_of(d) == "Issuer"
                || kind_of(d) == "Certificate"
        })
        .cloned()
        .collect();

    let d: Deployment = docs
        .iter()
        .filter(|d| kind_of(d) == "Deployment")
        .find(|d| d["metadata"]["name"] == "kube-aws-iam-controller-webhook")
        .map(|d| serde_json::from_value(d.clone()).unwrap())
        .expect("the webhook Deployment");
    let spec = d.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(2));
    let pod = spec.template.spec.as_ref().unwrap();
    assert!(
        !pod.topology_spread_constraints
            .clone()
            .unwrap_or_default()
            .is_empty()
            || pod
                .affinity
                .as_ref()
                .and_then(|a| a.pod_anti_affinity.as_ref())
                .is_some(),
        "replicas are spread over nodes"
    );
    assert_eq!(pod.automount_service_account_token, Some(false));
    let sa_name = pod.service_account_name.clone().unwrap();
    let sa: ServiceAccount = only(&webhook_docs, "ServiceAccount", "the webhook component");
    assert_eq!(sa.metadata.name.as_deref(), Some(sa_name.as_str()));
    assert_eq!(sa.automount_service_account_token, Some(false));
    // No RBAC object names the webhook's ServiceAccount.
    for doc in &docs {
        if kind_of(doc).ends_with("Binding") {
            for subject in doc["subjects"].as_array().into_iter().flatten() {
                assert_ne!(
                    subject["name"].as_str(),
                    Some(sa_name.as_str()),
                    "the webhook's ServiceAccount is bound to a role"
                );
            }
        }
    }
    let c = &pod.containers[0];
    let args: Vec<&str> = c.args.iter().flatten().map(String::as_str).collect();
    assert_eq!(args[0], "webhook");
    // The arguments parse, and name the files of the mounted certificate Secret.
    let cli = <kube_aws_iam_controller::cli::Cli as clap::Parser>::try_parse_from(
        std::iter::once("kube-aws-iam-controller").chain(args.iter().copied()),
    )
    .expect("the Deployment's arguments parse");
    let Some(kube_aws_iam_controller::cli::Command::Webhook(w)) = cli.command else {
        panic!("not the webhook subcommand");
    };
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| w.tls_cert_file.starts_with(&m.mount_path))
        .expect("the certificate's directory is a mount");
    assert!(
        mount.sub_path.is_none(),
        "a subPath mount never sees renewals"
    );
    assert!(w.tls_key_file.starts_with(&mount.mount_path));
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .unwrap();
    let tls_secret = volume.secret.as_ref().unwrap().secret_name.clone().unwrap();
    // Hardened like the controller's pods.
    let pod_sc = pod.security_context.as_ref().expect("pod securityContext");
    assert_eq!(pod_sc.run_as_non_root, Some(true));
    assert_eq!(pod_sc.run_as_user, Some(dockerfile_uid()));
    assert_eq!(
        pod_sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
        Some("RuntimeDefault")
    );
    let sc = c
        .security_context
        .as_ref()
        .expect("container securityContext");
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
        Some(vec!["ALL".to_string()])
    );
    let resources = c.resources.as_ref().expect("resources");
    assert!(
        resources
            .limits
            .as_ref()
            .is_some_and(|l| l.contains_key("memory"))
    );
    let image = format!(
        "registry.example.com/kube-aws-iam-controller:{}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(c.image.as_deref(), Some(image.as_str()));
    let sidecar_image = c
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "KUBE_AWS_IAM_CONTROLLER_SIDECAR_IMAGE")
        .and_then(|e| e.value.clone());
    assert_eq!(
        sidecar_image.as_deref(),
        Some(image.as_str()),
        "the injected sidecar runs the webhook's own image"
    );
    let port = c.ports.iter().flatten().find(|p| p.container_port == 8443);
    assert!(
        port.is_some(),
        "container port 8443 (the --webhook-addr default)"
    );
    for probe in [&c.liveness_probe, &c.readiness_probe] {
        let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(get.scheme.as_deref(), Some("HTTPS"));
    }

    let pdb: PodDisruptionBudget = only(&webhook_docs, "PodDisruptionBudget", "component");
    let pdb_spec = pdb.spec.unwrap();
    assert!(pdb_spec.min_available.is_some() || pdb_spec.max_unavailable.is_some());
    assert_eq!(
        pdb_spec.selector.unwrap().match_labels,
        spec.selector.match_labels
    );

    let svc: Service = only(&webhook_docs, "Service", "component");
    let svc_spec = svc.spec.unwrap();
    assert_eq!(svc_spec.selector, spec.selector.match_labels);

    let mwc: MutatingWebhookConfiguration =
        only(&docs, "MutatingWebhookConfiguration", "component");
    let hooks = mwc.webhooks.unwrap();
    assert_eq!(hooks.len(), 1);
    let h = &hooks[0];
    assert_eq!(h.admission_review_versions, vec!["v1".to_string()]);
    assert_eq!(h.failure_policy.as_deref(), Some("Fail"));
    assert_eq!(h.side_effects, "None");
    assert_eq!(h.reinvocation_policy.as_deref(), Some("IfNeeded"));
    assert!(h.timeout_seconds.is_some_and(|t| t <= 10));
    let service = h.client_config.service.as_ref().unwrap();
    assert_eq!(Some(service.name.as_str()), svc.metadata.name.as_deref());
    assert_eq!(
        Some(service.namespace.as_str()),
        svc.metadata.namespace.as_deref()
    );
    assert_eq!(service.path.as_deref(), Some("/mutate"));
    let rules = h.rules.clone().unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].operations, Some(vec!["CREATE".to_string()]));
    assert_eq!(rules[0].resources, Some(vec!["pods".to_string()]));
    assert_eq!(rules[0].api_groups, Some(vec![String::new()]));
    let object_selector = h.object_selector.clone().unwrap();
    let expr = object_selector.match_expressions.unwrap();
    assert_eq!(
        (expr[0].key.as_str(), expr[0].operator.as_str()),
        (ROLE_LABEL, "Exists")
    );
    let ns_exprs = h
        .namespace_selector
        .clone()
        .unwrap()
        .match_expressions
        .unwrap();
    let controller_ns = d.metadata.namespace.clone().unwrap();
    assert!(
        ns_exprs
            .iter()
            .any(|e| e.key == "kubernetes.io/metadata.name"
                && e.operator == "NotIn"
                && e.values.iter().flatten().any(|v| v == "kube-system")
                && e.values.iter().flatten().any(|v| *v == controller_ns)),
        "kube-system and the controller's namespace are excluded: {ns_exprs:?}"
    );

    // cert-manager: the serving Certificate writes the mounted Secret for the Service's DNS
    // name, and its CA is injected into the webhook configuration.
    let inject = mwc
        .metadata
        .annotations
        .unwrap_or_default()
        .get("cert-manager.io/inject-ca-from")
        .cloned()
        .expect("cert-manager.io/inject-ca-from");
    let (ns, name) = inject.split_once('/').unwrap();
    let certificate = docs
        .iter()
        .find(|d| {
            kind_of(d) == "Certificate"
                && d["metadata"]["namespace"] == ns
                && d["metadata"]["name"] == name
        })
        .expect("the injected Certificate is rendered");
    assert_eq!(certificate["spec"]["secretName"], tls_secret.as_str());
    let dns = format!("{}.{}.svc", service.name, service.namespace);
    assert!(
        certificate["spec"]["dnsNames"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == dns.as_str()),
        "the certificate names {dns}"
    );
    let issuer = certificate["spec"]["issuerRef"]["name"].as_str().unwrap();
    assert!(
        docs.iter()
            .any(|d| kind_of(d) == "Issuer" && d["metadata"]["name"] == issuer),
        "the Certificate's Issuer is rendered"
    );
}

/// The `replacements:` entry docs/webhook.md gives keeps --sidecar-image equal to the image an
/// `images:` override sets.
#[test]
fn the_documented_overlay_sets_the_sidecar_image_to_the_deployed_image() {
    let doc = std::fs::read_to_string(repo_root().join("docs/webhook.md")).unwrap();
    let start = doc
        .find("```yaml\napiVersion: kustomize.config.k8s.io/v1beta1")
        .expect("docs/webhook.md shows the overlay");
    let overlay = &doc[start + "```yaml\n".len()..];
    let overlay = &overlay[..overlay.find("```").unwrap()];
    let (_, rest) = overlay
        .split_once("components:")
        .expect("the overlay uses the component");
    let extra = rest
        .lines()
        .skip_while(|l| l.trim_start().starts_with('-') || l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    let docs = render_with_component(&format!("{extra}\n"));
    let d = docs
        .iter()
        .find(|d| {
            kind_of(d) == "Deployment" && d["metadata"]["name"] == "kube-aws-iam-controller-webhook"
        })
        .unwrap();
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    let image = c["image"].as_str().unwrap();
    assert!(
        !image.starts_with("registry.example.com/"),
        "the documented overlay sets an image: {image}"
    );
    let env = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "KUBE_AWS_IAM_CONTROLLER_SIDECAR_IMAGE")
        .unwrap();
    assert_eq!(env["value"].as_str(), Some(image));
}
