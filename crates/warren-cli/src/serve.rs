//! `warren serve`: the API server, the node, sandbox networking and the
//! relay in one process, with embedded state under the data directory.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use warren_relay::{PortRange, RelayConfig, TlsSource};
use warren_server::{RemoteRelay, TunnelsConfig};

#[derive(Args)]
pub struct ServeArgs {
    /// Address to serve the API on.
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Image for sandboxes whose create request names none.
    #[arg(long, default_value = "host")]
    default_image: String,
    /// Where checkpointable sandboxes (memory snapshots) bind their init
    /// binary from: a copy of it, whose path shows in their mount tables.
    #[arg(long, value_name = "DIR", default_value = "/run/warren/init")]
    init_copy_dir: PathBuf,
    #[command(flatten)]
    network: NetworkFlags,
    #[command(flatten)]
    relay: RelayFlags,
}

/// Sandbox networking.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct NetworkFlags {
    /// Give sandboxes only `lo` (no interface, NAT or DNS) and leave this
    /// host's network namespace untouched.
    #[arg(long)]
    no_network: bool,
    /// Sandbox addresses, one /30 each (default 10.88.0.0/16).
    #[arg(long, value_name = "CIDR", value_parser = parse_sandbox_cidr,
        conflicts_with = "no_network")]
    sandbox_cidr: Option<String>,
    /// DNS server the sandboxes' resolver forwards to, IP or IP:PORT
    /// (repeatable; default: the nameservers of /etc/resolv.conf).
    #[arg(long, value_name = "ADDR", value_parser = parse_dns_upstream,
        conflicts_with = "no_network")]
    dns_upstream: Vec<SocketAddr>,
}

/// Tunnels: an in-process relay (default), none, or a relay in its own
/// process that this node dials.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct RelayFlags {
    /// No tunnels: creates that expose ports fail with relay_unavailable.
    #[arg(long, conflicts_with = "relay_link")]
    no_relay: bool,
    /// Where the in-process relay serves HTTPS (port 0: any free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8443")]
    relay_https_listen: SocketAddr,
    /// Tunnel hosts are <sandbox-id>-<port>.<DOMAIN>; `*.localhost` resolves
    /// to loopback without any DNS setup.
    #[arg(long, value_name = "DOMAIN", default_value = warren_relay::DEFAULT_BASE_DOMAIN)]
    relay_base_domain: String,
    /// Address the relay's raw TCP ports (--tcp-port) listen on.
    #[arg(long, value_name = "IP", default_value = "127.0.0.1")]
    relay_raw_bind: IpAddr,
    /// Relay ports handed out for raw TCP tunnels, FIRST-LAST.
    #[arg(long, value_name = "FIRST-LAST", default_value = "30000-30999",
        value_parser = parse_port_range)]
    relay_raw_ports: PortRange,
    /// Wildcard certificate chain (PEM) for *.<DOMAIN>, instead of the CA
    /// Warren generates under <data-dir>/tls.
    #[arg(long, value_name = "FILE", requires = "relay_key")]
    relay_cert: Option<PathBuf>,
    /// Key of --relay-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "relay_cert")]
    relay_key: Option<PathBuf>,
    /// Also accept links from nodes on other machines here (TLS).
    #[arg(long, value_name = "ADDR")]
    relay_link_listen: Option<SocketAddr>,
    /// Use a relay in its own process (`warren relay`) instead: the
    /// HOST:PORT of its link listener, which this node dials.
    #[arg(long, value_name = "HOST:PORT",
        conflicts_with_all = ["relay_cert", "relay_key", "relay_link_listen"],
        requires = "relay_ca")]
    relay_link: Option<String>,
    /// Name the remote relay's certificate must carry (default
    /// relay.<DOMAIN>, covered by its wildcard certificate).
    #[arg(long, value_name = "NAME", requires = "relay_link")]
    relay_server_name: Option<String>,
    /// CA (PEM) the remote relay's certificate chains to, e.g. its
    /// <tls-dir>/ca.pem.
    #[arg(long, value_name = "FILE", requires = "relay_link")]
    relay_ca: Option<PathBuf>,
    /// HTTPS port clients use on the remote relay (443 is left out of URLs).
    #[arg(
        long,
        value_name = "PORT",
        default_value_t = 443,
        requires = "relay_link"
    )]
    relay_public_https_port: u16,
    /// Host clients use for the remote relay's raw TCP ports (default: the
    /// host of --relay-link).
    #[arg(long, value_name = "HOST", requires = "relay_link")]
    relay_raw_host: Option<String>,
}

pub fn run(data_dir: &Path, a: ServeArgs) -> Result<i32> {
    let mut cfg = warren_server::ServerConfig::new(a.listen, data_dir);
    cfg.default_image = a.default_image;
    cfg.init_copy_dir = Some(a.init_copy_dir);
    cfg.network = network_config(data_dir, &a.network)?;
    cfg.tunnels = tunnels_config(data_dir, &a.relay)?;
    announce(&cfg.tunnels)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let shutdown = shutdown_signal();
        warren_server::run(cfg, shutdown).await
    })
    .context("warren serve")?;
    Ok(0)
}

/// The node's network settings (the runtime's defaults for this data
/// directory, with the flags' overrides), or `None` with --no-network.
fn network_config(
    data_dir: &Path,
    f: &NetworkFlags,
) -> Result<Option<warren_runtime::NetworkConfig>> {
    if f.no_network {
        return Ok(None);
    }
    // The same runtime directory the server uses, so the nftables table
    // name matches the one it would derive.
    let mut n = warren_runtime::NativeConfig::new(data_dir.join("runtime")).default_network();
    if let Some(cidr) = &f.sandbox_cidr {
        n.ipv4_cidr = cidr
            .parse()
            .with_context(|| format!("--sandbox-cidr {cidr}"))?;
    }
    if !f.dns_upstream.is_empty() {
        n.dns_upstreams = f.dns_upstream.clone();
    }
    if n.dns_upstreams.is_empty() {
        eprintln!(
            "warren: warning: /etc/resolv.conf names no nameserver, so names will not \
             resolve in sandboxes; pass --dns-upstream ADDR"
        );
    }
    Ok(Some(n))
}

fn tunnels_config(data_dir: &Path, f: &RelayFlags) -> Result<TunnelsConfig> {
    if f.no_relay {
        return Ok(TunnelsConfig::Off);
    }
    let base_domain = f.relay_base_domain.trim().trim_matches('.').to_string();
    if let Some(link) = &f.relay_link {
        let Some(ca) = &f.relay_ca else {
            bail!("--relay-link needs --relay-ca FILE (the relay's CA certificate)");
        };
        let ca_pem = std::fs::read_to_string(ca)
            .with_context(|| format!("reading --relay-ca {}", ca.display()))?;
        let raw_host = match &f.relay_raw_host {
            Some(h) => h.clone(),
            None => link_host(link)?,
        };
        return Ok(TunnelsConfig::Remote(RemoteRelay {
            link_addr: link.clone(),
            server_name: f
                .relay_server_name
                .clone()
                .unwrap_or_else(|| format!("relay.{base_domain}")),
            ca_pem,
            base_domain,
            https_port: f.relay_public_https_port,
            raw_host,
            raw_port_range: (f.relay_raw_ports.start, f.relay_raw_ports.end),
        }));
    }
    let tls = match (&f.relay_cert, &f.relay_key) {
        (Some(cert), Some(key)) => TlsSource::Files {
            cert: cert.clone(),
            key: key.clone(),
            ca: None,
        },
        _ => TlsSource::Generated {
            dir: data_dir.join("tls"),
        },
    };
    Ok(TunnelsConfig::Local(RelayConfig {
        base_domain,
        https_listen: Some(f.relay_https_listen),
        raw_bind: f.relay_raw_bind,
        raw_port_range: f.relay_raw_ports,
        tls,
        link_listen: f.relay_link_listen,
        // The server fills in its node's secret and the token key from
        // <data-dir>/relay-secrets.json.
        ..RelayConfig::default()
    }))
}

/// The host part of `HOST:PORT` or `[V6]:PORT`.
fn link_host(link: &str) -> Result<String> {
    let host = match link.rsplit_once(':') {
        Some((h, port)) if port.parse::<u16>().is_ok() => h,
        _ => bail!("--relay-link {link:?}: expected HOST:PORT"),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        bail!("--relay-link {link:?}: the host is empty");
    }
    Ok(host.to_string())
}

/// Prints where tunnels are served and which CA clients must trust.
/// Loading the TLS material here also generates Warren's CA at first start
/// (the relay then reuses it), so a bad certificate stops us before the
/// server starts.
fn announce(t: &TunnelsConfig) -> Result<()> {
    match t {
        TunnelsConfig::Off => eprintln!("warren: tunnels are off (--no-relay)"),
        TunnelsConfig::Local(r) => {
            let tls = warren_relay::load_tls(&r.tls, &r.base_domain)
                .context("loading the relay's TLS certificate")?;
            if let Some(addr) = r.https_listen {
                let port = match addr.port() {
                    443 => String::new(),
                    0 => ":<any free port>".into(),
                    p => format!(":{p}"),
                };
                eprintln!(
                    "warren: tunnels at https://<sandbox-id>-<port>.{}{port} (HTTPS on {addr}), \
                     raw TCP on {}:{}-{}",
                    r.base_domain, r.raw_bind, r.raw_port_range.start, r.raw_port_range.end
                );
            }
            match (&r.tls, &tls.ca_path) {
                (TlsSource::Generated { .. }, Some(path)) => eprintln!(
                    "warren: relay CA {} (sha256 {}); trust it: curl --cacert {} URL",
                    path.display(),
                    tls.ca_fingerprint,
                    path.display()
                ),
                _ => eprintln!(
                    "warren: relay certificate from the operator (CA sha256 {})",
                    tls.ca_fingerprint
                ),
            }
        }
        TunnelsConfig::Remote(r) => eprintln!(
            "warren: tunnels through the relay at {} (link, name {}), \
             https://<sandbox-id>-<port>.{}",
            r.link_addr, r.server_name, r.base_domain
        ),
    }
    Ok(())
}

/// `FIRST-LAST`, 1 <= FIRST <= LAST <= 65535.
pub fn parse_port_range(s: &str) -> Result<PortRange, String> {
    let bad = || format!("'{s}': expected FIRST-LAST, ports 1-65535, FIRST <= LAST");
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let start: u16 = a.trim().parse().map_err(|_| bad())?;
    let end: u16 = b.trim().parse().map_err(|_| bad())?;
    if start == 0 || start > end {
        return Err(bad());
    }
    Ok(PortRange { start, end })
}

/// An IPv4 CIDR of at least 4 addresses (one /30 per sandbox).
fn parse_sandbox_cidr(s: &str) -> Result<String, String> {
    match warren_proto::api::parse_cidr(s.trim())? {
        (IpAddr::V4(_), len) if len <= 30 && s.contains('/') => Ok(s.trim().to_string()),
        (IpAddr::V4(_), _) => Err(format!("'{s}': a /30 or larger network, e.g. 10.88.0.0/16")),
        (IpAddr::V6(_), _) => Err(format!("'{s}': sandbox addresses are IPv4")),
    }
}

/// `IP` (port 53) or `IP:PORT` / `[V6]:PORT`.
pub fn parse_dns_upstream(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    s.parse::<SocketAddr>()
        .map_err(|_| format!("'{s}': expected IP or IP:PORT"))
}

/// Resolves on SIGINT or SIGTERM, so a service manager's stop is graceful.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges() {
        assert_eq!(
            parse_port_range("30000-30999"),
            Ok(PortRange {
                start: 30000,
                end: 30999
            })
        );
        assert!(parse_port_range("5-5").is_ok());
        for bad in ["30999-30000", "0-10", "1-65536", "100", "a-b", "-"] {
            assert!(parse_port_range(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sandbox_cidrs() {
        assert!(parse_sandbox_cidr("10.88.0.0/16").is_ok());
        assert!(parse_sandbox_cidr("10.88.0.0/30").is_ok());
        assert!(parse_sandbox_cidr("10.88.0.0/31").is_err());
        assert!(parse_sandbox_cidr("10.88.0.1/16").is_err());
        assert!(parse_sandbox_cidr("10.88.0.0").is_err());
        assert!(parse_sandbox_cidr("fd00::/64").is_err());
    }

    #[test]
    fn dns_upstreams() {
        assert_eq!(
            parse_dns_upstream("1.1.1.1").unwrap(),
            "1.1.1.1:53".parse().unwrap()
        );
        assert_eq!(
            parse_dns_upstream("127.0.0.1:5353").unwrap(),
            "127.0.0.1:5353".parse().unwrap()
        );
        assert_eq!(
            parse_dns_upstream("2001:db8::1").unwrap(),
            "[2001:db8::1]:53".parse().unwrap()
        );
        assert!(parse_dns_upstream("dns.google").is_err());
    }

    #[test]
    fn link_hosts() {
        assert_eq!(
            link_host("relay.example.com:7443").unwrap(),
            "relay.example.com"
        );
        assert_eq!(link_host("[2001:db8::1]:7443").unwrap(), "2001:db8::1");
        assert!(link_host("relay.example.com").is_err());
        assert!(link_host(":7443").is_err());
    }

    #[test]
    fn remote_relay_config() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "PEM").unwrap();
        let f = RelayFlags {
            no_relay: false,
            relay_https_listen: "127.0.0.1:8443".parse().unwrap(),
            relay_base_domain: "t.example.com".into(),
            relay_raw_bind: "127.0.0.1".parse().unwrap(),
            relay_raw_ports: PortRange {
                start: 40000,
                end: 40009,
            },
            relay_cert: None,
            relay_key: None,
            relay_link_listen: None,
            relay_link: Some("relay.example.com:7443".into()),
            relay_server_name: None,
            relay_ca: Some(ca),
            relay_public_https_port: 443,
            relay_raw_host: None,
        };
        match tunnels_config(dir.path(), &f).unwrap() {
            TunnelsConfig::Remote(r) => {
                assert_eq!(r.server_name, "relay.t.example.com");
                assert_eq!(r.raw_host, "relay.example.com");
                assert_eq!(r.raw_port_range, (40000, 40009));
                assert_eq!(r.ca_pem, "PEM");
            }
            other => panic!("{other:?}"),
        }
        let local = RelayFlags {
            relay_link: None,
            relay_ca: None,
            ..f
        };
        match tunnels_config(dir.path(), &local).unwrap() {
            TunnelsConfig::Local(r) => {
                assert_eq!(r.base_domain, "t.example.com");
                assert_eq!(
                    r.tls,
                    TlsSource::Generated {
                        dir: dir.path().join("tls")
                    }
                );
                assert!(r.token_key.is_empty(), "the server fills it in");
            }
            other => panic!("{other:?}"),
        }
    }
}
