//! Starting a process the way `posix_spawn` does: `clone(CLONE_VM |
//! CLONE_VFORK)` onto a private stack, then only raw system calls until
//! `execve`.
//!
//! A `fork` copies the caller's page tables and (in std's `Command`) adds a
//! close-on-exec error pipe; with `CLONE_VM | CLONE_VFORK` the child borrows
//! the caller's memory and the caller is suspended until the child has
//! exec'd or exited, so the cost does not grow with the caller's size.
//!
//! Everything the child needs is prepared in the parent beforehand: the
//! argv/envp pointer arrays, the resolved executable path (see
//! [`resolve_program`]), the descriptors to install as 0, 1 and 2 (moved out
//! of the way when they sit on one of those numbers), the stack. The child
//! then only issues raw, async-signal-safe system calls, in this order:
//!
//! 1. `dup3` the stdio descriptors onto 0, 1, 2;
//! 2. reset every signal's disposition to the default, then empty the mask
//!    (the parent blocks all signals around `clone`, so no handler of the
//!    parent can run in the child, which shares its memory);
//! 3. `chdir` (as the caller's credentials; retried after the switch below
//!    when the caller was refused, like runc);
//! 4. `setsid`, `TIOCSCTTY` on fd 0, `oom_score_adj` = 0 (best effort);
//! 5. `setgroups`, `setresgid`, `setresuid`;
//! 6. `prctl(PR_SET_NO_NEW_PRIVS)` and `seccomp(SECCOMP_SET_MODE_FILTER)`
//!    with a program prepared by the caller, when asked (last, so that the
//!    filter never has to allow the steps above);
//! 7. `execve`, or `execveat(fd, "", argv, envp, AT_EMPTY_PATH)` when the
//!    caller gives an executable descriptor ([`SpawnSpec::exec_fd`]), which
//!    runs a file without any path lookup in the child's mount namespace.
//!
//! A failing step is reported exactly: the child stores the step and errno in
//! a word shared with the parent (the memory is shared, and the parent only
//! resumes once the child has exec'd or exited), then exits with 127. The
//! parent reaps such a child before returning the error, so a failed spawn
//! leaves no zombie and no pid for the caller to track.

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};

use crate::seccomp::SeccompProgram;
use crate::Errno;

/// The search path `execvp` uses when the environment has no `PATH`
/// (glibc's `confstr(_CS_PATH)`).
pub const DEFAULT_SEARCH_PATH: &[u8] = b"/bin:/usr/bin";

/// The identity the child switches to before `execve`.
#[derive(Debug, Clone, Copy)]
pub struct Credentials<'a> {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (may be empty).
    pub groups: &'a [u32],
}

/// What to start and how. Build the executable path with
/// [`resolve_program`]; everything here is borrowed for the duration of
/// [`spawn`] only.
#[derive(Debug, Clone, Copy)]
pub struct SpawnSpec<'a> {
    /// Path passed to `execve` (absolute, or relative to `cwd`). Ignored
    /// when `exec_fd` is set.
    pub program: &'a CStr,
    /// Run the file this descriptor refers to (`execveat` with
    /// `AT_EMPTY_PATH`) instead of looking `program` up. The descriptor may
    /// be close-on-exec (the kernel opens the file before closing it).
    pub exec_fd: Option<BorrowedFd<'a>>,
    pub argv: &'a [CString],
    /// The complete environment.
    pub envp: &'a [CString],
    /// Descriptors installed as 0, 1 and 2 (the same one may appear more
    /// than once). Every other descriptor of the caller must be
    /// close-on-exec (std opens everything that way).
    pub stdio: [BorrowedFd<'a>; 3],
    /// Working directory of the new process; `None` keeps the caller's.
    pub cwd: Option<&'a CStr>,
    /// Start a new session (and process group) led by the child.
    pub new_session: bool,
    /// Make the terminal on fd 0 the controlling terminal (needs
    /// `new_session`).
    pub controlling_tty: bool,
    /// Write 0 to `/proc/self/oom_score_adj`; failure is ignored.
    pub reset_oom_score_adj: bool,
    /// Switch to this identity; `None` keeps the caller's.
    pub credentials: Option<Credentials<'a>>,
    /// Set `no_new_privs` right before `execve` (also implied by `seccomp`).
    pub no_new_privs: bool,
    /// Install this seccomp filter right before `execve` (after
    /// `no_new_privs`). It stacks on any filter the caller already has.
    pub seccomp: Option<&'a SeccompProgram>,
    /// Instead of exec'ing anything, run this function in the new process
    /// (after every other step) and exit with what it returns. The child is
    /// then a real fork (copy-on-write, not `CLONE_VM`), so the caller must
    /// be single-threaded; every descriptor but 0, 1 and 2 is closed in the
    /// child first. `program`, `argv`, `exec_fd` are ignored (`envp` too:
    /// the function runs with the caller's environment). Used to run code
    /// of the caller's own binary in a place where no executable could be
    /// loaded (a sandbox whose image has no dynamic loader).
    pub run: Option<fn() -> i32>,
}

/// The step at which a spawn failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum SpawnStep {
    /// In the parent, before `clone` (moving descriptors, the signal mask).
    Prepare = 1,
    /// `clone` itself (e.g. `EAGAIN` at a pids limit).
    Clone = 2,
    Stdio = 3,
    Signals = 4,
    Chdir = 5,
    Setsid = 6,
    ControllingTty = 7,
    Setgroups = 8,
    Setresgid = 9,
    Setresuid = 10,
    Exec = 11,
    NoNewPrivs = 12,
    Seccomp = 13,
}

impl SpawnStep {
    /// Stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            SpawnStep::Prepare => "prepare",
            SpawnStep::Clone => "clone",
            SpawnStep::Stdio => "stdio",
            SpawnStep::Signals => "signals",
            SpawnStep::Chdir => "chdir",
            SpawnStep::Setsid => "setsid",
            SpawnStep::ControllingTty => "controlling_tty",
            SpawnStep::Setgroups => "setgroups",
            SpawnStep::Setresgid => "setresgid",
            SpawnStep::Setresuid => "setresuid",
            SpawnStep::Exec => "exec",
            SpawnStep::NoNewPrivs => "no_new_privs",
            SpawnStep::Seccomp => "seccomp",
        }
    }

    fn from_code(code: i32) -> Option<SpawnStep> {
        Some(match code {
            1 => SpawnStep::Prepare,
            2 => SpawnStep::Clone,
            3 => SpawnStep::Stdio,
            4 => SpawnStep::Signals,
            5 => SpawnStep::Chdir,
            6 => SpawnStep::Setsid,
            7 => SpawnStep::ControllingTty,
            8 => SpawnStep::Setgroups,
            9 => SpawnStep::Setresgid,
            10 => SpawnStep::Setresuid,
            11 => SpawnStep::Exec,
            12 => SpawnStep::NoNewPrivs,
            13 => SpawnStep::Seccomp,
            _ => return None,
        })
    }
}

impl std::fmt::Display for SpawnStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A spawn that did not reach `execve`, or whose `execve` failed.
#[derive(Debug, thiserror::Error)]
#[error("spawn failed at {step}")]
pub struct SpawnError {
    pub step: SpawnStep,
    #[source]
    pub errno: Errno,
}

impl SpawnError {
    fn new(step: SpawnStep, errno: Errno) -> Self {
        SpawnError { step, errno }
    }
}

/// Returns the value of `PATH` in `envp` (the first entry, as `getenv`).
pub fn env_path(envp: &[CString]) -> Option<&[u8]> {
    envp.iter()
        .find_map(|kv| kv.as_bytes().strip_prefix(b"PATH="))
}

/// Finds the file `execvp` would run for `program`.
///
/// A name containing `/` is returned unchanged (`execve` reports its
/// errors). Otherwise each entry of `search_path` (`None`:
/// [`DEFAULT_SEARCH_PATH`]; an empty entry means the working directory) is
/// tried in order, and the first candidate that is a regular file with an
/// execute bit wins. Like `execvp`, a candidate that is missing
/// (`ENOENT`, `ENOTDIR`, ...) or refused (`EACCES`, or present but not an
/// executable regular file) moves on to the next entry; any other error ends
/// the search. If nothing is found the result is `EACCES` when some
/// candidate was refused, else `ENOENT`.
///
/// Relative candidates are checked against `cwd` (the directory the new
/// process will run in) and returned relative, as `execvp` in that process
/// would use them.
pub fn resolve_program(
    program: &CStr,
    search_path: Option<&[u8]>,
    cwd: &Path,
) -> Result<CString, Errno> {
    let name = program.to_bytes();
    if name.is_empty() {
        return Err(Errno::ENOENT);
    }
    if name.contains(&b'/') {
        return Ok(program.to_owned());
    }
    let mut refused = false;
    for dir in search_path
        .unwrap_or(DEFAULT_SEARCH_PATH)
        .split(|b| *b == b':')
    {
        let dir: &[u8] = if dir.is_empty() { b"." } else { dir };
        let mut candidate = Vec::with_capacity(dir.len() + 1 + name.len());
        candidate.extend_from_slice(dir);
        if !dir.ends_with(b"/") {
            candidate.push(b'/');
        }
        candidate.extend_from_slice(name);
        let on_disk = cwd.join(OsStr::from_bytes(&candidate));
        match std::fs::metadata(&on_disk) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => {
                // `candidate` is built from NUL-free byte strings.
                return CString::new(candidate).map_err(|_| Errno::EINVAL);
            }
            Ok(_) => refused = true,
            Err(e) => match Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)) {
                Errno::EACCES => refused = true,
                Errno::ENOENT
                | Errno::ENOTDIR
                | Errno::ESTALE
                | Errno::ENODEV
                | Errno::ETIMEDOUT
                | Errno::ENAMETOOLONG
                | Errno::ELOOP => {}
                other => return Err(other),
            },
        }
    }
    Err(if refused {
        Errno::EACCES
    } else {
        Errno::ENOENT
    })
}

/// Shared between the parent and the `CLONE_VM` child. The child only reads
/// it, except for the two atomics it sets when a step fails.
struct ChildArgs {
    program: *const libc::c_char,
    /// Descriptor to `execveat`, or -1 to `execve` `program`.
    exec_fd: RawFd,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    /// (source, target) for 0, 1, 2; `source == target` only clears CLOEXEC.
    stdio: [(RawFd, RawFd); 3],
    cwd: *const libc::c_char,
    new_session: bool,
    controlling_tty: bool,
    reset_oom_score_adj: bool,
    set_credentials: bool,
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: *const libc::gid_t,
    ngroups: usize,
    no_new_privs: bool,
    /// The filter to install, or null; points into the parent's frame.
    seccomp: *const libc::sock_fprog,
    /// Run this instead of exec'ing (a forked child; see `SpawnSpec::run`).
    run: Option<fn() -> i32>,
    /// The write end of the pipe a forked child reports a failed step on
    /// (-1 for the vfork'd child, which reports through the atomics).
    report_fd: RawFd,
    /// The failed step (`SpawnStep as i32`), 0 if none.
    failed_step: AtomicI32,
    failed_errno: AtomicI32,
}

/// Stack for the child: it runs only a handful of small frames.
const STACK_SIZE: usize = 64 * 1024;

/// Size of the kernel's signal set (`_NSIG / 8` on x86_64 and aarch64).
const KERNEL_SIGSET_BYTES: usize = 8;

/// Highest signal number (`_NSIG - 1`).
const MAX_SIGNAL: libc::c_int = 64;

/// Turns a raw `syscall()` result into the errno on failure.
///
/// glibc's `syscall()` stores a failure's errno in the calling thread's TLS
/// slot, which the child shares with the (suspended) parent thread; it is
/// read straight back, and the parent relies on errno after `clone` only when
/// `clone` itself failed (the child never ran). Integer arguments to the
/// variadic `syscall()` are all passed as `c_long`: glibc reads each one as a
/// `long`.
fn check(rc: libc::c_long) -> Result<libc::c_long, libc::c_int> {
    if rc < 0 {
        Err(Errno::last_raw())
    } else {
        Ok(rc)
    }
}

/// The child's program. Runs on its own stack in the parent's memory and
/// must only make raw system calls: no allocation, no locks, no panics.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `ChildArgs` that `spawn` keeps alive on its stack;
    // the parent is suspended (CLONE_VFORK) until this child execs or exits,
    // and the child only reads it apart from the atomics.
    let a = unsafe { &*(arg as *const ChildArgs) };
    let (step, errno) = child_steps(a);
    a.failed_errno.store(errno, Ordering::SeqCst);
    a.failed_step.store(step as i32, Ordering::SeqCst);
    if a.report_fd >= 0 {
        // A forked child does not share memory: report through the pipe.
        let msg = [step as i32, errno];
        // SAFETY: writes 8 bytes from a live local array to our own pipe.
        unsafe {
            libc::syscall(
                libc::SYS_write,
                a.report_fd as libc::c_long,
                msg.as_ptr(),
                std::mem::size_of_val(&msg),
            )
        };
    }
    // SAFETY: exit_group ends this process; nothing of the parent is touched.
    unsafe { libc::syscall(libc::SYS_exit_group, 127 as libc::c_long) };
    127
}

/// Runs the child's steps; returns only on failure. Every call below is a
/// raw system call whose pointer arguments point into `ChildArgs`, the data
/// it references (kept alive by the suspended parent), or this frame.
fn child_steps(a: &ChildArgs) -> (SpawnStep, libc::c_int) {
    for &(src, dst) in &a.stdio {
        let rc = if src == dst {
            // SAFETY: clears FD_CLOEXEC on a descriptor of this process (the
            // descriptor table is not shared with the parent).
            unsafe {
                libc::syscall(
                    libc::SYS_fcntl,
                    src as libc::c_long,
                    libc::F_SETFD as libc::c_long,
                    0 as libc::c_long,
                )
            }
        } else {
            // SAFETY: dup3 between descriptor numbers of this process.
            unsafe {
                libc::syscall(
                    libc::SYS_dup3,
                    src as libc::c_long,
                    dst as libc::c_long,
                    0 as libc::c_long,
                )
            }
        };
        if let Err(e) = check(rc) {
            return (SpawnStep::Stdio, e);
        }
    }

    // Handlers of the parent must not run here (shared memory), and ignored
    // signals would stay ignored across execve: default everything, then
    // unblock. A zeroed kernel sigaction is SIG_DFL, no flags, empty mask.
    let dfl = [0u64; 4];
    for sig in 1..=MAX_SIGNAL {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: rt_sigaction reads the zeroed kernel sigaction in this
        // frame (32 bytes, at least the kernel's struct) and writes nothing.
        // The signal tables are not shared with the parent (no CLONE_SIGHAND).
        // Failure only means a number the kernel does not know.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig as libc::c_long,
                dfl.as_ptr(),
                std::ptr::null::<u64>(),
                KERNEL_SIGSET_BYTES,
            )
        };
    }
    let empty = 0u64;
    // SAFETY: rt_sigprocmask reads the empty set in this frame.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK as libc::c_long,
            &empty as *const u64,
            std::ptr::null::<u64>(),
            KERNEL_SIGSET_BYTES,
        )
    };
    if let Err(e) = check(rc) {
        return (SpawnStep::Signals, e);
    }

    // Enter the directory with the caller's credentials first (it may reach
    // what the target identity cannot); if refused, retry as the target.
    let mut chdir_later = false;
    if !a.cwd.is_null() {
        // SAFETY: `cwd` is a NUL-terminated string owned by the parent.
        let rc = unsafe { libc::syscall(libc::SYS_chdir, a.cwd) };
        match check(rc) {
            Ok(_) => {}
            Err(e) if (e == libc::EACCES || e == libc::EPERM) && a.set_credentials => {
                chdir_later = true;
            }
            Err(e) => return (SpawnStep::Chdir, e),
        }
    }

    if a.new_session {
        // SAFETY: setsid takes no arguments.
        if let Err(e) = check(unsafe { libc::syscall(libc::SYS_setsid) }) {
            return (SpawnStep::Setsid, e);
        }
    }
    if a.controlling_tty {
        // SAFETY: TIOCSCTTY takes an integer argument (0: do not steal).
        let rc = unsafe {
            libc::syscall(
                libc::SYS_ioctl,
                0 as libc::c_long,
                libc::TIOCSCTTY as libc::c_long,
                0 as libc::c_long,
            )
        };
        if let Err(e) = check(rc) {
            return (SpawnStep::ControllingTty, e);
        }
    }
    if a.reset_oom_score_adj {
        // Best effort: lowering it may need a capability the caller lacks.
        // A vfork child has its own oom_score_adj; the parent's is untouched.
        let path = c"/proc/self/oom_score_adj";
        // SAFETY: openat with a static NUL-terminated path.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_openat,
                libc::AT_FDCWD as libc::c_long,
                path.as_ptr(),
                (libc::O_WRONLY | libc::O_CLOEXEC) as libc::c_long,
            )
        };
        if let Ok(fd) = check(rc) {
            // SAFETY: writes one byte from a static buffer to the descriptor
            // just opened, then closes it.
            unsafe {
                libc::syscall(libc::SYS_write, fd, b"0".as_ptr(), 1 as libc::c_long);
                libc::syscall(libc::SYS_close, fd);
            }
        }
    }

    if a.set_credentials {
        let (uid, gid) = (libc::c_long::from(a.uid), libc::c_long::from(a.gid));
        // SAFETY: `groups` points to `ngroups` gids owned by the parent.
        let rc = unsafe { libc::syscall(libc::SYS_setgroups, a.ngroups as libc::c_long, a.groups) };
        if let Err(e) = check(rc) {
            return (SpawnStep::Setgroups, e);
        }
        // SAFETY: setresgid takes three ids. The raw call affects only this
        // single-threaded child (no glibc set*id broadcast is needed).
        let rc = unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) };
        if let Err(e) = check(rc) {
            return (SpawnStep::Setresgid, e);
        }
        // SAFETY: as above, for the user ids.
        let rc = unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) };
        if let Err(e) = check(rc) {
            return (SpawnStep::Setresuid, e);
        }
    }
    if chdir_later {
        // SAFETY: as for the first chdir.
        let rc = unsafe { libc::syscall(libc::SYS_chdir, a.cwd) };
        if let Err(e) = check(rc) {
            return (SpawnStep::Chdir, e);
        }
    }

    if a.no_new_privs || !a.seccomp.is_null() {
        // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_prctl,
                libc::PR_SET_NO_NEW_PRIVS as libc::c_long,
                1 as libc::c_long,
                0 as libc::c_long,
                0 as libc::c_long,
                0 as libc::c_long,
            )
        };
        if let Err(e) = check(rc) {
            return (SpawnStep::NoNewPrivs, e);
        }
    }
    if !a.seccomp.is_null() {
        // SAFETY: `seccomp` points to a `sock_fprog` in the suspended
        // parent's frame whose instructions are owned by a live
        // `SeccompProgram`; the kernel copies the program.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER as libc::c_long,
                0 as libc::c_long,
                a.seccomp,
            )
        };
        if let Err(e) = check(rc) {
            return (SpawnStep::Seccomp, e);
        }
    }

    if let Some(run) = a.run {
        // A forked child: every step succeeded. Closing the report pipe
        // tells the parent so; then nothing of the caller's descriptors
        // but stdio stays open while `run` runs.
        // SAFETY: closes descriptors of this (forked) process only: its
        // copy of the report pipe, then everything from 3 up.
        unsafe {
            libc::syscall(libc::SYS_close, a.report_fd as libc::c_long);
            libc::syscall(
                libc::SYS_close_range,
                3 as libc::c_long,
                libc::c_long::from(u32::MAX),
                0 as libc::c_long,
            );
        }
        let code = run();
        // SAFETY: ends this forked process with the function's code.
        unsafe { libc::syscall(libc::SYS_exit_group, code as libc::c_long) };
        return (SpawnStep::Exec, libc::EIO);
    }

    let rc = if a.exec_fd >= 0 {
        // SAFETY: the empty path is a static NUL-terminated string; `argv`
        // and `envp` are NULL-terminated arrays of NUL-terminated strings
        // owned by the parent; `exec_fd` is a descriptor the parent keeps
        // open for the duration of the spawn.
        unsafe {
            libc::syscall(
                libc::SYS_execveat,
                a.exec_fd as libc::c_long,
                c"".as_ptr(),
                a.argv,
                a.envp,
                libc::AT_EMPTY_PATH as libc::c_long,
            )
        }
    } else {
        // SAFETY: `program` is NUL-terminated; `argv` and `envp` are
        // NULL-terminated arrays of NUL-terminated strings, all owned by
        // the parent.
        unsafe { libc::syscall(libc::SYS_execve, a.program, a.argv, a.envp) }
    };
    match check(rc) {
        Err(e) => (SpawnStep::Exec, e),
        // execve does not return on success.
        Ok(_) => (SpawnStep::Exec, libc::EIO),
    }
}

/// Starts `spec` and returns the child's pid once it has exec'd.
///
/// The child becomes a child of the caller (exit signal `SIGCHLD`); the
/// caller reaps it. On failure the child, if one was created, has already
/// been reaped.
pub fn spawn(spec: &SpawnSpec<'_>) -> Result<libc::pid_t, SpawnError> {
    let prepare = |e| SpawnError::new(SpawnStep::Prepare, e);
    let mut argv: Vec<*const libc::c_char> = Vec::with_capacity(spec.argv.len() + 1);
    argv.extend(spec.argv.iter().map(|a| a.as_ptr()));
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = Vec::with_capacity(spec.envp.len() + 1);
    envp.extend(spec.envp.iter().map(|e| e.as_ptr()));
    envp.push(std::ptr::null());

    // The child installs 0, 1, 2 in order; a source sitting on one of those
    // numbers (other than its own target) would be overwritten before use,
    // so it is duplicated above 2 first.
    let mut moved: Vec<OwnedFd> = Vec::new();
    let mut stdio = [(-1, -1); 3];
    for (target, (slot, fd)) in stdio.iter_mut().zip(spec.stdio.iter()).enumerate() {
        let target = target as RawFd;
        let raw = fd.as_raw_fd();
        let src = if raw == target || raw > 2 {
            raw
        } else {
            // SAFETY: F_DUPFD_CLOEXEC duplicates a live (borrowed) descriptor
            // to a new number >= 3.
            let n = unsafe { libc::fcntl(raw, libc::F_DUPFD_CLOEXEC, 3) };
            if n < 0 {
                return Err(prepare(Errno::last()));
            }
            // SAFETY: a fresh descriptor we own; closed after the spawn.
            moved.push(unsafe { OwnedFd::from_raw_fd(n) });
            n
        };
        *slot = (src, target);
    }

    let (set_credentials, uid, gid, groups) = match spec.credentials {
        Some(c) => (true, c.uid, c.gid, c.groups),
        None => (false, 0, 0, &[][..]),
    };
    if groups.len() > libc::c_int::MAX as usize {
        return Err(prepare(Errno::EINVAL));
    }
    // Built here, read by the child: it points into the borrowed program.
    let fprog = spec.seccomp.map(SeccompProgram::fprog);
    let args = ChildArgs {
        program: spec.program.as_ptr(),
        exec_fd: spec.exec_fd.map_or(-1, |fd| fd.as_raw_fd()),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        stdio,
        cwd: spec.cwd.map_or(std::ptr::null(), |c| c.as_ptr()),
        new_session: spec.new_session,
        controlling_tty: spec.controlling_tty,
        reset_oom_score_adj: spec.reset_oom_score_adj,
        set_credentials,
        uid,
        gid,
        groups: groups.as_ptr(),
        ngroups: groups.len(),
        no_new_privs: spec.no_new_privs,
        seccomp: fprog
            .as_ref()
            .map_or(std::ptr::null(), |f| f as *const libc::sock_fprog),
        run: spec.run,
        report_fd: -1,
        failed_step: AtomicI32::new(0),
        failed_errno: AtomicI32::new(0),
    };
    if spec.run.is_some() {
        let r = fork_run(args);
        drop(moved);
        return r;
    }

    // Only the child writes the stack; it needs no initialisation.
    let mut stack: Vec<u8> = Vec::with_capacity(STACK_SIZE);
    // The stack grows down on every architecture we support; align the top.
    let top = (stack.as_mut_ptr() as usize + STACK_SIZE) & !15usize;

    // Block every signal in this thread, glibc's internal ones included
    // (pthread_sigmask would leave those out), so that none of the parent's
    // handlers runs in the child, which shares our memory, before it has
    // reset them.
    let all = u64::MAX;
    let mut old = 0u64;
    // SAFETY: rt_sigprocmask reads `all` and writes the old mask to `old`,
    // both live u64s of the kernel's sigset size.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK as libc::c_long,
            &all as *const u64,
            &mut old as *mut u64,
            KERNEL_SIGSET_BYTES,
        )
    };
    check(rc).map_err(|e| prepare(Errno::from_raw(e)))?;
    // SAFETY: `child_main` only performs raw syscalls and touches nothing but
    // `args` (atomics for its writes); `top` is the aligned top of a live,
    // private allocation of STACK_SIZE bytes; `args`, the pointer arrays, the
    // strings and descriptors they point to all outlive the child's use of
    // them, because CLONE_VFORK suspends this thread until the child has
    // exec'd or exited.
    let pid = unsafe {
        libc::clone(
            child_main,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            &args as *const ChildArgs as *mut libc::c_void,
        )
    };
    let clone_errno = Errno::last();
    // SAFETY: restores the mask saved above from a live u64.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK as libc::c_long,
            &old as *const u64,
            std::ptr::null_mut::<u64>(),
            KERNEL_SIGSET_BYTES,
        )
    };
    // The child has exec'd or exited: its stack and the moved descriptors
    // are no longer in use.
    drop(stack);
    drop(moved);
    if pid < 0 {
        return Err(SpawnError::new(SpawnStep::Clone, clone_errno));
    }
    let step = args.failed_step.load(Ordering::SeqCst);
    if step == 0 {
        return Ok(pid);
    }
    let errno = Errno::from_raw(args.failed_errno.load(Ordering::SeqCst));
    reap(pid);
    Err(SpawnError::new(
        SpawnStep::from_code(step).unwrap_or(SpawnStep::Exec),
        errno,
    ))
}

/// [`spawn`] of a [`SpawnSpec::run`] function: a real fork, with failures
/// reported over a close-on-exec pipe (closed by the child once its steps
/// succeeded).
fn fork_run(mut args: ChildArgs) -> Result<libc::pid_t, SpawnError> {
    let prepare = |e| SpawnError::new(SpawnStep::Prepare, e);
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into a live two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(prepare(Errno::last()));
    }
    // SAFETY: both descriptors are fresh and ours.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    args.report_fd = wr.as_raw_fd();
    // SAFETY: the caller is single-threaded (documented on `run`), so the
    // child's copy of this process has no lock held by another thread; the
    // child runs `child_main` on its copy of `args` and never returns here.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(SpawnError::new(SpawnStep::Clone, Errno::last()));
    }
    if pid == 0 {
        child_main(&args as *const ChildArgs as *mut libc::c_void);
        // SAFETY: not reached (child_main exits); end the child regardless.
        unsafe { libc::syscall(libc::SYS_exit_group, 127 as libc::c_long) };
    }
    drop(wr);
    let mut msg = [0i32; 2];
    let n = loop {
        // SAFETY: reads at most 8 bytes into a live local array.
        let n = unsafe {
            libc::read(
                rd.as_raw_fd(),
                msg.as_mut_ptr() as *mut libc::c_void,
                std::mem::size_of_val(&msg),
            )
        };
        if n >= 0 || Errno::last() != Errno::EINTR {
            break n;
        }
    };
    if n == std::mem::size_of_val(&msg) as isize {
        reap(pid);
        return Err(SpawnError::new(
            SpawnStep::from_code(msg[0]).unwrap_or(SpawnStep::Exec),
            Errno::from_raw(msg[1]),
        ));
    }
    Ok(pid)
}

/// Waits for a child that is exiting (it already reported its failure).
fn reap(pid: libc::pid_t) {
    loop {
        let mut status = 0;
        // SAFETY: waitpid on our own child with a valid status pointer.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc >= 0 || Errno::last() != Errno::EINTR {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::io::Read;
    use std::os::fd::AsFd;

    fn c(s: &str) -> CString {
        CString::new(s).expect("no NUL in test strings")
    }

    fn file(p: &Path, mode: u32) {
        fs::write(p, b"#!/bin/sh\n").unwrap();
        fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn path_of(dirs: &[&Path]) -> Vec<u8> {
        let s: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        s.join(":").into_bytes()
    }

    #[test]
    fn resolve_takes_first_executable_regular_file() {
        let t = tempfile::tempdir().unwrap();
        let (a, b, d) = (t.path().join("a"), t.path().join("b"), t.path().join("d"));
        for dir in [&a, &b, &d] {
            fs::create_dir(dir).unwrap();
        }
        file(&a.join("tool"), 0o644); // no exec bit: skipped
        fs::create_dir(b.join("tool")).unwrap(); // a directory: skipped
        file(&d.join("tool"), 0o750);
        let found = resolve_program(&c("tool"), Some(&path_of(&[&a, &b, &d])), t.path()).unwrap();
        assert_eq!(found.as_bytes(), d.join("tool").as_os_str().as_bytes());
        // Only the group bit set still counts as executable.
        file(&a.join("tool"), 0o610);
        let found = resolve_program(&c("tool"), Some(&path_of(&[&a, &d])), t.path()).unwrap();
        assert_eq!(found.as_bytes(), a.join("tool").as_os_str().as_bytes());
    }

    #[test]
    fn resolve_follows_symlinks() {
        let t = tempfile::tempdir().unwrap();
        file(&t.path().join("real"), 0o755);
        std::os::unix::fs::symlink("real", t.path().join("link")).unwrap();
        std::os::unix::fs::symlink("missing", t.path().join("dangling")).unwrap();
        let p = path_of(&[t.path()]);
        let found = resolve_program(&c("link"), Some(&p), Path::new("/")).unwrap();
        assert_eq!(
            found.as_bytes(),
            t.path().join("link").as_os_str().as_bytes()
        );
        assert_eq!(
            resolve_program(&c("dangling"), Some(&p), Path::new("/")),
            Err(Errno::ENOENT)
        );
    }

    #[test]
    fn resolve_reports_eacces_only_when_something_was_refused() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        fs::create_dir(&a).unwrap();
        fs::create_dir(&b).unwrap();
        file(&a.join("x"), 0o644);
        // A PATH entry that is a file gives ENOTDIR: skipped like ENOENT.
        file(&t.path().join("notdir"), 0o755);
        let missing = t.path().join("missing");
        let notdir = t.path().join("notdir");
        let p = path_of(&[&missing, &notdir, &b, &a]);
        assert_eq!(
            resolve_program(&c("x"), Some(&p), t.path()),
            Err(Errno::EACCES)
        );
        let p = path_of(&[&missing, &notdir, &b]);
        assert_eq!(
            resolve_program(&c("x"), Some(&p), t.path()),
            Err(Errno::ENOENT)
        );
        // An executable later in the PATH wins over an earlier refusal.
        file(&b.join("x"), 0o755);
        let p = path_of(&[&a, &b]);
        let found = resolve_program(&c("x"), Some(&p), t.path()).unwrap();
        assert_eq!(found.as_bytes(), b.join("x").as_os_str().as_bytes());
    }

    #[test]
    fn resolve_relative_entries_against_cwd() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir(t.path().join("bin")).unwrap();
        file(&t.path().join("bin/tool"), 0o755);
        file(&t.path().join("here"), 0o755);
        assert_eq!(
            resolve_program(&c("tool"), Some(b"bin"), t.path()).unwrap(),
            c("bin/tool")
        );
        // An empty entry is the working directory (leading, trailing, middle).
        for p in [&b":/nonexistent"[..], b"/nonexistent:", b"/nonexistent::/x"] {
            assert_eq!(
                resolve_program(&c("here"), Some(p), t.path()).unwrap(),
                c("./here")
            );
        }
        // Relative entries do not resolve against the caller's directory.
        assert_eq!(
            resolve_program(&c("tool"), Some(b"bin"), Path::new("/nonexistent")),
            Err(Errno::ENOENT)
        );
    }

    #[test]
    fn resolve_leaves_paths_alone_and_rejects_empty() {
        let t = tempfile::tempdir().unwrap();
        for name in ["/nonexistent/x", "./x", "a/b"] {
            assert_eq!(
                resolve_program(&c(name), Some(b"/bin"), t.path()).unwrap(),
                c(name)
            );
        }
        assert_eq!(
            resolve_program(&c(""), Some(b"/bin"), t.path()),
            Err(Errno::ENOENT)
        );
        // Without PATH, the default search path is used.
        assert_eq!(
            resolve_program(&c("warren-no-such-tool"), None, t.path()),
            Err(Errno::ENOENT)
        );
    }

    #[test]
    fn env_path_is_the_first_path_entry() {
        let env = [c("HOME=/"), c("PATHX=/no"), c("PATH=/a:/b"), c("PATH=/c")];
        assert_eq!(env_path(&env), Some(&b"/a:/b"[..]));
        assert_eq!(env_path(&[c("HOME=/")]), None);
        assert_eq!(env_path(&[c("PATH=")]), Some(&b""[..]));
    }

    #[test]
    fn step_codes_round_trip() {
        for code in 1..=13 {
            let step = SpawnStep::from_code(code).unwrap();
            assert_eq!(step as i32, code);
        }
        assert_eq!(SpawnStep::from_code(0), None);
        assert_eq!(SpawnStep::from_code(14), None);
    }

    /// Marks the re-executed test process in which the real spawns run.
    const CHILD_ENV: &str = "WARREN_SYS_SPAWN_TEST_CHILD";

    /// Spawning for real changes credentials and reaps children, so it runs
    /// in a re-executed copy of this test binary with one test thread.
    #[test]
    fn spawn_real_processes() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            let reason = "needs root (switches credentials)";
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "spawn_real_processes: {reason}"
            );
            eprintln!("SKIP spawn_real_processes: {reason}");
            return;
        }
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new(exe)
            .args([
                "--exact",
                "spawn::tests::spawn_checks_in_child",
                "--test-threads=1",
                "--nocapture",
            ])
            .env(CHILD_ENV, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "child failed: {stdout}\n{stderr}"
        );
    }

    fn status_field<'a>(status: &'a str, name: &str) -> &'a str {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .unwrap_or_else(|| panic!("{name} not in status"))
            .trim()
    }

    fn wait_code(pid: libc::pid_t) -> i32 {
        use nix::sys::wait::{waitpid, WaitStatus};
        match waitpid(nix::unistd::Pid::from_raw(pid), None).unwrap() {
            WaitStatus::Exited(_, code) => code,
            other => panic!("child {pid}: {other:?}"),
        }
    }

    fn read_all(mut r: std::io::PipeReader) -> String {
        let mut s = String::new();
        r.read_to_string(&mut s).unwrap();
        s
    }

    #[test]
    fn spawn_checks_in_child() {
        if std::env::var_os(CHILD_ENV).is_none() {
            return; // only meaningful in the re-executed process
        }
        use nix::sys::signal::{SigSet, SigmaskHow, Signal};
        // Caller state the child must not inherit, and must not disturb.
        fs::write("/proc/self/oom_score_adj", "7").unwrap();
        // SAFETY: installs SIG_IGN for SIGHUP in this test process.
        unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
        let mut usr1 = SigSet::empty();
        usr1.add(Signal::SIGUSR1);
        nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&usr1), None).unwrap();

        let null = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .unwrap();
        let env = [c("PATH=/usr/bin:/bin")];
        let groups = [65534, 100];
        let creds = Credentials {
            uid: 65534,
            gid: 65534,
            groups: &groups,
        };
        let cwd = c("/tmp");

        // 1. Credentials, session, signals, oom_score_adj.
        let (r, w) = std::io::pipe().unwrap();
        let cat = resolve_program(&c("cat"), env_path(&env), Path::new("/tmp")).unwrap();
        let argv = [
            c("cat"),
            c("/proc/self/status"),
            c("/proc/self/oom_score_adj"),
        ];
        let spec = SpawnSpec {
            program: &cat,
            exec_fd: None,
            run: None,
            argv: &argv,
            envp: &env,
            stdio: [null.as_fd(), null.as_fd(), null.as_fd()],
            cwd: Some(&cwd),
            new_session: true,
            controlling_tty: false,
            reset_oom_score_adj: true,
            credentials: Some(creds),
            no_new_privs: true,
            seccomp: None,
        };
        let pid = spawn(&SpawnSpec {
            stdio: [null.as_fd(), w.as_fd(), null.as_fd()],
            ..spec
        })
        .unwrap();
        drop(w);
        let out = read_all(r);
        assert_eq!(wait_code(pid), 0);
        assert_eq!(status_field(&out, "Uid"), "65534\t65534\t65534\t65534");
        assert_eq!(status_field(&out, "Gid"), "65534\t65534\t65534\t65534");
        assert_eq!(status_field(&out, "Groups"), "100 65534");
        assert_eq!(status_field(&out, "SigBlk"), "0000000000000000");
        assert_eq!(status_field(&out, "SigIgn"), "0000000000000000");
        assert_eq!(status_field(&out, "NSsid"), pid.to_string());
        assert_eq!(status_field(&out, "NoNewPrivs"), "1");
        assert_eq!(status_field(&out, "Seccomp"), "0");
        assert_eq!(out.lines().last(), Some("0"), "oom_score_adj of the child");
        // The caller is untouched.
        let own = fs::read_to_string("/proc/self/oom_score_adj").unwrap();
        assert_eq!(own.trim(), "7");
        let mask = SigSet::thread_get_mask().unwrap();
        assert!(mask.contains(Signal::SIGUSR1));
        assert!(!mask.contains(Signal::SIGTERM));

        // 2. The working directory.
        let (r, w) = std::io::pipe().unwrap();
        let pwd = resolve_program(&c("pwd"), env_path(&env), Path::new("/tmp")).unwrap();
        let argv = [c("pwd"), c("-P")];
        let pid = spawn(&SpawnSpec {
            program: &pwd,
            argv: &argv,
            stdio: [null.as_fd(), w.as_fd(), null.as_fd()],
            ..spec
        })
        .unwrap();
        drop(w);
        assert_eq!(read_all(r), "/tmp\n");
        assert_eq!(wait_code(pid), 0);

        // 3. Failures report the step and errno, and leave no zombie.
        let check = |program: &str, cwd: &str, step: SpawnStep, errno: Errno| {
            let program = c(program);
            let cwd = c(cwd);
            let argv = [program.clone()];
            let err = spawn(&SpawnSpec {
                program: &program,
                argv: &argv,
                cwd: Some(&cwd),
                stdio: [null.as_fd(), null.as_fd(), null.as_fd()],
                ..spec
            })
            .expect_err("spawn should fail");
            assert_eq!(
                (err.step, err.errno),
                (step, errno),
                "{program:?} in {cwd:?}"
            );
            assert_eq!(
                nix::sys::wait::waitpid(None, Some(nix::sys::wait::WaitPidFlag::WNOHANG)),
                Err(Errno::ECHILD),
                "a failed child was left unreaped"
            );
        };
        let t = tempfile::tempdir().unwrap();
        let plain = t.path().join("plain");
        file(&plain, 0o644);
        let garbage = t.path().join("garbage");
        fs::write(&garbage, b"\x01\x02 not a program").unwrap();
        fs::set_permissions(&garbage, fs::Permissions::from_mode(0o755)).unwrap();
        let (plain, garbage) = (plain.to_str().unwrap(), garbage.to_str().unwrap());
        check("/nonexistent/x", "/", SpawnStep::Exec, Errno::ENOENT);
        check(plain, "/", SpawnStep::Exec, Errno::EACCES);
        check(garbage, "/", SpawnStep::Exec, Errno::ENOEXEC);
        check("/bin/true", "/nonexistent", SpawnStep::Chdir, Errno::ENOENT);
        check("/bin/true", plain, SpawnStep::Chdir, Errno::ENOTDIR);

        // 4. Stdio sources sitting on 0..2 are moved before 0..2 are filled:
        // the pipe's write end on fd 0 must become stdout, not be replaced
        // by stdin first.
        let (r, w) = std::io::pipe().unwrap();
        // SAFETY: dup2 onto fd 0 of this test process (stdin is /dev/null).
        assert!(unsafe { libc::dup2(w.as_raw_fd(), 0) } == 0);
        drop(w);
        // SAFETY: fd 0 is open (just installed) and stays open here.
        let zero = unsafe { BorrowedFd::borrow_raw(0) };
        let argv = [c("echo"), c("moved")];
        let echo = c("/bin/echo");
        let pid = spawn(&SpawnSpec {
            program: &echo,
            argv: &argv,
            stdio: [null.as_fd(), zero, zero],
            credentials: None,
            new_session: false,
            reset_oom_score_adj: false,
            ..spec
        })
        .unwrap();
        // SAFETY: dup2 of /dev/null back onto fd 0, closing our pipe end.
        assert!(unsafe { libc::dup2(null.as_raw_fd(), 0) } == 0);
        assert_eq!(read_all(r), "moved\n");
        assert_eq!(wait_code(pid), 0);

        // 5. A seccomp filter is installed in the child only.
        let allow = crate::seccomp::SeccompProgram::new(vec![libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ALLOW,
        }])
        .unwrap();
        let (r, w) = std::io::pipe().unwrap();
        let argv = [c("cat"), c("/proc/self/status")];
        let pid = spawn(&SpawnSpec {
            program: &cat,
            argv: &argv,
            stdio: [null.as_fd(), w.as_fd(), null.as_fd()],
            no_new_privs: false,
            seccomp: Some(&allow),
            ..spec
        })
        .unwrap();
        drop(w);
        let out = read_all(r);
        assert_eq!(wait_code(pid), 0);
        assert_eq!(status_field(&out, "Seccomp"), "2");
        assert_eq!(status_field(&out, "NoNewPrivs"), "1");
        let own = fs::read_to_string("/proc/self/status").unwrap();
        assert_eq!(status_field(&own, "Seccomp"), "0");

        // 6. Exec by descriptor: `program` is not looked up at all.
        let echo_fd = fs::File::open("/bin/echo").unwrap();
        let (r, w) = std::io::pipe().unwrap();
        let argv = [c("echo"), c("by-fd")];
        let nowhere = c("/nonexistent/program");
        let pid = spawn(&SpawnSpec {
            program: &nowhere,
            exec_fd: Some(echo_fd.as_fd()),
            run: None,
            argv: &argv,
            stdio: [null.as_fd(), w.as_fd(), null.as_fd()],
            ..spec
        })
        .unwrap();
        drop(w);
        assert_eq!(read_all(r), "by-fd\n");
        assert_eq!(wait_code(pid), 0);
    }
}
