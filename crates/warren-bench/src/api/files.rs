//! `api-files`: the file API through a real `warren serve`. A 4 KiB write
//! then read of the same file, many times (p50/p99 of each), and 1 GiB
//! streamed in and out, next to `cat` and `head -c` of the same size
//! inside the sandbox (timed from inside, so the exec round trip is not
//! counted against them).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use clap::Args;
use futures_util::StreamExt;
use serde_json::{json, Value};
use warren_client::WriteFile;
use warren_proto::api::{CreateSandboxRequest, ExecRequest, SandboxState};

use super::{ApiServer, IDLE_LIFETIME_SECS};
use crate::rootfs;
use crate::shutdown::Shutdown;
use crate::stats::{self, json_num, Row, Summary};

#[derive(Args, Debug)]
pub struct ApiFilesArgs {
    /// Write-then-read rounds of the 4 KiB file.
    #[arg(long, default_value_t = 500, value_parser = crate::parse_positive)]
    pub runs: usize,
    /// Size of the large file, MiB.
    #[arg(long, default_value_t = 1024, value_parser = crate::parse_positive)]
    pub big_mib: usize,
}

pub fn run(args: &ApiFilesArgs, data: &Path, shutdown: &Shutdown) -> Result<()> {
    let rootfs_dir = data.join("rootfs");
    rootfs::build(&rootfs::find_busybox()?, &rootfs_dir)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let server = ApiServer::start(data, &rootfs_dir, rt)?;
    println!("# warren-bench api-files");
    println!(
        "4 KiB: PUT then GET of /tmp/small, {} rounds after 20 warm-up; large: {} MiB PUT and GET \
         of /tmp/big vs `head -c`/`cat` of it inside the sandbox; image: host; load average at start: {}",
        args.runs,
        args.big_mib,
        super::loadavg()
    );
    let client = server.client();
    // The host image: GNU `date +%s%N` times the in-sandbox peers.
    let sb = server.block_on(client.create_sandbox(&CreateSandboxRequest {
        image: Some("host".into()),
        timeout_secs: Some(IDLE_LIFETIME_SECS),
        ..Default::default()
    }))?;
    ensure!(sb.state == SandboxState::Running, "sandbox not running");
    let small = vec![b'x'; 4096];
    let put = |path: &'static [u8], data: Vec<u8>| {
        server.block_on(async {
            let body = futures_util::stream::once(async move { Ok(bytes::Bytes::from(data)) });
            client
                .write_file(&sb.id, path, &WriteFile::default(), body)
                .await
        })
    };
    let get = |path: &'static [u8]| -> Result<u64> {
        server.block_on(async {
            let (_, mut s) = client.read_file(&sb.id, path, None, None).await?;
            let mut n = 0u64;
            while let Some(c) = s.next().await {
                n += c?.len() as u64;
            }
            Ok(n)
        })
    };
    for _ in 0..20 {
        put(b"/tmp/small", small.clone())?;
        get(b"/tmp/small")?;
    }
    let (mut writes, mut reads) = (Vec::new(), Vec::new());
    for _ in 0..args.runs {
        shutdown.check()?;
        let t = Instant::now();
        put(b"/tmp/small", small.clone())?;
        writes.push(t.elapsed());
        let t = Instant::now();
        ensure!(get(b"/tmp/small")? == 4096, "short read");
        reads.push(t.elapsed());
    }

    // Large file: streamed from a generator, read back and counted. Peak
    // memory of the server and of this client before and after.
    let server_before = server.peak_rss_kib();
    let client_before = super::vm_hwm_kib("/proc/self/status");
    let big = (args.big_mib as u64) << 20;
    let t = Instant::now();
    server.block_on(async {
        let chunk = bytes::Bytes::from(vec![7u8; 1 << 20]);
        let n = args.big_mib;
        let body = futures_util::stream::iter((0..n).map(move |_| Ok(chunk.clone())));
        client
            .write_file(&sb.id, b"/tmp/big", &WriteFile::default(), body)
            .await
    })?;
    let api_write = t.elapsed();
    let t = Instant::now();
    ensure!(get(b"/tmp/big")? == big, "short big read");
    let api_read = t.elapsed();
    let server_after = server.peak_rss_kib();
    let client_after = super::vm_hwm_kib("/proc/self/status");
    // The same inside the sandbox, timed there (busybox `time` is coarse;
    // use date +%s%N around the command).
    let inside = |cmd: &str| -> Result<Duration> {
        let script = format!("a=$(date +%s%N); {cmd}; b=$(date +%s%N); echo $((b-a))");
        let r = server.block_on(client.exec(
            &sb.id,
            &ExecRequest {
                command: vec!["sh".into(), "-c".into(), script],
                ..Default::default()
            },
        ))?;
        ensure!(r.exit_code == 0, "{cmd}: {}", r.stderr);
        let ns: u64 = r.stdout.trim().parse().context("timing from inside")?;
        Ok(Duration::from_nanos(ns))
    };
    let cat = inside("cat /tmp/big > /dev/null")?;
    let head = inside(&format!(
        "head -c {big} /dev/zero > /tmp/big2 && sync /tmp/big2; rm -f /tmp/big2"
    ))?;
    server.shutdown()?;

    let w = Summary::of(&writes);
    let r = Summary::of(&reads);
    println!();
    stats::print_table(&[
        Row {
            runtime: "api",
            what: "write-4KiB",
            summary: w,
            note: None,
        },
        Row {
            runtime: "api",
            what: "read-4KiB",
            summary: r,
            note: None,
        },
    ]);
    let mbps = |d: Duration| big as f64 / (1 << 20) as f64 / d.as_secs_f64();
    println!();
    println!("{} MiB, MiB/s (seconds):", args.big_mib);
    println!(
        "  API write (PUT, atomic, fsync)  {:>8.0} ({:.2} s)",
        mbps(api_write),
        api_write.as_secs_f64()
    );
    println!(
        "  inside: head -c > file; sync    {:>8.0} ({:.2} s)",
        mbps(head),
        head.as_secs_f64()
    );
    println!(
        "  API read (GET)                  {:>8.0} ({:.2} s)",
        mbps(api_read),
        api_read.as_secs_f64()
    );
    println!(
        "  inside: cat file > /dev/null    {:>8.0} ({:.2} s)",
        mbps(cat),
        cat.as_secs_f64()
    );
    let kib = |k: Option<u64>| k.map_or("n/a".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
    println!(
        "peak RSS (VmHWM) across the {} MiB round trip: server {} -> {}, client {} -> {}",
        args.big_mib,
        kib(server_before),
        kib(server_after),
        kib(client_before),
        kib(client_after)
    );
    let obj: Vec<(String, Value)> = vec![
        ("runs".into(), json!(args.runs)),
        ("write_4k_p50_ms".into(), json_num(w.map(|s| s.p50))),
        ("write_4k_p99_ms".into(), json_num(w.map(|s| s.p99))),
        ("read_4k_p50_ms".into(), json_num(r.map(|s| s.p50))),
        ("read_4k_p99_ms".into(), json_num(r.map(|s| s.p99))),
        ("big_mib".into(), json!(args.big_mib)),
        ("api_write_mibps".into(), json_num(Some(mbps(api_write)))),
        ("api_read_mibps".into(), json_num(Some(mbps(api_read)))),
        ("inside_write_mibps".into(), json_num(Some(mbps(head)))),
        ("inside_cat_mibps".into(), json_num(Some(mbps(cat)))),
        ("server_peak_rss_kib".into(), json!(server_after)),
        ("client_peak_rss_kib".into(), json!(client_after)),
    ];
    println!("{}", stats::json_object(&obj));
    Ok(())
}
