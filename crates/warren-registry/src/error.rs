//! The error type of registry pulls.

use std::path::PathBuf;

use warren_image::ImageError;

/// Everything that can go wrong in a pull. [`PullError::code`] gives a
/// stable snake_case code for API responses; the `Display` text may hold
/// registry URLs and should be logged rather than shown to tenants as is.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PullError {
    /// The image store refused or failed (digest mismatch, no matching
    /// platform, unsafe layer, ...); its own code is passed through.
    #[error(transparent)]
    Image(#[from] ImageError),

    /// The registry requires credentials and none were configured or given.
    #[error("registry {registry} requires authentication and no credentials were given")]
    AuthRequired {
        /// The registry.
        registry: String,
    },

    /// The registry (or its token service) rejected the credentials.
    #[error("registry {registry} rejected the credentials: {reason}")]
    AuthRejected {
        /// The registry.
        registry: String,
        /// What failed.
        reason: String,
    },

    /// The repository, tag or digest does not exist on the registry.
    #[error("{reference} not found on the registry")]
    NotFound {
        /// The normalized reference.
        reference: String,
    },

    /// The registry answered with an unexpected status.
    #[error("registry {registry} answered {status} for {what}")]
    RegistryStatus {
        /// The registry.
        registry: String,
        /// HTTP status.
        status: u16,
        /// What was requested.
        what: String,
    },

    /// The registry could not be reached or the transfer broke off.
    #[error("cannot reach registry {registry}")]
    Connect {
        /// The registry.
        registry: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },

    /// The registry (or its token service) sent something unusable.
    #[error("registry {registry} sent an invalid response: {reason}")]
    InvalidResponse {
        /// The registry.
        registry: String,
        /// What was wrong.
        reason: String,
    },

    /// Plain HTTP was needed (a token realm or redirect) for a registry not
    /// marked insecure.
    #[error("registry {registry} needs plain HTTP for {url}, but it is not marked insecure")]
    InsecureNotAllowed {
        /// The registry.
        registry: String,
        /// The URL refused.
        url: String,
    },

    /// The registry config file could not be read.
    #[error("cannot read registry config {path}")]
    ReadConfig {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The registry config is invalid.
    #[error("invalid registry config: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: String,
    },

    /// A blocking store task panicked or was cancelled.
    #[error("image store task failed")]
    Task(#[source] tokio::task::JoinError),
}

impl PullError {
    /// A stable, documented, snake_case code for this error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Image(e) => e.code(),
            Self::AuthRequired { .. } | Self::AuthRejected { .. } => "registry_auth",
            Self::NotFound { .. } => "image_not_found",
            Self::RegistryStatus { .. } => "registry_error",
            Self::Connect { .. } => "registry_unreachable",
            Self::InvalidResponse { .. } => "registry_invalid_response",
            Self::InsecureNotAllowed { .. } => "registry_insecure_not_allowed",
            Self::ReadConfig { .. } | Self::InvalidConfig { .. } => "invalid_registry_config",
            Self::Task(_) => "internal_error",
        }
    }
}

/// Everything that can go wrong in a push. [`PushError::code`] gives a
/// stable snake_case code; registry and store failures keep their own
/// (`registry_auth`, `registry_unreachable`, `image_not_exportable`, ...).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PushError {
    /// Talking to the registry failed (auth, connection, timeouts, bad
    /// answers), or the store did (missing image, host image, ...).
    #[error(transparent)]
    Registry(#[from] PullError),

    /// The target is not a `host[:port]/repository[:tag]` to push to.
    #[error("invalid push target {target:?}: {reason}")]
    InvalidTarget {
        /// The target as given.
        target: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The registry refused an upload or the manifest.
    #[error("registry {registry} refused {what} with HTTP {status}: {body}")]
    PushFailed {
        /// The registry.
        registry: String,
        /// What was being pushed (`blob sha256:..`, `manifest ..`).
        what: String,
        /// HTTP status.
        status: u16,
        /// The start of the registry's answer (at most 512 bytes).
        body: String,
    },
}

impl From<ImageError> for PushError {
    fn from(e: ImageError) -> Self {
        PushError::Registry(PullError::Image(e))
    }
}

impl PushError {
    /// A stable, documented, snake_case code for this error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Registry(e) => e.code(),
            Self::InvalidTarget { .. } => "invalid_image_reference",
            Self::PushFailed { .. } => "push_failed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable_snake_case() {
        let errors = [
            PullError::AuthRequired {
                registry: "r".into(),
            },
            PullError::NotFound {
                reference: "x".into(),
            },
            PullError::Image(ImageError::ImageInUse { id: "x".into() }),
            PullError::InvalidConfig { reason: "x".into() },
        ];
        let codes: Vec<&str> = errors.iter().map(PullError::code).collect();
        assert_eq!(
            codes,
            [
                "registry_auth",
                "image_not_found",
                "image_in_use",
                "invalid_registry_config"
            ]
        );
    }
}
