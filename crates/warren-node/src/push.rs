//! Image export and push: the store's images as OCI archives and to
//! registries. Store work (resolving the image, archiving layers that
//! have no stored blob, reading blobs) runs on tokio's blocking pool;
//! uploads run on the event loop.

use std::io::Write;

use warren_image::{ExportSummary, OciImage};
use warren_registry::{PushError, PushEvent, PushOptions, PushSummary};

use crate::{Node, NodeError};

impl Node {
    /// Pushes the image `reference` (a name or id in the node's store) to
    /// `target` (`host[:port]/repository[:tag]`) with the node's registry
    /// settings, overridden by `options`. Blobs the registry already has
    /// are not uploaded. The built-in `host` image is refused
    /// (`image_not_exportable`).
    pub async fn push_image(
        &self,
        reference: &str,
        target: &str,
        options: PushOptions,
        progress: impl Fn(PushEvent) + Send + Sync,
    ) -> Result<PushSummary, PushError> {
        self.puller
            .pusher()
            .push(reference, target, &options, progress)
            .await
    }

    /// The image `reference` as OCI parts, ready to be written with
    /// [`OciImage::write_layout`] (its exact size is
    /// [`OciImage::layout_size`]). Holds the store lease while it lives.
    pub async fn prepare_export(&self, reference: &str) -> Result<OciImage, NodeError> {
        let images = self.images.clone();
        let r = reference.to_owned();
        tokio::task::spawn_blocking(move || images.oci_image(&r))
            .await?
            .map_err(|source| NodeError::Image {
                reference: reference.to_owned(),
                source,
            })
    }

    /// Writes the image `reference` to `writer` as a tar of an OCI image
    /// layout (see `ImageStore::export_oci`), on the blocking pool; gives
    /// the writer back.
    pub async fn export_image<W: Write + Send + 'static>(
        &self,
        reference: &str,
        writer: W,
    ) -> Result<(ExportSummary, W), NodeError> {
        let image = self.prepare_export(reference).await?;
        let r = reference.to_owned();
        tokio::task::spawn_blocking(move || {
            let writer = image.write_layout(writer)?;
            let summary = ExportSummary {
                id: image.id.clone(),
                name: image.name.clone(),
                manifest_digest: image.manifest_descriptor.digest.clone(),
                bytes: image.layout_size(),
            };
            Ok((summary, writer))
        })
        .await?
        .map_err(|source| NodeError::Image {
            reference: r,
            source,
        })
    }
}
