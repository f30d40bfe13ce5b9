//! `inject`: fixture snapshot tests and the compiled binary.
//!
//! Every `tests/fixtures/inject/<case>/input.yaml` is injected exactly as `inject [args]
//! input.yaml` would (extra flags in the case's `args` file), and the result — exit code,
//! stderr, stdout — is compared with its insta snapshot (`tests/snapshots/inject@<case>.snap`;
//! review changes with `cargo insta review`). Every successful case is also injected a second
//! time, which must change nothing; every failing one must print nothing.
//!
//! `examples/delivery/*.yaml` are injected the same way and must equal their `.injected.yaml`
//! neighbours (`make examples` regenerates them).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use clap::Parser as _;
use kube_aws_iam_controller::cli::{Cli, Command as Sub};
use kube_aws_iam_controller::cli::{InjectArgs, config};
use kube_aws_iam_controller::delivery::ROLE_LABEL;
use kube_aws_iam_controller::delivery::inject;
use kube_aws_iam_controller::delivery::mutate::{self, MutateOptions};
use serde_json::Value;

use crate::support::{repo_root, snapshot};

/// Marker in hostile fixtures for values that must never be echoed.
const CANARY: &str = "SECRETVALUE";

fn cases_dir() -> PathBuf {
    repo_root().join("tests/fixtures/inject")
}

fn parse(argv: &[String]) -> InjectArgs {
    let mut full = vec!["kube-aws-iam-controller".to_string(), "inject".to_string()];
    full.extend(argv.iter().cloned());
    match Cli::try_parse_from(&full) {
        Ok(Cli {
            command: Some(Sub::Inject(args)),
            ..
        }) => args,
        Ok(_) => panic!("{full:?} is not an inject command line"),
        Err(e) => panic!("{full:?}: {e}"),
    }
}

/// What a run of `inject` produced, as the binary would show it.
struct Run {
    code: u8,
    stdout: String,
    stderr: String,
}

fn run(args: &InjectArgs) -> Run {
    match inject::run(&config::inject(args.clone())) {
        Ok(out) => Run {
            code: out.exit_code,
            stdout: out.stdout,
            stderr: out
                .notes
                .iter()
                .map(|n| format!("warning: {n}\n"))
                .collect(),
        },
        Err(e) => Run {
            code: e.exit_code(),
            stdout: String::new(),
            stderr: format!("error: {e}\n"),
        },
    }
}

fn case_argv(dir: &Path) -> Vec<String> {
    let mut argv: Vec<String> = std::fs::read_to_string(dir.join("args"))
        .map(|s| s.split_whitespace().map(String::from).collect())
        .unwrap_or_default();
    argv.push(dir.join("input.yaml").display().to_string());
    argv
}

/// Runs one fixture case: snapshot, idempotence, nothing printed on failure, no canary.
fn check_case(name: &str) {
    let dir = cases_dir().join(name);
    let args = parse(&case_argv(&dir));
    let out = run(&args);
    let prefix = format!("{}/", dir.display());
    let stderr = out.stderr.replace(&prefix, "");
    assert!(
        !out.stdout.contains(CANARY) && !stderr.contains(CANARY),
        "{name}: a value of the input is echoed:\n{stderr}"
    );
    let (code, stdout) = (out.code, &out.stdout);
    let shown = format!("exit code: {code}\n--- stderr\n{stderr}--- stdout\n{stdout}");
    snapshot(&format!("inject@{name}"), &shown);
    if out.code != 0 {
        assert_eq!(out.code, 2, "{name}: a broken input exits 2");
        assert!(out.stdout.is_empty(), "{name}: printed half a bundle");
        assert!(
            stderr.starts_with("error: ") && stderr.contains("input.yaml"),
            "{name}: the error names the file: {stderr}"
        );
        return;
    }
    // Injecting the output again changes nothing, byte for byte.
    let again = inject::inject_text(
        "output",
        &out.stdout,
        &config::mutation(&args.mutation),
        args.role.as_deref(),
    )
    .unwrap_or_else(|e| panic!("{name}: the output does not inject: {e:?}"));
    assert_eq!(again.mutated, 0, "{name}: output mutated again");
    assert_eq!(
        again.text, out.stdout,
        "{name}: output changed by a 2nd run"
    );
}

macro_rules! cases {
    ($($test:ident => $dir:literal,)*) => {
        $(
            #[test]
            fn $test() {
                check_case($dir);
            }
        )*

        /// Every case directory has its test above (none is silently skipped).
        #[test]
        fn every_case_directory_has_a_test() {
            let mut dirs: Vec<String> = std::fs::read_dir(cases_dir())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            dirs.sort();
            let mut listed = vec![$($dir.to_string()),*];
            listed.sort();
            assert_eq!(dirs, listed);
        }
    };
}

cases! {
    case_process_default => "process-default",
    case_endpoint => "endpoint",
    case_default_delivery_flags => "default-delivery-flags",
    case_containers_annotation => "containers-annotation",
    case_init_containers => "init-containers",
    case_user_settings_kept => "user-settings-kept",
    case_already_injected => "already-injected",
    case_workload_kinds => "workload-kinds",
    case_role_flag => "role-flag",
    case_region => "region",
    case_pass_through => "pass-through",
    case_hostile_bad_label => "hostile-bad-label",
    case_hostile_unknown_container => "hostile-unknown-container",
    case_hostile_volume_conflict => "hostile-volume-conflict",
    case_hostile_non_map_spec => "hostile-non-map-spec",
    case_hostile_binary => "hostile-binary",
    case_hostile_yaml => "hostile-yaml",
    case_hostile_alias_bomb => "hostile-alias-bomb",
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Input that needs no change comes out exactly as it went in.
#[test]
fn unchanged_input_is_printed_byte_for_byte() {
    for name in ["pass-through", "already-injected"] {
        let dir = cases_dir().join(name);
        let out = run(&parse(&case_argv(&dir)));
        assert_eq!(out.code, 0, "{name}: {}", out.stderr);
        assert_eq!(out.stdout, read(&dir.join("input.yaml")), "{name}");
    }
    // Windows line endings and a byte-order mark, too.
    let text = "\u{feff}apiVersion: v1\r\nkind: ConfigMap\r\nmetadata: {name: a}\r\n---\r\nkind: Pod\r\nspec: {}\r\n";
    let out = inject::inject_text("crlf", text, &options(), None).unwrap();
    assert_eq!(out.text, text);
}

fn options() -> MutateOptions {
    MutateOptions::new("example.com/kaic:1")
}

/// Each mutated pod template is exactly what the mutation's patch makes of it, so `inject`
/// and the webhook cannot disagree.
#[test]
fn injected_templates_equal_the_patched_input() {
    let dir = cases_dir().join("workload-kinds");
    let input = read(&dir.join("input.yaml"));
    let out = inject::inject_text("in", &input, &options(), None).unwrap();
    assert_eq!(
        out.mutated, 9,
        "Pod, 5 workloads, CronJob and the Deployments of both lists"
    );
    let docs = |text: &str| -> Vec<Value> {
        text.split("\n---")
            .filter_map(|d| serde_saphyr::from_str::<Value>(d).ok())
            .filter(|v| !v.is_null())
            .collect()
    };
    let before = docs(&input);
    let after = docs(&out.text);
    assert_eq!(before.len(), after.len());
    let templates = |v: &Value| -> Vec<Value> {
        let (objects, pointer) = match v.get("items").and_then(Value::as_array) {
            Some(items) => (items.iter().collect(), "/spec/template"),
            None => match v["kind"].as_str() {
                Some("Pod") => (vec![v], ""),
                Some("CronJob") => (vec![v], "/spec/jobTemplate/spec/template"),
                _ => (vec![v], "/spec/template"),
            },
        };
        objects
            .iter()
            .filter_map(|o| o.pointer(pointer))
            .filter(|t| t.pointer("/metadata/labels").is_some())
            .cloned()
            .collect()
    };
    let mut compared = 0;
    for (b, a) in before.iter().zip(&after) {
        let group = b["apiVersion"].as_str().unwrap_or("");
        for (tb, ta) in templates(b).iter().zip(templates(a)) {
            let labelled = tb
                .pointer("/metadata/labels")
                .unwrap()
                .get(ROLE_LABEL)
                .is_some();
            if !labelled || group.starts_with("example.com") {
                assert_eq!(*tb, ta);
                continue;
            }
            let mut patched = tb.clone();
            let ops = mutate::patch(tb, &options()).unwrap().unwrap();
            json_patch::patch(&mut patched, &ops).unwrap();
            assert_eq!(patched, ta);
            compared += 1;
        }
    }
    assert_eq!(compared, 9);
}

/// A document larger than any Kubernetes object is refused before it is parsed.
#[test]
fn a_huge_document_is_refused_and_nothing_is_printed() {
    let mut text = String::from("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: big}\ndata:\n");
    let line = format!("  k: \"{}\"\n", "x".repeat(1000));
    while text.len() <= inject::MAX_DOCUMENT_BYTES {
        text.push_str(&line);
    }
    let text = format!("kind: Service\nmetadata: {{name: small}}\n---\n{text}");
    let e = inject::inject_text("big.yaml", &text, &options(), None).unwrap_err();
    assert_eq!(e.len(), 1);
    let msg = e[0].to_string();
    assert!(
        msg.starts_with("big.yaml, document 2 (line 3): ")
            && msg.contains("more than the 3145728 bytes"),
        "{msg}"
    );
    let out = inject::inject_sources(&[("big.yaml".into(), text.into_bytes())], &options(), None);
    let err = out.expect_err("fails").to_string();
    assert!(err.contains("nothing was printed"), "{err}");
}

#[test]
fn an_invalid_role_flag_is_refused() {
    let e = inject::inject_sources(
        &[("a".into(), b"kind: Pod\n".to_vec())],
        &options(),
        Some("Bad_Role"),
    )
    .expect_err("refused")
    .to_string();
    assert!(
        e.starts_with("invalid configuration: --role: \"Bad_Role\""),
        "{e}"
    );
}

#[test]
fn sources_are_joined_into_one_stream() {
    let source = |name: &str, text: &str| (name.to_string(), text.as_bytes().to_vec());
    let sources = [
        source("a.yaml", "kind: A\nmetadata: {name: a}"),
        source("b.yaml", "---\nkind: B\n"),
        source("c.yaml", ""),
        source("d.yaml", "kind: D\n"),
    ];
    let out = inject::inject_sources(&sources, &options(), None).unwrap();
    assert_eq!(
        out.stdout,
        "kind: A\nmetadata: {name: a}\n---\nkind: B\n---\nkind: D\n"
    );
}

// The compiled binary.

const BIN: &str = env!("CARGO_BIN_EXE_kube-aws-iam-controller");

fn bin(args: &[&str], stdin: &[u8]) -> Output {
    use std::io::Write as _;
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(repo_root())
        .env_remove("RUST_LOG")
        .env_remove("KUBE_AWS_IAM_CONTROLLER_ROLE")
        .env_remove("KUBE_AWS_IAM_CONTROLLER_DEFAULT_DELIVERY")
        .env_remove("KUBE_AWS_IAM_CONTROLLER_POD_REGION")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let mut pipe = child.stdin.take().unwrap();
    pipe.write_all(stdin).unwrap();
    drop(pipe);
    child.wait_with_output().unwrap()
}

/// `… | inject - | kubectl apply -f -`: stdin in, the same bytes as the library out, and
/// again with no path at all.
#[test]
fn binary_reads_stdin_and_prints_what_the_library_does() {
    let dir = cases_dir().join("process-default");
    let input = read(&dir.join("input.yaml"));
    let expected = run(&parse(&case_argv(&dir))).stdout;
    for args in [vec!["inject", "-"], vec!["inject"]] {
        let out = bin(&args, input.as_bytes());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        assert_eq!(String::from_utf8(out.stdout).unwrap(), expected);
        assert!(out.stderr.is_empty());
    }
}

/// A broken bundle: exit 2, nothing on stdout, the error on stderr names the file and the
/// document and never echoes the input.
#[test]
fn binary_fails_a_broken_bundle_with_nothing_on_stdout() {
    let input = read(&cases_dir().join("hostile-non-map-spec/input.yaml"));
    let out = bin(&["inject", "--role", "r", "-"], input.as_bytes());
    assert_eq!(out.status.code(), Some(2));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.is_empty(), "printed: {printed}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("(stdin), document 1 (line 1) (Deployment spec-string): spec.template.spec: not a mapping"), "{stderr}");
    assert!(!stderr.contains(CANARY), "{stderr}");
    // Binary garbage on stdin.
    let out = bin(&["inject"], &[0xff, 0xfe, 0, 1, 2, b'\n', 0x80]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("(stdin): not UTF-8 text"));
}

/// A directory is read in name order (*.yaml and *.yml only); files and `-` mix.
#[test]
fn binary_reads_directories_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("b.yml"), "kind: B\n").unwrap();
    std::fs::write(dir.join("a.yaml"), "kind: A\n").unwrap();
    std::fs::write(dir.join("c.txt"), "kind: C\n").unwrap();
    let d = dir.display().to_string();
    let out = bin(&["inject", &d, "-"], b"kind: Stdin\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "kind: A\n---\nkind: B\n---\nkind: Stdin\n"
    );
    let out = bin(&["inject", "/nonexistent/inject/path"], b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/inject/path"));
}

/// The before/after examples in examples/delivery/ are what `inject` makes of them.
#[test]
fn examples_are_what_inject_prints() {
    let dir = repo_root().join("examples/delivery");
    let mut checked = 0;
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".yaml") else {
            continue;
        };
        if stem.ends_with(".injected") {
            continue;
        }
        let out = run(&parse(&[path.display().to_string()]));
        assert_eq!(out.code, 0, "{name}: {}", out.stderr);
        let after = dir.join(format!("{stem}.injected.yaml"));
        if std::env::var_os("UPDATE_EXAMPLES").is_some() {
            std::fs::write(&after, &out.stdout).unwrap();
        }
        assert_eq!(
            out.stdout,
            read(&after),
            "{} is not what inject prints for {name}; regenerate with `make examples`",
            after.display()
        );
        checked += 1;
    }
    assert!(checked >= 2, "examples/delivery/ has {checked} examples");
}

/// Content on the `---` line (flow style, or a comment) is printed once, not twice.
#[test]
fn content_on_the_marker_line_is_not_duplicated() {
    let text = "kind: ConfigMap\n--- {apiVersion: v1, kind: Pod, metadata: {name: p, labels: {kube-aws-iam-controller/role: r}}, spec: {containers: [{name: c, image: i}]}}\n--- # heading comment\napiVersion: v1\nkind: Pod\nmetadata: {name: q, labels: {kube-aws-iam-controller/role: r}}\nspec: {containers: [{name: c, image: i}]}\n";
    let out = inject::inject_text("m", text, &options(), None).unwrap();
    assert_eq!(out.mutated, 2);
    let printed = &out.text;
    assert_eq!(printed.matches("name: p").count(), 1, "{printed}");
    assert_eq!(printed.matches("# heading comment").count(), 1, "{printed}");
    let start = "kind: ConfigMap\n---\napiVersion: v1\nkind: Pod\n";
    assert!(printed.starts_with(start), "{printed}");
    let heading = "---\n# heading comment\napiVersion: v1\n";
    assert!(printed.contains(heading), "{printed}");
    let again = inject::inject_text("m", printed, &options(), None).unwrap();
    assert_eq!(&again.text, printed);
}
