//! Planning cost: prints figures for N roles + N Secrets (`docs/design.md`: 100,000 of each
//! in well under a second, linear in N). Run with `cargo bench --bench plan`.

use std::collections::BTreeMap;
use std::time::Instant;

use jiff::{SignedDuration, Timestamp};
use kube_aws_iam_controller::controller::plan::{ActionKind, PlanConfig, plan, ready_status};
use kube_aws_iam_controller::domain::crd::AWSIAMRoleSpec;
use kube_aws_iam_controller::domain::model::{Observed, ObservedRole, ObservedSecret};
use kube_aws_iam_controller::domain::secret::{self, Credentials};

fn state(n: usize, now: Timestamp) -> Observed {
    let mut roles = Vec::with_capacity(n);
    let mut secrets = Vec::with_capacity(n);
    for i in 0..n {
        let mut role = ObservedRole {
            namespace: format!("ns-{}", i % 500),
            name: format!("role-{i}"),
            uid: format!("{i:08x}-0001-4000-8000-{i:012x}"),
            generation: 1,
            resource_version: Some("1".into()),
            labels: BTreeMap::from([("app".to_string(), format!("app-{i}"))]).into(),
            spec: Ok(AWSIAMRoleSpec {
                role_reference: format!("role-{}", i % 1000),
                role_session_duration: None,
            }),
            ..ObservedRole::default()
        };
        let arn = format!("arn:aws:iam::123456789012:role/role-{}", i % 1000);
        let issued = now - SignedDuration::from_secs((i % 600) as i64);
        let creds = Credentials {
            access_key_id: "ASIABENCH".into(),
            secret_access_key: "bench-secret".into(),
            session_token: "bench-token".into(),
            expiration: issued + SignedDuration::from_secs(3600),
        };
        // Every tenth role's status is stale, every hundredth has no Secret.
        if i % 10 != 0 {
            role.status = Some(ready_status(&role, &arn, creds.expiration, None, now));
        }
        if i % 100 != 0 {
            secrets.push(ObservedSecret::from_secret(&secret::build(
                &role, &arn, &creds, issued,
            )));
        }
        roles.push(role);
    }
    Observed::new(roles, secrets, BTreeMap::new())
}

fn main() {
    let now: Timestamp = "2026-11-26T12:00:00Z".parse().unwrap();
    let config = PlanConfig {
        base_role_arn: Some("arn:aws:iam::123456789012:role/".parse().unwrap()),
        ..PlanConfig::default()
    };
    println!(
        "{:>8} {:>10} {:>12} {:>8} {:>8} {:>8}",
        "roles", "plan ms", "ns per role", "create", "update", "skip"
    );
    // PLAN_BENCH_SIZES=20000 picks sizes (e.g. for a profiler run).
    let sizes: Vec<usize> = std::env::var("PLAN_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000, 10_000, 100_000]);
    for n in sizes {
        let observed = state(n, now);
        let mut best = f64::MAX;
        let mut summary = None;
        for _ in 0..3 {
            let start = Instant::now();
            let p = plan(&observed, now, &config);
            best = best.min(start.elapsed().as_secs_f64());
            summary = Some(p.summary());
        }
        let s = summary.unwrap();
        println!(
            "{n:>8} {:>10.1} {:>12.0} {:>8} {:>8} {:>8}",
            best * 1e3,
            best * 1e9 / n as f64,
            s.count(ActionKind::Create),
            s.count(ActionKind::UpdateStatus),
            s.count(ActionKind::Skip)
        );
    }
}
