//! warren-node: the per-machine agent. It turns the blocking, fd-level
//! `Runtime` into an async service the control plane calls: images are
//! resolved to root filesystems, blocking work runs on tokio's blocking
//! pool, and sandbox exits are awaited on the event loop (pidfds), so
//! thousands of running sandboxes cost no threads.
//!
//! Must not: know about workspaces, tokens or the database (that is the
//! server's); outlive a `destroy` with any resource.

mod exec;
pub mod fs;
mod memory;
mod pin;
mod push;
mod snapshot;
pub mod user;

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use tracing::info_span;
use warren_image::ImageStore;
use warren_registry::{Credentials, PullError, PullEvent, PullOptions, Puller, RegistryConfig};
use warren_runtime::{
    BindMount, Limits, MainIo, NativeRuntime, Recovered, RootfsSpec, Runtime, RuntimeError,
    SandboxExit, SandboxId, SandboxInfo, SandboxSpec,
};

pub use exec::{BufferedExec, ExecOutput, MAX_BUFFERED_OUTPUT};
pub use memory::CheckpointOutcome;
pub use pin::ImagePin;
pub use snapshot::{ImageMountRequest, SnapshotOutcome};

/// Errors from the node, with stable codes.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("image {reference:?}")]
    Image {
        reference: String,
        #[source]
        source: warren_image::ImageError,
    },
    #[error("pulling {reference:?}: {source}")]
    Pull {
        reference: String,
        #[source]
        source: PullError,
    },
    #[error("user {spec:?}: {reason}")]
    User { spec: String, reason: String },
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("a background task failed")]
    Join(#[from] tokio::task::JoinError),
    #[error("i/o on the sandbox's streams")]
    Io(#[from] std::io::Error),
    /// A file operation failed inside the sandbox (see [`fs`]).
    #[error("{code}: {message}")]
    Fs {
        code: fs::FsErrorCode,
        message: String,
    },
    /// The sandbox's file agent misbehaved or died.
    #[error("file agent: {reason}")]
    FsAgent { reason: String },
    /// The sandbox has no network interface to open (created with
    /// `block_network`, or the node runs without networking).
    #[error("the sandbox has no network interface (created with block_network, or the node has networking off)")]
    NetworkUnavailable,
    /// A snapshot could not be taken (see the message).
    #[error("snapshot failed: {reason}")]
    SnapshotFailed { reason: String },
    /// A path inside the sandbox is unusable (not absolute, `..`, not a
    /// directory, on /proc or /sys, ...).
    #[error("invalid path: {reason}")]
    InvalidPath { reason: String },
}

impl NodeError {
    /// Stable error code (`image_not_found`, runtime codes, `internal`).
    pub fn code(&self) -> &str {
        match self {
            NodeError::Image { source, .. } => source.code(),
            NodeError::Pull { source, .. } => source.code(),
            NodeError::User { .. } => "invalid_user",
            NodeError::Runtime(e) => e.code(),
            NodeError::Join(_) | NodeError::Io(_) => "internal",
            NodeError::Fs { code, .. } => code.as_str(),
            NodeError::FsAgent { .. } => "fs_agent_failed",
            NodeError::NetworkUnavailable => "network_unavailable",
            NodeError::SnapshotFailed { .. } => "snapshot_failed",
            NodeError::InvalidPath { .. } => "invalid_path",
        }
    }
}

/// What the control plane asks the node to create.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    pub id: SandboxId,
    pub image: String,
    pub command: Option<Vec<String>>,
    /// `KEY=VALUE` entries layered over the image's environment.
    pub env: Vec<String>,
    pub workdir: Option<String>,
    /// User of the main command (see [`user::resolve`]); the image's when
    /// `None`.
    pub user: Option<String>,
    /// Run the image's `Entrypoint` + `Cmd` when `command` is `None`
    /// (otherwise a command-less sandbox idles).
    pub use_image_command: bool,
    pub limits: Limits,
    /// Capture the main command's output into a ring of this many bytes.
    pub log_capacity: Option<u64>,
    pub network: NetworkRequest,
}

/// A sandbox's network as the control plane asks for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkRequest {
    /// Only `lo`.
    pub block_network: bool,
    /// Only these destinations (validated CIDRs or addresses).
    pub outbound_cidr_allowlist: Option<Vec<String>>,
}

/// The runtime's egress policy for a (validated) request.
fn egress_policy(
    block: bool,
    allowlist: Option<&[String]>,
) -> Result<warren_runtime::EgressPolicy, NodeError> {
    if block {
        return Ok(warren_runtime::EgressPolicy::Blocked);
    }
    match allowlist {
        None => Ok(warren_runtime::EgressPolicy::Default),
        Some(list) => list
            .iter()
            .map(|s| {
                let (ip, len) = warren_proto::api::parse_cidr(s).map_err(|reason| {
                    NodeError::Runtime(RuntimeError::InvalidSpec {
                        field: "outbound_cidr_allowlist",
                        reason,
                    })
                })?;
                Ok(ipnet::IpNet::new(ip, len).expect("parse_cidr checked the prefix length"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(warren_runtime::EgressPolicy::Allowlist),
    }
}

/// How long a resolved image reference is reused without asking the store
/// again (a re-tagged name is seen at most this late).
const IMAGE_CACHE_TTL: Duration = Duration::from_secs(2);

type ImageCache =
    std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, warren_image::Image)>>;

/// The per-machine agent.
#[derive(Clone)]
pub struct Node {
    rt: Arc<NativeRuntime>,
    images: Arc<ImageStore>,
    image_cache: Arc<ImageCache>,
    puller: Puller,
    /// Image id of every sandbox this node runs (or is creating). Creates
    /// add to it and image removal and GC read it under the same lock, so
    /// an image cannot disappear between its resolution and its use.
    in_use: Arc<std::sync::Mutex<std::collections::HashMap<SandboxId, String>>>,
    /// Per-sandbox pools of file agents (see [`fs`]).
    fs: Arc<fs::FsPools>,
    /// Image ids mounted into each sandbox (see [`Node::mount_image`]);
    /// only changed while `in_use` is locked, and part of the in-use set.
    mounted: Arc<std::sync::Mutex<std::collections::HashMap<SandboxId, Vec<String>>>>,
}

impl Node {
    /// A node with the default registry settings (anonymous pulls from
    /// `docker.io`, HTTPS only).
    pub fn new(rt: NativeRuntime, images: ImageStore) -> Result<Self, NodeError> {
        Self::with_registries(rt, images, RegistryConfig::default())
    }

    /// A node whose pulls use `registries` (credentials, insecure
    /// registries, the default registry for short names).
    pub fn with_registries(
        rt: NativeRuntime,
        images: ImageStore,
        registries: RegistryConfig,
    ) -> Result<Self, NodeError> {
        let default_registry = registries.default_registry().to_string();
        let images = Arc::new(images.with_default_registry(default_registry));
        let puller = Puller::new(images.clone(), registries).map_err(|source| NodeError::Pull {
            reference: String::new(),
            source,
        })?;
        Ok(Node {
            rt: Arc::new(rt),
            images,
            image_cache: Arc::default(),
            puller,
            in_use: Arc::default(),
            fs: Arc::default(),
            mounted: Arc::default(),
        })
    }

    /// The image store.
    pub fn images(&self) -> &Arc<ImageStore> {
        &self.images
    }

    /// Pulls `reference` from its registry, reporting progress.
    pub async fn pull(
        &self,
        reference: &str,
        credentials: Option<Credentials>,
        progress: impl Fn(PullEvent) + Send + Sync,
    ) -> Result<warren_image::Image, NodeError> {
        let opts = PullOptions { credentials };
        let img = self
            .puller
            .pull_with(reference, &opts, progress)
            .await
            .map_err(|source| NodeError::Pull {
                reference: reference.to_string(),
                source,
            })?;
        self.image_cache
            .lock()
            .expect("image cache lock poisoned")
            .clear();
        Ok(img)
    }

    /// The image `reference` names, pulled first when the store does not
    /// have it and it names a registry image.
    pub async fn ensure_image(&self, reference: &str) -> Result<warren_image::Image, NodeError> {
        let node = self.clone();
        let r = reference.to_string();
        match tokio::task::spawn_blocking(move || node.resolve_image(&r)).await? {
            Err(e) if e.code() == "image_not_found" && self.pullable(reference) => {
                tracing::info!(reference, "image not in the store: pulling");
                self.pull(reference, None, |_| {}).await
            }
            other => other,
        }
    }

    /// Whether a missing `reference` could come from a registry (not the
    /// built-in image, not an image id).
    fn pullable(&self, reference: &str) -> bool {
        !reference.starts_with("sha256:")
            && reference != warren_image::HOST_IMAGE_NAME
            && self.puller.parse_reference(reference).is_ok()
    }

    /// Image ids in use by this node's sandboxes, plus `extra` (the control
    /// plane's record of sandboxes this process has not seen yet), held
    /// locked while `f` runs so no create can pick an image up meanwhile.
    fn with_in_use<T>(
        &self,
        extra: &[String],
        f: impl FnOnce(&std::collections::HashSet<String>) -> T,
    ) -> T {
        let map = self.in_use.lock().expect("in-use lock poisoned");
        let mut set: std::collections::HashSet<String> = map.values().cloned().collect();
        set.extend(extra.iter().cloned());
        set.extend(
            self.mounted
                .lock()
                .expect("mounted lock poisoned")
                .values()
                .flatten()
                .cloned(),
        );
        let out = f(&set);
        drop(map);
        out
    }

    /// Removes an image name (and the image, when no other name points at
    /// it), refusing one a live sandbox uses (`image_in_use`).
    pub async fn remove_image(&self, reference: &str, live: Vec<String>) -> Result<(), NodeError> {
        let node = self.clone();
        let r = reference.to_string();
        tokio::task::spawn_blocking(move || {
            node.with_in_use(&live, |set| node.images.remove_unless_in_use(&r, set))
                .map_err(|source| NodeError::Image {
                    reference: r.clone(),
                    source,
                })?;
            node.image_cache
                .lock()
                .expect("image cache lock poisoned")
                .clear();
            Ok(())
        })
        .await?
    }

    /// Garbage-collects the image store, keeping every image a live
    /// sandbox (this node's, or one in `live`) uses.
    pub async fn gc_images(&self, live: Vec<String>) -> Result<warren_image::GcReport, NodeError> {
        let node = self.clone();
        tokio::task::spawn_blocking(move || {
            let report = node
                .with_in_use(&live, |set| node.images.gc(set))
                .map_err(|source| NodeError::Image {
                    reference: "(gc)".into(),
                    source,
                });
            // Resolutions cached before the collection may name removed images.
            node.image_cache
                .lock()
                .expect("image cache lock poisoned")
                .clear();
            report
        })
        .await?
    }

    /// Records that a sandbox re-adopted after a restart uses `image_id`.
    pub fn adopt_image(&self, id: &SandboxId, image_id: String) {
        self.in_use
            .lock()
            .expect("in-use lock poisoned")
            .insert(id.clone(), image_id);
    }

    /// What an exec in a sandbox of `image` inherits: the image's config,
    /// and the user `spec` (or the image's user when `None`) resolved
    /// against the image's `/etc/passwd` and `/etc/group`. One blocking hop.
    pub async fn exec_defaults(
        &self,
        image: &str,
        spec: Option<String>,
    ) -> Result<(warren_image::ImageConfig, user::ResolvedUser), NodeError> {
        let node = self.clone();
        let image = image.to_string();
        tokio::task::spawn_blocking(move || {
            let img = node.resolve_image(&image)?;
            let spec = spec.or(img.config.user.clone()).unwrap_or_default();
            let user = user::resolve(&img.layers, &spec)?;
            Ok((img.config, user))
        })
        .await?
    }

    /// Resolves an image reference, reusing a recent answer (blocking).
    fn resolve_image(&self, reference: &str) -> Result<warren_image::Image, NodeError> {
        let mut cache = self.image_cache.lock().expect("image cache lock poisoned");
        if let Some((at, img)) = cache.get(reference) {
            if at.elapsed() < IMAGE_CACHE_TTL {
                return Ok(img.clone());
            }
        }
        drop(cache);
        let img = self
            .images
            .resolve(reference)
            .map_err(|source| NodeError::Image {
                reference: reference.to_string(),
                source,
            })?;
        cache = self.image_cache.lock().expect("image cache lock poisoned");
        if cache.len() > 1024 {
            cache.clear();
        }
        cache.insert(
            reference.to_string(),
            (std::time::Instant::now(), img.clone()),
        );
        Ok(img)
    }

    pub fn runtime(&self) -> &NativeRuntime {
        &self.rt
    }

    /// Resolves the image (pulling it when missing) and creates the
    /// sandbox. The image's config is honoured: `Env` under the request's
    /// env, `WorkingDir` and `User` unless the request sets them, and
    /// `Entrypoint` + `Cmd` when the request asks for the image's command.
    /// The main command's output goes to `stdout`/`stderr` when given (else
    /// `/dev/null`). Returns the sandbox and the image id it runs.
    pub async fn create(
        &self,
        req: CreateRequest,
        stdout: Option<OwnedFd>,
        stderr: Option<OwnedFd>,
    ) -> Result<(SandboxInfo, String), NodeError> {
        self.create_inner(req, Vec::new(), false, stdout, stderr)
            .await
    }

    /// [`Node::create`] with image mounts already resolved (see
    /// [`Node::create_with_mounts`]); `checkpointable` builds the sandbox in
    /// the shape memory snapshots need ([`Node::create_checkpointable`]).
    pub(crate) async fn create_inner(
        &self,
        req: CreateRequest,
        image_mounts: Vec<warren_runtime::ImageMount>,
        checkpointable: bool,
        stdout: Option<OwnedFd>,
        stderr: Option<OwnedFd>,
    ) -> Result<(SandboxInfo, String), NodeError> {
        // Pull outside the blocking section (it is async and may be slow).
        self.ensure_image(&req.image).await?;
        let node = self.clone();
        tokio::task::spawn_blocking(move || {
            let _span = info_span!("node_create", sandbox_id = %req.id).entered();
            let img = node.claim_image(&req.id, &req.image)?;
            let release = |node: &Node| node.unclaim_image(&req.id);
            let spec = match node.spec_for(&req, &img) {
                Ok(mut s) => {
                    s.image_mounts = image_mounts;
                    s.checkpointable = checkpointable;
                    s
                }
                Err(e) => {
                    release(&node);
                    return Err(e);
                }
            };
            let io = MainIo {
                stdin: None,
                stdout,
                stderr,
                log_capacity: req.log_capacity,
            };
            match node.rt.create(&spec, io) {
                Ok(info) => Ok((info, img.id)),
                Err(e) => {
                    release(&node);
                    Err(e.into())
                }
            }
        })
        .await?
    }

    pub(crate) fn spec_for(
        &self,
        req: &CreateRequest,
        img: &warren_image::Image,
    ) -> Result<SandboxSpec, NodeError> {
        let mut spec = SandboxSpec::new(req.id.clone(), rootfs_of(img));
        let user_spec = req
            .user
            .clone()
            .or(img.config.user.clone())
            .unwrap_or_default();
        let resolved = user::resolve(&img.layers, &user_spec)?;
        spec.user = resolved.user;
        spec.env = merge_env(&img.config.env, &req.env);
        if let Some(home) = resolved.home.filter(|h| !h.is_empty()) {
            if !spec.env.iter().any(|e| e.starts_with("HOME=")) {
                spec.env.push(format!("HOME={home}"));
            }
        }
        spec.workdir = req
            .workdir
            .clone()
            .or(img.config.workdir.clone())
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".into());
        spec.command = match (&req.command, req.use_image_command) {
            (Some(c), _) => Some(c.clone()),
            (None, true) => {
                let argv: Vec<String> = img
                    .config
                    .entrypoint
                    .iter()
                    .flatten()
                    .chain(img.config.cmd.iter().flatten())
                    .cloned()
                    .collect();
                if argv.is_empty() {
                    return Err(NodeError::Runtime(RuntimeError::InvalidSpec {
                        field: "command",
                        reason: format!("image {} has no Entrypoint or Cmd", req.image),
                    }));
                }
                Some(argv)
            }
            (None, false) => None,
        };
        spec.limits = req.limits.clone();
        // A node without networking gives every sandbox only `lo`, which
        // satisfies any egress policy.
        if self.rt.network().is_some() && !req.network.block_network {
            spec.network = warren_runtime::NetworkSpec {
                enabled: true,
                egress: egress_policy(false, req.network.outbound_cidr_allowlist.as_deref())?,
            };
        }
        Ok(spec)
    }

    /// The environment an image's config sets (`KEY=VALUE` entries).
    pub async fn image_env(&self, reference: &str) -> Result<Vec<String>, NodeError> {
        Ok(self.image_config(reference).await?.env)
    }

    /// The id of the image `reference` names now.
    pub async fn image_id(&self, reference: &str) -> Result<String, NodeError> {
        let node = self.clone();
        let reference = reference.to_string();
        tokio::task::spawn_blocking(move || node.resolve_image(&reference).map(|img| img.id))
            .await?
    }

    /// An image's process defaults (env, workdir, user, entrypoint, cmd).
    pub async fn image_config(
        &self,
        reference: &str,
    ) -> Result<warren_image::ImageConfig, NodeError> {
        let node = self.clone();
        let reference = reference.to_string();
        tokio::task::spawn_blocking(move || node.resolve_image(&reference).map(|img| img.config))
            .await?
    }

    /// The retained end of a running sandbox's main-command output.
    pub async fn read_log(
        &self,
        id: &SandboxId,
        tail: Option<u64>,
    ) -> Result<warren_runtime::MainLog, NodeError> {
        let rt = self.rt.clone();
        let id = id.clone();
        Ok(tokio::task::spawn_blocking(move || rt.read_log(&id, tail)).await??)
    }

    /// Waits (on the event loop, no thread) until the sandbox ends.
    pub async fn wait_exit(&self, id: &SandboxId) -> Result<SandboxExit, NodeError> {
        let fd = self.rt.exit_fd(id)?;
        let afd = warren_sys::asyncfd::register(fd, tokio::io::Interest::READABLE)?;
        let _ready = afd.readable().await?;
        let rt = self.rt.clone();
        let id = id.clone();
        let exit = tokio::task::spawn_blocking(move || rt.wait(&id, Some(Duration::from_secs(5))))
            .await??;
        exit.ok_or_else(|| NodeError::Runtime(RuntimeError::InitTimeout { secs: 5 }))
    }

    /// Resolves `reference` and records it as the image of sandbox `id`,
    /// under the in-use lock: GC cannot remove the image between the two.
    fn claim_image(
        &self,
        id: &SandboxId,
        reference: &str,
    ) -> Result<warren_image::Image, NodeError> {
        let mut map = self.in_use.lock().expect("in-use lock poisoned");
        let img = self.resolve_image(reference)?;
        map.insert(id.clone(), img.id.clone());
        Ok(img)
    }

    /// Forgets sandbox `id`'s image claim.
    fn unclaim_image(&self, id: &SandboxId) {
        self.in_use.lock().expect("in-use lock poisoned").remove(id);
    }

    /// Ends and removes the sandbox (idempotent).
    pub async fn destroy(&self, id: &SandboxId) -> Result<(), NodeError> {
        let rt = self.rt.clone();
        let id2 = id.clone();
        tokio::task::spawn_blocking(move || rt.destroy(&id2)).await??;
        self.release_mounts(id);
        self.unclaim_image(id);
        self.fs.forget(id);
        Ok(())
    }

    /// Re-adopts or cleans up sandboxes a previous process left running.
    pub async fn recover(&self) -> Result<Vec<Recovered>, NodeError> {
        let rt = self.rt.clone();
        Ok(tokio::task::spawn_blocking(move || rt.recover()).await??)
    }

    /// Starts a command and returns its live handle (streams, signals, exit).
    pub async fn start_exec(
        &self,
        id: &SandboxId,
        spec: warren_runtime::ExecSpec,
        io: warren_runtime::ExecIo,
    ) -> Result<warren_runtime::Exec, NodeError> {
        let rt = self.rt.clone();
        let id = id.clone();
        Ok(tokio::task::spawn_blocking(move || rt.exec(&id, &spec, io)).await??)
    }

    /// Opens a TCP connection to `127.0.0.1:<port>` inside the sandbox's
    /// network namespace (so servers bound to localhost are reachable, and
    /// nothing off the machine can ever be dialled this way).
    pub async fn dial(
        &self,
        id: &SandboxId,
        port: u16,
    ) -> Result<tokio::net::TcpStream, NodeError> {
        let netns = self.rt.netns(id)?;
        let addr = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port));
        Ok(warren_runtime::connect_in_netns(std::os::fd::AsFd::as_fd(&*netns), addr).await?)
    }

    /// Changes a running sandbox's egress policy. A sandbox created with
    /// `block_network` has no interface: unblocking it fails with
    /// `network_unavailable`.
    pub async fn set_egress(
        &self,
        id: &SandboxId,
        block: bool,
        allowlist: Option<&[String]>,
    ) -> Result<(), NodeError> {
        // Without an interface there is nothing to open, and blocking is
        // already true.
        if self.rt.network().is_none() || self.rt.address(id)?.is_none() {
            return if block {
                Ok(())
            } else {
                Err(NodeError::NetworkUnavailable)
            };
        }
        let policy = egress_policy(block, allowlist)?;
        let rt = self.rt.clone();
        let id = id.clone();
        Ok(tokio::task::spawn_blocking(move || rt.set_egress(&id, policy)).await??)
    }

    /// The sandbox's address on this node, when it has an interface.
    pub fn address(&self, id: &SandboxId) -> Option<std::net::IpAddr> {
        self.rt
            .address(id)
            .ok()
            .flatten()
            .map(|a| std::net::IpAddr::V4(a.address))
    }

    /// Runs a command to completion, buffering (boundedly) its output.
    pub async fn exec_buffered(
        &self,
        id: &SandboxId,
        req: BufferedExec,
    ) -> Result<ExecOutput, NodeError> {
        exec::buffered(self.rt.clone(), id.clone(), req).await
    }
}

/// Registers a descriptor with the tokio reactor to await readability (for
/// example an exec's control connection, readable when its exit arrives).
pub fn watch_readable(fd: OwnedFd) -> std::io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    warren_sys::asyncfd::register(fd, tokio::io::Interest::READABLE)
}

/// A terminal master as an async reader and writer. The master is put in
/// non-blocking mode first (tokio only reads after readiness, but a drain
/// after the process exits reads it directly, and a background process
/// can keep the terminal open, so a blocking read would never return).
fn pty_halves(
    pty: &std::fs::File,
) -> std::io::Result<(
    tokio::net::unix::pipe::Receiver,
    tokio::net::unix::pipe::Sender,
)> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(pty, FcntlArg::F_GETFL)?);
    fcntl(pty, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    let r = tokio::net::unix::pipe::Receiver::from_file_unchecked(pty.try_clone()?)?;
    let w = tokio::net::unix::pipe::Sender::from_file_unchecked(pty.try_clone()?)?;
    Ok((r, w))
}

/// A running exec's stdio and control connection, as async halves.
pub struct ExecStreams {
    /// Stdout, or the terminal (both ways) for a PTY exec.
    pub stdout: Option<tokio::net::unix::pipe::Receiver>,
    /// Stderr (none for a PTY exec).
    pub stderr: Option<tokio::net::unix::pipe::Receiver>,
    /// Stdin, or the terminal for a PTY exec.
    pub stdin: Option<tokio::net::unix::pipe::Sender>,
    /// The control connection: readable when the exit is in.
    pub control: tokio::io::unix::AsyncFd<OwnedFd>,
}

/// Takes `exec`'s pipes (or duplicates of its terminal master, which stays
/// in `exec` for resizes) and registers its control connection, for code
/// that pumps an exec on the event loop.
pub fn exec_streams(exec: &mut warren_runtime::Exec) -> std::io::Result<ExecStreams> {
    use tokio::net::unix::pipe;
    let (stdout, stderr, stdin) = match exec.pty.as_ref() {
        Some(pty) => {
            let (r, w) = pty_halves(pty)?;
            (Some(r), None, Some(w))
        }
        None => (
            exec.stdout
                .take()
                .map(pipe::Receiver::from_file)
                .transpose()?,
            exec.stderr
                .take()
                .map(pipe::Receiver::from_file)
                .transpose()?,
            exec.stdin.take().map(pipe::Sender::from_file).transpose()?,
        ),
    };
    let control = watch_readable(exec.control_fd().try_clone_to_owned()?)?;
    Ok(ExecStreams {
        stdout,
        stderr,
        stdin,
        control,
    })
}

/// The root filesystem the runtime needs for an image: its layers and host
/// binds (the one place an image becomes a `RootfsSpec`).
pub fn rootfs_of(img: &warren_image::Image) -> RootfsSpec {
    RootfsSpec {
        layers: img.layers.clone(),
        binds: img
            .binds
            .iter()
            .map(|b| BindMount {
                source: b.source.clone(),
                target: b.target.clone(),
                readonly: b.readonly,
            })
            .collect(),
    }
}

/// The image's environment with `overrides` replacing same-named entries.
pub fn merge_env(base: &[String], overrides: &[String]) -> Vec<String> {
    let key = |kv: &str| kv.split('=').next().unwrap_or_default().to_string();
    let mut out: Vec<String> = base
        .iter()
        .filter(|kv| !overrides.iter().any(|o| key(o) == key(kv)))
        .cloned()
        .collect();
    out.extend(overrides.iter().cloned());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_replace_image_values() {
        let base = vec!["PATH=/bin".to_string(), "A=1".to_string()];
        let got = merge_env(&base, &["A=2".to_string(), "B=3".to_string()]);
        assert_eq!(got, vec!["PATH=/bin", "A=2", "B=3"]);
    }
}
