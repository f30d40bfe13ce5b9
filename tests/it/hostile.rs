//! The bad-input corpus: malformed and hostile objects never stop a pass.
//! Each is `Blocked` or `Refresh`ed with a reason and a message naming the field or data key,
//! nothing panics, nothing is echoed at length or unescaped, and every well-formed role in the
//! same pass is still served.
//!
//! Offline, `fixtures/hostile-input/` holds most of the corpus (its `# expect:` lines and
//! snapshots are checked by `fixtures.rs`); the tests here check its messages and session names.
//! End to end, the compiled binary runs `once` against the loopback API server seeded with raw
//! JSON objects (which a schema-less CRD lets through) and moto's STS: [`e2e`], full tier.

use jiff::Timestamp;
use kube_aws_iam_controller::controller::offline;
use kube_aws_iam_controller::controller::plan::render::{OutputFormat, render};
use kube_aws_iam_controller::controller::plan::{ActionKind, PlanConfig, Reason, plan};
use kube_aws_iam_controller::domain::arn::{self, MAX_SESSION_NAME};

use crate::support::{Case, DEFAULT_BASE_ARN as BASE};

/// Namespace of the hostile state.
const NS: &str = "hostile";

#[cfg(feature = "full-tier")]
mod e2e;

// ---------------------------------------------------------------------------------------------
// Offline: fixtures/hostile-input
// ---------------------------------------------------------------------------------------------

/// What the message of each hostile object in the fixture must name, by name prefix.
fn expected_field(namespace: &str, name: &str) -> Option<&'static str> {
    if namespace.starts_with("policy-") {
        return Some("iam.amazonaws.com/allowed-roles");
    }
    let table: [(&str, &str); 14] = [
        ("duration-", "spec.roleSessionDuration"),
        ("reference-", "spec.roleReference"),
        ("spec-empty", "spec.roleReference"),
        ("spec-", "spec"),
        ("generation-string", "metadata"),
        ("ref-", "spec.roleReference"),
        ("arn-", "spec.roleReference"),
        ("traversal-", "spec.roleReference"),
        ("name-65", "spec.roleReference"),
        ("path-513", "spec.roleReference"),
        ("garbage", "data key"),
        ("not-base64", "data key"),
        ("string-data-types", "data key"),
        ("dup-secret", "data key"),
    ];
    table
        .iter()
        .find(|(prefix, _)| name.starts_with(prefix))
        .map(|(_, field)| *field)
}

fn has_raw_control(s: &str) -> bool {
    s.chars().any(|c| c.is_control() && c != '\n')
}

#[test]
fn fixture_messages_name_the_field_and_well_formed_roles_are_served() {
    let case = Case::load("hostile-input");
    let (observed, config) = case.state();
    let p = plan(&observed, case.now, &config);
    let mut checked = 0;
    for a in &p.actions {
        let who = format!("{}/{}", a.namespace, a.name);
        assert!(
            a.message.chars().count() <= 400,
            "{who}: message of {} characters",
            a.message.chars().count()
        );
        assert!(
            !has_raw_control(&a.message),
            "{who}: raw control character in {:?}",
            a.message
        );
        match a.kind() {
            ActionKind::Blocked | ActionKind::Refresh => {
                let field = expected_field(a.namespace, a.name)
                    .or((a.reason() == Reason::OwnerChanged)
                        .then_some("not owned by this AWSIAMRole"))
                    .unwrap_or_else(|| panic!("{who}: no expected field listed"));
                assert!(
                    a.message.contains(field),
                    "{who} ({}): message does not name {field}: {}",
                    a.reason(),
                    a.message
                );
                checked += 1;
            }
            ActionKind::Create => {
                let req = a
                    .issue()
                    .map(|i| &i.request)
                    .expect("create carries a request");
                let session = &req.session_name;
                assert!(
                    session.len() <= MAX_SESSION_NAME && session.chars().all(arn::is_iam_char),
                    "{who}: session name {session:?}"
                );
            }
            _ => {}
        }
    }
    assert!(checked >= 60, "only {checked} hostile objects checked");

    // The 253-character AWSIAMRole name: its session name is cut to 64 and ends in a hash.
    let long = p
        .actions
        .iter()
        .find(|a| a.name.len() == 253)
        .expect("the 253-character role is planned");
    assert_eq!(long.kind(), ActionKind::Create);
    let session = &long.issue().map(|i| &i.request).unwrap().session_name;
    assert_eq!(session.len(), MAX_SESSION_NAME, "{session}");
    assert!(session.starts_with("hostile.r253-abcdefghij"), "{session}");
    let (_, hash) = session.rsplit_once('-').unwrap();
    assert!(
        hash.len() == 8 && hash.chars().all(|c| c.is_ascii_hexdigit()),
        "{session}"
    );
    // Unicode in the name is sanitised, not passed to STS.
    let unicode = p
        .actions
        .iter()
        .find(|a| a.name.starts_with('ü'))
        .expect("the Unicode-named role is planned");
    assert_eq!(
        unicode.issue().map(|i| &i.request).unwrap().session_name,
        "hostile.-n-c-d--n-me"
    );

    for name in ["good-name", "good-path", "good-arn", "name-64"] {
        let a = p
            .actions
            .iter()
            .find(|a| a.namespace == NS && a.name == name)
            .unwrap_or_else(|| panic!("{name} is planned"));
        assert_eq!(
            (a.kind(), a.reason()),
            (ActionKind::Create, Reason::Missing),
            "{name}"
        );
    }
}

#[test]
fn fixture_notes_name_the_document_and_never_its_content() {
    let case = Case::load("hostile-input");
    let loaded = offline::load(&case.dir).unwrap();
    let notes: Vec<String> = loaded.notes.iter().map(ToString::to_string).collect();
    for expected in [
        "duplicate AWSIAMRole hostile/dup-role; the first one is used",
        "duplicate Secret hostile/dup-secret; the first one is used",
        "could not be read as YAML",
        "metadata.name is missing",
        "duplicate Namespace policy-dup; the first one is used",
        "metadata.annotations must map strings to strings",
    ] {
        assert!(
            notes.iter().any(|n| n.contains(expected)),
            "no note says {expected:?}: {notes:#?}"
        );
    }
    for n in &notes {
        assert!(
            n.contains("document "),
            "note without a document number: {n}"
        );
        assert!(!n.contains("FAKESECRET") && !n.contains("lol"), "{n}");
        assert!(n.len() < 300, "{n}");
    }
}

/// A name with control characters cannot forge plan lines in any rendering (the diff's
/// Secret header included).
#[test]
fn hostile_names_are_escaped_in_every_rendering() {
    let loaded = offline::load_str("forge.yaml", FORGE_YAML);
    assert_eq!(loaded.observed.roles.len(), 2, "{:?}", loaded.notes);
    let config = plan_config();
    let p = plan(&loaded.observed, now(), &config);
    for format in [OutputFormat::Text, OutputFormat::Diff, OutputFormat::Json] {
        let out = render(&p, format, true);
        assert_no_forgery(&out, &format!("{format:?}"));
    }
}

/// What offline input echoes into messages and notes is cut and escaped like a roleReference.
/// Today three places echo it whole and raw (offline only: the API server validates
/// metadata, kinds and names): a metadata decode error quotes the offending value, and the
/// notes for an unknown kind and for a duplicate name print them as they are.
#[test]
fn offline_echoes_are_bounded_and_escaped() {
    let long = "S".repeat(5000);
    let dup = r#"apiVersion: zalando.org/v1
kind: AWSIAMRole
metadata: {name: "dup
warning: forged", namespace: x}
spec: {roleReference: app}
"#;
    let text = format!(
        r#"apiVersion: zalando.org/v1
kind: AWSIAMRole
metadata: {{name: long-generation, namespace: x, generation: "{long}"}}
spec: {{roleReference: app}}
---
apiVersion: v1
kind: "Evil\e[2J
warning: forged {long}"
metadata: {{name: a}}
---
{dup}---
{dup}"#
    );
    let loaded = offline::load_str("echo.yaml", &text);
    let p = plan(&loaded.observed, now(), &plan_config());
    let long_generation = p
        .actions
        .iter()
        .find(|a| a.name == "long-generation")
        .unwrap();
    assert!(
        long_generation.message.len() < 400,
        "message of {} bytes",
        long_generation.message.len()
    );
    for n in &loaded.notes {
        let n = n.to_string();
        assert!(
            n.len() < 400 && !n.contains('\n') && !has_raw_control(&n),
            "note {:?}",
            n.chars().take(120).collect::<String>()
        );
    }
}

/// Names only an offline file can hold: a newline forging a plan line, an escape sequence.
const FORGE_YAML: &str = r#"
apiVersion: zalando.org/v1
kind: AWSIAMRole
metadata:
  name: "x\n+ create        hostile/forged (Missing): assume arn:aws:iam::123456789012:role/admin for 1h"
  namespace: hostile
spec: {roleReference: app}
---
apiVersion: zalando.org/v1
kind: AWSIAMRole
metadata: {name: "bell\a\e[2J", namespace: "ns\r\e[31m"}
spec: {roleReference: "\e[31mred"}
"#;

fn assert_no_forgery(out: &str, what: &str) {
    for line in out.lines() {
        assert!(
            !has_raw_control(line),
            "{what}: raw control character in {line:?}"
        );
        assert!(
            !line
                .trim_start_matches(['+', '-', ' '])
                .starts_with("create        hostile/forged"),
            "{what}: forged line {line:?}"
        );
    }
}

fn now() -> Timestamp {
    "2026-11-26T12:00:00Z".parse().unwrap()
}

fn plan_config() -> PlanConfig {
    PlanConfig {
        base_role_arn: Some(BASE.parse().unwrap()),
        ..PlanConfig::default()
    }
}
