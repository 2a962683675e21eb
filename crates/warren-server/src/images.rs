//! `/v1/images`: the node's image store over HTTP. Pulls and pushes (with
//! progress as server-sent events when asked for), list, inspect, remove,
//! GC, archive import and OCI archive export.
//!
//! The store is per node and shared by every workspace: listing,
//! inspecting and pulling with the node's own registry settings are open to
//! any token; pulls with request credentials, imports, removal and GC are
//! for admin tokens (they affect, or expose private content to, everyone).
//! Exports are open to any token (an image's content is already readable
//! from any sandbox created from it); pushes are for admin tokens (they
//! write to registries with the node's credentials).

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use warren_proto::api::{
    self, ErrorCode, ImageConfigInfo, ImageGcReport, ImageInfo, ImageLayerInfo, ImageList,
    PullImageRequest, PushImageRequest, PushImageResult, RegistryAuth,
};

use crate::auth::Auth;
use crate::{ApiError, AppState};

/// Largest archive `POST /v1/images/import` accepts.
pub const MAX_IMPORT_BYTES: u64 = 32 << 30;

/// Progress events buffered per pull stream; a slow client misses
/// intermediate progress (the final event is always delivered).
const EVENT_QUEUE: usize = 64;

fn admin_only(auth: &Auth, what: &str) -> Result<(), ApiError> {
    if auth.0.is_admin {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("{what} needs an admin token"),
        ))
    }
}

fn image_err(reference: &str, source: warren_image::ImageError) -> ApiError {
    warren_node::NodeError::Image {
        reference: reference.to_string(),
        source,
    }
    .into()
}

fn info_of(i: warren_image::ImageInspect) -> ImageInfo {
    let size = i.layers.iter().map(|l| l.unpacked_size).sum();
    ImageInfo {
        id: i.id,
        names: i.names,
        manifest_digest: i.manifest_digest,
        created: i.created,
        size,
        layers: i
            .layers
            .into_iter()
            .map(|l| ImageLayerInfo {
                diff_id: l.diff_id,
                digest: l.digest,
                media_type: l.media_type,
                size: l.size,
                unpacked_size: l.unpacked_size,
            })
            .collect(),
        config: ImageConfigInfo {
            env: i.config.env,
            workdir: i.config.workdir,
            entrypoint: i.config.entrypoint,
            cmd: i.config.cmd,
            user: i.config.user,
        },
    }
}

async fn inspect_ref(state: &AppState, reference: &str) -> Result<ImageInfo, ApiError> {
    let images = state.node.images().clone();
    let r = reference.to_string();
    let i = tokio::task::spawn_blocking(move || images.inspect(&r))
        .await
        .map_err(|e| ApiError::internal("inspect image", &e))?
        .map_err(|e| image_err(reference, e))?;
    Ok(info_of(i))
}

/// `GET /v1/images`
#[utoipa::path(get, path = "/v1/images", tag = "images",
    responses((status = 200, description = "Every image in the node's store", body = ImageList),
        (status = 401, description = "unauthenticated", body = api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(State(state): State<AppState>, _auth: Auth) -> Result<Json<ImageList>, ApiError> {
    let images = state.node.images().clone();
    let infos = tokio::task::spawn_blocking(move || {
        let all = images.list()?;
        Ok::<_, warren_image::ImageError>(
            all.iter()
                .filter_map(|img| images.inspect(&img.id).ok())
                .map(info_of)
                .collect::<Vec<_>>(),
        )
    })
    .await
    .map_err(|e| ApiError::internal("list images", &e))?
    .map_err(|e| image_err("(list)", e))?;
    Ok(Json(ImageList { images: infos }))
}

/// `GET /v1/images/{reference}` (the reference percent-encoded)
#[utoipa::path(get, path = "/v1/images/{reference}", tag = "images",
    params(("reference" = String, Path, description = "Name, name:tag or image id, percent-encoded")),
    responses((status = 200, description = "The image", body = ImageInfo),
        (status = 404, description = "image_not_found", body = api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn inspect(
    State(state): State<AppState>,
    _auth: Auth,
    Path(reference): Path<String>,
) -> Result<Json<ImageInfo>, ApiError> {
    api::validate_image_reference(&reference).map_err(ApiError::invalid)?;
    Ok(Json(inspect_ref(&state, &reference).await?))
}

/// `DELETE /v1/images/{reference}`: removes the name (and the image when
/// no other name points at it); refuses an image a live sandbox uses.
#[utoipa::path(delete, path = "/v1/images/{reference}", tag = "images",
    params(("reference" = String, Path, description = "Name, name:tag or image id, percent-encoded")),
    responses((status = 204, description = "Removed"),
        (status = 403, description = "forbidden (admin only)", body = api::ErrorBody),
        (status = 404, description = "image_not_found", body = api::ErrorBody),
        (status = 409, description = "image_in_use", body = api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn remove(
    State(state): State<AppState>,
    auth: Auth,
    Path(reference): Path<String>,
) -> Result<StatusCode, ApiError> {
    admin_only(&auth, "removing images")?;
    api::validate_image_reference(&reference).map_err(ApiError::invalid)?;
    let live = state.store.live_image_ids().await?;
    state.node.remove_image(&reference, live).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/images/gc`: removes images without names and layers, blobs and
/// leftovers nothing references; keeps everything a live sandbox uses.
#[utoipa::path(post, path = "/v1/images/gc", tag = "images",
    responses((status = 200, description = "What was removed", body = ImageGcReport),
        (status = 403, description = "forbidden (admin only)", body = api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn gc(
    State(state): State<AppState>,
    auth: Auth,
) -> Result<Json<ImageGcReport>, ApiError> {
    admin_only(&auth, "image garbage collection")?;
    let live = state.store.live_image_ids().await?;
    let r = state.node.gc_images(live).await?;
    Ok(Json(ImageGcReport {
        images_removed: r.images_removed,
        layers_removed: r.layers_removed,
        blobs_removed: r.blobs_removed,
        tmp_removed: r.tmp_removed,
        bytes_freed: r.bytes_freed,
    }))
}

fn wants_events(headers: &HeaderMap) -> bool {
    headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"))
}

fn credentials(auth: Option<RegistryAuth>) -> Option<warren_registry::Credentials> {
    auth.map(|a| match a {
        RegistryAuth::Basic { username, password } => {
            warren_registry::Credentials::Basic { username, password }
        }
        RegistryAuth::Token { token } => warren_registry::Credentials::Bearer { token },
    })
}

/// `POST /v1/images/pull`: pulls an image into the node's store. With
/// `Accept: text/event-stream` the answer is a stream of server-sent
/// events: `progress` (a pull event, see docs/images.md), then `done` (the
/// image) or `error` (an error body). Otherwise it answers when the pull
/// is done. A pull goes on if the client disconnects (others may wait on
/// the same blobs).
#[utoipa::path(post, path = "/v1/images/pull", tag = "images", request_body = PullImageRequest,
    responses((status = 200, description = "The pulled image (or an event stream)", body = ImageInfo),
        (status = 400, description = "invalid_image_reference / registry_insecure_not_allowed", body = api::ErrorBody),
        (status = 403, description = "registry_auth / forbidden", body = api::ErrorBody),
        (status = 404, description = "image_not_found", body = api::ErrorBody),
        (status = 422, description = "digest_mismatch / no_matching_platform / invalid_image", body = api::ErrorBody),
        (status = 502, description = "registry_unavailable", body = api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn pull(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    req: Result<Json<PullImageRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = req.map_err(|e| ApiError::new(ErrorCode::InvalidJson, e.body_text()))?;
    api::validate_image_reference(&req.reference).map_err(ApiError::invalid)?;
    if req.auth.is_some() {
        admin_only(&auth, "pulling with request credentials")?;
    }
    let creds = credentials(req.auth);
    if !wants_events(&headers) {
        let img = state.node.pull(&req.reference, creds, |_| {}).await?;
        return Ok(Json(inspect_ref(&state, &img.id).await?).into_response());
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(EVENT_QUEUE);
    tokio::spawn(async move {
        let progress_tx = tx.clone();
        let result = state
            .node
            .pull(&req.reference, creds, move |ev| {
                if let Ok(data) = serde_json::to_string(&ev) {
                    // Drop intermediate progress for a slow client.
                    let _ = progress_tx.try_send(Event::default().event("progress").data(data));
                }
            })
            .await;
        let last = match result {
            Ok(img) => match inspect_ref(&state, &img.id).await {
                Ok(info) => Event::default()
                    .event("done")
                    .json_data(&info)
                    .unwrap_or_default(),
                Err(e) => error_event(e),
            },
            Err(e) => error_event(e.into()),
        };
        let _ = tx.send(last).await;
    });
    let stream = tokio_stream_of(rx).map(Ok::<_, Infallible>);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

fn error_event(e: ApiError) -> Event {
    let body = api::ErrorBody {
        error: api::ErrorDetail {
            code: e.code.as_str().to_string(),
            message: e.message,
        },
    };
    Event::default()
        .event("error")
        .json_data(&body)
        .unwrap_or_default()
}

fn tokio_stream_of<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Query of `POST /v1/images/import`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ImportQuery {
    /// `name[:tag]` for the image; the archive's own name when absent.
    pub name: Option<String>,
}

/// `POST /v1/images/import?name=NAME:TAG`: the body is a `docker save`
/// archive or an OCI image layout as a tar.
#[utoipa::path(post, path = "/v1/images/import", tag = "images",
    params(ImportQuery),
    request_body(content = Vec<u8>, content_type = "application/x-tar", description = "docker-save tar or OCI layout tar"),
    responses((status = 200, description = "The imported image", body = ImageInfo),
        (status = 403, description = "forbidden (admin only)", body = api::ErrorBody),
        (status = 413, description = "invalid_argument: archive too large", body = api::ErrorBody),
        (status = 422, description = "invalid_image / digest_mismatch", body = api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn import(
    State(state): State<AppState>,
    auth: Auth,
    Query(q): Query<ImportQuery>,
    body: Body,
) -> Result<Json<ImageInfo>, ApiError> {
    admin_only(&auth, "importing images")?;
    if let Some(n) = &q.name {
        api::validate_image_reference(n).map_err(ApiError::invalid)?;
    }
    let tmp_dir = state.node.images().root().join("tmp");
    let tmp = tempfile::Builder::new()
        .prefix("upload-")
        .tempfile_in(&tmp_dir)
        .map_err(|e| ApiError::internal("import upload file", &e))?;
    let mut file = tokio::fs::File::from_std(
        tmp.reopen()
            .map_err(|e| ApiError::internal("import upload file", &e))?,
    );
    let mut stream = body.into_data_stream();
    let mut total = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::invalid(format!("reading the upload: {e}")))?;
        total += chunk.len() as u64;
        if total > MAX_IMPORT_BYTES {
            return Err(ApiError::invalid(format!(
                "archive larger than {MAX_IMPORT_BYTES} bytes"
            )));
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| ApiError::internal("import upload write", &e))?;
    }
    file.flush()
        .await
        .map_err(|e| ApiError::internal("import upload write", &e))?;
    drop(file);
    let images = state.node.images().clone();
    let name = q.name.clone();
    let img = tokio::task::spawn_blocking(move || {
        let r = images.import_archive(tmp.path(), name.as_deref());
        drop(tmp);
        r
    })
    .await
    .map_err(|e| ApiError::internal("import image", &e))?
    .map_err(|e| image_err(q.name.as_deref().unwrap_or("(archive)"), e))?;
    Ok(Json(inspect_ref(&state, &img.id).await?))
}

/// Chunks of an export queued between the thread writing the tar and the
/// response body (bounded: a slow client slows the export, memory stays
/// at most `EXPORT_QUEUE_CHUNKS` × `EXPORT_CHUNK_BYTES`).
const EXPORT_QUEUE_CHUNKS: usize = 8;

/// Size of one export chunk.
const EXPORT_CHUNK_BYTES: usize = 256 << 10;

/// A blocking writer feeding a response body through a bounded queue.
struct BodyWriter {
    tx: tokio::sync::mpsc::Sender<Result<axum::body::Bytes, std::io::Error>>,
}

impl std::io::Write for BodyWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tx
            .blocking_send(Ok(axum::body::Bytes::copy_from_slice(buf)))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A file name for `Content-Disposition`: the image's name or id, with
/// anything but `[A-Za-z0-9._-]` replaced.
fn export_file_name(name: Option<&str>, id: &str) -> String {
    let base = name.unwrap_or_else(|| id.trim_start_matches("sha256:"));
    let clean: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{clean}.tar")
}

/// `GET /v1/images/{reference}/export`: the image as a tar of an OCI image
/// layout (`oci-layout`, `index.json` naming it, `blobs/sha256/`), which
/// `POST /v1/images/import`, `skopeo copy oci-archive:` and other OCI tools
/// read. Streamed with an exact `Content-Length`; memory is bounded.
#[utoipa::path(get, path = "/v1/images/{reference}/export", tag = "images",
    params(("reference" = String, Path, description = "Name, name:tag or image id, percent-encoded")),
    responses((status = 200, description = "OCI image layout tar", content_type = "application/x-tar", body = Vec<u8>),
        (status = 404, description = "image_not_found", body = api::ErrorBody),
        (status = 422, description = "image_not_exportable (the host image)", body = api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn export(
    State(state): State<AppState>,
    _auth: Auth,
    Path(reference): Path<String>,
) -> Result<Response, ApiError> {
    api::validate_image_reference(&reference).map_err(ApiError::invalid)?;
    let image = state.node.prepare_export(&reference).await?;
    let length = image.layout_size();
    let file_name = export_file_name(image.name.as_deref(), &image.id);
    let (tx, rx) = tokio::sync::mpsc::channel(EXPORT_QUEUE_CHUNKS);
    tokio::task::spawn_blocking(move || {
        let writer =
            std::io::BufWriter::with_capacity(EXPORT_CHUNK_BYTES, BodyWriter { tx: tx.clone() });
        let result = image.write_layout(writer).and_then(|mut w| {
            std::io::Write::flush(&mut w)
                .map_err(|source| warren_image::ImageError::ExportWrite { source })
        });
        match result {
            Ok(_) => {
                tracing::info!(id = %image.id, bytes = length, "exported image");
            }
            Err(e) => {
                tracing::warn!(id = %image.id, error = %e, code = e.code(), "export ended early");
                // Ends the body with an error: the client sees a broken
                // transfer, never a short archive that looks whole.
                let _ = tx.blocking_send(Err(std::io::Error::other("export failed")));
            }
        }
    });
    let body = Body::from_stream(tokio_stream_of(rx));
    Response::builder()
        .header(axum::http::header::CONTENT_TYPE, "application/x-tar")
        .header(axum::http::header::CONTENT_LENGTH, length)
        .header(
            axum::http::header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{file_name}\""),
        )
        .body(body)
        .map_err(|e| ApiError::internal("export response", &e))
}

fn push_err(reference: &str, e: warren_registry::PushError) -> ApiError {
    use warren_registry::{PullError, PushError};
    match e {
        PushError::Registry(PullError::Image(source)) => image_err(reference, source),
        PushError::Registry(source) => {
            let message = format!("pushing {reference:?}: {source}");
            // The pull's mapping of registry codes, with a push's message.
            let mut e: ApiError = warren_node::NodeError::Pull {
                reference: reference.to_string(),
                source,
            }
            .into();
            if e.code != ErrorCode::Internal {
                e.message = message;
            }
            e
        }
        e @ PushError::InvalidTarget { .. } => {
            ApiError::new(ErrorCode::InvalidImageReference, e.to_string())
        }
        e @ PushError::PushFailed { .. } => ApiError::new(ErrorCode::PushFailed, e.to_string()),
        e => ApiError::internal("push image", &e),
    }
}

/// `POST /v1/images/{reference}/push`: pushes the image to a registry
/// (`{"target": "host:port/repo:tag", "insecure"?, "auth"?}`). Admin
/// tokens only: a push writes to a registry with the node's credentials.
/// With `Accept: text/event-stream` the answer is a stream of `progress`
/// events (`resolved`, `blob_exists`, `blob_progress`, `blob_pushed`,
/// `done`), then `done` (a `PushImageResult`) or `error`; otherwise the
/// `PushImageResult` when the push is done. A push goes on if the client
/// disconnects.
#[utoipa::path(post, path = "/v1/images/{reference}/push", tag = "images",
    params(("reference" = String, Path, description = "Name, name:tag or image id, percent-encoded")),
    request_body = PushImageRequest,
    responses((status = 200, description = "The push result (or an event stream)", body = PushImageResult),
        (status = 400, description = "invalid_image_reference (bad target) / registry_insecure_not_allowed", body = api::ErrorBody),
        (status = 403, description = "registry_auth / forbidden (admin only)", body = api::ErrorBody),
        (status = 404, description = "image_not_found", body = api::ErrorBody),
        (status = 422, description = "image_not_exportable", body = api::ErrorBody),
        (status = 502, description = "push_failed / registry_unavailable", body = api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn push(
    State(state): State<AppState>,
    auth: Auth,
    Path(reference): Path<String>,
    headers: HeaderMap,
    req: Result<Json<PushImageRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    admin_only(&auth, "pushing images")?;
    let Json(req) = req.map_err(|e| ApiError::new(ErrorCode::InvalidJson, e.body_text()))?;
    api::validate_image_reference(&reference).map_err(ApiError::invalid)?;
    api::validate_image_reference(&req.target).map_err(ApiError::invalid)?;
    let options = warren_registry::PushOptions {
        credentials: credentials(req.auth),
        insecure: req.insecure,
    };
    if !wants_events(&headers) {
        let summary = state
            .node
            .push_image(&reference, &req.target, options, |_| {})
            .await
            .map_err(|e| push_err(&reference, e))?;
        return Ok(Json(summary).into_response());
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(EVENT_QUEUE);
    tokio::spawn(async move {
        let progress_tx = tx.clone();
        let result = state
            .node
            .push_image(&reference, &req.target, options, move |ev| {
                if let Ok(data) = serde_json::to_string(&ev) {
                    // Drop intermediate progress for a slow client.
                    let _ = progress_tx.try_send(Event::default().event("progress").data(data));
                }
            })
            .await;
        let last = match result {
            Ok(summary) => Event::default()
                .event("done")
                .json_data(&summary)
                .unwrap_or_default(),
            Err(e) => error_event(push_err(&reference, e)),
        };
        let _ = tx.send(last).await;
    });
    let stream = tokio_stream_of(rx).map(Ok::<_, Infallible>);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}
