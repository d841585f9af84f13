"""Dispatch: where each envelope the server sends goes.

Replies go to the request waiting for them, ``pong`` to the heartbeat,
``publish`` and ``subscribed`` to the channels, ``rpc`` to the client's
handlers, and everything else out as an event named by its type (``error``
envelopes as exceptions).  ``batch`` envelopes are unpacked in order.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from tidewire.errors import ConnectionClosed, RealtimeError
from tidewire.realtime.client.channels import Channels
from tidewire.realtime.client.envelopes import error_from
from tidewire.realtime.client.events import Emitter
from tidewire.realtime.client.link import Link
from tidewire.realtime.client.requests import RPCHandlers

__all__ = ["Dispatcher"]

logger = logging.getLogger("tidewire.realtime.client")


class Dispatcher:
    """Routes a reader's envelopes to requests, channels, RPC handlers and events."""

    __slots__ = ("_events", "_channels", "_rpcs")

    def __init__(self, events: Emitter, channels: Channels, rpcs: RPCHandlers) -> None:
        """Route to these."""
        self._events = events
        self._channels = channels
        self._rpcs = rpcs

    def __call__(self, link: Link, envelope: dict[str, Any] | None) -> None:
        """Route one envelope received on ``link`` (None: it was not a v1 envelope)."""
        events = self._events
        if envelope is None:
            events.emit("error", RealtimeError("not a v1 envelope", "bad_envelope"))
            return
        kind: str = envelope["type"]
        if kind == "batch":  # opt-in server batching: each element as if on its own
            for item in envelope.get("messages", ()):
                if isinstance(item, dict) and isinstance(item.get("type"), str):
                    self(link, item)
            return
        events.emit("message", envelope)
        if kind == "pong":
            link.pong.set()
            return
        if kind == "publish":
            self._channels.publication(envelope)
            return
        if kind == "rpc":
            events.spawn(self._answer_rpc(link, envelope))
            return
        if kind == "subscribed":
            self._channels.subscribed(envelope)
        if link.resolve(envelope):
            return
        if kind == "error":
            events.emit("error", error_from(envelope))
        elif kind == "rpc_result":
            logger.debug("late or unknown rpc_result %r dropped", envelope.get("id"))
        else:
            events.emit(kind, envelope)

    async def _answer_rpc(self, link: Link, envelope: dict[str, Any]) -> None:
        """Run a server-to-client RPC and send its ``rpc_result``."""
        text = await self._rpcs.answer(envelope)
        with contextlib.suppress(ConnectionClosed):
            link.ws.send_nowait(text)
