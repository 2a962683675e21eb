//! `warren-bench`: measures Warren sandboxes on this host, side by side with
//! peer runtimes (crun, runc, bubblewrap) that run the very same rootfs.
//!
//! Subcommands (see `docs/benchmarks.md` for the method):
//! - `create`: time to first byte of `echo hi`, and the full create → exit →
//!   destroy cycle, per runtime.
//! - `exec`: round trip of running `true` in an already running sandbox.
//! - `density`: many idle sandboxes; host memory per sandbox and the first
//!   kernel or runtime limit that would stop a larger count.
//! - `pull`: MB/s of an image pull from a loopback registry vs `skopeo copy`.
//! - `push`: MB/s of an image push to a loopback registry vs `skopeo copy`.
//! - `api-create`, `api-exec`, `api-throughput`: the same through the HTTP
//!   API of a real `warren serve` child process, next to the in-process
//!   runtime, so the API's overhead can be stated.
//! - `api-fairness`: API exec latency in one sandbox, quiet and while
//!   another sandbox spins on every CPU.
//! - `api-memory`: pause/resume, auto-resume, fork and restore from a
//!   memory snapshot through the API, each until the first byte through
//!   the sandbox's tunnel.
//!
//! What it must not do: leave sandboxes, containers, mounts or its data
//! directory behind. Every sandbox or container it creates is owned by a guard
//! that destroys it on drop, SIGINT/SIGTERM only set a flag that the loops
//! check, and the data directory is removed only when no mount remains under it.
//!
//! Output: human-readable text, then one JSON object as the LAST line of
//! stdout, for scripts. Progress and notes go to stderr.

mod api;
mod checkpoint;
mod create;
mod datadir;
mod density;
mod exec;
mod hostns;
mod peers;
mod pull;
mod push;
mod relay;
mod relay_child;
mod rootfs;
mod shutdown;
mod snapshot;
mod stats;
mod sysinfo;
mod timing;
mod warren;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand, ValueEnum};

use crate::datadir::DataDir;
use crate::shutdown::Shutdown;

#[derive(Parser)]
#[command(
    name = "warren-bench",
    about = "Benchmarks Warren sandboxes against crun, runc and bubblewrap",
    long_about = None
)]
struct Cli {
    /// Directory for the rootfs, OCI bundles, images and runtime state.
    /// Default: a fresh directory under /var/tmp, removed afterwards. A
    /// directory given here is kept.
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Time to first output byte and full lifecycle of `echo hi`.
    Create(create::CreateArgs),
    /// Round trip of exec'ing `true` into a running sandbox.
    Exec(exec::ExecArgs),
    /// Memory per idle sandbox, and the first limit on their number.
    Density(density::DensityArgs),
    /// Create → terminated of `echo hi` through the HTTP API vs the runtime.
    ApiCreate(api::create::ApiCreateArgs),
    /// Round trip of exec'ing `true` through the HTTP API vs the runtime.
    ApiExec(api::exec::ApiExecArgs),
    /// Sandboxes created per second by concurrent API clients.
    ApiThroughput(api::throughput::ApiThroughputArgs),
    /// API exec latency while another sandbox pins every CPU.
    ApiFairness(api::fairness::ApiFairnessArgs),
    /// Memory snapshots through the API: pause/resume, auto-resume, fork
    /// and restore, each until the first byte through the tunnel.
    ApiMemory(api::memory::ApiMemoryArgs),
    /// MB/s of pulling a ~100 MB image from a loopback registry vs skopeo.
    Pull(pull::PullArgs),
    /// MB/s of pushing a ~100 MB image to a loopback registry vs skopeo.
    Push(push::PushArgs),
    /// The file API: 4 KiB write/read latency, 1 GiB throughput vs `cat`.
    ApiFiles(api::files::ApiFilesArgs),
    /// The relay: TCP throughput, HTTP latency and idle memory vs direct, socat, nginx.
    Relay(relay::RelayArgs),
    /// Filesystem snapshot time: 10 files and 1,000 files / 100 MB changed.
    Snapshot(snapshot::SnapshotArgs),
    /// Memory snapshots: checkpoint and restore of an idle Python HTTP
    /// server, against runc and runsc.
    Checkpoint(checkpoint::CheckpointArgs),
    /// (internal) a relay or node link process for `relay`.
    #[command(hide = true)]
    RelayChild(relay_child::ChildArgs),
}

/// Which image Warren sandboxes use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ImageChoice {
    /// The busybox rootfs the bench generates (the one the peers use too),
    /// imported into a Warren image store.
    Busybox,
    /// Warren's built-in host image (the host's /usr etc., bound read-only).
    Host,
    /// The busybox rootfs as a three-layer OCI image, pushed to a loopback
    /// `docker-registry` and pulled through Warren's registry client: the
    /// path a user's image takes.
    Pulled,
}

impl ImageChoice {
    pub fn name(self) -> &'static str {
        match self {
            ImageChoice::Busybox => "busybox",
            ImageChoice::Host => "host",
            ImageChoice::Pulled => "pulled",
        }
    }
}

/// clap parser for counts that must be at least 1.
pub fn parse_positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("expected a positive integer, got '{s}'")),
    }
}

fn main() -> ExitCode {
    // Must stay first: when this executable runs as a sandbox's PID 1 this
    // call runs init and never returns.
    warren_init::run_if_init();

    let cli = Cli::parse();
    // Library logs (RUST_LOG=warren_runtime=debug, ...) go to stderr; the
    // default shows warnings only, so they do not disturb timings.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("warren-bench: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    if let Command::RelayChild(args) = &cli.command {
        return relay_child::run(args);
    }
    if !nix::unistd::geteuid().is_root() {
        bail!("warren-bench must run as root (bench/run uses sudo when needed)");
    }

    // The crun workaround enters a new mount namespace, which only moves the
    // calling thread: it must happen before anything starts a thread.
    let wants_crun = match &cli.command {
        Command::Create(a) => a.peers.wants_crun(),
        Command::Exec(a) => a.peers.wants_crun(),
        Command::Density(_)
        | Command::ApiCreate(_)
        | Command::ApiExec(_)
        | Command::ApiThroughput(_)
        | Command::ApiFairness(_)
        | Command::ApiMemory(_)
        | Command::Pull(_)
        | Command::Push(_)
        | Command::ApiFiles(_)
        | Command::Relay(_)
        | Command::Checkpoint(_)
        | Command::Snapshot(_)
        | Command::RelayChild(_) => false,
    };
    if wants_crun {
        hostns::prepare_for_crun()?;
    }

    let shutdown = Shutdown::install()?;
    let data = DataDir::new(cli.data_dir)?;
    eprintln!("data dir: {}", data.path().display());

    match cli.command {
        Command::Create(args) => create::run(&args, data.path(), &shutdown),
        Command::Exec(args) => exec::run(&args, data.path(), &shutdown),
        Command::Density(args) => density::run(&args, data.path(), &shutdown),
        Command::ApiCreate(args) => api::create::run(&args, data.path(), &shutdown),
        Command::ApiExec(args) => api::exec::run(&args, data.path(), &shutdown),
        Command::ApiThroughput(args) => api::throughput::run(&args, data.path(), &shutdown),
        Command::ApiFairness(args) => api::fairness::run(&args, data.path(), &shutdown),
        Command::ApiMemory(args) => api::memory::run(&args, data.path(), &shutdown),
        Command::ApiFiles(args) => api::files::run(&args, data.path(), &shutdown),
        Command::Pull(args) => pull::run(&args, data.path(), &shutdown),
        Command::Push(args) => push::run(&args, data.path(), &shutdown),
        Command::Relay(args) => relay::run(&args, data.path(), &shutdown),
        Command::Checkpoint(args) => checkpoint::run(&args, data.path(), &shutdown),
        Command::Snapshot(args) => snapshot::run(&args, data.path(), &shutdown),
        Command::RelayChild(_) => unreachable!("handled above"),
    }
    // `data` drops here, after every sandbox has been destroyed.
}
