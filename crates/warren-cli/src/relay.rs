//! `warren relay`: the relay in its own process. It serves the HTTPS and
//! raw TCP fronts of tunnels, accepts the link of the control plane's node
//! (node id `local`, authenticated with `node_secret`), and asks the control
//! plane for routes over HTTP (authenticated with `relay_secret`). Both
//! secrets and the connect-token key come from the control plane's
//! `<data-dir>/relay-secrets.json`, copied next to the relay.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use warren_relay::{HttpRouteSource, PortRange, RelayConfig, RouteSource, TlsSource};
use warren_server::tunnels::RelaySecrets;

use crate::serve::{parse_port_range, shutdown_signal};

/// The node id of a `warren serve` control plane's own node.
const LOCAL_NODE_ID: &str = "local";

#[derive(Args)]
pub struct RelayArgs {
    /// The control plane's API URL (`warren serve --listen`), asked for
    /// routes.
    #[arg(long, value_name = "URL")]
    control_url: String,
    /// relay-secrets.json copied from the control plane's data directory.
    #[arg(long, value_name = "FILE")]
    secrets: PathBuf,
    /// CA certificate (PEM) to trust for an https --control-url.
    #[arg(long, value_name = "FILE")]
    control_ca: Option<PathBuf>,
    /// Where clients reach tunnels over HTTPS.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8443")]
    https_listen: SocketAddr,
    /// Where nodes dial in (TLS); use 0.0.0.0:7443 for nodes on other
    /// machines.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7443")]
    link_listen: SocketAddr,
    /// Tunnel hosts are <sandbox-id>-<port>.<DOMAIN>; must match the
    /// control plane's --relay-base-domain.
    #[arg(long, value_name = "DOMAIN", default_value = warren_relay::DEFAULT_BASE_DOMAIN)]
    base_domain: String,
    /// Address raw TCP ports listen on.
    #[arg(long, value_name = "IP", default_value = "127.0.0.1")]
    raw_bind: IpAddr,
    /// Ports raw TCP tunnels may use, FIRST-LAST; must match the control
    /// plane's --relay-raw-ports.
    #[arg(long, value_name = "FIRST-LAST", default_value = "30000-30999",
        value_parser = parse_port_range)]
    raw_ports: PortRange,
    /// Directory of the generated CA and certificate (default:
    /// <data-dir>/tls).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["cert", "key"])]
    tls_dir: Option<PathBuf>,
    /// Wildcard certificate chain (PEM) for *.<DOMAIN> instead of a
    /// generated CA; it must also cover the name nodes dial
    /// (relay.<DOMAIN> by default).
    #[arg(long, value_name = "FILE", requires = "key")]
    cert: Option<PathBuf>,
    /// Key of --cert (PEM).
    #[arg(long, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
}

pub fn run(data_dir: &Path, a: RelayArgs) -> Result<i32> {
    let secrets = read_secrets(&a.secrets)?;
    let control_ca = match &a.control_ca {
        Some(p) => Some(std::fs::read(p).with_context(|| format!("reading {}", p.display()))?),
        None => None,
    };
    let config = relay_config(data_dir, &a, &secrets);
    let tls = warren_relay::load_tls(&config.tls, &config.base_domain)
        .context("loading the relay's TLS certificate")?;
    let lookup = Duration::from_millis(config.timeouts.route_lookup_ms);
    let routes: Arc<dyn RouteSource> = Arc::new(
        HttpRouteSource::new(
            &a.control_url,
            &secrets.relay_secret,
            control_ca.as_deref(),
            lookup,
        )
        .with_context(|| format!("--control-url {}", a.control_url))?,
    );
    eprintln!(
        "warren relay: HTTPS on {} for *.{}, node links on {}, raw TCP on {}:{}-{}, routes from {}",
        a.https_listen,
        config.base_domain,
        a.link_listen,
        a.raw_bind,
        a.raw_ports.start,
        a.raw_ports.end,
        a.control_url
    );
    match &tls.ca_path {
        Some(path) if matches!(config.tls, TlsSource::Generated { .. }) => eprintln!(
            "warren relay: CA {} (sha256 {}); give it to clients (curl --cacert) and to \
             `warren serve --relay-ca`",
            path.display(),
            tls.ca_fingerprint
        ),
        _ => eprintln!(
            "warren relay: operator certificate (CA sha256 {})",
            tls.ca_fingerprint
        ),
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(warren_relay::run(config, routes, shutdown_signal()))
        .context("warren relay")?;
    Ok(0)
}

/// Reads relay-secrets.json; never creates it (the control plane does).
fn read_secrets(path: &Path) -> Result<RelaySecrets> {
    let bytes = std::fs::read(path).with_context(|| {
        format!(
            "reading {} (copy relay-secrets.json from the control plane's data directory)",
            path.display()
        )
    })?;
    let secrets: RelaySecrets =
        serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))?;
    if secrets.token_key.is_empty()
        || secrets.relay_secret.is_empty()
        || secrets.node_secret.is_empty()
    {
        bail!("{}: a secret is empty", path.display());
    }
    if let Ok(meta) = std::fs::metadata(path) {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            eprintln!(
                "warren relay: warning: {} is readable by other users; chmod 600 it",
                path.display()
            );
        }
    }
    Ok(secrets)
}

fn relay_config(data_dir: &Path, a: &RelayArgs, secrets: &RelaySecrets) -> RelayConfig {
    let tls = match (&a.cert, &a.key) {
        (Some(cert), Some(key)) => TlsSource::Files {
            cert: cert.clone(),
            key: key.clone(),
            ca: None,
        },
        _ => TlsSource::Generated {
            dir: a.tls_dir.clone().unwrap_or_else(|| data_dir.join("tls")),
        },
    };
    RelayConfig {
        base_domain: a.base_domain.trim().trim_matches('.').to_string(),
        https_listen: Some(a.https_listen),
        raw_bind: a.raw_bind,
        raw_port_range: a.raw_ports,
        tls,
        link_listen: Some(a.link_listen),
        node_secrets: [(LOCAL_NODE_ID.to_string(), secrets.node_secret.clone())].into(),
        token_key: secrets.token_key.clone(),
        ..RelayConfig::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        a: RelayArgs,
    }

    #[test]
    fn config_from_flags_and_secrets() {
        let w = Wrap::try_parse_from([
            "relay",
            "--control-url",
            "http://10.0.0.1:7070",
            "--secrets",
            "/s.json",
            "--base-domain",
            "t.example.com.",
        ])
        .unwrap();
        let s = RelaySecrets {
            token_key: "k".into(),
            relay_secret: "r".into(),
            node_secret: "n".into(),
        };
        let c = relay_config(Path::new("/data"), &w.a, &s);
        assert_eq!(c.base_domain, "t.example.com");
        assert_eq!(c.node_secrets["local"], "n");
        assert_eq!(c.token_key, "k");
        assert_eq!(c.link_listen, Some("127.0.0.1:7443".parse().unwrap()));
        assert_eq!(
            c.tls,
            TlsSource::Generated {
                dir: PathBuf::from("/data/tls")
            }
        );
        assert!(Wrap::try_parse_from([
            "relay",
            "--control-url",
            "u",
            "--secrets",
            "s",
            "--tls-dir",
            "/t",
            "--cert",
            "c",
            "--key",
            "k"
        ])
        .is_err());
    }

    #[test]
    fn secrets_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("relay-secrets.json");
        assert!(read_secrets(&p).is_err());
        std::fs::write(
            &p,
            r#"{"token_key":"a","relay_secret":"b","node_secret":"c"}"#,
        )
        .unwrap();
        assert_eq!(read_secrets(&p).unwrap().node_secret, "c");
        std::fs::write(
            &p,
            r#"{"token_key":"","relay_secret":"b","node_secret":"c"}"#,
        )
        .unwrap();
        assert!(read_secrets(&p).is_err());
        std::fs::write(&p, r#"{"token_key":"a"}"#).unwrap();
        assert!(read_secrets(&p).is_err());
    }
}
