//! The new mount API: detached bind trees, idmapped mounts, attaching them.

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::{Errno, Result};

// Constants from <linux/mount.h>; stable kernel ABI.
const OPEN_TREE_CLONE: libc::c_uint = 1;
const OPEN_TREE_CLOEXEC: libc::c_uint = libc::O_CLOEXEC as libc::c_uint;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x0000_0004;
const MOUNT_ATTR_RDONLY: u64 = 0x0000_0001;
const MOUNT_ATTR_NOSUID: u64 = 0x0000_0002;
const MOUNT_ATTR_NODEV: u64 = 0x0000_0004;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Attributes to set on a detached tree.
#[derive(Debug, Clone, Copy, Default)]
pub struct TreeAttrs<'a> {
    pub readonly: bool,
    pub nosuid: bool,
    pub nodev: bool,
    /// Map ownership through this user namespace (idmapped mount).
    pub idmap: Option<BorrowedFd<'a>>,
}

fn cpath(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)
}

/// Clones the mount tree at `path` (recursively when `recursive`) into a new,
/// detached mount and returns a descriptor for it.
pub fn open_tree_clone(path: &Path, recursive: bool) -> Result<OwnedFd> {
    let c = cpath(path)?;
    let mut flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= AT_RECURSIVE;
    }
    // SAFETY: open_tree(2) with a valid NUL-terminated path; returns a new fd.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c.as_ptr(), flags) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: a fresh descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Sets attributes (read-only, nosuid, nodev, idmap) on a detached tree.
pub fn set_tree_attrs(tree: BorrowedFd<'_>, attrs: TreeAttrs<'_>, recursive: bool) -> Result<()> {
    let mut set = 0;
    if attrs.readonly {
        set |= MOUNT_ATTR_RDONLY;
    }
    if attrs.nosuid {
        set |= MOUNT_ATTR_NOSUID;
    }
    if attrs.nodev {
        set |= MOUNT_ATTR_NODEV;
    }
    let mut a = MountAttr {
        attr_set: set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    if let Some(ns) = attrs.idmap {
        a.attr_set |= MOUNT_ATTR_IDMAP;
        a.userns_fd = ns.as_raw_fd() as u64;
    }
    let flags = libc::AT_EMPTY_PATH as libc::c_uint | if recursive { AT_RECURSIVE } else { 0 };
    // SAFETY: mount_setattr(2) on a tree fd with an empty path and a pointer to
    // a live, correctly sized mount_attr.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &a as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// Attaches a detached tree at `target`.
pub fn move_mount_to(tree: BorrowedFd<'_>, target: &Path) -> Result<()> {
    let c = cpath(target)?;
    // SAFETY: move_mount(2) from a tree fd (empty path) to a valid target path.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            c.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// Binds `source` at `target` through a detached clone, applying `attrs`
/// (including an optional idmap) before the tree becomes visible.
pub fn bind_with_attrs(
    source: &Path,
    target: &Path,
    attrs: TreeAttrs<'_>,
    recursive: bool,
) -> Result<()> {
    let tree = open_tree_clone(source, recursive)?;
    use std::os::fd::AsFd;
    set_tree_attrs(tree.as_fd(), attrs, recursive)?;
    move_mount_to(tree.as_fd(), target)
}
