//! The in-process ("local") engine: the native runtime and the image store
//! under the data directory, used without a server.

use std::path::Path;

use anyhow::{Context, Result};
use warren_image::ImageStore;
use warren_runtime::{NativeConfig, NativeRuntime, RootfsSpec};

pub struct Local {
    pub rt: NativeRuntime,
    pub images: ImageStore,
}

impl Local {
    pub fn open(data_dir: &Path) -> Result<Self> {
        let images = ImageStore::open(data_dir.join("images"))
            .with_context(|| format!("opening the image store under {}", data_dir.display()))?;
        let rt = NativeRuntime::new(NativeConfig::new(data_dir.join("runtime")))
            .context("starting the sandbox runtime (run as root)")?;
        Ok(Local { rt, images })
    }

    /// The root filesystem and environment of an image reference.
    pub fn rootfs(&self, reference: &str) -> Result<(RootfsSpec, warren_image::ImageConfig)> {
        let img = self
            .images
            .resolve(reference)
            .with_context(|| format!("image {reference:?}"))?;
        Ok((warren_node::rootfs_of(&img), img.config))
    }
}
