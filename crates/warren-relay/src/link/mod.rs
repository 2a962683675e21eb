//! The node ↔ relay link.
//!
//! Wire protocol (version [`LINK_PROTOCOL_VERSION`]):
//! 1. The node dials the relay (TCP), TLS with ALPN `warren-link/1`,
//!    verifying the relay's certificate against the Warren CA (nodes can sit
//!    behind NAT: only outbound connections).
//! 2. Node → relay: one frame, `u32` big-endian length + JSON [`LinkHello`]
//!    (`node_id`, `secret`); relay → node: one frame with [`LinkWelcome`].
//!    Frames are at most [`MAX_FRAME_LEN`] bytes.
//! 3. HTTP/2 on the same connection with the **relay as the client**: each
//!    tunnel connection is one stream, opened with a `POST /open` whose
//!    headers name the target (`warren-sandbox`, `warren-port`,
//!    `warren-mode`). The node answers `200` and then both directions carry
//!    the connection's bytes as DATA frames (END_STREAM = half-close), or an
//!    error status with `warren-error: <OpenError code>` and END_STREAM.
//!    Windows are large ([`STREAM_WINDOW`], [`CONNECTION_WINDOW`]) so one
//!    stream's throughput is not bound by the window on fast links.

pub(crate) mod node;
pub(crate) mod server;
pub(crate) mod stream;

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
pub use warren_proto::relay::{LinkHello, LinkWelcome, StreamMode, LINK_PROTOCOL_VERSION};

/// Largest hello/welcome frame.
pub const MAX_FRAME_LEN: u32 = 64 * 1024;
/// HTTP/2 stream-level receive window.
pub const STREAM_WINDOW: u32 = 16 * 1024 * 1024;
/// HTTP/2 connection-level receive window.
pub const CONNECTION_WINDOW: u32 = 64 * 1024 * 1024;
/// HTTP/2 max frame size we accept.
pub const MAX_H2_FRAME: u32 = 1024 * 1024;
/// Most concurrent streams per link.
pub const MAX_STREAMS: u32 = 100_000;
/// Reconnect backoff of a node's link.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Stream header names.
pub const H_SANDBOX: &str = "warren-sandbox";
pub const H_PORT: &str = "warren-port";
pub const H_MODE: &str = "warren-mode";
pub const H_ERROR: &str = "warren-error";

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("link i/o")]
    Io(#[from] std::io::Error),
    #[error("link frame too long ({0} bytes)")]
    FrameTooLong(u32),
    #[error("bad link frame: {0}")]
    BadFrame(String),
    #[error("link refused: {0}")]
    Refused(String),
    #[error("link handshake timed out")]
    Timeout,
    #[error("http/2 on the link")]
    H2(#[from] h2::Error),
    #[error("link tls config")]
    Tls(#[from] crate::tls::TlsError),
    #[error("bad server name {0}")]
    ServerName(String),
}

pub(crate) async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    msg: &T,
) -> Result<(), LinkError> {
    let body = serde_json::to_vec(msg).expect("link frames serialize");
    let len = u32::try_from(body.len()).map_err(|_| LinkError::FrameTooLong(u32::MAX))?;
    if len > MAX_FRAME_LEN {
        return Err(LinkError::FrameTooLong(len));
    }
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(&body);
    w.write_all(&buf).await?;
    w.flush().await?;
    Ok(())
}

pub(crate) async fn read_frame<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
) -> Result<T, LinkError> {
    let len = r.read_u32().await?;
    if len > MAX_FRAME_LEN {
        return Err(LinkError::FrameTooLong(len));
    }
    let mut body = vec![0; len as usize];
    r.read_exact(&mut body).await?;
    serde_json::from_slice(&body).map_err(|e| LinkError::BadFrame(e.to_string()))
}

/// Constant-time comparison of secrets (the length is not secret).
pub(crate) fn secret_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_refuse_long() {
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        let hello = LinkHello {
            version: 1,
            node_id: "n".into(),
            secret: "s".into(),
        };
        write_frame(&mut a, &hello).await.unwrap();
        let got: LinkHello = read_frame(&mut b).await.unwrap();
        assert_eq!(got, hello);
        a.write_all(&(MAX_FRAME_LEN + 1).to_be_bytes())
            .await
            .unwrap();
        assert!(matches!(
            read_frame::<_, LinkHello>(&mut b).await,
            Err(LinkError::FrameTooLong(_))
        ));
        assert!(secret_eq(b"abc", b"abc"));
        assert!(!secret_eq(b"abc", b"abd"));
        assert!(!secret_eq(b"abc", b"ab"));
    }
}
