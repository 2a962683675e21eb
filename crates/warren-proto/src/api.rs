//! The public HTTP API (`/v1`): request and response bodies.
//!
//! JSON everywhere; times are RFC 3339 strings in UTC; ids are opaque
//! strings. Errors are always `{"error": {"code": "...", "message": "..."}}`
//! with a code from [`ErrorCode`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub use crate::network::*;
pub use crate::snapshot::*;

/// Default sandbox lifetime when a create request gives none.
pub const DEFAULT_TIMEOUT_SECS: u64 = 300;
/// Longest sandbox lifetime a create request may ask for (one day).
pub const MAX_TIMEOUT_SECS: u64 = 86_400;
/// Most environment variables in one request.
pub const MAX_ENV_VARS: usize = 512;
/// Most bytes of keys plus values of a request's environment.
pub const MAX_ENV_BYTES: usize = 256 * 1024;
/// Most tags on one sandbox.
pub const MAX_TAGS: usize = 64;
/// Longest tag key and tag value.
pub const MAX_TAG_KEY_LEN: usize = 128;
pub const MAX_TAG_VALUE_LEN: usize = 256;
/// Longest sandbox name.
pub const MAX_NAME_LEN: usize = 63;

/// Body of `POST /v1/sandboxes`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSandboxRequest {
    /// Image reference; the server's default image (`host`) when absent.
    #[serde(default)]
    pub image: Option<String>,
    /// The main command. Without one the sandbox idles until terminated or
    /// timed out, and is used through `exec`.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Absolute working directory for the main command and default for execs.
    #[serde(default)]
    pub workdir: Option<String>,
    /// Lifetime from creation; default 300, at most 86400.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// End the sandbox after this long without activity (no exec running, no
    /// stdin written, no tunnel connection open).
    #[serde(default)]
    pub idle_timeout_secs: Option<u64>,
    /// CPU limit in cores (fractional).
    #[serde(default)]
    pub cpu: Option<f64>,
    #[serde(default)]
    pub memory_mib: Option<u64>,
    #[serde(default)]
    pub disk_mib: Option<u64>,
    /// Unique among the workspace's live sandboxes: `[a-z0-9-]`, 1–63.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// User of the main command and default for execs: `name`, `uid`,
    /// `uid:gid` or `name:group`, resolved in the image's `/etc/passwd` and
    /// `/etc/group`; the image's `User` when absent, else root.
    #[serde(default)]
    pub user: Option<String>,
    /// Without `command`, run the image's `Entrypoint` + `Cmd` as the main
    /// command instead of idling.
    #[serde(default)]
    pub use_image_command: bool,
    /// No network interface but `lo`.
    #[serde(default)]
    pub block_network: bool,
    /// Only these destinations (CIDRs or addresses) may be reached; the
    /// default policy (public internet only) when absent.
    #[serde(default)]
    pub outbound_cidr_allowlist: Option<Vec<String>>,
    /// Ports served at `https://<id>-<port>.<base-domain>`, TLS ended at the
    /// relay, HTTP/1.1 and WebSocket to the sandbox.
    #[serde(default)]
    pub encrypted_ports: Vec<PortSpec>,
    /// Like `encrypted_ports`, with HTTP/2 (h2c) to the sandbox.
    #[serde(default)]
    pub h2_ports: Vec<PortSpec>,
    /// Ports forwarded as raw TCP from a port of the relay.
    #[serde(default)]
    pub unencrypted_ports: Vec<u16>,
    /// Until it passes, the sandbox is not ready: tunnels answer 503 and
    /// `wait-ready` waits.
    #[serde(default)]
    pub readiness_probe: Option<ReadinessProbe>,
    /// Images mounted read-only into the sandbox (directory snapshots, or
    /// any image), at absolute paths.
    #[serde(default)]
    pub mounts: Vec<crate::snapshot::ImageMount>,
    /// Create the sandbox in the shape memory snapshots need, so that
    /// `snapshot-memory`, `fork` and `pause` work on it. Implied by
    /// `auto_resume` and by `on_idle: pause`. Not with `disk_mib` or
    /// `mounts` (yet).
    #[serde(default)]
    pub memory_snapshots: bool,
    /// While paused, the next exec, file operation or tunnel connection
    /// resumes the sandbox first (and waits for it) instead of failing with
    /// `sandbox_paused`.
    #[serde(default)]
    pub auto_resume: bool,
    /// What `idle_timeout_secs` does: `terminate` (the default) or `pause`.
    #[serde(default)]
    pub on_idle: Option<crate::snapshot::OnIdle>,
    /// Restore this memory snapshot (`msnap-...`) as the new sandbox
    /// instead of starting from an image: its processes continue from the
    /// snapshot's instant, with a new id, hostname and network address.
    /// The snapshot fixes the image, command, environment, working
    /// directory and user, so those fields must be absent.
    #[serde(default)]
    pub from_memory_snapshot: Option<String>,
}

/// Where a sandbox is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SandboxState {
    Creating,
    Running,
    /// Checkpointed and released (no memory, no CPU); `resume` (or, with
    /// `auto_resume`, the next exec, file operation or tunnel connection)
    /// brings it back under the same id. No timeout runs while paused.
    Paused,
    Terminating,
    Terminated,
}

/// Why a sandbox ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TerminationReason {
    /// The main command exited (`exit_code` says how).
    Exited,
    /// `timeout_secs` passed.
    Timeout,
    /// `idle_timeout_secs` passed without activity.
    IdleTimeout,
    /// The kernel's OOM killer ended it at its memory limit.
    OomKilled,
    /// Terminated through the API (`detail` says by which token).
    Terminated,
    /// The node restarted and could not re-adopt it.
    NodeRestart,
    /// Warren failed (`detail` has the message).
    Error,
}

/// How a sandbox ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Termination {
    pub reason: TerminationReason,
    /// Shell-style code: the exit code, or 128 + signal.
    pub exit_code: Option<i32>,
    pub detail: Option<String>,
}

/// A sandbox as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Sandbox {
    pub id: String,
    pub name: Option<String>,
    pub image: String,
    pub command: Option<Vec<String>>,
    pub workdir: String,
    pub state: SandboxState,
    pub tags: BTreeMap<String, String>,
    pub timeout_secs: u64,
    pub idle_timeout_secs: Option<u64>,
    pub cpu: Option<f64>,
    pub memory_mib: Option<u64>,
    pub disk_mib: Option<u64>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    /// Present once the sandbox has ended.
    pub termination: Option<Termination>,
    pub network: NetworkInfo,
    /// Exposed ports (see `GET /v1/sandboxes/{id}/tunnels` for URLs).
    pub encrypted_ports: Vec<PortSpec>,
    pub h2_ports: Vec<PortSpec>,
    pub unencrypted_ports: Vec<u16>,
    pub readiness_probe: Option<ReadinessProbe>,
    /// Whether the readiness probe has passed (true without a probe once
    /// running).
    pub ready: bool,
    /// Images mounted into the sandbox.
    #[serde(default)]
    pub mounts: Vec<crate::snapshot::ImageMount>,
    /// Created with `memory_snapshots` (checkpointable).
    #[serde(default)]
    pub memory_snapshots: bool,
    #[serde(default)]
    pub auto_resume: bool,
    /// What the idle timeout does: `terminate` or `pause`.
    #[serde(default)]
    pub on_idle: crate::snapshot::OnIdle,
    /// When it was paused (while `paused`).
    #[serde(default)]
    pub paused_at: Option<String>,
    /// The memory snapshot it was restored from, if any.
    #[serde(default)]
    pub from_memory_snapshot: Option<String>,
}

/// `GET /v1/sandboxes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SandboxList {
    pub sandboxes: Vec<Sandbox>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Body of `PUT /v1/sandboxes/{id}/tags`: replaces all tags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetTagsRequest {
    pub tags: BTreeMap<String, String>,
}

/// Body of `POST /v1/sandboxes/{id}/exec` (the simple, buffered mode).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    pub command: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub workdir: Option<String>,
    /// Kill the command after this long; reported as `timed_out`.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// Written to the command's stdin, then stdin is closed.
    #[serde(default)]
    pub stdin: Option<String>,
    /// Run as this user (see `CreateSandboxRequest::user`); the sandbox's
    /// user when absent.
    #[serde(default)]
    pub user: Option<String>,
}

/// How an exec ended, with its buffered output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ExecResult {
    /// Shell-style: the exit code, or 128 + signal.
    pub exit_code: i32,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub oom_killed: bool,
    /// Output as UTF-8 (invalid bytes replaced); at most 1 MiB per stream
    /// in the simple mode, `*_truncated` says when more was dropped.
    pub stdout: String,
    pub stderr: String,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
}

/// First (text) message on `GET /v1/sandboxes/{id}/exec/stream` (WebSocket).
///
/// Then: client → server binary frames `[0, data...]` are stdin; text
/// frames are [`StreamClientMsg`]. Server → client binary frames
/// `[1, data...]` (stdout, or the terminal) and `[2, data...]` (stderr);
/// text frames are [`StreamServerMsg`], ending with `exit` (or `error`),
/// after which the server closes. Nothing is buffered without bound: the
/// server reads the process's output only as fast as the client takes it,
/// and reads the client's stdin only as fast as the process takes it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamExecStart {
    pub command: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub workdir: Option<String>,
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// Run under a pseudo-terminal of this size.
    #[serde(default)]
    pub tty: Option<TtySize>,
    /// Run as this user; the sandbox's user when absent.
    #[serde(default)]
    pub user: Option<String>,
}

/// Terminal size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TtySize {
    pub rows: u16,
    pub cols: u16,
}

/// Client → server control messages of a streaming exec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum StreamClientMsg {
    /// Close the process's stdin.
    StdinEof {},
    /// Deliver a signal to the process group.
    Signal { signal: i32 },
    /// Resize the terminal (TTY execs).
    Resize { rows: u16, cols: u16 },
}

/// Server → client control messages of a streaming exec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamServerMsg {
    Started {
        pid: i32,
    },
    Exit {
        exit_code: i32,
        signal: Option<i32>,
        timed_out: bool,
        oom_killed: bool,
    },
    Error {
        code: String,
        message: String,
    },
    /// Attaching to a background exec: the buffered output follows as
    /// binary frames; `skipped` older bytes no longer fit the buffer.
    Attached {
        exec_id: String,
        pid: i32,
        skipped: u64,
    },
    /// A slow attached client fell behind and missed this many output
    /// frames (they remain in the buffer: `GET .../output` has them).
    Lagged {
        skipped: u64,
    },
}

// ---------------------------------------------------------- background execs ---

/// A background exec: started with `POST /v1/sandboxes/{id}/execs` (body:
/// a [`StreamExecStart`]), it runs detached from any connection; its
/// output is kept in a bounded buffer, and clients attach, detach and
/// attach again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BackgroundExec {
    pub id: String,
    pub sandbox_id: String,
    /// Pid inside the sandbox.
    pub pid: i32,
    pub command: Vec<String>,
    pub tty: bool,
    /// `running` or `exited`.
    pub state: String,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub oom_killed: bool,
    /// RFC 3339.
    pub started_at: String,
    pub ended_at: Option<String>,
    /// Output bytes produced so far, and how many of them fell out of the
    /// buffer.
    pub output_bytes: u64,
    pub output_dropped: u64,
}

/// `GET /v1/sandboxes/{id}/execs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BackgroundExecList {
    pub execs: Vec<BackgroundExec>,
}

/// `POST /v1/sandboxes/{id}/execs/{exec_id}/signal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignalRequest {
    pub signal: i32,
}

// ------------------------------------------------------------------- files ---

/// A file or directory in a sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FileInfo {
    /// Absolute path inside the sandbox, as UTF-8 (invalid bytes replaced).
    pub path: String,
    /// The exact path bytes, base64, when they are not valid UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_b64: Option<String>,
    /// `file`, `directory`, `symlink`, `fifo`, `socket`, `char_device`, `block_device`.
    pub kind: String,
    pub size: u64,
    /// Permission bits (`mode & 0o7777`), e.g. 420 for 0644.
    pub mode: u32,
    /// Owner as the sandbox sees it.
    pub uid: u32,
    pub gid: u32,
    /// RFC 3339, with nanoseconds.
    pub mtime: String,
    /// Where a symlink points (not resolved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symlink_target: Option<String>,
}

/// `GET /v1/sandboxes/{id}/files/list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FileList {
    pub entries: Vec<FileInfo>,
    /// The entry limit was reached; more exist.
    pub truncated: bool,
}

/// A change under a watched path (`GET .../files/watch`, an SSE `fs` event).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FileEvent {
    /// `created`, `modified`, `attributes`, `deleted`, `moved_from`,
    /// `moved_to`, or `overflow` (events were lost: rescan).
    pub kind: String,
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_b64: Option<String>,
    pub is_dir: bool,
    /// Pairs `moved_from` with `moved_to` (0 otherwise).
    pub cookie: u32,
}

/// `PUT .../files/archive`: what an uploaded tar became.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ArchiveResult {
    pub files: u64,
    pub directories: u64,
    pub bytes: u64,
    /// Entries not written: symlinks, hard links, devices (paths, UTF-8).
    pub skipped: Vec<String>,
}

// ------------------------------------------------------------------ images ---

/// `POST /v1/images/pull`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PullImageRequest {
    /// `python:3.12`, `registry.example.com:5000/team/app:v1`,
    /// `name@sha256:...`; short names resolve to the node's default
    /// registry (`docker.io/library/...`).
    pub reference: String,
    /// Credentials for this pull only (admin tokens only; they are not
    /// stored). Without them the node's registry settings apply.
    #[serde(default)]
    pub auth: Option<RegistryAuth>,
}

/// Registry credentials: a username and password, or a bearer token.
#[derive(Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged, deny_unknown_fields)]
pub enum RegistryAuth {
    Basic { username: String, password: String },
    Token { token: String },
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegistryAuth::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .finish_non_exhaustive(),
            RegistryAuth::Token { .. } => f.write_str("Token(..)"),
        }
    }
}

/// An image in the node's store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ImageInfo {
    /// `sha256:<hex>`.
    pub id: String,
    /// Every `name:tag` pointing at it.
    pub names: Vec<String>,
    /// Digest of the registry manifest it came from, if pulled or imported.
    pub manifest_digest: Option<String>,
    /// Creation time from the image config, if it has one.
    pub created: Option<String>,
    /// Layers, lowest first.
    pub layers: Vec<ImageLayerInfo>,
    /// Unpacked bytes of all layers.
    pub size: u64,
    pub config: ImageConfigInfo,
}

/// One layer of an [`ImageInfo`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ImageLayerInfo {
    /// Digest of the uncompressed layer tar.
    pub diff_id: String,
    /// Digest of the blob as stored or pulled.
    pub digest: Option<String>,
    pub media_type: Option<String>,
    /// Size of the blob.
    pub size: Option<u64>,
    /// Bytes of the unpacked tree.
    pub unpacked_size: u64,
}

/// The process defaults an image's config sets.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ImageConfigInfo {
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub user: Option<String>,
}

/// `GET /v1/images`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ImageList {
    pub images: Vec<ImageInfo>,
}

/// `POST /v1/images/gc`: what was removed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ImageGcReport {
    pub images_removed: u64,
    pub layers_removed: u64,
    pub blobs_removed: u64,
    pub tmp_removed: u64,
    pub bytes_freed: u64,
}

/// One progress event of a pull (`event: progress` of the pull stream).
/// Order: `resolved`, then per layer `layer_progress`* and
/// `layer_verified` or `layer_already_present`, then `layer_unpacked` per
/// layer in order, then `done`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum PullProgress {
    Resolved {
        reference: String,
        manifest_digest: String,
        layers: Vec<PullLayer>,
    },
    LayerProgress {
        digest: String,
        downloaded: u64,
        total: u64,
    },
    LayerVerified {
        digest: String,
    },
    LayerAlreadyPresent {
        digest: String,
    },
    LayerUnpacked {
        digest: String,
        diff_id: String,
    },
    Done {
        id: String,
        name: String,
        manifest_digest: String,
    },
}

/// A layer of [`PullProgress::Resolved`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PullLayer {
    pub digest: String,
    pub size: u64,
}

/// `POST /v1/images/{reference}/push`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PushImageRequest {
    /// Where to push: `host[:port]/repository[:tag]` (tag `latest` when
    /// absent; short names go to the node's default registry).
    pub target: String,
    /// Plain HTTP to this registry for this push (admin tokens only).
    /// Registries marked `insecure` in the node's settings need no flag.
    #[serde(default)]
    pub insecure: bool,
    /// Credentials for this push only (admin tokens only; not stored).
    /// Without them the node's registry settings apply.
    #[serde(default, alias = "credentials")]
    pub auth: Option<RegistryAuth>,
}

/// The result of a push (the `done` event of the push stream, and the
/// JSON answer without one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PushImageResult {
    /// The normalized target (`host:port/repository:tag`).
    pub target: String,
    /// Digest of the manifest the registry now holds under the tag.
    pub manifest_digest: String,
    /// Blobs uploaded (config and layers).
    pub pushed_blobs: u64,
    /// Blobs the registry already had (not uploaded again).
    pub skipped_blobs: u64,
    /// Bytes uploaded.
    pub pushed_bytes: u64,
}

/// One progress event of a push (`event: progress` of the push stream).
/// Order: `resolved`, then per blob (config first, then layers) either
/// `blob_exists` or `blob_progress`* and `blob_pushed`, then `done`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum PushProgress {
    Resolved {
        /// The image pushed (id).
        image: String,
        target: String,
        manifest_digest: String,
        /// Every blob of the image: config, then layers.
        blobs: Vec<PullLayer>,
    },
    BlobExists {
        digest: String,
    },
    BlobProgress {
        digest: String,
        uploaded: u64,
        total: u64,
    },
    BlobPushed {
        digest: String,
    },
    Done(PushImageResult),
}

/// Checks an image reference's shape (the node parses it fully).
pub fn validate_image_reference(r: &str) -> Result<(), String> {
    if r.is_empty() || r.len() > 1024 || r.bytes().any(|b| b.is_ascii_whitespace() || b < 0x20) {
        Err("reference must be 1-1024 characters without whitespace".into())
    } else {
        Ok(())
    }
}

/// Stream ids in the first byte of binary frames.
pub const STREAM_STDIN: u8 = 0;
pub const STREAM_STDOUT: u8 = 1;
pub const STREAM_STDERR: u8 = 2;

/// A workspace: the unit of isolation between API users.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Workspace {
    pub id: String,
    pub name: String,
    pub created_at: String,
}

/// Body of `POST /v1/workspaces` (admin tokens only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWorkspaceRequest {
    pub name: String,
}

/// Body of `POST /v1/tokens`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    pub name: String,
    /// Workspace the token acts in; default: the caller's. Only admin tokens
    /// may name another workspace or create admin tokens.
    #[serde(default)]
    pub workspace_id: Option<String>,
    #[serde(default)]
    pub admin: bool,
}

/// A token's metadata; `token` (the secret) is only returned at creation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Token {
    pub id: String,
    pub name: String,
    pub workspace_id: String,
    pub admin: bool,
    pub created_at: String,
    pub revoked_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// The error envelope every failed request returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code; see [`ErrorCode`].
    pub code: String,
    /// Human-readable explanation; may change between versions.
    pub message: String,
}

/// Every error code the API returns, with its HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 401: no or malformed `Authorization: Bearer` header, or unknown token.
    Unauthenticated,
    /// 403: the token may not do this (e.g. a non-admin creating workspaces).
    Forbidden,
    /// 400: a field failed validation; the message names it.
    InvalidArgument,
    /// 400: the body is not valid JSON for this endpoint (including unknown fields).
    InvalidJson,
    /// 404: no such sandbox in this workspace.
    SandboxNotFound,
    /// 404: no such image.
    ImageNotFound,
    /// 404: no such token or workspace.
    NotFound,
    /// 409: the name is taken by a live sandbox of this workspace.
    NameConflict,
    /// 409: the sandbox has ended.
    SandboxTerminated,
    /// 409: the sandbox is not running yet.
    SandboxNotRunning,
    /// 409: the sandbox is paused and was created without `auto_resume`:
    /// resume it first.
    SandboxPaused,
    /// 409: the sandbox was not created with `memory_snapshots` (or
    /// `auto_resume` / `on_idle: pause`), so it cannot be checkpointed,
    /// forked or paused.
    SandboxNotCheckpointable,
    /// 404: no such memory snapshot in this workspace.
    MemorySnapshotNotFound,
    /// 422: the memory snapshot is damaged (a checksum, a size, the
    /// manifest or its format version); nothing was restored.
    SnapshotCorrupt,
    /// 501: this node cannot take or restore memory snapshots (no CRIU
    /// 4.x, or the runtime does not support it for this sandbox).
    SnapshotUnavailable,
    /// 400: the exec's program does not exist.
    ExecNotFound,
    /// 400: the exec's program is not executable.
    ExecPermissionDenied,
    /// 400: the working directory does not exist or is not a directory.
    WorkdirNotFound,
    /// 503: the node has no capacity for another sandbox.
    CapacityExhausted,
    /// 400: an image reference that cannot be parsed.
    InvalidImageReference,
    /// 409: the image is used by a live sandbox.
    ImageInUse,
    /// 403: the registry refused the credentials, or needs some.
    RegistryAuth,
    /// 502: the registry could not be reached or answered with an error.
    RegistryUnavailable,
    /// 400: plain HTTP to a registry not configured as insecure.
    RegistryInsecureNotAllowed,
    /// 422: a blob's digest or size did not match what the manifest says.
    DigestMismatch,
    /// 422: the image has no manifest for this machine's platform.
    NoMatchingPlatform,
    /// 422: the image or archive is malformed or unsafe (bad manifest,
    /// hostile layer entries, unsupported compression, oversized layer).
    InvalidImage,
    /// 422: the image cannot be exported or pushed (the built-in `host`
    /// image, a view of the host's `/usr`).
    ImageNotExportable,
    /// 502: the registry refused an upload or the manifest of a push.
    PushFailed,
    /// 404: no such file or directory in the sandbox.
    FileNotFound,
    /// 403: the sandbox's user may not do this to that file.
    PermissionDenied,
    /// 400: a path component (or the target) is not a directory.
    NotADirectory,
    /// 400: a directory where a file is needed.
    IsADirectory,
    /// 409: the target exists (mkdir without `parents`, rename without `overwrite`).
    FileExists,
    /// 409: removing a non-empty directory without `recursive`.
    DirectoryNotEmpty,
    /// 507: the sandbox's disk (`disk_mib`) or the node's is full.
    NoSpace,
    /// 409: a read-only file system (an image's read-only host binds).
    ReadOnlyFilesystem,
    /// 400: a path or name longer than the kernel allows.
    NameTooLong,
    /// 400: too many symlinks while resolving the path.
    SymlinkLoop,
    /// 400: not an absolute path, an empty one, or one with a NUL byte.
    InvalidPath,
    /// 400: rename across file systems.
    CrossDevice,
    /// 409: the file is busy (a mount point).
    FileBusy,
    /// 400: a device, FIFO or socket where a regular file is needed.
    NotAFile,
    /// 429: too many watches or too large a tree.
    LimitExceeded,
    /// 500: an I/O error inside the sandbox, or its file agent failed.
    FileIoError,
    /// 400: the port is not exposed by the sandbox (or not as HTTPS/H2).
    PortNotExposed,
    /// 409: the sandbox was created with `block_network` and has no
    /// interface to open.
    NetworkUnavailable,
    /// 408: the sandbox did not become ready in time.
    NotReady,
    /// 503: the relay (tunnels) is not configured on this server.
    RelayUnavailable,
    /// 500: taking or restoring a snapshot failed.
    SnapshotFailed,
    /// 500: Warren failed; details are in the server log.
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::SandboxNotFound => "sandbox_not_found",
            ErrorCode::ImageNotFound => "image_not_found",
            ErrorCode::NotFound => "not_found",
            ErrorCode::NameConflict => "name_conflict",
            ErrorCode::SandboxTerminated => "sandbox_terminated",
            ErrorCode::SandboxNotRunning => "sandbox_not_running",
            ErrorCode::SandboxPaused => "sandbox_paused",
            ErrorCode::SandboxNotCheckpointable => "sandbox_not_checkpointable",
            ErrorCode::MemorySnapshotNotFound => "memory_snapshot_not_found",
            ErrorCode::SnapshotCorrupt => "snapshot_corrupt",
            ErrorCode::SnapshotUnavailable => "snapshot_unavailable",
            ErrorCode::ExecNotFound => "exec_not_found",
            ErrorCode::ExecPermissionDenied => "exec_permission_denied",
            ErrorCode::WorkdirNotFound => "workdir_not_found",
            ErrorCode::CapacityExhausted => "capacity_exhausted",
            ErrorCode::InvalidImageReference => "invalid_image_reference",
            ErrorCode::ImageInUse => "image_in_use",
            ErrorCode::RegistryAuth => "registry_auth",
            ErrorCode::RegistryUnavailable => "registry_unavailable",
            ErrorCode::RegistryInsecureNotAllowed => "registry_insecure_not_allowed",
            ErrorCode::DigestMismatch => "digest_mismatch",
            ErrorCode::NoMatchingPlatform => "no_matching_platform",
            ErrorCode::InvalidImage => "invalid_image",
            ErrorCode::ImageNotExportable => "image_not_exportable",
            ErrorCode::PushFailed => "push_failed",
            ErrorCode::FileNotFound => "file_not_found",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::NotADirectory => "not_a_directory",
            ErrorCode::IsADirectory => "is_a_directory",
            ErrorCode::FileExists => "file_exists",
            ErrorCode::DirectoryNotEmpty => "directory_not_empty",
            ErrorCode::NoSpace => "no_space",
            ErrorCode::ReadOnlyFilesystem => "read_only_filesystem",
            ErrorCode::NameTooLong => "name_too_long",
            ErrorCode::SymlinkLoop => "symlink_loop",
            ErrorCode::InvalidPath => "invalid_path",
            ErrorCode::CrossDevice => "cross_device",
            ErrorCode::FileBusy => "file_busy",
            ErrorCode::NotAFile => "not_a_file",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::FileIoError => "file_io_error",
            ErrorCode::PortNotExposed => "port_not_exposed",
            ErrorCode::NetworkUnavailable => "network_unavailable",
            ErrorCode::NotReady => "not_ready",
            ErrorCode::RelayUnavailable => "relay_unavailable",
            ErrorCode::SnapshotFailed => "snapshot_failed",
            ErrorCode::Internal => "internal",
        }
    }

    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::Unauthenticated => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::InvalidArgument
            | ErrorCode::InvalidJson
            | ErrorCode::ExecNotFound
            | ErrorCode::ExecPermissionDenied
            | ErrorCode::WorkdirNotFound
            | ErrorCode::InvalidImageReference
            | ErrorCode::RegistryInsecureNotAllowed => 400,
            ErrorCode::RegistryAuth | ErrorCode::PermissionDenied => 403,
            ErrorCode::FileNotFound => 404,
            ErrorCode::NotADirectory
            | ErrorCode::IsADirectory
            | ErrorCode::NameTooLong
            | ErrorCode::SymlinkLoop
            | ErrorCode::InvalidPath
            | ErrorCode::CrossDevice
            | ErrorCode::NotAFile => 400,
            ErrorCode::FileExists
            | ErrorCode::DirectoryNotEmpty
            | ErrorCode::ReadOnlyFilesystem
            | ErrorCode::FileBusy => 409,
            ErrorCode::LimitExceeded => 429,
            ErrorCode::NoSpace => 507,
            ErrorCode::FileIoError => 500,
            ErrorCode::ImageInUse => 409,
            ErrorCode::DigestMismatch | ErrorCode::NoMatchingPlatform | ErrorCode::InvalidImage => {
                422
            }
            ErrorCode::RegistryUnavailable => 502,
            ErrorCode::ImageNotExportable => 422,
            ErrorCode::PushFailed => 502,
            ErrorCode::SandboxNotFound | ErrorCode::ImageNotFound | ErrorCode::NotFound => 404,
            ErrorCode::NameConflict
            | ErrorCode::SandboxTerminated
            | ErrorCode::SandboxNotRunning => 409,
            ErrorCode::CapacityExhausted => 503,
            ErrorCode::PortNotExposed => 400,
            ErrorCode::NetworkUnavailable => 409,
            ErrorCode::NotReady => 408,
            ErrorCode::RelayUnavailable => 503,
            ErrorCode::SnapshotFailed => 500,
            ErrorCode::SandboxPaused | ErrorCode::SandboxNotCheckpointable => 409,
            ErrorCode::MemorySnapshotNotFound => 404,
            ErrorCode::SnapshotCorrupt => 422,
            ErrorCode::SnapshotUnavailable => 501,
            ErrorCode::Internal => 500,
        }
    }
}

/// Validates a create request; returns the first problem as a message that
/// names the field.
pub fn validate_create(req: &CreateSandboxRequest) -> Result<(), String> {
    if let Some(t) = req.timeout_secs {
        if t == 0 || t > MAX_TIMEOUT_SECS {
            return Err(format!(
                "timeout_secs must be between 1 and {MAX_TIMEOUT_SECS}"
            ));
        }
    }
    if let Some(t) = req.idle_timeout_secs {
        if t == 0 || t > MAX_TIMEOUT_SECS {
            return Err(format!(
                "idle_timeout_secs must be between 1 and {MAX_TIMEOUT_SECS}"
            ));
        }
    }
    if let Some(cpu) = req.cpu {
        if !(cpu.is_finite() && (0.01..=256.0).contains(&cpu)) {
            return Err("cpu must be between 0.01 and 256 cores".into());
        }
    }
    if let Some(m) = req.memory_mib {
        if !(8..=1 << 20).contains(&m) {
            return Err("memory_mib must be between 8 and 1048576".into());
        }
    }
    if let Some(d) = req.disk_mib {
        if !(1..=1 << 24).contains(&d) {
            return Err("disk_mib must be between 1 and 16777216".into());
        }
    }
    if let Some(u) = &req.user {
        validate_user(u)?;
    }
    if req.use_image_command && req.command.is_some() {
        return Err("use_image_command and command exclude each other".into());
    }
    if let Some(name) = &req.name {
        validate_name(name)?;
    }
    if let Some(cmd) = &req.command {
        validate_command("command", cmd)?;
    }
    if let Some(w) = &req.workdir {
        validate_workdir(w)?;
    }
    validate_env(&req.env)?;
    validate_tags(&req.tags)?;
    validate_network(
        req.block_network,
        req.outbound_cidr_allowlist.as_deref(),
        &req.encrypted_ports,
        &req.h2_ports,
        &req.unencrypted_ports,
        req.readiness_probe.as_ref(),
    )?;
    crate::snapshot::validate_create_snapshot_fields(req)
}

/// Validates an exec request.
/// A user spec: `name`, `uid`, `uid:gid`, `name:group`.
pub fn validate_user(user: &str) -> Result<(), String> {
    let ok = !user.is_empty()
        && user.len() <= 256
        && user.split(':').count() <= 2
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-:$".contains(&b));
    if ok {
        Ok(())
    } else {
        Err("user must be name, uid, uid:gid or name:group (at most 256 characters)".into())
    }
}

pub fn validate_exec(req: &ExecRequest) -> Result<(), String> {
    validate_command("command", &req.command)?;
    if let Some(u) = &req.user {
        validate_user(u)?;
    }
    if let Some(w) = &req.workdir {
        validate_workdir(w)?;
    }
    if let Some(t) = req.timeout_secs {
        if t == 0 || t > MAX_TIMEOUT_SECS {
            return Err(format!(
                "timeout_secs must be between 1 and {MAX_TIMEOUT_SECS}"
            ));
        }
    }
    validate_env(&req.env)
}

pub fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "name must be 1-{MAX_NAME_LEN} characters of [a-z0-9-], not starting with '-'"
        ))
    }
}

pub fn validate_command(field: &str, cmd: &[String]) -> Result<(), String> {
    if cmd.is_empty() || cmd[0].is_empty() {
        return Err(format!("{field} must not be empty"));
    }
    if cmd.iter().any(|a| a.contains('\0')) {
        return Err(format!("{field} must not contain NUL bytes"));
    }
    let total: usize = cmd.iter().map(|a| a.len() + 1).sum();
    if total > 1024 * 1024 {
        return Err(format!("{field} is larger than 1 MiB"));
    }
    Ok(())
}

fn validate_workdir(w: &str) -> Result<(), String> {
    if !w.starts_with('/') || w.contains('\0') || w.len() > 4096 {
        return Err("workdir must be an absolute path".into());
    }
    Ok(())
}

fn validate_env(env: &BTreeMap<String, String>) -> Result<(), String> {
    if env.len() > MAX_ENV_VARS {
        return Err(format!("env has more than {MAX_ENV_VARS} variables"));
    }
    let mut bytes = 0;
    for (k, v) in env {
        let key_ok = !k.is_empty()
            && !k.as_bytes()[0].is_ascii_digit()
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !key_ok {
            return Err(format!("env key {k:?} must match [A-Za-z_][A-Za-z0-9_]*"));
        }
        if v.contains('\0') {
            return Err(format!("env value of {k} contains a NUL byte"));
        }
        bytes += k.len() + v.len();
    }
    if bytes > MAX_ENV_BYTES {
        return Err(format!("env is larger than {} KiB", MAX_ENV_BYTES / 1024));
    }
    Ok(())
}

pub fn validate_tags(tags: &BTreeMap<String, String>) -> Result<(), String> {
    if tags.len() > MAX_TAGS {
        return Err(format!("at most {MAX_TAGS} tags"));
    }
    for (k, v) in tags {
        if k.is_empty()
            || k.len() > MAX_TAG_KEY_LEN
            || k.chars().any(|c| c.is_control() || c == ':')
        {
            return Err(format!(
                "tag key {k:?} must be 1-{MAX_TAG_KEY_LEN} characters without ':' or control characters"
            ));
        }
        if v.len() > MAX_TAG_VALUE_LEN || v.chars().any(char::is_control) {
            return Err(format!(
                "tag value of {k:?} must be at most {MAX_TAG_VALUE_LEN} characters without control characters"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_validation() {
        let ok = CreateSandboxRequest::default();
        assert!(validate_create(&ok).is_ok());
        let bad = |f: &dyn Fn(&mut CreateSandboxRequest)| {
            let mut r = CreateSandboxRequest::default();
            f(&mut r);
            validate_create(&r).unwrap_err()
        };
        assert!(bad(&|r| r.timeout_secs = Some(0)).contains("timeout_secs"));
        assert!(bad(&|r| r.timeout_secs = Some(MAX_TIMEOUT_SECS + 1)).contains("timeout_secs"));
        assert!(bad(&|r| r.cpu = Some(f64::NAN)).contains("cpu"));
        assert!(bad(&|r| r.cpu = Some(-1.0)).contains("cpu"));
        assert!(bad(&|r| r.memory_mib = Some(1)).contains("memory_mib"));
        assert!(bad(&|r| r.name = Some("Bad Name".into())).contains("name"));
        assert!(bad(&|r| r.command = Some(vec![])).contains("command"));
        assert!(bad(&|r| r.workdir = Some("rel".into())).contains("workdir"));
        assert!(bad(&|r| {
            r.env.insert("1X".into(), "v".into());
        })
        .contains("env key"));
        assert!(bad(&|r| {
            r.env.insert("BIG".into(), "x".repeat(MAX_ENV_BYTES));
        })
        .contains("env is larger"));
        assert!(bad(&|r| {
            for i in 0..=MAX_TAGS {
                r.tags.insert(format!("k{i}"), "v".into());
            }
        })
        .contains("tags"));
        assert!(bad(&|r| {
            r.tags.insert("a:b".into(), "v".into());
        })
        .contains("tag key"));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = serde_json::from_str::<CreateSandboxRequest>(r#"{"imagee":"x"}"#);
        assert!(e.is_err());
        let r: CreateSandboxRequest =
            serde_json::from_str(r#"{"image":"x","tags":{"a":"b"}}"#).unwrap();
        assert_eq!(r.image.as_deref(), Some("x"));
    }

    #[test]
    fn error_codes_are_stable() {
        let j = serde_json::to_string(&ErrorCode::SandboxNotFound).unwrap();
        assert_eq!(j, "\"sandbox_not_found\"");
        assert_eq!(ErrorCode::SandboxNotFound.as_str(), "sandbox_not_found");
        assert_eq!(ErrorCode::NameConflict.http_status(), 409);
    }
}
