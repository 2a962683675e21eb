//! The public API's snapshot bodies (re-exported from [`crate::api`]):
//! filesystem and directory snapshots into images, image mounts, and
//! memory snapshots (checkpoints), fork, pause and resume.

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

// ------------------------------------------------------- memory snapshots ---

/// Most copies one `fork` call makes.
pub const MAX_FORK_COUNT: u32 = 32;
/// Prefix of memory snapshot ids.
pub const MEMORY_SNAPSHOT_PREFIX: &str = "msnap-";

/// What a sandbox's idle timeout does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnIdle {
    /// End it with reason `idle_timeout`.
    #[default]
    Terminate,
    /// Pause it (checkpoint, release memory and CPU); it needs
    /// `memory_snapshots` (implied).
    Pause,
}

/// Body of `POST /v1/sandboxes/{id}/snapshot-memory` (optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotMemoryRequest {
    /// Remove the snapshot this long after it was taken.
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

/// A memory snapshot: a checkpoint of a whole running sandbox (processes,
/// memory, open files, its writable layer), restorable as new sandboxes
/// (`POST /v1/sandboxes {"from_memory_snapshot": id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MemorySnapshot {
    /// `msnap-...`.
    pub id: String,
    /// The sandbox it was taken from.
    pub sandbox_id: String,
    /// Id of the image the sandbox runs (kept while the snapshot exists).
    pub image: String,
    /// RFC 3339.
    pub created_at: String,
    /// Size of the checkpoint on the node's disk.
    pub bytes: u64,
    pub expires_at: Option<String>,
}

/// `GET /v1/memory-snapshots`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MemorySnapshotList {
    /// Newest first.
    pub memory_snapshots: Vec<MemorySnapshot>,
}

/// Body of `POST /v1/sandboxes/{id}/fork`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForkRequest {
    /// How many copies, 1 to 32 (default 1).
    #[serde(default = "one")]
    pub count: u32,
}

impl Default for ForkRequest {
    fn default() -> Self {
        ForkRequest { count: 1 }
    }
}

fn one() -> u32 {
    1
}

/// The answer of `fork`: the running copies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ForkResult {
    pub sandboxes: Vec<crate::api::Sandbox>,
}

/// Validates a fork request.
pub fn validate_fork(req: &ForkRequest) -> Result<(), String> {
    if req.count == 0 || req.count > MAX_FORK_COUNT {
        return Err(format!("count must be between 1 and {MAX_FORK_COUNT}"));
    }
    Ok(())
}

/// Whether `id` looks like a memory snapshot id (`msnap-` and then
/// `[a-z0-9]`, at most 64 characters in all).
pub fn is_memory_snapshot_id(id: &str) -> bool {
    id.len() <= 64
        && id.strip_prefix(MEMORY_SNAPSHOT_PREFIX).is_some_and(|rest| {
            !rest.is_empty()
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

impl CreateSandboxRequest {
    /// Whether the sandbox is created checkpointable: `memory_snapshots`,
    /// or implied by `auto_resume` or `on_idle: pause`, or restored from a
    /// memory snapshot (a restored sandbox can be checkpointed again).
    pub fn wants_memory_snapshots(&self) -> bool {
        self.memory_snapshots
            || self.auto_resume
            || self.on_idle == Some(OnIdle::Pause)
            || self.from_memory_snapshot.is_some()
    }
}

/// The memory-snapshot checks of [`crate::api::validate_create`].
fn validate_create_memory_fields(req: &CreateSandboxRequest) -> Result<(), String> {
    if req.on_idle == Some(OnIdle::Pause) && req.idle_timeout_secs.is_none() {
        return Err("on_idle: pause needs idle_timeout_secs".into());
    }
    if let Some(from) = &req.from_memory_snapshot {
        if !is_memory_snapshot_id(from) {
            return Err("from_memory_snapshot must be a memory snapshot id (msnap-...)".into());
        }
        let fixed = [
            ("image", req.image.is_some()),
            ("command", req.command.is_some()),
            ("env", !req.env.is_empty()),
            ("workdir", req.workdir.is_some()),
            ("user", req.user.is_some()),
            ("use_image_command", req.use_image_command),
            ("mounts", !req.mounts.is_empty()),
            ("disk_mib", req.disk_mib.is_some()),
        ];
        if let Some((field, _)) = fixed.iter().find(|(_, set)| *set) {
            return Err(format!(
                "{field} cannot be given with from_memory_snapshot (the snapshot fixes it)"
            ));
        }
    }
    if req.wants_memory_snapshots() {
        if req.disk_mib.is_some() {
            return Err(
                "disk_mib cannot be combined with memory_snapshots (a disk-limited sandbox cannot be checkpointed yet)"
                    .into(),
            );
        }
        if !req.mounts.is_empty() {
            return Err(
                "mounts cannot be combined with memory_snapshots (a sandbox with image mounts cannot be checkpointed yet)"
                    .into(),
            );
        }
    }
    Ok(())
}

/// The snapshot-related checks of [`crate::api::validate_create`].
pub(crate) fn validate_create_snapshot_fields(req: &CreateSandboxRequest) -> Result<(), String> {
    validate_create_memory_fields(req)?;
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
    fn memory_fields_are_checked() {
        let parse = |j: &str| serde_json::from_str::<CreateSandboxRequest>(j).unwrap();
        let check = |j: &str| validate_create_snapshot_fields(&parse(j));
        assert!(check(r#"{"memory_snapshots": true}"#).is_ok());
        assert!(check(r#"{"auto_resume": true}"#).is_ok());
        assert!(check(r#"{"on_idle": "pause", "idle_timeout_secs": 5}"#).is_ok());
        assert!(check(r#"{"on_idle": "terminate"}"#).is_ok());
        assert!(check(r#"{"on_idle": "pause"}"#)
            .unwrap_err()
            .contains("idle_timeout_secs"));
        assert!(check(r#"{"memory_snapshots": true, "disk_mib": 10}"#)
            .unwrap_err()
            .contains("disk_mib"));
        assert!(
            check(r#"{"auto_resume": true, "mounts": [{"path": "/a", "image": "x"}]}"#)
                .unwrap_err()
                .contains("mounts")
        );
        assert!(
            check(r#"{"from_memory_snapshot": "msnap-abc123", "name": "x", "cpu": 1}"#).is_ok()
        );
        assert!(check(r#"{"from_memory_snapshot": "nope"}"#).is_err());
        for (field, j) in [
            (
                "image",
                r#"{"from_memory_snapshot": "msnap-a", "image": "host"}"#,
            ),
            (
                "command",
                r#"{"from_memory_snapshot": "msnap-a", "command": ["x"]}"#,
            ),
            (
                "env",
                r#"{"from_memory_snapshot": "msnap-a", "env": {"A": "b"}}"#,
            ),
            (
                "workdir",
                r#"{"from_memory_snapshot": "msnap-a", "workdir": "/"}"#,
            ),
            (
                "user",
                r#"{"from_memory_snapshot": "msnap-a", "user": "root"}"#,
            ),
        ] {
            assert!(check(j).unwrap_err().contains(field), "{field}");
        }
        assert!(serde_json::from_str::<CreateSandboxRequest>(r#"{"on_idle": "sleep"}"#).is_err());
        assert!(parse(r#"{"from_memory_snapshot": "msnap-a"}"#).wants_memory_snapshots());
        assert!(!parse("{}").wants_memory_snapshots());
    }

    #[test]
    fn fork_and_ids() {
        assert!(validate_fork(&ForkRequest { count: 1 }).is_ok());
        assert!(validate_fork(&ForkRequest {
            count: MAX_FORK_COUNT
        })
        .is_ok());
        assert!(validate_fork(&ForkRequest { count: 0 }).is_err());
        assert!(validate_fork(&ForkRequest {
            count: MAX_FORK_COUNT + 1
        })
        .is_err());
        let f: ForkRequest = serde_json::from_str("{}").unwrap();
        assert_eq!(f.count, 1);
        assert!(serde_json::from_str::<ForkRequest>(r#"{"n": 2}"#).is_err());
        assert!(is_memory_snapshot_id("msnap-0a1b"));
        for bad in [
            "msnap-",
            "snap-1",
            "msnap-A",
            "msnap-../x",
            &format!("msnap-{}", "a".repeat(64)),
        ] {
            assert!(!is_memory_snapshot_id(bad), "{bad}");
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
