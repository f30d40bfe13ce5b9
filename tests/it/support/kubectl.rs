//! `kubectl kustomize`, for the full tier's tests of how the manifests render. A missing kubectl
//! fails the test with a message saying what to install; nothing is skipped.

use std::path::Path;
use std::process::Output;

use serde_json::Value;

use super::harness::text;
use super::manifests::yaml_docs;
use super::repo_root;

/// `kubectl ARGS…` with no kubeconfig needed; fails clearly when kubectl is missing.
pub fn kubectl(args: &[&str], cwd: &Path) -> Output {
    std::process::Command::new("kubectl")
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap_or_else(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                panic!(
                    "kubectl must be on the PATH for the full test tier (`make test`; kubectl \
                     1.32 or later, from https://kubernetes.io/docs/tasks/tools/ or your package \
                     manager)"
                )
            }
            panic!("running kubectl: {e}")
        })
}

/// The objects `kubectl kustomize DIR` renders.
pub fn kustomize(dir: &Path) -> Vec<Value> {
    let out = kubectl(&["kustomize", &dir.display().to_string()], &repo_root());
    assert!(
        out.status.success(),
        "`kubectl kustomize {}` failed:\n{}",
        dir.display(),
        text(&out.stderr)
    );
    yaml_docs(
        &text(&out.stdout),
        &format!("kubectl kustomize {}", dir.display()),
    )
}
