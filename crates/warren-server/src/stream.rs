//! `GET /v1/sandboxes/{id}/exec/stream`: an exec over a WebSocket with
//! stdin, stdout and stderr as frames, signals, terminal resize and an exit
//! frame. Back-pressure both ways: output is read from the process only as
//! fast as the WebSocket accepts it, stdin is read from the WebSocket only
//! as fast as the process accepts it.
//!
//! Stdin waits in a small queue ([`STDIN_QUEUE`]) while the process is not
//! reading; the WebSocket is not read while the queue is full, so the
//! client's sends block (TCP flow control) instead of the server's memory
//! growing. Output keeps flowing meanwhile: a process like `cat` that
//! writes while its input is still arriving never deadlocks. A control
//! frame (signal, resize, EOF) sent behind more stdin than the queue holds
//! waits until the process reads that stdin or exits (exec timeouts and
//! terminate still end it).

use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::Response;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use warren_proto::api::{
    self, ErrorCode, StreamClientMsg, StreamExecStart, StreamServerMsg, STREAM_STDERR,
    STREAM_STDIN, STREAM_STDOUT,
};
use warren_runtime::{ExitStatus, SandboxId};
use warren_store::SandboxState;

use crate::auth::Auth;
use crate::{ApiError, AppState};

/// Largest frame of output sent at once.
const CHUNK: usize = 64 * 1024;

/// Most stdin bytes queued for a process that is not reading them; beyond
/// this the WebSocket is not read (plus one frame, at most 4 MiB).
const STDIN_QUEUE: usize = 1024 * 1024;

/// Longest wait for the client's start message.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// WebSocket upgrade; see docs/api.md for the frame protocol.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/exec/stream", tag = "sandboxes", params(("id" = String, Path, description = "Sandbox id")),
    responses((status = 101, description = "WebSocket: first text frame StreamExecStart, then frames as in docs/api.md"),
        (status = 404, description = "sandbox_not_found", body = api::ErrorBody), (status = 409, description = "sandbox_terminated", body = api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn exec_stream(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let mut rec = state
        .store
        .get_sandbox(&auth.0.workspace_id, &id)
        .await?
        .ok_or_else(|| ApiError::not_found(&id))?;
    if rec.state == SandboxState::Paused {
        // auto_resume, or sandbox_paused.
        rec = crate::sandboxes::running(&state, &auth, &id).await?;
    }
    if rec.state != SandboxState::Running {
        return Err(ApiError::new(
            ErrorCode::SandboxTerminated,
            format!("sandbox {id} is not running"),
        ));
    }
    Ok(ws
        .max_message_size(4 << 20)
        .on_upgrade(move |socket| async move {
            let mut socket = socket;
            if let Err(e) = session(&state, &rec, &mut socket).await {
                let msg = StreamServerMsg::Error {
                    code: e.code.as_str().to_string(),
                    message: e.message,
                };
                let _ = send_json(&mut socket, &msg).await;
            }
            let _ = socket.send(Message::Close(None)).await;
            // Read what the client still sends until it closes too (bounded):
            // dropping a socket with unread data makes the kernel reset the
            // connection, and the client could lose the final frames.
            let drain = async {
                while let Some(Ok(m)) = socket.recv().await {
                    if matches!(m, Message::Close(_)) {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
        }))
}

async fn send_json(ws: &mut WebSocket, m: &StreamServerMsg) -> Result<(), ApiError> {
    let text = serde_json::to_string(m).map_err(|e| ApiError::internal("encode frame", &e))?;
    ws.send(Message::Text(text.into()))
        .await
        .map_err(|_| ApiError::new(ErrorCode::Internal, "client went away"))
}

async fn session(
    state: &AppState,
    rec: &warren_store::SandboxRecord,
    ws: &mut WebSocket,
) -> Result<(), ApiError> {
    let start = match tokio::time::timeout(START_TIMEOUT, ws.recv()).await {
        Ok(Some(Ok(Message::Text(t)))) => serde_json::from_str::<StreamExecStart>(&t)
            .map_err(|e| ApiError::new(ErrorCode::InvalidJson, e.to_string()))?,
        _ => return Err(ApiError::invalid("expected a JSON start message first")),
    };
    let (spec, io) = crate::sandboxes::start_spec(state, rec, &start).await?;
    let sid = SandboxId::new(rec.id.clone()).map_err(|e| ApiError::internal("sandbox id", &e))?;
    let _busy = state.supervisor.busy(&rec.id);
    state
        .metrics
        .execs
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut exec = state.node.start_exec(&sid, spec, io).await?;
    send_json(ws, &StreamServerMsg::Started { pid: exec.pid }).await?;

    let io_err = |e: std::io::Error| ApiError::internal("exec streams", &e);
    let warren_node::ExecStreams {
        stdout: mut out,
        stderr: mut err,
        mut stdin,
        control,
    } = warren_node::exec_streams(&mut exec).map_err(io_err)?;
    let mut buf_out = vec![0u8; CHUNK];
    let mut buf_err = vec![0u8; CHUNK];
    let mut client_open = true;
    // Stdin frames not yet written to the process, and the offset written
    // of the first one.
    let mut queued: std::collections::VecDeque<axum::body::Bytes> = Default::default();
    let mut queued_bytes = 0usize;
    let mut written = 0usize;
    // An EOF asked for while stdin was still queued: close after the queue.
    let mut eof_pending = false;

    loop {
        tokio::select! {
            r = read_opt(&mut out, &mut buf_out) => match r {
                Some(Ok(n)) if n > 0 => send_data(ws, STREAM_STDOUT, &buf_out[..n]).await?,
                // EOF, or EIO from a terminal whose process exited.
                _ => out = None,
            },
            r = read_opt(&mut err, &mut buf_err) => match r {
                Some(Ok(n)) if n > 0 => send_data(ws, STREAM_STDERR, &buf_err[..n]).await?,
                _ => err = None,
            },
            r = write_front(&mut stdin, &queued, written), if !queued.is_empty() => match r {
                Ok(n) => {
                    written += n;
                    if written == queued[0].len() {
                        queued_bytes -= written;
                        written = 0;
                        queued.pop_front();
                        if queued.is_empty() && eof_pending {
                            stdin = None;
                        }
                    }
                }
                // The process closed its stdin (or has none): drop the rest.
                Err(_) => {
                    stdin = None;
                    queued.clear();
                    queued_bytes = 0;
                    written = 0;
                }
            },
            m = ws.recv(), if client_open && queued_bytes < STDIN_QUEUE => match m {
                Some(Ok(Message::Binary(b))) => {
                    if b.first() == Some(&STREAM_STDIN) && b.len() > 1 && stdin.is_some() && !eof_pending {
                        let data = b.slice(1..);
                        queued_bytes += data.len();
                        queued.push_back(data);
                    }
                }
                Some(Ok(Message::Text(t))) => match serde_json::from_str::<StreamClientMsg>(&t) {
                    Ok(StreamClientMsg::StdinEof {}) => {
                        if queued.is_empty() {
                            stdin = None;
                        } else {
                            eof_pending = true;
                        }
                    }
                    Ok(StreamClientMsg::Signal { signal }) => {
                        exec.signal(signal)?;
                    }
                    Ok(StreamClientMsg::Resize { rows, cols }) => {
                        if exec.pty.is_some() {
                            exec.resize(rows, cols)?;
                        }
                    }
                    Err(e) => return Err(ApiError::new(ErrorCode::InvalidJson, e.to_string())),
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    // The client is gone: stop the process rather than leave
                    // it running unattended.
                    client_open = false;
                    let _ = exec.signal(libc_sigkill());
                }
                Some(Ok(_)) => {}
            },
            // The exit can come while output is still open: a background
            // process the command started may hold the pipes or the
            // terminal. The exec ends with its main process.
            r = control.readable() => {
                let mut guard = r.map_err(io_err)?;
                guard.clear_ready();
                if let Some(exit) = exec.wait_timeout(Duration::ZERO)? {
                    // What the process wrote before exiting is in the pipes.
                    if client_open {
                        drain(ws, &mut out, STREAM_STDOUT, &mut buf_out).await?;
                        drain(ws, &mut err, STREAM_STDERR, &mut buf_err).await?;
                    }
                    let (exit_code, signal) = match exit.status {
                        ExitStatus::Code(c) => (c, None),
                        ExitStatus::Signal(s) => (128 + s, Some(s)),
                    };
                    if exit.timed_out {
                        state.metrics.execs_timed_out.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    if client_open {
                        send_json(ws, &StreamServerMsg::Exit {
                            exit_code,
                            signal,
                            timed_out: exit.timed_out,
                            oom_killed: exit.oom_killed,
                        }).await?;
                    }
                    return Ok(());
                }
            }
        }
    }
}

/// Most output forwarded after the process exited (a background process
/// may still be writing).
const DRAIN_LIMIT: usize = 16 << 20;

/// Sends what `r` holds right now, without waiting for more.
async fn drain(
    ws: &mut WebSocket,
    r: &mut Option<pipe::Receiver>,
    stream: u8,
    buf: &mut [u8],
) -> Result<(), ApiError> {
    let Some(rx) = r.as_mut() else { return Ok(()) };
    let mut sent = 0;
    while sent < DRAIN_LIMIT {
        // A direct read of the non-blocking descriptor: tokio's try_read
        // would answer WouldBlock until its reactor has seen readiness.
        match nix::unistd::read(std::os::fd::AsFd::as_fd(rx), buf) {
            Ok(n) if n > 0 => {
                send_data(ws, stream, &buf[..n]).await?;
                sent += n;
            }
            // EOF, nothing buffered (WouldBlock), or EIO from a terminal.
            _ => break,
        }
    }
    *r = None;
    Ok(())
}

/// Writes what it can of the first queued stdin frame (cancel-safe: one
/// `write`).
async fn write_front(
    w: &mut Option<pipe::Sender>,
    queued: &std::collections::VecDeque<axum::body::Bytes>,
    written: usize,
) -> std::io::Result<usize> {
    match (w, queued.front()) {
        (Some(w), Some(front)) => w.write(&front[written..]).await,
        _ => Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe)),
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

async fn send_data(ws: &mut WebSocket, stream: u8, data: &[u8]) -> Result<(), ApiError> {
    let mut frame = Vec::with_capacity(data.len() + 1);
    frame.push(stream);
    frame.extend_from_slice(data);
    ws.send(Message::Binary(frame.into()))
        .await
        .map_err(|_| ApiError::new(ErrorCode::Internal, "client went away"))
}

/// SIGKILL: what a process whose client went away gets.
fn libc_sigkill() -> i32 {
    9
}
