//! `warren serve`: the API server, the node and (later) the relay in one
//! process, with embedded state under the data directory.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, Result};
use clap::Args;

#[derive(Args)]
pub struct ServeArgs {
    /// Address to serve the API on.
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Image for sandboxes whose create request names none.
    #[arg(long, default_value = "host")]
    default_image: String,
}

pub fn run(data_dir: &Path, a: ServeArgs) -> Result<i32> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut cfg = warren_server::ServerConfig::new(a.listen, data_dir);
    cfg.default_image = a.default_image;
    rt.block_on(async move {
        let shutdown = shutdown_signal();
        warren_server::run(cfg, shutdown).await
    })
    .context("warren serve")?;
    Ok(0)
}

/// Resolves on SIGINT or SIGTERM, so a service manager's stop is graceful.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
