//! A fake [`Kernel`] for hermetic tests: it emulates the cgroupfs behaviour
//! this crate depends on inside a tempdir, and records what it was asked
//! to do.
//!
//! Emulated: `mkdir` populates control files (v1: like the parent; v2: the
//! core files plus those of the controllers in the parent's
//! `subtree_control`); `rmdir` removes those files but fails with EBUSY
//! while the group has processes or child groups; writes to missing files
//! fail with ENOENT (cgroupfs cannot create files) and values with trailing
//! whitespace are rejected; `subtree_control` takes `+c`/`-c` tokens, only
//! for offered controllers, and refuses with EBUSY if the group holds
//! processes; v1 enforces `memsw.limit >= limit`; `cgroup.kill`,
//! `cgroup.freeze` and SIGKILL act on the pids listed in `cgroup.procs`.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::kernel::{tree_post_order, Kernel};
use crate::{CgroupManager, Timeouts};

/// What "unlimited" reads back as in v1 memory files.
pub(crate) const V1_UNLIMITED: &str = "9223372036854771712";

#[derive(Debug, Default)]
pub(crate) struct FakeKernel {
    root: PathBuf,
    /// Every write, in order: (path, value).
    pub writes: Mutex<Vec<(PathBuf, String)>>,
    /// Every pid SIGKILL was sent to, in order.
    pub kills: Mutex<Vec<i32>>,
    /// Pids that survive SIGKILL and `cgroup.kill`.
    pub immortal: Mutex<Vec<i32>>,
    /// Writes to files with this name fail with the given errno.
    pub fail_writes: Mutex<Vec<(String, i32)>>,
    /// How many more `rmdir` calls fail with EBUSY regardless.
    pub transient_busy: Mutex<u32>,
    /// When set, `cgroup.freeze` never reports the group frozen.
    pub stuck_freeze: Mutex<bool>,
}

fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().expect("fake kernel lock poisoned")
}

impl FakeKernel {
    pub(crate) fn new(root: &Path) -> Self {
        Self {
            root: fs::canonicalize(root).expect("fake root exists"),
            ..Self::default()
        }
    }

    /// The values written to files named `name`, in order.
    pub(crate) fn writes_to(&self, name: &str) -> Vec<String> {
        lock(&self.writes)
            .iter()
            .filter(|(p, _)| p.file_name().is_some_and(|n| n == name))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The file names written, in order.
    pub(crate) fn write_order(&self) -> Vec<(String, String)> {
        lock(&self.writes)
            .iter()
            .map(|(p, v)| {
                let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
                (name.unwrap_or_default(), v.clone())
            })
            .collect()
    }

    fn remove_pids(&self, dir: &Path, keep: impl Fn(i32) -> bool) -> io::Result<bool> {
        let mut found = false;
        for d in tree_post_order(dir).map_err(io::Error::other)? {
            let file = d.join("cgroup.procs");
            let Ok(text) = fs::read_to_string(&file) else {
                continue;
            };
            let pids: Vec<i32> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
            let kept: Vec<String> = pids
                .iter()
                .filter(|p| keep(**p))
                .map(ToString::to_string)
                .collect();
            found |= kept.len() != pids.len();
            let mut out = kept.join("\n");
            if !out.is_empty() {
                out.push('\n');
            }
            fs::write(&file, out)?;
            let events = d.join("cgroup.events");
            if events.exists() && kept.is_empty() {
                set_key(&events, "populated", "0")?;
            }
        }
        Ok(found)
    }
}

fn set_key(file: &Path, key: &str, value: &str) -> io::Result<()> {
    let text = fs::read_to_string(file)?;
    let out: Vec<String> = text
        .lines()
        .map(|l| {
            if l.split(' ').next() == Some(key) {
                format!("{key} {value}")
            } else {
                l.to_owned()
            }
        })
        .collect();
    fs::write(file, out.join("\n") + "\n")
}

fn v1_number(value: &str) -> io::Result<u64> {
    if value == "-1" {
        return V1_UNLIMITED.parse().map_err(io::Error::other);
    }
    value.parse().map_err(|_| errno(libc::EINVAL))
}

fn read_v1_number(file: &Path) -> io::Result<u64> {
    match fs::read_to_string(file) {
        Ok(t) => v1_number(t.trim()),
        // No memsw file: no constraint.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(u64::MAX),
        Err(e) => Err(e),
    }
}

fn has_procs(dir: &Path) -> bool {
    fs::read_to_string(dir.join("cgroup.procs")).is_ok_and(|t| !t.trim().is_empty())
}

impl Kernel for FakeKernel {
    fn write(&self, path: &Path, value: &str) -> io::Result<()> {
        lock(&self.writes).push((path.to_owned(), value.to_owned()));
        if !path.is_file() {
            return Err(errno(libc::ENOENT));
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some((_, e)) = lock(&self.fail_writes).iter().find(|(n, _)| *n == name) {
            return Err(errno(*e));
        }
        if value.trim() != value || value.is_empty() {
            return Err(errno(libc::EINVAL));
        }
        let dir = path.parent().expect("control files live in a directory");
        match name.as_str() {
            "cgroup.subtree_control" => {
                let offered = fs::read_to_string(dir.join("cgroup.controllers"))?;
                let offered: BTreeSet<&str> = offered.split_whitespace().collect();
                let current = fs::read_to_string(path)?;
                let mut enabled: BTreeSet<String> =
                    current.split_whitespace().map(str::to_owned).collect();
                for token in value.split(' ') {
                    let (op, c) = token.split_at(1);
                    if !offered.contains(c) {
                        return Err(errno(libc::ENOENT));
                    }
                    match op {
                        "+" => enabled.insert(c.to_owned()),
                        "-" => enabled.remove(c),
                        _ => return Err(errno(libc::EINVAL)),
                    };
                }
                if dir != self.root && has_procs(dir) {
                    return Err(errno(libc::EBUSY));
                }
                let list: Vec<String> = enabled.into_iter().collect();
                fs::write(path, list.join(" ") + "\n")
            }
            "cgroup.kill" => {
                if value != "1" {
                    return Err(errno(libc::EINVAL));
                }
                let immortal = lock(&self.immortal).clone();
                self.remove_pids(dir, |p| immortal.contains(&p)).map(|_| ())
            }
            "cgroup.freeze" => {
                let frozen = match value {
                    "0" => "0",
                    "1" if *lock(&self.stuck_freeze) => "0",
                    "1" => "1",
                    _ => return Err(errno(libc::EINVAL)),
                };
                fs::write(path, format!("{value}\n"))?;
                set_key(&dir.join("cgroup.events"), "frozen", frozen)
            }
            "freezer.state" => match value {
                "FROZEN" | "THAWED" => fs::write(path, format!("{value}\n")),
                _ => Err(errno(libc::EINVAL)),
            },
            "memory.limit_in_bytes" => {
                let v = v1_number(value)?;
                if v > read_v1_number(&dir.join("memory.memsw.limit_in_bytes"))? {
                    return Err(errno(libc::EINVAL));
                }
                fs::write(path, format!("{v}\n"))
            }
            "memory.memsw.limit_in_bytes" => {
                let v = v1_number(value)?;
                if v < read_v1_number(&dir.join("memory.limit_in_bytes"))? {
                    return Err(errno(libc::EINVAL));
                }
                fs::write(path, format!("{v}\n"))
            }
            "cgroup.procs" => {
                let pid: i32 = value.parse().map_err(|_| errno(libc::EINVAL))?;
                // A process is in exactly one group per hierarchy.
                let hierarchy = if self.root.join("cgroup.subtree_control").exists() {
                    self.root.clone()
                } else {
                    let rel = path.strip_prefix(&self.root).map_err(io::Error::other)?;
                    let first = rel.components().next().ok_or_else(|| errno(libc::EINVAL))?;
                    self.root.join(first)
                };
                self.remove_pids(&hierarchy, |p| p != pid)?;
                let mut text = fs::read_to_string(path)?;
                text.push_str(&format!("{pid}\n"));
                fs::write(path, text)
            }
            _ => fs::write(path, format!("{value}\n")),
        }
    }

    fn mkdir(&self, path: &Path) -> io::Result<()> {
        fs::create_dir(path)?;
        let parent = path.parent().expect("a cgroup has a parent");
        let subtree = parent.join("cgroup.subtree_control");
        let mut files: Vec<(String, String)> = Vec::new();
        if subtree.is_file() {
            let enabled = fs::read_to_string(&subtree)?;
            for f in [
                "cgroup.procs",
                "cgroup.subtree_control",
                "cgroup.events",
                "cgroup.freeze",
                "cgroup.kill",
            ] {
                files.push((f.to_owned(), default_content(f).to_owned()));
            }
            files.push(("cgroup.controllers".to_owned(), enabled.clone()));
            for c in enabled.split_whitespace() {
                let names: &[&str] = match c {
                    "cpu" => &["cpu.max", "cpu.stat"],
                    "memory" => &[
                        "memory.max",
                        "memory.swap.max",
                        "memory.current",
                        "memory.events",
                    ],
                    "pids" => &["pids.max", "pids.current"],
                    _ => &[],
                };
                for f in names {
                    files.push(((*f).to_owned(), default_content(f).to_owned()));
                }
            }
        } else {
            for entry in fs::read_dir(parent)? {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if entry.file_type()?.is_file()
                    && !matches!(name.as_str(), "cgroup.sane_behavior" | "release_agent")
                {
                    let content = default_content(&name).to_owned();
                    files.push((name, content));
                }
            }
        }
        for (name, content) in files {
            fs::write(path.join(name), content)?;
        }
        Ok(())
    }

    fn rmdir(&self, path: &Path) -> io::Result<()> {
        if !path.is_dir() {
            return Err(errno(libc::ENOENT));
        }
        let has_children = fs::read_dir(path)?
            .filter_map(Result::ok)
            .any(|e| e.file_type().is_ok_and(|t| t.is_dir()));
        if has_children || has_procs(path) {
            return Err(errno(libc::EBUSY));
        }
        {
            let mut busy = lock(&self.transient_busy);
            if *busy > 0 {
                *busy -= 1;
                return Err(errno(libc::EBUSY));
            }
        }
        fs::remove_dir_all(path)
    }

    fn kill(&self, pid: i32) -> io::Result<()> {
        lock(&self.kills).push(pid);
        if lock(&self.immortal).contains(&pid) {
            return Ok(());
        }
        let root = self.root.clone();
        if self.remove_pids(&root, |p| p != pid)? {
            Ok(())
        } else {
            Err(errno(libc::ESRCH))
        }
    }
}

/// The content a fresh cgroup control file starts with.
pub(crate) fn default_content(name: &str) -> &'static str {
    match name {
        "memory.limit_in_bytes" | "memory.memsw.limit_in_bytes" => "9223372036854771712\n",
        "memory.oom_control" => "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
        "memory.use_hierarchy" => "1\n",
        "memory.swappiness" => "60\n",
        "cpu.cfs_period_us" => "100000\n",
        "cpu.cfs_quota_us" => "-1\n",
        "cpu.max" => "max 100000\n",
        "pids.max" | "memory.max" | "memory.swap.max" => "max\n",
        "freezer.state" => "THAWED\n",
        "memory.events" => "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
        "cgroup.events" => "populated 0\nfrozen 0\n",
        "cgroup.freeze" => "0\n",
        "cgroup.procs" | "cgroup.subtree_control" | "cgroup.kill" | "tasks" | "cpu.stat" => "",
        _ => "0\n",
    }
}

fn write_files(dir: &Path, names: &[&str]) {
    fs::create_dir_all(dir).expect("create fake hierarchy");
    for name in names {
        fs::write(dir.join(name), default_content(name)).expect("write fake file");
    }
}

/// A fake v1 hybrid tree in `tmp`, like this project's CI hosts but with
/// `cpu,cpuacct` co-mounted (and `cpu`, `cpuacct` symlinks to it). Returns
/// the root and a matching mount table.
pub(crate) fn fake_v1(tmp: &Path, memsw: bool) -> (PathBuf, String) {
    let root = tmp.join("cgroup");
    let common = [
        "cgroup.procs",
        "tasks",
        "cgroup.sane_behavior",
        "release_agent",
    ];
    let with = |extra: &[&'static str]| -> Vec<&'static str> {
        common.iter().chain(extra.iter()).copied().collect()
    };
    write_files(
        &root.join("cpu,cpuacct"),
        &with(&[
            "cpu.cfs_period_us",
            "cpu.cfs_quota_us",
            "cpu.shares",
            "cpuacct.usage",
        ]),
    );
    std::os::unix::fs::symlink("cpu,cpuacct", root.join("cpu")).expect("symlink");
    std::os::unix::fs::symlink("cpu,cpuacct", root.join("cpuacct")).expect("symlink");
    let mut memory = with(&[
        "memory.limit_in_bytes",
        "memory.usage_in_bytes",
        "memory.oom_control",
        "memory.swappiness",
        "memory.use_hierarchy",
    ]);
    if memsw {
        memory.push("memory.memsw.limit_in_bytes");
    }
    write_files(&root.join("memory"), &memory);
    write_files(&root.join("pids"), &with(&["pids.max", "pids.current"]));
    // The real freezer root has no freezer.state; the fake root has one so
    // that children (which copy the parent's files) get it.
    write_files(&root.join("freezer"), &with(&["freezer.state"]));
    write_files(&root.join("systemd"), &with(&[]));
    write_files(
        &root.join("unified"),
        &[
            "cgroup.procs",
            "cgroup.controllers",
            "cgroup.subtree_control",
        ],
    );
    let r = root.display();
    let mountinfo = format!(
        "31 23 0:28 / {r} rw,relatime - tmpfs tmpfs rw,mode=755\n\
         32 31 0:29 / {r}/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct\n\
         35 31 0:32 / {r}/memory rw,relatime - cgroup cgroup rw,memory\n\
         37 31 0:34 / {r}/freezer rw,relatime - cgroup cgroup rw,freezer\n\
         39 31 0:36 / {r}/pids rw,relatime - cgroup cgroup rw,pids\n\
         40 31 0:37 / {r}/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd\n\
         41 31 0:38 / {r}/unified rw,relatime - cgroup2 cgroup2 rw\n"
    );
    (root, mountinfo)
}

/// A fake pure-v2 tree in `tmp` whose root offers `controllers`.
pub(crate) fn fake_v2(tmp: &Path, controllers: &str) -> (PathBuf, String) {
    let root = tmp.join("cgroup2");
    write_files(
        &root,
        &[
            "cgroup.procs",
            "cgroup.subtree_control",
            "cgroup.controllers",
        ],
    );
    fs::write(root.join("cgroup.controllers"), format!("{controllers}\n")).expect("write");
    fs::write(root.join("cgroup.procs"), "1\n").expect("write");
    let mountinfo = format!(
        "25 1 0:22 / {} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n",
        root.display()
    );
    (root, mountinfo)
}

/// Short bounds so that timeout paths run fast.
pub(crate) const SHORT: Timeouts = Timeouts {
    freeze: std::time::Duration::from_millis(50),
    kill: std::time::Duration::from_millis(200),
    remove: std::time::Duration::from_millis(100),
};

/// A manager over a fake tree, and its fake kernel.
pub(crate) fn manager(root: &Path, mountinfo: &str) -> (CgroupManager, Arc<FakeKernel>) {
    let kernel = Arc::new(FakeKernel::new(root));
    let manager = CgroupManager::detect_with(
        root.to_owned(),
        "warren",
        mountinfo,
        Arc::clone(&kernel) as Arc<dyn Kernel>,
    )
    .expect("detect fake tree")
    .with_timeouts(SHORT);
    (manager, kernel)
}
