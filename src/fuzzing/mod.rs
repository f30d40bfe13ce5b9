//! The fuzzing oracle: one check per parser of untrusted input, shared by the cargo-fuzz
//! targets in `fuzz/` (libFuzzer explores) and `tests/it/fuzz.rs` (CI replays every seed of
//! `fuzz/corpus/`). Compiled only with the `fuzzing` feature, which the release binary never
//! enables (the integration tests turn it on through a dev-dependency on this crate).
//!
//! Every target takes raw bytes and returns `Err` with a description when a property fails;
//! "no panic" is checked by running it. See `fuzz/README.md`.

pub mod simulate;

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use jiff::Timestamp;
use serde_json::Value;

use crate::controller::offline;
use crate::controller::plan::render::{OutputFormat, render};
use crate::controller::plan::{ActionKind, PlanConfig, plan};
use crate::delivery::Delivery;
use crate::delivery::mutate::{self, MutateOptions};
use crate::domain::arn::{self, BaseArn, MAX_SESSION_NAME, RoleArn};
use crate::domain::model::{Observed, ObservedSecret};
use crate::domain::policy::Policy;
use crate::domain::secret::{self, DATA_KEYS, SECRET_KEYS};

/// Marker in every credential of the corpus: no rendering, note or error may show it.
pub const MARKER: &str = "FUZZSECRET";
/// Base ARN the references and objects are resolved against.
pub const BASE: &str = "arn:aws:iam::123456789012:role/";
/// A second base, with a partition, another account and a path.
pub const BASE_WITH_PATH: &str = "arn:aws-cn:iam::210987654321:role/k8s/";
/// The planning time of the objects target.
pub const NOW: &str = "2026-11-26T12:00:00Z";

/// A failed property, described.
pub type Outcome = Result<(), String>;

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

macro_rules! ensure_eq {
    ($left:expr, $right:expr, $($fmt:tt)+) => {
        // A `match` keeps temporaries alive, as in `assert_eq!`.
        match (&$left, &$right) {
            (left, right) => {
                if left != right {
                    return Err(format!("{:?} != {:?}: {}", left, right, format!($($fmt)+)));
                }
            }
        }
    };
}

/// A control character other than a newline.
pub fn has_raw_control(s: &str) -> bool {
    s.chars().any(|c| c.is_control() && c != '\n')
}

// ---------------------------------------------------------------------------------------------
// Target `references`: role references
// ---------------------------------------------------------------------------------------------

/// One role reference, bytes as they are (lossily UTF-8).
pub fn references(data: &[u8]) -> Outcome {
    let bases: [BaseArn; 2] = [
        BASE.parse().expect("base"),
        BASE_WITH_PATH.parse().expect("base"),
    ];
    check_reference(&String::from_utf8_lossy(data), &bases)
}

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

/// Resolving round-trips and yields a clean name and path; errors are short messages;
/// session names are valid; globs never panic and a literal pattern matches itself.
pub fn check_reference(s: &str, bases: &[BaseArn]) -> Outcome {
    for base in bases {
        match arn::resolve(s, Some(base)) {
            Ok(resolved) => check_resolved(s, base, &resolved)?,
            Err(e) => check_message(&e.to_string(), s)?,
        }
    }
    match arn::resolve(s, None) {
        Ok(resolved) => ensure_eq!(resolved.to_string().as_str(), s, "without a base"),
        Err(e) => check_message(&e.to_string(), s)?,
    }
    match s.parse::<RoleArn>() {
        Ok(parsed) => ensure_eq!(parsed.to_string().as_str(), s, "RoleArn round trip"),
        Err(e) => check_message(&e.0, s)?,
    }
    if let Ok(base) = s.parse::<BaseArn>() {
        ensure_eq!(base.to_string().as_str(), s, "BaseArn round trip");
        let app = arn::resolve("app", Some(&base));
        ensure!(app.is_ok(), "base {s:?}: {app:?}");
    }
    check_session_names(s)?;
    check_globs(s)
}

/// A reference `s` resolved under `base`: it round-trips, and its name, path and account are
/// valid IAM parts.
fn check_resolved(s: &str, base: &BaseArn, resolved: &RoleArn) -> Outcome {
    let text = resolved.to_string();
    ensure_eq!(text.parse::<RoleArn>().as_ref(), Ok(resolved), "{s:?}");
    ensure_eq!(
        arn::resolve(&text, Some(base)).as_ref(),
        Ok(resolved),
        "{s:?}"
    );
    let name = resolved.name();
    ensure!(
        !name.is_empty() && name.len() <= arn::MAX_ROLE_NAME && name.chars().all(arn::is_iam_char),
        "{s:?} resolved to name {name:?}"
    );
    ensure!(
        is_clean_path(resolved.path()),
        "{s:?} resolved to path {:?}",
        resolved.path()
    );
    ensure_eq!(resolved.account().len(), 12, "{s:?}");
    if s.starts_with("arn:") {
        ensure_eq!(text.as_str(), s, "an ARN resolves to itself");
    } else {
        ensure_eq!(text, format!("{base}{s}"), "a name resolves under the base");
    }
    Ok(())
}

/// Session names from an arbitrary namespace/name split of `s` are valid, and truncated ones
/// stay distinct.
fn check_session_names(s: &str) -> Outcome {
    let cut = s
        .char_indices()
        .nth(s.chars().count() / 2)
        .map_or(0, |(i, _)| i);
    let (ns, name) = s.split_at(cut);
    let session = arn::session_name(ns, name);
    check_session_name(&session)?;
    if session.len() == MAX_SESSION_NAME && format!("{ns}.{name}").len() > MAX_SESSION_NAME {
        ensure!(
            session != arn::session_name(ns, &format!("{name}x")),
            "truncated session names collide for {ns:?}/{name:?}"
        );
    }
    Ok(())
}

/// A valid STS RoleSessionName.
fn check_session_name(session: &str) -> Outcome {
    ensure!(
        !session.is_empty()
            && session.len() <= MAX_SESSION_NAME
            && session.chars().all(arn::is_iam_char),
        "session name {session:?}"
    );
    Ok(())
}

/// Globs never panic; a pattern without wildcards matches itself. The controller matches globs
/// against resolved ARNs only, which hold no `*`.
fn check_globs(s: &str) -> Outcome {
    let _ = arn::glob_match(s, BASE);
    if !s.contains(['*', '?']) {
        ensure!(arn::glob_match("*", s), "* does not match {s:?}");
        ensure!(arn::glob_match(s, s), "{s:?} does not match itself");
        let (pattern, text) = (format!("*{s}"), format!("{BASE}{s}"));
        ensure!(arn::glob_match(&pattern, &text), "{pattern:?} vs {text:?}");
    }
    Ok(())
}

/// Error messages are short, printable, one line, and quote the input only as an excerpt.
pub fn check_message(e: &str, input: &str) -> Outcome {
    ensure!(
        e.chars().count() <= 2000,
        "message of {} characters for {input:?}",
        e.chars().count()
    );
    ensure!(!has_raw_control(e) && !e.contains('\n'), "{e:?}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Target `secrets`: the Secret data decoder
// ---------------------------------------------------------------------------------------------

/// A Secret's data map from the corpus format: a JSON object of key → text, key →
/// `{"base64": "…"}` for bytes, or key → `null` for a value that is not base64 (the loader
/// keeps such keys as undecodable). Anything else is read as records `key=value` separated by
/// NUL bytes, so byte-level mutations of values reach the decoder too.
pub fn data_map(data: &[u8]) -> (BTreeMap<String, Vec<u8>>, BTreeSet<String>) {
    let mut map = BTreeMap::new();
    let mut undecodable = BTreeSet::new();
    if let Ok(Value::Object(entries)) = serde_json::from_slice::<Value>(data) {
        let mut ok = true;
        for (k, v) in entries {
            match v {
                Value::String(s) => {
                    map.insert(k, s.into_bytes());
                }
                Value::Null => {
                    undecodable.insert(k);
                }
                Value::Object(o) => match o
                    .get("base64")
                    .and_then(Value::as_str)
                    .map(|b| base64::engine::general_purpose::STANDARD.decode(b))
                {
                    Some(Ok(bytes)) => {
                        map.insert(k, bytes);
                    }
                    _ => ok = false,
                },
                _ => ok = false,
            }
        }
        if ok {
            return (map, undecodable);
        }
        map.clear();
        undecodable.clear();
    }
    for record in data.split(|b| *b == 0).filter(|r| !r.is_empty()) {
        let at = record
            .iter()
            .position(|b| *b == b'=')
            .unwrap_or(record.len());
        let key = String::from_utf8_lossy(&record[..at]).into_owned();
        map.insert(key, record.get(at + 1..).unwrap_or_default().to_vec());
    }
    (map, undecodable)
}

/// The Secret `app` in namespace `ns` with `data`.
pub fn observed_secret(
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

/// One data map (see [`data_map`]).
pub fn secrets(data: &[u8]) -> Outcome {
    let (map, undecodable) = data_map(data);
    check_secret(&observed_secret(map, undecodable))
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

/// A decoded Secret is complete and its role ARN parses; an error names the data key and
/// shows no credential; the redacted view shows no credential word and no raw control.
pub fn check_secret(s: &ObservedSecret) -> Outcome {
    match secret::decode(s) {
        Ok(content) => {
            ensure!(
                s.undecodable_keys.is_empty(),
                "decoded with undecodable keys"
            );
            for key in DATA_KEYS {
                ensure!(
                    s.data.get(key).is_some_and(|v| !v.is_empty()),
                    "decoded without {key}"
                );
            }
            let parsed = content.role_arn.parse::<RoleArn>();
            ensure_eq!(
                parsed.map(|a| a.to_string()),
                Ok(content.role_arn.clone()),
                "role ARN"
            );
            ensure_eq!(
                secret::role_arn_of(s),
                Some(content.role_arn.clone()),
                "role_arn_of"
            );
        }
        Err(e) => {
            ensure!(
                e.starts_with("data key \"") || e == "data is not a map of base64 strings",
                "{e:?}"
            );
            // Keys are quoted as excerpts (80 characters, escaped): bounded, whatever the key.
            ensure!(e.chars().count() <= 1000 && !has_raw_control(&e), "{e:?}");
            // Keys are public (the message names one); values never are.
            let public = public_text(s);
            for word in secret_words(s) {
                ensure!(
                    !e.contains(&word) || public.contains(&word),
                    "the error shows {word:?}: {e:?}"
                );
            }
        }
    }
    if let Some(arn) = secret::role_arn_of(s) {
        ensure!(arn.parse::<RoleArn>().is_ok(), "role_arn_of gave {arn:?}");
    }
    let view = secret::view(s);
    ensure!(!has_raw_control(&view), "raw control character in {view:?}");
    let public = public_text(s);
    for word in secret_words(s) {
        ensure!(
            !view.contains(&word) || public.contains(&word),
            "the view shows {word:?}: {view}"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Target `objects`: the YAML/JSON object loader, then planning and rendering
// ---------------------------------------------------------------------------------------------

/// The planner configurations every loaded stream is planned with.
pub fn configs() -> Vec<PlanConfig> {
    let base: BaseArn = BASE.parse().expect("base");
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
        match &r.spec {
            Ok(spec) => out.push_str(&spec.role_reference),
            Err(e) => out.push_str(e),
        }
    }
    for s in &o.secrets {
        out.push_str(&public_text(s));
    }
    out.push_str(&format!("{:?} {:?}", o.conflicts, o.namespaces));
    out
}

/// One YAML stream (lossily UTF-8), planned at [`NOW`].
pub fn objects(data: &[u8]) -> Outcome {
    let now: Timestamp = NOW.parse().expect("now");
    check_objects(&String::from_utf8_lossy(data), now)
}

/// Loading and planning are deterministic; notes and renderings show no credential and no raw
/// control; the plan has one action per object and only issues valid requests; applying it
/// converges.
pub fn check_objects(text: &str, now: Timestamp) -> Outcome {
    let loaded = offline::load_str("fuzz.yaml", text);
    let loaded_again = offline::load_str("fuzz.yaml", text);
    ensure!(
        loaded.observed == loaded_again.observed,
        "loading is not deterministic"
    );
    let observed = &loaded.observed;
    let public = observed_public_text(observed);
    let words: BTreeSet<String> = observed
        .secrets
        .iter()
        .flat_map(|s| secret_words(s))
        .collect();
    check_notes(&loaded, text, &words)?;
    for config in configs() {
        let p = plan(observed, now, &config);
        ensure!(
            p == plan(observed, now, &config),
            "planning is not deterministic"
        );
        check_actions(observed, &p)?;
        for format in [OutputFormat::Text, OutputFormat::Diff, OutputFormat::Json] {
            for verbose in [false, true] {
                check_rendering(&p, format, verbose, &words, &public)?;
            }
        }
        // Applying the plan converges: the next plan has nothing left to do.
        let after = simulate::apply(observed, &p);
        let second = plan(&after, now, &config);
        ensure!(
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

/// Notes name the file, the document and what is wrong, never a credential. (They do echo
/// `kind`, `apiVersion` and duplicate names raw.) A credential word that also occurs in the
/// text outside the credential values is not secret there.
fn check_notes(loaded: &offline::Loaded, text: &str, words: &BTreeSet<String>) -> Outcome {
    for n in &loaded.notes {
        let n = n.to_string();
        for w in words.iter().filter(|w| n.contains(w.as_str())) {
            let in_text = text.matches(w.as_str()).count();
            let in_credentials: usize = loaded
                .observed
                .secrets
                .iter()
                .flat_map(|s| SECRET_KEYS.iter().filter_map(|k| s.data.get(*k)))
                .map(|v| String::from_utf8_lossy(v).matches(w.as_str()).count())
                .sum();
            ensure!(in_text > in_credentials, "note {n:?} shows {w:?}");
        }
    }
    Ok(())
}

/// One action per AWSIAMRole and per managed Secret without one; exactly the kinds that need
/// credentials carry a valid STS request for the ARN they name.
fn check_actions(observed: &Observed, p: &crate::controller::plan::Plan<'_>) -> Outcome {
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
    ensure_eq!(p.actions.len(), roles.len() + orphans, "actions");
    for a in &p.actions {
        let Some(req) = a.issue().map(|i| &i.request) else {
            ensure!(
                !a.kind().needs_credentials(),
                "{:?} issues nothing",
                a.kind()
            );
            continue;
        };
        ensure!(a.kind().needs_credentials(), "{:?} issues", a.kind());
        check_session_name(&req.session_name)?;
        ensure!(
            (900..=43200).contains(&req.duration),
            "duration {}",
            req.duration
        );
        ensure_eq!(
            a.role_arn.clone(),
            Some(req.role_arn.to_string()),
            "role ARN"
        );
    }
    Ok(())
}

fn check_rendering(
    p: &crate::controller::plan::Plan<'_>,
    format: OutputFormat,
    verbose: bool,
    words: &BTreeSet<String>,
    public: &str,
) -> Outcome {
    let out = render(p, format, verbose);
    ensure!(
        out == render(p, format, verbose),
        "{format:?} is not deterministic"
    );
    for w in words {
        ensure!(
            !out.contains(w.as_str()) || public.contains(w.as_str()),
            "{format:?} shows the credential word {w:?}"
        );
    }
    // JSON escapes C0 controls; DEL and C1 controls are legal unescaped in JSON strings
    // (serde_json leaves them), so only C0 is checked there.
    let raw = if format == OutputFormat::Json {
        out.chars().any(|c| c < ' ' && c != '\n')
    } else {
        has_raw_control(&out)
    };
    ensure!(
        !raw,
        "{format:?} has a raw control character: {:?}",
        out.lines().find(|l| has_raw_control(l))
    );
    match format {
        OutputFormat::Text => {
            let shown = p
                .actions
                .iter()
                .filter(|a| verbose || a.kind() != ActionKind::Skip)
                .count();
            ensure_eq!(out.lines().count(), shown + 1, "forged lines:\n{out}");
        }
        OutputFormat::Json => {
            let v: Value = serde_json::from_str(&out).map_err(|e| format!("JSON: {e}"))?;
            ensure_eq!(
                v["actions"].as_array().map(Vec::len),
                Some(p.actions.len()),
                "JSON actions"
            );
        }
        OutputFormat::Diff => {}
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Target `pod_mutation`: the pod mutation of the webhook and `inject`
// ---------------------------------------------------------------------------------------------

/// The mutation options every pod is mutated with.
pub fn mutate_options() -> Vec<MutateOptions> {
    let base = MutateOptions::new("registry.example.com/kube-aws-iam-controller:fuzz");
    vec![
        base.clone(),
        MutateOptions {
            default_delivery: Delivery::Endpoint,
            region: Some("eu-central-1".into()),
            ..base.clone()
        },
        MutateOptions {
            default_delivery: Delivery::Endpoint,
            sidecar_port: 8080,
            ..base
        },
    ]
}

/// One Pod or pod template as JSON; bytes that are not JSON are skipped.
pub fn pod_mutation(data: &[u8]) -> Outcome {
    let Ok(pod) = serde_json::from_slice::<Value>(data) else {
        return Ok(());
    };
    for options in mutate_options() {
        check_pod(&pod, &options)?;
    }
    Ok(())
}

/// Object keys whose string values a mutation error may quote: names, labels, annotations.
fn is_public_key(key: &str) -> bool {
    matches!(key, "name" | "labels" | "annotations")
}

/// Marker words of the pod's values (`secret`) and of its names, labels and annotations
/// (`public`, which errors may quote).
fn pod_words(v: &Value, public: bool, secret_out: &mut BTreeSet<String>, public_out: &mut String) {
    match v {
        Value::String(s) => {
            if public {
                public_out.push_str(s);
                public_out.push('\n');
            } else {
                for w in s
                    .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
                    .filter(|w| w.contains(MARKER))
                {
                    secret_out.insert(w.to_string());
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                pod_words(item, public, secret_out, public_out);
            }
        }
        Value::Object(map) => {
            for (k, item) in map {
                public_out.push_str(k);
                public_out.push('\n');
                pod_words(item, public || is_public_key(k), secret_out, public_out);
            }
        }
        _ => {}
    }
}

/// The patch only adds, applies, and equals [`mutate::mutated`]; the mutated pod needs no
/// further patch (idempotence); an unlabelled pod is left alone; errors name the field, are
/// one short printable line and quote no value but names, labels and annotations.
pub fn check_pod(pod: &Value, options: &MutateOptions) -> Outcome {
    let result = mutate::patch(pod, options);
    ensure!(
        result == mutate::patch(pod, options),
        "the mutation is not deterministic"
    );
    if !mutate::is_labelled(pod) {
        ensure!(
            matches!(result, Ok(None)),
            "an unlabelled pod is mutated: {result:?}"
        );
    }
    match result {
        Ok(None) => {}
        Ok(Some(ops)) => {
            ensure!(
                ops.0
                    .iter()
                    .all(|op| matches!(op, json_patch::PatchOperation::Add(_))),
                "the patch does more than add: {ops:?}"
            );
            let mut applied = pod.clone();
            json_patch::patch(&mut applied, &ops).map_err(|e| format!("the patch fails: {e}"))?;
            ensure_eq!(
                mutate::mutated(pod, options),
                Ok(Some(applied.clone())),
                "mutated() disagrees with the patch"
            );
            let again = mutate::patch(&applied, options);
            ensure!(
                matches!(again, Ok(None)),
                "mutating the mutated pod gives {again:?}"
            );
        }
        Err(e) => {
            let e = e.to_string();
            check_message(&e, "")?;
            ensure!(
                ["metadata.", "spec", "(document)"]
                    .iter()
                    .any(|field| e.starts_with(field)),
                "the error names no field: {e:?}"
            );
            let (mut secret_words, mut public) = (BTreeSet::new(), String::new());
            pod_words(pod, false, &mut secret_words, &mut public);
            for w in &secret_words {
                ensure!(
                    !e.contains(w.as_str()) || public.contains(w.as_str()),
                    "the error shows the value word {w:?}: {e}"
                );
            }
        }
    }
    Ok(())
}
