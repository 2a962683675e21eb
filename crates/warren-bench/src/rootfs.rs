//! The benchmark rootfs: a static busybox plus applet symlinks and a minimal
//! /etc. Every runtime in a comparison runs this same directory.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};

/// Applets the benchmarks run; the build fails if busybox lacks any of them.
pub const REQUIRED_APPLETS: &[&str] = &["sh", "echo", "true", "sleep", "cat"];

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                      nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\nnogroup:x:65534:\n";

/// Finds a statically linked busybox (Debian's busybox-static).
pub fn find_busybox() -> Result<PathBuf> {
    let path = crate::peers::which("busybox")
        .or_else(|| Some(PathBuf::from("/bin/busybox")).filter(|p| p.exists()))
        .context("busybox not found; run scripts/install-deps.sh (package busybox-static)")?;
    let bytes = fs::read(&path).with_context(|| format!("read {}", path.display()))?;
    if !is_static_elf(&bytes).with_context(|| format!("inspect {}", path.display()))? {
        bail!(
            "{} is dynamically linked; the rootfs needs the static build (package busybox-static)",
            path.display()
        );
    }
    Ok(path)
}

/// True if `elf` (a 64-bit little-endian ELF) has no program interpreter.
pub fn is_static_elf(elf: &[u8]) -> Result<bool> {
    const PT_INTERP: u32 = 3;
    ensure!(
        elf.len() >= 64 && elf[..4] == *b"\x7fELF",
        "not an ELF file"
    );
    ensure!(
        elf[4] == 2 && elf[5] == 1,
        "only 64-bit little-endian ELF is supported"
    );
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().expect("8-byte slice")) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    for i in 0..phnum {
        let off = phoff + i * phentsize;
        let p_type = elf
            .get(off..off + 4)
            .context("program header out of range")?;
        if u32::from_le_bytes(p_type.try_into().expect("4-byte slice")) == PT_INTERP {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Builds the rootfs at `dest` (which must not exist yet).
pub fn build(busybox: &Path, dest: &Path) -> Result<()> {
    let list = Command::new(busybox)
        .arg("--list")
        .output()
        .with_context(|| format!("run {} --list", busybox.display()))?;
    ensure!(list.status.success(), "{} --list failed", busybox.display());
    let applets: Vec<&str> = std::str::from_utf8(&list.stdout)
        .context("busybox --list output")?
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && !a.contains('/') && *a != "busybox")
        .collect();
    for required in REQUIRED_APPLETS {
        ensure!(
            applets.contains(required),
            "busybox lacks the '{required}' applet"
        );
    }

    fs::create_dir(dest).with_context(|| format!("create {}", dest.display()))?;
    for dir in [
        "bin", "etc", "dev", "proc", "sys", "tmp", "root", "run", "var",
    ] {
        fs::create_dir(dest.join(dir)).with_context(|| format!("create {dir} in rootfs"))?;
    }
    fs::set_permissions(dest.join("tmp"), fs::Permissions::from_mode(0o1777))?;
    fs::set_permissions(dest.join("root"), fs::Permissions::from_mode(0o700))?;

    let bin = dest.join("bin");
    fs::copy(busybox, bin.join("busybox")).context("copy busybox into rootfs")?;
    fs::set_permissions(bin.join("busybox"), fs::Permissions::from_mode(0o755))?;
    for applet in applets {
        symlink("busybox", bin.join(applet)).with_context(|| format!("link applet {applet}"))?;
    }
    fs::write(dest.join("etc/passwd"), PASSWD)?;
    fs::write(dest.join("etc/group"), GROUP)?;
    fs::write(dest.join("etc/hostname"), "bench\n")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 header with the given program header types.
    fn elf_with(types: &[u32]) -> Vec<u8> {
        let mut v = vec![0u8; 64 + 56 * types.len()];
        v[..4].copy_from_slice(b"\x7fELF");
        v[4] = 2;
        v[5] = 1;
        v[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        v[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        v[0x38..0x3a].copy_from_slice(&(types.len() as u16).to_le_bytes());
        for (i, t) in types.iter().enumerate() {
            let off = 64 + 56 * i;
            v[off..off + 4].copy_from_slice(&t.to_le_bytes());
        }
        v
    }

    #[test]
    fn static_and_dynamic_elf() {
        assert!(is_static_elf(&elf_with(&[1, 1, 2])).expect("parse"));
        assert!(!is_static_elf(&elf_with(&[6, 3, 1])).expect("parse"));
        assert!(is_static_elf(b"#!/bin/sh\n").is_err());
        let mut truncated = elf_with(&[1]);
        truncated[0x38] = 9; // claims 9 headers, has 1
        assert!(is_static_elf(&truncated).is_err());
    }
}
