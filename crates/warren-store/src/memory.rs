//! Memory snapshot records: what the API lists for each checkpoint taken
//! through `snapshot-memory`, with the image it stands on and the source
//! sandbox's spec (which restored sandboxes inherit). The checkpoint's
//! files live on the node; the pause/resume transitions of sandboxes are
//! in `sandbox.rs`.

use crate::error::{Result, StoreError};
use crate::ids::validate_id;
use crate::network::db;
use crate::store::Store;
use crate::types::{MemorySnapshotRecord, SandboxSpec};

#[derive(sqlx::FromRow)]
struct Row {
    id: String,
    workspace_id: String,
    sandbox_id: String,
    image: String,
    image_id: String,
    spec: String,
    bytes: i64,
    created_at: i64,
    expires_at: Option<i64>,
    node_id: String,
}

/// A query on `memory_snapshots` returning [`Row`]s, as one `'static`
/// literal.
macro_rules! select {
    ($tail:literal) => {
        concat!(
            "SELECT id, workspace_id, sandbox_id, image, image_id, spec, bytes, ",
            "created_at, expires_at, node_id FROM memory_snapshots ",
            $tail
        )
    };
}

impl TryFrom<Row> for MemorySnapshotRecord {
    type Error = StoreError;

    fn try_from(r: Row) -> Result<Self> {
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
            bytes: u64::try_from(r.bytes).unwrap_or(0),
            created_at: r.created_at,
            expires_at: r.expires_at,
            node_id: r.node_id,
        })
    }
}

fn decode(rows: Vec<Row>) -> Result<Vec<MemorySnapshotRecord>> {
    rows.into_iter()
        .map(MemorySnapshotRecord::try_from)
        .collect()
}

impl Store {
    /// Records a memory snapshot. `created_at` is taken from the store's
    /// clock; the returned record has it.
    pub async fn insert_memory_snapshot(
        &self,
        rec: &MemorySnapshotRecord,
    ) -> Result<MemorySnapshotRecord> {
        validate_id("memory snapshot id", &rec.id)?;
        validate_id("workspace id", &rec.workspace_id)?;
        let mut rec = rec.clone();
        rec.created_at = self.now();
        let spec = serde_json::to_string(&rec.spec).expect("a spec always serializes");
        sqlx::query(
            "INSERT INTO memory_snapshots (id, workspace_id, sandbox_id, image, image_id, spec, \
             bytes, created_at, expires_at, node_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&rec.id)
        .bind(&rec.workspace_id)
        .bind(&rec.sandbox_id)
        .bind(&rec.image)
        .bind(&rec.image_id)
        .bind(spec)
        .bind(i64::try_from(rec.bytes).unwrap_or(i64::MAX))
        .bind(rec.created_at)
        .bind(rec.expires_at)
        .bind(&rec.node_id)
        .execute(&self.pool)
        .await
        .map_err(db("insert memory snapshot", &rec.id))?;
        Ok(rec)
    }

    /// The memory snapshot with this id in this workspace (`None` for
    /// another workspace's, exactly like a missing one).
    pub async fn get_memory_snapshot(
        &self,
        workspace_id: &str,
        id: &str,
    ) -> Result<Option<MemorySnapshotRecord>> {
        let row: Option<Row> = sqlx::query_as(select!("WHERE id = $1 AND workspace_id = $2"))
            .bind(id)
            .bind(workspace_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("get memory snapshot", id))?;
        row.map(MemorySnapshotRecord::try_from).transpose()
    }

    /// A workspace's memory snapshots, newest first.
    pub async fn list_memory_snapshots(
        &self,
        workspace_id: &str,
    ) -> Result<Vec<MemorySnapshotRecord>> {
        let rows: Vec<Row> = sqlx::query_as(select!(
            "WHERE workspace_id = $1 ORDER BY created_at DESC, id DESC"
        ))
        .bind(workspace_id)
        .fetch_all(&self.pool)
        .await
        .map_err(db("list memory snapshots", workspace_id))?;
        decode(rows)
    }

    /// Every memory snapshot of every workspace (a restarted server holds
    /// their images again).
    pub async fn all_memory_snapshots(&self) -> Result<Vec<MemorySnapshotRecord>> {
        let rows: Vec<Row> = sqlx::query_as(select!("ORDER BY created_at, id"))
            .fetch_all(&self.pool)
            .await
            .map_err(db("list memory snapshots", "*"))?;
        decode(rows)
    }

    /// Memory snapshots whose TTL passed at `now_ms`.
    pub async fn expired_memory_snapshots(&self, now_ms: i64) -> Result<Vec<MemorySnapshotRecord>> {
        let rows: Vec<Row> =
            sqlx::query_as(select!("WHERE expires_at IS NOT NULL AND expires_at <= $1"))
                .bind(now_ms)
                .fetch_all(&self.pool)
                .await
                .map_err(db("expired memory snapshots", "*"))?;
        decode(rows)
    }

    /// Removes a memory snapshot's record; returns whether one was removed.
    /// `workspace_id` scopes it (API calls); `None` for the expiry sweep.
    pub async fn delete_memory_snapshot(
        &self,
        workspace_id: Option<&str>,
        id: &str,
    ) -> Result<bool> {
        let result = sqlx::query(
            "DELETE FROM memory_snapshots WHERE id = $1 AND ($2 IS NULL OR workspace_id = $2)",
        )
        .bind(id)
        .bind(workspace_id)
        .execute(&self.pool)
        .await
        .map_err(db("delete memory snapshot", id))?;
        Ok(result.rows_affected() == 1)
    }

    /// Image ids that memory snapshots stand on (kept by image GC).
    pub async fn memory_snapshot_image_ids(&self) -> Result<Vec<String>> {
        sqlx::query_scalar("SELECT DISTINCT image_id FROM memory_snapshots")
            .fetch_all(&self.pool)
            .await
            .map_err(db("memory snapshot images", "*"))
    }
}
