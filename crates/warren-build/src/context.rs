//! The build context: a tar archive from the client, indexed once and
//! never unpacked on the host. `COPY` reads file contents straight out of
//! the archive (by offset) and writes them into the step's sandbox through
//! its file agent, so no name from the archive is ever created on the
//! host's filesystem.
//!
//! The archive is untrusted: its size is bounded by the caller, the number
//! of entries by [`MAX_CONTEXT_ENTRIES`], path lengths by
//! [`MAX_PATH_BYTES`]; absolute names are taken relative to the context
//! root, and a name with `..` is refused. Hard links resolve to an earlier
//! regular file of the archive; devices, FIFOs and sparse files are
//! refused or skipped (see [`BuildContext::open`]).

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::BuildError;

/// Most entries in a context archive.
pub const MAX_CONTEXT_ENTRIES: usize = 200_000;
/// Longest path in a context archive.
pub const MAX_PATH_BYTES: usize = 4096;

/// What a context entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file: its bytes are `size` bytes at `offset` in the archive.
    File {
        offset: u64,
        size: u64,
    },
    Dir,
    Symlink {
        target: String,
    },
}

/// One entry of the context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: EntryKind,
    /// Permission bits (`0o7777`).
    pub mode: u32,
}

/// An indexed context archive.
#[derive(Debug, Clone)]
pub struct BuildContext {
    file: Arc<File>,
    /// Normalized relative path (`a/b`, never empty) → entry. Directories
    /// implied by deeper paths are added with mode `0o755`.
    entries: BTreeMap<String, Entry>,
}

/// A `COPY` source matched in the context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Normalized path in the context (`""` is the root).
    pub path: String,
    pub is_dir: bool,
}

/// One thing a `COPY` writes into the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Absolute path inside the sandbox.
    pub target: String,
    pub entry: Entry,
}

fn ctx_err(reason: impl Into<String>) -> BuildError {
    BuildError::Context {
        reason: reason.into(),
    }
}

/// Normalizes a relative path: `.` and empty components dropped, a
/// leading `/` ignored; `None` if `..` would leave the root.
pub fn normalize(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

/// Joins an absolute sandbox path: `rel` under `base` (absolute `rel`
/// replaces it), normalized (`..` stops at `/`).
pub fn sandbox_path(base: &str, rel: &str) -> String {
    let joined = if rel.starts_with('/') {
        rel.to_string()
    } else {
        format!("{base}/{rel}")
    };
    let mut parts: Vec<&str> = Vec::new();
    for c in joined.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

impl BuildContext {
    /// Indexes a tar archive (blocking). Refuses malformed archives, names
    /// with `..` or that are not UTF-8, sparse files, hard links to
    /// anything but an earlier regular file, and more than
    /// [`MAX_CONTEXT_ENTRIES`] entries; skips devices and FIFOs.
    pub fn open(file: File) -> Result<Self, BuildError> {
        let file = Arc::new(file);
        // Index from the start, wherever the caller left the offset.
        std::io::Seek::seek(&mut &*file, std::io::SeekFrom::Start(0))
            .map_err(|e| ctx_err(format!("reading the context: {e}")))?;
        let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
        let mut archive = tar::Archive::new(&*file);
        let iter = archive
            .entries_with_seek()
            .map_err(|e| ctx_err(format!("not a tar archive: {e}")))?;
        for (n, entry) in iter.enumerate() {
            if n >= MAX_CONTEXT_ENTRIES {
                return Err(ctx_err(format!(
                    "more than {MAX_CONTEXT_ENTRIES} entries in the context"
                )));
            }
            let entry = entry.map_err(|e| ctx_err(format!("bad tar entry: {e}")))?;
            let raw = entry.path_bytes();
            if raw.len() > MAX_PATH_BYTES {
                return Err(ctx_err("a path in the context is too long"));
            }
            let name = std::str::from_utf8(&raw)
                .map_err(|_| ctx_err("a path in the context is not UTF-8"))?
                .to_string();
            if name.split('/').any(|c| c == "..") {
                return Err(ctx_err(format!("{name:?} has a '..' component")));
            }
            let path = normalize(&name).expect("no '..' components");
            let header = entry.header();
            let mode = header.mode().unwrap_or(0o644) & 0o7777;
            let kind = match header.entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => EntryKind::File {
                    offset: entry.raw_file_position(),
                    size: entry.size(),
                },
                tar::EntryType::Directory => EntryKind::Dir,
                tar::EntryType::Symlink => {
                    let target = entry
                        .link_name_bytes()
                        .map(|t| String::from_utf8_lossy(&t).into_owned())
                        .unwrap_or_default();
                    EntryKind::Symlink { target }
                }
                tar::EntryType::Link => {
                    let target = entry
                        .link_name_bytes()
                        .and_then(|t| std::str::from_utf8(&t).ok().and_then(normalize))
                        .ok_or_else(|| ctx_err(format!("hard link {name:?} has a bad target")))?;
                    match entries.get(&target) {
                        Some(
                            e @ Entry {
                                kind: EntryKind::File { .. },
                                ..
                            },
                        ) => e.kind.clone(),
                        _ => {
                            return Err(ctx_err(format!(
                                "hard link {name:?} does not point at an earlier file"
                            )))
                        }
                    }
                }
                tar::EntryType::GNUSparse => {
                    return Err(ctx_err(format!("{name:?} is a sparse file (unsupported)")))
                }
                // Devices, FIFOs, metadata entries: nothing to copy.
                _ => continue,
            };
            if path.is_empty() {
                continue;
            }
            // Parents a deeper path implies.
            let mut parent = path.as_str();
            while let Some((p, _)) = parent.rsplit_once('/') {
                entries.entry(p.to_string()).or_insert(Entry {
                    kind: EntryKind::Dir,
                    mode: 0o755,
                });
                parent = p;
            }
            entries.insert(path, Entry { kind, mode });
        }
        Ok(BuildContext { file, entries })
    }

    /// The entry at a normalized path.
    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.entries.get(path)
    }

    /// A regular file's whole content (for the recipe), at most `max` bytes.
    pub fn read_file(&self, path: &str, max: usize) -> Result<Vec<u8>, BuildError> {
        let norm =
            normalize(path).ok_or_else(|| ctx_err(format!("{path:?} leaves the context")))?;
        match self.entries.get(&norm) {
            Some(Entry {
                kind: EntryKind::File { offset, size },
                ..
            }) => {
                if *size > max as u64 {
                    return Err(BuildError::Recipe {
                        line: 0,
                        reason: format!("the recipe is larger than {max} bytes"),
                    });
                }
                self.read_at(*offset, *size as usize)
            }
            Some(_) => Err(ctx_err(format!("{path:?} in the context is not a file"))),
            None => Err(ctx_err(format!("the context has no {path:?}"))),
        }
    }

    /// `len` bytes of the archive at `offset` (blocking).
    pub fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, BuildError> {
        let mut buf = vec![0u8; len];
        self.file
            .read_exact_at(&mut buf, offset)
            .map_err(|e| ctx_err(format!("reading the context: {e}")))?;
        Ok(buf)
    }

    /// Matches `COPY` sources (already expanded): a path, or a pattern
    /// with `*` and `?` in any component. A source naming nothing, or
    /// leaving the context, is an error.
    pub fn select(&self, sources: &[String]) -> Result<Vec<Source>, BuildError> {
        let mut out = Vec::new();
        for src in sources {
            let norm = normalize(src).ok_or_else(|| BuildError::Copy {
                reason: format!("{src:?} leaves the build context"),
            })?;
            if norm.contains(['*', '?']) {
                let pattern: Vec<&str> = norm.split('/').collect();
                let mut found = false;
                for (path, e) in &self.entries {
                    let comps: Vec<&str> = path.split('/').collect();
                    if comps.len() == pattern.len()
                        && comps.iter().zip(&pattern).all(|(c, p)| glob(p, c))
                    {
                        found = true;
                        out.push(Source {
                            path: path.clone(),
                            is_dir: e.kind == EntryKind::Dir,
                        });
                    }
                }
                if !found {
                    return Err(BuildError::Copy {
                        reason: format!("no file in the build context matches {src:?}"),
                    });
                }
                continue;
            }
            if norm.is_empty() {
                out.push(Source {
                    path: norm,
                    is_dir: true,
                });
                continue;
            }
            match self.entries.get(&norm) {
                Some(e) => out.push(Source {
                    path: norm,
                    is_dir: e.kind == EntryKind::Dir,
                }),
                None => {
                    return Err(BuildError::Copy {
                        reason: format!("{src:?} is not in the build context"),
                    })
                }
            }
        }
        Ok(out)
    }

    /// Entries under a directory source, as (path relative to it, entry),
    /// in path order.
    fn under<'a>(&'a self, dir: &'a str) -> impl Iterator<Item = (&'a str, &'a Entry)> + 'a {
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        let plen = prefix.len();
        self.entries
            .range(prefix.clone()..)
            .take_while(move |(p, _)| p.starts_with(&prefix))
            .map(move |(p, e)| (&p[plen..], e))
    }

    /// The content digest of what `sources` copy: every path (relative to
    /// its source), kind, mode, and the SHA-256 of each file's bytes or
    /// each symlink's target (blocking; reads every copied byte).
    pub fn digest(&self, sources: &[Source]) -> Result<String, BuildError> {
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut add = |h: &mut Sha256, rel: &str, e: &Entry| -> Result<(), BuildError> {
            h.update(rel.as_bytes());
            h.update([0]);
            h.update(format!("{:o}\0", e.mode).as_bytes());
            match &e.kind {
                EntryKind::Dir => h.update(b"dir\n"),
                EntryKind::Symlink { target } => {
                    h.update(b"symlink\0");
                    h.update(target.as_bytes());
                    h.update(b"\n");
                }
                EntryKind::File { offset, size } => {
                    let mut fh = Sha256::new();
                    let mut done = 0u64;
                    while done < *size {
                        let n = (*size - done).min(buf.len() as u64) as usize;
                        self.file
                            .read_exact_at(&mut buf[..n], offset + done)
                            .map_err(|e| ctx_err(format!("reading the context: {e}")))?;
                        fh.update(&buf[..n]);
                        done += n as u64;
                    }
                    h.update(format!("file\0{size}\0{}\n", hex::encode(fh.finalize())).as_bytes());
                }
            }
            Ok(())
        };
        for s in sources {
            h.update(b"source\0");
            h.update(s.path.as_bytes());
            h.update(b"\n");
            if s.is_dir {
                for (rel, e) in self.under(&s.path) {
                    add(&mut h, rel, e)?;
                }
            } else if let Some(e) = self.entries.get(&s.path) {
                add(&mut h, "", e)?;
            }
        }
        Ok(hex::encode(h.finalize()))
    }

    /// Where each source's entries go. `dest` is absolute; it is a
    /// directory when `dest_is_dir` (it ends with `/`, exists as a
    /// directory, there are several sources, or a source is a directory):
    /// files go in under their base name and directories' contents are
    /// merged into it. Otherwise the single file source is written as
    /// `dest`.
    pub fn place(&self, sources: &[Source], dest: &str, dest_is_dir: bool) -> Vec<Placement> {
        let mut out = Vec::new();
        let dir_mode = Entry {
            kind: EntryKind::Dir,
            mode: 0o755,
        };
        if dest_is_dir {
            out.push(Placement {
                target: dest.to_string(),
                entry: dir_mode.clone(),
            });
        }
        for s in sources {
            if s.is_dir {
                for (rel, e) in self.under(&s.path) {
                    out.push(Placement {
                        target: sandbox_path(dest, rel),
                        entry: e.clone(),
                    });
                }
                continue;
            }
            let Some(e) = self.entries.get(&s.path) else {
                continue;
            };
            let target = if dest_is_dir {
                let base = s.path.rsplit('/').next().unwrap_or(&s.path);
                sandbox_path(dest, base)
            } else {
                dest.to_string()
            };
            out.push(Placement {
                target,
                entry: e.clone(),
            });
        }
        out
    }
}

/// Whether `name` matches `pattern` (`*`: any run, `?`: one character).
pub fn glob(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // Iterative matcher with one backtrack point (the last `*`).
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> BuildContext {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        let bytes = b.into_inner().unwrap();
        let mut f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut f, &bytes).unwrap();
        BuildContext::open(f).unwrap()
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, data).unwrap();
    }

    fn sample() -> BuildContext {
        archive(|b| {
            file(b, "./Dockerfile", 0o644, b"FROM host\n");
            file(b, "src/main.py", 0o755, b"print(1)\n");
            file(b, "src/lib/util.py", 0o644, b"x = 2\n");
            // An absolute name (the tar crate's builder refuses to write
            // one; set the header's name field directly).
            let mut h = tar::Header::new_gnu();
            h.set_size(3);
            h.set_mode(0o600);
            h.set_entry_type(tar::EntryType::Regular);
            h.as_gnu_mut().unwrap().name[..8].copy_from_slice(b"/abs.txt");
            h.set_cksum();
            b.append(&h, &b"abs"[..]).unwrap();
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, "link", "src/main.py").unwrap();
        })
    }

    #[test]
    fn index_and_read() {
        let c = sample();
        assert_eq!(c.read_file("Dockerfile", 100).unwrap(), b"FROM host\n");
        assert_eq!(c.read_file("./abs.txt", 100).unwrap(), b"abs");
        assert_eq!(c.get("abs.txt").unwrap().mode, 0o600);
        assert_eq!(c.get("src/lib").unwrap().kind, EntryKind::Dir);
        assert!(matches!(
            c.read_file("Dockerfile", 3),
            Err(BuildError::Recipe { .. })
        ));
        assert!(c.read_file("src", 100).is_err());
        assert!(c.read_file("nope", 100).is_err());
        assert!(c.read_file("../x", 100).is_err());
    }

    #[test]
    fn select_place_and_digest() {
        let c = sample();
        let s = c.select(&["src".into()]).unwrap();
        assert_eq!(
            s,
            vec![Source {
                path: "src".into(),
                is_dir: true
            }]
        );
        let placed: Vec<String> = c
            .place(&s, "/app", true)
            .into_iter()
            .map(|p| p.target)
            .collect();
        assert_eq!(
            placed,
            vec!["/app", "/app/lib", "/app/lib/util.py", "/app/main.py"]
        );
        let s = c.select(&["src/*.py".into()]).unwrap();
        assert_eq!(s.len(), 1);
        let placed = c.place(&s, "/bin/run", false);
        assert_eq!(placed[0].target, "/bin/run");
        assert_eq!(placed[0].entry.mode, 0o755);
        let placed = c.place(&s, "/opt", true);
        assert_eq!(placed[1].target, "/opt/main.py");
        assert!(c.select(&["missing".into()]).is_err());
        assert!(c.select(&["*.rs".into()]).is_err());
        assert!(c.select(&["../etc/passwd".into()]).is_err());
        let all = c.select(&[".".into()]).unwrap();
        // The destination itself and the 7 entries.
        assert_eq!(c.place(&all, "/", true).len(), 8);

        // The digest follows content and modes, not archive order.
        let d1 = c.digest(&c.select(&["src".into()]).unwrap()).unwrap();
        let c2 = archive(|b| {
            file(b, "src/lib/util.py", 0o644, b"x = 2\n");
            file(b, "src/main.py", 0o755, b"print(1)\n");
        });
        assert_eq!(d1, c2.digest(&c2.select(&["src".into()]).unwrap()).unwrap());
        let c3 = archive(|b| {
            file(b, "src/lib/util.py", 0o644, b"x = 3\n");
            file(b, "src/main.py", 0o755, b"print(1)\n");
        });
        assert_ne!(d1, c3.digest(&c3.select(&["src".into()]).unwrap()).unwrap());
        let c4 = archive(|b| {
            file(b, "src/lib/util.py", 0o600, b"x = 2\n");
            file(b, "src/main.py", 0o755, b"print(1)\n");
        });
        assert_ne!(d1, c4.digest(&c4.select(&["src".into()]).unwrap()).unwrap());
    }

    #[test]
    fn hostile_archives() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_entry_type(tar::EntryType::Regular);
        // `append_data` refuses '..'; write the name by hand.
        h.as_gnu_mut().unwrap().name[..7].copy_from_slice(b"../evil");
        h.set_cksum();
        b.append(&h, &b"x"[..]).unwrap();
        let mut f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut f, &b.into_inner().unwrap()).unwrap();
        assert!(matches!(
            BuildContext::open(f),
            Err(BuildError::Context { .. })
        ));
        let mut f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut f, &[7u8; 1000]).unwrap();
        assert!(BuildContext::open(f).is_err());
    }

    #[test]
    fn paths_and_globs() {
        assert_eq!(normalize("./a//b/."), Some("a/b".into()));
        assert_eq!(normalize("a/../b"), Some("b".into()));
        assert_eq!(normalize("a/../../b"), None);
        assert_eq!(sandbox_path("/app", "x/../y"), "/app/y");
        assert_eq!(sandbox_path("/app", "/etc/../../z"), "/z");
        assert_eq!(sandbox_path("/", "."), "/");
        assert!(glob("*.py", "main.py"));
        assert!(glob("m?in.*", "main.py"));
        assert!(glob("*", ""));
        assert!(!glob("*.py", "main.rs"));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b*c", "axxbyy"));
    }
}
