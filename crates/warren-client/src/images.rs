//! Image calls: pull and push (with progress from the server-sent event
//! stream), list, inspect, remove, GC, archive import and OCI archive
//! export.

use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::Method;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use warren_proto::api::{
    ImageGcReport, ImageInfo, ImageList, PullImageRequest, PullProgress, PushImageRequest,
    PushImageResult, PushProgress,
};

use crate::{decode, Client, ClientError};

/// Longest a pull or an import may take before the client gives up.
pub const PULL_TIMEOUT: Duration = Duration::from_secs(3600);

/// Largest single server-sent event the client accepts.
const MAX_EVENT: usize = 1 << 20;

impl Client {
    /// `GET /v1/images`
    pub async fn list_images(&self) -> Result<Vec<ImageInfo>, ClientError> {
        let rb = self.request(Method::GET, &["v1", "images"])?;
        let list: ImageList = self.send(rb).await?;
        Ok(list.images)
    }

    /// `GET /v1/images/{reference}`
    pub async fn inspect_image(&self, reference: &str) -> Result<ImageInfo, ClientError> {
        let rb = self.request(Method::GET, &["v1", "images", reference])?;
        self.send(rb).await
    }

    /// `DELETE /v1/images/{reference}` (admin tokens).
    pub async fn remove_image(&self, reference: &str) -> Result<(), ClientError> {
        let rb = self.request(Method::DELETE, &["v1", "images", reference])?;
        self.send_bytes(rb).await.map(|_| ())
    }

    /// `POST /v1/images/gc` (admin tokens).
    pub async fn gc_images(&self) -> Result<ImageGcReport, ClientError> {
        let rb = self.request(Method::POST, &["v1", "images", "gc"])?;
        self.send(rb).await
    }

    /// `POST /v1/images/pull`, following the event stream: `progress` gets
    /// every progress event (intermediate ones may be skipped by the server
    /// for a slow reader); returns the pulled image.
    pub async fn pull_image(
        &self,
        req: &PullImageRequest,
        mut progress: impl FnMut(&PullProgress),
    ) -> Result<ImageInfo, ClientError> {
        let rb = self
            .request(Method::POST, &["v1", "images", "pull"])?
            .timeout(PULL_TIMEOUT)
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .json(req);
        self.follow_events(rb, "pull", &mut progress).await
    }

    /// `POST /v1/images/{reference}/push` (admin tokens), following the
    /// event stream like [`Client::pull_image`]; returns what was pushed.
    pub async fn push_image(
        &self,
        reference: &str,
        req: &PushImageRequest,
        mut progress: impl FnMut(&PushProgress),
    ) -> Result<PushImageResult, ClientError> {
        let rb = self
            .request(Method::POST, &["v1", "images", reference, "push"])?
            .timeout(PULL_TIMEOUT)
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .json(req);
        self.follow_events(rb, "push", &mut progress).await
    }

    /// `GET /v1/images/{reference}/export`: writes the image, a tar of an
    /// OCI image layout, to `out` as it arrives; `progress` gets the bytes
    /// written so far and the total (the server's `Content-Length`).
    /// Returns the bytes written; a transfer that ends short is an error.
    pub async fn export_image<W: AsyncWrite + Unpin>(
        &self,
        reference: &str,
        out: &mut W,
        mut progress: impl FnMut(u64, Option<u64>),
    ) -> Result<u64, ClientError> {
        let rb = self
            .request(Method::GET, &["v1", "images", reference, "export"])?
            .timeout(PULL_TIMEOUT);
        let transport = |source| ClientError::Transport {
            url: self.base.to_string(),
            source,
        };
        let resp = rb.send().await.map_err(transport)?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.bytes().await.map_err(transport)?;
            return Err(ClientError::from_response(status, &body));
        }
        let total = resp.content_length();
        let mut written = 0u64;
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(transport)?;
            out.write_all(&chunk)
                .await
                .map_err(|source| ClientError::Io {
                    what: "write the exported image".into(),
                    source,
                })?;
            written += chunk.len() as u64;
            progress(written, total);
        }
        out.flush().await.map_err(|source| ClientError::Io {
            what: "write the exported image".into(),
            source,
        })?;
        if total.is_some_and(|t| t != written) {
            return Err(ClientError::Stream {
                code: "stream_closed".into(),
                message: format!(
                    "the export ended after {written} of {} bytes",
                    total.unwrap_or_default()
                ),
            });
        }
        Ok(written)
    }

    /// Sends `rb` (asking for server-sent events) and follows the stream:
    /// `progress` events go to `progress`, `done` is the result, `error`
    /// an error.
    async fn follow_events<P: DeserializeOwned, R: DeserializeOwned>(
        &self,
        rb: reqwest::RequestBuilder,
        what: &str,
        progress: &mut impl FnMut(&P),
    ) -> Result<R, ClientError> {
        let transport = |source| ClientError::Transport {
            url: self.base.to_string(),
            source,
        };
        let resp = rb.send().await.map_err(transport)?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.bytes().await.map_err(transport)?;
            return Err(ClientError::from_response(status, &body));
        }
        let mut body = resp.bytes_stream();
        let mut parser = SseParser::default();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(transport)?;
            for (event, data) in parser.push(&chunk)? {
                match event.as_str() {
                    "progress" => {
                        if let Ok(p) = serde_json::from_str::<P>(&data) {
                            progress(&p);
                        }
                    }
                    "done" => return decode(status, data.as_bytes()),
                    "error" => {
                        let (code, message) =
                            match serde_json::from_str::<warren_proto::api::ErrorBody>(&data) {
                                Ok(b) => (b.error.code, b.error.message),
                                Err(_) => ("bad_response".into(), data),
                            };
                        return Err(ClientError::Stream { code, message });
                    }
                    _ => {}
                }
            }
        }
        Err(ClientError::Stream {
            code: "stream_closed".into(),
            message: format!("the {what} stream ended without a result"),
        })
    }

    /// `POST /v1/images/import?name=`: uploads a `docker save` archive or
    /// an OCI image layout tar (admin tokens).
    pub async fn import_image(
        &self,
        archive: &Path,
        name: Option<&str>,
    ) -> Result<ImageInfo, ClientError> {
        let file = tokio::fs::File::open(archive)
            .await
            .map_err(|source| ClientError::Io {
                what: format!("open {}", archive.display()),
                source,
            })?;
        let len = file.metadata().await.map(|m| m.len()).ok();
        let stream = tokio_util_stream(file);
        let mut rb = self
            .request(Method::POST, &["v1", "images", "import"])?
            .timeout(PULL_TIMEOUT)
            .header(reqwest::header::CONTENT_TYPE, "application/x-tar")
            .body(reqwest::Body::wrap_stream(stream));
        if let Some(len) = len {
            rb = rb.header(reqwest::header::CONTENT_LENGTH, len);
        }
        if let Some(n) = name {
            rb = rb.query(&[("name", n)]);
        }
        self.send(rb).await
    }
}

/// A file as a stream of 256 KiB chunks.
fn tokio_util_stream(
    file: tokio::fs::File,
) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static {
    futures_util::stream::unfold(Some(file), |state| async move {
        use tokio::io::AsyncReadExt;
        let mut file = state?;
        let mut buf = vec![0u8; 256 * 1024];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(bytes::Bytes::from(buf)), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    })
}

/// A minimal `text/event-stream` parser: `event:` and `data:` fields,
/// events ended by a blank line; comments and other fields ignored.
#[derive(Default)]
pub(crate) struct SseParser {
    buf: Vec<u8>,
    event: String,
    data: String,
}

impl SseParser {
    pub(crate) fn push(&mut self, chunk: &[u8]) -> Result<Vec<(String, String)>, ClientError> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=pos).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if !self.data.is_empty() || !self.event.is_empty() {
                    let event = std::mem::take(&mut self.event);
                    let data = std::mem::take(&mut self.data);
                    out.push((
                        if event.is_empty() {
                            "message".into()
                        } else {
                            event
                        },
                        data,
                    ));
                }
            } else if let Some(v) = line.strip_prefix("event:") {
                self.event = v.trim_start().to_string();
            } else if let Some(v) = line.strip_prefix("data:") {
                if !self.data.is_empty() {
                    self.data.push('\n');
                }
                self.data.push_str(v.strip_prefix(' ').unwrap_or(v));
            }
        }
        if self.buf.len() + self.data.len() > MAX_EVENT {
            return Err(ClientError::Stream {
                code: "bad_response".into(),
                message: "a server-sent event is too large".into(),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_split_across_chunks() {
        let mut p = SseParser::default();
        assert!(p.push(b"event: progress\ndata: {\"a\"").unwrap().is_empty());
        let got = p
            .push(b":1}\n\n: keep-alive\n\nevent: done\r\ndata: x\r\n\r\n")
            .unwrap();
        assert_eq!(
            got,
            vec![
                ("progress".to_string(), "{\"a\":1}".to_string()),
                ("done".to_string(), "x".to_string())
            ]
        );
    }
}
