//! Readiness: whether each running sandbox passed its readiness probe.
//!
//! A sandbox without a probe is ready once running. With one, a task probes
//! it (a TCP connect to `127.0.0.1:<port>` inside the sandbox, or an exec
//! that must exit 0) until it passes or the sandbox ends. The relay answers
//! `503 sandbox_not_ready` meanwhile, and `GET .../wait-ready` waits.
//! Readiness is memory-only: after a restart, re-adopted sandboxes are
//! probed again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tracing::{debug, Instrument};
use warren_node::Node;
use warren_runtime::SandboxId;
use warren_store::ReadinessProbe;

/// Probe interval for the first seconds, then the slower one.
const FAST_INTERVAL: Duration = Duration::from_millis(50);
const FAST_FOR: Duration = Duration::from_secs(5);
const SLOW_INTERVAL: Duration = Duration::from_millis(500);
/// Longest a single probe may take.
const TCP_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
const EXEC_PROBE_TIMEOUT: Duration = Duration::from_secs(10);

struct Entry {
    ready: AtomicBool,
    changed: Notify,
}

/// Readiness of every sandbox this server runs.
#[derive(Default)]
pub struct Readiness {
    map: Mutex<HashMap<String, Arc<Entry>>>,
    /// Called with a sandbox's id when it becomes ready (the relay drops
    /// its cached "not ready" route).
    on_ready: std::sync::OnceLock<crate::supervisor::EndHook>,
}

impl Readiness {
    /// Sets the hook called when a sandbox becomes ready (first call wins).
    pub fn set_on_ready(&self, hook: crate::supervisor::EndHook) {
        let _ = self.on_ready.set(hook);
    }

    /// Starts tracking a running sandbox: ready at once without a probe,
    /// else once the probe passes.
    pub fn track(self: &Arc<Self>, node: &Node, id: &str, probe: Option<ReadinessProbe>) {
        let entry = Arc::new(Entry {
            ready: AtomicBool::new(probe.is_none()),
            changed: Notify::new(),
        });
        self.map
            .lock()
            .expect("readiness lock poisoned")
            .insert(id.to_string(), entry.clone());
        let Some(probe) = probe else { return };
        let Ok(sid) = SandboxId::new(id.to_string()) else {
            return;
        };
        let this = Arc::downgrade(self);
        let node = node.clone();
        let span = tracing::info_span!("readiness", sandbox_id = %id);
        tokio::spawn(
            async move {
                let started = tokio::time::Instant::now();
                loop {
                    // Stop once the sandbox is no longer tracked (it ended).
                    let Some(this) = this.upgrade() else { return };
                    if !this.is_current(sid.as_str(), &entry) {
                        return;
                    }
                    if probe_once(&node, &sid, &probe).await {
                        debug!(after_ms = started.elapsed().as_millis() as u64, "ready");
                        entry.ready.store(true, Ordering::Release);
                        if let Some(hook) = this.on_ready.get() {
                            hook(sid.as_str());
                        }
                        entry.changed.notify_waiters();
                        return;
                    }
                    drop(this);
                    let pause = if started.elapsed() < FAST_FOR {
                        FAST_INTERVAL
                    } else {
                        SLOW_INTERVAL
                    };
                    tokio::time::sleep(pause).await;
                }
            }
            .instrument(span),
        );
    }

    fn is_current(&self, id: &str, entry: &Arc<Entry>) -> bool {
        self.map
            .lock()
            .expect("readiness lock poisoned")
            .get(id)
            .is_some_and(|e| Arc::ptr_eq(e, entry))
    }

    /// Stops tracking (the sandbox ended); wakes waiters.
    pub fn forget(&self, id: &str) {
        let e = self.map.lock().expect("readiness lock poisoned").remove(id);
        if let Some(e) = e {
            e.changed.notify_waiters();
        }
    }

    /// Whether the sandbox is tracked and ready.
    pub fn is_ready(&self, id: &str) -> bool {
        self.map
            .lock()
            .expect("readiness lock poisoned")
            .get(id)
            .is_some_and(|e| e.ready.load(Ordering::Acquire))
    }

    /// Waits until the sandbox is ready (`Some(true)`), stops being tracked
    /// (`Some(false)`), or `deadline` passes (`None`).
    pub async fn wait(&self, id: &str, deadline: tokio::time::Instant) -> Option<bool> {
        loop {
            let entry = self
                .map
                .lock()
                .expect("readiness lock poisoned")
                .get(id)
                .cloned();
            let Some(entry) = entry else {
                return Some(false);
            };
            let changed = entry.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if entry.ready.load(Ordering::Acquire) {
                return Some(true);
            }
            // Re-check that the entry is still the tracked one: `forget`
            // may have run between the lookup and `enable`.
            if !self.is_current(id, &entry) {
                return Some(false);
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return None;
            }
        }
    }
}

async fn probe_once(node: &Node, id: &SandboxId, probe: &ReadinessProbe) -> bool {
    match probe {
        ReadinessProbe::Tcp(port) => {
            matches!(
                tokio::time::timeout(TCP_PROBE_TIMEOUT, node.dial(id, *port)).await,
                Ok(Ok(_))
            )
        }
        ReadinessProbe::Exec(argv) => {
            let req = warren_node::BufferedExec {
                argv: argv.clone(),
                env: vec![warren_runtime::DEFAULT_PATH.into()],
                workdir: "/".into(),
                timeout: Some(EXEC_PROBE_TIMEOUT),
                stdin: None,
                user: warren_runtime::User::root(),
            };
            match node.exec_buffered(id, req).await {
                Ok(out) => {
                    !out.exit.timed_out && out.exit.status == warren_runtime::ExitStatus::Code(0)
                }
                Err(_) => false,
            }
        }
    }
}
