//! [`CgroupManager`]: layout detection and the parent sub-tree Warren owns.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use nix::errno::Errno;

use crate::group::{remove_dir_bounded, Cgroup};
use crate::kernel::{self, is_errno, Kernel, RealKernel};
use crate::mountinfo::{parse_mountinfo, MountEntry};
use crate::{v1, v2, validate_name, CgroupError, CgroupLimits, CgroupVersion, Timeouts};

/// Where the mount table is read from by [`CgroupManager::detect`].
const MOUNTINFO: &str = "/proc/self/mountinfo";

/// A controller this crate uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Controller {
    Cpu,
    Cpuacct,
    Memory,
    Pids,
    Freezer,
}

impl Controller {
    /// The v1 controllers joined by every sandbox, in a stable order.
    const V1_ALL: [Self; 5] = [
        Self::Cpu,
        Self::Cpuacct,
        Self::Memory,
        Self::Pids,
        Self::Freezer,
    ];

    /// The v2 controllers enabled for sandboxes (freezing is built into v2).
    pub(crate) const V2_ALL: [Self; 3] = [Self::Cpu, Self::Memory, Self::Pids];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Cpuacct => "cpuacct",
            Self::Memory => "memory",
            Self::Pids => "pids",
            Self::Freezer => "freezer",
        }
    }
}

/// A directory together with the controllers it serves. For the layout it
/// is a hierarchy's mount point; for a [`Cgroup`] it is the group's own
/// directory in that hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupDir {
    pub path: PathBuf,
    pub controllers: Vec<Controller>,
}

impl GroupDir {
    pub(crate) fn has(&self, c: Controller) -> bool {
        self.controllers.contains(&c)
    }
}

#[derive(Debug, Clone)]
enum Layout {
    /// One entry per distinct (canonical) hierarchy mount point, so
    /// co-mounted controllers such as `cpu,cpuacct` appear once.
    V1 { hierarchies: Vec<GroupDir> },
    /// The subset of [`Controller::V2_ALL`] that the root offers.
    V2 { controllers: Vec<Controller> },
}

/// Creates, opens and lists per-sandbox cgroups below `root/<parent>`.
#[derive(Debug, Clone)]
pub struct CgroupManager {
    root: PathBuf,
    parent: String,
    layout: Layout,
    kernel: Arc<dyn Kernel>,
    timeouts: Timeouts,
}

impl CgroupManager {
    /// Detects the layout under `root` using `/proc/self/mountinfo`.
    ///
    /// The host is pure v2 if `root/cgroup.controllers` exists and `root` is
    /// a `cgroup2` mount; otherwise it is v1, with each controller found
    /// through the mount table (falling back to `root/<controller>`). Hybrid
    /// hosts count as v1. `parent` is the sub-tree Warren owns (one or more
    /// `/`-separated components, each a valid name); it is created on demand.
    pub fn detect(root: impl Into<PathBuf>, parent: &str) -> Result<Self, CgroupError> {
        let text = fs::read_to_string(MOUNTINFO).map_err(|source| CgroupError::ReadMountinfo {
            path: PathBuf::from(MOUNTINFO),
            source,
        })?;
        Self::detect_with_mountinfo(root, parent, &text)
    }

    /// Like [`detect`](Self::detect), with the mount table given as text.
    pub fn detect_with_mountinfo(
        root: impl Into<PathBuf>,
        parent: &str,
        mountinfo: &str,
    ) -> Result<Self, CgroupError> {
        Self::detect_with(root.into(), parent, mountinfo, Arc::new(RealKernel))
    }

    pub(crate) fn detect_with(
        root: PathBuf,
        parent: &str,
        mountinfo: &str,
        kernel: Arc<dyn Kernel>,
    ) -> Result<Self, CgroupError> {
        validate_parent(parent)?;
        let root = fs::canonicalize(&root)
            .map_err(|source| CgroupError::AccessRoot { path: root, source })?;
        let mounts = parse_mountinfo(mountinfo);
        let root_is_cgroup2 = mounts
            .iter()
            .filter(|m| m.fstype == "cgroup2")
            .any(|m| canonical(&m.mount_point) == root);
        let controllers_file = root.join("cgroup.controllers");
        let layout = if root_is_cgroup2 && controllers_file.is_file() {
            let offered = kernel::read(&controllers_file)?;
            let controllers = Controller::V2_ALL
                .into_iter()
                .filter(|c| offered.split_ascii_whitespace().any(|o| o == c.name()))
                .collect();
            Layout::V2 { controllers }
        } else {
            Layout::V1 {
                hierarchies: find_v1_hierarchies(&root, &mounts)?,
            }
        };
        let manager = Self {
            root,
            parent: parent.to_owned(),
            layout,
            kernel,
            timeouts: Timeouts::default(),
        };
        tracing::info!(
            version = ?manager.version(),
            root = %manager.root.display(),
            parent,
            layout = ?manager.layout,
            "detected cgroup layout"
        );
        Ok(manager)
    }

    /// Replaces the bounds on freezing, killing and removal.
    #[must_use]
    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// The detected layout.
    pub fn version(&self) -> CgroupVersion {
        match self.layout {
            Layout::V1 { .. } => CgroupVersion::V1,
            Layout::V2 { .. } => CgroupVersion::V2,
        }
    }

    /// The canonical cgroup root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The name of the sub-tree Warren owns.
    pub fn parent(&self) -> &str {
        &self.parent
    }

    /// The parent directories: one per v1 hierarchy, or one on v2.
    pub fn parent_dirs(&self) -> Vec<PathBuf> {
        self.hierarchy_dirs(|base| base.join(&self.parent))
            .into_iter()
            .map(|d| d.path)
            .collect()
    }

    /// Creates the sandbox cgroup(s) `name` and applies `limits`.
    ///
    /// Idempotent: if the group exists, the limits are applied again. On v2
    /// the needed controllers are enabled in the root's and the parent's
    /// `cgroup.subtree_control`. If a freshly created group cannot be
    /// configured, it is removed again.
    pub fn create(&self, name: &str, limits: &CgroupLimits) -> Result<Cgroup, CgroupError> {
        validate_name(name)?;
        limits.validate()?;
        self.check_supported(limits)?;
        let group = self.group(name);
        let existed = group.paths().iter().all(|p| p.is_dir());
        let result = self.create_dirs_and_apply(&group, limits);
        if let Err(err) = &result {
            if !existed {
                tracing::warn!(name, error = %err, "configuring new cgroup failed; removing it");
                if let Err(cleanup) = group.destroy() {
                    tracing::warn!(name, error = %cleanup, "removing half-created cgroup failed");
                }
            }
        } else {
            tracing::debug!(name, ?limits, existed, "cgroup ready");
        }
        result.map(|()| group)
    }

    fn create_dirs_and_apply(
        &self,
        group: &Cgroup,
        limits: &CgroupLimits,
    ) -> Result<(), CgroupError> {
        let kernel = &*self.kernel;
        match &self.layout {
            Layout::V1 { hierarchies } => {
                for h in hierarchies {
                    v1::prepare_parent(kernel, h, &self.parent)?;
                }
                for dir in group.dirs() {
                    kernel::mkdir_idempotent(kernel, &dir.path)?;
                }
                v1::apply_limits(kernel, group.dirs(), limits)
            }
            Layout::V2 { controllers } => {
                v2::prepare_parent(kernel, &self.root, &self.parent, controllers)?;
                let dir = group
                    .dirs()
                    .first()
                    .expect("a v2 group always has exactly one directory");
                kernel::mkdir_idempotent(kernel, &dir.path)?;
                v2::apply_limits(kernel, dir, limits)
            }
        }
    }

    /// Opens an existing sandbox cgroup (for re-adoption after a restart).
    /// `Ok(None)` if it exists in no hierarchy. On v1 a group present in
    /// only some hierarchies is still opened, so it can be destroyed.
    pub fn open(&self, name: &str) -> Result<Option<Cgroup>, CgroupError> {
        validate_name(name)?;
        let group = self.group(name);
        if group.paths().iter().any(|p| p.is_dir()) {
            Ok(Some(group))
        } else {
            Ok(None)
        }
    }

    /// The names of all sandbox cgroups under the parent, sorted. On v1 a
    /// name present in any hierarchy is listed. Directories whose names are
    /// not valid sandbox names are ignored.
    pub fn list(&self) -> Result<Vec<String>, CgroupError> {
        let mut names = Vec::new();
        for dir in self.parent_dirs() {
            names.extend(
                kernel::subdirs(&dir)?
                    .into_iter()
                    .filter(|n| validate_name(n).is_ok()),
            );
        }
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Removes the parent sub-tree once no sandbox group remains in it.
    /// Idempotent. Fails with [`CgroupError::Busy`] if groups remain.
    /// Upper components of a nested parent are removed only if empty.
    pub fn destroy_parent(&self) -> Result<(), CgroupError> {
        for base in self.hierarchy_dirs(|b| b.to_owned()) {
            let deadline = Instant::now() + self.timeouts.remove;
            let leaf = base.path.join(&self.parent);
            remove_dir_bounded(&*self.kernel, &leaf, deadline)?;
            let mut upper = leaf.parent();
            while let Some(dir) = upper {
                if dir == base.path {
                    break;
                }
                match self.kernel.rmdir(dir) {
                    Ok(()) => {}
                    Err(e) if is_errno(&e, Errno::EBUSY) || is_errno(&e, Errno::ENOTEMPTY) => break,
                    Err(e) if is_errno(&e, Errno::ENOENT) => {}
                    Err(source) => {
                        return Err(CgroupError::RemoveDir {
                            path: dir.to_owned(),
                            source,
                        })
                    }
                }
                upper = dir.parent();
            }
        }
        Ok(())
    }

    /// Fails if `limits` need a controller the host does not offer.
    fn check_supported(&self, limits: &CgroupLimits) -> Result<(), CgroupError> {
        let needed = [
            (limits.cpu_millis.is_some(), Controller::Cpu),
            (limits.memory_bytes.is_some(), Controller::Memory),
            (limits.pids_max.is_some(), Controller::Pids),
        ];
        for (wanted, controller) in needed {
            if wanted && !self.has_controller(controller) {
                return Err(CgroupError::Unsupported {
                    what: format!(
                        "the {} controller is not available under {}",
                        controller.name(),
                        self.root.display()
                    ),
                });
            }
        }
        Ok(())
    }

    fn has_controller(&self, c: Controller) -> bool {
        match &self.layout {
            Layout::V1 { hierarchies } => hierarchies.iter().any(|h| h.has(c)),
            Layout::V2 { controllers } => controllers.contains(&c),
        }
    }

    /// Maps every hierarchy base (v1 mount points, or the v2 root) through
    /// `f`, keeping the controllers it serves.
    fn hierarchy_dirs(&self, f: impl Fn(&Path) -> PathBuf) -> Vec<GroupDir> {
        match &self.layout {
            Layout::V1 { hierarchies } => hierarchies
                .iter()
                .map(|h| GroupDir {
                    path: f(&h.path),
                    controllers: h.controllers.clone(),
                })
                .collect(),
            Layout::V2 { controllers } => vec![GroupDir {
                path: f(&self.root),
                controllers: controllers.clone(),
            }],
        }
    }

    /// The handle for `name` (which must already be validated).
    fn group(&self, name: &str) -> Cgroup {
        let dirs = self.hierarchy_dirs(|base| base.join(&self.parent).join(name));
        Cgroup::new(
            name.to_owned(),
            self.version(),
            dirs,
            Arc::clone(&self.kernel),
            self.timeouts,
        )
    }
}

/// A parent is one or more `/`-separated valid names.
fn validate_parent(parent: &str) -> Result<(), CgroupError> {
    parent
        .split('/')
        .try_for_each(validate_name)
        .map_err(|e| match e {
            CgroupError::InvalidName { reason, .. } => CgroupError::InvalidName {
                name: parent.to_owned(),
                reason,
            },
            other => other,
        })
}

fn canonical(path: &Path) -> PathBuf {
    fs::canonicalize(path).unwrap_or_else(|_| path.to_owned())
}

/// Finds the v1 hierarchy of each controller under `root`: first from the
/// mount table, then at `root/<controller>` (which must look like a cgroup
/// directory). Co-mounted controllers share one canonical directory.
fn find_v1_hierarchies(root: &Path, mounts: &[MountEntry]) -> Result<Vec<GroupDir>, CgroupError> {
    let mut hierarchies: Vec<GroupDir> = Vec::new();
    for c in Controller::V1_ALL {
        let mounted = mounts
            .iter()
            .filter(|m| m.fstype == "cgroup" && m.super_options.iter().any(|o| o == c.name()))
            .map(|m| canonical(&m.mount_point))
            .find(|p| p.starts_with(root) && p.is_dir());
        let dir = mounted.or_else(|| {
            let guess = root.join(c.name());
            guess
                .join("cgroup.procs")
                .is_file()
                .then(|| canonical(&guess))
        });
        let Some(dir) = dir else {
            tracing::debug!(controller = c.name(), root = %root.display(), "v1 controller not found");
            continue;
        };
        match hierarchies.iter_mut().find(|h| h.path == dir) {
            Some(h) => h.controllers.push(c),
            None => hierarchies.push(GroupDir {
                path: dir,
                controllers: vec![c],
            }),
        }
    }
    if hierarchies.is_empty() {
        return Err(CgroupError::Unsupported {
            what: format!(
                "no cgroup2 mount with controllers and no v1 controller hierarchy under {}",
                root.display()
            ),
        });
    }
    Ok(hierarchies)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{fake_v1, fake_v2, manager, FakeKernel, V1_UNLIMITED};

    fn read(path: &Path) -> String {
        fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .trim()
            .to_owned()
    }

    fn limits(cpu: u64, mem: u64, pids: u64) -> CgroupLimits {
        CgroupLimits {
            cpu_millis: Some(cpu),
            memory_bytes: Some(mem),
            pids_max: Some(pids),
        }
    }

    const MIB: u64 = 1 << 20;

    #[test]
    fn v1_detects_comounted_hierarchies_from_mountinfo() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, mountinfo) = fake_v1(tmp.path(), true);
        let (m, _) = manager(&root, &mountinfo);
        assert_eq!(m.version(), CgroupVersion::V1);
        let root = fs::canonicalize(&root).unwrap();
        assert_eq!(
            m.parent_dirs(),
            vec![
                root.join("cpu,cpuacct/warren"),
                root.join("memory/warren"),
                root.join("pids/warren"),
                root.join("freezer/warren"),
            ]
        );
        let Layout::V1 { hierarchies } = &m.layout else {
            panic!("expected v1");
        };
        assert_eq!(
            hierarchies[0].controllers,
            vec![Controller::Cpu, Controller::Cpuacct]
        );
    }

    #[test]
    fn v1_falls_back_to_root_dirs_and_dedups_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, _) = fake_v1(tmp.path(), true);
        // No mount table at all: root/<controller> is used, and the cpu and
        // cpuacct symlinks resolve to one directory.
        let (m, _) = manager(&root, "");
        assert_eq!(m.version(), CgroupVersion::V1);
        let dirs = m.parent_dirs();
        assert_eq!(dirs.len(), 4, "{dirs:?}");
        assert!(dirs[0].ends_with("cpu,cpuacct/warren"));
    }

    #[test]
    fn v1_mountinfo_wins_over_names() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, _) = fake_v1(tmp.path(), true);
        // Mount the memory hierarchy under an unexpected name.
        fs::rename(root.join("memory"), root.join("mem-hier")).unwrap();
        let mountinfo = format!(
            "35 31 0:32 / {}/mem-hier rw - cgroup cgroup rw,memory\n",
            fs::canonicalize(&root).unwrap().display()
        );
        let (m, _) = manager(&root, &mountinfo);
        assert!(m
            .parent_dirs()
            .iter()
            .any(|d| d.ends_with("mem-hier/warren")));
    }

    #[test]
    fn v2_detection_needs_a_cgroup2_mount_at_root() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, mountinfo) = fake_v2(tmp.path(), "cpuset cpu io memory pids");
        let (m, _) = manager(&root, &mountinfo);
        assert_eq!(m.version(), CgroupVersion::V2);
        assert_eq!(m.parent_dirs(), vec![m.root().join("warren")]);

        // cgroup.controllers alone is not enough.
        let err = CgroupManager::detect_with(
            root.clone(),
            "warren",
            "1 0 0:1 / / rw - ext4 /dev/sda rw\n",
            Arc::new(FakeKernel::new(&root)),
        )
        .unwrap_err();
        assert!(matches!(err, CgroupError::Unsupported { .. }), "{err}");
    }

    #[test]
    fn hybrid_counts_as_v1() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, mountinfo) = fake_v1(tmp.path(), true);
        let (m, _) = manager(&root, &mountinfo);
        assert_eq!(m.version(), CgroupVersion::V1);
        assert!(!m
            .parent_dirs()
            .iter()
            .any(|d| d.starts_with(root.join("unified"))));
    }

    #[test]
    fn detect_rejects_bad_parent_and_missing_root() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, mountinfo) = fake_v1(tmp.path(), true);
        for parent in ["", "..", "a/../b", "/abs", "a//b", "a b"] {
            let err = CgroupManager::detect_with_mountinfo(&root, parent, &mountinfo).unwrap_err();
            assert!(
                matches!(err, CgroupError::InvalidName { .. }),
                "{parent}: {err}"
            );
        }
        assert!(
            CgroupManager::detect_with_mountinfo(&root, "warren/sandboxes", &mountinfo).is_ok()
        );
        let err =
            CgroupManager::detect_with_mountinfo(tmp.path().join("absent"), "w", "").unwrap_err();
        assert!(matches!(err, CgroupError::AccessRoot { .. }), "{err}");
    }

    #[test]
    fn v1_create_writes_limits_in_every_hierarchy() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, mountinfo) = fake_v1(tmp.path(), true);
        let (m, _) = manager(&root, &mountinfo);
        let cg = m.create("sb-1", &limits(500, 64 * MIB, 32)).unwrap();
        assert_eq!(cg.name(), "sb-1");
        let root = m.root().to_owned();
        let cpu = root.join("cpu,cpuacct/warren/sb-1");
        let mem = root.join("memory/warren/sb-1");
        assert_eq!(read(&cpu.join("cpu.cfs_period_us")), "100000");
        assert_eq!(read(&cpu.join("cpu.cfs_quota_us")), "50000");
        assert_eq!(
            read(&mem.join("memory.limit_in_bytes")),
            (64 * MIB).to_string()
        );
        assert_eq!(
            read(&mem.join("memory.memsw.limit_in_bytes")),
            (64 * MIB).to_string()
        );
        assert_eq!(read(&mem.join("memory.swappiness")), "0");
        assert_eq!(read(&root.join("pids/warren/sb-1/pids.max")), "32");
        assert!(root.join("freezer/warren/sb-1").is_dir());
        assert_eq!(
            cg.procs_files(),
            vec![
                cpu.join("cgroup.procs"),
                mem.join("cgroup.procs"),
                root.join("pids/warren/sb-1/cgroup.procs"),
                root.join("freezer/warren/sb-1/cgroup.procs"),
            ]
        );
    }

    #[test]
    fn v1_unlimited_values_reset_limits() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, mountinfo) = fake_v1(tmp.path(), true);
        let (m, _) = manager(&root, &mountinfo);
        m.create("a", &limits(500, 64 * MIB, 32)).unwrap();
        m.create("a", &CgroupLimits::default()).unwrap();
        let root = m.root().to_owned();
        assert_eq!(
            read(&root.join("cpu,cpuacct/warren/a/cpu.cfs_quota_us")),
            "-1"
        );
        let mem = root.join("memory/warren/a");
        assert_eq!(read(&mem.join("memory.limit_in_bytes")), V1_UNLIMITED);
        assert_eq!(read(&mem.join("memory.memsw.limit_in_bytes")), V1_UNLIMITED);
        assert_eq!(read(&root.join("pids/warren/a/pids.max")), "max");
    }

    #[test]
    fn v1_memsw_is_written_in_a_valid_order() {
        // The fake enforces memsw >= limit on every write, like the kernel.
        let tmp = tempfile::tempdir().unwrap();
        let (root, mountinfo) = fake_v1(tmp.path(), true);
        let (m, k) = manager(&root, &mountinfo);
        let mem_writes = || -> Vec<(String, String)> {
            k.write_order()
                .into_iter()
                .filter(|(n, _)| n.contains("limit_in_bytes"))
                .collect()
        };
        m.create("a", &limits(100, 64 * MIB, 8)).unwrap();
        // Lowering from unlimited: limit first.
        assert_eq!(mem_writes()[0].0, "memory.limit_in_bytes");
        k.writes.lock().unwrap().clear();
        m.create("a", &limits(100, 128 * MIB, 8)).unwrap();
        // Raising: memsw first.
        assert_eq!(mem_writes()[0].0, "memory.memsw.limit_in_bytes");
        k.writes.lock().unwrap().clear();
        m.create("a", &limits(100, 32 * MIB, 8)).unwrap();
        assert_eq!(mem_writes()[0].0, "memory.limit_in_bytes");
        let mem = m.root().join("memory/warren/a");
        assert_eq!(
            read(&mem.join("memory.limit_in_bytes")),
            (32 * MIB).to_string()
        );
        assert_eq!(
            read(&mem.join("memory.memsw.limit_in_bytes")),
            (32 * MIB).to_string()
        );
    }

    #[test]
    fn v1_without_swap_accounting_still_sets_swappiness() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, mountinfo) = fake_v1(tmp.path(), false);
        let (m, k) = manager(&root, &mountinfo);
        m.create("a", &limits(100, 64 * MIB, 8)).unwrap();
        let mem = m.root().join("memory/warren/a");
        assert!(!mem.join("memory.memsw.limit_in_bytes").exists());
        assert_eq!(read(&mem.join("memory.swappiness")), "0");
        assert!(k.writes_to("memory.memsw.limit_in_bytes").is_empty());
    }

    #[test]
    fn create_is_idempotent_and_reapplies_limits() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, mountinfo) = fake_v1(tmp.path(), true);
        let (m, _) = manager(&root, &mountinfo);
        m.create("a", &limits(100, 64 * MIB, 8)).unwrap();
        m.create("a", &limits(200, 64 * MIB, 16)).unwrap();
        assert_eq!(m.list().unwrap(), vec!["a"]);
        assert_eq!(read(&m.root().join("pids/warren/a/pids.max")), "16");
        assert_eq!(
            read(&m.root().join("cpu,cpuacct/warren/a/cpu.cfs_quota_us")),
            "20000"
        );
    }

    #[test]
    fn names_and_limits_are_validated_before_touching_anything() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, mountinfo) = fake_v1(tmp.path(), true);
        let (m, k) = manager(&root, &mountinfo);
        for bad in ["", "../x", "a/b", ".", &"n".repeat(65)] {
            assert!(matches!(
                m.create(bad, &CgroupLimits::default()),
                Err(CgroupError::InvalidName { .. })
            ));
            assert!(matches!(m.open(bad), Err(CgroupError::InvalidName { .. })));
        }
        let zero_cpu = CgroupLimits {
            cpu_millis: Some(0),
            ..Default::default()
        };
        assert!(matches!(
            m.create("a", &zero_cpu),
            Err(CgroupError::InvalidLimits { .. })
        ));
        assert!(k.writes.lock().unwrap().is_empty());
        assert!(!m.root().join("memory/warren").exists());
    }

    #[test]
    fn list_and_open() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, mountinfo) = fake_v1(tmp.path(), true);
        let (m, _) = manager(&root, &mountinfo);
        assert_eq!(m.list().unwrap(), Vec::<String>::new());
        assert!(m.open("a").unwrap().is_none());
        m.create("b", &CgroupLimits::default()).unwrap();
        m.create("a", &CgroupLimits::default()).unwrap();
        // A leftover present in one hierarchy only is still found.
        fs::create_dir(m.root().join("pids/warren/partial")).unwrap();
        // Not a sandbox name: ignored.
        fs::create_dir(m.root().join("memory/warren/odd.name")).unwrap();
        assert_eq!(m.list().unwrap(), vec!["a", "b", "partial"]);
        let a = m.open("a").unwrap().expect("a exists");
        assert_eq!(a.procs_files().len(), 4);
        let partial = m.open("partial").unwrap().expect("partial exists");
        partial.destroy().unwrap();
        assert!(m.open("partial").unwrap().is_none());
        assert!(m.open("missing").unwrap().is_none());
    }

    #[test]
    fn destroy_is_idempotent_and_parent_goes_last() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, mountinfo) = fake_v1(tmp.path(), true);
        let (m, _) = manager(&root, &mountinfo);
        let a = m.create("a", &CgroupLimits::default()).unwrap();
        let err = m.destroy_parent().unwrap_err();
        assert!(
            matches!(&err, CgroupError::Busy { children, .. } if children == &["a"]),
            "{err}"
        );
        a.destroy().unwrap();
        a.destroy().unwrap();
        assert!(a.paths().iter().all(|p| !p.exists()));
        assert!(m.list().unwrap().is_empty());
        m.destroy_parent().unwrap();
        m.destroy_parent().unwrap();
        assert!(m.parent_dirs().iter().all(|p| !p.exists()));
    }

    #[test]
    fn nested_parent_is_created_and_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, mountinfo) = fake_v2(tmp.path(), "cpu memory pids");
        let kernel = Arc::new(FakeKernel::new(&root));
        let m = CgroupManager::detect_with(root.clone(), "warren/sb", &mountinfo, kernel).unwrap();
        let a = m.create("a", &limits(100, 64 * MIB, 8)).unwrap();
        assert_eq!(
            read(&m.root().join("warren/cgroup.subtree_control")),
            "cpu memory pids"
        );
        assert_eq!(
            read(&m.root().join("warren/sb/cgroup.subtree_control")),
            "cpu memory pids"
        );
        assert_eq!(read(&a.paths()[0].join("pids.max")), "8");
        a.destroy().unwrap();
        m.destroy_parent().unwrap();
        assert!(!m.root().join("warren").exists());
    }

    #[test]
    fn failed_create_removes_the_new_group() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, mountinfo) = fake_v1(tmp.path(), true);
        let (m, k) = manager(&root, &mountinfo);
        k.fail_writes
            .lock()
            .unwrap()
            .push(("pids.max".to_owned(), libc::EACCES));
        let err = m.create("a", &limits(100, 64 * MIB, 8)).unwrap_err();
        assert!(
            matches!(&err, CgroupError::WriteFile { path, value, .. }
                if path.ends_with("pids/warren/a/pids.max") && value == "8"),
            "{err}"
        );
        assert!(m.open("a").unwrap().is_none());
    }

    #[test]
    fn v2_create_enables_controllers_and_writes_limits() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, mountinfo) = fake_v2(tmp.path(), "cpuset cpu io memory hugetlb pids");
        let (m, k) = manager(&root, &mountinfo);
        let cg = m.create("sb", &limits(1500, 256 * MIB, 100)).unwrap();
        let root = m.root().to_owned();
        assert_eq!(
            read(&root.join("cgroup.subtree_control")),
            "cpu memory pids"
        );
        assert_eq!(
            read(&root.join("warren/cgroup.subtree_control")),
            "cpu memory pids"
        );
        let dir = root.join("warren/sb");
        assert_eq!(cg.paths(), vec![dir.clone()]);
        assert_eq!(cg.procs_files(), vec![dir.join("cgroup.procs")]);
        assert_eq!(read(&dir.join("cpu.max")), "150000 100000");
        assert_eq!(read(&dir.join("memory.max")), (256 * MIB).to_string());
        assert_eq!(read(&dir.join("memory.swap.max")), "0");
        assert_eq!(read(&dir.join("pids.max")), "100");
        // Enabling is done once, with a single write per level.
        assert_eq!(
            k.writes_to("cgroup.subtree_control"),
            vec!["+cpu +memory +pids", "+cpu +memory +pids"]
        );
        m.create("sb", &CgroupLimits::default()).unwrap();
        assert_eq!(k.writes_to("cgroup.subtree_control").len(), 2);
        assert_eq!(read(&dir.join("cpu.max")), "max 100000");
        assert_eq!(read(&dir.join("memory.max")), "max");
        assert_eq!(read(&dir.join("memory.swap.max")), "0");
        assert_eq!(read(&dir.join("pids.max")), "max");
    }

    #[test]
    fn v2_parent_with_processes_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, mountinfo) = fake_v2(tmp.path(), "cpu memory pids");
        let (m, _) = manager(&root, &mountinfo);
        m.create("a", &CgroupLimits::default()).unwrap();
        // Enabled already: a process in the parent does not matter now...
        fs::write(m.root().join("warren/cgroup.procs"), "77\n").unwrap();
        m.create("b", &CgroupLimits::default()).unwrap();
        // ...but it does when controllers still have to be enabled.
        fs::write(m.root().join("warren/cgroup.subtree_control"), "").unwrap();
        let err = m.create("c", &CgroupLimits::default()).unwrap_err();
        assert!(
            matches!(&err, CgroupError::ParentHasProcesses { pids, .. } if pids == &[77]),
            "{err}"
        );
    }

    #[test]
    fn missing_controller_is_unsupported_only_when_needed() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, mountinfo) = fake_v2(tmp.path(), "cpu pids");
        let (m, _) = manager(&root, &mountinfo);
        let err = m.create("a", &limits(100, 64 * MIB, 8)).unwrap_err();
        assert!(matches!(err, CgroupError::Unsupported { .. }), "{err}");
        let cg = m
            .create(
                "a",
                &CgroupLimits {
                    cpu_millis: Some(100),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(
            read(&m.root().join("warren/cgroup.subtree_control")),
            "cpu pids"
        );
        assert!(matches!(
            cg.oom_kills(),
            Err(CgroupError::Unsupported { .. })
        ));

        // v1 without a pids hierarchy.
        let tmp = tempfile::tempdir().unwrap();
        let (root, _) = fake_v1(tmp.path(), true);
        fs::remove_dir_all(root.join("pids")).unwrap();
        let (m, _) = manager(&root, "");
        assert_eq!(m.parent_dirs().len(), 3);
        let err = m.create("a", &limits(100, 64 * MIB, 8)).unwrap_err();
        assert!(matches!(err, CgroupError::Unsupported { .. }), "{err}");
    }
}
