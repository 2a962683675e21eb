//! Process attributes set through prctl and friends.

use crate::{Errno, Result};

/// Drops `cap` from the calling thread's capability bounding set.
pub fn drop_bounding_cap(cap: u32) -> Result<()> {
    // SAFETY: PR_CAPBSET_DROP takes a capability number.
    let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
    if rc < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// Clears the ambient capability set.
pub fn clear_ambient_caps() -> Result<()> {
    // SAFETY: PR_CAP_AMBIENT_CLEAR_ALL takes no pointers.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    if rc < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// `fork(2)`: `Ok(Some(child pid))` in the parent, `Ok(None)` in the child.
///
/// Only for single-threaded callers (sandbox init): after a fork in a
/// multi-threaded process the child may only run async-signal-safe code.
pub fn fork_single_threaded() -> Result<Option<libc::pid_t>> {
    // SAFETY: callers are single-threaded (documented contract), so the
    // child owns a consistent copy of every lock and allocator state.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(Errno::last()),
        0 => Ok(None),
        pid => Ok(Some(pid)),
    }
}
