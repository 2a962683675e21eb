//! File databases: creation, pragmas, and data surviving a reopen.

use std::os::unix::fs::PermissionsExt;

use super::{new_sandbox, tags};
use crate::{ListFilter, Store};

#[tokio::test]
async fn a_file_database_persists_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");

    let store = Store::open_sqlite(&path).await.unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&store.pool)
        .await
        .unwrap();
    assert_eq!(journal, "wal");
    let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
        .fetch_one(&store.pool)
        .await
        .unwrap();
    assert_eq!(synchronous, 1, "NORMAL");

    let admin = store.bootstrap_admin().await.unwrap().unwrap();
    let ws = admin.info.workspace_id.clone();
    let mut new = new_sandbox(&ws, Some("keep"));
    new.tags = tags(&[("k", "v")]);
    store.insert_sandbox(&new).await.unwrap();
    store.mark_running(&new.id).await.unwrap();
    // SQLite gives the WAL the main file's mode.
    let wal = dir.path().join("state.db-wal");
    let wal_mode = std::fs::metadata(&wal).unwrap().permissions().mode() & 0o777;
    assert_eq!(wal_mode, 0o600);
    store.close().await;
    drop(store);

    let store = Store::open_sqlite(&path).await.unwrap();
    assert!(store.bootstrap_admin().await.unwrap().is_none());
    let principal = store.authenticate(&admin.plaintext).await.unwrap().unwrap();
    assert_eq!(principal.workspace_id, ws);
    let sb = store
        .get_sandbox_by_name(&ws, "keep")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sb.id, new.id);
    assert_eq!(sb.state, crate::SandboxState::Running);
    let mut filter = ListFilter::workspace(&ws);
    filter.tags = tags(&[("k", "v")]);
    assert_eq!(store.list_sandboxes(&filter).await.unwrap().items.len(), 1);
    assert_eq!(store.list_unfinished().await.unwrap().len(), 1);
    store.close().await;
}

#[tokio::test]
async fn opening_in_a_missing_directory_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let err = Store::open_sqlite(dir.path().join("nope/state.db"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "storage_error");
    assert!(matches!(err, crate::StoreError::CreateDatabaseFile { .. }));
}
