//! `api-fairness`: does a sandbox pinning every CPU starve the API? Times
//! `POST /v1/sandboxes/{id}/exec` of `/bin/true` in an idle sandbox while the
//! machine is quiet, then while a second sandbox (allowed every CPU) runs
//! twice as many busy loops as there are CPUs, against a real `warren serve`.
//! Reports both distributions, their ratio, and how many CPUs the hog
//! really used (from its cgroup), so a quiet "loaded" run cannot pass as one.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use clap::Args;
use serde_json::{json, Value};
use warren_proto::api::{CreateSandboxRequest, ExecRequest, SandboxState};

use super::{ApiServer, IDLE_LIFETIME_SECS, IMAGE};
use crate::rootfs;
use crate::shutdown::Shutdown;
use crate::stats::{self, json_num, Row, Summary};

#[derive(Args, Debug)]
pub struct ApiFairnessArgs {
    /// Measured execs in each phase (quiet, loaded).
    #[arg(long, default_value_t = 500, value_parser = crate::parse_positive)]
    pub runs: usize,
    /// Busy loops in the hog sandbox per CPU of the machine.
    #[arg(long, default_value_t = 2, value_parser = crate::parse_positive)]
    pub spinners_per_cpu: usize,
}

pub fn run(args: &ApiFairnessArgs, data: &Path, shutdown: &Shutdown) -> Result<()> {
    let rootfs_dir = data.join("rootfs");
    rootfs::build(&rootfs::find_busybox()?, &rootfs_dir)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let server = ApiServer::start(data, &rootfs_dir, rt)?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let spinners = cpus * args.spinners_per_cpu;

    println!("# warren-bench api-fairness");
    println!(
        "command: /bin/true via POST /v1/sandboxes/{{id}}/exec, {} runs quiet then {} runs \
         while another sandbox (cpu = {cpus}) runs {spinners} busy loops; image: busybox \
         ({IMAGE}); load average at start: {}",
        args.runs,
        args.runs,
        super::loadavg()
    );

    let client = server.client();
    let create = |command: Option<Vec<String>>, cpu: Option<f64>| {
        server.block_on(client.create_sandbox(&CreateSandboxRequest {
            image: Some(IMAGE.into()),
            timeout_secs: Some(IDLE_LIFETIME_SECS),
            command,
            cpu,
            ..Default::default()
        }))
    };
    let victim = create(None, None)?;
    ensure!(victim.state == SandboxState::Running, "victim not running");
    let req = ExecRequest {
        command: vec!["/bin/true".into()],
        ..Default::default()
    };
    let time_execs = |n: usize| -> Result<Vec<Duration>> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            shutdown.check()?;
            let t0 = Instant::now();
            let r = server.block_on(client.exec(&victim.id, &req))?;
            out.push(t0.elapsed());
            ensure!(r.exit_code == 0, "/bin/true exited {}", r.exit_code);
        }
        Ok(out)
    };
    time_execs(10)?;
    let quiet = time_execs(args.runs)?;

    let spin = format!("for i in $(seq {spinners}); do (while :; do :; done) & done; wait");
    let hog = create(
        Some(vec!["sh".into(), "-c".into(), spin]),
        Some(cpus as f64),
    )?;
    ensure!(hog.state == SandboxState::Running, "hog not running");
    std::thread::sleep(Duration::from_millis(500));
    let cg = hog_cpu_seconds(&hog.id);
    let t0 = Instant::now();
    let loaded = time_execs(args.runs)?;
    let elapsed = t0.elapsed().as_secs_f64();
    let hog_cpus = match (cg, hog_cpu_seconds(&hog.id)) {
        (Some(a), Some(b)) => Some((b - a) / elapsed),
        _ => None,
    };
    let hog_state = server.block_on(client.get_sandbox(&hog.id))?.state;
    server.shutdown()?;
    ensure!(
        hog_state == SandboxState::Running,
        "the hog ended early ({hog_state:?})"
    );

    let q = Summary::of(&quiet);
    let l = Summary::of(&loaded);
    println!();
    stats::print_table(&[
        Row {
            runtime: "api",
            what: "exec-quiet",
            summary: q,
            note: None,
        },
        Row {
            runtime: "api",
            what: "exec-under-hog",
            summary: l,
            note: None,
        },
    ]);
    let ratio = |f: fn(&Summary) -> f64| q.zip(l).map(|(q, l)| f(&l) / f(&q));
    println!();
    println!(
        "hog used {} CPUs of {cpus}; loaded/quiet ratio p50 {} p99 {}",
        hog_cpus.map_or("n/a".into(), |c| format!("{c:.2}")),
        ratio(|s| s.p50).map_or("n/a".into(), |r| format!("{r:.2}")),
        ratio(|s| s.p99).map_or("n/a".into(), |r| format!("{r:.2}")),
    );
    let obj: Vec<(String, Value)> = vec![
        ("runs".into(), json!(args.runs)),
        ("cpus".into(), json!(cpus)),
        ("spinners".into(), json!(spinners)),
        ("hog_cpus_used".into(), json_num(hog_cpus)),
        ("quiet_p50_ms".into(), json_num(q.map(|s| s.p50))),
        ("quiet_p99_ms".into(), json_num(q.map(|s| s.p99))),
        ("loaded_p50_ms".into(), json_num(l.map(|s| s.p50))),
        ("loaded_p99_ms".into(), json_num(l.map(|s| s.p99))),
        ("ratio_p50".into(), json_num(ratio(|s| s.p50))),
        ("ratio_p99".into(), json_num(ratio(|s| s.p99))),
    ];
    println!("{}", stats::json_object(&obj));
    Ok(())
}

/// CPU seconds the hog sandbox has used (cgroup v1 `cpuacct` or v2
/// `cpu.stat`), found by its id under any cgroup parent.
fn hog_cpu_seconds(id: &str) -> Option<f64> {
    let find = |root: &str| -> Option<std::path::PathBuf> {
        std::fs::read_dir(root)
            .ok()?
            .flatten()
            .map(|e| e.path().join(id))
            .find(|p| p.is_dir())
    };
    if let Some(dir) = find("/sys/fs/cgroup/cpuacct") {
        let ns: f64 = std::fs::read_to_string(dir.join("cpuacct.usage"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        return Some(ns / 1e9);
    }
    let dir = find("/sys/fs/cgroup")?;
    let stat = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
    let usec: f64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("usage_usec "))?
        .trim()
        .parse()
        .ok()?;
    Some(usec / 1e6)
}
