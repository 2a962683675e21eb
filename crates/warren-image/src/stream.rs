//! Streamed layer ingest: a layer blob is stored, hashed, decompressed,
//! hashed again (diff id) and unpacked in one pass while it arrives.
//!
//! Every byte of the blob goes through one [`Tee`]: appended to the
//! resumable partial file and hashed once, then handed to the
//! decompressor. Nothing becomes visible before both the blob digest and
//! the diff id are verified; then one `syncfs` makes the blob and the
//! unpacked tree durable, and they appear by rename (blob first).
//!
//! The layers of one image are ingested concurrently. Only a hard link to
//! a file of a lower layer needs those layers complete; if they are not
//! yet (`lowers_ready` says so), the unpack stops, the blob is still
//! stored verified, and the caller unpacks it again from `blobs/` once
//! the layers below are in ([`StreamedLayer::BlobStored`]).

use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use crate::digest::{HashingReader, SHA256_PREFIX};
use crate::error::ImageError;
use crate::image::{BlobRef, LayerRecord, LAYER_RECORD_VERSION};
use crate::ingest::{digest_hex, BlobDownload, STREAM_READ_BUF_BYTES};
use crate::oci::Compression;
use crate::store::{
    decompress, open_file, sync_fs_of, to_json, too_large, write_err, ImageStore, LAYER_FS_DIR,
    LAYER_RECORD_FILE,
};
use crate::unpack::{unpack, LowersNotReady, LowersReady, UnpackOptions, Whiteouts};

/// What [`ImageStore::ingest_layer_stream`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamedLayer {
    /// The blob is stored and the layer unpacked, both verified.
    Unpacked,
    /// The layer was unpacked meanwhile by someone else; the stream was
    /// not read.
    AlreadyPresent,
    /// The blob is stored verified, but the layer needs layers below it
    /// that are not complete yet: unpack it with
    /// [`ImageStore::unpack_layer`] once they are.
    BlobStored,
}

impl ImageStore {
    /// Stores the layer blob of `download` (begun with
    /// [`ImageStore::begin_blob`], whose already present prefix is read
    /// back first) as `body` delivers the rest, unpacking it in the same
    /// pass and verifying the blob's digest and size and the uncompressed
    /// tar's `diff_id`. The caller holds [`ImageStore::lock_blob`].
    ///
    /// `lowers` are the diff ids of the layers below (lowest first);
    /// `lowers_ready` says whether they are all unpacked (asked only for a
    /// hard link into them). A read error of `body` keeps the bytes
    /// received so far for a resume; a blob mismatch deletes them.
    /// Whatever fails, nothing appears in the store but a verified blob.
    pub fn ingest_layer_stream(
        &self,
        mut download: BlobDownload,
        body: &mut dyn Read,
        diff_id: &str,
        lowers: &[String],
        lowers_ready: Arc<dyn Fn() -> bool + Send + Sync>,
    ) -> Result<StreamedLayer, ImageError> {
        let diff_hex = digest_hex(diff_id)?.to_owned();
        let compression = Compression::from_media_type(download.media_type())?;
        let lowers = lowers
            .iter()
            .map(|d| digest_hex(d).map(|hex| self.layer_dir(hex).join(LAYER_FS_DIR)))
            .collect::<Result<Vec<_>, _>>()?;
        let _layer_lock = self.named_lock(&format!("layer-{diff_hex}"))?;
        if self.layer_is_complete(&diff_hex) {
            tracing::debug!(diff_id = %diff_hex, "layer unpacked concurrently");
            return Ok(StreamedLayer::AlreadyPresent);
        }

        let work = self.work_dir()?;
        let staging = work.path().join("layer");
        let fs_dir = staging.join(LAYER_FS_DIR);
        fs::create_dir(&staging).map_err(|e| write_err(&staging, e))?;
        fs::create_dir(&fs_dir).map_err(|e| write_err(&fs_dir, e))?;
        fs::set_permissions(&fs_dir, fs::Permissions::from_mode(0o755))
            .map_err(|e| write_err(&fs_dir, e))?;
        let prefix = match download.offset() {
            0 => None,
            n => Some(open_file(download.path())?.take(n)),
        };
        let options = UnpackOptions {
            preserve_owners: self.preserve_owners,
            whiteouts: Whiteouts::Overlay,
            lowers: lowers.into_iter().rev().collect(),
            max_file_bytes: self.limits.max_file_bytes,
            lowers_ready: Some(LowersReady(lowers_ready)),
        };
        let mut tee = Tee {
            prefix,
            body,
            download: &mut download,
            write_error: None,
            body_failed: false,
        };
        let unpacked = (|| {
            let buffered = BufReader::with_capacity(STREAM_READ_BUF_BYTES, &mut tee);
            let mut reader = HashingReader::new(
                decompress(buffered, compression)?,
                self.limits.max_layer_bytes,
            );
            let stats = unpack(&mut reader, &fs_dir, &options).map_err(too_large)?;
            let (hex, size) = reader
                .finish()
                .map_err(|source| too_large(ImageError::ReadArchive { source }))?;
            Ok::<_, ImageError>((stats, hex, size))
        })();
        // The rest of the blob (compression trailer, or everything after a
        // failed unpack: the blob's own verdict comes first) still goes
        // through the tee into the file and its hash.
        let drained = io::copy(&mut tee, &mut io::sink());
        let (write_error, body_failed) = (tee.write_error.take(), tee.body_failed);
        if let Some(e) = write_error {
            return Err(e);
        }
        if body_failed {
            download.flush_partial()?;
            return Err(match (drained, unpacked) {
                (Err(source), _) => ImageError::ReadArchive { source },
                (Ok(_), Err(e)) => e,
                (Ok(_), Ok(_)) => unreachable!("a failed body fails the drain or the unpack"),
            });
        }
        if let Err(source) = drained {
            return Err(ImageError::ReadArchive { source });
        }
        download.verify()?;
        let (stats, hex, tar_size) = match unpacked {
            Ok(done) => done,
            Err(e) if LowersNotReady::is(&e) => {
                tracing::debug!(diff_id = %diff_hex, "hard link into a layer still arriving; storing the blob only");
                download.sync_and_place()?;
                return Ok(StreamedLayer::BlobStored);
            }
            Err(e) => {
                download.discard();
                return Err(e);
            }
        };
        if hex != diff_hex {
            download.discard();
            return Err(ImageError::DigestMismatch {
                what: format!("uncompressed layer of blob {}", download.digest()),
                expected: format!("{SHA256_PREFIX}{diff_hex}"),
                actual: format!("{SHA256_PREFIX}{hex}"),
            });
        }
        let layer_dir = self.layer_dir(&diff_hex);
        if layer_dir.exists() {
            // Not produced by this code (layers appear by atomic rename, with
            // layer.json inside); move it out of the way.
            tracing::warn!(path = %layer_dir.display(), "replacing incomplete layer directory");
            fs::rename(&layer_dir, work.path().join("stale-layer"))
                .map_err(|e| write_err(&layer_dir, e))?;
        }
        let record = LayerRecord {
            schema_version: LAYER_RECORD_VERSION,
            diff_id: format!("{SHA256_PREFIX}{diff_hex}"),
            size: tar_size,
            blob: Some(BlobRef {
                digest: download.digest().to_owned(),
                media_type: download.media_type().to_owned(),
                size: download.size(),
            }),
            flattened_from: None,
        };
        let record_path = staging.join(LAYER_RECORD_FILE);
        let bytes = to_json(&record, &record_path)?;
        fs::write(&record_path, bytes).map_err(|e| write_err(&record_path, e))?;
        // One sync for the blob and the whole tree, then blob first, so
        // that a complete layer always has its blob.
        sync_fs_of(&staging)?;
        download.place()?;
        self.rename_layer(&staging, &diff_hex)?;
        tracing::info!(diff_id = %diff_hex, entries = stats.entries, whiteouts = stats.whiteouts, "unpacked layer");
        Ok(StreamedLayer::Unpacked)
    }
}

/// Reads a blob as it arrives: first the partial file's existing prefix
/// (already hashed by [`ImageStore::begin_blob`]), then `body`, whose
/// bytes are appended to the partial file and hashed.
struct Tee<'a> {
    prefix: Option<io::Take<File>>,
    body: &'a mut dyn Read,
    download: &'a mut BlobDownload,
    /// The blob outgrew its declared size (the partial file is gone).
    write_error: Option<ImageError>,
    /// `body` failed: the download broke off.
    body_failed: bool,
}

impl Read for Tee<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(prefix) = &mut self.prefix {
            match prefix.read(buf)? {
                0 => self.prefix = None,
                n => return Ok(n),
            }
        }
        if self.body_failed || self.write_error.is_some() {
            return Err(io::Error::other("the blob stream already failed"));
        }
        let n = match self.body.read(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => {
                self.body_failed = true;
                return Err(e);
            }
        };
        if let Err(e) = self.download.write(&buf[..n]) {
            let shown = io::Error::other(e.to_string());
            self.write_error = Some(e);
            return Err(shown);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;
    use crate::digest::sha256_hex;
    use crate::oci::Descriptor;

    fn tar_of(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        build(&mut builder);
        builder.into_inner().expect("tar")
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, data).expect("append");
    }

    /// A gzip layer: its descriptor, diff id and blob bytes.
    fn layer(tar: &[u8]) -> (Descriptor, String, Vec<u8>) {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(tar).expect("gzip");
        let blob = gz.finish().expect("gzip");
        let desc = Descriptor {
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            digest: format!("sha256:{}", sha256_hex(&blob)),
            size: blob.len() as u64,
            platform: None,
            annotations: None,
        };
        (desc, format!("sha256:{}", sha256_hex(tar)), blob)
    }

    fn always(ready: bool) -> Arc<dyn Fn() -> bool + Send + Sync> {
        Arc::new(move || ready)
    }

    #[test]
    fn resumes_a_prefix_and_defers_links_into_unready_lowers() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = ImageStore::open(tmp.path()).expect("store");
        let content = crate::digest::sha256_hex(b"seed").repeat(4096);
        let (d1, diff1, blob1) = layer(&tar_of(|b| file(b, "a", content.as_bytes())));

        // An earlier attempt left half the blob; the rest arrives now.
        let mut first = store.begin_blob(&d1).expect("begin");
        first.write(&blob1[..blob1.len() / 2]).expect("write");
        first.flush_partial().expect("flush");
        drop(first);
        let resumed = store.begin_blob(&d1).expect("begin again");
        assert_eq!(resumed.offset(), (blob1.len() / 2) as u64);
        let mut rest = &blob1[blob1.len() / 2..];
        let outcome = store
            .ingest_layer_stream(resumed, &mut rest, &diff1, &[], always(true))
            .expect("ingest");
        assert_eq!(outcome, StreamedLayer::Unpacked);
        assert!(store.has_blob(&d1.digest) && store.has_layer(&diff1));

        // A hard link into the layer below, which is "not ready yet": the
        // blob is stored, the layer is left for unpack_layer.
        let (d2, diff2, blob2) = layer(&tar_of(|b| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Link);
            h.set_size(0);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            b.append_link(&mut h, "b", "a").expect("link");
        }));
        let download = store.begin_blob(&d2).expect("begin");
        let outcome = store
            .ingest_layer_stream(
                download,
                &mut &blob2[..],
                &diff2,
                std::slice::from_ref(&diff1),
                always(false),
            )
            .expect("ingest");
        assert_eq!(outcome, StreamedLayer::BlobStored);
        assert!(store.has_blob(&d2.digest) && !store.has_layer(&diff2));
        store
            .unpack_layer(&d2, &diff2, std::slice::from_ref(&diff1))
            .expect("unpack from the blob");
        let dir = store.layer_dir(diff2.strip_prefix(SHA256_PREFIX).expect("hex"));
        assert_eq!(
            fs::read(dir.join(LAYER_FS_DIR).join("b")).expect("copied"),
            content.as_bytes()
        );
    }

    /// A body that breaks off after some bytes.
    struct Broken<'a>(&'a [u8]);

    impl Read for Broken<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                return Err(io::Error::new(io::ErrorKind::ConnectionAborted, "gone"));
            }
            self.0.read(buf)
        }
    }

    #[test]
    fn a_broken_body_keeps_the_partial_and_a_bad_blob_deletes_it() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = ImageStore::open(tmp.path()).expect("store");
        let noise: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let (desc, diff, blob) = layer(&tar_of(|b| file(b, "f", &noise)));
        let download = store.begin_blob(&desc).expect("begin");
        let half = blob.len() / 2;
        store
            .ingest_layer_stream(
                download,
                &mut Broken(&blob[..half]),
                &diff,
                &[],
                always(true),
            )
            .expect_err("broken body");
        assert!(!store.has_layer(&diff) && !store.has_blob(&desc.digest));
        let resumed = store.begin_blob(&desc).expect("begin again");
        assert_eq!(resumed.offset(), half as u64, "what arrived is kept");

        let mut bad = blob[half..].to_vec();
        bad[10] ^= 0xff;
        let err = store
            .ingest_layer_stream(resumed, &mut &bad[..], &diff, &[], always(true))
            .expect_err("corrupt blob");
        assert_eq!(err.code(), "digest_mismatch", "{err}");
        assert_eq!(
            store.begin_blob(&desc).expect("begin").offset(),
            0,
            "partial gone"
        );
        assert!(!store.has_layer(&diff) && !store.has_blob(&desc.digest));
    }
}
