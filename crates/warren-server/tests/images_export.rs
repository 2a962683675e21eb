//! Issue #8's image transport through the API: export (OCI layout tar),
//! import of the export, push to a real loopback registry (anonymous and
//! with basic auth), pull back and run a sandbox from it, and the stable
//! error codes. Our own `main` (libtest-mimic) because this binary is also
//! the sandboxes' init.

use std::io::Read;

use anyhow::{ensure, Context, Result};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use libtest_mimic::Arguments;
use serde_json::{json, Value};
use tower::ServiceExt;
use warren_testkit::registry::{Compress, LayoutBuilder, Registry, TarBuilder, TestConfig};

#[macro_use]
mod common;

use common::{code, env_with, trial_with, Env};

fn enc(s: &str) -> String {
    s.replace('%', "%25")
        .replace('/', "%2F")
        .replace(':', "%3A")
}

/// A busybox root filesystem with the applets the tests run.
fn rootfs() -> Result<Vec<u8>> {
    let busybox = std::fs::read("/bin/busybox").context("busybox-static")?;
    let mut tar = TarBuilder::new()
        .dir("bin", 0o755)
        .file("bin/busybox", 0o755, &busybox);
    for applet in ["sh", "cat", "echo", "true", "pwd", "id"] {
        tar = tar.symlink(&format!("bin/{applet}"), "busybox");
    }
    Ok(tar
        .dir("etc", 0o755)
        .file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n")
        .file("etc/greeting", 0o644, b"exported and back\n")
        .dir("srv", 0o755)
        .dir("tmp", 0o1777)
        .dir("proc", 0o755)
        .dir("dev", 0o755)
        .dir("sys", 0o755)
        .finish())
}

/// A GET returning the raw body and headers.
async fn get_raw(e: &Env, path: &str) -> Result<(StatusCode, axum::http::HeaderMap, Vec<u8>)> {
    let req = Request::builder()
        .method("GET")
        .uri(path)
        .header("authorization", format!("Bearer {}", e.token))
        .body(Body::empty())?;
    let resp = warren_server::router(e.state.clone()).oneshot(req).await?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = axum::body::to_bytes(resp.into_body(), 256 << 20).await?;
    Ok((status, headers, body.to_vec()))
}

/// `POST .../push` with `Accept: text/event-stream`; the event stream.
async fn push_events(e: &Env, reference: &str, body: Value) -> Result<String> {
    let req = Request::builder()
        .method("POST")
        .uri(format!("/v1/images/{}/push", enc(reference)))
        .header("authorization", format!("Bearer {}", e.token))
        .header("content-type", "application/json")
        .header("accept", "text/event-stream")
        .body(Body::from(body.to_string()))?;
    let resp = warren_server::router(e.state.clone()).oneshot(req).await?;
    ensure!(
        resp.status() == StatusCode::OK,
        "push stream {}",
        resp.status()
    );
    let body = axum::body::to_bytes(resp.into_body(), 16 << 20).await?;
    Ok(String::from_utf8_lossy(&body).into_owned())
}

fn tar_members(bytes: &[u8]) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in tar::Archive::new(bytes).entries()? {
        let mut entry = entry?;
        names.push(entry.path()?.display().to_string());
        std::io::copy(&mut entry, &mut std::io::sink())?;
    }
    Ok(names)
}

fn diff_ids(v: &Value) -> Vec<String> {
    v["layers"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(|l| l["diff_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

async fn images_export_import_push() -> Result<()> {
    let reg = Registry::start()?;
    let authed = Registry::start_with_auth("alice", "s3cret")?;
    let host = reg.host();
    let work = tempfile::tempdir()?;
    // The registry also holds an image pushed by skopeo, to be pulled and
    // pushed on.
    // (A layer of its own: a pull that finds a layer already unpacked
    // does not fetch its blob, and then the export writes a new manifest.)
    let mut layout = LayoutBuilder::new(&work.path().join("layout"))?;
    let source_layer = TarBuilder::new()
        .file("srv/source", 0o644, b"src\n")
        .finish();
    let layer = layout.layer(&source_layer, Compress::Gzip)?;
    let source_digest = layout.image(
        "v1",
        &[layer],
        &TestConfig {
            env: vec!["PATH=/bin".into()],
            ..TestConfig::default()
        },
    )?;
    reg.push(layout.dir(), "v1", "src/app:v1")?;
    let e = env_with(|cfg, data| {
        let path = data.join("registries.json");
        std::fs::write(
            &path,
            json!({"default_registry": "127.0.0.1:9",
                   "registries": {host.clone(): {"insecure": true},
                                  "127.0.0.1:9": {"insecure": true}}})
            .to_string(),
        )?;
        cfg.registries = Some(path);
        Ok(())
    })
    .await?;
    let r = scenario(&e, &reg, &authed, &source_digest).await;
    e.teardown().await;
    r
}

async fn scenario(e: &Env, reg: &Registry, authed: &Registry, source_digest: &str) -> Result<()> {
    let host = reg.host();
    // A locally built image (what a snapshot or a directory import makes).
    let images = e.state.node.images().clone();
    let config = warren_image::ImageConfig {
        env: vec!["PATH=/bin".into(), "WHO=exported".into()],
        workdir: Some("/srv".into()),
        cmd: Some(vec!["cat".into(), "/etc/greeting".into()]),
        ..Default::default()
    };
    let local = images.import_tar_with_config(&rootfs()?[..], "local/app:v1", config)?;

    // Export: an OCI layout tar, with an exact length.
    let (s, headers, tar) =
        get_raw(e, &format!("/v1/images/{}/export", enc("local/app:v1"))).await?;
    ensure!(
        s == StatusCode::OK,
        "export: {s} {}",
        String::from_utf8_lossy(&tar)
    );
    ensure!(
        headers["content-type"] == "application/x-tar",
        "{headers:?}"
    );
    ensure!(
        headers["content-length"].to_str()? == tar.len().to_string(),
        "content-length {headers:?} vs {}",
        tar.len()
    );
    let members = tar_members(&tar)?;
    for want in ["oci-layout", "index.json", "blobs/sha256/"] {
        ensure!(
            members.iter().any(|m| m == want),
            "{want} missing: {members:?}"
        );
    }
    let mut index = String::new();
    tar::Archive::new(&tar[..])
        .entries()?
        .filter_map(|e| e.ok())
        .find(|e| e.path().is_ok_and(|p| p.as_os_str() == "index.json"))
        .context("index.json")?
        .read_to_string(&mut index)?;
    ensure!(index.contains("local/app:v1"), "{index}");

    // Import of the export: same image (same id) after the original is gone.
    let (s, before) = e
        .admin("GET", &format!("/v1/images/{}", enc("local/app:v1")), None)
        .await?;
    ensure!(s == StatusCode::OK, "{s} {before}");
    let (s, v) = e
        .admin(
            "DELETE",
            &format!("/v1/images/{}", enc("local/app:v1")),
            None,
        )
        .await?;
    ensure!(s == StatusCode::NO_CONTENT, "{s} {v}");
    let (s, back) = e
        .raw_call(
            "POST",
            "/v1/images/import",
            "application/x-tar",
            tar.clone(),
        )
        .await?;
    ensure!(s == StatusCode::OK, "import: {s} {back}");
    ensure!(back["id"] == local.id.as_str(), "{back} vs {}", local.id);
    ensure!(back["names"] == json!(["local/app:v1"]), "{back}");
    ensure!(
        diff_ids(&back) == diff_ids(&before) && back["config"] == before["config"],
        "{back} vs {before}"
    );
    // Under another name too.
    let (s, v) = e
        .raw_call(
            "POST",
            "/v1/images/import?name=renamed:v2",
            "application/x-tar",
            tar.clone(),
        )
        .await?;
    ensure!(
        s == StatusCode::OK && v["id"] == local.id.as_str(),
        "{s} {v}"
    );

    // Push (JSON answer), then again with events: nothing re-uploaded.
    let target = format!("{host}/pushed/app:v1");
    let (s, v) = e
        .admin(
            "POST",
            &format!("/v1/images/{}/push", enc("local/app:v1")),
            Some(json!({"target": target})),
        )
        .await?;
    ensure!(
        s == StatusCode::OK && v["pushed_blobs"] == 2 && v["skipped_blobs"] == 0,
        "push: {s} {v}"
    );
    let manifest_digest = v["manifest_digest"].as_str().context("digest")?.to_string();
    ensure!(manifest_digest.starts_with("sha256:"), "{v}");
    let text = push_events(e, "local/app:v1", json!({"target": target})).await?;
    ensure!(text.contains(&manifest_digest), "{text}");
    for want in [
        "event: progress",
        "\"event\":\"resolved\"",
        "\"event\":\"blob_exists\"",
        "event: done",
        "\"skipped_blobs\":2",
        "\"pushed_blobs\":0",
    ] {
        ensure!(
            text.contains(want),
            "no {want:?} in the push stream: {text}"
        );
    }
    ensure!(!text.contains("\"event\":\"blob_pushed\""), "{text}");

    // Pulled back (the local copy removed first): same id, and a sandbox
    // from it runs its command.
    for name in ["local/app:v1", "renamed:v2"] {
        let (s, v) = e
            .admin("DELETE", &format!("/v1/images/{}", enc(name)), None)
            .await?;
        ensure!(s == StatusCode::NO_CONTENT, "{s} {v}");
    }
    let (s, v) = e
        .admin(
            "POST",
            "/v1/images/pull",
            Some(json!({"reference": target})),
        )
        .await?;
    ensure!(
        s == StatusCode::OK && v["id"] == local.id.as_str(),
        "pull back: {s} {v}"
    );
    ensure!(diff_ids(&v) == diff_ids(&before), "{v}");
    let id = e
        .create(json!({"image": target, "use_image_command": true}))
        .await?;
    let v = e.wait_end(&id).await?;
    ensure!(v["termination"]["exit_code"] == 0, "{v}");
    let (s, logs) = e
        .admin("GET", &format!("/v1/sandboxes/{id}/logs"), None)
        .await?;
    ensure!(
        s == StatusCode::OK && logs.as_str() == Some("exported and back\n"),
        "{s} {logs}"
    );
    let (s, v) = e
        .admin("GET", &format!("/v1/images/{}", enc(&target)), None)
        .await?;
    ensure!(s == StatusCode::OK, "{s} {v}");

    // A pulled image pushes with the manifest digest it was pulled with.
    let source = format!("{host}/src/app:v1");
    let (s, v) = e
        .admin(
            "POST",
            "/v1/images/pull",
            Some(json!({"reference": source})),
        )
        .await?;
    ensure!(s == StatusCode::OK, "{s} {v}");
    let (s, v) = e
        .admin(
            "POST",
            &format!("/v1/images/{}/push", enc(&source)),
            Some(json!({"target": format!("{host}/copy/app:v9")})),
        )
        .await?;
    ensure!(
        s == StatusCode::OK && v["manifest_digest"] == source_digest,
        "{s} {v}"
    );

    // With basic auth: none → registry_auth; per-request credentials
    // (and plain HTTP for this registry) → pushed.
    let auth_target = format!("{}/private/app:1", authed.host());
    let (s, v) = e
        .admin(
            "POST",
            &format!("/v1/images/{}/push", enc(&source)),
            Some(json!({"target": auth_target, "insecure": true})),
        )
        .await?;
    ensure!(
        s == StatusCode::FORBIDDEN && code(&v) == "registry_auth",
        "{s} {v}"
    );
    let (s, v) = e
        .admin(
            "POST",
            &format!("/v1/images/{}/push", enc(&source)),
            Some(json!({"target": auth_target, "insecure": true,
                        "credentials": {"username": "alice", "password": "wrong"}})),
        )
        .await?;
    ensure!(
        s == StatusCode::FORBIDDEN && code(&v) == "registry_auth",
        "{s} {v}"
    );
    let (s, v) = e
        .admin(
            "POST",
            &format!("/v1/images/{}/push", enc(&source)),
            Some(json!({"target": auth_target, "insecure": true,
                        "auth": {"username": "alice", "password": "s3cret"}})),
        )
        .await?;
    ensure!(s == StatusCode::OK && v["pushed_blobs"] == 2, "{s} {v}");

    // Stable codes.
    let (s, _, b) = get_raw(e, "/v1/images/host/export").await?;
    let v: Value = serde_json::from_slice(&b).unwrap_or(Value::Null);
    ensure!(
        s == StatusCode::UNPROCESSABLE_ENTITY && code(&v) == "image_not_exportable",
        "{s} {v}"
    );
    let (s, v) = e
        .admin(
            "POST",
            "/v1/images/host/push",
            Some(json!({"target": target})),
        )
        .await?;
    ensure!(
        s == StatusCode::UNPROCESSABLE_ENTITY && code(&v) == "image_not_exportable",
        "{s} {v}"
    );
    let (s, _, b) = get_raw(e, "/v1/images/missing%3A1/export").await?;
    let v: Value = serde_json::from_slice(&b).unwrap_or(Value::Null);
    ensure!(
        s == StatusCode::NOT_FOUND && code(&v) == "image_not_found",
        "{s} {v}"
    );
    let push_to = |t: Value| {
        let source = source.clone();
        async move {
            e.admin(
                "POST",
                &format!("/v1/images/{}/push", enc(&source)),
                Some(t),
            )
            .await
        }
    };
    let (s, v) = push_to(json!({"target": "Bad Target"})).await?;
    ensure!(s == StatusCode::BAD_REQUEST, "{s} {v}");
    let (s, v) = push_to(json!({"target": format!("{host}/x@sha256:{}", "0".repeat(64))})).await?;
    ensure!(
        s == StatusCode::BAD_REQUEST && code(&v) == "invalid_image_reference",
        "{s} {v}"
    );
    let (s, v) = push_to(json!({"target": "127.0.0.1:9/nothing/here:1"})).await?;
    ensure!(
        s == StatusCode::BAD_GATEWAY && code(&v) == "registry_unavailable",
        "{s} {v}"
    );
    let (s, v) = push_to(json!({"tag": "x"})).await?;
    ensure!(
        s == StatusCode::BAD_REQUEST && code(&v) == "invalid_json",
        "{s} {v}"
    );
    // Pushes are for admin tokens; exports for any.
    let (_, t) = e
        .admin("POST", "/v1/tokens", Some(json!({"name": "plain"})))
        .await?;
    let plain = t["token"].as_str().context("token")?;
    let (s, v) = e
        .call(
            "POST",
            &format!("/v1/images/{}/push", enc(&source)),
            Some(plain),
            Some(json!({"target": target})),
        )
        .await?;
    ensure!(
        s == StatusCode::FORBIDDEN && code(&v) == "forbidden",
        "{s} {v}"
    );
    let req = Request::builder()
        .uri(format!("/v1/images/{}/export", enc(&source)))
        .header("authorization", format!("Bearer {plain}"))
        .body(Body::empty())?;
    let resp = warren_server::router(e.state.clone()).oneshot(req).await?;
    ensure!(
        resp.status() == StatusCode::OK,
        "plain export {}",
        resp.status()
    );
    // The OpenAPI document lists the new paths.
    let (s, v) = e.call("GET", "/v1/openapi.json", None, None).await?;
    ensure!(
        s == StatusCode::OK
            && v["paths"]["/v1/images/{reference}/export"].is_object()
            && v["paths"]["/v1/images/{reference}/push"].is_object()
            && v["components"]["schemas"]["PushProgress"].is_object(),
        "openapi"
    );
    Ok(())
}

fn main() {
    warren_init::run_if_init();
    common::init_logging();
    let args = Arguments::from_args();
    let tests = vec![trial_with(
        "images_export_import_push",
        || Box::pin(images_export_import_push()),
        warren_testkit::registry::require_tools,
    )];
    libtest_mimic::run(&args, tests).exit()
}
