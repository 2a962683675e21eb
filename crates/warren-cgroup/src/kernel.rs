//! The seam between this crate and the kernel: every cgroupfs write, `mkdir`,
//! `rmdir` and signal goes through [`Kernel`], so tests can substitute a fake
//! that emulates cgroupfs semantics in a tempdir. Reads and directory
//! listings use `std::fs` directly, which works on both.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::CgroupError;

/// Side-effecting operations on cgroupfs and processes.
pub(crate) trait Kernel: fmt::Debug + Send + Sync {
    /// Writes `value` to an existing control file in a single write.
    fn write(&self, path: &Path, value: &str) -> io::Result<()>;
    /// Creates one cgroup directory (the kernel populates its files).
    fn mkdir(&self, path: &Path) -> io::Result<()>;
    /// Removes one empty cgroup directory.
    fn rmdir(&self, path: &Path) -> io::Result<()>;
    /// Sends SIGKILL to `pid`.
    fn kill(&self, pid: i32) -> io::Result<()>;
}

/// The real kernel.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RealKernel;

impl Kernel for RealKernel {
    fn write(&self, path: &Path, value: &str) -> io::Result<()> {
        // No O_CREAT: a missing control file means a missing controller, and
        // creating a regular file in its place would hide that.
        let mut file = fs::OpenOptions::new().write(true).open(path)?;
        file.write_all(value.as_bytes())
    }

    fn mkdir(&self, path: &Path) -> io::Result<()> {
        fs::create_dir(path)
    }

    fn rmdir(&self, path: &Path) -> io::Result<()> {
        fs::remove_dir(path)
    }

    fn kill(&self, pid: i32) -> io::Result<()> {
        kill(Pid::from_raw(pid), Signal::SIGKILL).map_err(io::Error::from)
    }
}

/// Whether `err` is the given errno.
pub(crate) fn is_errno(err: &io::Error, errno: Errno) -> bool {
    err.raw_os_error() == Some(errno as i32)
}

/// Reads a control file.
pub(crate) fn read(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(|source| CgroupError::ReadFile {
        path: path.to_owned(),
        source,
    })
}

/// Writes a control file through the kernel seam.
pub(crate) fn write(kernel: &dyn Kernel, path: &Path, value: &str) -> Result<(), CgroupError> {
    tracing::trace!(path = %path.display(), value, "write cgroup file");
    kernel
        .write(path, value)
        .map_err(|source| CgroupError::WriteFile {
            path: path.to_owned(),
            value: value.to_owned(),
            source,
        })
}

/// Creates a directory, treating "already exists" as success.
pub(crate) fn mkdir_idempotent(kernel: &dyn Kernel, path: &Path) -> Result<(), CgroupError> {
    match kernel.mkdir(path) {
        Ok(()) => {
            tracing::debug!(path = %path.display(), "created cgroup directory");
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(CgroupError::CreateDir {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Parses a file holding a single unsigned integer.
pub(crate) fn parse_u64(path: &Path, text: &str) -> Result<u64, CgroupError> {
    let t = text.trim();
    t.parse().map_err(|_| CgroupError::Parse {
        path: path.to_owned(),
        reason: format!("expected an unsigned integer, found {t:?}"),
    })
}

/// Reads a file holding a single unsigned integer.
pub(crate) fn read_u64(path: &Path) -> Result<u64, CgroupError> {
    parse_u64(path, &read(path)?)
}

/// Finds `key` in a flat-keyed file (`"key value"` per line).
pub(crate) fn parse_keyed(path: &Path, text: &str, key: &str) -> Result<u64, CgroupError> {
    for line in text.lines() {
        let mut parts = line.split_ascii_whitespace();
        if parts.next() != Some(key) {
            continue;
        }
        let value = parts.next().unwrap_or("");
        return value.parse().map_err(|_| CgroupError::Parse {
            path: path.to_owned(),
            reason: format!("expected an unsigned integer for {key}, found {value:?}"),
        });
    }
    Err(CgroupError::Parse {
        path: path.to_owned(),
        reason: format!("no {key} line"),
    })
}

/// Parses `cgroup.procs`: one pid per line.
pub(crate) fn parse_pids(path: &Path, text: &str) -> Result<Vec<i32>, CgroupError> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.parse().map_err(|_| CgroupError::Parse {
                path: path.to_owned(),
                reason: format!("expected a pid, found {l:?}"),
            })
        })
        .collect()
}

/// The names of the sub-directories of `dir`; empty if `dir` is absent.
pub(crate) fn subdirs(dir: &Path) -> Result<Vec<String>, CgroupError> {
    let list_err = |source| CgroupError::ListDir {
        path: dir.to_owned(),
        source,
    };
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(list_err(e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(list_err)?;
        // file_type() does not follow symlinks, which is what we want: a
        // cgroup is always a real directory.
        if !entry.file_type().map_err(list_err)?.is_dir() {
            continue;
        }
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Every directory in the tree rooted at `dir`, children before parents
/// (the order in which `rmdir` must remove them). Empty if `dir` is absent.
pub(crate) fn tree_post_order(dir: &Path) -> Result<Vec<PathBuf>, CgroupError> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut pre = vec![dir.to_owned()];
    let mut i = 0;
    while i < pre.len() {
        let children = subdirs(&pre[i])?;
        let base = pre[i].clone();
        pre.extend(children.into_iter().map(|c| base.join(c)));
        i += 1;
    }
    // Breadth-first order reversed puts every child before its parent.
    pre.reverse();
    Ok(pre)
}

/// The first and the longest pause between polls.
const POLL_MIN: Duration = Duration::from_millis(1);
const POLL_MAX: Duration = Duration::from_millis(20);

/// Polls `cond` with a short exponential backoff until it returns true or
/// `deadline` passes. Returns whether the condition was met. The condition
/// is always checked at least once, and once more at the deadline.
pub(crate) fn wait_until(
    deadline: Instant,
    mut cond: impl FnMut() -> Result<bool, CgroupError>,
) -> Result<bool, CgroupError> {
    let mut pause = POLL_MIN;
    loop {
        if cond()? {
            return Ok(true);
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(POLL_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_values_are_found() {
        let p = Path::new("memory.events");
        let text = "low 0\nhigh 0\nmax 2\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(parse_keyed(p, text, "oom_kill").unwrap(), 1);
        assert_eq!(parse_keyed(p, text, "max").unwrap(), 2);
        assert!(matches!(
            parse_keyed(p, text, "missing"),
            Err(CgroupError::Parse { .. })
        ));
        assert!(matches!(
            parse_keyed(p, "oom_kill x\n", "oom_kill"),
            Err(CgroupError::Parse { .. })
        ));
        // A key that is a prefix of another is not confused with it.
        assert_eq!(
            parse_keyed(p, "oom_kill_disable 1\noom_kill 3\n", "oom_kill").unwrap(),
            3
        );
    }

    #[test]
    fn pids_and_numbers_parse() {
        let p = Path::new("cgroup.procs");
        assert_eq!(parse_pids(p, "1\n22\n\n333\n").unwrap(), vec![1, 22, 333]);
        assert_eq!(parse_pids(p, "").unwrap(), Vec::<i32>::new());
        assert!(parse_pids(p, "1\nx\n").is_err());
        assert_eq!(parse_u64(p, "42\n").unwrap(), 42);
        assert!(parse_u64(p, "max\n").is_err());
    }

    #[test]
    fn tree_is_listed_children_first() {
        let tmp = tempfile::tempdir().unwrap();
        let a = tmp.path().join("a");
        fs::create_dir_all(a.join("b/c")).unwrap();
        fs::create_dir_all(a.join("d")).unwrap();
        fs::write(a.join("file"), "").unwrap();
        let order = tree_post_order(&a).unwrap();
        let pos = |p: &Path| order.iter().position(|x| x == p).unwrap();
        assert_eq!(order.len(), 4);
        assert!(pos(&a.join("b/c")) < pos(&a.join("b")));
        assert!(pos(&a.join("b")) < pos(&a));
        assert!(pos(&a.join("d")) < pos(&a));
        assert!(tree_post_order(&tmp.path().join("absent"))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn wait_until_is_bounded() {
        let start = Instant::now();
        let met = wait_until(start + Duration::from_millis(30), || Ok(false)).unwrap();
        assert!(!met);
        assert!(start.elapsed() >= Duration::from_millis(30));
        assert!(start.elapsed() < Duration::from_secs(2));
        let mut n = 0;
        assert!(wait_until(start, || {
            n += 1;
            Ok(n == 1)
        })
        .unwrap());
    }
}
