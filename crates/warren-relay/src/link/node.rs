//! Node side of the link: dial the relay, authenticate, serve streams from
//! a [`TunnelTarget`]; reconnect with backoff until shut down.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rustls::pki_types::ServerName;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tracing::{debug, info, warn, Instrument};

use super::stream::H2Stream;
use super::*;
use crate::target::TunnelTarget;

/// What a node needs to reach its relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeLinkConfig {
    /// `host:port` of the relay's link listener.
    pub relay_addr: String,
    /// Name the relay's certificate must carry (e.g. `relay.warren.localhost`,
    /// covered by the `*.<base_domain>` certificate).
    pub server_name: String,
    /// PEM of the CA(s) the relay's certificate must chain to.
    pub ca_pem: String,
    pub node_id: String,
    pub secret: String,
    /// Bound on TCP connect + TLS + hello.
    #[serde(default = "default_handshake_ms")]
    pub handshake_timeout_ms: u64,
    /// Bound on one `TunnelTarget::open`.
    #[serde(default = "default_open_ms")]
    pub open_timeout_ms: u64,
}

fn default_handshake_ms() -> u64 {
    10_000
}
fn default_open_ms() -> u64 {
    10_000
}

/// The link's state as the node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkState {
    Connecting,
    Connected,
    /// The last attempt failed (reason); retrying after a backoff.
    Retrying(String),
    Stopped,
}

/// A running link: reconnects until [`NodeLink::shutdown`].
pub struct NodeLink {
    stop: watch::Sender<bool>,
    state: watch::Receiver<LinkState>,
    task: JoinHandle<()>,
}

impl NodeLink {
    /// Starts the dial/serve/reconnect loop on the current tokio runtime.
    pub fn spawn(
        cfg: NodeLinkConfig,
        target: Arc<dyn TunnelTarget>,
    ) -> Result<NodeLink, LinkError> {
        let tls =
            crate::tls::client_config(cfg.ca_pem.as_bytes(), vec![crate::tls::LINK_ALPN.to_vec()])?;
        let name = ServerName::try_from(cfg.server_name.clone())
            .map_err(|_| LinkError::ServerName(cfg.server_name.clone()))?;
        let (stop, stop_rx) = watch::channel(false);
        let (state_tx, state) = watch::channel(LinkState::Connecting);
        let span = tracing::info_span!("node_link", node_id = %cfg.node_id);
        let task = tokio::spawn(
            run(
                cfg,
                TlsConnector::from(tls),
                name,
                target,
                stop_rx,
                state_tx,
            )
            .instrument(span),
        );
        Ok(NodeLink { stop, state, task })
    }

    pub fn state(&self) -> LinkState {
        self.state.borrow().clone()
    }

    pub fn is_connected(&self) -> bool {
        *self.state.borrow() == LinkState::Connected
    }

    /// Waits until connected, at most `timeout`; returns whether it is.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let mut rx = self.state.clone();
        tokio::time::timeout(timeout, rx.wait_for(|s| *s == LinkState::Connected))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Stops the loop and closes the link (open streams are cut).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn run(
    cfg: NodeLinkConfig,
    connector: TlsConnector,
    name: ServerName<'static>,
    target: Arc<dyn TunnelTarget>,
    mut stop: watch::Receiver<bool>,
    state: watch::Sender<LinkState>,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        if *stop.borrow() {
            break;
        }
        let _ = state.send(LinkState::Connecting);
        let started = tokio::time::Instant::now();
        let result = tokio::select! {
            r = session(&cfg, &connector, &name, &target, &state) => r,
            _ = stop.changed() => break,
        };
        let reason = match result {
            Ok(()) => "relay closed the link".to_string(),
            Err(e) => error_chain(&e),
        };
        // A link that stayed up a while resets the backoff.
        if started.elapsed() > BACKOFF_MAX * 2 {
            backoff = BACKOFF_MIN;
        }
        warn!(reason = %reason, retry_in_ms = backoff.as_millis() as u64, "relay link down");
        let _ = state.send(LinkState::Retrying(reason));
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => break,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
    let _ = state.send(LinkState::Stopped);
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

async fn session(
    cfg: &NodeLinkConfig,
    connector: &TlsConnector,
    name: &ServerName<'static>,
    target: &Arc<dyn TunnelTarget>,
    state: &watch::Sender<LinkState>,
) -> Result<(), LinkError> {
    let handshake = async {
        let tcp = TcpStream::connect(&cfg.relay_addr).await?;
        let _ = tcp.set_nodelay(true);
        let mut tls = connector.connect(name.clone(), tcp).await?;
        write_frame(
            &mut tls,
            &LinkHello {
                version: LINK_PROTOCOL_VERSION,
                node_id: cfg.node_id.clone(),
                secret: cfg.secret.clone(),
            },
        )
        .await?;
        let welcome: LinkWelcome = read_frame(&mut tls).await?;
        if let Some(e) = welcome.error {
            return Err(LinkError::Refused(e));
        }
        let conn = h2::server::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_H2_FRAME)
            .max_send_buffer_size(4 * 1024 * 1024)
            .max_concurrent_streams(MAX_STREAMS)
            .max_concurrent_reset_streams(10_000)
            .handshake::<_, Bytes>(tls)
            .await?;
        Ok::<_, LinkError>(conn)
    };
    let mut conn = tokio::time::timeout(Duration::from_millis(cfg.handshake_timeout_ms), handshake)
        .await
        .map_err(|_| LinkError::Timeout)??;
    info!(relay = %cfg.relay_addr, "relay link up");
    let _ = state.send(LinkState::Connected);
    let open_timeout = Duration::from_millis(cfg.open_timeout_ms);
    while let Some(next) = conn.accept().await {
        let (req, respond) = next?;
        let target = target.clone();
        tokio::spawn(async move { serve_stream(req, respond, target, open_timeout).await });
    }
    Ok(())
}

async fn serve_stream(
    req: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    target: Arc<dyn TunnelTarget>,
    open_timeout: Duration,
) {
    let header = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let sandbox = header(H_SANDBOX).unwrap_or_default();
    let port = header(H_PORT).and_then(|p| p.parse::<u16>().ok());
    let mode = header(H_MODE).and_then(|m| StreamMode::parse(&m));
    let span = tracing::debug_span!("tunnel", sandbox_id = %sandbox, port = ?port, mode = ?mode);
    async move {
        let reply_error =
            |respond: &mut h2::server::SendResponse<Bytes>, status: u16, code: &str| {
                let resp = http::Response::builder()
                    .status(status)
                    .header(H_ERROR, code)
                    .body(())
                    .expect("static response");
                let _ = respond.send_response(resp, true);
            };
        let (Some(port), Some(_mode)) = (port, mode) else {
            reply_error(&mut respond, 400, "internal");
            return;
        };
        if sandbox.is_empty() {
            reply_error(&mut respond, 400, "internal");
            return;
        }
        let opened = match tokio::time::timeout(open_timeout, target.open(&sandbox, port)).await {
            Ok(r) => r,
            Err(_) => Err(crate::target::OpenError::Refused),
        };
        let mut upstream = match opened {
            Ok(s) => s,
            Err(e) => {
                debug!(error = %e, "open failed");
                reply_error(&mut respond, 502, e.code());
                return;
            }
        };
        let send = match respond.send_response(
            http::Response::builder()
                .status(200)
                .body(())
                .expect("static response"),
            false,
        ) {
            Ok(s) => s,
            Err(_) => return,
        };
        let mut stream = H2Stream::new(send, req.into_body());
        let r = super::stream::pump(&mut stream, &mut upstream).await;
        debug!(result = ?r, "tunnel stream ended");
    }
    .instrument(span)
    .await
}
