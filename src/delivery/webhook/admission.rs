//! One AdmissionReview in, one answer out: pure, so every path is unit-tested without TLS.
//!
//! The envelope is decoded with kube's `admission.k8s.io/v1` types, but the pod itself is kept
//! as the raw JSON the API server sent and handed to [`mutate::patch`] untouched: a round trip
//! through typed structs could drop or reorder fields, and the JSON patch must address the
//! object exactly as the API server holds it. Decoding errors therefore never quote the pod
//! (its environment may hold secrets).

use base64::Engine as _;
use kube::core::DynamicObject;
use kube::core::admission::{
    AdmissionRequest, AdmissionReview, META_API_VERSION_V1, META_KIND, Operation,
};
use serde_json::{Value, json};

use crate::delivery::mutate::{self, MutateOptions};

/// The largest request body read. The API server never sends more (its own request limit is
/// 3 MiB, and objects are far smaller); anything beyond is refused before decoding.
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// What became of a request, the `result` label of the requests metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A labelled pod answered with a patch.
    Mutated,
    /// Allowed without a patch: not opted in, already mutated, or not a pod creation.
    Unchanged,
    /// A labelled pod that cannot get credentials: refused, so it never runs without them.
    Denied,
    /// A body that is not an `admission.k8s.io/v1` AdmissionReview.
    Invalid,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [
        Outcome::Mutated,
        Outcome::Unchanged,
        Outcome::Denied,
        Outcome::Invalid,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Mutated => "mutated",
            Outcome::Unchanged => "unchanged",
            Outcome::Denied => "denied",
            Outcome::Invalid => "invalid",
        }
    }
}

/// The HTTP answer to one `/mutate` request, plus what to log.
#[derive(Debug)]
pub struct Answer {
    /// 200 for every AdmissionReview answer; 400 or 413 when no request UID could be found
    /// (the API server cannot match an answer without one).
    pub http_status: u16,
    /// `application/json` for an AdmissionReview, `text/plain` for a bare HTTP error.
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub outcome: Outcome,
    /// The request's UID, namespace and pod name (or generateName), for logs.
    pub uid: String,
    pub namespace: String,
    pub name: String,
    /// Why the request was denied or invalid.
    pub message: Option<String>,
}

/// Answers the body of a `POST /mutate`.
pub fn review(body: &[u8], options: &MutateOptions) -> Answer {
    let (request, object) = match decode(body) {
        Ok(decoded) => decoded,
        Err(answer) => return *answer,
    };
    let namespace = request.namespace.clone().unwrap_or_default();
    let name = if request.name.is_empty() {
        object
            .pointer("/metadata/generateName")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    } else {
        request.name.clone()
    };
    let answer = Answer::to(request.uid.clone(), namespace, name);
    let is_pod_creation = request.operation == Operation::Create
        && request.kind.group.is_empty()
        && request.kind.kind == "Pod"
        && request
            .sub_resource
            .as_deref()
            .unwrap_or_default()
            .is_empty();
    if !is_pod_creation {
        // Only pod creations are registered; anything else passes untouched.
        return answer.allowed(json!({ "allowed": true }));
    }
    if !object.is_object() {
        let message = "request.object must be the Pod being created".to_string();
        return answer.refused(Outcome::Invalid, message);
    }
    admit_pod(answer, &object, options)
}

/// The request of an admission.k8s.io/v1 AdmissionReview and, kept as raw JSON, the object it
/// is about; or the answer refusing a body that is not one.
fn decode(body: &[u8]) -> Result<(AdmissionRequest<DynamicObject>, Value), Box<Answer>> {
    let mut value: Value = serde_json::from_slice(body).map_err(|e| {
        Box::new(bare_error(
            400,
            format!(
                "the request body is not JSON ({e}); expected an admission.k8s.io/v1 AdmissionReview"
            ),
        ))
    })?;
    let uid = value
        .pointer("/request/uid")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())
        .map(String::from);
    // The pod stays raw JSON: taken out before the envelope is decoded.
    let object = value
        .pointer_mut("/request/object")
        .map(Value::take)
        .unwrap_or(Value::Null);
    if let Some(old) = value.pointer_mut("/request/oldObject") {
        *old = Value::Null;
    }
    let review: AdmissionReview<DynamicObject> = serde_json::from_value(value).map_err(|e| {
        let message = format!("the body is not an admission.k8s.io/v1 AdmissionReview: {e}");
        Box::new(invalid(uid.clone(), message))
    })?;
    if review.types.kind != META_KIND || review.types.api_version != META_API_VERSION_V1 {
        return Err(Box::new(invalid(
            uid,
            format!(
                "apiVersion/kind must be {META_API_VERSION_V1}/{META_KIND}, got {}/{} \
                 (register the webhook with admissionReviewVersions: [v1])",
                clip(&review.types.api_version),
                clip(&review.types.kind)
            ),
        )));
    }
    let Some(request) = review.request else {
        return Err(Box::new(invalid(
            uid,
            "the AdmissionReview has no request".into(),
        )));
    };
    if request.uid.is_empty() {
        return Err(Box::new(invalid(None, "request.uid is empty".into())));
    }
    Ok((request, object))
}

/// A pod being created: allowed with the mutation's patch, allowed as it is when it needs none,
/// or denied with the reason it cannot be given credentials.
fn admit_pod(answer: Answer, pod: &Value, options: &MutateOptions) -> Answer {
    match mutate::patch(pod, options) {
        Ok(Some(patch)) if !patch.0.is_empty() => match serde_json::to_vec(&patch) {
            Ok(bytes) => {
                let mut answer = answer.allowed(json!({
                    "allowed": true,
                    "patchType": "JSONPatch",
                    "patch": base64::engine::general_purpose::STANDARD.encode(bytes),
                }));
                answer.outcome = Outcome::Mutated;
                answer
            }
            Err(e) => answer.refused(Outcome::Denied, format!("cannot serialise the patch: {e}")),
        },
        Ok(_) => answer.allowed(json!({ "allowed": true })),
        Err(e) => {
            let message = format!("kube-aws-iam-controller cannot give this pod credentials: {e}");
            answer.refused(Outcome::Denied, message)
        }
    }
}

impl Answer {
    /// An AdmissionReview answer to request `uid`, so far without a body.
    fn to(uid: String, namespace: String, name: String) -> Answer {
        Answer {
            http_status: 200,
            content_type: "application/json",
            body: Vec::new(),
            outcome: Outcome::Unchanged,
            uid,
            namespace,
            name,
            message: None,
        }
    }

    /// The answer allowing the request with this `response`.
    fn allowed(mut self, response: Value) -> Answer {
        self.body = self::response(&self.uid, response);
        self
    }

    /// The answer refusing the request with `message`.
    fn refused(mut self, outcome: Outcome, message: String) -> Answer {
        self.outcome = outcome;
        self.body = response(&self.uid, refusal(&message));
        self.message = Some(message);
        self
    }
}

/// `{"allowed": false, "status": …}` with a 400 status the API server relays to the client.
fn refusal(message: &str) -> Value {
    json!({
        "allowed": false,
        "status": {
            "status": "Failure",
            "code": 400,
            "reason": "BadRequest",
            "message": message,
        },
    })
}

/// The AdmissionReview answer. TypeMeta is always `admission.k8s.io/v1` (the only version
/// accepted), and the patch is base64 as the API server's `[]byte` field expects.
fn response(uid: &str, mut fields: Value) -> Vec<u8> {
    fields["uid"] = json!(uid);
    let review = json!({
        "apiVersion": META_API_VERSION_V1,
        "kind": META_KIND,
        "response": fields,
    });
    serde_json::to_vec(&review).unwrap_or_default()
}

/// A body that is no usable AdmissionReview: answered as one (so the API server shows the
/// message) when its UID is known, else a plain HTTP 400.
fn invalid(uid: Option<String>, message: String) -> Answer {
    match uid {
        Some(uid) => {
            Answer::to(uid, String::new(), String::new()).refused(Outcome::Invalid, message)
        }
        None => bare_error(400, message),
    }
}

/// A plain-text HTTP error (no AdmissionReview can be addressed without a UID).
pub fn bare_error(http_status: u16, message: String) -> Answer {
    Answer {
        http_status,
        content_type: "text/plain; charset=utf-8",
        body: format!("{message}\n").into_bytes(),
        outcome: Outcome::Invalid,
        uid: String::new(),
        namespace: String::new(),
        name: String::new(),
        message: Some(message),
    }
}

/// At most 64 characters of a value quoted back in a message.
fn clip(s: &str) -> String {
    format!("{:?}", mutate::truncated(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> MutateOptions {
        MutateOptions::new("registry.example.com/kube-aws-iam-controller:test")
    }

    const UID: &str = "705ab4f5-6393-11e8-b7cc-42010a800002";

    fn request(object: Value) -> Value {
        json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": UID,
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
                "requestResource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "team-a",
                "operation": "CREATE",
                "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller", "uid": "u", "groups": ["system:serviceaccounts"]},
                "object": object,
                "oldObject": null,
                "dryRun": false,
                "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}
            }
        })
    }

    fn pod(labels: Value) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": "app-7d9c-", "namespace": "team-a", "labels": labels},
            "spec": {"containers": [{"name": "app", "image": "app:1", "env": [{"name": "DB_PASSWORD", "value": "hunter2-SECRETVALUE"}]}]}
        })
    }

    /// The answer to `body`, sent as JSON.
    fn answer(body: &Value) -> Answer {
        review(body.to_string().as_bytes(), &options())
    }

    fn decode(answer: &Answer) -> Value {
        serde_json::from_slice(&answer.body).unwrap()
    }

    #[test]
    fn unlabelled_pods_are_allowed_untouched_and_typemeta_and_uid_are_echoed() {
        let a = answer(&request(pod(json!({"app": "x"}))));
        assert_eq!((a.http_status, a.outcome), (200, Outcome::Unchanged));
        assert_eq!(a.name, "app-7d9c-");
        let v = decode(&a);
        assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(v["kind"], "AdmissionReview");
        assert_eq!(v["response"]["uid"], UID, "{v}");
        assert_eq!(v["response"]["allowed"], true);
        assert!(v["response"].get("patch").is_none());
        assert!(v["response"].get("patchType").is_none());
    }

    #[test]
    fn other_operations_and_kinds_pass_untouched() {
        let mut update = request(pod(json!({"kube-aws-iam-controller/role": "app"})));
        update["request"]["operation"] = json!("UPDATE");
        let mut sub = request(pod(json!({"kube-aws-iam-controller/role": "app"})));
        sub["request"]["subResource"] = json!("binding");
        for body in [update, sub] {
            let a = answer(&body);
            assert_eq!(a.outcome, Outcome::Unchanged);
            assert_eq!(decode(&a)["response"]["allowed"], true);
        }
    }

    #[test]
    fn garbage_is_a_bare_400_and_never_panics() {
        for body in [
            &b""[..],
            b"\xff\xfe",
            b"{",
            b"null",
            b"[1,2]",
            b"{\"request\": 5}",
        ] {
            let a = review(body, &options());
            assert_eq!(a.http_status, 400, "{body:?}");
            assert_eq!(a.outcome, Outcome::Invalid);
            let text = String::from_utf8(a.body).unwrap();
            assert!(
                text.contains("AdmissionReview") || text.contains("request"),
                "{text}"
            );
        }
    }

    #[test]
    fn a_malformed_review_with_a_uid_is_refused_in_an_admission_review() {
        let mut body = request(pod(json!({})));
        body["request"]["operation"] = json!(42);
        let a = answer(&body);
        assert_eq!((a.http_status, a.outcome), (200, Outcome::Invalid));
        let v = decode(&a);
        assert_eq!(v["response"]["allowed"], false);
        assert_eq!(v["response"]["uid"], UID);
        let message = v["response"]["status"]["message"].as_str().unwrap();
        assert!(message.contains("AdmissionReview"), "{message}");
        assert!(
            !message.contains("SECRETVALUE"),
            "the pod is never quoted: {message}"
        );

        let mut old = request(pod(json!({})));
        old["apiVersion"] = json!("admission.k8s.io/v1beta1");
        let a = answer(&old);
        let v = decode(&a);
        let message = v["response"]["status"]["message"].as_str().unwrap();
        assert!(message.contains("admission.k8s.io/v1beta1"), "{message}");

        let mut no_object = request(Value::Null);
        no_object["request"]["object"] = Value::Null;
        let a = answer(&no_object);
        assert_eq!(a.outcome, Outcome::Invalid);
        assert!(
            a.message.unwrap().contains("request.object"),
            "names the field"
        );
    }

    #[test]
    fn a_patch_from_the_mutation_is_answered_as_base64_json_patch() {
        let object = pod(json!({"kube-aws-iam-controller/role": "app"}));
        let a = answer(&request(object.clone()));
        assert_eq!(a.outcome, Outcome::Mutated);
        let v = decode(&a);
        assert_eq!(v["response"]["allowed"], true);
        assert_eq!(v["response"]["patchType"], "JSONPatch");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(v["response"]["patch"].as_str().unwrap())
            .unwrap();
        let got: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
        let expected = mutate::patch(&object, &options()).unwrap().unwrap();
        assert_eq!(got, expected);
        assert!(!String::from_utf8_lossy(&a.body).contains("SECRETVALUE"));
    }

    #[test]
    fn a_labelled_pod_that_cannot_be_mutated_is_denied_naming_the_field() {
        let mut object = pod(json!({"kube-aws-iam-controller/role": "app"}));
        object["metadata"]["annotations"] = json!({"kube-aws-iam-controller/delivery": "pigeon"});
        let a = answer(&request(object));
        assert_eq!((a.http_status, a.outcome), (200, Outcome::Denied));
        let v = decode(&a);
        assert_eq!(v["response"]["allowed"], false);
        assert_eq!(v["response"]["status"]["code"], 400);
        let message = v["response"]["status"]["message"].as_str().unwrap();
        assert!(
            message.contains("kube-aws-iam-controller/delivery"),
            "{message}"
        );
        assert!(!message.contains("SECRETVALUE"), "{message}");
    }
}
