//! `create`: time to first byte of `echo hi`, and the full cycle create →
//! first byte → exit → destroy, for Warren and each installed peer.
//!
//! Runs are INTERLEAVED: round r runs every runtime once, starting at runtime
//! r mod k, so drift in the host (page cache, other load, thermal) is spread
//! evenly and no runtime always runs right after the same one. Each runtime
//! gets `--warmup` unrecorded runs first.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use serde_json::{json, Value};

use crate::peers::{self, Bwrap, OciPeer, PeerArgs};
use crate::shutdown::Shutdown;
use crate::stats::{self, json_num, Row, Summary};
use crate::timing::Timing;
use crate::warren::Warren;
use crate::{rootfs, ImageChoice};

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Measured runs per runtime.
    #[arg(long, default_value_t = 200, value_parser = crate::parse_positive)]
    pub runs: usize,
    /// Unrecorded warm-up runs per runtime.
    #[arg(long, default_value_t = 5)]
    pub warmup: usize,
    /// Image for Warren sandboxes (peers always use the busybox rootfs).
    #[arg(long, value_enum, default_value_t = ImageChoice::Busybox)]
    pub image: ImageChoice,
    /// Give every Warren sandbox a network (veth, address, NAT, DNS,
    /// egress rules) instead of only `lo`. The bench first moves itself into
    /// a private network namespace, so the host's network is untouched.
    #[arg(long)]
    pub network: bool,
    #[command(flatten)]
    pub peers: PeerArgs,
}

type RunFn<'a> = Box<dyn FnMut(usize) -> Result<Timing> + 'a>;

/// One runtime under test.
struct Contender<'a> {
    name: &'static str,
    run: Option<RunFn<'a>>,
    /// Why it has no figures (not installed, failed, ...).
    note: Option<String>,
    /// Errors from Warren end the benchmark; a failing peer is only dropped.
    fatal: bool,
    first_byte: Vec<Duration>,
    cycle: Vec<Duration>,
}

impl<'a> Contender<'a> {
    fn new(name: &'static str, run: Result<RunFn<'a>, String>, fatal: bool) -> Self {
        let (run, note) = match run {
            Ok(f) => (Some(f), None),
            Err(why) => (None, Some(why)),
        };
        Self {
            name,
            run,
            note,
            fatal,
            first_byte: Vec::new(),
            cycle: Vec::new(),
        }
    }

    /// Runs once; a peer's failure disables it with a note.
    fn step(&mut self, i: usize, record: bool) -> Result<()> {
        let Some(run) = self.run.as_mut() else {
            return Ok(());
        };
        match run(i) {
            Ok(t) => {
                if record {
                    self.first_byte.push(t.first_byte);
                    self.cycle.push(t.cycle);
                }
                Ok(())
            }
            Err(e) if self.fatal => Err(e),
            Err(e) => {
                let note = format!("failed on run {i}: {e:#}");
                eprintln!(
                    "note: {}: {note}; dropping it from the comparison",
                    self.name
                );
                self.note = Some(note);
                self.run = None;
                self.first_byte.clear();
                self.cycle.clear();
                Ok(())
            }
        }
    }
}

pub fn run(args: &CreateArgs, data: &Path, shutdown: &Shutdown) -> Result<()> {
    let rootfs_dir = data.join("rootfs");
    rootfs::build(&rootfs::find_busybox()?, &rootfs_dir)?;

    if args.network {
        crate::hostns::private_network()?;
    }
    let warren = if args.peers.warren() {
        let network = args.network;
        let mut w = Warren::open_with(data, args.image, &rootfs_dir, |c| {
            if network {
                let mut net = c.default_network();
                // Nothing is resolved during the bench.
                net.dns_upstreams = Vec::new();
                c.network = Some(net);
            }
        })?;
        w.set_network(network);
        Some(w)
    } else {
        None
    };
    let crun = args.peers.find("crun");
    let runc = args.peers.find("runc");
    let bwrap = args
        .peers
        .find("bwrap")
        .map(|bin| Bwrap::new(bin, &rootfs_dir));
    // Bundles come from `runc spec` (crun's spec is the fallback).
    let spec_tool = runc.clone().or_else(|_| crun.clone());
    let bundles = match &spec_tool {
        Ok(tool) => Some(peers::write_bundles(
            tool,
            &data.join("bundles"),
            &rootfs_dir,
        )?),
        Err(_) => None,
    };
    let oci = |name: &'static str, bin: Result<std::path::PathBuf, String>| {
        bin.and_then(|b| OciPeer::new(name, b, data).map_err(|e| format!("{e:#}")))
    };
    let crun = oci("crun", crun);
    let runc = oci("runc", runc);

    println!("# warren-bench create");
    println!(
        "runs: {} per runtime after {} warm-up runs; order: interleaved (round r starts \
         at runtime r mod k); command: /bin/echo hi",
        args.runs, args.warmup
    );
    println!(
        "rootfs: busybox-static dir shared by all peers; warren image: {} ({} stacked layer(s))",
        args.image.name(),
        warren.as_ref().map_or(0, |w| w.layer_count())
    );
    print_versions(&crun, &runc, &bwrap);

    let pid = std::process::id();
    let echo_bundle = bundles.as_ref().map(|b| b.echo.as_path());
    let mut contenders = vec![
        Contender::new(
            "warren",
            match &warren {
                Some(w) => {
                    Ok(Box::new(move |i| w.echo_cycle(&format!("bench-{pid}-{i}"))) as RunFn)
                }
                None => Err("skipped (--peers-only)".to_owned()),
            },
            true,
        ),
        Contender::new("crun", oci_runner(&crun, echo_bundle, pid), false),
        Contender::new("runc", oci_runner(&runc, echo_bundle, pid), false),
        Contender::new(
            "bwrap",
            match &bwrap {
                Ok(b) => Ok(Box::new(move |_| b.run_cycle()) as RunFn),
                Err(why) => Err(why.clone()),
            },
            false,
        ),
    ];
    for c in &contenders {
        if let Some(note) = &c.note {
            eprintln!("note: {}: {note}", c.name);
        }
    }

    // Run numbers are unique across warm-up and measurement (container ids).
    let k = contenders.len();
    for i in 0..args.warmup {
        for c in contenders.iter_mut() {
            shutdown.check()?;
            c.step(i, false)?;
        }
    }
    if let Some(w) = &warren {
        w.reset_phases();
    }
    for round in 0..args.runs {
        for j in 0..k {
            shutdown.check()?;
            contenders[(round + j) % k].step(args.warmup + round, true)?;
        }
        if (round + 1).is_multiple_of(50) {
            eprintln!("progress: {}/{} rounds", round + 1, args.runs);
        }
    }

    if let Some(w) = &warren {
        w.print_phases();
    }
    report(args.runs, &contenders);
    Ok(())
}

fn oci_runner<'a>(
    peer: &'a Result<OciPeer, String>,
    bundle: Option<&'a Path>,
    pid: u32,
) -> Result<RunFn<'a>, String> {
    let peer = peer.as_ref().map_err(Clone::clone)?;
    let bundle = bundle.ok_or("no OCI bundle (neither runc nor crun can write a spec)")?;
    Ok(Box::new(move |i| {
        peer.run_cycle(bundle, &format!("wb-{}-{pid}-{i}", peer.name))
    }))
}

fn print_versions(
    crun: &Result<OciPeer, String>,
    runc: &Result<OciPeer, String>,
    bwrap: &Result<Bwrap, String>,
) {
    let mut parts = Vec::new();
    if let Ok(p) = crun {
        parts.push(peers::version(p.bin()));
    }
    if let Ok(p) = runc {
        parts.push(peers::version(p.bin()));
    }
    if let Ok(b) = bwrap {
        parts.push(peers::version(b.bin()));
    }
    if !parts.is_empty() {
        println!("peers: {}", parts.join("; "));
    }
}

fn report(runs: usize, contenders: &[Contender<'_>]) {
    let summaries: Vec<(Option<Summary>, Option<Summary>)> = contenders
        .iter()
        .map(|c| (Summary::of(&c.first_byte), Summary::of(&c.cycle)))
        .collect();
    let mut rows = Vec::new();
    for (c, (fb, cy)) in contenders.iter().zip(&summaries) {
        rows.push(Row {
            runtime: c.name,
            what: "first-byte",
            summary: *fb,
            note: c.note.as_deref(),
        });
        rows.push(Row {
            runtime: c.name,
            what: "cycle",
            summary: *cy,
            note: c.note.as_deref(),
        });
    }
    println!();
    stats::print_table(&rows);
    for c in contenders {
        if let Some(note) = &c.note {
            println!("note: {}: {note}", c.name);
        }
    }

    let mut obj: Vec<(String, Value)> = vec![("runs".into(), json!(runs))];
    for (c, (_, cy)) in contenders.iter().zip(&summaries) {
        obj.push((format!("{}_p50_ms", c.name), json_num(cy.map(|s| s.p50))));
        obj.push((format!("{}_p99_ms", c.name), json_num(cy.map(|s| s.p99))));
    }
    for (c, (fb, _)) in contenders.iter().zip(&summaries) {
        obj.push((
            format!("{}_first_byte_p50_ms", c.name),
            json_num(fb.map(|s| s.p50)),
        ));
        obj.push((
            format!("{}_first_byte_p99_ms", c.name),
            json_num(fb.map(|s| s.p99)),
        ));
    }
    let p50 = |name: &str| {
        contenders
            .iter()
            .zip(&summaries)
            .find(|(c, _)| c.name == name)
            .and_then(|(_, (_, cy))| cy.map(|s| s.p50))
    };
    let ratio = match (p50("warren"), p50("crun")) {
        (Some(w), Some(c)) if c > 0.0 => Some(w / c),
        _ => None,
    };
    obj.push(("ratio_vs_crun".into(), json_num(ratio)));
    println!("{}", stats::json_object(&obj));
}
