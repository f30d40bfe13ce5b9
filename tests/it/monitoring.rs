//! The monitoring component (`deploy/monitoring/`): alerting rules, PodMonitors and the Grafana
//! dashboard, checked against what the binary really exports.
//!
//! Every PromQL expression (rules and dashboard targets) is parsed by a PromQL parser; every
//! metric, label and label value it reads is looked up in the `/metrics` of a running `run`
//! (against the loopback API server and moto) and a running `webhook` (over TLS with a test
//! certificate); every `$labels.x` of an annotation and `{{x}}` of a legend is a label the
//! expression's result really carries. The component renders with `kubectl kustomize`, the
//! operator's PrometheusRule holds exactly the plain rule file's groups, and every runbook link
//! lands on a heading of docs/troubleshooting.md.

use std::collections::{BTreeMap, BTreeSet};

use promql_parser::label::MatchOp;
use promql_parser::parser::{self, Expr, LabelModifier, VectorMatchCardinality};
use serde_json::Value;

use crate::support::kubectl::kustomize;
use crate::support::manifests::{kind_of, kinds, relative_path, yaml_docs};
use crate::support::moto::ScratchDir;
use crate::support::repo_root;
use crate::support::scrape::{run_metrics, webhook_metrics};

const RULES: &str = "deploy/monitoring/prometheus-rules.yaml";
const OPERATOR_RULES: &str = "deploy/monitoring/prometheusrule.yaml";
const DASHBOARD: &str = "deploy/monitoring/dashboard.json";
const RUNBOOKS: &str = "docs/troubleshooting.md";
const MONITORING_DOC: &str = "docs/monitoring.md";
/// Where the rules' runbook links point (the docs as published; docs/monitoring.md says how to
/// point them elsewhere).
const RUNBOOK_BASE: &str =
    "https://git.example.com/kube-aws-iam-controller/blob/main/docs/troubleshooting.md#";
/// Regenerates the PrometheusRule from the plain rule file.
const REGENERATE: &str = "UPDATE_MONITORING=1 cargo test --test it monitoring::";

/// Labels a scrape adds to every series: Prometheus itself (`job`, `instance`) and the
/// Prometheus Operator's PodMonitor target labels.
const TARGET_LABELS: &[&str] = &[
    "job",
    "instance",
    "namespace",
    "pod",
    "container",
    "endpoint",
];
/// Series Prometheus makes itself, not the binary.
const BUILTIN_METRICS: &[&str] = &["up"];
/// What Grafana substitutes before a target's query reaches Prometheus.
const GRAFANA_VARIABLES: &[(&str, &str)] = &[
    ("$__rate_interval", "5m"),
    ("$__interval", "1m"),
    ("$__range", "1h"),
];
/// Metrics the alerts and the dashboard must read: without them a promised alert or panel is
/// missing.
const REQUIRED_IN_RULES: &[&str] = &[
    "kube_aws_iam_controller_failing_roles_earliest_expiry_seconds",
    "kube_aws_iam_controller_earliest_expiry_seconds",
    "kube_aws_iam_controller_roles",
    "kube_aws_iam_controller_passes_total",
    "kube_aws_iam_controller_last_success_timestamp_seconds",
    "kube_aws_iam_controller_leader",
    "kube_aws_iam_controller_own_credentials_expiry_timestamp_seconds",
    "kube_aws_iam_controller_sts_calls_total",
    "kube_aws_iam_controller_webhook_admission_requests_total",
    "kube_aws_iam_controller_webhook_admission_duration_seconds_bucket",
];
const REQUIRED_IN_DASHBOARD: &[&str] = &[
    "kube_aws_iam_controller_passes_total",
    "kube_aws_iam_controller_pass_duration_seconds_bucket",
    "kube_aws_iam_controller_actions_total",
    "kube_aws_iam_controller_sts_calls_total",
    "kube_aws_iam_controller_roles",
    "kube_aws_iam_controller_earliest_expiry_seconds",
    "kube_aws_iam_controller_failing_roles_earliest_expiry_seconds",
    "kube_aws_iam_controller_leader",
    "kube_aws_iam_controller_webhook_admission_requests_total",
    "kube_aws_iam_controller_webhook_admission_duration_seconds_bucket",
];

fn read(rel: &str) -> String {
    let path = repo_root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// The rules and the dashboard's queries
// ---------------------------------------------------------------------------------------------

/// One alerting rule of the plain rule file.
struct Rule {
    group: String,
    alert: String,
    expr: String,
    /// `for:` as written (absent: fires at once).
    for_: Option<String>,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

fn string_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

fn rule_groups() -> Value {
    let docs = yaml_docs(&read(RULES), RULES);
    assert_eq!(docs.len(), 1, "{RULES} is one YAML document");
    docs[0]["groups"].clone()
}

fn rules() -> Vec<Rule> {
    let mut rules = Vec::new();
    for group in rule_groups().as_array().expect("groups is a list") {
        let name = group["name"].as_str().expect("a group has a name");
        for rule in group["rules"].as_array().expect("a group has rules") {
            let alert = rule["alert"]
                .as_str()
                .unwrap_or_else(|| panic!("group {name}: every rule is an alert: {rule}"));
            rules.push(Rule {
                group: name.to_string(),
                alert: alert.to_string(),
                expr: rule["expr"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{alert}: expr is a string"))
                    .to_string(),
                for_: rule["for"].as_str().map(str::to_string),
                labels: string_map(&rule["labels"]),
                annotations: string_map(&rule["annotations"]),
            });
        }
    }
    rules
}

fn dashboard() -> Value {
    serde_json::from_str(&read(DASHBOARD)).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"))
}

/// The panels of the dashboard, those inside rows included.
fn panels(dashboard: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().expect("panels") {
        out.push(p.clone());
        out.extend(p["panels"].as_array().into_iter().flatten().cloned());
    }
    out
}

/// A PromQL query, where it comes from, and the labels its presentation reads from the result
/// (`$labels.x` in annotations, `{{x}}` in a legend).
struct Query {
    origin: String,
    expr: String,
    shown_labels: BTreeSet<String>,
}

/// `$labels.NAME` references of a Go template (Prometheus annotations).
fn template_labels(text: &str) -> BTreeSet<String> {
    text.split("$labels.")
        .skip(1)
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

/// `{{NAME}}` references of a Grafana legend format.
fn legend_labels(text: &str) -> BTreeSet<String> {
    text.split("{{")
        .skip(1)
        .filter_map(|rest| {
            rest.split_once("}}")
                .map(|(name, _)| name.trim().to_string())
        })
        .collect()
}

fn rule_queries() -> Vec<Query> {
    rules()
        .into_iter()
        .map(|r| Query {
            origin: format!("alert {}", r.alert),
            shown_labels: r
                .annotations
                .values()
                .flat_map(|a| template_labels(a))
                .collect(),
            expr: r.expr,
        })
        .collect()
}

fn dashboard_queries() -> Vec<Query> {
    let mut out = Vec::new();
    for panel in panels(&dashboard()) {
        let title = panel["title"].as_str().unwrap_or_default().to_string();
        for target in panel["targets"].as_array().into_iter().flatten() {
            let mut expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("panel {title:?}: a target without expr"))
                .to_string();
            for (variable, value) in GRAFANA_VARIABLES {
                expr = expr.replace(variable, value);
            }
            out.push(Query {
                origin: format!(
                    "panel {title:?} target {}",
                    target["refId"].as_str().unwrap_or("?")
                ),
                shown_labels: legend_labels(target["legendFormat"].as_str().unwrap_or_default()),
                expr,
            });
        }
    }
    out
}

fn all_queries() -> Vec<Query> {
    let mut q = rule_queries();
    q.extend(dashboard_queries());
    q
}

fn parse(query: &Query) -> Expr {
    parser::parse(&query.expr)
        .unwrap_or_else(|e| panic!("{}: {:?} does not parse: {e}", query.origin, query.expr))
}

// ---------------------------------------------------------------------------------------------
// What a query reads
// ---------------------------------------------------------------------------------------------

/// A label matcher of a selector: (label, operator, value).
type Matcher = (String, MatchOp, String);

#[derive(Default)]
struct Reads {
    /// Metric name → the matchers it is selected with (one entry per selector).
    selectors: Vec<(String, Vec<Matcher>)>,
    /// Labels named by `by`, `without`, `on`, `ignoring`, `group_left/right`.
    grouping: BTreeSet<String>,
}

fn label_list(m: &LabelModifier) -> Vec<String> {
    m.labels().labels.clone()
}

fn reads(expr: &Expr, out: &mut Reads) {
    match expr {
        Expr::VectorSelector(vs) => {
            let mut matchers: Vec<Matcher> = Vec::new();
            let mut name = vs.name.clone();
            let all = vs
                .matchers
                .matchers
                .iter()
                .chain(vs.matchers.or_matchers.iter().flatten());
            for m in all {
                if m.name == "__name__" {
                    if matches!(m.op, MatchOp::Equal) {
                        name = Some(m.value.clone());
                    }
                } else {
                    matchers.push((m.name.clone(), m.op.clone(), m.value.clone()));
                }
            }
            let name = name.unwrap_or_else(|| panic!("a selector without a metric name: {vs}"));
            out.selectors.push((name, matchers));
        }
        Expr::MatrixSelector(ms) => reads(&Expr::VectorSelector(ms.vs.clone()), out),
        Expr::Aggregate(a) => {
            if let Some(m) = &a.modifier {
                out.grouping.extend(label_list(m));
            }
            if let Some(p) = &a.param {
                reads(p, out);
            }
            reads(&a.expr, out);
        }
        Expr::Binary(b) => {
            if let Some(modifier) = &b.modifier {
                if let Some(m) = &modifier.matching {
                    out.grouping.extend(label_list(m));
                }
                if let Some(l) = modifier.card.labels() {
                    out.grouping.extend(l.labels.iter().cloned());
                }
            }
            reads(&b.lhs, out);
            reads(&b.rhs, out);
        }
        Expr::Unary(u) => reads(&u.expr, out),
        Expr::Paren(p) => reads(&p.expr, out),
        Expr::Subquery(s) => reads(&s.expr, out),
        Expr::Call(c) => {
            for arg in &c.args.args {
                reads(arg, out);
            }
        }
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

/// The label names of the result of `expr` (`None`: a scalar or a string), given the labels
/// each metric is exported with. A metric that is not exported carries the labels its
/// selector names, so one missing metric is reported once and not again for every label.
fn result_labels(expr: &Expr, exported: &Exported) -> Option<BTreeSet<String>> {
    let targets = || TARGET_LABELS.iter().map(|s| s.to_string());
    match expr {
        Expr::VectorSelector(vs) => {
            let name = vs.name.clone().unwrap_or_default();
            let mut labels: BTreeSet<String> = targets().collect();
            match exported.get(&name) {
                Some(found) => labels.extend(found.keys().cloned()),
                None => labels.extend(vs.matchers.matchers.iter().map(|m| m.name.clone())),
            }
            Some(labels)
        }
        Expr::MatrixSelector(ms) => result_labels(&Expr::VectorSelector(ms.vs.clone()), exported),
        Expr::Aggregate(a) => {
            let inner = result_labels(&a.expr, exported).unwrap_or_default();
            Some(match &a.modifier {
                Some(LabelModifier::Include(l)) => l.labels.iter().cloned().collect(),
                Some(LabelModifier::Exclude(l)) => inner
                    .into_iter()
                    .filter(|x| !l.labels.contains(x))
                    .collect(),
                None => BTreeSet::new(),
            })
        }
        Expr::Binary(b) => {
            let lhs = result_labels(&b.lhs, exported);
            let rhs = result_labels(&b.rhs, exported);
            let (lhs, rhs) = match (lhs, rhs) {
                (None, None) => return None,
                (Some(l), None) => return Some(l),
                (None, Some(r)) => return Some(r),
                (Some(l), Some(r)) => (l, r),
            };
            let Some(modifier) = &b.modifier else {
                return Some(lhs);
            };
            match &modifier.card {
                // and, or, unless: the left side's series as they are.
                VectorMatchCardinality::ManyToMany => Some(lhs),
                VectorMatchCardinality::OneToOne => Some(match &modifier.matching {
                    // One-to-one matching on(...) keeps only the matched labels.
                    Some(LabelModifier::Include(on)) => on.labels.iter().cloned().collect(),
                    Some(LabelModifier::Exclude(ignoring)) => lhs
                        .into_iter()
                        .filter(|x| !ignoring.labels.contains(x))
                        .collect(),
                    None => lhs,
                }),
                VectorMatchCardinality::ManyToOne(extra) => {
                    let mut l = lhs;
                    l.extend(extra.labels.iter().cloned());
                    Some(l)
                }
                VectorMatchCardinality::OneToMany(extra) => {
                    let mut r = rhs;
                    r.extend(extra.labels.iter().cloned());
                    Some(r)
                }
            }
        }
        Expr::Unary(u) => result_labels(&u.expr, exported),
        Expr::Paren(p) => result_labels(&p.expr, exported),
        Expr::Subquery(s) => result_labels(&s.expr, exported),
        Expr::Call(c) => match c.func.name {
            "time" | "scalar" | "pi" => None,
            // absent() returns one series with the labels of its equality matchers.
            "absent" | "absent_over_time" => Some(BTreeSet::new()),
            "histogram_quantile" => {
                let mut inner = result_labels(c.args.args.last()?, exported)?;
                inner.remove("le");
                Some(inner)
            }
            // vector(), and whatever function of one vector argument keeps its labels.
            _ => c
                .args
                .args
                .iter()
                .find_map(|a| result_labels(a, exported))
                .or_else(|| (c.func.name == "vector").then(BTreeSet::new)),
        },
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => None,
    }
}

// ---------------------------------------------------------------------------------------------
// What the binary exports
// ---------------------------------------------------------------------------------------------

/// Series name → label name → the values seen.
type Exported = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

/// Reads a Prometheus / OpenMetrics text exposition.
fn parse_exposition(body: &str, into: &mut Exported) {
    for line in body.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line
            .find(|c: char| c == '{' || c.is_whitespace())
            .unwrap_or(line.len());
        let name = &line[..name_end];
        let labels = into.entry(name.to_string()).or_default();
        let Some(rest) = line[name_end..].strip_prefix('{') else {
            continue;
        };
        // label="value",label="value"} sample: values may hold escaped quotes.
        let mut chars = rest.chars().peekable();
        loop {
            let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
            let key = key.trim_start_matches(',').trim().to_string();
            if key.is_empty() || key.starts_with('}') {
                break;
            }
            assert_eq!(chars.next(), Some('"'), "label value quoted in {line:?}");
            let mut value = String::new();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
            labels.entry(key).or_default().insert(value);
            if chars.peek() == Some(&'}') {
                break;
            }
        }
    }
}

/// Whether a metric of `exported` carries `label` (or every scrape adds it).
fn known_label(exported: &Exported, metric: &str, label: &str) -> bool {
    TARGET_LABELS.contains(&label)
        || exported
            .get(metric)
            .is_some_and(|labels| labels.contains_key(label))
}

/// The values an equality or simple alternation matcher asks for (`None` when the matcher is
/// a real pattern or a negation, whose values cannot be listed).
fn literal_values(op: &MatchOp, value: &str) -> Option<Vec<String>> {
    match op {
        MatchOp::Equal => Some(vec![value.to_string()]),
        MatchOp::Re(_)
            if value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '|') =>
        {
            Some(value.split('|').map(str::to_string).collect())
        }
        _ => None,
    }
}

/// Every way `queries` read something the scrape does not have.
fn unexported(queries: &[Query], exported: &Exported) -> Vec<String> {
    let mut problems = Vec::new();
    for q in queries {
        let expr = parse(q);
        let mut r = Reads::default();
        reads(&expr, &mut r);
        let mut read_labels: BTreeSet<String> =
            TARGET_LABELS.iter().map(|s| s.to_string()).collect();
        for (metric, matchers) in &r.selectors {
            if BUILTIN_METRICS.contains(&metric.as_str()) {
                continue;
            }
            let Some(labels) = exported.get(metric) else {
                problems.push(format!("{}: metric {metric} is not exported", q.origin));
                continue;
            };
            read_labels.extend(labels.keys().cloned());
            for (label, op, value) in matchers {
                if !known_label(exported, metric, label) {
                    problems.push(format!("{}: {metric} has no label {label:?}", q.origin));
                    continue;
                }
                let Some(values) = labels.get(label) else {
                    continue; // a target label: its values are the cluster's
                };
                for v in literal_values(op, value).into_iter().flatten() {
                    if !values.contains(&v) {
                        problems.push(format!(
                            "{}: {metric}{{{label}={v:?}}} is never exported (values: {values:?})",
                            q.origin
                        ));
                    }
                }
            }
        }
        for label in &r.grouping {
            if !read_labels.contains(label) {
                problems.push(format!(
                    "{}: groups or matches by {label:?}, which none of its metrics carries",
                    q.origin
                ));
            }
        }
        let result = result_labels(&expr, exported).unwrap_or_default();
        for label in &q.shown_labels {
            if !result.contains(label) {
                problems.push(format!(
                    "{}: shows label {label:?}, which its result does not carry (it has {result:?})",
                    q.origin
                ));
            }
        }
    }
    problems
}

// ---------------------------------------------------------------------------------------------
// Parsing and documentation (no process)
// ---------------------------------------------------------------------------------------------

#[test]
fn every_rule_and_dashboard_query_parses_as_promql() {
    let rules = rule_queries();
    let panels = dashboard_queries();
    assert!(rules.len() >= 14, "{} alerts in {RULES}", rules.len());
    assert!(
        panels.len() >= 15,
        "{} targets in {DASHBOARD}",
        panels.len()
    );
    let mut failures = Vec::new();
    let mut read_by_rules = BTreeSet::new();
    let mut read_by_dashboard = BTreeSet::new();
    for (queries, seen) in [
        (&rules, &mut read_by_rules),
        (&panels, &mut read_by_dashboard),
    ] {
        for q in queries.iter() {
            match parser::parse(&q.expr) {
                Ok(expr) => {
                    let mut r = Reads::default();
                    reads(&expr, &mut r);
                    seen.extend(r.selectors.into_iter().map(|(name, _)| name));
                }
                Err(e) => failures.push(format!("{}: {e}\n  {}", q.origin, q.expr)),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    for metric in REQUIRED_IN_RULES {
        assert!(read_by_rules.contains(*metric), "no alert reads {metric}");
    }
    for metric in REQUIRED_IN_DASHBOARD {
        assert!(
            read_by_dashboard.contains(*metric),
            "no dashboard panel reads {metric}"
        );
    }
}

/// The parser is not lenient: a broken expression fails, so the test above can fail.
#[test]
fn the_promql_parser_rejects_what_prometheus_rejects() {
    for bad in [
        "sum by (job (rate(x[5m]))",
        "rate(x)",
        "x{a=\"b\"",
        "histogram_quantile(0.99)",
    ] {
        assert!(parser::parse(bad).is_err(), "{bad:?} parsed");
    }
}

/// GitHub's anchor of a Markdown heading.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn anchors(markdown: &str) -> BTreeSet<String> {
    markdown
        .lines()
        .filter_map(|l| {
            let hashes = l.chars().take_while(|c| *c == '#').count();
            (hashes > 0 && l[hashes..].starts_with(' ')).then(|| anchor(&l[hashes..]))
        })
        .collect()
}

/// Anchored links of the monitoring doc and the runbooks land on a heading of their page.
#[test]
fn anchored_links_of_the_monitoring_docs_resolve() {
    let mut broken = Vec::new();
    for page in [MONITORING_DOC, RUNBOOKS] {
        let body = read(page);
        let mut rest = body.as_str();
        while let Some(i) = rest.find("](") {
            rest = &rest[i + 2..];
            let Some(end) = rest.find(')') else { break };
            let target = &rest[..end];
            rest = &rest[end..];
            let Some((file, section)) = target.split_once('#') else {
                continue;
            };
            if target.contains("://") {
                continue;
            }
            let linked = if file.is_empty() {
                page.to_string()
            } else {
                format!("docs/{file}")
            };
            if !anchors(&read(&linked)).contains(section) {
                broken.push(format!("{page}: {target}"));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "links to missing headings:\n{}",
        broken.join("\n")
    );
}

#[test]
fn every_alert_has_a_severity_a_description_and_a_runbook_that_exists() {
    let runbooks = anchors(&read(RUNBOOKS));
    let doc = read(MONITORING_DOC);
    let mut names = BTreeSet::new();
    for rule in rules() {
        let a = &rule.alert;
        assert!(names.insert(a.clone()), "alert {a} defined twice");
        assert!(
            a.starts_with("KubeAwsIamController"),
            "{a}: alert names start with KubeAwsIamController"
        );
        if let Some(f) = &rule.for_ {
            let (n, unit) = f.split_at(f.len() - 1);
            assert!(
                n.parse::<u32>().is_ok() && matches!(unit, "s" | "m" | "h"),
                "{a}: `for: {f}` is no Prometheus duration"
            );
        }
        for (key, text) in &rule.annotations {
            assert_eq!(
                text.matches("{{").count(),
                text.matches("}}").count(),
                "{a}: unbalanced template in {key}: {text}"
            );
        }
        let severity = rule.labels.get("severity").map(String::as_str);
        assert!(
            matches!(severity, Some("critical" | "warning" | "info")),
            "{a} ({}): severity label is {severity:?}",
            rule.group
        );
        for key in ["summary", "description"] {
            let text = rule.annotations.get(key).map(String::as_str).unwrap_or("");
            assert!(text.len() > 20, "{a}: annotation {key} is {text:?}");
        }
        let url = rule
            .annotations
            .get("runbook_url")
            .cloned()
            .unwrap_or_default();
        let section = url.strip_prefix(RUNBOOK_BASE).unwrap_or_else(|| {
            panic!("{a}: runbook_url {url:?} does not start with {RUNBOOK_BASE}")
        });
        assert!(
            runbooks.contains(section),
            "{a}: runbook_url's anchor #{section} is no heading of {RUNBOOKS}"
        );
        assert_eq!(
            section,
            a.to_lowercase(),
            "{a}: the runbook section is named after the alert"
        );
        assert!(
            doc.contains(&format!("troubleshooting.md#{section}")),
            "{MONITORING_DOC} does not link the runbook of {a}"
        );
        assert!(
            doc.contains(&format!("`{a}`")),
            "{MONITORING_DOC} does not describe {a}"
        );
    }
    // Nothing documented that no longer exists.
    for line in read(RUNBOOKS).lines() {
        if let Some(heading) = line.strip_prefix("### KubeAwsIamController") {
            let alert = format!("KubeAwsIamController{}", heading.trim());
            assert!(
                names.contains(&alert),
                "{RUNBOOKS} has a runbook for unknown {alert}"
            );
        }
    }
}

#[test]
fn the_dashboard_uses_a_datasource_variable_and_every_panel_is_documented() {
    let d = dashboard();
    assert_eq!(d["uid"], "kube-aws-iam-controller");
    let variables = d["templating"]["list"].as_array().expect("templating");
    assert!(
        variables.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "a `datasource` variable of type datasource/prometheus: {variables:?}"
    );
    let doc = read(MONITORING_DOC);
    let mut ids = BTreeSet::new();
    for panel in panels(&d) {
        let title = panel["title"].as_str().expect("every panel has a title");
        assert!(
            ids.insert(panel["id"].as_i64()),
            "panel id of {title:?} repeated"
        );
        assert!(
            doc.contains(&format!("**{title}**")),
            "{MONITORING_DOC} does not describe panel {title:?}"
        );
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "panel {title:?} reads the datasource variable"
        );
        let targets = panel["targets"].as_array().expect("a panel has targets");
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The two rule files
// ---------------------------------------------------------------------------------------------

/// The PrometheusRule as generated from the plain rule file: its `groups:` block under `spec:`.
fn operator_rules_from(plain: &str) -> String {
    let start = plain
        .find("\ngroups:\n")
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("{RULES} has a top-level `groups:`"));
    let mut out = String::from(
        "# Generated from prometheus-rules.yaml (the same groups as a Prometheus Operator resource): edit\n\
         # that file, then run `UPDATE_MONITORING=1 cargo test --test it monitoring::` to rewrite this one.\n\
         apiVersion: monitoring.coreos.com/v1\n\
         kind: PrometheusRule\n\
         metadata:\n  name: kube-aws-iam-controller\n  namespace: kube-system\n  labels:\n    \
         app.kubernetes.io/name: kube-aws-iam-controller\n\
         spec:\n",
    );
    for line in plain[start..].split_inclusive('\n') {
        if !line.trim().is_empty() {
            out.push_str("  ");
        }
        out.push_str(line);
    }
    out
}

#[test]
fn the_prometheus_rule_holds_the_plain_rule_files_groups() {
    let expected = operator_rules_from(&read(RULES));
    let path = repo_root().join(OPERATOR_RULES);
    if std::env::var_os("UPDATE_MONITORING").is_some_and(|v| v == "1") {
        std::fs::write(&path, &expected).unwrap();
    }
    let committed = read(OPERATOR_RULES);
    assert!(
        committed == expected,
        "{OPERATOR_RULES} differs from {RULES}: run `{REGENERATE}`"
    );
    // And, read as YAML, the same groups.
    let docs = yaml_docs(&committed, OPERATOR_RULES);
    assert_eq!(docs.len(), 1);
    assert_eq!(kind_of(&docs[0]), "PrometheusRule");
    assert_eq!(docs[0]["spec"]["groups"], rule_groups());
}

// ---------------------------------------------------------------------------------------------
// The component renders
// ---------------------------------------------------------------------------------------------

/// `kubectl kustomize` of a kustomization using deploy/ with the given components.
fn render(components: &[&str]) -> Vec<Value> {
    let dir = ScratchDir::new("monitoring-kustomize");
    let rel = |p: &str| {
        relative_path(dir.path(), &repo_root().join(p))
            .display()
            .to_string()
    };
    let mut k = format!(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - {}\ncomponents:\n",
        rel("deploy")
    );
    for c in components {
        k.push_str(&format!("  - {}\n", rel(c)));
    }
    std::fs::write(dir.path().join("kustomization.yaml"), k).unwrap();
    kustomize(dir.path())
}

fn named<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| kind_of(d) == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} rendered; kinds: {:?}", kinds(docs)))
}

/// The PodMonitor `name` selects the pods of Deployment `deployment` and scrapes a port they
/// declare; returns that endpoint.
fn monitor_matches(docs: &[Value], name: &str, deployment: &str) -> Value {
    let monitor = named(docs, "PodMonitor", name);
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    let d = named(docs, "Deployment", deployment);
    let template = &d["spec"]["template"];
    assert_eq!(
        monitor["metadata"]["namespace"], d["metadata"]["namespace"],
        "{name} lives beside its pods"
    );
    for (k, v) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(
            &template["metadata"]["labels"][k], v,
            "{name} selects {deployment}'s pods by {k}"
        );
    }
    let job_label = monitor["spec"]["jobLabel"].as_str().unwrap();
    assert!(template["metadata"]["labels"][job_label].is_string());
    let endpoints = monitor["spec"]["podMetricsEndpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 1, "{name}: one endpoint");
    let endpoint = endpoints[0].clone();
    assert_eq!(endpoint["path"], "/metrics");
    let port = endpoint["port"].as_str().unwrap();
    let declared = template["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
        .any(|p| p["name"] == port);
    assert!(
        declared,
        "{name} scrapes port {port:?}, which {deployment} does not declare"
    );
    endpoint
}

#[test]
fn the_component_renders_monitors_rules_and_the_dashboard() {
    let docs = render(&["deploy/monitoring"]);
    let found = kinds(&docs);
    for kind in ["PodMonitor", "PrometheusRule", "ConfigMap", "Deployment"] {
        assert!(found.contains(kind), "no {kind} rendered: {found:?}");
    }

    // The controller's PodMonitor scrapes --health-addr's port (8080, `http`).
    let endpoint = monitor_matches(&docs, "kube-aws-iam-controller", "kube-aws-iam-controller");
    assert_eq!(endpoint["port"], "http");
    let controller = named(&docs, "Deployment", "kube-aws-iam-controller");
    let container = &controller["spec"]["template"]["spec"]["containers"][0];
    assert!(
        !container["args"].to_string().contains("--health-addr"),
        "the Deployment keeps the default --health-addr"
    );
    let ports = &container["ports"];
    assert_eq!(ports[0]["name"], "http");
    assert_eq!(
        ports[0]["containerPort"], 8080,
        "--health-addr defaults to :8080"
    );

    let rule = named(&docs, "PrometheusRule", "kube-aws-iam-controller");
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rule["metadata"]["namespace"], "kube-system");
    assert_eq!(rule["spec"]["groups"], rule_groups());

    let dashboards: Vec<&Value> = docs
        .iter()
        .filter(|d| {
            kind_of(d) == "ConfigMap" && d["metadata"]["labels"]["grafana_dashboard"] == "1"
        })
        .collect();
    assert_eq!(
        dashboards.len(),
        1,
        "one ConfigMap labelled grafana_dashboard: \"1\""
    );
    let cm = dashboards[0];
    assert_eq!(
        cm["metadata"]["name"], "kube-aws-iam-controller-dashboard",
        "a stable name, without kustomize's hash suffix"
    );
    let data = cm["data"].as_object().unwrap();
    assert_eq!(data.len(), 1);
    let (key, json) = data.iter().next().unwrap();
    assert!(key.ends_with(".json"), "{key}");
    assert_eq!(json.as_str().unwrap(), read(DASHBOARD));

    // With the webhook component too, the webhook's PodMonitor scrapes its TLS port and checks
    // the certificate cert-manager issues against its CA.
    let docs = render(&["deploy/webhook", "deploy/monitoring"]);
    let endpoint = monitor_matches(
        &docs,
        "kube-aws-iam-controller-webhook",
        "kube-aws-iam-controller-webhook",
    );
    assert_eq!(endpoint["scheme"], "https");
    let certificate = named(&docs, "Certificate", "kube-aws-iam-controller-webhook");
    let names: Vec<&str> = certificate["spec"]["dnsNames"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let tls = &endpoint["tlsConfig"];
    assert!(
        names.contains(&tls["serverName"].as_str().unwrap()),
        "serverName {} is one of the certificate's names {names:?}",
        tls["serverName"]
    );
    assert_eq!(
        tls["ca"]["secret"]["name"],
        certificate["spec"]["secretName"]
    );
    assert_eq!(tls["ca"]["secret"]["key"], "ca.crt");
}

// ---------------------------------------------------------------------------------------------
// Against the real processes
// ---------------------------------------------------------------------------------------------

/// Every metric, label and label value the rules and the dashboard read is exported by the
/// binary's `run` or `webhook`, and every label an annotation or legend shows is carried by
/// its query's result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_and_label_the_rules_and_dashboard_read_is_exported() {
    let controller = run_metrics("monitoring-run").await;
    let webhook = webhook_metrics("monitoring-webhook").await;
    let mut exported = Exported::new();
    parse_exposition(&controller, &mut exported);
    let controller_metrics = exported.len();
    parse_exposition(&webhook, &mut exported);
    assert!(
        controller_metrics > 10 && exported.len() > controller_metrics + 3,
        "the scrapes hold the controller's and the webhook's series: {:?}",
        exported.keys().collect::<Vec<_>>()
    );
    // The scrape parser reads labels and their values.
    assert!(
        exported["kube_aws_iam_controller_sts_calls_total"]["result"].contains("throttled"),
        "{controller}"
    );

    let problems = unexported(&all_queries(), &exported);
    assert!(
        problems.is_empty(),
        "the rules or the dashboard read what the binary does not export:\n{}\n\ncontroller:\n{controller}\nwebhook:\n{webhook}",
        problems.join("\n")
    );
}

/// The comparison above finds what it should: a misspelt metric, label or value, a grouping
/// label no metric has, and a legend label the aggregation dropped.
#[test]
fn the_export_check_catches_wrong_names() {
    let mut exported = Exported::new();
    parse_exposition(
        "# TYPE m counter\nm_total{result=\"ok\"} 1\nm_total{result=\"a\\\"b\"} 2\ng 3\n# EOF\n",
        &mut exported,
    );
    assert_eq!(
        exported["m_total"]["result"],
        BTreeSet::from(["ok".to_string(), "a\"b".to_string()])
    );
    let query = |expr: &str, shown: &[&str]| Query {
        origin: expr.to_string(),
        expr: expr.to_string(),
        shown_labels: shown.iter().map(|s| s.to_string()).collect(),
    };
    let good = [
        query(
            "sum by (result, job) (rate(m_total{result=~\"ok|a\\\"b\"}[5m]))",
            &["result"],
        ),
        query(
            "g > 0 and on(job, instance) m_total{result=\"ok\"}",
            &["instance"],
        ),
        query("absent(g)", &[]),
    ];
    let problems = unexported(&good, &exported);
    assert!(problems.is_empty(), "{problems:?}");
    for (bad, what) in [
        (query("rate(m_totl[5m])", &[]), "not exported"),
        (query("m_total{reslt=\"ok\"}", &[]), "no label"),
        (query("m_total{result=\"okay\"}", &[]), "never exported"),
        (query("m_total{result=~\"ok|nope\"}", &[]), "never exported"),
        (query("sum by (state) (g)", &[]), "none of its metrics"),
        (
            query("sum by (job) (m_total)", &["result"]),
            "does not carry",
        ),
        (query("m_total / on(job) g", &["result"]), "does not carry"),
    ] {
        let problems = unexported(std::slice::from_ref(&bad), &exported);
        assert!(
            problems.iter().any(|p| p.contains(what)),
            "{}: expected a problem containing {what:?}, got {problems:?}",
            bad.expr
        );
    }
}
