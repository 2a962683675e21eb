//! A real OCI registry for tests: Debian's `docker-registry` (the
//! reference `distribution` implementation) on a free `127.0.0.1` port,
//! storage in a tempdir, killed on drop. Plus test images built as OCI
//! layouts and pushed with `skopeo`, and a throttling loopback proxy.
//!
//! Everything talks to `127.0.0.1` only. Every wait is bounded.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sha2::{Digest as _, Sha256};

use crate::wait_until;

/// The registry binary of Debian's `docker-registry` package.
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// How long a registry may take to answer after start.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Whether the registry binary and skopeo are installed; prints a SKIP
/// line (or panics under CI) when not.
pub fn require_tools(test: &str) -> bool {
    crate::require(
        test,
        Path::new(REGISTRY_BIN).exists() && which("skopeo").is_some(),
        "needs docker-registry and skopeo (scripts/install-deps.sh)",
    )
}

fn which(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(cmd))
            .find(|p| p.is_file())
    })
}

/// A running registry.
pub struct Registry {
    child: Child,
    dir: tempfile::TempDir,
    addr: SocketAddr,
    auth: Option<(String, String)>,
}

impl Registry {
    /// Starts an anonymous registry.
    pub fn start() -> Result<Self> {
        Self::start_inner(None)
    }

    /// Starts a registry that requires HTTP basic auth (htpasswd, bcrypt)
    /// with this user.
    pub fn start_with_auth(user: &str, password: &str) -> Result<Self> {
        Self::start_inner(Some((user.to_owned(), password.to_owned())))
    }

    fn start_inner(auth: Option<(String, String)>) -> Result<Self> {
        let mut dir = tempfile::tempdir().context("registry tempdir")?;
        let storage = dir.path().join("storage");
        fs::create_dir(&storage)?;
        let auth_yaml = match &auth {
            Some((user, password)) => {
                let out = Command::new("htpasswd")
                    .args(["-nbB", user, password])
                    .output()
                    .context("htpasswd (apache2-utils)")?;
                if !out.status.success() {
                    bail!("htpasswd failed: {}", String::from_utf8_lossy(&out.stderr));
                }
                let htpasswd = dir.path().join("htpasswd");
                fs::write(&htpasswd, String::from_utf8(out.stdout)?.trim())?;
                format!(
                    "auth:\n  htpasswd:\n    realm: warren-test\n    path: {}\n",
                    htpasswd.display()
                )
            }
            None => String::new(),
        };
        let mut last_err = None;
        for _ in 0..5 {
            // Pick a free port, then hand it to the registry (it cannot be
            // told to bind :0 and report back); retried if someone races us.
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
            let config = dir.path().join("config.yml");
            fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{auth_yaml}",
                    storage.display()
                ),
            )?;
            let log = fs::File::create(dir.path().join("registry.log"))?;
            let child = Command::new(REGISTRY_BIN)
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("spawn docker-registry")?;
            let mut registry = Self {
                child,
                dir,
                addr,
                auth: auth.clone(),
            };
            let ready = wait_until(START_TIMEOUT, || {
                registry.http_status("/v2/").is_some() || !registry.running()
            });
            if ready && registry.running() {
                return Ok(registry);
            }
            last_err = Some(registry.log());
            let _ = registry.child.kill();
            let _ = registry.child.wait();
            dir = std::mem::replace(&mut registry.dir, tempfile::tempdir()?);
        }
        bail!("registry did not start: {}", last_err.unwrap_or_default())
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The registry's log (including its access log) so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// How many GET requests for the blob `digest` the registry served
    /// (counted from its access log).
    pub fn blob_gets(&self, digest: &str) -> usize {
        let needle = format!("/blobs/{digest}");
        self.log()
            .lines()
            .filter(|l| l.contains("\"GET ") && l.contains(&needle))
            .count()
    }

    /// The file holding the blob in the registry's storage (to corrupt it).
    pub fn blob_data_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// A raw `GET` over loopback; the status code, if any answer.
    pub fn http_status(&self, path: &str) -> Option<u16> {
        let mut stream = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        )
        .ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).ok()?;
        std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
    }

    /// Pushes an OCI layout (`oci:DIR:TAG`) to `repo:tag` with skopeo,
    /// every platform of an index, digests preserved.
    pub fn push(&self, layout: &Path, layout_tag: &str, repo_tag: &str) -> Result<()> {
        let mut cmd = Command::new("skopeo");
        cmd.args([
            "copy",
            "--quiet",
            "--all",
            "--preserve-digests",
            "--dest-tls-verify=false",
        ]);
        if let Some((user, password)) = &self.auth {
            cmd.arg("--dest-creds").arg(format!("{user}:{password}"));
        }
        cmd.arg(format!("oci:{}:{layout_tag}", layout.display()))
            .arg(format!("docker://{}/{repo_tag}", self.addr));
        run(&mut cmd)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a command, failing with its stderr.
pub fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("spawn {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// `sha256:<hex>` of bytes.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Layer compression for [`LayoutBuilder::layer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compress {
    /// Plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd (made with the `zstd` command).
    Zstd,
}

/// A layer as it goes into a manifest.
#[derive(Debug, Clone)]
pub struct BuiltLayer {
    /// Blob digest.
    pub digest: String,
    /// Blob size.
    pub size: u64,
    /// Media type.
    pub media_type: String,
    /// Diff id (digest of the uncompressed tar).
    pub diff_id: String,
}

/// Process defaults for a test image's config.
#[derive(Debug, Clone, Default)]
pub struct TestConfig {
    /// `Env`.
    pub env: Vec<String>,
    /// `WorkingDir`.
    pub workdir: Option<String>,
    /// `User`.
    pub user: Option<String>,
    /// `Cmd`.
    pub cmd: Option<Vec<String>>,
    /// `Entrypoint`.
    pub entrypoint: Option<Vec<String>>,
}

/// Writes an OCI image layout directory: blobs, manifests, `index.json`.
pub struct LayoutBuilder {
    dir: PathBuf,
    index: Vec<serde_json::Value>,
}

impl LayoutBuilder {
    /// A new layout in `dir` (created).
    pub fn new(dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir.join("blobs/sha256"))?;
        fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            index: Vec::new(),
        })
    }

    /// The layout directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stores a blob; returns its digest.
    pub fn blob(&self, bytes: &[u8]) -> Result<String> {
        let digest = digest_of(bytes);
        fs::write(
            self.dir
                .join("blobs/sha256")
                .join(digest.trim_start_matches("sha256:")),
            bytes,
        )?;
        Ok(digest)
    }

    /// Stores a layer from an uncompressed tar.
    pub fn layer(&self, tar: &[u8], compress: Compress) -> Result<BuiltLayer> {
        let (bytes, media_type) = match compress {
            Compress::None => (tar.to_vec(), "application/vnd.oci.image.layer.v1.tar"),
            Compress::Gzip => {
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                enc.write_all(tar)?;
                (enc.finish()?, "application/vnd.oci.image.layer.v1.tar+gzip")
            }
            Compress::Zstd => {
                let mut child = Command::new("zstd")
                    .args(["-q", "-c", "-3"])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()
                    .context("zstd")?;
                let mut stdin = child.stdin.take().expect("piped");
                let input = tar.to_vec();
                let writer = std::thread::spawn(move || stdin.write_all(&input));
                let mut out = Vec::new();
                child.stdout.take().expect("piped").read_to_end(&mut out)?;
                writer.join().expect("writer thread")?;
                if !child.wait()?.success() {
                    bail!("zstd failed");
                }
                (out, "application/vnd.oci.image.layer.v1.tar+zstd")
            }
        };
        Ok(BuiltLayer {
            digest: self.blob(&bytes)?,
            size: bytes.len() as u64,
            media_type: media_type.into(),
            diff_id: digest_of(tar),
        })
    }

    /// Writes config and manifest for `layers` on `arch`; returns the
    /// manifest descriptor (JSON) without adding it to the index.
    pub fn manifest(
        &self,
        layers: &[BuiltLayer],
        config: &TestConfig,
        arch: &str,
    ) -> Result<serde_json::Value> {
        let mut cfg = serde_json::Map::new();
        cfg.insert("Env".into(), serde_json::json!(config.env));
        if let Some(w) = &config.workdir {
            cfg.insert("WorkingDir".into(), serde_json::json!(w));
        }
        if let Some(u) = &config.user {
            cfg.insert("User".into(), serde_json::json!(u));
        }
        if let Some(c) = &config.cmd {
            cfg.insert("Cmd".into(), serde_json::json!(c));
        }
        if let Some(e) = &config.entrypoint {
            cfg.insert("Entrypoint".into(), serde_json::json!(e));
        }
        let config_json = serde_json::json!({
            "created": "2024-01-02T03:04:05Z",
            "architecture": arch,
            "os": "linux",
            "config": cfg,
            "rootfs": {
                "type": "layers",
                "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>(),
            },
        });
        let config_bytes = serde_json::to_vec(&config_json)?;
        let config_digest = self.blob(&config_bytes)?;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config_bytes.len(),
            },
            "layers": layers.iter().map(|l| serde_json::json!({
                "mediaType": l.media_type,
                "digest": l.digest,
                "size": l.size,
            })).collect::<Vec<_>>(),
        });
        let bytes = serde_json::to_vec(&manifest)?;
        let digest = self.blob(&bytes)?;
        Ok(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest,
            "size": bytes.len(),
            "platform": {"architecture": arch, "os": "linux"},
        }))
    }

    /// Adds a single-platform image tagged `tag`.
    pub fn image(
        &mut self,
        tag: &str,
        layers: &[BuiltLayer],
        config: &TestConfig,
    ) -> Result<String> {
        let mut desc = self.manifest(layers, config, host_arch())?;
        let digest = desc["digest"].as_str().unwrap_or_default().to_owned();
        desc["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": tag});
        self.index.push(desc);
        self.write_index()?;
        Ok(digest)
    }

    /// Adds a multi-platform index tagged `tag` over manifest descriptors
    /// (from [`LayoutBuilder::manifest`]); returns the index digest.
    pub fn index(&mut self, tag: &str, manifests: Vec<serde_json::Value>) -> Result<String> {
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        });
        let bytes = serde_json::to_vec(&index)?;
        let digest = self.blob(&bytes)?;
        self.index.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": digest,
            "size": bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }));
        self.write_index()?;
        Ok(digest)
    }

    fn write_index(&self) -> Result<()> {
        let index = serde_json::json!({"schemaVersion": 2, "manifests": self.index});
        fs::write(self.dir.join("index.json"), serde_json::to_vec(&index)?)?;
        Ok(())
    }
}

/// The OCI architecture name of this build.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Builds layer tars entry by entry, including hostile entries the `tar`
/// crate's safe setters refuse.
pub struct TarBuilder {
    builder: tar::Builder<Vec<u8>>,
}

impl Default for TarBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl TarBuilder {
    /// An empty archive.
    pub fn new() -> Self {
        Self {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    fn header(kind: tar::EntryType, mode: u32, uid: u64, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(uid);
        h.set_mtime(1_700_000_000);
        h.set_size(size);
        h
    }

    /// A directory.
    pub fn dir(mut self, path: &str, mode: u32) -> Self {
        let mut h = Self::header(tar::EntryType::Directory, mode, 0, 0);
        self.builder
            .append_data(&mut h, path, std::io::empty())
            .expect("append dir");
        self
    }

    /// A regular file owned by `uid:uid`.
    pub fn file_owned(mut self, path: &str, mode: u32, uid: u64, data: &[u8]) -> Self {
        let mut h = Self::header(tar::EntryType::Regular, mode, uid, data.len() as u64);
        self.builder
            .append_data(&mut h, path, data)
            .expect("append file");
        self
    }

    /// A regular file owned by root.
    pub fn file(self, path: &str, mode: u32, data: &[u8]) -> Self {
        self.file_owned(path, mode, 0, data)
    }

    /// A symlink.
    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        let mut h = Self::header(tar::EntryType::Symlink, 0o777, 0, 0);
        self.builder
            .append_link(&mut h, path, target)
            .expect("append symlink");
        self
    }

    /// A hard link to an earlier path.
    pub fn hardlink(mut self, path: &str, target: &str) -> Self {
        let mut h = Self::header(tar::EntryType::Link, 0o644, 0, 0);
        self.builder
            .append_link(&mut h, path, target)
            .expect("append link");
        self
    }

    /// A raw entry with unvalidated path and link name (old-style header)
    /// and `data` as its body; `size` is the header's claim.
    pub fn raw(
        mut self,
        kind: tar::EntryType,
        path: &str,
        link: &str,
        size: u64,
        data: &[u8],
    ) -> Self {
        let mut h = tar::Header::new_old();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_cksum();
        let inner = self.builder.get_mut();
        inner.extend_from_slice(h.as_bytes());
        inner.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        inner.extend(std::iter::repeat_n(0u8, pad));
        self
    }

    /// A device node.
    pub fn device(mut self, path: &str, kind: tar::EntryType, major: u32, minor: u32) -> Self {
        let mut h = Self::header(kind, 0o600, 0, 0);
        h.set_device_major(major).expect("major");
        h.set_device_minor(minor).expect("minor");
        self.builder
            .append_data(&mut h, path, std::io::empty())
            .expect("append device");
        self
    }

    /// The finished archive.
    pub fn finish(self) -> Vec<u8> {
        self.builder.into_inner().expect("finish tar")
    }
}

/// Builds a multi-layer test image around `/bin/busybox` (busybox-static).
pub fn busybox_tar() -> Result<Vec<u8>> {
    let busybox = fs::read("/bin/busybox").context("read /bin/busybox (busybox-static)")?;
    Ok(TarBuilder::new()
        .dir("bin", 0o755)
        .file("bin/busybox", 0o755, &busybox)
        .symlink("bin/sh", "busybox")
        .symlink("bin/cat", "busybox")
        .dir("etc", 0o755)
        .file(
            "etc/passwd",
            0o644,
            b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
        )
        .dir("tmp", 0o1777)
        .finish())
}

/// A loopback TCP proxy that forwards to `upstream`, counting requests and
/// limiting the download direction to `bytes_per_sec` (0: unlimited).
/// Stops on drop.
pub struct Proxy {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// Connections accepted.
    pub connections: Arc<AtomicU64>,
}

impl Proxy {
    /// Starts the proxy on a free `127.0.0.1` port.
    pub fn start(upstream: SocketAddr, bytes_per_sec: u64) -> Result<Self> {
        if !upstream.ip().is_loopback() {
            bail!("the test proxy only forwards to loopback");
        }
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(AtomicU64::new(0));
        let (stop2, conns2) = (stop.clone(), connections.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(600);
            while !stop2.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((client, _)) => {
                        conns2.fetch_add(1, Ordering::Relaxed);
                        let _ = client.set_nonblocking(false);
                        let Ok(server) =
                            TcpStream::connect_timeout(&upstream, Duration::from_secs(2))
                        else {
                            continue;
                        };
                        let (c2, s2) = match (client.try_clone(), server.try_clone()) {
                            (Ok(c), Ok(s)) => (c, s),
                            _ => continue,
                        };
                        let stop_a = stop2.clone();
                        let stop_b = stop2.clone();
                        std::thread::spawn(move || pump(client, server, 0, &stop_a));
                        std::thread::spawn(move || pump(s2, c2, bytes_per_sec, &stop_b));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(Self {
            addr,
            stop,
            connections,
        })
    }

    /// `127.0.0.1:PORT` of the proxy.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, rate: u64, stop: &AtomicBool) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = vec![0u8; 16 * 1024];
    let start = Instant::now();
    let mut sent = 0u64;
    let deadline = start + Duration::from_secs(600);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => break,
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        sent += n as u64;
        if rate > 0 {
            let due = Duration::from_secs_f64(sent as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait.min(Duration::from_secs(1)));
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}

/// Pseudo-random, incompressible bytes (xorshift; deterministic by seed).
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Annotations of an OCI layout's index, by tag (for assertions).
pub fn layout_tags(layout: &Path) -> Result<BTreeMap<String, String>> {
    let index: serde_json::Value = serde_json::from_slice(&fs::read(layout.join("index.json"))?)?;
    let mut tags = BTreeMap::new();
    for m in index["manifests"].as_array().into_iter().flatten() {
        if let Some(tag) = m["annotations"]["org.opencontainers.image.ref.name"].as_str() {
            tags.insert(
                tag.to_owned(),
                m["digest"].as_str().unwrap_or_default().to_owned(),
            );
        }
    }
    Ok(tags)
}
