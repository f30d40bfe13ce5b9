//! A refused Secret write reaches the AWSIAMRole, and a role that keeps failing backs off.
//!
//! The real binary runs `once` against the loopback API server, whose Secret writes are made to
//! answer 422 (as for an immutable Secret or an admission webhook's denial) and then 403; STS is
//! moto, whose AssumeRole calls are counted. The refusal must show in the Ready condition and a
//! Warning Event, with the expiry of the credentials still served; the next pass must make no
//! STS call for the role until its `retryAfter`; once that has passed and writes work again,
//! one pass serves the role and clears the failure count.

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use kube_aws_iam_controller::domain::crd::AWSIAMRole;

use crate::support::assert_contains;
use crate::support::harness::{
    BASE, Env, assert_condition, assert_no_leak, credential_values, role, text,
};

async fn get_role(env: &Env) -> AWSIAMRole {
    let api: Api<AWSIAMRole> = Api::namespaced(env.client(), "team-a");
    api.get("app").await.unwrap()
}

async fn secret(env: &Env) -> Secret {
    let api: Api<Secret> = Api::namespaced(env.client(), "team-a");
    api.get("app").await.unwrap()
}

async fn patch_role(env: &Env, status: bool, patch: serde_json::Value) {
    let api: Api<AWSIAMRole> = Api::namespaced(env.client(), "team-a");
    let (params, patch) = (PatchParams::default(), Patch::Merge(&patch));
    if status {
        api.patch_status("app", &params, &patch).await.unwrap();
    } else {
        api.patch("app", &params, &patch).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_secret_write_is_reported_and_backs_off() {
    let env = Env::with_role("write-refused", role("team-a", "app", "app")).await;
    let once = ["once", "--base-role-arn", BASE];
    env.run_ok(&once).await;
    let served = secret(&env).await;
    let expiry = get_role(&env).await.status.unwrap().expiration.unwrap();
    let mut sent = credential_values(&served);

    for (refusal, code) in [("422", 422), ("403", 403)] {
        // A spec edit makes the Secret due for refresh; the API server refuses the write.
        env.api.fail_writes("secrets", Some(code));
        let generation = get_role(&env).await.metadata.generation.unwrap();
        let duration = if code == 422 { 7200 } else { 3600 };
        patch_role(
            &env,
            false,
            serde_json::json!({"spec": {"roleSessionDuration": duration}}),
        )
        .await;
        assert!(get_role(&env).await.metadata.generation.unwrap() > generation);
        let assumed = env.moto.calls("AssumeRole");
        let out = env.run(&once).await;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert_eq!(env.moto.calls("AssumeRole"), assumed + 1, "{stderr}");

        // The condition and an Event say why, and which credentials are still served.
        let client = env.client();
        let message =
            assert_condition(&client, "team-a", "app", ("False", "WriteSecretFailed")).await;
        for says in [
            "were not stored: writing Secret team-a/app",
            refusal,
            &format!("the Secret in place is kept (valid until {expiry})"),
        ] {
            assert!(message.contains(says), "{says:?} missing from: {message}");
        }
        let stored = get_role(&env).await.status.unwrap();
        assert_eq!(
            stored.failed_attempts,
            Some(1),
            "a spec edit restarts the count"
        );
        assert!(stored.retry_after.is_some());
        assert_eq!(stored.expiration.as_deref(), Some(expiry.as_str()));
        let events: Api<Event> = Api::namespaced(env.client(), "team-a");
        let events = events.list(&ListParams::default()).await.unwrap().items;
        assert!(
            events.iter().any(|e| {
                e.reason.as_deref() == Some("WriteSecretFailed")
                    && e.type_.as_deref() == Some("Warning")
                    && e.note
                        .as_deref()
                        .is_some_and(|n| n.contains(refusal) && n.contains(&expiry))
            }),
            "no WriteSecretFailed Event naming {refusal} and {expiry}"
        );
        assert_eq!(
            secret(&env).await.data,
            served.data,
            "the Secret in place stays"
        );

        // The next pass backs off: no STS call, no write attempt; still reported as unresolved.
        let writes = env.api.write_count_for("secrets");
        env.run_code(&once, 1).await;
        assert_eq!(
            env.moto.calls("AssumeRole"),
            assumed + 1,
            "no STS call while backing off"
        );
        assert_eq!(env.api.write_count_for("secrets"), writes);
        assert_eq!(
            get_role(&env).await.status.unwrap().failed_attempts,
            Some(1)
        );
        let plan = env.run(&["plan", "--base-role-arn", BASE]).await;
        assert_contains(&text(&plan.stdout), "BackingOff");
        assert_no_leak(&plan, &sent);
    }

    // Writes work again and the retryAfter has passed (set back here, as time would): one pass
    // serves the role and clears the failure count.
    env.api.fail_writes("secrets", None);
    patch_role(
        &env,
        true,
        serde_json::json!({"status": {"retryAfter": "2000-01-01T00:00:00Z"}}),
    )
    .await;
    env.run_ok(&once).await;
    assert_condition(&env.client(), "team-a", "app", ("True", "CredentialsReady")).await;
    let stored = get_role(&env).await.status.unwrap();
    assert_eq!((stored.failed_attempts, stored.retry_after), (None, None));
    let renewed = secret(&env).await;
    assert_ne!(renewed.data, served.data);
    sent.extend(credential_values(&renewed));
    let events: Api<Event> = Api::namespaced(env.client(), "team-a");
    for e in events.list(&ListParams::default()).await.unwrap().items {
        let note = e.note.unwrap_or_default();
        assert!(!sent.iter().any(|v| note.contains(v.as_str())), "{note}");
    }
}
