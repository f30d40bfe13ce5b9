//! The executor in process: kube-fake-client as the API, aws-smithy-mocks as STS, faults
//! injected on both sides. A failure in one action never stops the others; a pass that cannot
//! observe applies nothing; once faults clear, one pass converges and the next is a no-op.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use aws_sdk_sts::config::retry::RetryConfig;
use aws_sdk_sts::operation::assume_role::AssumeRoleOutput;
use aws_smithy_mocks::{MockResponse, RuleMode, mock, mock_client};
use clap::Parser as _;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ListParams, ObjectMeta, PostParams};
use kube::{Api, Client};
use kube_aws_iam_controller::cli::Cli;
use kube_aws_iam_controller::controller::apply::{Outcome, Stage};

use kube_aws_iam_controller::controller::pass::Controller;
use kube_aws_iam_controller::controller::sts::StsCredentialSource;
use kube_aws_iam_controller::domain::crd::AWSIAMRole;
use kube_fake_client::{ClientBuilder, Error as FakeError, interceptor};

use crate::support::assert_contains;
use crate::support::harness::{all_events, all_secrets, assert_events};
use crate::support::sts::{self, controller, stored_role};

const SECRET_MARKER: &str = "MOCKSECRET";

/// Switchable faults shared with the fake API's interceptors and the STS mock.
#[derive(Default)]
struct Faults {
    fail_create_b: AtomicBool,
    conflict_replace_c: AtomicBool,
    deny_d: AtomicBool,
    fail_secret_list: AtomicBool,
    writes: AtomicUsize,
}

/// A managed Secret for `role` whose credentials expire in ten minutes (so it is refreshed).
fn expiring_secret(role: &AWSIAMRole) -> Secret {
    sts::due_secret(role, &format!("ASIA{SECRET_MARKER}OLD"), SECRET_MARKER)
}

async fn fake_api(faults: Arc<Faults>) -> Client {
    let roles = vec![
        stored_role("team-a", "a", "app-a"),
        stored_role("team-a", "b", "app-b"),
        stored_role("team-a", "c", "app-c"),
        stored_role("team-b", "d", "denied-role"),
        stored_role("team-b", "e", "app-e"),
    ];
    let c_secret = expiring_secret(&roles[2]);
    let f = faults.clone();
    let g = faults.clone();
    let h = faults.clone();
    let w = faults.clone();
    let funcs = interceptor::Funcs::new()
        .create(move |ctx| {
            let is_secret = ctx.object.get("kind").and_then(|k| k.as_str()) == Some("Secret");
            let name = ctx
                .object
                .pointer("/metadata/name")
                .and_then(|n| n.as_str());
            if is_secret && name == Some("b") && f.fail_create_b.load(Ordering::SeqCst) {
                return Err(FakeError::Internal("injected failure".into()));
            }
            if is_secret {
                f.writes.fetch_add(1, Ordering::SeqCst);
            }
            Ok(None)
        })
        .replace(move |ctx| {
            if ctx.name == "c" && g.conflict_replace_c.load(Ordering::SeqCst) {
                return Err(FakeError::Conflict("the object has been modified".into()));
            }
            g.writes.fetch_add(1, Ordering::SeqCst);
            Ok(None)
        })
        .list(move |ctx| {
            if ctx.params.label_selector.is_some() && h.fail_secret_list.load(Ordering::SeqCst) {
                return Err(FakeError::Internal("injected list failure".into()));
            }
            Ok(None)
        })
        .patch_status(move |_| {
            w.writes.fetch_add(1, Ordering::SeqCst);
            Ok(None)
        });
    let mut builder = ClientBuilder::new()
        .with_resource::<AWSIAMRole>()
        .with_status_subresource::<AWSIAMRole>()
        .with_interceptor_funcs(funcs)
        .with_object(c_secret);
    for r in roles {
        builder = builder.with_object(r);
    }
    builder.build().await.expect("fake API builds")
}

/// Credentials for `session`, marked with [`SECRET_MARKER`].
fn issued(session: &str, duration: i64) -> AssumeRoleOutput {
    let key = format!("ASIA{SECRET_MARKER}");
    let secret = format!("{SECRET_MARKER}-{session}");
    sts::issued(
        &key,
        &secret,
        &format!("{SECRET_MARKER}-token-{session}"),
        duration,
    )
}

/// STS: AccessDenied for `denied-role` while `deny_d` is set; one Throttling answer for
/// `app-e` (the SDK retries it); credentials for everything else.
fn sts_source(faults: Arc<Faults>, calls: Arc<AtomicUsize>) -> StsCredentialSource {
    let deny = faults.clone();
    let denied = mock!(aws_sdk_sts::Client::assume_role)
        .match_requests(move |req| {
            req.role_arn().unwrap_or_default().ends_with("/denied-role")
                && deny.deny_d.load(Ordering::SeqCst)
        })
        .then_http_response(|| {
            sts::error(
                403,
                "AccessDenied",
                "User is not authorized to perform: sts:AssumeRole",
            )
        });
    let throttled = mock!(aws_sdk_sts::Client::assume_role)
        .match_requests(|req| req.role_arn().unwrap_or_default().ends_with("/app-e"))
        .sequence()
        .http_response(|| sts::error(400, "Throttling", "Rate exceeded"))
        .output(|| issued("team-b.e", 3600))
        .build();
    let counter = calls.clone();
    let served = mock!(aws_sdk_sts::Client::assume_role).then_compute_response(move |req| {
        counter.fetch_add(1, Ordering::SeqCst);
        let session = req.role_session_name().unwrap_or_default();
        MockResponse::Output(issued(
            session,
            i64::from(req.duration_seconds().unwrap_or(3600)),
        ))
    });
    let client = mock_client!(
        aws_sdk_sts,
        RuleMode::MatchAny,
        [&denied, &throttled, &served],
        |c| c.retry_config(
            RetryConfig::standard()
                .with_max_attempts(3)
                .with_initial_backoff(Duration::from_millis(1))
        )
    );
    let _ = faults;
    sts::source(client, 1000, 1000)
}

fn outcome<'a>(
    report: &'a kube_aws_iam_controller::controller::apply::PassReport,
    name: &str,
) -> &'a Outcome {
    &report
        .actions
        .iter()
        .find(|a| a.name == name)
        .unwrap()
        .outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_fail_single_actions_back_off_and_then_converge() {
    let faults = Arc::new(Faults::default());
    for flag in [
        &faults.fail_create_b,
        &faults.conflict_replace_c,
        &faults.deny_d,
    ] {
        flag.store(true, Ordering::SeqCst);
    }
    let client = fake_api(faults.clone()).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let ctl = controller(client.clone(), sts_source(faults.clone(), calls.clone()));

    let first = ctl.pass().await.expect("observation works");
    let report = &first.report;
    assert_eq!(outcome(report, "a"), &Outcome::Done);
    assert!(matches!(
        outcome(report, "b"),
        Outcome::Failed {
            stage: Stage::Secret,
            ..
        }
    ));
    assert!(
        matches!(outcome(report, "c"), Outcome::Failed { stage: Stage::Secret, message } if message.contains("409"))
    );
    assert!(
        matches!(outcome(report, "d"), Outcome::Failed { stage: Stage::Sts, message } if message.contains("denied"))
    );
    assert_eq!(
        outcome(report, "e"),
        &Outcome::Done,
        "throttling is retried by the SDK"
    );
    assert_eq!(report.failed(), 3);
    assert_eq!(report.sts_calls.get("denied"), Some(&1));
    assert_eq!(report.sts_calls.get("ok"), Some(&4));
    assert!(!format!("{report}").contains(SECRET_MARKER));
    assert!(!format!("{report:?}").contains(SECRET_MARKER));

    // The denied role says why in its status; the others were served.
    let roles: Api<AWSIAMRole> = Api::namespaced(client.clone(), "team-b");
    let d = roles.get("d").await.unwrap();
    let ready = &d.status.as_ref().unwrap().conditions[0];
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "GetCredentialsFailed")
    );
    assert!(ready.message.contains("denied"), "{}", ready.message);
    let events = all_events(&client).await;
    let expected = [
        ("d", "GetCredentialsFailed"),
        ("a", "CreateCredentials"),
        ("e", "CreateCredentials"),
    ];
    assert_events(&events, &expected);
    for e in &events {
        assert!(!e.note.clone().unwrap_or_default().contains(SECRET_MARKER));
    }
    let names: Vec<String> = all_secrets(&client)
        .await
        .into_iter()
        .filter_map(|s| s.metadata.name)
        .collect();
    assert!(names.contains(&"a".to_string()) && names.contains(&"e".to_string()));
    assert!(!names.contains(&"b".to_string()) && !names.contains(&"d".to_string()));

    // While the faults last, `once` reports that some actions failed.
    let (code, _) = ctl.once().await.unwrap();
    assert_eq!(code, 1);

    // Faults clear, but the failed roles back off: no STS call for them before their
    // retryAfter, and `once` still reports them.
    for flag in [
        &faults.fail_create_b,
        &faults.conflict_replace_c,
        &faults.deny_d,
    ] {
        flag.store(false, Ordering::SeqCst);
    }
    let sts_before = calls.load(Ordering::SeqCst);
    let waiting = ctl.pass().await.unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        sts_before,
        "{}",
        waiting.report
    );
    for name in ["b", "c", "d"] {
        let action = waiting.report.actions.iter().find(|a| a.name == name);
        assert_eq!(
            action.map(|a| a.reason),
            Some(kube_aws_iam_controller::controller::plan::Reason::BackingOff),
            "{name}"
        );
    }
    let (code, _) = ctl.once().await.unwrap();
    assert_eq!(code, 1, "backing off is not resolved");

    // Time passes beyond every retryAfter: one pass converges …
    let all_roles: Api<AWSIAMRole> = Api::all(client.clone());
    for r in all_roles.list(&ListParams::default()).await.unwrap().items {
        let status = r.status.unwrap_or_default();
        if status.retry_after.is_some() {
            let ns = r.metadata.namespace.unwrap();
            let name = r.metadata.name.unwrap();
            let api: Api<AWSIAMRole> = Api::namespaced(client.clone(), &ns);
            let patch = serde_json::json!({"status": {"retryAfter": "2000-01-01T00:00:00Z"}});
            api.patch_status(
                &name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await
            .unwrap();
        }
    }
    let second = ctl.pass().await.unwrap();
    assert_eq!(second.report.failed(), 0, "{}", second.report);
    let (once_code, _) = ctl.once().await.unwrap();
    assert_eq!(once_code, 0);
    // … and then nothing is written and STS is not called.
    let (writes, sts) = (
        faults.writes.load(Ordering::SeqCst),
        calls.load(Ordering::SeqCst),
    );
    let third = ctl.pass().await.unwrap();
    assert_eq!(third.report.writes, 0, "{}", third.report);
    assert_eq!(faults.writes.load(Ordering::SeqCst), writes);
    assert_eq!(calls.load(Ordering::SeqCst), sts);
    assert!(
        third
            .report
            .actions
            .iter()
            .all(|a| a.kind == kube_aws_iam_controller::controller::plan::ActionKind::Skip)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_list_applies_nothing() {
    let faults = Arc::new(Faults::default());
    faults.fail_secret_list.store(true, Ordering::SeqCst);
    let client = fake_api(faults.clone()).await;
    // An orphan that would be deleted if the pass ran.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "team-a");
    let mut orphan = expiring_secret(&stored_role("team-a", "gone", "gone"));
    orphan.metadata.owner_references = None;
    orphan.metadata = ObjectMeta {
        resource_version: None,
        ..orphan.metadata
    };
    secrets
        .create(&PostParams::default(), &orphan)
        .await
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let ctl = controller(client.clone(), sts_source(faults.clone(), calls.clone()));
    let writes_before = faults.writes.load(Ordering::SeqCst);
    let err = ctl.pass().await.err().expect("the pass cannot run");
    assert_eq!(err.exit_code(), 2);
    assert!(err.to_string().contains("listing /api/v1/secrets"), "{err}");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert_eq!(faults.writes.load(Ordering::SeqCst), writes_before);
    assert!(secrets.get_opt("gone").await.unwrap().is_some());
}

/// Role chaining caps sessions at 1 h: STS rejects 43200 s, the source retries once at 3600 s,
/// the status says so, and the next pass accepts the shorter credentials as up to date.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_chaining_retries_at_one_hour_and_says_so() {
    let mut long = stored_role("team-a", "long", "long-role");
    long.spec.role_session_duration = Some(43200);
    let client = ClientBuilder::new()
        .with_resource::<AWSIAMRole>()
        .with_status_subresource::<AWSIAMRole>()
        .with_object(long)
        .build()
        .await
        .unwrap();
    let durations = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = durations.clone();
    let rule = mock!(aws_sdk_sts::Client::assume_role)
        .match_requests(move |req| {
            seen.lock().unwrap().push(req.duration_seconds().unwrap_or_default());
            true
        })
        .sequence()
        .http_response(|| {
            sts::error(
                400,
                "ValidationError",
                "The requested DurationSeconds exceeds the 1 hour session limit for roles assumed by role chaining.",
            )
        })
        .output(|| issued("team-a.long", 3600))
        .build();
    let sts = mock_client!(aws_sdk_sts, RuleMode::MatchAny, [&rule]);
    let source = sts::source(sts, 100, 1);
    let ctl = controller(client.clone(), source);
    let first = ctl.pass().await.unwrap();
    assert_eq!(first.report.failed(), 0, "{}", first.report);
    assert_eq!(*durations.lock().unwrap(), vec![43200, 3600]);
    let roles: Api<AWSIAMRole> = Api::namespaced(client.clone(), "team-a");
    let status = roles.get("long").await.unwrap().status.unwrap();
    let message = &status.conditions[0].message;
    assert_contains(message, "STS granted 1h instead of the requested 12h");
    let second = ctl.pass().await.unwrap();
    assert_eq!(second.report.writes, 0, "{}", second.report);
    assert_eq!(rule.num_calls(), 2);
}

/// `--session-tags`, `--source-identity` and `--external-id-format` reach AssumeRole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_tags_source_identity_and_external_id_are_sent() {
    let client = ClientBuilder::new()
        .with_resource::<AWSIAMRole>()
        .with_status_subresource::<AWSIAMRole>()
        .with_object(stored_role("team-a", "app", "app"))
        .build()
        .await
        .unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    let rule = mock!(aws_sdk_sts::Client::assume_role).then_compute_response(move |req| {
        let tags: Vec<(String, String)> = req
            .tags()
            .iter()
            .map(|t| (t.key().to_string(), t.value().to_string()))
            .collect();
        record.lock().unwrap().push((
            tags,
            req.source_identity().map(String::from),
            req.external_id().map(String::from),
        ));
        MockResponse::Output(issued("team-a.app", 3600))
    });
    let sts = mock_client!(aws_sdk_sts, RuleMode::MatchAny, [&rule]);
    let source = sts::source(sts, 100, 1);
    let cli = Cli::try_parse_from([
        "kube-aws-iam-controller",
        "once",
        "--base-role-arn",
        "arn:aws:iam::123456789012:role/",
        "--session-tags",
        "--source-identity",
        "--cluster-name",
        "prod-eu",
        "--external-id-format",
        "{cluster}/{namespace}",
    ])
    .unwrap();
    let Some(kube_aws_iam_controller::cli::Command::Once(once)) = cli.command else {
        panic!("not once")
    };
    let config =
        kube_aws_iam_controller::cli::config::controller_config(&once.pass, false).unwrap();
    let ctl = Controller::new(client, config, Arc::new(source));
    let report = ctl.pass().await.unwrap().report;
    assert_eq!(report.failed(), 0, "{report}");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    let (tags, source_identity, external_id) = &seen[0];
    assert_eq!(
        tags,
        &vec![
            ("kubernetes-namespace".to_string(), "team-a".to_string()),
            ("kubernetes-awsiamrole".to_string(), "app".to_string()),
            ("kubernetes-cluster".to_string(), "prod-eu".to_string()),
        ]
    );
    assert_eq!(source_identity.as_deref(), Some("team-a.app"));
    assert_eq!(external_id.as_deref(), Some("prod-eu/team-a"));
}

/// An expired continue token (410 Gone, as after etcd compaction) restarts the list from its
/// first page, and observation is complete: nothing is lost and nothing counted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_continue_token_restarts_the_list() {
    use kube_aws_iam_controller::controller::observe::{ObserveOptions, observe};
    let api = crate::support::apiserver::ApiServer::builder()
        .objects((0..7).map(|i| stored_role("team-a", &format!("r{i}"), "app")))
        .start()
        .await;
    let client = crate::support::harness::kubeconfig_client(&api).await;
    let options = ObserveOptions {
        page_size: 3,
        ..ObserveOptions::default()
    };
    api.fail_continue_with_410();
    let first_pass = observe(&client, &options)
        .await
        .expect("observation survives a 410");
    let mut names: Vec<&str> = first_pass.roles.iter().map(|r| r.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["r0", "r1", "r2", "r3", "r4", "r5", "r6"]);
    let role_lists: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|r| r.resource == "awsiamroles" && r.verb == "list")
        .collect();
    let starts = role_lists
        .iter()
        .filter(|r| r.param("continue").is_none())
        .count();
    assert_eq!(
        starts, 2,
        "listed again from the start once: {role_lists:?}"
    );
    assert!(role_lists.iter().any(|r| r.status == 410), "{role_lists:?}");
}
