//! warren-server: the control plane behind `warren serve`.
//!
//! It serves the `/v1` HTTP API, authenticates bearer tokens against the
//! state store, keeps every sandbox's record (state, typed termination
//! reason) in the store, and drives the node. A supervisor task per sandbox
//! turns its exit into a record; a sweeper enforces `timeout_secs` and
//! `idle_timeout_secs` (terminating, or pausing with `on_idle: pause`).
//! Memory snapshots, fork, pause and resume are in `memory`.
//!
//! Must not: reach into `warren-sys` or the runtime's internals (it talks to
//! `warren-node`), leak internal error details to clients, or let another
//! workspace learn that a sandbox exists (404, never 403).

mod auth;
mod builds;
mod error;
mod execs;
mod files;
mod images;
mod logs;
mod memory;
mod metrics;
mod openapi;
mod readiness;
mod sandboxes;
mod snapshots;
mod stream;
mod supervisor;
mod tokens;
pub mod tunnels;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::{delete, get, patch, post, put};
use axum::Router;
use tokio::net::TcpListener;
use tracing::{info, warn};
use warren_node::Node;
use warren_store::Store;

pub use error::ApiError;

/// How `warren serve` is configured.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Image used when a create request names none.
    pub default_image: String,
    /// How often timeouts are checked.
    pub sweep_interval: Duration,
    /// The cgroup sub-tree this server's sandboxes live under; `None` = the
    /// runtime's default, derived from the data directory.
    pub cgroup_parent: Option<String>,
    /// Registry settings file (default registry, credentials, insecure
    /// registries; see docs/images.md). `None` = `<data_dir>/registries.json`
    /// when it exists, else anonymous HTTPS pulls from `docker.io`.
    pub registries: Option<PathBuf>,
    /// Sandbox networking (an interface, NAT, DNS and the egress policy);
    /// `None` = every sandbox has only `lo`.
    pub network: Option<warren_runtime::NetworkConfig>,
    /// Tunnels into sandboxes (`encrypted_ports`, `unencrypted_ports`).
    pub tunnels: TunnelsConfig,
    /// `NativeConfig::init_copy_dir` (`None`: the runtime's default).
    pub init_copy_dir: Option<PathBuf>,
}

/// Where this server's tunnels are served.
#[derive(Debug, Clone, Default)]
pub enum TunnelsConfig {
    /// No relay: creates that expose ports fail with `relay_unavailable`.
    #[default]
    Off,
    /// A relay inside this process (single machine). `token_key` and TLS
    /// default to this server's own (`<data_dir>/relay-secrets.json`,
    /// `<data_dir>/tls`) when left empty.
    Local(warren_relay::RelayConfig),
    /// A relay in its own process (`warren relay`): this node dials it.
    Remote(RemoteRelay),
}

/// A relay this node dials out to, and how clients reach it.
#[derive(Debug, Clone)]
pub struct RemoteRelay {
    /// `host:port` of the relay's link listener.
    pub link_addr: String,
    /// Name the relay's certificate must carry.
    pub server_name: String,
    /// PEM of the CA the relay's certificate chains to.
    pub ca_pem: String,
    /// The relay's public base domain, HTTPS port and raw TCP host, for URLs.
    pub base_domain: String,
    pub https_port: u16,
    pub raw_host: String,
    /// Relay ports this control plane assigns to `unencrypted_ports`.
    pub raw_port_range: (u16, u16),
}

impl ServerConfig {
    pub fn new(listen: SocketAddr, data_dir: impl Into<PathBuf>) -> Self {
        ServerConfig {
            listen,
            data_dir: data_dir.into(),
            default_image: "host".into(),
            sweep_interval: Duration::from_millis(250),
            cgroup_parent: None,
            registries: None,
            network: None,
            tunnels: TunnelsConfig::Off,
            init_copy_dir: None,
        }
    }
}

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub node: Node,
    pub default_image: Arc<str>,
    pub supervisor: supervisor::Supervisor,
    pub metrics: Arc<metrics::Metrics>,
    pub execs: Arc<execs::Registry>,
    /// Readiness of running sandboxes (shared with the supervisor).
    pub readiness: Arc<readiness::Readiness>,
    /// `None` when the server runs without a relay.
    pub tunnels: Option<Arc<tunnels::Tunnels>>,
    /// The in-process relay or the link to a remote one; stopped by
    /// [`AppState::shutdown`].
    pub relay: Arc<tokio::sync::Mutex<Option<RelayRuntime>>>,
}

/// The relay side this server runs.
pub enum RelayRuntime {
    Local(Arc<warren_relay::Relay>),
    Remote(Arc<warren_relay::NodeLink>),
}

impl AppState {
    /// Stops the relay (or the link to it). Sandboxes keep running.
    pub async fn shutdown(&self) {
        // Hooks hold only weak references, so these unwraps succeed unless
        // a hook runs right now; then it is retried briefly.
        let taken = self.relay.lock().await.take();
        match taken {
            Some(RelayRuntime::Local(mut r)) => {
                for _ in 0..100 {
                    match Arc::try_unwrap(r) {
                        Ok(r) => return r.shutdown().await,
                        Err(back) => r = back,
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                warn!("the relay is still in use; leaving it running");
            }
            Some(RelayRuntime::Remote(mut l)) => {
                for _ in 0..100 {
                    match Arc::try_unwrap(l) {
                        Ok(l) => return l.shutdown().await,
                        Err(back) => l = back,
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                warn!("the relay link is still in use; leaving it running");
            }
            None => {}
        }
    }

    /// The in-process relay's HTTPS address, when there is one.
    pub async fn relay_https_addr(&self) -> Option<SocketAddr> {
        match &*self.relay.lock().await {
            Some(RelayRuntime::Local(r)) => r.https_addr(),
            _ => None,
        }
    }
}

/// Errors that stop the server from starting.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("could not prepare the data directory {path}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not open the state store")]
    Store(#[from] warren_store::StoreError),
    #[error("could not open the image store")]
    Images(#[from] warren_image::ImageError),
    #[error("could not start the sandbox runtime")]
    Runtime(#[from] warren_runtime::RuntimeError),
    #[error("could not recover sandboxes")]
    Recover(#[from] warren_node::NodeError),
    #[error("could not load the registry settings {path}")]
    Registries {
        path: PathBuf,
        #[source]
        source: warren_registry::PullError,
    },
    #[error("could not listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the HTTP server failed")]
    Serve(#[source] std::io::Error),
    #[error("could not start the relay")]
    Relay(#[from] warren_relay::RelayError),
    #[error("could not start the link to the relay")]
    RelayLink(#[from] warren_relay::LinkError),
}

/// The API router over `state`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/openapi.json", get(openapi::serve))
        .route(
            "/v1/sandboxes",
            post(sandboxes::create).get(sandboxes::list),
        )
        .route("/v1/sandboxes/{id}", get(sandboxes::get_one))
        .route("/v1/sandboxes/{id}/tags", put(sandboxes::set_tags))
        .route("/v1/sandboxes/{id}/terminate", post(sandboxes::terminate))
        .route("/v1/sandboxes/{id}/wait", get(sandboxes::wait))
        .route("/v1/sandboxes/{id}/wait-ready", get(tunnels::wait_ready))
        .route("/v1/sandboxes/{id}/network", patch(tunnels::update_network))
        .route("/v1/sandboxes/{id}/tunnels", get(tunnels::list))
        .route(
            "/v1/sandboxes/{id}/connect-token",
            post(tunnels::create_token),
        )
        .route(
            "/v1/sandboxes/{id}/connect-tokens",
            get(tunnels::list_tokens),
        )
        .route(
            "/v1/sandboxes/{id}/connect-tokens/{token_id}",
            delete(tunnels::revoke_token),
        )
        .route("/v1/relay/routes/{id}", get(tunnels::relay_route))
        .route("/v1/relay/raw-routes", get(tunnels::relay_raw_routes))
        .route(
            "/v1/sandboxes/{id}/snapshot-filesystem",
            post(snapshots::snapshot_filesystem),
        )
        .route(
            "/v1/sandboxes/{id}/snapshot-directory",
            post(snapshots::snapshot_directory),
        )
        .route("/v1/sandboxes/{id}/mounts", post(snapshots::mount_image))
        .route(
            "/v1/sandboxes/{id}/snapshot-memory",
            post(memory::snapshot_memory),
        )
        .route("/v1/sandboxes/{id}/fork", post(memory::fork))
        .route("/v1/sandboxes/{id}/pause", post(memory::pause))
        .route("/v1/sandboxes/{id}/resume", post(memory::resume))
        .route("/v1/memory-snapshots", get(memory::list))
        .route(
            "/v1/memory-snapshots/{id}",
            get(memory::get_one).delete(memory::remove),
        )
        .route("/v1/sandboxes/{id}/exec", post(sandboxes::exec))
        .route("/v1/sandboxes/{id}/logs", get(logs::logs))
        .route("/v1/sandboxes/{id}/exec/stream", get(stream::exec_stream))
        .route(
            "/v1/sandboxes/{id}/execs",
            post(execs::start).get(execs::list),
        )
        .route(
            "/v1/sandboxes/{id}/execs/{exec_id}",
            get(execs::get_one).delete(execs::remove),
        )
        .route(
            "/v1/sandboxes/{id}/execs/{exec_id}/output",
            get(execs::output),
        )
        .route(
            "/v1/sandboxes/{id}/execs/{exec_id}/signal",
            post(execs::signal),
        )
        .route(
            "/v1/sandboxes/{id}/execs/{exec_id}/attach",
            get(execs::attach),
        )
        .route(
            "/v1/sandboxes/{id}/files",
            get(files::read).put(files::write).delete(files::remove),
        )
        .route("/v1/sandboxes/{id}/files/stat", get(files::stat))
        .route("/v1/sandboxes/{id}/files/list", get(files::list))
        .route("/v1/sandboxes/{id}/files/mkdir", post(files::mkdir))
        .route("/v1/sandboxes/{id}/files/rename", post(files::rename))
        .route("/v1/sandboxes/{id}/files/watch", get(files::watch))
        .route(
            "/v1/sandboxes/{id}/files/archive",
            get(files::download_archive).put(files::upload_archive),
        )
        .route("/v1/images", get(images::list))
        .route("/v1/images/pull", post(images::pull))
        .route("/v1/images/build", post(builds::build))
        .route("/v1/images/import", post(images::import))
        .route("/v1/images/gc", post(images::gc))
        .route(
            "/v1/images/{reference}",
            get(images::inspect).delete(images::remove),
        )
        .route("/v1/images/{reference}/export", get(images::export))
        .route("/v1/images/{reference}/push", post(images::push))
        .route(
            "/v1/workspaces",
            post(tokens::create_workspace).get(tokens::list_workspaces),
        )
        .route(
            "/v1/tokens",
            post(tokens::create_token).get(tokens::list_tokens),
        )
        .route("/v1/tokens/{id}/revoke", post(tokens::revoke_token))
        .route("/metrics", get(metrics::serve))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .with_state(state)
}

/// Opens the stores and the node, recovers sandboxes left by a previous
/// process, and returns the application state. Writes the admin token on
/// first start.
pub async fn open(cfg: &ServerConfig) -> Result<AppState, ServeError> {
    std::fs::create_dir_all(&cfg.data_dir).map_err(|source| ServeError::DataDir {
        path: cfg.data_dir.clone(),
        source,
    })?;
    let store = Store::open_sqlite(cfg.data_dir.join("warren.db")).await?;
    if let Some(admin) = store.bootstrap_admin().await? {
        let path = cfg.data_dir.join("admin-token");
        write_secret(&path, &admin.plaintext).map_err(|source| ServeError::DataDir {
            path: path.clone(),
            source,
        })?;
        info!(path = %path.display(), "created the default workspace and wrote the admin token");
    }
    let images = warren_image::ImageStore::open(cfg.data_dir.join("images"))?;
    let mut rt_cfg = warren_runtime::NativeConfig::new(cfg.data_dir.join("runtime"));
    if let Some(parent) = &cfg.cgroup_parent {
        rt_cfg.cgroup_parent = parent.clone();
    }
    rt_cfg.network = cfg.network.clone();
    if let Some(dir) = &cfg.init_copy_dir {
        rt_cfg.init_copy_dir = dir.clone();
    }
    let rt = warren_runtime::NativeRuntime::new(rt_cfg)?;
    let reg_path = cfg
        .registries
        .clone()
        .or_else(|| Some(cfg.data_dir.join("registries.json")).filter(|p| p.exists()));
    let registries = match &reg_path {
        Some(path) => warren_registry::RegistryConfig::load(path).map_err(|source| {
            ServeError::Registries {
                path: path.clone(),
                source,
            }
        })?,
        None => warren_registry::RegistryConfig::default(),
    };
    let node = Node::with_registries(rt, images, registries).map_err(ServeError::Recover)?;
    let supervisor = supervisor::Supervisor::new(
        store.clone(),
        node.clone(),
        cfg.data_dir.join("logs"),
        cfg.data_dir.join("memory-snapshots"),
    );
    supervisor
        .memory
        .prepare()
        .map_err(|source| ServeError::DataDir {
            path: cfg.data_dir.join("memory-snapshots"),
            source,
        })?;
    let readiness = supervisor.readiness().clone();
    let (tunnels, relay) = tunnels::start(cfg, &store, &node, &supervisor).await?;
    let state = AppState {
        store,
        node,
        default_image: cfg.default_image.as_str().into(),
        execs: supervisor.execs.clone(),
        supervisor,
        metrics: Arc::default(),
        readiness,
        tunnels,
        relay: Arc::new(tokio::sync::Mutex::new(relay)),
    };
    state.supervisor.recover().await?;
    Ok(state)
}

/// Runs the server until `shutdown` resolves. Sandboxes keep running after
/// the server stops; a later `run` re-adopts them.
pub async fn run(
    cfg: ServerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let state = open(&cfg).await?;
    let sweeper = state.supervisor.spawn_sweeper(cfg.sweep_interval);
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: cfg.listen,
            source,
        })?;
    info!(addr = %cfg.listen, "serving the Warren API");
    let app = router(state.clone());
    // Small answers (a 4 KiB file, an exec result) go out at once: without
    // TCP_NODELAY a response written in two segments can wait ~40 ms for
    // the client's delayed ACK.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY on an accepted connection");
        }
    });
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(ServeError::Serve);
    sweeper.abort();
    state.shutdown().await;
    if let Err(e) = &result {
        warn!(error = %e, "server stopped with an error");
    }
    result
}

pub(crate) fn write_secret(path: &std::path::Path, secret: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(secret.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()
}
