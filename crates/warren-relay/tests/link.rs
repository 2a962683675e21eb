//! The remote node link: TLS + HTTP/2 from the node to the relay, secrets,
//! and reconnecting after a relay restart.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use warren_relay::{
    LinkState, NodeLink, NodeLinkConfig, PortProtocol, RawRoute, Relay, RelayConfig, StaticRoutes,
};

const SECRET: &str = "node-secret";

fn link_config(relay: &Relay, secret: &str) -> NodeLinkConfig {
    NodeLinkConfig {
        relay_addr: relay.link_addr().unwrap().to_string(),
        server_name: "relay.warren.localhost".into(),
        ca_pem: relay.tls().ca_pem.clone(),
        node_id: NODE.into(),
        secret: secret.into(),
        handshake_timeout_ms: 5_000,
        open_timeout_ms: 5_000,
    }
}

fn remote_config(dir: &std::path::Path, https: SocketAddr, link: SocketAddr) -> RelayConfig {
    let mut c = config(dir);
    c.https_listen = Some(https);
    c.link_listen = Some(link);
    c.node_secrets = BTreeMap::from([(NODE.to_string(), SECRET.to_string())]);
    c
}

async fn start_remote(
    dir: &std::path::Path,
    routes: Arc<StaticRoutes>,
    https: SocketAddr,
    link: SocketAddr,
) -> Relay {
    Relay::start(remote_config(dir, https, link), routes)
        .await
        .unwrap()
}

fn any() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_websocket_and_raw_tcp_over_the_link() {
    use futures_util::{SinkExt, StreamExt};
    let dir = tempfile::tempdir().unwrap();
    let routes = Arc::new(StaticRoutes::new());
    let relay = start_remote(dir.path(), routes.clone(), any(), any()).await;
    let link = NodeLink::spawn(
        link_config(&relay, SECRET),
        Arc::new(warren_relay::LoopbackTarget),
    )
    .unwrap();
    assert!(link.wait_connected(T).await, "{:?}", link.state());
    assert!(wait_until(T, || async { relay.is_node_connected(NODE) }).await);

    let up = http_upstream(false).await;
    let h2up = http_upstream(true).await;
    let ws = ws_upstream().await;
    let echo = echo_upstream().await;
    routes.set(route(&[
        (up, PortProtocol::Http1, false),
        (h2up, PortProtocol::H2c, false),
        (ws, PortProtocol::Http1, false),
    ]));
    let relay_port = free_port();
    routes.set_raw(vec![RawRoute {
        relay_port,
        sandbox_id: SANDBOX.into(),
        port: echo,
    }]);
    relay.resync().await.unwrap();

    for h2 in [false, true] {
        let mut c = Conn::open(&relay, &host(up), h2).await;
        let data = vec![42u8; 3_000_000];
        let req = get(&host(up), "/big", h2)
            .method("PUT")
            .body(http_body_util::Full::new(bytes::Bytes::from(data.clone())))
            .unwrap();
        let resp = c.send(req).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(json(&resp)["body_sum"], checksum(&data));
    }
    let mut c = Conn::open(&relay, &host(h2up), true).await;
    let resp = c
        .send(
            get(&host(h2up), "/", true)
                .body(Default::default())
                .unwrap(),
        )
        .await;
    assert_eq!(json(&resp)["version"], "HTTP/2.0");

    let tls = tls_connect(
        relay.https_addr().unwrap(),
        &relay.tls().ca_pem,
        &host(ws),
        &[b"http/1.1"],
    )
    .await;
    let (mut wsc, _) = tokio_tungstenite::client_async(format!("wss://{}/", host(ws)), tls)
        .await
        .unwrap();
    wsc.send(tokio_tungstenite::tungstenite::Message::text("ping"))
        .await
        .unwrap();
    let got = tokio::time::timeout(T, wsc.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got.into_text().unwrap().as_str(), "ping");

    let data: Vec<u8> = (0..8_000_000u32).map(|i| (i * 31 % 255) as u8).collect();
    let back = tcp_round_trip(SocketAddr::from(([127, 0, 0, 1], relay_port)), &data).await;
    assert_eq!(back.len(), data.len());
    assert_eq!(checksum(&back), checksum(&data));

    // A port nothing listens on: the node's refusal becomes a clean page.
    let dead = free_port();
    routes.set(route(&[(dead, PortProtocol::Http1, false)]));
    relay.invalidate(SANDBOX);
    let resp = fetch(&relay, &host(dead), "/", &[]).await;
    assert_eq!(error_code(&resp).as_deref(), Some("upstream_unreachable"));

    link.shutdown().await;
    assert!(wait_until(T, || async { !relay.is_node_connected(NODE) }).await);
    routes.set(route(&[(up, PortProtocol::Http1, false)]));
    relay.invalidate(SANDBOX);
    let resp = fetch(&relay, &host(up), "/", &[]).await;
    assert_eq!(error_code(&resp).as_deref(), Some("node_unavailable"));
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_or_unknown_node_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start_remote(dir.path(), Arc::new(StaticRoutes::new()), any(), any()).await;
    let link = NodeLink::spawn(
        link_config(&relay, "wrong"),
        Arc::new(warren_relay::LoopbackTarget),
    )
    .unwrap();
    let mut cfg = link_config(&relay, SECRET);
    cfg.node_id = "node-unknown".into();
    let link2 = NodeLink::spawn(cfg, Arc::new(warren_relay::LoopbackTarget)).unwrap();
    for l in [&link, &link2] {
        assert!(
            wait_until(T, || async {
                matches!(l.state(), LinkState::Retrying(r) if r.contains("refused"))
            })
            .await,
            "{:?}",
            l.state()
        );
    }
    assert!(relay.connected_nodes().is_empty());
    link.shutdown().await;
    link2.shutdown().await;
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_reconnects_after_a_relay_restart() {
    let dir = tempfile::tempdir().unwrap();
    let routes = Arc::new(StaticRoutes::new());
    let up = http_upstream(false).await;
    let echo = echo_upstream().await;
    routes.set(route(&[(up, PortProtocol::Http1, false)]));
    let relay_port = free_port();
    routes.set_raw(vec![RawRoute {
        relay_port,
        sandbox_id: SANDBOX.into(),
        port: echo,
    }]);
    let raw_addr = SocketAddr::from(([127, 0, 0, 1], relay_port));

    let relay = start_remote(dir.path(), routes.clone(), any(), any()).await;
    let (https, linka) = (relay.https_addr().unwrap(), relay.link_addr().unwrap());
    let link = NodeLink::spawn(
        link_config(&relay, SECRET),
        Arc::new(warren_relay::LoopbackTarget),
    )
    .unwrap();
    assert!(link.wait_connected(T).await);
    assert!(wait_until(T, || async { relay.is_node_connected(NODE) }).await);
    assert_eq!(fetch(&relay, &host(up), "/", &[]).await.status(), 200);
    assert_eq!(tcp_round_trip(raw_addr, b"before").await, b"before");
    let fingerprint = relay.ca_fingerprint().to_string();

    relay.shutdown().await;
    assert!(
        wait_until(T, || async { !link.is_connected() }).await,
        "node noticed the relay going away"
    );
    assert!(tokio::net::TcpStream::connect(https).await.is_err());

    // Same ports, same TLS directory: the same CA comes back.
    let relay = start_remote(dir.path(), routes.clone(), https, linka).await;
    assert_eq!(relay.ca_fingerprint(), fingerprint);
    let started = std::time::Instant::now();
    assert!(link.wait_connected(T).await, "{:?}", link.state());
    assert!(wait_until(T, || async { relay.is_node_connected(NODE) }).await);
    eprintln!(
        "node reconnected {:?} after the relay came back",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "backoff is at most 2 s"
    );
    assert_eq!(fetch(&relay, &host(up), "/", &[]).await.status(), 200);
    assert_eq!(tcp_round_trip(raw_addr, b"after").await, b"after");
    link.shutdown().await;
    relay.shutdown().await;
}
