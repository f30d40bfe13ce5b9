//! A blocking HTTPS/1.1 client for tests of the compiled binary's TLS servers (the webhook), as
//! the API server meets them: rustls trusting only the test CA and checking the server's name,
//! keep-alive connections kept by name across requests, and the peer certificate's digest with
//! every answer (to tell which certificate a handshake was served).
//!
//! The HTTP it speaks is written out here rather than taken from a client library, so that a
//! test can also send what a library would refuse to: headers declaring a body that never comes.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio_rustls::rustls::{self, ClientConfig, ClientConnection, RootCertStore, StreamOwned};

/// How long a connection waits for the server, as kube-apiserver's default webhook timeout
/// would not (it is 10 s; a slow answer shows up as a failure here rather than a hang).
const TIMEOUT: Duration = Duration::from_secs(20);

type Tls = BufReader<StreamOwned<ClientConnection, TcpStream>>;

/// One request. `conn` names a keep-alive connection (opened on first use, reused while the
/// server keeps it open); without it the request gets a connection of its own.
#[derive(Clone, Copy, Debug, Default)]
pub struct Request<'a> {
    /// `GET` when empty.
    pub method: &'a str,
    pub path: &'a str,
    /// A JSON body, sent with its length.
    pub body: Option<&'a [u8]>,
    /// Headers declaring a JSON body of this many bytes, and no body at all.
    pub declare_length: Option<usize>,
    pub conn: Option<&'a str>,
    /// The name the certificate is checked against (`localhost` when `None`).
    pub server_name: Option<&'a str>,
}

/// One answer as the client saw it.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub body: String,
    /// SHA-256 (hex) of the certificate the server presented on this connection.
    pub cert_sha256: String,
    /// Whether the request went over a connection an earlier request had opened.
    pub reused: bool,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// A client for the server on 127.0.0.1:`port`.
pub struct Client {
    port: u16,
    config: Arc<ClientConfig>,
    conns: BTreeMap<String, Tls>,
}

impl Client {
    /// Trusts only the certificates of `ca_pem`.
    pub fn new(port: u16, ca_pem: &str) -> Client {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots
                .add(cert.expect("the CA is PEM"))
                .expect("the CA is a certificate");
        }
        assert!(!roots.is_empty(), "no certificate in the CA PEM");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        // Every new connection makes a full handshake, as kube-apiserver's webhook client does:
        // a resumed session would show the certificate of the first handshake, and the server
        // would never be asked for its current one.
        config.resumption = rustls::client::Resumption::disabled();
        Client {
            port,
            config: Arc::new(config),
            conns: BTreeMap::new(),
        }
    }

    /// GET `path` on a connection of its own; panics unless the server answered.
    pub fn get(&mut self, path: &str) -> Reply {
        self.send(&Request {
            path,
            ..Request::default()
        })
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// POSTs `body` (JSON) to /mutate on the named keep-alive connection.
    pub fn post_on(&mut self, conn: &str, body: &str) -> Reply {
        self.send(&Request {
            method: "POST",
            path: "/mutate",
            body: Some(body.as_bytes()),
            conn: Some(conn),
            ..Request::default()
        })
        .unwrap_or_else(|e| panic!("POST /mutate: {e}"))
    }

    /// Sends `request` and reads the answer. A failed connection is dropped; a named one is
    /// kept unless the server said it closes it.
    pub fn send(&mut self, request: &Request) -> io::Result<Reply> {
        let server_name = request.server_name.unwrap_or("localhost");
        let (mut tls, reused) = match request.conn.and_then(|c| self.conns.remove(c)) {
            Some(tls) => (tls, true),
            None => (self.connect(server_name)?, false),
        };
        let (status, headers, body) = exchange(&mut tls, request, server_name, self.port)?;
        let cert_sha256 = tls
            .get_ref()
            .conn
            .peer_certificates()
            .and_then(|certs| certs.first())
            .map(|cert| sha256_hex(cert))
            .unwrap_or_default();
        let closes = headers
            .get("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
            || !headers.contains_key("content-length") && !is_chunked(&headers);
        if let Some(name) = request.conn
            && !closes
        {
            self.conns.insert(name.to_string(), tls);
        }
        Ok(Reply {
            status,
            content_type: headers.get("content-type").cloned().unwrap_or_default(),
            body: String::from_utf8_lossy(&body).into_owned(),
            cert_sha256,
            reused,
        })
    }

    fn connect(&self, server_name: &str) -> io::Result<Tls> {
        let name = ServerName::try_from(server_name.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let conn = ClientConnection::new(self.config.clone(), name).map_err(io::Error::other)?;
        let tcp = TcpStream::connect(("127.0.0.1", self.port))?;
        tcp.set_read_timeout(Some(TIMEOUT))?;
        tcp.set_write_timeout(Some(TIMEOUT))?;
        Ok(BufReader::new(StreamOwned::new(conn, tcp)))
    }
}

/// Whether `error` is rustls refusing the server's certificate for the name asked for.
pub fn is_wrong_name(error: &io::Error) -> bool {
    use rustls::CertificateError::{NotValidForName, NotValidForNameContext};
    matches!(
        error
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>()),
        Some(rustls::Error::InvalidCertificate(
            NotValidForName | NotValidForNameContext { .. }
        ))
    )
}

fn is_chunked(headers: &BTreeMap<String, String>) -> bool {
    headers
        .get("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
}

/// Writes the request (the TLS handshake happens on the first write) and reads the answer:
/// status, headers (names lowercased), body.
fn exchange(
    tls: &mut Tls,
    request: &Request,
    server_name: &str,
    port: u16,
) -> io::Result<(u16, BTreeMap<String, String>, Vec<u8>)> {
    let method = if request.method.is_empty() {
        "GET"
    } else {
        request.method
    };
    let mut head = format!(
        "{method} {} HTTP/1.1\r\nHost: {server_name}:{port}\r\nAccept: application/json, */*\r\n\
         User-Agent: kube-apiserver-admission\r\n",
        request.path
    );
    let length = request
        .declare_length
        .or(request.body.map(<[u8]>::len))
        .or((method == "POST").then_some(0));
    if let Some(length) = length {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {length}\r\n"
        ));
    }
    head.push_str("\r\n");
    let stream = tls.get_mut();
    stream.write_all(head.as_bytes())?;
    if request.declare_length.is_none()
        && let Some(body) = request.body
    {
        stream.write_all(body)?;
    }
    stream.flush()?;

    let mut status_line = String::new();
    if tls.read_line(&mut status_line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the server closed the connection without an answer",
        ));
    }
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("status line {status_line:?}")))?;
    let mut headers = BTreeMap::new();
    loop {
        let mut line = String::new();
        tls.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| bad(format!("header {line:?}")))?;
        headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    let mut body = Vec::new();
    if is_chunked(&headers) {
        loop {
            let mut size = String::new();
            tls.read_line(&mut size)?;
            let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| bad(format!("chunk size {size:?}")))?;
            let mut chunk = vec![0; size + 2];
            tls.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(length) = headers.get("content-length") {
        let length: usize = length
            .parse()
            .map_err(|_| bad(format!("Content-Length {length:?}")))?;
        body.resize(length, 0);
        tls.read_exact(&mut body)?;
    } else {
        tls.read_to_end(&mut body)?;
    }
    Ok((status, headers, body))
}

fn bad(what: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed answer: {what}"),
    )
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A test CA that signs serving certificates for `localhost` and 127.0.0.1.
pub struct Ca {
    pub cert: rcgen::Certificate,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Ca {
    pub fn new() -> Ca {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "webhook test CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let cert = params.self_signed(&key).unwrap();
        let issuer = rcgen::Issuer::new(params, key);
        Ca { cert, issuer }
    }

    /// A serving pair: (certificate PEM, key PEM, SHA-256 of the certificate's DER).
    pub fn leaf(&self, name: &str) -> (String, String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let digest = sha256_hex(cert.der());
        (cert.pem(), key.serialize_pem(), digest)
    }
}
