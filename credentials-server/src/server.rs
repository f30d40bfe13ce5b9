//! Serving: the answer to each request, one thread per connection (capped), and the token.

use std::collections::VecDeque;
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::http::{self, Next, Request, Response, Status};
use crate::json;
use crate::source::{Problem, Source};
use crate::{CREDENTIALS_PATH, MIN_TOKEN_LEN, READY_PATH, TOKEN_ENV};

/// Connections served at once, one thread each. SDKs keep one or two; the cap bounds threads
/// and memory if something in the pod opens connections in a loop.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a client may take to send a request's head, and how long an idle keep-alive
/// connection stays open. Only a connection's own thread waits on it: an idle server has no
/// timer at all.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long writing an answer may take before the client is given up on (answers are a few
/// hundred bytes: only a client that never reads gets here).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Stack of a connection thread: parsing and answering use little, and a smaller reservation
/// keeps many open connections cheap.
const CONNECTION_STACK: usize = 128 * 1024;

/// The authorization token. Never printed: `Debug` is redacted and errors name only the
/// variable.
pub struct Token(Box<[u8]>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// Checks the variable's value; the error says what is wrong without quoting it.
    pub fn parse(value: Option<&std::ffi::OsStr>) -> Result<Token, String> {
        let Some(value) = value else {
            return Err(format!(
                "{TOKEN_ENV} is not set: the endpoint would serve credentials to any request \
                 (the pod mutation sets it from the pod's UID)"
            ));
        };
        let bytes = value.as_encoded_bytes();
        // SDKs send the variable verbatim as a header value: visible ASCII only.
        if !bytes.iter().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "{TOKEN_ENV} holds characters other than visible ASCII (no spaces or control \
                 characters): SDKs could not send it as a header"
            ));
        }
        if bytes.len() < MIN_TOKEN_LEN {
            return Err(format!(
                "{TOKEN_ENV} is {} characters long; at least {MIN_TOKEN_LEN} are needed so that \
                 it cannot be guessed",
                bytes.len()
            ));
        }
        Ok(Token(bytes.into()))
    }

    /// Compares in time independent of where the first difference is, so that response times
    /// do not reveal the token a byte at a time. (The length is no secret: pod UIDs all have
    /// 36 characters.)
    pub fn matches(&self, given: &[u8]) -> bool {
        if given.len() != self.0.len() {
            return false;
        }
        let difference = given
            .iter()
            .zip(self.0.iter())
            .fold(0u8, |acc, (a, b)| std::hint::black_box(acc | (a ^ b)));
        std::hint::black_box(difference) == 0
    }
}

/// What every connection shares.
pub struct State {
    pub token: Token,
    pub source: Source,
}

impl State {
    pub fn answer(&self, request: &Request) -> Response {
        let path = request.path.as_str();
        if path != CREDENTIALS_PATH && path != READY_PATH {
            return error(
                Status::NotFound,
                "NotFound",
                &format!("nothing here; credentials are served at {CREDENTIALS_PATH}"),
            );
        }
        if request.method != "GET" && request.method != "HEAD" {
            let mut response = error(
                Status::MethodNotAllowed,
                "MethodNotAllowed",
                "only GET is served",
            );
            response.allow = Some("GET, HEAD");
            return response;
        }
        if path == READY_PATH {
            return match self.source.current() {
                Ok(credentials) => {
                    let body = format!(
                        "{{\"Ready\":true,\"Expiration\":\"{}\"}}",
                        credentials.expiration_text
                    );
                    Response::json(Status::Ok, body)
                }
                Err(problem) => {
                    // Not ready, whatever the cause: the contract of a readiness path.
                    let mut response = problem_response(&problem);
                    response.status = Status::ServiceUnavailable;
                    response
                }
            };
        }
        let unauthorized = match &request.authorization {
            None => Some(format!(
                "the Authorization header is missing (set {TOKEN_ENV})"
            )),
            Some(given) if !self.token.matches(given) => Some(format!(
                "the Authorization header does not match {TOKEN_ENV}"
            )),
            Some(_) => None,
        };
        if let Some(message) = unauthorized {
            return error(Status::Unauthorized, "Unauthorized", &message);
        }
        match self.source.current() {
            Ok(credentials) => Response::json(Status::Ok, credentials.body),
            Err(problem) => problem_response(&problem),
        }
    }
}

fn problem_response(problem: &Problem) -> Response {
    match problem {
        Problem::Missing(m) | Problem::Unreadable(m) => {
            error(Status::ServiceUnavailable, "CredentialsUnavailable", m)
        }
        Problem::Invalid(m) => error(Status::InternalServerError, "CredentialsInvalid", m),
        Problem::Expired(m) => error(Status::ServiceUnavailable, "CredentialsExpired", m),
    }
}

/// An error document in the shape SDKs print from a failed credentials request.
pub fn error(status: Status, code: &str, message: &str) -> Response {
    Response::json(
        status,
        json::object(&[("Code", code), ("Message", message)]),
    )
}

/// Accepts connections until the process ends (SIGTERM/SIGINT end it: see `signals`).
pub fn accept_loop(listener: TcpListener, state: Arc<State>) -> ! {
    let pool = Arc::new(Pool::default());
    loop {
        match listener.accept() {
            Ok((stream, _)) => pool.dispatch(stream, &state),
            Err(e) => {
                // Out of descriptors and the like: say so, and do not spin.
                eprintln!("credentials-server: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Connection threads, started on demand and kept for the next connection: a fresh
/// connection costs a wake-up rather than a thread start, idle threads wait on a condition
/// variable (no CPU), and at most [`MAX_IDLE_THREADS`] of them stay after a burst.
#[derive(Default)]
struct Pool {
    state: Mutex<PoolState>,
    work: Condvar,
}

#[derive(Default)]
struct PoolState {
    /// Accepted connections no thread has taken yet.
    queue: VecDeque<TcpStream>,
    threads: usize,
    /// Threads waiting for a connection.
    idle: usize,
    /// Threads serving a connection.
    serving: usize,
}

/// Threads kept waiting for connections after a burst; more exit when their connection ends.
const MAX_IDLE_THREADS: usize = 4;

impl Pool {
    fn lock(&self) -> MutexGuard<'_, PoolState> {
        // A poisoned lock only means a panic in another thread; the counts stay whole.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands `stream` to a waiting thread, or starts one; closes it when
    /// [`MAX_CONNECTIONS`] are already being served.
    fn dispatch(self: &Arc<Self>, stream: TcpStream, state: &Arc<State>) {
        let mut pool = self.lock();
        if pool.serving + pool.queue.len() >= MAX_CONNECTIONS {
            // Full: closing the connection is the answer.
            return;
        }
        pool.queue.push_back(stream);
        if pool.idle >= pool.queue.len() {
            self.work.notify_one();
            return;
        }
        pool.threads += 1;
        drop(pool);
        let (this, state) = (self.clone(), state.clone());
        let spawned = std::thread::Builder::new()
            .name("connection".into())
            .stack_size(CONNECTION_STACK)
            .spawn(move || this.work_loop(&state));
        if let Err(e) = spawned {
            eprintln!("credentials-server: cannot start a connection thread: {e}");
            let mut pool = self.lock();
            pool.threads -= 1;
            // Closes the connection unless a waiting thread took it meanwhile.
            if pool.idle < pool.queue.len() {
                pool.queue.pop_back();
            }
        }
    }

    fn work_loop(&self, state: &State) {
        loop {
            let stream = {
                let mut pool = self.lock();
                loop {
                    if let Some(stream) = pool.queue.pop_front() {
                        pool.serving += 1;
                        break stream;
                    }
                    if pool.idle >= MAX_IDLE_THREADS {
                        pool.threads -= 1;
                        return;
                    }
                    pool.idle += 1;
                    pool = self.work.wait(pool).unwrap_or_else(|p| p.into_inner());
                    pool.idle -= 1;
                }
            };
            // A panic (a bug) costs its connection, not the thread's place in the counts.
            let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                serve_connection(stream, state);
            }));
            drop(served);
            self.lock().serving -= 1;
        }
    }
}

/// Answers requests on one connection until the client closes it, asks to, goes quiet for
/// [`HEADER_TIMEOUT`], or sends something this server does not read on.
pub fn serve_connection(mut stream: TcpStream, state: &State) {
    let _ = stream.set_nodelay(true);
    if stream.set_write_timeout(Some(WRITE_TIMEOUT)).is_err() {
        return;
    }
    let mut buffer = Vec::new();
    loop {
        let deadline = Instant::now() + HEADER_TIMEOUT;
        let head = match http::read_head(&mut stream, &mut buffer, deadline) {
            Next::Head(head) => head,
            Next::TooLarge => {
                let response = error(
                    Status::HeadTooLarge,
                    "BadRequest",
                    "the request's headers are too large",
                );
                let _ = http::send(&mut stream, &response.to_bytes(false, true));
                return;
            }
            Next::Gone => return,
        };
        let (response, keep_alive, head_only) = match http::parse_head(&head) {
            Ok(request) => (
                state.answer(&request),
                request.keep_alive,
                request.method == "HEAD",
            ),
            Err(refusal) => (
                error(
                    refusal.status(),
                    "BadRequest",
                    "not an HTTP/1.1 request this server reads",
                ),
                false,
                false,
            ),
        };
        if http::send(&mut stream, &response.to_bytes(head_only, !keep_alive)).is_err()
            || !keep_alive
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::path::PathBuf;

    #[test]
    fn token_compare() {
        let token = Token::parse(Some("0123456789abcdef-uid".as_ref())).unwrap();
        assert!(token.matches(b"0123456789abcdef-uid"));
        assert!(!token.matches(b"0123456789abcdef-uiD"));
        assert!(!token.matches(b"1123456789abcdef-uid"));
        assert!(!token.matches(b"0123456789abcdef-ui"));
        assert!(!token.matches(b"0123456789abcdef-uidx"));
        assert!(!token.matches(b""));
        assert_eq!(format!("{token:?}"), "Token(<redacted>)");
    }

    #[test]
    fn bad_tokens_are_refused_without_echoing_them() {
        for bad in [
            "",
            "short",
            "has a space in it!!",
            "tab\tinside-0123456789",
            "é-0123456789abcdef",
        ] {
            let e = Token::parse(Some(bad.as_ref())).unwrap_err();
            assert!(e.contains(TOKEN_ENV), "{e}");
            if !bad.is_empty() {
                assert!(!e.contains(bad), "{e}");
            }
        }
        let e = Token::parse(None).unwrap_err();
        assert!(e.contains("not set"), "{e}");
    }

    const TOKEN: &str = "7b0f3c52-1d9e-4a8f-b6c1-5e2d9a0c4f17";

    fn state(file: PathBuf) -> State {
        State {
            token: Token::parse(Some(TOKEN.as_ref())).unwrap(),
            source: Source::new(file),
        }
    }

    fn get(path: &str, authorization: Option<&str>) -> Request {
        Request {
            method: "GET".into(),
            path: path.into(),
            authorization: authorization.map(|a| a.as_bytes().to_vec()),
            keep_alive: true,
        }
    }

    fn code(response: &Response) -> String {
        let body = json::parse(response.body.as_bytes()).expect("a JSON body");
        body.get("Code")
            .and_then(json::Value::as_str)
            .unwrap_or_default()
            .to_string()
    }

    /// A credentials file in a directory of its own, removed on drop.
    struct File(PathBuf);

    impl File {
        fn new(name: &str, content: Option<String>) -> File {
            let dir = std::env::temp_dir().join(format!(
                "credentials-server-answer-{name}-{}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let file = dir.join("credentials.json");
            if let Some(content) = content {
                std::fs::write(&file, content).unwrap();
            }
            File(file)
        }
    }

    impl Drop for File {
        fn drop(&mut self) {
            if let Some(dir) = self.0.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }

    fn valid() -> String {
        let expiration = crate::time::Timestamp {
            seconds: crate::time::Timestamp::now().seconds + 3600,
            nanos: 0,
        };
        format!(
            r#"{{"Version":1,"AccessKeyId":"ASIAUNIT","SecretAccessKey":"secret-unit","SessionToken":"session-unit","Expiration":"{}"}}"#,
            expiration.to_rfc3339()
        )
    }

    #[test]
    fn answers() {
        let file = File::new("answers", Some(valid()));
        let state = state(file.0.clone());
        let ok = state.answer(&get("/credentials", Some(TOKEN)));
        assert_eq!(ok.status, Status::Ok);
        assert_eq!(code(&ok), "Success");
        assert!(
            ok.body.contains("\"AccessKeyId\":\"ASIAUNIT\""),
            "{}",
            ok.body
        );

        for authorization in [None, Some(""), Some("7b0f3c52-1d9e-4a8f-b6c1-5e2d9a0c4f10")] {
            let refused = state.answer(&get("/credentials", authorization));
            assert_eq!(refused.status, Status::Unauthorized, "{authorization:?}");
            assert_eq!(code(&refused), "Unauthorized");
            assert!(refused.body.contains(TOKEN_ENV));
            assert!(!refused.body.contains("ASIAUNIT") && !refused.body.contains(TOKEN));
        }

        let ready = state.answer(&get("/ready", None));
        assert_eq!(ready.status, Status::Ok);
        assert!(
            ready.body.starts_with("{\"Ready\":true,\"Expiration\":\""),
            "{}",
            ready.body
        );
        assert!(!ready.body.contains("ASIAUNIT"));

        let missing = state.answer(&get("/latest/meta-data/", Some(TOKEN)));
        assert_eq!(
            (missing.status, code(&missing).as_str()),
            (Status::NotFound, "NotFound")
        );
        let mut post = get("/credentials", Some(TOKEN));
        post.method = "POST".into();
        let post = state.answer(&post);
        assert_eq!(post.status, Status::MethodNotAllowed);
        assert_eq!(post.allow, Some("GET, HEAD"));
        assert!(!post.body.contains("ASIAUNIT"));
    }

    #[test]
    fn problems_are_error_documents_and_not_ready() {
        let file = File::new("problems", None);
        let state = state(file.0.clone());
        let missing = state.answer(&get("/credentials", Some(TOKEN)));
        assert_eq!(
            (missing.status, code(&missing).as_str()),
            (Status::ServiceUnavailable, "CredentialsUnavailable")
        );
        std::fs::write(&file.0, "{\"Version\":1, SECRETVALUE").unwrap();
        let invalid = state.answer(&get("/credentials", Some(TOKEN)));
        assert_eq!(
            (invalid.status, code(&invalid).as_str()),
            (Status::InternalServerError, "CredentialsInvalid")
        );
        assert!(!invalid.body.contains("SECRETVALUE"));
        let ready = state.answer(&get("/ready", None));
        assert_eq!(
            (ready.status, code(&ready).as_str()),
            (Status::ServiceUnavailable, "CredentialsInvalid")
        );
        std::fs::write(
            &file.0,
            valid().replace("\"Expiration\":\"2", "\"Expiration\":\"1"),
        )
        .unwrap();
        let expired = state.answer(&get("/credentials", Some(TOKEN)));
        assert_eq!(
            (expired.status, code(&expired).as_str()),
            (Status::ServiceUnavailable, "CredentialsExpired")
        );
    }

    /// The whole connection loop over loopback: keep-alive, pipelining, HEAD, a bad request.
    #[test]
    fn a_connection_serves_several_requests() {
        let file = File::new("connection", Some(valid()));
        let state = Arc::new(state(file.0.clone()));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = {
            let state = state.clone();
            std::thread::spawn(move || {
                let (stream, _) = listener.accept().unwrap();
                serve_connection(stream, &state);
            })
        };
        let mut client = TcpStream::connect(addr).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let requests = format!(
            "GET /credentials HTTP/1.1\r\nAuthorization: {TOKEN}\r\n\r\n\
             HEAD /ready HTTP/1.1\r\n\r\n\
             GET /credentials HTTP/1.1\r\nAuthorization: wrong\r\n\r\n\
             BROKEN\r\n\r\n\
             GET /credentials HTTP/1.1\r\nAuthorization: {TOKEN}\r\n\r\n"
        );
        client.write_all(requests.as_bytes()).unwrap();
        let mut answers = String::new();
        client.read_to_string(&mut answers).unwrap();
        server.join().unwrap();
        let statuses: Vec<&str> = answers
            .split("HTTP/1.1 ")
            .skip(1)
            .map(|a| &a[..3])
            .filter(|status| status.bytes().all(|b| b.is_ascii_digit()))
            .collect();
        // The broken request ends the connection: the last one is not answered.
        assert_eq!(statuses, ["200", "200", "401", "400"], "{answers}");
        assert!(answers.contains("\"AccessKeyId\":\"ASIAUNIT\""));
        // HEAD: headers with the GET's length, no body (the next answer follows at once).
        let head = answers.split("HTTP/1.1 ").nth(2).unwrap();
        assert!(head.ends_with("\r\n\r\n"), "{head}");
        assert!(
            answers.ends_with("not an HTTP/1.1 request this server reads\"}"),
            "{answers}"
        );
        assert!(answers.contains("connection: close"));
    }

    /// Sends `HEAD /ready` on a keep-alive connection and returns the answer's status line
    /// ("" when the server closed the connection instead).
    fn head_ready(client: &mut TcpStream) -> String {
        client.write_all(b"HEAD /ready HTTP/1.1\r\n\r\n").unwrap();
        let mut answer = Vec::new();
        let mut byte = [0u8; 1];
        while !answer.ends_with(b"\r\n\r\n") {
            match client.read(&mut byte) {
                Ok(0) | Err(_) => break,
                Ok(_) => answer.push(byte[0]),
            }
        }
        let answer = String::from_utf8_lossy(&answer).into_owned();
        answer.lines().next().unwrap_or_default().to_string()
    }

    #[test]
    fn connections_beyond_the_cap_are_closed_and_threads_are_reused() {
        let file = File::new("pool", Some(valid()));
        let state = Arc::new(state(file.0.clone()));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let pool = Arc::new(Pool::default());
        {
            let (pool, state) = (pool.clone(), state.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    pool.dispatch(stream.unwrap(), &state);
                }
            });
        }
        let connect = || {
            let client = TcpStream::connect(addr).unwrap();
            client
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            client
        };
        let mut open: Vec<TcpStream> = (0..MAX_CONNECTIONS).map(|_| connect()).collect();
        for (i, client) in open.iter_mut().enumerate() {
            assert_eq!(head_ready(client), "HTTP/1.1 200 OK", "connection {i}");
        }
        let mut refused = connect();
        assert_eq!(
            head_ready(&mut refused),
            "",
            "a connection beyond the cap was served"
        );
        assert_eq!(pool.lock().threads, MAX_CONNECTIONS);

        // Closing connections frees their threads, which serve the next ones.
        open.truncate(MAX_CONNECTIONS - 2);
        let deadline = Instant::now() + Duration::from_secs(10);
        while pool.lock().idle < 2 {
            assert!(
                Instant::now() < deadline,
                "the threads of closed connections stay busy"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut again = connect();
        assert_eq!(head_ready(&mut again), "HTTP/1.1 200 OK");
        assert_eq!(
            pool.lock().threads,
            MAX_CONNECTIONS,
            "a thread was started, not reused"
        );

        // When all end, at most a few threads stay.
        open.clear();
        drop(again);
        let deadline = Instant::now() + Duration::from_secs(10);
        while pool.lock().threads > MAX_IDLE_THREADS {
            assert!(
                Instant::now() < deadline,
                "{} threads stay",
                pool.lock().threads
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut last = connect();
        assert_eq!(head_ready(&mut last), "HTTP/1.1 200 OK");
    }

    #[test]
    fn a_silent_client_is_not_waited_for_forever() {
        // The deadline logic itself is tested in `http`; here the thread really ends when the
        // client closes without a word.
        let file = File::new("silent", Some(valid()));
        let state = Arc::new(state(file.0.clone()));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            serve_connection(stream, &state);
        });
        let client = TcpStream::connect(addr).unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        server.join().unwrap();
    }
}
