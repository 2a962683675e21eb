//! `/v1/sandboxes/{id}/files...`: the sandbox's filesystem over HTTP.
//!
//! Every operation runs in the sandbox, as the sandbox's user (or the
//! `user` the request names), through the node's file agents
//! (`warren_node::fs`; see docs/files.md for the confinement): this module
//! never resolves a path itself. Paths are raw bytes: the `path` (and
//! `from`, `to`) query parameters are percent-decoded to bytes, so any
//! name, UTF-8 or not, can be addressed; `path_b64` (base64) is accepted
//! too. Responses give UTF-8 paths, plus `path_b64` when the bytes are not
//! UTF-8.
//!
//! Bodies stream both ways with bounded memory: a read is forwarded chunk
//! by chunk as the client takes it, a write is fed to the agent as it
//! arrives. Directories move as tar streams (`files/archive`), built and
//! unpacked here from the agent's list, read, mkdir and write operations.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, StatusCode, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use futures_util::StreamExt;
use warren_node::fs::{FsSession, ListOptions, ReadRange, WriteOptions};
use warren_proto::agent::{FileKind, FsEntry, WatchEvent, WatchEventKind};
use warren_proto::api::{self, ArchiveResult, ErrorCode, FileEvent, FileInfo, FileList};
use warren_runtime::SandboxId;

use crate::auth::Auth;
use crate::sandboxes::{exec_context, running};
use crate::{ApiError, AppState};

/// Most entries one list returns (and one directory download holds).
pub const MAX_LIST: u32 = 100_000;

/// Parsed query: every parameter percent-decoded to bytes.
struct Params(HashMap<String, Vec<u8>>);

impl Params {
    fn of(uri: &Uri) -> Result<Params, ApiError> {
        let mut out = HashMap::new();
        for pair in uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
        {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let key = String::from_utf8(percent_decode(k))
                .map_err(|_| ApiError::invalid("query parameter names must be UTF-8"))?;
            out.insert(key, percent_decode(v));
        }
        Ok(Params(out))
    }

    fn text(&self, key: &str) -> Result<Option<String>, ApiError> {
        self.0
            .get(key)
            .map(|v| {
                String::from_utf8(v.clone())
                    .map_err(|_| ApiError::invalid(format!("{key} must be UTF-8")))
            })
            .transpose()
    }

    fn flag(&self, key: &str) -> Result<bool, ApiError> {
        match self.text(key)?.as_deref() {
            None | Some("false") | Some("0") => Ok(false),
            Some("" | "true" | "1") => Ok(true),
            Some(v) => Err(ApiError::invalid(format!(
                "{key} must be true or false, not {v:?}"
            ))),
        }
    }

    fn number(&self, key: &str) -> Result<Option<u64>, ApiError> {
        self.text(key)?
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| ApiError::invalid(format!("{key} must be a non-negative integer")))
            })
            .transpose()
    }

    /// A file mode, octal (`0644`, `755`).
    fn mode(&self) -> Result<Option<u32>, ApiError> {
        self.text("mode")?
            .map(|v| {
                u32::from_str_radix(v.trim_start_matches("0o"), 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(|| ApiError::invalid("mode must be octal, at most 7777"))
            })
            .transpose()
    }

    /// A path parameter (`key`, or `key_b64`), as bytes.
    fn path(&self, key: &str) -> Result<Vec<u8>, ApiError> {
        let p = match (self.0.get(key), self.0.get(&format!("{key}_b64"))) {
            (Some(p), None) => p.clone(),
            (None, Some(b)) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .map_err(|_| ApiError::invalid(format!("{key}_b64 is not base64")))?,
            (Some(_), Some(_)) => {
                return Err(ApiError::invalid(format!(
                    "give {key} or {key}_b64, not both"
                )))
            }
            (None, None) => {
                return Err(ApiError::new(
                    ErrorCode::InvalidPath,
                    format!("{key} is required"),
                ))
            }
        };
        if p.first() != Some(&b'/') || p.contains(&0) || p.len() > 4096 {
            return Err(ApiError::new(
                ErrorCode::InvalidPath,
                format!("{key} must be an absolute path of at most 4096 bytes without NUL"),
            ));
        }
        Ok(p)
    }
}

fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    out
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn b64(bytes: &[u8]) -> Option<String> {
    std::str::from_utf8(bytes)
        .is_err()
        .then(|| base64::engine::general_purpose::STANDARD.encode(bytes))
}

fn kind_str(k: FileKind) -> &'static str {
    match k {
        FileKind::File => "file",
        FileKind::Directory => "directory",
        FileKind::Symlink => "symlink",
        FileKind::Fifo => "fifo",
        FileKind::Socket => "socket",
        FileKind::CharDevice => "char_device",
        FileKind::BlockDevice => "block_device",
    }
}

fn info_of(e: &FsEntry) -> FileInfo {
    let ms = e.mtime_secs.saturating_mul(1000) + i64::from(e.mtime_nanos / 1_000_000);
    let iso = crate::sandboxes::to_iso(ms);
    // Nanosecond precision: replace the milliseconds' "Z" with the rest.
    let mtime = format!(
        "{}{:06}Z",
        iso.trim_end_matches('Z'),
        e.mtime_nanos % 1_000_000
    );
    FileInfo {
        path: String::from_utf8_lossy(&e.path).into_owned(),
        path_b64: b64(&e.path),
        kind: kind_str(e.kind).into(),
        size: e.size,
        mode: e.mode,
        uid: e.uid,
        gid: e.gid,
        mtime,
        symlink_target: e
            .symlink_target
            .as_ref()
            .map(|t| String::from_utf8_lossy(t).into_owned()),
    }
}

fn event_of(e: &WatchEvent) -> FileEvent {
    let kind = match e.kind {
        WatchEventKind::Created => "created",
        WatchEventKind::Modified => "modified",
        WatchEventKind::Attributes => "attributes",
        WatchEventKind::Deleted => "deleted",
        WatchEventKind::MovedFrom => "moved_from",
        WatchEventKind::MovedTo => "moved_to",
        WatchEventKind::Overflow => "overflow",
    };
    FileEvent {
        kind: kind.into(),
        path: String::from_utf8_lossy(&e.path).into_owned(),
        path_b64: b64(&e.path),
        is_dir: e.is_dir,
        cookie: e.cookie,
    }
}

/// The file session for a request: a running sandbox of the caller's
/// workspace, as the `user` parameter or the sandbox's user. Counts as
/// activity.
async fn session(
    state: &AppState,
    auth: &Auth,
    id: &str,
    p: &Params,
) -> Result<FsSession, ApiError> {
    let rec = running(state, auth, id).await?;
    let user = p.text("user")?;
    if let Some(u) = &user {
        api::validate_user(u).map_err(ApiError::invalid)?;
    }
    let ctx = exec_context(state, &rec, &Default::default(), None, user).await?;
    // Off the request's path, as an exec's activity is.
    let store = state.store.clone();
    let sid = id.to_string();
    tokio::spawn(async move {
        let _ = store.record_activity(&sid).await;
    });
    let sid = SandboxId::new(rec.id.clone()).map_err(|e| ApiError::internal("sandbox id", &e))?;
    Ok(state.node.fs(&sid, ctx.user))
}

/// `GET /v1/sandboxes/{id}/files?path=&offset=&length=`: the file's bytes.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/files", tag = "files",
    params(("id" = String, Path, description = "Sandbox id"),
        ("path" = String, Query, description = "Absolute path (percent-encoded bytes); or path_b64"),
        ("offset" = Option<u64>, Query, description = "First byte"),
        ("length" = Option<u64>, Query, description = "At most this many bytes"),
        ("user" = Option<String>, Query, description = "Act as this user (default: the sandbox's)")),
    responses((status = 200, description = "The bytes (streamed); X-Warren-File-Size is the size when opened", content_type = "application/octet-stream"),
        (status = 404, description = "file_not_found / sandbox_not_found", body = api::ErrorBody),
        (status = 403, description = "permission_denied", body = api::ErrorBody),
        (status = 400, description = "is_a_directory / not_a_file / invalid_path", body = api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn read(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    uri: Uri,
) -> Result<Response, ApiError> {
    let p = Params::of(&uri)?;
    let path = p.path("path")?;
    let range = ReadRange {
        offset: p.number("offset")?.unwrap_or(0),
        length: p.number("length")?,
    };
    let fs = session(&state, &auth, &id, &p).await?;
    let data = fs.read(&path, range).await?;
    let size = data.size;
    let body = Body::from_stream(data.map(|r| r.map_err(std::io::Error::other)));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (
                header::HeaderName::from_static("x-warren-file-size"),
                size.to_string(),
            ),
        ],
        body,
    )
        .into_response())
}

/// `PUT /v1/sandboxes/{id}/files?path=&mode=&parents=`: replaces the file
/// atomically with the body.
#[utoipa::path(put, path = "/v1/sandboxes/{id}/files", tag = "files",
    params(("id" = String, Path, description = "Sandbox id"),
        ("path" = String, Query, description = "Absolute path (percent-encoded bytes); or path_b64"),
        ("mode" = Option<String>, Query, description = "Octal mode (default: the old file's, else 0644)"),
        ("parents" = Option<bool>, Query, description = "Create missing parent directories"),
        ("user" = Option<String>, Query, description = "Act as this user")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, description = "The file as written", body = api::FileInfo),
        (status = 507, description = "no_space", body = api::ErrorBody),
        (status = 403, description = "permission_denied", body = api::ErrorBody),
        (status = 404, description = "file_not_found (a missing parent)", body = api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn write(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    uri: Uri,
    body: Body,
) -> Result<Json<FileInfo>, ApiError> {
    let p = Params::of(&uri)?;
    let path = p.path("path")?;
    let opts = WriteOptions {
        mode: p.mode()?,
        create_parents: p.flag("parents")?,
    };
    let fs = session(&state, &auth, &id, &p).await?;
    fs.write_stream(&path, opts, body.into_data_stream())
        .await?;
    Ok(Json(info_of(&fs.stat(&path).await?)))
}

/// `GET /v1/sandboxes/{id}/files/stat?path=`
#[utoipa::path(get, path = "/v1/sandboxes/{id}/files/stat", tag = "files",
    params(("id" = String, Path, description = "Sandbox id"), ("path" = String, Query, description = "Absolute path")),
    responses((status = 200, description = "The entry (a final symlink is not followed)", body = api::FileInfo),
        (status = 404, description = "file_not_found", body = api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn stat(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    uri: Uri,
) -> Result<Json<FileInfo>, ApiError> {
    let p = Params::of(&uri)?;
    let path = p.path("path")?;
    let fs = session(&state, &auth, &id, &p).await?;
    Ok(Json(info_of(&fs.stat(&path).await?)))
}

/// `GET /v1/sandboxes/{id}/files/list?path=&recursive=&limit=`
#[utoipa::path(get, path = "/v1/sandboxes/{id}/files/list", tag = "files",
    params(("id" = String, Path, description = "Sandbox id"), ("path" = String, Query, description = "Directory"),
        ("recursive" = Option<bool>, Query, description = "The whole tree"),
        ("limit" = Option<u32>, Query, description = "At most this many entries (default and maximum 100000)")),
    responses((status = 200, description = "Entries", body = api::FileList),
        (status = 400, description = "not_a_directory", body = api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    uri: Uri,
) -> Result<Json<FileList>, ApiError> {
    let p = Params::of(&uri)?;
    let path = p.path("path")?;
    let limit = p
        .number("limit")?
        .map_or(MAX_LIST, |l| l.clamp(1, u64::from(MAX_LIST)) as u32);
    let fs = session(&state, &auth, &id, &p).await?;
    let listing = fs
        .list(
            &path,
            ListOptions {
                recursive: p.flag("recursive")?,
                limit: Some(limit),
            },
        )
        .await?;
    Ok(Json(FileList {
        entries: listing.entries.iter().map(info_of).collect(),
        truncated: listing.truncated,
    }))
}

/// `POST /v1/sandboxes/{id}/files/mkdir?path=&parents=&mode=`
#[utoipa::path(post, path = "/v1/sandboxes/{id}/files/mkdir", tag = "files",
    params(("id" = String, Path, description = "Sandbox id"), ("path" = String, Query, description = "Directory to create"),
        ("parents" = Option<bool>, Query, description = "Like mkdir -p"), ("mode" = Option<String>, Query, description = "Octal, default 0755")),
    responses((status = 200, description = "The directory", body = api::FileInfo),
        (status = 409, description = "file_exists", body = api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn mkdir(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    uri: Uri,
) -> Result<Json<FileInfo>, ApiError> {
    let p = Params::of(&uri)?;
    let path = p.path("path")?;
    let fs = session(&state, &auth, &id, &p).await?;
    fs.mkdir(&path, p.flag("parents")?, p.mode()?).await?;
    Ok(Json(info_of(&fs.stat(&path).await?)))
}

/// `DELETE /v1/sandboxes/{id}/files?path=&recursive=`
#[utoipa::path(delete, path = "/v1/sandboxes/{id}/files", tag = "files",
    params(("id" = String, Path, description = "Sandbox id"), ("path" = String, Query, description = "What to remove"),
        ("recursive" = Option<bool>, Query, description = "A whole tree (symlinks are removed, never followed)")),
    responses((status = 204, description = "Removed"),
        (status = 409, description = "directory_not_empty", body = api::ErrorBody),
        (status = 404, description = "file_not_found", body = api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn remove(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    uri: Uri,
) -> Result<StatusCode, ApiError> {
    let p = Params::of(&uri)?;
    let path = p.path("path")?;
    let fs = session(&state, &auth, &id, &p).await?;
    fs.remove(&path, p.flag("recursive")?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/sandboxes/{id}/files/rename?from=&to=&overwrite=`
#[utoipa::path(post, path = "/v1/sandboxes/{id}/files/rename", tag = "files",
    params(("id" = String, Path, description = "Sandbox id"), ("from" = String, Query, description = "Source path"),
        ("to" = String, Query, description = "Target path"), ("overwrite" = Option<bool>, Query, description = "Replace an existing target")),
    responses((status = 204, description = "Renamed"),
        (status = 409, description = "file_exists", body = api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn rename(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    uri: Uri,
) -> Result<StatusCode, ApiError> {
    let p = Params::of(&uri)?;
    let (from, to) = (p.path("from")?, p.path("to")?);
    let fs = session(&state, &auth, &id, &p).await?;
    fs.rename(&from, &to, p.flag("overwrite")?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/sandboxes/{id}/files/watch?path=&recursive=`: server-sent
/// events, one `fs` event (a `FileEvent`) per change; `overflow` means
/// events were lost (rescan). Ends with `end` when the watched path goes
/// away, or `error`.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/files/watch", tag = "files",
    params(("id" = String, Path, description = "Sandbox id"), ("path" = String, Query, description = "File or directory"),
        ("recursive" = Option<bool>, Query, description = "Every directory below, new ones included")),
    responses((status = 200, description = "text/event-stream of FileEvent", body = api::FileEvent),
        (status = 429, description = "limit_exceeded", body = api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn watch(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    uri: Uri,
) -> Result<Response, ApiError> {
    let p = Params::of(&uri)?;
    let path = p.path("path")?;
    let fs = session(&state, &auth, &id, &p).await?;
    let events = fs.watch(&path, p.flag("recursive")?).await?;
    let stream = events
        .map(|r| {
            Ok::<_, std::convert::Infallible>(match r {
                Ok(ev) => Event::default()
                    .event("fs")
                    .json_data(event_of(&ev))
                    .unwrap_or_default(),
                Err(e) => {
                    let e = ApiError::from(e);
                    Event::default()
                        .event("error")
                        .json_data(api::ErrorBody {
                            error: api::ErrorDetail {
                                code: e.code.as_str().into(),
                                message: e.message,
                            },
                        })
                        .unwrap_or_default()
                }
            })
        })
        .chain(futures_util::stream::once(async {
            Ok(Event::default().event("end").data("{}"))
        }));
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(15)))
        .into_response())
}

// ---------------------------------------------------------------- archives ---

/// Sends what the tar builder writes as body chunks (blocking side).
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= 256 * 1024 {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let chunk = Bytes::from(std::mem::take(&mut self.buf));
            self.tx
                .blocking_send(Ok(chunk))
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
        }
        Ok(())
    }
}

/// A file's content for the tar builder: exactly `size` bytes (the header
/// was written with the size listed; a file that changed meanwhile is cut
/// or zero-padded, never makes the archive invalid).
struct ExactReader {
    rt: tokio::runtime::Handle,
    stream: Option<warren_node::fs::FsRead>,
    pending: Bytes,
    left: u64,
}

impl Read for ExactReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 || out.is_empty() {
            return Ok(0);
        }
        if self.pending.is_empty() {
            let next = match self.stream.as_mut() {
                Some(s) => self.rt.block_on(s.next()),
                None => None,
            };
            match next {
                Some(Ok(b)) => self.pending = b,
                Some(Err(e)) => return Err(std::io::Error::other(e.to_string())),
                None => {
                    self.stream = None;
                    // Shrunk since listed: pad with zeros.
                    let n = out.len().min(self.left as usize);
                    out[..n].fill(0);
                    self.left -= n as u64;
                    return Ok(n);
                }
            }
        }
        let n = out.len().min(self.pending.len()).min(self.left as usize);
        out[..n].copy_from_slice(&self.pending[..n]);
        self.pending = self.pending.slice(n..);
        self.left -= n as u64;
        Ok(n)
    }
}

/// `GET /v1/sandboxes/{id}/files/archive?path=DIR`: the directory as a tar
/// stream (files, directories and symlinks; paths relative to DIR).
#[utoipa::path(get, path = "/v1/sandboxes/{id}/files/archive", tag = "files",
    params(("id" = String, Path, description = "Sandbox id"), ("path" = String, Query, description = "Directory")),
    responses((status = 200, description = "A tar stream", content_type = "application/x-tar"),
        (status = 400, description = "not_a_directory", body = api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn download_archive(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    uri: Uri,
) -> Result<Response, ApiError> {
    let p = Params::of(&uri)?;
    let base = p.path("path")?;
    let fs = session(&state, &auth, &id, &p).await?;
    let listing = fs
        .list(
            &base,
            ListOptions {
                recursive: true,
                limit: Some(MAX_LIST),
            },
        )
        .await?;
    if listing.truncated {
        return Err(ApiError::new(
            ErrorCode::LimitExceeded,
            format!("more than {MAX_LIST} entries; archive a smaller directory"),
        ));
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    let rt = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let err_tx = tx.clone();
        if let Err(e) = build_tar(&rt, &fs, &base, &listing.entries, tx) {
            let _ = err_tx.blocking_send(Err(e));
        }
    });
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|i| (i, rx)) });
    Ok((
        [(header::CONTENT_TYPE, "application/x-tar")],
        Body::from_stream(stream),
    )
        .into_response())
}

fn build_tar(
    rt: &tokio::runtime::Handle,
    fs: &FsSession,
    base: &[u8],
    entries: &[FsEntry],
    tx: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
) -> std::io::Result<()> {
    let mut b = tar::Builder::new(ChannelWriter {
        tx,
        buf: Vec::new(),
    });
    let prefix: Vec<u8> = if base.ends_with(b"/") {
        base.to_vec()
    } else {
        [base, b"/"].concat()
    };
    for e in entries {
        let Some(rel) = e.path.strip_prefix(prefix.as_slice()) else {
            continue;
        };
        if rel.is_empty() {
            continue;
        }
        let rel = std::path::Path::new(std::ffi::OsStr::from_bytes(rel));
        let mut h = tar::Header::new_gnu();
        h.set_mode(e.mode);
        h.set_uid(u64::from(e.uid));
        h.set_gid(u64::from(e.gid));
        h.set_mtime(e.mtime_secs.max(0) as u64);
        match e.kind {
            FileKind::Directory => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                b.append_data(&mut h, rel, std::io::empty())?;
            }
            FileKind::Symlink => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                let target = e.symlink_target.clone().unwrap_or_default();
                b.append_link(
                    &mut h,
                    rel,
                    std::path::Path::new(std::ffi::OsStr::from_bytes(&target)),
                )?;
            }
            FileKind::File => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(e.size);
                let stream = rt
                    .block_on(fs.read(&e.path, ReadRange::default()))
                    .map_err(|err| std::io::Error::other(err.to_string()))?;
                let reader = ExactReader {
                    rt: rt.clone(),
                    stream: Some(stream),
                    pending: Bytes::new(),
                    left: e.size,
                };
                b.append_data(&mut h, rel, reader)?;
            }
            // Devices, FIFOs and sockets do not travel.
            _ => {}
        }
    }
    b.into_inner()?.flush()
}

/// Feeds the request body to the tar reader (blocking side).
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
    pending: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pending.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.pending = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.pending.len());
        out[..n].copy_from_slice(&self.pending[..n]);
        self.pending = self.pending.slice(n..);
        Ok(n)
    }
}

/// `PUT /v1/sandboxes/{id}/files/archive?path=DIR`: unpacks a tar stream
/// into DIR (created with its parents): directories and regular files, each
/// written atomically as it arrives. Entries that would leave DIR (`..`,
/// absolute paths) are refused; symlinks, hard links and devices are
/// skipped and listed.
#[utoipa::path(put, path = "/v1/sandboxes/{id}/files/archive", tag = "files",
    params(("id" = String, Path, description = "Sandbox id"), ("path" = String, Query, description = "Target directory")),
    request_body(content = Vec<u8>, content_type = "application/x-tar"),
    responses((status = 200, description = "What was written", body = api::ArchiveResult),
        (status = 400, description = "invalid_argument: a bad tar or an entry leaving the directory", body = api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn upload_archive(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    uri: Uri,
    body: Body,
) -> Result<Json<ArchiveResult>, ApiError> {
    let p = Params::of(&uri)?;
    let base = p.path("path")?;
    let fs = session(&state, &auth, &id, &p).await?;
    fs.mkdir(&base, true, None).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    let feeder = tokio::spawn(async move {
        let mut data = body.into_data_stream();
        while let Some(chunk) = data.next().await {
            let item = chunk.map_err(std::io::Error::other);
            if tx.send(item).await.is_err() {
                break;
            }
        }
    });
    let rt = tokio::runtime::Handle::current();
    let result = tokio::task::spawn_blocking(move || {
        unpack_tar(
            &rt,
            &fs,
            &base,
            ChannelReader {
                rx,
                pending: Bytes::new(),
            },
        )
    })
    .await
    .map_err(|e| ApiError::internal("unpack archive", &e))?;
    feeder.abort();
    Ok(Json(result?))
}

fn unpack_tar(
    rt: &tokio::runtime::Handle,
    fs: &FsSession,
    base: &[u8],
    reader: ChannelReader,
) -> Result<ArchiveResult, ApiError> {
    let bad = |m: String| ApiError::invalid(format!("archive: {m}"));
    let mut out = ArchiveResult::default();
    let mut ar = tar::Archive::new(reader);
    let entries = ar.entries().map_err(|e| bad(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(e.to_string()))?;
        let rel = entry.path_bytes().into_owned();
        let mut target = base.to_vec();
        let mut depth = 0;
        for comp in rel.split(|&c| c == b'/') {
            match comp {
                b"" | b"." => {}
                b".." => {
                    return Err(bad(format!(
                        "{:?} leaves the directory",
                        String::from_utf8_lossy(&rel)
                    )))
                }
                c => {
                    if !target.ends_with(b"/") {
                        target.push(b'/');
                    }
                    target.extend_from_slice(c);
                    depth += 1;
                }
            }
        }
        if depth == 0 {
            continue;
        }
        let mode = entry.header().mode().ok().map(|m| m & 0o7777);
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                rt.block_on(fs.mkdir(&target, true, mode))?;
                out.directories += 1;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let (ctx, crx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(2);
                let writer = {
                    let fs = fs.clone();
                    let target = target.clone();
                    rt.spawn(async move {
                        let stream = futures_util::stream::unfold(crx, |mut rx| async move {
                            rx.recv().await.map(|i| (i, rx))
                        });
                        fs.write_stream(
                            &target,
                            WriteOptions {
                                mode,
                                create_parents: true,
                            },
                            stream,
                        )
                        .await
                    })
                };
                let mut buf = vec![0u8; 256 * 1024];
                let mut copy_err = None;
                loop {
                    match entry.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            if ctx
                                .blocking_send(Ok(Bytes::copy_from_slice(&buf[..n])))
                                .is_err()
                            {
                                break;
                            }
                        }
                        Err(e) => {
                            copy_err = Some(e.to_string());
                            let _ = ctx.blocking_send(Err(std::io::Error::other("bad archive")));
                            break;
                        }
                    }
                }
                drop(ctx);
                let written = rt
                    .block_on(writer)
                    .map_err(|e| ApiError::internal("write file", &e))?;
                if let Some(e) = copy_err {
                    return Err(bad(e));
                }
                out.bytes += written?;
                out.files += 1;
            }
            _ => out.skipped.push(String::from_utf8_lossy(&rel).into_owned()),
        }
    }
    Ok(out)
}
