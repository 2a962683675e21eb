"""Images: import of an archive made here (a static busybox), builds from
it, export, push to and pull from a loopback registry, removal and gc;
filesystem and directory snapshots, and image mounts."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import warren

from .conftest import Server, skip_or_fail

BUSYBOX = shutil.which("busybox")
APPLETS = ["sh", "cat", "echo", "ls", "mkdir", "sleep", "true", "env", "id", "pwd", "sha256sum"]


def _add(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    tar.addfile(info, io.BytesIO(data))


def busybox_archive(path: Path, tag: str) -> None:
    """A ``docker save`` archive: one layer with busybox and its applets."""
    assert BUSYBOX
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        for d in ("bin", "etc", "tmp"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        _add(tar, "bin/busybox", Path(BUSYBOX).read_bytes(), 0o755)
        for applet in APPLETS:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
        _add(tar, "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
        _add(tar, "etc/group", b"root:x:0:\n")
    layer_bytes = layer.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer_bytes).hexdigest()
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
    ).encode()
    manifest = json.dumps([{"Config": "config.json", "RepoTags": [tag], "Layers": ["layer.tar"]}])
    with tarfile.open(path, "w") as tar:
        _add(tar, "layer.tar", layer_bytes)
        _add(tar, "config.json", config)
        _add(tar, "manifest.json", manifest.encode())


@pytest.fixture(scope="module")
def base(client: warren.Client, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not BUSYBOX:
        skip_or_fail("needs a static busybox on the host")
    tag = f"sdk-bb-{uuid.uuid4().hex[:6]}:1"
    archive = tmp_path_factory.mktemp("img") / "bb.tar"
    busybox_archive(archive, tag)
    img = warren.Image.import_archive(archive, name=tag, client=client)
    assert img.id and img.id.startswith("sha256:")
    yield tag


def test_import_lookup_list_and_run(client: warren.Client, base: str) -> None:
    img = warren.Image.lookup(base, client=client)
    assert img.info is not None and base in " ".join(img.info.names)
    assert img.info.config["cmd"] == ["sh"]
    assert img.id in [i.id for i in warren.Image.list(client=client)]
    with warren.Sandbox.create(image=img, client=client) as sb:
        assert sb.run("sh", "-c", "echo $PATH; cat /etc/passwd").stdout.startswith("/bin\nroot:")
        with pytest.raises(warren.ImageInUse):
            img.remove(client=client)
    with pytest.raises(warren.ImageNotFound):
        warren.Image.lookup("sdk-no-such:1", client=client)


def test_build_with_every_step(client: warren.Client, base: str, tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("from the context\n")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "d.txt").write_text("dir file\n")
    recipe = (
        warren.Image.from_registry(base)
        .env(GREETING="hi there")
        .workdir("/app")
        .copy_local_file(tmp_path / "f.txt", "/app/f.txt")
        .copy_local_dir(tmp_path / "dir", "/app/dir")
        .run_commands("echo built > /app/out.txt", "cat /app/f.txt >> /app/out.txt")
        .user("root")
        .entrypoint(["/bin/sh", "-c"])
        .cmd(["echo from-cmd"])
    )
    assert recipe.needs_build and recipe.id is None
    assert recipe.recipe().startswith(f'FROM {base}\nENV GREETING="hi there"\n')
    events: list[dict[str, Any]] = []
    built = recipe.build(tag="sdk-built:1", on_event=events.append, client=client)
    assert built.id and built.id.startswith("sha256:")
    kinds = {e["event"] for e in events}
    assert {"step", "step_done", "done"} <= kinds
    with warren.Sandbox.create(image=built, client=client) as sb:
        assert sb.filesystem.read_text("/app/out.txt") == "built\nfrom the context\n"
        assert sb.filesystem.read_text("/app/dir/d.txt") == "dir file\n"
        assert sb.run("sh", "-c", "echo $GREETING; pwd").stdout == "hi there\n/app\n"
    with warren.Sandbox.create(image=built, use_image_command=True, client=client) as sb:
        assert sb.wait(timeout=30).exit_code == 0
        assert sb.logs() == "from-cmd\n"
    # An unbuilt recipe passed to create is built first (the cache makes it quick).
    again = warren.Image.from_registry(base).run_commands("echo lazy > /lazy")
    with warren.Sandbox.create(image=again, client=client) as sb:
        assert sb.filesystem.read_text("/lazy") == "lazy\n"
    assert again.id is not None


def test_build_failure(client: warren.Client, base: str) -> None:
    with pytest.raises(warren.BuildError) as e:
        warren.Image.from_registry(base).run_commands("echo x", "exit 7").build(client=client)
    assert (e.value.code, e.value.exit_code, e.value.step) == ("build_step_failed", 7, 3)


def test_export_import_push_pull(
    client: warren.Client, base: str, server: Server, tmp_path: Path
) -> None:
    img = warren.Image.lookup(base, client=client)
    out = tmp_path / "bb-oci.tar"
    size = img.export(out, client=client)
    assert size == out.stat().st_size > 0
    with tarfile.open(out) as tar:
        assert "index.json" in tar.getnames()
    back = warren.Image.import_archive(out, name="sdk-reimported:1", client=client)
    assert back.id == img.id
    with pytest.raises(warren.ImageError) as e:
        warren.Image.from_id("host").export(tmp_path / "host.tar", client=client)
    assert e.value.code == "image_not_exportable"
    assert not (tmp_path / "host.tar").exists() and not (tmp_path / "host.tar.partial").exists()

    if server.registry is None:
        skip_or_fail("no docker-registry on this host for push and pull")
    target = f"{server.registry}/sdk/bb:1"
    pushed: list[dict[str, Any]] = []
    result = img.push(target, progress=pushed.append, client=client)
    assert result.target == target and result.manifest_digest.startswith("sha256:")
    assert result.pushed_blobs >= 2 and pushed[0]["event"] == "resolved"
    again = img.push(target, client=client)
    assert again.pushed_blobs == 0 and again.skipped_blobs >= 2

    progress: list[dict[str, Any]] = []
    pulled = warren.Image.pull(target, progress=progress.append, client=client)
    assert pulled.info is not None and target in pulled.info.names
    assert progress[0]["event"] == "resolved" and progress[-1]["event"] == "done"
    pulled.remove(client=client)
    with pytest.raises(warren.ImageNotFound):
        warren.Image.lookup(target, client=client)
    with pytest.raises(warren.InvalidArgument):
        warren.Image.pull("Bad Ref", client=client)
    with pytest.raises(warren.RegistryError):
        warren.Image.pull("127.0.0.1:9/nothing:1", client=client)
    report = warren.Image.gc(client=client)
    assert report.bytes_freed >= 0


def test_snapshots_and_mounts(sandbox: warren.Sandbox, client: warren.Client) -> None:
    fs = sandbox.filesystem
    fs.write_text("/data/x.txt", "snap me")
    snap = sandbox.snapshot_filesystem(name="sdk-snap:1", ttl=3600)
    assert snap.id and snap.snapshot is not None
    assert snap.snapshot.name == "sdk-snap:1" and snap.snapshot.expires_at
    with warren.Sandbox.create(image=snap, client=client) as copy:
        assert copy.filesystem.read_text("/data/x.txt") == "snap me"
    dir_snap = sandbox.snapshot_directory("/data")
    assert dir_snap.snapshot is not None and dir_snap.snapshot.layer_entries >= 1
    with warren.Sandbox.create(mounts={"/cache": dir_snap}, client=client) as other:
        assert other.filesystem.read_text("/cache/x.txt") == "snap me"
        assert other.info.mounts[0]["path"] == "/cache"
        other.mount_image("/more", dir_snap.id or "")
        assert other.run("cat", "/more/x.txt").stdout == "snap me"
        assert {m["path"] for m in other.info.mounts} == {"/cache", "/more"}
    with pytest.raises(warren.FilesystemError) as e:
        sandbox.snapshot_directory("/proc")
    assert e.value.code == "invalid_path"
