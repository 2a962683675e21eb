//! The raw TCP front: one listener per raw route's relay port (kept in step
//! with `RouteSource::raw_routes`), bytes forwarded both ways. A connection
//! for a sandbox that is gone, not running or not ready is closed at once.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn, Instrument};

use crate::config::PortRange;
use crate::dialer::Dialer;
use crate::link::StreamMode;
use crate::route::{RawRoute, RouteCache, RouteError, RouteState};

pub(crate) struct RawFront {
    bind: IpAddr,
    range: PortRange,
    cache: Arc<RouteCache>,
    dialer: Arc<Dialer>,
    table: RwLock<HashMap<u16, RawRoute>>,
    listeners: Mutex<HashMap<u16, (SocketAddr, JoinHandle<()>)>>,
    /// Serializes syncs.
    sync_lock: tokio::sync::Mutex<()>,
    /// Turns true on stop: open connections end too.
    stopped: tokio::sync::watch::Sender<bool>,
    /// Client connections of all fronts (see `RelayConfig::max_connections`).
    limit: Arc<tokio::sync::Semaphore>,
}

impl RawFront {
    pub(crate) fn new(
        bind: IpAddr,
        range: PortRange,
        cache: Arc<RouteCache>,
        dialer: Arc<Dialer>,
        limit: Arc<tokio::sync::Semaphore>,
    ) -> Arc<RawFront> {
        Arc::new(RawFront {
            bind,
            range,
            cache,
            dialer,
            limit,
            table: RwLock::new(HashMap::new()),
            listeners: Mutex::new(HashMap::new()),
            sync_lock: tokio::sync::Mutex::new(()),
            stopped: tokio::sync::watch::channel(false).0,
        })
    }

    /// Ports with a listener now.
    pub(crate) fn ports(&self) -> Vec<u16> {
        let mut v: Vec<u16> = self
            .listeners
            .lock()
            .expect("listeners lock")
            .keys()
            .copied()
            .collect();
        v.sort_unstable();
        v
    }

    /// Re-reads the raw routes and opens/closes listeners to match.
    pub(crate) async fn sync(self: &Arc<Self>) -> Result<(), RouteError> {
        let _guard = self.sync_lock.lock().await;
        let routes = self.cache.source().raw_routes().await?;
        let mut table = HashMap::new();
        for r in routes {
            if !self.range.contains(r.relay_port) {
                warn!(relay_port = r.relay_port, sandbox_id = %r.sandbox_id, "raw route outside the relay's port range; ignored");
                continue;
            }
            table.entry(r.relay_port).or_insert(r);
        }
        let mut closed = Vec::new();
        {
            let mut listeners = self.listeners.lock().expect("listeners lock");
            let ports: Vec<u16> = listeners.keys().copied().collect();
            for port in ports {
                if !table.contains_key(&port) {
                    let (_, task) = listeners.remove(&port).expect("listed above");
                    task.abort();
                    closed.push(task);
                    info!(relay_port = port, "raw port closed");
                }
            }
            for (&port, r) in &table {
                if listeners.contains_key(&port) {
                    continue;
                }
                let addr = SocketAddr::new(self.bind, port);
                let std_listener = match bind_reuse(addr) {
                    Ok(l) => l,
                    Err(e) => {
                        warn!(relay_port = port, sandbox_id = %r.sandbox_id, error = %e, "cannot listen on raw port; will retry");
                        continue;
                    }
                };
                let listener = match TcpListener::from_std(std_listener) {
                    Ok(l) => l,
                    Err(e) => {
                        warn!(relay_port = port, error = %e, "cannot register raw listener");
                        continue;
                    }
                };
                info!(relay_port = port, sandbox_id = %r.sandbox_id, port = r.port, "raw port open");
                let me = self.clone();
                let task = tokio::spawn(async move { me.accept_loop(port, listener).await });
                listeners.insert(port, (addr, task));
            }
            *self.table.write().expect("table lock") = table;
        }
        // The listener is closed once its aborted task is gone.
        for t in closed {
            let _ = t.await;
        }
        Ok(())
    }

    async fn accept_loop(self: Arc<Self>, relay_port: u16, listener: TcpListener) {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    warn!(relay_port, error = %e, "raw accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = self.limit.clone().try_acquire_owned() else {
                debug!(relay_port, %peer, "raw connection refused: relay at its connection limit");
                drop(tcp);
                continue;
            };
            let me = self.clone();
            tokio::spawn(async move {
                me.serve(relay_port, tcp, peer).await;
                drop(permit);
            });
        }
    }

    async fn serve(&self, relay_port: u16, mut tcp: TcpStream, peer: SocketAddr) {
        let Some(r) = self
            .table
            .read()
            .expect("table lock")
            .get(&relay_port)
            .cloned()
        else {
            return;
        };
        let span = tracing::debug_span!("raw", sandbox_id = %r.sandbox_id, port = r.port, %peer);
        async move {
            let _ = tcp.set_nodelay(true);
            let route = match self.cache.route(&r.sandbox_id).await {
                Ok(Some(route)) if route.state == RouteState::Running && route.ready => route,
                other => {
                    debug!(route = ?other.map(|o| o.map(|r| (r.state, r.ready))), "raw connection refused: sandbox not available");
                    return;
                }
            };
            let mut upstream = match self.dialer.open(&route.node_id, &r.sandbox_id, r.port, StreamMode::Tcp).await {
                Ok(s) => s,
                Err(e) => {
                    debug!(error = %e, "raw connection: open failed");
                    if matches!(e, crate::dialer::DialError::Open(crate::target::OpenError::NotFound | crate::target::OpenError::NotRunning)) {
                        self.cache.invalidate(&r.sandbox_id);
                    }
                    return;
                }
            };
            let mut stopped = self.stopped.subscribe();
            if *stopped.borrow() {
                return;
            }
            tokio::select! {
                res = crate::copy::bidirectional_boxed(&mut tcp, &mut upstream) => {
                    debug!(result = ?res, "raw connection ended");
                }
                _ = stopped.changed() => debug!("raw connection cut: relay stopping"),
            }
        }
        .instrument(span)
        .await
    }

    pub(crate) fn stop(&self) {
        self.stopped.send_replace(true);
        for (_, (_, t)) in self.listeners.lock().expect("listeners lock").drain() {
            t.abort();
        }
    }
}

/// Listen backlog of the relay's sockets: a burst of connections (a page
/// load, a load test) must not overflow the accept queue, or the kernel
/// answers with SYN cookies and resets. The kernel caps it at
/// `net.core.somaxconn` (4096 by default).
pub(crate) const BACKLOG: i32 = 4096;

/// A listening socket with SO_REUSEADDR (a restarted relay rebinds its
/// ports while old connections sit in TIME_WAIT) and a large backlog.
pub(crate) fn bind_reuse(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(BACKLOG)?;
    Ok(s.into())
}
