//! Memory snapshots: CRIU checkpoints of a whole sandbox, and the
//! self-contained, verified directory format they are stored in.
//!
//! A checkpoint directory holds CRIU's image files (`criu/`), a copy of the
//! overlay's writable layer (`upper/`, host ownership of the source slot),
//! and `manifest.json`: the format version, the source sandbox's facts a
//! restore needs, and every regular file's size and SHA-256. [`verify`]
//! checks all of it before anything is restored.
//!
//! Status (see `docs/snapshots.md`): dumping works only with a CRIU that
//! accepts namespaces owned by a user namespace other than the task's (stock
//! CRIU 4.1.1 refuses Warren's layout: "One or more namespaces doesn't
//! belong to the target user namespace"), and restore is refused with
//! [`RuntimeError::SnapshotUnsupported`] after verification.

use std::fs;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tracing::{debug, info_span, warn};

use super::{NativeRuntime, Phases};
use crate::{RuntimeError, SandboxId};

/// Version of the checkpoint directory format this code writes and reads.
pub const FORMAT_VERSION: u32 = 2;

/// The manifest's file name inside a checkpoint directory.
pub const MANIFEST: &str = "manifest.json";

/// Where CRIU's image files live inside a checkpoint directory.
const CRIU_DIR: &str = "criu";

/// Longest a manifest may be (it lists file names and digests only).
const MAX_MANIFEST_BYTES: u64 = 16 << 20;

/// How a checkpoint is taken.
#[derive(Debug, Clone)]
pub struct CheckpointOptions {
    /// Keep the sandbox running after the dump (CRIU `--leave-running`).
    /// With `false` its processes are killed by CRIU after the dump and the
    /// caller destroys the sandbox.
    pub leave_running: bool,
    /// Longest the dump (CRIU included) may take; CRIU is killed after it.
    pub timeout: Duration,
}

/// How long a checkpoint waits for requests in flight to the sandbox's
/// init to end before it refuses.
const QUIESCE_SETTLE: Duration = Duration::from_millis(500);

impl Default for CheckpointOptions {
    fn default() -> Self {
        CheckpointOptions {
            leave_running: true,
            timeout: Duration::from_secs(60),
        }
    }
}

/// What a checkpoint produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointInfo {
    pub id: SandboxId,
    pub dir: PathBuf,
    /// Total size of the files listed in the manifest.
    pub bytes: u64,
    /// Number of files listed in the manifest.
    pub files: usize,
    /// Where the checkpoint spent its time, in order, in microseconds.
    pub phases: Vec<(String, u64)>,
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    pub source: SourceFacts,
    /// Every regular file of the checkpoint but the manifest, sorted by path.
    pub files: Vec<FileDigest>,
}

/// Facts about the checkpointed sandbox that a restore needs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceFacts {
    pub id: String,
    /// First host id of the source's range (ownership in `upper/`).
    pub host_id_base: u32,
    /// Number of image layers under the overlay.
    pub layers: usize,
    /// Whether the sandbox had a network (veth, address).
    pub network: bool,
    /// `criu --version` of the dumping CRIU.
    pub criu_version: String,
    /// Host descriptors init held, named as CRIU external resources; a
    /// restore must hand in a replacement for each (`--inherit-fd`).
    pub externals: Vec<External>,
    /// Mount points inside the sandbox that CRIU treated as external
    /// (device nodes, the init binary, host binds, image mounts); a
    /// restore binds each again.
    #[serde(default)]
    pub mounts: Vec<String>,
    /// File name (SHA-256) of the init binary copy the sandbox ran from.
    #[serde(default)]
    pub init_binary: String,
    /// Execs that were running with their streams in the node.
    #[serde(default)]
    pub execs: Vec<CarriedExec>,
}

/// An exec that was running at the checkpoint with streams ending in the
/// node (see `carry`): a restore hands its processes new (or, for a
/// paused sandbox, the same) streams in place of these pipes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CarriedExec {
    /// In the sandbox's pid namespace (a restore keeps it).
    pub pid: i32,
    pub argv: Vec<String>,
    /// The file agent: not carried into a copy.
    pub agent: bool,
    /// CRIU keys (`pipe:[ino]`) of the sandbox's ends of its streams.
    pub stdin: Option<String>,
    pub stdout: Option<String>,
    pub stderr: Option<String>,
}

/// One host resource init holds that is not part of the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct External {
    /// `control` (init's listening socket), `result` or `log`.
    pub role: String,
    /// CRIU's key: `socket:[ino]` or `file[mnt_id:ino]`.
    pub key: String,
}

/// Size and digest of one file of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDigest {
    /// Relative path, `/`-separated, no `..`.
    pub path: String,
    pub size: u64,
    /// Lowercase hex BLAKE3 of the contents.
    pub blake3: String,
}

fn corrupt(reason: impl Into<String>) -> RuntimeError {
    RuntimeError::SnapshotCorrupt {
        reason: reason.into(),
    }
}

/// Checks a checkpoint directory against its manifest: format version,
/// every listed file present with its size and SHA-256, no path escaping
/// the directory, and no regular file that the manifest does not list.
pub fn verify(dir: &Path) -> Result<Manifest, RuntimeError> {
    let path = dir.join(MANIFEST);
    let meta =
        fs::symlink_metadata(&path).map_err(|e| corrupt(format!("{}: {e}", path.display())))?;
    if !meta.is_file() || meta.len() > MAX_MANIFEST_BYTES {
        return Err(corrupt("manifest.json is not a regular file of sane size"));
    }
    let bytes = fs::read(&path).map_err(|e| corrupt(format!("{}: {e}", path.display())))?;
    // The version first, so that a future format is named as such rather
    // than as unparseable.
    let version = serde_json::from_slice::<serde_json::Value>(&bytes)
        .map_err(|e| corrupt(format!("manifest.json is not JSON: {e}")))?
        .get("format_version")
        .and_then(|v| v.as_u64());
    if version != Some(u64::from(FORMAT_VERSION)) {
        return Err(corrupt(format!(
            "format version {} (this node reads {FORMAT_VERSION})",
            version.map_or("missing".to_string(), |v| v.to_string())
        )));
    }
    let manifest: Manifest =
        serde_json::from_slice(&bytes).map_err(|e| corrupt(format!("manifest.json: {e}")))?;
    let mut listed = std::collections::HashSet::new();
    let mut paths = Vec::with_capacity(manifest.files.len());
    for f in &manifest.files {
        let rel = Path::new(&f.path);
        if f.path.is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(corrupt(format!("bad path {:?} in the manifest", f.path)));
        }
        if !listed.insert(f.path.clone()) {
            return Err(corrupt(format!("{} is listed twice", f.path)));
        }
        let p = dir.join(rel);
        let m = fs::symlink_metadata(&p).map_err(|e| corrupt(format!("{}: {e}", f.path)))?;
        if !m.is_file() {
            return Err(corrupt(format!("{} is not a regular file", f.path)));
        }
        if m.len() != f.size {
            return Err(corrupt(format!(
                "{} has {} bytes, the manifest says {}",
                f.path,
                m.len(),
                f.size
            )));
        }
        paths.push(p);
    }
    for (f, r) in manifest.files.iter().zip(digest_all(&paths)) {
        let (size, digest) = r.map_err(|e| corrupt(format!("{}: {e}", f.path)))?;
        if size != f.size || digest != f.blake3 {
            return Err(corrupt(format!("{} does not match its checksum", f.path)));
        }
    }
    for rel in regular_files(dir).map_err(|e| corrupt(e.to_string()))? {
        if rel != MANIFEST && !listed.contains(&rel) {
            return Err(corrupt(format!("{rel} is not in the manifest")));
        }
    }
    Ok(manifest)
}

/// Writes `manifest.json` for everything under `dir` (atomically).
pub fn write_manifest(dir: &Path, source: SourceFacts) -> Result<Manifest, RuntimeError> {
    let rels: Vec<String> = regular_files(dir)
        .map_err(RuntimeError::prepare(dir))?
        .into_iter()
        .filter(|r| r != MANIFEST)
        .collect();
    let paths: Vec<PathBuf> = rels.iter().map(|r| dir.join(r)).collect();
    let mut files = Vec::with_capacity(rels.len());
    for ((rel, p), r) in rels.into_iter().zip(&paths).zip(digest_all(&paths)) {
        let (size, blake3) = r.map_err(RuntimeError::prepare(p))?;
        files.push(FileDigest {
            path: rel,
            size,
            blake3,
        });
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        source,
        files,
    };
    let tmp = dir.join("manifest.json.tmp");
    let bytes = serde_json::to_vec_pretty(&manifest).map_err(|e| RuntimeError::InvalidSpec {
        field: "manifest",
        reason: e.to_string(),
    })?;
    fs::write(&tmp, bytes).map_err(RuntimeError::prepare(&tmp))?;
    fs::rename(&tmp, dir.join(MANIFEST)).map_err(RuntimeError::prepare(dir))?;
    Ok(manifest)
}

/// [`digest_file`] of every path, in order, hashed on up to four threads
/// (a checkpoint is mostly one large page image and many small files; the
/// largest go first).
fn digest_all(paths: &[PathBuf]) -> Vec<std::io::Result<(u64, String)>> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let mut order: Vec<usize> = (0..paths.len()).collect();
    let size = |i: &usize| {
        fs::symlink_metadata(&paths[*i])
            .map(|m| m.len())
            .unwrap_or(0)
    };
    order.sort_by_key(|i| std::cmp::Reverse(size(i)));
    let next = AtomicUsize::new(0);
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4)
        .min(paths.len().max(1));
    let mut out: Vec<Option<std::io::Result<(u64, String)>>> =
        (0..paths.len()).map(|_| None).collect();
    let results = std::sync::Mutex::new(&mut out);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(&i) = order.get(k) else { break };
                let r = digest_file(&paths[i]);
                results.lock().expect("digest results lock poisoned")[i] = Some(r);
            });
        }
    });
    out.into_iter()
        .map(|r| r.unwrap_or_else(|| Err(std::io::Error::other("not hashed"))))
        .collect()
}

/// How many times a checkpoint tries the dump when CRIU could not seize
/// every task.
const DUMP_ATTEMPTS: u32 = 3;

/// The content-addressed store of checkpoint files, under the data dir.
const BLOBS_DIR: &str = "checkpoint-blobs";

/// Stores a written checkpoint's files content-addressed: every file
/// outside `upper/` (CRIU's images, the log ring) becomes a hard link to
/// `<blobs>/<blake3>`, so identical files of any checkpoints on this node
/// (a sandbox paused again without having changed, forks of one source)
/// are kept once. Files in `upper/` stay private copies: their owners,
/// modes and xattrs are part of the layer, and a hard link would share
/// them. Blobs no checkpoint links to any more (link count 1) are removed
/// here too. Best effort: a file that cannot be shared (another
/// filesystem, say) stays as it is. Returns the bytes now shared.
fn share_blobs(dir: &Path, manifest: &Manifest, blobs: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    if fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(blobs)
        .is_err()
    {
        return 0;
    }
    let mut shared = 0;
    for f in manifest
        .files
        .iter()
        .filter(|f| !f.path.starts_with("upper/"))
    {
        let file = dir.join(&f.path);
        let blob = blobs.join(&f.blake3);
        match fs::symlink_metadata(&blob) {
            Ok(m) if m.is_file() && m.len() == f.size => {
                // Replace the file by a link to the same content: a new
                // link next to it, renamed over it.
                let tmp = file.with_extension("blob-link");
                if fs::hard_link(&blob, &tmp).is_ok() && fs::rename(&tmp, &file).is_ok() {
                    shared += f.size;
                } else {
                    let _ = fs::remove_file(&tmp);
                }
            }
            _ => {
                let _ = fs::hard_link(&file, &blob);
            }
        }
    }
    // The sweep reads every blob: at most once a minute.
    static LAST_SWEEP: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);
    let due = {
        let mut last = LAST_SWEEP.lock().expect("sweep lock poisoned");
        let due = last.is_none_or(|t| t.elapsed() > Duration::from_secs(60));
        if due {
            *last = Some(Instant::now());
        }
        due
    };
    if due {
        if let Ok(entries) = fs::read_dir(blobs) {
            for e in entries.flatten() {
                if e.metadata().is_ok_and(|m| m.is_file() && m.nlink() == 1) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }
    shared
}

/// CRIU writes its images 0600; a restore reads some of them from inside
/// the new user namespace, so they are made 0644 (inside the checkpoint's
/// 0700 directory) once, here, and restores hard-link them as they are.
fn readable_images(images: &Path) -> Result<(), RuntimeError> {
    use std::os::unix::fs::PermissionsExt;
    for e in fs::read_dir(images).map_err(RuntimeError::prepare(images))? {
        let e = e.map_err(RuntimeError::prepare(images))?;
        if e.file_type()
            .map_err(RuntimeError::prepare(images))?
            .is_file()
        {
            fs::set_permissions(e.path(), fs::Permissions::from_mode(0o644))
                .map_err(RuntimeError::prepare(e.path()))?;
        }
    }
    Ok(())
}

/// Size and BLAKE3 (lowercase hex) of a file, read in 1 MiB chunks.
/// BLAKE3 rather than SHA-256: a checkpoint's tens of MB are hashed on
/// every checkpoint and verified on every restore, and BLAKE3 does that
/// several times faster (about 10 ms for 35 MB here, against about 30).
fn digest_file(p: &Path) -> std::io::Result<(u64, String)> {
    let mut f = fs::File::open(p)?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        h.update(&buf[..n]);
    }
    Ok((total, h.finalize().to_hex().to_string()))
}

/// Relative paths of every regular file under `dir` (not following
/// symlinks), `/`-separated. Non-UTF-8 names are an error.
fn regular_files(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in fs::read_dir(dir.join(&rel))? {
            let e = e?;
            let name = rel.join(e.file_name());
            let ft = e.file_type()?;
            if ft.is_dir() {
                stack.push(name);
            } else if ft.is_file() {
                let s = name.to_str().ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{} is not UTF-8", name.display()),
                    )
                })?;
                out.push(s.to_string());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// `criu --version`'s version line, or an error naming what is missing.
pub fn criu_version(criu: &Path) -> Result<String, RuntimeError> {
    let out = Command::new(criu)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| RuntimeError::SnapshotUnsupported {
            reason: format!("cannot run {}: {e}", criu.display()),
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text
        .lines()
        .find_map(|l| l.strip_prefix("Version:"))
        .map(|v| v.trim().to_string())
        .unwrap_or_default();
    if !version.starts_with("4.") {
        return Err(RuntimeError::SnapshotUnsupported {
            reason: format!(
                "{} reports version {version:?}; CRIU 4.x is required (scripts/install-criu.sh)",
                criu.display()
            ),
        });
    }
    Ok(version)
}

/// Runs CRIU with `args`, bounded by `timeout`; on failure the error carries
/// the tail of its log file.
pub(super) fn run_criu(
    criu: &Path,
    op: &'static str,
    args: &[String],
    log: &Path,
    timeout: Duration,
) -> Result<(), RuntimeError> {
    let mut child = Command::new(criu)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| RuntimeError::SnapshotUnsupported {
            reason: format!("cannot run {}: {e}", criu.display()),
        })?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(2)),
            Err(_) => break None,
        }
    };
    match status {
        Some(s) if s.success() => Ok(()),
        other => Err(RuntimeError::Criu {
            op,
            status: match other {
                Some(s) => s.to_string(),
                None => format!("killed after {}s", timeout.as_secs()),
            },
            log: log_tail(log),
        }),
    }
}

/// The error lines and last lines of a CRIU log (bounded).
pub(super) fn log_tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let mut lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("Error") || l.contains("BUG"))
        .take(20)
        .collect();
    let all: Vec<&str> = text.lines().collect();
    lines.extend(all[all.len().saturating_sub(5)..].iter());
    let mut s = lines.join("\n");
    s.truncate(8192);
    s
}

/// Copies `src` into `dst` preserving ownership, modes, timestamps, xattrs
/// (overlay's opaque markers) and whiteouts.
pub(super) fn copy_tree(src: &Path, dst: &Path) -> Result<(), RuntimeError> {
    let out = Command::new("cp")
        .arg("-a")
        .arg("--reflink=auto")
        .arg(src)
        .arg(dst)
        .stdin(Stdio::null())
        .output()
        .map_err(RuntimeError::prepare(dst))?;
    if !out.status.success() {
        return Err(RuntimeError::PrepareState {
            path: dst.to_path_buf(),
            source: std::io::Error::other(String::from_utf8_lossy(&out.stderr).into_owned()),
        });
    }
    Ok(())
}

/// The host descriptors init holds that belong to the node, not the
/// sandbox: its control socket and the files in its state directory. CRIU
/// gets them as external resources.
fn init_externals(init_pid: i32, state_dir: &Path) -> Result<Vec<External>, RuntimeError> {
    let fd_dir = PathBuf::from(format!("/proc/{init_pid}/fd"));
    let mut out = Vec::new();
    for e in fs::read_dir(&fd_dir).map_err(RuntimeError::prepare(&fd_dir))? {
        let e = e.map_err(RuntimeError::prepare(&fd_dir))?;
        let Ok(link) = fs::read_link(e.path()) else {
            continue;
        };
        let meta = match fs::metadata(e.path()) {
            Ok(m) => m,
            Err(_) => continue,
        };
        if link.starts_with(state_dir) {
            let info = format!(
                "/proc/{init_pid}/fdinfo/{}",
                e.file_name().to_string_lossy()
            );
            let text = fs::read_to_string(&info).map_err(RuntimeError::prepare(&info))?;
            let mnt: u64 = text
                .lines()
                .find_map(|l| l.strip_prefix("mnt_id:"))
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| corrupt(format!("no mnt_id in {info}")))?;
            let role = link
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            out.push(External {
                role: if role == super::LOG_FILE {
                    "log".into()
                } else {
                    role
                },
                key: format!("file[{mnt:x}:{:x}]", meta.ino()),
            });
        } else if link.to_string_lossy().starts_with("socket:[") {
            // Only the control listener is a host-path socket; others
            // (exec connections) make the checkpoint fail in CRIU.
            if socket_is_control(init_pid, meta.ino(), state_dir) {
                out.push(External {
                    role: "control".into(),
                    key: link.to_string_lossy().into_owned(),
                });
            }
        }
    }
    Ok(out)
}

/// Whether socket inode `ino` is the listener bound at `<state>/init.sock`
/// (from `/proc/<pid>/net/unix` of the sandbox's network namespace).
fn socket_is_control(pid: i32, ino: u64, state_dir: &Path) -> bool {
    let want = state_dir.join("init.sock");
    let Ok(text) = fs::read_to_string(format!("/proc/{pid}/net/unix")) else {
        return false;
    };
    text.lines().skip(1).any(|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        cols.len() >= 8 && cols[6].parse() == Ok(ino) && Path::new(cols[7]) == want
    })
}

impl NativeRuntime {
    /// Checkpoints a running sandbox into `dest` (created; must not exist):
    /// the process tree from init down with memory, files, pipes, PTYs,
    /// unix sockets and its tmpfs contents (CRIU), and a copy of the
    /// overlay's writable layer taken while the cgroup is frozen, so the
    /// two agree. Writes and then checks `manifest.json`.
    ///
    /// With `leave_running` the sandbox continues unchanged; without, its
    /// processes are gone afterwards and the caller destroys it.
    pub fn checkpoint(
        &self,
        id: &SandboxId,
        dest: &Path,
        opts: CheckpointOptions,
    ) -> Result<CheckpointInfo, RuntimeError> {
        let _span = info_span!("checkpoint", sandbox_id = %id).entered();
        let sb = self.get(id)?;
        if sb.exit.lock().expect("exit lock poisoned").is_some() {
            return Err(RuntimeError::NotRunning { id: id.to_string() });
        }
        let mut phases = Phases::new();
        let criu = super::criu_probe::probe(&self.cfg.criu_binary)?;
        if !is_checkpointable(sb.init_pid) {
            return Err(RuntimeError::SnapshotUnsupported {
                reason: "the sandbox was not created checkpointable (memory_snapshots); \
                         only those can be checkpointed"
                    .into(),
            });
        }
        if has_disk_limit(sb.init_pid) {
            // The tmpfs upper of a disk-limited sandbox is only reachable
            // inside its mount namespace.
            return Err(RuntimeError::SnapshotUnsupported {
                reason: "sandboxes with a disk limit cannot be checkpointed yet".into(),
            });
        }
        fs::DirBuilder::new()
            .mode(0o700)
            .create(dest)
            .map_err(RuntimeError::prepare(dest))?;
        let result = self.checkpoint_into(&sb, dest, &opts, &criu, &mut phases);
        match result {
            Ok(manifest) => {
                let bytes = manifest.files.iter().map(|f| f.size).sum();
                debug!(bytes, files = manifest.files.len(), "checkpoint written");
                Ok(CheckpointInfo {
                    id: id.clone(),
                    dir: dest.to_path_buf(),
                    bytes,
                    files: manifest.files.len(),
                    phases: phases.list,
                })
            }
            Err(e) => {
                if let Err(c) = fs::remove_dir_all(dest) {
                    warn!(error = %c, "removing a failed checkpoint");
                }
                Err(e)
            }
        }
    }

    /// Removes a checkpoint directory and what the node keeps for it (a
    /// paused sandbox's carried execs, whose streams then end).
    /// Idempotent.
    pub fn remove_checkpoint(&self, dir: &Path) -> Result<(), RuntimeError> {
        self.stashes.remove(dir);
        match fs::remove_dir_all(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(RuntimeError::prepare(dir)(e))
            }
            _ => Ok(()),
        }
    }

    fn checkpoint_into(
        &self,
        sb: &super::Sandbox,
        dest: &Path,
        opts: &CheckpointOptions,
        criu: &super::criu_probe::Criu,
        phases: &mut Phases,
    ) -> Result<Manifest, RuntimeError> {
        let images = dest.join(CRIU_DIR);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&images)
            .map_err(RuntimeError::prepare(&images))?;
        // Nothing of the node's may be open in init while CRIU dumps it:
        // connections whose peer went away are closed now, and running
        // execs' connections are detached and handed to the node (see
        // `carry`); any others (a request in flight) refuse the checkpoint.
        let mut quiet = super::control::quiesce(&sb.dir)?;
        // Requests in flight (a signal, a ping) end within milliseconds.
        let settle = Instant::now() + QUIESCE_SETTLE;
        while quiet.open > 0 && Instant::now() < settle {
            let back: Vec<(i32, BorrowedFd<'_>)> =
                quiet.carried.iter().map(|(p, f)| (*p, f.as_fd())).collect();
            super::control::adopt(&sb.dir, &back)?;
            drop(back);
            std::thread::sleep(Duration::from_millis(20));
            quiet = super::control::quiesce(&sb.dir)?;
        }
        let pids: Vec<i32> = quiet.carried.iter().map(|(p, _)| *p).collect();
        let dumped = (|| {
            if quiet.open > 0 {
                return Err(RuntimeError::SnapshotUnsupported {
                    reason: format!(
                        "{} request(s) to the sandbox are in flight; try again",
                        quiet.open
                    ),
                });
            }
            let execs = self.exec_registry.describe(&sb.id, &pids)?;
            // A sandbox that stops keeps its execs' pipes open in the node
            // until it is restored.
            let held = if opts.leave_running {
                Vec::new()
            } else {
                super::carry::hold_pipes(&sb.cgroup, &execs)?
            };
            let manifest = self.dump(sb, dest, opts, criu, execs, phases)?;
            Ok((manifest, held))
        })();
        match dumped {
            Ok((manifest, held)) if !opts.leave_running => {
                self.stashes.put(
                    dest,
                    super::carry::Stash {
                        id: sb.id.clone(),
                        conns: quiet.carried,
                        pipes: held,
                    },
                );
                Ok(manifest)
            }
            other => {
                // The execs report to the node again.
                let back: Vec<(i32, BorrowedFd<'_>)> =
                    quiet.carried.iter().map(|(p, f)| (*p, f.as_fd())).collect();
                if let Err(e) = super::control::adopt(&sb.dir, &back) {
                    warn!(error = %e, "handing execs back to init after a checkpoint");
                }
                other.map(|(m, _)| m)
            }
        }
    }

    /// Freezes the sandbox, copies its writable layer, runs `criu dump`
    /// and writes the manifest.
    fn dump(
        &self,
        sb: &super::Sandbox,
        dest: &Path,
        opts: &CheckpointOptions,
        criu: &super::criu_probe::Criu,
        execs: Vec<CarriedExec>,
        phases: &mut Phases,
    ) -> Result<Manifest, RuntimeError> {
        let images = dest.join(CRIU_DIR);
        let externals = init_externals(sb.init_pid, &sb.dir)?;
        let mounts = external_mounts(sb.init_pid)?;
        phases.mark("checkpoint:prepare");

        // CRIU gives up on a task it cannot seize within its timeout (one
        // caught in the kernel, state D, while the cgroup froze): the
        // whole attempt (freeze, copy, dump) is made again, at most
        // `DUMP_ATTEMPTS` times.
        let mut attempt = 1;
        let dumped = loop {
            // Frozen from here until CRIU has the memory: the writable layer
            // copied below and the memory image describe the same instant.
            sb.cgroup.freeze()?;
            phases.mark("checkpoint:freeze");
            let dumped = (|| {
                copy_tree(&sb.dir.join("upper"), &dest.join("upper"))?;
                let log = sb.dir.join(super::LOG_FILE);
                if log.exists() {
                    copy_tree(&log, &dest.join(super::LOG_FILE))?;
                }
                phases.mark("checkpoint:upper");
                let freezer = sb
                    .cgroup
                    .paths()
                    .into_iter()
                    .find(|p| p.join("freezer.state").exists() || p.join("cgroup.freeze").exists())
                    .ok_or(RuntimeError::SnapshotUnsupported {
                        reason: "the sandbox's cgroup has no freezer".into(),
                    })?;
                let mut args: Vec<String> = vec![
                    "dump".into(),
                    "--tree".into(),
                    sb.init_pid.to_string(),
                    "--images-dir".into(),
                    path_string(&images)?,
                    "--log-file".into(),
                    "dump.log".into(),
                    "-v4".into(),
                    "--freeze-cgroup".into(),
                    path_string(&freezer)?,
                    "--manage-cgroups=ignore".into(),
                    "--tcp-close".into(),
                    // Established connections are closed, not restored, so
                    // nothing needs the network frozen (CRIU would otherwise
                    // run iptables in the namespace both ways: ~50 ms).
                    "--network-lock".into(),
                    "skip".into(),
                    // A restore brings the network namespace back empty
                    // (`--empty-ns net`, wired anew), so its links,
                    // addresses, routes, rules and firewall are not dumped
                    // (CRIU would run `ip` and `iptables-save` eight times).
                    // A sandbox cannot make a second network namespace
                    // (seccomp), which this mode could not dump.
                    "--empty-ns".into(),
                    "net".into(),
                    "--ghost-limit".into(),
                    "256M".into(),
                ];
                args.extend(criu.args.iter().cloned());
                if opts.leave_running {
                    args.push("--leave-running".into());
                }
                for target in &mounts {
                    args.push("--external".into());
                    args.push(format!("mnt[{target}]:{}", mount_key(target)));
                }
                for e in &externals {
                    if e.key.starts_with("file[") {
                        args.push("--external".into());
                        args.push(e.key.clone());
                    }
                }
                run_criu(
                    &self.cfg.criu_binary,
                    "dump",
                    &args,
                    &images.join("dump.log"),
                    opts.timeout,
                )?;
                phases.mark("checkpoint:criu_dump");
                Ok::<(), RuntimeError>(())
            })();
            if opts.leave_running || dumped.is_err() {
                if let Err(e) = sb.cgroup.thaw() {
                    warn!(error = %e, "thawing after a checkpoint");
                }
            }
            match dumped {
                Err(RuntimeError::Criu { ref log, .. })
                    if attempt < DUMP_ATTEMPTS
                        && (log.contains("Timeout reached") || log.contains("Unseizable")) =>
                {
                    warn!(attempt, "criu could not seize every task; trying again");
                    attempt += 1;
                    for p in [dest.join("upper"), images.clone()] {
                        let _ = fs::remove_dir_all(&p);
                    }
                    let _ = fs::remove_file(dest.join(super::LOG_FILE));
                    fs::DirBuilder::new()
                        .mode(0o700)
                        .create(&images)
                        .map_err(RuntimeError::prepare(&images))?;
                    std::thread::sleep(Duration::from_millis(50));
                }
                other => break other,
            }
        };
        dumped?;
        readable_images(&images)?;
        let manifest = write_manifest(
            dest,
            SourceFacts {
                id: sb.id.to_string(),
                host_id_base: self.host_id_base(sb.slot),
                layers: fs::read_dir(sb.dir.join("lower"))
                    .map(|d| d.count())
                    .unwrap_or(0),
                network: sb.net.lock().expect("net lock poisoned").is_some(),
                criu_version: criu.version.clone(),
                externals,
                mounts,
                init_binary: self
                    .init_copy()?
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                execs,
            },
        )?;
        phases.mark("checkpoint:manifest");
        let blobs = self.cfg.data_dir.join(BLOBS_DIR);
        let shared = share_blobs(dest, &manifest, &blobs);
        debug!(shared, "checkpoint files shared with earlier checkpoints");
        phases.mark("checkpoint:blobs");
        Ok(manifest)
    }
}

/// Whether the sandbox's writable layer is the disk-limit tmpfs (its
/// overlay root names `upperdir=disk/upper`; see `warren-init`'s setup).
/// That tmpfs exists only inside the sandbox's mount namespace.
/// Whether the sandbox has the checkpointable shape (its init runs from
/// the init binary bound into it).
fn is_checkpointable(init_pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{init_pid}/mountinfo")).is_ok_and(|t| {
        t.lines()
            .any(|l| l.split_whitespace().nth(4) == Some(warren_proto::CHECKPOINTABLE_INIT_PATH))
    })
}

/// Mount points CRIU treats as external: the binds of single host files
/// under `/dev` (the device nodes and the init binary) and the idmapped
/// mounts below the root (host binds and image mounts), which a restore
/// binds again from the host (rebuilding the idmapped trees for the new
/// id range).
fn external_mounts(init_pid: i32) -> Result<Vec<String>, RuntimeError> {
    let path = format!("/proc/{init_pid}/mountinfo");
    let text = fs::read_to_string(&path).map_err(RuntimeError::prepare(&path))?;
    let mut out = Vec::new();
    for l in text.lines() {
        let cols: Vec<&str> = l.split_whitespace().collect();
        let (Some(root), Some(point), Some(opts)) = (cols.get(3), cols.get(4), cols.get(5)) else {
            continue;
        };
        let idmapped = *point != "/" && opts.split(',').any(|o| o == "idmapped");
        let dev_file = *root != "/" && point.starts_with("/dev/") && !point[5..].contains('/');
        if idmapped || dev_file {
            out.push(point.to_string());
        }
    }
    Ok(out)
}

fn has_disk_limit(init_pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{init_pid}/mountinfo")).is_ok_and(|t| {
        t.lines().any(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.get(4) == Some(&"/")
                && l.contains(" - overlay ")
                && l.split(',').any(|o| o == "upperdir=disk/upper")
        })
    })
}

pub(super) fn mount_key(target: &str) -> String {
    let k: String = target
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("warren{k}")
}

pub(super) fn path_string(p: &Path) -> Result<String, RuntimeError> {
    p.to_str()
        .map(str::to_string)
        .ok_or_else(|| RuntimeError::InvalidSpec {
            field: "path",
            reason: format!("{} is not valid UTF-8", p.display()),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> SourceFacts {
        SourceFacts {
            id: "a".into(),
            host_id_base: 1 << 30,
            layers: 1,
            network: false,
            criu_version: "4.1.1".into(),
            externals: vec![],
            mounts: vec![],
            init_binary: String::new(),
            execs: vec![],
        }
    }

    fn sample() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("criu")).unwrap();
        fs::write(d.path().join("criu/pages-1.img"), vec![7u8; 10_000]).unwrap();
        fs::create_dir_all(d.path().join("upper/etc")).unwrap();
        fs::write(d.path().join("upper/etc/x"), b"hello").unwrap();
        write_manifest(d.path(), facts()).unwrap();
        d
    }

    #[test]
    fn a_written_manifest_verifies() {
        let d = sample();
        let m = verify(d.path()).unwrap();
        assert_eq!(m.files.len(), 2);
        assert_eq!(m.files[0].path, "criu/pages-1.img");
    }

    #[test]
    fn a_flipped_byte_is_refused() {
        let d = sample();
        let p = d.path().join("criu/pages-1.img");
        let mut b = fs::read(&p).unwrap();
        b[5000] ^= 1;
        fs::write(&p, b).unwrap();
        let e = verify(d.path()).unwrap_err();
        assert!(matches!(e, RuntimeError::SnapshotCorrupt { .. }), "{e}");
        assert!(e.to_string().contains("checksum"), "{e}");
    }

    #[test]
    fn truncation_missing_and_extra_files_are_refused() {
        let d = sample();
        let p = d.path().join("upper/etc/x");
        fs::write(&p, b"hell").unwrap();
        assert!(verify(d.path()).unwrap_err().to_string().contains("bytes"));
        fs::remove_file(&p).unwrap();
        assert!(matches!(
            verify(d.path()),
            Err(RuntimeError::SnapshotCorrupt { .. })
        ));
        let d = sample();
        fs::write(d.path().join("criu/extra.img"), b"x").unwrap();
        assert!(verify(d.path())
            .unwrap_err()
            .to_string()
            .contains("not in the manifest"));
    }

    #[test]
    fn other_versions_and_garbage_are_refused() {
        let d = sample();
        let p = d.path().join(MANIFEST);
        let mut v: serde_json::Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
        v["format_version"] = 99.into();
        fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
        let e = verify(d.path()).unwrap_err().to_string();
        assert!(e.contains("format version 99"), "{e}");
        fs::write(&p, b"{nope").unwrap();
        assert!(matches!(
            verify(d.path()),
            Err(RuntimeError::SnapshotCorrupt { .. })
        ));
        fs::remove_file(&p).unwrap();
        assert!(matches!(
            verify(d.path()),
            Err(RuntimeError::SnapshotCorrupt { .. })
        ));
    }

    #[test]
    fn paths_may_not_escape() {
        let d = sample();
        let p = d.path().join(MANIFEST);
        let mut m: Manifest = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
        m.files[0].path = "../etc/passwd".into();
        fs::write(&p, serde_json::to_vec(&m).unwrap()).unwrap();
        assert!(verify(d.path())
            .unwrap_err()
            .to_string()
            .contains("bad path"));
    }

    #[test]
    fn mount_keys_are_plain() {
        assert_eq!(mount_key("/usr"), "warren_usr");
    }
}
