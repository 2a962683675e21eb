//! The node's side of the init protocol: sockets, exec and signals.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::{
    bind, connect, listen as sys_listen, socket, socketpair, AddressFamily, Backlog, SockFlag,
    SockType, UnixAddr,
};
use warren_cgroup::Cgroup;
use warren_proto::{ProcessSpec, Reply, Request, StdioFds, TtySize};

use super::carry::{ExecRecord, Registered, Registry};
use crate::{Exec, ExecExit, ExecIo, ExecSpec, RuntimeError, SandboxId};

/// Longest wait for init to answer a control request (not an exec's run time).
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest reply init sends (replies are small JSON documents).
const MAX_REPLY_BYTES: usize = 64 * 1024;

fn seqpacket() -> Result<OwnedFd, RuntimeError> {
    socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(RuntimeError::sys("socket"))
}

/// Runs `f` with an address for `path`, going through `/proc/self/fd/N` when
/// the path is longer than a socket address allows.
fn with_addr<T>(
    path: &Path,
    f: impl FnOnce(&UnixAddr) -> Result<T, RuntimeError>,
) -> Result<T, RuntimeError> {
    if let Ok(addr) = UnixAddr::new(path) {
        if path.as_os_str().len() < 100 {
            return f(&addr);
        }
    }
    let parent = path.parent().ok_or(RuntimeError::InvalidSpec {
        field: "path",
        reason: "socket path has no parent".into(),
    })?;
    let name = path.file_name().ok_or(RuntimeError::InvalidSpec {
        field: "path",
        reason: "socket path has no file name".into(),
    })?;
    let dir = nix::fcntl::open(
        parent,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(RuntimeError::sys("open socket dir"))?;
    let short = Path::new("/proc/self/fd")
        .join(dir.as_raw_fd().to_string())
        .join(name);
    let addr = UnixAddr::new(&short).map_err(RuntimeError::sys("socket address"))?;
    let r = f(&addr);
    drop(dir);
    r
}

/// Creates init's control listener at `path` (mode 0600).
pub(crate) fn listen(path: &Path) -> Result<OwnedFd, RuntimeError> {
    let s = seqpacket()?;
    with_addr(path, |a| {
        bind(s.as_raw_fd(), a).map_err(RuntimeError::sys("bind control socket"))
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(RuntimeError::prepare(path))?;
    sys_listen(&s, Backlog::new(1024).unwrap_or(Backlog::MAXCONN))
        .map_err(RuntimeError::sys("listen"))?;
    Ok(s)
}

/// [`listen`], with the socket made inside the sandbox's network namespace
/// (a short-lived thread joins it): the socket then belongs to the
/// sandbox's network namespace like everything else init holds, so a
/// checkpoint (CRIU lists sockets per network namespace) can name it.
pub(crate) fn listen_in_netns(path: &Path, netns: BorrowedFd<'_>) -> Result<OwnedFd, RuntimeError> {
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(RuntimeError::sys("setns(net) for the control socket"))?;
            listen(path)
        })
        .join()
        .unwrap_or_else(|_| {
            Err(RuntimeError::Sys {
                op: "control socket thread",
                source: nix::errno::Errno::EIO,
            })
        })
    })
}

pub(crate) fn seqpacket_pair() -> Result<(OwnedFd, OwnedFd), RuntimeError> {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(RuntimeError::sys("socketpair"))
}

pub(crate) fn send(
    sock: BorrowedFd<'_>,
    msg: &[u8],
    fds: &[BorrowedFd<'_>],
) -> Result<(), RuntimeError> {
    if msg.len() > 200 * 1024 {
        warren_sys::socket::force_send_buffer(sock, msg.len() * 2 + 64 * 1024)
            .map_err(RuntimeError::sys("enlarge send buffer"))?;
    }
    warren_sys::socket::send_with_fds(sock, msg, fds).map_err(|e| match e {
        nix::errno::Errno::EPIPE | nix::errno::Errno::ECONNRESET => RuntimeError::InitGone,
        e => RuntimeError::Sys {
            op: "send to init",
            source: e,
        },
    })
}

/// One received message and the descriptors that came with it.
pub(crate) type Message = (Vec<u8>, Vec<OwnedFd>);

/// Receives one message; `Ok(None)` on timeout, `InitGone` when init closed.
pub(crate) fn recv(
    sock: BorrowedFd<'_>,
    timeout: Option<Duration>,
) -> Result<Option<Message>, RuntimeError> {
    if let Some(t) = timeout {
        let ms = t.as_millis().min(i32::MAX as u128) as i32;
        let mut pfd = [nix::poll::PollFd::new(sock, nix::poll::PollFlags::POLLIN)];
        loop {
            match nix::poll::poll(
                &mut pfd,
                nix::poll::PollTimeout::try_from(ms).unwrap_or(nix::poll::PollTimeout::MAX),
            ) {
                Ok(0) => return Ok(None),
                Ok(_) => break,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    return Err(RuntimeError::Sys {
                        op: "poll init",
                        source: e,
                    })
                }
            }
        }
    }
    let mut buf = vec![0u8; MAX_REPLY_BYTES];
    match warren_sys::socket::recv_with_fds(sock, &mut buf) {
        Ok((0, _)) => Err(RuntimeError::InitGone),
        Ok((n, fds)) => {
            buf.truncate(n);
            Ok(Some((buf, fds)))
        }
        Err(nix::errno::Errno::ECONNRESET) => Err(RuntimeError::InitGone),
        Err(e) => Err(RuntimeError::Sys {
            op: "receive from init",
            source: e,
        }),
    }
}

fn connect_init(dir: &Path) -> Result<OwnedFd, RuntimeError> {
    let s = seqpacket()?;
    with_addr(&dir.join("init.sock"), |a| {
        connect(s.as_raw_fd(), a).map_err(|e| match e {
            nix::errno::Errno::ECONNREFUSED | nix::errno::Errno::ENOENT => RuntimeError::InitGone,
            e => RuntimeError::Sys {
                op: "connect to init",
                source: e,
            },
        })
    })?;
    Ok(s)
}

fn request(
    sock: BorrowedFd<'_>,
    req: &Request,
    fds: &[BorrowedFd<'_>],
) -> Result<(Reply, Vec<OwnedFd>), RuntimeError> {
    let msg = warren_proto::encode(req)?;
    send(sock, &msg, fds)?;
    let (bytes, fds) = recv(sock, Some(REPLY_TIMEOUT))?.ok_or(RuntimeError::InitTimeout {
        secs: REPLY_TIMEOUT.as_secs(),
    })?;
    Ok((warren_proto::decode(&bytes)?, fds))
}

fn unexpected(reply: Reply) -> RuntimeError {
    match reply {
        Reply::Error {
            code,
            errno,
            message,
        } => RuntimeError::Exec {
            code,
            errno,
            message,
        },
        other => RuntimeError::Exec {
            code: "protocol_error".into(),
            errno: None,
            message: format!("unexpected reply {other:?}"),
        },
    }
}

/// Checks that init answers on its control socket.
pub(crate) fn ping(dir: &Path) -> Result<(), RuntimeError> {
    let s = connect_init(dir)?;
    match request(s.as_fd(), &Request::Ping {}, &[])?.0 {
        Reply::Pong {} => Ok(()),
        other => Err(unexpected(other)),
    }
}

/// Moves init's control listener into the network namespace `netns`:
/// the listener at `<dir>/init.sock` moves aside, a new one is bound there
/// inside `netns` and handed to init ([`Request::ReplaceListener`]) through
/// the old one, which init then closes.
pub(crate) fn replace_listener(dir: &Path, netns: BorrowedFd<'_>) -> Result<(), RuntimeError> {
    let path = dir.join("init.sock");
    let old = dir.join("init.sock.old");
    std::fs::rename(&path, &old).map_err(RuntimeError::prepare(&path))?;
    let new = listen_in_netns(&path, netns)?;
    let s = seqpacket()?;
    with_addr(&old, |a| {
        connect(s.as_raw_fd(), a).map_err(RuntimeError::sys("connect to init"))
    })?;
    match request(s.as_fd(), &Request::ReplaceListener {}, &[new.as_fd()])?.0 {
        Reply::Pong {} => {}
        other => return Err(unexpected(other)),
    }
    wait_closed(s.as_fd())?;
    std::fs::remove_file(&old).map_err(RuntimeError::prepare(&old))
}

/// Waits until init has closed its end of `sock` (after a request it
/// answers by closing): nothing of the connection is left in init then.
fn wait_closed(sock: BorrowedFd<'_>) -> Result<(), RuntimeError> {
    match recv(sock, Some(REPLY_TIMEOUT)) {
        Err(RuntimeError::InitGone) => Ok(()),
        Ok(None) => Err(RuntimeError::InitTimeout {
            secs: REPLY_TIMEOUT.as_secs(),
        }),
        Ok(Some(_)) => Err(RuntimeError::InitSetup {
            step: "protocol".into(),
            errno: None,
            message: "init answered twice".into(),
        }),
        Err(e) => Err(e),
    }
}

/// What [`quiesce`] found.
pub(crate) struct Quiesced {
    /// Control connections still open in init besides the asking one.
    pub open: u32,
    /// Running execs whose connections init detached: pid and init's end.
    pub carried: Vec<(i32, OwnedFd)>,
}

/// [`Request::Quiesce`]: init detaches the running execs' connections and
/// hands them over, and answers how many other connections stay open; it
/// closes this one itself.
pub(crate) fn quiesce(dir: &Path) -> Result<Quiesced, RuntimeError> {
    let s = connect_init(dir)?;
    let (open, pids, fds) = match request(s.as_fd(), &Request::Quiesce {}, &[])? {
        (Reply::Quiet { open, carried }, fds) => (open, carried, fds),
        (other, _) => return Err(unexpected(other)),
    };
    if pids.len() != fds.len() {
        return Err(RuntimeError::Exec {
            code: "protocol_error".into(),
            errno: None,
            message: format!(
                "init carried {} execs with {} connections",
                pids.len(),
                fds.len()
            ),
        });
    }
    wait_closed(s.as_fd())?;
    Ok(Quiesced {
        open,
        carried: pids.into_iter().zip(fds).collect(),
    })
}

/// [`Request::Adopt`]: each exec reports on the connection given for it.
pub(crate) fn adopt(dir: &Path, execs: &[(i32, BorrowedFd<'_>)]) -> Result<(), RuntimeError> {
    if execs.is_empty() {
        return Ok(());
    }
    let s = connect_init(dir)?;
    let pids = execs.iter().map(|(p, _)| *p).collect();
    let fds: Vec<BorrowedFd<'_>> = execs.iter().map(|(_, f)| *f).collect();
    match request(s.as_fd(), &Request::Adopt { pids }, &fds)?.0 {
        Reply::Pong {} => Ok(()),
        other => Err(unexpected(other)),
    }
}

pub(crate) fn signal_main(dir: &Path, signal: i32) -> Result<(), RuntimeError> {
    let s = connect_init(dir)?;
    match request(s.as_fd(), &Request::SignalMain { signal }, &[])?.0 {
        Reply::Pong {} => Ok(()),
        other => Err(unexpected(other)),
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), RuntimeError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(RuntimeError::sys("pipe"))
}

/// The inode of `fd` when it is a pipe.
fn pipe_inode(fd: &OwnedFd) -> Option<u64> {
    let st = nix::sys::stat::fstat(fd).ok()?;
    (st.st_mode & libc::S_IFMT == libc::S_IFIFO).then_some(st.st_ino)
}

/// CRIU's name of the pipe `fd` is (`pipe:[ino]`, as `/proc/PID/fd` shows
/// it), when it is one.
pub(crate) fn pipe_key(fd: &OwnedFd) -> Option<String> {
    pipe_inode(fd).map(pipe_name)
}

/// CRIU's name of the pipe with inode `ino`.
pub(crate) fn pipe_name(ino: u64) -> String {
    format!("pipe:[{ino}]")
}

/// Starts an exec through init, and records its streams in `registry`
/// (under `id`) for a later checkpoint.
pub(crate) fn start_exec(
    dir: &Path,
    cgroup: Arc<Cgroup>,
    spec: &ExecSpec,
    io: ExecIo,
    agent: bool,
    (registry, id): (&Arc<Registry>, &SandboxId),
) -> Result<Exec, RuntimeError> {
    let oom_before = cgroup.oom_kills().unwrap_or(0);
    let mut stdio = StdioFds::default();
    let mut send_fds: Vec<OwnedFd> = Vec::new();
    let (mut stdin, mut stdout, mut stderr) = (None, None, None);
    let mut tty = None;
    match io {
        ExecIo::Null => {}
        ExecIo::Pipes { stdin: want_stdin } => {
            if want_stdin {
                let (r, w) = pipe()?;
                stdio.stdin = true;
                send_fds.push(r);
                stdin = Some(File::from(w));
            }
            let (r, w) = pipe()?;
            stdio.stdout = true;
            send_fds.push(w);
            stdout = Some(File::from(r));
            let (r, w) = pipe()?;
            stdio.stderr = true;
            send_fds.push(w);
            stderr = Some(File::from(r));
        }
        ExecIo::Fds {
            stdin: i,
            stdout: o,
            stderr: e,
        } => {
            stdio = StdioFds {
                stdin: i.is_some(),
                stdout: o.is_some(),
                stderr: e.is_some(),
            };
            send_fds.extend([i, o, e].into_iter().flatten());
        }
        ExecIo::Pty { rows, cols } => tty = Some(TtySize { rows, cols }),
    }
    let process = ProcessSpec {
        argv: spec.argv.clone(),
        env: spec.env.clone(),
        cwd: spec.workdir.clone(),
        uid: spec.user.uid,
        gid: spec.user.gid,
        groups: spec.user.groups.clone(),
        tty,
        stdio,
        timeout_ms: spec
            .timeout
            .map(|t| t.as_millis().min(u64::MAX as u128) as u64),
        agent,
    };
    // The sandbox's ends, in stdin, stdout, stderr order as flagged.
    let mut ends = send_fds.iter();
    let mut end = |present: bool| {
        if present {
            ends.next().and_then(pipe_inode)
        } else {
            None
        }
    };
    let (in_ino, out_ino, err_ino) = (end(stdio.stdin), end(stdio.stdout), end(stdio.stderr));
    let record = ExecRecord {
        argv: spec.argv.clone(),
        agent,
        tty: tty.is_some(),
        stdin: in_ino,
        stdout: out_ino,
        stderr: err_ino,
    };
    let sock = connect_init(dir)?;
    let borrowed: Vec<BorrowedFd<'_>> = send_fds.iter().map(|f| f.as_fd()).collect();
    let (reply, mut fds) = request(sock.as_fd(), &Request::Exec { process }, &borrowed)?;
    drop(borrowed);
    drop(send_fds);
    match reply {
        Reply::Started { pid } => {
            let pty = if tty.is_some() {
                Some(File::from(fds.pop().ok_or_else(|| RuntimeError::Exec {
                    code: "protocol_error".into(),
                    errno: None,
                    message: "init sent no terminal".into(),
                })?))
            } else {
                None
            };
            Ok(Exec {
                pid,
                stdin,
                stdout,
                stderr,
                pty,
                inner: ExecControl {
                    sock,
                    cgroup,
                    oom_before,
                    exit: None,
                    registered: Some(registry.register(id, pid, record)),
                },
            })
        }
        other => Err(unexpected(other)),
    }
}

/// The node's end of one exec's control connection.
pub(crate) struct ExecControl {
    sock: OwnedFd,
    cgroup: Arc<Cgroup>,
    oom_before: u64,
    exit: Option<ExecExit>,
    /// Its entry in the exec registry, until the exit is in.
    registered: Option<Registered>,
}

impl ExecControl {
    /// The handle of an exec a restored init adopted on `sock`.
    pub(crate) fn adopted(sock: OwnedFd, cgroup: Arc<Cgroup>, registered: Registered) -> Self {
        let oom_before = cgroup.oom_kills().unwrap_or(0);
        ExecControl {
            sock,
            cgroup,
            oom_before,
            exit: None,
            registered: Some(registered),
        }
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }

    pub(crate) fn wait(
        &mut self,
        timeout: Option<Duration>,
    ) -> Result<Option<ExecExit>, RuntimeError> {
        if let Some(e) = self.exit {
            return Ok(Some(e));
        }
        let (bytes, _) = match recv(self.sock.as_fd(), timeout)? {
            None => return Ok(None),
            Some(m) => m,
        };
        match warren_proto::decode::<Reply>(&bytes)? {
            Reply::Exited { status, timed_out } => {
                let oom_killed = status == warren_proto::ExitStatus::Signal(libc::SIGKILL)
                    && !timed_out
                    && self.cgroup.oom_kills().unwrap_or(0) > self.oom_before;
                let e = ExecExit {
                    status,
                    timed_out,
                    oom_killed,
                };
                self.exit = Some(e);
                self.registered = None;
                Ok(Some(e))
            }
            other => Err(unexpected(other)),
        }
    }

    pub(crate) fn signal(&self, signal: i32) -> Result<(), RuntimeError> {
        let msg = warren_proto::encode(&Request::Signal { signal })?;
        send(self.sock.as_fd(), &msg, &[])
    }
}
