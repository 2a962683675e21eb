//! Snapshots into images: `snapshot-filesystem`, `snapshot-directory`,
//! image mounts into running sandboxes, and the expiry of snapshot images
//! with a TTL. (Memory snapshots, pause, resume and fork are in
//! [`crate::memory`].)

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::de::DeserializeOwned;
use tracing::{info, warn};
use warren_node::SnapshotOutcome;
use warren_proto::api::{self, ErrorCode};
use warren_runtime::SandboxId;

use crate::auth::Auth;
use crate::sandboxes::{running, to_iso};
use crate::supervisor::now_ms;
use crate::{ApiError, AppState};

/// Parses an optional JSON body: empty means the type's default.
pub(crate) fn optional_body<T: DeserializeOwned + Default>(bytes: &Bytes) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes).map_err(|e| ApiError::new(ErrorCode::InvalidJson, e.to_string()))
}

pub(crate) fn sandbox_id(id: &str) -> Result<SandboxId, ApiError> {
    SandboxId::new(id.to_string()).map_err(|e| ApiError::internal("sandbox id", &e))
}

/// Records the TTL of a new snapshot image; returns its expiry.
async fn expire_after(
    state: &AppState,
    image_id: &str,
    ttl_secs: Option<u64>,
) -> Result<Option<i64>, ApiError> {
    let Some(ttl) = ttl_secs else {
        return Ok(None);
    };
    let at = now_ms().saturating_add((ttl as i64).saturating_mul(1000));
    state.store.set_image_expiry(image_id, at).await?;
    Ok(Some(at))
}

fn snapshot_image(
    out: &SnapshotOutcome,
    name: Option<String>,
    expires_at: Option<i64>,
) -> api::SnapshotImage {
    let s = &out.stats;
    api::SnapshotImage {
        image_id: out.image.id.clone(),
        name,
        expires_at: expires_at.map(to_iso),
        layer_bytes: s.tar_bytes,
        layer_entries: s.files
            + s.dirs
            + s.symlinks
            + s.hard_links
            + s.fifos
            + s.whiteouts
            + s.opaque_dirs,
        frozen_ms: out.frozen_micros as f64 / 1000.0,
        took_ms: out.total_micros as f64 / 1000.0,
    }
}

/// `POST /v1/sandboxes/{id}/snapshot-filesystem`
#[utoipa::path(post, path = "/v1/sandboxes/{id}/snapshot-filesystem", tag = "snapshots",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body(content = Option<api::SnapshotFilesystemRequest>, description = "Optional"),
    responses((status = 201, description = "The new image", body = api::SnapshotImage),
        (status = 400, description = "invalid_argument / invalid_json / invalid_image_reference", body = api::ErrorBody),
        (status = 404, description = "sandbox_not_found", body = api::ErrorBody),
        (status = 409, description = "sandbox_terminated / sandbox_not_running", body = api::ErrorBody),
        (status = 500, description = "snapshot_failed", body = api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn snapshot_filesystem(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<(StatusCode, Json<api::SnapshotImage>), ApiError> {
    let req: api::SnapshotFilesystemRequest = optional_body(&bytes)?;
    api::validate_ttl(req.ttl_secs).map_err(ApiError::invalid)?;
    take(&state, &auth, &id, None, req.name, req.ttl_secs).await
}

/// Takes a filesystem snapshot (`path: None`) or a directory snapshot of
/// a running sandbox, and records its TTL.
async fn take(
    state: &AppState,
    auth: &Auth,
    id: &str,
    path: Option<String>,
    name: Option<String>,
    ttl_secs: Option<u64>,
) -> Result<(StatusCode, Json<api::SnapshotImage>), ApiError> {
    let rec = running(state, auth, id).await?;
    let _busy = state.supervisor.busy(&rec.id);
    let sid = sandbox_id(&rec.id)?;
    let out = match &path {
        None => {
            state
                .node
                .snapshot_filesystem(&sid, name.as_deref())
                .await?
        }
        Some(p) => {
            state
                .node
                .snapshot_directory(&sid, p, name.as_deref())
                .await?
        }
    };
    // Image GC removes unnamed images nobody uses: a snapshot gets a name
    // of its own, so it stays until it is removed or its TTL passes.
    let name = match name {
        Some(n) => Some(n),
        None => {
            let auto = format!(
                "snapshot-{}",
                out.image
                    .id
                    .trim_start_matches("sha256:")
                    .get(..12)
                    .unwrap_or_default()
            );
            let (images, image_id, tag) = (
                state.node.images().clone(),
                out.image.id.clone(),
                auto.clone(),
            );
            tokio::task::spawn_blocking(move || images.tag(&image_id, &tag))
                .await
                .map_err(|e| ApiError::internal("naming a snapshot", &e))?
                .map_err(|e| ApiError::internal("naming a snapshot", &e))?;
            Some(auto)
        }
    };
    let expires = expire_after(state, &out.image.id, ttl_secs).await?;
    info!(sandbox_id = %rec.id, image = %out.image.id, path = ?path, micros = out.total_micros, "snapshot");
    Ok((
        StatusCode::CREATED,
        Json(snapshot_image(&out, name, expires)),
    ))
}

/// `POST /v1/sandboxes/{id}/snapshot-directory`
#[utoipa::path(post, path = "/v1/sandboxes/{id}/snapshot-directory", tag = "snapshots",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = api::SnapshotDirectoryRequest,
    responses((status = 201, description = "The new single-layer image", body = api::SnapshotImage),
        (status = 400, description = "invalid_argument / invalid_json / invalid_path", body = api::ErrorBody),
        (status = 404, description = "sandbox_not_found / file_not_found", body = api::ErrorBody),
        (status = 409, description = "sandbox_terminated / sandbox_not_running", body = api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn snapshot_directory(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<(StatusCode, Json<api::SnapshotImage>), ApiError> {
    let req: api::SnapshotDirectoryRequest = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::new(ErrorCode::InvalidJson, e.to_string()))?;
    api::validate_sandbox_path("path", &req.path).map_err(ApiError::invalid)?;
    api::validate_ttl(req.ttl_secs).map_err(ApiError::invalid)?;
    take(&state, &auth, &id, Some(req.path), req.name, req.ttl_secs).await
}

/// `POST /v1/sandboxes/{id}/mounts`
#[utoipa::path(post, path = "/v1/sandboxes/{id}/mounts", tag = "snapshots",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = api::ImageMount,
    responses((status = 200, description = "The sandbox, with the mount", body = api::Sandbox),
        (status = 400, description = "invalid_argument / invalid_json / invalid_path", body = api::ErrorBody),
        (status = 404, description = "sandbox_not_found / image_not_found", body = api::ErrorBody),
        (status = 409, description = "sandbox_terminated / sandbox_not_running", body = api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn mount_image(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<Json<api::Sandbox>, ApiError> {
    let req: api::ImageMount = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::new(ErrorCode::InvalidJson, e.to_string()))?;
    api::validate_mount(&req).map_err(ApiError::invalid)?;
    let rec = running(&state, &auth, &id).await?;
    if rec.spec.mounts.len() >= api::MAX_IMAGE_MOUNTS {
        return Err(ApiError::invalid(format!(
            "at most {} mounts per sandbox",
            api::MAX_IMAGE_MOUNTS
        )));
    }
    let _busy = state.supervisor.busy(&rec.id);
    state
        .node
        .mount_image(&sandbox_id(&rec.id)?, &req.path, &req.image)
        .await?;
    // Recorded so that a restarted server keeps the image from GC.
    state
        .store
        .add_mount(
            &rec.id,
            &warren_store::ImageMountSpec {
                path: req.path,
                image: req.image,
            },
        )
        .await?;
    let rec = crate::sandboxes::load(&state, &auth, &id).await?;
    Ok(Json(crate::sandboxes::to_api(&state, &rec)))
}

/// Removes snapshot images whose TTL passed and that no sandbox or memory
/// snapshot uses (those are retried on a later sweep).
pub(crate) async fn expire_images(store: &warren_store::Store, node: &warren_node::Node) {
    let now = now_ms();
    let expired = match store.expired_images(now).await {
        Ok(v) => v,
        Err(e) => {
            warn!(error = %e, "listing expired images failed");
            return;
        }
    };
    for image_id in expired {
        let live = match store.live_image_ids().await {
            Ok(l) => l,
            Err(e) => {
                warn!(error = ?e, "listing live images failed");
                return;
            }
        };
        match node.remove_image(&image_id, live).await {
            Ok(()) => {
                info!(image = %image_id, "removed an expired snapshot image");
                let _ = store.clear_image_expiry(&image_id).await;
            }
            Err(e) if e.code() == "image_not_found" => {
                let _ = store.clear_image_expiry(&image_id).await;
            }
            Err(e) if e.code() == "image_in_use" => {}
            Err(e) => warn!(image = %image_id, error = %e, "removing an expired image failed"),
        }
    }
}
