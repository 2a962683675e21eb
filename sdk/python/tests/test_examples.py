"""The examples in ``sdk/python/examples`` run as a user runs them: as
scripts, configured by ``WARREN_URL`` and ``WARREN_TOKEN``, against the
session's server. Sandboxes use the ``host`` image (node and python3 from
this machine); there is no registry on the internet to pull from here."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import Server

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(server: Server, name: str, *args: str, timeout: float = 120) -> str:
    env = {**os.environ, "WARREN_URL": server.url, "WARREN_TOKEN": server.token}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_examples_stay_short() -> None:
    lines = (EXAMPLES / "app_builder.py").read_text().count("\n")
    assert lines < 100, f"app_builder.py has {lines} lines"


def test_app_builder(server: Server) -> None:
    out = run_example(server, "app_builder.py", "--image", "host", "--no-network")
    assert re.search(r"^files: .*/app/index\.html.*/app/server\.js", out, re.M), out
    assert re.search(r"^dev server ready in [0-9.]+ s$", out, re.M), out
    url = re.search(r"^open (https://\S+)$", out, re.M)
    assert url and ".localhost:" in url.group(1), out
    # The edit arrived over the WebSocket through the tunnel.
    assert re.search(r"^hot reload: \{'reload': 'index.html'\} after \d+ ms$", out, re.M), out
    snap = re.search(r"^snapshot (sha256:[0-9a-f]{12})", out, re.M)
    assert snap, out
    assert "dev server log: dev server on :3000" in out, out
    assert out.rstrip().endswith("terminated: terminated"), out


def test_code_interpreter(server: Server) -> None:
    out = run_example(server, "code_interpreter.py", "--image", "host", "--timeout", "2")
    report = {}
    for line in out.splitlines():
        key, _, result = line.partition(" ")
        report[key] = json.loads(result)
    assert report["exec/ok"]["outcome"] == "ok"
    assert report["exec/ok"]["stdout"] == "333332833333500000\n"
    assert report["exec/error"]["outcome"] == "error"
    assert "ValueError: the agent made a mistake" in report["exec/error"]["stderr"]
    assert report["exec/forever"] == {"outcome": "timeout", "exit_code": 137}
    assert report["exec/memory_hog"]["outcome"] == "oom_killed"
    assert report["main/ok"]["reason"] == "exited" and report["main/ok"]["exit_code"] == 0
    assert report["main/error"]["reason"] == "exited" and report["main/error"]["exit_code"] == 1
    assert report["main/forever"]["reason"] == "timeout"
    assert report["main/memory_hog"]["reason"] == "oom_killed"
    assert report["main/memory_hog"]["exit_code"] == 137


@pytest.mark.timeout(240)
def test_fanout(server: Server) -> None:
    out = run_example(server, "fanout.py", "-n", "200", timeout=200)
    m = re.search(r"^200 sandboxes .*: ([0-9.]+) s, ([0-9.]+) sandboxes/s", out, re.M)
    assert m, out
    print(out.strip())
