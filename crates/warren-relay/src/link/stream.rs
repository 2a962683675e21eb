//! One HTTP/2 stream as an `AsyncRead + AsyncWrite` byte stream.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::BytesMut;
use bytes::{Buf, Bytes};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Largest chunk handed to h2 per write (its send buffer holds more).
const MAX_WRITE: usize = 256 * 1024;

/// Dropping it before both sides ended makes h2 reset the stream (CANCEL),
/// so the peer's side is torn down too.
pub(crate) struct H2Stream {
    pub(crate) send: SendStream<Bytes>,
    pub(crate) recv: RecvStream,
    /// Received but not yet read.
    pub(crate) buf: Bytes,
    eof: bool,
    sent_end: bool,
}

impl H2Stream {
    pub(crate) fn new(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        H2Stream {
            send,
            recv,
            buf: Bytes::new(),
            eof: false,
            sent_end: false,
        }
    }
}

fn h2_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        e.into_io().unwrap_or_else(|| io::Error::other("h2 i/o"))
    } else if e.reason() == Some(h2::Reason::NO_ERROR) || e.reason() == Some(h2::Reason::CANCEL) {
        io::Error::new(io::ErrorKind::ConnectionReset, e)
    } else {
        io::Error::other(e)
    }
}

impl AsyncRead for H2Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.buf.is_empty() {
                let n = self.buf.len().min(out.remaining());
                out.put_slice(&self.buf[..n]);
                self.buf.advance(n);
                return Poll::Ready(Ok(()));
            }
            if self.eof {
                return Poll::Ready(Ok(()));
            }
            match ready!(self.recv.poll_data(cx)) {
                None => {
                    self.eof = true;
                }
                Some(Ok(data)) => {
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    self.buf = data;
                }
                Some(Err(e)) => return Poll::Ready(Err(h2_io(e))),
            }
        }
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let want = buf.len().min(MAX_WRITE);
        self.send.reserve_capacity(want);
        loop {
            let have = self.send.capacity();
            if have > 0 {
                let n = have.min(want);
                self.send
                    .send_data(Bytes::copy_from_slice(&buf[..n]), false)
                    .map_err(h2_io)?;
                return Poll::Ready(Ok(n));
            }
            // Pending registers the waker; Ready means the capacity changed.
            match ready!(self.send.poll_capacity(cx)) {
                None => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "link stream closed",
                    )));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(h2_io(e))),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // END_STREAM: the peer sees EOF, and can still send to us.
        if !self.sent_end {
            self.sent_end = true;
            let _ = self.send.send_data(Bytes::new(), true);
        }
        Poll::Ready(Ok(()))
    }
}

/// Read size of [`pump`]'s socket side.
const PUMP_CHUNK: usize = 64 * 1024;

/// Moves bytes between an HTTP/2 stream and a socket with no copy in user
/// space: socket reads become DATA frames as they are, DATA frames are
/// written to the socket as they are. EOFs pass on as half-closes (END_STREAM
/// / `shutdown`); flow-control capacity is released only once the bytes are
/// written, so a slow socket slows the sender. Returns bytes (socket → h2,
/// h2 → socket).
pub(crate) async fn pump<S>(stream: &mut H2Stream, sock: S) -> io::Result<(u64, u64)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut rd, mut wr) = tokio::io::split(sock);
    let H2Stream {
        send,
        recv,
        buf,
        eof,
        sent_end,
    } = stream;
    let up = async {
        let mut total = 0u64;
        let mut b = BytesMut::new();
        loop {
            b.reserve(PUMP_CHUNK);
            let n = rd.read_buf(&mut b).await?;
            if n == 0 {
                if !*sent_end {
                    *sent_end = true;
                    send.send_data(Bytes::new(), true).map_err(h2_io)?;
                }
                return Ok(total);
            }
            let mut data = b.split().freeze();
            while !data.is_empty() {
                send.reserve_capacity(data.len());
                let cap = loop {
                    let c = send.capacity();
                    if c > 0 {
                        break c;
                    }
                    match std::future::poll_fn(|cx| send.poll_capacity(cx)).await {
                        None => {
                            return Err(io::Error::new(
                                io::ErrorKind::BrokenPipe,
                                "link stream closed",
                            ));
                        }
                        Some(Err(e)) => return Err(h2_io(e)),
                        Some(Ok(_)) => {}
                    }
                };
                let chunk = data.split_to(cap.min(data.len()));
                total += chunk.len() as u64;
                send.send_data(chunk, false).map_err(h2_io)?;
            }
        }
    };
    let down = async {
        let mut total = 0u64;
        if !buf.is_empty() {
            wr.write_all(buf).await?;
            total += buf.len() as u64;
            *buf = Bytes::new();
        }
        if !*eof {
            while let Some(d) = recv.data().await {
                let d = d.map_err(h2_io)?;
                wr.write_all(&d).await?;
                total += d.len() as u64;
                let _ = recv.flow_control().release_capacity(d.len());
            }
            *eof = true;
        }
        wr.shutdown().await?;
        Ok::<_, io::Error>(total)
    };
    tokio::try_join!(up, down)
}
