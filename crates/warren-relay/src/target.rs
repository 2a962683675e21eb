//! The node side of a tunnel: something that opens a byte stream to a
//! sandbox's port. The node implements [`TunnelTarget`] (through
//! `connect_in_netns`); the relay reaches it either directly (in-process
//! link) or through a [`crate::NodeLink`].

use std::any::Any;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite};

/// A bidirectional byte stream (a TCP connection into a sandbox, a link
/// stream, ...).
pub trait AsyncReadWrite: AsyncRead + AsyncWrite + Send + Unpin + 'static {
    /// For the copy loop's fast paths (`splice(2)` between two TCP sockets).
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> AsyncReadWrite for T {
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// A boxed tunnel stream.
pub type BoxStream = Box<dyn AsyncReadWrite>;

/// Why a tunnel could not be opened; each maps to an error page (HTTPS
/// front) or a closed connection (raw front).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The node has no such sandbox.
    #[error("sandbox not found")]
    NotFound,
    /// The sandbox exists but is not running.
    #[error("sandbox not running")]
    NotRunning,
    /// Nothing listens on the port (connection refused, reset, timed out).
    #[error("connection refused")]
    Refused,
    /// Anything else; the detail is logged, never shown to clients.
    #[error("internal error: {0}")]
    Internal(String),
}

impl OpenError {
    /// Stable code carried on the link (`warren-error` header).
    pub fn code(&self) -> &'static str {
        match self {
            OpenError::NotFound => "not_found",
            OpenError::NotRunning => "not_running",
            OpenError::Refused => "refused",
            OpenError::Internal(_) => "internal",
        }
    }

    /// Inverse of [`OpenError::code`].
    pub fn from_code(code: &str) -> OpenError {
        match code {
            "not_found" => OpenError::NotFound,
            "not_running" => OpenError::NotRunning,
            "refused" => OpenError::Refused,
            other => OpenError::Internal(format!("node answered {other}")),
        }
    }
}

/// Opens streams to sandbox ports on one node.
///
/// Implementations must bound their own work (the relay also wraps each
/// call in its `open` timeout) and must only ever connect to the sandbox's
/// own address space (`127.0.0.1:<port>` inside its network namespace).
#[async_trait]
pub trait TunnelTarget: Send + Sync + 'static {
    async fn open(&self, sandbox: &str, port: u16) -> Result<BoxStream, OpenError>;
}

/// A [`TunnelTarget`] that connects to `127.0.0.1:<port>` in the caller's
/// own network namespace for every sandbox: for tests and benches (and a
/// node without network namespaces). Never use it in a real node.
#[derive(Debug, Clone, Default)]
pub struct LoopbackTarget;

#[async_trait]
impl TunnelTarget for LoopbackTarget {
    async fn open(&self, _sandbox: &str, port: u16) -> Result<BoxStream, OpenError> {
        match tokio::net::TcpStream::connect((std::net::Ipv4Addr::LOCALHOST, port)).await {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                Ok(Box::new(s))
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Err(OpenError::Refused),
            Err(e) => Err(OpenError::Internal(e.to_string())),
        }
    }
}

/// A tunnel stream that keeps something alive while it is open (the node's
/// "this sandbox is active" guard). The relay's raw copy loop looks through
/// it, so a guarded TCP stream still moves bytes with `splice(2)`.
pub struct Guarded<S> {
    pub stream: S,
    _guard: Box<dyn Send + Sync>,
}

impl<S> Guarded<S> {
    pub fn new(stream: S, guard: impl Send + Sync + 'static) -> Self {
        Guarded {
            stream,
            _guard: Box::new(guard),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
