//! `warren token`: create, list and revoke API tokens.

use std::path::Path;

use anyhow::Result;
use clap::Subcommand;
use warren_proto::api::CreateTokenRequest;

use crate::remote::{self, block_on, outln};

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a token; prints its secret (shown only once).
    Create {
        name: String,
        /// Workspace the token acts in (default: the caller's; admin only).
        #[arg(long)]
        workspace: Option<String>,
        /// Make an admin token (admin only).
        #[arg(long)]
        admin: bool,
    },
    /// List the tokens of the caller's workspace.
    Ls,
    /// Revoke a token.
    Revoke { id: String },
}

pub fn run(data_dir: &Path, cmd: TokenCommand) -> Result<i32> {
    let c = remote::client(data_dir)?;
    block_on(async move {
        match cmd {
            TokenCommand::Create {
                name,
                workspace,
                admin,
            } => {
                let t = c
                    .create_token(&CreateTokenRequest {
                        name,
                        workspace_id: workspace,
                        admin,
                    })
                    .await?;
                match t.token {
                    Some(secret) => outln!("{secret}")?,
                    None => anyhow::bail!("the server returned no secret for token {}", t.id),
                }
            }
            TokenCommand::Ls => {
                let list = c.list_tokens().await?;
                outln!(
                    "{:<28}  {:<20}  {:<28}  {:<5}  {:<25}  REVOKED",
                    "ID",
                    "NAME",
                    "WORKSPACE",
                    "ADMIN",
                    "CREATED"
                )?;
                for t in list {
                    outln!(
                        "{:<28}  {:<20}  {:<28}  {:<5}  {:<25}  {}",
                        t.id,
                        t.name,
                        t.workspace_id,
                        t.admin,
                        t.created_at,
                        t.revoked_at.as_deref().unwrap_or("-")
                    )?;
                }
            }
            TokenCommand::Revoke { id } => c.revoke_token(&id).await?,
        }
        Ok(0)
    })?
}
