//! warren-runtime: the `Runtime` trait and its backends.
//!
//! A sandbox is a tree of processes isolated from the host and from every
//! other sandbox. This crate creates them, runs commands in them, signals,
//! waits for and destroys them. The one backend today is
//! [`native::NativeRuntime`]: Linux namespaces, an overlay root filesystem
//! over idmapped image layers, cgroups, and `warren-init` as PID 1. Later
//! backends (gVisor, microVMs) implement the same trait.
//!
//! Invariants:
//! - `destroy` is idempotent and complete: no process, mount, cgroup,
//!   directory or namespace of the sandbox survives it, including after a
//!   `create` that failed halfway or a node that crashed.
//! - Sandboxes outlive the process that manages them: init is not tied to the
//!   node's lifetime, and [`Runtime::recover`] re-adopts live sandboxes (or
//!   cleans up dead ones) after a restart.
//! - Everything blocking here is bounded by a timeout.
//!
//! Must not: depend on the API server, the image store, or any global state
//! beyond its data directory and cgroup subtree.

mod error;
pub mod native;
mod spec;

use std::fs::File;
use std::os::fd::BorrowedFd;
use std::time::Duration;

pub use error::RuntimeError;
pub use native::checkpoint::{CheckpointInfo, CheckpointOptions};
pub use native::{NativeConfig, NativeRuntime, Restored, RestoredExec};
pub use spec::ImageMount;
pub use spec::{
    BindMount, ExecIo, ExecSpec, Limits, MainIo, NetworkSpec, RootfsSpec, SandboxId, SandboxSpec,
    User, DEFAULT_PATH, MAX_ARGS_ENV_BYTES,
};
pub use warren_net::{connect_in_netns, EgressPolicy, NetworkConfig, SandboxAddress};
pub use warren_proto::ExitStatus;

/// How a sandbox ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum SandboxExit {
    /// The main command exited with this code.
    Exited { code: i32 },
    /// The main command was killed by this signal (not by the OOM killer).
    Signaled { signal: i32 },
    /// The kernel's OOM killer killed the main command (or init).
    OomKilled,
    /// [`Runtime::destroy`] ended it.
    Destroyed,
    /// Init ended without recording a result (killed from outside, or the
    /// record was lost).
    Lost { detail: String },
}

impl SandboxExit {
    /// Shell-style exit code where one exists.
    pub fn code(&self) -> Option<i32> {
        match self {
            SandboxExit::Exited { code } => Some(*code),
            SandboxExit::Signaled { signal } => Some(128 + signal),
            SandboxExit::OomKilled => Some(137),
            _ => None,
        }
    }
}

/// How an exec ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExecExit {
    pub status: ExitStatus,
    /// Killed by init at its deadline.
    pub timed_out: bool,
    /// Killed by the kernel's OOM killer.
    pub oom_killed: bool,
}

/// What [`Runtime::recover`] found for one sandbox left by a previous run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovered {
    /// Still running; re-adopted and fully usable.
    Running(SandboxId),
    /// It ended (or could not be reached) while nobody managed it; its
    /// resources have been released.
    Ended(SandboxId, SandboxExit),
}

/// Captured output of a main command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MainLog {
    /// The retained bytes, oldest first (stdout and stderr interleaved as
    /// written).
    pub bytes: Vec<u8>,
    /// Older bytes not included: overwritten by the ring, or cut by `tail`.
    pub skipped: u64,
    /// Bytes written since the sandbox started.
    pub total: u64,
}

/// Facts about a created sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxInfo {
    pub id: SandboxId,
    /// Host pid of the sandbox's init.
    pub init_pid: i32,
    /// Pid of the main command inside the sandbox's pid namespace.
    pub main_pid: Option<i32>,
    /// Host uid/gid that the sandbox's root maps to.
    pub host_id_base: u32,
    /// Where create spent its time: node-side phases (`node:*`) and init's
    /// own setup phases (`init:*`), in order, in microseconds.
    pub phases: Vec<(String, u64)>,
}

/// A sandbox backend.
pub trait Runtime: Send + Sync {
    /// Creates and starts a sandbox; returns once its main command (if any)
    /// has started.
    fn create(&self, spec: &SandboxSpec, io: MainIo) -> Result<SandboxInfo, RuntimeError>;

    /// Starts a command in a running sandbox.
    fn exec(&self, id: &SandboxId, spec: &ExecSpec, io: ExecIo) -> Result<Exec, RuntimeError>;

    /// Starts the file agent (`warren-init`'s own executable in agent mode,
    /// see `warren_proto::agent`) in a running sandbox: like [`Self::exec`]
    /// (user, env, workdir, stdio, seccomp, `no_new_privs`), but the program
    /// is init's sealed executable, never a path looked up inside the
    /// sandbox. `spec.argv[0]` must be `warren_proto::agent::AGENT_ARGV0`;
    /// the rest are the agent's arguments.
    fn exec_agent(
        &self,
        id: &SandboxId,
        spec: &ExecSpec,
        io: ExecIo,
    ) -> Result<Exec, RuntimeError> {
        let _ = (id, spec, io);
        Err(RuntimeError::InvalidSpec {
            field: "agent",
            reason: "this backend has no file agent".into(),
        })
    }

    /// Sends `signal` to the sandbox's main command.
    fn signal(&self, id: &SandboxId, signal: i32) -> Result<(), RuntimeError>;

    /// Waits until the sandbox ends (`None` timeout = forever). `Ok(None)` on
    /// timeout.
    fn wait(
        &self,
        id: &SandboxId,
        timeout: Option<Duration>,
    ) -> Result<Option<SandboxExit>, RuntimeError>;

    /// A descriptor that becomes readable when the sandbox ends, for callers
    /// that multiplex many sandboxes on an event loop.
    fn exit_fd(&self, id: &SandboxId) -> Result<std::os::fd::OwnedFd, RuntimeError>;

    /// Ends the sandbox and releases everything it holds. Idempotent.
    fn destroy(&self, id: &SandboxId) -> Result<(), RuntimeError>;

    /// Re-adopts or cleans up the sandboxes a previous process left behind.
    fn recover(&self) -> Result<Vec<Recovered>, RuntimeError>;

    /// The retained end of the main command's captured output (see
    /// `MainIo::log_capacity`); the last `tail` bytes when given.
    fn read_log(&self, id: &SandboxId, tail: Option<u64>) -> Result<MainLog, RuntimeError>;

    /// Ids of the sandboxes this runtime currently manages.
    fn list(&self) -> Vec<SandboxId>;
}

/// A running exec. Dropping it detaches: the process keeps running.
pub struct Exec {
    /// Pid inside the sandbox's pid namespace.
    pub pid: i32,
    pub stdin: Option<File>,
    pub stdout: Option<File>,
    pub stderr: Option<File>,
    /// The PTY master for [`ExecIo::Pty`] execs (read and write both ways).
    pub pty: Option<File>,
    pub(crate) inner: native::ExecControl,
}

impl std::fmt::Debug for Exec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exec")
            .field("pid", &self.pid)
            .field("stdin", &self.stdin.is_some())
            .field("stdout", &self.stdout.is_some())
            .field("stderr", &self.stderr.is_some())
            .field("pty", &self.pty.is_some())
            .finish_non_exhaustive()
    }
}

impl Exec {
    /// Blocks until the exec ends.
    pub fn wait(&mut self) -> Result<ExecExit, RuntimeError> {
        self.inner.wait(None)?.ok_or(RuntimeError::InitGone)
    }

    /// Waits up to `timeout`; `Ok(None)` if it is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExecExit>, RuntimeError> {
        self.inner.wait(Some(timeout))
    }

    /// Sends `signal` to the exec's process group.
    pub fn signal(&self, signal: i32) -> Result<(), RuntimeError> {
        self.inner.signal(signal)
    }

    /// Resizes the exec's terminal (PTY execs only).
    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), RuntimeError> {
        use std::os::fd::AsFd;
        let pty = self.pty.as_ref().ok_or(RuntimeError::InvalidSpec {
            field: "tty",
            reason: "the exec has no terminal".into(),
        })?;
        warren_sys::term::set_window_size(pty.as_fd(), rows, cols)
            .map_err(RuntimeError::sys("resize terminal"))
    }

    /// The control connection: readable when the exit report arrives.
    pub fn control_fd(&self) -> BorrowedFd<'_> {
        self.inner.fd()
    }
}
