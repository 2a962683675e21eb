//! `warren sandbox files ...` and `warren sandbox cp`: a sandbox's files
//! through the API. Paths inside the sandbox are taken as raw bytes.
//! Directories travel as tar streams; downloads are unpacked here with the
//! archive treated as hostile (it comes from the sandbox): only relative
//! paths without `..`, regular files written without following symlinks,
//! and symlinks created last, so nothing is ever written through one.

use std::io::{IsTerminal, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use warren_client::{Client, WriteFile};
use warren_proto::api::FileInfo;

use crate::remote::outln;

#[derive(Subcommand)]
pub enum FilesCommand {
    /// List a directory.
    Ls {
        id: String,
        path: String,
        /// The whole tree.
        #[arg(short, long)]
        recursive: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a file.
    Cat { id: String, path: String },
    /// Write stdin to a file (atomically).
    Put {
        id: String,
        path: String,
        /// Octal mode.
        #[arg(long, value_parser = parse_mode)]
        mode: Option<u32>,
        /// Create missing parent directories.
        #[arg(short, long)]
        parents: bool,
    },
    /// Show one entry as JSON.
    Stat { id: String, path: String },
    /// Create a directory.
    Mkdir {
        id: String,
        path: String,
        #[arg(short, long)]
        parents: bool,
    },
    /// Remove a file or directory.
    Rm {
        id: String,
        path: String,
        #[arg(short, long)]
        recursive: bool,
    },
    /// Rename a file or directory.
    Mv {
        id: String,
        from: String,
        to: String,
        /// Replace an existing target.
        #[arg(short, long)]
        force: bool,
    },
    /// Print changes under a path, one line each (`KIND PATH`), until
    /// interrupted or the path goes away.
    Watch {
        id: String,
        path: String,
        #[arg(short, long)]
        recursive: bool,
    },
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("{s:?} is not an octal mode"))
}

fn bytes(p: &str) -> Vec<u8> {
    p.as_bytes().to_vec()
}

pub async fn run(c: &Client, cmd: FilesCommand) -> Result<i32> {
    match cmd {
        FilesCommand::Ls {
            id,
            path,
            recursive,
            json,
        } => {
            let list = c.list_files(&id, &bytes(&path), recursive, None).await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&list)?)?;
            } else {
                for e in &list.entries {
                    outln!(
                        "{:<10} {:>5o} {:>12}  {}{}",
                        e.kind,
                        e.mode,
                        e.size,
                        e.path,
                        e.symlink_target
                            .as_ref()
                            .map(|t| format!(" -> {t}"))
                            .unwrap_or_default()
                    )?;
                }
                if list.truncated {
                    eprintln!(
                        "warren: listing truncated at {} entries",
                        list.entries.len()
                    );
                }
            }
        }
        FilesCommand::Cat { id, path } => {
            let (_, mut stream) = c.read_file(&id, &bytes(&path), None, None).await?;
            let mut out = std::io::stdout().lock();
            while let Some(chunk) = stream.next().await {
                out.write_all(&chunk?)?;
            }
            out.flush()?;
        }
        FilesCommand::Put {
            id,
            path,
            mode,
            parents,
        } => {
            let opts = WriteFile {
                mode,
                parents,
                user: None,
            };
            let info = c
                .write_file(
                    &id,
                    &bytes(&path),
                    &opts,
                    reader_stream(std::io::stdin(), None),
                )
                .await?;
            outln!("{} bytes", info.size)?;
        }
        FilesCommand::Stat { id, path } => {
            let info = c.stat_file(&id, &bytes(&path)).await?;
            outln!("{}", serde_json::to_string_pretty(&info)?)?;
        }
        FilesCommand::Mkdir { id, path, parents } => {
            c.make_dir(&id, &bytes(&path), parents).await?;
        }
        FilesCommand::Rm {
            id,
            path,
            recursive,
        } => c.remove_file(&id, &bytes(&path), recursive).await?,
        FilesCommand::Mv {
            id,
            from,
            to,
            force,
        } => {
            c.rename_file(&id, &bytes(&from), &bytes(&to), force)
                .await?
        }
        FilesCommand::Watch {
            id,
            path,
            recursive,
        } => {
            let mut failed = None;
            c.watch_files(&id, &bytes(&path), recursive, |ev| {
                let line = format!("{} {}", ev.kind, ev.path);
                match outln!("{line}") {
                    Ok(()) => true,
                    Err(e) => {
                        failed = Some(e);
                        false
                    }
                }
            })
            .await?;
            if let Some(e) = failed {
                return Err(e.into());
            }
        }
    }
    Ok(0)
}

/// `ID:PATH` → (id, path); anything else is local.
fn remote(arg: &str) -> Option<(&str, &str)> {
    let (id, path) = arg.split_once(':')?;
    (!id.is_empty() && !id.contains('/') && path.starts_with('/')).then_some((id, path))
}

/// A blocking reader as a body stream, read on a blocking thread, counting
/// into `bar`.
fn reader_stream(
    r: impl Read + Send + 'static,
    bar: Option<ProgressBar>,
) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + Sync + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        let mut r = r;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if let Some(b) = &bar {
                        b.inc(n as u64);
                    }
                    if tx
                        .blocking_send(Ok(bytes::Bytes::copy_from_slice(&buf[..n])))
                        .is_err()
                    {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    break;
                }
            }
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|i| (i, rx)) })
}

/// A progress bar on a terminal (bytes, rate, ETA when `total` is known).
fn progress(total: Option<u64>, what: &str) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = match total {
        Some(t) => ProgressBar::with_draw_target(Some(t), ProgressDrawTarget::stderr()),
        None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
    };
    let template = if total.is_some() {
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}"
    } else {
        "{msg} {spinner} {bytes} {bytes_per_sec}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    Some(bar)
}

/// `warren sandbox cp SRC DST`: one side `ID:/path`. Like `docker cp`: a
/// target that is an existing directory receives the source inside it.
pub async fn cp(c: &Client, src: &str, dst: &str) -> Result<i32> {
    match (remote(src), remote(dst)) {
        (None, Some((id, to))) => upload(c, Path::new(src), id, to).await,
        (Some((id, from)), None) => download(c, id, from, Path::new(dst)).await,
        (Some(_), Some(_)) => {
            bail!("copy between two sandboxes is not supported; copy through a local path")
        }
        (None, None) => bail!("one of SRC and DST must be ID:/path in a sandbox"),
    }?;
    Ok(0)
}

fn join_remote(dir: &str, name: &[u8]) -> Vec<u8> {
    let mut t = dir.trim_end_matches('/').as_bytes().to_vec();
    t.push(b'/');
    t.extend_from_slice(name);
    t
}

async fn upload(c: &Client, src: &Path, id: &str, to: &str) -> Result<()> {
    let meta = std::fs::metadata(src).with_context(|| format!("reading {}", src.display()))?;
    let name = src
        .file_name()
        .map(|n| n.as_bytes().to_vec())
        .unwrap_or_default();
    // Into an existing directory: as its child.
    let target = match c.stat_file(id, to.as_bytes()).await {
        Ok(info) if info.kind == "directory" && !name.is_empty() => join_remote(to, &name),
        _ => to.as_bytes().to_vec(),
    };
    if meta.is_dir() {
        let bar = progress(None, "uploading");
        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(4);
        let dir = src.to_path_buf();
        let counter = bar.clone();
        tokio::task::spawn_blocking(move || {
            let w = ChannelWriter {
                tx: tx.clone(),
                buf: Vec::new(),
                bar: counter,
            };
            let mut b = tar::Builder::new(w);
            b.follow_symlinks(false);
            let r = b
                .append_dir_all(".", &dir)
                .and_then(|_| b.into_inner())
                .and_then(|mut w| w.flush());
            if let Err(e) = r {
                let _ = tx.blocking_send(Err(e));
            }
        });
        let body =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|i| (i, rx)) },
            );
        let r = c.upload_dir(id, &target, body).await;
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        let r = r?;
        eprintln!(
            "copied {} file(s), {} director(ies), {} bytes{}",
            r.files,
            r.directories,
            r.bytes,
            if r.skipped.is_empty() {
                String::new()
            } else {
                format!("; skipped {} (symlinks, links, devices)", r.skipped.len())
            }
        );
    } else {
        let f = std::fs::File::open(src).with_context(|| format!("opening {}", src.display()))?;
        let bar = progress(Some(meta.len()), "uploading");
        let opts = WriteFile {
            mode: Some(meta.permissions().mode() & 0o7777),
            parents: false,
            user: None,
        };
        let r = c
            .write_file(id, &target, &opts, reader_stream(f, bar.clone()))
            .await;
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        r?;
    }
    Ok(())
}

struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<std::io::Result<bytes::Bytes>>,
    buf: Vec<u8>,
    bar: Option<ProgressBar>,
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= 256 * 1024 {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            if let Some(b) = &self.bar {
                b.inc(self.buf.len() as u64);
            }
            let chunk = bytes::Bytes::from(std::mem::take(&mut self.buf));
            self.tx
                .blocking_send(Ok(chunk))
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
        }
        Ok(())
    }
}

async fn download(c: &Client, id: &str, from: &str, dst: &Path) -> Result<()> {
    let info: FileInfo = c.stat_file(id, from.as_bytes()).await?;
    let name = from.trim_end_matches('/').rsplit('/').next().unwrap_or("");
    let target = if dst.is_dir() && !name.is_empty() {
        dst.join(name)
    } else {
        dst.to_path_buf()
    };
    if info.kind == "directory" {
        let bar = progress(None, "downloading");
        let mut stream = c.download_dir(id, from.as_bytes()).await?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<std::io::Result<bytes::Bytes>>(4);
        let out = target.clone();
        let unpacker = tokio::task::spawn_blocking(move || {
            unpack_safely(
                ChannelReader {
                    rx,
                    pending: bytes::Bytes::new(),
                },
                &out,
            )
        });
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| std::io::Error::other(e.to_string()));
            if let (Ok(b), Some(bar)) = (&chunk, &bar) {
                bar.inc(b.len() as u64);
            }
            if tx.send(chunk).is_err() {
                break;
            }
        }
        drop(tx);
        let skipped = unpacker.await??;
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        if skipped > 0 {
            eprintln!("skipped {skipped} entr(ies) that are not files, directories or symlinks");
        }
    } else {
        let (size, mut stream) = c.read_file(id, from.as_bytes(), None, None).await?;
        let bar = progress(Some(size), "downloading");
        let tmp = target.with_file_name(format!(
            ".{}.warren-tmp",
            target
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        ));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(info.mode & 0o777)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            if let Some(b) = &bar {
                b.inc(chunk.len() as u64);
            }
            f.write_all(&chunk)?;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, &target).with_context(|| format!("writing {}", target.display()))?;
        if let Some(b) = bar {
            b.finish_and_clear();
        }
    }
    Ok(())
}

struct ChannelReader {
    rx: std::sync::mpsc::Receiver<std::io::Result<bytes::Bytes>>,
    pending: bytes::Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pending.is_empty() {
            match self.rx.recv() {
                Ok(Ok(b)) => self.pending = b,
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.pending.len());
        out[..n].copy_from_slice(&self.pending[..n]);
        self.pending = self.pending.slice(n..);
        Ok(n)
    }
}

/// Unpacks a tar from a sandbox into `dst` without trusting it: relative
/// paths without `..` only; files opened with `O_NOFOLLOW`; symlinks made
/// after everything else. Returns how many entries were skipped.
fn unpack_safely(r: impl Read, dst: &Path) -> Result<u64> {
    std::fs::create_dir_all(dst).with_context(|| format!("creating {}", dst.display()))?;
    let mut links: Vec<(PathBuf, PathBuf)> = Vec::new();
    let mut skipped = 0;
    let mut ar = tar::Archive::new(r);
    for entry in ar.entries().context("reading the archive")? {
        let mut entry = entry.context("reading the archive")?;
        let raw = entry.path_bytes().into_owned();
        let mut rel = PathBuf::new();
        for comp in raw.split(|&b| b == b'/') {
            match comp {
                b"" | b"." => {}
                b".." => bail!(
                    "the archive has a path leaving the directory: {:?}",
                    String::from_utf8_lossy(&raw)
                ),
                c => rel.push(std::ffi::OsStr::from_bytes(c)),
            }
        }
        if rel.as_os_str().is_empty() {
            continue;
        }
        let path = dst.join(&rel);
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                std::fs::create_dir_all(&path)
                    .with_context(|| format!("creating {}", path.display()))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(mode)
                    .open(&path)
                    .with_context(|| format!("writing {}", path.display()))?;
                std::io::copy(&mut entry, &mut f)?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| PathBuf::from(std::ffi::OsString::from_vec(t.into_owned())))
                    .unwrap_or_default();
                links.push((path, target));
            }
            _ => skipped += 1,
        }
    }
    for (path, target) in links {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let _ = std::fs::remove_file(&path);
        std::os::unix::fs::symlink(&target, &path)
            .with_context(|| format!("linking {}", path.display()))?;
    }
    Ok(skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (path, type, data, link target) of one test entry.
    type Entry<'a> = (&'a [u8], tar::EntryType, &'a [u8], &'a [u8]);

    fn tar_of(entries: &[Entry<'_>]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.as_old_mut().name[..path.len()].copy_from_slice(path);
            h.set_entry_type(*kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            if !link.is_empty() {
                h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
            }
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn hostile_archives_stay_inside_the_target() {
        let outside = tempfile::tempdir().unwrap();
        let dst = outside.path().join("dst");
        // `..` is refused outright.
        let t = tar_of(&[(b"../evil", tar::EntryType::Regular, b"x", b"")]);
        assert!(unpack_safely(&t[..], &dst).is_err());
        assert!(!outside.path().join("evil").exists());
        // An absolute path lands below the target.
        let t = tar_of(&[(b"/abs.txt", tar::EntryType::Regular, b"a", b"")]);
        unpack_safely(&t[..], &dst).unwrap();
        assert_eq!(std::fs::read(dst.join("abs.txt")).unwrap(), b"a");
        // A symlink out, then a file "through" it: the file is written
        // first (symlinks come last), so nothing reaches the link's target.
        let target = outside.path().join("target");
        std::fs::create_dir(&target).unwrap();
        let link = target.to_str().unwrap().as_bytes().to_vec();
        let t = tar_of(&[
            (b"link", tar::EntryType::Symlink, b"", &link),
            (b"link/x", tar::EntryType::Regular, b"y", b""),
        ]);
        let _ = unpack_safely(&t[..], &dst.join("two"));
        assert!(
            !target.join("x").exists(),
            "a file was written through a symlink"
        );
        // A symlink already planted in the target is not written through.
        let three = dst.join("three");
        std::fs::create_dir_all(&three).unwrap();
        std::os::unix::fs::symlink(target.join("victim"), three.join("f")).unwrap();
        let t = tar_of(&[(b"f", tar::EntryType::Regular, b"z", b"")]);
        assert!(unpack_safely(&t[..], &three).is_err());
        assert!(!target.join("victim").exists());
    }
}
