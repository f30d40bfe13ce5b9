//! Which roles a namespace may obtain: the controller-wide `--allowed-role-pattern` globs and,
//! with `--namespace-restrictions`, the namespace annotation kube2iam uses.

use std::collections::BTreeMap;

use crate::domain::arn::{BaseArn, glob_match};
use crate::domain::text::excerpt;

/// JSON array of globs, each a role name or ARN pattern (kube2iam's annotation).
pub const ALLOWED_ROLES_ANNOTATION: &str = "iam.amazonaws.com/allowed-roles";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// Only roles allowed by the namespace annotation may be used.
    pub namespace_restrictions: bool,
    /// Every role must match one of these (when any are given), in every namespace.
    pub allowed_role_patterns: Vec<String>,
}

/// A namespace's allowed patterns, already resolved to ARN globs, or why it allows nothing.
pub type NamespaceRules = Result<Vec<String>, NotPermitted>;

/// Why a namespace may not use a role (the role is then blocked, or its Secret deleted).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotPermitted(pub String);

/// Resolves a pattern like a roleReference: a bare name (or name glob) gets the base ARN.
fn resolve_pattern(pattern: &str, base: Option<&BaseArn>) -> Option<String> {
    if pattern.starts_with("arn:") {
        Some(pattern.to_string())
    } else {
        base.map(|b| format!("{b}{pattern}"))
    }
}

/// Reads a namespace's annotation. `annotations` is `None` when the namespace was not seen.
pub fn namespace_rules(
    namespace: &str,
    annotations: Option<&BTreeMap<String, String>>,
    base: Option<&BaseArn>,
) -> NamespaceRules {
    let Some(raw) = annotations.and_then(|a| a.get(ALLOWED_ROLES_ANNOTATION)) else {
        return Err(NotPermitted(format!(
            "namespace {namespace:?} has no {ALLOWED_ROLES_ANNOTATION} annotation, so it may use no role"
        )));
    };
    let patterns: Vec<String> = serde_json::from_str(raw).map_err(|_| {
        NotPermitted(format!(
            "namespace {namespace:?}: annotation {ALLOWED_ROLES_ANNOTATION} is not a JSON array of strings: {}",
            excerpt(raw)
        ))
    })?;
    if patterns.is_empty() {
        return Err(NotPermitted(format!(
            "namespace {namespace:?}: annotation {ALLOWED_ROLES_ANNOTATION} is an empty list, so it may use no role"
        )));
    }
    Ok(patterns
        .iter()
        .filter_map(|p| resolve_pattern(p, base))
        .collect())
}

impl Policy {
    /// `Ok` when `namespace` may obtain `arn`; otherwise why not. `rules` (the namespace's, from
    /// [`namespace_rules`]) is only consulted with namespace restrictions on.
    pub fn check(
        &self,
        namespace: &str,
        arn: &str,
        rules: Option<&NamespaceRules>,
        base: Option<&BaseArn>,
    ) -> Result<(), NotPermitted> {
        if !self.allowed_role_patterns.is_empty()
            && !self
                .allowed_role_patterns
                .iter()
                .filter_map(|p| resolve_pattern(p, base))
                .any(|p| glob_match(&p, arn))
        {
            return Err(NotPermitted(format!(
                "{arn} matches no --allowed-role-pattern of this controller"
            )));
        }
        if self.namespace_restrictions {
            let patterns = match rules {
                Some(Ok(patterns)) => patterns,
                Some(Err(why)) => return Err(why.clone()),
                None => {
                    return Err(NotPermitted(format!(
                        "namespace {namespace:?} was not observed"
                    )));
                }
            };
            if !patterns.iter().any(|p| glob_match(p, arn)) {
                return Err(NotPermitted(format!(
                    "{arn} is not allowed in namespace {namespace:?} (annotation {ALLOWED_ROLES_ANNOTATION})"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::arn::RoleArn;

    #[test]
    fn namespace_annotation_rules() {
        let base: BaseArn = "arn:aws:iam::123456789012:role/".parse().unwrap();
        let policy = Policy {
            namespace_restrictions: true,
            allowed_role_patterns: vec![],
        };
        let arn: RoleArn = "arn:aws:iam::123456789012:role/team-a/reader"
            .parse()
            .unwrap();
        let ann = |v: &str| BTreeMap::from([(ALLOWED_ROLES_ANNOTATION.to_string(), v.to_string())]);
        let check = |a: Option<BTreeMap<String, String>>| {
            let rules = namespace_rules("ns", a.as_ref(), Some(&base));
            policy.check("ns", &arn.to_string(), Some(&rules), Some(&base))
        };
        assert!(check(Some(ann(r#"["team-a/*"]"#))).is_ok());
        assert!(
            check(Some(ann(
                r#"["arn:aws:iam::123456789012:role/team-a/reader"]"#
            )))
            .is_ok()
        );
        assert!(check(Some(ann(r#"["team-b/*"]"#))).is_err());
        assert!(check(Some(ann("[]"))).unwrap_err().0.contains("empty list"));
        assert!(
            check(Some(ann("not json")))
                .unwrap_err()
                .0
                .contains("not a JSON array")
        );
        assert!(
            check(None)
                .unwrap_err()
                .0
                .contains("no iam.amazonaws.com/allowed-roles")
        );
    }

    #[test]
    fn controller_wide_patterns_apply_without_restrictions() {
        let policy = Policy {
            namespace_restrictions: false,
            allowed_role_patterns: vec!["arn:aws:iam::123456789012:role/*".into()],
        };
        let ok: RoleArn = "arn:aws:iam::123456789012:role/x".parse().unwrap();
        let other: RoleArn = "arn:aws:iam::999999999999:role/x".parse().unwrap();
        assert!(policy.check("ns", &ok.to_string(), None, None).is_ok());
        assert!(policy.check("ns", &other.to_string(), None, None).is_err());
    }
}
