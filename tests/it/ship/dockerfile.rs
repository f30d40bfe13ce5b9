//! The container image: a multi-stage, locked release build into a non-root runtime image,
//! with everything Cargo.toml needs in the build context.

use std::collections::BTreeSet;

use crate::support::manifests::{dockerfile_uid, read};

#[test]
fn dockerfile_builds_the_binary_into_a_non_root_image() {
    let dockerfile = read("Dockerfile");
    let instructions: Vec<&str> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let froms: Vec<&str> = instructions
        .iter()
        .copied()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert!(froms.len() >= 2, "multi-stage: {froms:?}");
    assert!(
        dockerfile.contains("cargo build --release --locked"),
        "a locked release build"
    );
    let runtime = froms.last().unwrap();
    assert!(
        !runtime.contains(" AS "),
        "the last stage is the runtime: {runtime}"
    );
    assert!(dockerfile_uid() != 0, "the runtime user is not root");
    let entrypoint = instructions
        .iter()
        .find(|l| l.starts_with("ENTRYPOINT"))
        .expect("an ENTRYPOINT");
    assert!(
        entrypoint.contains("/kube-aws-iam-controller\""),
        "the binary is the entrypoint: {entrypoint}"
    );
    // Everything Cargo.toml names must be copied into the build stage and not be ignored.
    let manifest = read("Cargo.toml");
    let mut needed: BTreeSet<String> = ["Cargo.toml", "Cargo.lock", "src"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for line in manifest.lines() {
        if let Some(path) = line
            .trim()
            .strip_prefix("path = \"")
            .and_then(|p| p.strip_suffix('"'))
        {
            needed.insert(path.split('/').next().unwrap().to_string());
        }
        if line.trim() == "[[bench]]" {
            needed.insert("benches".into());
        }
    }
    let copies: Vec<&str> = instructions
        .iter()
        .copied()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from="))
        .collect();
    let ignored = read(".dockerignore");
    for item in &needed {
        assert!(
            copies.iter().any(|c| c
                .split_whitespace()
                .any(|w| w.trim_end_matches('/') == item)),
            "the Dockerfile does not COPY {item} (needed by Cargo.toml)"
        );
        assert!(
            !ignored
                .lines()
                .any(|l| l.trim().trim_end_matches('/') == item),
            ".dockerignore excludes {item}"
        );
    }
    for heavy in ["target", ".git", ".venv"] {
        assert!(
            ignored
                .lines()
                .any(|l| l.trim().trim_end_matches('/') == heavy),
            ".dockerignore keeps {heavy}/ out of the build context"
        );
    }
}
