//! Shared test helpers: loading fixture cases and applying a plan in memory.
//!
//! kubectl ([`kubectl`]) and the end-to-end environment that starts moto ([`harness::Env`])
//! exist only in the full tier, so a fast-tier test cannot reach them by accident. [`moto`] is
//! compiled in both tiers: its own unit tests (the proxy's parsing, redaction, the message
//! naming the setup command) need no Python.

/// The loopback API server lives in its own crate, shared with the benchmarks.
pub use test_apiserver as apiserver;

pub mod harness;
pub mod https;
#[cfg(feature = "full-tier")]
pub mod kubectl;
pub mod manifests;
pub mod moto;
#[cfg(feature = "full-tier")]
pub mod scrape;
pub mod sidecar;
pub mod sts;
/// Applies a plan in memory (shared with the fuzz targets, so it lives in the crate).
pub use kube_aws_iam_controller::fuzzing::simulate;
pub mod volume;

use std::path::{Path, PathBuf};

use clap::Parser as _;
use jiff::Timestamp;
use kube_aws_iam_controller::cli::{Cli, Command, PlanArgs, config};
use kube_aws_iam_controller::controller::commands::OfflinePlan;
use kube_aws_iam_controller::controller::offline;
use kube_aws_iam_controller::controller::plan::PlanConfig;
use kube_aws_iam_controller::domain::model::{Observed, ObservedSecret};
use kube_aws_iam_controller::domain::secret;

/// A fresh directory under the target's scratch space, removed on drop.
pub struct ScratchDir(tempfile::TempDir);

impl ScratchDir {
    pub fn new(label: &str) -> ScratchDir {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{label}-"))
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap_or_else(|e| panic!("creating a scratch directory {label}-…: {e}"));
        ScratchDir(dir)
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

/// Base ARN the fixtures are planned with unless their `args` name another.
pub const DEFAULT_BASE_ARN: &str = "arn:aws:iam::123456789012:role/";

/// Compares `body` with the insta snapshot `tests/snapshots/<name>.snap`.
pub fn snapshot(name: &str, body: &str) {
    insta::with_settings!({
        snapshot_path => "../../snapshots",
        prepend_module_to_snapshot => false,
        omit_expression => true,
    }, {
        insta::assert_snapshot!(name, body);
    });
}

/// Asserts that `haystack` contains `needle`, showing all of it otherwise.
#[track_caller]
pub fn assert_contains(haystack: &str, needle: &str) {
    assert!(
        haystack.contains(needle),
        "{needle:?} missing from:\n{haystack}"
    );
}

/// The words of a command line written as one string. Only for arguments without spaces: a
/// scratch path (under the checkout's target directory, which may contain spaces) goes
/// separately.
pub fn argv(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// All `fixtures/<case>/` directories, sorted. A plan case has a `now` file; other
/// directories (e.g. `fixtures/webhook/`) hold inputs of other tests.
pub fn fixture_cases() -> Vec<String> {
    let mut cases: Vec<String> = std::fs::read_dir(repo_root().join("fixtures"))
        .expect("fixtures/ exists")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir() && e.path().join("now").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    cases.sort();
    cases
}

/// A fixture case parsed exactly as the CLI would parse `plan --from fixtures/<case> …`.
pub struct Case {
    pub name: String,
    pub dir: PathBuf,
    pub now: Timestamp,
    /// Full command line (after the program name).
    pub argv: Vec<String>,
}

impl Case {
    pub fn load(name: &str) -> Case {
        let dir = repo_root().join("fixtures").join(name);
        let now = read_trimmed(&dir.join("now"));
        let extra: Vec<String> = std::fs::read_to_string(dir.join("args"))
            .map(|s| {
                s.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        let mut argv: Vec<String> = vec![
            "plan".into(),
            "--from".into(),
            dir.display().to_string(),
            "--now".into(),
            now.clone(),
        ];
        if !extra.iter().any(|a| a.starts_with("--base-role-arn")) {
            argv.push("--base-role-arn".into());
            argv.push(DEFAULT_BASE_ARN.into());
        }
        argv.extend(extra);
        Case {
            name: name.to_string(),
            now: now.parse().unwrap_or_else(|e| panic!("{name}/now: {e}")),
            dir,
            argv,
        }
    }

    /// The plan arguments of this case, with `extra` flags appended.
    pub fn parse(&self, extra: &[&str]) -> PlanArgs {
        let argv = std::iter::once("kube-aws-iam-controller".to_string())
            .chain(self.argv.iter().cloned())
            .chain(extra.iter().map(|s| s.to_string()));
        let cli = Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{}: {e}", self.name));
        match cli.command {
            Some(Command::Plan(args)) => *args,
            other => panic!("not a plan command: {other:?}"),
        }
    }
}

impl Case {
    /// The observed state and planner configuration of this case, loaded as `plan` loads them.
    pub fn state(&self) -> (Observed, PlanConfig) {
        let args = self.parse(&[]);
        let from = args.from.as_ref().expect("fixture cases plan --from");
        let loaded = offline::load(from).unwrap_or_else(|e| panic!("{}: {e}", self.name));
        let observed = match args.cluster.namespace() {
            Some(ns) => loaded.observed.scoped(ns),
            None => loaded.observed,
        };
        (
            observed,
            config::plan_config(&args.planner).expect("fixture args are valid"),
        )
    }

    /// What `plan` of this case runs, with `extra` flags appended.
    pub fn offline(&self, extra: &[&str]) -> OfflinePlan {
        config::offline_plan(&self.parse(extra))
            .unwrap_or_else(|e| panic!("{}: {e}", self.name))
            .expect("fixture cases plan --from")
    }
}

fn read_trimmed(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_string()
}

/// A managed Secret (both labels) with no data yet, for building observed states.
pub fn managed_secret_stub(ns: &str, name: &str) -> ObservedSecret {
    let labels = [
        (secret::HERITAGE_LABEL, secret::HERITAGE_VALUE),
        (secret::TYPE_LABEL, secret::TYPE_VALUE),
    ];
    ObservedSecret {
        namespace: ns.into(),
        name: name.into(),
        uid: format!("secret-uid-{ns}-{name}"),
        resource_version: Some("1".into()),
        labels: labels.map(|(k, v)| (k.to_string(), v.to_string())).into(),
        ..ObservedSecret::default()
    }
}
