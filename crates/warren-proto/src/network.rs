//! The public API's networking bodies: egress policy, exposed ports,
//! tunnels, connect tokens and readiness (re-exported from [`crate::api`]).

use std::net::IpAddr;

use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

/// Most ports one sandbox may expose (all kinds together).
pub const MAX_EXPOSED_PORTS: usize = 16;
/// Most entries in an outbound allowlist.
pub const MAX_ALLOWLIST: usize = 256;
/// Default and longest lifetime of a connect token.
pub const DEFAULT_CONNECT_TOKEN_TTL_SECS: u64 = 3600;
pub const MAX_CONNECT_TOKEN_TTL_SECS: u64 = 7 * 86_400;
/// Longest `user_data` of a connect token, in bytes.
pub const MAX_USER_DATA_LEN: usize = 1024;

/// A port exposed through the relay: a bare number, or an object asking
/// for connect tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum PortSpec {
    /// Open to anyone who knows the URL.
    Port(u16),
    Detailed {
        port: u16,
        /// Admit only requests that carry a valid connect token.
        #[serde(default)]
        require_token: bool,
    },
}

impl PortSpec {
    pub fn port(self) -> u16 {
        match self {
            PortSpec::Port(p) | PortSpec::Detailed { port: p, .. } => p,
        }
    }

    pub fn require_token(self) -> bool {
        matches!(
            self,
            PortSpec::Detailed {
                require_token: true,
                ..
            }
        )
    }
}

/// How a sandbox tells that it is ready to serve: a TCP port accepting
/// connections inside the sandbox, or a command exiting with status 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ReadinessProbe {
    Tcp(u16),
    Exec(Vec<String>),
}

/// Body of `PATCH /v1/sandboxes/{id}/network`. Absent fields keep their
/// value; `"outbound_cidr_allowlist": null` removes the allowlist.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateNetworkRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_network: Option<bool>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<Vec<String>>)]
    pub outbound_cidr_allowlist: Option<Option<Vec<String>>>,
}

/// A field that is present (even as `null`) becomes `Some(..)`.
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// A sandbox's network as the API reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NetworkInfo {
    /// No interface but `lo`, or (changed at run time) all traffic dropped.
    pub block_network: bool,
    /// Only these destinations may be reached, when set.
    pub outbound_cidr_allowlist: Option<Vec<String>>,
    /// The sandbox's address on its node, when it has an interface.
    pub address: Option<String>,
}

/// What a tunnel speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TunnelKind {
    /// TLS terminated at the relay; HTTP/1.1 (and WebSocket) to the sandbox.
    Https,
    /// TLS terminated at the relay; HTTP/2 cleartext (h2c) to the sandbox.
    H2,
    /// Raw TCP bytes, forwarded both ways.
    Tcp,
}

/// A `host:port` a client connects to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

/// One exposed port of `GET /v1/sandboxes/{id}/tunnels`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Tunnel {
    /// The port inside the sandbox.
    pub port: u16,
    pub kind: TunnelKind,
    /// `https://<sandbox-id>-<port>.<base-domain>[:port]` (HTTPS and H2).
    pub url: Option<String>,
    /// The host name a client asks for (TLS SNI and `Host`), or the relay's
    /// host for raw TCP.
    pub host: String,
    /// Where TLS connections go (HTTPS and H2).
    pub tls: Option<Endpoint>,
    /// Where raw TCP connections go (TCP).
    pub raw: Option<Endpoint>,
    /// Requests need a connect token.
    pub require_token: bool,
}

/// `GET /v1/sandboxes/{id}/tunnels`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TunnelList {
    pub tunnels: Vec<Tunnel>,
    /// SHA-256 (hex, colon-free) of the CA certificate that signs the
    /// relay's certificate: Warren's own CA, or the operator's chain root.
    pub ca_fingerprint: Option<String>,
    /// The CA certificate (PEM) when Warren generated it, so clients can
    /// trust it.
    pub ca_pem: Option<String>,
    /// Whether the relay serving these tunnels is up.
    pub relay_connected: bool,
}

/// Body of `POST /v1/sandboxes/{id}/connect-token`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectTokenRequest {
    /// An exposed HTTPS or H2 port of the sandbox.
    pub port: u16,
    /// Handed to the sandbox's app as the `X-Warren-User-Data` header of
    /// every request made with this token (at most 1024 bytes, printable).
    #[serde(default)]
    pub user_data: Option<String>,
    /// Lifetime; default 3600, at most 604800.
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

/// A minted connect token (`POST .../connect-token`). The token is shown
/// once; only its id is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ConnectToken {
    pub token_id: String,
    pub token: String,
    pub port: u16,
    /// The tunnel URL with the token as a query parameter: opening it in a
    /// browser sets a cookie, so later requests need nothing more.
    pub url: String,
    pub expires_at: String,
}

/// A connect token's metadata (`GET .../connect-tokens`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ConnectTokenInfo {
    pub token_id: String,
    pub port: u16,
    pub created_at: String,
    pub expires_at: String,
    pub revoked_at: Option<String>,
}

/// `GET /v1/sandboxes/{id}/connect-tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ConnectTokenList {
    pub tokens: Vec<ConnectTokenInfo>,
}

/// `GET /v1/sandboxes/{id}/wait-ready`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReadyStatus {
    pub ready: bool,
}

/// Checks the network fields of a create request.
pub fn validate_network(
    block_network: bool,
    allowlist: Option<&[String]>,
    encrypted: &[PortSpec],
    h2: &[PortSpec],
    raw: &[u16],
    probe: Option<&ReadinessProbe>,
) -> Result<(), String> {
    if let Some(list) = allowlist {
        if block_network {
            return Err("block_network and outbound_cidr_allowlist exclude each other".into());
        }
        validate_allowlist(list)?;
    }
    let ports: Vec<u16> = encrypted
        .iter()
        .chain(h2)
        .map(|p| p.port())
        .chain(raw.iter().copied())
        .collect();
    if ports.len() > MAX_EXPOSED_PORTS {
        return Err(format!(
            "at most {MAX_EXPOSED_PORTS} ports may be exposed (encrypted_ports, h2_ports and unencrypted_ports together)"
        ));
    }
    for (i, p) in ports.iter().enumerate() {
        if *p == 0 {
            return Err("exposed ports must be between 1 and 65535".into());
        }
        if ports[..i].contains(p) {
            return Err(format!("port {p} is exposed twice"));
        }
    }
    match probe {
        Some(ReadinessProbe::Tcp(0)) => {
            return Err("readiness_probe.tcp must be between 1 and 65535".into())
        }
        Some(ReadinessProbe::Exec(argv)) => {
            crate::api::validate_command("readiness_probe.exec", argv)?
        }
        _ => {}
    }
    Ok(())
}

/// Checks an allowlist: CIDRs (`1.2.3.0/24`, `2001:db8::/32`) or single
/// addresses.
pub fn validate_allowlist(list: &[String]) -> Result<(), String> {
    if list.len() > MAX_ALLOWLIST {
        return Err(format!(
            "outbound_cidr_allowlist has more than {MAX_ALLOWLIST} entries"
        ));
    }
    for entry in list {
        parse_cidr(entry).map_err(|e| format!("outbound_cidr_allowlist: {e}"))?;
    }
    Ok(())
}

/// Parses `ADDR` or `ADDR/LEN` into an address and a prefix length, with
/// host bits required to be zero.
pub fn parse_cidr(s: &str) -> Result<(IpAddr, u8), String> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("'{s}' is not an IP address or CIDR"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(l) => l
            .parse::<u8>()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("'{s}' has a bad prefix length (0..={max})"))?,
    };
    let host_bits_zero = match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            len == 32 || bits & (u32::MAX >> len) == 0
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            len == 128 || bits & (u128::MAX >> len) == 0
        }
    };
    if !host_bits_zero {
        return Err(format!("'{s}' has bits set after the prefix length"));
    }
    Ok((ip, len))
}

/// Checks a connect token request.
pub fn validate_connect_token(req: &ConnectTokenRequest) -> Result<(), String> {
    if let Some(ud) = &req.user_data {
        if ud.len() > MAX_USER_DATA_LEN {
            return Err(format!(
                "user_data is longer than {MAX_USER_DATA_LEN} bytes"
            ));
        }
        // It travels as an HTTP header value.
        if ud.bytes().any(|b| !(0x20..0x7f).contains(&b)) {
            return Err(
                "user_data must be printable ASCII (encode anything else, e.g. base64)".into(),
            );
        }
    }
    if let Some(t) = req.ttl_secs {
        if t == 0 || t > MAX_CONNECT_TOKEN_TTL_SECS {
            return Err(format!(
                "ttl_secs must be between 1 and {MAX_CONNECT_TOKEN_TTL_SECS}"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        assert_eq!(parse_cidr("10.0.0.0/8").unwrap().1, 8);
        assert_eq!(parse_cidr("1.2.3.4").unwrap().1, 32);
        assert_eq!(parse_cidr("2001:db8::/32").unwrap().1, 32);
        assert!(parse_cidr("10.0.0.1/8").is_err());
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("nope").is_err());
        assert!(parse_cidr("0.0.0.0/0").is_ok());
    }

    #[test]
    fn ports_and_patch() {
        let p: Vec<PortSpec> =
            serde_json::from_str(r#"[8000, {"port": 3000, "require_token": true}]"#).unwrap();
        assert_eq!(p[0].port(), 8000);
        assert!(!p[0].require_token());
        assert!(p[1].require_token());
        assert!(validate_network(false, None, &p, &[], &[8000], None).is_err());
        let u: UpdateNetworkRequest =
            serde_json::from_str(r#"{"outbound_cidr_allowlist": null}"#).unwrap();
        assert_eq!(u.outbound_cidr_allowlist, Some(None));
        let u: UpdateNetworkRequest = serde_json::from_str(r#"{}"#).unwrap();
        assert_eq!(u.outbound_cidr_allowlist, None);
        let r: ReadinessProbe = serde_json::from_str(r#"{"tcp": 3000}"#).unwrap();
        assert_eq!(r, ReadinessProbe::Tcp(3000));
    }
}
