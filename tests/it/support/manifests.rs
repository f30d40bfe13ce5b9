//! Reading the shipped YAML (manifests, examples, rendered kustomizations) and the Dockerfile,
//! for the tests of `deploy/`, `cronjobs/`, `examples/` and `deploy/webhook/`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::repo_root;

/// The text of a file of the checkout, by its path relative to the repository root.
pub fn read(rel: &str) -> String {
    let path = repo_root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Every non-empty document of a multi-document YAML text.
pub fn yaml_docs(text: &str, what: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(text)
        .unwrap_or_else(|e| panic!("{what} is not valid YAML: {e}"))
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

/// Every document of a YAML file of the checkout.
pub fn docs_of(rel: &str) -> Vec<Value> {
    yaml_docs(&read(rel), rel)
}

pub fn kind_of(v: &Value) -> &str {
    v["kind"].as_str().unwrap_or_default()
}

/// The one object of `kind` in `docs`, decoded as `T`.
pub fn only<T: serde::de::DeserializeOwned>(docs: &[Value], kind: &str, what: &str) -> T {
    let found: Vec<&Value> = docs.iter().filter(|d| kind_of(d) == kind).collect();
    assert_eq!(
        found.len(),
        1,
        "{what}: expected one {kind}, found {}",
        found.len()
    );
    serde_json::from_value(found[0].clone())
        .unwrap_or_else(|e| panic!("{what}: the {kind} does not decode: {e}"))
}

pub fn kinds(docs: &[Value]) -> BTreeSet<String> {
    docs.iter().map(|d| kind_of(d).to_string()).collect()
}

/// `to` relative to `from` (both absolute): kustomize wants relative paths to its bases.
pub fn relative_path(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<_> = from.components().collect();
    let to: Vec<_> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut path = PathBuf::new();
    for _ in common..from.len() {
        path.push("..");
    }
    for c in &to[common..] {
        path.push(c);
    }
    path
}

/// The numeric user of the Dockerfile's last `USER` line.
pub fn dockerfile_uid() -> i64 {
    let dockerfile = read("Dockerfile");
    let user = dockerfile
        .lines()
        .filter_map(|l| l.trim().strip_prefix("USER "))
        .next_back()
        .expect("the Dockerfile sets a USER");
    user.split(':')
        .next()
        .and_then(|u| u.trim().parse().ok())
        .unwrap_or_else(|| panic!("the Dockerfile's USER {user:?} is not numeric"))
}
