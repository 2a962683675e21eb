//! Workspaces, tokens, bootstrap and authentication.

use super::{memory_store, workspace};
use crate::{LAST_USED_GRANULARITY_MS, TOKEN_PREFIX, TOKEN_RANDOM_LEN};

#[tokio::test]
async fn migrations_create_the_schema() {
    let (store, _) = memory_store().await;
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .fetch_all(&store.pool)
            .await
            .unwrap();
    for t in ["sandbox_tags", "sandboxes", "tokens", "workspaces"] {
        assert!(tables.iter().any(|x| x == t), "missing {t} in {tables:?}");
    }
    let foreign_keys: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
        .fetch_one(&store.pool)
        .await
        .unwrap();
    assert_eq!(foreign_keys, 1);
}

#[tokio::test]
async fn bootstrap_creates_once_then_returns_none() {
    let (store, _) = memory_store().await;
    let token = store.bootstrap_admin().await.unwrap().expect("first start");
    assert!(token.info.is_admin);
    assert!(token.plaintext.starts_with(TOKEN_PREFIX));
    assert_eq!(token.plaintext.len(), TOKEN_PREFIX.len() + TOKEN_RANDOM_LEN);
    assert!(!format!("{token:?}").contains(&token.plaintext));

    let workspaces = store.list_workspaces().await.unwrap();
    assert_eq!(workspaces.len(), 1);
    assert_eq!(workspaces[0].name, crate::DEFAULT_WORKSPACE_NAME);
    assert_eq!(workspaces[0].id, token.info.workspace_id);

    assert!(store.bootstrap_admin().await.unwrap().is_none());
    assert_eq!(store.list_workspaces().await.unwrap().len(), 1);

    let principal = store.authenticate(&token.plaintext).await.unwrap().unwrap();
    assert!(principal.is_admin);
    assert_eq!(principal.token_id, token.info.id);
}

#[tokio::test]
async fn bootstrap_is_skipped_when_a_workspace_exists() {
    let (store, _) = memory_store().await;
    workspace(&store, "team").await;
    assert!(store.bootstrap_admin().await.unwrap().is_none());
}

#[tokio::test]
async fn the_plaintext_is_never_stored() {
    let (store, _) = memory_store().await;
    let token = store.bootstrap_admin().await.unwrap().unwrap();
    let stored: Vec<String> = sqlx::query_scalar("SELECT token_hash FROM tokens")
        .fetch_all(&store.pool)
        .await
        .unwrap();
    assert_eq!(stored, vec![crate::ids::hash_token(&token.plaintext)]);
    assert!(!stored[0].contains(&token.plaintext[TOKEN_PREFIX.len()..]));
}

#[tokio::test]
async fn authenticate_accepts_valid_and_rejects_revoked_and_unknown() {
    let (store, clock) = memory_store().await;
    let ws = workspace(&store, "team").await;
    let token = store.create_token(&ws.id, "ci", false).await.unwrap();

    let principal = store.authenticate(&token.plaintext).await.unwrap().unwrap();
    assert_eq!(principal.workspace_id, ws.id);
    assert_eq!(principal.token_id, token.info.id);
    assert!(!principal.is_admin);

    // Unknown but well-formed, malformed, and empty tokens.
    let unknown = crate::ids::new_token_secret();
    assert!(store.authenticate(&unknown).await.unwrap().is_none());
    assert!(store.authenticate("wrn_nope").await.unwrap().is_none());
    assert!(store.authenticate("").await.unwrap().is_none());

    clock.advance(1000);
    assert!(store.revoke_token(&ws.id, &token.info.id).await.unwrap());
    assert!(!store.revoke_token(&ws.id, &token.info.id).await.unwrap());
    assert!(store
        .authenticate(&token.plaintext)
        .await
        .unwrap()
        .is_none());

    let listed = store.list_tokens(&ws.id).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].revoked_at, Some(super::T0 + 1000));
}

#[tokio::test]
async fn authenticate_refreshes_last_used_at_coarsely() {
    let (store, clock) = memory_store().await;
    let ws = workspace(&store, "team").await;
    let token = store.create_token(&ws.id, "ci", false).await.unwrap();
    let last_used = || async { store.list_tokens(&ws.id).await.unwrap()[0].last_used_at };
    assert_eq!(last_used().await, None);

    store.authenticate(&token.plaintext).await.unwrap().unwrap();
    assert_eq!(last_used().await, Some(super::T0));

    clock.advance(LAST_USED_GRANULARITY_MS - 1);
    store.authenticate(&token.plaintext).await.unwrap().unwrap();
    assert_eq!(last_used().await, Some(super::T0));

    clock.advance(1);
    store.authenticate(&token.plaintext).await.unwrap().unwrap();
    assert_eq!(
        last_used().await,
        Some(super::T0 + LAST_USED_GRANULARITY_MS)
    );
}

#[tokio::test]
async fn tokens_are_scoped_to_their_workspace() {
    let (store, _) = memory_store().await;
    let a = workspace(&store, "a").await;
    let b = workspace(&store, "b").await;
    let token = store.create_token(&a.id, "t", false).await.unwrap();

    assert!(store.list_tokens(&b.id).await.unwrap().is_empty());
    let err = store.revoke_token(&b.id, &token.info.id).await.unwrap_err();
    assert_eq!(err.code(), "not_found");
    assert!(store
        .authenticate(&token.plaintext)
        .await
        .unwrap()
        .is_some());

    let err = store
        .create_token("ws-doesnotexist", "t", false)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "not_found", "{err}");
}

#[tokio::test]
async fn workspace_names_are_unique() {
    let (store, _) = memory_store().await;
    let ws = workspace(&store, "team").await;
    let err = store.create_workspace("team").await.unwrap_err();
    assert_eq!(err.code(), "name_conflict");
    assert_eq!(store.get_workspace(&ws.id).await.unwrap(), Some(ws.clone()));
    assert_eq!(store.get_workspace_by_name("team").await.unwrap(), Some(ws));
    assert_eq!(store.get_workspace("ws-missing").await.unwrap(), None);
    let err = store.create_workspace("").await.unwrap_err();
    assert_eq!(err.code(), "invalid_argument");
}
