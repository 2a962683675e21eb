"""A sandbox's files (``/v1/sandboxes/{id}/files...``, docs/files.md).

Paths are ``str`` or ``bytes`` (sent byte for byte, so names that are not
UTF-8 work). Reads and writes of large files stream in chunks; directories
travel as tar archives, spooled through a temporary file rather than held
in memory.
"""

from __future__ import annotations

import asyncio
import builtins
import os
import tarfile
import tempfile
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from pathlib import Path
from typing import IO, Any

import httpx

from . import _sse as sse
from ._client import STREAM_TIMEOUT, Client
from ._types import ArchiveResult, FileEvent, FileInfo, parse

CHUNK = 256 * 1024
"""Bytes per piece of a streamed upload or download."""

PathLike = str | bytes

Source = bytes | str | IO[bytes] | Iterable[bytes] | AsyncIterable[bytes]


async def _chunks(source: Source) -> AsyncIterator[bytes]:
    """A write's body as chunks: bytes, a binary file, or (async) iterables."""
    if isinstance(source, str):
        source = source.encode()
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        for i in range(0, len(data), CHUNK):
            yield data[i : i + CHUNK]
        return
    if hasattr(source, "read"):
        while chunk := source.read(CHUNK):
            yield chunk
        return
    if isinstance(source, AsyncIterable):
        async for chunk in source:
            yield chunk
        return
    for chunk in source:
        yield chunk


class FileWatcher:
    """The changes under a watched path, as :class:`FileEvent` items.

    The watch is in place once :meth:`start` (or entering the ``with``
    block) returns; iterating starts it too. :meth:`close` ends it."""

    def __init__(self, fs: Filesystem, path: PathLike, recursive: bool) -> None:
        self._fs = fs
        self._params: dict[str, bytes | bool] = {"path": _raw(path), "recursive": recursive}
        self._cm: Any = None
        self._events: AsyncIterator[tuple[str, Any]] | None = None

    async def start(self) -> FileWatcher:
        """Opens the watch; events from now on are reported."""
        if self._cm is None:
            self._cm = self._fs._client.stream(
                "GET",
                self._fs._path("watch"),
                params=self._params,
                timeout=STREAM_TIMEOUT,
                long=True,
            )
            resp: httpx.Response = await self._cm.__aenter__()
            self._events = sse.events(resp.aiter_lines())
        return self

    async def close(self) -> None:
        """Ends the watch."""
        cm, self._cm = self._cm, None
        if cm is not None:
            await cm.__aexit__(None, None, None)

    async def __aenter__(self) -> FileWatcher:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __aiter__(self) -> FileWatcher:
        return self

    async def __anext__(self) -> FileEvent:
        await self.start()
        assert self._events is not None
        async for event, data in self._events:
            if event == "fs":
                return parse(FileEvent, data)
            if event == "end":
                break
        await self.close()
        raise StopAsyncIteration


def _raw(path: PathLike) -> bytes:
    return path if isinstance(path, bytes) else path.encode()


class Filesystem:
    """Files of one sandbox, as its user (or ``user=`` per call)."""

    def __init__(self, client: Client, sandbox_id: str) -> None:
        self._client = client
        self._id = sandbox_id

    def _path(self, tail: str = "") -> str:
        base = f"/v1/sandboxes/{self._id}/files"
        return f"{base}/{tail}" if tail else base

    async def iter_bytes(
        self,
        path: PathLike,
        *,
        offset: int | None = None,
        length: int | None = None,
        user: str | None = None,
    ) -> AsyncIterator[bytes]:
        """A file's bytes, streamed in chunks."""
        params = {"path": _raw(path), "offset": offset, "length": length, "user": user}
        async with self._client.stream(
            "GET", self._path(), params=params, timeout=STREAM_TIMEOUT
        ) as resp:
            async for chunk in resp.aiter_bytes(CHUNK):
                yield chunk

    async def read_bytes(
        self,
        path: PathLike,
        *,
        offset: int | None = None,
        length: int | None = None,
        user: str | None = None,
    ) -> bytes:
        """A whole file (or ``length`` bytes from ``offset``)."""
        parts = [c async for c in self.iter_bytes(path, offset=offset, length=length, user=user)]
        return b"".join(parts)

    async def read_text(
        self, path: PathLike, *, encoding: str = "utf-8", user: str | None = None
    ) -> str:
        """A whole file, decoded."""
        return (await self.read_bytes(path, user=user)).decode(encoding)

    async def write_bytes(
        self,
        path: PathLike,
        data: Source,
        *,
        mode: int | None = None,
        parents: bool = True,
        user: str | None = None,
    ) -> FileInfo:
        """Writes a file atomically from bytes, a binary file object or an
        (async) iterable of chunks, streamed; creates missing parents unless
        ``parents=False``. ``mode`` defaults to the old file's, else 0o644."""
        params = {
            "path": _raw(path),
            "mode": None if mode is None else format(mode, "o"),
            "parents": parents,
            "user": user,
        }
        body = data if isinstance(data, bytes) else _chunks(data)
        resp = await self._client.request(
            "PUT", self._path(), params=params, content=body, timeout=STREAM_TIMEOUT
        )
        return parse(FileInfo, resp.json())

    async def write_text(
        self,
        path: PathLike,
        text: str,
        *,
        encoding: str = "utf-8",
        mode: int | None = None,
        parents: bool = True,
        user: str | None = None,
    ) -> FileInfo:
        """Writes ``text`` as a file atomically."""
        return await self.write_bytes(
            path, text.encode(encoding), mode=mode, parents=parents, user=user
        )

    async def upload_file(
        self, local: str | os.PathLike[str], path: PathLike, *, mode: int | None = None
    ) -> FileInfo:
        """Copies a local file into the sandbox, streamed."""
        with open(local, "rb") as f:
            return await self.write_bytes(path, f, mode=mode)

    async def download_file(self, path: PathLike, local: str | os.PathLike[str]) -> int:
        """Copies a sandbox file to a local one, streamed; returns its size."""
        size = 0
        with open(local, "wb") as f:
            async for chunk in self.iter_bytes(path):
                f.write(chunk)
                size += len(chunk)
        return size

    async def stat(self, path: PathLike, *, user: str | None = None) -> FileInfo:
        """A file's metadata (a final symlink is reported, not followed)."""
        data = await self._client.json(
            "GET", self._path("stat"), params={"path": _raw(path), "user": user}
        )
        return parse(FileInfo, data)

    async def exists(self, path: PathLike) -> bool:
        """Whether ``path`` exists."""
        from ._errors import FileNotFound

        try:
            await self.stat(path)
        except FileNotFound:
            return False
        return True

    async def list(
        self,
        path: PathLike,
        *,
        recursive: bool = False,
        limit: int | None = None,
        user: str | None = None,
    ) -> list[FileInfo]:
        """A directory's entries (all levels below with ``recursive``)."""
        params = {"path": _raw(path), "recursive": recursive, "limit": limit, "user": user}
        data = await self._client.json("GET", self._path("list"), params=params)
        return [parse(FileInfo, e) for e in data["entries"]]

    async def mkdir(
        self,
        path: PathLike,
        *,
        parents: bool = False,
        mode: int | None = None,
        user: str | None = None,
    ) -> FileInfo:
        """Creates a directory (and missing parents with ``parents``)."""
        params = {
            "path": _raw(path),
            "parents": parents,
            "mode": None if mode is None else format(mode, "o"),
            "user": user,
        }
        data = await self._client.json(
            "POST", self._path("mkdir"), params=params, idempotent=parents
        )
        return parse(FileInfo, data)

    async def remove(
        self, path: PathLike, *, recursive: bool = False, user: str | None = None
    ) -> None:
        """Removes a file, or a directory (its contents too with ``recursive``)."""
        params = {"path": _raw(path), "recursive": recursive, "user": user}
        await self._client.request("DELETE", self._path(), params=params)

    async def rename(
        self,
        src: PathLike,
        dst: PathLike,
        *,
        overwrite: bool = False,
        user: str | None = None,
    ) -> None:
        """Renames ``src`` to ``dst`` (replacing it with ``overwrite``)."""
        params = {"from": _raw(src), "to": _raw(dst), "overwrite": overwrite, "user": user}
        await self._client.request("POST", self._path("rename"), params=params)

    def watch(self, path: PathLike, *, recursive: bool = False) -> FileWatcher:
        """Watches ``path`` for changes: iterate the result for
        :class:`FileEvent` items; use it as a context manager to be sure the
        watch is in place before you make changes."""
        return FileWatcher(self, path, recursive)

    async def upload_dir(self, local: str | os.PathLike[str], path: PathLike) -> ArchiveResult:
        """Uploads a local directory's contents into ``path`` (created if
        missing) as a tar stream; symlinks are skipped and listed."""
        with tempfile.TemporaryFile() as spool:
            await asyncio.to_thread(_pack, local, spool)
            resp = await self._client.request(
                "PUT",
                self._path("archive"),
                params={"path": _raw(path)},
                content=_chunks(spool),
                headers={"Content-Type": "application/x-tar"},
                timeout=STREAM_TIMEOUT,
            )
        return parse(ArchiveResult, resp.json())

    async def download_dir(
        self, path: PathLike, local: str | os.PathLike[str]
    ) -> builtins.list[str]:
        """Downloads directory ``path`` into local directory ``local``
        (created if missing), unpacked as untrusted input (no absolute
        paths, no ``..``, no links out); returns the names unpacked."""
        target = Path(local)
        target.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile() as spool:
            async with self._client.stream(
                "GET", self._path("archive"), params={"path": _raw(path)}, timeout=STREAM_TIMEOUT
            ) as resp:
                async for chunk in resp.aiter_bytes(CHUNK):
                    spool.write(chunk)
            return await asyncio.to_thread(_unpack, spool, target)


def _pack(local: str | os.PathLike[str], spool: IO[bytes]) -> None:
    """Tars directory ``local`` into ``spool`` (off the event loop)."""
    with tarfile.open(fileobj=spool, mode="w") as tar:
        tar.add(local, arcname=".")
    spool.seek(0)


def _unpack(spool: IO[bytes], target: Path) -> builtins.list[str]:
    """Unpacks the tar in ``spool`` into ``target`` with the ``data`` filter
    (refuses absolute paths, ``..`` and links leading out)."""
    spool.seek(0)
    with tarfile.open(fileobj=spool, mode="r") as tar:
        tar.extractall(target, filter="data")
        return tar.getnames()
