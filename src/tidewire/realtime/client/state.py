"""The client's state machine: CONNECTING, OPEN, RECONNECTING, CLOSED, and waiting for OPEN.

::

    CLOSED --connect()--> CONNECTING --hello, auth, restore--> OPEN
    OPEN --drop--> RECONNECTING --restored--> OPEN
    any --close(), stop code, gave up--> CLOSED

The open :class:`~tidewire.realtime.client.link.Link` is set exactly while
the state is OPEN, so a request never goes out on a connection whose session
is not restored yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import Callable

from tidewire.errors import InvalidState, RealtimeError
from tidewire.realtime.client.link import Link

__all__ = ["ClientState", "Status"]


class ClientState(enum.Enum):
    """Where a :class:`Client` is in its life cycle."""

    CONNECTING = "connecting"
    OPEN = "open"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


class Status:
    """The current state, the open link, and the waiters for the next change."""

    __slots__ = ("state", "link", "_changed", "_on_change")

    def __init__(self, on_change: Callable[[ClientState], None]) -> None:
        """Start CLOSED; ``on_change`` is told every new state."""
        self.state = ClientState.CLOSED
        self.link: Link | None = None
        self._changed: asyncio.Future[None] | None = None
        self._on_change = on_change

    def set(self, state: ClientState) -> None:
        """Enter ``state``: wake the waiters and tell ``on_change`` (nothing if unchanged)."""
        if state is self.state:
            return
        self.state = state
        waiter = self._changed
        if waiter is not None:
            self._changed = None
            if not waiter.done():
                waiter.set_result(None)
        self._on_change(state)

    async def wait_open(self, deadline: float, wait: float, *, started: bool) -> Link:
        """The open link; waits through (re)connecting until ``deadline`` (loop time).

        RealtimeError ``timeout`` past the deadline, ``disconnected`` once CLOSED;
        InvalidState when the client was never ``started``.
        """
        loop = asyncio.get_running_loop()
        while True:
            link = self.link
            if self.state is ClientState.OPEN and link is not None:
                return link
            if self.state is ClientState.CLOSED:
                if not started:
                    raise InvalidState("call connect() first")
                raise RealtimeError("the client is closed", "disconnected")
            if self._changed is None or self._changed.done():
                self._changed = loop.create_future()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise RealtimeError(f"not connected within {wait} s", "timeout")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._changed), remaining)
