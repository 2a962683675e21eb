//! `warren workspace`: create and list workspaces (admin tokens only).

use std::path::Path;

use anyhow::Result;
use clap::Subcommand;

use crate::remote::{self, block_on, outln};

#[derive(Subcommand)]
pub enum WorkspaceCommand {
    /// Create a workspace; prints its id.
    Create { name: String },
    /// List workspaces.
    Ls,
}

pub fn run(data_dir: &Path, cmd: WorkspaceCommand) -> Result<i32> {
    let c = remote::client(data_dir)?;
    block_on(async move {
        match cmd {
            WorkspaceCommand::Create { name } => {
                let w = c.create_workspace(&name).await?;
                outln!("{}", w.id)?;
            }
            WorkspaceCommand::Ls => {
                let list = c.list_workspaces().await?;
                outln!("{:<28}  {:<24}  CREATED", "ID", "NAME")?;
                for w in list {
                    outln!("{:<28}  {:<24}  {}", w.id, w.name, w.created_at)?;
                }
            }
        }
        Ok(0)
    })?
}
