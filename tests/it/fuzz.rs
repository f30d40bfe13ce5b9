//! Fuzzing in CI. Exploration is libFuzzer's job (`make fuzz`, targets in `fuzz/`, see
//! `fuzz/README.md`); CI cannot install cargo-fuzz cheaply, so this file keeps what it found
//! and the seeds it starts from meaningful on every run:
//!
//! 1. every file of `fuzz/corpus/` is replayed through the fuzzing oracle
//!    (`kube_aws_iam_controller::fuzzing`), the very checks the cargo-fuzz targets assert:
//!    `references/` (role references), `secrets/` (Secret data maps), `objects/` (YAML streams,
//!    then planning and rendering), `pods/` (the pod mutation);
//! 2. a short proptest run of byte edits on those seeds through the same checks (a smoke test;
//!    `PROPTEST_CASES` overrides the case counts);
//! 3. a proptest round trip: what the controller writes into a Secret, it reads back.
//!
//! Failures proptest finds are kept in `tests/proptest-regressions/fuzz.txt` and replayed
//! first; inputs libFuzzer finds are minimised into the corpus.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use jiff::Timestamp;
use kube_aws_iam_controller::controller::offline;
use kube_aws_iam_controller::delivery::mutate;
use kube_aws_iam_controller::domain::arn;
use kube_aws_iam_controller::domain::secret::{self, Credentials};
use kube_aws_iam_controller::fuzzing::{self, Outcome};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, FileFailurePersistence, RngSeed, TestCaseError, TestRunner};
use serde_json::Value;

use crate::support::repo_root;

type Target = fn(&[u8]) -> Outcome;

/// The corpus directories and the oracle each one feeds.
const TARGETS: [(&str, Target); 4] = [
    ("references", fuzzing::references),
    ("secrets", fuzzing::secrets),
    ("objects", fuzzing::objects),
    ("pods", fuzzing::pod_mutation),
];

/// Every file of `fuzz/corpus/<dir>/`, sorted by name.
fn corpus(dir: &str) -> Vec<(String, Vec<u8>)> {
    let path = repo_root().join("fuzz/corpus").join(dir);
    let mut files: Vec<_> = std::fs::read_dir(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(
        (10..=50).contains(&files.len()),
        "{dir}: {} seeds",
        files.len()
    );
    files
        .iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(p).unwrap())
        })
        .collect()
}

/// Replays every seed of `dir` through `target`.
fn replay(dir: &str, target: Target) -> Vec<(String, Vec<u8>)> {
    let files = corpus(dir);
    for (name, bytes) in &files {
        target(bytes).unwrap_or_else(|e| panic!("fuzz/corpus/{dir}/{name}: {e}"));
    }
    files
}

#[test]
fn fuzz_corpus_references() {
    replay("references", fuzzing::references);
}

#[test]
fn fuzz_corpus_secrets() {
    let files = replay("secrets", fuzzing::secrets);
    // The corpus' valid seeds decode (so the decoder's success path is checked too).
    for name in [
        "01-valid.json",
        "02-valid-path-arn.json",
        "11-whitespace-padded.json",
    ] {
        let (_, bytes) = files.iter().find(|(n, _)| n == name).unwrap();
        let (data, undecodable) = fuzzing::data_map(bytes);
        let s = fuzzing::observed_secret(data, undecodable);
        assert!(
            secret::decode(&s).is_ok(),
            "{name}: {:?}",
            secret::decode(&s)
        );
    }
}

#[test]
fn fuzz_corpus_objects() {
    for (name, bytes) in replay("objects", fuzzing::objects) {
        if name.starts_with("found-") {
            continue;
        }
        let text = String::from_utf8(bytes).expect("object seeds are UTF-8");
        assert!(
            !offline::load_str(&name, &text).observed.roles.is_empty(),
            "{name}: no AWSIAMRole"
        );
    }
}

#[test]
fn fuzz_corpus_pods() {
    // Between them the seeds reach every outcome of the mutation, under every option set.
    let files = replay("pods", fuzzing::pod_mutation);
    for options in fuzzing::mutate_options() {
        let mut outcomes = BTreeSet::new();
        for (name, bytes) in &files {
            let pod: Value = serde_json::from_slice(bytes)
                .unwrap_or_else(|e| panic!("{name}: pod seeds are JSON: {e}"));
            outcomes.insert(match mutate::patch(&pod, &options) {
                Ok(None) => "unchanged",
                Ok(Some(_)) => "patched",
                Err(_) => "refused",
            });
        }
        assert_eq!(outcomes.len(), 3, "{options:?}: {outcomes:?}");
    }
}

/// Found by fuzzing: a `*` in the pattern that meets a `*` in the text is taken as a literal
/// and no backtracking point is kept, so `*` does not match `*x`. Unreachable today (the text
/// is always a resolved role ARN, which cannot hold `*`).
#[test]
fn glob_star_matches_text_with_a_star() {
    assert!(arn::glob_match("*", "*x"));
    assert!(arn::glob_match("a*", "a*b"));
}

// ---------------------------------------------------------------------------------------------
// A short proptest run: byte edits on the seeds
// ---------------------------------------------------------------------------------------------

/// Runs `test` over `strategy` for `cases` cases (or `PROPTEST_CASES`) and fails with
/// proptest's minimal input.
fn run<S: Strategy>(
    name: &str,
    cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    let config = Config {
        cases,
        source_file: Some(file!()),
        failure_persistence: Some(Box::new(FileFailurePersistence::SourceParallel(
            "proptest-regressions",
        ))),
        max_shrink_time: 20_000,
        // CI replays a fixed stream, so a red run is reproducible and never a coin toss;
        // local runs explore new inputs. PROPTEST_RNG_SEED picks a stream explicitly.
        rng_seed: if std::env::var_os("CI").is_some()
            && std::env::var_os("PROPTEST_RNG_SEED").is_none()
        {
            RngSeed::Fixed(0x6b75_6265_6177_7369)
        } else {
            Config::default().rng_seed
        },
        ..Config::default()
    };
    let executions = AtomicU64::new(0);
    let start = Instant::now();
    let result = TestRunner::new(config).run(&strategy, |value| {
        executions.fetch_add(1, Ordering::Relaxed);
        test(value)
    });
    eprintln!(
        "fuzz {name}: {} executions ({cases} cases) in {:.2}s",
        executions.into_inner(),
        start.elapsed().as_secs_f64()
    );
    if let Err(e) = result {
        panic!("fuzz {name}: {e}");
    }
}

/// One byte-level edit; positions wrap to the input's length.
#[derive(Clone, Debug)]
enum Edit {
    Set(Index, u8),
    Insert(Index, Vec<u8>),
    Delete(Index, u8),
    Duplicate(Index, u8, Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<Index>(), any::<u8>()).prop_map(|(at, b)| Edit::Set(at, b)),
        (any::<Index>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(at, bytes)| Edit::Insert(at, bytes)),
        (any::<Index>(), 1u8..32).prop_map(|(at, n)| Edit::Delete(at, n)),
        (any::<Index>(), 1u8..64, any::<Index>()).prop_map(|(f, n, t)| Edit::Duplicate(f, n, t)),
    ]
}

fn apply_edit(input: &mut Vec<u8>, edit: &Edit) {
    let point = |i: &Index| i.index(input.len() + 1);
    let span = |i: &Index, n: u8| point(i)..(point(i) + n as usize).min(input.len());
    match edit {
        Edit::Set(at, b) if !input.is_empty() => {
            let at = at.index(input.len());
            input[at] = *b;
        }
        Edit::Set(..) => {}
        Edit::Insert(at, bytes) => {
            let at = point(at);
            input.splice(at..at, bytes.iter().copied());
        }
        Edit::Delete(at, n) => {
            input.drain(span(at, *n));
        }
        Edit::Duplicate(from, n, to) => {
            let copy = input[span(from, *n)].to_vec();
            let to = point(to);
            input.splice(to..to, copy);
        }
    }
}

#[test]
fn fuzz_seed_edits() {
    for ((dir, target), cases) in TARGETS.into_iter().zip([2_000, 1_500, 400, 600]) {
        let seeds: Vec<Vec<u8>> = corpus(dir).into_iter().map(|(_, b)| b).collect();
        let input = (any::<Index>(), prop::collection::vec(edit(), 1..6));
        run(dir, cases, input, |(seed, edits)| {
            let mut bytes = seeds[seed.index(seeds.len())].clone();
            edits.iter().for_each(|e| apply_edit(&mut bytes, e));
            target(&bytes).map_err(TestCaseError::fail)
        });
    }
}

// ---------------------------------------------------------------------------------------------
// What the controller writes, it reads back
// ---------------------------------------------------------------------------------------------

/// A valid role ARN from its parts.
fn role_arn() -> impl Strategy<Value = String> {
    let seg = "[A-Za-z0-9_+=,.@-]{1,12}".prop_filter("no . or ..", |s| s != "." && s != "..");
    (
        prop::sample::select(vec!["aws", "aws-cn", "aws-us-gov", "aws-iso-b"]),
        "[0-9]{12}",
        prop::collection::vec(seg, 0..4),
        "[A-Za-z0-9_+=,.@-]{1,64}",
    )
        .prop_map(|(p, account, path, name)| {
            let path: String = path.iter().map(|s| format!("{s}/")).collect();
            format!("arn:{p}:iam::{account}:role/{path}{name}")
        })
}

fn credential_text(realistic: bool) -> BoxedStrategy<String> {
    if realistic {
        "[A-Za-z0-9/+=]{16,400}".boxed()
    } else {
        // Printable ASCII without leading or trailing blanks.
        "[!-~]([ -~]{0,40}[!-~])?".boxed()
    }
}

fn credentials() -> impl Strategy<Value = Credentials> {
    (
        any::<bool>(),
        // 0001-01-01 to 9999-12-31, with nanoseconds (written as whole seconds).
        -62_135_596_800i64..253_402_300_799,
        0u32..1_000_000_000,
    )
        .prop_flat_map(|(realistic, secs, nanos)| {
            (
                "ASIA[A-Z0-9]{12,28}",
                credential_text(realistic),
                credential_text(realistic),
            )
                .prop_map(move |(access_key_id, secret_access_key, session_token)| {
                    Credentials {
                        access_key_id,
                        secret_access_key,
                        session_token,
                        expiration: Timestamp::new(secs, nanos as i32).unwrap(),
                    }
                })
        })
}

#[test]
fn fuzz_secret_round_trip() {
    let input = (credentials(), role_arn(), any::<i64>());
    run(
        "secrets round trip",
        2_000,
        input,
        |(creds, arn, generation)| {
            let data = secret::encode(&creds, &arn, generation);
            let s = fuzzing::observed_secret(data, BTreeSet::new());
            fuzzing::check_secret(&s).map_err(TestCaseError::fail)?;
            let content = secret::decode(&s);
            prop_assert!(content.is_ok(), "{:?} for {:?}", content, creds);
            let content = content.unwrap();
            prop_assert_eq!(&content.role_arn, &arn);
            prop_assert_eq!(content.generation, generation);
            prop_assert_eq!(content.expire.as_second(), creds.expiration.as_second());
            prop_assert_eq!(content.expire.subsec_nanosecond(), 0);
            let view = secret::view(&s);
            for v in [&creds.secret_access_key, &creds.session_token] {
                prop_assert!(v.len() < 12 || !view.contains(v.as_str()), "{}", view);
            }
            Ok(())
        },
    );
}
