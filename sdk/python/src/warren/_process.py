"""Streaming execs over the WebSocket (``GET .../exec/stream`` and
``.../execs/{id}/attach``).

One pump task per process reads every frame as it arrives and files
stdout and stderr into per-stream buffers, so neither stream can block the
other. The pump stops taking frames (and the server, back-pressured, stops
reading the process) while a stream's buffer is over
:data:`BUFFER_LIMIT` and nobody is waiting on an empty buffer; a reader or
``wait()`` that waits lets it go on, so reading only one stream, or only
waiting, never deadlocks.
"""

from __future__ import annotations

import asyncio
import codecs
import json
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from ._client import Client
from ._errors import ExecTimeout, WarrenConnectionError, WarrenError, error_for, error_from_body

BUFFER_LIMIT = 4 << 20
"""Bytes buffered per stream before the pump waits for a reader."""

STDIN_FRAME = 64 * 1024
"""Largest stdin payload per frame; longer writes are split."""

MAX_FRAME = 4 << 20
"""Largest frame accepted from the server (it sends at most 64 KiB of data)."""

START_TIMEOUT = 60.0
"""Seconds the server may take to answer the start frame."""

SIGKILL = 9
SIGTERM = 15


class _Stream:
    """The buffered output of one stream, shared by the pump and a reader."""

    def __init__(self, changed: asyncio.Condition) -> None:
        self.chunks: deque[bytes] = deque()
        self.size = 0
        self.eof = False
        self.changed = changed


class StreamReader:
    """A process's stdout or stderr.

    Iterating gives lines (``str`` in text mode, ``bytes`` otherwise, with
    their line ending); :meth:`read` gives everything up to the end;
    :meth:`chunks` gives the data as it arrives, in pieces. Use one way of
    reading per stream.
    """

    def __init__(self, proc: Process, stream: _Stream, text: bool, encoding: str) -> None:
        self._proc = proc
        self._stream = stream
        self._text = text
        self._decoder = codecs.getincrementaldecoder(encoding)("replace") if text else None
        self._pending = b""

    async def _next_raw(self) -> bytes | None:
        """The next buffered chunk, waiting for one; None at the end."""
        s = self._stream
        async with s.changed:
            while not s.chunks and not s.eof:
                self._proc._waiters += 1
                s.changed.notify_all()
                try:
                    await s.changed.wait()
                finally:
                    self._proc._waiters -= 1
            if not s.chunks:
                return None
            chunk = s.chunks.popleft()
            s.size -= len(chunk)
            s.changed.notify_all()
            return chunk

    def _decode(self, data: bytes, final: bool = False) -> Any:
        if self._decoder is None:
            return data
        return self._decoder.decode(data, final)

    async def chunks(self) -> AsyncIterator[Any]:
        """The output in pieces as it arrives (at most 64 KiB each)."""
        while (chunk := await self._next_raw()) is not None:
            piece = self._decode(chunk)
            if piece:
                yield piece
        tail = self._decode(b"", True)
        if tail:
            yield tail

    async def read(self) -> Any:
        """Everything up to the end of the stream."""
        parts = [self._pending]
        self._pending = b""
        while (chunk := await self._next_raw()) is not None:
            parts.append(chunk)
        return self._decode(b"".join(parts), True)

    async def readline(self) -> Any:
        """One line with its ``\\n``; empty at the end."""
        while b"\n" not in self._pending:
            chunk = await self._next_raw()
            if chunk is None:
                line, self._pending = self._pending, b""
                return self._decode(line, True)
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        return self._decode(line + b"\n")

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._lines()

    async def _lines(self) -> AsyncIterator[Any]:
        while line := await self.readline():
            yield line


class StdinWriter:
    """A process's stdin: :meth:`write` sends (waiting while the server's
    queue is full), :meth:`close` sends end-of-file."""

    closed: bool
    """Whether :meth:`close` was called."""

    def __init__(self, proc: Process) -> None:
        self._proc = proc
        self.closed = False

    async def write(self, data: bytes | str) -> None:
        """Sends ``data`` (``str`` is encoded as UTF-8)."""
        if self.closed:
            raise ValueError("stdin is closed")
        raw = data.encode() if isinstance(data, str) else bytes(data)
        async with self._proc._waiting():
            for i in range(0, len(raw), STDIN_FRAME):
                await self._proc._send(b"\x00" + raw[i : i + STDIN_FRAME])

    async def drain(self) -> None:
        """Nothing to do: :meth:`write` returns once the data is sent."""

    async def close(self) -> None:
        """Closes the process's stdin (``stdin_eof``); idempotent."""
        if not self.closed:
            self.closed = True
            await self._proc._control({"type": "stdin_eof"})


class Process:
    """A running exec: ``stdin``, ``stdout``, ``stderr``, ``wait()``,
    ``returncode`` and signals, like :class:`subprocess.Popen`."""

    pid: int
    """The process id inside the sandbox."""
    exec_id: str | None
    """The background exec's id, for attached processes."""
    stdin: StdinWriter
    stdout: StreamReader
    stderr: StreamReader

    def __init__(
        self, ws: ClientConnection, pid: int, text: bool, encoding: str, exec_id: str | None
    ) -> None:
        self._ws = ws
        self.pid = pid
        self.exec_id = exec_id
        self._changed = asyncio.Condition()
        self._out = _Stream(self._changed)
        self._err = _Stream(self._changed)
        self._waiters = 0
        self._exit: dict[str, Any] | None = None
        self._error: WarrenError | None = None
        self._done = asyncio.Event()
        self.stdin = StdinWriter(self)
        self.stdout = StreamReader(self, self._out, text, encoding)
        self.stderr = StreamReader(self, self._err, text, encoding)
        self._pump_task = asyncio.get_running_loop().create_task(self._pump())

    @classmethod
    async def _open(
        cls,
        client: Client,
        path: str,
        start: dict[str, Any] | None,
        *,
        text: bool,
        encoding: str,
        stdin: bool = True,
    ) -> Process:
        try:
            ws = await connect(
                client.ws_url(path),
                additional_headers=client.headers,
                max_size=MAX_FRAME,
                compression=None,
                proxy=None,
                ping_interval=None,
                open_timeout=client.timeout,
                ssl=client.ssl_context(),
            )
        except InvalidStatus as e:
            raise error_from_body(e.response.status_code, bytes(e.response.body or b"")) from e
        except (TimeoutError, OSError, WebSocketException) as e:
            raise WarrenConnectionError("connection_failed", f"{path}: {e!r}") from e
        try:
            if start is not None:
                await ws.send(json.dumps(start))
            if not stdin:
                await ws.send(json.dumps({"type": "stdin_eof"}))
            pid, exec_id = await asyncio.wait_for(_started(ws), START_TIMEOUT)
        except BaseException:
            await ws.close()
            raise
        proc = cls(ws, pid, text, encoding, exec_id)
        if not stdin:
            proc.stdin.closed = True
        return proc

    async def _pump(self) -> None:
        try:
            async for msg in self._ws:
                if isinstance(msg, bytes):
                    if msg[:1] == b"\x02":
                        await self._file(self._err, msg[1:])
                    elif msg[:1] == b"\x01":
                        await self._file(self._out, msg[1:])
                    continue
                frame = json.loads(msg)
                kind = frame.get("type")
                if kind == "exit":
                    self._exit = frame
                    break
                if kind == "error":
                    self._error = error_for(frame.get("code", "error"), frame.get("message", ""))
                    break
        except ConnectionClosed as e:
            self._error = WarrenConnectionError(
                "stream_closed", f"the exec stream closed before the exit: {e}"
            )
        except asyncio.CancelledError:
            self._error = WarrenError("cancelled", "the exec stream was closed by the client")
        finally:
            if self._exit is None and self._error is None:
                self._error = WarrenConnectionError(
                    "stream_closed", "the exec stream closed before the exit"
                )
            async with self._changed:
                self._out.eof = self._err.eof = True
                self._changed.notify_all()
            self._done.set()
            await self._ws.close()

    @asynccontextmanager
    async def _waiting(self) -> AsyncIterator[None]:
        """Marks the caller as blocked on the process (waiting for the exit,
        or sending stdin the process may only take once its output is
        read): the pump buffers output without pausing meanwhile."""
        async with self._changed:
            self._waiters += 1
            self._changed.notify_all()
        try:
            yield
        finally:
            async with self._changed:
                self._waiters -= 1

    async def _file(self, stream: _Stream, data: bytes) -> None:
        if not data:
            return
        async with self._changed:
            stream.chunks.append(data)
            stream.size += len(data)
            self._changed.notify_all()
            while stream.size > BUFFER_LIMIT and self._waiters == 0:
                await self._changed.wait()

    async def _send(self, data: bytes | str) -> None:
        if self._done.is_set():
            raise WarrenError("process_exited", "the process has ended")
        try:
            await self._ws.send(data)
        except ConnectionClosed as e:
            raise WarrenConnectionError("stream_closed", f"the exec stream closed: {e}") from e

    async def _control(self, msg: dict[str, Any]) -> None:
        await self._send(json.dumps(msg))

    @property
    def returncode(self) -> int | None:
        """Shell-style exit code (128 + signal if killed); None while running."""
        return None if self._exit is None else int(self._exit["exit_code"])

    @property
    def exit_signal(self) -> int | None:
        """The signal that ended the process, if one did."""
        return None if self._exit is None else self._exit.get("signal")

    @property
    def timed_out(self) -> bool:
        """Whether the exec's ``timeout`` passed and the server killed it."""
        return bool(self._exit and self._exit.get("timed_out"))

    @property
    def oom_killed(self) -> bool:
        """Whether the kernel's OOM killer ended the process."""
        return bool(self._exit and self._exit.get("oom_killed"))

    def poll(self) -> int | None:
        """The return code if the process has ended, else None (no waiting)."""
        return self.returncode

    async def wait(self, timeout: float | None = None) -> int:
        """Waits for the exit and returns the return code; output keeps being
        buffered for later reads meanwhile.

        Raises :class:`~warren.ExecTimeout` if the exec's own ``timeout``
        killed it, ``TimeoutError`` if ``timeout`` seconds pass first, and the
        server's error if the stream failed."""
        async with self._waiting():
            await asyncio.wait_for(self._done.wait(), timeout)
        if self._error is not None:
            raise self._error
        if self.timed_out:
            raise ExecTimeout("exec_timeout", f"the exec timed out (exit code {self.returncode})")
        rc = self.returncode
        assert rc is not None
        return rc

    async def signal(self, signal: int) -> None:
        """Sends ``signal`` to the process group."""
        await self._control({"type": "signal", "signal": signal})

    async def terminate(self) -> None:
        """Sends SIGTERM."""
        await self.signal(SIGTERM)

    async def kill(self) -> None:
        """Sends SIGKILL."""
        await self.signal(SIGKILL)

    async def resize(self, rows: int, cols: int) -> None:
        """Resizes the terminal of a PTY exec."""
        await self._control({"type": "resize", "rows": rows, "cols": cols})

    async def close(self) -> None:
        """Drops the connection: a streaming exec is killed, an attached
        background exec keeps running."""
        self._pump_task.cancel()
        await asyncio.gather(self._pump_task, return_exceptions=True)

    async def __aenter__(self) -> Process:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<Process pid={self.pid} returncode={self.returncode}>"


async def _started(ws: ClientConnection) -> tuple[int, str | None]:
    """Reads frames until ``started`` (or ``attached``); an ``error`` frame or
    a close before it is why the exec could not start."""
    try:
        while True:
            msg = await ws.recv()
            if isinstance(msg, bytes):
                continue
            frame = json.loads(msg)
            kind = frame.get("type")
            if kind == "started":
                return int(frame["pid"]), None
            if kind == "attached":
                return int(frame["pid"]), str(frame["exec_id"])
            if kind == "error":
                raise error_for(frame.get("code", "error"), frame.get("message", ""))
            if kind == "exit":
                raise WarrenError("bad_response", "the server sent exit before started")
    except ConnectionClosed as e:
        raise WarrenConnectionError("stream_closed", f"closed before the start: {e}") from e
