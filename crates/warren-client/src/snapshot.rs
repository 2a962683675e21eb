//! Snapshot calls: filesystem and directory snapshots into images, and
//! image mounts into running sandboxes.
//!
//! The codes particular to these endpoints: `snapshot_failed` (500),
//! `invalid_path` (400), `sandbox_terminated` (409), `image_not_found` (404,
//! for a mount).

use std::time::Duration;

use reqwest::Method;
use warren_proto::api::{
    ImageMount, Sandbox, SnapshotDirectoryRequest, SnapshotFilesystemRequest, SnapshotImage,
};

use crate::{Client, ClientError};

/// A snapshot copies what changed; big changes take seconds.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(600);

impl Client {
    /// `POST /v1/sandboxes/{id}/snapshot-filesystem`: the sandbox's
    /// filesystem as a new image (the running sandbox is frozen briefly and
    /// keeps going unchanged).
    pub async fn snapshot_filesystem(
        &self,
        id: &str,
        req: &SnapshotFilesystemRequest,
    ) -> Result<SnapshotImage, ClientError> {
        let rb = self
            .request(
                Method::POST,
                &["v1", "sandboxes", id, "snapshot-filesystem"],
            )?
            .json(req)
            .timeout(SNAPSHOT_TIMEOUT);
        self.send(rb).await
    }

    /// `POST /v1/sandboxes/{id}/snapshot-directory`: one directory of the
    /// sandbox as a single-layer image (mountable with [`Self::mount_image`]
    /// or `mounts` at create).
    pub async fn snapshot_directory(
        &self,
        id: &str,
        req: &SnapshotDirectoryRequest,
    ) -> Result<SnapshotImage, ClientError> {
        let rb = self
            .request(Method::POST, &["v1", "sandboxes", id, "snapshot-directory"])?
            .json(req)
            .timeout(SNAPSHOT_TIMEOUT);
        self.send(rb).await
    }

    /// `POST /v1/sandboxes/{id}/mounts`: mounts an image read-only at an
    /// absolute path of a running sandbox.
    pub async fn mount_image(&self, id: &str, mount: &ImageMount) -> Result<Sandbox, ClientError> {
        let rb = self
            .request(Method::POST, &["v1", "sandboxes", id, "mounts"])?
            .json(mount);
        self.send(rb).await
    }
}
