//! Fuzzing: a bounded proptest run over the three parsers of untrusted input, seeded from the
//! corpus in `fuzz/corpus/`:
//!
//! 1. role references: `arn::resolve`, `RoleArn`/`BaseArn` parsing, session names, globs
//!    (`fuzz/corpus/references/`, one reference per file, bytes as they are);
//! 2. the Secret data decoder `secret::decode` and its redacted `secret::view`
//!    (`fuzz/corpus/secrets/`, one data map per JSON file: key → text, or → `{"base64": …}`);
//! 3. the YAML/JSON object loader `offline::load_str`, then planning and rendering what it
//!    loaded (`fuzz/corpus/objects/`, YAML streams).
//!
//! Each case is a corpus seed with random mutations (bit flips, byte changes, inserted
//! tokens that matter to the parser, deleted, duplicated and spliced spans, long runs) or a
//! fully random input. Beyond "no panic", each target checks properties of the result (see
//! the `check_*` functions). Case counts keep the three runs within a few seconds each on
//! two cores; `PROPTEST_CASES` overrides them. Every target prints its executions to stderr
//! (`cargo test --test it fuzz -- --nocapture`). Failures are kept in
//! `tests/proptest-regressions/fuzz.txt` and replayed first on every run.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use base64::Engine as _;
use jiff::Timestamp;
use kube_aws_iam_controller::arn::{self, BaseArn, MAX_SESSION_NAME, RoleArn};
use kube_aws_iam_controller::model::{Observed, ObservedSecret};
use kube_aws_iam_controller::offline;
use kube_aws_iam_controller::plan::render::{OutputFormat, render};
use kube_aws_iam_controller::plan::{ActionKind, PlanConfig, plan};
use kube_aws_iam_controller::policy::Policy;
use kube_aws_iam_controller::secret::{self, Credentials, DATA_KEYS, SECRET_KEYS};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, FileFailurePersistence, RngSeed, TestCaseError, TestRunner};
use serde_json::Value;

use crate::support::{repo_root, simulate};

/// Marker in every credential of the corpus.
const MARKER: &str = "FUZZSECRET";
const BASE: &str = "arn:aws:iam::123456789012:role/";
/// A second base, with a partition, another account and a path.
const BASE_WITH_PATH: &str = "arn:aws-cn:iam::210987654321:role/k8s/";

// ---------------------------------------------------------------------------------------------
// Runner, corpus and mutations
// ---------------------------------------------------------------------------------------------

/// Runs `test` over `strategy` for `cases` cases (or `PROPTEST_CASES`), prints the number of
/// executions (shrinking included) and fails with proptest's minimal input.
fn run<S: Strategy>(
    target: &str,
    cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) -> u64 {
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
        // local runs explore new inputs (failures land in proptest-regressions/ and are
        // replayed from then on, in CI too). PROPTEST_RNG_SEED picks a stream explicitly.
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
    let executions = executions.into_inner();
    eprintln!(
        "fuzz {target}: {executions} executions ({cases} cases) in {:.2}s",
        start.elapsed().as_secs_f64()
    );
    if let Err(e) = result {
        panic!("fuzz {target}: {e}");
    }
    executions
}

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
        (10..=30).contains(&files.len()),
        "{dir}: {} seeds",
        files.len()
    );
    files
        .iter()
        .map(|p| (file_name(p), std::fs::read(p).unwrap()))
        .collect()
}

fn file_name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

/// Byte strings that matter to the parsers: YAML structure, ARN syntax, path traversal,
/// control characters and Unicode that must be escaped, numbers at the limits.
const TOKENS: &[&str] = &[
    "---",
    "\n---\n",
    "...",
    ":",
    ": ",
    "::",
    "[",
    "]",
    "{",
    "}",
    ",",
    "\"",
    "'",
    "\\",
    "\\n",
    "\\e",
    "\\u202e",
    "\0",
    "\n",
    "\r\n",
    "\t",
    " ",
    "#",
    "- ",
    "|",
    ">-",
    "&a ",
    "*a",
    "<<: ",
    "!!binary ",
    "!!str ",
    "%YAML 1.2\n",
    "~",
    "null",
    "true",
    "-1",
    "0",
    "1e400",
    "99999999999999999999",
    ".inf",
    "arn:",
    "arn:aws:iam::123456789012:role/",
    "arn:aws:sts::",
    "aws-cn",
    "iam",
    "role/",
    "user/",
    "/",
    "//",
    "..",
    "../",
    "./",
    "*",
    "?",
    "@",
    "=",
    "+",
    "%2F",
    "é",
    "\u{202e}",
    "\u{200b}",
    "\u{feff}",
    "🔑",
    "\u{1b}[2J",
    "\u{7}",
    "\u{7f}",
    "kind: AWSIAMRole",
    "kind: Secret",
    "kind: Namespace",
    "kind: List\nitems:\n- ",
    "apiVersion: v1",
    "apiVersion: zalando.org/v1",
    "metadata:",
    "name: ",
    "namespace: ",
    "uid: ",
    "generation: ",
    "labels: {heritage: kube-aws-iam-controller, type: awsiamrole}",
    "ownerReferences: [{apiVersion: zalando.org/v1, kind: AWSIAMRole, name: a, uid: b}]",
    "spec:",
    "roleReference: ",
    "roleSessionDuration: ",
    "status:",
    "data:",
    "stringData:",
    "iam.amazonaws.com/allowed-roles: ",
    "[default]",
    "aws_session_token = ",
    "credentials",
    "credentials.json",
    "role-arn",
    "expire",
    "awsiamrole-generation",
    "2026-11-26T12:00:00Z",
    "{\"Version\":1}",
    "AAEC",
    "FUZZSECRET",
];

#[derive(Clone, Debug)]
enum Mutation {
    FlipBit {
        at: Index,
        bit: u8,
    },
    SetByte {
        at: Index,
        byte: u8,
    },
    Insert {
        at: Index,
        token: Index,
    },
    InsertBytes {
        at: Index,
        bytes: Vec<u8>,
    },
    Delete {
        at: Index,
        len: u8,
    },
    Duplicate {
        from: Index,
        len: u8,
        to: Index,
    },
    /// A long run of one byte (or of a token), up to a few thousand bytes.
    Run {
        at: Index,
        token: Index,
        times: u16,
    },
    /// Copies a span of another seed (crossover).
    Splice {
        at: Index,
        seed: Index,
        from: Index,
        len: u8,
    },
    Truncate {
        at: Index,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        2 => (any::<Index>(), 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit { at, bit }),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(at, byte)| Mutation::SetByte { at, byte }),
        5 => (any::<Index>(), any::<Index>()).prop_map(|(at, token)| Mutation::Insert { at, token }),
        1 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(at, bytes)| Mutation::InsertBytes { at, bytes }),
        3 => (any::<Index>(), 1u8..32).prop_map(|(at, len)| Mutation::Delete { at, len }),
        2 => (any::<Index>(), 1u8..64, any::<Index>())
            .prop_map(|(from, len, to)| Mutation::Duplicate { from, len, to }),
        1 => (any::<Index>(), any::<Index>(), 2u16..3000)
            .prop_map(|(at, token, times)| Mutation::Run { at, token, times }),
        1 => (any::<Index>(), any::<Index>(), any::<Index>(), 1u8..128)
            .prop_map(|(at, seed, from, len)| Mutation::Splice { at, seed, from, len }),
        1 => any::<Index>().prop_map(|at| Mutation::Truncate { at }),
    ]
}

/// Position in `0..=len` (an insertion point).
fn point(i: &Index, len: usize) -> usize {
    i.index(len + 1)
}

fn span(from: &Index, len: u8, total: usize) -> std::ops::Range<usize> {
    let start = point(from, total);
    start..(start + len as usize).min(total)
}

fn mutate(input: &mut Vec<u8>, m: &Mutation, seeds: &[Vec<u8>]) {
    let len = input.len();
    match m {
        Mutation::FlipBit { at, bit } if len > 0 => input[at.index(len)] ^= 1 << bit,
        Mutation::SetByte { at, byte } if len > 0 => input[at.index(len)] = *byte,
        Mutation::FlipBit { .. } | Mutation::SetByte { .. } => {}
        Mutation::Insert { at, token } => {
            let t = TOKENS[token.index(TOKENS.len())].as_bytes();
            input.splice(point(at, len)..point(at, len), t.iter().copied());
        }
        Mutation::InsertBytes { at, bytes } => {
            input.splice(point(at, len)..point(at, len), bytes.iter().copied());
        }
        Mutation::Delete { at, len: n } => {
            input.drain(span(at, *n, len));
        }
        Mutation::Duplicate { from, len: n, to } => {
            let copy = input[span(from, *n, len)].to_vec();
            let to = point(to, len);
            input.splice(to..to, copy);
        }
        Mutation::Run { at, token, times } => {
            let pick = token.index(TOKENS.len() + 256);
            let unit: Vec<u8> = match TOKENS.get(pick) {
                Some(t) => t.as_bytes().to_vec(),
                None => vec![(pick - TOKENS.len()) as u8],
            };
            let run: Vec<u8> = unit
                .iter()
                .copied()
                .cycle()
                .take(unit.len() * *times as usize)
                .take(8192)
                .collect();
            let at = point(at, len);
            input.splice(at..at, run);
        }
        Mutation::Splice {
            at,
            seed,
            from,
            len: n,
        } => {
            let other = &seeds[seed.index(seeds.len())];
            let copy = other[span(from, *n, other.len())].to_vec();
            let at = point(at, len);
            input.splice(at..at, copy);
        }
        Mutation::Truncate { at } => input.truncate(point(at, len)),
    }
}

/// A mutated seed or a fully random input, as bytes.
#[derive(Clone, Debug)]
enum Input {
    Seed {
        seed: Index,
        mutations: Vec<Mutation>,
    },
    Bytes(Vec<u8>),
    Tokens(Vec<Index>),
}

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        8 => (any::<Index>(), prop::collection::vec(mutation(), 0..6))
            .prop_map(|(seed, mutations)| Input::Seed { seed, mutations }),
        1 => prop::collection::vec(any::<u8>(), 0..160).prop_map(Input::Bytes),
        1 => prop::collection::vec(any::<Index>(), 0..24).prop_map(Input::Tokens),
    ]
}

fn materialize(input: &Input, seeds: &[Vec<u8>]) -> Vec<u8> {
    match input {
        Input::Seed { seed, mutations } => {
            let mut bytes = seeds[seed.index(seeds.len())].clone();
            for m in mutations {
                mutate(&mut bytes, m, seeds);
            }
            bytes
        }
        Input::Bytes(b) => b.clone(),
        Input::Tokens(ts) => ts
            .iter()
            .flat_map(|t| TOKENS[t.index(TOKENS.len())].bytes())
            .collect(),
    }
}

fn has_raw_control(s: &str) -> bool {
    s.chars().any(|c| c.is_control() && c != '\n')
}

// ---------------------------------------------------------------------------------------------
// Target 1: role references
// ---------------------------------------------------------------------------------------------

/// An IAM path as the planner accepts it: `/` or `/seg/…/`, segments of IAM characters, none
/// of them `.` or `..`.
fn is_clean_path(path: &str) -> bool {
    path == "/"
        || (path.len() >= 3
            && path.len() <= arn::MAX_PATH
            && path.starts_with('/')
            && path.ends_with('/')
            && path[1..path.len() - 1].split('/').all(|seg| {
                !seg.is_empty() && seg != "." && seg != ".." && seg.chars().all(arn::is_iam_char)
            }))
}

fn check_reference(s: &str, bases: &[BaseArn]) -> Result<(), TestCaseError> {
    for base in bases {
        match arn::resolve(s, Some(base)) {
            Ok(resolved) => {
                let text = resolved.to_string();
                prop_assert_eq!(text.parse::<RoleArn>(), Ok(resolved.clone()), "{:?}", s);
                prop_assert_eq!(
                    arn::resolve(&text, Some(base)),
                    Ok(resolved.clone()),
                    "{:?}",
                    s
                );
                let name = resolved.name();
                prop_assert!(
                    !name.is_empty()
                        && name.len() <= arn::MAX_ROLE_NAME
                        && name.chars().all(arn::is_iam_char),
                    "{:?} resolved to name {:?}",
                    s,
                    name
                );
                prop_assert!(
                    is_clean_path(resolved.path()),
                    "{:?} resolved to path {:?}",
                    s,
                    resolved.path()
                );
                prop_assert_eq!(resolved.account().len(), 12);
                if s.starts_with("arn:") {
                    prop_assert_eq!(&text, s);
                } else {
                    prop_assert_eq!(&text, &format!("{base}{s}"));
                }
            }
            Err(e) => check_message(&e.to_string(), s)?,
        }
    }
    match arn::resolve(s, None) {
        Ok(resolved) => prop_assert_eq!(&resolved.to_string(), s),
        Err(e) => check_message(&e.to_string(), s)?,
    }
    match s.parse::<RoleArn>() {
        Ok(parsed) => prop_assert_eq!(&parsed.to_string(), s),
        Err(e) => check_message(&e, s)?,
    }
    if let Ok(base) = s.parse::<BaseArn>() {
        prop_assert_eq!(&base.to_string(), s);
        let app = arn::resolve("app", Some(&base));
        prop_assert!(app.is_ok(), "base {:?}: {:?}", s, app);
    }
    // Session names from arbitrary namespace/name splits.
    let cut = s
        .char_indices()
        .nth(s.chars().count() / 2)
        .map_or(0, |(i, _)| i);
    let (ns, name) = s.split_at(cut);
    let session = arn::session_name(ns, name);
    prop_assert!(
        !session.is_empty()
            && session.len() <= MAX_SESSION_NAME
            && session.chars().all(arn::is_iam_char),
        "session name {:?}",
        session
    );
    if session.len() == MAX_SESSION_NAME && format!("{ns}.{name}").len() > MAX_SESSION_NAME {
        prop_assert_ne!(session, arn::session_name(ns, &format!("{name}x")));
    }
    // Globs never panic; a pattern without wildcards matches itself. The controller matches
    // globs against resolved ARNs only, which hold no `*` (see the ignored test below for a
    // text that does).
    let _ = arn::glob_match(s, BASE);
    if !s.contains(['*', '?']) {
        prop_assert!(arn::glob_match("*", s));
        prop_assert!(arn::glob_match(s, s));
        let (pattern, text) = (format!("*{s}"), format!("{BASE}{s}"));
        prop_assert!(arn::glob_match(&pattern, &text));
    }
    Ok(())
}

/// Error messages are short, printable and quote the input only as an excerpt.
fn check_message(e: &str, input: &str) -> Result<(), TestCaseError> {
    prop_assert!(
        e.chars().count() <= 2000,
        "message of {} characters for {:?}",
        e.chars().count(),
        input
    );
    prop_assert!(!has_raw_control(e) && !e.contains('\n'), "{:?}", e);
    Ok(())
}

#[test]
fn fuzz_role_references() {
    let files = corpus("references");
    let seeds: Vec<Vec<u8>> = files.iter().map(|(_, b)| b.clone()).collect();
    let bases: Vec<BaseArn> = [BASE, BASE_WITH_PATH]
        .iter()
        .map(|b| b.parse().unwrap())
        .collect();
    let mut executions = 0;
    for (name, seed) in &files {
        check_reference(&String::from_utf8_lossy(seed), &bases)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        executions += 1;
    }
    executions += run("references", 20_000, input(), |input| {
        let bytes = materialize(&input, &seeds);
        check_reference(&String::from_utf8_lossy(&bytes), &bases)
    });
    eprintln!("fuzz references: {executions} executions in total");
}

/// Found by this fuzz target: a `*` in the pattern that meets a `*` in the text is taken as a
/// literal and no backtracking point is kept, so `*` does not match `*x`. Unreachable today
/// (the text is always a resolved role ARN, which cannot hold `*`).
#[test]
fn glob_star_matches_text_with_a_star() {
    assert!(arn::glob_match("*", "*x"));
    assert!(arn::glob_match("a*", "a*b"));
}

// ---------------------------------------------------------------------------------------------
// Target 2: the Secret data decoder
// ---------------------------------------------------------------------------------------------

/// A corpus data map: key → text, or key → `{"base64": "…"}` for bytes.
fn data_map(name: &str, json: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let v: BTreeMap<String, Value> =
        serde_json::from_slice(json).unwrap_or_else(|e| panic!("{name}: {e}"));
    v.into_iter()
        .map(|(k, v)| {
            let bytes = match v {
                Value::String(s) => s.into_bytes(),
                Value::Object(o) => base64::engine::general_purpose::STANDARD
                    .decode(o["base64"].as_str().unwrap())
                    .unwrap(),
                other => panic!("{name}: {k}: {other}"),
            };
            (k, bytes)
        })
        .collect()
}

fn observed_secret(
    data: BTreeMap<String, Vec<u8>>,
    undecodable: BTreeSet<String>,
) -> ObservedSecret {
    ObservedSecret {
        namespace: "ns".into(),
        name: "app".into(),
        data,
        undecodable_keys: undecodable,
        ..ObservedSecret::default()
    }
}

/// Keys a mutated map may gain or be renamed to.
const KEYS: &[&str] = &[
    "credentials",
    "credentials.process",
    "credentials.json",
    "role-arn",
    "expire",
    "awsiamrole-generation",
    "Credentials",
    "expire ",
    "role-arn\n",
    "",
    "extra",
];

#[derive(Clone, Debug)]
enum MapMutation {
    Value { key: Index, m: Mutation },
    Remove { key: Index },
    Rename { key: Index, to: Index },
    Add { key: Index, value: Vec<u8> },
    Undecodable { key: Index },
}

fn map_mutation() -> impl Strategy<Value = MapMutation> {
    prop_oneof![
        8 => (any::<Index>(), mutation()).prop_map(|(key, m)| MapMutation::Value { key, m }),
        1 => any::<Index>().prop_map(|key| MapMutation::Remove { key }),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(key, to)| MapMutation::Rename { key, to }),
        1 => (any::<Index>(), prop::collection::vec(any::<u8>(), 0..40))
            .prop_map(|(key, value)| MapMutation::Add { key, value }),
        1 => any::<Index>().prop_map(|key| MapMutation::Undecodable { key }),
    ]
}

#[derive(Clone, Debug)]
enum SecretInput {
    Seed {
        seed: Index,
        mutations: Vec<MapMutation>,
    },
    Random(Vec<(Index, Vec<u8>)>),
}

fn secret_input() -> impl Strategy<Value = SecretInput> {
    prop_oneof![
        8 => (any::<Index>(), prop::collection::vec(map_mutation(), 0..6))
            .prop_map(|(seed, mutations)| SecretInput::Seed { seed, mutations }),
        2 => prop::collection::vec((any::<Index>(), prop::collection::vec(any::<u8>(), 0..64)), 0..8)
            .prop_map(SecretInput::Random),
    ]
}

fn materialize_secret(input: &SecretInput, seeds: &[BTreeMap<String, Vec<u8>>]) -> ObservedSecret {
    let values: Vec<Vec<u8>> = seeds.iter().flat_map(|m| m.values().cloned()).collect();
    match input {
        SecretInput::Random(m) => observed_secret(
            m.iter()
                .map(|(k, v)| (KEYS[k.index(KEYS.len())].to_string(), v.clone()))
                .collect(),
            BTreeSet::new(),
        ),
        SecretInput::Seed { seed, mutations } => {
            let mut data = seeds[seed.index(seeds.len())].clone();
            let mut undecodable = BTreeSet::new();
            for m in mutations {
                let keys: Vec<String> = data.keys().cloned().collect();
                let pick =
                    |i: &Index| (!keys.is_empty()).then(|| keys[i.index(keys.len())].clone());
                match m {
                    MapMutation::Value { key, m } => {
                        if let Some(k) = pick(key) {
                            mutate(data.get_mut(&k).unwrap(), m, &values);
                        }
                    }
                    MapMutation::Remove { key } => {
                        if let Some(k) = pick(key) {
                            data.remove(&k);
                        }
                    }
                    MapMutation::Rename { key, to } => {
                        if let Some(k) = pick(key) {
                            let v = data.remove(&k).unwrap();
                            data.insert(KEYS[to.index(KEYS.len())].to_string(), v);
                        }
                    }
                    MapMutation::Add { key, value } => {
                        data.insert(KEYS[key.index(KEYS.len())].to_string(), value.clone());
                    }
                    MapMutation::Undecodable { key } => {
                        if let Some(k) = pick(key) {
                            // As the loader does with a value that is not base64.
                            data.remove(&k);
                            undecodable.insert(k);
                        }
                    }
                }
            }
            observed_secret(data, undecodable)
        }
    }
}

/// Words of the credential keys' values that hold the marker: what must never be shown.
fn secret_words(s: &ObservedSecret) -> BTreeSet<String> {
    let mut words = BTreeSet::new();
    for key in SECRET_KEYS {
        if let Some(v) = s.data.get(key) {
            for w in String::from_utf8_lossy(v)
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
                .filter(|w| w.contains(MARKER))
            {
                words.insert(w.to_string());
            }
        }
    }
    words
}

/// Text of a Secret that may be shown: everything but the credential keys' values.
fn public_text(s: &ObservedSecret) -> String {
    let mut out = format!(
        "{} {} {:?} {:?} {:?} {:?}",
        s.namespace, s.name, s.labels, s.annotations, s.owner_references, s.undecodable_keys
    );
    for (k, v) in &s.data {
        out.push_str(k);
        if !SECRET_KEYS.contains(&k.as_str()) {
            out.push_str(&String::from_utf8_lossy(v));
        }
    }
    out
}

fn check_secret(s: &ObservedSecret) -> Result<(), TestCaseError> {
    match secret::decode(s) {
        Ok(content) => {
            prop_assert!(s.undecodable_keys.is_empty());
            for key in DATA_KEYS {
                prop_assert!(s.data.get(key).is_some_and(|v| !v.is_empty()), "{}", key);
            }
            let parsed = content.role_arn.parse::<RoleArn>();
            prop_assert_eq!(parsed.map(|a| a.to_string()), Ok(content.role_arn.clone()));
            prop_assert_eq!(secret::role_arn_of(s), Some(content.role_arn.clone()));
        }
        Err(e) => {
            prop_assert!(
                e.starts_with("data key \"") || e == "data is not a map of base64 strings",
                "{:?}",
                e
            );
            prop_assert!(e.len() < 200 && !has_raw_control(&e), "{:?}", e);
            prop_assert!(!e.contains(MARKER), "{:?}", e);
        }
    }
    if let Some(arn) = secret::role_arn_of(s) {
        prop_assert!(arn.parse::<RoleArn>().is_ok());
    }
    let view = secret::view(s);
    prop_assert!(
        !has_raw_control(&view),
        "raw control character in {:?}",
        view
    );
    let public = public_text(s);
    for word in secret_words(s) {
        prop_assert!(
            !view.contains(&word) || public.contains(&word),
            "the view shows {:?}: {}",
            word,
            view
        );
    }
    Ok(())
}

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
fn fuzz_secret_decoder() {
    let files = corpus("secrets");
    let seeds: Vec<BTreeMap<String, Vec<u8>>> = files.iter().map(|(n, b)| data_map(n, b)).collect();
    let mut executions = 0;
    for (i, seed) in seeds.iter().enumerate() {
        let s = observed_secret(seed.clone(), BTreeSet::new());
        check_secret(&s).unwrap_or_else(|e| panic!("{}: {e}", files[i].0));
        executions += 1;
    }
    // The corpus' valid seeds decode.
    for name in [
        "01-valid.json",
        "02-valid-path-arn.json",
        "11-whitespace-padded.json",
    ] {
        let i = files.iter().position(|(n, _)| n == name).unwrap();
        let s = observed_secret(seeds[i].clone(), BTreeSet::new());
        assert!(
            secret::decode(&s).is_ok(),
            "{name}: {:?}",
            secret::decode(&s)
        );
    }
    executions += run("secrets", 6_000, secret_input(), |input| {
        check_secret(&materialize_secret(&input, &seeds))
    });
    // What the controller writes, it reads back.
    executions += run(
        "secrets round trip",
        2_000,
        (credentials(), role_arn(), any::<i64>()),
        |(creds, arn, generation)| {
            let s = observed_secret(secret::encode(&creds, &arn, generation), BTreeSet::new());
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
    eprintln!("fuzz secrets: {executions} executions in total");
}

// ---------------------------------------------------------------------------------------------
// Target 3: the YAML/JSON object loader, then planning and rendering
// ---------------------------------------------------------------------------------------------

fn configs() -> Vec<PlanConfig> {
    let base: BaseArn = BASE.parse().unwrap();
    vec![
        PlanConfig {
            base_role_arn: Some(base.clone()),
            ..PlanConfig::default()
        },
        PlanConfig {
            base_role_arn: Some(base),
            policy: Policy {
                namespace_restrictions: true,
                allowed_role_patterns: vec![format!("{BASE}*")],
            },
            ..PlanConfig::default()
        },
        // Offline without --base-role-arn.
        PlanConfig::default(),
    ]
}

/// Everything of the observed state a rendering may show (credential values excepted).
fn observed_public_text(o: &Observed) -> String {
    let mut out = String::new();
    for r in &o.roles {
        out.push_str(&format!("{r:?}"));
        out.push_str(&r.namespace);
        out.push_str(&r.name);
        if let Ok(spec) = &r.spec {
            out.push_str(&spec.role_reference);
        }
        if let Err(e) = &r.spec {
            out.push_str(e);
        }
    }
    for s in &o.secrets {
        out.push_str(&public_text(s));
    }
    out.push_str(&format!("{:?} {:?}", o.conflicts, o.namespaces));
    out
}

fn check_objects(text: &str, now: Timestamp) -> Result<(), TestCaseError> {
    let loaded = offline::load_str("fuzz.yaml", text);
    let loaded_again = offline::load_str("fuzz.yaml", text);
    prop_assert_eq!(&loaded.observed, &loaded_again.observed);
    let observed = &loaded.observed;
    let public = observed_public_text(observed);
    let words: BTreeSet<String> = observed.secrets.iter().flat_map(secret_words).collect();
    // Notes name the file, the document and what is wrong, never a credential. (They do echo
    // `kind`, `apiVersion` and duplicate names raw: reported, see hostile.rs.) A credential
    // word that also occurs in the text outside the credential values is not secret there.
    for n in &loaded.notes {
        let n = n.to_string();
        for w in words.iter().filter(|w| n.contains(w.as_str())) {
            let in_text = text.matches(w.as_str()).count();
            let in_credentials: usize = observed
                .secrets
                .iter()
                .flat_map(|s| SECRET_KEYS.iter().filter_map(|k| s.data.get(*k)))
                .map(|v| String::from_utf8_lossy(v).matches(w.as_str()).count())
                .sum();
            prop_assert!(in_text > in_credentials, "note {:?} shows {:?}", n, w);
        }
    }
    for config in configs() {
        let p = plan(observed, now, &config);
        prop_assert_eq!(
            &p,
            &plan(observed, now, &config),
            "planning is not deterministic"
        );
        // One action per AWSIAMRole and per managed Secret without one.
        let roles: BTreeSet<(&str, &str)> = observed
            .roles
            .iter()
            .map(|r| (r.namespace.as_str(), r.name.as_str()))
            .collect();
        let orphans = observed
            .secrets
            .iter()
            .filter(|s| !roles.contains(&(s.namespace.as_str(), s.name.as_str())))
            .count();
        prop_assert_eq!(p.actions.len(), roles.len() + orphans);
        for a in &p.actions {
            if let Some(req) = a.issue().map(|i| &i.request) {
                prop_assert!(a.kind().needs_credentials());
                let session = &req.session_name;
                prop_assert!(
                    !session.is_empty()
                        && session.len() <= MAX_SESSION_NAME
                        && session.chars().all(arn::is_iam_char),
                    "session name {:?}",
                    session
                );
                prop_assert!((900..=43200).contains(&req.duration), "{}", req.duration);
                prop_assert_eq!(a.role_arn.clone(), Some(req.role_arn.to_string()));
            } else {
                prop_assert!(!a.kind().needs_credentials());
            }
        }
        for format in [OutputFormat::Text, OutputFormat::Diff, OutputFormat::Json] {
            for verbose in [false, true] {
                let out = render(&p, format, verbose);
                prop_assert_eq!(&out, &render(&p, format, verbose));
                for w in &words {
                    prop_assert!(
                        !out.contains(w.as_str()) || public.contains(w.as_str()),
                        "{:?} shows the credential word {:?}",
                        format,
                        w
                    );
                }
                // JSON escapes C0 controls; DEL and C1 controls are legal unescaped in JSON
                // strings (serde_json leaves them), so only C0 is checked there.
                let raw = if format == OutputFormat::Json {
                    out.chars().any(|c| c < ' ' && c != '\n')
                } else {
                    has_raw_control(&out)
                };
                prop_assert!(
                    !raw,
                    "{:?} has a raw control character: {:?}",
                    format,
                    out.lines().find(|l| has_raw_control(l))
                );
                match format {
                    OutputFormat::Text => {
                        let shown = p
                            .actions
                            .iter()
                            .filter(|a| verbose || a.kind() != ActionKind::Skip)
                            .count();
                        prop_assert_eq!(out.lines().count(), shown + 1, "forged lines:\n{}", out);
                    }
                    OutputFormat::Json => {
                        let v: Value = serde_json::from_str(&out)
                            .map_err(|e| TestCaseError::fail(format!("JSON: {e}")))?;
                        prop_assert_eq!(
                            v["actions"].as_array().map(Vec::len),
                            Some(p.actions.len())
                        );
                    }
                    OutputFormat::Diff => {}
                }
            }
        }
        // Applying the plan converges: the next plan has nothing left to do.
        let after = simulate::apply(observed, &p);
        let second = plan(&after, now, &config);
        prop_assert!(
            second.is_converged(),
            "not converged: {:?}",
            second
                .actions
                .iter()
                .filter(|a| a.kind() != ActionKind::Skip)
                .map(|a| (a.namespace, a.name, a.kind(), a.reason(), &a.message))
                .collect::<Vec<_>>()
        );
    }
    Ok(())
}

#[test]
fn fuzz_object_loader() {
    let files = corpus("objects");
    let seeds: Vec<Vec<u8>> = files.iter().map(|(_, b)| b.clone()).collect();
    let now: Timestamp = "2026-11-26T12:00:00Z".parse().unwrap();
    let mut executions = 0;
    for (name, seed) in &files {
        let text = String::from_utf8(seed.clone()).expect("object seeds are UTF-8");
        check_objects(&text, now).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            !offline::load_str(name, &text).observed.roles.is_empty(),
            "{name}: no AWSIAMRole"
        );
        executions += 1;
    }
    executions += run("objects", 3_000, input(), |input| {
        let bytes = materialize(&input, &seeds);
        check_objects(&String::from_utf8_lossy(&bytes), now)
    });
    eprintln!("fuzz objects: {executions} executions in total");
}
