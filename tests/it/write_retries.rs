//! Writes the API server refuses for a transient reason are tried again within the action,
//! with the credentials already obtained; writes of an AWSIAMRole deleted and re-created while
//! its action ran never land on the new one.
//!
//! The in-process controller passes against the loopback API server through a kubeconfig
//! client (so its requests are recorded and faulted). STS is a counting credential source
//! whose hook changes the cluster while a role's action is in flight, between its AssumeRole
//! and its writes, which makes each race deterministic.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use kube_aws_iam_controller::controller::apply::{Outcome, PassReport, Stage};
use kube_aws_iam_controller::controller::pass::{Controller, ControllerConfig};
use kube_aws_iam_controller::controller::plan::CredentialRequest;
use kube_aws_iam_controller::controller::sts::{CredentialSource, StsError};
use kube_aws_iam_controller::domain::crd::AWSIAMRole;
use kube_aws_iam_controller::domain::secret::{self, Credentials};
use serde_json::json;

use crate::support::apiserver::{ApiServer, RecordedRequest};
use crate::support::harness::{BASE, kubeconfig_client, marked_credentials, observed, role};
use crate::support::sts::{due_secret, stored_role};

/// Marks every credential value these tests issue or seed.
const MARKER: &str = "WRITERETRY";
const NS: &str = "team-a";

/// Runs before a role's credentials are returned: the role's name (its `roleReference`).
type Hook = Box<dyn Fn(String) -> BoxFuture<'static, ()> + Send + Sync>;

/// Credentials for every request, counting AssumeRole calls per role (each role here has
/// its own IAM role name); `hook` may change the cluster first.
#[derive(Default)]
struct Source {
    calls: Mutex<BTreeMap<String, usize>>,
    hook: Option<Hook>,
}

impl Source {
    fn with_hook(hook: Hook) -> Arc<Source> {
        Arc::new(Source {
            hook: Some(hook),
            ..Source::default()
        })
    }

    fn calls(&self) -> BTreeMap<String, usize> {
        self.calls.lock().unwrap().clone()
    }
}

impl CredentialSource for Source {
    fn assume<'a>(
        &'a self,
        request: &'a CredentialRequest,
    ) -> BoxFuture<'a, Result<Credentials, StsError>> {
        Box::pin(async move {
            let name = request.role_arn.name().to_string();
            *self.calls.lock().unwrap().entry(name.clone()).or_default() += 1;
            if let Some(hook) = &self.hook {
                hook(name.clone()).await;
            }
            let expiration = Timestamp::now() + SignedDuration::from_hours(1);
            Ok(marked_credentials(MARKER, &name, expiration))
        })
    }
}

fn controller(client: Client, source: Arc<Source>, concurrency: usize) -> Controller {
    let mut config = ControllerConfig::default();
    config.plan.base_role_arn = Some(BASE.parse().unwrap());
    config.concurrency = concurrency;
    Controller::new(client, config, source)
}

fn outcome<'a>(report: &'a PassReport, name: &str) -> &'a Outcome {
    &report
        .actions
        .iter()
        .find(|a| a.name == name)
        .unwrap_or_else(|| panic!("no action for {name}"))
        .outcome
}

async fn get_role(client: &Client, name: &str) -> AWSIAMRole {
    Api::<AWSIAMRole>::namespaced(client.clone(), NS)
        .get(name)
        .await
        .unwrap()
}

async fn get_secret(client: &Client, name: &str) -> Secret {
    Api::<Secret>::namespaced(client.clone(), NS)
        .get(name)
        .await
        .unwrap()
}

/// The Ready condition's (status, reason), if any.
fn ready(role: &AWSIAMRole) -> Option<(String, String)> {
    let status = role.status.as_ref()?;
    let c = status.conditions.iter().find(|c| c.type_ == "Ready")?;
    Some((c.status.clone(), c.reason.clone()))
}

/// Asserts that `name` is served: Ready=True, no failure counted, its Secret owned by it.
async fn assert_served(client: &Client, name: &str) {
    let r = get_role(client, name).await;
    let status = r.status.clone().unwrap_or_default();
    assert_eq!(
        ready(&r),
        Some(("True".into(), "CredentialsReady".into())),
        "{name}"
    );
    assert_eq!(
        (status.failed_attempts, status.retry_after),
        (None, None),
        "{name}"
    );
    let s = get_secret(client, name).await;
    assert!(
        s.metadata.labels.as_ref().is_some_and(secret::is_managed),
        "{name}"
    );
    let owners = s.metadata.owner_references.unwrap_or_default();
    assert_eq!(owners.len(), 1, "{name}");
    assert_eq!(Some(&owners[0].uid), r.metadata.uid.as_ref(), "{name}");
}

/// Recorded Secret writes and reads naming `name`, as (verb, status).
fn named(requests: &[RecordedRequest], name: &str) -> Vec<(String, u16)> {
    requests
        .iter()
        .filter(|r| r.resource == "secrets" && r.name.as_deref() == Some(name))
        .map(|r| (r.verb.clone(), r.status))
        .collect()
}

fn pair(verb: &str, status: u16) -> (String, u16) {
    (verb.to_string(), status)
}

/// One Secret write in three answered 500 (`fail_nth_write` counts writes of any resource):
/// every one of nine new roles is served by the first pass, with one AssumeRole each and no
/// failure counted. Once one action at a time, so that every third write fails whatever the
/// timing; then at the default concurrency, with three failures among the first writes (fewer
/// than the tries of one write, so any interleaving is served).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_third_write_failing_still_serves_every_role_in_one_pass() {
    for (concurrency, failures) in [(1, 12), (8, 3)] {
        let names: Vec<String> = (0..9).map(|i| format!("app-{i}")).collect();
        let api = ApiServer::builder()
            .objects(names.iter().map(|n| role(NS, n, n)))
            .start()
            .await;
        for k in 1..=failures {
            api.fail_nth_write(3 * k, 500);
        }
        let source = Arc::new(Source::default());
        let ctl = controller(kubeconfig_client(&api).await, source.clone(), concurrency);

        let report = ctl.pass().await.expect("the pass runs").report;
        assert_eq!(report.failed(), 0, "concurrency {concurrency}: {report}");
        for a in &report.actions {
            assert_eq!(a.outcome, Outcome::Done, "{}: {report}", a.name);
        }
        let client = api.client();
        for name in &names {
            assert_served(&client, name).await;
        }
        let once_each: BTreeMap<String, usize> = names.iter().map(|n| (n.clone(), 1)).collect();
        assert_eq!(source.calls(), once_each, "one AssumeRole per role");
        // The faults did fire.
        let refused: Vec<String> = api
            .requests()
            .into_iter()
            .filter(|r| r.is_write() && r.status == 500)
            .map(|r| r.resource)
            .collect();
        if concurrency == 1 {
            // Role k > 0 writes 3k (its Secret: refused), 3k + 1 (the same again) and
            // 3k + 2 (its status): eight Secret writes refused, 26 writes in all.
            assert_eq!(refused, vec!["secrets"; 8]);
        } else {
            assert_eq!(refused.len(), 3, "{refused:?}");
        }
        // Each write is counted once, however many tries it took.
        assert_eq!(report.writes, 18, "{report}");
    }
}

/// Deletes `name` and creates it again with the same spec (a new uid), through the test
/// client; returns the hook that does so while `name`'s first action is in flight.
fn recreate_hook(client: Client, name: &'static str) -> Hook {
    let done = Arc::new(AtomicBool::new(false));
    Box::new(move |called: String| {
        let client = client.clone();
        let first = called == name && !done.swap(true, Ordering::SeqCst);
        Box::pin(async move {
            if !first {
                return;
            }
            let roles: Api<AWSIAMRole> = Api::namespaced(client, NS);
            roles.delete(name, &DeleteParams::default()).await.unwrap();
            roles
                .create(&PostParams::default(), &role(NS, name, name))
                .await
                .unwrap();
        })
    })
}

/// The new AWSIAMRole carries nothing from the old one's action: no status at all (the API
/// server drops a status sent with a create).
async fn assert_untouched_new_role(client: &Client, name: &str, old_uid: &str) -> AWSIAMRole {
    let new = get_role(client, name).await;
    assert_ne!(new.metadata.uid.as_deref(), Some(old_uid), "re-created");
    let status = new.status.clone().unwrap_or_default();
    assert_eq!(ready(&new), None, "no condition from the old action");
    assert_eq!((status.failed_attempts, status.retry_after), (None, None));
    assert_eq!(status.expiration, None);
    new
}

/// The Secret write of a role re-created while its action ran is refused (404, as when the
/// owner's namespace went, injected here): the failure is the old object's, so nothing is
/// written onto the new one, the action is superseded rather than failed, and the next pass
/// serves the new one at once (no backoff).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_of_a_recreated_role_never_lands_on_the_new_one() {
    let api = ApiServer::builder()
        .object(stored_role(NS, "app", "app"))
        .start()
        .await;
    let source = Source::with_hook(recreate_hook(api.client(), "app"));
    let ctl = controller(kubeconfig_client(&api).await, source.clone(), 8);
    api.fail_writes("secrets", Some(404));

    let report = ctl.pass().await.expect("the pass runs").report;
    assert_eq!(outcome(&report, "app"), &Outcome::Superseded, "{report}");
    assert_eq!(report.failed(), 0, "{report}");
    assert_untouched_new_role(&api.client(), "app", "uid-app").await;
    let status_writes = api
        .requests()
        .into_iter()
        .filter(|r| r.resource == "awsiamroles" && r.is_write())
        .count();
    assert_eq!(status_writes, 0, "no status write for the old object");

    // The next pass serves the new AWSIAMRole without waiting out any backoff.
    api.fail_writes("secrets", None);
    let second = ctl.pass().await.expect("the pass runs").report;
    assert_eq!(outcome(&second, "app"), &Outcome::Done, "{second}");
    assert_served(&api.client(), "app").await;
    assert_eq!(source.calls().get("app"), Some(&2));
}

/// The same race when the Secret write goes through: the status patch is bound to the old
/// uid, so the old action's Ready=True never lands on the new AWSIAMRole; the next pass
/// re-owns the Secret for the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_success_of_a_recreated_role_never_lands_on_the_new_one() {
    let api = ApiServer::builder()
        .object(stored_role(NS, "app", "app"))
        .start()
        .await;
    let source = Source::with_hook(recreate_hook(api.client(), "app"));
    let ctl = controller(kubeconfig_client(&api).await, source.clone(), 8);

    let report = ctl.pass().await.expect("the pass runs").report;
    assert_eq!(outcome(&report, "app"), &Outcome::Superseded, "{report}");
    let new = assert_untouched_new_role(&api.client(), "app", "uid-app").await;
    let refused: Vec<u16> = api
        .requests()
        .iter()
        .filter(|r| r.resource == "awsiamroles" && r.is_write())
        .map(|r| r.status)
        .collect();
    assert_eq!(
        refused,
        [409],
        "one status patch, refused by its uid precondition"
    );

    let second = ctl.pass().await.expect("the pass runs").report;
    assert_eq!(outcome(&second, "app"), &Outcome::Done, "{second}");
    assert_served(&api.client(), "app").await;
    let owner = get_secret(&api.client(), "app")
        .await
        .metadata
        .owner_references;
    assert_eq!(owner.unwrap()[0].uid, new.metadata.uid.unwrap());
}

/// The Secret changes between the plan and its write, through the test client, while each
/// role's action is in flight: `changed` is edited (its resourceVersion moves: the replace
/// conflicts), `unlabelled` loses the controller's `heritage` label, and `taken`, a new role,
/// finds its name taken by a managed Secret of an earlier AWSIAMRole of that name. The first
/// and the last are read again and replaced with the same credentials (one AssumeRole each);
/// the Secret that is no longer the controller's is not overwritten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_changed_under_the_action_is_read_again_and_replaced_only_if_still_ours() {
    let changed = stored_role(NS, "changed", "changed");
    let unlabelled = stored_role(NS, "unlabelled", "unlabelled");
    let taken = stored_role(NS, "taken", "taken");
    let api = ApiServer::builder()
        .objects([changed.clone(), unlabelled.clone(), taken.clone()])
        .object(due_secret(&changed, &format!("ASIA{MARKER}OLD"), MARKER))
        .object(due_secret(&unlabelled, &format!("ASIA{MARKER}OLD"), MARKER))
        .start()
        .await;
    let client = api.client();
    let before_unlabelled = get_secret(&client, "unlabelled").await;
    let earlier = secret::build(
        &observed(&taken, "uid-of-an-earlier-taken"),
        &format!("{BASE}taken"),
        &marked_credentials(MARKER, "earlier", Timestamp::now()),
        Timestamp::now(),
    );
    let hook_client = client.clone();
    let hook: Hook = Box::new(move |called: String| {
        let secrets: Api<Secret> = Api::namespaced(hook_client.clone(), NS);
        let earlier = earlier.clone();
        Box::pin(async move {
            let params = PatchParams::default();
            match called.as_str() {
                "changed" => {
                    let edit = json!({"metadata": {"annotations": {"example.com/touched": "yes"}}});
                    secrets
                        .patch("changed", &params, &Patch::Merge(&edit))
                        .await
                        .unwrap();
                }
                "unlabelled" => {
                    let edit = json!({"metadata": {"labels": {"heritage": null}}});
                    secrets
                        .patch("unlabelled", &params, &Patch::Merge(&edit))
                        .await
                        .unwrap();
                }
                "taken" => {
                    secrets
                        .create(&PostParams::default(), &earlier)
                        .await
                        .unwrap();
                }
                _ => {}
            }
        })
    });
    let source = Source::with_hook(hook);
    let ctl = controller(kubeconfig_client(&api).await, source.clone(), 8);

    let report = ctl.pass().await.expect("the pass runs").report;
    let once_each: BTreeMap<String, usize> = ["changed", "taken", "unlabelled"]
        .iter()
        .map(|n| (n.to_string(), 1))
        .collect();
    assert_eq!(source.calls(), once_each, "one AssumeRole per role");
    let requests = api.requests();

    // Edited: conflict, read again, replaced.
    assert_eq!(outcome(&report, "changed"), &Outcome::Done, "{report}");
    assert_served(&client, "changed").await;
    let now_changed = get_secret(&client, "changed").await;
    let annotations = now_changed.metadata.annotations.unwrap_or_default();
    assert!(!annotations.contains_key("example.com/touched"), "replaced");
    assert!(
        named(&requests, "changed").ends_with(&[
            pair("update", 409),
            pair("get", 200),
            pair("update", 200)
        ]),
        "{:?}",
        named(&requests, "changed")
    );

    // Name taken by an earlier AWSIAMRole's Secret: create refused, read again, re-owned.
    assert_eq!(outcome(&report, "taken"), &Outcome::Done, "{report}");
    assert_served(&client, "taken").await;
    let taken_creates: Vec<u16> = requests
        .iter()
        .filter(|r| r.resource == "secrets" && r.verb == "create")
        .map(|r| r.status)
        .collect();
    assert_eq!(taken_creates, [409]);
    assert!(
        named(&requests, "taken").ends_with(&[pair("get", 200), pair("update", 200)]),
        "{:?}",
        named(&requests, "taken")
    );

    // No longer the controller's: not overwritten, and the refusal says why.
    let Outcome::Failed { stage, message } = outcome(&report, "unlabelled") else {
        panic!("unlabelled: {report}");
    };
    assert_eq!(*stage, Stage::Secret);
    assert!(
        message.contains("409") && message.contains("not overwritten"),
        "{message}"
    );
    assert!(!message.contains(MARKER), "no credential in the message");
    let now_unlabelled = get_secret(&client, "unlabelled").await;
    assert!(
        now_unlabelled.data == before_unlabelled.data,
        "the Secret's data was overwritten"
    );
    assert_eq!(
        named(&requests, "unlabelled"),
        [pair("update", 409), pair("get", 200)],
        "one replace, refused; no second one"
    );
}

/// A refusal another try would not change (403 here) fails the action at once, with exactly
/// one write attempt, and backs off as before; a 500 in the same pass is tried again. One
/// action at a time, so the writes are numbered: `a-denied`'s Secret create is the first,
/// its failure status the second, `b-flaky`'s Secret create the third.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_refusal_fails_at_once_while_a_transient_one_is_tried_again() {
    let api = ApiServer::builder()
        .objects([
            role(NS, "a-denied", "a-denied"),
            role(NS, "b-flaky", "b-flaky"),
        ])
        .start()
        .await;
    api.fail_nth_write(1, 403);
    api.fail_nth_write(3, 500);
    let source = Arc::new(Source::default());
    let ctl = controller(kubeconfig_client(&api).await, source.clone(), 1);

    let report = ctl.pass().await.expect("the pass runs").report;
    let Outcome::Failed { stage, message } = outcome(&report, "a-denied") else {
        panic!("a-denied: {report}");
    };
    assert_eq!(*stage, Stage::Secret);
    assert!(message.contains("403"), "{message}");
    assert_eq!(outcome(&report, "b-flaky"), &Outcome::Done, "{report}");
    let secret_writes: Vec<u16> = api
        .requests()
        .iter()
        .filter(|r| r.resource == "secrets" && r.is_write())
        .map(|r| r.status)
        .collect();
    assert_eq!(secret_writes.len(), 3, "{secret_writes:?}");
    assert_eq!(&secret_writes[..2], [403, 500], "403 once; 500 then again");
    assert!((200..300).contains(&secret_writes[2]), "{secret_writes:?}");
    let client = api.client();
    let denied = get_role(&client, "a-denied").await;
    assert_eq!(
        ready(&denied),
        Some(("False".into(), "WriteSecretFailed".into()))
    );
    let status = denied.status.unwrap();
    assert_eq!(status.failed_attempts, Some(1));
    assert!(status.retry_after.is_some(), "backs off");
    assert_served(&client, "b-flaky").await;
    assert_eq!(source.calls().values().sum::<usize>(), 2);
}
