//! [`Pusher`]: pushes an image of the store to an OCI distribution
//! registry.
//!
//! Protocol (distribution spec v1.1, push side), per blob (the config,
//! then each layer, each distinct digest once, [`CONCURRENT_UPLOADS`] at a
//! time):
//!
//! 1. `HEAD /v2/<repo>/blobs/<digest>`: `200` means the registry has it
//!    and nothing is uploaded (`blob_exists`).
//! 2. `POST /v2/<repo>/blobs/uploads/` → `202` with a `Location`.
//! 3. `PUT <location>?digest=<digest>` with the whole blob as the body
//!    (a monolithic upload, streamed from the store file, never held in
//!    memory) → `201`.
//!
//! Then `PUT /v2/<repo>/manifests/<tag>` with the manifest and its own
//! media type as `Content-Type` → `201`; a `Docker-Content-Digest` in the
//! answer must be the manifest's digest.
//!
//! Authentication is the pull's ([`RepoClient`]): a `401` is answered
//! once per request (basic credentials, or a bearer token with the scope
//! the challenge names, `repository:<repo>:pull,push` when it names none)
//! and the request is sent again (an upload's body is re-opened from the
//! store). Every request has a deadline: [`REQUEST_TIMEOUT`] for the small
//! ones, and for a blob upload that plus its size at
//! [`BLOB_PUT_MIN_RATE`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{self, StreamExt as _, TryStreamExt as _};
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use reqwest::{Method, Response, StatusCode};
use tokio::io::AsyncReadExt as _;
use tracing::Instrument as _;
use warren_image::oci::Descriptor;
use warren_image::{ImageStore, OciImage, Reference, Target};

use crate::client::{http_client, RepoClient};
use crate::config::{Credentials, RegistryConfig};
use crate::error::{PullError, PushError};
use crate::pull::PROGRESS_INTERVAL;

/// Progress of a push: one `resolved`, then per blob `blob_exists`, or
/// `blob_progress`* and `blob_pushed`, then `done`. The API's own type.
pub use warren_proto::api::PushProgress as PushEvent;

/// What a push did (the API's own type).
pub use warren_proto::api::PushImageResult as PushSummary;

/// Blobs uploaded at the same time by one push.
pub const CONCURRENT_UPLOADS: usize = 4;

/// Deadline of each small request (HEAD, POST, manifest PUT, token).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Slowest upload rate a blob PUT is given time for, in bytes per second
/// (on top of [`REQUEST_TIMEOUT`]).
pub const BLOB_PUT_MIN_RATE: u64 = 1 << 20;

/// Bytes read from the store per body chunk.
const UPLOAD_CHUNK: usize = 256 << 10;

/// Most bytes of a registry error answer kept in [`PushError::PushFailed`].
const ERROR_BODY_EXCERPT: usize = 512;

/// Per-push options.
#[derive(Debug, Clone, Default)]
pub struct PushOptions {
    /// Credentials for this push, overriding the config's for the
    /// target's registry.
    pub credentials: Option<Credentials>,
    /// Plain HTTP for this push's registry even if the config does not
    /// mark it insecure (the caller decides who may ask for it).
    pub insecure: bool,
}

/// Pushes images of an [`ImageStore`] to registries. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Pusher {
    store: Arc<ImageStore>,
    config: Arc<RegistryConfig>,
    http: reqwest::Client,
}

impl Pusher {
    /// A pusher from `store` with registry settings `config`.
    pub fn new(store: Arc<ImageStore>, config: RegistryConfig) -> Result<Self, PushError> {
        config.validate()?;
        let http = http_client().map_err(|source| PullError::Connect {
            registry: "(client setup)".into(),
            source,
        })?;
        Ok(Self {
            store,
            config: Arc::new(config),
            http,
        })
    }

    pub(crate) fn from_parts(
        store: Arc<ImageStore>,
        config: Arc<RegistryConfig>,
        http: reqwest::Client,
    ) -> Self {
        Self {
            store,
            config,
            http,
        }
    }

    /// Parses a push target (`host[:port]/repository[:tag]`, tag `latest`
    /// when absent); a digest is refused (a push names a tag).
    pub fn parse_target(&self, target: &str) -> Result<Reference, PushError> {
        let r = Reference::parse(target, self.config.default_registry()).map_err(|e| {
            PushError::InvalidTarget {
                target: target.to_owned(),
                reason: e.to_string(),
            }
        })?;
        if let Target::Digest(_) = r.target {
            return Err(PushError::InvalidTarget {
                target: target.to_owned(),
                reason: "a push needs a tag, not a digest".into(),
            });
        }
        Ok(r)
    }

    /// Pushes the image `reference` (a name or id of the store) to
    /// `target`, reporting progress. Blobs the registry has are not
    /// uploaded again.
    pub async fn push(
        &self,
        reference: &str,
        target: &str,
        options: &PushOptions,
        progress: impl Fn(PushEvent) + Send + Sync,
    ) -> Result<PushSummary, PushError> {
        let r = self.parse_target(target)?;
        let span = tracing::info_span!("push", image = %reference, target = %r);
        self.push_inner(reference, r, options, &progress)
            .instrument(span)
            .await
    }

    async fn push_inner(
        &self,
        reference: &str,
        r: Reference,
        options: &PushOptions,
        progress: &(dyn Fn(PushEvent) + Send + Sync),
    ) -> Result<PushSummary, PushError> {
        let entry = self.config.entry(&r.registry);
        let client = RepoClient::new(
            self.http.clone(),
            &r.registry,
            &r.repository,
            entry.insecure || options.insecure,
            options.credentials.clone().or(entry.auth),
        )
        .for_push();
        let image = {
            let store = self.store.clone();
            let reference = reference.to_owned();
            tokio::task::spawn_blocking(move || store.oci_image(&reference))
                .await
                .map_err(PullError::Task)??
        };
        let target = r.to_string();
        let mut blobs: Vec<Blob> = vec![Blob::Config];
        let mut seen = std::collections::HashSet::from([image.config_descriptor.digest.clone()]);
        for (i, layer) in image.layers.iter().enumerate() {
            if seen.insert(layer.descriptor.digest.clone()) {
                blobs.push(Blob::Layer(i));
            }
        }
        progress(PushEvent::Resolved {
            image: image.id.clone(),
            target: target.clone(),
            manifest_digest: image.manifest_descriptor.digest.clone(),
            blobs: blobs
                .iter()
                .map(|b| {
                    let d = b.descriptor(&image);
                    warren_proto::api::PullLayer {
                        digest: d.digest.clone(),
                        size: d.size,
                    }
                })
                .collect(),
        });

        let results: Vec<Option<u64>> = stream::iter(blobs.iter().copied())
            .map(|blob| push_blob(&client, &image, blob, progress))
            .buffer_unordered(CONCURRENT_UPLOADS)
            .try_collect()
            .await?;
        let pushed: Vec<u64> = results.iter().flatten().copied().collect();

        let tag = r.target_str().to_owned();
        put_manifest(&client, &image, &tag).await?;
        let summary = PushSummary {
            target,
            manifest_digest: image.manifest_descriptor.digest.clone(),
            pushed_blobs: pushed.len() as u64,
            skipped_blobs: (results.len() - pushed.len()) as u64,
            pushed_bytes: pushed.iter().sum(),
        };
        tracing::info!(
            manifest = %summary.manifest_digest,
            pushed = summary.pushed_blobs,
            skipped = summary.skipped_blobs,
            bytes = summary.pushed_bytes,
            "pushed image"
        );
        progress(PushEvent::Done(summary.clone()));
        Ok(summary)
    }
}

/// One blob of a push.
#[derive(Debug, Clone, Copy)]
enum Blob {
    Config,
    Layer(usize),
}

impl Blob {
    fn descriptor(self, image: &OciImage) -> &Descriptor {
        match self {
            Blob::Config => &image.config_descriptor,
            Blob::Layer(i) => &image.layers[i].descriptor,
        }
    }
}

/// Uploads one blob unless the registry has it; `Some(bytes)` when it
/// was uploaded.
async fn push_blob(
    client: &RepoClient,
    image: &OciImage,
    blob: Blob,
    progress: &(dyn Fn(PushEvent) + Send + Sync),
) -> Result<Option<u64>, PushError> {
    let desc = blob.descriptor(image);
    let what = format!("blob {}", desc.digest);
    let head_url = format!("{}/blobs/{}", client.base(), desc.digest);
    let head = send(client, REQUEST_TIMEOUT, || {
        Ok(client.http().request(Method::HEAD, &head_url))
    })
    .await?;
    match head.status() {
        s if s.is_success() => {
            tracing::debug!(digest = %desc.digest, "registry has the blob");
            progress(PushEvent::BlobExists {
                digest: desc.digest.clone(),
            });
            return Ok(None);
        }
        StatusCode::NOT_FOUND => {}
        _ => return Err(refused(client, &what, head).await),
    }

    let start_url = format!("{}/blobs/uploads/", client.base());
    let started = send(client, REQUEST_TIMEOUT, || {
        Ok(client
            .http()
            .post(&start_url)
            .header(CONTENT_LENGTH, HeaderValue::from_static("0")))
    })
    .await?;
    if started.status() != StatusCode::ACCEPTED {
        return Err(refused(client, &what, started).await);
    }
    let location = upload_url(client, &started, &desc.digest)?;

    let sent = Arc::new(AtomicU64::new(0));
    let deadline = REQUEST_TIMEOUT + Duration::from_secs(desc.size / BLOB_PUT_MIN_RATE);
    let upload = send(client, deadline, || {
        sent.store(0, Ordering::Relaxed);
        let body = match blob {
            Blob::Config => reqwest::Body::from(image.config.clone()),
            Blob::Layer(i) => {
                let file = image.layers[i].open()?;
                file_body(tokio::fs::File::from_std(file), desc.size, sent.clone())
            }
        };
        Ok(client
            .http()
            .put(location.clone())
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, desc.size)
            .body(body))
    });
    tokio::pin!(upload);
    let mut ticker = tokio::time::interval(PROGRESS_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let response = loop {
        tokio::select! {
            response = &mut upload => break response?,
            _ = ticker.tick() => progress(PushEvent::BlobProgress {
                digest: desc.digest.clone(),
                uploaded: sent.load(Ordering::Relaxed),
                total: desc.size,
            }),
        }
    };
    if response.status() != StatusCode::CREATED {
        return Err(refused(client, &what, response).await);
    }
    progress(PushEvent::BlobProgress {
        digest: desc.digest.clone(),
        uploaded: desc.size,
        total: desc.size,
    });
    progress(PushEvent::BlobPushed {
        digest: desc.digest.clone(),
    });
    tracing::debug!(digest = %desc.digest, size = desc.size, "uploaded blob");
    Ok(Some(desc.size))
}

/// `PUT /v2/<repo>/manifests/<tag>`.
async fn put_manifest(client: &RepoClient, image: &OciImage, tag: &str) -> Result<(), PushError> {
    let url = format!("{}/manifests/{tag}", client.base());
    let media_type = image.manifest_descriptor.media_type.clone();
    let response = send(client, REQUEST_TIMEOUT, || {
        Ok(client
            .http()
            .put(&url)
            .header(CONTENT_TYPE, media_type.as_str())
            .body(image.manifest.clone()))
    })
    .await?;
    let what = format!("manifest {tag}");
    if response.status() != StatusCode::CREATED {
        return Err(refused(client, &what, response).await);
    }
    let answered = response
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok());
    if let Some(digest) = answered {
        if digest != image.manifest_descriptor.digest {
            return Err(PullError::InvalidResponse {
                registry: client.registry().to_owned(),
                reason: format!(
                    "stored the manifest as {digest}, expected {}",
                    image.manifest_descriptor.digest
                ),
            }
            .into());
        }
    }
    Ok(())
}

/// Sends a request built by `build` with the client's authorization,
/// answering one `401` challenge and sending it again (built anew, so an
/// upload body is re-opened). Statuses other than `401` are the caller's.
async fn send(
    client: &RepoClient,
    timeout: Duration,
    build: impl Fn() -> Result<reqwest::RequestBuilder, PushError>,
) -> Result<Response, PushError> {
    let attempt = || async {
        let mut request = build()?.timeout(timeout);
        if let Some(auth) = client.authorization().await {
            request = request.header(AUTHORIZATION, auth);
        }
        request.send().await.map_err(|source| {
            PushError::from(PullError::Connect {
                registry: client.registry().to_owned(),
                source,
            })
        })
    };
    let first = attempt().await?;
    if first.status() != StatusCode::UNAUTHORIZED {
        return Ok(first);
    }
    client.answer_challenge(&first).await?;
    let retry = attempt().await?;
    if retry.status() == StatusCode::UNAUTHORIZED {
        return Err(client.still_unauthorized().into());
    }
    Ok(retry)
}

/// The URL to `PUT` an upload to: the `Location` of the `POST`'s answer
/// (absolute or relative to the registry), with `digest=` added.
fn upload_url(
    client: &RepoClient,
    response: &Response,
    digest: &str,
) -> Result<reqwest::Url, PushError> {
    let invalid = |reason: String| {
        PushError::from(PullError::InvalidResponse {
            registry: client.registry().to_owned(),
            reason,
        })
    };
    let location = response
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| invalid("upload started without a Location".into()))?;
    let base = reqwest::Url::parse(client.base()).map_err(|e| invalid(e.to_string()))?;
    let mut url = base
        .join(location)
        .map_err(|_| invalid(format!("upload Location {location:?} is not a URL")))?;
    match url.scheme() {
        "https" => {}
        "http" if client.insecure() => {}
        _ => {
            return Err(PullError::InsecureNotAllowed {
                registry: client.registry().to_owned(),
                url: url.to_string(),
            }
            .into())
        }
    }
    url.query_pairs_mut().append_pair("digest", digest);
    Ok(url)
}

/// A request body streamed from a store file, counting bytes sent.
fn file_body(file: tokio::fs::File, size: u64, sent: Arc<AtomicU64>) -> reqwest::Body {
    let chunks = stream::try_unfold((file, 0u64), move |(mut file, read)| {
        let sent = sent.clone();
        async move {
            if read >= size {
                return Ok(None);
            }
            let want = usize::try_from(size - read)
                .unwrap_or(usize::MAX)
                .min(UPLOAD_CHUNK);
            let mut buf = vec![0u8; want];
            let n = file.read(&mut buf).await?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "stored blob is shorter than its descriptor",
                ));
            }
            buf.truncate(n);
            sent.fetch_add(n as u64, Ordering::Relaxed);
            Ok::<_, std::io::Error>(Some((Bytes::from(buf), (file, read + n as u64))))
        }
    });
    reqwest::Body::wrap_stream(chunks)
}

/// [`PushError::PushFailed`] (or an auth error for `403`) from a refusal,
/// with the start of the registry's answer.
async fn refused(client: &RepoClient, what: &str, response: Response) -> PushError {
    let status = response.status();
    if status == StatusCode::FORBIDDEN {
        return PullError::AuthRejected {
            registry: client.registry().to_owned(),
            reason: format!("the registry denied {what}"),
        }
        .into();
    }
    let mut body = Vec::new();
    let mut response = response;
    while body.len() < ERROR_BODY_EXCERPT {
        match tokio::time::timeout(Duration::from_secs(5), response.chunk()).await {
            Ok(Ok(Some(chunk))) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    body.truncate(ERROR_BODY_EXCERPT);
    PushError::PushFailed {
        registry: client.registry().to_owned(),
        what: what.to_owned(),
        status: status.as_u16(),
        body: String::from_utf8_lossy(&body).trim().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_need_a_tag_and_a_valid_name() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(ImageStore::open(dir.path()).unwrap());
        let pusher = Pusher::new(store, RegistryConfig::default()).unwrap();
        let r = pusher.parse_target("127.0.0.1:5000/team/app").unwrap();
        assert_eq!(r.to_string(), "127.0.0.1:5000/team/app:latest");
        for bad in [
            "127.0.0.1:5000/app@sha256:0000000000000000000000000000000000000000000000000000000000000000",
            "Bad Ref",
            "",
        ] {
            let err = pusher.parse_target(bad).unwrap_err();
            assert_eq!(err.code(), "invalid_image_reference", "{bad}");
        }
    }

    #[test]
    fn events_serialize_tagged() {
        let e = PushEvent::BlobProgress {
            digest: "sha256:x".into(),
            uploaded: 1,
            total: 2,
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"event":"blob_progress","digest":"sha256:x","uploaded":1,"total":2}"#
        );
        let done = PushEvent::Done(PushSummary {
            target: "t".into(),
            manifest_digest: "d".into(),
            pushed_blobs: 1,
            skipped_blobs: 2,
            pushed_bytes: 3,
        });
        let json = serde_json::to_value(&done).unwrap();
        assert_eq!(json["event"], "done");
        assert_eq!(json["skipped_blobs"], 2);
    }
}
