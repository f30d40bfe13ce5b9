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
        // Workspace members: cargo reads their manifests even to build one package.
        if let Some(members) = line
            .trim()
            .strip_prefix("members = [")
            .and_then(|m| m.strip_suffix(']'))
        {
            for member in members.split(',') {
                let member = member.trim().trim_matches('"');
                needed.insert(member.split('/').next().unwrap().to_string());
            }
        }
    }
    assert!(
        needed.contains("credentials-server"),
        "the sidecar crate is a workspace member: {needed:?}"
    );
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

/// New pods' sidecars run the small `credentials-server` binary at the path the mutation
/// writes; the image must build it and put it there, beside the controller (whose
/// `credentials-server` subcommand pods injected earlier still run).
#[test]
fn dockerfile_ships_the_sidecar_binary_where_the_mutation_points() {
    use kube_aws_iam_controller::delivery::mutate::{self, MutateOptions};
    let dockerfile = read("Dockerfile");
    // Continuation lines joined: one RUN instruction is one line.
    let joined = dockerfile.replace("\\\n", " ");
    let instructions: Vec<&str> = joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let runtime_from = instructions
        .iter()
        .rposition(|l| l.starts_with("FROM "))
        .expect("a FROM line");
    let (build, runtime) = instructions.split_at(runtime_from);

    let sidecar = mutate::sidecar(&MutateOptions::new("example.com/kaic:1"));
    let command = sidecar.command.clone().unwrap_or_default();
    assert_eq!(command, [mutate::SIDECAR_BINARY], "the sidecar's command");
    let probe = sidecar
        .startup_probe
        .and_then(|p| p.exec)
        .and_then(|e| e.command)
        .unwrap_or_default();
    assert_eq!(
        probe.first().map(String::as_str),
        Some(mutate::SIDECAR_BINARY),
        "the startup probe runs the binary itself"
    );
    let binary_name = mutate::SIDECAR_BINARY
        .rsplit('/')
        .next()
        .expect("a file name");

    // The build stage builds the bin (declared by the sidecar crate) in release mode.
    let manifest = read("credentials-server/Cargo.toml");
    assert!(
        manifest.contains(&format!("name = \"{binary_name}\"")),
        "credentials-server/Cargo.toml declares the bin {binary_name}"
    );
    let builds_it = build.iter().any(|l| {
        l.starts_with("RUN ")
            && l.contains("cargo build --release --locked")
            && l.contains(&format!("--bin {binary_name}"))
            && l.contains(&format!("target/release/{binary_name}"))
    });
    assert!(
        builds_it,
        "the build stage builds and installs {binary_name}: {build:#?}"
    );

    // The runtime stage copies it to exactly the path the mutation writes.
    let copied = runtime.iter().any(|l| {
        let words: Vec<&str> = l.split_whitespace().collect();
        words.first() == Some(&"COPY")
            && words.iter().any(|w| w.starts_with("--from="))
            && words.last() == Some(&mutate::SIDECAR_BINARY)
            && words
                .iter()
                .any(|w| w.ends_with(&format!("/{binary_name}")))
    });
    assert!(
        copied,
        "the runtime stage copies {binary_name} to {}: {runtime:#?}",
        mutate::SIDECAR_BINARY
    );
    // And the controller, whose subcommand older pods run, is still there.
    assert!(
        runtime.iter().any(|l| l.starts_with("COPY --from=")
            && l.ends_with("/usr/local/bin/kube-aws-iam-controller")),
        "the runtime stage still ships the controller"
    );
}
