//! Admission: labelled pods get the shared mutation as a JSON patch, others pass untouched or
//! are refused naming the field, bad bodies get clear answers, and the webhook never calls the
//! Kubernetes API.

use std::io::{ErrorKind, Write as _};
use std::process::{Command, Stdio};

use base64::Engine as _;
use k8s_openapi::api::core::v1::Pod;
use kube_aws_iam_controller::delivery::ROLE_LABEL;
use kube_aws_iam_controller::delivery::mutate;
use serde_json::{Value, json};

use super::{
    BIN, Review as _, SEEDED, SIDECAR_IMAGE, fixture, options, requests_metric, response_of, setup,
    setup_with_env,
};
use crate::support::ScratchDir;
use crate::support::apiserver::ApiServer;
use crate::support::argv;
use crate::support::assert_contains;
use crate::support::harness::text;
use crate::support::https::Request;

fn decoded_patch(response: &Value) -> json_patch::Patch {
    assert_eq!(response["allowed"], true, "{response}");
    assert_eq!(response["patchType"], "JSONPatch", "{response}");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(response["patch"].as_str().expect("a base64 patch"))
        .expect("the patch is base64");
    serde_json::from_slice(&bytes).expect("the patch is a JSON patch")
}

/// A labelled pod gets a JSON patch that, applied to the pod as the API server would, gives
/// exactly the pod the shared mutation produces (what `inject` writes); the patched pod is a
/// valid Pod, and sending it again (reinvocation, or an already injected manifest) changes
/// nothing.
#[test]
fn labelled_pods_get_the_shared_mutation_as_a_json_patch() {
    let mut s = setup("webhook-labelled");
    for name in ["labelled-pod.json", "endpoint-pod-dry-run.json"] {
        let request = fixture(name);
        let pod = request["request"]["object"].clone();
        let reply = s.client.review(&request);
        let response = response_of(&reply, &request);
        let patch = decoded_patch(&response);
        let mut patched = pod.clone();
        json_patch::patch(&mut patched, &patch)
            .unwrap_or_else(|e| panic!("{name}: the patch does not apply to the pod: {e}"));

        let expected = mutate::mutated(&pod, &options())
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .expect("the shared mutation changes a labelled pod");
        assert_eq!(patched, expected, "{name}: webhook and mutation disagree");
        assert_eq!(
            patched,
            inject(&pod),
            "{name}: the webhook's pod differs from what `inject` prints"
        );
        assert_ne!(patched, pod, "{name}: the pod changed");
        let typed: Pod = serde_json::from_value(patched.clone())
            .unwrap_or_else(|e| panic!("{name}: the patched pod is no Pod: {e}"));
        assert!(typed.spec.is_some());

        let mut again = request.clone();
        again["request"]["object"] = patched;
        again["request"]["uid"] = json!("0d7c1b2a-reinvocation");
        let response = response_of(&s.client.review(&again), &again);
        assert_eq!(response["allowed"], true);
        assert!(
            response.get("patch").is_none(),
            "{name}: an injected pod gets no second patch: {response}"
        );
        assert!(
            !reply.body.contains(SEEDED),
            "{name}: the answer quotes the pod"
        );
    }
    let metrics = s.client.get("/metrics").body;
    assert_eq!(requests_metric(&metrics, "mutated"), 2.0, "{metrics}");
    assert_eq!(requests_metric(&metrics, "unchanged"), 2.0, "{metrics}");
    assert!(
        !s.webhook.logs().contains(SEEDED),
        "the logs quote the pod's environment"
    );
}

/// What `kube-aws-iam-controller inject -` prints for `pod`, with the webhook's flags.
fn inject(pod: &Value) -> Value {
    let mut child = Command::new(BIN)
        .args(argv(&format!(
            "inject - --sidecar-image {SIDECAR_IMAGE} --default-delivery process"
        )))
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(pod.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "inject: {}", text(&out.stderr));
    serde_saphyr::from_str(&text(&out.stdout)).unwrap_or_else(|e| {
        panic!(
            "inject printed no YAML document ({e}):\n{}",
            text(&out.stdout)
        )
    })
}

#[test]
fn unlabelled_pods_are_allowed_untouched() {
    let mut s = setup("webhook-unlabelled");
    let request = fixture("unlabelled-pod.json");
    assert!(
        request["request"]["object"]["metadata"]["labels"]
            .get(ROLE_LABEL)
            .is_none()
    );
    let response = response_of(&s.client.review(&request), &request);
    assert_eq!(response["allowed"], true, "{response}");
    assert!(response.get("patch").is_none(), "{response}");
    assert!(response.get("patchType").is_none(), "{response}");
    let metrics = s.client.get("/metrics").body;
    assert_eq!(requests_metric(&metrics, "unchanged"), 1.0, "{metrics}");
    assert_eq!(requests_metric(&metrics, "mutated"), 0.0, "{metrics}");
}

/// An opted-in pod that cannot get credentials is refused (it must not run without them), with
/// a message the API server shows to whoever created it, naming the field at fault.
#[test]
fn a_pod_that_cannot_be_mutated_is_refused_naming_the_field() {
    let mut s = setup("webhook-refused");
    let request = fixture("unknown-container.json");
    let response = response_of(&s.client.review(&request), &request);
    assert_eq!(response["allowed"], false, "{response}");
    assert_eq!(response["status"]["code"], 400, "{response}");
    let message = response["status"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("kube-aws-iam-controller/containers"),
        "the message names the annotation: {message}"
    );
    assert!(
        message.contains("sidekick"),
        "the message names the missing container: {message}"
    );
    let metrics = s.client.get("/metrics").body;
    assert_eq!(requests_metric(&metrics, "denied"), 1.0, "{metrics}");
}

/// Bodies that are no AdmissionReview get a clear answer — an AdmissionReview refusal when the
/// request's uid can be found, a plain 400 otherwise, 413 beyond the size cap — and the server
/// keeps serving, on the same connection and on new ones.
#[test]
fn bad_bodies_get_clear_answers_and_the_server_keeps_serving() {
    let mut s = setup("webhook-garbage");

    let reply = s.client.post_on("api", "this is not JSON");
    assert_eq!(reply.status, 400);
    assert!(reply.content_type.starts_with("text/plain"));
    assert_contains(&reply.body, "not JSON");
    assert_contains(&reply.body, "AdmissionReview");

    // Valid JSON with the uid but a field of the wrong type: refused inside an AdmissionReview.
    let mut wrong = fixture("labelled-pod.json");
    wrong["request"]["operation"] = json!("EXPLODE");
    let response = response_of(&s.client.post_on("api", &wrong.to_string()), &wrong);
    assert_eq!(response["allowed"], false);
    let message = response["status"]["message"].as_str().unwrap();
    assert_contains(message, "AdmissionReview");
    assert_contains(message, "EXPLODE");

    // Truncated: the uid cannot be trusted, so a plain 400.
    let whole = fixture("labelled-pod.json").to_string();
    let reply = s.client.post_on("api", &whole[..whole.len() / 2]);
    assert_eq!(reply.status, 400, "{}", reply.body);

    // The old v1beta1 envelope is named.
    let mut old = fixture("labelled-pod.json");
    old["apiVersion"] = json!("admission.k8s.io/v1beta1");
    let response = response_of(&s.client.post_on("api", &old.to_string()), &old);
    assert!(
        response["status"]["message"]
            .as_str()
            .unwrap()
            .contains("admission.k8s.io/v1beta1")
    );

    // Oversize, declared: refused before the body is read.
    let reply = s
        .client
        .send(&Request {
            method: "POST",
            path: "/mutate",
            declare_length: Some(8 * 1024 * 1024),
            ..Request::default()
        })
        .expect("an answer to an oversize request");
    assert_eq!(reply.status, 413, "{}", reply.body);
    assert!(reply.body.contains("3 MiB"), "{}", reply.body);

    // Oversize, actually sent (4 MiB of JSON).
    let big = format!("{{\"padding\":\"{}\"}}", "x".repeat(4 * 1024 * 1024));
    match s.client.send(&Request {
        method: "POST",
        path: "/mutate",
        body: Some(big.as_bytes()),
        ..Request::default()
    }) {
        Ok(reply) => assert_eq!(reply.status, 413, "{}", reply.body),
        // The server answers from the declared length and closes before the client finished
        // sending; a client that reads only after sending sees the closed connection instead.
        Err(e) => assert!(
            matches!(
                e.kind(),
                ErrorKind::ConnectionReset
                    | ErrorKind::BrokenPipe
                    | ErrorKind::ConnectionAborted
                    | ErrorKind::UnexpectedEof
            ),
            "{e} ({:?})",
            e.kind()
        ),
    }

    let get = s
        .client
        .send(&Request {
            path: "/mutate",
            ..Request::default()
        })
        .unwrap();
    assert_eq!(get.status, 405);

    // Still serving, on the connection used all along and on a new one.
    let request = fixture("unlabelled-pod.json");
    let reply = s.client.review(&request);
    assert!(
        reply.reused,
        "the keep-alive connection survived the bad bodies"
    );
    assert_eq!(response_of(&reply, &request)["allowed"], true);
    let reply = s
        .client
        .send(&Request {
            method: "POST",
            path: "/mutate",
            body: Some(request.to_string().as_bytes()),
            ..Request::default()
        })
        .unwrap();
    assert_eq!(response_of(&reply, &request)["allowed"], true);
    let metrics = s.client.get("/metrics").body;
    assert!(requests_metric(&metrics, "invalid") >= 5.0, "{metrics}");
    assert_eq!(requests_metric(&metrics, "unchanged"), 2.0, "{metrics}");
    assert!(
        s.webhook.child.try_wait().unwrap().is_none(),
        "still running"
    );
}

/// The webhook never calls the Kubernetes API, even with a kubeconfig and in-cluster
/// environment pointing at one: it needs no RBAC, and its ServiceAccount gets none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_makes_no_kubernetes_api_request() {
    let api = ApiServer::start().await;
    let scratch = ScratchDir::new("webhook-no-api");
    let kubeconfig = api.write_kubeconfig(scratch.path());
    let env = vec![
        ("KUBECONFIG", kubeconfig.display().to_string()),
        ("KUBERNETES_SERVICE_HOST", api.addr().ip().to_string()),
        ("KUBERNETES_SERVICE_PORT", api.addr().port().to_string()),
    ];
    let requests = tokio::task::spawn_blocking(move || {
        let mut s = setup_with_env("webhook-no-api-run", &env);
        let mut answered = 0;
        for name in [
            "labelled-pod.json",
            "endpoint-pod-dry-run.json",
            "unlabelled-pod.json",
            "unknown-container.json",
        ] {
            let request = fixture(name);
            response_of(&s.client.review(&request), &request);
            answered += 1;
        }
        s.client.get("/metrics");
        s.client.get("/readyz");
        answered
    })
    .await
    .unwrap();
    assert_eq!(requests, 4);
    let recorded = api.requests();
    assert!(
        recorded.is_empty(),
        "the webhook called the Kubernetes API: {:?}",
        recorded
            .iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect::<Vec<_>>()
    );
}
