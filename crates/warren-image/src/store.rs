//! [`ImageStore`]: the on-disk, content-addressed image store.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use tempfile::TempDir;

use crate::digest::{
    is_lower_hex, is_sha256_hex, parse_sha256_digest, sha256_hex, HashingReader, HashingWriter,
    LimitExceeded, SHA256_HEX_LEN, SHA256_PREFIX,
};
use crate::error::ImageError;
use crate::fsutil::{atomic_write, fsync_dir};
use crate::host;
use crate::image::{
    BlobRef, HostBind, Image, ImageConfig, ImageRecord, LayerRecord, IMAGE_RECORD_VERSION,
    LAYER_RECORD_VERSION,
};
use crate::name::{ImageName, DEFAULT_TAG};
use crate::oci::Compression;
use crate::pack::archive_dir;
use crate::unpack::{unpack, UnpackOptions, Whiteouts};

pub(crate) const BLOBS_DIR: &str = "blobs/sha256";
pub(crate) const LAYERS_DIR: &str = "layers";
pub(crate) const IMAGES_DIR: &str = "images";
pub(crate) const REFS_DIR: &str = "refs";
pub(crate) const TMP_DIR: &str = "tmp";
pub(crate) const LOCK_FILE: &str = "lock";
pub(crate) const LAYER_FS_DIR: &str = "fs";
pub(crate) const LAYER_RECORD_FILE: &str = "layer.json";
pub(crate) const LOCKS_DIR: &str = "locks";

/// Images with more layers than this are flattened once into a single
/// cached layer (see the crate docs). The kernel stacks at most 500 overlay
/// lower dirs, but every lower layer also costs the runtime one idmapped
/// bind mount (`open_tree` + `mount_setattr` + `move_mount`) per sandbox
/// create; 64 stays well above real images (Docker Hub images rarely exceed
/// 40 layers) while bounding that cost.
pub const MAX_STACKED_LAYERS: usize = 64;

/// Size limits applied while unpacking layers (hostile archives).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreLimits {
    /// Largest uncompressed layer tar, in bytes (default 64 GiB).
    pub max_layer_bytes: u64,
    /// Largest single regular file, in bytes (default 16 GiB).
    pub max_file_bytes: u64,
}

impl Default for StoreLimits {
    fn default() -> Self {
        Self {
            max_layer_bytes: 64 << 30,
            max_file_bytes: 16 << 30,
        }
    }
}

/// Shortest accepted image id prefix, in hex digits.
pub const MIN_ID_PREFIX_LEN: usize = 12;

/// A content-addressed image store rooted at a local directory. See the
/// crate documentation for the layout and invariants.
#[derive(Debug, Clone)]
pub struct ImageStore {
    pub(crate) root: PathBuf,
    host_root: PathBuf,
    pub(crate) preserve_owners: bool,
    pub(crate) limits: StoreLimits,
    pub(crate) default_registry: String,
    pub(crate) max_stacked_layers: usize,
    /// Images in-flight operations hold (see [`crate::ImageHold`]).
    pub(crate) holds: crate::hold::Holds,
}

/// A layer blob on disk: spooled into a work directory, or already in
/// `blobs/`.
pub(crate) struct SpooledBlob {
    pub path: PathBuf,
    pub hex: String,
    pub size: u64,
    pub compression: Compression,
    pub media_type: String,
}

/// The store lock, held for the duration of an operation.
pub(crate) type StoreLock = Flock<File>;

impl ImageStore {
    /// Opens (creating directories if needed) a store rooted at `root`
    /// (e.g. `/var/lib/warren/images`). The root and its subdirectories are
    /// made `0700`. Stale temporary entries left by a crashed import are
    /// removed unless another process is using the store right now.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, ImageError> {
        let root = root.into();
        let open_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ImageError::OpenStore { path, source }
        };
        fs::create_dir_all(&root).map_err(open_err(&root))?;
        let root = fs::canonicalize(&root).map_err(open_err(&root))?;
        for dir in [
            "", "blobs", BLOBS_DIR, LAYERS_DIR, IMAGES_DIR, REFS_DIR, TMP_DIR, LOCKS_DIR,
        ] {
            let path = root.join(dir);
            fs::create_dir_all(&path).map_err(open_err(&path))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o700))
                .map_err(open_err(&path))?;
        }
        let store = Self {
            root,
            host_root: PathBuf::from("/"),
            preserve_owners: nix::unistd::geteuid().is_root(),
            limits: StoreLimits::default(),
            default_registry: crate::reference::DEFAULT_REGISTRY.to_owned(),
            max_stacked_layers: MAX_STACKED_LAYERS,
            holds: Default::default(),
        };
        if !store.preserve_owners {
            tracing::warn!(root = %store.root.display(), "not running as root: layer owners will not be preserved");
        }
        store.clean_tmp()?;
        Ok(store)
    }

    /// Uses `host_root` instead of `/` as the host the `host` image is
    /// generated from (for tests and nested setups).
    pub fn with_host_root(mut self, host_root: impl Into<PathBuf>) -> Self {
        self.host_root = host_root.into();
        self
    }

    /// Sets the unpack size limits.
    pub fn with_limits(mut self, limits: StoreLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets the registry that short names (`python:3.12`) resolve to
    /// (default `docker.io`).
    pub fn with_default_registry(mut self, registry: impl Into<String>) -> Self {
        self.default_registry = registry.into();
        self
    }

    /// Sets the number of layers above which an image is flattened
    /// (default [`MAX_STACKED_LAYERS`]; at least 1).
    pub fn with_max_stacked_layers(mut self, max: usize) -> Self {
        self.max_stacked_layers = max.max(1);
        self
    }

    /// The registry short names resolve to.
    pub fn default_registry(&self) -> &str {
        &self.default_registry
    }

    /// The absolute store root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Imports a directory tree as a single-layer image and names it `name`
    /// (`"name"` or `"name:tag"`; default tag `latest`).
    pub fn import_dir(&self, src: &Path, name: &str) -> Result<Image, ImageError> {
        self.import_dir_with_config(src, name, ImageConfig::default())
    }

    /// [`ImageStore::import_dir`] with an explicit image config.
    pub fn import_dir_with_config(
        &self,
        src: &Path,
        name: &str,
        config: ImageConfig,
    ) -> Result<Image, ImageError> {
        let name = ImageName::parse_new(name)?;
        let _lock = self.lock(FlockArg::LockShared)?;
        let work = self.work_dir()?;
        let path = work.path().join("blob");
        let file = create_new(&path)?;
        let writer = archive_dir(src, HashingWriter::new(BufWriter::new(file)))?;
        let (buffered, hex, size) = writer.finish();
        let file = buffered
            .into_inner()
            .map_err(|e| write_err(&path, e.into_error()))?;
        file.sync_all().map_err(|e| write_err(&path, e))?;
        let blob = SpooledBlob {
            path,
            hex,
            size,
            compression: Compression::None,
            media_type: Compression::None.media_type().to_owned(),
        };
        let diff_hex = self.ensure_layer(&work, &blob)?;
        let image = self.commit_image(&[diff_hex], Vec::new(), config, Some(&name))?;
        tracing::info!(id = %image.id, name = %name, "imported directory");
        Ok(image)
    }

    /// Imports a tar stream (plain or gzip, detected by magic bytes) as a
    /// single-layer image named `name`.
    pub fn import_tar(&self, reader: impl Read, name: &str) -> Result<Image, ImageError> {
        self.import_tar_with_config(reader, name, ImageConfig::default())
    }

    /// [`ImageStore::import_tar`] with an explicit image config.
    pub fn import_tar_with_config(
        &self,
        reader: impl Read,
        name: &str,
        config: ImageConfig,
    ) -> Result<Image, ImageError> {
        let name = ImageName::parse_new(name)?;
        let _lock = self.lock(FlockArg::LockShared)?;
        let work = self.work_dir()?;
        let blob = spool(reader, work.path().join("blob"))?;
        let diff_hex = self.ensure_layer(&work, &blob)?;
        let image = self.commit_image(&[diff_hex], Vec::new(), config, Some(&name))?;
        tracing::info!(id = %image.id, name = %name, "imported tar");
        Ok(image)
    }

    /// Resolves a reference: `host` (the built-in image, created on first
    /// use), an imported `name[:tag]`, or an image id (`sha256:<hex>`, or a
    /// unique hex prefix of at least 12 digits, with or without `sha256:`).
    /// Names win over id prefixes.
    pub fn resolve(&self, reference: &str) -> Result<Image, ImageError> {
        if is_host_reference(reference) {
            return self.host_image();
        }
        let _lock = self.lock(FlockArg::LockShared)?;
        let refs = self.read_refs()?;
        let (hex, _) = self.lookup(reference, &refs)?;
        self.load_image(&hex, &refs)
    }

    /// Every image in the store, named ones first (sorted by name), then
    /// untagged ones by id. Does not create the host image. Images whose
    /// record is corrupt or whose layers are missing are logged and left
    /// out (resolving them reports the error).
    pub fn list(&self) -> Result<Vec<Image>, ImageError> {
        let _lock = self.lock(FlockArg::LockShared)?;
        let refs = self.read_refs()?;
        let mut images = Vec::new();
        for hex in self.image_hexes()? {
            match self.load_image(&hex, &refs) {
                Ok(image) => images.push(image),
                Err(
                    e @ (ImageError::CorruptStore { .. }
                    | ImageError::CorruptRecord { .. }
                    | ImageError::MissingLayer { .. }),
                ) => {
                    tracing::warn!(id = %hex, error = %e, code = e.code(), "skipping broken image");
                }
                Err(e) => return Err(e),
            }
        }
        images.sort_by(|a, b| {
            (a.names.is_empty(), &a.names, &a.id).cmp(&(b.names.is_empty(), &b.names, &b.id))
        });
        Ok(images)
    }

    /// Removes a name, or by id every name of an image. Once no name points
    /// at the image, its record is removed, then every layer no remaining
    /// image uses, then every blob no remaining layer came from.
    ///
    /// There is no protection yet for images in use by sandboxes: removing
    /// one deletes the layer directories under a running overlay mount. The
    /// caller (the node) must not remove images its sandboxes use.
    pub fn remove(&self, reference: &str) -> Result<(), ImageError> {
        self.remove_unless_in_use(reference, &HashSet::new())
    }

    /// [`ImageStore::remove`], refusing with [`ImageError::ImageInUse`]
    /// (before changing anything) when the image record would be deleted
    /// while its id (`sha256:<hex>`) is in `in_use` (the images of live
    /// sandboxes). Untagging one of several names is always allowed.
    pub fn remove_unless_in_use(
        &self,
        reference: &str,
        in_use: &HashSet<String>,
    ) -> Result<(), ImageError> {
        let _lock = self.lock(FlockArg::LockExclusive)?;
        let refs = self.read_refs()?;
        let (hex, name) = self.lookup(reference, &refs)?;
        let untag: Vec<ImageName> = match name {
            Some(name) => vec![name],
            None => refs
                .iter()
                .filter(|(_, id)| **id == hex)
                .map(|(name, _)| name.clone())
                .collect(),
        };
        let still_named = refs
            .iter()
            .any(|(name, id)| *id == hex && !untag.contains(name));
        let id = format!("{SHA256_PREFIX}{hex}");
        if !still_named && (in_use.contains(&id) || self.held_ids().contains(&id)) {
            return Err(ImageError::ImageInUse { id });
        }
        let refs_dir = self.root.join(REFS_DIR);
        for name in &untag {
            remove_file_if_exists(&refs_dir.join(name.ref_file_name()))?;
        }
        fsync_dir(&refs_dir).map_err(|e| write_err(&refs_dir, e))?;
        if still_named {
            tracing::info!(id = %format!("{SHA256_PREFIX}{hex}"), "untagged image");
            return Ok(());
        }

        let record = self.read_record(&hex)?;
        let images_dir = self.root.join(IMAGES_DIR);
        remove_file_if_exists(&images_dir.join(format!("{hex}.json")))?;
        fsync_dir(&images_dir).map_err(|e| write_err(&images_dir, e))?;

        let mut layers_in_use = HashSet::new();
        let mut docs_in_use = HashSet::new();
        for other in self.image_hexes()? {
            let other = self.read_record(&other)?;
            layers_in_use.extend(other.layers);
            layers_in_use.extend(other.flattened);
            if let Some(source) = other.source {
                docs_in_use.insert(source.manifest_digest);
                docs_in_use.insert(source.config_digest);
            }
        }
        let mut removed_blobs = Vec::new();
        if let Some(source) = &record.source {
            for doc in [&source.manifest_digest, &source.config_digest] {
                if !docs_in_use.contains(doc) {
                    removed_blobs.push(doc.clone());
                }
            }
        }
        let own_layers = record.layers.iter().chain(record.flattened.iter());
        for diff_id in own_layers.filter(|l| !layers_in_use.contains(*l)) {
            let Some(diff_hex) = parse_sha256_digest(diff_id) else {
                continue;
            };
            if let Some(blob) = self.remove_layer(diff_hex)? {
                removed_blobs.push(blob);
            }
        }
        if !removed_blobs.is_empty() {
            let blobs_in_use = self.blobs_in_use()?;
            for blob in removed_blobs {
                if let Some(blob_hex) = parse_sha256_digest(&blob) {
                    if !blobs_in_use.contains(&blob) {
                        remove_file_if_exists(&self.blob_path(blob_hex))?;
                    }
                }
            }
        }
        tracing::info!(id = %format!("{SHA256_PREFIX}{hex}"), "removed image");
        Ok(())
    }

    /// Builds (idempotently) and returns the built-in `host` image. The
    /// skeleton is regenerated from the host on every call; identical
    /// content gives the same id, and `host` is moved to a new id when the
    /// host changed (the old image stays, untagged, until removed).
    pub fn host_image(&self) -> Result<Image, ImageError> {
        let skeleton = host::build(&self.host_root)?;
        let _lock = self.lock(FlockArg::LockShared)?;
        let diff_hex = sha256_hex(&skeleton.tar);
        if !self.layer_is_complete(&diff_hex) {
            let work = self.work_dir()?;
            let path = work.path().join("blob");
            let mut file = create_new(&path)?;
            file.write_all(&skeleton.tar)
                .and_then(|()| file.sync_all())
                .map_err(|e| write_err(&path, e))?;
            let blob = SpooledBlob {
                path,
                hex: diff_hex.clone(),
                size: skeleton.tar.len() as u64,
                compression: Compression::None,
                media_type: Compression::None.media_type().to_owned(),
            };
            self.ensure_layer(&work, &blob)?;
        }
        self.commit_image(
            &[diff_hex],
            skeleton.binds,
            host::host_config(),
            Some(&ImageName::host()),
        )
    }

    // ---- layers -------------------------------------------------------

    pub(crate) fn layer_dir(&self, diff_hex: &str) -> PathBuf {
        self.root.join(LAYERS_DIR).join(diff_hex)
    }

    pub(crate) fn blob_path(&self, hex: &str) -> PathBuf {
        self.root.join(BLOBS_DIR).join(hex)
    }

    pub(crate) fn layer_is_complete(&self, diff_hex: &str) -> bool {
        self.layer_dir(diff_hex).join(LAYER_RECORD_FILE).is_file()
    }

    /// Makes sure the layer of `blob` is unpacked under `layers/` and
    /// returns its diff id (hex). See [`ImageStore::ensure_layer_verified`].
    fn ensure_layer(&self, work: &TempDir, blob: &SpooledBlob) -> Result<String, ImageError> {
        self.ensure_layer_verified(work, blob, None, &[])
    }

    /// Makes sure the layer of `blob` is unpacked under `layers/` and
    /// returns its diff id (hex). The blob is decompressed, hashed and
    /// unpacked in one pass into `work`, and renamed into place only when
    /// complete and, with `expected_diff`, only when the uncompressed tar
    /// hashes to it (else [`ImageError::DigestMismatch`], nothing kept).
    /// `lowers` are the diff ids (hex) of the layers below, lowest first,
    /// for hard links into them. A blob still in `work` is moved into
    /// `blobs/` before the layer appears.
    pub(crate) fn ensure_layer_verified(
        &self,
        work: &TempDir,
        blob: &SpooledBlob,
        expected_diff: Option<&str>,
        lowers: &[String],
    ) -> Result<String, ImageError> {
        if let Some(diff_hex) = expected_diff {
            if self.layer_is_complete(diff_hex) {
                tracing::debug!(diff_id = %diff_hex, "layer already present");
                self.place_blob(blob)?;
                return Ok(diff_hex.to_owned());
            }
        } else if blob.compression == Compression::None && self.layer_is_complete(&blob.hex) {
            self.place_blob(blob)?;
            return Ok(blob.hex.clone());
        }
        let _layer_lock = match expected_diff {
            Some(diff_hex) => {
                let lock = self.named_lock(&format!("layer-{diff_hex}"))?;
                if self.layer_is_complete(diff_hex) {
                    tracing::debug!(diff_id = %diff_hex, "layer unpacked concurrently");
                    self.place_blob(blob)?;
                    return Ok(diff_hex.to_owned());
                }
                Some(lock)
            }
            None => None,
        };

        let staging = work.path().join("layer");
        let fs_dir = staging.join(LAYER_FS_DIR);
        fs::create_dir(&staging).map_err(|e| write_err(&staging, e))?;
        fs::create_dir(&fs_dir).map_err(|e| write_err(&fs_dir, e))?;
        fs::set_permissions(&fs_dir, fs::Permissions::from_mode(0o755))
            .map_err(|e| write_err(&fs_dir, e))?;
        let mut reader = HashingReader::new(
            decompress(
                BufReader::with_capacity(256 << 10, open_file(&blob.path)?),
                blob.compression,
            )?,
            self.limits.max_layer_bytes,
        );
        let options = UnpackOptions {
            preserve_owners: self.preserve_owners,
            whiteouts: Whiteouts::Overlay,
            lowers: lowers
                .iter()
                .rev()
                .map(|hex| self.layer_dir(hex).join(LAYER_FS_DIR))
                .collect(),
            max_file_bytes: self.limits.max_file_bytes,
            lowers_ready: None,
        };
        let stats = unpack(&mut reader, &fs_dir, &options).map_err(too_large)?;
        let (diff_hex, tar_size) = reader
            .finish()
            .map_err(|source| too_large(ImageError::ReadArchive { source }))?;
        if let Some(expected) = expected_diff {
            if expected != diff_hex {
                return Err(ImageError::DigestMismatch {
                    what: format!("uncompressed layer of blob {SHA256_PREFIX}{}", blob.hex),
                    expected: format!("{SHA256_PREFIX}{expected}"),
                    actual: format!("{SHA256_PREFIX}{diff_hex}"),
                });
            }
        }
        let layer_dir = self.layer_dir(&diff_hex);
        if self.layer_is_complete(&diff_hex) {
            tracing::debug!(diff_id = %diff_hex, "layer already present");
            self.place_blob(blob)?;
            return Ok(diff_hex);
        }
        if layer_dir.exists() {
            // Not produced by this code (layers appear by atomic rename, with
            // layer.json inside); move it out of the way.
            tracing::warn!(path = %layer_dir.display(), "replacing incomplete layer directory");
            fs::rename(&layer_dir, work.path().join("stale-layer"))
                .map_err(|e| write_err(&layer_dir, e))?;
        }

        let record = LayerRecord {
            schema_version: LAYER_RECORD_VERSION,
            diff_id: format!("{SHA256_PREFIX}{diff_hex}"),
            size: tar_size,
            blob: Some(BlobRef {
                digest: format!("{SHA256_PREFIX}{}", blob.hex),
                media_type: blob.media_type.clone(),
                size: blob.size,
            }),
            flattened_from: None,
        };
        let record_path = staging.join(LAYER_RECORD_FILE);
        let bytes = to_json(&record, &record_path)?;
        fs::write(&record_path, bytes).map_err(|e| write_err(&record_path, e))?;

        // Blob first, so that a complete layer always has its blob.
        self.place_blob(blob)?;
        self.publish_layer(&staging, &diff_hex)?;
        tracing::info!(diff_id = %diff_hex, entries = stats.entries, whiteouts = stats.whiteouts, "unpacked layer");
        Ok(diff_hex)
    }

    /// Moves a spooled blob into `blobs/` unless it is there already.
    pub(crate) fn place_blob(&self, blob: &SpooledBlob) -> Result<(), ImageError> {
        let blob_target = self.blob_path(&blob.hex);
        if blob.path != blob_target && !blob_target.exists() {
            fs::rename(&blob.path, &blob_target).map_err(|e| write_err(&blob_target, e))?;
            let blobs_dir = self.root.join(BLOBS_DIR);
            fsync_dir(&blobs_dir).map_err(|e| write_err(&blobs_dir, e))?;
        }
        Ok(())
    }

    /// Syncs a staged layer directory and renames it to `layers/<hex>`
    /// (a concurrent identical unpack that got there first wins).
    pub(crate) fn publish_layer(&self, staging: &Path, diff_hex: &str) -> Result<(), ImageError> {
        // Everything unpacked must be durable before the layer appears.
        sync_fs_of(staging)?;
        self.rename_layer(staging, diff_hex)
    }

    /// Renames a staged layer directory, already durable (see
    /// [`sync_fs_of`]), to `layers/<hex>`.
    pub(crate) fn rename_layer(&self, staging: &Path, diff_hex: &str) -> Result<(), ImageError> {
        let layer_dir = self.layer_dir(diff_hex);
        match fs::rename(staging, &layer_dir) {
            Ok(()) => {
                let layers_dir = self.root.join(LAYERS_DIR);
                fsync_dir(&layers_dir).map_err(|e| write_err(&layers_dir, e))?;
            }
            Err(e)
                if matches!(
                    e.raw_os_error().map(Errno::from_raw),
                    Some(Errno::ENOTEMPTY | Errno::EEXIST)
                ) =>
            {
                tracing::debug!(diff_id = %diff_hex, "layer unpacked concurrently; reusing it");
            }
            Err(e) => return Err(write_err(&layer_dir, e)),
        }
        Ok(())
    }

    /// Removes a layer directory (atomically from the store's point of
    /// view: it is first renamed into `tmp/`). Returns the digest of the
    /// blob it came from, if known.
    pub(crate) fn remove_layer(&self, diff_hex: &str) -> Result<Option<String>, ImageError> {
        let layer_dir = self.layer_dir(diff_hex);
        let blob = self
            .read_layer_record(diff_hex)
            .ok()
            .and_then(|record| record.blob)
            .map(|blob| blob.digest);
        let trash = self.work_dir()?;
        match fs::rename(&layer_dir, trash.path().join("layer")) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(blob),
            Err(source) => {
                return Err(ImageError::RemoveStore {
                    path: layer_dir,
                    source,
                })
            }
        }
        let layers_dir = self.root.join(LAYERS_DIR);
        fsync_dir(&layers_dir).map_err(|e| write_err(&layers_dir, e))?;
        let trash_path = trash.path().to_path_buf();
        if let Err(e) = trash.close() {
            // Harmless: the next `open` removes leftovers in tmp/.
            tracing::warn!(path = %trash_path.display(), error = %e, "could not delete removed layer");
        }
        tracing::debug!(diff_id = %diff_hex, "removed layer");
        Ok(blob)
    }

    pub(crate) fn read_layer_record(&self, diff_hex: &str) -> Result<LayerRecord, ImageError> {
        let path = self.layer_dir(diff_hex).join(LAYER_RECORD_FILE);
        let bytes = read_file(&path)?;
        serde_json::from_slice(&bytes).map_err(|source| ImageError::CorruptRecord { path, source })
    }

    /// Blob digests of every layer on disk.
    pub(crate) fn blobs_in_use(&self) -> Result<HashSet<String>, ImageError> {
        let mut blobs = HashSet::new();
        for name in list_dir(&self.root.join(LAYERS_DIR))? {
            if is_sha256_hex(&name) {
                if let Ok(LayerRecord {
                    blob: Some(blob), ..
                }) = self.read_layer_record(&name)
                {
                    blobs.insert(blob.digest);
                }
            }
        }
        Ok(blobs)
    }

    // ---- images and refs ----------------------------------------------

    /// Writes the image record (if new) and the ref, and loads the image.
    fn commit_image(
        &self,
        layers: &[String],
        binds: Vec<HostBind>,
        config: ImageConfig,
        name: Option<&ImageName>,
    ) -> Result<Image, ImageError> {
        let record = ImageRecord {
            schema_version: IMAGE_RECORD_VERSION,
            layers: layers
                .iter()
                .map(|hex| format!("{SHA256_PREFIX}{hex}"))
                .collect(),
            binds,
            config,
            source: None,
            flattened: None,
        };
        self.commit_record(record, name)
    }

    /// Flattens the record's layers if there are too many, writes the
    /// record (if new) and the ref, and loads the image.
    pub(crate) fn commit_record(
        &self,
        mut record: ImageRecord,
        name: Option<&ImageName>,
    ) -> Result<Image, ImageError> {
        if record.layers.len() > self.max_stacked_layers {
            record.flattened = Some(self.flatten(&record.layers)?);
        }
        let path_for = |hex: &str| self.root.join(IMAGES_DIR).join(format!("{hex}.json"));
        let bytes = to_json(&record, &self.root.join(IMAGES_DIR))?;
        let hex = sha256_hex(&bytes);
        let path = path_for(&hex);
        if !path.is_file() {
            atomic_write(&self.root.join(TMP_DIR), &path, &bytes)?;
        }
        if let Some(name) = name {
            let ref_path = self.root.join(REFS_DIR).join(name.ref_file_name());
            let content = format!("{SHA256_PREFIX}{hex}\n");
            let current = fs::read(&ref_path).ok();
            if current.as_deref() != Some(content.as_bytes()) {
                atomic_write(&self.root.join(TMP_DIR), &ref_path, content.as_bytes())?;
            }
        }
        let refs = self.read_refs()?;
        self.load_image(&hex, &refs)
    }

    /// Finds the image a reference means: (id hex, the name used if any).
    pub(crate) fn lookup(
        &self,
        reference: &str,
        refs: &BTreeMap<ImageName, String>,
    ) -> Result<(String, Option<ImageName>), ImageError> {
        if let Some(hex) = reference.strip_prefix(SHA256_PREFIX) {
            return Ok((self.find_id(reference, hex)?, None));
        }
        match ImageName::parse(reference) {
            Ok(name) => match refs.get(&name) {
                Some(hex) => Ok((hex.clone(), Some(name))),
                None if self
                    .registry_name(reference)
                    .is_some_and(|n| refs.contains_key(&n)) =>
                {
                    let name = self.registry_name(reference).expect("checked above");
                    Ok((refs[&name].clone(), Some(name)))
                }
                None if is_lower_hex(reference) && reference.len() >= MIN_ID_PREFIX_LEN => {
                    Ok((self.find_id(reference, reference)?, None))
                }
                None => Err(ImageError::NotFound {
                    reference: reference.to_owned(),
                }),
            },
            Err(_) if is_lower_hex(reference) => Ok((self.find_id(reference, reference)?, None)),
            Err(e) => Err(e),
        }
    }

    /// The name a registry pull of `reference` stores its image under.
    fn registry_name(&self, reference: &str) -> Option<ImageName> {
        crate::reference::Reference::parse(reference, &self.default_registry)
            .ok()
            .map(|r| r.image_name())
    }

    /// Finds the unique image whose id starts with `prefix`.
    fn find_id(&self, reference: &str, prefix: &str) -> Result<String, ImageError> {
        let invalid = |reason| ImageError::InvalidReference {
            reference: reference.to_owned(),
            reason,
        };
        if !is_lower_hex(prefix) {
            return Err(invalid("image id must be lowercase hex"));
        }
        if prefix.len() > SHA256_HEX_LEN {
            return Err(invalid("image id is longer than 64 hex digits"));
        }
        if prefix.len() < MIN_ID_PREFIX_LEN {
            return Err(invalid("image id prefix must have at least 12 hex digits"));
        }
        let mut matches = self
            .image_hexes()?
            .into_iter()
            .filter(|hex| hex.starts_with(prefix));
        match (matches.next(), matches.next()) {
            (Some(hex), None) => Ok(hex),
            (None, _) => Err(ImageError::NotFound {
                reference: reference.to_owned(),
            }),
            (Some(_), Some(_)) => Err(ImageError::AmbiguousReference {
                reference: reference.to_owned(),
            }),
        }
    }

    /// Hex ids of every image record, sorted.
    pub(crate) fn image_hexes(&self) -> Result<Vec<String>, ImageError> {
        let mut hexes: Vec<String> = list_dir(&self.root.join(IMAGES_DIR))?
            .into_iter()
            .filter_map(|name| name.strip_suffix(".json").map(str::to_owned))
            .filter(|hex| is_sha256_hex(hex))
            .collect();
        hexes.sort();
        Ok(hexes)
    }

    /// Every ref: name → image id hex.
    pub(crate) fn read_refs(&self) -> Result<BTreeMap<ImageName, String>, ImageError> {
        let dir = self.root.join(REFS_DIR);
        let mut refs = BTreeMap::new();
        for file_name in list_dir(&dir)? {
            let Some(name) = ImageName::from_ref_file_name(&file_name) else {
                tracing::warn!(file = %file_name, "ignoring unexpected file in refs/");
                continue;
            };
            let path = dir.join(&file_name);
            let content = match fs::read_to_string(&path) {
                Ok(content) => content,
                // Removed concurrently.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => return Err(ImageError::ReadStore { path, source }),
            };
            let hex = parse_sha256_digest(content.trim()).ok_or(ImageError::CorruptStore {
                path: path.clone(),
                reason: "a ref must hold one sha256 image id",
            })?;
            refs.insert(name, hex.to_owned());
        }
        Ok(refs)
    }

    /// Reads and verifies `images/<hex>.json`.
    pub(crate) fn read_record(&self, hex: &str) -> Result<ImageRecord, ImageError> {
        let path = self.root.join(IMAGES_DIR).join(format!("{hex}.json"));
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ImageError::NotFound {
                    reference: format!("{SHA256_PREFIX}{hex}"),
                })
            }
            Err(source) => return Err(ImageError::ReadStore { path, source }),
        };
        if sha256_hex(&bytes) != hex {
            return Err(ImageError::CorruptStore {
                path,
                reason: "content does not match its digest",
            });
        }
        serde_json::from_slice(&bytes).map_err(|source| ImageError::CorruptRecord { path, source })
    }

    pub(crate) fn load_image(
        &self,
        hex: &str,
        refs: &BTreeMap<ImageName, String>,
    ) -> Result<Image, ImageError> {
        let record = self.read_record(hex)?;
        let id = format!("{SHA256_PREFIX}{hex}");
        let mut layers = Vec::with_capacity(record.layers.len());
        let stack = match &record.flattened {
            Some(flat) => std::slice::from_ref(flat),
            None => &record.layers[..],
        };
        for diff_id in stack {
            let diff_hex =
                parse_sha256_digest(diff_id).ok_or_else(|| ImageError::CorruptStore {
                    path: self.root.join(IMAGES_DIR).join(format!("{hex}.json")),
                    reason: "layer is not a sha256 digest",
                })?;
            if !self.layer_is_complete(diff_hex) {
                return Err(ImageError::MissingLayer {
                    id,
                    diff_id: diff_id.clone(),
                });
            }
            layers.push(self.layer_dir(diff_hex).join(LAYER_FS_DIR));
        }
        let names = refs
            .iter()
            .filter(|(_, target)| target.as_str() == hex)
            .map(|(name, _)| name.to_string())
            .collect();
        Ok(Image {
            id,
            names,
            layers,
            binds: record.binds,
            config: record.config,
        })
    }

    // ---- locking and temporary space ----------------------------------

    /// Takes a named lock under `locks/` (blocking, exclusive): one
    /// process at a time downloads a blob or unpacks a layer.
    pub(crate) fn named_lock(&self, name: &str) -> Result<StoreLock, ImageError> {
        let path = self.root.join(LOCKS_DIR).join(name);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|source| ImageError::LockStore {
                path: path.clone(),
                source,
            })?;
        Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| ImageError::LockStore {
            path,
            source: errno.into(),
        })
    }

    /// Takes the store lock. Imports and reads hold it shared; `remove`
    /// and tmp cleanup hold it exclusively.
    pub(crate) fn lock(&self, arg: FlockArg) -> Result<StoreLock, ImageError> {
        let path = self.root.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|source| ImageError::LockStore {
                path: path.clone(),
                source,
            })?;
        Flock::lock(file, arg).map_err(|(_, errno)| ImageError::LockStore {
            path,
            source: errno.into(),
        })
    }

    /// A fresh private directory under `tmp/`, removed on drop.
    pub(crate) fn work_dir(&self) -> Result<TempDir, ImageError> {
        let tmp = self.root.join(TMP_DIR);
        tempfile::Builder::new()
            .prefix("work-")
            .tempdir_in(&tmp)
            .map_err(|e| write_err(&tmp, e))
    }

    /// Removes everything in `tmp/` if nobody else holds the store lock.
    pub(crate) fn clean_tmp(&self) -> Result<(), ImageError> {
        let _lock = match self.lock(FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err(ImageError::LockStore { source, .. })
                if source.raw_os_error() == Some(Errno::EWOULDBLOCK as i32) =>
            {
                tracing::debug!("image store in use; not cleaning tmp/");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let tmp = self.root.join(TMP_DIR);
        let mut removed = 0usize;
        for name in list_dir(&tmp)? {
            if name.starts_with(crate::ingest::PARTIAL_PREFIX) {
                // Kept for resuming; `gc` removes them.
                continue;
            }
            let path = tmp.join(&name);
            let result = match fs::symlink_metadata(&path) {
                Ok(meta) if meta.is_dir() => fs::remove_dir_all(&path),
                Ok(_) => fs::remove_file(&path),
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(ImageError::RemoveStore { path, source }),
            }
        }
        if removed > 0 {
            tracing::info!(
                removed,
                "removed stale temporary entries from the image store"
            );
        }
        Ok(())
    }
}

/// Whether `reference` means the built-in host image.
fn is_host_reference(reference: &str) -> bool {
    matches!(ImageName::parse(reference), Ok(name) if name.is_host() && name.tag() == DEFAULT_TAG)
}

/// Copies `reader` into a new file at `path`, hashing it and detecting its
/// compression from the first bytes.
fn spool(mut reader: impl Read, path: PathBuf) -> Result<SpooledBlob, ImageError> {
    let read_err = |source| ImageError::ReadArchive { source };
    let mut head = [0u8; 6];
    let mut filled = 0;
    while filled < head.len() {
        match reader.read(&mut head[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(read_err(e)),
        }
    }
    if filled == 0 {
        return Err(read_err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "layer archive is empty",
        )));
    }
    let compression = Compression::detect(&head[..filled])?;
    let file = create_new(&path)?;
    let mut writer = HashingWriter::new(BufWriter::new(file));
    writer
        .write_all(&head[..filled])
        .map_err(|e| write_err(&path, e))?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_err(e)),
        };
        writer
            .write_all(&buf[..n])
            .map_err(|e| write_err(&path, e))?;
    }
    let (buffered, hex, size) = writer.finish();
    let file = buffered
        .into_inner()
        .map_err(|e| write_err(&path, e.into_error()))?;
    file.sync_all().map_err(|e| write_err(&path, e))?;
    Ok(SpooledBlob {
        path,
        hex,
        size,
        compression,
        media_type: compression.media_type().to_owned(),
    })
}

/// Makes everything written so far to the filesystem holding `path`
/// durable (`syncfs`: one call for a whole unpacked tree and its blob,
/// instead of an `fsync` per file).
pub(crate) fn sync_fs_of(path: &Path) -> Result<(), ImageError> {
    let file = open_file(path)?;
    nix::unistd::syncfs(&file).map_err(|e| write_err(path, e.into()))
}

/// A decompressing reader for a layer stream.
pub(crate) fn decompress<'a>(
    reader: impl io::BufRead + 'a,
    compression: Compression,
) -> Result<Box<dyn Read + 'a>, ImageError> {
    Ok(match compression {
        Compression::None => Box::new(reader),
        Compression::Gzip => Box::new(MultiGzDecoder::new(reader)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(reader)
                .map_err(|source| ImageError::ReadArchive { source })?,
        ),
    })
}

/// Maps a [`HashingReader`] limit error to [`ImageError::LayerTooLarge`].
pub(crate) fn too_large(e: ImageError) -> ImageError {
    let limit = |source: &io::Error| {
        source
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<LimitExceeded>())
            .map(|l| l.0)
    };
    match &e {
        ImageError::ReadArchive { source } | ImageError::UnpackLayer { source, .. } => {
            match limit(source) {
                Some(max) => ImageError::LayerTooLarge {
                    reason: format!("uncompressed layer is larger than {max} bytes"),
                },
                None => e,
            }
        }
        _ => e,
    }
}

pub(crate) fn write_err(path: &Path, source: io::Error) -> ImageError {
    ImageError::WriteStore {
        path: path.to_path_buf(),
        source,
    }
}

pub(crate) fn create_new(path: &Path) -> Result<File, ImageError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| write_err(path, e))
}

pub(crate) fn open_file(path: &Path) -> Result<File, ImageError> {
    File::open(path).map_err(|source| ImageError::ReadStore {
        path: path.to_path_buf(),
        source,
    })
}

pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, ImageError> {
    fs::read(path).map_err(|source| ImageError::ReadStore {
        path: path.to_path_buf(),
        source,
    })
}

pub(crate) fn to_json(value: &impl serde::Serialize, path: &Path) -> Result<Vec<u8>, ImageError> {
    serde_json::to_vec(value).map_err(|e| write_err(path, io::Error::other(e)))
}

pub(crate) fn remove_file_if_exists(path: &Path) -> Result<(), ImageError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ImageError::RemoveStore {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// UTF-8 entry names of a store directory (others are not ours; skipped).
pub(crate) fn list_dir(dir: &Path) -> Result<Vec<String>, ImageError> {
    let read_err = |source| ImageError::ReadStore {
        path: dir.to_path_buf(),
        source,
    };
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        if let Ok(name) = entry.file_name().into_string() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}
