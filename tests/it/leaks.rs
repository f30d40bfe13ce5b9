//! Credentials never appear outside the Secret: not in any rendering of any command, not in
//! logs (also with `--debug` and JSON logs), not on error paths (API faults, an unreachable STS),
//! not in `Debug` output that a panic would print.

use std::collections::BTreeMap;
use std::process::Command;

use jiff::Timestamp;
use kube_aws_iam_controller::controller::plan::{PlanConfig, plan};
use kube_aws_iam_controller::domain::model::{Observed, ObservedRole};
use kube_aws_iam_controller::domain::secret::{self, Credentials};

use crate::support::harness::*;
use crate::support::{Case, fixture_cases, managed_secret_stub, repo_root};

#[cfg(feature = "full-tier")]
mod e2e;

/// Credential strings the fixtures and the quickstart example carry.
const FIXTURE_SECRETS: [&str; 4] = [
    "FAKESECRET",
    "ASIAQUICKSTART",
    "quickstart-secret-access-key",
    "quickstart-session-token",
];

fn combined(out: &std::process::Output) -> String {
    format!("{}{}", text(&out.stdout), text(&out.stderr))
}

#[test]
fn no_offline_command_or_format_prints_a_credential() {
    let bin = env!("CARGO_BIN_EXE_kube-aws-iam-controller");
    let mut runs = 0;
    for name in fixture_cases() {
        let case = Case::load(&name);
        for output in ["text", "diff", "json"] {
            for extra in [
                &[][..],
                &["--verbose"][..],
                &["--verbose", "--debug", "--log-format", "json"][..],
            ] {
                let out = Command::new(bin)
                    .args(&case.argv)
                    .args(["--output", output])
                    .args(extra)
                    .current_dir(repo_root())
                    .env("RUST_LOG", "trace")
                    .output()
                    .unwrap();
                assert_eq!(out.status.code(), Some(0), "{name} {output} {extra:?}");
                let all = combined(&out);
                for s in FIXTURE_SECRETS {
                    assert!(
                        !all.contains(s),
                        "{name} --output {output} {extra:?} prints {s}"
                    );
                }
                runs += 1;
            }
        }
    }
    assert!(runs >= 60);
}

#[test]
fn debug_output_of_plans_and_state_redacts_credentials() {
    let marker = "DEBUGCANARY";
    let creds = Credentials {
        access_key_id: format!("ASIA{marker}"),
        secret_access_key: format!("{marker}/secret"),
        session_token: format!("{marker}=token"),
        expiration: Timestamp::now(),
    };
    let data = secret::encode(&creds, "arn:aws:iam::123456789012:role/app", 1);
    let mut managed = managed_secret_stub("ns", "orphan");
    managed.data = data;
    let observed = Observed::new(Vec::<ObservedRole>::new(), vec![managed], BTreeMap::new());
    let p = plan(&observed, Timestamp::now(), &PlanConfig::default());
    // What a panic message formatting these values would print.
    let payload = std::panic::catch_unwind(|| panic!("{creds:?} {observed:?} {p:?}"))
        .err()
        .and_then(|e| e.downcast_ref::<String>().cloned())
        .expect("panic payload");
    assert!(
        payload.contains("orphan"),
        "the payload is the formatted state"
    );
    assert!(!payload.contains(marker), "{payload}");
    // Nor as the byte list a derived Debug of Vec<u8> would print.
    let bytes: Vec<String> = marker.bytes().take(4).map(|b| b.to_string()).collect();
    assert!(!payload.contains(&bytes.join(", ")), "{payload}");
}
