//! Builds the sandbox from the bootstrap message. Runs as host root inside
//! the fresh (host-owned) namespaces, and ends by dropping into the sandbox's
//! user namespace.

use std::fs;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::stat::{mknod, Mode, SFlag};
use nix::unistd::{chdir, chown, pivot_root, sethostname, Gid, Uid};
use warren_proto::Bootstrap;
use warren_sys::mount::{bind_with_attrs, TreeAttrs};

/// A failed setup step: the step's stable name, the errno and a message.
#[derive(Debug)]
pub struct SetupError {
    pub step: &'static str,
    pub errno: Option<i32>,
    pub message: String,
}

impl SetupError {
    fn new(step: &'static str, errno: Errno, what: impl std::fmt::Display) -> Self {
        SetupError {
            step,
            errno: Some(errno as i32),
            message: format!("{what}: {}", errno.desc()),
        }
    }
}

pub(crate) trait Step<T> {
    fn step(self, step: &'static str, what: impl std::fmt::Display) -> Result<T, SetupError>;
}

impl<T> Step<T> for Result<T, Errno> {
    fn step(self, step: &'static str, what: impl std::fmt::Display) -> Result<T, SetupError> {
        self.map_err(|e| SetupError::new(step, e, what))
    }
}

impl<T> Step<T> for std::io::Result<T> {
    fn step(self, step: &'static str, what: impl std::fmt::Display) -> Result<T, SetupError> {
        self.map_err(|e| {
            SetupError::new(
                step,
                Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
                what,
            )
        })
    }
}

/// Records how long each setup phase takes.
pub struct Timer {
    last: std::time::Instant,
    pub phases: Vec<warren_proto::PhaseTiming>,
}

impl Timer {
    pub fn new() -> Self {
        Timer {
            last: std::time::Instant::now(),
            phases: Vec::new(),
        }
    }

    pub fn mark(&mut self, phase: &str) {
        let now = std::time::Instant::now();
        self.phases.push(warren_proto::PhaseTiming {
            phase: phase.to_string(),
            micros: now.duration_since(self.last).as_micros() as u64,
        });
        self.last = now;
    }
}

/// Builds the sandbox and switches into its user namespace.
pub fn build(
    b: &Bootstrap,
    userns: &OwnedFd,
    netns: &OwnedFd,
    t: &mut Timer,
) -> Result<(), SetupError> {
    // First, so that /sys below shows the sandbox's own network devices.
    setns(netns, CloneFlags::CLONE_NEWNET).step("join_netns", "setns(net)")?;
    for p in &b.cgroup_procs {
        fs::write(p, "0").step("join_cgroup", p)?;
    }
    unshare(CloneFlags::CLONE_NEWCGROUP).step("unshare_cgroup", "unshare(CLONE_NEWCGROUP)")?;
    // Init should survive the sandbox's own OOM kills so that it can report
    // them; its children reset this to 0 before exec. Lowering the score
    // needs CAP_SYS_RESOURCE, which some hosts withhold; then init stays
    // killable and the node reports an OOM-killed init as `oom_killed`.
    let _ = fs::write("/proc/self/oom_score_adj", "-1000");
    t.mark("cgroup");

    make_private()?;

    let state = PathBuf::from(&b.state_dir);
    chdir(&state).step("chdir_state", &b.state_dir)?;
    let lowers = mount_lowers(&b.layers, userns)?;
    // With a disk limit the writable layer lives on a tmpfs of that size.
    let (upper, work) = match b.disk_bytes {
        Some(size) => {
            let opts = format!("size={size},mode=0755,uid={},gid={}", b.id_base, b.id_base);
            mount(
                Some("tmpfs"),
                "disk",
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some(opts.as_str()),
            )
            .step("mount_disk", "tmpfs writable layer")?;
            ensure_dir(Path::new("disk/upper"), 0o755, b.id_base).step("mount_disk", "upper")?;
            fs::create_dir("disk/work").step("mount_disk", "work")?;
            seed_resolv_conf(b.id_base).step("mount_disk", "etc/resolv.conf")?;
            keep_disk_upper().step("mount_disk", "keep disk/upper")?;
            ("disk/upper", "disk/work")
        }
        None => ("upper", "work"),
    };
    mount_overlay(&lowers, upper, work)?;
    t.mark("rootfs");
    let root = state.join("rootfs");
    let base = b.id_base;
    mount_binds(b, &root, userns)?;
    mount_images(b, &root, userns)?;
    t.mark("binds");
    mount_proc(&root)?;
    t.mark("proc");
    mount_dev(&root, base)?;
    t.mark("dev");
    mount_sys(&root)?;
    mask_paths(&root)?;
    t.mark("mask");
    mount_tmp(&root, base, b.tmp_size_bytes)?;

    t.mark("sys_tmp");
    chdir(&root).step("pivot_root", "chdir rootfs")?;
    pivot_root(".", ".").step("pivot_root", "pivot_root")?;
    umount2(".", MntFlags::MNT_DETACH).step("pivot_root", "detach old root")?;
    chdir("/").step("pivot_root", "chdir /")?;

    sethostname(&b.hostname).step("hostname", "sethostname")?;
    t.mark("pivot_root");
    warren_sys::net::loopback_up().step("loopback", "lo up")?;
    t.mark("hostname_lo");

    setns(userns, CloneFlags::CLONE_NEWUSER).step("enter_userns", "setns(user)")?;
    nix::unistd::setgroups(&[]).step("enter_userns", "setgroups")?;
    let zero_g = Gid::from_raw(0);
    let zero_u = Uid::from_raw(0);
    nix::unistd::setresgid(zero_g, zero_g, zero_g).step("enter_userns", "setresgid")?;
    nix::unistd::setresuid(zero_u, zero_u, zero_u).step("enter_userns", "setresuid")?;
    // Non-dumpable, and its mm belongs to the host user namespace (it was
    // exec'd there): nothing in the sandbox can ptrace init or open its
    // /proc/1/{mem,exe,fd}.
    lock_down()?;
    t.mark("userns");
    Ok(())
}

/// The last step of every init's setup, in the sandbox's user namespace:
/// non-dumpable (nothing in the sandbox can ptrace init or open its
/// `/proc/1/{mem,fd}`: that needs `CAP_SYS_PTRACE`, which the bounding set
/// below removes), and — every process of the sandbox descends from init —
/// a narrowed bounding set caps what any of them can ever hold, while
/// `no_new_privs` stops setuid/setcap binaries from gaining anything.
pub fn lock_down() -> Result<(), SetupError> {
    nix::sys::prctl::set_dumpable(false).step("dumpable", "prctl(PR_SET_DUMPABLE)")?;
    drop_bounding_caps()?;
    warren_sys::proc::clear_ambient_caps().step("capabilities", "clear ambient capabilities")?;
    nix::sys::prctl::set_no_new_privs().step("no_new_privs", "prctl(PR_SET_NO_NEW_PRIVS)")?;
    Ok(())
}

/// What the host-side half of a checkpointable sandbox's setup hands to its
/// init: the assembled root (a detached mount tree) and the init binary
/// (a detached read-only bind of one file).
pub struct Prepared {
    rootfs: OwnedFd,
    init_binary: OwnedFd,
}

/// The checkpointable shape, first half (host root, in the host-owned
/// mount namespace the node cloned init into): everything that needs the
/// host's privileges — joining the cgroups, idmapped image layers, the
/// overlay, host binds and image mounts — is assembled into one detached
/// tree. Then the process enters the sandbox's user namespace and creates
/// the mount, UTS, IPC, network, cgroup and PID namespaces from inside it,
/// so that the user namespace owns them all (what CRIU can checkpoint and
/// recreate). The caller forks next: the child is PID 1 of the new PID
/// namespace and finishes with [`finish_checkpointable`].
pub fn prepare_checkpointable(
    b: &Bootstrap,
    userns: &OwnedFd,
    t: &mut Timer,
) -> Result<Prepared, SetupError> {
    for p in &b.cgroup_procs {
        fs::write(p, "0").step("join_cgroup", p)?;
    }
    let _ = fs::write("/proc/self/oom_score_adj", "-1000");
    t.mark("cgroup");
    if b.disk_bytes.is_some() {
        return Err(SetupError {
            step: "mount_disk",
            errno: None,
            message: "checkpointable sandboxes cannot have a disk limit yet".into(),
        });
    }
    make_private()?;
    let state = PathBuf::from(&b.state_dir);
    chdir(&state).step("chdir_state", &b.state_dir)?;
    let lowers = mount_lowers(&b.layers, userns)?;
    mount_overlay(&lowers, "upper", "work")?;
    let root = state.join("rootfs");
    mount_binds(b, &root, userns)?;
    mount_images(b, &root, userns)?;
    t.mark("rootfs");
    let rootfs = warren_sys::mount::open_tree_clone(Path::new("rootfs"), true)
        .step("detach_rootfs", "open_tree(rootfs)")?;
    umount2("rootfs", MntFlags::MNT_DETACH).step("detach_rootfs", "umount rootfs")?;
    // The new mount namespace keeps this working directory: the tree is
    // attached onto it by path ".", without looking up the (host-only)
    // state directory from inside the user namespace.
    chdir("rootfs").step("detach_rootfs", "chdir rootfs")?;
    let init_binary = warren_sys::mount::open_tree_clone(Path::new(&b.init_binary), false)
        .step("init_binary", &b.init_binary)?;
    let ro = TreeAttrs {
        readonly: true,
        nosuid: true,
        nodev: true,
        idmap: None,
    };
    warren_sys::mount::set_tree_attrs(init_binary.as_fd(), ro, false)
        .step("init_binary", "read-only")?;
    setns(userns, CloneFlags::CLONE_NEWUSER).step("enter_userns", "setns(user)")?;
    nix::unistd::setgroups(&[]).step("enter_userns", "setgroups")?;
    let zero_g = Gid::from_raw(0);
    let zero_u = Uid::from_raw(0);
    nix::unistd::setresgid(zero_g, zero_g, zero_g).step("enter_userns", "setresgid")?;
    nix::unistd::setresuid(zero_u, zero_u, zero_u).step("enter_userns", "setresuid")?;
    unshare(
        CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWNET
            | CloneFlags::CLONE_NEWCGROUP
            | CloneFlags::CLONE_NEWPID,
    )
    .step("unshare", "unshare(mnt, uts, ipc, net, cgroup, pid)")?;
    t.mark("namespaces");
    Ok(Prepared {
        rootfs,
        init_binary,
    })
}

/// The checkpointable shape, second half, in PID 1 of the new PID
/// namespace (root of the sandbox's user namespace, which owns every
/// namespace this process is in): attaches the prepared root, then mounts
/// what the sandbox's own namespaces own (`/proc`, `/dev`, `/sys`, `/tmp`),
/// pivots, names the host and brings `lo` up. `/dev`'s device nodes are
/// binds of the host's (a user namespace cannot `mknod`), and the init
/// binary is bound at [`warren_proto::CHECKPOINTABLE_INIT_PATH`], where
/// init re-executes itself next.
pub fn finish_checkpointable(b: &Bootstrap, p: Prepared) -> Result<(), SetupError> {
    make_private()?;
    warren_sys::mount::move_mount_to(p.rootfs.as_fd(), Path::new("."))
        .step("attach_rootfs", "move_mount")?;
    nix::unistd::fchdir(&p.rootfs).step("attach_rootfs", "fchdir")?;
    drop(p.rootfs);
    let root = Path::new(".");
    mount_proc(root)?;
    let dev = root.join("dev");
    fs::create_dir_all(&dev).step("mount_dev", "/dev")?;
    mount(
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=755,size=65536,nr_inodes=1024"),
    )
    .step("mount_dev", "tmpfs /dev")?;
    for (name, _, _) in DEVICES {
        let target = dev.join(name);
        fs::File::create(&target).step("mount_dev", name)?;
        let source = Path::new("/dev").join(name);
        mount(
            Some(&source),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .step("mount_dev", name)?;
    }
    let init_path = root.join(warren_proto::CHECKPOINTABLE_INIT_PATH.trim_start_matches('/'));
    fs::File::create(&init_path).step("init_binary", "mount point")?;
    warren_sys::mount::move_mount_to(p.init_binary.as_fd(), &init_path)
        .step("init_binary", "move_mount")?;
    drop(p.init_binary);
    dev_submounts(&dev, 0)?;
    mount_sys(root)?;
    mask_paths(root)?;
    mount_tmp(root, 0, b.tmp_size_bytes)?;
    pivot_root(".", ".").step("pivot_root", "pivot_root")?;
    umount2(".", MntFlags::MNT_DETACH).step("pivot_root", "detach old root")?;
    chdir("/").step("pivot_root", "chdir /")?;
    sethostname(&b.hostname).step("hostname", "sethostname")?;
    warren_sys::net::loopback_up().step("loopback", "lo up")?;
    Ok(())
}

/// Binds each image layer read-only and idmapped through `userns` at
/// `lower/N` (relative to the state directory); returns overlay's
/// `lowerdir` list, uppermost first.
pub(crate) fn mount_lowers(layers: &[String], userns: &OwnedFd) -> Result<Vec<String>, SetupError> {
    let idmap = TreeAttrs {
        readonly: true,
        nosuid: false,
        nodev: true,
        idmap: Some(userns.as_fd()),
    };
    let mut lowers = Vec::with_capacity(layers.len());
    // overlayfs lists the uppermost lower first.
    for (i, layer) in layers.iter().enumerate().rev() {
        let target = format!("lower/{i}");
        bind_with_attrs(Path::new(layer), Path::new(&target), idmap, false)
            .step("mount_layer", layer)?;
        lowers.push(target);
    }
    Ok(lowers)
}

/// `/sys`, read-only, when the image has the directory: sysfs of the
/// network namespace the mounting process is in.
fn mount_sys(root: &Path) -> Result<(), SetupError> {
    if !root.join("sys").is_dir() {
        return Ok(());
    }
    let ro = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(
        Some("sysfs"),
        &root.join("sys"),
        Some("sysfs"),
        ro,
        None::<&str>,
    )
    .step("mount_sys", "sysfs")
}

/// Makes every mount in this (new, private) mount namespace private, so
/// nothing mounted here propagates back to the host's.
pub(crate) fn make_private() -> Result<(), SetupError> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .step("mount_private", "make / rprivate")
}

/// The overlay root at `rootfs` (relative to the state directory).
pub(crate) fn mount_overlay(lowers: &[String], upper: &str, work: &str) -> Result<(), SetupError> {
    // redirect_dir and metacopy pinned off (whatever the module defaults):
    // a renamed lower directory is copied up in full and every copied-up
    // file has its data, so the upper dir alone is a complete layer for
    // filesystem snapshots.
    let opts = format!(
        "lowerdir={},upperdir={upper},workdir={work},redirect_dir=off,metacopy=off",
        lowers.join(":")
    );
    mount(
        Some("overlay"),
        "rootfs",
        Some("overlay"),
        MsFlags::empty(),
        Some(opts.as_str()),
    )
    .step("mount_overlay", "overlay rootfs")
}

/// The host binds, idmapped, nosuid, nodev, under `root`.
fn mount_binds(b: &Bootstrap, root: &Path, userns: &OwnedFd) -> Result<(), SetupError> {
    for bind in &b.binds {
        let target = root.join(bind.target.trim_start_matches('/'));
        let attrs = TreeAttrs {
            readonly: bind.readonly,
            nosuid: true,
            nodev: true,
            idmap: Some(userns.as_fd()),
        };
        bind_with_attrs(Path::new(&bind.source), &target, attrs, true)
            .step("mount_bind", &bind.target)?;
    }
    Ok(())
}

/// `/tmp`: a tmpfs owned by the sandbox's root (`owner` as the mounting
/// process sees it), bounded by `size` bytes when given.
fn mount_tmp(root: &Path, owner: u32, size: Option<u64>) -> Result<(), SetupError> {
    let tmp = root.join("tmp");
    ensure_dir(&tmp, 0o1777, owner).step("mount_tmp", "/tmp")?;
    let mut tmp_opts = format!("mode=1777,uid={owner},gid={owner}");
    if let Some(size) = size {
        tmp_opts.push_str(&format!(",size={size}"));
    }
    mount(
        Some("tmpfs"),
        &tmp,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(tmp_opts.as_str()),
    )
    .step("mount_tmp", "tmpfs /tmp")
}

/// Keeps an `O_PATH` descriptor of the tmpfs writable layer at
/// [`warren_proto::DISK_UPPER_FD`] (close-on-exec; init's spawns close
/// everything above stdio anyway) for the node's filesystem snapshots.
fn keep_disk_upper() -> Result<(), Errno> {
    use nix::fcntl::{open, OFlag};
    let fd = open(
        "disk/upper",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    warren_sys::fd::keep_at(fd, warren_proto::DISK_UPPER_FD)
}

/// Mounts each image tree read-only (idmapped, nosuid, nodev) at its
/// target, resolved inside the new root (symlinks in the image cannot
/// redirect it elsewhere), creating missing directories as the sandbox's
/// root.
fn mount_images(b: &Bootstrap, root: &Path, userns: &OwnedFd) -> Result<(), SetupError> {
    if b.image_mounts.is_empty() {
        return Ok(());
    }
    let root_fd = nix::fcntl::open(
        root,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .step("mount_image", "open rootfs")?;
    let attrs = TreeAttrs {
        readonly: true,
        nosuid: true,
        nodev: true,
        idmap: Some(userns.as_fd()),
    };
    for m in &b.image_mounts {
        let target =
            warren_sys::mount::open_mount_point(root_fd.as_fd(), &m.target, (b.id_base, b.id_base))
                .step("mount_image", &m.target)?;
        let tree = warren_sys::mount::open_tree_clone(Path::new(&m.source), false)
            .step("mount_image", &m.target)?;
        warren_sys::mount::set_tree_attrs(tree.as_fd(), attrs, false)
            .step("mount_image", &m.target)?;
        warren_sys::mount::move_mount_to_fd(tree.as_fd(), target.as_fd())
            .step("mount_image", &m.target)?;
    }
    Ok(())
}

/// Capabilities a sandbox keeps (numbers from linux/capability.h): Docker's
/// default set less `CAP_NET_RAW` and `CAP_MKNOD` (neither can be used in a
/// network namespace or on devices the sandbox does not own anyway).
/// Everything else — `CAP_SYS_ADMIN`, `CAP_NET_ADMIN`, `CAP_SYS_PTRACE`,
/// `CAP_SYS_MODULE`, ... — is dropped from the bounding set.
pub const KEPT_CAPS: &[(u32, &str)] = &[
    (0, "CAP_CHOWN"),
    (1, "CAP_DAC_OVERRIDE"),
    (3, "CAP_FOWNER"),
    (4, "CAP_FSETID"),
    (5, "CAP_KILL"),
    (6, "CAP_SETGID"),
    (7, "CAP_SETUID"),
    (8, "CAP_SETPCAP"),
    (10, "CAP_NET_BIND_SERVICE"),
    (18, "CAP_SYS_CHROOT"),
    (29, "CAP_AUDIT_WRITE"),
    (31, "CAP_SETFCAP"),
];

fn drop_bounding_caps() -> Result<(), SetupError> {
    let last: u32 = fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40);
    for cap in 0..=last {
        if KEPT_CAPS.iter().any(|(n, _)| *n == cap) {
            continue;
        }
        warren_sys::proc::drop_bounding_cap(cap)
            .step("capabilities", format!("drop capability {cap}"))?;
    }
    Ok(())
}

/// `/proc` and `/sys` paths hidden from the sandbox (the OCI defaults):
/// files get `/dev/null` bound over them, directories an empty read-only
/// tmpfs. Absent paths are skipped.
const MASKED: &[&str] = &[
    "proc/acpi",
    "proc/asound",
    "proc/kcore",
    "proc/keys",
    "proc/latency_stats",
    "proc/timer_list",
    "proc/timer_stats",
    "proc/sched_debug",
    "proc/scsi",
    "sys/firmware",
    "sys/devices/virtual/powercap",
];

/// `/proc` paths made read-only (the OCI defaults).
const READ_ONLY: &[&str] = &[
    "proc/bus",
    "proc/fs",
    "proc/irq",
    "proc/sys",
    "proc/sysrq-trigger",
];

fn mask_paths(root: &Path) -> Result<(), SetupError> {
    let null = root.join("dev/null");
    for rel in MASKED {
        let p = root.join(rel);
        let Ok(meta) = fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            mount(
                Some("tmpfs"),
                &p,
                Some("tmpfs"),
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some("size=0,nr_inodes=1"),
            )
            .step("mask_paths", rel)?;
        } else {
            mount(
                Some(&null),
                &p,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .step("mask_paths", rel)?;
        }
    }
    let ro = TreeAttrs {
        readonly: true,
        nosuid: true,
        nodev: true,
        idmap: None,
    };
    for rel in READ_ONLY {
        let p = root.join(rel);
        if fs::symlink_metadata(&p).is_err() {
            continue;
        }
        bind_with_attrs(&p, &p, ro, true).step("read_only_paths", rel)?;
    }
    Ok(())
}

/// The node writes a networked sandbox's `/etc/resolv.conf` into the
/// state dir's `upper/` before init starts; a tmpfs writable layer (disk
/// limit) hides that directory, so the file is copied onto the tmpfs. The
/// sandbox has not run yet, so nothing in `upper/` is the tenant's.
fn seed_resolv_conf(owner: u32) -> std::io::Result<()> {
    const MAX: u64 = 64 * 1024;
    let src = Path::new("upper/etc/resolv.conf");
    match fs::symlink_metadata(src) {
        Ok(m) if m.is_file() && m.len() <= MAX => {}
        _ => return Ok(()),
    }
    let text = fs::read(src)?;
    ensure_dir(Path::new("disk/upper/etc"), 0o755, owner)?;
    let dst = Path::new("disk/upper/etc/resolv.conf");
    fs::write(dst, text)?;
    fs::set_permissions(dst, fs::Permissions::from_mode(0o644))?;
    chown(dst, Some(Uid::from_raw(owner)), Some(Gid::from_raw(owner)))?;
    Ok(())
}

fn ensure_dir(p: &Path, mode: u32, owner: u32) -> std::io::Result<()> {
    match fs::create_dir(p) {
        Ok(()) => {
            fs::set_permissions(p, fs::Permissions::from_mode(mode))?;
            chown(p, Some(Uid::from_raw(owner)), Some(Gid::from_raw(owner)))?;
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

fn mount_proc(root: &Path) -> Result<(), SetupError> {
    let p = root.join("proc");
    fs::create_dir_all(&p).step("mount_proc", "/proc")?;
    mount(
        Some("proc"),
        &p,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .step("mount_proc", "proc")
}

/// The device nodes every sandbox gets: (name, major, minor).
const DEVICES: &[(&str, u64, u64)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

fn mount_dev(root: &Path, base: u32) -> Result<(), SetupError> {
    let dev = root.join("dev");
    fs::create_dir_all(&dev).step("mount_dev", "/dev")?;
    let opts = format!("mode=755,size=65536,nr_inodes=1024,uid={base},gid={base}");
    mount(
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some(opts.as_str()),
    )
    .step("mount_dev", "tmpfs /dev")?;
    let owner = (Some(Uid::from_raw(base)), Some(Gid::from_raw(base)));
    for (name, major, minor) in DEVICES {
        let p = dev.join(name);
        mknod(
            &p,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(*major, *minor),
        )
        .step("mount_dev", name)?;
        fs::set_permissions(&p, fs::Permissions::from_mode(0o666)).step("mount_dev", name)?;
        chown(&p, owner.0, owner.1).step("mount_dev", name)?;
    }
    dev_submounts(&dev, base)
}

/// `/dev/pts` (a new devpts instance), `/dev/shm` and the standard links,
/// owned by the sandbox's root (`base` as the mounting process sees it).
fn dev_submounts(dev: &Path, base: u32) -> Result<(), SetupError> {
    let pts = dev.join("pts");
    ensure_dir(&pts, 0o755, base).step("mount_dev", "/dev/pts")?;
    let pts_opts = format!("newinstance,ptmxmode=0666,mode=0620,gid={}", base + 5);
    mount(
        Some("devpts"),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some(pts_opts.as_str()),
    )
    .step("mount_dev", "devpts")?;
    let shm = dev.join("shm");
    ensure_dir(&shm, 0o1777, base).step("mount_dev", "/dev/shm")?;
    let shm_opts = format!("mode=1777,uid={base},gid={base}");
    mount(
        Some("shm"),
        &shm,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(shm_opts.as_str()),
    )
    .step("mount_dev", "tmpfs /dev/shm")?;
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let p = dev.join(link);
        std::os::unix::fs::symlink(target, &p).step("mount_dev", link)?;
        std::os::unix::fs::lchown(&p, Some(base), Some(base)).step("mount_dev", link)?;
    }
    Ok(())
}
