//! One way to serve HTTP/1.1, for every server of the controller (the health and metrics
//! endpoints of `run`, the admission webhook): an accept loop that backs off instead of
//! spinning when accepting fails, a bound on open connections, a deadline for a request's
//! headers (and for a TLS handshake), and a graceful drain on shutdown: stop accepting, let
//! in-flight requests finish, close idle keep-alive connections, give up after a grace period.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

/// Limits of a server.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections open at once; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers (and a keep-alive connection
    /// may stay idle before its next request).
    pub header_timeout: Duration,
    /// How long a client may take to complete its TLS handshake.
    pub handshake_timeout: Duration,
    /// How long in-flight requests may take to finish after shutdown begins.
    pub drain: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 256,
            header_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            drain: Duration::from_secs(10),
        }
    }
}

/// What a connection goes through before HTTP: nothing ([`Plain`]) or TLS.
pub trait Handshake: Clone + Send + Sync + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn handshake(&self, tcp: TcpStream) -> impl Future<Output = std::io::Result<Self::Io>> + Send;
}

/// Plain HTTP.
#[derive(Clone, Copy, Debug, Default)]
pub struct Plain;

impl Handshake for Plain {
    type Io = TcpStream;
    async fn handshake(&self, tcp: TcpStream) -> std::io::Result<TcpStream> {
        Ok(tcp)
    }
}

impl Handshake for tokio_rustls::TlsAcceptor {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    async fn handshake(&self, tcp: TcpStream) -> std::io::Result<Self::Io> {
        self.accept(tcp).await
    }
}

/// Answers one request. Every answer is small and complete, so the body is `Full`.
pub trait Handler: Clone + Send + Sync + 'static {
    fn handle(&self, req: Request<Incoming>) -> impl Future<Output = Response<Full<Bytes>>> + Send;
}

impl<F, Fut> Handler for F
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send,
{
    fn handle(&self, req: Request<Incoming>) -> impl Future<Output = Response<Full<Bytes>>> + Send {
        self(req)
    }
}

/// Serves `listener` until `shutdown` resolves, then drains (see the module doc). Returns
/// once every connection is closed or the drain period is over.
pub async fn serve<H, S>(
    listener: TcpListener,
    handshake: H,
    limits: Limits,
    handler: S,
    shutdown: impl Future<Output = ()>,
) where
    H: Handshake,
    S: Handler,
{
    let (stop_tx, stop_rx) = watch::channel(false);
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        // At the limit, stop accepting until a connection closes: clients queue in the
        // kernel's backlog rather than in this process's memory.
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            _ = &mut shutdown => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let (handshake, handler, stop) = (handshake.clone(), handler.clone(), stop_rx.clone());
        connections.spawn(async move {
            connection(tcp, peer, handshake, handler, limits, stop).await;
            drop(permit);
        });
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(limits.drain, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            "connections still open after the drain period"
        );
    }
}

async fn connection<H: Handshake, S: Handler>(
    tcp: TcpStream,
    peer: SocketAddr,
    handshake: H,
    handler: S,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let io = match tokio::time::timeout(limits.handshake_timeout, handshake.handshake(tcp)).await {
        Ok(Ok(io)) => io,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "handshake timed out");
            return;
        }
    };
    let service = service_fn(move |req| {
        let handler = handler.clone();
        async move { Ok::<_, std::convert::Infallible>(handler.handle(req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        }
        _ = async { let _ = stop.wait_for(|stop| *stop).await; } => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Binds `addr`, so a busy port fails start-up rather than a later task.
pub async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// `:8080` → `0.0.0.0:8080`; otherwise a socket address.
pub fn parse_addr(s: &str) -> std::result::Result<SocketAddr, String> {
    let full = if s.starts_with(':') {
        format!("0.0.0.0{s}")
    } else {
        s.to_string()
    };
    full.parse()
        .map_err(|_| format!("{s:?} is not an address like :8080 or 127.0.0.1:8080"))
}

/// A complete answer with a content type.
pub fn reply(status: http::StatusCode, content_type: &str, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    response
}

/// A plain-text answer.
pub fn text(status: http::StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    reply(status, "text/plain", Bytes::from_static(body.as_bytes()))
}

/// The content type of the Prometheus exposition both servers answer `/metrics` with.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[test]
    fn parses_go_style_addresses() {
        assert_eq!(parse_addr(":8080").unwrap().to_string(), "0.0.0.0:8080");
        assert_eq!(
            parse_addr("127.0.0.1:9").unwrap().to_string(),
            "127.0.0.1:9"
        );
        assert!(parse_addr("8080").is_err());
    }

    async fn ok(_: Request<Incoming>) -> Response<Full<Bytes>> {
        text(http::StatusCode::OK, "ok\n")
    }

    async fn request(addr: SocketAddr) -> String {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        let _ = tcp.read_to_string(&mut out).await;
        out
    }

    /// A server on a free loopback port; send on the returned channel to shut it down.
    async fn start(
        max_connections: usize,
    ) -> (
        SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let (listener, addr) = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, Plain, limits(max_connections), ok, async {
            let _ = stopped.await;
        }));
        (addr, stop, server)
    }

    fn limits(max_connections: usize) -> Limits {
        Limits {
            max_connections,
            header_timeout: Duration::from_millis(300),
            handshake_timeout: Duration::from_millis(300),
            drain: Duration::from_secs(2),
        }
    }

    #[tokio::test]
    async fn a_client_that_never_sends_headers_is_dropped() {
        let (addr, stop, server) = start(4).await;
        let mut silent = TcpStream::connect(addr).await.unwrap();
        silent.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let mut buf = Vec::new();
        // Closed (end of stream or reset) well before the test's own deadline.
        let _closed = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut buf))
            .await
            .expect("the server closes a connection whose headers never complete");
        // A well-behaved client is still served.
        assert!(request(addr).await.starts_with("HTTP/1.1 200"));
        let _ = stop.send(());
        server.await.unwrap();
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_wait_for_a_free_slot() {
        let (addr, stop, server) = start(1).await;
        let mut held = Vec::new();
        // One idle keep-alive connection holds the only slot.
        let mut first = TcpStream::connect(addr).await.unwrap();
        first
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 12];
        first.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
        held.push(first);
        let waiting = tokio::spawn(request(addr));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !waiting.is_finished(),
            "a second connection is not served meanwhile"
        );
        // The idle connection times out (header timeout), freeing the slot.
        let answer = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("served once the slot is free")
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let _ = stop.send(());
        server.await.unwrap();
    }

    #[tokio::test]
    async fn shutdown_stops_accepting_and_returns() {
        let (addr, stop, server) = start(4).await;
        // An idle keep-alive connection does not hold the shutdown for the drain period.
        let mut idle = TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 12];
        idle.read_exact(&mut buf).await.unwrap();
        let started = std::time::Instant::now();
        let _ = stop.send(());
        server.await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "no longer listening"
        );
    }
}
