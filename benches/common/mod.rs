//! What several benchmarks share: environment knobs, a served state of N roles, and memory
//! readings from `/proc`.
#![allow(dead_code)]

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Secret;
use kube_aws_iam_controller::controller::plan::ready_status;
use kube_aws_iam_controller::domain::crd::{AWSIAMRole, AWSIAMRoleSpec};
use kube_aws_iam_controller::domain::model::ObservedRole;
use kube_aws_iam_controller::domain::secret::{self, Credentials};

pub const BASE: &str = "arn:aws:iam::123456789012:role/";

/// A numeric environment knob, `default` when unset or unreadable.
pub fn env_num(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// A UID shaped as the API server's (36 characters), distinct per `kind` and `i`, so the
/// state a bench keeps is as large as a real cluster's.
pub fn uid(kind: u16, i: usize) -> String {
    format!("{i:08x}-{kind:04x}-4000-8000-{i:012x}")
}

/// AWSIAMRole `i`: spread over 100 namespaces and 1,000 IAM roles, with a label.
pub fn new_role(i: usize) -> AWSIAMRole {
    let mut role = AWSIAMRole::new(
        &format!("role-{i}"),
        AWSIAMRoleSpec {
            role_reference: format!("app-{}", i % 1000),
            role_session_duration: None,
        },
    );
    role.metadata.namespace = Some(format!("ns-{}", i % 100));
    role.metadata.uid = Some(uid(1, i));
    role.metadata.generation = Some(1);
    role.metadata.labels = Some(BTreeMap::from([("app".into(), format!("app-{i}"))]));
    role
}

/// `n` roles the controller has served at `now`: each with a managed Secret of one-hour
/// credentials and the matching Ready status, so a pass over them changes nothing.
pub fn served(n: usize, now: Timestamp) -> (Vec<AWSIAMRole>, Vec<Secret>) {
    let mut roles = Vec::with_capacity(n);
    let mut secrets = Vec::with_capacity(n);
    for i in 0..n {
        let mut role = new_role(i);
        let observed = ObservedRole::from_value(&serde_json::to_value(&role).unwrap(), "")
            .expect("role decodes");
        let arn = format!("{BASE}{}", role.spec.role_reference);
        let creds = Credentials {
            access_key_id: "ASIABENCH".into(),
            secret_access_key: "bench-secret".into(),
            session_token: "bench-token".into(),
            expiration: now + SignedDuration::from_hours(1),
        };
        let mut secret = secret::build(&observed, &arn, &creds, now);
        secret.metadata.uid = Some(uid(2, i));
        role.status = Some(ready_status(&observed, &arn, creds.expiration, None, now));
        roles.push(role);
        secrets.push(secret);
    }
    (roles, secrets)
}

/// A `/proc/<pid>/status` figure in bytes (`VmRSS`, `VmHWM`); 0 when unreadable.
pub fn proc_status_of(pid: &str, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// This process's `VmRSS`, `VmHWM`, ….
pub fn proc_status(key: &str) -> u64 {
    proc_status_of("self", key)
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
