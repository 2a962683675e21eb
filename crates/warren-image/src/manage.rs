//! Inspecting images and garbage collection.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::Path;

use nix::fcntl::FlockArg;
use serde::{Deserialize, Serialize};

use crate::digest::{is_sha256_hex, parse_sha256_digest, SHA256_PREFIX};
use crate::error::ImageError;
use crate::image::{ImageConfig, ImageRecord};
use crate::store::{
    list_dir, remove_file_if_exists, ImageStore, BLOBS_DIR, IMAGES_DIR, LAYERS_DIR, LOCKS_DIR,
    TMP_DIR,
};

/// Everything known about one image, for `warren image inspect`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImageInspect {
    /// `sha256:<hex>` image id.
    pub id: String,
    /// Every name pointing at it, sorted.
    pub names: Vec<String>,
    /// Digest of the platform manifest it was pulled or imported from.
    pub manifest_digest: Option<String>,
    /// Digest of its image config blob.
    pub config_digest: Option<String>,
    /// The config's creation time (RFC 3339), if given.
    pub created: Option<String>,
    /// Layers, lowest first.
    pub layers: Vec<LayerInspect>,
    /// The cached flattened layer that the runtime stacks instead of
    /// `layers`, when there are more than the stacking limit.
    pub flattened: Option<String>,
    /// Process defaults.
    pub config: ImageConfig,
}

/// One layer in [`ImageInspect`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LayerInspect {
    /// `sha256:` of the uncompressed tar.
    pub diff_id: String,
    /// `sha256:` of the blob as stored (compressed).
    pub digest: Option<String>,
    /// The blob's media type.
    pub media_type: Option<String>,
    /// The blob's size in bytes.
    pub size: Option<u64>,
    /// The uncompressed tar's size in bytes.
    pub unpacked_size: u64,
}

/// What [`ImageStore::gc`] removed.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct GcReport {
    /// Unnamed, unused image records removed.
    pub images_removed: u64,
    /// Unpacked layers removed.
    pub layers_removed: u64,
    /// Blobs removed.
    pub blobs_removed: u64,
    /// Stale temporary entries (partial downloads, interrupted unpacks).
    pub tmp_removed: u64,
    /// Bytes freed on disk (apparent sizes).
    pub bytes_freed: u64,
}

impl ImageStore {
    /// Inspects the image a reference resolves to (names, id prefixes and
    /// registry short names as in [`ImageStore::resolve`]).
    pub fn inspect(&self, reference: &str) -> Result<ImageInspect, ImageError> {
        let image = self.resolve(reference)?;
        let _lock = self.lock(FlockArg::LockShared)?;
        let hex = parse_sha256_digest(&image.id).expect("ids are sha256 digests");
        let record = self.read_record(hex)?;
        let mut layers = Vec::with_capacity(record.layers.len());
        for diff_id in &record.layers {
            let diff_hex =
                parse_sha256_digest(diff_id).ok_or_else(|| ImageError::CorruptStore {
                    path: self.root.join(IMAGES_DIR),
                    reason: "layer is not a sha256 digest",
                })?;
            let layer = self.read_layer_record(diff_hex)?;
            layers.push(LayerInspect {
                diff_id: diff_id.clone(),
                digest: layer.blob.as_ref().map(|b| b.digest.clone()),
                media_type: layer.blob.as_ref().map(|b| b.media_type.clone()),
                size: layer.blob.as_ref().map(|b| b.size),
                unpacked_size: layer.size,
            });
        }
        Ok(ImageInspect {
            id: image.id,
            names: image.names,
            manifest_digest: record.source.as_ref().map(|s| s.manifest_digest.clone()),
            config_digest: record.source.as_ref().map(|s| s.config_digest.clone()),
            created: record.source.as_ref().and_then(|s| s.created.clone()),
            layers,
            flattened: record.flattened,
            config: record.config,
        })
    }

    /// Garbage collection. With the store lock held exclusively (pulls and
    /// imports finish first), removes: image records that no name points
    /// at and whose id is not in `in_use` (the images of live sandboxes);
    /// then every layer no remaining image uses (stacked or flattened);
    /// every blob that is neither a remaining layer's blob nor a remaining
    /// image's manifest or config; everything in `tmp/` (including partial
    /// downloads) and the lock files in `locks/`.
    pub fn gc(&self, in_use: &HashSet<String>) -> Result<GcReport, ImageError> {
        let _lock = self.lock(FlockArg::LockExclusive)?;
        // Read after the lock: a hold taken before it is seen, and one
        // taken after it names an image written after this collection.
        let held = self.held_ids();
        let in_use: HashSet<String> = in_use.union(&held).cloned().collect();
        let span = tracing::info_span!("image_gc", in_use = in_use.len());
        let _enter = span.enter();
        let mut report = GcReport::default();
        let refs = self.read_refs()?;
        let named: HashSet<&String> = refs.values().collect();
        let images_dir = self.root.join(IMAGES_DIR);
        let mut kept: Vec<ImageRecord> = Vec::new();
        for hex in self.image_hexes()? {
            let id = format!("{SHA256_PREFIX}{hex}");
            if named.contains(&hex) || in_use.contains(&id) {
                match self.read_record(&hex) {
                    Ok(record) => kept.push(record),
                    Err(e) => {
                        // Keep what it might use rather than guess.
                        tracing::warn!(id = %id, error = %e, "unreadable image record kept; gc skips layer and blob removal");
                        return Err(e);
                    }
                }
                continue;
            }
            let path = images_dir.join(format!("{hex}.json"));
            report.bytes_freed += size_of(&path);
            remove_file_if_exists(&path)?;
            report.images_removed += 1;
            tracing::info!(id = %id, "gc: removed unnamed image");
        }

        let mut layers_used: HashSet<String> = HashSet::new();
        let mut blobs_used: HashSet<String> = HashSet::new();
        for record in &kept {
            layers_used.extend(record.layers.iter().cloned());
            layers_used.extend(record.flattened.iter().cloned());
            if let Some(source) = &record.source {
                blobs_used.insert(source.manifest_digest.clone());
                blobs_used.insert(source.config_digest.clone());
            }
        }
        let layers_dir = self.root.join(LAYERS_DIR);
        for name in list_dir(&layers_dir)? {
            let diff_id = format!("{SHA256_PREFIX}{name}");
            if layers_used.contains(&diff_id) {
                if let Ok(record) = self.read_layer_record(&name) {
                    blobs_used.extend(record.blob.map(|b| b.digest));
                }
                continue;
            }
            let path = layers_dir.join(&name);
            report.bytes_freed += size_of(&path);
            if is_sha256_hex(&name) {
                self.remove_layer(&name)?;
            } else {
                remove_path(&path)?;
            }
            report.layers_removed += 1;
        }
        let blobs_dir = self.root.join(BLOBS_DIR);
        for name in list_dir(&blobs_dir)? {
            if blobs_used.contains(&format!("{SHA256_PREFIX}{name}")) {
                continue;
            }
            let path = blobs_dir.join(&name);
            report.bytes_freed += size_of(&path);
            remove_path(&path)?;
            report.blobs_removed += 1;
        }
        let tmp = self.root.join(TMP_DIR);
        for name in list_dir(&tmp)? {
            let path = tmp.join(&name);
            report.bytes_freed += size_of(&path);
            remove_path(&path)?;
            report.tmp_removed += 1;
        }
        let locks = self.root.join(LOCKS_DIR);
        for name in list_dir(&locks)? {
            remove_path(&locks.join(name))?;
        }
        tracing::info!(?report, "image gc done");
        Ok(report)
    }
}

/// Apparent size of a file or tree, never following symlinks.
fn size_of(path: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    let mut total = meta.len();
    if let Ok(entries) = fs::read_dir(path) {
        for entry in entries.flatten() {
            total += size_of(&entry.path());
        }
    }
    total
}

fn remove_path(path: &Path) -> Result<(), ImageError> {
    let result = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ImageError::RemoveStore {
            path: path.to_path_buf(),
            source,
        }),
    }
}
