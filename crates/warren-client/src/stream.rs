//! Streaming exec: `GET /v1/sandboxes/{id}/exec/stream` over a WebSocket.
//!
//! [`Client::exec_stream`] connects, sends the [`StreamExecStart`] frame and
//! waits for `started`. The returned [`ExecStream`] sends stdin, `stdin_eof`,
//! signals and resizes, and yields [`StreamEvent`]s until the `exit` frame.
//! [`ExecStream::split`] gives an [`ExecInput`] and an [`ExecOutput`] that can
//! be driven from different tasks, so a slow stdin never stalls the output.
//!
//! Wire format (see `docs/api.md`): binary frames carry one stream id byte
//! ([`STREAM_STDIN`], [`STREAM_STDOUT`], [`STREAM_STDERR`]) and then data;
//! text frames are [`StreamClientMsg`] and [`StreamServerMsg`] JSON. An
//! `error` frame becomes [`ClientError::Stream`] carrying the server's code.

use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use reqwest::{StatusCode, Url};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use warren_proto::api::{
    StreamClientMsg, StreamExecStart, StreamServerMsg, STREAM_STDERR, STREAM_STDIN, STREAM_STDOUT,
};

use crate::{Client, ClientError, CONNECT_TIMEOUT};

/// How long the server may take to answer the start frame with `started`
/// (the server's own limit on the start frame is 30 s).
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Largest frame accepted from the server; it sends at most 64 KiB of data
/// per frame, so this only bounds a misbehaving peer.
pub const MAX_FRAME: usize = 1 << 20;

/// Largest stdin payload sent in one frame; longer writes are split. The
/// server accepts messages up to 4 MiB.
pub const MAX_STDIN_FRAME: usize = 64 * 1024;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How an exec ended (the `exit` frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecExit {
    /// Shell-style: the exit code, or 128 + signal.
    pub exit_code: i32,
    /// The signal that killed the process, if one did.
    pub signal: Option<i32>,
    /// The exec's `timeout_secs` passed and the process was killed.
    pub timed_out: bool,
    /// The kernel's OOM killer ended the process.
    pub oom_killed: bool,
}

/// One thing that happened on a streaming exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// Output on stdout (or the terminal, for TTY execs).
    Stdout(Bytes),
    /// Output on stderr (never sent for TTY execs).
    Stderr(Bytes),
    /// The process ended; no event follows.
    Exit(ExecExit),
}

impl Client {
    /// Starts `start` in sandbox `id` over the streaming endpoint and waits
    /// for the server's `started` frame. Errors before the upgrade (unknown
    /// sandbox, bad token, ...) and `error` frames keep the server's code.
    pub async fn exec_stream(
        &self,
        id: &str,
        start: &StreamExecStart,
    ) -> Result<ExecStream, ClientError> {
        self.open_exec_stream(id, start, true).await
    }

    /// Like [`Client::exec_stream`] for a process that gets no input: its
    /// stdin is closed by a `stdin_eof` sent right behind the start frame,
    /// so the server has read it long before the process can exit.
    /// (Anything still unread when the server closes makes its kernel reset
    /// the connection, which can drop the final frames.)
    pub async fn exec_stream_without_stdin(
        &self,
        id: &str,
        start: &StreamExecStart,
    ) -> Result<ExecStream, ClientError> {
        self.open_exec_stream(id, start, false).await
    }

    /// Attaches to background exec `exec_id` of sandbox `id`: its buffered
    /// output arrives first, then live output; stdin, signals and resizes
    /// reach the process. Dropping the stream detaches (the exec keeps
    /// running).
    pub async fn attach_exec(&self, id: &str, exec_id: &str) -> Result<ExecStream, ClientError> {
        self.open_ws(
            &["v1", "sandboxes", id, "execs", exec_id, "attach"],
            None,
            true,
        )
        .await
    }

    async fn open_exec_stream(
        &self,
        id: &str,
        start: &StreamExecStart,
        stdin: bool,
    ) -> Result<ExecStream, ClientError> {
        self.open_ws(
            &["v1", "sandboxes", id, "exec", "stream"],
            Some(start),
            stdin,
        )
        .await
    }

    async fn open_ws(
        &self,
        segments: &[&str],
        start: Option<&StreamExecStart>,
        stdin: bool,
    ) -> Result<ExecStream, ClientError> {
        let url = ws_url(self.endpoint(segments)?)?;
        let mut req = url
            .as_str()
            .into_client_request()
            .map_err(|e| self.ws_error(e))?;
        let bearer = HeaderValue::from_str(&format!("Bearer {}", self.token)).map_err(|_| {
            ClientError::InvalidToken {
                reason: "it contains characters not allowed in an HTTP header".into(),
            }
        })?;
        req.headers_mut().insert("authorization", bearer);
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_FRAME))
            .max_frame_size(Some(MAX_FRAME));
        let connect = tokio_tungstenite::connect_async_with_config(req, Some(config), true);
        let (mut ws, _resp) = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(r) => r.map_err(|e| self.ws_error(e))?,
            Err(_) => return Err(self.timeout_error("connecting")),
        };
        if let Some(start) = start {
            let text = serde_json::to_string(start).map_err(ClientError::Encode)?;
            ws.send(Message::Text(text.into()))
                .await
                .map_err(|e| self.ws_error(e))?;
        }
        if !stdin {
            let eof = serde_json::to_string(&StreamClientMsg::StdinEof {})
                .map_err(ClientError::Encode)?;
            ws.send(Message::Text(eof.into()))
                .await
                .map_err(|e| self.ws_error(e))?;
        }
        let mut output = ExecOutput {
            ws: None,
            base: self.base.to_string(),
            done: false,
        };
        // Wait for `started`; an error frame or close before it is the
        // reason the exec could not start.
        let pid = match tokio::time::timeout(START_TIMEOUT, output.started(&mut ws)).await {
            Ok(r) => r?,
            Err(_) => return Err(self.timeout_error("waiting for the exec to start")),
        };
        let (sink, stream) = ws.split();
        output.ws = Some(stream);
        Ok(ExecStream {
            pid,
            input: ExecInput {
                sink,
                base: self.base.to_string(),
                stdin_closed: !stdin,
            },
            output,
        })
    }

    fn ws_error(&self, e: tungstenite::Error) -> ClientError {
        ws_error(self.base.as_str(), e)
    }

    fn timeout_error(&self, what: &str) -> ClientError {
        ClientError::Stream {
            code: "timeout".into(),
            message: format!("timed out {what} (streaming exec at {})", self.base),
        }
    }
}

/// The WebSocket URL for an HTTP one: `http` → `ws`, `https` → `wss`.
fn ws_url(mut url: Url) -> Result<Url, ClientError> {
    let scheme = match url.scheme() {
        "http" => "ws",
        "https" => "wss",
        other => {
            return Err(ClientError::InvalidUrl {
                url: url.to_string(),
                reason: format!("cannot stream over {other}"),
            })
        }
    };
    url.set_scheme(scheme)
        .map_err(|()| ClientError::InvalidUrl {
            url: url.to_string(),
            reason: "cannot switch the scheme to a WebSocket one".into(),
        })?;
    Ok(url)
}

/// Maps a WebSocket failure: a refused upgrade becomes the API error in its
/// body, anything else a transport-level [`ClientError::WebSocket`].
fn ws_error(base: &str, e: tungstenite::Error) -> ClientError {
    match e {
        tungstenite::Error::Http(resp) => {
            let status =
                StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            ClientError::from_response(status, resp.body().as_deref().unwrap_or_default())
        }
        other => ClientError::WebSocket {
            url: base.to_string(),
            source: Box::new(other),
        },
    }
}

/// A running streaming exec. Use the methods directly from one task, or
/// [`split`](ExecStream::split) it to write and read concurrently.
#[derive(Debug)]
pub struct ExecStream {
    pid: i32,
    input: ExecInput,
    output: ExecOutput,
}

impl ExecStream {
    /// The process id inside the sandbox (from `started`).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// See [`ExecInput::send_stdin`].
    pub async fn send_stdin(&mut self, data: &[u8]) -> Result<(), ClientError> {
        self.input.send_stdin(data).await
    }

    /// See [`ExecInput::close_stdin`].
    pub async fn close_stdin(&mut self) -> Result<(), ClientError> {
        self.input.close_stdin().await
    }

    /// See [`ExecInput::signal`].
    pub async fn signal(&mut self, signal: i32) -> Result<(), ClientError> {
        self.input.signal(signal).await
    }

    /// See [`ExecInput::resize`].
    pub async fn resize(&mut self, rows: u16, cols: u16) -> Result<(), ClientError> {
        self.input.resize(rows, cols).await
    }

    /// See [`ExecOutput::next_event`].
    pub async fn next_event(&mut self) -> Result<Option<StreamEvent>, ClientError> {
        self.output.next_event().await
    }

    /// Reads events until the exit, passing output to `on_output(is_stderr,
    /// bytes)`; returns how the process ended.
    pub async fn wait_with(
        &mut self,
        on_output: impl FnMut(bool, &[u8]),
    ) -> Result<ExecExit, ClientError> {
        self.output.wait_with(on_output).await
    }

    /// The sending and the receiving half.
    pub fn split(self) -> (ExecInput, ExecOutput) {
        (self.input, self.output)
    }
}

/// The sending half of an [`ExecStream`]. Dropping it (with the output
/// half) closes the connection, and the server kills the process.
#[derive(Debug)]
pub struct ExecInput {
    sink: SplitSink<Ws, Message>,
    base: String,
    stdin_closed: bool,
}

impl ExecInput {
    /// Sends bytes to the process's stdin (or the terminal), in frames of
    /// at most [`MAX_STDIN_FRAME`]. Waits while the server applies
    /// back-pressure.
    pub async fn send_stdin(&mut self, data: &[u8]) -> Result<(), ClientError> {
        for chunk in data.chunks(MAX_STDIN_FRAME) {
            let mut frame = Vec::with_capacity(chunk.len() + 1);
            frame.push(STREAM_STDIN);
            frame.extend_from_slice(chunk);
            self.send(Message::Binary(frame.into())).await?;
        }
        Ok(())
    }

    /// Closes the process's stdin (`stdin_eof`). Only the first call sends.
    pub async fn close_stdin(&mut self) -> Result<(), ClientError> {
        if self.stdin_closed {
            return Ok(());
        }
        self.stdin_closed = true;
        self.control(&StreamClientMsg::StdinEof {}).await
    }

    /// Delivers `signal` (e.g. 2 for SIGINT) to the process group.
    pub async fn signal(&mut self, signal: i32) -> Result<(), ClientError> {
        self.control(&StreamClientMsg::Signal { signal }).await
    }

    /// Resizes the terminal of a TTY exec (ignored otherwise).
    pub async fn resize(&mut self, rows: u16, cols: u16) -> Result<(), ClientError> {
        self.control(&StreamClientMsg::Resize { rows, cols }).await
    }

    /// Closes the WebSocket. The server kills a process still running.
    pub async fn close(&mut self) -> Result<(), ClientError> {
        self.sink.close().await.map_err(|e| ws_error(&self.base, e))
    }

    async fn control(&mut self, m: &StreamClientMsg) -> Result<(), ClientError> {
        let text = serde_json::to_string(m).map_err(ClientError::Encode)?;
        self.send(Message::Text(text.into())).await
    }

    async fn send(&mut self, m: Message) -> Result<(), ClientError> {
        self.sink.send(m).await.map_err(|e| ws_error(&self.base, e))
    }
}

/// The receiving half of an [`ExecStream`].
#[derive(Debug)]
pub struct ExecOutput {
    ws: Option<SplitStream<Ws>>,
    base: String,
    done: bool,
}

/// One decoded server frame.
enum Frame {
    Event(StreamEvent),
    Started(i32),
    Skip,
}

impl ExecOutput {
    /// The next output or the exit; `Ok(None)` after the exit was returned.
    /// Cancel-safe: usable as a `tokio::select!` branch.
    pub async fn next_event(&mut self) -> Result<Option<StreamEvent>, ClientError> {
        if self.done {
            return Ok(None);
        }
        let Some(ws) = self.ws.as_mut() else {
            return Ok(None);
        };
        loop {
            let msg = ws.next().await;
            match decode(&self.base, msg)? {
                Frame::Event(ev) => {
                    if matches!(ev, StreamEvent::Exit(_)) {
                        self.done = true;
                    }
                    return Ok(Some(ev));
                }
                Frame::Started(_) | Frame::Skip => {}
            }
        }
    }

    /// Reads events until the exit, passing output to `on_output(is_stderr,
    /// bytes)`; returns how the process ended.
    pub async fn wait_with(
        &mut self,
        mut on_output: impl FnMut(bool, &[u8]),
    ) -> Result<ExecExit, ClientError> {
        loop {
            match self.next_event().await? {
                Some(StreamEvent::Stdout(b)) => on_output(false, &b),
                Some(StreamEvent::Stderr(b)) => on_output(true, &b),
                Some(StreamEvent::Exit(e)) => return Ok(e),
                None => return Err(closed_early(&self.base)),
            }
        }
    }

    /// Reads frames on the unsplit socket until `started`.
    async fn started(&mut self, ws: &mut Ws) -> Result<i32, ClientError> {
        loop {
            match decode(&self.base, ws.next().await)? {
                Frame::Started(pid) => return Ok(pid),
                Frame::Event(StreamEvent::Exit(_)) => {
                    return Err(ClientError::Stream {
                        code: "bad_response".into(),
                        message: "the server sent exit before started".into(),
                    })
                }
                // Output cannot precede `started`; tolerate it anyway.
                Frame::Event(_) | Frame::Skip => {}
            }
        }
    }
}

fn closed_early(base: &str) -> ClientError {
    ClientError::Stream {
        code: "stream_closed".into(),
        message: format!("the server at {base} closed the exec stream before the exit"),
    }
}

fn decode(
    base: &str,
    msg: Option<Result<Message, tungstenite::Error>>,
) -> Result<Frame, ClientError> {
    match msg {
        None | Some(Ok(Message::Close(_))) => Err(closed_early(base)),
        Some(Err(e)) => Err(ws_error(base, e)),
        Some(Ok(Message::Binary(b))) => match b.first() {
            Some(&STREAM_STDOUT) => Ok(Frame::Event(StreamEvent::Stdout(b.slice(1..)))),
            Some(&STREAM_STDERR) => Ok(Frame::Event(StreamEvent::Stderr(b.slice(1..)))),
            // Unknown streams are ignored for forward compatibility.
            _ => Ok(Frame::Skip),
        },
        Some(Ok(Message::Text(t))) => match serde_json::from_str::<StreamServerMsg>(&t) {
            Ok(StreamServerMsg::Started { pid }) | Ok(StreamServerMsg::Attached { pid, .. }) => {
                Ok(Frame::Started(pid))
            }
            // Missed live frames of an attach (still in the server's buffer).
            Ok(StreamServerMsg::Lagged { .. }) => Ok(Frame::Skip),
            Ok(StreamServerMsg::Exit {
                exit_code,
                signal,
                timed_out,
                oom_killed,
            }) => Ok(Frame::Event(StreamEvent::Exit(ExecExit {
                exit_code,
                signal,
                timed_out,
                oom_killed,
            }))),
            Ok(StreamServerMsg::Error { code, message }) => {
                Err(ClientError::Stream { code, message })
            }
            Err(source) => Err(ClientError::BadFrame { source }),
        },
        // Pings are answered by tungstenite itself.
        Some(Ok(_)) => Ok(Frame::Skip),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ws_urls_follow_the_http_scheme() {
        let u = ws_url(Url::parse("http://127.0.0.1:7070/v1/x").unwrap()).unwrap();
        assert_eq!(u.as_str(), "ws://127.0.0.1:7070/v1/x");
        let u = ws_url(Url::parse("https://w.example/base/v1/x").unwrap()).unwrap();
        assert_eq!(u.as_str(), "wss://w.example/base/v1/x");
    }

    fn frame(m: Message) -> Result<Frame, ClientError> {
        decode("http://x", Some(Ok(m)))
    }

    #[test]
    fn frames_decode_to_events() {
        let out = frame(Message::Binary(Bytes::from_static(b"\x01hi"))).unwrap();
        assert!(matches!(out, Frame::Event(StreamEvent::Stdout(b)) if &b[..] == b"hi"));
        let err = frame(Message::Binary(Bytes::from_static(b"\x02oops"))).unwrap();
        assert!(matches!(err, Frame::Event(StreamEvent::Stderr(b)) if &b[..] == b"oops"));
        assert!(matches!(
            frame(Message::Binary(Bytes::new())).unwrap(),
            Frame::Skip
        ));
        let exit = frame(Message::Text(
            r#"{"type":"exit","exit_code":137,"signal":9,"timed_out":false,"oom_killed":true}"#
                .into(),
        ))
        .unwrap();
        assert!(matches!(
            exit,
            Frame::Event(StreamEvent::Exit(ExecExit {
                exit_code: 137,
                signal: Some(9),
                timed_out: false,
                oom_killed: true
            }))
        ));
        assert!(matches!(
            frame(Message::Text(r#"{"type":"started","pid":7}"#.into())).unwrap(),
            Frame::Started(7)
        ));
    }

    #[test]
    fn error_frames_keep_the_server_code() {
        let e = frame(Message::Text(
            r#"{"type":"error","code":"exec_not_found","message":"no such program: nope"}"#.into(),
        ))
        .err()
        .unwrap();
        assert_eq!(e.code(), "exec_not_found");
        assert_eq!(e.to_string(), "no such program: nope");
        let e = frame(Message::Text("{".into())).err().unwrap();
        assert_eq!(e.code(), "bad_response");
        let e = decode("http://x", None).err().unwrap();
        assert_eq!(e.code(), "stream_closed");
    }

    /// A fake server: checks the bearer header, echoes stdin to stdout in
    /// upper case, reports `stdin_eof` on stderr and then exits with 3.
    #[tokio::test]
    #[allow(clippy::result_large_err)] // the handshake callback's signature
    async fn a_session_against_a_fake_server() {
        use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (tcp, _) = l.accept().await.unwrap();
            let mut auth = None;
            let mut path = None;
            let mut ws =
                tokio_tungstenite::accept_hdr_async(tcp, |req: &Request, resp: Response| {
                    auth = req.headers().get("authorization").cloned();
                    path = Some(req.uri().path().to_string());
                    Ok(resp)
                })
                .await
                .unwrap();
            let Some(Ok(Message::Text(start))) = ws.next().await else {
                panic!("no start frame")
            };
            let start: StreamExecStart = serde_json::from_str(&start).unwrap();
            ws.send(Message::Text(r#"{"type":"started","pid":42}"#.into()))
                .await
                .unwrap();
            let mut signals = Vec::new();
            while let Some(Ok(m)) = ws.next().await {
                match m {
                    Message::Binary(b) => {
                        assert_eq!(b[0], STREAM_STDIN);
                        let mut out = vec![STREAM_STDOUT];
                        out.extend(b[1..].to_ascii_uppercase());
                        ws.send(Message::Binary(out.into())).await.unwrap();
                    }
                    Message::Text(t) => match serde_json::from_str(&t).unwrap() {
                        StreamClientMsg::StdinEof {} => break,
                        StreamClientMsg::Signal { signal } => signals.push(signal),
                        StreamClientMsg::Resize { .. } => {}
                    },
                    _ => {}
                }
            }
            ws.send(Message::Binary(b"\x02eof".to_vec().into()))
                .await
                .unwrap();
            ws.send(Message::Text(
                r#"{"type":"exit","exit_code":3,"signal":null,"timed_out":false,"oom_killed":false}"#
                    .into(),
            ))
            .await
            .unwrap();
            let _ = ws.close(None).await;
            (auth, path, start, signals)
        });
        let c = Client::new(&url, "tok").unwrap();
        let start = StreamExecStart {
            command: vec!["cat".into()],
            ..Default::default()
        };
        let s = c.exec_stream("sb-1", &start).await.unwrap();
        assert_eq!(s.pid(), 42);
        let (mut input, mut output) = s.split();
        input.send_stdin(b"hello").await.unwrap();
        assert_eq!(
            output.next_event().await.unwrap(),
            Some(StreamEvent::Stdout(Bytes::from_static(b"HELLO")))
        );
        input.signal(15).await.unwrap();
        input.close_stdin().await.unwrap();
        input.close_stdin().await.unwrap();
        let mut err = Vec::new();
        let exit = output
            .wait_with(|is_err, b| {
                assert!(is_err);
                err.extend_from_slice(b)
            })
            .await
            .unwrap();
        assert_eq!(err, b"eof");
        assert_eq!(exit.exit_code, 3);
        assert_eq!(output.next_event().await.unwrap(), None);
        let (auth, path, got, signals) = server.await.unwrap();
        assert_eq!(auth.unwrap(), "Bearer tok");
        assert_eq!(path.unwrap(), "/v1/sandboxes/sb-1/exec/stream");
        assert_eq!(got, start);
        assert_eq!(signals, vec![15]);
    }

    #[tokio::test]
    async fn a_refused_upgrade_keeps_the_api_error() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            let body = r#"{"error":{"code":"sandbox_not_found","message":"no sandbox sb-1"}}"#;
            let resp = format!(
                "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            s.write_all(resp.as_bytes()).await.unwrap();
            s.shutdown().await.unwrap();
        });
        let c = Client::new(&url, "tok").unwrap();
        let e = c
            .exec_stream("sb-1", &StreamExecStart::default())
            .await
            .unwrap_err();
        assert_eq!(e.code(), "sandbox_not_found");
        assert_eq!(e.status(), Some(404));
    }
}
