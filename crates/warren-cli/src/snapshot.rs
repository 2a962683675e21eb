//! `warren sandbox snapshot`, `snapshot-dir` and `mount`: snapshots of a
//! sandbox's filesystem (or one directory) into images, and image mounts.

use anyhow::{bail, Result};
use clap::Args;
use warren_client::Client;
use warren_proto::api::{
    ImageMount, SnapshotDirectoryRequest, SnapshotFilesystemRequest, SnapshotImage,
};

use crate::remote::outln;

#[derive(Args)]
pub struct SnapshotArgs {
    id: String,
    /// Name the new image (`name[:tag]`).
    #[arg(long)]
    name: Option<String>,
    /// Remove the image this many seconds after it was taken (once no
    /// sandbox uses it).
    #[arg(long, value_name = "SECS")]
    ttl: Option<u64>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct SnapshotDirArgs {
    id: String,
    /// Absolute path of the directory inside the sandbox.
    path: String,
    #[arg(long)]
    name: Option<String>,
    #[arg(long, value_name = "SECS")]
    ttl: Option<u64>,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct MountArgs {
    id: String,
    /// Absolute path inside the sandbox (created when missing).
    path: String,
    /// Image reference or id (for example a `snapshot-dir` result).
    image: String,
}

fn show(out: &SnapshotImage, json: bool) -> Result<()> {
    if json {
        outln!("{}", serde_json::to_string_pretty(out)?)?;
    } else {
        // The id alone on stdout, so that `img=$(warren sandbox snapshot ID)` works.
        outln!("{}", out.image_id)?;
        eprintln!(
            "layer: {} entries, {} bytes; frozen {:.1} ms, took {:.1} ms{}",
            out.layer_entries,
            out.layer_bytes,
            out.frozen_ms,
            out.took_ms,
            out.expires_at
                .as_deref()
                .map(|e| format!("; expires {e}"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

pub async fn snapshot(c: &Client, a: SnapshotArgs) -> Result<i32> {
    let req = SnapshotFilesystemRequest {
        name: a.name,
        ttl_secs: a.ttl,
    };
    show(&c.snapshot_filesystem(&a.id, &req).await?, a.json)?;
    Ok(0)
}

pub async fn snapshot_dir(c: &Client, a: SnapshotDirArgs) -> Result<i32> {
    let req = SnapshotDirectoryRequest {
        path: a.path,
        name: a.name,
        ttl_secs: a.ttl,
    };
    show(&c.snapshot_directory(&a.id, &req).await?, a.json)?;
    Ok(0)
}

pub async fn mount(c: &Client, a: MountArgs) -> Result<i32> {
    c.mount_image(
        &a.id,
        &ImageMount {
            path: a.path,
            image: a.image,
        },
    )
    .await?;
    Ok(0)
}

/// Parses `--mount PATH=IMAGE` flags.
pub fn parse_mounts(flags: &[String]) -> Result<Vec<ImageMount>> {
    flags
        .iter()
        .map(|f| match f.split_once('=') {
            Some((path, image)) if !path.is_empty() && !image.is_empty() => Ok(ImageMount {
                path: path.to_string(),
                image: image.to_string(),
            }),
            _ => bail!("--mount takes PATH=IMAGE, got {f:?}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_flags() {
        let m = parse_mounts(&["/data=snap:v1".into()]).unwrap();
        assert_eq!(m[0].path, "/data");
        assert_eq!(m[0].image, "snap:v1");
        assert!(parse_mounts(&["/data".into()]).is_err());
        assert!(parse_mounts(&["=img".into()]).is_err());
    }
}
