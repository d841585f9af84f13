"""The offline queue: what a Client was asked to send while it had no open connection.

Bounded by messages and by bytes; a message that does not fit is refused with
:class:`OfflineQueueFull`, never dropped silently.  Flushed in order, with no
await in between, so nothing sent later can overtake it.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable

from tidewire.errors import RealtimeError

__all__ = ["OfflineQueue", "OfflineQueueFull"]

logger = logging.getLogger("tidewire.realtime.client")


class OfflineQueueFull(RealtimeError):
    """send() while offline with the offline queue at its limit; nothing was queued.

    ``what`` names the limit ("messages" or "bytes"), ``limit`` its value and
    ``size`` what the queue would have held with this message.
    """

    code = "offline_queue_full"

    def __init__(self, what: str, limit: int, size: int) -> None:
        """Name the limit that fired."""
        super().__init__(f"offline queue full: {size} {what} > offline_max_{what}={limit}")
        self.what = what
        self.limit = limit
        self.size = size


class OfflineQueue:
    """Encoded messages waiting for a connection, in the order they were sent."""

    __slots__ = ("max_messages", "max_bytes", "_items", "_bytes")

    def __init__(self, max_messages: int, max_bytes: int) -> None:
        """An empty queue holding at most ``max_messages`` and ``max_bytes``."""
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._items: deque[tuple[str, int]] = deque()
        self._bytes = 0

    def __len__(self) -> int:
        """Messages waiting."""
        return len(self._items)

    @property
    def bytes(self) -> int:
        """Bytes (encoded UTF-8) waiting."""
        return self._bytes

    def put(self, text: str) -> None:
        """Append ``text``; OfflineQueueFull (and nothing queued) past either limit."""
        size = len(text.encode("utf-8"))
        if len(self._items) + 1 > self.max_messages:
            raise OfflineQueueFull("messages", self.max_messages, len(self._items) + 1)
        if self._bytes + size > self.max_bytes:
            raise OfflineQueueFull("bytes", self.max_bytes, self._bytes + size)
        self._items.append((text, size))
        self._bytes += size

    def flush(self, send: Callable[[str], None]) -> None:
        """``send`` every message in order; one that raises stays queued, with those after it."""
        items = self._items
        for _ in range(len(items)):
            text, size = items[0]
            send(text)
            items.popleft()
            self._bytes -= size

    def discard(self) -> None:
        """Drop everything (close() does; the count goes to the log)."""
        if self._items:
            logger.info("client closed with %d queued messages discarded", len(self._items))
            self._items.clear()
            self._bytes = 0
