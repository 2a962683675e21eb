//! The native Linux backend.
//!
//! Per sandbox, under `<data_dir>/sandboxes/<id>/`:
//! - `record.json`: what a restarted node needs to re-adopt the sandbox;
//! - `init.sock`: init's control socket (host path, unreachable from inside);
//! - `result`: init writes the main command's exit status here;
//! - `upper/`, `work/`: the overlay's writable layer;
//! - `rootfs/`, `lower/N/`: mount points used inside the sandbox's own mount
//!   namespace (nothing is ever mounted in the host's namespace).
//!
//! Host ids: sandbox slot `n` maps container ids `0..65536` to host ids
//! `id_base + n * 65536 ..`, a different range per live sandbox.

mod carry;
pub mod checkpoint;
mod control;
mod criu_images;
mod criu_probe;
mod ids;
mod pool;
mod record;
mod restore;
mod snapshot;
mod staged;
mod trash;

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::fs;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tracing::{debug, info_span, warn};
use warren_cgroup::{Cgroup, CgroupLimits, CgroupManager};
use warren_proto::{
    BindSpec, Bootstrap, BootstrapFds, BootstrapReply, MainResult, ProcessSpec, StdioFds,
    BOOTSTRAP_FD, INIT_ARGV0, INIT_ENV_MARKER, INIT_PROTOCOL_VERSION,
};
use warren_sys::clone::Namespaces;

pub use carry::RestoredExec;
pub(crate) use control::ExecControl;
pub use restore::Restored;
pub use snapshot::{validate_mount_target, Thaw};

use crate::spec::validate_process;
use crate::{
    Exec, ExecIo, ExecSpec, ExitStatus, MainIo, Recovered, Runtime, RuntimeError, SandboxExit,
    SandboxId, SandboxInfo, SandboxSpec,
};

/// Size of each sandbox's host id range.
pub const IDS_PER_SANDBOX: u32 = 65536;

/// Configuration of the native backend.
#[derive(Debug, Clone)]
pub struct NativeConfig {
    /// Root of all per-sandbox state.
    pub data_dir: PathBuf,
    /// The binary to run as init (re-executed from a sealed memfd copy).
    /// `None` = a `warren-init` binary next to the current executable if
    /// there is one (smaller, so it starts faster and maps less memory per
    /// sandbox), else the current executable itself, which must then call
    /// `warren_init::run_if_init()` first thing in `main`.
    pub init_binary: Option<PathBuf>,
    /// Where cgroup hierarchies are mounted.
    pub cgroup_root: PathBuf,
    /// The cgroup sub-tree this runtime owns. It must belong to exactly one
    /// runtime (one data directory): `recover` removes cgroups under it that
    /// have no state directory. The default is derived from `data_dir`.
    pub cgroup_parent: String,
    /// First host id of the first sandbox's range.
    pub id_base: u32,
    /// How many id ranges (so, live sandboxes) there are.
    pub id_slots: u32,
    /// Where the host's `passwd`, `group`, `subuid` and `subgid` are: no id
    /// they name may fall inside the sandboxes' id ranges.
    pub host_etc: PathBuf,
    /// Longest wait for init to finish setting a sandbox up.
    pub setup_timeout: Duration,
    /// Network namespaces kept ready ahead of creates (0 = none); with
    /// `network`, as many networked ones are kept ready too.
    pub netns_pool: usize,
    /// Sandbox networking (veth, address pool, egress policy, NAT, DNS);
    /// `None` = every sandbox gets only `lo`, and nothing in the node's
    /// network namespace is touched. See [`NativeConfig::default_network`].
    pub network: Option<warren_net::NetworkConfig>,
    /// The CRIU binary used for checkpoints (memory snapshots).
    pub criu_binary: PathBuf,
    /// Where checkpointable sandboxes bind their init binary from (a copy,
    /// or a hard link, of the data directory's, made at the first
    /// checkpointable create; the path shows in the sandbox's mount table,
    /// so it should say nothing about the node).
    pub init_copy_dir: PathBuf,
}

impl NativeConfig {
    /// Defaults: cgroups under `/sys/fs/cgroup/**/warren-<hash of the data
    /// dir>` (so runtimes with different data directories never share a
    /// cgroup subtree), host ids from 2^30 in 16,384 ranges of 65,536.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        let data_dir = data_dir.into();
        let cgroup_parent = default_cgroup_parent(&data_dir);
        NativeConfig {
            data_dir,
            init_binary: None,
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            cgroup_parent,
            id_base: 1 << 30,
            id_slots: 16384,
            host_etc: PathBuf::from("/etc"),
            setup_timeout: Duration::from_secs(20),
            netns_pool: 8,
            network: None,
            criu_binary: PathBuf::from("/usr/local/sbin/criu"),
            init_copy_dir: PathBuf::from("/run/warren/init"),
        }
    }

    /// The default network settings for this data directory: nftables table
    /// `warren_<same hash as the cgroup parent>`, `ip_forward` state kept in
    /// the data dir.
    pub fn default_network(&self) -> warren_net::NetworkConfig {
        let mut n = warren_net::NetworkConfig::new(data_dir_hash(&self.data_dir));
        n.state_dir = Some(self.data_dir.clone());
        n
    }
}

/// `warren-` and 12 hex digits of an FNV-1a hash of the absolute data dir.
fn default_cgroup_parent(data_dir: &Path) -> String {
    format!("warren-{:012x}", data_dir_hash(data_dir))
}

/// 48 bits of an FNV-1a hash of the absolute data dir.
fn data_dir_hash(data_dir: &Path) -> u64 {
    let abs = if data_dir.is_absolute() {
        data_dir.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(data_dir))
            .unwrap_or_else(|_| data_dir.to_path_buf())
    };
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in abs.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h & 0xffff_ffff_ffff
}

struct Sandbox {
    id: SandboxId,
    dir: PathBuf,
    slot: u32,
    init_pid: i32,
    pidfd: OwnedFd,
    /// Whether init is our child (so we must reap it).
    is_child: bool,
    cgroup: Arc<Cgroup>,
    exit: Mutex<Option<SandboxExit>>,
    destroying: std::sync::atomic::AtomicBool,
    /// The sandbox's network namespace (for `connect_in_netns`).
    netns: Option<Arc<OwnedFd>>,
    /// Its network lease and current egress policy (networked sandboxes).
    net: Mutex<Option<(warren_net::Lease, warren_net::EgressPolicy)>>,
}

/// A namespace already wired to the node, ready for a networked sandbox.
struct Wired {
    netns: OwnedFd,
    lease: warren_net::Lease,
}

/// The native Linux backend. Thread-safe; share it behind an `Arc`.
pub struct NativeRuntime {
    cfg: NativeConfig,
    sandboxes_dir: PathBuf,
    trash_dir: PathBuf,
    cgroups: CgroupManager,
    init_exe: OwnedFd,
    ids: Mutex<ids::IdAllocator>,
    sandboxes: RwLock<HashMap<SandboxId, Arc<Sandbox>>>,
    netns: pool::NetnsPool,
    /// Sandbox networking, when configured.
    network: Option<Arc<warren_net::Network>>,
    /// Wired namespaces kept ready (with `network`).
    wired: Option<pool::Pool<Wired, warren_net::NetError>>,
    reaper: trash::Reaper,
    /// The init binary's path (the source of `init_exe`).
    init_source: PathBuf,
    /// The root-owned regular-file copy of the init binary that
    /// checkpointable sandboxes bind and run init from (made on first use).
    init_copy: Mutex<Option<PathBuf>>,
    /// The sandbox seccomp policy, compiled once and sent to every init.
    seccomp: Vec<u64>,
    /// Ids whose host resources are being released right now: a second
    /// destroy of the same id (the supervisor and a terminate request, say)
    /// waits for the first instead of racing it over the same cgroup dirs.
    releasing: (
        Mutex<std::collections::HashSet<SandboxId>>,
        std::sync::Condvar,
    ),
    /// What the node knows of each running exec's streams (for checkpoints).
    exec_registry: Arc<carry::Registry>,
    /// Paused sandboxes' carried execs, by checkpoint directory.
    stashes: carry::Stashes,
}

impl NativeRuntime {
    /// Prepares the data directory, detects cgroups and seals the init binary.
    pub fn new(cfg: NativeConfig) -> Result<Self, RuntimeError> {
        let sandboxes_dir = cfg.data_dir.join("sandboxes");
        let trash_dir = cfg.data_dir.join("trash");
        for d in [&cfg.data_dir, &sandboxes_dir, &trash_dir] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(d)
                .map_err(RuntimeError::prepare(d))?;
        }
        // Any earlier process's half-removed sandboxes.
        empty_dir(&trash_dir).map_err(RuntimeError::prepare(&trash_dir))?;
        let cgroups = CgroupManager::detect(&cfg.cgroup_root, &cfg.cgroup_parent)?;
        let exe = match &cfg.init_binary {
            Some(p) => p.clone(),
            None => {
                let me =
                    std::env::current_exe().map_err(RuntimeError::prepare("/proc/self/exe"))?;
                let sibling = me.with_file_name("warren-init");
                if sibling.is_file() {
                    sibling
                } else {
                    me
                }
            }
        };
        debug!(init = %exe.display(), "sealing init binary");
        let init_exe = warren_sys::fd::sealed_memfd_copy(c"warren-init", &exe)
            .map_err(RuntimeError::sys("seal init binary"))?;
        let max_id = u64::from(cfg.id_base) + u64::from(cfg.id_slots) * u64::from(IDS_PER_SANDBOX);
        if cfg.id_slots == 0 || max_id > u64::from(u32::MAX) {
            return Err(RuntimeError::InvalidSpec {
                field: "id_slots",
                reason: "id ranges must fit below 2^32".into(),
            });
        }
        // No sandbox id may map to a host id that owns anything: refuse a
        // span that overlaps an account or another tool's subordinate ids.
        ids::check_host_ids(&cfg.host_etc, u64::from(cfg.id_base), max_id)?;
        let seccomp = warren_init::seccomp::compile()
            .map(|p| warren_init::seccomp::pack(&p))
            .map_err(|e| RuntimeError::InvalidSpec {
                field: "seccomp policy",
                reason: e.to_string(),
            })?;
        let network = match &cfg.network {
            None => None,
            Some(ncfg) => {
                let net = Arc::new(warren_net::Network::start(ncfg.clone())?);
                // Leases of sandboxes that may have survived a restart stay
                // theirs until `recover` decides.
                if let Ok(entries) = fs::read_dir(&sandboxes_dir) {
                    for e in entries.flatten() {
                        if let Some(n) = record::read(&e.path()).and_then(|r| r.net) {
                            net.reserve(n.lease);
                        }
                    }
                }
                Some(net)
            }
        };
        let wired = network.as_ref().map(|net| {
            let net = net.clone();
            pool::Pool::with_producer(
                cfg.netns_pool,
                Arc::new(move || {
                    let netns = warren_sys::clone::create_net_namespace()
                        .map_err(|e| warren_net::NetError::EnterNetns(std::io::Error::from(e)))?;
                    let lease = net.prepare(netns.as_fd())?;
                    Ok(Wired { netns, lease })
                }),
            )
        });
        Ok(NativeRuntime {
            exec_registry: Arc::default(),
            stashes: carry::Stashes::default(),
            init_source: exe,
            init_copy: Mutex::new(None),
            seccomp,
            netns: pool::NetnsPool::start(cfg.netns_pool),
            network,
            wired,
            reaper: trash::Reaper::start(),
            ids: Mutex::new(ids::IdAllocator::new(cfg.id_slots)),
            cfg,
            sandboxes_dir,
            trash_dir,
            cgroups,
            init_exe,
            sandboxes: RwLock::new(HashMap::new()),
            releasing: Default::default(),
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &NativeConfig {
        &self.cfg
    }

    /// The sandbox's network namespace, to make sockets inside it with
    /// [`warren_net::connect_in_netns`] (its `127.0.0.1` is the sandbox's
    /// own loopback). Works for sandboxes without a network too.
    pub fn netns(&self, id: &SandboxId) -> Result<Arc<OwnedFd>, RuntimeError> {
        let sb = self.get(id)?;
        if sb.exit.lock().expect("exit lock poisoned").is_some() {
            return Err(RuntimeError::NotRunning { id: id.to_string() });
        }
        sb.netns
            .clone()
            .ok_or_else(|| RuntimeError::NotRunning { id: id.to_string() })
    }

    /// The node's sandbox networking, when configured.
    pub fn network(&self) -> Option<&warren_net::Network> {
        self.network.as_deref()
    }

    /// The sandbox's addresses; `None` for a sandbox without a network.
    pub fn address(
        &self,
        id: &SandboxId,
    ) -> Result<Option<warren_net::SandboxAddress>, RuntimeError> {
        let sb = self.get(id)?;
        let net = sb.net.lock().expect("net lock poisoned");
        Ok(net.as_ref().map(|(l, _)| l.address))
    }

    /// The sandbox's current egress policy; `None` without a network.
    pub fn egress(&self, id: &SandboxId) -> Result<Option<warren_net::EgressPolicy>, RuntimeError> {
        let sb = self.get(id)?;
        let net = sb.net.lock().expect("net lock poisoned");
        Ok(net.as_ref().map(|(_, p)| p.clone()))
    }

    /// Changes a running sandbox's egress policy; it applies to the next
    /// packet, established connections included, and survives restarts
    /// (recorded in `record.json`). A sandbox created without a network
    /// has none to change (`InvalidSpec`).
    pub fn set_egress(
        &self,
        id: &SandboxId,
        policy: warren_net::EgressPolicy,
    ) -> Result<(), RuntimeError> {
        let _span = info_span!("set_egress", sandbox_id = %id).entered();
        let sb = self.get(id)?;
        let network = self.network.as_ref().ok_or(RuntimeError::InvalidSpec {
            field: "network",
            reason: "networking is not configured on this node".into(),
        })?;
        let mut net = sb.net.lock().expect("net lock poisoned");
        let Some((lease, current)) = net.as_mut() else {
            return Err(RuntimeError::InvalidSpec {
                field: "network",
                reason: "the sandbox was created without a network".into(),
            });
        };
        network.set_egress(lease, &policy)?;
        *current = policy.clone();
        let rec = record::Record {
            id: sb.id.clone(),
            slot: sb.slot,
            init_pid: sb.init_pid,
            net: Some(record::NetRecord {
                lease: lease.address.index,
                egress: policy,
            }),
        };
        record::write(&sb.dir, &rec).map_err(RuntimeError::prepare(&sb.dir))
    }

    /// Waits until the directories and network leases of every sandbox
    /// destroyed so far are gone (`destroy` defers that work; see `trash`).
    pub fn flush_trash(&self) {
        self.reaper.flush();
    }

    fn get(&self, id: &SandboxId) -> Result<Arc<Sandbox>, RuntimeError> {
        self.sandboxes
            .read()
            .expect("sandbox map lock poisoned")
            .get(id)
            .cloned()
            .ok_or_else(|| RuntimeError::NotFound { id: id.to_string() })
    }

    fn host_id_base(&self, slot: u32) -> u32 {
        self.cfg.id_base + slot * IDS_PER_SANDBOX
    }

    fn create_inner(
        &self,
        spec: &SandboxSpec,
        io: MainIo,
        dir: &Path,
        slot: u32,
        lease_out: &mut Option<warren_net::Lease>,
    ) -> Result<(Sandbox, Option<i32>, Phases), RuntimeError> {
        if spec.checkpointable {
            return self.create_staged(spec, io, dir, slot, lease_out);
        }
        let base = self.host_id_base(slot);
        let mut phases = Phases::new();
        prepare_dirs(dir, spec.rootfs.layers.len(), base)?;
        phases.mark("node:dirs");

        let cgroup = self.create_cgroup(spec)?;
        phases.mark("node:cgroup");

        let userns = warren_sys::clone::create_user_namespace(0, base, IDS_PER_SANDBOX, true)
            .map_err(RuntimeError::sys("create user namespace"))?;
        phases.mark("node:userns");
        let netns = if spec.network.enabled {
            let (wired, network) = match (&self.wired, &self.network) {
                (Some(w), Some(n)) => (w, n),
                _ => {
                    return Err(RuntimeError::InvalidSpec {
                        field: "network",
                        reason: "networking is not configured on this node".into(),
                    })
                }
            };
            let w = wired.take()?;
            *lease_out = Some(w.lease.clone());
            phases.mark("node:netns");
            if spec.network.egress != warren_net::EgressPolicy::Default {
                network.set_egress(&w.lease, &spec.network.egress)?;
                phases.mark("node:egress");
            }
            write_resolv_conf(dir, base, &warren_net::Network::resolv_conf(&w.lease))?;
            phases.mark("node:resolv_conf");
            w.netns
        } else {
            let n = self
                .netns
                .take()
                .map_err(RuntimeError::sys("create network namespace"))?;
            phases.mark("node:netns");
            n
        };
        let netns = Arc::new(netns);
        let listener = control::listen_in_netns(&dir.join("init.sock"), netns.as_fd())?;
        let (result, log, boot) = self.init_inputs(spec, &io, dir, base, &cgroup)?;
        let msg = warren_proto::encode(&boot)?;

        phases.mark("node:sockets");
        let ns = Namespaces {
            mount: true,
            pid: true,
            uts: true,
            ipc: true,
            net: false,    // init joins the prepared network namespace
            cgroup: false, // init unshares it after joining its cgroups
            user: false,   // init enters the prepared user namespace last
        };
        let (spawned, ours) = self.spawn_init(INIT_ARGV0, ns)?;
        phases.mark("node:clone_exec");
        let sandbox = Sandbox {
            id: spec.id.clone(),
            dir: dir.to_path_buf(),
            slot,
            init_pid: spawned.pid,
            pidfd: spawned.pidfd,
            is_child: true,
            cgroup,
            exit: Mutex::new(None),
            destroying: false.into(),
            netns: Some(netns.clone()),
            net: Mutex::new(lease_out.clone().map(|l| (l, spec.network.egress.clone()))),
        };

        let mut fds = vec![
            userns.as_fd(),
            listener.as_fd(),
            result.as_fd(),
            netns.as_fd(),
        ];
        if let Some(l) = &log {
            fds.push(l.as_fd());
        }
        for f in [&io.stdin, &io.stdout, &io.stderr].into_iter().flatten() {
            fds.push(f.as_fd());
        }
        let sent = control::send(ours.as_fd(), &msg, &fds);
        drop(fds);
        drop((userns, listener, result, netns, log, io));
        if let Err(e) = sent {
            // Init died before reading, or the message was refused.
            return Err(self.abandon(sandbox, e));
        }
        let reply: BootstrapReply = match control::recv(ours.as_fd(), Some(self.cfg.setup_timeout))
        {
            Ok(Some((bytes, _))) => match warren_proto::decode(&bytes) {
                Ok(r) => r,
                Err(e) => return Err(self.abandon(sandbox, e.into())),
            },
            Ok(None) => {
                return Err(self.abandon(
                    sandbox,
                    RuntimeError::InitTimeout {
                        secs: self.cfg.setup_timeout.as_secs(),
                    },
                ))
            }
            Err(e) => return Err(self.abandon(sandbox, e)),
        };
        match reply {
            BootstrapReply::Ready { main_pid, timings } => {
                phases.mark("node:init_total");
                for t in timings {
                    phases.list.push((format!("init:{}", t.phase), t.micros));
                }
                Ok((sandbox, main_pid, phases))
            }
            other => Err(self.abandon(sandbox, staged::setup_failure(other))),
        }
    }

    /// Releases a lease off the caller's path (see `trash`): the veth's
    /// deletion waits on the kernel. `flush_trash` waits for it.
    fn release_lease(&self, lease: Option<&warren_net::Lease>) {
        if let (Some(l), Some(n)) = (lease, &self.network) {
            let (l, n) = (l.clone(), n.clone());
            self.reaper.run(move || n.release(&l));
        }
    }

    /// Kills and reaps a half-created sandbox's init; returns `err`.
    fn abandon(&self, sb: Sandbox, err: RuntimeError) -> RuntimeError {
        let already =
            warren_sys::pidfd::poll_exit(sb.pidfd.as_fd(), Some(Duration::ZERO)).unwrap_or(false);
        let _ = warren_sys::pidfd::send_signal(sb.pidfd.as_fd(), libc::SIGKILL);
        let status = warren_sys::pidfd::wait_exit(sb.pidfd.as_fd());
        debug!(?status, already, "sandbox init abandoned during setup");
        err
    }

    /// Releases everything a sandbox id holds on the host: processes (via its
    /// cgroup), cgroups, state directory. Safe to call for ids that hold
    /// nothing.
    fn release(&self, id: &SandboxId, slot: Option<u32>) -> Result<(), RuntimeError> {
        let (lock, cv) = &self.releasing;
        let mut busy = lock.lock().expect("release lock poisoned");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while busy.contains(id) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            busy = cv
                .wait_timeout(busy, left)
                .expect("release lock poisoned")
                .0;
        }
        busy.insert(id.clone());
        drop(busy);
        let r = self.release_now(id, slot);
        lock.lock().expect("release lock poisoned").remove(id);
        cv.notify_all();
        r
    }

    fn release_now(&self, id: &SandboxId, slot: Option<u32>) -> Result<(), RuntimeError> {
        if let Some(cg) = self.cgroups.open(id.as_str())? {
            cg.kill_all()?;
            cg.destroy()?;
        }
        let dir = self.sandboxes_dir.join(id.as_str());
        if dir.exists() {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let trash = self.trash_dir.join(format!("{id}.{nanos}"));
            match fs::rename(&dir, &trash) {
                Ok(()) => self.reaper.delete(trash),
                // A concurrent destroy of the same id got there first.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(RuntimeError::Cleanup {
                        path: dir.clone(),
                        source,
                    })
                }
            }
        }
        if let Some(slot) = slot {
            self.ids.lock().expect("id lock poisoned").release(slot);
        }
        Ok(())
    }

    /// Works out how a sandbox whose init has exited ended; reaps init.
    fn settle(&self, sb: &Sandbox) -> SandboxExit {
        let mut guard = sb.exit.lock().expect("exit lock poisoned");
        if let Some(e) = guard.as_ref() {
            return e.clone();
        }
        let init_status = if sb.is_child {
            warren_sys::pidfd::wait_exit(sb.pidfd.as_fd()).ok()
        } else {
            None
        };
        let exit = if sb.destroying.load(std::sync::atomic::Ordering::SeqCst) {
            SandboxExit::Destroyed
        } else {
            classify(&sb.dir, &sb.cgroup, init_status)
        };
        *guard = Some(exit.clone());
        exit
    }
}

impl NativeRuntime {
    /// The sandbox's cgroup, with the spec's limits.
    fn create_cgroup(&self, spec: &SandboxSpec) -> Result<Arc<Cgroup>, RuntimeError> {
        let limits = CgroupLimits {
            cpu_millis: spec.limits.cpu_millis,
            memory_bytes: spec.limits.memory_bytes,
            pids_max: spec.limits.pids,
        };
        Ok(Arc::new(self.cgroups.create(spec.id.as_str(), &limits)?))
    }

    /// What init gets in either shape: the result file, the main
    /// command's log ring (when asked for), and the bootstrap message for
    /// the default shape (the checkpointable shape moves `main`, the log
    /// and seccomp into `Start`).
    fn init_inputs(
        &self,
        spec: &SandboxSpec,
        io: &MainIo,
        dir: &Path,
        base: u32,
        cgroup: &Cgroup,
    ) -> Result<(fs::File, Option<fs::File>, Bootstrap), RuntimeError> {
        let result = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(dir.join("result"))
            .map_err(RuntimeError::prepare(dir.join("result")))?;
        let log = match io.log_capacity {
            Some(cap) if spec.command.is_some() => Some(create_log(dir, cap)?),
            _ => None,
        };
        let main = spec.command.as_ref().map(|argv| ProcessSpec {
            argv: argv.clone(),
            env: spec.env.clone(),
            cwd: spec.workdir.clone(),
            uid: spec.user.uid,
            gid: spec.user.gid,
            groups: spec.user.groups.clone(),
            tty: None,
            stdio: StdioFds {
                stdin: io.stdin.is_some(),
                stdout: io.stdout.is_some(),
                stderr: io.stderr.is_some(),
            },
            timeout_ms: None,
            agent: false,
        });
        let boot = Bootstrap {
            version: INIT_PROTOCOL_VERSION,
            sandbox_id: spec.id.to_string(),
            hostname: spec.hostname.clone(),
            state_dir: path_str(dir)?,
            layers: spec
                .rootfs
                .layers
                .iter()
                .map(|p| path_str(p))
                .collect::<Result<_, _>>()?,
            binds: spec
                .rootfs
                .binds
                .iter()
                .map(|b| {
                    Ok(BindSpec {
                        source: path_str(&b.source)?,
                        target: b.target.clone(),
                        readonly: b.readonly,
                    })
                })
                .collect::<Result<_, RuntimeError>>()?,
            id_base: base,
            id_count: IDS_PER_SANDBOX,
            cgroup_procs: cgroup
                .procs_files()
                .iter()
                .map(|p| path_str(p))
                .collect::<Result<_, _>>()?,
            tmp_size_bytes: match (spec.limits.memory_bytes, spec.limits.disk_bytes) {
                (Some(m), Some(d)) => Some(m.min(d)),
                (m, d) => m.or(d),
            },
            disk_bytes: spec.limits.disk_bytes,
            image_mounts: snapshot::image_mount_specs(&spec.image_mounts)?,
            main,
            main_log: log.is_some(),
            seccomp: self.seccomp.clone(),
            fds: BootstrapFds::UsernsListenerResultNetnsLogStdio,
            checkpointable: false,
            init_binary: String::new(),
        };
        Ok((result, log, boot))
    }

    /// Clones the init binary (its sealed memfd) as `argv0` into the
    /// namespaces `ns`, with the child's end of a new bootstrap socket at
    /// [`BOOTSTRAP_FD`]; returns the child and the node's end.
    fn spawn_init(
        &self,
        argv0: &str,
        ns: Namespaces,
    ) -> Result<(warren_sys::clone::Spawned, OwnedFd), RuntimeError> {
        let (ours, theirs) = control::seqpacket_pair()?;
        let argv0 = CString::new(argv0).expect("constant has no NUL");
        let env = [
            CString::new(format!("{INIT_ENV_MARKER}={INIT_PROTOCOL_VERSION}"))
                .expect("constant has no NUL"),
        ];
        let argv: [&CStr; 1] = [&argv0];
        let spawned = warren_sys::clone::spawn_exec_fd(
            self.init_exe.as_fd(),
            &argv,
            &env,
            &[(theirs.as_fd(), BOOTSTRAP_FD)],
            ns,
        )
        .map_err(RuntimeError::sys("clone sandbox init"))?;
        Ok((spawned, ours))
    }

    /// Claims the sandbox's id, slot and state directory, runs `inner` to
    /// build it, records and registers it; on failure releases everything.
    /// Shared by create and restore.
    fn build_sandbox(
        &self,
        spec: &SandboxSpec,
        started: Instant,
        inner: impl FnOnce(
            &Path,
            u32,
            &mut Option<warren_net::Lease>,
        ) -> Result<(Sandbox, Option<i32>, Phases), RuntimeError>,
    ) -> Result<SandboxInfo, RuntimeError> {
        let dir = self.sandboxes_dir.join(spec.id.as_str());
        {
            // A leftover directory is caught by the atomic mkdir below.
            let map = self.sandboxes.read().expect("sandbox map lock poisoned");
            if map.contains_key(&spec.id) {
                return Err(RuntimeError::AlreadyExists {
                    id: spec.id.to_string(),
                });
            }
        }
        let slot = self
            .ids
            .lock()
            .expect("id lock poisoned")
            .allocate()
            .ok_or(RuntimeError::IdRangesExhausted {
                slots: self.cfg.id_slots,
            })?;
        // Claim the directory atomically: a concurrent create of the same id
        // fails here.
        if let Err(e) = fs::DirBuilder::new().mode(0o700).create(&dir) {
            self.ids.lock().expect("id lock poisoned").release(slot);
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                return Err(RuntimeError::AlreadyExists {
                    id: spec.id.to_string(),
                });
            }
            return Err(RuntimeError::prepare(&dir)(e));
        }
        let mut lease = None;
        match inner(&dir, slot, &mut lease) {
            Ok((sb, main_pid, mut phases)) => {
                let written = record::write(
                    &dir,
                    &record::Record {
                        id: sb.id.clone(),
                        slot,
                        init_pid: sb.init_pid,
                        net: lease.as_ref().map(|l| record::NetRecord {
                            lease: l.address.index,
                            egress: spec.network.egress.clone(),
                        }),
                    },
                );
                if let Err(e) = written {
                    // Not adopted: kill it and release everything.
                    let _ = warren_sys::pidfd::send_signal(sb.pidfd.as_fd(), libc::SIGKILL);
                    let _ = warren_sys::pidfd::wait_exit(sb.pidfd.as_fd());
                    self.release_lease(lease.as_ref());
                    let _ = self.release(&spec.id, Some(slot));
                    return Err(RuntimeError::prepare(&dir)(e));
                }
                phases.mark("node:record");
                let info = SandboxInfo {
                    id: sb.id.clone(),
                    init_pid: sb.init_pid,
                    main_pid,
                    host_id_base: self.host_id_base(slot),
                    phases: phases.list,
                };
                self.sandboxes
                    .write()
                    .expect("sandbox map lock poisoned")
                    .insert(sb.id.clone(), Arc::new(sb));
                debug!(
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "sandbox created"
                );
                Ok(info)
            }
            Err(e) => {
                debug!(error = %e, "create failed; cleaning up");
                self.release_lease(lease.as_ref());
                if let Err(cleanup) = self.release(&spec.id, Some(slot)) {
                    warn!(error = %cleanup, "cleanup after failed create");
                }
                Err(e)
            }
        }
    }
}

/// Wall-clock phases of a create, in microseconds.
struct Phases {
    last: Instant,
    list: Vec<(String, u64)>,
}

impl Phases {
    fn new() -> Self {
        Phases {
            last: Instant::now(),
            list: Vec::new(),
        }
    }

    fn mark(&mut self, name: &str) {
        let now = Instant::now();
        self.list.push((
            name.to_string(),
            now.duration_since(self.last).as_micros() as u64,
        ));
        self.last = now;
    }
}

impl Drop for NativeRuntime {
    fn drop(&mut self) {
        if let Some(mut wired) = self.wired.take() {
            for w in wired.drain() {
                self.release_lease(Some(&w.lease));
            }
        }
        // Deferred lease teardowns finish before the table goes.
        self.reaper.flush();
        if let Some(network) = self.network.take() {
            let live = self
                .sandboxes
                .read()
                .map(|m| {
                    m.values()
                        .any(|sb| sb.net.lock().map(|n| n.is_some()).unwrap_or(true))
                })
                .unwrap_or(true);
            network.shutdown(live);
        }
        // Leave no empty cgroup subtree behind; with sandboxes still
        // running (they outlive the node) this fails harmlessly.
        let _ = self.cgroups.destroy_parent();
    }
}

/// Turns the result file, the cgroup's OOM count and init's own status into
/// a typed exit.
fn classify(
    dir: &Path,
    cgroup: &Cgroup,
    init_status: Option<warren_sys::pidfd::WaitStatus>,
) -> SandboxExit {
    let ooms = cgroup.oom_kills().unwrap_or(0);
    let recorded = fs::read(dir.join("result"))
        .ok()
        .filter(|b| !b.is_empty())
        .and_then(|b| warren_proto::decode::<MainResult>(&b).ok());
    match recorded {
        Some(MainResult {
            status: ExitStatus::Code(code),
        }) => SandboxExit::Exited { code },
        Some(MainResult {
            status: ExitStatus::Signal(sig),
        }) => {
            if sig == libc::SIGKILL && ooms > 0 {
                SandboxExit::OomKilled
            } else {
                SandboxExit::Signaled { signal: sig }
            }
        }
        None => match init_status {
            Some(warren_sys::pidfd::WaitStatus::Signaled(libc::SIGKILL)) if ooms > 0 => {
                SandboxExit::OomKilled
            }
            Some(warren_sys::pidfd::WaitStatus::Exited(code)) if code > 128 => {
                // An idle sandbox that received a termination signal.
                SandboxExit::Signaled { signal: code - 128 }
            }
            Some(s) => SandboxExit::Lost {
                detail: format!("init ended without a result ({s:?})"),
            },
            None => SandboxExit::Lost {
                detail: "init ended without a result".into(),
            },
        },
    }
}

impl NativeRuntime {
    /// Starts an exec, or (`agent`) the file agent from init's own
    /// executable.
    fn start(
        &self,
        id: &SandboxId,
        spec: &ExecSpec,
        io: ExecIo,
        agent: bool,
    ) -> Result<Exec, RuntimeError> {
        let sb = self.get(id)?;
        validate_process(&spec.argv, &spec.env, &spec.workdir)?;
        if sb.exit.lock().expect("exit lock poisoned").is_some() {
            return Err(RuntimeError::NotRunning { id: id.to_string() });
        }
        let registry = (&self.exec_registry, id);
        control::start_exec(&sb.dir, sb.cgroup.clone(), spec, io, agent, registry).map_err(|e| {
            match e {
                RuntimeError::InitGone => RuntimeError::NotRunning { id: id.to_string() },
                e => e,
            }
        })
    }
}

impl Runtime for NativeRuntime {
    fn create(&self, spec: &SandboxSpec, io: MainIo) -> Result<SandboxInfo, RuntimeError> {
        let _span = info_span!("create", sandbox_id = %spec.id).entered();
        let started = Instant::now();
        if let Some(argv) = &spec.command {
            validate_process(argv, &spec.env, &spec.workdir)?;
        }
        validate_hostname(&spec.hostname)?;
        for b in &spec.rootfs.binds {
            if !b.target.starts_with('/') || b.target.split('/').any(|c| c == "..") {
                return Err(RuntimeError::InvalidSpec {
                    field: "binds",
                    reason: format!("bind target {:?} must be absolute without '..'", b.target),
                });
            }
        }
        if spec.rootfs.layers.is_empty() {
            return Err(RuntimeError::InvalidSpec {
                field: "rootfs",
                reason: "at least one image layer is required".into(),
            });
        }
        self.build_sandbox(spec, started, |dir, slot, lease| {
            self.create_inner(spec, io, dir, slot, lease)
        })
    }

    fn exec(&self, id: &SandboxId, spec: &ExecSpec, io: ExecIo) -> Result<Exec, RuntimeError> {
        self.start(id, spec, io, false)
    }

    fn exec_agent(
        &self,
        id: &SandboxId,
        spec: &ExecSpec,
        io: ExecIo,
    ) -> Result<Exec, RuntimeError> {
        self.start(id, spec, io, true)
    }

    fn signal(&self, id: &SandboxId, signal: i32) -> Result<(), RuntimeError> {
        let sb = self.get(id)?;
        control::signal_main(&sb.dir, signal).map_err(|e| match e {
            RuntimeError::InitGone => RuntimeError::NotRunning { id: id.to_string() },
            e => e,
        })
    }

    fn wait(
        &self,
        id: &SandboxId,
        timeout: Option<Duration>,
    ) -> Result<Option<SandboxExit>, RuntimeError> {
        let sb = self.get(id)?;
        if let Some(e) = sb.exit.lock().expect("exit lock poisoned").as_ref() {
            return Ok(Some(e.clone()));
        }
        let done = warren_sys::pidfd::poll_exit(sb.pidfd.as_fd(), timeout)
            .map_err(RuntimeError::sys("wait for sandbox"))?;
        if !done {
            return Ok(None);
        }
        Ok(Some(self.settle(&sb)))
    }

    fn exit_fd(&self, id: &SandboxId) -> Result<OwnedFd, RuntimeError> {
        let sb = self.get(id)?;
        sb.pidfd
            .try_clone()
            .map_err(|e| RuntimeError::prepare(&sb.dir)(e))
    }

    fn destroy(&self, id: &SandboxId) -> Result<(), RuntimeError> {
        let _span = info_span!("destroy", sandbox_id = %id).entered();
        let sb = self
            .sandboxes
            .write()
            .expect("sandbox map lock poisoned")
            .remove(id);
        let slot = match &sb {
            Some(sb) => {
                sb.destroying
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                let _ = warren_sys::pidfd::send_signal(sb.pidfd.as_fd(), libc::SIGKILL);
                let gone =
                    warren_sys::pidfd::poll_exit(sb.pidfd.as_fd(), Some(Duration::from_secs(10)))
                        .unwrap_or(false);
                if !gone {
                    warn!(pid = sb.init_pid, "init did not exit within 10s of SIGKILL");
                }
                self.settle(sb);
                let lease = sb.net.lock().expect("net lock poisoned").take();
                self.release_lease(lease.as_ref().map(|(l, _)| l));
                Some(sb.slot)
            }
            None => None,
        };
        self.release(id, slot)
    }

    fn recover(&self) -> Result<Vec<Recovered>, RuntimeError> {
        let mut out = Vec::new();
        let entries = fs::read_dir(&self.sandboxes_dir)
            .map_err(RuntimeError::prepare(&self.sandboxes_dir))?;
        let mut seen = std::collections::HashSet::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(id) = SandboxId::new(name.clone()) else {
                warn!(entry = %name, "unexpected entry in sandboxes dir; leaving it");
                continue;
            };
            seen.insert(id.to_string());
            if self.sandboxes.read().expect("lock").contains_key(&id) {
                continue;
            }
            let dir = entry.path();
            let rec = record::read(&dir);
            let cgroup = self.cgroups.open(id.as_str())?;
            let alive = match (&rec, &cgroup) {
                (Some(r), Some(cg)) => {
                    // The pid must still be init of this sandbox: it must sit
                    // in the sandbox's cgroup (guards against pid reuse).
                    cg.procs().unwrap_or_default().contains(&r.init_pid)
                        && warren_sys::pidfd::open(r.init_pid)
                            .ok()
                            .map(|fd| (r, fd))
                            .is_some()
                        && control::ping(&dir).is_ok()
                }
                _ => false,
            };
            if let (true, Some(r), Some(cg)) = (alive, &rec, cgroup) {
                let pidfd =
                    warren_sys::pidfd::open(r.init_pid).map_err(RuntimeError::sys("pidfd_open"))?;
                self.ids.lock().expect("id lock poisoned").claim(r.slot);
                let net = match (&r.net, &self.network) {
                    (Some(n), Some(network)) => match network.readopt(n.lease, &n.egress) {
                        Ok(l) => Some((l, n.egress.clone())),
                        Err(e) => {
                            warn!(sandbox_id = %id, error = %e, "re-adopting a network lease");
                            None
                        }
                    },
                    _ => None,
                };
                let netns = fs::File::open(format!("/proc/{}/ns/net", r.init_pid))
                    .ok()
                    .map(|f| Arc::new(OwnedFd::from(f)));
                let sb = Sandbox {
                    id: id.clone(),
                    dir,
                    slot: r.slot,
                    init_pid: r.init_pid,
                    pidfd,
                    is_child: false,
                    cgroup: Arc::new(cg),
                    exit: Mutex::new(None),
                    destroying: false.into(),
                    netns,
                    net: Mutex::new(net),
                };
                self.sandboxes
                    .write()
                    .expect("sandbox map lock poisoned")
                    .insert(id.clone(), Arc::new(sb));
                out.push(Recovered::Running(id));
                continue;
            }
            let exit = match self.cgroups.open(id.as_str())? {
                Some(cg) if rec.is_some() => classify(&dir, &cg, None),
                _ => SandboxExit::Lost {
                    detail: "no usable record of the sandbox survived".into(),
                },
            };
            if let (Some(n), Some(network)) =
                (rec.as_ref().and_then(|r| r.net.as_ref()), &self.network)
            {
                // Its namespace died with it (or is going): the veth goes
                // too; remove_stale below catches a lingering one.
                network.unreserve(n.lease);
            }
            self.release(&id, None)?;
            out.push(Recovered::Ended(id, exit));
        }
        if let Some(network) = &self.network {
            match network.remove_stale() {
                Ok(0) => {}
                Ok(n) => warn!(count = n, "removed stale sandbox interfaces"),
                Err(e) => warn!(error = %e, "removing stale sandbox interfaces"),
            }
        }
        // Cgroups without a state directory: leftovers of a crash mid-create.
        for name in self.cgroups.list()? {
            if seen.contains(&name) {
                continue;
            }
            if let Some(cg) = self.cgroups.open(&name)? {
                warn!(cgroup = %name, "removing orphaned sandbox cgroup");
                cg.kill_all()?;
                cg.destroy()?;
            }
        }
        Ok(out)
    }

    fn read_log(&self, id: &SandboxId, tail: Option<u64>) -> Result<crate::MainLog, RuntimeError> {
        let sb = self.get(id)?;
        let path = sb.dir.join(LOG_FILE);
        read_log_file(&path, tail).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => RuntimeError::InvalidSpec {
                field: "log",
                reason: "the sandbox's main command output is not captured".into(),
            },
            _ => RuntimeError::PrepareState { path, source },
        })
    }

    fn list(&self) -> Vec<SandboxId> {
        let mut v: Vec<SandboxId> = self
            .sandboxes
            .read()
            .expect("sandbox map lock poisoned")
            .keys()
            .cloned()
            .collect();
        v.sort();
        v
    }
}

fn validate_hostname(h: &str) -> Result<(), RuntimeError> {
    let ok = !h.is_empty()
        && h.len() <= 63
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !h.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(RuntimeError::InvalidSpec {
            field: "hostname",
            reason: "must be 1-63 characters of [A-Za-z0-9.-]".into(),
        })
    }
}

fn path_str(p: &Path) -> Result<String, RuntimeError> {
    p.to_str()
        .map(str::to_string)
        .ok_or_else(|| RuntimeError::InvalidSpec {
            field: "path",
            reason: format!("{} is not valid UTF-8", p.display()),
        })
}

/// Creates the per-sandbox directories. `upper/` belongs to the sandbox's
/// root so the root of its filesystem is its own.
fn prepare_dirs(dir: &Path, layers: usize, base: u32) -> Result<(), RuntimeError> {
    let mk = |p: PathBuf, mode: u32| -> Result<(), RuntimeError> {
        fs::DirBuilder::new()
            .mode(mode)
            .create(&p)
            .map_err(RuntimeError::prepare(&p))
    };
    mk(dir.join("upper"), 0o755)?;
    mk(dir.join("work"), 0o700)?;
    mk(dir.join("rootfs"), 0o755)?;
    mk(dir.join("disk"), 0o700)?;
    mk(dir.join("lower"), 0o700)?;
    for i in 0..layers {
        mk(dir.join("lower").join(i.to_string()), 0o755)?;
    }
    let upper = dir.join("upper");
    std::os::unix::fs::chown(&upper, Some(base), Some(base))
        .map_err(RuntimeError::prepare(&upper))?;
    fs::set_permissions(&upper, fs::Permissions::from_mode(0o755))
        .map_err(RuntimeError::prepare(&upper))?;
    Ok(())
}

/// Writes `/etc/resolv.conf` into the sandbox's writable layer, owned by
/// the sandbox's root. With a disk limit the writable layer is a tmpfs that
/// init mounts over it; init copies the file onto that tmpfs
/// (`warren-init`'s `seed_resolv_conf`).
fn write_resolv_conf(dir: &Path, base: u32, text: &str) -> Result<(), RuntimeError> {
    let etc = dir.join("upper/etc");
    match fs::DirBuilder::new().mode(0o755).create(&etc) {
        Ok(()) => std::os::unix::fs::chown(&etc, Some(base), Some(base))
            .map_err(RuntimeError::prepare(&etc))?,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(RuntimeError::prepare(&etc)(e)),
    }
    let path = etc.join("resolv.conf");
    let f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(RuntimeError::prepare(&path))?;
    use std::io::Write;
    (&f).write_all(text.as_bytes())
        .map_err(RuntimeError::prepare(&path))?;
    std::os::unix::fs::fchown(&f, Some(base), Some(base)).map_err(RuntimeError::prepare(&path))?;
    Ok(())
}

/// The main command's log ring in the state directory.
const LOG_FILE: &str = "main.log";

/// Largest log ring a sandbox may ask for.
pub const MAX_LOG_CAPACITY: u64 = 64 << 20;

fn create_log(dir: &Path, capacity: u64) -> Result<fs::File, RuntimeError> {
    if capacity == 0 || capacity > MAX_LOG_CAPACITY {
        return Err(RuntimeError::InvalidSpec {
            field: "log_capacity",
            reason: format!("must be between 1 and {MAX_LOG_CAPACITY} bytes"),
        });
    }
    let path = dir.join(LOG_FILE);
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(RuntimeError::prepare(&path))?;
    use std::io::Write;
    let header = warren_proto::log::LogHeader { capacity, total: 0 };
    (&f).write_all(&header.encode())
        .map_err(RuntimeError::prepare(&path))?;
    // Sparse: the data region takes disk space only as output arrives.
    f.set_len(warren_proto::log::HEADER_LEN + capacity)
        .map_err(RuntimeError::prepare(&path))?;
    Ok(f)
}

/// Reads the retained part of a log ring at `path`.
pub fn read_log_file(path: &Path, tail: Option<u64>) -> std::io::Result<crate::MainLog> {
    use std::os::unix::fs::FileExt;
    let f = fs::File::open(path)?;
    let mut h = [0u8; warren_proto::log::HEADER_LEN as usize];
    f.read_exact_at(&mut h, 0)?;
    let header = warren_proto::log::LogHeader::decode(&h)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "not a log ring"))?;
    let (ranges, dropped) = header.read_ranges(tail);
    let mut bytes = Vec::with_capacity(ranges.iter().map(|r| r.1 as usize).sum());
    for (off, len) in ranges {
        let start = bytes.len();
        bytes.resize(start + len as usize, 0);
        f.read_exact_at(&mut bytes[start..], off)?;
    }
    Ok(crate::MainLog {
        bytes,
        skipped: dropped,
        total: header.total,
    })
}

fn empty_dir(dir: &Path) -> std::io::Result<()> {
    for e in fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            fs::remove_dir_all(&p)?;
        } else {
            fs::remove_file(&p)?;
        }
    }
    Ok(())
}

use std::os::unix::fs::OpenOptionsExt;
