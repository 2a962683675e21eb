//! The bench's data directory, and its safe removal.
//!
//! Removal never descends into a mount: Warren's host image bind-mounts host
//! directories into sandbox roots under this directory, so a recursive delete
//! across a leftover bind mount would delete host files. Leftover mounts are
//! detached first; if any remain, the directory is kept and reported.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Where the default (temporary) data directory is made.
const DEFAULT_PARENT: &str = "/var/tmp";

pub struct DataDir {
    path: PathBuf,
    remove_on_drop: bool,
}

impl DataDir {
    /// `Some(dir)`: use (and keep) it. `None`: a fresh directory under
    /// /var/tmp, removed on drop.
    pub fn new(dir: Option<PathBuf>) -> Result<Self> {
        match dir {
            Some(dir) => {
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("create {}", dir.display()))?;
                let path = dir
                    .canonicalize()
                    .with_context(|| format!("resolve {}", dir.display()))?;
                Ok(Self {
                    path,
                    remove_on_drop: false,
                })
            }
            None => {
                let path = tempfile::Builder::new()
                    .prefix("warren-bench-")
                    .tempdir_in(DEFAULT_PARENT)
                    .with_context(|| format!("create a data dir under {DEFAULT_PARENT}"))?
                    .keep();
                Ok(Self {
                    path,
                    remove_on_drop: true,
                })
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        if self.remove_on_drop {
            if let Err(e) = remove_unmounted(&self.path) {
                eprintln!("warning: data dir {} kept: {e:#}", self.path.display());
            }
        }
    }
}

/// Detaches mounts left under `dir`, then removes it, unless a mount remains.
fn remove_unmounted(dir: &Path) -> Result<()> {
    let mounts = mounts_under(&read_mountinfo()?, dir);
    for m in &mounts {
        eprintln!("warning: detaching leftover mount {}", m.display());
        if let Err(e) = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH) {
            eprintln!("warning: umount {}: {e}", m.display());
        }
    }
    let left = mounts_under(&read_mountinfo()?, dir);
    if !left.is_empty() {
        anyhow::bail!(
            "{} mounts remain under it, e.g. {}",
            left.len(),
            left[0].display()
        );
    }
    std::fs::remove_dir_all(dir).with_context(|| format!("remove {}", dir.display()))
}

fn read_mountinfo() -> Result<String> {
    std::fs::read_to_string("/proc/self/mountinfo").context("read /proc/self/mountinfo")
}

/// Mount points at or below `dir` in a mountinfo text, deepest first.
pub fn mounts_under(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// Undoes mountinfo's octal escapes (`\040` for space, and so on).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let oct = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(b) = u8::from_str_radix(oct, 8) {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
90 27 0:50 / /var/tmp/wb/runtime/s1/root rw - overlay overlay rw
91 90 254:0 /usr /var/tmp/wb/runtime/s1/root/usr ro - ext4 /dev/vda ro
92 27 0:51 / /var/tmp/wb\\040x/a rw - tmpfs tmpfs rw
93 27 0:52 / /var/tmp/wbx rw - tmpfs tmpfs rw
";

    #[test]
    fn finds_nested_mounts_deepest_first() {
        let m = mounts_under(MOUNTINFO, Path::new("/var/tmp/wb"));
        assert_eq!(
            m,
            vec![
                PathBuf::from("/var/tmp/wb/runtime/s1/root/usr"),
                PathBuf::from("/var/tmp/wb/runtime/s1/root"),
            ]
        );
    }

    #[test]
    fn unescapes_spaces() {
        let m = mounts_under(MOUNTINFO, Path::new("/var/tmp/wb x"));
        assert_eq!(m, vec![PathBuf::from("/var/tmp/wb x/a")]);
        assert_eq!(unescape("a\\134b"), "a\\b");
        assert_eq!(unescape("trailing\\"), "trailing\\");
    }
}
