//! `api-throughput`: `--clients` concurrent tokio tasks create sandboxes
//! through the API as fast as they can until `--total` creates have been
//! attempted. Each sandbox runs `/bin/true`, so it ends on its own and the
//! server's supervisor records and destroys it while creates continue: the
//! figure includes the teardown work a real stream of short jobs causes.
//! All tasks share one `Client` (one connection pool: a connection per
//! request in flight, reused with keep-alive).

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use serde_json::{json, Value};
use warren_client::Client;
use warren_proto::api::{CreateSandboxRequest, SandboxState, TerminationReason};

use super::{ApiServer, IMAGE, WAIT_TIMEOUT};
use crate::rootfs;
use crate::shutdown::Shutdown;
use crate::stats::{self, json_num, Row, Summary};

/// How many errors are printed in full.
const ERRORS_SHOWN: usize = 5;

#[derive(Args, Debug)]
pub struct ApiThroughputArgs {
    /// Concurrent clients (tokio tasks).
    #[arg(long, default_value_t = 32, value_parser = crate::parse_positive)]
    pub clients: usize,
    /// Creates to attempt in total (measured).
    #[arg(long, default_value_t = 1000, value_parser = crate::parse_positive)]
    pub total: usize,
    /// Unrecorded sequential create → wait runs first.
    #[arg(long, default_value_t = 10)]
    pub warmup: usize,
}

#[derive(Default)]
struct Outcome {
    latencies: Vec<Duration>,
    ids: Vec<String>,
    errors: Vec<String>,
    error_count: usize,
}

pub fn run(args: &ApiThroughputArgs, data: &Path, shutdown: &Shutdown) -> Result<()> {
    let rootfs_dir = data.join("rootfs");
    rootfs::build(&rootfs::find_busybox()?, &rootfs_dir)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let server = ApiServer::start(data, &rootfs_dir, rt)?;

    println!("# warren-bench api-throughput");
    println!(
        "clients: {} concurrent tasks sharing one client; total: {} creates; command: /bin/true \
         (ends on its own; the server records and destroys it concurrently); image: busybox \
         ({IMAGE}); {} sequential warm-up runs; load average at start: {}",
        args.clients,
        args.total,
        args.warmup,
        super::loadavg()
    );

    let req = CreateSandboxRequest {
        image: Some(IMAGE.into()),
        command: Some(vec!["/bin/true".into()]),
        ..Default::default()
    };
    let client = server.client().clone();
    for _ in 0..args.warmup {
        shutdown.check()?;
        server.block_on(async {
            let sb = client
                .create_sandbox(&req)
                .await
                .context("warm-up create")?;
            client
                .wait_sandbox(&sb.id, WAIT_TIMEOUT)
                .await
                .context("warm-up wait")
        })?;
    }

    let before = server.metrics()?;
    let next = Arc::new(AtomicUsize::new(0));
    let outcome = Arc::new(Mutex::new(Outcome::default()));
    let t0 = Instant::now();
    server.block_on(async {
        let mut tasks = Vec::with_capacity(args.clients);
        for _ in 0..args.clients {
            let (client, req, next, outcome, shutdown) = (
                client.clone(),
                req.clone(),
                next.clone(),
                outcome.clone(),
                shutdown.clone(),
            );
            let total = args.total;
            tasks.push(tokio::spawn(async move {
                while !shutdown.requested() && next.fetch_add(1, Ordering::Relaxed) < total {
                    let t = Instant::now();
                    let res = client.create_sandbox(&req).await;
                    let latency = t.elapsed();
                    let mut o = outcome.lock().expect("outcome lock");
                    match res {
                        Ok(sb) => {
                            o.latencies.push(latency);
                            o.ids.push(sb.id);
                        }
                        Err(e) => {
                            o.error_count += 1;
                            if o.errors.len() < ERRORS_SHOWN {
                                o.errors.push(format!("{e} ({})", e.code()));
                            }
                        }
                    }
                }
            }));
        }
        for t in tasks {
            t.await.context("client task")?;
        }
        anyhow::Ok(())
    })?;
    let wall = t0.elapsed();
    let after = server.metrics()?;
    let outcome = std::mem::take(&mut *outcome.lock().expect("outcome lock"));
    shutdown.check()?;

    // Every created sandbox must end by itself, with `true`'s exit code 0.
    let drain_start = Instant::now();
    let (ended_ok, bad) = server.block_on(wait_all(&client, &outcome.ids, args.clients))?;
    let drain = drain_start.elapsed();
    server.shutdown()?;

    let created = outcome.ids.len();
    let per_second = created as f64 / wall.as_secs_f64();
    let lat = Summary::of(&outcome.latencies);
    println!();
    stats::print_table(&[Row {
        runtime: "api",
        what: "create",
        summary: lat,
        note: Some("no sandbox created"),
    }]);
    println!(
        "created {created} of {} in {:.3} s with {} clients: {per_second:.1} sandboxes/s; \
         errors: {}",
        args.total,
        wall.as_secs_f64(),
        args.clients,
        outcome.error_count
    );
    for e in &outcome.errors {
        println!("error: {e}");
    }
    println!(
        "after the last create, all {} ended within {:.3} s; {} ended with exit 0, {} otherwise{}",
        created,
        drain.as_secs_f64(),
        ended_ok,
        bad.len(),
        bad.first()
            .map(|b| format!(" (first: {b})"))
            .unwrap_or_default()
    );
    let handler = super::mean_between(
        &before,
        &after,
        super::HTTP_HISTOGRAM,
        &super::route_labels("POST", "/v1/sandboxes", 201),
    );
    let start = super::mean_between(&before, &after, super::CREATE_HISTOGRAM, "");
    let fmt = |x: Option<f64>| x.map_or("n/a".into(), |v| format!("{v:.3}"));
    println!(
        "server means under load (ms): POST handler {}, supervisor.start {}",
        fmt(handler),
        fmt(start)
    );

    let obj: Vec<(String, Value)> = vec![
        ("clients".into(), json!(args.clients)),
        ("total".into(), json!(args.total)),
        ("created".into(), json!(created)),
        ("wall_s".into(), json_num(Some(wall.as_secs_f64()))),
        ("per_second".into(), json_num(Some(per_second))),
        ("create_p50_ms".into(), json_num(lat.map(|s| s.p50))),
        ("create_p99_ms".into(), json_num(lat.map(|s| s.p99))),
        ("errors".into(), json!(outcome.error_count)),
        ("ended_not_ok".into(), json!(bad.len())),
        ("server_create_handler_mean_ms".into(), json_num(handler)),
        ("server_supervisor_start_mean_ms".into(), json_num(start)),
    ];
    println!("{}", stats::json_object(&obj));
    if outcome.error_count > 0 || !bad.is_empty() {
        anyhow::bail!(
            "{} create errors, {} sandboxes did not end with exit 0",
            outcome.error_count,
            bad.len()
        );
    }
    Ok(())
}

/// Waits (through the API, `parallel` at a time) until each sandbox has
/// ended; returns how many ended with exit 0, and a description of the rest.
async fn wait_all(
    client: &Client,
    ids: &[String],
    parallel: usize,
) -> Result<(usize, Vec<String>)> {
    let queue = Arc::new(Mutex::new(ids.to_vec()));
    let mut tasks = Vec::new();
    for _ in 0..parallel {
        let (client, queue) = (client.clone(), queue.clone());
        tasks.push(tokio::spawn(async move {
            let mut ok = 0usize;
            let mut bad = Vec::new();
            loop {
                let Some(id) = queue.lock().expect("queue lock").pop() else {
                    break;
                };
                match client.wait_sandbox(&id, WAIT_TIMEOUT).await {
                    Ok(sb) => match (&sb.state, &sb.termination) {
                        (SandboxState::Terminated, Some(t))
                            if t.reason == TerminationReason::Exited && t.exit_code == Some(0) =>
                        {
                            ok += 1
                        }
                        (state, t) => bad.push(format!("{id}: {state:?} {t:?}")),
                    },
                    Err(e) => bad.push(format!("{id}: wait failed: {e} ({})", e.code())),
                }
            }
            (ok, bad)
        }));
    }
    let mut ok = 0;
    let mut bad = Vec::new();
    for t in tasks {
        let (o, b) = t.await.context("wait task")?;
        ok += o;
        bad.extend(b);
    }
    Ok((ok, bad))
}
