//! Registry references: `python:3.12`, `ghcr.io/org/app:v1`,
//! `host:5000/a/b:t`, `busybox@sha256:<hex>`, normalized the way Docker
//! does it.
//!
//! - The first path component is a registry if it contains `.` or `:`, or
//!   is `localhost`; otherwise the reference is on the default registry.
//! - On `docker.io`, a single-component repository gets `library/`.
//! - No tag and no digest means `:latest`; with a digest, a tag is dropped
//!   (the digest decides what is pulled).
//!
//! The normalized form (`docker.io/library/python:3.12`) is also the
//! [`ImageName`] the pulled image is stored under.

use std::fmt;

use crate::error::ImageError;
use crate::name::{ImageName, DEFAULT_TAG};

/// The registry short names resolve to unless configured otherwise.
pub const DEFAULT_REGISTRY: &str = "docker.io";

/// A normalized registry reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Registry host (and port), e.g. `docker.io`, `127.0.0.1:5000`.
    pub registry: String,
    /// Repository path in the registry, e.g. `library/python`.
    pub repository: String,
    /// What to fetch: a tag or a digest.
    pub target: Target,
}

/// The tag or digest of a [`Reference`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// A mutable tag.
    Tag(String),
    /// An immutable `sha256:<hex>` manifest digest.
    Digest(String),
}

impl Reference {
    /// Parses and normalizes `reference` against `default_registry`.
    pub fn parse(reference: &str, default_registry: &str) -> Result<Self, ImageError> {
        let invalid = |reason| ImageError::InvalidReference {
            reference: reference.to_owned(),
            reason,
        };
        let (rest, digest) = match reference.split_once('@') {
            Some((rest, digest)) => (rest, Some(digest)),
            None => (reference, None),
        };
        let (name, tag) = match rest.rfind(':') {
            Some(i) if !rest[i..].contains('/') => (&rest[..i], Some(&rest[i + 1..])),
            _ => (rest, None),
        };
        if name.is_empty() {
            return Err(invalid("repository is empty"));
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_owned(), path.to_owned())
            }
            _ => (default_registry.to_owned(), name.to_owned()),
        };
        let registry = if registry == "index.docker.io" || registry == "registry-1.docker.io" {
            DEFAULT_REGISTRY.to_owned()
        } else {
            registry
        };
        let repository = if registry == DEFAULT_REGISTRY && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        let target = match (digest, tag) {
            (Some(digest), _) => Target::Digest(digest.to_owned()),
            (None, Some(tag)) => Target::Tag(tag.to_owned()),
            (None, None) => Target::Tag(DEFAULT_TAG.to_owned()),
        };
        let parsed = Self {
            registry,
            repository,
            target,
        };
        // The normalized form must be a valid store name (lowercase, no
        // `..`, a sha256 digest, ...).
        ImageName::parse(&parsed.to_string()).map_err(|e| match e {
            ImageError::InvalidName { reason, .. } => invalid(reason),
            other => other,
        })?;
        Ok(parsed)
    }

    /// The store name of this reference (`registry/repository:tag` or
    /// `registry/repository@digest`).
    pub fn image_name(&self) -> ImageName {
        ImageName::parse(&self.to_string()).expect("validated when parsed")
    }

    /// The tag or digest as it goes into a manifest URL.
    pub fn target_str(&self) -> &str {
        match &self.target {
            Target::Tag(t) | Target::Digest(t) => t,
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.target {
            Target::Tag(tag) => write!(f, "{}/{}:{}", self.registry, self.repository, tag),
            Target::Digest(d) => write!(f, "{}/{}@{}", self.registry, self.repository, d),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(r: &str) -> String {
        Reference::parse(r, DEFAULT_REGISTRY)
            .unwrap_or_else(|e| panic!("{r}: {e}"))
            .to_string()
    }

    #[test]
    fn short_names_normalize_like_docker() {
        let d = "0".repeat(64);
        assert_eq!(norm("python:3.12"), "docker.io/library/python:3.12");
        assert_eq!(norm("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(norm("org/app"), "docker.io/org/app:latest");
        assert_eq!(norm("index.docker.io/org/app:1"), "docker.io/org/app:1");
        assert_eq!(norm("host:5000/a/b:t"), "host:5000/a/b:t");
        assert_eq!(norm("127.0.0.1:5000/a"), "127.0.0.1:5000/a:latest");
        assert_eq!(norm("localhost/a:1"), "localhost/a:1");
        assert_eq!(norm("ghcr.io/o/r"), "ghcr.io/o/r:latest");
        assert_eq!(
            norm(&format!("busybox:1@sha256:{d}")),
            format!("docker.io/library/busybox@sha256:{d}")
        );
        let r = Reference::parse("app", "reg.example:5000").unwrap();
        assert_eq!(r.to_string(), "reg.example:5000/app:latest");
        assert_eq!(r.image_name().to_string(), "reg.example:5000/app:latest");
        for bad in ["", ":t", "a@sha256:12", "A/b", "a/../b", "a:b:c"] {
            let err = Reference::parse(bad, DEFAULT_REGISTRY).unwrap_err();
            assert_eq!(err.code(), "invalid_image_reference", "{bad:?}");
        }
    }
}
