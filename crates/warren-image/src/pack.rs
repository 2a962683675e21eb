//! Deterministic tar archives of a directory tree, for `import_dir`.
//!
//! The same tree (names, contents, modes, numeric owners, mtimes in whole
//! seconds, symlink targets, hard-link structure, preserved xattrs) always
//! gives the same bytes, so it gives the same layer diff id:
//!
//! - entries in pre-order, siblings sorted bytewise by name;
//! - GNU headers with numeric owners only (no user or group names), no
//!   atime or ctime;
//! - a file with several links is stored once, later paths as hard links
//!   to the first path in that order;
//! - `user.*` and `security.capability` xattrs as pax records, sorted.
//!
//! The source is walked with directory file descriptors and `O_NOFOLLOW`,
//! so a tree that changes while it is archived (say, a running sandbox's
//! upper dir) can make the import fail but never makes it read outside the
//! tree. `src` itself may be a symlink (it is followed, as the caller
//! chose the path); nothing below it is. The root directory itself is not
//! stored (the layer root is always
//! `0755 root:root`); sockets are skipped; device nodes other than overlay
//! whiteouts (char 0/0) are refused.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{openat, readlinkat, OFlag};
use nix::sys::stat::{fstat, FileStat, Mode};
use tar::{EntryType, Header};
use xattr::FileExt as _;

use crate::error::ImageError;
use crate::fsutil::{lstat_at, open_dir_at, read_dir_names, Kind};
use crate::unpack::{
    xattr_is_preserved, MAX_PATH_BYTES, OPAQUE_MARKER, OVERLAY_OPAQUE_XATTR, PAX_XATTR_PREFIX,
    WHITEOUT_PREFIX,
};

/// Writes a deterministic tar of the tree at `src` (not including `src`
/// itself) to `out` and returns `out`. Overlay whiteouts (char 0/0) are
/// kept as they are.
pub fn archive_dir<W: Write>(src: &Path, out: W) -> Result<W, ImageError> {
    archive_tree(src, out, false)
}

/// [`archive_dir`] for an overlay layer tree, with its whiteouts in OCI
/// form: a char 0/0 device `NAME` becomes an empty file `.wh.NAME`, and a
/// directory with `trusted.overlay.opaque=y` is followed by an empty
/// `.wh..wh..opq` inside it (the reverse of what unpacking does).
pub fn archive_dir_oci<W: Write>(src: &Path, out: W) -> Result<W, ImageError> {
    archive_tree(src, out, true)
}

fn archive_tree<W: Write>(src: &Path, out: W, oci_whiteouts: bool) -> Result<W, ImageError> {
    let root = nix::fcntl::open(
        src,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| ImageError::ArchiveDir {
        path: src.to_path_buf(),
        source: e.into(),
    })?;
    let mut packer = Packer {
        src,
        builder: tar::Builder::new(out),
        links: HashMap::new(),
        oci_whiteouts,
    };
    let names = packer.io(Path::new(""), read_dir_names(&root))?;
    let mut stack = vec![Frame {
        fd: root,
        prefix: Vec::new(),
        names: names.into_iter(),
    }];
    while let Some(frame) = stack.last_mut() {
        let Some(name) = frame.names.next() else {
            stack.pop();
            continue;
        };
        let mut rel = frame.prefix.clone();
        if !rel.is_empty() {
            rel.push(b'/');
        }
        rel.extend_from_slice(name.as_bytes());
        if let Some(child) = packer.entry(&frame.fd, name, rel)? {
            stack.push(child);
        }
    }
    packer
        .builder
        .into_inner()
        .map_err(|source| ImageError::ArchiveDir {
            path: src.to_path_buf(),
            source,
        })
}

/// A directory being walked.
struct Frame {
    fd: OwnedFd,
    prefix: Vec<u8>,
    names: std::vec::IntoIter<OsString>,
}

struct Packer<'a, W: Write> {
    src: &'a Path,
    builder: tar::Builder<W>,
    /// (dev, ino) of multiply-linked files already stored → their path.
    links: HashMap<(u64, u64), PathBuf>,
    /// Write whiteouts as `.wh.` entries (see [`archive_dir_oci`]).
    oci_whiteouts: bool,
}

impl<W: Write> Packer<'_, W> {
    /// Archives one entry; returns a frame to descend into for directories.
    fn entry(
        &mut self,
        dir: &OwnedFd,
        name: OsString,
        rel: Vec<u8>,
    ) -> Result<Option<Frame>, ImageError> {
        let rel_path = PathBuf::from(OsString::from_vec(rel.clone()));
        if rel.len() > MAX_PATH_BYTES {
            return Err(ImageError::UnsafeEntry {
                path: rel_path.display().to_string(),
                reason: "path is longer than 4096 bytes",
            });
        }
        let Some(st) = self.io(&rel_path, lstat_at(dir, &name))? else {
            tracing::debug!(path = %rel_path.display(), "entry vanished while archiving");
            return Ok(None);
        };
        match Kind::of(&st) {
            Some(Kind::Dir) => {
                let fd = self.nix(&rel_path, open_dir_at(dir, &name))?;
                let st = self.nix(&rel_path, fstat(&fd))?;
                let file = File::from(self.io(&rel_path, fd.try_clone())?);
                self.append_xattrs(&rel_path, &file)?;
                let header = header(EntryType::Directory, &st, 0);
                self.append(&rel_path, header, io::empty())?;
                if self.oci_whiteouts && is_opaque(&file) {
                    let marker = rel_path.join(OsStr::from_bytes(OPAQUE_MARKER));
                    let header = whiteout_header(&st);
                    self.append(&marker, header, io::empty())?;
                }
                let names = self.io(&rel_path, read_dir_names(&fd))?;
                Ok(Some(Frame {
                    fd,
                    prefix: rel,
                    names: names.into_iter(),
                }))
            }
            Some(Kind::File) => {
                let fd = self.nix(
                    &rel_path,
                    openat(
                        dir,
                        name.as_os_str(),
                        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
                        Mode::empty(),
                    ),
                )?;
                let st = self.nix(&rel_path, fstat(&fd))?;
                if Kind::of(&st) != Some(Kind::File) {
                    return Err(self.changed(&rel_path));
                }
                if st.st_nlink > 1 {
                    let key = (st.st_dev, st.st_ino);
                    if let Some(first) = self.links.get(&key).cloned() {
                        let header = header(EntryType::Link, &st, 0);
                        return self.append_link(&rel_path, header, &first).map(|()| None);
                    }
                    self.links.insert(key, rel_path.clone());
                }
                let file = File::from(fd);
                self.append_xattrs(&rel_path, &file)?;
                let size = u64::try_from(st.st_size).map_err(|_| self.changed(&rel_path))?;
                let header = header(EntryType::Regular, &st, size);
                let reader =
                    ExactReader::new(file, size, "file shrank while it was being archived");
                self.append(&rel_path, header, reader)?;
                Ok(None)
            }
            Some(Kind::Symlink) => {
                let target = self.nix(&rel_path, readlinkat(dir, name.as_os_str()))?;
                let header = header(EntryType::Symlink, &st, 0);
                self.append_link(&rel_path, header, Path::new(&target))?;
                Ok(None)
            }
            Some(Kind::Char) if st.st_rdev == 0 && self.oci_whiteouts => {
                let mut wh_name = WHITEOUT_PREFIX.to_vec();
                wh_name.extend_from_slice(name.as_bytes());
                let wh_path = rel_path.with_file_name(OsStr::from_bytes(&wh_name));
                self.append(&wh_path, whiteout_header(&st), io::empty())?;
                Ok(None)
            }
            Some(Kind::Char) if st.st_rdev == 0 => {
                // An overlayfs whiteout; kept so upper dirs round-trip.
                let mut header = header(EntryType::Char, &st, 0);
                self.io(&rel_path, header.set_device_major(0))?;
                self.io(&rel_path, header.set_device_minor(0))?;
                self.append(&rel_path, header, io::empty())?;
                Ok(None)
            }
            Some(Kind::Char | Kind::Block) => Err(ImageError::UnsafeEntry {
                path: rel_path.display().to_string(),
                reason: "device nodes are not allowed",
            }),
            Some(Kind::Fifo) => {
                let header = header(EntryType::Fifo, &st, 0);
                self.append(&rel_path, header, io::empty())?;
                Ok(None)
            }
            Some(Kind::Socket) | None => {
                tracing::debug!(path = %rel_path.display(), "skipping socket or unknown file type");
                Ok(None)
            }
        }
    }

    fn append(
        &mut self,
        rel: &Path,
        mut header: Header,
        data: impl Read,
    ) -> Result<(), ImageError> {
        let result = self.builder.append_data(&mut header, rel, data);
        self.io(rel, result)
    }

    fn append_link(
        &mut self,
        rel: &Path,
        mut header: Header,
        target: &Path,
    ) -> Result<(), ImageError> {
        let result = self.builder.append_link(&mut header, rel, target);
        self.io(rel, result)
    }

    /// Emits a pax record with the preserved xattrs of `file`, if any.
    fn append_xattrs(&mut self, rel: &Path, file: &File) -> Result<(), ImageError> {
        let names = match file.list_xattr() {
            Ok(names) => names,
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => return Ok(()),
            Err(e) => return Err(self.err(rel, e)),
        };
        let mut records: Vec<(String, Vec<u8>)> = Vec::new();
        for name in names {
            let (true, Some(utf8)) = (xattr_is_preserved(name.as_bytes()), name.to_str()) else {
                continue;
            };
            if let Some(value) = self.io(rel, file.get_xattr(&name))? {
                records.push((format!("{PAX_XATTR_PREFIX}{utf8}"), value));
            }
        }
        if records.is_empty() {
            return Ok(());
        }
        records.sort();
        let result = self.builder.append_pax_extensions(
            records
                .iter()
                .map(|(key, value)| (key.as_str(), value.as_slice())),
        );
        self.io(rel, result)
    }

    fn err(&self, rel: &Path, source: io::Error) -> ImageError {
        ImageError::ArchiveDir {
            path: self.src.join(rel),
            source,
        }
    }

    fn changed(&self, rel: &Path) -> ImageError {
        self.err(
            rel,
            io::Error::other("file changed while it was being archived"),
        )
    }

    fn io<T>(&self, rel: &Path, result: io::Result<T>) -> Result<T, ImageError> {
        result.map_err(|e| self.err(rel, e))
    }

    fn nix<T>(&self, rel: &Path, result: nix::Result<T>) -> Result<T, ImageError> {
        self.io(rel, result.map_err(io::Error::from))
    }
}

/// A GNU header with the deterministic subset of `st`'s metadata.
fn header(kind: EntryType, st: &FileStat, size: u64) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(st.st_mode & 0o7777);
    header.set_uid(u64::from(st.st_uid));
    header.set_gid(u64::from(st.st_gid));
    header.set_mtime(u64::try_from(st.st_mtime).unwrap_or(0));
    header.set_size(size);
    header
}

/// An empty regular file standing for an OCI whiteout, with the owner
/// and mtime of what it stands for.
fn whiteout_header(st: &FileStat) -> Header {
    let mut header = header(EntryType::Regular, st, 0);
    header.set_mode(0o644);
    header
}

/// Whether a directory is an opaque overlay directory.
fn is_opaque(dir: &File) -> bool {
    matches!(dir.get_xattr(OVERLAY_OPAQUE_XATTR), Ok(Some(v)) if v == b"y")
}

/// Reads exactly `remaining` bytes, failing with `short` if the source
/// ends early (a shorter body would corrupt the archive); bytes beyond it
/// are ignored.
pub(crate) struct ExactReader<R> {
    inner: R,
    remaining: u64,
    short: &'static str,
}

impl<R> ExactReader<R> {
    pub(crate) fn new(inner: R, remaining: u64, short: &'static str) -> Self {
        ExactReader {
            inner,
            remaining,
            short,
        }
    }
}

impl<R: Read> Read for ExactReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let max = usize::try_from(self.remaining)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        if max == 0 {
            return Ok(0);
        }
        let n = self.inner.read(&mut buf[..max])?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, self.short));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_reader_detects_shrinking() {
        let mut ok = ExactReader::new(&b"abcdef"[..], 3, "short");
        let mut out = Vec::new();
        ok.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"abc");
        let mut short = ExactReader::new(&b"ab"[..], 3, "short");
        assert!(short.read_to_end(&mut Vec::new()).is_err());
    }

    #[test]
    fn archive_is_deterministic_and_sorted() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path();
        std::fs::create_dir(src.join("b")).unwrap();
        std::fs::write(src.join("b/z"), b"z").unwrap();
        std::fs::write(src.join("a"), b"a").unwrap();
        std::fs::write(src.join("c"), b"c").unwrap();
        let one = archive_dir(src, Vec::new()).unwrap();
        let two = archive_dir(src, Vec::new()).unwrap();
        assert_eq!(one, two);
        let mut archive = tar::Archive::new(&one[..]);
        let paths: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(paths, ["a", "b", "b/z", "c"]);
    }
}
