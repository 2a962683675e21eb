//! Snapshots into images: a sandbox's overlay upper directory as one new
//! layer on its image ([`ImageStore::commit_upper`]), or one directory of
//! a sandbox as a single-layer image ([`ImageStore::commit_directory`]).
//!
//! The source tree belongs to a tenant and may change while it is read
//! (the runtime freezes the sandbox, but the node must not rely on it), so
//! it is read like a hostile archive is written:
//!
//! - Every entry is opened relative to its parent's descriptor, one
//!   component at a time, with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS
//!   | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)` and `O_NOFOLLOW`: a
//!   symlink is stored as a symlink and never followed, and no mount point
//!   is crossed (in a directory snapshot, `/proc` or a bind below the
//!   directory is left out). Regular files are opened `O_NONBLOCK` and
//!   re-checked with `fstat`, so a FIFO swapped in cannot block the walk.
//! - Files are read through holes (`SEEK_DATA`/`SEEK_HOLE`): a huge sparse
//!   file costs hashing its apparent size, but both the blob and the
//!   unpacked copy stay sparse on disk. A file that shrinks while read
//!   fails the snapshot (the tar would be corrupt); one that grows is cut
//!   at its size when opened.
//! - Owners: host ids in the sandbox's range `[base, base + count)` are
//!   stored as container ids (`id - base`); anything else (an id the
//!   sandbox cannot have produced, such as host root) becomes 65534
//!   (`nobody`). A v3 `security.capability` xattr's root id is shifted the
//!   same way (dropped when outside the range).
//! - Overlay whiteouts (char 0/0) become `.wh.NAME` entries and stay
//!   whiteouts in the unpacked layer; `trusted.overlay.opaque=y`
//!   directories get a `.wh..wh..opq` entry and keep the xattr. An entry
//!   carrying `trusted.overlay.redirect` or `trusted.overlay.metacopy` is
//!   refused ([`ImageError::UnsupportedEntry`]): the runtime mounts the
//!   overlay with `redirect_dir=off,metacopy=off`, so a renamed lower
//!   directory is copied up in full and neither can appear.
//! - Sockets, device nodes other than whiteouts, and names starting with
//!   `.wh.` (they would read as whiteouts in the archive) are skipped and
//!   counted in [`CommitStats::skipped`]. Paths longer than 4096 bytes and
//!   trees deeper than [`MAX_DEPTH`] are refused.
//!
//! One pass: entries are visited in a fixed order (pre-order, names sorted
//! bytewise), each is written to the layer tar (hashed on the way: the
//! diff id) and created in the staged unpacked tree at the same time, from
//! the same bytes. The tar is a deterministic GNU archive like
//! `import_dir`'s (numeric owners, whole-second mtimes, preserved xattrs as
//! sorted pax records), so committing the same content twice gives the
//! same diff id and reuses the layer.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use nix::errno::Errno;
use nix::fcntl::FlockArg;
use nix::fcntl::{openat, openat2, readlinkat, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{
    fchmod, fstat, fstatat, futimens, mkdirat, mknodat, utimensat, FileStat, Mode, SFlag,
    UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, symlinkat, Gid, Uid};
use sha2::{Digest as _, Sha256};
use tar::{EntryType, Header};
use xattr::FileExt as _;

use crate::digest::SHA256_PREFIX;
use crate::error::ImageError;
use crate::fsutil::{read_dir_names, Kind};
use crate::image::{
    BlobRef, Image, ImageConfig, ImageRecord, LayerRecord, IMAGE_RECORD_VERSION,
    LAYER_RECORD_VERSION, MEDIA_TYPE_LAYER_TAR,
};
use crate::name::ImageName;
use crate::store::{write_err, ImageStore, LAYER_FS_DIR, LAYER_RECORD_FILE};
use crate::unpack::{
    xattr_is_preserved, MAX_PATH_BYTES, OPAQUE_MARKER, OVERLAY_OPAQUE_XATTR, PAX_XATTR_PREFIX,
    WHITEOUT_PREFIX,
};

/// Deepest directory nesting a snapshot walks (each level holds two open
/// descriptors: source and copy).
pub const MAX_DEPTH: usize = 256;

/// The id unmapped owners are stored as.
pub const NOBODY_ID: u32 = 65534;

/// Overlay xattr of a renamed directory (`redirect_dir=on`).
pub const OVERLAY_REDIRECT_XATTR: &str = "trusted.overlay.redirect";

/// Overlay xattr of a metadata-only copy-up (`metacopy=on`).
pub const OVERLAY_METACOPY_XATTR: &str = "trusted.overlay.metacopy";

/// Bytes of content read and written per system call.
const CHUNK: usize = 1 << 20;

/// A sandbox's host id range, mapped back to container ids `0..count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdShift {
    /// Host id of the sandbox's id 0.
    pub base: u32,
    /// Size of the range.
    pub count: u32,
}

impl IdShift {
    /// No shifting: ids are stored as they are (for trees that already
    /// hold container ids).
    pub const IDENTITY: IdShift = IdShift {
        base: 0,
        count: u32::MAX,
    };

    /// The container id of host id `id` ([`NOBODY_ID`] outside the range).
    pub fn to_container(self, id: u32) -> u32 {
        match id.checked_sub(self.base) {
            Some(c) if c < self.count => c,
            _ => NOBODY_ID,
        }
    }

    fn contains(self, id: u32) -> bool {
        matches!(id.checked_sub(self.base), Some(c) if c < self.count)
    }
}

/// How a commit names and configures its image.
#[derive(Debug, Clone, Default)]
pub struct CommitOptions {
    /// Name (`name[:tag]`) to point at the new image.
    pub name: Option<String>,
    /// The new image's config; `None` = the parent's (an empty one for
    /// a directory snapshot).
    pub config: Option<ImageConfig>,
    /// Return a hold on the new image ([`CommitOutcome::hold`]), taken
    /// before the store lock is released, so no GC can remove the image
    /// (unnamed, say) before the caller uses it.
    pub hold: bool,
}

/// What a commit read and wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CommitStats {
    /// Regular files stored (hard links counted once).
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hard_links: u64,
    pub fifos: u64,
    /// Deletions (overlay whiteouts) and opaque directories.
    pub whiteouts: u64,
    pub opaque_dirs: u64,
    /// Sockets, devices and `.wh.*` names left out; mount points not crossed.
    pub skipped: u64,
    /// Apparent bytes of regular file content.
    pub content_bytes: u64,
    /// Size of the layer tar.
    pub tar_bytes: u64,
}

/// The result of [`ImageStore::commit_upper`] or
/// [`ImageStore::commit_directory`].
#[derive(Debug, Clone)]
pub struct CommitOutcome {
    /// The new image (parent layers + the new one, or just the new one).
    pub image: Image,
    /// `sha256:<hex>` of the new layer's tar (its diff id and blob digest).
    pub diff_id: String,
    /// The layer existed already (same content committed before).
    pub layer_reused: bool,
    pub stats: CommitStats,
    /// Wall-clock phases in microseconds: `walk` (read, tar, copy),
    /// `sync`, `publish` (layer and blob renames, image record, ref).
    pub phases: Vec<(String, u64)>,
    /// A hold on the new image, when [`CommitOptions::hold`] asked for one.
    pub hold: Option<crate::ImageHold>,
}

/// What kind of tree is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// An overlay upper dir: whiteouts and opaque dirs are carried.
    Upper,
    /// A merged view: no overlay metadata.
    Directory,
}

impl ImageStore {
    /// Captures an overlay upper directory (`upper`, a directory
    /// descriptor; see the module docs for how it is read) as one new layer
    /// on top of `parent`'s layers, and records the new image (`parent`'s
    /// binds, `options.config` or the parent's config) under
    /// `options.name` if given. `ids` is the sandbox's host id range.
    pub fn commit_upper(
        &self,
        upper: BorrowedFd<'_>,
        parent: &Image,
        ids: IdShift,
        options: &CommitOptions,
    ) -> Result<CommitOutcome, ImageError> {
        self.commit_upper_then(upper, parent, ids, options, || {})
    }

    /// [`ImageStore::commit_upper`], calling `after_walk` as soon as the
    /// source has been read completely (before the sync and the renames):
    /// the caller can let the sandbox run again from there.
    pub fn commit_upper_then(
        &self,
        upper: BorrowedFd<'_>,
        parent: &Image,
        ids: IdShift,
        options: &CommitOptions,
        after_walk: impl FnOnce(),
    ) -> Result<CommitOutcome, ImageError> {
        let name = options
            .name
            .as_deref()
            .map(ImageName::parse_new)
            .transpose()?;
        let parent_hex = crate::digest::parse_sha256_digest(&parent.id).ok_or_else(|| {
            ImageError::InvalidReference {
                reference: parent.id.clone(),
                reason: "parent image id must be sha256:<hex>",
            }
        })?;
        let _lock = self.lock(FlockArg::LockShared)?;
        let parent_record = self.read_record(parent_hex)?;
        let tree = self.commit_tree(upper, ids, Source::Upper, after_walk)?;
        let diff_hex = tree.0.clone();
        let mut layers = parent_record.layers.clone();
        layers.push(format!("{SHA256_PREFIX}{diff_hex}"));
        let record = ImageRecord {
            schema_version: IMAGE_RECORD_VERSION,
            layers,
            binds: parent_record.binds,
            config: options.config.clone().unwrap_or(parent_record.config),
            source: None,
            flattened: None,
        };
        let out = self.record_commit(record, name.as_ref(), options.hold, tree)?;
        tracing::info!(id = %out.image.id, parent = %parent.id, diff_id = %out.diff_id, reused = out.layer_reused, files = out.stats.files, "committed upper dir");
        Ok(out)
    }

    /// Captures the tree below `dir` (a directory descriptor, not stored
    /// itself) as a single-layer image. Overlay metadata is not
    /// interpreted (`dir` is a merged view), mount points below it are not
    /// crossed. `ids` is the host id range its owners are shifted from.
    pub fn commit_directory(
        &self,
        dir: BorrowedFd<'_>,
        ids: IdShift,
        options: &CommitOptions,
    ) -> Result<CommitOutcome, ImageError> {
        self.commit_directory_then(dir, ids, options, || {})
    }

    /// [`ImageStore::commit_directory`], calling `after_walk` once the
    /// source has been read completely.
    pub fn commit_directory_then(
        &self,
        dir: BorrowedFd<'_>,
        ids: IdShift,
        options: &CommitOptions,
        after_walk: impl FnOnce(),
    ) -> Result<CommitOutcome, ImageError> {
        let name = options
            .name
            .as_deref()
            .map(ImageName::parse_new)
            .transpose()?;
        let _lock = self.lock(FlockArg::LockShared)?;
        let tree = self.commit_tree(dir, ids, Source::Directory, after_walk)?;
        let record = ImageRecord {
            schema_version: IMAGE_RECORD_VERSION,
            layers: vec![format!("{SHA256_PREFIX}{}", tree.0)],
            binds: Vec::new(),
            config: options.config.clone().unwrap_or_default(),
            source: None,
            flattened: None,
        };
        let out = self.record_commit(record, name.as_ref(), options.hold, tree)?;
        tracing::info!(id = %out.image.id, diff_id = %out.diff_id, reused = out.layer_reused, files = out.stats.files, "committed directory");
        Ok(out)
    }

    /// Writes the image record of a committed tree (the caller holds the
    /// store lock), names it, takes the hold asked for before the lock is
    /// released, and times the `record` phase.
    fn record_commit(
        &self,
        record: ImageRecord,
        name: Option<&ImageName>,
        hold: bool,
        (diff_hex, reused, stats, mut phases): (String, bool, CommitStats, Vec<(String, u64)>),
    ) -> Result<CommitOutcome, ImageError> {
        let started = Instant::now();
        let image = self.commit_record(record, name)?;
        let hold = hold.then(|| self.hold_locked(&image.id));
        phases.push(("record".into(), started.elapsed().as_micros() as u64));
        Ok(CommitOutcome {
            image,
            diff_id: format!("{SHA256_PREFIX}{diff_hex}"),
            layer_reused: reused,
            stats,
            phases,
            hold,
        })
    }

    /// One directory holding the whole tree of `image`, to mount it
    /// somewhere as a single read-only tree: its only layer, or its layers
    /// flattened once into a cached layer (whiteouts applied).
    pub fn image_tree(&self, image: &Image) -> Result<PathBuf, ImageError> {
        if let [only] = image.layers.as_slice() {
            return Ok(only.clone());
        }
        let hex = crate::digest::parse_sha256_digest(&image.id).ok_or_else(|| {
            ImageError::InvalidReference {
                reference: image.id.clone(),
                reason: "image id must be sha256:<hex>",
            }
        })?;
        let _lock = self.lock(FlockArg::LockShared)?;
        let record = self.read_record(hex)?;
        let flat = match record.flattened {
            Some(flat) => flat,
            None => self.flatten(&record.layers)?,
        };
        let flat_hex =
            crate::digest::parse_sha256_digest(&flat).ok_or(ImageError::CorruptStore {
                path: self.layer_dir(hex),
                reason: "flattened layer is not a sha256 digest",
            })?;
        Ok(self.layer_dir(flat_hex).join(LAYER_FS_DIR))
    }

    /// Walks `src`, writing the tar blob and the unpacked tree under a
    /// work dir, then publishes both (or reuses an identical layer).
    /// Returns (diff hex, reused, stats, phases). The caller holds the
    /// store lock.
    #[allow(clippy::type_complexity)]
    fn commit_tree(
        &self,
        src: BorrowedFd<'_>,
        ids: IdShift,
        source: Source,
        after_walk: impl FnOnce(),
    ) -> Result<(String, bool, CommitStats, Vec<(String, u64)>), ImageError> {
        let mut phases = Vec::new();
        let started = Instant::now();
        let work = self.work_dir()?;
        let staging = work.path().join("layer");
        let fs_dir = staging.join(LAYER_FS_DIR);
        fs::create_dir(&staging).map_err(|e| write_err(&staging, e))?;
        fs::create_dir(&fs_dir).map_err(|e| write_err(&fs_dir, e))?;
        fs::set_permissions(&fs_dir, fs::Permissions::from_mode(0o755))
            .map_err(|e| write_err(&fs_dir, e))?;
        let blob_path = work.path().join("blob");
        let blob = crate::store::create_new(&blob_path)?;
        let dest = nix::fcntl::open(&fs_dir, crate::fsutil::DIR_NOFOLLOW, Mode::empty())
            .map_err(|e| write_err(&fs_dir, e.into()))?;
        let mut walker = Walker {
            out: TarOut::new(blob),
            ids,
            source,
            preserve_owners: self.preserve_owners,
            max_file_bytes: self.limits.max_file_bytes,
            links: HashMap::new(),
            stats: CommitStats::default(),
            buf: vec![0u8; CHUNK],
            dst_root: None,
        };
        walker.walk(src, dest)?;
        let (blob, diff_hex, tar_size) =
            walker.out.finish().map_err(|e| write_err(&blob_path, e))?;
        let mut stats = walker.stats;
        stats.tar_bytes = tar_size;
        phases.push(("walk".into(), started.elapsed().as_micros() as u64));
        // The source is read completely: the caller may let it change again.
        after_walk();
        let started = Instant::now();
        if self.layer_is_complete(&diff_hex) {
            drop(blob);
            // Blob first: a complete layer always has its blob.
            let spooled = crate::store::SpooledBlob {
                path: blob_path,
                hex: diff_hex.clone(),
                size: tar_size,
                compression: crate::oci::Compression::None,
                media_type: MEDIA_TYPE_LAYER_TAR.to_owned(),
            };
            crate::store::sync_fs_of(work.path())?;
            self.place_blob(&spooled)?;
            phases.push(("publish".into(), started.elapsed().as_micros() as u64));
            return Ok((diff_hex, true, stats, phases));
        }
        let _layer_lock = self.named_lock(&format!("layer-{diff_hex}"))?;
        let record = LayerRecord {
            schema_version: LAYER_RECORD_VERSION,
            diff_id: format!("{SHA256_PREFIX}{diff_hex}"),
            size: tar_size,
            blob: Some(BlobRef {
                digest: format!("{SHA256_PREFIX}{diff_hex}"),
                media_type: MEDIA_TYPE_LAYER_TAR.to_owned(),
                size: tar_size,
            }),
            flattened_from: None,
        };
        let record_path = staging.join(LAYER_RECORD_FILE);
        let bytes = crate::store::to_json(&record, &record_path)?;
        fs::write(&record_path, bytes).map_err(|e| write_err(&record_path, e))?;
        drop(blob);
        // One syncfs makes the blob and the tree durable.
        crate::store::sync_fs_of(&staging)?;
        phases.push(("sync".into(), started.elapsed().as_micros() as u64));
        let started = Instant::now();
        let spooled = crate::store::SpooledBlob {
            path: blob_path,
            hex: diff_hex.clone(),
            size: tar_size,
            compression: crate::oci::Compression::None,
            media_type: MEDIA_TYPE_LAYER_TAR.to_owned(),
        };
        let reused = self.layer_is_complete(&diff_hex);
        self.place_blob(&spooled)?;
        if !reused {
            let layer_dir = self.layer_dir(&diff_hex);
            if layer_dir.exists() {
                fs::rename(&layer_dir, work.path().join("stale-layer"))
                    .map_err(|e| write_err(&layer_dir, e))?;
            }
            self.rename_layer(&staging, &diff_hex)?;
        }
        phases.push(("publish".into(), started.elapsed().as_micros() as u64));
        Ok((diff_hex, reused, stats, phases))
    }
}

/// The layer tar being written: buffered, hashed, and sparse (runs of
/// zero blocks are skipped with a seek and the file is sized at the end).
struct TarOut {
    file: File,
    buf: Vec<u8>,
    hasher: Sha256,
    len: u64,
    /// Offset in `file` of `buf[0]`.
    flushed: u64,
}

impl TarOut {
    fn new(file: File) -> Self {
        Self {
            file,
            buf: Vec::with_capacity(CHUNK),
            hasher: Sha256::new(),
            len: 0,
            flushed: 0,
        }
    }

    fn flush_buf(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.file.write_all_at(&self.buf, self.flushed)?;
            self.flushed += self.buf.len() as u64;
            self.buf.clear();
        }
        Ok(())
    }

    /// Appends `n` zero bytes: hashed, but not written (a hole).
    fn zeros(&mut self, mut n: u64) -> io::Result<()> {
        static ZEROS: [u8; 64 * 1024] = [0u8; 64 * 1024];
        self.flush_buf()?;
        self.len += n;
        self.flushed += n;
        while n > 0 {
            let step = n.min(ZEROS.len() as u64) as usize;
            self.hasher.update(&ZEROS[..step]);
            n -= step as u64;
        }
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let rem = (self.len % 512) as usize;
        if rem != 0 {
            self.write_all(&[0u8; 512][..512 - rem])?;
        }
        Ok(())
    }

    /// Writes the end-of-archive blocks; returns the file, hex digest and
    /// size.
    fn finish(mut self) -> io::Result<(File, String, u64)> {
        self.write_all(&[0u8; 1024])?;
        self.flush_buf()?;
        self.file.set_len(self.len)?;
        Ok((self.file, hex::encode(self.hasher.finalize()), self.len))
    }
}

impl Write for TarOut {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.hasher.update(data);
        self.len += data.len() as u64;
        if self.buf.len() + data.len() > CHUNK {
            self.flush_buf()?;
        }
        if data.len() >= CHUNK {
            self.file.write_all_at(data, self.flushed)?;
            self.flushed += data.len() as u64;
        } else {
            self.buf.extend_from_slice(data);
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_buf()
    }
}

/// A directory being walked: source and copy.
struct Frame {
    src: OwnedFd,
    dst: OwnedFd,
    rel: Vec<u8>,
    names: std::vec::IntoIter<OsString>,
    /// Metadata applied to the copy when the frame is done (None: root).
    meta: Option<Meta>,
}

#[derive(Clone)]
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
}

struct Walker {
    out: TarOut,
    ids: IdShift,
    source: Source,
    preserve_owners: bool,
    max_file_bytes: u64,
    /// (dev, ino) of multiply-linked files stored → their path.
    links: HashMap<(u64, u64), Vec<u8>>,
    stats: CommitStats,
    buf: Vec<u8>,
    /// The copy's root (hard links are made from it by path).
    dst_root: Option<OwnedFd>,
}

/// How entries are opened: below the parent, no symlinks, no mount crossing.
fn how(flags: OFlag) -> OpenHow {
    OpenHow::new()
        .flags(flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS
                | ResolveFlag::RESOLVE_NO_XDEV,
        )
}

enum Opened {
    Fd(OwnedFd),
    /// Vanished, or a mount point (not crossed).
    Skip,
}

fn open_child(dir: &OwnedFd, name: &OsStr, flags: OFlag) -> io::Result<Opened> {
    match openat2(dir, name, how(flags)) {
        Ok(fd) => Ok(Opened::Fd(fd)),
        Err(Errno::ENOENT | Errno::EXDEV) => Ok(Opened::Skip),
        Err(e) => Err(e.into()),
    }
}

fn shown(rel: &[u8]) -> String {
    String::from_utf8_lossy(rel).into_owned()
}

impl Walker {
    fn walk(&mut self, src: BorrowedFd<'_>, dest: OwnedFd) -> Result<(), ImageError> {
        let root = openat2(src, ".", how(OFlag::O_RDONLY | OFlag::O_DIRECTORY))
            .map_err(|e| self.err(b"", e.into()))?;
        let names = read_dir_names(&root).map_err(|e| self.err(b"", e))?;
        self.dst_root = Some(dest.try_clone().map_err(|e| self.err(b"", e))?);
        let mut stack = vec![Frame {
            src: root,
            dst: dest,
            rel: Vec::new(),
            names: names.into_iter(),
            meta: None,
        }];
        while let Some(frame) = stack.last_mut() {
            let Some(name) = frame.names.next() else {
                let done = stack.pop().expect("non-empty stack");
                if let (Some(meta), Some(parent)) = (done.meta, stack.last()) {
                    let name = done.rel.rsplit(|&b| b == b'/').next().unwrap_or(&done.rel);
                    self.apply_dir_meta(&parent.dst, OsStr::from_bytes(name), &done.rel, &meta)?;
                }
                continue;
            };
            let mut rel = frame.rel.clone();
            if !rel.is_empty() {
                rel.push(b'/');
            }
            rel.extend_from_slice(name.as_bytes());
            if rel.len() > MAX_PATH_BYTES {
                return Err(ImageError::UnsafeEntry {
                    path: shown(&rel),
                    reason: "path is longer than 4096 bytes",
                });
            }
            let depth = stack.len();
            let frame = stack.last().expect("non-empty stack");
            if let Some(child) = self.entry(&frame.src, &frame.dst, &name, rel)? {
                if depth >= MAX_DEPTH {
                    return Err(ImageError::UnsafeEntry {
                        path: shown(&child.rel),
                        reason: "directory tree is deeper than the snapshot limit",
                    });
                }
                stack.push(child);
            }
        }
        Ok(())
    }

    fn entry(
        &mut self,
        src: &OwnedFd,
        dst: &OwnedFd,
        name: &OsStr,
        rel: Vec<u8>,
    ) -> Result<Option<Frame>, ImageError> {
        let st = match fstatat(src, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(self.err(&rel, e.into())),
        };
        let kind = Kind::of(&st);
        let whiteout = self.source == Source::Upper && kind == Some(Kind::Char) && st.st_rdev == 0;
        if name.as_bytes().starts_with(WHITEOUT_PREFIX) {
            tracing::debug!(path = %shown(&rel), "skipping a name that reads as a whiteout");
            self.stats.skipped += 1;
            return Ok(None);
        }
        match kind {
            Some(Kind::Dir) => self.dir(src, dst, name, rel),
            Some(Kind::File) => self.file(src, dst, name, rel).map(|()| None),
            Some(Kind::Symlink) => self.symlink(src, dst, name, &rel, &st).map(|()| None),
            Some(Kind::Char) if whiteout => self.whiteout(dst, name, &rel).map(|()| None),
            Some(Kind::Fifo) => self.fifo(dst, name, &rel, &st).map(|()| None),
            _ => {
                tracing::debug!(path = %shown(&rel), "skipping socket or device");
                self.stats.skipped += 1;
                Ok(None)
            }
        }
    }

    fn dir(
        &mut self,
        src: &OwnedFd,
        dst: &OwnedFd,
        name: &OsStr,
        rel: Vec<u8>,
    ) -> Result<Option<Frame>, ImageError> {
        let fd = match open_child(src, name, OFlag::O_RDONLY | OFlag::O_DIRECTORY)
            .map_err(|e| self.err(&rel, e))?
        {
            Opened::Fd(fd) => fd,
            Opened::Skip => {
                self.stats.skipped += 1;
                return Ok(None);
            }
        };
        let st = fstat(&fd).map_err(|e| self.err(&rel, e.into()))?;
        let file = File::from(fd.try_clone().map_err(|e| self.err(&rel, e))?);
        let mut opaque = false;
        if self.source == Source::Upper {
            if has_xattr(&file, OVERLAY_REDIRECT_XATTR) {
                return Err(ImageError::UnsupportedEntry {
                    path: shown(&rel),
                    reason: "overlay redirect (renamed directory); the overlay must be mounted with redirect_dir=off",
                });
            }
            opaque = matches!(file.get_xattr(OVERLAY_OPAQUE_XATTR), Ok(Some(v)) if v == b"y");
        }
        let xattrs = self.xattrs(&file, &rel)?;
        let meta = self.meta(&st);
        self.append_header(&rel, EntryType::Directory, &meta, 0, &xattrs, None)?;
        let names = read_dir_names(&fd).map_err(|e| self.err(&rel, e))?;
        mkdirat(dst, name, Mode::from_bits_truncate(0o700))
            .map_err(|e| self.err(&rel, e.into()))?;
        let copy = nix::fcntl::openat(dst, name, crate::fsutil::DIR_NOFOLLOW, Mode::empty())
            .map_err(|e| self.err(&rel, e.into()))?;
        let copy_file = File::from(copy.try_clone().map_err(|e| self.err(&rel, e))?);
        set_xattrs(&copy_file, &xattrs).map_err(|e| self.err(&rel, e))?;
        if opaque {
            let mut marker = rel.clone();
            marker.push(b'/');
            marker.extend_from_slice(OPAQUE_MARKER);
            let zero = Meta {
                mode: 0o644,
                uid: 0,
                gid: 0,
                mtime: 0,
            };
            self.append_header(&marker, EntryType::Regular, &zero, 0, &[], None)?;
            copy_file
                .set_xattr(OVERLAY_OPAQUE_XATTR, b"y")
                .map_err(|e| self.err(&rel, e))?;
            self.stats.opaque_dirs += 1;
        }
        self.stats.dirs += 1;
        Ok(Some(Frame {
            src: fd,
            dst: copy,
            rel,
            names: names.into_iter(),
            meta: Some(meta),
        }))
    }

    fn file(
        &mut self,
        src: &OwnedFd,
        dst: &OwnedFd,
        name: &OsStr,
        rel: Vec<u8>,
    ) -> Result<(), ImageError> {
        let fd = match open_child(
            src,
            name,
            OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY,
        )
        .map_err(|e| self.err(&rel, e))?
        {
            Opened::Fd(fd) => fd,
            Opened::Skip => {
                self.stats.skipped += 1;
                return Ok(());
            }
        };
        let st = fstat(&fd).map_err(|e| self.err(&rel, e.into()))?;
        if Kind::of(&st) != Some(Kind::File) {
            return Err(self.err(
                &rel,
                io::Error::other("entry changed type while it was read"),
            ));
        }
        let file = File::from(fd);
        if self.source == Source::Upper && has_xattr(&file, OVERLAY_METACOPY_XATTR) {
            return Err(ImageError::UnsupportedEntry {
                path: shown(&rel),
                reason: "overlay metacopy file; the overlay must be mounted with metacopy=off",
            });
        }
        let meta = self.meta(&st);
        if st.st_nlink > 1 {
            let key = (st.st_dev, st.st_ino);
            if let Some(first) = self.links.get(&key).cloned() {
                self.append_header(&rel, EntryType::Link, &meta, 0, &[], Some(&first))?;
                let first_os = OsStr::from_bytes(&first);
                // Every component of the first path is a directory this
                // walk created (symlinks are never descended into), so the
                // path resolves inside the copy.
                let root = self.dst_root.as_ref().expect("set by walk");
                linkat(root, first_os, dst, name, AtFlags::empty())
                    .map_err(|e| self.err(&rel, e.into()))?;
                self.stats.hard_links += 1;
                return Ok(());
            }
            self.links.insert(key, rel.clone());
        }
        let size = u64::try_from(st.st_size).unwrap_or(0);
        if size > self.max_file_bytes {
            return Err(ImageError::LayerTooLarge {
                reason: format!(
                    "{:?} has {size} bytes, more than the {} byte limit per file",
                    shown(&rel),
                    self.max_file_bytes
                ),
            });
        }
        let xattrs = self.xattrs(&file, &rel)?;
        self.append_header(&rel, EntryType::Regular, &meta, size, &xattrs, None)?;
        let copy = openat(
            dst,
            name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| self.err(&rel, e.into()))?;
        let copy = File::from(copy);
        self.copy_content(&file, &copy, size)
            .map_err(|e| self.err(&rel, e))?;
        self.out.pad().map_err(|e| self.err(&rel, e))?;
        set_xattrs(&copy, &xattrs).map_err(|e| self.err(&rel, e))?;
        self.apply_fd_meta(&copy, &meta)
            .map_err(|e| self.err(&rel, e))?;
        self.stats.files += 1;
        self.stats.content_bytes += size;
        Ok(())
    }

    /// Copies `size` bytes of `src` into the tar and into `dst`, skipping
    /// holes in both.
    fn copy_content(&mut self, src: &File, dst: &File, size: u64) -> io::Result<()> {
        let mut pos = 0u64;
        while pos < size {
            let data = match seek_data(src, pos)? {
                Some(d) if d < size => d,
                _ => size,
            };
            if data > pos {
                self.out.zeros(data - pos)?;
                pos = data;
                if pos >= size {
                    break;
                }
            }
            let hole = seek_hole(src, pos)?.unwrap_or(size).min(size);
            while pos < hole {
                let want = ((hole - pos) as usize).min(self.buf.len());
                let n = src.read_at(&mut self.buf[..want], pos)?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "file shrank while it was read",
                    ));
                }
                self.out.write_all(&self.buf[..n])?;
                dst.write_all_at(&self.buf[..n], pos)?;
                pos += n as u64;
            }
        }
        dst.set_len(size)?;
        Ok(())
    }

    fn symlink(
        &mut self,
        src: &OwnedFd,
        dst: &OwnedFd,
        name: &OsStr,
        rel: &[u8],
        st: &FileStat,
    ) -> Result<(), ImageError> {
        let target = match readlinkat(src, name) {
            Ok(t) => t,
            Err(Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(self.err(rel, e.into())),
        };
        if target.is_empty() {
            self.stats.skipped += 1;
            return Ok(());
        }
        let meta = self.meta(st);
        self.append_header(
            rel,
            EntryType::Symlink,
            &meta,
            0,
            &[],
            Some(target.as_bytes()),
        )?;
        symlinkat(target.as_os_str(), dst, name).map_err(|e| self.err(rel, e.into()))?;
        if self.preserve_owners {
            fchownat(
                dst,
                name,
                Some(Uid::from_raw(meta.uid)),
                Some(Gid::from_raw(meta.gid)),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|e| self.err(rel, e.into()))?;
        }
        let t = TimeSpec::new(meta.mtime, 0);
        utimensat(dst, name, &t, &t, UtimensatFlags::NoFollowSymlink)
            .map_err(|e| self.err(rel, e.into()))?;
        self.stats.symlinks += 1;
        Ok(())
    }

    fn whiteout(&mut self, dst: &OwnedFd, name: &OsStr, rel: &[u8]) -> Result<(), ImageError> {
        let mut wh = Vec::with_capacity(rel.len() + 4);
        if let Some(slash) = rel.iter().rposition(|&b| b == b'/') {
            wh.extend_from_slice(&rel[..=slash]);
        }
        wh.extend_from_slice(WHITEOUT_PREFIX);
        wh.extend_from_slice(name.as_bytes());
        let zero = Meta {
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 0,
        };
        self.append_header(&wh, EntryType::Regular, &zero, 0, &[], None)?;
        mknodat(dst, name, SFlag::S_IFCHR, Mode::empty(), 0)
            .map_err(|e| self.err(rel, e.into()))?;
        self.stats.whiteouts += 1;
        Ok(())
    }

    fn fifo(
        &mut self,
        dst: &OwnedFd,
        name: &OsStr,
        rel: &[u8],
        st: &FileStat,
    ) -> Result<(), ImageError> {
        let meta = self.meta(st);
        self.append_header(rel, EntryType::Fifo, &meta, 0, &[], None)?;
        mknodat(
            dst,
            name,
            SFlag::S_IFIFO,
            Mode::from_bits_truncate(0o600),
            0,
        )
        .map_err(|e| self.err(rel, e.into()))?;
        // O_NONBLOCK: opening a FIFO's read side does not wait for a writer.
        let fd = openat(
            dst,
            name,
            OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.err(rel, e.into()))?;
        self.apply_fd_meta(&File::from(fd), &meta)
            .map_err(|e| self.err(rel, e))?;
        self.stats.fifos += 1;
        Ok(())
    }

    /// Container-side metadata of a source entry.
    fn meta(&self, st: &FileStat) -> Meta {
        Meta {
            mode: st.st_mode & 0o7777,
            uid: self.ids.to_container(st.st_uid),
            gid: self.ids.to_container(st.st_gid),
            mtime: st.st_mtime,
        }
    }

    /// Preserved xattrs of `file`, sorted, `security.capability` shifted.
    fn xattrs(&self, file: &File, rel: &[u8]) -> Result<Vec<(OsString, Vec<u8>)>, ImageError> {
        let names = match file.list_xattr() {
            Ok(names) => names,
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => return Ok(Vec::new()),
            Err(e) => return Err(self.err(rel, e)),
        };
        let mut out = Vec::new();
        for name in names {
            if !xattr_is_preserved(name.as_bytes()) {
                continue;
            }
            let Some(mut value) = file.get_xattr(&name).map_err(|e| self.err(rel, e))? else {
                continue;
            };
            if name.as_bytes() == b"security.capability" {
                match shift_capability(&value, self.ids) {
                    Some(v) => value = v,
                    None => continue,
                }
            }
            out.push((name, value));
        }
        out.sort();
        Ok(out)
    }

    /// Writes one entry's header(s): pax xattrs, GNU long names, the header.
    fn append_header(
        &mut self,
        rel: &[u8],
        kind: EntryType,
        meta: &Meta,
        size: u64,
        xattrs: &[(OsString, Vec<u8>)],
        link: Option<&[u8]>,
    ) -> Result<(), ImageError> {
        let mut header = Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(meta.mode);
        header.set_uid(u64::from(meta.uid));
        header.set_gid(u64::from(meta.gid));
        header.set_mtime(u64::try_from(meta.mtime).unwrap_or(0));
        header.set_size(size);
        if kind == EntryType::Fifo || kind == EntryType::Char {
            let _ = header.set_device_major(0);
            let _ = header.set_device_minor(0);
        }
        // The tar crate writes long names (GNU 'L'/'K' entries) and pax
        // records; its data copy is bypassed (size is set, no data given),
        // and the bytes it produced are taken before it adds its trailer.
        let mut scratch = tar::Builder::new(Vec::with_capacity(1536));
        let records: Vec<(String, &[u8])> = xattrs
            .iter()
            .filter_map(|(n, v)| {
                n.to_str()
                    .map(|n| (format!("{PAX_XATTR_PREFIX}{n}"), v.as_slice()))
            })
            .collect();
        let result = (|| {
            if !records.is_empty() {
                scratch.append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))?;
            }
            let path = Path::new(OsStr::from_bytes(rel));
            match link {
                // The tar crate normalizes link names it sets itself ("/"
                // becomes "//"); short ones are stored byte for byte, long
                // ones go into a GNU 'K' entry as raw bytes.
                Some(target) if target.len() <= 100 => {
                    header.set_link_name_literal(target)?;
                    scratch.append_data(&mut header, path, io::empty())
                }
                Some(target) => {
                    scratch.append_link(&mut header, path, Path::new(OsStr::from_bytes(target)))
                }
                None => scratch.append_data(&mut header, path, io::empty()),
            }
        })();
        result.map_err(|e| self.err(rel, e))?;
        let bytes = std::mem::take(scratch.get_mut());
        self.out.write_all(&bytes).map_err(|e| self.err(rel, e))
    }

    fn apply_fd_meta(&self, file: &File, meta: &Meta) -> io::Result<()> {
        if self.preserve_owners {
            fchown(
                file,
                Some(Uid::from_raw(meta.uid)),
                Some(Gid::from_raw(meta.gid)),
            )?;
        }
        // After chown (which clears setuid/setgid).
        fchmod(file, Mode::from_bits_truncate(meta.mode))?;
        let t = TimeSpec::new(meta.mtime, 0);
        futimens(file, &t, &t)?;
        Ok(())
    }

    fn apply_dir_meta(
        &self,
        parent: &OwnedFd,
        name: &OsStr,
        rel: &[u8],
        meta: &Meta,
    ) -> Result<(), ImageError> {
        let fd = nix::fcntl::openat(parent, name, crate::fsutil::DIR_NOFOLLOW, Mode::empty())
            .map_err(|e| self.err(rel, e.into()))?;
        self.apply_fd_meta(&File::from(fd), meta)
            .map_err(|e| self.err(rel, e))
    }

    fn err(&self, rel: &[u8], source: io::Error) -> ImageError {
        ImageError::ArchiveDir {
            path: PathBuf::from(OsStr::from_bytes(rel)),
            source,
        }
    }
}

fn has_xattr(file: &File, name: &str) -> bool {
    matches!(file.get_xattr(name), Ok(Some(_)))
}

fn set_xattrs(file: &File, xattrs: &[(OsString, Vec<u8>)]) -> io::Result<()> {
    for (name, value) in xattrs {
        match file.set_xattr(name, value) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A v3 file capability's root id shifted into container ids (`None`:
/// outside the range, dropped); v2 values are kept as they are.
fn shift_capability(value: &[u8], ids: IdShift) -> Option<Vec<u8>> {
    const REVISION_MASK: u32 = 0xFF00_0000;
    const REVISION_3: u32 = 0x0300_0000;
    if value.len() < 4 {
        return None;
    }
    let magic = u32::from_le_bytes(value[..4].try_into().ok()?);
    if magic & REVISION_MASK != REVISION_3 {
        return Some(value.to_vec());
    }
    if value.len() != 24 {
        return None;
    }
    let root = u32::from_le_bytes(value[20..24].try_into().ok()?);
    if !ids.contains(root) {
        return None;
    }
    let mut out = value.to_vec();
    out[20..24].copy_from_slice(&(root - ids.base).to_le_bytes());
    Some(out)
}

fn seek_data(file: &File, pos: u64) -> io::Result<Option<u64>> {
    seek_whence(file, pos, libc::SEEK_DATA)
}

fn seek_hole(file: &File, pos: u64) -> io::Result<Option<u64>> {
    seek_whence(file, pos, libc::SEEK_HOLE)
}

/// `lseek` with `SEEK_DATA`/`SEEK_HOLE`; `None` past the end (`ENXIO`).
/// Filesystems without hole support report all data, which is correct.
fn seek_whence(file: &File, pos: u64, whence: i32) -> io::Result<Option<u64>> {
    let whence = if whence == libc::SEEK_DATA {
        nix::unistd::Whence::SeekData
    } else {
        nix::unistd::Whence::SeekHole
    };
    match nix::unistd::lseek(file, pos as i64, whence) {
        Ok(off) => Ok(Some(off as u64)),
        Err(Errno::ENXIO) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::os::fd::AsFd;
    use std::os::unix::fs::{symlink, FileTypeExt as _, MetadataExt};

    const BASE: u32 = 1 << 30;
    const IDS: IdShift = IdShift {
        base: BASE,
        count: 65536,
    };

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    fn dir_fd(p: &Path) -> OwnedFd {
        nix::fcntl::open(p, crate::fsutil::DIR_NOFOLLOW, Mode::empty()).unwrap()
    }

    fn chown(p: &Path, id: u32) {
        std::os::unix::fs::lchown(p, Some(id), Some(id)).unwrap();
    }

    /// A store with a parent image: `keep`, `gone`, `olddir/{a,b}`, `dir/x`.
    fn parent() -> (tempfile::TempDir, ImageStore, Image) {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir_all(src.join("olddir")).unwrap();
        fs::create_dir_all(src.join("dir")).unwrap();
        fs::write(src.join("keep"), b"keep").unwrap();
        fs::write(src.join("gone"), b"gone").unwrap();
        fs::write(src.join("olddir/a"), b"a").unwrap();
        fs::write(src.join("olddir/b"), b"b").unwrap();
        fs::write(src.join("dir/x"), b"x").unwrap();
        let store = ImageStore::open(tmp.path().join("store")).unwrap();
        let config = ImageConfig {
            env: vec!["A=1".into()],
            ..Default::default()
        };
        let image = store
            .import_dir_with_config(&src, "base:1", config)
            .unwrap();
        (tmp, store, image)
    }

    /// An upper dir with every kind of entry a sandbox can leave.
    fn hostile_upper(root: &Path) {
        fs::create_dir_all(root.join("dir/sub")).unwrap();
        fs::write(root.join("dir/new"), b"new content").unwrap();
        fs::write(root.join("dir/sub/deep"), b"deep").unwrap();
        fs::create_dir(root.join("olddir")).unwrap();
        fs::write(root.join("olddir/fresh"), b"fresh").unwrap();
        xattr::set(root.join("olddir"), OVERLAY_OPAQUE_XATTR, b"y").unwrap();
        nix::sys::stat::mknod(&root.join("gone"), SFlag::S_IFCHR, Mode::empty(), 0).unwrap();
        symlink("/", root.join("escape")).unwrap();
        symlink("../../../../etc/shadow", root.join("dir/rel")).unwrap();
        fs::write(root.join("linked"), b"linked").unwrap();
        fs::hard_link(root.join("linked"), root.join("dir/linked2")).unwrap();
        nix::unistd::mkfifo(&root.join("fifo"), Mode::from_bits_truncate(0o640)).unwrap();
        let _sock = std::os::unix::net::UnixListener::bind(root.join("sock")).unwrap();
        fs::write(root.join(".wh.keep"), b"not a whiteout").unwrap();
        fs::write(root.join("suid"), b"#!/bin/sh\n").unwrap();
        fs::write(root.join("owned"), b"owned").unwrap();
        fs::write(root.join("foreign"), b"foreign").unwrap();
        xattr::set(root.join("owned"), "user.note", b"hello").unwrap();
        xattr::set(root.join("owned"), "trusted.secret", b"no").unwrap();
        let sparse = File::create(root.join("sparse")).unwrap();
        sparse.write_all_at(b"head", 0).unwrap();
        sparse.write_all_at(b"tail", (32 << 20) - 4).unwrap();
        drop(sparse);
        let name = OsStr::from_bytes(b"bytes-\xff\x01\n");
        fs::write(root.join(name), b"odd name").unwrap();
        if is_root() {
            for p in [
                "",
                "dir",
                "dir/sub",
                "dir/new",
                "dir/sub/deep",
                "olddir",
                "olddir/fresh",
                "escape",
                "dir/rel",
                "linked",
                "fifo",
                ".wh.keep",
                "suid",
                "sparse",
            ] {
                chown(&root.join(p), BASE);
            }
            chown(&root.join(name), BASE);
            chown(&root.join("owned"), BASE + 1000);
            chown(&root.join("foreign"), 12345);
        }
        fs::set_permissions(root.join("suid"), fs::Permissions::from_mode(0o4755)).unwrap();
    }

    /// type, mode, owner, size, content, link target, rdev of every entry.
    fn listing(root: &Path) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for e in fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                let m = fs::symlink_metadata(&p).unwrap();
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                let what = if m.is_dir() {
                    stack.push(p.clone());
                    let opaque = xattr::get(&p, OVERLAY_OPAQUE_XATTR).unwrap().is_some();
                    format!("dir opaque={opaque}")
                } else if m.file_type().is_symlink() {
                    format!("link {}", fs::read_link(&p).unwrap().display())
                } else if m.is_file() {
                    let data = fs::read(&p).unwrap();
                    let x = xattr::list(&p).unwrap().collect::<Vec<_>>();
                    format!(
                        "file {} {} x={x:?}",
                        data.len(),
                        crate::digest::sha256_hex(&data)
                    )
                } else {
                    format!("other rdev={}", m.rdev())
                };
                // A whiteout's time is when it was made, in both trees.
                let mtime = if m.file_type().is_char_device() {
                    0
                } else {
                    m.mtime()
                };
                out.insert(
                    rel,
                    format!(
                        "{what} mode={:o} {}:{} mtime={mtime}",
                        m.mode(),
                        m.uid(),
                        m.gid()
                    ),
                );
            }
        }
        out
    }

    #[test]
    fn upper_becomes_a_layer_on_the_parent() {
        if !is_root() {
            eprintln!("SKIP upper_becomes_a_layer_on_the_parent: needs root (whiteouts, owners)");
            return;
        }
        let (tmp, store, parent) = parent();
        let upper = tmp.path().join("upper");
        fs::create_dir(&upper).unwrap();
        hostile_upper(&upper);
        let fd = dir_fd(&upper);
        let options = CommitOptions {
            name: Some("snap:1".into()),
            config: None,
            hold: false,
        };
        let out = store
            .commit_upper(fd.as_fd(), &parent, IDS, &options)
            .unwrap();
        assert!(!out.layer_reused);
        assert_eq!(out.image.layers.len(), 2);
        assert_eq!(out.image.layers[0], parent.layers[0]);
        assert_eq!(out.image.config, parent.config);
        assert_eq!(out.image.names, vec!["snap:1".to_string()]);
        assert_eq!(out.stats.whiteouts, 1);
        assert_eq!(out.stats.opaque_dirs, 1);
        assert_eq!(out.stats.hard_links, 1);
        assert_eq!(out.stats.skipped, 2, "socket and .wh.keep");

        let layer = &out.image.layers[1];
        let hex = out.diff_id.strip_prefix("sha256:").unwrap();
        let blob = store.root().join("blobs/sha256").join(hex);
        let bytes = fs::read(&blob).unwrap();
        assert_eq!(
            crate::digest::sha256_hex(&bytes),
            hex,
            "blob hashes to the diff id"
        );
        // The blob is sparse on disk.
        assert!(fs::metadata(&blob).unwrap().blocks() * 512 < 8 << 20);

        // Whiteout, opaque dir, owners, modes, links, xattrs in the copy.
        let meta = |p: &str| fs::symlink_metadata(layer.join(p)).unwrap();
        let gone = meta("gone");
        assert!(std::os::unix::fs::FileTypeExt::is_char_device(
            &gone.file_type()
        ));
        assert_eq!(gone.rdev(), 0);
        assert_eq!(
            xattr::get(layer.join("olddir"), OVERLAY_OPAQUE_XATTR).unwrap(),
            Some(b"y".to_vec())
        );
        assert_eq!(fs::read_link(layer.join("escape")).unwrap(), Path::new("/"));
        assert_eq!(meta("linked").ino(), meta("dir/linked2").ino());
        assert_eq!((meta("owned").uid(), meta("owned").gid()), (1000, 1000));
        assert_eq!(meta("foreign").uid(), NOBODY_ID);
        assert_eq!(meta("dir/new").uid(), 0);
        assert_eq!(meta("suid").mode() & 0o7777, 0o4755);
        assert!(std::os::unix::fs::FileTypeExt::is_fifo(
            &meta("fifo").file_type()
        ));
        assert!(!layer.join("sock").exists());
        assert!(!layer.join(".wh.keep").exists());
        assert_eq!(
            xattr::get(layer.join("owned"), "user.note").unwrap(),
            Some(b"hello".to_vec())
        );
        assert_eq!(
            xattr::get(layer.join("owned"), "trusted.secret").unwrap(),
            None
        );
        let sparse = meta("sparse");
        assert_eq!(sparse.len(), 32 << 20);
        assert!(sparse.blocks() * 512 < 1 << 20, "the copy stays sparse");
        assert_eq!(
            fs::read(layer.join(OsStr::from_bytes(b"bytes-\xff\x01\n"))).unwrap(),
            b"odd name"
        );

        // The tar has OCI whiteouts, and unpacking it gives the same tree.
        let mut names = Vec::new();
        for e in tar::Archive::new(&bytes[..]).entries().unwrap() {
            names.push(e.unwrap().path().unwrap().display().to_string());
        }
        assert!(names.contains(&".wh.gone".to_string()), "{names:?}");
        assert!(
            names.contains(&"olddir/.wh..wh..opq".to_string()),
            "{names:?}"
        );
        let unpacked = tmp.path().join("unpacked");
        fs::create_dir(&unpacked).unwrap();
        let opts = crate::unpack::UnpackOptions {
            preserve_owners: true,
            ..Default::default()
        };
        crate::unpack::unpack(&bytes[..], &unpacked, &opts).unwrap();
        assert_eq!(listing(&unpacked), listing(layer));

        // Same content again: same layer, same image.
        let again = store
            .commit_upper(fd.as_fd(), &parent, IDS, &options)
            .unwrap();
        assert!(again.layer_reused);
        assert_eq!(again.diff_id, out.diff_id);
        assert_eq!(again.image.id, out.image.id);
        assert_eq!(fs::read_dir(store.root().join("tmp")).unwrap().count(), 0);

        // A snapshot of the snapshot stacks a third layer.
        let upper2 = tmp.path().join("upper2");
        fs::create_dir(&upper2).unwrap();
        fs::write(upper2.join("third"), b"3").unwrap();
        let config = ImageConfig {
            env: vec!["B=2".into()],
            ..Default::default()
        };
        let third = store
            .commit_upper(
                dir_fd(&upper2).as_fd(),
                &out.image,
                IDS,
                &CommitOptions {
                    name: None,
                    config: Some(config.clone()),
                    hold: false,
                },
            )
            .unwrap();
        assert_eq!(third.image.layers.len(), 3);
        assert_eq!(third.image.config, config);
        assert_eq!(store.resolve(&third.image.id).unwrap().layers.len(), 3);
    }

    #[test]
    fn overlay_redirects_are_refused_and_leave_nothing() {
        if !is_root() {
            eprintln!(
                "SKIP overlay_redirects_are_refused_and_leave_nothing: needs root (trusted xattrs)"
            );
            return;
        }
        let (tmp, store, parent) = parent();
        let upper = tmp.path().join("upper");
        fs::create_dir_all(upper.join("renamed")).unwrap();
        fs::write(upper.join("renamed/f"), b"f").unwrap();
        xattr::set(upper.join("renamed"), OVERLAY_REDIRECT_XATTR, b"olddir").unwrap();
        let layers = fs::read_dir(store.root().join("layers")).unwrap().count();
        let err = store
            .commit_upper(
                dir_fd(&upper).as_fd(),
                &parent,
                IDS,
                &CommitOptions::default(),
            )
            .unwrap_err();
        assert_eq!(err.code(), "unsupported_layer_entry", "{err}");
        assert_eq!(
            fs::read_dir(store.root().join("layers")).unwrap().count(),
            layers
        );
        assert_eq!(fs::read_dir(store.root().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn directory_snapshot_is_a_single_layer_without_overlay_meaning() {
        let (tmp, store, _) = parent();
        let dir = tmp.path().join("data");
        fs::create_dir_all(dir.join("a/b")).unwrap();
        fs::write(dir.join("a/b/c"), b"c").unwrap();
        fs::write(dir.join("top"), b"top").unwrap();
        symlink("/etc/passwd", dir.join("a/pw")).unwrap();
        if is_root() {
            xattr::set(dir.join("a"), OVERLAY_OPAQUE_XATTR, b"y").unwrap();
        }
        let out = store
            .commit_directory(
                dir_fd(&dir).as_fd(),
                IdShift::IDENTITY,
                &CommitOptions {
                    name: Some("dirsnap".into()),
                    config: None,
                    hold: false,
                },
            )
            .unwrap();
        assert_eq!(out.image.layers.len(), 1);
        assert_eq!(out.stats.opaque_dirs, 0);
        let layer = &out.image.layers[0];
        assert_eq!(fs::read(layer.join("a/b/c")).unwrap(), b"c");
        assert_eq!(
            fs::read_link(layer.join("a/pw")).unwrap(),
            Path::new("/etc/passwd")
        );
        assert_eq!(
            xattr::get(layer.join("a"), OVERLAY_OPAQUE_XATTR).unwrap(),
            None
        );
        assert_eq!(store.image_tree(&out.image).unwrap(), *layer);
    }

    #[test]
    fn image_tree_flattens_stacks() {
        if !is_root() {
            eprintln!("SKIP image_tree_flattens_stacks: needs root (whiteouts)");
            return;
        }
        let (tmp, store, parent) = parent();
        let upper = tmp.path().join("upper");
        fs::create_dir(&upper).unwrap();
        nix::sys::stat::mknod(&upper.join("gone"), SFlag::S_IFCHR, Mode::empty(), 0).unwrap();
        fs::write(upper.join("added"), b"added").unwrap();
        let out = store
            .commit_upper(
                dir_fd(&upper).as_fd(),
                &parent,
                IDS,
                &CommitOptions::default(),
            )
            .unwrap();
        let tree = store.image_tree(&out.image).unwrap();
        assert!(!tree.join("gone").exists());
        assert_eq!(fs::read(tree.join("keep")).unwrap(), b"keep");
        assert_eq!(fs::read(tree.join("added")).unwrap(), b"added");
    }

    #[test]
    fn capability_root_ids_are_shifted() {
        let mut v3 = vec![0u8; 24];
        v3[..4].copy_from_slice(&0x0300_0001u32.to_le_bytes());
        v3[20..].copy_from_slice(&(BASE + 7).to_le_bytes());
        let shifted = shift_capability(&v3, IDS).unwrap();
        assert_eq!(u32::from_le_bytes(shifted[20..].try_into().unwrap()), 7);
        v3[20..].copy_from_slice(&5u32.to_le_bytes());
        assert_eq!(shift_capability(&v3, IDS), None);
        let v2 = 0x0200_0001u32.to_le_bytes().repeat(5);
        assert_eq!(shift_capability(&v2, IDS).unwrap(), v2);
        assert_eq!(IDS.to_container(BASE - 1), NOBODY_ID);
        assert_eq!(IDS.to_container(BASE + 65535), 65535);
        assert_eq!(IDS.to_container(BASE + 65536), NOBODY_ID);
    }
}
