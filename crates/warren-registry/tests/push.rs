//! Pushes to a real registry (Debian's docker-registry on 127.0.0.1), read
//! back by Warren's own puller into fresh stores and by skopeo. Nothing
//! leaves loopback.

use std::collections::HashSet;
use std::fs;
use std::process::Command;
use std::sync::{Arc, Mutex};

use warren_image::{ImageConfig, ImageStore};
use warren_registry::{
    Credentials, PullOptions, Puller, PushEvent, PushOptions, Pusher, RegistryConfig, RegistryEntry,
};
use warren_testkit::registry::{busybox_tar, noise, Compress, LayoutBuilder, Registry, TestConfig};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
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

fn skip(test: &str) -> bool {
    !warren_testkit::registry::require_tools(test) || !warren_testkit::require_root(test)
}

fn new_store(tmp: &tempfile::TempDir, name: &str) -> Arc<ImageStore> {
    Arc::new(ImageStore::open(tmp.path().join(name)).expect("open store"))
}

fn diff_ids(store: &ImageStore, reference: &str) -> Vec<String> {
    store
        .inspect(reference)
        .expect("inspect")
        .layers
        .into_iter()
        .map(|l| l.diff_id)
        .collect()
}

/// Blob uploads (`PUT .../blobs/uploads/...`) in the registry's access log.
fn blob_puts(registry: &Registry) -> usize {
    registry
        .log()
        .lines()
        .filter(|l| l.contains("\"PUT ") && l.contains("/blobs/uploads/"))
        .count()
}

fn push(
    store: &Arc<ImageStore>,
    config: RegistryConfig,
    reference: &str,
    target: &str,
    options: &PushOptions,
) -> Result<(warren_registry::PushSummary, Vec<PushEvent>), warren_registry::PushError> {
    let pusher = Pusher::new(store.clone(), config).expect("pusher");
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let summary = rt().block_on(pusher.push(reference, target, options, move |e| {
        sink.lock().unwrap().push(e)
    }))?;
    let events = events.lock().unwrap().clone();
    Ok((summary, events))
}

#[test]
fn imported_image_pushes_and_pulls_back_with_the_same_id() {
    if skip("imported_image_pushes_and_pulls_back_with_the_same_id") {
        return;
    }
    let registry = Registry::start().expect("registry");
    let tmp = tempfile::tempdir().unwrap();
    let a = new_store(&tmp, "a");
    let config = ImageConfig {
        env: vec!["PATH=/bin".into(), "GREETING=hi".into()],
        workdir: Some("/tmp".into()),
        entrypoint: Some(vec!["/bin/sh".into(), "-c".into()]),
        cmd: Some(vec!["echo hi".into()]),
        user: Some("app".into()),
    };
    let image = a
        .import_tar_with_config(&busybox_tar().unwrap()[..], "local/bb:v1", config.clone())
        .expect("import");
    let target = format!("{}/pushed/bb:v1", registry.host());

    let (summary, events) = push(
        &a,
        insecure(&registry.host(), None),
        "local/bb:v1",
        &target,
        &PushOptions::default(),
    )
    .expect("push");
    assert_eq!(summary.target, target);
    assert_eq!(summary.pushed_blobs, 2, "config and one layer");
    assert_eq!(summary.skipped_blobs, 0);
    assert!(summary.pushed_bytes > 1_000_000, "busybox was uploaded");
    assert!(matches!(events.first(), Some(PushEvent::Resolved { .. })));
    assert!(matches!(events.last(), Some(PushEvent::Done(s)) if *s == summary));
    let pushed: Vec<_> = events
        .iter()
        .filter(|e| matches!(e, PushEvent::BlobPushed { .. }))
        .collect();
    assert_eq!(pushed.len(), 2);
    assert_eq!(blob_puts(&registry), 2);

    // Another store pulls it back: same id (a locally built image keeps
    // no registry provenance), same layers, same config.
    let b = new_store(&tmp, "b");
    let pulled = rt()
        .block_on(
            Puller::new(b.clone(), insecure(&registry.host(), None))
                .unwrap()
                .pull(&target, |_| {}),
        )
        .expect("pull back");
    assert_eq!(pulled.id, image.id);
    assert_eq!(pulled.config, config);
    assert_eq!(diff_ids(&b, &target), diff_ids(&a, "local/bb:v1"));
    assert!(pulled.layers[0].join("bin/busybox").is_file());

    // skopeo reads what was pushed.
    let out = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--raw"])
        .arg(format!("docker://{target}"))
        .output()
        .expect("skopeo inspect");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        warren_testkit::registry::digest_of(&out.stdout),
        summary.manifest_digest
    );
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 1);

    // The second push of the same image uploads nothing.
    let (again, events) = push(
        &a,
        insecure(&registry.host(), None),
        &image.id,
        &target,
        &PushOptions::default(),
    )
    .expect("second push");
    assert_eq!(again.pushed_blobs, 0);
    assert_eq!(again.skipped_blobs, 2);
    assert_eq!(again.pushed_bytes, 0);
    assert_eq!(again.manifest_digest, summary.manifest_digest);
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, PushEvent::BlobExists { .. }))
            .count(),
        2
    );
    assert_eq!(blob_puts(&registry), 2, "no new blob upload");
}

#[test]
fn pulled_image_pushes_with_its_manifest_digest() {
    if skip("pulled_image_pushes_with_its_manifest_digest") {
        return;
    }
    let registry = Registry::start().expect("registry");
    let tmp = tempfile::tempdir().unwrap();
    let mut layout = LayoutBuilder::new(&tmp.path().join("layout")).unwrap();
    let layers = vec![
        layout
            .layer(&busybox_tar().unwrap(), Compress::Gzip)
            .unwrap(),
        layout
            .layer(
                &warren_testkit::registry::TarBuilder::new()
                    .file("data/noise", 0o644, &noise(3 << 20, 7))
                    .finish(),
                Compress::Zstd,
            )
            .unwrap(),
    ];
    let config = TestConfig {
        env: vec!["PATH=/bin".into()],
        cmd: Some(vec!["sh".into()]),
        ..TestConfig::default()
    };
    let source_digest = layout.image("t", &layers, &config).unwrap();
    registry.push(layout.dir(), "t", "src/app:1").unwrap();

    let host = registry.host();
    let a = new_store(&tmp, "a");
    let puller = Puller::new(a.clone(), insecure(&host, None)).unwrap();
    let source = format!("{host}/src/app:1");
    let image = rt().block_on(puller.pull(&source, |_| {})).expect("pull");

    // Pushed under another name: the registry has the blobs (same
    // repository storage), but they are checked per repository.
    let target = format!("{host}/copy/app:2");
    let (summary, _) = push(
        &a,
        insecure(&host, None),
        &source,
        &target,
        &PushOptions::default(),
    )
    .expect("push");
    assert_eq!(
        summary.manifest_digest, source_digest,
        "the original manifest is pushed as it was pulled"
    );
    assert_eq!(summary.pushed_blobs + summary.skipped_blobs, 3);

    let c = new_store(&tmp, "c");
    let back = rt()
        .block_on(
            Puller::new(c.clone(), insecure(&host, None))
                .unwrap()
                .pull(&target, |_| {}),
        )
        .expect("pull copy");
    assert_eq!(
        back.id, image.id,
        "same record: same manifest, config, layers"
    );
    assert_eq!(back.config, image.config);
    assert_eq!(diff_ids(&c, &target), diff_ids(&a, &source));
    assert_eq!(
        fs::read(back.layers[1].join("data/noise")).unwrap(),
        noise(3 << 20, 7)
    );
}

#[test]
fn auth_failures_and_bad_targets_have_stable_codes() {
    if skip("auth_failures_and_bad_targets_have_stable_codes") {
        return;
    }
    let registry = Registry::start_with_auth("alice", "s3cret").expect("registry");
    let host = registry.host();
    let tmp = tempfile::tempdir().unwrap();
    let a = new_store(&tmp, "a");
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("file"), b"private").unwrap();
    let image = a.import_dir(&src, "private/app:1").unwrap();
    let target = format!("{host}/private/app:1");

    let err = push(
        &a,
        insecure(&host, None),
        "private/app:1",
        &target,
        &PushOptions::default(),
    )
    .unwrap_err();
    assert_eq!(err.code(), "registry_auth", "{err}");
    assert!(err.to_string().contains("requires authentication"), "{err}");

    let wrong = PushOptions {
        credentials: Some(Credentials::Basic {
            username: "alice".into(),
            password: "wrong".into(),
        }),
        insecure: false,
    };
    let err = push(&a, insecure(&host, None), "private/app:1", &target, &wrong).unwrap_err();
    assert_eq!(err.code(), "registry_auth", "{err}");
    assert!(err.to_string().contains("rejected"), "{err}");

    // Per-push credentials and plain HTTP, with no config at all.
    let right = Credentials::Basic {
        username: "alice".into(),
        password: "s3cret".into(),
    };
    let options = PushOptions {
        credentials: Some(right.clone()),
        insecure: true,
    };
    let (summary, _) = push(
        &a,
        RegistryConfig::default(),
        "private/app:1",
        &target,
        &options,
    )
    .expect("push with credentials");
    assert_eq!(summary.pushed_blobs, 2);

    let b = new_store(&tmp, "b");
    let opts = PullOptions {
        credentials: Some(right),
    };
    let back = rt()
        .block_on(
            Puller::new(b.clone(), insecure(&host, None))
                .unwrap()
                .pull_with(&target, &opts, |_| {}),
        )
        .expect("pull back with credentials");
    assert_eq!(back.id, image.id);
    assert_eq!(fs::read(back.layers[0].join("file")).unwrap(), b"private");

    // Bad targets and images.
    let anon = insecure(&host, None);
    let none = PushOptions::default();
    let cases: Vec<(String, &str, &str)> = vec![
        (
            format!("{host}/private/app@sha256:{}", "0".repeat(64)),
            "private/app:1",
            "invalid_image_reference",
        ),
        (
            "Bad Target".into(),
            "private/app:1",
            "invalid_image_reference",
        ),
        (target.clone(), "missing/image:1", "image_not_found"),
        (target.clone(), "host", "image_not_exportable"),
    ];
    for (target, reference, code) in cases {
        let err = push(&a, anon.clone(), reference, &target, &none).unwrap_err();
        assert_eq!(err.code(), code, "{target} {reference}: {err}");
    }
    // Nothing listens on this port (bound, then closed): unreachable,
    // quickly (connection refused), not a hang.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead = format!("127.0.0.1:{port}");
    let started = std::time::Instant::now();
    let err = push(
        &a,
        insecure(&dead, None),
        "private/app:1",
        &format!("{dead}/x:1"),
        &none,
    )
    .unwrap_err();
    assert_eq!(err.code(), "registry_unreachable", "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    // HTTPS to a plain-HTTP registry without `insecure` fails, never
    // falls back to plain HTTP.
    let err = push(
        &a,
        RegistryConfig::default(),
        "private/app:1",
        &target,
        &PushOptions {
            credentials: None,
            insecure: false,
        },
    )
    .unwrap_err();
    assert_eq!(err.code(), "registry_unreachable", "{err}");
}

#[test]
fn exported_archive_is_read_by_skopeo() {
    if skip("exported_archive_is_read_by_skopeo") {
        return;
    }
    // The export is an OCI archive other tools take: skopeo copies it to
    // the registry, and Warren pulls it back under the same id.
    let registry = Registry::start().expect("registry");
    let tmp = tempfile::tempdir().unwrap();
    let a = new_store(&tmp, "a");
    let image = a
        .import_tar(&busybox_tar().unwrap()[..], "local/exported:v1")
        .unwrap();
    let archive = tmp.path().join("image.tar");
    let file = fs::File::create(&archive).unwrap();
    let summary = a.export_oci("local/exported:v1", file).expect("export");
    assert_eq!(fs::metadata(&archive).unwrap().len(), summary.bytes);
    let target = format!("{}/via/skopeo:v1", registry.host());
    warren_testkit::registry::run(
        Command::new("skopeo")
            .args([
                "copy",
                "--quiet",
                "--preserve-digests",
                "--dest-tls-verify=false",
            ])
            .arg(format!("oci-archive:{}", archive.display()))
            .arg(format!("docker://{target}")),
    )
    .expect("skopeo copy oci-archive");
    let b = new_store(&tmp, "b");
    let back = rt()
        .block_on(
            Puller::new(b.clone(), insecure(&registry.host(), None))
                .unwrap()
                .pull(&target, |_| {}),
        )
        .expect("pull");
    assert_eq!(back.id, image.id);
    let names: HashSet<_> = back.names.iter().cloned().collect();
    assert!(names.contains(&target), "{names:?}");
}
