//! The built-in `host` image: a small skeleton layer generated from the host,
//! plus read-only binds of the host's `/usr` (and of `/bin`, `/lib*`, ...
//! where those are real directories rather than merged-usr symlinks).
//!
//! The skeleton is a deterministic function of the host: every entry is
//! owned by 0:0 with mtime 0, entries are sorted, and only the listed paths
//! are read. Copied host files must be world-readable (a guard against ever
//! copying secrets such as `shadow`, `gshadow`, `sudoers` or SSH keys, none
//! of which are on the list anyway); setuid/setgid bits are dropped.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tar::{EntryType, Header};

use crate::error::ImageError;
use crate::image::{HostBind, ImageConfig};

/// `PATH` of the host image (and of its `/etc/profile`).
pub const HOST_PATH_ENV: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Empty directories of the skeleton and their modes.
const SKELETON_DIRS: &[(&str, u32)] = &[
    ("dev", 0o755),
    ("etc", 0o755),
    ("home", 0o755),
    ("mnt", 0o755),
    ("opt", 0o755),
    ("proc", 0o755),
    ("root", 0o700),
    ("run", 0o755),
    ("srv", 0o755),
    ("sys", 0o755),
    ("tmp", 0o1777),
    ("usr", 0o755),
    ("var", 0o755),
    ("var/tmp", 0o1777),
];

/// Top-level host paths reproduced as a symlink, or bound when a directory.
const HOST_TOP_LEVEL: &[&str] = &["bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// Host files and trees copied into the skeleton's `/etc` when present.
const HOST_ETC_COPIES: &[&str] = &[
    "etc/alternatives",
    "etc/ld.so.cache",
    "etc/ld.so.conf",
    "etc/ld.so.conf.d",
    "etc/mime.types",
    "etc/os-release",
    "etc/ssl/certs",
];

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";

const GROUP: &str = "root:x:0:\ntty:x:5:\nnogroup:x:65534:\n";

const HOSTNAME: &str = "warren\n";

const HOSTS: &str = "127.0.0.1\tlocalhost\n::1\tlocalhost\n";

const NSSWITCH: &str = "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n\
networks: files\nprotocols: files\nservices: files\nethers: files\nrpc: files\n";

/// The generated skeleton.
pub struct HostSkeleton {
    /// The layer tar.
    pub tar: Vec<u8>,
    /// Binds the image needs, in mount order.
    pub binds: Vec<HostBind>,
}

/// The host image's process defaults.
pub fn host_config() -> ImageConfig {
    ImageConfig {
        env: vec![
            format!("PATH={HOST_PATH_ENV}"),
            "HOME=/root".to_owned(),
            "LANG=C.UTF-8".to_owned(),
        ],
        workdir: Some("/".to_owned()),
        ..ImageConfig::default()
    }
}

/// Generates the skeleton from the host rooted at `host_root` (`/` in
/// production; a fake tree in tests).
pub fn build(host_root: &Path) -> Result<HostSkeleton, ImageError> {
    let mut skeleton = Skeleton::default();
    for (dir, mode) in SKELETON_DIRS {
        skeleton.dir(dir.as_bytes(), *mode);
    }
    let mut binds = vec![HostBind {
        source: host_root.join("usr"),
        target: "/usr".to_owned(),
        readonly: true,
    }];
    for name in HOST_TOP_LEVEL {
        let source = host_root.join(name);
        let Some(meta) = lstat_host(&source)? else {
            continue;
        };
        if meta.file_type().is_symlink() {
            let target = read_host(&source, std::fs::read_link(&source))?;
            skeleton.insert(name.as_bytes(), Node::Symlink(target));
        } else if meta.is_dir() {
            skeleton.dir(name.as_bytes(), 0o755);
            binds.push(HostBind {
                source,
                target: format!("/{name}"),
                readonly: true,
            });
        }
    }
    for (name, content) in [
        ("etc/passwd", PASSWD),
        ("etc/group", GROUP),
        ("etc/hostname", HOSTNAME),
        ("etc/hosts", HOSTS),
        ("etc/resolv.conf", ""),
        ("etc/nsswitch.conf", NSSWITCH),
    ] {
        skeleton.file(name.as_bytes(), 0o644, content.as_bytes().to_vec());
    }
    let profile = format!(
        "export PATH=\"{HOST_PATH_ENV}\"\n\
         if [ \"$(id -u)\" -eq 0 ]; then PS1='# '; else PS1='$ '; fi\n\
         export PS1\n"
    );
    skeleton.file(b"etc/profile", 0o644, profile.into_bytes());
    for rel in HOST_ETC_COPIES {
        skeleton.copy_from_host(host_root, Path::new(rel))?;
    }
    Ok(HostSkeleton {
        tar: skeleton.to_tar()?,
        binds,
    })
}

enum Node {
    Dir(u32),
    File(u32, Vec<u8>),
    Symlink(PathBuf),
}

/// Skeleton entries keyed by relative path; the `BTreeMap` order puts every
/// directory before its contents.
#[derive(Default)]
struct Skeleton {
    nodes: BTreeMap<Vec<u8>, Node>,
}

impl Skeleton {
    fn insert(&mut self, path: &[u8], node: Node) {
        // Make sure every ancestor exists as a directory.
        for (i, byte) in path.iter().enumerate() {
            if *byte == b'/' {
                self.nodes
                    .entry(path[..i].to_vec())
                    .or_insert(Node::Dir(0o755));
            }
        }
        self.nodes.insert(path.to_vec(), node);
    }

    fn dir(&mut self, path: &[u8], mode: u32) {
        self.insert(path, Node::Dir(mode));
    }

    fn file(&mut self, path: &[u8], mode: u32, content: Vec<u8>) {
        self.insert(path, Node::File(mode, content));
    }

    /// Copies `rel` from the host (recursively for directories, symlinks as
    /// they are); missing paths are skipped.
    fn copy_from_host(&mut self, host_root: &Path, rel: &Path) -> Result<(), ImageError> {
        let source = host_root.join(rel);
        let Some(meta) = lstat_host(&source)? else {
            return Ok(());
        };
        let key = rel.as_os_str().as_bytes();
        let file_type = meta.file_type();
        if file_type.is_symlink() {
            let target = read_host(&source, std::fs::read_link(&source))?;
            self.insert(key, Node::Symlink(target));
            return Ok(());
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o004 == 0 {
            tracing::debug!(path = %source.display(), "not world-readable; not copied into the host image");
            return Ok(());
        }
        if file_type.is_file() {
            let content = read_host(&source, std::fs::read(&source))?;
            self.insert(key, Node::File(mode, content));
        } else if file_type.is_dir() {
            self.insert(key, Node::Dir(mode));
            let mut children: Vec<OsString> = Vec::new();
            for entry in read_host(&source, std::fs::read_dir(&source))? {
                children.push(read_host(&source, entry)?.file_name());
            }
            children.sort();
            for child in children {
                self.copy_from_host(host_root, &rel.join(child))?;
            }
        }
        Ok(())
    }

    fn to_tar(&self) -> Result<Vec<u8>, ImageError> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, node) in &self.nodes {
            let path = PathBuf::from(OsString::from_vec(path.clone()));
            let mut header = Header::new_gnu();
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(0);
            header.set_size(0);
            let result = match node {
                Node::Dir(mode) => {
                    header.set_entry_type(EntryType::Directory);
                    header.set_mode(*mode);
                    builder.append_data(&mut header, &path, io::empty())
                }
                Node::File(mode, content) => {
                    header.set_entry_type(EntryType::Regular);
                    header.set_mode(*mode);
                    header.set_size(content.len() as u64);
                    builder.append_data(&mut header, &path, content.as_slice())
                }
                Node::Symlink(target) => {
                    header.set_entry_type(EntryType::Symlink);
                    header.set_mode(0o777);
                    builder.append_link(&mut header, &path, target)
                }
            };
            result.map_err(|source| ImageError::ReadHost {
                path: path.clone(),
                source,
            })?;
        }
        builder.into_inner().map_err(|source| ImageError::ReadHost {
            path: PathBuf::from("/"),
            source,
        })
    }
}

/// `lstat` of a host path; `None` if it does not exist.
fn lstat_host(path: &Path) -> Result<Option<std::fs::Metadata>, ImageError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) => Ok(Some(meta)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ImageError::ReadHost {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn read_host<T>(path: &Path, result: io::Result<T>) -> Result<T, ImageError> {
    result.map_err(|source| ImageError::ReadHost {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn skeleton_is_deterministic_and_skips_unreadable_files() {
        let tmp = tempfile::tempdir().unwrap();
        let host = tmp.path();
        std::fs::create_dir_all(host.join("etc/ssl/certs")).unwrap();
        std::fs::write(host.join("etc/ssl/certs/ca.pem"), b"cert").unwrap();
        std::fs::write(host.join("etc/ssl/certs/secret.key"), b"key").unwrap();
        std::fs::set_permissions(
            host.join("etc/ssl/certs/secret.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        symlink("usr/bin", host.join("bin")).unwrap();
        let one = build(host).unwrap();
        let two = build(host).unwrap();
        assert_eq!(one.tar, two.tar);
        let mut archive = tar::Archive::new(&one.tar[..]);
        let paths: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert!(paths.contains(&"etc/ssl/certs/ca.pem".to_owned()));
        assert!(!paths.iter().any(|p| p.contains("secret")));
        assert!(paths.contains(&"bin".to_owned()));
    }
}
