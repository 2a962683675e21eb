//! Installing a seccomp-BPF program.
//!
//! This module only *applies* a program that was compiled elsewhere (the
//! policy is data in `warren-init`, compiled with `seccompiler`); it decides
//! nothing about which system calls are allowed.
//!
//! A [`SeccompProgram`] owns its instructions, so it can be prepared in a
//! parent and installed in a `CLONE_VM` child without allocating there (see
//! [`crate::spawn::SpawnSpec::seccomp`]). Filters are inherited across
//! `fork`, `clone` and `execve` and can never be removed; a second filter
//! stacks on top of the first (both run, the most restrictive answer wins).

use crate::{Errno, Result};

/// Most instructions the kernel accepts in one program (`BPF_MAXINSNS`).
pub const MAX_INSTRUCTIONS: usize = 4096;

/// One classic-BPF instruction (`struct sock_filter`).
pub type Instruction = libc::sock_filter;

/// A validated, non-empty classic-BPF program of at most
/// [`MAX_INSTRUCTIONS`] instructions.
#[derive(Clone)]
pub struct SeccompProgram {
    insns: Box<[Instruction]>,
}

impl std::fmt::Debug for SeccompProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeccompProgram")
            .field("instructions", &self.insns.len())
            .finish()
    }
}

impl SeccompProgram {
    /// Wraps `insns`; `EINVAL` if empty or longer than the kernel allows.
    /// (The kernel verifies the program itself when it is installed.)
    pub fn new(insns: Vec<Instruction>) -> Result<Self> {
        if insns.is_empty() || insns.len() > MAX_INSTRUCTIONS {
            return Err(Errno::EINVAL);
        }
        Ok(SeccompProgram {
            insns: insns.into_boxed_slice(),
        })
    }

    /// The instructions.
    pub fn instructions(&self) -> &[Instruction] {
        &self.insns
    }

    /// The `sock_fprog` describing this program. It points into `self`'s
    /// heap allocation (which never moves), so it is valid while `self` is.
    pub(crate) fn fprog(&self) -> libc::sock_fprog {
        libc::sock_fprog {
            // `new` bounds the length by MAX_INSTRUCTIONS (< u16::MAX).
            len: self.insns.len() as libc::c_ushort,
            filter: self.insns.as_ptr() as *mut Instruction,
        }
    }
}

/// Sets `no_new_privs` on the calling thread: `execve` can no longer grant
/// privileges (setuid/setgid bits, file capabilities), and an unprivileged
/// thread may install seccomp filters. It cannot be unset and is inherited.
pub fn set_no_new_privs() -> Result<()> {
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0) };
    if rc < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// Sets `no_new_privs`, then installs `program` as a seccomp filter on the
/// calling thread (`seccomp(SECCOMP_SET_MODE_FILTER)`, no flags: callers
/// are single-threaded when they filter themselves, so no `TSYNC`).
pub fn install(program: &SeccompProgram) -> Result<()> {
    set_no_new_privs()?;
    let fprog = program.fprog();
    // SAFETY: `fprog` points to `program`'s instructions, alive for the whole
    // call; the kernel copies the program before returning.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER as libc::c_long,
            0 as libc::c_long,
            &fprog as *const libc::sock_fprog,
        )
    };
    if rc < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stmt(code: u32, k: u32) -> Instruction {
        Instruction {
            code: code as u16,
            jt: 0,
            jf: 0,
            k,
        }
    }

    #[test]
    fn program_length_is_bounded() {
        assert_eq!(SeccompProgram::new(vec![]).unwrap_err(), Errno::EINVAL);
        let ret_allow = stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW);
        assert!(SeccompProgram::new(vec![ret_allow; MAX_INSTRUCTIONS]).is_ok());
        assert_eq!(
            SeccompProgram::new(vec![ret_allow; MAX_INSTRUCTIONS + 1]).unwrap_err(),
            Errno::EINVAL
        );
        let p = SeccompProgram::new(vec![ret_allow; 3]).unwrap();
        assert_eq!(p.fprog().len, 3);
        assert_eq!(p.instructions().len(), 3);
    }

    /// Installing a filter changes this process for good, so it runs in a
    /// forked child: a filter that answers `getppid` with `EPERM` (6).
    #[test]
    fn install_in_forked_child() {
        let prog = SeccompProgram::new(vec![
            stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0),
            Instruction {
                code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
                jt: 0,
                jf: 1,
                k: libc::SYS_getppid as u32,
            },
            stmt(
                libc::BPF_RET | libc::BPF_K,
                libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
            ),
            stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
        ])
        .unwrap();
        // SAFETY: the child only makes raw system calls and exits with
        // `_exit`; it does not return into the test harness.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let code = match install(&prog) {
                Err(_) => 1,
                Ok(()) => {
                    // SAFETY: getppid and getpid take no arguments.
                    let denied = unsafe { libc::syscall(libc::SYS_getppid) } == -1
                        && Errno::last() == Errno::EPERM;
                    // SAFETY: as above.
                    let allowed = unsafe { libc::syscall(libc::SYS_getpid) } > 0;
                    if denied && allowed {
                        0
                    } else {
                        2
                    }
                }
            };
            // SAFETY: ends the forked child without running the parent's
            // atexit handlers or destructors.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for our own child with a valid status pointer.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status), "status {status:#x}");
        assert_eq!(libc::WEXITSTATUS(status), 0);
    }
}
