//! The SDK matrix: real AWS SDKs, as long-lived client processes, authenticating against moto
//! with the files of a kubelet-style Secret volume, and what each does when the volume's
//! credentials are swapped for another role's while it runs:
//!
//! - `endpoint` delivery (the `credentials-server` sidecar on 127.0.0.1): every SDK reports the
//!   new role without a restart, once inside its refresh window;
//! - `process` delivery (`credentials.process`, `credential_process = cat /meta/aws-iam/…`,
//!   run verbatim in a private mount namespace where the volume is at /meta/aws-iam): the same;
//!   and in an environment without `sh` and `cat`, every SDK fails;
//! - the static `credentials` file: every SDK authenticates and none picks up the swap;
//! - a pod template labelled for `endpoint` delivery, mutated, runs from its mutated spec alone
//!   (sidecar command and args, startup probe, app env) with every shell and `cat` made unexecutable.
//!
//! The SDKs: botocore (the core of boto3 and the AWS CLI, from `.venv`), the AWS SDK for
//! JavaScript v3 (`@aws-sdk/client-sts`, pinned in tests/sdk/package-lock.json and installed by
//! `make node`), the AWS SDK for Go v1 and v2 (tests/sdk/go-v1 and go-v2, built by the test
//! from the sources of Debian's golang-github-aws-aws-sdk-go-dev 1.44 and
//! golang-github-aws-aws-sdk-go-v2-dev 1.17 with Debian's Go, installed by `make go`), and Rust
//! aws-config/aws-sdk-sts (this test binary re-run as a client process, so that its environment
//! is a process environment like a pod's and not the test runner's). Those Go SDK versions do
//! not read `AWS_ENDPOINT_URL_STS`, so the Go clients pass it to the SDK as the STS endpoint
//! (moto's); everything about credentials is left to the SDKs' default chains. Both accept an
//! `http` `AWS_CONTAINER_CREDENTIALS_FULL_URI` only on a loopback host, which 127.0.0.1 is.
//!
//! SDKs re-fetch only when their cached credentials are near expiry (botocore from 15 min
//! before, JavaScript v3 from 5 min, Rust from 10–15 s), so the first credentials are written
//! with an Expiration inside each SDK's window (Rust's: a few seconds before it). Go (v1 and v2)
//! has two windows: its endpoint provider re-fetches from 5 min before (v1's `ExpiryWindow`,
//! v2's credentials cache `ExpiryWindow`, both set by the default chain), but its
//! `credential_process` provider has none (0: v1's `processcreds.NewCredentials` and v2's
//! default credentials cache set no window), so it re-runs the process only once the
//! credentials have expired: from a process, Go's first credentials expire 10 s after they are
//! written, and the test checks that Go does not re-run the process before then. moto does not
//! check expiry, so all that is harmless. Each SDK runs in its own thread with its own volume
//! (and sidecar), so a test costs about as long as its slowest SDK (Rust and Go's process
//! delivery, about 10 s); the first run also builds the Go clients (about a minute; cached
//! under target/ afterwards).
//!
//! The mount namespaces need root or unprivileged user namespaces (`unshare --user`).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use aws_sdk_sts::error::DisplayErrorContext;
use jiff::{Timestamp, ToSpan};
use kube_aws_iam_controller::delivery::mutate::{self, MutateOptions};
use kube_aws_iam_controller::delivery::{DELIVERY_ANNOTATION, ROLE_LABEL, TOKEN_ENV};
use kube_aws_iam_controller::domain::secret::{
    self, Credentials, KEY_CREDENTIALS, KEY_JSON, KEY_PROCESS,
};
use serde_json::{Value, json};

use crate::support::moto::{self, Moto, ScratchDir};
use crate::support::repo_root;
use crate::support::volume::SecretVolume;
use crate::support::{harness, sidecar};

/// Marks a run of this test binary as the Rust SDK client (see [`rust_client`]).
const RUST_CLIENT_MARKER: &str = "KUBE_AWS_IAM_CONTROLLER_SDK_MATRIX_RUST_CLIENT";
/// The test whose body becomes the Rust SDK client when the marker is set.
const RUST_CLIENT_HOST_TEST: &str = "sdk_matrix::static_credentials_file_never_refreshes";
/// The command that installs the JavaScript SDK.
const NODE_SETUP_COMMAND: &str = "make node";
/// The command that installs Go and the AWS SDK for Go v1 and v2 (Debian packages).
const GO_SETUP_COMMAND: &str = "make go";
/// The Debian packages `make go` installs.
const GO_PACKAGES: &str =
    "golang-go golang-github-aws-aws-sdk-go-dev golang-github-aws-aws-sdk-go-v2-dev";
/// Where Debian's golang-*-dev packages put their sources: the GOPATH the Go clients build in.
const DEBIAN_GOPATH: &str = "/usr/share/gocode";
/// How long one SDK call (including a client's start) may take on a loaded machine.
const CALL_DEADLINE: Duration = Duration::from_secs(60);
/// How long an SDK may take to enter its refresh window after the swap (Rust: about 10 s).
const REFRESH_DEADLINE: Duration = Duration::from_secs(45);
/// How long the sidecar may take to answer its startup probe.
const READY_DEADLINE: Duration = Duration::from_secs(30);

// The pod side of the contract, written out here rather than taken from the crate, so that a
// change there fails these tests.
/// Where a pod mounts the Secret.
const POD_MOUNT: &str = "/meta/aws-iam";
/// The Secret's `credentials.json` as a pod sees it.
const MOUNTED_JSON: &str = "/meta/aws-iam/credentials.json";
/// The Secret's `credentials.process` as a pod sees it.
const MOUNTED_PROCESS: &str = "/meta/aws-iam/credentials.process";
/// The Secret's `credentials.process`: it names the mounted `credentials.json` absolutely.
const PROCESS_PROFILE: &str =
    "[default]\ncredential_process = cat /meta/aws-iam/credentials.json\n";

// ---------------------------------------------------------------------------------------------
// The tests.

/// `endpoint` delivery: each SDK reads the container-credentials endpoint the sidecar serves
/// from the volume's `credentials.json`, and reports the new role after the swap.
#[test]
fn endpoint_delivery_refreshes_every_sdk_without_restart() {
    matrix("endpoint", |sdk, moto, sessions| {
        let expiration = sdk.first_expiration(Source::Endpoint);
        let mut volume = sessions.first_volume("sdk-endpoint", sdk, expiration);
        let sidecar = sidecar::Sidecar::start_with_token(&volume.file(KEY_JSON), POD_UID);
        wait_until_ready(sidecar.port());
        let mut env = consumer_env(moto);
        env.extend(sidecar.sdk_env());
        let mut client = Client::spawn(sdk, &env, Launch::Plain, sessions);
        swap_and_expect_refresh(&mut client, &mut volume, sessions, Source::Endpoint)
    });
}

/// `process` delivery: each SDK runs the Secret's `credentials.process` as written, in a mount
/// namespace with the volume at its pod path, and reports the new role after the swap.
#[test]
fn process_delivery_refreshes_every_sdk_without_restart() {
    matrix("process", |sdk, moto, sessions| {
        let expiration = sdk.first_expiration(Source::Process);
        let mut volume = sessions.first_volume("sdk-process", sdk, expiration);
        assert_eq!(
            std::fs::read_to_string(volume.file(KEY_PROCESS)).expect("credentials.process"),
            PROCESS_PROFILE,
            "the Secret's credentials.process is not the documented one"
        );
        let env = process_env(moto);
        let root = scratch_root(sdk);
        let launch = Launch::Mounted {
            root: root.path(),
            volume: volume.path(),
        };
        let mut client = Client::spawn(sdk, &env, launch, sessions);
        let refresh = swap_and_expect_refresh(&mut client, &mut volume, sessions, Source::Process);
        if matches!(sdk, Sdk::GoV1 | Sdk::GoV2) {
            // What the docs say of Go: it re-runs the process only once its credentials have
            // expired, not before. (The Secret holds the Expiration in whole seconds.)
            let expiration = Timestamp::from_second(expiration.as_second()).expect("a timestamp");
            let refreshed = Timestamp::now();
            assert!(
                refreshed >= expiration,
                "{sdk:?} re-ran credential_process at {refreshed}, before the first \
                 credentials' Expiration {expiration}: it has an expiry window now; update the \
                 docs' tables"
            );
        }
        refresh
    });
}

/// The static `credentials` file: each SDK authenticates with it and keeps the first role
/// after the swap (what the docs' table says). Also hosts the Rust client (see
/// [`RUST_CLIENT_HOST_TEST`]).
#[test]
fn static_credentials_file_never_refreshes() {
    if std::env::var_os(RUST_CLIENT_MARKER).is_some() {
        return rust_client();
    }
    matrix("static file", |sdk, moto, sessions| {
        let expiration = sdk.first_expiration(Source::StaticFile);
        let mut volume = sessions.first_volume("sdk-static", sdk, expiration);
        let mut env = consumer_env(moto);
        env.push((
            "AWS_SHARED_CREDENTIALS_FILE".into(),
            volume.file(KEY_CREDENTIALS).display().to_string(),
        ));
        let mut client = Client::spawn(sdk, &env, Launch::Plain, sessions);
        let first = client.answer().unwrap_or_else(|e| panic!("{sdk:?}: {e}"));
        assert_eq!(first, sessions.first.arn, "{sdk:?} first call");
        volume.update(sessions.second.secret_data(Timestamp::now() + 1.hour()));
        let swapped = std::fs::read(volume.file(KEY_CREDENTIALS)).expect("credentials");
        assert!(
            contains(&swapped, &sessions.second.creds.access_key_id),
            "the volume's credentials file was not swapped"
        );
        const CALLS: usize = 3;
        for call in 1..=CALLS {
            let arn = client.call().unwrap_or_else(|e| panic!("{sdk:?}: {e}"));
            assert_eq!(
                arn, sessions.first.arn,
                "{sdk:?} call {call} after the swap: the static file is documented as never \
                 refreshing; if an SDK now re-reads it, update the docs' table"
            );
        }
        client.refresh(CALLS, None)
    });
}

/// A pod template labelled for `endpoint` delivery, mutated by the same function `inject` and
/// the webhook use, runs from its mutated spec alone: the sidecar from its container's command,
/// args and env (the fieldRef token resolved to the pod's UID, the mount path pointed at the
/// test volume), ready by its own startup probe command, and each SDK with exactly the app
/// container's env, an empty directory as PATH, and every shell and `cat` unexecutable: an
/// image without a shell. Each SDK then picks up swapped credentials as before.
#[test]
fn mutated_endpoint_pod_runs_every_sdk_without_a_shell() {
    let empty_path = ScratchDir::new("sdk-empty-path");
    matrix("endpoint, mutated pod, no shell", |sdk, moto, sessions| {
        // One pod per SDK, each with its own loopback port as if in its own network namespace.
        let pod = mutated_endpoint_pod(harness::free_port());
        let expiration = sdk.first_expiration(Source::Endpoint);
        let mut volume = sessions.first_volume("sdk-shell-less", sdk, expiration);
        let sidecar = pod.start_sidecar(&volume, sessions);
        let mut env = pod.app_env();
        // Test plumbing only: moto as STS, and no config or credentials file or metadata
        // service to fall back on. No credentials, no PATH entry with a program in it.
        for (k, v) in consumer_env(moto) {
            if !env.iter().any(|(name, _)| *name == k) {
                env.push((k, v));
            }
        }
        env.push(("PATH".into(), empty_path.path().display().to_string()));
        let root = scratch_root(sdk);
        let launch = Launch::ShellLess {
            root: root.path(),
            volume: None,
        };
        let mut client = Client::spawn(sdk, &env, launch, sessions);
        let refresh = swap_and_expect_refresh(&mut client, &mut volume, sessions, Source::Endpoint);
        sidecar.assert_log_has_no_credentials(sessions);
        refresh
    });
    let entries = std::fs::read_dir(empty_path.path())
        .expect("the empty PATH directory")
        .count();
    assert_eq!(entries, 0, "the clients' PATH directory is not empty");
}

/// A Deployment's pod template labelled for `endpoint` delivery (against a `process` default),
/// mutated through the JSON patch the webhook would answer with (`inject` applies the same).
fn mutated_endpoint_pod(port: u16) -> PodSpecView {
    let options = MutateOptions {
        sidecar_port: port,
        ..MutateOptions::new("registry.example.com/kube-aws-iam-controller:test")
    };
    let template = json!({
        "metadata": {
            "labels": {"app": "shell-less", ROLE_LABEL: "app-role"},
            "annotations": {DELIVERY_ANNOTATION: "endpoint"},
        },
        "spec": {"containers": [{"name": "app", "image": "gcr.io/distroless/static"}]},
    });
    let patch = mutate::patch(&template, &options)
        .unwrap_or_else(|e| panic!("mutating the labelled template: {e}"))
        .expect("a labelled template is mutated");
    let mut pod = template;
    json_patch::patch(&mut pod, &patch).expect("the mutation's patch applies to its input");
    PodSpecView::new(&pod)
}

/// The other side of the table: `process` delivery needs `cat` (and for some SDKs `sh`), so in
/// the same shell-less environment, with the volume mounted where `credentials.process` looks,
/// every SDK fails to authenticate. Also shows that the shell-less environment above really
/// lacks them.
#[test]
fn process_delivery_fails_without_a_shell() {
    let moto = Moto::start();
    let sessions = Sessions::assume(&moto);
    let empty_path = ScratchDir::new("sdk-empty-path");
    for_each_sdk(|sdk| {
        let expiration = Timestamp::now() + 1.hour();
        let volume = sessions.first_volume("sdk-process-shell-less", sdk, expiration);
        let mut env = process_env(&moto);
        env.push(("PATH".into(), empty_path.path().display().to_string()));
        let root = scratch_root(sdk);
        let launch = Launch::ShellLess {
            root: root.path(),
            volume: Some(volume.path()),
        };
        let mut client = Client::spawn(sdk, &env, launch, &sessions);
        match client.answer() {
            Ok(arn) => {
                panic!("{sdk:?} authenticated as {arn} through credential_process without a shell")
            }
            Err(e) => eprintln!(
                "process delivery without a shell: {sdk:?} ({}) failed as expected: {e}",
                client.version
            ),
        }
        client.refresh(0, None)
    });
    assert_eq!(
        moto.calls("GetCallerIdentity"),
        0,
        "an SDK reached STS without credentials: {:?}",
        moto.counts()
    );
}

/// The parts of a mutated pod template that run: the sidecar and the app container.
struct PodSpecView {
    sidecar: Value,
    app: Value,
    role: String,
}

/// Where the image has the sidecar's own binary: the sidecar's command and its probe name it
/// (the tests run the `credentials-server` binary cargo built in its place).
const IMAGE_SIDECAR_BINARY: &str = "/usr/local/bin/credentials-server";

impl PodSpecView {
    fn new(pod: &Value) -> PodSpecView {
        let sidecar = pod
            .pointer("/spec/initContainers/0")
            .cloned()
            .unwrap_or_else(|| panic!("no init container in the mutated template: {pod:#}"));
        assert_eq!(sidecar["name"], "aws-credentials-server", "{sidecar:#}");
        assert_eq!(
            sidecar["restartPolicy"], "Always",
            "a native sidecar: {sidecar:#}"
        );
        assert_eq!(
            strings(&sidecar["command"]),
            [IMAGE_SIDECAR_BINARY],
            "the sidecar runs its own binary, not the image's ENTRYPOINT: {sidecar:#}"
        );
        let app = pod
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .and_then(|c| c.iter().find(|c| c["name"] == "app"))
            .cloned()
            .unwrap_or_else(|| panic!("no app container in the mutated template: {pod:#}"));
        assert!(
            app.get("volumeMounts").is_none(),
            "endpoint delivery mounts nothing into the app: {app:#}"
        );
        let volume = pod
            .pointer("/spec/volumes")
            .and_then(Value::as_array)
            .and_then(|v| v.iter().find(|v| v["name"] == "aws-iam-credentials"))
            .unwrap_or_else(|| panic!("no aws-iam-credentials volume: {pod:#}"));
        let mount = sidecar["volumeMounts"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["name"] == "aws-iam-credentials"))
            .unwrap_or_else(|| panic!("the sidecar does not mount the volume: {sidecar:#}"));
        assert_eq!(mount["mountPath"], POD_MOUNT, "{sidecar:#}");
        assert!(mount.get("subPath").is_none(), "{sidecar:#}");
        PodSpecView {
            role: volume
                .pointer("/secret/secretName")
                .and_then(Value::as_str)
                .unwrap_or_else(|| panic!("the volume is not a Secret volume: {volume:#}"))
                .to_string(),
            sidecar,
            app,
        }
    }

    /// Runs the sidecar exactly as its container says, with the volume's `credentials.json` in
    /// place of the mount path, and waits for its own startup probe command.
    fn start_sidecar(&self, volume: &SecretVolume, sessions: &Sessions) -> PodSidecar {
        assert_eq!(
            self.role, "app-role",
            "the volume is the labelled role's Secret"
        );
        let args: Vec<String> = strings(&self.sidecar["args"])
            .into_iter()
            .map(|arg| {
                if arg == MOUNTED_JSON {
                    volume.file(KEY_JSON).display().to_string()
                } else {
                    arg
                }
            })
            .collect();
        assert!(
            args.contains(&volume.file(KEY_JSON).display().to_string()),
            "the sidecar's args do not name {MOUNTED_JSON}: {args:?}"
        );
        let mut probe = strings(&self.sidecar["startupProbe"]["exec"]["command"]);
        assert_eq!(
            probe.first().map(String::as_str),
            Some(IMAGE_SIDECAR_BINARY),
            "the startup probe runs the binary itself (no shell): {probe:?}"
        );
        probe.remove(0);
        assert_eq!(
            listen_flag(&probe),
            Some(self.listen()),
            "the startup probe asks another address than the sidecar listens on: {probe:?}"
        );
        PodSidecar::start(
            &args,
            &resolve_env(&self.sidecar),
            &(sidecar::binary().to_path_buf(), probe),
            sessions,
        )
    }

    /// The address in the sidecar's `--listen` argument.
    fn listen(&self) -> String {
        listen_flag(&strings(&self.sidecar["args"]))
            .unwrap_or_else(|| panic!("the sidecar has no --listen: {:#}", self.sidecar))
    }

    /// The app container's env, resolved as kubelet would for this pod; it must name the
    /// sidecar's address and carry the same token.
    fn app_env(&self) -> Vec<(String, String)> {
        let env = resolve_env(&self.app);
        let get = |name: &str| {
            env.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("the app container has no {name}: {:#}", self.app))
        };
        assert_eq!(
            get("AWS_CONTAINER_CREDENTIALS_FULL_URI"),
            format!("http://{}/credentials", self.listen())
        );
        assert_eq!(get(TOKEN_ENV), POD_UID);
        let sidecar_env = resolve_env(&self.sidecar);
        assert!(
            sidecar_env.contains(&(TOKEN_ENV.to_string(), POD_UID.to_string())),
            "the sidecar does not get the same token: {:#}",
            self.sidecar
        );
        env
    }
}

/// The value after `--listen` in `args`.
fn listen_flag(args: &[String]) -> Option<String> {
    args.iter()
        .position(|a| a == "--listen")
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// A JSON array of strings.
fn strings(value: &Value) -> Vec<String> {
    serde_json::from_value(value.clone())
        .unwrap_or_else(|e| panic!("not an array of strings ({e}): {value}"))
}

/// A container's `env`, with `fieldRef: metadata.uid` resolved to [`POD_UID`] (the only
/// reference the mutation may use: anything else fails here).
fn resolve_env(container: &Value) -> Vec<(String, String)> {
    let Some(env) = container.get("env") else {
        return Vec::new();
    };
    env.as_array()
        .unwrap_or_else(|| panic!("env is not a list: {container:#}"))
        .iter()
        .map(|var| {
            let name = var["name"].as_str().expect("env name").to_string();
            let value = match (
                var.get("value"),
                var.pointer("/valueFrom/fieldRef/fieldPath"),
            ) {
                (Some(value), None) => value.as_str().expect("env value").to_string(),
                (None, Some(path)) if path == "metadata.uid" => POD_UID.to_string(),
                _ => panic!("env {name} is neither a value nor the pod's UID: {var}"),
            };
            (name, value)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The two roles whose credentials the volume holds, before and after the swap.

/// The pod UID the fieldRef token resolves to in these tests.
const POD_UID: &str = "5f0d8a52-4c1e-4a7e-9b8e-2f6f3d1c0a11";

struct Session {
    /// What GetCallerIdentity answers for these credentials.
    arn: String,
    role_arn: String,
    creds: Credentials,
}

impl Session {
    /// The Secret's data as the controller writes it, with `expiration` in place of the real
    /// one (moto never checks it; the SDKs decide when to refresh by it).
    fn secret_data(&self, expiration: Timestamp) -> BTreeMap<String, Vec<u8>> {
        let creds = Credentials {
            expiration,
            ..self.creds.clone()
        };
        secret::encode(&creds, &self.role_arn, 1)
    }
}

struct Sessions {
    first: Session,
    second: Session,
}

impl Sessions {
    fn assume(moto: &Moto) -> Sessions {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let assume = |role: &str| {
            let role_arn = format!("arn:aws:iam::123456789012:role/{role}");
            let out = runtime
                .block_on(
                    moto::sts_client(&moto.endpoint())
                        .assume_role()
                        .role_arn(&role_arn)
                        .role_session_name("sdk-matrix")
                        .send(),
                )
                .unwrap_or_else(|e| panic!("AssumeRole {role}: {}", DisplayErrorContext(e)));
            let user = out.assumed_role_user().expect("AssumedRoleUser");
            Session {
                arn: user.arn().to_string(),
                role_arn,
                creds: moto::credentials_from_sts(out.credentials().expect("Credentials")),
            }
        };
        let sessions = Sessions {
            first: assume("sdk-matrix-first"),
            second: assume("sdk-matrix-second"),
        };
        assert_ne!(sessions.first.arn, sessions.second.arn);
        sessions
    }

    /// A volume (named `label` and the SDK) holding the first session, expiring at `expiration`.
    fn first_volume(&self, label: &str, sdk: Sdk, expiration: Timestamp) -> SecretVolume {
        let name = format!("{label}-{}", sdk.name());
        SecretVolume::with(&name, self.first.secret_data(expiration))
    }

    /// Every credential value of both sessions, for redaction.
    fn secrets(&self) -> Vec<String> {
        [&self.first.creds, &self.second.creds]
            .into_iter()
            .flat_map(|c| [&c.access_key_id, &c.secret_access_key, &c.session_token])
            .filter(|s| !s.is_empty())
            .cloned()
            .collect()
    }

    /// `text` with every credential value of both sessions replaced by `<redacted>`.
    fn redact(&self, text: &str) -> String {
        redact(text, &self.secrets())
    }
}

fn redact(text: &str, secrets: &[String]) -> String {
    secrets.iter().fold(text.to_string(), |text, secret| {
        text.replace(secret.as_str(), "<redacted>")
    })
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

// ---------------------------------------------------------------------------------------------
// The SDKs.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sdk {
    Botocore,
    JavaScriptV3,
    GoV1,
    GoV2,
    Rust,
}

const SDKS: [Sdk; 5] = [
    Sdk::Botocore,
    Sdk::JavaScriptV3,
    Sdk::GoV1,
    Sdk::GoV2,
    Sdk::Rust,
];

/// Where an SDK's credentials come from in a test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    /// The `credentials-server` sidecar (`AWS_CONTAINER_CREDENTIALS_FULL_URI`).
    Endpoint,
    /// `credential_process` in `credentials.process`.
    Process,
    /// The static `credentials` file.
    StaticFile,
}

impl Sdk {
    fn name(self) -> &'static str {
        match self {
            Sdk::Botocore => "botocore",
            Sdk::JavaScriptV3 => "javascript-v3",
            Sdk::GoV1 => "go-v1",
            Sdk::GoV2 => "go-v2",
            Sdk::Rust => "rust",
        }
    }

    /// An Expiration for the first credentials from `source` that puts this SDK inside its
    /// refresh window (or, for Rust, and Go's `credential_process`, a few seconds before it),
    /// yet leaves the client time to start.
    fn first_expiration(self, source: Source) -> Timestamp {
        match (self, source) {
            // Go (v1 and v2) re-runs `credential_process` only once its credentials have
            // expired (no expiry window), so they expire a few seconds after the start.
            (Sdk::GoV1 | Sdk::GoV2, Source::Process) => Timestamp::now() + 10.seconds(),
            // botocore: from 15 min before; JavaScript v3 and Go's endpoint provider: from
            // 5 min before.
            (Sdk::Botocore | Sdk::JavaScriptV3 | Sdk::GoV1 | Sdk::GoV2, _) => {
                Timestamp::now() + 2.minutes()
            }
            // Rust: from 10 s (plus up to 5 s of jitter) before.
            (Sdk::Rust, _) => Timestamp::now() + 16.seconds(),
        }
    }

    /// Whether the first call after the swap must already report the new role. botocore
    /// re-fetches in the call itself; so does Go from the endpoint (inside its 5 min window
    /// from the start), while from `credential_process` it waits for the credentials to
    /// expire; JavaScript v3 (the pinned version) answers that call with its cached credentials
    /// and re-fetches in the background for the calls after it; Rust re-fetches only once
    /// inside its 10–15 s buffer.
    fn refreshes_on_next_call(self, source: Source) -> bool {
        match self {
            Sdk::Botocore => true,
            Sdk::GoV1 | Sdk::GoV2 => source == Source::Endpoint,
            Sdk::JavaScriptV3 | Sdk::Rust => false,
        }
    }

    /// The program and arguments of a client process.
    fn command(self) -> (PathBuf, Vec<String>) {
        let sdk_dir = repo_root().join("tests").join("sdk");
        match self {
            Sdk::Botocore => (
                moto::venv_bin("python"),
                vec![sdk_dir.join("botocore_client.py").display().to_string()],
            ),
            Sdk::JavaScriptV3 => {
                let installed = sdk_dir
                    .join("node_modules")
                    .join("@aws-sdk")
                    .join("client-sts")
                    .join("package.json");
                assert!(
                    installed.is_file(),
                    "{} is missing: the JavaScript SDK is not installed. Run \
                     `{NODE_SETUP_COMMAND}` (or `make test`, which runs it) in {}",
                    installed.display(),
                    repo_root().display()
                );
                (
                    which("node"),
                    vec![sdk_dir.join("sts_client.mjs").display().to_string()],
                )
            }
            Sdk::GoV1 | Sdk::GoV2 => (go_client(self), Vec::new()),
            Sdk::Rust => (
                std::env::current_exe().expect("the test binary's path"),
                vec![
                    RUST_CLIENT_HOST_TEST.into(),
                    "--exact".into(),
                    "--nocapture".into(),
                    "--test-threads=1".into(),
                ],
            ),
        }
    }
}

/// A Go client's binary: `tests/sdk/go-v1` or `tests/sdk/go-v2` built once per test run (the
/// first lane to need it builds it, the others wait) into this test binary's scratch directory
/// under target/, offline, in GOPATH mode from the sources Debian's packages install under
/// [`DEBIAN_GOPATH`]: no Go module proxy is needed. Statically linked (no cgo), like a Go
/// binary in a distroless image. Panics, naming [`GO_SETUP_COMMAND`], when Go or the SDK's
/// sources are missing: the Go lanes are never skipped.
fn go_client(sdk: Sdk) -> PathBuf {
    static V1: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    static V2: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let (built, sources) = match sdk {
        Sdk::GoV1 => (&V1, "github.com/aws/aws-sdk-go/service/sts"),
        Sdk::GoV2 => (&V2, "github.com/aws/aws-sdk-go-v2/service/sts"),
        _ => unreachable!("{sdk:?} is not a Go SDK"),
    };
    built
        .get_or_init(|| build_go_client(sdk, sources))
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn build_go_client(sdk: Sdk, sources: &str) -> Result<PathBuf, String> {
    let setup = format!(
        "run `{GO_SETUP_COMMAND}` (or `make test`, which runs it) in {}: it installs the \
         Debian packages {GO_PACKAGES}",
        repo_root().display()
    );
    let go = find_on_path("go").ok_or_else(|| format!("go is not on PATH; {setup}"))?;
    let gopath = Path::new(DEBIAN_GOPATH);
    for dir in [sources, "github.com/aws/aws-sdk-go-v2/config"] {
        let dir = gopath.join("src").join(dir);
        if !dir.is_dir() {
            return Err(format!("{} is missing; {setup}", dir.display()));
        }
    }
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sdk-go");
    std::fs::create_dir_all(&out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    let binary = out_dir.join(format!("{}-client", sdk.name()));
    // Built under a name of its own, then renamed: another test run may be building too.
    let partial = out_dir.join(format!("{}-client.{}", sdk.name(), std::process::id()));
    let started = Instant::now();
    let output = Command::new(&go)
        .args(["build", "-trimpath", "-o"])
        .arg(&partial)
        .arg(".")
        .current_dir(repo_root().join("tests").join("sdk").join(sdk.name()))
        .env("GO111MODULE", "off")
        .env("GOPATH", gopath)
        .env("GOCACHE", out_dir.join("cache"))
        .env("GOFLAGS", "")
        .env("GOPROXY", "off")
        .env("GOENV", "off")
        .env("CGO_ENABLED", "0")
        .env_remove("GOOS")
        .env_remove("GOARCH")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running {}: {e}; {setup}", go.display()))?;
    if !output.status.success() {
        let _ = std::fs::remove_file(&partial);
        return Err(format!(
            "building the {sdk:?} client with {} failed ({}); {setup}:\n{}{}",
            go.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    std::fs::rename(&partial, &binary).map_err(|e| format!("{}: {e}", binary.display()))?;
    eprintln!("built the {sdk:?} client in {:.1?}", started.elapsed());
    Ok(binary)
}

/// The Rust SDK client: the body of [`RUST_CLIENT_HOST_TEST`] when this binary is run by
/// [`Client::spawn`]. aws-config reads its settings only from the process environment (its
/// injectable environment is crate-private), so the client is a process of its own, with the
/// environment a pod's container would have. Prints `ARN …`/`ERROR …` like the other clients.
fn rust_client() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let config =
        runtime.block_on(aws_config::defaults(aws_config::BehaviorVersion::latest()).load());
    let client = aws_sdk_sts::Client::new(&config);
    println!(
        "VERSION aws-config {}, aws-sdk-sts {}",
        locked_version("aws-config"),
        locked_version("aws-sdk-sts")
    );
    let call = || match runtime.block_on(client.get_caller_identity().send()) {
        Ok(out) => println!("ARN {}", out.arn().unwrap_or("<none>")),
        Err(e) => println!(
            "ERROR {}",
            DisplayErrorContext(&e)
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        ),
    };
    call();
    for line in std::io::stdin().lock().lines() {
        if line.is_err() {
            break;
        }
        call();
    }
}

/// The version of `package` in Cargo.lock (what this binary was built with).
fn locked_version(package: &str) -> &'static str {
    let lock = include_str!("../../Cargo.lock");
    let entry = format!("name = \"{package}\"\nversion = \"");
    lock.split_once(entry.as_str())
        .and_then(|(_, rest)| rest.split_once('"'))
        .map_or("(not in Cargo.lock)", |(version, _)| version)
}

/// One test of the matrix: moto, both sessions, `lane` for every SDK, and the report.
fn matrix(mode: &str, lane: impl Fn(Sdk, &Moto, &Sessions) -> Refresh + Sync) {
    let started = Instant::now();
    let moto = Moto::start();
    let sessions = Sessions::assume(&moto);
    let results = for_each_sdk(|sdk| lane(sdk, &moto, &sessions));
    report(mode, &results, started);
}

/// An empty directory for a client's mount namespace root.
fn scratch_root(sdk: Sdk) -> ScratchDir {
    ScratchDir::new(&format!("sdk-root-{}", sdk.name()))
}

/// Runs `lane` for every SDK at once, each in its own thread; panics with every failure.
fn for_each_sdk(lane: impl Fn(Sdk) -> Refresh + Sync) -> Vec<Refresh> {
    let lane = &lane;
    std::thread::scope(|scope| {
        let handles: Vec<_> = SDKS
            .iter()
            .map(|&sdk| {
                let run = move || {
                    // The client's program first (installed, or built for Go), so that the
                    // lane's credentials are written only once it can start.
                    sdk.command();
                    lane(sdk)
                };
                (sdk, scope.spawn(run))
            })
            .collect();
        let mut results = Vec::new();
        let mut failures = Vec::new();
        for (sdk, handle) in handles {
            match handle.join() {
                Ok(result) => results.push(result),
                Err(panic) => failures.push(format!(
                    "{sdk:?}: {}",
                    panic
                        .downcast_ref::<String>()
                        .map(String::as_str)
                        .or_else(|| panic.downcast_ref::<&str>().copied())
                        .unwrap_or("panicked")
                )),
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
        results
    })
}

/// How an SDK took the swapped credentials.
struct Refresh {
    sdk: Sdk,
    /// Calls after the swap: until the new role was reported, or all of them if it never was.
    calls: usize,
    /// When the new role was reported, after the swap (None: never).
    after: Option<Duration>,
    /// The SDK's version, as the client reported it.
    version: String,
}

fn report(mode: &str, results: &[Refresh], started: Instant) {
    for r in results {
        match r.after {
            Some(after) => eprintln!(
                "{mode}: {:?} ({}) reported the new role on call {} after the swap, \
                 {after:.1?} after it",
                r.sdk, r.version, r.calls
            ),
            None => eprintln!(
                "{mode}: {:?} ({}) still reported the first role on all {} calls after the swap",
                r.sdk, r.version, r.calls
            ),
        }
    }
    eprintln!("{mode}: took {:.1?}", started.elapsed());
}

/// The first call must report the first role; after the swap the SDK must report the second
/// role without a restart: on the very next call where the first credentials were inside its
/// refresh window from the start, else once it enters the window (before they expire).
fn swap_and_expect_refresh(
    client: &mut Client,
    volume: &mut SecretVolume,
    sessions: &Sessions,
    source: Source,
) -> Refresh {
    let sdk = client.sdk;
    let first = client
        .answer()
        .unwrap_or_else(|e| panic!("{sdk:?} first call: {e}"));
    assert_eq!(first, sessions.first.arn, "{sdk:?} first call");
    volume.update(sessions.second.secret_data(Timestamp::now() + 1.hour()));
    let swapped = Instant::now();
    let mut calls = 0;
    loop {
        calls += 1;
        let arn = client
            .call()
            .unwrap_or_else(|e| panic!("{sdk:?} call {calls} after the swap: {e}"));
        if arn == sessions.second.arn {
            return client.refresh(calls, Some(swapped.elapsed()));
        }
        assert_eq!(arn, sessions.first.arn, "{sdk:?} call {calls}");
        assert!(
            !sdk.refreshes_on_next_call(source),
            "{sdk:?} still reports the first role on the first call after the swap"
        );
        assert!(
            swapped.elapsed() < REFRESH_DEADLINE,
            "{sdk:?} still reports the first role {REFRESH_DEADLINE:?} after the swap \
             ({calls} calls)"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

// ---------------------------------------------------------------------------------------------
// Environments.

/// What every client gets besides its credentials: moto's endpoint, a region, no config file,
/// no instance metadata, no proxy. No credentials and no shared credentials file.
fn consumer_env(moto: &Moto) -> Vec<(String, String)> {
    crate::support::moto::consumer_env(&moto.endpoint())
}

/// `consumer_env` plus what `process` delivery gives a container: the profile file naming
/// `credentials.process` (Java's variable too).
fn process_env(moto: &Moto) -> Vec<(String, String)> {
    let mut env = consumer_env(moto);
    env.retain(|(k, _)| k != "AWS_SHARED_CREDENTIALS_FILE");
    env.push(("AWS_SHARED_CREDENTIALS_FILE".into(), MOUNTED_PROCESS.into()));
    env.push((
        "AWS_CREDENTIAL_PROFILES_FILE".into(),
        MOUNTED_PROCESS.into(),
    ));
    env
}

/// `.venv`-independent lookup of a program on the test's PATH, as an absolute path.
fn which(program: &str) -> PathBuf {
    find_on_path(program)
        .unwrap_or_else(|| panic!("{program} is not on PATH; install it (Node.js 18 or later)"))
}

/// `program` in the first directory of the test's PATH that has it.
fn find_on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

// ---------------------------------------------------------------------------------------------
// The credentials endpoint sidecar.

/// Polls the sidecar's startup probe (`credentials-server --probe`) until it passes.
fn wait_until_ready(port: u16) {
    let deadline = Instant::now() + READY_DEADLINE;
    loop {
        let (code, out) = sidecar::probe(port);
        if code == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the sidecar on port {port} is not ready after {READY_DEADLINE:?}: exit {code}, {out}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The sidecar container of a mutated pod, run as its spec says (args under the image's
/// ENTRYPOINT, env, startup probe command) rather than with the fixed arguments of
/// `support::sidecar`. Killed on drop.
struct PodSidecar {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl PodSidecar {
    /// Starts the sidecar binary (the container's command) with `args` (the container's args)
    /// and `env` as its whole environment, and waits until the startup probe `probe` (program
    /// and arguments) exits 0.
    fn start(
        args: &[String],
        env: &[(String, String)],
        probe: &(PathBuf, Vec<String>),
        sessions: &Sessions,
    ) -> PodSidecar {
        let mut child = Command::new(sidecar::binary())
            .args(args)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting credentials-server");
        let log = collect(child.stderr.take());
        let mut sidecar = PodSidecar { child, log };
        sidecar.wait_ready(&probe.0, &probe.1, sessions);
        sidecar
    }

    /// Runs the startup probe `program args` until it exits 0, as kubelet would.
    fn wait_ready(&mut self, program: &Path, args: &[String], sessions: &Sessions) {
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "credentials-server exited with {status} before it was ready; its log:\n{}",
                    sessions.redact(&self.log())
                );
            }
            let status = Command::new(program)
                .args(args)
                .env_clear()
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap_or_else(|e| panic!("running the probe {}: {e}", program.display()));
            if status.success() {
                // Not another server's answer: this one is still running.
                if let Ok(Some(status)) = self.child.try_wait() {
                    panic!("credentials-server exited with {status} though the probe passed");
                }
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the startup probe still fails after {READY_DEADLINE:?} ({status}); the \
                 sidecar's log:\n{}",
                sessions.redact(&self.log())
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl PodSidecar {
    /// Its stderr so far.
    fn log(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .join("\n")
    }

    /// The sidecar served both sessions to an SDK; its log must name neither's secrets.
    fn assert_log_has_no_credentials(&self, sessions: &Sessions) {
        let log = self.log();
        assert!(!log.is_empty(), "the sidecar logged nothing");
        let leaked = sessions
            .secrets()
            .iter()
            .filter(|s| log.contains(s.as_str()))
            .count();
        assert_eq!(
            leaked,
            0,
            "the sidecar's log holds credential values:\n{}",
            sessions.redact(&log)
        );
    }
}

impl Drop for PodSidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Client processes.

/// How a client process is started.
enum Launch<'a> {
    /// Directly, with the test's PATH.
    Plain,
    /// In a private mount namespace (see [`MOUNT_SCRIPT`]) rooted at the empty scratch
    /// directory `root`, with the test's PATH, and `volume` mounted at /meta/aws-iam, the
    /// Secret's mount path in a pod: `credentials.process` runs as written
    /// (`cat /meta/aws-iam/credentials.json`) and sees the volume's swaps.
    Mounted { root: &'a Path, volume: &'a Path },
    /// Like an image without a shell: the namespace has every shell and `cat` replaced by an
    /// unexecutable file, the environment is only the client's `env` (no PATH unless it has
    /// one), and `volume`, if any, is mounted at /meta/aws-iam.
    ShellLess {
        root: &'a Path,
        volume: Option<&'a Path>,
    },
}

/// The programs an image without a shell lacks, in every directory they are usually in.
const SHELL_PROGRAMS: [&str; 8] = ["sh", "dash", "bash", "ash", "zsh", "ksh", "busybox", "cat"];
const PROGRAM_DIRS: [&str; 5] = ["/bin", "/usr/bin", "/sbin", "/usr/sbin", "/usr/local/bin"];

/// Builds the namespace's root in `$1` (a tmpfs with every top-level entry of / bind-mounted
/// or re-linked), binds the volume `$2` (if not empty) at `$3`, covers each existing path
/// between `--hide` and `--` with /dev/null (a character device: executing it fails), and runs
/// the arguments after `--` in that root with the environment the script was given. Its own
/// tools are found on the PATH `$4`. Private propagation: nothing is visible outside.
const MOUNT_SCRIPT: &str = r#"set -eu
root=$1 volume=$2 mount_path=$3
if [ -n "${PATH+set}" ]; then client_path=$PATH; else client_path=; fi
had_path=${PATH+set}
PATH=$4
shift 4
mount -t tmpfs sdk-matrix-root "$root"
for entry in /*; do
  name=${entry#/}
  if [ -L "$entry" ]; then
    ln -s "$(readlink "$entry")" "$root/$name"
  elif [ -d "$entry" ]; then
    mkdir "$root/$name"
    mount --rbind "$entry" "$root/$name"
  fi
done
if [ -n "$volume" ]; then
  mkdir -p "$root$mount_path"
  mount --bind "$volume" "$root$mount_path"
fi
[ "$1" = --hide ] && shift
while [ "$1" != -- ]; do
  if [ -e "$root$1" ]; then mount --bind /dev/null "$root$1"; fi
  shift
done
shift
chroot=$(command -v chroot)
if [ -n "$had_path" ]; then PATH=$client_path; else unset PATH; fi
exec "$chroot" "$root" "$@"
"#;

/// A long-lived SDK client process: it calls GetCallerIdentity at start and once per line on
/// its stdin, printing `ARN …` or `ERROR …`. Killed on drop.
struct Client {
    sdk: Sdk,
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    log: Arc<Mutex<Vec<String>>>,
    /// Credential values to keep out of failure messages.
    secrets: Vec<String>,
    /// What the client said it is (its `VERSION …` line).
    version: String,
}

impl Client {
    fn spawn(sdk: Sdk, env: &[(String, String)], launch: Launch, sessions: &Sessions) -> Client {
        let (program, args) = sdk.command();
        let mut env = env.to_vec();
        if sdk == Sdk::Rust {
            env.push((RUST_CLIENT_MARKER.into(), "1".into()));
        }
        let mut command = match &launch {
            Launch::Plain => Command::new(&program),
            Launch::Mounted { root, volume } => in_namespace(root, Some(volume), false),
            Launch::ShellLess { root, volume } => in_namespace(root, *volume, true),
        };
        if !matches!(launch, Launch::Plain) {
            command.arg(&program);
        }
        command.args(&args).env_clear();
        match launch {
            Launch::Plain | Launch::Mounted { .. } => {
                command.env("PATH", std::env::var_os("PATH").unwrap_or_default());
            }
            // The namespace's own tools (unshare, mount, chroot) are found by absolute path.
            Launch::ShellLess { .. } => {}
        }
        let mut child = command
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting the {sdk:?} client {}: {e}", program.display()));
        let stdin = child.stdin.take().expect("piped stdin");
        let (tx, lines) = mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let log = collect(child.stderr.take());
        let secrets = sessions.secrets();
        Client {
            sdk,
            child,
            stdin,
            lines,
            log,
            secrets,
            version: String::new(),
        }
    }

    /// How this client took the swap: `calls` after it, the new role reported `after` (or never).
    fn refresh(&self, calls: usize, after: Option<Duration>) -> Refresh {
        let (sdk, version) = (self.sdk, self.version.clone());
        Refresh {
            sdk,
            calls,
            after,
            version,
        }
    }

    /// Asks for one more call and returns its answer.
    fn call(&mut self) -> Result<String, String> {
        self.stdin
            .write_all(b"\n")
            .and_then(|()| self.stdin.flush())
            .map_err(|e| format!("writing to the client: {e}; {}", self.diagnostics()))?;
        self.answer()
    }

    /// The next call's answer: the caller's ARN, or the SDK's error.
    fn answer(&mut self) -> Result<String, String> {
        let deadline = Instant::now() + CALL_DEADLINE;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(remaining) {
                Ok(line) => {
                    // The Rust client's first line follows the harness's `test NAME ... `.
                    let line = match line.strip_prefix("test ") {
                        Some(rest) => rest.split_once(" ... ").map_or(rest, |(_, out)| out),
                        None => line.as_str(),
                    };
                    if let Some(version) = line.strip_prefix("VERSION ") {
                        self.version = version.to_string();
                        continue;
                    }
                    if let Some(arn) = line.strip_prefix("ARN ") {
                        return Ok(arn.to_string());
                    }
                    if let Some(error) = line.strip_prefix("ERROR ") {
                        return Err(format!(
                            "the SDK failed: {}; {}",
                            redact(error, &self.secrets),
                            self.diagnostics()
                        ));
                    }
                    // Anything else is the test harness's own output (the Rust client).
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "no answer within {CALL_DEADLINE:?}; {}",
                        self.diagnostics()
                    ));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait();
                    return Err(format!(
                        "the client exited ({status:?}); {}",
                        self.diagnostics()
                    ));
                }
            }
        }
    }

    fn diagnostics(&self) -> String {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let tail = log[log.len().saturating_sub(20)..].join("\n");
        format!("its stderr:\n{}", redact(&tail, &self.secrets))
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `unshare … sh -c MOUNT_SCRIPT …`, to which the client's program and arguments are added.
fn in_namespace(root: &Path, volume: Option<&Path>, hide_shells: bool) -> Command {
    let mut c = Command::new(which("unshare"));
    if !is_root() {
        // Without root, a user namespace grants the mount and chroot rights.
        c.args(["--user", "--map-root-user"]);
    }
    c.args(["--mount", "--propagation", "private"])
        .arg(which("sh"))
        .args(["-c", MOUNT_SCRIPT, "sh"])
        .arg(root)
        .arg(volume.map(Path::as_os_str).unwrap_or_default())
        .arg(POD_MOUNT)
        .arg(std::env::var_os("PATH").unwrap_or_default())
        .arg("--hide");
    if hide_shells {
        for dir in PROGRAM_DIRS {
            for program in SHELL_PROGRAMS {
                c.arg(format!("{dir}/{program}"));
            }
        }
    }
    c.arg("--");
    c
}

/// Collects a pipe's lines (until it closes) for failure messages.
fn collect(pipe: Option<impl Read + Send + 'static>) -> Arc<Mutex<Vec<String>>> {
    let log = Arc::new(Mutex::new(Vec::new()));
    if let Some(pipe) = pipe {
        let log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                log.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
    }
    log
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}
