//! `warren image build -f FILE -t NAME [CONTEXT_DIR]`: tars the context
//! (without what `.warrenignore`, else `.dockerignore`, excludes), sends
//! it with the recipe to `POST /v1/images/build`, shows the steps (a
//! spinner per step on a terminal, plain lines otherwise) and the `RUN`
//! output on stderr, and prints the image id on stdout.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use warren_proto::build::{BuildEvent, BuildQuery};

use crate::remote::{block_on, client, outln};

/// Most entries packed from a context directory (the server's limit).
const MAX_ENTRIES: usize = 200_000;

/// Name the recipe travels under when it lies outside the context.
const OUTSIDE_RECIPE: &str = ".warren-recipe";

#[derive(clap::Args)]
pub struct BuildArgs {
    /// The recipe: a Dockerfile subset (FROM, RUN, COPY, ENV, WORKDIR,
    /// USER, CMD, ENTRYPOINT). Default: CONTEXT_DIR/Dockerfile.
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// Name for the image, `name[:tag]`.
    #[arg(short = 't', long = "tag")]
    tag: String,
    /// The directory COPY reads from.
    #[arg(default_value = ".")]
    context: PathBuf,
    /// Run every step even if the cache has it.
    #[arg(long)]
    no_cache: bool,
    /// RUN steps get only a loopback interface.
    #[arg(long)]
    no_network: bool,
    /// Longest a RUN step may take, in seconds.
    #[arg(long)]
    step_timeout: Option<u64>,
    /// Memory of each step's sandbox, in MiB.
    #[arg(long)]
    memory_mib: Option<u64>,
}

pub fn run(data_dir: &Path, args: BuildArgs) -> Result<i32> {
    let context = args.context.clone();
    if !context.is_dir() {
        bail!("the build context {} is not a directory", context.display());
    }
    let recipe_file = args
        .file
        .clone()
        .unwrap_or_else(|| context.join("Dockerfile"));
    let (tar, recipe) = pack(&context, &recipe_file)?;
    let query = BuildQuery {
        tag: args.tag.clone(),
        recipe: Some(recipe),
        no_cache: args.no_cache,
        network: args.no_network.then_some(false),
        step_timeout_secs: args.step_timeout,
        memory_mib: args.memory_mib,
    };
    let c = client(data_dir)?;
    let file = tokio_file(tar.reopen().context("reopening the context archive")?);
    let mut display = Display::new();
    let built = block_on(async {
        c.build_image(chunks(file), &query, |ev| display.event(ev))
            .await
    })?;
    display.finish();
    let built = built.with_context(|| format!("building {}", args.tag))?;
    outln!("{}", built.image_id)?;
    Ok(0)
}

fn tokio_file(f: std::fs::File) -> tokio::fs::File {
    tokio::fs::File::from_std(f)
}

/// A file as a stream of 256 KiB chunks.
fn chunks(
    file: tokio::fs::File,
) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static {
    futures_util::stream::unfold(Some(file), |state| async move {
        use tokio::io::AsyncReadExt;
        let mut file = state?;
        let mut buf = vec![0u8; 256 * 1024];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(bytes::Bytes::from(buf)), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    })
}

/// Packs the context into a temporary tar and returns it with the
/// recipe's path inside it (the recipe is always included, ignored or
/// not; one outside the context travels as [`OUTSIDE_RECIPE`]).
fn pack(context: &Path, recipe: &Path) -> Result<(tempfile::NamedTempFile, String)> {
    let recipe_bytes = std::fs::read(recipe)
        .with_context(|| format!("reading the recipe {}", recipe.display()))?;
    let ignore = Ignore::load(context)?;
    let tmp = tempfile::Builder::new()
        .prefix("warren-build-")
        .suffix(".tar")
        .tempfile()
        .context("temporary file for the context")?;
    let mut b = tar::Builder::new(std::io::BufWriter::new(tmp.reopen()?));
    b.mode(tar::HeaderMode::Deterministic);
    b.follow_symlinks(false);
    let mut count = 0usize;
    let mut packed = Vec::new();
    walk(context, "", &ignore, &mut b, &mut count, &mut packed)?;
    let canon_ctx = std::fs::canonicalize(context)?;
    let inside = std::fs::canonicalize(recipe)
        .ok()
        .and_then(|r| r.strip_prefix(&canon_ctx).ok().map(Path::to_path_buf))
        .and_then(|r| r.to_str().map(str::to_string));
    let recipe_path = match inside {
        Some(rel) if packed.contains(&rel) => rel,
        other => {
            let name = other.unwrap_or_else(|| OUTSIDE_RECIPE.to_string());
            let mut h = tar::Header::new_gnu();
            h.set_size(recipe_bytes.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, &name, recipe_bytes.as_slice())?;
            name
        }
    };
    b.into_inner()?
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()?;
    Ok((tmp, recipe_path))
}

/// Packs `dir` (relative path `rel`) recursively, sorted, without
/// following symlinks.
fn walk(
    dir: &Path,
    rel: &str,
    ignore: &Ignore,
    b: &mut tar::Builder<std::io::BufWriter<std::fs::File>>,
    count: &mut usize,
    packed: &mut Vec<String>,
) -> Result<()> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .collect::<std::io::Result<Vec<_>>>()?
        .into_iter()
        .map(|e| e.file_name())
        .collect();
    names.sort();
    for name in names {
        let Some(name) = name.to_str().map(str::to_string) else {
            eprintln!(
                "warren: skipping a name that is not UTF-8 in {}",
                dir.display()
            );
            continue;
        };
        let path = dir.join(&name);
        let child = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        if ignore.excludes(&child) {
            continue;
        }
        *count += 1;
        if *count > MAX_ENTRIES {
            bail!("the build context has more than {MAX_ENTRIES} entries");
        }
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.is_dir() {
            b.append_dir(&child, &path)
                .with_context(|| format!("packing {}", path.display()))?;
            walk(&path, &child, ignore, b, count, packed)?;
        } else if meta.is_file() || meta.file_type().is_symlink() {
            b.append_path_with_name(&path, &child)
                .with_context(|| format!("packing {}", path.display()))?;
            packed.push(child);
        }
    }
    Ok(())
}

/// `.warrenignore` (else `.dockerignore`): one pattern per line, `#`
/// comments; `*` and `?` match within a path component, `**` any number
/// of components; a pattern excludes what it matches and everything
/// below. `!` exceptions are not supported (a warning).
struct Ignore {
    patterns: Vec<Vec<String>>,
}

impl Ignore {
    fn load(context: &Path) -> Result<Self> {
        let mut patterns = Vec::new();
        for name in [".warrenignore", ".dockerignore"] {
            let path = context.join(name);
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
            };
            for line in text.lines().map(str::trim) {
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                if line.starts_with('!') {
                    eprintln!("warren: {name}: exceptions ({line}) are not supported; ignored");
                    continue;
                }
                let comps: Vec<String> = line
                    .split('/')
                    .filter(|c| !c.is_empty() && *c != ".")
                    .map(str::to_string)
                    .collect();
                if !comps.is_empty() {
                    patterns.push(comps);
                }
            }
            break;
        }
        Ok(Ignore { patterns })
    }

    fn excludes(&self, rel: &str) -> bool {
        let comps: Vec<&str> = rel.split('/').collect();
        self.patterns.iter().any(|p| prefix_match(p, &comps))
    }
}

/// Whether `pattern` matches `path` or one of its ancestors.
fn prefix_match(pattern: &[String], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => true,
        Some((first, rest)) if first == "**" => {
            (0..=path.len()).any(|skip| prefix_match(rest, &path[skip..]))
        }
        Some((first, rest)) => match path.split_first() {
            Some((p, tail)) => glob(first, p) && prefix_match(rest, tail),
            None => false,
        },
    }
}

fn glob(pattern: &str, name: &str) -> bool {
    fn go(p: &[char], n: &[char]) -> bool {
        match p.split_first() {
            None => n.is_empty(),
            Some(('*', rest)) => (0..=n.len()).any(|i| go(rest, &n[i..])),
            Some(('?', rest)) => !n.is_empty() && go(rest, &n[1..]),
            Some((c, rest)) => n.first() == Some(c) && go(rest, &n[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().take(256).collect();
    let n: Vec<char> = name.chars().collect();
    go(&p, &n)
}

/// Step progress on stderr: a spinner for the running step on a
/// terminal, plain lines otherwise; `RUN` output passes through.
struct Display {
    bar: Option<ProgressBar>,
    tty: bool,
}

impl Display {
    fn new() -> Self {
        Display {
            bar: None,
            tty: std::io::stderr().is_terminal(),
        }
    }

    fn print(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| eprint!("{text}")),
            None => eprint!("{text}"),
        }
    }

    fn event(&mut self, ev: &BuildEvent) {
        match ev {
            BuildEvent::Step {
                index,
                total,
                text,
                cached,
            } => {
                let line = format!(
                    "[{index}/{total}] {text}{}",
                    if *cached { " (cached)" } else { "" }
                );
                if self.tty {
                    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
                    bar.set_style(
                        ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    );
                    bar.set_message(line);
                    bar.enable_steady_tick(Duration::from_millis(120));
                    self.bar = Some(bar);
                } else {
                    eprintln!("{line}");
                }
            }
            BuildEvent::Log { data, .. } => self.print(data),
            BuildEvent::StepDone {
                image_id, seconds, ..
            } => {
                let short: String = image_id
                    .strip_prefix("sha256:")
                    .unwrap_or(image_id)
                    .chars()
                    .take(12)
                    .collect();
                match self.bar.take() {
                    Some(bar) => {
                        let msg = bar.message();
                        bar.finish_and_clear();
                        eprintln!("{msg} -> {short} ({seconds:.2}s)");
                    }
                    None => eprintln!(" -> {short} ({seconds:.2}s)"),
                }
            }
            BuildEvent::Done {
                name,
                seconds,
                steps,
                cached_steps,
                ..
            } => {
                self.finish();
                eprintln!("built {name} in {seconds:.2}s ({cached_steps} of {steps} steps cached)");
            }
            BuildEvent::Error {
                step,
                line,
                exit_code,
                ..
            } => {
                self.finish();
                let mut at = Vec::new();
                if let Some(s) = step {
                    at.push(format!("step {s}"));
                }
                if let Some(l) = line {
                    at.push(format!("recipe line {l}"));
                }
                if let Some(c) = exit_code {
                    at.push(format!("exit code {c}"));
                }
                if !at.is_empty() {
                    eprintln!("build failed at {}", at.join(", "));
                }
            }
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.abandon();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ignore(lines: &[&str]) -> Ignore {
        Ignore {
            patterns: lines
                .iter()
                .map(|l| {
                    l.split('/')
                        .filter(|c| !c.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .collect(),
        }
    }

    #[test]
    fn ignore_patterns() {
        let i = ignore(&["target", "*.log", "docs/*.md", "**/node_modules", "/secret"]);
        assert!(i.excludes("target"));
        assert!(i.excludes("target/debug/x"));
        assert!(i.excludes("a.log"));
        assert!(!i.excludes("sub/a.log"));
        assert!(i.excludes("docs/readme.md"));
        assert!(!i.excludes("docs/x/readme.md"));
        assert!(i.excludes("node_modules/x"));
        assert!(i.excludes("a/b/node_modules"));
        assert!(i.excludes("secret"));
        assert!(!i.excludes("src/main.rs"));
    }
}
