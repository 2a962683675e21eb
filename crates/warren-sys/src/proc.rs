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

/// Resets the calling thread's signal mask to empty.
pub fn unblock_all_signals() -> Result<()> {
    nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    )
}

/// Registers `f` to run in the child between fork and exec, after checking
/// that the calling process has exactly one thread. In a single-threaded
/// process the forked child is an exact copy with no lock held by another
/// thread, so `f` may allocate and call anything; the check is what makes
/// this wrapper safe (warren-init is single-threaded by design).
pub fn pre_exec_single_threaded<F>(
    cmd: &mut std::process::Command,
    f: F,
) -> std::io::Result<&mut std::process::Command>
where
    F: FnMut() -> std::io::Result<()> + Send + Sync + 'static,
{
    use std::os::unix::process::CommandExt;
    let threads = std::fs::read_dir("/proc/self/task")?.count();
    if threads != 1 {
        return Err(std::io::Error::other(format!(
            "pre_exec needs a single-threaded process, found {threads} threads"
        )));
    }
    // SAFETY: the process is single-threaded (checked above), so the child
    // created by fork cannot deadlock on a lock held by another thread, which
    // is the hazard `pre_exec` documents.
    Ok(unsafe { cmd.pre_exec(f) })
}
