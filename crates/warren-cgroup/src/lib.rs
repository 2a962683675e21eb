//! Per-sandbox cgroup management for Warren, with cgroup v1 and v2 backends
//! behind one interface.
//!
//! # Purpose
//!
//! Every sandbox gets its own cgroup (on v1: one directory per controller
//! hierarchy) below a parent sub-tree that Warren owns (for example
//! `/sys/fs/cgroup/warren/<sandbox>` on v2, or
//! `/sys/fs/cgroup/{cpu,memory,pids,freezer}/warren/<sandbox>` on v1). This
//! crate creates those groups, applies CPU, memory and pid limits, reports
//! usage and OOM kills, freezes and thaws them, kills everything inside, and
//! removes them again.
//!
//! [`CgroupManager::detect`] chooses the backend: pure v2 when the root is a
//! `cgroup2` mount with a `cgroup.controllers` file, otherwise v1 with the
//! controller hierarchies found through `/proc/self/mountinfo` (hybrid hosts,
//! whose `unified` mount carries no controllers, are treated as v1).
//!
//! # What it must not do
//!
//! - It never writes to cgroups outside the parent sub-tree (`root/<parent>`
//!   on v2, `<hierarchy>/<parent>` on v1), except to enable controllers in
//!   the v2 root's `cgroup.subtree_control`.
//! - It contains no `unsafe` code; signals go through `nix`.
//! - It does not spawn processes or enter namespaces: joining a group is done
//!   by the sandbox init writing to [`Cgroup::procs_files`].
//!
//! # Invariants
//!
//! - Sandbox names are validated (`[A-Za-z0-9_-]`, 1 to 64 bytes), so a name
//!   can never escape the parent directory.
//! - Swap is off for every sandbox group: v2 `memory.swap.max` is 0; v1 has
//!   `memory.swappiness` 0 and `memory.memsw.limit_in_bytes` equal to the
//!   memory limit where the kernel accounts swap.
//! - On v2 the parent must hold no processes (the no-internal-process
//!   rule): this is checked before controllers are enabled in its
//!   `cgroup.subtree_control`, and reported as
//!   [`CgroupError::ParentHasProcesses`].
//! - Every wait (freeze, kill, removal) is bounded by [`Timeouts`].
//! - All filesystem and signal side effects go through one internal
//!   `Kernel` trait, so unit tests run against a fake tree in a tempdir.

#![forbid(unsafe_code)]

mod error;
mod group;
mod kernel;
mod manager;
mod mountinfo;
mod v1;
mod v2;

#[cfg(test)]
mod fake;

use std::time::Duration;

pub use error::CgroupError;
pub use group::Cgroup;
pub use manager::CgroupManager;

/// The cgroup hierarchy layout of the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CgroupVersion {
    /// Legacy per-controller hierarchies (also chosen on hybrid hosts).
    V1,
    /// The unified hierarchy.
    V2,
}

/// Resource limits for one sandbox. `None` means unlimited.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CgroupLimits {
    /// CPU bandwidth in thousandths of a core (1000 = one full core), enforced
    /// as a quota over a 100 ms period. At least 10 (a 1 ms quota).
    pub cpu_millis: Option<u64>,
    /// Hard memory limit in bytes; swap is always off for the group.
    pub memory_bytes: Option<u64>,
    /// Maximum number of tasks (processes and threads) in the group.
    pub pids_max: Option<u64>,
}

/// The CFS period used for CPU quotas, in microseconds (100 ms).
pub const CPU_PERIOD_US: u64 = 100_000;

/// The smallest CPU quota the kernel accepts, in microseconds.
const CPU_MIN_QUOTA_US: u64 = 1_000;

impl CgroupLimits {
    /// The CPU quota in microseconds per [`CPU_PERIOD_US`], if limited.
    pub fn cpu_quota_us(&self) -> Result<Option<u64>, CgroupError> {
        let Some(millis) = self.cpu_millis else {
            return Ok(None);
        };
        // 1000 millis = one core = CPU_PERIOD_US of runtime per period.
        let quota =
            millis
                .checked_mul(CPU_PERIOD_US / 1000)
                .ok_or_else(|| CgroupError::InvalidLimits {
                    reason: format!("cpu_millis {millis} is too large"),
                })?;
        if quota < CPU_MIN_QUOTA_US {
            return Err(CgroupError::InvalidLimits {
                reason: format!("cpu_millis {millis} is below the minimum of 10"),
            });
        }
        // The kernel rejects quotas it cannot represent in nanoseconds; keep
        // well inside i64 so the value also fits v1's signed file.
        if quota > i64::MAX as u64 / 1_000 {
            return Err(CgroupError::InvalidLimits {
                reason: format!("cpu_millis {millis} is too large"),
            });
        }
        Ok(Some(quota))
    }

    /// Checks every limit without touching the system.
    pub fn validate(&self) -> Result<(), CgroupError> {
        self.cpu_quota_us()?;
        if self.memory_bytes == Some(0) {
            return Err(CgroupError::InvalidLimits {
                reason: "memory_bytes must be positive".to_owned(),
            });
        }
        if self.memory_bytes.is_some_and(|m| m > i64::MAX as u64) {
            return Err(CgroupError::InvalidLimits {
                reason: "memory_bytes is too large".to_owned(),
            });
        }
        if self.pids_max == Some(0) {
            return Err(CgroupError::InvalidLimits {
                reason: "pids_max must be positive".to_owned(),
            });
        }
        if self.pids_max.is_some_and(|p| p > i32::MAX as u64) {
            return Err(CgroupError::InvalidLimits {
                reason: "pids_max is too large".to_owned(),
            });
        }
        Ok(())
    }
}

/// Upper bounds for the operations that wait on the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// How long [`Cgroup::freeze`] waits for every task to be frozen.
    pub freeze: Duration,
    /// How long [`Cgroup::kill_all`] keeps killing before giving up.
    pub kill: Duration,
    /// How long [`Cgroup::destroy`] retries `rmdir` while tasks exit.
    pub remove: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            freeze: Duration::from_secs(3),
            kill: Duration::from_secs(2),
            remove: Duration::from_secs(2),
        }
    }
}

/// The longest name a sandbox cgroup may have.
pub const MAX_NAME_LEN: usize = 64;

/// Checks that `name` is a valid sandbox cgroup name: 1 to 64 bytes of
/// `[A-Za-z0-9_-]`. Such a name is always a single, non-special path
/// component.
pub fn validate_name(name: &str) -> Result<(), CgroupError> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name.len() > MAX_NAME_LEN {
        Some("longer than 64 bytes")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        Some("only A-Z, a-z, 0-9, '_' and '-' are allowed")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(CgroupError::InvalidName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        for ok in ["a", "sb-1", "A_b-9", &"x".repeat(64)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a b",
            "ä",
            "a.b",
            "a\n",
            &"x".repeat(65),
        ] {
            let err = validate_name(bad).expect_err(bad);
            assert!(matches!(err, CgroupError::InvalidName { .. }), "{bad}");
        }
    }

    #[test]
    fn cpu_quota_is_millis_times_100() {
        let l = |m| CgroupLimits {
            cpu_millis: Some(m),
            ..Default::default()
        };
        assert_eq!(l(1000).cpu_quota_us().unwrap(), Some(100_000));
        assert_eq!(l(250).cpu_quota_us().unwrap(), Some(25_000));
        assert_eq!(l(10).cpu_quota_us().unwrap(), Some(1_000));
        assert_eq!(CgroupLimits::default().cpu_quota_us().unwrap(), None);
        assert!(l(9).cpu_quota_us().is_err());
        assert!(l(0).cpu_quota_us().is_err());
        assert!(l(u64::MAX).cpu_quota_us().is_err());
    }

    #[test]
    fn limits_are_validated() {
        assert!(CgroupLimits::default().validate().is_ok());
        let bad = [
            CgroupLimits {
                memory_bytes: Some(0),
                ..Default::default()
            },
            CgroupLimits {
                pids_max: Some(0),
                ..Default::default()
            },
            CgroupLimits {
                memory_bytes: Some(u64::MAX),
                ..Default::default()
            },
        ];
        for l in bad {
            assert!(
                matches!(l.validate(), Err(CgroupError::InvalidLimits { .. })),
                "{l:?}"
            );
        }
    }
}
