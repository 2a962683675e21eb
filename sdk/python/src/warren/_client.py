"""The HTTP transport: configuration, one pooled ``httpx`` client per event
loop, error mapping, and retries for idempotent calls.

A :class:`Client` may be shared by many threads and by the sync and async
APIs at once: every event loop that uses it gets its own connection pool
(an ``httpx.AsyncClient`` belongs to one loop), created on first use.
"""

from __future__ import annotations

import asyncio
import os
import random
import ssl
import threading
import weakref
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, NamedTuple
from urllib.parse import quote

import httpx

from ._errors import WarrenConnectionError, error_from_body, is_api_error

DEFAULT_URL = "http://127.0.0.1:7070"
"""Where the SDK looks for a server when neither ``url=`` nor ``WARREN_URL`` is set."""

DEFAULT_TIMEOUT = 60.0
"""Seconds a plain request may take (connect, and each read)."""

STREAM_TIMEOUT = 3600.0
"""Seconds between two reads of a long stream (pulls, builds, file transfers)."""

RETRY_STATUSES = frozenset({502, 503, 504})
"""Statuses retried for idempotent calls, unless Warren itself answered
with one of :data:`FINAL_CODES`."""

FINAL_CODES = frozenset({"relay_unavailable", "push_failed", "capacity_exhausted"})
"""Warren error codes that are answers, not transient failures."""

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE"})

MAX_CONNECTIONS = 100
"""Default number of calls a client has in flight at once (per event loop)."""

MAX_LONG_POLLS = 1000
"""Default number of long polls and event streams a client has open at once
(per event loop), besides its other calls."""

Params = Mapping[str, str | int | float | bool | bytes | None] | Sequence[tuple[str, Any]]


def encode_query(params: Params | None) -> str:
    """A query string; ``bytes`` values are percent-encoded byte for byte
    (file paths need not be UTF-8), ``None`` values are left out, booleans
    are ``true``/``false``."""
    if params is None:
        return ""
    items = params.items() if isinstance(params, Mapping) else params
    parts = []
    for key, value in items:
        if value is None:
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        raw = value if isinstance(value, bytes) else str(value).encode()
        parts.append(f"{key}={quote(raw, safe='/')}")
    return "&".join(parts)


def segment(value: str) -> str:
    """One path segment, percent-encoded (image references contain ``/``)."""
    return quote(value, safe="")


class Client:
    """Connection settings and pooled connections to one Warren server.

    ``url`` and ``token`` default to the ``WARREN_URL`` and ``WARREN_TOKEN``
    environment variables (and ``http://127.0.0.1:7070``). ``retries`` is how
    many times an idempotent call is retried after a connection error or a
    502/503/504, with exponential backoff from ``backoff`` seconds plus
    jitter. Creates and execs are never retried. ``verify``: ``False``, or
    the path of a CA bundle, for an ``https`` server with its own CA.
    ``max_connections``: calls in flight at once; more wait their turn, in
    order. Long polls and event streams (``wait``, ``wait_ready``, watches,
    build, pull and push events) have a lane of their own, up to
    ``max_long_polls`` at once, so waiting on many sandboxes never holds up
    the other calls.
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = 3,
        backoff: float = 0.2,
        verify: bool | str = True,
        max_connections: int = MAX_CONNECTIONS,
        max_long_polls: int = MAX_LONG_POLLS,
    ) -> None:
        self.url = (url or os.environ.get("WARREN_URL") or DEFAULT_URL).rstrip("/")
        self.token = token if token is not None else os.environ.get("WARREN_TOKEN", "")
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.verify = verify
        for what, n in (("max_connections", max_connections), ("max_long_polls", max_long_polls)):
            if n < 1:
                raise ValueError(f"{what} must be at least 1, not {n}")
        self.max_connections = max_connections
        self.max_long_polls = max_long_polls
        self._lock = threading.Lock()
        self._pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Pool] = (
            weakref.WeakKeyDictionary()
        )

    def __repr__(self) -> str:
        return f"Client(url={self.url!r})"

    @property
    def headers(self) -> dict[str, str]:
        """The headers every call carries (the bearer token)."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def ws_url(self, path: str) -> str:
        """The WebSocket URL of an API path (``http`` → ``ws``)."""
        if self.url.startswith("https://"):
            return "wss://" + self.url[len("https://") :] + path
        return "ws://" + self.url.removeprefix("http://") + path

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS settings of ``verify`` for WebSocket connections (None
        for plain ``http`` servers)."""
        if not self.url.startswith("https://"):
            return None
        if self.verify is False:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            return ctx
        cafile = self.verify if isinstance(self.verify, str) else None
        return ssl.create_default_context(cafile=cafile)

    def _pool(self) -> _Pool:
        loop = asyncio.get_running_loop()
        with self._lock:
            pool = self._pools.get(loop)
            if pool is None:
                pool = _Pool(
                    calls=self._lane(self.max_connections, keepalive=20),
                    long=self._lane(self.max_long_polls, keepalive=10),
                )
                self._pools[loop] = pool
            return pool

    def _lane(self, size: int, keepalive: int) -> _Lane:
        http = httpx.AsyncClient(
            base_url=self.url,
            headers=self.headers,
            timeout=httpx.Timeout(self.timeout),
            verify=self.verify,
            trust_env=False,
            limits=httpx.Limits(
                max_connections=size, max_keepalive_connections=min(keepalive, size)
            ),
        )
        return _Lane(http, asyncio.Semaphore(size))

    async def aclose(self) -> None:
        """Closes the connection pool of the running event loop."""
        with self._lock:
            pool = self._pools.pop(asyncio.get_running_loop(), None)
        if pool is not None:
            await pool.calls.http.aclose()
            await pool.long.http.aclose()

    def close(self) -> None:
        """Closes the pool the sync API uses (the SDK's background loop)."""
        from ._sync import bridge

        if bridge.started:
            bridge.run(self.aclose())

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Sends one call (the arguments of :meth:`stream`) and reads the
        whole answer; a non-2xx answer raises its typed
        :class:`~warren.WarrenError`."""
        async with self.stream(method, path, **kwargs) as resp:
            await resp.aread()
            return resp

    async def json(self, method: str, path: str, **kwargs: Any) -> Any:
        """Like :meth:`request`, decoding the JSON answer."""
        resp = await self.request(method, path, **kwargs)
        return resp.json()

    @asynccontextmanager
    async def stream(
        self,
        method: str,
        path: str,
        *,
        params: Params | None = None,
        json: Any = None,
        content: bytes | AsyncIterator[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool | None = None,
        timeout: float | None = None,
        long: bool = False,
    ) -> AsyncIterator[httpx.Response]:
        """Sends one call and yields the answer with its body unread.

        Retries (idempotent calls with a replayable body only) happen
        before any of the answer is handed out. ``long``: a long poll or an
        event stream, sent in the long lane."""
        if idempotent is None:
            idempotent = method in IDEMPOTENT_METHODS
        replayable = content is None or isinstance(content, bytes)
        attempts = 1 + (self.retries if idempotent and replayable else 0)
        query = encode_query(params)
        url = f"{path}?{query}" if query else path
        pool = self._pool()
        lane = pool.long if long else pool.calls
        # Calls beyond the lane's size wait here, in order, rather than in
        # httpx's own queue, whose cost grows with the square of its length
        # (profiled: 200 calls at once spent 75% of the client's CPU there).
        # A held slot is bounded by the call's own timeouts.
        async with (
            lane.gate,
            self._attempts(
                lane.http, method, url, path, attempts, json, content, headers, timeout
            ) as resp,
        ):
            yield resp

    @asynccontextmanager
    async def _attempts(
        self,
        http: httpx.AsyncClient,
        method: str,
        url: str,
        path: str,
        attempts: int,
        json: Any,
        content: bytes | AsyncIterator[bytes] | None,
        headers: Mapping[str, str] | None,
        timeout: float | None,
    ) -> AsyncIterator[httpx.Response]:
        """Sends the call up to ``attempts`` times (see :meth:`stream`)."""
        to = (
            httpx.Timeout(timeout, connect=min(timeout, self.timeout))
            if timeout is not None
            else httpx.USE_CLIENT_DEFAULT
        )
        for attempt in range(attempts):
            last = attempt == attempts - 1
            req = http.build_request(
                method, url, json=json, content=content, headers=headers, timeout=to
            )
            try:
                resp = await http.send(req, stream=True)
            except httpx.TransportError as e:
                if last:
                    raise WarrenConnectionError(
                        "connection_failed", f"{method} {self.url}{path}: {e!r}"
                    ) from e
                await self._sleep(attempt)
                continue
            try:
                if resp.is_success:
                    yield resp
                    return
                body = await resp.aread()
                if not last and resp.status_code in RETRY_STATUSES and not _final(body):
                    await self._sleep(attempt)
                    continue
                raise error_from_body(resp.status_code, body)
            except httpx.TransportError as e:
                raise WarrenConnectionError(
                    "connection_failed", f"{method} {self.url}{path}: {e!r}"
                ) from e
            finally:
                await resp.aclose()

    async def _sleep(self, attempt: int) -> None:
        delay = self.backoff * (2**attempt)
        await asyncio.sleep(delay + random.uniform(0, delay))


class _Lane(NamedTuple):
    """Connections, and the gate in front of them."""

    http: httpx.AsyncClient
    gate: asyncio.Semaphore


class _Pool(NamedTuple):
    """One event loop's lanes: ordinary calls, and long polls and event
    streams."""

    calls: _Lane
    long: _Lane


def _final(body: bytes) -> bool:
    if not is_api_error(body):
        return False
    err = error_from_body(0, body)
    return err.code in FINAL_CODES


_default: Client | None = None
_default_lock = threading.Lock()


def resolve(client: Client | None) -> Client:
    """``client``, or the process-wide default built from the environment."""
    global _default
    if client is not None:
        return client
    with _default_lock:
        if _default is None:
            _default = Client()
        return _default
