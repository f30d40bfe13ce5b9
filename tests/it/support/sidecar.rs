//! The `endpoint` delivery's sidecar on a free loopback port, for tests that talk to it
//! directly or through an SDK: the small `credentials-server` binary new pods run, or the
//! controller's `credentials-server` subcommand that pods injected by earlier versions run.
//!
//! The small binary belongs to another package of the workspace, and cargo builds (and names
//! in `CARGO_BIN_EXE_*`) only this package's binaries for its tests. So the first test that
//! needs it runs `cargo build -p kube-aws-iam-credentials-server --bin credentials-server`
//! once per test process, with the profile and target directory this test binary was built
//! with: a fresh clone works with a plain `cargo test`, an up-to-date binary costs a
//! fraction of a second, and a test never runs a stale one. (cargo releases its build lock
//! before it runs tests, so the nested build does not wait on the outer one.)

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The environment variable the server reads its token from, and SDKs the header value from.
pub const TOKEN_ENV: &str = "AWS_CONTAINER_AUTHORIZATION_TOKEN";
/// The URI variable SDKs read the endpoint from.
pub const FULL_URI_ENV: &str = "AWS_CONTAINER_CREDENTIALS_FULL_URI";
/// A token shaped like the pod UID the mutation hands over.
pub const TEST_TOKEN: &str = "7b0f3c52-1d9e-4a8f-b6c1-5e2d9a0c4f17";
/// How long the server may take to start listening.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// The sidecar's package and binary names.
const PACKAGE: &str = "kube-aws-iam-credentials-server";
const BINARY: &str = "credentials-server";

/// The small `credentials-server` binary, built on first use (see the module's doc).
pub fn binary() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(build_binary)
}

/// The controller's binary, whose `credentials-server` subcommand serves too.
pub fn controller_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_kube-aws-iam-controller"))
}

fn build_binary() -> PathBuf {
    // The controller's binary sits in <target-dir>/<profile>/; the sidecar goes beside it.
    let profile_dir = controller_binary()
        .parent()
        .expect("the controller binary's directory");
    let target_dir = profile_dir.parent().expect("the target directory");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let mut command = Command::new(&cargo);
    command
        .args(["build", "--quiet", "-p", PACKAGE, "--bin", BINARY])
        .arg("--manifest-path")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir);
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => {}
        Some("release") => {
            command.arg("--release");
        }
        Some(profile) => {
            command.args(["--profile", profile]);
        }
        None => panic!("no profile directory in {}", profile_dir.display()),
    }
    let out = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {} to build {BINARY}: {e}", cargo.to_string_lossy()));
    assert!(
        out.status.success(),
        "building the {BINARY} binary failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let binary = profile_dir.join(BINARY);
    assert!(
        binary.is_file(),
        "cargo built {BINARY} but {} does not exist",
        binary.display()
    );
    binary
}

/// Which program serves: new pods' binary, or the controller's subcommand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// `credentials-server ARGS` (what the mutation writes now).
    Binary,
    /// `kube-aws-iam-controller credentials-server ARGS` (pods injected earlier).
    Subcommand,
}

impl Flavor {
    /// A command running this flavor; the caller adds the flags.
    pub fn command(self) -> Command {
        match self {
            Flavor::Binary => Command::new(binary()),
            Flavor::Subcommand => {
                let mut command = Command::new(controller_binary());
                command.arg("credentials-server");
                command
            }
        }
    }
}

/// A running `credentials-server`; killed and reaped on drop. Its stderr (the server's log)
/// is kept for [`Sidecar::stop`].
pub struct Sidecar {
    child: Option<Child>,
    port: u16,
    token: String,
}

impl Sidecar {
    /// Starts the server for `credentials_file` with [`TEST_TOKEN`] and returns once it accepts
    /// connections (not necessarily ready: the file may be missing on purpose).
    pub fn start(credentials_file: &Path) -> Sidecar {
        Sidecar::start_with_token(credentials_file, TEST_TOKEN)
    }

    pub fn start_with_token(credentials_file: &Path, token: &str) -> Sidecar {
        Sidecar::start_flavor(Flavor::Binary, credentials_file, token)
    }

    /// Starts `flavor` for `credentials_file` with `token`.
    pub fn start_flavor(flavor: Flavor, credentials_file: &Path, token: &str) -> Sidecar {
        let port = super::harness::free_port();
        let child = flavor
            .command()
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--credentials-file")
            .arg(credentials_file)
            .env_clear()
            .env(TOKEN_ENV, token)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {flavor:?} credentials-server: {e}"));
        let mut sidecar = Sidecar {
            child: Some(child),
            port,
            token: token.to_string(),
        };
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = sidecar.exited() {
                let (_, log) = sidecar.stop();
                panic!("credentials-server exited with {status} before listening: {log}");
            }
            assert!(
                start.elapsed() < START_DEADLINE,
                "credentials-server did not listen on 127.0.0.1:{port} within {START_DEADLINE:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        sidecar
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// `http://127.0.0.1:<port>/credentials`, the value of [`FULL_URI_ENV`].
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/credentials", self.port)
    }

    /// The two variables an SDK needs to use this server.
    pub fn sdk_env(&self) -> Vec<(String, String)> {
        vec![
            (FULL_URI_ENV.to_string(), self.url()),
            (TOKEN_ENV.to_string(), self.token.clone()),
        ]
    }

    /// The process id (for /proc figures).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or_default()
    }

    /// `Some(status)` once the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// `GET path` with `authorization` as the header (none when `None`) on a fresh connection.
    pub fn get(&self, path: &str, authorization: Option<&str>) -> Response {
        request(self.port, "GET", path, authorization)
    }

    /// `GET /credentials` with the right token.
    pub fn credentials(&self) -> Response {
        self.get("/credentials", Some(&self.token))
    }

    /// Kills the server and returns its exit status and log (stdout + stderr).
    pub fn stop(&mut self) -> (Option<ExitStatus>, String) {
        let Some(mut child) = self.child.take() else {
            return (None, String::new());
        };
        let _ = child.kill();
        let status = child.wait().ok();
        let mut log = String::new();
        if let Some(mut out) = child.stdout.take() {
            let _ = out.read_to_string(&mut log);
        }
        if let Some(mut err) = child.stderr.take() {
            let _ = err.read_to_string(&mut log);
        }
        (status, log)
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// An HTTP answer: status, content type and body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

impl Response {
    /// The body as JSON (panics naming the status when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("HTTP {} answer is not JSON: {e}", self.status))
    }

    /// A string field of the JSON body ("" when absent).
    pub fn field(&self, name: &str) -> String {
        self.json()
            .get(name)
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_string()
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`).
pub fn request(port: u16, method: &str, path: &str, authorization: Option<&str>) -> Response {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("connecting to 127.0.0.1:{port}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("setting a read timeout");
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}Connection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .unwrap_or_else(|e| panic!("sending {method} {path}: {e}"));
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("reading the answer to {method} {path}: {e}"));
    let raw = String::from_utf8_lossy(&raw);
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: not an HTTP answer"));
    let content_type = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-type"))
        .map(|(_, value)| value.trim().to_string())
        .unwrap_or_default();
    Response {
        status,
        content_type,
        body: body.to_string(),
    }
}

/// Runs `credentials-server --probe` against `port` and returns its exit code and stdout.
pub fn probe(port: u16) -> (i32, String) {
    probe_with(Flavor::Binary, port)
}

/// [`probe`] with the given flavor.
pub fn probe_with(flavor: Flavor, port: u16) -> (i32, String) {
    let out = flavor
        .command()
        .args(["--listen", &format!("127.0.0.1:{port}"), "--probe"])
        .env_clear()
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {flavor:?} credentials-server --probe: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}
