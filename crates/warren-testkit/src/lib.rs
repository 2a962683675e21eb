//! warren-testkit: shared test helpers (a dev-dependency only).
//!
//! - [`require_root`] / [`require`]: capability checks that print
//!   `SKIP <test>: <reason>` when something is missing, and fail instead of
//!   skipping under `CI=true`, so CI can never pass by skipping.
//! - [`wait_until`]: bounded polling instead of bare sleeps.
//! - [`leaks`]: what Warren may have left on the host (mounts, cgroups,
//!   processes), for the leak check that ends every suite.
//! - [`netlab`]: a private internet in network namespaces for network tests.

pub mod netlab;
pub mod registry;

use std::time::{Duration, Instant};

/// True when running under CI (`CI=true`).
pub fn in_ci() -> bool {
    std::env::var("CI")
        .map(|v| v == "true" || v == "1")
        .unwrap_or(false)
}

/// Checks a capability: returns true if present. If absent, prints
/// `SKIP <test>: <reason>` and returns false, or panics under CI.
pub fn require(test: &str, present: bool, reason: &str) -> bool {
    if present {
        return true;
    }
    if in_ci() {
        panic!("{test}: required capability missing under CI: {reason}");
    }
    eprintln!("SKIP {test}: {reason}");
    false
}

/// Requires running as root (namespaces, mounts, cgroups).
pub fn require_root(test: &str) -> bool {
    require(
        test,
        euid() == 0,
        "needs root (namespaces, mounts, cgroups)",
    )
}

/// The effective uid, read from `/proc/self/status`.
pub fn euid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(u32::MAX)
}

/// Polls `cond` every few milliseconds until it is true or `timeout` passes.
/// Returns whether it became true.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Things Warren left behind on the host whose names contain `marker`:
/// mounts in the host's mount table, cgroup directories, and processes
/// running `warren-init` (a sealed memfd, or the bound file of a
/// checkpointable sandbox). Empty means clean.
pub fn leaks(marker: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(m) = std::fs::read_to_string("/proc/self/mountinfo") {
        for line in m.lines().filter(|l| l.contains(marker)) {
            out.push(format!("mount: {line}"));
        }
    }
    for dir in cgroup_dirs_where(|name| name.contains(marker)) {
        out.push(format!("cgroup: {dir}"));
    }
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for p in procs.flatten() {
            let name = p.file_name().to_string_lossy().into_owned();
            if !name.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            if let Ok(exe) = std::fs::read_link(p.path().join("exe")) {
                let exe = exe.to_string_lossy();
                // A checkpointable sandbox's init runs from a bound file.
                if exe.contains("memfd:warren-init") || exe.ends_with("/dev/.warren-init") {
                    out.push(format!("process: pid {name} runs warren-init"));
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Cgroup directories directly under any hierarchy root whose name starts
/// with `prefix`.
pub fn cgroup_dirs(prefix: &str) -> Vec<String> {
    cgroup_dirs_where(|name| name.starts_with(prefix))
        .into_iter()
        .map(|d| format!("cgroup: {d}"))
        .collect()
}

/// Directories directly under every cgroup hierarchy root (v1 controller
/// dirs, the hybrid unified dir, or a pure v2 root) whose name matches.
fn cgroup_dirs_where(matches: impl Fn(&str) -> bool) -> Vec<String> {
    let mut out = Vec::new();
    let mut roots = vec![std::path::PathBuf::from("/sys/fs/cgroup")];
    if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
        roots.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    }
    for root in roots {
        let Ok(sub) = std::fs::read_dir(&root) else {
            continue;
        };
        for s in sub.flatten() {
            if matches(&s.file_name().to_string_lossy()) && s.path().is_dir() {
                out.push(s.path().display().to_string());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_until_is_bounded() {
        let t = Instant::now();
        assert!(!wait_until(Duration::from_millis(30), || false));
        assert!(t.elapsed() >= Duration::from_millis(30));
        let mut n = 0;
        assert!(wait_until(Duration::from_secs(5), || {
            n += 1;
            n == 3
        }));
    }
}
