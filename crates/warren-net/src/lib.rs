//! warren-net: the node's sandbox networking.
//!
//! Each networked sandbox gets a veth pair: `<prefix><n>` on the node with
//! the gateway address of a /30 from the node's pool, and `eth0` inside the
//! sandbox's network namespace with the sandbox address and a default route
//! via the gateway. One nftables table in the node's namespace enforces the
//! egress policy (see [`nft`]), masquerades sandbox traffic leaving the node
//! and redirects sandbox DNS to the node's forwarder ([`dns`]).
//!
//! Invariants:
//! - Nothing here touches a network namespace other than the node's own
//!   (the caller's) and the sandbox namespaces handed to it.
//! - Default-policy sandboxes need no per-sandbox nftables work.
//! - Sandbox addresses are only ever in the configured CIDR; a lease is
//!   owned by exactly one sandbox (or the ready pool) at a time.
//! - Every wait is bounded (netlink replies, `nft` runs, DNS upstreams).
//!
//! Must not: spawn `ip`, change sysctls other than `net.ipv4.ip_forward`,
//! or know about sandboxes beyond an address lease.

#![forbid(unsafe_code)]

pub mod addr;
pub mod dns;
pub mod netlink;
pub mod netns;
pub mod nft;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net};
use tracing::{debug, info, warn};

pub use addr::{AddressPool, SandboxAddress};
pub use netlink::{Netlink, NetlinkError};
pub use netns::{connect_in_netns, in_netns, listen_in_netns, udp_in_netns};

/// Default sandbox CIDR.
pub const DEFAULT_CIDR: &str = "10.88.0.0/16";
/// The interface name inside every sandbox.
pub const SANDBOX_IFACE: &str = "eth0";
/// Linux's limit on interface names (without the NUL).
const IFNAMSIZ: usize = 15;

/// A sandbox's outbound policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EgressPolicy {
    /// Public internet allowed; the node, loopback, link-local, private
    /// ranges and other sandboxes denied.
    #[default]
    Default,
    /// Only these destinations, and within them still only what
    /// [`EgressPolicy::Default`] allows. IPv6 entries have no effect
    /// (sandboxes have no IPv6 route).
    Allowlist(Vec<IpNet>),
    /// Nothing leaves the sandbox (DNS to the gateway included).
    Blocked,
}

impl EgressPolicy {
    fn mode(&self) -> nft::Mode {
        match self {
            EgressPolicy::Default => nft::Mode::Default,
            EgressPolicy::Blocked => nft::Mode::Blocked,
            EgressPolicy::Allowlist(list) => {
                let v4: Vec<Ipv4Net> = list
                    .iter()
                    .filter_map(|n| match n {
                        IpNet::V4(n) => Some(n.trunc()),
                        IpNet::V6(_) => None,
                    })
                    .collect();
                nft::Mode::Limited(Ipv4Net::aggregate(&v4))
            }
        }
    }
}

/// Node networking settings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// Sandbox addresses come from here, a /30 each.
    pub ipv4_cidr: Ipv4Net,
    /// The nftables table (family `inet`) this node owns.
    pub table: String,
    /// Host-side interface names are this plus the lease index in base 36.
    pub iface_prefix: String,
    /// Where the DNS forwarder sends queries.
    pub dns_upstreams: Vec<SocketAddr>,
    /// Per-upstream timeout of one DNS exchange.
    pub dns_timeout: Duration,
    /// Most DNS queries in flight at once (all sandboxes together).
    pub dns_max_inflight: usize,
    /// More destinations to deny to every sandbox (e.g. the node's public
    /// API address when it is behind a separate load balancer).
    pub extra_denied: Vec<Ipv4Net>,
    /// Where to remember that `ip_forward` was off before us (so a restart
    /// after a crash still knows). `None` = not remembered.
    pub state_dir: Option<PathBuf>,
}

impl NetworkConfig {
    /// Defaults: 10.88.0.0/16, table `warren_<12 hex>` from `hash`
    /// (the runtime passes a hash of its data dir), prefix `wr`, upstreams
    /// from `/etc/resolv.conf`, 2 s DNS timeout, 1024 DNS queries in flight.
    pub fn new(hash: u64) -> Self {
        let upstreams = std::fs::read_to_string("/etc/resolv.conf")
            .map(|t| dns::parse_resolv_conf(&t))
            .unwrap_or_default();
        NetworkConfig {
            ipv4_cidr: DEFAULT_CIDR.parse().expect("constant CIDR"),
            table: format!("warren_{:012x}", hash & 0xffff_ffff_ffff),
            iface_prefix: "wr".into(),
            dns_upstreams: upstreams,
            dns_timeout: Duration::from_secs(2),
            dns_max_inflight: 1024,
            extra_denied: Vec::new(),
            state_dir: None,
        }
    }

    fn validate(&self) -> Result<(), NetError> {
        let bad = |reason: String| Err(NetError::Config { reason });
        let ok_name = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        if !ok_name(&self.table) || self.table.len() > 64 {
            return bad(format!("table name {:?}", self.table));
        }
        let pool = AddressPool::new(self.ipv4_cidr).ok_or_else(|| NetError::Config {
            reason: "ipv4_cidr must be /30 or larger".into(),
        })?;
        let digits = base36(pool.capacity().saturating_sub(1)).len();
        if !ok_name(&self.iface_prefix)
            || !self.iface_prefix.bytes().all(|b| b.is_ascii_lowercase())
            || self.iface_prefix.len() + digits > IFNAMSIZ
        {
            return bad(format!(
                "iface_prefix {:?} must be lowercase letters, short enough for {digits} more characters",
                self.iface_prefix
            ));
        }
        Ok(())
    }
}

/// Networking errors, named for the operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("invalid network config: {reason}")]
    Config { reason: String },
    #[error("no free sandbox address ({capacity} in use)")]
    AddressesExhausted { capacity: u32 },
    #[error("lease {index} is not available")]
    LeaseTaken { index: u32 },
    #[error("{op} failed")]
    Netlink {
        op: &'static str,
        #[source]
        source: NetlinkError,
    },
    #[error("entering the sandbox's network namespace failed")]
    EnterNetns(#[source] std::io::Error),
    #[error("nftables update failed")]
    Nft(#[source] std::io::Error),
    #[error("setting {path} failed")]
    Sysctl {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the dns forwarder failed")]
    Dns(#[source] std::io::Error),
}

fn nl(op: &'static str) -> impl FnOnce(NetlinkError) -> NetError {
    move |source| NetError::Netlink { op, source }
}

/// One sandbox's network lease: its addresses and host interface. Plain
/// data: release it with [`Network::release`] (sandboxes outlive the node
/// process, so nothing is torn down implicitly).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub address: SandboxAddress,
    pub host_iface: String,
}

/// The node's sandbox networking: address pool, nftables table, DNS.
pub struct Network {
    cfg: NetworkConfig,
    pool: Mutex<AddressPool>,
    policies: Mutex<HashMap<u32, nft::Mode>>,
    dns: Mutex<Option<dns::DnsForwarder>>,
    /// The node's namespace (where `start` ran): host-side work from a
    /// thread that is elsewhere goes through it.
    node_ns: std::os::fd::OwnedFd,
    node_ns_id: (u64, u64),
    /// We turned `ip_forward` on (it was off): turn it off again at shutdown.
    restore_forward: bool,
}

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
const FORWARD_MARK: &str = "ip_forward.was-off";

impl Network {
    /// Sets the node's namespace up: `ip_forward`, the DNS forwarder and the
    /// nftables table (replacing a previous run's).
    pub fn start(cfg: NetworkConfig) -> Result<Self, NetError> {
        cfg.validate()?;
        let (node_ns, node_ns_id) = current_netns().map_err(NetError::EnterNetns)?;
        let pool = AddressPool::new(cfg.ipv4_cidr).expect("validated");
        let mark = cfg.state_dir.as_ref().map(|d| d.join(FORWARD_MARK));
        let was_on = read_sysctl(IP_FORWARD)? == "1";
        let remembered_off = mark.as_deref().is_some_and(Path::exists);
        let forward_only_sandboxes = !was_on || remembered_off;
        if !was_on {
            if let Some(m) = &mark {
                std::fs::write(m, b"0\n").map_err(|source| NetError::Sysctl {
                    path: m.display().to_string(),
                    source,
                })?;
            }
            write_sysctl(IP_FORWARD, "1")?;
            info!("turned net.ipv4.ip_forward on; forwarding limited to sandboxes");
        }
        let dns = dns::DnsForwarder::start(dns::DnsConfig {
            upstreams: cfg.dns_upstreams.clone(),
            timeout: cfg.dns_timeout,
            max_inflight: cfg.dns_max_inflight,
        })
        .map_err(NetError::Dns)?;
        let rules = nft::Ruleset {
            table: cfg.table.clone(),
            iface_prefix: cfg.iface_prefix.clone(),
            cidr: cfg.ipv4_cidr,
            dns_port: dns.port(),
            extra_denied: cfg.extra_denied.clone(),
            forward_only_sandboxes,
        };
        nft::apply(&rules.render()).map_err(NetError::Nft)?;
        debug!(table = %cfg.table, dns_port = dns.port(), "sandbox networking up");
        Ok(Network {
            cfg,
            pool: Mutex::new(pool),
            policies: Mutex::new(HashMap::new()),
            dns: Mutex::new(Some(dns)),
            node_ns,
            node_ns_id,
            restore_forward: forward_only_sandboxes,
        })
    }

    pub fn config(&self) -> &NetworkConfig {
        &self.cfg
    }

    /// The DNS forwarder's port on the node (sandboxes use `gateway:53`).
    pub fn dns_port(&self) -> u16 {
        self.dns
            .lock()
            .expect("dns lock poisoned")
            .as_ref()
            .map_or(0, |d| d.port())
    }

    fn iface(&self, index: u32) -> String {
        format!("{}{}", self.cfg.iface_prefix, base36(index))
    }

    /// Allocates an address and wires the namespace `netns` (which must be
    /// fresh: only `lo`) to the node: veth, addresses, links up, default
    /// route. On error nothing is left behind.
    pub fn prepare(&self, netns: BorrowedFd<'_>) -> Result<Lease, NetError> {
        let address = {
            let mut p = self.pool.lock().expect("address pool lock poisoned");
            p.allocate().ok_or(NetError::AddressesExhausted {
                capacity: p.capacity(),
            })?
        };
        let lease = Lease {
            address,
            host_iface: self.iface(address.index),
        };
        match self.wire(&lease, netns) {
            Ok(()) => Ok(lease),
            Err(e) => {
                self.release(&lease);
                Err(e)
            }
        }
    }

    fn wire(&self, lease: &Lease, netns: BorrowedFd<'_>) -> Result<(), NetError> {
        let a = lease.address;
        let mut host = self.host_netlink()?;
        let idx = match host.create_veth(&lease.host_iface, SANDBOX_IFACE, netns) {
            Ok(i) => i,
            Err(NetlinkError::Refused { source, .. })
                if source.raw_os_error() == Some(libc::EEXIST) =>
            {
                // A leftover of a crashed run holds the name: replace it.
                warn!(iface = %lease.host_iface, "removing a stale sandbox interface");
                if let Some(old) = host.index_of(&lease.host_iface).map_err(nl("find link"))? {
                    host.delete_link(old).map_err(nl("delete link"))?;
                }
                host.create_veth(&lease.host_iface, SANDBOX_IFACE, netns)
                    .map_err(nl("create veth"))?
            }
            Err(e) => return Err(nl("create veth")(e)),
        };
        host.add_address(idx, a.gateway, a.prefix)
            .map_err(nl("add gateway address"))?;
        host.set_up(idx).map_err(nl("set host link up"))?;
        in_netns(netns, move || -> Result<(), NetError> {
            let mut n = Netlink::open().map_err(nl("open netlink in sandbox"))?;
            let eth =
                n.index_of(SANDBOX_IFACE)
                    .map_err(nl("find eth0"))?
                    .ok_or(NetError::Netlink {
                        op: "find eth0",
                        source: NetlinkError::Decode { op: "find eth0" },
                    })?;
            n.add_address(eth, a.address, a.prefix)
                .map_err(nl("add sandbox address"))?;
            n.set_up(eth).map_err(nl("set eth0 up"))?;
            if let Some(lo) = n.index_of("lo").map_err(nl("find lo"))? {
                n.set_up(lo).map_err(nl("set lo up"))?;
            }
            n.add_default_route(eth, a.gateway)
                .map_err(nl("add default route"))
        })
        .map_err(NetError::EnterNetns)??;
        Ok(())
    }

    /// Runs `f` in the node's namespace: directly when the calling thread
    /// is there (the normal case), else on a helper thread that joins it.
    fn on_node<T: Send>(
        &self,
        f: impl FnOnce() -> std::io::Result<T> + Send,
    ) -> std::io::Result<T> {
        match current_netns() {
            Ok((_, id)) if id == self.node_ns_id => f(),
            _ => {
                use std::os::fd::AsFd;
                in_netns(self.node_ns.as_fd(), f)?
            }
        }
    }

    /// An rtnetlink socket in the node's namespace.
    fn host_netlink(&self) -> Result<Netlink, NetError> {
        match current_netns() {
            Ok((_, id)) if id == self.node_ns_id => Netlink::open().map_err(nl("open netlink")),
            _ => {
                use std::os::fd::AsFd;
                in_netns(self.node_ns.as_fd(), Netlink::open)
                    .map_err(NetError::EnterNetns)?
                    .map_err(nl("open netlink"))
            }
        }
    }

    /// Marks lease `index` as taken before anything else can allocate it
    /// (a sandbox that may have survived a restart owns it). False if it
    /// is out of range or taken.
    pub fn reserve(&self, index: u32) -> bool {
        self.pool
            .lock()
            .expect("address pool lock poisoned")
            .claim(index)
    }

    /// Frees a reserved lease whose sandbox turned out to be gone (its
    /// interface died with its namespace, or [`Self::remove_stale`] takes it).
    pub fn unreserve(&self, index: u32) {
        self.pool
            .lock()
            .expect("address pool lock poisoned")
            .release(index);
    }

    /// Re-adopts lease `index` of a sandbox that survived a restart (its
    /// interface is still there) and re-applies its policy. The lease must
    /// have been [`Self::reserve`]d.
    pub fn readopt(&self, index: u32, policy: &EgressPolicy) -> Result<Lease, NetError> {
        let address = {
            let p = self.pool.lock().expect("address pool lock poisoned");
            if !p.is_used(index) {
                return Err(NetError::LeaseTaken { index });
            }
            p.address(index).expect("used index is in range")
        };
        let lease = Lease {
            address,
            host_iface: self.iface(index),
        };
        self.set_egress(&lease, policy)?;
        Ok(lease)
    }

    /// Deletes host interfaces with our prefix that no live lease owns
    /// (leftovers of a crash). Call after adopting the survivors.
    pub fn remove_stale(&self) -> Result<usize, NetError> {
        let mut host = self.host_netlink()?;
        let links = host.link_names().map_err(nl("list links"))?;
        let mut removed = 0;
        for (idx, name) in links {
            let Some(rest) = name.strip_prefix(&self.cfg.iface_prefix) else {
                continue;
            };
            let Some(lease) = parse_base36(rest) else {
                continue;
            };
            let in_use = {
                let p = self.pool.lock().expect("address pool lock poisoned");
                p.is_used(lease)
            };
            if !in_use {
                host.delete_link(idx).map_err(nl("delete stale link"))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Changes a sandbox's egress policy; takes effect for its next packet
    /// (established connections included). Default-to-default is free.
    pub fn set_egress(&self, lease: &Lease, policy: &EgressPolicy) -> Result<(), NetError> {
        let new = policy.mode();
        let mut pol = self.policies.lock().expect("policy lock poisoned");
        let old = pol
            .get(&lease.address.index)
            .cloned()
            .unwrap_or(nft::Mode::Default);
        if old == new {
            return Ok(());
        }
        let script = nft::policy_change(&self.cfg.table, lease.address.address, &old, &new);
        self.on_node(|| nft::apply(&script))
            .map_err(NetError::Nft)?;
        if new == nft::Mode::Default {
            pol.remove(&lease.address.index);
        } else {
            pol.insert(lease.address.index, new);
        }
        Ok(())
    }

    /// Tears a lease down: deletes the veth (both ends), forgets its policy,
    /// frees the address (reused last). Errors are logged, not returned: the
    /// sandbox is going away regardless.
    pub fn release(&self, lease: &Lease) {
        if let Err(e) = self.set_egress(lease, &EgressPolicy::Default) {
            warn!(error = %e, iface = %lease.host_iface, "clearing a sandbox's egress policy");
        }
        match self.host_netlink().and_then(|mut n| {
            if let Some(i) = n.index_of(&lease.host_iface).map_err(nl("find link"))? {
                n.delete_link(i).map_err(nl("delete link"))?;
            }
            Ok(())
        }) {
            Ok(()) => {}
            Err(e) => warn!(error = %e, iface = %lease.host_iface, "deleting a sandbox veth"),
        }
        self.pool
            .lock()
            .expect("address pool lock poisoned")
            .release(lease.address.index);
    }

    /// The resolv.conf a sandbox with `lease` gets.
    pub fn resolv_conf(lease: &Lease) -> String {
        format!(
            "# written by warren: the node's DNS forwarder\nnameserver {}\noptions edns0\n",
            lease.address.gateway
        )
    }

    /// Stops networking: with `keep_table` (sandboxes still run and outlive
    /// us) the table and `ip_forward` stay, so they keep their policy until
    /// the next start replaces it; otherwise the table is deleted and
    /// `ip_forward` restored.
    pub fn shutdown(&self, keep_table: bool) {
        self.dns.lock().expect("dns lock poisoned").take();
        if keep_table {
            info!(table = %self.cfg.table, "sandboxes still run: keeping the nftables table");
            return;
        }
        if let Err(e) = self.on_node(|| nft::delete_table(&self.cfg.table)) {
            warn!(error = %e, "deleting the nftables table");
        }
        if self.restore_forward {
            if let Err(e) = write_sysctl(IP_FORWARD, "0") {
                warn!(error = %e, "restoring ip_forward");
            }
        }
        if let Some(d) = &self.cfg.state_dir {
            let _ = std::fs::remove_file(d.join(FORWARD_MARK));
        }
    }
}

/// The calling thread's network namespace: a descriptor and its
/// (device, inode) identity.
fn current_netns() -> std::io::Result<(std::os::fd::OwnedFd, (u64, u64))> {
    use std::os::unix::fs::MetadataExt;
    let f = std::fs::File::open("/proc/thread-self/ns/net")?;
    let m = f.metadata()?;
    Ok((f.into(), (m.dev(), m.ino())))
}

fn read_sysctl(path: &str) -> Result<String, NetError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|source| NetError::Sysctl {
            path: path.into(),
            source,
        })
}

fn write_sysctl(path: &str, v: &str) -> Result<(), NetError> {
    std::fs::write(path, v).map_err(|source| NetError::Sysctl {
        path: path.into(),
        source,
    })
}

/// Lowercase base 36.
pub fn base36(mut n: u32) -> String {
    const D: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(D[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ascii digits")
}

fn parse_base36(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 7 || (s.len() > 1 && s.starts_with('0')) {
        return None;
    }
    u32::from_str_radix(s, 36).ok().filter(|_| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
    })
}

/// Whether `ip` lies in the sandbox CIDR of `cfg`.
pub fn is_sandbox_address(cfg: &NetworkConfig, ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => cfg.ipv4_cidr.contains(&v4),
        IpAddr::V6(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base36_round_trip() {
        for n in [0u32, 1, 35, 36, 16383, 1 << 20] {
            assert_eq!(parse_base36(&base36(n)), Some(n));
        }
        assert_eq!(base36(16383), "cn3");
        assert_eq!(parse_base36("00"), None);
        assert_eq!(parse_base36("A"), None);
        assert_eq!(parse_base36(""), None);
    }

    #[test]
    fn config_validation() {
        let mut c = NetworkConfig::new(0xabc);
        assert_eq!(c.table, "warren_000000000abc");
        assert!(c.validate().is_ok());
        c.iface_prefix = "averyverylongpfx".into();
        assert!(c.validate().is_err());
        c.iface_prefix = "wr".into();
        c.table = "bad name".into();
        assert!(c.validate().is_err());
        c.table = "ok".into();
        c.ipv4_cidr = "10.0.0.0/31".parse().unwrap();
        assert!(c.validate().is_err());
    }

    #[test]
    fn allowlist_mode_is_v4_and_merged() {
        let p = EgressPolicy::Allowlist(vec![
            "203.0.113.0/25".parse().unwrap(),
            "203.0.113.128/25".parse().unwrap(),
            "2001:db8::/32".parse().unwrap(),
        ]);
        assert_eq!(
            p.mode(),
            nft::Mode::Limited(vec!["203.0.113.0/24".parse().unwrap()])
        );
        let j = serde_json::to_string(&p).unwrap();
        assert!(j.starts_with("{\"allowlist\":"), "{j}");
        assert_eq!(
            serde_json::to_string(&EgressPolicy::Blocked).unwrap(),
            "\"blocked\""
        );
    }
}
