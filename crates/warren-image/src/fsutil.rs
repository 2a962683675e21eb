//! File-descriptor-relative filesystem helpers that never follow symlinks,
//! plus atomic file replacement.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fstatat, FileStat, Mode, SFlag};
use nix::unistd::{unlinkat, UnlinkatFlags};

use crate::error::ImageError;

/// Flags for opening a directory to walk or inspect it, never following a
/// symlink in the final component.
pub const DIR_NOFOLLOW: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// The kind of a filesystem object, from `st_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Char,
    Block,
    Fifo,
    Socket,
}

impl Kind {
    pub fn of(st: &FileStat) -> Option<Self> {
        let fmt = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
        Some(match fmt {
            SFlag::S_IFREG => Self::File,
            SFlag::S_IFDIR => Self::Dir,
            SFlag::S_IFLNK => Self::Symlink,
            SFlag::S_IFCHR => Self::Char,
            SFlag::S_IFBLK => Self::Block,
            SFlag::S_IFIFO => Self::Fifo,
            SFlag::S_IFSOCK => Self::Socket,
            _ => return None,
        })
    }
}

/// `lstat` relative to `dir`; `Ok(None)` if the name does not exist.
pub fn lstat_at(dir: impl AsFd, name: &OsStr) -> io::Result<Option<FileStat>> {
    match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Opens the directory `name` inside `dir` without following symlinks.
pub fn open_dir_at(dir: impl AsFd, name: &OsStr) -> nix::Result<OwnedFd> {
    openat(dir, name, DIR_NOFOLLOW, Mode::empty())
}

/// The entry names of an open directory (without `.` and `..`), sorted
/// bytewise.
pub fn read_dir_names(dir: &OwnedFd) -> io::Result<Vec<OsString>> {
    let mut listing = nix::dir::Dir::from_fd(dir.try_clone()?)?;
    let mut names = Vec::new();
    for entry in listing.iter() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(name).to_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Removes whatever is at `name` inside `dir` (recursively for directories),
/// never following symlinks. A missing name is not an error.
pub fn remove_at(dir: &OwnedFd, name: &OsStr) -> io::Result<()> {
    match lstat_at(dir, name)? {
        None => Ok(()),
        Some(st) if Kind::of(&st) == Some(Kind::Dir) => {
            let child = open_dir_at(dir, name)?;
            for entry in read_dir_names(&child)? {
                remove_at(&child, &entry)?;
            }
            drop(child);
            unlinkat(dir, name, UnlinkatFlags::RemoveDir)?;
            Ok(())
        }
        Some(_) => {
            unlinkat(dir, name, UnlinkatFlags::NoRemoveDir)?;
            Ok(())
        }
    }
}

/// `fsync`s a directory so that renames into it are durable.
pub fn fsync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// Atomically replaces `target` with `bytes`: write a temporary file in
/// `tmp_dir` (same filesystem), fsync it, rename it over `target`, fsync the
/// target's directory.
pub fn atomic_write(tmp_dir: &Path, target: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    let write_err = |source| ImageError::WriteStore {
        path: target.to_path_buf(),
        source,
    };
    let mut tmp = tempfile::NamedTempFile::new_in(tmp_dir).map_err(write_err)?;
    tmp.write_all(bytes).map_err(write_err)?;
    tmp.as_file().sync_all().map_err(write_err)?;
    tmp.persist(target).map_err(|e| write_err(e.error))?;
    if let Some(parent) = target.parent() {
        fsync_dir(parent).map_err(write_err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::fcntl::open;

    #[test]
    fn remove_at_removes_trees_without_following_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), b"x").unwrap();
        let work = tmp.path().join("work");
        std::fs::create_dir_all(work.join("tree/sub")).unwrap();
        std::fs::write(work.join("tree/sub/f"), b"x").unwrap();
        std::os::unix::fs::symlink(&outside, work.join("tree/link")).unwrap();

        let dir = open(&work, DIR_NOFOLLOW, Mode::empty()).unwrap();
        remove_at(&dir, OsStr::new("tree")).unwrap();
        remove_at(&dir, OsStr::new("missing")).unwrap();
        assert!(!work.join("tree").exists());
        assert!(outside.join("keep").exists());
    }

    #[test]
    fn atomic_write_replaces_content() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("rec.json");
        atomic_write(tmp.path(), &target, b"one").unwrap();
        atomic_write(tmp.path(), &target, b"two").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
    }
}
