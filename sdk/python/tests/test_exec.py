"""Streaming execs: output by line, chunk and whole; stdin; PTYs; timeouts;
signals; 100 MiB through stdout; buffered and background execs."""

from __future__ import annotations

import hashlib
import resource
import threading

import pytest

import warren

BIG = r"""
import hashlib, sys
h = hashlib.sha256()
block = bytes(range(256)) * 256
out = sys.stdout.buffer
for i in range(1600):
    b = block[i % 256:] + block[:i % 256]
    h.update(b)
    out.write(b)
out.flush()
print(h.hexdigest(), file=sys.stderr)
"""


def test_lines_and_streams(sandbox: warren.Sandbox) -> None:
    p = sandbox.exec(
        "python3", "-c", "import sys\nfor i in range(3): print(i)\nprint('oops', file=sys.stderr)"
    )
    assert p.pid > 0
    assert list(p.stdout) == ["0\n", "1\n", "2\n"]
    assert p.stderr.readline() == "oops\n"
    assert p.stderr.readline() == ""
    assert p.wait() == 0
    assert p.returncode == 0 and p.poll() == 0
    assert not p.timed_out and not p.oom_killed


def test_exit_code_env_workdir_user(sandbox: warren.Sandbox) -> None:
    p = sandbox.exec(
        "sh",
        "-c",
        'echo "$GREETING $(pwd) $(id -u)"; exit 7',
        env={"GREETING": "hi"},
        workdir="/tmp",
        user="65534",
    )
    assert p.stdout.read() == "hi /tmp 65534\n"
    assert p.wait() == 7
    assert p.exit_signal is None


def test_bytes_mode_and_chunks(sandbox: warren.Sandbox) -> None:
    p = sandbox.exec("printf", "a\\377b", text=False)
    data = b"".join(p.stdout.chunks())
    assert data == b"a\xffb"
    p.wait()
    p = sandbox.exec("printf", "caf\\303\\251")
    assert p.stdout.read() == "café"


def test_stdin_streaming(sandbox: warren.Sandbox) -> None:
    p = sandbox.exec("sha256sum")
    h = hashlib.sha256()
    block = bytes(range(256)) * 4096
    for _ in range(16):  # 16 MiB in 1 MiB writes
        p.stdin.write(block)
        h.update(block)
    p.stdin.close()
    assert p.stdout.read().split()[0] == h.hexdigest()
    assert p.wait() == 0


def test_stdin_echo_concurrent_reader(sandbox: warren.Sandbox) -> None:
    """Writing more than any buffer holds to `cat` while another thread
    reads: neither side blocks the other."""
    p = sandbox.exec("cat", text=False)
    data = bytes(range(256)) * 40000  # ~10 MB
    got = bytearray()
    reader = threading.Thread(target=lambda: got.extend(b"".join(p.stdout.chunks())))
    reader.start()
    p.stdin.write(data)
    p.stdin.write("tail")
    p.stdin.close()
    reader.join(60)
    assert bytes(got) == data + b"tail"
    assert p.wait() == 0


def test_pty_and_resize(sandbox: warren.Sandbox) -> None:
    p = sandbox.exec("sh", "-c", "stty size; read x; stty size", pty=(30, 100))
    assert p.stdout.readline().strip() == "30 100"
    p.resize(40, 120)
    p.stdin.write("go\n")
    rest = p.stdout.read()
    assert "40 120" in rest
    assert p.wait() == 0


def test_exec_timeout(sandbox: warren.Sandbox) -> None:
    p = sandbox.exec("sleep", "30", timeout=1)
    with pytest.raises(warren.ExecTimeout):
        p.wait(timeout=30)
    assert p.timed_out
    assert p.returncode is not None and p.returncode != 0


def test_client_side_wait_timeout_and_kill(sandbox: warren.Sandbox) -> None:
    p = sandbox.exec("sleep", "30")
    with pytest.raises(TimeoutError):
        p.wait(timeout=0.3)
    assert p.poll() is None
    p.kill()
    assert p.wait(timeout=30) == 137
    assert p.exit_signal == 9


def test_signal_and_terminate(sandbox: warren.Sandbox) -> None:
    p = sandbox.exec(
        "sh", "-c", "trap 'echo got-usr1' USR1; echo ready; while :; do sleep 0.05; done"
    )
    assert p.stdout.readline() == "ready\n"
    p.signal(10)
    assert p.stdout.readline() == "got-usr1\n"
    p.terminate()
    assert p.wait(timeout=30) == 143


def test_100_mib_through_stdout(sandbox: warren.Sandbox) -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    p = sandbox.exec("python3", "-c", BIG, text=False)
    h = hashlib.sha256()
    n = 0
    for chunk in p.stdout.chunks():
        h.update(chunk)
        n += len(chunk)
    assert n == 100 * 1024 * 1024
    assert p.stderr.read().decode().strip() == h.hexdigest()
    assert p.wait() == 0
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 64, f"peak memory grew by {grown_mib:.0f} MiB"


def test_wait_before_reading_buffers_output(sandbox: warren.Sandbox) -> None:
    """Only waiting (no reader) never deadlocks: output is kept for later."""
    p = sandbox.exec("python3", "-c", "import sys; sys.stdout.write('x' * 6_000_000)")
    assert p.wait(timeout=60) == 0
    assert len(p.stdout.read()) == 6_000_000


def test_missing_program_and_workdir(sandbox: warren.Sandbox) -> None:
    with pytest.raises(warren.CommandError) as e:
        sandbox.exec("/no/such/program")
    assert e.value.code == "exec_not_found"
    with pytest.raises(warren.CommandError) as e:
        sandbox.exec("true", workdir="/no/such/dir")
    assert e.value.code == "workdir_not_found"


def test_run_buffered(sandbox: warren.Sandbox) -> None:
    r = sandbox.run("sh", "-c", "cat; echo err >&2; exit 2", input="in")
    assert (r.exit_code, r.stdout, r.stderr) == (2, "in", "err\n")
    assert not r.stdout_truncated


def test_background_exec(sandbox: warren.Sandbox) -> None:
    bg = sandbox.exec_background("sh", "-c", "echo hi; echo bye")
    info = bg.wait(timeout=30)
    assert info.state == "exited" and info.exit_code == 0
    assert bg.output() == b"hi\nbye\n"
    assert bg.output(tail=4) == b"bye\n"
    assert bg.id in [b.id for b in sandbox.background_execs()]


def test_background_attach_signal_kill(sandbox: warren.Sandbox) -> None:
    bg = sandbox.exec_background("sh", "-c", "echo start; read x; echo got $x")
    p = bg.attach()
    assert p.exec_id == bg.id
    assert p.stdout.readline() == "start\n"
    p.stdin.write("v\n")
    assert p.stdout.readline() == "got v\n"
    assert p.wait(timeout=30) == 0

    sleeper = sandbox.exec_background("sleep", "30")
    assert sleeper.refresh().state == "running"
    sleeper.signal(15)
    assert sleeper.wait(timeout=30).signal == 15

    doomed = sandbox.exec_background("sleep", "30")
    doomed.kill()
    with pytest.raises(warren.NotFound):
        doomed.refresh()


def test_exec_on_terminated_sandbox(client: warren.Client) -> None:
    sb = warren.Sandbox.create(client=client)
    sb.terminate()
    with pytest.raises(warren.SandboxTerminated):
        sb.exec("true")
    with pytest.raises(warren.SandboxTerminated):
        sb.run("true")
