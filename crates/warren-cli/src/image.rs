//! `warren image`: pull, push, list, inspect, remove, garbage-collect,
//! import and export images. Everything but a root-filesystem import goes through the API of
//! the server (`WARREN_URL`, `WARREN_TOKEN`); importing a plain directory or
//! rootfs tarball writes to the local store under `--data-dir`.

use std::collections::HashMap;
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use warren_image::ImageStore;
use warren_proto::api::{
    ImageInfo, PullImageRequest, PullProgress, PushImageRequest, PushProgress, RegistryAuth,
};

use crate::remote::{block_on, client, outln};

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Pull an image from a registry into the server's store, with progress.
    Pull {
        /// `python:3.12`, `registry.example.com:5000/team/app:v1`, `name@sha256:...`.
        reference: String,
        /// Registry user for this pull (the password is read from stdin).
        #[arg(long, requires = "password_stdin")]
        username: Option<String>,
        /// Read the registry password from stdin.
        #[arg(long, requires = "username")]
        password_stdin: bool,
        /// Read a registry bearer token from stdin.
        #[arg(long, conflicts_with_all = ["username", "password_stdin"])]
        token_stdin: bool,
    },
    /// Import an image: a `docker save` archive or an OCI image layout
    /// (directory or tar) through the server, or a plain root filesystem
    /// (directory, .tar, .tar.gz) into the local store.
    Import {
        /// Archive, layout directory, or root filesystem; `-` reads an
        /// archive from stdin (say, `warren image export REF -o -`).
        source: PathBuf,
        /// Name for the image, `name[:tag]` (required for a root filesystem).
        #[arg(long)]
        name: Option<String>,
    },
    /// Export an image as an OCI archive (a tar of an OCI image layout),
    /// which `warren image import` and OCI tools (`skopeo copy
    /// oci-archive:FILE ...`) read.
    Export {
        /// Name, name:tag or image id.
        reference: String,
        /// The archive to write; `-` for stdout.
        #[arg(short = 'o', long)]
        output: PathBuf,
    },
    /// Push an image to a registry, with progress (admin tokens).
    Push {
        /// Name, name:tag or image id in the server's store.
        reference: String,
        /// `host[:port]/repository[:tag]`.
        target: String,
        /// Plain HTTP to this registry (loopback or trusted networks only).
        #[arg(long)]
        insecure: bool,
        /// Registry user for this push (the password is read from stdin).
        #[arg(long, requires = "password_stdin")]
        username: Option<String>,
        /// Read the registry password from stdin.
        #[arg(long, requires = "username")]
        password_stdin: bool,
        /// Read a registry bearer token from stdin.
        #[arg(long, conflicts_with_all = ["username", "password_stdin"])]
        token_stdin: bool,
    },
    /// Build an image from a recipe (a Dockerfile subset) and a context
    /// directory, with step progress and the RUN output.
    Build(crate::build::BuildArgs),
    /// List images.
    Ls,
    /// Show an image: id, names, layers and config (JSON).
    Inspect { reference: String },
    /// Remove an image name (and the image when no other name is left);
    /// refused while a live sandbox uses it.
    Rm { reference: String },
    /// Remove unreferenced images, layers and blobs; keeps images in use.
    Gc,
}

pub fn run(data_dir: &Path, cmd: ImageCommand) -> Result<i32> {
    match cmd {
        ImageCommand::Pull {
            reference,
            username,
            password_stdin,
            token_stdin,
        } => {
            let auth = if token_stdin {
                Some(RegistryAuth::Token {
                    token: read_secret("token")?,
                })
            } else if let (Some(username), true) = (username, password_stdin) {
                Some(RegistryAuth::Basic {
                    username,
                    password: read_secret("password")?,
                })
            } else {
                None
            };
            let c = client(data_dir)?;
            let req = PullImageRequest { reference, auth };
            let mut display = PullDisplay::new();
            let info = block_on(c.pull_image(&req, |p| display.event(p)))?;
            display.finish();
            let info = info.with_context(|| format!("pulling {}", req.reference))?;
            outln!("{}", info.id)?;
        }
        ImageCommand::Import { source, name } => {
            // An archive on stdin is spooled to a temporary file first
            // (the upload needs its length; the type check reads it twice).
            let _spooled;
            let source = if source == Path::new("-") {
                let mut tmp = tempfile::Builder::new()
                    .prefix("warren-import-")
                    .suffix(".tar")
                    .tempfile()
                    .context("temporary file for the archive on stdin")?;
                std::io::copy(&mut std::io::stdin().lock(), tmp.as_file_mut())
                    .context("reading the archive from stdin")?;
                let path = tmp.path().to_path_buf();
                _spooled = tmp;
                path
            } else {
                source
            };
            if is_image_archive(&source)? {
                let c = client(data_dir)?;
                let (upload, _tmp) = archive_for_upload(&source)?;
                let info = block_on(c.import_image(&upload, name.as_deref()))?
                    .with_context(|| format!("importing {}", source.display()))?;
                outln!("{}", info.id)?;
            } else {
                let Some(name) = name else {
                    bail!("importing a root filesystem needs --name NAME[:TAG]");
                };
                let store =
                    ImageStore::open(data_dir.join("images")).context("opening the image store")?;
                let img = if source.is_dir() {
                    store.import_dir(&source, &name)
                } else {
                    let f = std::fs::File::open(&source)
                        .with_context(|| format!("opening {}", source.display()))?;
                    store.import_tar(std::io::BufReader::new(f), &name)
                }
                .with_context(|| format!("importing {}", source.display()))?;
                outln!("{}", img.id)?;
            }
        }
        ImageCommand::Export { reference, output } => {
            let c = client(data_dir)?;
            export(&c, &reference, &output)?;
        }
        ImageCommand::Push {
            reference,
            target,
            insecure,
            username,
            password_stdin,
            token_stdin,
        } => {
            let auth = registry_auth(username, password_stdin, token_stdin)?;
            let c = client(data_dir)?;
            let req = PushImageRequest {
                target,
                insecure,
                auth,
            };
            let mut display = PullDisplay::new();
            let result = block_on(c.push_image(&reference, &req, |p| display.push_event(p)))?;
            display.finish();
            let result =
                result.with_context(|| format!("pushing {reference} to {}", req.target))?;
            outln!("{}@{}", result.target, result.manifest_digest)?;
        }
        ImageCommand::Build(args) => return crate::build::run(data_dir, args),
        ImageCommand::Ls => {
            let c = client(data_dir)?;
            let images = block_on(c.list_images())??;
            outln!("{:<19}  {:>6}  {:>10}  NAMES", "ID", "LAYERS", "SIZE")?;
            for img in images {
                outln!(
                    "{:<19}  {:>6}  {:>10}  {}",
                    short_id(&img.id),
                    img.layers.len(),
                    human_bytes(img.size),
                    img.names.join(", ")
                )?;
            }
        }
        ImageCommand::Inspect { reference } => {
            let c = client(data_dir)?;
            let info: ImageInfo = block_on(c.inspect_image(&reference))??;
            outln!("{}", serde_json::to_string_pretty(&info)?)?;
        }
        ImageCommand::Rm { reference } => {
            let c = client(data_dir)?;
            block_on(c.remove_image(&reference))??;
        }
        ImageCommand::Gc => {
            let c = client(data_dir)?;
            let r = block_on(c.gc_images())??;
            outln!(
                "removed {} image(s), {} layer(s), {} blob(s), {} leftover(s); freed {}",
                r.images_removed,
                r.layers_removed,
                r.blobs_removed,
                r.tmp_removed,
                human_bytes(r.bytes_freed)
            )?;
        }
    }
    Ok(0)
}

/// Per-request registry credentials from the flags (secrets on stdin).
fn registry_auth(
    username: Option<String>,
    password_stdin: bool,
    token_stdin: bool,
) -> Result<Option<RegistryAuth>> {
    Ok(if token_stdin {
        Some(RegistryAuth::Token {
            token: read_secret("token")?,
        })
    } else if let (Some(username), true) = (username, password_stdin) {
        Some(RegistryAuth::Basic {
            username,
            password: read_secret("password")?,
        })
    } else {
        None
    })
}

/// `warren image export`: streams the archive into `output` (through a
/// `.partial` file renamed at the end, so a broken transfer never leaves
/// a file that looks whole) or stdout, with a progress bar on a terminal.
fn export(c: &warren_client::Client, reference: &str, output: &Path) -> Result<()> {
    let to_stdout = output == Path::new("-");
    if to_stdout && std::io::stdout().is_terminal() {
        bail!("refusing to write an archive to a terminal; redirect stdout or use -o FILE");
    }
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(format!("exporting {reference}"));
        bar
    });
    let progress = |written: u64, total: Option<u64>| {
        if let Some(bar) = &bar {
            if let Some(total) = total {
                bar.set_length(total);
            }
            bar.set_position(written);
        }
    };
    let started = Instant::now();
    let written = if to_stdout {
        let mut out = tokio::io::stdout();
        block_on(async { c.export_image(reference, &mut out, progress).await })?
            .with_context(|| format!("exporting {reference}"))?
    } else {
        let file_name = output
            .file_name()
            .with_context(|| format!("{} is not a file name", output.display()))?;
        let mut partial_name = file_name.to_os_string();
        partial_name.push(".partial");
        let partial = output.with_file_name(partial_name);
        let result = block_on(async {
            let mut file = tokio::fs::File::create(&partial)
                .await
                .with_context(|| format!("creating {}", partial.display()))?;
            let n = c.export_image(reference, &mut file, progress).await?;
            file.sync_all().await?;
            Ok::<_, anyhow::Error>(n)
        })?;
        match result {
            Ok(n) => {
                std::fs::rename(&partial, output)
                    .with_context(|| format!("renaming {} into place", partial.display()))?;
                n
            }
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                return Err(e.context(format!("exporting {reference}")));
            }
        }
    };
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    eprintln!(
        "exported {reference}: {} in {:.1}s{}",
        human_bytes(written),
        started.elapsed().as_secs_f64(),
        if to_stdout {
            String::new()
        } else {
            format!(" to {}", output.display())
        }
    );
    Ok(())
}

fn read_secret(what: &str) -> Result<String> {
    let mut s = String::new();
    std::io::stdin()
        .take(64 * 1024)
        .read_to_string(&mut s)
        .with_context(|| format!("reading the {what} from stdin"))?;
    let s = s.trim_end_matches(['\n', '\r']).to_string();
    if s.is_empty() {
        bail!("the {what} on stdin is empty");
    }
    Ok(s)
}

/// Whether `path` is a docker-save archive or an OCI layout (directory or
/// tar), rather than a plain root filesystem.
fn is_image_archive(path: &Path) -> Result<bool> {
    if path.is_dir() {
        return Ok(path.join("oci-layout").is_file());
    }
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut head = [0u8; 2];
    let gz = std::io::Read::read(&mut &f, &mut head).unwrap_or(0) == 2 && head == [0x1f, 0x8b];
    if gz {
        return Ok(false);
    }
    let f = std::fs::File::open(path)?;
    let mut ar = tar::Archive::new(f);
    let entries = match ar.entries() {
        Ok(e) => e,
        Err(_) => return Ok(false),
    };
    for e in entries.take(10_000) {
        let Ok(e) = e else { return Ok(false) };
        let p = e.path().map(|p| p.to_path_buf()).unwrap_or_default();
        let p = p.strip_prefix("./").unwrap_or(&p);
        if p == Path::new("manifest.json") || p == Path::new("oci-layout") {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The file to upload: the archive itself, or a tar of a layout directory
/// (kept alive by the returned temp file).
fn archive_for_upload(source: &Path) -> Result<(PathBuf, Option<tempfile::NamedTempFile>)> {
    if !source.is_dir() {
        return Ok((source.to_path_buf(), None));
    }
    let tmp = tempfile::Builder::new()
        .prefix("warren-layout-")
        .suffix(".tar")
        .tempfile()
        .context("temporary file for the layout")?;
    let mut b = tar::Builder::new(tmp.reopen()?);
    b.follow_symlinks(false);
    b.append_dir_all(".", source)
        .with_context(|| format!("packing {}", source.display()))?;
    b.finish()?;
    Ok((tmp.path().to_path_buf(), Some(tmp)))
}

fn short_id(id: &str) -> &str {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    &id[..(id.len() - hex.len() + hex.len().min(12))]
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn short_digest(d: &str) -> String {
    let hex = d.strip_prefix("sha256:").unwrap_or(d);
    hex.chars().take(12).collect()
}

/// Pull progress on stderr: a bar per layer (bytes, rate, ETA) on a
/// terminal, plain lines otherwise (at most one per layer per quarter).
struct PullDisplay {
    tty: Option<MultiProgress>,
    bars: HashMap<String, ProgressBar>,
    /// Plain mode: the last quarter printed per layer.
    quarters: HashMap<String, u64>,
    started: Instant,
}

impl PullDisplay {
    fn new() -> Self {
        let tty = std::io::stderr()
            .is_terminal()
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        PullDisplay {
            tty,
            bars: HashMap::new(),
            quarters: HashMap::new(),
            started: Instant::now(),
        }
    }

    fn line(&self, msg: String) {
        match &self.tty {
            Some(m) => {
                let _ = m.println(msg);
            }
            None => eprintln!("{msg}"),
        }
    }

    /// The first line of a pull or push, and a bar per blob on a terminal.
    fn resolved(
        &mut self,
        what: &str,
        unit: &str,
        manifest_digest: &str,
        blobs: &[warren_proto::api::PullLayer],
    ) {
        let total: u64 = blobs.iter().map(|b| b.size).sum();
        self.line(format!(
            "{what}: {} {unit}, {} ({})",
            blobs.len(),
            human_bytes(total),
            short_digest(manifest_digest)
        ));
        if let Some(m) = &self.tty {
            let style = ProgressStyle::with_template(
                "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            for b in blobs {
                let bar = m.add(ProgressBar::new(b.size));
                bar.set_style(style.clone());
                bar.set_prefix(short_digest(&b.digest));
                self.bars.insert(b.digest.clone(), bar);
            }
        }
    }

    /// Bytes moved for one blob: its bar, or a line per quarter without a
    /// terminal.
    fn progress(&mut self, digest: &str, done: u64, total: u64) {
        if let Some(bar) = self.bars.get(digest) {
            bar.set_length(total);
            bar.set_position(done);
        } else if self.tty.is_none() && total > 0 {
            let q = done * 4 / total;
            let last = self.quarters.entry(digest.to_string()).or_insert(0);
            if q > *last && q < 4 {
                *last = q;
                eprintln!(
                    "{}: {} of {}",
                    short_digest(digest),
                    human_bytes(done),
                    human_bytes(total)
                );
            }
        }
    }

    fn event(&mut self, p: &PullProgress) {
        match p {
            PullProgress::Resolved {
                reference,
                manifest_digest,
                layers,
            } => {
                self.resolved(reference, "layer(s)", manifest_digest, layers);
            }
            PullProgress::LayerProgress {
                digest,
                downloaded,
                total,
            } => {
                self.progress(digest, *downloaded, *total);
            }
            PullProgress::LayerVerified { digest } => self.layer_msg(digest, "downloaded"),
            PullProgress::LayerAlreadyPresent { digest } => {
                self.layer_msg(digest, "already present")
            }
            PullProgress::LayerUnpacked { digest, .. } => {
                if let Some(bar) = self.bars.get(digest) {
                    bar.finish_with_message("unpacked");
                } else {
                    eprintln!("{}: unpacked", short_digest(digest));
                }
            }
            PullProgress::Done { name, .. } => {
                self.line(format!(
                    "pulled {name} in {:.1}s",
                    self.started.elapsed().as_secs_f64()
                ));
            }
        }
    }

    /// A push event: the same bars, one per blob, counting uploads.
    fn push_event(&mut self, p: &PushProgress) {
        match p {
            PushProgress::Resolved {
                target,
                manifest_digest,
                blobs,
                ..
            } => {
                self.resolved(target, "blob(s)", manifest_digest, blobs);
            }
            PushProgress::BlobProgress {
                digest,
                uploaded,
                total,
            } => {
                self.progress(digest, *uploaded, *total);
            }
            PushProgress::BlobExists { digest } => {
                self.layer_msg(digest, "already in the registry");
                if let Some(bar) = self.bars.get(digest) {
                    bar.finish();
                }
            }
            PushProgress::BlobPushed { digest } => {
                self.layer_msg(digest, "pushed");
                if let Some(bar) = self.bars.get(digest) {
                    bar.finish();
                }
            }
            PushProgress::Done(r) => {
                self.line(format!(
                    "pushed {} in {:.1}s: {} blob(s) uploaded ({}), {} already there",
                    r.target,
                    self.started.elapsed().as_secs_f64(),
                    r.pushed_blobs,
                    human_bytes(r.pushed_bytes),
                    r.skipped_blobs
                ));
            }
        }
    }

    fn layer_msg(&self, digest: &str, msg: &'static str) {
        match self.bars.get(digest) {
            Some(bar) => {
                if let Some(len) = bar.length() {
                    bar.set_position(len);
                }
                bar.set_message(msg);
            }
            None => eprintln!("{}: {msg}", short_digest(digest)),
        }
    }

    fn finish(&self) {
        for bar in self.bars.values() {
            if !bar.is_finished() {
                bar.abandon();
            }
        }
        if let Some(m) = &self.tty {
            let _ = m.clear();
        }
    }
}
