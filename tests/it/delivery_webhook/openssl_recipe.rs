//! The documented way to make the webhook's certificates without cert-manager (full tier:
//! needs openssl and bash).

use std::process::Command;

use base64::Engine as _;

use super::Webhook;
use crate::support::ScratchDir;
use crate::support::harness::text;
use crate::support::https::{Client, Request, is_wrong_name};
use crate::support::repo_root;

/// The documented way without cert-manager: its `openssl` commands make a pair the webhook
/// serves and that verifies against the CA for the Service's DNS name, and its `ca.b64` is the
/// CA for the caBundle.
#[test]
fn the_documented_openssl_recipe_makes_a_working_pair() {
    let doc = std::fs::read_to_string(repo_root().join("docs/webhook.md")).unwrap();
    let start = doc
        .find("```sh\nSVC=")
        .expect("docs/webhook.md has the openssl recipe");
    let script = &doc[start + "```sh\n".len()..];
    let script = &script[..script.find("```").unwrap()];
    let dir = ScratchDir::new("webhook-openssl");
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .current_dir(dir.path())
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "the documented openssl recipe failed (openssl must be on the PATH for the full test tier, \
         `make test`):\n{}",
        text(&out.stderr)
    );
    let ca = std::fs::read_to_string(dir.path().join("ca.crt")).unwrap();
    let b64 = std::fs::read_to_string(dir.path().join("ca.b64")).unwrap();
    assert!(!b64.contains('\n'));
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .unwrap(),
        ca.as_bytes(),
        "ca.b64 is the CA"
    );
    let webhook = Webhook::start(
        dir.path(),
        &dir.path().join("tls.crt"),
        &dir.path().join("tls.key"),
        &[],
    );
    let mut client = Client::new(webhook.port, &ca);
    for name in [
        "kube-aws-iam-controller-webhook.kube-system.svc",
        "kube-aws-iam-controller-webhook.kube-system.svc.cluster.local",
    ] {
        let reply = client
            .send(&Request {
                path: "/readyz",
                server_name: Some(name),
                ..Request::default()
            })
            .unwrap_or_else(|e| panic!("TLS for {name}: {e}"));
        assert_eq!((reply.status, reply.body.as_str()), (200, "ok\n"));
    }
    let wrong = client.send(&Request {
        path: "/readyz",
        server_name: Some("elsewhere.example"),
        ..Request::default()
    });
    assert!(
        wrong.as_ref().is_err_and(is_wrong_name),
        "the certificate must not verify for another name: {wrong:?}"
    );
}
