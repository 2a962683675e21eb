//! The cgroup v1 backend: one directory per controller hierarchy.

use std::path::{Path, PathBuf};

use crate::kernel::{self, Kernel};
use crate::manager::{Controller, GroupDir};
use crate::{CgroupError, CgroupLimits, CPU_PERIOD_US};

/// Creates `hierarchy/<parent>` (all components) and prepares it.
pub(crate) fn prepare_parent(
    kernel: &dyn Kernel,
    hierarchy: &GroupDir,
    parent: &str,
) -> Result<PathBuf, CgroupError> {
    let mut dir = hierarchy.path.clone();
    for component in parent.split('/') {
        dir.push(component);
        kernel::mkdir_idempotent(kernel, &dir)?;
        if hierarchy.has(Controller::Memory) {
            enable_memory_hierarchy(kernel, &dir);
        }
    }
    Ok(dir)
}

/// Turns on hierarchical memory accounting where an old kernel still
/// defaults to flat accounting, so a parent limit covers its children.
/// Modern kernels always report 1 and reject writes, hence best effort.
fn enable_memory_hierarchy(kernel: &dyn Kernel, dir: &Path) {
    let file = dir.join("memory.use_hierarchy");
    match kernel::read(&file) {
        Ok(v) if v.trim() == "0" => {
            if let Err(e) = kernel::write(kernel, &file, "1") {
                tracing::warn!(error = %e, "could not enable memory.use_hierarchy");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::debug!(error = %e, "memory.use_hierarchy unavailable"),
    }
}

/// Applies `limits` to every controller directory of a group. Unlimited
/// values are written explicitly so that re-applying resets old limits.
pub(crate) fn apply_limits(
    kernel: &dyn Kernel,
    dirs: &[GroupDir],
    limits: &CgroupLimits,
) -> Result<(), CgroupError> {
    for dir in dirs {
        if dir.has(Controller::Cpu) {
            apply_cpu(kernel, &dir.path, limits)?;
        }
        if dir.has(Controller::Memory) {
            apply_memory(kernel, &dir.path, limits.memory_bytes)?;
        }
        if dir.has(Controller::Pids) {
            let value = limits
                .pids_max
                .map_or_else(|| "max".to_owned(), |p| p.to_string());
            kernel::write(kernel, &dir.path.join("pids.max"), &value)?;
        }
    }
    Ok(())
}

fn apply_cpu(kernel: &dyn Kernel, dir: &Path, limits: &CgroupLimits) -> Result<(), CgroupError> {
    kernel::write(
        kernel,
        &dir.join("cpu.cfs_period_us"),
        &CPU_PERIOD_US.to_string(),
    )?;
    let quota = limits
        .cpu_quota_us()?
        .map_or_else(|| "-1".to_owned(), |q| q.to_string());
    kernel::write(kernel, &dir.join("cpu.cfs_quota_us"), &quota)
}

/// Sets the memory limit with swap off.
///
/// The kernel requires `memsw.limit >= limit` at every moment, so when the
/// limit rises memsw is written first, and when it falls it is written last.
fn apply_memory(kernel: &dyn Kernel, dir: &Path, bytes: Option<u64>) -> Result<(), CgroupError> {
    let limit_file = dir.join("memory.limit_in_bytes");
    let memsw_file = dir.join("memory.memsw.limit_in_bytes");
    let value = bytes.map_or_else(|| "-1".to_owned(), |b| b.to_string());
    if memsw_file.exists() {
        let current = kernel::read_u64(&limit_file)?;
        let raising = bytes.unwrap_or(u64::MAX) >= current;
        if raising {
            kernel::write(kernel, &memsw_file, &value)?;
            kernel::write(kernel, &limit_file, &value)?;
        } else {
            kernel::write(kernel, &limit_file, &value)?;
            kernel::write(kernel, &memsw_file, &value)?;
        }
    } else {
        // Without swap accounting, swappiness 0 below is all we can do.
        kernel::write(kernel, &limit_file, &value)?;
    }
    let swappiness = dir.join("memory.swappiness");
    if swappiness.exists() {
        kernel::write(kernel, &swappiness, "0")?;
    }
    Ok(())
}
