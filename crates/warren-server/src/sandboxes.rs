//! `/v1/sandboxes`: create, list, get, tags, terminate, wait, exec.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use warren_node::{BufferedExec, CreateRequest};
use warren_proto::api::{
    self, CreateSandboxRequest, ErrorCode, ExecRequest, ExecResult, SandboxList, SetTagsRequest,
};
use warren_runtime::{Limits, SandboxId};
use warren_store::{
    ExposedPort, ListFilter, NewSandbox, PortKind, SandboxRecord, SandboxState, Termination,
    TerminationReason,
};

use crate::auth::Auth;
use crate::{ApiError, AppState};

/// Turns a JSON body rejection into the API's `invalid_json` error.
pub fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    b.map(|Json(v)| v)
        .map_err(|e| ApiError::new(ErrorCode::InvalidJson, e.body_text()))
}

pub fn to_iso(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a (year, month, day) civil date.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

pub fn to_api(app: &AppState, r: &SandboxRecord) -> api::Sandbox {
    let state = match r.state {
        SandboxState::Creating => api::SandboxState::Creating,
        SandboxState::Running => api::SandboxState::Running,
        SandboxState::Paused => api::SandboxState::Paused,
        SandboxState::Terminating => api::SandboxState::Terminating,
        SandboxState::Terminated => api::SandboxState::Terminated,
    };
    let termination = match (r.state, r.reason) {
        (SandboxState::Terminated, Some(reason)) => Some(api::Termination {
            reason: match reason {
                TerminationReason::Exited => api::TerminationReason::Exited,
                TerminationReason::Timeout => api::TerminationReason::Timeout,
                TerminationReason::IdleTimeout => api::TerminationReason::IdleTimeout,
                TerminationReason::OomKilled => api::TerminationReason::OomKilled,
                TerminationReason::Terminated => api::TerminationReason::Terminated,
                TerminationReason::NodeRestart => api::TerminationReason::NodeRestart,
                TerminationReason::Error => api::TerminationReason::Error,
            },
            exit_code: r.exit_code,
            detail: r.reason_detail.clone(),
        }),
        _ => None,
    };
    api::Sandbox {
        id: r.id.clone(),
        name: r.name.clone(),
        image: r.image.clone(),
        command: (!r.spec.command.is_empty()).then(|| r.spec.command.clone()),
        workdir: r.spec.workdir.clone().unwrap_or_else(|| "/".into()),
        state,
        tags: r.tags.clone(),
        timeout_secs: r.spec.timeout_secs.unwrap_or(api::DEFAULT_TIMEOUT_SECS),
        idle_timeout_secs: r.spec.idle_timeout_secs,
        cpu: r.spec.cpu,
        memory_mib: r.spec.memory_mib,
        disk_mib: r.spec.disk_mib,
        created_at: to_iso(r.created_at),
        started_at: r.started_at.map(to_iso),
        ended_at: r.ended_at.map(to_iso),
        termination,
        network: api::NetworkInfo {
            block_network: r.spec.network.block_network,
            outbound_cidr_allowlist: r.spec.network.outbound_cidr_allowlist.clone(),
            address: SandboxId::new(r.id.clone())
                .ok()
                .filter(|_| r.state == SandboxState::Running)
                .and_then(|id| app.node.address(&id))
                .map(|a| a.to_string()),
        },
        encrypted_ports: ports_of(r, PortKind::Https),
        h2_ports: ports_of(r, PortKind::H2),
        unencrypted_ports: r
            .spec
            .network
            .ports
            .iter()
            .filter(|p| p.kind == PortKind::Tcp)
            .map(|p| p.port)
            .collect(),
        readiness_probe: r.spec.network.readiness_probe.as_ref().map(|p| match p {
            warren_store::ReadinessProbe::Tcp(port) => api::ReadinessProbe::Tcp(*port),
            warren_store::ReadinessProbe::Exec(argv) => api::ReadinessProbe::Exec(argv.clone()),
        }),
        ready: r.state == SandboxState::Running && app.readiness.is_ready(&r.id),
        mounts: r
            .spec
            .mounts
            .iter()
            .map(|m| api::ImageMount {
                path: m.path.clone(),
                image: m.image.clone(),
            })
            .collect(),
        memory_snapshots: r.spec.memory_snapshots,
        auto_resume: r.spec.auto_resume,
        on_idle: if r.spec.pause_on_idle {
            api::OnIdle::Pause
        } else {
            api::OnIdle::Terminate
        },
        paused_at: r
            .paused_at
            .filter(|_| r.state == SandboxState::Paused)
            .map(to_iso),
        from_memory_snapshot: r.spec.from_memory_snapshot.clone(),
    }
}

fn ports_of(r: &SandboxRecord, kind: PortKind) -> Vec<api::PortSpec> {
    r.spec
        .network
        .ports
        .iter()
        .filter(|p| p.kind == kind)
        .map(|p| {
            if p.require_token {
                api::PortSpec::Detailed {
                    port: p.port,
                    require_token: true,
                }
            } else {
                api::PortSpec::Port(p.port)
            }
        })
        .collect()
}

pub(crate) async fn load(
    state: &AppState,
    auth: &Auth,
    id: &str,
) -> Result<SandboxRecord, ApiError> {
    state
        .store
        .get_sandbox(&auth.0.workspace_id, id)
        .await?
        .ok_or_else(|| ApiError::not_found(id))
}

/// The persisted form of a create request's network fields.
pub(crate) fn network_spec(req: &CreateSandboxRequest) -> warren_store::NetworkSpec {
    let exposed = |ports: &[api::PortSpec], kind| {
        ports
            .iter()
            .map(move |p| ExposedPort {
                port: p.port(),
                kind,
                require_token: p.require_token(),
            })
            .collect::<Vec<_>>()
    };
    let mut ports = exposed(&req.encrypted_ports, PortKind::Https);
    ports.extend(exposed(&req.h2_ports, PortKind::H2));
    ports.extend(req.unencrypted_ports.iter().map(|&port| ExposedPort {
        port,
        kind: PortKind::Tcp,
        require_token: false,
    }));
    warren_store::NetworkSpec {
        block_network: req.block_network,
        outbound_cidr_allowlist: req.outbound_cidr_allowlist.clone(),
        ports,
        readiness_probe: req.readiness_probe.as_ref().map(|p| match p {
            api::ReadinessProbe::Tcp(port) => warren_store::ReadinessProbe::Tcp(*port),
            api::ReadinessProbe::Exec(argv) => warren_store::ReadinessProbe::Exec(argv.clone()),
        }),
    }
}

fn env_list(env: &BTreeMap<String, String>) -> Vec<String> {
    env.iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// `POST /v1/sandboxes`
#[utoipa::path(post, path = "/v1/sandboxes", tag = "sandboxes", request_body = api::CreateSandboxRequest,
    responses((status = 201, description = "The sandbox, running", body = api::Sandbox), (status = 400, description = "invalid_argument / invalid_json", body = api::ErrorBody), (status = 401, description = "unauthenticated", body = api::ErrorBody),
        (status = 404, description = "image_not_found", body = api::ErrorBody), (status = 409, description = "name_conflict", body = api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    auth: Auth,
    req: Result<Json<CreateSandboxRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<api::Sandbox>), ApiError> {
    let req = body(req)?;
    api::validate_create(&req).map_err(ApiError::invalid)?;
    if req.from_memory_snapshot.is_some() {
        return crate::memory::create_from_memory_snapshot(&state, &auth, &req).await;
    }
    let image = req
        .image
        .clone()
        .unwrap_or_else(|| state.default_image.to_string());
    let id = warren_store::new_sandbox_id();
    let spec = warren_store::SandboxSpec {
        user: req.user.clone(),
        command: req.command.clone().unwrap_or_default(),
        env: req.env.clone(),
        workdir: req.workdir.clone(),
        cpu: req.cpu,
        memory_mib: req.memory_mib,
        disk_mib: req.disk_mib,
        timeout_secs: Some(req.timeout_secs.unwrap_or(api::DEFAULT_TIMEOUT_SECS)),
        idle_timeout_secs: req.idle_timeout_secs,
        network: network_spec(&req),
        mounts: req
            .mounts
            .iter()
            .map(|m| warren_store::ImageMountSpec {
                path: m.path.clone(),
                image: m.image.clone(),
            })
            .collect(),
        memory_snapshots: req.wants_memory_snapshots(),
        auto_resume: req.auto_resume,
        pause_on_idle: req.on_idle == Some(api::OnIdle::Pause),
        from_memory_snapshot: None,
    };
    let exposes = !spec.network.ports.is_empty();
    if exposes && state.tunnels.is_none() {
        return Err(ApiError::new(
            ErrorCode::RelayUnavailable,
            "this server runs without a relay, so it cannot expose ports",
        ));
    }
    let rec = state
        .store
        .insert_sandbox(&NewSandbox {
            id: id.clone(),
            workspace_id: auth.0.workspace_id.clone(),
            name: req.name.clone(),
            image: image.clone(),
            spec,
            tags: req.tags.clone(),
            node_id: warren_store::LOCAL_NODE_ID.into(),
        })
        .await?;
    let sid = SandboxId::new(id.clone()).map_err(|e| ApiError::internal("sandbox id", &e))?;
    if !req.unencrypted_ports.is_empty() {
        let range = state
            .tunnels
            .as_ref()
            .map(|t| t.raw_port_range)
            .unwrap_or((0, 0));
        if let Err(e) = state
            .store
            .assign_relay_ports(&id, &req.unencrypted_ports, range)
            .await
        {
            let t = Termination::new(TerminationReason::Error).with_detail(e.to_string());
            let _ = state.store.finish_sandbox(&id, &t).await;
            return Err(ApiError::new(ErrorCode::CapacityExhausted, e.to_string()));
        }
    }
    let node_req = CreateRequest {
        id: sid,
        image,
        command: req.command.clone(),
        env: env_list(&req.env),
        workdir: req.workdir.clone(),
        user: req.user.clone(),
        use_image_command: req.use_image_command,
        limits: Limits {
            cpu_millis: req.cpu.map(|c| (c * 1000.0).round() as u64),
            memory_bytes: req.memory_mib.map(|m| m << 20),
            pids: None,
            disk_bytes: req.disk_mib.map(|d| d << 20),
        },
        log_capacity: Some(crate::logs::LOG_CAPACITY),
        network: warren_node::NetworkRequest {
            block_network: req.block_network,
            outbound_cidr_allowlist: req.outbound_cidr_allowlist.clone(),
        },
    };
    let started = std::time::Instant::now();
    let started_at = match state.supervisor.start(&rec, node_req).await {
        Ok(t) => t,
        Err(e) => {
            state
                .metrics
                .creates_failed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(e);
        }
    };
    state.metrics.create_latency.observe(started.elapsed());
    if !req.unencrypted_ports.is_empty() {
        if let Some(t) = &state.tunnels {
            t.resync().await;
        }
    }
    let rec = match started_at {
        // The common case: answer from what was written, no read-back.
        Some(t) => SandboxRecord {
            state: SandboxState::Running,
            started_at: Some(t),
            last_activity_at: t,
            ..rec
        },
        // It already ended (a very short command): report what is stored.
        None => load(&state, &auth, &id).await?,
    };
    Ok((StatusCode::CREATED, Json(to_api(&state, &rec))))
}

/// `GET /v1/sandboxes?tag=k=v&name=&state=&limit=&cursor=`
#[utoipa::path(get, path = "/v1/sandboxes", tag = "sandboxes",
    params(("tag" = Option<String>, Query, description = "KEY=VALUE; repeatable, all must match"),
        ("name" = Option<String>, Query, description = "Sandbox name"),
        ("state" = Option<String>, Query, description = "creating, running, paused, terminating or terminated"),
        ("limit" = Option<u32>, Query, description = "Page size, 1-1000 (default 100)"),
        ("cursor" = Option<String>, Query, description = "next_cursor of the previous page")),
    responses((status = 200, description = "Newest first", body = api::SandboxList), (status = 400, description = "invalid_argument / invalid_json", body = api::ErrorBody), (status = 401, description = "unauthenticated", body = api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    auth: Auth,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Json<SandboxList>, ApiError> {
    let mut filter = ListFilter::workspace(auth.0.workspace_id.clone());
    for (k, v) in params {
        match k.as_str() {
            "tag" => {
                let (tk, tv) = v
                    .split_once('=')
                    .ok_or_else(|| ApiError::invalid("tag filters are KEY=VALUE"))?;
                filter.tags.insert(tk.to_string(), tv.to_string());
            }
            "name" => filter.name = Some(v),
            "state" => {
                filter.state = Some(v.parse().map_err(|_| {
                    ApiError::invalid(
                        "state must be creating, running, paused, terminating or terminated",
                    )
                })?)
            }
            "limit" => {
                filter.limit = Some(
                    v.parse()
                        .map_err(|_| ApiError::invalid("limit must be a number from 1 to 1000"))?,
                )
            }
            "cursor" => filter.cursor = Some(v),
            other => {
                return Err(ApiError::invalid(format!(
                    "unknown query parameter {other:?}"
                )))
            }
        }
    }
    let page = state.store.list_sandboxes(&filter).await?;
    Ok(Json(SandboxList {
        sandboxes: page.items.iter().map(|r| to_api(&state, r)).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// `GET /v1/sandboxes/{id}`
#[utoipa::path(get, path = "/v1/sandboxes/{id}", tag = "sandboxes", params(("id" = String, Path, description = "Sandbox id")),
    responses((status = 200, body = api::Sandbox), (status = 404, description = "sandbox_not_found", body = api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_one(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<api::Sandbox>, ApiError> {
    Ok(Json(to_api(&state, &load(&state, &auth, &id).await?)))
}

/// `PUT /v1/sandboxes/{id}/tags`
#[utoipa::path(put, path = "/v1/sandboxes/{id}/tags", tag = "sandboxes", params(("id" = String, Path, description = "Sandbox id")), request_body = api::SetTagsRequest,
    responses((status = 200, body = api::Sandbox), (status = 400, description = "invalid_argument / invalid_json", body = api::ErrorBody), (status = 401, description = "unauthenticated", body = api::ErrorBody), (status = 404, description = "sandbox_not_found", body = api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn set_tags(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    req: Result<Json<SetTagsRequest>, JsonRejection>,
) -> Result<Json<api::Sandbox>, ApiError> {
    let req = body(req)?;
    api::validate_tags(&req.tags).map_err(ApiError::invalid)?;
    load(&state, &auth, &id).await?;
    state
        .store
        .set_tags(&auth.0.workspace_id, &id, &req.tags)
        .await?;
    Ok(Json(to_api(&state, &load(&state, &auth, &id).await?)))
}

/// `POST /v1/sandboxes/{id}/terminate`
#[utoipa::path(post, path = "/v1/sandboxes/{id}/terminate", tag = "sandboxes", params(("id" = String, Path, description = "Sandbox id")),
    responses((status = 200, description = "The ended sandbox", body = api::Sandbox), (status = 404, description = "sandbox_not_found", body = api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn terminate(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<api::Sandbox>, ApiError> {
    let rec = load(&state, &auth, &id).await?;
    if rec.state != SandboxState::Terminated {
        let t = Termination::new(TerminationReason::Terminated).with_detail(format!(
            "terminated through the API by token {}",
            auth.0.token_id
        ));
        state.supervisor.terminate(&id, t).await?;
    }
    Ok(Json(to_api(&state, &load(&state, &auth, &id).await?)))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitQuery {
    timeout_secs: Option<u64>,
}

/// Longest a single wait request holds the connection.
const MAX_WAIT_SECS: u64 = 300;

/// `GET /v1/sandboxes/{id}/wait?timeout_secs=N`: returns as soon as the
/// sandbox has ended, or after the timeout with its current state.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/wait", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id"), ("timeout_secs" = Option<u64>, Query, description = "At most 300 (default 30)")),
    responses((status = 200, description = "The sandbox once ended, or its state at the timeout", body = api::Sandbox), (status = 404, description = "sandbox_not_found", body = api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn wait(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    Query(q): Query<WaitQuery>,
) -> Result<Json<api::Sandbox>, ApiError> {
    let secs = q.timeout_secs.unwrap_or(30);
    if secs > MAX_WAIT_SECS {
        return Err(ApiError::invalid(format!(
            "timeout_secs must be at most {MAX_WAIT_SECS}"
        )));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let notified = state.supervisor.ended().notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let rec = load(&state, &auth, &id).await?;
        if rec.state == SandboxState::Terminated {
            return Ok(Json(to_api(&state, &rec)));
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return Ok(Json(to_api(&state, &load(&state, &auth, &id).await?)));
        }
    }
}

/// `POST /v1/sandboxes/{id}/exec`: runs a command to completion and returns
/// its exit and (bounded) output.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/exec", tag = "sandboxes", params(("id" = String, Path, description = "Sandbox id")), request_body = api::ExecRequest,
    responses((status = 200, description = "How the command ended, with bounded output", body = api::ExecResult), (status = 400, description = "invalid_argument / invalid_json", body = api::ErrorBody), (status = 401, description = "unauthenticated", body = api::ErrorBody),
        (status = 404, description = "sandbox_not_found", body = api::ErrorBody), (status = 409, description = "sandbox_terminated / sandbox_not_running", body = api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn exec(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    req: Result<Json<ExecRequest>, JsonRejection>,
) -> Result<Json<ExecResult>, ApiError> {
    let req = body(req)?;
    api::validate_exec(&req).map_err(ApiError::invalid)?;
    let rec = running(&state, &auth, &id).await?;
    let sid = SandboxId::new(id.clone()).map_err(|e| ApiError::internal("sandbox id", &e))?;
    let ctx = exec_context(
        &state,
        &rec,
        &req.env,
        req.workdir.clone(),
        req.user.clone(),
    )
    .await?;
    let _busy = state.supervisor.busy(&id);
    state
        .metrics
        .execs
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let out = state
        .node
        .exec_buffered(
            &sid,
            BufferedExec {
                argv: req.command.clone(),
                env: ctx.env,
                workdir: ctx.workdir,
                timeout: req.timeout_secs.map(Duration::from_secs),
                stdin: req.stdin.map(String::into_bytes),
                user: ctx.user,
            },
        )
        .await
        .inspect_err(|_| {
            state
                .metrics
                .execs_failed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        })?;
    if out.exit.timed_out {
        state
            .metrics
            .execs_timed_out
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    let (exit_code, signal) = match out.exit.status {
        warren_runtime::ExitStatus::Code(c) => (c, None),
        warren_runtime::ExitStatus::Signal(s) => (128 + s, Some(s)),
    };
    Ok(Json(ExecResult {
        exit_code,
        signal,
        timed_out: out.exit.timed_out,
        oom_killed: out.exit.oom_killed,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        stdout_truncated: out.stdout_truncated,
        stderr_truncated: out.stderr_truncated,
    }))
}

/// The caller's sandbox `id`, which must be running (`sandbox_not_running`
/// while it starts, `sandbox_terminated` once it ended). A paused sandbox
/// is resumed first when it was created with `auto_resume` (the caller
/// waits; concurrent callers resume it once), else `sandbox_paused`.
pub(crate) async fn running(
    state: &AppState,
    auth: &Auth,
    id: &str,
) -> Result<SandboxRecord, ApiError> {
    let mut rec = load(state, auth, id).await?;
    if rec.state == SandboxState::Paused {
        if !rec.spec.auto_resume {
            return Err(ApiError::new(
                ErrorCode::SandboxPaused,
                format!("sandbox {id} is paused; resume it first (or create it with auto_resume)"),
            ));
        }
        state.supervisor.resume(id).await?;
        rec = load(state, auth, id).await?;
    }
    match rec.state {
        SandboxState::Running => Ok(rec),
        SandboxState::Creating => Err(ApiError::new(
            ErrorCode::SandboxNotRunning,
            "the sandbox is still starting",
        )),
        _ => Err(ApiError::new(
            ErrorCode::SandboxTerminated,
            format!("sandbox {id} has ended"),
        )),
    }
}

/// Validates a streaming or background exec's start frame and builds what
/// the node runs: the spec (with the sandbox's and image's defaults) and
/// its stdio (pipes with stdin, or a terminal of the asked size).
pub(crate) async fn start_spec(
    state: &AppState,
    rec: &SandboxRecord,
    start: &api::StreamExecStart,
) -> Result<(warren_runtime::ExecSpec, warren_runtime::ExecIo), ApiError> {
    api::validate_exec(&api::ExecRequest {
        command: start.command.clone(),
        env: start.env.clone(),
        workdir: start.workdir.clone(),
        timeout_secs: start.timeout_secs,
        stdin: None,
        user: start.user.clone(),
    })
    .map_err(ApiError::invalid)?;
    let ctx = exec_context(
        state,
        rec,
        &start.env,
        start.workdir.clone(),
        start.user.clone(),
    )
    .await?;
    let mut env = ctx.env;
    if start.tty.is_some() && !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push("TERM=xterm-256color".into());
    }
    let spec = warren_runtime::ExecSpec {
        argv: start.command.clone(),
        env,
        workdir: ctx.workdir,
        user: ctx.user,
        timeout: start.timeout_secs.map(Duration::from_secs),
    };
    let io = match start.tty {
        Some(t) => warren_runtime::ExecIo::Pty {
            rows: t.rows,
            cols: t.cols,
        },
        None => warren_runtime::ExecIo::Pipes { stdin: true },
    };
    Ok((spec, io))
}

/// What an exec inherits from its sandbox and image.
pub(crate) struct ExecContext {
    /// Image env, under the sandbox's, under the exec's; `HOME` from the
    /// user's passwd entry when none of them sets it.
    pub env: Vec<String>,
    pub user: warren_runtime::User,
    /// The exec's, else the sandbox's, else the image's, else `/`.
    pub workdir: String,
}

pub(crate) async fn exec_context(
    state: &AppState,
    rec: &SandboxRecord,
    env: &BTreeMap<String, String>,
    workdir: Option<String>,
    user: Option<String>,
) -> Result<ExecContext, ApiError> {
    // The exact image the sandbox runs (its id), even if its name moved.
    let image = rec.image_id.as_deref().unwrap_or(&rec.image);
    let (cfg, resolved) = state
        .node
        .exec_defaults(image, user.or(rec.spec.user.clone()))
        .await?;
    let mut all = warren_node::merge_env(&cfg.env, &env_list(&rec.spec.env));
    all = warren_node::merge_env(&all, &env_list(env));
    if let Some(home) = resolved.home.filter(|h| !h.is_empty()) {
        if !all.iter().any(|e| e.starts_with("HOME=")) {
            all.push(format!("HOME={home}"));
        }
    }
    Ok(ExecContext {
        env: all,
        user: resolved.user,
        workdir: workdir
            .or(rec.spec.workdir.clone())
            .or(cfg.workdir)
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::to_iso as iso;

    #[test]
    fn rfc3339_times() {
        assert_eq!(iso(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(iso(1_798_416_000_000), "2026-12-28T00:00:00.000Z");
    }
}
