"""The filesystem API: reads, writes, listing, metadata, renames, watches,
directory transfers and large streamed files."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

import warren


def test_read_write_stat_list(sandbox: warren.Sandbox) -> None:
    fs = sandbox.filesystem
    info = fs.write_text("/work/app/main.py", "print('hi')\n", mode=0o755)
    assert (info.path, info.kind, info.size, info.mode) == ("/work/app/main.py", "file", 12, 0o755)
    assert fs.read_text("/work/app/main.py") == "print('hi')\n"
    assert fs.read_bytes("/work/app/main.py", offset=6, length=4) == b"'hi'"
    fs.write_bytes("/work/app/data.bin", bytes(range(256)))
    assert fs.stat("/work/app/data.bin").size == 256
    names = sorted(e.path for e in fs.list("/work/app"))
    assert names == ["/work/app/data.bin", "/work/app/main.py"]
    assert {e.path for e in fs.list("/work", recursive=True)} >= {"/work/app", "/work/app/main.py"}
    assert fs.stat("/work/app").is_dir
    assert fs.exists("/work/app/main.py") and not fs.exists("/work/nope")
    assert sandbox.run("python3", "/work/app/main.py").stdout == "hi\n"
    fs.write_bytes(b"/work/caf\xc3\xa9", b"x")
    assert fs.read_bytes("/work/café") == b"x"


def test_mkdir_rename_remove_and_errors(sandbox: warren.Sandbox) -> None:
    fs = sandbox.filesystem
    fs.mkdir("/d/a/b", parents=True)
    with pytest.raises(warren.FileExists):
        fs.mkdir("/d/a")
    fs.write_text("/d/a/b/f", "1")
    fs.write_text("/d/g", "2")
    with pytest.raises(warren.FileExists):
        fs.rename("/d/a/b/f", "/d/g")
    fs.rename("/d/a/b/f", "/d/g", overwrite=True)
    assert fs.read_text("/d/g") == "1"
    with pytest.raises(warren.DirectoryNotEmpty):
        fs.remove("/d/a")
    with pytest.raises(warren.IsADirectory):
        fs.read_bytes("/d/a")
    with pytest.raises(warren.NotADirectory):
        fs.list("/d/g")
    fs.remove("/d/a", recursive=True)
    with pytest.raises(warren.FileNotFound) as e:
        fs.stat("/d/a")
    assert e.value.status == 404
    with pytest.raises(warren.PermissionDenied):
        fs.write_text("/root/x", "no", user="65534")
    with pytest.raises(warren.FilesystemError):
        fs.stat("relative")


def test_watch(sandbox: warren.Sandbox) -> None:
    fs = sandbox.filesystem
    fs.mkdir("/w")
    with fs.watch("/w", recursive=True) as watcher:
        fs.write_text("/w/new.txt", "x")
        seen = []
        for ev in watcher:
            seen.append((ev.kind, ev.path))
            if ev.path == "/w/new.txt" and ev.kind in ("moved_to", "created"):
                break
    assert any(p == "/w/new.txt" for _, p in seen), seen


def test_watch_ends_when_the_path_goes(sandbox: warren.Sandbox) -> None:
    fs = sandbox.filesystem
    fs.mkdir("/gone")
    watcher = fs.watch("/gone")
    watcher.start()
    done = threading.Event()

    def consume() -> None:
        for _ in watcher:
            pass
        done.set()

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    fs.remove("/gone", recursive=True)
    assert done.wait(30), "the watch did not end"


def test_large_file_streams(sandbox: warren.Sandbox, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    h = hashlib.sha256()
    with open(src, "wb") as f:
        for i in range(48):  # 48 MiB
            block = bytes([i]) * (1 << 20)
            f.write(block)
            h.update(block)
    info = sandbox.filesystem.upload_file(src, "/tmp/big.bin")
    assert info.size == 48 << 20
    assert sandbox.run("sha256sum", "/tmp/big.bin").stdout.split()[0] == h.hexdigest()
    dst = tmp_path / "back.bin"
    assert sandbox.filesystem.download_file("/tmp/big.bin", dst) == 48 << 20
    h2 = hashlib.sha256()
    for chunk in sandbox.filesystem.iter_bytes("/tmp/big.bin"):
        h2.update(chunk)
    assert h2.hexdigest() == h.hexdigest()
    assert dst.stat().st_size == src.stat().st_size

    def gen():
        for _ in range(4):
            yield b"z" * 100_000

    assert sandbox.filesystem.write_bytes("/tmp/gen", gen()).size == 400_000


def test_directories_as_archives(sandbox: warren.Sandbox, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("A")
    (src / "sub/b.txt").write_text("B")
    os.symlink("a.txt", src / "link")
    result = sandbox.filesystem.upload_dir(src, "/up")
    assert result.files == 2 and result.directories >= 1
    assert [s.removeprefix("./") for s in result.skipped] == ["link"], result.skipped
    assert sandbox.filesystem.read_text("/up/sub/b.txt") == "B"
    out = tmp_path / "out"
    names = sandbox.filesystem.download_dir("/up", out)
    assert (out / "a.txt").read_text() == "A" and (out / "sub/b.txt").read_text() == "B"
    assert any(n.endswith("b.txt") for n in names)


def test_disk_limit_is_no_space(client: warren.Client) -> None:
    with warren.Sandbox.create(client=client, disk=2) as sb:
        with pytest.raises(warren.NoSpace) as e:
            sb.filesystem.write_bytes("/big", b"\0" * (4 << 20))
        assert e.value.status == 507
        assert not sb.filesystem.exists("/big")
