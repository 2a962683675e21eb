//! Snapshot records: image mounts in a sandbox's spec, and the expiry of
//! images that snapshots made with a TTL.

use crate::error::{Result, StoreError};
use crate::network::db;
use crate::store::Store;
use crate::types::{ImageMountSpec, SandboxSpec};

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
