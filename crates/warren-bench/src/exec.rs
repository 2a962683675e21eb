//! `exec`: round trip of running `/bin/true` in an already running sandbox
//! (spawn → exit status received).
//!
//! Runs are in SEQUENTIAL blocks, one runtime at a time (Warren, crun, runc),
//! each after its own warm-up: the peers get fewer runs (`--peer-runs`)
//! because each of their execs is a full CLI invocation. Only the runtime being
//! measured has a running sandbox or container during its block.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use serde_json::{json, Value};

use crate::peers::{self, OciPeer, PeerArgs};
use crate::shutdown::Shutdown;
use crate::stats::{self, json_num, Row, Summary};
use crate::warren::{SandboxSet, Warren};
use crate::{rootfs, ImageChoice};

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// Measured execs into the Warren sandbox.
    #[arg(long, default_value_t = 1000, value_parser = crate::parse_positive)]
    pub runs: usize,
    /// Measured execs per peer (crun, runc).
    #[arg(long, default_value_t = 100, value_parser = crate::parse_positive)]
    pub peer_runs: usize,
    /// Unrecorded warm-up execs per runtime.
    #[arg(long, default_value_t = 10)]
    pub warmup: usize,
    /// Image for the Warren sandbox (peers always use the busybox rootfs).
    #[arg(long, value_enum, default_value_t = ImageChoice::Busybox)]
    pub image: ImageChoice,
    #[command(flatten)]
    pub peers: PeerArgs,
}

/// Figures for one runtime, or why there are none.
type Outcome = Result<Summary, String>;

pub fn run(args: &ExecArgs, data: &Path, shutdown: &Shutdown) -> Result<()> {
    let rootfs_dir = data.join("rootfs");
    rootfs::build(&rootfs::find_busybox()?, &rootfs_dir)?;

    println!("# warren-bench exec");
    println!(
        "command: /bin/true; warren: {} runs, peers: {} runs, each after {} warm-up runs; \
         order: sequential blocks (warren, crun, runc)",
        args.runs, args.peer_runs, args.warmup
    );

    let warren: Outcome = if args.peers.warren() {
        let w = Warren::open(data, args.image, &rootfs_dir)?;
        Ok(bench_warren(&w, args, shutdown)?)
    } else {
        Err("skipped (--peers-only)".into())
    };

    let crun_bin = args.peers.find("crun");
    let runc_bin = args.peers.find("runc");
    let spec_tool = runc_bin.clone().or_else(|_| crun_bin.clone());
    let bundles = match &spec_tool {
        Ok(tool) => Some(peers::write_bundles(
            tool,
            &data.join("bundles"),
            &rootfs_dir,
        )?),
        Err(_) => None,
    };
    let mut outcomes = vec![("warren", warren)];
    for (name, bin) in [("crun", crun_bin), ("runc", runc_bin)] {
        let outcome = match (bin, &bundles) {
            (Err(why), _) => Err(why),
            (Ok(_), None) => Err("no OCI bundle".to_owned()),
            (Ok(bin), Some(b)) => {
                println!("{name}: {}", peers::version(&bin));
                let peer = OciPeer::new(name, bin, data)?;
                match bench_peer(&peer, &b.sleep, args, shutdown) {
                    Ok(s) => Ok(s),
                    // Ctrl-C ends the whole run; other peer failures only
                    // drop that peer.
                    Err(e) if shutdown.requested() => return Err(e),
                    Err(e) => Err(format!("failed: {e:#}")),
                }
            }
        };
        if let Err(why) = &outcome {
            eprintln!("note: {name}: {why}");
        }
        outcomes.push((name, outcome));
    }

    report(args, &outcomes);
    Ok(())
}

fn bench_warren(w: &Warren, args: &ExecArgs, shutdown: &Shutdown) -> Result<Summary> {
    let mut set = SandboxSet::new(w);
    let id = w.create_into(
        &mut set,
        &format!("bench-exec-{}", std::process::id()),
        None,
    )?;
    for _ in 0..args.warmup {
        shutdown.check()?;
        w.exec_true(&id)?;
    }
    let mut samples = Vec::with_capacity(args.runs);
    for i in 0..args.runs {
        shutdown.check()?;
        samples.push(w.exec_true(&id)?);
        if (i + 1).is_multiple_of(250) {
            eprintln!("progress: warren {}/{}", i + 1, args.runs);
        }
    }
    let (_, err) = set.destroy_all();
    if let Some(err) = err {
        return Err(err);
    }
    Ok(Summary::of(&samples).expect("runs > 0 checked by caller"))
}

fn bench_peer(
    peer: &OciPeer,
    bundle: &Path,
    args: &ExecArgs,
    shutdown: &Shutdown,
) -> Result<Summary> {
    let id = format!("wb-{}-exec-{}", peer.name, std::process::id());
    let container = peer.start_detached(bundle, &id)?;
    for _ in 0..args.warmup {
        shutdown.check()?;
        peer.exec_true(&container.id)?;
    }
    let mut samples: Vec<Duration> = Vec::with_capacity(args.peer_runs);
    for _ in 0..args.peer_runs {
        shutdown.check()?;
        samples.push(peer.exec_true(&container.id)?);
    }
    drop(container);
    Ok(Summary::of(&samples).expect("peer runs > 0 checked by caller"))
}

fn report(args: &ExecArgs, outcomes: &[(&str, Outcome)]) {
    println!();
    let rows: Vec<Row<'_>> = outcomes
        .iter()
        .map(|(name, o)| Row {
            runtime: name,
            what: "exec-true",
            summary: o.as_ref().ok().copied(),
            note: o.as_ref().err().map(String::as_str),
        })
        .collect();
    stats::print_table(&rows);

    let get = |name: &str| {
        outcomes
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, o)| o.as_ref().ok().copied())
    };
    let mut obj: Vec<(String, Value)> = vec![
        ("runs".into(), json!(args.runs)),
        ("peer_runs".into(), json!(args.peer_runs)),
    ];
    for (name, _) in outcomes {
        let s = get(name);
        obj.push((format!("{name}_exec_p50_ms"), json_num(s.map(|s| s.p50))));
        obj.push((format!("{name}_exec_p99_ms"), json_num(s.map(|s| s.p99))));
    }
    let ratio = match (get("warren"), get("crun")) {
        (Some(w), Some(c)) if c.p50 > 0.0 => Some(w.p50 / c.p50),
        _ => None,
    };
    obj.push(("ratio_vs_crun".into(), json_num(ratio)));
    println!("{}", stats::json_object(&obj));
}
