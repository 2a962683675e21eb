"""Sandbox lifecycle: create options, lookup, list and paging, tags,
termination reasons, logs, and the typed errors of each."""

from __future__ import annotations

import uuid

import httpx
import pytest

import warren
from warren import TerminationReason

from .conftest import Server, free_port


def unique() -> str:
    return uuid.uuid4().hex[:10]


def test_create_with_options(client: warren.Client) -> None:
    name = f"opts-{unique()}"
    with warren.Sandbox.create(
        client=client,
        command=["sleep", "60"],
        timeout=120,
        idle_timeout=600,
        cpu=0.5,
        memory=256,
        disk=64,
        env={"A": "1"},
        workdir="/tmp",
        user="65534",
        name=name,
        tags={"suite": "sdk", "k": "v"},
        block_network=True,
        readiness_probe=["true"],
    ) as sb:
        assert sb.id.startswith("sb-")
        assert sb.name == name
        assert sb.tags == {"suite": "sdk", "k": "v"}
        info = sb.info
        assert (info.cpu, info.memory_mib, info.disk_mib) == (0.5, 256, 64)
        assert (info.timeout_secs, info.idle_timeout_secs) == (120, 600)
        assert info.workdir == "/tmp" and info.command == ["sleep", "60"]
        assert info.network.block_network
        assert sb.state == warren.SandboxState.RUNNING
        r = sb.run("sh", "-c", 'echo "$A $(id -u) $(pwd)"')
        assert r.stdout == "1 65534 /tmp\n"
        sb.wait_ready(timeout=30)
        assert sb.refresh().ready
        assert warren.Sandbox.from_id(sb.id, client=client) == sb
        assert warren.Sandbox.from_name(name, client=client).id == sb.id
    assert sb.termination is not None
    assert sb.termination.reason == TerminationReason.TERMINATED
    assert sb.poll() is not None


def test_command_string_exit_code_and_logs(client: warren.Client) -> None:
    sb = warren.Sandbox.create("host", "echo out; echo err >&2; exit 3", client=client)
    term = sb.wait(timeout=60)
    assert (term.reason, term.exit_code) == (TerminationReason.EXITED, 3)
    assert sb.termination == term
    logs = sb.logs()
    assert "out\n" in logs and "err\n" in logs
    assert sb.logs(tail=4) == "err\n"


def test_timeout_reason_and_wait_timeout(client: warren.Client) -> None:
    sb = warren.Sandbox.create(client=client, timeout=2)
    assert sb.poll() is None
    with pytest.raises(TimeoutError):
        sb.wait(timeout=0.5)
    assert sb.wait(timeout=60).reason == TerminationReason.TIMEOUT


def test_list_filters_and_paging(client: warren.Client) -> None:
    run = unique()
    made = [warren.Sandbox.create(client=client, tags={"run": run, "i": str(i)}) for i in range(3)]
    try:
        found = warren.Sandbox.list(tags={"run": run}, page_size=1, client=client)
        assert sorted(s.id for s in found) == sorted(s.id for s in made)
        one = warren.Sandbox.list(tags={"run": run, "i": "1"}, client=client)
        assert [s.id for s in one] == [made[1].id]
        made[0].terminate()
        running = warren.Sandbox.list(tags={"run": run}, state="running", client=client)
        assert sorted(s.id for s in running) == sorted(s.id for s in made[1:])
        made[2].set_tags({"run": run, "new": "yes"})
        assert made[2].tags == {"run": run, "new": "yes"}
        assert warren.Sandbox.list(tags={"new": "yes", "run": run}, client=client) == [made[2]]
    finally:
        for s in made:
            s.terminate()


def test_default_client_from_environment(default_env: None) -> None:
    with warren.Sandbox.create() as sb:
        assert warren.Sandbox.from_id(sb.id).id == sb.id


def test_errors(client: warren.Client, server: Server) -> None:
    with pytest.raises(warren.SandboxNotFound) as e:
        warren.Sandbox.from_id("sb-doesnotexist", client=client)
    assert (e.value.code, e.value.status) == ("sandbox_not_found", 404)
    assert isinstance(e.value, warren.NotFound)
    with pytest.raises(warren.SandboxNotFound):
        warren.Sandbox.from_name(f"nobody-{unique()}", client=client)
    with pytest.raises(warren.InvalidArgument) as e:
        warren.Sandbox.create(client=client, memory=1)
    assert "memory_mib" in e.value.message
    with pytest.raises(warren.InvalidArgument) as e:
        warren.Sandbox.create(client=client, name="Bad Name")
    name = f"taken-{unique()}"
    with warren.Sandbox.create(client=client, name=name), pytest.raises(warren.NameConflict):
        warren.Sandbox.create(client=client, name=name)
    bad = warren.Client(url=server.url, token="wrong", retries=0)
    with pytest.raises(warren.AuthError) as e:
        warren.Sandbox.list(client=bad)
    assert e.value.code == "unauthenticated"
    # A non-admin token may not collect images.
    resp = httpx.post(
        f"{server.url}/v1/tokens",
        json={"name": f"user-{unique()}"},
        headers={"Authorization": f"Bearer {server.token}"},
    )
    user = warren.Client(url=server.url, token=resp.json()["token"])
    with pytest.raises(warren.AuthError) as e:
        warren.Image.gc(client=user)
    assert e.value.code == "forbidden"
    down = warren.Client(url=f"http://127.0.0.1:{free_port()}", retries=1, backoff=0.01)
    with pytest.raises(warren.WarrenConnectionError) as e:
        warren.Sandbox.list(client=down)
    assert isinstance(e.value, ConnectionError)


def test_image_command_and_readiness_not_ready(client: warren.Client) -> None:
    with warren.Sandbox.create(client=client, readiness_probe=["false"]) as sb:
        assert not sb.info.ready
        with pytest.raises(warren.NotReady):
            sb.wait_ready(timeout=1)
    with pytest.raises(warren.SandboxTerminated):
        sb.wait_ready(timeout=1)


def test_workspaces_and_tokens(client: warren.Client, server: Server) -> None:
    ws = warren.Workspace.create(f"ws-{unique()}", client=client)
    assert ws.id and ws in warren.Workspace.list(client=client)
    tok = warren.Token.create("ci", workspace_id=ws.id, client=client)
    assert tok.token and tok.workspace_id == ws.id and not tok.admin
    other = warren.Client(url=server.url, token=tok.token)
    with warren.Sandbox.create(client=client) as mine:
        # Another workspace sees none of this one's sandboxes.
        with pytest.raises(warren.SandboxNotFound):
            warren.Sandbox.from_id(mine.id, client=other)
        with warren.Sandbox.create(client=other) as theirs:
            assert [s.id for s in warren.Sandbox.list(client=other)] == [theirs.id]
    assert [t.id for t in warren.Token.list(client=other)] == [tok.id]
    with pytest.raises(warren.AuthError):
        warren.Workspace.create("nope", client=other)
    tok.revoke(client=other)
    with pytest.raises(warren.AuthError):
        warren.Sandbox.list(client=other)
