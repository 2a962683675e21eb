//! The filesystem API: file operations inside a sandbox, performed by the
//! sandbox's own file agent (see `warren_proto::agent` and `docs/files.md`).
//!
//! ```text
//! let fs = node.fs(&id, user);                 // FsSession: cheap, Clone
//! fs.stat(b"/etc/hostname").await?             // -> FsEntry (lstat-like)
//! fs.list(b"/app", ListOptions { recursive: true, limit: None }).await?
//!                                              // -> Listing { entries, truncated }
//! let r = fs.read(b"/app/big", ReadRange::default()).await?;
//!                                              // -> FsRead: Stream<Item = Result<Bytes>>
//! fs.write(b"/app/out", WriteOptions::default(), reader).await?   // AsyncRead -> bytes
//! fs.write_stream(b"/app/out", WriteOptions::default(), stream).await?
//! fs.mkdir(b"/a/b", true, None).await?; fs.remove(b"/a", true).await?;
//! fs.rename(b"/a", b"/b", true).await?;
//! let w = fs.watch(b"/app", true).await?;    // -> FsWatch: Stream<Item = Result<WatchEvent>>
//! ```
//!
//! Paths are raw bytes, absolute inside the sandbox. Every operation runs
//! as `user` inside the sandbox (its mount namespace, permissions, seccomp
//! policy and cgroup), so a file that user cannot read is `permission_denied`
//! here too, and no path can reach the host. Errors are
//! [`NodeError::Fs`] with a stable [`FsErrorCode`] (via
//! [`NodeError::code`]); a misbehaving agent is [`NodeError::FsAgent`]
//! (`fs_agent_failed`).
//!
//! Agents are pooled per sandbox: at most [`MAX_AGENTS_PER_SANDBOX`] live
//! agents (idle or busy), started lazily and reused, one request at a time
//! each. A request waits for a free agent when all are busy. A read stream
//! or a write holds its agent until it ends; dropping a read stream early
//! retires that agent. Watches use a dedicated agent each (at most
//! [`MAX_WATCHES_PER_SANDBOX`]); dropping the [`FsWatch`] kills it.
//! [`crate::Node::destroy`] drops the sandbox's pool; its agents die with
//! the sandbox.
//!
//! Memory is bounded: reads hand out one chunk (≤ 256 KiB) per poll and
//! read the next frame only when polled, so back-pressure reaches the agent
//! (it blocks on its stdout pipe); writes hold one chunk at a time.
//!
//! The agent is sandbox code (tenant processes share its uid and may tamper
//! with it): every frame is checked against the protocol caps, a read
//! never yields more than asked for, and nothing the agent says is used on
//! the host.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{FutureExt, Stream, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::pipe;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use warren_proto::agent::{
    decode_message, encode_message, frame_header, parse_header, AgentReply, AgentRequest,
    FrameKind, AGENT_ARGV0, AGENT_ENV_MARKER, AGENT_PROTOCOL_VERSION, DEFAULT_LIST_LIMIT,
    FRAME_HEADER_BYTES, MAX_CHUNK_BYTES, MAX_LIST_LIMIT,
};
pub use warren_proto::agent::{FileKind, FsEntry, FsErrorCode, WatchEvent, WatchEventKind};
use warren_runtime::{ExecIo, ExecSpec, NativeRuntime, Runtime, SandboxId, User};

use crate::NodeError;

/// Most live agents (idle or busy) per sandbox, watches not included.
pub const MAX_AGENTS_PER_SANDBOX: usize = 4;

/// Most concurrent watches per sandbox.
pub const MAX_WATCHES_PER_SANDBOX: usize = 8;

/// How long the node waits for any single frame from an agent (watches
/// excepted): a stuck or tampered agent fails the request instead of
/// hanging it.
pub const AGENT_FRAME_TIMEOUT: Duration = Duration::from_secs(60);

/// Pipe buffer asked for each direction (fewer wake-ups per chunk).
const PIPE_BYTES: i32 = 1024 * 1024;

/// Options of [`FsSession::list`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ListOptions {
    pub recursive: bool,
    /// Most entries (default 10,000; at most 100,000).
    pub limit: Option<u32>,
}

/// A directory listing.
#[derive(Debug, Clone)]
pub struct Listing {
    pub entries: Vec<FsEntry>,
    /// More entries existed than the limit allowed.
    pub truncated: bool,
}

/// Which bytes [`FsSession::read`] returns.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadRange {
    pub offset: u64,
    /// At most this many bytes (`None`: to the end).
    pub length: Option<u64>,
}

/// Options of [`FsSession::write`].
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteOptions {
    /// Permission bits; default: the replaced file's, else `0o644`.
    pub mode: Option<u32>,
    /// Create missing parent directories (`0o755`).
    pub create_parents: bool,
}

/// The agent pools of every sandbox of a node.
#[derive(Default)]
pub(crate) struct FsPools {
    sandboxes: Mutex<HashMap<SandboxId, Arc<Pool>>>,
}

impl FsPools {
    fn pool(&self, id: &SandboxId) -> Arc<Pool> {
        self.sandboxes
            .lock()
            .expect("fs pool lock poisoned")
            .entry(id.clone())
            .or_insert_with(|| {
                Arc::new(Pool {
                    permits: Arc::new(Semaphore::new(MAX_AGENTS_PER_SANDBOX)),
                    idle: Mutex::new(Vec::new()),
                    watches: Arc::new(Semaphore::new(MAX_WATCHES_PER_SANDBOX)),
                })
            })
            .clone()
    }

    /// Forgets a sandbox's agents (they die with the sandbox).
    pub(crate) fn forget(&self, id: &SandboxId) {
        self.sandboxes
            .lock()
            .expect("fs pool lock poisoned")
            .remove(id);
    }
}

struct Pool {
    /// One permit per agent in use.
    permits: Arc<Semaphore>,
    /// Idle agents, most recently used last.
    idle: Mutex<Vec<Agent>>,
    watches: Arc<Semaphore>,
}

/// File operations in one sandbox as one user. Cheap to clone.
#[derive(Clone)]
pub struct FsSession {
    rt: Arc<NativeRuntime>,
    pool: Arc<Pool>,
    id: SandboxId,
    user: User,
}

impl crate::Node {
    /// File operations in sandbox `id`, performed as `user` (ids as the
    /// sandbox sees them). See the [`crate::fs`] module.
    pub fn fs(&self, id: &SandboxId, user: User) -> FsSession {
        FsSession {
            rt: self.rt.clone(),
            pool: self.fs.pool(id),
            id: id.clone(),
            user,
        }
    }
}

impl FsSession {
    /// Facts about `path` itself (a final symlink is reported, not
    /// followed; `symlink_target` says where it points).
    pub async fn stat(&self, path: &[u8]) -> Result<FsEntry, NodeError> {
        let req = AgentRequest::Stat {
            path: path.to_vec(),
        };
        let (mut lease, reply) = self.start(&req).await?;
        match reply {
            AgentReply::Stat { entry } => {
                lease.done();
                Ok(entry)
            }
            other => Err(lease.unexpected(other)),
        }
    }

    /// The entries of the directory `path` (a final symlink is followed,
    /// inside the sandbox). Recursive listings are depth first, parents
    /// before children, and never follow symlinks.
    pub async fn list(&self, path: &[u8], opts: ListOptions) -> Result<Listing, NodeError> {
        let limit = opts.limit.unwrap_or(DEFAULT_LIST_LIMIT).min(MAX_LIST_LIMIT);
        let req = AgentRequest::List {
            path: path.to_vec(),
            recursive: opts.recursive,
            limit,
        };
        let (mut lease, mut reply) = self.start(&req).await?;
        let mut entries = Vec::new();
        loop {
            match reply {
                AgentReply::Entries { entries: batch } => {
                    if entries.len() + batch.len() > limit as usize {
                        return Err(lease.broken("more entries than the limit"));
                    }
                    entries.extend(batch);
                }
                AgentReply::ListEnd { truncated } => {
                    lease.done();
                    return Ok(Listing { entries, truncated });
                }
                other => return Err(lease.unexpected(other)),
            }
            reply = lease.agent().recv_message().await?;
        }
    }

    /// Streams a regular file's bytes (`range`), one chunk of at most
    /// 256 KiB per item. Errors before the first byte (missing file,
    /// permission, directory, ...) are returned here; later ones end the
    /// stream with an `Err` item.
    pub async fn read(&self, path: &[u8], range: ReadRange) -> Result<FsRead, NodeError> {
        let req = AgentRequest::Read {
            path: path.to_vec(),
            offset: range.offset,
            length: range.length,
        };
        let (lease, reply) = self.start(&req).await?;
        let size = match reply {
            AgentReply::ReadStart { size } => size,
            other => return Err({ lease }.unexpected(other)),
        };
        let state = ReadState {
            lease,
            left: range.length.unwrap_or(u64::MAX),
            finished: false,
        };
        let stream = futures_util::stream::unfold(state, |mut st| async move {
            if st.finished {
                return None;
            }
            let item = st.next().await;
            match item {
                Some(Ok(b)) => Some((Ok(b), st)),
                Some(Err(e)) => {
                    st.finished = true;
                    Some((Err(e), st))
                }
                None => None,
            }
        });
        Ok(FsRead {
            size,
            inner: Box::pin(stream),
        })
    }

    /// Replaces `path` atomically with everything `body` yields (a
    /// temporary file in the same directory, fsync'd, renamed over it; a
    /// failure leaves the old file). Returns the bytes written. Memory use
    /// is one 256 KiB chunk.
    pub async fn write<R>(
        &self,
        path: &[u8],
        opts: WriteOptions,
        mut body: R,
    ) -> Result<u64, NodeError>
    where
        R: AsyncRead + Unpin + Send,
    {
        let mut buf = BytesMut::with_capacity(MAX_CHUNK_BYTES);
        let source = futures_util::stream::poll_fn(move |cx| {
            buf.clear();
            buf.reserve(MAX_CHUNK_BYTES);
            let mut read_buf =
                tokio::io::ReadBuf::uninit(&mut buf.spare_capacity_mut()[..MAX_CHUNK_BYTES]);
            match Pin::new(&mut body).poll_read(cx, &mut read_buf) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
                Poll::Ready(Ok(())) => {
                    let n = read_buf.filled().len();
                    if n == 0 {
                        return Poll::Ready(None);
                    }
                    Poll::Ready(Some(Ok(Bytes::copy_from_slice(read_buf.filled()))))
                }
            }
        });
        self.write_stream(path, opts, source).await
    }

    /// As [`Self::write`], from a stream of chunks (any size; they are
    /// split into 256 KiB frames).
    pub async fn write_stream<S, B, E>(
        &self,
        path: &[u8],
        opts: WriteOptions,
        body: S,
    ) -> Result<u64, NodeError>
    where
        S: Stream<Item = Result<B, E>> + Send,
        B: AsRef<[u8]> + Send,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let req = AgentRequest::Write {
            path: path.to_vec(),
            mode: opts.mode,
            create_parents: opts.create_parents,
        };
        let (mut lease, reply) = self.start(&req).await?;
        if reply != (AgentReply::WriteAccepted {}) {
            return Err(lease.unexpected(reply));
        }
        let mut body = std::pin::pin!(body);
        let mut sent = 0u64;
        'body: while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    // The agent sees its stdin close and removes the
                    // temporary file.
                    lease.retire();
                    return Err(NodeError::Io(std::io::Error::other(e.into())));
                }
            };
            for part in chunk.as_ref().chunks(MAX_CHUNK_BYTES) {
                // The agent answers early when the write failed (e.g.
                // no_space): stop sending.
                if lease.agent().reply_pending()? {
                    break 'body;
                }
                lease.agent().send_data(part).await?;
                sent += part.len() as u64;
            }
        }
        lease.agent().send(&AgentRequest::WriteEnd {}).await?;
        match lease.agent().recv_message().await? {
            AgentReply::Done { bytes } if bytes == sent => {
                lease.done();
                Ok(bytes)
            }
            AgentReply::Done { .. } => Err(lease.broken("wrong byte count")),
            other => Err(lease.unexpected(other)),
        }
    }

    /// Creates a directory (`parents`: like `mkdir -p`, no error if it
    /// exists). `mode` defaults to `0o755`.
    pub async fn mkdir(
        &self,
        path: &[u8],
        parents: bool,
        mode: Option<u32>,
    ) -> Result<(), NodeError> {
        self.simple(AgentRequest::Mkdir {
            path: path.to_vec(),
            parents,
            mode,
        })
        .await
    }

    /// Removes a file, symlink or empty directory; with `recursive`, a
    /// whole tree (never following symlinks).
    pub async fn remove(&self, path: &[u8], recursive: bool) -> Result<(), NodeError> {
        self.simple(AgentRequest::Remove {
            path: path.to_vec(),
            recursive,
        })
        .await
    }

    /// Renames `from` to `to`; without `overwrite` an existing `to` is
    /// `already_exists`.
    pub async fn rename(&self, from: &[u8], to: &[u8], overwrite: bool) -> Result<(), NodeError> {
        self.simple(AgentRequest::Rename {
            from: from.to_vec(),
            to: to.to_vec(),
            overwrite,
        })
        .await
    }

    /// Watches `path` (and with `recursive` every directory below it,
    /// including new ones) until the returned stream is dropped. The
    /// stream ends when the watched path itself is deleted or moved. An
    /// `overflow` event means events were lost (the consumer fell behind):
    /// rescan.
    pub async fn watch(&self, path: &[u8], recursive: bool) -> Result<FsWatch, NodeError> {
        let permit = self
            .pool
            .watches
            .clone()
            .try_acquire_owned()
            .map_err(|_| NodeError::Fs {
                code: FsErrorCode::LimitExceeded,
                message: format!("at most {MAX_WATCHES_PER_SANDBOX} watches per sandbox"),
            })?;
        let mut agent = Agent::spawn(&self.rt, &self.id, &self.user).await?;
        agent.kill_on_drop = true;
        agent
            .send(&AgentRequest::Watch {
                path: path.to_vec(),
                recursive,
            })
            .await?;
        match agent.recv_message().await? {
            AgentReply::Watching {} => {}
            AgentReply::Error { code, message } => return Err(NodeError::Fs { code, message }),
            other => return Err(agent_error(format!("unexpected reply {other:?}"))),
        }
        let state = WatchState {
            agent,
            pending: std::collections::VecDeque::new(),
            finished: false,
            _permit: permit,
        };
        let stream = futures_util::stream::unfold(state, |mut st| async move {
            let item = st.next().await?;
            if item.is_err() {
                st.finished = true;
            }
            Some((item, st))
        });
        Ok(FsWatch {
            inner: Box::pin(stream),
        })
    }

    async fn simple(&self, req: AgentRequest) -> Result<(), NodeError> {
        let (mut lease, reply) = self.start(&req).await?;
        match reply {
            AgentReply::Done { .. } => {
                lease.done();
                Ok(())
            }
            other => Err(lease.unexpected(other)),
        }
    }

    /// Checks out an agent, sends `req` and reads the first reply. An
    /// agent reused from the pool that turns out dead (killed inside the
    /// sandbox) is replaced. A first reply that is
    /// an error is returned as [`NodeError::Fs`] (the agent goes back to
    /// the pool).
    async fn start(&self, req: &AgentRequest) -> Result<(Lease, AgentReply), NodeError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut lease = self.checkout().await?;
            let reused = lease.reused;
            let first = async {
                lease.agent().send(req).await?;
                lease.agent().recv_message().await
            }
            .await;
            match first {
                Ok(AgentReply::Error { code, message }) => {
                    lease.done();
                    return Err(NodeError::Fs { code, message });
                }
                Ok(reply) => return Ok((lease, reply)),
                // Each retry retires one dead idle agent; at worst every
                // pooled one is dead, then a fresh one is started.
                Err(_) if reused && attempts <= MAX_AGENTS_PER_SANDBOX => lease.retire(),
                Err(e) => {
                    lease.retire();
                    return Err(e);
                }
            }
        }
    }

    async fn checkout(&self) -> Result<Lease, NodeError> {
        let permit = self
            .pool
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| agent_error("pool closed".into()))?;
        let reused = {
            let mut idle = self.pool.idle.lock().expect("fs idle lock poisoned");
            match idle.iter().rposition(|a| a.user == self.user) {
                Some(i) => Some(idle.remove(i)),
                None => {
                    // Room for a new agent: the busy ones hold permits, so
                    // busy + idle + this one must stay within the cap.
                    let busy = MAX_AGENTS_PER_SANDBOX - self.pool.permits.available_permits();
                    while !idle.is_empty() && busy + idle.len() > MAX_AGENTS_PER_SANDBOX - 1 {
                        idle.remove(0);
                    }
                    None
                }
            }
        };
        let (agent, reused) = match reused {
            Some(a) => (a, true),
            None => (Agent::spawn(&self.rt, &self.id, &self.user).await?, false),
        };
        Ok(Lease {
            agent: Some(agent),
            pool: self.pool.clone(),
            _permit: permit,
            reused,
            healthy: false,
        })
    }
}

/// A file's bytes, as a stream of chunks (see [`FsSession::read`]).
pub struct FsRead {
    /// The file's size when the agent opened it. Informational only: it
    /// comes from inside the sandbox.
    pub size: u64,
    inner: Pin<Box<dyn Stream<Item = Result<Bytes, NodeError>> + Send>>,
}

impl Stream for FsRead {
    type Item = Result<Bytes, NodeError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl std::fmt::Debug for FsRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsRead").field("size", &self.size).finish()
    }
}

/// Events of a watched path (see [`FsSession::watch`]). Dropping it kills
/// the watch's agent.
pub struct FsWatch {
    inner: Pin<Box<dyn Stream<Item = Result<WatchEvent, NodeError>> + Send>>,
}

impl Stream for FsWatch {
    type Item = Result<WatchEvent, NodeError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

struct ReadState {
    lease: Lease,
    left: u64,
    finished: bool,
}

impl ReadState {
    async fn next(&mut self) -> Option<Result<Bytes, NodeError>> {
        match self.lease.agent().recv().await {
            Ok(Received::Data(b)) => {
                if b.len() as u64 > self.left {
                    return Some(Err(self.lease.broken("more data than asked for")));
                }
                self.left -= b.len() as u64;
                Some(Ok(b))
            }
            Ok(Received::Message(AgentReply::Done { .. })) => {
                self.lease.done();
                None
            }
            Ok(Received::Message(AgentReply::Error { code, message })) => {
                self.lease.done();
                Some(Err(NodeError::Fs { code, message }))
            }
            Ok(Received::Message(other)) => Some(Err(self.lease.unexpected(other))),
            Err(e) => {
                self.lease.retire();
                Some(Err(e))
            }
        }
    }
}

struct WatchState {
    agent: Agent,
    pending: std::collections::VecDeque<WatchEvent>,
    finished: bool,
    _permit: OwnedSemaphorePermit,
}

impl WatchState {
    async fn next(&mut self) -> Option<Result<WatchEvent, NodeError>> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some(Ok(e));
            }
            if self.finished {
                return None;
            }
            // No timeout: events come when they come.
            match self.agent.recv_inner().await {
                Ok(Received::Message(AgentReply::Events { events })) => {
                    if events.len() > warren_proto::agent::MAX_EVENTS_PER_MESSAGE {
                        return Some(Err(agent_error("too many events in a message".into())));
                    }
                    self.pending.extend(events);
                }
                Ok(Received::Message(AgentReply::Done { .. })) => self.finished = true,
                Ok(Received::Message(AgentReply::Error { code, message })) => {
                    return Some(Err(NodeError::Fs { code, message }))
                }
                Ok(other) => return Some(Err(agent_error(format!("unexpected frame {other:?}")))),
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// A checked-out agent: exclusive until dropped. It goes back to the pool
/// only when the conversation ended cleanly ([`Lease::done`]).
struct Lease {
    agent: Option<Agent>,
    pool: Arc<Pool>,
    _permit: OwnedSemaphorePermit,
    reused: bool,
    healthy: bool,
}

impl Lease {
    fn agent(&mut self) -> &mut Agent {
        self.agent
            .as_mut()
            .expect("a lease holds its agent until dropped")
    }

    fn done(&mut self) {
        self.healthy = true;
    }

    fn retire(&mut self) {
        self.healthy = false;
        self.agent = None;
    }

    fn broken(&mut self, why: &str) -> NodeError {
        self.retire();
        agent_error(why.into())
    }

    fn unexpected(&mut self, reply: AgentReply) -> NodeError {
        match reply {
            // An error as the final answer: the agent is in sync.
            AgentReply::Error { code, message } => {
                self.done();
                NodeError::Fs { code, message }
            }
            other => self.broken(&format!("unexpected reply {}", reply_name(&other))),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let (true, Some(a)) = (self.healthy, self.agent.take()) {
            self.pool
                .idle
                .lock()
                .expect("fs idle lock poisoned")
                .push(a);
        }
    }
}

fn reply_name(r: &AgentReply) -> &'static str {
    match r {
        AgentReply::Ready { .. } => "ready",
        AgentReply::Stat { .. } => "stat",
        AgentReply::Entries { .. } => "entries",
        AgentReply::ListEnd { .. } => "list_end",
        AgentReply::ReadStart { .. } => "read_start",
        AgentReply::WriteAccepted {} => "write_accepted",
        AgentReply::Watching {} => "watching",
        AgentReply::Events { .. } => "events",
        AgentReply::Done { .. } => "done",
        AgentReply::Error { .. } => "error",
    }
}

fn agent_error(reason: String) -> NodeError {
    NodeError::FsAgent { reason }
}

#[derive(Debug)]
enum Received {
    Message(AgentReply),
    Data(Bytes),
}

/// One agent process and its pipes.
struct Agent {
    user: User,
    kill_on_drop: bool,
    exec: warren_runtime::Exec,
    tx: pipe::Sender,
    rx: BufReader<pipe::Receiver>,
}

impl Agent {
    async fn spawn(
        rt: &Arc<NativeRuntime>,
        id: &SandboxId,
        user: &User,
    ) -> Result<Agent, NodeError> {
        let cloexec = nix::fcntl::OFlag::O_CLOEXEC;
        let (in_r, in_w) = nix::unistd::pipe2(cloexec).map_err(std::io::Error::from)?;
        let (out_r, out_w) = nix::unistd::pipe2(cloexec).map_err(std::io::Error::from)?;
        for fd in [&in_w, &out_r] {
            // Best effort: a bigger pipe means fewer wake-ups per chunk.
            let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_BYTES));
        }
        let spec = ExecSpec {
            argv: vec![AGENT_ARGV0.to_string()],
            env: vec![format!("{AGENT_ENV_MARKER}={AGENT_PROTOCOL_VERSION}")],
            workdir: "/".into(),
            user: user.clone(),
            timeout: None,
        };
        let rt = rt.clone();
        let id = id.clone();
        let exec = tokio::task::spawn_blocking(move || {
            rt.exec_agent(
                &id,
                &spec,
                ExecIo::Fds {
                    stdin: Some(in_r),
                    stdout: Some(out_w),
                    stderr: None,
                },
            )
        })
        .await??;
        let mut agent = Agent {
            user: user.clone(),
            kill_on_drop: false,
            exec,
            tx: pipe::Sender::from_owned_fd(in_w)?,
            rx: BufReader::with_capacity(64 * 1024, pipe::Receiver::from_owned_fd(out_r)?),
        };
        match agent.recv_message().await? {
            AgentReply::Ready { version } if version == AGENT_PROTOCOL_VERSION => Ok(agent),
            other => Err(agent_error(format!("bad greeting {}", reply_name(&other)))),
        }
    }

    async fn send(&mut self, req: &AgentRequest) -> Result<(), NodeError> {
        let bytes = encode_message(req).map_err(|e| agent_error(format!("encode: {e}")))?;
        timed(self.tx.write_all(&bytes)).await
    }

    async fn send_data(&mut self, data: &[u8]) -> Result<(), NodeError> {
        let h = frame_header(FrameKind::Data, data.len());
        timed(async {
            self.tx.write_all(&h).await?;
            self.tx.write_all(data).await
        })
        .await
    }

    /// Whether the agent has already said something (without waiting).
    fn reply_pending(&mut self) -> Result<bool, NodeError> {
        match self.rx.fill_buf().now_or_never() {
            None => Ok(false),
            Some(Ok([])) => Err(agent_error("the agent exited".into())),
            Some(Ok(_)) => Ok(true),
            Some(Err(e)) => Err(NodeError::Io(e)),
        }
    }

    async fn recv(&mut self) -> Result<Received, NodeError> {
        match tokio::time::timeout(AGENT_FRAME_TIMEOUT, self.recv_inner()).await {
            Ok(r) => r,
            Err(_) => Err(agent_error("timed out waiting for the agent".into())),
        }
    }

    async fn recv_message(&mut self) -> Result<AgentReply, NodeError> {
        match self.recv().await? {
            Received::Message(m) => Ok(m),
            Received::Data(_) => Err(agent_error("unexpected data frame".into())),
        }
    }

    /// Reads one frame, checking its header against the protocol's caps
    /// before reading (or allocating for) the body.
    async fn recv_inner(&mut self) -> Result<Received, NodeError> {
        let mut h = [0u8; FRAME_HEADER_BYTES];
        self.rx.read_exact(&mut h).await.map_err(eof)?;
        let (kind, len) = parse_header(h).map_err(|e| agent_error(e.to_string()))?;
        let mut body = BytesMut::zeroed(len);
        self.rx.read_exact(&mut body).await.map_err(eof)?;
        match kind {
            FrameKind::Data => Ok(Received::Data(body.freeze())),
            FrameKind::Message => decode_message(&body)
                .map(Received::Message)
                .map_err(|e| agent_error(format!("malformed message: {e}"))),
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // Closing the pipes (the fields, dropped next) ends a pooled agent
        // cleanly: a write in progress removes its temporary file first. A
        // watch agent holds nothing and is killed outright.
        if self.kill_on_drop {
            let _ = self.exec.signal(libc::SIGKILL);
        }
    }
}

fn eof(e: std::io::Error) -> NodeError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        agent_error("the agent exited".into())
    } else {
        NodeError::Io(e)
    }
}

async fn timed<F>(f: F) -> Result<(), NodeError>
where
    F: std::future::Future<Output = std::io::Result<()>>,
{
    match tokio::time::timeout(AGENT_FRAME_TIMEOUT, f).await {
        Ok(r) => r.map_err(|e| {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                agent_error("the agent exited".into())
            } else {
                NodeError::Io(e)
            }
        }),
        Err(_) => Err(agent_error("timed out writing to the agent".into())),
    }
}
