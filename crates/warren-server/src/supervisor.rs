//! The sandbox lifecycle: start, watch for exits, enforce timeouts, end with
//! exactly one typed reason, and re-adopt after a restart.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::Notify;
use tracing::{info, warn, Instrument};
use warren_node::{CreateRequest, Node};
use warren_runtime::{Recovered, SandboxExit, SandboxId};
use warren_store::{SandboxRecord, Store, Termination, TerminationReason};

use crate::readiness::Readiness;
use crate::ApiError;

#[derive(Clone)]
pub struct Supervisor {
    store: Store,
    node: Node,
    /// Execs running per sandbox: a sandbox with one is not idle.
    active: Arc<Mutex<HashMap<String, usize>>>,
    /// Woken whenever any sandbox ends (long-poll waiters re-check).
    ended: Arc<Notify>,
    /// Where ended sandboxes' logs are kept.
    logs_dir: Arc<std::path::PathBuf>,
    /// Readiness probes of running sandboxes.
    readiness: Arc<Readiness>,
    /// Called with the id of every sandbox that ended (the relay drops its
    /// cached route); set once tunnels are up.
    on_end: Arc<OnceLock<EndHook>>,
    /// Memory snapshots, pause and resume (see [`crate::memory`]).
    pub(crate) memory: Arc<crate::memory::MemoryState>,
    /// The watch task of each running sandbox (see [`Supervisor::watch`]):
    /// a pause takes it out and stops it, so that the checkpoint's end of
    /// the sandbox's processes is not recorded as the sandbox's end.
    watchers: Arc<Mutex<HashMap<String, tokio::task::AbortHandle>>>,
    /// Background execs (restored copies bring theirs along).
    pub(crate) execs: Arc<crate::execs::Registry>,
}

/// See [`Supervisor::set_on_end`].
pub type EndHook = Arc<dyn Fn(&str) + Send + Sync>;

/// Marks a sandbox busy while alive (an exec is running).
pub struct ActivityGuard {
    sup: Supervisor,
    id: String,
}

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        let mut m = self.sup.active.lock().expect("activity lock poisoned");
        if let Some(n) = m.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.id);
            }
        }
        let store = self.sup.store.clone();
        let id = self.id.clone();
        tokio::spawn(async move {
            let _ = store.record_activity(&id).await;
        });
    }
}

/// The store's view of how a runtime exit ended a sandbox.
fn termination_of(exit: &SandboxExit) -> Termination {
    match exit {
        SandboxExit::Exited { code } => {
            Termination::new(TerminationReason::Exited).with_exit_code(*code)
        }
        SandboxExit::Signaled { signal } => Termination::new(TerminationReason::Exited)
            .with_exit_code(128 + signal)
            .with_detail(format!("killed by signal {signal}")),
        SandboxExit::OomKilled => Termination::new(TerminationReason::OomKilled)
            .with_exit_code(137)
            .with_detail("killed by the kernel's OOM killer at the memory limit"),
        // The terminating call recorded its own reason first; this only
        // fills in what is still empty.
        SandboxExit::Destroyed => Termination::new(TerminationReason::Terminated),
        SandboxExit::Lost { detail } => {
            Termination::new(TerminationReason::Error).with_detail(detail.clone())
        }
    }
}

impl Supervisor {
    /// A supervisor keeping ended sandboxes' logs in `logs_dir` and memory
    /// snapshots (and paused sandboxes' checkpoints) in `memory_dir`.
    pub fn new(
        store: Store,
        node: Node,
        logs_dir: std::path::PathBuf,
        memory_dir: std::path::PathBuf,
    ) -> Self {
        Supervisor {
            store,
            node,
            active: Arc::default(),
            ended: Arc::new(Notify::new()),
            logs_dir: Arc::new(logs_dir),
            readiness: Arc::default(),
            on_end: Arc::default(),
            memory: Arc::new(crate::memory::MemoryState::new(memory_dir)),
            watchers: Arc::default(),
            execs: Arc::default(),
        }
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    pub(crate) fn node(&self) -> &Node {
        &self.node
    }

    /// Tells the relay to forget its cached route of `id` (its state
    /// changed: paused, resumed).
    pub(crate) fn invalidate_route(&self, id: &str) {
        if let Some(hook) = self.on_end.get() {
            hook(id);
        }
    }

    /// Stops the watch task of `id` and returns whether there was one (no
    /// task: the sandbox is ending, or is not watched by this process).
    pub(crate) fn unwatch(&self, id: &str) -> bool {
        match self
            .watchers
            .lock()
            .expect("watchers lock poisoned")
            .remove(id)
        {
            Some(h) => {
                h.abort();
                true
            }
            None => false,
        }
    }

    pub fn readiness(&self) -> &Arc<Readiness> {
        &self.readiness
    }

    /// Sets the hook called when a sandbox ends (first call wins).
    pub fn set_on_end(&self, hook: EndHook) {
        let _ = self.on_end.set(hook);
    }

    /// Releases what an ended sandbox held outside the node: its readiness
    /// entry, its relay ports, the relay's cached route.
    pub(crate) async fn after_end(&self, id: &str) {
        self.readiness.forget(id);
        self.memory.forget(id);
        if let Err(e) = self.store.release_relay_ports(id).await {
            warn!(sandbox_id = id, error = %e, "releasing relay ports failed");
        }
        if let Some(hook) = self.on_end.get() {
            hook(id);
        }
    }

    pub fn logs_dir(&self) -> &std::path::Path {
        &self.logs_dir
    }

    /// Keeps an ending sandbox's output after its state directory is gone.
    pub(crate) async fn preserve_log(&self, id: &SandboxId) {
        if let Ok(log) = self.node.read_log(id, None).await {
            let dir = self.logs_dir.clone();
            let id = id.to_string();
            let _ = tokio::task::spawn_blocking(move || {
                if let Err(e) = crate::logs::preserve(&dir, &id, &log) {
                    warn!(sandbox_id = %id, error = %e, "keeping the sandbox's log failed");
                }
            })
            .await;
        }
    }

    pub fn ended(&self) -> &Notify {
        &self.ended
    }

    pub fn busy(&self, id: &str) -> ActivityGuard {
        *self
            .active
            .lock()
            .expect("activity lock poisoned")
            .entry(id.to_string())
            .or_default() += 1;
        ActivityGuard {
            sup: self.clone(),
            id: id.to_string(),
        }
    }

    fn is_busy(&self, id: &str) -> bool {
        self.active
            .lock()
            .expect("activity lock poisoned")
            .contains_key(id)
    }

    /// Creates the sandbox on the node and starts watching it; returns when
    /// it was marked running (`None` if it already ended meanwhile). On
    /// failure the record ends with reason `error` and the error is returned.
    pub async fn start(
        &self,
        rec: &SandboxRecord,
        req: CreateRequest,
    ) -> Result<Option<i64>, ApiError> {
        let id = req.id.clone();
        let mounts = rec
            .spec
            .mounts
            .iter()
            .map(|m| warren_node::ImageMountRequest {
                path: m.path.clone(),
                image: m.image.clone(),
            })
            .collect();
        let created = if rec.spec.memory_snapshots {
            self.node.create_checkpointable(req, None, None).await
        } else {
            self.node.create_with_mounts(req, mounts, None, None).await
        };
        let image_id = match created {
            Ok((_, image_id)) => image_id,
            Err(e) => {
                let t = Termination::new(TerminationReason::Error).with_detail(e.to_string());
                let _ = self.store.finish_sandbox(&rec.id, &t).await;
                self.after_end(&rec.id).await;
                self.ended.notify_waiters();
                return Err(e.into());
            }
        };
        let started = self.store.mark_running_at(&rec.id, Some(&image_id)).await?;
        self.readiness.track(
            &self.node,
            &rec.id,
            rec.spec.network.readiness_probe.clone(),
        );
        self.watch(id);
        Ok(started)
    }

    /// Waits for the sandbox to end, records why, and releases it.
    pub(crate) fn watch(&self, id: SandboxId) {
        let key = id.to_string();
        let sup = self.clone();
        let span = tracing::info_span!("supervise", sandbox_id = %id);
        // Registered under the lock before the task can look for itself.
        let mut watchers = self.watchers.lock().expect("watchers lock poisoned");
        let task = tokio::spawn(
            async move {
                let exit = sup.node.wait_exit(&id).await;
                // A pause took this watch out (and aborts it): the end of
                // the processes is the pause's, not the sandbox's.
                if sup
                    .watchers
                    .lock()
                    .expect("watchers lock poisoned")
                    .remove(id.as_str())
                    .is_none()
                {
                    return;
                }
                let t = match exit {
                    Ok(exit) => termination_of(&exit),
                    Err(e) => Termination::new(TerminationReason::Error).with_detail(e.to_string()),
                };
                sup.preserve_log(&id).await;
                if let Err(e) = sup.store.finish_sandbox(id.as_str(), &t).await {
                    warn!(error = %e, "recording the end of a sandbox failed");
                }
                if let Err(e) = sup.node.destroy(&id).await {
                    warn!(error = %e, "releasing an ended sandbox failed");
                }
                sup.after_end(id.as_str()).await;
                sup.ended.notify_waiters();
            }
            .instrument(span),
        );
        if let Some(old) = watchers.insert(key, task.abort_handle()) {
            old.abort();
        }
    }

    /// Ends a running or paused sandbox with `t` (first reason wins). A
    /// pause or resume in flight finishes first; a paused sandbox's
    /// checkpoint is deleted.
    pub async fn terminate(&self, id: &str, t: Termination) -> Result<(), ApiError> {
        let lock = self.memory.lock(id);
        let _held = lock.lock().await;
        self.terminate_locked(id, t).await
    }

    /// [`Supervisor::terminate`] with the sandbox's memory lock held.
    pub(crate) async fn terminate_locked(&self, id: &str, t: Termination) -> Result<(), ApiError> {
        self.store.begin_termination(id, &t).await?;
        let sid =
            SandboxId::new(id.to_string()).map_err(|e| ApiError::internal("sandbox id", &e))?;
        self.node.destroy(&sid).await?;
        self.memory.discard_pause(&self.node, id).await;
        self.store.finish_sandbox(id, &t).await?;
        self.after_end(id).await;
        self.ended.notify_waiters();
        Ok(())
    }

    /// Enforces `timeout_secs` and `idle_timeout_secs` every `interval`.
    pub fn spawn_sweeper(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        let sup = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_prune = std::time::Instant::now();
            let mut last_expiry = std::time::Instant::now();
            loop {
                tick.tick().await;
                if last_expiry.elapsed() >= Duration::from_secs(1) {
                    last_expiry = std::time::Instant::now();
                    crate::snapshots::expire_images(&sup.store, &sup.node).await;
                    crate::memory::expire_memory_snapshots(&sup).await;
                }
                if last_prune.elapsed() > Duration::from_secs(60) {
                    last_prune = std::time::Instant::now();
                    let dir = sup.logs_dir.clone();
                    tokio::task::spawn_blocking(move || crate::logs::prune(&dir));
                }
                let now = now_ms();
                let expired = match sup.store.expired(now).await {
                    Ok(v) => v,
                    Err(e) => {
                        warn!(error = %e, "checking timeouts failed");
                        continue;
                    }
                };
                for e in expired {
                    let id = e.sandbox.id.clone();
                    if e.reason == TerminationReason::IdleTimeout && sup.is_busy(&id) {
                        let _ = sup.store.record_activity(&id).await;
                        continue;
                    }
                    if e.reason == TerminationReason::IdleTimeout && e.sandbox.spec.pause_on_idle {
                        sup.pause_on_idle(id);
                        continue;
                    }
                    let t = Termination::new(e.reason);
                    let sup = sup.clone();
                    tokio::spawn(async move {
                        if let Err(err) = sup.terminate(&id, t).await {
                            warn!(sandbox_id = %id, error = ?err, "ending an expired sandbox failed");
                        }
                    });
                }
            }
        })
    }

    /// After a restart: re-adopts sandboxes the runtime still has, keeps
    /// paused sandboxes paused (and memory snapshots' images held), ends the
    /// records of the rest, and releases sandboxes nobody has a record of.
    pub async fn recover(&self) -> Result<(), warren_node::NodeError> {
        crate::memory::adopt_memory_snapshots(self).await;
        let found = self.node.recover().await?;
        let unfinished = match self.store.list_unfinished().await {
            Ok(v) => v,
            Err(e) => {
                warn!(error = %e, "listing unfinished sandboxes failed");
                Vec::new()
            }
        };
        let mut running = std::collections::HashSet::new();
        for r in found {
            match r {
                Recovered::Running(id) => {
                    let paused = unfinished.iter().any(|u| {
                        u.id == id.as_str() && u.state == warren_store::SandboxState::Paused
                    });
                    if paused {
                        // A crash between a pause's checkpoint and its
                        // release: the checkpoint is what the record says.
                        warn!(sandbox_id = %id, "a paused sandbox was still running; releasing it");
                        self.node.destroy(&id).await?;
                    } else if let Some(rec) = unfinished.iter().find(|u| u.id == id.as_str()) {
                        info!(sandbox_id = %id, "re-adopted a running sandbox");
                        running.insert(id.to_string());
                        // Its image must survive GC. A record that never
                        // got its image id (a crash mid-create) resolves
                        // its reference now.
                        let image_id = match &rec.image_id {
                            Some(i) => Some(i.clone()),
                            None => self.node.image_id(&rec.image).await.ok(),
                        };
                        if let Some(image_id) = image_id {
                            self.node.adopt_image(&id, image_id);
                        }
                        let mut mounted = Vec::new();
                        for m in &rec.spec.mounts {
                            match self.node.image_id(&m.image).await {
                                Ok(i) => mounted.push(i),
                                Err(e) => {
                                    warn!(sandbox_id = %id, image = %m.image, error = %e, "a mounted image is gone")
                                }
                            }
                        }
                        if !mounted.is_empty() {
                            self.node.adopt_mounted_images(&id, mounted);
                        }
                        // A crash between the node's create and the record's
                        // `running` left it `creating`: it runs, so say so
                        // (and start its timeout).
                        if rec.state == warren_store::SandboxState::Creating {
                            if let Err(e) = self.store.mark_running_at(id.as_str(), None).await {
                                warn!(sandbox_id = %id, error = %e, "marking a re-adopted sandbox running failed");
                            }
                        }
                        self.readiness.track(
                            &self.node,
                            id.as_str(),
                            rec.spec.network.readiness_probe.clone(),
                        );
                        self.watch(id);
                    } else {
                        warn!(sandbox_id = %id, "no record of a running sandbox; removing it");
                        self.node.destroy(&id).await?;
                    }
                }
                Recovered::Ended(id, exit) => {
                    let t = match exit {
                        SandboxExit::Lost { .. } | SandboxExit::Destroyed => {
                            Termination::new(TerminationReason::NodeRestart)
                                .with_detail("the sandbox could not be re-adopted after a restart")
                        }
                        other => termination_of(&other),
                    };
                    running.insert(id.to_string());
                    let _ = self.store.finish_sandbox(id.as_str(), &t).await;
                    self.after_end(id.as_str()).await;
                }
            }
        }
        for rec in unfinished {
            if running.contains(&rec.id) {
                continue;
            }
            if rec.state == warren_store::SandboxState::Paused {
                // Paused sandboxes stay paused across restarts: their
                // checkpoint is on disk, and their image is held again.
                match self.memory.adopt_pause(&self.node, &rec).await {
                    Ok(()) => {
                        info!(sandbox_id = %rec.id, "a paused sandbox stays paused");
                        continue;
                    }
                    Err(reason) => {
                        let t = Termination::new(TerminationReason::NodeRestart)
                            .with_detail(format!("the paused sandbox could not be kept: {reason}"));
                        let _ = self.store.finish_sandbox(&rec.id, &t).await;
                        self.after_end(&rec.id).await;
                        continue;
                    }
                }
            }
            let t = Termination::new(TerminationReason::NodeRestart)
                .with_detail("the sandbox was gone after a restart");
            let _ = self.store.finish_sandbox(&rec.id, &t).await;
            self.after_end(&rec.id).await;
        }
        Ok(())
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
