//! The node's DNS forwarder: sandboxes ask their gateway (nft redirects
//! port 53 on it here); queries are relayed to the configured upstreams.
//!
//! Bounded: at most `max_inflight` queries at once (more are dropped, the
//! client retries), every upstream exchange has a timeout, TCP connections
//! answer a bounded number of queries and close when idle.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{oneshot, Semaphore};
use tracing::{debug, warn};

/// Largest DNS message over UDP we accept or relay.
const MAX_UDP: usize = 4096;
/// Idle time after which a TCP client connection is closed.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Most queries one TCP connection may send.
const TCP_MAX_QUERIES: usize = 64;

/// Forwarder settings.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    pub upstreams: Vec<SocketAddr>,
    /// Per-upstream wait for an answer.
    pub timeout: Duration,
    pub max_inflight: usize,
}

/// A running forwarder; stops when dropped.
pub struct DnsForwarder {
    port: u16,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl DnsForwarder {
    /// Binds UDP and TCP on `0.0.0.0:<port>` (one free port for both) in the
    /// calling thread's network namespace, then serves on its own thread.
    pub fn start(cfg: DnsConfig) -> std::io::Result<Self> {
        let (udp, tcp) = bind_pair()?;
        let port = udp.local_addr()?.port();
        udp.set_nonblocking(true)?;
        tcp.set_nonblocking(true)?;
        let (stop_tx, stop_rx) = oneshot::channel();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name("warren-dns".into())
            .spawn(move || {
                rt.block_on(async move {
                    let udp = match tokio::net::UdpSocket::from_std(udp) {
                        Ok(u) => Arc::new(u),
                        Err(e) => return warn!(error = %e, "dns: udp socket"),
                    };
                    let tcp = match tokio::net::TcpListener::from_std(tcp) {
                        Ok(t) => t,
                        Err(e) => return warn!(error = %e, "dns: tcp listener"),
                    };
                    let cfg = Arc::new(cfg);
                    let sem = Arc::new(Semaphore::new(cfg.max_inflight.max(1)));
                    tokio::select! {
                        _ = stop_rx => {}
                        _ = serve_udp(udp, cfg.clone(), sem.clone()) => {}
                        _ = serve_tcp(tcp, cfg, sem) => {}
                    }
                })
            })?;
        Ok(DnsForwarder {
            port,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The port it listens on (UDP and TCP).
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for DnsForwarder {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A UDP socket and a TCP listener on the same free port (bounded tries).
fn bind_pair() -> std::io::Result<(UdpSocket, TcpListener)> {
    let mut last = None;
    for _ in 0..32 {
        let tcp = TcpListener::bind("0.0.0.0:0")?;
        let port = tcp.local_addr()?.port();
        match UdpSocket::bind(("0.0.0.0", port)) {
            Ok(udp) => return Ok((udp, tcp)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free port")))
}

async fn serve_udp(sock: Arc<tokio::net::UdpSocket>, cfg: Arc<DnsConfig>, sem: Arc<Semaphore>) {
    let mut buf = vec![0u8; MAX_UDP];
    loop {
        let (n, client) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                debug!(error = %e, "dns: udp receive");
                continue;
            }
        };
        let Ok(permit) = sem.clone().try_acquire_owned() else {
            debug!("dns: too many queries in flight; dropping one");
            continue;
        };
        let query = buf[..n].to_vec();
        let sock = sock.clone();
        let cfg = cfg.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Some(answer) = ask_udp(&cfg, &query).await {
                let _ = sock.send_to(&answer, client).await;
            }
        });
    }
}

/// Asks each upstream in turn over UDP; the first matching answer wins.
async fn ask_udp(cfg: &DnsConfig, query: &[u8]) -> Option<Vec<u8>> {
    if query.len() < 12 {
        return None;
    }
    for up in &cfg.upstreams {
        let bind: SocketAddr = if up.is_ipv6() {
            "[::]:0".parse().expect("constant")
        } else {
            "0.0.0.0:0".parse().expect("constant")
        };
        let Ok(s) = tokio::net::UdpSocket::bind(bind).await else {
            continue;
        };
        if s.connect(up).await.is_err() || s.send(query).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; MAX_UDP];
        let deadline = tokio::time::Instant::now() + cfg.timeout;
        // Skip stray datagrams with another id, within the deadline.
        for _ in 0..8 {
            match tokio::time::timeout_at(deadline, s.recv(&mut buf)).await {
                Ok(Ok(n)) if n >= 12 && buf[..2] == query[..2] => return Some(buf[..n].to_vec()),
                Ok(Ok(_)) => continue,
                _ => break,
            }
        }
    }
    None
}

async fn serve_tcp(l: tokio::net::TcpListener, cfg: Arc<DnsConfig>, sem: Arc<Semaphore>) {
    loop {
        let Ok((conn, _)) = l.accept().await else {
            continue;
        };
        let Ok(permit) = sem.clone().try_acquire_owned() else {
            continue;
        };
        let cfg = cfg.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tcp_client(conn, &cfg).await;
        });
    }
}

async fn read_msg(s: &mut tokio::net::TcpStream) -> std::io::Result<Vec<u8>> {
    let len = s.read_u16().await? as usize;
    let mut msg = vec![0u8; len];
    s.read_exact(&mut msg).await?;
    Ok(msg)
}

async fn tcp_client(mut conn: tokio::net::TcpStream, cfg: &DnsConfig) -> std::io::Result<()> {
    for _ in 0..TCP_MAX_QUERIES {
        let q = match tokio::time::timeout(TCP_IDLE, read_msg(&mut conn)).await {
            Ok(Ok(q)) => q,
            _ => return Ok(()),
        };
        let Some(answer) = ask_tcp(cfg, &q).await else {
            return Ok(());
        };
        conn.write_u16(answer.len() as u16).await?;
        conn.write_all(&answer).await?;
    }
    Ok(())
}

async fn ask_tcp(cfg: &DnsConfig, query: &[u8]) -> Option<Vec<u8>> {
    for up in &cfg.upstreams {
        let attempt = async {
            let mut s = tokio::net::TcpStream::connect(up).await?;
            s.write_u16(query.len() as u16).await?;
            s.write_all(query).await?;
            read_msg(&mut s).await
        };
        if let Ok(Ok(a)) = tokio::time::timeout(cfg.timeout, attempt).await {
            return Some(a);
        }
    }
    None
}

/// `nameserver` lines of a resolv.conf, as socket addresses on port 53.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next()? == "nameserver")
                .then(|| w.next())
                .flatten()
                .and_then(|a| a.split('%').next()?.parse::<std::net::IpAddr>().ok())
                .map(|ip| SocketAddr::new(ip, 53))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_parsing() {
        let t = "# c\nnameserver 1.1.1.1\nsearch x\nnameserver  fe80::1%eth0\nnameserver bogus\n";
        let v = parse_resolv_conf(t);
        assert_eq!(v.len(), 2);
        assert_eq!(v[0], "1.1.1.1:53".parse().unwrap());
        assert_eq!(v[1].port(), 53);
    }
}
