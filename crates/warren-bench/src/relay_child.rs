//! `warren-bench relay-child` (hidden): a relay, or a node's link, in its
//! own process, so `warren-bench relay` measures the relay's memory alone
//! and runs it like `warren relay` would. Prints `READY <json>` on stdout
//! when serving and exits when its stdin closes (the parent went away).

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use warren_relay::{
    LoopbackTarget, NodeLink, NodeLinkConfig, PortProtocol, PortRoute, RawRoute, Relay,
    RelayConfig, Route, RouteState, StaticRoutes, TlsSource,
};

pub const SANDBOX: &str = "sb-benchbenchbenchbenchb";
pub const NODE: &str = "bench-node";
pub const SECRET: &str = "bench-secret";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// The relay; with `--link` nodes dial in, else the node is in-process.
    Relay,
    /// A node dialing `--relay-link`, serving loopback ports.
    Node,
    /// An echo server (its sockets count against its own descriptor limit).
    Echo,
}

#[derive(Args, Debug)]
pub struct ChildArgs {
    #[arg(long, value_enum)]
    pub role: Role,
    #[arg(long)]
    pub tls_dir: PathBuf,
    #[arg(long)]
    pub link: bool,
    #[arg(long, default_value_t = 0)]
    pub http_port: u16,
    #[arg(long, default_value_t = 0)]
    pub raw_port: u16,
    #[arg(long, default_value_t = 0)]
    pub raw_target: u16,
    #[arg(long)]
    pub relay_link: Option<String>,
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
}

pub fn run(args: &ChildArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let ready = match args.role {
            Role::Relay => {
                let routes = Arc::new(StaticRoutes::new());
                routes.set(Route {
                    sandbox_id: SANDBOX.into(),
                    node_id: NODE.into(),
                    state: RouteState::Running,
                    ready: true,
                    ports: vec![PortRoute {
                        port: args.http_port,
                        protocol: PortProtocol::Http1,
                        require_token: false,
                    }],
                    revoked_tokens: vec![],
                });
                if args.raw_port != 0 {
                    routes.set_raw(vec![RawRoute {
                        relay_port: args.raw_port,
                        sandbox_id: SANDBOX.into(),
                        port: args.raw_target,
                    }]);
                }
                let mut cfg = RelayConfig {
                    https_listen: Some("127.0.0.1:0".parse()?),
                    tls: TlsSource::Generated {
                        dir: args.tls_dir.clone(),
                    },
                    raw_port_range: warren_relay::PortRange {
                        start: 1024,
                        end: 65535,
                    },
                    ..RelayConfig::default()
                };
                if args.link {
                    cfg.link_listen = Some("127.0.0.1:0".parse()?);
                    cfg.node_secrets.insert(NODE.into(), SECRET.into());
                }
                let relay = Relay::start(cfg, routes).await.context("start relay")?;
                if !args.link {
                    relay.attach_local_node(NODE, Arc::new(LoopbackTarget));
                }
                let ready = serde_json::json!({
                    "https": relay.https_addr().map(|a| a.to_string()),
                    "link": relay.link_addr().map(|a| a.to_string()),
                    "raw_ports": relay.raw_ports(),
                });
                (ready, Some(relay), None)
            }
            Role::Echo => {
                let addr = crate::relay::echo_server().await?;
                (serde_json::json!({"addr": addr.to_string()}), None, None)
            }
            Role::Node => {
                let ca =
                    std::fs::read_to_string(args.tls_dir.join("ca.pem")).context("read ca.pem")?;
                let link = NodeLink::spawn(
                    NodeLinkConfig {
                        relay_addr: args.relay_link.clone().context("--relay-link")?,
                        server_name: "relay.warren.localhost".into(),
                        ca_pem: ca,
                        node_id: NODE.into(),
                        secret: SECRET.into(),
                        handshake_timeout_ms: 5000,
                        open_timeout_ms: 5000,
                    },
                    Arc::new(LoopbackTarget),
                )?;
                anyhow::ensure!(
                    link.wait_connected(std::time::Duration::from_secs(10))
                        .await,
                    "link did not connect: {:?}",
                    link.state()
                );
                (serde_json::json!({"connected": true}), None, Some(link))
            }
        };
        let mut out = std::io::stdout().lock();
        writeln!(out, "READY {}", ready.0)?;
        out.flush()?;
        drop(out);
        // Serve until the parent closes our stdin.
        tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            let stdin = std::io::stdin();
            let mut lock = stdin.lock();
            while lock.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                line.clear();
            }
        })
        .await?;
        if let Some(r) = ready.1 {
            r.shutdown().await;
        }
        if let Some(l) = ready.2 {
            l.shutdown().await;
        }
        Ok(())
    })
}
