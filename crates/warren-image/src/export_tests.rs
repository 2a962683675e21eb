//! Export tests: hermetic, each in its own tempdir. Round trips go
//! through a second, fresh store. Ownership and whiteout checks need root
//! (overlay whiteouts are device nodes, opaque dirs `trusted.*` xattrs);
//! without it those tests skip.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use flate2::write::GzEncoder;
use tar::{EntryType, Header};

use crate::digest::sha256_hex;
use crate::oci::MEDIA_TYPE_DOCKER_MANIFEST;
use crate::{ImageConfig, ImageStore, ANNOTATION_LOCAL_SOURCE, ANNOTATION_REF_NAME};

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn store(tmp: &tempfile::TempDir, name: &str) -> ImageStore {
    let host = tmp.path().join("host");
    fs::create_dir_all(host.join("usr/bin")).unwrap();
    ImageStore::open(tmp.path().join(name))
        .unwrap()
        .with_host_root(&host)
}

fn tar_of(entries: &[(&str, EntryType, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, kind, data) in entries {
        let mut header = Header::new_gnu();
        header.set_entry_type(*kind);
        header.set_mode(if *kind == EntryType::Directory {
            0o755
        } else {
            0o644
        });
        header.set_size(data.len() as u64);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1_700_000_000);
        builder.append_data(&mut header, path, *data).unwrap();
    }
    builder.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// The members of a layout tar: path → bytes (regular files only).
fn members(tar: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut archive = tar::Archive::new(tar);
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.header().entry_type() != EntryType::Regular {
            continue;
        }
        let path = entry.path().unwrap().display().to_string();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        out.insert(path, bytes);
    }
    out
}

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap()
}

fn blob<'a>(members: &'a BTreeMap<String, Vec<u8>>, digest: &str) -> &'a [u8] {
    let hex = digest.strip_prefix("sha256:").unwrap();
    &members[&format!("blobs/sha256/{hex}")]
}

/// Exports `reference`, checking that the summary's size is what was
/// written; returns the tar.
fn export(store: &ImageStore, reference: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let summary = store.export_oci(reference, &mut out).unwrap();
    assert_eq!(summary.bytes, out.len() as u64, "layout_size is exact");
    out
}

/// Imports an exported tar into `store` (through a file, as the API does).
fn import(store: &ImageStore, tar: &[u8], dir: &Path, name: Option<&str>) -> crate::Image {
    let path = dir.join(format!("import-{}.tar", sha256_hex(tar)));
    fs::write(&path, tar).unwrap();
    store.import_archive(&path, name).unwrap()
}

/// Writes an OCI layout with a gzip layer and a plain one, a Docker
/// manifest and a config with every field; returns its manifest digest.
fn docker_style_layout(dir: &Path) -> String {
    fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let put = |bytes: &[u8]| {
        let hex = sha256_hex(bytes);
        fs::write(dir.join("blobs/sha256").join(&hex), bytes).unwrap();
        format!("sha256:{hex}")
    };
    let lower = tar_of(&[
        ("etc", EntryType::Directory, b""),
        ("etc/hostname", EntryType::Regular, b"lower\n"),
        ("gone", EntryType::Regular, b"x"),
    ]);
    let upper = tar_of(&[
        (".wh.gone", EntryType::Regular, b""),
        ("etc/motd", EntryType::Regular, b"hello\n"),
    ]);
    let lower_gz = gzip(&lower);
    let config = serde_json::to_vec(&serde_json::json!({
        "created": "2024-01-02T03:04:05Z",
        "architecture": crate::oci::host_platform().architecture,
        "os": "linux",
        "config": {"Env": ["A=1", "PATH=/bin"], "Cmd": ["sh"], "Entrypoint": ["/bin/env"],
                   "WorkingDir": "/etc", "User": "1000:1000"},
        "rootfs": {"type": "layers", "diff_ids": [
            format!("sha256:{}", sha256_hex(&lower)), format!("sha256:{}", sha256_hex(&upper))]},
        "history": [{"created_by": "test"}],
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_DOCKER_MANIFEST,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                   "digest": put(&config), "size": config.len()},
        "layers": [
            {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
             "digest": put(&lower_gz), "size": lower_gz.len()},
            {"mediaType": "application/vnd.docker.image.rootfs.diff.tar",
             "digest": put(&upper), "size": upper.len()},
        ],
    }))
    .unwrap();
    let digest = put(&manifest);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": MEDIA_TYPE_DOCKER_MANIFEST, "digest": digest,
                       "size": manifest.len(),
                       "annotations": {ANNOTATION_REF_NAME: "registry.test/app:v1"}}],
    });
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    digest
}

#[test]
fn directory_image_round_trips_with_the_same_id_and_config() {
    let tmp = tempfile::tempdir().unwrap();
    let a = store(&tmp, "a");
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("app/bin")).unwrap();
    fs::write(src.join("app/bin/run"), b"#!/bin/sh\necho hi\n").unwrap();
    fs::write(src.join("README"), b"readme").unwrap();
    std::os::unix::fs::symlink("app/bin/run", src.join("run")).unwrap();
    let config = ImageConfig {
        env: vec!["PATH=/app/bin".into(), "MODE=test".into()],
        workdir: Some("/app".into()),
        entrypoint: Some(vec!["/app/bin/run".into()]),
        cmd: Some(vec!["--flag".into()]),
        user: Some("1000".into()),
    };
    let image = a
        .import_dir_with_config(&src, "local/app:v2", config.clone())
        .unwrap();

    let tar = export(&a, "local/app:v2");
    assert_eq!(tar, export(&a, &image.id), "exports are deterministic");
    let m = members(&tar);
    assert_eq!(json(&m["oci-layout"])["imageLayoutVersion"], "1.0.0");
    let index = json(&m["index.json"]);
    let desc = &index["manifests"][0];
    assert_eq!(desc["annotations"][ANNOTATION_REF_NAME], "local/app:v2");
    let manifest_bytes = blob(&m, desc["digest"].as_str().unwrap());
    assert_eq!(desc["size"], manifest_bytes.len());
    let manifest = json(manifest_bytes);
    assert_eq!(manifest["annotations"][ANNOTATION_LOCAL_SOURCE], "local");
    let config_json = json(blob(&m, manifest["config"]["digest"].as_str().unwrap()));
    assert_eq!(config_json["config"]["Env"][1], "MODE=test");
    assert_eq!(config_json["config"]["WorkingDir"], "/app");
    assert_eq!(config_json["config"]["User"], "1000");
    let inspect = a.inspect(&image.id).unwrap();
    assert_eq!(
        config_json["rootfs"]["diff_ids"][0],
        inspect.layers[0].diff_id.as_str()
    );
    // The layer blob is the stored one and hashes to its descriptor.
    let layer = &manifest["layers"][0];
    let layer_bytes = blob(&m, layer["digest"].as_str().unwrap());
    assert_eq!(
        format!("sha256:{}", sha256_hex(layer_bytes)),
        layer["digest"].as_str().unwrap()
    );

    let b = store(&tmp, "b");
    let back = import(&b, &tar, tmp.path(), None);
    assert_eq!(back.id, image.id, "same image id in a fresh store");
    assert_eq!(back.names, ["local/app:v2"]);
    assert_eq!(back.config, config);
    assert_eq!(
        b.inspect(&back.id).unwrap().layers[0].diff_id,
        inspect.layers[0].diff_id
    );
    let run = back.layers[0].join("app/bin/run");
    assert_eq!(fs::read(run).unwrap(), b"#!/bin/sh\necho hi\n");
    // A second export from the new store is the same archive.
    assert_eq!(export(&b, "local/app:v2"), tar);
}

#[test]
fn pulled_style_image_keeps_its_manifest_digest() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let manifest_digest = docker_style_layout(&layout);
    let a = store(&tmp, "a");
    let image = a.import_archive(&layout, None).unwrap();
    assert_eq!(image.names, ["registry.test/app:v1"]);

    let tar = export(&a, "registry.test/app:v1");
    let m = members(&tar);
    let index = json(&m["index.json"]);
    assert_eq!(index["manifests"][0]["digest"], manifest_digest.as_str());
    assert_eq!(
        index["manifests"][0]["mediaType"], MEDIA_TYPE_DOCKER_MANIFEST,
        "the original manifest's own media type"
    );
    // Original bytes, byte for byte; every blob it names is in the archive.
    let original = fs::read(
        layout
            .join("blobs/sha256")
            .join(manifest_digest.strip_prefix("sha256:").unwrap()),
    )
    .unwrap();
    assert_eq!(blob(&m, &manifest_digest), &original[..]);
    let manifest = json(&original);
    for layer in manifest["layers"].as_array().unwrap() {
        let bytes = blob(&m, layer["digest"].as_str().unwrap());
        assert_eq!(bytes.len() as u64, layer["size"].as_u64().unwrap());
    }

    let b = store(&tmp, "b");
    let back = import(&b, &tar, tmp.path(), None);
    assert_eq!(back.id, image.id);
    assert_eq!(back.config, image.config);
    assert_eq!(back.config.user.as_deref(), Some("1000:1000"));
    let (ia, ib) = (a.inspect(&image.id).unwrap(), b.inspect(&back.id).unwrap());
    assert_eq!(
        ib.manifest_digest.as_deref(),
        Some(manifest_digest.as_str())
    );
    assert_eq!(
        ia.layers.iter().map(|l| &l.diff_id).collect::<Vec<_>>(),
        ib.layers.iter().map(|l| &l.diff_id).collect::<Vec<_>>()
    );
    // Renamed on import; the name in the archive is only a default.
    let renamed = import(&b, &tar, tmp.path(), Some("other:tag"));
    assert_eq!(renamed.id, image.id);
}

#[test]
fn a_layer_without_its_blob_is_archived_from_its_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let a = store(&tmp, "a");
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("d/f"), b"data").unwrap();
    fs::write(src.join("top"), b"top").unwrap();
    let image = a.import_dir(&src, "tree:v1").unwrap();
    let inspect = a.inspect("tree:v1").unwrap();
    let blob_digest = inspect.layers[0].digest.clone().unwrap();
    fs::remove_file(a.blob_file(&blob_digest).unwrap()).unwrap();

    let oci = a.oci_image("tree:v1").unwrap();
    assert!(oci.layers[0].generated);
    assert!(!oci.original_manifest);
    // A directory import's tree archives to the same tar, so to the same
    // diff id (and here, the same blob).
    assert_eq!(oci.layers[0].diff_id, inspect.layers[0].diff_id);
    assert_eq!(oci.layers[0].descriptor.digest, blob_digest);
    drop(oci);
    let tar = export(&a, "tree:v1");
    let b = store(&tmp, "b");
    assert_eq!(import(&b, &tar, tmp.path(), None).id, image.id);
}

#[test]
fn whiteouts_and_opaque_dirs_are_exported_as_oci_entries() {
    if !is_root() {
        eprintln!("SKIP whiteouts_and_opaque_dirs_are_exported_as_oci_entries: needs root (overlay whiteouts)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let a = store(&tmp, "a");
    let layer = tar_of(&[
        ("d", EntryType::Directory, b""),
        ("d/.wh..wh..opq", EntryType::Regular, b""),
        ("d/new", EntryType::Regular, b"new"),
        (".wh.removed", EntryType::Regular, b""),
        ("kept", EntryType::Regular, b"k"),
    ]);
    a.import_tar(&layer[..], "wh:v1").unwrap();
    let inspect = a.inspect("wh:v1").unwrap();
    // The unpacked tree holds overlay whiteouts.
    let tree = a.resolve("wh:v1").unwrap().layers[0].clone();
    assert!(fs::symlink_metadata(tree.join("removed"))
        .unwrap()
        .file_type()
        .is_char_device());
    fs::remove_file(
        a.blob_file(inspect.layers[0].digest.as_ref().unwrap())
            .unwrap(),
    )
    .unwrap();

    let tar = export(&a, "wh:v1");
    let m = members(&tar);
    let index = json(&m["index.json"]);
    let manifest = json(blob(&m, index["manifests"][0]["digest"].as_str().unwrap()));
    let layer_tar = blob(&m, manifest["layers"][0]["digest"].as_str().unwrap());
    let mut paths = Vec::new();
    for entry in tar::Archive::new(layer_tar).entries().unwrap() {
        let entry = entry.unwrap();
        assert_ne!(
            entry.header().entry_type(),
            EntryType::Char,
            "no device nodes"
        );
        paths.push(entry.path().unwrap().display().to_string());
    }
    // Siblings sort by their on-disk name (`removed`).
    assert_eq!(
        paths,
        ["d", "d/.wh..wh..opq", "d/new", "kept", ".wh.removed"]
    );
    let config = json(blob(&m, manifest["config"]["digest"].as_str().unwrap()));
    assert_eq!(
        config["rootfs"]["diff_ids"][0].as_str().unwrap(),
        format!("sha256:{}", sha256_hex(layer_tar)),
        "the config lists the archived tar's digest"
    );

    let b = store(&tmp, "b");
    let back = import(&b, &tar, tmp.path(), None);
    let tree = &back.layers[0];
    assert!(fs::symlink_metadata(tree.join("removed"))
        .unwrap()
        .file_type()
        .is_char_device());
    assert_eq!(
        xattr::get(tree.join("d"), crate::OVERLAY_OPAQUE_XATTR).unwrap(),
        Some(b"y".to_vec())
    );
    assert_eq!(fs::read(tree.join("d/new")).unwrap(), b"new");
}

#[test]
fn flattened_images_export_their_original_layers() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    docker_style_layout(&layout);
    let a = store(&tmp, "a").with_max_stacked_layers(1);
    let image = a.import_archive(&layout, None).unwrap();
    assert!(a.inspect(&image.id).unwrap().flattened.is_some());
    let oci = a.oci_image(&image.id).unwrap();
    assert_eq!(oci.layers.len(), 2);
    assert!(oci.original_manifest);
    drop(oci);
    let tar = export(&a, &image.id);
    let b = store(&tmp, "b").with_max_stacked_layers(1);
    let back = import(&b, &tar, tmp.path(), None);
    assert_eq!(back.id, image.id, "flattened again, same record");
    let c = store(&tmp, "c");
    let stacked = import(&c, &tar, tmp.path(), None);
    assert_eq!(stacked.layers.len(), 2, "stacked in a store that allows it");
    assert_eq!(
        c.inspect(&stacked.id).unwrap().manifest_digest,
        a.inspect(&image.id).unwrap().manifest_digest
    );
}

#[test]
fn the_host_image_is_not_exportable() {
    let tmp = tempfile::tempdir().unwrap();
    let a = store(&tmp, "a");
    let host = a.host_image().unwrap();
    for reference in ["host", "host:latest", host.id.as_str()] {
        let err = a.export_oci(reference, io::sink()).unwrap_err();
        assert_eq!(err.code(), "image_not_exportable", "{reference}");
    }
    let err = a.export_oci("missing:tag", io::sink()).unwrap_err();
    assert_eq!(err.code(), "image_not_found");
}

#[test]
fn a_failing_writer_is_an_export_write_error() {
    struct Broken(usize);
    impl Write for Broken {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.0 == 0 {
                return Err(io::Error::new(io::ErrorKind::BrokenPipe, "gone"));
            }
            let n = buf.len().min(self.0);
            self.0 -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let a = store(&tmp, "a");
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("big"), vec![7u8; 100_000]).unwrap();
    a.import_dir(&src, "big:v1").unwrap();
    let err = a.export_oci("big:v1", Broken(5000)).unwrap_err();
    assert_eq!(err.code(), "export_write_failed");
    // The export's work dir and lease are gone: gc runs and finds nothing
    // left behind in tmp/.
    let report = a.gc(&Default::default()).unwrap();
    assert_eq!(report.tmp_removed, 0);
}

#[test]
fn a_filesystem_snapshot_round_trips_with_its_whiteouts() {
    if !is_root() {
        eprintln!("SKIP a_filesystem_snapshot_round_trips_with_its_whiteouts: needs root (overlay whiteouts)");
        return;
    }
    use std::os::fd::AsFd;
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    docker_style_layout(&layout);
    let a = store(&tmp, "a");
    let parent = a.import_archive(&layout, None).unwrap();
    // An overlay upper dir: a new file, a deleted one, an opaque dir.
    let upper = tmp.path().join("upper");
    fs::create_dir_all(upper.join("etc")).unwrap();
    fs::write(upper.join("etc/new"), b"snapshot").unwrap();
    nix::sys::stat::mknod(
        &upper.join("etc/hostname"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        0,
    )
    .unwrap();
    fs::create_dir(upper.join("opaque")).unwrap();
    xattr::set(upper.join("opaque"), crate::OVERLAY_OPAQUE_XATTR, b"y").unwrap();
    let dir = fs::File::open(&upper).unwrap();
    let snap = a
        .commit_upper(
            dir.as_fd(),
            &parent,
            crate::IdShift::IDENTITY,
            &crate::CommitOptions {
                name: Some("snap:v1".into()),
                config: None,
                hold: false,
            },
        )
        .unwrap();

    let tar = export(&a, "snap:v1");
    let m = members(&tar);
    let index = json(&m["index.json"]);
    let manifest = json(blob(&m, index["manifests"][0]["digest"].as_str().unwrap()));
    assert_eq!(manifest["annotations"][ANNOTATION_LOCAL_SOURCE], "local");
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 3);
    let top = blob(&m, manifest["layers"][2]["digest"].as_str().unwrap());
    let mut paths = Vec::new();
    for entry in tar::Archive::new(top).entries().unwrap() {
        paths.push(entry.unwrap().path().unwrap().display().to_string());
    }
    for want in ["etc/.wh.hostname", "opaque/.wh..wh..opq", "etc/new"] {
        assert!(paths.iter().any(|p| p == want), "{want} not in {paths:?}");
    }

    let b = store(&tmp, "b");
    let back = import(&b, &tar, tmp.path(), None);
    assert_eq!(back.id, snap.image.id, "the snapshot's id in a fresh store");
    assert_eq!(back.config, parent.config);
    let top = back.layers.last().unwrap();
    assert!(fs::symlink_metadata(top.join("etc/hostname"))
        .unwrap()
        .file_type()
        .is_char_device());
    assert_eq!(fs::read(top.join("etc/new")).unwrap(), b"snapshot");

    // A snapshot of a sandbox on the host image keeps its host binds: it
    // cannot be exported either.
    let host = a.host_image().unwrap();
    let on_host = a
        .commit_upper(
            dir.as_fd(),
            &host,
            crate::IdShift::IDENTITY,
            &crate::CommitOptions::default(),
        )
        .unwrap();
    let err = a.export_oci(&on_host.image.id, io::sink()).unwrap_err();
    assert_eq!(err.code(), "image_not_exportable");
}
