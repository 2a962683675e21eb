//! [`Puller`]: registry pulls into an [`ImageStore`], with verification,
//! coalescing, resumable downloads and progress events.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt as _};
use tokio::sync::oneshot;
use tracing::Instrument as _;
use warren_image::oci::{
    check_layer_count, host_platform, parse_manifest, sha256_hex, verify_bytes, ConfigFile,
    Descriptor, Manifest, ManifestKind, MANIFEST_ACCEPT,
};
use warren_image::{Image, ImageError, ImageStore, Reference, StreamedLayer, Target};

use crate::body::{ChannelBody, Chunk};
use crate::client::{http_client, RepoClient};
use crate::config::{Credentials, RegistryConfig};
use crate::error::PullError;

/// Blobs downloaded at the same time by one pull.
pub const CONCURRENT_DOWNLOADS: usize = 8;

/// Minimum interval between two [`PullEvent::LayerProgress`] events of one
/// layer (the last one, at 100%, is always sent).
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// Progress of a pull, in order: one `resolved`, then per layer any number
/// of `layer_progress` followed by `layer_verified` (or
/// `layer_already_present`), then `layer_unpacked` in layer order, and
/// finally `done`. Serialized as JSON objects tagged by `"event"`. It is the
/// API's own type, so what the server streams is exactly what pulls emit.
pub use warren_proto::api::PullProgress as PullEvent;

/// A layer in [`PullEvent::Resolved`].
pub use warren_proto::api::PullLayer as LayerSummary;

/// Per-pull options.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// Credentials for this pull, overriding the config's for the
    /// reference's registry.
    pub credentials: Option<Credentials>,
}

/// Pulls images from OCI distribution registries into an [`ImageStore`].
///
/// Cheap to clone; clones share the in-flight map, so concurrent pulls of
/// images that share layers (or of the same image) download each blob
/// once. Across processes the same is ensured by a per-blob file lock in
/// the store.
///
/// Why not the `oci-client` crate: it would bring a second HTTP stack
/// (it follows reqwest 0.13, the workspace uses 0.12), and a pull here
/// needs to stream each blob into the store's own resumable partial file
/// under a cross-process lock, resume with `Range`, verify as it writes,
/// and map registry answers to stable error codes. The distribution
/// protocol subset for pulling is small (two GETs and the token dance), so
/// this crate speaks it directly over reqwest with rustls.
#[derive(Debug, Clone)]
pub struct Puller {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<ImageStore>,
    config: RegistryConfig,
    http: reqwest::Client,
    inflight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Puller {
    /// A puller into `store` with registry settings `config`.
    pub fn new(store: Arc<ImageStore>, config: RegistryConfig) -> Result<Self, PullError> {
        config.validate()?;
        let http = http_client().map_err(|source| PullError::Connect {
            registry: "(client setup)".into(),
            source,
        })?;
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                config,
                http,
                inflight: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The store pulls go into.
    pub fn store(&self) -> &Arc<ImageStore> {
        &self.inner.store
    }

    /// A [`Pusher`](crate::Pusher) from the same store, with the same
    /// registry settings and HTTP client.
    pub fn pusher(&self) -> crate::Pusher {
        crate::push::Pusher::from_parts(
            self.inner.store.clone(),
            Arc::new(self.inner.config.clone()),
            self.inner.http.clone(),
        )
    }

    /// Parses a reference with this puller's default registry.
    pub fn parse_reference(&self, reference: &str) -> Result<Reference, PullError> {
        Ok(Reference::parse(
            reference,
            self.inner.config.default_registry(),
        )?)
    }

    /// Pulls `reference` with the configured credentials.
    pub async fn pull(
        &self,
        reference: &str,
        progress: impl Fn(PullEvent) + Send + Sync,
    ) -> Result<Image, PullError> {
        self.pull_with(reference, &PullOptions::default(), progress)
            .await
    }

    /// Pulls `reference` (`python:3.12`, `host:5000/a/b:t`,
    /// `name@sha256:...`): resolves the host platform's manifest, fetches
    /// and verifies the config and every missing layer blob, unpacks each
    /// layer (verifying its diff id), and names the image by the
    /// normalized reference (`docker.io/library/python:3.12`).
    pub async fn pull_with(
        &self,
        reference: &str,
        options: &PullOptions,
        progress: impl Fn(PullEvent) + Send + Sync,
    ) -> Result<Image, PullError> {
        let r = self.parse_reference(reference)?;
        let span = tracing::info_span!("pull", reference = %r);
        self.pull_inner(r, options, &progress)
            .instrument(span)
            .await
    }

    async fn pull_inner(
        &self,
        r: Reference,
        options: &PullOptions,
        progress: &(dyn Fn(PullEvent) + Send + Sync),
    ) -> Result<Image, PullError> {
        let store = self.inner.store.clone();
        let entry = self.inner.config.entry(&r.registry);
        let credentials = options.credentials.clone().or(entry.auth);
        let client = RepoClient::new(
            self.inner.http.clone(),
            &r.registry,
            &r.repository,
            entry.insecure,
            credentials,
        );
        let display = r.to_string();
        // Held until the image is committed: gc and remove wait for it.
        let _lease = blocking({
            let store = store.clone();
            move || store.lease()
        })
        .await?;

        let (mut bytes, content_type, header_digest) = client
            .manifest(r.target_str(), MANIFEST_ACCEPT, &display)
            .await?;
        let mut manifest_digest = match &r.target {
            Target::Digest(d) => d.clone(),
            Target::Tag(_) => header_digest
                .clone()
                .filter(|d| d.starts_with("sha256:"))
                .unwrap_or_else(|| format!("sha256:{}", sha256_hex(&bytes))),
        };
        verify_bytes("manifest", &manifest_digest, &bytes)?;
        let manifest: Manifest = match parse_manifest(content_type.as_deref(), &bytes)? {
            ManifestKind::Manifest(m) => m,
            ManifestKind::Index(index) => {
                let desc = index.select(&host_platform())?.clone();
                tracing::debug!(digest = %desc.digest, "selected platform manifest");
                let (platform_bytes, ct, _) = client
                    .manifest(&desc.digest, MANIFEST_ACCEPT, &display)
                    .await?;
                verify_bytes("manifest", &desc.digest, &platform_bytes)?;
                manifest_digest = desc.digest.clone();
                bytes = platform_bytes;
                match parse_manifest(ct.as_deref().or(Some(&desc.media_type)), &bytes)? {
                    ManifestKind::Manifest(m) => m,
                    ManifestKind::Index(_) => {
                        return Err(ImageError::InvalidManifest {
                            reason: "an index inside an index is not supported".into(),
                        }
                        .into())
                    }
                }
            }
        };

        let config_digest = manifest.config.digest.clone();
        let config_bytes = if store.has_blob(&config_digest) {
            let store = store.clone();
            let digest = config_digest.clone();
            blocking(move || store.read_blob(&digest)).await?
        } else {
            let b = client.blob_bytes(&config_digest, &display).await?;
            verify_bytes("config", &config_digest, &b)?;
            b
        };
        verify_bytes("config", &config_digest, &config_bytes)?;
        let config = ConfigFile::parse(&config_bytes)?;
        check_layer_count(&manifest, &config)?;
        progress(PullEvent::Resolved {
            reference: display.clone(),
            manifest_digest: manifest_digest.clone(),
            layers: manifest
                .layers
                .iter()
                .map(|l| LayerSummary {
                    digest: l.digest.clone(),
                    size: l.size,
                })
                .collect(),
        });

        // Each layer is downloaded and unpacked in one pass, several at a
        // time. A layer with a hard link into a layer below that is not
        // complete yet comes back as a stored blob, unpacked here in layer
        // order once the layers below are in; `layer_unpacked` events go
        // in layer order.
        let n = manifest.layers.len();
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..n)
            .map(|_| oneshot::channel::<Result<Fetched, PullError>>())
            .unzip();
        let layers = manifest.layers.clone();
        let diff_ids = config.rootfs.diff_ids.clone();
        let ready: Arc<Vec<AtomicBool>> =
            Arc::new((0..n).map(|_| AtomicBool::new(false)).collect());
        let downloads = async {
            stream::iter(layers.iter().zip(&diff_ids).zip(senders).enumerate())
                .for_each_concurrent(CONCURRENT_DOWNLOADS, |(i, ((desc, diff_id), tx))| {
                    let client = &client;
                    let display = &display;
                    let store = &store;
                    let lowers = &diff_ids[..i];
                    let ready = &ready;
                    async move {
                        let result = if store.has_layer(diff_id) {
                            progress(PullEvent::LayerAlreadyPresent {
                                digest: desc.digest.clone(),
                            });
                            Ok(Fetched::Layer)
                        } else {
                            let layer = LayerJob {
                                desc,
                                diff_id,
                                lowers,
                                lowers_ready: lowers_ready(ready, i),
                            };
                            self.ensure_layer(client, &layer, display, progress).await
                        };
                        if matches!(result, Ok(Fetched::Layer)) {
                            ready[i].store(true, Ordering::Release);
                        }
                        let _ = tx.send(result);
                    }
                })
                .await;
            Ok::<(), PullError>(())
        };
        let unpacks = async {
            for (i, ((desc, diff_id), rx)) in
                layers.iter().zip(&diff_ids).zip(receivers).enumerate()
            {
                let fetched = rx.await.map_err(|_| PullError::InvalidResponse {
                    registry: r.registry.clone(),
                    reason: "download task ended without a result".into(),
                })??;
                if fetched == Fetched::Blob {
                    let outcome = {
                        let store = store.clone();
                        let desc = desc.clone();
                        let diff_id = diff_id.clone();
                        let below = diff_ids[..i].to_vec();
                        blocking(move || store.unpack_layer(&desc, &diff_id, &below)).await?
                    };
                    tracing::debug!(digest = %desc.digest, ?outcome, "layer unpacked from its blob");
                    ready[i].store(true, Ordering::Release);
                }
                progress(PullEvent::LayerUnpacked {
                    digest: desc.digest.clone(),
                    diff_id: diff_id.clone(),
                });
            }
            Ok::<(), PullError>(())
        };
        tokio::try_join!(downloads, unpacks)?;

        let image = {
            let store = store.clone();
            let name = r.image_name();
            let manifest_digest = manifest_digest.clone();
            blocking(move || {
                store.put_blob_bytes(&manifest_digest, &bytes)?;
                store.put_blob_bytes(&manifest.config.digest, &config_bytes)?;
                store.commit_oci(&manifest_digest, &manifest, &config, Some(&name))
            })
            .await?
        };
        tracing::info!(id = %image.id, manifest = %manifest_digest, "pulled image");
        progress(PullEvent::Done {
            id: image.id.clone(),
            name: r.image_name().to_string(),
            manifest_digest,
        });
        Ok(image)
    }

    /// Makes sure the layer of `job` is in the store, downloading its
    /// blob at most once per process (in-flight map) and per store (blob
    /// file lock), and unpacking it as it arrives.
    async fn ensure_layer(
        &self,
        client: &RepoClient,
        job: &LayerJob<'_>,
        display: &str,
        progress: &(dyn Fn(PullEvent) + Send + Sync),
    ) -> Result<Fetched, PullError> {
        let store = &self.inner.store;
        let desc = job.desc;
        let present = || {
            store
                .has_layer(job.diff_id)
                .then_some(Fetched::Layer)
                .or_else(|| store.has_blob(&desc.digest).then_some(Fetched::Blob))
        };
        let already = |fetched| {
            progress(PullEvent::LayerAlreadyPresent {
                digest: desc.digest.clone(),
            });
            Ok(fetched)
        };
        if let Some(fetched) = present() {
            return already(fetched);
        }
        let gate = self
            .inner
            .inflight
            .lock()
            .expect("inflight map lock poisoned")
            .entry(desc.digest.clone())
            .or_default()
            .clone();
        let result = async {
            let _in_process = gate.lock().await;
            if let Some(fetched) = present() {
                return already(fetched);
            }
            let _cross_process = {
                let store = store.clone();
                let digest = desc.digest.clone();
                blocking(move || store.lock_blob(&digest)).await?
            };
            if let Some(fetched) = present() {
                return already(fetched);
            }
            self.stream_layer(client, job, display, progress).await
        }
        .await;
        let mut inflight = self
            .inner
            .inflight
            .lock()
            .expect("inflight map lock poisoned");
        if Arc::strong_count(&gate) <= 2 {
            inflight.remove(&desc.digest);
        }
        result
    }

    /// Downloads one layer blob into its partial file (resuming with
    /// `Range` when a previous attempt left bytes) and hands the bytes as
    /// they arrive to a blocking thread that hashes, stores and unpacks
    /// them ([`ImageStore::ingest_layer_stream`]).
    async fn stream_layer(
        &self,
        client: &RepoClient,
        job: &LayerJob<'_>,
        display: &str,
        progress: &(dyn Fn(PullEvent) + Send + Sync),
    ) -> Result<Fetched, PullError> {
        let desc = job.desc;
        let store = self.inner.store.clone();
        let mut download = {
            let store = store.clone();
            let desc = desc.clone();
            blocking(move || store.begin_blob(&desc)).await?
        };
        let offset = download.offset();
        let mut response = client.blob(&desc.digest, offset, display).await?;
        let mut received = offset;
        if offset > 0 {
            if response.status() == reqwest::StatusCode::PARTIAL_CONTENT {
                tracing::info!(digest = %desc.digest, offset, "resuming download");
            } else {
                download.restart()?;
                received = 0;
            }
        }
        let (tx, mut body) = ChannelBody::channel();
        let ingest = tokio::task::spawn_blocking({
            let diff_id = job.diff_id.to_owned();
            let lowers = job.lowers.to_vec();
            let lowers_ready = job.lowers_ready.clone();
            move || store.ingest_layer_stream(download, &mut body, &diff_id, &lowers, lowers_ready)
        });
        let layer_progress = |downloaded| PullEvent::LayerProgress {
            digest: desc.digest.clone(),
            downloaded,
            total: desc.size,
        };
        let mut last = Instant::now();
        let mut broke = None;
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    received += chunk.len() as u64;
                    if tx.send(Chunk::Data(chunk)).await.is_err() {
                        break; // the ingest ended early; its result says why
                    }
                    if last.elapsed() >= PROGRESS_INTERVAL {
                        last = Instant::now();
                        progress(layer_progress(received));
                    }
                }
                Ok(None) => {
                    let _ = tx.send(Chunk::End).await;
                    break;
                }
                Err(source) => {
                    broke = Some(source);
                    break;
                }
            }
        }
        drop(tx);
        let outcome = ingest.await.map_err(PullError::Task)?;
        if let Some(source) = broke {
            return Err(PullError::Connect {
                registry: client.registry().to_owned(),
                source,
            });
        }
        let outcome = outcome?;
        if outcome == StreamedLayer::AlreadyPresent {
            progress(PullEvent::LayerAlreadyPresent {
                digest: desc.digest.clone(),
            });
            return Ok(Fetched::Layer);
        }
        progress(layer_progress(received));
        progress(PullEvent::LayerVerified {
            digest: desc.digest.clone(),
        });
        Ok(match outcome {
            StreamedLayer::BlobStored => Fetched::Blob,
            _ => Fetched::Layer,
        })
    }
}

/// One layer of a pull.
struct LayerJob<'a> {
    desc: &'a Descriptor,
    diff_id: &'a str,
    /// Diff ids of the layers below, lowest first.
    lowers: &'a [String],
    lowers_ready: Arc<dyn Fn() -> bool + Send + Sync>,
}

/// Where a layer's download task left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fetched {
    /// The layer is unpacked (now, or it already was).
    Layer,
    /// Its blob is stored; it still needs unpacking, in layer order.
    Blob,
}

/// Whether layers `0..i` are all unpacked.
fn lowers_ready(ready: &Arc<Vec<AtomicBool>>, i: usize) -> Arc<dyn Fn() -> bool + Send + Sync> {
    let ready = ready.clone();
    Arc::new(move || ready[..i].iter().all(|r| r.load(Ordering::Acquire)))
}

/// Runs store work on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ImageError> + Send + 'static,
) -> Result<T, PullError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(PullError::Task)?
        .map_err(PullError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialize_tagged() {
        let e = PullEvent::LayerProgress {
            digest: "sha256:x".into(),
            downloaded: 1,
            total: 2,
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"event":"layer_progress","digest":"sha256:x","downloaded":1,"total":2}"#
        );
    }
}
