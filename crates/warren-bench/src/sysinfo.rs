//! Host counters read from /proc: memory, tasks, fds, mounts, namespaces and
//! the kernel limits on them. Parsers take text so they test hermetically.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;

use anyhow::{Context, Result};

/// Namespace kinds with a per-user limit in /proc/sys/user/max_<kind>_namespaces.
pub const NAMESPACE_KINDS: &[&str] = &["user", "net", "mnt", "pid", "ipc", "uts", "cgroup", "time"];

/// `/proc/meminfo` as key → KiB.
pub fn parse_meminfo(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (key, rest) = line.split_once(':')?;
            let value = rest.split_whitespace().next()?.parse().ok()?;
            Some((key.trim().to_owned(), value))
        })
        .collect()
}

pub fn meminfo() -> Result<BTreeMap<String, u64>> {
    Ok(parse_meminfo(
        &fs::read_to_string("/proc/meminfo").context("read /proc/meminfo")?,
    ))
}

/// Total tasks (threads) on the host: the denominator of the 4th field of
/// /proc/loadavg ("running/total").
pub fn parse_loadavg_tasks(text: &str) -> Option<u64> {
    text.split_whitespace()
        .nth(3)?
        .split_once('/')?
        .1
        .parse()
        .ok()
}

pub fn total_tasks() -> Result<u64> {
    let text = fs::read_to_string("/proc/loadavg").context("read /proc/loadavg")?;
    parse_loadavg_tasks(&text).context("parse /proc/loadavg")
}

/// Open file descriptors of this process.
pub fn own_fds() -> Result<u64> {
    Ok(fs::read_dir("/proc/self/fd")
        .context("read /proc/self/fd")?
        .count() as u64)
}

/// Mounts in this process's mount namespace.
pub fn own_mounts() -> Result<u64> {
    Ok(fs::read_to_string("/proc/self/mountinfo")
        .context("read /proc/self/mountinfo")?
        .lines()
        .count() as u64)
}

/// A single-number file such as /proc/sys/kernel/pid_max.
pub fn read_u64(path: &str) -> Result<u64> {
    fs::read_to_string(path)
        .with_context(|| format!("read {path}"))?
        .trim()
        .parse()
        .with_context(|| format!("parse {path}"))
}

/// Distinct namespaces of each kind held by any process on the host (a
/// namespace without a process, e.g. one only bind-mounted, is missed).
pub fn namespace_counts() -> Result<BTreeMap<&'static str, u64>> {
    let mut seen: BTreeMap<&'static str, HashSet<u64>> = BTreeMap::new();
    for entry in fs::read_dir("/proc").context("read /proc")? {
        let entry = entry?;
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        for kind in NAMESPACE_KINDS {
            // Processes can exit while we scan; skip what vanished.
            if let Ok(meta) = fs::metadata(entry.path().join("ns").join(kind)) {
                seen.entry(kind).or_default().insert(meta.ino());
            }
        }
    }
    Ok(seen.into_iter().map(|(k, v)| (k, v.len() as u64)).collect())
}

/// /proc/sys/fs/file-nr: (allocated file handles, max).
pub fn file_handles() -> Result<(u64, u64)> {
    let text = fs::read_to_string("/proc/sys/fs/file-nr").context("read file-nr")?;
    let f: Vec<u64> = text
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    match f.as_slice() {
        [allocated, _, max] => Ok((*allocated, *max)),
        _ => anyhow::bail!("unexpected /proc/sys/fs/file-nr: {text:?}"),
    }
}

/// Keys charged to `uid` in /proc/key-users: (qnkeys, maxkeys). Runtimes that
/// give each sandbox a session keyring use one each.
pub fn parse_key_users(text: &str, uid: u32) -> Option<(u64, u64)> {
    let prefix = format!("{uid}:");
    let line = text.lines().find(|l| l.trim_start().starts_with(&prefix))?;
    // "    0:    82 81/81 9/1000000 165/25000000"
    let quota = line.split_whitespace().nth(3)?;
    let (used, max) = quota.split_once('/')?;
    Some((used.parse().ok()?, max.parse().ok()?))
}

pub fn root_keys() -> Option<(u64, u64)> {
    parse_key_users(&fs::read_to_string("/proc/key-users").ok()?, 0)
}

/// One snapshot of everything the density benchmark compares.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub mem: BTreeMap<String, u64>,
    pub tasks: u64,
    pub fds: u64,
    pub mounts: u64,
    pub namespaces: BTreeMap<&'static str, u64>,
    pub file_handles: u64,
    pub keys: Option<u64>,
}

impl Snapshot {
    pub fn take() -> Result<Self> {
        Ok(Self {
            mem: meminfo()?,
            tasks: total_tasks()?,
            fds: own_fds()?,
            mounts: own_mounts()?,
            namespaces: namespace_counts()?,
            file_handles: file_handles()?.0,
            keys: root_keys().map(|(used, _)| used),
        })
    }

    pub fn mem_kib(&self, key: &str) -> u64 {
        self.mem.get(key).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_parses_kib() {
        let m = parse_meminfo(
            "MemTotal:       24567896 kB\nMemAvailable:   23000000 kB\nSUnreclaim:        91234 kB\nHugePages_Total:       0\n",
        );
        assert_eq!(m["MemAvailable"], 23_000_000);
        assert_eq!(m["SUnreclaim"], 91_234);
        assert_eq!(m["HugePages_Total"], 0);
    }

    #[test]
    fn loadavg_tasks() {
        assert_eq!(
            parse_loadavg_tasks("0.08 0.03 0.01 2/187 12345\n"),
            Some(187)
        );
        assert_eq!(parse_loadavg_tasks("garbage"), None);
    }

    #[test]
    fn key_users_for_root() {
        let text = "    0:    82 81/81 9/1000000 165/25000000\n 1000:     5 5/5 5/200 76/20000\n";
        assert_eq!(parse_key_users(text, 0), Some((9, 1_000_000)));
        assert_eq!(parse_key_users(text, 1000), Some((5, 200)));
        assert_eq!(parse_key_users(text, 7), None);
    }
}
