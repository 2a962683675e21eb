"""Fan-out with the asyncio API: N sandboxes created concurrently, each runs
a command, the results are collected, every sandbox is terminated, and the
throughput is printed.

    WARREN_URL=... WARREN_TOKEN=... python examples/fanout.py -n 200
"""

import argparse
import asyncio
import time

from warren import aio


async def one(i: int, image: str, sem: asyncio.Semaphore) -> tuple[int, str, float]:
    """Create, run, collect, terminate; returns (i, output, seconds)."""
    async with sem:
        started = time.monotonic()
        sb = await aio.Sandbox.create(
            image=image, timeout=120, memory=64, block_network=True, tags={"example": "fanout"}
        )
        try:
            result = await sb.run("sh", "-c", f"echo $(({i} * {i}))", timeout=30)
            if result.exit_code != 0:
                raise RuntimeError(f"sandbox {sb.id}: exit {result.exit_code}: {result.stderr}")
            return i, result.stdout.strip(), time.monotonic() - started
        finally:
            await sb.terminate()


async def fanout(n: int, image: str, concurrency: int) -> None:
    sem = asyncio.Semaphore(concurrency)
    started = time.monotonic()
    results = await asyncio.gather(*(one(i, image, sem) for i in range(n)))
    elapsed = time.monotonic() - started
    wrong = [i for i, out, _ in results if out != str(i * i)]
    if wrong:
        raise SystemExit(f"{len(wrong)} sandboxes gave a wrong answer: {wrong[:10]}")
    lat = sorted(s for _, _, s in results)
    print(
        f"{n} sandboxes (create + exec + terminate), {concurrency} at a time: "
        f"{elapsed:.2f} s, {n / elapsed:.1f} sandboxes/s; per sandbox p50 "
        f"{lat[len(lat) // 2] * 1000:.0f} ms, p99 {lat[int(len(lat) * 0.99)] * 1000:.0f} ms"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=200, help="how many sandboxes")
    ap.add_argument("--concurrency", type=int, default=200, help="at most this many at once")
    ap.add_argument("--image", default="host", help="image of the sandboxes")
    args = ap.parse_args()
    asyncio.run(fanout(args.n, args.image, args.concurrency))


if __name__ == "__main__":
    main()
