//! Error answers of the HTTPS front: a status, a stable code in
//! `X-Warren-Error`, and a small HTML page. Internal details are logged,
//! never shown.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};

use crate::https::Body;

/// Header carrying the stable error code.
pub const ERROR_HEADER: &str = "x-warren-error";

/// Every error the HTTPS front answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The Host is not `<sandbox-id>-<port>.<base_domain>`.
    InvalidHost,
    SandboxNotFound,
    PortNotExposed,
    SandboxNotReady,
    SandboxNotRunning,
    /// Nothing listens on the port, or the node could not connect.
    UpstreamUnreachable,
    /// The node holding the sandbox is not connected to this relay.
    NodeUnavailable,
    UpstreamTimeout,
    /// The upstream answered with something that is not HTTP.
    UpstreamProtocolError,
    TokenRequired,
    TokenInvalid,
    /// The route source (control plane) did not answer.
    RoutesUnavailable,
}

impl ErrorCode {
    pub fn code(self) -> &'static str {
        match self {
            ErrorCode::InvalidHost => "invalid_host",
            ErrorCode::SandboxNotFound => "sandbox_not_found",
            ErrorCode::PortNotExposed => "port_not_exposed",
            ErrorCode::SandboxNotReady => "sandbox_not_ready",
            ErrorCode::SandboxNotRunning => "sandbox_not_running",
            ErrorCode::UpstreamUnreachable => "upstream_unreachable",
            ErrorCode::NodeUnavailable => "node_unavailable",
            ErrorCode::UpstreamTimeout => "upstream_timeout",
            ErrorCode::UpstreamProtocolError => "upstream_protocol_error",
            ErrorCode::TokenRequired => "token_required",
            ErrorCode::TokenInvalid => "token_invalid",
            ErrorCode::RoutesUnavailable => "routes_unavailable",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::InvalidHost => StatusCode::BAD_REQUEST,
            ErrorCode::SandboxNotFound | ErrorCode::PortNotExposed => StatusCode::NOT_FOUND,
            ErrorCode::SandboxNotReady | ErrorCode::RoutesUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ErrorCode::SandboxNotRunning
            | ErrorCode::UpstreamUnreachable
            | ErrorCode::NodeUnavailable
            | ErrorCode::UpstreamProtocolError => StatusCode::BAD_GATEWAY,
            ErrorCode::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::TokenRequired => StatusCode::UNAUTHORIZED,
            ErrorCode::TokenInvalid => StatusCode::FORBIDDEN,
        }
    }

    fn message(self) -> &'static str {
        match self {
            ErrorCode::InvalidHost => "This host name does not name a sandbox port.",
            ErrorCode::SandboxNotFound => "There is no such sandbox.",
            ErrorCode::PortNotExposed => "The sandbox does not expose this port.",
            ErrorCode::SandboxNotReady => "The sandbox is starting; its readiness probe has not passed yet. Retry in a moment.",
            ErrorCode::SandboxNotRunning => "The sandbox is not running.",
            ErrorCode::UpstreamUnreachable => "Nothing in the sandbox answers on this port.",
            ErrorCode::NodeUnavailable => "The machine running this sandbox is not reachable right now.",
            ErrorCode::UpstreamTimeout => "The sandbox did not answer in time.",
            ErrorCode::UpstreamProtocolError => "The sandbox's server did not answer with valid HTTP.",
            ErrorCode::TokenRequired => "This tunnel needs a connect token.",
            ErrorCode::TokenInvalid => "The connect token is invalid, expired or revoked.",
            ErrorCode::RoutesUnavailable => "The relay cannot reach the control plane right now. Retry in a moment.",
        }
    }
}

/// The error page for `code`.
pub fn error_page(code: ErrorCode) -> Response<Body> {
    let status = code.status();
    let html = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{s} {r}</title>\
         <style>body{{font-family:system-ui,sans-serif;max-width:40em;margin:4em auto;color:#222}}\
         code{{background:#eee;padding:.1em .3em}}</style></head>\
         <body><h1>{s} {r}</h1><p>{m}</p><p>Error code: <code>{c}</code></p>\
         <hr><p><small>Warren relay</small></p></body></html>\n",
        s = status.as_u16(),
        r = status.canonical_reason().unwrap_or(""),
        m = code.message(),
        c = code.code(),
    );
    let mut resp = Response::new(crate::https::full(Bytes::from(html)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    h.insert(ERROR_HEADER, HeaderValue::from_static(code.code()));
    if code == ErrorCode::SandboxNotReady || code == ErrorCode::RoutesUnavailable {
        h.insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}
