//! Real sandboxes, as root: namespaces, overlayfs, cgroups, init.
//!
//! The harness is our own `main` (libtest-mimic) because the test binary is
//! also the sandbox init: the runtime re-executes it from a sealed memfd, and
//! `warren_init::run_if_init()` must run before anything else.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use libtest_mimic::{Arguments, Failed, Trial};
use warren_runtime::{
    BindMount, ExecExit, ExecIo, ExecSpec, ExitStatus, Limits, MainIo, NativeConfig, NativeRuntime,
    RootfsSpec, Runtime, SandboxExit, SandboxId, SandboxSpec,
};

struct Fixture {
    rt: NativeRuntime,
    rootfs: RootfsSpec,
    env: Vec<String>,
    _data: tempfile::TempDir,
}

static FIXTURE: OnceLock<Result<Arc<Fixture>, String>> = OnceLock::new();

fn fixture() -> Result<Arc<Fixture>> {
    FIXTURE
        .get_or_init(|| build_fixture().map(Arc::new).map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

fn build_fixture() -> Result<Fixture> {
    let data = tempfile::Builder::new()
        .prefix("warren-rt-test-")
        .tempdir_in("/var/tmp")
        .context("tempdir")?;
    let store = warren_image::ImageStore::open(data.path().join("images"))?;
    let img = store.host_image()?;
    let mut cfg = NativeConfig::new(data.path().join("runtime"));
    // A cgroup subtree per test process keeps parallel test processes apart
    // and makes the leak check exact.
    cfg.cgroup_parent = format!("warren-test-{}", std::process::id());
    let rt = NativeRuntime::new(cfg)?;
    Ok(Fixture {
        rt,
        rootfs: RootfsSpec {
            layers: img.layers.clone(),
            binds: img
                .binds
                .iter()
                .map(|b| BindMount {
                    source: b.source.clone(),
                    target: b.target.clone(),
                    readonly: b.readonly,
                })
                .collect(),
        },
        env: img.config.env.clone(),
        _data: data,
    })
}

static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

fn new_id(prefix: &str) -> SandboxId {
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    SandboxId::new(format!("{prefix}-{}-{n}", std::process::id())).expect("valid id")
}

/// A sandbox that is destroyed when dropped.
struct Sb {
    f: Arc<Fixture>,
    id: SandboxId,
}

impl Drop for Sb {
    fn drop(&mut self) {
        let _ = self.f.rt.destroy(&self.id);
    }
}

impl Sb {
    fn spec(f: &Fixture, id: &SandboxId) -> SandboxSpec {
        let mut s = SandboxSpec::new(id.clone(), f.rootfs.clone());
        s.env = f.env.clone();
        s
    }

    fn idle(prefix: &str) -> Result<Sb> {
        Self::with(prefix, |_| {}, MainIo::default())
    }

    fn with(prefix: &str, edit: impl FnOnce(&mut SandboxSpec), io: MainIo) -> Result<Sb> {
        let f = fixture()?;
        let id = new_id(prefix);
        let mut spec = Self::spec(&f, &id);
        edit(&mut spec);
        f.rt.create(&spec, io)?;
        Ok(Sb { f, id })
    }

    /// Runs `sh -c script`, returning (exit, stdout, stderr).
    fn sh(&self, script: &str) -> Result<(ExecExit, Vec<u8>, Vec<u8>)> {
        self.run(ExecSpec::new(vec!["sh".into(), "-c".into(), script.into()]))
    }

    fn run(&self, spec: ExecSpec) -> Result<(ExecExit, Vec<u8>, Vec<u8>)> {
        let mut e = self
            .f
            .rt
            .exec(&self.id, &spec, ExecIo::Pipes { stdin: false })?;
        let mut out = e.stdout.take().expect("piped stdout");
        let mut err = e.stderr.take().expect("piped stderr");
        let t = std::thread::spawn(move || {
            let mut v = Vec::new();
            err.read_to_end(&mut v).map(|_| v)
        });
        let mut o = Vec::new();
        out.read_to_end(&mut o)?;
        let errb = t.join().map_err(|_| anyhow!("stderr reader panicked"))??;
        Ok((e.wait()?, o, errb))
    }

    fn sh_ok(&self, script: &str) -> Result<String> {
        let (exit, out, err) = self.sh(script)?;
        ensure!(
            exit.status == ExitStatus::Code(0),
            "{script:?} ended {exit:?}; stderr: {}",
            String::from_utf8_lossy(&err)
        );
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

fn pipe() -> Result<(std::fs::File, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    Ok((std::fs::File::from(r), w))
}

// ---------------------------------------------------------------- tests ----

fn main_command_output_and_exit_code() -> Result<()> {
    let (mut r, w) = pipe()?;
    let sb = Sb::with(
        "main",
        |s| s.command = Some(vec!["sh".into(), "-c".into(), "echo hi; exit 7".into()]),
        MainIo {
            stdout: Some(w),
            ..Default::default()
        },
    )?;
    let mut out = String::new();
    r.read_to_string(&mut out)?;
    ensure!(out == "hi\n", "output {out:?}");
    let exit = sb.f.rt.wait(&sb.id, Some(Duration::from_secs(10)))?;
    ensure!(
        exit == Some(SandboxExit::Exited { code: 7 }),
        "exit {exit:?}"
    );
    Ok(())
}

fn main_output_is_captured_in_a_bounded_log() -> Result<()> {
    let sb = Sb::with(
        "log",
        |s| {
            s.command = Some(vec![
                "sh".into(),
                "-c".into(),
                "echo first; echo to-stderr >&2; seq 1 20000; exit 4".into(),
            ])
        },
        MainIo {
            log_capacity: Some(4096),
            ..Default::default()
        },
    )?;
    let exit = sb.f.rt.wait(&sb.id, Some(Duration::from_secs(20)))?;
    ensure!(
        exit == Some(SandboxExit::Exited { code: 4 }),
        "exit {exit:?}"
    );
    // seq 1 20000 prints 108894 bytes; plus "first\n" and "to-stderr\n".
    let total: u64 = 6 + 10 + 108_894;
    let log = sb.f.rt.read_log(&sb.id, None)?;
    ensure!(log.total == total, "total {} != {total}", log.total);
    ensure!(
        log.bytes.len() == 4096 && log.skipped == total - 4096,
        "kept {} skipped {}",
        log.bytes.len(),
        log.skipped
    );
    ensure!(
        log.bytes.ends_with(b"19999\n20000\n"),
        "tail {:?}",
        String::from_utf8_lossy(&log.bytes[4000..])
    );
    let tail = sb.f.rt.read_log(&sb.id, Some(6))?;
    ensure!(tail.bytes == b"20000\n", "tail {:?}", tail.bytes);
    // Small outputs are kept whole, stdout and stderr interleaved in order.
    let sb2 = Sb::with(
        "log2",
        |s| {
            s.command = Some(vec![
                "sh".into(),
                "-c".into(),
                "echo a; echo b >&2; echo c".into(),
            ])
        },
        MainIo {
            log_capacity: Some(1 << 20),
            ..Default::default()
        },
    )?;
    sb2.f.rt.wait(&sb2.id, Some(Duration::from_secs(20)))?;
    let log = sb2.f.rt.read_log(&sb2.id, None)?;
    ensure!(
        log.bytes == b"a\nb\nc\n" && log.skipped == 0,
        "{:?}",
        String::from_utf8_lossy(&log.bytes)
    );
    Ok(())
}

fn exec_stdout_stderr_exit_codes() -> Result<()> {
    let sb = Sb::idle("exec")?;
    let (exit, out, err) = sb.sh("echo out; echo err >&2; exit 3")?;
    ensure!(exit.status == ExitStatus::Code(3), "{exit:?}");
    ensure!(out == b"out\n" && err == b"err\n", "{out:?} {err:?}");
    let (exit, _, _) = sb.sh("kill -TERM $$")?;
    ensure!(exit.status == ExitStatus::Signal(libc::SIGTERM), "{exit:?}");
    Ok(())
}

fn exec_env_workdir_and_user() -> Result<()> {
    let sb = Sb::idle("env")?;
    let mut spec = ExecSpec::new(vec![
        "sh".into(),
        "-c".into(),
        "echo $FOO; pwd; id -u; id -g".into(),
    ]);
    spec.env.push("FOO=bar baz".into());
    spec.workdir = "/tmp".into();
    spec.user.uid = 1000;
    spec.user.gid = 1000;
    let (exit, out, err) = sb.run(spec)?;
    ensure!(
        exit.status == ExitStatus::Code(0),
        "{exit:?} {}",
        String::from_utf8_lossy(&err)
    );
    ensure!(
        out == b"bar baz\n/tmp\n1000\n1000\n",
        "{:?}",
        String::from_utf8_lossy(&out)
    );
    Ok(())
}

fn exec_errors_have_codes() -> Result<()> {
    let sb = Sb::idle("execerr")?;
    let f = &sb.f;
    let err =
        f.rt.exec(
            &sb.id,
            &ExecSpec::new(vec!["/no/such/binary".into()]),
            ExecIo::Null,
        )
        .err()
        .context("missing binary accepted")?;
    ensure!(err.code() == "exec_not_found", "code {}", err.code());
    let mut spec = ExecSpec::new(vec!["true".into()]);
    spec.workdir = "/nonexistent".into();
    let err =
        f.rt.exec(&sb.id, &spec, ExecIo::Null)
            .err()
            .context("bad workdir accepted")?;
    ensure!(err.code() == "workdir_not_found", "code {}", err.code());
    let err =
        f.rt.exec(&sb.id, &ExecSpec::new(vec![]), ExecIo::Null)
            .err()
            .context("empty argv accepted")?;
    ensure!(err.code() == "invalid_argument", "code {}", err.code());
    let missing = SandboxId::new("does-not-exist")?;
    let err =
        f.rt.exec(&missing, &ExecSpec::new(vec!["true".into()]), ExecIo::Null)
            .err()
            .context("missing sandbox accepted")?;
    ensure!(err.code() == "sandbox_not_found", "code {}", err.code());
    Ok(())
}

fn exec_stdin_and_signals() -> Result<()> {
    let sb = Sb::idle("stdin")?;
    let mut e = sb.f.rt.exec(
        &sb.id,
        &ExecSpec::new(vec!["sh".into(), "-c".into(), "wc -c".into()]),
        ExecIo::Pipes { stdin: true },
    )?;
    let mut stdin = e.stdin.take().context("stdin")?;
    stdin.write_all(&[b'x'; 100_000])?;
    drop(stdin);
    let mut out = String::new();
    e.stdout
        .take()
        .context("stdout")?
        .read_to_string(&mut out)?;
    ensure!(out.trim() == "100000", "wc said {out:?}");
    ensure!(e.wait()?.status == ExitStatus::Code(0));

    let mut e = sb.f.rt.exec(
        &sb.id,
        &ExecSpec::new(vec!["sleep".into(), "1000".into()]),
        ExecIo::Null,
    )?;
    e.signal(libc::SIGINT)?;
    let exit = e
        .wait_timeout(Duration::from_secs(10))?
        .context("sleep ignored SIGINT")?;
    ensure!(exit.status == ExitStatus::Signal(libc::SIGINT), "{exit:?}");
    Ok(())
}

fn exec_timeout_is_reported() -> Result<()> {
    let sb = Sb::idle("timeout")?;
    let mut spec = ExecSpec::new(vec!["sleep".into(), "1000".into()]);
    spec.timeout = Some(Duration::from_millis(200));
    let t = Instant::now();
    let (exit, _, _) = sb.run(spec)?;
    ensure!(
        exit.timed_out && exit.status == ExitStatus::Signal(libc::SIGKILL),
        "{exit:?}"
    );
    ensure!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    Ok(())
}

fn pty_exec() -> Result<()> {
    let sb = Sb::idle("pty")?;
    let mut e = sb.f.rt.exec(
        &sb.id,
        &ExecSpec::new(vec![
            "sh".into(),
            "-c".into(),
            "stty size; tty; read x; echo got:$x".into(),
        ]),
        ExecIo::Pty {
            rows: 33,
            cols: 101,
        },
    )?;
    let mut pty = e.pty.take().context("pty")?;
    pty.write_all(b"hello\n")?;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match pty.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            // EIO: the slave side closed (the process exited).
            Err(e) if e.raw_os_error() == Some(libc::EIO) => break,
            Err(e) => return Err(e.into()),
        }
    }
    let text = String::from_utf8_lossy(&out);
    ensure!(text.contains("33 101"), "stty size missing: {text:?}");
    ensure!(text.contains("/dev/pts/"), "tty missing: {text:?}");
    ensure!(text.contains("got:hello"), "echo missing: {text:?}");
    ensure!(e.wait()?.status == ExitStatus::Code(0));
    Ok(())
}

fn large_output_is_byte_exact() -> Result<()> {
    let sb = Sb::idle("big")?;
    // 100 MiB of deterministic, non-repeating-looking bytes.
    let script = "head -c 104857600 /dev/zero | tr '\\000' 'a' | sha256sum";
    let inside = sb.sh_ok(script)?;
    let inside = inside.split_whitespace().next().unwrap_or("").to_string();
    let mut e = sb.f.rt.exec(
        &sb.id,
        &ExecSpec::new(vec![
            "sh".into(),
            "-c".into(),
            "head -c 104857600 /dev/zero | tr '\\000' 'a'".into(),
        ]),
        ExecIo::Pipes { stdin: false },
    )?;
    let mut out = e.stdout.take().context("stdout")?;
    let mut hasher = Sha256Stream::default();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0usize;
    loop {
        let n = out.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n;
        hasher.update(&buf[..n]);
    }
    ensure!(e.wait()?.status == ExitStatus::Code(0));
    ensure!(total == 104_857_600, "got {total} bytes");
    let outside = hasher.hex();
    ensure!(outside == inside, "checksum {outside} != {inside}");
    Ok(())
}

/// sha256 without a new dependency: pipe through the host's sha256sum.
#[derive(Default)]
struct Sha256Stream {
    child: Option<std::process::Child>,
}

impl Sha256Stream {
    fn update(&mut self, b: &[u8]) {
        let c = self.child.get_or_insert_with(|| {
            std::process::Command::new("sha256sum")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("sha256sum on the host")
        });
        c.stdin
            .as_mut()
            .expect("stdin")
            .write_all(b)
            .expect("write sha256sum");
    }

    fn hex(mut self) -> String {
        let c = self.child.take().expect("data was hashed");
        let out = c.wait_with_output().expect("sha256sum");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_string()
    }
}

fn concurrent_execs() -> Result<()> {
    let sb = Arc::new(Sb::idle("conc")?);
    let handles: Vec<_> = (0..50)
        .map(|i| {
            let sb = sb.clone();
            std::thread::spawn(move || -> Result<()> {
                let out = sb.sh_ok(&format!("echo {i}; sleep 0.2; echo done{i}"))?;
                ensure!(out == format!("{i}\ndone{i}\n"), "exec {i}: {out:?}");
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| anyhow!("exec thread panicked"))??;
    }
    Ok(())
}

fn hundred_sandboxes_alive() -> Result<()> {
    let f = fixture()?;
    let mut sbs = Vec::new();
    for _ in 0..100 {
        sbs.push(Sb::idle("many")?);
    }
    for sb in &sbs {
        let h = sb.sh_ok("hostname")?;
        ensure!(h.trim() == sb.id.as_str(), "hostname {h:?}");
    }
    ensure!(f.rt.list().len() >= 100);
    Ok(())
}

fn zombies_are_reaped() -> Result<()> {
    let sb = Sb::idle("zombie")?;
    // Orphans whose parent exits are re-parented to init, which must reap them.
    sb.sh_ok("for i in 1 2 3 4 5 6 7 8 9 10; do (sleep 0.1 &) ; done; sleep 0.5")?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let z = sb.sh_ok("grep -l '^State:.*Z' /proc/[0-9]*/status 2>/dev/null | wc -l")?;
        if z.trim() == "0" {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{} zombies remain", z.trim());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn memory_hog_is_oom_killed() -> Result<()> {
    let f = fixture()?;
    let (_r, w) = pipe()?;
    let sb = Sb::with(
        "oom",
        |s| {
            s.limits.memory_bytes = Some(64 << 20);
            s.command = Some(vec![
                "python3".into(),
                "-c".into(),
                "b = []\nwhile True: b.append(bytearray(16 << 20))".into(),
            ]);
        },
        MainIo {
            stderr: Some(w),
            ..Default::default()
        },
    )?;
    let exit = f.rt.wait(&sb.id, Some(Duration::from_secs(30)))?;
    ensure!(exit == Some(SandboxExit::OomKilled), "exit {exit:?}");

    // An exec that blows the limit is reported as OOM-killed too.
    let sb = Sb::with(
        "oomexec",
        |s| s.limits.memory_bytes = Some(64 << 20),
        MainIo::default(),
    )?;
    let (exit, _, _) = sb.run(ExecSpec::new(vec![
        "python3".into(),
        "-c".into(),
        "b = []\nwhile True: b.append(bytearray(16 << 20))".into(),
    ]))?;
    ensure!(exit.oom_killed, "exec exit {exit:?}");
    Ok(())
}

fn fork_bomb_is_contained() -> Result<()> {
    let sb = Sb::with("bomb", |s| s.limits.pids = Some(64), MainIo::default())?;
    let mut spec = ExecSpec::new(vec![
        "sh".into(),
        "-c".into(),
        "bomb() { bomb | bomb & }; bomb; sleep 2".into(),
    ]);
    spec.timeout = Some(Duration::from_secs(4));
    let started = Instant::now();
    let mut e = sb.f.rt.exec(&sb.id, &spec, ExecIo::Null)?;
    // The host stays responsive while the bomb runs: spawning a host process
    // takes well under a second.
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    let st = std::process::Command::new("true").status()?;
    ensure!(
        st.success() && t.elapsed() < Duration::from_secs(1),
        "host slow: {:?}",
        t.elapsed()
    );
    let pids =
        sb.f.rt
            .exec(&sb.id, &ExecSpec::new(vec!["true".into()]), ExecIo::Null);
    // The sandbox may be at its pids limit; either way it must not exceed it.
    drop(pids);
    let _ = e.wait_timeout(Duration::from_secs(20))?;
    ensure!(started.elapsed() < Duration::from_secs(25));
    let cg = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/pids/warren-test-{}/{}/pids.max",
        std::process::id(),
        sb.id
    ))
    .unwrap_or_default();
    ensure!(cg.trim() == "64" || cg.is_empty(), "pids.max = {cg:?}");
    Ok(())
}

fn host_processes_and_mounts_are_invisible() -> Result<()> {
    let sb = Sb::idle("iso")?;
    let ps = sb.sh_ok("ls /proc | grep -E '^[0-9]+$' | sort -n | tr '\\n' ' '")?;
    let pids: Vec<u32> = ps
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    // init (1), sh and ls/grep/sort/tr: a handful, never the host's.
    ensure!(
        pids.first() == Some(&1) && pids.len() < 10,
        "pids visible: {ps}"
    );
    let mounts = sb.sh_ok("cat /proc/self/mounts")?;
    ensure!(
        !mounts.contains("/work") && !mounts.contains("warren-rt-test"),
        "host mounts leak: {mounts}"
    );
    let id = sb.sh_ok("cat /proc/self/uid_map")?;
    let fields: Vec<&str> = id.split_whitespace().collect();
    ensure!(
        fields.len() == 3 && fields[0] == "0" && fields[1] != "0",
        "uid_map {id:?}"
    );
    ensure!(sb.sh_ok("hostname")?.trim() == sb.id.as_str());
    // The host's root is not reachable through init.
    let (exit, _, _) = sb.sh("ls /proc/1/root/ >/dev/null 2>&1")?;
    ensure!(
        exit.status != ExitStatus::Code(0),
        "init's root is readable"
    );
    Ok(())
}

fn hardening_caps_nnp_and_masked_paths() -> Result<()> {
    let sb = Sb::idle("harden")?;
    let status = sb.sh_ok("grep -E '^(CapBnd|CapEff|NoNewPrivs)' /proc/self/status")?;
    // Docker's default set less NET_RAW and MKNOD.
    ensure!(status.contains("CapBnd:\t00000000a00405fb"), "{status}");
    ensure!(status.contains("NoNewPrivs:\t1"), "{status}");
    // Masked: reads give nothing.
    ensure!(
        sb.sh_ok("cat /proc/kcore /proc/keys /proc/timer_list 2>/dev/null | wc -c")?
            .trim()
            == "0"
    );
    ensure!(sb.sh_ok("ls -A /sys/firmware | wc -l")?.trim() == "0");
    // Read-only: writing back the value a file already holds (so nothing
    // changes even if the write went through) must fail.
    let (exit, _, _) =
        sb.sh("v=$(cat /proc/sys/kernel/domainname) && echo \"$v\" > /proc/sys/kernel/domainname")?;
    ensure!(exit.status != ExitStatus::Code(0), "/proc/sys is writable");
    let (exit, _, err) = sb.sh("echo 0 > /proc/sysrq-trigger")?;
    ensure!(exit.status != ExitStatus::Code(0), "sysrq-trigger writable");
    ensure!(String::from_utf8_lossy(&err).contains("Read-only") || !err.is_empty());
    // setuid binaries gain nothing under no_new_privs: as uid 1000, `su`
    // (setuid root on the host image) cannot become root.
    let mut spec = ExecSpec::new(vec![
        "sh".into(),
        "-c".into(),
        "su -c id root </dev/null 2>&1; id -u".into(),
    ]);
    spec.user.uid = 1000;
    spec.user.gid = 1000;
    let (_, out, _) = sb.run(spec)?;
    let out = String::from_utf8_lossy(&out);
    ensure!(
        out.trim_end().ends_with("1000") && !out.contains("uid=0"),
        "{out}"
    );
    Ok(())
}

fn disk_limit_gives_enospc() -> Result<()> {
    let sb = Sb::with(
        "disk",
        |s| s.limits.disk_bytes = Some(16 << 20),
        MainIo::default(),
    )?;
    let out = sb.sh_ok("dd if=/dev/zero of=/root/fill bs=1M count=64 2>&1; true")?;
    ensure!(out.contains("No space left on device"), "dd said {out:?}");
    // /tmp is bounded too.
    let out = sb.sh_ok("dd if=/dev/zero of=/tmp/fill bs=1M count=64 2>&1; true")?;
    ensure!(out.contains("No space left on device"), "/tmp: {out:?}");
    // The sandbox stays healthy: delete, then write again.
    let after =
        sb.sh_ok("rm -f /root/fill /tmp/fill && echo ok > /root/after && cat /root/after")?;
    ensure!(after == "ok\n", "after: {after:?}");
    // The host's disk holds nothing of it.
    let dir =
        sb.f.rt
            .config()
            .data_dir
            .join("sandboxes")
            .join(sb.id.as_str());
    let du = std::process::Command::new("du")
        .arg("-sk")
        .arg(&dir)
        .output()?;
    let kib: u64 = String::from_utf8_lossy(&du.stdout)
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX);
    ensure!(kib < 1024, "state dir grew to {kib} KiB on the host disk");
    Ok(())
}

fn distinct_host_ids_per_sandbox() -> Result<()> {
    let a = Sb::idle("ida")?;
    let b = Sb::idle("idb")?;
    let ma = a.sh_ok("cat /proc/self/uid_map")?;
    let mb = b.sh_ok("cat /proc/self/uid_map")?;
    ensure!(ma != mb, "same id map {ma:?}");
    Ok(())
}

fn filesystem_is_writable_and_private() -> Result<()> {
    let a = Sb::idle("fsa")?;
    let b = Sb::idle("fsb")?;
    a.sh_ok("echo secret > /root/file && mkdir -p /usr/local/x 2>/dev/null; echo ok > /tmp/t")?;
    let (exit, _, _) = b.sh("cat /root/file")?;
    ensure!(
        exit.status != ExitStatus::Code(0),
        "sandbox b sees a's file"
    );
    ensure!(a.sh_ok("cat /root/file")? == "secret\n");
    ensure!(
        a.sh_ok("stat -c %u /root/file")?.trim() == "0",
        "file not owned by sandbox root"
    );
    // /usr is a read-only view of the host's.
    let (exit, _, _) = a.sh("touch /usr/bin/warren-should-not-exist")?;
    ensure!(exit.status != ExitStatus::Code(0), "host /usr is writable");
    ensure!(!Path::new("/usr/bin/warren-should-not-exist").exists());
    Ok(())
}

fn destroy_is_idempotent_and_complete() -> Result<()> {
    let f = fixture()?;
    let sb = Sb::idle("destroy")?;
    let dir =
        f.rt.config()
            .data_dir
            .join("sandboxes")
            .join(sb.id.as_str());
    ensure!(dir.exists());
    f.rt.destroy(&sb.id)?;
    f.rt.destroy(&sb.id)?;
    ensure!(!dir.exists(), "state dir survived");
    let cg = format!(
        "/sys/fs/cgroup/memory/warren-test-{}/{}",
        std::process::id(),
        sb.id
    );
    ensure!(!Path::new(&cg).exists(), "cgroup survived");
    let err =
        f.rt.exec(&sb.id, &ExecSpec::new(vec!["true".into()]), ExecIo::Null)
            .err();
    ensure!(err.map(|e| e.code().to_string()).as_deref() == Some("sandbox_not_found"));
    Ok(())
}

fn concurrent_destroys_of_one_sandbox_all_succeed() -> Result<()> {
    // The server's supervisor and a terminate request can destroy the same
    // sandbox at once; both must succeed (destroy is idempotent).
    for _ in 0..5 {
        let sb = Sb::idle("ddestroy")?;
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let f = sb.f.clone();
                let id = sb.id.clone();
                std::thread::spawn(move || f.rt.destroy(&id).map_err(|e| format!("{e:#}")))
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| anyhow!("destroy thread panicked"))?
                .map_err(|e| anyhow!(e))?;
        }
    }
    Ok(())
}

fn failed_create_leaves_nothing() -> Result<()> {
    let f = fixture()?;
    let id = new_id("fail");
    let mut spec = Sb::spec(&f, &id);
    spec.command = Some(vec!["/definitely/missing".into()]);
    let err =
        f.rt.create(&spec, MainIo::default())
            .err()
            .context("create succeeded")?;
    ensure!(
        err.code() == "exec_not_found",
        "code {} ({err})",
        err.code()
    );
    let dir = f.rt.config().data_dir.join("sandboxes").join(id.as_str());
    ensure!(!dir.exists(), "state dir survived a failed create");
    let mut spec = Sb::spec(&f, &id);
    spec.rootfs.layers = vec![PathBuf::from("/nonexistent/layer")];
    let err =
        f.rt.create(&spec, MainIo::default())
            .err()
            .context("bad layer accepted")?;
    ensure!(
        err.code() == "sandbox_setup_failed",
        "code {} ({err})",
        err.code()
    );
    ensure!(!dir.exists(), "state dir survived a failed create");
    // The id is free again.
    let spec = Sb::spec(&f, &id);
    f.rt.create(&spec, MainIo::default())?;
    f.rt.destroy(&id)?;
    Ok(())
}

fn duplicate_ids_are_refused() -> Result<()> {
    let sb = Sb::idle("dup")?;
    let spec = Sb::spec(&sb.f, &sb.id);
    let err =
        sb.f.rt
            .create(&spec, MainIo::default())
            .err()
            .context("duplicate accepted")?;
    ensure!(err.code() == "sandbox_exists");
    Ok(())
}

fn limits_are_applied() -> Result<()> {
    let sb = Sb::with(
        "limits",
        |s| {
            s.limits = Limits {
                cpu_millis: Some(500),
                memory_bytes: Some(128 << 20),
                pids: Some(100),
                disk_bytes: None,
            }
        },
        MainIo::default(),
    )?;
    let base = format!(
        "/sys/fs/cgroup/%s/warren-test-{}/{}",
        std::process::id(),
        sb.id
    );
    let read = |ctl: &str, file: &str| {
        std::fs::read_to_string(format!("{}/{file}", base.replace("%s", ctl))).unwrap_or_default()
    };
    if Path::new("/sys/fs/cgroup/memory").exists() {
        ensure!(read("memory", "memory.limit_in_bytes").trim() == (128u64 << 20).to_string());
        ensure!(read("cpu", "cpu.cfs_quota_us").trim() == "50000");
        ensure!(read("pids", "pids.max").trim() == "100");
    }
    // The sandbox's processes are in those groups.
    let inside = sb.sh_ok("cat /proc/self/cgroup")?;
    ensure!(
        !inside.contains("warren-test"),
        "cgroup namespace missing: {inside}"
    );
    Ok(())
}

fn sandboxes_survive_a_new_runtime() -> Result<()> {
    // A second runtime over the same data dir (as after a node restart)
    // re-adopts running sandboxes and cleans up ended ones.
    let f = fixture()?;
    let data = tempfile::Builder::new()
        .prefix("warren-rt-recover-")
        .tempdir_in("/var/tmp")?;
    let mut cfg = NativeConfig::new(data.path());
    cfg.cgroup_parent = format!("warren-test-rec-{}", std::process::id());
    let rt1 = NativeRuntime::new(cfg.clone())?;
    let alive = new_id("rec");
    let ended = new_id("recend");
    let mut spec = SandboxSpec::new(alive.clone(), f.rootfs.clone());
    spec.env = f.env.clone();
    rt1.create(&spec, MainIo::default())?;
    let mut spec = SandboxSpec::new(ended.clone(), f.rootfs.clone());
    spec.env = f.env.clone();
    spec.command = Some(vec!["sh".into(), "-c".into(), "exit 5".into()]);
    rt1.create(&spec, MainIo::default())?;
    // Wait for the main command to finish before forgetting rt1.
    let fd = rt1.exit_fd(&ended)?;
    ensure!(warren_sys::pidfd::poll_exit(
        std::os::fd::AsFd::as_fd(&fd),
        Some(Duration::from_secs(10))
    )?);
    drop(fd);
    std::mem::forget(rt1); // as if the node died: no destroy, no cleanup

    let rt2 = NativeRuntime::new(cfg)?;
    let mut rec = rt2.recover()?;
    rec.sort_by_key(|r| format!("{r:?}"));
    ensure!(
        rec.contains(&warren_runtime::Recovered::Running(alive.clone())),
        "{rec:?}"
    );
    ensure!(
        rec.contains(&warren_runtime::Recovered::Ended(
            ended.clone(),
            SandboxExit::Exited { code: 5 }
        )),
        "{rec:?}"
    );
    let mut e = rt2.exec(&alive, &ExecSpec::new(vec!["true".into()]), ExecIo::Null)?;
    ensure!(e.wait()?.status == ExitStatus::Code(0));
    rt2.destroy(&alive)?;
    ensure!(rt2.wait(&alive, Some(Duration::from_secs(1))).is_err());
    ensure!(rt2.list().is_empty());
    Ok(())
}

fn init_binary_is_sealed() -> Result<()> {
    let sb = Sb::idle("seal")?;
    // Inside, init's executable cannot be opened at all (non-dumpable, owned
    // by the host user namespace).
    let (exit, _, _) = sb.sh("cat /proc/1/exe > /dev/null")?;
    ensure!(exit.status != ExitStatus::Code(0), "/proc/1/exe readable");
    // On the host, it is a sealed memfd, not the test binary.
    let info_pid = {
        let dir =
            sb.f.rt
                .config()
                .data_dir
                .join("sandboxes")
                .join(sb.id.as_str());
        let rec = std::fs::read_to_string(dir.join("record.json"))?;
        let v: serde_json::Value = serde_json::from_str(&rec)?;
        v["init_pid"].as_i64().context("init_pid")?
    };
    let exe = std::fs::read_link(format!("/proc/{info_pid}/exe"))?;
    ensure!(
        exe.to_string_lossy().contains("memfd:warren-init"),
        "init exe {exe:?}"
    );
    let w = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{info_pid}/exe"));
    ensure!(w.is_err(), "sealed init binary opened for writing");
    Ok(())
}

// -------------------------------------------------------------- harness ----

fn trial(name: &'static str, f: fn() -> Result<()>) -> Trial {
    Trial::test(name, move || {
        if !warren_testkit::require_root(name) {
            return Ok(());
        }
        f().map_err(|e| Failed::from(format!("{e:#}")))
    })
}

fn main() {
    warren_init::run_if_init();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    let args = Arguments::from_args();
    let tests = vec![
        trial(
            "main_command_output_and_exit_code",
            main_command_output_and_exit_code,
        ),
        trial(
            "main_output_is_captured_in_a_bounded_log",
            main_output_is_captured_in_a_bounded_log,
        ),
        trial(
            "exec_stdout_stderr_exit_codes",
            exec_stdout_stderr_exit_codes,
        ),
        trial("exec_env_workdir_and_user", exec_env_workdir_and_user),
        trial("exec_errors_have_codes", exec_errors_have_codes),
        trial("exec_stdin_and_signals", exec_stdin_and_signals),
        trial("exec_timeout_is_reported", exec_timeout_is_reported),
        trial("pty_exec", pty_exec),
        trial("large_output_is_byte_exact", large_output_is_byte_exact),
        trial("concurrent_execs", concurrent_execs),
        trial("hundred_sandboxes_alive", hundred_sandboxes_alive),
        trial("zombies_are_reaped", zombies_are_reaped),
        trial("memory_hog_is_oom_killed", memory_hog_is_oom_killed),
        trial("fork_bomb_is_contained", fork_bomb_is_contained),
        trial(
            "host_processes_and_mounts_are_invisible",
            host_processes_and_mounts_are_invisible,
        ),
        trial(
            "distinct_host_ids_per_sandbox",
            distinct_host_ids_per_sandbox,
        ),
        trial(
            "hardening_caps_nnp_and_masked_paths",
            hardening_caps_nnp_and_masked_paths,
        ),
        trial("disk_limit_gives_enospc", disk_limit_gives_enospc),
        trial(
            "concurrent_destroys_of_one_sandbox_all_succeed",
            concurrent_destroys_of_one_sandbox_all_succeed,
        ),
        trial(
            "filesystem_is_writable_and_private",
            filesystem_is_writable_and_private,
        ),
        trial(
            "destroy_is_idempotent_and_complete",
            destroy_is_idempotent_and_complete,
        ),
        trial("failed_create_leaves_nothing", failed_create_leaves_nothing),
        trial("duplicate_ids_are_refused", duplicate_ids_are_refused),
        trial("limits_are_applied", limits_are_applied),
        trial(
            "sandboxes_survive_a_new_runtime",
            sandboxes_survive_a_new_runtime,
        ),
        trial("init_binary_is_sealed", init_binary_is_sealed),
    ];
    let conclusion = libtest_mimic::run(&args, tests);
    // The fixture lives in a static, which is never dropped: tear it down by
    // hand so the suite's leak check sees nothing of ours.
    if let Some(Ok(f)) = FIXTURE.get() {
        for id in f.rt.list() {
            let _ = f.rt.destroy(&id);
        }
        let _ = std::fs::remove_dir_all(f._data.path());
    }
    // Remove this process's cgroup subtrees (empty by now).
    for sub in [
        format!("warren-test-{}", std::process::id()),
        format!("warren-test-rec-{}", std::process::id()),
    ] {
        if let Ok(m) = warren_cgroup::CgroupManager::detect("/sys/fs/cgroup", &sub) {
            let _ = m.destroy_parent();
        }
    }
    conclusion.exit()
}
