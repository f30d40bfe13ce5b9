//! The documentation and examples agree with the code: `docs/flags.md` is the binary's
//! `--help`, relative links resolve, and the example mounts what the controller writes.

use k8s_openapi::api::apps::v1::Deployment;
use kube_aws_iam_controller::domain::crd::AWSIAMRole;
use kube_aws_iam_controller::domain::secret;
use serde_json::Value;

use super::{BIN, MOUNT_PATH, env_value, only_container, pod_spec_of_deployment};
use crate::support::harness::{BASE, text};
use crate::support::manifests::{only, yaml_docs};
use crate::support::repo_root;

/// Command that regenerates docs/flags.md.
const REGENERATE_FLAGS: &str = "UPDATE_DOCS=1 cargo test --test it ship::docs::flags_doc";

/// Runs the binary with an empty environment (clap shows an environment variable's value in
/// `--help` when it is set) and returns its standard output.
fn help(args: &[&str]) -> String {
    let out = std::process::Command::new(BIN)
        .args(args)
        .env_clear()
        .output()
        .expect("the binary runs");
    assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    text(&out.stdout)
}

fn flags_markdown() -> String {
    let mut out = format!(
        "# Command-line reference\n\
         \n\
         <!-- Generated from the binary's --help; do not edit. tests/it/ship/docs.rs fails when this \
         file differs from it. Regenerate with: {REGENERATE_FLAGS} -->\n\
         \n\
         Every flag can also be given as the environment variable shown with it (flag values \
         win). Durations are humantime (`10s`, `15m`, `1h 30m`). Each subcommand takes only its \
         own flags, after its name; without a subcommand the binary runs `run` with `run`'s \
         flags, as the original controller did.\n"
    );
    for command in [
        &[][..],
        &["run"],
        &["once"],
        &["plan"],
        &["crd"],
        &["bootstrap"],
        &["inject"],
        &["webhook"],
        &["credentials-server"],
    ] {
        let shown = ["kube-aws-iam-controller"]
            .iter()
            .chain(command)
            .copied()
            .collect::<Vec<_>>()
            .join(" ");
        let help = help(&[command, &["--help"]].concat());
        out.push_str(&format!("\n## `{shown} --help`\n\n```text\n{help}```\n"));
    }
    out
}

#[test]
fn flags_doc_matches_help() {
    let expected = flags_markdown();
    let path = repo_root().join("docs/flags.md");
    if std::env::var_os("UPDATE_DOCS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &expected).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != expected {
        let diff = similar::TextDiff::from_lines(&committed, &expected)
            .unified_diff()
            .header("docs/flags.md", "--help")
            .to_string();
        panic!(
            "docs/flags.md differs from the binary's --help; regenerate it with\n  \
             {REGENERATE_FLAGS}\n{diff}"
        );
    }
}

/// Every documentation page the docs index links to exists, and relative links in docs/ and
/// examples/ resolve.
#[test]
fn doc_links_resolve() {
    let mut broken = Vec::new();
    for dir in ["docs", "examples"] {
        for entry in std::fs::read_dir(repo_root().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "md") {
                continue;
            }
            let body = std::fs::read_to_string(&path).unwrap();
            for target in markdown_links(&body) {
                if target.contains("://")
                    || target.starts_with('#')
                    || target.starts_with("mailto:")
                {
                    continue;
                }
                let file = target.split('#').next().unwrap();
                if !path.parent().unwrap().join(file).exists() {
                    broken.push(format!("{}: {target}", path.display()));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// Targets of `[text](target)` links.
fn markdown_links(body: &str) -> Vec<String> {
    let mut links = Vec::new();
    let mut rest = body;
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        if let Some(end) = rest.find(')') {
            links.push(rest[..end].to_string());
            rest = &rest[end..];
        }
    }
    links
}

/// The example Deployment mounts the Secret of the example AWSIAMRole the way the controller
/// writes it, and the controller plans to create that Secret.
#[test]
fn example_mounts_the_secret_the_controller_writes() {
    let mut docs = Vec::new();
    for entry in std::fs::read_dir(repo_root().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            docs.extend(yaml_docs(
                &std::fs::read_to_string(&path).unwrap(),
                &path.display().to_string(),
            ));
        }
    }
    let role: AWSIAMRole = only(&docs, "AWSIAMRole", "examples/");
    let name = role.metadata.name.clone().expect("the AWSIAMRole is named");
    let d: Deployment = only(&docs, "Deployment", "examples/");
    let pod = pod_spec_of_deployment(&d);
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.secret.is_some())
        .expect("a Secret volume");
    let secret_volume = volume.secret.as_ref().unwrap();
    assert_eq!(
        secret_volume.secret_name.as_deref(),
        Some(name.as_str()),
        "the volume's Secret is named like the AWSIAMRole"
    );
    assert!(
        secret_volume.items.is_none(),
        "the whole Secret is mounted (credentials.process refers to credentials.json beside it)"
    );
    let c = only_container(pod, "examples/ Deployment");
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == volume.name)
        .expect("the container mounts the Secret volume");
    assert_eq!(mount.mount_path, MOUNT_PATH);
    assert!(
        mount.sub_path.is_none(),
        "a subPath mount is never updated, so refreshed credentials would not arrive"
    );
    assert_eq!(mount.read_only, Some(true));
    let file = env_value(c, "AWS_SHARED_CREDENTIALS_FILE").expect("AWS_SHARED_CREDENTIALS_FILE");
    let key = file
        .strip_prefix(&format!("{MOUNT_PATH}/"))
        .unwrap_or_else(|| panic!("{file} is not under {MOUNT_PATH}"));
    assert!(
        secret::DATA_KEYS.contains(&key),
        "{key} is not a key the controller writes ({:?})",
        secret::DATA_KEYS
    );
    assert_eq!(
        key,
        secret::KEY_PROCESS,
        "the example uses the refreshing credential_process profile"
    );
    assert!(
        secret::PROCESS_FILE.contains(&format!("cat {MOUNT_PATH}/{}", secret::KEY_JSON)),
        "credentials.process reads credentials.json from the mount path"
    );
    assert!(env_value(c, "AWS_REGION").is_some_and(|r| !r.is_empty()));

    let out = std::process::Command::new(BIN)
        .args([
            "plan",
            "--from",
            &repo_root().join("examples").display().to_string(),
            "--base-role-arn",
            BASE,
            "--output",
            "json",
        ])
        .env_clear()
        .output()
        .expect("the binary runs");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let plan: Value = serde_json::from_slice(&out.stdout).expect("a JSON plan");
    let actions = plan["actions"].as_array().unwrap();
    assert_eq!(actions.len(), 1, "{plan}");
    let a = &actions[0];
    assert_eq!(a["action"], "create", "{plan}");
    assert_eq!(a["reason"], "Missing");
    assert_eq!(a["name"], name.as_str());
    assert_eq!(
        a["roleArn"].as_str(),
        Some(format!("{BASE}{}", role.spec.role_reference).as_str())
    );
}
