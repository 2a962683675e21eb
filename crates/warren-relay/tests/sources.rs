//! The HTTP route source against a loopback control plane, and operator
//! certificate files.

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use warren_relay::{HttpRouteSource, PortProtocol, RawRoute, RawRoutes, RouteSource, TlsSource};

/// A fake control plane: `/v1/relay/routes/{SANDBOX}` and `/v1/relay/raw-routes`,
/// 401 without the bearer secret, 404 for other sandboxes.
async fn control_plane(hits: Arc<AtomicUsize>) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let hits = hits.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let hits = hits.clone();
                    async move {
                        hits.fetch_add(1, Ordering::SeqCst);
                        let auth = req
                            .headers()
                            .get("authorization")
                            .map(|v| v.to_str().unwrap().to_string());
                        let (status, body) = if auth.as_deref() != Some("Bearer relay-secret") {
                            (401, String::new())
                        } else if req.uri().path() == format!("/v1/relay/routes/{SANDBOX}") {
                            (
                                200,
                                serde_json::to_string(&route(&[(8000, PortProtocol::H2c, true)]))
                                    .unwrap(),
                            )
                        } else if req.uri().path() == "/v1/relay/raw-routes" {
                            let raw = RawRoutes {
                                routes: vec![RawRoute {
                                    relay_port: 30001,
                                    sandbox_id: SANDBOX.into(),
                                    port: 5432,
                                }],
                            };
                            (200, serde_json::to_string(&raw).unwrap())
                        } else {
                            (404, String::new())
                        };
                        Ok::<_, Infallible>(
                            Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::from(body)))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_route_source_reads_routes_and_raw_routes() {
    let hits = Arc::new(AtomicUsize::new(0));
    let addr = control_plane(hits.clone()).await;
    let url = format!("http://{addr}/");
    let src = HttpRouteSource::new(&url, "relay-secret", None, Duration::from_secs(5)).unwrap();
    let r = src.route(SANDBOX).await.unwrap().expect("found");
    assert_eq!(r.node_id, NODE);
    assert_eq!(r.port(8000).unwrap().protocol, PortProtocol::H2c);
    assert!(r.port(8000).unwrap().require_token);
    assert!(src.route("sb-other").await.unwrap().is_none());
    // Ids that are not [a-z0-9-] are never sent to the control plane.
    let before = hits.load(Ordering::SeqCst);
    assert!(src.route("../admin").await.unwrap().is_none());
    assert_eq!(hits.load(Ordering::SeqCst), before);
    assert_eq!(src.raw_routes().await.unwrap()[0].port, 5432);
    // A wrong secret is an error, not "no such sandbox".
    let bad = HttpRouteSource::new(&url, "nope", None, Duration::from_secs(5)).unwrap();
    assert!(bad.route(SANDBOX).await.is_err());
    // A control plane that is down is an error too, within the timeout.
    let down = HttpRouteSource::new(
        &format!("http://127.0.0.1:{}", free_port()),
        "x",
        None,
        Duration::from_secs(2),
    )
    .unwrap();
    assert!(down.raw_routes().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_certificate_files_are_served() {
    // Any CA-signed wildcard pair will do; make one with the generator.
    let gen = tempfile::tempdir().unwrap();
    let made = warren_relay::ensure_ca(gen.path(), "apps.example.test").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.base_domain = "apps.example.test".into();
    cfg.tls = TlsSource::Files {
        cert: gen.path().join("relay.pem"),
        key: gen.path().join("relay-key.pem"),
        ca: Some(gen.path().join("ca.pem")),
    };
    let routes = Arc::new(warren_relay::StaticRoutes::new());
    let relay = warren_relay::Relay::start(cfg, routes.clone())
        .await
        .unwrap();
    relay.attach_local_node(NODE, Arc::new(warren_relay::LoopbackTarget));
    assert_eq!(relay.ca_fingerprint(), made.ca_fingerprint);
    let up = http_upstream(false).await;
    routes.set(route(&[(up, PortProtocol::Http1, false)]));
    let host = format!("{SANDBOX}-{up}.apps.example.test");
    let resp = fetch(&relay, &host, "/", &[]).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(json(&resp)["host"], host.as_str());
    // Nothing was generated in the relay's own directory.
    assert!(!dir.path().join("ca.pem").exists());
    relay.shutdown().await;
}
