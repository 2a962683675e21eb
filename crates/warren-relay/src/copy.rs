//! Moving bytes both ways between a client and a tunnel stream.

use std::io;

use tokio::io::{AsyncRead, AsyncWrite};

/// Per-direction buffer of the generic copy (WebSocket upgrades, streams
/// with no fast path). Allocated per connection, touched pages stay
/// resident: big enough for few syscalls, small enough for many idle
/// connections.
pub const COPY_BUF: usize = 64 * 1024;

/// Copies both ways until both directions reached EOF (each EOF is passed on
/// as a half-close) or one side fails. Returns bytes (a → b, b → a).
pub async fn bidirectional<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    tokio::io::copy_bidirectional_with_sizes(a, b, COPY_BUF, COPY_BUF).await
}

/// [`bidirectional`] between a client TCP connection and a tunnel stream,
/// with fast paths: a TCP tunnel (in-process link) moves bytes with
/// `splice(2)` through a pipe, never entering user space; a link stream
/// (HTTP/2) hands socket reads to h2 and h2's buffers to the socket with no
/// intermediate copy.
pub async fn bidirectional_boxed(
    client: &mut tokio::net::TcpStream,
    upstream: &mut crate::target::BoxStream,
) -> io::Result<(u64, u64)> {
    let any = upstream.as_any_mut();
    if any.is::<tokio::net::TcpStream>() {
        let up = any
            .downcast_mut::<tokio::net::TcpStream>()
            .expect("checked with is()");
        return crate::splice::bidirectional(client, up).await;
    }
    if let Some(g) = any.downcast_mut::<crate::target::Guarded<tokio::net::TcpStream>>() {
        return crate::splice::bidirectional(client, &mut g.stream).await;
    }
    if let Some(h) = any.downcast_mut::<crate::link::stream::H2Stream>() {
        return crate::link::stream::pump(h, client).await;
    }
    bidirectional(client, upstream).await
}
