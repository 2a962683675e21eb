//! Memory snapshots through the API: `snapshot-memory` (a checkpoint of a
//! running sandbox, listed and removed under `/v1/memory-snapshots`),
//! restores (`POST /v1/sandboxes {"from_memory_snapshot"}`), `fork`,
//! `pause` and `resume`, auto-resume and `on_idle: pause`.
//!
//! Where things live:
//! - a memory snapshot's checkpoint: `<data>/memory-snapshots/<msnap-id>/`;
//!   its record (and the source's spec, which restored sandboxes inherit)
//!   in the store; its image held ([`warren_node::ImagePin`]) while the
//!   record exists, and held again when the server restarts;
//! - a paused sandbox's checkpoint: `<data>/memory-snapshots/paused/<id>/`,
//!   its image held likewise; its record is `paused` (never counted as
//!   running; no timeout runs: the deadline moves by the paused time on
//!   resume);
//! - a fork's one checkpoint: `<data>/memory-snapshots/forks/<random>/`,
//!   removed once the copies run.
//!
//! Pause, resume, terminate, `snapshot-memory` and the checkpoint of a fork
//! of one sandbox take that sandbox's lock (one at a time; concurrent
//! resumes of one sandbox run once, the others wait and find it running).
//! A restore from a memory snapshot and its removal take the snapshot's.
//!
//! Fork is all or nothing: if a copy fails to restore, the copies already
//! made are terminated and the error says how many there were.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::Json;
use tracing::{info, warn};
use warren_node::{CreateRequest, ImagePin, Node};
use warren_proto::api::{self, CreateSandboxRequest, ErrorCode};
use warren_runtime::{Limits, SandboxId};
use warren_store::{
    MemorySnapshotRecord, NewSandbox, PortKind, SandboxRecord, SandboxState, Termination,
    TerminationReason,
};

use crate::auth::Auth;
use crate::sandboxes::{running, to_api, to_iso};
use crate::snapshots::{optional_body, sandbox_id};
use crate::supervisor::{now_ms, Supervisor};
use crate::{ApiError, AppState};

/// Restores of one fork running at once (each is mostly CRIU's own work
/// on one core).
const FORK_PARALLELISM: usize = 4;

/// The node-side state of memory snapshots and paused sandboxes.
pub struct MemoryState {
    dir: PathBuf,
    /// Image holds: per memory snapshot id, `pause:<sandbox id>` and
    /// `fork:<dir>`.
    holds: Mutex<HashMap<String, ImagePin>>,
    /// One lock per sandbox or memory snapshot id (see the module doc).
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Paused sandboxes of this node, with their `auto_resume`: the tunnel
    /// target asks on every connection, without a database read.
    paused: Mutex<HashMap<String, bool>>,
    /// Sandboxes the sweeper is pausing now (`on_idle: pause`).
    pausing: Mutex<HashSet<String>>,
}

fn pause_key(id: &str) -> String {
    format!("pause:{id}")
}

impl MemoryState {
    pub fn new(dir: PathBuf) -> Self {
        MemoryState {
            dir,
            holds: Mutex::default(),
            locks: Mutex::default(),
            paused: Mutex::default(),
            pausing: Mutex::default(),
        }
    }

    /// Creates the directories and removes what an interrupted fork left.
    pub fn prepare(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(self.dir.join("paused"))?;
        let forks = self.dir.join("forks");
        if forks.exists() {
            std::fs::remove_dir_all(&forks)?;
        }
        std::fs::create_dir_all(forks)
    }

    pub fn snapshot_dir(&self, msnap_id: &str) -> PathBuf {
        self.dir.join(msnap_id)
    }

    pub fn pause_dir(&self, sandbox_id: &str) -> PathBuf {
        self.dir.join("paused").join(sandbox_id)
    }

    fn fork_dir(&self) -> PathBuf {
        self.dir
            .join("forks")
            .join(warren_store::new_memory_snapshot_id())
    }

    /// The lock of a sandbox or memory snapshot id.
    pub fn lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .expect("memory locks poisoned")
            .entry(key.to_string())
            .or_default()
            .clone()
    }

    /// Forgets an ended sandbox.
    pub fn forget(&self, id: &str) {
        self.locks.lock().expect("memory locks poisoned").remove(id);
        self.paused.lock().expect("paused lock poisoned").remove(id);
    }

    /// `Some(auto_resume)` when the sandbox is paused.
    pub fn paused(&self, id: &str) -> Option<bool> {
        self.paused
            .lock()
            .expect("paused lock poisoned")
            .get(id)
            .copied()
    }

    fn set_paused(&self, id: &str, auto_resume: Option<bool>) {
        let mut p = self.paused.lock().expect("paused lock poisoned");
        match auto_resume {
            Some(a) => p.insert(id.to_string(), a),
            None => p.remove(id),
        };
    }

    /// Holds `image_id` under `key` until [`MemoryState::release`].
    async fn hold(&self, node: &Node, key: &str, image_id: &str) -> Result<(), ApiError> {
        let (node, image) = (node.clone(), image_id.to_string());
        let pin = tokio::task::spawn_blocking(move || node.pin_image(&image))
            .await
            .map_err(|e| ApiError::internal("holding an image", &e))??;
        self.holds
            .lock()
            .expect("holds lock poisoned")
            .insert(key.to_string(), pin);
        Ok(())
    }

    fn release(&self, key: &str) {
        self.holds.lock().expect("holds lock poisoned").remove(key);
    }

    /// Removes a paused sandbox's checkpoint and its image hold (nothing
    /// when it has none).
    pub async fn discard_pause(&self, node: &Node, id: &str) {
        self.set_paused(id, None);
        let dir = self.pause_dir(id);
        if dir.exists() {
            if let Err(e) = node.remove_checkpoint(dir).await {
                warn!(sandbox_id = id, error = %e, "removing a paused sandbox's checkpoint failed");
            }
        }
        self.release(&pause_key(id));
    }

    /// After a restart: keeps a paused sandbox paused when its checkpoint
    /// is on disk (and holds its image again).
    pub async fn adopt_pause(&self, node: &Node, rec: &SandboxRecord) -> Result<(), String> {
        if !self.pause_dir(&rec.id).join("manifest.json").exists() {
            return Err("its checkpoint is gone".into());
        }
        let image_id = rec.image_id.as_deref().ok_or("its image is unknown")?;
        self.hold(node, &pause_key(&rec.id), image_id)
            .await
            .map_err(|e| e.message)?;
        self.set_paused(&rec.id, Some(rec.spec.auto_resume));
        Ok(())
    }
}

/// What the node restores: the record's limits and network over the
/// checkpoint's image (its id); the processes bring the rest.
fn restore_request(
    id: SandboxId,
    image_id: &str,
    spec: &warren_store::SandboxSpec,
) -> CreateRequest {
    CreateRequest {
        id,
        image: image_id.to_string(),
        command: (!spec.command.is_empty()).then(|| spec.command.clone()),
        env: spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        workdir: spec.workdir.clone(),
        user: spec.user.clone(),
        use_image_command: false,
        limits: Limits {
            cpu_millis: spec.cpu.map(|c| (c * 1000.0).round() as u64),
            memory_bytes: spec.memory_mib.map(|m| m << 20),
            pids: None,
            disk_bytes: None,
        },
        log_capacity: Some(crate::logs::LOG_CAPACITY),
        network: warren_node::NetworkRequest {
            block_network: spec.network.block_network,
            outbound_cidr_allowlist: spec.network.outbound_cidr_allowlist.clone(),
        },
    }
}

fn not_checkpointable(id: &str) -> ApiError {
    ApiError::new(
        ErrorCode::SandboxNotCheckpointable,
        format!(
            "sandbox {id} was not created with memory_snapshots (or auto_resume, or on_idle: pause)"
        ),
    )
}

fn state_error(id: &str, state: SandboxState) -> ApiError {
    match state {
        SandboxState::Creating => ApiError::new(
            ErrorCode::SandboxNotRunning,
            "the sandbox is still starting",
        ),
        SandboxState::Paused => ApiError::new(
            ErrorCode::SandboxPaused,
            format!("sandbox {id} is paused; resume it first"),
        ),
        _ => ApiError::new(
            ErrorCode::SandboxTerminated,
            format!("sandbox {id} has ended"),
        ),
    }
}

/// The image id a sandbox runs: its record's, else the node's claim.
fn image_of(node: &Node, rec: &SandboxRecord) -> Result<String, ApiError> {
    rec.image_id
        .clone()
        .or_else(|| node.sandbox_image(&SandboxId::new(rec.id.clone()).ok()?))
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::SnapshotFailed,
                "the node does not know the sandbox's image",
            )
        })
}

impl Supervisor {
    /// Pauses a running sandbox: checkpoint (its processes end), release
    /// everything it held on the node (memory, CPU, cgroup, network), keep
    /// the record `paused` under the same id. Pausing a paused sandbox is a
    /// no-op.
    pub async fn pause(&self, id: &str) -> Result<(), ApiError> {
        let lock = self.memory.lock(id);
        let _held = lock.lock().await;
        let rec = self
            .store()
            .get_sandbox_unscoped(id)
            .await?
            .ok_or_else(|| ApiError::not_found(id))?;
        match rec.state {
            SandboxState::Paused => return Ok(()),
            SandboxState::Running => {}
            s => return Err(state_error(id, s)),
        }
        if !rec.spec.memory_snapshots {
            return Err(not_checkpointable(id));
        }
        let sid = sandbox_id(id)?;
        let image_id = image_of(self.node(), &rec)?;
        let key = pause_key(id);
        self.memory.hold(self.node(), &key, &image_id).await?;
        let dir = self.memory.pause_dir(id);
        // A stale directory (a crash mid-pause) would make the checkpoint fail.
        self.node().remove_checkpoint(dir.clone()).await?;
        // Served by the logs endpoint while paused.
        self.preserve_log(&sid).await;
        let started = std::time::Instant::now();
        if !self.unwatch(id) {
            self.memory.release(&key);
            return Err(ApiError::new(
                ErrorCode::SandboxTerminated,
                format!("sandbox {id} is ending"),
            ));
        }
        if let Err(e) = self.node().checkpoint(&sid, dir, false).await {
            self.memory.release(&key);
            // It keeps running (a failed checkpoint thaws it); if it died
            // meanwhile, the watch records how.
            self.watch(sid);
            return Err(e.into());
        }
        self.store().pause_sandbox(id).await?;
        self.memory.set_paused(id, Some(rec.spec.auto_resume));
        if let Err(e) = self.node().destroy(&sid).await {
            warn!(sandbox_id = id, error = %e, "releasing a paused sandbox failed");
        }
        self.readiness().forget(id);
        self.invalidate_route(id);
        info!(
            sandbox_id = id,
            micros = started.elapsed().as_micros() as u64,
            "paused"
        );
        Ok(())
    }

    /// Resumes a paused sandbox under its own id (same tunnel URLs; a new
    /// network address). Concurrent calls resume it once. A running
    /// sandbox is left alone.
    pub async fn resume(&self, id: &str) -> Result<(), ApiError> {
        let lock = self.memory.lock(id);
        let _held = lock.lock().await;
        let rec = self
            .store()
            .get_sandbox_unscoped(id)
            .await?
            .ok_or_else(|| ApiError::not_found(id))?;
        match rec.state {
            SandboxState::Running => return Ok(()),
            SandboxState::Paused => {}
            s => return Err(state_error(id, s)),
        }
        let sid = sandbox_id(id)?;
        let image_id = rec.image_id.clone().ok_or_else(|| {
            ApiError::new(
                ErrorCode::SnapshotFailed,
                "the paused sandbox's image is unknown",
            )
        })?;
        let started = std::time::Instant::now();
        let dir = self.memory.pause_dir(id);
        let req = restore_request(sid.clone(), &image_id, &rec.spec);
        let (restored, _) = self.node().restore(req, dir.clone()).await?;
        // Its background execs kept their streams in this process; only
        // after a restart of `warren serve` do they come back as new ones.
        crate::execs::adopt_restored(self, &rec, restored.execs);
        self.store().resume_sandbox(id).await?;
        self.memory.set_paused(id, None);
        self.readiness()
            .track(self.node(), id, rec.spec.network.readiness_probe.clone());
        self.watch(sid);
        self.invalidate_route(id);
        let node = self.node().clone();
        if let Err(e) = node.remove_checkpoint(dir).await {
            warn!(sandbox_id = id, error = %e, "removing a resumed sandbox's checkpoint failed");
        }
        self.memory.release(&pause_key(id));
        info!(
            sandbox_id = id,
            micros = started.elapsed().as_micros() as u64,
            "resumed"
        );
        Ok(())
    }

    /// Resumes `id` when it is paused with `auto_resume` (a tunnel
    /// connection, an exec or a file operation is waiting); `Ok(false)` when
    /// it is not paused here.
    pub async fn auto_resume(&self, id: &str) -> Result<bool, ApiError> {
        match self.memory.paused(id) {
            Some(true) => self.resume(id).await.map(|()| true),
            Some(false) => Err(state_error(id, SandboxState::Paused)),
            None => Ok(false),
        }
    }

    /// `on_idle: pause`: pauses `id` in the background (once at a time);
    /// if pausing fails, the idle timeout ends it as it would without.
    pub(crate) fn pause_on_idle(&self, id: String) {
        if !self
            .memory
            .pausing
            .lock()
            .expect("pausing lock poisoned")
            .insert(id.clone())
        {
            return;
        }
        let sup = self.clone();
        tokio::spawn(async move {
            if let Err(e) = sup.pause(&id).await {
                warn!(sandbox_id = %id, code = e.code.as_str(), error = %e.message, "pausing an idle sandbox failed; terminating it");
                let t = Termination::new(TerminationReason::IdleTimeout).with_detail(format!(
                    "on_idle: pause failed ({}: {})",
                    e.code.as_str(),
                    e.message
                ));
                if let Err(err) = sup.terminate(&id, t).await {
                    warn!(sandbox_id = %id, error = ?err, "ending an idle sandbox failed");
                }
            }
            sup.memory
                .pausing
                .lock()
                .expect("pausing lock poisoned")
                .remove(&id);
        });
    }

    /// Restores the checkpoint in `from` as the `creating` sandbox `rec` and
    /// starts watching it; returns when it was marked running (`None` if it
    /// already ended). A failed restore discards the record: nothing was
    /// created.
    async fn start_restored(
        &self,
        rec: &SandboxRecord,
        image_id: &str,
        from: PathBuf,
    ) -> Result<Option<i64>, ApiError> {
        let sid = sandbox_id(&rec.id)?;
        let req = restore_request(sid.clone(), image_id, &rec.spec);
        let image_id = match self.node().restore(req, from).await {
            Ok((restored, image_id)) => {
                crate::execs::adopt_restored(self, rec, restored.execs);
                image_id
            }
            Err(e) => {
                if let Err(d) = self.store().discard_sandbox(&rec.id).await {
                    warn!(sandbox_id = %rec.id, error = %d, "discarding a failed restore's record failed");
                }
                return Err(e.into());
            }
        };
        let started = self
            .store()
            .mark_running_at(&rec.id, Some(&image_id))
            .await?;
        self.readiness().track(
            self.node(),
            &rec.id,
            rec.spec.network.readiness_probe.clone(),
        );
        self.watch(sid);
        Ok(started)
    }
}

/// Restores a checkpoint as a new sandbox of `workspace_id` (a new id,
/// hostname and address) with `spec`, and answers with it running.
#[allow(clippy::too_many_arguments)]
async fn create_restored(
    state: &AppState,
    workspace_id: &str,
    name: Option<String>,
    tags: std::collections::BTreeMap<String, String>,
    spec: warren_store::SandboxSpec,
    image: String,
    image_id: &str,
    from: PathBuf,
) -> Result<api::Sandbox, ApiError> {
    let tcp: Vec<u16> = spec
        .network
        .ports
        .iter()
        .filter(|p| p.kind == PortKind::Tcp)
        .map(|p| p.port)
        .collect();
    if !spec.network.ports.is_empty() && state.tunnels.is_none() {
        return Err(ApiError::new(
            ErrorCode::RelayUnavailable,
            "this server runs without a relay, so it cannot expose ports",
        ));
    }
    let id = warren_store::new_sandbox_id();
    let rec = state
        .store
        .insert_sandbox(&NewSandbox {
            id: id.clone(),
            workspace_id: workspace_id.to_string(),
            name,
            image,
            spec,
            tags,
            node_id: warren_store::LOCAL_NODE_ID.into(),
        })
        .await?;
    if !tcp.is_empty() {
        let range = state
            .tunnels
            .as_ref()
            .map(|t| t.raw_port_range)
            .unwrap_or((0, 0));
        if let Err(e) = state.store.assign_relay_ports(&id, &tcp, range).await {
            let _ = state.store.discard_sandbox(&id).await;
            return Err(ApiError::new(ErrorCode::CapacityExhausted, e.to_string()));
        }
    }
    let started = std::time::Instant::now();
    let started_at = state
        .supervisor
        .start_restored(&rec, image_id, from)
        .await
        .inspect_err(|_| {
            state
                .metrics
                .creates_failed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        })?;
    state.metrics.create_latency.observe(started.elapsed());
    if !tcp.is_empty() {
        if let Some(t) = &state.tunnels {
            t.resync().await;
        }
    }
    let rec = match started_at {
        Some(t) => SandboxRecord {
            state: SandboxState::Running,
            started_at: Some(t),
            last_activity_at: t,
            ..rec
        },
        None => state
            .store
            .get_sandbox(workspace_id, &id)
            .await?
            .ok_or_else(|| ApiError::not_found(&id))?,
    };
    Ok(to_api(state, &rec))
}

/// The spec of a sandbox restored from a memory snapshot: the source's,
/// with what the request sets instead (limits, timeouts, network,
/// auto-resume and idle behaviour).
fn restored_spec(
    source: &warren_store::SandboxSpec,
    req: &CreateSandboxRequest,
    msnap_id: &str,
) -> warren_store::SandboxSpec {
    let mut spec = source.clone();
    spec.memory_snapshots = true;
    spec.from_memory_snapshot = Some(msnap_id.to_string());
    if let Some(t) = req.timeout_secs {
        spec.timeout_secs = Some(t);
    }
    if req.idle_timeout_secs.is_some() {
        spec.idle_timeout_secs = req.idle_timeout_secs;
    }
    if req.cpu.is_some() {
        spec.cpu = req.cpu;
    }
    if req.memory_mib.is_some() {
        spec.memory_mib = req.memory_mib;
    }
    let sets_network = req.block_network
        || req.outbound_cidr_allowlist.is_some()
        || !req.encrypted_ports.is_empty()
        || !req.h2_ports.is_empty()
        || !req.unencrypted_ports.is_empty()
        || req.readiness_probe.is_some();
    if sets_network {
        spec.network = crate::sandboxes::network_spec(req);
    }
    if req.auto_resume {
        spec.auto_resume = true;
    }
    if let Some(on_idle) = req.on_idle {
        spec.pause_on_idle = on_idle == api::OnIdle::Pause;
    }
    spec
}

/// `POST /v1/sandboxes` with `from_memory_snapshot` (validated).
pub(crate) async fn create_from_memory_snapshot(
    state: &AppState,
    auth: &Auth,
    req: &CreateSandboxRequest,
) -> Result<(StatusCode, Json<api::Sandbox>), ApiError> {
    let msnap_id = req
        .from_memory_snapshot
        .as_deref()
        .expect("only called with from_memory_snapshot");
    let lock = state.supervisor.memory.lock(msnap_id);
    let _held = lock.lock().await;
    let m = state
        .store
        .get_memory_snapshot(&auth.0.workspace_id, msnap_id)
        .await?
        .ok_or_else(|| msnap_not_found(msnap_id))?;
    let spec = restored_spec(&m.spec, req, msnap_id);
    let sb = create_restored(
        state,
        &auth.0.workspace_id,
        req.name.clone(),
        req.tags.clone(),
        spec,
        m.image.clone(),
        &m.image_id,
        state.supervisor.memory.snapshot_dir(msnap_id),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(sb)))
}

fn msnap_not_found(id: &str) -> ApiError {
    ApiError::new(
        ErrorCode::MemorySnapshotNotFound,
        format!("memory snapshot {id} not found"),
    )
}

fn to_api_msnap(r: &MemorySnapshotRecord) -> api::MemorySnapshot {
    api::MemorySnapshot {
        id: r.id.clone(),
        sandbox_id: r.sandbox_id.clone(),
        image: r.image_id.clone(),
        created_at: to_iso(r.created_at),
        bytes: r.bytes,
        expires_at: r.expires_at.map(to_iso),
    }
}

/// The caller's running, checkpointable sandbox `id` (a paused one with
/// `auto_resume` is resumed first).
async fn checkpointable(
    state: &AppState,
    auth: &Auth,
    id: &str,
) -> Result<SandboxRecord, ApiError> {
    let rec = running(state, auth, id).await?;
    if !rec.spec.memory_snapshots {
        return Err(not_checkpointable(id));
    }
    Ok(rec)
}

/// `POST /v1/sandboxes/{id}/snapshot-memory`
#[utoipa::path(post, path = "/v1/sandboxes/{id}/snapshot-memory", tag = "memory snapshots",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body(content = Option<api::SnapshotMemoryRequest>, description = "Optional"),
    responses((status = 201, description = "The memory snapshot; the sandbox keeps running", body = api::MemorySnapshot),
        (status = 400, description = "invalid_argument / invalid_json", body = api::ErrorBody),
        (status = 404, description = "sandbox_not_found", body = api::ErrorBody),
        (status = 409, description = "sandbox_not_checkpointable / sandbox_paused / sandbox_terminated / sandbox_not_running", body = api::ErrorBody),
        (status = 500, description = "snapshot_failed", body = api::ErrorBody),
        (status = 501, description = "snapshot_unavailable", body = api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn snapshot_memory(
    State(state): State<AppState>,
    auth: Auth,
    UrlPath(id): UrlPath<String>,
    bytes: Bytes,
) -> Result<(StatusCode, Json<api::MemorySnapshot>), ApiError> {
    let req: api::SnapshotMemoryRequest = optional_body(&bytes)?;
    api::validate_ttl(req.ttl_secs).map_err(ApiError::invalid)?;
    let rec = checkpointable(&state, &auth, &id).await?;
    let mem = &state.supervisor.memory;
    let lock = mem.lock(&rec.id);
    let _held = lock.lock().await;
    let _busy = state.supervisor.busy(&rec.id);
    let sid = sandbox_id(&rec.id)?;
    let image_id = image_of(&state.node, &rec)?;
    let msnap_id = warren_store::new_memory_snapshot_id();
    mem.hold(&state.node, &msnap_id, &image_id).await?;
    let dir = mem.snapshot_dir(&msnap_id);
    let out = match state.node.checkpoint(&sid, dir.clone(), true).await {
        Ok(o) => o,
        Err(e) => {
            mem.release(&msnap_id);
            return Err(e.into());
        }
    };
    let expires_at = req
        .ttl_secs
        .map(|t| now_ms().saturating_add((t as i64).saturating_mul(1000)));
    let record = MemorySnapshotRecord {
        id: msnap_id.clone(),
        workspace_id: auth.0.workspace_id.clone(),
        sandbox_id: rec.id.clone(),
        image: rec.image.clone(),
        image_id,
        spec: rec.spec.clone(),
        bytes: out.bytes,
        created_at: 0,
        expires_at,
        node_id: rec.node_id.clone(),
    };
    let record = match state.store.insert_memory_snapshot(&record).await {
        Ok(r) => r,
        Err(e) => {
            let _ = state.node.remove_checkpoint(dir).await;
            mem.release(&msnap_id);
            return Err(e.into());
        }
    };
    info!(sandbox_id = %rec.id, memory_snapshot = %msnap_id, bytes = out.bytes, micros = out.total_micros, "memory snapshot");
    Ok((StatusCode::CREATED, Json(to_api_msnap(&record))))
}

/// `GET /v1/memory-snapshots`
#[utoipa::path(get, path = "/v1/memory-snapshots", tag = "memory snapshots",
    responses((status = 200, description = "Newest first", body = api::MemorySnapshotList),
        (status = 401, description = "unauthenticated", body = api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    auth: Auth,
) -> Result<Json<api::MemorySnapshotList>, ApiError> {
    let items = state
        .store
        .list_memory_snapshots(&auth.0.workspace_id)
        .await?;
    Ok(Json(api::MemorySnapshotList {
        memory_snapshots: items.iter().map(to_api_msnap).collect(),
    }))
}

/// `GET /v1/memory-snapshots/{id}`
#[utoipa::path(get, path = "/v1/memory-snapshots/{id}", tag = "memory snapshots",
    params(("id" = String, Path, description = "Memory snapshot id (msnap-...)")),
    responses((status = 200, body = api::MemorySnapshot),
        (status = 404, description = "memory_snapshot_not_found", body = api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_one(
    State(state): State<AppState>,
    auth: Auth,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<api::MemorySnapshot>, ApiError> {
    if !api::is_memory_snapshot_id(&id) {
        return Err(msnap_not_found(&id));
    }
    let m = state
        .store
        .get_memory_snapshot(&auth.0.workspace_id, &id)
        .await?
        .ok_or_else(|| msnap_not_found(&id))?;
    Ok(Json(to_api_msnap(&m)))
}

/// `DELETE /v1/memory-snapshots/{id}`: removes the record and the
/// checkpoint, and releases its image. Sandboxes restored from it keep
/// running.
#[utoipa::path(delete, path = "/v1/memory-snapshots/{id}", tag = "memory snapshots",
    params(("id" = String, Path, description = "Memory snapshot id (msnap-...)")),
    responses((status = 204, description = "Removed"),
        (status = 404, description = "memory_snapshot_not_found", body = api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn remove(
    State(state): State<AppState>,
    auth: Auth,
    UrlPath(id): UrlPath<String>,
) -> Result<StatusCode, ApiError> {
    if !api::is_memory_snapshot_id(&id) {
        return Err(msnap_not_found(&id));
    }
    let mem = &state.supervisor.memory;
    let lock = mem.lock(&id);
    let _held = lock.lock().await;
    if !state
        .store
        .delete_memory_snapshot(Some(&auth.0.workspace_id), &id)
        .await?
    {
        return Err(msnap_not_found(&id));
    }
    remove_files(&state.supervisor, &id).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Removes a memory snapshot's checkpoint and releases its image.
async fn remove_files(sup: &Supervisor, id: &str) {
    let dir = sup.memory.snapshot_dir(id);
    if let Err(e) = sup.node().remove_checkpoint(dir).await {
        warn!(memory_snapshot = id, error = %e, "removing a memory snapshot's checkpoint failed");
    }
    sup.memory.release(id);
    sup.memory
        .locks
        .lock()
        .expect("memory locks poisoned")
        .remove(id);
}

/// Removes memory snapshots whose TTL passed (the sweeper, every second).
pub(crate) async fn expire_memory_snapshots(sup: &Supervisor) {
    let expired = match sup.store().expired_memory_snapshots(now_ms()).await {
        Ok(v) => v,
        Err(e) => {
            warn!(error = %e, "listing expired memory snapshots failed");
            return;
        }
    };
    for m in expired {
        let lock = sup.memory.lock(&m.id);
        let _held = lock.lock().await;
        match sup.store().delete_memory_snapshot(None, &m.id).await {
            Ok(true) => {
                info!(memory_snapshot = %m.id, "removed an expired memory snapshot");
                remove_files(sup, &m.id).await;
            }
            Ok(false) => {}
            Err(e) => {
                warn!(memory_snapshot = %m.id, error = %e, "removing an expired memory snapshot failed")
            }
        }
    }
}

/// After a restart: holds the images of every memory snapshot again.
pub(crate) async fn adopt_memory_snapshots(sup: &Supervisor) {
    let all = match sup.store().all_memory_snapshots().await {
        Ok(v) => v,
        Err(e) => {
            warn!(error = %e, "listing memory snapshots failed");
            return;
        }
    };
    for m in all {
        if !sup.memory.snapshot_dir(&m.id).exists() {
            warn!(memory_snapshot = %m.id, "a memory snapshot's checkpoint is missing");
        }
        if let Err(e) = sup.memory.hold(sup.node(), &m.id, &m.image_id).await {
            warn!(memory_snapshot = %m.id, image = %m.image_id, error = %e.message, "holding a memory snapshot's image failed");
        }
    }
}

/// `POST /v1/sandboxes/{id}/fork`
#[utoipa::path(post, path = "/v1/sandboxes/{id}/fork", tag = "memory snapshots",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body(content = Option<api::ForkRequest>, description = "Optional; count defaults to 1"),
    responses((status = 201, description = "The running copies (new ids, hostnames and addresses); the source keeps running", body = api::ForkResult),
        (status = 400, description = "invalid_argument / invalid_json", body = api::ErrorBody),
        (status = 404, description = "sandbox_not_found", body = api::ErrorBody),
        (status = 409, description = "sandbox_not_checkpointable / sandbox_paused / sandbox_terminated / sandbox_not_running", body = api::ErrorBody),
        (status = 500, description = "snapshot_failed (copies made before the failure are terminated)", body = api::ErrorBody),
        (status = 501, description = "snapshot_unavailable", body = api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn fork(
    State(state): State<AppState>,
    auth: Auth,
    UrlPath(id): UrlPath<String>,
    bytes: Bytes,
) -> Result<(StatusCode, Json<api::ForkResult>), ApiError> {
    use futures_util::StreamExt;
    let req: api::ForkRequest = optional_body(&bytes)?;
    api::validate_fork(&req).map_err(ApiError::invalid)?;
    let rec = checkpointable(&state, &auth, &id).await?;
    let mem = state.supervisor.memory.clone();
    let image_id = image_of(&state.node, &rec)?;
    let dir = mem.fork_dir();
    let key = format!("fork:{}", dir.display());
    mem.hold(&state.node, &key, &image_id).await?;
    let checkpointed = {
        let lock = mem.lock(&rec.id);
        let _held = lock.lock().await;
        let _busy = state.supervisor.busy(&rec.id);
        state
            .node
            .checkpoint(&sandbox_id(&rec.id)?, dir.clone(), true)
            .await
    };
    if let Err(e) = checkpointed {
        mem.release(&key);
        return Err(e.into());
    }
    let mut spec = rec.spec.clone();
    spec.from_memory_snapshot = None;
    let results: Vec<Result<api::Sandbox, ApiError>> = futures_util::stream::iter(0..req.count)
        .map(|_| {
            create_restored(
                &state,
                &auth.0.workspace_id,
                None,
                rec.tags.clone(),
                spec.clone(),
                rec.image.clone(),
                &image_id,
                dir.clone(),
            )
        })
        .buffered(FORK_PARALLELISM)
        .collect()
        .await;
    if let Err(e) = state.node.remove_checkpoint(dir).await {
        warn!(sandbox_id = %rec.id, error = %e, "removing a fork's checkpoint failed");
    }
    mem.release(&key);
    let made = results.iter().filter(|r| r.is_ok()).count();
    if made < results.len() {
        for sb in results.iter().flatten() {
            let t = Termination::new(TerminationReason::Error)
                .with_detail(format!("fork of {} rolled back", rec.id));
            if let Err(e) = state.supervisor.terminate(&sb.id, t).await {
                warn!(sandbox_id = %sb.id, error = ?e, "rolling back a fork copy failed");
            }
        }
        let first = results
            .into_iter()
            .find_map(Result::err)
            .expect("a failed copy exists");
        return Err(ApiError::new(
            first.code,
            format!(
                "fork failed: {made} of {} copies were made and then terminated; the first failure: {}",
                req.count, first.message
            ),
        ));
    }
    let sandboxes = results.into_iter().flatten().collect();
    Ok((StatusCode::CREATED, Json(api::ForkResult { sandboxes })))
}

/// `POST /v1/sandboxes/{id}/pause`
#[utoipa::path(post, path = "/v1/sandboxes/{id}/pause", tag = "memory snapshots",
    params(("id" = String, Path, description = "Sandbox id")),
    responses((status = 200, description = "The sandbox, paused (its memory and CPU released; same id; no timeout runs)", body = api::Sandbox),
        (status = 404, description = "sandbox_not_found", body = api::ErrorBody),
        (status = 409, description = "sandbox_not_checkpointable / sandbox_terminated / sandbox_not_running", body = api::ErrorBody),
        (status = 500, description = "snapshot_failed", body = api::ErrorBody),
        (status = 501, description = "snapshot_unavailable", body = api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn pause(
    State(state): State<AppState>,
    auth: Auth,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<api::Sandbox>, ApiError> {
    let rec = crate::sandboxes::load(&state, &auth, &id).await?;
    match rec.state {
        SandboxState::Running | SandboxState::Paused => {}
        s => return Err(state_error(&id, s)),
    }
    if !rec.spec.memory_snapshots {
        return Err(not_checkpointable(&id));
    }
    state.supervisor.pause(&id).await?;
    Ok(Json(to_api(
        &state,
        &crate::sandboxes::load(&state, &auth, &id).await?,
    )))
}

/// `POST /v1/sandboxes/{id}/resume`
#[utoipa::path(post, path = "/v1/sandboxes/{id}/resume", tag = "memory snapshots",
    params(("id" = String, Path, description = "Sandbox id")),
    responses((status = 200, description = "The sandbox, running again under the same id (a new network address)", body = api::Sandbox),
        (status = 404, description = "sandbox_not_found", body = api::ErrorBody),
        (status = 409, description = "sandbox_terminated / sandbox_not_running", body = api::ErrorBody),
        (status = 422, description = "snapshot_corrupt (it stays paused)", body = api::ErrorBody),
        (status = 501, description = "snapshot_unavailable", body = api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn resume(
    State(state): State<AppState>,
    auth: Auth,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<api::Sandbox>, ApiError> {
    let rec = crate::sandboxes::load(&state, &auth, &id).await?;
    match rec.state {
        SandboxState::Running | SandboxState::Paused => {}
        s => return Err(state_error(&id, s)),
    }
    state.supervisor.resume(&id).await?;
    Ok(Json(to_api(
        &state,
        &crate::sandboxes::load(&state, &auth, &id).await?,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restored_spec_overrides_only_what_is_given() {
        let mut source = warren_store::SandboxSpec {
            command: vec!["python3".into()],
            timeout_secs: Some(100),
            cpu: Some(1.0),
            auto_resume: false,
            ..Default::default()
        };
        source.network.block_network = true;
        let req: CreateSandboxRequest = serde_json::from_str(
            r#"{"from_memory_snapshot": "msnap-a", "timeout_secs": 50, "auto_resume": true}"#,
        )
        .unwrap();
        let spec = restored_spec(&source, &req, "msnap-a");
        assert_eq!(spec.command, source.command);
        assert_eq!(spec.timeout_secs, Some(50));
        assert_eq!(spec.cpu, Some(1.0));
        assert!(spec.auto_resume && spec.memory_snapshots);
        assert!(spec.network.block_network, "network inherited");
        assert_eq!(spec.from_memory_snapshot.as_deref(), Some("msnap-a"));
        let req: CreateSandboxRequest = serde_json::from_str(
            r#"{"from_memory_snapshot": "msnap-a", "encrypted_ports": [8000], "on_idle": "pause", "idle_timeout_secs": 3}"#,
        )
        .unwrap();
        let spec = restored_spec(&source, &req, "msnap-a");
        assert!(!spec.network.block_network, "network from the request");
        assert_eq!(spec.network.ports.len(), 1);
        assert!(spec.pause_on_idle);
        assert_eq!(spec.idle_timeout_secs, Some(3));
    }

    #[test]
    fn restore_requests_carry_limits_and_network() {
        let spec = warren_store::SandboxSpec {
            cpu: Some(0.5),
            memory_mib: Some(64),
            disk_mib: Some(10),
            ..Default::default()
        };
        let r = restore_request(SandboxId::new("sb-x").unwrap(), "sha256:ab", &spec);
        assert_eq!(r.image, "sha256:ab");
        assert_eq!(r.limits.cpu_millis, Some(500));
        assert_eq!(r.limits.memory_bytes, Some(64 << 20));
        assert_eq!(r.limits.disk_bytes, None);
        assert!(r.command.is_none());
    }
}
