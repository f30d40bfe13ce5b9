//! Fixture snapshot tests: every `fixtures/<case>/` is planned offline exactly as
//! `plan --from` would, rendered in every format and compared with its insta snapshot
//! (`tests/snapshots/<case>@<format>.snap`; review changes with `cargo insta review`).
//! Every case also asserts the idempotence invariant.

use std::collections::BTreeSet;
use std::panic::AssertUnwindSafe;

use kube_aws_iam_controller::controller::commands;
use kube_aws_iam_controller::controller::plan::{ActionKind, Reason, plan};

use crate::support::{Case, fixture_cases, simulate, snapshot};

/// Fake credentials in fixtures carry this marker; no rendering may contain it.
const FIXTURE_CANARY: &str = "FAKESECRET";

/// Runs `check` on every fixture case and names every case that fails, so the first failure
/// does not hide the others (each panic message is printed as it happens).
fn each_case(check: impl Fn(&Case)) {
    let cases = fixture_cases();
    assert!(cases.len() >= 20, "only {} fixture cases", cases.len());
    let failed: Vec<String> = cases
        .into_iter()
        .filter(|name| {
            let case = Case::load(name);
            std::panic::catch_unwind(AssertUnwindSafe(|| check(&case))).is_err()
        })
        .collect();
    assert!(failed.is_empty(), "failing fixture cases: {failed:?}");
}

#[test]
fn fixtures_render_as_snapshotted() {
    each_case(|case| {
        let name = &case.name;
        for format in ["text", "diff", "json"] {
            let out = commands::plan_offline(&case.offline(&["--output", format]))
                .unwrap_or_else(|e| panic!("{name}: plan failed: {e}"));
            assert_eq!(out.exit_code, 0, "{name}");
            for leak in [FIXTURE_CANARY, simulate::CANARY, "ASIAQUICKSTART"] {
                assert!(
                    !out.stdout.contains(leak),
                    "{name} --output {format} leaks {leak}"
                );
            }
            let mut body = out.stdout;
            if !out.notes.is_empty() {
                body.push_str("\n# notes (stderr)\n");
                for n in &out.notes {
                    // Paths differ between checkouts: keep them relative to fixtures/.
                    let n = n.replace(&format!("{}/", case.dir.display()), "");
                    body.push_str(&n);
                    body.push('\n');
                }
            }
            snapshot(&format!("{name}@{format}"), &body);
        }
    });
}

/// Each fixture states its expected plan in `# expect: ns/name action Reason [roleArn]`
/// comment lines, written from `docs/design.md` independently of the code; the plan must match
/// them exactly (one line per action, nothing more, nothing less).
#[test]
fn fixtures_match_their_expect_lines() {
    each_case(|case| {
        let name = &case.name;
        let input = std::fs::read_to_string(case.dir.join("input.yaml")).unwrap();
        let expected: Vec<Vec<String>> = input
            .lines()
            .filter_map(|l| l.strip_prefix("# expect:"))
            .map(|l| l.split_whitespace().map(String::from).collect())
            .collect();
        assert!(!expected.is_empty(), "{name}: no `# expect:` lines");
        let (observed, config) = case.state();
        let p = plan(&observed, case.now, &config);
        let mut actual: Vec<Vec<String>> = Vec::new();
        for a in &p.actions {
            actual.push(vec![
                format!("{}/{}", a.namespace, a.name),
                a.kind().to_string(),
                a.reason().to_string(),
            ]);
        }
        actual.sort();
        let mut shortened: Vec<Vec<String>> = expected.iter().map(|e| e[..3].to_vec()).collect();
        shortened.sort();
        assert_eq!(
            actual, shortened,
            "{name}: plan differs from its # expect: lines"
        );
        // Where an expect line names the role ARN, the plan must report exactly that ARN.
        for e in expected.iter().filter(|e| e.len() > 3) {
            let a = p
                .actions
                .iter()
                .find(|a| format!("{}/{}", a.namespace, a.name) == e[0])
                .unwrap();
            assert_eq!(
                a.role_arn.as_deref(),
                Some(e[3].as_str()),
                "{name}: {}",
                e[0]
            );
        }
    });
}

/// Applying a fixture's plan (with fake credentials) and planning again leaves only skips and
/// the same blocked roles, whose statuses were already written.
#[test]
fn fixtures_converge_after_one_apply() {
    each_case(|case| {
        let name = &case.name;
        let (observed, config) = case.state();
        let first = plan(&observed, case.now, &config);
        let after = simulate::apply(&observed, &first);
        let second = plan(&after, case.now, &config);
        let not_converged: Vec<String> = second
            .actions
            .iter()
            .filter(|a| !a.changes_nothing())
            .map(|a| {
                format!(
                    "{}/{} {} {}: {}",
                    a.namespace,
                    a.name,
                    a.kind(),
                    a.reason(),
                    a.message
                )
            })
            .collect();
        assert!(
            not_converged.is_empty(),
            "{name}: second plan is not converged: {not_converged:#?}"
        );
        let blocked =
            |p: &kube_aws_iam_controller::controller::plan::Plan<'_>| -> BTreeSet<(String, String, Reason)> {
                p.actions
                    .iter()
                    .filter(|a| a.kind() == ActionKind::Blocked)
                    .map(|a| (a.namespace.to_string(), a.name.to_string(), a.reason()))
                    .collect()
            };
        let newly_blocked: BTreeSet<_> = blocked(&second)
            .difference(&blocked(&first))
            .cloned()
            .collect();
        // A not-permitted role whose Secret was deleted becomes Blocked/NotPermitted.
        assert!(
            newly_blocked.iter().all(|(ns, n, r)| {
                *r == Reason::NotPermitted
                    && first
                        .actions
                        .iter()
                        .any(|a| a.namespace == ns && a.name == n && a.kind() == ActionKind::Delete)
            }),
            "{name}: newly blocked {newly_blocked:?}"
        );
    });
}

/// Together the fixtures exercise every action with every reason `docs/design.md` names.
#[test]
fn fixtures_cover_every_action_and_reason() {
    use ActionKind::*;
    use Reason::*;
    let wanted: BTreeSet<(ActionKind, Reason)> = [
        (Create, Missing),
        (Refresh, Expiring),
        (Refresh, SpecChanged),
        (Refresh, RoleChanged),
        (Refresh, Unreadable),
        (Refresh, OwnerChanged),
        (UpdateStatus, StatusStale),
        (Delete, OwnerGone),
        (Delete, NotPermitted),
        (Skip, UpToDate),
        (Blocked, InvalidSpec),
        (Blocked, NotPermitted),
        (Blocked, SecretConflict),
    ]
    .into();
    let mut seen = BTreeSet::new();
    for name in fixture_cases() {
        let case = Case::load(&name);
        let (observed, config) = case.state();
        let p = plan(&observed, case.now, &config);
        seen.extend(p.actions.iter().map(|a| (a.kind(), a.reason())));
    }
    let missing: Vec<_> = wanted.difference(&seen).collect();
    assert!(missing.is_empty(), "no fixture covers {missing:?}");
}
