//! Doing work inside another network namespace without moving the caller.
//!
//! A socket belongs to the network namespace of the thread that created it,
//! for its whole life. So: a thread enters the target namespace, creates the
//! socket, and (for the long-lived worker) returns to its own namespace;
//! everything after that, such as `connect`, runs wherever the caller is.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

use nix::sched::{setns, CloneFlags};
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};

/// Runs `f` on a short-lived thread that first joins the network namespace
/// `netns`; the caller's own namespace is untouched.
pub fn in_netns<T: Send>(netns: BorrowedFd<'_>, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    std::thread::scope(|s| {
        s.spawn(move || {
            setns(netns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
            Ok(f())
        })
        .join()
        .map_err(|_| io::Error::other("network namespace worker panicked"))?
    })
}

type Job = Box<dyn FnOnce() + Send>;

/// A job for the socket worker: the namespace to enter and what to do there.
struct Request {
    netns: OwnedFd,
    job: Job,
}

static WORKER: OnceLock<Mutex<Option<mpsc::Sender<Request>>>> = OnceLock::new();

/// Starts the worker thread: it remembers its own namespace and returns to
/// it after every job. If returning ever fails it exits (it would otherwise
/// run later jobs from the wrong place); the next request starts a new one.
fn spawn_worker() -> io::Result<mpsc::Sender<Request>> {
    let home = std::fs::File::open("/proc/thread-self/ns/net")?;
    let (tx, rx) = mpsc::channel::<Request>();
    std::thread::Builder::new()
        .name("warren-netns-sock".into())
        .spawn(move || {
            let home: OwnedFd = home.into();
            while let Ok(req) = rx.recv() {
                if setns(req.netns.as_fd(), CloneFlags::CLONE_NEWNET).is_err() {
                    // The job's reply channel drops: the caller sees an error.
                    drop(req);
                    continue;
                }
                (req.job)();
                if setns(home.as_fd(), CloneFlags::CLONE_NEWNET).is_err() {
                    tracing::error!("socket worker could not return to its namespace; exiting");
                    return;
                }
            }
        })?;
    Ok(tx)
}

/// Runs `job` on the shared worker thread inside `netns` and returns its
/// result (for short, non-blocking work such as creating a socket).
fn on_worker<T: Send + 'static>(
    netns: BorrowedFd<'_>,
    job: impl FnOnce() -> T + Send + 'static,
) -> io::Result<tokio::sync::oneshot::Receiver<T>> {
    let netns = netns.try_clone_to_owned()?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut req = Request {
        netns,
        job: Box::new(move || {
            let _ = tx.send(job());
        }),
    };
    let slot = WORKER.get_or_init(|| Mutex::new(None));
    let mut guard = slot.lock().unwrap_or_else(|p| p.into_inner());
    for _ in 0..2 {
        let sender = match guard.as_ref() {
            Some(s) => s.clone(),
            None => {
                let s = spawn_worker()?;
                *guard = Some(s.clone());
                s
            }
        };
        match sender.send(req) {
            Ok(()) => return Ok(rx),
            Err(mpsc::SendError(back)) => {
                // The worker exited; start another once.
                req = back;
                *guard = None;
            }
        }
    }
    Err(io::Error::other("network namespace worker unavailable"))
}

/// A TCP socket created inside `netns` (close-on-exec, non-blocking).
fn tcp_socket_in(
    netns: BorrowedFd<'_>,
    v6: bool,
) -> io::Result<tokio::sync::oneshot::Receiver<io::Result<OwnedFd>>> {
    on_worker(netns, move || {
        let family = if v6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        socket(
            family,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .map_err(io::Error::from)
    })
}

/// Connects to `addr` from inside the network namespace `netns`: the socket
/// is made there (so `127.0.0.1` means the sandbox's own loopback, and the
/// sandbox's routes and policy apply), the connect runs on the caller's
/// tokio runtime. Call from within a tokio runtime.
pub async fn connect_in_netns(
    netns: BorrowedFd<'_>,
    addr: SocketAddr,
) -> io::Result<tokio::net::TcpStream> {
    let rx = tcp_socket_in(netns, addr.is_ipv6())?;
    let fd = rx
        .await
        .map_err(|_| io::Error::other("could not enter the network namespace"))??;
    let std = std::net::TcpStream::from(fd);
    let sock = tokio::net::TcpSocket::from_std_stream(std);
    sock.connect(addr).await
}

/// A `std` TCP listener bound to `addr` inside `netns` (for tests and
/// probes that serve from inside a namespace).
pub fn listen_in_netns(
    netns: BorrowedFd<'_>,
    addr: SocketAddr,
) -> io::Result<std::net::TcpListener> {
    in_netns(netns, move || std::net::TcpListener::bind(addr))?
}

/// A `std` UDP socket bound to `addr` inside `netns`.
pub fn udp_in_netns(netns: BorrowedFd<'_>, addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    in_netns(netns, move || std::net::UdpSocket::bind(addr))?
}
