//! Image pins: the node's face of the store's holds
//! ([`warren_image::ImageHold`]): images an in-flight operation will use
//! next, kept by image removal and GC like the images of live sandboxes.
//! Image builds pin every image they stand on until they have finished.

use crate::{Node, NodeError};

/// A pin on one image: removal and GC keep the image while it lives.
pub type ImagePin = warren_image::ImageHold;

impl Node {
    /// Pins image `reference` (a name or an id) so that removal and GC
    /// keep it while the pin lives. Fails with the store's
    /// `image_not_found` when it is gone. Blocking (it waits for a running
    /// GC).
    pub fn pin_image(&self, reference: &str) -> Result<ImagePin, NodeError> {
        self.images
            .hold(reference)
            .map_err(|source| NodeError::Image {
                reference: reference.to_string(),
                source,
            })
    }

    /// Ids of the images pinned now.
    pub fn pinned_images(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.images.held_ids().into_iter().collect();
        ids.sort();
        ids
    }
}
