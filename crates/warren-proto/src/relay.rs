//! The relay's wire types: what the control plane tells the relay about
//! routes, the claims of a connect token, and the node ↔ relay link's
//! handshake and stream header.
//!
//! HTTP route source (relay in its own process):
//! - `GET {control_url}/v1/relay/routes/{sandbox_id}` with
//!   `Authorization: Bearer <relay secret>` → `200` [`Route`], or `404`
//!   when the control plane knows no such sandbox (the relay answers
//!   `sandbox_not_found`).
//! - `GET {control_url}/v1/relay/raw-routes` → `200` [`RawRoutes`].
//!
//! Link (node dials the relay, TLS, then these frames, then HTTP/2 with the
//! relay as the HTTP/2 *client*): see `docs/relay.md`.

use serde::{Deserialize, Serialize};

/// Version of the node ↔ relay link protocol ([`LinkHello::version`]).
pub const LINK_PROTOCOL_VERSION: u32 = 1;

/// Where a sandbox's tunnels go, as the control plane sees it now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub sandbox_id: String,
    /// The node that holds the sandbox (the id it authenticates its link with).
    pub node_id: String,
    pub state: RouteState,
    /// The readiness probe passed (true when the sandbox has no probe).
    pub ready: bool,
    /// Ports reachable through the HTTPS front.
    #[serde(default)]
    pub ports: Vec<PortRoute>,
    /// Token ids (`tid`) of revoked connect tokens of this sandbox that have
    /// not expired yet.
    #[serde(default)]
    pub revoked_tokens: Vec<String>,
}

impl Route {
    /// The HTTPS-front entry for `port`, when it is exposed.
    pub fn port(&self, port: u16) -> Option<&PortRoute> {
        self.ports.iter().find(|p| p.port == port)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteState {
    Running,
    /// Creating, paused, terminated, ...: the relay answers `sandbox_not_running`.
    Other,
}

/// One port of the HTTPS front.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortRoute {
    pub port: u16,
    pub protocol: PortProtocol,
    /// Admit only requests with a valid connect token for this port.
    #[serde(default)]
    pub require_token: bool,
}

/// What the relay speaks to the sandbox's port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PortProtocol {
    /// HTTP/1.1 (WebSocket upgrades pass through): `encrypted_ports`.
    Http1,
    /// HTTP/2 with prior knowledge (h2c): `h2_ports`.
    H2c,
}

/// A raw TCP port on the relay forwarding to a sandbox's port
/// (`unencrypted_ports`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub relay_port: u16,
    pub sandbox_id: String,
    pub port: u16,
}

/// Body of `GET /v1/relay/raw-routes`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoutes {
    pub routes: Vec<RawRoute>,
}

/// The signed claims of a connect token (`wct_<b64url(json)>.<b64url(mac)>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectTokenClaims {
    /// Token id, listed in [`Route::revoked_tokens`] once revoked.
    pub tid: String,
    /// Sandbox id.
    pub sid: String,
    pub port: u16,
    /// Expiry, unix seconds.
    pub exp: u64,
    /// User data, injected as `X-Warren-User-Data`.
    #[serde(default)]
    pub ud: String,
}

/// First frame on a new link, node → relay (length-prefixed JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkHello {
    pub version: u32,
    pub node_id: String,
    pub secret: String,
}

/// The relay's answer to [`LinkHello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkWelcome {
    /// `None`: accepted; then the relay starts HTTP/2 on the connection.
    #[serde(default)]
    pub error: Option<String>,
}

/// What a link stream carries (header `warren-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamMode {
    /// Raw TCP front.
    Tcp,
    /// HTTPS front (HTTP/1.1 or h2c spoken inside the stream).
    Http,
}

impl StreamMode {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamMode::Tcp => "tcp",
            StreamMode::Http => "http",
        }
    }

    pub fn parse(s: &str) -> Option<StreamMode> {
        match s {
            "tcp" => Some(StreamMode::Tcp),
            "http" => Some(StreamMode::Http),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_json_shape() {
        let r: Route = serde_json::from_str(
            r#"{"sandbox_id":"sb-a","node_id":"n1","state":"running","ready":true,
                "ports":[{"port":8000,"protocol":"http1","require_token":true},
                         {"port":9000,"protocol":"h2c"}],
                "revoked_tokens":["t1"]}"#,
        )
        .unwrap();
        assert_eq!(r.port(9000).unwrap().protocol, PortProtocol::H2c);
        assert!(!r.port(9000).unwrap().require_token);
        assert!(r.port(1).is_none());
        assert!(serde_json::from_str::<Route>(
            r#"{"sandbox_id":"x","node_id":"n","state":"other","ready":false,"bogus":1}"#
        )
        .is_err());
    }
}
