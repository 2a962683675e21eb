import warren


def test_smoke(sandbox: warren.Sandbox) -> None:
    p = sandbox.exec("python3", "-c", "import sys; print(2+2); print('err', file=sys.stderr)")
    assert p.stdout.read() == "4\n"
    assert p.stderr.read() == "err\n"
    assert p.wait() == 0
