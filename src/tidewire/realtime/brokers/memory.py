"""The in-memory broker: one process, direct calls, history and presence in RAM (the default)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from tidewire.realtime.brokers.base import Broker, Node, Target
from tidewire.realtime.channels import History, Publication, Recovery
from tidewire.realtime.presence import PresenceTable, PresenceUpdate, RoomPresence
from tidewire.realtime.wire import encode

__all__ = ["MemoryBroker"]

#: Publishes between sweeps of channels whose history expired.
_SWEEP_EVERY = 1024


class MemoryBroker(Broker):
    """Delivers within this process; keeps ``history_size`` publications per channel.

    Presence is exact and costs no I/O: the process is the whole cluster, and
    its death takes every connection with it.  ``clock`` is the time the broker
    would use when it acts by itself (every call today is given ``now``); the
    App passes its own.
    """

    kind: ClassVar[str] = "memory"

    def __init__(
        self,
        *,
        history_size: int = 100,
        history_ttl: float | None = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """History limits per channel (see AppOptions.history_size / history_ttl)."""
        self.history_size = history_size
        self.history_ttl = history_ttl
        self.clock = clock
        self.histories: dict[str, History] = {}
        self.presence = PresenceTable()
        self._node: Node | None = None
        self._publishes = 0

    async def start(self, node: Node) -> None:
        """Deliver to ``node`` from now on."""
        self._node = node

    async def close(self) -> None:
        """Stop delivering; history is kept until the object is dropped."""
        self._node = None

    async def send(self, target: Target, name: str, text: str, exclude: str | None = None) -> None:
        """Deliver to the local node at once."""
        if self._node is not None:
            self._node.deliver(target, name, text, exclude)

    def _history(self, channel: str) -> History:
        history = self.histories.get(channel)
        if history is None:
            history = History(channel, size=self.history_size, ttl=self.history_ttl)
            self.histories[channel] = history
        return history

    async def publish(
        self, channel: str, payload: Any, *, publisher: str | None, now: float
    ) -> Publication:
        """Number the publication, keep it, deliver it."""
        pub = self._history(channel).append(payload, now, publisher)
        self._publishes += 1
        if self._publishes % _SWEEP_EVERY == 0:
            self._sweep(now)
        if self._node is not None:
            self._node.deliver(Target.CHANNEL, channel, encode(pub.envelope()), None)
        return pub

    def _sweep(self, now: float) -> None:
        """Drop channels whose every publication expired (bounded memory for one-off channels).

        A dropped channel starts over at offset 1 under a new epoch, so a client
        that comes back with an old position gets ``recovered: false``, never
        a silent gap or a duplicate.  Channels someone here follows are kept:
        their subscribers know only the offsets, not the epoch, of live
        publications, and an offset starting over would look like duplicates.
        """
        if self.history_ttl is None:
            return
        node = self._node
        for name in [n for n, h in self.histories.items() if h.latest(now) == []]:
            if node is None or not node.receivers(Target.CHANNEL, name):
                del self.histories[name]

    async def recover(self, channel: str, epoch: str, offset: int, now: float) -> Recovery:
        """Missed publications from the local history."""
        return self._history(channel).since(epoch, offset, now)

    async def position(self, channel: str, now: float) -> tuple[str, int]:
        """The channel's epoch and last offset."""
        history = self._history(channel)
        return history.epoch, history.top

    async def presence_join(
        self, room: str, member: str, conn_id: str, meta: Mapping[str, Any]
    ) -> PresenceUpdate:
        """Register the connection in the process's table (no I/O, never suspends)."""
        return self.presence.join(room, member, conn_id, meta)

    async def presence_leave(self, room: str, conn_id: str) -> PresenceUpdate:
        """Remove the connection from the process's table."""
        return self.presence.leave(room, conn_id)

    async def presence_members(
        self, room: str, limit: int | None = None, *, meta: bool = True
    ) -> RoomPresence:
        """The room's members, from the process's table."""
        return self.presence.members(room, limit, meta=meta)

    async def presence_rooms(self) -> list[tuple[str, int]]:
        """Rooms with members, from the process's table."""
        return self.presence.counts()
