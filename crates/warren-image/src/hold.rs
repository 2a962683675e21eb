//! Holds: images an in-flight operation will use next, kept by GC and
//! removal like the images of live sandboxes.
//!
//! An image build runs its steps one after another, each from the image
//! the previous step produced. Those intermediate images are unnamed, and
//! between two steps no sandbox uses them, so a GC there would remove the
//! image the next step starts from. A hold closes that gap. It is taken
//! either by the operation that writes the image, before it releases the
//! store lock ([`crate::CommitOptions::hold`],
//! [`ImageStore::derive_config_held`]), or on an existing image under the
//! store lock ([`ImageStore::hold`]). GC and removal read the holds after
//! taking the store lock exclusively, so a hold is either in place before
//! they look or its image did not exist yet.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use nix::fcntl::FlockArg;

use crate::digest::parse_sha256_digest;
use crate::error::ImageError;
use crate::store::ImageStore;

/// Held image ids, each with its number of holds.
pub(crate) type Holds = Arc<Mutex<HashMap<String, usize>>>;

/// A hold on one image: GC and removal keep the image while it lives.
#[derive(Debug)]
#[must_use = "the image is held only while the hold lives"]
pub struct ImageHold {
    holds: Holds,
    image_id: String,
}

impl ImageHold {
    fn new(holds: &Holds, image_id: &str) -> Self {
        *holds
            .lock()
            .expect("holds lock poisoned")
            .entry(image_id.to_string())
            .or_default() += 1;
        ImageHold {
            holds: holds.clone(),
            image_id: image_id.to_string(),
        }
    }

    /// The held image's id (`sha256:<hex>`).
    pub fn image_id(&self) -> &str {
        &self.image_id
    }
}

impl Clone for ImageHold {
    fn clone(&self) -> Self {
        ImageHold::new(&self.holds, &self.image_id)
    }
}

impl Drop for ImageHold {
    fn drop(&mut self) {
        let mut holds = self.holds.lock().expect("holds lock poisoned");
        if let Some(n) = holds.get_mut(&self.image_id) {
            *n -= 1;
            if *n == 0 {
                holds.remove(&self.image_id);
            }
        }
    }
}

impl ImageStore {
    /// Holds the image `reference` (a name or an id) resolves to, so that
    /// GC and removal keep it while the hold lives. `ImageNotFound` when it
    /// is gone (a GC may have removed an unnamed image a moment ago).
    pub fn hold(&self, reference: &str) -> Result<ImageHold, ImageError> {
        let image = self.resolve(reference)?;
        let _lock = self.lock(FlockArg::LockShared)?;
        let hex = parse_sha256_digest(&image.id).expect("ids are sha256 digests");
        // Still there, now that no GC can run.
        self.read_record(hex)?;
        Ok(self.hold_locked(&image.id))
    }

    /// A hold on `image_id`; the caller holds the store lock and has just
    /// written or read the image's record.
    pub(crate) fn hold_locked(&self, image_id: &str) -> ImageHold {
        ImageHold::new(&self.holds, image_id)
    }

    /// Ids of the images held now.
    pub fn held_ids(&self) -> HashSet<String> {
        self.holds
            .lock()
            .expect("holds lock poisoned")
            .keys()
            .cloned()
            .collect()
    }
}
