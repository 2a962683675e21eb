//! The default seccomp policy, in real sandboxes, as root.
//!
//! Each refused system call is made for real from inside a sandbox with
//! python3's ctypes (`libc.syscall`), and the errno is checked; normal
//! programs (shell pipelines, threads, subprocesses, sockets, git) must
//! still work. The decisions themselves are also checked hermetically in
//! `warren-init`'s unit tests (a BPF interpreter over the compiled program).
//!
//! The harness is our own `main` (libtest-mimic) because the test binary is
//! also the sandbox init (see `tests/sandbox.rs`).

mod common;

use anyhow::{ensure, Result};
use common::{trial, Sb};
use warren_runtime::{ExecSpec, ExitStatus, User};

/// Helpers for the python snippets: `sc(nr, *args)` returns (result, errno).
const PY_PRELUDE: &str = r#"
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def sc(nr, *args):
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    return r, ctypes.get_errno()
"#;

// x86_64 system call numbers.
const CALLS: &[(&str, &str, i32)] = &[
    // (name, python call, expected errno)
    ("unshare(CLONE_NEWUSER)", "sc(272, 0x10000000)", libc::EPERM),
    ("unshare(CLONE_NEWNS)", "sc(272, 0x20000)", libc::EPERM),
    ("setns(-1, 0)", "sc(308, -1, 0)", libc::EPERM),
    ("mount", "sc(165, 0, 0, 0, 0, 0)", libc::EPERM),
    ("umount2", "sc(166, 0, 0)", libc::EPERM),
    ("pivot_root", "sc(155, 0, 0)", libc::EPERM),
    ("fsopen", "sc(430, 0, 0)", libc::EPERM),
    ("open_tree", "sc(428, -1, 0, 0)", libc::EPERM),
    ("bpf", "sc(321, 0, 0, 0)", libc::EPERM),
    ("io_uring_setup", "sc(425, 1, 0)", libc::EPERM),
    ("userfaultfd", "sc(323, 0)", libc::EPERM),
    ("keyctl(GET_KEYRING_ID)", "sc(250, 0, -3, 0)", libc::EPERM),
    ("add_key", "sc(248, 0, 0, 0, 0, 0)", libc::EPERM),
    ("perf_event_open", "sc(298, 0, 0, -1, -1, 0)", libc::EPERM),
    ("open_by_handle_at", "sc(304, -1, 0, 0)", libc::EPERM),
    ("name_to_handle_at", "sc(303, -1, 0, 0, 0, 0)", libc::EPERM),
    ("kexec_load", "sc(246, 0, 0, 0, 0)", libc::EPERM),
    ("init_module", "sc(175, 0, 0, 0)", libc::EPERM),
    ("finit_module", "sc(313, -1, 0, 0)", libc::EPERM),
    ("ptrace(PTRACE_TRACEME)", "sc(101, 0, 0, 0, 0)", libc::EPERM),
    ("process_vm_readv", "sc(310, 1, 0, 0, 0, 0, 0)", libc::EPERM),
    ("syslog(READ_ALL)", "sc(103, 3, 0, 0)", libc::EPERM),
    ("settimeofday", "sc(164, 0, 0)", libc::EPERM),
    ("clock_settime", "sc(227, 0, 0)", libc::EPERM),
    ("adjtimex", "sc(159, 0)", libc::EPERM),
    ("iopl", "sc(172, 3)", libc::EPERM),
    ("personality(PER_LINUX32)", "sc(135, 8)", libc::EPERM),
    (
        "personality(ADDR_NO_RANDOMIZE)",
        "sc(135, 0x40000)",
        libc::EPERM,
    ),
    ("clone3", "sc(435, 0, 0)", libc::ENOSYS),
    ("x32 getpid", "sc(0x40000000 | 39)", libc::EPERM),
    ("x32 read", "sc(0x40000000 | 0, 0, 0, 0)", libc::EPERM),
];

fn refused_calls_fail_with_the_policy_errno() -> Result<()> {
    let sb = Sb::idle("secdeny")?;
    let mut script = String::from(PY_PRELUDE);
    for (name, call, _) in CALLS {
        script.push_str(&format!("print({name:?}, {call}[1])\n"));
    }
    // Run as the sandbox's root and as an unprivileged user: the policy
    // does not depend on credentials.
    for user in [
        None,
        Some(User {
            uid: 1000,
            gid: 1000,
            groups: vec![],
        }),
    ] {
        let mut spec = ExecSpec::new(vec!["python3".into(), "-c".into(), script.clone()]);
        if let Some(u) = &user {
            spec.user = u.clone();
        }
        let (exit, out, err) = sb.run(spec)?;
        ensure!(exit.status == ExitStatus::Code(0), "{exit:?}: {out} {err}");
        let lines: Vec<&str> = out.lines().collect();
        ensure!(lines.len() == CALLS.len(), "output: {out}");
        for ((name, _, errno), line) in CALLS.iter().zip(lines) {
            ensure!(
                line == format!("{name} {errno}"),
                "{name} as {user:?}: got {line:?}, expected errno {errno}"
            );
        }
    }
    Ok(())
}

fn clone_with_namespace_flags_is_refused_and_threads_work() -> Result<()> {
    let sb = Sb::idle("secclone")?;
    let script = format!(
        r#"{PY_PRELUDE}
import threading, signal
for flag in (0x20000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000):
    r, e = sc(56, flag | signal.SIGCHLD, 0, 0, 0, 0)
    if r == 0:
        os._exit(0)
    if r > 0:
        os.waitpid(r, 0)
    print(hex(flag), r, e)
# Threads: glibc tries clone3, gets ENOSYS, falls back to clone.
out = []
ts = [threading.Thread(target=out.append, args=(i,)) for i in range(8)]
[t.start() for t in ts]
[t.join() for t in ts]
print("threads", sorted(out) == list(range(8)))
# unshare of non-namespace state, personality query and PER_LINUX.
print("unshare_fs", sc(272, 0x200 | 0x400))
print("personality", sc(135, 0xffffffff)[1], sc(135, 0)[1])
"#
    );
    let out = sb.python(&script)?;
    let lines: Vec<&str> = out.lines().collect();
    ensure!(lines.len() == 10, "output: {out}");
    for line in &lines[..7] {
        ensure!(
            line.ends_with(" -1 1"),
            "clone not refused with EPERM: {line}"
        );
    }
    ensure!(lines[7] == "threads True", "{out}");
    ensure!(lines[8] == "unshare_fs (0, 0)", "{out}");
    ensure!(lines[9] == "personality 0 0", "{out}");
    Ok(())
}

/// i386 system calls (`int 0x80` from a 64-bit process) have another audit
/// arch: the filter kills the process (SIGSYS) instead of letting them by.
fn i386_syscalls_kill_the_process() -> Result<()> {
    let sb = Sb::idle("sec32")?;
    let script = r#"
import ctypes, mmap, sys
# mov eax, 20 (i386 getpid); int 0x80; ret
code = b"\xb8\x14\x00\x00\x00\xcd\x80\xc3"
m = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
m.write(code)
addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
f = ctypes.CFUNCTYPE(ctypes.c_int)(addr)
print("survived", f(), flush=True)
"#;
    let (exit, out, err) = sb.argv(&["python3", "-c", script])?;
    ensure!(
        exit.status == ExitStatus::Signal(libc::SIGSYS),
        "expected SIGSYS, got {exit:?}; stdout: {out}; stderr: {err}"
    );
    Ok(())
}

fn normal_programs_still_work() -> Result<()> {
    let sb = Sb::idle("secok")?;
    let out = sb.ok(&["sh", "-c", "printf 'c\\nb\\na\\n' | sort | head -2"])?;
    ensure!(out == "a\nb\n", "{out:?}");
    ensure!(sb.ok(&["sh", "-c", "ls / | sort | head -1"])?.len() > 1);
    let out = sb.python(
        r#"
import subprocess, threading, socket, os, concurrent.futures
# subprocess (posix_spawn / vfork under the hood)
assert subprocess.run(["sh", "-c", "echo sub"], capture_output=True).stdout == b"sub\n"
# a TCP round trip over loopback, served by a thread
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
def serve():
    c, _ = srv.accept(); c.sendall(c.recv(100).upper()); c.close()
t = threading.Thread(target=serve); t.start()
cl = socket.create_connection(srv.getsockname()); cl.sendall(b"ping")
assert cl.recv(100) == b"PING"; t.join()
# a process pool (fork) and a thread pool
with concurrent.futures.ProcessPoolExecutor(2) as ex:
    assert list(ex.map(abs, [-1, -2])) == [1, 2]
with concurrent.futures.ThreadPoolExecutor(4) as ex:
    assert sum(ex.map(lambda x: x * x, range(10))) == 285
r, w = os.pipe(); pid = os.fork()
if pid == 0:
    os.write(w, b"x"); os._exit(0)
os.waitpid(pid, 0); assert os.read(r, 1) == b"x"
print("ok")
"#,
    )?;
    ensure!(out == "ok\n", "{out:?}");
    let has_git = std::path::Path::new("/usr/local/bin/git").exists()
        || std::path::Path::new("/usr/bin/git").exists();
    // Under CI a missing git fails (scripts/install-deps.sh installs it).
    if warren_testkit::require(
        "normal_programs_still_work (git part)",
        has_git,
        "git not installed",
    ) {
        let out = sb.ok(&[
            "sh",
            "-c",
            "set -e; cd /tmp; git init -q r; cd r; echo hi > f; git add f; \
             git -c user.email=t@example.invalid -c user.name=t commit -qm one; \
             git log --oneline | wc -l",
        ])?;
        ensure!(out.trim() == "1", "git log: {out:?}");
    }
    // unshare(1) reports the refusal and exits; it is not killed.
    let (exit, _, err) = sb.argv(&["unshare", "-U", "true"])?;
    ensure!(
        matches!(exit.status, ExitStatus::Code(c) if c != 0),
        "unshare -U: {exit:?}"
    );
    ensure!(err.contains("Operation not permitted"), "stderr: {err}");
    Ok(())
}

/// Init runs under the filter itself, every exec'd process inherits it
/// (one filter, init's), with no_new_privs, and init keeps serving.
fn init_and_execs_are_filtered() -> Result<()> {
    let sb = Sb::idle("secinit")?;
    let field = |status: &str, name: &str| -> Option<String> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(|v| v.trim().to_string())
    };
    let init = sb.ok(&["cat", "/proc/1/status"])?;
    ensure!(field(&init, "Seccomp").as_deref() == Some("2"), "{init}");
    ensure!(field(&init, "NoNewPrivs").as_deref() == Some("1"), "{init}");
    for _ in 0..5 {
        let own = sb.ok(&["cat", "/proc/self/status"])?;
        ensure!(field(&own, "Seccomp").as_deref() == Some("2"), "{own}");
        ensure!(
            field(&own, "Seccomp_filters").as_deref() == Some("1"),
            "{own}"
        );
        ensure!(field(&own, "NoNewPrivs").as_deref() == Some("1"), "{own}");
    }
    Ok(())
}

fn main() {
    warren_init::run_if_init();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    common::init("sec");
    let args = libtest_mimic::Arguments::from_args();
    let tests = vec![
        trial(
            "refused_calls_fail_with_the_policy_errno",
            refused_calls_fail_with_the_policy_errno,
        ),
        trial(
            "clone_with_namespace_flags_is_refused_and_threads_work",
            clone_with_namespace_flags_is_refused_and_threads_work,
        ),
        trial(
            "i386_syscalls_kill_the_process",
            i386_syscalls_kill_the_process,
        ),
        trial("normal_programs_still_work", normal_programs_still_work),
        trial("init_and_execs_are_filtered", init_and_execs_are_filtered),
    ];
    let conclusion = libtest_mimic::run(&args, tests);
    common::teardown();
    conclusion.exit()
}
