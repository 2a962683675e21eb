"""Images: a recipe builder (``Image.from_registry(...).run_commands(...)``)
that builds through ``POST /v1/images/build``, and the node's image store
(pull with progress, list, lookup, remove, export, import, push, gc).

An :class:`Image` is passable as ``image=`` to ``Sandbox.create``: an
image with recipe steps is built first (once; the server caches steps).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import json
import os
import tarfile
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from . import _sse as sse
from ._client import STREAM_TIMEOUT, Client, resolve, segment
from ._errors import BuildError, WarrenError
from ._filesystem import CHUNK, _chunks
from ._types import GcReport, ImageInfo, PushResult, SnapshotInfo, parse

ProgressCallback = Callable[[dict[str, Any]], None]
"""Receives each progress or build event as the server's JSON object. It
runs on the SDK's event loop: keep it short and do not call the SDK from it."""


@dataclasses.dataclass(frozen=True)
class _Copy:
    local: Path
    context_name: str
    dest: str


class Image:
    """An image: a reference to one in the store, or a recipe to build.

    Builder methods return a new :class:`Image` and leave this one as it
    is, so a common base can be shared.
    """

    def __init__(
        self,
        reference: str,
        *,
        steps: tuple[str, ...] = (),
        copies: tuple[_Copy, ...] = (),
        info: ImageInfo | None = None,
        snapshot: SnapshotInfo | None = None,
    ) -> None:
        self._reference = reference
        self._steps = steps
        self._copies = copies
        self._info = info
        self._snapshot = snapshot
        self._built: str | None = info.id if info else None

    def __repr__(self) -> str:
        return f"<Image {self.id or self._reference} steps={len(self._steps)}>"

    # ------------------------------------------------------------ builder ---

    @classmethod
    def from_registry(cls, reference: str) -> Image:
        """A base image by registry reference (``python:3.12``,
        ``127.0.0.1:5000/app:v1``); the server pulls it when needed."""
        return cls(reference)

    @classmethod
    def from_id(cls, reference: str) -> Image:
        """An image of the store by id or name, unresolved (see :meth:`lookup`)."""
        return cls(reference)

    def _with(self, step: str, copy: _Copy | None = None) -> Image:
        copies = self._copies + ((copy,) if copy else ())
        return Image(self._reference, steps=self._steps + (step,), copies=copies)

    def run_commands(self, *commands: str) -> Image:
        """Runs each shell command in a build step (``RUN``)."""
        img = self
        for c in commands:
            img = img._with("RUN " + _one_line(c))
        return img

    def env(self, vars: dict[str, str] | None = None, **kwargs: str) -> Image:
        """Sets environment variables (``ENV``)."""
        merged = {**(vars or {}), **kwargs}
        if not merged:
            return self
        return self._with("ENV " + " ".join(f"{k}={json.dumps(v)}" for k, v in merged.items()))

    def workdir(self, path: str) -> Image:
        """Sets the working directory (``WORKDIR``)."""
        return self._with("WORKDIR " + path)

    def user(self, user: str) -> Image:
        """Sets the user of later steps and of sandboxes (``USER``)."""
        return self._with("USER " + user)

    def cmd(self, argv: list[str]) -> Image:
        """Sets the default command (``CMD``)."""
        return self._with("CMD " + json.dumps(argv))

    def entrypoint(self, argv: list[str]) -> Image:
        """Sets the entrypoint (``ENTRYPOINT``)."""
        return self._with("ENTRYPOINT " + json.dumps(argv))

    def copy_local_file(self, local: str | os.PathLike[str], remote: str) -> Image:
        """Copies a local file into the image at ``remote`` (``COPY``)."""
        return self._copy(Path(local), remote)

    def copy_local_dir(self, local: str | os.PathLike[str], remote: str) -> Image:
        """Copies a local directory's contents into ``remote`` (``COPY``)."""
        return self._copy(Path(local), remote.rstrip("/") + "/")

    def _copy(self, local: Path, remote: str) -> Image:
        name = f"ctx{len(self._copies)}"
        copy = _Copy(local, name, remote)
        return self._with("COPY " + json.dumps([name, remote]), copy)

    def recipe(self) -> str:
        """The recipe (a Dockerfile subset) this image builds from."""
        return "\n".join([f"FROM {self._reference}", *self._steps]) + "\n"

    # ------------------------------------------------------------ identity ---

    @property
    def id(self) -> str | None:
        """The image id (``sha256:...``) once known (built, looked up,
        pulled, imported or snapshotted); None for an unbuilt recipe."""
        return self._built

    @property
    def reference(self) -> str:
        """What a sandbox create names: the id when known, else the reference."""
        return self._built or self._reference

    @property
    def info(self) -> ImageInfo | None:
        """The store's record, when this image came from it."""
        return self._info

    @property
    def snapshot(self) -> SnapshotInfo | None:
        """Details of the snapshot this image came from, if it did."""
        return self._snapshot

    @property
    def needs_build(self) -> bool:
        """Whether the image has recipe steps not built yet."""
        return bool(self._steps) and self._built is None

    # --------------------------------------------------------------- build ---

    async def build(
        self,
        tag: str | None = None,
        *,
        no_cache: bool = False,
        network: bool | None = None,
        step_timeout: int | None = None,
        memory: int | None = None,
        on_event: ProgressCallback | None = None,
        client: Client | None = None,
    ) -> Image:
        """Builds the recipe on the server (admin token) and returns the
        built image, tagged ``tag`` (by default ``warren-sdk/build:<hash>``).
        ``on_event`` sees every build event (steps, ``log`` lines with a
        step's output, ``done``). Raises :class:`~warren.BuildError`."""
        c = resolve(client)
        recipe = self.recipe().encode()
        with tempfile.TemporaryFile() as spool:
            digest = await asyncio.to_thread(self._context, spool, recipe)
            spool.seek(0)
            params = {
                "tag": tag or f"warren-sdk/build:{digest[:16]}",
                "no_cache": no_cache or None,
                "network": network,
                "step_timeout_secs": step_timeout,
                "memory_mib": memory,
            }
            async with c.stream(
                "POST",
                "/v1/images/build",
                params=params,
                content=_chunks(spool),
                headers={"Content-Type": "application/x-tar"},
                timeout=STREAM_TIMEOUT,
                long=True,
            ) as resp:
                done = await _build_events(resp.aiter_lines(), on_event)
        info = await Image.lookup(done["image_id"], client=c)
        return info

    def _context(self, spool: Any, recipe: bytes) -> str:
        """Writes the build context (recipe + copied files) as a tar into
        ``spool``; returns a digest of it (for the default tag)."""
        with tarfile.open(fileobj=spool, mode="w") as tar:
            entry = tarfile.TarInfo("Dockerfile")
            entry.size = len(recipe)
            tar.addfile(entry, io.BytesIO(recipe))
            for copy in self._copies:
                tar.add(copy.local, arcname=copy.context_name, filter=_normalize)
        spool.seek(0)
        h = hashlib.sha256()
        while chunk := spool.read(CHUNK):
            h.update(chunk)
        return h.hexdigest()

    async def _resolved(self, client: Client) -> str:
        """The reference a sandbox create uses; builds first if needed."""
        if self.needs_build:
            built = await self.build(client=client)
            self._built, self._info = built._built, built._info
        return self.reference

    # --------------------------------------------------------------- store ---

    @classmethod
    async def lookup(cls, reference: str, *, client: Client | None = None) -> Image:
        """The store's image by name or id; raises :class:`~warren.ImageNotFound`."""
        data = await resolve(client).json("GET", f"/v1/images/{segment(reference)}")
        return cls(reference, info=parse(ImageInfo, data))

    @classmethod
    async def list(cls, *, client: Client | None = None) -> list[Image]:
        """Every image in the node's store."""
        data = await resolve(client).json("GET", "/v1/images")
        return [cls(i["id"], info=parse(ImageInfo, i)) for i in data["images"]]

    @classmethod
    async def pull(
        cls,
        reference: str,
        *,
        progress: ProgressCallback | None = None,
        auth: dict[str, str] | None = None,
        client: Client | None = None,
    ) -> Image:
        """Pulls ``reference`` into the store; ``progress`` sees each
        progress event (``resolved``, ``layer_progress``, ..., ``done``).
        ``auth`` (``{"username", "password"}`` or ``{"token"}``) needs an
        admin token. Idempotent: retried on connection failures."""
        body: dict[str, Any] = {"reference": reference}
        if auth:
            body["auth"] = auth
        data = await _sse_call(
            resolve(client), "POST", "/v1/images/pull", body, progress, idempotent=True
        )
        return cls(reference, info=parse(ImageInfo, data))

    @classmethod
    async def import_archive(
        cls,
        path: str | os.PathLike[str],
        *,
        name: str | None = None,
        client: Client | None = None,
    ) -> Image:
        """Imports a ``docker save`` tar or an OCI layout tar (admin token),
        streamed from the file."""
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            resp = await resolve(client).request(
                "POST",
                "/v1/images/import",
                params={"name": name},
                content=_chunks(f),
                headers={"Content-Type": "application/x-tar", "Content-Length": str(size)},
                timeout=STREAM_TIMEOUT,
            )
        info = parse(ImageInfo, resp.json())
        return cls(info.id, info=info)

    @classmethod
    async def gc(cls, *, client: Client | None = None) -> GcReport:
        """Removes unnamed, unused images and their layers (admin token)."""
        data = await resolve(client).json("POST", "/v1/images/gc", idempotent=True)
        return parse(GcReport, data)

    def _store_ref(self) -> str:
        if self.needs_build:
            raise WarrenError("not_built", "build the image first")
        return self.reference

    async def remove(self, *, client: Client | None = None) -> None:
        """Removes the image from the store (admin token); raises
        :class:`~warren.ImageInUse` while a live sandbox uses it."""
        await resolve(client).request("DELETE", f"/v1/images/{segment(self._store_ref())}")

    async def export(self, path: str | os.PathLike[str], *, client: Client | None = None) -> int:
        """Writes the image as an OCI layout tar to ``path`` (streamed; a
        ``.partial`` file renamed at the end); returns its size."""
        ref = segment(self._store_ref())
        partial = Path(f"{os.fspath(path)}.partial")
        size = 0
        try:
            async with resolve(client).stream(
                "GET", f"/v1/images/{ref}/export", timeout=STREAM_TIMEOUT
            ) as resp:
                with open(partial, "wb") as f:
                    async for chunk in resp.aiter_bytes(CHUNK):
                        f.write(chunk)
                        size += len(chunk)
            partial.replace(path)
        finally:
            partial.unlink(missing_ok=True)
        return size

    async def push(
        self,
        target: str,
        *,
        insecure: bool = False,
        auth: dict[str, str] | None = None,
        progress: ProgressCallback | None = None,
        client: Client | None = None,
    ) -> PushResult:
        """Pushes the image to ``host[:port]/repo[:tag]`` (admin token);
        ``progress`` sees each push event."""
        body: dict[str, Any] = {"target": target, "insecure": insecure}
        if auth:
            body["auth"] = auth
        ref = segment(self._store_ref())
        data = await _sse_call(
            resolve(client), "POST", f"/v1/images/{ref}/push", body, progress, idempotent=True
        )
        return parse(PushResult, data)


def _one_line(command: str) -> str:
    """A shell command as one recipe line (newlines become ``\\`` continuations)."""
    return " \\\n".join(command.strip().splitlines())


def _normalize(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """Context entries without owners or times, so the context (and the
    default tag) depends only on content."""
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    return info


async def _build_events(
    lines: AsyncIterator[str], on_event: ProgressCallback | None
) -> dict[str, Any]:
    async for line in lines:
        if not line.strip():
            continue
        event = json.loads(line)
        if on_event is not None:
            on_event(event)
        if event.get("event") == "done":
            return dict(event)
        if event.get("event") == "error":
            raise BuildError(
                event.get("code", "build_failed"),
                event.get("message", ""),
                step=event.get("step"),
                line=event.get("line"),
                exit_code=event.get("exit_code"),
            )
    raise WarrenError("stream_closed", "the build stream ended without a result")


async def _sse_call(
    client: Client,
    method: str,
    path: str,
    body: dict[str, Any],
    progress: ProgressCallback | None,
    *,
    idempotent: bool,
) -> dict[str, Any]:
    """A call answered as server-sent events: ``progress`` events to the
    callback, then ``done`` (the result) or ``error``."""
    async with client.stream(
        method,
        path,
        json=body,
        headers={"Accept": "text/event-stream"},
        idempotent=idempotent,
        timeout=STREAM_TIMEOUT,
        long=True,
    ) as resp:
        async for event, data in sse.events(resp.aiter_lines()):
            if event == "progress" and progress is not None:
                progress(data)
            elif event == "done":
                return dict(data)
    raise WarrenError("stream_closed", f"{path}: the stream ended without a result")
