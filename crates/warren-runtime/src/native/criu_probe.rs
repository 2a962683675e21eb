//! What the CRIU binary takes of Warren's own options (probed once per
//! binary), and CRIU's kernel-feature cache ("kdat") on a tmpfs Warren
//! controls.
//!
//! Every `criu` run starts by probing the kernel's features (~20 ms of a
//! restore here). Stock CRIU caches the result in `/run/criu.kdat`, but
//! only when `/run` is a tmpfs (so that a reboot, perhaps into another
//! kernel, drops it); where `/run` is not one, every run probes again.
//! Warren's CRIU patch 0003 (`scripts/install-criu.sh`) adds
//! `--kdat-cache-dir DIR`, which Warren points at a root-only directory on
//! a tmpfs that is already there ([`KDAT_DIRS`]: `/run/warren/criu` where
//! `/run` is a tmpfs, else `/dev/shm/warren-criu`), so a reboot drops the
//! cache and nothing is mounted on the host for it. The patched CRIU
//! reads the cache only from a tmpfs, replaces it atomically (each run
//! writes its own temporary file, then renames it), and rejects a cache
//! written by another CRIU build. Patches 0004 and 0005 add
//! `--action-script-only` and `--tmpfs-no-gzip` ([`Criu`]). A CRIU without
//! these options (stock, or an older Warren build) runs as before, without
//! them.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};

use tracing::warn;

use super::checkpoint::criu_version;
use crate::RuntimeError;

/// Where CRIU keeps its kernel-feature cache for Warren, in order of
/// preference: (the tmpfs that must hold it, the directory).
const KDAT_DIRS: &[(&str, &str)] = &[
    ("/run", "/run/warren/criu"),
    ("/dev/shm", "/dev/shm/warren-criu"),
];

/// What a CRIU binary is and takes.
#[derive(Clone, Debug)]
pub(super) struct Criu {
    /// `criu --version`'s version (4.x).
    pub version: String,
    /// Arguments every `criu dump` and `criu restore` gets: the cache
    /// directory (when the tmpfs is there) and `--tmpfs-no-gzip` (patch
    /// 0005: the sandbox's tmpfs mounts as plain tars, no gzip process
    /// on either side), when the binary takes them.
    pub args: Vec<String>,
    /// Whether it takes `--action-script-only ACTIONS` (patch 0004): run
    /// the action script only for those actions, not a fork and exec for
    /// each of the seven a restore goes through.
    pub script_only: bool,
}

/// [`criu_version`] of `criu`, and which of Warren's options it takes.
/// Remembered per binary (its device, inode, size and times): a
/// reinstalled CRIU is probed again.
pub(super) fn probe(criu: &Path) -> Result<Criu, RuntimeError> {
    static SEEN: OnceLock<Mutex<HashMap<PathBuf, (Identity, Criu)>>> = OnceLock::new();
    let seen = SEEN.get_or_init(Default::default);
    // A name looked up in PATH has no identity here: probed every time.
    let id = fs::metadata(criu).ok().map(|m| Identity::of(&m));
    if let Some(id) = id {
        if let Some((known, c)) = seen.lock().expect("criu probe lock poisoned").get(criu) {
            if *known == id {
                return Ok(c.clone());
            }
        }
    }
    let kdat = kdat_dir().and_then(|d| d.to_str().map(str::to_string));
    let options = [
        "--kdat-cache-dir",
        KDAT_DIRS[0].1,
        "--action-script-only",
        "setup-namespaces",
        "--tmpfs-no-gzip",
    ];
    let c = match version_with(criu, &options) {
        Some(version) => Criu {
            version,
            args: kdat
                .map(|d| vec!["--kdat-cache-dir".into(), d])
                .into_iter()
                .flatten()
                .chain(["--tmpfs-no-gzip".into()])
                .collect(),
            script_only: true,
        },
        None => Criu {
            version: criu_version(criu)?,
            args: Vec::new(),
            script_only: false,
        },
    };
    if let Some(id) = id {
        seen.lock()
            .expect("criu probe lock poisoned")
            .insert(criu.to_path_buf(), (id, c.clone()));
    }
    Ok(c)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Identity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Identity {
    fn of(m: &fs::Metadata) -> Self {
        Identity {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

/// `criu OPTIONS --version`: its 4.x version when it takes the options
/// (CRIU refuses an unknown option before it reads `--version`).
fn version_with(criu: &Path, options: &[&str]) -> Option<String> {
    let out = Command::new(criu)
        .args(options)
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Version:"))
        .map(|v| v.trim().to_string())
        .filter(|v| v.starts_with("4."))
}

/// The first of [`KDAT_DIRS`] whose parent is a tmpfs and that is (or
/// could be made) a directory only root can use; `None` (logged) when none
/// is.
fn kdat_dir() -> Option<PathBuf> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        for (fs_root, dir) in KDAT_DIRS {
            if !is_tmpfs(Path::new(fs_root)).unwrap_or(false) {
                continue;
            }
            match root_only_dir(Path::new(dir)) {
                Ok(()) => return Some(PathBuf::from(dir)),
                Err(e) => warn!(error = %e, dir, "cannot keep CRIU's kernel-feature cache here"),
            }
        }
        warn!("no tmpfs for CRIU's kernel-feature cache; every criu run probes the kernel");
        None
    })
    .clone()
}

/// Creates `dir` (mode 0700) if missing, and checks that it is a real
/// directory owned by root that nobody else can enter: `/dev/shm` is
/// writable by everyone, and a directory someone else made first is not
/// used.
fn root_only_dir(dir: &Path) -> std::io::Result<()> {
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let m = fs::symlink_metadata(dir)?;
    if !m.is_dir() || m.uid() != 0 {
        return Err(std::io::Error::other("not a directory owned by root"));
    }
    if m.mode() & 0o077 != 0 {
        fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    }
    Ok(())
}

fn is_tmpfs(dir: &Path) -> std::io::Result<bool> {
    let s = nix::sys::statfs::statfs(dir)?;
    Ok(s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A fake `criu` that, like CRIU, refuses an option it does not know
    /// before it prints its version.
    fn fake_criu(dir: &Path, name: &str, known: &str) -> PathBuf {
        let p = dir.join(name);
        let script = format!(
            "#!/bin/sh\n\
             for a; do case \"$a\" in --version) echo 'Version: 4.1.1'; exit 0;; \
             --*) case ' {known} ' in *\" $a \"*) ;; *) exit 1;; esac;; esac; done\n\
             exit 1\n"
        );
        fs::write(&p, script).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn options_are_used_only_when_criu_takes_them() {
        let d = tempfile::tempdir().unwrap();
        let stock = fake_criu(d.path(), "stock", "");
        assert_eq!(version_with(&stock, &[]).as_deref(), Some("4.1.1"));
        assert_eq!(version_with(&stock, &["--tmpfs-no-gzip"]), None);
        let patched = fake_criu(
            d.path(),
            "patched",
            "--kdat-cache-dir --action-script-only --tmpfs-no-gzip",
        );
        let options = [
            "--kdat-cache-dir",
            "--action-script-only",
            "--tmpfs-no-gzip",
        ];
        assert_eq!(version_with(&patched, &options).as_deref(), Some("4.1.1"));
        assert_eq!(version_with(&patched, &["--no-such-option"]), None);
    }
}
