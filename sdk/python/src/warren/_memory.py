"""Memory snapshots (``/v1/memory-snapshots``): checkpoints of whole
running sandboxes (processes, memory, files), made by
:meth:`Sandbox.snapshot_memory <warren.Sandbox.snapshot_memory>` and
restored with ``Sandbox.create(from_memory_snapshot=...)``.
"""

from __future__ import annotations

import builtins

from ._client import Client, resolve
from ._types import MemorySnapshotInfo, parse


class MemorySnapshot:
    """A memory snapshot on a Warren server. Its image stays on the node
    while it exists; :meth:`delete` removes it (sandboxes restored from it
    keep running)."""

    def __init__(self, info: MemorySnapshotInfo, client: Client) -> None:
        self.info = info
        self._client = client

    def __repr__(self) -> str:
        return f"<MemorySnapshot {self.id} of {self.sandbox_id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MemorySnapshot) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def sandbox_id(self) -> str:
        """The sandbox it was taken from."""
        return self.info.sandbox_id

    @property
    def image(self) -> str:
        """Id of the image it stands on."""
        return self.info.image

    @property
    def bytes(self) -> int:
        """Size on the node's disk."""
        return self.info.bytes

    @property
    def expires_at(self) -> str | None:
        return self.info.expires_at

    @classmethod
    async def from_id(cls, snapshot_id: str, *, client: Client | None = None) -> MemorySnapshot:
        """The memory snapshot with this id; raises
        :class:`~warren.MemorySnapshotNotFound`."""
        c = resolve(client)
        data = await c.json("GET", f"/v1/memory-snapshots/{snapshot_id}")
        return cls(parse(MemorySnapshotInfo, data), c)

    @classmethod
    async def list(cls, *, client: Client | None = None) -> builtins.list[MemorySnapshot]:
        """The workspace's memory snapshots, newest first."""
        c = resolve(client)
        data = await c.json("GET", "/v1/memory-snapshots")
        return [cls(parse(MemorySnapshotInfo, m), c) for m in data["memory_snapshots"]]

    async def delete(self) -> None:
        """Removes the snapshot (its checkpoint and its hold on the image)."""
        await self._client.request("DELETE", f"/v1/memory-snapshots/{self.id}", idempotent=True)
