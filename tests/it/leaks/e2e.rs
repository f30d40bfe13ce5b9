//! The compiled binary against the loopback API server and moto (full tier): API faults, an
//! unreachable STS and debug logs print no credential.

use kube_aws_iam_controller::domain::secret;

use crate::support::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_error_paths_and_debug_logs_print_no_credential() {
    let env = Env::start("leaks-live", mixed_state()).await;
    // The first Secret write fails with 500 (the action tries it again, logging the error);
    // everything runs with debug logs, twice, in both log formats.
    env.api.fail_nth_write(1, 500);
    let first = env
        .run_ok(&["once", "--debug", "--log-format", "json"])
        .await;
    assert!(
        text(&first.stderr).contains("transient API failure; trying again"),
        "the refused write was not retried"
    );
    let second = env
        .run_ok(&["once", "--debug", "--base-role-arn", BASE])
        .await;
    let secrets = all_secrets(&env.client()).await;
    let values: Vec<String> = secrets
        .iter()
        .filter(|s| s.metadata.labels.as_ref().is_some_and(secret::is_managed))
        .flat_map(credential_values)
        .collect();
    assert!(values.len() >= 6, "two Secrets with three values each");
    assert_no_leak(&first, &values);
    assert_no_leak(&second, &values);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sts_failures_print_no_credential() {
    let env = Env::start("leaks-sts-down", mixed_state()).await;
    // STS unreachable: every AssumeRole fails, after the SDK's retries.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let out = env
        .command(&["once", "--debug", "--base-role-arn", BASE])
        .env("AWS_ENDPOINT_URL_STS", format!("http://127.0.0.1:{port}"))
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("could not get credentials"), "{stderr}");
    assert_no_leak(&out, &[]);
    let client = env.client();
    let message =
        assert_condition(&client, "team-a", "new", ("False", "GetCredentialsFailed")).await;
    assert!(!message.contains(SEEDED));
}
