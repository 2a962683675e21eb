//! `density`: start many idle Warren sandboxes (each running `sleep`),
//! measure the host memory and kernel objects they use, and work out which
//! limit would stop a larger count first.
//!
//! Sandboxes are created one after another from this thread; every one is
//! destroyed at the end, also when creation fails or on Ctrl-C.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use serde_json::{json, Value};

use crate::shutdown::Shutdown;
use crate::stats::{self, json_num};
use crate::sysinfo::{self, Snapshot};
use crate::warren::{SandboxSet, Warren};
use crate::{rootfs, ImageChoice};

/// What each sandbox runs: a long sleep (idle, but with a real process).
const IDLE_COMMAND: &[&str] = &["/bin/sleep", "100000"];

#[derive(Args, Debug)]
pub struct DensityArgs {
    /// Number of sandboxes to create.
    #[arg(long, default_value_t = 2000, value_parser = crate::parse_positive)]
    pub count: usize,
    /// Image for the sandboxes.
    #[arg(long, value_enum, default_value_t = ImageChoice::Busybox)]
    pub image: ImageChoice,
    /// Seconds to wait after the last create before reading counters.
    #[arg(long, default_value_t = 3)]
    pub settle_secs: u64,
}

pub fn run(args: &DensityArgs, data: &Path, shutdown: &Shutdown) -> Result<()> {
    let nofile = raise_nofile_limit()?;
    let rootfs_dir = data.join("rootfs");
    rootfs::build(&rootfs::find_busybox()?, &rootfs_dir)?;
    let warren = Warren::open(data, args.image, &rootfs_dir)?;

    println!("# warren-bench density");
    println!(
        "count: {}; image: {}; command: {}; created sequentially; settle: {} s",
        args.count,
        args.image.name(),
        IDLE_COMMAND.join(" "),
        args.settle_secs
    );

    let before = Snapshot::take()?;
    let mut set = SandboxSet::new(&warren);
    let pid = std::process::id();
    let mut created = 0usize;
    let mut create_error: Option<String> = None;
    let t0 = Instant::now();
    for i in 0..args.count {
        if shutdown.requested() {
            create_error = Some("interrupted".into());
            break;
        }
        match warren.create_into(&mut set, &format!("bench-d{pid}-{i}"), Some(IDLE_COMMAND)) {
            Ok(_) => created += 1,
            Err(e) => {
                eprintln!("create failed after {created} sandboxes: {e:#}");
                create_error = Some(format!("{e:#}"));
                break;
            }
        }
        if created.is_multiple_of(100) {
            let secs = t0.elapsed().as_secs_f64();
            eprintln!(
                "progress: {created}/{} created ({:.1}/s)",
                args.count,
                created as f64 / secs
            );
        }
    }
    let start_total = t0.elapsed();
    if shutdown.requested() {
        // `set` destroys everything on the way out.
        drop(set);
        bail!("interrupted after creating {created} sandboxes (all destroyed)");
    }

    let settle_until = Instant::now() + Duration::from_secs(args.settle_secs);
    while Instant::now() < settle_until {
        shutdown.check()?;
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut running = 0usize;
    for id in &set.ids()[..created] {
        match warren.is_running(id) {
            Ok(true) => running += 1,
            Ok(false) => {}
            Err(e) => {
                eprintln!("warning: cannot tell whether a sandbox runs: {e:#}");
                break;
            }
        }
    }
    if running < created {
        eprintln!("warning: only {running} of {created} sandboxes are still running");
    }
    let after = Snapshot::take()?;
    let uid_slots = warren.uid_slots();

    let t1 = Instant::now();
    let to_destroy = set.ids().len();
    let (destroy_failed, destroy_err) = set.destroy_all();
    let destroy_total = t1.elapsed();
    drop(set);

    let per = |x: f64| (created > 0).then(|| x / created as f64);
    let diff = |key: &str| after.mem_kib(key) as f64 - before.mem_kib(key) as f64;
    let mem_per = per(-diff("MemAvailable"));
    let slab_per = per(diff("Slab"));
    let sunreclaim_per = per(diff("SUnreclaim"));
    let tasks_per = per(after.tasks as f64 - before.tasks as f64);

    println!();
    println!(
        "created: {created} of {} (running after settle: {running})",
        args.count
    );
    if let Some(e) = &create_error {
        println!("create stopped early: {e}");
    }
    println!(
        "start all: {:.3} s ({:.2} ms per sandbox); destroy all: {:.3} s",
        start_total.as_secs_f64(),
        start_total.as_secs_f64() * 1e3 / created.max(1) as f64,
        destroy_total.as_secs_f64()
    );
    if destroy_failed > 0 {
        println!("destroy failed for {destroy_failed} of {to_destroy} sandboxes");
    }
    println!("per sandbox (host-wide deltas / created):");
    for key in [
        "MemAvailable",
        "Slab",
        "SUnreclaim",
        "KernelStack",
        "PageTables",
    ] {
        let d = diff(key);
        let d = if key == "MemAvailable" { -d } else { d };
        let label = if key == "MemAvailable" {
            "MemAvailable drop"
        } else {
            key
        };
        println!("  {label:<18} {}", fmt_opt(per(d), "KiB"));
    }
    println!("  {:<18} {}", "tasks", fmt_opt(tasks_per, ""));
    println!(
        "  {:<18} {}",
        "bench fds",
        fmt_opt(per(after.fds as f64 - before.fds as f64), "")
    );
    println!(
        "  {:<18} {}",
        "host mounts",
        fmt_opt(per(after.mounts as f64 - before.mounts as f64), "")
    );
    for (kind, n) in &after.namespaces {
        let b = before.namespaces.get(kind).copied().unwrap_or(0);
        println!(
            "  {:<18} {}",
            format!("{kind} namespaces"),
            fmt_opt(per(*n as f64 - b as f64), "")
        );
    }

    let limits = if created > 0 {
        collect_limits(created, &before, &after, nofile, mem_per, uid_slots)?
    } else {
        Vec::new()
    };
    println!();
    println!("limits (max total sandboxes if each new one costs the same):");
    println!(
        "  {:<32} {:>12} {:>12} {:>12} {:>14}",
        "limit", "value", "in use", "per sandbox", "max sandboxes"
    );
    for l in &limits {
        println!(
            "  {:<32} {:>12} {:>12} {:>12.3} {:>14}",
            l.name,
            l.value,
            l.used,
            l.per_sandbox,
            l.max_total.map_or("unbounded".into(), |m| m.to_string())
        );
    }
    if uid_slots.is_none() {
        println!("  (uid range slots: not reported by the runtime)");
    }
    let first = first_limit(&limits);
    match first {
        Some(l) => println!(
            "first limit: {} (at about {} sandboxes)",
            l.name,
            l.max_total.unwrap_or(0)
        ),
        None => println!("first limit: unknown"),
    }

    let obj: Vec<(String, Value)> = vec![
        ("count".into(), json!(args.count)),
        ("created".into(), json!(created)),
        ("running".into(), json!(running)),
        ("image".into(), json!(args.image.name())),
        ("mem_per_sandbox_kib".into(), json_num(mem_per)),
        ("slab_per_sandbox_kib".into(), json_num(slab_per)),
        (
            "sunreclaim_per_sandbox_kib".into(),
            json_num(sunreclaim_per),
        ),
        ("tasks_per_sandbox".into(), json_num(tasks_per)),
        (
            "start_total_s".into(),
            json_num(Some(start_total.as_secs_f64())),
        ),
        (
            "destroy_total_s".into(),
            json_num(Some(destroy_total.as_secs_f64())),
        ),
        (
            "first_limit".into(),
            first.map_or(Value::Null, |l| json!(l.name)),
        ),
        (
            "first_limit_max_sandboxes".into(),
            first
                .and_then(|l| l.max_total)
                .map_or(Value::Null, |m| json!(m)),
        ),
        (
            "create_error".into(),
            create_error.as_deref().map_or(Value::Null, |e| json!(e)),
        ),
    ];
    println!("{}", stats::json_object(&obj));

    if let Some(e) = create_error {
        bail!("created only {created} of {} sandboxes: {e}", args.count);
    }
    if let Some(e) = destroy_err {
        return Err(e.context(format!("{destroy_failed} sandboxes failed to destroy")));
    }
    Ok(())
}

fn fmt_opt(x: Option<f64>, unit: &str) -> String {
    match x {
        Some(v) => format!("{v:.1} {unit}").trim_end().to_owned(),
        None => "-".into(),
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (the runtime may hold fds
/// per sandbox); returns the soft limit now in force.
fn raise_nofile_limit() -> Result<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit(NOFILE)")?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("setrlimit(NOFILE)")?;
        eprintln!("note: raised RLIMIT_NOFILE soft limit from {soft} to {hard}");
    }
    Ok(hard.max(soft))
}

/// One limit on the number of sandboxes.
#[derive(Clone, Debug, PartialEq)]
pub struct Limit {
    pub name: String,
    pub value: u64,
    pub used: u64,
    pub per_sandbox: f64,
    /// Total sandboxes at which it runs out; `None` if sandboxes do not
    /// measurably use it.
    pub max_total: Option<u64>,
}

impl Limit {
    pub fn new(
        name: impl Into<String>,
        value: u64,
        used: u64,
        per_sandbox: f64,
        created: usize,
    ) -> Self {
        let max_total = (per_sandbox > 1e-6).then(|| {
            let remaining = value.saturating_sub(used) as f64;
            created as u64 + (remaining / per_sandbox).floor() as u64
        });
        Self {
            name: name.into(),
            value,
            used,
            per_sandbox,
            max_total,
        }
    }
}

pub fn first_limit(limits: &[Limit]) -> Option<&Limit> {
    limits
        .iter()
        .filter(|l| l.max_total.is_some())
        .min_by_key(|l| l.max_total)
}

fn collect_limits(
    created: usize,
    before: &Snapshot,
    after: &Snapshot,
    nofile: u64,
    mem_per: Option<f64>,
    uid_slots: Option<(u64, u64)>,
) -> Result<Vec<Limit>> {
    let per = |a: u64, b: u64| (a as f64 - b as f64) / created as f64;
    let mut limits = Vec::new();

    let tasks_per = per(after.tasks, before.tasks);
    limits.push(Limit::new(
        "kernel.pid_max",
        sysinfo::read_u64("/proc/sys/kernel/pid_max")?,
        after.tasks,
        tasks_per,
        created,
    ));
    limits.push(Limit::new(
        "kernel.threads-max",
        sysinfo::read_u64("/proc/sys/kernel/threads-max")?,
        after.tasks,
        tasks_per,
        created,
    ));
    for (kind, used) in &after.namespaces {
        let path = format!("/proc/sys/user/max_{kind}_namespaces");
        let Ok(value) = sysinfo::read_u64(&path) else {
            continue;
        };
        let b = before.namespaces.get(kind).copied().unwrap_or(0);
        limits.push(Limit::new(
            format!("user.max_{kind}_namespaces"),
            value,
            *used,
            per(*used, b),
            created,
        ));
    }
    limits.push(Limit::new(
        "fs.mount-max (bench mount ns)",
        sysinfo::read_u64("/proc/sys/fs/mount-max")?,
        after.mounts,
        per(after.mounts, before.mounts),
        created,
    ));
    limits.push(Limit::new(
        "RLIMIT_NOFILE (bench process)",
        nofile,
        after.fds,
        per(after.fds, before.fds),
        created,
    ));
    limits.push(Limit::new(
        "fs.file-max",
        sysinfo::file_handles()?.1,
        after.file_handles,
        per(after.file_handles, before.file_handles),
        created,
    ));
    if let (Some(used), Some(b), Some((_, max))) = (after.keys, before.keys, sysinfo::root_keys()) {
        limits.push(Limit::new(
            "kernel.keys.root_maxkeys",
            max,
            used,
            per(used, b),
            created,
        ));
    }
    if let Some((total, used)) = uid_slots {
        limits.push(Limit::new(
            "runtime uid range slots",
            total,
            used,
            1.0,
            created,
        ));
    }
    if let Some(m) = mem_per {
        limits.push(Limit::new(
            "memory (MemAvailable KiB)",
            after.mem_kib("MemAvailable"),
            0,
            m,
            created,
        ));
    }
    Ok(limits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_headroom() {
        // 32768 pids, 12000 in use after 2000 sandboxes of 3 tasks each.
        let l = Limit::new("pid_max", 32768, 12000, 3.0, 2000);
        assert_eq!(l.max_total, Some(2000 + 20768 / 3));
        // Not consumed: unbounded.
        assert_eq!(Limit::new("x", 10, 5, 0.0, 100).max_total, None);
        // Already past the limit: no more room.
        assert_eq!(Limit::new("x", 10, 50, 1.0, 100).max_total, Some(100));
    }

    #[test]
    fn first_limit_is_smallest_bounded() {
        let limits = vec![
            Limit::new("a", 100, 0, 0.0, 10),
            Limit::new("b", 100, 0, 1.0, 10),
            Limit::new("c", 100, 0, 2.0, 10),
        ];
        assert_eq!(first_limit(&limits).map(|l| l.name.as_str()), Some("c"));
        assert!(first_limit(&limits[..1]).is_none());
    }
}
