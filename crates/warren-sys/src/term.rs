//! Terminal ioctls for PTY-backed execs.

use std::os::fd::{AsRawFd, BorrowedFd};

use crate::{Errno, Result};

/// Makes the terminal behind `fd` the controlling terminal of the calling
/// session leader (call after `setsid`).
pub fn set_controlling_tty(fd: BorrowedFd<'_>) -> Result<()> {
    // SAFETY: TIOCSCTTY takes an integer argument (0: do not steal).
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSCTTY, 0) } < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// Sets the window size of the terminal behind `fd` (a PTY master or slave).
pub fn set_window_size(fd: BorrowedFd<'_>, rows: u16, cols: u16) -> Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads the live winsize we pass.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// Reads the window size of the terminal behind `fd`.
pub fn window_size(fd: BorrowedFd<'_>) -> Result<(u16, u16)> {
    // SAFETY: winsize is plain old data; zeroed is valid.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes into the live winsize we pass.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) } < 0 {
        return Err(Errno::last());
    }
    Ok((ws.ws_row, ws.ws_col))
}
