//! warren-image: the content-addressed image store on local disk.
//!
//! An image is an ordered list of unpacked layers (lowest first), optional
//! read-only host binds, and an [`ImageConfig`]. Images come from a
//! directory ([`ImageStore::import_dir`]), a tar or tar.gz stream
//! ([`ImageStore::import_tar`]), a `docker save` archive or OCI image
//! layout ([`ImageStore::import_archive`]), a registry pull (the
//! `warren-registry` crate drives [`ImageStore::begin_blob`],
//! [`ImageStore::unpack_layer`] and [`ImageStore::commit_oci`]), or the
//! host itself (the built-in `host` image, [`ImageStore::host_image`]), or
//! a running sandbox (filesystem and directory snapshots:
//! [`ImageStore::commit_upper`], [`ImageStore::commit_directory`], one new
//! layer written as a tar blob and an unpacked tree in one pass; see the
//! `commit` module).
//! Management: [`ImageStore::inspect`], [`ImageStore::remove_unless_in_use`]
//! and [`ImageStore::gc`]. Images leave the store as OCI parts
//! ([`ImageStore::oci_image`], for registry pushes) or an OCI layout tar
//! ([`ImageStore::export_oci`]); see the `export` module for where the
//! parts come from. See `docs/images.md` for the user's view.
//!
//! # On-disk layout
//!
//! ```text
//! <root>/                      0700; nothing below is reachable by other host users
//!   lock                       flock: shared for pulls, imports and reads, exclusive for
//!                              remove and gc
//!   locks/blob-<hex>           flock: one process at a time downloads a blob
//!   locks/layer-<hex>          flock: one process at a time unpacks (or flattens) a layer
//!   blobs/sha256/<hex>         verified blobs: layer blobs as pulled or imported, OCI
//!                              manifests and configs; a committed snapshot layer's
//!                              uncompressed tar (named by its diff id)
//!   layers/<diff>/fs/          the unpacked tree of the layer whose uncompressed tar has
//!                              sha256 <diff> (the OCI diff_id); overlayfs whiteouts inside
//!   layers/<diff>/layer.json   {schema_version, diff_id, size, blob: {digest, media_type, size}}
//!   layers/<key>/              a flattened layer: key = sha256 of its diff id list;
//!                              layer.json has flattened_from instead of blob
//!   images/<id>.json           image record {schema_version, layers: [diff_id], binds, config,
//!                              source?: {manifest_digest, config_digest, created},
//!                              flattened?}; its exact bytes hash to <id>
//!   refs/<name>                "sha256:<id>\n"; <name> is "name:tag" (or "name@sha256:..")
//!                              with '/', ':' and '@' percent-encoded
//!   tmp/partial-<hex>          a blob download in progress or interrupted (resumed later)
//!   tmp/work-*                 private work dirs of running operations
//! ```
//!
//! # Invariants
//!
//! - Content addressing: a layer directory is named by the digest of its
//!   uncompressed tar and an image record by the digest of its bytes, so
//!   identical content is stored once (a second import or pull reuses it).
//! - Nothing unverified becomes visible: a downloaded blob is renamed into
//!   `blobs/` only when its size and sha256 match its descriptor; a layer
//!   is unpacked into `tmp/work-*/layer/`, synced, and renamed to
//!   `layers/<diff>/` (with `layer.json` inside) only when its uncompressed
//!   tar hashes to the expected diff id; the image record and ref come
//!   last. A crash leaves only `tmp/` entries. `tmp/work-*` is emptied by
//!   [`ImageStore::open`] when no other process holds the lock; partial
//!   downloads are kept for resuming until [`ImageStore::gc`].
//! - Records and refs are replaced atomically (temp file, fsync, rename,
//!   fsync of the directory).
//! - Layer unpacking treats archives as hostile: it runs as host root, so
//!   it works only through directory file descriptors opened with
//!   `O_NOFOLLOW` and refuses absolute paths, `..`, writing through
//!   symlinks, hard links leaving the layer, and device nodes (see the
//!   `unpack` module for the exact rules). Sizes are bounded
//!   ([`StoreLimits`]): a file's header size claim and the uncompressed
//!   stream. Numeric owners are kept unshifted; the runtime maps them with
//!   idmapped mounts.
//! - OCI whiteouts are converted for overlayfs: `.wh.NAME` becomes a char
//!   0/0 device `NAME`, `.wh..wh..opq` the `trusted.overlay.opaque=y`
//!   xattr on its directory. A hard link to a file that only a lower layer
//!   has is a copy of that file (read through `O_NOFOLLOW` descriptors).
//! - An image with more than [`MAX_STACKED_LAYERS`] layers is flattened
//!   once into a cached layer, and [`Image::layers`] is that one layer.
//! - `gc` and `remove` hold the store lock exclusively, so they never run
//!   under a pull or import; they never delete an image whose id is in the
//!   caller's in-use set, nor a layer or blob a remaining image uses.
//! - Unpacked layers may hold setuid-root files and file capabilities;
//!   they are safe only because the store root is `0700` and layers are
//!   only ever used as sandbox lower dirs. Never loosen the root's mode.
//!
//! # What this crate must not do
//!
//! It contains no `unsafe` (it uses `nix` and `std`), mounts nothing, does
//! no network I/O (that is `warren-registry`), and never follows a symlink
//! found inside a layer or a source tree. Only `user.*` and
//! `security.capability` xattrs are taken from archives (`trusted.*` ones
//! are dropped; only the store itself sets `trusted.overlay.opaque`).

mod archive;
mod build_cache;
mod commit;
mod digest;
mod error;
mod export;
mod fsutil;
mod hold;
mod host;
mod image;
mod ingest;
mod manage;
mod name;
pub mod oci;
mod pack;
mod reference;
mod store;
mod stream;
mod unpack;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod export_tests;

pub use archive::ANNOTATION_REF_NAME;
pub use commit::{CommitOptions, CommitOutcome, CommitStats, IdShift, MAX_DEPTH, NOBODY_ID};
pub use error::ImageError;
pub use export::{ExportSummary, OciImage, OciLayer, ANNOTATION_LOCAL_SOURCE};
pub use hold::ImageHold;
pub use host::HOST_PATH_ENV;
pub use image::{HostBind, Image, ImageConfig};
pub use ingest::{BlobDownload, BlobLock, LayerOutcome, StoreLease};
pub use manage::{GcReport, ImageInspect, LayerInspect};
pub use name::{ImageName, DEFAULT_TAG, HOST_IMAGE_NAME, MAX_NAME_LEN};
pub use reference::{Reference, Target, DEFAULT_REGISTRY};
pub use store::{ImageStore, StoreLimits, MAX_STACKED_LAYERS, MIN_ID_PREFIX_LEN};
pub use stream::StreamedLayer;
pub use unpack::{OPAQUE_MARKER, OVERLAY_OPAQUE_XATTR, WHITEOUT_PREFIX};
