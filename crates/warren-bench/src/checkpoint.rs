//! `bench/run checkpoint`: memory snapshot (checkpoint) and restore of an
//! idle Python HTTP server holding ~30 MB, in Warren and, side by side in
//! the same run, in runc (`runc checkpoint`/`restore` over CRIU 4.x) and
//! gVisor (`runsc checkpoint`/`restore`, `--network=none`). Each peer runs
//! the same program from the host's `/usr` (bound read-only into a tiny
//! rootfs).
//!
//! Checkpoints keep the source running (`--leave-running` everywhere), so
//! every sample checkpoints the same long-lived server into a fresh image
//! directory; each restore brings one image up as a new container/sandbox,
//! which is then removed.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use serde_json::{json, Value};
use warren_runtime::{CheckpointOptions, MainIo, Runtime, SandboxId};

use crate::peers::{edit_config, version, which};
use crate::shutdown::Shutdown;
use crate::stats::{json_num, json_object, print_table, Row, Summary};
use crate::warren::Warren;
use crate::ImageChoice;

/// The server: 25 MiB of touched memory, then `http.server` on loopback.
/// It prints `ready` once it listens.
const SERVER: &str = "import http.server, sys\n\
data = bytearray(b'x' * (25 << 20))\n\
srv = http.server.HTTPServer(('127.0.0.1', 8000), http.server.SimpleHTTPRequestHandler)\n\
print('ready', flush=True)\n\
srv.serve_forever()\n";

/// The same process without the socket (CRIU 4.1.1 cannot dump TCP
/// sockets on kernels that refuse `SO_PASSCRED` on them; see BENCHMARKS.md).
const IDLE: &str = "import time\n\
data = bytearray(b'x' * (25 << 20))\n\
print('ready', flush=True)\n\
time.sleep(1e9)\n";

/// Which program is checkpointed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Program {
    /// `http.server` on 127.0.0.1:8000 with 25 MiB of data.
    Http,
    /// The same 25 MiB Python process, sleeping, no socket.
    Idle,
}

impl Program {
    fn source(self) -> &'static str {
        match self {
            Program::Http => SERVER,
            Program::Idle => IDLE,
        }
    }
}

#[derive(Args, Debug)]
pub struct CheckpointArgs {
    /// Checkpoints (and restores) measured per runtime.
    #[arg(long, default_value_t = 10, value_parser = crate::parse_positive)]
    pub runs: usize,
    /// The CRIU binary for runc (and for Warren unless --warren-criu).
    #[arg(long, default_value = "/usr/local/sbin/criu")]
    pub criu: PathBuf,
    /// Another CRIU build for Warren (see docs/snapshots.md).
    #[arg(long)]
    pub warren_criu: Option<PathBuf>,
    /// Measure only Warren.
    #[arg(long)]
    pub no_peers: bool,
    /// The program checkpointed.
    #[arg(long, value_enum, default_value_t = Program::Http)]
    pub program: Program,
}

/// Results of one runtime: checkpoint and restore samples, or why not.
struct Series {
    name: &'static str,
    checkpoint: Result<Vec<Duration>, String>,
    restore: Result<Vec<Duration>, String>,
    /// Size of one checkpoint image, bytes.
    image_bytes: Option<u64>,
}

pub fn run(args: &CheckpointArgs, data: &Path, shutdown: &Shutdown) -> Result<()> {
    let criu_version = version_line(&args.criu);
    println!("criu: {} ({criu_version})", args.criu.display());
    let mut all = vec![warren(args, data, shutdown)];
    if !args.no_peers {
        let rootfs = data.join("peer-rootfs");
        build_rootfs(&rootfs)?;
        all.push(match which("runc") {
            Some(bin) => oci(args, data, shutdown, Peer::Runc(bin), &rootfs),
            None => missing("runc"),
        });
        all.push(match which("runsc") {
            Some(bin) => oci(args, data, shutdown, Peer::Runsc(bin), &rootfs),
            None => missing("runsc"),
        });
    }

    let mut rows = Vec::new();
    let notes: Vec<(String, String)> = all
        .iter()
        .flat_map(|s| {
            [("checkpoint", &s.checkpoint), ("restore", &s.restore)]
                .into_iter()
                .filter_map(|(w, r)| {
                    r.as_ref()
                        .err()
                        .map(|e| (format!("{} {w}", s.name), e.clone()))
                })
        })
        .collect();
    for s in &all {
        for (what, r) in [("checkpoint", &s.checkpoint), ("restore", &s.restore)] {
            rows.push(Row {
                runtime: s.name,
                what,
                summary: r.as_ref().ok().and_then(|v| Summary::of(v)),
                note: r.as_ref().err().map(|_| "failed (see below)"),
            });
        }
    }
    print_table(&rows);
    for s in &all {
        if let Some(b) = s.image_bytes {
            println!("{} image: {:.1} MB", s.name, b as f64 / 1e6);
        }
    }
    for (what, why) in &notes {
        println!("{what}: {why}");
    }
    let p50 = |s: &Series, restore: bool| {
        let r = if restore { &s.restore } else { &s.checkpoint };
        r.as_ref().ok().and_then(|v| Summary::of(v)).map(|x| x.p50)
    };
    let mut fields: Vec<(String, Value)> = vec![("bench".into(), json!("checkpoint"))];
    for s in &all {
        fields.push((
            format!("{}_checkpoint_p50_ms", s.name),
            json_num(p50(s, false)),
        ));
        fields.push((format!("{}_restore_p50_ms", s.name), json_num(p50(s, true))));
    }
    let w = &all[0];
    for s in all.iter().skip(1) {
        let ratio = |restore| match (p50(w, restore), p50(s, restore)) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        fields.push((format!("checkpoint_vs_{}", s.name), json_num(ratio(false))));
        fields.push((format!("restore_vs_{}", s.name), json_num(ratio(true))));
    }
    println!("{}", json_object(&fields));
    Ok(())
}

fn missing(name: &'static str) -> Series {
    let why = format!("{name} not installed (scripts/install-deps.sh installs it)");
    Series {
        name,
        checkpoint: Err(why.clone()),
        restore: Err(why),
        image_bytes: None,
    }
}

fn version_line(bin: &Path) -> String {
    Command::new(bin)
        .arg("--version")
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_else(|| "not runnable".into())
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => total += e.metadata().map(|m| m.len()).unwrap_or(0),
                _ => {}
            }
        }
    }
    total
}

// ------------------------------------------------------------- warren ----

fn warren(args: &CheckpointArgs, data: &Path, shutdown: &Shutdown) -> Series {
    let mut s = Series {
        name: "warren",
        checkpoint: Err("not run".into()),
        restore: Err("not run".into()),
        image_bytes: None,
    };
    let w = match Warren::open_with(data, ImageChoice::Host, Path::new("/nonexistent"), |c| {
        c.criu_binary = args
            .warren_criu
            .clone()
            .unwrap_or_else(|| args.criu.clone());
    }) {
        Ok(w) => w,
        Err(e) => {
            s.checkpoint = Err(format!("{e:#}"));
            return s;
        }
    };
    let id = SandboxId::new("bench-ckpt-src").expect("valid id");
    let mut spec = w.spec(&id, Some(&["python3", "-c", args.program.source()]));
    spec.checkpointable = true;
    let images = data.join("warren-images");
    let res = (|| -> Result<(Vec<Duration>, Option<u64>, PathBuf)> {
        w.runtime()
            .create(
                &spec,
                MainIo {
                    log_capacity: Some(64 * 1024),
                    ..Default::default()
                },
            )
            .context("create the server sandbox")?;
        let ready = warren_testkit::wait_until(Duration::from_secs(30), || {
            w.runtime()
                .read_log(&id, None)
                .is_ok_and(|l| String::from_utf8_lossy(&l.bytes).contains("ready"))
        });
        ensure!(ready, "the server never printed ready");
        std::fs::create_dir_all(&images)?;
        let mut samples = Vec::new();
        let mut last = None;
        for i in 0..args.runs {
            shutdown.check()?;
            let dir = images.join(format!("c{i}"));
            let t = Instant::now();
            let info = w
                .runtime()
                .checkpoint(&id, &dir, CheckpointOptions::default())
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            samples.push(t.elapsed());
            if i == 0 {
                eprintln!("warren checkpoint phases (µs): {:?}", info.phases);
            }
            if let Some(prev) = last.replace(dir.clone()) {
                let _ = std::fs::remove_dir_all(prev);
            }
        }
        let last = last.context("no checkpoint")?;
        Ok((samples, Some(dir_bytes(&last)), last))
    })();
    match res {
        Ok((samples, bytes, last)) => {
            s.checkpoint = Ok(samples);
            s.image_bytes = bytes;
            let mut restores = Vec::new();
            let mut err = None;
            for i in 0..args.runs {
                let rid = SandboxId::new(format!("bench-ckpt-r{i}")).expect("valid id");
                let mut rspec = w.spec(&rid, None);
                rspec.checkpointable = true;
                let t = Instant::now();
                match w.runtime().restore(&rspec, &last) {
                    Ok(restored) => {
                        restores.push(t.elapsed());
                        if i + 1 == args.runs {
                            eprintln!(
                                "warren restore phases, last run (µs): {:?}",
                                restored.info.phases
                            );
                        }
                    }
                    Err(e) => {
                        err = Some(e.to_string());
                        break;
                    }
                }
                let _ = w.runtime().destroy(&rid);
            }
            s.restore = match err {
                None => Ok(restores),
                Some(e) => Err(e),
            };
        }
        Err(e) => s.checkpoint = Err(format!("{e:#}")),
    }
    let _ = w.runtime().destroy(&id);
    w.runtime().flush_trash();
    let _ = std::fs::remove_dir_all(&images);
    s
}

// -------------------------------------------------------- runc, runsc ----

enum Peer {
    Runc(PathBuf),
    Runsc(PathBuf),
}

impl Peer {
    fn name(&self) -> &'static str {
        match self {
            Peer::Runc(_) => "runc",
            Peer::Runsc(_) => "runsc",
        }
    }

    /// The CLI with its global flags: its own state root; runc's CRIU;
    /// gVisor on ptrace without networking (all that works here, see
    /// HOST-NOTES).
    fn command(&self, state: &Path, criu: &Path) -> Command {
        match self {
            Peer::Runc(bin) => {
                let mut c = Command::new(bin);
                c.arg("--root").arg(state).arg("--criu").arg(criu);
                c
            }
            Peer::Runsc(bin) => {
                let mut c = Command::new(bin);
                c.arg("--root")
                    .arg(state)
                    .arg("--network=none")
                    .arg("--platform=ptrace");
                c
            }
        }
    }
}

/// A rootfs of mount points and merged-/usr symlinks; the bundle binds the
/// host's `/usr` (read-only) and a tmpfs `/tmp` into it.
fn build_rootfs(root: &Path) -> Result<()> {
    for d in ["usr", "proc", "dev", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    for (l, t) in [
        ("bin", "usr/bin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
        ("sbin", "usr/sbin"),
    ] {
        let p = root.join(l);
        if std::fs::symlink_metadata(&p).is_err() {
            std::os::unix::fs::symlink(t, &p)?;
        }
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n")?;
    Ok(())
}

fn write_bundle(peer: &Peer, dir: &Path, rootfs: &Path, program: Program) -> Result<PathBuf> {
    let bundle = dir.join(format!("bundle-{}", peer.name()));
    std::fs::create_dir_all(&bundle)?;
    let runc = which("runc").context("runc writes the base OCI config (runc spec)")?;
    let out = Command::new(runc)
        .arg("spec")
        .arg("--bundle")
        .arg(&bundle)
        .output()?;
    ensure!(out.status.success(), "runc spec failed");
    let base: Value = serde_json::from_slice(&std::fs::read(bundle.join("config.json"))?)?;
    let mut config = edit_config(base, &["/usr/bin/python3", "-c", program.source()], rootfs)?;
    let mounts = config
        .get_mut("mounts")
        .and_then(Value::as_array_mut)
        .context("config.json has no mounts")?;
    mounts.push(
        json!({"destination": "/usr", "type": "bind", "source": "/usr",
        "options": ["rbind", "ro", "nosuid", "nodev"]}),
    );
    mounts.push(
        json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
        "options": ["nosuid", "nodev", "mode=1777"]}),
    );
    std::fs::write(
        bundle.join("config.json"),
        serde_json::to_vec_pretty(&config)?,
    )?;
    Ok(bundle)
}

fn oci(
    args: &CheckpointArgs,
    data: &Path,
    shutdown: &Shutdown,
    peer: Peer,
    rootfs: &Path,
) -> Series {
    let name = peer.name();
    let mut s = Series {
        name,
        checkpoint: Err("not run".into()),
        restore: Err("not run".into()),
        image_bytes: None,
    };
    let state = data.join(format!("state-{name}"));
    let work = data.join(format!("ckpt-{name}"));
    let src = format!("bench-ckpt-{name}");
    let res = (|| -> Result<()> {
        std::fs::create_dir_all(&state)?;
        std::fs::create_dir_all(&work)?;
        let bundle = write_bundle(&peer, data, rootfs, args.program)?;
        eprintln!(
            "{name}: {}",
            version(match &peer {
                Peer::Runc(b) | Peer::Runsc(b) => b,
            })
        );
        // Starts the program as container `id` and waits until it holds its
        // 25 MiB. runc: its stdio is /dev/null (CRIU cannot dump host files
        // as a container's stdio) and readiness is its RSS; runsc: stdout
        // goes to a file that says `ready`.
        let start = |id: &str| -> Result<()> {
            let log = work.join(format!("{id}.out"));
            let stdout = match peer {
                Peer::Runc(_) => Stdio::null(),
                Peer::Runsc(_) => Stdio::from(File::create(&log)?),
            };
            let st = peer
                .command(&state, &args.criu)
                .arg("run")
                .arg("--detach")
                .arg("--bundle")
                .arg(&bundle)
                .arg(id)
                .stdin(Stdio::null())
                .stdout(stdout)
                .stderr(Stdio::null())
                .status()?;
            ensure!(st.success(), "{name} run failed");
            let pid = container_pid(&peer, &state, &args.criu, id);
            let ready = warren_testkit::wait_until(Duration::from_secs(60), || match &peer {
                Peer::Runc(_) => pid.is_some_and(|p| rss_bytes(p) > 25 << 20),
                Peer::Runsc(_) => std::fs::read_to_string(&log).is_ok_and(|t| t.contains("ready")),
            });
            ensure!(ready, "{name}: the program never became ready");
            Ok(())
        };
        start(&src)?;
        let mut samples = Vec::new();
        let mut last = None;
        for i in 0..args.runs {
            shutdown.check()?;
            // runsc (this build) hangs in `checkpoint -leave-running`: each
            // of its samples checkpoints (and so stops) a fresh container.
            let cid = match peer {
                Peer::Runc(_) => src.clone(),
                Peer::Runsc(_) => {
                    let cid = format!("{src}-{i}");
                    start(&cid)?;
                    cid
                }
            };
            let img = work.join(format!("img{i}"));
            let mut cmd = peer.command(&state, &args.criu);
            cmd.arg("checkpoint");
            if let Peer::Runc(_) = peer {
                cmd.arg("--leave-running");
            }
            let t = Instant::now();
            let out = cmd
                .arg("--image-path")
                .arg(&img)
                .arg("--work-path")
                .arg(work.join(format!("work{i}")))
                .arg(&cid)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                // A file, not a pipe: a sandbox left running would hold a
                // pipe's write end open.
                .stderr(File::create(work.join("checkpoint.err"))?)
                .status()?;
            let took = t.elapsed();
            ensure!(
                out.success(),
                "{name} checkpoint failed: {} {}",
                std::fs::read_to_string(work.join("checkpoint.err"))
                    .unwrap_or_default()
                    .trim(),
                log_errors(&work.join(format!("work{i}")))
            );
            samples.push(took);
            if let Peer::Runsc(_) = peer {
                delete(&peer, &state, &args.criu, &cid);
            }
            if let Some(prev) = last.replace(img) {
                let _ = std::fs::remove_dir_all(prev);
            }
        }
        let img = last.context("no checkpoint")?;
        s.image_bytes = Some(dir_bytes(&img));
        s.checkpoint = Ok(std::mem::take(&mut samples));
        // runsc restores only into a container created from the bundle;
        // both are driven the same way: `restore --detach` under a new id.
        let mut restores = Vec::new();
        for i in 0..args.runs {
            shutdown.check()?;
            let id = format!("bench-rst-{name}-{i}");
            let t = Instant::now();
            let out = peer
                .command(&state, &args.criu)
                .arg("restore")
                .arg(match peer {
                    Peer::Runc(_) => "--detach",
                    Peer::Runsc(_) => "-detach",
                })
                .arg("--image-path")
                .arg(&img)
                .arg("--work-path")
                .arg(work.join(format!("rwork{i}")))
                .arg("--bundle")
                .arg(&bundle)
                .arg(&id)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(File::create(work.join("restore.err"))?)
                .status()?;
            let took = t.elapsed();
            delete(&peer, &state, &args.criu, &id);
            if !out.success() {
                bail!(
                    "{name} restore failed: {} {}",
                    std::fs::read_to_string(work.join("restore.err"))
                        .unwrap_or_default()
                        .trim(),
                    log_errors(&work.join(format!("rwork{i}")))
                );
            }
            restores.push(took);
        }
        s.restore = Ok(restores);
        Ok(())
    })();
    if let Err(e) = res {
        let e = format!("{e:#}");
        if s.checkpoint.is_err() {
            s.checkpoint = Err(e.clone());
        }
        if s.restore.is_err() {
            s.restore = Err(e);
        }
    }
    delete(&peer, &state, &args.criu, &src);
    let _ = std::fs::remove_dir_all(&work);
    s
}

/// The container's init pid (`state`), as the host sees it.
fn container_pid(peer: &Peer, state: &Path, criu: &Path, id: &str) -> Option<i32> {
    let out = peer
        .command(state, criu)
        .arg("state")
        .arg(id)
        .output()
        .ok()?;
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v.get("pid")?.as_i64().map(|p| p as i32)
}

/// Resident memory of `pid`, bytes (0 if unknown).
fn rss_bytes(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// CRIU's error lines from the logs in `dir` (bounded).
fn log_errors(dir: &Path) -> String {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().extension().is_some_and(|x| x == "log") {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            out.extend(
                text.lines()
                    .filter(|l| l.contains("Error"))
                    .take(8)
                    .map(str::to_string),
            );
        }
    }
    out.join("\n")
}

fn delete(peer: &Peer, state: &Path, criu: &Path, id: &str) {
    let _ = peer
        .command(state, criu)
        .arg("delete")
        .arg("--force")
        .arg(id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}
