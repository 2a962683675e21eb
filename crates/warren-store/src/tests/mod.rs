//! Hermetic tests: every test opens its own in-memory or tempdir database.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::{ManualClock, NewSandbox, SandboxSpec, Store, Workspace, LOCAL_NODE_ID};

mod auth;
mod listing;
mod memory;
mod perf;
mod persistence;
mod sandboxes;
mod snapshots;

/// A fixed, realistic start time (2026-01-01T00:00:00Z).
pub(crate) const T0: i64 = 1_767_225_600_000;

/// An in-memory store whose clock reads [`T0`] until moved.
pub(crate) async fn memory_store() -> (Store, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(T0));
    let store = Store::open_in_memory()
        .await
        .expect("open in-memory store")
        .with_clock(clock.clone());
    (store, clock)
}

pub(crate) async fn workspace(store: &Store, name: &str) -> Workspace {
    store
        .create_workspace(name)
        .await
        .expect("create workspace")
}

pub(crate) fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

pub(crate) fn new_sandbox(workspace_id: &str, name: Option<&str>) -> NewSandbox {
    NewSandbox {
        id: crate::new_sandbox_id(),
        workspace_id: workspace_id.to_owned(),
        name: name.map(str::to_owned),
        image: "docker.io/library/python:3.12".to_owned(),
        spec: SandboxSpec {
            command: vec!["sleep".to_owned(), "infinity".to_owned()],
            env: tags(&[("SECRET", "hunter2")]),
            workdir: Some("/work".to_owned()),
            cpu: Some(0.5),
            memory_mib: Some(512),
            disk_mib: Some(1024),
            timeout_secs: Some(300),
            idle_timeout_secs: None,
            user: Some("1000".to_owned()),
            network: Default::default(),
            ..Default::default()
        },
        tags: BTreeMap::new(),
        node_id: LOCAL_NODE_ID.to_owned(),
    }
}
