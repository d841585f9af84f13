"""The broker interface: how a node fans out to every node and keeps channel history.

A node hands every cross-connection delivery to the broker; the broker brings it
to every node (itself included) by calling :meth:`Node.deliver`.  The in-memory
broker does that with a direct call; the Redis broker through Redis.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Protocol

from tidewire.realtime.channels import Publication, Recovery

__all__ = ["Broker", "Node", "Target"]


class Target(enum.Enum):
    """Who a delivery goes to."""

    ALL = "all"
    ROOM = "room"
    USER = "user"
    CONNECTION = "conn"
    CHANNEL = "channel"


class Node(Protocol):
    """What a broker calls on each node: deliver ``text`` to the local receivers."""

    def deliver(self, target: Target, name: str, text: str, exclude: str | None) -> None:
        """Write ``text`` (an encoded envelope) to the local receivers of ``target``/``name``."""
        ...

    def receivers(self, target: Target, name: str) -> Sequence[object]:
        """The local receivers of ``target``/``name`` (a broker skips work for nobody)."""
        ...


class Broker(ABC):
    """Fan-out across nodes plus channel history with (epoch, offset) positions."""

    @abstractmethod
    async def start(self, node: Node) -> None:
        """Connect and start delivering to ``node``."""

    @abstractmethod
    async def close(self) -> None:
        """Stop delivering and release connections."""

    @abstractmethod
    async def send(self, target: Target, name: str, text: str, exclude: str | None = None) -> None:
        """Deliver ``text`` to ``target``/``name`` on every node (``exclude``: a connection id)."""

    @abstractmethod
    async def publish(
        self, channel: str, payload: Any, *, publisher: str | None, now: float
    ) -> Publication:
        """Append to the channel's history (next offset) and deliver to its subscribers."""

    @abstractmethod
    async def recover(self, channel: str, epoch: str, offset: int, now: float) -> Recovery:
        """What a subscriber that saw ``(epoch, offset)`` missed (``recovered=False`` if lost)."""

    @abstractmethod
    async def position(self, channel: str, now: float) -> tuple[str, int]:
        """The channel's current ``(epoch, offset)``."""

    @property
    def healthy(self) -> bool:
        """Whether deliveries currently reach every node."""
        return True

    async def probe(self, timeout: float = 1.0) -> bool:
        """Whether a message sent through the broker now comes back to this node in time.

        For ``/health``: a broker whose subscription silently died must report it
        (reliability-anchors §3.3 item 5).  The default trusts :attr:`healthy`.
        """
        return self.healthy
