//! `warren sandbox snapshot-memory|pause|resume|fork` and `warren
//! memory-snapshot ls|get|rm`: memory snapshots (checkpoints of running
//! sandboxes), fork, pause and resume. Restores are `warren sandbox create
//! --from-memory-snapshot ID`.

use std::path::Path;

use anyhow::Result;
use clap::{Args, Subcommand};
use warren_client::{state_str, Client};
use warren_proto::api::{MemorySnapshot, SnapshotMemoryRequest};

use crate::remote::{self, block_on, outln};
use crate::sandbox::print_json;

#[derive(Args)]
pub struct SnapshotMemoryArgs {
    id: String,
    /// Remove the memory snapshot this many seconds after it was taken.
    #[arg(long, value_name = "SECS")]
    ttl: Option<u64>,
    /// Print the record as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct ForkArgs {
    id: String,
    /// How many copies (1-32).
    #[arg(short = 'n', long = "count", default_value_t = 1,
        value_parser = clap::value_parser!(u32).range(1..=32))]
    count: u32,
    /// Print the copies as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
pub enum MemorySnapshotCommand {
    /// List memory snapshots (newest first).
    Ls {
        /// Print them as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one memory snapshot as JSON.
    Get { id: String },
    /// Remove memory snapshots (their checkpoints and image holds).
    Rm {
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

/// `warren sandbox snapshot-memory`: prints the new memory snapshot's id.
pub async fn snapshot_memory(c: &Client, a: SnapshotMemoryArgs) -> Result<i32> {
    let m = c
        .snapshot_memory(&a.id, &SnapshotMemoryRequest { ttl_secs: a.ttl })
        .await?;
    if a.json {
        print_json(&m)?;
    } else {
        outln!("{}", m.id)?;
        eprintln!("{} bytes{}", m.bytes, expiry(&m));
    }
    Ok(0)
}

/// `warren sandbox fork`: prints the copies' ids, one per line.
pub async fn fork(c: &Client, a: ForkArgs) -> Result<i32> {
    let copies = c.fork_sandbox(&a.id, a.count).await?;
    if a.json {
        print_json(&copies)?;
    } else {
        for s in copies {
            outln!("{}", s.id)?;
        }
    }
    Ok(0)
}

/// `warren sandbox pause` / `resume`: prints the new state.
pub async fn pause_or_resume(c: &Client, id: &str, pause: bool) -> Result<i32> {
    let sb = if pause {
        c.pause_sandbox(id).await?
    } else {
        c.resume_sandbox(id).await?
    };
    outln!("{}", state_str(sb.state))?;
    Ok(0)
}

fn expiry(m: &MemorySnapshot) -> String {
    m.expires_at
        .as_deref()
        .map(|e| format!("; expires {e}"))
        .unwrap_or_default()
}

pub fn run(data_dir: &Path, cmd: MemorySnapshotCommand) -> Result<i32> {
    let client = remote::client(data_dir)?;
    block_on(dispatch(&client, cmd))?
}

async fn dispatch(c: &Client, cmd: MemorySnapshotCommand) -> Result<i32> {
    match cmd {
        MemorySnapshotCommand::Ls { json } => {
            let all = c.list_memory_snapshots().await?;
            if json {
                print_json(&all)?;
            } else {
                outln!("{:<28} {:<26} {:>12}  CREATED", "ID", "SANDBOX", "BYTES")?;
                for m in all {
                    outln!(
                        "{:<28} {:<26} {:>12}  {}{}",
                        m.id,
                        m.sandbox_id,
                        m.bytes,
                        m.created_at,
                        expiry(&m)
                    )?;
                }
            }
            Ok(0)
        }
        MemorySnapshotCommand::Get { id } => {
            print_json(&c.get_memory_snapshot(&id).await?)?;
            Ok(0)
        }
        MemorySnapshotCommand::Rm { ids } => {
            for id in ids {
                c.delete_memory_snapshot(&id).await?;
            }
            Ok(0)
        }
    }
}
