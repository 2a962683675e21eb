//! Background execs: `POST /v1/sandboxes/{id}/execs` starts a command that
//! runs detached from any connection. Its output is drained continuously
//! into a bounded buffer ([`BUFFER_BYTES`]; the oldest output is dropped
//! first and counted), so the process never blocks on a full pipe. Clients
//! list execs, attach over a WebSocket (the buffered output is replayed,
//! then live output follows; stdin, signals and resizes go to the
//! process), detach by closing, attach again, fetch the buffered output
//! over plain HTTP, signal or kill them. A running background exec counts
//! as activity for `idle_timeout_secs`.
//!
//! The buffer and the live fan-out are per exec and bounded: a slow
//! attached client misses live frames (it is told how many; they stay in
//! the buffer) instead of growing the server's memory. State is in this
//! process: a restart of `warren serve` forgets background execs (their
//! processes keep running in the sandbox until it ends).

use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::broadcast;
use warren_proto::api::{
    self, BackgroundExec, BackgroundExecList, ErrorCode, SignalRequest, StreamClientMsg,
    StreamExecStart, StreamServerMsg, STREAM_STDERR, STREAM_STDIN, STREAM_STDOUT,
};
use warren_runtime::{ExitStatus, SandboxId};

use crate::auth::Auth;
use crate::sandboxes::{body, load, running, to_iso};
use crate::supervisor::now_ms;
use crate::{ApiError, AppState};

/// Output kept per background exec (stdout and stderr together).
pub const BUFFER_BYTES: usize = 1 << 20;
/// Background execs per sandbox (running or recently ended).
pub const MAX_PER_SANDBOX: usize = 64;
/// How long an ended exec stays listed with its output and exit.
const RETAIN: Duration = Duration::from_secs(600);
/// Live frames queued per attached client before it lags.
const LIVE_FRAMES: usize = 32;
/// Largest read from the process at once.
const CHUNK: usize = 64 * 1024;

#[derive(Clone, Copy, Debug)]
struct ExitInfo {
    exit_code: i32,
    signal: Option<i32>,
    timed_out: bool,
    oom_killed: bool,
}

#[derive(Clone, Debug)]
enum Frame {
    Data(u8, Bytes),
    Exit(ExitInfo),
}

#[derive(Default)]
struct Output {
    ring: VecDeque<(u8, Bytes)>,
    ring_bytes: usize,
    total: u64,
    dropped: u64,
    exit: Option<ExitInfo>,
    ended_at: Option<i64>,
}

struct BgExec {
    id: String,
    sandbox_id: String,
    pid: i32,
    command: Vec<String>,
    tty: bool,
    started_at: i64,
    out: Mutex<Output>,
    live: broadcast::Sender<Frame>,
    stdin: tokio::sync::Mutex<Option<pipe::Sender>>,
    /// The runtime's handle: signals, resizes, and the exit once the
    /// control connection turns readable.
    handle: Mutex<warren_runtime::Exec>,
}

impl BgExec {
    fn record(&self, stream: u8, data: Bytes) {
        let mut o = self.out.lock().expect("exec output lock poisoned");
        o.total += data.len() as u64;
        o.ring_bytes += data.len();
        o.ring.push_back((stream, data.clone()));
        while o.ring_bytes > BUFFER_BYTES {
            match o.ring.pop_front() {
                Some((_, d)) => {
                    o.ring_bytes -= d.len();
                    o.dropped += d.len() as u64;
                }
                None => break,
            }
        }
        // Under the lock, so an attach sees every frame exactly once.
        let _ = self.live.send(Frame::Data(stream, data));
    }

    fn finish(&self, exit: ExitInfo) {
        let mut o = self.out.lock().expect("exec output lock poisoned");
        o.exit = Some(exit);
        o.ended_at = Some(now_ms());
        let _ = self.live.send(Frame::Exit(exit));
    }

    fn view(&self) -> BackgroundExec {
        let o = self.out.lock().expect("exec output lock poisoned");
        BackgroundExec {
            id: self.id.clone(),
            sandbox_id: self.sandbox_id.clone(),
            pid: self.pid,
            command: self.command.clone(),
            tty: self.tty,
            state: if o.exit.is_some() {
                "exited"
            } else {
                "running"
            }
            .into(),
            exit_code: o.exit.map(|e| e.exit_code),
            signal: o.exit.and_then(|e| e.signal),
            timed_out: o.exit.is_some_and(|e| e.timed_out),
            oom_killed: o.exit.is_some_and(|e| e.oom_killed),
            started_at: to_iso(self.started_at),
            ended_at: o.ended_at.map(to_iso),
            output_bytes: o.total,
            output_dropped: o.dropped,
        }
    }
}

/// Every background exec of this server, by sandbox.
#[derive(Default)]
pub struct Registry {
    by_sandbox: Mutex<HashMap<String, Vec<Arc<BgExec>>>>,
}

impl Registry {
    fn get(&self, sandbox: &str, exec: &str) -> Result<Arc<BgExec>, ApiError> {
        self.by_sandbox
            .lock()
            .expect("exec registry lock poisoned")
            .get(sandbox)
            .and_then(|v| v.iter().find(|e| e.id == exec).cloned())
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::NotFound,
                    format!("no background exec {exec} in sandbox {sandbox}"),
                )
            })
    }

    fn list(&self, sandbox: &str) -> Vec<Arc<BgExec>> {
        self.by_sandbox
            .lock()
            .expect("exec registry lock poisoned")
            .get(sandbox)
            .cloned()
            .unwrap_or_default()
    }

    fn remove(&self, sandbox: &str, exec: &str) {
        let mut map = self.by_sandbox.lock().expect("exec registry lock poisoned");
        if let Some(v) = map.get_mut(sandbox) {
            v.retain(|e| e.id != exec);
            if v.is_empty() {
                map.remove(sandbox);
            }
        }
    }
}

fn new_exec_id() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    let suffix: String = (0..12)
        .map(|_| {
            let n = rng.random_range(0..36u8);
            char::from(if n < 10 { b'0' + n } else { b'a' + n - 10 })
        })
        .collect();
    format!("ex_{suffix}")
}

fn exit_info(exit: &warren_runtime::ExecExit) -> ExitInfo {
    let (exit_code, signal) = match exit.status {
        ExitStatus::Code(c) => (c, None),
        ExitStatus::Signal(s) => (128 + s, Some(s)),
    };
    ExitInfo {
        exit_code,
        signal,
        timed_out: exit.timed_out,
        oom_killed: exit.oom_killed,
    }
}

/// `POST /v1/sandboxes/{id}/execs`: starts a background exec.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/execs", tag = "execs", params(("id" = String, Path, description = "Sandbox id")),
    request_body = api::StreamExecStart,
    responses((status = 201, description = "Started", body = api::BackgroundExec),
        (status = 400, description = "invalid_argument / exec_not_found / ...", body = api::ErrorBody),
        (status = 404, description = "sandbox_not_found", body = api::ErrorBody),
        (status = 409, description = "sandbox_terminated / sandbox_not_running", body = api::ErrorBody),
        (status = 503, description = "capacity_exhausted: too many background execs", body = api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn start(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    req: Result<Json<StreamExecStart>, JsonRejection>,
) -> Result<(StatusCode, Json<BackgroundExec>), ApiError> {
    let start = body(req)?;
    let rec = running(&state, &auth, &id).await?;
    if state.execs.list(&id).len() >= MAX_PER_SANDBOX {
        return Err(ApiError::new(
            ErrorCode::CapacityExhausted,
            format!("sandbox {id} has {MAX_PER_SANDBOX} background execs; delete ended ones"),
        ));
    }
    let (spec, io) = crate::sandboxes::start_spec(&state, &rec, &start).await?;
    let sid = SandboxId::new(rec.id.clone()).map_err(|e| ApiError::internal("sandbox id", &e))?;
    let exec = state.node.start_exec(&sid, spec, io).await?;
    state
        .metrics
        .execs
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let bg = register(
        &state.supervisor,
        &rec,
        exec,
        start.command.clone(),
        start.tty.is_some(),
    )
    .map_err(|e| ApiError::internal("background exec streams", &e))?;
    Ok((StatusCode::CREATED, Json(bg.view())))
}

/// Lists `exec` as a background exec of `rec` and drains its output until
/// it exits. It counts as activity for `idle_timeout_secs`, except in a
/// sandbox that pauses when idle (`on_idle: pause`): its background execs
/// survive a pause, so a dev server left running does not keep it awake;
/// tunnel traffic, API calls and attached clients do.
fn register(
    supervisor: &crate::supervisor::Supervisor,
    rec: &warren_store::SandboxRecord,
    mut exec: warren_runtime::Exec,
    command: Vec<String>,
    tty: bool,
) -> std::io::Result<Arc<BgExec>> {
    let warren_node::ExecStreams {
        stdout: out,
        stderr: err,
        stdin,
        control,
    } = warren_node::exec_streams(&mut exec)?;
    let (live, _) = broadcast::channel(LIVE_FRAMES);
    let bg = Arc::new(BgExec {
        id: new_exec_id(),
        sandbox_id: rec.id.clone(),
        pid: exec.pid,
        command,
        tty,
        started_at: now_ms(),
        out: Mutex::default(),
        live,
        stdin: tokio::sync::Mutex::new(stdin),
        handle: Mutex::new(exec),
    });
    supervisor
        .execs
        .by_sandbox
        .lock()
        .expect("exec registry lock poisoned")
        .entry(rec.id.clone())
        .or_default()
        .push(bg.clone());
    let guard = (!rec.spec.pause_on_idle).then(|| supervisor.busy(&rec.id));
    let registry = supervisor.execs.clone();
    let span = tracing::info_span!("background_exec", sandbox_id = %rec.id, exec_id = %bg.id);
    let task_bg = bg.clone();
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            pump(&task_bg, out, err, control).await;
            drop(guard);
            // Keep the ended exec listed for a while, then forget it.
            tokio::time::sleep(RETAIN).await;
            registry.remove(&task_bg.sandbox_id, &task_bg.id);
        },
        span,
    ));
    Ok(bg)
}

/// Lists the execs a restored copy brought along (they were running when
/// its memory snapshot was taken) as its background execs, under new ids
/// and with their original commands. Those whose streams cannot be set up
/// are dropped (their processes see their input end).
pub(crate) fn adopt_restored(
    supervisor: &crate::supervisor::Supervisor,
    rec: &warren_store::SandboxRecord,
    execs: Vec<warren_runtime::RestoredExec>,
) {
    for r in execs {
        let pid = r.exec.pid;
        if let Err(e) = register(supervisor, rec, r.exec, r.argv, false) {
            tracing::warn!(sandbox_id = %rec.id, pid, error = %e, "adopting a restored exec failed");
        }
    }
}

/// Drains the process's output into the buffer until it exits.
async fn pump(
    bg: &BgExec,
    mut out: Option<pipe::Receiver>,
    mut err: Option<pipe::Receiver>,
    control: tokio::io::unix::AsyncFd<OwnedFd>,
) {
    let mut buf_out = vec![0u8; CHUNK];
    let mut buf_err = vec![0u8; CHUNK];
    loop {
        tokio::select! {
            r = read_opt(&mut out, &mut buf_out) => match r {
                Some(Ok(n)) if n > 0 => bg.record(STREAM_STDOUT, Bytes::copy_from_slice(&buf_out[..n])),
                _ => out = None,
            },
            r = read_opt(&mut err, &mut buf_err) => match r {
                Some(Ok(n)) if n > 0 => bg.record(STREAM_STDERR, Bytes::copy_from_slice(&buf_err[..n])),
                _ => err = None,
            },
            // The exec ends with its main process, even if a background
            // process it started still holds the pipes.
            r = control.readable() => {
                let Ok(mut guard) = r else {
                    bg.finish(lost());
                    return;
                };
                guard.clear_ready();
                let waited = bg.handle.lock().expect("exec handle lock poisoned").wait_timeout(Duration::ZERO);
                match waited {
                    Ok(Some(exit)) => {
                        drain(bg, &mut out, STREAM_STDOUT, &mut buf_out);
                        drain(bg, &mut err, STREAM_STDERR, &mut buf_err);
                        bg.finish(exit_info(&exit));
                        return;
                    }
                    Ok(None) => {}
                    // The sandbox ended (terminated, timed out) under it.
                    Err(warren_runtime::RuntimeError::InitGone) => {
                        tracing::debug!("the sandbox ended under a background exec");
                        bg.finish(lost());
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "lost a background exec's exit");
                        bg.finish(lost());
                        return;
                    }
                }
            }
        }
    }
}

/// Records what `r` holds right now (what the process wrote before it
/// exited), without waiting for more.
fn drain(bg: &BgExec, r: &mut Option<pipe::Receiver>, stream: u8, buf: &mut [u8]) {
    if let Some(rx) = r.as_ref() {
        let mut taken = 0;
        while taken < BUFFER_BYTES * 16 {
            match nix::unistd::read(std::os::fd::AsFd::as_fd(rx), buf) {
                Ok(n) if n > 0 => {
                    bg.record(stream, Bytes::copy_from_slice(&buf[..n]));
                    taken += n;
                }
                _ => break,
            }
        }
    }
    *r = None;
}

/// What an exec whose exit could not be read reports: killed (the sandbox
/// ended under it).
fn lost() -> ExitInfo {
    ExitInfo {
        exit_code: 137,
        signal: Some(9),
        timed_out: false,
        oom_killed: false,
    }
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

/// `GET /v1/sandboxes/{id}/execs`
#[utoipa::path(get, path = "/v1/sandboxes/{id}/execs", tag = "execs", params(("id" = String, Path, description = "Sandbox id")),
    responses((status = 200, description = "Background execs, oldest first", body = api::BackgroundExecList),
        (status = 404, description = "sandbox_not_found", body = api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<BackgroundExecList>, ApiError> {
    load(&state, &auth, &id).await?;
    Ok(Json(BackgroundExecList {
        execs: state.execs.list(&id).iter().map(|e| e.view()).collect(),
    }))
}

/// `GET /v1/sandboxes/{id}/execs/{exec_id}`
#[utoipa::path(get, path = "/v1/sandboxes/{id}/execs/{exec_id}", tag = "execs",
    params(("id" = String, Path, description = "Sandbox id"), ("exec_id" = String, Path, description = "Exec id")),
    responses((status = 200, description = "The exec", body = api::BackgroundExec),
        (status = 404, description = "sandbox_not_found / not_found", body = api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_one(
    State(state): State<AppState>,
    auth: Auth,
    Path((id, exec_id)): Path<(String, String)>,
) -> Result<Json<BackgroundExec>, ApiError> {
    load(&state, &auth, &id).await?;
    Ok(Json(state.execs.get(&id, &exec_id)?.view()))
}

/// Query of `GET .../output`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct OutputQuery {
    /// Only the last N bytes of the buffer.
    pub tail: Option<u64>,
}

/// `GET /v1/sandboxes/{id}/execs/{exec_id}/output`: the buffered output
/// (stdout and stderr interleaved as produced) as `application/octet-stream`;
/// `X-Warren-Output-Skipped` counts older bytes not included.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/execs/{exec_id}/output", tag = "execs",
    params(("id" = String, Path, description = "Sandbox id"), ("exec_id" = String, Path, description = "Exec id"), OutputQuery),
    responses((status = 200, description = "Buffered output", content_type = "application/octet-stream"),
        (status = 404, description = "sandbox_not_found / not_found", body = api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn output(
    State(state): State<AppState>,
    auth: Auth,
    Path((id, exec_id)): Path<(String, String)>,
    Query(q): Query<OutputQuery>,
) -> Result<Response, ApiError> {
    load(&state, &auth, &id).await?;
    let bg = state.execs.get(&id, &exec_id)?;
    let (mut data, mut skipped) = {
        let o = bg.out.lock().expect("exec output lock poisoned");
        let mut v = Vec::with_capacity(o.ring_bytes);
        for (_, d) in &o.ring {
            v.extend_from_slice(d);
        }
        (v, o.dropped)
    };
    if let Some(t) = q.tail {
        let keep = (t as usize).min(data.len());
        skipped += (data.len() - keep) as u64;
        data.drain(..data.len() - keep);
    }
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (
                header::HeaderName::from_static("x-warren-output-skipped"),
                skipped.to_string(),
            ),
        ],
        data,
    )
        .into_response())
}

/// `POST /v1/sandboxes/{id}/execs/{exec_id}/signal`
#[utoipa::path(post, path = "/v1/sandboxes/{id}/execs/{exec_id}/signal", tag = "execs",
    params(("id" = String, Path, description = "Sandbox id"), ("exec_id" = String, Path, description = "Exec id")),
    request_body = api::SignalRequest,
    responses((status = 202, description = "Sent"),
        (status = 400, description = "invalid_argument", body = api::ErrorBody),
        (status = 404, description = "sandbox_not_found / not_found", body = api::ErrorBody),
        (status = 409, description = "sandbox_terminated: the exec has ended", body = api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn signal(
    State(state): State<AppState>,
    auth: Auth,
    Path((id, exec_id)): Path<(String, String)>,
    req: Result<Json<SignalRequest>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let req = body(req)?;
    if !(1..=64).contains(&req.signal) {
        return Err(ApiError::invalid("signal must be between 1 and 64"));
    }
    load(&state, &auth, &id).await?;
    let bg = state.execs.get(&id, &exec_id)?;
    send_signal(&bg, req.signal)?;
    Ok(StatusCode::ACCEPTED)
}

fn send_signal(bg: &BgExec, signal: i32) -> Result<(), ApiError> {
    if bg
        .out
        .lock()
        .expect("exec output lock poisoned")
        .exit
        .is_some()
    {
        return Err(ApiError::new(
            ErrorCode::SandboxTerminated,
            format!("exec {} has ended", bg.id),
        ));
    }
    bg.handle
        .lock()
        .expect("exec handle lock poisoned")
        .signal(signal)?;
    Ok(())
}

/// `DELETE /v1/sandboxes/{id}/execs/{exec_id}`: kills a running exec
/// (SIGKILL to its process group) and forgets it.
#[utoipa::path(delete, path = "/v1/sandboxes/{id}/execs/{exec_id}", tag = "execs",
    params(("id" = String, Path, description = "Sandbox id"), ("exec_id" = String, Path, description = "Exec id")),
    responses((status = 204, description = "Killed (if running) and forgotten"),
        (status = 404, description = "sandbox_not_found / not_found", body = api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn remove(
    State(state): State<AppState>,
    auth: Auth,
    Path((id, exec_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    load(&state, &auth, &id).await?;
    let bg = state.execs.get(&id, &exec_id)?;
    if bg
        .out
        .lock()
        .expect("exec output lock poisoned")
        .exit
        .is_none()
    {
        // It may end on its own meanwhile; that is fine.
        let _ = bg
            .handle
            .lock()
            .expect("exec handle lock poisoned")
            .signal(9);
    }
    state.execs.remove(&id, &exec_id);
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/sandboxes/{id}/execs/{exec_id}/attach`: WebSocket. First an
/// `attached` frame, the buffered output as binary frames, then live
/// output; the client sends stdin and control frames as for the streaming
/// exec. Closing detaches (the process keeps running).
#[utoipa::path(get, path = "/v1/sandboxes/{id}/execs/{exec_id}/attach", tag = "execs",
    params(("id" = String, Path, description = "Sandbox id"), ("exec_id" = String, Path, description = "Exec id")),
    responses((status = 101, description = "WebSocket: see docs/api.md"),
        (status = 404, description = "sandbox_not_found / not_found", body = api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn attach(
    State(state): State<AppState>,
    auth: Auth,
    Path((id, exec_id)): Path<(String, String)>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let _ = &state;
    load(&state, &auth, &id).await?;
    let bg = state.execs.get(&id, &exec_id)?;
    Ok(ws
        .max_message_size(4 << 20)
        .on_upgrade(move |mut socket| async move {
            // An attached client is activity, also where the exec is not.
            let _busy = state.supervisor.busy(&id);
            if attach_session(&bg, &mut socket).await.is_ok() {
                let _ = socket.send(Message::Close(None)).await;
            }
        }))
}

async fn send_json(ws: &mut WebSocket, m: &StreamServerMsg) -> Result<(), ()> {
    let text = serde_json::to_string(m).map_err(|_| ())?;
    ws.send(Message::Text(text.into())).await.map_err(|_| ())
}

async fn send_data(ws: &mut WebSocket, stream: u8, data: &[u8]) -> Result<(), ()> {
    let mut frame = Vec::with_capacity(data.len() + 1);
    frame.push(stream);
    frame.extend_from_slice(data);
    ws.send(Message::Binary(frame.into())).await.map_err(|_| ())
}

fn exit_msg(e: ExitInfo) -> StreamServerMsg {
    StreamServerMsg::Exit {
        exit_code: e.exit_code,
        signal: e.signal,
        timed_out: e.timed_out,
        oom_killed: e.oom_killed,
    }
}

async fn attach_session(bg: &BgExec, ws: &mut WebSocket) -> Result<(), ()> {
    // Snapshot and subscribe under the lock: no frame is missed or doubled.
    let (replay, skipped, exit, mut rx) = {
        let o = bg.out.lock().expect("exec output lock poisoned");
        (o.ring.clone(), o.dropped, o.exit, bg.live.subscribe())
    };
    send_json(
        ws,
        &StreamServerMsg::Attached {
            exec_id: bg.id.clone(),
            pid: bg.pid,
            skipped,
        },
    )
    .await?;
    for (stream, data) in replay {
        send_data(ws, stream, &data).await?;
    }
    if let Some(e) = exit {
        return send_json(ws, &exit_msg(e)).await;
    }
    loop {
        tokio::select! {
            f = rx.recv() => match f {
                Ok(Frame::Data(stream, data)) => send_data(ws, stream, &data).await?,
                Ok(Frame::Exit(e)) => return send_json(ws, &exit_msg(e)).await,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    send_json(ws, &StreamServerMsg::Lagged { skipped: n }).await?
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
            m = ws.recv() => match m {
                Some(Ok(Message::Binary(b))) => {
                    if b.first() == Some(&STREAM_STDIN) && b.len() > 1 {
                        let mut stdin = bg.stdin.lock().await;
                        if let Some(w) = stdin.as_mut() {
                            if w.write_all(&b[1..]).await.is_err() {
                                *stdin = None;
                            }
                        }
                    }
                }
                Some(Ok(Message::Text(t))) => match serde_json::from_str::<StreamClientMsg>(&t) {
                    Ok(StreamClientMsg::StdinEof {}) => *bg.stdin.lock().await = None,
                    Ok(StreamClientMsg::Signal { signal }) => {
                        if let Err(e) = send_signal(bg, signal) {
                            send_json(ws, &StreamServerMsg::Error { code: e.code.as_str().into(), message: e.message }).await?;
                        }
                    }
                    Ok(StreamClientMsg::Resize { rows, cols }) => {
                        if bg.tty {
                            let _ = bg.handle.lock().expect("exec handle lock poisoned").resize(rows, cols);
                        }
                    }
                    Err(e) => {
                        send_json(ws, &StreamServerMsg::Error { code: "invalid_json".into(), message: e.to_string() }).await?;
                    }
                },
                // Detach: the exec keeps running.
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Err(()),
                Some(Ok(_)) => {}
            },
        }
    }
}
