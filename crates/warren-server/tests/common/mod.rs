//! What the server's test binaries share: a server over a temporary data
//! directory (its own cgroup subtree, registries kept on loopback), calls
//! through the router, teardown, and the libtest-mimic harness (the test
//! binary is also the sandboxes' init, so it has its own `main`).

#![allow(dead_code)]

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use libtest_mimic::{Failed, Trial};
use serde_json::Value;
use tower::ServiceExt;
use warren_server::{AppState, ServerConfig};

pub const OFFLINE_REGISTRIES: &str =
    r#"{"default_registry": "127.0.0.1:9", "registries": {"127.0.0.1:9": {"insecure": true}}}"#;

pub struct Env {
    pub state: AppState,
    pub token: String,
    pub data: tempfile::TempDir,
    pub sweeper: tokio::task::JoinHandle<()>,
}

/// Each server gets its own cgroup subtree: a runtime treats every cgroup
/// under its parent as its own (and removes ones it has no record of).
pub fn cgroup_parent(data: &std::path::Path) -> String {
    let tag = data
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default()
        .replace(|c: char| !c.is_ascii_alphanumeric(), "");
    format!("warren-test-srv-{}-{tag}", std::process::id())
}

pub async fn env() -> Result<Env> {
    env_with(|_, _| Ok(())).await
}

/// An environment whose config `edit` may change (given the data dir).
pub async fn env_with(
    edit: impl FnOnce(&mut ServerConfig, &std::path::Path) -> Result<()>,
) -> Result<Env> {
    let data = tempfile::Builder::new()
        .prefix("warren-e2e-api-")
        .tempdir_in("/var/tmp")?;
    let mut cfg = ServerConfig::new("127.0.0.1:0".parse()?, data.path());
    // Tests never reach the internet: short image names resolve to a
    // loopback port where nothing listens (an implicit pull is refused at
    // once) unless a test points the registries elsewhere.
    let registries = data.path().join("registries.json");
    std::fs::write(&registries, OFFLINE_REGISTRIES)?;
    cfg.registries = Some(registries);
    // The test binary's copy for checkpointable sandboxes goes with the
    // data dir (the default, /run/warren/init, would keep it).
    cfg.init_copy_dir = Some(data.path().join("init-copy"));
    edit(&mut cfg, data.path())?;
    cfg.cgroup_parent = Some(cgroup_parent(data.path()));
    cfg.sweep_interval = Duration::from_millis(100);
    let state = warren_server::open(&cfg).await?;
    let token = std::fs::read_to_string(data.path().join("admin-token"))?
        .trim()
        .to_string();
    let sweeper = state.supervisor.spawn_sweeper(cfg.sweep_interval);
    Ok(Env {
        state,
        token,
        data,
        sweeper,
    })
}

impl Env {
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<(StatusCode, Value)> {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let body = match body {
            Some(v) => {
                req = req.header("content-type", "application/json");
                Body::from(serde_json::to_vec(&v)?)
            }
            None => Body::empty(),
        };
        let resp = warren_server::router(self.state.clone())
            .oneshot(req.body(body)?)
            .await?;
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 16 << 20).await?;
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        Ok((status, v))
    }

    pub async fn admin(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, Value)> {
        self.call(method, path, Some(&self.token), body).await
    }

    /// A call with a raw body of `content_type`.
    pub async fn raw_call(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<(StatusCode, Value)> {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", content_type)
            .body(Body::from(body))?;
        let resp = warren_server::router(self.state.clone())
            .oneshot(req)
            .await?;
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 16 << 20).await?;
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        Ok((status, v))
    }

    pub async fn create(&self, body: Value) -> Result<String> {
        let (s, v) = self.admin("POST", "/v1/sandboxes", Some(body)).await?;
        ensure!(s == StatusCode::CREATED, "create: {s} {v}");
        Ok(v["id"].as_str().context("id")?.to_string())
    }

    pub async fn wait_end(&self, id: &str) -> Result<Value> {
        let (s, v) = self
            .admin(
                "GET",
                &format!("/v1/sandboxes/{id}/wait?timeout_secs=30"),
                None,
            )
            .await?;
        ensure!(
            s == StatusCode::OK && v["state"] == "terminated",
            "wait: {s} {v}"
        );
        Ok(v)
    }

    pub async fn teardown(self) {
        self.sweeper.abort();
        self.state.shutdown().await;
        let list = self
            .admin("GET", "/v1/sandboxes?state=running&limit=1000", None)
            .await;
        if let Ok((_, v)) = list {
            for s in v["sandboxes"].as_array().cloned().unwrap_or_default() {
                if let Some(id) = s["id"].as_str() {
                    let _ = self
                        .admin("POST", &format!("/v1/sandboxes/{id}/terminate"), None)
                        .await;
                }
            }
        }
        self.state.node.runtime().flush_trash();
        let parent = cgroup_parent(self.data.path());
        drop(self.data);
        if let Ok(ctls) = std::fs::read_dir("/sys/fs/cgroup") {
            for ctl in ctls.flatten() {
                let _ = std::fs::remove_dir(ctl.path().join(&parent));
            }
        }
    }
}

/// The error code of an API error body.
pub fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

pub type TestFn = fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>>>>;

/// A test that needs root (and whatever `requires` checks: it returns
/// false after printing why the test is skipped, or panics under CI).
pub fn trial_with(name: &'static str, f: TestFn, requires: fn(&'static str) -> bool) -> Trial {
    Trial::test(name, move || {
        if !warren_testkit::require_root(name) || !requires(name) {
            return Ok(());
        }
        run(f)
    })
}

/// Runs `f` on a fresh multi-thread runtime (threads start here, so they
/// inherit whatever namespaces the calling thread is in).
pub fn run(f: TestFn) -> Result<(), Failed> {
    let rt = tokio::runtime::Runtime::new().map_err(|e| Failed::from(e.to_string()))?;
    rt.block_on(f()).map_err(|e| Failed::from(format!("{e:#}")))
}

/// Logs to stderr, filtered by `RUST_LOG`.
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
}

pub fn trial(name: &'static str, f: TestFn) -> Trial {
    trial_with(name, f, |_| true)
}

#[allow(unused_macros)]
macro_rules! t {
    ($f:ident) => {
        trial(stringify!($f), || Box::pin($f()))
    };
}
