//! The relay's configuration (raw user input, serde) and its defaults.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::tls::TlsSource;

/// Default base domain: browsers resolve `*.localhost` to loopback.
pub const DEFAULT_BASE_DOMAIN: &str = "warren.localhost";

/// Everything `Relay::start` needs besides the route source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// Hosts are `<sandbox-id>-<port>.<base_domain>`.
    pub base_domain: String,
    /// HTTPS front; `None` disables it. Port 0 picks a free port
    /// (`Relay::https_addr` tells which).
    pub https_listen: Option<SocketAddr>,
    /// Address the raw TCP front binds its per-route ports on.
    pub raw_bind: IpAddr,
    /// Relay ports raw routes may use; routes outside are ignored.
    pub raw_port_range: PortRange,
    pub tls: TlsSource,
    /// Node link listener (TLS + HTTP/2); `None`: only in-process nodes.
    pub link_listen: Option<SocketAddr>,
    /// node id → shared secret, for nodes that dial in.
    pub node_secrets: BTreeMap<String, String>,
    /// HMAC key of connect tokens (the control plane mints with the same).
    pub token_key: String,
    pub cache: CacheConfig,
    pub timeouts: Timeouts,
    /// Most client connections the HTTPS and raw fronts hold at once
    /// (together); beyond it new ones are closed at once, so a flood cannot
    /// exhaust the relay's descriptors for everyone. Also capped at start
    /// to what `RLIMIT_NOFILE` allows (an in-process tunnel connection holds
    /// two descriptors).
    pub max_connections: usize,
}

/// Default of [`RelayConfig::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 65_536;

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            base_domain: DEFAULT_BASE_DOMAIN.into(),
            https_listen: Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 8443))),
            raw_bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            raw_port_range: PortRange {
                start: 30000,
                end: 30999,
            },
            tls: TlsSource::Generated {
                dir: PathBuf::from("/var/lib/warren/tls"),
            },
            link_listen: None,
            node_secrets: BTreeMap::new(),
            token_key: String::new(),
            cache: CacheConfig::default(),
            timeouts: Timeouts::default(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// An inclusive port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

impl PortRange {
    pub fn contains(&self, port: u16) -> bool {
        port != 0 && self.start <= port && port <= self.end
    }
}

/// Route cache lifetimes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// How long a found route is reused.
    pub positive_ms: u64,
    /// How long "no such sandbox" is reused.
    pub negative_ms: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            positive_ms: 2000,
            negative_ms: 500,
        }
    }
}

/// Every network wait of the relay has one of these bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// Opening a stream to a sandbox port (link stream + the node's connect).
    pub open_ms: u64,
    /// A client's TLS handshake on the HTTPS front.
    pub tls_handshake_ms: u64,
    /// Reading an HTTP/1 request head from a client.
    pub header_read_ms: u64,
    /// From forwarding a request to the upstream's response head.
    pub upstream_response_ms: u64,
    /// Idle kept-alive upstream connections are closed after this.
    pub upstream_idle_ms: u64,
    /// A route lookup (control plane round trip).
    pub route_lookup_ms: u64,
    /// How often the raw front re-reads `raw_routes()`.
    pub raw_sync_ms: u64,
    /// Link: TLS + hello exchange.
    pub link_handshake_ms: u64,
    /// Link: HTTP/2 PING interval; a link without a PONG for two intervals is dropped.
    pub link_ping_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            open_ms: 10_000,
            tls_handshake_ms: 10_000,
            header_read_ms: 30_000,
            upstream_response_ms: 120_000,
            upstream_idle_ms: 60_000,
            route_lookup_ms: 5_000,
            raw_sync_ms: 1_000,
            link_handshake_ms: 10_000,
            link_ping_ms: 10_000,
        }
    }
}

pub(crate) fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}
