//! [`Relay`]: starts the fronts and the link listener, and owns their tasks.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::{ms, RelayConfig};
use crate::dialer::Dialer;
use crate::https::Front;
use crate::link::server::LinkRegistry;
use crate::raw::RawFront;
use crate::route::{RouteCache, RouteError, RouteSource};
use crate::target::TunnelTarget;
use crate::tls::{load_tls, TlsError, TlsMaterial};

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("invalid relay config: {0}")]
    Config(String),
    #[error("tls material")]
    Tls(#[from] TlsError),
    #[error("listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("route source")]
    Routes(#[from] RouteError),
}

/// A running relay. Dropping it does not stop it; call [`Relay::shutdown`].
pub struct Relay {
    tls: TlsMaterial,
    https_addr: Option<SocketAddr>,
    link_addr: Option<SocketAddr>,
    cache: Arc<RouteCache>,
    dialer: Arc<Dialer>,
    links: Arc<LinkRegistry>,
    raw: Arc<RawFront>,
    resync: Arc<Notify>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Relay {
    /// Loads or generates the TLS material, binds the HTTPS front, the link
    /// listener and the current raw ports, and starts serving.
    pub async fn start(
        config: RelayConfig,
        routes: Arc<dyn RouteSource>,
    ) -> Result<Relay, RelayError> {
        let base_domain = config
            .base_domain
            .trim()
            .trim_matches('.')
            .to_ascii_lowercase();
        if base_domain.is_empty() || !base_domain.contains('.') && base_domain != "localhost" {
            return Err(RelayError::Config(format!(
                "base_domain {:?} is not a domain",
                config.base_domain
            )));
        }
        if config.raw_port_range.start > config.raw_port_range.end {
            return Err(RelayError::Config("raw_port_range start > end".into()));
        }
        let t = config.timeouts;
        let tls_source = config.tls.clone();
        let domain = base_domain.clone();
        let tls = tokio::task::spawn_blocking(move || load_tls(&tls_source, &domain))
            .await
            .map_err(|e| RelayError::Config(format!("tls task: {e}")))??;
        let links = Arc::new(LinkRegistry::default());
        let dialer = Arc::new(Dialer::new(links.clone(), ms(t.open_ms)));
        let cache = Arc::new(RouteCache::new(
            routes,
            ms(config.cache.positive_ms),
            ms(config.cache.negative_ms),
            ms(t.route_lookup_ms),
        ));
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();

        let limit = Arc::new(tokio::sync::Semaphore::new(connection_limit(
            config.max_connections,
        )));
        let mut https_addr = None;
        if let Some(addr) = config.https_listen {
            let (listener, local) = listen(addr)?;
            https_addr = Some(local);
            let front = Front::new(
                base_domain.clone(),
                cache.clone(),
                dialer.clone(),
                config.token_key.as_bytes().to_vec(),
                ms(t.upstream_response_ms),
                ms(t.upstream_idle_ms),
                stop_rx.clone(),
            );
            let acceptor = tokio_rustls::TlsAcceptor::from(crate::tls::https_server_config(&tls)?);
            tasks.push(tokio::spawn(crate::https::serve(
                listener,
                acceptor,
                front,
                ms(t.tls_handshake_ms),
                ms(t.header_read_ms),
                limit.clone(),
                stop_rx.clone(),
            )));
            info!(addr = %local, base_domain = %base_domain, "relay https front listening");
        }

        let mut link_addr = None;
        if let Some(addr) = config.link_listen {
            let (listener, local) = listen(addr)?;
            link_addr = Some(local);
            let acceptor = tokio_rustls::TlsAcceptor::from(crate::tls::link_server_config(&tls)?);
            tasks.push(tokio::spawn(crate::link::server::serve(
                listener,
                acceptor,
                Arc::new(config.node_secrets.clone()),
                links.clone(),
                ms(t.link_handshake_ms),
                ms(t.link_ping_ms),
                stop_rx.clone(),
            )));
            info!(addr = %local, "relay link listener up");
        }

        let raw = RawFront::new(
            config.raw_bind,
            config.raw_port_range,
            cache.clone(),
            dialer.clone(),
            limit.clone(),
        );
        if let Err(e) = raw.sync().await {
            warn!(error = %e, "initial raw route sync failed; retrying in the background");
        }
        let resync = Arc::new(Notify::new());
        {
            let raw = raw.clone();
            let resync = resync.clone();
            let mut stop = stop_rx.clone();
            let period = ms(t.raw_sync_ms.max(50));
            tasks.push(tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(period) => {}
                        _ = resync.notified() => {}
                        _ = stop.changed() => break,
                    }
                    if let Err(e) = raw.sync().await {
                        warn!(error = %e, "raw route sync failed");
                    }
                }
                raw.stop();
            }));
        }

        Ok(Relay {
            tls,
            https_addr,
            link_addr,
            cache,
            dialer,
            links,
            raw,
            resync,
            stop,
            tasks,
        })
    }

    /// In-process link: streams for `node_id`'s sandboxes go straight to
    /// `target` (no TLS, no HTTP/2), and win over a remote link of that id.
    pub fn attach_local_node(&self, node_id: impl Into<String>, target: Arc<dyn TunnelTarget>) {
        self.dialer.attach(node_id.into(), target);
    }

    pub fn detach_local_node(&self, node_id: &str) {
        self.dialer.detach(node_id);
    }

    /// Where the HTTPS front listens (port 0 resolved).
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https_addr
    }

    /// Where the node link listener listens (port 0 resolved).
    pub fn link_addr(&self) -> Option<SocketAddr> {
        self.link_addr
    }

    /// Relay ports of the raw front with a listener now.
    pub fn raw_ports(&self) -> Vec<u16> {
        self.raw.ports()
    }

    /// Certificate material in use (CA PEM and path, fingerprint).
    pub fn tls(&self) -> &TlsMaterial {
        &self.tls
    }

    /// SHA-256 of the CA certificate, lowercase hex.
    pub fn ca_fingerprint(&self) -> &str {
        &self.tls.ca_fingerprint
    }

    /// Node ids with a live remote link.
    pub fn connected_nodes(&self) -> Vec<String> {
        self.links.nodes()
    }

    pub fn is_node_connected(&self, node_id: &str) -> bool {
        self.links.is_connected(node_id)
    }

    /// Drops the cached route of `sandbox_id` (call on any state change).
    pub fn invalidate(&self, sandbox_id: &str) {
        self.cache.invalidate(sandbox_id);
    }

    /// Re-reads the raw routes now (after a create or destroy with
    /// unencrypted ports) and waits for the listener set to match.
    pub async fn resync(&self) -> Result<(), RelayError> {
        self.cache.clear();
        let r = self.raw.sync().await;
        self.resync.notify_one();
        Ok(r?)
    }

    /// Stops accepting, cuts node links and raw listeners, and waits for
    /// the relay's own tasks.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.raw.stop();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// A listener on `addr` (large backlog, SO_REUSEADDR) and its bound address.
fn listen(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), RelayError> {
    let listener = crate::raw::bind_reuse(addr)
        .and_then(TcpListener::from_std)
        .map_err(|source| RelayError::Listen { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| RelayError::Listen { addr, source })?;
    Ok((listener, local))
}

/// `wanted`, capped so the fronts' connections (two descriptors each when
/// the node is in-process) fit the soft `RLIMIT_NOFILE` with room to spare.
fn connection_limit(wanted: usize) -> usize {
    let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX);
    let fits = usize::try_from(nofile.saturating_sub(1024) / 2).unwrap_or(usize::MAX);
    let limit = wanted.min(fits).max(1);
    if limit < wanted {
        info!(
            limit,
            wanted, nofile, "relay connection limit capped by RLIMIT_NOFILE"
        );
    }
    limit
}
