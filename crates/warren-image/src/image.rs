//! Public image types and the on-disk records behind them.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A resolved image: everything the runtime needs to build a rootfs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Image {
    /// `"sha256:<hex>"`, the digest of the image record's canonical JSON
    /// (schema version, layer diff ids, binds, config). Names are not part
    /// of it.
    pub id: String,
    /// Every `name:tag` that currently points at this image, sorted.
    pub names: Vec<String>,
    /// Absolute paths of the unpacked layer trees, lowest first; suitable as
    /// overlayfs lower dirs (overlayfs lists them highest first).
    pub layers: Vec<PathBuf>,
    /// Host paths to bind-mount into the rootfs (only the host image has any).
    pub binds: Vec<HostBind>,
    /// Process defaults.
    pub config: ImageConfig,
}

/// A host path bind-mounted into the sandbox rootfs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HostBind {
    /// Absolute host path.
    pub source: PathBuf,
    /// Absolute path inside the sandbox; the layer contains an empty
    /// directory there to mount over.
    pub target: String,
    /// Whether the mount must be read-only (always true for the host image).
    pub readonly: bool,
}

/// Process defaults of an image (a subset of the OCI image config).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ImageConfig {
    /// `"K=V"` entries.
    pub env: Vec<String>,
    /// Working directory (`WorkingDir`).
    pub workdir: Option<String>,
    /// `Entrypoint`.
    pub entrypoint: Option<Vec<String>>,
    /// `Cmd`.
    pub cmd: Option<Vec<String>>,
    /// `User` (`name`, `uid`, `uid:gid`, ...).
    pub user: Option<String>,
}

/// Version of the image record format in `images/<hex>.json`.
pub(crate) const IMAGE_RECORD_VERSION: u32 = 1;

/// Version of the layer metadata format in `layers/<hex>/layer.json`.
pub(crate) const LAYER_RECORD_VERSION: u32 = 1;

/// OCI media type of an uncompressed layer blob.
pub const MEDIA_TYPE_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// OCI media type of a gzip layer blob.
pub const MEDIA_TYPE_LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// `images/<hex>.json`. Its exact bytes (compact serde_json of this struct,
/// fields in declaration order) hash to the image id.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct ImageRecord {
    pub schema_version: u32,
    /// Layer diff ids (`"sha256:<hex>"` of the uncompressed tar), lowest first.
    pub layers: Vec<String>,
    pub binds: Vec<HostBind>,
    pub config: ImageConfig,
    /// Where the image came from (pulls and archive imports); absent for
    /// directory and tar imports and the host image, so their ids are
    /// unchanged from record version 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceRecord>,
    /// `"sha256:<hex>"` of the cached flattened layer that replaces the
    /// stack when there are more layers than the runtime stacks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flattened: Option<String>,
}

/// Provenance of an OCI image in its record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct SourceRecord {
    /// Digest of the platform manifest (kept in `blobs/`).
    pub manifest_digest: String,
    /// Digest of the image config blob (kept in `blobs/`).
    pub config_digest: String,
    /// The config's `created` time, if any.
    pub created: Option<String>,
}

/// `layers/<hex>/layer.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct LayerRecord {
    pub schema_version: u32,
    /// `"sha256:<hex>"` of the uncompressed tar; also the directory name.
    pub diff_id: String,
    /// Size of the uncompressed tar in bytes.
    pub size: u64,
    /// The blob this layer was unpacked from (none for a flattened layer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob: Option<BlobRef>,
    /// For a flattened layer: the diff ids it merges, lowest first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flattened_from: Option<Vec<String>>,
}

/// A blob under `blobs/sha256/`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct BlobRef {
    /// `"sha256:<hex>"` of the blob as stored.
    pub digest: String,
    pub media_type: String,
    pub size: u64,
}
