//! Restoring a memory snapshot (a verified checkpoint directory) as a new
//! sandbox: a new id, id range, hostname and network namespace, the
//! checkpointed processes continuing from where they were.
//!
//! 1. [`checkpoint::verify`] first: nothing is created for a damaged
//!    checkpoint.
//! 2. The state directory gets a copy of the writable layer with its owners
//!    shifted to the new id range, and a private copy of CRIU's images with
//!    the user namespace's extents and the hostname rewritten
//!    ([`criu_images`]).
//! 3. The restore helper (the init binary as `warren-restore`, host root in
//!    a private mount namespace) joins the new cgroups, mounts the image
//!    layers idmapped to the new range under an overlay, binds the host
//!    trees the checkpoint names as external, and execs
//!    `criu restore --restore-detached` with the descriptors the restored
//!    init inherits: a new result file, a copy of the main command's log
//!    ring and a control listener.
//! 4. The node takes a pidfd for the restored init, makes a new control
//!    listener inside the restored network namespace and hands it to init
//!    (the one CRIU installed lives in the node's namespace).
//! 5. Execs that were running at the checkpoint get their streams (see
//!    [`super::carry`]): a paused sandbox's own, which the node kept, or
//!    new ones, returned as [`RestoredExec`]s.

use std::fs;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::info_span;
use warren_proto::{RestoreHelper, CHECKPOINTABLE_INIT_PATH};
use warren_sys::clone::Namespaces;

use super::carry::{self, RestoredExec};
use super::checkpoint::{self, copy_tree, log_tail, mount_key, path_string, Manifest};
use super::{
    control, criu_images, prepare_dirs, validate_hostname, NativeRuntime, Phases, Sandbox,
    IDS_PER_SANDBOX, LOG_FILE,
};
use crate::{RuntimeError, SandboxInfo, SandboxSpec};

/// A restored sandbox.
#[derive(Debug)]
pub struct Restored {
    pub info: SandboxInfo,
    /// Execs that were running at the checkpoint, continuing with new
    /// streams (empty when a paused sandbox got its own streams back).
    /// Dropping one closes its streams (the process then sees its input
    /// end and its output unread).
    pub execs: Vec<RestoredExec>,
}

/// Device nodes a checkpoint may name as external mounts (binds of the
/// host's nodes under `/dev`); anything else there is refused.
const DEVICE_NODES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// Descriptor numbers the restore helper puts the inherited descriptors at.
const INHERIT_BASE: i32 = 100;

/// Where the restore helper mounts its tmpfs of external mounts (in its
/// own mount namespace; the host's directory is untouched).
const EXT_ROOT: &str = "/mnt";

/// Longest a `criu restore` may take.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(60);

impl NativeRuntime {
    /// Restores the checkpoint at `from` as the sandbox `spec.id` (a new
    /// id, or the id of a sandbox whose runtime state was released, for a
    /// resume). The checkpoint is verified first ([`checkpoint::verify`]):
    /// a corrupt, truncated or other-version checkpoint is refused with
    /// [`RuntimeError::SnapshotCorrupt`] before anything is created. The
    /// spec's image layers must be the checkpoint's; its hostname, limits
    /// and network apply to the new sandbox. Established TCP connections
    /// are not restored (CRIU `--tcp-close`); listening sockets listen.
    pub fn restore(&self, spec: &SandboxSpec, from: &Path) -> Result<Restored, RuntimeError> {
        let _span = info_span!("restore", sandbox_id = %spec.id).entered();
        let started = Instant::now();
        let manifest = checkpoint::verify(from)?;
        if manifest.source.layers != spec.rootfs.layers.len() {
            return Err(RuntimeError::InvalidSpec {
                field: "rootfs",
                reason: format!(
                    "the checkpoint was taken over {} image layers, the spec has {}",
                    manifest.source.layers,
                    spec.rootfs.layers.len()
                ),
            });
        }
        validate_hostname(&spec.hostname)?;
        if spec.network.enabled && self.network.is_none() {
            return Err(RuntimeError::InvalidSpec {
                field: "network",
                reason: "networking is not configured on this node".into(),
            });
        }
        let criu = super::criu_probe::probe(&self.cfg.criu_binary)?;
        let mut execs = Vec::new();
        let info = self.build_sandbox(spec, started, |dir, slot, lease| {
            self.restore_inner(spec, &manifest, &criu, from, dir, slot, lease, &mut execs)
        })?;
        // A paused sandbox's streams are its own again.
        self.stashes.remove(from);
        Ok(Restored { info, execs })
    }

    #[allow(clippy::too_many_arguments)]
    fn restore_inner(
        &self,
        spec: &SandboxSpec,
        manifest: &Manifest,
        criu: &super::criu_probe::Criu,
        from: &Path,
        dir: &Path,
        slot: u32,
        lease_out: &mut Option<warren_net::Lease>,
        execs_out: &mut Vec<RestoredExec>,
    ) -> Result<(Sandbox, Option<i32>, Phases), RuntimeError> {
        let mut phases = Phases::new();
        let base = self.host_id_base(slot);
        let from_base = manifest.source.host_id_base;
        prepare_dirs(dir, spec.rootfs.layers.len(), base)?;
        let upper = dir.join("upper");
        fs::remove_dir(&upper).map_err(RuntimeError::prepare(&upper))?;
        copy_tree(&from.join("upper"), &upper)?;
        if from_base != base {
            criu_images::shift_tree_owners(&upper, from_base, base, IDS_PER_SANDBOX)?;
        }
        phases.mark("restore:upper");
        let images = dir.join("criu");
        link_images(&from.join("criu"), &images)?;
        if from_base != base {
            criu_images::rewrite_userns(&images, from_base, base)?;
        }
        criu_images::rewrite_hostname(&images, &spec.hostname)?;
        // CRIU reads some images from inside the new user namespace, where
        // the host's root is nobody: the private copy belongs to the new
        // sandbox's root (it is never visible inside the sandbox).
        own_images(&images, base)?;
        phases.mark("restore:images");

        let cgroup = self.create_cgroup(spec)?;
        let userns = warren_sys::clone::create_user_namespace(0, base, IDS_PER_SANDBOX, true)
            .map_err(RuntimeError::sys("create user namespace"))?;
        let result: OwnedFd = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(dir.join("result"))
            .map_err(RuntimeError::prepare(dir.join("result")))?
            .into();
        let log: Option<OwnedFd> = if from.join(LOG_FILE).is_file() {
            copy_tree(&from.join(LOG_FILE), &dir.join(LOG_FILE))?;
            let p = dir.join(LOG_FILE);
            Some(
                fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&p)
                    .map_err(RuntimeError::prepare(&p))?
                    .into(),
            )
        } else {
            None
        };
        // CRIU re-opens inherited files through /proc from inside the new
        // user namespace: they belong to the sandbox's root (only init
        // holds them; nothing in the sandbox can name them).
        for f in [Some(&result), log.as_ref()].into_iter().flatten() {
            std::os::unix::fs::fchown(f, Some(base), Some(base))
                .map_err(RuntimeError::prepare(dir))?;
        }
        let listener = control::listen(&dir.join("init.sock"))?;

        // What the restored init inherits in place of the host
        // descriptors it held.
        let mut inherited: Vec<(&OwnedFd, &str)> = Vec::new();
        for e in &manifest.source.externals {
            let fd = match e.role.as_str() {
                "control" => &listener,
                "result" => &result,
                "log" => log
                    .as_ref()
                    .ok_or_else(|| checkpoint_corrupt("a log ring without its copy"))?,
                other => return Err(checkpoint_corrupt(&format!("unknown external {other:?}"))),
            };
            inherited.push((fd, e.key.as_str()));
        }
        // The carried execs' pipes: a paused sandbox's own, which the node
        // kept open, or new ones.
        let stash = self.stashes.copy(from, &spec.id)?;
        let fresh = match stash {
            Some(_) => None,
            None => Some(carry::Fresh::new(&manifest.source.execs)?),
        };
        let pipes = match (&stash, &fresh) {
            (Some(s), _) => s.pipes.as_slice(),
            (None, Some(f)) => f.inherit.as_slice(),
            (None, None) => &[],
        };
        for (key, fd) in pipes {
            inherited.push((fd, key.as_str()));
        }
        // The external mounts, bound again from the host.
        let mut binds = Vec::new();
        let mut externals: Vec<(String, String)> = Vec::new();
        for target in &manifest.source.mounts {
            let key = mount_key(target);
            let source = if target == CHECKPOINTABLE_INIT_PATH {
                let name = &manifest.source.init_binary;
                if name.len() != 64 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(checkpoint_corrupt("no init binary named"));
                }
                let Some(p) =
                    super::staged::init_binary(&self.cfg.data_dir, &self.cfg.init_copy_dir, name)?
                else {
                    return Err(RuntimeError::SnapshotUnsupported {
                        reason: format!(
                            "the checkpoint ran init binary {name}, which this node no longer has"
                        ),
                    });
                };
                binds.push((path_string(&p)?, key.clone(), true, false));
                Path::new(EXT_ROOT).join(&key)
            } else if let Some(node) = target.strip_prefix("/dev/") {
                if !DEVICE_NODES.contains(&node) {
                    return Err(checkpoint_corrupt(&format!("unexpected mount {target}")));
                }
                PathBuf::from(target)
            } else if let Some(b) = spec.rootfs.binds.iter().find(|b| &b.target == target) {
                binds.push((path_string(&b.source)?, key.clone(), b.readonly, true));
                Path::new(EXT_ROOT).join(&key)
            } else if let Some(m) = spec.image_mounts.iter().find(|m| &m.target == target) {
                binds.push((path_string(&m.source)?, key.clone(), true, true));
                Path::new(EXT_ROOT).join(&key)
            } else {
                return Err(RuntimeError::InvalidSpec {
                    field: "rootfs",
                    reason: format!(
                        "the checkpoint has a host bind or image mount at {target}, the spec has not"
                    ),
                });
            };
            externals.push((key, path_string(&source)?));
        }

        let hook = Hook::create(dir)?;
        let mut args: Vec<String> = vec![
            "restore".into(),
            "--images-dir".into(),
            path_string(&images)?,
            "--root".into(),
            path_string(&dir.join("rootfs"))?,
            "--restore-detached".into(),
            "--pidfile".into(),
            path_string(&dir.join("restore.pid"))?,
            "--log-file".into(),
            "restore.log".into(),
            "-v4".into(),
            "--manage-cgroups=ignore".into(),
            "--tcp-close".into(),
            // Established connections are closed, not restored, so
            // nothing needs the network frozen (CRIU would otherwise run
            // iptables in the namespace: ~50 ms).
            "--network-lock".into(),
            "skip".into(),
            // The network namespace comes back empty (the checkpointed veth's
            // peer is gone); the hook wires it before any task runs.
            "--empty-ns".into(),
            "net".into(),
            "--action-script".into(),
            path_string(&hook.script)?,
        ];
        args.extend(criu.args.iter().cloned());
        if criu.script_only {
            // The hook acts on this one action; CRIU would otherwise fork
            // and exec it for six more (~2 ms each).
            args.extend(["--action-script-only".into(), "setup-namespaces".into()]);
        }
        for (key, path) in &externals {
            args.push("--external".into());
            args.push(format!("mnt[{key}]:{path}"));
        }
        let mut inherit_at = Vec::new();
        for (i, (_, key)) in inherited.iter().enumerate() {
            let at = INHERIT_BASE + i as i32;
            args.push("--inherit-fd".into());
            args.push(format!("fd[{at}]:{key}"));
            inherit_at.push(at);
        }
        let helper = RestoreHelper {
            state_dir: path_string(dir)?,
            layers: spec
                .rootfs
                .layers
                .iter()
                .map(|p| path_string(p))
                .collect::<Result<_, _>>()?,
            ext_root: EXT_ROOT.into(),
            binds,
            cgroup_procs: cgroup
                .procs_files()
                .iter()
                .map(|p| path_string(p))
                .collect::<Result<_, _>>()?,
            inherit_at,
            criu: path_string(&self.cfg.criu_binary)?,
            args,
        };
        phases.mark("restore:prepare");
        let msg = warren_proto::encode(&helper)?;
        let (child, ours) = self.spawn_init(
            warren_proto::RESTORE_ARGV0,
            Namespaces {
                mount: true,
                ..Namespaces::default()
            },
        )?;
        let mut fds = vec![userns.as_fd()];
        fds.extend(inherited.iter().map(|(fd, _)| fd.as_fd()));
        let sent = control::send(ours.as_fd(), &msg, &fds);
        drop(fds);
        let mut wired: Option<(OwnedFd, Option<warren_net::Lease>)> = None;
        let outcome = sent.and_then(|()| {
            let done = hook.serve(child.pidfd.as_fd(), RESTORE_TIMEOUT, |pid| {
                let w = self.wire_restored(spec, dir, slot, pid)?;
                *lease_out = w.1.clone();
                wired = Some(w);
                Ok(())
            })?;
            if !done {
                let _ = warren_sys::pidfd::send_signal(child.pidfd.as_fd(), libc::SIGKILL);
            }
            let status = warren_sys::pidfd::wait_exit(child.pidfd.as_fd())
                .map_err(RuntimeError::sys("wait for criu restore"))?;
            if matches!(status, warren_sys::pidfd::WaitStatus::Exited(0)) {
                return Ok(());
            }
            // A setup step of the helper reports itself; otherwise CRIU failed.
            if let Ok(Some((bytes, _))) = control::recv(ours.as_fd(), Some(Duration::ZERO)) {
                if let Ok(reply) = warren_proto::decode(&bytes) {
                    return Err(super::staged::setup_failure(reply));
                }
            }
            Err(RuntimeError::Criu {
                op: "restore",
                status: if done {
                    format!("{status:?}")
                } else {
                    format!("killed after {}s", RESTORE_TIMEOUT.as_secs())
                },
                log: log_tail(&images.join("restore.log")),
            })
        });
        drop(inherited);
        drop((userns, result, log));
        outcome?;
        phases.mark("restore:criu");
        let pid_text = fs::read_to_string(dir.join("restore.pid"))
            .map_err(RuntimeError::prepare(dir.join("restore.pid")))?;
        let pid: i32 = pid_text
            .trim()
            .parse()
            .map_err(|_| checkpoint_corrupt("criu wrote no pid"))?;
        let pidfd = warren_sys::pidfd::open(pid).map_err(RuntimeError::sys("pidfd_open(init)"))?;
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
        let Some((netns, lease)) = wired else {
            return Err(self.abandon(
                sandbox,
                RuntimeError::InitSetup {
                    step: "restore_network".into(),
                    errno: None,
                    message: "criu restored without running the network hook".into(),
                },
            ));
        };
        if let Err(e) = control::replace_listener(dir, netns.as_fd()) {
            return Err(self.abandon(sandbox, e));
        }
        drop(listener);
        phases.mark("restore:listener");
        let adopted = match (stash, fresh) {
            (Some(s), _) => {
                let back: Vec<_> = s.conns.iter().map(|(p, f)| (*p, f.as_fd())).collect();
                control::adopt(dir, &back).map(|()| Vec::new())
            }
            (None, Some(f)) => f.adopt(dir, &spec.id, &sandbox.cgroup, &self.exec_registry),
            (None, None) => Ok(Vec::new()),
        };
        match adopted {
            Ok(execs) => *execs_out = execs,
            Err(e) => return Err(self.abandon(sandbox, e)),
        }
        Ok((
            Sandbox {
                netns: Some(Arc::new(netns)),
                net: Mutex::new(lease.map(|l| (l, spec.network.egress.clone()))),
                ..sandbox
            },
            None,
            phases,
        ))
    }
}

impl NativeRuntime {
    /// Wires the restored sandbox's (empty) network namespace, found
    /// through its init's host pid: a veth with a new address, egress
    /// policy and `resolv.conf` for a networked sandbox, else just `lo`.
    fn wire_restored(
        &self,
        spec: &SandboxSpec,
        dir: &Path,
        slot: u32,
        pid: i32,
    ) -> Result<(OwnedFd, Option<warren_net::Lease>), RuntimeError> {
        let netns_path = format!("/proc/{pid}/ns/net");
        let netns: OwnedFd = fs::File::open(&netns_path)
            .map_err(RuntimeError::prepare(&netns_path))?
            .into();
        let network = match (&self.network, spec.network.enabled) {
            (Some(n), true) => n,
            _ => {
                warren_net::in_netns(netns.as_fd(), warren_sys::net::loopback_up)
                    .map_err(RuntimeError::prepare(&netns_path))?
                    .map_err(RuntimeError::sys("lo up"))?;
                return Ok((netns, None));
            }
        };
        let lease = network.prepare(netns.as_fd())?;
        let configured = (|| {
            if spec.network.egress != warren_net::EgressPolicy::Default {
                network.set_egress(&lease, &spec.network.egress)?;
            }
            replace_resolv_conf(
                dir,
                self.host_id_base(slot),
                &warren_net::Network::resolv_conf(&lease),
            )
        })();
        if let Err(e) = configured {
            network.release(&lease);
            return Err(e);
        }
        Ok((netns, Some(lease)))
    }
}

/// Points the restored copy's `/etc/resolv.conf` at its own gateway, when
/// the file is still the one the node wrote (a tenant's own file stays).
fn replace_resolv_conf(dir: &Path, base: u32, text: &str) -> Result<(), RuntimeError> {
    let path = dir.join("upper/etc/resolv.conf");
    match fs::symlink_metadata(&path) {
        Err(_) => super::write_resolv_conf(dir, base, text),
        Ok(m) if m.is_file() && m.len() < 4096 => {
            let old = fs::read_to_string(&path).unwrap_or_default();
            if !old.starts_with("# written by warren") {
                return Ok(());
            }
            // In place: the overlay above sees the same upper inode.
            let f = fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .map_err(RuntimeError::prepare(&path))?;
            use std::io::Write;
            (&f).write_all(text.as_bytes())
                .map_err(RuntimeError::prepare(&path))
        }
        Ok(_) => Ok(()),
    }
}

/// CRIU's action script for a restore: at `setup-namespaces` (the
/// namespaces exist, no task runs yet) it reports the restored init's host
/// pid on one FIFO and waits for the node's answer on another.
struct Hook {
    script: PathBuf,
    request: OwnedFd,
    answer: OwnedFd,
}

impl Hook {
    fn create(dir: &Path) -> Result<Hook, RuntimeError> {
        use std::os::unix::fs::PermissionsExt;
        let req = dir.join("hook.req");
        let ans = dir.join("hook.ans");
        for p in [&req, &ans] {
            nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600))
                .map_err(RuntimeError::sys("mkfifo"))?;
        }
        let request: OwnedFd = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&req)
            .map_err(RuntimeError::prepare(&req))?
            .into();
        // Read-write: opening never blocks, and the hook's read waits for data.
        let answer: OwnedFd = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&ans)
            .map_err(RuntimeError::prepare(&ans))?
            .into();
        let script = dir.join("hook.sh");
        let text = format!(
            "#!/bin/sh\n\
             [ \"$CRTOOLS_SCRIPT_ACTION\" = setup-namespaces ] || exit 0\n\
             echo \"$CRTOOLS_INIT_PID\" > '{}'\n\
             read answer < '{}'\n\
             [ \"$answer\" = ok ]\n",
            req.display(),
            ans.display()
        );
        fs::write(&script, text).map_err(RuntimeError::prepare(&script))?;
        fs::set_permissions(&script, fs::Permissions::from_mode(0o700))
            .map_err(RuntimeError::prepare(&script))?;
        Ok(Hook {
            script,
            request,
            answer,
        })
    }

    /// Waits until the process behind `pidfd` (CRIU) exits, at most
    /// `timeout`, answering the hook's one request with `on_request`.
    /// Returns whether it exited.
    fn serve(
        &self,
        pidfd: std::os::fd::BorrowedFd<'_>,
        timeout: Duration,
        mut on_request: impl FnMut(i32) -> Result<(), RuntimeError>,
    ) -> Result<bool, RuntimeError> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let deadline = Instant::now() + timeout;
        let mut pending = true;
        let mut failure = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            let ms = PollTimeout::try_from(left.as_millis().min(60_000) as i32)
                .unwrap_or(PollTimeout::MAX);
            let mut fds = vec![PollFd::new(pidfd, PollFlags::POLLIN)];
            if pending {
                fds.push(PollFd::new(self.request.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, ms) {
                Err(nix::errno::Errno::EINTR) | Ok(0) => continue,
                Err(e) => return Err(RuntimeError::sys("wait for criu restore")(e)),
                Ok(_) => {}
            }
            if fds[0].revents().is_some_and(|r| !r.is_empty()) {
                return match failure {
                    Some(e) => Err(e),
                    None => Ok(true),
                };
            }
            if pending
                && fds[1]
                    .revents()
                    .is_some_and(|r| r.contains(PollFlags::POLLIN))
            {
                pending = false;
                let mut buf = [0u8; 32];
                let n = nix::unistd::read(&self.request, &mut buf).unwrap_or(0);
                let pid = std::str::from_utf8(&buf[..n])
                    .ok()
                    .and_then(|s| s.trim().parse::<i32>().ok());
                let answer = match pid {
                    Some(pid) if pid > 0 => match on_request(pid) {
                        Ok(()) => "ok\n",
                        Err(e) => {
                            failure = Some(e);
                            "failed\n"
                        }
                    },
                    _ => "failed\n",
                };
                let _ = nix::unistd::write(&self.answer, answer.as_bytes());
            }
        }
    }
}

/// A private images directory for one restore: hard links to the
/// checkpoint's images (copies across filesystems). The rewrites replace
/// the files they change (a new file renamed over the link), so the
/// checkpoint's own images never change.
fn link_images(from: &Path, to: &Path) -> Result<(), RuntimeError> {
    fs::create_dir(to).map_err(RuntimeError::prepare(to))?;
    for e in fs::read_dir(from).map_err(RuntimeError::prepare(from))? {
        let e = e.map_err(RuntimeError::prepare(from))?;
        if !e
            .file_type()
            .map_err(RuntimeError::prepare(from))?
            .is_file()
        {
            continue;
        }
        let dst = to.join(e.file_name());
        if fs::hard_link(e.path(), &dst).is_err() {
            fs::copy(e.path(), &dst).map_err(RuntimeError::prepare(&dst))?;
        }
    }
    Ok(())
}

/// Makes the images directory and its files readable to all: CRIU reads
/// some images in the restored task before its user namespace has a
/// mapping (as the overflow id). The sandbox's state directory (0700, host
/// root) keeps everyone else out, and nothing in the sandbox can name the
/// directory. (A checkpoint writes its images 0644 inside its 0700
/// directory, so the hard links need no change.)
fn own_images(images: &Path, owner: u32) -> Result<(), RuntimeError> {
    use std::os::unix::fs::PermissionsExt;
    std::os::unix::fs::lchown(images, Some(owner), Some(owner))
        .map_err(RuntimeError::prepare(images))?;
    fs::set_permissions(images, fs::Permissions::from_mode(0o755))
        .map_err(RuntimeError::prepare(images))?;
    for e in fs::read_dir(images).map_err(RuntimeError::prepare(images))? {
        let e = e.map_err(RuntimeError::prepare(images))?;
        let meta = e.metadata().map_err(RuntimeError::prepare(images))?;
        if meta.is_file() && meta.permissions().mode() & 0o044 != 0o044 {
            fs::set_permissions(e.path(), fs::Permissions::from_mode(0o644))
                .map_err(RuntimeError::prepare(e.path()))?;
        }
    }
    Ok(())
}

fn checkpoint_corrupt(reason: &str) -> RuntimeError {
    RuntimeError::SnapshotCorrupt {
        reason: reason.to_string(),
    }
}
