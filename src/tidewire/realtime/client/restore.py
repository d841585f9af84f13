"""Restoring a session on a new connection: rooms rejoined, channels resubscribed.

All the requests go out at once and are awaited together.  A room or channel
the server refuses now (no longer allowed, a limit) is forgotten and reported;
any other failure (timeout, drop) fails the connection attempt.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from tidewire.errors import RealtimeError
from tidewire.realtime.client.channels import Channels
from tidewire.realtime.client.envelopes import error_from
from tidewire.realtime.client.link import Link

__all__ = ["rejoin"]


async def rejoin(
    link: Link,
    rooms: MutableMapping[str, None],
    channels: Channels,
    refused: Callable[[RealtimeError], None],
) -> None:
    """Rejoin ``rooms`` and resubscribe ``channels`` (from their positions) on ``link``."""
    pending: list[tuple[str, str, Awaitable[dict[str, Any]]]] = []
    for room in list(rooms):
        join = {"type": "join", "room": room}
        pending.append(("room", room, link.request(join, "joined")))
    for subscribe in channels.resubscriptions():
        pending.append(("channel", subscribe["channel"], link.request(subscribe, "subscribed")))
    replies = await asyncio.gather(*(p[2] for p in pending), return_exceptions=True)
    for (kind, name, _), outcome in zip(pending, replies, strict=True):
        if isinstance(outcome, BaseException):
            raise outcome
        reply = outcome
        if reply["type"] == "error":
            # Refused now (e.g. no longer allowed): forget it and tell the app.
            if kind == "room":
                rooms.pop(name, None)
            else:
                channels.forget(name)
            refused(error_from(reply))
