//! `credentials-server`: the sidecar of kube-aws-iam-controller's `endpoint` delivery. It
//! serves the mounted Secret's `credentials.json` (a credential_process document) as an AWS
//! container-credentials document on 127.0.0.1.
//!
//! It runs in every opted-in pod, so it is a binary of its own with nothing but the standard
//! library: a few hundred KiB, a thread per open connection (capped), and nothing at all
//! while nobody asks — no timer, no watcher. Each request `stat`s the credentials file and
//! re-reads it only when it changed (see [`source`]).
//!
//! The endpoint is guarded by a token from `AWS_CONTAINER_AUTHORIZATION_TOKEN`, which every
//! AWS SDK sends back verbatim in the `Authorization` header. A request forged through an SSRF
//! in the application does not carry it, so it gets a 401 and no credentials.
//!
//! The controller's own `kube-aws-iam-controller credentials-server` subcommand (which pods
//! injected by earlier versions run) calls [`serve`] and [`probe`] too: one implementation.

#![deny(unsafe_code)]

pub mod http;
pub mod json;
pub mod server;
mod signals;
pub mod source;
pub mod time;

use std::convert::Infallible;
use std::ffi::OsString;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Port of the sidecar on the pod's loopback interface.
pub const DEFAULT_PORT: u16 = 9911;
/// The default `--credentials-file`: `credentials.json` in the Secret mounted at
/// `/meta/aws-iam` (the controller's tests keep the two in step).
pub const DEFAULT_CREDENTIALS_FILE: &str = "/meta/aws-iam/credentials.json";
/// Path the container-credentials document is served on.
pub const CREDENTIALS_PATH: &str = "/credentials";
/// Path that answers 200 once there are usable credentials (the startup probe's).
pub const READY_PATH: &str = "/ready";
/// The variable carrying the authorization token. Every SDK reads it; older Go SDKs read
/// nothing else (not the `_FILE` variant).
pub const TOKEN_ENV: &str = "AWS_CONTAINER_AUTHORIZATION_TOKEN";
/// Shortest token accepted: the pod UID the mutation hands over has 36 characters; anything
/// much shorter is guessable by a process that can only send requests.
pub const MIN_TOKEN_LEN: usize = 16;
/// The variables `--listen` and `--credentials-file` fall back to (the controller's naming).
pub const LISTEN_ENV: &str = "KUBE_AWS_IAM_CONTROLLER_LISTEN";
pub const CREDENTIALS_FILE_ENV: &str = "KUBE_AWS_IAM_CONTROLLER_CREDENTIALS_FILE";
/// `--probe`: how long to wait for the server to accept and answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Most of an answer `--probe` reads.
const PROBE_MAX_ANSWER: u64 = 64 * 1024;

/// A run's settings: where to serve (or, with `probe`, whom to ask) and which file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Loopback address to serve on (or, with `probe`, to ask).
    pub listen: SocketAddr,
    /// The mounted Secret's credentials.json.
    pub credentials_file: PathBuf,
    /// Ask the server at `listen` for /ready instead of serving.
    pub probe: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)),
            credentials_file: PathBuf::from(DEFAULT_CREDENTIALS_FILE),
            probe: false,
        }
    }
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Run(Config),
    Help,
    Version,
}

/// Why the server cannot start. Messages never contain the token.
#[derive(Debug)]
pub enum Error {
    /// A flag or environment variable is unusable (exit code 2, like the controller's).
    Config(String),
    /// The address could not be bound.
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Config(message) => write!(f, "invalid configuration: {message}"),
            Error::Listen { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Config(_) => None,
            Error::Listen { source, .. } => Some(source),
        }
    }
}

pub const HELP: &str = "\
Serve the mounted AWSIAMRole Secret's credentials.json as an AWS container-credentials endpoint
on 127.0.0.1 (the endpoint delivery's pod sidecar). The token comes from
AWS_CONTAINER_AUTHORIZATION_TOKEN.

Usage: credentials-server [OPTIONS]

Options:
      --listen <ADDR>           Loopback address to serve on (127.0.0.0/8 or ::1; anything else
                                is refused) [env: KUBE_AWS_IAM_CONTROLLER_LISTEN=]
                                [default: 127.0.0.1:9911]
      --credentials-file <PATH> The mounted Secret's credentials.json (credential_process
                                document); re-read whenever it changes
                                [env: KUBE_AWS_IAM_CONTROLLER_CREDENTIALS_FILE=]
                                [default: /meta/aws-iam/credentials.json]
      --probe                   Ask the server running at --listen for /ready and exit 0 if it
                                is ready, 1 if not (the sidecar's startup probe; needs no token)
  -h, --help                    Print help
  -V, --version                 Print version
";

/// Reads the command line (without the program name) with environment fallbacks: a flag wins
/// over its variable, the variable over the default; an empty variable counts as unset.
pub fn parse_args(
    args: impl IntoIterator<Item = OsString>,
    env: impl Fn(&str) -> Option<OsString>,
) -> Result<Command, String> {
    let mut listen: Option<OsString> = None;
    let mut credentials_file: Option<OsString> = None;
    let mut probe = false;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let text = arg.to_string_lossy().into_owned();
        // `--flag=value` (a value that is not UTF-8 must come as its own argument).
        let (flag, inline) = match text.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_string(), Some(OsString::from(value)))
            }
            _ => (text.clone(), None),
        };
        let mut value = |name: &str| -> Result<OsString, String> {
            match inline.clone().or_else(|| args.next()) {
                Some(value) => Ok(value),
                None => Err(format!(
                    "a value is required for '{name}' but none was supplied"
                )),
            }
        };
        match flag.as_str() {
            "--listen" => set_once(&mut listen, value("--listen <ADDR>")?, "--listen")?,
            "--credentials-file" => set_once(
                &mut credentials_file,
                value("--credentials-file <PATH>")?,
                "--credentials-file",
            )?,
            "--probe" if inline.is_none() => {
                if probe {
                    return Err("the argument '--probe' cannot be used multiple times".into());
                }
                probe = true;
            }
            "-h" | "--help" if inline.is_none() => return Ok(Command::Help),
            "-V" | "--version" if inline.is_none() => return Ok(Command::Version),
            _ => return Err(format!("unexpected argument '{text}' found (see --help)")),
        }
    }
    let from_env = |name: &str| env(name).filter(|v| !v.is_empty());
    let mut config = Config::default();
    if let Some(listen) = listen.or_else(|| from_env(LISTEN_ENV)) {
        config.listen = listen
            .to_str()
            .and_then(|l| l.parse().ok())
            .ok_or_else(|| {
                format!(
                    "invalid value '{}' for '--listen <ADDR>' (or {LISTEN_ENV}): not an IP \
                     address and port",
                    listen.to_string_lossy()
                )
            })?;
    }
    if let Some(file) = credentials_file.or_else(|| from_env(CREDENTIALS_FILE_ENV)) {
        if file.is_empty() {
            return Err("'--credentials-file <PATH>' is empty".into());
        }
        config.credentials_file = PathBuf::from(file);
    }
    config.probe = probe;
    Ok(Command::Run(config))
}

fn set_once(slot: &mut Option<OsString>, value: OsString, name: &str) -> Result<(), String> {
    if slot.replace(value).is_some() {
        return Err(format!(
            "the argument '{name}' cannot be used multiple times"
        ));
    }
    Ok(())
}

/// Loopback is the point: the token is the only other guard, and a pod's loopback interface
/// is reachable only from its own containers.
pub fn check_loopback(addr: SocketAddr) -> Result<(), Error> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "--listen {addr} is not a loopback address: the credentials endpoint serves only \
             127.0.0.1 (or ::1), where nothing outside the pod can reach it"
        )))
    }
}

/// Serves until SIGTERM or SIGINT ends the process (exit code 0); returns only when it cannot
/// start. `token` is the value of [`TOKEN_ENV`].
pub fn serve(config: &Config, token: Option<&std::ffi::OsStr>) -> Result<Infallible, Error> {
    check_loopback(config.listen)?;
    let token = server::Token::parse(token).map_err(Error::Config)?;
    let listener = std::net::TcpListener::bind(config.listen).map_err(|source| Error::Listen {
        addr: config.listen,
        source,
    })?;
    signals::exit_on_termination();
    eprintln!(
        "credentials-server: serving {} on http://{}{CREDENTIALS_PATH}",
        config.credentials_file.display(),
        config.listen
    );
    let state = Arc::new(server::State {
        token,
        source: source::Source::new(config.credentials_file.clone()),
    });
    // Load once at start so a broken mount shows in the log before the first request.
    drop(state.source.current());
    server::accept_loop(listener, state)
}

/// `--probe`: one `GET /ready` over a plain socket. `Ok` (exit 0) with the line to print when
/// the server answers 200, `Err` (exit 1) with the line saying why not.
pub fn probe(addr: SocketAddr) -> Result<String, String> {
    match ask_ready(addr) {
        Ok(()) => Ok(format!("ready: http://{addr}{READY_PATH}\n")),
        Err(reason) => Err(format!("not ready: http://{addr}{READY_PATH}: {reason}\n")),
    }
}

fn ask_ready(addr: SocketAddr) -> Result<(), String> {
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
        .take(PROBE_MAX_ANSWER)
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
        .and_then(|(_, body)| json::parse(body.as_bytes()).ok())
        .and_then(|body| Some(body.get("Message")?.as_str()?.to_string()))
        .unwrap_or_default();
    Err(format!("HTTP {status} {message}").trim_end().to_string())
}

/// The binary's whole life: parse, then serve, probe or print; returns the exit code.
pub fn main(
    args: impl IntoIterator<Item = OsString>,
    env: impl Fn(&str) -> Option<OsString>,
) -> u8 {
    let config = match parse_args(args, &env) {
        Ok(Command::Run(config)) => config,
        Ok(Command::Help) => {
            print!("{HELP}");
            return 0;
        }
        Ok(Command::Version) => {
            println!("credentials-server {}", env!("CARGO_PKG_VERSION"));
            return 0;
        }
        Err(usage) => {
            eprintln!("error: {usage}");
            return 2;
        }
    };
    if config.probe {
        return match probe(config.listen) {
            Ok(line) => {
                print!("{line}");
                0
            }
            Err(line) => {
                print!("{line}");
                1
            }
        };
    }
    match serve(&config, env(TOKEN_ENV).as_deref()) {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("error: {e}");
            2
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str], env: &[(&str, &str)]) -> Result<Command, String> {
        let env: Vec<(String, OsString)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        parse_args(args.iter().map(OsString::from), |name| {
            env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
    }

    fn config(args: &[&str], env: &[(&str, &str)]) -> Config {
        match parse(args, env) {
            Ok(Command::Run(config)) => config,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    #[test]
    fn defaults_variables_and_flags() {
        assert_eq!(config(&[], &[]), Config::default());
        assert_eq!(Config::default().listen.to_string(), "127.0.0.1:9911");
        let from_env = config(
            &[],
            &[
                (LISTEN_ENV, "127.0.0.2:1234"),
                (CREDENTIALS_FILE_ENV, "/env/c.json"),
            ],
        );
        assert_eq!(from_env.listen.to_string(), "127.0.0.2:1234");
        assert_eq!(from_env.credentials_file, PathBuf::from("/env/c.json"));
        let flags = config(
            &[
                "--listen",
                "[::1]:80",
                "--credentials-file=/flag/c.json",
                "--probe",
            ],
            &[
                (LISTEN_ENV, "127.0.0.2:1234"),
                (CREDENTIALS_FILE_ENV, "/env/c.json"),
            ],
        );
        assert_eq!(
            flags,
            Config {
                listen: "[::1]:80".parse().unwrap(),
                credentials_file: PathBuf::from("/flag/c.json"),
                probe: true,
            }
        );
        assert_eq!(
            config(&["--listen=127.0.0.1:1"], &[(LISTEN_ENV, "")])
                .listen
                .port(),
            1
        );
        assert_eq!(config(&[], &[(LISTEN_ENV, "")]), Config::default());
    }

    #[test]
    fn help_version_and_usage_errors() {
        assert_eq!(parse(&["--help"], &[]), Ok(Command::Help));
        assert_eq!(parse(&["-V"], &[]), Ok(Command::Version));
        for (args, says) in [
            (&["--listen"][..], "a value is required"),
            (&["--listen", "nowhere"], "invalid value 'nowhere'"),
            (&["--listen", "1", "--listen", "2"], "multiple times"),
            (&["--probe", "--probe"], "multiple times"),
            (&["--probe=yes"], "unexpected argument"),
            (&["serve"], "unexpected argument 'serve'"),
            (&["--credentials-file="], "is empty"),
        ] {
            let e = parse(args, &[]).unwrap_err();
            assert!(e.contains(says), "{args:?}: {e}");
        }
        let e = parse(&[], &[(LISTEN_ENV, "x")]).unwrap_err();
        assert!(e.contains(LISTEN_ENV), "{e}");
        for flag in [
            "--listen",
            "--credentials-file",
            "--probe",
            LISTEN_ENV,
            CREDENTIALS_FILE_ENV,
        ] {
            assert!(HELP.contains(flag), "--help does not mention {flag}");
        }
    }

    #[test]
    fn only_loopback_is_served() {
        assert!(check_loopback("127.0.0.1:9911".parse().unwrap()).is_ok());
        assert!(check_loopback("127.1.2.3:9911".parse().unwrap()).is_ok());
        assert!(check_loopback("[::1]:9911".parse().unwrap()).is_ok());
        for addr in ["0.0.0.0:9911", "10.0.0.1:9911", "[::]:9911"] {
            let e = check_loopback(addr.parse().unwrap()).unwrap_err();
            assert!(e.to_string().contains("not a loopback address"), "{e}");
        }
    }

    #[test]
    fn refuses_to_serve_unguarded_before_binding() {
        let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let config = Config {
            listen,
            ..Config::default()
        };
        let e = serve(&config, None).err().unwrap();
        assert!(
            matches!(&e, Error::Config(m) if m.contains("is not set")),
            "{e}"
        );
        let e = serve(&config, Some("short".as_ref())).err().unwrap();
        assert!(e.to_string().starts_with("invalid configuration: "), "{e}");
    }

    #[test]
    fn probe_says_why_not() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let line = probe(SocketAddr::from(([127, 0, 0, 1], port))).unwrap_err();
        assert!(
            line.starts_with(&format!(
                "not ready: http://127.0.0.1:{port}/ready: cannot connect"
            )),
            "{line}"
        );
    }
}
