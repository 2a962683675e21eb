//! Registry configuration: the default registry, per-registry credentials
//! and the per-registry permission to use plain HTTP.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::PullError;

/// Registry settings, loadable from a JSON file (see `docs/images.md`):
///
/// ```json
/// {
///   "default_registry": "docker.io",
///   "registries": {
///     "registry.example.com": { "auth": { "username": "u", "password": "p" } },
///     "ghcr.io": { "auth": { "token": "..." } },
///     "127.0.0.1:5000": { "insecure": true }
///   }
/// }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Where short names (`python:3.12`) resolve; `docker.io` when absent.
    #[serde(default)]
    pub default_registry: Option<String>,
    /// Per-registry settings, keyed by `host[:port]` as written in
    /// references (`docker.io` for Docker Hub).
    #[serde(default)]
    pub registries: BTreeMap<String, RegistryEntry>,
}

/// Settings of one registry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryEntry {
    /// Allow plain HTTP (and only for this registry). Default false: HTTPS
    /// with certificate verification.
    #[serde(default)]
    pub insecure: bool,
    /// Credentials for this registry.
    #[serde(default)]
    pub auth: Option<Credentials>,
}

/// Registry credentials.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum Credentials {
    /// Username and password: sent as HTTP Basic auth to registries that
    /// ask for it, and to the token service of registries that use bearer
    /// tokens.
    Basic {
        /// User name.
        username: String,
        /// Password or access token used as a password.
        password: String,
    },
    /// A ready bearer token, sent as `Authorization: Bearer <token>`.
    Bearer {
        /// The token.
        token: String,
    },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        match self {
            Credentials::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            Credentials::Bearer { .. } => f
                .debug_struct("Bearer")
                .field("token", &"<redacted>")
                .finish(),
        }
    }
}

impl RegistryConfig {
    /// Reads a JSON config file.
    pub fn load(path: &Path) -> Result<Self, PullError> {
        let bytes = std::fs::read(path).map_err(|source| PullError::ReadConfig {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&bytes).map_err(|e| match e {
            PullError::InvalidConfig { reason } => PullError::InvalidConfig {
                reason: format!("{}: {reason}", path.display()),
            },
            other => other,
        })
    }

    /// Parses and validates a JSON config.
    pub fn from_json(bytes: &[u8]) -> Result<Self, PullError> {
        let config: Self = serde_json::from_slice(bytes).map_err(|e| PullError::InvalidConfig {
            reason: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks registry names (`host[:port]`, no scheme or path).
    pub fn validate(&self) -> Result<(), PullError> {
        let names = self.registries.keys().chain(self.default_registry.iter());
        for name in names {
            let ok = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.:[]".contains(&b));
            if !ok {
                return Err(PullError::InvalidConfig {
                    reason: format!("registry {name:?} must be host[:port] in lowercase, without a scheme or path"),
                });
            }
        }
        Ok(())
    }

    /// The registry short names resolve to.
    pub fn default_registry(&self) -> &str {
        self.default_registry
            .as_deref()
            .unwrap_or(warren_image::DEFAULT_REGISTRY)
    }

    /// The settings of `registry` (defaults when not listed).
    pub fn entry(&self, registry: &str) -> RegistryEntry {
        self.registries.get(registry).cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_file_format_parses_and_validates() {
        let json = br#"{
            "default_registry": "registry.example.com",
            "registries": {
                "registry.example.com": {"auth": {"username": "u", "password": "p"}},
                "ghcr.io": {"auth": {"token": "t"}},
                "127.0.0.1:5000": {"insecure": true}
            }
        }"#;
        let c = RegistryConfig::from_json(json).unwrap();
        assert_eq!(c.default_registry(), "registry.example.com");
        assert!(c.entry("127.0.0.1:5000").insecure);
        assert!(!c.entry("docker.io").insecure);
        assert!(matches!(
            c.entry("ghcr.io").auth,
            Some(Credentials::Bearer { .. })
        ));
        assert!(matches!(
            c.entry("registry.example.com").auth,
            Some(Credentials::Basic { .. })
        ));
        let shown = format!("{:?}", c.entry("registry.example.com").auth);
        assert!(
            !shown.contains("\"p\"") && shown.contains("redacted"),
            "{shown}"
        );
        assert_eq!(RegistryConfig::default().default_registry(), "docker.io");
        for bad in [
            &br#"{"registries": {"https://x": {}}}"#[..],
            br#"{"registries": {"x": {"insecure": true, "tls": false}}}"#,
            br#"{"registries": {"x": {"auth": {"user": "u"}}}}"#,
        ] {
            let err = RegistryConfig::from_json(bad).unwrap_err();
            assert_eq!(err.code(), "invalid_registry_config");
        }
    }
}
