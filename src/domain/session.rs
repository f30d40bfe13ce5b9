//! What the controller tells STS about who a session is for, so CloudTrail and trust policies
//! can tell AWSIAMRoles apart: session tags, the source identity and an external ID.
//!
//! Everything is validated against STS's constraints before any call: the format at start-up,
//! and each role's expanded values when it is planned.

use crate::domain::arn::is_iam_char;

/// Session tag keys (the names EKS Pod Identity uses for the same facts).
pub const TAG_NAMESPACE: &str = "kubernetes-namespace";
pub const TAG_AWSIAMROLE: &str = "kubernetes-awsiamrole";
pub const TAG_CLUSTER: &str = "kubernetes-cluster";

/// STS limits (AssumeRole API reference).
const EXTERNAL_ID_MIN: usize = 2;
const EXTERNAL_ID_MAX: usize = 1224;
const TAG_VALUE_MAX: usize = 256;

/// `--session-tags`, `--source-identity`, `--external-id-format`, `--cluster-name`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionOptions {
    pub tags: bool,
    pub source_identity: bool,
    pub external_id_format: Option<String>,
    pub cluster_name: Option<String>,
}

/// The optional AssumeRole parameters for one AWSIAMRole.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionExtras {
    pub tags: Vec<(String, String)>,
    pub source_identity: Option<String>,
    pub external_id: Option<String>,
}

/// Characters STS allows in an external ID: `[\w+=,.@:/-]`.
fn is_external_id_char(c: char) -> bool {
    is_iam_char(c) || matches!(c, ':' | '/')
}

/// Characters STS allows in a tag value: letters, digits, spaces and `_.:/=+-@`.
fn is_tag_char(c: char) -> bool {
    c.is_alphanumeric()
        || (c.is_whitespace() && !c.is_control())
        || matches!(c, '_' | '.' | ':' | '/' | '=' | '+' | '-' | '@')
}

impl SessionOptions {
    /// Checks the configuration as a whole; `Err` is a configuration error (exit 2).
    pub fn validate(&self) -> Result<(), String> {
        if let Some(cluster) = &self.cluster_name {
            if cluster.is_empty() || cluster.chars().count() > TAG_VALUE_MAX {
                return Err(format!(
                    "--cluster-name must have 1 to {TAG_VALUE_MAX} characters"
                ));
            }
            if self.tags
                && let Some(c) = cluster.chars().find(|&c| !is_tag_char(c))
            {
                return Err(format!(
                    "--cluster-name contains {c:?}, which a session tag value cannot hold"
                ));
            }
        }
        let Some(format) = &self.external_id_format else {
            return Ok(());
        };
        let mut rest = format.as_str();
        let mut literal = String::new();
        while let Some(open) = rest.find('{') {
            literal.push_str(&rest[..open]);
            let Some(close) = rest[open..].find('}') else {
                return Err(format!(
                    "--external-id-format {format:?} has an unclosed '{{'"
                ));
            };
            match &rest[open + 1..open + close] {
                "namespace" | "name" => {}
                "cluster" if self.cluster_name.is_some() => {}
                "cluster" => {
                    return Err(
                        "--external-id-format uses {cluster}, which needs --cluster-name".into(),
                    );
                }
                other => {
                    return Err(format!(
                        "--external-id-format: unknown placeholder {{{other}}} (use {{namespace}}, {{name}}, {{cluster}})"
                    ));
                }
            }
            rest = &rest[open + close + 1..];
        }
        literal.push_str(rest);
        if let Some(c) = literal.chars().find(|&c| !is_external_id_char(c)) {
            return Err(format!(
                "--external-id-format contains {c:?}; an external ID may hold letters, digits and _+=,.@:/-"
            ));
        }
        if self
            .cluster_name
            .as_deref()
            .is_some_and(|c| c.chars().any(|c| !is_external_id_char(c)))
            && format.contains("{cluster}")
        {
            return Err("--cluster-name holds characters an external ID cannot (letters, digits and _+=,.@:/- only)".into());
        }
        Ok(())
    }

    /// The AssumeRole extras for AWSIAMRole `namespace/name` with session name `session`.
    /// `Err` says which value breaks an STS constraint (the role is then blocked).
    pub fn extras(
        &self,
        namespace: &str,
        name: &str,
        session: &str,
    ) -> Result<SessionExtras, SessionError> {
        let mut extras = SessionExtras::default();
        if self.tags {
            extras.tags.push((TAG_NAMESPACE.into(), namespace.into()));
            extras.tags.push((TAG_AWSIAMROLE.into(), name.into()));
            if let Some(cluster) = &self.cluster_name {
                extras.tags.push((TAG_CLUSTER.into(), cluster.clone()));
            }
            for (key, value) in &extras.tags {
                if value.chars().count() > TAG_VALUE_MAX || value.chars().any(|c| !is_tag_char(c)) {
                    return Err(SessionError(format!(
                        "session tag {key} cannot hold {}",
                        crate::domain::text::excerpt(value)
                    )));
                }
            }
        }
        if self.source_identity {
            extras.source_identity = Some(session.to_string());
        }
        if let Some(format) = &self.external_id_format {
            let id = format
                .replace("{namespace}", namespace)
                .replace("{name}", name)
                .replace(
                    "{cluster}",
                    self.cluster_name.as_deref().unwrap_or_default(),
                );
            let len = id.chars().count();
            if !(EXTERNAL_ID_MIN..=EXTERNAL_ID_MAX).contains(&len)
                || id.chars().any(|c| !is_external_id_char(c))
            {
                return Err(SessionError(format!(
                    "external ID {} breaks STS's rules ({EXTERNAL_ID_MIN} to {EXTERNAL_ID_MAX} characters of letters, digits and _+=,.@:/-)",
                    crate::domain::text::excerpt(&id)
                )));
            }
            extras.external_id = Some(id);
        }
        Ok(extras)
    }
}

/// A session value (tag, external ID) that breaks an STS constraint for one AWSIAMRole: the
/// role is blocked with this message, the controller keeps running.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SessionError(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(format: Option<&str>, cluster: Option<&str>) -> SessionOptions {
        SessionOptions {
            tags: true,
            source_identity: true,
            external_id_format: format.map(String::from),
            cluster_name: cluster.map(String::from),
        }
    }

    #[test]
    fn formats_are_validated_up_front() {
        assert!(
            opts(Some("{cluster}/{namespace}"), Some("prod-eu"))
                .validate()
                .is_ok()
        );
        assert!(
            opts(Some("{cluster}/{namespace}"), None)
                .validate()
                .unwrap_err()
                .contains("--cluster-name")
        );
        assert!(
            opts(Some("{team}"), None)
                .validate()
                .unwrap_err()
                .contains("unknown placeholder")
        );
        assert!(
            opts(Some("a b/{name}"), None)
                .validate()
                .unwrap_err()
                .contains("' '")
        );
        assert!(
            opts(Some("{name"), None)
                .validate()
                .unwrap_err()
                .contains("unclosed")
        );
        assert!(opts(None, Some("bad\ncluster")).validate().is_err());
        assert!(opts(None, Some(&"c".repeat(257))).validate().is_err());
    }

    #[test]
    fn extras_for_a_role() {
        let e = opts(Some("{cluster}/{namespace}/{name}"), Some("prod"))
            .extras("team-a", "app", "team-a.app")
            .unwrap();
        assert_eq!(e.external_id.as_deref(), Some("prod/team-a/app"));
        assert_eq!(e.source_identity.as_deref(), Some("team-a.app"));
        assert_eq!(
            e.tags,
            vec![
                (TAG_NAMESPACE.to_string(), "team-a".to_string()),
                (TAG_AWSIAMROLE.to_string(), "app".to_string()),
                (TAG_CLUSTER.to_string(), "prod".to_string()),
            ]
        );
        // An expansion shorter than STS's minimum is refused before any call.
        let err = opts(Some("{name}"), None)
            .extras("ns", "a", "ns.a")
            .unwrap_err();
        assert!(err.0.contains("external ID"), "{err}");
        assert_eq!(
            SessionOptions::default().extras("ns", "a", "ns.a").unwrap(),
            SessionExtras::default()
        );
    }
}
