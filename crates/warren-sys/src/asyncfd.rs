//! Registering owned descriptors with tokio's reactor (feature `tokio`).

use std::os::fd::OwnedFd;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Registers `fd` with the current tokio reactor for `interest`.
pub fn register(fd: OwnedFd, interest: Interest) -> std::io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the AsyncFd takes ownership of the OwnedFd, so the descriptor
    // stays open and refers to the same file description until the AsyncFd
    // is dropped or unwrapped, and OwnedFd::as_raw_fd always returns the
    // same number — exactly what register_with_interest requires.
    unsafe { AsyncFd::register_with_interest(fd, interest) }.map_err(|e| e.into())
}
