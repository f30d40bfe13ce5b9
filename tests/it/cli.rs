//! The compiled binary: exit codes, output streams and the README's commands.

use std::path::Path;
use std::process::{Command, Output};

use kube_aws_iam_controller::controller::commands;

use crate::support::argv;
use crate::support::assert_contains;
use crate::support::{Case, repo_root};

fn bin(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kube-aws-iam-controller"))
        .args(args)
        .current_dir(repo_root())
        .env_remove("RUST_LOG")
        .output()
        .expect("binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

#[test]
fn readme_quickstart_command_works() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let line = readme
        .lines()
        .find(|l| {
            l.trim_start()
                .starts_with("cargo run -- plan --from fixtures/quickstart")
        })
        .expect("README names the quickstart command");
    let args: Vec<&str> = line.split_whitespace().skip(3).collect();
    let out = bin(&args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("+ create"), "{text}");
    assert!(text.contains("Plan: 1 to create"), "{text}");
    assert!(!text.contains("quickstart-secret") && !stderr(&out).contains("quickstart-secret"));
}

#[test]
fn binary_prints_what_the_library_plans() {
    let case = Case::load("quickstart");
    let mut argv: Vec<&str> = case.argv.iter().map(String::as_str).collect();
    argv.extend(["--output", "json"]);
    let out = bin(&argv);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        commands::plan_offline(&case.offline(&["--output", "json"]))
            .unwrap()
            .stdout
    );
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let actions = json["actions"].as_array().unwrap();
    for a in actions {
        for key in [
            "action",
            "namespace",
            "name",
            "reason",
            "roleArn",
            "message",
        ] {
            assert!(a.get(key).is_some(), "action lacks {key}: {a}");
        }
    }
    let summary = json["summary"].as_object().unwrap();
    let keys: Vec<&str> = summary.keys().map(String::as_str).collect();
    assert_eq!(keys.len(), 6);
    for k in [
        "create",
        "refresh",
        "update-status",
        "delete",
        "skip",
        "blocked",
    ] {
        assert!(summary.contains_key(k), "summary lacks {k}");
    }
    let total: u64 = summary.values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(total as usize, actions.len());
}

#[test]
fn crd_subcommand_prints_deploy_crd() {
    let out = bin(&["crd"]);
    assert_eq!(out.status.code(), Some(0));
    let committed = std::fs::read_to_string(repo_root().join("deploy/crd.yaml")).unwrap();
    assert_eq!(stdout(&out), committed);
}

#[test]
fn unreadable_input_exits_2() {
    let out = bin(&argv(
        "plan --from does/not/exist --now 2026-01-01T00:00:00Z",
    ));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("does/not/exist"), "{}", stderr(&out));

    let empty = tempdir("empty-dir");
    let out = bin(&["plan", "--from", empty.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no *.yaml"), "{}", stderr(&out));
}

#[test]
fn bad_flags_exit_2() {
    let q = "fixtures/quickstart";
    for args in [
        vec!["plan", "--from", q, "--now", "yesterday"],
        vec![
            "plan",
            "--from",
            q,
            "--base-role-arn",
            "arn:aws:iam::123:role/",
        ],
        vec!["plan", "--from", q, "--refresh-limit", "soon"],
        vec!["plan", "--from", q, "--output", "yaml"],
    ] {
        let out = bin(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stdout(&out).is_empty());
    }
}

#[test]
fn malformed_documents_are_reported_and_the_rest_planned() {
    let dir = tempdir("malformed");
    std::fs::write(
        dir.join("a.yaml"),
        "apiVersion: zalando.org/v1\nkind: AWSIAMRole\nmetadata: {name: good, namespace: ns, uid: u1, generation: 1}\nspec: {roleReference: app}\n---\nkind: Secret\nmetadata: {name: x\n  data: {credentials: LEAKME}\n---\napiVersion: zalando.org/v1\nkind: AWSIAMRole\nspec: {roleReference: app}\n",
    )
    .unwrap();
    std::fs::write(dir.join("b.yml"), [0xffu8, 0xfe, 0x00]).unwrap();
    let dir = dir.to_str().expect("a UTF-8 scratch path");
    let base = "arn:aws:iam::123456789012:role/";
    let out = bin(&[
        "plan",
        "--from",
        dir,
        "--base-role-arn",
        base,
        "--output",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert_contains(&err, "a.yaml: document 2: could not be read as YAML");
    assert_contains(
        &err,
        "a.yaml: document 3: AWSIAMRole skipped: metadata is missing",
    );
    assert!(err.contains("b.yml: not UTF-8"), "{err}");
    assert!(!err.contains("LEAKME"), "{err}");
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["actions"][0]["name"], "good");
    assert_eq!(json["actions"][0]["action"], "create");
}

#[test]
fn bare_names_without_base_arn_are_blocked_with_a_hint() {
    let dir = tempdir("no-base");
    std::fs::write(
        dir.join("in.yaml"),
        "apiVersion: zalando.org/v1\nkind: AWSIAMRole\nmetadata: {name: a, namespace: ns, uid: u, generation: 1}\nspec: {roleReference: app}\n---\napiVersion: zalando.org/v1\nkind: AWSIAMRole\nmetadata: {name: b, namespace: ns, uid: u2, generation: 1}\nspec: {roleReference: 'arn:aws:iam::123456789012:role/b'}\n",
    )
    .unwrap();
    let out = bin(&["plan", "--from", dir.to_str().unwrap(), "--output", "json"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("pass --base-role-arn"));
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["actions"][0]["action"], "blocked");
    assert_eq!(json["actions"][1]["action"], "create");
}

#[test]
fn live_modes_without_a_cluster_exit_2() {
    for args in [
        vec![],
        vec!["run"],
        vec!["once"],
        vec!["plan"],
        vec!["once", "--dry-run"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_kube-aws-iam-controller"))
            .args(&args)
            .current_dir(repo_root())
            .env("KUBECONFIG", "/nonexistent/kubeconfig")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBERNETES_SERVICE_PORT")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            stderr(&out).contains("no Kubernetes configuration"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn every_flag_reads_its_environment_variable() {
    let out = Command::new(env!("CARGO_BIN_EXE_kube-aws-iam-controller"))
        .args(argv(
            "plan --from fixtures/quickstart --now 2026-11-26T22:30:00Z",
        ))
        .current_dir(repo_root())
        .env(
            "KUBE_AWS_IAM_CONTROLLER_BASE_ROLE_ARN",
            "arn:aws:iam::123456789012:role/",
        )
        .env("KUBE_AWS_IAM_CONTROLLER_OUTPUT", "json")
        .env("KUBE_AWS_IAM_CONTROLLER_NAMESPACE", "team-b")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let namespaces: Vec<&str> = json["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["namespace"].as_str().unwrap())
        .collect();
    assert!(!namespaces.is_empty() && namespaces.iter().all(|ns| *ns == "team-b"));
}

/// A fresh directory under target/ (removed first), so tests leave nothing outside it.
fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Flag values that cannot work exit 2 with a message naming the flag, before anything runs;
/// `--sts-rate` takes fractions.
#[test]
fn bad_flag_values_exit_2_and_fractional_rates_work() {
    let plan = ["plan", "--from", "fixtures/quickstart"];
    let long_ns = "a".repeat(64);
    let bad: [(&str, &str); 14] = [
        ("--interval", "0s"),
        ("--interval", "1ms"),
        ("--interval", "999ms"),
        ("--refresh-limit", "0s"),
        ("--refresh-limit", "59s"),
        ("--namespace", "Team-A"),
        ("--namespace", "team_a"),
        ("--namespace", "-team"),
        ("--namespace", "team-"),
        ("--namespace", &long_ns),
        ("--sts-rate", "0"),
        ("--sts-rate", "-1"),
        ("--sts-rate", "NaN"),
        ("--sts-rate", "0.001"),
    ];
    // `--interval` is `run`'s (and the bare binary's) alone; a bad value stops it before it
    // connects to anything.
    let run = ["run"];
    for (flag, value) in bad {
        let arg = format!("{flag}={value}");
        let command = if flag == "--interval" {
            &run[..]
        } else {
            &plan[..]
        };
        let out = bin(&[command, &[&arg]].concat());
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {err}");
        assert!(err.contains(flag), "{flag} {value}: {err}");
        assert!(stdout(&out).is_empty(), "{flag} {value}");
    }
    // The environment variables are checked the same way.
    let out = Command::new(env!("CARGO_BIN_EXE_kube-aws-iam-controller"))
        .args(run)
        .current_dir(repo_root())
        .env("KUBE_AWS_IAM_CONTROLLER_INTERVAL", "0s")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    // Good values, at the bounds and fractional, are accepted.
    for argv in [
        ["x", "run", "--interval=1s"],
        ["x", "--interval=1s", "--watch=false"],
    ] {
        let parsed = <kube_aws_iam_controller::cli::Cli as clap::Parser>::try_parse_from(argv);
        assert!(parsed.is_ok(), "{argv:?}: {parsed:?}");
    }
    for (flag, value) in [
        ("--refresh-limit", "1m"),
        ("--namespace", "team-a"),
        ("--namespace", ""),
        ("--sts-rate", "0.5"),
        ("--sts-rate", "2.5"),
    ] {
        let arg = format!("{flag}={value}");
        let out = bin(&[&plan[..], &[&arg]].concat());
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(0), "{flag} {value}: {err}");
    }
}
