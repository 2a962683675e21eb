//! warren-sys: the one crate in Warren that contains `unsafe`.
//!
//! Purpose: thin, safe wrappers around the Linux system calls the sandbox
//! runtime and the in-sandbox init need and that `nix`/`std` do not offer
//! (or offer only in a form that allocates where allocation is forbidden):
//! `clone` into new namespaces followed by `execveat` of a sealed memfd,
//! a `posix_spawn`-style `clone(CLONE_VM | CLONE_VFORK)` spawn for init's
//! workloads, pidfds, the new mount API (`open_tree`, `mount_setattr` with idmaps,
//! `move_mount`), terminal ioctls, a few `prctl`s, and installing a prepared seccomp-BPF
//! program (in the calling thread or in a spawned child before `execve`).
//!
//! Invariants:
//! - every `unsafe` block carries a `// SAFETY:` comment saying why it is sound;
//! - every wrapper returns owned file descriptors (`OwnedFd`) so nothing leaks;
//! - nothing here decides policy: callers choose flags, ids and paths.
//!
//! Must not: log, allocate between `clone` and `execveat`, or hold global state.

#[cfg(feature = "tokio")]
pub mod asyncfd;
pub mod clone;
pub mod fd;
pub mod mount;
pub mod net;
pub mod pidfd;
pub mod proc;
pub mod seccomp;
pub mod socket;
pub mod spawn;
pub mod term;

pub use nix::errno::Errno;

/// Result type of this crate: failures are raw `errno` values; callers add context.
pub type Result<T> = std::result::Result<T, Errno>;
