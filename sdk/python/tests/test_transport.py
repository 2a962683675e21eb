"""The transport without a Warren server: retries against a loopback stub,
error mapping, query encoding; and the sync bridge's threading."""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
import time
from collections.abc import Iterator

import pytest

import warren
from warren import _errors
from warren._client import encode_query


class Stub(http.server.ThreadingHTTPServer):
    """Answers 503 (no Warren envelope) ``failures`` times, then 200."""

    daemon_threads = True

    def __init__(
        self,
        failures: int,
        status: int = 503,
        body: bytes = b"upstream down",
        ok_body: bytes = b'{"images": []}',
    ) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.failures = failures
        self.status = status
        self.body = body
        self.ok_body = ok_body
        self.calls: list[str] = []
        self.bodies: list[bytes] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(http.server.BaseHTTPRequestHandler):
    server: Stub

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.server.bodies.append(self.rfile.read(length))
        self.server.calls.append(self.command)
        if len(self.server.calls) <= self.server.failures:
            status, body = self.server.status, self.server.body
        else:
            status, body = 200, self.server.ok_body
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def stub_factory() -> Iterator[list[Stub]]:
    stubs: list[Stub] = []
    yield stubs
    for s in stubs:
        s.shutdown()
        s.server_close()


def start(stubs: list[Stub], failures: int, **kw: object) -> Stub:
    s = Stub(failures, **kw)  # type: ignore[arg-type]
    threading.Thread(target=s.serve_forever, daemon=True).start()
    stubs.append(s)
    return s


def test_idempotent_calls_are_retried(stub_factory: list[Stub]) -> None:
    stub = start(stub_factory, failures=2)
    c = warren.Client(url=stub.url, token="t", retries=3, backoff=0.01)
    assert warren.Image.list(client=c) == []
    assert stub.calls == ["GET", "GET", "GET"]


def test_retries_give_up(stub_factory: list[Stub]) -> None:
    stub = start(stub_factory, failures=10, status=502)
    c = warren.Client(url=stub.url, token="t", retries=2, backoff=0.01)
    with pytest.raises(warren.WarrenError) as e:
        warren.Image.list(client=c)
    assert (e.value.code, e.value.status) == ("http_502", 502)
    assert len(stub.calls) == 3


def test_creates_are_not_retried(stub_factory: list[Stub]) -> None:
    stub = start(stub_factory, failures=2)
    c = warren.Client(url=stub.url, token="t", retries=3, backoff=0.01)
    with pytest.raises(warren.WarrenError):
        warren.Sandbox.create(client=c)
    assert stub.calls == ["POST"]


def test_warren_answers_are_final(stub_factory: list[Stub]) -> None:
    body = json.dumps({"error": {"code": "relay_unavailable", "message": "no relay"}}).encode()
    stub = start(stub_factory, failures=5, body=body)
    c = warren.Client(url=stub.url, token="t", retries=3, backoff=0.01)
    with pytest.raises(warren.NetworkError):
        warren.Image.list(client=c)
    assert len(stub.calls) == 1


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        ("unauthenticated", warren.AuthError),
        ("forbidden", warren.AuthError),
        ("invalid_json", warren.InvalidArgument),
        ("invalid_argument", warren.InvalidArgument),
        ("exec_permission_denied", warren.CommandError),
        ("sandbox_not_found", warren.SandboxNotFound),
        ("image_not_found", warren.ImageNotFound),
        ("not_found", warren.NotFound),
        ("name_conflict", warren.NameConflict),
        ("sandbox_terminated", warren.SandboxTerminated),
        ("sandbox_not_running", warren.SandboxNotRunning),
        ("capacity_exhausted", warren.CapacityExhausted),
        ("image_in_use", warren.ImageInUse),
        ("registry_auth", warren.RegistryError),
        ("digest_mismatch", warren.ImageError),
        ("file_not_found", warren.FileNotFound),
        ("file_exists", warren.FileExists),
        ("permission_denied", warren.PermissionDenied),
        ("is_a_directory", warren.IsADirectory),
        ("not_a_directory", warren.NotADirectory),
        ("directory_not_empty", warren.DirectoryNotEmpty),
        ("no_space", warren.NoSpace),
        ("symlink_loop", warren.FilesystemError),
        ("port_not_exposed", warren.NetworkError),
        ("not_ready", warren.NotReady),
        ("snapshot_failed", warren.SnapshotFailed),
        ("build_step_failed", warren.BuildError),
        ("internal", warren.InternalError),
    ],
)
def test_error_mapping(code: str, cls: type[warren.WarrenError]) -> None:
    body = json.dumps({"error": {"code": code, "message": "m"}}).encode()
    err = _errors.error_from_body(400, body)
    assert type(err) is cls and (err.code, err.message, err.status) == (code, "m", 400)
    assert str(err) == f"{code}: m (HTTP 400)"


def test_unknown_codes_and_non_json() -> None:
    err = _errors.error_from_body(418, b'{"error": {"code": "teapot", "message": "short"}}')
    assert type(err) is warren.WarrenError and err.code == "teapot"
    err = _errors.error_from_body(502, b"<html>bad gateway</html>")
    assert (err.code, err.message) == ("http_502", "<html>bad gateway</html>")


def test_query_encoding() -> None:
    q = encode_query({"path": b"/tmp/a b/\xff%", "flag": True, "skip": None, "n": 3})
    assert q == "path=/tmp/a%20b/%FF%25&flag=true&n=3"


def test_sync_api_from_the_loop_thread_is_refused(stub_factory: list[Stub]) -> None:
    stub = start(stub_factory, failures=0)
    c = warren.Client(url=stub.url, token="t")
    seen: list[BaseException] = []

    async def inside() -> None:
        try:
            warren.Image.list(client=c)
        except RuntimeError as e:
            seen.append(e)

    from warren._sync import bridge

    bridge.run(inside())
    assert seen and "warren.aio" in str(seen[0])


def test_one_client_many_loops(stub_factory: list[Stub]) -> None:
    """The same Client serves the sync API and two asyncio loops."""
    stub = start(stub_factory, failures=0)
    c = warren.Client(url=stub.url, token="t")
    assert warren.Image.list(client=c) == []
    for _ in range(2):
        assert asyncio.run(warren.aio.Image.list(client=c)) == []
    assert len(stub.calls) == 3


def test_update_network_bodies(stub_factory: list[Stub]) -> None:
    """Left-out arguments stay out of the PATCH; None removes the allowlist."""
    stub = start(stub_factory, failures=0, ok_body=b'{"id": "sb-x", "state": "running"}')
    c = warren.Client(url=stub.url, token="t")
    sb = warren.aio.Sandbox(warren.SandboxInfo(id="sb-x", state=warren.SandboxState.RUNNING), c)
    for kwargs in ({"block_network": True}, {"outbound_cidr_allowlist": None}):
        asyncio.run(sb.update_network(**kwargs))  # type: ignore[arg-type]
    assert [json.loads(b) for b in stub.bodies] == [
        {"block_network": True},
        {"outbound_cidr_allowlist": None},
    ]


class SlowServer:
    """A loopback HTTP/1.1 server (asyncio) that holds each request for
    ``hold`` seconds (only those for ``/slow`` when ``only_slow``) and
    records how many it had in flight at most."""

    def __init__(self, hold: float, only_slow: bool = False) -> None:
        self.hold = hold
        self.only_slow = only_slow
        self.in_flight = 0
        self.most = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def until_in_flight(self, n: int, timeout: float = 5) -> None:
        """Waits (bounded) until the server holds ``n`` requests."""
        deadline = time.monotonic() + timeout
        while self.in_flight < n:
            assert time.monotonic() < deadline, f"{self.in_flight} of {n} requests arrived"
            await asyncio.sleep(0.01)

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                self.in_flight += 1
                self.most = max(self.most, self.in_flight)
                if not self.only_slow or head.split(b" ", 2)[1].startswith(b"/slow"):
                    await asyncio.sleep(self.hold)
                self.in_flight -= 1
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def test_calls_beyond_max_connections_wait_their_turn() -> None:
    async def main() -> None:
        srv = SlowServer(hold=0.1)
        async with srv as url:
            c = warren.Client(url=url, token="t", max_connections=3, retries=0)
            results = await asyncio.gather(*(c.json("GET", "/v1/images") for _ in range(12)))
            await c.aclose()
        assert results == [{}] * 12
        assert srv.most == 3, srv.most

    asyncio.run(main())


def test_a_call_that_finds_every_connection_busy_waits_its_turn() -> None:
    """Waiting for a free connection is queueing, not a read: it may take
    longer than the client's timeout without failing."""

    async def main() -> None:
        srv = SlowServer(hold=1)
        async with srv as url:
            c = warren.Client(url=url, token="t", max_connections=1, timeout=0.5, retries=0)
            busy = asyncio.create_task(c.json("GET", "/slow", timeout=5))
            await srv.until_in_flight(1)
            started = time.monotonic()
            assert await c.json("GET", "/slow/next", timeout=5) == {}
            assert time.monotonic() - started >= 1.5  # its turn came after ~1 s
            assert await busy == {}
            await c.aclose()

    asyncio.run(main())


def test_long_polls_have_their_own_lane() -> None:
    """Long polls filling every ordinary connection would starve the other
    calls: they go in a lane of their own."""

    async def main() -> None:
        srv = SlowServer(hold=1, only_slow=True)
        async with srv as url:
            c = warren.Client(url=url, token="t", max_connections=1, max_long_polls=4, retries=0)
            polls = [
                asyncio.create_task(c.json("GET", "/slow", long=True, timeout=5)) for _ in range(4)
            ]
            await srv.until_in_flight(4)
            started = time.monotonic()
            assert await c.json("GET", "/v1/images") == {}
            assert time.monotonic() - started < 0.5, "an ordinary call waited for long polls"
            assert await asyncio.gather(*polls) == [{}] * 4
            await c.aclose()

    asyncio.run(main())


def test_max_connections_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_connections"):
        warren.Client(url="http://127.0.0.1:9", max_connections=0)
    with pytest.raises(ValueError, match="max_long_polls"):
        warren.Client(url="http://127.0.0.1:9", max_long_polls=0)


def test_tunnel_endpoints_dial_loopback_for_localhost_names() -> None:
    assert warren.Endpoint("sb-1-8000.warren.localhost", 8443).dial_address() == (
        "127.0.0.1",
        8443,
    )
    assert warren.Endpoint("localhost", 1).dial_address() == ("127.0.0.1", 1)
    assert warren.Endpoint("sb-1-8000.example.com", 443).dial_address() == (
        "sb-1-8000.example.com",
        443,
    )
    assert warren.Endpoint("notlocalhost", 2).dial_address() == ("notlocalhost", 2)
