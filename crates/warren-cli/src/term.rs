//! The local terminal for `-t` execs: its size, and raw mode behind a guard
//! that always puts the original settings back.

use std::io::IsTerminal;
use std::os::fd::AsFd;

use anyhow::{Context, Result};
use rustix::termios::{self, OptionalActions, Termios};
use warren_proto::api::TtySize;

/// Size used when no terminal or environment says otherwise.
pub const DEFAULT_SIZE: TtySize = TtySize { rows: 24, cols: 80 };

/// The size of our terminal: from stdout, stdin or stderr (the first that
/// is a terminal), else `LINES`/`COLUMNS`, else [`DEFAULT_SIZE`].
pub fn size() -> TtySize {
    let from_fd = |fd: std::os::fd::BorrowedFd<'_>| {
        termios::tcgetwinsize(fd)
            .ok()
            .filter(|w| w.ws_row > 0 && w.ws_col > 0)
            .map(|w| TtySize {
                rows: w.ws_row,
                cols: w.ws_col,
            })
    };
    from_fd(std::io::stdout().as_fd())
        .or_else(|| from_fd(std::io::stdin().as_fd()))
        .or_else(|| from_fd(std::io::stderr().as_fd()))
        .unwrap_or_else(|| {
            size_from_env(
                std::env::var("LINES").ok().as_deref(),
                std::env::var("COLUMNS").ok().as_deref(),
            )
        })
}

/// `LINES`/`COLUMNS` when both are positive numbers, else the default
/// (each falls back on its own).
fn size_from_env(lines: Option<&str>, columns: Option<&str>) -> TtySize {
    let parse = |v: Option<&str>| {
        v.and_then(|s| s.trim().parse::<u16>().ok())
            .filter(|n| *n > 0)
    };
    TtySize {
        rows: parse(lines).unwrap_or(DEFAULT_SIZE.rows),
        cols: parse(columns).unwrap_or(DEFAULT_SIZE.cols),
    }
}

/// Whether our stdin is a terminal.
pub fn stdin_is_tty() -> bool {
    std::io::stdin().is_terminal()
}

/// Keeps stdin's terminal in raw mode while alive; dropping it restores the
/// settings it found, on every path (return, `?`, panic unwinding).
pub struct RawMode {
    saved: Termios,
}

impl RawMode {
    /// Puts stdin's terminal in raw mode: no echo, no line editing, and
    /// Ctrl-C, Ctrl-Z, Ctrl-\ arrive as bytes instead of signals.
    pub fn enter() -> Result<RawMode> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd()).context("reading the terminal settings")?;
        let mut raw = saved.clone();
        raw.make_raw();
        termios::tcsetattr(stdin.as_fd(), OptionalActions::Now, &raw)
            .context("switching the terminal to raw mode")?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // Drain: let our pending output reach the terminal with the raw
        // settings it was written for, then restore.
        let _ = termios::tcsetattr(
            std::io::stdin().as_fd(),
            OptionalActions::Drain,
            &self.saved,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_size_falls_back_per_field() {
        assert_eq!(
            size_from_env(Some("50"), Some("132")),
            TtySize {
                rows: 50,
                cols: 132
            }
        );
        assert_eq!(size_from_env(None, None), DEFAULT_SIZE);
        assert_eq!(
            size_from_env(Some("0"), Some("x")),
            TtySize { rows: 24, cols: 80 }
        );
        assert_eq!(
            size_from_env(Some(" 40 "), None),
            TtySize { rows: 40, cols: 80 }
        );
    }
}
