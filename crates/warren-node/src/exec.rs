//! Buffered execs: run to completion, keep at most a bounded prefix of each
//! stream (the rest is drained and counted, so the process never blocks on
//! a full pipe).

use std::io::{Read, Write};
use std::sync::Arc;
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
        let stdin = e.stdin.take();
        let input = req.stdin;
        let writer = std::thread::spawn(move || {
            if let (Some(mut w), Some(data)) = (stdin, input) {
                // A process that exits without reading its input is fine.
                let _ = w.write_all(&data);
            }
        });
        let err = e.stderr.take();
        let err_reader = std::thread::spawn(move || err.map(read_bounded).transpose());
        let (stdout, stdout_truncated) = e
            .stdout
            .take()
            .map(read_bounded)
            .transpose()?
            .unwrap_or_default();
        let (stderr, stderr_truncated) = err_reader
            .join()
            .map_err(|_| std::io::Error::other("stderr reader panicked"))??
            .unwrap_or_default();
        let _ = writer.join();
        let exit = e.wait()?;
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

fn read_bounded(mut r: std::fs::File) -> std::io::Result<(Vec<u8>, bool)> {
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
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
