//! `push`: MB/s of pushing a ~100 MB image to a registry on loopback,
//! Warren's `Pusher` (from the image store: HEAD, upload, manifest)
//! against `skopeo copy oci:LAYOUT docker://...` of the very same image
//! (the layout it was imported from), in the same run, each push to a
//! freshly started `docker-registry` (so nothing is there yet).
//!
//! The image: busybox and three layers of incompressible 1 MB files,
//! gzip-compressed, imported into a store with `import_archive` (so
//! Warren pushes the original manifest and blobs, like a pulled image).
//!
//! MB/s = compressed bytes of the layer blobs / wall time of the push.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;
use warren_registry::{PushOptions, Pusher, RegistryConfig, RegistryEntry};
use warren_testkit::registry::{
    busybox_tar, noise, Compress, LayoutBuilder, Registry, TarBuilder, TestConfig,
};

use crate::shutdown::Shutdown;
use crate::stats::{json_num, json_object, round3, Summary};

#[derive(Args, Debug)]
pub struct PushArgs {
    /// Measured pushes per tool.
    #[arg(long, default_value_t = 3, value_parser = crate::parse_positive)]
    pub runs: usize,
    /// Approximate image size in MB (layer blobs, compressed).
    #[arg(long, default_value_t = 100, value_parser = crate::parse_positive)]
    pub size_mb: usize,
}

pub fn run(args: &PushArgs, data: &Path, shutdown: &Shutdown) -> Result<()> {
    if !Path::new(warren_testkit::registry::REGISTRY_BIN).exists() {
        bail!("docker-registry is not installed (scripts/install-deps.sh)");
    }
    let layout_dir = data.join("push-layout");
    let total = build_layout(&layout_dir, args.size_mb)?;
    let mb = total as f64 / 1e6;
    eprintln!("image: {mb:.1} MB of layer blobs");
    let store = Arc::new(warren_image::ImageStore::open(data.join("push-store"))?);
    store
        .import_archive(&layout_dir, Some("bench/push:1"))
        .context("import the bench image")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;

    let mut warren = Vec::new();
    let mut skopeo = Vec::new();
    for i in 0..args.runs {
        shutdown.check()?;
        // Alternate the order so neither tool always gets a warmer cache.
        for tool in if i % 2 == 0 {
            ["warren", "skopeo"]
        } else {
            ["skopeo", "warren"]
        } {
            let registry = Registry::start().context("start docker-registry")?;
            let target = format!("{}/bench/push:1", registry.host());
            let t = Instant::now();
            if tool == "warren" {
                let mut config = RegistryConfig::default();
                config.registries.insert(
                    registry.host(),
                    RegistryEntry {
                        insecure: true,
                        auth: None,
                    },
                );
                let pusher = Pusher::new(store.clone(), config)?;
                let summary = rt.block_on(pusher.push(
                    "bench/push:1",
                    &target,
                    &PushOptions::default(),
                    |_| {},
                ))?;
                warren.push(t.elapsed());
                if summary.skipped_blobs != 0 {
                    bail!(
                        "a fresh registry already had {} blobs",
                        summary.skipped_blobs
                    );
                }
            } else {
                let status = Command::new("skopeo")
                    .args(["copy", "--quiet", "--dest-tls-verify=false"])
                    .arg(format!("oci:{}:1", layout_dir.display()))
                    .arg(format!("docker://{target}"))
                    .stdin(Stdio::null())
                    .status()
                    .context("skopeo")?;
                if !status.success() {
                    bail!("skopeo copy failed: {status}");
                }
                skopeo.push(t.elapsed());
            }
            eprintln!("progress: {tool} {}/{}", i + 1, args.runs);
        }
    }
    let rate = |samples: &[Duration]| Summary::of(samples).map(|s| mb / (s.p50 / 1000.0));
    let (w, s) = (rate(&warren), rate(&skopeo));
    println!(
        "push of a {mb:.1} MB image to a loopback registry ({} runs each, median):",
        args.runs
    );
    println!("  {:<28} {:>10} {:>10}", "tool", "MB/s", "seconds");
    for (name, r) in [
        ("warren (store -> registry)", w),
        ("skopeo copy oci: -> docker:", s),
    ] {
        let secs = r.map(|r| mb / r).unwrap_or(f64::NAN);
        println!("  {name:<28} {:>10.1} {secs:>10.2}", r.unwrap_or(f64::NAN));
    }
    let ratio = w.zip(s).map(|(w, s)| w / s);
    if let Some(ratio) = ratio {
        println!("  warren / skopeo: {ratio:.2}x");
    }
    let fields = vec![
        ("bench".into(), json!("push")),
        ("image_mb".into(), json!(round3(mb))),
        ("runs".into(), json!(args.runs)),
        ("warren_mb_s".into(), json_num(w)),
        ("skopeo_mb_s".into(), json_num(s)),
        ("ratio_vs_skopeo".into(), json_num(ratio)),
    ];
    println!("{}", json_object(&fields));
    Ok(())
}

/// Writes the bench image as an OCI layout tagged `1`; returns the total
/// size of its layer blobs.
fn build_layout(dir: &Path, size_mb: usize) -> Result<u64> {
    let mut layout = LayoutBuilder::new(dir)?;
    let part = (size_mb << 20) / 3;
    let mut layers = vec![layout.layer(&busybox_tar()?, Compress::Gzip)?];
    for seed in 1..=3u64 {
        let mut tar = TarBuilder::new().dir(&format!("data{seed}"), 0o755);
        for f in 0..(part >> 20).max(1) {
            tar = tar.file(
                &format!("data{seed}/blob{f}"),
                0o644,
                &noise(1 << 20, seed * 1000 + f as u64),
            );
        }
        layers.push(layout.layer(&tar.finish(), Compress::Gzip)?);
    }
    layout.image("1", &layers, &TestConfig::default())?;
    Ok(layers.iter().map(|l| l.size).sum())
}
