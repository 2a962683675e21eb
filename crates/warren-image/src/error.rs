//! The error type of the image store.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in the image store.
///
/// Variants are named for the operation that failed. [`ImageError::code`]
/// maps each one to a stable snake_case code suitable for API responses; the
/// `Display` text and the sources are internal detail (they may contain host
/// paths) and should be logged rather than returned to tenants.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// No image matches the reference.
    #[error("image {reference:?} not found")]
    NotFound { reference: String },

    /// An image id prefix matches more than one image.
    #[error("image reference {reference:?} matches more than one image")]
    AmbiguousReference { reference: String },

    /// The reference is neither a valid name nor a valid image id.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        reference: String,
        reason: &'static str,
    },

    /// The image name is malformed or reserved.
    #[error("invalid image name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },

    /// A layer entry would escape the layer or is otherwise dangerous to
    /// create as host root (absolute path, `..`, write through a symlink,
    /// hard link outside the layer, device node).
    #[error("refused layer entry {path:?}: {reason}")]
    UnsafeEntry { path: String, reason: &'static str },

    /// A layer entry uses a tar feature the store does not support yet.
    #[error("unsupported layer entry {path:?}: {reason}")]
    UnsupportedEntry { path: String, reason: &'static str },

    /// The layer stream uses a compression the store cannot read.
    #[error("unsupported layer compression {format}")]
    UnsupportedCompression { format: &'static str },

    /// The layer stream could not be read or is not a valid tar archive.
    #[error("failed to read layer archive")]
    ReadArchive {
        #[source]
        source: io::Error,
    },

    /// Creating an entry of a layer on disk failed.
    #[error("failed to unpack layer entry {path:?}")]
    UnpackLayer {
        path: String,
        #[source]
        source: io::Error,
    },

    /// Archiving a source directory (for `import_dir`) failed.
    #[error("failed to archive {path}")]
    ArchiveDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// Creating or opening the store directories failed.
    #[error("failed to open image store at {path}")]
    OpenStore {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// Taking the store lock failed.
    #[error("failed to lock image store {path}")]
    LockStore {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// Writing a file of the store (record, ref, blob, layer) failed.
    #[error("failed to write {path}")]
    WriteStore {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// Reading a file of the store failed.
    #[error("failed to read {path}")]
    ReadStore {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A store record does not parse.
    #[error("store record {path} is corrupt")]
    CorruptRecord {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// A store file is inconsistent (bad digest, bad content).
    #[error("store file {path} is corrupt: {reason}")]
    CorruptStore { path: PathBuf, reason: &'static str },

    /// An image record names a layer that is not on disk.
    #[error("image {id} refers to missing layer {diff_id}")]
    MissingLayer { id: String, diff_id: String },

    /// Removing a file or directory of the store failed.
    #[error("failed to remove {path}")]
    RemoveStore {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// Reading the host to generate the built-in `host` image failed.
    #[error("failed to read host path {path} for the host image")]
    ReadHost {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// Content does not hash to the digest that names it (manifest,
    /// config, blob or a layer's uncompressed diff id). Nothing was stored.
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },

    /// A blob's size differs from the size its descriptor declares.
    #[error("size mismatch for {digest}: expected {expected} bytes, got at least {actual}")]
    SizeMismatch {
        digest: String,
        expected: u64,
        actual: u64,
    },

    /// A multi-platform index has no manifest for the host platform.
    #[error("no manifest for platform {platform} (available: {available})")]
    NoMatchingPlatform { platform: String, available: String },

    /// A manifest, index, config or archive index is malformed or uses a
    /// media type the store does not handle.
    #[error("invalid image manifest: {reason}")]
    InvalidManifest { reason: String },

    /// An image archive (docker save, OCI layout) is malformed.
    #[error("invalid image archive: {reason}")]
    InvalidArchive { reason: String },

    /// A layer (or a file in it) exceeds the configured size limits.
    #[error("layer exceeds the size limit: {reason}")]
    LayerTooLarge { reason: String },

    /// The image is used by a live sandbox and cannot be removed.
    #[error("image {id} is in use")]
    ImageInUse { id: String },

    /// The image cannot be exported or pushed (the built-in `host` image
    /// is a view of the host's `/usr`, not content of the store).
    #[error("image {reference:?} cannot be exported: {reason}")]
    NotExportable {
        reference: String,
        reason: &'static str,
    },

    /// Writing an export stream failed (the reader went away).
    #[error("failed to write the export stream")]
    ExportWrite {
        #[source]
        source: io::Error,
    },
}

impl ImageError {
    /// A stable, documented, snake_case code for this error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound { .. } => "image_not_found",
            Self::AmbiguousReference { .. } => "ambiguous_image_reference",
            Self::InvalidReference { .. } => "invalid_image_reference",
            Self::InvalidName { .. } => "invalid_image_name",
            Self::UnsafeEntry { .. } => "unsafe_layer_entry",
            Self::UnsupportedEntry { .. } => "unsupported_layer_entry",
            Self::UnsupportedCompression { .. } => "unsupported_layer_compression",
            Self::ReadArchive { .. } => "invalid_layer_archive",
            Self::UnpackLayer { .. } => "layer_unpack_failed",
            Self::ArchiveDir { .. } => "layer_build_failed",
            Self::OpenStore { .. } => "store_open_failed",
            Self::LockStore { .. } => "store_lock_failed",
            Self::WriteStore { .. } => "store_write_failed",
            Self::ReadStore { .. } => "store_read_failed",
            Self::CorruptRecord { .. } | Self::CorruptStore { .. } => "store_corrupt",
            Self::MissingLayer { .. } => "layer_missing",
            Self::RemoveStore { .. } => "store_remove_failed",
            Self::ReadHost { .. } => "host_image_failed",
            Self::DigestMismatch { .. } | Self::SizeMismatch { .. } => "digest_mismatch",
            Self::NoMatchingPlatform { .. } => "no_matching_platform",
            Self::InvalidManifest { .. } => "invalid_manifest",
            Self::InvalidArchive { .. } => "invalid_image_archive",
            Self::LayerTooLarge { .. } => "layer_too_large",
            Self::ImageInUse { .. } => "image_in_use",
            Self::NotExportable { .. } => "image_not_exportable",
            Self::ExportWrite { .. } => "export_write_failed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_snake_case() {
        let errors = [
            ImageError::NotFound {
                reference: "x".into(),
            },
            ImageError::InvalidName {
                name: "X".into(),
                reason: "r",
            },
            ImageError::UnsafeEntry {
                path: "../x".into(),
                reason: "r",
            },
            ImageError::ReadArchive {
                source: io::Error::other("x"),
            },
        ];
        for e in &errors {
            let code = e.code();
            assert!(
                code.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{code}"
            );
        }
        assert_eq!(errors[0].code(), "image_not_found");
        assert_eq!(errors[1].code(), "invalid_image_name");
        assert_eq!(errors[2].code(), "unsafe_layer_entry");
    }
}
