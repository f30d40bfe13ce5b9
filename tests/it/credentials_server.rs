//! `credentials-server`, the `endpoint` delivery's sidecar, as the compiled binary new pods run
//! against a kubelet-style Secret volume (`..data` symlink swaps): the document it serves, the
//! token check, re-reading on swap without a restart, error documents that never carry the
//! file's content, `/ready` and `--probe`, refusing to start unguarded, and the AWS CLI
//! authenticating against moto through it. The controller's `credentials-server` subcommand,
//! which pods injected by earlier versions run, answers byte for byte the same, refuses the
//! same way and authenticates the CLI too.

use std::process::Stdio;
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use kube_aws_iam_controller::domain::secret::{self, KEY_JSON};

#[cfg(feature = "full-tier")]
use crate::support::moto::{self, Moto};
use crate::support::sidecar::{self, Flavor, Sidecar, TOKEN_ENV};
use crate::support::volume::{SecretVolume, credentials_json};

const DEADLINE: Duration = Duration::from_secs(10);

fn in_an_hour() -> Timestamp {
    Timestamp::now() + SignedDuration::from_hours(1)
}

/// A volume whose `credentials.json` holds credentials marked with `tag`.
fn volume_with(label: &str, tag: &str, expiration: Timestamp) -> SecretVolume {
    SecretVolume::with(label, [(KEY_JSON, document(tag, expiration))])
}

fn document(tag: &str, expiration: Timestamp) -> Vec<u8> {
    let [key, secret, session] = values(tag);
    credentials_json(&key, &secret, &session, expiration)
}

/// The credential values of `tag`, which no error document or log may contain.
fn values(tag: &str) -> [String; 3] {
    [
        format!("ASIA{tag}"),
        format!("secret-{tag}"),
        format!("session-{tag}"),
    ]
}

fn assert_absent(what: &str, text: &str, secrets: &[String]) {
    for secret in secrets {
        assert!(
            !text.contains(secret.as_str()),
            "{what} contains a credential value ({} characters)",
            secret.len()
        );
    }
}

/// Polls `check` until it holds or the deadline passes.
fn eventually(mut check: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < DEADLINE {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn serves_the_mounted_credentials_as_a_container_credentials_document() {
    let expiration = in_an_hour();
    let volume = volume_with("credsrv-serve", "SERVE1", expiration);
    let mut server = Sidecar::start(&volume.file(KEY_JSON));

    let answer = server.credentials();
    assert_eq!(answer.status, 200, "{}", answer.field("Message"));
    assert_eq!(answer.content_type, "application/json");
    assert_eq!(answer.field("AccessKeyId"), "ASIASERVE1");
    assert_eq!(answer.field("SecretAccessKey"), "secret-SERVE1");
    assert_eq!(answer.field("Token"), "session-SERVE1");
    assert_eq!(answer.field("Expiration"), secret::format_time(expiration));
    assert_eq!(answer.field("Code"), "Success");

    let ready = server.get("/ready", None);
    assert_eq!(ready.status, 200);
    assert_absent("/ready", &ready.body, &values("SERVE1"));

    let elsewhere = server.get("/latest/meta-data/", Some(server.token()));
    assert_eq!(elsewhere.status, 404);
    assert_absent("a 404", &elsewhere.body, &values("SERVE1"));
    let post = sidecar::request(server.port(), "POST", "/credentials", Some(server.token()));
    assert_eq!(post.status, 405);
    assert_absent("a 405", &post.body, &values("SERVE1"));
    // The query string does not change the path (SDKs pass the URI through).
    assert_eq!(
        server
            .get("/credentials?x=1", Some(server.token()))
            .field("AccessKeyId"),
        "ASIASERVE1"
    );

    let (_, log) = server.stop();
    assert!(log.contains("loaded credentials"), "log: {log}");
    let mut secrets = values("SERVE1").to_vec();
    secrets.push(sidecar::TEST_TOKEN.to_string());
    assert_absent("the server's log", &log, &secrets);
}

#[test]
fn without_the_right_token_the_answer_is_401_and_holds_no_credentials() {
    let volume = volume_with("credsrv-token", "TOKEN1", in_an_hour());
    let mut server = Sidecar::start(&volume.file(KEY_JSON));
    let token = server.token().to_string();
    let mut last_changed = token.clone();
    last_changed.pop();
    last_changed.push('0');
    assert_ne!(last_changed, token);

    for (what, header) in [
        ("no Authorization header", None),
        ("an empty header", Some(String::new())),
        (
            "a token differing in its last character",
            Some(last_changed),
        ),
        (
            "a prefix of the token",
            Some(token[..token.len() - 1].to_string()),
        ),
        ("the token with a suffix", Some(format!("{token}x"))),
        ("a Bearer scheme", Some(format!("Bearer {token}"))),
    ] {
        let answer = server.get("/credentials", header.as_deref());
        assert_eq!(answer.status, 401, "{what}: HTTP {}", answer.status);
        assert_eq!(answer.field("Code"), "Unauthorized", "{what}");
        assert!(answer.field("Message").contains(TOKEN_ENV), "{what}");
        assert_absent(what, &answer.body, &values("TOKEN1"));
        assert_absent(what, &answer.body, std::slice::from_ref(&token));
    }
    assert_eq!(server.credentials().status, 200);
    let (_, log) = server.stop();
    assert_absent("the server's log", &log, &[token]);
}

#[test]
fn a_kubelet_swap_is_served_without_a_restart() {
    let mut volume = volume_with("credsrv-swap", "FIRST1", in_an_hour());
    let mut server = Sidecar::start(&volume.file(KEY_JSON));
    assert_eq!(server.credentials().field("AccessKeyId"), "ASIAFIRST1");
    let pid = server.pid();

    for tag in ["SECOND", "THIRD3"] {
        let expiration = in_an_hour() + SignedDuration::from_mins(5);
        volume.set(KEY_JSON, document(tag, expiration));
        let answer = server.credentials();
        assert_eq!(answer.status, 200, "{}", answer.field("Message"));
        assert_eq!(answer.field("AccessKeyId"), format!("ASIA{tag}"));
        assert_eq!(answer.field("SecretAccessKey"), format!("secret-{tag}"));
        assert_eq!(answer.field("Token"), format!("session-{tag}"));
        assert_eq!(answer.field("Expiration"), secret::format_time(expiration));
    }
    assert!(server.exited().is_none(), "the server exited");
    assert_eq!(server.pid(), pid);

    // A writer that replaces the file in place (same inode) is noticed too: the identity
    // includes modification time and length.
    let payload = std::fs::canonicalize(volume.file(KEY_JSON)).expect("resolving the link");
    std::fs::write(&payload, document("INPLACE", in_an_hour())).expect("rewriting in place");
    assert!(
        eventually(|| server.credentials().field("AccessKeyId") == "ASIAINPLACE"),
        "an in-place rewrite was not served"
    );
    let (_, log) = server.stop();
    for tag in ["FIRST1", "SECOND", "THIRD3", "INPLACE"] {
        assert_absent("the server's log", &log, &values(tag));
    }
}

#[test]
fn missing_garbled_and_expired_files_give_error_documents_without_content() {
    // Start before kubelet has populated the volume.
    let mut volume = SecretVolume::empty("credsrv-errors");
    let mut server = Sidecar::start(&volume.file(KEY_JSON));
    let file = volume.file(KEY_JSON).display().to_string();

    let expect_error = |server: &Sidecar, status: u16, code: &str, says: &str, tag: &str| {
        let answer = server.credentials();
        assert_eq!(answer.status, status, "{code}: {}", answer.body.len());
        assert_eq!(answer.content_type, "application/json");
        assert_eq!(answer.field("Code"), code);
        let message = answer.field("Message");
        assert!(message.contains(&file), "{code}: {message}");
        assert!(message.contains(says), "{code}: {message}");
        assert!(answer.json().get("AccessKeyId").is_none(), "{code}");
        assert_absent(code, &answer.body, &values(tag));
        let ready = server.get("/ready", None);
        assert_eq!(ready.status, 503, "/ready with {code}");
        assert_absent(code, &ready.body, &values(tag));
        assert_eq!(sidecar::probe(server.port()).0, 1, "--probe with {code}");
    };

    expect_error(
        &server,
        503,
        "CredentialsUnavailable",
        "does not exist",
        "NONE00",
    );

    volume.set(KEY_JSON, document("GOOD01", in_an_hour()));
    assert_eq!(server.get("/ready", None).status, 200);
    assert_eq!(server.credentials().field("AccessKeyId"), "ASIAGOOD01");

    // Cut short mid-document, as a broken writer would leave it.
    let whole = document("GARBLE", in_an_hour());
    volume.set(KEY_JSON, &whole[..whole.len() / 2]);
    expect_error(
        &server,
        500,
        "CredentialsInvalid",
        "not a JSON object",
        "GARBLE",
    );

    let mut fields: serde_json::Value =
        serde_json::from_slice(&document("NOSESS", in_an_hour())).expect("a JSON document");
    fields
        .as_object_mut()
        .expect("an object")
        .remove("SessionToken");
    volume.set(KEY_JSON, serde_json::to_vec(&fields).expect("JSON"));
    expect_error(&server, 500, "CredentialsInvalid", "SessionToken", "NOSESS");

    let past = Timestamp::now() - SignedDuration::from_mins(1);
    volume.set(KEY_JSON, document("EXPIRD", past));
    expect_error(&server, 503, "CredentialsExpired", "expired", "EXPIRD");

    // The Secret loses the key: its symlink goes.
    volume.remove(KEY_JSON);
    expect_error(
        &server,
        503,
        "CredentialsUnavailable",
        "does not exist",
        "EXPIRD",
    );

    volume.set(KEY_JSON, document("BACK01", in_an_hour()));
    assert_eq!(server.credentials().field("AccessKeyId"), "ASIABACK01");
    assert_eq!(server.get("/ready", None).status, 200);

    let (_, log) = server.stop();
    for tag in ["GOOD01", "GARBLE", "NOSESS", "EXPIRD", "BACK01"] {
        assert_absent("the server's log", &log, &values(tag));
    }
    // Each problem is logged once, not per request.
    assert_eq!(log.matches("not a JSON object").count(), 1, "log: {log}");
}

#[test]
fn ready_turns_to_503_when_the_credentials_expire_while_serving() {
    let expiration = Timestamp::now() + SignedDuration::from_secs(3);
    let volume = volume_with("credsrv-expiry", "SHORT1", expiration);
    let server = Sidecar::start(&volume.file(KEY_JSON));
    assert_eq!(server.get("/ready", None).status, 200);
    assert_eq!(sidecar::probe(server.port()).0, 0);
    assert_eq!(server.credentials().status, 200);
    assert!(
        eventually(|| server.get("/ready", None).status == 503),
        "/ready stayed 200 past the expiration"
    );
    let answer = server.credentials();
    assert_eq!(answer.status, 503);
    assert_eq!(answer.field("Code"), "CredentialsExpired");
    assert_absent("expired", &answer.body, &values("SHORT1"));
    let (code, out) = sidecar::probe(server.port());
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("expired"), "{out}");
}

#[test]
fn probe_exit_codes() {
    let port = crate::support::harness::free_port();
    let (code, out) = sidecar::probe(port);
    assert_eq!(code, 1, "no server: {out}");
    assert!(out.contains("cannot connect"), "{out}");

    let mut volume = SecretVolume::empty("credsrv-probe");
    let server = Sidecar::start(&volume.file(KEY_JSON));
    let (code, out) = sidecar::probe(server.port());
    assert_eq!(code, 1, "file missing: {out}");
    assert!(out.contains("does not exist"), "{out}");

    volume.set(KEY_JSON, document("PROBE1", in_an_hour()));
    let (code, out) = sidecar::probe(server.port());
    assert_eq!(code, 0, "ready: {out}");
    assert_absent("--probe", &out, &values("PROBE1"));
}

#[test]
fn refuses_to_start_unguarded_or_off_loopback() {
    let volume = volume_with("credsrv-refuse", "REFUSE", in_an_hour());
    let file = volume.file(KEY_JSON);
    let short = "0123456789";
    let cases: [(&str, Option<&str>, &str, &str); 5] = [
        ("no token", None, "127.0.0.1", "is not set"),
        ("an empty token", Some(""), "127.0.0.1", "0 characters"),
        ("a short token", Some(short), "127.0.0.1", "at least 16"),
        (
            "a token with a space",
            Some("7b0f3c52 1d9e 4a8f b6c1"),
            "127.0.0.1",
            "visible ASCII",
        ),
        (
            "a non-loopback address",
            Some(sidecar::TEST_TOKEN),
            "0.0.0.0",
            "not a loopback address",
        ),
    ];
    for ((what, token, host, says), flavor) in cases
        .into_iter()
        .flat_map(|case| [(case, Flavor::Binary), (case, Flavor::Subcommand)])
    {
        let what = format!("{flavor:?}, {what}");
        let port = crate::support::harness::free_port();
        let mut command = flavor.command();
        command
            .args(["--listen", &format!("{host}:{port}")])
            .arg("--credentials-file")
            .arg(&file)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(token) = token {
            command.env(TOKEN_ENV, token);
        }
        let mut child = command.spawn().expect("starting the binary");
        let start = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().expect("waiting") {
                break status;
            }
            if start.elapsed() > DEADLINE {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what}: the server started instead of refusing");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let out = child.wait_with_output().expect("reading its output");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(status.code(), Some(2), "{what}: {stderr}");
        assert!(stderr.contains(says), "{what}: {stderr}");
        if let Some(token) = token.filter(|t| !t.is_empty()) {
            assert!(!stderr.contains(token), "{what}: the token was printed");
        }
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "{what}: something listens on the port"
        );
    }
}

/// Pods injected by earlier versions run the controller's subcommand: it must answer exactly
/// like the binary new pods run, in every state of the file, and answer the same probe.
#[test]
fn the_controller_subcommand_answers_like_the_binary() {
    let mut volume = volume_with("credsrv-compat", "COMPAT", in_an_hour());
    let file = volume.file(KEY_JSON);
    let mut binary = Sidecar::start(&file);
    let mut subcommand = Sidecar::start_flavor(Flavor::Subcommand, &file, sidecar::TEST_TOKEN);
    let token = sidecar::TEST_TOKEN;
    let compare = |state: &str, binary: &Sidecar, subcommand: &Sidecar| {
        for (method, path, authorization) in [
            ("GET", "/credentials", Some(token)),
            ("HEAD", "/credentials", Some(token)),
            ("GET", "/credentials", None),
            (
                "GET",
                "/credentials",
                Some("7b0f3c52-1d9e-4a8f-b6c1-000000000000"),
            ),
            ("GET", "/ready", None),
            ("GET", "/latest/meta-data/", Some(token)),
            ("POST", "/credentials", Some(token)),
        ] {
            let what = format!("{state}: {method} {path} with {authorization:?}");
            let new = sidecar::request(binary.port(), method, path, authorization);
            let old = sidecar::request(subcommand.port(), method, path, authorization);
            assert_eq!(new.status, old.status, "{what}");
            assert_eq!(new.content_type, old.content_type, "{what}");
            // Not assert_eq!: the bodies may hold credentials, which a failure must not print.
            assert!(
                new.body == old.body,
                "{what}: the bodies differ ({} and {} bytes)",
                new.body.len(),
                old.body.len()
            );
        }
        for (program, port) in [
            (Flavor::Binary, binary.port()),
            (Flavor::Binary, subcommand.port()),
            (Flavor::Subcommand, binary.port()),
            (Flavor::Subcommand, subcommand.port()),
        ] {
            let (code, out) = sidecar::probe_with(program, port);
            let expected = i32::from(state != "valid");
            assert_eq!(code, expected, "{state}: {program:?} --probe: {out}");
        }
    };
    assert_eq!(binary.credentials().field("AccessKeyId"), "ASIACOMPAT");
    compare("valid", &binary, &subcommand);
    let whole = document("GARBLE", in_an_hour());
    volume.set(KEY_JSON, &whole[..whole.len() / 2]);
    compare("garbled", &binary, &subcommand);
    volume.set(
        KEY_JSON,
        document("EXPIRD", Timestamp::now() - SignedDuration::from_mins(1)),
    );
    compare("expired", &binary, &subcommand);
    volume.remove(KEY_JSON);
    compare("missing", &binary, &subcommand);

    for server in [&mut binary, &mut subcommand] {
        let (_, log) = server.stop();
        assert!(log.contains("loaded credentials"), "log: {log}");
        for tag in ["COMPAT", "GARBLE", "EXPIRD"] {
            assert_absent("the server's log", &log, &values(tag));
        }
    }
}

/// kubelet stops a sidecar with SIGTERM; it must end at once, with exit code 0 (a sidecar is
/// its container's PID 1, which only ends on signals it handles).
#[test]
fn sigterm_ends_the_server_at_once() {
    let volume = volume_with("credsrv-sigterm", "SIGTRM", in_an_hour());
    for flavor in [Flavor::Binary, Flavor::Subcommand] {
        let mut server = Sidecar::start_flavor(flavor, &volume.file(KEY_JSON), sidecar::TEST_TOKEN);
        // An idle keep-alive connection must not hold the exit.
        let idle = std::net::TcpStream::connect(("127.0.0.1", server.port())).expect("connecting");
        assert_eq!(server.credentials().status, 200);
        let kill = std::process::Command::new("kill")
            .args(["-TERM", &server.pid().to_string()])
            .status()
            .expect("running kill (procps; see `make test`)");
        assert!(kill.success(), "{flavor:?}: kill -TERM failed");
        let start = Instant::now();
        let status = loop {
            if let Some(status) = server.exited() {
                break status;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "{flavor:?}: still running {DEADLINE:?} after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(status.code(), Some(0), "{flavor:?}: {status}");
        drop(idle);
    }
}

/// In a container the sidecar is PID 1 of its own PID namespace, where the kernel drops every
/// signal the process has no handler for: without one, kubelet's SIGTERM would do nothing and
/// the pod would wait out its grace period. Run it so (`unshare --pid --fork`) and stop it.
#[test]
fn sigterm_ends_the_server_as_pid_1() {
    use std::os::unix::fs::MetadataExt as _;
    let volume = volume_with("credsrv-pid1", "PIDONE", in_an_hour());
    let port = crate::support::harness::free_port();
    let mut command = std::process::Command::new("unshare");
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    if !root {
        // Without root, a user namespace grants the right to make a PID namespace.
        command.args(["--user", "--map-root-user"]);
    }
    let unshare = command
        .args(["--pid", "--fork", "--kill-child"])
        .arg(sidecar::binary())
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--credentials-file",
        ])
        .arg(volume.file(KEY_JSON))
        .env_clear()
        .env(TOKEN_ENV, sidecar::TEST_TOKEN)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("running unshare (util-linux; see `make test`)");
    // Killing unshare kills the server too (--kill-child), however the test ends.
    struct Reaped(std::process::Child);
    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut unshare = Reaped(unshare);
    assert!(
        eventually(|| sidecar::probe(port).0 == 0),
        "the server in its own PID namespace did not become ready"
    );
    // The server is unshare's only child; inside its namespace it is PID 1.
    let unshare_pid = unshare.0.id();
    let children =
        std::fs::read_to_string(format!("/proc/{unshare_pid}/task/{unshare_pid}/children"))
            .expect("unshare's children in /proc");
    let server_pid: u32 = children
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("unshare has started the server");
    let status = std::fs::read_to_string(format!("/proc/{server_pid}/status")).expect("/proc");
    let namespaced = status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .and_then(|pids| pids.split_whitespace().last())
        .expect("NSpid in /proc status");
    assert_eq!(namespaced, "1", "the server is not PID 1 of its namespace");

    let kill = std::process::Command::new("kill")
        .args(["-TERM", &server_pid.to_string()])
        .status()
        .expect("running kill (procps; see `make test`)");
    assert!(kill.success(), "kill -TERM failed");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = unshare.0.try_wait().expect("waiting for unshare") {
            break status;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "PID 1 still runs {DEADLINE:?} after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // unshare exits with its child's status.
    assert_eq!(status.code(), Some(0), "{status}");
}

/// Full tier: moto and the AWS CLI.
#[cfg(feature = "full-tier")]
#[test]
fn the_aws_cli_authenticates_against_moto_through_the_server() {
    let moto = Moto::start();
    let endpoint = moto.endpoint();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let assume = |session: &str| {
        let out = runtime
            .block_on(
                moto::sts_client(&endpoint)
                    .assume_role()
                    .role_arn("arn:aws:iam::123456789012:role/endpoint-role")
                    .role_session_name(session)
                    .duration_seconds(900)
                    .send(),
            )
            .unwrap_or_else(|e| {
                panic!("AssumeRole: {}", aws_sdk_sts::error::DisplayErrorContext(e))
            });
        moto::credentials_from_sts(out.credentials().expect("AssumeRole returned credentials"))
    };
    let first = assume("ns.first");
    let mut volume = SecretVolume::with(
        "credsrv-cli",
        secret::encode(&first, "arn:aws:iam::123456789012:role/endpoint-role", 1),
    );
    let mut server = Sidecar::start(&volume.file(KEY_JSON));

    // Only the endpoint can authenticate the CLI: no keys in the environment, no files.
    let mut env: Vec<(String, String)> = moto::aws_env(&endpoint)
        .into_iter()
        .filter(|(k, _)| k != "AWS_ACCESS_KEY_ID" && k != "AWS_SECRET_ACCESS_KEY")
        .collect();
    env.extend(server.sdk_env());
    let caller = |env: &[(String, String)]| -> (bool, String, String) {
        let out = moto::aws_cli(&["sts", "get-caller-identity", "--output", "json"], env);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let secrets = |c: &secret::Credentials| {
        vec![
            c.access_key_id.clone(),
            c.secret_access_key.clone(),
            c.session_token.clone(),
        ]
    };

    let (ok, stdout, stderr) = caller(&env);
    assert_absent("the CLI's stderr", &stderr, &secrets(&first));
    assert!(ok, "aws sts get-caller-identity failed: {stderr}");
    assert!(
        stdout.contains("assumed-role/endpoint-role/ns.first"),
        "authenticated as {stdout}"
    );

    // The same through the controller's subcommand (pods injected by earlier versions).
    let old = Sidecar::start_flavor(
        Flavor::Subcommand,
        &volume.file(KEY_JSON),
        sidecar::TEST_TOKEN,
    );
    let mut old_env: Vec<(String, String)> = env
        .iter()
        .filter(|(k, _)| k != sidecar::FULL_URI_ENV)
        .cloned()
        .collect();
    old_env.push((sidecar::FULL_URI_ENV.to_string(), old.url()));
    let (ok, stdout, stderr) = caller(&old_env);
    assert_absent("the CLI's stderr", &stderr, &secrets(&first));
    assert!(ok, "through the subcommand: {stderr}");
    assert!(
        stdout.contains("assumed-role/endpoint-role/ns.first"),
        "through the subcommand, authenticated as {stdout}"
    );
    drop(old);

    // A swapped Secret: the next client gets the new session from the same server.
    let second = assume("ns.second");
    volume.update(secret::encode(
        &second,
        "arn:aws:iam::123456789012:role/endpoint-role",
        2,
    ));
    let (ok, stdout, stderr) = caller(&env);
    assert_absent("the CLI's stderr", &stderr, &secrets(&second));
    assert!(ok, "after the swap: {stderr}");
    assert!(
        stdout.contains("assumed-role/endpoint-role/ns.second"),
        "after the swap, authenticated as {stdout}"
    );

    // A wrong token: the CLI gets nothing.
    let wrong: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| {
            if k == TOKEN_ENV {
                (k.clone(), "0000000000000000000000000000000000000".into())
            } else {
                (k.clone(), v.clone())
            }
        })
        .collect();
    let (ok, _, stderr) = caller(&wrong);
    assert!(!ok, "the CLI authenticated with a wrong token");
    assert_absent("the CLI's stderr", &stderr, &secrets(&second));

    let (_, log) = server.stop();
    let mut all = secrets(&first);
    all.extend(secrets(&second));
    all.push(sidecar::TEST_TOKEN.to_string());
    assert_absent("the server's log", &log, &all);
}
