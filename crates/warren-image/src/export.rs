//! Exporting images as OCI: the parts of an image (manifest, config,
//! layer blobs) as a registry or an OCI image layout holds them, and the
//! layout written as one tar stream (what `skopeo copy ... oci-archive:`
//! reads and [`ImageStore::import_archive`] imports).
//!
//! Where the parts come from:
//!
//! - Layers: the blob each layer was unpacked from (`layers/<diff>/
//!   layer.json` names it; pulls keep the registry's compressed blob,
//!   directory and tar imports the tar they archived). A layer whose blob
//!   is gone is archived again from its unpacked tree, with overlay
//!   whiteouts written back as `.wh.` entries; that tar's digest is the
//!   diff id the exported config lists (it equals the stored diff id when
//!   the tree archives to the same bytes, as directory imports do).
//! - Manifest and config: an image pulled or imported from an OCI or
//!   docker archive keeps its manifest and config in `blobs/`; when they
//!   and every layer blob the manifest names are stored, they are reused
//!   byte for byte, so the manifest digest stays the one it was pulled
//!   with. Otherwise a config is written from the image's [`ImageConfig`]
//!   (`Env`, `Cmd`, `Entrypoint`, `WorkingDir`, `User`) and the layers'
//!   diff ids, and an OCI manifest over it, both deterministic (the same
//!   image always gives the same digests).
//! - Images built in this store (directory imports, snapshots; their
//!   record has no source) get the manifest annotation
//!   [`ANNOTATION_LOCAL_SOURCE`]` = "local"`, and importing or pulling a
//!   manifest with it records no source either, so the image gets back
//!   the same id in any store.
//!
//! The built-in `host` image is refused ([`ImageError::NotExportable`]):
//! it binds the host's `/usr` and is not content of the store.
//!
//! An [`OciImage`] holds the store lease while it lives, so `gc` and
//! `remove` cannot delete a blob that an export or push is reading.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::PathBuf;

use serde::Serialize;
use tempfile::TempDir;

use crate::archive::ANNOTATION_REF_NAME;
use crate::digest::{parse_sha256_digest, sha256_hex, HashingWriter, SHA256_PREFIX};
use crate::error::ImageError;
use crate::image::{ImageConfig, ImageRecord, MEDIA_TYPE_LAYER_TAR};
use crate::ingest::StoreLease;
use crate::name::ImageName;
use crate::oci::{
    host_platform, parse_manifest, Compression, ConfigFile, Descriptor, ManifestKind,
    MEDIA_TYPE_OCI_CONFIG, MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_OCI_MANIFEST,
};
use crate::pack::{archive_dir_oci, ExactReader};
use crate::store::{create_new, open_file, write_err, ImageStore, LAYER_FS_DIR};

/// Manifest annotation marking an image built in a Warren store (no
/// registry provenance); its value is `"local"`. See the module docs.
pub const ANNOTATION_LOCAL_SOURCE: &str = "dev.warren.image.source";

/// The content of an OCI layout's `oci-layout` file.
const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// Tar block size.
const BLOCK: u64 = 512;

/// An image as OCI parts, ready to be written as a layout or pushed.
/// Holds the store lease (see the module docs).
#[derive(Debug)]
pub struct OciImage {
    /// The image's id in this store.
    pub id: String,
    /// The name the export carries (the name the reference used, else the
    /// image's first name; none for an unnamed image).
    pub name: Option<String>,
    /// The manifest document, exactly as written or pushed.
    pub manifest: Vec<u8>,
    /// Its descriptor (media type, digest, size).
    pub manifest_descriptor: Descriptor,
    /// The config document.
    pub config: Vec<u8>,
    /// Its descriptor.
    pub config_descriptor: Descriptor,
    /// The layers, lowest first.
    pub layers: Vec<OciLayer>,
    /// Whether `manifest` is the one the image was pulled or imported with.
    pub original_manifest: bool,
    _work: Option<TempDir>,
    _lease: StoreLease,
}

/// One layer of an [`OciImage`].
#[derive(Debug, Clone)]
pub struct OciLayer {
    /// The blob's descriptor as the manifest lists it.
    pub descriptor: Descriptor,
    /// Digest of the uncompressed tar (as the config lists it).
    pub diff_id: String,
    /// Whether the blob was archived now from the unpacked tree (it had no
    /// stored blob).
    pub generated: bool,
    path: PathBuf,
}

impl OciLayer {
    /// Opens the blob for reading.
    pub fn open(&self) -> Result<File, ImageError> {
        open_file(&self.path)
    }
}

/// What [`ImageStore::export_oci`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSummary {
    /// The image id.
    pub id: String,
    /// The name in the layout's index, if any.
    pub name: Option<String>,
    /// The manifest digest.
    pub manifest_digest: String,
    /// Bytes written (the tar's size).
    pub bytes: u64,
}

impl ImageStore {
    /// Streams the image `reference` (a name, a registry short name or an
    /// id, as in [`ImageStore::resolve`]) to `writer` as a tar of an OCI
    /// image layout: `oci-layout`, `index.json` (one manifest, named with
    /// [`ANNOTATION_REF_NAME`] when the image has a name) and
    /// `blobs/sha256/`. Memory use is bounded (blobs are copied through a
    /// fixed buffer). The `host` image is refused.
    pub fn export_oci(
        &self,
        reference: &str,
        writer: impl Write,
    ) -> Result<ExportSummary, ImageError> {
        let image = self.oci_image(reference)?;
        let bytes = image.layout_size();
        image.write_layout(writer)?;
        tracing::info!(id = %image.id, manifest = %image.manifest_descriptor.digest, bytes, "exported image");
        Ok(ExportSummary {
            id: image.id.clone(),
            name: image.name.clone(),
            manifest_digest: image.manifest_descriptor.digest.clone(),
            bytes,
        })
    }

    /// The image `reference` as OCI parts (see the module docs), for an
    /// export or a registry push. Layers without a stored blob are
    /// archived into a work directory that lives as long as the result.
    pub fn oci_image(&self, reference: &str) -> Result<OciImage, ImageError> {
        let not_exportable = |reason| ImageError::NotExportable {
            reference: reference.to_owned(),
            reason,
        };
        if ImageName::parse(reference).is_ok_and(|n| n.is_host()) {
            return Err(not_exportable(
                "the host image is a view of the host's /usr, not content of the store",
            ));
        }
        let lease = self.lease()?;
        let refs = self.read_refs()?;
        let (hex, used_name) = self.lookup(reference, &refs)?;
        let name = used_name
            .or_else(|| {
                refs.iter()
                    .find(|(_, id)| **id == hex)
                    .map(|(n, _)| n.clone())
            })
            .map(|n| n.to_string());
        let record = self.read_record(&hex)?;
        if !record.binds.is_empty() {
            return Err(not_exportable(
                "the image binds host paths (the host image), which are not content of the store",
            ));
        }
        let id = format!("{SHA256_PREFIX}{hex}");
        if let Some(original) = self.original_parts(&record)? {
            let (manifest, manifest_descriptor, config, config_descriptor, layers) = original;
            return Ok(OciImage {
                id,
                name,
                manifest,
                manifest_descriptor,
                config,
                config_descriptor,
                layers,
                original_manifest: true,
                _work: None,
                _lease: lease,
            });
        }

        let mut work: Option<TempDir> = None;
        let mut layers = Vec::with_capacity(record.layers.len());
        for (i, diff_id) in record.layers.iter().enumerate() {
            let diff_hex = layer_hex(diff_id)?;
            let stored = self.read_layer_record(diff_hex)?.blob.filter(|blob| {
                parse_sha256_digest(&blob.digest).is_some_and(|b| {
                    fs::metadata(self.blob_path(b))
                        .is_ok_and(|m| m.is_file() && m.len() == blob.size)
                })
            });
            let layer = match stored {
                Some(blob) => OciLayer {
                    descriptor: Descriptor {
                        media_type: Compression::from_media_type(&blob.media_type)?
                            .media_type()
                            .to_owned(),
                        digest: blob.digest.clone(),
                        size: blob.size,
                        platform: None,
                        annotations: None,
                    },
                    diff_id: diff_id.clone(),
                    generated: false,
                    path: self.blob_path(layer_hex(&blob.digest)?),
                },
                None => {
                    if work.is_none() {
                        work = Some(self.work_dir()?);
                    }
                    let dir = work.as_ref().expect("created above").path();
                    self.archive_layer(diff_id, &dir.join(format!("layer-{i}")))?
                }
            };
            layers.push(layer);
        }
        let diff_ids: Vec<String> = layers.iter().map(|l| l.diff_id.clone()).collect();
        let created = record.source.as_ref().and_then(|s| s.created.clone());
        // The stored config is kept when it still describes these layers.
        let stored_config = match &record.source {
            Some(source) if self.has_blob(&source.config_digest) => {
                let bytes = self.read_blob(&source.config_digest)?;
                let parsed = ConfigFile::parse(&bytes)?;
                (parsed.rootfs.diff_ids == diff_ids && parsed.image_config() == record.config)
                    .then_some(bytes)
            }
            _ => None,
        };
        let config = match stored_config {
            Some(bytes) => bytes,
            None => config_document(&record.config, &diff_ids, created.as_deref())?,
        };
        let config_descriptor = descriptor(MEDIA_TYPE_OCI_CONFIG, &config);
        let mut annotations = BTreeMap::new();
        if record.source.is_none() {
            annotations.insert(ANNOTATION_LOCAL_SOURCE.to_owned(), "local".to_owned());
        }
        let manifest = encode(&ManifestDoc {
            schema_version: 2,
            media_type: MEDIA_TYPE_OCI_MANIFEST,
            config: &config_descriptor,
            layers: layers.iter().map(|l| &l.descriptor).collect(),
            annotations: (!annotations.is_empty()).then_some(annotations),
        })?;
        let manifest_descriptor = descriptor(MEDIA_TYPE_OCI_MANIFEST, &manifest);
        Ok(OciImage {
            id,
            name,
            manifest,
            manifest_descriptor,
            config,
            config_descriptor,
            layers,
            original_manifest: false,
            _work: work,
            _lease: lease,
        })
    }

    /// The manifest, config and layer blobs an image was pulled or
    /// imported with, if all are still stored and describe it.
    #[allow(clippy::type_complexity)]
    fn original_parts(
        &self,
        record: &ImageRecord,
    ) -> Result<Option<(Vec<u8>, Descriptor, Vec<u8>, Descriptor, Vec<OciLayer>)>, ImageError> {
        let Some(source) = &record.source else {
            return Ok(None);
        };
        if !self.has_blob(&source.manifest_digest) || !self.has_blob(&source.config_digest) {
            return Ok(None);
        }
        let manifest_bytes = self.read_blob(&source.manifest_digest)?;
        let Ok(ManifestKind::Manifest(manifest)) = parse_manifest(None, &manifest_bytes) else {
            return Ok(None);
        };
        if manifest.config.digest != source.config_digest
            || manifest.layers.len() != record.layers.len()
        {
            return Ok(None);
        }
        let config_bytes = self.read_blob(&source.config_digest)?;
        let config = ConfigFile::parse(&config_bytes)?;
        if config.rootfs.diff_ids != record.layers {
            return Ok(None);
        }
        let mut layers = Vec::with_capacity(manifest.layers.len());
        for (desc, diff_id) in manifest.layers.iter().zip(&record.layers) {
            let path = self.blob_path(desc.sha256_hex()?);
            if !fs::metadata(&path).is_ok_and(|m| m.is_file() && m.len() == desc.size) {
                return Ok(None);
            }
            layers.push(OciLayer {
                descriptor: desc.clone(),
                diff_id: diff_id.clone(),
                generated: false,
                path,
            });
        }
        let media_type = manifest
            .media_type
            .clone()
            .unwrap_or_else(|| MEDIA_TYPE_OCI_MANIFEST.to_owned());
        let manifest_descriptor = Descriptor {
            media_type,
            digest: source.manifest_digest.clone(),
            size: manifest_bytes.len() as u64,
            platform: None,
            annotations: None,
        };
        Ok(Some((
            manifest_bytes,
            manifest_descriptor,
            config_bytes,
            manifest.config.clone(),
            layers,
        )))
    }

    /// Archives the unpacked tree of layer `diff_id` into `path` (OCI
    /// whiteouts); the result's diff id is the digest of that tar.
    fn archive_layer(&self, diff_id: &str, path: &std::path::Path) -> Result<OciLayer, ImageError> {
        let tree = self.layer_dir(layer_hex(diff_id)?).join(LAYER_FS_DIR);
        let file = create_new(path)?;
        let writer = archive_dir_oci(&tree, HashingWriter::new(BufWriter::new(file)))?;
        let (buffered, hex, size) = writer.finish();
        buffered
            .into_inner()
            .map_err(|e| write_err(path, e.into_error()))?;
        let digest = format!("{SHA256_PREFIX}{hex}");
        if digest != diff_id {
            tracing::warn!(stored = %diff_id, archived = %digest, "layer has no stored blob and its tree archives to a different tar; the export lists the new diff id");
        } else {
            tracing::debug!(diff_id = %diff_id, "archived layer without a stored blob");
        }
        Ok(OciLayer {
            descriptor: Descriptor {
                media_type: MEDIA_TYPE_LAYER_TAR.to_owned(),
                digest: digest.clone(),
                size,
                platform: None,
                annotations: None,
            },
            diff_id: digest,
            generated: true,
            path: path.to_path_buf(),
        })
    }
}

impl OciImage {
    /// Every blob once (config, manifest, layers), with where to read it.
    fn blobs(&self) -> Vec<(&Descriptor, BlobSource<'_>)> {
        let mut seen = HashSet::new();
        let mut blobs = Vec::new();
        let docs = [
            (&self.config_descriptor, BlobSource::Bytes(&self.config)),
            (&self.manifest_descriptor, BlobSource::Bytes(&self.manifest)),
        ];
        for (desc, source) in docs {
            if seen.insert(desc.digest.as_str()) {
                blobs.push((desc, source));
            }
        }
        for layer in &self.layers {
            if seen.insert(layer.descriptor.digest.as_str()) {
                blobs.push((&layer.descriptor, BlobSource::Layer(layer)));
            }
        }
        blobs
    }

    /// The `index.json` of the layout.
    fn index(&self) -> Result<Vec<u8>, ImageError> {
        let mut desc = self.manifest_descriptor.clone();
        if let Some(name) = &self.name {
            desc.annotations = Some(BTreeMap::from([(
                ANNOTATION_REF_NAME.to_owned(),
                name.clone(),
            )]));
        }
        encode(&IndexDoc {
            schema_version: 2,
            media_type: MEDIA_TYPE_OCI_INDEX,
            manifests: vec![desc],
        })
    }

    /// The exact size of the tar [`OciImage::write_layout`] writes (for a
    /// `Content-Length` and progress).
    pub fn layout_size(&self) -> u64 {
        let entry = |size: u64| BLOCK + size.div_ceil(BLOCK) * BLOCK;
        let index = self.index().map(|i| i.len() as u64).unwrap_or(0);
        let dirs = 2 * entry(0);
        let blobs: u64 = self.blobs().iter().map(|(d, _)| entry(d.size)).sum();
        entry(OCI_LAYOUT.len() as u64) + entry(index) + dirs + blobs + 2 * BLOCK
    }

    /// Writes the OCI image layout as a tar to `out` and returns `out`.
    /// Entries: `oci-layout`, `index.json`, `blobs/`, `blobs/sha256/`,
    /// then the config, the manifest and each layer blob once, all
    /// `0644 root:root`, mtime 0. Fails with
    /// [`ImageError::ExportWrite`] when `out` fails (a client gone).
    pub fn write_layout<W: Write>(&self, out: W) -> Result<W, ImageError> {
        let mut builder = tar::Builder::new(out);
        let out_err = |source| ImageError::ExportWrite { source };
        append(
            &mut builder,
            "oci-layout",
            OCI_LAYOUT.len() as u64,
            OCI_LAYOUT,
        )
        .map_err(out_err)?;
        let index = self.index()?;
        append(&mut builder, "index.json", index.len() as u64, &index[..]).map_err(out_err)?;
        for dir in ["blobs/", "blobs/sha256/"] {
            let mut header = tar::Header::new_ustar();
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            header.set_mtime(0);
            builder
                .append_data(&mut header, dir, io::empty())
                .map_err(out_err)?;
        }
        for (desc, source) in self.blobs() {
            let path = format!("blobs/sha256/{}", desc.sha256_hex()?);
            match source {
                BlobSource::Bytes(bytes) => {
                    append(&mut builder, &path, desc.size, bytes).map_err(out_err)?
                }
                BlobSource::Layer(layer) => {
                    let file = layer.open()?;
                    let reader = ExactReader::new(
                        file,
                        desc.size,
                        "stored blob is shorter than its descriptor",
                    );
                    append(&mut builder, &path, desc.size, reader).map_err(out_err)?
                }
            }
        }
        builder.into_inner().map_err(out_err)
    }
}

/// Where a blob's bytes are.
enum BlobSource<'a> {
    Bytes(&'a [u8]),
    Layer(&'a OciLayer),
}

fn append<W: Write>(
    builder: &mut tar::Builder<W>,
    path: &str,
    size: u64,
    data: impl Read,
) -> io::Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o644);
    header.set_size(size);
    header.set_mtime(0);
    builder.append_data(&mut header, path, data)
}

fn layer_hex(digest: &str) -> Result<&str, ImageError> {
    crate::ingest::digest_hex(digest)
}

fn descriptor(media_type: &str, bytes: &[u8]) -> Descriptor {
    Descriptor {
        media_type: media_type.to_owned(),
        digest: format!("{SHA256_PREFIX}{}", sha256_hex(bytes)),
        size: bytes.len() as u64,
        platform: None,
        annotations: None,
    }
}

fn encode(value: &impl Serialize) -> Result<Vec<u8>, ImageError> {
    serde_json::to_vec(value).map_err(|e| ImageError::InvalidManifest {
        reason: format!("cannot encode an export document: {e}"),
    })
}

/// An OCI image config for `config` over `diff_ids`; deterministic.
fn config_document(
    config: &ImageConfig,
    diff_ids: &[String],
    created: Option<&str>,
) -> Result<Vec<u8>, ImageError> {
    encode(&ConfigDoc {
        created,
        architecture: host_platform().architecture,
        os: "linux",
        config: ContainerDoc {
            user: config.user.as_deref(),
            env: &config.env,
            entrypoint: config.entrypoint.as_deref(),
            cmd: config.cmd.as_deref(),
            working_dir: config.workdir.as_deref(),
        },
        rootfs: RootFsDoc {
            kind: "layers",
            diff_ids,
        },
    })
}

#[derive(Serialize)]
struct ConfigDoc<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    created: Option<&'a str>,
    architecture: String,
    os: &'a str,
    config: ContainerDoc<'a>,
    rootfs: RootFsDoc<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ContainerDoc<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    env: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    entrypoint: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cmd: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    working_dir: Option<&'a str>,
}

#[derive(Serialize)]
struct RootFsDoc<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    diff_ids: &'a [String],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ManifestDoc<'a> {
    schema_version: u32,
    media_type: &'a str,
    config: &'a Descriptor,
    layers: Vec<&'a Descriptor>,
    #[serde(skip_serializing_if = "Option::is_none")]
    annotations: Option<BTreeMap<String, String>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct IndexDoc<'a> {
    schema_version: u32,
    media_type: &'a str,
    manifests: Vec<Descriptor>,
}

/// Whether a manifest marks an image built in a Warren store
/// ([`ANNOTATION_LOCAL_SOURCE`]).
pub(crate) fn is_local_source(manifest: &crate::oci::Manifest) -> bool {
    manifest
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_LOCAL_SOURCE))
        .is_some_and(|v| v == "local")
}
