//! `warren sandbox`: create, list, inspect, exec in, terminate and wait for
//! sandboxes on a Warren server.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use warren_client::{state_str, Client, ListSandboxes};
use warren_proto::api::{CreateSandboxRequest, Sandbox, SandboxState, StreamExecStart};

use crate::remote::{self, block_on, describe_termination, outln, parse_pairs};
use crate::stream::{self, Attach, Signals};
use crate::tunnels::{self, NetworkArgs};

/// Exit code of a command that timed out (as `timeout(1)` uses).
pub const TIMED_OUT_EXIT: i32 = 124;

#[derive(Subcommand)]
pub enum SandboxCommand {
    /// Create a sandbox; prints its id.
    Create(Box<CreateArgs>),
    /// List sandboxes.
    Ls(LsArgs),
    /// Show one sandbox.
    Get {
        id: String,
        /// Print the sandbox as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run a command in a sandbox, streaming its output live; exits with its
    /// code (124 on --timeout).
    Exec(ExecArgs),
    /// Open an interactive login shell in a sandbox (bash if present, else
    /// sh) under a terminal.
    Shell { id: String },
    /// Work with a sandbox's files (ls, cat, put, stat, mkdir, rm, mv, watch).
    #[command(subcommand)]
    Files(crate::files::FilesCommand),
    /// Copy files or directories in or out: `cp LOCAL ID:/PATH`,
    /// `cp ID:/PATH LOCAL` (progress on a terminal).
    Cp { src: String, dst: String },
    /// List a sandbox's background execs (`exec --detach`).
    Ps {
        id: String,
        /// Print them as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Attach to a background exec: its buffered output, then live output;
    /// Ctrl-C three times detaches (the exec keeps running).
    Attach {
        id: String,
        exec_id: String,
        /// Forward our stdin to it.
        #[arg(short, long)]
        interactive: bool,
    },
    /// Signal a background exec (default SIGKILL, which also forgets it).
    Kill {
        id: String,
        exec_id: String,
        /// Signal number to send instead of killing (e.g. 15).
        #[arg(long)]
        signal: Option<i32>,
    },
    /// Terminate a sandbox.
    Terminate { id: String },
    /// Print the main command's output (the newest 1 MiB is kept).
    Logs {
        id: String,
        /// Only the last N bytes.
        #[arg(long)]
        tail: Option<u64>,
    },
    /// Wait for a sandbox to end; prints why and exits with its exit code
    /// (1 when it did not end by exiting, 124 on timeout).
    Wait {
        id: String,
        /// Give up after this many seconds (default: wait forever).
        #[arg(long)]
        timeout: Option<u64>,
    },
    /// Show a sandbox's tunnels (URL or endpoint per exposed port) and the
    /// CA that signs the relay's certificate.
    Tunnels(crate::tunnels::TunnelsArgs),
    /// Mint a connect token for an exposed HTTPS/H2 port; prints a URL that
    /// carries it, and the token (shown only once).
    ConnectToken(crate::tunnels::ConnectTokenArgs),
    /// List a sandbox's connect tokens (ids and expiry, never the secrets).
    ConnectTokens {
        id: String,
        /// Print them as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a connect token.
    RevokeToken { id: String, token_id: String },
    /// Wait until a sandbox's readiness probe passes; exits 0 when ready,
    /// 124 on timeout.
    WaitReady {
        id: String,
        /// Give up after this many seconds (default: wait as long as the
        /// sandbox lives).
        #[arg(long)]
        timeout: Option<u64>,
    },
    /// Show a sandbox's network, or change its egress policy while it runs.
    Network(crate::tunnels::NetworkCmdArgs),
    /// Snapshot a sandbox's filesystem into a new image (prints its id);
    /// the sandbox is frozen briefly and keeps running.
    Snapshot(crate::snapshot::SnapshotArgs),
    /// Snapshot one directory of a sandbox into a single-layer image.
    SnapshotDir(crate::snapshot::SnapshotDirArgs),
    /// Mount an image read-only into a running sandbox.
    Mount(crate::snapshot::MountArgs),
    /// Checkpoint a running sandbox (processes, memory, files) into a
    /// memory snapshot; prints its id. The sandbox keeps running.
    SnapshotMemory(crate::memory::SnapshotMemoryArgs),
    /// Pause a sandbox: checkpoint it and release its memory and CPU
    /// (same id; no timeout runs while paused).
    Pause { id: String },
    /// Resume a paused sandbox under the same id (and tunnel URLs).
    Resume { id: String },
    /// Fork a running sandbox into N running copies; prints their ids.
    Fork(crate::memory::ForkArgs),
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
    /// User of the main command and default for execs: name, uid, uid:gid
    /// or name:group (default: the image's user, else root).
    #[arg(long)]
    user: Option<String>,
    /// Without a command, run the image's Entrypoint + Cmd instead of idling.
    #[arg(long)]
    image_command: bool,
    /// Name, unique among the workspace's live sandboxes.
    #[arg(long)]
    name: Option<String>,
    /// Tag, KEY=VALUE (repeatable).
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    tag: Vec<String>,
    /// Mount an image read-only, PATH=IMAGE (repeatable).
    #[arg(long = "mount", value_name = "PATH=IMAGE")]
    mount: Vec<String>,
    /// Create it checkpointable (snapshot-memory, fork, pause).
    #[arg(long)]
    memory_snapshots: bool,
    /// While paused, resume on the next exec, file operation or tunnel
    /// connection (implies --memory-snapshots).
    #[arg(long)]
    auto_resume: bool,
    /// What --idle-timeout does: terminate (default) or pause (implies
    /// --memory-snapshots).
    #[arg(long, value_enum, value_name = "ACTION")]
    on_idle: Option<OnIdleArg>,
    /// Restore this memory snapshot as the new sandbox (no image, command,
    /// env, workdir or user: the snapshot fixes them).
    #[arg(long, value_name = "MSNAP_ID")]
    from_memory_snapshot: Option<String>,
    #[command(flatten)]
    network: NetworkArgs,
    /// After printing the id, wait until the sandbox is ready (its
    /// readiness probe passed), at most SECS (default 60); exits 124 if it
    /// is not ready by then.
    #[arg(long, value_name = "SECS", num_args = 0..=1, require_equals = true,
        default_missing_value = "60")]
    wait_ready: Option<u64>,
    /// Main command; without one the sandbox idles and is used via exec.
    #[arg(last = true)]
    command: Vec<String>,
}

/// `--on-idle`.
#[derive(Clone, Copy, ValueEnum)]
pub enum OnIdleArg {
    Terminate,
    Pause,
}

impl CreateArgs {
    /// The create request these flags describe.
    pub fn request(&self) -> Result<CreateSandboxRequest> {
        let mut req = CreateSandboxRequest {
            image: self.image.clone(),
            command: (!self.command.is_empty()).then(|| self.command.clone()),
            env: parse_pairs("env", &self.env)?,
            workdir: self.workdir.clone(),
            timeout_secs: self.timeout,
            idle_timeout_secs: self.idle_timeout,
            cpu: self.cpu,
            memory_mib: self.memory,
            disk_mib: None,
            name: self.name.clone(),
            tags: parse_pairs("tag", &self.tag)?,
            user: self.user.clone(),
            use_image_command: self.image_command,
            mounts: crate::snapshot::parse_mounts(&self.mount)?,
            memory_snapshots: self.memory_snapshots,
            auto_resume: self.auto_resume,
            on_idle: self.on_idle.map(|o| match o {
                OnIdleArg::Terminate => warren_proto::api::OnIdle::Terminate,
                OnIdleArg::Pause => warren_proto::api::OnIdle::Pause,
            }),
            from_memory_snapshot: self.from_memory_snapshot.clone(),
            ..Default::default()
        };
        self.network.apply(&mut req);
        Ok(req)
    }
}

#[cfg(test)]
impl CreateArgs {
    /// The network flags (ports, egress, readiness probe).
    pub fn network(&self) -> &NetworkArgs {
        &self.network
    }

    /// `--wait-ready[=SECS]`.
    pub fn wait_ready_secs(&self) -> Option<u64> {
        self.wait_ready
    }
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
    Paused,
    Terminating,
    Terminated,
}

impl From<StateArg> for SandboxState {
    fn from(s: StateArg) -> Self {
        match s {
            StateArg::Creating => SandboxState::Creating,
            StateArg::Running => SandboxState::Running,
            StateArg::Paused => SandboxState::Paused,
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
    /// Run as this user (name, uid, uid:gid); default: the sandbox's user.
    #[arg(long)]
    user: Option<String>,
    /// Start it in the background and print its exec id (see `ps`,
    /// `attach`, `kill`); its output is kept in a bounded buffer.
    #[arg(short, long, conflicts_with = "interactive")]
    detach: bool,
    /// Forward our stdin to the command (EOF closes its stdin).
    #[arg(short, long)]
    interactive: bool,
    /// Run under a pseudo-terminal sized like ours; with -i, our terminal
    /// is put in raw mode and its keys (Ctrl-C too) go to the command.
    #[arg(short, long)]
    tty: bool,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// What `sandbox shell` runs: a login bash when the image has one, else a
/// login sh. (Not `exec bash -l 2>/dev/null || ...`: that redirect would
/// send the interactive bash's own stderr, prompt included, to /dev/null.)
pub const SHELL_COMMAND: [&str; 3] = [
    "/bin/sh",
    "-c",
    "if command -v bash >/dev/null 2>&1; then exec bash -l; else exec sh -l; fi",
];

pub fn run(data_dir: &Path, cmd: SandboxCommand) -> Result<i32> {
    let client = remote::client(data_dir)?;
    block_on(dispatch(&client, cmd))?
}

async fn dispatch(c: &Client, cmd: SandboxCommand) -> Result<i32> {
    match cmd {
        SandboxCommand::Create(a) => {
            let req = a.request()?;
            let sb = c.create_sandbox(&req).await?;
            outln!("{}", sb.id)?;
            if a.network.exposes_ports() {
                show_urls(c, &sb.id).await;
            }
            match a.wait_ready {
                Some(secs) => tunnels::wait_ready(c, &sb.id, Some(secs), true).await,
                None => Ok(0),
            }
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
        SandboxCommand::Exec(a) if a.detach => {
            let start = StreamExecStart {
                command: a.command,
                env: parse_pairs("env", &a.env)?,
                workdir: a.workdir,
                timeout_secs: a.timeout,
                tty: a.tty.then(crate::term::size),
                user: a.user,
            };
            let bg = c.start_background_exec(&a.id, &start).await?;
            outln!("{}", bg.id)?;
            Ok(0)
        }
        SandboxCommand::Files(cmd) => crate::files::run(c, cmd).await,
        SandboxCommand::Cp { src, dst } => crate::files::cp(c, &src, &dst).await,
        SandboxCommand::Ps { id, json } => {
            let execs = c.list_background_execs(&id).await?;
            if json {
                print_json(&execs)?;
            } else {
                outln!(
                    "{:<16}  {:>7}  {:<8}  {:>5}  {:>10}  COMMAND",
                    "EXEC",
                    "PID",
                    "STATE",
                    "CODE",
                    "OUTPUT"
                )?;
                for e in execs {
                    outln!(
                        "{:<16}  {:>7}  {:<8}  {:>5}  {:>10}  {}",
                        e.id,
                        e.pid,
                        e.state,
                        e.exit_code.map(|c| c.to_string()).unwrap_or_default(),
                        e.output_bytes,
                        e.command.join(" ")
                    )?;
                }
            }
            Ok(0)
        }
        SandboxCommand::Attach {
            id,
            exec_id,
            interactive,
        } => {
            let attach = Attach {
                stdin: interactive,
                tty: false,
            };
            let mut signals = Signals::install()?;
            stream::attach_background(c, &id, &exec_id, attach, &mut signals).await
        }
        SandboxCommand::Kill {
            id,
            exec_id,
            signal,
        } => {
            match signal {
                Some(s) => c.signal_background_exec(&id, &exec_id, s).await?,
                None => c.kill_background_exec(&id, &exec_id).await?,
            }
            Ok(0)
        }
        SandboxCommand::Exec(a) => {
            let start = StreamExecStart {
                command: a.command,
                env: parse_pairs("env", &a.env)?,
                workdir: a.workdir,
                timeout_secs: a.timeout,
                tty: None,
                user: a.user,
            };
            let attach = Attach {
                stdin: a.interactive,
                tty: a.tty,
            };
            let mut signals = Signals::install()?;
            stream::exec(c, &a.id, start, attach, &mut signals).await
        }
        SandboxCommand::Shell { id } => {
            let start = StreamExecStart {
                command: SHELL_COMMAND.map(String::from).to_vec(),
                ..Default::default()
            };
            let attach = Attach {
                stdin: true,
                tty: true,
            };
            let mut signals = Signals::install()?;
            stream::exec(c, &id, start, attach, &mut signals).await
        }
        SandboxCommand::SnapshotMemory(a) => crate::memory::snapshot_memory(c, a).await,
        SandboxCommand::Pause { id } => crate::memory::pause_or_resume(c, &id, true).await,
        SandboxCommand::Resume { id } => crate::memory::pause_or_resume(c, &id, false).await,
        SandboxCommand::Fork(a) => crate::memory::fork(c, a).await,
        SandboxCommand::Terminate { id } => {
            c.terminate_sandbox(&id).await?;
            Ok(0)
        }
        SandboxCommand::Logs { id, tail } => {
            let (bytes, skipped) = c.logs(&id, tail).await?;
            if skipped > 0 && tail.is_none() {
                eprintln!("warren: {skipped} older bytes of output are not kept");
            }
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            out.write_all(&bytes)
                .and_then(|()| out.flush())
                .map_err(|e| anyhow::anyhow!("writing the log: {e}"))?;
            Ok(0)
        }
        SandboxCommand::Wait { id, timeout } => wait(c, &id, timeout).await,
        SandboxCommand::Tunnels(a) => tunnels::tunnels(c, a).await,
        SandboxCommand::ConnectToken(a) => tunnels::connect_token(c, a).await,
        SandboxCommand::ConnectTokens { id, json } => tunnels::connect_tokens(c, &id, json).await,
        SandboxCommand::RevokeToken { id, token_id } => {
            c.revoke_connect_token(&id, &token_id).await?;
            Ok(0)
        }
        SandboxCommand::WaitReady { id, timeout } => {
            tunnels::wait_ready(c, &id, timeout, false).await
        }
        SandboxCommand::Network(a) => tunnels::network(c, a).await,
        SandboxCommand::Snapshot(a) => crate::snapshot::snapshot(c, a).await,
        SandboxCommand::SnapshotDir(a) => crate::snapshot::snapshot_dir(c, a).await,
        SandboxCommand::Mount(a) => crate::snapshot::mount(c, a).await,
    }
}

/// Prints the tunnel URLs of a new sandbox on stderr (stdout carries only
/// its id); a failure here is not the create's, so it is only mentioned.
pub async fn show_urls(c: &Client, id: &str) {
    match c.tunnels(id).await {
        Ok(list) => {
            for t in &list.tunnels {
                let target = match (&t.url, &t.raw) {
                    (Some(u), _) => u.clone(),
                    (None, Some(e)) => format!("tcp://{}:{}", e.host, e.port),
                    (None, None) => continue,
                };
                eprintln!("warren: port {} -> {target}", t.port);
            }
        }
        Err(e) => eprintln!(
            "warren: could not list the tunnels of {id}: {e} ({})",
            e.code()
        ),
    }
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

pub fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
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
    print_rows(["ID", "NAME", "STATE", "REASON", "CREATED"], &rows)
}

/// Prints a table: columns padded to their widest cell, two spaces apart,
/// the last one unpadded.
pub fn print_rows<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> std::io::Result<()> {
    let mut widths = header.map(str::len);
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: [&str; N]| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == N {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        outln!("{out}")
    };
    line(header)?;
    for r in rows {
        line(std::array::from_fn(|i| r[i].as_str()))?;
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
    if s.state == SandboxState::Running {
        let ready = if s.ready { "yes" } else { "no" };
        match &s.readiness_probe {
            Some(p) => outln!("ready:     {ready} (probe: {})", tunnels::probe_str(p))?,
            None => outln!("ready:     {ready}")?,
        }
    } else if let Some(p) = &s.readiness_probe {
        outln!("probe:     {}", tunnels::probe_str(p))?;
    }
    if s.state == SandboxState::Running
        && s.network.address.is_none()
        && !s.network.block_network
        && s.network.outbound_cidr_allowlist.is_none()
    {
        outln!("egress:    none (only lo: networking is off on this server)")?;
    } else {
        outln!("egress:    {}", tunnels::egress_str(&s.network))?;
    }
    if let Some(a) = &s.network.address {
        outln!("address:   {a}")?;
    }
    let ports = tunnels::ports_str(s);
    if !ports.is_empty() {
        outln!(
            "ports:     {ports}  (URLs: warren sandbox tunnels {})",
            s.id
        )?;
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
