"""A real ``warren serve`` for the whole session, on free loopback ports,
with its in-process relay, and a loopback ``docker-registry`` when the
host has one. Everything started here is stopped at the end, failures
included: sandboxes terminated, server and registry stopped, data removed.

``WARREN_BIN`` names the binary (default: ``<repo>/target/debug/warren``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

import warren

REPO = Path(__file__).resolve().parents[3]
REGISTRY_BIN = "/usr/bin/docker-registry"


def skip_or_fail(reason: str) -> None:
    """Skips a test whose capability is missing, with the reason; under
    ``CI=true`` a missing capability fails the run instead."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and {reason}")
    pytest.skip(reason)


def wait_until(timeout: float, cond: Callable[[], bool], interval: float = 0.05) -> bool:
    """Polls ``cond`` until it holds or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(interval)
    return cond()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes], grace: float) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@dataclass
class Server:
    url: str
    token: str
    root: Path
    raw_port: int
    registry: str | None

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def log(self) -> str:
        return (self.root / "server.log").read_text(errors="replace")


def _start_registry(root: Path) -> tuple[subprocess.Popen[bytes], str] | None:
    if not os.path.exists(REGISTRY_BIN):
        return None
    port = free_port()
    storage = root / "registry"
    storage.mkdir()
    config = root / "registry.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {storage}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    with open(root / "registry.log", "wb") as log:
        proc = subprocess.Popen(
            [REGISTRY_BIN, "serve", str(config)], stdout=log, stderr=log, stdin=subprocess.DEVNULL
        )

    def up() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/v2/", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    if not wait_until(20, up):
        _stop(proc, 5)
        pytest.fail(f"docker-registry did not start: {(root / 'registry.log').read_text()}")
    return proc, f"127.0.0.1:{port}"


def _cgroup_parents() -> set[str]:
    """The node cgroup parents (``warren-<hash of the data dir>``) in every
    hierarchy."""
    return {str(p) for p in Path("/sys/fs/cgroup").glob("*/warren-*")}


def _leftovers(root: Path, parents_before: set[str]) -> list[str]:
    """What the stopped server left on the host: its node's cgroups and
    mounts under its data directory."""
    out = [f"cgroup: {p}" for p in sorted(_cgroup_parents() - parents_before)]
    mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    out += [f"mount: {m}" for m in mounts if str(root) in m]
    return out


def _terminate_all(server: Server) -> None:
    client = warren.Client(url=server.url, token=server.token, retries=0)
    try:
        for sb in warren.Sandbox.list(client=client):
            if sb.state != warren.SandboxState.TERMINATED:
                sb.terminate()
    finally:
        client.close()


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    if os.geteuid() != 0:
        skip_or_fail("the SDK tests create sandboxes: they need root")
    binary = os.environ.get("WARREN_BIN", str(REPO / "target/debug/warren"))
    if not os.path.exists(binary):
        pytest.fail(f"no warren binary at {binary}: cargo build -p warren-cli, or set WARREN_BIN")
    root = Path(tempfile.mkdtemp(prefix="warren-sdk-", dir="/var/tmp"))
    (root / "data").mkdir()
    registry = _start_registry(root)
    registries = {
        "default_registry": "127.0.0.1:9",
        "registries": {"127.0.0.1:9": {"insecure": True}},
    }
    if registry is not None:
        registries["registries"][registry[1]] = {"insecure": True}
    (root / "data/registries.json").write_text(json.dumps(registries))
    port, raw = free_port(), free_port()
    parents_before = _cgroup_parents()
    with open(root / "server.log", "ab") as log:
        proc = subprocess.Popen(
            [
                binary,
                "--data-dir",
                str(root / "data"),
                "serve",
                "--listen",
                f"127.0.0.1:{port}",
                "--no-network",
                "--init-copy-dir",
                str(root / "init-copy"),
                "--relay-https-listen",
                "127.0.0.1:0",
                "--relay-raw-ports",
                f"{raw}-{raw}",
            ],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "RUST_LOG": "info"},
        )
    url = f"http://127.0.0.1:{port}"
    token_file = root / "data/admin-token"

    def up() -> bool:
        if proc.poll() is not None:
            return True
        try:
            healthy = httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False
        return healthy and token_file.exists()

    srv: Server | None = None
    try:
        if not wait_until(60, up) or proc.poll() is not None:
            pytest.fail(f"warren serve did not come up:\n{(root / 'server.log').read_text()}")
        srv = Server(
            url=url,
            token=token_file.read_text().strip(),
            root=root,
            raw_port=raw,
            registry=registry[1] if registry else None,
        )
        yield srv
    finally:
        try:
            if srv is not None:
                _terminate_all(srv)
        finally:
            _stop(proc, 15)
            if registry is not None:
                _stop(registry[0], 5)
            wait_until(10, lambda: not _leftovers(root, parents_before), interval=0.2)
            leftovers = _leftovers(root, parents_before)
            keep = os.environ.get("WARREN_SDK_KEEP_LOG")
            if keep:  # for debugging: the server's log survives the run
                shutil.copy(root / "server.log", keep)
            if not leftovers:
                shutil.rmtree(root, ignore_errors=True)
            assert not leftovers, f"the server left these behind (data in {root}): {leftovers}"


@pytest.fixture(scope="session")
def client(server: Server) -> Iterator[warren.Client]:
    c = warren.Client(url=server.url, token=server.token)
    yield c
    c.close()


@pytest.fixture(scope="session")
def default_env(server: Server) -> Iterator[None]:
    """The default client (from the environment) points at the test server."""
    old = {k: os.environ.get(k) for k in ("WARREN_URL", "WARREN_TOKEN")}
    os.environ["WARREN_URL"], os.environ["WARREN_TOKEN"] = server.url, server.token
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def sandbox(client: warren.Client) -> Iterator[warren.Sandbox]:
    """A fresh idle sandbox on the ``host`` image, terminated afterwards."""
    sb = warren.Sandbox.create(client=client, timeout=300)
    try:
        yield sb
    finally:
        sb.terminate()
