//! Seed credentials: `bootstrap` writes the controller's own AWSIAMRole Secret with the
//! operator's credentials; `run` then signs with that Secret mounted as a kubelet-style volume,
//! follows kubelet's `..data` swaps without a restart, never signs with an expired session,
//! reports its own expiry, and refreshes its own role before any other; with `--assume-role` it
//! chains through that role from the seed session.
//!
//! Here, in process: the executor completes the own role first. The compiled binary against
//! the loopback API server and moto is in [`e2e`] (full tier).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use jiff::{SignedDuration, Timestamp};
use kube_aws_iam_controller::controller::apply::Executor;
use kube_aws_iam_controller::controller::plan::{CredentialRequest, PlanConfig, plan};
use kube_aws_iam_controller::controller::sts::{CredentialSource, StsError};
use kube_aws_iam_controller::domain::crd::AWSIAMRole;
use kube_aws_iam_controller::domain::model::{Observed, ObservedRole, ObservedSecret};
use kube_aws_iam_controller::domain::secret::Credentials;

use crate::support::apiserver::ApiServer;
use crate::support::harness::{BASE, SEEDED, marked_credentials, observed, role};

#[cfg(feature = "full-tier")]
mod e2e;

const SELF_NS: &str = "kube-system";
const SELF_NAME: &str = "kube-aws-iam-controller-iam-role";

/// Records the order in which roles are assumed.
struct Recording {
    order: Mutex<Vec<String>>,
}

impl CredentialSource for Recording {
    fn assume<'a>(
        &'a self,
        request: &'a CredentialRequest,
    ) -> BoxFuture<'a, Result<Credentials, StsError>> {
        Box::pin(async move {
            // Slow for the own role: the others would finish before it if it were merely
            // started first rather than completed first.
            if request.role_arn.name() == "kube-aws-iam-controller" {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            self.order
                .lock()
                .unwrap()
                .push(request.role_arn.name().to_string());
            Ok(marked_credentials(
                SEEDED,
                request.role_arn.name(),
                Timestamp::now() + SignedDuration::from_hours(1),
            ))
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controllers_own_role_is_refreshed_before_any_other() {
    let mut roles: Vec<AWSIAMRole> = (0..12)
        .map(|i| role("team-a", &format!("app-{i:02}"), &format!("app-{i:02}")))
        .collect();
    roles.push(role(SELF_NS, SELF_NAME, "kube-aws-iam-controller"));
    let api = ApiServer::builder().objects(roles.clone()).start().await;
    let observed: Vec<ObservedRole> = roles
        .iter()
        .map(|r| observed(r, &format!("uid-{}", r.metadata.name.as_deref().unwrap())))
        .collect();
    let state = Observed::new(observed, Vec::<ObservedSecret>::new(), BTreeMap::new());
    let config = PlanConfig {
        base_role_arn: Some(BASE.parse().unwrap()),
        ..PlanConfig::default()
    };
    let plan = plan(&state, Timestamp::now(), &config);
    let source = Arc::new(Recording {
        order: Mutex::new(Vec::new()),
    });
    let executor = Executor::new(api.client(), source.clone(), 8)
        .run_first(Some((SELF_NS.into(), SELF_NAME.into())));
    let start = Instant::now();
    let report = executor.apply(&plan).await;
    assert_eq!(report.actions.len(), 13);
    let order = source.order.lock().unwrap().clone();
    assert_eq!(order.len(), 13, "{order:?}");
    assert_eq!(order[0], "kube-aws-iam-controller", "{order:?}");
    assert!(start.elapsed() >= Duration::from_millis(300));
}
