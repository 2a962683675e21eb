//! Image builds (`POST /v1/images/build`) through the router, over a real
//! node: real step sandboxes, real snapshots, the durable cache. Our own
//! `main` (libtest-mimic) because this binary is also the sandboxes' init.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use futures_util::StreamExt;
use libtest_mimic::Arguments;
use serde_json::{json, Value};
use tower::ServiceExt;

#[macro_use]
mod common;

use common::{code, env, env_with, trial, Env};

/// A busybox-only image (`bb:1`): static busybox, its applets as
/// symlinks, a passwd with root and nobody.
fn busybox_image(e: &Env) -> Result<()> {
    let root = tempfile::tempdir()?;
    for d in ["bin", "tmp", "proc", "dev", "sys", "etc", "root"] {
        std::fs::create_dir(root.path().join(d))?;
    }
    std::fs::copy("/bin/busybox", root.path().join("bin/busybox")).context("busybox-static")?;
    for applet in [
        "sh", "cat", "echo", "ls", "mkdir", "sleep", "env", "pwd", "id", "test", "true", "false",
    ] {
        std::os::unix::fs::symlink("busybox", root.path().join("bin").join(applet))?;
    }
    std::fs::write(
        root.path().join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n",
    )?;
    std::fs::write(
        root.path().join("etc/group"),
        "root:x:0:\nnogroup:x:65534:\n",
    )?;
    e.state.node.images().import_dir_with_config(
        root.path(),
        "bb:1",
        warren_image::ImageConfig {
            env: vec!["PATH=/bin".into()],
            ..Default::default()
        },
    )?;
    Ok(())
}

/// A context tar of `(path, content)` files.
fn context(files: &[(&str, &[u8])]) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, *data)?;
    }
    Ok(b.into_inner()?)
}

fn build_request(e: &Env, query: &str, body: Vec<u8>, token: &str) -> Result<Request<Body>> {
    let _ = e;
    Ok(Request::builder()
        .method("POST")
        .uri(format!("/v1/images/build?{query}"))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/x-tar")
        .body(Body::from(body))?)
}

/// A finished build: the status, and the NDJSON events (or the error body).
async fn build(e: &Env, query: &str, body: Vec<u8>) -> Result<(StatusCode, Vec<Value>)> {
    let req = build_request(e, query, body, &e.token)?;
    let resp = warren_server::router(e.state.clone()).oneshot(req).await?;
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 64 << 20).await?;
    if status != StatusCode::OK {
        return Ok((status, vec![serde_json::from_slice(&bytes)?]));
    }
    let mut events = Vec::new();
    for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        events.push(serde_json::from_slice::<Value>(line).context("an NDJSON line")?);
    }
    ensure!(
        events
            .last()
            .is_some_and(|l| l["event"] == "done" || l["event"] == "error"),
        "the stream must end with done or error: {events:?}"
    );
    Ok((status, events))
}

/// `cached` of every `step` event, in order.
fn cached_flags(events: &[Value]) -> Vec<bool> {
    events
        .iter()
        .filter(|v| v["event"] == "step")
        .map(|v| v["cached"].as_bool().unwrap_or(false))
        .collect()
}

fn logs(events: &[Value], stream: &str) -> String {
    events
        .iter()
        .filter(|v| v["event"] == "log" && v["stream"] == stream)
        .filter_map(|v| v["data"].as_str())
        .collect()
}

/// Build sandboxes still on the node.
fn build_sandboxes(e: &Env) -> Vec<String> {
    warren_runtime::Runtime::list(e.state.node.runtime())
        .into_iter()
        .map(|id| id.as_str().to_string())
        .filter(|n| n.starts_with("build-"))
        .collect()
}

const RECIPE: &str = r#"# a three-step build, plus config
FROM bb:1
ENV GREETING=hello MODE="two words"
COPY greeting.txt /app/
WORKDIR /app
RUN cat greeting.txt greeting.txt > doubled.txt && \
    echo "run: $GREETING as $(id -u) in $(pwd)" && echo to-stderr >&2
CMD ["cat", "doubled.txt"]
"#;

async fn exec_out(e: &Env, id: &str, cmd: &str) -> Result<String> {
    let (s, v) = e
        .admin(
            "POST",
            &format!("/v1/sandboxes/{id}/exec"),
            Some(json!({"command": ["sh", "-c", cmd]})),
        )
        .await?;
    ensure!(
        s == StatusCode::OK && v["exit_code"] == 0,
        "exec {cmd}: {s} {v}"
    );
    Ok(v["stdout"].as_str().unwrap_or_default().to_string())
}

async fn build_run_and_cache() -> Result<()> {
    let e = env().await?;
    let r = async {
        busybox_image(&e)?;
        let ctx = |greeting: &[u8]| {
            context(&[
                ("Dockerfile", RECIPE.as_bytes()),
                ("greeting.txt", greeting),
            ])
        };

        let t = Instant::now();
        let (s, ev) = build(&e, "tag=app:v1", ctx(b"hi\n")?).await?;
        let first = t.elapsed();
        ensure!(s == StatusCode::OK, "{s} {ev:?}");
        let done = ev.last().context("events")?;
        ensure!(
            done["event"] == "done" && done["name"] == "app:v1",
            "{done}"
        );
        ensure!(done["steps"] == 6, "{done}");
        ensure!(
            cached_flags(&ev) == [true, false, false, false, false, false],
            "{ev:?}"
        );
        ensure!(
            ev[0]["total"] == 6 && ev[0]["text"] == "FROM bb:1",
            "{}",
            ev[0]
        );
        let out = logs(&ev, "stdout");
        ensure!(out.contains("run: hello as 0 in /app"), "stdout {out:?}");
        ensure!(logs(&ev, "stderr").contains("to-stderr"), "{ev:?}");
        let image_id = done["image_id"].as_str().context("image id")?.to_string();

        // The image: config from ENV, WORKDIR, CMD; files from COPY + RUN.
        let (s, info) = e.admin("GET", "/v1/images/app:v1", None).await?;
        ensure!(
            s == StatusCode::OK && info["id"] == image_id.as_str(),
            "{s} {info}"
        );
        let env_list: Vec<&str> = info["config"]["env"]
            .as_array()
            .context("env")?
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        ensure!(
            env_list.contains(&"GREETING=hello") && env_list.contains(&"MODE=two words"),
            "{info}"
        );
        ensure!(info["config"]["workdir"] == "/app", "{info}");
        ensure!(
            info["config"]["cmd"] == json!(["cat", "doubled.txt"]),
            "{info}"
        );
        let id = e.create(json!({"image": "app:v1"})).await?;
        let out = exec_out(&e, &id, "cat doubled.txt; echo \"$GREETING|$MODE|$(pwd)\"").await?;
        ensure!(out == "hi\nhi\nhello|two words|/app\n", "{out:?}");
        // The image's own command works too.
        let runner = e
            .create(json!({"image": "app:v1", "use_image_command": true}))
            .await?;
        let v = e.wait_end(&runner).await?;
        ensure!(v["termination"]["exit_code"] == 0, "{v}");
        let (_, log) = e
            .admin("GET", &format!("/v1/sandboxes/{runner}/logs"), None)
            .await?;
        ensure!(log.as_str() == Some("hi\nhi\n"), "{log}");

        // Rebuild: every step from the cache, in a tenth of the time (the
        // best of three, against the noise of a shared machine).
        let mut second = Duration::MAX;
        let mut ev = Vec::new();
        for _ in 0..3 {
            let t = Instant::now();
            let (s, got) = build(&e, "tag=app:v2", ctx(b"hi\n")?).await?;
            second = second.min(t.elapsed());
            ensure!(s == StatusCode::OK, "{s} {got:?}");
            ev = got;
        }
        ensure!(cached_flags(&ev).iter().all(|c| *c), "{ev:?}");
        let done = ev.last().context("events")?;
        ensure!(
            done["image_id"] == image_id.as_str() && done["cached_steps"] == 6,
            "{done}"
        );
        ensure!(
            logs(&ev, "stdout").is_empty(),
            "a cached RUN does not run: {ev:?}"
        );
        eprintln!("first build {first:?}, cached rebuild {second:?}");
        ensure!(
            second * 10 < first,
            "the cached rebuild took {second:?}, the first {first:?}"
        );

        // A changed COPY source: the steps before it stay cached.
        let (s, ev) = build(&e, "tag=app:v3", ctx(b"changed\n")?).await?;
        ensure!(s == StatusCode::OK, "{s} {ev:?}");
        ensure!(
            cached_flags(&ev) == [true, true, false, false, false, false],
            "{ev:?}"
        );
        let id3 = e.create(json!({"image": "app:v3"})).await?;
        ensure!(exec_out(&e, &id3, "cat doubled.txt").await? == "changed\nchanged\n");
        // The old image is unchanged.
        ensure!(exec_out(&e, &id, "cat /app/doubled.txt").await? == "hi\nhi\n");

        // no_cache runs everything again (and gets the same config).
        let (s, ev) = build(&e, "tag=app:v4&no_cache=true", ctx(b"hi\n")?).await?;
        ensure!(s == StatusCode::OK, "{s} {ev:?}");
        ensure!(cached_flags(&ev)[1..].iter().all(|c| !*c), "{ev:?}");

        // GC collects the unnamed intermediate images: their cache entries
        // become misses, named results survive.
        let (s, v) = e.admin("POST", "/v1/images/gc", None).await?;
        ensure!(s == StatusCode::OK, "{s} {v}");
        let (s, ev) = build(&e, "tag=app:v5", ctx(b"hi\n")?).await?;
        ensure!(
            s == StatusCode::OK && ev.last().context("x")?["event"] == "done",
            "{ev:?}"
        );
        // The ENV step's image was unnamed: collected, so its entry missed
        // (and the step ran again, deterministically to the same id).
        let flags = cached_flags(&ev);
        ensure!(flags.len() == 6 && flags[0] && !flags[1], "{ev:?}");
        let id5 = e.create(json!({"image": "app:v5"})).await?;
        ensure!(exec_out(&e, &id5, "cat doubled.txt").await? == "hi\nhi\n");
        ensure!(build_sandboxes(&e).is_empty(), "{:?}", build_sandboxes(&e));
        Ok(())
    }
    .await;
    e.teardown().await;
    r
}

async fn failing_run_leaves_nothing() -> Result<()> {
    let e = env().await?;
    let r = async {
        busybox_image(&e)?;
        let recipe = "FROM bb:1\nENV A=1\nRUN echo before-fail; exit 7\nRUN echo never\n";
        let (s, ev) = build(
            &e,
            "tag=broken:1",
            context(&[("Dockerfile", recipe.as_bytes())])?,
        )
        .await?;
        ensure!(s == StatusCode::OK, "{s} {ev:?}");
        let last = ev.last().context("events")?;
        ensure!(
            last["event"] == "error"
                && last["code"] == "build_step_failed"
                && last["exit_code"] == 7
                && last["step"] == 3
                && last["line"] == 3,
            "{last}"
        );
        ensure!(logs(&ev, "stdout").contains("before-fail"), "{ev:?}");
        ensure!(build_sandboxes(&e).is_empty(), "{:?}", build_sandboxes(&e));
        let (s, _) = e.admin("GET", "/v1/images/broken:1", None).await?;
        ensure!(s == StatusCode::NOT_FOUND, "no image is tagged: {s}");

        // A user from USER that the image lacks: the step fails cleanly.
        let recipe = "FROM bb:1\nUSER ghost\nRUN true\n";
        let (_, ev) = build(
            &e,
            "tag=ghost:1",
            context(&[("Dockerfile", recipe.as_bytes())])?,
        )
        .await?;
        let last = ev.last().context("events")?;
        ensure!(
            last["code"] == "invalid_user" && last["step"] == 3,
            "{last}"
        );
        ensure!(build_sandboxes(&e).is_empty(), "{:?}", build_sandboxes(&e));

        // USER applies to RUN.
        let recipe = "FROM bb:1\nUSER nobody\nRUN id -u\n";
        let (_, ev) = build(
            &e,
            "tag=nobody:1",
            context(&[("Dockerfile", recipe.as_bytes())])?,
        )
        .await?;
        ensure!(logs(&ev, "stdout") == "65534\n", "{ev:?}");

        // A missing COPY source fails its step, before any sandbox.
        let recipe = "FROM bb:1\nCOPY nope.txt /x\n";
        let (_, ev) = build(
            &e,
            "tag=nocopy:1",
            context(&[("Dockerfile", recipe.as_bytes())])?,
        )
        .await?;
        let last = ev.last().context("events")?;
        ensure!(
            last["code"] == "invalid_copy_source" && last["line"] == 2,
            "{last}"
        );
        Ok(())
    }
    .await;
    e.teardown().await;
    r
}

/// `gc` in a loop while a build runs: the build's intermediate images are
/// unnamed and, between two steps, used by no sandbox; the build pins them,
/// so every step still finds its base and the result is complete.
async fn gc_during_a_build() -> Result<()> {
    let e = env().await?;
    let r = async {
        busybox_image(&e)?;
        let recipe = "FROM bb:1\nRUN echo 1 > /one\nENV A=1\nRUN echo 2 > /two\nENV B=2\n\
                      RUN echo 3 > /three\nWORKDIR /w\nRUN cat /one /two /three > /w/all\n";
        let body = context(&[("Dockerfile", recipe.as_bytes())])?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let collector = {
            let (state, token, stop) = (e.state.clone(), e.token.clone(), stop.clone());
            tokio::spawn(async move {
                let mut runs = 0u32;
                let deadline = Instant::now() + Duration::from_secs(120);
                while !stop.load(std::sync::atomic::Ordering::Relaxed)
                    && runs < 20_000
                    && Instant::now() < deadline
                {
                    let req = Request::builder()
                        .method("POST")
                        .uri("/v1/images/gc")
                        .header("authorization", format!("Bearer {token}"))
                        .body(Body::empty())
                        .expect("a request");
                    let resp = warren_server::router(state.clone()).oneshot(req).await;
                    assert_eq!(resp.expect("gc answers").status(), StatusCode::OK);
                    runs += 1;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                runs
            })
        };
        let built = build(&e, "tag=gc-race:1&no_cache=true", body).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let runs = collector.await?;
        let (s, ev) = built?;
        ensure!(s == StatusCode::OK, "{s} {ev:?}");
        let last = ev.last().context("events")?;
        ensure!(last["event"] == "done", "the build failed under gc: {last}");
        ensure!(runs > 10, "gc ran only {runs} times during the build");
        let (s, v) = e
            .admin(
                "POST",
                "/v1/sandboxes",
                Some(json!({"image": "gc-race:1", "command": ["sleep", "60"]})),
            )
            .await?;
        ensure!(s == StatusCode::CREATED, "{s} {v}");
        let id = v["id"].as_str().context("id")?.to_string();
        let out = exec_out(&e, &id, "cat all; echo $A$B").await?;
        ensure!(out == "1\n2\n3\n12\n", "{out:?}");
        Ok(())
    }
    .await;
    e.teardown().await;
    r
}

async fn refusals() -> Result<()> {
    let e = env_with(|_, data| {
        std::fs::write(data.join("builds.json"), r#"{"max_context_bytes": 65536}"#)?;
        Ok(())
    })
    .await?;
    let r = async {
        busybox_image(&e)?;
        // The endpoint and its events are in the OpenAPI document.
        let (s, doc) = e.call("GET", "/v1/openapi.json", None, None).await?;
        ensure!(
            s == StatusCode::OK
                && doc["paths"]["/v1/images/build"]["post"].is_object()
                && doc["components"]["schemas"]["BuildEvent"].is_object(),
            "{s}"
        );
        // A bad recipe: invalid_recipe, naming the line.
        let recipe = "FROM bb:1\nRUN true\nADD x /y\n";
        let (s, v) = build(
            &e,
            "tag=x:1",
            context(&[("Dockerfile", recipe.as_bytes())])?,
        )
        .await?;
        ensure!(
            s == StatusCode::BAD_REQUEST && code(&v[0]) == "invalid_recipe",
            "{s} {v:?}"
        );
        let msg = v[0]["error"]["message"].as_str().unwrap_or_default();
        ensure!(msg.contains("line 3") && msg.contains("ADD"), "{msg}");
        // The recipe at another path.
        let (s, v) = build(
            &e,
            "tag=x:1&recipe=build/Recipe",
            context(&[("build/Recipe", b"FROM bb:1\nRUN true\n")])?,
        )
        .await?;
        ensure!(
            s == StatusCode::OK && v.last().context("x")?["event"] == "done",
            "{s} {v:?}"
        );
        // No recipe, not a tar.
        let (s, v) = build(&e, "tag=x:1", context(&[("other", b"x")])?).await?;
        ensure!(
            s == StatusCode::BAD_REQUEST && code(&v[0]) == "invalid_context",
            "{s} {v:?}"
        );
        let (s, v) = build(&e, "tag=x:1", vec![b'z'; 2000]).await?;
        ensure!(
            s == StatusCode::BAD_REQUEST && code(&v[0]) == "invalid_context",
            "{s} {v:?}"
        );
        // Too large: by the declared length and by what arrives.
        let big = context(&[
            ("Dockerfile", b"FROM bb:1\n"),
            ("blob", &vec![1u8; 100_000]),
        ])?;
        let (s, v) = build(&e, "tag=x:1", big.clone()).await?;
        ensure!(
            s == StatusCode::PAYLOAD_TOO_LARGE && code(&v[0]) == "context_too_large",
            "{s} {v:?}"
        );
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
            big.chunks(8192).map(|c| Ok(c.to_vec())).collect();
        let req = Request::builder()
            .method("POST")
            .uri("/v1/images/build?tag=x:1")
            .header("authorization", format!("Bearer {}", e.token))
            .body(Body::from_stream(futures_util::stream::iter(chunks)))?;
        let resp = warren_server::router(e.state.clone()).oneshot(req).await?;
        ensure!(
            resp.status() == StatusCode::PAYLOAD_TOO_LARGE,
            "{}",
            resp.status()
        );
        // Bad tag, bad options, non-admin.
        let ok_ctx = context(&[("Dockerfile", b"FROM bb:1\n")])?;
        let (s, v) = build(&e, "tag=Bad%20Tag", ok_ctx.clone()).await?;
        ensure!(
            s == StatusCode::BAD_REQUEST && code(&v[0]) == "invalid_image_reference",
            "{s} {v:?}"
        );
        let (s, v) = build(&e, "tag=x:1&step_timeout_secs=0", ok_ctx.clone()).await?;
        ensure!(
            s == StatusCode::BAD_REQUEST && code(&v[0]) == "invalid_argument",
            "{s} {v:?}"
        );
        let (s, v) = build(&e, "tag=x:1&bogus=1", ok_ctx.clone()).await?;
        ensure!(
            s == StatusCode::BAD_REQUEST && code(&v[0]) == "invalid_argument",
            "{s} {v:?}"
        );
        let (s, v) = e
            .admin("POST", "/v1/tokens", Some(json!({"name": "plain"})))
            .await?;
        ensure!(s == StatusCode::CREATED, "{s} {v}");
        let plain = v["token"].as_str().context("token")?.to_string();
        let req = build_request(&e, "tag=x:1", ok_ctx.clone(), &plain)?;
        let resp = warren_server::router(e.state.clone()).oneshot(req).await?;
        ensure!(resp.status() == StatusCode::FORBIDDEN, "{}", resp.status());
        // A FROM image that does not exist (the registry is offline).
        let (s, v) = build(
            &e,
            "tag=x:1",
            context(&[(
                "Dockerfile",
                b"FROM sha256:0000000000000000000000000000000000000000000000000000000000000000\n",
            )])?,
        )
        .await?;
        let last = v.last().context("x")?;
        ensure!(
            s == StatusCode::OK && last["code"] == "image_not_found" && last["step"] == 1,
            "{v:?}"
        );
        // A step timeout is reported as such.
        let (s, v) = build(
            &e,
            "tag=slow:1&step_timeout_secs=1",
            context(&[("Dockerfile", b"FROM bb:1\nRUN sleep 30\n")])?,
        )
        .await?;
        let last = v.last().context("x")?;
        ensure!(
            s == StatusCode::OK && last["code"] == "build_step_timeout",
            "{v:?}"
        );
        ensure!(build_sandboxes(&e).is_empty(), "{:?}", build_sandboxes(&e));
        Ok(())
    }
    .await;
    e.teardown().await;
    r
}

async fn disconnect_cancels() -> Result<()> {
    let e = env().await?;
    let r = async {
        busybox_image(&e)?;
        let recipe = "FROM bb:1\nRUN echo started; sleep 60\n";
        let req = build_request(
            &e,
            "tag=cancel:1",
            context(&[("Dockerfile", recipe.as_bytes())])?,
            &e.token,
        )?;
        let resp = warren_server::router(e.state.clone()).oneshot(req).await?;
        ensure!(resp.status() == StatusCode::OK);
        let mut body = resp.into_body().into_data_stream();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        loop {
            ensure!(
                Instant::now() < deadline,
                "no output: {:?}",
                String::from_utf8_lossy(&seen)
            );
            match tokio::time::timeout(Duration::from_secs(30), body.next()).await {
                Ok(Some(Ok(chunk))) => seen.extend_from_slice(&chunk),
                other => bail!("stream ended: {other:?}"),
            }
            // The log line, not the step's text.
            if String::from_utf8_lossy(&seen).contains(r#""data":"started"#) {
                break;
            }
        }
        ensure!(build_sandboxes(&e).len() == 1, "{:?}", build_sandboxes(&e));
        drop(body);
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut gone = false;
        while Instant::now() < deadline {
            if build_sandboxes(&e).is_empty() {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        ensure!(
            gone,
            "the step sandbox outlived the client: {:?}",
            build_sandboxes(&e)
        );
        let (s, _) = e.admin("GET", "/v1/images/cancel:1", None).await?;
        ensure!(s == StatusCode::NOT_FOUND, "{s}");
        Ok(())
    }
    .await;
    e.teardown().await;
    r
}

/// A `FROM` the store lacks is pulled from a (loopback) registry, with its
/// progress in the build's log; the next build finds it in the store.
async fn from_a_registry() -> Result<()> {
    use warren_testkit::registry::{busybox_tar, Compress, LayoutBuilder, Registry, TestConfig};
    let reg = Registry::start()?;
    let work = tempfile::tempdir()?;
    let mut layout = LayoutBuilder::new(&work.path().join("layout"))?;
    let layer = layout.layer(&busybox_tar()?, Compress::Gzip)?;
    layout.image(
        "v1",
        &[layer],
        &TestConfig {
            env: vec!["PATH=/bin".into()],
            ..Default::default()
        },
    )?;
    reg.push(layout.dir(), "v1", "test/bb:v1")?;
    let host = reg.host();
    let e = env_with(|cfg, data| {
        let path = data.join("registries.json");
        std::fs::write(
            &path,
            json!({"default_registry": "127.0.0.1:9", "registries": {host.clone(): {"insecure": true}, "127.0.0.1:9": {"insecure": true}}}).to_string(),
        )?;
        cfg.registries = Some(path);
        Ok(())
    })
    .await?;
    let r = async {
        let recipe = format!("FROM {host}/test/bb:v1\nRUN echo on-the-pulled-image\n");
        let ctx = context(&[("Dockerfile", recipe.as_bytes())])?;
        let (s, ev) = build(&e, "tag=pulled:1", ctx.clone()).await?;
        ensure!(s == StatusCode::OK, "{s} {ev:?}");
        ensure!(ev.last().context("x")?["event"] == "done", "{ev:?}");
        ensure!(cached_flags(&ev) == [false, false], "{ev:?}");
        let err = logs(&ev, "stderr");
        ensure!(
            err.contains("pulling ") && err.contains(": unpacked") && err.contains("pulled "),
            "{err:?}"
        );
        ensure!(logs(&ev, "stdout") == "on-the-pulled-image\n", "{ev:?}");
        let (_, ev) = build(&e, "tag=pulled:2", ctx).await?;
        ensure!(cached_flags(&ev) == [true, true], "{ev:?}");
        ensure!(logs(&ev, "stderr").is_empty(), "{ev:?}");
        Ok(())
    }
    .await;
    e.teardown().await;
    r
}

fn main() {
    warren_init::run_if_init();
    common::init_logging();
    let args = Arguments::from_args();
    let tests = vec![
        t!(build_run_and_cache),
        t!(failing_run_leaves_nothing),
        t!(refusals),
        t!(gc_during_a_build),
        t!(disconnect_cancels),
        common::trial_with(
            "from_a_registry",
            || Box::pin(from_a_registry()),
            warren_testkit::registry::require_tools,
        ),
    ];
    libtest_mimic::run(&args, tests).exit()
}
