//! The init protocol: messages between the node (host side) and
//! `warren-init` (PID 1 inside a sandbox).
//!
//! ## Init protocol (version [`INIT_PROTOCOL_VERSION`])
//! Transport: Unix `SOCK_SEQPACKET` sockets; one JSON document per datagram,
//! at most [`MAX_MESSAGE_BYTES`]; file descriptors travel as `SCM_RIGHTS`
//! attached to the datagram that names them.
//!
//! 1. **Bootstrap** (socketpair, init's fd 3): the node sends one
//!    [`Bootstrap`] with descriptors in the order of [`Bootstrap::fds`]; init
//!    sets the sandbox up and answers [`BootstrapReply`], then the pair closes.
//! 2. **Control** (a listening socket init inherited, bound at a host path
//!    under the node's state dir, unreachable from inside the sandbox): per
//!    operation the node connects and sends one [`Request`]. For
//!    [`Request::Exec`] init answers [`Reply::Started`] (or [`Reply::Error`])
//!    and later [`Reply::Exited`]; the node may send [`Request::Signal`] on the
//!    same connection meanwhile.
//!
//! Invariants: every message is self-describing (`"type"` tag); unknown
//! fields are refused so that version skew fails loudly instead of silently.

use serde::{Deserialize, Serialize};

/// Bumped on any incompatible change to the messages below.
pub const INIT_PROTOCOL_VERSION: u32 = 1;

/// Largest datagram either side sends or accepts (argv + env included).
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Descriptor number at which init finds the bootstrap socket.
pub const BOOTSTRAP_FD: i32 = 3;

/// argv[0] the node gives init; together with [`INIT_ENV_MARKER`] it tells a
/// multi-call binary to run as init.
pub const INIT_ARGV0: &str = "warren-init";

/// Environment entry that marks an init process (`NAME=protocol version`).
pub const INIT_ENV_MARKER: &str = "WARREN_INIT_PROTOCOL";

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ExitStatus {
    /// Normal exit with this code.
    Code(i32),
    /// Killed by this signal number.
    Signal(i32),
}

impl ExitStatus {
    /// Shell-style code: the exit code, or 128 + signal.
    pub fn as_shell_code(self) -> i32 {
        match self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal(s) => 128 + s,
        }
    }
}

/// Terminal geometry for a PTY exec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TtySize {
    pub rows: u16,
    pub cols: u16,
}

/// Which standard streams come as descriptors with a request, in order
/// stdin, stdout, stderr. A missing one is connected to `/dev/null`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdioFds {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

impl StdioFds {
    pub fn count(&self) -> usize {
        self.stdin as usize + self.stdout as usize + self.stderr as usize
    }
}

/// A process to start inside the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessSpec {
    pub argv: Vec<String>,
    /// `KEY=VALUE` entries; the complete environment.
    pub env: Vec<String>,
    /// Absolute working directory inside the sandbox.
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    #[serde(default)]
    pub groups: Vec<u32>,
    /// With a TTY, init allocates a PTY in the sandbox's devpts and returns
    /// the master with [`Reply::Started`]; stdio descriptors are then ignored.
    #[serde(default)]
    pub tty: Option<TtySize>,
    #[serde(default)]
    pub stdio: StdioFds,
    /// Killed (whole process group) after this long; reported as timed out.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Run init's own executable (its sealed memfd) as the file agent
    /// instead of looking `argv[0]` up: `argv[0]` must be
    /// [`crate::agent::AGENT_ARGV0`]; everything else (user, env, cwd,
    /// stdio, seccomp, `no_new_privs`) is as for any exec. Added after
    /// version 1 shipped: it defaults to false, and an init that predates
    /// it refuses it as an unknown field.
    #[serde(default)]
    pub agent: bool,
}

/// One bind mount of a host path into the sandbox's root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindSpec {
    pub source: String,
    /// Absolute path inside the sandbox.
    pub target: String,
    pub readonly: bool,
}

/// One image mounted read-only into the sandbox (see
/// [`Bootstrap::image_mounts`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageMountSpec {
    /// Host path of the image's (single, or flattened) tree.
    pub source: String,
    /// Absolute path inside the sandbox.
    pub target: String,
}

/// Descriptor number at which init keeps an `O_PATH` descriptor of a
/// disk-limited sandbox's writable layer (`disk/upper` on the tmpfs it
/// mounts, unreachable by path from the host after `pivot_root`), so that
/// the node can read it through `/proc/<init>/fd/` for snapshots.
pub const DISK_UPPER_FD: i32 = 1000;

/// Everything init needs to build the sandbox. Paths are host paths, read by
/// init before it pivots into the new root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bootstrap {
    pub version: u32,
    pub sandbox_id: String,
    pub hostname: String,
    /// The sandbox's host state directory (contains `upper/`, `work/`,
    /// `rootfs/`, `lower/`).
    pub state_dir: String,
    /// Read-only image layers, lowest first.
    pub layers: Vec<String>,
    pub binds: Vec<BindSpec>,
    /// Host uid/gid that the sandbox's id 0 maps to (range of `id_count`).
    pub id_base: u32,
    pub id_count: u32,
    /// `cgroup.procs` files init joins before unsharing its cgroup namespace.
    pub cgroup_procs: Vec<String>,
    /// Size of the sandbox's `/tmp` tmpfs in bytes (`None` = kernel default).
    pub tmp_size_bytes: Option<u64>,
    /// The writable layer lives on a tmpfs of this size (writes beyond it
    /// fail with `ENOSPC`); `None` = on the node's disk, unbounded.
    #[serde(default)]
    pub disk_bytes: Option<u64>,
    /// Read-only image trees init mounts (idmapped through the sandbox's
    /// user namespace, nosuid, nodev) at paths inside the sandbox, after
    /// the host binds. Missing mount points are created, owned by the
    /// sandbox's root.
    #[serde(default)]
    pub image_mounts: Vec<ImageMountSpec>,
    /// The main command; `None` = idle until terminated.
    pub main: Option<ProcessSpec>,
    /// A log ring file (see [`crate::log`]) comes with the descriptors;
    /// init captures the main command's unassigned stdout/stderr into it.
    #[serde(default)]
    pub main_log: bool,
    /// The seccomp program init installs on itself (and so on every
    /// sandbox process), packed one instruction per `u64`; empty = init
    /// compiles its embedded policy itself.
    #[serde(default)]
    pub seccomp: Vec<u64>,
    /// Descriptor order: user namespace, control listener, result file,
    /// network namespace, the log ring (when `main_log`), then the main
    /// command's stdio as flagged in `main.stdio`.
    pub fds: BootstrapFds,
    /// Build the checkpointable shape (see [`BootstrapFds::Staged`]): the
    /// sandbox's user namespace owns its other namespaces, and init runs
    /// from [`CHECKPOINTABLE_INIT_PATH`] inside the sandbox.
    #[serde(default)]
    pub checkpointable: bool,
    /// Checkpointable shape: host path of the init binary (a regular
    /// file) to bind at [`CHECKPOINTABLE_INIT_PATH`].
    #[serde(default)]
    pub init_binary: String,
}

/// Where a checkpointable sandbox's init binary is bound (read-only) and
/// re-executed from, so that a checkpoint can name it as a file.
pub const CHECKPOINTABLE_INIT_PATH: &str = "/dev/.warren-init";

/// Environment variable set when a checkpointable sandbox's init
/// re-executes itself from [`CHECKPOINTABLE_INIT_PATH`]: it then reads
/// [`Start`] from the bootstrap socket instead of [`Bootstrap`].
pub const INIT_STAGE_ENV: &str = "WARREN_INIT_STAGE";

/// Node → a checkpointable sandbox's re-executed init: everything init
/// needs to start serving, after its namespaces and root exist. Rides with
/// `[listener, result_file, log?, stdin?, stdout?, stderr?]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Start {
    pub main: Option<ProcessSpec>,
    pub main_log: bool,
    pub seccomp: Vec<u64>,
}

/// Documents (and versions) the descriptor order of [`Bootstrap`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BootstrapFds {
    /// `[userns, listener, result_file, netns, log?, stdin?, stdout?, stderr?]`
    UsernsListenerResultNetnsLogStdio,
    /// Checkpointable shape: `[userns]` with [`Bootstrap`];
    /// init answers [`BootstrapReply::Staged`], then the rest comes with
    /// [`Start`].
    Staged,
}

/// Init's answer to [`Bootstrap`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum BootstrapReply {
    /// The sandbox is set up; the main command (if any) has started.
    /// `timings` says how long each setup phase took, for diagnostics.
    Ready {
        main_pid: Option<i32>,
        #[serde(default)]
        timings: Vec<PhaseTiming>,
    },
    /// Checkpointable shape: the sandbox's namespaces exist and its init
    /// (PID 1 inside) has this host pid; the process that answered waits to
    /// be killed by the node, which keeps the new init from being reaped
    /// (and its pid reused) before the node holds a pidfd for it.
    Staged { pid: i32 },
    /// Setup failed at `step`; init exits after sending this.
    Failed {
        step: String,
        errno: Option<i32>,
        message: String,
    },
}

/// How long one phase of init's setup took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseTiming {
    pub phase: String,
    pub micros: u64,
}

/// Node → init on a control connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Start a process; stdio descriptors ride along as flagged.
    Exec { process: ProcessSpec },
    /// Deliver a signal to the exec started on this connection (its group).
    Signal { signal: i32 },
    /// Deliver a signal to the main command.
    SignalMain { signal: i32 },
    /// Liveness check; answered with [`Reply::Pong`].
    Ping {},
    /// Serve on the listener that rides along instead of the current one
    /// (after a restore, init's listener is the one the node handed CRIU,
    /// in the node's network namespace; the new one is in the sandbox's).
    /// Answered with [`Reply::Pong`].
    ReplaceListener {},
    /// Before a checkpoint: init closes connections whose peer has gone,
    /// detaches the connection of every running exec (the exec keeps
    /// running; an exit while detached is kept for [`Request::Adopt`]),
    /// and answers with those execs' pids, their connections riding along
    /// in the same order, and how many other connections stay open
    /// ([`Reply::Quiet`]). It then closes this connection itself, so that
    /// nothing of the node's is left open in init when the sandbox is
    /// frozen.
    Quiesce {},
    /// After a checkpoint (in the source) or a restore (in the copy):
    /// report the exit of each exec in `pids` on the connection that rides
    /// along for it (same order), as if it had started there; an exec that
    /// ended while detached is reported at once. Exec deadlines move by
    /// the time since [`Request::Quiesce`]. Answered with [`Reply::Pong`];
    /// init then closes this connection.
    Adopt { pids: Vec<i32> },
}

/// Init → node on a control connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Reply {
    /// The exec is running with this pid (inside the sandbox's pid namespace).
    /// For a TTY exec, the PTY master rides along as a descriptor.
    Started {
        pid: i32,
    },
    /// The exec ended. `timed_out` when init killed it at its deadline.
    Exited {
        status: ExitStatus,
        timed_out: bool,
    },
    /// The request failed; `code` is stable (`exec_not_found`,
    /// `exec_permission_denied`, `bad_request`, `no_main_process`, ...).
    Error {
        code: String,
        errno: Option<i32>,
        message: String,
    },
    Pong {},
    /// Answer to [`Request::Quiesce`]: the running execs whose connections
    /// init detached (their connections ride along, in order), and how
    /// many other connections stay open besides the asking one (requests
    /// in flight).
    Quiet {
        open: u32,
        #[serde(default)]
        carried: Vec<i32>,
    },
}

/// What init writes to the sandbox's result file when the main command ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MainResult {
    pub status: ExitStatus,
}

/// Errors decoding a message.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("message of {len} bytes exceeds the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("malformed message")]
    Decode(#[source] serde_json::Error),
    #[error("could not encode message")]
    Encode(#[source] serde_json::Error),
}

/// Encodes a message, refusing anything over [`MAX_MESSAGE_BYTES`].
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, ProtoError> {
    let v = serde_json::to_vec(msg).map_err(ProtoError::Encode)?;
    if v.len() > MAX_MESSAGE_BYTES {
        return Err(ProtoError::TooLarge {
            len: v.len(),
            max: MAX_MESSAGE_BYTES,
        });
    }
    Ok(v)
}

/// Decodes a message.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ProtoError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(ProtoError::TooLarge {
            len: bytes.len(),
            max: MAX_MESSAGE_BYTES,
        });
    }
    serde_json::from_slice(bytes).map_err(ProtoError::Decode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips() {
        let r = Request::Exec {
            process: ProcessSpec {
                argv: vec!["echo".into(), "hi".into()],
                env: vec!["A=B".into()],
                cwd: "/".into(),
                uid: 0,
                gid: 0,
                groups: vec![],
                tty: Some(TtySize { rows: 24, cols: 80 }),
                stdio: StdioFds::default(),
                timeout_ms: Some(5),
                agent: false,
            },
        };
        let b = encode(&r).unwrap();
        assert_eq!(decode::<Request>(&b).unwrap(), r);
    }

    #[test]
    fn unknown_fields_and_types_are_refused() {
        assert!(decode::<Request>(br#"{"type":"ping","extra":1}"#).is_err());
        assert!(decode::<Request>(br#"{"type":"format_disk"}"#).is_err());
        assert!(decode::<Reply>(br#"{"type":"exited","status":{"code":0}}"#).is_err());
    }

    #[test]
    fn exit_status_shell_codes() {
        assert_eq!(ExitStatus::Code(3).as_shell_code(), 3);
        assert_eq!(ExitStatus::Signal(9).as_shell_code(), 137);
        let j = serde_json::to_string(&ExitStatus::Signal(9)).unwrap();
        assert_eq!(j, r#"{"signal":9}"#);
    }

    #[test]
    fn oversized_messages_are_refused() {
        let big = vec![b' '; MAX_MESSAGE_BYTES + 1];
        assert!(matches!(
            decode::<Request>(&big),
            Err(ProtoError::TooLarge { .. })
        ));
    }
}

/// argv[0] of the restore helper: the init binary, run by the node in a
/// private mount namespace to prepare a checkpoint's root and run CRIU.
pub const RESTORE_ARGV0: &str = "warren-restore";

/// Node → restore helper (on [`BOOTSTRAP_FD`]), with the descriptors
/// `[userns, inherited...]`: the user namespace whose id mapping the
/// image layers and host binds are idmapped through, then the descriptors
/// CRIU hands to the restored processes (`--inherit-fd`), which the helper
/// places at `inherit_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreHelper {
    /// The new sandbox's state directory (`upper/`, `work/`, `rootfs/`,
    /// `lower/`; `ext/` is created for the idmapped host binds).
    pub state_dir: String,
    /// Read-only image layers, lowest first.
    pub layers: Vec<String>,
    /// A directory (existing on the host) the helper mounts a fresh tmpfs
    /// over, in its own mount namespace only, for the external mounts:
    /// CRIU opens them from inside the new user namespace, which cannot
    /// search the node's state directories.
    pub ext_root: String,
    /// Host trees (or files) bound at `<ext_root>/<name>` for CRIU's
    /// `--external mnt[...]` arguments: (source, name, readonly, idmapped).
    pub binds: Vec<(String, String, bool, bool)>,
    /// `cgroup.procs` files joined before CRIU runs, so the restored
    /// processes start in the sandbox's cgroups.
    pub cgroup_procs: Vec<String>,
    /// Descriptor numbers for the inherited descriptors, in order.
    pub inherit_at: Vec<i32>,
    /// The CRIU binary and its arguments (after `argv[0]`).
    pub criu: String,
    pub args: Vec<String>,
}
