//! File calls (`/v1/sandboxes/{id}/files...`). Paths are raw bytes and go
//! percent-encoded byte for byte, so names that are not UTF-8 work.
//! Reads and writes stream: nothing holds a whole file in memory.

use futures_util::{Stream, StreamExt};
use reqwest::{Method, RequestBuilder};
use warren_proto::api::{ArchiveResult, FileEvent, FileInfo, FileList};

use crate::images::PULL_TIMEOUT;
use crate::{Client, ClientError};

/// Percent-encodes every byte but the unreserved ones (RFC 3986).
fn pct(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 3);
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// A `files` query: path parameters as bytes, other parameters as text.
#[derive(Default)]
struct Query(Vec<String>);

impl Query {
    fn path(mut self, key: &str, p: &[u8]) -> Self {
        self.0.push(format!("{key}={}", pct(p)));
        self
    }
    fn opt(mut self, key: &str, v: Option<impl ToString>) -> Self {
        if let Some(v) = v {
            self.0
                .push(format!("{key}={}", pct(v.to_string().as_bytes())));
        }
        self
    }
    fn flag(self, key: &str, on: bool) -> Self {
        self.opt(key, on.then_some("true"))
    }
}

/// Options of [`Client::write_file`].
#[derive(Debug, Clone, Default)]
pub struct WriteFile {
    /// Octal mode; the old file's (else 0644) when `None`.
    pub mode: Option<u32>,
    /// Create missing parent directories.
    pub parents: bool,
    /// Act as this user instead of the sandbox's.
    pub user: Option<String>,
}

impl Client {
    fn files_request(
        &self,
        method: Method,
        id: &str,
        tail: &str,
        q: Query,
    ) -> Result<RequestBuilder, ClientError> {
        let mut url = if tail.is_empty() {
            self.endpoint(&["v1", "sandboxes", id, "files"])?
        } else {
            self.endpoint(&["v1", "sandboxes", id, "files", tail])?
        };
        url.set_query(Some(&q.0.join("&")));
        Ok(self
            .http
            .request(method, url)
            .bearer_auth(&self.token)
            .timeout(PULL_TIMEOUT))
    }

    /// `GET .../files`: the file's bytes as a stream of chunks, and its size
    /// when opened.
    pub async fn read_file(
        &self,
        id: &str,
        path: &[u8],
        offset: Option<u64>,
        length: Option<u64>,
    ) -> Result<(u64, impl Stream<Item = Result<bytes::Bytes, ClientError>>), ClientError> {
        let q = Query::default()
            .path("path", path)
            .opt("offset", offset)
            .opt("length", length);
        let resp = self
            .checked(self.files_request(Method::GET, id, "", q)?)
            .await?;
        let size = resp
            .headers()
            .get("x-warren-file-size")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let base = self.base.to_string();
        Ok((
            size,
            resp.bytes_stream().map(move |r| {
                r.map_err(|source| ClientError::Transport {
                    url: base.clone(),
                    source,
                })
            }),
        ))
    }

    /// `PUT .../files`: replaces the file atomically with `body`.
    pub async fn write_file<S>(
        &self,
        id: &str,
        path: &[u8],
        opts: &WriteFile,
        body: S,
    ) -> Result<FileInfo, ClientError>
    where
        S: Stream<Item = std::io::Result<bytes::Bytes>> + Send + Sync + 'static,
    {
        let q = Query::default()
            .path("path", path)
            .opt("mode", opts.mode.map(|m| format!("{m:o}")))
            .flag("parents", opts.parents)
            .opt("user", opts.user.as_deref());
        let rb = self
            .files_request(Method::PUT, id, "", q)?
            .body(reqwest::Body::wrap_stream(body));
        self.send(rb).await
    }

    /// `GET .../files/stat`
    pub async fn stat_file(&self, id: &str, path: &[u8]) -> Result<FileInfo, ClientError> {
        let q = Query::default().path("path", path);
        self.send(self.files_request(Method::GET, id, "stat", q)?)
            .await
    }

    /// `GET .../files/list`
    pub async fn list_files(
        &self,
        id: &str,
        path: &[u8],
        recursive: bool,
        limit: Option<u32>,
    ) -> Result<FileList, ClientError> {
        let q = Query::default()
            .path("path", path)
            .flag("recursive", recursive)
            .opt("limit", limit);
        self.send(self.files_request(Method::GET, id, "list", q)?)
            .await
    }

    /// `POST .../files/mkdir`
    pub async fn make_dir(
        &self,
        id: &str,
        path: &[u8],
        parents: bool,
    ) -> Result<FileInfo, ClientError> {
        let q = Query::default().path("path", path).flag("parents", parents);
        self.send(self.files_request(Method::POST, id, "mkdir", q)?)
            .await
    }

    /// `DELETE .../files`
    pub async fn remove_file(
        &self,
        id: &str,
        path: &[u8],
        recursive: bool,
    ) -> Result<(), ClientError> {
        let q = Query::default()
            .path("path", path)
            .flag("recursive", recursive);
        self.send_bytes(self.files_request(Method::DELETE, id, "", q)?)
            .await
            .map(|_| ())
    }

    /// `POST .../files/rename`
    pub async fn rename_file(
        &self,
        id: &str,
        from: &[u8],
        to: &[u8],
        overwrite: bool,
    ) -> Result<(), ClientError> {
        let q = Query::default()
            .path("from", from)
            .path("to", to)
            .flag("overwrite", overwrite);
        self.send_bytes(self.files_request(Method::POST, id, "rename", q)?)
            .await
            .map(|_| ())
    }

    /// `GET .../files/archive`: a directory as a tar stream.
    pub async fn download_dir(
        &self,
        id: &str,
        path: &[u8],
    ) -> Result<impl Stream<Item = Result<bytes::Bytes, ClientError>>, ClientError> {
        let q = Query::default().path("path", path);
        let resp = self
            .checked(self.files_request(Method::GET, id, "archive", q)?)
            .await?;
        let base = self.base.to_string();
        Ok(resp.bytes_stream().map(move |r| {
            r.map_err(|source| ClientError::Transport {
                url: base.clone(),
                source,
            })
        }))
    }

    /// `PUT .../files/archive`: unpacks a tar stream into a directory.
    pub async fn upload_dir<S>(
        &self,
        id: &str,
        path: &[u8],
        tar: S,
    ) -> Result<ArchiveResult, ClientError>
    where
        S: Stream<Item = std::io::Result<bytes::Bytes>> + Send + Sync + 'static,
    {
        let q = Query::default().path("path", path);
        let rb = self
            .files_request(Method::PUT, id, "archive", q)?
            .body(reqwest::Body::wrap_stream(tar));
        self.send(rb).await
    }

    /// `GET .../files/watch`: calls `on_event` for every change until it
    /// returns `false` or the watched path goes away.
    pub async fn watch_files(
        &self,
        id: &str,
        path: &[u8],
        recursive: bool,
        mut on_event: impl FnMut(&FileEvent) -> bool,
    ) -> Result<(), ClientError> {
        let q = Query::default()
            .path("path", path)
            .flag("recursive", recursive);
        let resp = self
            .checked(self.files_request(Method::GET, id, "watch", q)?)
            .await?;
        let mut body = resp.bytes_stream();
        let mut parser = crate::images::SseParser::default();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|source| ClientError::Transport {
                url: self.base.to_string(),
                source,
            })?;
            for (event, data) in parser.push(&chunk)? {
                match event.as_str() {
                    "fs" => {
                        if let Ok(ev) = serde_json::from_str::<FileEvent>(&data) {
                            if !on_event(&ev) {
                                return Ok(());
                            }
                        }
                    }
                    "error" => {
                        let b: warren_proto::api::ErrorBody = serde_json::from_str(&data)
                            .map_err(|source| ClientError::BadFrame { source })?;
                        return Err(ClientError::Stream {
                            code: b.error.code,
                            message: b.error.message,
                        });
                    }
                    "end" => return Ok(()),
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Sends `rb`; a non-2xx answer becomes its API error.
    async fn checked(&self, rb: RequestBuilder) -> Result<reqwest::Response, ClientError> {
        let transport = |source| ClientError::Transport {
            url: self.base.to_string(),
            source,
        };
        let resp = rb.send().await.map_err(transport)?;
        if !resp.status().is_success() {
            let status = resp.status();
            let body = resp.bytes().await.map_err(transport)?;
            return Err(ClientError::from_response(status, &body));
        }
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn paths_are_encoded_byte_for_byte() {
        assert_eq!(super::pct(b"/tmp/a b/\xff%"), "/tmp/a%20b/%FF%25");
    }
}
