//! What a caller asks the runtime for: validated sandbox and exec specs.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::Duration;

use crate::RuntimeError;

/// A sandbox id: 1 to 63 characters of `[a-z0-9-]`, not starting with `-`.
/// It names the sandbox's cgroup, state directory and default hostname.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct SandboxId(String);

impl SandboxId {
    pub fn new(id: impl Into<String>) -> Result<Self, RuntimeError> {
        let id = id.into();
        let ok = !id.is_empty()
            && id.len() <= 63
            && !id.starts_with('-')
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok {
            return Err(RuntimeError::InvalidSpec {
                field: "id",
                reason: "must be 1-63 characters of [a-z0-9-], not starting with '-'".into(),
            });
        }
        Ok(SandboxId(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for SandboxId {
    type Error = RuntimeError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        SandboxId::new(s)
    }
}

impl From<SandboxId> for String {
    fn from(id: SandboxId) -> String {
        id.0
    }
}

impl std::fmt::Display for SandboxId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A host path bound into the sandbox's root filesystem.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BindMount {
    pub source: PathBuf,
    /// Absolute path inside the sandbox; must already exist in the image.
    pub target: String,
    pub readonly: bool,
}

/// The sandbox's root filesystem: read-only image layers (lowest first) under
/// a per-sandbox writable overlay, plus host binds.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RootfsSpec {
    pub layers: Vec<PathBuf>,
    pub binds: Vec<BindMount>,
}

/// Resource limits. `None` = unlimited (bounded by the host).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// CPU in thousandths of a core (1500 = one and a half cores).
    pub cpu_millis: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub pids: Option<u64>,
    /// Size of the writable layer (and `/tmp`): writes beyond it fail with
    /// `ENOSPC` inside the sandbox. It is kept in memory (tmpfs) and so also
    /// counts against `memory_bytes`.
    pub disk_bytes: Option<u64>,
}

/// A user inside the sandbox (ids as the sandbox sees them).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

impl User {
    pub fn root() -> Self {
        User::default()
    }
}

/// A sandbox's network: `enabled: false` (the default, also for records
/// written before networking existed) = an empty network namespace with only
/// `lo` (`block_network`); enabled = `eth0` with an address from the node's
/// pool, a default route, NAT and DNS, under `egress`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetworkSpec {
    pub enabled: bool,
    #[serde(default)]
    pub egress: warren_net::EgressPolicy,
}

impl NetworkSpec {
    /// Networked, with the default egress policy.
    pub fn enabled() -> Self {
        NetworkSpec {
            enabled: true,
            egress: warren_net::EgressPolicy::Default,
        }
    }
}

/// Everything needed to create a sandbox.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SandboxSpec {
    pub id: SandboxId,
    pub rootfs: RootfsSpec,
    /// The main command; `None` = the sandbox idles until destroyed.
    pub command: Option<Vec<String>>,
    /// `KEY=VALUE` entries: the main command's complete environment.
    pub env: Vec<String>,
    pub workdir: String,
    pub hostname: String,
    pub user: User,
    pub limits: Limits,
    /// Networking (needs `NativeConfig::network` when enabled).
    #[serde(default)]
    pub network: NetworkSpec,
    /// Images mounted read-only into the sandbox at create.
    #[serde(default)]
    pub image_mounts: Vec<ImageMount>,
    /// Built in the shape memory snapshots need (the sandbox's user
    /// namespace owns its other namespaces; see `docs/snapshots.md`), so
    /// that [`crate::NativeRuntime::checkpoint`] can capture it. Set at create.
    #[serde(default)]
    pub checkpointable: bool,
}

/// An image tree mounted read-only (idmapped to the sandbox's ids, nosuid,
/// nodev) at a path inside the sandbox; the mount point is created when
/// missing.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageMount {
    /// Host path of the image's single (or flattened) tree.
    pub source: PathBuf,
    /// Absolute path inside the sandbox, without `..`.
    pub target: String,
}

impl SandboxSpec {
    /// A spec with defaults: idle, empty env, workdir `/`, hostname = id,
    /// root user, no limits, no network (only `lo`).
    pub fn new(id: SandboxId, rootfs: RootfsSpec) -> Self {
        SandboxSpec {
            hostname: id.as_str().to_string(),
            id,
            rootfs,
            command: None,
            env: Vec::new(),
            workdir: "/".into(),
            user: User::root(),
            limits: Limits::default(),
            network: NetworkSpec::default(),
            image_mounts: Vec::new(),
            checkpointable: false,
        }
    }
}

/// Largest total size of argv plus env the runtime accepts (the kernel's own
/// exec limit is about this with an 8 MiB stack).
pub const MAX_ARGS_ENV_BYTES: usize = 2 * 1024 * 1024;

pub(crate) fn validate_process(
    argv: &[String],
    env: &[String],
    cwd: &str,
) -> Result<(), RuntimeError> {
    let bad = |field: &'static str, reason: &str| RuntimeError::InvalidSpec {
        field,
        reason: reason.to_string(),
    };
    if argv.is_empty() || argv[0].is_empty() {
        return Err(bad("command", "must not be empty"));
    }
    if argv.iter().chain(env.iter()).any(|s| s.contains('\0')) {
        return Err(bad(
            "command",
            "arguments and env must not contain NUL bytes",
        ));
    }
    let total: usize = argv.iter().chain(env.iter()).map(|s| s.len() + 1).sum();
    if total > MAX_ARGS_ENV_BYTES {
        return Err(bad("command", "argv plus env exceed 2 MiB"));
    }
    for kv in env {
        match kv.split_once('=') {
            Some((k, _)) if !k.is_empty() => {}
            _ => return Err(bad("env", "entries must be KEY=VALUE with a non-empty KEY")),
        }
    }
    if !cwd.starts_with('/') || cwd.contains('\0') {
        return Err(bad("workdir", "must be an absolute path"));
    }
    Ok(())
}

/// The main command's standard streams. `None` = `/dev/null`.
#[derive(Debug, Default)]
pub struct MainIo {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
    /// Capture the main command's stdout and stderr (those not given above)
    /// into a ring log of this many bytes, kept by init in the sandbox's
    /// state directory: it survives node restarts and never grows past its
    /// capacity. Read it with `Runtime::read_log`.
    pub log_capacity: Option<u64>,
}

/// How an exec's standard streams are connected.
#[derive(Debug)]
pub enum ExecIo {
    /// All three to `/dev/null`.
    Null,
    /// The runtime creates pipes and returns their ends in [`crate::Exec`];
    /// stdin only when asked for.
    Pipes { stdin: bool },
    /// Caller-provided descriptors (`None` = `/dev/null`).
    Fds {
        stdin: Option<OwnedFd>,
        stdout: Option<OwnedFd>,
        stderr: Option<OwnedFd>,
    },
    /// A pseudo-terminal of this size; the master comes back in
    /// [`crate::Exec::pty`].
    Pty { rows: u16, cols: u16 },
}

/// A command to run in a live sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecSpec {
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub workdir: String,
    pub user: User,
    /// Killed after this long, and reported as timed out.
    pub timeout: Option<Duration>,
}

impl ExecSpec {
    /// `argv` as root in `/` with a default `PATH`.
    pub fn new(argv: Vec<String>) -> Self {
        ExecSpec {
            argv,
            env: vec![DEFAULT_PATH.to_string()],
            workdir: "/".into(),
            user: User::root(),
            timeout: None,
        }
    }
}

/// The `PATH` used when a caller gives none.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_ids() {
        assert!(SandboxId::new("abc-123").is_ok());
        for bad in ["", "-a", "A", "a_b", "a/b", "..", &"a".repeat(64)] {
            assert!(SandboxId::new(bad).is_err(), "{bad:?} accepted");
        }
        let j = serde_json::to_string(&SandboxId::new("x1").unwrap()).unwrap();
        assert_eq!(j, "\"x1\"");
        assert!(serde_json::from_str::<SandboxId>("\"BAD\"").is_err());
    }

    #[test]
    fn process_validation() {
        let ok = |a: &[&str], e: &[&str], c: &str| {
            validate_process(
                &a.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                &e.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                c,
            )
            .is_ok()
        };
        assert!(ok(&["true"], &["A=B"], "/"));
        assert!(!ok(&[], &[], "/"));
        assert!(!ok(&[""], &[], "/"));
        assert!(!ok(&["a\0b"], &[], "/"));
        assert!(!ok(&["true"], &["NOEQUALS"], "/"));
        assert!(!ok(&["true"], &["=x"], "/"));
        assert!(!ok(&["true"], &[], "relative"));
        let huge = "x".repeat(MAX_ARGS_ENV_BYTES);
        assert!(!ok(&["true", &huge], &[], "/"));
    }
}
