//! Buffered execs: run to completion, keep at most a bounded prefix of each
//! stream (the rest is drained and counted, so the process never blocks on
//! a full pipe).

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::time::Duration;

use warren_runtime::{ExecExit, ExecIo, ExecSpec, NativeRuntime, Runtime, SandboxId, User};

use crate::NodeError;

/// Most bytes kept per stream by a buffered exec.
pub const MAX_BUFFERED_OUTPUT: usize = 1024 * 1024;

/// A command for [`crate::Node::exec_buffered`].
#[derive(Debug, Clone, Default)]
pub struct BufferedExec {
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub workdir: String,
    pub timeout: Option<Duration>,
    pub stdin: Option<Vec<u8>>,
    pub user: User,
}

/// The result of a buffered exec.
#[derive(Debug, Clone)]
pub struct ExecOutput {
    pub exit: ExecExit,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
}

pub(crate) async fn buffered(
    rt: Arc<NativeRuntime>,
    id: SandboxId,
    req: BufferedExec,
) -> Result<ExecOutput, NodeError> {
    tokio::task::spawn_blocking(move || {
        let spec = ExecSpec {
            argv: req.argv,
            env: req.env,
            workdir: req.workdir,
            user: req.user,
            timeout: req.timeout,
        };
        let mut e = rt.exec(
            &id,
            &spec,
            ExecIo::Pipes {
                stdin: req.stdin.is_some(),
            },
        )?;
        // The exec ends with its main process: a background process it
        // started may keep the pipes open, so the readers and the writer
        // stop once the exit is in and the pipes have nothing more for now.
        let exited = Arc::new(AtomicBool::new(false));
        let stdin = e.stdin.take();
        let input = req.stdin;
        let ex = exited.clone();
        let writer = std::thread::spawn(move || {
            if let (Some(w), Some(data)) = (stdin, input) {
                // A process that exits without reading its input is fine.
                let _ = write_until_exit(w, &data, &ex);
            }
        });
        let err = e.stderr.take();
        let ex = exited.clone();
        let err_reader = std::thread::spawn(move || err.map(|f| read_bounded(f, &ex)).transpose());
        let out = e.stdout.take();
        let ex = exited.clone();
        let out_reader = std::thread::spawn(move || out.map(|f| read_bounded(f, &ex)).transpose());
        let exit = e.wait();
        exited.store(true, Ordering::SeqCst);
        let (stdout, stdout_truncated) = out_reader
            .join()
            .map_err(|_| std::io::Error::other("stdout reader panicked"))??
            .unwrap_or_default();
        let (stderr, stderr_truncated) = err_reader
            .join()
            .map_err(|_| std::io::Error::other("stderr reader panicked"))??
            .unwrap_or_default();
        let _ = writer.join();
        let exit = exit?;
        Ok(ExecOutput {
            exit,
            stdout,
            stderr,
            stdout_truncated,
            stderr_truncated,
        })
    })
    .await?
}

/// How long output is still read after the process exited (what it wrote
/// is in the pipe already; this bounds a background writer).
const AFTER_EXIT: std::time::Duration = std::time::Duration::from_millis(500);

/// How often the pipe threads look at whether the process has exited.
const EXIT_POLL_MS: u16 = 50;

/// Waits up to [`EXIT_POLL_MS`] for `fd` to be ready for `flags`.
fn ready(fd: &std::fs::File, flags: PollFlags) -> std::io::Result<bool> {
    let mut fds = [PollFd::new(fd.as_fd(), flags)];
    match poll(&mut fds, PollTimeout::from(EXIT_POLL_MS)) {
        Ok(n) => Ok(n > 0),
        Err(nix::errno::Errno::EINTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Reads until EOF, or until the process has exited and nothing more is
/// waiting; keeps the first [`MAX_BUFFERED_OUTPUT`] bytes.
fn read_bounded(mut r: std::fs::File, exited: &AtomicBool) -> std::io::Result<(Vec<u8>, bool)> {
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut buf = vec![0u8; 64 * 1024];
    let mut exit_seen: Option<std::time::Instant> = None;
    loop {
        // Check the flag before polling: data written before the exit is
        // in the pipe by then, and a poll that finds none means it is all read.
        let done = exited.load(Ordering::SeqCst);
        if done && exit_seen.is_none() {
            exit_seen = Some(std::time::Instant::now());
        }
        // A background process that keeps writing after the exit does not
        // keep the exec open: what it writes later than this is dropped.
        if exit_seen.is_some_and(|t| t.elapsed() > AFTER_EXIT) {
            break;
        }
        if !ready(&r, PollFlags::POLLIN)? {
            if done {
                break;
            }
            continue;
        }
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let room = MAX_BUFFERED_OUTPUT - kept.len();
        if n > room {
            truncated = true;
        }
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
    Ok((kept, truncated))
}

/// Writes `data` in chunks the pipe has room for, giving up once the
/// process has exited.
fn write_until_exit(mut w: std::fs::File, data: &[u8], exited: &AtomicBool) -> std::io::Result<()> {
    // PIPE_BUF: a pipe that polls writable takes this much without blocking.
    const CHUNK: usize = 4096;
    let mut off = 0;
    while off < data.len() {
        if exited.load(Ordering::SeqCst) {
            return Ok(());
        }
        if !ready(&w, PollFlags::POLLOUT)? {
            continue;
        }
        let end = (off + CHUNK).min(data.len());
        match w.write(&data[off..end]) {
            Ok(n) => off += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
