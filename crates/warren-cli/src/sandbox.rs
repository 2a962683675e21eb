//! `warren sandbox`: create, list, inspect, exec in, terminate and wait for
//! sandboxes on a Warren server.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use warren_client::{state_str, Client, ListSandboxes};
use warren_proto::api::{CreateSandboxRequest, ExecRequest, ExecResult, Sandbox, SandboxState};

use crate::remote::{self, block_on, describe_termination, outln, parse_pairs};

/// Exit code of a command that timed out (as `timeout(1)` uses).
pub const TIMED_OUT_EXIT: i32 = 124;

#[derive(Subcommand)]
pub enum SandboxCommand {
    /// Create a sandbox; prints its id.
    Create(CreateArgs),
    /// List sandboxes.
    Ls(LsArgs),
    /// Show one sandbox.
    Get {
        id: String,
        /// Print the sandbox as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run a command in a sandbox; prints its output and exits with its code.
    Exec(ExecArgs),
    /// Terminate a sandbox.
    Terminate { id: String },
    /// Wait for a sandbox to end; prints why and exits with its exit code
    /// (1 when it did not end by exiting, 124 on timeout).
    Wait {
        id: String,
        /// Give up after this many seconds (default: wait forever).
        #[arg(long)]
        timeout: Option<u64>,
    },
}

#[derive(Args)]
pub struct CreateArgs {
    /// Image reference (default: the server's default image).
    #[arg(long)]
    image: Option<String>,
    /// Lifetime in seconds (server default: 300).
    #[arg(long)]
    timeout: Option<u64>,
    /// End the sandbox after this many seconds without activity.
    #[arg(long)]
    idle_timeout: Option<u64>,
    /// Memory limit in MiB.
    #[arg(long)]
    memory: Option<u64>,
    /// CPU limit in cores (fractions allowed).
    #[arg(long)]
    cpu: Option<f64>,
    /// Environment variable, KEY=VALUE (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Working directory inside the sandbox.
    #[arg(long)]
    workdir: Option<String>,
    /// Name, unique among the workspace's live sandboxes.
    #[arg(long)]
    name: Option<String>,
    /// Tag, KEY=VALUE (repeatable).
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    tag: Vec<String>,
    /// Main command; without one the sandbox idles and is used via exec.
    #[arg(last = true)]
    command: Vec<String>,
}

#[derive(Args)]
pub struct LsArgs {
    /// Only sandboxes with this tag, KEY=VALUE (repeatable; all must match).
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    tag: Vec<String>,
    /// Only sandboxes in this state.
    #[arg(long, value_enum)]
    state: Option<StateArg>,
    /// Print the sandboxes as a JSON array.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum StateArg {
    Creating,
    Running,
    Terminating,
    Terminated,
}

impl From<StateArg> for SandboxState {
    fn from(s: StateArg) -> Self {
        match s {
            StateArg::Creating => SandboxState::Creating,
            StateArg::Running => SandboxState::Running,
            StateArg::Terminating => SandboxState::Terminating,
            StateArg::Terminated => SandboxState::Terminated,
        }
    }
}

#[derive(Args)]
pub struct ExecArgs {
    id: String,
    /// Kill the command after this many seconds (exit 124).
    #[arg(long)]
    timeout: Option<u64>,
    /// Environment variable, KEY=VALUE (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Working directory (default: the sandbox's).
    #[arg(long)]
    workdir: Option<String>,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

pub fn run(data_dir: &Path, cmd: SandboxCommand) -> Result<i32> {
    let client = remote::client(data_dir)?;
    block_on(dispatch(&client, cmd))?
}

async fn dispatch(c: &Client, cmd: SandboxCommand) -> Result<i32> {
    match cmd {
        SandboxCommand::Create(a) => {
            let req = CreateSandboxRequest {
                image: a.image,
                command: (!a.command.is_empty()).then_some(a.command),
                env: parse_pairs("env", &a.env)?,
                workdir: a.workdir,
                timeout_secs: a.timeout,
                idle_timeout_secs: a.idle_timeout,
                cpu: a.cpu,
                memory_mib: a.memory,
                disk_mib: None,
                name: a.name,
                tags: parse_pairs("tag", &a.tag)?,
            };
            let sb = c.create_sandbox(&req).await?;
            outln!("{}", sb.id)?;
            Ok(0)
        }
        SandboxCommand::Ls(a) => {
            let filter = ListSandboxes {
                tags: parse_pairs("tag", &a.tag)?,
                state: a.state.map(SandboxState::from),
                ..Default::default()
            };
            let all = c.list_all_sandboxes(&filter).await?;
            if a.json {
                print_json(&all)?;
            } else {
                print_table(&all)?;
            }
            Ok(0)
        }
        SandboxCommand::Get { id, json } => {
            let sb = c.get_sandbox(&id).await?;
            if json {
                print_json(&sb)?;
            } else {
                print_details(&sb)?;
            }
            Ok(0)
        }
        SandboxCommand::Exec(a) => {
            let req = ExecRequest {
                command: a.command,
                env: parse_pairs("env", &a.env)?,
                workdir: a.workdir,
                timeout_secs: a.timeout,
                stdin: None,
            };
            let res = c.exec(&a.id, &req).await?;
            report_exec(&res, a.timeout)
        }
        SandboxCommand::Terminate { id } => {
            c.terminate_sandbox(&id).await?;
            Ok(0)
        }
        SandboxCommand::Wait { id, timeout } => wait(c, &id, timeout).await,
    }
}

/// Writes an exec's output to ours and returns the exit code to use.
pub fn report_exec(res: &ExecResult, timeout: Option<u64>) -> Result<i32> {
    std::io::stdout()
        .write_all(res.stdout.as_bytes())
        .and_then(|()| std::io::stdout().flush())
        .context("writing stdout")?;
    std::io::stderr()
        .write_all(res.stderr.as_bytes())
        .context("writing stderr")?;
    if res.stdout_truncated {
        eprintln!("warren: the command's stdout was truncated by the server");
    }
    if res.stderr_truncated {
        eprintln!("warren: the command's stderr was truncated by the server");
    }
    if res.timed_out {
        match timeout {
            Some(t) => eprintln!("warren: the command timed out after {t}s and was killed"),
            None => eprintln!("warren: the command timed out and was killed"),
        }
        return Ok(TIMED_OUT_EXIT);
    }
    if res.oom_killed {
        eprintln!("warren: the command was killed: out of memory");
    } else if let Some(sig) = res.signal {
        eprintln!("warren: the command was killed by signal {sig}");
    }
    Ok(res.exit_code)
}

/// Long-polls until the sandbox has ended or `timeout` seconds passed.
async fn wait(c: &Client, id: &str, timeout: Option<u64>) -> Result<i32> {
    let deadline = timeout.map(|t| Instant::now() + Duration::from_secs(t));
    loop {
        let chunk = match deadline {
            Some(d) => d.saturating_duration_since(Instant::now()),
            None => Duration::from_secs(warren_client::MAX_WAIT_SECS),
        };
        let sb = c.wait_sandbox(id, chunk).await?;
        if sb.state == SandboxState::Terminated {
            match &sb.termination {
                Some(t) => outln!("{}", describe_termination(t))?,
                None => outln!("terminated")?,
            }
            return Ok(remote::exit_code_of(&sb));
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            eprintln!(
                "warren: sandbox {id} is still {} after {}s",
                state_str(sb.state),
                timeout.unwrap_or(0)
            );
            return Ok(TIMED_OUT_EXIT);
        }
    }
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    let s = serde_json::to_string_pretty(v).context("encoding JSON")?;
    outln!("{s}")?;
    Ok(())
}

fn print_table(all: &[Sandbox]) -> std::io::Result<()> {
    let rows: Vec<[String; 5]> = all
        .iter()
        .map(|s| {
            [
                s.id.clone(),
                s.name.clone().unwrap_or_else(|| "-".into()),
                state_str(s.state).to_string(),
                s.termination
                    .as_ref()
                    .map(|t| remote::reason_str(t.reason).to_string())
                    .unwrap_or_else(|| "-".into()),
                s.created_at.clone(),
            ]
        })
        .collect();
    let header = ["ID", "NAME", "STATE", "REASON", "CREATED"];
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: [&str; 5]| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        outln!("{out}")
    };
    line(header)?;
    for r in &rows {
        line([&r[0], &r[1], &r[2], &r[3], &r[4]])?;
    }
    Ok(())
}

fn print_details(s: &Sandbox) -> std::io::Result<()> {
    outln!("id:        {}", s.id)?;
    outln!("name:      {}", s.name.as_deref().unwrap_or("-"))?;
    outln!("image:     {}", s.image)?;
    if let Some(cmd) = &s.command {
        outln!("command:   {}", cmd.join(" "))?;
    }
    outln!("state:     {}", state_str(s.state))?;
    if let Some(t) = &s.termination {
        outln!("ended:     {}", describe_termination(t))?;
    }
    outln!("workdir:   {}", s.workdir)?;
    outln!("timeout:   {}s", s.timeout_secs)?;
    if let Some(t) = s.idle_timeout_secs {
        outln!("idle:      {t}s")?;
    }
    if let Some(c) = s.cpu {
        outln!("cpu:       {c}")?;
    }
    if let Some(m) = s.memory_mib {
        outln!("memory:    {m} MiB")?;
    }
    for (k, v) in &s.tags {
        outln!("tag:       {k}={v}")?;
    }
    outln!("created:   {}", s.created_at)?;
    if let Some(t) = &s.started_at {
        outln!("started:   {t}")?;
    }
    if let Some(t) = &s.ended_at {
        outln!("ended at:  {t}")?;
    }
    Ok(())
}
