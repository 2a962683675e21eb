//! Ctrl-C / SIGTERM handling without `unsafe`: the signals set a flag that
//! the benchmark loops check, so they stop early and still clean up.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use signal_hook::consts::{SIGINT, SIGTERM};

/// Exit code when a second signal arrives while cleanup is running.
const SECOND_SIGNAL_EXIT_CODE: i32 = 130;

#[derive(Clone)]
pub struct Shutdown(Arc<AtomicBool>);

impl Shutdown {
    /// Installs the handlers. The first SIGINT/SIGTERM sets the flag; a second
    /// one (while cleanup runs) exits at once, abandoning cleanup.
    ///
    /// Handlers are reset by `execve`, so child processes (peers, sandbox
    /// init) start with default dispositions and an unchanged signal mask.
    pub fn install() -> Result<Self> {
        let flag = Arc::new(AtomicBool::new(false));
        for sig in [SIGINT, SIGTERM] {
            // Registered first, so it sees the flag as it was before this
            // signal: it only fires on the second signal.
            signal_hook::flag::register_conditional_shutdown(
                sig,
                SECOND_SIGNAL_EXIT_CODE,
                Arc::clone(&flag),
            )
            .context("install signal handler")?;
            signal_hook::flag::register(sig, Arc::clone(&flag))
                .context("install signal handler")?;
        }
        Ok(Self(flag))
    }

    pub fn requested(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// Errors out if a stop was requested.
    pub fn check(&self) -> Result<()> {
        if self.requested() {
            bail!("interrupted; cleaning up (press Ctrl-C again to abandon cleanup)");
        }
        Ok(())
    }
}
