//! `snapshot`: time of a filesystem snapshot (`Node::snapshot_filesystem`:
//! freeze, walk the overlay upper dir writing the layer tar and the
//! unpacked layer in one pass, sync, publish, record, thaw) of a running
//! sandbox of the host image, for two changes:
//!
//! - `small`: 10 changed files of 4 KiB;
//! - `large`: 1,000 changed files of 100 kB (100 MB).
//!
//! Each run uses a fresh sandbox with fresh random content (so no layer is
//! reused), snapshots it while it idles, and removes the image afterwards.
//! The peer, measured right after on the same upper dir: `tar -c` of it
//! piped to `sha256sum` (what the cheapest "hash what changed" costs; it
//! neither freezes, nor writes a blob, nor unpacks, nor syncs).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;
use warren_node::{CreateRequest, Node};
use warren_runtime::{ExecIo, ExecSpec, ExitStatus, NativeConfig, NativeRuntime, SandboxId};

use crate::shutdown::Shutdown;
use crate::stats::{json_num, json_object, round3, Summary};

#[derive(Args, Debug)]
pub struct SnapshotArgs {
    /// Measured snapshots per scenario.
    #[arg(long, default_value_t = 5, value_parser = crate::parse_positive)]
    pub runs: usize,
    /// Skip the `tar | sha256sum` peer.
    #[arg(long)]
    pub no_peers: bool,
}

struct Scenario {
    name: &'static str,
    files: usize,
    bytes: usize,
}

const SCENARIOS: [Scenario; 2] = [
    Scenario {
        name: "small",
        files: 10,
        bytes: 4096,
    },
    Scenario {
        name: "large",
        files: 1000,
        bytes: 100_000,
    },
];

/// One scenario's measurements.
#[derive(Default)]
struct Series {
    total: Vec<Duration>,
    frozen: Vec<Duration>,
    phases: Vec<Vec<(String, u64)>>,
    peer: Vec<Duration>,
}

pub fn run(args: &SnapshotArgs, data: &Path, shutdown: &Shutdown) -> Result<()> {
    let store = warren_image::ImageStore::open(data.join("images"))?;
    let mut cfg = NativeConfig::new(data.join("runtime"));
    cfg.netns_pool = 0;
    let node = Node::new(NativeRuntime::new(cfg)?, store)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(node.ensure_image("host"))?;
    let mut results = Vec::new();
    for sc in &SCENARIOS {
        let mut series = Series::default();
        for i in 0..args.runs {
            shutdown.check()?;
            one_run(&node, &rt, data, sc, i, args.no_peers, &mut series)?;
            eprintln!("progress: {} {}/{}", sc.name, i + 1, args.runs);
        }
        results.push((sc, series));
    }

    println!(
        "filesystem snapshot of a running sandbox ({} runs each, p50 in ms):",
        args.runs
    );
    println!(
        "  {:<36} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>12}",
        "change", "total", "frozen", "walk", "sync", "publish", "record", "tar|sha256"
    );
    let mut fields = vec![
        ("bench".into(), json!("snapshot")),
        ("runs".into(), json!(args.runs)),
    ];
    for (sc, s) in &results {
        let p50 = |v: &[Duration]| Summary::of(v).map(|s| s.p50);
        let phase = |name: &str| {
            let v: Vec<Duration> = s
                .phases
                .iter()
                .filter_map(|p| p.iter().find(|(n, _)| n == name))
                .map(|(_, us)| Duration::from_micros(*us))
                .collect();
            p50(&v)
        };
        let total = p50(&s.total);
        let peer = p50(&s.peer);
        let label = format!(
            "{} ({} files, {:.1} MB)",
            sc.name,
            sc.files,
            (sc.files * sc.bytes) as f64 / 1e6
        );
        let f = |x: Option<f64>| x.map(|x| format!("{x:.1}")).unwrap_or_else(|| "-".into());
        println!(
            "  {label:<36} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>12}",
            f(total),
            f(p50(&s.frozen)),
            f(phase("walk")),
            f(phase("sync")),
            f(phase("publish")),
            f(phase("record")),
            f(peer)
        );
        let key = |k: &str| format!("{}_{k}", sc.name);
        fields.push((key("total_ms_p50"), json_num(total.map(round3))));
        fields.push((key("frozen_ms_p50"), json_num(p50(&s.frozen).map(round3))));
        for ph in ["walk", "sync", "publish", "record"] {
            fields.push((
                key(&format!("{ph}_ms_p50")),
                json_num(phase(ph).map(round3)),
            ));
        }
        fields.push((key("tar_sha256_ms_p50"), json_num(peer.map(round3))));
        fields.push((
            key("ratio_vs_tar_sha256"),
            json_num(total.zip(peer).map(|(t, p)| round3(t / p))),
        ));
    }
    println!("{}", json_object(&fields));
    Ok(())
}

fn one_run(
    node: &Node,
    rt: &tokio::runtime::Runtime,
    data: &Path,
    sc: &Scenario,
    i: usize,
    no_peers: bool,
    series: &mut Series,
) -> Result<()> {
    let id = SandboxId::new(format!("bench-snap-{}-{i}-{}", sc.name, std::process::id()))?;
    let req = CreateRequest {
        id: id.clone(),
        image: "host".into(),
        command: None,
        env: vec![],
        workdir: None,
        user: None,
        use_image_command: false,
        limits: Default::default(),
        log_capacity: None,
        network: Default::default(),
    };
    rt.block_on(node.create(req, None, None))?;
    let guard = Destroy { node, rt, id: &id };
    let script = format!(
        "mkdir -p /data && i=0; while [ $i -lt {} ]; do \
         head -c {} /dev/urandom > /data/f$i || exit 1; i=$((i+1)); done",
        sc.files, sc.bytes
    );
    exec(node, &id, &script)?;
    let t = Instant::now();
    let out = rt.block_on(node.snapshot_filesystem(&id, None))?;
    series.total.push(t.elapsed());
    series.frozen.push(Duration::from_micros(out.frozen_micros));
    series.phases.push(out.phases.clone());
    if out.layer_reused || out.stats.files < sc.files as u64 {
        bail!("unexpected snapshot: {:?}", out.stats);
    }
    if !no_peers {
        let upper = data
            .join("runtime/sandboxes")
            .join(id.as_str())
            .join("upper");
        let t = Instant::now();
        let status = Command::new("sh")
            .arg("-c")
            .arg("tar -c -C \"$0\" . | sha256sum >/dev/null")
            .arg(&upper)
            .stdin(Stdio::null())
            .status()
            .context("tar | sha256sum")?;
        if !status.success() {
            bail!("tar | sha256sum failed: {status}");
        }
        series.peer.push(t.elapsed());
    }
    drop(guard);
    node.images()
        .remove(&out.image.id)
        .context("remove the snapshot image")?;
    Ok(())
}

/// Runs `sh -c script` as root in the sandbox, requiring success.
fn exec(node: &Node, id: &SandboxId, script: &str) -> Result<()> {
    use warren_runtime::Runtime;
    let spec = ExecSpec::new(vec!["sh".into(), "-c".into(), script.into()]);
    let mut e = node.runtime().exec(id, &spec, ExecIo::Null)?;
    let exit = e.wait()?;
    if exit.status != ExitStatus::Code(0) {
        bail!("{script}: {exit:?}");
    }
    Ok(())
}

struct Destroy<'a> {
    node: &'a Node,
    rt: &'a tokio::runtime::Runtime,
    id: &'a SandboxId,
}

impl Drop for Destroy<'_> {
    fn drop(&mut self) {
        let _ = self.rt.block_on(self.node.destroy(self.id));
    }
}
