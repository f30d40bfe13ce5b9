//! The part of HTTP/1.1 an AWS SDK's credentials request needs: a request head (request line
//! and headers; bodies are not read, a request with one is answered and its connection closed),
//! keep-alive and pipelining, and answers with a fixed set of headers.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

/// Longest request head (request line and headers) read; SDKs send a few hundred bytes.
pub const MAX_HEAD: usize = 16 * 1024;
/// Most header lines in one request.
pub const MAX_HEADERS: usize = 32;

/// What the server looks at in a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The target's path: without the query, and without scheme and authority when the
    /// request line carries an absolute URI.
    pub path: String,
    /// The first `Authorization` header's value, surrounding whitespace trimmed.
    pub authorization: Option<Vec<u8>>,
    /// Whether the connection may carry another request after this one.
    pub keep_alive: bool,
}

/// Why a request head was not usable; the answer is an error status, then the connection
/// closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    BadRequest,
    HeadTooLarge,
    VersionNotSupported,
}

impl Refusal {
    pub fn status(self) -> Status {
        match self {
            Refusal::BadRequest => Status::BadRequest,
            Refusal::HeadTooLarge => Status::HeadTooLarge,
            Refusal::VersionNotSupported => Status::VersionNotSupported,
        }
    }
}

/// Parses a complete head (everything before the blank line, which is not included).
pub fn parse_head(head: &[u8]) -> Result<Request, Refusal> {
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line));
    // RFC 9112 2.2: empty lines before the request line are ignored.
    let request_line = lines
        .by_ref()
        .find(|line| !line.is_empty())
        .ok_or(Refusal::BadRequest)?;
    let mut parts = request_line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Refusal::BadRequest);
    };
    if method.is_empty() || !method.iter().all(|&b| is_token(b)) {
        return Err(Refusal::BadRequest);
    }
    let http11 = match version {
        b"HTTP/1.1" => true,
        b"HTTP/1.0" => false,
        v if v.starts_with(b"HTTP/") => return Err(Refusal::VersionNotSupported),
        _ => return Err(Refusal::BadRequest),
    };
    let path = path_of(target).ok_or(Refusal::BadRequest)?;

    let mut authorization = None;
    let mut close = false;
    let mut keep_alive_asked = false;
    let mut has_body = false;
    let mut count = 0;
    for line in lines {
        if line.is_empty() {
            // Only the terminating blank line may be empty, and it is not part of `head`.
            return Err(Refusal::BadRequest);
        }
        count += 1;
        if count > MAX_HEADERS {
            return Err(Refusal::HeadTooLarge);
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or(Refusal::BadRequest)?;
        let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
        // No whitespace between name and colon (RFC 9112 5.1), no obsolete line folding.
        if name.is_empty() || !name.iter().all(|&b| is_token(b)) {
            return Err(Refusal::BadRequest);
        }
        if value.iter().any(|&b| b == 0 || b == b'\r') {
            return Err(Refusal::BadRequest);
        }
        if name.eq_ignore_ascii_case(b"authorization") {
            authorization.get_or_insert_with(|| value.to_vec());
        } else if name.eq_ignore_ascii_case(b"connection") {
            for option in value.split(|&b| b == b',').map(trim) {
                close |= option.eq_ignore_ascii_case(b"close");
                keep_alive_asked |= option.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case(b"content-length") {
            let length = std::str::from_utf8(value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or(Refusal::BadRequest)?;
            has_body |= length > 0;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            has_body = true;
        }
    }
    Ok(Request {
        method: String::from_utf8_lossy(method).into_owned(),
        path,
        authorization,
        // A body is never read, so the connection cannot carry another request after it.
        keep_alive: !close && !has_body && (http11 || keep_alive_asked),
    })
}

/// The path of an origin-form (`/p?q`) or absolute-form (`http://h/p?q`) target; `*` and
/// anything else yield a path that matches nothing.
fn path_of(target: &[u8]) -> Option<String> {
    if target.is_empty() || target.iter().any(|b| !b.is_ascii_graphic()) {
        return None;
    }
    let target = std::str::from_utf8(target).ok()?;
    let without_scheme = ["http://", "https://"].iter().find_map(|scheme| {
        let head = target.get(..scheme.len())?;
        head.eq_ignore_ascii_case(scheme)
            .then(|| &target[scheme.len()..])
    });
    let path_and_query = match without_scheme {
        Some(rest) => rest.find(['/', '?', '#']).map_or("/", |i| &rest[i..]),
        None => target,
    };
    let end = path_and_query
        .find(['?', '#'])
        .unwrap_or(path_and_query.len());
    let path = &path_and_query[..end];
    Some(if path.is_empty() {
        "/".to_string()
    } else {
        path.to_string()
    })
}

fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// The statuses this server answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    BadRequest,
    Unauthorized,
    NotFound,
    MethodNotAllowed,
    HeadTooLarge,
    InternalServerError,
    ServiceUnavailable,
    VersionNotSupported,
}

impl Status {
    pub fn code(self) -> u16 {
        match self {
            Status::Ok => 200,
            Status::BadRequest => 400,
            Status::Unauthorized => 401,
            Status::NotFound => 404,
            Status::MethodNotAllowed => 405,
            Status::HeadTooLarge => 431,
            Status::InternalServerError => 500,
            Status::ServiceUnavailable => 503,
            Status::VersionNotSupported => 505,
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::BadRequest => "Bad Request",
            Status::Unauthorized => "Unauthorized",
            Status::NotFound => "Not Found",
            Status::MethodNotAllowed => "Method Not Allowed",
            Status::HeadTooLarge => "Request Header Fields Too Large",
            Status::InternalServerError => "Internal Server Error",
            Status::ServiceUnavailable => "Service Unavailable",
            Status::VersionNotSupported => "HTTP Version Not Supported",
        }
    }
}

/// A JSON answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: Status,
    pub body: String,
    /// The `Allow` header of a 405.
    pub allow: Option<&'static str>,
}

impl Response {
    pub fn json(status: Status, body: String) -> Response {
        Response {
            status,
            body,
            allow: None,
        }
    }

    /// The bytes on the wire; `head_only` for a HEAD request (the length is still the GET
    /// body's), `close` adds `Connection: close`.
    pub fn to_bytes(&self, head_only: bool, close: bool) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\n\
             cache-control: no-store\r\ncontent-length: {}\r\n",
            self.status.code(),
            self.status.reason(),
            self.body.len()
        );
        if let Some(allow) = self.allow {
            head.push_str("allow: ");
            head.push_str(allow);
            head.push_str("\r\n");
        }
        if close {
            head.push_str("connection: close\r\n");
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        if !head_only {
            bytes.extend_from_slice(self.body.as_bytes());
        }
        bytes
    }
}

/// What reading the next request head gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// A complete head (without its blank line); the buffer keeps what followed it.
    Head(Vec<u8>),
    /// The head outgrew [`MAX_HEAD`].
    TooLarge,
    /// The client closed the connection, went quiet past the deadline, or the read failed:
    /// nothing to answer.
    Gone,
}

/// Reads from `stream` into `buffer` until it holds a whole head, the deadline passes or the
/// client leaves. The deadline covers the whole head, so a client trickling one byte at a time
/// cannot keep a connection forever.
pub fn read_head<S: Read + Deadline>(
    stream: &mut S,
    buffer: &mut Vec<u8>,
    deadline: Instant,
) -> Next {
    let mut searched = 0;
    loop {
        // RFC 9112 2.2: empty lines before a request line are ignored.
        let blank = buffer
            .iter()
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .count();
        if blank > 0 {
            buffer.drain(..blank);
            searched = 0;
        }
        if let Some((end, after)) = head_end(buffer, searched) {
            let head = buffer[..end].to_vec();
            buffer.drain(..after);
            return Next::Head(head);
        }
        if buffer.len() > MAX_HEAD {
            return Next::TooLarge;
        }
        // The blank line may straddle two reads.
        searched = buffer.len().saturating_sub(2);
        let Some(left) = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
        else {
            return Next::Gone;
        };
        if stream.set_deadline(left).is_err() {
            return Next::Gone;
        }
        let mut chunk = [0u8; 2048];
        match stream.read(&mut chunk) {
            Ok(0) => return Next::Gone,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Next::Gone,
        }
    }
}

/// Finds the blank line ending a head, looking at line ends from `from` on: returns where the
/// head ends (before its last line end) and where what follows the blank line starts. Bare LF
/// line ends are accepted as well as CRLF. `buffer` does not start with a line end.
fn head_end(buffer: &[u8], from: usize) -> Option<(usize, usize)> {
    (from..buffer.len()).find_map(|i| {
        if buffer[i] != b'\n' || i == 0 {
            return None;
        }
        if buffer[i - 1] == b'\n' {
            return Some((i - 1, i + 1));
        }
        if i >= 2 && buffer[i - 1] == b'\r' && buffer[i - 2] == b'\n' {
            return Some((i - 2, i + 1));
        }
        None
    })
}

/// A stream whose reads can be bounded in time.
pub trait Deadline {
    fn set_deadline(&mut self, left: Duration) -> io::Result<()>;
}

impl Deadline for std::net::TcpStream {
    fn set_deadline(&mut self, left: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(left))
    }
}

/// Writes an answer whole.
pub fn send<W: Write>(stream: &mut W, bytes: &[u8]) -> io::Result<()> {
    stream.write_all(bytes)?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Result<Request, Refusal> {
        parse_head(text.as_bytes())
    }

    #[test]
    fn a_typical_sdk_request() {
        let request = head(
            "GET /credentials HTTP/1.1\r\nHost: 127.0.0.1:9911\r\nAuthorization:  tok-en \r\n\
             User-Agent: aws-sdk\r\nAccept: */*",
        )
        .unwrap();
        assert_eq!(
            request,
            Request {
                method: "GET".into(),
                path: "/credentials".into(),
                authorization: Some(b"tok-en".to_vec()),
                keep_alive: true,
            }
        );
    }

    #[test]
    fn paths() {
        for (target, path) in [
            ("/credentials?x=1", "/credentials"),
            ("/credentials#f", "/credentials"),
            ("http://127.0.0.1:9911/credentials?x", "/credentials"),
            ("HTTP://host", "/"),
            ("http://host?q", "/"),
            ("*", "*"),
            ("/", "/"),
        ] {
            let request = head(&format!("GET {target} HTTP/1.1\r\nHost: h")).unwrap();
            assert_eq!(request.path, path, "{target}");
        }
    }

    #[test]
    fn keep_alive_follows_version_and_connection() {
        let keeps = |text: &str| head(text).unwrap().keep_alive;
        assert!(keeps("GET / HTTP/1.1"));
        assert!(!keeps("GET / HTTP/1.1\r\nConnection: close"));
        assert!(!keeps("GET / HTTP/1.1\r\nconnection: Keep-Alive, CLOSE"));
        assert!(!keeps("GET / HTTP/1.0"));
        assert!(keeps("GET / HTTP/1.0\r\nConnection: keep-alive"));
        // A body is not read: the connection ends after the answer.
        assert!(!keeps("POST / HTTP/1.1\r\nContent-Length: 3"));
        assert!(keeps("POST / HTTP/1.1\r\nContent-Length: 0"));
        assert!(!keeps("POST / HTTP/1.1\r\nTransfer-Encoding: chunked"));
    }

    #[test]
    fn the_first_authorization_header_counts() {
        let request = head("GET / HTTP/1.1\r\nauthorization: one\r\nAuthorization: two").unwrap();
        assert_eq!(request.authorization.as_deref(), Some(&b"one"[..]));
        let empty = head("GET / HTTP/1.1\r\nAuthorization:").unwrap();
        assert_eq!(empty.authorization.as_deref(), Some(&b""[..]));
        assert_eq!(head("GET / HTTP/1.1").unwrap().authorization, None);
    }

    #[test]
    fn malformed_heads_are_refused() {
        for (bad, refusal) in [
            ("", Refusal::BadRequest),
            ("GET /", Refusal::BadRequest),
            ("GET  / HTTP/1.1", Refusal::BadRequest),
            ("GET / HTTP/1.1 x", Refusal::BadRequest),
            ("G(T / HTTP/1.1", Refusal::BadRequest),
            ("GET / HTTP/2.0", Refusal::VersionNotSupported),
            ("GET / FTP/1.0", Refusal::BadRequest),
            ("GET /a b HTTP/1.1", Refusal::BadRequest),
            ("GET / HTTP/1.1\r\nNo colon", Refusal::BadRequest),
            ("GET / HTTP/1.1\r\nName : v", Refusal::BadRequest),
            ("GET / HTTP/1.1\r\n folded: v", Refusal::BadRequest),
            ("GET / HTTP/1.1\r\nContent-Length: x", Refusal::BadRequest),
            ("GET / HTTP/1.1\r\nContent-Length: -1", Refusal::BadRequest),
            ("GET / HTTP/1.1\r\nA: 1\r\n\r\nB: 2", Refusal::BadRequest),
        ] {
            assert_eq!(head(bad), Err(refusal), "{bad:?}");
        }
        let many: String = (0..=MAX_HEADERS).map(|i| format!("\r\nX-{i}: v")).collect();
        assert_eq!(
            head(&format!("GET / HTTP/1.1{many}")),
            Err(Refusal::HeadTooLarge)
        );
    }

    #[test]
    fn answers_on_the_wire() {
        let response = Response::json(Status::Ok, "{}".into());
        let text = String::from_utf8(response.to_bytes(false, false)).unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncache-control: no-store\r\n\
             content-length: 2\r\n\r\n{}"
        );
        let mut refused = Response::json(Status::MethodNotAllowed, "{\"a\":1}".into());
        refused.allow = Some("GET, HEAD");
        let text = String::from_utf8(refused.to_bytes(true, true)).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\ncontent-length: 7\r\n"), "{text}");
        assert!(text.contains("\r\nallow: GET, HEAD\r\n"), "{text}");
        assert!(
            text.ends_with("\r\nconnection: close\r\n\r\n"),
            "HEAD has no body: {text}"
        );
    }

    /// A stream fed in the given pieces, then at its end.
    struct Pieces(Vec<Vec<u8>>);

    impl Read for Pieces {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                return Ok(0);
            }
            let piece = &mut self.0[0];
            let n = piece.len().min(out.len());
            out[..n].copy_from_slice(&piece[..n]);
            piece.drain(..n);
            if piece.is_empty() {
                self.0.remove(0);
            }
            Ok(n)
        }
    }

    impl Deadline for Pieces {
        fn set_deadline(&mut self, _: Duration) -> io::Result<()> {
            Ok(())
        }
    }

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[test]
    fn heads_are_split_across_reads_and_pipelined_requests_kept() {
        let pieces = [
            "GET /a HTTP/1.1\r",
            "\nHost: h\r\n\r",
            "\nGET /b HTTP/1.1\n\nGET /c",
        ];
        let mut stream = Pieces(pieces.iter().map(|p| p.as_bytes().to_vec()).collect());
        let mut buffer = Vec::new();
        let first = read_head(&mut stream, &mut buffer, later());
        assert_eq!(first, Next::Head(b"GET /a HTTP/1.1\r\nHost: h\r".to_vec()));
        let second = read_head(&mut stream, &mut buffer, later());
        assert_eq!(second, Next::Head(b"GET /b HTTP/1.1".to_vec()));
        assert_eq!(buffer, b"GET /c");
        // The client leaves mid-head.
        assert_eq!(read_head(&mut stream, &mut buffer, later()), Next::Gone);
    }

    #[test]
    fn leading_blank_lines_are_skipped() {
        let mut stream = Pieces(vec![b"\r\n\r\nGET / HTTP/1.1\r\n\r\n".to_vec()]);
        let mut buffer = Vec::new();
        let Next::Head(head) = read_head(&mut stream, &mut buffer, later()) else {
            panic!("no head");
        };
        assert_eq!(parse_head(&head).unwrap().path, "/");
    }

    #[test]
    fn oversized_heads_and_past_deadlines_end_the_connection() {
        let mut stream = Pieces(vec![vec![b'a'; MAX_HEAD + 10]]);
        assert_eq!(
            read_head(&mut stream, &mut Vec::new(), later()),
            Next::TooLarge
        );
        let mut stream = Pieces(vec![b"GET / HTTP/1.1\r\n\r\n".to_vec()]);
        assert_eq!(
            read_head(&mut stream, &mut Vec::new(), Instant::now()),
            Next::Gone
        );
    }
}
