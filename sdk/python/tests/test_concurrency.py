"""One client shared by 20 threads, and the asyncio API under gather."""

from __future__ import annotations

import asyncio
import uuid
from concurrent.futures import ThreadPoolExecutor

import warren
from warren import aio


def test_twenty_threads_share_one_client(client: warren.Client) -> None:
    run = uuid.uuid4().hex[:8]
    boxes = [warren.Sandbox.create(client=client, tags={"run": run}) for _ in range(2)]

    def work(i: int) -> str:
        sb = boxes[i % 2]
        p = sb.exec("sh", "-c", f"echo {i}; echo e{i} >&2")
        out, err = p.stdout.read(), p.stderr.read()
        assert p.wait() == 0 and err == f"e{i}\n"
        sb.filesystem.write_text(f"/tmp/t{i}", str(i))
        assert sb.filesystem.read_text(f"/tmp/t{i}") == str(i)
        assert warren.Sandbox.from_id(sb.id, client=client) == sb
        return out.strip()

    try:
        with ThreadPoolExecutor(20) as pool:
            results = list(pool.map(work, range(40)))
        assert results == [str(i) for i in range(40)]
        assert len(warren.Sandbox.list(tags={"run": run}, client=client)) == 2
    finally:
        for sb in boxes:
            sb.terminate()


def test_asyncio_gather(client: warren.Client) -> None:
    async def one(i: int) -> tuple[int, str]:
        async with await aio.Sandbox.create(client=client, tags={"gather": "yes"}) as sb:
            p = await sb.exec("python3", "-c", f"print({i} * 2)")
            lines = [line async for line in p.stdout]
            await sb.filesystem.write_bytes("/tmp/x", b"%d" % i)
            data = await sb.filesystem.read_bytes("/tmp/x")
            return await p.wait(), lines[0].strip() + data.decode()

    async def main() -> list[tuple[int, str]]:
        try:
            return await asyncio.gather(*(one(i) for i in range(6)))
        finally:
            await client.aclose()

    results = asyncio.run(main())
    assert results == [(0, f"{i * 2}{i}") for i in range(6)]
