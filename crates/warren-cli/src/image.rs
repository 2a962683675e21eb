//! `warren image`: import and list images in the local store.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;
use warren_image::ImageStore;

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Import a root filesystem from a directory or a tarball (.tar, .tar.gz).
    Import {
        /// Directory or tarball.
        source: PathBuf,
        /// Name for the image, `name[:tag]`.
        #[arg(long)]
        name: String,
    },
    /// List images.
    Ls,
}

pub fn run(data_dir: &Path, cmd: ImageCommand) -> Result<i32> {
    let store = ImageStore::open(data_dir.join("images")).context("opening the image store")?;
    match cmd {
        ImageCommand::Import { source, name } => {
            let img = if source.is_dir() {
                store.import_dir(&source, &name)
            } else {
                let f = std::fs::File::open(&source)
                    .with_context(|| format!("opening {}", source.display()))?;
                store.import_tar(std::io::BufReader::new(f), &name)
            }
            .with_context(|| format!("importing {}", source.display()))?;
            crate::remote::outln!("{}", img.id)?;
        }
        ImageCommand::Ls => {
            crate::remote::outln!("{:<71}  {:>6}  NAMES", "ID", "LAYERS")?;
            for img in store.list().context("listing images")? {
                crate::remote::outln!(
                    "{:<71}  {:>6}  {}",
                    img.id,
                    img.layers.len(),
                    img.names.join(", ")
                )?;
            }
        }
    }
    Ok(0)
}
