"""A minimal ``text/event-stream`` reader: ``event:`` and ``data:`` lines,
events ended by a blank line; comments and other fields are ignored."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from ._errors import error_for


async def events(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str, Any]]:
    """Yields ``(event, decoded JSON data)``; an ``error`` event (an error
    body) is raised as its typed exception."""
    event, data = "message", []
    async for line in lines:
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())
        elif not line and data:
            payload = json.loads("\n".join(data))
            if event == "error":
                err = payload.get("error", payload)
                raise error_for(err.get("code", "error"), err.get("message", ""))
            yield event, payload
            event, data = "message", []
