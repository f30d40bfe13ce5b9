//! `credentials-server`: the sidecar of the `endpoint` delivery. It serves the mounted Secret's
//! `credentials.json` as a container-credentials document on 127.0.0.1.
//!
//! It runs in every opted-in pod, so it has its own small single-threaded runtime (built in
//! [`main`], not the controller's) and does nothing while nobody asks: no timer, no watcher
//! thread. Each request `stat`s the credentials file (following kubelet's `..data` symlink) and
//! re-reads it only when its identity (device, inode, modification time, length) changed; the
//! parsed answer is kept ready to send between changes.
//!
//! The endpoint is guarded by a token from `AWS_CONTAINER_AUTHORIZATION_TOKEN`, which every AWS
//! SDK sends back verbatim in the `Authorization` header. A request forged through an SSRF in
//! the application does not carry it, so it gets a 401 and no credentials.

use std::convert::Infallible;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use http::header::{ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use jiff::Timestamp;
use serde_json::{Value, json};

use super::{CREDENTIALS_PATH, READY_PATH, TOKEN_ENV};
use crate::CommandOutput;
use crate::{Error, Result};

/// The default `--credentials-file`: `credentials.json` in the Secret mounted at
/// [`super::MOUNT_PATH`] (a test keeps the two in step).
pub const DEFAULT_CREDENTIALS_FILE: &str = "/meta/aws-iam/credentials.json";
/// Shortest token accepted: the pod UID the mutation hands over has 36 characters; anything
/// much shorter is guessable by a process that can only send requests.
pub const MIN_TOKEN_LEN: usize = 16;
/// A credentials file larger than this is not a credential_process document; reading it
/// whole would only cost memory in every pod.
const MAX_FILE_LEN: u64 = 64 * 1024;
/// Connections served at once. SDKs keep one or two; the cap bounds memory if something in
/// the pod opens connections in a loop.
const MAX_CONNECTIONS: usize = 64;
/// How long a client may take to send a request's headers, and how long an idle keep-alive
/// connection stays open. The only timer the server ever arms, and only while a connection
/// is open.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// `--probe`: how long to wait for the server to accept and answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Args)]
pub struct CredentialsServerArgs {
    /// Loopback address to serve on (127.0.0.0/8 or ::1; anything else is refused).
    #[arg(
        long,
        value_name = "ADDR",
        default_value_t = SocketAddr::from(([127, 0, 0, 1], super::DEFAULT_SIDECAR_PORT)),
        env = "KUBE_AWS_IAM_CONTROLLER_LISTEN"
    )]
    pub listen: SocketAddr,
    /// The mounted Secret's credentials.json (credential_process document); re-read whenever
    /// it changes.
    #[arg(
        long,
        value_name = "PATH",
        default_value = DEFAULT_CREDENTIALS_FILE,
        env = "KUBE_AWS_IAM_CONTROLLER_CREDENTIALS_FILE"
    )]
    pub credentials_file: PathBuf,
    /// Ask the server running at --listen for /ready and exit 0 if it is ready, 1 if not (the
    /// sidecar's startup probe; needs no token).
    #[arg(long)]
    pub probe: bool,
}

/// Runs the server until SIGTERM/SIGINT, or answers `--probe`; builds its own runtime.
pub fn main(args: &CredentialsServerArgs) -> Result<CommandOutput> {
    if args.probe {
        return Ok(probe(args.listen));
    }
    check_loopback(args.listen)?;
    let token = Token::from_env()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(server_error(args.listen))?;
    let server = Arc::new(Server {
        token,
        source: Source::new(args.credentials_file.clone()),
    });
    runtime.block_on(serve(args.listen, server))?;
    Ok(CommandOutput::default())
}

/// Loopback is the point: the token is the only other guard, and a pod's loopback interface
/// is reachable only from its own containers.
fn check_loopback(addr: SocketAddr) -> Result<()> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "--listen {addr} is not a loopback address: the credentials endpoint serves only \
             127.0.0.1 (or ::1), where nothing outside the pod can reach it"
        )))
    }
}

/// An I/O failure of the server at `addr` (start-up only: serving never fails the process).
fn server_error(addr: SocketAddr) -> impl Fn(std::io::Error) -> Error {
    move |source| Error::Server {
        addr: addr.to_string(),
        source,
    }
}

async fn serve(addr: SocketAddr, server: Arc<Server>) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(server_error(addr))?;
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).map_err(server_error(addr))?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(server_error(addr))?;
    eprintln!(
        "credentials-server: serving {} on http://{addr}{CREDENTIALS_PATH}",
        server.source.path.display()
    );
    // Load once at start so a broken mount shows in the log before the first request.
    drop(server.source.current());

    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_headers(32);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors and the like: say so, and do not spin.
                    eprintln!("credentials-server: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Full: closing the connection is the answer.
            continue;
        };
        let _ = stream.set_nodelay(true);
        let server = server.clone();
        let connection = http.serve_connection(
            TokioIo::new(stream),
            service_fn(move |request| {
                let response = server.answer(&request);
                async move { Ok::<_, Infallible>(response) }
            }),
        );
        tokio::spawn(async move {
            // A client that hangs up or times out is not worth a log line.
            let _ = connection.await;
            drop(slot);
        });
    }
    eprintln!("credentials-server: stopping");
    Ok(())
}

/// The shared state of every connection.
struct Server {
    token: Token,
    source: Source,
}

impl Server {
    fn answer<B>(&self, request: &Request<B>) -> Response<Full<Bytes>> {
        let path = request.uri().path();
        if path != CREDENTIALS_PATH && path != READY_PATH {
            return error(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("nothing here; credentials are served at {CREDENTIALS_PATH}"),
            );
        }
        if request.method() != Method::GET && request.method() != Method::HEAD {
            let mut response = error(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "only GET is served",
            );
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        if path == READY_PATH {
            return match self.source.current() {
                Ok(credentials) => {
                    let body = json!({"Ready": true, "Expiration": credentials.expiration_text});
                    json_response(StatusCode::OK, Bytes::from(body.to_string()))
                }
                Err(problem) => {
                    // Not ready, whatever the cause: the contract of a readiness path.
                    let mut response = problem.response();
                    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                    response
                }
            };
        }
        let unauthorized = match request.headers().get(AUTHORIZATION) {
            None => Some(format!(
                "the Authorization header is missing (set {TOKEN_ENV})"
            )),
            Some(given) if !self.token.matches(given.as_bytes()) => Some(format!(
                "the Authorization header does not match {TOKEN_ENV}"
            )),
            Some(_) => None,
        };
        if let Some(message) = unauthorized {
            return error(StatusCode::UNAUTHORIZED, "Unauthorized", &message);
        }
        match self.source.current() {
            Ok(credentials) => json_response(StatusCode::OK, credentials.body),
            Err(problem) => problem.response(),
        }
    }
}

/// The authorization token. Never printed: `Debug` is redacted and errors name only the
/// variable.
struct Token(Box<[u8]>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    fn from_env() -> Result<Token> {
        Token::parse(std::env::var_os(TOKEN_ENV).as_deref())
    }

    fn parse(value: Option<&std::ffi::OsStr>) -> Result<Token> {
        let Some(value) = value else {
            return Err(Error::Config(format!(
                "{TOKEN_ENV} is not set: the endpoint would serve credentials to any request \
                 (the pod mutation sets it from the pod's UID)"
            )));
        };
        let bytes = value.as_encoded_bytes();
        // SDKs send the variable verbatim as a header value: visible ASCII only.
        if !bytes.iter().all(|b| b.is_ascii_graphic()) {
            return Err(Error::Config(format!(
                "{TOKEN_ENV} holds characters other than visible ASCII (no spaces or control \
                 characters): SDKs could not send it as a header"
            )));
        }
        if bytes.len() < MIN_TOKEN_LEN {
            return Err(Error::Config(format!(
                "{TOKEN_ENV} is {} characters long; at least {MIN_TOKEN_LEN} are needed so that \
                 it cannot be guessed",
                bytes.len()
            )));
        }
        Ok(Token(bytes.into()))
    }

    /// Compares in time independent of where the first difference is, so that response times
    /// do not reveal the token a byte at a time. (The length is no secret: pod UIDs all have
    /// 36 characters.)
    fn matches(&self, given: &[u8]) -> bool {
        if given.len() != self.0.len() {
            return false;
        }
        let difference = given
            .iter()
            .zip(self.0.iter())
            .fold(0u8, |acc, (a, b)| std::hint::black_box(acc | (a ^ b)));
        difference == 0
    }
}

/// The credentials file and what was last read from it.
struct Source {
    path: PathBuf,
    cache: Mutex<Cache>,
}

struct Cache {
    /// Identity of the file the current `loaded` came from; `None` when it could not be
    /// `stat`ed (so the next request tries again).
    identity: Option<Identity>,
    loaded: std::result::Result<Loaded, Problem>,
    /// The last problem written to the log, so a broken mount logs once, not per request.
    logged: Option<Problem>,
}

/// What tells one version of the file from the next: kubelet's swap yields a new inode,
/// an in-place writer a new modification time or length.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Identity {
    dev: u64,
    ino: u64,
    mtime: i64,
    mtime_nsec: i64,
    len: u64,
}

impl Identity {
    fn of(metadata: &std::fs::Metadata) -> Identity {
        Identity {
            dev: metadata.dev(),
            ino: metadata.ino(),
            mtime: metadata.mtime(),
            mtime_nsec: metadata.mtime_nsec(),
            len: metadata.len(),
        }
    }
}

/// Usable credentials, with the answer already rendered.
#[derive(Clone)]
struct Loaded {
    body: Bytes,
    expiration: Timestamp,
    expiration_text: String,
}

/// Why there are no credentials to serve. Messages name the file and the problem, never any
/// of the file's content.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Problem {
    Missing(String),
    Unreadable(String),
    Invalid(String),
    Expired(String),
}

impl Problem {
    fn response(&self) -> Response<Full<Bytes>> {
        match self {
            Problem::Missing(m) | Problem::Unreadable(m) => {
                error(StatusCode::SERVICE_UNAVAILABLE, "CredentialsUnavailable", m)
            }
            Problem::Invalid(m) => {
                error(StatusCode::INTERNAL_SERVER_ERROR, "CredentialsInvalid", m)
            }
            Problem::Expired(m) => error(StatusCode::SERVICE_UNAVAILABLE, "CredentialsExpired", m),
        }
    }

    fn message(&self) -> &str {
        match self {
            Problem::Missing(m)
            | Problem::Unreadable(m)
            | Problem::Invalid(m)
            | Problem::Expired(m) => m,
        }
    }
}

impl Source {
    fn new(path: PathBuf) -> Source {
        Source {
            path,
            cache: Mutex::new(Cache {
                identity: None,
                loaded: Err(Problem::Missing(String::new())),
                logged: None,
            }),
        }
    }

    /// The credentials to serve now: re-read if the file changed, and checked for expiry.
    fn current(&self) -> std::result::Result<Loaded, Problem> {
        // A poisoned lock only means a panic elsewhere; the cache itself is always whole.
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let identity = std::fs::metadata(&self.path).map(|m| Identity::of(&m));
        match identity {
            Ok(identity) if cache.identity == Some(identity) => {}
            Ok(_) => {
                let (identity, loaded) = read(&self.path);
                if let Ok(credentials) = &loaded {
                    eprintln!(
                        "credentials-server: loaded credentials expiring at {}",
                        credentials.expiration_text
                    );
                    cache.logged = None;
                }
                cache.identity = identity;
                cache.loaded = loaded;
            }
            Err(e) => {
                cache.identity = None;
                cache.loaded = Err(stat_problem(&self.path, &e));
            }
        }
        let result = match &cache.loaded {
            Ok(credentials) if credentials.expiration <= Timestamp::now() => {
                Err(Problem::Expired(format!(
                    "the credentials in {} expired at {}; the Secret has not been refreshed \
                     since",
                    self.path.display(),
                    credentials.expiration_text
                )))
            }
            other => other.clone(),
        };
        if let Err(problem) = &result
            && cache.logged.as_ref() != Some(problem)
        {
            eprintln!("credentials-server: {}", problem.message());
            cache.logged = Some(problem.clone());
        }
        result
    }
}

fn stat_problem(path: &Path, e: &std::io::Error) -> Problem {
    if e.kind() == std::io::ErrorKind::NotFound {
        Problem::Missing(format!(
            "{} does not exist (is the Secret mounted, and does it have the key \
             credentials.json?)",
            path.display()
        ))
    } else {
        Problem::Unreadable(format!("cannot read {}: {e}", path.display()))
    }
}

/// Reads and checks the file. The identity comes from the opened file, so it always belongs
/// to the content read even if kubelet swaps the volume in between.
fn read(path: &Path) -> (Option<Identity>, std::result::Result<Loaded, Problem>) {
    let opened = std::fs::File::open(path).and_then(|file| Ok((file.metadata()?, file)));
    let (metadata, file) = match opened {
        Ok(opened) => opened,
        Err(e) => return (None, Err(stat_problem(path, &e))),
    };
    let identity = Some(Identity::of(&metadata));
    if !metadata.is_file() {
        let problem = Problem::Invalid(format!("{} is not a regular file", path.display()));
        return (identity, Err(problem));
    }
    if metadata.len() > MAX_FILE_LEN {
        let problem = Problem::Invalid(format!(
            "{} is larger than {MAX_FILE_LEN} bytes: not a credential_process document",
            path.display()
        ));
        return (identity, Err(problem));
    }
    let mut content = Vec::with_capacity(metadata.len() as usize);
    if let Err(e) = (&file).take(MAX_FILE_LEN).read_to_end(&mut content) {
        return (None, Err(stat_problem(path, &e)));
    }
    let loaded = parse(&content).map_err(|what| {
        Problem::Invalid(format!(
            "{} is not a usable credential_process document: {what}",
            path.display()
        ))
    });
    (identity, loaded)
}

/// Checks a credential_process document and renders the container-credentials answer.
/// `Err` says what is wrong in words of its own, never quoting the input (a JSON parser's
/// message would).
fn parse(content: &[u8]) -> std::result::Result<Loaded, String> {
    let Ok(Value::Object(document)) = serde_json::from_slice::<Value>(content) else {
        return Err("it is not a JSON object".into());
    };
    if document.get("Version").and_then(Value::as_i64) != Some(1) {
        return Err("\"Version\" is not 1".into());
    }
    let field = |name: &str| -> std::result::Result<&str, String> {
        match document.get(name).and_then(Value::as_str) {
            Some(value) if !value.is_empty() => Ok(value),
            _ => Err(format!("{name:?} is missing, empty or not a string")),
        }
    };
    let access_key_id = field("AccessKeyId")?;
    let secret_access_key = field("SecretAccessKey")?;
    let session_token = field("SessionToken")?;
    let expiration: Timestamp = field("Expiration")?
        .parse()
        .map_err(|_| "\"Expiration\" is not an RFC 3339 time".to_string())?;
    let expiration_text = crate::secret::format_time(expiration);
    let body = json!({
        "Code": "Success",
        "Type": "AWS-HMAC",
        "AccessKeyId": access_key_id,
        "SecretAccessKey": secret_access_key,
        "Token": session_token,
        "Expiration": expiration_text,
    });
    Ok(Loaded {
        body: Bytes::from(body.to_string()),
        expiration,
        expiration_text,
    })
}

fn json_response(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    // Credentials and their absence are both momentary.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// An error document in the shape SDKs print from a failed credentials request.
fn error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    let body = json!({"Code": code, "Message": message}).to_string();
    json_response(status, Bytes::from(body))
}

/// `--probe`: one `GET /ready` over a plain socket (no runtime needed), exit 0 on 200.
fn probe(addr: SocketAddr) -> CommandOutput {
    match ask_ready(addr) {
        Ok(()) => CommandOutput {
            stdout: format!("ready: http://{addr}{READY_PATH}\n"),
            ..CommandOutput::default()
        },
        Err(reason) => CommandOutput {
            stdout: format!("not ready: http://{addr}{READY_PATH}: {reason}\n"),
            exit_code: 1,
            ..CommandOutput::default()
        },
    }
}

fn ask_ready(addr: SocketAddr) -> std::result::Result<(), String> {
    let mut stream = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT)
        .map_err(|e| format!("cannot connect: {e}"))?;
    stream
        .set_read_timeout(Some(PROBE_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(PROBE_TIMEOUT)))
        .map_err(|e| format!("cannot set a timeout: {e}"))?;
    let request = format!("GET {READY_PATH} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("cannot send the request: {e}"))?;
    let mut response = Vec::new();
    stream
        .take(MAX_FILE_LEN)
        .read_to_end(&mut response)
        .map_err(|e| format!("no answer: {e}"))?;
    let response = String::from_utf8_lossy(&response);
    let status = response
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| "the answer is not HTTP".to_string())?;
    if status == "200" {
        return Ok(());
    }
    let message = response
        .split_once("\r\n\r\n")
        .and_then(|(_, body)| serde_json::from_str::<Value>(body).ok())
        .and_then(|body| Some(body.get("Message")?.as_str()?.to_string()))
        .unwrap_or_default();
    Err(format!("HTTP {status} {message}").trim_end().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_file_is_the_json_key_in_the_mount() {
        assert_eq!(
            DEFAULT_CREDENTIALS_FILE,
            format!("{}/{}", super::super::MOUNT_PATH, crate::secret::KEY_JSON)
        );
    }

    #[test]
    fn token_compare() {
        let token = Token::parse(Some("0123456789abcdef-uid".as_ref())).unwrap();
        assert!(token.matches(b"0123456789abcdef-uid"));
        assert!(!token.matches(b"0123456789abcdef-uiD"));
        assert!(!token.matches(b"0123456789abcdef-ui"));
        assert!(!token.matches(b""));
        assert_eq!(format!("{token:?}"), "Token(<redacted>)");
    }

    #[test]
    fn bad_tokens_are_refused_without_echoing_them() {
        for bad in ["", "short", "has a space in it!!", "tab\tinside-0123456789"] {
            let e = Token::parse(Some(bad.as_ref())).unwrap_err().to_string();
            assert!(e.contains(TOKEN_ENV), "{e}");
            if !bad.is_empty() {
                assert!(!e.contains(bad), "{e}");
            }
        }
        let e = Token::parse(None).unwrap_err().to_string();
        assert!(e.contains("not set"), "{e}");
    }

    #[test]
    fn parse_renders_the_endpoint_document() {
        let loaded = parse(
            br#"{"Version":1,"AccessKeyId":"AKID","SecretAccessKey":"SAK","SessionToken":"ST","Expiration":"2026-11-26T23:00:00Z"}"#,
        )
        .unwrap();
        let body: Value = serde_json::from_slice(&loaded.body).unwrap();
        assert_eq!(body["AccessKeyId"], "AKID");
        assert_eq!(body["SecretAccessKey"], "SAK");
        assert_eq!(body["Token"], "ST");
        assert_eq!(body["Expiration"], "2026-11-26T23:00:00Z");
        assert_eq!(body["Code"], "Success");
    }

    #[test]
    fn parse_errors_name_the_field_not_the_value() {
        #[rustfmt::skip]
        let cases: [(&str, &[u8]); 6] = [
            ("not a JSON object", b"not json SECRETVALUE"),
            ("not a JSON object", br#"["SECRETVALUE"]"#),
            ("\"Version\" is not 1", br#"{"Version":2,"AccessKeyId":"SECRETVALUE"}"#),
            ("\"SessionToken\"", br#"{"Version":1,"AccessKeyId":"SECRETVALUE","SecretAccessKey":"SECRETVALUE"}"#),
            ("\"SecretAccessKey\"", br#"{"Version":1,"AccessKeyId":"SECRETVALUE","SecretAccessKey":7,"SessionToken":"x","Expiration":"x"}"#),
            ("\"Expiration\" is not an RFC 3339 time", br#"{"Version":1,"AccessKeyId":"A","SecretAccessKey":"B","SessionToken":"SECRETVALUE","Expiration":"SECRETVALUE"}"#),
        ];
        for (expected, input) in cases {
            let e = parse(input).err().unwrap();
            assert!(e.contains(expected), "{e}");
            assert!(!e.contains("SECRETVALUE"), "{e}");
        }
    }

    #[test]
    fn only_loopback_is_served() {
        assert!(check_loopback("127.0.0.1:9911".parse().unwrap()).is_ok());
        assert!(check_loopback("[::1]:9911".parse().unwrap()).is_ok());
        for addr in ["0.0.0.0:9911", "10.0.0.1:9911", "[::]:9911"] {
            let e = check_loopback(addr.parse().unwrap()).unwrap_err();
            assert!(e.to_string().contains("not a loopback address"), "{e}");
        }
    }
}
