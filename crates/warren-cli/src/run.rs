//! `warren run`: run one command in a fresh sandbox and exit with its code.
//!
//! By default through a Warren server (`WARREN_URL`): create an idle sandbox
//! with the given limits, run the command over the streaming exec (output
//! live; SIGINT, SIGTERM, SIGHUP and SIGQUIT forwarded to it), then
//! terminate the sandbox on every exit path, Ctrl-C included (unless
//! `--keep`). With `--local`, in this process with the native runtime and
//! the output streamed.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use warren_runtime::{Limits, MainIo, Runtime, SandboxExit, SandboxId, SandboxSpec};

use warren_proto::api::{CreateSandboxRequest, StreamExecStart, MAX_TIMEOUT_SECS};

use crate::local::Local;
use crate::remote::{self, block_on, parse_pairs};
use crate::stream::{self, Attach, Signals, SIGWINCH};

/// Extra lifetime given to the sandbox over the command's timeout, so the
/// exec's own timeout (exit 124) fires before the sandbox's.
const SANDBOX_GRACE_SECS: u64 = 30;

#[derive(Args)]
pub struct RunArgs {
    /// Image to run (default: the server's default, or `host` with --local).
    #[arg(long)]
    image: Option<String>,
    /// Kill the sandbox after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Memory limit in MiB (swap is off).
    #[arg(long)]
    memory: Option<u64>,
    /// CPU limit in cores (fractions allowed).
    #[arg(long)]
    cpu: Option<f64>,
    /// Environment variable, KEY=VALUE (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Working directory inside the sandbox (default: the image's, or `/`).
    #[arg(long)]
    workdir: Option<String>,
    /// User to run as: name, uid, uid:gid or name:group (default: the
    /// image's user, else root).
    #[arg(long, conflicts_with = "local")]
    user: Option<String>,
    /// Run in this process with the native runtime instead of a server
    /// (needs root and the data directory).
    #[arg(long)]
    local: bool,
    /// Leave the sandbox running afterwards (server mode); its id is printed
    /// on stderr.
    #[arg(long, conflicts_with = "local")]
    keep: bool,
    /// Forward our stdin to the command (server mode).
    #[arg(short, long, conflicts_with = "local")]
    interactive: bool,
    /// Run under a pseudo-terminal (server mode); see `sandbox exec -t`.
    #[arg(short, long, conflicts_with = "local")]
    tty: bool,
    /// Ports, egress policy and readiness probe (server mode); the tunnel
    /// URLs are printed on stderr before the command starts.
    #[command(flatten)]
    network: crate::tunnels::NetworkArgs,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

pub fn run(data_dir: &Path, a: RunArgs) -> Result<i32> {
    if a.local && !a.network.is_empty() {
        bail!("--local sandboxes have no network options (no relay, only lo); drop --local or the network flags");
    }
    if a.local {
        run_local(data_dir, a)
    } else {
        run_remote(data_dir, a)
    }
}

fn run_remote(data_dir: &Path, a: RunArgs) -> Result<i32> {
    let c = remote::client(data_dir)?;
    let env = parse_pairs("env", &a.env)?;
    block_on(async move {
        // Handlers first: from here on a Ctrl-C can no longer kill us
        // between creating the sandbox and terminating it.
        let mut signals = Signals::install()?;
        let mut req = CreateSandboxRequest {
            image: a.image,
            command: None,
            env: env.clone(),
            workdir: a.workdir,
            timeout_secs: Some((a.timeout + SANDBOX_GRACE_SECS).min(MAX_TIMEOUT_SECS)),
            cpu: a.cpu,
            memory_mib: a.memory,
            user: a.user.clone(),
            ..Default::default()
        };
        a.network.apply(&mut req);
        let create = c.create_sandbox(&req);
        tokio::pin!(create);
        let mut interrupted = None;
        let created = loop {
            tokio::select! {
                r = &mut create => break r,
                s = signals.recv() => {
                    // Finish creating (bounded by the request timeout) so
                    // the sandbox can be cleaned up, then stop.
                    if s != SIGWINCH {
                        interrupted.get_or_insert(s);
                    }
                }
            }
        };
        let sb = created.context("creating the sandbox")?;
        if interrupted.is_none() && a.network.exposes_ports() {
            crate::sandbox::show_urls(&c, &sb.id).await;
        }
        let result = match interrupted {
            Some(sig) => Ok(stream::signal_exit(sig)),
            None => {
                let start = StreamExecStart {
                    command: a.command,
                    env,
                    timeout_secs: Some(a.timeout),
                    ..Default::default()
                };
                let attach = Attach {
                    stdin: a.interactive,
                    tty: a.tty,
                };
                stream::exec(&c, &sb.id, start, attach, &mut signals)
                    .await
                    .context("running the command")
            }
        };
        if a.keep {
            eprintln!("warren: kept sandbox {}", sb.id);
        } else if let Err(e) = c.terminate_sandbox(&sb.id).await {
            eprintln!(
                "warren: could not terminate sandbox {}: {e} ({}); it ends by its timeout",
                sb.id,
                e.code()
            );
        }
        result
    })?
}

fn run_local(data_dir: &Path, a: RunArgs) -> Result<i32> {
    let local = Local::open(data_dir)?;
    let (rootfs, config) = local.rootfs(a.image.as_deref().unwrap_or("host"))?;
    let id = SandboxId::new(format!(
        "run-{}-{}",
        std::process::id(),
        nanos() % 1_000_000
    ))?;
    let mut spec = SandboxSpec::new(id.clone(), rootfs);
    spec.command = Some(a.command.clone());
    spec.env = config.env.clone();
    for kv in &a.env {
        if !kv.contains('=') {
            bail!("--env {kv:?}: expected KEY=VALUE");
        }
        let key = kv.split('=').next().unwrap_or_default();
        spec.env.retain(|e| e.split('=').next() != Some(key));
        spec.env.push(kv.clone());
    }
    spec.workdir = a.workdir.clone().unwrap_or_else(|| "/".to_string());
    spec.limits = Limits {
        cpu_millis: a.cpu.map(|c| (c * 1000.0).round() as u64),
        memory_bytes: a.memory.map(|m| m << 20),
        pids: None,
        disk_bytes: None,
    };
    // The command writes straight into our stdout and stderr.
    let io = MainIo {
        stdin: None,
        stdout: Some(dup_std(1)?),
        stderr: Some(dup_std(2)?),
        log_capacity: None,
    };
    local.rt.create(&spec, io).context("creating the sandbox")?;
    let exit = local.rt.wait(&id, Some(Duration::from_secs(a.timeout)));
    let code = match exit {
        Ok(Some(SandboxExit::Exited { code })) => code,
        Ok(Some(SandboxExit::Signaled { signal })) => {
            eprintln!("warren: command killed by signal {signal}");
            128 + signal
        }
        Ok(Some(SandboxExit::OomKilled)) => {
            eprintln!(
                "warren: command killed: out of memory (limit {} MiB)",
                a.memory.unwrap_or(0)
            );
            137
        }
        Ok(Some(other)) => {
            eprintln!("warren: sandbox ended: {other:?}");
            1
        }
        Ok(None) => {
            eprintln!("warren: timed out after {}s", a.timeout);
            124
        }
        Err(e) => {
            let _ = local.rt.destroy(&id);
            return Err(e).context("waiting for the sandbox");
        }
    };
    local.rt.destroy(&id).context("removing the sandbox")?;
    local.rt.flush_trash();
    Ok(code)
}

fn dup_std(fd: i32) -> Result<std::os::fd::OwnedFd> {
    let borrowed = match fd {
        1 => std::io::stdout().lock().try_clone_fd(),
        _ => std::io::stderr().lock().try_clone_fd(),
    };
    borrowed.context("duplicating stdio")
}

trait CloneFd {
    fn try_clone_fd(&self) -> std::io::Result<std::os::fd::OwnedFd>;
}

impl<T: std::os::fd::AsFd> CloneFd for T {
    fn try_clone_fd(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        self.as_fd().try_clone_to_owned()
    }
}

fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}
