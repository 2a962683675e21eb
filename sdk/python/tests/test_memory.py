"""Memory snapshots, fork, pause and resume through the SDK: state in
memory (a counter, a dict, a small HTTP server) continues after a restore,
after pause/resume and in each fork; forks are independent; auto-resume
through exec and through a tunnel; ``on_idle="pause"``; the typed errors.

The tests that checkpoint need CRIU 4.x: they skip without it (and fail
under ``CI=true``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator

import pytest

import warren
from warren._errors import error_for

from .conftest import Server, skip_or_fail, wait_until
from .test_network import fetch

CRIU = "/usr/local/sbin/criu"

SERVER = r"""
import http.server, json
state = {"count": 0, "items": {}}
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.startswith("/set/"):
            k, v = self.path[5:].split("=", 1)
            state["items"][k] = v
        elif self.path == "/inc":
            state["count"] += 1
        body = json.dumps(state, sort_keys=True).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", 8000), H).serve_forever()
"""

# The counter and the server are the main command: a checkpoint needs
# every exec finished.
COMMAND = [
    "/bin/sh",
    "-c",
    "(i=0; while :; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.02; done) "
    '& exec python3 -c "$0"',
    SERVER,
]


@pytest.fixture
def criu() -> None:
    if not os.path.exists(CRIU):
        skip_or_fail(f"memory snapshots need CRIU 4.x at {CRIU} (scripts/install-criu.sh)")


def get(sb: warren.Sandbox, path: str) -> dict[str, object]:
    r = sb.run(
        "python3",
        "-c",
        "import urllib.request, sys; "
        f"print(urllib.request.urlopen('http://127.0.0.1:8000{path}', timeout=10).read().decode())",
    )
    assert r.exit_code == 0, r.stderr
    result: dict[str, object] = json.loads(r.stdout)
    return result


def counter(sb: warren.Sandbox) -> int:
    return int(sb.run("cat", "/tmp/counter").stdout)


def stateful(client: warren.Client, **kwargs: object) -> warren.Sandbox:
    sb = warren.Sandbox.create(
        command=COMMAND,
        timeout=300,
        memory_snapshots=True,
        client=client,
        **kwargs,  # type: ignore[arg-type]
    )

    def up() -> bool:
        try:
            get(sb, "/")
            counter(sb)
            return True
        except (AssertionError, ValueError, warren.WarrenError):
            return False

    assert wait_until(30, up), "the in-sandbox server never answered"
    return sb


@pytest.fixture
def cleanup(client: warren.Client) -> Iterator[list[warren.Sandbox]]:
    made: list[warren.Sandbox] = []
    yield made
    for sb in made:
        sb.terminate()


# ------------------------------------------------ no checkpoint needed ---


def test_options_and_refusals(client: warren.Client, cleanup: list[warren.Sandbox]) -> None:
    plain = warren.Sandbox.create(timeout=60, client=client)
    cleanup.append(plain)
    assert not plain.info.memory_snapshots
    with pytest.raises(warren.NotCheckpointable) as e:
        plain.snapshot_memory()
    assert e.value.code == "sandbox_not_checkpointable" and e.value.status == 409
    with pytest.raises(warren.NotCheckpointable):
        plain.pause()
    with pytest.raises(warren.NotCheckpointable):
        plain.fork(2)
    plain.resume()  # running: nothing to do
    assert plain.state == warren.SandboxState.RUNNING

    auto = warren.Sandbox.create(timeout=60, auto_resume=True, client=client)
    cleanup.append(auto)
    assert auto.info.memory_snapshots and auto.info.auto_resume
    idle = warren.Sandbox.create(idle_timeout=600, on_idle="pause", client=client)
    cleanup.append(idle)
    assert idle.info.on_idle == "pause" and idle.info.memory_snapshots

    with pytest.raises(warren.InvalidArgument):
        warren.Sandbox.create(on_idle="pause", client=client)
    with pytest.raises(warren.InvalidArgument):
        warren.Sandbox.create(memory_snapshots=True, disk=16, client=client)
    with pytest.raises(warren.InvalidArgument):
        auto.fork(0)
    with pytest.raises(warren.InvalidArgument):
        warren.Sandbox.create("host", from_memory_snapshot="msnap-abc", client=client)
    with pytest.raises(warren.MemorySnapshotNotFound) as nf:
        warren.Sandbox.create(from_memory_snapshot="msnap-doesnotexist", client=client)
    assert nf.value.code == "memory_snapshot_not_found" and nf.value.status == 404
    with pytest.raises(warren.MemorySnapshotNotFound):
        warren.MemorySnapshot.from_id("msnap-doesnotexist", client=client)
    assert isinstance(warren.MemorySnapshot.list(client=client), list)
    assert warren.SandboxState("paused") == warren.SandboxState.PAUSED
    # The error classes the new codes map to.
    assert issubclass(warren.SandboxPaused, warren.Conflict)
    assert issubclass(warren.SnapshotCorrupt, warren.SnapshotFailed)
    assert issubclass(warren.SnapshotUnavailable, warren.SnapshotFailed)
    assert isinstance(error_for("sandbox_paused", "x"), warren.SandboxPaused)
    assert isinstance(error_for("sandbox_not_checkpointable", "x"), warren.NotCheckpointable)
    assert isinstance(error_for("snapshot_unavailable", "x"), warren.SnapshotUnavailable)


def test_corrupt_snapshot_is_refused(
    client: warren.Client, server: Server, cleanup: list[warren.Sandbox], criu: None
) -> None:
    src = stateful(client)
    cleanup.append(src)
    snap = src.snapshot_memory()
    assert snap.id.startswith("msnap-") and snap.sandbox_id == src.id
    assert snap.image.startswith("sha256:") and snap.bytes > 0
    # Damage it on the server's disk (the tests run next to the server).
    pages = sorted((server.data_dir / "memory-snapshots" / snap.id / "criu").glob("pages-*.img"))
    raw = bytearray(pages[0].read_bytes())
    raw[0] ^= 0xFF
    pages[0].write_bytes(bytes(raw))
    before = len(warren.Sandbox.list(client=client))
    with pytest.raises(warren.SnapshotCorrupt) as e:
        warren.Sandbox.create(from_memory_snapshot=snap, client=client)
    assert e.value.code == "snapshot_corrupt"
    assert len(warren.Sandbox.list(client=client)) == before
    snap.delete()
    assert snap not in warren.MemorySnapshot.list(client=client)


# ----------------------------------------------------- with checkpoints ---


def test_restore_continues_state(
    client: warren.Client, cleanup: list[warren.Sandbox], criu: None
) -> None:
    src = stateful(client)
    cleanup.append(src)
    get(src, "/set/fruit=apple")
    for _ in range(3):
        get(src, "/inc")
    snap = src.snapshot_memory(ttl=600)
    assert snap.expires_at
    at = counter(src)
    assert get(src, "/inc")["count"] == 4  # the source keeps going
    copy = warren.Sandbox.create(from_memory_snapshot=snap, client=client)
    cleanup.append(copy)
    assert copy.id != src.id and copy.state == warren.SandboxState.RUNNING
    assert copy.info.from_memory_snapshot == snap.id
    state = get(copy, "/inc")
    assert state["count"] == 4 and state["items"] == {"fruit": "apple"}
    c = counter(copy)
    assert c >= at
    assert wait_until(5, lambda: counter(copy) > c)
    assert warren.MemorySnapshot.from_id(snap.id, client=client) == snap
    snap.delete()


def test_pause_and_resume(client: warren.Client, cleanup: list[warren.Sandbox], criu: None) -> None:
    sb = stateful(client)
    cleanup.append(sb)
    get(sb, "/set/k=v1")
    sb.pause()
    assert sb.state == warren.SandboxState.PAUSED and sb.info.paused_at
    with pytest.raises(warren.SandboxPaused):
        sb.run("true")
    sb.resume()
    assert sb.state == warren.SandboxState.RUNNING
    assert get(sb, "/")["items"] == {"k": "v1"}
    sb.pause()
    assert sb.terminate() is not None  # terminate while paused
    assert sb.termination and sb.termination.reason == warren.TerminationReason.TERMINATED


def test_fork_is_independent(
    client: warren.Client, cleanup: list[warren.Sandbox], criu: None
) -> None:
    src = stateful(client)
    cleanup.append(src)
    get(src, "/set/base=yes")
    copies = src.fork(3)
    cleanup.extend(copies)
    assert len({c.id for c in copies} | {src.id}) == 4
    for i, c in enumerate(copies):
        get(c, f"/set/me=copy{i}")
    for i, c in enumerate(copies):
        assert get(c, "/")["items"] == {"base": "yes", "me": f"copy{i}"}
    assert get(src, "/")["items"] == {"base": "yes"}


def test_background_exec_survives_pause_and_fork(
    client: warren.Client, cleanup: list[warren.Sandbox], criu: None
) -> None:
    sb = warren.Sandbox.create(timeout=300, memory_snapshots=True, client=client)
    cleanup.append(sb)
    command = ["/bin/sh", "-c", "i=0; while :; do i=$((i+1)); echo n$i; sleep 0.05; done"]
    bg = sb.exec_background(*command)

    def numbers(b: warren.BackgroundExec) -> list[int]:
        nums = [int(w[1:]) for w in b.output().decode().split() if w.startswith("n")]
        if nums:  # consecutive: nothing lost or repeated across the pause
            assert nums == list(range(nums[0], nums[0] + len(nums)))
        return nums

    assert wait_until(10, lambda: len(numbers(bg)) > 3)
    sb.pause()
    before = numbers(bg)[-1]
    sb.resume()
    assert wait_until(10, lambda: numbers(bg)[-1] > before + 3)
    assert [e.id for e in sb.background_execs()] == [bg.id]
    (copy,) = sb.fork(1)
    cleanup.append(copy)
    (cbg,) = copy.background_execs()
    assert cbg.info.command == command and cbg.info.state == "running"
    assert wait_until(10, lambda: len(numbers(cbg)) > 3)


def test_auto_resume_through_exec_and_tunnel(
    client: warren.Client, cleanup: list[warren.Sandbox], criu: None
) -> None:
    sb = stateful(client, auto_resume=True, encrypted_ports=[8000])
    cleanup.append(sb)
    get(sb, "/inc")
    sb.pause()
    assert get(sb, "/inc")["count"] == 2  # the exec resumed it
    assert sb.refresh().state == warren.SandboxState.RUNNING
    tunnels = sb.tunnels()
    url = tunnels[8000].url
    assert url
    sb.pause()
    r = fetch(f"{url}/inc", tunnels.ssl_context())
    assert r.status_code == 200 and r.json()["count"] == 3
    assert sb.refresh().state == warren.SandboxState.RUNNING


def test_on_idle_pauses(client: warren.Client, cleanup: list[warren.Sandbox], criu: None) -> None:
    sb = stateful(client, idle_timeout=1, on_idle="pause")
    cleanup.append(sb)
    get(sb, "/set/idle=1")
    deadline = time.monotonic() + 30
    while sb.refresh().state != warren.SandboxState.PAUSED:
        assert sb.state != warren.SandboxState.TERMINATED, sb.termination
        assert time.monotonic() < deadline, "never paused"
        time.sleep(0.1)
    sb.resume()
    assert get(sb, "/")["items"] == {"idle": "1"}
