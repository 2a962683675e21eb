//! NetLab: a private little internet for network tests.
//!
//! [`NetLab::enter`] moves the *calling thread* into a fresh network
//! namespace that plays the node's namespace (call it first, before any
//! thread or tokio runtime the test uses is created: threads inherit the
//! namespace of the thread that spawns them). It then builds a second
//! namespace, the "router", linked to the node's by a veth:
//!
//! ```text
//!  node netns (the test)                 router netns
//!  up0 192.0.2.2/30  ───────────────────  dn0 192.0.2.1/30
//!  default via 192.0.2.1                  lo: 203.0.113.10, 198.51.100.10 (public)
//!                                             203.0.113.53 (DNS upstream)
//!                                             169.254.169.254 (metadata)
//!                                             10.0.0.5, 192.168.1.5 (private)
//! ```
//!
//! Every router address answers TCP on [`HTTP_PORT`] with a tiny HTTP
//! response whose body names the address that was dialled, and on
//! [`ECHO_PORT`] with an echo. [`DNS_UPSTREAM`] answers A queries for the
//! names in [`NAMES`] (UDP and TCP). Nothing in the host's namespace
//! changes; all the lab's namespaces die with the test's descriptors.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use nix::sched::{unshare, CloneFlags};
use warren_net::{in_netns, Netlink};

/// Public addresses of the lab's internet.
pub const INTERNET: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const INTERNET2: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
/// The cloud metadata address.
pub const METADATA: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// Private hosts.
pub const PRIVATE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 5);
pub const PRIVATE2: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 5);
/// The lab's DNS server (use as the node's upstream).
pub const DNS_UPSTREAM: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(203, 0, 113, 53)), 53);
/// The node's address on its uplink (a node address sandboxes must not reach).
pub const NODE_UPLINK: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
pub const ROUTER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const HTTP_PORT: u16 = 80;
pub const ECHO_PORT: u16 = 7;
/// Names the lab's DNS server answers.
pub const NAMES: &[(&str, Ipv4Addr)] = &[("internet.test", INTERNET), ("private.test", PRIVATE)];

/// Longest the lab's servers live (a bound on their loops).
const MAX_LIFETIME: Duration = Duration::from_secs(600);

/// The lab; dropping it stops its servers (the namespaces go with the last
/// descriptor and process).
pub struct NetLab {
    pub node_ns: OwnedFd,
    pub router_ns: OwnedFd,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// A fresh network namespace (made by a short-lived thread, so the caller
/// stays where it is).
pub fn new_netns() -> Result<OwnedFd> {
    std::thread::spawn(|| -> Result<OwnedFd> {
        unshare(CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET)")?;
        Ok(std::fs::File::open("/proc/thread-self/ns/net")?.into())
    })
    .join()
    .map_err(|_| anyhow!("netns thread panicked"))?
}

fn link_up(nl: &mut Netlink, name: &str) -> Result<u32> {
    let i = nl
        .index_of(name)?
        .ok_or_else(|| anyhow!("no link {name}"))?;
    nl.set_up(i)?;
    Ok(i)
}

impl NetLab {
    /// Moves the calling thread into a new "node" namespace and builds the
    /// lab around it. Needs root (CAP_NET_ADMIN + CAP_SYS_ADMIN).
    pub fn enter() -> Result<NetLab> {
        unshare(CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET) of the test thread")?;
        let node_ns: OwnedFd = std::fs::File::open("/proc/thread-self/ns/net")?.into();
        let router_ns = new_netns()?;
        let mut nl = Netlink::open()?;
        link_up(&mut nl, "lo")?;
        let up = nl.create_veth("up0", "dn0", router_ns.as_fd())?;
        nl.add_address(up, NODE_UPLINK, 30)?;
        nl.set_up(up)?;
        in_netns(router_ns.as_fd(), || -> Result<()> {
            let mut r = Netlink::open()?;
            let lo = link_up(&mut r, "lo")?;
            for a in [INTERNET, INTERNET2, METADATA, PRIVATE, PRIVATE2] {
                r.add_address(lo, a, 32)?;
            }
            let dns = match DNS_UPSTREAM.ip() {
                std::net::IpAddr::V4(v) => v,
                std::net::IpAddr::V6(_) => unreachable!("constant is v4"),
            };
            r.add_address(lo, dns, 32)?;
            let dn = link_up(&mut r, "dn0")?;
            r.add_address(dn, ROUTER, 30)?;
            Ok(())
        })??;
        nl.add_default_route(up, ROUTER)?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut lab = NetLab {
            node_ns,
            router_ns,
            stop,
            threads: Vec::new(),
        };
        lab.serve()?;
        Ok(lab)
    }

    fn serve(&mut self) -> Result<()> {
        let (http, echo, udp, tcp53) = in_netns(self.router_ns.as_fd(), || -> Result<_> {
            Ok((
                TcpListener::bind(("0.0.0.0", HTTP_PORT))?,
                TcpListener::bind(("0.0.0.0", ECHO_PORT))?,
                UdpSocket::bind(DNS_UPSTREAM)?,
                TcpListener::bind(DNS_UPSTREAM)?,
            ))
        })??;
        for (l, kind) in [(http, 0u8), (echo, 1), (tcp53, 2)] {
            let stop = self.stop.clone();
            self.threads
                .push(std::thread::spawn(move || accept_loop(l, kind, &stop)));
        }
        let stop = self.stop.clone();
        self.threads
            .push(std::thread::spawn(move || dns_udp_loop(udp, &stop)));
        Ok(())
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn accept_loop(l: TcpListener, kind: u8, stop: &AtomicBool) {
    let _ = l.set_nonblocking(true);
    let started = Instant::now();
    while !stop.load(Ordering::SeqCst) && started.elapsed() < MAX_LIFETIME {
        match l.accept() {
            Ok((c, _)) => {
                std::thread::spawn(move || {
                    let _ = c.set_nonblocking(false);
                    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                    let _ = match kind {
                        0 => http_reply(c),
                        1 => echo(c),
                        _ => dns_tcp(c),
                    };
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn http_reply(mut c: std::net::TcpStream) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    for _ in 0..64 {
        let n = c.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.len() > 16384 {
            break;
        }
    }
    let body = format!("hello from {}\n", c.local_addr()?.ip());
    write!(
        c,
        "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn echo(mut c: std::net::TcpStream) -> std::io::Result<()> {
    let mut chunk = [0u8; 4096];
    for _ in 0..100_000 {
        let n = c.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        c.write_all(&chunk[..n])?;
    }
    Ok(())
}

/// The answer to a DNS query (A records for [`NAMES`], else NXDOMAIN).
pub fn dns_answer(q: &[u8]) -> Option<Vec<u8>> {
    if q.len() < 12 {
        return None;
    }
    // Parse the question name.
    let mut i = 12;
    let mut labels = Vec::new();
    for _ in 0..64 {
        let len = *q.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(q.get(i..i + len)?).to_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*q.get(i)?, *q.get(i + 1)?]);
    let question_end = i + 4;
    let name = labels.join(".");
    let hit = NAMES.iter().find(|(n, _)| *n == name).map(|(_, a)| *a);
    let mut r = Vec::with_capacity(question_end + 16);
    r.extend_from_slice(&q[..2]);
    let rcode = if hit.is_some() { 0 } else { 3 };
    r.extend_from_slice(&[0x81, 0x80 | rcode]);
    r.extend_from_slice(&[0, 1]);
    let answers = u16::from(hit.is_some() && qtype == 1);
    r.extend_from_slice(&answers.to_be_bytes());
    r.extend_from_slice(&[0, 0, 0, 0]);
    r.extend_from_slice(q.get(12..question_end)?);
    if let (Some(a), 1) = (hit, answers) {
        r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        r.extend_from_slice(&a.octets());
    }
    Some(r)
}

fn dns_udp_loop(s: UdpSocket, stop: &AtomicBool) {
    let _ = s.set_read_timeout(Some(Duration::from_millis(50)));
    let started = Instant::now();
    let mut buf = [0u8; 1500];
    while !stop.load(Ordering::SeqCst) && started.elapsed() < MAX_LIFETIME {
        if let Ok((n, from)) = s.recv_from(&mut buf) {
            if let Some(a) = dns_answer(&buf[..n]) {
                let _ = s.send_to(&a, from);
            }
        }
    }
}

fn dns_tcp(mut c: std::net::TcpStream) -> std::io::Result<()> {
    let mut len = [0u8; 2];
    c.read_exact(&mut len)?;
    let mut q = vec![0u8; u16::from_be_bytes(len) as usize];
    c.read_exact(&mut q)?;
    if let Some(a) = dns_answer(&q) {
        c.write_all(&(a.len() as u16).to_be_bytes())?;
        c.write_all(&a)?;
    }
    Ok(())
}

/// A DNS A query for `name` with id `id` (for tests that ask directly).
pub fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::new();
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for l in name.split('.') {
        q.push(l.len() as u8);
        q.extend_from_slice(l.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// The first A record of a DNS answer.
pub fn dns_first_a(answer: &[u8]) -> Option<Ipv4Addr> {
    let n = answer.len();
    (n >= 4 && u16::from_be_bytes([answer[6], answer[7]]) > 0)
        .then(|| Ipv4Addr::new(answer[n - 4], answer[n - 3], answer[n - 2], answer[n - 1]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_answers() {
        let a = dns_answer(&dns_query(7, "internet.test")).unwrap();
        assert_eq!(&a[..2], &[0, 7]);
        assert_eq!(dns_first_a(&a), Some(INTERNET));
        let nx = dns_answer(&dns_query(8, "nope.test")).unwrap();
        assert_eq!(nx[3] & 0xf, 3);
        assert_eq!(dns_first_a(&nx), None);
        assert!(dns_answer(&[0; 5]).is_none());
    }
}
