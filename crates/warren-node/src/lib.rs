//! warren-node: the per-machine agent. It turns the blocking, fd-level
//! `Runtime` into an async service the control plane calls: images are
//! resolved to root filesystems, blocking work runs on tokio's blocking
//! pool, and sandbox exits are awaited on the event loop (pidfds), so
//! thousands of running sandboxes cost no threads.
//!
//! Must not: know about workspaces, tokens or the database (that is the
//! server's); outlive a `destroy` with any resource.

mod exec;

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use tracing::info_span;
use warren_image::ImageStore;
use warren_runtime::{
    BindMount, Limits, MainIo, NativeRuntime, Recovered, RootfsSpec, Runtime, RuntimeError,
    SandboxExit, SandboxId, SandboxInfo, SandboxSpec,
};

pub use exec::{BufferedExec, ExecOutput, MAX_BUFFERED_OUTPUT};

/// Errors from the node, with stable codes.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("image {reference:?}")]
    Image {
        reference: String,
        #[source]
        source: warren_image::ImageError,
    },
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("a background task failed")]
    Join(#[from] tokio::task::JoinError),
    #[error("i/o on the sandbox's streams")]
    Io(#[from] std::io::Error),
}

impl NodeError {
    /// Stable error code (`image_not_found`, runtime codes, `internal`).
    pub fn code(&self) -> &str {
        match self {
            NodeError::Image { source, .. } => source.code(),
            NodeError::Runtime(e) => e.code(),
            NodeError::Join(_) | NodeError::Io(_) => "internal",
        }
    }
}

/// What the control plane asks the node to create.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    pub id: SandboxId,
    pub image: String,
    pub command: Option<Vec<String>>,
    /// `KEY=VALUE` entries layered over the image's environment.
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub limits: Limits,
    /// Capture the main command's output into a ring of this many bytes.
    pub log_capacity: Option<u64>,
}

/// How long a resolved image reference is reused without asking the store
/// again (a re-tagged name is seen at most this late).
const IMAGE_CACHE_TTL: Duration = Duration::from_secs(2);

type ImageCache =
    std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, warren_image::Image)>>;

/// The per-machine agent.
#[derive(Clone)]
pub struct Node {
    rt: Arc<NativeRuntime>,
    images: Arc<ImageStore>,
    image_cache: Arc<ImageCache>,
}

impl Node {
    pub fn new(rt: NativeRuntime, images: ImageStore) -> Self {
        Node {
            rt: Arc::new(rt),
            images: Arc::new(images),
            image_cache: Arc::default(),
        }
    }

    /// Resolves an image reference, reusing a recent answer (blocking).
    fn resolve_image(&self, reference: &str) -> Result<warren_image::Image, NodeError> {
        let mut cache = self.image_cache.lock().expect("image cache lock poisoned");
        if let Some((at, img)) = cache.get(reference) {
            if at.elapsed() < IMAGE_CACHE_TTL {
                return Ok(img.clone());
            }
        }
        drop(cache);
        let img = self
            .images
            .resolve(reference)
            .map_err(|source| NodeError::Image {
                reference: reference.to_string(),
                source,
            })?;
        cache = self.image_cache.lock().expect("image cache lock poisoned");
        if cache.len() > 1024 {
            cache.clear();
        }
        cache.insert(
            reference.to_string(),
            (std::time::Instant::now(), img.clone()),
        );
        Ok(img)
    }

    pub fn runtime(&self) -> &NativeRuntime {
        &self.rt
    }

    /// Resolves the image and creates the sandbox. The main command's output
    /// goes to `stdout`/`stderr` when given (else `/dev/null`).
    pub async fn create(
        &self,
        req: CreateRequest,
        stdout: Option<OwnedFd>,
        stderr: Option<OwnedFd>,
    ) -> Result<SandboxInfo, NodeError> {
        let node = self.clone();
        tokio::task::spawn_blocking(move || {
            let _span = info_span!("node_create", sandbox_id = %req.id).entered();
            let img = node.resolve_image(&req.image)?;
            let rootfs = rootfs_of(&img);
            let mut spec = SandboxSpec::new(req.id.clone(), rootfs);
            spec.env = merge_env(&img.config.env, &req.env);
            spec.workdir = req
                .workdir
                .clone()
                .or(img.config.workdir.clone())
                .unwrap_or_else(|| "/".into());
            spec.command = req.command.clone();
            spec.limits = req.limits.clone();
            let io = MainIo {
                stdin: None,
                stdout,
                stderr,
                log_capacity: req.log_capacity,
            };
            Ok(node.rt.create(&spec, io)?)
        })
        .await?
    }

    /// The environment an image's config sets (`KEY=VALUE` entries).
    pub async fn image_env(&self, reference: &str) -> Result<Vec<String>, NodeError> {
        let node = self.clone();
        let reference = reference.to_string();
        tokio::task::spawn_blocking(move || {
            node.resolve_image(&reference).map(|img| img.config.env)
        })
        .await?
    }

    /// The retained end of a running sandbox's main-command output.
    pub async fn read_log(
        &self,
        id: &SandboxId,
        tail: Option<u64>,
    ) -> Result<warren_runtime::MainLog, NodeError> {
        let rt = self.rt.clone();
        let id = id.clone();
        Ok(tokio::task::spawn_blocking(move || rt.read_log(&id, tail)).await??)
    }

    /// Waits (on the event loop, no thread) until the sandbox ends.
    pub async fn wait_exit(&self, id: &SandboxId) -> Result<SandboxExit, NodeError> {
        let fd = self.rt.exit_fd(id)?;
        let afd = warren_sys::asyncfd::register(fd, tokio::io::Interest::READABLE)?;
        let _ready = afd.readable().await?;
        let rt = self.rt.clone();
        let id = id.clone();
        let exit = tokio::task::spawn_blocking(move || rt.wait(&id, Some(Duration::from_secs(5))))
            .await??;
        exit.ok_or_else(|| NodeError::Runtime(RuntimeError::InitTimeout { secs: 5 }))
    }

    /// Ends and removes the sandbox (idempotent).
    pub async fn destroy(&self, id: &SandboxId) -> Result<(), NodeError> {
        let rt = self.rt.clone();
        let id = id.clone();
        tokio::task::spawn_blocking(move || rt.destroy(&id)).await??;
        Ok(())
    }

    /// Re-adopts or cleans up sandboxes a previous process left running.
    pub async fn recover(&self) -> Result<Vec<Recovered>, NodeError> {
        let rt = self.rt.clone();
        Ok(tokio::task::spawn_blocking(move || rt.recover()).await??)
    }

    /// Starts a command and returns its live handle (streams, signals, exit).
    pub async fn start_exec(
        &self,
        id: &SandboxId,
        spec: warren_runtime::ExecSpec,
        io: warren_runtime::ExecIo,
    ) -> Result<warren_runtime::Exec, NodeError> {
        let rt = self.rt.clone();
        let id = id.clone();
        Ok(tokio::task::spawn_blocking(move || rt.exec(&id, &spec, io)).await??)
    }

    /// Runs a command to completion, buffering (boundedly) its output.
    pub async fn exec_buffered(
        &self,
        id: &SandboxId,
        req: BufferedExec,
    ) -> Result<ExecOutput, NodeError> {
        exec::buffered(self.rt.clone(), id.clone(), req).await
    }
}

/// Registers a descriptor with the tokio reactor to await readability (for
/// example an exec's control connection, readable when its exit arrives).
pub fn watch_readable(fd: OwnedFd) -> std::io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    warren_sys::asyncfd::register(fd, tokio::io::Interest::READABLE)
}

/// The root filesystem the runtime needs for an image: its layers and host
/// binds (the one place an image becomes a `RootfsSpec`).
pub fn rootfs_of(img: &warren_image::Image) -> RootfsSpec {
    RootfsSpec {
        layers: img.layers.clone(),
        binds: img
            .binds
            .iter()
            .map(|b| BindMount {
                source: b.source.clone(),
                target: b.target.clone(),
                readonly: b.readonly,
            })
            .collect(),
    }
}

/// The image's environment with `overrides` replacing same-named entries.
pub fn merge_env(base: &[String], overrides: &[String]) -> Vec<String> {
    let key = |kv: &str| kv.split('=').next().unwrap_or_default().to_string();
    let mut out: Vec<String> = base
        .iter()
        .filter(|kv| !overrides.iter().any(|o| key(o) == key(kv)))
        .cloned()
        .collect();
    out.extend(overrides.iter().cloned());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_replace_image_values() {
        let base = vec!["PATH=/bin".to_string(), "A=1".to_string()];
        let got = merge_env(&base, &["A=2".to_string(), "B=3".to_string()]);
        assert_eq!(got, vec!["PATH=/bin", "A=2", "B=3"]);
    }
}
