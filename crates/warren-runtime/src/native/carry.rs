//! Execs carried across a checkpoint.
//!
//! An exec's control connection and its stdio pipes end in the node, outside
//! the process tree CRIU dumps. Before a checkpoint init detaches the
//! connections of running execs and hands them to the node
//! ([`warren_proto::Request::Quiesce`]); the node knows which pipes each
//! exec got from [`Registry`]. Then:
//!
//! - **The sandbox keeps running** (`leave_running`): after the dump the
//!   connections go straight back to init ([`warren_proto::Request::Adopt`]).
//! - **The sandbox stops** (pause): the node keeps, in a [`Stash`] under the
//!   checkpoint's directory, the detached connections and a descriptor of
//!   the sandbox's end of each pipe, so that none of the node's streams sees
//!   an end while the sandbox is gone. A restore of that checkpoint under the
//!   same id hands the pipe ends to CRIU (`--inherit-fd`) and the
//!   connections back to init: whoever held the exec (a stream, a background
//!   exec, a file operation) never notices.
//! - **A restore as another sandbox** (fork, restore of a memory snapshot):
//!   each carried exec gets new pipes and a new connection, and comes back as
//!   a [`RestoredExec`] for the caller to drain. What sat unread in the
//!   source's pipes stays there (the copy's streams start empty). File
//!   agents are not carried into copies: their input ends, so they exit.
//!
//! Execs with a terminal are not carried: a checkpoint with one attached is
//! refused.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use warren_cgroup::Cgroup;

use super::checkpoint::CarriedExec;
use super::control;
use crate::{Exec, RuntimeError, SandboxId};

/// What the node knows about one running exec's streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExecRecord {
    pub argv: Vec<String>,
    /// The file agent (`exec_agent`).
    pub agent: bool,
    pub tty: bool,
    /// Inodes of the pipes the sandbox's side got (`None`: not a pipe, or
    /// no such stream).
    pub stdin: Option<u64>,
    pub stdout: Option<u64>,
    pub stderr: Option<u64>,
}

/// The records of every exec the node has a handle for, by sandbox and
/// pid (in the sandbox's pid namespace).
#[derive(Default)]
pub(crate) struct Registry {
    map: Mutex<HashMap<(SandboxId, i32), ExecRecord>>,
}

/// One exec's entry in the [`Registry`]; dropping it removes the entry.
pub(crate) struct Registered {
    registry: Arc<Registry>,
    key: (SandboxId, i32),
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry
            .map
            .lock()
            .expect("exec registry lock poisoned")
            .remove(&self.key);
    }
}

impl Registry {
    pub(crate) fn register(
        self: &Arc<Self>,
        id: &SandboxId,
        pid: i32,
        r: ExecRecord,
    ) -> Registered {
        let key = (id.clone(), pid);
        self.map
            .lock()
            .expect("exec registry lock poisoned")
            .insert(key.clone(), r);
        Registered {
            registry: self.clone(),
            key,
        }
    }

    fn get(&self, id: &SandboxId, pid: i32) -> Option<ExecRecord> {
        self.map
            .lock()
            .expect("exec registry lock poisoned")
            .get(&(id.clone(), pid))
            .cloned()
    }

    /// What a checkpoint records of the execs init detached; refuses a
    /// terminal exec.
    pub(crate) fn describe(
        &self,
        id: &SandboxId,
        pids: &[i32],
    ) -> Result<Vec<CarriedExec>, RuntimeError> {
        let mut out = Vec::new();
        let mut terminals = 0;
        for &pid in pids {
            // An exec the node has no record of (its handle was dropped
            // while init still held the connection) carries no streams.
            let r = self.get(id, pid).unwrap_or(ExecRecord {
                argv: Vec::new(),
                agent: false,
                tty: false,
                stdin: None,
                stdout: None,
                stderr: None,
            });
            if r.tty {
                terminals += 1;
                continue;
            }
            let key = |ino: Option<u64>| ino.map(control::pipe_name);
            out.push(CarriedExec {
                pid,
                argv: r.argv,
                agent: r.agent,
                stdin: key(r.stdin),
                stdout: key(r.stdout),
                stderr: key(r.stderr),
            });
        }
        if terminals > 0 {
            return Err(RuntimeError::SnapshotUnsupported {
                reason: format!(
                    "{terminals} exec(s) with a terminal are attached to the sandbox; a \
                     checkpoint needs them finished (execs without a terminal, background \
                     execs and file operations are carried)"
                ),
            });
        }
        Ok(out)
    }
}

/// A paused sandbox's carried execs, kept by the node until the checkpoint
/// is restored under the same id (or removed).
pub(crate) struct Stash {
    pub id: SandboxId,
    /// Init's ends of the detached exec connections, by pid.
    pub conns: Vec<(i32, OwnedFd)>,
    /// The sandbox's end of each carried pipe, by CRIU key.
    pub pipes: Vec<(String, OwnedFd)>,
}

impl Stash {
    pub(crate) fn try_clone(&self) -> std::io::Result<Stash> {
        Ok(Stash {
            id: self.id.clone(),
            conns: self
                .conns
                .iter()
                .map(|(p, f)| Ok((*p, f.try_clone()?)))
                .collect::<std::io::Result<_>>()?,
            pipes: self
                .pipes
                .iter()
                .map(|(k, f)| Ok((k.clone(), f.try_clone()?)))
                .collect::<std::io::Result<_>>()?,
        })
    }
}

/// The stashes of paused sandboxes, by checkpoint directory.
#[derive(Default)]
pub(crate) struct Stashes(Mutex<HashMap<PathBuf, Stash>>);

impl Stashes {
    pub(crate) fn put(&self, dir: &Path, stash: Stash) {
        self.0
            .lock()
            .expect("stash lock poisoned")
            .insert(dir.to_path_buf(), stash);
    }

    /// A copy of the stash of `dir` if it was made for `id`.
    pub(crate) fn copy(&self, dir: &Path, id: &SandboxId) -> Result<Option<Stash>, RuntimeError> {
        let map = self.0.lock().expect("stash lock poisoned");
        match map.get(dir) {
            Some(s) if &s.id == id => Ok(Some(s.try_clone().map_err(RuntimeError::prepare(dir))?)),
            _ => Ok(None),
        }
    }

    pub(crate) fn remove(&self, dir: &Path) {
        self.0.lock().expect("stash lock poisoned").remove(dir);
    }
}

/// Takes a duplicate of the sandbox's end of every carried pipe, found
/// among the open descriptors of the sandbox's processes
/// (`pidfd_getfd`: nothing inside the sandbox is opened by path), so that
/// the pipes outlive the processes. A duplicate is kept only if it still
/// is that pipe (a process may swap its descriptors meanwhile).
pub(crate) fn hold_pipes(
    cgroup: &Cgroup,
    execs: &[CarriedExec],
) -> Result<Vec<(String, OwnedFd)>, RuntimeError> {
    let mut wanted: HashSet<String> = execs
        .iter()
        .flat_map(|e| [&e.stdin, &e.stdout, &e.stderr])
        .flatten()
        .cloned()
        .collect();
    let mut held = Vec::new();
    if wanted.is_empty() {
        return Ok(held);
    }
    let procs =
        cgroup
            .procs_files()
            .into_iter()
            .next()
            .ok_or(RuntimeError::SnapshotUnsupported {
                reason: "the sandbox has no cgroup".into(),
            })?;
    let text = fs::read_to_string(&procs).map_err(RuntimeError::prepare(&procs))?;
    for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        if wanted.is_empty() {
            break;
        }
        let dir = PathBuf::from(format!("/proc/{pid}/fd"));
        let (Ok(entries), Ok(pidfd)) = (fs::read_dir(&dir), warren_sys::pidfd::open(pid)) else {
            // It exited meanwhile.
            continue;
        };
        for e in entries.flatten() {
            let Ok(link) = fs::read_link(e.path()) else {
                continue;
            };
            let link = link.to_string_lossy().into_owned();
            if !wanted.contains(&link) {
                continue;
            }
            let Some(n) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(fd) = warren_sys::pidfd::get_fd(pidfd.as_fd(), n) else {
                continue;
            };
            if control::pipe_key(&fd).as_deref() == Some(link.as_str()) {
                wanted.remove(&link);
                held.push((link, fd));
            }
        }
    }
    Ok(held)
}

/// An exec of a restored copy: it was running in the checkpointed sandbox
/// and continues in the copy with new streams.
#[derive(Debug)]
pub struct RestoredExec {
    pub exec: Exec,
    /// Its command, as it was started.
    pub argv: Vec<String>,
}

/// New streams for the carried execs of a checkpoint restored as another
/// sandbox: what CRIU hands the processes, and what the node keeps.
pub(crate) struct Fresh {
    /// The sandbox's ends, by CRIU key (`--inherit-fd`).
    pub inherit: Vec<(String, OwnedFd)>,
    execs: Vec<FreshExec>,
}

struct FreshExec {
    carried: CarriedExec,
    stdin: Option<File>,
    stdout: Option<File>,
    stderr: Option<File>,
}

fn pipe() -> Result<(OwnedFd, OwnedFd), RuntimeError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(RuntimeError::sys("pipe"))
}

impl Fresh {
    pub(crate) fn new(execs: &[CarriedExec]) -> Result<Fresh, RuntimeError> {
        let mut fresh = Fresh {
            inherit: Vec::new(),
            execs: Vec::new(),
        };
        for c in execs.iter().filter(|c| !c.agent) {
            let mut e = FreshExec {
                carried: c.clone(),
                stdin: None,
                stdout: None,
                stderr: None,
            };
            if let Some(k) = &c.stdin {
                let (r, w) = pipe()?;
                fresh.inherit.push((k.clone(), r));
                e.stdin = Some(File::from(w));
            }
            for (k, keep) in [(&c.stdout, &mut e.stdout), (&c.stderr, &mut e.stderr)] {
                if let Some(k) = k {
                    let (r, w) = pipe()?;
                    fresh.inherit.push((k.clone(), w));
                    *keep = Some(File::from(r));
                }
            }
            fresh.execs.push(e);
        }
        Ok(fresh)
    }

    /// Hands each exec's new connection to the restored init and returns
    /// the execs, registered under `id`.
    pub(crate) fn adopt(
        self,
        dir: &Path,
        id: &SandboxId,
        cgroup: &Arc<Cgroup>,
        registry: &Arc<Registry>,
    ) -> Result<Vec<RestoredExec>, RuntimeError> {
        // The descriptors CRIU got are the processes' now.
        drop(self.inherit);
        if self.execs.is_empty() {
            return Ok(Vec::new());
        }
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        for _ in &self.execs {
            let (a, b) = control::seqpacket_pair()?;
            ours.push(a);
            theirs.push(b);
        }
        let pids: Vec<i32> = self.execs.iter().map(|e| e.carried.pid).collect();
        let borrowed: Vec<(i32, BorrowedFd<'_>)> = pids
            .iter()
            .zip(&theirs)
            .map(|(p, f)| (*p, f.as_fd()))
            .collect();
        control::adopt(dir, &borrowed)?;
        drop(borrowed);
        drop(theirs);
        let mut out = Vec::new();
        for (e, sock) in self.execs.into_iter().zip(ours) {
            let ino =
                |f: &Option<File>| f.as_ref().and_then(|f| f.metadata().ok()).map(|m| m.ino());
            let record = ExecRecord {
                argv: e.carried.argv.clone(),
                agent: false,
                tty: false,
                stdin: ino(&e.stdin),
                stdout: ino(&e.stdout),
                stderr: ino(&e.stderr),
            };
            let registered = registry.register(id, e.carried.pid, record);
            out.push(RestoredExec {
                exec: Exec {
                    pid: e.carried.pid,
                    stdin: e.stdin,
                    stdout: e.stdout,
                    stderr: e.stderr,
                    pty: None,
                    inner: control::ExecControl::adopted(sock, cgroup.clone(), registered),
                },
                argv: e.carried.argv,
            });
        }
        Ok(out)
    }
}
