//! `watch`: inotify events for a path (and, on request, every directory
//! below it, including ones created later), until the node closes stdin.
//!
//! The event queue is bounded by the kernel: while the node is not reading,
//! the agent blocks writing to its stdout pipe and events wait in the
//! inotify queue (`fs.inotify.max_queued_events`); when that is full the
//! kernel drops events and queues `IN_Q_OVERFLOW`, which is reported as an
//! explicit `overflow` event. Nothing grows in the agent or the node.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use warren_proto::agent::{
    AgentReply, FileKind, FsErrorCode, WatchEvent, WatchEventKind, MAX_EVENTS_PER_MESSAGE,
};

use super::path::{check, join, open_in};
use super::{End, Fail, Io};

/// Most directories one recursive watch covers.
const MAX_WATCHES: usize = 8192;

/// Deepest nesting a recursive watch descends into.
const MAX_DEPTH: usize = 64;

struct Watcher {
    inotify: Inotify,
    /// Watch descriptor → the sandbox path it watches.
    paths: HashMap<WatchDescriptor, Vec<u8>>,
    root_wd: Option<WatchDescriptor>,
    recursive: bool,
}

fn mask() -> AddWatchFlags {
    AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_MODIFY
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF
}

impl Watcher {
    /// Watches the file `fd` refers to. inotify takes only paths, so the
    /// descriptor's own `/proc/self/fd` entry names it: the kernel follows
    /// that link to exactly the file resolved (inside the root) before.
    fn add(&mut self, fd: BorrowedFd<'_>, path: Vec<u8>) -> Result<WatchDescriptor, Fail> {
        if self.paths.len() >= MAX_WATCHES {
            return Err(Fail::new(
                FsErrorCode::LimitExceeded,
                "too many directories to watch",
            ));
        }
        let link = format!("/proc/self/fd/{}", fd.as_raw_fd());
        let wd = self
            .inotify
            .add_watch(link.as_str(), mask())
            .map_err(|e| match e {
                Errno::ENOSPC => Fail::new(FsErrorCode::LimitExceeded, "inotify watch limit"),
                e => Fail::errno(e, "inotify_add_watch"),
            })?;
        self.paths.insert(wd, path);
        Ok(wd)
    }

    /// Adds a watch for every directory below `dir` (never following
    /// symlinks).
    fn add_tree(&mut self, dir: &OwnedFd, prefix: &[u8], depth: usize) -> Result<(), Fail> {
        if depth >= MAX_DEPTH {
            return Ok(());
        }
        let Ok(rd) = nix::fcntl::openat(
            dir,
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        ) else {
            return Ok(());
        };
        let Ok(mut d) = nix::dir::Dir::from_fd(rd) else {
            return Ok(());
        };
        let mut subdirs = Vec::new();
        for e in d.iter().flatten() {
            let n = e.file_name().to_bytes();
            if n == b"." || n == b".." {
                continue;
            }
            if e.file_type() == Some(nix::dir::Type::Directory) {
                subdirs.push(n.to_vec());
            }
        }
        drop(d);
        for n in subdirs {
            let Ok(sub) = nix::fcntl::openat(
                dir,
                n.as_slice(),
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            ) else {
                continue;
            };
            let path = join(prefix, &n);
            self.add(sub.as_fd(), path.clone())?;
            self.add_tree(&sub, &path, depth + 1)?;
        }
        Ok(())
    }

    /// A directory appeared under a recursive watch: watch it and what it
    /// already holds. It is opened from the root like any request path.
    fn on_new_dir(&mut self, root: BorrowedFd<'_>, path: &[u8]) {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW;
        if let Ok(fd) = open_in(root, path, flags) {
            if self.add(fd.as_fd(), path.to_vec()).is_ok() {
                let _ = self.add_tree(&fd, path, 0);
            }
        }
    }
}

pub(crate) fn run(
    io: &mut Io,
    root: BorrowedFd<'_>,
    path: &[u8],
    recursive: bool,
) -> Result<(), End> {
    let mut w = match start(root, path, recursive) {
        Ok(w) => w,
        Err(f) => return io.fail(f),
    };
    io.send(&AgentReply::Watching {})?;
    loop {
        let (stdin_ready, events_ready) = {
            let mut fds = [
                PollFd::new(io.stdin_fd(), PollFlags::POLLIN),
                PollFd::new(w.inotify.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(_) => return Err(End::Broken),
            }
            let ready = |p: &PollFd<'_>| p.revents().is_some_and(|r| !r.is_empty());
            (ready(&fds[0]), ready(&fds[1]))
        };
        if stdin_ready {
            // The node only ever closes stdin during a watch.
            let mut b = [0u8; 1];
            return match nix::unistd::read(io.stdin_fd(), &mut b) {
                Ok(0) => Err(End::Eof),
                _ => Err(End::Broken),
            };
        }
        if !events_ready {
            continue;
        }
        let raw = match w.inotify.read_events() {
            Ok(ev) => ev,
            Err(Errno::EAGAIN) | Err(Errno::EINTR) => continue,
            Err(_) => return Err(End::Broken),
        };
        let mut out: Vec<WatchEvent> = Vec::new();
        let mut root_gone = false;
        for ev in raw {
            if ev.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                out.push(WatchEvent {
                    kind: WatchEventKind::Overflow,
                    path: Vec::new(),
                    is_dir: false,
                    cookie: 0,
                });
                continue;
            }
            if ev.mask.contains(AddWatchFlags::IN_IGNORED) {
                if Some(ev.wd) == w.root_wd {
                    root_gone = true;
                }
                w.paths.remove(&ev.wd);
                continue;
            }
            let Some(base) = w.paths.get(&ev.wd) else {
                continue;
            };
            let is_dir = ev.mask.contains(AddWatchFlags::IN_ISDIR);
            let self_event = ev
                .mask
                .intersects(AddWatchFlags::IN_DELETE_SELF | AddWatchFlags::IN_MOVE_SELF);
            if self_event {
                // Below the root the parent already reported it.
                if Some(ev.wd) == w.root_wd {
                    out.push(WatchEvent {
                        kind: if ev.mask.contains(AddWatchFlags::IN_DELETE_SELF) {
                            WatchEventKind::Deleted
                        } else {
                            WatchEventKind::MovedFrom
                        },
                        path: base.clone(),
                        is_dir,
                        cookie: 0,
                    });
                    root_gone = true;
                }
                continue;
            }
            let full = match &ev.name {
                Some(n) => join(base, std::os::unix::ffi::OsStrExt::as_bytes(n.as_os_str())),
                None => base.clone(),
            };
            let kind = if ev.mask.contains(AddWatchFlags::IN_CREATE) {
                WatchEventKind::Created
            } else if ev.mask.contains(AddWatchFlags::IN_MODIFY) {
                WatchEventKind::Modified
            } else if ev.mask.contains(AddWatchFlags::IN_ATTRIB) {
                WatchEventKind::Attributes
            } else if ev.mask.contains(AddWatchFlags::IN_DELETE) {
                WatchEventKind::Deleted
            } else if ev.mask.contains(AddWatchFlags::IN_MOVED_FROM) {
                WatchEventKind::MovedFrom
            } else if ev.mask.contains(AddWatchFlags::IN_MOVED_TO) {
                WatchEventKind::MovedTo
            } else {
                continue;
            };
            if w.recursive
                && is_dir
                && matches!(kind, WatchEventKind::Created | WatchEventKind::MovedTo)
            {
                w.on_new_dir(root, &full);
            }
            // Consecutive writes to one file are one event.
            if kind == WatchEventKind::Modified
                && out.last().is_some_and(|l| l.kind == kind && l.path == full)
            {
                continue;
            }
            out.push(WatchEvent {
                kind,
                path: full,
                is_dir,
                cookie: ev.cookie,
            });
        }
        for chunk in out.chunks(MAX_EVENTS_PER_MESSAGE) {
            io.send(&AgentReply::Events {
                events: chunk.to_vec(),
            })?;
        }
        if root_gone {
            io.send(&AgentReply::Done { bytes: 0 })?;
            // Wait for the node to close stdin: one conversation per watch.
            let mut b = [0u8; 1];
            return match nix::unistd::read(io.stdin_fd(), &mut b) {
                Ok(0) => Err(End::Eof),
                _ => Err(End::Broken),
            };
        }
    }
}

fn start(root: BorrowedFd<'_>, path: &[u8], recursive: bool) -> Result<Watcher, Fail> {
    check(path)?;
    let fd = open_in(root, path, OFlag::O_PATH).map_err(|e| Fail::errno(e, "open"))?;
    let st = nix::sys::stat::fstat(&fd).map_err(|e| Fail::errno(e, "stat"))?;
    let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
        .map_err(|e| Fail::errno(e, "inotify_init"))?;
    let mut w = Watcher {
        inotify,
        paths: HashMap::new(),
        root_wd: None,
        recursive,
    };
    let mut prefix = path.to_vec();
    while prefix.len() > 1 && prefix.ends_with(b"/") {
        prefix.pop();
    }
    w.root_wd = Some(w.add(fd.as_fd(), prefix.clone())?);
    if recursive && FileKind::from_mode(st.st_mode) == FileKind::Directory {
        let dir = open_in(root, path, OFlag::O_RDONLY | OFlag::O_DIRECTORY)
            .map_err(|e| Fail::errno(e, "open directory"))?;
        w.add_tree(&dir, &prefix, 0)?;
    }
    Ok(w)
}
