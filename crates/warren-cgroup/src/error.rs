//! The error type of this crate.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Errors from cgroup operations. Each variant is named for the operation
/// that failed and carries the path it failed on.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A sandbox or parent name is not acceptable.
    #[error("invalid cgroup name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },

    /// A limit is out of range.
    #[error("invalid cgroup limits: {reason}")]
    InvalidLimits { reason: String },

    /// The cgroup root could not be resolved.
    #[error("cannot access cgroup root {path}")]
    AccessRoot {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The mount table could not be read.
    #[error("failed to read mount table {path}")]
    ReadMountinfo {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// `mkdir` of a cgroup directory failed.
    #[error("failed to create cgroup directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// Listing a cgroup directory failed.
    #[error("failed to list cgroup directory {path}")]
    ListDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// `rmdir` of a cgroup directory failed for a reason other than busy.
    #[error("failed to remove cgroup directory {path}")]
    RemoveDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// Writing a control file failed.
    #[error("failed to write {value:?} to {path}")]
    WriteFile {
        path: PathBuf,
        value: String,
        #[source]
        source: io::Error,
    },

    /// Reading a control file failed.
    #[error("failed to read {path}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A control file held something unexpected.
    #[error("failed to parse {path}: {reason}")]
    Parse { path: PathBuf, reason: String },

    /// Sending a signal to a process of the group failed.
    #[error("failed to signal process {pid}")]
    Signal {
        pid: i32,
        #[source]
        source: io::Error,
    },

    /// The group still holds processes (or child groups) after the bounded
    /// wait.
    #[error("cgroup {path} is still busy, processes {pids:?}, child groups {children:?}")]
    Busy {
        path: PathBuf,
        pids: Vec<i32>,
        children: Vec<String>,
    },

    /// On v2, the parent holds processes, so controllers cannot be enabled
    /// for its children (the no-internal-process rule).
    #[error("cgroup {path} holds processes {pids:?}, so it cannot delegate controllers")]
    ParentHasProcesses { path: PathBuf, pids: Vec<i32> },

    /// A state change did not complete within its bound.
    #[error("timed out after {waited:?} waiting for {what} in {path}")]
    Timeout {
        path: PathBuf,
        what: &'static str,
        waited: Duration,
    },

    /// The host lacks a controller or feature the operation needs.
    #[error("unsupported: {what}")]
    Unsupported { what: String },
}
