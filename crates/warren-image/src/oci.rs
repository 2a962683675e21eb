//! OCI and Docker image formats: manifests, indexes, image configs, media
//! types, and the host platform.
//!
//! Only the fields Warren uses are modelled; unknown fields are ignored
//! (registries and tools add their own). Every document is hashed as the
//! exact bytes received, never re-serialized.

use serde::{Deserialize, Serialize};

pub use crate::digest::sha256_hex;
use crate::digest::{parse_sha256_digest, SHA256_PREFIX};
use crate::error::ImageError;
use crate::image::ImageConfig;

/// OCI image index.
pub const MEDIA_TYPE_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image manifest.
pub const MEDIA_TYPE_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image config.
pub const MEDIA_TYPE_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Docker manifest list (multi-platform).
pub const MEDIA_TYPE_DOCKER_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image manifest, schema 2.
pub const MEDIA_TYPE_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker image config.
pub const MEDIA_TYPE_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// OCI zstd layer.
pub const MEDIA_TYPE_LAYER_TAR_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// Docker gzip layer.
pub const MEDIA_TYPE_DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Docker uncompressed layer (docker save archives).
pub const MEDIA_TYPE_DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";

/// Every manifest media type a pull asks for, for the `Accept` header.
pub const MANIFEST_ACCEPT: &[&str] = &[
    MEDIA_TYPE_OCI_INDEX,
    MEDIA_TYPE_OCI_MANIFEST,
    MEDIA_TYPE_DOCKER_LIST,
    MEDIA_TYPE_DOCKER_MANIFEST,
];

/// Largest manifest, index or config accepted, in bytes.
pub const MAX_DOCUMENT_BYTES: u64 = 4 << 20;

/// Layer compression, from the media type (or magic bytes for archives).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (possibly multi-member).
    Gzip,
    /// zstd.
    Zstd,
}

impl Compression {
    /// The compression a layer media type declares.
    pub fn from_media_type(media_type: &str) -> Result<Self, ImageError> {
        match media_type {
            crate::image::MEDIA_TYPE_LAYER_TAR | MEDIA_TYPE_DOCKER_LAYER_TAR => Ok(Self::None),
            crate::image::MEDIA_TYPE_LAYER_TAR_GZIP | MEDIA_TYPE_DOCKER_LAYER_GZIP => {
                Ok(Self::Gzip)
            }
            MEDIA_TYPE_LAYER_TAR_ZSTD => Ok(Self::Zstd),
            other => Err(ImageError::InvalidManifest {
                reason: format!("unsupported layer media type {other:?}"),
            }),
        }
    }

    /// Detects the compression from a stream's first bytes.
    pub fn detect(head: &[u8]) -> Result<Self, ImageError> {
        let unsupported = |format| Err(ImageError::UnsupportedCompression { format });
        if head.starts_with(&[0x1f, 0x8b]) {
            Ok(Self::Gzip)
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Ok(Self::Zstd)
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            unsupported("xz")
        } else if head.starts_with(b"BZh") {
            unsupported("bzip2")
        } else {
            Ok(Self::None)
        }
    }

    /// The OCI layer media type of this compression.
    pub fn media_type(self) -> &'static str {
        match self {
            Self::None => crate::image::MEDIA_TYPE_LAYER_TAR,
            Self::Gzip => crate::image::MEDIA_TYPE_LAYER_TAR_GZIP,
            Self::Zstd => MEDIA_TYPE_LAYER_TAR_ZSTD,
        }
    }
}

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content.
    #[serde(default)]
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// Platform (in indexes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Annotations (OCI layouts name tags with `org.opencontainers.image.ref.name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<std::collections::BTreeMap<String, String>>,
}

impl Descriptor {
    /// The hex part of the digest; refuses anything but a full sha256.
    pub fn sha256_hex(&self) -> Result<&str, ImageError> {
        parse_sha256_digest(&self.digest).ok_or_else(|| ImageError::InvalidManifest {
            reason: format!("unsupported or malformed digest {:?}", self.digest),
        })
    }
}

/// An OS/architecture pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// e.g. `amd64`, `arm64`.
    pub architecture: String,
    /// e.g. `linux`.
    pub os: String,
    /// e.g. `v8` for arm64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// The platform of this build, in OCI (GOARCH) spelling.
pub fn host_platform() -> Platform {
    let architecture = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    };
    Platform {
        architecture: architecture.to_owned(),
        os: "linux".to_owned(),
        variant: None,
    }
}

/// An image index or Docker manifest list.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// 2.
    #[serde(default)]
    pub schema_version: u32,
    /// Declared media type (optional in OCI).
    #[serde(default)]
    pub media_type: Option<String>,
    /// The platform manifests.
    pub manifests: Vec<Descriptor>,
}

impl Index {
    /// Picks the manifest for `platform` (os and architecture must match;
    /// a variant, when the index gives several, prefers none/`v8`).
    pub fn select(&self, platform: &Platform) -> Result<&Descriptor, ImageError> {
        let mut candidates = self.manifests.iter().filter(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == platform.os && p.architecture == platform.architecture)
        });
        let first = candidates.next();
        let preferred = std::iter::once(first)
            .flatten()
            .chain(candidates)
            .find(|d| {
                d.platform
                    .as_ref()
                    .is_some_and(|p| matches!(p.variant.as_deref(), None | Some("v8")))
            });
        preferred.or(first).ok_or_else(|| {
            let available = self
                .manifests
                .iter()
                .filter_map(|d| d.platform.as_ref().map(|p| p.to_string()))
                .collect::<Vec<_>>()
                .join(", ");
            ImageError::NoMatchingPlatform {
                platform: platform.to_string(),
                available,
            }
        })
    }
}

/// An image manifest (OCI or Docker schema 2).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// 2.
    pub schema_version: u32,
    /// Declared media type (optional in OCI).
    #[serde(default)]
    pub media_type: Option<String>,
    /// The image config blob.
    pub config: Descriptor,
    /// The layers, lowest first.
    pub layers: Vec<Descriptor>,
    /// Annotations (see `ANNOTATION_LOCAL_SOURCE`).
    #[serde(default)]
    pub annotations: Option<std::collections::BTreeMap<String, String>>,
}

/// What a fetched manifest document turned out to be.
#[derive(Debug, Clone)]
pub enum ManifestKind {
    /// A multi-platform index.
    Index(Index),
    /// A single-platform manifest.
    Manifest(Manifest),
}

/// Parses a manifest or index by its declared media type, falling back to
/// its shape when the type is missing.
pub fn parse_manifest(
    content_type: Option<&str>,
    bytes: &[u8],
) -> Result<ManifestKind, ImageError> {
    let invalid = |e: serde_json::Error| ImageError::InvalidManifest {
        reason: format!("manifest does not parse: {e}"),
    };
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        #[serde(default)]
        schema_version: Option<u32>,
        #[serde(default)]
        media_type: Option<String>,
        #[serde(default)]
        manifests: Option<serde_json::Value>,
    }
    let probe: Probe = serde_json::from_slice(bytes).map_err(invalid)?;
    if probe.schema_version != Some(2) {
        return Err(ImageError::InvalidManifest {
            reason: format!(
                "unsupported manifest schema version {:?} (only schema 2 / OCI)",
                probe.schema_version
            ),
        });
    }
    let declared = probe
        .media_type
        .as_deref()
        .or(content_type.map(|c| c.split(';').next().unwrap_or(c).trim()));
    let is_index = match declared {
        Some(MEDIA_TYPE_OCI_INDEX | MEDIA_TYPE_DOCKER_LIST) => true,
        Some(MEDIA_TYPE_OCI_MANIFEST | MEDIA_TYPE_DOCKER_MANIFEST) => false,
        _ => probe.manifests.is_some(),
    };
    if is_index {
        Ok(ManifestKind::Index(
            serde_json::from_slice(bytes).map_err(invalid)?,
        ))
    } else {
        let manifest: Manifest = serde_json::from_slice(bytes).map_err(invalid)?;
        if manifest.config.media_type != MEDIA_TYPE_OCI_CONFIG
            && manifest.config.media_type != MEDIA_TYPE_DOCKER_CONFIG
            && !manifest.config.media_type.is_empty()
        {
            return Err(ImageError::InvalidManifest {
                reason: format!(
                    "not a container image (config media type {:?})",
                    manifest.config.media_type
                ),
            });
        }
        for layer in &manifest.layers {
            Compression::from_media_type(&layer.media_type)?;
            layer.sha256_hex()?;
        }
        manifest.config.sha256_hex()?;
        Ok(ManifestKind::Manifest(manifest))
    }
}

/// The image config blob (the subset Warren reads).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ConfigFile {
    /// Creation time (RFC 3339), if given.
    #[serde(default)]
    pub created: Option<String>,
    /// Architecture (informational).
    #[serde(default)]
    pub architecture: Option<String>,
    /// OS (informational).
    #[serde(default)]
    pub os: Option<String>,
    /// Process defaults.
    #[serde(default)]
    pub config: Option<ContainerConfig>,
    /// The layers' diff ids.
    pub rootfs: RootFs,
}

/// `config` inside the image config.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    /// `User`.
    #[serde(default)]
    pub user: Option<String>,
    /// `Env`.
    #[serde(default)]
    pub env: Option<Vec<String>>,
    /// `Entrypoint`.
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// `Cmd`.
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    /// `WorkingDir`.
    #[serde(default)]
    pub working_dir: Option<String>,
}

/// `rootfs` inside the image config.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RootFs {
    /// `layers`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// Digests of the uncompressed layer tars, lowest first.
    pub diff_ids: Vec<String>,
}

impl ConfigFile {
    /// Parses a config blob.
    pub fn parse(bytes: &[u8]) -> Result<Self, ImageError> {
        let config: Self =
            serde_json::from_slice(bytes).map_err(|e| ImageError::InvalidManifest {
                reason: format!("image config does not parse: {e}"),
            })?;
        for diff_id in &config.rootfs.diff_ids {
            if parse_sha256_digest(diff_id).is_none() {
                return Err(ImageError::InvalidManifest {
                    reason: format!("unsupported diff id {diff_id:?}"),
                });
            }
        }
        Ok(config)
    }

    /// The process defaults as an [`ImageConfig`].
    pub fn image_config(&self) -> ImageConfig {
        let c = self.config.clone().unwrap_or_default();
        ImageConfig {
            env: c.env.unwrap_or_default(),
            workdir: c.working_dir.filter(|w| !w.is_empty()),
            entrypoint: c.entrypoint,
            cmd: c.cmd,
            user: c.user.filter(|u| !u.is_empty()),
        }
    }
}

/// The manifest and config must list the same number of layers.
pub fn check_layer_count(manifest: &Manifest, config: &ConfigFile) -> Result<(), ImageError> {
    if manifest.layers.len() != config.rootfs.diff_ids.len() {
        return Err(ImageError::InvalidManifest {
            reason: format!(
                "manifest has {} layers but the config lists {} diff ids",
                manifest.layers.len(),
                config.rootfs.diff_ids.len()
            ),
        });
    }
    Ok(())
}

/// Checks that `bytes` hash to `digest` (`sha256:<hex>`).
pub fn verify_bytes(what: &str, digest: &str, bytes: &[u8]) -> Result<(), ImageError> {
    let expected = parse_sha256_digest(digest).ok_or_else(|| ImageError::InvalidManifest {
        reason: format!("unsupported digest {digest:?} for {what}"),
    })?;
    let actual = sha256_hex(bytes);
    if actual != expected {
        return Err(ImageError::DigestMismatch {
            what: what.to_owned(),
            expected: digest.to_owned(),
            actual: format!("{SHA256_PREFIX}{actual}"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(arch: &str, variant: Option<&str>, digest_byte: char) -> Descriptor {
        Descriptor {
            media_type: MEDIA_TYPE_OCI_MANIFEST.into(),
            digest: format!("sha256:{}", digest_byte.to_string().repeat(64)),
            size: 1,
            platform: Some(Platform {
                architecture: arch.into(),
                os: "linux".into(),
                variant: variant.map(Into::into),
            }),
            annotations: None,
        }
    }

    #[test]
    fn index_selects_the_host_platform_or_says_what_exists() {
        let index = Index {
            schema_version: 2,
            media_type: None,
            manifests: vec![
                desc("arm64", Some("v8"), 'a'),
                desc("amd64", None, 'b'),
                desc("arm", Some("v7"), 'c'),
            ],
        };
        let amd = Platform {
            architecture: "amd64".into(),
            os: "linux".into(),
            variant: None,
        };
        assert!(index.select(&amd).unwrap().digest.ends_with('b'));
        let arm64 = Platform {
            architecture: "arm64".into(),
            ..amd.clone()
        };
        assert!(index.select(&arm64).unwrap().digest.ends_with('a'));
        let riscv = Platform {
            architecture: "riscv64".into(),
            ..amd
        };
        let err = index.select(&riscv).unwrap_err();
        assert_eq!(err.code(), "no_matching_platform");
        assert!(err.to_string().contains("linux/arm64/v8"), "{err}");
        if cfg!(target_arch = "x86_64") {
            assert_eq!(host_platform().architecture, "amd64");
        }
    }

    #[test]
    fn manifests_parse_by_media_type_and_shape() {
        let manifest = br#"{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":2},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+zstd","digest":"sha256:1111111111111111111111111111111111111111111111111111111111111111","size":3}]}"#;
        assert!(matches!(
            parse_manifest(None, manifest).unwrap(),
            ManifestKind::Manifest(m) if m.layers.len() == 1
        ));
        let index = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert!(matches!(
            parse_manifest(Some(MEDIA_TYPE_OCI_INDEX), index).unwrap(),
            ManifestKind::Index(_)
        ));
        let v1 = br#"{"schemaVersion":1,"fsLayers":[]}"#;
        assert_eq!(
            parse_manifest(None, v1).unwrap_err().code(),
            "invalid_manifest"
        );
        let bad_layer = String::from_utf8_lossy(manifest).replace("tar+zstd", "tar+xz");
        assert_eq!(
            parse_manifest(None, bad_layer.as_bytes())
                .unwrap_err()
                .code(),
            "invalid_manifest"
        );
        assert_eq!(
            verify_bytes("x", &format!("sha256:{}", sha256_hex(b"a")), b"b")
                .unwrap_err()
                .code(),
            "digest_mismatch"
        );
    }
}
