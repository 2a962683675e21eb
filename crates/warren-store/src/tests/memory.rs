//! Pause and resume transitions, discarded creates, memory snapshot
//! records, and the migration that added them (child rows survive the
//! rebuild of `sandboxes`).

use super::{memory_store, new_sandbox, tags, workspace, T0};
use crate::{MemorySnapshotRecord, SandboxState, Store, Termination, TerminationReason};

#[tokio::test]
async fn pause_and_resume_move_the_deadline() {
    let (store, clock) = memory_store().await;
    let ws = workspace(&store, "w").await;
    let mut new = new_sandbox(&ws.id, Some("p"));
    new.spec.idle_timeout_secs = Some(10);
    store.insert_sandbox(&new).await.unwrap();
    // Only a running sandbox pauses.
    assert!(!store.pause_sandbox(&new.id).await.unwrap());
    store.mark_running(&new.id).await.unwrap();
    let deadline = T0 + 300_000;
    clock.advance(1000);
    assert!(store.pause_sandbox(&new.id).await.unwrap());
    assert!(!store.pause_sandbox(&new.id).await.unwrap());
    let sb = store.get_sandbox(&ws.id, &new.id).await.unwrap().unwrap();
    assert_eq!(sb.state, SandboxState::Paused);
    assert_eq!(sb.paused_at, Some(T0 + 1000));
    // No timeout runs while paused: not expired even long after both limits.
    clock.advance(1_000_000);
    assert!(store.expired(T0 + 2_000_000).await.unwrap().is_empty());
    // Paused sandboxes are unfinished (a restart keeps them) and their name
    // stays taken.
    assert_eq!(store.list_unfinished().await.unwrap().len(), 1);
    assert!(store
        .insert_sandbox(&new_sandbox(&ws.id, Some("p")))
        .await
        .is_err());
    let at = store.resume_sandbox(&new.id).await.unwrap();
    assert_eq!(at, Some(T0 + 1_001_000));
    assert_eq!(store.resume_sandbox(&new.id).await.unwrap(), None);
    let sb = store.get_sandbox(&ws.id, &new.id).await.unwrap().unwrap();
    assert_eq!(sb.state, SandboxState::Running);
    assert_eq!(sb.paused_at, None);
    assert_eq!(sb.deadline_at, Some(deadline + 1_000_000));
    assert_eq!(sb.last_activity_at, T0 + 1_001_000);
}

#[tokio::test]
async fn a_paused_sandbox_terminates_with_its_reason() {
    let (store, _clock) = memory_store().await;
    let ws = workspace(&store, "w").await;
    let new = new_sandbox(&ws.id, None);
    store.insert_sandbox(&new).await.unwrap();
    store.mark_running(&new.id).await.unwrap();
    store.pause_sandbox(&new.id).await.unwrap();
    let t = Termination::new(TerminationReason::Terminated).with_detail("by token x");
    assert!(store.begin_termination(&new.id, &t).await.unwrap());
    assert!(store.finish_sandbox(&new.id, &t).await.unwrap());
    let sb = store.get_sandbox(&ws.id, &new.id).await.unwrap().unwrap();
    assert_eq!(sb.state, SandboxState::Terminated);
    assert_eq!(sb.reason, Some(TerminationReason::Terminated));
    assert_eq!(sb.reason_detail.as_deref(), Some("by token x"));
    assert_eq!(store.resume_sandbox(&new.id).await.unwrap(), None);
}

#[tokio::test]
async fn only_a_creating_sandbox_is_discarded() {
    let (store, _clock) = memory_store().await;
    let ws = workspace(&store, "w").await;
    let mut new = new_sandbox(&ws.id, Some("gone"));
    new.tags = tags(&[("k", "v")]);
    store.insert_sandbox(&new).await.unwrap();
    store
        .assign_relay_ports(&new.id, &[80], (20000, 20010))
        .await
        .unwrap();
    assert!(store.discard_sandbox(&new.id).await.unwrap());
    assert!(store.get_sandbox(&ws.id, &new.id).await.unwrap().is_none());
    assert!(store.live_relay_ports().await.unwrap().is_empty());
    // The name is free again.
    let again = new_sandbox(&ws.id, Some("gone"));
    store.insert_sandbox(&again).await.unwrap();
    store.mark_running(&again.id).await.unwrap();
    assert!(!store.discard_sandbox(&again.id).await.unwrap());
}

fn msnap(ws: &str, id: &str, expires_at: Option<i64>) -> MemorySnapshotRecord {
    let mut spec = new_sandbox(ws, None).spec;
    spec.memory_snapshots = true;
    MemorySnapshotRecord {
        id: id.into(),
        workspace_id: ws.into(),
        sandbox_id: "sb-source".into(),
        image: "host".into(),
        image_id: "sha256:abc".into(),
        spec,
        bytes: 1234,
        created_at: 0,
        expires_at,
        node_id: crate::LOCAL_NODE_ID.into(),
    }
}

#[tokio::test]
async fn memory_snapshot_records_round_trip() {
    let (store, clock) = memory_store().await;
    let ws = workspace(&store, "w").await;
    let other = workspace(&store, "other").await;
    let a = store
        .insert_memory_snapshot(&msnap(&ws.id, "msnap-a", None))
        .await
        .unwrap();
    assert_eq!(a.created_at, T0);
    clock.advance(5);
    store
        .insert_memory_snapshot(&msnap(&ws.id, "msnap-b", Some(T0 + 100)))
        .await
        .unwrap();
    store
        .insert_memory_snapshot(&msnap(&other.id, "msnap-c", None))
        .await
        .unwrap();
    let got = store
        .get_memory_snapshot(&ws.id, "msnap-a")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, a);
    assert!(got.spec.memory_snapshots);
    // Another workspace's snapshot does not exist for this one.
    assert!(store
        .get_memory_snapshot(&ws.id, "msnap-c")
        .await
        .unwrap()
        .is_none());
    let ids: Vec<String> = store
        .list_memory_snapshots(&ws.id)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, ["msnap-b", "msnap-a"]);
    assert_eq!(store.all_memory_snapshots().await.unwrap().len(), 3);
    assert!(store
        .expired_memory_snapshots(T0 + 99)
        .await
        .unwrap()
        .is_empty());
    let expired = store.expired_memory_snapshots(T0 + 100).await.unwrap();
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].id, "msnap-b");
    assert_eq!(
        store.memory_snapshot_image_ids().await.unwrap(),
        ["sha256:abc"]
    );
    assert!(!store
        .delete_memory_snapshot(Some(&ws.id), "msnap-c")
        .await
        .unwrap());
    assert!(store
        .delete_memory_snapshot(Some(&ws.id), "msnap-a")
        .await
        .unwrap());
    assert!(store.delete_memory_snapshot(None, "msnap-c").await.unwrap());
    assert_eq!(store.all_memory_snapshots().await.unwrap().len(), 1);
    // Bad ids are refused before any SQL.
    assert!(store
        .insert_memory_snapshot(&msnap(&ws.id, "BAD ID", None))
        .await
        .is_err());
}

/// A database made before memory snapshots (migrations 1-4) with a
/// sandbox, its tags, a relay port and a connect token is upgraded: the
/// rebuild of `sandboxes` keeps every child row.
#[tokio::test]
async fn the_upgrade_keeps_existing_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .foreign_keys(true);
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .unwrap();
        let mut old = sqlx::migrate::Migrator::new(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations"),
        )
        .await
        .unwrap();
        old.migrations = old
            .migrations
            .iter()
            .filter(|m| m.version <= 4)
            .cloned()
            .collect::<Vec<_>>()
            .into();
        old.run(&pool).await.unwrap();
        for q in [
            "INSERT INTO workspaces (id, name, created_at) VALUES ('ws-1', 'w', 1)",
            "INSERT INTO sandboxes (id, workspace_id, name, image, spec, tags, state, \
             timeout_secs, created_at, started_at, deadline_at, last_activity_at, node_id, image_id) \
             VALUES ('sb-1', 'ws-1', 'keep', 'host', '{}', '{\"k\":\"v\"}', 'running', 60, 1, 2, 60002, 2, 'local', 'sha256:x')",
            "INSERT INTO sandbox_tags (sandbox_id, workspace_id, created_at, key, value) \
             VALUES ('sb-1', 'ws-1', 1, 'k', 'v')",
            "INSERT INTO relay_ports (relay_port, sandbox_id, port) VALUES (20001, 'sb-1', 22)",
            "INSERT INTO connect_tokens (id, sandbox_id, workspace_id, port, created_at, expires_at) \
             VALUES ('ct-1', 'sb-1', 'ws-1', 80, 1, 99)",
        ] {
            sqlx::query(q).execute(&pool).await.unwrap();
        }
        pool.close().await;
    }
    let store = Store::open_sqlite(&path).await.unwrap();
    let sb = store.get_sandbox("ws-1", "sb-1").await.unwrap().unwrap();
    assert_eq!(sb.state, SandboxState::Running);
    assert_eq!(sb.deadline_at, Some(60002));
    assert_eq!(sb.image_id.as_deref(), Some("sha256:x"));
    assert_eq!(sb.paused_at, None);
    let mut filter = crate::ListFilter::workspace("ws-1");
    filter.tags = tags(&[("k", "v")]);
    assert_eq!(store.list_sandboxes(&filter).await.unwrap().items.len(), 1);
    assert_eq!(store.live_relay_ports().await.unwrap().len(), 1);
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM connect_tokens")
        .fetch_one(&store.pool)
        .await
        .unwrap();
    assert_eq!(n, 1);
    let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
        .fetch_one(&store.pool)
        .await
        .unwrap();
    assert_eq!(fk, 1, "foreign keys are on again");
    let violations: Vec<(String,)> = sqlx::query_as("PRAGMA foreign_key_check")
        .fetch_all(&store.pool)
        .await
        .unwrap_or_default();
    assert!(violations.is_empty());
    // The new state is accepted by the rebuilt table.
    assert!(store.pause_sandbox("sb-1").await.unwrap());
    store.close().await;
}
