//! The networking side of `warren sandbox`: the create flags that expose
//! ports, set the egress policy and a readiness probe; and the `tunnels`,
//! `connect-token`, `connect-tokens`, `revoke-token`, `wait-ready` and
//! `network` subcommands.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use warren_client::{Client, Readiness};
use warren_proto::api::{
    ConnectTokenRequest, CreateSandboxRequest, NetworkInfo, PortSpec, ReadinessProbe, Sandbox,
    TunnelKind, TunnelList, UpdateNetworkRequest,
};

use crate::remote::outln;
use crate::sandbox::{print_json, TIMED_OUT_EXIT};

/// Flags of `sandbox create` and `run` that shape the sandbox's network.
#[derive(Args, Debug, Default, Clone, PartialEq)]
pub struct NetworkArgs {
    /// Expose PORT at https://<id>-<PORT>.<base-domain> (TLS ends at the
    /// relay; HTTP/1.1 and WebSocket inside). `PORT:token` admits only
    /// requests with a connect token. Repeatable.
    #[arg(long = "port", value_name = "PORT[:token]", value_parser = parse_port_spec)]
    pub ports: Vec<PortSpec>,
    /// Like --port, speaking HTTP/2 cleartext (h2c) to the sandbox.
    #[arg(long = "h2-port", value_name = "PORT[:token]", value_parser = parse_port_spec)]
    pub h2_ports: Vec<PortSpec>,
    /// Forward raw TCP from a port on the relay to PORT. Repeatable.
    #[arg(long = "tcp-port", value_name = "PORT", value_parser = parse_port)]
    pub tcp_ports: Vec<u16>,
    /// No network interface but `lo` (no egress at all).
    #[arg(long, conflicts_with = "allow_cidr")]
    pub block_network: bool,
    /// Allow egress only to this CIDR or address (repeatable); without it
    /// the public internet is allowed and private ranges are not.
    #[arg(long = "allow-cidr", value_name = "CIDR", value_parser = parse_cidr)]
    pub allow_cidr: Vec<String>,
    /// Ready once something accepts TCP connections on PORT inside the
    /// sandbox (tunnels answer 503 until then).
    #[arg(long, value_name = "PORT", value_parser = parse_port, conflicts_with = "ready_exec")]
    pub ready_tcp: Option<u16>,
    /// Ready once this command exits 0, e.g. 'test -f /tmp/up'. Split into
    /// words like a shell does (quotes, backslashes), but not run by one:
    /// use 'sh -c "..."' for pipes and the like.
    #[arg(long, value_name = "COMMAND", value_parser = parse_words)]
    pub ready_exec: Option<Argv>,
}

/// A command line split into words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Argv(pub Vec<String>);

impl NetworkArgs {
    /// Whether any flag was given.
    pub fn is_empty(&self) -> bool {
        *self == NetworkArgs::default()
    }

    /// Whether any port is exposed.
    pub fn exposes_ports(&self) -> bool {
        !self.ports.is_empty() || !self.h2_ports.is_empty() || !self.tcp_ports.is_empty()
    }

    /// Sets the request's network fields.
    pub fn apply(&self, req: &mut CreateSandboxRequest) {
        req.encrypted_ports = self.ports.clone();
        req.h2_ports = self.h2_ports.clone();
        req.unencrypted_ports = self.tcp_ports.clone();
        req.block_network = self.block_network;
        req.outbound_cidr_allowlist =
            (!self.allow_cidr.is_empty()).then(|| self.allow_cidr.clone());
        req.readiness_probe = match (&self.ready_tcp, &self.ready_exec) {
            (Some(p), _) => Some(ReadinessProbe::Tcp(*p)),
            (None, Some(argv)) => Some(ReadinessProbe::Exec(argv.0.clone())),
            (None, None) => None,
        };
    }
}

/// `N`, 1..=65535.
pub fn parse_port(s: &str) -> Result<u16, String> {
    match s.trim().parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(format!("'{s}' is not a port (1-65535)")),
    }
}

/// `PORT` or `PORT:token`.
pub fn parse_port_spec(s: &str) -> Result<PortSpec, String> {
    match s.split_once(':') {
        None => parse_port(s).map(PortSpec::Port),
        Some((p, "token")) => parse_port(p).map(|port| PortSpec::Detailed {
            port,
            require_token: true,
        }),
        Some(_) => Err(format!("'{s}': expected PORT or PORT:token")),
    }
}

/// A CIDR (`203.0.113.0/24`, `2001:db8::/32`) or a single address, with no
/// bits set after the prefix.
pub fn parse_cidr(s: &str) -> Result<String, String> {
    warren_proto::api::parse_cidr(s.trim())?;
    Ok(s.trim().to_string())
}

/// Splits a command line into words: whitespace separates; '...' keeps
/// everything literally; "..." keeps everything but `\"` and `\\`; a
/// backslash outside quotes escapes the next character.
pub fn parse_words(s: &str) -> Result<Argv, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err(format!("unclosed ' in {s:?}")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\')) => cur.push(c),
                            Some(c) => {
                                cur.push('\\');
                                cur.push(c);
                            }
                            None => return Err(format!("unclosed \" in {s:?}")),
                        },
                        Some(c) => cur.push(c),
                        None => return Err(format!("unclosed \" in {s:?}")),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => cur.push(c),
                    None => return Err(format!("a trailing backslash in {s:?}")),
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    if words.is_empty() {
        return Err("the command is empty".into());
    }
    Ok(Argv(words))
}

#[derive(Args)]
pub struct TunnelsArgs {
    id: String,
    /// Print the tunnel list as JSON (the CA PEM included).
    #[arg(long)]
    json: bool,
    /// Write the CA certificate (PEM) that signs the relay's certificate to
    /// FILE, for `curl --cacert FILE` or a browser's trust store.
    #[arg(long, value_name = "FILE")]
    ca_out: Option<PathBuf>,
}

#[derive(Args)]
pub struct ConnectTokenArgs {
    id: String,
    /// The exposed HTTPS/H2 port the token opens.
    #[arg(long, value_parser = parse_port)]
    port: u16,
    /// Handed to the app as the `X-Warren-User-Data` header of every request
    /// made with this token (printable ASCII, at most 1024 bytes).
    #[arg(long, value_name = "STRING")]
    user_data: Option<String>,
    /// Lifetime in seconds (server default 3600, at most 604800).
    #[arg(long, value_name = "SECS")]
    ttl: Option<u64>,
    /// Print the token as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct NetworkCmdArgs {
    id: String,
    /// Drop all of the sandbox's traffic from now on.
    #[arg(long, conflicts_with = "unblock")]
    block: bool,
    /// Undo --block (the allowlist, if any, applies again).
    #[arg(long)]
    unblock: bool,
    /// Replace the allowlist: only these CIDRs or addresses (repeatable).
    #[arg(long = "allow-cidr", value_name = "CIDR", value_parser = parse_cidr,
        conflicts_with = "clear_allowlist")]
    allow_cidr: Vec<String>,
    /// Remove the allowlist (back to the default policy).
    #[arg(long)]
    clear_allowlist: bool,
    /// Print the sandbox's network as JSON.
    #[arg(long)]
    json: bool,
}

impl NetworkCmdArgs {
    fn request(&self) -> Option<UpdateNetworkRequest> {
        let req = UpdateNetworkRequest {
            block_network: if self.block {
                Some(true)
            } else if self.unblock {
                Some(false)
            } else {
                None
            },
            outbound_cidr_allowlist: if self.clear_allowlist {
                Some(None)
            } else if !self.allow_cidr.is_empty() {
                Some(Some(self.allow_cidr.clone()))
            } else {
                None
            },
        };
        (req != UpdateNetworkRequest::default()).then_some(req)
    }
}

/// `sandbox tunnels`
pub async fn tunnels(c: &Client, a: TunnelsArgs) -> Result<i32> {
    let list = c.tunnels(&a.id).await?;
    if let Some(path) = &a.ca_out {
        let Some(pem) = &list.ca_pem else {
            anyhow::bail!(
                "the server sent no CA certificate: its relay uses an operator certificate, \
                 which clients should trust already (sha256 {})",
                list.ca_fingerprint.as_deref().unwrap_or("unknown")
            );
        };
        std::fs::write(path, pem).with_context(|| format!("writing {}", path.display()))?;
    }
    if a.json {
        print_json(&list)?;
    } else {
        print_tunnels(&list, a.ca_out.as_deref())?;
    }
    Ok(0)
}

fn kind_str(k: TunnelKind) -> &'static str {
    match k {
        TunnelKind::Https => "https",
        TunnelKind::H2 => "h2",
        TunnelKind::Tcp => "tcp",
    }
}

fn print_tunnels(list: &TunnelList, ca_out: Option<&std::path::Path>) -> std::io::Result<()> {
    let rows: Vec<[String; 4]> = list
        .tunnels
        .iter()
        .map(|t| {
            let target = match (&t.url, &t.raw) {
                (Some(u), _) => u.clone(),
                (None, Some(e)) => format!("{}:{}", e.host, e.port),
                (None, None) => "-".into(),
            };
            let token = match t.kind {
                TunnelKind::Tcp => "-",
                _ if t.require_token => "required",
                _ => "no",
            };
            [
                t.port.to_string(),
                kind_str(t.kind).into(),
                target,
                token.into(),
            ]
        })
        .collect();
    crate::sandbox::print_rows(["PORT", "KIND", "URL/ENDPOINT", "TOKEN"], &rows)?;
    if list.tunnels.is_empty() {
        outln!("(no exposed ports: create with --port, --h2-port or --tcp-port)")?;
    }
    outln!("")?;
    if !list.relay_connected {
        outln!("relay:     NOT connected (tunnels fail until it is back)")?;
    }
    if let Some(fp) = &list.ca_fingerprint {
        outln!("CA sha256: {fp}")?;
    }
    match (ca_out, &list.ca_pem) {
        (Some(p), _) => {
            let shown = p.display();
            outln!("CA PEM:    written to {shown}")?;
            if let Some(u) = list.tunnels.iter().find_map(|t| t.url.as_ref()) {
                outln!("try:       curl --cacert {shown} {u}")?;
            }
        }
        (None, Some(_)) => outln!(
            "CA PEM:    Warren's own CA; save it with --ca-out FILE, then curl --cacert FILE URL"
        )?,
        (None, None) => {}
    }
    Ok(())
}

/// `sandbox connect-token`
pub async fn connect_token(c: &Client, a: ConnectTokenArgs) -> Result<i32> {
    let req = ConnectTokenRequest {
        port: a.port,
        user_data: a.user_data,
        ttl_secs: a.ttl,
    };
    let t = c.create_connect_token(&a.id, &req).await?;
    if a.json {
        print_json(&t)?;
    } else {
        outln!("url:       {}", t.url)?;
        outln!("token:     {}", t.token)?;
        outln!("token id:  {}", t.token_id)?;
        outln!("expires:   {}", t.expires_at)?;
    }
    Ok(0)
}

/// `sandbox connect-tokens`
pub async fn connect_tokens(c: &Client, id: &str, json: bool) -> Result<i32> {
    let tokens = c.list_connect_tokens(id).await?;
    if json {
        print_json(&tokens)?;
        return Ok(0);
    }
    let rows: Vec<[String; 5]> = tokens
        .iter()
        .map(|t| {
            [
                t.token_id.clone(),
                t.port.to_string(),
                t.created_at.clone(),
                t.expires_at.clone(),
                t.revoked_at.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    crate::sandbox::print_rows(["TOKEN ID", "PORT", "CREATED", "EXPIRES", "REVOKED"], &rows)?;
    Ok(0)
}

/// Waits until the sandbox is ready: 0 when it is, [`TIMED_OUT_EXIT`]
/// when `timeout` seconds pass first (None: no limit). Prints `ready`
/// unless `quiet`.
pub async fn wait_ready(c: &Client, id: &str, timeout: Option<u64>, quiet: bool) -> Result<i32> {
    let started = Instant::now();
    let deadline = timeout.map(|t| started + Duration::from_secs(t));
    loop {
        let chunk = match deadline {
            Some(d) => d.saturating_duration_since(Instant::now()),
            None => Duration::from_secs(warren_client::MAX_WAIT_SECS),
        };
        let asked = Instant::now();
        match c.wait_ready(id, chunk).await? {
            Readiness::Ready => {
                if !quiet {
                    outln!("ready")?;
                }
                return Ok(0);
            }
            Readiness::NotReady => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    eprintln!(
                        "warren: sandbox {id} is not ready after {}s",
                        timeout.unwrap_or(0)
                    );
                    return Ok(TIMED_OUT_EXIT);
                }
                // A server that answers early must not make this spin.
                if asked.elapsed() < Duration::from_secs(1) {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    }
}

/// `sandbox network`: shows the network, or changes its egress policy.
pub async fn network(c: &Client, a: NetworkCmdArgs) -> Result<i32> {
    let sb = match a.request() {
        Some(req) => c.update_network(&a.id, &req).await?,
        None => c.get_sandbox(&a.id).await?,
    };
    if a.json {
        print_json(&sb.network)?;
    } else {
        print_network(&sb)?;
    }
    Ok(0)
}

/// `default (public internet)`, `blocked`, `allowlist: a, b`.
pub fn egress_str(n: &NetworkInfo) -> String {
    match (&n.outbound_cidr_allowlist, n.block_network) {
        (_, true) => "blocked".into(),
        (Some(list), false) if list.is_empty() => "allowlist: (empty: nothing)".into(),
        (Some(list), false) => format!("allowlist: {}", list.join(", ")),
        (None, false) => "default (public internet; private ranges denied)".into(),
    }
}

/// `3000 https, 3001 https (token), 8080 h2, 5432 tcp`.
pub fn ports_str(sb: &Sandbox) -> String {
    let spec = |kind: &str, p: &PortSpec| {
        if p.require_token() {
            format!("{} {kind} (token)", p.port())
        } else {
            format!("{} {kind}", p.port())
        }
    };
    sb.encrypted_ports
        .iter()
        .map(|p| spec("https", p))
        .chain(sb.h2_ports.iter().map(|p| spec("h2", p)))
        .chain(sb.unencrypted_ports.iter().map(|p| format!("{p} tcp")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `tcp 3000`, `exec test -f /tmp/up`.
pub fn probe_str(p: &ReadinessProbe) -> String {
    match p {
        ReadinessProbe::Tcp(port) => format!("tcp {port}"),
        ReadinessProbe::Exec(argv) => format!("exec {}", argv.join(" ")),
    }
}

fn print_network(sb: &Sandbox) -> std::io::Result<()> {
    outln!("egress:    {}", egress_str(&sb.network))?;
    outln!(
        "address:   {}",
        sb.network.address.as_deref().unwrap_or("- (only lo)")
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_specs() {
        assert_eq!(parse_port_spec("3000"), Ok(PortSpec::Port(3000)));
        assert_eq!(
            parse_port_spec("3000:token"),
            Ok(PortSpec::Detailed {
                port: 3000,
                require_token: true
            })
        );
        for bad in ["0", "65536", "x", "3000:tok", "3000:", ":token", ""] {
            assert!(parse_port_spec(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cidrs() {
        assert_eq!(parse_cidr("203.0.113.0/24").unwrap(), "203.0.113.0/24");
        assert_eq!(parse_cidr("1.1.1.1").unwrap(), "1.1.1.1");
        assert!(parse_cidr("10.0.0.1/8").is_err());
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("example.com").is_err());
    }

    #[test]
    fn words() {
        let w = |s: &str| parse_words(s).map(|a| a.0);
        assert_eq!(w("test -f /tmp/up").unwrap(), ["test", "-f", "/tmp/up"]);
        assert_eq!(
            w(r#"sh -c "curl -sf localhost:3000 | grep \"ok\"""#).unwrap(),
            ["sh", "-c", r#"curl -sf localhost:3000 | grep "ok""#]
        );
        assert_eq!(w("a 'b c' d\\ e ''").unwrap(), ["a", "b c", "d e", ""]);
        assert_eq!(w("  x  ").unwrap(), ["x"]);
        assert!(w("").is_err());
        assert!(w("   ").is_err());
        assert!(w("'open").is_err());
        assert!(w("\"open").is_err());
        assert!(w("trailing\\").is_err());
    }

    #[test]
    fn apply_sets_the_request() {
        let a = NetworkArgs {
            ports: vec![PortSpec::Port(3000)],
            tcp_ports: vec![5432],
            allow_cidr: vec!["203.0.113.0/24".into()],
            ready_exec: Some(Argv(vec!["true".into()])),
            ..Default::default()
        };
        assert!(!a.is_empty() && a.exposes_ports());
        let mut req = CreateSandboxRequest::default();
        a.apply(&mut req);
        assert_eq!(req.encrypted_ports, vec![PortSpec::Port(3000)]);
        assert_eq!(req.unencrypted_ports, vec![5432]);
        assert_eq!(
            req.outbound_cidr_allowlist,
            Some(vec!["203.0.113.0/24".to_string()])
        );
        assert_eq!(
            req.readiness_probe,
            Some(ReadinessProbe::Exec(vec!["true".into()]))
        );
        assert!(NetworkArgs::default().is_empty());
        let mut req = CreateSandboxRequest::default();
        NetworkArgs::default().apply(&mut req);
        assert_eq!(req, CreateSandboxRequest::default());
    }
}
