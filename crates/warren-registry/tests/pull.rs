//! Pulls from a real registry (Debian's docker-registry on 127.0.0.1),
//! with images built here and pushed with skopeo.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tar::EntryType;
use warren_image::{ImageStore, StoreLimits};
use warren_registry::{Credentials, PullEvent, PullOptions, Puller, RegistryConfig, RegistryEntry};
use warren_testkit::registry::{
    busybox_tar, noise, Compress, LayoutBuilder, Proxy, Registry, TarBuilder, TestConfig,
};

struct Env {
    registry: Registry,
    tmp: tempfile::TempDir,
    store: Arc<ImageStore>,
}

impl Env {
    fn new(test: &str) -> Option<Self> {
        if !warren_testkit::registry::require_tools(test) || !warren_testkit::require_root(test) {
            return None;
        }
        Some(Self::with_registry(
            Registry::start().expect("start registry"),
        ))
    }

    fn with_registry(registry: Registry) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(ImageStore::open(tmp.path().join("store")).expect("open store"));
        Self {
            registry,
            tmp,
            store,
        }
    }

    fn config(&self) -> RegistryConfig {
        insecure(&self.registry.host(), None)
    }

    fn puller(&self) -> Puller {
        Puller::new(self.store.clone(), self.config()).expect("puller")
    }

    fn layout(&self, name: &str) -> LayoutBuilder {
        LayoutBuilder::new(&self.tmp.path().join("layouts").join(name)).expect("layout")
    }

    fn reference(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.registry.host())
    }

    /// Pushes a single-platform image of `layers` as `repo:tag`.
    fn push(
        &self,
        repo_tag: &str,
        layers: &[(Vec<u8>, Compress)],
        config: &TestConfig,
    ) -> Vec<String> {
        let mut layout = self.layout(&repo_tag.replace([':', '/'], "_"));
        let built: Vec<_> = layers
            .iter()
            .map(|(tar, c)| layout.layer(tar, *c).expect("layer"))
            .collect();
        layout.image("t", &built, config).expect("image");
        self.registry
            .push(layout.dir(), "t", repo_tag)
            .expect("skopeo push");
        built.into_iter().map(|l| l.digest).collect()
    }

    fn store_dir(&self, rel: &str) -> PathBuf {
        self.store.root().join(rel)
    }

    fn count(&self, rel: &str) -> usize {
        fs::read_dir(self.store_dir(rel))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

fn insecure(host: &str, auth: Option<Credentials>) -> RegistryConfig {
    let mut config = RegistryConfig::default();
    config.registries.insert(
        host.to_owned(),
        RegistryEntry {
            insecure: true,
            auth,
        },
    );
    config
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn layer_file(image: &warren_image::Image, layer: usize, rel: &str) -> PathBuf {
    image.layers[layer].join(rel)
}

#[test]
fn pull_small_image_keeps_config_files_and_compressions() {
    let Some(env) = Env::new("pull_small_image_keeps_config_files_and_compressions") else {
        return;
    };
    let config = TestConfig {
        env: vec!["PATH=/bin".into(), "GREETING=hi".into()],
        workdir: Some("/srv".into()),
        user: Some("1000:1000".into()),
        cmd: Some(vec!["sh".into(), "-c".into(), "echo $GREETING".into()]),
        entrypoint: None,
    };
    let plain = TarBuilder::new()
        .dir("srv", 0o755)
        .file_owned("srv/owned", 0o640, 1000, b"mine")
        .finish();
    let zstd = TarBuilder::new()
        .file("etc/zstd-layer", 0o600, b"z")
        .finish();
    env.push(
        "test/bb:1",
        &[
            (busybox_tar().unwrap(), Compress::Gzip),
            (plain, Compress::None),
            (zstd, Compress::Zstd),
        ],
        &config,
    );
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let image = rt()
        .block_on(env.puller().pull(&env.reference("test/bb:1"), move |e| {
            sink.lock().unwrap().push(e)
        }))
        .expect("pull");
    assert_eq!(image.layers.len(), 3);
    assert_eq!(image.config.env, ["PATH=/bin", "GREETING=hi"]);
    assert_eq!(image.config.workdir.as_deref(), Some("/srv"));
    assert_eq!(image.config.user.as_deref(), Some("1000:1000"));
    assert_eq!(image.config.cmd.as_ref().unwrap()[2], "echo $GREETING");
    assert_eq!(image.names, [env.reference("test/bb:1")]);
    let busybox = fs::read(layer_file(&image, 0, "bin/busybox")).unwrap();
    assert_eq!(busybox, fs::read("/bin/busybox").unwrap());
    let sh = fs::symlink_metadata(layer_file(&image, 0, "bin/sh")).unwrap();
    assert!(sh.file_type().is_symlink());
    let owned = fs::metadata(layer_file(&image, 1, "srv/owned")).unwrap();
    assert_eq!((owned.uid(), owned.mode() & 0o7777), (1000, 0o640));
    assert_eq!(
        fs::read(layer_file(&image, 2, "etc/zstd-layer")).unwrap(),
        b"z"
    );

    // The normalized name resolves; inspect knows the manifest digest.
    let resolved = env.store.resolve(&env.reference("test/bb:1")).unwrap();
    assert_eq!(resolved.id, image.id);
    let inspect = env.store.inspect(&image.id).unwrap();
    let events = events.lock().unwrap();
    let Some(PullEvent::Resolved {
        manifest_digest,
        layers,
        ..
    }) = events.first().cloned()
    else {
        panic!("first event must be resolved: {events:?}");
    };
    assert_eq!(
        inspect.manifest_digest.as_deref(),
        Some(manifest_digest.as_str())
    );
    assert_eq!(layers.len(), 3);
    assert_eq!(inspect.layers.len(), 3);
    assert_eq!(
        inspect.layers[2].media_type.as_deref(),
        Some("application/vnd.oci.image.layer.v1.tar+zstd")
    );
    assert!(matches!(events.last(), Some(PullEvent::Done { id, .. }) if *id == image.id));
    let unpacked = events
        .iter()
        .filter(|e| matches!(e, PullEvent::LayerUnpacked { .. }))
        .count();
    assert_eq!(unpacked, 3);
    for e in events.iter() {
        serde_json::to_string(e).unwrap();
    }
    drop(events);

    // A second pull fetches no layer again.
    let again = Arc::new(Mutex::new(Vec::new()));
    let sink = again.clone();
    rt().block_on(env.puller().pull(&env.reference("test/bb:1"), move |e| {
        sink.lock().unwrap().push(e)
    }))
    .unwrap();
    assert!(!again
        .lock()
        .unwrap()
        .iter()
        .any(|e| matches!(e, PullEvent::LayerVerified { .. })));

    // Without `insecure`, plain HTTP is never used.
    let strict = Puller::new(env.store.clone(), RegistryConfig::default()).unwrap();
    let err = rt()
        .block_on(strict.pull(&env.reference("test/bb:1"), |_| {}))
        .unwrap_err();
    assert_eq!(err.code(), "registry_unreachable", "{err}");
    // Missing tags and repositories are image_not_found.
    let err = rt()
        .block_on(env.puller().pull(&env.reference("test/bb:nope"), |_| {}))
        .unwrap_err();
    assert_eq!(err.code(), "image_not_found", "{err}");
}

#[test]
fn multi_arch_index_selects_the_host_platform() {
    let Some(env) = Env::new("multi_arch_index_selects_the_host_platform") else {
        return;
    };
    let mut layout = env.layout("multi");
    let host = warren_testkit::registry::host_arch();
    let other = if host == "amd64" { "arm64" } else { "amd64" };
    let mine = layout
        .layer(
            &TarBuilder::new()
                .file("arch", 0o644, host.as_bytes())
                .finish(),
            Compress::Gzip,
        )
        .unwrap();
    let theirs = layout
        .layer(
            &TarBuilder::new()
                .file("arch", 0o644, other.as_bytes())
                .finish(),
            Compress::Gzip,
        )
        .unwrap();
    let d_other = layout
        .manifest(std::slice::from_ref(&theirs), &TestConfig::default(), other)
        .unwrap();
    let d_host = layout
        .manifest(&[mine], &TestConfig::default(), host)
        .unwrap();
    layout
        .index("multi", vec![d_other.clone(), d_host.clone()])
        .unwrap();
    layout.index("foreign", vec![d_other]).unwrap();
    env.registry
        .push(layout.dir(), "multi", "test/multi:1")
        .unwrap();
    env.registry
        .push(layout.dir(), "foreign", "test/multi:foreign")
        .unwrap();

    let image = rt()
        .block_on(env.puller().pull(&env.reference("test/multi:1"), |_| {}))
        .expect("pull index");
    assert_eq!(
        fs::read_to_string(image.layers[0].join("arch")).unwrap(),
        host
    );
    let inspect = env.store.inspect(&image.id).unwrap();
    assert_eq!(
        inspect.manifest_digest.as_deref(),
        d_host["digest"].as_str()
    );

    let err = rt()
        .block_on(
            env.puller()
                .pull(&env.reference("test/multi:foreign"), |_| {}),
        )
        .unwrap_err();
    assert_eq!(err.code(), "no_matching_platform", "{err}");
    // The other platform's layer was never fetched.
    assert_eq!(env.registry.blob_gets(&theirs.digest), 0);
}

/// Mounts an overlay of `lowers` (highest first) read-only at `target`.
struct Overlay(PathBuf);

impl Overlay {
    fn mount(lowers: &[&Path], target: &Path) -> Self {
        fs::create_dir_all(target).unwrap();
        let lowerdir = lowers
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":");
        let status = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!("ro,lowerdir={lowerdir}"))
            .arg(target)
            .status()
            .unwrap();
        assert!(status.success(), "mount overlay");
        Self(target.to_path_buf())
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn whiteouts_opaque_dirs_and_hard_links_across_layers() {
    let Some(env) = Env::new("whiteouts_opaque_dirs_and_hard_links_across_layers") else {
        return;
    };
    let lower = TarBuilder::new()
        .dir("a", 0o755)
        .file("a/keep", 0o644, b"keep")
        .file("a/gone", 0o644, b"gone")
        .dir("d", 0o755)
        .file("d/old", 0o644, b"old")
        .dir("d/sub", 0o755)
        .file("d/sub/deep", 0o644, b"deep")
        .file_owned("data", 0o4750, 1000, b"linked content")
        .file("same-layer", 0o644, b"same")
        .hardlink("same-link", "same-layer")
        .finish();
    let upper = TarBuilder::new()
        .file("a/.wh.gone", 0o644, b"")
        .dir("d", 0o755)
        .file("d/.wh..wh..opq", 0o644, b"")
        .file("d/new", 0o644, b"new")
        .hardlink("link-to-lower", "data")
        .finish();
    env.push(
        "test/wh:1",
        &[(lower, Compress::Gzip), (upper, Compress::Gzip)],
        &TestConfig::default(),
    );
    let image = rt()
        .block_on(env.puller().pull(&env.reference("test/wh:1"), |_| {}))
        .expect("pull");
    let up = &image.layers[1];
    let wh = fs::symlink_metadata(up.join("a/gone")).unwrap();
    assert!(
        wh.file_type().is_char_device() && wh.rdev() == 0,
        "whiteout is char 0/0"
    );
    let opaque = xattr_get(&up.join("d"), "trusted.overlay.opaque");
    assert_eq!(opaque.as_deref(), Some(&b"y"[..]));
    let copied = fs::metadata(up.join("link-to-lower")).unwrap();
    assert_eq!(
        fs::read(up.join("link-to-lower")).unwrap(),
        b"linked content"
    );
    assert_eq!((copied.uid(), copied.mode() & 0o7777), (1000, 0o4750));
    let same = fs::metadata(image.layers[0].join("same-link")).unwrap();
    assert_eq!(same.nlink(), 2, "hard link within a layer stays a link");

    // The real overlay view: deleted, hidden and kept files.
    let mnt = env.tmp.path().join("mnt");
    {
        let _m = Overlay::mount(&[&image.layers[1], &image.layers[0]], &mnt);
        assert!(mnt.join("a/keep").exists());
        assert!(!mnt.join("a/gone").exists());
        assert!(!mnt.join("d/old").exists() && !mnt.join("d/sub").exists());
        assert_eq!(fs::read(mnt.join("d/new")).unwrap(), b"new");
        assert_eq!(
            fs::read(mnt.join("link-to-lower")).unwrap(),
            b"linked content"
        );
    }

    // Flattening (forced by a limit of 1) gives the same view in one tree.
    let flat_store = Arc::new(
        ImageStore::open(env.tmp.path().join("flat"))
            .unwrap()
            .with_max_stacked_layers(1),
    );
    let flat = rt()
        .block_on(
            Puller::new(flat_store.clone(), env.config())
                .unwrap()
                .pull(&env.reference("test/wh:1"), |_| {}),
        )
        .expect("pull flattened");
    assert_eq!(flat.layers.len(), 1);
    let f = &flat.layers[0];
    assert!(f.join("a/keep").exists() && !f.join("a/gone").exists());
    assert!(!f.join("d/old").exists() && !f.join("d/sub").exists());
    assert_eq!(fs::read(f.join("d/new")).unwrap(), b"new");
    assert_eq!(
        fs::read(f.join("link-to-lower")).unwrap(),
        b"linked content"
    );
    assert_eq!(fs::metadata(f.join("link-to-lower")).unwrap().nlink(), 2);
    let inspect = flat_store.inspect(&flat.id).unwrap();
    assert_eq!(inspect.layers.len(), 2);
    assert!(inspect.flattened.is_some());
}

fn xattr_get(path: &Path, name: &str) -> Option<Vec<u8>> {
    xattr::get(path, name).expect("read xattr")
}

#[test]
fn hostile_layers_are_refused_and_touch_nothing_outside() {
    let Some(mut env) = Env::new("hostile_layers_are_refused_and_touch_nothing_outside") else {
        return;
    };
    env.store = Arc::new(
        ImageStore::open(env.tmp.path().join("store2"))
            .unwrap()
            .with_limits(StoreLimits {
                max_layer_bytes: 64 << 20,
                max_file_bytes: 1 << 20,
            }),
    );
    let outside = env.tmp.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let target = outside.display().to_string();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "dotdot",
            TarBuilder::new()
                .raw(EntryType::Regular, "a/../../evil", "", 4, b"evil")
                .finish(),
            "unsafe_layer_entry",
        ),
        (
            "absolute",
            TarBuilder::new()
                .raw(EntryType::Regular, "/tmp/evil-abs", "", 4, b"evil")
                .finish(),
            "unsafe_layer_entry",
        ),
        (
            "symlink-write",
            TarBuilder::new()
                .symlink("escape", &target)
                .raw(EntryType::Regular, "escape/pwned", "", 4, b"evil")
                .finish(),
            "unsafe_layer_entry",
        ),
        (
            "giant",
            TarBuilder::new()
                .raw(EntryType::Regular, "huge", "", 1 << 40, b"tiny")
                .finish(),
            "layer_too_large",
        ),
        (
            "device",
            TarBuilder::new()
                .device("dev/mem", EntryType::Char, 1, 1)
                .finish(),
            "unsafe_layer_entry",
        ),
        (
            "whiteout-dotdot",
            TarBuilder::new()
                .raw(EntryType::Regular, "a/.wh...", "", 0, b"")
                .finish(),
            "unsafe_layer_entry",
        ),
    ];
    for (name, tar, code) in cases {
        env.push(
            &format!("test/hostile:{name}"),
            &[(tar, Compress::Gzip)],
            &TestConfig::default(),
        );
        let err = rt()
            .block_on(
                env.puller()
                    .pull(&env.reference(&format!("test/hostile:{name}")), |_| {}),
            )
            .unwrap_err();
        assert_eq!(err.code(), code, "{name}: {err}");
        assert_eq!(env.count("layers"), 0, "{name}: no layer kept");
        assert_eq!(env.count("images"), 0, "{name}: no image");
    }
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        0,
        "nothing written outside"
    );
    assert!(!Path::new("/tmp/evil-abs").exists());
    assert!(!env.tmp.path().join("evil").exists());
}

#[test]
fn corrupted_blob_is_refused_with_digest_mismatch() {
    let Some(env) = Env::new("corrupted_blob_is_refused_with_digest_mismatch") else {
        return;
    };
    let digests = env.push(
        "test/corrupt:1",
        &[(
            TarBuilder::new()
                .file("f", 0o644, &noise(100_000, 7))
                .finish(),
            Compress::None,
        )],
        &TestConfig::default(),
    );
    let data = env.registry.blob_data_path(&digests[0]);
    let mut bytes = fs::read(&data).unwrap();
    bytes[50_000] ^= 0xff;
    fs::write(&data, &bytes).unwrap();
    let err = rt()
        .block_on(env.puller().pull(&env.reference("test/corrupt:1"), |_| {}))
        .unwrap_err();
    assert_eq!(err.code(), "digest_mismatch", "{err}");
    assert_eq!(env.count("blobs/sha256"), 0, "no blob stored");
    assert_eq!(env.count("layers"), 0);
    assert_eq!(env.count("images"), 0);
    assert_eq!(env.count("tmp"), 0, "the bad partial download is gone");
}

#[test]
fn auth_required_fails_anonymously_and_works_with_credentials() {
    if !warren_testkit::registry::require_tools("auth_required")
        || !warren_testkit::require_root("auth_required")
    {
        return;
    }
    let env = Env::with_registry(Registry::start_with_auth("alice", "s3cret").unwrap());
    env.push(
        "private/app:1",
        &[(
            TarBuilder::new().file("secret", 0o600, b"x").finish(),
            Compress::Gzip,
        )],
        &TestConfig::default(),
    );
    let reference = env.reference("private/app:1");
    let err = rt()
        .block_on(env.puller().pull(&reference, |_| {}))
        .unwrap_err();
    assert_eq!(err.code(), "registry_auth", "{err}");
    assert!(err.to_string().contains("requires authentication"), "{err}");

    let wrong = Credentials::Basic {
        username: "alice".into(),
        password: "wrong".into(),
    };
    let p = Puller::new(
        env.store.clone(),
        insecure(&env.registry.host(), Some(wrong)),
    )
    .unwrap();
    let err = rt().block_on(p.pull(&reference, |_| {})).unwrap_err();
    assert_eq!(err.code(), "registry_auth", "{err}");
    assert!(err.to_string().contains("rejected"), "{err}");

    let right = Credentials::Basic {
        username: "alice".into(),
        password: "s3cret".into(),
    };
    // Per-pull credentials.
    let opts = PullOptions {
        credentials: Some(right.clone()),
    };
    let image = rt()
        .block_on(env.puller().pull_with(&reference, &opts, |_| {}))
        .expect("pull with credentials");
    assert_eq!(fs::read(image.layers[0].join("secret")).unwrap(), b"x");
    // Credentials from the config.
    let p = Puller::new(
        env.store.clone(),
        insecure(&env.registry.host(), Some(right)),
    )
    .unwrap();
    rt().block_on(p.pull(&reference, |_| {}))
        .expect("pull with config credentials");
}

#[test]
fn concurrent_pulls_fetch_each_blob_once() {
    let Some(env) = Env::new("concurrent_pulls_fetch_each_blob_once") else {
        return;
    };
    let digests = env.push(
        "test/shared:1",
        &[
            (
                TarBuilder::new()
                    .file("a", 0o644, &noise(3 << 20, 1))
                    .finish(),
                Compress::Gzip,
            ),
            (
                TarBuilder::new()
                    .file("b", 0o644, &noise(2 << 20, 2))
                    .finish(),
                Compress::None,
            ),
        ],
        &TestConfig::default(),
    );
    // Throttled, so the pulls really overlap.
    let proxy = Proxy::start(env.registry.addr(), 8 << 20).unwrap();
    let config = insecure(&proxy.host(), None);
    let reference = format!("{}/test/shared:1", proxy.host());
    let one = Puller::new(env.store.clone(), config.clone()).unwrap();
    // Another puller over another handle of the same store directory:
    // coalesced by the store's per-blob file lock, like another process.
    let other_store = Arc::new(ImageStore::open(env.store.root()).unwrap());
    let two = Puller::new(other_store, config).unwrap();
    let one_clone = one.clone();
    let (a, b, c) = rt().block_on(async {
        tokio::join!(
            one.pull(&reference, |_| {}),
            one_clone.pull(&reference, |_| {}),
            two.pull(&reference, |_| {})
        )
    });
    let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
    assert_eq!(a.id, b.id);
    assert_eq!(a.id, c.id);
    for digest in &digests {
        assert_eq!(
            env.registry.blob_gets(digest),
            1,
            "blob {digest} fetched once"
        );
    }
}

#[test]
fn gc_keeps_in_use_and_named_images_and_removes_the_rest() {
    let Some(env) = Env::new("gc_keeps_in_use_and_named_images_and_removes_the_rest") else {
        return;
    };
    let shared = (
        TarBuilder::new().file("shared", 0o644, b"s").finish(),
        Compress::Gzip,
    );
    let mk = |n: &str| {
        (
            TarBuilder::new().file(n, 0o644, n.as_bytes()).finish(),
            Compress::Gzip,
        )
    };
    env.push(
        "test/a:1",
        &[shared.clone(), mk("a")],
        &TestConfig::default(),
    );
    env.push(
        "test/b:1",
        &[shared.clone(), mk("b")],
        &TestConfig::default(),
    );
    env.push(
        "test/c:1",
        &[shared.clone(), mk("c")],
        &TestConfig::default(),
    );
    let p = env.puller();
    let rt = rt();
    let a = rt
        .block_on(p.pull(&env.reference("test/a:1"), |_| {}))
        .unwrap();
    let b = rt
        .block_on(p.pull(&env.reference("test/b:1"), |_| {}))
        .unwrap();
    let c = rt
        .block_on(p.pull(&env.reference("test/c:1"), |_| {}))
        .unwrap();
    // b and c lose their names; c is still used by a sandbox.
    let in_use: HashSet<String> = [c.id.clone()].into();
    let err = env
        .store
        .remove_unless_in_use(&env.reference("test/c:1"), &in_use)
        .unwrap_err();
    assert_eq!(err.code(), "image_in_use");
    assert!(
        env.store.resolve(&env.reference("test/c:1")).is_ok(),
        "refusal changed nothing"
    );
    fs::remove_file(ref_path(&env.store, &env.reference("test/b:1"))).unwrap();
    fs::remove_file(ref_path(&env.store, &env.reference("test/c:1"))).unwrap();
    // Leftovers of an interrupted pull.
    fs::write(env.store_dir("tmp").join("partial-stale"), b"junk").unwrap();

    let report = env.store.gc(&in_use).unwrap();
    assert_eq!(report.images_removed, 1, "{report:?}");
    assert_eq!(report.layers_removed, 1, "only b's own layer: {report:?}");
    assert!(
        report.blobs_removed >= 3,
        "b's layer, manifest and config: {report:?}"
    );
    assert_eq!(report.tmp_removed, 1);
    assert!(report.bytes_freed > 0);
    assert!(env.store.resolve(&a.id).is_ok());
    let c2 = env.store.resolve(&c.id).expect("in-use image kept");
    assert!(c2.layers.iter().all(|l| l.exists()));
    assert_eq!(
        env.store.resolve(&b.id).unwrap_err().code(),
        "image_not_found"
    );
    assert!(!b.layers[1].exists() && b.layers[0].exists());
    // Once c is no longer in use, it goes too; a keeps the shared layer.
    let report = env.store.gc(&HashSet::new()).unwrap();
    assert_eq!((report.images_removed, report.layers_removed), (1, 1));
    assert!(a.layers.iter().all(|l| l.exists()));
    // A second gc finds nothing.
    assert_eq!(env.store.gc(&HashSet::new()).unwrap().bytes_freed, 0);
}

fn ref_path(store: &ImageStore, name: &str) -> PathBuf {
    let file = warren_image::ImageName::parse(name)
        .unwrap()
        .to_string()
        .replace('/', "%2f")
        .replace(':', "%3a");
    store.root().join("refs").join(file)
}

#[test]
fn docker_save_and_oci_archives_import() {
    let Some(env) = Env::new("docker_save_and_oci_archives_import") else {
        return;
    };
    let mut layout = env.layout("imp");
    let l1 = layout
        .layer(&busybox_tar().unwrap(), Compress::Gzip)
        .unwrap();
    let l2 = layout
        .layer(
            &TarBuilder::new()
                .file("etc/hello", 0o644, b"hello")
                .finish(),
            Compress::Gzip,
        )
        .unwrap();
    let config = TestConfig {
        env: vec!["A=1".into()],
        workdir: Some("/etc".into()),
        ..TestConfig::default()
    };
    let l2_digest = l2.digest.clone();
    layout.image("v1", &[l1, l2], &config).unwrap();
    let docker_tar = env.tmp.path().join("docker.tar");
    let oci_tar = env.tmp.path().join("oci.tar");
    warren_testkit::registry::run(
        Command::new("skopeo")
            .args(["copy", "--quiet"])
            .arg(format!("oci:{}:v1", layout.dir().display()))
            .arg(format!(
                "docker-archive:{}:saved/app:v1",
                docker_tar.display()
            )),
    )
    .unwrap();
    warren_testkit::registry::run(
        Command::new("skopeo")
            .args(["copy", "--quiet"])
            .arg(format!("oci:{}:v1", layout.dir().display()))
            .arg(format!("oci-archive:{}:v1", oci_tar.display())),
    )
    .unwrap();

    let docker = env
        .store
        .import_archive(&docker_tar, None)
        .expect("docker save import");
    // skopeo records the normalized name in RepoTags; the short one resolves.
    assert_eq!(docker.names, ["docker.io/saved/app:v1"]);
    assert_eq!(env.store.resolve("saved/app:v1").unwrap().id, docker.id);
    assert_eq!(docker.layers.len(), 2);
    assert_eq!(
        fs::read(docker.layers[1].join("etc/hello")).unwrap(),
        b"hello"
    );
    assert_eq!(docker.config.workdir.as_deref(), Some("/etc"));

    let oci = env
        .store
        .import_archive(&oci_tar, Some("mine/app:2"))
        .expect("oci archive import");
    assert_eq!(oci.names, ["mine/app:2"]);
    assert_eq!(oci.config.env, ["A=1"]);
    assert_eq!(oci.layers, docker.layers, "same layers, stored once");
    let dir = env
        .store
        .import_archive(layout.dir(), Some("dir/app"))
        .expect("layout dir import");
    assert_eq!(dir.layers, oci.layers);

    // A corrupted layer blob in a layout is refused.
    let blob = layout
        .dir()
        .join("blobs/sha256")
        .join(l2_digest.trim_start_matches("sha256:"));
    let mut bytes = fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(&blob, bytes).unwrap();
    let fresh = ImageStore::open(env.tmp.path().join("fresh")).unwrap();
    let err = fresh.import_archive(layout.dir(), Some("x")).unwrap_err();
    assert_eq!(err.code(), "digest_mismatch", "{err}");
    let err = fresh
        .import_archive(&env.tmp.path().join("layouts"), Some("x"))
        .unwrap_err();
    assert_eq!(err.code(), "invalid_image_archive", "{err}");
}

const CHILD_ENV: &str = "WARREN_TEST_PULL_CHILD";

/// The child half of `killed_pull_leaves_nothing_and_the_next_pull_works`:
/// pulls slowly until killed.
#[test]
fn killed_pull_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return; // only runs when re-executed by the parent test
    };
    let (store, reference) = spec.split_once('|').expect("store|reference");
    let host = reference.split('/').next().unwrap();
    let store = Arc::new(ImageStore::open(store).unwrap());
    let p = Puller::new(store, insecure(host, None)).unwrap();
    let _ = rt().block_on(p.pull(reference, |_| {}));
}

#[test]
fn killed_pull_leaves_nothing_and_the_next_pull_works() {
    let Some(env) = Env::new("killed_pull_leaves_nothing_and_the_next_pull_works") else {
        return;
    };
    let content = noise(6 << 20, 3);
    env.push(
        "test/big:1",
        &[
            (
                TarBuilder::new().file("small", 0o644, b"s").finish(),
                Compress::Gzip,
            ),
            (
                TarBuilder::new().file("big", 0o644, &content).finish(),
                Compress::None,
            ),
        ],
        &TestConfig::default(),
    );
    let proxy = Proxy::start(env.registry.addr(), 1 << 20).unwrap();
    let slow_ref = format!("{}/test/big:1", proxy.host());
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["killed_pull_child", "--exact", "--nocapture"])
        .env(
            CHILD_ENV,
            format!("{}|{slow_ref}", env.store.root().display()),
        )
        .spawn()
        .unwrap();
    let tmp = env.store_dir("tmp");
    let partial_big = || {
        fs::read_dir(&tmp)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("partial-"))
            .any(|e| e.metadata().map(|m| m.len() > (1 << 20)).unwrap_or(false))
    };
    let started = warren_testkit::wait_until(Duration::from_secs(30), partial_big);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert!(started, "child never got halfway");
    assert!(!status.success());

    // Nothing usable: no image, and no half layer.
    let reference = env.reference("test/big:1");
    assert_eq!(
        env.store.resolve(&reference).unwrap_err().code(),
        "image_not_found"
    );
    assert_eq!(
        env.store.resolve(&slow_ref).unwrap_err().code(),
        "image_not_found"
    );
    for layer in fs::read_dir(env.store_dir("layers")).unwrap().flatten() {
        assert!(
            layer.path().join("layer.json").exists(),
            "only complete layers"
        );
    }
    // The next pull (in a new process's store handle) resumes and works.
    let store = Arc::new(ImageStore::open(env.store.root()).unwrap());
    let image = rt()
        .block_on(
            Puller::new(store, env.config())
                .unwrap()
                .pull(&reference, |_| {}),
        )
        .expect("pull after kill");
    assert_eq!(fs::read(image.layers[1].join("big")).unwrap(), content);
    let resumed = env
        .registry
        .log()
        .lines()
        .any(|l| l.contains("\"GET ") && l.contains(" 206 "));
    assert!(
        resumed,
        "the partial download was resumed with a Range request"
    );
}
