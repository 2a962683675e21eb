//! A live exec for `warren sandbox exec`, `sandbox shell` and `run`: output
//! is written as it arrives, our stdin is forwarded with `-i`, signals we
//! receive go to the process, and with `-t` the local terminal is raw and
//! its resizes are forwarded.
//!
//! Threads: stdin is read on a plain thread (a blocking read must not keep
//! the async runtime from shutting down) into a bounded channel; a task
//! sends stdin and control messages, so a slow or blocked stdin never stops
//! the output from being read.

use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;
use warren_client::{Client, ExecExit, ExecInput, StreamEvent, StreamExecStart};

use crate::sandbox::TIMED_OUT_EXIT;
use crate::term;

/// Chunks of stdin in flight between the reader thread and the socket.
const STDIN_QUEUE: usize = 8;
/// Size of one stdin read.
const STDIN_CHUNK: usize = 32 * 1024;
/// Interrupts (SIGINT) after which we stop waiting for a process that
/// ignores them: the stream is closed and the server kills the process.
const MAX_INTERRUPTS: u32 = 3;
/// How long the input task gets to flush after the exit.
const INPUT_LINGER: Duration = Duration::from_millis(200);

const SIGHUP: i32 = 1;
const SIGINT: i32 = 2;
const SIGQUIT: i32 = 3;
const SIGTERM: i32 = 15;
pub const SIGWINCH: i32 = 28;

/// How to attach to the exec.
#[derive(Debug, Clone, Copy, Default)]
pub struct Attach {
    /// Forward our stdin (`-i`); otherwise the process's stdin is closed.
    pub stdin: bool,
    /// Run under a pseudo-terminal sized like ours (`-t`).
    pub tty: bool,
}

/// The signals a live exec handles. Installed before anything that should
/// not be interrupted (creating a sandbox in `run`), so that a Ctrl-C never
/// kills the CLI with default handling.
pub struct Signals {
    int: Signal,
    term: Signal,
    hup: Signal,
    quit: Signal,
    winch: Signal,
}

impl Signals {
    pub fn install() -> Result<Signals> {
        let on = |k: SignalKind| signal(k).context("installing a signal handler");
        Ok(Signals {
            int: on(SignalKind::interrupt())?,
            term: on(SignalKind::terminate())?,
            hup: on(SignalKind::hangup())?,
            quit: on(SignalKind::quit())?,
            winch: on(SignalKind::window_change())?,
        })
    }

    /// The next signal received (cancel-safe).
    pub async fn recv(&mut self) -> i32 {
        tokio::select! {
            _ = self.int.recv() => SIGINT,
            _ = self.term.recv() => SIGTERM,
            _ = self.hup.recv() => SIGHUP,
            _ = self.quit.recv() => SIGQUIT,
            _ = self.winch.recv() => SIGWINCH,
        }
    }
}

/// The shell exit code for a CLI stopped by `sig`.
pub fn signal_exit(sig: i32) -> i32 {
    128 + sig
}

enum Control {
    Signal(i32),
    Resize(u16, u16),
}

enum Stdin {
    Data(Vec<u8>),
    Eof,
}

/// Runs `start` (its `tty` is filled in from `attach`) in sandbox `id`,
/// streaming, and returns the exit code to exit with: the command's, 124
/// on its timeout, 128 + signal when we gave up after repeated interrupts.
pub async fn exec(
    c: &Client,
    id: &str,
    mut start: StreamExecStart,
    attach: Attach,
    signals: &mut Signals,
) -> Result<i32> {
    if attach.tty {
        start.tty = Some(term::size());
    }
    let timeout = start.timeout_secs;
    let stream = if attach.stdin {
        c.exec_stream(id, &start).await?
    } else {
        c.exec_stream_without_stdin(id, &start).await?
    };
    drive(stream, attach, signals, timeout).await
}

/// Attaches to a background exec: its buffered output, then live output;
/// our stdin (with `attach.stdin`) and signals go to it. Interrupting
/// three times detaches; the exec keeps running.
pub async fn attach_background(
    c: &Client,
    id: &str,
    exec_id: &str,
    attach: Attach,
    signals: &mut Signals,
) -> Result<i32> {
    let stream = c.attach_exec(id, exec_id).await?;
    drive(stream, attach, signals, None).await
}

async fn drive(
    stream: warren_client::ExecStream,
    attach: Attach,
    signals: &mut Signals,
    timeout: Option<u64>,
) -> Result<i32> {
    // Raw mode only once the exec runs, so errors print normally, and only
    // when we forward a terminal's keystrokes.
    let raw = if attach.tty && attach.stdin && term::stdin_is_tty() {
        Some(term::RawMode::enter()?)
    } else {
        None
    };
    let (input, mut output) = stream.split();
    let (ctl_tx, ctl_rx) = mpsc::channel::<Control>(16);
    let stdin_rx = if attach.stdin {
        let (tx, rx) = mpsc::channel(STDIN_QUEUE);
        spawn_stdin_reader(tx)?;
        Some(rx)
    } else {
        None
    };
    let mut pump = tokio::spawn(pump_input(input, ctl_rx, stdin_rx));

    let mut forwarded = None;
    let mut interrupts = 0;
    let outcome: Result<Option<ExecExit>> = async {
        loop {
            tokio::select! {
                ev = output.next_event() => match ev? {
                    Some(StreamEvent::Stdout(b)) => write_all(&mut std::io::stdout(), &b)
                        .context("writing stdout")?,
                    Some(StreamEvent::Stderr(b)) => write_all(&mut std::io::stderr(), &b)
                        .context("writing stderr")?,
                    Some(StreamEvent::Exit(e)) => return Ok(Some(e)),
                    None => bail!("the exec stream ended without an exit status"),
                },
                sig = signals.recv() => {
                    if sig == SIGWINCH {
                        if attach.tty {
                            let s = term::size();
                            let _ = ctl_tx.try_send(Control::Resize(s.rows, s.cols));
                        }
                        continue;
                    }
                    if sig == SIGINT {
                        interrupts += 1;
                        if interrupts >= MAX_INTERRUPTS {
                            return Ok(None);
                        }
                    }
                    forwarded = Some(sig);
                    let _ = ctl_tx.try_send(Control::Signal(sig));
                }
            }
        }
    }
    .await;
    drop(raw);
    drop(ctl_tx);
    // Let queued control messages go out, then stop; closing the socket
    // kills a process that is still running.
    if tokio::time::timeout(INPUT_LINGER, &mut pump).await.is_err() {
        pump.abort();
    }
    match outcome? {
        Some(exit) => Ok(report(&exit, timeout, forwarded)),
        None => {
            eprintln!("warren: interrupted {MAX_INTERRUPTS} times; stopped the command");
            Ok(signal_exit(SIGINT))
        }
    }
}

/// The exit code for `exit`, with a line on stderr when the command did not
/// simply exit.
pub fn report(exit: &ExecExit, timeout: Option<u64>, forwarded: Option<i32>) -> i32 {
    if exit.timed_out {
        match timeout {
            Some(t) => eprintln!("warren: the command timed out after {t}s and was killed"),
            None => eprintln!("warren: the command timed out and was killed"),
        }
        return TIMED_OUT_EXIT;
    }
    if exit.oom_killed {
        eprintln!("warren: the command was killed: out of memory");
    } else if let Some(sig) = exit.signal.filter(|s| Some(*s) != forwarded) {
        eprintln!("warren: the command was killed by signal {sig}");
    }
    exit.exit_code
}

fn write_all(w: &mut impl Write, b: &[u8]) -> std::io::Result<()> {
    w.write_all(b)?;
    w.flush()
}

/// Reads our stdin on its own thread until EOF or until nobody listens.
fn spawn_stdin_reader(tx: mpsc::Sender<Stdin>) -> Result<()> {
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            use std::io::Read;
            let mut stdin = std::io::stdin().lock();
            let mut buf = vec![0u8; STDIN_CHUNK];
            loop {
                let msg = match stdin.read(&mut buf) {
                    Ok(0) => Stdin::Eof,
                    Ok(n) => Stdin::Data(buf[..n].to_vec()),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::debug!(error = %e, "reading stdin; treating as EOF");
                        Stdin::Eof
                    }
                };
                let eof = matches!(msg, Stdin::Eof);
                if tx.blocking_send(msg).is_err() || eof {
                    return;
                }
            }
        })
        .context("starting the stdin reader")?;
    Ok(())
}

/// Sends control messages (first) and stdin to the server.
async fn pump_input(
    mut input: ExecInput,
    mut ctl: mpsc::Receiver<Control>,
    mut stdin: Option<mpsc::Receiver<Stdin>>,
) {
    let r: Result<(), warren_client::ClientError> = async {
        loop {
            tokio::select! {
                biased;
                c = ctl.recv() => match c {
                    Some(Control::Signal(s)) => input.signal(s).await?,
                    Some(Control::Resize(rows, cols)) => input.resize(rows, cols).await?,
                    None => return Ok(()),
                },
                d = recv_opt(&mut stdin) => match d {
                    Some(Stdin::Data(b)) => input.send_stdin(&b).await?,
                    Some(Stdin::Eof) | None => {
                        input.close_stdin().await?;
                        stdin = None;
                    }
                },
            }
        }
    }
    .await;
    if let Err(e) = r {
        // The output side reports what matters (the exit or the failure).
        tracing::debug!(error = %e, "sending to the exec stream stopped");
    }
}

async fn recv_opt<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(code: i32, signal: Option<i32>, timed_out: bool, oom: bool) -> ExecExit {
        ExecExit {
            exit_code: code,
            signal,
            timed_out,
            oom_killed: oom,
        }
    }

    #[test]
    fn exit_codes() {
        assert_eq!(report(&exit(3, None, false, false), None, None), 3);
        assert_eq!(report(&exit(137, Some(9), true, false), Some(1), None), 124);
        assert_eq!(report(&exit(137, Some(9), false, true), None, None), 137);
        assert_eq!(
            report(&exit(130, Some(2), false, false), None, Some(2)),
            130
        );
        assert_eq!(signal_exit(SIGINT), 130);
    }
}
