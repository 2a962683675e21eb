//! Zero-copy forwarding between two TCP sockets with `splice(2)`: socket →
//! pipe → socket, the pages never reach user space. Used when the relay and
//! the node share a process (the in-process link hands back a plain
//! `TcpStream`). Safe wrappers only (rustix), driven by tokio readiness.

use std::io;
use std::os::fd::OwnedFd;

use rustix::pipe::{PipeFlags, SpliceFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Pipe capacity per direction (capped by `/proc/sys/fs/pipe-max-size`).
const PIPE_SIZE: usize = 1024 * 1024;
/// How long a quiet direction keeps its pipe.
const PIPE_IDLE: std::time::Duration = std::time::Duration::from_millis(20);

/// Both directions until both hit EOF (passed on as half-closes) or one
/// fails. Returns bytes (a → b, b → a).
pub async fn bidirectional(a: &mut TcpStream, b: &mut TcpStream) -> io::Result<(u64, u64)> {
    let a: &TcpStream = a;
    let b: &TcpStream = b;
    tokio::try_join!(one_way(a, b), one_way(b, a))
}

fn new_pipe() -> io::Result<(OwnedFd, OwnedFd, usize)> {
    let (r, w) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
    let size = rustix::pipe::fcntl_setpipe_size(&w, PIPE_SIZE).unwrap_or(64 * 1024);
    Ok((r, w, size))
}

async fn one_way(from: &TcpStream, to: &TcpStream) -> io::Result<u64> {
    // The pipe is made when bytes come, so idle connections hold none.
    let mut pipe: Option<(OwnedFd, OwnedFd, usize)> = None;
    let mut total = 0u64;
    let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
    loop {
        if pipe.is_some() {
            // A direction quiet for PIPE_IDLE gives its (empty) pipe back, so
            // idle connections hold two sockets and nothing else.
            if tokio::time::timeout(PIPE_IDLE, from.readable())
                .await
                .is_err()
            {
                pipe = None;
                from.readable().await?;
            }
        } else {
            from.readable().await?;
        }
        if pipe.is_none() {
            pipe = Some(new_pipe()?);
        }
        let (pr, pw, size) = pipe.as_ref().expect("made above");
        let n = match from.try_io(Interest::READABLE, || {
            rustix::pipe::splice(from, None, pw, None, *size, flags).map_err(io::Error::from)
        }) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            // EOF: half-close the other side, keep the reverse direction.
            let _ = rustix::net::shutdown(to, rustix::net::Shutdown::Write);
            return Ok(total);
        }
        let mut left = n;
        while left > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || {
                rustix::pipe::splice(pr, None, to, None, left, flags).map_err(io::Error::from)
            }) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "splice wrote nothing",
                    ))
                }
                Ok(m) => {
                    left -= m;
                    total += m as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    #[tokio::test]
    async fn forwards_both_ways_with_half_close() {
        // client <-> (c1 | relay | u1) <-> upstream
        let (mut client, mut c1) = pair().await;
        let (mut u1, mut upstream) = pair().await;
        let relay = tokio::spawn(async move { bidirectional(&mut c1, &mut u1).await });
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let d2 = data.clone();
        let echo = tokio::spawn(async move {
            let mut got = Vec::new();
            upstream.read_to_end(&mut got).await.unwrap();
            upstream.write_all(&got).await.unwrap();
            upstream.shutdown().await.unwrap();
            got.len()
        });
        let writer = tokio::spawn(async move {
            client.write_all(&d2).await.unwrap();
            client.shutdown().await.unwrap();
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            back
        });
        let back = tokio::time::timeout(std::time::Duration::from_secs(20), writer)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(echo.await.unwrap(), data.len());
        assert_eq!(back, data);
        let (a, b) = relay.await.unwrap().unwrap();
        assert_eq!((a, b), (data.len() as u64, data.len() as u64));
    }
}
