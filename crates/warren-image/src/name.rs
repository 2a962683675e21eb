//! Image names (`name[:tag]`): validation, normalization and their encoding
//! as file names under `<root>/refs/`.
//!
//! Grammar (a lowercase subset of docker references):
//!
//! ```text
//! name       := repository [ ":" tag ]          (at most 255 bytes once normalized)
//! repository := component ( "/" component )*    (first component may carry ":port")
//! component  := [a-z0-9] ( [a-z0-9._-]* [a-z0-9] )?
//! tag        := [a-z0-9_] [a-z0-9._-]{0,127}    (default "latest")
//! ```
//!
//! `..` anywhere is rejected, as are empty components, a leading `/`, the
//! repository `sha256` and 64-hex repositories (they would read as image
//! ids), and the repository `host`, which is reserved for the built-in image.

use std::fmt;

use crate::digest::{is_sha256_hex, parse_sha256_digest};
use crate::error::ImageError;

/// Repository name of the built-in host image.
pub const HOST_IMAGE_NAME: &str = "host";

/// Tag used when a name has none.
pub const DEFAULT_TAG: &str = "latest";

/// Maximum length of a normalized `name:tag`.
pub const MAX_NAME_LEN: usize = 255;

/// Maximum length of a tag.
const MAX_TAG_LEN: usize = 128;

/// A parsed, validated image name: `repository:tag`, or
/// `repository@sha256:<hex>` for images pulled by digest (then
/// [`ImageName::tag`] is empty).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ImageName {
    repository: String,
    tag: String,
    digest: Option<String>,
}

impl ImageName {
    /// Parses and validates `name[:tag]`, without the reserved-name check.
    pub fn parse(name: &str) -> Result<Self, ImageError> {
        let invalid = |reason| ImageError::InvalidName {
            name: name.to_owned(),
            reason,
        };
        if name.is_empty() {
            return Err(invalid("name is empty"));
        }
        if name.len() > MAX_NAME_LEN {
            return Err(invalid("name is longer than 255 bytes"));
        }
        if !name.bytes().all(|b| {
            b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || matches!(b, b'.' | b'_' | b'-' | b'/' | b':' | b'@')
        }) {
            return Err(invalid(
                "name may contain only lowercase letters, digits, '.', '_', '-', '/', ':' and '@'",
            ));
        }
        if name.starts_with('/') {
            return Err(invalid("name must not start with '/'"));
        }
        if name.contains("..") {
            return Err(invalid("name must not contain '..'"));
        }
        if let Some((repository, digest)) = name.split_once('@') {
            if parse_sha256_digest(digest).is_none() {
                return Err(invalid("a digest must be sha256:<64 lowercase hex digits>"));
            }
            validate_repository(repository).map_err(invalid)?;
            return Ok(Self {
                repository: repository.to_owned(),
                tag: String::new(),
                digest: Some(digest.to_owned()),
            });
        }
        // The tag follows the last ':' unless a '/' comes after it (then the
        // ':' belongs to a registry port).
        let (repository, tag) = match name.rfind(':') {
            Some(i) if !name[i..].contains('/') => (&name[..i], Some(&name[i + 1..])),
            _ => (name, None),
        };
        let tag = tag.unwrap_or(DEFAULT_TAG);
        validate_tag(tag).map_err(invalid)?;
        validate_repository(repository).map_err(invalid)?;
        let parsed = Self {
            repository: repository.to_owned(),
            tag: tag.to_owned(),
            digest: None,
        };
        if parsed.to_string().len() > MAX_NAME_LEN {
            return Err(invalid("name is longer than 255 bytes"));
        }
        Ok(parsed)
    }

    /// Parses a name an image may be given: [`ImageName::parse`] plus the
    /// reserved-name check.
    pub fn parse_new(name: &str) -> Result<Self, ImageError> {
        let parsed = Self::parse(name)?;
        if parsed.is_host() {
            return Err(ImageError::InvalidName {
                name: name.to_owned(),
                reason: "the name 'host' is reserved for the built-in host image",
            });
        }
        Ok(parsed)
    }

    /// The built-in host image's name, `host:latest`.
    pub fn host() -> Self {
        Self {
            repository: HOST_IMAGE_NAME.to_owned(),
            tag: DEFAULT_TAG.to_owned(),
            digest: None,
        }
    }

    /// `sha256:<hex>` for a by-digest name.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// The repository (`registry/path`, or a local name).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag; empty for a by-digest name.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Whether this names the built-in host image repository (any tag).
    pub fn is_host(&self) -> bool {
        self.repository == HOST_IMAGE_NAME
    }

    /// The file name of this name's ref under `<root>/refs/`.
    ///
    /// `/`, `:` and `@` are percent-encoded; `%` cannot occur in a valid name, so
    /// the encoding is injective and [`ImageName::from_ref_file_name`]
    /// inverts it.
    pub(crate) fn ref_file_name(&self) -> String {
        self.to_string()
            .replace('/', "%2f")
            .replace(':', "%3a")
            .replace('@', "%40")
    }

    /// Decodes a ref file name; `None` if it is not one this store wrote.
    pub(crate) fn from_ref_file_name(file_name: &str) -> Option<Self> {
        let decoded = file_name
            .replace("%2f", "/")
            .replace("%3a", ":")
            .replace("%40", "@");
        let parsed = Self::parse(&decoded).ok()?;
        (parsed.ref_file_name() == file_name).then_some(parsed)
    }
}

impl fmt::Display for ImageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.digest {
            Some(digest) => write!(f, "{}@{}", self.repository, digest),
            None => write!(f, "{}:{}", self.repository, self.tag),
        }
    }
}

fn validate_tag(tag: &str) -> Result<(), &'static str> {
    if tag.is_empty() {
        return Err("tag is empty");
    }
    if tag.len() > MAX_TAG_LEN {
        return Err("tag is longer than 128 bytes");
    }
    if tag.contains('/') || tag.contains(':') {
        return Err("tag may not contain '/' or ':'");
    }
    let first = tag.as_bytes()[0];
    if !(first.is_ascii_alphanumeric() || first == b'_') {
        return Err("tag must start with a letter, digit or '_'");
    }
    Ok(())
}

fn validate_repository(repository: &str) -> Result<(), &'static str> {
    if repository.is_empty() {
        return Err("repository is empty");
    }
    if repository.ends_with('/') {
        return Err("name must not end with '/'");
    }
    let components: Vec<&str> = repository.split('/').collect();
    for (i, component) in components.iter().enumerate() {
        let component = match component.split_once(':') {
            Some((host, port)) => {
                if i != 0 || components.len() == 1 {
                    return Err("':' is only allowed once, before the tag or as a registry port");
                }
                if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
                    return Err("registry port must be numeric");
                }
                host
            }
            None => component,
        };
        if component.is_empty() {
            return Err("name has an empty path component");
        }
        let bytes = component.as_bytes();
        let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        if !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
            return Err("each path component must start and end with a letter or digit");
        }
    }
    if repository == "sha256" || is_sha256_hex(repository) {
        return Err("name must not look like an image id");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(name: &str) -> String {
        ImageName::parse_new(name)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .to_string()
    }

    fn err(name: &str) -> &'static str {
        match ImageName::parse_new(name) {
            Err(e @ ImageError::InvalidName { .. }) => e.code(),
            other => panic!("{name}: expected InvalidName, got {other:?}"),
        }
    }

    #[test]
    fn valid_names_normalize_with_default_tag() {
        assert_eq!(ok("ubuntu"), "ubuntu:latest");
        assert_eq!(ok("ubuntu:22.04"), "ubuntu:22.04");
        assert_eq!(ok("my-org/my_app.v2:v1.0-rc1"), "my-org/my_app.v2:v1.0-rc1");
        assert_eq!(ok("localhost:5000/app"), "localhost:5000/app:latest");
        assert_eq!(ok("localhost:5000/app:1"), "localhost:5000/app:1");
        assert_eq!(ok("a"), "a:latest");
        assert_eq!(ok("hostile"), "hostile:latest");
        assert_eq!(ok("x:_t"), "x:_t");
    }

    #[test]
    fn invalid_names_are_rejected() {
        for name in [
            "",
            "Ubuntu",
            "a b",
            "/abs",
            "a/../b",
            "..",
            "a..b",
            "a//b",
            "a/",
            "a:",
            ":tag",
            "a:b:c",
            "a@sha256:00",
            "a@md5:0000",
            "@sha256:0000000000000000000000000000000000000000000000000000000000000000",
            "a:-tag",
            "-a",
            "a-",
            "a/.b",
            "host",
            "host:latest",
            "host:other",
            "sha256:0123456789ab",
            "a%2fb",
            "a\0b",
            "localhost:abc/app",
            "é",
        ] {
            assert_eq!(err(name), "invalid_image_name", "{name:?}");
        }
        let long = "a".repeat(256);
        assert_eq!(err(&long), "invalid_image_name");
        let hex = "0".repeat(64);
        assert_eq!(err(&hex), "invalid_image_name");
        // 255 bytes including the default tag is the limit.
        let fits = "a".repeat(MAX_NAME_LEN - ":latest".len());
        assert_eq!(ok(&fits).len(), MAX_NAME_LEN);
        let too_long = "a".repeat(MAX_NAME_LEN - ":latest".len() + 1);
        assert_eq!(err(&too_long), "invalid_image_name");
    }

    #[test]
    fn host_is_parseable_but_reserved() {
        assert!(ImageName::parse("host").unwrap().is_host());
        assert_eq!(ImageName::parse("host").unwrap(), ImageName::host());
    }

    #[test]
    fn ref_file_names_round_trip_and_are_plain_file_names() {
        let by_digest = format!("docker.io/library/a@sha256:{}", "0".repeat(64));
        for name in ["a", "localhost:5000/org/app:v1", "x.y_z-w:t.1", &by_digest] {
            let parsed = ImageName::parse(name).unwrap();
            let file = parsed.ref_file_name();
            assert!(!file.contains('/') && !file.contains(':') && !file.starts_with('.'));
            assert_eq!(ImageName::from_ref_file_name(&file), Some(parsed));
        }
        assert_eq!(ImageName::from_ref_file_name("a:latest"), None);
        assert_eq!(ImageName::from_ref_file_name(".tmp"), None);
    }
}
