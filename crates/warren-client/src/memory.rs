//! Memory snapshot calls: checkpoints of running sandboxes
//! (`snapshot-memory`, listed under `/v1/memory-snapshots`), fork, pause
//! and resume. A sandbox restores from a memory snapshot through
//! [`Client::create_sandbox`] with `from_memory_snapshot`.
//!
//! The codes particular to these endpoints: `sandbox_not_checkpointable`
//! and `sandbox_paused` (409), `memory_snapshot_not_found` (404),
//! `snapshot_corrupt` (422), `snapshot_unavailable` (501),
//! `snapshot_failed` (500).

use std::time::Duration;

use reqwest::Method;
use warren_proto::api::{
    ForkRequest, ForkResult, MemorySnapshot, MemorySnapshotList, Sandbox, SnapshotMemoryRequest,
};

use crate::{Client, ClientError};

/// Checkpoints and restores take CRIU's time per copy; a fork of 32 more.
const MEMORY_TIMEOUT: Duration = Duration::from_secs(600);

impl Client {
    /// `POST /v1/sandboxes/{id}/snapshot-memory`: checkpoints the whole
    /// sandbox (processes, memory, files); it keeps running.
    pub async fn snapshot_memory(
        &self,
        id: &str,
        req: &SnapshotMemoryRequest,
    ) -> Result<MemorySnapshot, ClientError> {
        let rb = self
            .request(Method::POST, &["v1", "sandboxes", id, "snapshot-memory"])?
            .json(req)
            .timeout(MEMORY_TIMEOUT);
        self.send(rb).await
    }

    /// `GET /v1/memory-snapshots`, newest first.
    pub async fn list_memory_snapshots(&self) -> Result<Vec<MemorySnapshot>, ClientError> {
        let rb = self.request(Method::GET, &["v1", "memory-snapshots"])?;
        let list: MemorySnapshotList = self.send(rb).await?;
        Ok(list.memory_snapshots)
    }

    /// `GET /v1/memory-snapshots/{id}`.
    pub async fn get_memory_snapshot(&self, id: &str) -> Result<MemorySnapshot, ClientError> {
        let rb = self.request(Method::GET, &["v1", "memory-snapshots", id])?;
        self.send(rb).await
    }

    /// `DELETE /v1/memory-snapshots/{id}`.
    pub async fn delete_memory_snapshot(&self, id: &str) -> Result<(), ClientError> {
        let rb = self.request(Method::DELETE, &["v1", "memory-snapshots", id])?;
        self.send_bytes(rb).await.map(|_| ())
    }

    /// `POST /v1/sandboxes/{id}/fork`: `count` running copies (all or
    /// nothing).
    pub async fn fork_sandbox(&self, id: &str, count: u32) -> Result<Vec<Sandbox>, ClientError> {
        let rb = self
            .request(Method::POST, &["v1", "sandboxes", id, "fork"])?
            .json(&ForkRequest { count })
            .timeout(MEMORY_TIMEOUT);
        let out: ForkResult = self.send(rb).await?;
        Ok(out.sandboxes)
    }

    /// `POST /v1/sandboxes/{id}/pause`.
    pub async fn pause_sandbox(&self, id: &str) -> Result<Sandbox, ClientError> {
        let rb = self
            .request(Method::POST, &["v1", "sandboxes", id, "pause"])?
            .timeout(MEMORY_TIMEOUT);
        self.send(rb).await
    }

    /// `POST /v1/sandboxes/{id}/resume`.
    pub async fn resume_sandbox(&self, id: &str) -> Result<Sandbox, ClientError> {
        let rb = self
            .request(Method::POST, &["v1", "sandboxes", id, "resume"])?
            .timeout(MEMORY_TIMEOUT);
        self.send(rb).await
    }
}
