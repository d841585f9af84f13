"""Channel subscriptions of a Client: positions, recovery, each publication once.

Each subscription remembers the last ``(epoch, offset)`` it saw.  A
resubscribe after a reconnect asks for everything since then; the recovered
publications are delivered before any live one, and offsets at or below the
last one seen are dropped, so a callback sees every offset once, in order.
When the server cannot recover (history gone, new epoch) the subscription
takes the new position and ``recovery_failed`` is reported.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

from tidewire.errors import InvalidState

__all__ = ["ChannelCallback", "Channels", "Subscription"]

logger = logging.getLogger("tidewire.realtime.client")

#: A channel callback: gets each ``publish`` envelope once, in offset order.
ChannelCallback: TypeAlias = Callable[[dict[str, Any]], Any]
#: Runs a channel callback with its arguments; the last argument names it for errors.
Deliver: TypeAlias = Callable[[ChannelCallback, tuple[Any, ...], str], None]


@dataclass(slots=True)
class Subscription:
    """One channel's callback and the last position seen (None before the first reply)."""

    channel: str
    callback: ChannelCallback
    epoch: str | None = None
    offset: int = 0


class Channels:
    """The client's subscriptions by channel name."""

    __slots__ = ("_subs", "_deliver", "_recovery_failed")

    def __init__(self, deliver: Deliver, recovery_failed: Callable[[str], None]) -> None:
        """Deliver publications with ``deliver``; report lost history with ``recovery_failed``."""
        self._subs: dict[str, Subscription] = {}
        self._deliver = deliver
        self._recovery_failed = recovery_failed

    @property
    def names(self) -> frozenset[str]:
        """The channels subscribed."""
        return frozenset(self._subs)

    def position(self, channel: str) -> tuple[str, int] | None:
        """The last ``(epoch, offset)`` seen on ``channel``, or None when not subscribed."""
        sub = self._subs.get(channel)
        if sub is None or sub.epoch is None:
            return None
        return sub.epoch, sub.offset

    def add(self, channel: str, callback: ChannelCallback) -> Subscription:
        """A new subscription; InvalidState when ``channel`` already has one."""
        if channel in self._subs:
            raise InvalidState(f"already subscribed to {channel!r}")
        sub = Subscription(channel, callback)
        self._subs[channel] = sub
        return sub

    def remove(self, sub: Subscription) -> bool:
        """Forget ``sub`` if it is still the channel's subscription; whether it was."""
        if self._subs.get(sub.channel) is not sub:
            return False
        del self._subs[sub.channel]
        return True

    def forget(self, channel: str) -> None:
        """Forget ``channel``'s subscription (the server refused it)."""
        self._subs.pop(channel, None)

    def resubscriptions(self) -> list[dict[str, Any]]:
        """``subscribe`` envelopes, with ``since``, for every subscription that has a position."""
        envelopes: list[dict[str, Any]] = []
        for sub in list(self._subs.values()):
            if sub.epoch is None:
                continue  # its own subscribe() request is still in flight
            subscribe: dict[str, Any] = {"type": "subscribe", "channel": sub.channel}
            subscribe["since"] = {"epoch": sub.epoch, "offset": sub.offset}
            envelopes.append(subscribe)
        return envelopes

    def subscribed(self, envelope: dict[str, Any]) -> None:
        """Take a channel's position; deliver recovered publications before any live one."""
        sub = self._subs.get(str(envelope.get("channel")))
        epoch, offset = envelope.get("epoch"), envelope.get("offset")
        if sub is None or not isinstance(epoch, str) or not isinstance(offset, int):
            return
        if envelope.get("recovered") is False:
            sub.epoch, sub.offset = epoch, offset
            self._recovery_failed(sub.channel)
            return
        if sub.epoch != epoch:
            sub.epoch, sub.offset = epoch, offset
        for publication in envelope.get("publications") or ():
            if isinstance(publication, dict):
                self.publication(publication)
        sub.offset = max(sub.offset, offset)

    def publication(self, envelope: dict[str, Any]) -> None:
        """Deliver a publication once: offsets at or below the last one seen are dropped."""
        sub = self._subs.get(str(envelope.get("channel")))
        if sub is None:
            return
        offset = envelope.get("offset")
        if isinstance(offset, int):
            if sub.epoch is not None and offset <= sub.offset:
                logger.debug("duplicate publication %s@%d dropped", sub.channel, offset)
                return
            sub.offset = offset
        self._deliver(sub.callback, (envelope,), f"channel {sub.channel!r}")
