//! `warren run`: create a sandbox, stream the command's output, exit with
//! its code, remove the sandbox.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use warren_runtime::{Limits, MainIo, Runtime, SandboxExit, SandboxId, SandboxSpec};

use crate::local::Local;

#[derive(Args)]
pub struct RunArgs {
    /// Image to run (default: the built-in `host` image).
    #[arg(long, default_value = "host")]
    image: String,
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
    /// Working directory inside the sandbox.
    #[arg(long, default_value = "/")]
    workdir: String,
    /// Run in this process without a server (the only mode until
    /// `warren serve` exists).
    #[arg(long, default_value_t = true)]
    local: bool,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

pub fn run(data_dir: &Path, a: RunArgs) -> Result<i32> {
    if !a.local {
        bail!("only --local is available until the server exists");
    }
    let local = Local::open(data_dir)?;
    let (rootfs, config) = local.rootfs(&a.image)?;
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
    spec.workdir = a.workdir.clone();
    spec.limits = Limits {
        cpu_millis: a.cpu.map(|c| (c * 1000.0).round() as u64),
        memory_bytes: a.memory.map(|m| m << 20),
        pids: None,
    };
    // The command writes straight into our stdout and stderr.
    let io = MainIo {
        stdin: None,
        stdout: Some(dup_std(1)?),
        stderr: Some(dup_std(2)?),
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
