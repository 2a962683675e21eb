//! Building images from OCI parts: verified blob downloads, layer unpacking
//! with diff-id verification, the image commit, and layer flattening.
//!
//! The registry client (`warren-registry`) and the archive importers use
//! these; they hold a [`StoreLease`] for the whole operation so that `gc`
//! and `remove` (which take the store lock exclusively) never run under
//! them.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::FlockArg;
use sha2::{Digest as _, Sha256};

use crate::digest::{parse_sha256_digest, sha256_hex, HashingReader, SHA256_PREFIX};
use crate::error::ImageError;
use crate::image::LAYER_RECORD_VERSION;
use crate::image::{Image, ImageRecord, LayerRecord, SourceRecord, IMAGE_RECORD_VERSION};
use crate::name::ImageName;
use crate::oci::{check_layer_count, verify_bytes, Compression, ConfigFile, Descriptor, Manifest};
use crate::store::{
    decompress, open_file, to_json, too_large, write_err, ImageStore, SpooledBlob, StoreLock,
    BLOBS_DIR, LAYER_FS_DIR, LAYER_RECORD_FILE, TMP_DIR,
};
use crate::unpack::{unpack, UnpackOptions, Whiteouts};

/// Write buffer of a blob download: network chunks are small, this makes
/// them few large writes.
const BLOB_WRITE_BUF_BYTES: usize = 256 << 10;

/// Read buffer between a blob stream and its decompressor.
pub(crate) const STREAM_READ_BUF_BYTES: usize = 256 << 10;

/// Prefix of resumable partial downloads in `tmp/`.
pub(crate) const PARTIAL_PREFIX: &str = "partial-";

/// A shared hold on the store for the duration of a pull or import:
/// `gc` and `remove` wait until it is dropped.
#[derive(Debug)]
pub struct StoreLease {
    _lock: StoreLock,
}

/// An exclusive per-blob (or per-layer) lock shared by all processes using
/// the store.
#[derive(Debug)]
pub struct BlobLock {
    _lock: StoreLock,
}

/// What [`ImageStore::unpack_layer`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerOutcome {
    /// The layer was already unpacked.
    AlreadyPresent,
    /// The layer was unpacked now.
    Unpacked,
}

/// A blob being downloaded into `tmp/partial-<hex>`, hashed as it is
/// written; [`BlobDownload::finish`] verifies size and digest and only
/// then renames it into `blobs/`. A download interrupted by a crash
/// leaves the partial file, which the next download of the same blob
/// resumes (its existing bytes are re-hashed first).
#[derive(Debug)]
pub struct BlobDownload {
    file: BufWriter<File>,
    path: PathBuf,
    media_type: String,
    target: PathBuf,
    blobs_dir: PathBuf,
    digest: String,
    hex: String,
    size: u64,
    written: u64,
    hasher: Sha256,
}

impl BlobDownload {
    /// Bytes already present (resume from here with an HTTP Range request).
    pub fn offset(&self) -> u64 {
        self.written
    }

    /// The declared size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Discards what was written (the server ignored a Range request).
    pub fn restart(&mut self) -> Result<(), ImageError> {
        self.file
            .flush()
            .and_then(|()| self.file.get_ref().set_len(0))
            .and_then(|()| self.file.get_mut().rewind())
            .map_err(|e| write_err(&self.path, e))?;
        self.written = 0;
        self.hasher = Sha256::new();
        Ok(())
    }

    /// Appends downloaded bytes. Fails as soon as the blob grows past its
    /// declared size.
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), ImageError> {
        let new_len = self.written + chunk.len() as u64;
        if new_len > self.size {
            let _ = fs::remove_file(&self.path);
            return Err(ImageError::SizeMismatch {
                digest: self.digest.clone(),
                expected: self.size,
                actual: new_len,
            });
        }
        self.file
            .write_all(chunk)
            .map_err(|e| write_err(&self.path, e))?;
        self.hasher.update(chunk);
        self.written = new_len;
        Ok(())
    }

    /// Verifies size and digest, syncs, and moves the blob into `blobs/`.
    /// On a mismatch the partial file is deleted and nothing is stored.
    pub fn finish(mut self) -> Result<(), ImageError> {
        self.verify()?;
        self.sync_and_place()
    }

    /// Writes out buffered bytes (they stay for a resume).
    pub(crate) fn flush_partial(&mut self) -> Result<(), ImageError> {
        self.file.flush().map_err(|e| write_err(&self.path, e))
    }

    pub(crate) fn media_type(&self) -> &str {
        &self.media_type
    }

    pub(crate) fn digest(&self) -> &str {
        &self.digest
    }

    /// The partial file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Syncs the verified partial file and renames it into `blobs/`.
    pub(crate) fn sync_and_place(&self) -> Result<(), ImageError> {
        self.file
            .get_ref()
            .sync_all()
            .map_err(|e| write_err(&self.path, e))?;
        self.place()
    }

    /// Checks size and digest (deleting the partial file on a mismatch)
    /// and writes out the buffered tail (not synced).
    pub(crate) fn verify(&mut self) -> Result<(), ImageError> {
        let actual = hex::encode(self.hasher.clone().finalize());
        let mismatch = if self.written != self.size {
            Some(ImageError::SizeMismatch {
                digest: self.digest.clone(),
                expected: self.size,
                actual: self.written,
            })
        } else if actual != self.hex {
            Some(ImageError::DigestMismatch {
                what: "blob".to_owned(),
                expected: self.digest.clone(),
                actual: format!("{SHA256_PREFIX}{actual}"),
            })
        } else {
            None
        };
        if let Some(e) = mismatch {
            self.discard();
            return Err(e);
        }
        self.flush_partial()
    }

    /// Deletes the partial file (it can never become this blob).
    pub(crate) fn discard(&self) {
        let _ = fs::remove_file(&self.path);
    }

    /// Renames the verified, durable partial file into `blobs/` (unless
    /// the blob is there already) and syncs that directory.
    pub(crate) fn place(&self) -> Result<(), ImageError> {
        if self.target.exists() {
            self.discard();
            return Ok(());
        }
        fs::rename(&self.path, &self.target).map_err(|e| write_err(&self.target, e))?;
        crate::fsutil::fsync_dir(&self.blobs_dir).map_err(|e| write_err(&self.blobs_dir, e))
    }
}

impl ImageStore {
    /// Takes the store lock shared for a whole pull or import.
    pub fn lease(&self) -> Result<StoreLease, ImageError> {
        Ok(StoreLease {
            _lock: self.lock(FlockArg::LockShared)?,
        })
    }

    /// Whether the blob `digest` (`sha256:<hex>`) is stored (verified).
    pub fn has_blob(&self, digest: &str) -> bool {
        parse_sha256_digest(digest).is_some_and(|hex| self.blob_path(hex).is_file())
    }

    /// Whether the layer with this diff id is unpacked.
    pub fn has_layer(&self, diff_id: &str) -> bool {
        parse_sha256_digest(diff_id).is_some_and(|hex| self.layer_is_complete(hex))
    }

    /// Takes the cross-process lock of one blob (blocking): whoever holds
    /// it downloads the blob; others wait and then find it stored.
    pub fn lock_blob(&self, digest: &str) -> Result<BlobLock, ImageError> {
        let hex = digest_hex(digest)?;
        Ok(BlobLock {
            _lock: self.named_lock(&format!("blob-{hex}"))?,
        })
    }

    /// Opens (or resumes) the download of the blob `desc`. The caller holds
    /// [`ImageStore::lock_blob`] for it.
    pub fn begin_blob(&self, desc: &Descriptor) -> Result<BlobDownload, ImageError> {
        let hex = desc.sha256_hex()?.to_owned();
        let path = self
            .root
            .join(TMP_DIR)
            .join(format!("{PARTIAL_PREFIX}{hex}"));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| write_err(&path, e))?;
        let mut hasher = Sha256::new();
        let mut written =
            io::copy(&mut file, &mut HashInto(&mut hasher)).map_err(|e| write_err(&path, e))?;
        if written > desc.size {
            file.set_len(0)
                .and_then(|()| file.rewind())
                .map_err(|e| write_err(&path, e))?;
            written = 0;
            hasher = Sha256::new();
        }
        if written > 0 {
            tracing::debug!(digest = %desc.digest, offset = written, "resuming partial download");
        }
        Ok(BlobDownload {
            file: BufWriter::with_capacity(BLOB_WRITE_BUF_BYTES, file),
            path,
            media_type: desc.media_type.clone(),
            target: self.blob_path(&hex),
            blobs_dir: self.root.join(BLOBS_DIR),
            digest: desc.digest.clone(),
            hex,
            size: desc.size,
            written,
            hasher,
        })
    }

    /// Stores a small blob (manifest, config) after checking its digest.
    pub fn put_blob_bytes(&self, digest: &str, bytes: &[u8]) -> Result<(), ImageError> {
        verify_bytes("blob", digest, bytes)?;
        let hex = digest_hex(digest)?;
        let target = self.blob_path(hex);
        if !target.is_file() {
            crate::fsutil::atomic_write(&self.root.join(TMP_DIR), &target, bytes)?;
        }
        Ok(())
    }

    /// Reads a stored blob whole (manifests and configs; bounded).
    pub fn read_blob(&self, digest: &str) -> Result<Vec<u8>, ImageError> {
        let hex = digest_hex(digest)?;
        let path = self.blob_path(hex);
        let mut bytes = Vec::new();
        open_file(&path)?
            .take(crate::oci::MAX_DOCUMENT_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| ImageError::ReadStore { path, source })?;
        Ok(bytes)
    }

    /// Unpacks the stored layer blob `desc` unless the layer `diff_id` is
    /// present, verifying that its uncompressed tar hashes to `diff_id`.
    /// `lowers` are the diff ids of the layers below it (lowest first; they
    /// must be unpacked already) for hard links into them.
    pub fn unpack_layer(
        &self,
        desc: &Descriptor,
        diff_id: &str,
        lowers: &[String],
    ) -> Result<LayerOutcome, ImageError> {
        let diff_hex = digest_hex(diff_id)?;
        if self.layer_is_complete(diff_hex) {
            return Ok(LayerOutcome::AlreadyPresent);
        }
        let hex = desc.sha256_hex()?;
        let blob = SpooledBlob {
            path: self.blob_path(hex),
            hex: hex.to_owned(),
            size: desc.size,
            compression: Compression::from_media_type(&desc.media_type)?,
            media_type: desc.media_type.clone(),
        };
        let lowers = lowers
            .iter()
            .map(|d| digest_hex(d).map(str::to_owned))
            .collect::<Result<Vec<_>, _>>()?;
        let work = self.work_dir()?;
        self.ensure_layer_verified(&work, &blob, Some(diff_hex), &lowers)?;
        Ok(LayerOutcome::Unpacked)
    }

    /// Records an image whose manifest, config and layers are stored and
    /// verified, and names it `name`. The manifest's layers must match the
    /// config's diff ids one to one.
    pub fn commit_oci(
        &self,
        manifest_digest: &str,
        manifest: &Manifest,
        config: &ConfigFile,
        name: Option<&ImageName>,
    ) -> Result<Image, ImageError> {
        check_layer_count(manifest, config)?;
        for diff_id in &config.rootfs.diff_ids {
            if !self.has_layer(diff_id) {
                return Err(ImageError::MissingLayer {
                    id: manifest_digest.to_owned(),
                    diff_id: diff_id.clone(),
                });
            }
        }
        let record = ImageRecord {
            schema_version: IMAGE_RECORD_VERSION,
            layers: config.rootfs.diff_ids.clone(),
            binds: Vec::new(),
            config: config.image_config(),
            // An image exported from a Warren store without registry
            // provenance comes back without one, under the same id.
            source: (!crate::export::is_local_source(manifest)).then(|| SourceRecord {
                manifest_digest: manifest_digest.to_owned(),
                config_digest: manifest.config.digest.clone(),
                created: config.created.clone(),
            }),
            flattened: None,
        };
        self.commit_record(record, name)
    }

    /// Merges `layers` (diff ids, lowest first) into one cached layer by
    /// unpacking their blobs in order into one tree with whiteouts applied;
    /// returns its id (`sha256:` of the layer list). Done once per layer
    /// list.
    pub(crate) fn flatten(&self, layers: &[String]) -> Result<String, ImageError> {
        let key = sha256_hex(format!("warren-flatten-v1\n{}", layers.join("\n")).as_bytes());
        let id = format!("{SHA256_PREFIX}{key}");
        if self.layer_is_complete(&key) {
            return Ok(id);
        }
        let _lock = self.named_lock(&format!("layer-{key}"))?;
        if self.layer_is_complete(&key) {
            return Ok(id);
        }
        let span = tracing::info_span!("flatten", layers = layers.len(), id = %id);
        let _enter = span.enter();
        let work = self.work_dir()?;
        let staging = work.path().join("layer");
        let fs_dir = staging.join(LAYER_FS_DIR);
        fs::create_dir(&staging).map_err(|e| write_err(&staging, e))?;
        fs::create_dir(&fs_dir).map_err(|e| write_err(&fs_dir, e))?;
        fs::set_permissions(&fs_dir, fs::Permissions::from_mode(0o755))
            .map_err(|e| write_err(&fs_dir, e))?;
        let options = UnpackOptions {
            preserve_owners: self.preserve_owners,
            whiteouts: Whiteouts::Apply,
            lowers: Vec::new(),
            max_file_bytes: self.limits.max_file_bytes,
            lowers_ready: None,
        };
        let mut total = 0u64;
        for diff_id in layers {
            let diff_hex = digest_hex(diff_id)?;
            let record = self.read_layer_record(diff_hex)?;
            let blob = record.blob.ok_or_else(|| ImageError::CorruptStore {
                path: self.layer_dir(diff_hex),
                reason: "a flattened layer cannot be flattened again",
            })?;
            let blob_hex = digest_hex(&blob.digest)?;
            let file = BufReader::with_capacity(256 << 10, open_file(&self.blob_path(blob_hex))?);
            let mut reader = HashingReader::new(
                decompress(file, Compression::from_media_type(&blob.media_type)?)?,
                self.limits.max_layer_bytes,
            );
            unpack(&mut reader, &fs_dir, &options).map_err(too_large)?;
            let (hex, size) = reader
                .finish()
                .map_err(|source| too_large(ImageError::ReadArchive { source }))?;
            if hex != diff_hex {
                return Err(ImageError::DigestMismatch {
                    what: format!("stored layer blob {}", blob.digest),
                    expected: diff_id.clone(),
                    actual: format!("{SHA256_PREFIX}{hex}"),
                });
            }
            total += size;
        }
        let record = LayerRecord {
            schema_version: LAYER_RECORD_VERSION,
            diff_id: id.clone(),
            size: total,
            blob: None,
            flattened_from: Some(layers.to_vec()),
        };
        let record_path = staging.join(LAYER_RECORD_FILE);
        let bytes = to_json(&record, &record_path)?;
        fs::write(&record_path, bytes).map_err(|e| write_err(&record_path, e))?;
        self.publish_layer(&staging, &key)?;
        tracing::info!("flattened image layers into one");
        Ok(id)
    }

    /// The path of a stored blob (for tests and tools).
    pub fn blob_file(&self, digest: &str) -> Result<PathBuf, ImageError> {
        Ok(self.blob_path(digest_hex(digest)?))
    }

    /// Imports a layer stream spooled at `path` (in a work dir of this
    /// store) with a declared diff id; used by archive imports.
    pub(crate) fn ingest_layer_file(
        &self,
        work: &tempfile::TempDir,
        path: &Path,
        expected_blob: Option<&str>,
        diff_id: &str,
        lowers: &[String],
    ) -> Result<(), ImageError> {
        let diff_hex = digest_hex(diff_id)?;
        let mut head = [0u8; 6];
        let mut file = open_file(path)?;
        let n =
            read_head(&mut file, &mut head).map_err(|source| ImageError::ReadArchive { source })?;
        let compression = Compression::detect(&head[..n])?;
        let (hex, size) = crate::digest::hash_reader(BufReader::new(open_file(path)?))
            .map_err(|source| ImageError::ReadArchive { source })?;
        if let Some(expected) = expected_blob {
            if digest_hex(expected)? != hex {
                return Err(ImageError::DigestMismatch {
                    what: "layer blob".to_owned(),
                    expected: expected.to_owned(),
                    actual: format!("{SHA256_PREFIX}{hex}"),
                });
            }
        }
        let blob = SpooledBlob {
            path: path.to_path_buf(),
            hex,
            size,
            compression,
            media_type: compression.media_type().to_owned(),
        };
        let lowers = lowers
            .iter()
            .map(|d| digest_hex(d).map(str::to_owned))
            .collect::<Result<Vec<_>, _>>()?;
        self.ensure_layer_verified(work, &blob, Some(diff_hex), &lowers)?;
        Ok(())
    }
}

fn read_head(file: &mut File, head: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < head.len() {
        match file.read(&mut head[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// The hex of a `sha256:<hex>` digest, or an invalid-manifest error.
pub(crate) fn digest_hex(digest: &str) -> Result<&str, ImageError> {
    parse_sha256_digest(digest).ok_or_else(|| ImageError::InvalidManifest {
        reason: format!("unsupported or malformed digest {digest:?}"),
    })
}

/// Feeds written bytes into a hasher.
struct HashInto<'a>(&'a mut Sha256);

impl Write for HashInto<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
