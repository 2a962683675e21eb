//! Unpacking an untrusted layer tar into a fresh, empty directory.
//!
//! This runs as host root on tenant-supplied archives, so every entry is
//! created relative to directory file descriptors opened with
//! `O_NOFOLLOW | O_DIRECTORY`, one path component at a time; no path is
//! ever resolved by the kernel from a concatenated string. Rules:
//!
//! - Entry paths are relative; `.` components and empty components are
//!   dropped. Absolute paths, `..` components, NUL bytes and paths longer
//!   than 4096 bytes are refused ([`ImageError::UnsafeEntry`]).
//! - A parent component that is a symlink is refused, whoever created it:
//!   nothing is ever written through a symlink (the symlink-then-write
//!   trick). Missing parents are created as `0755 root:root`, mtime 0.
//! - An entry replaces whatever an earlier entry left at its path (unlinked
//!   first, recursively for directories, never followed), except that a
//!   directory entry over an existing directory only updates its metadata.
//!   Regular files are created with `O_CREAT | O_EXCL | O_NOFOLLOW`.
//! - Hard links must name an earlier non-directory entry of the same layer,
//!   found by the same no-symlink walk; `linkat` is called without
//!   `AT_SYMLINK_FOLLOW`, so a link to a symlink links the symlink itself.
//! - OCI whiteouts ([`Whiteouts::Overlay`]): `.wh.NAME` becomes a char 0/0
//!   device at `NAME` and `.wh..wh..opq` the `trusted.overlay.opaque=y`
//!   xattr on its directory; other `.wh..wh.*` entries (AUFS metadata) are
//!   skipped; a whiteout naming `.` or `..` is refused. When flattening
//!   ([`Whiteouts::Apply`]) they delete instead.
//! - A hard link whose target is not in this layer is, given the lower
//!   layers' trees, a copy of the target from the highest lower layer that
//!   has it (regular files only; a whited-out or opaque-hidden target is
//!   refused), opened one component at a time with `O_NOFOLLOW`.
//! - A regular file whose header claims more than `max_file_bytes` is
//!   refused before anything is written ([`ImageError::LayerTooLarge`]).
//! - Character device 0/0 (an overlayfs whiteout) is skipped; any other
//!   device node is refused. FIFOs are created. GNU (old-format) sparse
//!   files are written out in full; pax-format sparse files and unknown
//!   entry types are refused as unsupported.
//! - Modes (including setuid, setgid and sticky bits), numeric owners (not
//!   shifted: the runtime maps them with idmapped mounts), and mtimes
//!   (including pax sub-second mtimes) are preserved. Owners are applied
//!   only when running as root. Directory owners, modes and mtimes are
//!   applied after all entries, children first, so that later entries
//!   neither fail on read-only directories nor bump their mtimes.
//! - Extended attributes from pax `SCHILY.xattr.*` records are preserved for
//!   `user.*` and `security.capability` on regular files and directories;
//!   all others (`trusted.*`, `security.selinux`, ACLs) are dropped.

use std::collections::{BTreeMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fchmod, futimens, mkdirat, mknodat, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, symlinkat, Gid, Uid};
use tar::EntryType;
use xattr::FileExt as _;

use crate::error::ImageError;
use crate::fsutil::{lstat_at, open_dir_at, read_dir_names, remove_at, Kind, DIR_NOFOLLOW};

/// Longest entry path accepted (Linux `PATH_MAX`).
pub const MAX_PATH_BYTES: usize = 4096;

/// Extended attributes carried from layer archives onto disk.
pub fn xattr_is_preserved(name: &[u8]) -> bool {
    name.starts_with(b"user.") || name == b"security.capability"
}

/// The pax record prefix for extended attributes.
pub const PAX_XATTR_PREFIX: &str = "SCHILY.xattr.";

/// Prefix of an OCI/AUFS whiteout file name.
pub const WHITEOUT_PREFIX: &[u8] = b".wh.";

/// Name of the OCI opaque-directory marker.
pub const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// The xattr that makes an overlayfs directory opaque.
pub const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// What to do with OCI whiteout entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whiteouts {
    /// Convert them for overlayfs: `.wh.NAME` becomes a char 0/0 device at
    /// `NAME`, `.wh..wh..opq` the `trusted.overlay.opaque=y` xattr on its
    /// directory. Used for layers that are stacked as lower dirs.
    Overlay,
    /// Apply them to what earlier layers left in the same directory
    /// (delete `NAME`; empty the directory of everything this layer did
    /// not write). Used when flattening several layers into one tree.
    Apply,
}

/// How to unpack.
#[derive(Debug, Clone)]
pub struct UnpackOptions {
    /// Apply the archive's numeric owners (requires `CAP_CHOWN`).
    pub preserve_owners: bool,
    /// Whiteout handling.
    pub whiteouts: Whiteouts,
    /// Unpacked trees of the layers below this one, highest first: a hard
    /// link whose target is not in this layer is copied from the first of
    /// them that has it (with [`Whiteouts::Overlay`] only).
    pub lowers: Vec<std::path::PathBuf>,
    /// Largest regular file accepted, in bytes (header size claim).
    pub max_file_bytes: u64,
    /// Whether `lowers` are complete yet. A layer unpacked while the
    /// layers below it are still arriving asks before its first read of a
    /// lower tree; `false` ends the unpack with [`LowersNotReady`] (the
    /// caller unpacks the layer again once they are). `None`: always.
    pub lowers_ready: Option<LowersReady>,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        Self {
            preserve_owners: false,
            whiteouts: Whiteouts::Overlay,
            lowers: Vec::new(),
            max_file_bytes: u64::MAX,
            lowers_ready: None,
        }
    }
}

/// See [`UnpackOptions::lowers_ready`].
#[derive(Clone)]
pub struct LowersReady(pub std::sync::Arc<dyn Fn() -> bool + Send + Sync>);

impl std::fmt::Debug for LowersReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LowersReady(..)")
    }
}

/// The error inside [`ImageError::UnpackLayer`] when a hard link needs a
/// lower layer that [`UnpackOptions::lowers_ready`] says is not there yet.
#[derive(Debug, thiserror::Error)]
#[error("the layers below are not unpacked yet")]
pub struct LowersNotReady;

impl LowersNotReady {
    /// Whether `e` is this condition.
    pub fn is(e: &ImageError) -> bool {
        matches!(e, ImageError::UnpackLayer { source, .. }
            if source.get_ref().is_some_and(|inner| inner.is::<LowersNotReady>()))
    }
}

/// Size of the buffer regular files are copied through: large enough that
/// a typical file is one `write`, small enough to stay in cache.
const COPY_BUF_BYTES: usize = 1 << 20;

/// What an unpack did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UnpackStats {
    pub entries: u64,
    pub whiteouts_skipped: u64,
    pub whiteouts: u64,
    pub opaque_dirs: u64,
    pub lower_links_copied: u64,
}

/// Unpacks the tar stream `reader` into the existing, empty directory
/// `dest`, which must not be reachable by anyone else while this runs.
pub fn unpack(
    reader: impl Read,
    dest: &Path,
    options: &UnpackOptions,
) -> Result<UnpackStats, ImageError> {
    let root = nix::fcntl::open(dest, DIR_NOFOLLOW, Mode::empty()).map_err(|e| {
        ImageError::UnpackLayer {
            path: ".".into(),
            source: e.into(),
        }
    })?;
    let mut unpacker = Unpacker {
        root,
        options,
        dirs: BTreeMap::new(),
        touched: HashSet::new(),
        stats: UnpackStats::default(),
        buf: Vec::new(),
    };
    let mut archive = tar::Archive::new(reader);
    let read_err = |source| ImageError::ReadArchive { source };
    for entry in archive.entries().map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        unpacker.entry(entry)?;
    }
    unpacker.finish_dirs()?;
    tracing::debug!(
        entries = unpacker.stats.entries,
        whiteouts_skipped = unpacker.stats.whiteouts_skipped,
        "unpacked layer"
    );
    Ok(unpacker.stats)
}

/// Splits an archive path into safe components, or says why it is unsafe.
/// An empty result is the layer root.
pub fn entry_components(raw: &[u8]) -> Result<Vec<OsString>, &'static str> {
    if raw.is_empty() {
        return Err("empty path");
    }
    if raw.len() > MAX_PATH_BYTES {
        return Err("path is longer than 4096 bytes");
    }
    if raw.contains(&0) {
        return Err("path contains a NUL byte");
    }
    if raw[0] == b'/' {
        return Err("absolute paths are not allowed");
    }
    let mut components = Vec::new();
    for component in raw.split(|&b| b == b'/') {
        match component {
            b"" | b"." => {}
            b".." => return Err("'..' path components are not allowed"),
            _ => components.push(OsStr::from_bytes(component).to_owned()),
        }
    }
    Ok(components)
}

/// Metadata of one entry.
#[derive(Debug, Clone)]
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: TimeSpec,
    xattrs: Vec<(OsString, Vec<u8>)>,
}

impl Meta {
    /// Metadata of a directory created because an entry needed a parent.
    fn implicit_dir() -> Self {
        Self {
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: TimeSpec::new(0, 0),
            xattrs: Vec::new(),
        }
    }
}

/// Result of walking a component path with no symlinks.
enum Walk {
    Found(OwnedFd),
    Missing,
    Symlink,
    NotDir,
}

struct Unpacker<'a> {
    root: OwnedFd,
    options: &'a UnpackOptions,
    /// Directories whose owner/mode/mtime are applied at the end.
    dirs: BTreeMap<Vec<OsString>, Meta>,
    /// Paths this layer wrote (for opaque dirs in [`Whiteouts::Apply`]).
    touched: HashSet<Vec<OsString>>,
    stats: UnpackStats,
    /// Reused for copying file contents (see [`COPY_BUF_BYTES`]).
    buf: Vec<u8>,
}

impl Unpacker<'_> {
    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), ImageError> {
        let mut kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            return Ok(());
        }
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let components = entry_components(&raw).map_err(|reason| ImageError::UnsafeEntry {
            path: shown.clone(),
            reason,
        })?;
        // Old (v7) archives mark directories only by a trailing slash.
        if kind == EntryType::Regular && raw.ends_with(b"/") {
            kind = EntryType::Directory;
        }
        let meta = read_meta(&mut entry, &shown)?;
        self.stats.entries += 1;
        let ctx = Ctx { shown: &shown };

        if let Some(last) = components.last() {
            if last.as_bytes().starts_with(WHITEOUT_PREFIX) {
                return self.whiteout(&ctx, &components);
            }
        }
        if self.options.whiteouts == Whiteouts::Apply {
            for i in 1..=components.len() {
                self.touched.insert(components[..i].to_vec());
            }
        }
        if matches!(
            kind,
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse
        ) {
            let size = entry.size();
            if size > self.options.max_file_bytes {
                return Err(ImageError::LayerTooLarge {
                    reason: format!(
                        "{shown:?} claims {size} bytes, more than the {} byte limit per file",
                        self.options.max_file_bytes
                    ),
                });
            }
        }

        match kind {
            EntryType::Directory => self.directory(&ctx, components, meta),
            // The tar crate expands GNU sparse entries into their full
            // content (holes become zeros on disk).
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let (parent, name) = self.parent_of(&ctx, &components)?;
                ctx.io(remove_at(&parent, name))?;
                let fd = ctx.io(openat(
                    &parent,
                    name,
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(io::Error::from))?;
                let mut file = File::from(fd);
                ctx.io(copy_buffered(&mut entry, &mut file, &mut self.buf))?;
                self.apply_fd_meta(&ctx, &file, &meta, true)
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                if target.is_empty() || target.contains(&0) {
                    return Err(ctx.unsupported("symlink has an empty or invalid target"));
                }
                let (parent, name) = self.parent_of(&ctx, &components)?;
                ctx.io(remove_at(&parent, name))?;
                ctx.nix(symlinkat(OsStr::from_bytes(&target), &parent, name))?;
                if self.options.preserve_owners {
                    ctx.nix(fchownat(
                        &parent,
                        name,
                        Some(Uid::from_raw(meta.uid)),
                        Some(Gid::from_raw(meta.gid)),
                        AtFlags::AT_SYMLINK_NOFOLLOW,
                    ))?;
                }
                ctx.nix(utimensat(
                    &parent,
                    name,
                    &meta.mtime,
                    &meta.mtime,
                    UtimensatFlags::NoFollowSymlink,
                ))
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                self.hard_link(&ctx, &components, &target)
            }
            EntryType::Char => {
                let major = entry.header().device_major().map_err(ctx.read())?;
                let minor = entry.header().device_minor().map_err(ctx.read())?;
                if major.unwrap_or(0) == 0 && minor.unwrap_or(0) == 0 {
                    tracing::debug!(path = %shown, "skipping overlay whiteout");
                    self.stats.whiteouts_skipped += 1;
                    Ok(())
                } else {
                    Err(ctx.unsafe_entry("device nodes are not allowed"))
                }
            }
            EntryType::Block => Err(ctx.unsafe_entry("device nodes are not allowed")),
            EntryType::Fifo => {
                let (parent, name) = self.parent_of(&ctx, &components)?;
                ctx.io(remove_at(&parent, name))?;
                ctx.nix(mknodat(
                    &parent,
                    name,
                    SFlag::S_IFIFO,
                    Mode::from_bits_truncate(0o600),
                    0,
                ))?;
                // O_NONBLOCK: opening the read side of a FIFO does not wait
                // for a writer.
                let fd = ctx.nix(openat(
                    &parent,
                    name,
                    OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                ))?;
                self.apply_fd_meta(&ctx, &File::from(fd), &meta, false)
            }
            _ => Err(ctx.unsupported("unknown entry type")),
        }
    }

    fn directory(
        &mut self,
        ctx: &Ctx<'_>,
        components: Vec<OsString>,
        meta: Meta,
    ) -> Result<(), ImageError> {
        let dir = if components.is_empty() {
            ctx.io(self.root.try_clone())?
        } else {
            let (parent, name) = self.parent_of(ctx, &components)?;
            match ctx.io(lstat_at(&parent, name))? {
                Some(st) if Kind::of(&st) == Some(Kind::Dir) => {}
                Some(_) => {
                    ctx.io(remove_at(&parent, name))?;
                    ctx.nix(mkdirat(&parent, name, Mode::from_bits_truncate(0o700)))?;
                }
                None => ctx.nix(mkdirat(&parent, name, Mode::from_bits_truncate(0o700)))?,
            }
            ctx.nix(open_dir_at(&parent, name))?
        };
        if !meta.xattrs.is_empty() {
            set_xattrs(ctx, &File::from(dir), &meta.xattrs)?;
        }
        self.dirs.insert(components, meta);
        Ok(())
    }

    /// Handles a `.wh.*` entry (whatever its tar type).
    fn whiteout(&mut self, ctx: &Ctx<'_>, components: &[OsString]) -> Result<(), ImageError> {
        let (last, dirs) = components.split_last().expect("checked non-empty");
        let last = last.as_bytes();
        if last == OPAQUE_MARKER {
            self.stats.opaque_dirs += 1;
            return match self.options.whiteouts {
                Whiteouts::Overlay => {
                    let dir = match ctx.io(self.walk(dirs, true))? {
                        Walk::Found(fd) => fd,
                        Walk::Symlink => return Err(ctx.unsafe_entry("path traverses a symlink")),
                        _ => {
                            return Err(
                                ctx.unsafe_entry("a parent path component is not a directory")
                            )
                        }
                    };
                    ctx.io(File::from(dir).set_xattr(OVERLAY_OPAQUE_XATTR, b"y"))
                }
                Whiteouts::Apply => {
                    for i in 1..=dirs.len() {
                        self.touched.insert(dirs[..i].to_vec());
                    }
                    match ctx.io(self.walk(dirs, false))? {
                        Walk::Found(fd) => ctx.io(self.clear_untouched(&fd, dirs.to_vec())),
                        Walk::Missing => Ok(()),
                        Walk::Symlink => Err(ctx.unsafe_entry("path traverses a symlink")),
                        Walk::NotDir => {
                            Err(ctx.unsafe_entry("a parent path component is not a directory"))
                        }
                    }
                }
            };
        }
        let name = &last[WHITEOUT_PREFIX.len()..];
        if name.starts_with(WHITEOUT_PREFIX) {
            // `.wh..wh.*` other than the opaque marker: AUFS metadata.
            tracing::debug!(path = %ctx.shown, "skipping aufs metadata entry");
            return Ok(());
        }
        if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
            return Err(ctx.unsafe_entry("whiteout names no valid file"));
        }
        let name = OsStr::from_bytes(name);
        self.stats.whiteouts += 1;
        match self.options.whiteouts {
            Whiteouts::Overlay => {
                let mut target = dirs.to_vec();
                target.push(name.to_owned());
                let (parent, name) = self.parent_of(ctx, &target)?;
                ctx.io(remove_at(&parent, name))?;
                ctx.nix(mknodat(
                    &parent,
                    name,
                    SFlag::S_IFCHR,
                    Mode::empty(),
                    nix::sys::stat::makedev(0, 0),
                ))
            }
            Whiteouts::Apply => match ctx.io(self.walk(dirs, false))? {
                Walk::Found(parent) => ctx.io(remove_at(&parent, name)),
                Walk::Missing | Walk::NotDir => Ok(()),
                Walk::Symlink => Err(ctx.unsafe_entry("path traverses a symlink")),
            },
        }
    }

    /// Removes everything below `dir` that this layer did not write
    /// (an opaque directory while flattening).
    fn clear_untouched(&self, dir: &OwnedFd, path: Vec<OsString>) -> io::Result<()> {
        for name in read_dir_names(dir)? {
            let mut child = path.clone();
            child.push(name.clone());
            if !self.touched.contains(&child) {
                remove_at(dir, &name)?;
            } else if let Some(st) = lstat_at(dir, &name)? {
                if Kind::of(&st) == Some(Kind::Dir) {
                    let fd = open_dir_at(dir, &name)?;
                    self.clear_untouched(&fd, child)?;
                }
            }
        }
        Ok(())
    }

    /// A hard link whose target is not in this layer: copies the target's
    /// content and metadata from the highest lower layer that has it,
    /// opening every component with `O_NOFOLLOW`. Refuses when the target
    /// is whited out, hidden by an opaque directory, or not a regular file.
    fn copy_from_lower(
        &mut self,
        ctx: &Ctx<'_>,
        components: &[OsString],
        target_dirs: &[OsString],
        target_name: &OsStr,
    ) -> Result<(), ImageError> {
        let not_found =
            || ctx.unsafe_entry("hard link target is in neither this layer nor a lower one");
        if let Some(ready) = &self.options.lowers_ready {
            if !(ready.0)() {
                return ctx.io(Err(io::Error::other(LowersNotReady)));
            }
        }
        for lower in self.options.lowers.clone() {
            let mut dir = ctx.nix(nix::fcntl::open(&lower, DIR_NOFOLLOW, Mode::empty()))?;
            let mut hidden = false;
            let mut missing = false;
            for component in target_dirs {
                match ctx.io(lstat_at(&dir, component))? {
                    Some(st) if Kind::of(&st) == Some(Kind::Dir) => {
                        dir = ctx.nix(open_dir_at(&dir, component))?;
                        if is_opaque(&dir) {
                            hidden = true;
                        }
                    }
                    Some(st) if Kind::of(&st) == Some(Kind::Char) && st.st_rdev == 0 => {
                        return Err(not_found());
                    }
                    Some(_) => {
                        return Err(
                            ctx.unsafe_entry("hard link target path traverses a symlink or file")
                        )
                    }
                    None => {
                        missing = true;
                        break;
                    }
                }
            }
            if missing {
                if hidden {
                    return Err(not_found());
                }
                continue;
            }
            match ctx.io(lstat_at(&dir, target_name))? {
                None if hidden => return Err(not_found()),
                None => continue,
                Some(st) if Kind::of(&st) == Some(Kind::File) => {
                    let src = File::from(ctx.nix(openat(
                        &dir,
                        target_name,
                        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                        Mode::empty(),
                    ))?);
                    let st = ctx.nix(nix::sys::stat::fstat(src.as_fd()))?;
                    if u64::try_from(st.st_size).unwrap_or(u64::MAX) > self.options.max_file_bytes {
                        return Err(ImageError::LayerTooLarge {
                            reason: format!("{:?} is larger than the per-file limit", ctx.shown),
                        });
                    }
                    let mut xattrs = Vec::new();
                    if let Ok(names) = src.list_xattr() {
                        for name in names {
                            if xattr_is_preserved(name.as_bytes()) {
                                if let Ok(Some(value)) = src.get_xattr(&name) {
                                    xattrs.push((name, value));
                                }
                            }
                        }
                    }
                    let meta = Meta {
                        mode: st.st_mode & 0o7777,
                        uid: st.st_uid,
                        gid: st.st_gid,
                        mtime: TimeSpec::new(st.st_mtime, st.st_mtime_nsec),
                        xattrs,
                    };
                    let (parent, name) = self.parent_of(ctx, components)?;
                    ctx.io(remove_at(&parent, name))?;
                    let fd = ctx.nix(openat(
                        &parent,
                        name,
                        OFlag::O_WRONLY
                            | OFlag::O_CREAT
                            | OFlag::O_EXCL
                            | OFlag::O_NOFOLLOW
                            | OFlag::O_CLOEXEC,
                        Mode::from_bits_truncate(0o600),
                    ))?;
                    let mut file = File::from(fd);
                    ctx.io(io::copy(&mut (&src).take(st.st_size as u64), &mut file))?;
                    self.stats.lower_links_copied += 1;
                    return self.apply_fd_meta(ctx, &file, &meta, true);
                }
                Some(st) if Kind::of(&st) == Some(Kind::Char) && st.st_rdev == 0 => {
                    return Err(not_found())
                }
                Some(_) => {
                    return Err(ctx.unsupported("hard link to a non-regular file of a lower layer"))
                }
            }
        }
        Err(not_found())
    }

    fn hard_link(
        &mut self,
        ctx: &Ctx<'_>,
        components: &[OsString],
        raw_target: &[u8],
    ) -> Result<(), ImageError> {
        let target = entry_components(raw_target)
            .map_err(|_| ctx.unsafe_entry("hard link target is outside the layer"))?;
        let Some((target_name, target_dirs)) = target.split_last() else {
            return Err(ctx.unsafe_entry("hard link target is the layer root"));
        };
        if target == components {
            return Ok(());
        }
        let from_lower = !self.options.lowers.is_empty();
        let target_parent = match ctx.io(self.walk(target_dirs, false))? {
            Walk::Found(fd) => fd,
            Walk::Symlink => {
                return Err(ctx.unsafe_entry("hard link target path traverses a symlink"))
            }
            Walk::Missing if from_lower => {
                return self.copy_from_lower(ctx, components, target_dirs, target_name)
            }
            Walk::Missing | Walk::NotDir => {
                return Err(
                    ctx.unsafe_entry("hard link target is not an earlier entry of this layer")
                )
            }
        };
        match ctx.io(lstat_at(&target_parent, target_name))? {
            None if from_lower => {
                return self.copy_from_lower(ctx, components, target_dirs, target_name)
            }
            None => {
                return Err(
                    ctx.unsafe_entry("hard link target is not an earlier entry of this layer")
                )
            }
            Some(st) if Kind::of(&st) == Some(Kind::Char) && st.st_rdev == 0 => {
                return Err(ctx.unsafe_entry("hard link target is a whiteout"))
            }
            Some(st) if Kind::of(&st) == Some(Kind::Dir) => {
                return Err(ctx.unsafe_entry("hard link target is a directory"))
            }
            Some(_) => {}
        }
        let (parent, name) = self.parent_of(ctx, components)?;
        ctx.io(remove_at(&parent, name))?;
        ctx.nix(linkat(
            &target_parent,
            target_name.as_os_str(),
            &parent,
            name,
            AtFlags::empty(),
        ))
    }

    /// Opens (creating missing directories) the parent of `components` and
    /// returns it with the final name. Refuses the layer root.
    fn parent_of<'c>(
        &mut self,
        ctx: &Ctx<'_>,
        components: &'c [OsString],
    ) -> Result<(OwnedFd, &'c OsStr), ImageError> {
        let Some((name, dirs)) = components.split_last() else {
            return Err(ctx.unsafe_entry("only a directory may replace the layer root"));
        };
        match ctx.io(self.walk(dirs, true))? {
            Walk::Found(fd) => Ok((fd, name.as_os_str())),
            Walk::Symlink => Err(ctx.unsafe_entry("path traverses a symlink")),
            Walk::NotDir => Err(ctx.unsafe_entry("a parent path component is not a directory")),
            Walk::Missing => Err(ImageError::UnpackLayer {
                path: ctx.shown.to_owned(),
                source: io::Error::from(Errno::ENOENT),
            }),
        }
    }

    /// Opens the directory at `components` below the root, one component
    /// at a time with `O_NOFOLLOW`. With `create`, missing directories are
    /// made (and recorded for the final metadata pass).
    fn walk(&mut self, components: &[OsString], create: bool) -> io::Result<Walk> {
        let mut current = self.root.try_clone()?;
        for (i, component) in components.iter().enumerate() {
            match open_dir_at(&current, component) {
                Ok(fd) => current = fd,
                Err(Errno::ENOENT) if create => {
                    match mkdirat(
                        &current,
                        component.as_os_str(),
                        Mode::from_bits_truncate(0o700),
                    ) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(e.into()),
                    }
                    self.dirs
                        .insert(components[..=i].to_vec(), Meta::implicit_dir());
                    if self.options.whiteouts == Whiteouts::Apply {
                        self.touched.insert(components[..=i].to_vec());
                    }
                    match open_dir_at(&current, component) {
                        Ok(fd) => current = fd,
                        Err(e) => return Err(e.into()),
                    }
                }
                Err(Errno::ENOENT) => return Ok(Walk::Missing),
                Err(Errno::ELOOP | Errno::ENOTDIR) => {
                    let st = lstat_at(&current, component)?;
                    return Ok(match st.as_ref().and_then(Kind::of) {
                        Some(Kind::Symlink) => Walk::Symlink,
                        None if st.is_none() => Walk::Missing,
                        _ => Walk::NotDir,
                    });
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Walk::Found(current))
    }

    /// Applies owner, mode, xattrs and mtime to an open file, in the order
    /// that keeps them all (chown clears setuid bits and capabilities).
    fn apply_fd_meta(
        &self,
        ctx: &Ctx<'_>,
        file: &File,
        meta: &Meta,
        with_xattrs: bool,
    ) -> Result<(), ImageError> {
        if self.options.preserve_owners {
            ctx.nix(fchown(
                file.as_fd(),
                Some(Uid::from_raw(meta.uid)),
                Some(Gid::from_raw(meta.gid)),
            ))?;
        }
        ctx.nix(fchmod(
            file.as_fd(),
            Mode::from_bits_truncate(meta.mode & 0o7777),
        ))?;
        if with_xattrs {
            set_xattrs(ctx, file, &meta.xattrs)?;
        }
        ctx.nix(futimens(file.as_fd(), &meta.mtime, &meta.mtime))
    }

    /// Applies deferred directory metadata, deepest first. Directories that
    /// a later entry replaced are skipped.
    fn finish_dirs(&mut self) -> Result<(), ImageError> {
        let dirs = std::mem::take(&mut self.dirs);
        for (components, meta) in dirs.iter().rev() {
            let shown = components
                .iter()
                .map(|c| c.to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            let ctx = Ctx { shown: &shown };
            let fd = match ctx.io(self.walk(components, false))? {
                Walk::Found(fd) => fd,
                Walk::Missing | Walk::Symlink | Walk::NotDir => continue,
            };
            self.apply_fd_meta(&ctx, &File::from(fd), meta, false)?;
        }
        Ok(())
    }
}

/// Error context for one entry.
struct Ctx<'a> {
    shown: &'a str,
}

impl Ctx<'_> {
    fn unsafe_entry(&self, reason: &'static str) -> ImageError {
        ImageError::UnsafeEntry {
            path: self.shown.to_owned(),
            reason,
        }
    }

    fn unsupported(&self, reason: &'static str) -> ImageError {
        ImageError::UnsupportedEntry {
            path: self.shown.to_owned(),
            reason,
        }
    }

    fn read(&self) -> impl Fn(io::Error) -> ImageError {
        |source| ImageError::ReadArchive { source }
    }

    fn io<T>(&self, result: io::Result<T>) -> Result<T, ImageError> {
        result.map_err(|source| ImageError::UnpackLayer {
            path: self.shown.to_owned(),
            source,
        })
    }

    fn nix<T>(&self, result: nix::Result<T>) -> Result<T, ImageError> {
        self.io(result.map_err(io::Error::from))
    }
}

/// Copies `reader` to `file` through `buf` (grown to [`COPY_BUF_BYTES`]
/// once): one `write` per filled buffer instead of `io::copy`'s 8 KiB.
fn copy_buffered(reader: &mut impl Read, file: &mut File, buf: &mut Vec<u8>) -> io::Result<u64> {
    if buf.len() < COPY_BUF_BYTES {
        buf.resize(COPY_BUF_BYTES, 0);
    }
    let mut total = 0u64;
    loop {
        // Fill the buffer (decompressors return a little at a time).
        let mut filled = 0;
        while filled < buf.len() {
            match reader.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if filled == 0 {
            return Ok(total);
        }
        io::Write::write_all(file, &buf[..filled])?;
        total += filled as u64;
        if filled < buf.len() {
            return Ok(total);
        }
    }
}

/// Whether an open directory carries the overlay opaque xattr.
fn is_opaque(dir: &OwnedFd) -> bool {
    let Ok(fd) = dir.try_clone() else {
        return false;
    };
    matches!(File::from(fd).get_xattr(OVERLAY_OPAQUE_XATTR), Ok(Some(v)) if v == b"y")
}

fn set_xattrs(
    ctx: &Ctx<'_>,
    file: &File,
    xattrs: &[(OsString, Vec<u8>)],
) -> Result<(), ImageError> {
    for (name, value) in xattrs {
        match file.set_xattr(name, value) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                tracing::debug!(path = %ctx.shown, "filesystem does not support xattrs; dropped");
            }
            Err(e) => ctx.io(Err(e))?,
        }
    }
    Ok(())
}

/// Reads mode, owners, mtime and preserved xattrs, with pax overrides.
fn read_meta<R: Read>(entry: &mut tar::Entry<'_, R>, shown: &str) -> Result<Meta, ImageError> {
    let read_err = |source| ImageError::ReadArchive { source };
    let header = entry.header();
    let mode = header.mode().map_err(read_err)? & 0o7777;
    let mut uid = header.uid().map_err(read_err)?;
    let mut gid = header.gid().map_err(read_err)?;
    let mut mtime = TimeSpec::new(
        i64::try_from(header.mtime().map_err(read_err)?).unwrap_or(i64::MAX),
        0,
    );
    let mut xattrs = Vec::new();
    let bad_pax = |key: &str| ImageError::ReadArchive {
        source: io::Error::new(
            io::ErrorKind::InvalidData,
            format!("invalid pax {key} record"),
        ),
    };
    if let Some(extensions) = entry.pax_extensions().map_err(read_err)? {
        for extension in extensions {
            let extension = extension.map_err(read_err)?;
            let key = extension.key_bytes();
            let value = extension.value_bytes();
            match key {
                b"uid" => uid = parse_decimal(value).ok_or_else(|| bad_pax("uid"))?,
                b"gid" => gid = parse_decimal(value).ok_or_else(|| bad_pax("gid"))?,
                b"mtime" => mtime = parse_pax_time(value).ok_or_else(|| bad_pax("mtime"))?,
                _ if key.starts_with(b"GNU.sparse.") => {
                    // Readers without pax sparse support would silently
                    // write the sparse map into a renamed file.
                    return Err(ImageError::UnsupportedEntry {
                        path: shown.to_owned(),
                        reason: "pax (GNU 1.0) sparse files are not supported",
                    });
                }
                _ => {
                    if let Some(name) = key.strip_prefix(PAX_XATTR_PREFIX.as_bytes()) {
                        if xattr_is_preserved(name) {
                            xattrs.push((OsStr::from_bytes(name).to_owned(), value.to_vec()));
                        }
                    }
                }
            }
        }
    }
    let unsupported = |reason| ImageError::UnsupportedEntry {
        path: shown.to_owned(),
        reason,
    };
    Ok(Meta {
        mode,
        uid: u32::try_from(uid).map_err(|_| unsupported("uid does not fit in 32 bits"))?,
        gid: u32::try_from(gid).map_err(|_| unsupported("gid does not fit in 32 bits"))?,
        mtime,
        xattrs,
    })
}

fn parse_decimal(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// Parses a pax time (`"1700000000"`, `"1700000000.25"`, `"-1.5"`).
fn parse_pax_time(value: &[u8]) -> Option<TimeSpec> {
    let text = std::str::from_utf8(value).ok()?;
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    let secs: i64 = secs.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut nanos: i64 = 0;
    for (i, digit) in frac.bytes().take(9).enumerate() {
        nanos += i64::from(digit - b'0') * 10_i64.pow(8 - i as u32);
    }
    if text.starts_with('-') {
        // Sub-second precision before the epoch is not worth the sign dance.
        nanos = 0;
    }
    Some(TimeSpec::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_components_normalize_and_refuse() {
        let ok = |raw: &str| {
            entry_components(raw.as_bytes())
                .unwrap()
                .iter()
                .map(|c| c.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(ok("a/b"), ["a", "b"]);
        assert_eq!(ok("./a//b/./"), ["a", "b"]);
        assert_eq!(ok("./"), Vec::<String>::new());
        assert_eq!(ok("a..b/..c"), ["a..b", "..c"]);
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/..",
            "//x",
            "a\0b",
        ] {
            assert!(entry_components(bad.as_bytes()).is_err(), "{bad:?}");
        }
        let long = "a/".repeat(MAX_PATH_BYTES);
        assert!(entry_components(long.as_bytes()).is_err());
    }

    #[test]
    fn entry_components_never_yield_dot_dot_or_slashes() {
        // A small exhaustive check over a hostile alphabet.
        let alphabet: [&[u8]; 5] = [b"/", b".", b"..", b"a", b"./"];
        let mut inputs: Vec<Vec<u8>> = vec![Vec::new()];
        for _ in 0..4 {
            let mut next = Vec::new();
            for prefix in &inputs {
                for piece in alphabet {
                    let mut v = prefix.clone();
                    v.extend_from_slice(piece);
                    next.push(v);
                }
            }
            inputs.extend(next);
        }
        for input in inputs {
            if let Ok(components) = entry_components(&input) {
                assert!(!input.starts_with(b"/"));
                for c in components {
                    let bytes = c.as_bytes();
                    assert!(!bytes.is_empty() && bytes != b"." && bytes != b"..");
                    assert!(!bytes.contains(&b'/'));
                }
            }
        }
    }

    #[test]
    fn pax_times_parse() {
        assert_eq!(parse_pax_time(b"12"), Some(TimeSpec::new(12, 0)));
        assert_eq!(
            parse_pax_time(b"12.25"),
            Some(TimeSpec::new(12, 250_000_000))
        );
        assert_eq!(
            parse_pax_time(b"1.1234567891"),
            Some(TimeSpec::new(1, 123_456_789))
        );
        assert_eq!(parse_pax_time(b"-3.5"), Some(TimeSpec::new(-3, 0)));
        assert_eq!(parse_pax_time(b"x"), None);
        assert_eq!(parse_pax_time(b"1.x"), None);
    }
}
