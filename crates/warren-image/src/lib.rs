//! warren-image: the content-addressed image store on local disk.
//!
//! An image is an ordered list of unpacked layers (lowest first), optional
//! read-only host binds, and an [`ImageConfig`]. Images come from a
//! directory ([`ImageStore::import_dir`]), a tar or tar.gz stream
//! ([`ImageStore::import_tar`]), or the host itself (the built-in `host`
//! image, [`ImageStore::host_image`]). The format is meant to take OCI
//! layers later (registry pulls, docker-save/OCI-layout import, whiteouts
//! and GC are later work).
//!
//! # On-disk layout
//!
//! ```text
//! <root>/                      0700; nothing below is reachable by other host users
//!   lock                       flock: shared for imports and reads, exclusive for remove
//!   blobs/sha256/<hex>         raw blobs: each layer stream as imported (tar or tar.gz);
//!                              later also OCI manifests and configs
//!   layers/<diff>/fs/          the unpacked tree of the layer whose uncompressed tar has
//!                              sha256 <diff> (the OCI diff_id)
//!   layers/<diff>/layer.json   {schema_version, diff_id, size, blob: {digest, media_type, size}}
//!   images/<id>.json           image record {schema_version, layers: [diff_id], binds, config};
//!                              its exact bytes hash to <id>
//!   refs/<name>                "sha256:<id>\n"; <name> is "name:tag" with '/' and ':'
//!                              percent-encoded ("%2f", "%3a")
//!   tmp/                       private work dirs of running operations
//! ```
//!
//! # Invariants
//!
//! - Content addressing: a layer directory is named by the digest of its
//!   uncompressed tar and an image record by the digest of its bytes, so
//!   identical content is stored once (a second import reuses the layer).
//! - A layer is unpacked exactly once, into `tmp/work-*/layer/`, synced,
//!   and then renamed to `layers/<diff>/` with `layer.json` already inside.
//!   A crash leaves only a `tmp/` entry, never a partial layer; `tmp/` is
//!   emptied by [`ImageStore::open`] when no other process holds the lock.
//! - Records and refs are replaced atomically (temp file, fsync, rename,
//!   fsync of the directory).
//! - Layer unpacking treats archives as hostile: it runs as host root, so
//!   it works only through directory file descriptors opened with
//!   `O_NOFOLLOW` and refuses absolute paths, `..`, writing through
//!   symlinks, hard links leaving the layer, and device nodes (see the
//!   `unpack` module for the exact rules). Numeric owners are kept
//!   unshifted; the runtime maps them with idmapped mounts.
//! - Unpacked layers may hold setuid-root files and file capabilities;
//!   they are safe only because the store root is `0700` and layers are
//!   only ever used as sandbox lower dirs. Never loosen the root's mode.
//!
//! # What this crate must not do
//!
//! It contains no `unsafe` (it uses `nix` and `std`), mounts nothing, and
//! never follows a symlink found inside a layer or a source tree. It does
//! not yet protect images in use by sandboxes from [`ImageStore::remove`],
//! does not garbage-collect layers orphaned by a crash between unpack and
//! record write, and does not convert `.wh.*` whiteout files (a single
//! layer has nothing to white out; overlay char 0/0 whiteouts are skipped).
//! Only `user.*` and `security.capability` xattrs are preserved.

mod archive;
mod digest;
mod error;
mod fsutil;
mod host;
mod image;
mod ingest;
mod manage;
mod name;
pub mod oci;
mod pack;
mod reference;
mod store;
mod unpack;

#[cfg(test)]
mod tests;

pub use archive::ANNOTATION_REF_NAME;
pub use error::ImageError;
pub use host::HOST_PATH_ENV;
pub use image::{HostBind, Image, ImageConfig};
pub use ingest::{BlobDownload, BlobLock, LayerOutcome, StoreLease};
pub use manage::{GcReport, ImageInspect, LayerInspect};
pub use name::{ImageName, DEFAULT_TAG, HOST_IMAGE_NAME, MAX_NAME_LEN};
pub use reference::{Reference, Target, DEFAULT_REGISTRY};
pub use store::{ImageStore, StoreLimits, MAX_STACKED_LAYERS, MIN_ID_PREFIX_LEN};
pub use unpack::{OPAQUE_MARKER, OVERLAY_OPAQUE_XATTR, WHITEOUT_PREFIX};
