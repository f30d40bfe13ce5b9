//! The metric table of `docs/operations.md` is what the binary exports: it is generated from a
//! scrape of `/metrics` of a real `run` (loopback API server, moto STS) and of a real `webhook`
//! (over TLS, a test CA's certificate), and a test fails when the committed table differs.
//! `UPDATE_DOCS=1` (or `make docs`) rewrites it.

use crate::support::repo_root;
use crate::support::scrape::{run_metrics, webhook_metrics};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const DOC: &str = "docs/operations.md";
const BEGIN: &str =
    "<!-- BEGIN generated metrics: UPDATE_DOCS=1 cargo test --test it metrics_doc -->";
const END: &str = "<!-- END generated metrics -->";
const REGENERATE: &str = "UPDATE_DOCS=1 cargo test --test it metrics_doc";

/// One metric family as exported.
#[derive(Debug, Default)]
struct Family {
    name: String,
    kind: String,
    unit: Option<String>,
    help: String,
    /// Label name → every value seen (sorted); a histogram's `le` is left out.
    labels: BTreeMap<String, BTreeSet<String>>,
}

/// The families of an OpenMetrics text exposition, in the order exported.
fn families(text: &str) -> Vec<Family> {
    let mut out: Vec<Family> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let Some((keyword, rest)) = rest.split_once(' ') else {
                continue;
            };
            let (name, value) = rest.split_once(' ').unwrap_or((rest, ""));
            if keyword == "HELP" {
                out.push(Family {
                    name: name.to_string(),
                    help: value.to_string(),
                    ..Family::default()
                });
                continue;
            }
            let family = out
                .last_mut()
                .filter(|f| f.name == name)
                .unwrap_or_else(|| panic!("{line:?} does not follow its HELP line"));
            match keyword {
                "TYPE" => family.kind = value.to_string(),
                "UNIT" => family.unit = Some(value.to_string()),
                other => panic!("unexpected descriptor {other:?} in {line:?}"),
            }
            continue;
        }
        if line.is_empty() {
            continue;
        }
        let (series, _value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not a sample: {line:?}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, labels.strip_suffix('}').expect("closing brace")),
            None => (series, ""),
        };
        // Samples follow their family's descriptors.
        let family = out
            .last_mut()
            .filter(|f| name.starts_with(f.name.as_str()))
            .unwrap_or_else(|| panic!("sample {line:?} does not follow its family's HELP"));
        for pair in labels.split(',').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').expect("label=value");
            let value = value.trim_matches('"');
            if key == "le" && family.kind == "histogram" {
                continue;
            }
            family
                .labels
                .entry(key.to_string())
                .or_default()
                .insert(value.to_string());
        }
    }
    out
}

/// Markdown table rows: the series name to query, type, labels with their values, help.
fn table(families: &[Family]) -> String {
    let mut out = String::from("| metric | type | labels | help |\n|---|---|---|---|\n");
    for f in families {
        let name = match f.kind.as_str() {
            "counter" => format!("{}_total", f.name),
            _ => f.name.clone(),
        };
        let labels: Vec<String> = f
            .labels
            .iter()
            .map(|(key, values)| {
                let values: Vec<String> = values.iter().map(|v| format!("`{v}`")).collect();
                format!("`{key}`: {}", values.join(", "))
            })
            .collect();
        let kind = match &f.unit {
            Some(unit) => format!("{} ({unit})", f.kind),
            None => f.kind.clone(),
        };
        out.push_str(&format!(
            "| `{name}` | {kind} | {} | {} |\n",
            labels.join("<br>"),
            f.help.replace('|', "\\|")
        ));
    }
    out
}

/// The generated part of the document, markers included.
fn generated(run: &str, webhook: &str) -> String {
    format!(
        "{BEGIN}\n\n`run`, on `--health-addr`:\n\n{}\n`webhook`, on `--webhook-addr` (HTTPS):\n\n{}\n{END}",
        table(&families(run)),
        table(&families(webhook)),
    )
}

/// Replaces the generated part of `doc` (between the markers) with `generated`.
fn splice(doc: &str, generated: &str, path: &Path) -> String {
    let start = doc
        .find(BEGIN)
        .unwrap_or_else(|| panic!("{}: no {BEGIN:?}", path.display()));
    let end = doc[start..]
        .find(END)
        .map(|e| start + e + END.len())
        .unwrap_or_else(|| panic!("{}: no {END:?} after the begin marker", path.display()));
    format!("{}{generated}{}", &doc[..start], &doc[end..])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_doc_matches_what_the_binary_exports() {
    let run = run_metrics("metrics-doc-run").await;
    let webhook = webhook_metrics("metrics-doc-webhook").await;
    // The names the alerting rules and dashboards are written against.
    for name in [
        "# TYPE kube_aws_iam_controller_roles gauge",
        "# TYPE kube_aws_iam_controller_failing_roles_earliest_expiry_seconds gauge",
    ] {
        assert!(run.lines().any(|l| l == name), "{name} not in\n{run}");
    }
    for f in families(&run).iter().chain(&families(&webhook)) {
        assert!(!f.help.is_empty(), "{} has no help", f.name);
        assert!(
            f.kind != "counter" || !f.name.ends_with("_total"),
            "{}: the family name of a counter has no _total (its samples do)",
            f.name
        );
        if f.name.ends_with("_seconds") {
            assert_eq!(f.unit.as_deref(), Some("seconds"), "{} has no UNIT", f.name);
            assert!(f.help.contains("econds"), "{}: help names no unit", f.name);
        }
    }
    let expected = generated(&run, &webhook);
    let path = repo_root().join(DOC);
    let committed = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let updated = splice(&committed, &expected, &path);
    if std::env::var_os("UPDATE_DOCS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &updated).unwrap();
        return;
    }
    if committed != updated {
        let diff = similar::TextDiff::from_lines(&committed, &updated)
            .unified_diff()
            .header(DOC, "/metrics")
            .to_string();
        panic!(
            "{DOC}'s metric table differs from what the binary exports; regenerate it with\n  {REGENERATE}\n{diff}"
        );
    }
}

#[test]
fn families_are_read_with_their_label_values() {
    let text = "# HELP x_requests Requests by result.\n# TYPE x_requests counter\n\
                x_requests_total{result=\"ok\"} 1\nx_requests_total{result=\"failed\"} 0\n\
                # HELP x_duration_seconds Duration, in seconds.\n# TYPE x_duration_seconds histogram\n\
                # UNIT x_duration_seconds seconds\nx_duration_seconds_sum 0.0\n\
                x_duration_seconds_count 0\nx_duration_seconds_bucket{le=\"+Inf\"} 0\n# EOF\n";
    let table = table(&families(text));
    assert_eq!(
        table,
        "| metric | type | labels | help |\n|---|---|---|---|\n\
         | `x_requests_total` | counter | `result`: `failed`, `ok` | Requests by result. |\n\
         | `x_duration_seconds` | histogram (seconds) |  | Duration, in seconds. |\n"
    );
}
