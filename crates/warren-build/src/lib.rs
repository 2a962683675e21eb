//! warren-build: image builds. A recipe (a Dockerfile subset, see
//! [`recipe`]) and a build context (a tar, see [`context`]) become an
//! image in the node's store, one step at a time ([`executor`]):
//!
//! - `FROM` resolves (pulling if needed) the base image.
//! - `RUN` creates a sandbox from the current image through the node's
//!   normal create path, runs the command (as the image's user, in its
//!   workdir, with its environment), streams its output, and commits the
//!   sandbox's writable layer as a new image (`Node::snapshot_filesystem`);
//!   the sandbox is destroyed whatever happens.
//! - `COPY` writes files from the context into a sandbox through its file
//!   agent (as root), then commits the same way.
//! - `ENV`, `WORKDIR`, `USER`, `CMD`, `ENTRYPOINT` only derive an image
//!   with the same layers and a new config (no sandbox).
//!
//! Every step is cached under [`cache_key`]: SHA-256 of the parent image
//! id, the step with its variables expanded, and (for `COPY`) the digest
//! of the copied content. The cache lives in the image store
//! (`build-cache/<key>`); entries whose image was collected are misses.
//!
//! Must not: touch the host filesystem with names from the context (the
//! context is read by offset, never unpacked), leave a sandbox behind, or
//! trust the recipe or the context (both are bounded and validated).

#![forbid(unsafe_code)]

pub mod context;
pub mod executor;
pub mod recipe;

use sha2::{Digest, Sha256};

pub use context::BuildContext;
pub use executor::{build, BuildOptions, Built};
pub use recipe::{parse, Recipe};

/// Version of the cache key scheme (bump to invalidate every entry).
const CACHE_KEY_VERSION: &str = "warren-build-cache-v1";

/// The cache key of a step: SHA-256 over the parent image id, the
/// canonical step (variables expanded, JSON-quoted arguments) and the
/// content digest (`COPY` only; empty otherwise), NUL-separated.
pub fn cache_key(parent_id: &str, canonical_step: &str, content_digest: &str) -> String {
    let mut h = Sha256::new();
    for part in [CACHE_KEY_VERSION, parent_id, canonical_step, content_digest] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

/// Everything a build can fail with; [`BuildError::code`] is stable.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The recipe does not parse (`line` 0: the recipe as a whole).
    #[error("recipe line {line}: {reason}")]
    Recipe { line: u32, reason: String },
    /// The context archive is unusable.
    #[error("build context: {reason}")]
    Context { reason: String },
    /// A `COPY` source is missing or leaves the context.
    #[error("COPY: {reason}")]
    Copy { reason: String },
    /// A `RUN` command exited non-zero (or was killed: 128 + signal).
    #[error("RUN exited with code {exit_code}{}", if *.oom_killed { " (out of memory)" } else { "" })]
    StepFailed { exit_code: i32, oom_killed: bool },
    /// A `RUN` command ran longer than the step timeout.
    #[error("RUN took longer than {secs} s and was killed")]
    StepTimeout { secs: u64 },
    /// The node failed (create, exec, file writes, snapshot).
    #[error("node: {0}")]
    Node(#[from] warren_node::NodeError),
    /// The image store failed.
    #[error("image store: {0}")]
    Image(#[from] warren_image::ImageError),
    /// The client went away.
    #[error("the build was cancelled")]
    Cancelled,
    /// A background task failed.
    #[error("internal: {0}")]
    Internal(String),
}

impl BuildError {
    /// Stable code: `invalid_recipe`, `invalid_context`,
    /// `invalid_copy_source`, `build_step_failed`, `build_step_timeout`,
    /// `cancelled`, or the node's / store's own code.
    pub fn code(&self) -> &str {
        match self {
            BuildError::Recipe { .. } => "invalid_recipe",
            BuildError::Context { .. } => "invalid_context",
            BuildError::Copy { .. } => "invalid_copy_source",
            BuildError::StepFailed { .. } => "build_step_failed",
            BuildError::StepTimeout { .. } => "build_step_timeout",
            BuildError::Node(e) => e.code(),
            BuildError::Image(e) => e.code(),
            BuildError::Cancelled => "cancelled",
            BuildError::Internal(_) => "internal",
        }
    }

    /// Whether the message may be shown to the client as is (it says
    /// nothing about the host). Otherwise log it and show the code.
    pub fn is_public(&self) -> bool {
        match self {
            BuildError::Node(e) => {
                matches!(
                    e.code(),
                    "image_not_found"
                        | "invalid_image_reference"
                        | "invalid_user"
                        | "exec_not_found"
                        | "exec_permission_denied"
                        | "workdir_not_found"
                        | "capacity_exhausted"
                        | "no_space"
                        | "registry_auth"
                        | "registry_unreachable"
                ) || matches!(e, warren_node::NodeError::Fs { .. })
            }
            BuildError::Image(e) => {
                matches!(
                    e.code(),
                    "image_not_found" | "invalid_image_name" | "invalid_image_reference"
                )
            }
            BuildError::Internal(_) => false,
            _ => true,
        }
    }
}

impl From<std::io::Error> for BuildError {
    fn from(e: std::io::Error) -> Self {
        BuildError::Node(warren_node::NodeError::Io(e))
    }
}

impl From<warren_runtime::RuntimeError> for BuildError {
    fn from(e: warren_runtime::RuntimeError) -> Self {
        BuildError::Node(warren_node::NodeError::Runtime(e))
    }
}

impl From<tokio::task::JoinError> for BuildError {
    fn from(e: tokio::task::JoinError) -> Self {
        BuildError::Internal(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_separate_their_parts() {
        let a = cache_key("sha256:1", "RUN [\"a\"]", "");
        assert_eq!(a.len(), 64);
        assert_eq!(a, cache_key("sha256:1", "RUN [\"a\"]", ""));
        assert_ne!(a, cache_key("sha256:2", "RUN [\"a\"]", ""));
        assert_ne!(a, cache_key("sha256:1", "RUN [\"b\"]", ""));
        assert_ne!(
            cache_key("sha256:1", "COPY x", "d1"),
            cache_key("sha256:1", "COPY x", "d2")
        );
        // No ambiguity from concatenation.
        assert_ne!(cache_key("a", "bc", ""), cache_key("ab", "c", ""));
    }
}
