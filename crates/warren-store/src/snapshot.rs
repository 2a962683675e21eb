//! Snapshot records: memory snapshots, and the expiry of images that
//! snapshots made with a TTL.

use crate::error::{Result, StoreError};
use crate::ids::validate_id;
use crate::store::Store;
use crate::types::{ImageMountSpec, MemorySnapshotRecord, SandboxSpec};

fn db(operation: &'static str, id: &str) -> impl FnOnce(sqlx::Error) -> StoreError {
    let id = id.to_owned();
    move |source| StoreError::UpdateSandbox {
        id,
        operation,
        source,
    }
}

#[derive(sqlx::FromRow)]
struct SnapshotRow {
    id: String,
    workspace_id: String,
    sandbox_id: String,
    image: String,
    image_id: Option<String>,
    spec: String,
    size_bytes: i64,
    took_ms: i64,
    created_at: i64,
    expires_at: Option<i64>,
    node_id: String,
}

impl TryFrom<SnapshotRow> for MemorySnapshotRecord {
    type Error = StoreError;

    fn try_from(r: SnapshotRow) -> Result<Self> {
        let spec: SandboxSpec =
            serde_json::from_str(&r.spec).map_err(|e| StoreError::DecodeRow {
                table: "memory_snapshots",
                id: r.id.clone(),
                reason: format!("spec: {e}"),
            })?;
        Ok(MemorySnapshotRecord {
            id: r.id,
            workspace_id: r.workspace_id,
            sandbox_id: r.sandbox_id,
            image: r.image,
            image_id: r.image_id,
            spec,
            size_bytes: r.size_bytes,
            took_ms: r.took_ms,
            created_at: r.created_at,
            expires_at: r.expires_at,
            node_id: r.node_id,
        })
    }
}

macro_rules! select_snapshots {
    ($tail:literal) => {
        concat!(
            "SELECT id, workspace_id, sandbox_id, image, image_id, spec, size_bytes, took_ms, ",
            "created_at, expires_at, node_id FROM memory_snapshots ",
            $tail
        )
    };
}

impl Store {
    /// Changes a sandbox's spec JSON in one write transaction; returns the
    /// new spec, or `None` when no such sandbox (in that workspace).
    pub(crate) async fn modify_spec(
        &self,
        sandbox_id: &str,
        workspace_id: Option<&str>,
        operation: &'static str,
        change: impl FnOnce(&mut SandboxSpec),
    ) -> Result<Option<SandboxSpec>> {
        let mut tx = self
            .begin_write()
            .await
            .map_err(db(operation, sandbox_id))?;
        let spec: Option<String> = sqlx::query_scalar(
            "SELECT spec FROM sandboxes WHERE id = $1 AND ($2 IS NULL OR workspace_id = $2)",
        )
        .bind(sandbox_id)
        .bind(workspace_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db(operation, sandbox_id))?;
        let Some(spec) = spec else {
            return Ok(None);
        };
        let mut spec: SandboxSpec =
            serde_json::from_str(&spec).map_err(|e| StoreError::DecodeRow {
                table: "sandboxes",
                id: sandbox_id.to_owned(),
                reason: format!("spec: {e}"),
            })?;
        change(&mut spec);
        let json = serde_json::to_string(&spec).expect("a spec always serializes");
        sqlx::query("UPDATE sandboxes SET spec = $1 WHERE id = $2")
            .bind(json)
            .bind(sandbox_id)
            .execute(&mut *tx)
            .await
            .map_err(db(operation, sandbox_id))?;
        tx.commit().await.map_err(db(operation, sandbox_id))?;
        Ok(Some(spec))
    }

    /// Records an image mounted into a running sandbox.
    pub async fn add_mount(&self, sandbox_id: &str, mount: &ImageMountSpec) -> Result<()> {
        self.modify_spec(sandbox_id, None, "add mount", |spec| {
            spec.mounts.retain(|m| m.path != mount.path);
            spec.mounts.push(mount.clone());
        })
        .await?;
        Ok(())
    }

    /// Records a memory snapshot. `created_at` is taken from the record.
    pub async fn insert_memory_snapshot(&self, s: &MemorySnapshotRecord) -> Result<()> {
        validate_id("snapshot id", &s.id)?;
        validate_id("workspace id", &s.workspace_id)?;
        let spec = serde_json::to_string(&s.spec).expect("a plain struct always serializes");
        sqlx::query(
            "INSERT INTO memory_snapshots (id, workspace_id, sandbox_id, image, image_id, spec, \
             size_bytes, took_ms, created_at, expires_at, node_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(&s.id)
        .bind(&s.workspace_id)
        .bind(&s.sandbox_id)
        .bind(&s.image)
        .bind(&s.image_id)
        .bind(spec)
        .bind(s.size_bytes)
        .bind(s.took_ms)
        .bind(s.created_at)
        .bind(s.expires_at)
        .bind(&s.node_id)
        .execute(&self.pool)
        .await
        .map_err(db("insert memory snapshot", &s.id))?;
        Ok(())
    }

    /// The workspace's memory snapshot with this id; another workspace's
    /// yields `None`, like a missing one.
    pub async fn get_memory_snapshot(
        &self,
        workspace_id: &str,
        id: &str,
    ) -> Result<Option<MemorySnapshotRecord>> {
        let row: Option<SnapshotRow> =
            sqlx::query_as(select_snapshots!("WHERE id = $1 AND workspace_id = $2"))
                .bind(id)
                .bind(workspace_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(db("get memory snapshot", id))?;
        row.map(MemorySnapshotRecord::try_from).transpose()
    }

    /// The workspace's memory snapshots, newest first (at most `limit`).
    pub async fn list_memory_snapshots(
        &self,
        workspace_id: &str,
        limit: u32,
    ) -> Result<Vec<MemorySnapshotRecord>> {
        let rows: Vec<SnapshotRow> = sqlx::query_as(select_snapshots!(
            "WHERE workspace_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2"
        ))
        .bind(workspace_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db("list memory snapshots", workspace_id))?;
        rows.into_iter()
            .map(MemorySnapshotRecord::try_from)
            .collect()
    }

    /// Memory snapshots (any workspace) whose TTL passed at `now_ms`.
    pub async fn expired_memory_snapshots(&self, now_ms: i64) -> Result<Vec<MemorySnapshotRecord>> {
        let rows: Vec<SnapshotRow> = sqlx::query_as(select_snapshots!(
            "WHERE expires_at IS NOT NULL AND expires_at <= $1"
        ))
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await
        .map_err(db("expired memory snapshots", "*"))?;
        rows.into_iter()
            .map(MemorySnapshotRecord::try_from)
            .collect()
    }

    /// Deletes a memory snapshot's record; returns whether it existed.
    pub async fn delete_memory_snapshot(&self, id: &str) -> Result<bool> {
        let r = sqlx::query("DELETE FROM memory_snapshots WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db("delete memory snapshot", id))?;
        Ok(r.rows_affected() == 1)
    }

    /// Every memory snapshot id (all workspaces): what the node's snapshot
    /// directory may hold.
    pub async fn memory_snapshot_ids(&self) -> Result<Vec<String>> {
        sqlx::query_scalar("SELECT id FROM memory_snapshots")
            .fetch_all(&self.pool)
            .await
            .map_err(db("list memory snapshot ids", "*"))
    }

    /// Sets (or moves) the time after which an image made by a snapshot is
    /// removed.
    pub async fn set_image_expiry(&self, image_id: &str, expires_at: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO image_expiry (image_id, expires_at) VALUES ($1, $2) \
             ON CONFLICT (image_id) DO UPDATE SET expires_at = excluded.expires_at",
        )
        .bind(image_id)
        .bind(expires_at)
        .execute(&self.pool)
        .await
        .map_err(db("set image expiry", image_id))?;
        Ok(())
    }

    /// When the image expires, if it has a TTL.
    pub async fn image_expiry(&self, image_id: &str) -> Result<Option<i64>> {
        sqlx::query_scalar("SELECT expires_at FROM image_expiry WHERE image_id = $1")
            .bind(image_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("get image expiry", image_id))
    }

    /// Image ids whose TTL passed at `now_ms`.
    pub async fn expired_images(&self, now_ms: i64) -> Result<Vec<String>> {
        sqlx::query_scalar("SELECT image_id FROM image_expiry WHERE expires_at <= $1")
            .bind(now_ms)
            .fetch_all(&self.pool)
            .await
            .map_err(db("expired images", "*"))
    }

    /// Forgets an image's expiry (it was removed).
    pub async fn clear_image_expiry(&self, image_id: &str) -> Result<()> {
        sqlx::query("DELETE FROM image_expiry WHERE image_id = $1")
            .bind(image_id)
            .execute(&self.pool)
            .await
            .map_err(db("clear image expiry", image_id))?;
        Ok(())
    }
}
