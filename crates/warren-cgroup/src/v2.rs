//! The cgroup v2 backend: one directory in the unified hierarchy.

use std::path::{Path, PathBuf};

use crate::kernel::{self, Kernel};
use crate::manager::{Controller, GroupDir};
use crate::{CgroupError, CgroupLimits, CPU_PERIOD_US};

/// Creates `root/<parent>` and enables `controllers` in the subtree control
/// of the root and of every parent component, so sandbox groups get them.
pub(crate) fn prepare_parent(
    kernel: &dyn Kernel,
    root: &Path,
    parent: &str,
    controllers: &[Controller],
) -> Result<PathBuf, CgroupError> {
    // The root is exempt from the no-internal-process rule (unless it is a
    // namespace root, where the kernel reports EBUSY on the write).
    enable_controllers(kernel, root, controllers, false)?;
    let mut dir = root.to_owned();
    for component in parent.split('/') {
        dir.push(component);
        kernel::mkdir_idempotent(kernel, &dir)?;
        enable_controllers(kernel, &dir, controllers, true)?;
    }
    Ok(dir)
}

/// Enables in `dir/cgroup.subtree_control` those of `wanted` that `dir`
/// offers and that are not enabled yet. With `check_procs`, first fails if
/// `dir` holds processes, which would make the kernel refuse.
fn enable_controllers(
    kernel: &dyn Kernel,
    dir: &Path,
    wanted: &[Controller],
    check_procs: bool,
) -> Result<(), CgroupError> {
    let offered = kernel::read(&dir.join("cgroup.controllers"))?;
    let subtree_file = dir.join("cgroup.subtree_control");
    let enabled = kernel::read(&subtree_file)?;
    let has = |text: &str, c: &Controller| text.split_ascii_whitespace().any(|t| t == c.name());
    let missing: Vec<String> = wanted
        .iter()
        .filter(|c| has(&offered, c) && !has(&enabled, c))
        .map(|c| format!("+{}", c.name()))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if check_procs {
        let procs_file = dir.join("cgroup.procs");
        let pids = kernel::parse_pids(&procs_file, &kernel::read(&procs_file)?)?;
        if !pids.is_empty() {
            return Err(CgroupError::ParentHasProcesses {
                path: dir.to_owned(),
                pids,
            });
        }
    }
    kernel::write(kernel, &subtree_file, &missing.join(" "))
}

/// Applies `limits` to a group. Unlimited values are written explicitly so
/// that re-applying resets old limits.
pub(crate) fn apply_limits(
    kernel: &dyn Kernel,
    dir: &GroupDir,
    limits: &CgroupLimits,
) -> Result<(), CgroupError> {
    let path = &dir.path;
    if dir.has(Controller::Cpu) {
        let quota = limits
            .cpu_quota_us()?
            .map_or_else(|| "max".to_owned(), |q| q.to_string());
        kernel::write(
            kernel,
            &path.join("cpu.max"),
            &format!("{quota} {CPU_PERIOD_US}"),
        )?;
    }
    if dir.has(Controller::Memory) {
        // Kernels built without swap accounting have no memory.swap.max;
        // there is no swap to turn off then.
        let swap = path.join("memory.swap.max");
        if swap.exists() {
            kernel::write(kernel, &swap, "0")?;
        }
        let value = limits
            .memory_bytes
            .map_or_else(|| "max".to_owned(), |b| b.to_string());
        kernel::write(kernel, &path.join("memory.max"), &value)?;
    }
    if dir.has(Controller::Pids) {
        let value = limits
            .pids_max
            .map_or_else(|| "max".to_owned(), |p| p.to_string());
        kernel::write(kernel, &path.join("pids.max"), &value)?;
    }
    Ok(())
}
