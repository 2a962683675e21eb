//! The sandbox's default seccomp policy: reviewed data
//! (`seccomp/default.json`, embedded at build time), compiled into one
//! classic-BPF program with `seccompiler` once per node (the runtime calls
//! [`compile`] and ships [`pack`]ed instructions to every init).
//!
//! The JSON holds two `seccompiler` filters, because a filter has a single
//! match action: `deny_eperm` (most rules: `EPERM`, so programs can fall
//! back) and `deny_enosys` (`clone3`: `ENOSYS`, so libc falls back to
//! `clone`, whose flags the filter can check). They are joined into one
//! program, behind a guard this module adds because `seccompiler` cannot
//! express it: on x86_64, a system call number with the x32 bit
//! (`0x40000000`) is refused with `EPERM`. Every other audit arch (i386
//! through `int 0x80`) is killed by `seccompiler`'s own arch check.
//!
//! Joining: every filter but the last has each `RET ALLOW` rewritten into a
//! jump to the next filter's first instruction, so a call is allowed only if
//! every filter allows it, and refused with the first refusal's errno.
//!
//! Init installs the program on itself after its setup; everything it
//! starts inherits it (`spawn.rs` refuses to start a process before that).
//! `warren_sys::spawn` can also install a program in the child right before
//! `execve`; init does not use that today (see `docs/seccomp.md`).

use std::sync::OnceLock;

use warren_sys::seccomp::{Instruction, SeccompProgram};

/// The policy, as reviewed in the repository.
pub const POLICY_JSON: &str = include_str!("../seccomp/default.json");

/// The filters of [`POLICY_JSON`], in the order they are joined.
const FILTERS: &[&str] = &["deny_enosys", "deny_eperm"];

/// x86_64 system call numbers with this bit set are x32 ABI calls.
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

const BPF_RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
const BPF_JA: u16 = (libc::BPF_JMP | libc::BPF_JA) as u16;

/// Why the policy could not be compiled.
#[derive(Debug)]
pub struct PolicyError(pub String);

impl std::fmt::Display for PolicyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "seccomp policy: {}", self.0)
    }
}

/// Compiles [`POLICY_JSON`] for this machine's architecture.
pub fn compile() -> Result<SeccompProgram, PolicyError> {
    compile_json(POLICY_JSON)
}

fn compile_json(json: &str) -> Result<SeccompProgram, PolicyError> {
    let arch = seccompiler::TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| PolicyError(e.to_string()))?;
    let mut map = seccompiler::compile_from_json(json.as_bytes(), arch)
        .map_err(|e| PolicyError(e.to_string()))?;
    if map.len() != FILTERS.len() {
        return Err(PolicyError(format!(
            "expected exactly the filters {FILTERS:?}"
        )));
    }
    let mut parts: Vec<Vec<Instruction>> = Vec::with_capacity(FILTERS.len() + 1);
    #[cfg(target_arch = "x86_64")]
    parts.push(x32_guard());
    for name in FILTERS {
        let prog = map
            .remove(*name)
            .ok_or_else(|| PolicyError(format!("filter {name} is missing")))?;
        parts.push(
            prog.into_iter()
                .map(|i| Instruction {
                    code: i.code,
                    jt: i.jt,
                    jf: i.jf,
                    k: i.k,
                })
                .collect(),
        );
    }
    SeccompProgram::new(join(parts))
        .map_err(|e| PolicyError(format!("program too long or empty: {e}")))
}

/// `nr >= 0x40000000` → `EPERM`; otherwise fall through.
#[cfg(target_arch = "x86_64")]
fn x32_guard() -> Vec<Instruction> {
    vec![
        // Offset 0 of `struct seccomp_data` is the system call number.
        insn((libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16, 0, 0, 0),
        insn(
            (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16,
            0,
            1,
            X32_SYSCALL_BIT,
        ),
        insn(
            BPF_RET_K,
            0,
            0,
            libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        ),
        // Falling through from the guard: the next part starts here.
    ]
}

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> Instruction {
    Instruction { code, jt, jf, k }
}

/// Joins programs so that each one's `RET ALLOW` continues with the next
/// one; only the last program's `RET ALLOW`s return. A part with no
/// `RET ALLOW` (the guard) simply falls through at its end.
fn join(parts: Vec<Vec<Instruction>>) -> Vec<Instruction> {
    let count = parts.len();
    let mut out = Vec::new();
    for (n, mut part) in parts.into_iter().enumerate() {
        if n + 1 < count {
            let len = part.len();
            for (i, ins) in part.iter_mut().enumerate() {
                if ins.code == BPF_RET_K && ins.k == libc::SECCOMP_RET_ALLOW {
                    // Jump to the instruction right after this part.
                    *ins = insn(BPF_JA, 0, 0, (len - i - 1) as u32);
                }
            }
        }
        out.extend(part);
    }
    out
}

static PROGRAM: OnceLock<SeccompProgram> = OnceLock::new();

/// Packs a program for the bootstrap message: one `u64` per instruction
/// (`code | jt << 16 | jf << 24 | k << 32`). The node compiles the policy
/// once and every init receives the result, instead of each init parsing
/// and compiling the JSON (about 0.3 ms per create).
pub fn pack(prog: &SeccompProgram) -> Vec<u64> {
    prog.instructions()
        .iter()
        .map(|i| {
            u64::from(i.code) | u64::from(i.jt) << 16 | u64::from(i.jf) << 24 | u64::from(i.k) << 32
        })
        .collect()
}

fn unpack(packed: &[u64]) -> Result<SeccompProgram, PolicyError> {
    let insns = packed
        .iter()
        .map(|w| Instruction {
            code: (*w & 0xffff) as u16,
            jt: ((*w >> 16) & 0xff) as u8,
            jf: ((*w >> 24) & 0xff) as u8,
            k: (*w >> 32) as u32,
        })
        .collect();
    SeccompProgram::new(insns).map_err(|e| PolicyError(format!("bad program: {}", e.desc())))
}

/// Installs the sandbox policy on init itself (with `no_new_privs`): the
/// node's pre-compiled program when given, else the embedded policy
/// compiled here. Call once, after setup, before any sandbox process is
/// started; later spawns reuse the program through [`program`].
pub fn install_self(packed: &[u64]) -> Result<(), (Option<i32>, String)> {
    let prog = if packed.is_empty() {
        compile()
    } else {
        unpack(packed)
    }
    .map_err(|e| (None, e.to_string()))?;
    warren_sys::seccomp::install(&prog)
        .map_err(|e| (Some(e as i32), format!("install filter: {}", e.desc())))?;
    let _ = PROGRAM.set(prog);
    Ok(())
}

/// The compiled policy, once [`install_self`] has succeeded (init itself is
/// filtered exactly when this is `Some`).
pub fn program() -> Option<&'static SeccompProgram> {
    PROGRAM.get()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_round_trips() {
        let prog = compile().unwrap();
        let back = unpack(&pack(&prog)).unwrap();
        let a = prog.instructions();
        let b = back.instructions();
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert_eq!((x.code, x.jt, x.jf, x.k), (y.code, y.jt, y.jf, y.k));
        }
    }

    /// Every rule and every argument condition carries a non-empty comment.
    #[test]
    fn every_rule_is_documented() {
        let v: serde_json::Value = serde_json::from_str(POLICY_JSON).unwrap();
        let filters = v.as_object().unwrap();
        assert_eq!(filters.len(), FILTERS.len());
        for (name, f) in filters {
            for rule in f["filter"].as_array().unwrap() {
                let c = rule["comment"].as_str().unwrap_or_default();
                assert!(c.len() > 10, "{name}: {rule} has no comment");
                for arg in rule["args"].as_array().into_iter().flatten() {
                    assert!(arg["comment"].is_string(), "{name}: {arg} has no comment");
                }
            }
        }
    }

    // A classic-BPF interpreter for the subset seccompiler and the guard
    // emit, to check decisions hermetically (the real kernel is exercised
    // by warren-runtime's `seccomp` tests).
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    const AUDIT_ARCH_I386: u32 = 0x4000_0003;

    fn run(prog: &[Instruction], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        // struct seccomp_data: nr, arch, instruction_pointer, args[6].
        let mut data = Vec::with_capacity(64);
        data.extend(nr.to_ne_bytes());
        data.extend(arch.to_ne_bytes());
        data.extend(0u64.to_ne_bytes());
        for a in args {
            data.extend(a.to_ne_bytes());
        }
        let (mut acc, mut pc) = (0u32, 0usize);
        loop {
            let i = prog[pc];
            let class = u32::from(i.code) & 0x07;
            match class {
                c if c == libc::BPF_LD => {
                    let off = i.k as usize;
                    acc = u32::from_ne_bytes(data[off..off + 4].try_into().unwrap());
                    pc += 1;
                }
                c if c == libc::BPF_ALU => {
                    assert_eq!(
                        u32::from(i.code),
                        libc::BPF_ALU | libc::BPF_AND | libc::BPF_K
                    );
                    acc &= i.k;
                    pc += 1;
                }
                c if c == libc::BPF_RET => return i.k,
                c if c == libc::BPF_JMP => {
                    let op = u32::from(i.code) & 0xf0;
                    if op == libc::BPF_JA {
                        pc += 1 + i.k as usize;
                        continue;
                    }
                    let taken = match op {
                        o if o == libc::BPF_JEQ => acc == i.k,
                        o if o == libc::BPF_JGE => acc >= i.k,
                        o if o == libc::BPF_JGT => acc > i.k,
                        o if o == libc::BPF_JSET => acc & i.k != 0,
                        o => panic!("jump op {o:#x}"),
                    };
                    pc += 1 + usize::from(if taken { i.jt } else { i.jf });
                }
                c => panic!("instruction class {c:#x}"),
            }
        }
    }

    fn eperm() -> u32 {
        libc::SECCOMP_RET_ERRNO | libc::EPERM as u32
    }

    fn call(prog: &SeccompProgram, nr: libc::c_long, arg0: u64) -> u32 {
        run(
            prog.instructions(),
            AUDIT_ARCH_X86_64,
            nr as u32,
            [arg0, 0, 0, 0, 0, 0],
        )
    }

    #[test]
    fn decisions() {
        let p = compile().unwrap();
        let allow = libc::SECCOMP_RET_ALLOW;
        for nr in [
            libc::SYS_io_uring_setup,
            libc::SYS_bpf,
            libc::SYS_perf_event_open,
            libc::SYS_userfaultfd,
            libc::SYS_kexec_load,
            libc::SYS_init_module,
            libc::SYS_finit_module,
            libc::SYS_keyctl,
            libc::SYS_open_by_handle_at,
            libc::SYS_mount,
            libc::SYS_setns,
            libc::SYS_ptrace,
            libc::SYS_syslog,
            libc::SYS_settimeofday,
            libc::SYS_iopl,
            libc::SYS_fsopen,
        ] {
            assert_eq!(call(&p, nr, 0), eperm(), "syscall {nr}");
        }
        assert_eq!(
            call(&p, libc::SYS_clone3, 0),
            libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32
        );
        for nr in [
            libc::SYS_read,
            libc::SYS_openat,
            libc::SYS_execve,
            libc::SYS_chroot,
            libc::SYS_getpid,
        ] {
            assert_eq!(call(&p, nr, 0), allow, "syscall {nr}");
        }
        // clone: threads and fork pass, any namespace flag is refused.
        let thread = (libc::CLONE_VM
            | libc::CLONE_FS
            | libc::CLONE_FILES
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD
            | libc::CLONE_SYSVSEM
            | libc::CLONE_SETTLS
            | libc::CLONE_PARENT_SETTID
            | libc::CLONE_CHILD_CLEARTID) as u64;
        assert_eq!(call(&p, libc::SYS_clone, thread), allow);
        assert_eq!(call(&p, libc::SYS_clone, libc::SIGCHLD as u64), allow);
        for flag in [
            libc::CLONE_NEWNS,
            libc::CLONE_NEWCGROUP,
            libc::CLONE_NEWUTS,
            libc::CLONE_NEWIPC,
            libc::CLONE_NEWUSER,
            libc::CLONE_NEWPID,
            libc::CLONE_NEWNET,
        ] {
            let f = (flag | libc::SIGCHLD) as u64;
            assert_eq!(call(&p, libc::SYS_clone, f), eperm(), "clone {flag:#x}");
            assert_eq!(call(&p, libc::SYS_unshare, f), eperm(), "unshare {flag:#x}");
        }
        assert_eq!(call(&p, libc::SYS_unshare, 0x80), eperm(), "CLONE_NEWTIME");
        // unshare of non-namespace state stays allowed.
        let fs_files = (libc::CLONE_FS | libc::CLONE_FILES) as u64;
        assert_eq!(call(&p, libc::SYS_unshare, fs_files), allow);
        // personality: PER_LINUX and the query only.
        assert_eq!(call(&p, libc::SYS_personality, 0), allow);
        assert_eq!(call(&p, libc::SYS_personality, 0xffff_ffff), allow);
        assert_eq!(call(&p, libc::SYS_personality, 0x0008), eperm());
        assert_eq!(call(&p, libc::SYS_personality, 0x0040_0000), eperm());
        // x32 and i386.
        assert_eq!(call(&p, 0x4000_0000 | libc::SYS_getpid, 0), eperm());
        assert_eq!(call(&p, 0x4000_0000 | libc::SYS_read, 0), eperm());
        let i386_getpid = run(p.instructions(), AUDIT_ARCH_I386, 20, [0; 6]);
        assert_eq!(i386_getpid, libc::SECCOMP_RET_KILL_PROCESS);
    }

    #[test]
    fn program_size() {
        // 356 instructions today; the kernel's limit is 4096.
        let p = compile().unwrap();
        assert!(p.instructions().len() < 1000, "{}", p.instructions().len());
    }

    #[test]
    fn join_rewrites_allow_into_fall_through() {
        let ret = |k| insn(BPF_RET_K, 0, 0, k);
        let a = vec![ret(libc::SECCOMP_RET_ALLOW), ret(eperm())];
        let b = vec![ret(libc::SECCOMP_RET_ALLOW)];
        let j = join(vec![a, b]);
        assert_eq!(j.len(), 3);
        assert_eq!((j[0].code, j[0].k), (BPF_JA, 1));
        assert_eq!(
            run(&j, AUDIT_ARCH_X86_64, 0, [0; 6]),
            libc::SECCOMP_RET_ALLOW
        );
    }

    #[test]
    fn unknown_or_missing_filters_are_refused() {
        let one = r#"{"deny_eperm": {"mismatch_action": "allow",
            "match_action": {"errno": 1}, "filter": []}}"#;
        assert!(compile_json(one).is_err());
        assert!(compile_json("{}").is_err());
    }
}
