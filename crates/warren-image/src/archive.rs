//! Importing image archives: `docker save` tarballs and OCI image layouts
//! (a directory, or a tar of one). Verification is the same as for pulls:
//! every blob named by a digest must hash to it, and every layer's
//! uncompressed tar must hash to the config's diff id.
//!
//! An archive is hostile input like a layer: its entries are never written
//! by their own paths. Regular files are copied into numbered files of a
//! private work directory and looked up by their normalized archive path;
//! symlinks and hard links inside the archive resolve only to other
//! entries of the same archive.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tempfile::TempDir;

use crate::digest::{is_sha256_hex, sha256_hex, SHA256_PREFIX};
use crate::error::ImageError;
use crate::image::Image;
use crate::ingest::{check_layer_count, digest_hex};
use crate::name::ImageName;
use crate::oci::{
    host_platform, parse_manifest, verify_bytes, ConfigFile, Index, Manifest, ManifestKind,
    MAX_DOCUMENT_BYTES, MEDIA_TYPE_DOCKER_CONFIG, MEDIA_TYPE_OCI_MANIFEST,
};
use crate::store::{create_new, ImageStore};
use crate::unpack::entry_components;

/// The OCI annotation naming a tag in an image layout's index.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Most entries accepted in an archive's outer tar.
const MAX_ARCHIVE_ENTRIES: usize = 100_000;

/// Where archive members are read from.
enum Members {
    /// An OCI layout directory given by the operator.
    Dir(PathBuf),
    /// Members of a tar, spooled into a work directory.
    Tar {
        files: HashMap<String, PathBuf>,
        links: HashMap<String, String>,
    },
}

impl Members {
    /// Opens a member by its normalized archive path.
    fn open(&self, rel: &str) -> Result<(File, PathBuf), ImageError> {
        let missing = || ImageError::InvalidArchive {
            reason: format!("archive has no member {rel:?}"),
        };
        let path = match self {
            Members::Dir(dir) => {
                let clean = normalize(rel).ok_or_else(missing)?;
                dir.join(clean)
            }
            Members::Tar { files, links } => {
                let mut key = normalize(rel).ok_or_else(missing)?;
                for _ in 0..40 {
                    match links.get(&key) {
                        Some(target) => key = target.clone(),
                        None => break,
                    }
                }
                files.get(&key).cloned().ok_or_else(missing)?
            }
        };
        let file = File::open(&path).map_err(|_| missing())?;
        if !file.metadata().map(|m| m.is_file()).unwrap_or(false) {
            return Err(missing());
        }
        Ok((file, path))
    }

    fn exists(&self, rel: &str) -> bool {
        self.open(rel).is_ok()
    }

    /// Reads a small member whole.
    fn read_doc(&self, rel: &str) -> Result<Vec<u8>, ImageError> {
        let (file, path) = self.open(rel)?;
        let mut bytes = Vec::new();
        file.take(MAX_DOCUMENT_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| ImageError::ReadStore { path, source })?;
        if bytes.len() as u64 > MAX_DOCUMENT_BYTES {
            return Err(ImageError::InvalidArchive {
                reason: format!("{rel:?} is larger than {MAX_DOCUMENT_BYTES} bytes"),
            });
        }
        Ok(bytes)
    }

    /// A member as a file inside `work` (copied from a layout directory,
    /// so that the store may move it into `blobs/`).
    fn file_in_work(&self, rel: &str, work: &TempDir, n: usize) -> Result<PathBuf, ImageError> {
        let (mut file, path) = self.open(rel)?;
        match self {
            Members::Tar { .. } => Ok(path),
            Members::Dir(_) => {
                let dest = work.path().join(format!("member-{n}"));
                let mut out = create_new(&dest)?;
                io::copy(&mut file, &mut out).map_err(|source| ImageError::ReadStore {
                    path: path.clone(),
                    source,
                })?;
                Ok(dest)
            }
        }
    }
}

/// One image of a `docker save` `manifest.json`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerSaveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// A manifest synthesized for a `docker save` image (which has none).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SynthManifest<'a> {
    schema_version: u32,
    media_type: &'a str,
    config: SynthDescriptor,
    layers: Vec<SynthDescriptor>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SynthDescriptor {
    media_type: String,
    digest: String,
    size: u64,
}

impl ImageStore {
    /// Imports a `docker save` archive, an OCI image layout directory, or
    /// a tar of an OCI layout (`skopeo copy ... oci-archive:`), naming the
    /// image `name` (`name[:tag]`). Without a name, the archive's own
    /// (`RepoTags`, or the layout's `org.opencontainers.image.ref.name`) is
    /// used. An archive holding several images needs a `name` whose tag (or
    /// whole name) selects one. Multi-platform layouts resolve to the host
    /// platform.
    pub fn import_archive(&self, path: &Path, name: Option<&str>) -> Result<Image, ImageError> {
        let span = tracing::info_span!("import_archive", path = %path.display());
        let _enter = span.enter();
        let wanted = name.map(ImageName::parse_new).transpose()?;
        let _lease = self.lease()?;
        let work = self.work_dir()?;
        let meta = fs::metadata(path).map_err(|source| ImageError::ReadStore {
            path: path.to_path_buf(),
            source,
        })?;
        let members = if meta.is_dir() {
            Members::Dir(path.to_path_buf())
        } else {
            let file = File::open(path).map_err(|source| ImageError::ReadStore {
                path: path.to_path_buf(),
                source,
            })?;
            spool_members(file, &work)?
        };
        if members.exists("oci-layout") && members.exists("index.json") {
            self.import_oci_layout(&members, &work, wanted.as_ref(), name)
        } else if members.exists("manifest.json") {
            self.import_docker_save(&members, &work, wanted.as_ref(), name)
        } else {
            Err(ImageError::InvalidArchive {
                reason: "neither an OCI image layout (oci-layout, index.json) nor a docker save archive (manifest.json)".into(),
            })
        }
    }

    fn import_oci_layout(
        &self,
        members: &Members,
        work: &TempDir,
        wanted: Option<&ImageName>,
        raw_name: Option<&str>,
    ) -> Result<Image, ImageError> {
        let index_bytes = members.read_doc("index.json")?;
        let index: Index =
            serde_json::from_slice(&index_bytes).map_err(|e| ImageError::InvalidArchive {
                reason: format!("index.json does not parse: {e}"),
            })?;
        let ref_name = |d: &crate::oci::Descriptor| {
            d.annotations
                .as_ref()
                .and_then(|a| a.get(ANNOTATION_REF_NAME))
                .cloned()
        };
        let chosen = match (index.manifests.len(), wanted) {
            (0, _) => {
                return Err(ImageError::InvalidArchive {
                    reason: "index.json lists no image".into(),
                })
            }
            (1, _) => &index.manifests[0],
            (_, Some(name)) => index
                .manifests
                .iter()
                .find(|d| {
                    ref_name(d).is_some_and(|r| {
                        r == name.tag() || Some(r.as_str()) == raw_name || r == name.to_string()
                    })
                })
                .ok_or_else(|| ImageError::InvalidArchive {
                    reason: format!("no image in the layout is named {name}"),
                })?,
            (_, None) => {
                return Err(ImageError::InvalidArchive {
                    reason: "the layout holds several images; give a name whose tag selects one"
                        .into(),
                })
            }
        };
        let annotated = ref_name(chosen);
        let blob_rel = |digest: &str| -> Result<String, ImageError> {
            Ok(format!("blobs/sha256/{}", digest_hex(digest)?))
        };
        let mut manifest_digest = chosen.digest.clone();
        let mut manifest_bytes = members.read_doc(&blob_rel(&manifest_digest)?)?;
        verify_bytes("manifest", &manifest_digest, &manifest_bytes)?;
        let manifest = match parse_manifest(Some(&chosen.media_type), &manifest_bytes)? {
            ManifestKind::Manifest(m) => m,
            ManifestKind::Index(nested) => {
                let desc = nested.select(&host_platform())?.clone();
                manifest_digest = desc.digest.clone();
                manifest_bytes = members.read_doc(&blob_rel(&desc.digest)?)?;
                verify_bytes("manifest", &desc.digest, &manifest_bytes)?;
                match parse_manifest(Some(&desc.media_type), &manifest_bytes)? {
                    ManifestKind::Manifest(m) => m,
                    ManifestKind::Index(_) => {
                        return Err(ImageError::InvalidManifest {
                            reason: "an index inside an index is not supported".into(),
                        })
                    }
                }
            }
        };
        let config_bytes = members.read_doc(&blob_rel(&manifest.config.digest)?)?;
        verify_bytes("config", &manifest.config.digest, &config_bytes)?;
        let config = ConfigFile::parse(&config_bytes)?;
        check_layer_count(&manifest, &config)?;
        let mut lowers: Vec<String> = Vec::new();
        for (i, (layer, diff_id)) in manifest
            .layers
            .iter()
            .zip(&config.rootfs.diff_ids)
            .enumerate()
        {
            if !self.has_layer(diff_id) {
                let path = members.file_in_work(&blob_rel(&layer.digest)?, work, i)?;
                let size = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                if size != layer.size {
                    return Err(ImageError::SizeMismatch {
                        digest: layer.digest.clone(),
                        expected: layer.size,
                        actual: size,
                    });
                }
                let layer_work = self.work_dir()?;
                self.ingest_layer_file(&layer_work, &path, Some(&layer.digest), diff_id, &lowers)?;
            }
            lowers.push(diff_id.clone());
        }
        self.put_blob_bytes(&manifest_digest, &manifest_bytes)?;
        self.put_blob_bytes(&manifest.config.digest, &config_bytes)?;
        let name = match (wanted, annotated) {
            (Some(name), _) => name.clone(),
            (None, Some(r)) => ImageName::parse_new(&r).map_err(|_| ImageError::InvalidArchive {
                reason: format!("the layout names its image {r:?}, which is not a full image name; give a name"),
            })?,
            (None, None) => {
                return Err(ImageError::InvalidArchive {
                    reason: "the layout does not name its image; give a name".into(),
                })
            }
        };
        let image = self.commit_oci(&manifest_digest, &manifest, &config, Some(&name))?;
        tracing::info!(id = %image.id, name = %name, "imported OCI layout");
        Ok(image)
    }

    fn import_docker_save(
        &self,
        members: &Members,
        work: &TempDir,
        wanted: Option<&ImageName>,
        _raw_name: Option<&str>,
    ) -> Result<Image, ImageError> {
        let bytes = members.read_doc("manifest.json")?;
        let entries: Vec<DockerSaveEntry> =
            serde_json::from_slice(&bytes).map_err(|e| ImageError::InvalidArchive {
                reason: format!("manifest.json does not parse: {e}"),
            })?;
        let tags_of = |e: &DockerSaveEntry| -> Vec<ImageName> {
            e.repo_tags
                .iter()
                .flatten()
                .filter_map(|t| ImageName::parse_new(t).ok())
                .collect()
        };
        let entry = match (entries.len(), wanted) {
            (0, _) => {
                return Err(ImageError::InvalidArchive {
                    reason: "manifest.json lists no image".into(),
                })
            }
            (1, _) => &entries[0],
            (_, Some(name)) => entries
                .iter()
                .find(|e| tags_of(e).contains(name))
                .ok_or_else(|| ImageError::InvalidArchive {
                    reason: format!("no image in the archive is tagged {name}"),
                })?,
            (_, None) => {
                return Err(ImageError::InvalidArchive {
                    reason: "the archive holds several images; give a name to select one".into(),
                })
            }
        };
        let config_bytes = members.read_doc(&entry.config)?;
        let config_hex = sha256_hex(&config_bytes);
        // Configs are named by their digest (`<hex>.json`, `blobs/sha256/<hex>`).
        let stem = entry
            .config
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .trim_end_matches(".json");
        if is_sha256_hex(stem) && stem != config_hex {
            return Err(ImageError::DigestMismatch {
                what: "config".into(),
                expected: format!("{SHA256_PREFIX}{stem}"),
                actual: format!("{SHA256_PREFIX}{config_hex}"),
            });
        }
        let config_digest = format!("{SHA256_PREFIX}{config_hex}");
        let config = ConfigFile::parse(&config_bytes)?;
        if entry.layers.len() != config.rootfs.diff_ids.len() {
            return Err(ImageError::InvalidManifest {
                reason: format!(
                    "archive has {} layers but the config lists {} diff ids",
                    entry.layers.len(),
                    config.rootfs.diff_ids.len()
                ),
            });
        }
        let mut lowers: Vec<String> = Vec::new();
        let mut descriptors = Vec::new();
        for (i, (rel, diff_id)) in entry.layers.iter().zip(&config.rootfs.diff_ids).enumerate() {
            let path = members.file_in_work(rel, work, i)?;
            let layer_work = self.work_dir()?;
            let (blob_hex, size) = crate::digest::hash_reader(io::BufReader::new(
                File::open(&path).map_err(|source| ImageError::ReadStore {
                    path: path.clone(),
                    source,
                })?,
            ))
            .map_err(|source| ImageError::ReadArchive { source })?;
            let mut head = [0u8; 6];
            let n = File::open(&path)
                .and_then(|mut f| f.read(&mut head))
                .map_err(|source| ImageError::ReadArchive { source })?;
            let compression = crate::oci::Compression::detect(&head[..n])?;
            if !self.has_layer(diff_id) {
                self.ingest_layer_file(&layer_work, &path, None, diff_id, &lowers)?;
            }
            descriptors.push(SynthDescriptor {
                media_type: compression.media_type().to_owned(),
                digest: format!("{SHA256_PREFIX}{blob_hex}"),
                size,
            });
            lowers.push(diff_id.clone());
        }
        let synth = SynthManifest {
            schema_version: 2,
            media_type: MEDIA_TYPE_OCI_MANIFEST,
            config: SynthDescriptor {
                media_type: MEDIA_TYPE_DOCKER_CONFIG.to_owned(),
                digest: config_digest.clone(),
                size: config_bytes.len() as u64,
            },
            layers: descriptors,
        };
        let manifest_bytes =
            serde_json::to_vec(&synth).map_err(|e| ImageError::InvalidArchive {
                reason: format!("cannot encode manifest: {e}"),
            })?;
        let manifest_digest = format!("{SHA256_PREFIX}{}", sha256_hex(&manifest_bytes));
        let manifest: Manifest = match parse_manifest(None, &manifest_bytes)? {
            ManifestKind::Manifest(m) => m,
            ManifestKind::Index(_) => unreachable!("a synthesized manifest is never an index"),
        };
        self.put_blob_bytes(&manifest_digest, &manifest_bytes)?;
        self.put_blob_bytes(&config_digest, &config_bytes)?;
        let name = match wanted {
            Some(name) => name.clone(),
            None => {
                tags_of(entry)
                    .into_iter()
                    .next()
                    .ok_or_else(|| ImageError::InvalidArchive {
                        reason: "the archive does not tag its image; give a name".into(),
                    })?
            }
        };
        let image = self.commit_oci(&manifest_digest, &manifest, &config, Some(&name))?;
        tracing::info!(id = %image.id, name = %name, "imported docker save archive");
        Ok(image)
    }
}

/// Normalizes an archive member path (`./a//b` → `a/b`); `None` if it is
/// absolute or climbs out with `..`.
fn normalize(rel: &str) -> Option<String> {
    let components = entry_components(rel.as_bytes()).ok()?;
    if components.is_empty() {
        return None;
    }
    Some(
        components
            .iter()
            .map(|c| String::from_utf8_lossy(c.as_bytes()).into_owned())
            .collect::<Vec<_>>()
            .join("/"),
    )
}

/// Resolves a symlink target relative to the link's directory, lexically,
/// staying inside the archive.
fn resolve_link(link: &str, target: &[u8]) -> Option<String> {
    let target = std::str::from_utf8(target).ok()?;
    if target.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = link.split('/').collect();
    parts.pop();
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            other => parts.push(other),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// Copies the regular files of an archive's outer tar into `work`,
/// recording symlinks and hard links between members.
fn spool_members(reader: impl Read, work: &TempDir) -> Result<Members, ImageError> {
    let read_err = |source| ImageError::ReadArchive { source };
    let mut files = HashMap::new();
    let mut links = BTreeMap::new();
    let mut archive = tar::Archive::new(reader);
    for (n, entry) in archive.entries().map_err(read_err)?.enumerate() {
        if n >= MAX_ARCHIVE_ENTRIES {
            return Err(ImageError::InvalidArchive {
                reason: format!("more than {MAX_ARCHIVE_ENTRIES} entries"),
            });
        }
        let mut entry = entry.map_err(read_err)?;
        let raw = entry.path_bytes().into_owned();
        let Some(key) = std::str::from_utf8(&raw).ok().and_then(normalize) else {
            tracing::debug!(path = %String::from_utf8_lossy(&raw), "skipping archive member with an unusable path");
            continue;
        };
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let dest = work.path().join(format!("entry-{n}"));
                let mut out = create_new(&dest)?;
                io::copy(&mut entry, &mut out).map_err(read_err)?;
                files.insert(key, dest);
            }
            tar::EntryType::Symlink => {
                let target = entry.link_name_bytes().map(|t| t.into_owned());
                if let Some(resolved) = target.and_then(|t| resolve_link(&key, &t)) {
                    links.insert(key, resolved);
                }
            }
            tar::EntryType::Link => {
                let target = entry.link_name_bytes().map(|t| t.into_owned());
                if let Some(resolved) = target
                    .and_then(|t| String::from_utf8(t).ok())
                    .and_then(|t| normalize(&t))
                {
                    links.insert(key, resolved);
                }
            }
            _ => {}
        }
    }
    Ok(Members::Tar {
        files,
        links: links.into_iter().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_paths_stay_inside_the_archive() {
        assert_eq!(normalize("./a//b").as_deref(), Some("a/b"));
        assert_eq!(normalize("../a"), None);
        assert_eq!(normalize("/etc/passwd"), None);
        assert_eq!(resolve_link("x/link", b"../y/z").as_deref(), Some("y/z"));
        assert_eq!(resolve_link("link", b"../../etc"), None);
        assert_eq!(resolve_link("x/link", b"/etc/passwd"), None);
    }
}
