//! A server that quotes the request body in its error (as some admission webhooks do) must not
//! make the controller print the Secret it tried to write. The loopback API server answers every
//! Secret write with 422 and the request body in the message; the real binary runs `once` with
//! debug logs in both formats, and none of the credentials it sent appears in its output, as
//! the raw values or as the base64 the body carried.

use k8s_openapi::api::core::v1::Secret;

use crate::support::argv;
use crate::support::assert_contains;
use crate::support::harness::{BASE, Env, assert_no_leak, mixed_state, text};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echoed_request_bodies_are_redacted_from_write_errors() {
    // One state per log format: a refused write makes its role back off, so a second run on
    // the same state would write nothing.
    let mut runs = Vec::new();
    let mut bodies = Vec::new();
    for format in ["text", "json"] {
        let env = Env::start(&format!("redaction-echo-{format}"), mixed_state()).await;
        env.api.echo_writes("secrets", Some(422));
        let out = env
            .run(&argv(&format!(
                "once --debug --log-format {format} --base-role-arn {BASE}"
            )))
            .await;
        // Deletes are echoed too (their body is DeleteOptions); only Secrets carry data.
        let echoed: Vec<_> = env
            .api
            .echoed_bodies()
            .into_iter()
            .filter(|b| {
                serde_json::from_slice::<serde_json::Value>(b).is_ok_and(|v| v["kind"] == "Secret")
            })
            .collect();
        assert!(
            echoed.len() >= 2,
            "two Secret writes were echoed, got {}",
            echoed.len()
        );
        bodies.extend(echoed);
        runs.push(out);
    }
    let mut sent = Vec::new();
    for body in &bodies {
        let secret: Secret = serde_json::from_slice(body).expect("an echoed Secret");
        let data: serde_json::Value = serde_json::from_slice(body).unwrap();
        for value in data["data"].as_object().expect("Secret data").values() {
            // As the body carried it (base64) …
            sent.push(value.as_str().unwrap().to_string());
        }
        // … and the secret values inside it.
        let json: serde_json::Value = serde_json::from_slice(
            &secret.data.as_ref().unwrap()[kube_aws_iam_controller::domain::secret::KEY_JSON].0,
        )
        .unwrap();
        for key in ["SecretAccessKey", "SessionToken"] {
            sent.push(json[key].as_str().unwrap().to_string());
        }
    }
    for out in &runs {
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        // The failure is still explained: who refused, with which status.
        assert_contains(&stderr, "writing Secret team-a/new");
        assert_contains(&stderr, "422");
        assert!(stderr.contains("echo.apiserver.test"), "{stderr}");
        assert_no_leak(out, &sent);
    }
}
