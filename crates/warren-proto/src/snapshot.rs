//! The public API's snapshot bodies (re-exported from [`crate::api`]):
//! filesystem and directory snapshots into images, image mounts, memory
//! snapshots, pause and resume, fork.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::CreateSandboxRequest;

/// Longest lifetime of a snapshot (an image or a memory snapshot) with a
/// TTL: 30 days. Without a TTL a snapshot lives until deleted.
pub const MAX_SNAPSHOT_TTL_SECS: u64 = 30 * 86_400;
/// Most copies one `fork` call makes.
pub const MAX_FORK_COUNT: u32 = 64;
/// Most image mounts of one sandbox.
pub const MAX_IMAGE_MOUNTS: usize = 16;

/// What `idle_timeout_secs` does when it passes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnIdle {
    /// End the sandbox with reason `idle_timeout`.
    #[default]
    Terminate,
    /// Pause it (a memory checkpoint); it keeps its id and tunnel URLs.
    Pause,
}

impl OnIdle {
    pub fn is_terminate(&self) -> bool {
        *self == OnIdle::Terminate
    }
}

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

/// Body of `POST /v1/sandboxes/{id}/snapshot-memory`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotMemoryRequest {
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

/// A memory snapshot: a sandbox's processes, memory, open files and
/// writable filesystem layer, restorable with `from_memory_snapshot`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MemorySnapshot {
    pub id: String,
    /// The sandbox it was taken from.
    pub sandbox_id: String,
    /// The image the sandbox ran.
    pub image: String,
    /// Bytes on disk.
    pub size_bytes: u64,
    pub created_at: String,
    pub expires_at: Option<String>,
    /// How long the checkpoint took, in milliseconds.
    #[serde(default)]
    pub took_ms: f64,
}

/// `GET /v1/memory-snapshots`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MemorySnapshotList {
    pub snapshots: Vec<MemorySnapshot>,
}

/// Body of `POST /v1/sandboxes/{id}/fork`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForkRequest {
    /// How many copies, 1 to [`MAX_FORK_COUNT`].
    #[serde(default = "one")]
    pub count: u32,
}

fn one() -> u32 {
    1
}

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
    if let Some(s) = &req.from_memory_snapshot {
        if s.is_empty() || s.len() > 64 {
            return Err("from_memory_snapshot must be a memory snapshot id".into());
        }
        let from_snapshot = [
            ("image", req.image.is_some()),
            ("command", req.command.is_some()),
            ("user", req.user.is_some()),
            ("use_image_command", req.use_image_command),
            ("mounts", !req.mounts.is_empty()),
            ("workdir", req.workdir.is_some()),
            ("env", !req.env.is_empty()),
        ];
        if let Some((field, _)) = from_snapshot.iter().find(|(_, given)| *given) {
            return Err(format!(
                "{field} comes from the memory snapshot and cannot be given with from_memory_snapshot"
            ));
        }
    }
    if req.on_idle == OnIdle::Pause && req.idle_timeout_secs.is_none() {
        return Err("on_idle: pause needs idle_timeout_secs".into());
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
    fn restore_refuses_what_the_snapshot_decides() {
        let req: CreateSandboxRequest =
            serde_json::from_str(r#"{"from_memory_snapshot": "ms-1", "command": ["sh"]}"#).unwrap();
        let err = validate_create_snapshot_fields(&req).unwrap_err();
        assert!(err.contains("command"), "{err}");
        let req: CreateSandboxRequest =
            serde_json::from_str(r#"{"from_memory_snapshot": "ms-1", "timeout_secs": 60}"#)
                .unwrap();
        assert!(validate_create_snapshot_fields(&req).is_ok());
    }

    #[test]
    fn pause_on_idle_needs_an_idle_timeout() {
        let req: CreateSandboxRequest = serde_json::from_str(r#"{"on_idle": "pause"}"#).unwrap();
        assert!(validate_create_snapshot_fields(&req).is_err());
        let req: CreateSandboxRequest =
            serde_json::from_str(r#"{"on_idle": "pause", "idle_timeout_secs": 5}"#).unwrap();
        assert!(validate_create_snapshot_fields(&req).is_ok());
    }
}
