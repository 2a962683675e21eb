//! 1,000 concurrent connections through one tunnel, each checked by
//! checksum: raw TCP over the in-process link and over the TLS + HTTP/2
//! link, and HTTPS requests over the link.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use warren_relay::{NodeLink, NodeLinkConfig, PortProtocol, RawRoute, Relay};

const CONNS: usize = 1000;

fn payload(i: usize, len: usize) -> Vec<u8> {
    let mut x = (i as u64).wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn thousand_raw(addr: SocketAddr) {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..CONNS {
        tasks.spawn(async move {
            let data = payload(i, 32 * 1024 + i);
            let back = tcp_round_trip(addr, &data).await;
            (
                back.len() == data.len() && checksum(&back) == checksum(&data),
                i,
            )
        });
    }
    let mut ok = 0;
    while let Some(r) = tasks.join_next().await {
        let (good, i) = r.unwrap();
        assert!(good, "connection {i} got corrupted data");
        ok += 1;
    }
    assert_eq!(ok, CONNS);
}

async fn remote(
    dir: &std::path::Path,
    routes: Arc<warren_relay::StaticRoutes>,
) -> (Relay, NodeLink) {
    let mut c = config(dir);
    c.link_listen = Some("127.0.0.1:0".parse().unwrap());
    c.node_secrets = BTreeMap::from([(NODE.to_string(), "s".to_string())]);
    let relay = Relay::start(c, routes).await.unwrap();
    let link = NodeLink::spawn(
        NodeLinkConfig {
            relay_addr: relay.link_addr().unwrap().to_string(),
            server_name: "relay.warren.localhost".into(),
            ca_pem: relay.tls().ca_pem.clone(),
            node_id: NODE.into(),
            secret: "s".into(),
            handshake_timeout_ms: 5000,
            open_timeout_ms: 5000,
        },
        Arc::new(warren_relay::LoopbackTarget),
    )
    .unwrap();
    assert!(link.wait_connected(T).await);
    assert!(wait_until(T, || async { relay.is_node_connected(NODE) }).await);
    (relay, link)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_raw_connections_in_process() {
    let f = in_process(|_| {}).await;
    let echo = echo_upstream().await;
    f.routes.set(route(&[]));
    let relay_port = free_port();
    f.routes.set_raw(vec![RawRoute {
        relay_port,
        sandbox_id: SANDBOX.into(),
        port: echo,
    }]);
    f.relay.resync().await.unwrap();
    thousand_raw(SocketAddr::from(([127, 0, 0, 1], relay_port))).await;
    f.relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_raw_connections_over_the_link() {
    let dir = tempfile::tempdir().unwrap();
    let routes = Arc::new(warren_relay::StaticRoutes::new());
    let (relay, link) = remote(dir.path(), routes.clone()).await;
    let echo = echo_upstream().await;
    routes.set(route(&[]));
    let relay_port = free_port();
    routes.set_raw(vec![RawRoute {
        relay_port,
        sandbox_id: SANDBOX.into(),
        port: echo,
    }]);
    relay.resync().await.unwrap();
    thousand_raw(SocketAddr::from(([127, 0, 0, 1], relay_port))).await;
    link.shutdown().await;
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_https_connections_over_the_link() {
    let dir = tempfile::tempdir().unwrap();
    let routes = Arc::new(warren_relay::StaticRoutes::new());
    let (relay, link) = remote(dir.path(), routes.clone()).await;
    let up = http_upstream(false).await;
    routes.set(route(&[(up, PortProtocol::Http1, false)]));
    let relay = Arc::new(relay);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..CONNS {
        let relay = relay.clone();
        tasks.spawn(async move {
            let data = payload(i, 8 * 1024 + i);
            let mut c = Conn::open(&relay, &host(up), i % 2 == 0).await;
            let req = get(&host(up), &format!("/{i}"), i % 2 == 0)
                .method("POST")
                .body(Full::new(Bytes::from(data.clone())))
                .unwrap();
            let resp = c.send(req).await;
            assert_eq!(resp.status(), 200, "request {i}: {:?}", error_code(&resp));
            let j = json(&resp);
            assert_eq!(j["body_sum"], checksum(&data), "request {i}");
            assert_eq!(j["path_and_query"], format!("/{i}"));
        });
    }
    let mut done = 0;
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
        done += 1;
    }
    assert_eq!(done, CONNS);
    link.shutdown().await;
    Arc::try_unwrap(relay)
        .ok()
        .expect("tasks done")
        .shutdown()
        .await;
}
