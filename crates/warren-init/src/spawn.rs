//! Starting processes inside the sandbox (main command and execs).

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Command, Stdio};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use warren_proto::ProcessSpec;

/// A started process.
pub struct Started {
    pub pid: i32,
    /// PTY master, for TTY execs.
    pub pty_master: Option<OwnedFd>,
}

/// Why a process could not start; `code` is the stable protocol code.
#[derive(Debug)]
pub struct SpawnError {
    pub code: &'static str,
    pub errno: Option<i32>,
    pub message: String,
}

impl SpawnError {
    fn from_errno(code: &'static str, e: Errno, what: &str) -> Self {
        SpawnError {
            code,
            errno: Some(e as i32),
            message: format!("{what}: {}", e.desc()),
        }
    }
}

/// Starts `spec` with the given stdio descriptors (in stdin, stdout, stderr
/// order as flagged in `spec.stdio`; absent ones get `/dev/null`).
pub fn spawn(spec: &ProcessSpec, mut fds: Vec<OwnedFd>) -> Result<Started, SpawnError> {
    let Some(program) = spec.argv.first() else {
        return Err(SpawnError {
            code: "bad_request",
            errno: None,
            message: "argv is empty".into(),
        });
    };
    if !spec.cwd.starts_with('/') {
        return Err(SpawnError {
            code: "bad_request",
            errno: None,
            message: "workdir must be absolute".into(),
        });
    }
    match std::fs::metadata(&spec.cwd) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(SpawnError {
                code: "workdir_not_directory",
                errno: Some(libc::ENOTDIR),
                message: format!("workdir {} is not a directory", spec.cwd),
            })
        }
        Err(e) => {
            return Err(SpawnError {
                code: "workdir_not_found",
                errno: e.raw_os_error(),
                message: format!("workdir {}: {e}", spec.cwd),
            })
        }
    }

    let mut cmd = Command::new(program);
    cmd.args(&spec.argv[1..]).env_clear().current_dir(&spec.cwd);
    for kv in &spec.env {
        match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                cmd.env(k, v);
            }
            _ => {
                return Err(SpawnError {
                    code: "bad_request",
                    errno: None,
                    message: "env entries must be KEY=VALUE".into(),
                })
            }
        }
    }

    let mut pty_master = None;
    let tty = if let Some(size) = spec.tty {
        let (master, slave) = open_pty(size.rows, size.cols)?;
        nix::unistd::fchown(&slave, Some(nix::unistd::Uid::from_raw(spec.uid)), None)
            .map_err(|e| SpawnError::from_errno("pty_failed", e, "chown pty"))?;
        let dup = |f: &File| {
            f.try_clone()
                .map_err(|e| SpawnError::from_errno("pty_failed", io_errno(&e), "dup pty"))
        };
        cmd.stdin(Stdio::from(dup(&slave)?))
            .stdout(Stdio::from(dup(&slave)?))
            .stderr(Stdio::from(dup(&slave)?));
        pty_master = Some(master);
        true
    } else {
        let mut take = |present: bool| -> Stdio {
            if present && !fds.is_empty() {
                Stdio::from(fds.remove(0))
            } else {
                Stdio::null()
            }
        };
        let (i, o, e) = (spec.stdio.stdin, spec.stdio.stdout, spec.stdio.stderr);
        cmd.stdin(take(i)).stdout(take(o)).stderr(take(e));
        false
    };

    let (uid, gid, groups) = (spec.uid, spec.gid, spec.groups.clone());
    // Runs in the forked child before exec (init is single-threaded).
    let pre = move || -> std::io::Result<()> {
        // Init blocks the signals it reads through its signalfd; the
        // workload must start with an empty mask.
        warren_sys::proc::unblock_all_signals().map_err(std::io::Error::from)?;
        nix::unistd::setsid().map_err(std::io::Error::from)?;
        if tty {
            let stdin = std::io::stdin();
            warren_sys::term::set_controlling_tty(stdin.as_fd()).map_err(std::io::Error::from)?;
        }
        // Undo init's own OOM protection for the workload.
        let _ = std::fs::write("/proc/self/oom_score_adj", "0");
        let gids: Vec<nix::unistd::Gid> = groups
            .iter()
            .map(|g| nix::unistd::Gid::from_raw(*g))
            .collect();
        nix::unistd::setgroups(&gids).map_err(std::io::Error::from)?;
        let g = nix::unistd::Gid::from_raw(gid);
        nix::unistd::setresgid(g, g, g).map_err(std::io::Error::from)?;
        let u = nix::unistd::Uid::from_raw(uid);
        nix::unistd::setresuid(u, u, u).map_err(std::io::Error::from)?;
        Ok(())
    };
    let cmd = warren_sys::proc::pre_exec_single_threaded(&mut cmd, pre)
        .map_err(|e| SpawnError::from_errno("exec_failed", io_errno(&e), "pre_exec"))?;
    match cmd.spawn() {
        Ok(child) => {
            let pid = child.id() as i32;
            // Reaping happens in the event loop via waitpid(-1).
            std::mem::forget(child);
            Ok(Started { pid, pty_master })
        }
        Err(e) => {
            let errno = io_errno(&e);
            let code = match errno {
                Errno::ENOENT => "exec_not_found",
                Errno::EACCES | Errno::EPERM => "exec_permission_denied",
                Errno::ENOEXEC => "exec_format_error",
                _ => "exec_failed",
            };
            Err(SpawnError::from_errno(code, errno, program))
        }
    }
}

fn io_errno(e: &std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

fn open_pty(rows: u16, cols: u16) -> Result<(OwnedFd, File), SpawnError> {
    use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(|e| SpawnError::from_errno("pty_failed", e, "open /dev/ptmx"))?;
    grantpt(&master).map_err(|e| SpawnError::from_errno("pty_failed", e, "grantpt"))?;
    unlockpt(&master).map_err(|e| SpawnError::from_errno("pty_failed", e, "unlockpt"))?;
    let name =
        ptsname_r(&master).map_err(|e| SpawnError::from_errno("pty_failed", e, "ptsname"))?;
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(&name)
        .map_err(|e| SpawnError::from_errno("pty_failed", io_errno(&e), "open pty slave"))?;
    warren_sys::term::set_window_size(slave.as_fd(), rows, cols)
        .map_err(|e| SpawnError::from_errno("pty_failed", e, "set window size"))?;
    let master: OwnedFd = master.into();
    Ok((master, slave))
}

use std::os::unix::fs::OpenOptionsExt;
