//! Loopback fixtures for the relay's tests: upstream servers on 127.0.0.1,
//! a relay with static routes, and HTTPS clients that trust only the
//! relay's generated CA.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use warren_relay::{
    PortProtocol, PortRoute, Relay, RelayConfig, Route, RouteState, StaticRoutes, TlsSource,
};

pub const SANDBOX: &str = "sb-aaaaaaaaaaaaaaaaaaaa";
pub const NODE: &str = "node-1";
pub const TOKEN_KEY: &str = "test-token-key";

/// A bound everything waits on.
pub const T: Duration = Duration::from_secs(20);

/// HTTP/1 upstream answering every request with a JSON description of it.
/// `GET /slow` never answers (for timeouts). With `h2`, speaks h2c only.
pub async fn http_upstream(h2: bool) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(describe);
                if h2 {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                }
            });
        }
    });
    port
}

async fn describe(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() == "/slow" {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let v = serde_json::json!({
        "method": parts.method.as_str(),
        "uri": parts.uri.to_string(),
        "path_and_query": parts.uri.path_and_query().map(|p| p.as_str().to_string()),
        "version": format!("{:?}", parts.version),
        "host": parts.headers.get("host").map(|v| v.to_str().unwrap().to_string()),
        "user_data": parts.headers.get_all("x-warren-user-data").iter().map(|v| v.to_str().unwrap().to_string()).collect::<Vec<_>>(),
        "token_header": parts.headers.get("x-warren-connect-token").is_some(),
        "cookie": parts.headers.get("cookie").map(|v| v.to_str().unwrap().to_string()),
        "xfp": parts.headers.get("x-forwarded-proto").map(|v| v.to_str().unwrap().to_string()),
        "body_len": body.len(),
        "body_sum": checksum(&body),
    });
    Ok(Response::builder()
        .header("content-type", "application/json")
        .header("connection", "x-private")
        .header("x-private", "hop")
        .body(Full::new(Bytes::from(v.to_string())))
        .unwrap())
}

/// TCP echo server (echoes until EOF, then half-closes).
pub async fn echo_upstream() -> u16 {
    // A backlog for 1,000 simultaneous connections (tokio's default is
    // 1024, shared with the handshakes still in flight).
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let l = sock.listen(4096).unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    port
}

/// WebSocket echo server.
pub async fn ws_upstream() -> u16 {
    use futures_util::{SinkExt, StreamExt};
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_text() || m.is_binary() {
                        if ws.send(m).await.is_err() {
                            return;
                        }
                    } else if m.is_close() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// A loopback port nothing listens on (bound then released).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

pub fn checksum(data: &[u8]) -> u64 {
    // FNV-1a: enough to catch a reordered or corrupted stream.
    data.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

pub fn route(ports: &[(u16, PortProtocol, bool)]) -> Route {
    Route {
        sandbox_id: SANDBOX.into(),
        node_id: NODE.into(),
        state: RouteState::Running,
        ready: true,
        ports: ports
            .iter()
            .map(|&(port, protocol, require_token)| PortRoute {
                port,
                protocol,
                require_token,
            })
            .collect(),
        revoked_tokens: vec![],
    }
}

pub fn config(tls_dir: &std::path::Path) -> RelayConfig {
    let mut c = RelayConfig {
        https_listen: Some("127.0.0.1:0".parse().unwrap()),
        tls: TlsSource::Generated {
            dir: tls_dir.to_path_buf(),
        },
        token_key: TOKEN_KEY.into(),
        raw_port_range: warren_relay::PortRange {
            start: 1024,
            end: 65535,
        },
        ..RelayConfig::default()
    };
    c.cache.positive_ms = 50;
    c.cache.negative_ms = 50;
    c.timeouts.raw_sync_ms = 100;
    c
}

pub struct Fixture {
    pub relay: Relay,
    pub routes: Arc<StaticRoutes>,
    pub dir: tempfile::TempDir,
}

/// A relay whose node `NODE` is in-process, reaching loopback ports.
pub async fn in_process(tune: impl FnOnce(&mut RelayConfig)) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let routes = Arc::new(StaticRoutes::new());
    let mut cfg = config(dir.path());
    tune(&mut cfg);
    let relay = Relay::start(cfg, routes.clone()).await.unwrap();
    relay.attach_local_node(NODE, Arc::new(warren_relay::LoopbackTarget));
    Fixture { relay, routes, dir }
}

pub fn host(port: u16) -> String {
    format!("{SANDBOX}-{port}.warren.localhost")
}

pub async fn tls_connect(
    addr: SocketAddr,
    ca_pem: &str,
    sni: &str,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let cfg = warren_relay::tls::client_config(
        ca_pem.as_bytes(),
        alpn.iter().map(|a| a.to_vec()).collect(),
    )
    .unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .unwrap()
}

/// A kept-alive HTTPS client connection (h1 or h2) to the relay.
pub enum Conn {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Conn {
    pub async fn open(relay: &Relay, sni: &str, h2: bool) -> Conn {
        let alpn: &[&[u8]] = if h2 { &[b"h2"] } else { &[b"http/1.1"] };
        let tls = tls_connect(relay.https_addr().unwrap(), &relay.tls().ca_pem, sni, alpn).await;
        if h2 {
            assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
            let (s, c) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                    .await
                    .unwrap();
            tokio::spawn(c);
            Conn::H2(s)
        } else {
            let (s, c) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .unwrap();
            tokio::spawn(c.with_upgrades());
            Conn::H1(s)
        }
    }

    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Response<Bytes> {
        let fut = async {
            let resp = match self {
                Conn::H1(s) => {
                    s.ready().await.unwrap();
                    s.send_request(req).await.unwrap()
                }
                Conn::H2(s) => {
                    s.ready().await.unwrap();
                    s.send_request(req).await.unwrap()
                }
            };
            let (parts, body) = resp.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            Response::from_parts(parts, body)
        };
        tokio::time::timeout(T, fut)
            .await
            .expect("request timed out")
    }
}

pub fn get(host: &str, path: &str, h2: bool) -> hyper::http::request::Builder {
    let b = Request::builder().method("GET");
    if h2 {
        b.uri(format!("https://{host}{path}"))
    } else {
        b.uri(path).header("host", host)
    }
}

/// One request on a fresh connection.
pub async fn fetch(
    relay: &Relay,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Response<Bytes> {
    let mut c = Conn::open(relay, host, false).await;
    let mut b = get(host, path, false);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    c.send(b.body(Full::new(Bytes::new())).unwrap()).await
}

pub fn json(resp: &Response<Bytes>) -> serde_json::Value {
    serde_json::from_slice(resp.body())
        .unwrap_or_else(|_| panic!("not json: {:?}", String::from_utf8_lossy(resp.body())))
}

pub fn error_code(resp: &Response<Bytes>) -> Option<String> {
    resp.headers()
        .get("x-warren-error")
        .map(|v| v.to_str().unwrap().to_string())
}

/// Sends `data` through a TCP connection to `addr`, reads the echo to EOF.
pub async fn tcp_round_trip(addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    try_tcp_round_trip(addr, data)
        .await
        .expect("tcp round trip failed")
}

/// Like [`tcp_round_trip`], with an error (refused, reset, timed out)
/// instead of a panic: for retries while a limit frees up.
pub async fn try_tcp_round_trip(addr: SocketAddr, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr).await?;
    let (mut r, mut w) = s.split();
    let send = async {
        w.write_all(data).await?;
        w.shutdown().await
    };
    let recv = async {
        let mut got = Vec::with_capacity(data.len());
        r.read_to_end(&mut got).await.map(|_| got)
    };
    let (sent, got) = tokio::time::timeout(T, async { tokio::join!(send, recv) })
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?;
    sent?;
    got
}

/// Polls `cond` every few ms until true or `timeout`.
pub async fn wait_until<F: std::future::Future<Output = bool>>(
    timeout: Duration,
    mut cond: impl FnMut() -> F,
) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pause = Duration::from_millis(2);
    loop {
        if cond().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Connects and expects the relay to close without sending anything.
pub async fn closed_at_once(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return true;
    };
    let _ = s.write_all(b"hello").await;
    let mut buf = [0u8; 16];
    match tokio::time::timeout(T, s.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) => false,
        Err(_) => panic!("connection was left open"),
    }
}
