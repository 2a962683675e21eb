//! The public, serde-serializable records of the store.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The node id used while Warren runs on a single machine.
pub const LOCAL_NODE_ID: &str = "local";

/// Default page size of [`crate::Store::list_sandboxes`].
pub const DEFAULT_PAGE_LIMIT: u32 = 100;

/// Largest page size of [`crate::Store::list_sandboxes`].
pub const MAX_PAGE_LIMIT: u32 = 1000;

/// A tenant: the unit of isolation for tokens and sandboxes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workspace {
    pub id: String,
    pub name: String,
    /// Unix milliseconds.
    pub created_at: i64,
}

/// An API token as listed: never contains the secret or its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub id: String,
    pub workspace_id: String,
    pub name: String,
    pub is_admin: bool,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

/// A token just created: the only time its plaintext is available.
///
/// `Debug` redacts the plaintext, so logging this value is safe.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewToken {
    pub info: TokenInfo,
    /// `wrn_` followed by 40 URL-safe random characters.
    pub plaintext: String,
}

impl fmt::Debug for NewToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewToken")
            .field("info", &self.info)
            .field("plaintext", &"<redacted>")
            .finish()
    }
}

/// Who a valid, unrevoked token speaks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    pub workspace_id: String,
    pub token_id: String,
    pub is_admin: bool,
}

/// What a sandbox runs and with which limits, as persisted.
///
/// The server validates user input into this form before it reaches the
/// store; the store only checks what it needs for its own arithmetic (the
/// timeouts). `Debug` prints the environment's keys only, because values
/// may be tenant secrets.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SandboxSpec {
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub workdir: Option<String>,
    /// CPU cores (fractions allowed).
    pub cpu: Option<f64>,
    pub memory_mib: Option<u64>,
    pub disk_mib: Option<u64>,
    /// Lifetime limit, counted from the transition to running.
    pub timeout_secs: Option<u64>,
    /// Limit on the time without activity while running.
    pub idle_timeout_secs: Option<u64>,
    /// User of the main command and default for execs (`name`, `uid`,
    /// `uid:gid`, `name:group`); the image's user when absent.
    pub user: Option<String>,
    /// Egress policy, exposed ports and readiness.
    pub network: NetworkSpec,
    /// Images mounted read-only (at create, or later through the API).
    pub mounts: Vec<ImageMountSpec>,
    /// Created checkpointable (memory snapshots, fork, pause).
    pub memory_snapshots: bool,
    /// A paused sandbox resumes on the next exec, file operation or tunnel
    /// connection.
    pub auto_resume: bool,
    /// The idle timeout pauses instead of terminating.
    pub pause_on_idle: bool,
    /// The memory snapshot this sandbox was restored from.
    pub from_memory_snapshot: Option<String>,
}

/// An image mounted into a sandbox, as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageMountSpec {
    pub path: String,
    pub image: String,
}

/// A sandbox's networking, as persisted (inside the spec JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NetworkSpec {
    /// No interface but `lo` (at create), or all traffic dropped (when
    /// changed at run time).
    pub block_network: bool,
    /// Only these CIDRs may be reached, when set.
    pub outbound_cidr_allowlist: Option<Vec<String>>,
    pub ports: Vec<ExposedPort>,
    pub readiness_probe: Option<ReadinessProbe>,
}

/// What an exposed port speaks through the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PortKind {
    /// TLS at the relay, HTTP/1.1 inside.
    Https,
    /// TLS at the relay, h2c inside.
    H2,
    /// Raw TCP from a relay port.
    Tcp,
}

/// One exposed port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExposedPort {
    pub port: u16,
    pub kind: PortKind,
    #[serde(default)]
    pub require_token: bool,
}

/// A readiness probe, as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadinessProbe {
    Tcp(u16),
    Exec(Vec<String>),
}

/// A raw TCP port of the relay assigned to a sandbox's port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayPort {
    pub relay_port: u16,
    pub sandbox_id: String,
    /// The port inside the sandbox.
    pub port: u16,
}

/// Metadata of a connect token (the token itself is never stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectTokenRecord {
    pub id: String,
    pub sandbox_id: String,
    pub workspace_id: String,
    pub port: u16,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
}

impl fmt::Debug for SandboxSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SandboxSpec")
            .field("command", &self.command)
            .field("env_keys", &self.env.keys().collect::<Vec<_>>())
            .field("workdir", &self.workdir)
            .field("cpu", &self.cpu)
            .field("memory_mib", &self.memory_mib)
            .field("disk_mib", &self.disk_mib)
            .field("timeout_secs", &self.timeout_secs)
            .field("idle_timeout_secs", &self.idle_timeout_secs)
            .field("user", &self.user)
            .field("network", &self.network)
            .field("mounts", &self.mounts)
            .field("memory_snapshots", &self.memory_snapshots)
            .field("auto_resume", &self.auto_resume)
            .field("pause_on_idle", &self.pause_on_idle)
            .field("from_memory_snapshot", &self.from_memory_snapshot)
            .finish()
    }
}

/// The lifecycle state of a sandbox. Transitions move forward:
/// `creating` → `running` → `terminating` → `terminated`, where any
/// state may jump straight to `terminated`; the one loop is `running` ⇄
/// `paused` (pause and resume).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxState {
    Creating,
    Running,
    /// Checkpointed and released; never counted as running, and no timeout
    /// runs.
    Paused,
    Terminating,
    Terminated,
}

impl SandboxState {
    /// The stored (and serialized) spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxState::Creating => "creating",
            SandboxState::Running => "running",
            SandboxState::Paused => "paused",
            SandboxState::Terminating => "terminating",
            SandboxState::Terminated => "terminated",
        }
    }

    /// Every state, in lifecycle order.
    pub const ALL: [SandboxState; 5] = [
        SandboxState::Creating,
        SandboxState::Running,
        SandboxState::Paused,
        SandboxState::Terminating,
        SandboxState::Terminated,
    ];
}

impl fmt::Display for SandboxState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SandboxState {
    type Err = UnknownVariant;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SandboxState::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownVariant(s.to_owned()))
    }
}

/// Why a sandbox ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TerminationReason {
    /// The main command exited on its own.
    Exited,
    /// The lifetime limit (`timeout_secs`) passed.
    Timeout,
    /// No activity for `idle_timeout_secs`.
    IdleTimeout,
    /// The kernel's OOM killer ended the main command.
    OomKilled,
    /// A client asked for termination.
    Terminated,
    /// The node restarted and the sandbox did not survive.
    NodeRestart,
    /// Creation or supervision failed.
    Error,
}

impl TerminationReason {
    /// The stored (and serialized) spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TerminationReason::Exited => "exited",
            TerminationReason::Timeout => "timeout",
            TerminationReason::IdleTimeout => "idle_timeout",
            TerminationReason::OomKilled => "oom_killed",
            TerminationReason::Terminated => "terminated",
            TerminationReason::NodeRestart => "node_restart",
            TerminationReason::Error => "error",
        }
    }

    /// Every reason.
    pub const ALL: [TerminationReason; 7] = [
        TerminationReason::Exited,
        TerminationReason::Timeout,
        TerminationReason::IdleTimeout,
        TerminationReason::OomKilled,
        TerminationReason::Terminated,
        TerminationReason::NodeRestart,
        TerminationReason::Error,
    ];
}

impl fmt::Display for TerminationReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TerminationReason {
    type Err = UnknownVariant;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TerminationReason::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownVariant(s.to_owned()))
    }
}

/// A string that names no variant of a stored enumeration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown variant {0:?}")]
pub struct UnknownVariant(pub String);

/// How a sandbox ended, as reported to [`crate::Store::finish_sandbox`] and
/// [`crate::Store::begin_termination`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Termination {
    pub reason: TerminationReason,
    /// The main command's exit code, when it exited.
    pub exit_code: Option<i32>,
    /// Who terminated the sandbox, or the error message.
    pub detail: Option<String>,
}

impl Termination {
    /// A termination with only a reason.
    pub fn new(reason: TerminationReason) -> Self {
        Termination {
            reason,
            exit_code: None,
            detail: None,
        }
    }

    /// Sets the exit code.
    pub fn with_exit_code(mut self, code: i32) -> Self {
        self.exit_code = Some(code);
        self
    }

    /// Sets the detail.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
}

/// A sandbox to insert; it starts in [`SandboxState::Creating`].
#[derive(Debug, Clone, PartialEq)]
pub struct NewSandbox {
    /// Usually from [`crate::new_sandbox_id`].
    pub id: String,
    pub workspace_id: String,
    pub name: Option<String>,
    pub image: String,
    pub spec: SandboxSpec,
    pub tags: BTreeMap<String, String>,
    /// [`LOCAL_NODE_ID`] while Warren is single-node.
    pub node_id: String,
}

/// A sandbox as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub id: String,
    pub workspace_id: String,
    pub name: Option<String>,
    pub image: String,
    pub spec: SandboxSpec,
    pub tags: BTreeMap<String, String>,
    pub state: SandboxState,
    /// `None` until the sandbox starts terminating or ends.
    pub reason: Option<TerminationReason>,
    pub exit_code: Option<i32>,
    pub reason_detail: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub ended_at: Option<i64>,
    /// Absolute deadline (unix ms) from `timeout_secs`, set when running.
    pub deadline_at: Option<i64>,
    pub last_activity_at: i64,
    pub node_id: String,
    /// The resolved image id, once the node has resolved `image`.
    pub image_id: Option<String>,
    /// When it was paused (while `paused`).
    #[serde(default)]
    pub paused_at: Option<i64>,
}

/// Filters and paging of [`crate::Store::list_sandboxes`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ListFilter {
    /// Required: only this workspace's sandboxes are ever returned.
    pub workspace_id: String,
    /// Every pair must match (AND).
    pub tags: BTreeMap<String, String>,
    /// Exact name, in any state.
    pub name: Option<String>,
    pub state: Option<SandboxState>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Page size: 1 to [`MAX_PAGE_LIMIT`], [`DEFAULT_PAGE_LIMIT`] when unset.
    pub limit: Option<u32>,
}

impl ListFilter {
    /// A filter that matches every sandbox of the workspace.
    pub fn workspace(workspace_id: impl Into<String>) -> Self {
        ListFilter {
            workspace_id: workspace_id.into(),
            ..ListFilter::default()
        }
    }
}

/// One page of results, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Opaque; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// A running sandbox past one of its limits, from [`crate::Store::expired`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExpiredSandbox {
    pub sandbox: SandboxRecord,
    /// [`TerminationReason::Timeout`] or [`TerminationReason::IdleTimeout`],
    /// whichever limit passed first.
    pub reason: TerminationReason,
}

/// A memory snapshot (a checkpoint of a running sandbox), as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemorySnapshotRecord {
    /// `msnap-...`.
    pub id: String,
    pub workspace_id: String,
    /// The sandbox it was taken from.
    pub sandbox_id: String,
    /// The source sandbox's image reference.
    pub image: String,
    /// The image id the checkpoint stands on (kept while the record lives).
    pub image_id: String,
    /// The source sandbox's spec: what restored sandboxes inherit.
    pub spec: SandboxSpec,
    /// Size of the checkpoint on disk.
    pub bytes: u64,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub node_id: String,
}
