//! What filesystem snapshots and image mounts need from a running sandbox:
//! its writable layer or one of its directories, read while it is frozen,
//! and a read-only image mounted into its mount namespace.
//!
//! - The writable layer is `<state>/upper`, or, with a disk limit, the
//!   tmpfs init mounted inside the sandbox's mount namespace, which no host
//!   path reaches after `pivot_root`: init keeps an `O_PATH` descriptor of
//!   it at [`warren_proto::DISK_UPPER_FD`] and the node reopens that
//!   through `/proc/<init>/fd/`.
//! - A directory of the merged view is opened from `/proc/<init>/root`
//!   with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`: the tenant's
//!   symlinks resolve inside the sandbox's root, never to host paths.
//! - Freezing uses the sandbox's cgroup freezer; a guard thaws on every
//!   exit path (errors and panics included). Freezing is bounded by the
//!   cgroup's freeze timeout.
//! - Image mounts into a running sandbox: the host builds a detached,
//!   idmapped, read-only tree (`open_tree` + `mount_setattr`), then a
//!   short-lived thread unshares its filesystem context, joins the
//!   sandbox's mount namespace (`setns` is per thread once `CLONE_FS` is
//!   unshared), resolves or creates the mount point inside the sandbox's
//!   root (as [`warren_sys::mount::open_mount_point`] does: no symlink
//!   leads out, no mount on proc/sys/devpts/cgroup) and `move_mount`s the
//!   tree there. The thread ends right after, so no thread of the node
//!   stays in a sandbox's namespace.
//!
//! Every `/proc/<init>` descriptor is opened and then checked against
//! init's pidfd, so a recycled pid cannot redirect anything.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::fcntl::{open, openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;
use warren_proto::ImageMountSpec;

use super::{NativeRuntime, Sandbox, IDS_PER_SANDBOX};
use crate::{ImageMount, RuntimeError, SandboxId};

/// Checks the image mounts of a create and turns them into init's form.
pub(super) fn image_mount_specs(
    mounts: &[ImageMount],
) -> Result<Vec<ImageMountSpec>, RuntimeError> {
    mounts
        .iter()
        .map(|m| {
            validate_mount_target(&m.target)?;
            Ok(ImageMountSpec {
                source: super::path_str(&m.source)?,
                target: m.target.clone(),
            })
        })
        .collect()
}

/// A mount target: absolute, no `..`, no NUL, not `/` itself.
pub fn validate_mount_target(target: &str) -> Result<(), RuntimeError> {
    let bad = |reason: &str| RuntimeError::InvalidSpec {
        field: "path",
        reason: format!("{target:?}: {reason}"),
    };
    if !target.starts_with('/') {
        return Err(bad("must be absolute"));
    }
    if target.contains('\0') || target.len() > 4096 {
        return Err(bad("must be at most 4096 bytes without NUL"));
    }
    if target.split('/').any(|c| c == "..") {
        return Err(bad("must not contain '..'"));
    }
    if target.split('/').all(|c| c.is_empty() || c == ".") {
        return Err(bad("must not be the root"));
    }
    Ok(())
}

/// Thaws the sandbox when asked to ([`Thaw::thaw`], for callers done
/// reading before they are done), and at the latest when dropped.
pub struct Thaw<'a> {
    sb: &'a Sandbox,
    done: std::cell::Cell<bool>,
}

impl Thaw<'_> {
    /// Thaws now (idempotent).
    pub fn thaw(&self) {
        if self.done.replace(true) {
            return;
        }
        if let Err(e) = self.sb.cgroup.thaw() {
            tracing::error!(sandbox_id = %self.sb.id, error = %e, "thawing after a snapshot failed");
        }
    }
}

impl Drop for Thaw<'_> {
    fn drop(&mut self) {
        self.thaw();
    }
}

impl NativeRuntime {
    /// The sandbox's host id range: (host id of its root, count).
    pub fn id_range(&self, id: &SandboxId) -> Result<(u32, u32), RuntimeError> {
        let sb = self.get(id)?;
        Ok((self.host_id_base(sb.slot), IDS_PER_SANDBOX))
    }

    fn running(&self, id: &SandboxId) -> Result<std::sync::Arc<Sandbox>, RuntimeError> {
        let sb = self.get(id)?;
        if sb.exit.lock().expect("exit lock poisoned").is_some() || !alive(&sb) {
            return Err(RuntimeError::NotRunning { id: id.to_string() });
        }
        Ok(sb)
    }

    /// Runs `f` with the sandbox frozen, giving it a directory descriptor
    /// of the sandbox's overlay upper dir (its writable layer), the host
    /// id of the sandbox's root, and a [`Thaw`] to let the sandbox run
    /// again as soon as `f` has read what it needs. The sandbox is thawed
    /// at the latest when `f` returns, whatever happens (error or panic in
    /// `f` included), and keeps running.
    pub fn with_frozen_upper<T>(
        &self,
        id: &SandboxId,
        f: impl FnOnce(BorrowedFd<'_>, u32, &Thaw<'_>) -> T,
    ) -> Result<T, RuntimeError> {
        let sb = self.running(id)?;
        let base = self.host_id_base(sb.slot);
        let upper = self.open_upper(&sb)?;
        sb.cgroup.freeze()?;
        let thaw = Thaw {
            sb: &sb,
            done: false.into(),
        };
        Ok(f(upper.as_fd(), base, &thaw))
    }

    /// Runs `f` with the sandbox frozen, giving it a directory descriptor
    /// of `path` in the sandbox's merged root (resolved inside that root),
    /// the host id of the sandbox's root and a [`Thaw`]. Thawed at the
    /// latest when `f` returns, always.
    pub fn with_frozen_dir<T>(
        &self,
        id: &SandboxId,
        path: &str,
        f: impl FnOnce(BorrowedFd<'_>, u32, &Thaw<'_>) -> T,
    ) -> Result<T, RuntimeError> {
        if !path.starts_with('/') || path.contains('\0') {
            return Err(RuntimeError::InvalidSpec {
                field: "path",
                reason: format!("{path:?} must be an absolute path"),
            });
        }
        let sb = self.running(id)?;
        let base = self.host_id_base(sb.slot);
        sb.cgroup.freeze()?;
        let thaw = Thaw {
            sb: &sb,
            done: false.into(),
        };
        let root = self.open_root(&sb)?;
        let how = OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        let dir = openat2(&root, path, how).map_err(|e| match e {
            nix::errno::Errno::ENOENT | nix::errno::Errno::ENOTDIR => RuntimeError::InvalidSpec {
                field: "path",
                reason: format!("{path:?} is not a directory in the sandbox"),
            },
            e => RuntimeError::Sys {
                op: "open the directory in the sandbox",
                source: e,
            },
        })?;
        if warren_sys::mount::is_kernel_fs(dir.as_fd()).unwrap_or(true) {
            return Err(RuntimeError::InvalidSpec {
                field: "path",
                reason: format!("{path:?} is on a kernel filesystem (proc, sys, devpts, cgroup)"),
            });
        }
        Ok(f(dir.as_fd(), base, &thaw))
    }

    /// Mounts the host directory `tree` (an image's tree) read-only,
    /// idmapped to the sandbox's ids, nosuid and nodev, at `target` inside
    /// the running sandbox, creating the mount point if missing.
    pub fn mount_image(
        &self,
        id: &SandboxId,
        tree: &Path,
        target: &str,
    ) -> Result<(), RuntimeError> {
        validate_mount_target(target)?;
        let sb = self.running(id)?;
        let base = self.host_id_base(sb.slot);
        let proc_fd = |what: &str| -> Result<OwnedFd, RuntimeError> {
            let path = format!("/proc/{}/{what}", sb.init_pid);
            let fd = File::open(&path).map_err(RuntimeError::prepare(&path))?;
            Ok(OwnedFd::from(fd))
        };
        let userns = proc_fd("ns/user")?;
        let mntns = proc_fd("ns/mnt")?;
        let root = self.open_root(&sb)?;
        if !alive(&sb) {
            return Err(RuntimeError::NotRunning { id: id.to_string() });
        }
        let tree = warren_sys::mount::open_tree_clone(tree, false)
            .map_err(RuntimeError::sys("open_tree image"))?;
        let attrs = warren_sys::mount::TreeAttrs {
            readonly: true,
            nosuid: true,
            nodev: true,
            idmap: Some(userns.as_fd()),
        };
        warren_sys::mount::set_tree_attrs(tree.as_fd(), attrs, false)
            .map_err(RuntimeError::sys("mount_setattr image (idmap)"))?;
        let target = target.to_string();
        let joined = std::thread::Builder::new()
            .name("warren-mount".into())
            .spawn(move || -> Result<(), RuntimeError> {
                // This thread only: its own fs context, then the sandbox's
                // mount namespace. It exits right after.
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS)
                    .map_err(RuntimeError::sys("unshare(CLONE_FS)"))?;
                nix::sched::setns(&mntns, nix::sched::CloneFlags::CLONE_NEWNS)
                    .map_err(RuntimeError::sys("setns(mnt)"))?;
                let point =
                    warren_sys::mount::open_mount_point(root.as_fd(), &target, (base, base))
                        .map_err(|e| match e {
                            nix::errno::Errno::EPERM
                            | nix::errno::Errno::ENOTDIR
                            | nix::errno::Errno::ELOOP
                            | nix::errno::Errno::EXDEV
                            | nix::errno::Errno::EINVAL => RuntimeError::InvalidSpec {
                                field: "path",
                                reason: format!(
                                    "{target:?} cannot be a mount point in the sandbox ({})",
                                    e.desc()
                                ),
                            },
                            e => RuntimeError::Sys {
                                op: "create the mount point",
                                source: e,
                            },
                        })?;
                warren_sys::mount::move_mount_to_fd(tree.as_fd(), point.as_fd())
                    .map_err(RuntimeError::sys("move_mount image"))
            })
            .map_err(RuntimeError::prepare("mount thread"))?
            .join();
        match joined {
            Ok(r) => r,
            Err(_) => Err(RuntimeError::Sys {
                op: "mount thread",
                source: nix::errno::Errno::EIO,
            }),
        }
    }

    /// The writable layer's directory (see the module docs).
    fn open_upper(&self, sb: &Sandbox) -> Result<OwnedFd, RuntimeError> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let kept = format!("/proc/{}/fd/{}", sb.init_pid, warren_proto::DISK_UPPER_FD);
        let fd = match open(kept.as_str(), flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(nix::errno::Errno::ENOENT) => {
                // No kept descriptor: fine for an upper on the host, but a
                // disk-limited sandbox whose init predates it would give
                // the empty host `upper/`; refuse that one.
                if root_upper_is_disk(sb.init_pid) {
                    return Err(RuntimeError::InvalidSpec {
                        field: "disk",
                        reason: "this disk-limited sandbox was created by an older node; \
                                 its writable layer cannot be reached (recreate it)"
                            .into(),
                    });
                }
                let upper = sb.dir.join("upper");
                open(&upper, flags | OFlag::O_NOFOLLOW, Mode::empty())
                    .map_err(|e| RuntimeError::prepare(&upper)(e.into()))?
            }
            Err(e) => return Err(RuntimeError::prepare(&kept)(e.into())),
        };
        if !alive(sb) {
            return Err(RuntimeError::NotRunning {
                id: sb.id.to_string(),
            });
        }
        Ok(fd)
    }

    /// `/proc/<init>/root`: the sandbox's root directory.
    fn open_root(&self, sb: &Sandbox) -> Result<OwnedFd, RuntimeError> {
        let path = format!("/proc/{}/root", sb.init_pid);
        let fd = open(
            path.as_str(),
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| RuntimeError::prepare(&path)(e.into()))?;
        if !alive(sb) {
            return Err(RuntimeError::NotRunning {
                id: sb.id.to_string(),
            });
        }
        Ok(fd)
    }
}

/// Whether the sandbox's root overlay has its upper dir on the disk-limit
/// tmpfs (`upperdir=disk/upper`, as init mounts it), from init's
/// mountinfo.
fn root_upper_is_disk(init_pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{init_pid}/mountinfo"))
        .map(|m| {
            m.lines().any(|l| {
                l.split(' ').nth(4) == Some("/")
                    && l.contains(" - overlay ")
                    && l.contains("upperdir=disk/upper")
            })
        })
        .unwrap_or(false)
}

/// Whether init (so the pid the paths above name) is still alive.
fn alive(sb: &Sandbox) -> bool {
    matches!(
        warren_sys::pidfd::poll_exit(sb.pidfd.as_fd(), Some(std::time::Duration::ZERO)),
        Ok(false)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_targets_are_checked() {
        assert!(validate_mount_target("/data").is_ok());
        assert!(validate_mount_target("/a/b/c").is_ok());
        for bad in ["", "data", "/", "//.", "/a/../b", "/a\0b"] {
            assert!(validate_mount_target(bad).is_err(), "{bad:?}");
        }
    }
}
