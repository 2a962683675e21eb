//! Workspaces, API tokens, and authentication.
//!
//! # Why the token lookup needs no constant-time comparison
//!
//! A presented token is hashed with SHA-256 and looked up by that hash in a
//! unique index; the secret itself is never compared. Whatever timing an
//! index lookup leaks is about the *hash* of the attacker's own guess,
//! relative to stored hashes. Learning that a guess's hash shares a prefix
//! with a stored hash does not help construct a secret with that hash
//! (preimage resistance), and secrets carry 240 random bits, so guessing
//! stays hopeless. A constant-time compare protects a comparison of the
//! secret itself, which never happens here.

use sqlx::Row;

use crate::error::{is_foreign_key_violation, is_unique_violation, Result, StoreError};
use crate::ids::{
    hash_token, looks_like_token, new_token_id, new_token_secret, new_workspace_id, validate_name,
};
use crate::store::Store;
use crate::types::{NewToken, Principal, TokenInfo, Workspace};

/// Name of the workspace created on first start.
pub const DEFAULT_WORKSPACE_NAME: &str = "default";

/// Name of the admin token created on first start.
pub const BOOTSTRAP_TOKEN_NAME: &str = "bootstrap-admin";

/// `last_used_at` is refreshed at most this often per token, so that
/// authenticating is not a write on every request.
pub const LAST_USED_GRANULARITY_MS: i64 = 60_000;

#[derive(sqlx::FromRow)]
struct WorkspaceRow {
    id: String,
    name: String,
    created_at: i64,
}

impl From<WorkspaceRow> for Workspace {
    fn from(r: WorkspaceRow) -> Self {
        Workspace {
            id: r.id,
            name: r.name,
            created_at: r.created_at,
        }
    }
}

#[derive(sqlx::FromRow)]
struct TokenRow {
    id: String,
    workspace_id: String,
    name: String,
    is_admin: bool,
    created_at: i64,
    last_used_at: Option<i64>,
    revoked_at: Option<i64>,
}

impl From<TokenRow> for TokenInfo {
    fn from(r: TokenRow) -> Self {
        TokenInfo {
            id: r.id,
            workspace_id: r.workspace_id,
            name: r.name,
            is_admin: r.is_admin,
            created_at: r.created_at,
            last_used_at: r.last_used_at,
            revoked_at: r.revoked_at,
        }
    }
}

impl Store {
    /// On first start, creates the [`DEFAULT_WORKSPACE_NAME`] workspace and
    /// an admin token in it, and returns the token (its plaintext is not
    /// recoverable later). Returns `None` when any workspace exists.
    ///
    /// Runs in one write transaction, so two concurrent calls create at
    /// most one workspace.
    pub async fn bootstrap_admin(&self) -> Result<Option<NewToken>> {
        let db = |source| StoreError::Bootstrap { source };
        let mut tx = self.begin_write().await.map_err(db)?;
        let existing: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM workspaces")
            .fetch_one(&mut *tx)
            .await
            .map_err(db)?;
        if existing > 0 {
            return Ok(None);
        }
        let now = self.now();
        let workspace = Workspace {
            id: new_workspace_id(),
            name: DEFAULT_WORKSPACE_NAME.to_owned(),
            created_at: now,
        };
        sqlx::query("INSERT INTO workspaces (id, name, created_at) VALUES ($1, $2, $3)")
            .bind(&workspace.id)
            .bind(&workspace.name)
            .bind(workspace.created_at)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        let token = new_token_record(&workspace.id, BOOTSTRAP_TOKEN_NAME, true, now);
        insert_token(&mut tx, &token).await.map_err(db)?;
        tx.commit().await.map_err(db)?;
        tracing::info!(
            workspace_id = %workspace.id,
            token_id = %token.info.id,
            "bootstrapped default workspace and admin token"
        );
        Ok(Some(token))
    }

    /// Creates a workspace. Fails with `name_conflict` when the name is
    /// taken.
    pub async fn create_workspace(&self, name: &str) -> Result<Workspace> {
        validate_name("workspace name", name)?;
        let workspace = Workspace {
            id: new_workspace_id(),
            name: name.to_owned(),
            created_at: self.now(),
        };
        sqlx::query("INSERT INTO workspaces (id, name, created_at) VALUES ($1, $2, $3)")
            .bind(&workspace.id)
            .bind(&workspace.name)
            .bind(workspace.created_at)
            .execute(&self.pool)
            .await
            .map_err(|source| {
                if is_unique_violation(&source) {
                    StoreError::WorkspaceNameTaken {
                        name: name.to_owned(),
                    }
                } else {
                    StoreError::CreateWorkspace {
                        name: name.to_owned(),
                        source,
                    }
                }
            })?;
        tracing::info!(workspace_id = %workspace.id, "created workspace");
        Ok(workspace)
    }

    /// Every workspace, oldest first.
    pub async fn list_workspaces(&self) -> Result<Vec<Workspace>> {
        let rows: Vec<WorkspaceRow> =
            sqlx::query_as("SELECT id, name, created_at FROM workspaces ORDER BY created_at, id")
                .fetch_all(&self.pool)
                .await
                .map_err(|source| StoreError::ReadWorkspaces { source })?;
        Ok(rows.into_iter().map(Workspace::from).collect())
    }

    /// The workspace with this id, if any.
    pub async fn get_workspace(&self, id: &str) -> Result<Option<Workspace>> {
        let row: Option<WorkspaceRow> =
            sqlx::query_as("SELECT id, name, created_at FROM workspaces WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await
                .map_err(|source| StoreError::ReadWorkspaces { source })?;
        Ok(row.map(Workspace::from))
    }

    /// The workspace with this name, if any.
    pub async fn get_workspace_by_name(&self, name: &str) -> Result<Option<Workspace>> {
        let row: Option<WorkspaceRow> =
            sqlx::query_as("SELECT id, name, created_at FROM workspaces WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await
                .map_err(|source| StoreError::ReadWorkspaces { source })?;
        Ok(row.map(Workspace::from))
    }

    /// Creates a token in a workspace and returns it with its plaintext,
    /// which is not stored. Fails with `not_found` for an unknown
    /// workspace.
    pub async fn create_token(
        &self,
        workspace_id: &str,
        name: &str,
        is_admin: bool,
    ) -> Result<NewToken> {
        validate_name("token name", name)?;
        let token = new_token_record(workspace_id, name, is_admin, self.now());
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|source| StoreError::CreateToken {
                workspace_id: workspace_id.to_owned(),
                source,
            })?;
        insert_token(&mut conn, &token).await.map_err(|source| {
            if is_foreign_key_violation(&source) {
                StoreError::WorkspaceNotFound {
                    id: workspace_id.to_owned(),
                }
            } else {
                StoreError::CreateToken {
                    workspace_id: workspace_id.to_owned(),
                    source,
                }
            }
        })?;
        tracing::info!(
            workspace_id,
            token_id = %token.info.id,
            is_admin,
            "created token"
        );
        Ok(token)
    }

    /// The workspace's tokens, revoked ones included, oldest first.
    pub async fn list_tokens(&self, workspace_id: &str) -> Result<Vec<TokenInfo>> {
        let rows: Vec<TokenRow> = sqlx::query_as(
            "SELECT id, workspace_id, name, is_admin, created_at, last_used_at, revoked_at \
             FROM tokens WHERE workspace_id = $1 ORDER BY created_at, id",
        )
        .bind(workspace_id)
        .fetch_all(&self.pool)
        .await
        .map_err(|source| StoreError::ListTokens {
            workspace_id: workspace_id.to_owned(),
            source,
        })?;
        Ok(rows.into_iter().map(TokenInfo::from).collect())
    }

    /// Revokes a token of the workspace. Returns `true` if this call
    /// revoked it and `false` if it already was revoked; a token id of
    /// another workspace is `not_found`.
    pub async fn revoke_token(&self, workspace_id: &str, token_id: &str) -> Result<bool> {
        let db = |source| StoreError::RevokeToken {
            token_id: token_id.to_owned(),
            source,
        };
        let result = sqlx::query(
            "UPDATE tokens SET revoked_at = $1 \
             WHERE id = $2 AND workspace_id = $3 AND revoked_at IS NULL",
        )
        .bind(self.now())
        .bind(token_id)
        .bind(workspace_id)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        if result.rows_affected() == 1 {
            tracing::info!(workspace_id, token_id, "revoked token");
            return Ok(true);
        }
        let exists: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM tokens WHERE id = $1 AND workspace_id = $2")
                .bind(token_id)
                .bind(workspace_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(db)?;
        match exists {
            Some(_) => Ok(false),
            None => Err(StoreError::TokenNotFound {
                id: token_id.to_owned(),
            }),
        }
    }

    /// Resolves a presented token secret to its principal. Unknown,
    /// malformed and revoked tokens all yield `None`, indistinguishably.
    ///
    /// Refreshes the token's `last_used_at`, at most once per
    /// [`LAST_USED_GRANULARITY_MS`].
    pub async fn authenticate(&self, plaintext: &str) -> Result<Option<Principal>> {
        if !looks_like_token(plaintext) {
            return Ok(None);
        }
        let db = |source| StoreError::Authenticate { source };
        let hash = hash_token(plaintext);
        let row = sqlx::query(
            "SELECT id, workspace_id, is_admin, last_used_at FROM tokens \
             WHERE token_hash = $1 AND revoked_at IS NULL",
        )
        .bind(&hash)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let principal = Principal {
            token_id: row.try_get("id").map_err(db)?,
            workspace_id: row.try_get("workspace_id").map_err(db)?,
            is_admin: row.try_get("is_admin").map_err(db)?,
        };
        let last_used_at: Option<i64> = row.try_get("last_used_at").map_err(db)?;
        let now = self.now();
        if last_used_at.is_none_or(|t| now - t >= LAST_USED_GRANULARITY_MS) {
            sqlx::query("UPDATE tokens SET last_used_at = $1 WHERE id = $2")
                .bind(now)
                .bind(&principal.token_id)
                .execute(&self.pool)
                .await
                .map_err(db)?;
        }
        Ok(Some(principal))
    }
}

fn new_token_record(workspace_id: &str, name: &str, is_admin: bool, now: i64) -> NewToken {
    NewToken {
        info: TokenInfo {
            id: new_token_id(),
            workspace_id: workspace_id.to_owned(),
            name: name.to_owned(),
            is_admin,
            created_at: now,
            last_used_at: None,
            revoked_at: None,
        },
        plaintext: new_token_secret(),
    }
}

async fn insert_token(
    conn: &mut sqlx::SqliteConnection,
    token: &NewToken,
) -> std::result::Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO tokens (id, workspace_id, name, token_hash, is_admin, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&token.info.id)
    .bind(&token.info.workspace_id)
    .bind(&token.info.name)
    .bind(hash_token(&token.plaintext))
    .bind(token.info.is_admin)
    .bind(token.info.created_at)
    .execute(conn)
    .await?;
    Ok(())
}
