//! Tests against the host's real cgroups. They need root; without it they
//! print `SKIP <test>: <reason>` and pass, unless `CI=true`, where a missing
//! capability fails the test. Each test works below its own parent
//! (`warren-test-<pid>-<tag>`), cleans up through a drop guard, and ends
//! with a leak check over every hierarchy under `/sys/fs/cgroup`.

use std::fs;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use warren_cgroup::{Cgroup, CgroupError, CgroupLimits, CgroupManager, CgroupVersion};

const ROOT: &str = "/sys/fs/cgroup";
const MIB: u64 = 1 << 20;

/// Decides whether a test can run; prints the skip line if not. Under
/// `CI=true` a missing capability is a failure.
fn capable(test: &str, needs: &[(&str, bool)]) -> bool {
    let mut missing: Vec<&str> = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push("not running as root");
    }
    missing.extend(needs.iter().filter(|(_, ok)| !ok).map(|(what, _)| *what));
    if missing.is_empty() {
        return true;
    }
    let reason = missing.join(", ");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: capability missing under CI=true: {reason}");
    }
    println!("SKIP {test}: {reason}");
    false
}

fn parent_name(tag: &str) -> String {
    format!("warren-test-{}-{tag}", std::process::id())
}

/// Owns everything a test creates and removes it even when the test fails.
struct Fixture {
    manager: CgroupManager,
    children: Vec<Child>,
}

impl Fixture {
    fn new(root: &str, tag: &str) -> Self {
        let manager = CgroupManager::detect(root, &parent_name(tag)).expect("detect cgroups");
        Self {
            manager,
            children: Vec::new(),
        }
    }

    fn spawn(&mut self, cmd: &mut Command) -> u32 {
        let child = cmd.spawn().expect("spawn child");
        let pid = child.id();
        self.children.push(child);
        pid
    }

    fn child(&mut self, pid: u32) -> &mut Child {
        self.children
            .iter_mut()
            .find(|c| c.id() == pid)
            .expect("known child")
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for name in self.manager.list().unwrap_or_default() {
            if let Ok(Some(cg)) = self.manager.open(&name) {
                let _ = cg.kill_all();
                let _ = cg.destroy();
            }
        }
        let _ = self.manager.destroy_parent();
    }
}

/// Fails if any hierarchy under /sys/fs/cgroup still has the test parent.
fn assert_no_leak(tag: &str) {
    let parent = parent_name(tag);
    for entry in fs::read_dir(ROOT).expect("list cgroup root") {
        let leftover = entry.expect("dir entry").path().join(&parent);
        assert!(!leftover.exists(), "leaked {}", leftover.display());
    }
    assert!(!Path::new(ROOT).join(&parent).exists());
}

fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn read(path: &Path) -> String {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_owned()
}

/// The group directory that serves a controller file, found by name.
fn dir_with(cg: &Cgroup, file: &str) -> PathBuf {
    cg.paths()
        .into_iter()
        .find(|d| d.join(file).exists())
        .unwrap_or_else(|| panic!("no directory of {cg:?} has {file}"))
}

fn is_v1_host() -> bool {
    Path::new(ROOT).join("memory/cgroup.procs").exists()
}

fn is_v2_host() -> bool {
    Path::new(ROOT).join("cgroup.controllers").exists()
}

#[test]
fn host_limits_join_freeze_kill_destroy() {
    let test = "host_limits_join_freeze_kill_destroy";
    if !capable(
        test,
        &[(
            "a cgroup v1 or v2 hierarchy at /sys/fs/cgroup",
            is_v1_host() || is_v2_host(),
        )],
    ) {
        return;
    }
    let tag = "basic";
    {
        let mut fx = Fixture::new(ROOT, tag);
        let expected = if is_v2_host() {
            CgroupVersion::V2
        } else {
            CgroupVersion::V1
        };
        assert_eq!(fx.manager.version(), expected);

        let limits = CgroupLimits {
            cpu_millis: Some(500),
            memory_bytes: Some(64 * MIB),
            pids_max: Some(16),
        };
        let cg = fx.manager.create("sb", &limits).expect("create");

        // The limits are in the real files.
        match cg.version() {
            CgroupVersion::V1 => {
                let cpu = dir_with(&cg, "cpu.cfs_quota_us");
                assert_eq!(read(&cpu.join("cpu.cfs_quota_us")), "50000");
                assert_eq!(read(&cpu.join("cpu.cfs_period_us")), "100000");
                let mem = dir_with(&cg, "memory.limit_in_bytes");
                assert_eq!(
                    read(&mem.join("memory.limit_in_bytes")),
                    (64 * MIB).to_string()
                );
                let memsw = mem.join("memory.memsw.limit_in_bytes");
                if memsw.exists() {
                    assert_eq!(read(&memsw), (64 * MIB).to_string());
                }
                assert_eq!(read(&mem.join("memory.swappiness")), "0");
                assert_eq!(read(&dir_with(&cg, "pids.max").join("pids.max")), "16");
                // One procs file per distinct hierarchy, deduplicated.
                let files = cg.procs_files();
                let mut unique = files.clone();
                unique.sort();
                unique.dedup();
                assert_eq!(unique.len(), files.len());
            }
            CgroupVersion::V2 => {
                let dir = &cg.paths()[0];
                assert_eq!(read(&dir.join("cpu.max")), "50000 100000");
                assert_eq!(read(&dir.join("memory.max")), (64 * MIB).to_string());
                if dir.join("memory.swap.max").exists() {
                    assert_eq!(read(&dir.join("memory.swap.max")), "0");
                }
                assert_eq!(read(&dir.join("pids.max")), "16");
            }
        }

        // Idempotent create re-applies limits.
        let raised = CgroupLimits {
            memory_bytes: Some(128 * MIB),
            pids_max: Some(32),
            ..limits.clone()
        };
        let cg = fx.manager.create("sb", &raised).expect("re-create");
        assert_eq!(read(&dir_with(&cg, "pids.max").join("pids.max")), "32");
        assert_eq!(fx.manager.list().expect("list"), vec!["sb"]);
        assert!(fx.manager.open("sb").expect("open").is_some());
        assert!(fx.manager.open("nope").expect("open").is_none());

        // A real process joins through the procs files.
        let pid = fx.spawn(Command::new("sleep").arg("30"));
        cg.add_process(pid).expect("join");
        assert_eq!(cg.procs().expect("procs"), vec![pid as i32]);
        assert!(cg.pids_current().expect("pids.current") >= 1);
        let membership = read(Path::new(&format!("/proc/{pid}/cgroup")));
        let suffix = format!("/{}/sb", fx.manager.parent());
        assert!(
            membership.lines().any(|l| l.ends_with(&suffix)),
            "{membership}"
        );

        // Freeze and thaw are visible in the kernel's own state files.
        let frozen = || match cg.version() {
            CgroupVersion::V1 => {
                read(&dir_with(&cg, "freezer.state").join("freezer.state")) == "FROZEN"
            }
            CgroupVersion::V2 => read(&cg.paths()[0].join("cgroup.events")).contains("frozen 1"),
        };
        cg.freeze().expect("freeze");
        assert!(frozen());
        cg.thaw().expect("thaw");
        assert!(!frozen());

        // kill_all kills it with SIGKILL and empties the group.
        cg.kill_all().expect("kill_all");
        let status = wait_exit(fx.child(pid), Duration::from_secs(5)).expect("child exits");
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
        assert!(cg.procs().expect("procs").is_empty());

        cg.destroy().expect("destroy");
        assert!(cg.paths().iter().all(|p| !p.exists()));
        cg.destroy().expect("destroy is idempotent");
        assert!(fx.manager.list().expect("list").is_empty());
        fx.manager.destroy_parent().expect("destroy parent");
    }
    assert_no_leak(tag);
}

#[test]
fn host_oom_kill_is_reported() {
    let test = "host_oom_kill_is_reported";
    let python = Command::new("python3")
        .arg("-c")
        .arg("pass")
        .status()
        .is_ok_and(|s| s.success());
    if !capable(
        test,
        &[
            ("a cgroup memory controller", is_v1_host() || is_v2_host()),
            ("python3", python),
        ],
    ) {
        return;
    }
    let tag = "oom";
    {
        let mut fx = Fixture::new(ROOT, tag);
        let limits = CgroupLimits {
            memory_bytes: Some(32 * MIB),
            pids_max: Some(64),
            ..Default::default()
        };
        let cg = fx.manager.create("hog", &limits).expect("create");
        assert_eq!(cg.oom_kills().expect("oom_kills"), 0);
        // The child waits for a line on stdin, so it allocates only once it
        // is inside the group.
        let pid = fx.spawn(
            Command::new("python3")
                .arg("-c")
                .arg("import sys; sys.stdin.readline(); b = b'x' * (200 << 20); print(len(b))")
                .stdin(Stdio::piped())
                .stdout(Stdio::null()),
        );
        cg.add_process(pid).expect("join");
        let child = fx.child(pid);
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(b"go\n")
            .expect("release child");
        let status = wait_exit(child, Duration::from_secs(30)).expect("hog exits");
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
        assert!(cg.oom_kills().expect("oom_kills") >= 1);
        cg.kill_all().expect("kill_all");
        cg.destroy().expect("destroy");
        fx.manager.destroy_parent().expect("destroy parent");
    }
    assert_no_leak(tag);
}

#[test]
fn host_pids_limit_and_kill_of_orphans() {
    let test = "host_pids_limit_and_kill_of_orphans";
    if !capable(
        test,
        &[("a cgroup pids controller", is_v1_host() || is_v2_host())],
    ) {
        return;
    }
    let tag = "pids";
    {
        let mut fx = Fixture::new(ROOT, tag);
        let limits = CgroupLimits {
            pids_max: Some(4),
            ..Default::default()
        };
        let cg = fx.manager.create("forky", &limits).expect("create");
        // The shell tries to start ten background sleeps. The fork that
        // would exceed the limit fails, which makes the shell exit with an
        // error; the sleeps it did start become orphans that only the
        // cgroup still holds.
        let pid = fx.spawn(
            Command::new("sh")
                .arg("-c")
                .arg("read _; i=0; while [ $i -lt 10 ]; do sleep 30 & i=$((i+1)); done")
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        cg.add_process(pid).expect("join");
        let child = fx.child(pid);
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(b"go\n")
            .expect("release child");
        let status = wait_exit(child, Duration::from_secs(10)).expect("shell exits");
        assert!(!status.success(), "a fork should have failed: {status:?}");
        let left = cg.procs().expect("procs");
        assert!(!left.is_empty() && left.len() <= 4, "{left:?}");
        assert!(cg.pids_current().expect("pids.current") <= 4);
        cg.kill_all().expect("kill_all reaches orphans");
        assert!(cg.procs().expect("procs").is_empty());
        for p in left {
            // Gone or a zombie awaiting its new parent's reaping.
            let stat = fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            assert!(stat.is_empty() || stat.contains(") Z "), "{p}: {stat}");
        }
        cg.destroy().expect("destroy");
        fx.manager.destroy_parent().expect("destroy parent");
    }
    assert_no_leak(tag);
}

/// On a hybrid host the unified mount has no controllers, but it is a real
/// cgroup2 hierarchy: it exercises the v2 join, freeze and `cgroup.kill`
/// paths. Pure v2 hosts run those in the tests above instead.
#[test]
fn host_hybrid_unified_is_v2_without_controllers() {
    let test = "host_hybrid_unified_is_v2_without_controllers";
    let unified = Path::new(ROOT).join("unified");
    if !unified.join("cgroup.controllers").exists() {
        // A layout difference, not a missing capability: never fatal.
        println!("SKIP {test}: not a hybrid host");
        return;
    }
    if !capable(test, &[]) {
        return;
    }
    let tag = "unified";
    {
        let mut fx = Fixture::new(unified.to_str().expect("utf-8 path"), tag);
        assert_eq!(fx.manager.version(), CgroupVersion::V2);
        let limited = CgroupLimits {
            memory_bytes: Some(64 * MIB),
            ..Default::default()
        };
        let err = fx.manager.create("sb", &limited).unwrap_err();
        assert!(matches!(err, CgroupError::Unsupported { .. }), "{err}");
        assert!(fx.manager.open("sb").expect("open").is_none());

        let cg = fx
            .manager
            .create("sb", &CgroupLimits::default())
            .expect("create");
        let pid = fx.spawn(Command::new("sleep").arg("30"));
        cg.add_process(pid).expect("join");
        assert_eq!(cg.procs().expect("procs"), vec![pid as i32]);

        cg.freeze().expect("freeze");
        let events = read(&cg.paths()[0].join("cgroup.events"));
        assert!(events.contains("frozen 1"), "{events}");
        cg.thaw().expect("thaw");

        // Kill while frozen: cgroup.kill must still work.
        cg.freeze().expect("freeze again");
        cg.kill_all().expect("kill_all");
        let status = wait_exit(fx.child(pid), Duration::from_secs(5)).expect("child exits");
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
        cg.thaw().expect("thaw");
        cg.destroy().expect("destroy");
        fx.manager.destroy_parent().expect("destroy parent");
    }
    assert_no_leak(tag);
}
