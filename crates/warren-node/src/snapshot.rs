//! Filesystem snapshots, directory snapshots and image mounts.
//!
//! - [`Node::snapshot_filesystem`]: the sandbox is frozen, its overlay
//!   upper dir becomes one new layer on the sandbox's image
//!   ([`warren_image::ImageStore::commit_upper`]), it is thawed. The new
//!   image has the parent's config and binds and works as the image of new
//!   sandboxes.
//! - [`Node::snapshot_directory`]: one directory of the merged view
//!   (resolved inside the sandbox's root), frozen while read, as a
//!   single-layer image.
//! - [`Node::mount_image`] and [`Node::create_with_mounts`]: an image
//!   mounted read-only (idmapped to the sandbox's ids) at a path of a
//!   running or a new sandbox. The image's tree is its single layer, or its
//!   layers flattened once (cached). Mounted images count as in use, like
//!   the sandbox's own image, until the sandbox is destroyed.
//!
//! New images are unnamed unless a name is given; an unnamed image is
//! removed by the next image GC unless a live sandbox uses it.

use std::time::Instant;

use warren_image::{CommitOptions, CommitStats, IdShift, Image};
use warren_runtime::{ImageMount, RuntimeError, SandboxId, SandboxInfo};

use crate::{CreateRequest, Node, NodeError};

/// What a snapshot produced and what it cost.
#[derive(Debug, Clone)]
pub struct SnapshotOutcome {
    /// The new image.
    pub image: Image,
    /// `sha256:` diff id of the new layer (also its blob's digest).
    pub diff_id: String,
    /// An identical layer existed already and was reused.
    pub layer_reused: bool,
    /// Files, bytes, whiteouts, ... read and written.
    pub stats: CommitStats,
    /// Wall-clock phases in microseconds, in order: `freeze` (from the
    /// call until the sandbox is frozen: image lookup, opening the layer,
    /// the freeze), `walk` (the only phase run frozen), `thaw`, then, with
    /// the sandbox running again, `sync`, `publish`, `record` (`sync` is
    /// missing when the layer was reused).
    pub phases: Vec<(String, u64)>,
    /// How long the sandbox was frozen (from frozen until thawed, which is
    /// right after its layer was read), in microseconds.
    pub frozen_micros: u64,
    /// Whole call on the node, in microseconds.
    pub total_micros: u64,
    /// A hold on the new image ([`Node::snapshot_filesystem_held`]).
    pub hold: Option<crate::ImagePin>,
}

/// An image to mount into a new sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageMountRequest {
    /// Absolute path inside the sandbox (created when missing).
    pub path: String,
    /// Image reference (name, id; pulled when missing and pullable).
    pub image: String,
}

fn path_error(e: RuntimeError) -> NodeError {
    match e {
        RuntimeError::InvalidSpec {
            field: "path",
            reason,
        } => NodeError::InvalidPath { reason },
        e => NodeError::Runtime(e),
    }
}

fn image_error(reference: &str) -> impl FnOnce(warren_image::ImageError) -> NodeError + '_ {
    move |source| NodeError::Image {
        reference: reference.to_string(),
        source,
    }
}

impl Node {
    /// Captures the sandbox's writable layer as a new image stacked on the
    /// sandbox's image, named `name` when given. The sandbox is frozen
    /// while its layer is read and keeps running unchanged.
    pub async fn snapshot_filesystem(
        &self,
        id: &SandboxId,
        name: Option<&str>,
    ) -> Result<SnapshotOutcome, NodeError> {
        self.snapshot_upper(id, name, false).await
    }

    /// [`Node::snapshot_filesystem`] into an unnamed image that comes back
    /// held (`hold`), so that no GC removes it before the caller uses it
    /// (a build's next step starts from it).
    pub async fn snapshot_filesystem_held(
        &self,
        id: &SandboxId,
    ) -> Result<SnapshotOutcome, NodeError> {
        self.snapshot_upper(id, None, true).await
    }

    async fn snapshot_upper(
        &self,
        id: &SandboxId,
        name: Option<&str>,
        hold: bool,
    ) -> Result<SnapshotOutcome, NodeError> {
        let node = self.clone();
        let id = id.clone();
        let name = name.map(str::to_string);
        tokio::task::spawn_blocking(move || {
            let _span = tracing::info_span!("snapshot_filesystem", sandbox_id = %id).entered();
            let started = Instant::now();
            let parent_id = node
                .in_use
                .lock()
                .expect("in-use lock poisoned")
                .get(&id)
                .cloned()
                .ok_or_else(|| NodeError::SnapshotFailed {
                    reason: "the node does not know the sandbox's image".into(),
                })?;
            let parent = node.resolve_image(&parent_id)?;
            let options = CommitOptions {
                name,
                config: None,
                hold,
            };
            let frozen_at = std::cell::Cell::new(None);
            let done_at = std::cell::Cell::new(None);
            let thawed_at = std::cell::Cell::new(None);
            let out = node.rt.with_frozen_upper(&id, |upper, base, thaw| {
                frozen_at.set(Some(Instant::now()));
                let ids = IdShift {
                    base,
                    count: warren_runtime::native::IDS_PER_SANDBOX,
                };
                // The sandbox runs again as soon as its layer is read.
                node.images
                    .commit_upper_then(upper, &parent, ids, &options, || {
                        done_at.set(Some(Instant::now()));
                        thaw.thaw();
                        thawed_at.set(Some(Instant::now()));
                    })
            })?;
            finish(
                &node,
                out,
                started,
                frozen_at.get(),
                done_at.get(),
                thawed_at.get(),
            )
        })
        .await?
    }

    /// Captures directory `path` of the sandbox (its merged view, resolved
    /// inside the sandbox's root; mount points below it are left out) as a
    /// single-layer image named `name` when given. Frozen while read.
    pub async fn snapshot_directory(
        &self,
        id: &SandboxId,
        path: &str,
        name: Option<&str>,
    ) -> Result<SnapshotOutcome, NodeError> {
        let node = self.clone();
        let id = id.clone();
        let path = path.to_string();
        let name = name.map(str::to_string);
        tokio::task::spawn_blocking(move || {
            let _span = tracing::info_span!("snapshot_directory", sandbox_id = %id).entered();
            let started = Instant::now();
            let options = CommitOptions {
                name,
                config: None,
                hold: false,
            };
            let frozen_at = std::cell::Cell::new(None);
            let done_at = std::cell::Cell::new(None);
            let thawed_at = std::cell::Cell::new(None);
            let out = node
                .rt
                .with_frozen_dir(&id, &path, |dir, base, thaw| {
                    frozen_at.set(Some(Instant::now()));
                    let ids = IdShift {
                        base,
                        count: warren_runtime::native::IDS_PER_SANDBOX,
                    };
                    node.images.commit_directory_then(dir, ids, &options, || {
                        done_at.set(Some(Instant::now()));
                        thaw.thaw();
                        thawed_at.set(Some(Instant::now()));
                    })
                })
                .map_err(path_error)?;
            finish(
                &node,
                out,
                started,
                frozen_at.get(),
                done_at.get(),
                thawed_at.get(),
            )
        })
        .await?
    }

    /// Mounts image `image_ref` read-only at `path` in the running
    /// sandbox (created when missing; symlinks resolve inside the
    /// sandbox). The image stays in use until the sandbox is destroyed.
    pub async fn mount_image(
        &self,
        id: &SandboxId,
        path: &str,
        image_ref: &str,
    ) -> Result<(), NodeError> {
        warren_runtime::native::validate_mount_target(path).map_err(path_error)?;
        self.ensure_image(image_ref).await?;
        let node = self.clone();
        let id = id.clone();
        let path = path.to_string();
        let reference = image_ref.to_string();
        tokio::task::spawn_blocking(move || {
            let _span = tracing::info_span!("mount_image", sandbox_id = %id).entered();
            let img = node.claim_mount_image(&id, &reference)?;
            let mounted = node
                .images
                .image_tree(&img)
                .map_err(image_error(&reference))
                .and_then(|tree| node.rt.mount_image(&id, &tree, &path).map_err(path_error));
            if let Err(e) = mounted {
                // Not mounted: the sandbox does not use the image after all.
                node.unclaim_mount_image(&id, &img.id);
                return Err(e);
            }
            tracing::info!(image = %img.id, path = %path, "mounted image");
            Ok(())
        })
        .await?
    }

    /// [`Node::create`] with images mounted read-only into the new
    /// sandbox by its init, before its main command starts.
    pub async fn create_with_mounts(
        &self,
        req: CreateRequest,
        mounts: Vec<ImageMountRequest>,
        stdout: Option<std::os::fd::OwnedFd>,
        stderr: Option<std::os::fd::OwnedFd>,
    ) -> Result<(SandboxInfo, String), NodeError> {
        if mounts.is_empty() {
            return self.create(req, stdout, stderr).await;
        }
        for m in &mounts {
            warren_runtime::native::validate_mount_target(&m.path).map_err(path_error)?;
            self.ensure_image(&m.image).await?;
        }
        let node = self.clone();
        let id = req.id.clone();
        let resolved = tokio::task::spawn_blocking(move || {
            let mut out = Vec::with_capacity(mounts.len());
            for m in &mounts {
                let img = node.claim_mount_image(&id, &m.image)?;
                let tree = node
                    .images
                    .image_tree(&img)
                    .map_err(image_error(&m.image))?;
                out.push(ImageMount {
                    source: tree,
                    target: m.path.clone(),
                });
            }
            Ok::<_, NodeError>(out)
        })
        .await?;
        let resolved = match resolved {
            Ok(r) => r,
            Err(e) => {
                self.release_mounts(&req.id);
                return Err(e);
            }
        };
        let id = req.id.clone();
        let result = self
            .create_inner(req, resolved, false, stdout, stderr)
            .await;
        if result.is_err() {
            self.release_mounts(&id);
        }
        result
    }

    /// Resolves `reference` and records it as mounted in `id`, under the
    /// lock GC and removal take (blocking).
    fn claim_mount_image(&self, id: &SandboxId, reference: &str) -> Result<Image, NodeError> {
        let _in_use = self.in_use.lock().expect("in-use lock poisoned");
        let img = self.resolve_image(reference)?;
        self.mounted
            .lock()
            .expect("mounted lock poisoned")
            .entry(id.clone())
            .or_default()
            .push(img.id.clone());
        Ok(img)
    }

    /// Takes back one claim of [`Node::claim_mount_image`] (its mount
    /// failed).
    fn unclaim_mount_image(&self, id: &SandboxId, image_id: &str) {
        let _in_use = self.in_use.lock().expect("in-use lock poisoned");
        let mut mounted = self.mounted.lock().expect("mounted lock poisoned");
        if let Some(ids) = mounted.get_mut(id) {
            if let Some(i) = ids.iter().rposition(|m| m == image_id) {
                ids.remove(i);
            }
            if ids.is_empty() {
                mounted.remove(id);
            }
        }
    }

    /// Forgets the images mounted in `id`.
    pub(crate) fn release_mounts(&self, id: &SandboxId) {
        let _in_use = self.in_use.lock().expect("in-use lock poisoned");
        self.mounted
            .lock()
            .expect("mounted lock poisoned")
            .remove(id);
    }

    /// Records that a sandbox re-adopted after a restart has `image_ids`
    /// mounted (the control plane's record), so GC keeps them.
    pub fn adopt_mounted_images(&self, id: &SandboxId, image_ids: Vec<String>) {
        let _in_use = self.in_use.lock().expect("in-use lock poisoned");
        self.mounted
            .lock()
            .expect("mounted lock poisoned")
            .insert(id.clone(), image_ids);
    }

    /// Image ids mounted in `id` (by [`Node::mount_image`] or at create).
    pub fn mounted_images(&self, id: &SandboxId) -> Vec<String> {
        self.mounted
            .lock()
            .expect("mounted lock poisoned")
            .get(id)
            .cloned()
            .unwrap_or_default()
    }
}

/// Phases and the outcome of a commit done under a freeze.
fn finish(
    node: &Node,
    out: Result<warren_image::CommitOutcome, warren_image::ImageError>,
    started: Instant,
    frozen_at: Option<Instant>,
    done_at: Option<Instant>,
    thawed_at: Option<Instant>,
) -> Result<SnapshotOutcome, NodeError> {
    // Without a walk (an error), the sandbox was thawed on the way out.
    let thawed = thawed_at.unwrap_or_else(Instant::now);
    let out = out.map_err(|source| NodeError::Image {
        reference: "(snapshot)".into(),
        source,
    })?;
    node.image_cache
        .lock()
        .expect("image cache lock poisoned")
        .clear();
    let mut phases = Vec::with_capacity(out.phases.len() + 2);
    let frozen_micros = frozen_at
        .map(|t| thawed.duration_since(t).as_micros() as u64)
        .unwrap_or(0);
    if let Some(t) = frozen_at {
        phases.push((
            "freeze".into(),
            t.duration_since(started).as_micros() as u64,
        ));
    }
    // The store's phases: only `walk` ran frozen; the thaw came right
    // after it, before `sync`.
    for (name, us) in out.phases {
        let walk = name == "walk";
        phases.push((name, us));
        if let (true, Some(done)) = (walk, done_at) {
            phases.push((
                "thaw".into(),
                thawed.duration_since(done).as_micros() as u64,
            ));
        }
    }
    Ok(SnapshotOutcome {
        image: out.image,
        diff_id: out.diff_id,
        layer_reused: out.layer_reused,
        stats: out.stats,
        phases,
        frozen_micros,
        total_micros: started.elapsed().as_micros() as u64,
        hold: out.hold,
    })
}
