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

use std::ffi::{CStr, CString};
use std::fs;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::info_span;
use warren_proto::{
    RestoreHelper, CHECKPOINTABLE_INIT_PATH, INIT_ENV_MARKER, INIT_PROTOCOL_VERSION,
};
use warren_sys::clone::Namespaces;

use super::checkpoint::{self, copy_tree, log_tail, mount_key, path_string, Manifest};
use super::{
    control, criu_images, prepare_dirs, validate_hostname, NativeRuntime, Phases, Sandbox,
    IDS_PER_SANDBOX, LOG_FILE,
};
use crate::{RuntimeError, SandboxInfo, SandboxSpec};

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
    pub fn restore(&self, spec: &SandboxSpec, from: &Path) -> Result<SandboxInfo, RuntimeError> {
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
        if manifest.source.network || spec.network.enabled {
            return Err(RuntimeError::SnapshotUnsupported {
                reason: "restoring sandboxes with a network (veth, address) is not supported yet"
                    .into(),
            });
        }
        checkpoint::criu_version(&self.cfg.criu_binary)?;
        self.build_sandbox(spec, started, |dir, slot, _lease| {
            self.restore_inner(spec, &manifest, from, dir, slot)
        })
    }

    fn restore_inner(
        &self,
        spec: &SandboxSpec,
        manifest: &Manifest,
        from: &Path,
        dir: &Path,
        slot: u32,
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
        copy_tree(&from.join("criu"), &images)?;
        if from_base != base {
            criu_images::rewrite_userns(&images, from_base, base)?;
        }
        criu_images::rewrite_hostname(&images, &spec.hostname)?;
        // CRIU reads some images from inside the new user namespace, where
        // the host's root is nobody: the private copy belongs to the new
        // sandbox's root (it is never visible inside the sandbox).
        own_images(&images, base)?;
        phases.mark("restore:images");

        let limits = warren_cgroup::CgroupLimits {
            cpu_millis: spec.limits.cpu_millis,
            memory_bytes: spec.limits.memory_bytes,
            pids_max: spec.limits.pids,
        };
        let cgroup = Arc::new(self.cgroups.create(spec.id.as_str(), &limits)?);
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
                let p = self.init_file.with_file_name(name);
                if !p.is_file() {
                    return Err(RuntimeError::SnapshotUnsupported {
                        reason: format!(
                            "the checkpoint ran init binary {name}, which this node no longer has"
                        ),
                    });
                }
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
        ];
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
        let (ours, theirs) = control::seqpacket_pair()?;
        let argv0 = CString::new(warren_proto::RESTORE_ARGV0).expect("constant has no NUL");
        let env = [
            CString::new(format!("{INIT_ENV_MARKER}={INIT_PROTOCOL_VERSION}"))
                .expect("constant has no NUL"),
        ];
        let argv: [&CStr; 1] = [&argv0];
        let child = warren_sys::clone::spawn_exec_fd(
            self.init_exe.as_fd(),
            &argv,
            &env,
            &[(theirs.as_fd(), warren_proto::BOOTSTRAP_FD)],
            Namespaces {
                mount: true,
                ..Namespaces::default()
            },
        )
        .map_err(RuntimeError::sys("start the restore helper"))?;
        drop(theirs);
        let mut fds = vec![userns.as_fd()];
        fds.extend(inherited.iter().map(|(fd, _)| fd.as_fd()));
        let sent = control::send(ours.as_fd(), &msg, &fds);
        drop(fds);
        let outcome = sent.and_then(|()| {
            let done = warren_sys::pidfd::poll_exit(child.pidfd.as_fd(), Some(RESTORE_TIMEOUT))
                .map_err(RuntimeError::sys("wait for criu restore"))?;
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
        let netns = (|| {
            let netns_path = format!("/proc/{pid}/ns/net");
            let netns: OwnedFd = fs::File::open(&netns_path)
                .map_err(RuntimeError::prepare(&netns_path))?
                .into();
            control::replace_listener(dir, netns.as_fd())?;
            drop(listener);
            Ok::<_, RuntimeError>(netns)
        })();
        let netns = match netns {
            Ok(n) => n,
            Err(e) => return Err(self.abandon(sandbox, e)),
        };
        phases.mark("restore:listener");
        Ok((
            Sandbox {
                netns: Some(Arc::new(netns)),
                ..sandbox
            },
            None,
            phases,
        ))
    }
}

/// Gives the images directory (flat) and its files to `owner` and makes
/// them readable to all: CRIU reads some images in the restored task
/// before its user namespace has a mapping (as the overflow id). The
/// sandbox's state directory (0700, host root) keeps everyone else out,
/// and nothing in the sandbox can name the copy.
fn own_images(images: &Path, owner: u32) -> Result<(), RuntimeError> {
    use std::os::unix::fs::PermissionsExt;
    let set = |p: &Path, mode: u32| -> Result<(), RuntimeError> {
        std::os::unix::fs::lchown(p, Some(owner), Some(owner)).map_err(RuntimeError::prepare(p))?;
        fs::set_permissions(p, fs::Permissions::from_mode(mode)).map_err(RuntimeError::prepare(p))
    };
    set(images, 0o755)?;
    for e in fs::read_dir(images).map_err(RuntimeError::prepare(images))? {
        let e = e.map_err(RuntimeError::prepare(images))?;
        if e.file_type()
            .map_err(RuntimeError::prepare(images))?
            .is_file()
        {
            set(&e.path(), 0o644)?;
        }
    }
    Ok(())
}

fn checkpoint_corrupt(reason: &str) -> RuntimeError {
    RuntimeError::SnapshotCorrupt {
        reason: reason.to_string(),
    }
}
