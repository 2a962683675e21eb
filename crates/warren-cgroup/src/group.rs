//! [`Cgroup`]: one sandbox's group, with stats, freezing, killing and
//! removal.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;

use crate::kernel::{self, is_errno, wait_until, Kernel};
use crate::manager::{Controller, GroupDir};
use crate::{CgroupError, CgroupVersion, Timeouts};

/// How long one round of [`Cgroup::kill_all`] waits for killed tasks to
/// leave before it signals again.
const KILL_ROUND: Duration = Duration::from_millis(100);

/// One sandbox's cgroup: a directory per v1 hierarchy, or one on v2.
#[derive(Clone)]
pub struct Cgroup {
    name: String,
    version: CgroupVersion,
    dirs: Vec<GroupDir>,
    kernel: Arc<dyn Kernel>,
    timeouts: Timeouts,
}

impl fmt::Debug for Cgroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cgroup")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("paths", &self.paths())
            .finish()
    }
}

/// How a group is frozen.
#[derive(Clone, Copy)]
enum Freezer<'a> {
    /// The directory of the v1 freezer hierarchy.
    V1(&'a Path),
    /// The v2 group directory (`cgroup.freeze`, `cgroup.events`).
    V2(&'a Path),
}

impl Cgroup {
    pub(crate) fn new(
        name: String,
        version: CgroupVersion,
        dirs: Vec<GroupDir>,
        kernel: Arc<dyn Kernel>,
        timeouts: Timeouts,
    ) -> Self {
        Self {
            name,
            version,
            dirs,
            kernel,
            timeouts,
        }
    }

    pub(crate) fn dirs(&self) -> &[GroupDir] {
        &self.dirs
    }

    /// The sandbox name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The layout this group lives in.
    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    /// The group's directories: one per v1 hierarchy, or one on v2.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.path.clone()).collect()
    }

    /// The `cgroup.procs` files a process writes its pid into (`"0"` means
    /// the writer itself) to join the group: one per v1 hierarchy, one on
    /// v2. The sandbox init writes them before unsharing its cgroup
    /// namespace.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs
            .iter()
            .map(|d| d.path.join("cgroup.procs"))
            .collect()
    }

    /// Moves process `pid` (all its threads) into the group, in every
    /// hierarchy. `0` moves the calling process.
    pub fn add_process(&self, pid: u32) -> Result<(), CgroupError> {
        let value = pid.to_string();
        for file in self.procs_files() {
            kernel::write(&*self.kernel, &file, &value)?;
        }
        tracing::debug!(name = %self.name, pid, "process joined cgroup");
        Ok(())
    }

    /// How many times the kernel OOM killer killed a process in the group
    /// (v1: `oom_kill` in `memory.oom_control`; v2: `oom_kill` in
    /// `memory.events`, which includes descendants).
    pub fn oom_kills(&self) -> Result<u64, CgroupError> {
        let dir = self.controller_dir(Controller::Memory)?;
        let file = match self.version {
            CgroupVersion::V1 => dir.join("memory.oom_control"),
            CgroupVersion::V2 => dir.join("memory.events"),
        };
        kernel::parse_keyed(&file, &kernel::read(&file)?, "oom_kill")
    }

    /// Current memory usage in bytes.
    pub fn memory_current(&self) -> Result<u64, CgroupError> {
        let dir = self.controller_dir(Controller::Memory)?;
        let file = match self.version {
            CgroupVersion::V1 => dir.join("memory.usage_in_bytes"),
            CgroupVersion::V2 => dir.join("memory.current"),
        };
        kernel::read_u64(&file)
    }

    /// Current number of tasks (processes and threads).
    pub fn pids_current(&self) -> Result<u64, CgroupError> {
        kernel::read_u64(&self.controller_dir(Controller::Pids)?.join("pids.current"))
    }

    /// The pids in the group and any child groups, in any hierarchy,
    /// sorted and without duplicates. Directories that vanish meanwhile are
    /// skipped.
    pub fn procs(&self) -> Result<Vec<i32>, CgroupError> {
        let mut pids = Vec::new();
        for dir in &self.dirs {
            pids.extend(subtree_pids(&dir.path)?);
        }
        pids.sort_unstable();
        pids.dedup();
        Ok(pids)
    }

    /// Kills every process in the group, bounded by [`Timeouts::kill`].
    ///
    /// v2 writes `cgroup.kill`, which the kernel applies atomically to the
    /// whole subtree. Otherwise (v1, or v2 before Linux 5.14) the group is
    /// frozen if a freezer exists, so that nothing can fork or exit (and no
    /// pid can be reused) between listing and signalling; each pid gets
    /// SIGKILL; the group is thawed so the signals are delivered; and this
    /// repeats until the group is empty. Without a freezer a pid could be
    /// reused between listing and killing; every host Warren supports has
    /// one.
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        // Fast path: nothing to kill (the common case when a sandbox's init
        // has already exited and taken its pid namespace with it).
        if self.procs()?.is_empty() {
            return Ok(());
        }
        let deadline = Instant::now() + self.timeouts.kill;
        if self.version == CgroupVersion::V2 {
            let kill_file = self.primary().join("cgroup.kill");
            if kill_file.exists() {
                kernel::write(&*self.kernel, &kill_file, "1")?;
                if wait_until(deadline, || Ok(self.procs()?.is_empty()))? {
                    tracing::debug!(name = %self.name, "killed all processes");
                    return Ok(());
                }
                return Err(self.busy(self.primary()));
            }
        }
        self.kill_by_signal(deadline)
    }

    fn kill_by_signal(&self, deadline: Instant) -> Result<(), CgroupError> {
        let freezer = self.freezer();
        loop {
            if let Some(f) = freezer {
                let freeze_deadline = deadline.min(Instant::now() + self.timeouts.freeze);
                match self.set_frozen(f, true, freeze_deadline) {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::debug!(name = %self.name, "group not fully frozen; killing anyway")
                    }
                    Err(e) => {
                        tracing::warn!(name = %self.name, error = %e, "freezing before kill failed")
                    }
                }
            }
            let listed = self.procs();
            let mut signal_error = None;
            if let Ok(pids) = &listed {
                for &pid in pids {
                    match self.kernel.kill(pid) {
                        Ok(()) => {}
                        // Exited since it was listed.
                        Err(e) if is_errno(&e, Errno::ESRCH) => {}
                        Err(source) => {
                            signal_error = Some(CgroupError::Signal { pid, source });
                            break;
                        }
                    }
                }
            }
            if let Some(f) = freezer {
                // Thaw even on error: v1 delivers SIGKILL only once thawed,
                // and a group must never be left frozen by accident.
                if let Err(e) = self.request_frozen(f, false) {
                    tracing::warn!(name = %self.name, error = %e, "thawing after kill failed");
                }
            }
            let pids = listed?;
            if let Some(e) = signal_error {
                return Err(e);
            }
            if pids.is_empty() {
                tracing::debug!(name = %self.name, "killed all processes");
                return Ok(());
            }
            let round = deadline.min(Instant::now() + KILL_ROUND);
            if wait_until(round, || Ok(self.procs()?.is_empty()))? {
                tracing::debug!(name = %self.name, killed = ?pids, "killed all processes");
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(self.busy(self.primary()));
            }
        }
    }

    /// Freezes every task in the group and waits, bounded by
    /// [`Timeouts::freeze`], until the kernel reports the group frozen. On
    /// timeout the group is thawed again.
    pub fn freeze(&self) -> Result<(), CgroupError> {
        let f = self.require_freezer()?;
        let deadline = Instant::now() + self.timeouts.freeze;
        if self.set_frozen(f, true, deadline)? {
            tracing::debug!(name = %self.name, "cgroup frozen");
            return Ok(());
        }
        if let Err(e) = self.request_frozen(f, false) {
            tracing::warn!(name = %self.name, error = %e, "thawing after failed freeze failed");
        }
        Err(CgroupError::Timeout {
            path: freezer_dir(f).to_owned(),
            what: "the group to freeze",
            waited: self.timeouts.freeze,
        })
    }

    /// Thaws the group and waits, bounded by [`Timeouts::freeze`], until the
    /// kernel reports it thawed.
    pub fn thaw(&self) -> Result<(), CgroupError> {
        let f = self.require_freezer()?;
        let deadline = Instant::now() + self.timeouts.freeze;
        if self.set_frozen(f, false, deadline)? {
            tracing::debug!(name = %self.name, "cgroup thawed");
            return Ok(());
        }
        Err(CgroupError::Timeout {
            path: freezer_dir(f).to_owned(),
            what: "the group to thaw",
            waited: self.timeouts.freeze,
        })
    }

    /// Removes the group's directories (and any child groups a tenant
    /// made). Idempotent: absent directories are fine. `rmdir` fails with
    /// EBUSY while exiting tasks leave, so it is retried with a short
    /// backoff for up to [`Timeouts::remove`]; after that the error names
    /// what is still inside. Does not kill: call [`kill_all`](Self::kill_all)
    /// first.
    pub fn destroy(&self) -> Result<(), CgroupError> {
        let deadline = Instant::now() + self.timeouts.remove;
        for dir in &self.dirs {
            for d in kernel::tree_post_order(&dir.path)? {
                remove_dir_bounded(&*self.kernel, &d, deadline)?;
            }
        }
        tracing::debug!(name = %self.name, "cgroup removed");
        Ok(())
    }

    fn primary(&self) -> &Path {
        &self
            .dirs
            .first()
            .expect("a group always has at least one directory")
            .path
    }

    fn controller_dir(&self, c: Controller) -> Result<&Path, CgroupError> {
        self.dirs
            .iter()
            .find(|d| d.has(c))
            .map(|d| d.path.as_path())
            .ok_or_else(|| CgroupError::Unsupported {
                what: format!("the {} controller is not available", c.name()),
            })
    }

    fn freezer(&self) -> Option<Freezer<'_>> {
        match self.version {
            CgroupVersion::V1 => self
                .dirs
                .iter()
                .find(|d| d.has(Controller::Freezer))
                .map(|d| Freezer::V1(&d.path)),
            CgroupVersion::V2 => {
                let dir = self.primary();
                dir.join("cgroup.freeze")
                    .exists()
                    .then_some(Freezer::V2(dir))
            }
        }
    }

    fn require_freezer(&self) -> Result<Freezer<'_>, CgroupError> {
        self.freezer().ok_or_else(|| CgroupError::Unsupported {
            what: "no freezer: neither the v1 freezer controller nor cgroup.freeze".to_owned(),
        })
    }

    /// Writes the desired freezer state without waiting.
    fn request_frozen(&self, f: Freezer<'_>, frozen: bool) -> Result<(), CgroupError> {
        let (file, value) = match (f, frozen) {
            (Freezer::V1(d), true) => (d.join("freezer.state"), "FROZEN"),
            (Freezer::V1(d), false) => (d.join("freezer.state"), "THAWED"),
            (Freezer::V2(d), true) => (d.join("cgroup.freeze"), "1"),
            (Freezer::V2(d), false) => (d.join("cgroup.freeze"), "0"),
        };
        kernel::write(&*self.kernel, &file, value)
    }

    /// Whether the kernel reports the group fully in the given state.
    fn is_frozen_state(f: Freezer<'_>, frozen: bool) -> Result<bool, CgroupError> {
        match f {
            Freezer::V1(d) => {
                let state = kernel::read(&d.join("freezer.state"))?;
                Ok(state.trim() == if frozen { "FROZEN" } else { "THAWED" })
            }
            Freezer::V2(d) => {
                let file = d.join("cgroup.events");
                let value = kernel::parse_keyed(&file, &kernel::read(&file)?, "frozen")?;
                Ok((value == 1) == frozen)
            }
        }
    }

    /// Requests a state and waits until `deadline` for it; returns whether
    /// it was reached.
    fn set_frozen(
        &self,
        f: Freezer<'_>,
        frozen: bool,
        deadline: Instant,
    ) -> Result<bool, CgroupError> {
        self.request_frozen(f, frozen)?;
        let Freezer::V1(dir) = f else {
            return wait_until(deadline, || Self::is_frozen_state(f, frozen));
        };
        // A v1 group stays FREEZING while a task cannot be frozen at that
        // moment (busy in the kernel, or just forked); writing FROZEN again
        // retries them, and now and then a short thaw lets a task stuck
        // half-way finish what it was doing (as runc does).
        let state = dir.join("freezer.state");
        let mut polls = 0u32;
        wait_until(deadline, || {
            let now = kernel::read(&state)?;
            let now = now.trim();
            if now == if frozen { "FROZEN" } else { "THAWED" } {
                return Ok(true);
            }
            if frozen && now == "FREEZING" {
                polls += 1;
                if polls.is_multiple_of(25) {
                    self.request_frozen(f, false)?;
                }
                self.request_frozen(f, true)?;
            }
            Ok(false)
        })
    }

    fn busy(&self, path: &Path) -> CgroupError {
        CgroupError::Busy {
            path: path.to_owned(),
            pids: self.procs().unwrap_or_default(),
            children: kernel::subdirs(path).unwrap_or_default(),
        }
    }
}

fn freezer_dir(f: Freezer<'_>) -> &Path {
    match f {
        Freezer::V1(d) | Freezer::V2(d) => d,
    }
}

/// The pids in `dir` and its descendants; empty if `dir` is absent.
fn subtree_pids(dir: &Path) -> Result<Vec<i32>, CgroupError> {
    let mut pids = Vec::new();
    for d in kernel::tree_post_order(dir)? {
        let file = d.join("cgroup.procs");
        match fs::read_to_string(&file) {
            Ok(text) => pids.extend(kernel::parse_pids(&file, &text)?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(CgroupError::ReadFile { path: file, source }),
        }
    }
    Ok(pids)
}

/// Removes one cgroup directory, retrying on EBUSY (tasks still exiting)
/// until `deadline`. Absent is success. If the directory has child groups
/// it fails at once, since waiting would not help.
pub(crate) fn remove_dir_bounded(
    kernel: &dyn Kernel,
    path: &Path,
    deadline: Instant,
) -> Result<(), CgroupError> {
    let mut last_busy = false;
    let done = wait_until(deadline, || match kernel.rmdir(path) {
        Ok(()) => Ok(true),
        Err(e) if is_errno(&e, Errno::ENOENT) => Ok(true),
        Err(e) if is_errno(&e, Errno::EBUSY) => {
            if !kernel::subdirs(path)?.is_empty() {
                return Err(busy_error(path));
            }
            last_busy = true;
            Ok(false)
        }
        Err(source) => Err(CgroupError::RemoveDir {
            path: path.to_owned(),
            source,
        }),
    })?;
    if done {
        tracing::trace!(path = %path.display(), "removed cgroup directory");
        return Ok(());
    }
    debug_assert!(last_busy);
    Err(busy_error(path))
}

fn busy_error(path: &Path) -> CgroupError {
    CgroupError::Busy {
        path: path.to_owned(),
        pids: subtree_pids(path).unwrap_or_default(),
        children: kernel::subdirs(path).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{fake_v1, fake_v2, manager, FakeKernel};
    use crate::{CgroupLimits, CgroupManager};

    fn v1() -> (tempfile::TempDir, CgroupManager, Arc<FakeKernel>, Cgroup) {
        let tmp = tempfile::tempdir().unwrap();
        let (root, mountinfo) = fake_v1(tmp.path(), true);
        let (m, k) = manager(&root, &mountinfo);
        let cg = m.create("sb", &CgroupLimits::default()).unwrap();
        (tmp, m, k, cg)
    }

    fn v2() -> (tempfile::TempDir, CgroupManager, Arc<FakeKernel>, Cgroup) {
        let tmp = tempfile::tempdir().unwrap();
        let (root, mountinfo) = fake_v2(tmp.path(), "cpu memory pids");
        let (m, k) = manager(&root, &mountinfo);
        let cg = m.create("sb", &CgroupLimits::default()).unwrap();
        (tmp, m, k, cg)
    }

    /// Puts `pids` into the group the way the kernel would list them.
    fn join(cg: &Cgroup, pids: &[u32]) {
        for &pid in pids {
            cg.add_process(pid).unwrap();
        }
    }

    fn file(cg: &Cgroup, dir: usize, name: &str) -> PathBuf {
        cg.paths()[dir].join(name)
    }

    #[test]
    fn add_process_joins_every_hierarchy() {
        let (_tmp, _m, k, cg) = v1();
        join(&cg, &[41, 42]);
        assert_eq!(
            k.writes_to("cgroup.procs"),
            vec!["41", "41", "41", "41", "42", "42", "42", "42"]
        );
        for f in cg.procs_files() {
            assert_eq!(fs::read_to_string(f).unwrap(), "41\n42\n");
        }
        assert_eq!(cg.procs().unwrap(), vec![41, 42]);
    }

    #[test]
    fn procs_merges_hierarchies_and_child_groups() {
        let (_tmp, _m, _k, cg) = v1();
        fs::write(file(&cg, 0, "cgroup.procs"), "5\n3\n").unwrap();
        fs::write(file(&cg, 1, "cgroup.procs"), "3\n9\n").unwrap();
        let child = cg.paths()[2].join("tenant-sub");
        fs::create_dir(&child).unwrap();
        fs::write(child.join("cgroup.procs"), "11\n").unwrap();
        assert_eq!(cg.procs().unwrap(), vec![3, 5, 9, 11]);
        fs::write(file(&cg, 1, "cgroup.procs"), "x\n").unwrap();
        assert!(matches!(cg.procs(), Err(CgroupError::Parse { .. })));
    }

    #[test]
    fn oom_kills_and_usage_are_parsed_v1() {
        let (_tmp, _m, _k, cg) = v1();
        assert_eq!(cg.oom_kills().unwrap(), 0);
        fs::write(
            file(&cg, 1, "memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
        )
        .unwrap();
        assert_eq!(cg.oom_kills().unwrap(), 3);
        fs::write(file(&cg, 1, "memory.usage_in_bytes"), "1048576\n").unwrap();
        assert_eq!(cg.memory_current().unwrap(), 1 << 20);
        fs::write(file(&cg, 2, "pids.current"), "7\n").unwrap();
        assert_eq!(cg.pids_current().unwrap(), 7);
        // An old kernel without the oom_kill line.
        fs::write(
            file(&cg, 1, "memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\n",
        )
        .unwrap();
        assert!(matches!(cg.oom_kills(), Err(CgroupError::Parse { .. })));
    }

    #[test]
    fn oom_kills_and_usage_are_parsed_v2() {
        let (_tmp, _m, _k, cg) = v2();
        assert_eq!(cg.oom_kills().unwrap(), 0);
        fs::write(
            file(&cg, 0, "memory.events"),
            "low 0\nhigh 0\nmax 2\noom 1\noom_kill 1\noom_group_kill 0\n",
        )
        .unwrap();
        assert_eq!(cg.oom_kills().unwrap(), 1);
        fs::write(file(&cg, 0, "memory.current"), "4096\n").unwrap();
        assert_eq!(cg.memory_current().unwrap(), 4096);
        fs::write(file(&cg, 0, "pids.current"), "2\n").unwrap();
        assert_eq!(cg.pids_current().unwrap(), 2);
    }

    #[test]
    fn v1_kill_all_freezes_signals_and_thaws() {
        let (_tmp, _m, k, cg) = v1();
        join(&cg, &[100, 101]);
        // A process that only made it into one hierarchy is killed too.
        fs::write(file(&cg, 1, "cgroup.procs"), "100\n101\n102\n").unwrap();
        cg.kill_all().unwrap();
        assert!(cg.procs().unwrap().is_empty());
        assert_eq!(*k.kills.lock().unwrap(), vec![100, 101, 102]);
        let states = k.writes_to("freezer.state");
        assert_eq!(states.first().map(String::as_str), Some("FROZEN"));
        assert_eq!(states.last().map(String::as_str), Some("THAWED"));
        assert_eq!(
            fs::read_to_string(file(&cg, 3, "freezer.state")).unwrap(),
            "THAWED\n"
        );
        // Nothing left: a second call is a no-op apart from freezing.
        cg.kill_all().unwrap();
        assert_eq!(k.kills.lock().unwrap().len(), 3);
    }

    #[test]
    fn kill_all_gives_up_after_its_bound() {
        let (_tmp, _m, k, cg) = v1();
        join(&cg, &[100, 200]);
        k.immortal.lock().unwrap().push(200);
        let start = Instant::now();
        let err = cg.kill_all().unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(2));
        assert!(
            matches!(&err, CgroupError::Busy { pids, .. } if pids == &[200]),
            "{err}"
        );
        // It kept trying, and left the group thawed.
        assert!(
            k.kills
                .lock()
                .unwrap()
                .iter()
                .filter(|p| **p == 200)
                .count()
                > 1
        );
        assert_eq!(
            fs::read_to_string(file(&cg, 3, "freezer.state")).unwrap(),
            "THAWED\n"
        );
    }

    #[test]
    fn v2_kill_all_uses_cgroup_kill() {
        let (_tmp, _m, k, cg) = v2();
        join(&cg, &[300, 301]);
        cg.kill_all().unwrap();
        assert!(cg.procs().unwrap().is_empty());
        assert_eq!(k.writes_to("cgroup.kill"), vec!["1"]);
        assert!(k.kills.lock().unwrap().is_empty());
    }

    #[test]
    fn v2_without_cgroup_kill_falls_back_to_signals() {
        let (_tmp, _m, k, cg) = v2();
        fs::remove_file(file(&cg, 0, "cgroup.kill")).unwrap();
        join(&cg, &[300]);
        cg.kill_all().unwrap();
        assert_eq!(*k.kills.lock().unwrap(), vec![300]);
        assert_eq!(k.writes_to("cgroup.freeze"), vec!["1", "0"]);
    }

    #[test]
    fn freeze_and_thaw_v1() {
        let (_tmp, _m, _k, cg) = v1();
        cg.freeze().unwrap();
        let state = file(&cg, 3, "freezer.state");
        assert_eq!(fs::read_to_string(&state).unwrap(), "FROZEN\n");
        cg.thaw().unwrap();
        assert_eq!(fs::read_to_string(&state).unwrap(), "THAWED\n");
    }

    #[test]
    fn freeze_and_thaw_v2() {
        let (_tmp, _m, _k, cg) = v2();
        cg.freeze().unwrap();
        let events = fs::read_to_string(file(&cg, 0, "cgroup.events")).unwrap();
        assert!(events.contains("frozen 1"), "{events}");
        cg.thaw().unwrap();
        let events = fs::read_to_string(file(&cg, 0, "cgroup.events")).unwrap();
        assert!(events.contains("frozen 0"), "{events}");
    }

    #[test]
    fn freeze_timeout_thaws_again() {
        let (_tmp, _m, k, cg) = v2();
        *k.stuck_freeze.lock().unwrap() = true;
        let err = cg.freeze().unwrap_err();
        assert!(matches!(err, CgroupError::Timeout { .. }), "{err}");
        assert_eq!(k.writes_to("cgroup.freeze"), vec!["1", "0"]);
    }

    #[test]
    fn freezing_without_a_freezer_is_unsupported() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, _) = fake_v1(tmp.path(), true);
        fs::remove_dir_all(root.join("freezer")).unwrap();
        let (m, k) = manager(&root, "");
        let cg = m.create("sb", &CgroupLimits::default()).unwrap();
        assert!(matches!(cg.freeze(), Err(CgroupError::Unsupported { .. })));
        assert!(matches!(cg.thaw(), Err(CgroupError::Unsupported { .. })));
        // kill_all still works, by signals alone.
        join(&cg, &[5]);
        cg.kill_all().unwrap();
        assert_eq!(*k.kills.lock().unwrap(), vec![5]);
    }

    #[test]
    fn destroy_retries_transient_ebusy() {
        let (_tmp, _m, k, cg) = v1();
        *k.transient_busy.lock().unwrap() = 3;
        cg.destroy().unwrap();
        assert!(cg.paths().iter().all(|p| !p.exists()));
    }

    #[test]
    fn destroy_names_what_is_still_inside() {
        let (_tmp, _m, _k, cg) = v2();
        join(&cg, &[4242]);
        let start = Instant::now();
        let err = cg.destroy().unwrap_err();
        assert!(start.elapsed() >= Duration::from_millis(100));
        assert!(start.elapsed() < Duration::from_secs(2));
        match &err {
            CgroupError::Busy { path, pids, .. } => {
                assert_eq!(path, &cg.paths()[0]);
                assert_eq!(pids, &[4242]);
            }
            other => panic!("unexpected {other}"),
        }
        assert!(err.to_string().contains("4242"), "{err}");
        cg.kill_all().unwrap();
        cg.destroy().unwrap();
    }

    #[test]
    fn destroy_removes_tenant_child_groups() {
        let (_tmp, m, k, cg) = v2();
        k.mkdir(&cg.paths()[0].join("inner")).unwrap();
        k.mkdir(&cg.paths()[0].join("inner/deeper")).unwrap();
        cg.destroy().unwrap();
        assert!(m.list().unwrap().is_empty());
        m.destroy_parent().unwrap();
    }

    #[test]
    fn errors_carry_context_without_repeating_the_source() {
        let (_tmp, _m, k, cg) = v1();
        k.fail_writes
            .lock()
            .unwrap()
            .push(("cgroup.procs".to_owned(), libc::EACCES));
        let err = cg.add_process(7).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("failed to write \"7\" to "), "{msg}");
        assert!(!msg.to_lowercase().contains("permission denied"), "{msg}");
        let source = std::error::Error::source(&err).expect("has a source");
        assert!(source.to_string().contains("Permission denied"));
    }
}
