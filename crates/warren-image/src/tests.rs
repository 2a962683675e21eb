//! Store-level tests: hermetic, each in its own tempdir. They expect to run
//! as root (ownership checks); without root they skip those checks.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use flate2::write::GzEncoder;
use nix::fcntl::{Flock, FlockArg};
use tar::{EntryType, Header};

use crate::digest::sha256_hex;
use crate::{ImageConfig, ImageError, ImageStore};

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

struct Fixture {
    tmp: tempfile::TempDir,
    store: ImageStore,
}

impl Fixture {
    fn new() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let host = tmp.path().join("host");
        make_fake_host(&host);
        let store = ImageStore::open(tmp.path().join("store"))
            .expect("open store")
            .with_host_root(&host);
        Self { tmp, store }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    fn count(&self, rel: &str) -> usize {
        fs::read_dir(self.store.root().join(rel))
            .expect("read store dir")
            .count()
    }

    /// The store holds no image, layer, blob, ref or temporary entry.
    fn assert_store_empty(&self) {
        for dir in ["layers", "images", "refs", "blobs/sha256", "tmp"] {
            assert_eq!(self.count(dir), 0, "{dir} is not empty");
        }
    }
}

fn make_fake_host(host: &Path) {
    for dir in [
        "usr/bin",
        "usr/lib",
        "lib64",
        "etc/ld.so.conf.d",
        "etc/alternatives",
        "etc/ssl/certs",
        "etc/ssh",
    ] {
        fs::create_dir_all(host.join(dir)).unwrap();
    }
    symlink("usr/bin", host.join("bin")).unwrap();
    symlink("usr/lib", host.join("lib")).unwrap();
    fs::write(host.join("usr/lib/os-release"), "ID=fake\n").unwrap();
    symlink("../usr/lib/os-release", host.join("etc/os-release")).unwrap();
    fs::write(host.join("etc/ld.so.cache"), b"cache").unwrap();
    fs::write(
        host.join("etc/ld.so.conf"),
        b"include /etc/ld.so.conf.d/*.conf\n",
    )
    .unwrap();
    fs::write(host.join("etc/ld.so.conf.d/x86_64.conf"), b"/usr/lib\n").unwrap();
    symlink("/usr/bin/vi", host.join("etc/alternatives/editor")).unwrap();
    fs::write(host.join("etc/ssl/certs/ca-certificates.crt"), b"CERTS").unwrap();
    fs::write(host.join("etc/shadow"), b"root:secret").unwrap();
    fs::set_permissions(host.join("etc/shadow"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::write(host.join("etc/ssh/ssh_host_ed25519_key"), b"KEY").unwrap();
    fs::write(
        host.join("etc/passwd"),
        b"host-user:x:1000:1000::/home/u:/bin/bash\n",
    )
    .unwrap();
}

fn set_mtime(path: &Path, secs: u64) {
    File::open(path)
        .unwrap()
        .set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
        .unwrap();
}

fn regular_header(size: u64, mode: u32) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(EntryType::Regular);
    header.set_size(size);
    header.set_mode(mode);
    header.set_mtime(1_600_000_000);
    header.set_uid(0);
    header.set_gid(0);
    header
}

/// A header with raw, unvalidated path and link name (the `tar` crate's
/// setters refuse `..` and absolute paths, which is what attackers send).
fn raw_header(kind: EntryType, path: &str, link: &str, size: u64) -> Header {
    let mut header = Header::new_old();
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
    header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
    header.set_cksum();
    header
}

fn device_header(kind: EntryType, path: &str, major: u32, minor: u32) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(kind);
    header.set_path(path).unwrap();
    header.set_size(0);
    header.set_mode(0o666);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_device_major(major).unwrap();
    header.set_device_minor(minor).unwrap();
    header.set_cksum();
    header
}

fn finish(builder: tar::Builder<Vec<u8>>) -> Vec<u8> {
    builder.into_inner().unwrap()
}

fn simple_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut header = regular_header(data.len() as u64, 0o644);
        builder.append_data(&mut header, path, *data).unwrap();
    }
    finish(builder)
}

#[test]
fn import_dir_preserves_files_dirs_links_modes_owners_and_times() {
    let fx = Fixture::new();
    let src = fx.path("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("d/f"), b"setuid binary").unwrap();
    fs::set_permissions(src.join("d/f"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::hard_link(src.join("d/f"), src.join("h")).unwrap();
    fs::write(src.join("g"), b"owned").unwrap();
    fs::set_permissions(src.join("g"), fs::Permissions::from_mode(0o640)).unwrap();
    symlink("d/f", src.join("l")).unwrap();
    symlink("/etc/passwd", src.join("abs-link")).unwrap();
    fs::create_dir(src.join("sticky")).unwrap();
    fs::set_permissions(src.join("sticky"), fs::Permissions::from_mode(0o1777)).unwrap();
    nix::unistd::mkfifo(
        &src.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let xattrs = xattr::set(src.join("g"), "user.warren", b"kept").is_ok();
    if is_root() {
        std::os::unix::fs::chown(src.join("g"), Some(1234), Some(5678)).unwrap();
        std::os::unix::fs::lchown(src.join("l"), Some(42), Some(43)).unwrap();
        std::os::unix::fs::chown(src.join("d"), Some(1000), Some(1000)).unwrap();
        // chown cleared the setuid bit; set it again.
        fs::set_permissions(src.join("d/f"), fs::Permissions::from_mode(0o4755)).unwrap();
    }
    fs::set_permissions(src.join("d"), fs::Permissions::from_mode(0o750)).unwrap();
    set_mtime(&src.join("g"), 1_000_000);
    set_mtime(&src.join("d"), 2_000_000);

    let image = fx.store.import_dir(&src, "app:v1").unwrap();
    assert_eq!(image.names, ["app:v1"]);
    assert_eq!(image.layers.len(), 1);
    assert!(image.id.starts_with("sha256:"));
    assert_eq!(image.config, ImageConfig::default());
    let fs_root = &image.layers[0];
    assert!(fs_root.is_absolute());
    assert!(fs_root.starts_with(fx.store.root().join("layers")));

    let meta = |rel: &str| fs::symlink_metadata(fs_root.join(rel)).unwrap();
    assert_eq!(fs::read(fs_root.join("d/f")).unwrap(), b"setuid binary");
    assert_eq!(meta("d/f").mode() & 0o7777, 0o4755);
    assert_eq!(meta("g").mode() & 0o7777, 0o640);
    assert_eq!(meta("g").mtime(), 1_000_000);
    assert!(meta("d").is_dir());
    assert_eq!(meta("d").mode() & 0o7777, 0o750);
    assert_eq!(meta("d").mtime(), 2_000_000);
    assert_eq!(meta("sticky").mode() & 0o7777, 0o1777);
    assert_eq!(meta("h").ino(), meta("d/f").ino());
    assert_eq!(meta("h").nlink(), 2);
    assert!(meta("fifo").file_type().is_fifo());
    assert_eq!(fs::read_link(fs_root.join("l")).unwrap(), Path::new("d/f"));
    assert_eq!(
        fs::read_link(fs_root.join("abs-link")).unwrap(),
        Path::new("/etc/passwd")
    );
    if is_root() {
        assert_eq!((meta("g").uid(), meta("g").gid()), (1234, 5678));
        assert_eq!((meta("l").uid(), meta("l").gid()), (42, 43));
        assert_eq!((meta("d").uid(), meta("d").gid()), (1000, 1000));
        assert_eq!((meta("d/f").uid(), meta("d/f").gid()), (0, 0));
    } else {
        eprintln!("SKIP ownership checks: not running as root");
    }
    if xattrs {
        assert_eq!(
            xattr::get(fs_root.join("g"), "user.warren").unwrap(),
            Some(b"kept".to_vec())
        );
    } else {
        eprintln!("SKIP xattr checks: filesystem has no user xattrs");
    }

    // The record on disk hashes to the id, and the layer has its metadata.
    let hex = image.id.strip_prefix("sha256:").unwrap();
    let record = fs::read(fx.store.root().join(format!("images/{hex}.json"))).unwrap();
    assert_eq!(sha256_hex(&record), hex);
    let layer_dir = fs_root.parent().unwrap();
    let layer: serde_json::Value =
        serde_json::from_slice(&fs::read(layer_dir.join("layer.json")).unwrap()).unwrap();
    let diff_hex = layer_dir.file_name().unwrap().to_str().unwrap();
    assert_eq!(layer["diff_id"], format!("sha256:{diff_hex}"));
    // An uncompressed import's blob is the layer tar itself.
    let blob = fs::read(fx.store.root().join("blobs/sha256").join(diff_hex)).unwrap();
    assert_eq!(sha256_hex(&blob), diff_hex);
    assert_eq!(fx.count("tmp"), 0);
}

#[test]
fn identical_content_is_stored_once() {
    let fx = Fixture::new();
    let src = fx.path("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("sub/file"), b"same").unwrap();

    let first = fx.store.import_dir(&src, "one").unwrap();
    let second = fx.store.import_dir(&src, "two:tag").unwrap();
    assert_eq!(first.id, second.id);
    assert_eq!(second.names, ["one:latest", "two:tag"]);
    assert_eq!(fx.count("layers"), 1);
    assert_eq!(fx.count("images"), 1);
    assert_eq!(fx.count("blobs/sha256"), 1);

    // Importing the very same tar stream reuses the layer and the image.
    let diff_hex = first.layers[0]
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let blob = fs::read(fx.store.root().join("blobs/sha256").join(&diff_hex)).unwrap();
    let third = fx.store.import_tar(&blob[..], "three").unwrap();
    assert_eq!(third.id, first.id);
    assert_eq!(fx.count("layers"), 1);

    // A different config is a different image over the same layer.
    let config = ImageConfig {
        env: vec!["A=1".into()],
        ..ImageConfig::default()
    };
    let fourth = fx
        .store
        .import_dir_with_config(&src, "four", config.clone())
        .unwrap();
    assert_ne!(fourth.id, first.id);
    assert_eq!(fourth.layers, first.layers);
    assert_eq!(fourth.config, config);
    assert_eq!(fx.count("layers"), 1);
    assert_eq!(fx.count("images"), 2);
}

#[test]
fn gzip_tar_is_detected_and_unpacked() {
    let fx = Fixture::new();
    let tar = simple_tar(&[("etc/motd", b"hello"), ("bin/tool", b"#!/bin/sh\n")]);
    let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).unwrap();
    let gz = gz.finish().unwrap();

    let image = fx.store.import_tar(&gz[..], "gz").unwrap();
    let fs_root = &image.layers[0];
    assert_eq!(fs::read(fs_root.join("etc/motd")).unwrap(), b"hello");
    // Implicit parents are 0755 with a fixed mtime.
    let etc = fs::metadata(fs_root.join("etc")).unwrap();
    assert_eq!(etc.mode() & 0o7777, 0o755);
    assert_eq!(etc.mtime(), 0);
    // The layer is named by the uncompressed digest, the blob by the raw one.
    let layer_dir = fs_root.parent().unwrap();
    assert_eq!(
        layer_dir.file_name().unwrap().to_str().unwrap(),
        sha256_hex(&tar)
    );
    let gz_hex = sha256_hex(&gz);
    assert!(fx.store.root().join("blobs/sha256").join(&gz_hex).is_file());
    let layer: serde_json::Value =
        serde_json::from_slice(&fs::read(layer_dir.join("layer.json")).unwrap()).unwrap();
    assert_eq!(layer["blob"]["digest"], format!("sha256:{gz_hex}"));
    assert_eq!(
        layer["blob"]["media_type"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );

    // The same content uncompressed gives the same image.
    let plain = fx.store.import_tar(&tar[..], "plain").unwrap();
    assert_eq!(plain.id, image.id);
    assert_eq!(fx.count("layers"), 1);
}

#[test]
fn bad_streams_are_rejected_with_stable_codes() {
    let fx = Fixture::new();
    let xz = [0xfd, b'7', b'z', b'X', b'Z', 0, 0, 0];
    let err = fx.store.import_tar(&xz[..], "x").unwrap_err();
    assert_eq!(err.code(), "unsupported_layer_compression");
    let broken_zstd = [0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0];
    let err = fx.store.import_tar(&broken_zstd[..], "z").unwrap_err();
    assert_eq!(err.code(), "invalid_layer_archive");
    let err = fx.store.import_tar(&b""[..], "empty").unwrap_err();
    assert_eq!(err.code(), "invalid_layer_archive");
    let err = fx.store.import_tar(&[7u8; 700][..], "junk").unwrap_err();
    assert_eq!(err.code(), "invalid_layer_archive");
    let mut builder = tar::Builder::new(Vec::new());
    let mut unknown = regular_header(0, 0o644);
    unknown.set_entry_type(EntryType::new(b'Z'));
    builder.append_data(&mut unknown, "u", &b""[..]).unwrap();
    let err = fx
        .store
        .import_tar(&finish(builder)[..], "unknown")
        .unwrap_err();
    assert_eq!(err.code(), "unsupported_layer_entry");
    fx.assert_store_empty();
}

#[test]
fn hostile_tars_are_refused_and_write_nothing_outside() {
    let fx = Fixture::new();
    let outside = fx.path("outside");
    fs::create_dir(&outside).unwrap();
    let outside_str = outside.to_str().unwrap().to_owned();
    let passwd_links = fs::metadata("/etc/passwd").map(|m| m.nlink()).ok();

    let mut cases: Vec<(&str, &str, Vec<u8>)> = Vec::new();
    let data = b"pwned";

    // `../` escaping the layer.
    let mut b = tar::Builder::new(Vec::new());
    b.append(
        &raw_header(EntryType::Regular, "../../../outside/dotdot", "", 5),
        &data[..],
    )
    .unwrap();
    cases.push(("dot-dot path", "'..'", finish(b)));

    // `..` hidden in the middle.
    let mut b = tar::Builder::new(Vec::new());
    b.append(
        &raw_header(EntryType::Regular, "a/../../outside/mid", "", 5),
        &data[..],
    )
    .unwrap();
    cases.push(("inner dot-dot", "'..'", finish(b)));

    // Absolute path pointing at the sentinel directory.
    let mut b = tar::Builder::new(Vec::new());
    let abs = format!("{outside_str}/abs");
    b.append(&raw_header(EntryType::Regular, &abs, "", 5), &data[..])
        .unwrap();
    cases.push(("absolute path", "absolute", finish(b)));

    // Symlink to the outside, then a file through it.
    let mut b = tar::Builder::new(Vec::new());
    b.append(
        &raw_header(EntryType::Symlink, "evil", &outside_str, 0),
        &b""[..],
    )
    .unwrap();
    b.append(&raw_header(EntryType::Regular, "evil/x", "", 5), &data[..])
        .unwrap();
    cases.push(("write through symlink", "symlink", finish(b)));

    // Symlink to the outside, then a directory through it.
    let mut b = tar::Builder::new(Vec::new());
    b.append(
        &raw_header(EntryType::Symlink, "evil", &outside_str, 0),
        &b""[..],
    )
    .unwrap();
    b.append(
        &raw_header(EntryType::Directory, "evil/sub/", "", 0),
        &b""[..],
    )
    .unwrap();
    cases.push(("mkdir through symlink", "symlink", finish(b)));

    // Relative symlink climbing out, then a file below it.
    let mut b = tar::Builder::new(Vec::new());
    b.append(
        &raw_header(EntryType::Symlink, "up", "../../../../outside", 0),
        &b""[..],
    )
    .unwrap();
    b.append(&raw_header(EntryType::Regular, "up/rel", "", 5), &data[..])
        .unwrap();
    cases.push(("write through relative symlink", "symlink", finish(b)));

    // Hard links out of the layer.
    let mut b = tar::Builder::new(Vec::new());
    b.append(
        &raw_header(EntryType::Link, "passwd", "/etc/passwd", 0),
        &b""[..],
    )
    .unwrap();
    cases.push(("absolute hard link", "outside the layer", finish(b)));
    let mut b = tar::Builder::new(Vec::new());
    b.append(
        &raw_header(EntryType::Link, "passwd", "../../../../../etc/passwd", 0),
        &b""[..],
    )
    .unwrap();
    cases.push(("dot-dot hard link", "outside the layer", finish(b)));

    // Hard link through a symlink created by an earlier entry.
    let mut b = tar::Builder::new(Vec::new());
    b.append(&raw_header(EntryType::Symlink, "etc", "/etc", 0), &b""[..])
        .unwrap();
    b.append(
        &raw_header(EntryType::Link, "passwd", "etc/passwd", 0),
        &b""[..],
    )
    .unwrap();
    cases.push(("hard link through symlink", "symlink", finish(b)));

    // Hard link to something that is not in the layer.
    let mut b = tar::Builder::new(Vec::new());
    b.append(&raw_header(EntryType::Link, "x", "missing", 0), &b""[..])
        .unwrap();
    cases.push(("dangling hard link", "not an earlier entry", finish(b)));

    // Device nodes.
    let mut b = tar::Builder::new(Vec::new());
    b.append(&device_header(EntryType::Block, "dev/sda", 8, 0), &b""[..])
        .unwrap();
    cases.push(("block device", "device", finish(b)));
    let mut b = tar::Builder::new(Vec::new());
    b.append(&device_header(EntryType::Char, "dev/mem", 1, 1), &b""[..])
        .unwrap();
    cases.push(("char device", "device", finish(b)));

    for (i, (what, expected, tar)) in cases.iter().enumerate() {
        let err = fx
            .store
            .import_tar(&tar[..], &format!("hostile{i}"))
            .expect_err(what);
        match &err {
            ImageError::UnsafeEntry { reason, .. } => {
                assert!(
                    reason.contains(expected),
                    "{what}: unexpected reason {reason:?}"
                )
            }
            other => panic!("{what}: expected UnsafeEntry, got {other:?}"),
        }
        assert_eq!(err.code(), "unsafe_layer_entry", "{what}");
        assert_eq!(
            fs::read_dir(&outside).unwrap().count(),
            0,
            "{what} wrote outside the store"
        );
        fx.assert_store_empty();
    }
    assert!(!fx.path("dotdot").exists());
    assert_eq!(
        fs::metadata("/etc/passwd").map(|m| m.nlink()).ok(),
        passwd_links
    );
}

#[test]
fn later_entries_replace_earlier_ones_without_following_them() {
    let fx = Fixture::new();
    let outside = fx.path("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("target"), b"original").unwrap();
    let target = outside.join("target");

    let mut b = tar::Builder::new(Vec::new());
    // A symlink to a host file, then a regular file of the same name: the
    // symlink is replaced, the host file untouched.
    b.append(
        &raw_header(EntryType::Symlink, "f", target.to_str().unwrap(), 0),
        &b""[..],
    )
    .unwrap();
    b.append(&raw_header(EntryType::Regular, "f", "", 3), &b"new"[..])
        .unwrap();
    // A directory with content replaced by a file.
    b.append(&raw_header(EntryType::Directory, "d/", "", 0), &b""[..])
        .unwrap();
    b.append(&raw_header(EntryType::Regular, "d/inner", "", 1), &b"i"[..])
        .unwrap();
    b.append(&raw_header(EntryType::Regular, "d", "", 4), &b"file"[..])
        .unwrap();
    // A symlink replaced by a directory, then written into.
    b.append(
        &raw_header(EntryType::Symlink, "s", outside.to_str().unwrap(), 0),
        &b""[..],
    )
    .unwrap();
    b.append(&raw_header(EntryType::Directory, "s/", "", 0), &b""[..])
        .unwrap();
    b.append(&raw_header(EntryType::Regular, "s/x", "", 1), &b"x"[..])
        .unwrap();
    // Overlay whiteouts (char 0/0) are skipped.
    b.append(&device_header(EntryType::Char, "gone", 0, 0), &b""[..])
        .unwrap();
    // A hard link to a symlink links the symlink itself.
    b.append(
        &raw_header(EntryType::Symlink, "ln", "/etc/passwd", 0),
        &b""[..],
    )
    .unwrap();
    b.append(&raw_header(EntryType::Link, "ln2", "ln", 0), &b""[..])
        .unwrap();
    let image = fx.store.import_tar(&finish(b)[..], "replace").unwrap();
    let root = &image.layers[0];

    assert_eq!(fs::read(&target).unwrap(), b"original");
    assert_eq!(fs::read(root.join("f")).unwrap(), b"new");
    assert!(!fs::symlink_metadata(root.join("f")).unwrap().is_symlink());
    assert_eq!(fs::read(root.join("d")).unwrap(), b"file");
    assert!(fs::symlink_metadata(root.join("s")).unwrap().is_dir());
    assert_eq!(fs::read(root.join("s/x")).unwrap(), b"x");
    assert!(!outside.join("x").exists());
    assert!(fs::symlink_metadata(root.join("gone")).is_err());
    let ln2 = fs::symlink_metadata(root.join("ln2")).unwrap();
    assert!(ln2.is_symlink());
    assert_eq!(
        ln2.ino(),
        fs::symlink_metadata(root.join("ln")).unwrap().ino()
    );
}

#[test]
fn pax_long_names_owners_and_read_only_dirs_unpack() {
    let fx = Fixture::new();
    let long_dir = "very-long-directory-name-".repeat(6);
    let long_path = format!("{long_dir}/{}", "file-".repeat(30));
    let mut b = tar::Builder::new(Vec::new());
    // A read-only directory followed by content inside it.
    let mut dir = Header::new_gnu();
    dir.set_entry_type(EntryType::Directory);
    dir.set_mode(0o555);
    dir.set_size(0);
    dir.set_mtime(123);
    dir.set_uid(0);
    dir.set_gid(0);
    b.append_data(&mut dir, "ro/", &b""[..]).unwrap();
    let mut file = regular_header(2, 0o600);
    b.append_data(&mut file, "ro/inside", &b"ok"[..]).unwrap();
    // Pax uid/gid/mtime and an xattr override the header.
    b.append_pax_extensions([
        ("uid", &b"3000000"[..]),
        ("gid", &b"3000001"[..]),
        ("mtime", &b"1700000000.5"[..]),
        ("SCHILY.xattr.user.pax", &b"v"[..]),
        ("SCHILY.xattr.trusted.dropped", &b"v"[..]),
    ])
    .unwrap();
    let mut paxed = regular_header(3, 0o644);
    b.append_data(&mut paxed, "paxed", &b"pax"[..]).unwrap();
    let mut long = regular_header(4, 0o644);
    b.append_data(&mut long, &long_path, &b"long"[..]).unwrap();
    let image = fx.store.import_tar(&finish(b)[..], "pax").unwrap();
    let root = &image.layers[0];

    assert_eq!(fs::read(root.join(&long_path)).unwrap(), b"long");
    assert_eq!(fs::read(root.join("ro/inside")).unwrap(), b"ok");
    let ro = fs::metadata(root.join("ro")).unwrap();
    assert_eq!(ro.mode() & 0o7777, 0o555);
    assert_eq!(ro.mtime(), 123);
    let paxed = fs::metadata(root.join("paxed")).unwrap();
    assert_eq!(
        (paxed.mtime(), paxed.mtime_nsec()),
        (1_700_000_000, 500_000_000)
    );
    if is_root() {
        assert_eq!((paxed.uid(), paxed.gid()), (3_000_000, 3_000_001));
    }
    if let Ok(value) = xattr::get(root.join("paxed"), "user.pax") {
        assert_eq!(value, Some(b"v".to_vec()));
    }
    assert_eq!(
        xattr::get(root.join("paxed"), "trusted.dropped").unwrap_or(None),
        None
    );
}

#[test]
fn names_are_validated_and_host_is_reserved() {
    let fx = Fixture::new();
    let tar = simple_tar(&[("f", b"x")]);
    for name in [
        "",
        "Upper",
        "../x",
        "/abs",
        "a..b",
        "host",
        "host:v2",
        "sha256:abcdef",
    ] {
        let err = fx.store.import_tar(&tar[..], name).unwrap_err();
        assert_eq!(err.code(), "invalid_image_name", "{name:?}");
    }
    let long = "a".repeat(300);
    let err = fx.store.import_tar(&tar[..], &long).unwrap_err();
    assert_eq!(err.code(), "invalid_image_name");
    fx.assert_store_empty();

    let image = fx
        .store
        .import_tar(&tar[..], "registry.local:5000/team/app:1.0")
        .unwrap();
    assert_eq!(image.names, ["registry.local:5000/team/app:1.0"]);
    assert_eq!(
        fx.store
            .resolve("registry.local:5000/team/app:1.0")
            .unwrap()
            .id,
        image.id
    );
}

#[test]
fn resolve_by_name_tag_id_and_prefix() {
    let fx = Fixture::new();
    let a = fx
        .store
        .import_tar(&simple_tar(&[("a", b"a")])[..], "alpha")
        .unwrap();
    let b = fx
        .store
        .import_tar(&simple_tar(&[("b", b"b")])[..], "beta:2")
        .unwrap();
    let hex = a.id.strip_prefix("sha256:").unwrap();

    assert_eq!(fx.store.resolve("alpha").unwrap(), a);
    assert_eq!(fx.store.resolve("alpha:latest").unwrap(), a);
    assert_eq!(fx.store.resolve("beta:2").unwrap(), b);
    assert_eq!(fx.store.resolve(&a.id).unwrap(), a);
    assert_eq!(fx.store.resolve(hex).unwrap(), a);
    assert_eq!(fx.store.resolve(&hex[..12]).unwrap(), a);
    assert_eq!(
        fx.store.resolve(&format!("sha256:{}", &hex[..12])).unwrap(),
        a
    );

    let code = |r: &str| fx.store.resolve(r).unwrap_err().code();
    assert_eq!(code("beta"), "image_not_found");
    assert_eq!(code("gamma"), "image_not_found");
    assert_eq!(code("host:other"), "image_not_found");
    assert_eq!(code(&hex[..11]), "image_not_found"); // a valid name, not an id
    assert_eq!(
        code(&format!("sha256:{}", &hex[..11])),
        "invalid_image_reference"
    );
    assert_eq!(code("sha256:XYZ"), "invalid_image_reference");
    assert_eq!(code(&"0".repeat(64)), "image_not_found");
    assert_eq!(code("Bad Name"), "invalid_image_name");

    let listed = fx.store.list().unwrap();
    assert_eq!(listed, [a.clone(), b.clone()]);

    // Two ids sharing a 12-digit prefix make that prefix ambiguous.
    let images = fx.store.root().join("images");
    let shared = "abcdef012345";
    for tail in ["0", "1"] {
        let fake = format!("{shared}{}", tail.repeat(52));
        fs::write(images.join(format!("{fake}.json")), b"{}").unwrap();
    }
    assert_eq!(code(shared), "ambiguous_image_reference");
}

#[test]
fn remove_untags_then_deletes_unused_layers_and_blobs() {
    let fx = Fixture::new();
    let shared_tar = simple_tar(&[("shared", b"s")]);
    let a = fx.store.import_tar(&shared_tar[..], "a").unwrap();
    fx.store.import_tar(&shared_tar[..], "a2").unwrap();
    let config = ImageConfig {
        cmd: Some(vec!["/bin/true".into()]),
        ..ImageConfig::default()
    };
    let a_cfg = fx
        .store
        .import_tar_with_config(&shared_tar[..], "a-cfg", config)
        .unwrap();
    let b = fx
        .store
        .import_tar(&simple_tar(&[("b", b"b")])[..], "b")
        .unwrap();
    assert_eq!(fx.count("layers"), 2);
    assert_eq!(fx.count("images"), 3);

    // Removing one of two names keeps the image.
    fx.store.remove("a").unwrap();
    assert_eq!(fx.store.resolve("a2").unwrap().id, a.id);
    assert_eq!(fx.store.resolve("a").unwrap_err().code(), "image_not_found");
    assert_eq!(fx.count("images"), 3);

    // Removing the last name removes the image but not the layer a-cfg uses.
    fx.store.remove("a2").unwrap();
    assert_eq!(
        fx.store.resolve(&a.id).unwrap_err().code(),
        "image_not_found"
    );
    assert_eq!(fx.count("images"), 2);
    assert_eq!(fx.count("layers"), 2);
    assert!(a_cfg.layers[0].is_dir());

    // Now the layer goes, with its blob.
    fx.store.remove(&a_cfg.id).unwrap();
    assert!(!a_cfg.layers[0].exists());
    assert_eq!(fx.count("layers"), 1);
    assert_eq!(fx.count("blobs/sha256"), 1);

    // By id prefix.
    let hex = b.id.strip_prefix("sha256:").unwrap();
    fx.store.remove(&hex[..12]).unwrap();
    fx.assert_store_empty();
    assert!(fx.store.list().unwrap().is_empty());
    assert_eq!(fx.store.remove("b").unwrap_err().code(), "image_not_found");
}

#[test]
fn host_image_has_skeleton_binds_and_config() {
    let fx = Fixture::new();
    let host = fx.path("host");
    let image = fx.store.resolve("host").unwrap();
    assert_eq!(image.names, ["host:latest"]);
    assert_eq!(image.layers.len(), 1);
    let root = &image.layers[0];

    let targets: Vec<&str> = image.binds.iter().map(|b| b.target.as_str()).collect();
    assert_eq!(targets, ["/usr", "/lib64"]);
    assert!(image.binds.iter().all(|b| b.readonly));
    assert_eq!(image.binds[0].source, host.join("usr"));
    assert_eq!(image.binds[1].source, host.join("lib64"));

    let mode = |rel: &str| fs::symlink_metadata(root.join(rel)).unwrap().mode() & 0o7777;
    for dir in [
        "proc", "dev", "sys", "home", "run", "mnt", "opt", "srv", "etc", "usr", "lib64",
    ] {
        assert!(root.join(dir).is_dir(), "{dir}");
        assert_eq!(mode(dir), 0o755, "{dir}");
    }
    assert_eq!(mode("tmp"), 0o1777);
    assert_eq!(mode("var/tmp"), 0o1777);
    assert_eq!(mode("root"), 0o700);
    assert_eq!(fs::read_dir(root.join("usr")).unwrap().count(), 0);
    assert_eq!(fs::read_dir(root.join("lib64")).unwrap().count(), 0);
    assert_eq!(
        fs::read_link(root.join("bin")).unwrap(),
        Path::new("usr/bin")
    );
    assert_eq!(
        fs::read_link(root.join("lib")).unwrap(),
        Path::new("usr/lib")
    );
    assert!(!root.join("sbin").exists());

    let passwd = fs::read_to_string(root.join("etc/passwd")).unwrap();
    assert!(passwd.starts_with("root:x:0:0:root:/root:/bin/sh\n"));
    assert!(passwd.contains(":65534:"));
    assert!(!passwd.contains("host-user"));
    let group = fs::read_to_string(root.join("etc/group")).unwrap();
    assert!(group.contains("root:x:0:") && group.contains("tty:x:5:"));
    let hosts = fs::read_to_string(root.join("etc/hosts")).unwrap();
    assert!(hosts.contains("127.0.0.1\tlocalhost") && hosts.contains("::1\tlocalhost"));
    assert_eq!(fs::read(root.join("etc/resolv.conf")).unwrap(), b"");
    assert!(fs::read_to_string(root.join("etc/nsswitch.conf"))
        .unwrap()
        .contains("passwd: files"));
    assert!(root.join("etc/hostname").is_file());
    assert!(root.join("etc/profile").is_file());
    assert_eq!(fs::read(root.join("etc/ld.so.cache")).unwrap(), b"cache");
    assert!(root.join("etc/ld.so.conf").is_file());
    assert!(root.join("etc/ld.so.conf.d/x86_64.conf").is_file());
    assert_eq!(
        fs::read_link(root.join("etc/alternatives/editor")).unwrap(),
        Path::new("/usr/bin/vi")
    );
    assert_eq!(
        fs::read_link(root.join("etc/os-release")).unwrap(),
        Path::new("../usr/lib/os-release")
    );
    assert_eq!(
        fs::read(root.join("etc/ssl/certs/ca-certificates.crt")).unwrap(),
        b"CERTS"
    );
    assert!(!root.join("etc/mime.types").exists());
    assert!(!root.join("etc/shadow").exists());
    assert!(!root.join("etc/ssh").exists());
    let etc_passwd = fs::symlink_metadata(root.join("etc/passwd")).unwrap();
    assert_eq!((etc_passwd.mtime(), etc_passwd.mode() & 0o7777), (0, 0o644));
    if is_root() {
        assert_eq!((etc_passwd.uid(), etc_passwd.gid()), (0, 0));
    }

    assert_eq!(
        image.config.env,
        [
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME=/root",
            "LANG=C.UTF-8"
        ]
    );
    assert_eq!(image.config.workdir.as_deref(), Some("/"));
}

#[test]
fn host_image_is_idempotent_and_tracks_host_changes() {
    let fx = Fixture::new();
    let first = fx.store.host_image().unwrap();
    let again = fx.store.resolve("host:latest").unwrap();
    assert_eq!(first, again);
    assert_eq!(fx.count("layers"), 1);
    assert_eq!(fx.count("images"), 1);

    // A fresh store over the same host computes the same id.
    let other = ImageStore::open(fx.path("store2"))
        .unwrap()
        .with_host_root(fx.path("host"));
    assert_eq!(other.host_image().unwrap().id, first.id);

    fs::write(fx.path("host/etc/ld.so.cache"), b"changed").unwrap();
    let changed = fx.store.host_image().unwrap();
    assert_ne!(changed.id, first.id);
    assert_eq!(changed.names, ["host:latest"]);
    let old = fx.store.resolve(&first.id).unwrap();
    assert!(old.names.is_empty());
    assert_eq!(fx.count("images"), 2);

    // "host" can be removed; it is rebuilt on next use.
    fx.store.remove("host").unwrap();
    assert_eq!(fx.count("refs"), 0);
    assert_eq!(fx.store.resolve("host").unwrap().id, changed.id);
}

#[test]
fn open_cleans_stale_tmp_unless_the_store_is_in_use() {
    let fx = Fixture::new();
    let root = fx.store.root().to_path_buf();
    let stale = root.join("tmp/work-crashed/layer/fs/usr");
    fs::create_dir_all(&stale).unwrap();
    fs::write(stale.join("half"), b"written").unwrap();
    fs::write(root.join("tmp/.tmpRecord"), b"partial").unwrap();

    // While another user holds the lock, open leaves tmp/ alone.
    let lock = File::open(root.join("lock")).unwrap();
    let held = Flock::lock(lock, FlockArg::LockShared)
        .map_err(|(_, e)| e)
        .unwrap();
    ImageStore::open(&root).unwrap();
    assert!(stale.join("half").exists());
    drop(held);

    let reopened = ImageStore::open(&root).unwrap();
    assert_eq!(fs::read_dir(root.join("tmp")).unwrap().count(), 0);
    assert!(reopened.list().unwrap().is_empty());
    let mode = fs::metadata(&root).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o700);
    // No half-done layer is ever visible.
    assert_eq!(fs::read_dir(root.join("layers")).unwrap().count(), 0);
}

#[test]
fn import_dir_refuses_device_nodes_and_missing_sources() {
    let fx = Fixture::new();
    let err = fx
        .store
        .import_dir(&fx.path("does-not-exist"), "x")
        .unwrap_err();
    assert_eq!(err.code(), "layer_build_failed");
    if is_root() {
        let src = fx.path("src");
        fs::create_dir(&src).unwrap();
        nix::sys::stat::mknod(
            &src.join("null"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(1, 3),
        )
        .unwrap();
        let err = fx.store.import_dir(&src, "dev").unwrap_err();
        assert_eq!(err.code(), "unsafe_layer_entry");
        // An overlay whiteout is carried and skipped on unpack.
        fs::remove_file(src.join("null")).unwrap();
        nix::sys::stat::mknod(
            &src.join("wh"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .unwrap();
        let image = fx.store.import_dir(&src, "wh").unwrap();
        assert!(fs::symlink_metadata(image.layers[0].join("wh")).is_err());
    }
    assert_eq!(fx.count("tmp"), 0);
}

#[test]
fn whiteouts_become_overlay_whiteouts_and_opaque_xattrs() {
    if !is_root() {
        eprintln!("SKIP whiteouts_become_overlay_whiteouts_and_opaque_xattrs: needs root");
        return;
    }
    let fx = Fixture::new();
    let mut builder = tar::Builder::new(Vec::new());
    let mut dir = regular_header(0, 0o755);
    dir.set_entry_type(EntryType::Directory);
    builder.append_data(&mut dir, "d", &b""[..]).unwrap();
    let mut h = regular_header(0, 0o644);
    builder
        .append_data(&mut h, "d/.wh..wh..opq", &b""[..])
        .unwrap();
    let mut h = regular_header(0, 0o644);
    builder.append_data(&mut h, "a/.wh.gone", &b""[..]).unwrap();
    let mut h = regular_header(0, 0o644);
    builder
        .append_data(&mut h, "x/.wh..wh.plnk", &b""[..])
        .unwrap();
    let image = fx.store.import_tar(&finish(builder)[..], "wh").unwrap();
    let layer = &image.layers[0];
    let opaque = xattr::get(layer.join("d"), crate::OVERLAY_OPAQUE_XATTR).unwrap();
    assert_eq!(opaque.as_deref(), Some(&b"y"[..]));
    let gone = fs::symlink_metadata(layer.join("a/gone")).unwrap();
    assert!(gone.file_type().is_char_device());
    assert_eq!(gone.rdev(), 0);
    assert!(!layer.join("x/.wh..wh.plnk").exists());
    assert!(!layer.join("d/.wh..wh..opq").exists());
}
