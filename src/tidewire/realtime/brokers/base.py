"""The broker interface: fan-out to every node, channel history, and room presence.

A node hands every cross-connection delivery to the broker; the broker brings it
to every node (itself included) by calling :meth:`Node.deliver`.  The in-memory
broker does that with a direct call; the Redis broker through Redis.  The
broker also keeps the presence registry (who is in which room, on any node), so
``joined``, ``presence``, ``rooms.list`` and the first-join/last-leave decisions
are cluster-wide (docs/protocol.md §6, docs/scale-out.md).
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Protocol

from tidewire.realtime.channels import Publication, Recovery
from tidewire.realtime.presence import PresenceUpdate, RoomPresence

__all__ = ["Broker", "Node", "PresenceListener", "Target"]

#: ``listener(room, member, joined, count)``: presence changed without a join or
#: leave on this node (a dead node's members expired, or the registry was
#: repaired): ``joined`` False means the member's last connection went.
PresenceListener = Callable[[str, str, bool, int], None]


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
    """Fan-out across nodes, channel history with (epoch, offset) positions, presence."""

    #: Names the broker in ``/health`` (``memory``, ``redis``).
    kind: ClassVar[str] = "custom"

    #: Told of presence changes that no join or leave on this node caused (the
    #: App sets it to announce them as ``userJoined``/``userLeft``).
    on_presence_change: PresenceListener | None = None

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

    # ------------------------------------------------------------ presence

    @abstractmethod
    async def presence_join(
        self, room: str, member: str, conn_id: str, meta: Mapping[str, Any]
    ) -> PresenceUpdate:
        """Register connection ``conn_id`` of ``member`` in ``room``, on every node.

        ``changed`` is True when it is the member's first connection in the
        room anywhere (exactly one join sees True, atomically); ``meta`` (JSON
        values) is copied as it is now.  Joining twice is allowed and changes
        nothing but the metadata.  Raises BrokerError when the registry cannot be reached; the
        connection is then not registered.
        """

    @abstractmethod
    async def presence_leave(self, room: str, conn_id: str) -> PresenceUpdate:
        """Remove connection ``conn_id`` from ``room``; ``changed``: its member's last anywhere.

        A connection that is not in the room gives ``changed`` False and
        ``member`` None.  On BrokerError the connection is still gone from
        this node's view; the broker removes it from the registry later
        (and tells :attr:`on_presence_change`).
        """

    @abstractmethod
    async def presence_members(
        self, room: str, limit: int | None = None, *, meta: bool = True
    ) -> RoomPresence:
        """The room's members on every node; listed only when there are at most ``limit``.

        ``meta=False`` leaves each member's ``meta`` empty (cheaper: ``joined``
        needs only the names).
        """

    @abstractmethod
    async def presence_rooms(self) -> list[tuple[str, int]]:
        """Every room with a member on any node, with its member count, sorted by room."""

    # -------------------------------------------------------------- health

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
