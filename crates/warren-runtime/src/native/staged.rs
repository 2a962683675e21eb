//! Creating a sandbox in the checkpointable shape (`SandboxSpec::checkpointable`).
//!
//! A created sandbox normally lives in namespaces owned by the host, with
//! only its processes in its own user namespace; CRIU cannot checkpoint
//! that. In the checkpointable shape the sandbox's user namespace owns its
//! mount, UTS, IPC, network, cgroup and PID namespaces, as in rootless
//! containers:
//!
//! 1. The node clones init into a private (host-owned) mount namespace only
//!    and sends [`Bootstrap`] with `checkpointable` and the user namespace.
//! 2. Init, still host root, assembles the root (idmapped layers, overlay,
//!    binds, image mounts) into a detached tree, enters the user namespace,
//!    creates the other namespaces from inside it and forks PID 1 of the
//!    new PID namespace, whose host pid it reports
//!    ([`BootstrapReply::Staged`]). The node takes a pidfd for that PID 1
//!    and kills the reporting process.
//! 3. PID 1 mounts `/proc`, `/dev` (binds of the host's device nodes),
//!    `/sys`, `/tmp`, pivots and re-executes init from a read-only bind of
//!    a root-owned copy of the init binary (CRIU restores an executable
//!    only from a file). Meanwhile the node wires the network namespace
//!    (veth, address, egress) and makes the control listener inside it,
//!    and sends [`Start`]: listener, result file, log ring, main stdio.
//!
//! Init is not the node's child (it was re-parented when the reporting
//! process died), so its end is read from the result file, as for a
//! sandbox adopted after a node restart.

use std::fs;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use warren_proto::{BootstrapFds, BootstrapReply, Start, INIT_ARGV0};
use warren_sys::clone::Namespaces;

use super::{
    control, path_str, prepare_dirs, write_resolv_conf, NativeRuntime, Phases, Sandbox,
    IDS_PER_SANDBOX,
};
use crate::{MainIo, RuntimeError, SandboxSpec};

/// Where the init binary copies live, under the data directory: one
/// root-owned, read-only file per distinct binary, named by its SHA-256,
/// so a checkpoint taken with one binary restores with the same one.
const INIT_DIR: &str = "init";

/// Copies `exe` to `<data_dir>/init/<sha256>` unless that exists, and
/// that to `run_dir` (`NativeConfig::init_copy_dir`, whose path, unlike
/// the data directory's, may show in a sandbox's mount table); returns the
/// latter.
pub(super) fn install_init_binary(
    data_dir: &Path,
    exe: &Path,
    run_dir: &Path,
) -> Result<PathBuf, RuntimeError> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut f = fs::File::open(exe).map_err(RuntimeError::prepare(exe))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(RuntimeError::prepare(exe))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let name = hex::encode(h.finalize());
    let kept = copy_once(exe, &data_dir.join(INIT_DIR), &name, false)?;
    prune_run_copies(run_dir, &name);
    copy_once(&kept, run_dir, &name, true)
}

/// Removes copies in `run_dir` other than `current` that nothing has read
/// for an hour (their data-directory copies stay; a restore makes them
/// again). Sandboxes that bound a removed copy keep running on it.
fn prune_run_copies(run_dir: &Path, current: &str) {
    const AGE: std::time::Duration = std::time::Duration::from_secs(3600);
    let Ok(entries) = fs::read_dir(run_dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_str() == Some(current) {
            continue;
        }
        let old = e
            .metadata()
            .and_then(|m| m.accessed())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > AGE);
        if old {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// The bindable copy of init binary `name` (a SHA-256), made again from
/// the data directory's copy when missing (after a reboot cleared `/run`).
pub(super) fn init_binary(
    data_dir: &Path,
    run_dir: &Path,
    name: &str,
) -> Result<Option<PathBuf>, RuntimeError> {
    let run = run_dir.join(name);
    if run.is_file() {
        return Ok(Some(run));
    }
    let kept = data_dir.join(INIT_DIR).join(name);
    if !kept.is_file() {
        return Ok(None);
    }
    copy_once(&kept, run_dir, name, true).map(Some)
}

/// Copies `source` to `dir/name` (mode 0555) unless that exists; with
/// `link`, a hard link when both are on one filesystem.
fn copy_once(source: &Path, dir: &Path, name: &str, link: bool) -> Result<PathBuf, RuntimeError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(RuntimeError::prepare(dir))?;
    let path = dir.join(name);
    if path.is_file() {
        return Ok(path);
    }
    let tmp = dir.join(format!(".tmp-{}-{name}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    if link && fs::hard_link(source, &tmp).is_ok() {
        fs::rename(&tmp, &path).map_err(RuntimeError::prepare(&path))?;
        return Ok(path);
    }
    fs::copy(source, &tmp).map_err(RuntimeError::prepare(&tmp))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o555))
        .map_err(RuntimeError::prepare(&tmp))?;
    fs::rename(&tmp, &path).map_err(RuntimeError::prepare(&path))?;
    Ok(path)
}

impl NativeRuntime {
    /// The bindable copy of this runtime's init binary, made on first use
    /// (and again if it went away).
    pub(super) fn init_copy(&self) -> Result<PathBuf, RuntimeError> {
        let mut copy = self.init_copy.lock().expect("init copy lock poisoned");
        if let Some(p) = copy.as_ref().filter(|p| p.is_file()) {
            return Ok(p.clone());
        }
        let p = install_init_binary(
            &self.cfg.data_dir,
            &self.init_source,
            &self.cfg.init_copy_dir,
        )?;
        *copy = Some(p.clone());
        Ok(p)
    }

    /// `create_inner` for the checkpointable shape (see the module docs).
    pub(super) fn create_staged(
        &self,
        spec: &SandboxSpec,
        io: MainIo,
        dir: &Path,
        slot: u32,
        lease_out: &mut Option<warren_net::Lease>,
    ) -> Result<(Sandbox, Option<i32>, Phases), RuntimeError> {
        if spec.limits.disk_bytes.is_some() {
            return Err(RuntimeError::InvalidSpec {
                field: "disk",
                reason: "checkpointable sandboxes cannot have a disk limit yet".into(),
            });
        }
        let network = if spec.network.enabled {
            match &self.network {
                Some(n) => Some(n.clone()),
                None => {
                    return Err(RuntimeError::InvalidSpec {
                        field: "network",
                        reason: "networking is not configured on this node".into(),
                    })
                }
            }
        } else {
            None
        };
        let base = self.host_id_base(slot);
        let mut phases = Phases::new();
        prepare_dirs(dir, spec.rootfs.layers.len(), base)?;
        phases.mark("node:dirs");
        let cgroup = self.create_cgroup(spec)?;
        phases.mark("node:cgroup");
        let userns = warren_sys::clone::create_user_namespace(0, base, IDS_PER_SANDBOX, true)
            .map_err(RuntimeError::sys("create user namespace"))?;
        phases.mark("node:userns");
        let (result, log, mut boot) = self.init_inputs(spec, &io, dir, base, &cgroup)?;
        let main = boot.main.take();
        boot.main_log = false;
        boot.seccomp = Vec::new();
        boot.fds = BootstrapFds::Staged;
        boot.checkpointable = true;
        boot.init_binary = path_str(&self.init_copy()?)?;
        let msg = warren_proto::encode(&boot)?;
        let ns = Namespaces {
            mount: true,
            ..Namespaces::default()
        };
        let (outer, ours) = self.spawn_init(INIT_ARGV0, ns)?;
        phases.mark("node:clone_exec");
        let kill_outer = |outer: &warren_sys::clone::Spawned| {
            let _ = warren_sys::pidfd::send_signal(outer.pidfd.as_fd(), libc::SIGKILL);
            let _ = warren_sys::pidfd::wait_exit(outer.pidfd.as_fd());
        };
        if let Err(e) = control::send(ours.as_fd(), &msg, &[userns.as_fd()]) {
            kill_outer(&outer);
            return Err(e);
        }
        drop(userns);
        let staged = self.bootstrap_reply(ours.as_fd());
        let pid = match staged {
            Ok(BootstrapReply::Staged { pid }) => pid,
            Ok(other) => {
                kill_outer(&outer);
                return Err(setup_failure(other));
            }
            Err(e) => {
                kill_outer(&outer);
                return Err(e);
            }
        };
        // The outer process holds PID 1 unreaped until it dies: the pid
        // cannot be reused before the pidfd below exists.
        let pidfd = warren_sys::pidfd::open(pid);
        kill_outer(&outer);
        let pidfd = pidfd.map_err(RuntimeError::sys("pidfd_open(sandbox init)"))?;
        phases.mark("node:staged");
        let sandbox = Sandbox {
            id: spec.id.clone(),
            dir: dir.to_path_buf(),
            slot,
            init_pid: pid,
            pidfd,
            is_child: false,
            cgroup,
            exit: Mutex::new(None),
            destroying: false.into(),
            netns: None,
            net: Mutex::new(None),
        };
        let wired = (|| {
            let netns_path = format!("/proc/{pid}/ns/net");
            let netns: OwnedFd = fs::File::open(&netns_path)
                .map_err(RuntimeError::prepare(&netns_path))?
                .into();
            let mut lease = None;
            if let Some(network) = &network {
                let l = network.prepare(netns.as_fd())?;
                *lease_out = Some(l.clone());
                if spec.network.egress != warren_net::EgressPolicy::Default {
                    network.set_egress(&l, &spec.network.egress)?;
                }
                write_resolv_conf(dir, base, &warren_net::Network::resolv_conf(&l))?;
                lease = Some(l);
            }
            let listener = control::listen_in_netns(&dir.join("init.sock"), netns.as_fd())?;
            Ok::<_, RuntimeError>((netns, lease, listener))
        })();
        let (netns, lease, listener) = match wired {
            Ok(w) => w,
            Err(e) => return Err(self.abandon(sandbox, e)),
        };
        phases.mark("node:netns");
        let start = Start {
            main,
            main_log: log.is_some(),
            seccomp: self.seccomp.clone(),
        };
        let msg = warren_proto::encode(&start)?;
        let mut fds = vec![listener.as_fd(), result.as_fd()];
        if let Some(l) = &log {
            fds.push(l.as_fd());
        }
        for f in [&io.stdin, &io.stdout, &io.stderr].into_iter().flatten() {
            fds.push(f.as_fd());
        }
        let sent = control::send(ours.as_fd(), &msg, &fds);
        drop(fds);
        drop((listener, result, log, io));
        let sandbox = Sandbox {
            netns: Some(Arc::new(netns)),
            net: Mutex::new(lease.map(|l| (l, spec.network.egress.clone()))),
            ..sandbox
        };
        if let Err(e) = sent {
            return Err(self.abandon(sandbox, e));
        }
        match self.bootstrap_reply(ours.as_fd()) {
            Ok(BootstrapReply::Ready { main_pid, timings }) => {
                phases.mark("node:init_total");
                for t in timings {
                    phases.list.push((format!("init:{}", t.phase), t.micros));
                }
                Ok((sandbox, main_pid, phases))
            }
            Ok(other) => Err(self.abandon(sandbox, setup_failure(other))),
            Err(e) => Err(self.abandon(sandbox, e)),
        }
    }

    /// The next [`BootstrapReply`] on the bootstrap socket, within the
    /// setup timeout.
    pub(super) fn bootstrap_reply(
        &self,
        sock: std::os::fd::BorrowedFd<'_>,
    ) -> Result<BootstrapReply, RuntimeError> {
        match control::recv(sock, Some(self.cfg.setup_timeout))? {
            Some((bytes, _)) => Ok(warren_proto::decode(&bytes)?),
            None => Err(RuntimeError::InitTimeout {
                secs: self.cfg.setup_timeout.as_secs(),
            }),
        }
    }
}

/// The error for a setup reply that is not the expected one (a main
/// command that could not start is reported like an exec).
pub(super) fn setup_failure(reply: BootstrapReply) -> RuntimeError {
    match reply {
        BootstrapReply::Failed {
            step,
            errno,
            message,
        } if step.starts_with("exec_") || step.starts_with("workdir_") => RuntimeError::Exec {
            code: step,
            errno,
            message,
        },
        BootstrapReply::Failed {
            step,
            errno,
            message,
        } => RuntimeError::InitSetup {
            step,
            errno,
            message,
        },
        other => RuntimeError::InitSetup {
            step: "protocol".into(),
            errno: None,
            message: format!("unexpected reply {other:?}"),
        },
    }
}
