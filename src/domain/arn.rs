//! Role references: IAM role names and ARNs, their validation and resolution, and the STS
//! RoleSessionName the controller uses for an `AWSIAMRole`.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::domain::text::excerpt;

/// Longest IAM role name.
pub const MAX_ROLE_NAME: usize = 64;
/// Longest IAM path (including its leading and trailing `/`).
pub const MAX_PATH: usize = 512;
/// Longest STS RoleSessionName.
pub const MAX_SESSION_NAME: usize = 64;

/// A fully resolved IAM role ARN: `arn:<partition>:iam::<account>:role<path><name>`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RoleArn {
    partition: String,
    account: String,
    /// `/` or `/a/b/`.
    path: String,
    name: String,
}

impl RoleArn {
    pub fn partition(&self) -> &str {
        &self.partition
    }
    pub fn account(&self) -> &str {
        &self.account
    }
    pub fn path(&self) -> &str {
        &self.path
    }
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for RoleArn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "arn:{}:iam::{}:role{}{}",
            self.partition, self.account, self.path, self.name
        )
    }
}

/// A string that is not a usable IAM role ARN or base role ARN; the message names what is wrong
/// (with at most an excerpt of the input).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidArn(pub String);

impl std::str::FromStr for RoleArn {
    type Err = InvalidArn;
    fn from_str(s: &str) -> Result<Self, InvalidArn> {
        let (partition, account, path, name) = role_arn_parts(s).map_err(InvalidArn)?;
        Ok(RoleArn {
            partition: partition.into(),
            account: account.into(),
            path: path.into(),
            name: name.into(),
        })
    }
}

/// Checks that `s` is an IAM role ARN without building one (for hot paths).
pub fn validate_role_arn(s: &str) -> Result<(), InvalidArn> {
    role_arn_parts(s).map(|_| ()).map_err(InvalidArn)
}

/// (partition, account, path, name) of a valid role ARN, borrowed from `s`.
fn role_arn_parts(s: &str) -> Result<(&str, &str, &str, &str), String> {
    let (partition, account, resource) = split_iam_arn(s)?;
    let (path, name) = split_path_name(resource)?;
    validate_name(name)?;
    Ok((partition, account, path, name))
}

/// The prefix bare role names are appended to: `arn:<partition>:iam::<account>:role/[path/]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseArn {
    partition: String,
    account: String,
    path: String,
}

impl BaseArn {
    /// The base for an account, as discovered with `GetCallerIdentity`.
    pub fn for_account(partition: &str, account: &str) -> Result<Self, InvalidArn> {
        format!("arn:{partition}:iam::{account}:role/").parse()
    }
}

impl fmt::Display for BaseArn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "arn:{}:iam::{}:role{}",
            self.partition, self.account, self.path
        )
    }
}

impl std::str::FromStr for BaseArn {
    type Err = InvalidArn;
    fn from_str(s: &str) -> Result<Self, InvalidArn> {
        parse_base(s).map_err(InvalidArn)
    }
}

fn parse_base(s: &str) -> Result<BaseArn, String> {
    {
        let (partition, account, resource) = split_iam_arn(s)?;
        if !resource.ends_with('/') {
            return Err(format!(
                "base role ARN {} must end with '/', e.g. arn:aws:iam::123456789012:role/",
                excerpt(s)
            ));
        }
        let path = &resource["role".len()..];
        validate_path(path)?;
        Ok(BaseArn {
            partition: partition.into(),
            account: account.into(),
            path: path.into(),
        })
    }
}

/// Why a `roleReference` does not resolve.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// A bare role name (or `path/name`) and no base ARN to put in front of it: the planning
    /// run lacks `--base-role-arn`, the reference itself may be fine.
    #[error(
        "this plan has no base role ARN to resolve the role name {0}: pass --base-role-arn (e.g. arn:aws:iam::123456789012:role/); a live pass discovers it"
    )]
    NeedsBase(String),
    #[error("{0}")]
    Invalid(String),
}

impl From<InvalidArn> for ResolveError {
    fn from(e: InvalidArn) -> Self {
        ResolveError::Invalid(e.0)
    }
}

impl From<String> for ResolveError {
    fn from(message: String) -> Self {
        ResolveError::Invalid(message)
    }
}

/// Resolves a `roleReference` (role name, `path/to/name` or full ARN) to a role ARN.
///
/// A bare name needs the base ARN; `None` means it is unknown (offline planning without
/// `--base-role-arn`), which is an error for bare names only.
pub fn resolve(reference: &str, base: Option<&BaseArn>) -> Result<RoleArn, ResolveError> {
    if reference.is_empty() {
        return Err("is empty".to_string().into());
    }
    if reference.chars().count() < 3 {
        return Err(format!("{} is shorter than 3 characters", excerpt(reference)).into());
    }
    if reference.starts_with("arn:") {
        return Ok(reference.parse()?);
    }
    if let Some(prefix) = reference
        .get(..4)
        .filter(|p| p.eq_ignore_ascii_case("arn:"))
    {
        return Err(format!(
            "{} starts with {prefix:?}; ARNs start with lower-case \"arn:\"",
            excerpt(reference)
        )
        .into());
    }
    let Some(base) = base else {
        return Err(ResolveError::NeedsBase(excerpt(reference)));
    };
    if reference.starts_with('/') {
        return Err(format!(
            "{} must not start with '/': write a role name, path/to/name, or a full ARN",
            excerpt(reference)
        )
        .into());
    }
    let (sub_path, name) = match reference.rsplit_once('/') {
        Some((p, n)) => (format!("{p}/"), n),
        None => (String::new(), reference),
    };
    let path = format!("{}{}", base.path, sub_path);
    validate_path(&path)?;
    validate_name(name)?;
    Ok(RoleArn {
        partition: base.partition.clone(),
        account: base.account.clone(),
        path,
        name: name.into(),
    })
}

/// STS RoleSessionName for an AWSIAMRole: `<namespace>.<name>` restricted to `[\w+=,.@-]`, at
/// most 64 characters. Longer names keep a prefix and end in a hash of the full name, so
/// distinct AWSIAMRoles keep distinct session names in CloudTrail.
pub fn session_name(namespace: &str, name: &str) -> String {
    let full = format!("{namespace}.{name}");
    let sanitized: String = full
        .chars()
        .map(|c| if is_iam_char(c) { c } else { '-' })
        .collect();
    if sanitized.len() <= MAX_SESSION_NAME {
        return sanitized;
    }
    let digest = Sha256::digest(full.as_bytes());
    let hash: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    // Sanitised text is ASCII, so byte slicing is on character boundaries.
    format!("{}-{hash}", &sanitized[..MAX_SESSION_NAME - 1 - hash.len()])
}

/// Characters IAM allows in role names and STS in session names: `[\w+=,.@-]` (ASCII `\w`).
pub fn is_iam_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '=' | ',' | '.' | '@' | '-')
}

/// Matches a glob (`*` = any run of characters, including `/`; `?` = one character) against a
/// whole string.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while ti < t.len() {
        // A `*` in the pattern is always a wildcard, even where the text holds a `*`.
        if pi < p.len() && p[pi] == '*' {
            backtrack = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if let Some((bp, bt)) = backtrack {
            pi = bp + 1;
            ti = bt + 1;
            backtrack = Some((bp, bt + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Splits `arn:<partition>:iam::<account>:<resource>` and checks the parts every role ARN
/// shares; the resource must start with `role/`.
fn split_iam_arn(s: &str) -> Result<(&str, &str, &str), String> {
    let parts: Vec<&str> = s.splitn(6, ':').collect();
    let [arn, partition, service, region, account, resource] = parts[..] else {
        return Err(format!(
            "{} is not an ARN (expected arn:<partition>:iam::<account>:role/<name>)",
            excerpt(s)
        ));
    };
    if arn != "arn" {
        return Err(format!("{} does not start with \"arn:\"", excerpt(s)));
    }
    if !is_partition(partition) {
        return Err(format!(
            "{}: unknown partition {} (expected aws, aws-cn, aws-us-gov, …)",
            excerpt(s),
            excerpt(partition)
        ));
    }
    if service != "iam" {
        return Err(format!(
            "{}: service is {}, not \"iam\" (an IAM role ARN is needed)",
            excerpt(s),
            excerpt(service)
        ));
    }
    if !region.is_empty() {
        return Err(format!(
            "{}: IAM ARNs have no region, found {}",
            excerpt(s),
            excerpt(region)
        ));
    }
    if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{}: account {} is not 12 digits",
            excerpt(s),
            excerpt(account)
        ));
    }
    if !resource.starts_with("role/") {
        return Err(format!(
            "{}: resource {} is not a role (expected role/<path/><name>)",
            excerpt(s),
            excerpt(resource)
        ));
    }
    Ok((partition, account, resource))
}

/// `role/a/b/name` → (`/a/b/`, `name`).
fn split_path_name(resource: &str) -> Result<(&str, &str), String> {
    let rest = &resource["role".len()..];
    let cut = rest.rfind('/').unwrap_or(0);
    let (path, name) = rest.split_at(cut + 1);
    validate_path(path)?;
    Ok((path, name))
}

/// `aws`, `aws-cn`, `aws-us-gov`, `aws-iso-b`, …
fn is_partition(p: &str) -> bool {
    let mut parts = p.split('-');
    parts.next() == Some("aws")
        && parts.all(|seg| {
            !seg.is_empty()
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("role name is empty".into());
    }
    if name.len() > MAX_ROLE_NAME {
        return Err(format!(
            "role name {} is longer than {MAX_ROLE_NAME} characters",
            excerpt(name)
        ));
    }
    if let Some(c) = name.chars().find(|&c| !is_iam_char(c)) {
        return Err(format!(
            "role name {} contains {:?}; allowed are letters, digits and _+=,.@-",
            excerpt(name),
            c
        ));
    }
    Ok(())
}

/// An IAM path: `/` or `/seg/…/seg/`, segments of IAM characters, no `.` or `..` segments.
fn validate_path(path: &str) -> Result<(), String> {
    if path.len() > MAX_PATH {
        return Err(format!("role path is longer than {MAX_PATH} characters"));
    }
    if path == "/" {
        return Ok(());
    }
    if path.len() < 3 || !path.starts_with('/') || !path.ends_with('/') {
        return Err(format!(
            "role path {} must be '/' or start and end with '/'",
            excerpt(path)
        ));
    }
    let inner = &path[1..path.len() - 1];
    for seg in inner.split('/') {
        if seg.is_empty() {
            return Err(format!("role path {} has an empty segment", excerpt(path)));
        }
        if seg == "." || seg == ".." {
            return Err(format!(
                "role path {} contains a {:?} segment",
                excerpt(path),
                seg
            ));
        }
        if let Some(c) = seg.chars().find(|&c| !is_iam_char(c)) {
            return Err(format!(
                "role path {} contains {:?}; allowed are letters, digits and _+=,.@-",
                excerpt(path),
                c
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> BaseArn {
        "arn:aws:iam::123456789012:role/".parse().unwrap()
    }

    #[test]
    fn resolves_names_paths_and_arns() {
        let b = base();
        assert_eq!(
            resolve("app", Some(&b)).unwrap().to_string(),
            "arn:aws:iam::123456789012:role/app"
        );
        assert_eq!(
            resolve("team/ci/app", Some(&b)).unwrap().to_string(),
            "arn:aws:iam::123456789012:role/team/ci/app"
        );
        let cross = "arn:aws-cn:iam::210987654321:role/x/y/z";
        let r = resolve(cross, Some(&b)).unwrap();
        assert_eq!(r.to_string(), cross);
        assert_eq!(
            (r.path(), r.name(), r.account()),
            ("/x/y/", "z", "210987654321")
        );
        let with_path: BaseArn = "arn:aws:iam::123456789012:role/k8s/".parse().unwrap();
        assert_eq!(
            resolve("app", Some(&with_path)).unwrap().to_string(),
            "arn:aws:iam::123456789012:role/k8s/app"
        );
    }

    #[test]
    fn rejects_bad_references() {
        let b = base();
        for bad in [
            "",
            "ab",
            "arn:aws:iam::12:role/x",
            "arn:aws:s3:::bucket",
            "arn:aws:iam::123456789012:user/bob",
            "arn:aws:iam:eu-west-1:123456789012:role/x",
            "arn:evil:iam::123456789012:role/x",
            "arn:aws:iam::123456789012:role/",
            "arn:aws:iam::123456789012:role/../admin",
            "arn:aws:iam::123456789012:role//x",
            "my role",
            "../admin",
            "a/./b",
            "/abs",
            "tab\there",
            "rôle",
            &"x".repeat(65),
        ] {
            assert!(resolve(bad, Some(&b)).is_err(), "accepted {bad:?}");
        }
        assert!(resolve(&"x".repeat(64), Some(&b)).is_ok());
        assert!(
            resolve("app", None)
                .unwrap_err()
                .to_string()
                .contains("--base-role-arn")
        );
    }

    #[test]
    fn base_arn_must_end_with_slash() {
        assert!("arn:aws:iam::123456789012:role".parse::<BaseArn>().is_err());
        assert!(
            "arn:aws:iam::123456789012:role/x"
                .parse::<BaseArn>()
                .is_err()
        );
        assert_eq!(
            BaseArn::for_account("aws-us-gov", "123456789012")
                .unwrap()
                .to_string(),
            "arn:aws-us-gov:iam::123456789012:role/"
        );
    }

    #[test]
    fn session_names_are_valid_and_distinct() {
        assert_eq!(session_name("team-a", "app"), "team-a.app");
        let long_a = session_name(&"n".repeat(63), &format!("{}a", "r".repeat(60)));
        let long_b = session_name(&"n".repeat(63), &format!("{}b", "r".repeat(60)));
        assert_eq!(long_a.len(), MAX_SESSION_NAME);
        assert_ne!(long_a, long_b);
        assert!(long_a.chars().all(is_iam_char));
        assert_eq!(session_name("ns", "a:b/c"), "ns.a-b-c");
    }

    #[test]
    fn globs() {
        assert!(glob_match(
            "arn:aws:iam::123456789012:role/*",
            "arn:aws:iam::123456789012:role/a/b"
        ));
        assert!(glob_match("*-reader", "s3-reader"));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "abbc"));
        assert!(!glob_match(
            "arn:aws:iam::1*:role/x",
            "arn:aws:iam::2:role/x"
        ));
        assert!(glob_match("*", ""));
        assert!(glob_match("*", "*x") && glob_match("a*", "a*b"));
    }
}
