//! The filesystem API end to end, against real sandboxes (`harness =
//! false`: this binary is also the sandbox's init and file agent, so `main`
//! calls `warren_init::run_if_init()` first). One node per test process,
//! under its own cgroup subtree `warren-test-fs-<pid>` and data dir, both
//! removed at the end.
//!
//! The escape tests plant a marker under /var/tmp on the host and try every
//! path trick through the API; each must stay inside the sandbox, and the
//! marker directory must be unchanged afterwards. Probes never write host
//! files other than those markers.

use std::io::Read;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use futures_util::StreamExt;
use warren_node::fs::{FileKind, FsSession, ListOptions, ReadRange, WatchEventKind, WriteOptions};
use warren_node::{Node, NodeError};
use warren_runtime::{
    ExecIo, ExecSpec, ExitStatus, Limits, MainIo, NativeConfig, NativeRuntime, Runtime, SandboxId,
    SandboxSpec, User,
};

struct Fixture {
    node: Node,
    rootfs: warren_runtime::RootfsSpec,
    env: Vec<String>,
    rt: tokio::runtime::Runtime,
    data: tempfile::TempDir,
}

static FIXTURE: OnceLock<Result<Arc<Fixture>, String>> = OnceLock::new();

fn cgroup_parent() -> String {
    format!("warren-test-fs-{}", std::process::id())
}

fn fixture() -> Result<Arc<Fixture>> {
    FIXTURE
        .get_or_init(|| build().map(Arc::new).map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

fn build() -> Result<Fixture> {
    let data = tempfile::Builder::new()
        .prefix("warren-fs-test-")
        .tempdir_in("/var/tmp")?;
    let store = warren_image::ImageStore::open(data.path().join("images"))?;
    let img = store.host_image()?;
    let mut cfg = NativeConfig::new(data.path().join("runtime"));
    cfg.cgroup_parent = cgroup_parent();
    let node = Node::new(NativeRuntime::new(cfg)?, store)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    Ok(Fixture {
        node,
        rootfs: warren_node::rootfs_of(&img),
        env: img.config.env.clone(),
        rt,
        data,
    })
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

/// A sandbox destroyed on drop.
struct Sb {
    f: Arc<Fixture>,
    id: SandboxId,
}

impl Drop for Sb {
    fn drop(&mut self) {
        let node = self.f.node.clone();
        let id = self.id.clone();
        let _ = self.f.rt.block_on(node.destroy(&id));
    }
}

impl Sb {
    fn with(prefix: &str, limits: Limits) -> Result<Sb> {
        let f = fixture()?;
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let id = SandboxId::new(format!("{prefix}-{}-{n}", std::process::id()))?;
        let mut spec = SandboxSpec::new(id.clone(), f.rootfs.clone());
        spec.env = f.env.clone();
        spec.limits = limits;
        f.node.runtime().create(&spec, MainIo::default())?;
        Ok(Sb { f, id })
    }

    fn idle(prefix: &str) -> Result<Sb> {
        Self::with(prefix, Limits::default())
    }

    fn fs(&self, user: User) -> FsSession {
        self.f.node.fs(&self.id, user)
    }

    fn root(&self) -> FsSession {
        self.fs(User::root())
    }

    fn block<T>(&self, fut: impl std::future::Future<Output = T>) -> T {
        self.f.rt.block_on(fut)
    }

    /// Runs `sh -c script` as root; returns stdout, requiring success.
    fn sh(&self, script: &str) -> Result<String> {
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
        let exit = e.wait()?;
        ensure!(
            exit.status == ExitStatus::Code(0),
            "{script}: {exit:?} {out} {err}"
        );
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

    fn read_all(&self, fs: &FsSession, path: &[u8]) -> Result<Vec<u8>, NodeError> {
        self.block(async {
            let mut r = fs.read(path, ReadRange::default()).await?;
            let mut v = Vec::new();
            while let Some(c) = r.next().await {
                v.extend_from_slice(&c?);
            }
            Ok(v)
        })
    }

    fn write(&self, fs: &FsSession, path: &[u8], data: &[u8]) -> Result<u64, NodeError> {
        self.block(fs.write(path, WriteOptions::default(), data))
    }
}

struct Bg(warren_runtime::Exec);

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.0.signal(libc::SIGKILL);
        let _ = self.0.wait_timeout(Duration::from_secs(5));
    }
}

fn code<T: std::fmt::Debug>(r: Result<T, NodeError>) -> String {
    match r {
        Ok(v) => format!("ok({v:?})"),
        Err(e) => e.code().to_string(),
    }
}

fn code_ref<T>(r: &Result<T, NodeError>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => e.code().to_string(),
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

fn user1000() -> User {
    User {
        uid: 1000,
        gid: 1000,
        groups: vec![],
    }
}

// ---------------------------------------------------------------- ops

fn ops_end_to_end() -> Result<()> {
    let sb = Sb::idle("fs-ops")?;
    let fs = sb.root();
    // write with create_parents and mode, read back, stat.
    let n = sb.block(fs.write(
        b"/work/a/b/hello.txt",
        WriteOptions {
            mode: Some(0o640),
            create_parents: true,
        },
        &b"hello world"[..],
    ))?;
    ensure!(n == 11);
    ensure!(sb.read_all(&fs, b"/work/a/b/hello.txt")? == b"hello world");
    ensure!(sb.sh("cat /work/a/b/hello.txt")? == "hello world");
    let st = sb.block(fs.stat(b"/work/a/b/hello.txt"))?;
    ensure!(
        st.kind == FileKind::File && st.size == 11 && st.mode == 0o640,
        "{st:?}"
    );
    // Replacing keeps the mode when none is given; no temp files remain.
    sb.write(&fs, b"/work/a/b/hello.txt", b"bye")?;
    let st = sb.block(fs.stat(b"/work/a/b/hello.txt"))?;
    ensure!(st.size == 3 && st.mode == 0o640, "{st:?}");
    // Ranges.
    sb.write(&fs, b"/work/digits", b"0123456789")?;
    let part = sb.block(async {
        let mut r = fs
            .read(
                b"/work/digits",
                ReadRange {
                    offset: 3,
                    length: Some(4),
                },
            )
            .await?;
        let mut v = Vec::new();
        while let Some(c) = r.next().await {
            v.extend_from_slice(&c?);
        }
        Ok::<_, NodeError>(v)
    })?;
    ensure!(part == b"3456", "{part:?}");
    // mkdir, parents, already_exists.
    sb.block(fs.mkdir(b"/work/m/n/o", true, None))?;
    sb.block(fs.mkdir(b"/work/m/n/o", true, None))?;
    ensure!(code(sb.block(fs.mkdir(b"/work/m", false, None))) == "already_exists");
    sb.block(fs.mkdir(b"/work/m/p", false, Some(0o700)))?;
    ensure!(sb.block(fs.stat(b"/work/m/p"))?.mode == 0o700);
    // Symlinks are reported, not followed, by stat.
    sb.sh("ln -s /work/digits /work/link")?;
    let st = sb.block(fs.stat(b"/work/link"))?;
    ensure!(
        st.kind == FileKind::Symlink && st.symlink_target.as_deref() == Some(&b"/work/digits"[..]),
        "{st:?}"
    );
    ensure!(sb.block(fs.stat(b"/"))?.kind == FileKind::Directory);
    // list: flat, recursive, limit.
    let l = sb.block(fs.list(b"/work", ListOptions::default()))?;
    let mut names: Vec<_> = l.entries.iter().map(|e| e.path.clone()).collect();
    names.sort();
    ensure!(
        names
            == vec![
                b"/work/a".to_vec(),
                b"/work/digits".to_vec(),
                b"/work/link".to_vec(),
                b"/work/m".to_vec()
            ],
        "{names:?}"
    );
    let l = sb.block(fs.list(
        b"/work",
        ListOptions {
            recursive: true,
            limit: None,
        },
    ))?;
    ensure!(
        !l.truncated && l.entries.len() == 9,
        "{:?}",
        l.entries.len()
    );
    ensure!(l
        .entries
        .iter()
        .any(|e| e.path == b"/work/a/b/hello.txt" && e.size == 3));
    let l = sb.block(fs.list(
        b"/work",
        ListOptions {
            recursive: true,
            limit: Some(3),
        },
    ))?;
    ensure!(l.truncated && l.entries.len() == 3);
    // rename, with and without overwrite.
    sb.block(fs.rename(b"/work/digits", b"/work/d2", false))?;
    sb.write(&fs, b"/work/d3", b"x")?;
    ensure!(code(sb.block(fs.rename(b"/work/d2", b"/work/d3", false))) == "already_exists");
    sb.block(fs.rename(b"/work/d2", b"/work/d3", true))?;
    ensure!(sb.read_all(&fs, b"/work/d3")? == b"0123456789");
    // remove: file, non-empty dir refused, recursive.
    sb.block(fs.remove(b"/work/d3", false))?;
    ensure!(code(sb.block(fs.remove(b"/work/m", false))) == "directory_not_empty");
    sb.block(fs.remove(b"/work/m", true))?;
    ensure!(code(sb.block(fs.stat(b"/work/m"))) == "not_found");
    ensure!(code(sb.block(fs.remove(b"/", true))) == "invalid_path");
    let left = sb.sh("ls -A /work /work/a/b")?;
    ensure!(!left.contains("warren-tmp"), "{left}");
    Ok(())
}

fn non_utf8_names_round_trip() -> Result<()> {
    let sb = Sb::idle("fs-utf")?;
    let fs = sb.root();
    let dir: &[u8] = b"/tmp/\xff\xfe-dir";
    let file: &[u8] = b"/tmp/\xff\xfe-dir/na\xc3\x28me\x80";
    sb.block(fs.mkdir(dir, false, None))?;
    sb.write(&fs, file, b"raw bytes")?;
    let l = sb.block(fs.list(dir, ListOptions::default()))?;
    ensure!(l.entries.len() == 1 && l.entries[0].path == file, "{l:?}");
    ensure!(sb.read_all(&fs, file)? == b"raw bytes");
    let to: &[u8] = b"/tmp/\xff\xfe-dir/\x01\x02";
    sb.block(fs.rename(file, to, false))?;
    ensure!(sb.block(fs.stat(to))?.size == 9);
    // The sandbox sees the same bytes.
    let out = sb.sh("ls /tmp | od -An -c | tr -d ' \\n'")?;
    ensure!(out.contains("377376-dir"), "{out}");
    Ok(())
}

fn error_codes_are_distinct() -> Result<()> {
    let sb = Sb::idle("fs-err")?;
    let root = sb.root();
    let user = sb.fs(user1000());
    sb.sh("echo secret > /root-only && chmod 600 /root-only && mkdir -p /d")?;
    let bad = [
        code(sb.block(root.stat(b"relative"))),
        code(sb.block(root.stat(b""))),
        code(sb.block(root.stat(b"/a\0b"))),
    ];
    ensure!(bad.iter().all(|c| c == "invalid_path"), "{bad:?}");
    let missing = code(sb.read_all(&root, b"/no/such/file"));
    let dir = code(sb.read_all(&root, b"/d"));
    let notdir = code(sb.read_all(&root, b"/root-only/x"));
    let denied = code(sb.read_all(&user, b"/root-only"));
    let write_denied = code(sb.write(&user, b"/etc/passwd", b"x"));
    let dev = code(sb.read_all(&root, b"/dev/zero"));
    let got = [missing, dir, notdir, denied, write_denied, dev];
    ensure!(
        got == [
            "not_found",
            "is_a_directory",
            "not_a_directory",
            "permission_denied",
            "permission_denied",
            "not_a_file"
        ],
        "{got:?}"
    );
    // Root in the sandbox can read it.
    ensure!(sb.read_all(&root, b"/root-only")? == b"secret\n");
    // A user's write creates a file the user owns.
    sb.write(&user, b"/tmp/mine", b"1")?;
    ensure!(sb.block(root.stat(b"/tmp/mine"))?.uid == 1000);
    Ok(())
}

fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// A deterministic, cheap byte pattern (so nothing holds the whole file).
fn pattern(offset: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        let x = offset + i as u64;
        *b = (x ^ (x >> 8) ^ (x >> 17)) as u8;
    }
}

fn one_gib_streams_with_bounded_memory() -> Result<()> {
    const SIZE: u64 = 1 << 30;
    let sb = Sb::idle("fs-big")?;
    let fs = sb.root();
    let before = vm_hwm_kib();
    let t = Instant::now();
    let written = sb.block(async {
        let chunks = futures_util::stream::unfold(0u64, |off| async move {
            if off >= SIZE {
                return None;
            }
            let mut b = vec![0u8; 1 << 20];
            pattern(off, &mut b);
            Some((Ok::<_, std::io::Error>(b), off + (1 << 20)))
        });
        fs.write_stream(b"/big", WriteOptions::default(), chunks)
            .await
    })?;
    let wsecs = t.elapsed().as_secs_f64();
    ensure!(written == SIZE);
    let t = Instant::now();
    let (read, ok) = sb.block(async {
        let mut r = fs.read(b"/big", ReadRange::default()).await?;
        let mut off = 0u64;
        let mut ok = true;
        let mut expect = Vec::new();
        while let Some(c) = r.next().await {
            let c = c?;
            expect.resize(c.len(), 0);
            pattern(off, &mut expect);
            ok &= expect == c[..];
            off += c.len() as u64;
        }
        Ok::<_, NodeError>((off, ok))
    })?;
    let rsecs = t.elapsed().as_secs_f64();
    ensure!(read == SIZE && ok, "read {read} bytes, content ok: {ok}");
    let after = vm_hwm_kib();
    let t = Instant::now();
    sb.sh("cat /big > /dev/null")?;
    let cat = t.elapsed().as_secs_f64();
    println!(
        "1 GiB: write {:.0} MiB/s, read {:.0} MiB/s (cat inside: {:.0} MiB/s); \
         VmHWM of the test process {} MiB before, {} MiB after",
        1024.0 / wsecs,
        1024.0 / rsecs,
        1024.0 / cat,
        before / 1024,
        after / 1024
    );
    // Nothing near the file's size was ever held.
    ensure!(
        after < before + 64 * 1024,
        "VmHWM grew from {before} to {after} KiB"
    );
    sb.block(fs.remove(b"/big", false))?;
    Ok(())
}

fn writes_beyond_disk_limit_are_no_space() -> Result<()> {
    let sb = Sb::with(
        "fs-disk",
        Limits {
            disk_bytes: Some(32 << 20),
            ..Limits::default()
        },
    )?;
    let fs = sb.root();
    let r = sb.block(async {
        let chunks = futures_util::stream::iter(
            (0..64).map(|_| Ok::<_, std::io::Error>(vec![7u8; 1 << 20])),
        );
        fs.write_stream(
            b"/data/huge",
            WriteOptions {
                mode: None,
                create_parents: true,
            },
            chunks,
        )
        .await
    });
    ensure!(code(r) == "no_space");
    // The old content is untouched, the space is free again, the sandbox
    // and its agents still work.
    ensure!(code(sb.block(fs.stat(b"/data/huge"))) == "not_found");
    sb.write(&fs, b"/data/after", &vec![1u8; 8 << 20])?;
    ensure!(sb.read_all(&fs, b"/data/after")?.len() == 8 << 20);
    ensure!(sb.sh("echo ok")? == "ok\n");
    let left = sb.sh("ls -A /data")?;
    ensure!(left == "after\n", "{left}");
    Ok(())
}

fn write_then_read_4k_latency() -> Result<()> {
    let sb = Sb::idle("fs-lat")?;
    let fs = sb.root();
    let data = vec![42u8; 4096];
    let (mut w, mut r) = (Vec::new(), Vec::new());
    for i in 0..300 {
        let t = Instant::now();
        sb.write(&fs, b"/tmp/small", &data)?;
        let tw = t.elapsed();
        let t = Instant::now();
        let back = sb.read_all(&fs, b"/tmp/small")?;
        let tr = t.elapsed();
        ensure!(back == data);
        if i >= 20 {
            w.push(tw);
            r.push(tr);
        }
    }
    w.sort();
    r.sort();
    let p = |v: &[Duration], q: f64| v[((v.len() - 1) as f64 * q) as usize];
    println!(
        "4 KiB through the node API: write p50 {:?} p99 {:?}; read p50 {:?} p99 {:?}",
        p(&w, 0.5),
        p(&w, 0.99),
        p(&r, 0.5),
        p(&r, 0.99)
    );
    ensure!(p(&w, 0.5) < Duration::from_millis(5) && p(&r, 0.5) < Duration::from_millis(5));
    Ok(())
}

fn agents_are_pooled_and_bounded() -> Result<()> {
    let sb = Sb::idle("fs-pool")?;
    let fs = sb.root();
    sb.write(&fs, b"/tmp/p", b"x")?;
    // 32 concurrent requests share at most 4 agents.
    sb.block(async {
        let futs = (0..32).map(|_| {
            let fs = fs.clone();
            async move { fs.stat(b"/tmp/p").await }
        });
        for r in futures_util::future::join_all(futs).await {
            r?;
        }
        Ok::<_, NodeError>(())
    })?;
    let n = agents(&sb)?;
    ensure!((1..=4).contains(&n), "{n} agents");
    // Other users get their own agents, still within the cap.
    sb.block(sb.fs(user1000()).stat(b"/tmp/p"))?;
    ensure!(agents(&sb)? <= 4);
    // A dead agent in the pool is replaced transparently.
    sb.sh("pkill -KILL -x warren-fs-agent || true")?;
    ensure!(sb.block(fs.stat(b"/tmp/p"))?.size == 1);
    Ok(())
}

fn watch_reports_changes_and_overflow() -> Result<()> {
    let sb = Sb::idle("fs-watch")?;
    let fs = sb.root();
    sb.block(fs.mkdir(b"/w", false, None))?;
    let mut w = sb.block(fs.watch(b"/w", true))?;
    let next = |w: &mut warren_node::fs::FsWatch| -> Result<warren_node::fs::WatchEvent> {
        sb.block(async {
            tokio::time::timeout(Duration::from_secs(10), w.next())
                .await
                .map_err(|_| anyhow!("no event within 10 s"))?
                .ok_or_else(|| anyhow!("watch ended"))?
                .map_err(|e| anyhow!("{e}"))
        })
    };
    sb.write(&fs, b"/w/f", b"1")?;
    // The atomic write shows as the temp file's creation and a rename.
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|(k, p): &(WatchEventKind, Vec<u8>)| *k == WatchEventKind::MovedTo && p == b"/w/f")
    {
        let e = next(&mut w)?;
        seen.push((e.kind, e.path));
    }
    sb.sh("mkdir /w/sub")?;
    let e = next(&mut w)?;
    ensure!(
        e.kind == WatchEventKind::Created && e.is_dir && e.path == b"/w/sub",
        "{e:?}"
    );
    // The new directory is watched too.
    sb.sh("echo x > /w/sub/g")?;
    let e = next(&mut w)?;
    ensure!(
        e.kind == WatchEventKind::Created && e.path == b"/w/sub/g",
        "{e:?}"
    );
    sb.sh("rm /w/sub/g")?;
    loop {
        let e = next(&mut w)?;
        if e.kind == WatchEventKind::Deleted {
            ensure!(e.path == b"/w/sub/g", "{e:?}");
            break;
        }
    }
    drop(w);
    // Overflow: nobody reads while far more events happen than the kernel
    // queues; the consumer then sees an explicit overflow.
    let mut w = sb.block(fs.watch(b"/w", false))?;
    sb.sh("python3 -c \"[open('/w/f%d' % i, 'w').close() for i in range(60000)]\"")?;
    let mut overflow = false;
    for _ in 0..200_000 {
        let e = next(&mut w)?;
        if e.kind == WatchEventKind::Overflow {
            overflow = true;
            break;
        }
    }
    ensure!(overflow, "no overflow event");
    let with_watch = agents(&sb)?;
    drop(w);
    // Dropping the watch killed its agent.
    ensure!(
        warren_testkit::wait_until(Duration::from_secs(5), || {
            agents(&sb).is_ok_and(|n| n + 1 == with_watch)
        }),
        "the watch's agent outlived the stream"
    );
    Ok(())
}

/// How many file agents run in the sandbox.
fn agents(sb: &Sb) -> Result<usize> {
    let out = sb.sh("cat /proc/[0-9]*/comm 2>/dev/null | grep -c '^warren-fs-agent$' || true")?;
    Ok(out.trim().parse()?)
}

// ---------------------------------------------------------------- escapes

/// A host directory with a secret the sandbox must never reach.
struct Marker {
    dir: tempfile::TempDir,
}

impl Marker {
    fn new() -> Result<Marker> {
        let dir = tempfile::Builder::new()
            .prefix("warren-fs-marker-")
            .tempdir_in("/var/tmp")?;
        std::fs::write(dir.path().join("secret"), "host secret")?;
        Ok(Marker { dir })
    }

    fn path(&self) -> String {
        self.dir.path().display().to_string()
    }

    fn secret(&self) -> String {
        format!("{}/secret", self.path())
    }

    /// The marker directory holds exactly what it held at first.
    fn untouched(&self) -> Result<()> {
        let names: Vec<_> = std::fs::read_dir(self.dir.path())?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        ensure!(names == ["secret"], "host marker dir changed: {names:?}");
        let s = std::fs::read_to_string(self.dir.path().join("secret"))?;
        ensure!(s == "host secret", "host marker changed");
        Ok(())
    }
}

fn never_host(r: Result<Vec<u8>, NodeError>, what: &str) -> Result<()> {
    if let Ok(v) = &r {
        ensure!(
            !String::from_utf8_lossy(v).contains("host secret"),
            "{what}: read the host marker"
        );
    }
    Ok(())
}

fn escape_symlinks_to_root_and_dotdot() -> Result<()> {
    let m = Marker::new()?;
    let sb = Sb::idle("fs-esc-ln")?;
    let fs = sb.root();
    let secret = m.secret();
    sb.sh(&format!(
        "mkdir -p /tmp/a/b/c && ln -s / /tmp/toroot && ln -s ../../../../../../.. /tmp/a/b/c/up \
         && ln -s /tmp/a/b/c/up /tmp/chain1 && ln -s /tmp/chain1 /tmp/chain2 \
         && ln -s {secret} /tmp/direct && ln -s /tmp/loop2 /tmp/loop1 && ln -s /tmp/loop1 /tmp/loop2"
    ))?;
    for p in [
        secret.to_string(),
        format!("/tmp/toroot{secret}"),
        format!("/tmp/a/b/c/up{secret}"),
        format!("/tmp/chain2{secret}"),
        format!("/../../../..{secret}"),
        "/tmp/direct".to_string(),
    ] {
        let r = sb.read_all(&fs, p.as_bytes());
        ensure!(code_ref(&r) == "not_found", "{p}: {}", code_ref(&r));
        never_host(r, &p)?;
    }
    // A sandbox file at the same path is what a symlink to / yields.
    sb.sh(&format!("mkdir -p {} && echo sandbox > {secret}", m.path()))?;
    for p in [
        format!("/tmp/toroot{secret}"),
        format!("/tmp/chain2{secret}"),
        "/tmp/direct".to_string(),
    ] {
        ensure!(sb.read_all(&fs, p.as_bytes())? == b"sandbox\n", "{p}");
    }
    ensure!(code(sb.read_all(&fs, b"/tmp/loop1")) == "symlink_loop");
    // Listing through the links stays inside too.
    let l = sb.block(fs.list(b"/tmp/toroot/var/tmp", ListOptions::default()))?;
    ensure!(l
        .entries
        .iter()
        .all(|e| !e.path.ends_with(b"warren-fs-test")));
    m.untouched()
}

fn escape_symlink_swapped_between_check_and_use() -> Result<()> {
    let m = Marker::new()?;
    let sb = Sb::idle("fs-esc-toctou")?;
    let fs = sb.root();
    let host = m.path();
    sb.sh("mkdir -p /tmp/real && echo sandbox > /tmp/real/secret")?;
    // A tenant process flips /tmp/flip between a real directory and links
    // to the host marker's path, to / and to .., as fast as it can.
    let _flipper = sb.background(&format!(
        "while :; do ln -sfn /tmp/real /tmp/flip; ln -sfn {host} /tmp/flip; \
         ln -sfn / /tmp/flip; ln -sfn ../../../../.. /tmp/flip; done"
    ))?;
    let (mut ok, mut other) = (0, 0);
    for i in 0..400 {
        let p = "/tmp/flip/secret".to_string();
        let r = sb.read_all(&fs, p.as_bytes());
        match &r {
            Ok(v) if v == b"sandbox\n" => ok += 1,
            _ => other += 1,
        }
        never_host(r, &p)?;
        // Writes through the flipping path land inside the sandbox or fail.
        let _ = sb.write(&fs, format!("/tmp/flip/w{i}").as_bytes(), b"probe");
        let _ = sb.block(fs.stat(format!("/tmp/flip{}", m.secret()).as_bytes()));
    }
    println!("toctou: {ok} reads of the sandbox's file, {other} failures, 0 host reads");
    drop(_flipper);
    m.untouched()
}

fn escape_proc_magic_links() -> Result<()> {
    let m = Marker::new()?;
    let sb = Sb::idle("fs-esc-proc")?;
    let fs = sb.root();
    let secret = m.secret();
    for p in [
        format!("/proc/self/root{secret}"),
        format!("/proc/1/root{secret}"),
        "/proc/self/root/etc/hostname".to_string(),
        "/proc/1/root/etc/hostname".to_string(),
        "/proc/self/cwd/etc/hostname".to_string(),
        "/proc/1/exe".to_string(),
        "/proc/self/fd/0".to_string(),
    ] {
        let r = sb.read_all(&fs, p.as_bytes());
        ensure!(r.is_err(), "{p}: magic link followed");
        never_host(r, &p)?;
        let w = sb.write(&fs, format!("{p}-probe").as_bytes(), b"x");
        ensure!(w.is_err(), "{p}-probe: written");
    }
    // A symlink in the sandbox that points at a magic link is refused too.
    sb.sh("ln -s /proc/self/root /tmp/pr")?;
    let r = sb.read_all(&fs, format!("/tmp/pr{secret}").as_bytes());
    ensure!(r.is_err());
    m.untouched()
}

fn escape_hard_links_keep_permissions() -> Result<()> {
    let sb = Sb::idle("fs-esc-hl")?;
    let user = sb.fs(user1000());
    sb.sh("echo root-secret > /secret && chmod 600 /secret && mkdir -m 1777 /pub && ln /secret /pub/hl")?;
    ensure!(code(sb.read_all(&user, b"/pub/hl")) == "permission_denied");
    ensure!(code(sb.read_all(&user, b"/secret")) == "permission_denied");
    // Replacing the link is refused (sticky directory, root's link), and
    // the root file is never written through it.
    let w = sb.write(&user, b"/pub/hl", b"overwritten");
    ensure!(
        code(w) == "permission_denied",
        "sticky /pub: the link is root's"
    );
    ensure!(sb.sh("cat /secret")? == "root-secret\n");
    // The user cannot make such a link either (protected_hardlinks).
    let spec = {
        let mut s = ExecSpec::new(vec!["sh".into(), "-c".into(), "ln /secret /pub/hl2".into()]);
        s.user = user1000();
        s
    };
    let mut e = sb.f.node.runtime().exec(&sb.id, &spec, ExecIo::Null)?;
    ensure!(e.wait()?.status != ExitStatus::Code(0));
    Ok(())
}

fn escape_write_through_symlink_outside() -> Result<()> {
    let m = Marker::new()?;
    let sb = Sb::idle("fs-esc-w")?;
    let fs = sb.root();
    let host = m.path();
    let secret = m.secret();
    sb.sh(&format!(
        "ln -s {secret} /tmp/out && ln -s {host} /tmp/outdir && ln -s / /tmp/r"
    ))?;
    // A final symlink is replaced by the new file, never written through.
    sb.write(&fs, b"/tmp/out", b"replaced")?;
    ensure!(sb.block(fs.stat(b"/tmp/out"))?.kind == FileKind::File);
    // A parent symlink resolves inside the sandbox: the host dir is not
    // there (and, like `mkdir -p`, create_parents does not replace a
    // dangling symlink).
    ensure!(code(sb.write(&fs, b"/tmp/outdir/new", b"x")) == "not_found");
    let parents = WriteOptions {
        mode: None,
        create_parents: true,
    };
    ensure!(code(sb.block(fs.write(b"/tmp/outdir/new", parents, &b"x"[..]))) == "not_found");
    // Once the sandbox has such a directory, that is where writes land.
    sb.sh(&format!("mkdir -p {host}"))?;
    sb.block(fs.write(b"/tmp/outdir/new", parents, &b"inside"[..]))?;
    ensure!(sb.sh(&format!("cat {host}/new"))? == "inside");
    sb.block(fs.write(
        format!("/tmp/r{host}/secret").as_bytes(),
        WriteOptions::default(),
        &b"inside too"[..],
    ))?;
    sb.block(fs.mkdir(format!("/tmp/r/../..{host}/d").as_bytes(), true, None))?;
    // /tmp is its own tmpfs: renaming out of it is cross_device.
    ensure!(code(sb.block(fs.rename(b"/tmp/out", b"/tmp/outdir/moved", false))) == "cross_device");
    sb.block(fs.rename(b"/tmp/out", b"/tmp/r/tmp/moved", false))?;
    ensure!(sb.sh("cat /tmp/moved")? == "replaced");
    sb.block(fs.remove(format!("/tmp/r{host}/secret").as_bytes(), false))?;
    m.untouched()
}

fn main() {
    warren_init::run_if_init();
    let args = libtest_mimic::Arguments::from_args();
    let tests = vec![
        trial("ops_end_to_end", ops_end_to_end),
        trial("non_utf8_names_round_trip", non_utf8_names_round_trip),
        trial("error_codes_are_distinct", error_codes_are_distinct),
        trial(
            "one_gib_streams_with_bounded_memory",
            one_gib_streams_with_bounded_memory,
        ),
        trial(
            "writes_beyond_disk_limit_are_no_space",
            writes_beyond_disk_limit_are_no_space,
        ),
        trial("write_then_read_4k_latency", write_then_read_4k_latency),
        trial(
            "agents_are_pooled_and_bounded",
            agents_are_pooled_and_bounded,
        ),
        trial(
            "watch_reports_changes_and_overflow",
            watch_reports_changes_and_overflow,
        ),
        trial(
            "escape_symlinks_to_root_and_dotdot",
            escape_symlinks_to_root_and_dotdot,
        ),
        trial(
            "escape_symlink_swapped_between_check_and_use",
            escape_symlink_swapped_between_check_and_use,
        ),
        trial("escape_proc_magic_links", escape_proc_magic_links),
        trial(
            "escape_hard_links_keep_permissions",
            escape_hard_links_keep_permissions,
        ),
        trial(
            "escape_write_through_symlink_outside",
            escape_write_through_symlink_outside,
        ),
    ];
    let conclusion = libtest_mimic::run(&args, tests);
    teardown();
    conclusion.exit()
}
