"""Channel history: ``(epoch, offset)`` positions and recovery after a short disconnect.

Each channel numbers its publications 1, 2, 3 ... within an *epoch*, a random
string chosen when the history starts (a restarted in-memory broker or a lost
Redis stream starts a new one).  A client that remembers ``(epoch, offset)``
asks for what it missed; it gets the publications after ``offset`` in order,
or ``recovered: false`` when the epoch changed or the gap is older than what
the history keeps (size and age limits), so the app refetches its state.
Pure: time is passed in.
"""

from __future__ import annotations

import secrets
from collections import deque
from dataclasses import dataclass
from typing import Any

__all__ = ["Publication", "History", "Recovery", "new_epoch"]


def new_epoch() -> str:
    """A fresh random epoch (8 hex characters)."""
    return secrets.token_hex(4)


@dataclass(frozen=True, slots=True)
class Publication:
    """One message published to a channel."""

    channel: str
    offset: int
    payload: Any
    time: float
    #: Who published it (user, or connection id for anonymous clients); None for the server.
    publisher: str | None = None

    def envelope(self) -> dict[str, Any]:
        """The ``publish`` envelope subscribers receive (docs/protocol.md)."""
        return {
            "type": "publish",
            "channel": self.channel,
            "payload": self.payload,
            "offset": self.offset,
        }


@dataclass(frozen=True, slots=True)
class Recovery:
    """The answer to "what did I miss since (epoch, offset)?"."""

    recovered: bool
    epoch: str
    offset: int
    publications: tuple[Publication, ...] = ()


class History:
    """The last ``size`` publications of one channel, none older than ``ttl`` seconds."""

    __slots__ = ("channel", "size", "ttl", "epoch", "top", "_items")

    def __init__(
        self, channel: str, *, size: int, ttl: float | None, epoch: str | None = None
    ) -> None:
        """An empty history; ``size`` 0 keeps offsets but no publications."""
        if size < 0:
            raise ValueError(f"history size must be >= 0, got {size}")
        self.channel = channel
        self.size = size
        self.ttl = ttl
        self.epoch = epoch or new_epoch()
        self.top = 0
        self._items: deque[Publication] = deque(maxlen=size or None)

    def append(self, payload: Any, now: float, publisher: str | None = None) -> Publication:
        """Record a publication with the next offset and return it."""
        self.top += 1
        pub = Publication(self.channel, self.top, payload, now, publisher)
        if self.size:
            self._items.append(pub)
        self.prune(now)
        return pub

    def prune(self, now: float) -> None:
        """Forget publications older than ``ttl``."""
        if self.ttl is None:
            return
        items = self._items
        horizon = now - self.ttl
        while items and items[0].time < horizon:
            items.popleft()

    def __len__(self) -> int:
        return len(self._items)

    def latest(self, now: float, limit: int | None = None) -> list[Publication]:
        """The kept publications, oldest first (at most the newest ``limit``)."""
        self.prune(now)
        items = list(self._items)
        return items if limit is None else items[-limit:] if limit > 0 else []

    def since(self, epoch: str, offset: int, now: float) -> Recovery:
        """What a subscriber that saw ``(epoch, offset)`` missed, or ``recovered=False``."""
        self.prune(now)
        if epoch != self.epoch or offset > self.top:
            return Recovery(False, self.epoch, self.top)
        if offset == self.top:
            return Recovery(True, self.epoch, self.top)
        items = self._items
        first = items[0].offset if items else self.top + 1
        if offset + 1 < first:
            return Recovery(False, self.epoch, self.top)
        missed = tuple(pub for pub in items if pub.offset > offset)
        return Recovery(True, self.epoch, self.top, missed)
