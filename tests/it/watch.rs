//! The event-driven `run`: the compiled binary keeps its state with watches against the
//! loopback API server (which serves list + watch like a real one) and moto, and passes on
//! change, when due and every `--interval` ([`e2e`], full tier). Each test injects one thing and
//! checks what an operator would see.
//!
//! Here, in process: the executor confirms an orphan delete that a lagging watch planned.

use std::collections::BTreeMap;
use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, DeleteParams, PostParams};
use kube_aws_iam_controller::controller::apply::{Executor, Outcome};
use kube_aws_iam_controller::controller::plan::{self, ActionKind, PlanConfig};
use kube_aws_iam_controller::domain::crd::AWSIAMRole;
use kube_aws_iam_controller::domain::model::{Observed, ObservedRole, ObservedSecret};
use kube_aws_iam_controller::domain::secret;

use crate::support::apiserver::ApiServer;
use crate::support::harness::{BASE, serve_as_controller};
use crate::support::sts;

#[cfg(feature = "full-tier")]
mod e2e;

async fn secret_of(client: &Client, ns: &str, name: &str) -> Option<Secret> {
    Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .ok()
        .flatten()
}

/// The executor confirms an orphan delete with a GET of its AWSIAMRole: a role that is back
/// (the watched state had not seen it yet) keeps its Secret; a role really gone does not.
#[tokio::test]
async fn an_orphan_whose_role_reappeared_is_not_deleted() {
    let owner = sts::stored_role("team-a", "back", "app-back");
    let api = ApiServer::builder().object(owner.clone()).start().await;
    let client = api.client();
    let stored = Api::<AWSIAMRole>::namespaced(client.clone(), "team-a")
        .get("back")
        .await
        .unwrap();
    serve_as_controller(&client, &stored, "ORPHAN", Timestamp::now(), true).await;
    let held = secret_of(&client, "team-a", "back").await.unwrap();
    // What a lagging watch shows: the Secret, but not the AWSIAMRole.
    let observed = Observed::new(
        Vec::<ObservedRole>::new(),
        vec![secret::lean(ObservedSecret::from_secret(&held))],
        BTreeMap::new(),
    );
    let config = PlanConfig {
        base_role_arn: Some(BASE.parse().unwrap()),
        ..PlanConfig::default()
    };
    let planned = plan::plan(&observed, Timestamp::now(), &config);
    assert_eq!(planned.actions[0].kind(), ActionKind::Delete);

    let unused = sts::source(sts::sts_client("http://127.0.0.1:9"), 1, 1);
    let executor = Executor::new(client.clone(), Arc::new(unused), 2).confirming_orphans(true);
    let report = executor.apply(&planned).await;
    assert_eq!(report.actions[0].outcome, Outcome::Superseded);
    assert!(secret_of(&client, "team-a", "back").await.is_some());
    assert!(report.written.is_empty());

    // Without the role, the same plan deletes it (with its preconditions).
    let mut unowned = secret_of(&client, "team-a", "back").await.unwrap();
    unowned.metadata.owner_references = None;
    Api::<Secret>::namespaced(client.clone(), "team-a")
        .replace("back", &PostParams::default(), &unowned)
        .await
        .unwrap();
    Api::<AWSIAMRole>::namespaced(client.clone(), "team-a")
        .delete("back", &DeleteParams::default())
        .await
        .unwrap();
    let held = secret_of(&client, "team-a", "back").await.unwrap();
    let observed = Observed::new(
        Vec::<ObservedRole>::new(),
        vec![secret::lean(ObservedSecret::from_secret(&held))],
        BTreeMap::new(),
    );
    let planned = plan::plan(&observed, Timestamp::now(), &config);
    let report = executor.apply(&planned).await;
    assert_eq!(report.actions[0].outcome, Outcome::Done);
    assert!(secret_of(&client, "team-a", "back").await.is_none());
    assert_eq!(report.written.len(), 1);
}
