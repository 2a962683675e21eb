"""A code interpreter: untrusted snippets, each in a fresh sandbox with a
memory limit and a time limit; the outcome is reported with Warren's typed
reasons, never guessed from output.

Two ways a snippet runs:
- as an exec in a running sandbox (`run_exec`): the exec has a timeout, and
  the result says whether it timed out or the OOM killer ended it;
- as the sandbox's main command (`run_main`): the sandbox's own timeout
  applies, and `sandbox.termination` says why it ended (exited, timeout,
  oom_killed, ...).

    WARREN_URL=... WARREN_TOKEN=... python examples/code_interpreter.py
"""

import argparse
import json
from concurrent.futures import ThreadPoolExecutor

import warren

SNIPPETS = {
    "ok": "print(sum(i * i for i in range(10**6)))",
    "error": "raise ValueError('the agent made a mistake')",
    "forever": "while True: pass",
    "memory_hog": "chunks = []\nwhile True: chunks.append(bytearray(16 << 20))",
}


def run_exec(sb: warren.Sandbox, code: str, timeout: int) -> dict:
    """One snippet as an exec; the sandbox survives whatever it does."""
    p = sb.exec("python3", "-c", code, timeout=timeout)
    out, err = p.stdout.read(), p.stderr.read()
    try:
        status = p.wait()
    except warren.ExecTimeout:  # killed by the server at `timeout`
        return {"outcome": "timeout", "exit_code": p.returncode}
    outcome = "oom_killed" if p.oom_killed else "ok" if status == 0 else "error"
    return {"outcome": outcome, "exit_code": status, "stdout": out[-200:], "stderr": err[-200:]}


def run_main(image: str, code: str, timeout: int, memory: int) -> dict:
    """One snippet as a sandbox's main command; the reason comes from Warren."""
    sb = warren.Sandbox.create(
        image=image,
        command=["python3", "-c", code],
        timeout=timeout,
        memory=memory,
        block_network=True,
    )
    try:
        t = sb.wait(timeout=timeout + 30)
    finally:
        sb.terminate()  # a no-op for an ended sandbox
    return {
        "reason": str(t.reason),
        "exit_code": t.exit_code,
        "detail": t.detail,
        "output": sb.logs()[-200:],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", default="python:3.12-slim", help="an image with python3")
    ap.add_argument("--timeout", type=int, default=3, help="seconds per snippet")
    ap.add_argument("--memory", type=int, default=128, help="MiB per sandbox")
    args = ap.parse_args()

    report: dict[str, dict] = {}
    with warren.Sandbox.create(
        image=args.image, memory=args.memory, block_network=True, timeout=300
    ) as sb:
        for name, code in SNIPPETS.items():
            report[f"exec/{name}"] = run_exec(sb, code, args.timeout)
    # The SDK is thread-safe: the main-command runs go in parallel.
    with ThreadPoolExecutor(max_workers=len(SNIPPETS)) as pool:
        runs = {
            name: pool.submit(run_main, args.image, code, args.timeout, args.memory)
            for name, code in SNIPPETS.items()
        }
        for name, run in runs.items():
            report[f"main/{name}"] = run.result()
    for key, result in report.items():
        print(f"{key:18} {json.dumps(result)}")


if __name__ == "__main__":
    main()
