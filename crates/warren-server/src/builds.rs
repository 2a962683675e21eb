//! `POST /v1/images/build`: image builds (see `warren-build`). The body is
//! a tar of the build context with the recipe inside; the answer is an
//! NDJSON stream of build events (`application/x-ndjson`).
//!
//! Checks that need no build run first and answer with an ordinary error
//! (`invalid_recipe`, `invalid_context`, `context_too_large`, ...); once
//! the stream starts, a failure is its last line, an `error` event.
//!
//! The context is spooled into an anonymous file (`O_TMPFILE`) in the
//! image store's `tmp/` (bounded by `max_context_bytes`) and indexed, never
//! unpacked on the host. Builds are admin-only for the reason imports are:
//! the store and its names are shared by every workspace.
//!
//! If the client goes away the build stops and the step's sandbox is
//! destroyed.

use std::convert::Infallible;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use serde::Deserialize;
use warren_build::{BuildContext, BuildError, BuildOptions};
use warren_proto::api::{self, ErrorBody, ErrorDetail};
use warren_proto::build::{BuildEvent, BuildQuery, DEFAULT_RECIPE_PATH};

use crate::auth::Auth;
use crate::AppState;

/// Events buffered towards the client; beyond this the build waits (a
/// `RUN`'s output is back-pressured, not dropped).
const EVENT_QUEUE: usize = 64;

/// The node's build settings, from `<data_dir>/builds.json` when it
/// exists (every field optional).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BuildSettings {
    /// Largest context archive accepted (default 2 GiB).
    pub max_context_bytes: u64,
    /// Default and largest `step_timeout_secs` (default 1800).
    pub step_timeout_secs: u64,
    /// Default and largest `memory_mib` of a step's sandbox (default 2048).
    pub memory_mib: u64,
    /// Process limit of a step's sandbox (default 4096).
    pub pids: u64,
}

impl Default for BuildSettings {
    fn default() -> Self {
        BuildSettings {
            max_context_bytes: 2 << 30,
            step_timeout_secs: 1800,
            memory_mib: 2048,
            pids: 4096,
        }
    }
}

/// An error answer with any stable code (build codes are not all in
/// `ErrorCode`).
struct Refusal {
    status: StatusCode,
    code: String,
    message: String,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ErrorBody {
                error: ErrorDetail {
                    code: self.code,
                    message: self.message,
                },
            }),
        )
            .into_response()
    }
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        code: code.to_string(),
        message: message.into(),
    }
}

fn build_error(e: &BuildError) -> Refusal {
    let status = match e {
        BuildError::Recipe { .. } | BuildError::Context { .. } | BuildError::Copy { .. } => {
            StatusCode::BAD_REQUEST
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    if e.is_public() {
        error(status, e.code(), e.to_string())
    } else {
        tracing::error!(error = %e, "preparing a build");
        error(
            status,
            e.code(),
            "preparing the build failed; see the server log",
        )
    }
}

async fn settings(state: &AppState) -> Result<BuildSettings, Refusal> {
    let Some(data_dir) = state.node.images().root().parent() else {
        return Ok(BuildSettings::default());
    };
    let path = data_dir.join("builds.json");
    match tokio::fs::read(&path).await {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            tracing::error!(path = %path.display(), error = %e, "invalid build settings");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the node's build settings are invalid; see the server log",
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BuildSettings::default()),
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "reading build settings");
            Err(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "reading the node's build settings failed; see the server log",
            ))
        }
    }
}

/// `POST /v1/images/build?tag=NAME[&recipe=PATH&no_cache=&network=&step_timeout_secs=&memory_mib=]`
#[utoipa::path(post, path = "/v1/images/build", tag = "images",
    params(BuildQuery),
    request_body(content = Vec<u8>, content_type = "application/x-tar", description = "The build context as a tar, with the recipe inside"),
    responses((status = 200, description = "NDJSON stream of BuildEvent, one per line, ending with `done` or `error`", body = BuildEvent, content_type = "application/x-ndjson"),
        (status = 400, description = "invalid_recipe (message names the line) / invalid_context / invalid_copy_source / invalid_image_reference / invalid_argument", body = api::ErrorBody),
        (status = 403, description = "forbidden (admin only)", body = api::ErrorBody),
        (status = 413, description = "context_too_large", body = api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn build(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    query: Result<Query<BuildQuery>, QueryRejection>,
    body: Body,
) -> Response {
    match start(state, auth, headers, query, body).await {
        Ok(r) => r,
        Err(r) => r.into_response(),
    }
}

async fn start(
    state: AppState,
    auth: Auth,
    headers: HeaderMap,
    query: Result<Query<BuildQuery>, QueryRejection>,
    body: Body,
) -> Result<Response, Refusal> {
    if !auth.0.is_admin {
        return Err(error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "building images needs an admin token",
        ));
    }
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "invalid_argument",
                e.body_text(),
            ))
        }
    };
    if let Err(e) = warren_image::ImageName::parse_new(&q.tag) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "invalid_image_reference",
            format!("tag {:?}: {e}", q.tag),
        ));
    }
    let settings = settings(&state).await?;
    let opts = options(&state, &q, &settings)?;
    let max = settings.max_context_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(too_large(max));
    }
    let file = spool(&state, body, max).await?;
    let recipe_path = q
        .recipe
        .clone()
        .unwrap_or_else(|| DEFAULT_RECIPE_PATH.to_string());
    let prepared = tokio::task::spawn_blocking(move || {
        let ctx = BuildContext::open(file)?;
        let text = ctx.read_file(&recipe_path, warren_build::recipe::MAX_RECIPE_BYTES)?;
        let recipe = warren_build::parse(&text)?;
        Ok::<_, BuildError>((ctx, recipe))
    })
    .await;
    let (ctx, recipe) = match prepared {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => return Err(build_error(&e)),
        Err(e) => return Err(build_error(&BuildError::from(e))),
    };

    let (tx, rx) = tokio::sync::mpsc::channel::<BuildEvent>(EVENT_QUEUE);
    let span = tracing::info_span!("image_build", tag = %opts.tag);
    let task = async move {
        let started = Instant::now();
        let ctx = Arc::new(ctx);
        let result = tokio::select! {
            r = warren_build::build(&state.node, &recipe, ctx, &opts, &tx) => r,
            // The client went away: dropping the build destroys the step's
            // sandbox.
            () = tx.closed() => Err(BuildError::Cancelled.into()),
        };
        let last = match result {
            Ok(built) => {
                tracing::info!(id = %built.image.id, tag = %opts.tag, steps = built.steps, cached = built.cached_steps, "image built");
                BuildEvent::Done {
                    image_id: built.image.id,
                    name: opts.tag.clone(),
                    seconds: started.elapsed().as_secs_f64(),
                    cached_steps: built.cached_steps,
                    steps: built.steps,
                }
            }
            Err(e) => {
                if matches!(e.error, BuildError::Cancelled) {
                    tracing::info!("build cancelled: the client went away");
                    return;
                }
                if !e.error.is_public() {
                    tracing::error!(error = %e.error, step = ?e.step, "image build failed");
                }
                e.event()
            }
        };
        let _ = tx.send(last).await;
    };
    tokio::spawn(tracing::Instrument::instrument(task, span));
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let ev = rx.recv().await?;
        let mut line = serde_json::to_vec(&ev).unwrap_or_default();
        line.push(b'\n');
        Some((Ok::<_, Infallible>(Bytes::from(line)), rx))
    });
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

fn too_large(max: u64) -> Refusal {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "context_too_large",
        format!("the build context is larger than {max} bytes"),
    )
}

fn options(
    state: &AppState,
    q: &BuildQuery,
    settings: &BuildSettings,
) -> Result<BuildOptions, Refusal> {
    let mut opts = BuildOptions::new(q.tag.clone());
    opts.no_cache = q.no_cache;
    opts.network = q
        .network
        .unwrap_or(state.node.runtime().network().is_some());
    let secs = q.step_timeout_secs.unwrap_or(settings.step_timeout_secs);
    if secs == 0 || secs > settings.step_timeout_secs {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            format!(
                "step_timeout_secs must be 1 to {}",
                settings.step_timeout_secs
            ),
        ));
    }
    opts.step_timeout = Duration::from_secs(secs);
    let mib = q.memory_mib.unwrap_or(settings.memory_mib);
    if !(16..=settings.memory_mib).contains(&mib) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            format!("memory_mib must be 16 to {}", settings.memory_mib),
        ));
    }
    opts.memory_bytes = Some(mib << 20);
    opts.pids = Some(settings.pids);
    Ok(opts)
}

/// Writes the body into an anonymous file in the store's `tmp/`, at most
/// `max` bytes.
async fn spool(state: &AppState, body: Body, max: u64) -> Result<std::fs::File, Refusal> {
    let internal = |what: &str, e: &dyn std::fmt::Display| {
        tracing::error!(error = %e, "{what}");
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("{what} failed; see the server log"),
        )
    };
    let dir = state.node.images().root().join("tmp");
    let file = tokio::task::spawn_blocking(move || tempfile::tempfile_in(dir))
        .await
        .map_err(|e| internal("build context file", &e))?
        .map_err(|e| internal("build context file", &e))?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(8);
    let writer = tokio::task::spawn_blocking(move || {
        let mut file = file;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, &mut file);
        while let Some(chunk) = rx.blocking_recv() {
            w.write_all(&chunk)?;
        }
        w.flush()?;
        drop(w);
        Ok::<_, std::io::Error>(file)
    });
    let mut data = body.into_data_stream();
    let mut total = 0u64;
    let mut failure = None;
    while let Some(chunk) = data.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                failure = Some(error(
                    StatusCode::BAD_REQUEST,
                    "invalid_argument",
                    format!("reading the build context: {e}"),
                ));
                break;
            }
        };
        total += chunk.len() as u64;
        if total > max {
            failure = Some(too_large(max));
            break;
        }
        if tx.send(chunk).await.is_err() {
            break;
        }
    }
    drop(tx);
    let written = writer
        .await
        .map_err(|e| internal("build context write", &e))?;
    if let Some(r) = failure {
        return Err(r);
    }
    written.map_err(|e| internal("build context write", &e))
}
