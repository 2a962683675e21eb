//! warren-relay: tunnels into sandboxes.
//!
//! - An HTTPS front (rustls; ALPN h2 and http/1.1) routing each request by
//!   its Host, `<sandbox-id>-<port>.<base_domain>`, to a pooled upstream
//!   connection (HTTP/1.1 with WebSocket upgrades passed through, or h2c),
//!   with connect tokens and clean error pages ([`pages::ErrorCode`]).
//! - A raw TCP front: one relay port per raw route, bytes both ways.
//! - The node ↔ relay link ([`link`]): nodes dial out (TLS + HTTP/2, one
//!   stream per tunnel connection) and reconnect with backoff; or the
//!   in-process link when relay and node share a process.
//! - Routes from a [`RouteSource`] behind a short-TTL [`RouteCache`].
//! - TLS material: a generated CA + wildcard leaf ([`ensure_ca`]) or
//!   operator files.
//!
//! What it must not do: depend on the server or the node crates; connect
//! anywhere but to a node (every stream into a sandbox is opened by the
//! node's [`TunnelTarget`], which only reaches the sandbox's own
//! namespace); show internal errors to clients; wait on the network
//! without a bound (see [`config::Timeouts`]).
//!
//! Invariants: a request reaches a sandbox port only if the route says
//! the sandbox is running, ready and exposes that port, and (when the port
//! requires it) a token signed with the relay's key, for that sandbox and
//! port, unexpired and unrevoked, came with it; the `X-Warren-User-Data`
//! the upstream sees is always the verified one.

#![forbid(unsafe_code)]

pub mod config;
pub mod copy;
pub mod dialer;
pub mod https;
pub mod link;
pub mod pages;
mod raw;
mod relay;
pub mod route;
pub mod splice;
pub mod target;
pub mod tls;
pub mod token;

pub use config::{
    CacheConfig, PortRange, RelayConfig, Timeouts, DEFAULT_BASE_DOMAIN, DEFAULT_MAX_CONNECTIONS,
};
pub use dialer::DialError;
pub use link::node::{LinkState, NodeLink, NodeLinkConfig};
pub use link::LinkError;
pub use pages::ErrorCode;
pub use relay::{Relay, RelayError};
pub use route::{HttpRouteSource, RouteCache, RouteError, RouteSource, StaticRoutes};
pub use target::{AsyncReadWrite, BoxStream, Guarded, LoopbackTarget, OpenError, TunnelTarget};
pub use tls::{ensure_ca, fingerprint, load_tls, TlsError, TlsMaterial, TlsSource};
pub use token::{check_token, mint_token, verify_token, ConnectTokenClaims, TokenError};
pub use warren_proto::relay::{
    PortProtocol, PortRoute, RawRoute, RawRoutes, Route, RouteState, StreamMode,
};

/// Runs a relay until `shutdown` completes (for `warren relay`).
pub async fn run(
    config: RelayConfig,
    routes: std::sync::Arc<dyn RouteSource>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), RelayError> {
    let relay = Relay::start(config, routes).await?;
    shutdown.await;
    relay.shutdown().await;
    Ok(())
}
