//! `pull`: MB/s of pulling a ~100 MB image from a registry on loopback,
//! Warren's `Puller` (download, verify, decompress, unpack into the store)
//! against `skopeo copy docker://... dir:` (download and verify only) of
//! the very same image, in the same run, a fresh destination each time.
//!
//! The image is built here: incompressible layers (pseudo-random bytes),
//! a compressible one (repetitive text), and busybox, gzip-compressed; it
//! is pushed to Debian's `docker-registry` started on a free 127.0.0.1 port
//! (through `warren_testkit::registry`, the same fixture the pull tests
//! use; the bench is a binary, never a dependency of Warren itself).
//!
//! MB/s = compressed bytes of the layer blobs / wall time of the pull.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;
use warren_registry::{Puller, RegistryConfig, RegistryEntry};
use warren_testkit::registry::{
    busybox_tar, noise, Compress, LayoutBuilder, Registry, TarBuilder, TestConfig,
};

use crate::shutdown::Shutdown;
use crate::stats::{json_num, json_object, round3, Summary};

#[derive(Args, Debug)]
pub struct PullArgs {
    /// Measured pulls per tool.
    #[arg(long, default_value_t = 3, value_parser = crate::parse_positive)]
    pub runs: usize,
    /// Approximate image size in MB (layer blobs, compressed).
    #[arg(long, default_value_t = 100, value_parser = crate::parse_positive)]
    pub size_mb: usize,
}

pub fn run(args: &PullArgs, data: &Path, shutdown: &Shutdown) -> Result<()> {
    if !Path::new(warren_testkit::registry::REGISTRY_BIN).exists() {
        bail!("docker-registry is not installed (scripts/install-deps.sh)");
    }
    let registry = Registry::start().context("start docker-registry")?;
    eprintln!("registry on {}", registry.host());
    let total = build_and_push(&registry, data, args.size_mb)?;
    let mb = total as f64 / 1e6;
    eprintln!("image: {mb:.1} MB of layer blobs");
    let reference = format!("{}/bench/pull:1", registry.host());
    let mut config = RegistryConfig::default();
    config.registries.insert(
        registry.host(),
        RegistryEntry {
            insecure: true,
            auth: None,
        },
    );
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
            let dest = data.join(format!("pull-{tool}-{i}"));
            let t = Instant::now();
            if tool == "warren" {
                let store = Arc::new(warren_image::ImageStore::open(&dest)?);
                let puller = Puller::new(store, config.clone())?;
                rt.block_on(puller.pull(&reference, |_| {}))?;
                warren.push(t.elapsed());
            } else {
                let status = Command::new("skopeo")
                    .args(["copy", "--quiet", "--src-tls-verify=false"])
                    .arg(format!("docker://{reference}"))
                    .arg(format!("dir:{}", dest.display()))
                    .stdin(Stdio::null())
                    .status()
                    .context("skopeo")?;
                if !status.success() {
                    bail!("skopeo copy failed: {status}");
                }
                skopeo.push(t.elapsed());
            }
            std::fs::remove_dir_all(&dest).ok();
            eprintln!("progress: {tool} {}/{}", i + 1, args.runs);
        }
    }
    let rate = |samples: &[Duration]| Summary::of(samples).map(|s| mb / (s.p50 / 1000.0));
    let (w, s) = (rate(&warren), rate(&skopeo));
    println!(
        "pull of a {mb:.1} MB image from a loopback registry ({} runs each, median):",
        args.runs
    );
    println!("  {:<28} {:>10} {:>10}", "tool", "MB/s", "seconds");
    for (name, r) in [
        ("warren (pull+verify+unpack)", w),
        ("skopeo copy dir: (download)", s),
    ] {
        let secs = r.map(|r| mb / r).unwrap_or(f64::NAN);
        println!("  {name:<28} {:>10.1} {secs:>10.2}", r.unwrap_or(f64::NAN));
    }
    let ratio = w.zip(s).map(|(w, s)| w / s);
    if let Some(ratio) = ratio {
        println!("  warren / skopeo: {ratio:.2}x");
    }
    let fields = vec![
        ("bench".into(), json!("pull")),
        ("image_mb".into(), json!(round3(mb))),
        ("runs".into(), json!(args.runs)),
        ("warren_mb_s".into(), json_num(w)),
        ("skopeo_mb_s".into(), json_num(s)),
        ("ratio_vs_skopeo".into(), json_num(ratio)),
    ];
    println!("{}", json_object(&fields));
    Ok(())
}

/// Builds the bench image as an OCI layout and pushes it; returns the
/// total size of its layer blobs.
fn build_and_push(registry: &Registry, data: &Path, size_mb: usize) -> Result<u64> {
    let mut layout = LayoutBuilder::new(&data.join("pull-layout"))?;
    let part = (size_mb << 20) / 4;
    let mut layers = vec![layout.layer(&busybox_tar()?, Compress::Gzip)?];
    for seed in 1..=3u64 {
        let mut tar = TarBuilder::new().dir(&format!("data{seed}"), 0o755);
        // Files of 1 MB, like a real image's libraries.
        for f in 0..(part >> 20).max(1) {
            tar = tar.file(
                &format!("data{seed}/blob{f}"),
                0o644,
                &noise(1 << 20, seed * 1000 + f as u64),
            );
        }
        layers.push(layout.layer(&tar.finish(), Compress::Gzip)?);
    }
    let text: Vec<u8> = (0..)
        .flat_map(|i: u64| {
            format!("line {i}: the quick brown fox jumps over the lazy dog\n").into_bytes()
        })
        .take(part * 8)
        .collect();
    let tar = TarBuilder::new().file("text.log", 0o644, &text).finish();
    layers.push(layout.layer(&tar, Compress::Gzip)?);
    layout.image("1", &layers, &TestConfig::default())?;
    registry.push(layout.dir(), "1", "bench/pull:1")?;
    Ok(layers.iter().map(|l| l.size).sum())
}
