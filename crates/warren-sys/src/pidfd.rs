//! pidfds: race-free handles on processes (no pid reuse confusion).

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

use crate::{Errno, Result};

/// How a waited-for process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitStatus {
    Exited(i32),
    Signaled(i32),
}

/// Opens a pidfd for an existing process (it need not be our child).
pub fn open(pid: libc::pid_t) -> Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the kernel returned a fresh descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Duplicates descriptor `target_fd` of the process behind `pidfd` into
/// this process (`pidfd_getfd`, Linux 5.6): the same open file, with its
/// flags and offset, close-on-exec here. Nothing is opened, so nothing of
/// the file's opening (a device's open, a path lookup) happens again.
pub fn get_fd(pidfd: BorrowedFd<'_>, target_fd: i32) -> Result<OwnedFd> {
    // SAFETY: pidfd_getfd takes a pidfd, a descriptor number and flags (0)
    // and returns a new descriptor or -1; no memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target_fd, 0) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the kernel returned a fresh descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Sends `signal` to the process behind `pidfd`.
pub fn send_signal(pidfd: BorrowedFd<'_>, signal: i32) -> Result<()> {
    // SAFETY: pidfd_send_signal with a null siginfo and no flags.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// Waits until the process has exited: `Ok(true)` when it has, `Ok(false)` on
/// timeout (`None` waits forever). Works for processes that are not our child.
pub fn poll_exit(pidfd: BorrowedFd<'_>, timeout: Option<Duration>) -> Result<bool> {
    let ms: i32 = match timeout {
        None => -1,
        Some(d) => d.as_millis().min(i32::MAX as u128) as i32,
    };
    let mut pfd = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let e = Errno::last();
            if e == Errno::EINTR {
                continue;
            }
            return Err(e);
        }
        return Ok(rc > 0);
    }
}

/// Reaps our child behind `pidfd`, blocking until it exits.
/// Returns `ECHILD` if the process is not our child.
pub fn wait_exit(pidfd: BorrowedFd<'_>) -> Result<WaitStatus> {
    waitid(pidfd, 0)?.ok_or(Errno::EAGAIN)
}

/// Reaps our child behind `pidfd` if it has exited; `Ok(None)` if still running.
pub fn try_wait_exit(pidfd: BorrowedFd<'_>) -> Result<Option<WaitStatus>> {
    waitid(pidfd, libc::WNOHANG)
}

fn waitid(pidfd: BorrowedFd<'_>, extra: libc::c_int) -> Result<Option<WaitStatus>> {
    let mut info = std::mem::MaybeUninit::<libc::siginfo_t>::zeroed();
    loop {
        // SAFETY: P_PIDFD waitid with a valid siginfo buffer.
        let rc = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                pidfd.as_raw_fd() as libc::id_t,
                info.as_mut_ptr(),
                libc::WEXITED | extra,
            )
        };
        if rc < 0 {
            let e = Errno::last();
            if e == Errno::EINTR {
                continue;
            }
            return Err(e);
        }
        break;
    }
    // SAFETY: zero-initialised and filled by waitid.
    let info = unsafe { info.assume_init() };
    // SAFETY: reading the pid/status union members of a waitid siginfo.
    let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
    if pid == 0 {
        return Ok(None);
    }
    Ok(Some(match info.si_code {
        libc::CLD_EXITED => WaitStatus::Exited(status),
        _ => WaitStatus::Signaled(status),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn inode(fd: BorrowedFd<'_>) -> u64 {
        nix::sys::stat::fstat(fd).expect("fstat").st_ino
    }

    /// A duplicate from a process's table is the same open file.
    #[test]
    fn get_fd_duplicates_the_same_file() {
        let (r, w) = nix::unistd::pipe().expect("pipe");
        let me = open(std::process::id() as i32).expect("pidfd_open");
        let dup = get_fd(me.as_fd(), w.as_raw_fd()).expect("pidfd_getfd");
        assert_ne!(dup.as_raw_fd(), w.as_raw_fd());
        assert_eq!(inode(dup.as_fd()), inode(r.as_fd()));
        // Writing through the duplicate reaches the pipe.
        nix::unistd::write(&dup, b"x").expect("write");
        let mut b = [0u8; 1];
        assert_eq!(nix::unistd::read(&r, &mut b).expect("read"), 1);
        assert_eq!(get_fd(me.as_fd(), 1 << 20).err(), Some(Errno::EBADF));
    }
}
