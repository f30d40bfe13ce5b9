//! moto's STS server behind a counting reverse proxy, and AWS CLI helpers (the real SDK consumers).
//!
//! The Python tools come from `.venv` at the repo root (`make venv`, which `make test` runs).
//! A missing tool fails the test with a message naming that command; nothing is skipped.
//!
//! moto keeps no call counts, so every request reaches it through a small hyper proxy that
//! counts STS actions: "a second pass makes zero STS calls" is counted at the server, not
//! inferred from our own code. The proxy runs on its own tokio runtime (its own thread), so
//! `Moto` works from plain `#[test]`s and from `#[tokio::test]`s alike.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use kube_aws_iam_controller::domain::secret::{
    Credentials, KEY_CREDENTIALS, KEY_JSON, KEY_PROCESS,
};

/// Scratch directories and the SDK client live in `support` (the fast tier uses them too); the
/// full tier's SDK matrix and sidecar tests still import them from here.
#[cfg(feature = "full-tier")]
pub use super::ScratchDir;
#[cfg(feature = "full-tier")]
pub use super::sts::sts_client;

/// The command that installs the Python test tools.
pub const SETUP_COMMAND: &str = "make venv";

/// Where the Secret is mounted in a pod; `credentials.process` names this path.
pub const MOUNT_JSON_PATH: &str = "/meta/aws-iam/credentials.json";

/// The fixed `credentials.process` layout, written out here rather than taken from the crate so
/// that a change to the crate's constant fails these tests.
const FIXED_PROCESS_FILE: &str =
    "[default]\ncredential_process = cat /meta/aws-iam/credentials.json\n";

/// How long moto may take to come up (its first start compiles .pyc files; it usually takes
/// about half a second).
const START_DEADLINE: Duration = Duration::from_secs(60);

/// Lines of moto's output kept for failure messages (request lines only, never bodies).
const LOG_LINES: usize = 40;

/// `.venv/bin/<name>` at the repo root; panics with the setup command when it is not installed.
pub fn venv_bin(name: &str) -> PathBuf {
    let path = super::repo_root().join(".venv/bin").join(name);
    if !path.is_file() {
        panic!(
            "{} is missing: the Python test tools (moto, awscli) are not installed. \
             Run `{SETUP_COMMAND}` (or `make test`, which runs it) in {}",
            path.display(),
            super::repo_root().display()
        );
    }
    path
}

/// A moto server on 127.0.0.1 behind a counting proxy; killed and reaped on drop.
pub struct Moto {
    child: Child,
    moto_addr: SocketAddr,
    log: Arc<Mutex<VecDeque<String>>>,
    proxy: Proxy,
    /// How many of the proxy's calls `reset_counts` left uncounted.
    counted_from: AtomicUsize,
}

impl Moto {
    /// Starts moto on a free port and the counting proxy in front of it, and returns once moto
    /// answers HTTP. Blocking (about half a second); usable from sync and async tests.
    pub fn start() -> Moto {
        let bin = venv_bin("moto_server");
        let deadline = Instant::now() + START_DEADLINE;
        // Port 0: moto (werkzeug) binds a free port and logs it, so there is no window in which
        // another process could take a port picked for it.
        let mut child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", "0"])
            .env_clear()
            .envs(base_env())
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let (port_tx, port_rx) = mpsc::channel();
        drain(child.stdout.take(), port_tx.clone(), log.clone());
        drain(child.stderr.take(), port_tx, log.clone());

        // Kills and reaps moto, then fails the test with its output.
        let give_up = |child: &mut Child, why: String| {
            let _ = child.kill();
            let status = child.wait();
            panic!(
                "moto_server {why} ({status:?}); its output:\n{}",
                tail(&log)
            )
        };
        let port = loop {
            match port_rx.recv_timeout(Duration::from_millis(50)) {
                Ok(port) => break port,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                // Both pipes closed: moto exited, and its output is all in the log.
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    give_up(&mut child, "exited before listening".into())
                }
            }
            if Instant::now() > deadline {
                give_up(
                    &mut child,
                    format!("did not listen within {START_DEADLINE:?}"),
                );
            }
        };
        let moto_addr = SocketAddr::from(([127, 0, 0, 1], port));
        while let Err(e) = probe(moto_addr) {
            if Instant::now() > deadline {
                let why = format!("on {moto_addr} did not answer within {START_DEADLINE:?}: {e}");
                give_up(&mut child, why);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let proxy = Proxy::start(moto_addr);
        Moto {
            child,
            moto_addr,
            log,
            proxy,
            counted_from: AtomicUsize::new(0),
        }
    }

    /// The STS endpoint for clients: the counting proxy, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.proxy.addr)
    }

    /// moto itself, bypassing the proxy (its calls are not counted).
    pub fn moto_endpoint(&self) -> String {
        format!("http://{}", self.moto_addr)
    }

    /// STS calls of `action` (e.g. `AssumeRole`, `GetCallerIdentity`) received since the start
    /// or the last `reset_counts`.
    pub fn calls(&self, action: &str) -> usize {
        self.counts().get(action).copied().unwrap_or(0)
    }

    /// Every request received through the proxy (unrecognised ones count as `<unknown>`).
    pub fn total_calls(&self) -> usize {
        self.counts().values().sum()
    }

    /// Calls by action (for failure messages; holds no request content).
    pub fn counts(&self) -> BTreeMap<String, usize> {
        let calls = lock(&self.proxy.calls);
        let mut counts = BTreeMap::new();
        for call in calls.iter().skip(self.counted_from.load(Ordering::SeqCst)) {
            *counts.entry(call.action.clone()).or_insert(0) += 1;
        }
        counts
    }

    pub fn reset_counts(&self) {
        let calls = lock(&self.proxy.calls);
        self.counted_from.store(calls.len(), Ordering::SeqCst);
    }

    /// Every call received through the proxy, in order, with the access key that signed it
    /// (`reset_counts` does not clear them).
    pub fn signed_calls(&self) -> Vec<SignedCall> {
        lock(&self.proxy.calls).clone()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.proxy.stop();
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "moto calls by action: {:?}; moto's last output:\n{}",
                self.counts(),
                tail(&self.log)
            );
        }
    }
}

/// The environment for AWS clients (SDK, CLI, the controller binary) in tests: moto's STS
/// endpoint, a region, static test credentials, no config/credentials files, no IMDS, no proxy.
pub fn aws_env(endpoint: &str) -> Vec<(String, String)> {
    let mut env = consumer_env(endpoint);
    env.push(("AWS_ACCESS_KEY_ID".into(), "testing".into()));
    env.push(("AWS_SECRET_ACCESS_KEY".into(), "testing".into()));
    env
}

/// `aws_env` without any credentials: for clients that must find them in the Secret's files.
pub fn consumer_env(endpoint: &str) -> Vec<(String, String)> {
    let nowhere = nonexistent_dir();
    [
        ("AWS_ENDPOINT_URL_STS", endpoint.to_string()),
        ("AWS_REGION", "us-east-1".into()),
        // botocore (the AWS CLI v1) reads the region from AWS_DEFAULT_REGION.
        ("AWS_DEFAULT_REGION", "us-east-1".into()),
        (
            "AWS_CONFIG_FILE",
            nowhere.join("config").display().to_string(),
        ),
        (
            "AWS_SHARED_CREDENTIALS_FILE",
            nowhere.join("credentials").display().to_string(),
        ),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
        // Loopback traffic never goes through a proxy, even if one leaks into a child's env.
        ("NO_PROXY", "127.0.0.1,localhost".into()),
        ("no_proxy", "127.0.0.1,localhost".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// STS credentials as the controller's Secret codec takes them.
pub fn credentials_from_sts(c: &aws_sdk_sts::types::Credentials) -> Credentials {
    Credentials {
        access_key_id: c.access_key_id().to_string(),
        secret_access_key: c.secret_access_key().to_string(),
        session_token: c.session_token().to_string(),
        expiration: jiff::Timestamp::from_second(c.expiration().secs())
            .expect("STS expiration in range"),
    }
}

/// Runs `.venv/bin/aws` with a cleared environment plus PATH, HOME and `env`.
pub fn aws_cli(args: &[&str], env: &[(String, String)]) -> Output {
    let bin = venv_bin("aws");
    Command::new(&bin)
        .args(args)
        .env_clear()
        .envs(base_env())
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()))
}

/// Writes the Secret's `credentials` key to `dir/credentials` and runs
/// `aws sts get-caller-identity` with `AWS_SHARED_CREDENTIALS_FILE` pointing at it (and no
/// credentials in the environment). Returns the caller's ARN, or the CLI's stderr with every
/// credential value of `data` redacted.
pub fn caller_identity_with_credentials_file(
    endpoint: &str,
    data: &BTreeMap<String, Vec<u8>>,
    dir: &Path,
) -> Result<String, String> {
    let file = dir.join("credentials");
    write(&file, key(data, KEY_CREDENTIALS));
    let mut env = consumer_env(endpoint);
    set(&mut env, "AWS_SHARED_CREDENTIALS_FILE", &file);
    caller_identity(&env, data)
}

/// Which file the `credentials.process` profile is handed to the CLI as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProfileFile {
    /// `AWS_SHARED_CREDENTIALS_FILE` — what the original's docs tell Python, the CLI, Go and
    /// Java v2 users to set.
    SharedCredentials,
    /// `AWS_CONFIG_FILE` — what JS v2 needs (with `AWS_SDK_LOAD_CONFIG=1`).
    Config,
}

/// Writes the Secret's `credentials.json` to `dir/credentials.json` and its
/// `credentials.process` (after asserting the fixed layout) to `dir/credentials.process`, with
/// the mount path replaced by the one in `dir`, and runs `aws sts get-caller-identity` with that
/// profile file (and no credentials in the environment): the CLI runs
/// `cat dir/credentials.json` as its credential_process. Returns the ARN or the redacted stderr.
pub fn caller_identity_with_credential_process(
    endpoint: &str,
    data: &BTreeMap<String, Vec<u8>>,
    dir: &Path,
    via: ProfileFile,
) -> Result<String, String> {
    let process = std::str::from_utf8(key(data, KEY_PROCESS))
        .unwrap_or_else(|_| panic!("Secret key {KEY_PROCESS} is not UTF-8"));
    // The content holds no credential material, so it may be shown.
    assert_eq!(
        process, FIXED_PROCESS_FILE,
        "Secret key {KEY_PROCESS} does not have the fixed layout"
    );
    let json = dir.join("credentials.json");
    let json_path = json.display().to_string();
    // botocore splits credential_process with shlex; keep the path free of anything to quote.
    assert!(
        json_path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+".contains(c)),
        "scratch path {json_path} needs shell quoting; use a plain directory"
    );
    write(&json, key(data, KEY_JSON));
    let profile = dir.join("credentials.process");
    write(
        &profile,
        process.replace(MOUNT_JSON_PATH, &json_path).as_bytes(),
    );
    let mut env = consumer_env(endpoint);
    match via {
        ProfileFile::SharedCredentials => set(&mut env, "AWS_SHARED_CREDENTIALS_FILE", &profile),
        ProfileFile::Config => set(&mut env, "AWS_CONFIG_FILE", &profile),
    }
    caller_identity(&env, data)
}

// ---------------------------------------------------------------------------------------------

/// PATH and HOME of the test process: all a child inherits.
fn base_env() -> Vec<(String, String)> {
    ["PATH", "HOME"]
        .into_iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
        .collect()
}

/// A directory that does not exist, so config and credentials files under it are absent.
fn nonexistent_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("moto-nonexistent")
}

fn set(env: &mut Vec<(String, String)>, name: &str, path: &Path) {
    env.retain(|(k, _)| k != name);
    env.push((name.to_string(), path.display().to_string()));
}

fn key<'a>(data: &'a BTreeMap<String, Vec<u8>>, name: &str) -> &'a [u8] {
    // Key names only: the map holds credentials.
    data.get(name).map(Vec::as_slice).unwrap_or_else(|| {
        panic!(
            "Secret data has no key {name}; keys: {:?}",
            data.keys().collect::<Vec<_>>()
        )
    })
}

fn write(path: &Path, content: &[u8]) {
    std::fs::write(path, content).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

fn caller_identity(
    env: &[(String, String)],
    data: &BTreeMap<String, Vec<u8>>,
) -> Result<String, String> {
    let out = aws_cli(&["sts", "get-caller-identity", "--output", "json"], env);
    let stderr = redact(&String::from_utf8_lossy(&out.stderr), data);
    if !out.status.success() {
        return Err(format!("aws exited with {}: {}", out.status, stderr.trim()));
    }
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("aws printed no JSON ({e}); stderr: {}", stderr.trim()))?;
    doc.get("Arn")
        .and_then(serde_json::Value::as_str)
        .map(String::from)
        .ok_or_else(|| "aws printed no Arn".to_string())
}

/// `text` with every credential value found in `data` replaced by `<redacted>`.
fn redact(text: &str, data: &BTreeMap<String, Vec<u8>>) -> String {
    let mut secrets: Vec<String> = Vec::new();
    if let Some(json) = data
        .get(KEY_JSON)
        .and_then(|j| serde_json::from_slice::<serde_json::Value>(j).ok())
    {
        for field in ["AccessKeyId", "SecretAccessKey", "SessionToken"] {
            if let Some(v) = json.get(field).and_then(serde_json::Value::as_str) {
                secrets.push(v.to_string());
            }
        }
    }
    if let Some(ini) = data.get(KEY_CREDENTIALS) {
        for line in String::from_utf8_lossy(ini).lines() {
            if let Some((k, v)) = line.split_once('=')
                && k.trim() != "aws_expiration"
                && !v.trim().is_empty()
            {
                secrets.push(v.trim().to_string());
            }
        }
    }
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut text = text.to_string();
    for secret in secrets.iter().filter(|s| s.len() >= 4) {
        text = text.replace(secret.as_str(), "<redacted>");
    }
    text
}

/// Forwards moto's output lines into the log ring; the first `Running on …:PORT` line's port
/// goes to `port`. Keeps reading until moto exits so its pipe never fills.
fn drain(
    pipe: Option<impl Read + Send + 'static>,
    port: mpsc::Sender<u16>,
    log: Arc<Mutex<VecDeque<String>>>,
) {
    let Some(pipe) = pipe else { return };
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if let Some(p) = line
                .split("Running on http://127.0.0.1:")
                .nth(1)
                .and_then(|rest| rest.trim().parse::<u16>().ok())
            {
                let _ = port.send(p);
            }
            let mut log = lock(&log);
            if log.len() == LOG_LINES {
                log.pop_front();
            }
            log.push_back(line);
        }
    });
}

fn tail(log: &Mutex<VecDeque<String>>) -> String {
    lock(log).iter().cloned().collect::<Vec<_>>().join("\n")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One HTTP/1.0 request to moto's own API: Ok once it answers with a status line.
fn probe(addr: SocketAddr) -> Result<(), String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(format!("GET /moto-api/ HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut status = [0u8; 12];
    stream.read_exact(&mut status).map_err(|e| e.to_string())?;
    if status.starts_with(b"HTTP/1.") {
        Ok(())
    } else {
        Err(format!(
            "unexpected answer {:?}",
            String::from_utf8_lossy(&status)
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// The counting proxy.

/// Every call the proxy received, in order.
type Calls = Arc<Mutex<Vec<SignedCall>>>;

/// One STS call as the proxy saw it: which access key signed it (the SigV4 `Authorization`
/// header names it: `Credential=AKID/date/region/service/aws4_request`) and, for AssumeRole,
/// which role it asked for. Holds no secret: the access key ID is an identifier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedCall {
    pub action: String,
    /// `None` for an unsigned request.
    pub access_key_id: Option<String>,
    pub role_arn: Option<String>,
}
type HttpClient = Client<HttpConnector, Full<Bytes>>;

struct Proxy {
    addr: SocketAddr,
    calls: Calls,
    /// Its own runtime, so that `Moto` works from sync and async tests alike.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Proxy {
    fn start(upstream: SocketAddr) -> Proxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the STS proxy");
        listener
            .set_nonblocking(true)
            .expect("non-blocking proxy listener");
        let addr = listener.local_addr().expect("proxy address");
        let calls = Calls::default();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("moto-proxy")
            .enable_all()
            .build()
            .expect("proxy runtime");
        runtime.spawn(serve(listener, upstream, calls.clone()));
        Proxy {
            addr,
            calls,
            runtime: Some(runtime),
        }
    }

    /// Drops every task (the listener and each open connection) without blocking, which is
    /// allowed inside an async test too.
    fn stop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn serve(listener: std::net::TcpListener, upstream: SocketAddr, calls: Calls) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("proxy listener");
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let client = client.clone();
        let calls = calls.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                forward(req, client.clone(), upstream, calls.clone())
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Headers that describe one hop, not the message; hyper sets them again from the body.
const HOP_HEADERS: [&str; 5] = [
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "upgrade",
];

async fn forward(
    req: Request<Incoming>,
    client: HttpClient,
    upstream: SocketAddr,
    calls: Calls,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (mut parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => return Ok(error(StatusCode::BAD_REQUEST, format!("reading body: {e}"))),
    };
    lock(&calls).push(SignedCall {
        action: action_of(&parts, &body).unwrap_or_else(|| "<unknown>".to_string()),
        access_key_id: signing_key(&parts),
        role_arn: form_param(&body, "RoleArn"),
    });

    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = match format!("http://{upstream}{path}").parse() {
        Ok(uri) => uri,
        Err(e) => return Ok(error(StatusCode::BAD_REQUEST, format!("bad URI: {e}"))),
    };
    for h in HOP_HEADERS {
        parts.headers.remove(h);
    }
    // The Host header (which the client signed) is kept as sent.
    let response = match client
        .request(Request::from_parts(parts, Full::new(body)))
        .await
    {
        Ok(response) => response,
        Err(e) => return Ok(error(StatusCode::BAD_GATEWAY, format!("moto: {e}"))),
    };
    let (mut parts, body) = response.into_parts();
    let body = match body.collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => return Ok(error(StatusCode::BAD_GATEWAY, format!("moto body: {e}"))),
    };
    for h in HOP_HEADERS {
        parts.headers.remove(h);
    }
    Ok(Response::from_parts(parts, Full::new(body)))
}

fn error(status: StatusCode, message: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(message)));
    *response.status_mut() = status;
    response
}

/// The STS action of a request, whatever the protocol:
/// - awsQuery (what aws-sdk-sts and botocore send): `POST /`, form body `Action=AssumeRole&…`;
/// - the same parameters in the query string (`GET /?Action=…`);
/// - awsJson: header `X-Amz-Target: AWSSecurityTokenServiceV20110615.AssumeRole`;
/// - Smithy RPC v2 CBOR: path `/service/<service>/operation/<Action>`.
fn action_of(parts: &http::request::Parts, body: &[u8]) -> Option<String> {
    let query = parts.uri.query().unwrap_or("").as_bytes();
    if let Some(action) = form_param(query, "Action") {
        return Some(action);
    }
    if let Some(target) = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
    {
        return target.rsplit('.').next().map(String::from);
    }
    if let Some((_, op)) = parts.uri.path().split_once("/operation/") {
        return Some(op.trim_end_matches('/').to_string());
    }
    form_param(body, "Action")
}

/// The access key ID in a SigV4 `Authorization` header.
fn signing_key(parts: &http::request::Parts) -> Option<String> {
    let auth = parts
        .headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let credential = auth.split("Credential=").nth(1)?;
    credential.split('/').next().map(str::to_string)
}

/// A parameter of a form-encoded string, decoded and trimmed; `None` when absent or blank.
fn form_param(form: &[u8], key: &str) -> Option<String> {
    form_urlencoded::parse(form)
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::{action_of, form_param, redact, venv_bin};
    use kube_aws_iam_controller::domain::secret::{Credentials, encode};

    #[test]
    fn moto_cli_errors_are_redacted() {
        let creds = Credentials {
            access_key_id: "ASIAKEYIDKEYID".into(),
            secret_access_key: "s3cr3t/with+chars".into(),
            session_token: "tok3n==".into(),
            expiration: "2026-11-26T23:00:00Z".parse().expect("timestamp"),
        };
        let data = encode(&creds, "arn:aws:iam::123456789012:role/r", 1);
        let text = redact(
            "id ASIAKEYIDKEYID secret s3cr3t/with+chars token tok3n== at 2026-11-26T23:00:00Z",
            &data,
        );
        assert_eq!(
            text,
            "id <redacted> secret <redacted> token <redacted> at 2026-11-26T23:00:00Z"
        );
    }

    #[test]
    #[should_panic(expected = "Run `make venv`")]
    fn moto_missing_tool_names_the_setup_command() {
        venv_bin("no-such-tool");
    }

    fn parts(method: &str, uri: &str, target: Option<&str>) -> http::request::Parts {
        let mut builder = http::Request::builder().method(method).uri(uri);
        if let Some(target) = target {
            builder = builder.header("x-amz-target", target);
        }
        builder.body(()).expect("request").into_parts().0
    }

    #[test]
    fn moto_proxy_recognises_sts_actions_in_every_protocol() {
        let form: &[u8] =
            b"Action=AssumeRole&Version=2011-06-15&RoleArn=arn%3Aaws%3Aiam%3A%3A1%3Arole%2Fx";
        let json = Some("AWSSecurityTokenServiceV20110615.AssumeRole");
        let cbor = "/service/AWSSecurityTokenServiceV20110615/operation/GetCallerIdentity";
        let query = "/?Version=2011-06-15&Action=GetCallerIdentity";
        for (method, uri, target, body, want) in [
            ("POST", "/", None, form, Some("AssumeRole")),
            ("GET", query, None, b"", Some("GetCallerIdentity")),
            ("POST", "/", json, b"{}", Some("AssumeRole")),
            ("POST", cbor, None, &[0xbf, 0xff], Some("GetCallerIdentity")),
            ("GET", "/moto-api/", None, b"", None),
            ("POST", "/", None, b"NotAction=AssumeRole", None),
        ] {
            let got = action_of(&parts(method, uri, target), body);
            assert_eq!(got.as_deref(), want, "{method} {uri} {target:?}");
        }
        assert_eq!(
            form_param(form, "RoleArn").as_deref(),
            Some("arn:aws:iam::1:role/x")
        );
    }
}
