//! warren-registry: pulls OCI and Docker images from distribution
//! registries into the `warren-image` store, and pushes images from it
//! ([`Pusher`]).
//!
//! Dependencies point one way: this crate uses `warren-image` (its OCI
//! types, verified blob downloads, layer unpacking and image commit);
//! `warren-image` knows nothing about HTTP. The node and the server use
//! [`Puller`] and [`Pusher`] (a push reads the store only through
//! `ImageStore::oci_image`); the CLI shows [`PullEvent`]s and
//! [`PushEvent`]s.
//!
//! # Invariants
//!
//! - Nothing unverified is ever visible in the store: a blob is streamed
//!   into `tmp/partial-<hex>`, hashed as written, and renamed into
//!   `blobs/` only when size and digest match; a layer, unpacked from the
//!   same stream as it arrives, is renamed into `layers/` only when the
//!   blob and its uncompressed tar (the config's diff id) are verified and
//!   durable; the image record and name appear last.
//! - Plain HTTP is used only for registries marked `insecure` in the
//!   [`RegistryConfig`]; a token realm on plain HTTP is refused otherwise.
//! - Credentials are never logged ([`Credentials`]' `Debug` redacts them;
//!   the `Authorization` headers are marked sensitive).
//! - A pull holds the store lease (shared store lock) from start to
//!   commit, so `gc` and `remove` never run under it.
//!
//! # What this crate must not do
//!
//! Contain `unsafe`, write to the store other than through `ImageStore`'s
//! API, or follow a redirect or token realm to plain HTTP for a registry
//! not marked insecure.

#![forbid(unsafe_code)]

mod body;
mod client;
mod config;
mod error;
mod pull;
mod push;

pub use client::{parse_challenge, Challenge, CONNECT_TIMEOUT, READ_TIMEOUT};
pub use config::{Credentials, RegistryConfig, RegistryEntry};
pub use error::{PullError, PushError};
pub use pull::{
    LayerSummary, PullEvent, PullOptions, Puller, CONCURRENT_DOWNLOADS, PROGRESS_INTERVAL,
};
pub use push::{
    PushEvent, PushOptions, PushSummary, Pusher, BLOB_PUT_MIN_RATE, CONCURRENT_UPLOADS,
    REQUEST_TIMEOUT,
};
