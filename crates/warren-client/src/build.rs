//! Image builds: `POST /v1/images/build` with a context tar streamed up and
//! the NDJSON build events streamed back.

use std::time::Duration;

use futures_util::{Stream, StreamExt};
use reqwest::Method;
use warren_proto::build::{BuildEvent, BuildQuery};

use crate::{Client, ClientError};

/// Longest a whole build may take before the client gives up.
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Longest NDJSON line accepted (a log event holds at most 64 KiB of
/// output, escaped).
const MAX_LINE: usize = 4 << 20;

/// A finished build (the `done` event).
#[derive(Debug, Clone, PartialEq)]
pub struct BuiltImage {
    pub image_id: String,
    pub name: String,
    pub seconds: f64,
    pub steps: u32,
    pub cached_steps: u32,
}

impl Client {
    /// `POST /v1/images/build` (admin tokens): uploads `context` (a tar
    /// with the recipe inside, as a stream of chunks) and calls `on_event`
    /// for every build event, the final `done` or `error` included. A
    /// failed build is [`ClientError::Stream`] with the server's code
    /// (`build_step_failed`, `invalid_copy_source`, ...); a refused one
    /// (`invalid_recipe`, `context_too_large`, ...) is [`ClientError::Api`].
    pub async fn build_image<S>(
        &self,
        context: S,
        query: &BuildQuery,
        mut on_event: impl FnMut(&BuildEvent),
    ) -> Result<BuiltImage, ClientError>
    where
        S: Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static,
    {
        let rb = self
            .request(Method::POST, &["v1", "images", "build"])?
            .timeout(BUILD_TIMEOUT)
            .query(query)
            .header(reqwest::header::CONTENT_TYPE, "application/x-tar")
            .body(reqwest::Body::wrap_stream(context));
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
        let mut lines = LineSplitter::default();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(transport)?;
            for line in lines.push(&chunk)? {
                let ev: BuildEvent =
                    serde_json::from_slice(&line).map_err(|source| ClientError::BadResponse {
                        status: status.as_u16(),
                        source,
                    })?;
                on_event(&ev);
                match ev {
                    BuildEvent::Done {
                        image_id,
                        name,
                        seconds,
                        cached_steps,
                        steps,
                    } => {
                        return Ok(BuiltImage {
                            image_id,
                            name,
                            seconds,
                            steps,
                            cached_steps,
                        })
                    }
                    BuildEvent::Error { code, message, .. } => {
                        return Err(ClientError::Stream { code, message })
                    }
                    _ => {}
                }
            }
        }
        Err(ClientError::Stream {
            code: "stream_closed".into(),
            message: "the build stream ended without a result".into(),
        })
    }
}

/// Splits a byte stream into newline-terminated lines (empty lines
/// skipped), bounding a line's length.
#[derive(Default)]
struct LineSplitter {
    buf: Vec<u8>,
}

impl LineSplitter {
    fn push(&mut self, chunk: &[u8]) -> Result<Vec<Vec<u8>>, ClientError> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=pos).collect();
            let line = &line[..line.len() - 1];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if !line.is_empty() {
                out.push(line.to_vec());
            }
        }
        if self.buf.len() > MAX_LINE {
            return Err(ClientError::Stream {
                code: "bad_response".into(),
                message: "a build event is too large".into(),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_across_chunks() {
        let mut s = LineSplitter::default();
        assert!(s.push(b"{\"a\"").unwrap().is_empty());
        assert_eq!(
            s.push(b":1}\n\n{\"b\":2}\r\n{").unwrap(),
            vec![b"{\"a\":1}".to_vec(), b"{\"b\":2}".to_vec()]
        );
        assert!(s.push(&vec![b'x'; MAX_LINE]).is_err());
    }
}
