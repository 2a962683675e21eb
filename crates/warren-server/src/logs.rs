//! `GET /v1/sandboxes/{id}/logs`: the main command's output, bounded.
//!
//! While a sandbox runs, its output lives in a ring file that init writes
//! (it survives restarts of the server). When a sandbox ends, the
//! supervisor keeps the retained bytes under `<data>/logs/<id>` for
//! [`LOG_RETENTION`], so a client can still read why its command failed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use warren_proto::api;
use warren_runtime::SandboxId;
use warren_store::SandboxState;

use crate::auth::Auth;
use crate::{ApiError, AppState};

/// Bytes of output kept per sandbox (the newest ones).
pub const LOG_CAPACITY: u64 = 1 << 20;

/// How long the logs of an ended sandbox are kept.
pub const LOG_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// A preserved log: 16 header bytes (skipped, total as u64 LE), then data.
pub fn preserved_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(id)
}

pub fn preserve(dir: &Path, id: &str, log: &warren_runtime::MainLog) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut data = Vec::with_capacity(16 + log.bytes.len());
    data.extend_from_slice(&log.skipped.to_le_bytes());
    data.extend_from_slice(&log.total.to_le_bytes());
    data.extend_from_slice(&log.bytes);
    let tmp = dir.join(format!(".{id}.tmp"));
    std::fs::write(&tmp, &data)?;
    std::fs::rename(tmp, preserved_path(dir, id))
}

fn read_preserved(
    dir: &Path,
    id: &str,
    tail: Option<u64>,
) -> std::io::Result<warren_runtime::MainLog> {
    let data = std::fs::read(preserved_path(dir, id))?;
    if data.len() < 16 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "truncated log",
        ));
    }
    let mut skipped = u64::from_le_bytes(data[..8].try_into().unwrap_or_default());
    let total = u64::from_le_bytes(data[8..16].try_into().unwrap_or_default());
    let mut bytes = data[16..].to_vec();
    if let Some(t) = tail {
        let cut = bytes.len().saturating_sub(t as usize);
        bytes.drain(..cut);
        skipped += cut as u64;
    }
    Ok(warren_runtime::MainLog {
        bytes,
        skipped,
        total,
    })
}

/// Removes preserved logs older than the retention period.
pub fn prune(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > LOG_RETENTION);
        if old {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    tail: Option<u64>,
}

/// `GET /v1/sandboxes/{id}/logs?tail=N`: `text/plain` bytes (stdout and
/// stderr interleaved as written). `X-Warren-Log-Skipped` says how many
/// older bytes are not included, `X-Warren-Log-Total` how many were written.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/logs", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id"),
        ("tail" = Option<u64>, Query, description = "Only the last N bytes")),
    responses((status = 200, description = "The retained output (at most 1 MiB)", content_type = "text/plain"),
        (status = 404, description = "sandbox_not_found", body = api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn logs(
    State(state): State<AppState>,
    auth: Auth,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    let rec = state
        .store
        .get_sandbox(&auth.0.workspace_id, &id)
        .await?
        .ok_or_else(|| ApiError::not_found(&id))?;
    let live = if rec.state == SandboxState::Running {
        let sid = SandboxId::new(id.clone()).map_err(|e| ApiError::internal("sandbox id", &e))?;
        state.node.read_log(&sid, q.tail).await.ok()
    } else {
        None
    };
    let log = match live {
        Some(l) => l,
        None => read_preserved(state.supervisor.logs_dir(), &id, q.tail).unwrap_or(
            warren_runtime::MainLog {
                bytes: Vec::new(),
                skipped: 0,
                total: 0,
            },
        ),
    };
    let mut resp = log.bytes.into_response();
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert("x-warren-log-skipped", HeaderValue::from(log.skipped));
    h.insert("x-warren-log-total", HeaderValue::from(log.total));
    Ok(resp)
}
