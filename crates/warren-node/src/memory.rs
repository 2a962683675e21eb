//! Memory snapshots on the node: checkpointable creates, checkpoints
//! (CRIU, through [`warren_runtime::NativeRuntime::checkpoint`]) and
//! restores of a checkpoint as a sandbox (a new one, or a paused one under
//! its own id).
//!
//! A restored sandbox is claimed like a created one: its image counts as in
//! use from before the restore until it is destroyed, so image removal and
//! GC cannot take it. The checkpoint directory itself belongs to the
//! caller (the control plane names it, holds its image with
//! [`Node::pin_image`] while it exists, and removes it).

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tracing::info_span;
use warren_runtime::{CheckpointOptions, Restored, SandboxId, SandboxInfo};

use crate::{CreateRequest, Node, NodeError};

/// Longest a checkpoint (CRIU included) may take.
pub const CHECKPOINT_TIMEOUT: Duration = Duration::from_secs(60);

/// What a checkpoint produced.
#[derive(Debug, Clone)]
pub struct CheckpointOutcome {
    /// The checkpoint directory.
    pub dir: PathBuf,
    /// Bytes of the files its manifest lists.
    pub bytes: u64,
    pub files: usize,
    /// The runtime's phases, in microseconds.
    pub phases: Vec<(String, u64)>,
    /// The whole call on the node, in microseconds.
    pub total_micros: u64,
}

impl Node {
    /// [`Node::create`] in the shape memory snapshots need
    /// (`SandboxSpec::checkpointable`), so that [`Node::checkpoint`] can
    /// capture it later. No image mounts (a checkpoint cannot carry them
    /// yet).
    pub async fn create_checkpointable(
        &self,
        req: CreateRequest,
        stdout: Option<OwnedFd>,
        stderr: Option<OwnedFd>,
    ) -> Result<(SandboxInfo, String), NodeError> {
        self.create_inner(req, Vec::new(), true, stdout, stderr)
            .await
    }

    /// Checkpoints a running sandbox into `dest` (which must not exist;
    /// its parent must). With `leave_running` the sandbox continues
    /// unchanged; without, its processes are gone afterwards and the caller
    /// destroys it (its resources stay claimed until then).
    pub async fn checkpoint(
        &self,
        id: &SandboxId,
        dest: PathBuf,
        leave_running: bool,
    ) -> Result<CheckpointOutcome, NodeError> {
        let rt = self.rt.clone();
        let id = id.clone();
        tokio::task::spawn_blocking(move || {
            let _span = info_span!("node_checkpoint", sandbox_id = %id).entered();
            let started = Instant::now();
            let opts = CheckpointOptions {
                leave_running,
                timeout: CHECKPOINT_TIMEOUT,
            };
            let info = rt.checkpoint(&id, &dest, opts)?;
            Ok(CheckpointOutcome {
                dir: info.dir,
                bytes: info.bytes,
                files: info.files,
                phases: info.phases,
                total_micros: started.elapsed().as_micros() as u64,
            })
        })
        .await?
    }

    /// Restores the checkpoint in `from` as sandbox `req.id` (a new id, or
    /// a paused sandbox's own once nothing of it runs). `req.image` must
    /// name the image the checkpoint was taken over (its id); `req`'s
    /// limits and network apply to the restored sandbox, and the rest of
    /// the spec is what the checkpoint's processes already have. The
    /// checkpoint is verified first: a damaged one is refused
    /// (`snapshot_corrupt`) before anything is created. Returns the sandbox
    /// (with the execs that were running at the checkpoint, when they
    /// continue with new streams) and its image id.
    pub async fn restore(
        &self,
        req: CreateRequest,
        from: PathBuf,
    ) -> Result<(Restored, String), NodeError> {
        let node = self.clone();
        tokio::task::spawn_blocking(move || {
            let _span = info_span!("node_restore", sandbox_id = %req.id).entered();
            let img = node.claim_image(&req.id, &req.image)?;
            let release = |node: &Node| node.unclaim_image(&req.id);
            let mut spec = match node.spec_for(&req, &img) {
                Ok(s) => s,
                Err(e) => {
                    release(&node);
                    return Err(e);
                }
            };
            spec.checkpointable = true;
            match node.rt.restore(&spec, &from) {
                Ok(restored) => Ok((restored, img.id)),
                Err(e) => {
                    release(&node);
                    Err(e.into())
                }
            }
        })
        .await?
    }

    /// The image id a sandbox of this node runs (its claim), if known.
    pub fn sandbox_image(&self, id: &SandboxId) -> Option<String> {
        self.in_use
            .lock()
            .expect("in-use lock poisoned")
            .get(id)
            .cloned()
    }

    /// Removes a checkpoint directory, and what the node keeps for it (a
    /// paused sandbox's exec streams). Idempotent.
    pub async fn remove_checkpoint(&self, dir: PathBuf) -> Result<(), NodeError> {
        let rt = self.rt.clone();
        tokio::task::spawn_blocking(move || Ok(rt.remove_checkpoint(&dir)?)).await?
    }
}
