//! The public API's snapshot bodies (re-exported from [`crate::api`]):
//! filesystem and directory snapshots into images, and image mounts.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::CreateSandboxRequest;

/// Longest lifetime of a snapshot image with a TTL: 30 days. Without a
/// TTL a snapshot image lives until removed.
pub const MAX_SNAPSHOT_TTL_SECS: u64 = 30 * 86_400;
/// Most image mounts of one sandbox.
pub const MAX_IMAGE_MOUNTS: usize = 16;

/// An image mounted read-only at an absolute path of a sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageMount {
    /// Absolute path inside the sandbox; created if missing.
    pub path: String,
    /// Image reference or id (typically a `snapshot-directory` result).
    pub image: String,
}

/// Body of `POST /v1/sandboxes/{id}/snapshot-filesystem`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotFilesystemRequest {
    /// Name (`name[:tag]`) given to the new image.
    #[serde(default)]
    pub name: Option<String>,
    /// Remove the image this long after it was taken (unless a sandbox
    /// still uses it then; it goes once none does).
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

/// Body of `POST /v1/sandboxes/{id}/snapshot-directory`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotDirectoryRequest {
    /// Absolute path of the directory inside the sandbox.
    pub path: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

/// The image a filesystem or directory snapshot made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SnapshotImage {
    /// Usable as `image` of new sandboxes and in `mounts`.
    pub image_id: String,
    pub name: Option<String>,
    pub expires_at: Option<String>,
    /// Size of the new layer (its uncompressed tar), in bytes.
    pub layer_bytes: u64,
    /// Entries in the new layer (files, directories, links, whiteouts).
    pub layer_entries: u64,
    /// How long the sandbox was frozen, in milliseconds.
    pub frozen_ms: f64,
    /// The whole call, in milliseconds.
    pub took_ms: f64,
}

/// Body of `POST /v1/sandboxes/{id}/mounts`: mounts an image read-only
/// into a running sandbox.
pub type MountImageRequest = ImageMount;

/// Validates a TTL.
pub fn validate_ttl(ttl: Option<u64>) -> Result<(), String> {
    match ttl {
        Some(t) if t == 0 || t > MAX_SNAPSHOT_TTL_SECS => Err(format!(
            "ttl_secs must be between 1 and {MAX_SNAPSHOT_TTL_SECS}"
        )),
        _ => Ok(()),
    }
}

/// Validates an absolute in-sandbox path given to a snapshot or mount.
pub fn validate_sandbox_path(field: &str, path: &str) -> Result<(), String> {
    if !path.starts_with('/') || path.contains('\0') || path.len() > 4096 {
        return Err(format!("{field} must be an absolute path"));
    }
    if path.split('/').any(|c| c == "..") {
        return Err(format!("{field} must not contain '..'"));
    }
    Ok(())
}

/// Validates an image mount.
pub fn validate_mount(m: &ImageMount) -> Result<(), String> {
    validate_sandbox_path("mount path", &m.path)?;
    if m.path.trim_end_matches('/').is_empty() {
        return Err("an image cannot be mounted at /".into());
    }
    if m.image.is_empty() || m.image.len() > 512 {
        return Err("mount image must be an image reference".into());
    }
    Ok(())
}

/// The snapshot-related checks of [`crate::api::validate_create`].
pub(crate) fn validate_create_snapshot_fields(req: &CreateSandboxRequest) -> Result<(), String> {
    if req.mounts.len() > MAX_IMAGE_MOUNTS {
        return Err(format!("at most {MAX_IMAGE_MOUNTS} mounts"));
    }
    let mut paths = std::collections::BTreeSet::new();
    for m in &req.mounts {
        validate_mount(m)?;
        if !paths.insert(m.path.trim_end_matches('/')) {
            return Err(format!("mount path {} is given twice", m.path));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_bounds() {
        assert!(validate_ttl(None).is_ok());
        assert!(validate_ttl(Some(1)).is_ok());
        assert!(validate_ttl(Some(0)).is_err());
        assert!(validate_ttl(Some(MAX_SNAPSHOT_TTL_SECS + 1)).is_err());
    }

    #[test]
    fn mounts_are_checked() {
        let ok = ImageMount {
            path: "/data".into(),
            image: "snap".into(),
        };
        assert!(validate_mount(&ok).is_ok());
        for bad in ["data", "/", "/a/../b", "/a\0"] {
            let m = ImageMount {
                path: bad.into(),
                image: "snap".into(),
            };
            assert!(validate_mount(&m).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn duplicate_mount_paths_are_refused() {
        let req: CreateSandboxRequest = serde_json::from_str(
            r#"{"mounts": [{"path": "/a", "image": "x"}, {"path": "/a/", "image": "y"}]}"#,
        )
        .unwrap();
        assert!(validate_create_snapshot_fields(&req).is_err());
    }
}
