//! What one measured run produces, and the bounded first-byte read that
//! every runtime's measurement shares.

use std::io::Read;
use std::os::fd::AsFd;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// How long a sandbox may take to print its first byte before the run fails.
pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a finished `echo` may take to be reported as exited.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// One create run: start → first byte of output, and start → gone.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub first_byte: Duration,
    pub cycle: Duration,
}

/// Waits (bounded) for the first byte on `src` and returns it. `poll` wakes
/// as soon as data arrives, so the bound adds no latency.
pub fn read_first_byte<F: AsFd + Read>(src: &mut F, timeout: Duration) -> Result<u8> {
    let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    let ready = {
        let mut fds = [PollFd::new(src.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(n) => n,
            Err(Errno::EINTR) => bail!("interrupted while waiting for output"),
            Err(e) => return Err(e).context("poll output pipe"),
        }
    };
    if ready == 0 {
        bail!("no output within {timeout:?}");
    }
    let mut byte = [0u8; 1];
    let n = src.read(&mut byte).context("read output pipe")?;
    if n == 0 {
        bail!("output closed before the first byte");
    }
    Ok(byte[0])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn first_byte_eof_and_timeout() {
        let (r, w) = nix::unistd::pipe().expect("pipe");
        let mut r = std::fs::File::from(r);
        let mut w = std::fs::File::from(w);
        w.write_all(b"hi").expect("write");
        assert_eq!(
            read_first_byte(&mut r, Duration::from_secs(1)).expect("byte"),
            b'h'
        );

        // Remaining byte, then nothing: times out while the writer is open.
        assert_eq!(
            read_first_byte(&mut r, Duration::from_secs(1)).expect("byte"),
            b'i'
        );
        let err = read_first_byte(&mut r, Duration::from_millis(20)).expect_err("timeout");
        assert!(err.to_string().contains("no output"), "{err}");

        drop(w);
        let err = read_first_byte(&mut r, Duration::from_secs(1)).expect_err("eof");
        assert!(err.to_string().contains("closed"), "{err}");
    }
}
