//! Routes: where a sandbox lives and what it exposes. A [`RouteSource`]
//! answers from the control plane's state; [`RouteCache`] keeps answers for
//! a short time so a burst of connections costs one lookup.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
pub use warren_proto::relay::{PortProtocol, PortRoute, RawRoute, RawRoutes, Route, RouteState};

/// The most entries the cache holds; past it, expired entries are dropped,
/// then everything.
const MAX_CACHE_ENTRIES: usize = 100_000;

#[derive(Debug, Clone, thiserror::Error)]
pub enum RouteError {
    /// The source could not answer (control plane down, bad answer...).
    #[error("route source unavailable: {0}")]
    Unavailable(String),
}

/// Where routes come from: the server's state (in-process) or the control
/// plane's HTTP API ([`HttpRouteSource`]).
#[async_trait]
pub trait RouteSource: Send + Sync + 'static {
    /// `Ok(None)`: no such sandbox.
    async fn route(&self, sandbox_id: &str) -> Result<Option<Route>, RouteError>;
    /// Every raw TCP route of every sandbox.
    async fn raw_routes(&self) -> Result<Vec<RawRoute>, RouteError>;
}

struct Entry {
    at: Instant,
    route: Option<Arc<Route>>,
}

/// A short-TTL cache in front of a [`RouteSource`]; concurrent misses for
/// one sandbox share one lookup.
pub struct RouteCache {
    source: Arc<dyn RouteSource>,
    positive: Duration,
    negative: Duration,
    lookup_timeout: Duration,
    entries: Mutex<HashMap<String, Entry>>,
    inflight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl RouteCache {
    pub fn new(
        source: Arc<dyn RouteSource>,
        positive: Duration,
        negative: Duration,
        lookup_timeout: Duration,
    ) -> Self {
        RouteCache {
            source,
            positive,
            negative,
            lookup_timeout,
            entries: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
        }
    }

    pub fn source(&self) -> &Arc<dyn RouteSource> {
        &self.source
    }

    fn cached(&self, sandbox_id: &str) -> Option<Option<Arc<Route>>> {
        let entries = self.entries.lock().expect("cache lock");
        let e = entries.get(sandbox_id)?;
        // A sandbox that is running and ready stays so for a while; one that
        // is starting or not ready yet changes soon, so it is asked again
        // after the short (negative) TTL.
        let settled = e
            .route
            .as_ref()
            .is_some_and(|r| r.state == RouteState::Running && r.ready);
        let ttl = if settled {
            self.positive
        } else {
            self.negative
        };
        (e.at.elapsed() < ttl).then(|| e.route.clone())
    }

    /// The route of `sandbox_id`, from the cache when fresh.
    pub async fn route(&self, sandbox_id: &str) -> Result<Option<Arc<Route>>, RouteError> {
        if let Some(hit) = self.cached(sandbox_id) {
            return Ok(hit);
        }
        let lock = {
            let mut inflight = self.inflight.lock().expect("inflight lock");
            inflight.entry(sandbox_id.to_string()).or_default().clone()
        };
        let result = {
            let _guard = lock.lock().await;
            if let Some(hit) = self.cached(sandbox_id) {
                Ok(hit)
            } else {
                match tokio::time::timeout(self.lookup_timeout, self.source.route(sandbox_id)).await
                {
                    Err(_) => Err(RouteError::Unavailable("route lookup timed out".into())),
                    Ok(Err(e)) => Err(e),
                    Ok(Ok(route)) => {
                        let route = route.map(Arc::new);
                        self.insert(sandbox_id, route.clone());
                        Ok(route)
                    }
                }
            }
        };
        {
            let mut inflight = self.inflight.lock().expect("inflight lock");
            if Arc::strong_count(&lock) <= 2 {
                inflight.remove(sandbox_id);
            }
        }
        result
    }

    fn insert(&self, sandbox_id: &str, route: Option<Arc<Route>>) {
        let mut entries = self.entries.lock().expect("cache lock");
        if entries.len() >= MAX_CACHE_ENTRIES {
            let max = self.positive.max(self.negative);
            entries.retain(|_, e| e.at.elapsed() < max);
            if entries.len() >= MAX_CACHE_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(
            sandbox_id.to_string(),
            Entry {
                at: Instant::now(),
                route,
            },
        );
    }

    /// Forgets `sandbox_id` (its state changed, a node said it is gone).
    pub fn invalidate(&self, sandbox_id: &str) {
        self.entries.lock().expect("cache lock").remove(sandbox_id);
    }

    /// Forgets everything.
    pub fn clear(&self) {
        self.entries.lock().expect("cache lock").clear();
    }
}

/// Asks the control plane over HTTP (relay in its own process):
/// `GET {control_url}/v1/relay/routes/{id}` and `/v1/relay/raw-routes`
/// with `Authorization: Bearer <secret>`.
pub struct HttpRouteSource {
    client: reqwest::Client,
    base: String,
    secret: String,
}

impl HttpRouteSource {
    /// `ca_pem`: extra CA to trust for an `https` control URL (the Warren CA).
    pub fn new(
        control_url: &str,
        secret: &str,
        ca_pem: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Self, RouteError> {
        let mut b = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout);
        if let Some(pem) = ca_pem {
            let cert = reqwest::Certificate::from_pem(pem)
                .map_err(|e| RouteError::Unavailable(e.to_string()))?;
            b = b.add_root_certificate(cert);
        }
        let client = b
            .build()
            .map_err(|e| RouteError::Unavailable(e.to_string()))?;
        Ok(HttpRouteSource {
            client,
            base: control_url.trim_end_matches('/').to_string(),
            secret: secret.into(),
        })
    }

    async fn get(&self, path: &str) -> Result<Option<bytes::Bytes>, RouteError> {
        let resp = self
            .client
            .get(format!("{}{}", self.base, path))
            .bearer_auth(&self.secret)
            .send()
            .await
            .map_err(|e| RouteError::Unavailable(format!("GET {path}: {e}")))?;
        match resp.status() {
            reqwest::StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => {
                Ok(Some(resp.bytes().await.map_err(|e| {
                    RouteError::Unavailable(format!("GET {path}: {e}"))
                })?))
            }
            s => Err(RouteError::Unavailable(format!("GET {path}: status {s}"))),
        }
    }
}

/// Sandbox ids are `[a-z0-9-]`; anything else is never looked up.
pub fn valid_sandbox_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[async_trait]
impl RouteSource for HttpRouteSource {
    async fn route(&self, sandbox_id: &str) -> Result<Option<Route>, RouteError> {
        if !valid_sandbox_id(sandbox_id) {
            return Ok(None);
        }
        match self.get(&format!("/v1/relay/routes/{sandbox_id}")).await? {
            None => Ok(None),
            Some(body) => serde_json::from_slice(&body)
                .map(Some)
                .map_err(|e| RouteError::Unavailable(format!("bad route answer: {e}"))),
        }
    }

    async fn raw_routes(&self) -> Result<Vec<RawRoute>, RouteError> {
        match self.get("/v1/relay/raw-routes").await? {
            None => Err(RouteError::Unavailable("raw-routes: 404".into())),
            Some(body) => serde_json::from_slice::<RawRoutes>(&body)
                .map(|r| r.routes)
                .map_err(|e| RouteError::Unavailable(format!("bad raw-routes answer: {e}"))),
        }
    }
}

/// A fixed, mutable set of routes: for tests, benches and embedding.
#[derive(Default)]
pub struct StaticRoutes {
    routes: Mutex<HashMap<String, Route>>,
    raw: Mutex<Vec<RawRoute>>,
}

impl StaticRoutes {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn set(&self, route: Route) {
        self.routes
            .lock()
            .expect("routes lock")
            .insert(route.sandbox_id.clone(), route);
    }
    pub fn remove(&self, sandbox_id: &str) {
        self.routes.lock().expect("routes lock").remove(sandbox_id);
    }
    pub fn set_raw(&self, raw: Vec<RawRoute>) {
        *self.raw.lock().expect("raw lock") = raw;
    }
}

#[async_trait]
impl RouteSource for StaticRoutes {
    async fn route(&self, sandbox_id: &str) -> Result<Option<Route>, RouteError> {
        Ok(self
            .routes
            .lock()
            .expect("routes lock")
            .get(sandbox_id)
            .cloned())
    }
    async fn raw_routes(&self) -> Result<Vec<RawRoute>, RouteError> {
        Ok(self.raw.lock().expect("raw lock").clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Counting(AtomicUsize);
    #[async_trait]
    impl RouteSource for Counting {
        async fn route(&self, sandbox_id: &str) -> Result<Option<Route>, RouteError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok((sandbox_id == "sb-a").then(|| Route {
                sandbox_id: sandbox_id.into(),
                node_id: "n".into(),
                state: RouteState::Running,
                ready: true,
                ports: vec![],
                revoked_tokens: vec![],
            }))
        }
        async fn raw_routes(&self) -> Result<Vec<RawRoute>, RouteError> {
            Ok(vec![])
        }
    }

    #[tokio::test]
    async fn concurrent_misses_share_one_lookup_and_ttls_apply() {
        let src = Arc::new(Counting(AtomicUsize::new(0)));
        let cache = Arc::new(RouteCache::new(
            src.clone(),
            Duration::from_secs(60),
            Duration::from_millis(1),
            Duration::from_secs(5),
        ));
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let c = cache.clone();
            tasks.push(tokio::spawn(async move {
                c.route("sb-a").await.unwrap().is_some()
            }));
        }
        for t in tasks {
            assert!(t.await.unwrap());
        }
        assert_eq!(src.0.load(Ordering::SeqCst), 1);
        assert!(cache.route("sb-b").await.unwrap().is_none());
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(cache.route("sb-b").await.unwrap().is_none());
        assert_eq!(
            src.0.load(Ordering::SeqCst),
            3,
            "negative entries expire fast"
        );
        cache.invalidate("sb-a");
        cache.route("sb-a").await.unwrap();
        assert_eq!(src.0.load(Ordering::SeqCst), 4);
    }
}
