//! What STS returns is checked before it is written: a 200 reply with an empty field, without
//! an Expiration, or with credentials that are expired or about to be fails its action, keeps
//! the Secret in place, says why in the status and an Event, and is not tried again before the
//! status's `retryAfter`. A
//! duration above the IAM role's MaxSessionDuration is reported as that, not as role chaining.
//! STS is aws-smithy-mocks behind the real SDK client (so replies go through its deserializer);
//! the API is kube-fake-client.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use aws_smithy_mocks::{MockResponse, RuleMode, mock, mock_client};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::http::StatusCode;
use aws_smithy_types::body::SdkBody;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::ListParams;
use kube::{Api, Client};
use kube_aws_iam_controller::controller::apply::{Outcome, Stage};
use kube_aws_iam_controller::controller::sts::StsCredentialSource;
use kube_aws_iam_controller::domain::crd::AWSIAMRole;
use kube_fake_client::ClientBuilder;

use crate::support::harness::all_events;
use crate::support::sts::{self, controller, stored_role};

const MARKER: &str = "REPLYSECRET";

fn role(name: &str, duration: Option<i64>) -> AWSIAMRole {
    let mut r = stored_role("team-a", name, name);
    r.spec.role_session_duration = duration;
    r
}

/// A 200 AssumeRole reply whose Credentials element has no Expiration.
fn without_expiration() -> HttpResponse {
    let body = format!(
        "<AssumeRoleResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><AssumeRoleResult>\
         <AssumedRoleUser><AssumedRoleId>AROA:x</AssumedRoleId><Arn>arn:aws:sts::123456789012:assumed-role/no-expiry/x</Arn></AssumedRoleUser>\
         <Credentials><AccessKeyId>ASIANEW</AccessKeyId><SecretAccessKey>{MARKER}-new</SecretAccessKey><SessionToken>{MARKER}-new-token</SessionToken></Credentials>\
         </AssumeRoleResult><ResponseMetadata><RequestId>r</RequestId></ResponseMetadata></AssumeRoleResponse>"
    );
    HttpResponse::new(StatusCode::try_from(200).unwrap(), SdkBody::from(body))
}

/// The reply each role gets, by the last segment of its ARN; every call is recorded.
fn scripted_sts(calls: Arc<Mutex<Vec<(String, i32)>>>) -> StsCredentialSource {
    let rule = mock!(aws_sdk_sts::Client::assume_role).then_compute_response(move |req| {
        let arn = req.role_arn().unwrap_or_default().to_string();
        let name = arn.rsplit('/').next().unwrap_or_default().to_string();
        calls
            .lock()
            .unwrap()
            .push((name.clone(), req.duration_seconds().unwrap_or_default()));
        let new_secret = format!("{MARKER}-new");
        let new_token = format!("{MARKER}-new-token");
        match name.as_str() {
            "empty-key" => MockResponse::Output(sts::issued("", &new_secret, &new_token, 3600)),
            "empty-secret" => MockResponse::Output(sts::issued("ASIANEW", "", &new_token, 3600)),
            "empty-token" => MockResponse::Output(sts::issued("ASIANEW", &new_secret, "", 3600)),
            "no-expiry" => MockResponse::Http(without_expiration()),
            "expired" => MockResponse::Output(sts::issued("ASIANEW", &new_secret, &new_token, -60)),
            "short" => MockResponse::Output(sts::issued("ASIANEW", &new_secret, &new_token, 60)),
            // Would succeed at 3600 s if the controller retried as for role chaining.
            "max-duration" if req.duration_seconds() == Some(7200) => {
                MockResponse::Http(sts::error(
                    400,
                    "ValidationError",
                    "The requested DurationSeconds exceeds the MaxSessionDuration set for this role.",
                ))
            }
            _ => MockResponse::Output(sts::issued("ASIANEW", &new_secret, &new_token, 3600)),
        }
    });
    let client = mock_client!(aws_sdk_sts, RuleMode::MatchAny, [&rule]);
    sts::source(client, 1000, 1000)
}

async fn api(roles: &[AWSIAMRole]) -> Client {
    let mut builder = ClientBuilder::new()
        .with_resource::<AWSIAMRole>()
        .with_status_subresource::<AWSIAMRole>();
    for r in roles {
        builder =
            builder
                .with_object(r.clone())
                .with_object(sts::due_secret(r, "ASIAOLDKEY", MARKER));
    }
    builder.build().await.expect("fake API builds")
}

async fn secret_data(client: &Client) -> BTreeMap<String, Secret> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "team-a");
    secrets
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|s| (s.metadata.name.clone().unwrap_or_default(), s))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_sts_replies_fail_the_action_and_keep_the_secret() {
    // (role, what its status message must say)
    let cases: [(&str, Option<i64>, &str); 7] = [
        ("empty-key", None, "empty AccessKeyId"),
        ("empty-secret", None, "empty SecretAccessKey"),
        ("empty-token", None, "empty SessionToken"),
        ("no-expiry", None, "without an Expiration"),
        ("expired", None, "that expired at"),
        ("short", None, "valid for only"),
        ("max-duration", Some(7200), "MaxSessionDuration"),
    ];
    let roles: Vec<AWSIAMRole> = cases.iter().map(|(n, d, _)| role(n, *d)).collect();
    let client = api(&roles).await;
    let before = secret_data(&client).await;
    let calls = Arc::new(Mutex::new(Vec::new()));
    let ctl = controller(client.clone(), scripted_sts(calls.clone()));

    let pass = ctl.pass().await.expect("observation works");
    let report = &pass.report;
    for (name, _, _) in &cases {
        let action = report.actions.iter().find(|a| a.name == *name).unwrap();
        assert!(
            matches!(
                &action.outcome,
                Outcome::Failed {
                    stage: Stage::Sts,
                    ..
                }
            ),
            "{name}: {:?}",
            action.outcome
        );
    }
    // One STS call per role: no retry inside the pass, none at 3600 s for MaxSessionDuration.
    let mut seen = calls.lock().unwrap().clone();
    seen.sort();
    let mut wanted: Vec<(String, i32)> = cases
        .iter()
        .map(|(n, d, _)| (n.to_string(), d.unwrap_or(3600) as i32))
        .collect();
    wanted.sort();
    assert_eq!(seen, wanted);

    // Every Secret is exactly as it was.
    let after = secret_data(&client).await;
    for (name, secret) in &before {
        assert_eq!(
            after[name].data, secret.data,
            "{name}: the Secret in place was overwritten"
        );
    }

    let roles_api: Api<AWSIAMRole> = Api::namespaced(client.clone(), "team-a");
    for (name, _, says) in &cases {
        let status = roles_api.get(name).await.unwrap().status.unwrap();
        let ready = &status.conditions[0];
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "GetCredentialsFailed"),
            "{name}"
        );
        let message = &ready.message;
        assert!(message.contains(says), "{name}: {message}");
        assert!(
            message.contains("the Secret in place is kept (valid until"),
            "{name}: {message}"
        );
        assert!(!message.contains("1970"), "{name}: {message}");
        assert!(!message.contains("chaining"), "{name}: {message}");
        assert!(!message.contains(MARKER), "{name}: {message}");
    }
    let events = all_events(&client).await;
    for (name, _, _) in &cases {
        assert!(
            events.iter().any(|e| {
                e.reason.as_deref() == Some("GetCredentialsFailed")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(*name)
            }),
            "{name}: no GetCredentialsFailed Event"
        );
    }
    for e in &events {
        assert!(!e.note.clone().unwrap_or_default().contains(MARKER));
    }

    // Each failure is counted and the role backs off: the next pass makes no STS call for
    // it, and `once` still exits 1 while the failures stand.
    for (name, _, _) in &cases {
        let status = roles_api.get(name).await.unwrap().status.unwrap();
        assert_eq!(status.failed_attempts, Some(1), "{name}");
        let until: Timestamp = status.retry_after.unwrap().parse().unwrap();
        let wait = until.as_second() - Timestamp::now().as_second();
        assert!((20..=31).contains(&wait), "{name}: retry in {wait}s");
    }
    let (code, _) = ctl.once().await.unwrap();
    assert_eq!(code, 1);
    assert_eq!(
        calls.lock().unwrap().len(),
        cases.len(),
        "no STS call while backing off"
    );
}

async fn ready_message(client: &Client, name: &str) -> (String, String) {
    let roles: Api<AWSIAMRole> = Api::namespaced(client.clone(), "team-a");
    let status = roles.get(name).await.unwrap().status.unwrap();
    let ready = &status.conditions[0];
    (ready.reason.clone(), ready.message.clone())
}

/// GetCredentialsFailed messages stay short and carry no credentials: STS's
/// SignatureDoesNotMatch puts the canonical request (with the session token) on the lines
/// after its first; another error has a 2000-character message; an unreachable STS makes the
/// SDK's error chain hundreds of characters long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sts_failure_messages_are_short_and_hold_no_credentials() {
    let rule = mock!(aws_sdk_sts::Client::assume_role).then_compute_response(|req| {
        let name = req.role_arn().unwrap_or_default().rsplit('/').next().unwrap_or_default().to_string();
        match name.as_str() {
            "signature" => MockResponse::Http(sts::error(
                403,
                "SignatureDoesNotMatch",
                &format!(
                    "The request signature we calculated does not match the signature you provided.\n\nThe Canonical String for this request should have been\n'POST\n/\n\nx-amz-security-token:{MARKER}{}\n'",
                    "T0K3N".repeat(80)
                ),
            )),
            // A first line quoting the token: only redaction keeps it out.
            "echo" => MockResponse::Http(sts::error(
                403,
                "InvalidClientTokenId",
                &format!("The security token {} is invalid", "T0K3N".repeat(10)),
            )),
            _ => MockResponse::Http(sts::error(
                400,
                "InvalidParameterValue",
                &format!("internal {}", "detail ".repeat(300)),
            )),
        }
    });
    let sts = mock_client!(aws_sdk_sts, RuleMode::MatchAny, [&rule]);
    let source = sts::source(sts, 1000, 1000);
    let roles = [
        role("signature", None),
        role("verbose", None),
        role("echo", None),
    ];
    let client = api(&roles).await;
    let ctl = controller(client.clone(), source);
    let report = ctl.pass().await.unwrap().report;
    assert_eq!(report.failed(), 3, "{report}");

    // STS unreachable: the real SDK client against a closed port, no retries.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let unreachable = aws_sdk_sts::Client::from_conf(
        aws_sdk_sts::Config::builder()
            .behavior_version(aws_sdk_sts::config::BehaviorVersion::latest())
            .region(aws_sdk_sts::config::Region::new("eu-central-1"))
            .endpoint_url(format!("http://127.0.0.1:{port}"))
            .credentials_provider(aws_sdk_sts::config::Credentials::new(
                "AKIDEXAMPLE",
                format!("{MARKER}-controller"),
                None,
                None,
                "test",
            ))
            .retry_config(aws_sdk_sts::config::retry::RetryConfig::disabled())
            .build(),
    );
    let down_client = api(&[role("down", None)]).await;
    let ctl = controller(down_client.clone(), sts::source(unreachable, 1000, 1000));
    let report = ctl.pass().await.unwrap().report;
    assert_eq!(report.failed(), 1, "{report}");

    for (client, name, says) in [
        (
            &client,
            "signature",
            "SignatureDoesNotMatch: The request signature",
        ),
        (&client, "verbose", "InvalidParameterValue: internal detail"),
        (
            &client,
            "echo",
            "InvalidClientTokenId: The security token <redacted> is invalid",
        ),
        (&down_client, "down", "could not reach STS"),
    ] {
        let (reason, message) = ready_message(client, name).await;
        assert_eq!(reason, "GetCredentialsFailed", "{name}");
        assert!(message.contains(says), "{name}: {message}");
        assert!(!message.contains(MARKER), "{name}: {message}");
        assert!(!message.contains("T0K3N"), "{name}: {message}");
        // Role ARN, the error in a few words and the kept Secret's expiry.
        assert!(
            message.chars().count() <= 400,
            "{name}: {} characters: {message}",
            message.chars().count()
        );
        for e in all_events(client).await {
            let note = e.note.unwrap_or_default();
            assert!(
                !note.contains(MARKER) && note.chars().count() <= 400,
                "{note}"
            );
        }
    }
}

/// Throttling that outlasts the SDK's retries fails the action at STS and is counted as
/// `throttled`, the result the STS-throttling alert reads; nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_beyond_the_sdks_retries_is_counted_as_throttled() {
    use aws_sdk_sts::config::retry::RetryConfig;
    let rule = mock!(aws_sdk_sts::Client::assume_role)
        .sequence()
        .http_response(|| sts::error(400, "Throttling", "Rate exceeded"))
        .repeatedly()
        .build();
    let client = mock_client!(aws_sdk_sts, RuleMode::MatchAny, [&rule], |c| c
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(3)
                .with_initial_backoff(std::time::Duration::from_millis(1))
        ));
    let roles = [role("busy", None)];
    let api = api(&roles).await;
    let before = secret_data(&api).await;
    let ctl = controller(api.clone(), sts::source(client, 1000, 1000));
    let report = ctl.pass().await.expect("observation works").report;
    let action = report.actions.iter().find(|a| a.name == "busy").unwrap();
    assert!(
        matches!(
            &action.outcome,
            Outcome::Failed { stage: Stage::Sts, message } if message.contains("Throttling") || message.contains("throttl")
        ),
        "{:?}",
        action.outcome
    );
    assert_eq!(rule.num_calls(), 3, "the SDK retried before giving up");
    assert_eq!(report.sts_calls.get("throttled"), Some(&1), "{report}");
    assert_eq!(report.sts_calls.get("ok"), None, "{report}");
    assert_eq!(
        secret_data(&api).await["busy"].data,
        before["busy"].data,
        "the Secret in place is kept"
    );
}
