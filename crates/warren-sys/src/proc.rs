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
