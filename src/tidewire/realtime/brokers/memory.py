"""The in-memory broker: one process, direct calls, history in RAM (the default)."""

from __future__ import annotations

from typing import Any

from tidewire.realtime.brokers.base import Broker, Node, Target
from tidewire.realtime.channels import History, Publication, Recovery
from tidewire.realtime.wire import encode

__all__ = ["MemoryBroker"]

#: Publishes between sweeps of channels whose history expired.
_SWEEP_EVERY = 1024


class MemoryBroker(Broker):
    """Delivers within this process; keeps ``history_size`` publications per channel."""

    def __init__(self, *, history_size: int = 100, history_ttl: float | None = 300.0) -> None:
        """History limits per channel (see AppOptions.history_size / history_ttl)."""
        self.history_size = history_size
        self.history_ttl = history_ttl
        self.histories: dict[str, History] = {}
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
        """Drop channels whose every publication expired (bounded memory for one-off channels)."""
        if self.history_ttl is None:
            return
        for name in [n for n, h in self.histories.items() if h.latest(now) == []]:
            del self.histories[name]

    async def recover(self, channel: str, epoch: str, offset: int, now: float) -> Recovery:
        """Missed publications from the local history."""
        return self._history(channel).since(epoch, offset, now)

    async def position(self, channel: str, now: float) -> tuple[str, int]:
        """The channel's epoch and last offset."""
        history = self._history(channel)
        return history.epoch, history.top
