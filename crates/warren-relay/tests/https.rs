//! The HTTPS front through the in-process link: TLS against the generated
//! CA, HTTP/1.1, HTTP/2, h2c upstreams, WebSocket, tokens, error pages.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use warren_relay::{mint_token, ConnectTokenClaims, PortProtocol, RouteState};

fn body() -> Full<Bytes> {
    Full::new(Bytes::new())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_and_http2_clients_reach_an_http1_upstream() {
    let f = in_process(|_| {}).await;
    let up = http_upstream(false).await;
    f.routes.set(route(&[(up, PortProtocol::Http1, false)]));
    let host = host(up);
    for h2 in [false, true] {
        let mut c = Conn::open(&f.relay, &host, h2).await;
        for i in 0..3 {
            let data = vec![i as u8; 100_000];
            let req = get(&host, &format!("/p/{i}?q=1"), h2)
                .method("POST")
                .header("x-warren-user-data", "spoofed")
                .body(Full::new(Bytes::from(data.clone())))
                .unwrap();
            let resp = c.send(req).await;
            assert_eq!(resp.status(), 200, "h2={h2}");
            assert_eq!(
                resp.version(),
                if h2 {
                    http::Version::HTTP_2
                } else {
                    http::Version::HTTP_11
                }
            );
            assert!(
                resp.headers().get("x-private").is_none(),
                "hop-by-hop header listed in Connection leaked"
            );
            let j = json(&resp);
            assert_eq!(j["method"], "POST");
            assert_eq!(j["path_and_query"], format!("/p/{i}?q=1"));
            assert_eq!(j["version"], "HTTP/1.1");
            assert_eq!(j["host"], host.as_str());
            assert_eq!(j["xfp"], "https");
            assert_eq!(
                j["user_data"],
                serde_json::json!([]),
                "client user data must be stripped"
            );
            assert_eq!(j["body_len"], 100_000);
            assert_eq!(j["body_sum"], checksum(&data));
        }
    }
    f.relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_upstream_speaks_http2_end_to_end() {
    let f = in_process(|_| {}).await;
    let up = http_upstream(true).await;
    f.routes.set(route(&[(up, PortProtocol::H2c, false)]));
    let host = host(up);
    for h2 in [true, false] {
        let mut c = Conn::open(&f.relay, &host, h2).await;
        let resp = c.send(get(&host, "/x", h2).body(body()).unwrap()).await;
        assert_eq!(resp.status(), 200);
        let j = json(&resp);
        assert_eq!(j["version"], "HTTP/2.0");
        assert!(
            j["uri"].as_str().unwrap().contains(&host),
            "authority is the tunnel host: {j}"
        );
    }
    f.relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certificate_only_verifies_against_the_generated_ca() {
    let f = in_process(|_| {}).await;
    // Another CA: the handshake must fail.
    let other = tempfile::tempdir().unwrap();
    let other_ca = warren_relay::ensure_ca(other.path(), "warren.localhost").unwrap();
    let cfg = warren_relay::tls::client_config(other_ca.ca_pem.as_bytes(), vec![]).unwrap();
    let tcp = tokio::net::TcpStream::connect(f.relay.https_addr().unwrap())
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from(host(80)).unwrap();
    assert!(tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .is_err());
    // The right CA, and the base domain itself (no sandbox): an error page.
    let resp = fetch(&f.relay, "warren.localhost", "/", &[]).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(error_code(&resp).as_deref(), Some("invalid_host"));
    assert_eq!(f.relay.ca_fingerprint().len(), 64);
    f.relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_passes_through() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let f = in_process(|_| {}).await;
    let up = ws_upstream().await;
    f.routes.set(route(&[(up, PortProtocol::Http1, false)]));
    let host = host(up);
    let tls = tls_connect(
        f.relay.https_addr().unwrap(),
        &f.relay.tls().ca_pem,
        &host,
        &[b"http/1.1"],
    )
    .await;
    let (mut ws, resp) = tokio::time::timeout(
        T,
        tokio_tungstenite::client_async(format!("wss://{host}/ws"), tls),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(resp.status(), 101);
    for i in 0..20 {
        let msg = format!("hello {i} {}", "x".repeat(i * 1000));
        ws.send(Message::text(msg.clone())).await.unwrap();
        let got = tokio::time::timeout(T, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(got.into_text().unwrap().as_str(), msg);
    }
    ws.send(Message::binary(vec![7u8; 1 << 20])).await.unwrap();
    let got = tokio::time::timeout(T, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got.into_data().len(), 1 << 20);
    ws.close(None).await.unwrap();
    f.relay.shutdown().await;
}

fn claims(port: u16, tid: &str, exp_in: i64, ud: &str) -> ConnectTokenClaims {
    ConnectTokenClaims {
        tid: tid.into(),
        sid: SANDBOX.into(),
        port,
        exp: (warren_relay::token::unix_now() as i64 + exp_in) as u64,
        ud: ud.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_tokens_every_case() {
    let f = in_process(|_| {}).await;
    let up = http_upstream(false).await;
    let other = http_upstream(false).await;
    let mut r = route(&[
        (up, PortProtocol::Http1, true),
        (other, PortProtocol::Http1, false),
    ]);
    r.revoked_tokens = vec!["revoked".into()];
    f.routes.set(r);
    let host = host(up);
    let key = TOKEN_KEY.as_bytes();
    let valid = mint_token(key, &claims(up, "t1", 600, "user=alice"));

    // Missing.
    let resp = fetch(&f.relay, &host, "/", &[]).await;
    assert_eq!(
        (resp.status().as_u16(), error_code(&resp).as_deref()),
        (401, Some("token_required"))
    );
    // Wrong key, expired, revoked, other port, garbage.
    let cases = [
        mint_token(b"wrong key", &claims(up, "t1", 600, "x")),
        mint_token(key, &claims(up, "t1", -1, "x")),
        mint_token(key, &claims(up, "revoked", 600, "x")),
        mint_token(key, &claims(other, "t1", 600, "x")),
        "wct_garbage".to_string(),
    ];
    for t in &cases {
        let resp = fetch(&f.relay, &host, "/", &[("x-warren-connect-token", t)]).await;
        assert_eq!(
            (resp.status().as_u16(), error_code(&resp).as_deref()),
            (403, Some("token_invalid")),
            "{t}"
        );
    }
    // Valid in the header: user data injected, the spoofed copy dropped, token stripped.
    let resp = fetch(
        &f.relay,
        &host,
        "/",
        &[
            ("x-warren-connect-token", &valid),
            ("x-warren-user-data", "user=mallory"),
        ],
    )
    .await;
    assert_eq!(resp.status(), 200);
    let j = json(&resp);
    assert_eq!(j["user_data"], serde_json::json!(["user=alice"]));
    assert_eq!(j["token_header"], false);
    // In the query: a redirect that moves it into a cookie.
    let resp = fetch(
        &f.relay,
        &host,
        &format!("/app?a=1&_warren_token={valid}"),
        &[],
    )
    .await;
    assert_eq!(resp.status(), 302);
    assert_eq!(resp.headers()["location"], "/app?a=1");
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.starts_with(&format!("warren_token={valid};")),
        "{cookie}"
    );
    for attr in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/"] {
        assert!(cookie.contains(attr), "{cookie} lacks {attr}");
    }
    // As a cookie: admitted, and the upstream never sees it.
    let resp = fetch(
        &f.relay,
        &host,
        "/app?a=1",
        &[("cookie", &format!("theme=dark; warren_token={valid}"))],
    )
    .await;
    assert_eq!(resp.status(), 200);
    let j = json(&resp);
    assert_eq!(j["cookie"], "theme=dark");
    assert_eq!(j["user_data"], serde_json::json!(["user=alice"]));
    // A port without tokens still drops client user data.
    let resp = fetch(
        &f.relay,
        &self::host(other),
        "/",
        &[("x-warren-user-data", "user=mallory")],
    )
    .await;
    assert_eq!(json(&resp)["user_data"], serde_json::json!([]));
    // Revoking the valid token takes effect once the cache entry expires.
    let mut r = route(&[(up, PortProtocol::Http1, true)]);
    r.revoked_tokens = vec!["t1".into()];
    f.routes.set(r);
    f.relay.invalidate(SANDBOX);
    let resp = fetch(&f.relay, &host, "/", &[("x-warren-connect-token", &valid)]).await;
    assert_eq!(resp.status(), 403);
    f.relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_pages_carry_status_and_stable_code() {
    let f = in_process(|c| c.timeouts.upstream_response_ms = 500).await;
    let up = http_upstream(false).await;
    let dead = free_port();
    let check = |resp: http::Response<Bytes>, status: u16, code: &str| {
        assert_eq!(resp.status().as_u16(), status, "{code}");
        assert_eq!(error_code(&resp).as_deref(), Some(code));
        assert!(resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
        let html = String::from_utf8_lossy(resp.body()).to_string();
        assert!(html.contains(code) && html.contains(&status.to_string()));
    };
    // SNI on the base domain, Host elsewhere (HTTP/2 clients coalesce too).
    let mut c = Conn::open(&f.relay, "warren.localhost", false).await;
    check(
        c.send(
            get("sb-nope-80.other.domain", "/", false)
                .body(body())
                .unwrap(),
        )
        .await,
        400,
        "invalid_host",
    );
    check(
        fetch(&f.relay, &host(up), "/", &[]).await,
        404,
        "sandbox_not_found",
    );
    f.routes.set(route(&[
        (up, PortProtocol::Http1, false),
        (dead, PortProtocol::Http1, false),
    ]));
    f.relay.invalidate(SANDBOX);
    check(
        fetch(&f.relay, &host(up + 1), "/", &[]).await,
        404,
        "port_not_exposed",
    );
    check(
        fetch(&f.relay, &host(dead), "/", &[]).await,
        502,
        "upstream_unreachable",
    );
    let start = std::time::Instant::now();
    check(
        fetch(&f.relay, &host(up), "/slow", &[]).await,
        504,
        "upstream_timeout",
    );
    assert!(start.elapsed() < Duration::from_secs(5));
    let mut r = route(&[(up, PortProtocol::Http1, false)]);
    r.ready = false;
    f.routes.set(r.clone());
    f.relay.invalidate(SANDBOX);
    let resp = fetch(&f.relay, &host(up), "/", &[]).await;
    assert_eq!(resp.headers()["retry-after"], "1");
    check(resp, 503, "sandbox_not_ready");
    r.ready = true;
    r.state = RouteState::Other;
    f.routes.set(r.clone());
    f.relay.invalidate(SANDBOX);
    check(
        fetch(&f.relay, &host(up), "/", &[]).await,
        502,
        "sandbox_not_running",
    );
    r.state = RouteState::Running;
    r.node_id = "node-elsewhere".into();
    f.routes.set(r);
    f.relay.invalidate(SANDBOX);
    check(
        fetch(&f.relay, &host(up), "/", &[]).await,
        502,
        "node_unavailable",
    );
    f.relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_tcp_front_forwards_and_follows_routes() {
    let f = in_process(|_| {}).await;
    let echo = echo_upstream().await;
    f.routes.set(route(&[]));
    let relay_port = free_port();
    f.routes.set_raw(vec![warren_relay::RawRoute {
        relay_port,
        sandbox_id: SANDBOX.into(),
        port: echo,
    }]);
    f.relay.resync().await.unwrap();
    assert_eq!(f.relay.raw_ports(), vec![relay_port]);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], relay_port));
    let data: Vec<u8> = (0..5_000_000u32).map(|i| (i % 253) as u8).collect();
    assert_eq!(
        checksum(&tcp_round_trip(addr, &data).await),
        checksum(&data)
    );
    // Not ready: closed at once, nothing echoed.
    let mut r = route(&[]);
    r.ready = false;
    f.routes.set(r);
    f.relay.invalidate(SANDBOX);
    assert!(closed_at_once(addr).await);
    // Route removed: the port closes.
    f.routes.set_raw(vec![]);
    f.relay.resync().await.unwrap();
    assert!(f.relay.raw_ports().is_empty());
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    f.relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_refuses_the_excess_until_one_closes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let f = in_process(|c| c.max_connections = 2).await;
    let echo = echo_upstream().await;
    f.routes.set(route(&[]));
    let relay_port = free_port();
    f.routes.set_raw(vec![warren_relay::RawRoute {
        relay_port,
        sandbox_id: SANDBOX.into(),
        port: echo,
    }]);
    f.relay.resync().await.unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], relay_port));
    let mut held = Vec::new();
    for i in 0..2u8 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(&[i]).await.unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        assert_eq!(b[0], i);
        held.push(s);
    }
    // A third client is closed at once, on the raw front and on HTTPS.
    assert!(closed_at_once(addr).await);
    assert!(closed_at_once(f.relay.https_addr().unwrap()).await);
    // One closes; a new client gets through.
    drop(held.pop());
    let data = b"after one closed".to_vec();
    let mut ok = false;
    for _ in 0..100 {
        // Until the relay has seen the close, the newcomer is refused.
        if try_tcp_round_trip(addr, &data).await.ok().as_deref() == Some(&data[..]) {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(ok, "no connection got through after one closed");
    f.relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cuts_open_raw_and_websocket_connections() {
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let f = in_process(|_| {}).await;
    let echo = echo_upstream().await;
    let ws = ws_upstream().await;
    f.routes.set(route(&[(ws, PortProtocol::Http1, false)]));
    let relay_port = free_port();
    f.routes.set_raw(vec![warren_relay::RawRoute {
        relay_port,
        sandbox_id: SANDBOX.into(),
        port: echo,
    }]);
    f.relay.resync().await.unwrap();
    let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", relay_port))
        .await
        .unwrap();
    raw.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    tokio::time::timeout(T, raw.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let tls = tls_connect(
        f.relay.https_addr().unwrap(),
        &f.relay.tls().ca_pem,
        &host(ws),
        &[b"http/1.1"],
    )
    .await;
    let (mut wsc, _) = tokio_tungstenite::client_async(format!("wss://{}/", host(ws)), tls)
        .await
        .unwrap();
    wsc.send(tokio_tungstenite::tungstenite::Message::text("hi"))
        .await
        .unwrap();
    tokio::time::timeout(T, wsc.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    f.relay.shutdown().await;
    let n = tokio::time::timeout(T, raw.read(&mut buf))
        .await
        .expect("raw connection left open");
    assert!(matches!(n, Ok(0) | Err(_)));
    let next = tokio::time::timeout(T, wsc.next())
        .await
        .expect("websocket left open");
    assert!(!matches!(next, Some(Ok(m)) if m.is_text()));
}
