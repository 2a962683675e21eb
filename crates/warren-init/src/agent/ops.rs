//! The file operations, one request at a time.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{openat, readlinkat, renameat2, AtFlags, OFlag, RenameFlags};
use nix::sys::stat::{fstat, fstatat, mkdirat, FileStat, Mode};
use nix::unistd::{unlinkat, UnlinkatFlags};
use warren_proto::agent::{
    AgentReply, AgentRequest, FileKind, FsEntry, FsErrorCode, FRAME_HEADER_BYTES, MAX_CHUNK_BYTES,
    MAX_LIST_LIMIT,
};

use super::path::{check, join, open_dir, open_in, split};
use super::{End, Fail, Frame, Io};

/// Deepest directory nesting `list` descends into and `remove` deletes
/// (each level holds a descriptor).
const MAX_DEPTH: usize = 256;

/// Most entries of a listing sent in one message (well under the message
/// cap even with long paths; see `send_entries`).
const LIST_BATCH_BYTES: usize = 256 * 1024;

/// Default mode of a new file and directory.
const DEFAULT_FILE_MODE: u32 = 0o644;
const DEFAULT_DIR_MODE: u32 = 0o755;

pub(crate) struct Agent {
    /// The sandbox's `/`, every resolution starts here.
    pub root: OwnedFd,
    /// Frame header + one chunk.
    pub buf: Vec<u8>,
    pub tmp_counter: u64,
}

impl Agent {
    pub fn serve(&mut self, io: &mut Io) -> End {
        loop {
            let mut data = std::mem::take(&mut self.buf);
            let frame = io.read_frame(&mut data[FRAME_HEADER_BYTES..]);
            self.buf = data;
            let req = match frame {
                Ok(Frame::Request(r)) => r,
                // Data outside a write breaks the protocol.
                Ok(Frame::Data(_)) => return End::Broken,
                Err(e) => return e,
            };
            if let Err(e) = self.handle(io, req) {
                return e;
            }
        }
    }

    fn handle(&mut self, io: &mut Io, req: AgentRequest) -> Result<(), End> {
        let simple = |r: Result<AgentReply, Fail>| match r {
            Ok(reply) => reply,
            Err(f) => AgentReply::Error {
                code: f.code,
                message: f.message,
            },
        };
        match req {
            AgentRequest::Stat { path } => io.send(&simple(self.stat(&path))),
            AgentRequest::List {
                path,
                recursive,
                limit,
            } => self.list(io, &path, recursive, limit),
            AgentRequest::Read {
                path,
                offset,
                length,
            } => self.read(io, &path, offset, length),
            AgentRequest::Write {
                path,
                mode,
                create_parents,
            } => self.write(io, &path, mode, create_parents),
            AgentRequest::Mkdir {
                path,
                parents,
                mode,
            } => io.send(&simple(self.mkdir(&path, parents, mode))),
            AgentRequest::Remove { path, recursive } => {
                io.send(&simple(self.remove(&path, recursive)))
            }
            AgentRequest::Rename {
                from,
                to,
                overwrite,
            } => io.send(&simple(self.rename(&from, &to, overwrite))),
            AgentRequest::Watch { path, recursive } => {
                super::watch::run(io, self.root.as_fd(), &path, recursive)
            }
            // Only valid inside a write.
            AgentRequest::WriteEnd {} => Err(End::Broken),
        }
    }

    /// The parent directory of `path` and its final component.
    fn parent<'p>(&self, path: &'p [u8]) -> Result<(OwnedFd, &'p [u8]), Fail> {
        check(path)?;
        let (parent, name) = split(path).ok_or_else(|| {
            Fail::new(
                FsErrorCode::InvalidPath,
                "the path names no file (it is / or ends in . or ..)",
            )
        })?;
        let dir = open_dir(&self.root, parent).map_err(|e| Fail::errno(e, "open parent"))?;
        Ok((dir, name))
    }

    fn stat(&self, path: &[u8]) -> Result<AgentReply, Fail> {
        check(path)?;
        let entry = match split(path) {
            Some(_) => {
                let (dir, name) = self.parent(path)?;
                let st = fstatat(&dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)
                    .map_err(|e| Fail::errno(e, "stat"))?;
                entry(path.to_vec(), &st, dir.as_fd(), name)
            }
            None => {
                let fd =
                    open_in(&self.root, path, OFlag::O_PATH).map_err(|e| Fail::errno(e, "stat"))?;
                let st = fstat(&fd).map_err(|e| Fail::errno(e, "stat"))?;
                entry(path.to_vec(), &st, fd.as_fd(), b"")
            }
        };
        Ok(AgentReply::Stat { entry })
    }

    fn list(&mut self, io: &mut Io, path: &[u8], recursive: bool, limit: u32) -> Result<(), End> {
        let dir = match check(path).and_then(|_| {
            open_in(&self.root, path, OFlag::O_RDONLY | OFlag::O_DIRECTORY)
                .map_err(|e| Fail::errno(e, "open directory"))
        }) {
            Ok(d) => d,
            Err(f) => return io.fail(f),
        };
        let mut l = Listing {
            left: limit.min(MAX_LIST_LIMIT) as usize,
            batch: Vec::new(),
            batch_bytes: 0,
            truncated: false,
        };
        let mut prefix = path.to_vec();
        while prefix.len() > 1 && prefix.ends_with(b"/") {
            prefix.pop();
        }
        if let Err(f) = l.walk(io, dir, &prefix, recursive, 0)? {
            return io.fail(f);
        }
        l.flush(io)?;
        io.send(&AgentReply::ListEnd {
            truncated: l.truncated,
        })
    }

    fn read(
        &mut self,
        io: &mut Io,
        path: &[u8],
        offset: u64,
        length: Option<u64>,
    ) -> Result<(), End> {
        let opened = check(path).and_then(|_| {
            // O_NONBLOCK: opening a FIFO must not hang; it is refused below.
            let fd = open_in(
                &self.root,
                path,
                OFlag::O_RDONLY | OFlag::O_NOCTTY | OFlag::O_NONBLOCK,
            )
            .map_err(|e| Fail::errno(e, "open"))?;
            let st = fstat(&fd).map_err(|e| Fail::errno(e, "stat"))?;
            match FileKind::from_mode(st.st_mode) {
                FileKind::File => Ok((fd, st.st_size as u64)),
                FileKind::Directory => Err(Fail::new(FsErrorCode::IsADirectory, "is a directory")),
                _ => Err(Fail::new(FsErrorCode::NotAFile, "not a regular file")),
            }
        });
        let (fd, size) = match opened {
            Ok(v) => v,
            Err(f) => return io.fail(f),
        };
        io.send(&AgentReply::ReadStart { size })?;
        let mut left = length.unwrap_or(u64::MAX);
        let mut pos = offset;
        let mut sent = 0u64;
        let mut buf = std::mem::take(&mut self.buf);
        let result = loop {
            if left == 0 {
                break Ok(());
            }
            let want = (left.min(MAX_CHUNK_BYTES as u64)) as usize;
            let dst = &mut buf[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + want];
            match nix::sys::uio::pread(&fd, dst, pos as i64) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    if let Err(e) = io.send_data(&mut buf, n) {
                        self.buf = buf;
                        return Err(e);
                    }
                    pos += n as u64;
                    sent += n as u64;
                    left -= n as u64;
                }
                Err(Errno::EINTR) => {}
                Err(e) => break Err(Fail::errno(e, "read")),
            }
        };
        self.buf = buf;
        match result {
            Ok(()) => io.send(&AgentReply::Done { bytes: sent }),
            Err(f) => io.fail(f),
        }
    }

    fn write(
        &mut self,
        io: &mut Io,
        path: &[u8],
        mode: Option<u32>,
        create_parents: bool,
    ) -> Result<(), End> {
        let prepared = self.prepare_write(path, mode, create_parents);
        let mut w = match prepared {
            Ok(w) => w,
            Err(f) => return io.fail(f),
        };
        io.send(&AgentReply::WriteAccepted {})?;
        // From here on the temporary file is removed on every path out.
        let mut failed: Option<Fail> = None;
        let mut written = 0u64;
        let mut buf = std::mem::take(&mut self.buf);
        let end = loop {
            match io.read_frame(&mut buf[FRAME_HEADER_BYTES..]) {
                Ok(Frame::Data(n)) => {
                    if failed.is_some() {
                        continue; // discarding up to write_end
                    }
                    if let Err(e) = write_all(&w.file, &buf[FRAME_HEADER_BYTES..][..n]) {
                        let f = Fail::errno(e, "write");
                        w.discard();
                        if let Err(e) = io.send(&AgentReply::Error {
                            code: f.code,
                            message: f.message.clone(),
                        }) {
                            break Err(e);
                        }
                        failed = Some(f);
                    } else {
                        written += n as u64;
                    }
                }
                Ok(Frame::Request(AgentRequest::WriteEnd {})) => break Ok(()),
                Ok(Frame::Request(_)) => break Err(End::Broken),
                Err(e) => break Err(e),
            }
        };
        self.buf = buf;
        if let Err(e) = end {
            w.discard();
            return Err(e);
        }
        if failed.is_some() {
            // Already answered.
            return Ok(());
        }
        match w.commit() {
            Ok(()) => io.send(&AgentReply::Done { bytes: written }),
            Err(f) => io.fail(f),
        }
    }

    fn prepare_write(
        &mut self,
        path: &[u8],
        mode: Option<u32>,
        create_parents: bool,
    ) -> Result<PendingWrite, Fail> {
        check(path)?;
        let (parent, name) = split(path)
            .ok_or_else(|| Fail::new(FsErrorCode::InvalidPath, "the path names no file"))?;
        let dir = if create_parents {
            self.mkdir_p(parent, DEFAULT_DIR_MODE)?
        } else {
            open_dir(&self.root, parent).map_err(|e| Fail::errno(e, "open parent"))?
        };
        // The final component itself is never followed: a symlink there is
        // replaced, not written through.
        let existing = match fstatat(&dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => Some(st),
            Err(Errno::ENOENT) => None,
            Err(e) => return Err(Fail::errno(e, "stat")),
        };
        let mode = match (mode, &existing) {
            (Some(m), _) => m & 0o7777,
            (None, Some(st)) if FileKind::from_mode(st.st_mode) == FileKind::File => {
                st.st_mode & 0o777
            }
            _ => DEFAULT_FILE_MODE,
        };
        if let Some(st) = &existing {
            if FileKind::from_mode(st.st_mode) == FileKind::Directory {
                return Err(Fail::new(FsErrorCode::IsADirectory, "is a directory"));
            }
        }
        // A fresh temporary name in the same directory (same filesystem, so
        // the final rename is atomic); O_EXCL never reuses anything there.
        let pid = std::process::id();
        for _ in 0..16 {
            self.tmp_counter += 1;
            let tmp = format!(".warren-tmp-{pid}-{}", self.tmp_counter).into_bytes();
            match openat(
                &dir,
                tmp.as_slice(),
                OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o600),
            ) {
                Ok(file) => {
                    return Ok(PendingWrite {
                        dir,
                        name: name.to_vec(),
                        tmp,
                        file,
                        mode,
                        live: true,
                    })
                }
                Err(Errno::EEXIST) => continue,
                Err(e) => return Err(Fail::errno(e, "create")),
            }
        }
        Err(Fail::new(FsErrorCode::IoError, "no free temporary name"))
    }

    /// `mkdir -p`: each missing level is created in its parent as resolved
    /// from the root, so symlinks along the way resolve inside the sandbox.
    fn mkdir_p(&self, path: &[u8], mode: u32) -> Result<OwnedFd, Fail> {
        self.mkdir_p_depth(path, mode, 0)
    }

    fn mkdir_p_depth(&self, path: &[u8], mode: u32, depth: usize) -> Result<OwnedFd, Fail> {
        match open_dir(&self.root, path) {
            Ok(fd) => return Ok(fd),
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(Fail::errno(e, "open directory")),
        }
        if depth > MAX_DEPTH {
            return Err(Fail::new(FsErrorCode::LimitExceeded, "too many levels"));
        }
        let (parent, name) = split(path)
            .ok_or_else(|| Fail::new(FsErrorCode::InvalidPath, "cannot create this path"))?;
        let pdir = self.mkdir_p_depth(parent, mode, depth + 1)?;
        match mkdirat(&pdir, name, Mode::from_bits_truncate(mode)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(Fail::errno(e, "mkdir")),
        }
        open_dir(&self.root, path).map_err(|e| Fail::errno(e, "open directory"))
    }

    fn mkdir(&self, path: &[u8], parents: bool, mode: Option<u32>) -> Result<AgentReply, Fail> {
        check(path)?;
        let mode = mode.unwrap_or(DEFAULT_DIR_MODE) & 0o7777;
        if parents {
            self.mkdir_p(path, mode)?;
        } else {
            let (dir, name) = self.parent(path)?;
            mkdirat(&dir, name, Mode::from_bits_truncate(mode))
                .map_err(|e| Fail::errno(e, "mkdir"))?;
        }
        Ok(AgentReply::Done { bytes: 0 })
    }

    fn remove(&self, path: &[u8], recursive: bool) -> Result<AgentReply, Fail> {
        let (dir, name) = self.parent(path)?;
        let st = fstatat(&dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(|e| Fail::errno(e, "stat"))?;
        if FileKind::from_mode(st.st_mode) == FileKind::Directory {
            if recursive {
                remove_tree(dir.as_fd(), name, 0)?;
            } else {
                unlinkat(&dir, name, UnlinkatFlags::RemoveDir)
                    .map_err(|e| Fail::errno(e, "rmdir"))?;
            }
        } else {
            unlinkat(&dir, name, UnlinkatFlags::NoRemoveDir)
                .map_err(|e| Fail::errno(e, "unlink"))?;
        }
        Ok(AgentReply::Done { bytes: 0 })
    }

    fn rename(&self, from: &[u8], to: &[u8], overwrite: bool) -> Result<AgentReply, Fail> {
        let (fdir, fname) = self.parent(from)?;
        let (tdir, tname) = self.parent(to)?;
        let flags = if overwrite {
            RenameFlags::empty()
        } else {
            RenameFlags::RENAME_NOREPLACE
        };
        renameat2(&fdir, fname, &tdir, tname, flags).map_err(|e| Fail::errno(e, "rename"))?;
        Ok(AgentReply::Done { bytes: 0 })
    }
}

/// A write in progress: the temporary file and where it goes.
struct PendingWrite {
    dir: OwnedFd,
    name: Vec<u8>,
    tmp: Vec<u8>,
    file: OwnedFd,
    mode: u32,
    /// The temporary file still exists.
    live: bool,
}

impl PendingWrite {
    fn commit(&mut self) -> Result<(), Fail> {
        let r = (|| {
            nix::sys::stat::fchmod(&self.file, Mode::from_bits_truncate(self.mode))
                .map_err(|e| Fail::errno(e, "chmod"))?;
            nix::unistd::fsync(&self.file).map_err(|e| Fail::errno(e, "fsync"))?;
            nix::fcntl::renameat(
                &self.dir,
                self.tmp.as_slice(),
                &self.dir,
                self.name.as_slice(),
            )
            .map_err(|e| Fail::errno(e, "rename into place"))
        })();
        match r {
            Ok(()) => {
                self.live = false;
                Ok(())
            }
            Err(f) => {
                self.discard();
                Err(f)
            }
        }
    }

    /// Removes the temporary file and frees its space at once: unlinking
    /// alone would keep the blocks while the descriptor is open (until the
    /// rest of the stream is discarded), so a full disk would stay full
    /// after the `no_space` answer.
    fn discard(&mut self) {
        if self.live {
            let _ = nix::unistd::ftruncate(&self.file, 0);
            let _ = unlinkat(&self.dir, self.tmp.as_slice(), UnlinkatFlags::NoRemoveDir);
            self.live = false;
        }
    }
}

impl Drop for PendingWrite {
    fn drop(&mut self) {
        self.discard();
    }
}

fn write_all(fd: &OwnedFd, mut data: &[u8]) -> Result<(), Errno> {
    while !data.is_empty() {
        match nix::unistd::write(fd, data) {
            Ok(0) => return Err(Errno::EIO),
            Ok(n) => data = &data[n..],
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// An entry for `st`; a symlink's target is read from `dir`/`name`.
fn entry(path: Vec<u8>, st: &FileStat, dir: BorrowedFd<'_>, name: &[u8]) -> FsEntry {
    let kind = FileKind::from_mode(st.st_mode);
    let symlink_target = if kind == FileKind::Symlink {
        readlinkat(dir, name).ok().map(|t| t.as_bytes().to_vec())
    } else {
        None
    };
    FsEntry {
        path,
        kind,
        size: st.st_size.max(0) as u64,
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        mtime_secs: st.st_mtime,
        mtime_nanos: st.st_mtime_nsec.clamp(0, 999_999_999) as u32,
        symlink_target,
    }
}

/// The names in a directory (without `.` and `..`), at most `max`.
fn names(dir: &OwnedFd, max: usize) -> Result<Vec<Vec<u8>>, Errno> {
    // Dir takes its own descriptor: a fresh open of the same directory
    // (a dup would share the read position).
    let fd = openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let mut d = Dir::from_fd(fd)?;
    let mut out = Vec::new();
    for e in d.iter() {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n == b"." || n == b".." {
            continue;
        }
        if out.len() >= max {
            break;
        }
        out.push(n.to_vec());
    }
    Ok(out)
}

struct Listing {
    left: usize,
    batch: Vec<FsEntry>,
    batch_bytes: usize,
    truncated: bool,
}

impl Listing {
    /// Lists `dir` (reported as `prefix`), depth first, never following
    /// symlinks below the starting directory. The outer error ends the
    /// agent; the inner one is the operation's answer.
    fn walk(
        &mut self,
        io: &mut Io,
        dir: OwnedFd,
        prefix: &[u8],
        recursive: bool,
        depth: usize,
    ) -> Result<Result<(), Fail>, End> {
        // One more than fits tells a truncated listing apart.
        let names = match names(&dir, self.left + 1) {
            Ok(n) => n,
            Err(e) if depth == 0 => return Ok(Err(Fail::errno(e, "read directory"))),
            // An unreadable subdirectory is listed but not descended into.
            Err(_) => return Ok(Ok(())),
        };
        for name in names {
            if self.left == 0 {
                self.truncated = true;
                return Ok(Ok(()));
            }
            let st = match fstatat(&dir, name.as_slice(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                // Removed meanwhile.
                Err(_) => continue,
            };
            let full = join(prefix, &name);
            let e = entry(full.clone(), &st, dir.as_fd(), &name);
            let is_dir = e.kind == FileKind::Directory;
            self.push(io, e)?;
            if recursive && is_dir && depth + 1 < MAX_DEPTH {
                if let Ok(sub) = openat(
                    &dir,
                    name.as_slice(),
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                ) {
                    if let Err(f) = self.walk(io, sub, &full, true, depth + 1)? {
                        return Ok(Err(f));
                    }
                }
            }
        }
        Ok(Ok(()))
    }

    fn push(&mut self, io: &mut Io, e: FsEntry) -> Result<(), End> {
        self.left -= 1;
        // JSON writes each byte as up to 4 characters.
        self.batch_bytes +=
            256 + 4 * (e.path.len() + e.symlink_target.as_ref().map_or(0, |t| t.len()));
        self.batch.push(e);
        if self.batch_bytes >= LIST_BATCH_BYTES {
            self.flush(io)?;
        }
        Ok(())
    }

    fn flush(&mut self, io: &mut Io) -> Result<(), End> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let entries = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        io.send(&AgentReply::Entries { entries })
    }
}

/// Removes the directory `name` in `parent` and everything below it,
/// never following symlinks.
fn remove_tree(parent: BorrowedFd<'_>, name: &[u8], depth: usize) -> Result<(), Fail> {
    if depth >= MAX_DEPTH {
        return Err(Fail::new(
            FsErrorCode::LimitExceeded,
            "directory tree too deep",
        ));
    }
    let dir = openat(
        parent,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Fail::errno(e, "open directory"))?;
    loop {
        // In rounds, so a huge directory needs no huge list.
        let batch = names(&dir, 4096).map_err(|e| Fail::errno(e, "read directory"))?;
        if batch.is_empty() {
            break;
        }
        for n in batch {
            let st = match fstatat(&dir, n.as_slice(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(Errno::ENOENT) => continue,
                Err(e) => return Err(Fail::errno(e, "stat")),
            };
            if FileKind::from_mode(st.st_mode) == FileKind::Directory {
                remove_tree(dir.as_fd(), &n, depth + 1)?;
            } else {
                match unlinkat(&dir, n.as_slice(), UnlinkatFlags::NoRemoveDir) {
                    Ok(()) | Err(Errno::ENOENT) => {}
                    Err(e) => return Err(Fail::errno(e, "unlink")),
                }
            }
        }
    }
    unlinkat(parent, name, UnlinkatFlags::RemoveDir).map_err(|e| Fail::errno(e, "rmdir"))
}
