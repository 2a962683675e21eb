//! A minimal OCI distribution client: manifests and blobs of one
//! repository, with anonymous, basic and bearer-token authentication.
//!
//! Protocol subset (distribution spec v1.1, pull side):
//! `GET /v2/<repo>/manifests/<ref>` with an `Accept` list, and
//! `GET /v2/<repo>/blobs/<digest>` (optionally with `Range: bytes=N-`).
//! On `401`, the `WWW-Authenticate` challenge decides: `Basic` resends with
//! the configured username and password; `Bearer realm=..,service=..,
//! scope=..` fetches a token from the realm (with basic credentials if
//! configured, anonymously otherwise) and resends with it. Tokens are
//! cached per client (one repository, one pull).

use std::time::Duration;

use base64::Engine as _;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, RANGE, WWW_AUTHENTICATE};
use reqwest::{Response, StatusCode};
use tokio::sync::RwLock;

use crate::config::Credentials;
use crate::error::PullError;

/// Connect timeout for registry and token requests.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// A transfer that delivers no byte for this long is abandoned.
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Largest token response accepted.
const MAX_TOKEN_RESPONSE: usize = 1 << 20;

/// Builds the shared HTTP client (rustls, no proxy from the environment
/// so that loopback registries are reached directly).
pub fn http_client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .use_rustls_tls()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .no_proxy()
        .user_agent(concat!("warren/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Client for one repository of one registry.
#[derive(Debug)]
pub struct RepoClient {
    http: reqwest::Client,
    registry: String,
    base: String,
    repository: String,
    insecure: bool,
    credentials: Option<Credentials>,
    /// The `Authorization` header that last worked (or a given token).
    auth: RwLock<Option<HeaderValue>>,
    /// Token scope actions asked for when a challenge names none
    /// (`pull`, or `pull,push` for pushes).
    actions: &'static str,
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic realm=...`.
    Basic,
    /// `Bearer realm=...,service=...,scope=...`.
    Bearer {
        /// Token endpoint.
        realm: String,
        /// `service` parameter, if any.
        service: Option<String>,
        /// `scope` parameter, if any.
        scope: Option<String>,
    },
}

impl RepoClient {
    /// A client for `registry` (`host[:port]`, `docker.io` meaning Docker
    /// Hub's API host) and `repository`.
    pub fn new(
        http: reqwest::Client,
        registry: &str,
        repository: &str,
        insecure: bool,
        credentials: Option<Credentials>,
    ) -> Self {
        let host = if registry == warren_image::DEFAULT_REGISTRY {
            "registry-1.docker.io"
        } else {
            registry
        };
        let scheme = if insecure { "http" } else { "https" };
        let auth = match &credentials {
            Some(Credentials::Bearer { token }) => {
                HeaderValue::from_str(&format!("Bearer {token}"))
                    .ok()
                    .map(|mut v| {
                        v.set_sensitive(true);
                        v
                    })
            }
            _ => None,
        };
        Self {
            http,
            registry: registry.to_owned(),
            base: format!("{scheme}://{host}/v2/{repository}"),
            repository: repository.to_owned(),
            insecure,
            credentials,
            auth: RwLock::new(auth),
            actions: "pull",
        }
    }

    /// The same client asking tokens for `pull,push` (pushes).
    pub fn for_push(mut self) -> Self {
        self.actions = "pull,push";
        self
    }

    /// `<scheme>://<host>/v2/<repository>`.
    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    /// Whether plain HTTP is allowed for this registry.
    pub(crate) fn insecure(&self) -> bool {
        self.insecure
    }

    /// The shared HTTP client.
    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The `Authorization` header to send, if any is known yet.
    pub(crate) async fn authorization(&self) -> Option<HeaderValue> {
        self.auth.read().await.clone()
    }

    /// Answers the challenge of a `401` response (basic credentials, or a
    /// token from the realm); the request is then sent again.
    pub(crate) async fn answer_challenge(&self, response: &Response) -> Result<(), PullError> {
        let challenge = response
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_challenge);
        self.authenticate(challenge).await
    }

    /// The error for a request still refused after answering the
    /// challenge: credentials missing, or rejected.
    pub(crate) fn still_unauthorized(&self) -> PullError {
        match self.credentials {
            None => PullError::AuthRequired {
                registry: self.registry.clone(),
            },
            Some(_) => PullError::AuthRejected {
                registry: self.registry.clone(),
                reason: "the registry refused the credentials".into(),
            },
        }
    }

    /// The registry name.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// Fetches a manifest by tag or digest. Returns the body, its content
    /// type and the `Docker-Content-Digest` header.
    pub async fn manifest(
        &self,
        target: &str,
        accept: &[&str],
        display: &str,
    ) -> Result<(Vec<u8>, Option<String>, Option<String>), PullError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            ACCEPT,
            HeaderValue::from_str(&accept.join(", ")).expect("media types are ASCII"),
        );
        let url = format!("{}/manifests/{target}", self.base);
        let response = self.get(&url, headers, display).await?;
        let content_type = header_str(&response, reqwest::header::CONTENT_TYPE);
        let digest = header_str(&response, "docker-content-digest");
        let body = self
            .read_bounded(response, warren_image::oci::MAX_DOCUMENT_BYTES)
            .await?;
        Ok((body, content_type, digest))
    }

    /// Fetches a small blob (a config) whole, bounded.
    pub async fn blob_bytes(&self, digest: &str, display: &str) -> Result<Vec<u8>, PullError> {
        let url = format!("{}/blobs/{digest}", self.base);
        let response = self.get(&url, HeaderMap::new(), display).await?;
        self.read_bounded(response, warren_image::oci::MAX_DOCUMENT_BYTES)
            .await
    }

    /// Starts a blob download, from byte `offset` if non-zero. The status
    /// tells whether the range was honoured (`206`) or not (`200`).
    pub async fn blob(
        &self,
        digest: &str,
        offset: u64,
        display: &str,
    ) -> Result<Response, PullError> {
        let mut headers = HeaderMap::new();
        if offset > 0 {
            headers.insert(
                RANGE,
                HeaderValue::from_str(&format!("bytes={offset}-")).expect("ASCII"),
            );
        }
        let url = format!("{}/blobs/{digest}", self.base);
        self.get(&url, headers, display).await
    }

    /// A GET with authentication: tries the cached credentials, answers
    /// one challenge, and maps error statuses.
    async fn get(
        &self,
        url: &str,
        headers: HeaderMap,
        display: &str,
    ) -> Result<Response, PullError> {
        let first = self.send(url, headers.clone()).await?;
        let response = if first.status() == StatusCode::UNAUTHORIZED {
            let challenge = first
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_challenge);
            self.authenticate(challenge).await?;
            let retry = self.send(url, headers).await?;
            if retry.status() == StatusCode::UNAUTHORIZED {
                return Err(match self.credentials {
                    None => PullError::AuthRequired {
                        registry: self.registry.clone(),
                    },
                    Some(_) => PullError::AuthRejected {
                        registry: self.registry.clone(),
                        reason: "the registry refused the credentials".into(),
                    },
                });
            }
            retry
        } else {
            first
        };
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        Err(match status {
            StatusCode::NOT_FOUND => PullError::NotFound {
                reference: display.to_owned(),
            },
            StatusCode::FORBIDDEN => PullError::AuthRejected {
                registry: self.registry.clone(),
                reason: format!("access to {} denied", self.repository),
            },
            _ => PullError::RegistryStatus {
                registry: self.registry.clone(),
                status: status.as_u16(),
                what: display.to_owned(),
            },
        })
    }

    async fn send(&self, url: &str, mut headers: HeaderMap) -> Result<Response, PullError> {
        if let Some(auth) = self.auth.read().await.clone() {
            headers.insert(AUTHORIZATION, auth);
        }
        self.http
            .get(url)
            .headers(headers)
            .send()
            .await
            .map_err(|source| PullError::Connect {
                registry: self.registry.clone(),
                source,
            })
    }

    /// Answers a challenge by setting the `Authorization` header to use.
    async fn authenticate(&self, challenge: Option<Challenge>) -> Result<(), PullError> {
        let auth_required = || PullError::AuthRequired {
            registry: self.registry.clone(),
        };
        let header = match challenge {
            Some(Challenge::Basic) => match &self.credentials {
                Some(Credentials::Basic { username, password }) => basic_header(username, password),
                Some(Credentials::Bearer { .. }) => {
                    return Err(PullError::AuthRejected {
                        registry: self.registry.clone(),
                        reason: "the registry asks for basic auth, but only a token is configured"
                            .into(),
                    })
                }
                None => return Err(auth_required()),
            },
            Some(Challenge::Bearer {
                realm,
                service,
                scope,
            }) => {
                if matches!(self.credentials, Some(Credentials::Bearer { .. })) {
                    return Err(PullError::AuthRejected {
                        registry: self.registry.clone(),
                        reason: "the registry refused the configured token".into(),
                    });
                }
                let token = self.fetch_token(&realm, service, scope).await?;
                let mut v = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                    PullError::InvalidResponse {
                        registry: self.registry.clone(),
                        reason: "token is not a valid header value".into(),
                    }
                })?;
                v.set_sensitive(true);
                v
            }
            None => match &self.credentials {
                None => return Err(auth_required()),
                Some(_) => {
                    return Err(PullError::InvalidResponse {
                        registry: self.registry.clone(),
                        reason: "401 without a usable WWW-Authenticate challenge".into(),
                    })
                }
            },
        };
        *self.auth.write().await = Some(header);
        Ok(())
    }

    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<String>,
        scope: Option<String>,
    ) -> Result<String, PullError> {
        let realm_url = reqwest::Url::parse(realm).map_err(|_| PullError::InvalidResponse {
            registry: self.registry.clone(),
            reason: format!("token realm {realm:?} is not a URL"),
        })?;
        match realm_url.scheme() {
            "https" => {}
            "http" if self.insecure => {}
            _ => {
                return Err(PullError::InsecureNotAllowed {
                    registry: self.registry.clone(),
                    url: realm.to_owned(),
                })
            }
        }
        let scope =
            scope.unwrap_or_else(|| format!("repository:{}:{}", self.repository, self.actions));
        let mut query: Vec<(&str, String)> = vec![("scope", scope)];
        if let Some(service) = service {
            query.push(("service", service));
        }
        let mut request = self.http.get(realm_url).query(&query);
        if let Some(Credentials::Basic { username, password }) = &self.credentials {
            request = request.header(AUTHORIZATION, basic_header(username, password));
        }
        let response = request.send().await.map_err(|source| PullError::Connect {
            registry: self.registry.clone(),
            source,
        })?;
        match response.status() {
            s if s.is_success() => {}
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(match self.credentials {
                    None => PullError::AuthRequired {
                        registry: self.registry.clone(),
                    },
                    Some(_) => PullError::AuthRejected {
                        registry: self.registry.clone(),
                        reason: "the token service refused the credentials".into(),
                    },
                })
            }
            s => {
                return Err(PullError::RegistryStatus {
                    registry: self.registry.clone(),
                    status: s.as_u16(),
                    what: "token request".into(),
                })
            }
        }
        let body = self
            .read_bounded(response, MAX_TOKEN_RESPONSE as u64)
            .await?;
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
        }
        let parsed: TokenResponse =
            serde_json::from_slice(&body).map_err(|e| PullError::InvalidResponse {
                registry: self.registry.clone(),
                reason: format!("token response does not parse: {e}"),
            })?;
        parsed
            .token
            .or(parsed.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| PullError::InvalidResponse {
                registry: self.registry.clone(),
                reason: "token response has no token".into(),
            })
    }

    /// Reads a whole response body, refusing more than `max` bytes.
    async fn read_bounded(&self, mut response: Response, max: u64) -> Result<Vec<u8>, PullError> {
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|source| PullError::Connect {
                registry: self.registry.clone(),
                source,
            })?
        {
            if (body.len() + chunk.len()) as u64 > max {
                return Err(PullError::InvalidResponse {
                    registry: self.registry.clone(),
                    reason: format!("document larger than {max} bytes"),
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

fn basic_header(username: &str, password: &str) -> HeaderValue {
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    let mut v = HeaderValue::from_str(&format!("Basic {encoded}")).expect("base64 is ASCII");
    v.set_sensitive(true);
    v
}

fn header_str(response: &Response, name: impl reqwest::header::AsHeaderName) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Parses a `WWW-Authenticate` header (one challenge; parameters may be
/// quoted and contain commas).
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut params = std::collections::HashMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            let mut escaped = false;
            for c in chars.by_ref() {
                match (escaped, c) {
                    (false, '\\') => escaped = true,
                    (false, '"') => break,
                    (_, c) => {
                        value.push(c);
                        escaped = false;
                    }
                }
            }
        } else {
            while let Some(c) = chars.peek() {
                if *c == ',' {
                    break;
                }
                value.push(*c);
                chars.next();
            }
        }
        params.insert(key.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some(Challenge::Basic),
        "bearer" => Some(Challenge::Bearer {
            realm: params.remove("realm")?,
            service: params.remove("service"),
            scope: params.remove("scope"),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse() {
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull,push""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/busybox:pull,push".into()),
            })
        );
        assert_eq!(
            parse_challenge("Bearer realm=https://t.example/token"),
            Some(Challenge::Bearer {
                realm: "https://t.example/token".into(),
                service: None,
                scope: None,
            })
        );
        assert_eq!(parse_challenge("Bearer service=x"), None);
        assert_eq!(parse_challenge("Negotiate abc"), None);
    }
}
