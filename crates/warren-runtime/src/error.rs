//! Runtime errors, named for the operation that failed, each with a stable code.

use std::path::PathBuf;

/// Errors from the runtime. `code()` gives the stable, documented error code
/// that the API layer returns to clients.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("invalid {field}: {reason}")]
    InvalidSpec { field: &'static str, reason: String },
    #[error("sandbox {id} already exists")]
    AlreadyExists { id: String },
    #[error("sandbox {id} not found")]
    NotFound { id: String },
    #[error("sandbox {id} is not running")]
    NotRunning { id: String },
    #[error("no free host id range for another sandbox ({slots} in use)")]
    IdRangesExhausted { slots: u32 },
    #[error("host id {id} ({entry} in {file}) lies inside the sandboxes' id ranges; move the ranges (id_base) or that entry")]
    IdRangeConflict {
        file: PathBuf,
        entry: String,
        id: u64,
    },
    #[error("could not prepare {path}")]
    PrepareState {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cgroup setup failed")]
    Cgroup(#[from] warren_cgroup::CgroupError),
    #[error("{op} failed")]
    Sys {
        op: &'static str,
        #[source]
        source: nix::errno::Errno,
    },
    #[error("sandbox init failed at step {step}: {message}")]
    InitSetup {
        step: String,
        errno: Option<i32>,
        message: String,
    },
    #[error("sandbox init did not answer within {secs}s")]
    InitTimeout { secs: u64 },
    #[error("lost contact with sandbox init")]
    InitGone,
    #[error("init protocol error")]
    Protocol(#[from] warren_proto::ProtoError),
    #[error("exec failed ({code}): {message}")]
    Exec {
        code: String,
        errno: Option<i32>,
        message: String,
    },
    #[error("sandbox networking failed")]
    Network(#[from] warren_net::NetError),
    #[error("snapshot is corrupt: {reason}")]
    SnapshotCorrupt { reason: String },
    #[error("snapshots are unavailable: {reason}")]
    SnapshotUnsupported { reason: String },
    #[error("criu {op} failed ({status}); its log:\n{log}")]
    Criu {
        op: &'static str,
        status: String,
        log: String,
    },
    #[error("could not remove {path}")]
    Cleanup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl RuntimeError {
    /// Stable, documented error code.
    pub fn code(&self) -> &str {
        match self {
            RuntimeError::InvalidSpec { .. } => "invalid_argument",
            RuntimeError::AlreadyExists { .. } => "sandbox_exists",
            RuntimeError::NotFound { .. } => "sandbox_not_found",
            RuntimeError::NotRunning { .. } => "sandbox_not_running",
            RuntimeError::IdRangesExhausted { .. } => "capacity_exhausted",
            RuntimeError::IdRangeConflict { .. } => "id_range_conflict",
            RuntimeError::PrepareState { .. } => "sandbox_setup_failed",
            RuntimeError::Cgroup(_) => "cgroup_failed",
            RuntimeError::Sys { .. } => "system_error",
            RuntimeError::InitSetup { .. } => "sandbox_setup_failed",
            RuntimeError::InitTimeout { .. } => "sandbox_setup_timeout",
            RuntimeError::InitGone => "sandbox_unreachable",
            RuntimeError::Protocol(_) => "protocol_error",
            RuntimeError::Exec { code, .. } => code,
            RuntimeError::Network(warren_net::NetError::AddressesExhausted { .. }) => {
                "capacity_exhausted"
            }
            RuntimeError::Network(_) => "network_failed",
            RuntimeError::Cleanup { .. } => "cleanup_failed",
            RuntimeError::SnapshotCorrupt { .. } => "snapshot_corrupt",
            RuntimeError::SnapshotUnsupported { .. } => "snapshot_unavailable",
            RuntimeError::Criu { .. } => "snapshot_failed",
        }
    }

    pub(crate) fn sys(op: &'static str) -> impl FnOnce(nix::errno::Errno) -> RuntimeError {
        move |source| RuntimeError::Sys { op, source }
    }

    pub(crate) fn prepare(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> RuntimeError {
        let path = path.into();
        move |source| RuntimeError::PrepareState { path, source }
    }
}
