//! Spawning a process into new namespaces that immediately execs a binary
//! from a file descriptor (the sealed init memfd).
//!
//! The caller is a multi-threaded server, so the child may only run
//! async-signal-safe code between `clone` and `execveat`. Everything it needs
//! (argv/envp pointer arrays, the stack) is prepared before `clone`, and the
//! child only calls `dup2`/`fcntl`/`execveat`/`_exit` as raw system calls.
//! `CLONE_VM | CLONE_VFORK` makes the clone cost independent of the caller's
//! memory size (like `posix_spawn`): the parent is suspended until the child
//! has exec'd or exited.

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use crate::{Errno, Result};

/// Namespaces to create for the child.
#[derive(Debug, Clone, Copy, Default)]
pub struct Namespaces {
    pub mount: bool,
    pub pid: bool,
    pub uts: bool,
    pub ipc: bool,
    pub net: bool,
    pub cgroup: bool,
    pub user: bool,
}

impl Namespaces {
    fn flags(self) -> libc::c_int {
        let mut f = 0;
        if self.mount {
            f |= libc::CLONE_NEWNS;
        }
        if self.pid {
            f |= libc::CLONE_NEWPID;
        }
        if self.uts {
            f |= libc::CLONE_NEWUTS;
        }
        if self.ipc {
            f |= libc::CLONE_NEWIPC;
        }
        if self.net {
            f |= libc::CLONE_NEWNET;
        }
        if self.cgroup {
            f |= libc::CLONE_NEWCGROUP;
        }
        if self.user {
            f |= libc::CLONE_NEWUSER;
        }
        f
    }
}

/// A process started by [`spawn_exec_fd`].
#[derive(Debug)]
pub struct Spawned {
    /// Host pid of the child.
    pub pid: libc::pid_t,
    /// A pidfd for the child: pollable for exit, usable to signal it race-free.
    pub pidfd: OwnedFd,
}

struct ChildArgs {
    exec_fd: RawFd,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    /// (source fd, target fd) pairs to install in the child before exec.
    dups: [(RawFd, RawFd); 4],
    ndups: usize,
}

const STACK_SIZE: usize = 64 * 1024;

extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` points to the `ChildArgs` on the parent's stack; the parent
    // is suspended (CLONE_VFORK) until this child execs or exits, so it is live
    // and not mutated. Only raw, async-signal-safe syscalls follow.
    unsafe {
        let a = &*(arg as *const ChildArgs);
        for &(src, dst) in &a.dups[..a.ndups] {
            if src == dst {
                // Clear FD_CLOEXEC so the descriptor survives exec.
                if libc::syscall(libc::SYS_fcntl, src, libc::F_SETFD, 0) < 0 {
                    libc::syscall(libc::SYS_exit, 126);
                }
            } else if libc::syscall(libc::SYS_dup3, src, dst, 0) < 0 {
                libc::syscall(libc::SYS_exit, 126);
            }
        }
        let rc = libc::syscall(
            libc::SYS_execveat,
            a.exec_fd,
            c"".as_ptr(),
            a.argv,
            a.envp,
            libc::AT_EMPTY_PATH,
        );
        let _ = rc;
        libc::syscall(libc::SYS_exit, 127);
    }
    127
}

/// Clones a child in new namespaces that execs the binary behind `exec_fd`.
///
/// `fds` lists descriptors to install at fixed numbers in the child (for
/// example the bootstrap socket at 3). All other descriptors of the caller
/// must be close-on-exec (Rust's std opens everything that way).
/// The child starts with all signals blocked; it must reset its mask itself.
pub fn spawn_exec_fd(
    exec_fd: BorrowedFd<'_>,
    argv: &[&CStr],
    envp: &[CString],
    fds: &[(BorrowedFd<'_>, RawFd)],
    namespaces: Namespaces,
) -> Result<Spawned> {
    if fds.len() > 4 {
        return Err(Errno::E2BIG);
    }
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut envp_ptrs: Vec<*const libc::c_char> = envp.iter().map(|e| e.as_ptr()).collect();
    envp_ptrs.push(std::ptr::null());
    // The child installs descriptors at fixed numbers; a source (or the exec
    // fd) that already sits on one of those numbers would be overwritten
    // before use, so move such descriptors out of the way first.
    let targets: Vec<RawFd> = fds.iter().map(|(_, t)| *t).collect();
    let mut moved: Vec<OwnedFd> = Vec::new();
    let mut relocate = |fd: RawFd| -> Result<RawFd> {
        if !targets.contains(&fd) {
            return Ok(fd);
        }
        let floor = targets.iter().copied().max().unwrap_or(0) + 1;
        // SAFETY: F_DUPFD_CLOEXEC duplicates a live descriptor to a new number.
        let n = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, floor) };
        if n < 0 {
            return Err(Errno::last());
        }
        // SAFETY: a fresh descriptor we own; closed after the spawn.
        moved.push(unsafe { OwnedFd::from_raw_fd(n) });
        Ok(n)
    };
    let exec_raw = relocate(exec_fd.as_raw_fd())?;
    let mut dups = [(-1, -1); 4];
    for (i, (fd, target)) in fds.iter().enumerate() {
        let raw = fd.as_raw_fd();
        let src = if raw == *target { raw } else { relocate(raw)? };
        dups[i] = (src, *target);
    }
    let args = ChildArgs {
        exec_fd: exec_raw,
        argv: argv_ptrs.as_ptr(),
        envp: envp_ptrs.as_ptr(),
        dups,
        ndups: fds.len(),
    };
    let mut stack = vec![0u8; STACK_SIZE];
    // The stack grows down on every architecture we support; align the top.
    let top = (stack.as_mut_ptr() as usize + STACK_SIZE) & !15usize;
    let mut pidfd: libc::c_int = -1;
    let flags =
        namespaces.flags() | libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | libc::SIGCHLD;

    let all: libc::sigset_t = unsafe_sigset_full();
    let mut old: libc::sigset_t = unsafe_sigset_empty();
    // SAFETY: both sigset pointers are valid for the call; blocking every signal
    // in this thread keeps handlers from running in the vfork'ed child, which
    // shares our memory.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old) };
    if rc != 0 {
        return Err(Errno::from_raw(rc));
    }
    // SAFETY: `child_main` only performs raw syscalls; `top` is the aligned top
    // of a live, private stack of STACK_SIZE bytes; `args` and the pointer
    // arrays outlive the child's use of them because CLONE_VFORK suspends us
    // until the child execs or exits; `pidfd` receives the pidfd (CLONE_PIDFD).
    let pid = unsafe {
        libc::clone(
            child_main,
            top as *mut libc::c_void,
            flags,
            &args as *const ChildArgs as *mut libc::c_void,
            &mut pidfd as *mut libc::c_int,
        )
    };
    let err = Errno::last();
    // SAFETY: restores the mask saved above; `old` is a valid sigset.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    drop(stack);
    drop(moved);
    if pid < 0 {
        return Err(err);
    }
    // SAFETY: with CLONE_PIDFD the kernel stored a new, owned pidfd in `pidfd`.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    Ok(Spawned { pid, pidfd })
}

fn unsafe_sigset_full() -> libc::sigset_t {
    let mut s = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigfillset initialises the whole set it is given.
    unsafe {
        libc::sigfillset(s.as_mut_ptr());
        s.assume_init()
    }
}

fn unsafe_sigset_empty() -> libc::sigset_t {
    let mut s = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the whole set it is given.
    unsafe {
        libc::sigemptyset(s.as_mut_ptr());
        s.assume_init()
    }
}

/// Creates a user namespace with the given single-range uid and gid maps and
/// returns a descriptor for it. A helper child sharing our memory (so no page
/// tables are copied) is cloned into the new namespace; the maps are written
/// from here, the namespace file is opened, and the helper is killed and
/// reaped.
pub fn create_user_namespace(
    inside: u32,
    outside: u32,
    count: u32,
    allow_setgroups: bool,
) -> Result<OwnedFd> {
    let map = format!("{inside} {outside} {count}\n");
    namespace_via_helper(libc::CLONE_NEWUSER, "user", |pid| {
        let base = format!("/proc/{pid}");
        if !allow_setgroups {
            std::fs::write(format!("{base}/setgroups"), "deny").map_err(io_errno)?;
        }
        std::fs::write(format!("{base}/uid_map"), &map).map_err(io_errno)?;
        std::fs::write(format!("{base}/gid_map"), &map).map_err(io_errno)?;
        Ok(())
    })
}

/// Creates a network namespace (owned by the caller's user namespace, with
/// only a down `lo`) and returns a descriptor for it.
pub fn create_net_namespace() -> Result<OwnedFd> {
    namespace_via_helper(libc::CLONE_NEWNET, "net", |_| Ok(()))
}

/// Clones a helper into a new namespace of kind `flag`, lets `configure`
/// work on it by pid, opens `/proc/<pid>/ns/<name>`, then kills and reaps it.
fn namespace_via_helper(
    flag: libc::c_int,
    name: &str,
    configure: impl FnOnce(libc::pid_t) -> Result<()>,
) -> Result<OwnedFd> {
    const HELPER_STACK: usize = 16 * 1024;
    extern "C" fn helper(_arg: *mut libc::c_void) -> libc::c_int {
        // SAFETY: only raw syscalls on the helper's own stack: wait until
        // killed. pause(2) touches no shared memory.
        unsafe {
            loop {
                libc::syscall(libc::SYS_pause);
            }
        }
    }
    let mut stack = vec![0u8; HELPER_STACK];
    let top = (stack.as_mut_ptr() as usize + HELPER_STACK) & !15usize;
    let mut pidfd: libc::c_int = -1;
    let all = unsafe_sigset_full();
    let mut old = unsafe_sigset_empty();
    // SAFETY: valid sigset pointers; see spawn_exec_fd.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old) };
    // SAFETY: `helper` runs only raw syscalls on `stack`, which stays alive
    // until the helper has been killed and reaped below; CLONE_VM shares our
    // memory but the helper never reads or writes it; CLONE_PIDFD stores the
    // pidfd into `pidfd`.
    let pid = unsafe {
        libc::clone(
            helper,
            top as *mut libc::c_void,
            libc::CLONE_VM | flag | libc::CLONE_PIDFD | libc::SIGCHLD,
            std::ptr::null_mut(),
            &mut pidfd as *mut libc::c_int,
        )
    };
    let err = Errno::last();
    // SAFETY: restores the saved mask.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    if pid < 0 {
        return Err(err);
    }
    // SAFETY: CLONE_PIDFD stored a fresh owned pidfd.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    let result = configure(pid).and_then(|()| {
        let f = std::fs::File::open(format!("/proc/{pid}/ns/{name}")).map_err(io_errno)?;
        Ok(OwnedFd::from(f))
    });
    use std::os::fd::AsFd;
    let _ = crate::pidfd::send_signal(pidfd.as_fd(), libc::SIGKILL);
    let _ = crate::pidfd::wait_exit(pidfd.as_fd());
    // Only now is the helper gone and its stack free to release.
    drop(stack);
    result
}

pub(crate) fn io_errno(e: std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}
