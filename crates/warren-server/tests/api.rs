//! The API router driven directly (`oneshot`), over a real state store and
//! real sandboxes. Our own `main` (libtest-mimic) because this binary is
//! also the sandboxes' init.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use libtest_mimic::Arguments;
use serde_json::{json, Value};
use tower::ServiceExt;
use warren_server::ServerConfig;

#[macro_use]
mod common;

use common::{cgroup_parent, code, env, env_with, trial, Env};

// ----------------------------------------------------------------- tests ---

async fn auth_is_required() -> Result<()> {
    let e = env().await?;
    let (s, v) = e.call("GET", "/v1/sandboxes", None, None).await?;
    ensure!(
        s == StatusCode::UNAUTHORIZED && code(&v) == "unauthenticated",
        "{s} {v}"
    );
    let (s, v) = e
        .call("GET", "/v1/sandboxes", Some("wrn_nope"), None)
        .await?;
    ensure!(
        s == StatusCode::UNAUTHORIZED && code(&v) == "unauthenticated",
        "{s} {v}"
    );
    let (s, _) = e.admin("GET", "/v1/sandboxes", None).await?;
    ensure!(s == StatusCode::OK);
    let (s, _) = e.call("GET", "/healthz", None, None).await?;
    ensure!(s == StatusCode::OK);
    let (s, v) = e.call("GET", "/metrics", None, None).await?;
    let text = v.as_str().unwrap_or_default();
    ensure!(
        s == StatusCode::OK && text.contains("warren_sandboxes{state=\"running\"}"),
        "{s} {text}"
    );
    ensure!(text.contains("warren_http_request_duration_seconds_bucket{method=\"GET\",route=\"/v1/sandboxes\",status=\"200\""), "{text}");
    let (s, v) = e.call("GET", "/v1/openapi.json", None, None).await?;
    ensure!(
        s == StatusCode::OK && v["components"]["schemas"]["Sandbox"].is_object(),
        "{v}"
    );
    // A revoked token stops working.
    let (s, v) = e
        .admin("POST", "/v1/tokens", Some(json!({"name": "ci"})))
        .await?;
    ensure!(s == StatusCode::CREATED, "{s} {v}");
    let secret = v["token"].as_str().context("secret")?.to_string();
    let tid = v["id"].as_str().context("id")?.to_string();
    ensure!(e.call("GET", "/v1/sandboxes", Some(&secret), None).await?.0 == StatusCode::OK);
    let (s, _) = e
        .admin("POST", &format!("/v1/tokens/{tid}/revoke"), None)
        .await?;
    ensure!(s == StatusCode::NO_CONTENT);
    ensure!(
        e.call("GET", "/v1/sandboxes", Some(&secret), None).await?.0 == StatusCode::UNAUTHORIZED
    );
    e.teardown().await;
    Ok(())
}

async fn validation_errors() -> Result<()> {
    let e = env().await?;
    let cases = [
        (json!({"imagee": "host"}), "invalid_json"),
        (json!({"timeout_secs": 0}), "invalid_argument"),
        (json!({"timeout_secs": 86401}), "invalid_argument"),
        (json!({"timeout_secs": -5}), "invalid_json"),
        (json!({"name": "Not A Name"}), "invalid_argument"),
        (json!({"cpu": 0}), "invalid_argument"),
        (json!({"memory_mib": 1}), "invalid_argument"),
        (json!({"command": []}), "invalid_argument"),
        (json!({"workdir": "relative"}), "invalid_argument"),
        (json!({"env": {"BAD KEY": "x"}}), "invalid_argument"),
        (
            json!({"env": {"BIG": "x".repeat(300 * 1024)}}),
            "invalid_argument",
        ),
        (
            json!({"tags": (0..65).map(|i| (format!("k{i}"), json!("v"))).collect::<serde_json::Map<_, _>>()}),
            "invalid_argument",
        ),
        // Not in the store, and the (loopback) default registry is down.
        (json!({"image": "no-such-image:1"}), "registry_unavailable"),
        // Image ids are never pulled.
        (
            json!({"image": format!("sha256:{}", "0".repeat(64))}),
            "image_not_found",
        ),
    ];
    for (body, want) in cases {
        let (s, v) = e.admin("POST", "/v1/sandboxes", Some(body.clone())).await?;
        ensure!(code(&v) == want, "{body} gave {s} {v}, want {want}");
        ensure!(
            s.is_client_error() || (want == "registry_unavailable" && s == StatusCode::BAD_GATEWAY),
            "{body} gave {s}"
        );
    }
    let (s, v) = e.admin("GET", "/v1/sandboxes?bogus=1", None).await?;
    ensure!(
        s == StatusCode::BAD_REQUEST && code(&v) == "invalid_argument",
        "{s} {v}"
    );
    let (s, v) = e.admin("GET", "/v1/sandboxes/sb-nope", None).await?;
    ensure!(
        s == StatusCode::NOT_FOUND && code(&v) == "sandbox_not_found",
        "{s} {v}"
    );
    e.teardown().await;
    Ok(())
}

async fn run_exit_code_and_exec() -> Result<()> {
    let e = env().await?;
    let id = e.create(json!({"command": ["sh", "-c", "exit 3"]})).await?;
    let v = e.wait_end(&id).await?;
    ensure!(
        v["termination"]["reason"] == "exited" && v["termination"]["exit_code"] == 3,
        "{v}"
    );

    let id = e
        .create(json!({"env": {"FOO": "bar"}, "workdir": "/tmp"}))
        .await?;
    let (s, v) = e
        .admin("POST", &format!("/v1/sandboxes/{id}/exec"), Some(json!({"command": ["sh", "-c", "echo $FOO; pwd; echo oops >&2; cat; exit 4"], "stdin": "in\n"})))
        .await?;
    ensure!(s == StatusCode::OK, "{s} {v}");
    ensure!(
        v["exit_code"] == 4 && v["stdout"] == "bar\n/tmp\nin\n" && v["stderr"] == "oops\n",
        "{v}"
    );
    let (_, v) = e
        .admin(
            "POST",
            &format!("/v1/sandboxes/{id}/exec"),
            Some(json!({"command": ["sleep", "100"], "timeout_secs": 1})),
        )
        .await?;
    ensure!(v["timed_out"] == true && v["signal"] == 9, "{v}");
    let (s, v) = e
        .admin(
            "POST",
            &format!("/v1/sandboxes/{id}/exec"),
            Some(json!({"command": ["/no/such"]})),
        )
        .await?;
    ensure!(
        s == StatusCode::BAD_REQUEST && code(&v) == "exec_not_found",
        "{s} {v}"
    );
    let (s, v) = e
        .admin("POST", &format!("/v1/sandboxes/{id}/terminate"), None)
        .await?;
    ensure!(
        s == StatusCode::OK && v["termination"]["reason"] == "terminated",
        "{s} {v}"
    );
    ensure!(
        v["termination"]["detail"]
            .as_str()
            .unwrap_or("")
            .contains("token"),
        "{v}"
    );
    let (s, v) = e
        .admin(
            "POST",
            &format!("/v1/sandboxes/{id}/exec"),
            Some(json!({"command": ["true"]})),
        )
        .await?;
    ensure!(
        s == StatusCode::CONFLICT && code(&v) == "sandbox_terminated",
        "{s} {v}"
    );
    e.teardown().await;
    Ok(())
}

async fn timeouts_and_oom_have_reasons() -> Result<()> {
    let e = env().await?;
    let t = e.create(json!({"timeout_secs": 1})).await?;
    let idle = e.create(json!({"idle_timeout_secs": 1})).await?;
    let oom = e
        .create(json!({"memory_mib": 32, "command": ["python3", "-c", "b = []\nwhile True: b.append(bytearray(8 << 20))"]}))
        .await?;
    let v = e.wait_end(&t).await?;
    ensure!(v["termination"]["reason"] == "timeout", "{v}");
    let v = e.wait_end(&idle).await?;
    ensure!(v["termination"]["reason"] == "idle_timeout", "{v}");
    let v = e.wait_end(&oom).await?;
    ensure!(
        v["termination"]["reason"] == "oom_killed" && v["termination"]["exit_code"] == 137,
        "{v}"
    );
    // A running exec keeps a sandbox from idling out.
    let busy = e.create(json!({"idle_timeout_secs": 1})).await?;
    let (_, v) = e
        .admin(
            "POST",
            &format!("/v1/sandboxes/{busy}/exec"),
            Some(json!({"command": ["sleep", "2.5"]})),
        )
        .await?;
    ensure!(v["exit_code"] == 0, "busy exec: {v}");
    e.teardown().await;
    Ok(())
}

async fn workspaces_are_isolated() -> Result<()> {
    let e = env().await?;
    let id = e.create(json!({"tags": {"user": "a"}})).await?;
    let (s, ws) = e
        .admin("POST", "/v1/workspaces", Some(json!({"name": "other"})))
        .await?;
    ensure!(s == StatusCode::CREATED, "{s} {ws}");
    let (s, tok) = e
        .admin(
            "POST",
            "/v1/tokens",
            Some(json!({"name": "b", "workspace_id": ws["id"]})),
        )
        .await?;
    ensure!(s == StatusCode::CREATED, "{s} {tok}");
    let b = tok["token"].as_str().context("token")?;
    let (s, v) = e
        .call("GET", &format!("/v1/sandboxes/{id}"), Some(b), None)
        .await?;
    ensure!(
        s == StatusCode::NOT_FOUND && code(&v) == "sandbox_not_found",
        "{s} {v}"
    );
    let (s, _) = e
        .call(
            "POST",
            &format!("/v1/sandboxes/{id}/terminate"),
            Some(b),
            None,
        )
        .await?;
    ensure!(s == StatusCode::NOT_FOUND);
    let (_, v) = e.call("GET", "/v1/sandboxes", Some(b), None).await?;
    ensure!(v["sandboxes"].as_array().map(Vec::len) == Some(0), "{v}");
    // A non-admin token cannot create workspaces or admin tokens.
    let (s, v) = e
        .call(
            "POST",
            "/v1/workspaces",
            Some(b),
            Some(json!({"name": "x"})),
        )
        .await?;
    ensure!(
        s == StatusCode::FORBIDDEN && code(&v) == "forbidden",
        "{s} {v}"
    );
    let (s, _) = e
        .call(
            "POST",
            "/v1/tokens",
            Some(b),
            Some(json!({"name": "x", "admin": true})),
        )
        .await?;
    ensure!(s == StatusCode::FORBIDDEN);
    e.teardown().await;
    Ok(())
}

async fn names_tags_and_pagination() -> Result<()> {
    let e = env().await?;
    let a = e
        .create(json!({"name": "app", "tags": {"user": "u1", "tier": "free"}}))
        .await?;
    let (s, v) = e
        .admin("POST", "/v1/sandboxes", Some(json!({"name": "app"})))
        .await?;
    ensure!(
        s == StatusCode::CONFLICT && code(&v) == "name_conflict",
        "{s} {v}"
    );
    for i in 0..5 {
        e.create(json!({"tags": {"user": format!("u{}", i % 2)}}))
            .await?;
    }
    let (_, v) = e
        .admin("GET", "/v1/sandboxes?tag=user=u1&tag=tier=free", None)
        .await?;
    let got: Vec<&str> = v["sandboxes"]
        .as_array()
        .context("list")?
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    ensure!(got == vec![a.as_str()], "tag filter: {got:?}");
    let mut seen = std::collections::BTreeSet::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let q = match &cursor {
            Some(c) => format!("/v1/sandboxes?limit=2&cursor={c}"),
            None => "/v1/sandboxes?limit=2".into(),
        };
        let (s, v) = e.admin("GET", &q, None).await?;
        ensure!(s == StatusCode::OK, "{s} {v}");
        for s in v["sandboxes"].as_array().context("page")? {
            ensure!(
                seen.insert(s["id"].as_str().unwrap_or("").to_string()),
                "duplicate across pages"
            );
        }
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    ensure!(seen.len() == 6, "paged {} of 6", seen.len());
    let (s, v) = e
        .admin(
            "PUT",
            &format!("/v1/sandboxes/{a}/tags"),
            Some(json!({"tags": {"k": "v"}})),
        )
        .await?;
    ensure!(
        s == StatusCode::OK && v["tags"] == json!({"k": "v"}),
        "{s} {v}"
    );
    // The name is free again once its sandbox ended.
    e.admin("POST", &format!("/v1/sandboxes/{a}/terminate"), None)
        .await?;
    e.create(json!({"name": "app"})).await?;
    e.teardown().await;
    Ok(())
}

async fn restart_readopts_running_sandboxes() -> Result<()> {
    // The first server lives in its own tokio runtime, which is then shut
    // down without any cleanup: its supervisor tasks vanish as in a crash.
    let (data, token, (id, half), ended) = std::thread::spawn(|| -> Result<_> {
        let rt = tokio::runtime::Runtime::new()?;
        let r = rt.block_on(async {
            let e = env().await?;
            let id = e.create(json!({"timeout_secs": 60})).await?;
            let ended = e
                .create(json!({"command": ["sh", "-c", "sleep 0.5; exit 6"]}))
                .await?;
            // A crash between the node's create and the record's `running`:
            // the sandbox runs, its record still says `creating`.
            let half = warren_store::new_sandbox_id();
            let principal = e
                .state
                .store
                .authenticate(&e.token)
                .await?
                .context("admin")?;
            e.state
                .store
                .insert_sandbox(&warren_store::NewSandbox {
                    id: half.clone(),
                    workspace_id: principal.workspace_id,
                    name: None,
                    image: "host".into(),
                    spec: Default::default(),
                    tags: Default::default(),
                    node_id: warren_store::LOCAL_NODE_ID.into(),
                })
                .await?;
            e.state
                .node
                .create(
                    warren_node::CreateRequest {
                        id: warren_runtime::SandboxId::new(half.clone())?,
                        image: "host".into(),
                        command: None,
                        env: vec![],
                        workdir: None,
                        user: None,
                        use_image_command: false,
                        limits: Default::default(),
                        log_capacity: None,
                        network: Default::default(),
                    },
                    None,
                    None,
                )
                .await?;
            e.sweeper.abort();
            std::mem::forget(e.state);
            Ok::<_, anyhow::Error>((e.data, e.token, (id, half), ended))
        });
        rt.shutdown_background();
        r
    })
    .join()
    .map_err(|_| anyhow::anyhow!("first server panicked"))??;
    // Let the short-lived sandbox end while nobody watches.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut cfg = ServerConfig::new("127.0.0.1:0".parse()?, data.path());
    cfg.cgroup_parent = Some(cgroup_parent(data.path()));
    let state = warren_server::open(&cfg).await?;
    let e2 = Env {
        sweeper: state.supervisor.spawn_sweeper(Duration::from_millis(100)),
        state,
        token,
        data,
    };
    let (s, v) = e2
        .admin("GET", &format!("/v1/sandboxes/{id}"), None)
        .await?;
    ensure!(s == StatusCode::OK && v["state"] == "running", "{s} {v}");
    let (s, v) = e2
        .admin("GET", &format!("/v1/sandboxes/{half}"), None)
        .await?;
    ensure!(
        s == StatusCode::OK && v["state"] == "running" && v["started_at"].is_string(),
        "half-created: {s} {v}"
    );
    let (_, v) = e2
        .admin(
            "POST",
            &format!("/v1/sandboxes/{id}/exec"),
            Some(json!({"command": ["echo", "alive"]})),
        )
        .await?;
    ensure!(v["stdout"] == "alive\n", "{v}");
    let v = e2.wait_end(&ended).await?;
    ensure!(
        v["termination"]["reason"] == "exited" && v["termination"]["exit_code"] == 6,
        "{v}"
    );
    e2.teardown().await;
    Ok(())
}

async fn streaming_exec_over_websocket() -> Result<()> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};
    let e = env().await?;
    let id = e.create(json!({})).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = warren_server::router(e.state.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let connect = |start: Value| {
        let token = e.token.clone();
        let id = id.clone();
        async move {
            let mut req =
                format!("ws://{addr}/v1/sandboxes/{id}/exec/stream").into_client_request()?;
            req.headers_mut()
                .insert("authorization", format!("Bearer {token}").parse()?);
            let (mut ws, _) = tokio_tungstenite::connect_async(req).await?;
            ws.send(Message::Text(start.to_string().into())).await?;
            Ok::<_, anyhow::Error>(ws)
        }
    };
    // stdin in, stdout and stderr out, exit code; 8 MiB through stdout.
    let mut ws = connect(
        json!({"command": ["sh", "-c", "cat; echo err >&2; head -c 8388608 /dev/zero; exit 7"]}),
    )
    .await?;
    ws.send(Message::Binary(vec![0u8, b'h', b'i', b'\n'].into()))
        .await?;
    ws.send(Message::Text(
        json!({"type": "stdin_eof"}).to_string().into(),
    ))
    .await?;
    let (mut out, mut err, mut exit) = (Vec::new(), Vec::new(), None);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while let Ok(Some(m)) = tokio::time::timeout_at(deadline, ws.next()).await {
        match m? {
            Message::Binary(b) if b.first() == Some(&1) => out.extend_from_slice(&b[1..]),
            Message::Binary(b) if b.first() == Some(&2) => err.extend_from_slice(&b[1..]),
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t)?;
                if v["type"] == "exit" {
                    exit = Some(v);
                }
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    let exit = exit.context("no exit frame")?;
    ensure!(exit["exit_code"] == 7, "{exit}");
    ensure!(
        out.len() == 3 + 8 * 1024 * 1024 && out.starts_with(b"hi\n"),
        "stdout {} bytes",
        out.len()
    );
    ensure!(
        err == b"err\n",
        "stderr {:?}",
        String::from_utf8_lossy(&err)
    );
    // A terminal: the program sees a tty of the asked size.
    let mut ws = connect(
        json!({"command": ["sh", "-c", "tty; stty size"], "tty": {"rows": 40, "cols": 120}}),
    )
    .await?;
    let mut text = Vec::new();
    let mut code = None;
    while let Ok(Some(m)) = tokio::time::timeout_at(deadline, ws.next()).await {
        match m? {
            Message::Binary(b) => text.extend_from_slice(&b[1..]),
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t)?;
                if v["type"] == "exit" {
                    code = v["exit_code"].as_i64();
                }
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    let text = String::from_utf8_lossy(&text);
    ensure!(
        text.contains("/dev/pts/") && text.contains("40 120"),
        "tty output {text:?}"
    );
    ensure!(code == Some(0), "tty exit {code:?}");
    // Signals reach the process.
    let mut ws = connect(json!({"command": ["sleep", "100"]})).await?;
    ws.send(Message::Text(
        json!({"type": "signal", "signal": 15}).to_string().into(),
    ))
    .await?;
    let mut sig = None;
    while let Ok(Some(m)) = tokio::time::timeout_at(deadline, ws.next()).await {
        if let Message::Text(t) = m? {
            let v: Value = serde_json::from_str(&t)?;
            if v["type"] == "exit" {
                sig = v["signal"].as_i64();
            }
        }
    }
    ensure!(sig == Some(15), "signal exit {sig:?}");
    server.abort();
    e.teardown().await;
    Ok(())
}

/// This process's resident memory (the server runs in it), in MiB.
fn rss_mib() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS")?;
    Ok(kib / 1024)
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens an exec stream over a real socket and sends the start message.
async fn connect_exec(
    addr: std::net::SocketAddr,
    token: &str,
    id: &str,
    start: Value,
) -> Result<Ws> {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};
    let mut req = format!("ws://{addr}/v1/sandboxes/{id}/exec/stream").into_client_request()?;
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await?;
    ws.send(Message::Text(start.to_string().into())).await?;
    Ok(ws)
}

/// Reads frames until the exit frame; returns (stdout byte count, its first
/// 64 KiB, exit frame). Only counts the rest, so that the test's own
/// buffers don't show up in the memory it measures.
async fn drain_exec(ws: &mut Ws, limit: Duration) -> Result<(u64, Vec<u8>, Value)> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let deadline = tokio::time::Instant::now() + limit;
    let mut out = Vec::new();
    let mut count = 0u64;
    while let Ok(Some(m)) = tokio::time::timeout_at(deadline, ws.next()).await {
        match m? {
            Message::Binary(b) if b.first() == Some(&1) => {
                count += b.len() as u64 - 1;
                let room = (64 * 1024usize).saturating_sub(out.len()).min(b.len() - 1);
                out.extend_from_slice(&b[1..1 + room]);
            }
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t)?;
                if v["type"] == "exit" {
                    return Ok((count, out, v));
                }
                ensure!(v["type"] == "started", "frame {v}");
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    anyhow::bail!("no exit frame ({count} bytes of stdout)")
}

/// Floods through the server (issue #4): a process writing as fast as it
/// can to a client that stops reading, a client sending stdin as fast as it
/// can to a process that is not reading, and `cat` echoing a large input.
/// Neither direction grows this process's memory without bound, the writer
/// is held back, and nothing is lost.
async fn floods_are_bounded() -> Result<()> {
    let e = env().await?;
    let r = floods(&e).await;
    e.teardown().await;
    r
}

async fn floods(e: &Env) -> Result<()> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    const MIB: u64 = 1024 * 1024;
    let id = e.create(json!({})).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = warren_server::router(e.state.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let read_count = |path: &'static str| {
        let id = id.clone();
        async move {
            let (s, v) = e
                .admin(
                    "POST",
                    &format!("/v1/sandboxes/{id}/exec"),
                    Some(json!({"command": ["cat", path]})),
                )
                .await?;
            ensure!(s == StatusCode::OK, "{s} {v}");
            let n: u64 = v["stdout"]
                .as_str()
                .unwrap_or("")
                .trim()
                .parse()
                .unwrap_or(0);
            Ok::<_, anyhow::Error>(n)
        }
    };

    // 1. Output flood: 256 MiB written as fast as possible; the client reads
    // nothing for 3 s. The writer records how far it got in /tmp/out.
    let total = 256 * MIB;
    let writer = format!(
        "import os\nbuf=b'x'*65536\nn=0\nwhile n<{total}:\n    n+=os.write(1,buf)\n    open('/tmp/out','w').write(str(n))\n"
    );
    let rss0 = rss_mib()?;
    let mut ws = connect_exec(
        addr,
        &e.token,
        &id,
        json!({"command": ["python3", "-c", writer]}),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let produced = read_count("/tmp/out").await?;
    let rss1 = rss_mib()?;
    eprintln!(
        "output flood: writer got {:.1} MiB out in 3 s with no reader; rss {rss0} -> {rss1} MiB",
        produced as f64 / MIB as f64
    );
    ensure!(produced > 0, "the writer never started");
    ensure!(
        produced < 48 * MIB,
        "back-pressure did not reach the writer: {produced} bytes written with no reader"
    );
    ensure!(rss1 < rss0 + 48, "memory grew from {rss0} to {rss1} MiB");
    let (count, _, exit) = drain_exec(&mut ws, Duration::from_secs(60)).await?;
    ensure!(exit["exit_code"] == 0, "{exit}");
    ensure!(count == total, "{count} of {total} bytes arrived");
    let rss1 = rss_mib()?;
    drop(ws);

    // 2. Stdin flood: the process sleeps 3 s before reading; the client sends
    // 128 MiB in 1 MiB frames as fast as the connection takes them.
    let total = 128 * MIB;
    let reader = "import os,sys,time\ntime.sleep(3)\nn=0\nwhile True:\n    d=os.read(0,1<<20)\n    if not d: break\n    n+=len(d)\nprint(n)\n";
    let ws = connect_exec(
        addr,
        &e.token,
        &id,
        json!({"command": ["python3", "-c", reader]}),
    )
    .await?;
    let (mut tx, rx) = ws.split();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sent2 = sent.clone();
    let sender = tokio::spawn(async move {
        let mut frame = vec![b'y'; MIB as usize + 1];
        frame[0] = 0;
        let mut n = 0;
        while n < total {
            tx.send(Message::Binary(frame.clone().into())).await?;
            n += MIB;
            sent2.store(n, std::sync::atomic::Ordering::Relaxed);
        }
        tx.send(Message::Text(
            json!({"type": "stdin_eof"}).to_string().into(),
        ))
        .await?;
        Ok::<_, anyhow::Error>(tx)
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let accepted = sent.load(std::sync::atomic::Ordering::Relaxed);
    let rss2 = rss_mib()?;
    eprintln!(
        "stdin flood: client got {:.1} MiB sent in 2 s to a process not reading; rss {rss1} -> {rss2} MiB",
        accepted as f64 / MIB as f64
    );
    ensure!(
        accepted < 48 * MIB,
        "back-pressure did not reach the client: {accepted} bytes accepted"
    );
    ensure!(rss2 < rss0 + 48, "memory grew from {rss0} to {rss2} MiB");
    let tx = tokio::time::timeout(Duration::from_secs(60), sender).await???;
    let mut ws = tx.reunite(rx).map_err(|_| anyhow::anyhow!("reunite"))?;
    let (_, out, exit) = drain_exec(&mut ws, Duration::from_secs(60)).await?;
    ensure!(exit["exit_code"] == 0, "{exit}");
    ensure!(
        String::from_utf8_lossy(&out).trim() == total.to_string(),
        "the process read {:?} of {total} bytes",
        String::from_utf8_lossy(&out)
    );
    drop(ws);

    // 3. `cat` echoing 32 MiB while it arrives: output must keep flowing
    // while stdin is queued (no deadlock), and come back byte for byte.
    let total = 32 * MIB as usize;
    let ws = connect_exec(addr, &e.token, &id, json!({"command": ["cat"]})).await?;
    let (mut tx, mut rx) = ws.split();
    let sender = tokio::spawn(async move {
        let mut i = 0u32;
        let mut n = 0;
        while n < total {
            let mut frame = Vec::with_capacity(256 * 1024 + 1);
            frame.push(0u8);
            while frame.len() < 256 * 1024 + 1 {
                frame.extend_from_slice(&i.to_le_bytes());
                i = i.wrapping_add(1);
            }
            n += frame.len() - 1;
            tx.send(Message::Binary(frame.into())).await?;
        }
        tx.send(Message::Text(
            json!({"type": "stdin_eof"}).to_string().into(),
        ))
        .await?;
        Ok::<_, anyhow::Error>(tx)
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut echoed = Vec::with_capacity(total);
    let mut exit = None;
    while let Ok(Some(m)) = tokio::time::timeout_at(deadline, rx.next()).await {
        match m? {
            Message::Binary(b) if b.first() == Some(&1) => echoed.extend_from_slice(&b[1..]),
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t)?;
                if v["type"] == "exit" {
                    exit = Some(v);
                    break;
                }
            }
            _ => {}
        }
    }
    ensure!(
        exit.is_some(),
        "cat never exited ({} bytes echoed)",
        echoed.len()
    );
    let _tx = tokio::time::timeout(Duration::from_secs(10), sender).await???;
    ensure!(
        echoed.len() == total,
        "{} of {total} bytes echoed",
        echoed.len()
    );
    let intact = echoed
        .chunks(4)
        .enumerate()
        .all(|(i, c)| c == (i as u32).to_le_bytes());
    ensure!(intact, "echoed bytes differ from the input");
    server.abort();
    Ok(())
}

/// Fairness (issue #4): a sandbox pinning every CPU of the machine does not
/// starve the API or other sandboxes. Execs of `true` in a second sandbox
/// are timed quiet, then while the hog spins; the loaded median must stay
/// within a small factor of the quiet one.
async fn cpu_hog_does_not_starve_execs() -> Result<()> {
    let e = env().await?;
    let r = cpu_fairness(&e).await;
    e.teardown().await;
    r
}

async fn cpu_fairness(e: &Env) -> Result<()> {
    const RUNS: usize = 40;
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let victim = e.create(json!({})).await?;
    let time_execs = || async {
        let mut samples = Vec::with_capacity(RUNS);
        for _ in 0..RUNS {
            let t0 = std::time::Instant::now();
            let (s, v) = e
                .admin(
                    "POST",
                    &format!("/v1/sandboxes/{victim}/exec"),
                    Some(json!({"command": ["true"]})),
                )
                .await?;
            samples.push(t0.elapsed());
            ensure!(s == StatusCode::OK && v["exit_code"] == 0, "{s} {v}");
        }
        samples.sort();
        Ok::<_, anyhow::Error>(samples)
    };
    let quiet = time_execs().await?;
    // Twice as many spinning processes as CPUs, in a sandbox allowed them all.
    let spin = format!(
        "for i in $(seq {}); do (while :; do :; done) & done; wait",
        cpus * 2
    );
    let hog = e
        .create(json!({"cpu": cpus as f64, "command": ["sh", "-c", spin]}))
        .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu0 = cpu_used(&cgroup_parent(e.data.path()))?;
    let t0 = std::time::Instant::now();
    let loaded = time_execs().await?;
    let busy = (cpu_used(&cgroup_parent(e.data.path()))? - cpu0) / t0.elapsed().as_secs_f64();
    // The hog really spun (else the comparison means nothing). It gets less
    // than every CPU when other work (parallel tests) shares the machine.
    ensure!(busy >= 0.5, "the hog used only {busy:.2} CPUs of {cpus}");
    let (s, v) = e
        .admin("GET", &format!("/v1/sandboxes/{hog}"), None)
        .await?;
    ensure!(
        s == StatusCode::OK && v["state"] == "running",
        "hog: {s} {v}"
    );
    let p = |v: &[Duration], q: usize| v[(v.len() - 1) * q / 100].as_secs_f64() * 1e3;
    eprintln!(
        "exec true in another sandbox, {RUNS} runs each ({cpus} CPUs, {} spinners using \
         {busy:.2} CPUs): quiet p50 {:.2} ms p90 {:.2} ms; under the hog p50 {:.2} ms p90 {:.2} ms; \
         p50 ratio {:.2}",
        cpus * 2,
        p(&quiet, 50),
        p(&quiet, 90),
        p(&loaded, 50),
        p(&loaded, 90),
        p(&loaded, 50) / p(&quiet, 50)
    );
    // Starvation would show as seconds; a fair scheduler costs a few times
    // the quiet latency at most.
    ensure!(
        p(&loaded, 50) <= 5.0 * p(&quiet, 50) + 10.0,
        "execs starved: loaded p50 {:.2} ms vs quiet {:.2} ms",
        p(&loaded, 50),
        p(&quiet, 50)
    );
    ensure!(
        p(&loaded, 90) <= 250.0,
        "loaded p90 {:.2} ms",
        p(&loaded, 90)
    );
    Ok(())
}

/// CPU seconds used so far by every sandbox under a cgroup parent.
fn cpu_used(parent: &str) -> Result<f64> {
    let v1 = format!("/sys/fs/cgroup/cpuacct/{parent}/cpuacct.usage");
    if let Ok(ns) = std::fs::read_to_string(&v1) {
        return Ok(ns.trim().parse::<f64>()? / 1e9);
    }
    let v2 = std::fs::read_to_string(format!("/sys/fs/cgroup/{parent}/cpu.stat"))?;
    let usec = v2
        .lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .context("usage_usec")?;
    Ok(usec.trim().parse::<f64>()? / 1e6)
}

/// Issue #5 end to end through the API: a sandbox from an image that is
/// pulled implicitly from a real registry, with the image's env, workdir,
/// user and cmd honoured; explicit pulls (JSON and event stream), list,
/// inspect, removal refused while in use, GC keeping what is in use.
async fn images_from_a_registry() -> Result<()> {
    use warren_testkit::registry::{Compress, LayoutBuilder, Registry, TarBuilder, TestConfig};
    if !warren_testkit::registry::require_tools("images_from_a_registry") {
        return Ok(());
    }
    let reg = Registry::start()?;
    let work = tempfile::tempdir()?;
    let busybox = std::fs::read("/bin/busybox").context("busybox-static")?;
    let mut tar = TarBuilder::new()
        .dir("bin", 0o755)
        .file("bin/busybox", 0o755, &busybox);
    for applet in ["sh", "id", "pwd", "env", "echo", "sleep", "cat", "true"] {
        tar = tar.symlink(&format!("bin/{applet}"), "busybox");
    }
    let tar = tar
        .dir("etc", 0o755)
        .file(
            "etc/passwd",
            0o644,
            b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
        )
        .file(
            "etc/group",
            0o644,
            b"root:x:0:\napp:x:1000:\nstaff:x:50:app\n",
        )
        .dir("home", 0o755)
        .dir("srv", 0o755)
        .dir("srv/app", 0o777)
        .dir("tmp", 0o1777)
        .dir("proc", 0o755)
        .dir("dev", 0o755)
        .dir("sys", 0o755)
        .finish();
    let mut layout = LayoutBuilder::new(&work.path().join("layout"))?;
    let layer = layout.layer(&tar, Compress::Gzip)?;
    layout.image(
        "v1",
        &[layer],
        &TestConfig {
            env: vec!["PATH=/bin".into(), "GREETING=hello".into()],
            workdir: Some("/srv/app".into()),
            user: Some("app".into()),
            cmd: Some(vec![
                "sh".into(),
                "-c".into(),
                "echo cmd-ran $GREETING; id -u; pwd".into(),
            ]),
            entrypoint: None,
        },
    )?;
    reg.push(layout.dir(), "v1", "test/app:v1")?;
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
    let r = images_api(&e, &format!("{host}/test/app:v1")).await;
    e.teardown().await;
    r
}

fn enc(s: &str) -> String {
    s.replace('%', "%25")
        .replace('/', "%2F")
        .replace(':', "%3A")
}

async fn images_api(e: &Env, reference: &str) -> Result<()> {
    // Implicit pull on create; the image's Cmd runs as its User in its
    // WorkingDir with its Env.
    let id = e
        .create(json!({"image": reference, "use_image_command": true}))
        .await?;
    let v = e.wait_end(&id).await?;
    ensure!(
        v["termination"]["reason"] == "exited" && v["termination"]["exit_code"] == 0,
        "{v}"
    );
    let (s, logs) = e
        .admin("GET", &format!("/v1/sandboxes/{id}/logs"), None)
        .await?;
    ensure!(
        s == StatusCode::OK && logs.as_str() == Some("cmd-ran hello\n1000\n/srv/app\n"),
        "logs: {s} {logs}"
    );
    // An idle sandbox of the (now cached) image: execs inherit the same.
    let idle = e.create(json!({"image": reference})).await?;
    let exec = |cmd: Value| {
        let idle = idle.clone();
        async move {
            let (s, v) = e
                .admin("POST", &format!("/v1/sandboxes/{idle}/exec"), Some(cmd))
                .await?;
            ensure!(s == StatusCode::OK, "{s} {v}");
            Ok::<_, anyhow::Error>(v["stdout"].as_str().unwrap_or("").to_string())
        }
    };
    let out =
        exec(json!({"command": ["sh", "-c", "id -u; id -g; id -G; pwd; echo $GREETING $HOME"]}))
            .await?;
    ensure!(
        out == "1000\n1000\n1000 50\n/srv/app\nhello /home/app\n",
        "{out:?}"
    );
    let out = exec(json!({"command": ["id", "-u"], "user": "root"})).await?;
    ensure!(out == "0\n", "{out:?}");
    let out = exec(json!({"command": ["id", "-g"], "user": "app:staff"})).await?;
    ensure!(out == "50\n", "{out:?}");
    let (s, v) = e
        .admin(
            "POST",
            &format!("/v1/sandboxes/{idle}/exec"),
            Some(json!({"command": ["true"], "user": "nobody"})),
        )
        .await?;
    ensure!(
        s == StatusCode::BAD_REQUEST && code(&v) == "invalid_argument",
        "{s} {v}"
    );

    // List and inspect.
    let (s, v) = e.admin("GET", "/v1/images", None).await?;
    ensure!(s == StatusCode::OK, "{s} {v}");
    let listed = v["images"].as_array().context("images")?.iter().any(|i| {
        i["names"]
            .as_array()
            .is_some_and(|n| n.iter().any(|n| n == reference))
    });
    ensure!(listed, "{v}");
    let (s, v) = e
        .admin("GET", &format!("/v1/images/{}", enc(reference)), None)
        .await?;
    ensure!(
        s == StatusCode::OK
            && v["config"]["user"] == "app"
            && v["layers"].as_array().map(Vec::len) == Some(1),
        "{s} {v}"
    );
    let image_id = v["id"].as_str().context("id")?.to_string();

    // In use: removal refused, GC keeps it.
    let (s, v) = e
        .admin("DELETE", &format!("/v1/images/{}", enc(reference)), None)
        .await?;
    ensure!(
        s == StatusCode::CONFLICT && code(&v) == "image_in_use",
        "{s} {v}"
    );
    let (s, v) = e.admin("POST", "/v1/images/gc", None).await?;
    ensure!(s == StatusCode::OK, "{s} {v}");
    let (s, _) = e
        .admin("GET", &format!("/v1/images/{image_id}"), None)
        .await?;
    ensure!(s == StatusCode::OK, "gc removed an image in use");
    // Not for ordinary tokens.
    let (_, t) = e
        .admin("POST", "/v1/tokens", Some(json!({"name": "plain"})))
        .await?;
    if let Some(tok) = t["token"].as_str() {
        let (s, v) = e.call("POST", "/v1/images/gc", Some(tok), None).await?;
        ensure!(
            s == StatusCode::FORBIDDEN && code(&v) == "forbidden",
            "{s} {v}"
        );
    }

    // Once nothing uses it, it can go, and GC frees its layer.
    let (s, _) = e
        .admin("POST", &format!("/v1/sandboxes/{idle}/terminate"), None)
        .await?;
    ensure!(s == StatusCode::OK, "terminate {s}");
    e.wait_end(&idle).await?;
    let (s, v) = e
        .admin("DELETE", &format!("/v1/images/{}", enc(reference)), None)
        .await?;
    ensure!(s == StatusCode::NO_CONTENT, "{s} {v}");
    let (s, v) = e
        .admin("GET", &format!("/v1/images/{image_id}"), None)
        .await?;
    ensure!(
        s == StatusCode::NOT_FOUND && code(&v) == "image_not_found",
        "{s} {v}"
    );
    let (s, v) = e.admin("POST", "/v1/images/gc", None).await?;
    ensure!(s == StatusCode::OK, "{s} {v}");

    // Explicit pull with progress as server-sent events.
    let req = Request::builder()
        .method("POST")
        .uri("/v1/images/pull")
        .header("authorization", format!("Bearer {}", e.token))
        .header("content-type", "application/json")
        .header("accept", "text/event-stream")
        .body(Body::from(json!({"reference": reference}).to_string()))?;
    let resp = warren_server::router(e.state.clone()).oneshot(req).await?;
    ensure!(
        resp.status() == StatusCode::OK,
        "pull stream {}",
        resp.status()
    );
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await?;
    let text = String::from_utf8_lossy(&body);
    for want in [
        "event: progress",
        "\"event\":\"resolved\"",
        "\"event\":\"layer_unpacked\"",
        "event: done",
    ] {
        ensure!(
            text.contains(want),
            "no {want:?} in the pull stream: {text}"
        );
    }
    // Plain JSON pull (already present), and errors with their codes.
    let (s, v) = e
        .admin(
            "POST",
            "/v1/images/pull",
            Some(json!({"reference": reference})),
        )
        .await?;
    ensure!(
        s == StatusCode::OK && v["config"]["workdir"] == "/srv/app",
        "{s} {v}"
    );
    let missing = reference.replace(":v1", ":nope");
    let (s, v) = e
        .admin(
            "POST",
            "/v1/images/pull",
            Some(json!({"reference": missing})),
        )
        .await?;
    ensure!(
        s == StatusCode::NOT_FOUND && code(&v) == "image_not_found",
        "{s} {v}"
    );
    let (s, v) = e
        .admin(
            "POST",
            "/v1/images/pull",
            Some(json!({"reference": "Bad Ref"})),
        )
        .await?;
    ensure!(s == StatusCode::BAD_REQUEST, "{s} {v}");
    let (s, v) = e
        .admin(
            "POST",
            "/v1/images/pull",
            Some(json!({"reference": "UPPER/case:x"})),
        )
        .await?;
    ensure!(
        s == StatusCode::BAD_REQUEST && code(&v) == "invalid_image_reference",
        "{s} {v}"
    );
    let (s, v) = e
        .admin("POST", "/v1/sandboxes", Some(json!({"image": missing})))
        .await?;
    ensure!(
        s == StatusCode::NOT_FOUND && code(&v) == "image_not_found",
        "{s} {v}"
    );
    Ok(())
}

/// Background execs (issue #6): start, list, attach with replay, stdin,
/// detach and attach again, buffered output, a flood that never blocks
/// the process, signals, kill, and activity for the idle timeout.
async fn background_execs() -> Result<()> {
    let e = env().await?;
    let r = background(&e).await;
    e.teardown().await;
    r
}

async fn background(e: &Env) -> Result<()> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};
    let id = e.create(json!({"idle_timeout_secs": 2})).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = warren_server::router(e.state.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let start = |cmd: &str| {
        let id = id.clone();
        let cmd = cmd.to_string();
        async move {
            let (s, v) = e
                .admin(
                    "POST",
                    &format!("/v1/sandboxes/{id}/execs"),
                    Some(json!({"command": ["sh", "-c", cmd]})),
                )
                .await?;
            ensure!(
                s == StatusCode::CREATED && v["state"] == "running",
                "{s} {v}"
            );
            Ok::<_, anyhow::Error>(v["id"].as_str().context("exec id")?.to_string())
        }
    };
    let get = |x: &str| {
        let path = format!("/v1/sandboxes/{id}/execs/{x}");
        async move { e.admin("GET", &path, None).await }
    };
    let attach = |x: &str| {
        let url = format!("ws://{addr}/v1/sandboxes/{id}/execs/{x}/attach");
        let token = e.token.clone();
        async move {
            let mut req = url.into_client_request()?;
            req.headers_mut()
                .insert("authorization", format!("Bearer {token}").parse()?);
            let (ws, _) = tokio_tungstenite::connect_async(req).await?;
            Ok::<_, anyhow::Error>(ws)
        }
    };
    // Reads frames until `until` holds for the output so far or an exit.
    async fn read_until(
        ws: &mut Ws,
        until: impl Fn(&str) -> bool,
    ) -> Result<(String, Option<Value>)> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut out = String::new();
        while let Ok(Some(m)) = tokio::time::timeout_at(deadline, ws.next()).await {
            match m? {
                Message::Binary(b) => out.push_str(&String::from_utf8_lossy(&b[1..])),
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(&t)?;
                    if v["type"] == "exit" {
                        return Ok((out, Some(v)));
                    }
                }
                Message::Close(_) => break,
                _ => {}
            }
            if until(&out) {
                return Ok((out, None));
            }
        }
        Ok((out, None))
    }

    // Output before anyone attaches is replayed; stdin reaches the process.
    let x = start("for i in 1 2 3; do echo line$i; done; read v; echo got:$v; exit 4").await?;
    let (s, v) = e
        .admin("GET", &format!("/v1/sandboxes/{id}/execs"), None)
        .await?;
    ensure!(
        s == StatusCode::OK && v["execs"][0]["id"] == x.as_str(),
        "{s} {v}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut ws = attach(&x).await?;
    let (out, exit) = read_until(&mut ws, |o| o.contains("line3")).await?;
    ensure!(
        out.contains("line1\nline2\nline3\n") && exit.is_none(),
        "{out:?}"
    );
    // Detach, attach again: the same output is replayed.
    drop(ws);
    let mut ws = attach(&x).await?;
    let (out, _) = read_until(&mut ws, |o| o.contains("line3")).await?;
    ensure!(out.starts_with("line1"), "{out:?}");
    ws.send(Message::Binary(b"\0hi\n".to_vec().into())).await?;
    let (out, exit) = read_until(&mut ws, |_| false).await?;
    ensure!(out.contains("got:hi"), "{out:?}");
    let exit = exit.context("no exit frame")?;
    ensure!(exit["exit_code"] == 4, "{exit}");
    let (_, v) = get(&x).await?;
    ensure!(v["state"] == "exited" && v["exit_code"] == 4, "{v}");
    let (s, _) = e
        .call(
            "GET",
            &format!("/v1/sandboxes/{id}/execs/{x}/output"),
            Some(&e.token),
            None,
        )
        .await?;
    ensure!(s == StatusCode::OK, "output {s}");

    // A flood with nobody attached: drained into the bounded buffer, the
    // process never blocks, the oldest output is dropped and counted.
    let flood = start("head -c 5242880 /dev/zero; echo done").await?;
    let ended = exec_ended(e, &id, &flood, Duration::from_secs(20)).await?;
    ensure!(ended, "the flooding exec never ended (blocked on output?)");
    let (_, v) = get(&flood).await?;
    ensure!(
        v["exit_code"] == 0
            && v["output_bytes"] == 5 * 1024 * 1024 + 5
            && v["output_dropped"].as_u64() >= Some(4 * 1024 * 1024),
        "{v}"
    );

    // Signals and kill.
    let sleeper = start("sleep 100").await?;
    let (s, v) = e
        .admin(
            "POST",
            &format!("/v1/sandboxes/{id}/execs/{sleeper}/signal"),
            Some(json!({"signal": 15})),
        )
        .await?;
    ensure!(s == StatusCode::ACCEPTED, "{s} {v}");
    let ok = exec_ended(e, &id, &sleeper, Duration::from_secs(10)).await?;
    ensure!(ok, "SIGTERM did not end the exec");
    let (_, v) = get(&sleeper).await?;
    ensure!(v["signal"] == 15, "{v}");
    // A running background exec keeps the sandbox from idling out (2 s).
    let long = start("sleep 4").await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, v) = e.admin("GET", &format!("/v1/sandboxes/{id}"), None).await?;
    ensure!(
        v["state"] == "running",
        "idled out during a background exec: {v}"
    );
    let (s, _) = e
        .admin("DELETE", &format!("/v1/sandboxes/{id}/execs/{long}"), None)
        .await?;
    ensure!(s == StatusCode::NO_CONTENT, "delete {s}");
    let (s, v) = get(&long).await?;
    ensure!(
        s == StatusCode::NOT_FOUND && code(&v) == "not_found",
        "{s} {v}"
    );
    let (s, v) = get("ex_nosuchexec").await?;
    ensure!(s == StatusCode::NOT_FOUND, "{s} {v}");
    server.abort();
    Ok(())
}

/// Polls a background exec until it has ended (bounded).
async fn exec_ended(e: &Env, sandbox: &str, exec: &str, limit: Duration) -> Result<bool> {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        let (_, v) = e
            .admin(
                "GET",
                &format!("/v1/sandboxes/{sandbox}/execs/{exec}"),
                None,
            )
            .await?;
        if v["state"] == "exited" {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(false)
}

/// An exec ends with its main process, even when a background process it
/// started keeps its pipes (or terminal) open: buffered, streaming (pipes
/// and a terminal) and background execs all report the exit promptly, with
/// the output written before it.
async fn exec_ends_with_its_main_process() -> Result<()> {
    let e = env().await?;
    let r = ends_with_main(&e).await;
    e.teardown().await;
    r
}

async fn ends_with_main(e: &Env) -> Result<()> {
    const SCRIPT: &str = "sleep 60 & echo started-bg; exit 3";
    let id = e.create(json!({})).await?;
    let t0 = std::time::Instant::now();
    let (s, v) = e
        .admin(
            "POST",
            &format!("/v1/sandboxes/{id}/exec"),
            Some(json!({"command": ["sh", "-c", SCRIPT]})),
        )
        .await?;
    ensure!(
        s == StatusCode::OK && v["exit_code"] == 3 && v["stdout"] == "started-bg\n",
        "{s} {v}"
    );
    ensure!(
        t0.elapsed() < Duration::from_secs(10),
        "buffered exec took {:?}",
        t0.elapsed()
    );
    // A background process that never stops writing to the pipe does not
    // keep a buffered exec open either.
    let t0 = std::time::Instant::now();
    let (s, v) = e
        .admin(
            "POST",
            &format!("/v1/sandboxes/{id}/exec"),
            Some(json!({"command": ["sh", "-c", "yes & sleep 0.2; exit 4"]})),
        )
        .await?;
    ensure!(s == StatusCode::OK && v["exit_code"] == 4, "{s} {v}");
    ensure!(
        t0.elapsed() < Duration::from_secs(10),
        "a writing background child kept the exec for {:?}",
        t0.elapsed()
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = warren_server::router(e.state.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    for start in [
        json!({"command": ["sh", "-c", SCRIPT]}),
        json!({"command": ["sh", "-c", SCRIPT], "tty": {"rows": 24, "cols": 80}}),
    ] {
        let t0 = std::time::Instant::now();
        let mut ws = connect_exec(addr, &e.token, &id, start.clone()).await?;
        let (_, out, exit) = drain_exec(&mut ws, Duration::from_secs(10)).await?;
        ensure!(exit["exit_code"] == 3, "{start}: {exit}");
        ensure!(
            String::from_utf8_lossy(&out).contains("started-bg"),
            "{start}: {:?}",
            String::from_utf8_lossy(&out)
        );
        ensure!(
            t0.elapsed() < Duration::from_secs(10),
            "{start} took {:?}",
            t0.elapsed()
        );
    }
    let (s, v) = e
        .admin(
            "POST",
            &format!("/v1/sandboxes/{id}/execs"),
            Some(json!({"command": ["sh", "-c", SCRIPT]})),
        )
        .await?;
    ensure!(s == StatusCode::CREATED, "{s} {v}");
    let x = v["id"].as_str().context("exec id")?.to_string();
    ensure!(
        exec_ended(e, &id, &x, Duration::from_secs(10)).await?,
        "background exec never ended"
    );
    server.abort();
    Ok(())
}

/// The file API (issue #6) end to end through the router: write, read
/// (ranges), stat, list, mkdir, rename, remove, distinct error codes,
/// permissions as another user, non-UTF-8 names, the disk limit, tar
/// archives both ways, and a watch.
async fn files_api() -> Result<()> {
    let e = env().await?;
    let r = files(&e).await;
    e.teardown().await;
    r
}

async fn raw(
    e: &Env,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> Result<(StatusCode, axum::http::HeaderMap, Vec<u8>)> {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {}", e.token))
        .body(Body::from(body))?;
    let resp = warren_server::router(e.state.clone()).oneshot(req).await?;
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, 256 << 20).await?;
    Ok((parts.status, parts.headers, bytes.to_vec()))
}

async fn files(e: &Env) -> Result<()> {
    use futures_util::StreamExt;
    let id = e.create(json!({"disk_mib": 16})).await?;
    let f = |q: &str| format!("/v1/sandboxes/{id}/files{q}");
    let json_of = |b: &[u8]| serde_json::from_slice::<Value>(b).unwrap_or(Value::Null);
    // Write (parents created), read whole and ranged, stat.
    let (s, _, b) = raw(
        e,
        "PUT",
        &f("?path=/tmp/a/b.txt&parents=true&mode=0640"),
        b"hello".to_vec(),
    )
    .await?;
    let v = json_of(&b);
    ensure!(
        s == StatusCode::OK && v["size"] == 5 && v["kind"] == "file" && v["mode"] == 0o640,
        "{s} {v}"
    );
    let (s, h, b) = raw(e, "GET", &f("?path=/tmp/a/b.txt"), vec![]).await?;
    ensure!(
        s == StatusCode::OK && b == b"hello" && h["x-warren-file-size"] == "5",
        "{s} {b:?}"
    );
    let (_, _, b) = raw(e, "GET", &f("?path=/tmp/a/b.txt&offset=1&length=3"), vec![]).await?;
    ensure!(b == b"ell", "{b:?}");
    let (s, _, b) = raw(e, "GET", &f("/stat?path=/tmp/a"), vec![]).await?;
    ensure!(
        s == StatusCode::OK && json_of(&b)["kind"] == "directory",
        "{s}"
    );
    // mkdir, list, rename, remove.
    let (s, _, _) = raw(e, "POST", &f("/mkdir?path=/tmp/d/e&parents=true"), vec![]).await?;
    ensure!(s == StatusCode::OK, "mkdir {s}");
    let (s, _, b) = raw(e, "POST", &f("/mkdir?path=/tmp/d"), vec![]).await?;
    ensure!(
        s == StatusCode::CONFLICT && code(&json_of(&b)) == "file_exists",
        "{s}"
    );
    let (s, _, b) = raw(
        e,
        "POST",
        &f("/rename?from=/tmp/a/b.txt&to=/tmp/d/c.txt"),
        vec![],
    )
    .await?;
    ensure!(s == StatusCode::NO_CONTENT, "rename {s} {:?}", json_of(&b));
    let (_, _, b) = raw(e, "GET", &f("/list?path=/tmp/d&recursive=true"), vec![]).await?;
    let v = json_of(&b);
    let paths: Vec<&str> = v["entries"]
        .as_array()
        .context("entries")?
        .iter()
        .filter_map(|x| x["path"].as_str())
        .collect();
    ensure!(
        paths.contains(&"/tmp/d/c.txt") && paths.contains(&"/tmp/d/e"),
        "{v}"
    );
    let (s, _, b) = raw(e, "DELETE", &f("?path=/tmp/d"), vec![]).await?;
    ensure!(
        s == StatusCode::CONFLICT && code(&json_of(&b)) == "directory_not_empty",
        "{s}"
    );
    let (s, _, _) = raw(e, "DELETE", &f("?path=/tmp/d&recursive=true"), vec![]).await?;
    ensure!(s == StatusCode::NO_CONTENT, "rm -r {s}");
    // Distinct codes for bad path, missing file, directory, permission.
    for (q, status, want) in [
        ("?path=relative", StatusCode::BAD_REQUEST, "invalid_path"),
        (
            "?path=/tmp/missing",
            StatusCode::NOT_FOUND,
            "file_not_found",
        ),
        ("?path=/tmp", StatusCode::BAD_REQUEST, "is_a_directory"),
        ("", StatusCode::BAD_REQUEST, "invalid_path"),
    ] {
        let (s, _, b) = raw(e, "GET", &f(q), vec![]).await?;
        ensure!(
            s == status && code(&json_of(&b)) == want,
            "{q}: {s} {}",
            json_of(&b)
        );
    }
    let (s, v) = e
        .admin("POST", &format!("/v1/sandboxes/{id}/exec"), Some(json!({"command": ["sh", "-c", "echo s > /root/secret; chmod 600 /root/secret; chmod 755 /root"]})))
        .await?;
    ensure!(s == StatusCode::OK && v["exit_code"] == 0, "{v}");
    let (s, _, b) = raw(e, "GET", &f("?path=/root/secret&user=1000"), vec![]).await?;
    ensure!(
        s == StatusCode::FORBIDDEN && code(&json_of(&b)) == "permission_denied",
        "{s}"
    );
    let (s, _, b) = raw(e, "GET", &f("?path=/root/secret"), vec![]).await?;
    ensure!(s == StatusCode::OK && b == b"s\n", "root read {s}");
    // A name that is not UTF-8 round-trips.
    let (s, _, _) = raw(e, "PUT", &f("?path=/tmp/%FF%FEname"), b"x".to_vec()).await?;
    ensure!(s == StatusCode::OK, "non-utf8 write {s}");
    let (_, _, b) = raw(e, "GET", &f("/list?path=/tmp"), vec![]).await?;
    let v = json_of(&b);
    let b64 = v["entries"]
        .as_array()
        .context("entries")?
        .iter()
        .find_map(|x| x["path_b64"].as_str())
        .context("a path_b64")?
        .to_string();
    let (s, _, b) = raw(
        e,
        "GET",
        &f(&format!(
            "?path_b64={}",
            b64.replace('+', "%2B")
                .replace('/', "%2F")
                .replace('=', "%3D")
        )),
        vec![],
    )
    .await?;
    ensure!(s == StatusCode::OK && b == b"x", "read by path_b64: {s}");
    // The disk limit: a clear error, and the sandbox is fine afterwards.
    let (s, _, b) = raw(e, "PUT", &f("?path=/tmp/big"), vec![7u8; 32 << 20]).await?;
    ensure!(
        s.as_u16() == 507 && code(&json_of(&b)) == "no_space",
        "{s} {}",
        json_of(&b)
    );
    let (s, v) = e
        .admin("POST", &format!("/v1/sandboxes/{id}/exec"), Some(json!({"command": ["sh", "-c", "ls /tmp/big 2>&1; echo ok > /tmp/after; cat /tmp/after"]})))
        .await?;
    ensure!(
        s == StatusCode::OK && v["stdout"].as_str().is_some_and(|o| o.ends_with("ok\n")),
        "{v}"
    );
    // Archives: a tar in, the same tree out; `..` refused.
    let mut tb = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8]| -> Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        tb.append_data(&mut h, path, data)?;
        Ok(())
    };
    add("top.txt", b"top")?;
    add("sub/deep/file.bin", &[1, 2, 3])?;
    let archive = tb.into_inner()?;
    let (s, _, b) = raw(e, "PUT", &f("/archive?path=/srv/up"), archive).await?;
    let v = json_of(&b);
    ensure!(
        s == StatusCode::OK && v["files"] == 2 && v["bytes"] == 6,
        "{s} {v}"
    );
    let (s, _, b) = raw(e, "GET", &f("/archive?path=/srv/up"), vec![]).await?;
    ensure!(s == StatusCode::OK, "download {s}");
    let mut got = std::collections::BTreeMap::new();
    for ent in tar::Archive::new(&b[..]).entries()? {
        let mut ent = ent?;
        let p = ent.path()?.to_string_lossy().into_owned();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut ent, &mut data)?;
        got.insert(p, data);
    }
    ensure!(
        got.get("top.txt").map(Vec::as_slice) == Some(&b"top"[..]),
        "{got:?}"
    );
    ensure!(
        got.get("sub/deep/file.bin").map(Vec::as_slice) == Some(&[1u8, 2, 3][..]),
        "{got:?}"
    );
    let mut evil = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(1);
    h.set_entry_type(tar::EntryType::Regular);
    {
        let name = b"../escape";
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
    }
    h.set_cksum();
    evil.append(&h, &b"x"[..])?;
    let (s, _, b) = raw(e, "PUT", &f("/archive?path=/srv/up"), evil.into_inner()?).await?;
    ensure!(
        s == StatusCode::BAD_REQUEST,
        "../ in an archive: {s} {}",
        json_of(&b)
    );
    // A watch sees a file appear.
    let (s, _, _) = raw(e, "POST", &f("/mkdir?path=/tmp/w"), vec![]).await?;
    ensure!(s == StatusCode::OK, "mkdir w {s}");
    let req = Request::builder()
        .uri(f("/watch?path=/tmp/w"))
        .header("authorization", format!("Bearer {}", e.token))
        .body(Body::empty())?;
    let resp = warren_server::router(e.state.clone()).oneshot(req).await?;
    ensure!(resp.status() == StatusCode::OK, "watch {}", resp.status());
    let mut events = resp.into_body().into_data_stream();
    let (s, _, _) = raw(e, "PUT", &f("?path=/tmp/w/new.txt"), b"n".to_vec()).await?;
    ensure!(s == StatusCode::OK, "write watched {s}");
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !seen.contains("/tmp/w/new.txt") {
        match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(Some(Ok(chunk))) => seen.push_str(&String::from_utf8_lossy(&chunk)),
            _ => break,
        }
    }
    ensure!(
        seen.contains("event: fs") && seen.contains("/tmp/w/new.txt"),
        "watch saw {seen:?}"
    );

    // An image without a dynamic loader or libc (a static busybox only):
    // the file agent still runs (it is a fork of init, nothing is exec'd).
    let root = tempfile::tempdir()?;
    for d in ["bin", "tmp", "proc", "dev", "sys", "etc"] {
        std::fs::create_dir(root.path().join(d))?;
    }
    std::fs::copy("/bin/busybox", root.path().join("bin/busybox"))?;
    std::os::unix::fs::symlink("busybox", root.path().join("bin/sh"))?;
    e.state
        .node
        .images()
        .import_dir(root.path(), "static-only:1")?;
    let bb = e.create(json!({"image": "static-only:1"})).await?;
    let g = |q: &str| format!("/v1/sandboxes/{bb}/files{q}");
    let (s, _, b) = raw(e, "PUT", &g("?path=/tmp/hello"), b"static".to_vec()).await?;
    ensure!(
        s == StatusCode::OK,
        "write in a static-only image: {s} {}",
        json_of(&b)
    );
    let (s, _, b) = raw(e, "GET", &g("?path=/tmp/hello"), vec![]).await?;
    ensure!(
        s == StatusCode::OK && b == b"static",
        "read in a static-only image: {s}"
    );
    Ok(())
}

async fn hundred_concurrent_creates() -> Result<()> {
    let e = std::sync::Arc::new(env().await?);
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let e = e.clone();
        tasks.push(tokio::spawn(async move {
            e.create(json!({"command": ["true"]})).await
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await??);
    }
    for id in &ids {
        let v = e.wait_end(id).await?;
        ensure!(
            v["termination"]["reason"] == "exited" && v["termination"]["exit_code"] == 0,
            "{v}"
        );
    }
    match std::sync::Arc::try_unwrap(e) {
        Ok(e) => e.teardown().await,
        Err(_) => anyhow::bail!("env still shared"),
    }
    Ok(())
}

fn main() {
    warren_init::run_if_init();
    common::init_logging();
    let args = Arguments::from_args();
    let tests = vec![
        t!(auth_is_required),
        t!(validation_errors),
        t!(run_exit_code_and_exec),
        t!(timeouts_and_oom_have_reasons),
        t!(workspaces_are_isolated),
        t!(names_tags_and_pagination),
        t!(restart_readopts_running_sandboxes),
        t!(streaming_exec_over_websocket),
        t!(hundred_concurrent_creates),
        t!(floods_are_bounded),
        t!(cpu_hog_does_not_starve_execs),
        t!(images_from_a_registry),
        t!(background_execs),
        t!(exec_ends_with_its_main_process),
        t!(files_api),
    ];
    libtest_mimic::run(&args, tests).exit()
}
