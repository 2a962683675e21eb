//! Escape and abuse attempts, each a real program run inside a real sandbox.
//! Every attempt must be contained, and the host must be unchanged
//! afterwards. Probes are non-destructive: a write test writes back the
//! value a file already holds, so a bug fails the test instead of changing
//! this machine.

mod common;

use std::net::TcpListener;

use anyhow::{ensure, Result};
use common::{trial, Sb};
use warren_runtime::ExitStatus;
use warren_runtime::Runtime;

/// A marker that exists on the host but must never be visible inside.
fn host_marker() -> Result<tempfile::TempDir> {
    let d = tempfile::Builder::new()
        .prefix("warren-escape-marker-")
        .tempdir_in("/var/tmp")?;
    std::fs::write(d.path().join("secret"), "host secret")?;
    Ok(d)
}

/// Runs `script` and requires it to fail (non-zero), returning its output.
fn must_fail(sb: &Sb, what: &str, script: &str) -> Result<String> {
    let (exit, out, err) = sb.sh(script)?;
    ensure!(
        exit.status != ExitStatus::Code(0),
        "{what}: succeeded; stdout {out:?} stderr {err:?}"
    );
    Ok(format!("{out}{err}"))
}

fn filesystem_escapes() -> Result<()> {
    let marker = host_marker()?;
    let secret = marker.path().join("secret");
    let secret = secret.to_string_lossy();
    let sb = Sb::idle("esc-fs")?;
    // Paths to the host's files do not resolve inside.
    must_fail(&sb, "host path", &format!("cat {secret}"))?;
    // .. from the root stays at the root.
    must_fail(&sb, "dotdot", &format!("cd /../../../..; cat ./{secret}"))?;
    // An absolute symlink to / leads to the sandbox's own root.
    must_fail(
        &sb,
        "symlink to /",
        &format!("ln -s / /tmp/r && cat /tmp/r{secret}"),
    )?;
    // Init's root, cwd and exe are not reachable.
    must_fail(&sb, "/proc/1/root", "ls /proc/1/root/")?;
    must_fail(&sb, "/proc/1/cwd", "ls /proc/1/cwd/")?;
    must_fail(&sb, "/proc/1/exe", "cat /proc/1/exe > /dev/null")?;
    must_fail(&sb, "/proc/1/mem", "head -c 1 /proc/1/mem > /dev/null")?;
    // The mount table shows no host paths.
    let mounts = sb.sh_ok("cat /proc/self/mountinfo")?;
    ensure!(
        !mounts.contains("/var/tmp") && !mounts.contains("/work"),
        "{mounts}"
    );
    // Nothing in the sandbox can write the host's /usr (read-only bind).
    must_fail(&sb, "write /usr", "echo x > /usr/warren-escape-probe")?;
    ensure!(!std::path::Path::new("/usr/warren-escape-probe").exists());
    // chmod/chown on read-only host binds.
    must_fail(&sb, "chmod /usr/bin/env", "chmod 4777 /usr/bin/env")?;
    must_fail(&sb, "chown /usr/bin/env", "chown 0:0 /usr/bin/env")?;
    Ok(())
}

/// Host id ranges: every live sandbox maps its ids 0-65535 to its own host
/// range above 2^30, no two sandboxes share a host id, a process inside
/// runs as that range's host uid, and nothing in the host's system
/// directories is owned by an id of any range.
fn host_id_ranges_are_private() -> Result<()> {
    const SPAN: u64 = 65536;
    let sbs = (0..6)
        .map(|_| Sb::idle("esc-ids"))
        .collect::<Result<Vec<_>>>()?;
    let cfg = sbs[0].f.rt.config();
    let (lo, hi) = (
        u64::from(cfg.id_base),
        u64::from(cfg.id_base) + u64::from(cfg.id_slots) * SPAN,
    );
    let mut starts = Vec::new();
    for sb in &sbs {
        for map in ["uid_map", "gid_map"] {
            let text = std::fs::read_to_string(format!("/proc/{}/{map}", sb.info.init_pid))?;
            let f: Vec<u64> = text
                .split_whitespace()
                .map(|x| x.parse())
                .collect::<Result<_, _>>()?;
            ensure!(
                f.len() == 3 && f[0] == 0 && f[2] == SPAN,
                "{map} of {}: {text:?}",
                sb.id
            );
            ensure!(
                f[1] >= lo && f[1] + SPAN <= hi && f[1] == u64::from(sb.info.host_id_base),
                "{map} of {} maps to {} outside [{lo}, {hi})",
                sb.id,
                f[1]
            );
        }
        starts.push(u64::from(sb.info.host_id_base));
        // A process inside runs as uid 0 there and as the range's first id
        // on the host.
        let inside = sb.sh_ok("id -u; sleep 0.2 & echo $!; wait")?;
        let mut lines = inside.lines();
        ensure!(lines.next() == Some("0"), "{inside}");
        let status = std::fs::read_to_string(format!("/proc/{}/status", sb.info.init_pid))?;
        let host_uid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|v| v.split_whitespace().next())
            .unwrap_or("");
        ensure!(
            host_uid == u64::from(sb.info.host_id_base).to_string(),
            "init of {} runs as host uid {host_uid}",
            sb.id
        );
    }
    starts.sort();
    for w in starts.windows(2) {
        ensure!(w[0] + SPAN <= w[1], "ranges overlap: {starts:?}");
    }
    // Nothing the host owns belongs to a sandbox range (bounded walk of the
    // system directories; Warren's own data directories are excluded by
    // not being listed: a sandbox's writable layer is its own).
    let out = std::process::Command::new("timeout")
        .args(["120", "find"])
        .args(["/etc", "/usr", "/root", "/home", "/opt", "/srv", "/boot"])
        .args(["-xdev", "("])
        .args(["-uid", &format!("+{}", lo - 1), "-uid", &format!("-{hi}")])
        .args([
            "-o",
            "-gid",
            &format!("+{}", lo - 1),
            "-gid",
            &format!("-{hi}"),
        ])
        .args([")", "-print", "-quit"])
        .output()?;
    let found = String::from_utf8_lossy(&out.stdout);
    ensure!(
        found.trim().is_empty(),
        "host file owned by a sandbox id: {found}"
    );
    ensure!(out.status.code() != Some(124), "the owner walk timed out");
    Ok(())
}

fn mount_and_device_escapes() -> Result<()> {
    let sb = Sb::idle("esc-mnt")?;
    must_fail(&sb, "mount tmpfs", "mount -t tmpfs none /mnt")?;
    must_fail(&sb, "remount / rw", "mount -o remount,rw /")?;
    must_fail(&sb, "umount /proc", "umount /proc")?;
    must_fail(&sb, "bind the root", "mount --bind / /mnt")?;
    must_fail(&sb, "mknod a disk", "mknod /tmp/sda b 8 0")?;
    must_fail(&sb, "mknod mem", "mknod /tmp/mem c 1 1")?;
    // No host block devices exist in /dev.
    let devs = sb.sh_ok("ls /dev")?;
    for d in ["vda", "sda", "nvme0n1", "mem", "kmem", "port"] {
        ensure!(
            !devs.split_whitespace().any(|x| x == d),
            "/dev/{d} present: {devs}"
        );
    }
    must_fail(&sb, "new user namespace", "unshare -U true")?;
    must_fail(&sb, "new mount namespace", "unshare -m true")?;
    must_fail(&sb, "setns into init's net", "nsenter -t 1 -n true")?;
    Ok(())
}

fn kernel_interfaces_are_closed() -> Result<()> {
    let sb = Sb::idle("esc-kern")?;
    // Writing back the current value must still be refused.
    for f in [
        "/proc/sys/kernel/core_pattern",
        "/proc/sys/kernel/hostname",
        "/proc/sys/vm/overcommit_memory",
        "/proc/sys/net/ipv4/ip_forward",
    ] {
        must_fail(
            &sb,
            f,
            &format!("v=$(cat {f}) && printf '%s\\n' \"$v\" > {f}"),
        )?;
    }
    must_fail(&sb, "sysrq-trigger", "echo h > /proc/sysrq-trigger")?;
    ensure!(sb.sh_ok("cat /proc/kcore 2>/dev/null | wc -c")?.trim() == "0");
    must_fail(&sb, "kernel log", "dmesg")?;
    // Hostname and clock: setting them to their current value is refused,
    // and the host's are unchanged.
    let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname")?;
    must_fail(&sb, "sethostname", "hostname \"$(hostname)\"")?;
    must_fail(&sb, "domainname", "domainname \"$(domainname)\"")?;
    must_fail(&sb, "set the clock", "date -s \"$(date)\"")?;
    ensure!(std::fs::read_to_string("/proc/sys/kernel/hostname")? == host_name);
    Ok(())
}

fn processes_and_signals_are_isolated() -> Result<()> {
    let a = Sb::idle("esc-pa")?;
    let b = Sb::idle("esc-pb")?;
    // b runs a long process; a must not see or signal it.
    let mut e = b.f.rt.exec(
        &b.id,
        &warren_runtime::ExecSpec::new(vec!["sleep".into(), "300".into()]),
        warren_runtime::ExecIo::Null,
    )?;
    let procs = a.sh_ok("ps -eo pid,comm 2>/dev/null || ls /proc")?;
    ensure!(!procs.contains("sleep"), "a sees b's process: {procs}");
    // Host pids do not exist inside: signalling one fails.
    let host_pid = std::process::id();
    must_fail(&a, "signal a host pid", &format!("kill -0 {host_pid}"))?;
    // ptrace of init is refused.
    must_fail(
        &a,
        "ptrace init",
        "python3 -c \"import ctypes,sys; l=ctypes.CDLL(None,use_errno=True); sys.exit(0 if l.ptrace(16,1,0,0)==0 else 1)\"",
    )?;
    // init cannot be killed from inside.
    let _ = a.sh("kill -9 1")?;
    ensure!(a.sh_ok("echo alive")? == "alive\n", "init died");
    e.signal(9)?;
    let _ = e.wait()?;
    Ok(())
}

fn network_is_isolated() -> Result<()> {
    // A service on the host's loopback (like the Warren API) is not
    // reachable: the sandbox's loopback is its own.
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let sb = Sb::idle("esc-net")?;
    must_fail(
        &sb,
        "connect to host loopback",
        &format!("python3 -c \"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)\""),
    )?;
    // Raw and packet sockets are refused.
    must_fail(
        &sb,
        "raw socket",
        "python3 -c \"import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)\"",
    )?;
    must_fail(
        &sb,
        "packet socket",
        "python3 -c \"import socket; socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\"",
    )?;
    // Only lo exists.
    let links = sb.sh_ok("ls /sys/class/net")?;
    ensure!(
        links.split_whitespace().collect::<Vec<_>>() == vec!["lo"],
        "{links}"
    );
    drop(listener);
    Ok(())
}

fn abuse_is_bounded() -> Result<()> {
    // A huge argv is refused with a clear error, not a crash.
    let sb = Sb::idle("esc-abuse")?;
    let huge = "x".repeat(3 * 1024 * 1024);
    let err =
        sb.f.rt
            .exec(
                &sb.id,
                &warren_runtime::ExecSpec::new(vec!["echo".into(), huge]),
                warren_runtime::ExecIo::Null,
            )
            .err();
    ensure!(
        err.as_ref().map(|e| e.code()) == Some("invalid_argument"),
        "{:?}",
        err.map(|e| e.to_string())
    );
    // An output flood is delivered to whoever reads it, at the reader's
    // pace (pipes), and the sandbox stays usable.
    let out = sb.sh_ok("head -c 50000000 /dev/zero | wc -c")?;
    ensure!(out.trim() == "50000000", "{out}");
    // setuid binaries gain nothing (no_new_privs, nosuid binds).
    let mut spec = warren_runtime::ExecSpec::new(vec![
        "sh".into(),
        "-c".into(),
        "su -c id root </dev/null 2>&1; id -u".into(),
    ]);
    spec.user.uid = 1000;
    spec.user.gid = 1000;
    let (_, out, _) = sb.run(spec)?;
    ensure!(
        out.trim_end().ends_with("1000") && !out.contains("uid=0"),
        "{out}"
    );
    Ok(())
}

fn main() {
    warren_init::run_if_init();
    common::init("esc");
    let args = libtest_mimic::Arguments::from_args();
    // Every probe runs against both sandbox shapes: the default one and
    // the checkpointable one (whose user namespace owns its other
    // namespaces; docs/threat-model.md).
    type Probe = (&'static str, fn() -> Result<()>);
    let probes: [Probe; 7] = [
        ("filesystem_escapes", filesystem_escapes),
        ("mount_and_device_escapes", mount_and_device_escapes),
        ("host_id_ranges_are_private", host_id_ranges_are_private),
        ("kernel_interfaces_are_closed", kernel_interfaces_are_closed),
        (
            "processes_and_signals_are_isolated",
            processes_and_signals_are_isolated,
        ),
        ("network_is_isolated", network_is_isolated),
        ("abuse_is_bounded", abuse_is_bounded),
    ];
    let mut tests = Vec::new();
    for (name, f) in probes {
        tests.push(trial(name, f));
        tests.push(common::trial_checkpointable(name, f));
    }
    let conclusion = libtest_mimic::run(&args, tests);
    common::teardown();
    conclusion.exit()
}
