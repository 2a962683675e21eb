//! Relay side of the link: accepts nodes, checks their secret, keeps
//! node_id → HTTP/2 sender, and opens streams on them.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use super::stream::H2Stream;
use super::*;
use crate::target::{BoxStream, OpenError};

#[derive(Clone)]
struct LinkEntry {
    generation: u64,
    sender: h2::client::SendRequest<Bytes>,
    /// Closes this link (a newer one from the same node replaced it).
    close: Arc<tokio::sync::Notify>,
}

/// Connected nodes.
#[derive(Default)]
pub(crate) struct LinkRegistry {
    links: Mutex<HashMap<String, LinkEntry>>,
    generation: AtomicU64,
}

/// Why a stream could not be opened on a link.
#[derive(Debug)]
pub(crate) enum LinkOpenError {
    /// No link from that node right now.
    NoLink,
    /// The node answered with an error.
    Open(OpenError),
    /// The link broke while opening.
    Broken(String),
}

impl LinkRegistry {
    pub(crate) fn nodes(&self) -> Vec<String> {
        self.links
            .lock()
            .expect("links lock")
            .keys()
            .cloned()
            .collect()
    }

    pub(crate) fn is_connected(&self, node_id: &str) -> bool {
        self.links.lock().expect("links lock").contains_key(node_id)
    }

    pub(crate) async fn open(
        &self,
        node_id: &str,
        sandbox: &str,
        port: u16,
        mode: StreamMode,
    ) -> Result<BoxStream, LinkOpenError> {
        let entry = self
            .links
            .lock()
            .expect("links lock")
            .get(node_id)
            .cloned()
            .ok_or(LinkOpenError::NoLink)?;
        let mut sender = entry
            .sender
            .ready()
            .await
            .map_err(|e| LinkOpenError::Broken(e.to_string()))?;
        let req = http::Request::builder()
            .method(http::Method::POST)
            .uri("https://warren-link/open")
            .header(H_SANDBOX, sandbox)
            .header(H_PORT, port.to_string())
            .header(H_MODE, mode.as_str())
            .body(())
            .map_err(|e| LinkOpenError::Broken(e.to_string()))?;
        let (resp, send) = sender
            .send_request(req, false)
            .map_err(|e| LinkOpenError::Broken(e.to_string()))?;
        let resp = resp
            .await
            .map_err(|e| LinkOpenError::Broken(e.to_string()))?;
        if resp.status() != http::StatusCode::OK {
            let code = resp
                .headers()
                .get(H_ERROR)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("internal");
            return Err(LinkOpenError::Open(OpenError::from_code(code)));
        }
        Ok(Box::new(H2Stream::new(send, resp.into_body())))
    }
}

/// Accepts node links until `shutdown` turns true.
pub(crate) async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    secrets: Arc<BTreeMap<String, String>>,
    registry: Arc<LinkRegistry>,
    handshake_timeout: Duration,
    ping_interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "link accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let acceptor = acceptor.clone();
        let secrets = secrets.clone();
        let registry = registry.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(
                tcp,
                peer,
                acceptor,
                secrets,
                registry,
                handshake_timeout,
                ping_interval,
                shutdown,
            )
            .await
            {
                debug!(%peer, error = %e, "link ended");
            }
        });
    }
}

#[allow(clippy::too_many_arguments)]
async fn handle(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    secrets: Arc<BTreeMap<String, String>>,
    registry: Arc<LinkRegistry>,
    handshake_timeout: Duration,
    ping_interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), LinkError> {
    let _ = tcp.set_nodelay(true);
    let handshake = async {
        let mut tls = acceptor.accept(tcp).await?;
        let hello: LinkHello = read_frame(&mut tls).await?;
        let ok = hello.version == LINK_PROTOCOL_VERSION
            && secrets
                .get(&hello.node_id)
                .is_some_and(|s| !s.is_empty() && secret_eq(s.as_bytes(), hello.secret.as_bytes()));
        if !ok {
            let reason = if hello.version != LINK_PROTOCOL_VERSION {
                "unsupported version"
            } else {
                "bad node id or secret"
            };
            let _ = write_frame(
                &mut tls,
                &LinkWelcome {
                    error: Some(reason.into()),
                },
            )
            .await;
            return Err(LinkError::Refused(format!(
                "{reason} (node {:?})",
                hello.node_id
            )));
        }
        write_frame(&mut tls, &LinkWelcome { error: None }).await?;
        Ok::<_, LinkError>((tls, hello.node_id))
    };
    let (tls, node_id) = tokio::time::timeout(handshake_timeout, handshake)
        .await
        .map_err(|_| LinkError::Timeout)??;

    let (sender, mut conn) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_H2_FRAME)
        .max_send_buffer_size(4 * 1024 * 1024)
        .max_concurrent_reset_streams(10_000)
        .enable_push(false)
        .handshake::<_, Bytes>(tls)
        .await?;
    let generation = registry.generation.fetch_add(1, Ordering::Relaxed);
    let close = Arc::new(tokio::sync::Notify::new());
    let old = registry.links.lock().expect("links lock").insert(
        node_id.clone(),
        LinkEntry {
            generation,
            sender,
            close: close.clone(),
        },
    );
    if let Some(old) = &old {
        old.close.notify_one();
    }
    info!(node_id = %node_id, %peer, replaced = old.is_some(), "node link up");

    let mut ping_pong = conn.ping_pong().expect("first call");
    let pinger = async {
        let mut tick = tokio::time::interval(ping_interval);
        tick.tick().await;
        loop {
            tick.tick().await;
            match tokio::time::timeout(ping_interval * 2, ping_pong.ping(h2::Ping::opaque())).await
            {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return format!("ping: {e}"),
                Err(_) => return "no pong".to_string(),
            }
        }
    };
    let why = tokio::select! {
        r = &mut conn => match r { Ok(()) => "closed".to_string(), Err(e) => e.to_string() },
        why = pinger => why,
        _ = shutdown.changed() => "relay shutting down".to_string(),
        _ = close.notified() => "replaced by a newer link from the same node".to_string(),
    };
    {
        let mut links = registry.links.lock().expect("links lock");
        if links
            .get(&node_id)
            .is_some_and(|e| e.generation == generation)
        {
            links.remove(&node_id);
        }
    }
    info!(node_id = %node_id, %peer, reason = %why, "node link down");
    Ok(())
}
