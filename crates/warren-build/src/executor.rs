//! Runs a parsed recipe on a node, step by step, with the cache.
//!
//! Events go to a bounded channel and are sent with back-pressure: a slow
//! reader slows the `RUN` output down (the command blocks on its pipes)
//! rather than growing memory. A closed channel (the client went away)
//! cancels the build; the step's sandbox is destroyed either way: on every
//! normal and error path it is awaited, and a [`StepSandbox`] dropped
//! mid-step (the build future cancelled) destroys it in the background.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::mpsc;
use warren_image::{Image, ImageConfig};
use warren_node::fs::WriteOptions;
use warren_node::{CreateRequest, ImagePin, NetworkRequest, Node};
use warren_proto::api::PullProgress;
use warren_proto::build::{BuildEvent, LogStream};
use warren_proto::ExitStatus;
use warren_runtime::{ExecIo, ExecSpec, Limits, SandboxId, User, DEFAULT_PATH};

use crate::context::{sandbox_path, BuildContext, EntryKind, Source};
use crate::recipe::{Command, Recipe, Step, StepKind};
use crate::{cache_key, BuildError};

/// Default longest `RUN` step.
pub const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Default memory of a step's sandbox.
pub const DEFAULT_STEP_MEMORY: u64 = 2 << 30;
/// Default process limit of a step's sandbox.
pub const DEFAULT_STEP_PIDS: u64 = 4096;
/// Largest chunk of output per log event.
const LOG_CHUNK: usize = 64 * 1024;
/// Most output still forwarded after a `RUN` exited (a background process
/// may hold the pipes).
const DRAIN_LIMIT: usize = 16 << 20;
/// Longest an instruction's text is shown in events.
const MAX_TEXT: usize = 512;

/// How a build runs.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// `name[:tag]` for the result.
    pub tag: String,
    /// Ignore cache hits (results are still recorded).
    pub no_cache: bool,
    /// Network for `RUN` steps (only `lo` when false or when the node has
    /// no networking).
    pub network: bool,
    /// Longest a `RUN` command may run.
    pub step_timeout: Duration,
    /// Limits of each step's sandbox.
    pub memory_bytes: Option<u64>,
    pub pids: Option<u64>,
}

impl BuildOptions {
    /// Defaults for `tag`: cache on, network on, [`DEFAULT_STEP_TIMEOUT`],
    /// [`DEFAULT_STEP_MEMORY`], [`DEFAULT_STEP_PIDS`].
    pub fn new(tag: impl Into<String>) -> Self {
        BuildOptions {
            tag: tag.into(),
            no_cache: false,
            network: true,
            step_timeout: DEFAULT_STEP_TIMEOUT,
            memory_bytes: Some(DEFAULT_STEP_MEMORY),
            pids: Some(DEFAULT_STEP_PIDS),
        }
    }
}

/// A finished build.
#[derive(Debug, Clone)]
pub struct Built {
    pub image: Image,
    /// Steps (the `FROM` included) and how many came from the cache.
    pub steps: u32,
    pub cached_steps: u32,
}

/// A failed build: the error, and where it happened.
#[derive(Debug)]
pub struct StepError {
    pub error: BuildError,
    /// 1-based step index (the `FROM` is 1).
    pub step: Option<u32>,
    /// Recipe line of that step.
    pub line: Option<u32>,
}

impl From<BuildError> for StepError {
    fn from(error: BuildError) -> Self {
        StepError {
            error,
            step: None,
            line: None,
        }
    }
}

impl StepError {
    /// The final `error` event for this failure (`public`: the message
    /// may be shown; else a generic one names the code).
    pub fn event(&self) -> BuildEvent {
        let exit_code = match &self.error {
            BuildError::StepFailed { exit_code, .. } => Some(*exit_code),
            _ => None,
        };
        let line = match &self.error {
            BuildError::Recipe { line, .. } if *line > 0 => Some(*line),
            _ => self.line,
        };
        let message = if self.error.is_public() {
            match self.step {
                Some(s) => format!("step {s}: {}", self.error),
                None => self.error.to_string(),
            }
        } else {
            format!(
                "the build failed ({}){}; see the server log",
                self.error.code(),
                self.step
                    .map(|s| format!(" at step {s}"))
                    .unwrap_or_default()
            )
        };
        BuildEvent::Error {
            code: self.error.code().to_string(),
            message,
            step: self.step,
            line,
            exit_code,
        }
    }
}

/// Sends an event; a closed channel means the client is gone.
async fn emit(events: &mpsc::Sender<BuildEvent>, ev: BuildEvent) -> Result<(), BuildError> {
    events.send(ev).await.map_err(|_| BuildError::Cancelled)
}

fn short(text: &str) -> String {
    text.chars().take(MAX_TEXT).collect()
}

/// Runs `recipe` with `context` on `node`, sending progress to `events`
/// (everything but the final `done`/`error`, which the caller sends from
/// the result). Returns the tagged image.
pub async fn build(
    node: &Node,
    recipe: &Recipe,
    context: Arc<BuildContext>,
    opts: &BuildOptions,
    events: &mpsc::Sender<BuildEvent>,
) -> Result<Built, StepError> {
    let total = u32::try_from(recipe.steps.len() + 1).unwrap_or(u32::MAX);
    let at = |index: u32, line: u32| {
        move |error: BuildError| StepError {
            error,
            step: Some(index),
            line: Some(line),
        }
    };
    // Validate the tag before doing any work.
    warren_image::ImageName::parse_new(&opts.tag)
        .map_err(|e| StepError::from(BuildError::Image(e)))?;

    // FROM: the base image, pulled when missing.
    let started = Instant::now();
    let from_err = at(1, recipe.from_line);
    // Through the node's short-lived resolution cache: resolving `host`
    // regenerates its skeleton from the host, which a rebuild need not
    // pay twice.
    let from_cached = node.image_id(&recipe.from).await.is_ok();
    emit(
        events,
        BuildEvent::Step {
            index: 1,
            total,
            text: short(&recipe.from_text),
            cached: from_cached,
        },
    )
    .await
    .map_err(from_err)?;
    let mut current = if from_cached || !pullable(&recipe.from) {
        node.ensure_image(&recipe.from).await
    } else {
        // A pull: its progress as log lines (dropped, not waited for, when
        // the client reads slowly; the build's own events never are).
        let tx = events.clone();
        node.pull(&recipe.from, None, move |ev| {
            if let Some(data) = pull_line(&ev) {
                let _ = tx.try_send(BuildEvent::Log {
                    stream: LogStream::Stderr,
                    data,
                });
            }
        })
        .await
    }
    .map_err(|e| from_err(e.into()))?;
    // Every image the build stands on stays pinned until it has finished:
    // the intermediate ones are unnamed, and between two steps no sandbox
    // uses them, so a `gc` would otherwise remove the next step's base.
    let mut pins = vec![pin(node, &current.id).await.map_err(&from_err)?];
    let mut cached_steps = u32::from(from_cached);
    emit(
        events,
        BuildEvent::StepDone {
            index: 1,
            image_id: current.id.clone(),
            seconds: started.elapsed().as_secs_f64(),
            cached: from_cached,
        },
    )
    .await
    .map_err(from_err)?;

    // CMD inherited from the base is dropped when the recipe sets an
    // ENTRYPOINT without a CMD of its own (as Docker does).
    let mut cmd_set_here = false;
    for (i, step) in recipe.steps.iter().enumerate() {
        let index = u32::try_from(i + 2).unwrap_or(u32::MAX);
        let err = at(index, step.line);
        let started = Instant::now();
        let plan = plan(step, &current, &context, &mut cmd_set_here)
            .await
            .map_err(&err)?;
        let key = cache_key(&current.id, &plan.canonical, &plan.digest);
        let hit = if opts.no_cache {
            None
        } else {
            let store = node.images().clone();
            let k = key.clone();
            tokio::task::spawn_blocking(move || store.build_cache_get(&k))
                .await
                .map_err(|e| err(e.into()))?
                .map_err(|e| err(e.into()))?
        };
        // A hit that a concurrent gc removed after the lookup is a miss.
        let hit = match hit {
            Some(img) => match pin(node, &img.id).await {
                Ok(p) => {
                    pins.push(p);
                    Some(img)
                }
                Err(e) if e.code() == "image_not_found" => None,
                Err(e) => return Err(err(e)),
            },
            None => None,
        };
        let cached = hit.is_some();
        emit(
            events,
            BuildEvent::Step {
                index,
                total,
                text: short(&step.text),
                cached,
            },
        )
        .await
        .map_err(&err)?;
        let next = match hit {
            Some(img) => {
                cached_steps += 1;
                img
            }
            None => {
                let (img, held) = run_step(node, &plan.action, &current, &context, opts, events)
                    .await
                    .map_err(&err)?;
                pins.push(held);
                let store = node.images().clone();
                let id = img.id.clone();
                tokio::task::spawn_blocking(move || store.build_cache_put(&key, &id))
                    .await
                    .map_err(|e| err(e.into()))?
                    .map_err(|e| err(e.into()))?;
                img
            }
        };
        emit(
            events,
            BuildEvent::StepDone {
                index,
                image_id: next.id.clone(),
                seconds: started.elapsed().as_secs_f64(),
                cached,
            },
        )
        .await
        .map_err(&err)?;
        current = next;
    }

    let store = node.images().clone();
    let (id, tag) = (current.id.clone(), opts.tag.clone());
    let image = tokio::task::spawn_blocking(move || store.tag(&id, &tag))
        .await
        .map_err(|e| StepError::from(BuildError::from(e)))?
        .map_err(|e| StepError::from(BuildError::Image(e)))?;
    // Named now: GC keeps it without the pins.
    drop(pins);
    Ok(Built {
        image,
        steps: total,
        cached_steps,
    })
}

/// Pins image `id` for the rest of the build (see [`Node::pin_image`]):
/// the base and cache hits, which exist already (a hit a concurrent gc
/// removed since its lookup is `image_not_found`). Images the build writes
/// come back held from the write itself ([`snapshot`], config steps), so
/// no gc can come between their creation and their pin.
async fn pin(node: &Node, id: &str) -> Result<ImagePin, BuildError> {
    let node = node.clone();
    let id = id.to_string();
    Ok(tokio::task::spawn_blocking(move || node.pin_image(&id)).await??)
}

/// Whether a missing `FROM` image could come from a registry (not the
/// built-in image, not an image id).
fn pullable(reference: &str) -> bool {
    !reference.starts_with("sha256:")
        && reference != warren_image::HOST_IMAGE_NAME
        && reference != "host:latest"
}

/// A pull event as a log line (per-chunk progress is left out).
fn pull_line(ev: &PullProgress) -> Option<String> {
    let short = |d: &str| -> String {
        d.strip_prefix("sha256:")
            .unwrap_or(d)
            .chars()
            .take(12)
            .collect()
    };
    Some(match ev {
        PullProgress::Resolved {
            reference, layers, ..
        } => format!(
            "pulling {reference}: {} layer(s), {} bytes\n",
            layers.len(),
            layers.iter().map(|l| l.size).sum::<u64>()
        ),
        PullProgress::LayerProgress { .. } => return None,
        PullProgress::LayerVerified { digest } => format!("{}: downloaded\n", short(digest)),
        PullProgress::LayerAlreadyPresent { digest } => {
            format!("{}: already present\n", short(digest))
        }
        PullProgress::LayerUnpacked { digest, .. } => format!("{}: unpacked\n", short(digest)),
        PullProgress::Done { name, .. } => format!("pulled {name}\n"),
    })
}

/// What a step will do, with everything expanded.
struct Plan {
    /// The step as hashed into the cache key.
    canonical: String,
    /// The content digest (`COPY`), else empty.
    digest: String,
    action: Action,
}

enum Action {
    Config(ImageConfig),
    Run(Vec<String>),
    Copy { sources: Vec<Source>, dest: String },
}

fn json(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v).expect("strings serialize")
}

async fn plan(
    step: &Step,
    current: &Image,
    context: &Arc<BuildContext>,
    cmd_set_here: &mut bool,
) -> Result<Plan, BuildError> {
    let env = &current.config.env;
    let workdir = current
        .config
        .workdir
        .clone()
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".into());
    let mut config = current.config.clone();
    let config_plan = |canonical: String, config: ImageConfig| Plan {
        canonical,
        digest: String::new(),
        action: Action::Config(config),
    };
    Ok(match &step.kind {
        StepKind::Env(vars) => {
            // Every value sees the environment before this instruction.
            let resolved: Vec<(String, String)> = vars
                .iter()
                .map(|(k, w)| (k.clone(), w.expand_env(env)))
                .collect();
            for (k, v) in &resolved {
                config
                    .env
                    .retain(|kv| kv.split('=').next() != Some(k.as_str()));
                config.env.push(format!("{k}={v}"));
            }
            config_plan(format!("ENV {}", json(&resolved)), config)
        }
        StepKind::Workdir(w) => {
            let dir = sandbox_path(&workdir, &w.expand_env(env));
            config.workdir = Some(dir.clone());
            config_plan(format!("WORKDIR {}", json(&dir)), config)
        }
        StepKind::User(u) => {
            let user = u.expand_env(env);
            config.user = Some(user.clone());
            config_plan(format!("USER {}", json(&user)), config)
        }
        StepKind::Cmd(c) => {
            let argv = c.argv();
            config.cmd = Some(argv.clone());
            *cmd_set_here = true;
            config_plan(format!("CMD {}", json(&argv)), config)
        }
        StepKind::Entrypoint(c) => {
            let argv = c.argv();
            config.entrypoint = Some(argv.clone());
            if !*cmd_set_here {
                config.cmd = None;
            }
            config_plan(format!("ENTRYPOINT {}", json(&argv)), config)
        }
        StepKind::Run(c) => {
            let argv = match c {
                Command::Shell(s) => vec!["/bin/sh".into(), "-c".into(), s.clone()],
                Command::Exec(v) => v.clone(),
            };
            Plan {
                canonical: format!("RUN {}", json(&argv)),
                digest: String::new(),
                action: Action::Run(argv),
            }
        }
        StepKind::Copy { sources, dest } => {
            let srcs: Vec<String> = sources.iter().map(|w| w.expand_env(env)).collect();
            let raw_dest = dest.expand_env(env);
            let mut dest = sandbox_path(&workdir, &raw_dest);
            if raw_dest.ends_with('/') && dest != "/" {
                dest.push('/');
            }
            let ctx = context.clone();
            let s2 = srcs.clone();
            let (selected, digest) = tokio::task::spawn_blocking(move || {
                let selected = ctx.select(&s2)?;
                let digest = ctx.digest(&selected)?;
                Ok::<_, BuildError>((selected, digest))
            })
            .await??;
            Plan {
                canonical: format!("COPY {}", json(&(srcs, &dest))),
                digest,
                action: Action::Copy {
                    sources: selected,
                    dest,
                },
            }
        }
    })
}

/// Executes a step that is not in the cache.
async fn run_step(
    node: &Node,
    action: &Action,
    current: &Image,
    context: &Arc<BuildContext>,
    opts: &BuildOptions,
    events: &mpsc::Sender<BuildEvent>,
) -> Result<(Image, ImagePin), BuildError> {
    match action {
        Action::Config(config) => {
            let store = node.images().clone();
            let (parent, config) = (current.id.clone(), config.clone());
            Ok(
                tokio::task::spawn_blocking(move || {
                    store.derive_config_held(&parent, config, None)
                })
                .await??,
            )
        }
        Action::Run(argv) => {
            let sb = StepSandbox::create(node, current, opts).await?;
            let result = async {
                run_command(node, &sb.id, argv, current, opts, events).await?;
                snapshot(node, &sb.id).await
            }
            .await;
            let destroyed = sb.destroy().await;
            let img = result?;
            destroyed?;
            Ok(img)
        }
        Action::Copy { sources, dest } => {
            let sb = StepSandbox::create(node, current, opts).await?;
            let result = async {
                copy_into(node, &sb.id, context, sources, dest, events).await?;
                snapshot(node, &sb.id).await
            }
            .await;
            let destroyed = sb.destroy().await;
            let img = result?;
            destroyed?;
            Ok(img)
        }
    }
}

/// The step sandbox's layer as an unnamed image, held from the moment it
/// exists (see [`pin`]).
async fn snapshot(node: &Node, id: &SandboxId) -> Result<(Image, ImagePin), BuildError> {
    let out = node.snapshot_filesystem_held(id).await?;
    let held = out
        .hold
        .ok_or_else(|| BuildError::Internal("a held snapshot came back without its hold".into()))?;
    Ok((out.image, held))
}

/// A step's sandbox; destroyed by [`StepSandbox::destroy`], or in the
/// background when dropped without it (a cancelled build).
struct StepSandbox {
    node: Node,
    id: SandboxId,
    armed: bool,
}

impl StepSandbox {
    async fn create(node: &Node, image: &Image, opts: &BuildOptions) -> Result<Self, BuildError> {
        let id = SandboxId::new(format!("build-{:016x}", rand::random::<u64>()))
            .map_err(|e| BuildError::Internal(e.to_string()))?;
        let req = CreateRequest {
            id: id.clone(),
            image: image.id.clone(),
            // Idles; steps run as execs.
            command: None,
            env: Vec::new(),
            // The idle main process runs as root in `/`: the image's own
            // workdir may not exist yet and its user is applied per exec.
            workdir: Some("/".into()),
            user: Some("0:0".into()),
            use_image_command: false,
            limits: Limits {
                cpu_millis: None,
                memory_bytes: opts.memory_bytes,
                pids: opts.pids,
                disk_bytes: None,
            },
            log_capacity: None,
            network: NetworkRequest {
                block_network: !opts.network,
                outbound_cidr_allowlist: None,
            },
        };
        // Armed before the create: a create cancelled midway is cleaned up
        // too (destroy is idempotent).
        let sb = StepSandbox {
            node: node.clone(),
            id,
            armed: true,
        };
        node.create(req, None, None).await?;
        tracing::debug!(sandbox_id = %sb.id.as_str(), image = %image.id, "build step sandbox created");
        Ok(sb)
    }

    async fn destroy(mut self) -> Result<(), BuildError> {
        self.armed = false;
        self.node.destroy(&self.id).await?;
        Ok(())
    }
}

impl Drop for StepSandbox {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let node = self.node.clone();
        let id = self.id.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn(async move {
                    if let Err(e) = node.destroy(&id).await {
                        tracing::warn!(sandbox_id = %id.as_str(), error = %e, "destroying a cancelled build step's sandbox");
                    }
                });
            }
            Err(_) => {
                tracing::warn!(sandbox_id = %self.id.as_str(), "build step sandbox dropped outside a runtime; it is removed at the next restart")
            }
        }
    }
}

/// Runs a `RUN` command as the image's user, in its workdir, with its
/// environment; streams the output; fails on a non-zero exit.
async fn run_command(
    node: &Node,
    id: &SandboxId,
    argv: &[String],
    image: &Image,
    opts: &BuildOptions,
    events: &mpsc::Sender<BuildEvent>,
) -> Result<(), BuildError> {
    let (config, resolved) = node.exec_defaults(&image.id, None).await?;
    let workdir = config
        .workdir
        .clone()
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".into());
    // Like Docker, a WORKDIR that does not exist yet is created (as root).
    if workdir != "/" {
        node.fs(id, User::root())
            .mkdir(workdir.as_bytes(), true, None)
            .await?;
    }
    let mut env = config.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_string());
    }
    if let Some(home) = resolved.home.filter(|h| !h.is_empty()) {
        if !env.iter().any(|e| e.starts_with("HOME=")) {
            env.push(format!("HOME={home}"));
        }
    }
    let spec = ExecSpec {
        argv: argv.to_vec(),
        env,
        workdir,
        user: resolved.user,
        timeout: Some(opts.step_timeout),
    };
    let mut exec = node
        .start_exec(id, spec, ExecIo::Pipes { stdin: false })
        .await?;
    let warren_node::ExecStreams {
        stdout: mut out,
        stderr: mut err,
        control,
        ..
    } = warren_node::exec_streams(&mut exec)?;
    let mut buf_out = vec![0u8; LOG_CHUNK];
    let mut buf_err = vec![0u8; LOG_CHUNK];
    let mut text_out = Utf8Chunks::default();
    let mut text_err = Utf8Chunks::default();
    loop {
        tokio::select! {
            r = read_opt(&mut out, &mut buf_out) => match r {
                Some(Ok(n)) if n > 0 => log(events, LogStream::Stdout, text_out.push(&buf_out[..n])).await?,
                _ => out = None,
            },
            r = read_opt(&mut err, &mut buf_err) => match r {
                Some(Ok(n)) if n > 0 => log(events, LogStream::Stderr, text_err.push(&buf_err[..n])).await?,
                _ => err = None,
            },
            r = control.readable() => {
                let mut guard = r?;
                guard.clear_ready();
                let Some(exit) = exec.wait_timeout(Duration::ZERO)? else {
                    continue;
                };
                drain(events, &mut out, LogStream::Stdout, &mut buf_out, &mut text_out).await?;
                drain(events, &mut err, LogStream::Stderr, &mut buf_err, &mut text_err).await?;
                log(events, LogStream::Stdout, text_out.finish()).await?;
                log(events, LogStream::Stderr, text_err.finish()).await?;
                if exit.timed_out {
                    return Err(BuildError::StepTimeout { secs: opts.step_timeout.as_secs() });
                }
                let code = match exit.status {
                    ExitStatus::Code(c) => c,
                    ExitStatus::Signal(s) => 128 + s,
                };
                if code != 0 || exit.oom_killed {
                    return Err(BuildError::StepFailed { exit_code: code, oom_killed: exit.oom_killed });
                }
                return Ok(());
            }
        }
    }
}

async fn log(
    events: &mpsc::Sender<BuildEvent>,
    stream: LogStream,
    data: String,
) -> Result<(), BuildError> {
    if data.is_empty() {
        return Ok(());
    }
    emit(events, BuildEvent::Log { stream, data }).await
}

async fn read_opt(
    r: &mut Option<pipe::Receiver>,
    buf: &mut [u8],
) -> Option<std::io::Result<usize>> {
    match r {
        Some(r) => Some(r.read(buf).await),
        None => std::future::pending().await,
    }
}

/// Forwards what a pipe holds right now, without waiting for more.
async fn drain(
    events: &mpsc::Sender<BuildEvent>,
    r: &mut Option<pipe::Receiver>,
    stream: LogStream,
    buf: &mut [u8],
    text: &mut Utf8Chunks,
) -> Result<(), BuildError> {
    let Some(rx) = r.as_mut() else { return Ok(()) };
    let mut sent = 0;
    while sent < DRAIN_LIMIT {
        match rx.try_read(buf) {
            Ok(n) if n > 0 => {
                log(events, stream, text.push(&buf[..n])).await?;
                sent += n;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                // tokio may not have seen readiness yet: one bounded wait.
                match tokio::time::timeout(Duration::from_millis(20), rx.read(buf)).await {
                    Ok(Ok(n)) if n > 0 => {
                        log(events, stream, text.push(&buf[..n])).await?;
                        sent += n;
                    }
                    _ => break,
                }
            }
            _ => break,
        }
    }
    *r = None;
    Ok(())
}

/// Turns byte chunks into text without splitting a UTF-8 sequence across
/// events (an incomplete tail waits for the next chunk; invalid bytes
/// become U+FFFD).
#[derive(Default)]
struct Utf8Chunks {
    pending: Vec<u8>,
}

impl Utf8Chunks {
    fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let keep = incomplete_tail(&self.pending);
        let cut = self.pending.len() - keep;
        let text = String::from_utf8_lossy(&self.pending[..cut]).into_owned();
        self.pending.drain(..cut);
        text
    }

    fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        text
    }
}

/// Length of an incomplete UTF-8 sequence at the end of `b` (0 to 3).
fn incomplete_tail(b: &[u8]) -> usize {
    for back in 1..=3.min(b.len()) {
        let c = b[b.len() - back];
        if c & 0xC0 == 0x80 {
            continue;
        }
        let need = match c {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => return 0,
        };
        return if need > back { back } else { 0 };
    }
    0
}

/// Writes a `COPY`'s files into the sandbox through its file agent, as
/// root.
async fn copy_into(
    node: &Node,
    id: &SandboxId,
    context: &Arc<BuildContext>,
    sources: &[Source],
    dest: &str,
    events: &mpsc::Sender<BuildEvent>,
) -> Result<(), BuildError> {
    let fs = node.fs(id, User::root());
    let trimmed = if dest.len() > 1 {
        dest.trim_end_matches('/')
    } else {
        dest
    };
    let existing_dir = match fs.stat(trimmed.as_bytes()).await {
        Ok(e) => e.kind == warren_node::fs::FileKind::Directory,
        Err(_) => false,
    };
    let dest_is_dir = dest.ends_with('/')
        || existing_dir
        || sources.len() > 1
        || sources.iter().any(|s| s.is_dir);
    let placements = context.place(sources, trimmed, dest_is_dir);
    for p in placements {
        match &p.entry.kind {
            EntryKind::Dir => {
                fs.mkdir(p.target.as_bytes(), true, Some(p.entry.mode & 0o7777))
                    .await?;
            }
            EntryKind::File { offset, size } => {
                let ctx = context.clone();
                let (offset, size) = (*offset, *size);
                // Chunks read from the archive on the blocking pool.
                let chunks = futures_util::stream::unfold(0u64, move |done| {
                    let ctx = ctx.clone();
                    async move {
                        if done >= size {
                            return None;
                        }
                        let n = (size - done).min(256 * 1024) as usize;
                        let r = tokio::task::spawn_blocking(move || ctx.read_at(offset + done, n))
                            .await
                            .map_err(|e| std::io::Error::other(e.to_string()))
                            .and_then(|r| r.map_err(|e| std::io::Error::other(e.to_string())))
                            .map(Bytes::from);
                        Some((r, done + n as u64))
                    }
                });
                fs.write_stream(
                    p.target.as_bytes(),
                    WriteOptions {
                        mode: Some(p.entry.mode & 0o7777),
                        create_parents: true,
                    },
                    chunks,
                )
                .await?;
            }
            EntryKind::Symlink { target } => {
                // The file agent creates no symlinks: say so in the log.
                log(
                    events,
                    LogStream::Stderr,
                    format!("warren: COPY skipped symlink {} -> {target}\n", p.target),
                )
                .await?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(config: ImageConfig) -> Image {
        Image {
            id: "sha256:parent".into(),
            names: vec![],
            layers: vec![],
            binds: vec![],
            config,
        }
    }

    fn empty_context() -> Arc<BuildContext> {
        let mut f = tempfile::tempfile().unwrap();
        let bytes = tar::Builder::new(Vec::new()).into_inner().unwrap();
        std::io::Write::write_all(&mut f, &bytes).unwrap();
        Arc::new(BuildContext::open(f).unwrap())
    }

    /// Plans every step of `recipe` from `config`, each on the previous
    /// step's config: (canonical steps, final config).
    async fn plan_all(recipe: &str, config: ImageConfig) -> (Vec<String>, ImageConfig) {
        let r = crate::parse(recipe.as_bytes()).unwrap();
        let ctx = empty_context();
        let mut current = image(config);
        let mut canon = Vec::new();
        let mut cmd_set_here = false;
        for step in &r.steps {
            let p = plan(step, &current, &ctx, &mut cmd_set_here).await.unwrap();
            canon.push(p.canonical);
            if let Action::Config(c) = p.action {
                current = image(c);
            }
        }
        (canon, current.config)
    }

    #[tokio::test]
    async fn config_steps_expand_against_the_accumulated_env() {
        let base = ImageConfig {
            env: vec!["PATH=/bin".into(), "HOME=/root".into()],
            cmd: Some(vec!["sh".into()]),
            ..Default::default()
        };
        let (canon, cfg) = plan_all(
            "FROM x\nENV PATH=/opt/bin:$PATH A=${HOME}/a\nENV B=$A/b PATH=$PATH:/z\nWORKDIR $HOME\nWORKDIR sub/../app\nUSER ${U:-nobody}\nENTRYPOINT [\"/bin/app\"]\nRUN echo $A\n",
            base,
        )
        .await;
        assert_eq!(
            cfg.env,
            vec![
                "HOME=/root",
                "A=/root/a",
                "B=/root/a/b",
                "PATH=/opt/bin:/bin:/z"
            ]
        );
        assert_eq!(cfg.workdir.as_deref(), Some("/root/app"));
        assert_eq!(cfg.user.as_deref(), Some("nobody"));
        assert_eq!(cfg.entrypoint, Some(vec!["/bin/app".to_string()]));
        // The base's CMD goes with a new ENTRYPOINT (no CMD of our own).
        assert_eq!(cfg.cmd, None);
        assert_eq!(canon[2], "WORKDIR \"/root\"");
        // RUN is left to the shell.
        assert_eq!(canon[6], r#"RUN ["/bin/sh","-c","echo $A"]"#);

        // A CMD of the recipe stays when an ENTRYPOINT follows.
        let (_, cfg) = plan_all(
            "FROM x\nCMD run\nENTRYPOINT [\"e\"]\n",
            ImageConfig::default(),
        )
        .await;
        assert_eq!(
            cfg.cmd,
            Some(vec!["/bin/sh".to_string(), "-c".into(), "run".into()])
        );
    }

    #[tokio::test]
    async fn copy_keys_follow_the_destination_and_missing_sources_fail() {
        let (canon, _) =
            plan_all("FROM x\nWORKDIR /w\nCOPY . rel/\n", ImageConfig::default()).await;
        assert_eq!(canon[1], r#"COPY [["."],"/w/rel/"]"#);
        let r = crate::parse(b"FROM x\nCOPY nope /x\n").unwrap();
        let err = plan(
            &r.steps[0],
            &image(ImageConfig::default()),
            &empty_context(),
            &mut false,
        )
        .await
        .err()
        .unwrap();
        assert_eq!(err.code(), "invalid_copy_source");
    }

    #[test]
    fn utf8_is_not_split() {
        let mut u = Utf8Chunks::default();
        let s = "héllo €".as_bytes();
        let mut out = String::new();
        for b in s.chunks(1) {
            out.push_str(&u.push(b));
        }
        out.push_str(&u.finish());
        assert_eq!(out, "héllo €");
        assert_eq!(u.push(b"\xff\xfeok"), "\u{fffd}\u{fffd}ok");
        assert_eq!(u.push(b"\xe2\x82"), "");
        assert_eq!(u.finish(), "\u{fffd}");
    }

    #[test]
    fn error_events_carry_the_step() {
        let e = StepError {
            error: BuildError::StepFailed {
                exit_code: 3,
                oom_killed: false,
            },
            step: Some(4),
            line: Some(7),
        };
        match e.event() {
            BuildEvent::Error {
                code,
                step,
                line,
                exit_code,
                message,
            } => {
                assert_eq!(code, "build_step_failed");
                assert_eq!((step, line, exit_code), (Some(4), Some(7), Some(3)));
                assert!(
                    message.contains("step 4") && message.contains("code 3"),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
        let e = StepError::from(BuildError::Internal("/var/lib/secret/path".into()));
        let BuildEvent::Error { message, .. } = e.event() else {
            panic!()
        };
        assert!(!message.contains("/var/lib"), "{message}");
    }
}
