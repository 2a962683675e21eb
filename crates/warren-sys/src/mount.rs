//! The new mount API: detached bind trees, idmapped mounts, attaching them.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
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
    set_tree_attrs(tree.as_fd(), attrs, recursive)?;
    move_mount_to(tree.as_fd(), target)
}

const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x0000_0040;

/// Attaches a detached tree onto the directory `target` refers to (an
/// `O_PATH` descriptor, typically from [`open_mount_point`]). The target
/// must be in the calling thread's mount namespace.
pub fn move_mount_to_fd(tree: BorrowedFd<'_>, target: BorrowedFd<'_>) -> Result<()> {
    // SAFETY: move_mount(2) from a tree fd to a target fd, both with empty
    // paths (NUL-terminated literals); no memory is handed to the kernel
    // beyond those strings.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            target.as_raw_fd(),
            c"".as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    if rc < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// Filesystems a mount point may not be on (`statfs` magic numbers):
/// proc, sysfs, devpts, cgroup v1/v2, tmpfs-backed `/dev` is allowed.
const FORBIDDEN_FS: &[i64] = &[0x9fa0, 0x6265_6572, 0x1cd1, 0x0027_e0eb, 0x6367_7270];

/// Opens (as `O_PATH`) the directory `path` inside the tree rooted at
/// `root`, resolving every component *inside* it (`RESOLVE_IN_ROOT`:
/// absolute symlinks and `..` stay below `root`; magic links are
/// refused), creating missing components as directories (mode 0755, owned
/// by `owner`) without following anything at the point of creation.
/// Refuses `..` components and targets on proc, sysfs, devpts or cgroup
/// filesystems (`EPERM`). `path` is absolute or relative to `root`.
pub fn open_mount_point(root: BorrowedFd<'_>, path: &str, owner: (u32, u32)) -> Result<OwnedFd> {
    use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
    use nix::sys::stat::{mkdirat, Mode};
    let comps: Vec<&str> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    if comps.contains(&"..") || path.contains('\0') {
        return Err(Errno::EINVAL);
    }
    let in_root = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let beneath = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        );
    let mut cur = openat2(root, ".", in_root)?;
    for i in 0..comps.len() {
        let prefix = comps[..=i].join("/");
        match openat2(root, prefix.as_str(), in_root) {
            Ok(fd) => {
                if is_kernel_fs(fd.as_fd())? {
                    return Err(Errno::EPERM);
                }
                cur = fd
            }
            Err(Errno::ENOENT) if is_kernel_fs(cur.as_fd())? => return Err(Errno::EPERM),
            Err(Errno::ENOENT) => {
                match mkdirat(&cur, comps[i], Mode::from_bits_truncate(0o755)) {
                    Ok(()) => {
                        nix::unistd::fchownat(
                            &cur,
                            comps[i],
                            Some(nix::unistd::Uid::from_raw(owner.0)),
                            Some(nix::unistd::Gid::from_raw(owner.1)),
                            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                        )?;
                    }
                    Err(Errno::EEXIST) => {}
                    Err(e) => return Err(e),
                }
                cur = openat2(&cur, comps[i], beneath)?;
            }
            Err(e) => return Err(e),
        }
    }
    if is_kernel_fs(cur.as_fd())? {
        return Err(Errno::EPERM);
    }
    Ok(cur)
}

/// Whether `fd` is on proc, sysfs, devpts or a cgroup filesystem (kernel
/// interfaces nothing should be mounted on or archived from).
pub fn is_kernel_fs(fd: BorrowedFd<'_>) -> Result<bool> {
    let fs = nix::sys::statfs::fstatfs(fd)?;
    #[allow(clippy::unnecessary_cast)]
    Ok(FORBIDDEN_FS.contains(&(fs.filesystem_type().0 as i64)))
}
