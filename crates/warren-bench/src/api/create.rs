//! `api-create`: `echo hi` sandboxes through the HTTP API, and the same
//! cycle on the in-process runtime in the same run.
//!
//! The API serves no logs yet, so the first byte of output is not observable
//! through it. Measured instead: POST /v1/sandboxes until 201 (the sandbox
//! runs), and POST until `wait` reports it terminated (the server has seen
//! the exit, recorded it and destroyed the sandbox). Rounds alternate which
//! side goes first.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use clap::Args;
use serde_json::{json, Value};
use warren_proto::api::{CreateSandboxRequest, SandboxState, TerminationReason};

use super::{ApiServer, LocalWarren, IMAGE, WAIT_TIMEOUT};
use crate::rootfs;
use crate::shutdown::Shutdown;
use crate::stats::{self, json_num, Row, Summary};

#[derive(Args, Debug)]
pub struct ApiCreateArgs {
    /// Measured runs, each through the API and on the runtime.
    #[arg(long, default_value_t = 200, value_parser = crate::parse_positive)]
    pub runs: usize,
    /// Unrecorded warm-up runs of each.
    #[arg(long, default_value_t = 5)]
    pub warmup: usize,
}

/// One run through the API.
struct ApiRun {
    created: Duration,
    cycle: Duration,
}

pub fn run(args: &ApiCreateArgs, data: &Path, shutdown: &Shutdown) -> Result<()> {
    let rootfs_dir = data.join("rootfs");
    rootfs::build(&rootfs::find_busybox()?, &rootfs_dir)?;
    let local = LocalWarren::open(data, &rootfs_dir)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let server = ApiServer::start(data, &rootfs_dir, rt)?;

    println!("# warren-bench api-create");
    println!(
        "runs: {} after {} warm-up runs of each; order: alternating (API first on even rounds); \
         command: /bin/echo hi; image: busybox ({IMAGE}); load average at start: {}",
        args.runs,
        args.warmup,
        super::loadavg()
    );
    println!(
        "api: `warren serve` child on loopback, warren-client (HTTP/1.1 keep-alive, one \
         connection). The API serves no logs yet, so first output is NOT observable: measured \
         are POST→201 (create) and POST→terminated seen by GET .../wait (cycle)."
    );

    let pid = std::process::id();
    let req = CreateSandboxRequest {
        image: Some(IMAGE.into()),
        command: Some(vec!["/bin/echo".into(), "hi".into()]),
        ..Default::default()
    };
    let warren = local.warren();
    let mut api = Vec::with_capacity(args.runs);
    let mut local_runs = Vec::with_capacity(args.runs);
    for i in 0..args.warmup {
        shutdown.check()?;
        api_run(&server, &req)?;
        warren.echo_run(&format!("bench-api-{pid}-w{i}"))?;
    }
    warren.reset_phases();
    let before = server.metrics()?;
    for i in 0..args.runs {
        shutdown.check()?;
        let name = format!("bench-api-{pid}-{i}");
        if i % 2 == 0 {
            api.push(api_run(&server, &req)?);
            local_runs.push(warren.echo_run(&name)?);
        } else {
            local_runs.push(warren.echo_run(&name)?);
            api.push(api_run(&server, &req)?);
        }
        if (i + 1).is_multiple_of(50) {
            eprintln!("progress: {}/{} rounds", i + 1, args.runs);
        }
    }
    let after = server.metrics()?;
    server.shutdown()?;
    drop(local);

    let api_create = Summary::of(&api.iter().map(|r| r.created).collect::<Vec<_>>());
    let api_cycle = Summary::of(&api.iter().map(|r| r.cycle).collect::<Vec<_>>());
    let rt_create = Summary::of(&local_runs.iter().map(|r| r.created).collect::<Vec<_>>());
    let rt_first = Summary::of(
        &local_runs
            .iter()
            .map(|r| r.timing.first_byte)
            .collect::<Vec<_>>(),
    );
    let rt_cycle = Summary::of(
        &local_runs
            .iter()
            .map(|r| r.timing.cycle)
            .collect::<Vec<_>>(),
    );

    println!();
    stats::print_table(&[
        row("api", "create", api_create),
        row("api", "cycle", api_cycle),
        row("runtime", "create", rt_create),
        row("runtime", "first-byte", rt_first),
        row("runtime", "cycle", rt_cycle),
    ]);
    println!(
        "api create = POST /v1/sandboxes → 201 (running); api cycle = POST → GET .../wait \
         returns terminated (exit recorded, sandbox destroyed)."
    );
    println!(
        "runtime create = Runtime::create returned; runtime cycle = create → first byte → \
         exit → destroy (as in `create`)."
    );

    // Server-side means over the measured runs (from /metrics).
    let handler = super::mean_between(
        &before,
        &after,
        super::HTTP_HISTOGRAM,
        &super::route_labels("POST", "/v1/sandboxes", 201),
    );
    let start = super::mean_between(&before, &after, super::CREATE_HISTOGRAM, "");
    let wait_handler = super::mean_between(
        &before,
        &after,
        super::HTTP_HISTOGRAM,
        &super::route_labels("GET", "/v1/sandboxes/{id}/wait", 200),
    );
    let fmt = |x: Option<f64>| x.map_or("n/a".into(), |v| format!("{v:.3}"));
    let mean = |s: Option<Summary>| s.map(|s| s.mean);
    println!();
    println!("where an API create goes (means, ms; server figures from /metrics):");
    println!(
        "  client-side POST→201                      {:>8}",
        fmt(mean(api_create))
    );
    println!(
        "  server: POST handler (auth..response)     {:>8}",
        fmt(handler)
    );
    println!(
        "  server: supervisor.start (node create +   {:>8}",
        fmt(start)
    );
    println!("          mark_running)");
    println!(
        "  in-process Runtime::create                {:>8}",
        fmt(mean(rt_create))
    );
    println!(
        "  server: GET .../wait handler              {:>8}",
        fmt(wait_handler)
    );

    let p50 = |s: Option<Summary>| s.map(|s| s.p50);
    let p99 = |s: Option<Summary>| s.map(|s| s.p99);
    let diff = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a - b);
    let obj: Vec<(String, Value)> = vec![
        ("runs".into(), json!(args.runs)),
        ("api_create_p50_ms".into(), json_num(p50(api_create))),
        ("api_create_p99_ms".into(), json_num(p99(api_create))),
        ("api_cycle_p50_ms".into(), json_num(p50(api_cycle))),
        ("api_cycle_p99_ms".into(), json_num(p99(api_cycle))),
        ("runtime_create_p50_ms".into(), json_num(p50(rt_create))),
        ("runtime_cycle_p50_ms".into(), json_num(p50(rt_cycle))),
        ("runtime_cycle_p99_ms".into(), json_num(p99(rt_cycle))),
        (
            "api_overhead_p50_ms".into(),
            json_num(diff(p50(api_cycle), p50(rt_cycle))),
        ),
        (
            "api_create_overhead_p50_ms".into(),
            json_num(diff(p50(api_create), p50(rt_create))),
        ),
        ("server_create_handler_mean_ms".into(), json_num(handler)),
        ("server_supervisor_start_mean_ms".into(), json_num(start)),
    ];
    println!("{}", stats::json_object(&obj));
    Ok(())
}

fn row(runtime: &'static str, what: &'static str, summary: Option<Summary>) -> Row<'static> {
    Row {
        runtime,
        what,
        summary,
        note: None,
    }
}

/// POST → 201, then `wait` until terminated; checks `echo` exited with 0.
fn api_run(server: &ApiServer, req: &CreateSandboxRequest) -> Result<ApiRun> {
    let client = server.client();
    server.block_on(async {
        let t0 = Instant::now();
        let sb = client.create_sandbox(req).await.context("API create")?;
        let created = t0.elapsed();
        let end = client
            .wait_sandbox(&sb.id, WAIT_TIMEOUT)
            .await
            .with_context(|| format!("API wait for {}", sb.id))?;
        let cycle = t0.elapsed();
        ensure!(
            end.state == SandboxState::Terminated,
            "sandbox {} not terminated within {WAIT_TIMEOUT:?}",
            sb.id
        );
        let t = end.termination.context("terminated without a reason")?;
        ensure!(
            t.reason == TerminationReason::Exited && t.exit_code == Some(0),
            "sandbox {} ended with {:?} (exit {:?}, {:?})",
            sb.id,
            t.reason,
            t.exit_code,
            t.detail
        );
        Ok(ApiRun { created, cycle })
    })
}
