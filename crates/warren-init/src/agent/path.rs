//! Path resolution inside the sandbox's root.

use std::os::fd::{AsFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use warren_proto::agent::{check_path, FsErrorCode};

use super::Fail;

/// How often a resolution that raced with a rename (`EAGAIN` from
/// `RESOLVE_IN_ROOT`) is retried before giving up.
const RACE_RETRIES: usize = 16;

/// Checks a request path (see `warren_proto::agent::check_path`).
pub fn check(path: &[u8]) -> Result<(), Fail> {
    check_path(path).map_err(|m| Fail::new(FsErrorCode::InvalidPath, m))
}

/// Opens `path` (absolute or relative to `dir`) with `flags`, resolving
/// every component inside `dir` as the root: `..` and absolute symlinks
/// stop at it, magic links (`/proc/*/root`, `/proc/*/fd/*`) are refused.
pub fn open_in<Fd: AsFd>(dir: Fd, path: &[u8], flags: OFlag) -> Result<OwnedFd, Errno> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let mut tries = 0;
    loop {
        match openat2(dir.as_fd(), path, how) {
            Err(Errno::EAGAIN) if tries < RACE_RETRIES => tries += 1,
            other => return other,
        }
    }
}

/// Opens a directory to operate in with `*at` calls.
pub fn open_dir<Fd: AsFd>(root: Fd, path: &[u8]) -> Result<OwnedFd, Errno> {
    open_in(root, path, OFlag::O_PATH | OFlag::O_DIRECTORY)
}

/// Splits an absolute path into its parent and final component, ignoring
/// trailing slashes. `None` for `/` and for a final `.` or `..` (no
/// component to operate on). This is the only lexical path step: the parent
/// is then resolved by the kernel.
pub fn split(path: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut end = path.len();
    while end > 0 && path[end - 1] == b'/' {
        end -= 1;
    }
    let trimmed = &path[..end];
    let slash = trimmed.iter().rposition(|b| *b == b'/')?;
    let name = &trimmed[slash + 1..];
    if name.is_empty() || name == b"." || name == b".." {
        return None;
    }
    let parent = &trimmed[..slash];
    Some((if parent.is_empty() { b"/" } else { parent }, name))
}

/// `parent` + `/` + `name`, for reporting paths back (never resolved as a
/// string on the host).
pub fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(parent.len() + 1 + name.len());
    p.extend_from_slice(parent);
    if !p.ends_with(b"/") {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_takes_the_last_component() {
        assert_eq!(split(b"/a/b"), Some((&b"/a"[..], &b"b"[..])));
        assert_eq!(split(b"/a/b//"), Some((&b"/a"[..], &b"b"[..])));
        assert_eq!(split(b"/b"), Some((&b"/"[..], &b"b"[..])));
        assert_eq!(split(b"//b"), Some((&b"/"[..], &b"b"[..])));
        assert_eq!(split(b"/a/\xff"), Some((&b"/a"[..], &b"\xff"[..])));
        for none in [&b"/"[..], b"//", b"/a/..", b"/a/.", b"/.."] {
            assert_eq!(split(none), None, "{none:?}");
        }
    }

    #[test]
    fn join_adds_one_slash() {
        assert_eq!(join(b"/", b"x"), b"/x");
        assert_eq!(join(b"/a", b"x"), b"/a/x");
    }

    #[test]
    fn resolution_stays_in_the_root() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("d")).unwrap();
        std::fs::write(t.path().join("d/f"), b"inside").unwrap();
        std::os::unix::fs::symlink("/", t.path().join("d/up")).unwrap();
        std::os::unix::fs::symlink("../../../../..", t.path().join("d/dots")).unwrap();
        let root =
            nix::fcntl::open(t.path(), OFlag::O_PATH, nix::sys::stat::Mode::empty()).unwrap();
        // Absolute and `..` symlinks land on the given root, not the host's.
        for p in [&b"/d/up/d/f"[..], b"/d/dots/d/f", b"/../../d/f"] {
            let fd = open_in(&root, p, OFlag::O_RDONLY).unwrap();
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::fs::File::from(fd), &mut s).unwrap();
            assert_eq!(s, "inside");
        }
        assert_eq!(
            open_in(&root, b"/d/up/etc/hostname", OFlag::O_RDONLY).err(),
            Some(Errno::ENOENT)
        );
        // Magic links are refused.
        assert_eq!(
            open_in(&root, b"/proc/self/root", OFlag::O_PATH).err(),
            Some(Errno::ENOENT)
        );
    }
}
