//! `api-exec`: round trip of `POST /v1/sandboxes/{id}/exec` running
//! `/bin/true` in one idle sandbox created through the API, and of
//! `Runtime::exec` + wait in an idle in-process sandbox, in the same run.
//! Rounds alternate which side goes first.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use clap::Args;
use serde_json::{json, Value};
use warren_proto::api::{CreateSandboxRequest, ExecRequest, SandboxState};

use super::{ApiServer, LocalWarren, IDLE_LIFETIME_SECS, IMAGE};
use crate::rootfs;
use crate::shutdown::Shutdown;
use crate::stats::{self, json_num, Row, Summary};
use crate::warren::SandboxSet;

#[derive(Args, Debug)]
pub struct ApiExecArgs {
    /// Measured execs of each kind.
    #[arg(long, default_value_t = 1000, value_parser = crate::parse_positive)]
    pub runs: usize,
    /// Unrecorded warm-up execs of each kind.
    #[arg(long, default_value_t = 10)]
    pub warmup: usize,
}

pub fn run(args: &ApiExecArgs, data: &Path, shutdown: &Shutdown) -> Result<()> {
    let rootfs_dir = data.join("rootfs");
    rootfs::build(&rootfs::find_busybox()?, &rootfs_dir)?;
    let local = LocalWarren::open(data, &rootfs_dir)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let server = ApiServer::start(data, &rootfs_dir, rt)?;

    println!("# warren-bench api-exec");
    println!(
        "command: /bin/true; {} runs of each after {} warm-up runs; order: alternating (API \
         first on even rounds); image: busybox ({IMAGE}); load average at start: {}",
        args.runs,
        args.warmup,
        super::loadavg()
    );
    println!(
        "api: POST /v1/sandboxes/{{id}}/exec → 200 with exit_code 0 (buffered output), \
         warren-client over one keep-alive connection; runtime: Runtime::exec (stdio to \
         /dev/null) + wait, as in `exec`"
    );

    let client = server.client();
    let sandbox = server.block_on(client.create_sandbox(&CreateSandboxRequest {
        image: Some(IMAGE.into()),
        timeout_secs: Some(IDLE_LIFETIME_SECS),
        ..Default::default()
    }))?;
    ensure!(
        sandbox.state == SandboxState::Running,
        "the API sandbox is {:?}, not running",
        sandbox.state
    );
    let warren = local.warren();
    let mut set = SandboxSet::new(warren);
    let local_id = warren.create_into(
        &mut set,
        &format!("bench-api-exec-{}", std::process::id()),
        None,
    )?;

    let req = ExecRequest {
        command: vec!["/bin/true".into()],
        ..Default::default()
    };
    let api_exec = || -> Result<Duration> {
        server.block_on(async {
            let t0 = Instant::now();
            let r = client.exec(&sandbox.id, &req).await.context("API exec")?;
            let elapsed = t0.elapsed();
            ensure!(
                r.exit_code == 0 && !r.timed_out,
                "/bin/true through the API ended with {} (timed out: {})",
                r.exit_code,
                r.timed_out
            );
            Ok(elapsed)
        })
    };

    for _ in 0..args.warmup {
        shutdown.check()?;
        api_exec()?;
        warren.exec_true(&local_id)?;
    }
    let before = server.metrics()?;
    let mut api = Vec::with_capacity(args.runs);
    let mut local_samples = Vec::with_capacity(args.runs);
    for i in 0..args.runs {
        shutdown.check()?;
        if i % 2 == 0 {
            api.push(api_exec()?);
            local_samples.push(warren.exec_true(&local_id)?);
        } else {
            local_samples.push(warren.exec_true(&local_id)?);
            api.push(api_exec()?);
        }
        if (i + 1).is_multiple_of(250) {
            eprintln!("progress: {}/{} rounds", i + 1, args.runs);
        }
    }
    let after = server.metrics()?;

    let (_, err) = set.destroy_all();
    drop(set);
    server.shutdown()?;
    drop(local);
    if let Some(err) = err {
        return Err(err);
    }

    let api_s = Summary::of(&api);
    let rt_s = Summary::of(&local_samples);
    println!();
    stats::print_table(&[
        Row {
            runtime: "api",
            what: "exec-true",
            summary: api_s,
            note: None,
        },
        Row {
            runtime: "runtime",
            what: "exec-true",
            summary: rt_s,
            note: None,
        },
    ]);
    let handler = super::mean_between(
        &before,
        &after,
        super::HTTP_HISTOGRAM,
        &super::route_labels("POST", "/v1/sandboxes/{id}/exec", 200),
    );
    let fmt = |x: Option<f64>| x.map_or("n/a".into(), |v| format!("{v:.3}"));
    println!();
    println!("where an API exec goes (means, ms; server figure from /metrics):");
    println!(
        "  client-side POST→200                      {:>8}",
        fmt(api_s.map(|s| s.mean))
    );
    println!(
        "  server: exec handler (auth..response)     {:>8}",
        fmt(handler)
    );
    println!(
        "  in-process Runtime::exec + wait           {:>8}",
        fmt(rt_s.map(|s| s.mean))
    );

    let p50 = |s: Option<Summary>| s.map(|s| s.p50);
    let p99 = |s: Option<Summary>| s.map(|s| s.p99);
    let obj: Vec<(String, Value)> = vec![
        ("runs".into(), json!(args.runs)),
        ("api_exec_p50_ms".into(), json_num(p50(api_s))),
        ("api_exec_p99_ms".into(), json_num(p99(api_s))),
        ("runtime_exec_p50_ms".into(), json_num(p50(rt_s))),
        ("runtime_exec_p99_ms".into(), json_num(p99(rt_s))),
        (
            "api_exec_overhead_p50_ms".into(),
            json_num(p50(api_s).zip(p50(rt_s)).map(|(a, r)| a - r)),
        ),
        ("server_exec_handler_mean_ms".into(), json_num(handler)),
    ];
    println!("{}", stats::json_object(&obj));
    Ok(())
}
