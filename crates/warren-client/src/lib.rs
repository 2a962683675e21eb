//! warren-client: an async Rust SDK for the Warren HTTP API (`/v1`).
//!
//! [`Client`] wraps one base URL and one bearer token and has one method per
//! API endpoint, returning the types of [`warren_proto::api`]. Every failure
//! is a [`ClientError`]; API errors keep the server's stable `code` and its
//! `message`, and transport or decoding failures get client-side codes
//! (`transport`, `bad_response`, ...), so callers can always show
//! `<message> (<code>)`.
//!
//! [`Client::exec_stream`] runs a command over the streaming WebSocket
//! endpoint (live stdin, stdout, stderr, signals, terminal resize); see
//! [`stream`].
//!
//! Networking: [`Client::tunnels`], connect tokens
//! ([`Client::create_connect_token`], [`Client::list_connect_tokens`],
//! [`Client::revoke_connect_token`]), [`Client::wait_ready`] and
//! [`Client::update_network`] (the egress policy of a running sandbox).
//!
//! Must not: log or print anything (the caller decides), or put the token
//! anywhere but the `Authorization` header (it is redacted from `Debug`).

#![forbid(unsafe_code)]

pub mod build;
mod execs;
mod files;
mod images;
mod memory;
mod network;
mod snapshot;
pub mod stream;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::{Method, RequestBuilder, StatusCode, Url};
use serde::de::DeserializeOwned;
use warren_proto::api::{
    CreateSandboxRequest, CreateTokenRequest, CreateWorkspaceRequest, ErrorBody, ExecRequest,
    ExecResult, Sandbox, SandboxList, SandboxState, SetTagsRequest, Token, Workspace,
};

pub use files::WriteFile;
pub use images::PULL_TIMEOUT;
pub use network::Readiness;
pub use stream::{ExecExit, ExecInput, ExecOutput, ExecStream, StreamEvent};
pub use warren_proto::api::{StreamExecStart, TtySize};

/// Server URL used by [`Client::from_env`] when `WARREN_URL` is unset.
pub const DEFAULT_URL: &str = "http://127.0.0.1:7070";
/// Data directory of a default `warren serve`, where it writes `admin-token`.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/warren";
/// Longest a single `wait` request may hold the connection (server limit).
pub const MAX_WAIT_SECS: u64 = 300;
/// How long connecting to the server may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an ordinary (non-waiting) request may take end to end.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Extra time given to long requests (`wait`, `exec`) over their own timeout.
pub const LONG_REQUEST_SLACK: Duration = Duration::from_secs(30);

/// Everything that can go wrong talking to the API.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error envelope (or a non-JSON error).
    #[error("{message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// The base URL could not be parsed or cannot carry paths.
    #[error("invalid server URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },

    /// The config file exists but cannot be used.
    #[error("config file {path}: {reason}")]
    Config { path: PathBuf, reason: String },
    /// No token was given and none could be read from a data directory.
    #[error("no API token: set WARREN_TOKEN or make one of {} readable", display_paths(.tried))]
    NoToken { tried: Vec<PathBuf> },
    /// The HTTP client could not be built.
    #[error("could not set up the HTTP client")]
    Setup(#[source] reqwest::Error),
    /// The request did not complete (connection refused, timeout, reset...).
    #[error("could not reach the Warren server at {url}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The server answered 2xx with a body that is not the expected JSON.
    #[error("unexpected response from the Warren server (HTTP {status})")]
    BadResponse {
        status: u16,
        #[source]
        source: serde_json::Error,
    },
    /// A streaming exec ended with an `error` frame (the server's code), or
    /// failed on the client side (`timeout`, `stream_closed`, ...).
    #[error("{message}")]
    Stream { code: String, message: String },
    /// The WebSocket of a streaming exec failed.
    #[error("WebSocket to the Warren server at {url} failed")]
    WebSocket {
        url: String,
        #[source]
        source: Box<tokio_tungstenite::tungstenite::Error>,
    },
    /// A streaming exec frame from the server is not valid JSON.
    #[error("unexpected frame from the Warren server")]
    BadFrame {
        #[source]
        source: serde_json::Error,
    },
    /// A request could not be encoded.
    #[error("could not encode the request")]
    Encode(#[source] serde_json::Error),
    /// The token cannot be sent.
    #[error("invalid API token: {reason}")]
    InvalidToken { reason: String },
    /// A local file could not be read.
    #[error("could not {what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

fn display_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

impl ClientError {
    /// The stable error code: the server's for API errors, else one of
    /// `invalid_url`, `no_token`, `setup`, `transport`, `bad_response`,
    /// `invalid_token`, `encode`; for streams the server's code from an
    /// `error` frame, or `timeout`, `stream_closed`, `websocket`.
    pub fn code(&self) -> &str {
        match self {
            ClientError::Api { code, .. } | ClientError::Stream { code, .. } => code,
            ClientError::InvalidUrl { .. } => "invalid_url",
            ClientError::Config { .. } => "invalid_config",
            ClientError::NoToken { .. } => "no_token",
            ClientError::Setup(_) => "setup",
            ClientError::Transport { .. } => "transport",
            ClientError::BadResponse { .. } | ClientError::BadFrame { .. } => "bad_response",
            ClientError::WebSocket { .. } => "websocket",
            ClientError::Encode(_) => "encode",
            ClientError::InvalidToken { .. } => "invalid_token",
            ClientError::Io { .. } => "io",
        }
    }

    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } | ClientError::BadResponse { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }

    /// Builds the error for a non-2xx response from its status and body.
    pub(crate) fn from_response(status: StatusCode, body: &[u8]) -> Self {
        match serde_json::from_slice::<ErrorBody>(body) {
            Ok(b) => ClientError::Api {
                status: status.as_u16(),
                code: b.error.code,
                message: b.error.message,
            },
            Err(_) => {
                let text = String::from_utf8_lossy(body);
                let text: String = text.trim().chars().take(200).collect();
                let message = if text.is_empty() {
                    format!(
                        "HTTP {} {}",
                        status.as_u16(),
                        status.canonical_reason().unwrap_or("")
                    )
                    .trim_end()
                    .to_string()
                } else {
                    format!("HTTP {}: {text}", status.as_u16())
                };
                ClientError::Api {
                    status: status.as_u16(),
                    code: format!("http_{}", status.as_u16()),
                    message,
                }
            }
        }
    }
}

/// Filters for [`Client::list_sandboxes`]; all optional.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListSandboxes {
    /// Only sandboxes carrying all of these tags.
    pub tags: BTreeMap<String, String>,
    pub name: Option<String>,
    pub state: Option<SandboxState>,
    /// Page size (server default when absent; at most 1000).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

impl ListSandboxes {
    fn query(&self) -> Vec<(&'static str, String)> {
        let mut q: Vec<(&'static str, String)> = self
            .tags
            .iter()
            .map(|(k, v)| ("tag", format!("{k}={v}")))
            .collect();
        if let Some(n) = &self.name {
            q.push(("name", n.clone()));
        }
        if let Some(s) = self.state {
            q.push(("state", state_str(s).to_string()));
        }
        if let Some(l) = self.limit {
            q.push(("limit", l.to_string()));
        }
        if let Some(c) = &self.cursor {
            q.push(("cursor", c.clone()));
        }
        q
    }
}

/// The wire name of a state (`running`, ...).
pub fn state_str(s: SandboxState) -> &'static str {
    match s {
        SandboxState::Creating => "creating",
        SandboxState::Running => "running",
        SandboxState::Paused => "paused",
        SandboxState::Terminating => "terminating",
        SandboxState::Terminated => "terminated",
    }
}

/// A handle on one Warren server with one token. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    token: String,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base.as_str())
            .field("token", &"<redacted>")
            .finish()
    }
}

impl Client {
    /// A client for the server at `url` (e.g. `http://127.0.0.1:7070`).
    pub fn new(url: &str, token: impl Into<String>) -> Result<Self, ClientError> {
        let invalid = |reason: String| ClientError::InvalidUrl {
            url: url.to_string(),
            reason,
        };
        let base = Url::parse(url).map_err(|e| invalid(e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(invalid("the scheme must be http or https".into()));
        }
        if base.cannot_be_a_base() {
            return Err(invalid("the URL cannot carry paths".into()));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(ClientError::Setup)?;
        Ok(Client {
            http,
            base,
            token: token.into().trim().to_string(),
        })
    }

    /// A client from the environment: `WARREN_URL` (default
    /// [`DEFAULT_URL`]) and `WARREN_TOKEN`; without a token, the
    /// `admin-token` of `$WARREN_DATA_DIR` or else of [`DEFAULT_DATA_DIR`],
    /// whichever is readable first.
    pub fn from_env() -> Result<Self, ClientError> {
        Self::from_env_in(None)
    }

    /// Like [`Client::from_env`], but tries `data_dir/admin-token` first.
    ///
    /// Between the environment and the local admin token sits the config
    /// file (see [`config_path`]): JSON `{"url": "...", "token": "..."}`,
    /// either field optional.
    pub fn from_env_in(data_dir: Option<&Path>) -> Result<Self, ClientError> {
        let file = read_config()?;
        let url = std::env::var("WARREN_URL")
            .ok()
            .filter(|u| !u.is_empty())
            .or(file.url)
            .unwrap_or_else(|| DEFAULT_URL.to_string());
        let token = match std::env::var("WARREN_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
            .or(file.token)
        {
            Some(t) => t,
            None => {
                let env_dir = std::env::var_os("WARREN_DATA_DIR").map(PathBuf::from);
                read_admin_token(&token_candidates(data_dir, env_dir.as_deref()))?
            }
        };
        Self::new(&url, token)
    }

    /// The server's base URL.
    pub fn url(&self) -> &str {
        self.base.as_str()
    }

    // --- sandboxes ---

    /// `POST /v1/sandboxes`
    pub async fn create_sandbox(&self, req: &CreateSandboxRequest) -> Result<Sandbox, ClientError> {
        let rb = self.request(Method::POST, &["v1", "sandboxes"])?.json(req);
        self.send(rb).await
    }

    /// `GET /v1/sandboxes`: one page.
    pub async fn list_sandboxes(&self, filter: &ListSandboxes) -> Result<SandboxList, ClientError> {
        let rb = self
            .request(Method::GET, &["v1", "sandboxes"])?
            .query(&filter.query());
        self.send(rb).await
    }

    /// Every page of `GET /v1/sandboxes`, following `next_cursor`.
    pub async fn list_all_sandboxes(
        &self,
        filter: &ListSandboxes,
    ) -> Result<Vec<Sandbox>, ClientError> {
        let mut filter = filter.clone();
        let mut out = Vec::new();
        loop {
            let page = self.list_sandboxes(&filter).await?;
            out.extend(page.sandboxes);
            match page.next_cursor {
                // A cursor that does not move would loop forever.
                Some(c) if filter.cursor.as_deref() != Some(c.as_str()) => filter.cursor = Some(c),
                _ => return Ok(out),
            }
        }
    }

    /// `GET /v1/sandboxes/{id}`
    pub async fn get_sandbox(&self, id: &str) -> Result<Sandbox, ClientError> {
        let rb = self.request(Method::GET, &["v1", "sandboxes", id])?;
        self.send(rb).await
    }

    /// `PUT /v1/sandboxes/{id}/tags`: replaces all tags.
    pub async fn set_tags(
        &self,
        id: &str,
        tags: BTreeMap<String, String>,
    ) -> Result<Sandbox, ClientError> {
        let rb = self
            .request(Method::PUT, &["v1", "sandboxes", id, "tags"])?
            .json(&SetTagsRequest { tags });
        self.send(rb).await
    }

    /// `POST /v1/sandboxes/{id}/terminate`
    pub async fn terminate_sandbox(&self, id: &str) -> Result<Sandbox, ClientError> {
        let rb = self.request(Method::POST, &["v1", "sandboxes", id, "terminate"])?;
        self.send(rb).await
    }

    /// `GET /v1/sandboxes/{id}/wait`: returns once the sandbox has ended or
    /// after `timeout` (clamped to [`MAX_WAIT_SECS`]), whichever is first;
    /// check `state` to tell which.
    pub async fn wait_sandbox(&self, id: &str, timeout: Duration) -> Result<Sandbox, ClientError> {
        let secs = timeout.as_secs().min(MAX_WAIT_SECS);
        let rb = self
            .request(Method::GET, &["v1", "sandboxes", id, "wait"])?
            .query(&[("timeout_secs", secs)])
            .timeout(Duration::from_secs(secs) + LONG_REQUEST_SLACK);
        self.send(rb).await
    }

    /// `POST /v1/sandboxes/{id}/exec`: runs a command to completion and
    /// returns its buffered output. Without `timeout_secs` the HTTP request
    /// has no deadline either.
    pub async fn exec(&self, id: &str, req: &ExecRequest) -> Result<ExecResult, ClientError> {
        let mut rb = self
            .request(Method::POST, &["v1", "sandboxes", id, "exec"])?
            .json(req);
        rb = match req.timeout_secs {
            Some(s) => rb.timeout(Duration::from_secs(s) + LONG_REQUEST_SLACK),
            // Override the default deadline: the command may run long.
            None => rb.timeout(Duration::from_secs(u64::from(u32::MAX))),
        };
        self.send(rb).await
    }

    // --- workspaces and tokens ---

    /// `POST /v1/workspaces` (admin tokens only).
    pub async fn create_workspace(&self, name: &str) -> Result<Workspace, ClientError> {
        let rb = self
            .request(Method::POST, &["v1", "workspaces"])?
            .json(&CreateWorkspaceRequest {
                name: name.to_string(),
            });
        self.send(rb).await
    }

    /// `GET /v1/workspaces`
    pub async fn list_workspaces(&self) -> Result<Vec<Workspace>, ClientError> {
        let rb = self.request(Method::GET, &["v1", "workspaces"])?;
        self.send(rb).await
    }

    /// `POST /v1/tokens`: the returned `token` field holds the secret.
    pub async fn create_token(&self, req: &CreateTokenRequest) -> Result<Token, ClientError> {
        let rb = self.request(Method::POST, &["v1", "tokens"])?.json(req);
        self.send(rb).await
    }

    /// `GET /v1/tokens`
    pub async fn list_tokens(&self) -> Result<Vec<Token>, ClientError> {
        let rb = self.request(Method::GET, &["v1", "tokens"])?;
        self.send(rb).await
    }

    /// `POST /v1/tokens/{id}/revoke`
    pub async fn revoke_token(&self, id: &str) -> Result<(), ClientError> {
        let rb = self.request(Method::POST, &["v1", "tokens", id, "revoke"])?;
        self.send_bytes(rb).await.map(|_| ())
    }

    /// `GET /v1/sandboxes/{id}/logs`: the main command's retained output
    /// (the last `tail` bytes when given) and how many older bytes it omits.
    pub async fn logs(&self, id: &str, tail: Option<u64>) -> Result<(Vec<u8>, u64), ClientError> {
        let mut rb = self.request(Method::GET, &["v1", "sandboxes", id, "logs"])?;
        if let Some(t) = tail {
            rb = rb.query(&[("tail", t)]);
        }
        self.bytes_and_count(rb, "x-warren-log-skipped").await
    }

    // --- plumbing ---

    /// Sends `rb` and returns the body and the number in `header` (0 when
    /// absent); a non-2xx answer becomes its API error.
    pub(crate) async fn bytes_and_count(
        &self,
        rb: RequestBuilder,
        header: &str,
    ) -> Result<(Vec<u8>, u64), ClientError> {
        let transport = |source| ClientError::Transport {
            url: self.base.to_string(),
            source,
        };
        let resp = rb.send().await.map_err(transport)?;
        let status = resp.status();
        let count = resp
            .headers()
            .get(header)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let body = resp.bytes().await.map_err(transport)?;
        if !status.is_success() {
            return Err(ClientError::from_response(status, &body));
        }
        Ok((body.to_vec(), count))
    }

    /// The URL of `segments` under the base, each segment percent-encoded.
    pub(crate) fn endpoint(&self, segments: &[&str]) -> Result<Url, ClientError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| ClientError::InvalidUrl {
                url: self.base.to_string(),
                reason: "the URL cannot carry paths".into(),
            })?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    pub(crate) fn request(
        &self,
        method: Method,
        segments: &[&str],
    ) -> Result<RequestBuilder, ClientError> {
        Ok(self
            .http
            .request(method, self.endpoint(segments)?)
            .bearer_auth(&self.token)
            .timeout(REQUEST_TIMEOUT))
    }

    pub(crate) async fn send_bytes(
        &self,
        rb: RequestBuilder,
    ) -> Result<(StatusCode, Vec<u8>), ClientError> {
        let transport = |source| ClientError::Transport {
            url: self.base.to_string(),
            source,
        };
        let resp = rb.send().await.map_err(transport)?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(transport)?;
        if !status.is_success() {
            return Err(ClientError::from_response(status, &body));
        }
        Ok((status, body.to_vec()))
    }

    pub(crate) async fn send<T: DeserializeOwned>(
        &self,
        rb: RequestBuilder,
    ) -> Result<T, ClientError> {
        let (status, body) = self.send_bytes(rb).await?;
        decode(status, &body)
    }
}

pub(crate) fn decode<T: DeserializeOwned>(
    status: StatusCode,
    body: &[u8],
) -> Result<T, ClientError> {
    serde_json::from_slice(body).map_err(|source| ClientError::BadResponse {
        status: status.as_u16(),
        source,
    })
}

/// The CLI's config file: `$WARREN_CONFIG`, else
/// `$XDG_CONFIG_HOME/warren/config.json`, else `~/.config/warren/config.json`.
pub fn config_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("WARREN_CONFIG").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("warren").join("config.json"))
}

/// What the config file may set.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    url: Option<String>,
    token: Option<String>,
}

fn read_config() -> Result<ConfigFile, ClientError> {
    let Some(path) = config_path() else {
        return Ok(ConfigFile::default());
    };
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| ClientError::Config {
            path: path.clone(),
            reason: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ConfigFile::default()),
        Err(e) => Err(ClientError::Config {
            path,
            reason: e.to_string(),
        }),
    }
}

/// Where to look for an `admin-token`, in order, without duplicates.
fn token_candidates(explicit: Option<&Path>, env_dir: Option<&Path>) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for dir in [explicit, env_dir, Some(Path::new(DEFAULT_DATA_DIR))]
        .into_iter()
        .flatten()
    {
        let p = dir.join("admin-token");
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

/// The first readable, non-empty token among `paths`.
fn read_admin_token(paths: &[PathBuf]) -> Result<String, ClientError> {
    paths
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .find(|s| !s.is_empty())
        .ok_or_else(|| ClientError::NoToken {
            tried: paths.to_vec(),
        })
}

#[cfg(test)]
pub(crate) mod tests {

    #[test]
    fn config_file_fields() {
        let c: ConfigFile =
            serde_json::from_str(r#"{"url":"http://127.0.0.1:9","token":"wrn_x"}"#).unwrap();
        assert_eq!(c.url.as_deref(), Some("http://127.0.0.1:9"));
        assert_eq!(c.token.as_deref(), Some("wrn_x"));
        assert!(serde_json::from_str::<ConfigFile>(r#"{"tokn":"x"}"#).is_err());
        let empty: ConfigFile = serde_json::from_str("{}").unwrap();
        assert!(empty.url.is_none() && empty.token.is_none());
    }

    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn endpoint_encodes_segments_and_keeps_a_prefix() {
        let c = Client::new("http://127.0.0.1:1/base/", "t").unwrap();
        let u = c.endpoint(&["v1", "sandboxes", "a/b c"]).unwrap();
        assert_eq!(u.as_str(), "http://127.0.0.1:1/base/v1/sandboxes/a%2Fb%20c");
        let c = Client::new("http://127.0.0.1:1", "t").unwrap();
        let u = c.endpoint(&["v1", "tokens"]).unwrap();
        assert_eq!(u.as_str(), "http://127.0.0.1:1/v1/tokens");
    }

    #[test]
    fn bad_urls_are_refused() {
        for url in ["not a url", "ftp://x/", "mailto:a@b"] {
            let e = Client::new(url, "t").unwrap_err();
            assert_eq!(e.code(), "invalid_url", "{url}");
        }
    }

    #[test]
    fn debug_hides_the_token() {
        let c = Client::new("http://127.0.0.1:1", "s3cret").unwrap();
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn error_envelopes_keep_code_and_message() {
        let body = br#"{"error":{"code":"sandbox_not_found","message":"no sandbox sb-1"}}"#;
        let e = ClientError::from_response(StatusCode::NOT_FOUND, body);
        assert_eq!(e.code(), "sandbox_not_found");
        assert_eq!(e.to_string(), "no sandbox sb-1");
        assert_eq!(e.status(), Some(404));
        let e = ClientError::from_response(StatusCode::BAD_GATEWAY, b"upstream down");
        assert_eq!(e.code(), "http_502");
        assert_eq!(e.to_string(), "HTTP 502: upstream down");
        let e = ClientError::from_response(StatusCode::BAD_GATEWAY, b"");
        assert_eq!(e.to_string(), "HTTP 502 Bad Gateway");
    }

    #[test]
    fn list_query() {
        let mut f = ListSandboxes {
            state: Some(SandboxState::Running),
            limit: Some(10),
            ..Default::default()
        };
        f.tags.insert("team".into(), "a=b".into());
        assert_eq!(
            f.query(),
            vec![
                ("tag", "team=a=b".to_string()),
                ("state", "running".to_string()),
                ("limit", "10".to_string()),
            ]
        );
    }

    #[test]
    fn admin_token_lookup() {
        let dir = tempfile_dir();
        let empty = dir.join("empty");
        let full = dir.join("full");
        std::fs::create_dir_all(&empty).unwrap();
        std::fs::create_dir_all(&full).unwrap();
        std::fs::write(empty.join("admin-token"), "\n").unwrap();
        std::fs::write(full.join("admin-token"), "wt_abc\n").unwrap();
        let c = token_candidates(Some(&empty), Some(&full));
        assert_eq!(c[0], empty.join("admin-token"));
        assert_eq!(c[2], Path::new("/var/lib/warren/admin-token"));
        assert_eq!(read_admin_token(&c[..2]).unwrap(), "wt_abc");
        let e = read_admin_token(&[dir.join("missing")]).unwrap_err();
        assert_eq!(e.code(), "no_token");
        assert_eq!(token_candidates(Some(&full), Some(&full)).len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "warren-client-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A one-shot HTTP server answering one request with `response`;
    /// returns its URL and the request it received (head and body).
    pub(crate) async fn one_shot(
        response: impl Into<String>,
    ) -> (String, tokio::task::JoinHandle<String>) {
        let response = response.into();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let h = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = vec![0u8; 8192];
            let mut got = Vec::new();
            // Read the head, then as much body as it announces.
            let mut want = None;
            for _ in 0..1000 {
                if want.is_none() {
                    if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        want = Some(end + 4 + len);
                    }
                }
                if want.is_some_and(|w| got.len() >= w) {
                    break;
                }
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(response.as_bytes()).await.unwrap();
            s.shutdown().await.unwrap();
            String::from_utf8_lossy(&got).into_owned()
        });
        (url, h)
    }

    /// A complete HTTP/1.1 response with a JSON body.
    pub(crate) fn response(status: u16, body: &str) -> String {
        format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    #[tokio::test]
    async fn api_errors_come_back_with_their_code() {
        let body = r#"{"error":{"code":"sandbox_not_found","message":"no such sandbox"}}"#;
        let (url, h) = one_shot(response(404, body)).await;
        let c = Client::new(&url, "tok").unwrap();
        let e = c.get_sandbox("sb-x").await.unwrap_err();
        assert_eq!(e.code(), "sandbox_not_found");
        assert_eq!(e.to_string(), "no such sandbox");
        let req = h.await.unwrap();
        assert!(req.starts_with("GET /v1/sandboxes/sb-x "), "{req}");
        assert!(req
            .to_ascii_lowercase()
            .contains("authorization: bearer tok"));
    }

    #[tokio::test]
    async fn garbage_success_bodies_are_bad_responses() {
        let (url, _h) =
            one_shot("HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello")
                .await;
        let c = Client::new(&url, "tok").unwrap();
        let e = c.list_tokens().await.unwrap_err();
        assert_eq!(e.code(), "bad_response");
    }

    #[tokio::test]
    async fn a_closed_port_is_a_transport_error() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let c = Client::new(&format!("http://{addr}"), "tok").unwrap();
        let e = c.list_workspaces().await.unwrap_err();
        assert_eq!(e.code(), "transport");
    }
}
