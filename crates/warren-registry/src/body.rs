//! [`ChannelBody`]: a blob's HTTP body, received on the async side, read
//! as a blocking [`Read`] by the thread that stores and unpacks it.

use std::io::{self, Read};

use bytes::{Buf as _, Bytes};
use tokio::sync::mpsc;

/// Chunks queued between the network and the unpacking thread (a bounded
/// queue: a slow disk slows the download instead of filling memory).
pub const BODY_QUEUE_CHUNKS: usize = 64;

/// What the network side sends.
#[derive(Debug)]
pub enum Chunk {
    /// Body bytes, in order.
    Data(Bytes),
    /// The body ended normally. A sender dropped without sending this
    /// means the download broke off (or the pull was dropped).
    End,
}

/// The receiving end, as a reader.
#[derive(Debug)]
pub struct ChannelBody {
    rx: mpsc::Receiver<Chunk>,
    current: Bytes,
    ended: bool,
}

impl ChannelBody {
    /// A queue and the reader of its receiving end.
    pub fn channel() -> (mpsc::Sender<Chunk>, Self) {
        let (tx, rx) = mpsc::channel(BODY_QUEUE_CHUNKS);
        let body = Self {
            rx,
            current: Bytes::new(),
            ended: false,
        };
        (tx, body)
    }

    /// Takes the next message; `blocking` waits for one.
    fn next(&mut self, blocking: bool) -> io::Result<bool> {
        let message = if blocking {
            self.rx.blocking_recv()
        } else {
            match self.rx.try_recv() {
                Ok(m) => Some(m),
                // A broken-off download is reported by the next (blocking)
                // read, after the bytes already taken.
                Err(_) => return Ok(false),
            }
        };
        match message {
            Some(Chunk::Data(b)) => self.current = b,
            Some(Chunk::End) => self.ended = true,
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "the blob download broke off",
                ))
            }
        }
        Ok(true)
    }
}

impl Read for ChannelBody {
    /// Waits for at least one byte (or the end), then also takes whatever
    /// else is queued already, up to `buf`'s size.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut filled = 0;
        while filled < buf.len() {
            if self.current.is_empty() {
                if self.ended || !self.next(filled == 0)? {
                    break;
                }
                continue;
            }
            let n = self.current.len().min(buf.len() - filled);
            buf[filled..filled + n].copy_from_slice(&self.current[..n]);
            self.current.advance(n);
            filled += n;
        }
        Ok(filled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_chunks_in_order_and_tells_end_from_breakage() {
        let (tx, mut body) = ChannelBody::channel();
        tx.try_send(Chunk::Data(Bytes::from_static(b"hello ")))
            .unwrap();
        tx.try_send(Chunk::Data(Bytes::from_static(b"world")))
            .unwrap();
        tx.try_send(Chunk::End).unwrap();
        let mut out = Vec::new();
        body.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"hello world");

        let (tx, mut body) = ChannelBody::channel();
        tx.try_send(Chunk::Data(Bytes::from_static(b"half")))
            .unwrap();
        drop(tx);
        let mut out = Vec::new();
        let err = body.read_to_end(&mut out).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
        assert_eq!(out, b"half");
    }
}
