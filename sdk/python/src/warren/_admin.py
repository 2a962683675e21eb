"""Workspaces and API tokens (``/v1/workspaces``, ``/v1/tokens``).

A workspace is the unit of isolation between API users: a token sees only
its workspace's sandboxes. Creating workspaces, admin tokens, or tokens of
another workspace needs an admin token.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass

from ._client import Client, resolve
from ._types import parse


@dataclass(frozen=True)
class Workspace:
    """A workspace."""

    id: str
    name: str
    created_at: str = ""

    @classmethod
    async def create(cls, name: str, *, client: Client | None = None) -> Workspace:
        """Creates a workspace (admin token)."""
        data = await resolve(client).json("POST", "/v1/workspaces", json={"name": name})
        return parse(cls, data)

    @classmethod
    async def list(cls, *, client: Client | None = None) -> builtins.list[Workspace]:
        """Every workspace for an admin token, else the caller's."""
        data = await resolve(client).json("GET", "/v1/workspaces")
        return [parse(cls, w) for w in data]


@dataclass(frozen=True)
class Token:
    """An API token; ``token`` (the secret) is only set right after
    :meth:`create`."""

    id: str
    name: str
    workspace_id: str
    admin: bool = False
    created_at: str = ""
    revoked_at: str | None = None
    token: str | None = None

    @classmethod
    async def create(
        cls,
        name: str,
        *,
        workspace_id: str | None = None,
        admin: bool = False,
        client: Client | None = None,
    ) -> Token:
        """Creates a token in the caller's workspace (or, with an admin
        token, in ``workspace_id``, or an admin token)."""
        body: dict[str, object] = {"name": name, "admin": admin}
        if workspace_id is not None:
            body["workspace_id"] = workspace_id
        data = await resolve(client).json("POST", "/v1/tokens", json=body)
        return parse(cls, data)

    @classmethod
    async def list(cls, *, client: Client | None = None) -> builtins.list[Token]:
        """The tokens of the caller's workspace (no secrets)."""
        data = await resolve(client).json("GET", "/v1/tokens")
        return [parse(cls, t) for t in data]

    async def revoke(self, *, client: Client | None = None) -> None:
        """Revokes the token; calls with it fail from now on."""
        await resolve(client).request("POST", f"/v1/tokens/{self.id}/revoke", idempotent=True)
