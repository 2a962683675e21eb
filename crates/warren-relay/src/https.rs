//! The HTTPS front: TLS (ALPN h2, http/1.1), then per request: the Host
//! names `<sandbox-id>-<port>.<base_domain>`, the route says where the
//! sandbox is and what it exposes, connect tokens are checked, and the
//! request goes to a pooled upstream connection over a tunnel stream
//! (HTTP/1.1, or h2c for `h2_ports`). WebSocket upgrades pass through.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn, Instrument};

use crate::dialer::{DialError, Dialer};
use crate::link::StreamMode;
use crate::pages::{error_page, ErrorCode};
use crate::route::{valid_sandbox_id, PortProtocol, RouteCache, RouteState};
use crate::target::{BoxStream, OpenError};
use crate::token::{check_token, unix_now};

/// Response body of the front.
pub type Body = BoxBody<Bytes, hyper::Error>;

pub(crate) fn full(b: Bytes) -> Body {
    Full::new(b)
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// Header carrying a connect token.
pub const TOKEN_HEADER: &str = "x-warren-connect-token";
/// Query parameter carrying a connect token.
pub const TOKEN_PARAM: &str = "_warren_token";
/// Cookie carrying a connect token.
pub const TOKEN_COOKIE: &str = "warren_token";
/// Header with the verified token's user data (client copies are removed).
pub const USER_DATA_HEADER: &str = "x-warren-user-data";

/// HTTP/2 windows towards clients and h2c upstreams.
const H2_STREAM_WINDOW: u32 = 4 * 1024 * 1024;
const H2_CONN_WINDOW: u32 = 16 * 1024 * 1024;

pub(crate) struct Front {
    pub(crate) base_domain: String,
    pub(crate) cache: Arc<RouteCache>,
    pub(crate) token_key: Vec<u8>,
    pub(crate) upstream_timeout: Duration,
    /// Turns true when the relay stops: upgraded connections end too.
    stop: watch::Receiver<bool>,
    h1: Client<LinkConnector, Incoming>,
    h2: Client<LinkConnector, Incoming>,
}

impl Front {
    pub(crate) fn new(
        base_domain: String,
        cache: Arc<RouteCache>,
        dialer: Arc<Dialer>,
        token_key: Vec<u8>,
        upstream_timeout: Duration,
        idle: Duration,
        stop: watch::Receiver<bool>,
    ) -> Arc<Front> {
        let connector = LinkConnector {
            base_domain: base_domain.clone(),
            cache: cache.clone(),
            dialer: dialer.clone(),
        };
        let mut b = Client::builder(TokioExecutor::new());
        b.pool_idle_timeout(idle)
            .pool_timer(TokioTimer::new())
            .pool_max_idle_per_host(256);
        let h1 = b.build(connector.clone());
        b.http2_only(true)
            .http2_initial_stream_window_size(H2_STREAM_WINDOW)
            .http2_initial_connection_window_size(H2_CONN_WINDOW)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .timer(TokioTimer::new());
        let h2 = b.build(connector);
        Arc::new(Front {
            base_domain,
            cache,
            token_key,
            upstream_timeout,
            stop,
            h1,
            h2,
        })
    }
}

/// Splits `<sandbox-id>-<port>.<base_domain>[:port]` (the sandbox id may
/// contain '-': the split is on the last one).
pub fn parse_host(host: &str, base_domain: &str) -> Option<(String, u16)> {
    let host = host.trim_end_matches('.');
    let host = match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    let host = host.to_ascii_lowercase();
    let label = host.strip_suffix(base_domain)?.strip_suffix('.')?;
    if label.contains('.') {
        return None;
    }
    let (sandbox, port) = label.rsplit_once('-')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    if !valid_sandbox_id(sandbox) || port.to_string().len() != label.len() - sandbox.len() - 1 {
        return None;
    }
    Some((sandbox.to_string(), port))
}

/// Accepts HTTPS clients until `shutdown`.
pub(crate) async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    front: Arc<Front>,
    handshake_timeout: Duration,
    header_timeout: Duration,
    limit: Arc<tokio::sync::Semaphore>,
    shutdown: watch::Receiver<bool>,
) {
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONN_WINDOW)
        .max_concurrent_streams(1000)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let builder = Arc::new(builder);
    let mut stop = shutdown.clone();
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "https accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        // At the connection limit a new client is closed at once.
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            debug!(%peer, "https connection refused: relay at its connection limit");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let front = front.clone();
        let builder = builder.clone();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    debug!(%peer, error = %e, "tls handshake failed");
                    return;
                }
                Err(_) => {
                    debug!(%peer, "tls handshake timed out");
                    return;
                }
            };
            let svc = hyper::service::service_fn(move |req| {
                let front = front.clone();
                async move { Ok::<_, Infallible>(handle(front, peer, req).await) }
            });
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), svc);
            tokio::select! {
                r = conn => if let Err(e) = r { debug!(%peer, error = %e, "https connection ended") },
                _ = stop.changed() => {}
            }
            drop(permit);
        });
    }
}

fn request_host(req: &Request<Incoming>) -> Option<String> {
    if let Some(a) = req.uri().authority() {
        return Some(a.as_str().to_string());
    }
    req.headers()
        .get(header::HOST)?
        .to_str()
        .ok()
        .map(str::to_owned)
}

#[derive(PartialEq, Clone, Copy)]
enum TokenFrom {
    Header,
    Query,
    Cookie,
}

fn find_token(req: &Request<Incoming>) -> Option<(String, TokenFrom)> {
    if let Some(v) = req
        .headers()
        .get(TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
    {
        return Some((v.trim().to_string(), TokenFrom::Header));
    }
    if let Some(q) = req.uri().query() {
        for pair in q.split('&') {
            if let Some(v) = pair
                .strip_prefix(TOKEN_PARAM)
                .and_then(|r| r.strip_prefix('='))
            {
                return Some((v.to_string(), TokenFrom::Query));
            }
        }
    }
    for v in req.headers().get_all(header::COOKIE) {
        let Ok(v) = v.to_str() else { continue };
        for c in v.split(';') {
            if let Some(t) = c
                .trim()
                .strip_prefix(TOKEN_COOKIE)
                .and_then(|r| r.strip_prefix('='))
            {
                return Some((t.to_string(), TokenFrom::Cookie));
            }
        }
    }
    None
}

/// The path and query without the token parameter.
fn strip_token_param(uri: &Uri) -> String {
    let path = uri.path();
    match uri.query() {
        None => path.to_string(),
        Some(q) => {
            let kept: Vec<&str> = q
                .split('&')
                .filter(|p| !(*p == TOKEN_PARAM || p.starts_with(&format!("{TOKEN_PARAM}="))))
                .collect();
            if kept.is_empty() {
                path.to_string()
            } else {
                format!("{path}?{}", kept.join("&"))
            }
        }
    }
}

/// Removes the token header, the token cookie and any client-supplied user data.
fn strip_token_headers(h: &mut HeaderMap) {
    h.remove(TOKEN_HEADER);
    h.remove(USER_DATA_HEADER);
    let cookies: Vec<HeaderValue> = h.get_all(header::COOKIE).iter().cloned().collect();
    if cookies.iter().any(|c| {
        c.as_bytes()
            .windows(TOKEN_COOKIE.len())
            .any(|w| w == TOKEN_COOKIE.as_bytes())
    }) {
        h.remove(header::COOKIE);
        let mut kept = Vec::new();
        for c in &cookies {
            let Ok(s) = c.to_str() else { continue };
            for part in s.split(';') {
                let part = part.trim();
                if !part.is_empty() && !part.starts_with(&format!("{TOKEN_COOKIE}=")) {
                    kept.push(part.to_string());
                }
            }
        }
        if !kept.is_empty() {
            if let Ok(v) = HeaderValue::from_str(&kept.join("; ")) {
                h.insert(header::COOKIE, v);
            }
        }
    }
}

/// Hop-by-hop headers (RFC 9110 7.6.1), and what `Connection` lists.
fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    let listed: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in listed {
        if keep_upgrade && n == header::UPGRADE {
            continue;
        }
        h.remove(n);
    }
    for n in [
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
    ] {
        h.remove(n);
    }
    if keep_upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        h.remove(header::CONNECTION);
        h.remove(header::UPGRADE);
    }
}

fn is_upgrade(req: &Request<Incoming>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

fn user_data_value(ud: &str) -> HeaderValue {
    HeaderValue::from_str(ud).unwrap_or_else(|_| {
        let clean: String = ud.chars().filter(|c| !c.is_control()).collect();
        HeaderValue::from_str(&clean).unwrap_or_else(|_| HeaderValue::from_static(""))
    })
}

fn token_cookie(token: &str, exp: u64) -> HeaderValue {
    let max_age = exp.saturating_sub(unix_now());
    HeaderValue::from_str(&format!(
        "{TOKEN_COOKIE}={token}; HttpOnly; Secure; SameSite=Lax; Path=/; Max-Age={max_age}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static(""))
}

pub(crate) fn dial_error_code(e: &DialError) -> ErrorCode {
    match e {
        DialError::Open(OpenError::NotFound) => ErrorCode::SandboxNotFound,
        DialError::Open(OpenError::NotRunning) => ErrorCode::SandboxNotRunning,
        DialError::Open(OpenError::Refused) | DialError::Open(OpenError::Internal(_)) => {
            ErrorCode::UpstreamUnreachable
        }
        DialError::NodeUnavailable(_) | DialError::LinkBroken(_) => ErrorCode::NodeUnavailable,
        DialError::Timeout => ErrorCode::UpstreamTimeout,
    }
}

fn find_dial_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a DialError> {
    let mut cur: Option<&'a (dyn std::error::Error + 'static)> = Some(e);
    for _ in 0..16 {
        let c = cur?;
        if let Some(d) = c.downcast_ref::<DialError>() {
            return Some(d);
        }
        cur = c.source();
    }
    None
}

async fn handle(front: Arc<Front>, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    let Some(host) = request_host(&req) else {
        return error_page(ErrorCode::InvalidHost);
    };
    let Some((sandbox, port)) = parse_host(&host, &front.base_domain) else {
        return error_page(ErrorCode::InvalidHost);
    };
    let span = tracing::debug_span!("https", sandbox_id = %sandbox, port);
    proxy(front, peer, req, sandbox, port)
        .instrument(span)
        .await
}

async fn proxy(
    front: Arc<Front>,
    peer: SocketAddr,
    mut req: Request<Incoming>,
    sandbox: String,
    port: u16,
) -> Response<Body> {
    let route = match front.cache.route(&sandbox).await {
        Ok(Some(r)) => r,
        Ok(None) => return error_page(ErrorCode::SandboxNotFound),
        Err(e) => {
            warn!(error = %e, "route lookup failed");
            return error_page(ErrorCode::RoutesUnavailable);
        }
    };
    if route.state != RouteState::Running {
        return error_page(ErrorCode::SandboxNotRunning);
    }
    if !route.ready {
        return error_page(ErrorCode::SandboxNotReady);
    }
    let Some(pr) = route.port(port).copied() else {
        return error_page(ErrorCode::PortNotExposed);
    };

    let token = find_token(&req);
    let mut user_data = None;
    let mut set_cookie = None;
    if pr.require_token {
        let Some((tok, from)) = token else {
            return error_page(ErrorCode::TokenRequired);
        };
        let claims = match check_token(
            &front.token_key,
            &tok,
            unix_now(),
            &sandbox,
            port,
            &route.revoked_tokens,
        ) {
            Ok(c) => c,
            Err(e) => {
                debug!(error = %e, "connect token refused");
                return error_page(ErrorCode::TokenInvalid);
            }
        };
        if from == TokenFrom::Query {
            let cookie = token_cookie(&tok, claims.exp);
            if req.method() == Method::GET || req.method() == Method::HEAD {
                // Move the token into a cookie and drop it from the URL.
                let location = strip_token_param(req.uri());
                let mut resp = Response::new(full(Bytes::new()));
                *resp.status_mut() = StatusCode::FOUND;
                let h = resp.headers_mut();
                h.insert(
                    header::LOCATION,
                    HeaderValue::from_str(&location).unwrap_or(HeaderValue::from_static("/")),
                );
                h.insert(header::SET_COOKIE, cookie);
                h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                return resp;
            }
            set_cookie = Some(cookie);
        }
        user_data = Some(user_data_value(&claims.ud));
    }

    // The request as the upstream sees it.
    let upgrade = pr.protocol == PortProtocol::Http1 && is_upgrade(&req);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let pq = strip_token_param(req.uri());
    let authority = format!("{sandbox}-{port}.{}", front.base_domain);
    let uri: Uri = match format!("http://{authority}{pq}").parse() {
        Ok(u) => u,
        Err(_) => return error_page(ErrorCode::InvalidHost),
    };
    let orig_version = req.version();
    *req.uri_mut() = uri;
    let h = req.headers_mut();
    strip_token_headers(h);
    strip_hop_by_hop(h, upgrade);
    if let Some(ud) = user_data {
        h.insert(USER_DATA_HEADER, ud);
    }
    if !h.contains_key(header::HOST) {
        if let Ok(v) = HeaderValue::from_str(&authority) {
            h.insert(header::HOST, v);
        }
    }
    let xff = match h.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {}", peer.ip()),
        None => peer.ip().to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        h.insert("x-forwarded-for", v);
    }
    h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
    let client = match pr.protocol {
        PortProtocol::Http1 => {
            *req.version_mut() = Version::HTTP_11;
            &front.h1
        }
        PortProtocol::H2c => {
            *req.version_mut() = Version::HTTP_2;
            req.headers_mut().remove(header::HOST);
            &front.h2
        }
    };

    let mut resp = match tokio::time::timeout(front.upstream_timeout, client.request(req)).await {
        Err(_) => return error_page(ErrorCode::UpstreamTimeout),
        Ok(Err(e)) => {
            let code = match find_dial_error(&e) {
                Some(d) => {
                    if matches!(
                        d,
                        DialError::Open(OpenError::NotFound | OpenError::NotRunning)
                    ) {
                        front.cache.invalidate(&sandbox);
                    }
                    dial_error_code(d)
                }
                None if e.is_connect() => ErrorCode::UpstreamUnreachable,
                None => ErrorCode::UpstreamProtocolError,
            };
            debug!(error = %e, code = code.code(), "upstream request failed");
            return error_page(code);
        }
        Ok(Ok(r)) => r,
    };

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            return error_page(ErrorCode::UpstreamProtocolError);
        };
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let mut stop = front.stop.clone();
        tokio::spawn(
            async move {
                let (c, u) = tokio::join!(client_upgrade, upstream_upgrade);
                match (c, u) {
                    (Ok(c), Ok(u)) => {
                        let mut c = TokioIo::new(c);
                        let mut u = TokioIo::new(u);
                        tokio::select! {
                            r = crate::copy::bidirectional(&mut c, &mut u) => {
                                debug!(result = ?r, "upgraded connection ended");
                            }
                            _ = stop.wait_for(|s| *s) => debug!("upgraded connection cut: relay stopping"),
                        }
                    }
                    (c, u) => debug!(client = c.is_ok(), upstream = u.is_ok(), "upgrade failed"),
                }
            }
            .in_current_span(),
        );
        let (parts, body) = resp.into_parts();
        return Response::from_parts(parts, body.boxed());
    }

    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    if let Some(c) = set_cookie {
        parts.headers.append(header::SET_COOKIE, c);
    }
    parts.version = orig_version;
    Response::from_parts(parts, body.boxed())
}

/// Opens upstream connections for the pool: the URI's host names the
/// sandbox and port; the route says which node.
#[derive(Clone)]
pub(crate) struct LinkConnector {
    base_domain: String,
    cache: Arc<RouteCache>,
    dialer: Arc<Dialer>,
}

impl tower::Service<Uri> for LinkConnector {
    type Response = LinkConn;
    type Error = DialError;
    type Future = Pin<Box<dyn Future<Output = Result<LinkConn, DialError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), DialError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let host = uri.host().unwrap_or_default();
            let (sandbox, port) =
                parse_host(host, &this.base_domain).ok_or(DialError::Open(OpenError::NotFound))?;
            let route = this
                .cache
                .route(&sandbox)
                .await
                .map_err(|e| DialError::LinkBroken(e.to_string()))?
                .ok_or(DialError::Open(OpenError::NotFound))?;
            let s = this
                .dialer
                .open(&route.node_id, &sandbox, port, StreamMode::Http)
                .await?;
            Ok(LinkConn(TokioIo::new(s)))
        })
    }
}

/// A tunnel stream as a hyper connection.
pub(crate) struct LinkConn(TokioIo<BoxStream>);

impl Connection for LinkConn {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for LinkConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for LinkConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        let d = "warren.localhost";
        assert_eq!(
            parse_host("sb-abc-8000.warren.localhost", d),
            Some(("sb-abc".into(), 8000))
        );
        assert_eq!(
            parse_host("SB-ABC-8000.Warren.Localhost:8443", d),
            Some(("sb-abc".into(), 8000))
        );
        assert_eq!(
            parse_host("sb-abc-8000.warren.localhost.", d),
            Some(("sb-abc".into(), 8000))
        );
        assert_eq!(parse_host("sb-abc-0.warren.localhost", d), None);
        assert_eq!(parse_host("sb-abc-08000.warren.localhost", d), None);
        assert_eq!(parse_host("sb-abc-70000.warren.localhost", d), None);
        assert_eq!(parse_host("x.sb-abc-80.warren.localhost", d), None);
        assert_eq!(parse_host("sb-abc-80.evilwarren.localhost", d), None);
        assert_eq!(parse_host("warren.localhost", d), None);
        assert_eq!(parse_host("sb_a-80.warren.localhost", d), None);
        assert_eq!(parse_host("-80.warren.localhost", d), None);
    }

    #[test]
    fn token_param_is_stripped() {
        let u: Uri = "/a/b?x=1&_warren_token=wct_a.b&y=2".parse().unwrap();
        assert_eq!(strip_token_param(&u), "/a/b?x=1&y=2");
        let u: Uri = "/?_warren_token=wct_a.b".parse().unwrap();
        assert_eq!(strip_token_param(&u), "/");
        let u: Uri = "/p?_warren_tokenx=1".parse().unwrap();
        assert_eq!(strip_token_param(&u), "/p?_warren_tokenx=1");
    }

    #[test]
    fn token_cookie_and_user_data_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; warren_token=wct_x.y; b=2"),
        );
        h.insert(USER_DATA_HEADER, HeaderValue::from_static("spoof"));
        h.insert(TOKEN_HEADER, HeaderValue::from_static("wct_x.y"));
        strip_token_headers(&mut h);
        assert_eq!(h.get(header::COOKIE).unwrap(), "a=1; b=2");
        assert!(h.get(USER_DATA_HEADER).is_none());
        assert!(h.get(TOKEN_HEADER).is_none());
    }
}
