//! Starting processes inside the sandbox (main command and execs).
//!
//! Everything is prepared here, in init: the argv and environment as C
//! strings, the executable (a `PATH` search over the *new* environment, like
//! `execvp` in the child would do), the stdio descriptors, a PTY for TTY
//! execs. `warren_sys::spawn` then starts the process with
//! `clone(CLONE_VM | CLONE_VFORK)` and only raw system calls before `execve`
//! (no copy of init's page tables, no error pipe), and reports a failure
//! with the exact step and errno, which are mapped to the stable protocol
//! codes here. A child that failed has already been reaped when the error
//! comes back, so its pid is never registered or reported.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::OnceLock;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use warren_proto::ProcessSpec;
use warren_sys::spawn::{Credentials, SpawnSpec, SpawnStep};

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

    fn bad_request(message: &str) -> Self {
        SpawnError {
            code: "bad_request",
            errno: None,
            message: message.into(),
        }
    }
}

/// The sandbox's `/dev/null`, opened once (right after setup, see
/// [`open_dev_null`]) and shared by every process whose stdio is absent.
static DEV_NULL: OnceLock<OwnedFd> = OnceLock::new();

/// Opens the sandbox's `/dev/null` for later spawns, before any sandbox
/// process could replace it. Call after the root filesystem is in place.
pub fn open_dev_null() -> Result<BorrowedFd<'static>, SpawnError> {
    if let Some(fd) = DEV_NULL.get() {
        return Ok(fd.as_fd());
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/null")
        .map_err(|e| SpawnError::from_errno("exec_failed", io_errno(&e), "open /dev/null"))?;
    Ok(DEV_NULL.get_or_init(|| OwnedFd::from(f)).as_fd())
}

/// Starts `spec` with the given stdio descriptors (in stdin, stdout, stderr
/// order as flagged in `spec.stdio`; absent ones get `/dev/null`).
pub fn spawn(spec: &ProcessSpec, fds: Vec<OwnedFd>) -> Result<Started, SpawnError> {
    let Some(program) = spec.argv.first() else {
        return Err(SpawnError::bad_request("argv is empty"));
    };
    if !spec.cwd.starts_with('/') {
        return Err(SpawnError::bad_request("workdir must be absolute"));
    }
    let argv = spec
        .argv
        .iter()
        .map(|a| CString::new(a.as_str()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| SpawnError::bad_request("argv must not contain NUL bytes"))?;
    let envp = environment(&spec.env)?;
    let cwd = CString::new(spec.cwd.as_str())
        .map_err(|_| SpawnError::bad_request("workdir must not contain NUL bytes"))?;

    // The file agent is not exec'd: it is a fork of init running the
    // agent's code (init is single-threaded). Exec'ing init's own binary
    // would need the image to have the dynamic loader and libc the binary
    // was linked against, which busybox, alpine or distroless images lack.
    let run: Option<fn() -> i32> = if spec.agent {
        if program != warren_proto::agent::AGENT_ARGV0 {
            return Err(SpawnError::bad_request(
                "an agent's argv[0] must be the agent marker",
            ));
        }
        Some(crate::agent::main)
    } else {
        None
    };
    let exe = match run {
        // Not looked up: nothing is exec'd.
        Some(_) => argv[0].clone(),
        None => match warren_sys::spawn::resolve_program(
            &argv[0],
            warren_sys::spawn::env_path(&envp),
            Path::new(&spec.cwd),
        ) {
            Ok(exe) => exe,
            Err(e) => {
                // A bad workdir is reported first, as when it is checked first.
                return Err(workdir_problem(&spec.cwd)
                    .unwrap_or_else(|| SpawnError::from_errno(exec_code(e), e, program)));
            }
        },
    };

    let mut pty_master = None;
    let slave = match spec.tty {
        Some(size) => {
            let (master, slave) = open_pty(size.rows, size.cols)?;
            nix::unistd::fchown(&slave, Some(nix::unistd::Uid::from_raw(spec.uid)), None)
                .map_err(|e| SpawnError::from_errno("pty_failed", e, "chown pty"))?;
            pty_master = Some(master);
            Some(slave)
        }
        None => None,
    };
    let stdio: [BorrowedFd<'_>; 3] = match &slave {
        Some(s) => [s.as_fd(); 3],
        None => {
            let mut given = fds.iter();
            let mut pick = |present: bool| -> Result<BorrowedFd<'_>, SpawnError> {
                match if present { given.next() } else { None } {
                    Some(fd) => Ok(fd.as_fd()),
                    None => open_dev_null(),
                }
            };
            let (i, o, e) = (spec.stdio.stdin, spec.stdio.stdout, spec.stdio.stderr);
            [pick(i)?, pick(o)?, pick(e)?]
        }
    };

    // Every sandbox process runs under the default seccomp policy, which it
    // inherits from init: refuse to start anything if init is not filtered.
    if crate::seccomp::program().is_none() {
        return Err(SpawnError {
            code: "exec_failed",
            errno: None,
            message: "seccomp policy is not installed".into(),
        });
    }
    let spawn_spec = SpawnSpec {
        program: &exe,
        exec_fd: None,
        run,
        argv: &argv,
        envp: &envp,
        stdio,
        cwd: Some(&cwd),
        // Each process leads its own session and process group.
        new_session: true,
        controlling_tty: slave.is_some(),
        // Undo init's own OOM protection for the workload.
        reset_oom_score_adj: true,
        credentials: Some(Credentials {
            uid: spec.uid,
            gid: spec.gid,
            groups: &spec.groups,
        }),
        // Setuid binaries in the image grant nothing.
        no_new_privs: true,
        // The workload inherits init's own filter (checked above). Installing
        // the same program again in the child would cost ~0.2 ms per exec
        // (the kernel prepares and JIT-compiles it on every install) for no
        // added protection; see docs/seccomp.md.
        seccomp: None,
    };
    match warren_sys::spawn::spawn(&spawn_spec) {
        // Reaping happens in the event loop via waitpid(-1).
        Ok(pid) => Ok(Started { pid, pty_master }),
        Err(e) => Err(match e.step {
            SpawnStep::Chdir => workdir_error(&spec.cwd, e.errno),
            SpawnStep::Exec => SpawnError::from_errno(exec_code(e.errno), e.errno, program),
            step => {
                SpawnError::from_errno(exec_code(e.errno), e.errno, &format!("{program}: {step}"))
            }
        }),
    }
}

/// The environment as `std::process::Command::env` built it before: a key's
/// last value wins, and keys are sorted.
fn environment(env: &[String]) -> Result<Vec<CString>, SpawnError> {
    let mut vars = BTreeMap::new();
    for kv in env {
        match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                vars.insert(k, v);
            }
            _ => return Err(SpawnError::bad_request("env entries must be KEY=VALUE")),
        }
    }
    vars.into_iter()
        .map(|(k, v)| CString::new(format!("{k}={v}")))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| SpawnError::bad_request("env must not contain NUL bytes"))
}

fn exec_code(e: Errno) -> &'static str {
    match e {
        Errno::ENOENT => "exec_not_found",
        Errno::EACCES | Errno::EPERM => "exec_permission_denied",
        Errno::ENOEXEC => "exec_format_error",
        _ => "exec_failed",
    }
}

/// The error for a workdir that is not an existing directory, if it is not.
fn workdir_problem(cwd: &str) -> Option<SpawnError> {
    match std::fs::metadata(cwd) {
        Ok(m) if m.is_dir() => None,
        Ok(_) => Some(workdir_error(cwd, Errno::ENOTDIR)),
        Err(e) => Some(workdir_error(cwd, io_errno(&e))),
    }
}

/// Maps a failed `chdir` (or `stat`) of the workdir to a protocol code.
fn workdir_error(cwd: &str, e: Errno) -> SpawnError {
    match e {
        Errno::ENOTDIR if std::fs::metadata(cwd).is_ok_and(|m| !m.is_dir()) => SpawnError {
            code: "workdir_not_directory",
            errno: Some(libc::ENOTDIR),
            message: format!("workdir {cwd} is not a directory"),
        },
        Errno::EACCES | Errno::EPERM => {
            SpawnError::from_errno("exec_permission_denied", e, &format!("workdir {cwd}"))
        }
        _ => SpawnError::from_errno("workdir_not_found", e, &format!("workdir {cwd}")),
    }
}

fn io_errno(e: &std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

fn open_pty(rows: u16, cols: u16) -> Result<(OwnedFd, OwnedFd), SpawnError> {
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
    Ok((master.into(), slave.into()))
}
