//! Rewrites that let a CRIU checkpoint of one sandbox be restored as a NEW
//! sandbox in another host id range and with another hostname.
//!
//! A checkpoint holds two things that name the source sandbox's host ids:
//! the CRIU images (`userns-*.img` records the user namespace's uid/gid
//! maps, `utsns-*.img` the hostname) and the copy of the overlay upper
//! dir (files owned by host ids of the source slot). Restoring into slot
//! `m` instead of `n` means shifting both by `(m - n) * 65536`:
//! - [`rewrite_userns`] shifts every map extent's `lower_first`;
//! - [`rewrite_hostname`] sets the UTS namespace's `nodename`;
//! - [`shift_tree_owners`] chowns the upper copy, keeping what chown would
//!   lose (setuid/setgid bits, file capabilities) and shifting the ids kept
//!   inside xattrs (a v3 capability's rootid, POSIX ACL entries).
//!
//! All of these run on a private copy of the checkpoint (after
//! `checkpoint::verify`, since the rewrite changes the digests). Images are
//! replaced by a temp file + rename, never written in place, so a copy made
//! of hard links (`cp -al`) leaves the source checkpoint intact.
//!
//! CRIU image format (CRIU 4.1.1, `criu/include/magic.h`, `images/*.proto`):
//! `u32 LE IMG_COMMON_MAGIC`, `u32 LE` image magic, then entries, each a
//! `u32 LE` length and that many bytes of protobuf. Images are hostile
//! input: every length is bounded by what is left of the file, and files
//! larger than [`MAX_IMAGE_BYTES`] are refused.
//!
//! Unknown protobuf fields: prost drops fields its structs do not name, so
//! a decode + re-encode could silently lose data a newer CRIU wrote. The
//! rewriters therefore work at the wire level ([`wire`]): they copy every
//! field byte for byte and re-encode only the one field they change. The
//! prost structs below are used to read images and to check each rewrite
//! (the rewritten entry must decode to the expected value).

use std::collections::HashSet;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use prost::Message;

use super::IDS_PER_SANDBOX;
use crate::RuntimeError;

/// First word of every CRIU image (`IMG_COMMON_MAGIC`, "Sarov").
pub(crate) const IMG_COMMON_MAGIC: u32 = 0x5456_4319;
/// `USERNS_MAGIC` ("Kazan").
pub(crate) const USERNS_MAGIC: u32 = 0x5547_4906;
/// `UTSNS_MAGIC` ("Smolensk").
pub(crate) const UTSNS_MAGIC: u32 = 0x5447_3203;

/// Largest userns/utsns image read. Real ones are a few dozen bytes (one
/// entry, one or a few extents); anything near this is not CRIU's.
pub(crate) const MAX_IMAGE_BYTES: u64 = 1 << 20;

/// `__NEW_UTS_LEN`: the kernel's limit on a hostname.
const MAX_HOSTNAME_LEN: usize = 64;

const XATTR_CAPS: &str = "security.capability";
const XATTR_ACLS: [&str; 2] = ["system.posix_acl_access", "system.posix_acl_default"];

/// `images/userns.proto`: `uid_gid_extent`.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct UidGidExtent {
    #[prost(uint32, required, tag = "1")]
    pub first: u32,
    #[prost(uint32, required, tag = "2")]
    pub lower_first: u32,
    #[prost(uint32, required, tag = "3")]
    pub count: u32,
}

/// `images/userns.proto`: `userns_entry`.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct UsernsEntry {
    #[prost(message, repeated, tag = "1")]
    pub uid_map: Vec<UidGidExtent>,
    #[prost(message, repeated, tag = "2")]
    pub gid_map: Vec<UidGidExtent>,
}

/// `images/utsns.proto`: `utsns_entry`. The proto says `string`, but the
/// kernel's hostname is any bytes and CRIU (protobuf-c) writes it without
/// checking UTF-8, so these are read as `bytes` (same wire format) to
/// accept every image CRIU can restore.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct UtsnsEntry {
    #[prost(bytes = "vec", required, tag = "1")]
    pub nodename: Vec<u8>,
    #[prost(bytes = "vec", required, tag = "2")]
    pub domainname: Vec<u8>,
}

fn corrupt(reason: impl Into<String>) -> RuntimeError {
    RuntimeError::SnapshotCorrupt {
        reason: reason.into(),
    }
}

/// Rewrites every `userns-*.img` in `criu_dir` so the sandbox's ids map to
/// `to_base..to_base+65536` instead of `from_base..`: each uid_map and
/// gid_map extent must lie inside `[from_base, from_base + 65536)` (else
/// [`RuntimeError::SnapshotCorrupt`], and nothing is written) and gets
/// `to_base - from_base` added to its `lower_first`. Returns how many
/// extents changed (0 when the bases are equal; files are then untouched).
pub(crate) fn rewrite_userns(
    criu_dir: &Path,
    from_base: u32,
    to_base: u32,
) -> Result<usize, RuntimeError> {
    check_range("from_base", from_base, IDS_PER_SANDBOX)?;
    check_range("to_base", to_base, IDS_PER_SANDBOX)?;
    // Everything is read and checked before anything is written.
    let mut rewritten = Vec::new();
    let mut changed = 0;
    for path in images(criu_dir, "userns-")? {
        let bytes = read_image(&path)?;
        let entries = split_entries(&bytes, USERNS_MAGIC, &path)?;
        let mut out = header(USERNS_MAGIC);
        let mut file_changed = 0;
        for entry in entries {
            let (new, n) = wire::shift_userns(entry, from_base, to_base)
                .map_err(|e| corrupt(format!("{}: {e}", path.display())))?;
            // Check: the rewrite is exactly the decoded entry, shifted.
            let mut want = decode::<UsernsEntry>(entry, &path)?;
            for ext in want.uid_map.iter_mut().chain(want.gid_map.iter_mut()) {
                ext.lower_first = ext.lower_first - from_base + to_base;
            }
            if decode::<UsernsEntry>(&new, &path)? != want {
                return Err(corrupt(format!(
                    "{}: entry did not decode as expected after the rewrite",
                    path.display()
                )));
            }
            push_entry(&mut out, &new, &path)?;
            file_changed += n;
        }
        if file_changed > 0 && from_base != to_base {
            rewritten.push((path, out));
            changed += file_changed;
        }
    }
    for (path, out) in rewritten {
        replace_file(&path, &out)?;
    }
    Ok(changed)
}

/// Sets the UTS namespace's `nodename` to `hostname` in every `utsns-*.img`
/// in `criu_dir`, keeping `domainname` (and any other field) as it is.
/// Returns how many entries were rewritten.
pub(crate) fn rewrite_hostname(criu_dir: &Path, hostname: &str) -> Result<usize, RuntimeError> {
    if hostname.is_empty() || hostname.len() > MAX_HOSTNAME_LEN || hostname.contains('\0') {
        return Err(RuntimeError::InvalidSpec {
            field: "hostname",
            reason: format!("must be 1 to {MAX_HOSTNAME_LEN} bytes without NUL"),
        });
    }
    let mut rewritten = Vec::new();
    let mut changed = 0;
    for path in images(criu_dir, "utsns-")? {
        let bytes = read_image(&path)?;
        let entries = split_entries(&bytes, UTSNS_MAGIC, &path)?;
        let mut out = header(UTSNS_MAGIC);
        for entry in &entries {
            let new = wire::set_nodename(entry, hostname.as_bytes())
                .map_err(|e| corrupt(format!("{}: {e}", path.display())))?;
            let mut want = decode::<UtsnsEntry>(entry, &path)?;
            want.nodename = hostname.as_bytes().to_vec();
            if decode::<UtsnsEntry>(&new, &path)? != want {
                return Err(corrupt(format!(
                    "{}: entry did not decode as expected after the rewrite",
                    path.display()
                )));
            }
            push_entry(&mut out, &new, &path)?;
        }
        changed += entries.len();
        rewritten.push((path, out));
    }
    for (path, out) in rewritten {
        replace_file(&path, &out)?;
    }
    Ok(changed)
}

/// Reads the entries of one `userns-*.img`.
#[cfg(test)]
pub(crate) fn read_userns(path: &Path) -> Result<Vec<UsernsEntry>, RuntimeError> {
    read_entries(path, USERNS_MAGIC)
}

/// Reads the entries of one `utsns-*.img`.
#[cfg(test)]
pub(crate) fn read_utsns(path: &Path) -> Result<Vec<UtsnsEntry>, RuntimeError> {
    read_entries(path, UTSNS_MAGIC)
}

#[cfg(test)]
fn read_entries<M: Message + Default>(path: &Path, magic: u32) -> Result<Vec<M>, RuntimeError> {
    let bytes = read_image(path)?;
    split_entries(&bytes, magic, path)?
        .into_iter()
        .map(|e| decode(e, path))
        .collect()
}

fn decode<M: Message + Default>(entry: &[u8], path: &Path) -> Result<M, RuntimeError> {
    M::decode(entry).map_err(|e| corrupt(format!("{}: {e}", path.display())))
}

fn check_range(field: &'static str, base: u32, count: u32) -> Result<(), RuntimeError> {
    if base.checked_add(count).is_none() {
        return Err(RuntimeError::InvalidSpec {
            field,
            reason: format!("id range {base}+{count} overflows u32"),
        });
    }
    Ok(())
}

/// The regular files `<prefix>*.img` in `dir`, sorted.
fn images(dir: &Path, prefix: &str) -> Result<Vec<PathBuf>, RuntimeError> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).map_err(RuntimeError::prepare(dir))? {
        let e = e.map_err(RuntimeError::prepare(dir))?;
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with(prefix) && name.ends_with(".img") {
            out.push(e.path());
        }
    }
    out.sort();
    Ok(out)
}

/// Reads a whole image, refusing anything that is not a regular file or is
/// larger than [`MAX_IMAGE_BYTES`].
fn read_image(path: &Path) -> Result<Vec<u8>, RuntimeError> {
    let meta = fs::symlink_metadata(path).map_err(RuntimeError::prepare(path))?;
    if !meta.file_type().is_file() {
        return Err(corrupt(format!("{}: not a regular file", path.display())));
    }
    let f = fs::File::open(path).map_err(RuntimeError::prepare(path))?;
    let mut bytes = Vec::new();
    f.take(MAX_IMAGE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(RuntimeError::prepare(path))?;
    if bytes.len() as u64 > MAX_IMAGE_BYTES {
        return Err(corrupt(format!(
            "{}: larger than {MAX_IMAGE_BYTES} bytes",
            path.display()
        )));
    }
    Ok(bytes)
}

fn header(magic: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&IMG_COMMON_MAGIC.to_le_bytes());
    out.extend_from_slice(&magic.to_le_bytes());
    out
}

fn push_entry(out: &mut Vec<u8>, entry: &[u8], path: &Path) -> Result<(), RuntimeError> {
    let len = u32::try_from(entry.len())
        .map_err(|_| corrupt(format!("{}: entry too large", path.display())))?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(entry);
    Ok(())
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Checks the two magics and splits the rest into entries.
fn split_entries<'a>(
    bytes: &'a [u8],
    magic: u32,
    path: &Path,
) -> Result<Vec<&'a [u8]>, RuntimeError> {
    let bad = |what: String| corrupt(format!("{}: {what}", path.display()));
    match (read_u32(bytes, 0), read_u32(bytes, 4)) {
        (Some(IMG_COMMON_MAGIC), Some(m)) if m == magic => {}
        (Some(c), Some(m)) => {
            return Err(bad(format!(
                "magic {c:#010x} {m:#010x}, want {IMG_COMMON_MAGIC:#010x} {magic:#010x}"
            )))
        }
        _ => return Err(bad("shorter than its header".into())),
    }
    let mut entries = Vec::new();
    let mut at = 8;
    while at < bytes.len() {
        let len = read_u32(bytes, at).ok_or_else(|| bad(format!("truncated length at {at}")))?;
        let start = at + 4;
        let left = bytes.len() - start;
        if len as usize > left {
            return Err(bad(format!(
                "entry at {at} claims {len} bytes, {left} left"
            )));
        }
        entries.push(&bytes[start..start + len as usize]);
        at = start + len as usize;
    }
    Ok(entries)
}

/// Replaces `path` with `bytes` atomically: a temp file in the same
/// directory with the same mode and owner, fsynced, renamed over it.
fn replace_file(path: &Path, bytes: &[u8]) -> Result<(), RuntimeError> {
    let meta = fs::symlink_metadata(path).map_err(RuntimeError::prepare(path))?;
    let name = path
        .file_name()
        .ok_or_else(|| corrupt(format!("{}: no file name", path.display())))?;
    let tmp = path.with_file_name(format!(
        ".{}.rewrite-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let write = || -> std::io::Result<()> {
        let mode = meta.mode() & 0o7777;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        std::os::unix::fs::fchown(&f, Some(meta.uid()), Some(meta.gid()))?;
        // After fchown (which may clear setuid/setgid) and despite the umask.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    if let Err(e) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(RuntimeError::PrepareState {
            path: path.to_path_buf(),
            source: e,
        });
    }
    if let Some(dir) = path.parent() {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(RuntimeError::prepare(dir))?;
    }
    Ok(())
}

/// Shifts the owners of everything under `root` (`root` included) from
/// `[from_base, from_base + count)` to `[to_base, ..)`, without following
/// symlinks; ids outside the range stay. For a copy of an overlay upper
/// dir: regular files, dirs, symlinks, whiteouts (char 0:0), fifos and
/// sockets. Per entry, besides the owner:
/// - setuid/setgid bits, which chown clears, are restored (the original
///   mode is set again on every non-symlink that was chowned);
/// - a `security.capability` xattr, which chown removes, is set again, with
///   a v3 capability's rootid shifted when it lies in the range;
/// - ACL_USER/ACL_GROUP ids in `system.posix_acl_access` and
///   `system.posix_acl_default` are shifted when in the range;
/// - `trusted.overlay.*` xattrs are left alone (chown keeps them).
///
/// An inode with several hard links is shifted once. Returns how many
/// entries changed. Walks with an explicit stack, so depth is bounded only
/// by `PATH_MAX` (deeper paths fail with `ENAMETOOLONG`).
pub(crate) fn shift_tree_owners(
    root: &Path,
    from_base: u32,
    to_base: u32,
    count: u32,
) -> Result<u64, RuntimeError> {
    check_range("from_base", from_base, count)?;
    check_range("to_base", to_base, count)?;
    let shift = IdShift {
        from: from_base,
        to: to_base,
        count,
    };
    let mut changed = 0;
    let mut seen = HashSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = fs::symlink_metadata(&path).map_err(RuntimeError::prepare(&path))?;
        if meta.is_dir() {
            for e in fs::read_dir(&path).map_err(RuntimeError::prepare(&path))? {
                stack.push(e.map_err(RuntimeError::prepare(&path))?.path());
            }
        } else if meta.nlink() > 1 && !seen.insert((meta.dev(), meta.ino())) {
            // Another link to an inode already shifted: shifting again
            // would move it twice when the two ranges overlap.
            continue;
        }
        if shift_entry(&path, &meta, shift)? {
            changed += 1;
        }
    }
    Ok(changed)
}

#[derive(Clone, Copy)]
struct IdShift {
    from: u32,
    to: u32,
    count: u32,
}

impl IdShift {
    /// The shifted id, or `None` when `id` is outside the range.
    fn apply(self, id: u32) -> Option<u32> {
        (id.checked_sub(self.from)? < self.count).then(|| id - self.from + self.to)
    }
}

fn xattr_get(path: &Path, name: &str) -> Result<Option<Vec<u8>>, RuntimeError> {
    // `xattr::get` is lgetxattr: a symlink's own attributes, never its
    // target's. A filesystem without xattrs has none of these to shift.
    match xattr::get(path, name) {
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(None),
        r => r.map_err(RuntimeError::prepare(path)),
    }
}

fn shift_entry(path: &Path, meta: &fs::Metadata, shift: IdShift) -> Result<bool, RuntimeError> {
    let is_link = meta.file_type().is_symlink();
    let uid = shift.apply(meta.uid()).filter(|&u| u != meta.uid());
    let gid = shift.apply(meta.gid()).filter(|&g| g != meta.gid());
    let chown = uid.is_some() || gid.is_some();

    // Read before chown: chown removes security.capability.
    let (mut caps, mut acls) = (None, Vec::new());
    if !is_link {
        if let Some(old) = xattr_get(path, XATTR_CAPS)? {
            let new = shift_cap_rootid(&old, shift)
                .map_err(|e| corrupt(format!("{}: {XATTR_CAPS}: {e}", path.display())))?;
            caps = Some((new.is_some(), new.unwrap_or(old)));
        }
        for name in XATTR_ACLS {
            if let Some(old) = xattr_get(path, name)? {
                if let Some(new) = shift_acl(&old, shift)
                    .map_err(|e| corrupt(format!("{}: {name}: {e}", path.display())))?
                {
                    acls.push((name, new));
                }
            }
        }
    }

    if chown {
        std::os::unix::fs::lchown(path, uid, gid).map_err(RuntimeError::prepare(path))?;
    }
    for (name, value) in &acls {
        xattr::set(path, name, value).map_err(RuntimeError::prepare(path))?;
    }
    if chown && !is_link {
        // chown cleared setuid/setgid; setting the ACLs may have touched
        // the mode too. Not a symlink, so set_permissions (which follows
        // symlinks) acts on the entry itself.
        fs::set_permissions(path, fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(RuntimeError::prepare(path))?;
    }
    let mut caps_changed = false;
    if let Some((shifted, value)) = caps {
        if chown || shifted {
            xattr::set(path, XATTR_CAPS, &value).map_err(RuntimeError::prepare(path))?;
        }
        caps_changed = shifted;
    }
    Ok(chown || caps_changed || !acls.is_empty())
}

/// `VFS_CAP_REVISION_MASK` and `VFS_CAP_REVISION_3` (`linux/capability.h`).
const VFS_CAP_REVISION_MASK: u32 = 0xff00_0000;
const VFS_CAP_REVISION_3: u32 = 0x0300_0000;
/// `XATTR_CAPS_SZ_3`: `struct vfs_ns_cap_data`, the rootid at byte 20.
const XATTR_CAPS_SZ_3: usize = 24;
const CAP_ROOTID_OFFSET: usize = 20;

/// The capability xattr with its v3 rootid shifted, or `None` when nothing
/// changes (v1/v2 have no rootid; a rootid outside the range stays).
fn shift_cap_rootid(value: &[u8], shift: IdShift) -> Result<Option<Vec<u8>>, String> {
    let magic = read_u32(value, 0).ok_or("shorter than its header")?;
    if magic & VFS_CAP_REVISION_MASK != VFS_CAP_REVISION_3 {
        return Ok(None);
    }
    if value.len() != XATTR_CAPS_SZ_3 {
        return Err(format!("v3 capability of {} bytes", value.len()));
    }
    let root = read_u32(value, CAP_ROOTID_OFFSET).ok_or("no rootid")?;
    Ok(shift.apply(root).filter(|&r| r != root).map(|r| {
        let mut out = value.to_vec();
        out[CAP_ROOTID_OFFSET..].copy_from_slice(&r.to_le_bytes());
        out
    }))
}

/// `POSIX_ACL_XATTR_VERSION` and the tags that carry an id.
const ACL_XATTR_VERSION: u32 = 2;
const ACL_USER: u16 = 0x02;
const ACL_GROUP: u16 = 0x08;
const ACL_ENTRY_LEN: usize = 8;

/// A POSIX ACL xattr (`u32 version`, then `{u16 tag, u16 perm, u32 id}`
/// entries, little endian) with its ACL_USER/ACL_GROUP ids shifted, or
/// `None` when no id is in the range. Entry order is unchanged: a shift
/// by one delta keeps the ids sorted as the kernel wants them.
fn shift_acl(value: &[u8], shift: IdShift) -> Result<Option<Vec<u8>>, String> {
    let version = read_u32(value, 0).ok_or("shorter than its header")?;
    if version != ACL_XATTR_VERSION || !(value.len() - 4).is_multiple_of(ACL_ENTRY_LEN) {
        return Err(format!("version {version}, {} bytes", value.len()));
    }
    let mut out = value.to_vec();
    let mut changed = false;
    for at in (4..value.len()).step_by(ACL_ENTRY_LEN) {
        let tag = u16::from_le_bytes([value[at], value[at + 1]]);
        if tag != ACL_USER && tag != ACL_GROUP {
            continue;
        }
        let id = read_u32(value, at + 4).ok_or("truncated entry")?;
        if let Some(new) = shift.apply(id).filter(|&n| n != id) {
            out[at + 4..at + 8].copy_from_slice(&new.to_le_bytes());
            changed = true;
        }
    }
    Ok(changed.then_some(out))
}

/// Field-level protobuf rewriting: every field is copied byte for byte
/// except the one being changed, so fields these structs do not know about
/// survive (prost would drop them on re-encode).
mod wire {
    const VARINT: u8 = 0;
    const FIXED64: u8 = 1;
    const LEN: u8 = 2;
    const FIXED32: u8 = 5;

    /// One field: its number, wire type, the whole field as it was encoded
    /// (key included) and its payload (the varint value, or the bytes).
    pub(super) struct Field<'a> {
        pub number: u64,
        pub wire_type: u8,
        pub raw: &'a [u8],
        pub varint: u64,
        pub payload: &'a [u8],
    }

    fn varint(buf: &[u8], at: &mut usize) -> Result<u64, String> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = *buf.get(*at).ok_or("truncated varint")?;
            *at += 1;
            if i == 9 && b > 1 {
                return Err("varint overflows u64".into());
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    pub(super) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    /// Splits a message into its fields; every length is checked against
    /// what is left of `buf`.
    pub(super) fn fields(buf: &[u8]) -> Result<Vec<Field<'_>>, String> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < buf.len() {
            let start = at;
            let key = varint(buf, &mut at)?;
            let number = key >> 3;
            let wire_type = (key & 7) as u8;
            if number == 0 || number > u64::from(u32::MAX >> 3) {
                return Err(format!("field number {number}"));
            }
            let mut value = 0;
            let mut payload: &[u8] = &[];
            let take = |at: &mut usize, n: u64| -> Result<&[u8], String> {
                let left = buf.len() - *at;
                if n > left as u64 {
                    return Err(format!("field {number} claims {n} bytes, {left} left"));
                }
                let s = &buf[*at..*at + n as usize];
                *at += n as usize;
                Ok(s)
            };
            match wire_type {
                VARINT => value = varint(buf, &mut at)?,
                FIXED64 => payload = take(&mut at, 8)?,
                LEN => {
                    let n = varint(buf, &mut at)?;
                    payload = take(&mut at, n)?;
                }
                FIXED32 => payload = take(&mut at, 4)?,
                // 3 and 4 are proto2 groups, which CRIU never uses.
                other => return Err(format!("field {number}: wire type {other}")),
            }
            out.push(Field {
                number,
                wire_type,
                raw: &buf[start..at],
                varint: value,
                payload,
            });
        }
        Ok(out)
    }

    fn put_len_field(out: &mut Vec<u8>, number: u64, payload: &[u8]) {
        put_varint(out, number << 3 | u64::from(LEN));
        put_varint(out, payload.len() as u64);
        out.extend_from_slice(payload);
    }

    /// `userns_entry` with every extent's `lower_first` moved from
    /// `[from, from + 65536)` to `to + (lower_first - from)`. Returns the
    /// new entry and how many extents it holds.
    pub(super) fn shift_userns(
        entry: &[u8],
        from: u32,
        to: u32,
    ) -> Result<(Vec<u8>, usize), String> {
        let mut out = Vec::with_capacity(entry.len() + 16);
        let mut extents = 0;
        for f in fields(entry)? {
            if f.number != 1 && f.number != 2 {
                out.extend_from_slice(f.raw);
                continue;
            }
            let map = if f.number == 1 { "uid_map" } else { "gid_map" };
            if f.wire_type != LEN {
                return Err(format!("{map}: wire type {}", f.wire_type));
            }
            let ext = shift_extent(f.payload, from, to).map_err(|e| format!("{map}: {e}"))?;
            put_len_field(&mut out, f.number, &ext);
            extents += 1;
        }
        Ok((out, extents))
    }

    fn shift_extent(ext: &[u8], from: u32, to: u32) -> Result<Vec<u8>, String> {
        let fields = fields(ext)?;
        let scalar = |number: u64, name: &str| -> Result<u32, String> {
            let f = fields
                .iter()
                .rfind(|f| f.number == number)
                .ok_or_else(|| format!("extent without {name}"))?;
            if f.wire_type != VARINT {
                return Err(format!("{name}: wire type {}", f.wire_type));
            }
            u32::try_from(f.varint).map_err(|_| format!("{name} {} overflows u32", f.varint))
        };
        let lower = scalar(2, "lower_first")?;
        let count = u64::from(scalar(3, "count")?);
        let end = u64::from(from) + u64::from(super::IDS_PER_SANDBOX);
        if lower < from || u64::from(lower) + count > end {
            return Err(format!(
                "extent {lower}+{count} lies outside the id range {from}..{end}"
            ));
        }
        let mut out = Vec::with_capacity(ext.len() + 4);
        for f in &fields {
            if f.number == 2 {
                // Every occurrence (the last one wins when decoding).
                let v = u32::try_from(f.varint)
                    .ok()
                    .filter(|&v| v >= from && u64::from(v) < end)
                    .ok_or_else(|| format!("lower_first {} outside {from}..{end}", f.varint))?;
                put_varint(&mut out, 2 << 3 | u64::from(VARINT));
                put_varint(&mut out, u64::from(v - from + to));
            } else {
                out.extend_from_slice(f.raw);
            }
        }
        Ok(out)
    }

    /// `utsns_entry` with `nodename` (field 1) set to `name`: the first
    /// occurrence is replaced, later ones (which would win) dropped.
    pub(super) fn set_nodename(entry: &[u8], name: &[u8]) -> Result<Vec<u8>, String> {
        let mut out = Vec::with_capacity(entry.len() + name.len());
        let mut done = false;
        for f in fields(entry)? {
            if f.number != 1 {
                out.extend_from_slice(f.raw);
                continue;
            }
            if f.wire_type != LEN {
                return Err(format!("nodename: wire type {}", f.wire_type));
            }
            if !done {
                put_len_field(&mut out, 1, name);
                done = true;
            }
        }
        if !done {
            return Err("entry without nodename".into());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, FileTypeExt};

    const BASE: u32 = 200_000;
    const NEW: u32 = 300_000;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/criu")
            .join(name)
    }

    fn image(magic: u32, entries: &[Vec<u8>]) -> Vec<u8> {
        let mut out = header(magic);
        for e in entries {
            push_entry(&mut out, e, Path::new("test")).unwrap();
        }
        out
    }

    fn ext(first: u32, lower_first: u32, count: u32) -> UidGidExtent {
        UidGidExtent {
            first,
            lower_first,
            count,
        }
    }

    fn userns(uid: Vec<UidGidExtent>, gid: Vec<UidGidExtent>) -> UsernsEntry {
        UsernsEntry {
            uid_map: uid,
            gid_map: gid,
        }
    }

    fn write(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> PathBuf {
        let p = dir.join(name);
        fs::write(&p, bytes).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn magics_match_criu() {
        // criu/include/magic.h, CRIU 4.1.1; the fixtures start with them.
        let b = fs::read(fixture("userns-14.img")).unwrap();
        assert_eq!(read_u32(&b, 0), Some(IMG_COMMON_MAGIC));
        assert_eq!(read_u32(&b, 4), Some(USERNS_MAGIC));
        let b = fs::read(fixture("utsns-12.img")).unwrap();
        assert_eq!(read_u32(&b, 4), Some(UTSNS_MAGIC));
    }

    /// Real images from `criu dump` (patched CRIU 4.1.1) of a sandbox whose
    /// user namespace maps 0..65536 to 200000.. and whose hostname is
    /// `sbx-src`; `crit decode` shows the same values.
    #[test]
    fn real_images_decode() {
        let u = read_userns(&fixture("userns-14.img")).unwrap();
        let want = userns(vec![ext(0, BASE, 65536)], vec![ext(0, BASE, 65536)]);
        assert_eq!(u, vec![want]);
        let t = read_utsns(&fixture("utsns-12.img")).unwrap();
        assert_eq!(
            t,
            vec![UtsnsEntry {
                nodename: b"sbx-src".to_vec(),
                domainname: b"(none)".to_vec(),
            }]
        );
    }

    #[test]
    fn real_images_rewrite() {
        let dir = tempfile::tempdir().unwrap();
        let u = dir.path().join("userns-14.img");
        let t = dir.path().join("utsns-12.img");
        fs::copy(fixture("userns-14.img"), &u).unwrap();
        fs::copy(fixture("utsns-12.img"), &t).unwrap();
        assert_eq!(rewrite_userns(dir.path(), BASE, NEW).unwrap(), 2);
        assert_eq!(rewrite_hostname(dir.path(), "sbx-fork").unwrap(), 1);
        let want = userns(vec![ext(0, NEW, 65536)], vec![ext(0, NEW, 65536)]);
        assert_eq!(read_userns(&u).unwrap(), vec![want.clone()]);
        let uts = read_utsns(&t).unwrap();
        assert_eq!(uts[0].nodename, b"sbx-fork");
        assert_eq!(uts[0].domainname, b"(none)");
        // Same bytes prost would write for these (no unknown fields).
        assert_eq!(
            fs::read(&u).unwrap(),
            image(USERNS_MAGIC, &[want.encode_to_vec()])
        );
        // And back: identical to the original file.
        assert_eq!(rewrite_userns(dir.path(), NEW, BASE).unwrap(), 2);
        assert_eq!(
            fs::read(&u).unwrap(),
            fs::read(fixture("userns-14.img")).unwrap()
        );
    }

    #[test]
    fn userns_round_trip_keeps_mode_and_unknown_fields() {
        let dir = tempfile::tempdir().unwrap();
        let e = userns(
            vec![ext(0, BASE, 1000), ext(1000, BASE + 1000, 64536)],
            vec![ext(0, BASE, 65536)],
        );
        let mut raw = e.encode_to_vec();
        // An unknown top-level field (15, varint 7) and an unknown extent
        // field (9, bytes "x") must survive.
        raw.extend_from_slice(&[15 << 3, 7]);
        let mut x = ext(5, BASE + 5, 1).encode_to_vec();
        x.extend_from_slice(&[9 << 3 | 2, 1, b'x']);
        raw.push(2 << 3 | 2);
        raw.push(x.len() as u8);
        raw.extend_from_slice(&x);
        let second = userns(vec![], vec![ext(0, BASE + 7, 3)]).encode_to_vec();
        let p = write(
            dir.path(),
            "userns-3.img",
            &image(USERNS_MAGIC, &[raw, second]),
            0o640,
        );
        let untouched = write(dir.path(), "other-3.img", b"not an image", 0o600);
        assert_eq!(rewrite_userns(dir.path(), BASE, NEW).unwrap(), 5);
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o640);
        assert_eq!(fs::read(&untouched).unwrap(), b"not an image");
        let got = read_userns(&p).unwrap();
        assert_eq!(
            got[0].uid_map,
            vec![ext(0, NEW, 1000), ext(1000, NEW + 1000, 64536)]
        );
        assert_eq!(got[0].gid_map, vec![ext(0, NEW, 65536), ext(5, NEW + 5, 1)]);
        assert_eq!(got[1].gid_map, vec![ext(0, NEW + 7, 3)]);
        let bytes = fs::read(&p).unwrap();
        let entries = split_entries(&bytes, USERNS_MAGIC, &p).unwrap();
        assert!(entries[0].ends_with(&[9 << 3 | 2, 1, b'x']));
        assert!(entries[0].windows(2).any(|w| w == [15 << 3, 7]));
        // No temp files left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
        // Equal bases: nothing to do.
        assert_eq!(rewrite_userns(dir.path(), NEW, NEW).unwrap(), 0);
    }

    #[test]
    fn rewrite_does_not_write_through_hard_links() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let dst = dir.path().join("dst");
        fs::create_dir_all(&src).unwrap();
        fs::create_dir_all(&dst).unwrap();
        fs::copy(fixture("userns-14.img"), src.join("userns-14.img")).unwrap();
        fs::hard_link(src.join("userns-14.img"), dst.join("userns-14.img")).unwrap();
        rewrite_userns(&dst, BASE, NEW).unwrap();
        assert_eq!(
            fs::read(src.join("userns-14.img")).unwrap(),
            fs::read(fixture("userns-14.img")).unwrap()
        );
    }

    #[test]
    fn extent_outside_the_range_is_refused() {
        for bad in [
            ext(0, BASE - 1, 1),
            ext(0, BASE + 65536, 1),
            ext(0, BASE + 1, 65536),
            ext(0, 0, 65536),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let img = image(
                USERNS_MAGIC,
                &[userns(vec![ext(0, BASE, 10)], vec![bad]).encode_to_vec()],
            );
            let p = write(dir.path(), "userns-1.img", &img, 0o644);
            let e = rewrite_userns(dir.path(), BASE, NEW).unwrap_err();
            assert!(matches!(e, RuntimeError::SnapshotCorrupt { .. }), "{e}");
            assert_eq!(fs::read(&p).unwrap(), img, "nothing written");
        }
    }

    #[test]
    fn truncated_and_foreign_images_are_corrupt() {
        let good = fs::read(fixture("userns-14.img")).unwrap();
        let mut cases = vec![
            ("short header", good[..6].to_vec()),
            ("truncated entry", good[..good.len() - 1].to_vec()),
            ("truncated length", good[..10].to_vec()),
            ("wrong image magic", image(0x1234_5678, &[])),
        ];
        let mut foreign = good.clone();
        foreign[0] ^= 1;
        cases.push(("wrong common magic", foreign));
        let mut huge = header(USERNS_MAGIC);
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        cases.push(("huge length", huge));
        // A length inside the protobuf that points past the entry.
        cases.push((
            "inner length",
            image(USERNS_MAGIC, &[vec![0x0a, 0x7f, 0x08]]),
        ));
        cases.push((
            "bad varint",
            image(USERNS_MAGIC, &[vec![0x0a, 0x02, 0x10, 0xff]]),
        ));
        cases.push(("group", image(USERNS_MAGIC, &[vec![0x0b]])));
        for (what, bytes) in cases {
            let dir = tempfile::tempdir().unwrap();
            let p = write(dir.path(), "userns-1.img", &bytes, 0o644);
            let e = rewrite_userns(dir.path(), BASE, NEW).unwrap_err();
            assert!(
                matches!(e, RuntimeError::SnapshotCorrupt { .. }),
                "{what}: {e}"
            );
            assert!(read_userns(&p).is_err(), "{what}");
            fs::rename(&p, dir.path().join("utsns-1.img")).unwrap();
            let e = rewrite_hostname(dir.path(), "h").unwrap_err();
            assert!(
                matches!(e, RuntimeError::SnapshotCorrupt { .. }),
                "{what}: {e}"
            );
        }
        // Larger than the cap.
        let dir = tempfile::tempdir().unwrap();
        let mut big = header(USERNS_MAGIC);
        big.resize(MAX_IMAGE_BYTES as usize + 1, 0);
        write(dir.path(), "userns-1.img", &big, 0o644);
        let e = rewrite_userns(dir.path(), BASE, NEW).unwrap_err();
        assert!(matches!(e, RuntimeError::SnapshotCorrupt { .. }), "{e}");
    }

    #[test]
    fn hostname_round_trip_keeps_domain_and_unknown_fields() {
        let dir = tempfile::tempdir().unwrap();
        let e = UtsnsEntry {
            nodename: b"old-name".to_vec(),
            // Not UTF-8: the kernel allows it, and so must we.
            domainname: vec![b'd', 0xff],
        };
        let mut raw = e.encode_to_vec();
        raw.extend_from_slice(&[3 << 3 | 2, 2, b'h', b'i']);
        let p = write(
            dir.path(),
            "utsns-12.img",
            &image(UTSNS_MAGIC, &[raw]),
            0o600,
        );
        assert_eq!(rewrite_hostname(dir.path(), "sbx-new").unwrap(), 1);
        let got = read_utsns(&p).unwrap();
        assert_eq!(got[0].nodename, b"sbx-new");
        assert_eq!(got[0].domainname, vec![b'd', 0xff]);
        assert!(fs::read(&p)
            .unwrap()
            .ends_with(&[3 << 3 | 2, 2, b'h', b'i']));
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o600);
        for bad in ["", "a\0b", &"x".repeat(65)] {
            assert!(matches!(
                rewrite_hostname(dir.path(), bad),
                Err(RuntimeError::InvalidSpec { .. })
            ));
        }
    }

    fn owner(p: &Path) -> (u32, u32) {
        let m = fs::symlink_metadata(p).unwrap();
        (m.uid(), m.gid())
    }

    fn cap_v3(rootid: u32) -> Vec<u8> {
        // VFS_CAP_REVISION_3 | VFS_CAP_FLAGS_EFFECTIVE; permitted =
        // CAP_NET_BIND_SERVICE (bit 10); rootid at byte 20.
        let mut v = (VFS_CAP_REVISION_3 | 1).to_le_bytes().to_vec();
        for word in [1u32 << 10, 0, 0, 0, rootid] {
            v.extend_from_slice(&word.to_le_bytes());
        }
        v
    }

    fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        let mut v = ACL_XATTR_VERSION.to_le_bytes().to_vec();
        for &(tag, perm, id) in entries {
            v.extend_from_slice(&tag.to_le_bytes());
            v.extend_from_slice(&perm.to_le_bytes());
            v.extend_from_slice(&id.to_le_bytes());
        }
        v
    }

    const ACL_UNDEFINED_ID: u32 = u32::MAX;

    fn sample_acl(user: u32, group: u32) -> Vec<u8> {
        acl(&[
            (0x01, 6, ACL_UNDEFINED_ID),
            (ACL_USER, 6, user),
            (0x04, 4, ACL_UNDEFINED_ID),
            (ACL_GROUP, 4, group),
            (0x10, 6, ACL_UNDEFINED_ID),
            (0x20, 4, ACL_UNDEFINED_ID),
        ])
    }

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn shift_tree_owners_on_a_real_tree() {
        if !is_root() {
            eprintln!("skipped: needs root (chown, security.capability, trusted.*)");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("upper");
        let sh = |n: u32| n - BASE + NEW;
        fs::create_dir(&root).unwrap();
        let dir = root.join("d");
        fs::create_dir(&dir).unwrap();
        let file = dir.join("f");
        fs::write(&file, b"x").unwrap();
        let suid = root.join("suid");
        fs::write(&suid, b"x").unwrap();
        let capf = root.join("cap");
        fs::write(&capf, b"x").unwrap();
        let aclf = root.join("acl");
        fs::write(&aclf, b"x").unwrap();
        let outside = root.join("outside");
        fs::write(&outside, b"x").unwrap();
        let link = root.join("link");
        let target = tmp.path().join("target");
        fs::write(&target, b"x").unwrap();
        symlink(&target, &link).unwrap();
        let whiteout = root.join("wh");
        nix::sys::stat::mknod(
            &whiteout,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0),
            0,
        )
        .unwrap();
        let fifo = root.join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o640)).unwrap();
        let sock = root.join("sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let hard = dir.join("hard");
        fs::hard_link(&file, &hard).unwrap();

        for p in [
            &root, &dir, &file, &suid, &capf, &aclf, &whiteout, &fifo, &sock,
        ] {
            std::os::unix::fs::lchown(p, Some(BASE), Some(BASE + 5)).unwrap();
        }
        std::os::unix::fs::lchown(&link, Some(BASE + 1), Some(BASE + 1)).unwrap();
        std::os::unix::fs::lchown(&target, Some(BASE + 9), Some(BASE + 9)).unwrap();
        std::os::unix::fs::lchown(&outside, Some(1000), Some(BASE - 1)).unwrap();
        fs::set_permissions(&suid, fs::Permissions::from_mode(0o6755)).unwrap();
        xattr::set(&capf, XATTR_CAPS, &cap_v3(BASE)).unwrap();
        xattr::set(&aclf, XATTR_ACLS[0], &sample_acl(BASE + 7, 1000)).unwrap();
        xattr::set(&dir, XATTR_ACLS[1], &sample_acl(BASE + 8, BASE + 9)).unwrap();
        xattr::set(&dir, "trusted.overlay.opaque", b"y").unwrap();
        // The kernel stores what we set (host root: no translation).
        assert_eq!(xattr_get(&capf, XATTR_CAPS).unwrap(), Some(cap_v3(BASE)));

        // 10 entries in range (the hard link counts once), `outside` not.
        // Overlapping ranges on purpose: a second visit would shift twice.
        let n = shift_tree_owners(&root, BASE, BASE + 3, 65536).unwrap();
        assert_eq!(n, 10);
        assert_eq!(owner(&file), (BASE + 3, BASE + 8));
        assert_eq!(owner(&hard), (BASE + 3, BASE + 8));
        // Back, then to NEW for the real checks.
        assert_eq!(shift_tree_owners(&root, BASE + 3, BASE, 65536).unwrap(), 10);
        assert_eq!(shift_tree_owners(&root, BASE, NEW, 65536).unwrap(), 10);

        for p in [
            &root, &dir, &file, &suid, &capf, &aclf, &whiteout, &fifo, &sock,
        ] {
            assert_eq!(owner(p), (sh(BASE), sh(BASE + 5)), "{}", p.display());
        }
        assert_eq!(owner(&link), (sh(BASE + 1), sh(BASE + 1)));
        assert_eq!(fs::read_link(&link).unwrap(), target);
        assert_eq!(owner(&target), (BASE + 9, BASE + 9), "target untouched");
        assert_eq!(owner(&outside), (1000, BASE - 1));
        let mode = |p: &Path| fs::symlink_metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode(&suid), 0o6755);
        assert_eq!(mode(&fifo), 0o640);
        let ft = fs::symlink_metadata(&whiteout).unwrap().file_type();
        assert!(ft.is_char_device());
        assert_eq!(fs::symlink_metadata(&whiteout).unwrap().rdev(), 0);
        assert_eq!(xattr_get(&capf, XATTR_CAPS).unwrap(), Some(cap_v3(NEW)));
        assert_eq!(
            xattr_get(&aclf, XATTR_ACLS[0]).unwrap(),
            Some(sample_acl(sh(BASE + 7), 1000))
        );
        assert_eq!(
            xattr_get(&dir, XATTR_ACLS[1]).unwrap(),
            Some(sample_acl(sh(BASE + 8), sh(BASE + 9)))
        );
        assert_eq!(
            xattr_get(&dir, "trusted.overlay.opaque").unwrap(),
            Some(b"y".to_vec())
        );
    }

    #[test]
    fn capability_kept_when_its_rootid_is_outside_the_range() {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("f");
        fs::write(&f, b"x").unwrap();
        std::os::unix::fs::lchown(&f, Some(BASE), Some(BASE)).unwrap();
        xattr::set(&f, XATTR_CAPS, &cap_v3(1000)).unwrap();
        assert_eq!(shift_tree_owners(&f, BASE, NEW, 65536).unwrap(), 1);
        assert_eq!(owner(&f), (NEW, NEW));
        // chown dropped it; it was set again, unchanged.
        assert_eq!(xattr_get(&f, XATTR_CAPS).unwrap(), Some(cap_v3(1000)));
    }

    #[test]
    fn xattr_parsers() {
        let s = IdShift {
            from: BASE,
            to: NEW,
            count: 65536,
        };
        assert_eq!(shift_cap_rootid(&cap_v3(BASE + 65536), s), Ok(None));
        assert_eq!(
            shift_cap_rootid(&cap_v3(BASE + 1), s),
            Ok(Some(cap_v3(NEW + 1)))
        );
        let v2 = [0x0200_0001u32, 1, 0, 0, 0]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect::<Vec<u8>>();
        assert_eq!(shift_cap_rootid(&v2, s), Ok(None));
        assert!(shift_cap_rootid(&cap_v3(BASE)[..22], s).is_err());
        assert!(shift_cap_rootid(&[3], s).is_err());
        assert_eq!(shift_acl(&sample_acl(5, 6), s), Ok(None));
        assert!(shift_acl(&sample_acl(5, 6)[..10], s).is_err());
        assert!(shift_acl(&1u32.to_le_bytes(), s).is_err(), "version 1");
        assert_eq!(s.apply(BASE - 1), None);
        assert_eq!(s.apply(BASE + 65535), Some(NEW + 65535));
        assert_eq!(s.apply(BASE + 65536), None);
    }
}
