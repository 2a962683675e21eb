//! Image expiry and image mounts recorded in a sandbox's spec.

use super::{memory_store, new_sandbox, workspace, T0};
use crate::ImageMountSpec;

#[tokio::test]
async fn image_expiry_round_trip() {
    let (store, _clock) = memory_store().await;
    store.set_image_expiry("img1", T0 + 5).await.unwrap();
    store.set_image_expiry("img1", T0 + 10).await.unwrap();
    assert_eq!(store.image_expiry("img1").await.unwrap(), Some(T0 + 10));
    assert!(store.expired_images(T0 + 9).await.unwrap().is_empty());
    assert_eq!(
        store.expired_images(T0 + 10).await.unwrap(),
        vec!["img1".to_string()]
    );
    store.clear_image_expiry("img1").await.unwrap();
    assert_eq!(store.image_expiry("img1").await.unwrap(), None);
}

#[tokio::test]
async fn mounts_are_recorded_in_the_spec() {
    let (store, _clock) = memory_store().await;
    let ws = workspace(&store, "w").await;
    let rec = store
        .insert_sandbox(&new_sandbox(&ws.id, None))
        .await
        .unwrap();
    let m = |path: &str, image: &str| ImageMountSpec {
        path: path.into(),
        image: image.into(),
    };
    store.add_mount(&rec.id, &m("/a", "one")).await.unwrap();
    store.add_mount(&rec.id, &m("/b", "two")).await.unwrap();
    store.add_mount(&rec.id, &m("/a", "three")).await.unwrap();
    let got = store.get_sandbox(&ws.id, &rec.id).await.unwrap().unwrap();
    assert_eq!(got.spec.mounts, vec![m("/b", "two"), m("/a", "three")]);
    // The rest of the spec is untouched.
    assert_eq!(got.spec.command, rec.spec.command);
}
