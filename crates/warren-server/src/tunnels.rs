//! Tunnels: the control plane's side of the relay.
//!
//! - The API: `GET .../tunnels`, connect tokens (mint, list, revoke),
//!   `GET .../wait-ready`, `PATCH .../network`.
//! - The relay's route source: in-process ([`StoreRoutes`]) or over HTTP
//!   (`GET /v1/relay/routes/{id}`, `GET /v1/relay/raw-routes`, with the
//!   relay secret).
//! - The node's tunnel target ([`NodeTarget`]): opens `127.0.0.1:<port>`
//!   inside the sandbox's network namespace, and counts each open tunnel
//!   connection as activity for `idle_timeout_secs`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use tracing::warn;
use warren_proto::api::{self, ErrorCode};
use warren_proto::relay::{PortProtocol, PortRoute, RawRoute, RawRoutes, Route, RouteState};
use warren_relay::{BoxStream, OpenError, RouteError, RouteSource, TunnelTarget};
use warren_runtime::SandboxId;
use warren_store::{ConnectTokenRecord, PortKind, SandboxState, Store};

use crate::auth::Auth;
use crate::readiness::Readiness;
use crate::sandboxes::{body, load, running, to_iso};
use crate::supervisor::Supervisor;
use crate::{ApiError, AppState};

/// What the API needs to know about the relay serving this server's
/// sandboxes.
pub struct Tunnels {
    /// Hosts are `<sandbox-id>-<port>.<base_domain>`.
    pub base_domain: String,
    /// The HTTPS port clients use (443 is left out of URLs).
    pub https_port: u16,
    /// Host clients use for raw TCP ports.
    pub raw_host: String,
    /// Relay ports assigned to `unencrypted_ports`.
    pub raw_port_range: (u16, u16),
    /// Connect tokens' HMAC key, shared with the relay.
    pub token_key: Vec<u8>,
    /// Bearer secret of the relay's route requests.
    pub relay_secret: String,
    pub ca_fingerprint: Option<String>,
    pub ca_pem: Option<String>,
    /// Whether the relay is up (in-process: always; remote: link state).
    pub connected: Arc<dyn Fn() -> bool + Send + Sync>,
    /// The in-process relay: its cached routes are dropped when a sandbox
    /// ends, becomes ready or has a token revoked, and a new sandbox's raw
    /// ports open at once (a remote relay catches up within its cache TTL
    /// and sync period).
    pub local_relay: Option<std::sync::Weak<warren_relay::Relay>>,
}

impl Tunnels {
    fn host(&self, sandbox_id: &str, port: u16) -> String {
        format!("{sandbox_id}-{port}.{}", self.base_domain)
    }

    fn url(&self, sandbox_id: &str, port: u16) -> String {
        let host = self.host(sandbox_id, port);
        if self.https_port == 443 {
            format!("https://{host}")
        } else {
            format!("https://{host}:{}", self.https_port)
        }
    }

    pub fn invalidate(&self, sandbox_id: &str) {
        if let Some(r) = self.local_relay.as_ref().and_then(std::sync::Weak::upgrade) {
            r.invalidate(sandbox_id);
        }
    }

    /// Makes the in-process relay listen on newly assigned raw ports now.
    pub async fn resync(&self) {
        let relay = self.local_relay.as_ref().and_then(std::sync::Weak::upgrade);
        if let Some(r) = relay {
            if let Err(e) = r.resync().await {
                warn!(error = %e, "relay resync failed; raw ports open at the next sync");
            }
        }
    }
}

fn tunnels_of(state: &AppState) -> Result<&Arc<Tunnels>, ApiError> {
    state.tunnels.as_ref().ok_or_else(|| {
        ApiError::new(
            ErrorCode::RelayUnavailable,
            "this server runs without a relay (start it with tunnels enabled)",
        )
    })
}

/// `GET /v1/sandboxes/{id}/tunnels`
#[utoipa::path(get, path = "/v1/sandboxes/{id}/tunnels", tag = "tunnels", params(("id" = String, Path, description = "Sandbox id")),
    responses((status = 200, description = "Every exposed port's endpoints", body = api::TunnelList), (status = 404, description = "sandbox_not_found", body = api::ErrorBody),
        (status = 503, description = "relay_unavailable", body = api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<api::TunnelList>, ApiError> {
    let rec = load(&state, &auth, &id).await?;
    let t = tunnels_of(&state)?;
    let relay_ports = state.store.relay_ports_of(&id).await?;
    let tunnels = rec
        .spec
        .network
        .ports
        .iter()
        .map(|p| match p.kind {
            PortKind::Https | PortKind::H2 => api::Tunnel {
                port: p.port,
                kind: if p.kind == PortKind::Https {
                    api::TunnelKind::Https
                } else {
                    api::TunnelKind::H2
                },
                url: Some(t.url(&id, p.port)),
                host: t.host(&id, p.port),
                tls: Some(api::Endpoint {
                    host: t.host(&id, p.port),
                    port: t.https_port,
                }),
                raw: None,
                require_token: p.require_token,
            },
            PortKind::Tcp => api::Tunnel {
                port: p.port,
                kind: api::TunnelKind::Tcp,
                url: None,
                host: t.raw_host.clone(),
                tls: None,
                raw: relay_ports
                    .iter()
                    .find(|r| r.port == p.port)
                    .map(|r| api::Endpoint {
                        host: t.raw_host.clone(),
                        port: r.relay_port,
                    }),
                require_token: false,
            },
        })
        .collect();
    Ok(Json(api::TunnelList {
        tunnels,
        ca_fingerprint: t.ca_fingerprint.clone(),
        ca_pem: t.ca_pem.clone(),
        relay_connected: (t.connected)(),
    }))
}

fn new_connect_token_id() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut rng = rand::rng();
    let tail: String = (0..20)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect();
    format!("ct-{tail}")
}

/// `POST /v1/sandboxes/{id}/connect-token`
#[utoipa::path(post, path = "/v1/sandboxes/{id}/connect-token", tag = "tunnels", params(("id" = String, Path, description = "Sandbox id")), request_body = api::ConnectTokenRequest,
    responses((status = 201, description = "The token (shown once) and a URL that carries it", body = api::ConnectToken), (status = 400, description = "invalid_argument / port_not_exposed", body = api::ErrorBody),
        (status = 404, description = "sandbox_not_found", body = api::ErrorBody), (status = 409, description = "sandbox_terminated", body = api::ErrorBody), (status = 503, description = "relay_unavailable", body = api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_token(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    req: Result<Json<api::ConnectTokenRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<api::ConnectToken>), ApiError> {
    let req = body(req)?;
    api::validate_connect_token(&req).map_err(ApiError::invalid)?;
    let rec = load(&state, &auth, &id).await?;
    if rec.state == SandboxState::Terminated {
        return Err(ApiError::new(
            ErrorCode::SandboxTerminated,
            format!("sandbox {id} has ended"),
        ));
    }
    let t = tunnels_of(&state)?;
    let exposed = rec
        .spec
        .network
        .ports
        .iter()
        .any(|p| p.port == req.port && p.kind != PortKind::Tcp);
    if !exposed {
        return Err(ApiError::new(
            ErrorCode::PortNotExposed,
            format!(
                "port {} is not one of the sandbox's encrypted_ports or h2_ports",
                req.port
            ),
        ));
    }
    let ttl = req.ttl_secs.unwrap_or(api::DEFAULT_CONNECT_TOKEN_TTL_SECS);
    let now_ms = crate::supervisor::now_ms();
    let exp_ms = now_ms + (ttl as i64) * 1000;
    let tid = new_connect_token_id();
    let claims = warren_proto::relay::ConnectTokenClaims {
        tid: tid.clone(),
        sid: id.clone(),
        port: req.port,
        exp: (exp_ms / 1000) as u64,
        ud: req.user_data.clone().unwrap_or_default(),
    };
    state
        .store
        .insert_connect_token(&ConnectTokenRecord {
            id: tid.clone(),
            sandbox_id: id.clone(),
            workspace_id: auth.0.workspace_id.clone(),
            port: req.port,
            created_at: now_ms,
            expires_at: exp_ms,
            revoked_at: None,
        })
        .await?;
    let token = warren_relay::mint_token(&t.token_key, &claims);
    let url = format!(
        "{}/?{}={}",
        t.url(&id, req.port),
        warren_relay::https::TOKEN_PARAM,
        token
    );
    Ok((
        StatusCode::CREATED,
        Json(api::ConnectToken {
            token_id: tid,
            token,
            port: req.port,
            url,
            expires_at: to_iso(exp_ms),
        }),
    ))
}

/// `GET /v1/sandboxes/{id}/connect-tokens`
#[utoipa::path(get, path = "/v1/sandboxes/{id}/connect-tokens", tag = "tunnels", params(("id" = String, Path, description = "Sandbox id")),
    responses((status = 200, description = "The sandbox's tokens (metadata only)", body = api::ConnectTokenList), (status = 404, description = "sandbox_not_found", body = api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_tokens(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<api::ConnectTokenList>, ApiError> {
    load(&state, &auth, &id).await?;
    let tokens = state
        .store
        .list_connect_tokens(&auth.0.workspace_id, &id)
        .await?
        .into_iter()
        .map(|t| api::ConnectTokenInfo {
            token_id: t.id,
            port: t.port,
            created_at: to_iso(t.created_at),
            expires_at: to_iso(t.expires_at),
            revoked_at: t.revoked_at.map(to_iso),
        })
        .collect();
    Ok(Json(api::ConnectTokenList { tokens }))
}

/// `DELETE /v1/sandboxes/{id}/connect-tokens/{token_id}`
#[utoipa::path(delete, path = "/v1/sandboxes/{id}/connect-tokens/{token_id}", tag = "tunnels",
    params(("id" = String, Path, description = "Sandbox id"), ("token_id" = String, Path, description = "Connect token id")),
    responses((status = 204, description = "Revoked; the relay refuses it from now on"), (status = 404, description = "sandbox_not_found / not_found", body = api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn revoke_token(
    State(state): State<AppState>,
    auth: Auth,
    Path((id, token_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    load(&state, &auth, &id).await?;
    let found = state
        .store
        .revoke_connect_token(&auth.0.workspace_id, &id, &token_id)
        .await?;
    if !found {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("connect token {token_id} not found"),
        ));
    }
    if let Some(t) = &state.tunnels {
        t.invalidate(&id);
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitReadyQuery {
    timeout_secs: Option<u64>,
}

/// Longest a single wait-ready request holds the connection.
const MAX_WAIT_READY_SECS: u64 = 300;

/// `GET /v1/sandboxes/{id}/wait-ready?timeout_secs=N`
#[utoipa::path(get, path = "/v1/sandboxes/{id}/wait-ready", tag = "tunnels",
    params(("id" = String, Path, description = "Sandbox id"), ("timeout_secs" = Option<u64>, Query, description = "At most 300 (default 30)")),
    responses((status = 200, description = "The readiness probe passed", body = api::ReadyStatus), (status = 408, description = "not_ready: the timeout passed first", body = api::ErrorBody),
        (status = 404, description = "sandbox_not_found", body = api::ErrorBody), (status = 409, description = "sandbox_terminated", body = api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn wait_ready(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    Query(q): Query<WaitReadyQuery>,
) -> Result<Json<api::ReadyStatus>, ApiError> {
    let secs = q.timeout_secs.unwrap_or(30);
    if secs > MAX_WAIT_READY_SECS {
        return Err(ApiError::invalid(format!(
            "timeout_secs must be at most {MAX_WAIT_READY_SECS}"
        )));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let rec = load(&state, &auth, &id).await?;
        match rec.state {
            SandboxState::Running => {}
            SandboxState::Creating => {
                // Not tracked yet; look again shortly.
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            _ => {
                return Err(ApiError::new(
                    ErrorCode::SandboxTerminated,
                    format!("sandbox {id} has ended"),
                ))
            }
        }
        match state.readiness.wait(&id, deadline).await {
            Some(true) => return Ok(Json(api::ReadyStatus { ready: true })),
            // No longer tracked: it ended (or is ending); the next round
            // reports that.
            Some(false) => {
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            None => break,
        }
    }
    Err(ApiError::new(
        ErrorCode::NotReady,
        format!("sandbox {id} did not become ready within {secs} s"),
    ))
}

/// `PATCH /v1/sandboxes/{id}/network`
#[utoipa::path(patch, path = "/v1/sandboxes/{id}/network", tag = "sandboxes", params(("id" = String, Path, description = "Sandbox id")), request_body = api::UpdateNetworkRequest,
    responses((status = 200, description = "The sandbox with its new policy in force", body = api::Sandbox), (status = 400, description = "invalid_argument", body = api::ErrorBody),
        (status = 404, description = "sandbox_not_found", body = api::ErrorBody), (status = 409, description = "sandbox_terminated / network_unavailable", body = api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn update_network(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    req: Result<Json<api::UpdateNetworkRequest>, JsonRejection>,
) -> Result<Json<api::Sandbox>, ApiError> {
    let req = body(req)?;
    let rec = running(&state, &auth, &id).await?;
    let cur = &rec.spec.network;
    let block = req.block_network.unwrap_or(cur.block_network);
    let allow = match req.outbound_cidr_allowlist {
        Some(v) => v,
        None => cur.outbound_cidr_allowlist.clone(),
    };
    if let Some(list) = &allow {
        if block {
            return Err(ApiError::invalid(
                "block_network and outbound_cidr_allowlist exclude each other",
            ));
        }
        api::validate_allowlist(list).map_err(ApiError::invalid)?;
    }
    let sid = SandboxId::new(id.clone()).map_err(|e| ApiError::internal("sandbox id", &e))?;
    state.node.set_egress(&sid, block, allow.as_deref()).await?;
    state
        .store
        .update_network(&auth.0.workspace_id, &id, block, allow)
        .await?
        .ok_or_else(|| ApiError::not_found(&id))?;
    let rec = load(&state, &auth, &id).await?;
    Ok(Json(crate::sandboxes::to_api(&state, &rec)))
}

/// The in-process relay's route source: the store plus readiness.
pub struct StoreRoutes {
    pub store: Store,
    pub readiness: Arc<Readiness>,
}

#[async_trait]
impl RouteSource for StoreRoutes {
    async fn route(&self, sandbox_id: &str) -> Result<Option<Route>, RouteError> {
        route_of(&self.store, &self.readiness, sandbox_id)
            .await
            .map_err(|e| RouteError::Unavailable(e.to_string()))
    }

    async fn raw_routes(&self) -> Result<Vec<RawRoute>, RouteError> {
        raw_routes_of(&self.store)
            .await
            .map_err(|e| RouteError::Unavailable(e.to_string()))
    }
}

async fn route_of(
    store: &Store,
    readiness: &Readiness,
    sandbox_id: &str,
) -> Result<Option<Route>, warren_store::StoreError> {
    let Some(rec) = store.get_sandbox_unscoped(sandbox_id).await? else {
        return Ok(None);
    };
    // A paused sandbox with auto_resume takes connections: the target
    // resumes it while the connection waits.
    let resumable = rec.state == SandboxState::Paused && rec.spec.auto_resume;
    let running = rec.state == SandboxState::Running || resumable;
    let revoked_tokens = if running {
        store.revoked_connect_tokens(sandbox_id).await?
    } else {
        Vec::new()
    };
    Ok(Some(Route {
        sandbox_id: rec.id.clone(),
        node_id: rec.node_id.clone(),
        state: if running {
            RouteState::Running
        } else {
            RouteState::Other
        },
        ready: resumable || (running && readiness.is_ready(sandbox_id)),
        ports: rec
            .spec
            .network
            .ports
            .iter()
            .filter_map(|p| {
                let protocol = match p.kind {
                    PortKind::Https => PortProtocol::Http1,
                    PortKind::H2 => PortProtocol::H2c,
                    PortKind::Tcp => return None,
                };
                Some(PortRoute {
                    port: p.port,
                    protocol,
                    require_token: p.require_token,
                })
            })
            .collect(),
        revoked_tokens,
    }))
}

async fn raw_routes_of(store: &Store) -> Result<Vec<RawRoute>, warren_store::StoreError> {
    Ok(store
        .live_relay_ports()
        .await?
        .into_iter()
        .map(|r| RawRoute {
            relay_port: r.relay_port,
            sandbox_id: r.sandbox_id,
            port: r.port,
        })
        .collect())
}

/// Checks the relay's bearer secret (constant time).
fn relay_auth(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let t = tunnels_of(state)?;
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let ok = !t.relay_secret.is_empty()
        && given.len() == t.relay_secret.len()
        && given
            .bytes()
            .zip(t.relay_secret.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::Unauthenticated,
            "the relay secret is missing or wrong",
        ))
    }
}

/// `GET /v1/relay/routes/{id}` (relay secret): a relay in its own process
/// asks where a sandbox's tunnels go.
pub async fn relay_route(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Route>, ApiError> {
    relay_auth(&state, &headers)?;
    match route_of(&state.store, &state.readiness, &id).await? {
        Some(r) => Ok(Json(r)),
        None => Err(ApiError::not_found(&id)),
    }
}

/// `GET /v1/relay/raw-routes` (relay secret).
pub async fn relay_raw_routes(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<RawRoutes>, ApiError> {
    relay_auth(&state, &headers)?;
    Ok(Json(RawRoutes {
        routes: raw_routes_of(&state.store).await?,
    }))
}

/// The node's tunnel target: dials into the sandbox and marks it active
/// while the connection is open.
pub struct NodeTarget {
    pub node: warren_node::Node,
    pub supervisor: Supervisor,
}

#[async_trait]
impl TunnelTarget for NodeTarget {
    async fn open(&self, sandbox: &str, port: u16) -> Result<BoxStream, OpenError> {
        let id = SandboxId::new(sandbox.to_string()).map_err(|_| OpenError::NotFound)?;
        // A paused sandbox with auto_resume is resumed first; the
        // connection waits for it.
        if let Err(e) = self.supervisor.auto_resume(sandbox).await {
            warn!(sandbox_id = sandbox, code = e.code.as_str(), error = %e.message, "resuming for a tunnel connection failed");
            return Err(match e.code {
                ErrorCode::SandboxPaused | ErrorCode::SandboxTerminated => OpenError::NotRunning,
                ErrorCode::SandboxNotFound => OpenError::NotFound,
                _ => OpenError::Internal(e.message),
            });
        }
        let stream = match self.node.dial(&id, port).await {
            Ok(s) => s,
            Err(e) => {
                return Err(match e.code() {
                    "not_found" | "sandbox_not_found" => OpenError::NotFound,
                    "sandbox_not_running" => OpenError::NotRunning,
                    _ if matches!(&e, warren_node::NodeError::Io(_)) => OpenError::Refused,
                    _ => {
                        warn!(sandbox_id = sandbox, error = %e, "opening a tunnel failed");
                        OpenError::Internal(e.to_string())
                    }
                })
            }
        };
        let _ = stream.set_nodelay(true);
        // The guard marks the sandbox active until the connection closes.
        let guard = self.supervisor.busy(sandbox);
        Ok(Box::new(warren_relay::Guarded::new(stream, guard)))
    }
}

/// SHA-256 (hex) of the first certificate in `pem`.
fn pem_fingerprint(pem: &str) -> Option<String> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()?
        .ok()?;
    Some(warren_relay::fingerprint(&der))
}

/// Secrets shared between this control plane and its relay, made at first
/// start (`<data_dir>/relay-secrets.json`, mode 0600). Copy the file to a
/// relay that runs in its own process.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelaySecrets {
    /// HMAC key of connect tokens.
    pub token_key: String,
    /// Bearer secret the relay shows when it asks for routes.
    pub relay_secret: String,
    /// Secret this node's link shows the relay.
    pub node_secret: String,
}

impl RelaySecrets {
    /// Reads the file, creating it with fresh secrets when missing.
    pub fn load_or_create(path: &std::path::Path) -> std::io::Result<RelaySecrets> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let secrets = RelaySecrets {
                    token_key: random_secret(),
                    relay_secret: random_secret(),
                    node_secret: random_secret(),
                };
                let json = serde_json::to_string_pretty(&secrets).expect("secrets serialize");
                crate::write_secret(path, &json)?;
                Ok(secrets)
            }
            Err(e) => Err(e),
        }
    }
}

/// 256 random bits, URL-safe base64.
fn random_secret() -> String {
    use base64::Engine;
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Starts the relay side the config asks for: an in-process relay, or the
/// link to a remote one.
pub(crate) async fn start(
    cfg: &crate::ServerConfig,
    store: &Store,
    node: &warren_node::Node,
    supervisor: &Supervisor,
) -> Result<(Option<Arc<Tunnels>>, Option<crate::RelayRuntime>), crate::ServeError> {
    use crate::{RelayRuntime, ServeError, TunnelsConfig};
    if matches!(cfg.tunnels, TunnelsConfig::Off) {
        return Ok((None, None));
    }
    let secrets_path = cfg.data_dir.join("relay-secrets.json");
    let secrets =
        RelaySecrets::load_or_create(&secrets_path).map_err(|source| ServeError::DataDir {
            path: secrets_path.clone(),
            source,
        })?;
    let target: Arc<dyn TunnelTarget> = Arc::new(NodeTarget {
        node: node.clone(),
        supervisor: supervisor.clone(),
    });
    match &cfg.tunnels {
        TunnelsConfig::Off => Ok((None, None)),
        TunnelsConfig::Local(relay_cfg) => {
            let mut relay_cfg = relay_cfg.clone();
            if relay_cfg.token_key.is_empty() {
                relay_cfg.token_key = secrets.token_key.clone();
            }
            relay_cfg
                .node_secrets
                .entry(warren_store::LOCAL_NODE_ID.to_string())
                .or_insert_with(|| secrets.node_secret.clone());
            let routes: Arc<dyn RouteSource> = Arc::new(StoreRoutes {
                store: store.clone(),
                readiness: supervisor.readiness().clone(),
            });
            let relay = Arc::new(warren_relay::Relay::start(relay_cfg.clone(), routes).await?);
            relay.attach_local_node(warren_store::LOCAL_NODE_ID, target);
            let https_port = relay.https_addr().map(|a| a.port()).unwrap_or(443);
            let tls = relay.tls();
            tracing::info!(
                https = ?relay.https_addr(),
                ca = ?tls.ca_path,
                ca_sha256 = %tls.ca_fingerprint,
                "relay started in-process; clients trust the CA above",
            );
            let generated = matches!(relay_cfg.tls, warren_relay::TlsSource::Generated { .. });
            let weak = Arc::downgrade(&relay);
            let handle: crate::supervisor::EndHook = Arc::new(move |id: &str| {
                if let Some(r) = weak.upgrade() {
                    r.invalidate(id);
                }
            });
            let tunnels = Tunnels {
                base_domain: relay_cfg.base_domain.clone(),
                https_port,
                raw_host: relay_cfg.raw_bind.to_string(),
                raw_port_range: (relay_cfg.raw_port_range.start, relay_cfg.raw_port_range.end),
                token_key: relay_cfg.token_key.as_bytes().to_vec(),
                relay_secret: secrets.relay_secret.clone(),
                ca_fingerprint: Some(tls.ca_fingerprint.clone()),
                ca_pem: generated.then(|| tls.ca_pem.clone()),
                connected: Arc::new(|| true),
                local_relay: Some(Arc::downgrade(&relay)),
            };
            supervisor.set_on_end(handle.clone());
            supervisor.readiness().set_on_ready(handle);
            Ok((Some(Arc::new(tunnels)), Some(RelayRuntime::Local(relay))))
        }
        TunnelsConfig::Remote(remote) => {
            let link = warren_relay::NodeLink::spawn(
                warren_relay::NodeLinkConfig {
                    relay_addr: remote.link_addr.clone(),
                    server_name: remote.server_name.clone(),
                    ca_pem: remote.ca_pem.clone(),
                    node_id: warren_store::LOCAL_NODE_ID.to_string(),
                    secret: secrets.node_secret.clone(),
                    handshake_timeout_ms: 10_000,
                    open_timeout_ms: 10_000,
                },
                target,
            )?;
            let link = Arc::new(link);
            let weak = Arc::downgrade(&link);
            let tunnels = Tunnels {
                base_domain: remote.base_domain.clone(),
                https_port: remote.https_port,
                raw_host: remote.raw_host.clone(),
                raw_port_range: remote.raw_port_range,
                token_key: secrets.token_key.as_bytes().to_vec(),
                relay_secret: secrets.relay_secret.clone(),
                ca_fingerprint: pem_fingerprint(&remote.ca_pem),
                ca_pem: Some(remote.ca_pem.clone()),
                connected: Arc::new(move || weak.upgrade().is_some_and(|l| l.is_connected())),
                local_relay: None,
            };
            Ok((Some(Arc::new(tunnels)), Some(RelayRuntime::Remote(link))))
        }
    }
}
