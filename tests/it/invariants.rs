//! Property tests of the planner's invariants (`docs/design.md`) over generated states: planning
//! is deterministic and independent of list order; every object appears exactly once; re-planning
//! after applying converges; unmanaged Secrets are never touched; no rendering shows a
//! credential.

use std::collections::{BTreeMap, BTreeSet};

use jiff::{SignedDuration, Timestamp};
use kube_aws_iam_controller::controller::apply::PassReport;
use kube_aws_iam_controller::controller::metrics::{RoleCensus, RoleState};
use kube_aws_iam_controller::controller::plan::render::{OutputFormat, render};
use kube_aws_iam_controller::controller::plan::{
    ActionKind, PlanConfig, count_failure, not_ready_status, plan, ready_status,
};
use kube_aws_iam_controller::domain::arn::BaseArn;
use kube_aws_iam_controller::domain::crd::AWSIAMRoleSpec;
use kube_aws_iam_controller::domain::model::{Observed, ObservedRole, ObservedSecret};
use kube_aws_iam_controller::domain::policy::{ALLOWED_ROLES_ANNOTATION, Policy};
use kube_aws_iam_controller::domain::secret::{self, Credentials, SECRET_KEYS};
use kube_aws_iam_controller::domain::session::SessionOptions;
use proptest::prelude::*;

use crate::support::{managed_secret_stub, simulate};

const LEAK: &str = "LEAKCANARY";
const NOW: i64 = 1_800_000_000;

const REFERENCES: [&str; 7] = [
    "app",
    "team/app",
    "arn:aws:iam::123456789012:role/x",
    "arn:aws:iam::999999999999:role/y",
    "bad ref",
    "arn:aws:s3:::bucket",
    "",
];

#[derive(Clone, Debug)]
enum SecretSeed {
    None,
    /// A readable Secret: issued `age_pct`% of `lifetime` seconds ago, for reference index
    /// `arn` (`None`: the role's own), generation offset, owned by the role or an older UID.
    Readable {
        age_pct: i64,
        lifetime: i64,
        arn: Option<usize>,
        generation_offset: i64,
        foreign_owner: bool,
        issued_at: bool,
    },
    /// Managed, but with `key` removed.
    MissingKey {
        key: usize,
    },
    /// A Secret without the controller's labels (or with only one).
    Unmanaged {
        one_label: bool,
    },
}

#[derive(Clone, Debug)]
struct RoleSeed {
    namespace: usize,
    name: usize,
    uid: usize,
    generation: i64,
    reference: usize,
    duration: Option<i64>,
    spec_error: bool,
    status: u8,
    secret: SecretSeed,
}

fn secret_seed() -> impl Strategy<Value = SecretSeed> {
    prop_oneof![
        1 => Just(SecretSeed::None),
        3 => (
            0i64..120,
            prop_oneof![Just(900i64), Just(3600), Just(43200)],
            prop_oneof![3 => Just(None), 1 => (0usize..4).prop_map(Some)],
            prop_oneof![3 => Just(0i64), 1 => Just(1)],
            prop::bool::weighted(0.2),
            any::<bool>(),
        )
            .prop_map(|(age_pct, lifetime, arn, generation_offset, foreign_owner, issued_at)| SecretSeed::Readable {
                age_pct, lifetime, arn, generation_offset, foreign_owner, issued_at
            }),
        1 => (0usize..6).prop_map(|key| SecretSeed::MissingKey { key }),
        1 => any::<bool>().prop_map(|one_label| SecretSeed::Unmanaged { one_label }),
    ]
}

fn role_seed() -> impl Strategy<Value = RoleSeed> {
    (
        (0usize..2, 0usize..6, 0usize..3, 1i64..4),
        (
            0usize..REFERENCES.len(),
            prop_oneof![
                Just(None),
                Just(Some(900i64)),
                Just(Some(43200)),
                Just(Some(899))
            ],
        ),
        (prop::bool::weighted(0.1), 0u8..4, secret_seed()),
    )
        .prop_map(
            |(
                (namespace, name, uid, generation),
                (reference, duration),
                (spec_error, status, secret),
            )| RoleSeed {
                namespace,
                name,
                uid,
                generation,
                reference,
                duration,
                spec_error,
                status,
                secret,
            },
        )
}

#[derive(Clone, Debug)]
struct Scenario {
    roles: Vec<RoleSeed>,
    /// Managed Secrets with no role: (namespace, name index, readable).
    orphans: Vec<(usize, usize, bool)>,
    restrictions: bool,
    /// Per namespace: annotation variant.
    annotations: [u8; 2],
    pattern: bool,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        prop::collection::vec(role_seed(), 0..10),
        prop::collection::vec((0usize..2, 0usize..8, any::<bool>()), 0..4),
        any::<bool>(),
        [0u8..3, 0u8..3],
        any::<bool>(),
    )
        .prop_map(
            |(roles, orphans, restrictions, annotations, pattern)| Scenario {
                roles,
                orphans,
                restrictions,
                annotations,
                pattern,
            },
        )
}

fn now() -> Timestamp {
    Timestamp::from_second(NOW).unwrap()
}

fn base() -> BaseArn {
    "arn:aws:iam::123456789012:role/".parse().unwrap()
}

fn leaky_credentials(tag: &str, expiration: Timestamp) -> Credentials {
    Credentials {
        access_key_id: format!("ASIA{LEAK}{tag}"),
        secret_access_key: format!("{LEAK}/secret+{tag}"),
        session_token: format!("{LEAK}=token={tag}"),
        expiration,
    }
}

fn build(s: &Scenario) -> (Observed, PlanConfig) {
    let namespaces = ["ns-a", "ns-b"];
    let mut roles = Vec::new();
    let mut secrets = Vec::new();
    let mut seen = BTreeSet::new();
    for r in &s.roles {
        let (ns, name) = (namespaces[r.namespace], format!("r{}", r.name));
        if !seen.insert((ns, name.clone())) {
            continue;
        }
        let reference = REFERENCES[r.reference];
        let spec = if r.spec_error {
            Err("spec.roleSessionDuration must be an integer, got string".to_string())
        } else {
            match r.duration {
                Some(d) if !(900..=43200).contains(&d) => Err(format!(
                    "spec.roleSessionDuration must be between 900 and 43200 seconds, got {d}"
                )),
                d => Ok(AWSIAMRoleSpec {
                    role_reference: reference.into(),
                    role_session_duration: d,
                }),
            }
        };
        let mut role = ObservedRole {
            namespace: ns.into(),
            name: name.clone(),
            uid: format!("uid-{ns}-{name}-{}", r.uid),
            generation: r.generation,
            resource_version: Some("1".into()),
            labels: [("app", name.as_str()), ("type", "user")]
                .into_iter()
                .collect(),
            spec,
            ..ObservedRole::default()
        };
        let arn_of = |i: usize| {
            kube_aws_iam_controller::domain::arn::resolve(REFERENCES[i], Some(&base()))
                .unwrap()
                .to_string()
        };
        match &r.secret {
            SecretSeed::None => {}
            SecretSeed::Readable {
                age_pct,
                lifetime,
                arn,
                generation_offset,
                foreign_owner,
                issued_at,
            } => {
                let issued = now() - SignedDuration::from_secs(lifetime * age_pct / 100);
                let arn = arn.unwrap_or(if r.reference < 4 { r.reference } else { 0 });
                let creds = leaky_credentials(&name, issued + SignedDuration::from_secs(*lifetime));
                let mut owner = role.clone();
                if *foreign_owner {
                    owner.uid = "uid-older".into();
                }
                owner.generation = role.generation - generation_offset;
                let built = secret::build(&owner, &arn_of(arn), &creds, issued);
                let mut observed = ObservedSecret::from_secret(&built);
                observed.uid = format!("secret-uid-{ns}-{name}");
                if !issued_at {
                    observed.annotations.clear();
                }
                if r.status == 1 {
                    role.status = Some(ready_status(
                        &role,
                        &arn_of(arn),
                        creds.expiration,
                        None,
                        now(),
                    ));
                }
                secrets.push(observed);
            }
            SecretSeed::MissingKey { key } => {
                let creds = leaky_credentials(&name, now());
                let mut sec = managed_secret_stub(ns, &name);
                sec.data = secret::encode(&creds, &arn_of(0), role.generation);
                sec.data.remove(secret::DATA_KEYS[*key]);
                secrets.push(sec);
            }
            SecretSeed::Unmanaged { one_label } => {
                let mut sec = managed_secret_stub(ns, &name);
                if *one_label {
                    sec.labels.remove(secret::TYPE_LABEL);
                } else {
                    sec.labels.clear();
                }
                sec.data = secret::encode(&leaky_credentials(&name, now()), &arn_of(0), 1);
                secrets.push(sec);
            }
        }
        if r.status == 2 {
            role.status = Some(Default::default());
        }
        if r.status == 3 {
            // An attempt failed just now: the role backs off for 30 s.
            let failed = not_ready_status(&role, "GetCredentialsFailed", "denied", None, now());
            role.status = Some(count_failure(&role, failed, now()));
        }
        roles.push(role);
    }
    for (ns, idx, readable) in &s.orphans {
        let (ns, name) = (namespaces[*ns], format!("o{idx}"));
        if !seen.insert((ns, name.clone())) {
            continue;
        }
        let mut sec = managed_secret_stub(ns, &name);
        if *readable {
            sec.data = secret::encode(
                &leaky_credentials(&name, now()),
                "arn:aws:iam::123456789012:role/gone",
                1,
            );
        }
        secrets.push(sec);
    }
    let ns_annotations = namespaces
        .iter()
        .zip(s.annotations)
        .filter_map(|(ns, a)| {
            let value = match a {
                0 => return None,
                1 => r#"["app", "team/*"]"#,
                _ => "not json",
            };
            Some((
                ns.to_string(),
                BTreeMap::from([(ALLOWED_ROLES_ANNOTATION.to_string(), value.to_string())]),
            ))
        })
        .collect();
    let config = PlanConfig {
        base_role_arn: Some(base()),
        refresh_limit: 900,
        policy: Policy {
            namespace_restrictions: s.restrictions,
            allowed_role_patterns: if s.pattern {
                vec!["arn:aws:iam::123456789012:role/*".into()]
            } else {
                vec![]
            },
        },
        session: SessionOptions {
            tags: s.restrictions,
            source_identity: s.pattern,
            external_id_format: s
                .pattern
                .then(|| "{cluster}/{namespace}/{name}".to_string()),
            cluster_name: Some("test-cluster".into()),
        },
    };
    (Observed::new(roles, secrets, ns_annotations), config)
}

fn renderings(p: &kube_aws_iam_controller::controller::plan::Plan<'_>) -> Vec<String> {
    [OutputFormat::Text, OutputFormat::Diff, OutputFormat::Json]
        .into_iter()
        .map(|f| render(p, f, true))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn planning_is_deterministic_and_order_independent(s in scenario()) {
        let (observed, config) = build(&s);
        let a = plan(&observed, now(), &config);
        let b = plan(&observed, now(), &config);
        prop_assert_eq!(&a, &b);
        let mut reversed = observed.clone();
        reversed.roles.reverse();
        reversed.secrets.reverse();
        let c = plan(&reversed, now(), &config);
        prop_assert_eq!(renderings(&a), renderings(&c));
    }

    #[test]
    fn every_object_exactly_once_and_sorted(s in scenario()) {
        let (observed, config) = build(&s);
        let p = plan(&observed, now(), &config);
        let keys: Vec<(&str, &str)> = p.actions.iter().map(|a| (a.namespace, a.name)).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        sorted.dedup();
        prop_assert_eq!(&keys, &sorted, "not sorted or not unique");
        let expected: BTreeSet<(&str, &str)> = observed.roles.iter().map(|r| (r.namespace.as_str(), r.name.as_str()))
            .chain(observed.secrets.iter().map(|s| (s.namespace.as_str(), s.name.as_str())))
            .collect();
        prop_assert_eq!(keys.into_iter().collect::<BTreeSet<_>>(), expected);
        // Each managed Secret is carried by exactly one action (the executor and renderers
        // find it there).
        let mut carried: Vec<(&str, &str)> = p.actions.iter().filter_map(|a| a.secret())
            .map(|s| (s.namespace.as_str(), s.name.as_str())).collect();
        carried.sort();
        let managed: Vec<(&str, &str)> = observed.secrets.iter().filter(|s| secret::is_managed(&s.labels))
            .map(|s| (s.namespace.as_str(), s.name.as_str())).collect::<BTreeSet<_>>().into_iter().collect();
        prop_assert_eq!(carried, managed);
        let summary = p.summary();
        prop_assert_eq!(ActionKind::ALL.iter().map(|k| summary.count(*k)).sum::<usize>(), p.actions.len());
    }

    #[test]
    fn replanning_after_apply_converges(s in scenario()) {
        let (observed, config) = build(&s);
        let first = plan(&observed, now(), &config);
        let after = simulate::apply(&observed, &first);
        let second = plan(&after, now(), &config);
        for a in &second.actions {
            prop_assert!(
                a.changes_nothing(),
                "{}/{} {} {}: {}", a.namespace, a.name, a.kind(), a.reason(), a.message
            );
        }
        // A converged state has nothing pending or failing, even with no action carried out.
        let census = RoleCensus::of(&second, &PassReport::default());
        prop_assert_eq!(census.count(RoleState::Pending), 0);
        prop_assert_eq!(census.count(RoleState::Failing), 0);
        prop_assert_eq!(census.states.values().sum::<usize>(), after.roles.len());
    }

    #[test]
    fn unmanaged_secrets_are_never_touched(s in scenario()) {
        let (observed, config) = build(&s);
        let p = plan(&observed, now(), &config);
        for a in &p.actions {
            if let Some(sec) = a.secret() {
                prop_assert!(secret::is_managed(&sec.labels));
            }
            let conflict = observed.conflicts.contains(&(a.namespace.to_string(), a.name.to_string()));
            if conflict {
                prop_assert!(
                    a.kind() == ActionKind::Blocked,
                    "{}/{} holds an unmanaged Secret but is {}", a.namespace, a.name, a.kind()
                );
            }
        }
    }

    /// `run` keeps Secrets in their lean form (no credential values): it must plan exactly
    /// as the full objects do, in every rendering but the diff (which shows the data).
    #[test]
    fn the_lean_state_plans_as_the_full_one(s in scenario()) {
        let (observed, config) = build(&s);
        let mut slim = observed.clone();
        slim.secrets = slim.secrets.iter().map(|s| secret::lean((**s).clone()).into()).collect();
        for s in &slim.secrets {
            prop_assert!(SECRET_KEYS.iter().all(|k| !s.data.contains_key(*k)));
        }
        let full = plan(&observed, now(), &config);
        let lean = plan(&slim, now(), &config);
        prop_assert_eq!(render(&full, OutputFormat::Json, true), render(&lean, OutputFormat::Json, true));
        prop_assert_eq!(render(&full, OutputFormat::Text, true), render(&lean, OutputFormat::Text, true));
        prop_assert_eq!(full.next_due(), lean.next_due());
    }

    /// The loop sleeps until `next_due`: nothing may fall due before it, and something must
    /// at it (else the timer would fire for nothing, or too late).
    #[test]
    fn nothing_falls_due_before_next_due(s in scenario()) {
        let (observed, config) = build(&s);
        let first = plan(&observed, now(), &config);
        let applied = simulate::apply(&observed, &first);
        let settled = plan(&applied, now(), &config);
        let kinds = |p: &kube_aws_iam_controller::controller::plan::Plan<'_>| -> Vec<(String, ActionKind)> {
            p.actions.iter().map(|a| (format!("{}/{}", a.namespace, a.name), a.kind())).collect()
        };
        let Some(due) = settled.next_due() else {
            // Nothing waits for the clock: a day later the plan is the same.
            let later = plan(&applied, now() + SignedDuration::from_hours(1), &config);
            prop_assert!(later.actions.iter().all(|a| a.kind() != ActionKind::Refresh && a.kind() != ActionKind::Create));
            return Ok(());
        };
        prop_assert!(due > now());
        let just_before = due - SignedDuration::from_secs(1);
        if just_before > now() {
            let before = plan(&applied, just_before, &config);
            prop_assert_eq!(kinds(&settled), kinds(&before), "changed before {}", due);
        }
        let at = plan(&applied, due + SignedDuration::from_millis(50), &config);
        prop_assert_ne!(kinds(&settled), kinds(&at), "nothing fell due at {}", due);
    }

    #[test]
    fn no_rendering_shows_a_credential(s in scenario()) {
        let (observed, config) = build(&s);
        let p = plan(&observed, now(), &config);
        for out in renderings(&p) {
            prop_assert!(!out.contains(LEAK), "credential in output:\n{}", out);
        }
        let after = simulate::apply(&observed, &p);
        let p2 = plan(&after, now(), &config);
        for out in renderings(&p2) {
            prop_assert!(!out.contains(simulate::CANARY), "credential in output:\n{}", out);
        }
    }
}

/// The generator reaches every kind of action, so the properties above are not vacuous.
#[test]
fn generated_states_reach_every_action() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut seen = BTreeSet::new();
    for _ in 0..400 {
        let s = scenario().new_tree(&mut runner).unwrap().current();
        let (observed, config) = build(&s);
        seen.extend(
            plan(&observed, now(), &config)
                .actions
                .iter()
                .map(|a| (a.kind(), a.reason())),
        );
    }
    let kinds: BTreeSet<ActionKind> = seen.iter().map(|(k, _)| *k).collect();
    assert_eq!(
        kinds.len(),
        ActionKind::ALL.len(),
        "generated only {seen:?}"
    );
    assert!(seen.len() >= 12, "generated only {seen:?}");
}
