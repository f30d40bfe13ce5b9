//! Renderings of a plan: a terraform-like `text` summary, a `diff` of every object before and
//! after, and `json` for scripts. Credential values are never rendered: Secret data goes
//! through [`secret::view`], which redacts them.

use std::fmt::Write as _;

use serde::Serialize;
use similar::TextDiff;

use super::{Action, ActionKind, Op, Plan, READY, Summary};
use crate::domain::crd::AWSIAMRoleStatus;
use crate::domain::model::ObservedSecret;
use crate::domain::secret::{self, Credentials};

/// `--output`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OutputFormat {
    #[default]
    Text,
    Diff,
    Json,
}

/// Renders `plan` in `format`. `verbose` also lists the up-to-date roles (text and diff; JSON
/// always lists every action).
pub fn render(plan: &Plan<'_>, format: OutputFormat, verbose: bool) -> String {
    match format {
        OutputFormat::Text => text(plan, verbose),
        OutputFormat::Diff => diff(plan, verbose),
        OutputFormat::Json => json(plan),
    }
}

fn shown(action: &Action<'_>, verbose: bool) -> bool {
    verbose || action.kind() != ActionKind::Skip
}

/// Control characters escaped, so hostile names cannot forge plan lines.
fn clean(s: &str) -> String {
    if s.chars().any(char::is_control) {
        s.chars().flat_map(char::escape_default).collect()
    } else {
        s.to_string()
    }
}

fn line(a: &Action<'_>) -> String {
    let kind = a.kind();
    format!(
        "{} {:<13} {}/{} ({}): {}",
        kind.symbol(),
        kind.as_str(),
        clean(a.namespace),
        clean(a.name),
        a.reason(),
        clean(&a.message)
    )
}

/// `Plan: 1 to create, …` (the last line of `text` and `diff`).
pub fn summary_line(s: &Summary) -> String {
    s.line()
}

/// One line per action, then the counts.
pub fn text(plan: &Plan<'_>, verbose: bool) -> String {
    let mut out = String::new();
    for a in plan.actions.iter().filter(|a| shown(a, verbose)) {
        out.push_str(&line(a));
        out.push('\n');
    }
    out.push_str(&summary_line(&plan.summary()));
    out.push('\n');
    out
}

/// Each action's line followed by a unified diff of its Secret and status.
pub fn diff(plan: &Plan<'_>, verbose: bool) -> String {
    let mut out = String::new();
    for a in plan.actions.iter().filter(|a| shown(a, verbose)) {
        out.push_str(&line(a));
        out.push('\n');
        let (before, after) = (before(a), after(a, plan.now));
        if before == after {
            out.push_str("  (no change)\n");
            continue;
        }
        let label = format!("{}/{}", clean(a.namespace), clean(a.name));
        let _ = write!(
            out,
            "{}",
            TextDiff::from_lines(&before, &after)
                .unified_diff()
                .context_radius(64)
                .header(
                    &format!("{label} (observed)"),
                    &format!("{label} (planned)")
                )
        );
    }
    out.push_str(&summary_line(&plan.summary()));
    out.push('\n');
    out
}

fn before(a: &Action<'_>) -> String {
    let mut out = a.secret().map(secret::view).unwrap_or_default();
    if let Some(role) = a.role() {
        out.push_str(&status_view(role.status.as_ref()));
    }
    out
}

fn after(a: &Action<'_>, now: jiff::Timestamp) -> String {
    let mut out = match &a.op {
        Op::Delete { .. } => String::new(),
        Op::Create(issue) | Op::Refresh { issue, .. } => {
            let placeholder = Credentials {
                access_key_id: "<redacted>".into(),
                secret_access_key: "<redacted>".into(),
                session_token: "<redacted>".into(),
                expiration: now
                    .checked_add(jiff::SignedDuration::from_secs(issue.request.duration))
                    .unwrap_or(now),
            };
            let arn = issue.request.role_arn.to_string();
            let built = secret::build(issue.role, &arn, &placeholder, now);
            secret::view(&ObservedSecret::from_secret(&built))
        }
        _ => a.secret().map(secret::view).unwrap_or_default(),
    };
    if let Some(role) = a.role() {
        out.push_str(&status_view(a.status().or(role.status.as_ref())));
    }
    out
}

fn status_view(status: Option<&AWSIAMRoleStatus>) -> String {
    let mut out = String::from("status:\n");
    let Some(s) = status else {
        return out;
    };
    if let Some(g) = s.observed_generation {
        let _ = writeln!(out, "  observedGeneration: {g}");
    }
    if let Some(arn) = &s.role_arn {
        let _ = writeln!(out, "  roleARN: {}", clean(arn));
    }
    if let Some(exp) = &s.expiration {
        let _ = writeln!(out, "  expiration: {}", clean(exp));
    }
    for c in s.conditions.iter().filter(|c| c.type_ == READY) {
        let _ = writeln!(
            out,
            "  condition {}: {} ({}) {}",
            clean(&c.type_),
            clean(&c.status),
            clean(&c.reason),
            clean(&c.message)
        );
    }
    if let Some(n) = s.failed_attempts {
        let _ = writeln!(out, "  failedAttempts: {n}");
    }
    if let Some(t) = &s.retry_after {
        let _ = writeln!(out, "  retryAfter: {}", clean(t));
    }
    out
}

#[derive(Serialize)]
struct JsonPlan<'a> {
    actions: Vec<JsonAction<'a>>,
    summary: Summary,
}

#[derive(Serialize)]
struct JsonAction<'a> {
    action: &'static str,
    namespace: &'a str,
    name: &'a str,
    reason: &'static str,
    #[serde(rename = "roleArn")]
    role_arn: Option<&'a str>,
    message: &'a str,
}

/// The documented JSON schema: every action (skips included) and the summary.
pub fn json(plan: &Plan<'_>) -> String {
    let doc = JsonPlan {
        actions: plan
            .actions
            .iter()
            .map(|a| JsonAction {
                action: a.kind().as_str(),
                namespace: a.namespace,
                name: a.name,
                reason: a.reason().as_str(),
                role_arn: a.role_arn.as_deref(),
                message: &a.message,
            })
            .collect(),
        summary: plan.summary(),
    };
    // A tree of strings and integers always serialises.
    let mut out = serde_json::to_string_pretty(&doc).unwrap_or_default();
    out.push('\n');
    out
}
