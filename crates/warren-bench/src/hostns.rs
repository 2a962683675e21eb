//! The crun workaround for hybrid cgroup hosts, applied once per process.
//!
//! crun 1.8.1 refuses to run when `/sys/fs/cgroup/unified/cgroup.controllers`
//! lists any controller ("cgroups in hybrid mode not supported"); on hybrid
//! hosts it lists `hugetlb`. The usual workaround wraps every crun call in
//! `unshare -m ... mount --bind /dev/null ...`, which would add an extra exec
//! to every timed crun run. Instead the bench process itself moves into a
//! private mount namespace at startup and hides that file there, so crun
//! (and every other child) sees an empty controller list at no cost per run.
//!
//! Side effects, all confined to the bench's own mount namespace: `/` is made
//! recursively private, so nothing the bench or Warren mounts propagates to
//! the host; and runc, bwrap and Warren see the same masked file (none of them
//! needs it on a hybrid host, where the v1 hierarchies carry the controllers).

use std::path::Path;

use anyhow::{bail, Context, Result};
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};

pub const UNIFIED_CONTROLLERS: &str = "/sys/fs/cgroup/unified/cgroup.controllers";

/// Controllers that mean the unified hierarchy really manages resources (a
/// v2 host); with any of them listed, masking the file would be wrong.
const CORE_CONTROLLERS: &[&str] = &["cpu", "cpuset", "io", "memory", "pids"];

/// True when the unified hierarchy lists controllers, but only ones that are
/// not core resource controllers (the hybrid-host case crun rejects).
pub fn needs_mask(controllers: &str) -> bool {
    let mut listed = controllers.split_whitespace().peekable();
    if listed.peek().is_none() {
        return false;
    }
    listed.all(|c| !CORE_CONTROLLERS.contains(&c))
}

/// Enters a private mount namespace and, if needed, bind-mounts `/dev/null`
/// over the unified `cgroup.controllers`. Call before any thread starts:
/// `unshare(CLONE_NEWNS)` moves only the calling thread.
pub fn prepare_for_crun() -> Result<()> {
    ensure_single_threaded()?;
    let path = Path::new(UNIFIED_CONTROLLERS);
    let contents = match std::fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    };
    if !needs_mask(&contents) {
        return Ok(());
    }
    unshare(CloneFlags::CLONE_NEWNS).context("unshare(CLONE_NEWNS)")?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("make / rprivate in the bench's mount namespace")?;
    mount(
        Some("/dev/null"),
        path,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .with_context(|| format!("bind /dev/null over {}", path.display()))?;
    eprintln!(
        "note: hybrid cgroup host: the bench runs in a private mount namespace with {} \
         masked (lists '{}'), so crun runs unwrapped",
        path.display(),
        contents.trim()
    );
    Ok(())
}

fn ensure_single_threaded() -> Result<()> {
    let status = std::fs::read_to_string("/proc/self/status").context("read /proc/self/status")?;
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .map(str::trim)
        .unwrap_or("?");
    if threads != "1" {
        bail!("the crun workaround must run before any thread starts (threads: {threads})");
    }
    Ok(())
}

/// Moves the bench (this thread, before it starts any other) into a new
/// network namespace with `lo` up, so networked sandboxes' veths, nftables
/// table and `ip_forward` live there and vanish with the process.
pub fn private_network() -> Result<()> {
    unshare(CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET) for the bench")?;
    let status = std::process::Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .context("running ip link set lo up")?;
    if !status.success() {
        bail!("ip link set lo up failed in the bench's network namespace");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_only_on_hybrid_lists() {
        assert!(needs_mask("hugetlb\n"));
        assert!(needs_mask("hugetlb misc rdma"));
        assert!(!needs_mask(""));
        assert!(!needs_mask("\n"));
        assert!(!needs_mask("cpuset cpu io memory hugetlb pids rdma misc"));
        assert!(!needs_mask("hugetlb pids"));
    }
}
