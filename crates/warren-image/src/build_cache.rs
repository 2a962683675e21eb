//! What image builds need from the store: a durable step cache, images
//! that differ from their parent only in config, and tagging an existing
//! image.
//!
//! # The build cache
//!
//! `build-cache/<key>` holds `"sha256:<image id>\n"`, where `<key>` is the
//! 64-hex-digit cache key the builder computed for a step (its parent
//! image, the step, and the content it copies). Entries are written
//! atomically like refs.
//!
//! Entries do **not** keep their images alive: intermediate build images
//! are unnamed, so [`ImageStore::gc`] removes them like any other unnamed
//! image. A later lookup then finds the image gone and treats the entry as
//! a miss (and deletes it), so GC never makes a build use a broken image;
//! it only makes the next build of those steps run them again. The final
//! image of a build is named, so it and its layers survive GC.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;

use nix::fcntl::FlockArg;

use crate::digest::{is_sha256_hex, parse_sha256_digest, SHA256_PREFIX};
use crate::error::ImageError;
use crate::fsutil::atomic_write;
use crate::image::{Image, ImageConfig, ImageRecord, IMAGE_RECORD_VERSION};
use crate::name::ImageName;
use crate::store::{remove_file_if_exists, write_err, ImageStore, REFS_DIR, TMP_DIR};

/// Directory of the build cache under the store root.
pub const BUILD_CACHE_DIR: &str = "build-cache";

impl ImageStore {
    /// The image a build-cache entry points at, when the entry exists and
    /// the image is still complete (record and every layer on disk). A
    /// stale entry (its image was removed or collected) is deleted and is
    /// a miss. `key` must be 64 lowercase hex digits.
    pub fn build_cache_get(&self, key: &str) -> Result<Option<Image>, ImageError> {
        check_key(key)?;
        let path = self.root().join(BUILD_CACHE_DIR).join(key);
        let content = match fs::read_to_string(&path) {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(ImageError::ReadStore { path, source }),
        };
        let Some(hex) = parse_sha256_digest(content.trim()).filter(|h| is_sha256_hex(h)) else {
            tracing::warn!(key, "corrupt build-cache entry; treating it as a miss");
            remove_file_if_exists(&path)?;
            return Ok(None);
        };
        let _lock = self.lock(FlockArg::LockShared)?;
        let refs = self.read_refs()?;
        match self.load_image(hex, &refs) {
            Ok(image) => Ok(Some(image)),
            Err(ImageError::NotFound { .. } | ImageError::MissingLayer { .. }) => {
                tracing::debug!(key, id = %hex, "build-cache entry's image is gone; a miss");
                remove_file_if_exists(&path)?;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Records that the step with cache key `key` produced `image_id`
    /// (`sha256:<hex>`).
    pub fn build_cache_put(&self, key: &str, image_id: &str) -> Result<(), ImageError> {
        check_key(key)?;
        let hex = parse_sha256_digest(image_id)
            .filter(|h| is_sha256_hex(h))
            .ok_or_else(|| ImageError::InvalidReference {
                reference: image_id.to_string(),
                reason: "not a sha256 image id",
            })?;
        let dir = self.root().join(BUILD_CACHE_DIR);
        fs::create_dir_all(&dir).map_err(|e| write_err(&dir, e))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| write_err(&dir, e))?;
        let _lock = self.lock(FlockArg::LockShared)?;
        atomic_write(
            &self.root().join(TMP_DIR),
            &dir.join(key),
            format!("{SHA256_PREFIX}{hex}\n").as_bytes(),
        )
    }

    /// A new image with `parent`'s layers and binds and `config` (config
    /// steps of a build: `ENV`, `WORKDIR`, `USER`, `CMD`, `ENTRYPOINT`),
    /// named `name` when given. Nothing is copied; the same config on the
    /// same parent gives the same id.
    pub fn derive_config(
        &self,
        parent: &str,
        config: ImageConfig,
        name: Option<&str>,
    ) -> Result<Image, ImageError> {
        Ok(self.derive_config_held(parent, config, name)?.0)
    }

    /// [`ImageStore::derive_config`], with a hold on the new image taken
    /// before the store lock is released (see [`crate::ImageHold`]).
    pub fn derive_config_held(
        &self,
        parent: &str,
        config: ImageConfig,
        name: Option<&str>,
    ) -> Result<(Image, crate::ImageHold), ImageError> {
        let name = name.map(ImageName::parse_new).transpose()?;
        // The host image is generated on first use.
        let parent_img = self.resolve(parent)?;
        let _lock = self.lock(FlockArg::LockShared)?;
        let hex = parse_sha256_digest(&parent_img.id).expect("ids are sha256 digests");
        let parent_record = self.read_record(hex)?;
        let record = ImageRecord {
            schema_version: IMAGE_RECORD_VERSION,
            layers: parent_record.layers,
            binds: parent_record.binds,
            config,
            source: None,
            flattened: None,
        };
        let image = self.commit_record(record, name.as_ref())?;
        let hold = self.hold_locked(&image.id);
        tracing::debug!(parent = %parent_img.id, id = %image.id, "derived an image with a new config");
        Ok((image, hold))
    }

    /// Points `name` at the image `reference` resolves to (moving the name
    /// if it pointed elsewhere) and returns the image.
    pub fn tag(&self, reference: &str, name: &str) -> Result<Image, ImageError> {
        let name = ImageName::parse_new(name)?;
        let image = self.resolve(reference)?;
        let _lock = self.lock(FlockArg::LockShared)?;
        let hex = parse_sha256_digest(&image.id).expect("ids are sha256 digests");
        // The record must still be there (a concurrent remove).
        self.read_record(hex)?;
        let ref_path = self.root().join(REFS_DIR).join(name.ref_file_name());
        let content = format!("{SHA256_PREFIX}{hex}\n");
        // An unchanged ref is not rewritten (no fsyncs for a rebuild that
        // changed nothing).
        if fs::read(&ref_path).ok().as_deref() != Some(content.as_bytes()) {
            atomic_write(&self.root().join(TMP_DIR), &ref_path, content.as_bytes())?;
        }
        let refs = self.read_refs()?;
        self.load_image(hex, &refs)
    }
}

fn check_key(key: &str) -> Result<(), ImageError> {
    if is_sha256_hex(key) {
        Ok(())
    } else {
        Err(ImageError::InvalidReference {
            reference: key.to_string(),
            reason: "a build-cache key is 64 lowercase hex digits",
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn store() -> (tempfile::TempDir, ImageStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path().join("images")).unwrap();
        (dir, store)
    }

    fn image(store: &ImageStore, dir: &std::path::Path, name: &str, content: &str) -> Image {
        let src = dir.join(format!("src-{content}"));
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("f"), content).unwrap();
        store.import_dir(&src, name).unwrap()
    }

    const KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn entries_hit_until_their_image_is_collected() {
        let (dir, store) = store();
        assert!(store.build_cache_get(KEY).unwrap().is_none());
        let img = image(&store, dir.path(), "base:1", "a");
        let derived = store
            .derive_config(
                "base:1",
                ImageConfig {
                    env: vec!["A=1".into()],
                    ..Default::default()
                },
                None,
            )
            .unwrap();
        assert_ne!(derived.id, img.id);
        assert_eq!(derived.layers, img.layers);
        assert!(derived.names.is_empty());
        store.build_cache_put(KEY, &derived.id).unwrap();
        let hit = store.build_cache_get(KEY).unwrap().expect("a hit");
        assert_eq!(hit.id, derived.id);
        assert_eq!(hit.config.env, vec!["A=1"]);

        // GC removes the unnamed derived image: the entry becomes a miss
        // and is deleted.
        let report = store.gc(&HashSet::new()).unwrap();
        assert_eq!(report.images_removed, 1);
        assert!(store.build_cache_get(KEY).unwrap().is_none());
        assert!(!store.root().join(BUILD_CACHE_DIR).join(KEY).exists());
        // The named base is intact.
        assert_eq!(store.resolve("base:1").unwrap().id, img.id);
    }

    #[test]
    fn derive_is_deterministic_and_tag_moves_names() {
        let (dir, store) = store();
        let img = image(&store, dir.path(), "base:1", "a");
        let cfg = ImageConfig {
            workdir: Some("/app".into()),
            ..Default::default()
        };
        let a = store.derive_config(&img.id, cfg.clone(), None).unwrap();
        let b = store.derive_config("base:1", cfg, Some("app:v1")).unwrap();
        assert_eq!(a.id, b.id);
        assert_eq!(b.names, vec!["app:v1"]);
        let other = image(&store, dir.path(), "other:1", "b");
        let moved = store.tag(&other.id, "app:v1").unwrap();
        assert_eq!(moved.id, other.id);
        assert_eq!(store.resolve("app:v1").unwrap().id, other.id);
        assert!(store.tag(&other.id, "host").is_err());
        assert!(store.tag("nope:1", "x:1").is_err());
    }

    #[test]
    fn bad_keys_and_entries() {
        let (dir, store) = store();
        assert!(store.build_cache_get("../etc").is_err());
        assert!(store.build_cache_put("ABC", "sha256:00").is_err());
        let img = image(&store, dir.path(), "base:1", "a");
        assert!(store.build_cache_put(KEY, "not-an-id").is_err());
        store.build_cache_put(KEY, &img.id).unwrap();
        fs::write(store.root().join(BUILD_CACHE_DIR).join(KEY), "garbage").unwrap();
        assert!(store.build_cache_get(KEY).unwrap().is_none());
    }
}
