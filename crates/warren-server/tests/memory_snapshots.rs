//! Issue #8's memory snapshots through the API: checkpoint and restore
//! (state in memory continues: a shell counter, a Python dict, a small
//! HTTP server), pause and resume under the same id, fork, auto-resume
//! through exec and through a tunnel, `on_idle: pause`, corrupt snapshots,
//! terminate while paused, a paused sandbox across a restart, the
//! refusals and their codes, and a leak check after all of it.
//!
//! The tests that checkpoint need CRIU 4.x (`scripts/install-criu.sh`):
//! without it they print `SKIP`, and fail under `CI=true`. Our own `main`
//! (libtest-mimic) because this binary is also the sandboxes' init.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use axum::http::StatusCode;
use libtest_mimic::{Arguments, Trial};
use serde_json::{json, Value};
use warren_server::{ServerConfig, TunnelsConfig};

#[macro_use]
mod common;

use common::{code, env, trial, Env, TestFn};

/// The CRIU the runtime runs by default.
const CRIU: &str = "/usr/local/sbin/criu";

/// A Python HTTP server whose state lives only in memory: a counter and a
/// dict. `/inc` counts, `/set/K=V` stores, every answer is the state.
const SERVER: &str = r#"
import http.server, json
state = {"count": 0, "items": {}}
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.startswith("/set/"):
            k, v = self.path[5:].split("=", 1)
            state["items"][k] = v
        elif self.path == "/inc":
            state["count"] += 1
        body = json.dumps(state, sort_keys=True).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", 8000), H).serve_forever()
"#;

fn needs_criu(name: &'static str) -> bool {
    warren_testkit::require(
        name,
        Path::new(CRIU).exists(),
        "needs CRIU 4.x at /usr/local/sbin/criu (scripts/install-criu.sh)",
    )
}

fn criu_trial(name: &'static str, f: TestFn) -> Trial {
    common::trial_with(name, f, needs_criu)
}

async fn exec(e: &Env, id: &str, argv: &[&str]) -> Result<(StatusCode, Value)> {
    e.admin(
        "POST",
        &format!("/v1/sandboxes/{id}/exec"),
        Some(json!({"command": argv, "timeout_secs": 60})),
    )
    .await
}

async fn sh(e: &Env, id: &str, script: &str) -> Result<String> {
    let (s, v) = exec(e, id, &["/bin/sh", "-c", script]).await?;
    ensure!(s == StatusCode::OK, "exec: {s} {v}");
    ensure!(v["exit_code"] == 0, "{script}: {v}");
    Ok(v["stdout"].as_str().unwrap_or_default().to_string())
}

/// GET `path` of the in-sandbox server, from inside the sandbox.
async fn get(e: &Env, id: &str, path: &str) -> Result<Value> {
    let py = format!(
        "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8000{path}', timeout=10).read().decode())"
    );
    let out = sh(e, id, &format!("python3 -c \"{py}\"")).await?;
    serde_json::from_str(out.trim()).with_context(|| format!("server answered {out:?}"))
}

/// A checkpointable sandbox whose main command runs the in-memory server
/// and a shell counter (a variable in a shell's memory, echoed to a file).
/// Both are part of the main command: a checkpoint needs every exec
/// finished.
async fn stateful(e: &Env, extra: Value) -> Result<String> {
    let mut body = json!({
        "memory_snapshots": true,
        "timeout_secs": 300,
        "command": ["/bin/sh", "-c",
            "(i=0; while :; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.02; done) & exec python3 -c \"$0\"",
            SERVER],
    });
    for (k, v) in extra.as_object().context("extra")? {
        body[k] = v.clone();
    }
    let id = e.create(body).await?;
    for _ in 0..200 {
        if get(e, &id, "/").await.is_ok() && counter(e, &id).await.is_ok() {
            return Ok(id);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the in-sandbox server never answered")
}

async fn counter(e: &Env, id: &str) -> Result<u64> {
    Ok(sh(e, id, "cat /tmp/counter").await?.trim().parse()?)
}

async fn snapshot_memory(e: &Env, id: &str, body: Value) -> Result<Value> {
    let (s, v) = e
        .admin(
            "POST",
            &format!("/v1/sandboxes/{id}/snapshot-memory"),
            Some(body),
        )
        .await?;
    ensure!(s == StatusCode::CREATED, "snapshot-memory: {s} {v}");
    Ok(v)
}

async fn state_of(e: &Env, id: &str) -> Result<Value> {
    let (s, v) = e.admin("GET", &format!("/v1/sandboxes/{id}"), None).await?;
    ensure!(s == StatusCode::OK, "get: {s} {v}");
    Ok(v)
}

async fn sandbox_count(e: &Env) -> Result<usize> {
    let (_, v) = e.admin("GET", "/v1/sandboxes?limit=1000", None).await?;
    Ok(v["sandboxes"].as_array().map(Vec::len).unwrap_or(0))
}

fn memory_dir(e: &Env) -> PathBuf {
    e.data.path().join("memory-snapshots")
}

// ------------------------------------------------ without a checkpoint ---

/// The refusals and validation, with their stable codes.
async fn refusals_and_validation() -> Result<()> {
    let e = env().await?;
    let plain = e.create(json!({"timeout_secs": 60})).await?;
    for path in ["snapshot-memory", "fork", "pause"] {
        let (s, v) = e
            .admin("POST", &format!("/v1/sandboxes/{plain}/{path}"), None)
            .await?;
        ensure!(
            s == StatusCode::CONFLICT && code(&v) == "sandbox_not_checkpointable",
            "{path}: {s} {v}"
        );
    }
    // Resuming a running sandbox changes nothing.
    let (s, v) = e
        .admin("POST", &format!("/v1/sandboxes/{plain}/resume"), None)
        .await?;
    ensure!(s == StatusCode::OK && v["state"] == "running", "{s} {v}");

    let cp = e
        .create(json!({"timeout_secs": 60, "auto_resume": true}))
        .await?;
    let v = state_of(&e, &cp).await?;
    ensure!(
        v["memory_snapshots"] == true && v["auto_resume"] == true && v["on_idle"] == "terminate",
        "implied by auto_resume: {v}"
    );
    let idle = e
        .create(json!({"on_idle": "pause", "idle_timeout_secs": 60}))
        .await?;
    let v = state_of(&e, &idle).await?;
    ensure!(
        v["memory_snapshots"] == true && v["on_idle"] == "pause",
        "{v}"
    );

    for (body, field) in [
        (json!({"on_idle": "pause"}), "idle_timeout_secs"),
        (
            json!({"memory_snapshots": true, "disk_mib": 16}),
            "disk_mib",
        ),
        (
            json!({"from_memory_snapshot": "msnap-abc", "image": "host"}),
            "image",
        ),
        (
            json!({"from_memory_snapshot": "msnap-abc", "command": ["sh"]}),
            "command",
        ),
        (
            json!({"from_memory_snapshot": "not-an-id"}),
            "from_memory_snapshot",
        ),
    ] {
        let (s, v) = e.admin("POST", "/v1/sandboxes", Some(body.clone())).await?;
        ensure!(
            s == StatusCode::BAD_REQUEST
                && code(&v) == "invalid_argument"
                && v["error"]["message"].as_str().unwrap_or("").contains(field),
            "{body}: {s} {v}"
        );
    }
    let (s, v) = e
        .admin("POST", "/v1/sandboxes", Some(json!({"on_idle": "sleep"})))
        .await?;
    ensure!(code(&v) == "invalid_json", "{s} {v}");
    for count in [0, 33] {
        let (s, v) = e
            .admin(
                "POST",
                &format!("/v1/sandboxes/{cp}/fork"),
                Some(json!({ "count": count })),
            )
            .await?;
        ensure!(code(&v) == "invalid_argument", "count {count}: {s} {v}");
    }
    let (s, v) = e
        .admin(
            "POST",
            &format!("/v1/sandboxes/{cp}/snapshot-memory"),
            Some(json!({"ttl_secs": 0})),
        )
        .await?;
    ensure!(code(&v) == "invalid_argument", "ttl 0: {s} {v}");

    // Unknown memory snapshots: 404 everywhere, and no sandbox record.
    let before = sandbox_count(&e).await?;
    let (s, v) = e
        .admin(
            "POST",
            "/v1/sandboxes",
            Some(json!({"from_memory_snapshot": "msnap-doesnotexist"})),
        )
        .await?;
    ensure!(
        s == StatusCode::NOT_FOUND && code(&v) == "memory_snapshot_not_found",
        "{s} {v}"
    );
    ensure!(sandbox_count(&e).await? == before, "a record was left");
    for (method, path) in [
        ("GET", "/v1/memory-snapshots/msnap-nope"),
        ("DELETE", "/v1/memory-snapshots/msnap-nope"),
        ("GET", "/v1/memory-snapshots/..%2Fetc"),
    ] {
        let (s, v) = e.admin(method, path, None).await?;
        ensure!(
            code(&v) == "memory_snapshot_not_found",
            "{method} {path}: {s} {v}"
        );
    }
    let (s, v) = e.admin("GET", "/v1/memory-snapshots", None).await?;
    ensure!(
        s == StatusCode::OK && v["memory_snapshots"] == json!([]),
        "{s} {v}"
    );
    let (s, v) = e.admin("GET", "/v1/sandboxes?state=paused", None).await?;
    ensure!(s == StatusCode::OK, "state=paused: {s} {v}");

    // An ended sandbox.
    let (s, _) = e
        .admin("POST", &format!("/v1/sandboxes/{cp}/terminate"), None)
        .await?;
    ensure!(s == StatusCode::OK);
    for path in ["snapshot-memory", "pause", "resume", "fork"] {
        let (s, v) = e
            .admin("POST", &format!("/v1/sandboxes/{cp}/{path}"), None)
            .await?;
        ensure!(code(&v) == "sandbox_terminated", "{path}: {s} {v}");
    }
    // Another workspace sees nothing.
    let (s, v) = e
        .call("GET", "/v1/memory-snapshots", Some("wrn_bogus"), None)
        .await?;
    ensure!(s == StatusCode::UNAUTHORIZED, "{s} {v}");

    // The OpenAPI document lists the endpoints and codes.
    let (_, doc) = e.admin("GET", "/v1/openapi.json", None).await?;
    for p in [
        "/v1/sandboxes/{id}/snapshot-memory",
        "/v1/sandboxes/{id}/fork",
        "/v1/sandboxes/{id}/pause",
        "/v1/sandboxes/{id}/resume",
        "/v1/memory-snapshots",
        "/v1/memory-snapshots/{id}",
    ] {
        ensure!(doc["paths"][p].is_object(), "openapi lacks {p}");
    }
    let codes = doc["components"]["schemas"]["ErrorCode"].to_string();
    for c in [
        "sandbox_paused",
        "sandbox_not_checkpointable",
        "memory_snapshot_not_found",
        "snapshot_corrupt",
        "snapshot_unavailable",
    ] {
        ensure!(codes.contains(c), "openapi lacks code {c}");
    }
    e.teardown().await;
    Ok(())
}

/// The workspace of the admin token.
async fn workspace_of(e: &Env) -> Result<String> {
    Ok(e.state
        .store
        .authenticate(&e.token)
        .await?
        .context("admin")?
        .workspace_id)
}

/// A memory snapshot whose checkpoint is damaged is refused with
/// `snapshot_corrupt`, and nothing is created (no record, nothing on the
/// node).
async fn corrupt_snapshot_is_refused() -> Result<()> {
    let e = env().await?;
    let ws = workspace_of(&e).await?;
    let image_id = e.state.node.image_id("host").await?;
    let id = "msnap-corrupttest";
    let dir = memory_dir(&e).join(id);
    std::fs::create_dir_all(dir.join("criu"))?;
    std::fs::write(
        dir.join("manifest.json"),
        b"{\"format_version\": 1, \"truncat",
    )?;
    std::fs::write(dir.join("criu/pages-1.img"), b"garbage")?;
    let spec = warren_store::SandboxSpec {
        memory_snapshots: true,
        timeout_secs: Some(60),
        ..Default::default()
    };
    e.state
        .store
        .insert_memory_snapshot(&warren_store::MemorySnapshotRecord {
            id: id.into(),
            workspace_id: ws,
            sandbox_id: "sb-gone".into(),
            image: "host".into(),
            image_id: image_id.clone(),
            spec,
            bytes: 7,
            created_at: 0,
            expires_at: None,
            node_id: warren_store::LOCAL_NODE_ID.into(),
        })
        .await?;
    let (s, v) = e
        .admin("GET", &format!("/v1/memory-snapshots/{id}"), None)
        .await?;
    ensure!(
        s == StatusCode::OK && v["image"] == image_id.as_str() && v["bytes"] == 7,
        "{s} {v}"
    );
    let before = sandbox_count(&e).await?;
    let (s, v) = e
        .admin(
            "POST",
            "/v1/sandboxes",
            Some(json!({"from_memory_snapshot": id, "name": "from-corrupt"})),
        )
        .await?;
    ensure!(
        s == StatusCode::UNPROCESSABLE_ENTITY && code(&v) == "snapshot_corrupt",
        "{s} {v}"
    );
    ensure!(
        sandbox_count(&e).await? == before,
        "a sandbox record was left"
    );
    // Its name is free: the record is gone, not terminated.
    let (s, v) = e
        .admin("GET", "/v1/sandboxes?name=from-corrupt", None)
        .await?;
    ensure!(s == StatusCode::OK && v["sandboxes"] == json!([]), "{v}");
    // Deleting removes the record and the directory.
    let (s, v) = e
        .admin("DELETE", &format!("/v1/memory-snapshots/{id}"), None)
        .await?;
    ensure!(s == StatusCode::NO_CONTENT, "{s} {v}");
    ensure!(!dir.exists(), "the checkpoint directory is still there");
    e.teardown().await;
    Ok(())
}

/// Stops a server the way a crash does: nothing is torn down, its
/// sandboxes and state stay; returns its data directory and token.
fn crash(e: Env) -> (tempfile::TempDir, String) {
    e.sweeper.abort();
    std::mem::forget(e.state);
    (e.data, e.token)
}

/// A new server on a crashed one's data directory.
async fn reopen(data: tempfile::TempDir, token: String) -> Result<Env> {
    let mut cfg = ServerConfig::new("127.0.0.1:0".parse()?, data.path());
    cfg.cgroup_parent = Some(common::cgroup_parent(data.path()));
    let state = warren_server::open(&cfg).await?;
    Ok(Env {
        sweeper: state.supervisor.spawn_sweeper(Duration::from_millis(100)),
        state,
        token,
        data,
    })
}

/// A paused sandbox (its record and checkpoint directory, made here by
/// hand) stays paused across a restart (a still-running runtime sandbox of
/// it is released), refuses execs and file operations with
/// `sandbox_paused`, is never listed as running, and terminates: reason
/// recorded, checkpoint deleted. With auto_resume, a damaged checkpoint
/// makes the exec fail with `snapshot_corrupt` and it stays paused.
async fn paused_sandbox_survives_restart_and_terminates() -> Result<()> {
    let (data, token, plain, auto) = std::thread::spawn(|| -> Result<_> {
        let rt = tokio::runtime::Runtime::new()?;
        let r = rt.block_on(async {
            let e = env().await?;
            let plain = e
                .create(json!({"memory_snapshots": true, "timeout_secs": 60}))
                .await?;
            let auto = e
                .create(json!({"auto_resume": true, "timeout_secs": 60}))
                .await?;
            for id in [&plain, &auto] {
                ensure!(e.state.store.pause_sandbox(id).await?, "pause {id}");
                let dir = memory_dir(&e).join("paused").join(id);
                std::fs::create_dir_all(&dir)?;
                std::fs::write(dir.join("manifest.json"), b"{}")?;
            }
            let (data, token) = crash(e);
            Ok::<_, anyhow::Error>((data, token, plain, auto))
        });
        rt.shutdown_background();
        r
    })
    .join()
    .map_err(|_| anyhow::anyhow!("first server panicked"))??;
    let e = reopen(data, token).await?;
    for id in [&plain, &auto] {
        let v = state_of(&e, id).await?;
        ensure!(
            v["state"] == "paused"
                && v["paused_at"].is_string()
                && v["network"]["address"].is_null(),
            "after the restart: {v}"
        );
    }
    let (_, running) = e.admin("GET", "/v1/sandboxes?state=running", None).await?;
    ensure!(
        running["sandboxes"] == json!([]),
        "listed as running: {running}"
    );
    let (_, paused) = e.admin("GET", "/v1/sandboxes?state=paused", None).await?;
    ensure!(
        paused["sandboxes"].as_array().map(Vec::len) == Some(2),
        "{paused}"
    );
    // The runtime sandboxes the first server left are gone.
    ensure!(
        e.state
            .node
            .address(&warren_runtime::SandboxId::new(plain.clone())?)
            .is_none(),
        "the paused sandbox still runs"
    );
    let (s, v) = exec(&e, &plain, &["true"]).await?;
    ensure!(
        s == StatusCode::CONFLICT && code(&v) == "sandbox_paused",
        "exec: {s} {v}"
    );
    let (s, v) = e
        .admin(
            "GET",
            &format!("/v1/sandboxes/{plain}/files/stat?path=/"),
            None,
        )
        .await?;
    ensure!(code(&v) == "sandbox_paused", "files: {s} {v}");
    let (s, v) = e
        .admin("GET", &format!("/v1/sandboxes/{plain}/logs"), None)
        .await?;
    ensure!(s == StatusCode::OK, "logs: {s} {v}");
    // auto_resume tries, the checkpoint is damaged: refused, still paused.
    let (s, v) = exec(&e, &auto, &["true"]).await?;
    ensure!(code(&v) == "snapshot_corrupt", "auto-resume exec: {s} {v}");
    ensure!(state_of(&e, &auto).await?["state"] == "paused");
    // Terminate while paused.
    for id in [&plain, &auto] {
        let (s, v) = e
            .admin("POST", &format!("/v1/sandboxes/{id}/terminate"), None)
            .await?;
        ensure!(
            s == StatusCode::OK
                && v["state"] == "terminated"
                && v["termination"]["reason"] == "terminated",
            "terminate: {s} {v}"
        );
        ensure!(
            !memory_dir(&e).join("paused").join(id.as_str()).exists(),
            "the checkpoint of {id} was not deleted"
        );
    }
    e.teardown().await;
    Ok(())
}

// --------------------------------------------------- with checkpoints ---

/// Checkpoint, then restore as a new sandbox: the counter, the dict and
/// the server continue from the checkpoint's state; the source keeps
/// running; the restored one has a new id and address; files and execs
/// work in it. Then a byte of the checkpoint is flipped: refused.
async fn checkpoint_and_restore_continue_state() -> Result<()> {
    let e = env().await?;
    let src = stateful(&e, json!({})).await?;
    get(&e, &src, "/set/fruit=apple").await?;
    for _ in 0..3 {
        get(&e, &src, "/inc").await?;
    }
    let m = snapshot_memory(&e, &src, json!({"ttl_secs": 600})).await?;
    let msnap = m["id"].as_str().context("id")?.to_string();
    ensure!(
        msnap.starts_with("msnap-")
            && m["sandbox_id"] == src.as_str()
            && m["image"].as_str().unwrap_or("").starts_with("sha256:")
            && m["bytes"].as_u64().unwrap_or(0) > 0
            && m["expires_at"].is_string(),
        "{m}"
    );
    let at_checkpoint = counter(&e, &src).await?;
    // The source continues.
    let after = get(&e, &src, "/inc").await?;
    ensure!(after["count"] == 4, "{after}");
    let (s, list) = e.admin("GET", "/v1/memory-snapshots", None).await?;
    ensure!(
        s == StatusCode::OK && list["memory_snapshots"][0]["id"] == msnap.as_str(),
        "{list}"
    );

    let (s, v) = e
        .admin(
            "POST",
            "/v1/sandboxes",
            Some(json!({"from_memory_snapshot": msnap, "name": "restored", "tags": {"k": "v"}})),
        )
        .await?;
    ensure!(
        s == StatusCode::CREATED && v["state"] == "running",
        "restore: {s} {v}"
    );
    let copy = v["id"].as_str().context("id")?.to_string();
    ensure!(copy != src, "same id");
    ensure!(v["from_memory_snapshot"] == msnap.as_str(), "{v}");
    let src_v = state_of(&e, &src).await?;
    if src_v["network"]["address"].is_string() {
        ensure!(
            v["network"]["address"] != src_v["network"]["address"],
            "same address: {v} {src_v}"
        );
    }
    // State from the checkpoint's instant, and it keeps going.
    let got = get(&e, &copy, "/inc").await?;
    ensure!(
        got["count"] == 4 && got["items"]["fruit"] == "apple",
        "restored server state: {got}"
    );
    let c = counter(&e, &copy).await?;
    ensure!(
        c >= at_checkpoint,
        "counter went back: {c} < {at_checkpoint}"
    );
    let mut moved = false;
    for _ in 0..100 {
        if counter(&e, &copy).await? > c {
            moved = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ensure!(moved, "the restored counter stopped");
    ensure!(
        sh(&e, &copy, "hostname").await?.trim() != sh(&e, &src, "hostname").await?.trim(),
        "same hostname"
    );
    // The file API works in the restored sandbox.
    let (s, _) = e
        .raw_call(
            "PUT",
            &format!("/v1/sandboxes/{copy}/files?path=/tmp/new.txt"),
            "application/octet-stream",
            b"hello".to_vec(),
        )
        .await?;
    ensure!(s.is_success(), "file write: {s}");
    ensure!(sh(&e, &copy, "cat /tmp/new.txt").await? == "hello");

    // Damage: one flipped byte in a page image.
    let dir = memory_dir(&e).join(&msnap);
    let page = std::fs::read_dir(dir.join("criu"))?
        .flatten()
        .map(|d| d.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("pages-"))
        })
        .context("no page image")?;
    let mut bytes = std::fs::read(&page)?;
    bytes[0] ^= 0xff;
    std::fs::write(&page, bytes)?;
    let before = sandbox_count(&e).await?;
    let (s, v) = e
        .admin(
            "POST",
            "/v1/sandboxes",
            Some(json!({"from_memory_snapshot": msnap})),
        )
        .await?;
    ensure!(code(&v) == "snapshot_corrupt", "corrupt restore: {s} {v}");
    ensure!(sandbox_count(&e).await? == before, "a record was left");
    let (s, _) = e
        .admin("DELETE", &format!("/v1/memory-snapshots/{msnap}"), None)
        .await?;
    ensure!(s == StatusCode::NO_CONTENT && !dir.exists());
    e.teardown().await;
    Ok(())
}

/// Pause releases the sandbox (no address, never running, no timeout) and
/// resume brings it back under the same id with the same state.
async fn pause_and_resume_keep_id_and_state() -> Result<()> {
    let e = env().await?;
    let id = stateful(&e, json!({"timeout_secs": 5})).await?;
    get(&e, &id, "/set/k=v1").await?;
    get(&e, &id, "/inc").await?;
    let c = counter(&e, &id).await?;
    let (s, v) = e
        .admin("POST", &format!("/v1/sandboxes/{id}/pause"), None)
        .await?;
    ensure!(
        s == StatusCode::OK && v["state"] == "paused",
        "pause: {s} {v}"
    );
    ensure!(v["network"]["address"].is_null(), "{v}");
    let (s, v) = exec(&e, &id, &["true"]).await?;
    ensure!(code(&v) == "sandbox_paused", "{s} {v}");
    // Past its 5 s lifetime while paused: no timeout runs.
    tokio::time::sleep(Duration::from_secs(6)).await;
    ensure!(
        state_of(&e, &id).await?["state"] == "paused",
        "timed out while paused"
    );
    let (s, v) = e
        .admin("POST", &format!("/v1/sandboxes/{id}/resume"), None)
        .await?;
    ensure!(
        s == StatusCode::OK && v["state"] == "running",
        "resume: {s} {v}"
    );
    ensure!(v["id"] == id.as_str());
    let got = get(&e, &id, "/inc").await?;
    ensure!(got["count"] == 2 && got["items"]["k"] == "v1", "{got}");
    ensure!(counter(&e, &id).await? >= c);
    ensure!(
        !memory_dir(&e).join("paused").join(&id).exists(),
        "the pause checkpoint was kept after resume"
    );
    // Pause again, terminate while paused.
    let (s, v) = e
        .admin("POST", &format!("/v1/sandboxes/{id}/pause"), None)
        .await?;
    ensure!(s == StatusCode::OK, "{s} {v}");
    let (_, v) = e
        .admin("POST", &format!("/v1/sandboxes/{id}/terminate"), None)
        .await?;
    ensure!(
        v["state"] == "terminated" && v["termination"]["reason"] == "terminated",
        "{v}"
    );
    ensure!(!memory_dir(&e).join("paused").join(&id).exists());
    e.teardown().await;
    Ok(())
}

/// Three forks: each has the source's state; each one's changes stay its
/// own.
async fn fork_three_independent_copies() -> Result<()> {
    let e = env().await?;
    let src = stateful(&e, json!({})).await?;
    get(&e, &src, "/set/base=yes").await?;
    let (s, v) = e
        .admin(
            "POST",
            &format!("/v1/sandboxes/{src}/fork"),
            Some(json!({"count": 3})),
        )
        .await?;
    ensure!(s == StatusCode::CREATED, "fork: {s} {v}");
    let copies: Vec<String> = v["sandboxes"]
        .as_array()
        .context("sandboxes")?
        .iter()
        .filter_map(|s| s["id"].as_str().map(str::to_string))
        .collect();
    ensure!(copies.len() == 3, "{v}");
    for (i, c) in copies.iter().enumerate() {
        get(&e, c, &format!("/set/me=copy{i}")).await?;
    }
    for (i, c) in copies.iter().enumerate() {
        let st = get(&e, c, "/").await?;
        ensure!(
            st["items"]["base"] == "yes" && st["items"]["me"] == format!("copy{i}").as_str(),
            "copy {i}: {st}"
        );
    }
    let st = get(&e, &src, "/").await?;
    ensure!(
        st["items"]["me"].is_null(),
        "a copy's change reached the source: {st}"
    );
    ensure!(
        std::fs::read_dir(memory_dir(&e).join("forks"))?.count() == 0,
        "the fork's checkpoint was kept"
    );
    e.teardown().await;
    Ok(())
}

/// `auto_resume`: an exec on a paused sandbox resumes it (concurrent
/// triggers resume once).
async fn auto_resume_through_exec() -> Result<()> {
    let e = env().await?;
    let id = stateful(&e, json!({"auto_resume": true})).await?;
    get(&e, &id, "/inc").await?;
    let (s, v) = e
        .admin("POST", &format!("/v1/sandboxes/{id}/pause"), None)
        .await?;
    ensure!(s == StatusCode::OK && v["state"] == "paused", "{s} {v}");
    let (a, b) = tokio::join!(get(&e, &id, "/inc"), get(&e, &id, "/inc"));
    let (a, b) = (a?, b?);
    let mut counts = [a["count"].as_u64(), b["count"].as_u64()];
    counts.sort();
    ensure!(counts == [Some(2), Some(3)], "{a} {b}");
    ensure!(state_of(&e, &id).await?["state"] == "running");
    e.teardown().await;
    Ok(())
}

/// `auto_resume`: an HTTPS tunnel connection to a paused sandbox waits for
/// the resume and is answered (same URL).
async fn auto_resume_through_a_tunnel() -> Result<()> {
    let e = common::env_with(|cfg, data| {
        cfg.tunnels = TunnelsConfig::Local(warren_relay::RelayConfig {
            https_listen: Some("127.0.0.1:0".parse().expect("addr")),
            raw_port_range: warren_relay::PortRange {
                start: 33900,
                end: 33999,
            },
            tls: warren_relay::TlsSource::Generated {
                dir: data.join("tls"),
            },
            ..Default::default()
        });
        Ok(())
    })
    .await?;
    let https = e.state.relay_https_addr().await.context("relay")?;
    let ca = e.data.path().join("tls/ca.pem");
    let id = stateful(&e, json!({"auto_resume": true, "encrypted_ports": [8000]})).await?;
    get(&e, &id, "/set/via=tunnel").await?;
    let (s, v) = e
        .admin("POST", &format!("/v1/sandboxes/{id}/pause"), None)
        .await?;
    ensure!(s == StatusCode::OK && v["state"] == "paused", "{s} {v}");
    let host = format!("{id}-8000.warren.localhost");
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "30", "--cacert"])
        .arg(&ca)
        .args(["--resolve", &format!("{host}:{}:127.0.0.1", https.port())])
        .arg(format!("https://{host}:{}/inc", https.port()))
        .output()?;
    let body = String::from_utf8_lossy(&out.stdout);
    let st: Value = serde_json::from_str(body.trim()).with_context(|| {
        format!(
            "tunnel answered {body:?} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    ensure!(st["items"]["via"] == "tunnel" && st["count"] == 1, "{st}");
    ensure!(state_of(&e, &id).await?["state"] == "running");
    e.teardown().await;
    Ok(())
}

/// `on_idle: pause`: the idle timeout pauses instead of terminating.
async fn on_idle_pauses() -> Result<()> {
    let e = env().await?;
    let id = stateful(&e, json!({"on_idle": "pause", "idle_timeout_secs": 1})).await?;
    get(&e, &id, "/set/idle=1").await?;
    wait_idle_pause(&e, &id).await?;
    let (s, v) = e
        .admin("POST", &format!("/v1/sandboxes/{id}/resume"), None)
        .await?;
    ensure!(s == StatusCode::OK, "{s} {v}");
    ensure!(get(&e, &id, "/").await?["items"]["idle"] == "1");
    e.teardown().await;
    Ok(())
}

/// The numbers `nK` a background exec printed so far; checks that each
/// follows the one before (nothing lost, nothing repeated).
async fn bg_numbers(e: &Env, id: &str, exec: &str) -> Result<Vec<u64>> {
    let (s, v) = e
        .admin(
            "GET",
            &format!("/v1/sandboxes/{id}/execs/{exec}/output"),
            None,
        )
        .await?;
    ensure!(s == StatusCode::OK, "output: {s} {v}");
    let text = v.as_str().unwrap_or_default();
    let nums: Vec<u64> = text
        .lines()
        .filter_map(|l| l.strip_prefix('n')?.parse().ok())
        .collect();
    for w in nums.windows(2) {
        ensure!(w[1] == w[0] + 1, "{} came after {} in {text:?}", w[1], w[0]);
    }
    Ok(nums)
}

/// A background exec printing `n1`, `n2`, ... every 50 ms.
const COUNTING: [&str; 3] = [
    "/bin/sh",
    "-c",
    "i=0; while :; do i=$((i+1)); echo n$i; sleep 0.05; done",
];

/// Starts [`COUNTING`] as a background exec of `id` and waits until it
/// printed past 3; returns its exec id.
async fn start_counting(e: &Env, id: &str) -> Result<String> {
    let (s, v) = e
        .admin(
            "POST",
            &format!("/v1/sandboxes/{id}/execs"),
            Some(json!({"command": COUNTING})),
        )
        .await?;
    ensure!(s == StatusCode::CREATED, "start: {s} {v}");
    let exec = v["id"].as_str().context("exec id")?.to_string();
    bg_passes(e, id, &exec, 3).await?;
    Ok(exec)
}

/// Waits (bounded) until the idle timeout paused `id`; fails if it was
/// terminated instead.
async fn wait_idle_pause(e: &Env, id: &str) -> Result<()> {
    for _ in 0..200 {
        let v = state_of(e, id).await?;
        ensure!(
            v["state"] != "terminated",
            "terminated instead of paused: {v}"
        );
        if v["state"] == "paused" {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{id} never paused")
}

/// Waits until a background exec of `id` printed past `n`.
async fn bg_passes(e: &Env, id: &str, exec: &str, n: u64) -> Result<u64> {
    for _ in 0..200 {
        if let Some(&last) = bg_numbers(e, id, exec).await?.last() {
            if last > n {
                return Ok(last);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("background exec {exec} of {id} never printed past {n}")
}

/// A background exec (a dev server, say) does not keep a sandbox with
/// `on_idle: pause` awake; the pause carries it: after the resume it is
/// the same exec, running, its output going on without a gap. A fork's
/// copy lists it as a background exec of its own, running from the
/// checkpoint on.
async fn background_execs_survive_pause_and_fork() -> Result<()> {
    let e = env().await?;
    let id = e
        .create(json!({
            "memory_snapshots": true,
            "on_idle": "pause",
            "idle_timeout_secs": 2,
            "timeout_secs": 300,
        }))
        .await?;
    let exec = start_counting(&e, &id).await?;
    // Idle (nothing but the exec runs): paused, not terminated.
    wait_idle_pause(&e, &id).await?;
    let before = *bg_numbers(&e, &id, &exec)
        .await?
        .last()
        .context("no output")?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let still = *bg_numbers(&e, &id, &exec)
        .await?
        .last()
        .context("no output")?;
    ensure!(
        still == before,
        "output grew while paused: {before} -> {still}"
    );
    let (s, v) = e
        .admin("POST", &format!("/v1/sandboxes/{id}/resume"), None)
        .await?;
    ensure!(s == StatusCode::OK, "resume: {s} {v}");
    bg_passes(&e, &id, &exec, before + 5).await?;
    let (_, v) = e
        .admin("GET", &format!("/v1/sandboxes/{id}/execs"), None)
        .await?;
    let listed = v["execs"].as_array().context("execs")?;
    ensure!(
        listed.len() == 1 && listed[0]["id"] == exec.as_str() && listed[0]["state"] == "running",
        "{v}"
    );

    let (s, v) = e
        .admin(
            "POST",
            &format!("/v1/sandboxes/{id}/fork"),
            Some(json!({"count": 1})),
        )
        .await?;
    ensure!(s == StatusCode::CREATED, "fork: {s} {v}");
    let copy = v["sandboxes"][0]["id"]
        .as_str()
        .context("copy")?
        .to_string();
    let (_, v) = e
        .admin("GET", &format!("/v1/sandboxes/{copy}/execs"), None)
        .await?;
    let listed = v["execs"].as_array().context("execs")?;
    ensure!(
        listed.len() == 1
            && listed[0]["command"] == json!(COUNTING)
            && listed[0]["state"] == "running",
        "the copy's execs: {v}"
    );
    let cexec = listed[0]["id"].as_str().context("exec id")?.to_string();
    let first = bg_passes(&e, &copy, &cexec, 0).await?;
    bg_passes(&e, &copy, &cexec, first + 5).await?;
    // The source's exec goes on too.
    let now = *bg_numbers(&e, &id, &exec)
        .await?
        .last()
        .context("no output")?;
    bg_passes(&e, &id, &exec, now + 3).await?;
    e.teardown().await;
    Ok(())
}

/// A sandbox paused with a background exec by one `warren serve` and
/// resumed by the next (which never knew the exec): the exec comes back as
/// a background exec of the resumed sandbox, with its command, running on.
async fn background_exec_comes_back_after_a_restart() -> Result<()> {
    let (data, token, id) = std::thread::spawn(move || -> Result<_> {
        let rt = tokio::runtime::Runtime::new()?;
        let r = rt.block_on(async {
            let e = env().await?;
            let id = e
                .create(json!({"memory_snapshots": true, "timeout_secs": 300}))
                .await?;
            start_counting(&e, &id).await?;
            let (s, v) = e
                .admin("POST", &format!("/v1/sandboxes/{id}/pause"), None)
                .await?;
            ensure!(s == StatusCode::OK, "pause: {s} {v}");
            let (data, token) = crash(e);
            Ok::<_, anyhow::Error>((data, token, id))
        });
        rt.shutdown_background();
        r
    })
    .join()
    .map_err(|_| anyhow::anyhow!("first server panicked"))??;
    let e = reopen(data, token).await?;
    let (s, v) = e
        .admin("POST", &format!("/v1/sandboxes/{id}/resume"), None)
        .await?;
    ensure!(
        s == StatusCode::OK && v["state"] == "running",
        "resume: {s} {v}"
    );
    let (_, v) = e
        .admin("GET", &format!("/v1/sandboxes/{id}/execs"), None)
        .await?;
    let listed = v["execs"].as_array().context("execs")?;
    ensure!(
        listed.len() == 1
            && listed[0]["command"] == json!(COUNTING)
            && listed[0]["state"] == "running",
        "after the restart: {v}"
    );
    let exec = listed[0]["id"].as_str().context("exec id")?.to_string();
    let last = bg_passes(&e, &id, &exec, 0).await?;
    // It goes on from where it was paused (past 3), not from the start.
    let first = bg_numbers(&e, &id, &exec).await?[0];
    ensure!(first > 3, "the exec counts from {first} after the resume");
    bg_passes(&e, &id, &exec, last + 5).await?;
    e.teardown().await;
    Ok(())
}

/// Pause/resume and fork cycles, then everything terminated: nothing of
/// them is left on the host (checked for the whole suite at the end).
async fn cycles_leave_nothing() -> Result<()> {
    let e = env().await?;
    let id = stateful(&e, json!({})).await?;
    for _ in 0..3 {
        for op in ["pause", "resume"] {
            let (s, v) = e
                .admin("POST", &format!("/v1/sandboxes/{id}/{op}"), None)
                .await?;
            ensure!(s == StatusCode::OK, "{op}: {s} {v}");
        }
        let (s, v) = e
            .admin(
                "POST",
                &format!("/v1/sandboxes/{id}/fork"),
                Some(json!({"count": 2})),
            )
            .await?;
        ensure!(s == StatusCode::CREATED, "fork: {s} {v}");
        for c in v["sandboxes"].as_array().context("sandboxes")? {
            let cid = c["id"].as_str().context("id")?;
            e.admin("POST", &format!("/v1/sandboxes/{cid}/terminate"), None)
                .await?;
        }
    }
    let m = snapshot_memory(&e, &id, json!({})).await?;
    let msnap = m["id"].as_str().context("id")?;
    e.admin("DELETE", &format!("/v1/memory-snapshots/{msnap}"), None)
        .await?;
    e.admin("POST", &format!("/v1/sandboxes/{id}/terminate"), None)
        .await?;
    let dir = memory_dir(&e);
    let left: Vec<_> = walk(&dir);
    ensure!(left.is_empty(), "left in {}: {left:?}", dir.display());
    e.teardown().await;
    Ok(())
}

/// Regular files under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for d in rd.flatten() {
            let p = d.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn main() {
    warren_init::run_if_init();
    common::init_logging();
    let args = Arguments::from_args();
    let tests = vec![
        t!(refusals_and_validation),
        t!(corrupt_snapshot_is_refused),
        t!(paused_sandbox_survives_restart_and_terminates),
        criu_trial("checkpoint_and_restore_continue_state", || {
            Box::pin(checkpoint_and_restore_continue_state())
        }),
        criu_trial("pause_and_resume_keep_id_and_state", || {
            Box::pin(pause_and_resume_keep_id_and_state())
        }),
        criu_trial("fork_three_independent_copies", || {
            Box::pin(fork_three_independent_copies())
        }),
        criu_trial("auto_resume_through_exec", || {
            Box::pin(auto_resume_through_exec())
        }),
        criu_trial("auto_resume_through_a_tunnel", || {
            Box::pin(auto_resume_through_a_tunnel())
        }),
        criu_trial("on_idle_pauses", || Box::pin(on_idle_pauses())),
        criu_trial("background_execs_survive_pause_and_fork", || {
            Box::pin(background_execs_survive_pause_and_fork())
        }),
        criu_trial("background_exec_comes_back_after_a_restart", || {
            Box::pin(background_exec_comes_back_after_a_restart())
        }),
        criu_trial("cycles_leave_nothing", || Box::pin(cycles_leave_nothing())),
    ];
    let conclusion = libtest_mimic::run(&args, tests);
    // Every server of this process has a cgroup subtree named after it;
    // other suites may run sandboxes at the same time.
    let marker = format!("warren-test-srv-{}-", std::process::id());
    // A warren-init process counts only when it sits in this suite's cgroups.
    let ours = |l: &String| match l.strip_prefix("process: pid ") {
        Some(rest) => {
            let pid = rest.split_whitespace().next().unwrap_or_default();
            std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .map(|c| c.contains(&marker))
                .unwrap_or(false)
        }
        None => true,
    };
    warren_testkit::wait_until(Duration::from_secs(10), || {
        !warren_testkit::leaks(&marker).iter().any(ours)
    });
    let leaks: Vec<String> = warren_testkit::leaks(&marker)
        .into_iter()
        .filter(ours)
        .collect();
    if !leaks.is_empty() {
        eprintln!("leaks after the memory snapshot tests: {leaks:#?}");
        std::process::exit(1);
    }
    eprintln!("leak check: clean");
    conclusion.exit()
}
