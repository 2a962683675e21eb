//! File-descriptor helpers: sealed memfds and closing inherited descriptors.

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::{Errno, Result};

/// Copies `bytes_from` (a file) into a new memfd named `name`, then seals it
/// against every change (write, grow, shrink, further sealing). The result is
/// an executable image that no process can modify: code in a sandbox that
/// reaches it through `/proc/<pid>/exe` cannot overwrite the host binary
/// (the runc CVE-2019-5736 class).
pub fn sealed_memfd_copy(name: &std::ffi::CStr, source: &std::path::Path) -> Result<OwnedFd> {
    // SAFETY: memfd_create with a valid C string; returns a new fd or -1.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: fresh descriptor from memfd_create, owned from here on.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut src = std::fs::File::open(source).map_err(crate::clone::io_errno)?;
    let mut dst = std::fs::File::from(fd);
    // A plain read/write loop: `std::io::copy` may splice, and pages still
    // referenced by an in-flight splice make `F_SEAL_WRITE` fail with EBUSY.
    let mut buf = vec![0u8; 1 << 20];
    loop {
        use std::io::Read;
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(crate::clone::io_errno(e)),
        };
        dst.write_all(&buf[..n]).map_err(crate::clone::io_errno)?;
    }
    dst.flush().map_err(crate::clone::io_errno)?;
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // The kernel refuses the write seal (EBUSY) while something still holds
    // a transient reference to the file's pages; it clears quickly.
    for attempt in 0..20 {
        // SAFETY: F_ADD_SEALS on a memfd we own.
        let rc = unsafe { libc::fcntl(dst.as_raw_fd(), libc::F_ADD_SEALS, seals) };
        if rc == 0 {
            return Ok(OwnedFd::from(dst));
        }
        let e = Errno::last();
        if e != Errno::EBUSY || attempt == 19 {
            return Err(e);
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    Err(Errno::EBUSY)
}

/// Returns the seals set on a memfd.
pub fn seals(fd: &OwnedFd) -> Result<i32> {
    // SAFETY: F_GET_SEALS on a valid descriptor.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    if rc < 0 {
        return Err(Errno::last());
    }
    Ok(rc)
}

/// Closes every descriptor numbered `first` or above (close_range(2)).
pub fn close_from(first: u32) -> Result<()> {
    // SAFETY: close_range on a numeric range; closing descriptors we do not
    // use is the point. Callers guarantee no live OwnedFd is in that range.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0) };
    if rc < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// Takes ownership of a descriptor number inherited at exec time (for
/// example the bootstrap socket the runtime installs at fd 3 of init).
///
/// Contract: call it once per number, at process start, before anything else
/// could have wrapped that number. It checks that the descriptor is open.
pub fn adopt_inherited(fd: i32) -> Result<OwnedFd> {
    // SAFETY: F_GETFD only queries the descriptor's flags.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the descriptor is open and, per the contract above, unowned.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Points descriptors 0, 1 and 2 at `/dev/null`.
pub fn stdio_to_dev_null() -> Result<()> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(crate::clone::io_errno)?;
    for target in 0..3 {
        // SAFETY: dup2 onto the standard descriptor numbers, which this
        // process owns by convention; any previous file there is replaced.
        if unsafe { libc::dup2(null.as_raw_fd(), target) } < 0 {
            return Err(Errno::last());
        }
    }
    Ok(())
}

/// Duplicates `fd` onto the descriptor number `target` (close-on-exec) and
/// leaves it open for the rest of the process's life: a descriptor kept at
/// a well-known number for another process to reach through
/// `/proc/<pid>/fd/<target>`. Whatever `target` was before is closed.
pub fn keep_at(fd: OwnedFd, target: i32) -> Result<()> {
    if target < 3 {
        return Err(Errno::EINVAL);
    }
    // SAFETY: dup3(2) on a descriptor we own; the new number is not wrapped
    // in an owner, so nothing in this process closes it (that is the point).
    let rc = unsafe { libc::dup3(fd.as_raw_fd(), target, libc::O_CLOEXEC) };
    if rc < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// Like [`keep_at`], but the descriptor at `target` survives `execve` (no
/// close-on-exec): for handing descriptors to a program at fixed numbers.
pub fn keep_at_inheritable(fd: OwnedFd, target: i32) -> Result<()> {
    if target < 3 {
        return Err(Errno::EINVAL);
    }
    if fd.as_raw_fd() == target {
        // dup3 refuses equal numbers; clear the flag in place instead.
        // SAFETY: fcntl(2) F_SETFD on a descriptor we own, then released
        // from its owner so that it stays open.
        let rc = unsafe { libc::fcntl(target, libc::F_SETFD, 0) };
        if rc < 0 {
            return Err(Errno::last());
        }
        std::mem::forget(fd);
        return Ok(());
    }
    // SAFETY: dup3(2) on a descriptor we own; the new number is not wrapped
    // in an owner, so nothing in this process closes it.
    let rc = unsafe { libc::dup3(fd.as_raw_fd(), target, 0) };
    if rc < 0 {
        return Err(Errno::last());
    }
    Ok(())
}
