//! Resolves a user spec (`""`, `root`, `1000`, `1000:1000`, `node`,
//! `node:staff`, `1000:staff`) to numeric ids, Docker-style, against the
//! image's own `/etc/passwd` and `/etc/group`.
//!
//! Image layers are hostile input read by host root, so the two files are
//! opened component by component with `O_NOFOLLOW` below each layer's
//! directory (a symlinked `/etc` or `/etc/passwd` is refused, not
//! followed), must be regular files, and are read up to a size cap. The
//! topmost layer that has the file wins; an overlay whiteout or an opaque
//! `/etc` above it hides lower copies, as overlayfs would.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fstat, Mode, SFlag};
use warren_runtime::User;

use crate::NodeError;

/// Largest `/etc/passwd` or `/etc/group` read from an image.
const MAX_FILE: u64 = 4 << 20;

/// Ids a sandbox user may have: the sandbox's range is 65,536 ids.
const MAX_ID: u32 = 65535;

/// The resolved user, and the home directory its passwd entry names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub user: User,
    pub home: Option<String>,
}

fn bad(spec: &str, reason: impl Into<String>) -> NodeError {
    NodeError::User {
        spec: spec.to_string(),
        reason: reason.into(),
    }
}

/// Resolves `spec` for an image whose layers are `layers` (lowest first).
pub fn resolve(layers: &[impl AsRef<Path>], spec: &str) -> Result<ResolvedUser, NodeError> {
    let spec = spec.trim();
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    // The common case reads nothing.
    if (u.is_empty() || u == "0" || u == "root") && matches!(g, None | Some("0") | Some("root")) {
        let passwd = if u == "root" {
            read_etc(layers, "passwd", spec)?
        } else {
            None
        };
        let home = passwd
            .as_deref()
            .and_then(|p| passwd_entry(p, |e| e.name == "root"))
            .map(|e| e.home)
            .or_else(|| Some("/root".into()));
        return Ok(ResolvedUser {
            user: User::root(),
            home,
        });
    }
    let passwd = read_etc(layers, "passwd", spec)?.unwrap_or_default();
    let group = read_etc(layers, "group", spec)?.unwrap_or_default();
    let numeric = |s: &str| s.parse::<u32>().ok();
    let entry = match numeric(u) {
        Some(uid) => passwd_entry(&passwd, |e| e.uid == uid),
        None => Some(
            passwd_entry(&passwd, |e| e.name == u)
                .ok_or_else(|| bad(spec, format!("no user {u:?} in the image's /etc/passwd")))?,
        ),
    };
    let uid = match numeric(u) {
        Some(uid) => uid,
        None => entry.as_ref().map_or(0, |e| e.uid),
    };
    let gid = match g {
        Some(g) => match numeric(g) {
            Some(gid) => gid,
            None => group_entries(&group)
                .find(|e| e.name == g)
                .map(|e| e.gid)
                .ok_or_else(|| bad(spec, format!("no group {g:?} in the image's /etc/group")))?,
        },
        None => entry.as_ref().map_or(0, |e| e.gid),
    };
    // Supplementary groups: those listing the user by name (Docker does the
    // same), when no explicit group was given.
    let mut groups = Vec::new();
    if let (None, Some(e)) = (g, entry.as_ref()) {
        for ge in group_entries(&group) {
            if ge.gid != gid && ge.members.iter().any(|m| *m == e.name) {
                groups.push(ge.gid);
            }
        }
    }
    for (what, id) in [("uid", uid), ("gid", gid)]
        .into_iter()
        .chain(groups.iter().map(|g| ("supplementary gid", *g)))
    {
        if id > MAX_ID {
            return Err(bad(spec, format!("{what} {id} is outside 0-{MAX_ID}")));
        }
    }
    Ok(ResolvedUser {
        user: User { uid, gid, groups },
        home: entry.map(|e| e.home),
    })
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

fn passwd_entry(text: &str, pred: impl Fn(&PasswdEntry) -> bool) -> Option<PasswdEntry> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(PasswdEntry {
                name: f.first()?.to_string(),
                uid: f.get(2)?.parse().ok()?,
                gid: f.get(3)?.parse().ok()?,
                home: f.get(5).map(|h| h.to_string()).unwrap_or_default(),
            })
        })
        .find(|e| pred(e))
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

fn group_entries(text: &str) -> impl Iterator<Item = GroupEntry<'_>> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(GroupEntry {
                name: f.first()?,
                gid: f.get(2)?.parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| m.split(',').filter(|s| !s.is_empty()).collect())
                    .unwrap_or_default(),
            })
        })
}

/// `/etc/<name>` as the image's merged tree shows it, or `None`.
fn read_etc(
    layers: &[impl AsRef<Path>],
    name: &str,
    spec: &str,
) -> Result<Option<String>, NodeError> {
    for layer in layers.iter().rev() {
        let layer = layer.as_ref();
        let open = |dir: &OwnedFd, p: &str, flags: OFlag| {
            openat(
                dir,
                p,
                flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
        };
        let root = nix::fcntl::open(
            layer,
            OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| bad(spec, format!("open image layer: {e}")))?;
        let etc = match open(&root, "etc", OFlag::O_DIRECTORY | OFlag::O_RDONLY) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => continue,
            // A whiteout (character device) hides every lower /etc.
            Err(Errno::ENOTDIR) => {
                if is_whiteout(&root, "etc") {
                    return Ok(None);
                }
                return Err(bad(spec, "the image's /etc is not a directory"));
            }
            Err(Errno::ELOOP) => {
                return Err(bad(spec, "the image's /etc is a symlink; use numeric ids"))
            }
            Err(e) => return Err(bad(spec, format!("open /etc: {e}"))),
        };
        match open(&etc, name, OFlag::O_RDONLY | OFlag::O_NONBLOCK) {
            Ok(fd) => {
                let st = fstat(&fd).map_err(|e| bad(spec, format!("stat /etc/{name}: {e}")))?;
                if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFCHR {
                    return Ok(None); // whiteout
                }
                if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
                    return Err(bad(spec, format!("the image's /etc/{name} is not a file")));
                }
                if st.st_size as u64 > MAX_FILE {
                    return Err(bad(spec, format!("the image's /etc/{name} is too large")));
                }
                let mut text = String::new();
                std::fs::File::from(fd)
                    .take(MAX_FILE)
                    .read_to_string(&mut text)
                    .map_err(|e| bad(spec, format!("read /etc/{name}: {e}")))?;
                return Ok(Some(text));
            }
            Err(Errno::ENOENT) => {
                if is_opaque(&etc) {
                    return Ok(None);
                }
            }
            Err(Errno::ELOOP) => {
                return Err(bad(
                    spec,
                    format!("the image's /etc/{name} is a symlink; use numeric ids"),
                ))
            }
            Err(e) => return Err(bad(spec, format!("open /etc/{name}: {e}"))),
        }
    }
    Ok(None)
}

fn is_whiteout(dir: &OwnedFd, name: &str) -> bool {
    nix::sys::stat::fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
        .map(|st| {
            SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFCHR
                && st.st_rdev == 0
        })
        .unwrap_or(false)
}

fn is_opaque(dir: &OwnedFd) -> bool {
    let f = match dir.try_clone() {
        Ok(fd) => std::fs::File::from(fd),
        Err(_) => return false,
    };
    matches!(
        xattr::FileExt::get_xattr(&f, "trusted.overlay.opaque"),
        Ok(Some(v)) if v == b"y"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("etc")).unwrap();
        for (name, text) in files {
            std::fs::write(d.path().join("etc").join(name), text).unwrap();
        }
        d
    }

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nnode:x:1000:1000::/home/node:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nnode:x:1000:\nstaff:x:50:node,other\n";

    #[test]
    fn names_and_numbers() {
        let l = layer(&[("passwd", PASSWD), ("group", GROUP)]);
        let layers = [l.path()];
        let r = resolve(&layers, "").unwrap();
        assert_eq!((r.user.uid, r.user.gid), (0, 0));
        let r = resolve(&layers, "node").unwrap();
        assert_eq!(
            (r.user.uid, r.user.gid, r.user.groups.clone()),
            (1000, 1000, vec![50])
        );
        assert_eq!(r.home.as_deref(), Some("/home/node"));
        let r = resolve(&layers, "node:staff").unwrap();
        assert_eq!((r.user.uid, r.user.gid), (1000, 50));
        assert!(r.user.groups.is_empty());
        let r = resolve(&layers, "1000").unwrap();
        assert_eq!((r.user.uid, r.user.gid), (1000, 1000));
        let r = resolve(&layers, "4242:7").unwrap();
        assert_eq!((r.user.uid, r.user.gid), (4242, 7));
        assert_eq!(r.home, None);
        assert_eq!(
            resolve(&layers, "nobody").unwrap_err().code(),
            "invalid_user"
        );
        assert_eq!(
            resolve(&layers, "node:wheel").unwrap_err().code(),
            "invalid_user"
        );
        assert_eq!(
            resolve(&layers, "70000").unwrap_err().code(),
            "invalid_user"
        );
    }

    #[test]
    fn upper_layers_win_and_symlinks_are_refused() {
        let low = layer(&[("passwd", PASSWD)]);
        let high = layer(&[("passwd", "app:x:7:7::/app:/bin/sh\n")]);
        let r = resolve(&[low.path(), high.path()], "app").unwrap();
        assert_eq!(r.user.uid, 7);
        assert!(resolve(&[low.path(), high.path()], "node").is_err());
        let evil = tempfile::tempdir().unwrap();
        std::fs::create_dir(evil.path().join("etc")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", evil.path().join("etc/passwd")).unwrap();
        let e = resolve(&[low.path(), evil.path()], "node").unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
        let evil2 = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc", evil2.path().join("etc")).unwrap();
        assert!(resolve(&[low.path(), evil2.path()], "node").is_err());
    }
}
