//! Init's main: bootstrap, then a single-threaded poll loop over the control
//! listener, the control connections and a signalfd.

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use warren_proto::{
    decode, encode, Bootstrap, BootstrapReply, ExitStatus, MainResult, Reply, Request, Start,
    BOOTSTRAP_FD, INIT_PROTOCOL_VERSION, MAX_MESSAGE_BYTES,
};
use warren_sys::socket::{recv_with_fds, send_with_fds};

use crate::{setup, spawn};

/// Signals init forwards to the main command.
const FORWARDED: &[Signal] = &[
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// Most simultaneous control connections; more are refused at accept.
const MAX_CONNECTIONS: usize = 4096;

pub fn main() -> i32 {
    run().unwrap_or(1)
}

fn run() -> Result<i32, ()> {
    let mut timer = setup::Timer::new();
    // Init leads its own session and process group: nothing of the sandbox
    // refers to the node's session (outside the pid namespace), which a
    // checkpoint (CRIU) cannot restore.
    let _ = nix::unistd::setsid();
    // Descriptor hygiene: 0-2 to /dev/null, nothing above the bootstrap fd.
    let _ = warren_sys::fd::stdio_to_dev_null();
    let _ = warren_sys::fd::close_from(BOOTSTRAP_FD as u32 + 1);
    let boot = warren_sys::fd::adopt_inherited(BOOTSTRAP_FD).map_err(|_| ())?;
    // The bootstrap socket is the node's: the main command must not inherit it.
    nix::fcntl::fcntl(
        &boot,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(|_| ())?;

    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    for s in FORWARDED {
        mask.add(*s);
    }
    // Blocked signals are never ignored, even for a PID 1; they queue for the
    // signalfd below.
    mask.thread_set_mask().map_err(|_| ())?;
    let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|_| ())?;

    let mut buf = vec![0u8; MAX_MESSAGE_BYTES];
    let (n, mut fds) = recv_with_fds(boot.as_fd(), &mut buf).map_err(|_| ())?;
    let boot = Boot(boot);
    let fail = |step: &str, errno: Option<i32>, message: String| boot.fail(step, errno, message);
    if std::env::var_os(warren_proto::INIT_STAGE_ENV).is_some() {
        // A checkpointable sandbox's init, re-executed from inside it.
        let start: Start = match decode(&buf[..n]) {
            Ok(s) => s,
            Err(e) => {
                fail("decode", None, e.to_string());
                return Err(());
            }
        };
        let stdio_count = start.main.as_ref().map(|m| m.stdio.count()).unwrap_or(0);
        let fixed = 2 + usize::from(start.main_log);
        if fds.len() != fixed + stdio_count {
            fail(
                "fds",
                None,
                format!(
                    "expected {} descriptors, got {}",
                    fixed + stdio_count,
                    fds.len()
                ),
            );
            return Err(());
        }
        let main_stdio = fds.split_off(fixed);
        let log_file = if start.main_log { fds.pop() } else { None };
        let result_file = fds.pop().expect("length checked above");
        let listener = fds.pop().expect("length checked above");
        if let Err(e) = setup::lock_down() {
            fail(e.step, e.errno, e.message);
            return Err(());
        }
        timer.mark("lock_down");
        let serving = Serving {
            listener,
            result_file,
            log_file,
            main_stdio,
            main: start.main,
            seccomp: start.seccomp,
        };
        return start_serving(boot, sigfd, buf, timer, serving);
    }
    let b: Bootstrap = match decode(&buf[..n]) {
        Ok(b) => b,
        Err(e) => {
            fail("decode", None, e.to_string());
            return Err(());
        }
    };
    if b.version != INIT_PROTOCOL_VERSION {
        fail(
            "version",
            None,
            format!(
                "init speaks protocol {INIT_PROTOCOL_VERSION}, node sent {}",
                b.version
            ),
        );
        return Err(());
    }
    if b.checkpointable {
        return staged(&b, fds, &boot, &mut timer);
    }
    let stdio_count = b.main.as_ref().map(|m| m.stdio.count()).unwrap_or(0);
    let fixed = 4 + usize::from(b.main_log);
    if fds.len() != fixed + stdio_count {
        fail(
            "fds",
            None,
            format!(
                "expected {} descriptors, got {}",
                fixed + stdio_count,
                fds.len()
            ),
        );
        return Err(());
    }
    let main_stdio: Vec<OwnedFd> = fds.split_off(fixed);
    let log_file = if b.main_log {
        Some(fds.pop().expect("length checked above"))
    } else {
        None
    };
    let netns = fds.pop().expect("length checked above");
    let result_file = fds.pop().expect("length checked above");
    let listener = fds.pop().expect("length checked above");
    let userns = fds.pop().expect("length checked above");

    timer.mark("bootstrap");
    if let Err(e) = setup::build(&b, &userns, &netns, &mut timer) {
        fail(e.step, e.errno, e.message);
        return Err(());
    }
    drop((userns, netns));
    let serving = Serving {
        listener,
        result_file,
        log_file,
        main_stdio,
        main: b.main,
        seccomp: b.seccomp,
    };
    start_serving(boot, sigfd, buf, timer, serving)
}

/// The checkpointable shape (see `setup::prepare_checkpointable`): this
/// process assembles the root and creates the namespaces, then forks PID 1
/// of the new PID namespace, reports its host pid and waits to be killed
/// by the node. PID 1 finishes the setup and re-executes init from inside
/// the sandbox; that init then reads [`Start`].
fn staged(
    b: &Bootstrap,
    mut fds: Vec<OwnedFd>,
    boot: &Boot,
    timer: &mut setup::Timer,
) -> Result<i32, ()> {
    let fail = |step: &str, errno: Option<i32>, message: String| boot.fail(step, errno, message);
    if fds.len() != 1 {
        fail(
            "fds",
            None,
            format!("expected 1 descriptor, got {}", fds.len()),
        );
        return Err(());
    }
    let userns = fds.pop().expect("length checked above");
    let prepared = match setup::prepare_checkpointable(b, &userns, timer) {
        Ok(p) => p,
        Err(e) => {
            fail(e.step, e.errno, e.message);
            return Err(());
        }
    };
    drop(userns);
    match warren_sys::proc::fork_single_threaded() {
        Err(e) => {
            fail("fork", Some(e as i32), "fork PID 1".into());
            Err(())
        }
        Ok(Some(pid)) => {
            drop(prepared);
            let bytes = encode(&BootstrapReply::Staged { pid }).map_err(|_| ())?;
            send_with_fds(boot.0.as_fd(), &bytes, &[]).map_err(|_| ())?;
            // The node kills this process once it holds a pidfd for `pid`.
            loop {
                nix::unistd::pause();
            }
        }
        Ok(None) => {
            if let Err(e) = setup::finish_checkpointable(b, prepared) {
                fail(e.step, e.errno, e.message);
                return Err(());
            }
            let _ = warren_sys::fd::stdio_to_dev_null();
            // The bootstrap socket survives the exec (as fd 3) for `Start`.
            nix::fcntl::fcntl(
                &boot.0,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
            )
            .map_err(|_| ())?;
            let path = std::ffi::CString::new(warren_proto::CHECKPOINTABLE_INIT_PATH)
                .expect("constant has no NUL");
            let argv0 =
                std::ffi::CString::new(warren_proto::INIT_ARGV0).expect("constant has no NUL");
            let env = [
                std::ffi::CString::new(format!(
                    "{}={}",
                    warren_proto::INIT_ENV_MARKER,
                    INIT_PROTOCOL_VERSION
                ))
                .expect("no NUL"),
                std::ffi::CString::new(format!("{}=3", warren_proto::INIT_STAGE_ENV))
                    .expect("no NUL"),
            ];
            let e = nix::unistd::execve(&path, &[argv0], &env).unwrap_err();
            fail(
                "exec_init",
                Some(e as i32),
                "re-execute init inside the sandbox".into(),
            );
            Err(())
        }
    }
}

/// The bootstrap socket (the node's end of setup).
struct Boot(OwnedFd);

impl Boot {
    /// Reports a failed setup step to the node.
    fn fail(&self, step: &str, errno: Option<i32>, message: String) {
        let reply = BootstrapReply::Failed {
            step: step.to_string(),
            errno,
            message,
        };
        if let Ok(b) = encode(&reply) {
            let _ = send_with_fds(self.0.as_fd(), &b, &[]);
        }
    }
}

/// What init serves with, however it was set up.
struct Serving {
    listener: OwnedFd,
    result_file: OwnedFd,
    log_file: Option<OwnedFd>,
    main_stdio: Vec<OwnedFd>,
    main: Option<warren_proto::ProcessSpec>,
    seccomp: Vec<u64>,
}

/// Installs the seccomp policy, starts the main command, answers
/// [`BootstrapReply::Ready`] and serves until the sandbox ends.
fn start_serving(
    boot: Boot,
    sigfd: SignalFd,
    buf: Vec<u8>,
    mut timer: setup::Timer,
    s: Serving,
) -> Result<i32, ()> {
    let fail = |step: &str, errno: Option<i32>, message: String| boot.fail(step, errno, message);
    let Serving {
        listener,
        result_file,
        log_file,
        mut main_stdio,
        main,
        seccomp,
    } = s;
    // Stdio onto the sandbox's own /dev/null: init then holds no host file
    // but the ones the node gave it (a checkpoint names them as external).
    let _ = warren_sys::fd::stdio_to_dev_null();
    // Before any sandbox process runs, and before init handles anything
    // from the node or the sandbox: init itself runs under the policy.
    if let Err((errno, message)) = crate::seccomp::install_self(&seccomp) {
        fail("seccomp", errno, message);
        return Err(());
    }
    timer.mark("seccomp");
    // Before any sandbox process runs: processes without some stdio share it.
    let _ = spawn::open_dev_null();

    let mut init = Init {
        listener,
        sigfd,
        result_file: std::fs::File::from(result_file),
        conns: HashMap::new(),
        next_conn: 1,
        execs: HashMap::new(),
        main_pid: None,
        buf,
        log: None,
        carried_exits: HashMap::new(),
        quiesced_at: None,
    };
    // The main command's unassigned stdout/stderr go through a pipe into
    // the log ring.
    let mut main_spec = main;
    if let (Some(file), Some(main)) = (log_file, main_spec.as_mut()) {
        let (r, w) = match nix::unistd::pipe2(
            nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK,
        ) {
            Ok(p) => p,
            Err(e) => {
                fail("main_log", Some(e as i32), "pipe".into());
                return Err(());
            }
        };
        // The write end must block for the writer (back-pressure is the
        // ring's speed, not an EAGAIN the program does not expect).
        let _ = nix::fcntl::fcntl(
            &w,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
        );
        let stdin = if main.stdio.stdin {
            Some(main_stdio.remove(0))
        } else {
            None
        };
        let stdout = if main.stdio.stdout {
            main_stdio.remove(0)
        } else {
            dup(&w)?
        };
        let stderr = if main.stdio.stderr {
            main_stdio.remove(0)
        } else {
            dup(&w)?
        };
        drop(w);
        main_stdio = stdin.into_iter().chain([stdout, stderr]).collect();
        main.stdio.stdout = true;
        main.stdio.stderr = true;
        match crate::logring::LogRing::open(file, r) {
            Ok(ring) => init.log = Some(ring),
            Err(e) => {
                fail("main_log", e.raw_os_error(), e.to_string());
                return Err(());
            }
        }
    }
    if let Some(main) = &main_spec {
        match spawn::spawn(main, main_stdio) {
            Ok(s) => init.main_pid = Some(s.pid),
            Err(e) => {
                fail(e.code, e.errno, e.message);
                return Err(());
            }
        }
    }
    timer.mark("main");
    let ready = BootstrapReply::Ready {
        main_pid: init.main_pid,
        timings: timer.phases,
    };
    let bytes = encode(&ready).map_err(|_| ())?;
    send_with_fds(boot.0.as_fd(), &bytes, &[]).map_err(|_| ())?;
    // Nothing of the node's stays open while the sandbox runs.
    drop(boot);
    Ok(init.serve())
}

struct Conn {
    sock: OwnedFd,
    /// The exec this connection started, if any.
    exec: Option<i32>,
}

struct ExecState {
    conn: Option<u64>,
    deadline: Option<Instant>,
    timed_out: bool,
    /// Detached by [`Request::Quiesce`]: an exit is kept for
    /// [`Request::Adopt`] instead of being dropped.
    carried: bool,
}

/// Most detached execs one [`Reply::Quiet`] carries (a datagram takes at
/// most 253 descriptors); more stay attached and refuse the checkpoint.
const MAX_CARRIED: usize = 250;

/// Most exits of detached execs kept for [`Request::Adopt`].
const MAX_CARRIED_EXITS: usize = 4096;

struct Init {
    listener: OwnedFd,
    sigfd: SignalFd,
    result_file: std::fs::File,
    conns: HashMap<u64, Conn>,
    next_conn: u64,
    execs: HashMap<i32, ExecState>,
    main_pid: Option<i32>,
    buf: Vec<u8>,
    /// The main command's captured output, when the node asked for it.
    log: Option<crate::logring::LogRing>,
    /// Exits of detached execs (pid → status, timed out), until adopted.
    carried_exits: HashMap<i32, (ExitStatus, bool)>,
    /// When the last [`Request::Quiesce`] came: exec deadlines move by the
    /// time from then to the next [`Request::Adopt`] (a paused sandbox's
    /// execs do not run out of time while paused).
    quiesced_at: Option<Instant>,
}

enum Source {
    Signals,
    Listener,
    Log,
    Conn(u64),
}

impl Init {
    fn serve(&mut self) -> i32 {
        loop {
            let timeout = self.next_timeout();
            let mut sources = vec![Source::Signals, Source::Listener];
            let ready: Vec<bool> = {
                let mut pfds = vec![
                    PollFd::new(self.sigfd.as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.listener.as_fd(), PollFlags::POLLIN),
                ];
                if let Some(pipe) = self.log.as_ref().and_then(|l| l.pipe.as_ref()) {
                    sources.push(Source::Log);
                    pfds.push(PollFd::new(pipe.as_fd(), PollFlags::POLLIN));
                }
                for (id, c) in &self.conns {
                    sources.push(Source::Conn(*id));
                    pfds.push(PollFd::new(c.sock.as_fd(), PollFlags::POLLIN));
                }
                match poll(&mut pfds, timeout) {
                    Ok(_) => pfds
                        .iter()
                        .map(|p| {
                            p.revents().is_some_and(|r| {
                                r.intersects(
                                    PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR,
                                )
                            })
                        })
                        .collect(),
                    Err(Errno::EINTR) => continue,
                    Err(_) => return 1,
                }
            };
            self.enforce_deadlines();
            for (src, is_ready) in sources.into_iter().zip(ready) {
                if !is_ready {
                    continue;
                }
                match src {
                    Source::Signals => {
                        if let Some(code) = self.on_signals() {
                            return code;
                        }
                    }
                    Source::Listener => self.on_accept(),
                    Source::Log => {
                        if let Some(l) = self.log.as_mut() {
                            l.pump();
                        }
                    }
                    Source::Conn(id) => self.on_conn(id),
                }
            }
        }
    }

    fn next_timeout(&self) -> PollTimeout {
        let now = Instant::now();
        let next = self.execs.values().filter_map(|e| e.deadline).min();
        match next {
            None => PollTimeout::NONE,
            Some(d) => {
                let ms = d.saturating_duration_since(now).as_millis().min(60_000) as u16;
                PollTimeout::from(ms.max(1))
            }
        }
    }

    fn enforce_deadlines(&mut self) {
        let now = Instant::now();
        for (pid, e) in self.execs.iter_mut() {
            if let Some(d) = e.deadline {
                if d <= now && !e.timed_out {
                    e.timed_out = true;
                    e.deadline = None;
                    let _ = kill(Pid::from_raw(-*pid), Signal::SIGKILL);
                    let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
                }
            }
        }
    }

    /// Handles queued signals; returns an exit code when init must exit.
    fn on_signals(&mut self) -> Option<i32> {
        let mut reap = false;
        while let Ok(Some(info)) = self.sigfd.read_signal() {
            let sig = info.ssi_signo as i32;
            if sig == libc::SIGCHLD {
                reap = true;
                continue;
            }
            match (self.main_pid, Signal::try_from(sig)) {
                (Some(pid), Ok(s)) => {
                    let _ = kill(Pid::from_raw(pid), s);
                }
                // An idle sandbox ends on SIGTERM or SIGINT.
                (None, Ok(Signal::SIGTERM)) | (None, Ok(Signal::SIGINT)) => {
                    return Some(128 + sig);
                }
                _ => {}
            }
        }
        if reap {
            return self.reap();
        }
        None
    }

    fn reap(&mut self) -> Option<i32> {
        loop {
            let status = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid.as_raw(), ExitStatus::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    (pid.as_raw(), ExitStatus::Signal(sig as i32))
                }
                Ok(WaitStatus::StillAlive) | Err(_) => return None,
                Ok(_) => continue,
            };
            let (pid, status) = status;
            if Some(pid) == self.main_pid {
                // Keep what the main command printed last.
                if let Some(l) = self.log.as_mut() {
                    l.pump();
                }
                let result = MainResult { status };
                if let Ok(bytes) = encode(&result) {
                    let _ = self.result_file.write_all(&bytes);
                }
                return Some(status.as_shell_code());
            }
            if let Some(e) = self.execs.remove(&pid) {
                if let Some(conn) = e.conn {
                    let reply = Reply::Exited {
                        status,
                        timed_out: e.timed_out,
                    };
                    self.send(conn, &reply, None);
                } else if e.carried && self.carried_exits.len() < MAX_CARRIED_EXITS {
                    self.carried_exits.insert(pid, (status, e.timed_out));
                }
            }
        }
    }

    fn on_accept(&mut self) {
        if let Ok(sock) = warren_sys::socket::accept_cloexec(self.listener.as_fd()) {
            if self.conns.len() >= MAX_CONNECTIONS {
                return;
            }
            let id = self.next_conn;
            self.next_conn += 1;
            self.conns.insert(id, Conn { sock, exec: None });
        }
    }

    fn on_conn(&mut self, id: u64) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        let res = recv_with_fds(conn.sock.as_fd(), &mut self.buf);
        let (n, fds) = match res {
            Ok((0, _)) | Err(_) => {
                self.close(id);
                return;
            }
            Ok(v) => v,
        };
        let req: Request = match decode(&self.buf[..n]) {
            Ok(r) => r,
            Err(e) => {
                self.send(id, &error("bad_request", None, e.to_string()), None);
                return;
            }
        };
        match req {
            Request::Ping {} => self.send(id, &Reply::Pong {}, None),
            Request::Quiesce {} => self.quiesce(id),
            Request::Adopt { pids } => self.adopt(id, pids, fds),
            Request::ReplaceListener {} => {
                let Some(new) = fds.into_iter().next() else {
                    self.send(
                        id,
                        &error("bad_request", None, "no listener came along".into()),
                        None,
                    );
                    return;
                };
                self.listener = new;
                self.send(id, &Reply::Pong {}, None);
                // This connection came through the old listener (outside
                // the sandbox's network namespace): nothing of it may stay
                // for a later checkpoint.
                self.close(id);
            }
            Request::Exec { process } => {
                if self.conns.get(&id).and_then(|c| c.exec).is_some() {
                    self.send(
                        id,
                        &error("bad_request", None, "one exec per connection".into()),
                        None,
                    );
                    return;
                }
                if process.tty.is_none() && fds.len() != process.stdio.count() {
                    self.send(
                        id,
                        &error("bad_request", None, "stdio descriptors do not match".into()),
                        None,
                    );
                    return;
                }
                match spawn::spawn(&process, fds) {
                    Ok(started) => {
                        let deadline = process
                            .timeout_ms
                            .map(|ms| Instant::now() + Duration::from_millis(ms));
                        self.execs.insert(
                            started.pid,
                            ExecState {
                                conn: Some(id),
                                deadline,
                                timed_out: false,
                                carried: false,
                            },
                        );
                        if let Some(c) = self.conns.get_mut(&id) {
                            c.exec = Some(started.pid);
                        }
                        let reply = Reply::Started { pid: started.pid };
                        self.send(id, &reply, started.pty_master.as_ref().map(|m| m.as_fd()));
                    }
                    Err(e) => self.send(id, &error(e.code, e.errno, e.message), None),
                }
            }
            Request::Signal { signal } => {
                let target = self.conns.get(&id).and_then(|c| c.exec);
                match (target, Signal::try_from(signal)) {
                    (Some(pid), Ok(s)) => {
                        // The exec leads its own session and process group.
                        if kill(Pid::from_raw(-pid), s).is_err() {
                            let _ = kill(Pid::from_raw(pid), s);
                        }
                    }
                    (None, _) => self.send(
                        id,
                        &error("bad_request", None, "no exec on this connection".into()),
                        None,
                    ),
                    (_, Err(_)) => self.send(
                        id,
                        &error("bad_request", None, format!("bad signal {signal}")),
                        None,
                    ),
                }
            }
            Request::SignalMain { signal } => match (self.main_pid, Signal::try_from(signal)) {
                (Some(pid), Ok(s)) => {
                    let _ = kill(Pid::from_raw(pid), s);
                    self.send(id, &Reply::Pong {}, None);
                }
                (None, _) => self.send(
                    id,
                    &error(
                        "no_main_process",
                        None,
                        "the sandbox has no main command".into(),
                    ),
                    None,
                ),
                (_, Err(_)) => self.send(
                    id,
                    &error("bad_request", None, format!("bad signal {signal}")),
                    None,
                ),
            },
        }
    }

    /// [`Request::Quiesce`]: closes connections whose peer has gone,
    /// detaches every running exec's connection and hands those to the
    /// node, answers, and closes the asking connection.
    fn quiesce(&mut self, id: u64) {
        let gone: Vec<u64> = self
            .conns
            .iter()
            .filter(|(other, c)| **other != id && peer_gone(c.sock.as_fd()))
            .map(|(other, _)| *other)
            .collect();
        for other in gone {
            self.close(other);
        }
        // An exec that ended has had its exit sent: its connection can go
        // (the node still reads what is queued on it).
        let ended: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.exec.is_some_and(|pid| !self.execs.contains_key(&pid)))
            .map(|(other, _)| *other)
            .collect();
        for other in ended {
            self.close(other);
        }
        let mut running: Vec<(u64, i32)> = self
            .conns
            .iter()
            .filter_map(|(other, c)| c.exec.map(|pid| (*other, pid)))
            .collect();
        running.sort_unstable();
        running.truncate(MAX_CARRIED);
        let mut carried = Vec::new();
        let mut socks = Vec::new();
        for (other, pid) in running {
            if let Some(c) = self.conns.remove(&other) {
                if let Some(e) = self.execs.get_mut(&pid) {
                    e.conn = None;
                    e.carried = true;
                }
                carried.push(pid);
                socks.push(c.sock);
            }
        }
        self.quiesced_at = Some(Instant::now());
        let open = (self.conns.len() - 1) as u32;
        let fds: Vec<BorrowedFd<'_>> = socks.iter().map(|s| s.as_fd()).collect();
        self.send_fds(id, &Reply::Quiet { open, carried }, &fds);
        drop(fds);
        // Init's ends now travel with the reply (or, if it could not be
        // sent, close: the node's execs then see init gone).
        drop(socks);
        self.close(id);
    }

    /// [`Request::Adopt`]: each exec in `pids` reports on the connection
    /// that came for it.
    fn adopt(&mut self, id: u64, pids: Vec<i32>, fds: Vec<OwnedFd>) {
        if pids.len() != fds.len() {
            self.send(
                id,
                &error("bad_request", None, "one connection per pid".into()),
                None,
            );
            return;
        }
        if let Some(at) = self.quiesced_at.take() {
            let paused = at.elapsed();
            for e in self.execs.values_mut() {
                if let Some(d) = e.deadline.as_mut() {
                    *d += paused;
                }
            }
        }
        for (pid, sock) in pids.into_iter().zip(fds) {
            if self.conns.len() >= MAX_CONNECTIONS {
                break;
            }
            let conn = self.next_conn;
            self.next_conn += 1;
            self.conns.insert(
                conn,
                Conn {
                    sock,
                    exec: Some(pid),
                },
            );
            if let Some(e) = self.execs.get_mut(&pid) {
                e.conn = Some(conn);
                e.carried = false;
            } else if let Some((status, timed_out)) = self.carried_exits.remove(&pid) {
                self.send(conn, &Reply::Exited { status, timed_out }, None);
            } else {
                let reply = error("no_such_exec", None, format!("no exec {pid} to adopt"));
                self.send(conn, &reply, None);
                self.close(conn);
            }
        }
        self.send(id, &Reply::Pong {}, None);
        self.close(id);
    }

    fn send(&mut self, id: u64, reply: &Reply, fd: Option<BorrowedFd<'_>>) {
        let fds: Vec<BorrowedFd<'_>> = fd.into_iter().collect();
        self.send_fds(id, reply, &fds);
    }

    fn send_fds(&mut self, id: u64, reply: &Reply, fds: &[BorrowedFd<'_>]) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        let Ok(bytes) = encode(reply) else {
            return;
        };
        if send_with_fds(conn.sock.as_fd(), &bytes, fds).is_err() {
            self.close(id);
        }
    }

    fn close(&mut self, id: u64) {
        if let Some(c) = self.conns.remove(&id) {
            // The exec keeps running without a listener (a background exec).
            if let Some(pid) = c.exec {
                if let Some(e) = self.execs.get_mut(&pid) {
                    e.conn = None;
                }
            }
        }
    }
}

/// Whether the other end of a connection has closed (nothing to read but
/// the hang-up).
fn peer_gone(sock: BorrowedFd<'_>) -> bool {
    let mut pfd = [PollFd::new(sock, PollFlags::POLLIN)];
    match poll(&mut pfd, PollTimeout::ZERO) {
        Ok(_) => pfd[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR)),
        Err(_) => false,
    }
}

fn dup(fd: &OwnedFd) -> Result<OwnedFd, ()> {
    fd.try_clone().map_err(|_| ())
}

fn error(code: &str, errno: Option<i32>, message: String) -> Reply {
    Reply::Error {
        code: code.to_string(),
        errno,
        message,
    }
}
