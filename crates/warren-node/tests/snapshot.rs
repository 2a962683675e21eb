//! Filesystem snapshots, directory snapshots and image mounts against real
//! sandboxes (`harness = false`: this binary is also the sandbox's init, so
//! `main` calls `warren_init::run_if_init()` first). One node per test
//! process under its own cgroup subtree `warren-test-snap-<pid>` and data
//! dir, both removed at the end, then a leak check.
//!
//! The hostile test hashes a 512 MiB sparse file (its apparent size goes
//! into the layer digest; the copies stay sparse).
//!
//! Each test compares a listing made *inside* the sandboxes (names,
//! types, owners, modes, sizes, link counts, mtimes, checksums, symlink
//! targets), so what is checked is what a tenant sees.

use std::io::Read;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{anyhow, ensure, Context, Result};
use warren_node::{CreateRequest, ImageMountRequest, Node, NodeError};
use warren_runtime::{
    ExecIo, ExecSpec, ExitStatus, Limits, NativeConfig, NativeRuntime, Runtime, SandboxId,
};

struct Fixture {
    node: Node,
    rt: tokio::runtime::Runtime,
    data: tempfile::TempDir,
}

static FIXTURE: OnceLock<Result<Arc<Fixture>, String>> = OnceLock::new();

fn cgroup_parent() -> String {
    format!("warren-test-snap-{}", std::process::id())
}

fn fixture() -> Result<Arc<Fixture>> {
    FIXTURE
        .get_or_init(|| build().map(Arc::new).map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

/// A node with its own store and runtime state under a new data dir in
/// `/var/tmp` (removed when the returned dir is dropped).
fn node_in_new_dir(prefix: &str) -> Result<(Node, tempfile::TempDir)> {
    let data = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/var/tmp")?;
    let store = warren_image::ImageStore::open(data.path().join("images"))?;
    let mut cfg = NativeConfig::new(data.path().join("runtime"));
    cfg.cgroup_parent = cgroup_parent();
    Ok((Node::new(NativeRuntime::new(cfg)?, store)?, data))
}

fn build() -> Result<Fixture> {
    let (node, data) = node_in_new_dir("warren-snap-test-")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    Ok(Fixture { node, rt, data })
}

fn teardown() {
    if let Some(Ok(f)) = FIXTURE.get() {
        let rt = f.node.runtime();
        for id in rt.list() {
            let _ = rt.destroy(&id);
        }
        rt.flush_trash();
        let _ = std::fs::remove_dir_all(f.data.path());
    }
    if let Ok(m) = warren_cgroup::CgroupManager::detect("/sys/fs/cgroup", &cgroup_parent()) {
        let _ = m.destroy_parent();
    }
}

static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A sandbox made through the node (so it knows the image), destroyed on
/// drop.
struct Sb {
    f: Arc<Fixture>,
    id: SandboxId,
    init_pid: i32,
}

impl Drop for Sb {
    fn drop(&mut self) {
        let node = self.f.node.clone();
        let id = self.id.clone();
        let _ = self.f.rt.block_on(node.destroy(&id));
    }
}

fn request(id: &SandboxId, image: &str, limits: Limits) -> CreateRequest {
    CreateRequest {
        id: id.clone(),
        image: image.into(),
        command: None,
        env: vec![],
        workdir: None,
        user: None,
        use_image_command: false,
        limits,
        log_capacity: None,
        network: Default::default(),
    }
}

impl Sb {
    fn create(
        prefix: &str,
        image: &str,
        limits: Limits,
        mounts: Vec<ImageMountRequest>,
    ) -> Result<Sb> {
        let f = fixture()?;
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let id = SandboxId::new(format!("{prefix}-{}-{n}", std::process::id()))?;
        let req = request(&id, image, limits);
        let (info, _) =
            f.rt.block_on(f.node.create_with_mounts(req, mounts, None, None))
                .with_context(|| format!("create {id} from {image}"))?;
        Ok(Sb {
            f,
            id,
            init_pid: info.init_pid,
        })
    }

    fn of(prefix: &str, image: &str) -> Result<Sb> {
        Self::create(prefix, image, Limits::default(), Vec::new())
    }

    fn block<T>(&self, fut: impl std::future::Future<Output = T>) -> T {
        self.f.rt.block_on(fut)
    }

    /// Runs `sh -c script` as root: (exit code, stdout, stderr).
    fn run(&self, script: &str) -> Result<(i32, String, String)> {
        let spec = ExecSpec::new(vec!["sh".into(), "-c".into(), script.into()]);
        let mut e = self
            .f
            .node
            .runtime()
            .exec(&self.id, &spec, ExecIo::Pipes { stdin: false })?;
        let mut out = String::new();
        e.stdout
            .take()
            .context("stdout")?
            .read_to_string(&mut out)?;
        let mut err = String::new();
        e.stderr
            .take()
            .context("stderr")?
            .read_to_string(&mut err)?;
        let code = match e.wait()?.status {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal(s) => 128 + s,
        };
        Ok((code, out, err))
    }

    /// [`Sb::run`], requiring success; returns stdout.
    fn sh(&self, script: &str) -> Result<String> {
        let (code, out, err) = self.run(script)?;
        ensure!(code == 0, "{script}: exit {code}: {out} {err}");
        Ok(out)
    }

    /// Starts `sh -c script` in the background; killed when dropped.
    fn background(&self, script: &str) -> Result<Bg> {
        let spec = ExecSpec::new(vec!["sh".into(), "-c".into(), script.into()]);
        Ok(Bg(self.f.node.runtime().exec(
            &self.id,
            &spec,
            ExecIo::Null,
        )?))
    }

    /// Everything a tenant sees below `dir`, one line per entry.
    fn listing(&self, dir: &str) -> Result<String> {
        self.sh(&format!(
            "cd {dir} && find . -mindepth 1 | LC_ALL=C sort | while IFS= read -r f; do \
               stat -c '%n|%F|%u|%g|%a|%s|%h|%Y' \"$f\"; \
               if [ -L \"$f\" ]; then readlink \"$f\"; elif [ -f \"$f\" ]; then sha256sum < \"$f\"; fi; \
             done"
        ))
    }
}

struct Bg(warren_runtime::Exec);

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.0.signal(libc::SIGKILL);
        let _ = self.0.wait_timeout(Duration::from_secs(5));
    }
}

fn trial(name: &'static str, f: fn() -> Result<()>) -> libtest_mimic::Trial {
    libtest_mimic::Trial::test(name, move || {
        if !warren_testkit::require_root(name) {
            return Ok(());
        }
        f().map_err(|e| libtest_mimic::Failed::from(format!("{e:#}")))
    })
}

fn code<T>(r: Result<T, NodeError>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => e.code().to_string(),
    }
}

/// The base every test starts from: the host image plus a /data tree, as
/// a snapshot itself (so tests also cover snapshots of snapshots).
const BASE_SCRIPT: &str = "mkdir -p /data/olddir /data/replaced /data/renamedir/sub && \
    echo keep > /data/keep && echo gone > /data/gone && echo a > /data/olddir/a && \
    echo x > /data/replaced/x && echo y > /data/replaced/y && \
    echo f1 > /data/renamedir/f1 && echo f2 > /data/renamedir/sub/f2 && \
    chown -R 1000:1000 /data/renamedir";

fn base_image(tag: &str) -> Result<String> {
    let sb = Sb::of("snap-base", "host")?;
    sb.sh(BASE_SCRIPT)?;
    let name = format!("snap-base-{}:{tag}", std::process::id());
    let out = sb.block(sb.f.node.snapshot_filesystem(&sb.id, Some(&name)))?;
    ensure!(
        out.image.layers.len() == 2,
        "host + 1 layer: {:?}",
        out.image.layers
    );
    ensure!(out.stats.files >= 6, "{:?}", out.stats);
    Ok(name)
}

// ---------------------------------------------------------------- tests

fn snapshot_round_trip_while_running() -> Result<()> {
    let base = base_image("rt")?;
    let b = Sb::of("snap-src", &base)?;
    b.sh("set -e; cd /data; \
         echo new > new; \
         rm gone; \
         mv keep kept; \
         mv renamedir moved; \
         rm -rf replaced && mkdir replaced && echo z > replaced/z; \
         mkdir owned && echo o > owned/f && chown -R 1000:1000 owned && chmod 0750 owned; \
         ln -s /etc/passwd sym; ln -s / root-link; \
         echo h > h1 && ln h1 h2; \
         echo s > suid && chmod 4755 suid; \
         printf 'with\\nnewline' > \"$(printf 'odd\\tname')\"")?;
    // A process keeps writing during the snapshot (outside /data). It
    // appends: a truncating writer waits for the page's writeback, which
    // the snapshot's syncfs (and anything else writing to the same disk)
    // can make long.
    let _writer = b.background("i=0; while :; do i=$((i+1)); echo $i >> /var/tmp/counter; done")?;
    ensure!(
        warren_testkit::wait_until(Duration::from_secs(10), || {
            b.run("test -s /var/tmp/counter")
                .map(|r| r.0 == 0)
                .unwrap_or(false)
        }),
        "the writer started: {:?} {:?}",
        b.run("ls -la /var/tmp; for p in /proc/[0-9]*; do echo $p $(cat $p/wchan) $(grep State $p/status) $(cat $p/cmdline | tr '\\0' ' '); done"),
        std::fs::read_to_string(format!("/sys/fs/cgroup/freezer/{}/{}/freezer.state", cgroup_parent(), b.id))
    );
    let before = b.listing("/data")?;
    let out = b.block(b.f.node.snapshot_filesystem(&b.id, None))?;
    eprintln!(
        "snapshot: {} files, frozen {} us, total {} us, phases {:?}",
        out.stats.files, out.frozen_micros, out.total_micros, out.phases
    );
    ensure!(
        out.image.layers.len() == 3,
        "a snapshot of a snapshot has 3 layers"
    );
    ensure!(
        out.stats.whiteouts >= 3,
        "gone, keep, renamedir: {:?}",
        out.stats
    );
    ensure!(out.stats.opaque_dirs >= 1, "replaced/: {:?}", out.stats);
    // The source keeps running, unchanged, and its writer keeps going.
    ensure!(b.listing("/data")? == before);
    let size = || -> Option<u64> { b.sh("wc -c < /var/tmp/counter").ok()?.trim().parse().ok() };
    let n1 = size().context("counter size")?;
    ensure!(
        warren_testkit::wait_until(Duration::from_secs(5), || {
            size().is_some_and(|n2| n2 > n1)
        }),
        "the writer runs again after the snapshot: {:?} {:?}",
        b.run("ls -la /var/tmp; for p in /proc/[0-9]*; do echo $p $(cat $p/wchan) $(grep State $p/status) $(cat $p/cmdline | tr '\\0' ' '); done"),
        std::fs::read_to_string(format!("/sys/fs/cgroup/freezer/{}/{}/freezer.state", cgroup_parent(), b.id))
    );

    // A sandbox from the snapshot sees exactly that state.
    let c = Sb::of("snap-dst", &out.image.id)?;
    let after = c.listing("/data")?;
    ensure!(before == after, "source:\n{before}\nnew sandbox:\n{after}");
    for (path, expect) in [
        ("/data/gone", false),
        ("/data/keep", false),
        ("/data/renamedir", false),
        ("/data/replaced/x", false),
        ("/data/moved/sub/f2", true),
        ("/data/replaced/z", true),
        ("/var/tmp/counter", true),
    ] {
        let exists = c.run(&format!("test -e {path}"))?.0 == 0;
        ensure!(exists == expect, "{path}: exists={exists}");
    }
    ensure!(
        c.sh("stat -c %u:%g:%a /data/owned /data/moved/sub/f2 /data/suid")?
            == "1000:1000:750\n1000:1000:644\n0:0:4755\n"
    );
    ensure!(
        c.sh("stat -c %i /data/h1 /data/h2 | uniq | wc -l")?.trim() == "1",
        "hard link kept"
    );
    Ok(())
}

fn disk_limited_sandbox_snapshot() -> Result<()> {
    let limits = Limits {
        disk_bytes: Some(256 << 20),
        ..Default::default()
    };
    let d = Sb::create("snap-disk", "host", limits.clone(), Vec::new())?;
    d.sh("mkdir -p /data && head -c 3000000 /dev/urandom > /data/blob && echo small > /data/small && rm /etc/os-release")?;
    let before = d.listing("/data")?;
    // What the runtime relies on to refuse a disk-limited sandbox without
    // init's kept descriptor (one made by an older node).
    let mountinfo = std::fs::read_to_string(format!("/proc/{}/mountinfo", d.init_pid))?;
    ensure!(
        mountinfo.lines().any(|l| l.split(' ').nth(4) == Some("/")
            && l.contains(" - overlay ")
            && l.contains("upperdir=disk/upper")),
        "{mountinfo}"
    );
    let out = d.block(d.f.node.snapshot_filesystem(&d.id, None))?;
    ensure!(out.stats.content_bytes >= 3_000_000, "{:?}", out.stats);
    let e = Sb::create("snap-disk2", &out.image.id, limits, Vec::new())?;
    ensure!(e.listing("/data")? == before);
    ensure!(
        e.run("test -e /etc/os-release")?.0 != 0,
        "the deletion is in the snapshot"
    );
    Ok(())
}

fn hostile_upper_stays_inside() -> Result<()> {
    let marker = tempfile::Builder::new()
        .prefix("warren-snap-marker-")
        .tempdir_in("/var/tmp")?;
    std::fs::write(marker.path().join("secret"), b"host secret")?;
    let host_path = marker.path().display().to_string();
    let h = Sb::of("snap-evil", "host")?;
    h.sh(&format!(
        "set -e; mkdir -p /data; cd /data; \
         ln -s / rootlink; ln -s {host_path} hostlink; ln -s /proc/self/root procroot; \
         mkfifo fifo; \
         python3 -c \"import socket; s=socket.socket(socket.AF_UNIX); s.bind('/data/sock')\"; \
         truncate -s 512M sparse; echo end >> sparse"
    ))?;
    // Swaps a directory and a symlink to / as fast as it can meanwhile.
    let _swapper = h.background(
        "while :; do mkdir -p /data/swap/etc; echo fake > /data/swap/etc/shadow; \
         rm -rf /data/swap; ln -s / /data/swap; rm -f /data/swap; done",
    )?;
    std::thread::sleep(Duration::from_millis(50));
    let out = h.block(h.f.node.snapshot_filesystem(&h.id, None))?;
    let top = out.image.layers.last().context("layers")?.join("data");
    let link = |p: &str| std::fs::read_link(top.join(p)).ok();
    ensure!(link("rootlink").as_deref() == Some(std::path::Path::new("/")));
    ensure!(link("hostlink").is_some());
    ensure!(std::os::unix::fs::FileTypeExt::is_fifo(
        &std::fs::symlink_metadata(top.join("fifo"))?.file_type()
    ));
    ensure!(!top.join("sock").exists(), "sockets are skipped");
    let sparse = std::fs::metadata(top.join("sparse"))?;
    ensure!(sparse.len() == (512 << 20) + 4);
    ensure!(
        std::os::unix::fs::MetadataExt::blocks(&sparse) * 512 < 1 << 20,
        "the copy stays sparse"
    );
    // Whatever state the swap was frozen in, only sandbox content is there.
    match std::fs::symlink_metadata(top.join("swap")) {
        Err(_) => {}
        Ok(m) if m.file_type().is_symlink() => {}
        Ok(_) => {
            let names: Vec<_> = walk(&top.join("swap"));
            ensure!(
                names.iter().all(|n| n == "etc" || n == "etc/shadow"),
                "{names:?}"
            );
        }
    }
    ensure!(std::fs::read(marker.path().join("secret"))? == b"host secret");
    ensure!(
        std::fs::read_dir(marker.path())?.count() == 1,
        "nothing written next to the marker"
    );
    // The blob never reads host files either: no trace of the secret.
    let blob =
        h.f.node
            .images()
            .root()
            .join("blobs/sha256")
            .join(out.diff_id.trim_start_matches("sha256:"));
    let bytes = std::fs::read(&blob)?;
    ensure!(!bytes.windows(11).any(|w| w == b"host secret"));
    Ok(())
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            out.push(p.strip_prefix(dir).unwrap_or(&p).display().to_string());
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

fn directory_snapshot_mounted_into_running_and_new_sandboxes() -> Result<()> {
    let a = Sb::of("snap-dira", "host")?;
    a.sh(
        "set -e; mkdir -p /srv/data/sub; echo d > /srv/data/sub/f; echo top > /srv/data/top; \
         ln -s / /srv/data/up; chown -R 1000:1000 /srv/data/sub; chmod 0640 /srv/data/sub/f",
    )?;
    let name = format!("snap-dir-{}:1", std::process::id());
    let out = a.block(a.f.node.snapshot_directory(&a.id, "/srv/data", Some(&name)))?;
    ensure!(out.image.layers.len() == 1);
    ensure!(out.stats.whiteouts == 0);
    // Kernel filesystems and bad paths are refused.
    ensure!(code(a.block(a.f.node.snapshot_directory(&a.id, "/proc", None))) == "invalid_path");
    ensure!(code(a.block(a.f.node.snapshot_directory(&a.id, "/nope", None))) == "invalid_path");
    ensure!(code(a.block(a.f.node.snapshot_directory(&a.id, "relative", None))) == "invalid_path");

    let check = |sb: &Sb, at: &str| -> Result<()> {
        ensure!(sb.sh(&format!("cat {at}/sub/f {at}/top"))? == "d\ntop\n");
        ensure!(sb.sh(&format!("stat -c %u:%g:%a {at}/sub/f"))? == "1000:1000:640\n");
        ensure!(sb.sh(&format!("readlink {at}/up"))? == "/\n");
        let (code, _, _) = sb.run(&format!("touch {at}/new"))?;
        ensure!(code != 0, "the mount is read-only");
        Ok(())
    };

    // Into a running sandbox, at a path that does not exist yet.
    let b = Sb::of("snap-dirb", "host")?;
    b.block(b.f.node.mount_image(&b.id, "/mnt/snap", &name))?;
    check(&b, "/mnt/snap")?;
    ensure!(
        b.sh("stat -c %u /mnt")?.trim() == "0",
        "created as the sandbox's root"
    );
    // A symlink to / in the path resolves inside the sandbox.
    let escape = format!("warren-snap-escape-{}", std::process::id());
    b.sh("ln -s / /mnt/up")?;
    b.block(
        b.f.node
            .mount_image(&b.id, &format!("/mnt/up/{escape}"), &name),
    )?;
    check(&b, &format!("/{escape}"))?;
    ensure!(
        !std::path::Path::new("/").join(&escape).exists(),
        "nothing created on the host"
    );
    // Kernel filesystems, `..` and relative paths are refused.
    b.sh("ln -s /proc/self /mnt/p")?;
    for bad in ["/proc/x", "/mnt/p/x", "/sys/fs/x", "/mnt/../x", "rel"] {
        let got = code(b.block(b.f.node.mount_image(&b.id, bad, &name)));
        ensure!(got == "invalid_path", "{bad}: {got}");
    }
    // A refused mount leaves no claim: only the two mounts above count.
    let claims = b.f.node.mounted_images(&b.id);
    ensure!(
        claims == vec![out.image.id.clone(), out.image.id.clone()],
        "{claims:?}"
    );
    // The mounted image is in use: removal is refused while b lives.
    let rm = b.block(b.f.node.remove_image(&out.image.id, vec![]));
    ensure!(code(rm) == "image_in_use");

    // Into a new sandbox at create.
    let c = Sb::create(
        "snap-dirc",
        "host",
        Limits::default(),
        vec![ImageMountRequest {
            path: "/opt/data".into(),
            image: name.clone(),
        }],
    )?;
    check(&c, "/opt/data")?;
    Ok(())
}

/// Pins keep an unnamed image through GC and removal, and a pin of an
/// image GC has removed fails with `image_not_found`. A node of its own
/// (its own store), so this GC cannot touch the other tests' images.
fn pins_keep_images_through_gc() -> Result<()> {
    let (node, _data) = node_in_new_dir("warren-pin-test-")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let config = warren_image::ImageConfig {
        workdir: Some("/pinned".into()),
        ..Default::default()
    };
    // Unnamed, like a build's intermediate images.
    let img = node.images().derive_config("host", config, None)?;
    let pin = node.pin_image(&img.id)?;
    let again = node.pin_image(&img.id)?;
    ensure!(pin.image_id() == img.id);
    ensure!(node.pinned_images() == vec![img.id.clone()]);

    let report = rt.block_on(node.gc_images(vec![]))?;
    ensure!(
        node.images().resolve(&img.id).is_ok(),
        "gc removed a pinned image: {report:?}"
    );
    let removal = rt.block_on(node.remove_image(&img.id, vec![]));
    ensure!(code(removal) == "image_in_use", "removal of a pinned image");

    drop(pin);
    rt.block_on(node.gc_images(vec![]))?;
    ensure!(node.images().resolve(&img.id).is_ok(), "one pin is left");
    drop(again);
    ensure!(node.pinned_images().is_empty());
    rt.block_on(node.gc_images(vec![]))?;
    ensure!(
        node.images().resolve(&img.id).is_err(),
        "unpinned, gc removes it"
    );
    ensure!(
        code(node.pin_image(&img.id)) == "image_not_found",
        "a pin of a removed image"
    );

    // An image written held is never without its hold, not even between
    // its record and the caller's next step.
    let config = warren_image::ImageConfig {
        workdir: Some("/held".into()),
        ..Default::default()
    };
    let (img, hold) = node.images().derive_config_held("host", config, None)?;
    ensure!(hold.image_id() == img.id);
    rt.block_on(node.gc_images(vec![]))?;
    ensure!(
        node.images().resolve(&img.id).is_ok(),
        "gc removed a held image"
    );
    drop(hold);
    rt.block_on(node.gc_images(vec![]))?;
    ensure!(
        node.images().resolve(&img.id).is_err(),
        "released, gc removes it"
    );
    Ok(())
}

fn main() {
    warren_init::run_if_init();
    let args = libtest_mimic::Arguments::from_args();
    let tests = vec![
        trial(
            "snapshot_round_trip_while_running",
            snapshot_round_trip_while_running,
        ),
        trial(
            "disk_limited_sandbox_snapshot",
            disk_limited_sandbox_snapshot,
        ),
        trial("hostile_upper_stays_inside", hostile_upper_stays_inside),
        trial("pins_keep_images_through_gc", pins_keep_images_through_gc),
        trial(
            "directory_snapshot_mounted_into_running_and_new_sandboxes",
            directory_snapshot_mounted_into_running_and_new_sandboxes,
        ),
    ];
    let conclusion = libtest_mimic::run(&args, tests);
    teardown();
    // Other suites may run sandboxes on this host at the same time: a
    // warren-init process counts only when it sits in this suite's cgroups.
    let marker = cgroup_parent();
    let leaks: Vec<String> = warren_testkit::leaks(&marker)
        .into_iter()
        .filter(|l| match l.strip_prefix("process: pid ") {
            Some(rest) => {
                let pid = rest.split_whitespace().next().unwrap_or_default();
                std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                    .map(|c| c.contains(&marker))
                    .unwrap_or(false)
            }
            None => true,
        })
        .collect();
    if !leaks.is_empty() {
        eprintln!("leaks after the snapshot tests: {leaks:#?}");
        std::process::exit(1);
    }
    if FIXTURE.get().is_some() {
        eprintln!("leak check: clean");
    }
    conclusion.exit()
}
