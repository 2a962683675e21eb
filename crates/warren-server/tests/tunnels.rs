//! Tunnels end to end: the API, the relay (in-process and in its own
//! task, reached over its TLS + HTTP/2 link) and real sandboxes running a
//! Node.js dev server (`tests/fixtures/tunnel-fixture.js`). All traffic is
//! on loopback; the relay reaches each sandbox's own loopback through its
//! network namespace.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use axum::http::StatusCode;
use libtest_mimic::{Arguments, Failed, Trial};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren_server::{ServerConfig, TunnelsConfig};

const FIXTURE: &str = include_str!("fixtures/tunnel-fixture.js");
#[macro_use]
mod common;

use common::{code, TestFn};

/// A server with a relay, and where its HTTPS front and CA are.
struct Env {
    base: common::Env,
    https: SocketAddr,
    ca: PathBuf,
}

impl std::ops::Deref for Env {
    type Target = common::Env;
    fn deref(&self) -> &common::Env {
        &self.base
    }
}

/// A relay config on loopback with its own raw port range (tests run in
/// parallel processes; each gets a different range).
fn relay_config(data: &Path, slot: u16) -> warren_relay::RelayConfig {
    let start = 32000 + slot * 100;
    warren_relay::RelayConfig {
        https_listen: Some("127.0.0.1:0".parse().expect("addr")),
        raw_port_range: warren_relay::PortRange {
            start,
            end: start + 99,
        },
        tls: warren_relay::TlsSource::Generated {
            dir: data.join("tls"),
        },
        ..Default::default()
    }
}

async fn env(slot: u16) -> Result<Env> {
    env_with(|cfg, data| {
        cfg.tunnels = TunnelsConfig::Local(relay_config(data, slot));
        Ok(())
    })
    .await
}

async fn env_with(edit: impl FnOnce(&mut ServerConfig, &Path) -> Result<()>) -> Result<Env> {
    let base = common::env_with(edit).await?;
    let https = base
        .state
        .relay_https_addr()
        .await
        .unwrap_or_else(|| "127.0.0.1:0".parse().expect("addr"));
    let ca = base.data.path().join("tls/ca.pem");
    Ok(Env { base, https, ca })
}

impl Env {
    /// Creates an idle sandbox with `extra` create fields, copies the
    /// fixture in and starts it as a background exec per `(mode, port)`.
    async fn sandbox(&self, extra: Value, servers: &[(&str, u16)]) -> Result<String> {
        let mut body = json!({"image": "host", "timeout_secs": 120});
        for (k, v) in extra.as_object().context("extra is an object")? {
            body[k] = v.clone();
        }
        let (s, v) = self.admin("POST", "/v1/sandboxes", Some(body)).await?;
        ensure!(s == StatusCode::CREATED, "create: {s} {v}");
        let id = v["id"].as_str().context("id")?.to_string();
        let (s, v) = self
            .raw_call(
                "PUT",
                &format!("/v1/sandboxes/{id}/files?path=/tmp/fixture.js"),
                "application/octet-stream",
                FIXTURE.as_bytes().to_vec(),
            )
            .await?;
        ensure!(s.is_success(), "upload fixture: {s} {v}");
        for (mode, port) in servers {
            let (s, v) = self
                .admin(
                    "POST",
                    &format!("/v1/sandboxes/{id}/execs"),
                    Some(json!({"command": ["node", "/tmp/fixture.js", mode, port.to_string()]})),
                )
                .await?;
            ensure!(s == StatusCode::CREATED, "start {mode}: {s} {v}");
        }
        Ok(id)
    }

    async fn wait_ready(&self, id: &str) -> Result<()> {
        let (s, v) = self
            .admin(
                "GET",
                &format!("/v1/sandboxes/{id}/wait-ready?timeout_secs=30"),
                None,
            )
            .await?;
        ensure!(
            s == StatusCode::OK && v["ready"] == true,
            "wait-ready: {s} {v}"
        );
        Ok(())
    }

    fn host(&self, id: &str, port: u16) -> String {
        format!("{id}-{port}.warren.localhost")
    }

    fn url(&self, id: &str, port: u16, path: &str) -> String {
        format!(
            "https://{}:{}{path}",
            self.host(id, port),
            self.https.port()
        )
    }

    /// curl against the relay, verifying its certificate against the CA.
    fn curl(&self, id: &str, port: u16, path: &str, extra: &[&str]) -> Result<(u16, String)> {
        curl(
            &self.ca,
            &self.host(id, port),
            self.https.port(),
            &self.url(id, port, path),
            extra,
        )
    }

    /// The relay endpoint of the sandbox's raw TCP `port`, once an echo
    /// through it works (the echo server may start after readiness).
    async fn raw_echo_endpoint(&self, id: &str, port: u16) -> Result<SocketAddr> {
        let (s, v) = self
            .admin("GET", &format!("/v1/sandboxes/{id}/tunnels"), None)
            .await?;
        ensure!(s == StatusCode::OK, "tunnels: {s} {v}");
        let tunnel = v["tunnels"]
            .as_array()
            .and_then(|ts| ts.iter().find(|t| t["port"] == port && t["kind"] == "tcp"))
            .with_context(|| format!("no raw tunnel for port {port}: {v}"))?;
        let relay_port = tunnel["raw"]["port"].as_u64().context("raw port")? as u16;
        let addr = SocketAddr::from(([127, 0, 0, 1], relay_port));
        ensure!(
            eventually(Duration::from_secs(10), || async {
                echo_once(addr, b"x").await.is_ok()
            })
            .await,
            "raw port {relay_port} never echoed"
        );
        Ok(addr)
    }

    async fn teardown(self) {
        self.base.teardown().await;
    }
}

/// Runs curl (bounded by `--max-time`), returning the status and body.
fn curl(ca: &Path, host: &str, port: u16, url: &str, extra: &[&str]) -> Result<(u16, String)> {
    let resolve = format!("{host}:{port}:127.0.0.1");
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "20", "--cacert"])
        .arg(ca)
        .args(["--resolve", &resolve, "-w", "\n%{http_code}"])
        .args(extra)
        .arg(url)
        .output()
        .context("running curl")?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    let code: u16 = code.trim().parse().unwrap_or(0);
    if code == 0 {
        bail!(
            "curl failed: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((code, body.to_string()))
}

/// Retries `f` until it returns true or `timeout` passes.
async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A rustls client config trusting only the CA at `ca` (HTTP/1.1 ALPN).
fn tls_client(ca: &Path) -> Result<Arc<rustls::ClientConfig>> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

// ----------------------------------------------------------------- tests ---

/// HTTPS with HTTP/1.1 and HTTP/2 from the client, h2c to an `h2_ports`
/// port, a WebSocket echo, and the tunnels listing.
async fn https_http2_and_websocket() -> Result<()> {
    let e = env(0).await?;
    let id = e
        .sandbox(
            json!({"encrypted_ports": [3000], "h2_ports": [3001],
                   "readiness_probe": {"tcp": 3000}}),
            &[("http", 3000), ("h2c", 3001)],
        )
        .await?;
    e.wait_ready(&id).await?;

    // The listing names URLs, endpoints and the CA in use.
    let (s, v) = e
        .admin("GET", &format!("/v1/sandboxes/{id}/tunnels"), None)
        .await?;
    ensure!(s == StatusCode::OK, "{s} {v}");
    let t = &v["tunnels"][0];
    ensure!(t["port"] == 3000 && t["kind"] == "https", "{v}");
    ensure!(t["url"] == e.url(&id, 3000, ""), "{v}");
    ensure!(t["tls"]["port"] == e.https.port(), "{v}");
    let ca_der = {
        use rustls_pki_types::pem::PemObject;
        rustls_pki_types::CertificateDer::from_pem_file(&e.ca)?
    };
    let fp = hex::encode(Sha256::digest(&ca_der));
    ensure!(v["ca_fingerprint"] == fp, "fingerprint {v} vs {fp}");
    ensure!(v["tunnels"][1]["kind"] == "h2", "{v}");

    // HTTP/1.1, verified against the generated CA.
    let (code, body) = e.curl(&id, 3000, "/hello", &["--http1.1"])?;
    ensure!(
        code == 200 && body.contains("over HTTP/1.1"),
        "{code} {body}"
    );
    // HTTP/2 from the client, HTTP/1.1 inside.
    let (code, body) = e.curl(&id, 3000, "/whoami", &["--http2", "-H", "x-test: 1"])?;
    ensure!(code == 200, "{code} {body}");
    let who: Value = serde_json::from_str(&body)?;
    ensure!(
        who["httpVersion"] == "1.1" && who["headers"]["x-test"] == "1",
        "{who}"
    );
    let (_, verbose) = {
        let out = std::process::Command::new("curl")
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-v",
                "--http2",
                "--max-time",
                "20",
                "--cacert",
            ])
            .arg(&e.ca)
            .args([
                "--resolve",
                &format!("{}:{}:127.0.0.1", e.host(&id, 3000), e.https.port()),
            ])
            .arg(e.url(&id, 3000, "/hello"))
            .output()?;
        (out.status, String::from_utf8_lossy(&out.stderr).to_string())
    };
    ensure!(
        verbose.contains("HTTP/2 200"),
        "client did not get HTTP/2: {verbose}"
    );
    // HTTP/2 end to end on an h2 port.
    let (code, body) = e.curl(&id, 3001, "/hello", &["--http2"])?;
    ensure!(
        code == 200 && body.contains("over HTTP/2.0"),
        "{code} {body}"
    );
    // An unverified client is refused by curl itself: the chain needs our CA.
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "--resolve"])
        .arg(format!(
            "{}:{}:127.0.0.1",
            e.host(&id, 3000),
            e.https.port()
        ))
        .arg(e.url(&id, 3000, "/hello"))
        .output()?;
    ensure!(
        !out.status.success(),
        "curl trusted the relay without the CA"
    );

    // A WebSocket echo through the tunnel (TLS verified against the CA).
    let tcp = tokio::net::TcpStream::connect(e.https).await?;
    let connector = tokio_rustls::TlsConnector::from(tls_client(&e.ca)?);
    let name = rustls_pki_types::ServerName::try_from(e.host(&id, 3000))?;
    let tls = connector.connect(name, tcp).await?;
    let url = format!("wss://{}:{}/ws", e.host(&id, 3000), e.https.port());
    let (mut ws, resp) = tokio_tungstenite::client_async(url, tls).await?;
    ensure!(resp.status() == 101, "{:?}", resp.status());
    use futures_util::{SinkExt, StreamExt};
    for i in 0..20 {
        let msg = format!("hot-reload-{i}-{}", "x".repeat(i * 1000));
        ws.send(tokio_tungstenite::tungstenite::Message::text(msg.clone()))
            .await?;
        let got = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await?
            .context("ws closed")??;
        ensure!(got.into_text()?.as_str() == msg, "echo {i} differs");
    }
    ws.close(None).await?;
    e.teardown().await;
    Ok(())
}

/// Raw TCP: an echo, then 1,000 concurrent connections through one
/// tunnel, each checked by a SHA-256 of what came back.
async fn raw_tcp_and_a_thousand_connections() -> Result<()> {
    raise_nofile(16384)?;
    let e = env(1).await?;
    let id = e
        .sandbox(
            json!({"unencrypted_ports": [7000], "readiness_probe": {"tcp": 7000}}),
            &[("tcp", 7000)],
        )
        .await?;
    e.wait_ready(&id).await?;
    let addr = e.raw_echo_endpoint(&id, 7000).await?;

    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let gate = Arc::new(tokio::sync::Barrier::new(1000));
    for i in 0..1000u32 {
        let gate = gate.clone();
        tasks.spawn(async move {
            let mut s = tokio::net::TcpStream::connect(addr).await?;
            // All 1,000 are open before any sends.
            gate.wait().await;
            let mut data = vec![0u8; 16 * 1024 + (i as usize % 7) * 1000];
            for (j, b) in data.iter_mut().enumerate() {
                *b = (i as usize * 31 + j * 7) as u8;
            }
            let want = Sha256::digest(&data);
            let (mut r, mut w) = s.split();
            let write = async {
                w.write_all(&data).await?;
                w.shutdown().await
            };
            let mut back = Vec::with_capacity(data.len());
            let read = r.read_to_end(&mut back);
            let (wr, rd) = tokio::join!(write, read);
            wr?;
            rd?;
            anyhow::ensure!(
                Sha256::digest(&back) == want,
                "connection {i}: checksum differs"
            );
            Ok::<_, anyhow::Error>(())
        });
    }
    let mut ok = 0;
    while let Some(r) = tokio::time::timeout(Duration::from_secs(120), tasks.join_next())
        .await
        .context("1,000 connections did not finish in 120 s")?
    {
        r??;
        ok += 1;
    }
    ensure!(ok == 1000, "{ok} of 1000 connections verified");
    eprintln!(
        "1000 concurrent raw connections verified in {:?}",
        started.elapsed()
    );
    e.teardown().await;
    Ok(())
}

async fn echo_once(addr: SocketAddr, msg: &[u8]) -> Result<()> {
    let mut s = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        .await??;
    s.write_all(msg).await?;
    let mut buf = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut buf)).await??;
    ensure!(buf == msg, "echo differs");
    Ok(())
}

fn raise_nofile(want: u64) -> Result<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, want.min(hard), hard)?;
    Ok(())
}

/// Connect tokens: missing, wrong, expired and revoked ones are refused; a
/// valid one passes as a header, a query parameter (which sets a cookie)
/// or that cookie; the app sees only the verified user data.
async fn connect_tokens() -> Result<()> {
    let e = env(2).await?;
    let id = e
        .sandbox(
            json!({"encrypted_ports": [{"port": 3000, "require_token": true}, 3002],
                   "readiness_probe": {"tcp": 3002}}),
            &[("http", 3000), ("http", 3002)],
        )
        .await?;
    e.wait_ready(&id).await?;
    let header_of = |body: &str, name: &str| -> Option<String> {
        serde_json::from_str::<Value>(body).ok()?["headers"][name]
            .as_str()
            .map(str::to_string)
    };

    // Missing token.
    let (c, body) = e.curl(&id, 3000, "/whoami", &[])?;
    ensure!(c == 401, "no token: {c} {body}");
    // Wrong tokens: garbage, and a well-formed one signed with another key.
    let (c, _) = e.curl(
        &id,
        3000,
        "/whoami",
        &["-H", "x-warren-connect-token: wct_nope.nope"],
    )?;
    ensure!(c == 403, "garbage token: {c}");
    let forged = warren_relay::mint_token(
        b"not-the-key",
        &warren_relay::ConnectTokenClaims {
            tid: "ct-forged".into(),
            sid: id.clone(),
            port: 3000,
            exp: warren_relay::token::unix_now() + 600,
            ud: "admin".into(),
        },
    );
    let (c, _) = e.curl(
        &id,
        3000,
        "/whoami",
        &["-H", &format!("x-warren-connect-token: {forged}")],
    )?;
    ensure!(c == 403, "forged token: {c}");

    // A valid token, with user data.
    let (s, v) = e
        .admin(
            "POST",
            &format!("/v1/sandboxes/{id}/connect-token"),
            Some(json!({"port": 3000, "user_data": "user-42"})),
        )
        .await?;
    ensure!(s == StatusCode::CREATED, "{s} {v}");
    let token = v["token"].as_str().context("token")?.to_string();
    let tid = v["token_id"].as_str().context("token id")?.to_string();
    ensure!(
        v["url"]
            .as_str()
            .unwrap_or("")
            .starts_with(&e.url(&id, 3000, "/?_warren_token=")),
        "{v}"
    );
    // As a header, with a spoofed user-data header that must be replaced.
    let (c, body) = e.curl(
        &id,
        3000,
        "/whoami",
        &[
            "-H",
            &format!("x-warren-connect-token: {token}"),
            "-H",
            "x-warren-user-data: spoofed",
        ],
    )?;
    ensure!(c == 200, "valid token: {c} {body}");
    ensure!(
        header_of(&body, "x-warren-user-data").as_deref() == Some("user-42"),
        "{body}"
    );
    ensure!(
        header_of(&body, "x-warren-connect-token").is_none(),
        "token forwarded: {body}"
    );
    // For another port it is refused (a token names its port).
    let (s, v) = e
        .admin(
            "POST",
            &format!("/v1/sandboxes/{id}/connect-token"),
            Some(json!({"port": 9})),
        )
        .await?;
    ensure!(
        s == StatusCode::BAD_REQUEST && code(&v) == "port_not_exposed",
        "{s} {v}"
    );
    // As a query parameter: the relay sets a cookie; the cookie alone works.
    let jar = e.data.path().join("cookies.txt");
    let jar_s = jar.to_string_lossy().to_string();
    let (c, body) = e.curl(
        &id,
        3000,
        &format!("/whoami?_warren_token={token}"),
        &["-c", &jar_s, "-L"],
    )?;
    ensure!(c == 200, "query token: {c} {body}");
    ensure!(
        !body.contains("_warren_token"),
        "token reached the app: {body}"
    );
    let (c, body) = e.curl(&id, 3000, "/whoami", &["-b", &jar_s])?;
    ensure!(
        c == 200 && header_of(&body, "x-warren-user-data").as_deref() == Some("user-42"),
        "cookie: {c} {body}"
    );
    ensure!(
        !header_of(&body, "cookie")
            .unwrap_or_default()
            .contains("warren_token"),
        "cookie forwarded: {body}"
    );
    // On a port without tokens, a client's user-data header is stripped.
    let (c, body) = e.curl(&id, 3002, "/whoami", &["-H", "x-warren-user-data: spoofed"])?;
    ensure!(
        c == 200 && header_of(&body, "x-warren-user-data").is_none(),
        "{c} {body}"
    );

    // Revoked: refused from the next request on.
    let (s, _) = e
        .admin(
            "DELETE",
            &format!("/v1/sandboxes/{id}/connect-tokens/{tid}"),
            None,
        )
        .await?;
    ensure!(s == StatusCode::NO_CONTENT, "revoke: {s}");
    let (c, _) = e.curl(
        &id,
        3000,
        "/whoami",
        &["-H", &format!("x-warren-connect-token: {token}")],
    )?;
    ensure!(c == 403, "revoked token: {c}");
    let (c, _) = e.curl(&id, 3000, "/whoami", &["-b", &jar_s])?;
    ensure!(c == 403, "revoked cookie: {c}");
    let (s, v) = e
        .admin("GET", &format!("/v1/sandboxes/{id}/connect-tokens"), None)
        .await?;
    ensure!(
        s == StatusCode::OK && v["tokens"][0]["revoked_at"].is_string(),
        "{s} {v}"
    );

    // Expired: a one-second token, used after it ends.
    let (_, v) = e
        .admin(
            "POST",
            &format!("/v1/sandboxes/{id}/connect-token"),
            Some(json!({"port": 3000, "ttl_secs": 1})),
        )
        .await?;
    let short = v["token"].as_str().context("token")?.to_string();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (c, _) = e.curl(
        &id,
        3000,
        "/whoami",
        &["-H", &format!("x-warren-connect-token: {short}")],
    )?;
    ensure!(c == 403, "expired token: {c}");
    e.teardown().await;
    Ok(())
}

/// Readiness gates the tunnel; requests for what does not exist, is not
/// ready or has ended get clean errors; raw connections to an ended
/// sandbox are closed. Nothing hangs (curl's --max-time bounds each).
async fn readiness_and_error_pages() -> Result<()> {
    let e = env(3).await?;
    // Ready only once port 3000 listens, which the test starts later.
    let id = e
        .sandbox(
            json!({"encrypted_ports": [3000], "unencrypted_ports": [7000],
                   "readiness_probe": {"tcp": 3000}}),
            &[("tcp", 7000)],
        )
        .await?;
    let (s, v) = e
        .admin(
            "GET",
            &format!("/v1/sandboxes/{id}/wait-ready?timeout_secs=1"),
            None,
        )
        .await?;
    ensure!(
        s == StatusCode::REQUEST_TIMEOUT && code(&v) == "not_ready",
        "{s} {v}"
    );
    let (c, body) = e.curl(&id, 3000, "/hello", &["-D", "-"])?;
    ensure!(
        c == 503
            && body
                .to_ascii_lowercase()
                .contains("x-warren-error: sandbox_not_ready"),
        "{c} {body}"
    );
    let (s, v) = e.admin("GET", &format!("/v1/sandboxes/{id}"), None).await?;
    ensure!(s == StatusCode::OK && v["ready"] == false, "{v}");
    let (s, v) = e
        .admin(
            "POST",
            &format!("/v1/sandboxes/{id}/execs"),
            Some(json!({"command": ["node", "/tmp/fixture.js", "http", "3000"]})),
        )
        .await?;
    ensure!(s == StatusCode::CREATED, "{s} {v}");
    e.wait_ready(&id).await?;
    let (c, _) = e.curl(&id, 3000, "/hello", &[])?;
    ensure!(c == 200, "after ready: {c}");

    // A port not exposed, a sandbox that does not exist, a bad host.
    let (c, body) = e.curl(&id, 3999, "/hello", &["-D", "-"])?;
    ensure!(
        c == 404 && body.to_ascii_lowercase().contains("port_not_exposed"),
        "{c} {body}"
    );
    let ghost = "sb-aaaaaaaaaaaaaaaaaaaa";
    let (c, body) = e.curl(ghost, 3000, "/hello", &["-D", "-"])?;
    ensure!(
        c == 404 && body.to_ascii_lowercase().contains("sandbox_not_found"),
        "{c} {body}"
    );

    // Once ended: HTTPS answers an error page, raw connections close.
    let raw_addr = e.raw_echo_endpoint(&id, 7000).await?;
    let (s, v) = e
        .admin("POST", &format!("/v1/sandboxes/{id}/terminate"), None)
        .await?;
    ensure!(s == StatusCode::OK, "{s} {v}");
    let (c, body) = e.curl(&id, 3000, "/hello", &["-D", "-"])?;
    ensure!(
        (c == 410 || c == 502 || c == 404)
            && body
                .to_ascii_lowercase()
                .contains("x-warren-error: sandbox_"),
        "ended: {c} {body}"
    );
    let closed = async {
        match tokio::net::TcpStream::connect(raw_addr).await {
            Err(_) => Ok::<_, anyhow::Error>(()),
            Ok(mut s) => {
                let _ = s.write_all(b"x").await;
                let mut buf = [0u8; 1];
                let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await??;
                ensure!(n == 0, "an ended sandbox's raw port answered");
                Ok(())
            }
        }
    };
    closed.await.or_else(|e| {
        // A reset is a close too.
        if e.downcast_ref::<std::io::Error>().is_some() {
            Ok(())
        } else {
            Err(e)
        }
    })?;
    e.teardown().await;
    Ok(())
}

/// An open tunnel connection keeps an idle-timeout sandbox alive; once it
/// closes the sandbox ends as `idle_timeout`.
async fn tunnel_connection_counts_as_activity() -> Result<()> {
    let e = env(4).await?;
    // The server is the main command: a running exec would itself count as
    // activity.
    let id = e
        .sandbox(
            json!({"unencrypted_ports": [7000], "idle_timeout_secs": 3,
                   "readiness_probe": {"tcp": 7000},
                   "command": ["sh", "-c", "until [ -f /tmp/fixture.js ]; do sleep 0.05; done; exec node /tmp/fixture.js tcp 7000"]}),
            &[],
        )
        .await?;
    e.wait_ready(&id).await?;
    let addr = e.raw_echo_endpoint(&id, 7000).await?;
    let mut conn = tokio::net::TcpStream::connect(addr).await?;
    conn.write_all(b"a").await?;
    let mut one = [0u8; 1];
    conn.read_exact(&mut one).await?;
    // Quiet for twice the idle timeout, connection open.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (_, v) = e.admin("GET", &format!("/v1/sandboxes/{id}"), None).await?;
    ensure!(
        v["state"] == "running",
        "ended while a tunnel connection was open: {v}"
    );
    drop(conn);
    let (s, v) = e
        .admin(
            "GET",
            &format!("/v1/sandboxes/{id}/wait?timeout_secs=20"),
            None,
        )
        .await?;
    ensure!(
        s == StatusCode::OK
            && v["state"] == "terminated"
            && v["termination"]["reason"] == "idle_timeout",
        "{s} {v}"
    );
    e.teardown().await;
    Ok(())
}

/// The relay in its own task with its own route source (the control
/// plane's HTTP API) and the node dialling its TLS + HTTP/2 link: tunnels
/// work, stop while the relay is down, and work again once it is back.
async fn relay_restart_reconnects() -> Result<()> {
    let tls_dir = tempfile::Builder::new()
        .prefix("warren-e2e-relay-")
        .tempdir_in("/var/tmp")?;
    // The relay's CA exists before either side starts (the relay reuses it).
    let ca_pem = warren_relay::ensure_ca(tls_dir.path(), "warren.localhost")?.ca_pem;
    let https = free_port()?;
    let link = free_port()?;
    let mut secrets = None;
    let mut e = env_with(|cfg, data| {
        secrets = Some(warren_server::tunnels::RelaySecrets::load_or_create(
            &data.join("relay-secrets.json"),
        )?);
        cfg.tunnels = TunnelsConfig::Remote(warren_server::RemoteRelay {
            link_addr: link.to_string(),
            server_name: "relay.warren.localhost".into(),
            ca_pem: ca_pem.clone(),
            base_domain: "warren.localhost".into(),
            https_port: https.port(),
            raw_host: "127.0.0.1".into(),
            raw_port_range: (32500, 32599),
        });
        Ok(())
    })
    .await?;
    let secrets = secrets.context("secrets")?;
    e.https = https;
    e.ca = tls_dir.path().join("ca.pem");
    // The control plane's API on a real port: the relay asks it for routes.
    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let api_addr = api.local_addr()?;
    let app = warren_server::router(e.state.clone());
    let server = tokio::spawn(async move { axum::serve(api, app).await });
    let start_relay = || {
        let cfg = warren_relay::RelayConfig {
            https_listen: Some(https),
            link_listen: Some(link),
            raw_port_range: warren_relay::PortRange {
                start: 32500,
                end: 32599,
            },
            tls: warren_relay::TlsSource::Generated {
                dir: tls_dir.path().to_path_buf(),
            },
            node_secrets: [("local".to_string(), secrets.node_secret.clone())].into(),
            token_key: secrets.token_key.clone(),
            ..Default::default()
        };
        let routes = warren_relay::HttpRouteSource::new(
            &format!("http://{api_addr}"),
            &secrets.relay_secret,
            None,
            Duration::from_secs(5),
        );
        async move {
            let routes: Arc<dyn warren_relay::RouteSource> = Arc::new(routes?);
            Ok::<_, anyhow::Error>(warren_relay::Relay::start(cfg, routes).await?)
        }
    };
    let relay = start_relay().await?;

    let id = e
        .sandbox(
            json!({"encrypted_ports": [3000], "readiness_probe": {"tcp": 3000}}),
            &[("http", 3000)],
        )
        .await?;
    e.wait_ready(&id).await?;
    let works = |e: &Env| {
        let r = e.curl(&id, 3000, "/hello", &["--max-time", "5"]);
        matches!(r, Ok((200, _)))
    };
    ensure!(
        eventually(Duration::from_secs(15), || async { works(&e) }).await,
        "no tunnel through the remote relay"
    );
    let (_, v) = e
        .admin("GET", &format!("/v1/sandboxes/{id}/tunnels"), None)
        .await?;
    ensure!(v["relay_connected"] == true, "{v}");

    relay.shutdown().await;
    ensure!(!works(&e), "a request succeeded with the relay down");
    let relay = start_relay().await?;
    let t0 = Instant::now();
    ensure!(
        eventually(Duration::from_secs(20), || async { works(&e) }).await,
        "tunnels did not come back after the relay restarted"
    );
    eprintln!("tunnels back {:?} after the relay restarted", t0.elapsed());
    relay.shutdown().await;
    server.abort();
    e.teardown().await;
    Ok(())
}

/// A loopback port that was free a moment ago.
fn free_port() -> Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

/// Headless Chromium loads a page from a dev server in a sandbox through
/// the tunnel URL; the page opens a WebSocket back through the tunnel and
/// puts the echo in its title, which the test reads.
async fn browser_page_with_websocket() -> Result<()> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/load-page.js");
    let modules =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/node_modules/playwright-core");
    let chromium = Path::new("/usr/bin/chromium");
    if !warren_testkit::require(
        "browser_page_with_websocket",
        chromium.exists() && modules.exists(),
        "needs /usr/bin/chromium and playwright-core (scripts/install-deps.sh installs both)",
    ) {
        return Ok(());
    }
    let e = env(6).await?;
    let id = e
        .sandbox(
            json!({"encrypted_ports": [5173], "readiness_probe": {"tcp": 5173}}),
            &[("http", 5173)],
        )
        .await?;
    e.wait_ready(&id).await?;
    let url = e.url(&id, 5173, "/");
    // Chromium must trust the relay's certificate: pin its public key.
    let spki = leaf_spki_sha256(&e.data.path().join("tls"))?;
    let out = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::process::Command::new("node")
            .arg(&script)
            .arg(&url)
            .arg(&spki)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("the browser did not finish in 90 s")??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "browser: {stdout} {stderr}");
    ensure!(
        stdout.contains("title=ws:ping-from-browser"),
        "page result: {stdout} {stderr}"
    );
    e.teardown().await;
    Ok(())
}

/// Base64 SHA-256 of the relay leaf certificate's public key, the form
/// Chromium's `--ignore-certificate-errors-spki-list` takes.
fn leaf_spki_sha256(tls_dir: &Path) -> Result<String> {
    let leaf = tls_dir.join("relay.pem");
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("openssl x509 -pubkey -noout -in \"$1\" | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64")
        .arg("sh")
        .arg(&leaf)
        .output()?;
    ensure!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

/// The egress policy through the API, in a lab network (the test's own
/// namespaces: see `warren_testkit::netlab`): the default policy, an
/// allowlist, blocking and unblocking on a running sandbox, DNS, and a
/// sandbox created without a network that cannot be given one.
async fn egress_policy_through_the_api() -> Result<()> {
    use warren_testkit::netlab;
    let e = env_with(|cfg, data| {
        let mut net = warren_runtime::NativeConfig::new(data.join("runtime")).default_network();
        net.dns_upstreams = vec![netlab::DNS_UPSTREAM];
        cfg.network = Some(net);
        cfg.tunnels = TunnelsConfig::Local(relay_config(data, 7));
        Ok(())
    })
    .await?;
    let id = e
        .sandbox(
            json!({"encrypted_ports": [3000], "readiness_probe": {"tcp": 3000}}),
            &[("http", 3000)],
        )
        .await?;
    let (_, v) = e.admin("GET", &format!("/v1/sandboxes/{id}"), None).await?;
    ensure!(
        v["network"]["address"]
            .as_str()
            .is_some_and(|a| a.starts_with("10.88.")),
        "{v}"
    );
    let internet = format!("http://{}:{}/", netlab::INTERNET, netlab::HTTP_PORT);
    let internet2 = format!("http://{}:{}/", netlab::INTERNET2, netlab::HTTP_PORT);
    let metadata = format!("http://{}:{}/", netlab::METADATA, netlab::HTTP_PORT);
    let private = format!("http://{}:{}/", netlab::PRIVATE, netlab::HTTP_PORT);
    let reach = |url: String| {
        let e = &e;
        let id = id.clone();
        async move {
            let (s, v) = e
                .admin(
                    "POST",
                    &format!("/v1/sandboxes/{id}/exec"),
                    Some(json!({"command": ["curl", "-sf", "--noproxy", "*", "-m", "2", "-o", "/dev/null", url]})),
                )
                .await?;
            ensure!(s == StatusCode::OK, "exec: {s} {v}");
            Ok::<_, anyhow::Error>(v["exit_code"] == 0)
        }
    };
    ensure!(
        reach(internet.clone()).await?,
        "default policy: the internet is unreachable"
    );
    ensure!(
        !reach(metadata.clone()).await?,
        "default policy: the metadata address answered"
    );
    ensure!(
        !reach(private.clone()).await?,
        "default policy: a private address answered"
    );
    // DNS through the node's forwarder.
    let (_, v) = e
        .admin(
            "POST",
            &format!("/v1/sandboxes/{id}/exec"),
            Some(json!({"command": ["cat", "/etc/resolv.conf"]})),
        )
        .await?;
    ensure!(
        v["stdout"]
            .as_str()
            .unwrap_or("")
            .contains("nameserver 10.88."),
        "{v}"
    );
    let (_, v) = e
        .admin(
            "POST",
            &format!("/v1/sandboxes/{id}/exec"),
            Some(json!({"command": ["getent", "hosts", "internet.test"]})),
        )
        .await?;
    ensure!(
        v["stdout"]
            .as_str()
            .unwrap_or("")
            .contains(&netlab::INTERNET.to_string()),
        "dns: {v}"
    );

    // An allowlist, on the running sandbox.
    let patch = |body: Value| {
        let e = &e;
        let id = id.clone();
        async move {
            e.admin("PATCH", &format!("/v1/sandboxes/{id}/network"), Some(body))
                .await
        }
    };
    let (s, v) = patch(json!({"outbound_cidr_allowlist": ["198.51.100.0/24"]})).await?;
    ensure!(
        s == StatusCode::OK && v["network"]["outbound_cidr_allowlist"][0] == "198.51.100.0/24",
        "{s} {v}"
    );
    ensure!(
        reach(internet2.clone()).await?,
        "allowlisted address unreachable"
    );
    ensure!(
        !reach(internet.clone()).await?,
        "address outside the allowlist answered"
    );
    // Blocked, then back to the default.
    let (s, v) = patch(json!({"block_network": true, "outbound_cidr_allowlist": null})).await?;
    ensure!(
        s == StatusCode::OK && v["network"]["block_network"] == true,
        "{s} {v}"
    );
    ensure!(
        !reach(internet2.clone()).await?,
        "blocked sandbox reached the internet"
    );
    // The tunnel still works: the relay reaches the sandbox's loopback.
    e.wait_ready(&id).await?;
    let (c, _) = e.curl(&id, 3000, "/hello", &[])?;
    ensure!(c == 200, "tunnel of a blocked sandbox: {c}");
    let (s, v) = patch(json!({"block_network": false})).await?;
    ensure!(s == StatusCode::OK, "{s} {v}");
    ensure!(
        reach(internet.clone()).await?,
        "unblocked sandbox cannot reach the internet"
    );
    // Bad input.
    let (s, v) = patch(json!({"outbound_cidr_allowlist": ["10.0.0.1/8"]})).await?;
    ensure!(
        s == StatusCode::BAD_REQUEST && code(&v) == "invalid_argument",
        "{s} {v}"
    );
    let (s, v) =
        patch(json!({"block_network": true, "outbound_cidr_allowlist": ["1.2.3.4"]})).await?;
    ensure!(s == StatusCode::BAD_REQUEST, "{s} {v}");
    let (s, v) = patch(json!({"bogus": 1})).await?;
    ensure!(
        s == StatusCode::BAD_REQUEST && code(&v) == "invalid_json",
        "{s} {v}"
    );

    // With a disk limit (a tmpfs writable layer) resolv.conf is there too.
    let (s, v) = e
        .admin(
            "POST",
            "/v1/sandboxes",
            Some(json!({"image": "host", "disk_mib": 64})),
        )
        .await?;
    ensure!(s == StatusCode::CREATED, "{s} {v}");
    let limited = v["id"].as_str().context("id")?.to_string();
    let (_, v) = e
        .admin(
            "POST",
            &format!("/v1/sandboxes/{limited}/exec"),
            Some(json!({"command": ["getent", "hosts", "internet.test"]})),
        )
        .await?;
    ensure!(
        v["stdout"]
            .as_str()
            .unwrap_or("")
            .contains(&netlab::INTERNET.to_string()),
        "dns with disk_mib: {v}"
    );

    // Created without a network: only lo, and it cannot be given one.
    let (s, v) = e
        .admin(
            "POST",
            "/v1/sandboxes",
            Some(json!({"image": "host", "block_network": true})),
        )
        .await?;
    ensure!(
        s == StatusCode::CREATED && v["network"]["address"].is_null(),
        "{s} {v}"
    );
    let blocked = v["id"].as_str().context("id")?.to_string();
    let (_, v) = e
        .admin(
            "POST",
            &format!("/v1/sandboxes/{blocked}/exec"),
            Some(json!({"command": ["ls", "/sys/class/net"]})),
        )
        .await?;
    ensure!(
        v["stdout"].as_str().unwrap_or("").trim() == "lo",
        "interfaces: {v}"
    );
    let (s, v) = e
        .admin(
            "PATCH",
            &format!("/v1/sandboxes/{blocked}/network"),
            Some(json!({"block_network": false})),
        )
        .await?;
    ensure!(
        s == StatusCode::CONFLICT && code(&v) == "network_unavailable",
        "{s} {v}"
    );
    e.teardown().await;
    Ok(())
}

// --------------------------------------------------------------- harness ---

/// The sandboxes' dev server is the host's Node.js.
fn has_node(name: &'static str) -> bool {
    warren_testkit::require(
        name,
        Path::new("/usr/bin/node").exists(),
        "needs /usr/bin/node (the sandboxes' dev server)",
    )
}

fn trial(name: &'static str, f: TestFn) -> Trial {
    common::trial_with(name, f, has_node)
}

/// A trial whose thread moves into a lab network first (before the tokio
/// runtime exists, so every runtime thread is in the lab too).
fn lab_trial(name: &'static str, f: TestFn) -> Trial {
    Trial::test(name, move || {
        if !warren_testkit::require_root(name) {
            return Ok(());
        }
        let has_nft = std::process::Command::new("nft")
            .arg("--version")
            .output()
            .is_ok();
        if !warren_testkit::require(name, has_nft, "needs nft (nftables)") {
            return Ok(());
        }
        let _lab =
            warren_testkit::netlab::NetLab::enter().map_err(|e| Failed::from(format!("{e:#}")))?;
        common::run(f)
    })
}

fn main() {
    warren_init::run_if_init();
    common::init_logging();
    let args = Arguments::from_args();
    let tests = vec![
        t!(https_http2_and_websocket),
        t!(raw_tcp_and_a_thousand_connections),
        t!(connect_tokens),
        t!(readiness_and_error_pages),
        t!(tunnel_connection_counts_as_activity),
        t!(relay_restart_reconnects),
        t!(browser_page_with_websocket),
        lab_trial("egress_policy_through_the_api", || {
            Box::pin(egress_policy_through_the_api())
        }),
    ];
    libtest_mimic::run(&args, tests).exit()
}
