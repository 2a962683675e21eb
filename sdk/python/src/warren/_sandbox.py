"""Sandboxes: create, find, list, exec, files, tunnels, snapshots, end."""

from __future__ import annotations

import asyncio
import builtins
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ._client import STREAM_TIMEOUT, Client, resolve
from ._errors import SandboxNotFound, WarrenError
from ._filesystem import Filesystem
from ._image import Image
from ._memory import MemorySnapshot
from ._process import Process
from ._types import (
    BackgroundExecInfo,
    ConnectToken,
    ConnectTokenInfo,
    ExecResult,
    MemorySnapshotInfo,
    SandboxInfo,
    SandboxState,
    SnapshotInfo,
    Termination,
    Tunnels,
    parse,
)

MAX_WAIT_SECS = 300
"""Longest single long-poll the server allows (``/wait``, ``/wait-ready``)."""

Port = int | Mapping[str, Any]
"""An exposed port: a number, or ``{"port": N, "require_token": True}``."""

_UNCHANGED: Any = object()


def _probe(probe: int | Sequence[str] | Mapping[str, Any] | None) -> Any:
    """A readiness probe: a TCP port, an exec argv, or the API's object."""
    if probe is None or isinstance(probe, Mapping):
        return probe
    if isinstance(probe, int):
        return {"tcp": probe}
    return {"exec": list(probe)}


def _argv(command: Sequence[str] | str | None) -> list[str] | None:
    if command is None:
        return None
    return ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)


def _exec_start(
    command: Sequence[str],
    *,
    env: Mapping[str, str] | None,
    workdir: str | None,
    user: str | None,
    timeout: int | None,
    pty: bool | tuple[int, int],
) -> dict[str, Any]:
    start: dict[str, Any] = {"command": list(command), "env": dict(env or {})}
    if workdir is not None:
        start["workdir"] = workdir
    if user is not None:
        start["user"] = user
    if timeout is not None:
        start["timeout_secs"] = int(timeout)
    if pty:
        rows, cols = (24, 80) if isinstance(pty, bool) else pty
        start["tty"] = {"rows": rows, "cols": cols}
    return start


class Sandbox:
    """A sandbox on a Warren server.

    Get one with :meth:`create`, :meth:`from_id`, :meth:`from_name` or
    :meth:`list`. Attributes (``id``, ``name``, ``tags``, ``state``,
    ``termination``) come from the last answer the SDK got; :meth:`refresh`
    asks again. Used as a context manager, the sandbox is terminated at
    the end of the block.
    """

    filesystem: Filesystem
    """The sandbox's files."""

    def __init__(self, info: SandboxInfo, client: Client) -> None:
        self._info = info
        self._client = client
        self.filesystem = Filesystem(client, info.id)

    def __repr__(self) -> str:
        return f"<Sandbox {self.id} {self.state.value}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sandbox) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def _base(self) -> str:
        return f"/v1/sandboxes/{self.id}"

    # ----------------------------------------------------------- lifecycle ---

    @classmethod
    async def create(
        cls,
        image: str | Image | None = None,
        command: Sequence[str] | str | None = None,
        *,
        timeout: int | None = None,
        idle_timeout: int | None = None,
        cpu: float | None = None,
        memory: int | None = None,
        disk: int | None = None,
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        user: str | None = None,
        name: str | None = None,
        tags: Mapping[str, str] | None = None,
        block_network: bool = False,
        outbound_cidr_allowlist: Sequence[str] | None = None,
        encrypted_ports: Iterable[Port] = (),
        h2_ports: Iterable[Port] = (),
        unencrypted_ports: Iterable[int] = (),
        readiness_probe: int | Sequence[str] | Mapping[str, Any] | None = None,
        mounts: Mapping[str, str | Image] | None = None,
        use_image_command: bool = False,
        memory_snapshots: bool = False,
        auto_resume: bool = False,
        on_idle: str | None = None,
        from_memory_snapshot: str | MemorySnapshot | None = None,
        client: Client | None = None,
    ) -> Sandbox:
        """Creates a sandbox and returns it once running.

        ``image``: a reference, or an :class:`Image` (built first if it has
        unbuilt steps); the server's ``host`` image by default. ``command``:
        the main command (argv, or a string run by ``/bin/sh -c``); without
        one the sandbox idles and is used through :meth:`exec`.
        ``timeout``/``idle_timeout`` in seconds, ``cpu`` in cores,
        ``memory`` and ``disk`` in MiB. ``readiness_probe``: a TCP port or
        an argv. ``mounts``: path → image, mounted read-only.
        ``memory_snapshots``: create it checkpointable
        (:meth:`snapshot_memory`, :meth:`fork`, :meth:`pause`), implied by
        ``auto_resume`` (a paused sandbox resumes on the next exec, file
        operation or tunnel connection) and ``on_idle="pause"`` (the idle
        timeout pauses instead of terminating). ``from_memory_snapshot``:
        restore that memory snapshot as the new sandbox (then ``image``,
        ``command``, ``env``, ``workdir`` and ``user`` must not be given).
        Never retried.
        """
        c = resolve(client)
        body: dict[str, Any] = {
            "env": dict(env or {}),
            "tags": dict(tags or {}),
            "block_network": block_network,
            "use_image_command": use_image_command,
            "encrypted_ports": list(encrypted_ports),
            "h2_ports": list(h2_ports),
            "unencrypted_ports": list(unencrypted_ports),
        }
        optional = {
            "image": await image._resolved(c) if isinstance(image, Image) else image,
            "command": _argv(command),
            "timeout_secs": timeout,
            "idle_timeout_secs": idle_timeout,
            "cpu": cpu,
            "memory_mib": memory,
            "disk_mib": disk,
            "workdir": workdir,
            "user": user,
            "name": name,
            "outbound_cidr_allowlist": (
                None if outbound_cidr_allowlist is None else list(outbound_cidr_allowlist)
            ),
            "readiness_probe": _probe(readiness_probe),
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        if memory_snapshots:
            body["memory_snapshots"] = True
        if auto_resume:
            body["auto_resume"] = True
        if on_idle is not None:
            body["on_idle"] = on_idle
        if from_memory_snapshot is not None:
            body["from_memory_snapshot"] = (
                from_memory_snapshot.id
                if isinstance(from_memory_snapshot, MemorySnapshot)
                else from_memory_snapshot
            )
        if mounts:
            body["mounts"] = [
                {"path": p, "image": await _image_ref(i, c)} for p, i in mounts.items()
            ]
        # A create may pull its image first: allow for it.
        data = await c.json("POST", "/v1/sandboxes", json=body, timeout=STREAM_TIMEOUT)
        return cls(SandboxInfo.from_json(data), c)

    @classmethod
    async def from_id(cls, sandbox_id: str, *, client: Client | None = None) -> Sandbox:
        """The sandbox with this id; raises :class:`~warren.SandboxNotFound`."""
        c = resolve(client)
        data = await c.json("GET", f"/v1/sandboxes/{sandbox_id}")
        return cls(SandboxInfo.from_json(data), c)

    @classmethod
    async def from_name(cls, name: str, *, client: Client | None = None) -> Sandbox:
        """The live sandbox with this name (names are unique among live
        sandboxes); raises :class:`~warren.SandboxNotFound`."""
        for sb in await cls.list(name=name, client=client):
            if sb.state != SandboxState.TERMINATED:
                return sb
        raise SandboxNotFound("sandbox_not_found", f"no live sandbox named {name!r}", 404)

    @classmethod
    async def list(
        cls,
        *,
        tags: Mapping[str, str] | None = None,
        state: str | SandboxState | None = None,
        name: str | None = None,
        page_size: int = 100,
        client: Client | None = None,
    ) -> list[Sandbox]:
        """Sandboxes of this workspace, newest first, filtered by ``tags``
        (all must match), ``state`` and ``name``; every page is fetched."""
        c = resolve(client)
        base: list[tuple[str, Any]] = [("tag", f"{k}={v}") for k, v in (tags or {}).items()]
        if state is not None:
            base.append(("state", SandboxState(state).value))
        if name is not None:
            base.append(("name", name))
        base.append(("limit", page_size))
        out: list[Sandbox] = []
        cursor: str | None = None
        while True:
            params = base + ([("cursor", cursor)] if cursor else [])
            page = await c.json("GET", "/v1/sandboxes", params=params)
            out.extend(cls(SandboxInfo.from_json(s), c) for s in page["sandboxes"])
            cursor = page.get("next_cursor")
            if not cursor:
                return out

    @property
    def id(self) -> str:
        """The sandbox id (``sb-...``), as the API and CLI show it."""
        return self._info.id

    @property
    def name(self) -> str | None:
        return self._info.name

    @property
    def tags(self) -> dict[str, str]:
        return dict(self._info.tags)

    @property
    def state(self) -> SandboxState:
        return self._info.state

    @property
    def info(self) -> SandboxInfo:
        """Everything the last answer said about the sandbox."""
        return self._info

    @property
    def termination(self) -> Termination | None:
        """How the sandbox ended (None while it lives), as last seen."""
        return self._info.termination

    async def refresh(self) -> SandboxInfo:
        """Fetches the sandbox's current state."""
        self._info = SandboxInfo.from_json(await self._client.json("GET", self._base))
        return self._info

    async def set_tags(self, tags: Mapping[str, str]) -> None:
        """Replaces all tags."""
        data = await self._client.json("PUT", f"{self._base}/tags", json={"tags": dict(tags)})
        self._info = SandboxInfo.from_json(data)

    async def terminate(self) -> Termination | None:
        """Ends the sandbox (idempotent); returns how it ended."""
        data = await self._client.json("POST", f"{self._base}/terminate", idempotent=True)
        self._info = SandboxInfo.from_json(data)
        return self.termination

    async def poll(self) -> Termination | None:
        """None while the sandbox lives, else how it ended."""
        await self.refresh()
        return self.termination

    async def wait(self, timeout: float | None = None) -> Termination:
        """Waits until the sandbox ends; returns how. Raises
        ``TimeoutError`` after ``timeout`` seconds (None: no limit)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = MAX_WAIT_SECS if deadline is None else deadline - time.monotonic()
            if self._info.termination is not None and self.state == SandboxState.TERMINATED:
                return self._info.termination
            if left <= 0:
                raise TimeoutError(f"sandbox {self.id} still running after {timeout} s")
            secs = max(1, min(MAX_WAIT_SECS, int(left + 0.999)))
            data = await self._client.json(
                "GET",
                f"{self._base}/wait",
                params={"timeout_secs": secs},
                timeout=secs + self._client.timeout,
                long=True,
            )
            self._info = SandboxInfo.from_json(data)

    async def logs(self, tail: int | None = None) -> str:
        """The main command's output (stdout and stderr interleaved; the
        newest 1 MiB, or the last ``tail`` bytes)."""
        resp = await self._client.request("GET", f"{self._base}/logs", params={"tail": tail})
        return resp.text

    async def __aenter__(self) -> Sandbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.terminate()

    # ---------------------------------------------------------------- exec ---

    async def exec(
        self,
        *command: str,
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        user: str | None = None,
        timeout: int | None = None,
        pty: bool | tuple[int, int] = False,
        text: bool = True,
        encoding: str = "utf-8",
        stdin: bool = True,
    ) -> Process:
        """Starts ``command`` over a streaming connection; returns the
        running :class:`Process`. ``timeout`` (seconds) kills it on the
        server; ``pty`` runs it on a terminal (``True`` for 24x80, or
        ``(rows, cols)``); ``text=False`` reads output as bytes;
        ``stdin=False`` closes its stdin at once. Never retried."""
        start = _exec_start(command, env=env, workdir=workdir, user=user, timeout=timeout, pty=pty)
        return await Process._open(
            self._client,
            f"{self._base}/exec/stream",
            start,
            text=text,
            encoding=encoding,
            stdin=stdin,
        )

    async def run(
        self,
        *command: str,
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        user: str | None = None,
        timeout: int | None = None,
        input: str | None = None,
    ) -> ExecResult:
        """Runs ``command`` to completion in one call and returns its
        buffered output (up to 1 MiB per stream; ``*_truncated`` says when
        more was dropped). ``input`` is written to its stdin."""
        body = _exec_start(command, env=env, workdir=workdir, user=user, timeout=timeout, pty=False)
        if input is not None:
            body["stdin"] = input
        data = await self._client.json(
            "POST",
            f"{self._base}/exec",
            json=body,
            timeout=STREAM_TIMEOUT if timeout is None else timeout + self._client.timeout,
        )
        return parse(ExecResult, data)

    async def exec_background(
        self,
        *command: str,
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        user: str | None = None,
        timeout: int | None = None,
        pty: bool | tuple[int, int] = False,
    ) -> BackgroundExec:
        """Starts ``command`` detached from any connection; its output
        (stdout and stderr interleaved, the newest 1 MiB) is kept on the
        server. Never retried."""
        start = _exec_start(command, env=env, workdir=workdir, user=user, timeout=timeout, pty=pty)
        data = await self._client.json("POST", f"{self._base}/execs", json=start)
        return BackgroundExec(self, parse(BackgroundExecInfo, data))

    async def background_execs(self) -> builtins.list[BackgroundExec]:
        """The sandbox's background execs (ended ones for 10 minutes)."""
        data = await self._client.json("GET", f"{self._base}/execs")
        return [BackgroundExec(self, parse(BackgroundExecInfo, e)) for e in data["execs"]]

    # ------------------------------------------------------------- network ---

    async def wait_ready(self, timeout: float = 30) -> None:
        """Waits until the readiness probe passes. Raises
        :class:`~warren.NotReady` after ``timeout`` seconds and
        :class:`~warren.SandboxTerminated` if the sandbox ended."""
        deadline = time.monotonic() + timeout
        while True:
            secs = max(1, min(MAX_WAIT_SECS, int(deadline - time.monotonic() + 0.999)))
            try:
                await self._client.json(
                    "GET",
                    f"{self._base}/wait-ready",
                    params={"timeout_secs": secs},
                    timeout=secs + self._client.timeout,
                    long=True,
                )
                return
            except WarrenError as e:
                if e.code != "not_ready" or time.monotonic() >= deadline:
                    raise

    async def update_network(
        self,
        *,
        block_network: bool | None = None,
        outbound_cidr_allowlist: Sequence[str] | None = _UNCHANGED,
    ) -> None:
        """Changes the egress policy at run time: arguments left out keep
        their value; ``outbound_cidr_allowlist=None`` removes the allowlist."""
        body: dict[str, Any] = {}
        if block_network is not None:
            body["block_network"] = block_network
        if outbound_cidr_allowlist is not _UNCHANGED:
            allow = outbound_cidr_allowlist
            body["outbound_cidr_allowlist"] = None if allow is None else list(allow)
        data = await self._client.json("PATCH", f"{self._base}/network", json=body, idempotent=True)
        self._info = SandboxInfo.from_json(data)

    async def tunnels(self) -> Tunnels:
        """Exposed ports → :class:`Tunnel` (``url``, ``host``, ``tls``,
        ``raw``), with the relay CA as ``.ca_pem``/``.ca_fingerprint``."""
        return Tunnels.from_json(await self._client.json("GET", f"{self._base}/tunnels"))

    async def connect_token(
        self, port: int, *, user_data: str | None = None, ttl: int | None = None
    ) -> ConnectToken:
        """A token admitting requests to a ``require_token`` port; the
        relay passes ``user_data`` on as ``X-Warren-User-Data``."""
        body: dict[str, Any] = {"port": port}
        if user_data is not None:
            body["user_data"] = user_data
        if ttl is not None:
            body["ttl_secs"] = ttl
        data = await self._client.json("POST", f"{self._base}/connect-token", json=body)
        return parse(ConnectToken, data)

    async def connect_tokens(self) -> builtins.list[ConnectTokenInfo]:
        """The sandbox's connect tokens (metadata only)."""
        data = await self._client.json("GET", f"{self._base}/connect-tokens")
        return [parse(ConnectTokenInfo, t) for t in data["tokens"]]

    async def revoke_connect_token(self, token_id: str) -> None:
        """Revokes a connect token."""
        await self._client.request("DELETE", f"{self._base}/connect-tokens/{token_id}")

    # ----------------------------------------------------------- snapshots ---

    async def snapshot_filesystem(
        self, *, name: str | None = None, ttl: int | None = None
    ) -> Image:
        """Captures the sandbox's filesystem as a new image (the sandbox
        keeps running); usable as ``image=`` of a new sandbox."""
        body = {k: v for k, v in (("name", name), ("ttl_secs", ttl)) if v is not None}
        return await self._snapshot("snapshot-filesystem", body)

    async def snapshot_directory(
        self, path: str, *, name: str | None = None, ttl: int | None = None
    ) -> Image:
        """Captures one directory as a single-layer image (for ``mounts``)."""
        body: dict[str, Any] = {"path": path}
        body.update({k: v for k, v in (("name", name), ("ttl_secs", ttl)) if v is not None})
        return await self._snapshot("snapshot-directory", body)

    async def _snapshot(self, kind: str, body: dict[str, Any]) -> Image:
        data = await self._client.json("POST", f"{self._base}/{kind}", json=body)
        snap = parse(SnapshotInfo, data)
        image = Image(snap.image_id, snapshot=snap)
        image._built = snap.image_id
        return image

    # ---------------------------------------------------- memory snapshots ---

    async def snapshot_memory(self, *, ttl: int | None = None) -> MemorySnapshot:
        """Checkpoints the whole sandbox (processes, memory, files) into a
        memory snapshot; the sandbox keeps running. Restore it with
        ``Sandbox.create(from_memory_snapshot=snap)``. ``ttl``: remove it
        after that many seconds."""
        body = {} if ttl is None else {"ttl_secs": int(ttl)}
        data = await self._client.json(
            "POST", f"{self._base}/snapshot-memory", json=body, timeout=STREAM_TIMEOUT
        )
        return MemorySnapshot(parse(MemorySnapshotInfo, data), self._client)

    async def fork(self, n: int = 1) -> builtins.list[Sandbox]:
        """``n`` (1-32) running copies of the sandbox, each with its own
        id, hostname and address, continuing from this instant; the sandbox
        keeps running. All or nothing."""
        data = await self._client.json(
            "POST", f"{self._base}/fork", json={"count": int(n)}, timeout=STREAM_TIMEOUT
        )
        return [Sandbox(SandboxInfo.from_json(d), self._client) for d in data["sandboxes"]]

    async def pause(self) -> None:
        """Checkpoints the sandbox and releases its memory and CPU; it
        keeps its id (state ``paused``; no timeout runs while paused)."""
        data = await self._client.json("POST", f"{self._base}/pause", timeout=STREAM_TIMEOUT)
        self._info = SandboxInfo.from_json(data)

    async def resume(self) -> None:
        """Brings a paused sandbox back under the same id and tunnel URLs
        (a no-op when it runs)."""
        data = await self._client.json("POST", f"{self._base}/resume", timeout=STREAM_TIMEOUT)
        self._info = SandboxInfo.from_json(data)

    async def mount_image(self, path: str, image: str | Image) -> None:
        """Mounts an image read-only at ``path`` in the running sandbox."""
        body = {"path": path, "image": await _image_ref(image, self._client)}
        data = await self._client.json("POST", f"{self._base}/mounts", json=body)
        self._info = SandboxInfo.from_json(data)


async def _image_ref(image: str | Image, client: Client) -> str:
    return await image._resolved(client) if isinstance(image, Image) else image


class BackgroundExec:
    """A detached exec: its output stays on the server; attach, signal or
    kill it at any time."""

    def __init__(self, sandbox: Sandbox, info: BackgroundExecInfo) -> None:
        self._sandbox = sandbox
        self._info = info

    def __repr__(self) -> str:
        return f"<BackgroundExec {self.id} {self._info.state}>"

    @property
    def id(self) -> str:
        return self._info.id

    @property
    def info(self) -> BackgroundExecInfo:
        """The state as last seen (:meth:`refresh` asks again)."""
        return self._info

    @property
    def _path(self) -> str:
        return f"{self._sandbox._base}/execs/{self.id}"

    async def refresh(self) -> BackgroundExecInfo:
        """Fetches the exec's current state."""
        data = await self._sandbox._client.json("GET", self._path)
        self._info = parse(BackgroundExecInfo, data)
        return self._info

    async def output(self, tail: int | None = None) -> bytes:
        """The buffered output (the newest 1 MiB, or the last ``tail`` bytes)."""
        resp = await self._sandbox._client.request(
            "GET", f"{self._path}/output", params={"tail": tail}
        )
        return resp.content

    async def wait(self, timeout: float = 60, interval: float = 0.1) -> BackgroundExecInfo:
        """Polls until the exec has exited; raises ``TimeoutError``."""
        deadline = time.monotonic() + timeout
        while (await self.refresh()).state == "running":
            if time.monotonic() >= deadline:
                raise TimeoutError(f"background exec {self.id} still running")
            await asyncio.sleep(interval)
        return self._info

    async def attach(self, *, text: bool = True, encoding: str = "utf-8") -> Process:
        """Attaches: the buffered output, then live output, as a
        :class:`Process` (stdin and signals reach the exec; closing it
        detaches and the exec keeps running)."""
        return await Process._open(
            self._sandbox._client, f"{self._path}/attach", None, text=text, encoding=encoding
        )

    async def signal(self, signal: int) -> None:
        """Sends ``signal`` to the exec's process group."""
        await self._sandbox._client.request("POST", f"{self._path}/signal", json={"signal": signal})

    async def kill(self) -> None:
        """Kills the exec (SIGKILL to its process group) and forgets it."""
        await self._sandbox._client.request("DELETE", self._path)
