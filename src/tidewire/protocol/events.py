"""Events the sans-I/O connection produces: frozen, slotted values."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Event", "Message", "Ping", "Pong", "CloseReceived"]


@dataclass(frozen=True, slots=True)
class Message:
    """A data message, or one piece of it when streaming.

    ``data`` is ``str`` for text (already validated UTF-8) and ``bytes`` for
    binary.  ``fin`` is False for a piece of a message delivered while it is
    still arriving (only when the connection is asked to stream).
    """

    data: str | bytes
    fin: bool = True

    @property
    def is_text(self) -> bool:
        """True for a text message (opcode 0x1)."""
        return isinstance(self.data, str)


@dataclass(frozen=True, slots=True)
class Ping:
    """A ping was received (RFC 6455 section 5.5.2); a pong is already queued."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    """A pong was received (RFC 6455 section 5.5.3)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class CloseReceived:
    """The peer sent a close frame (RFC 6455 section 5.5.1)."""

    code: int
    reason: str


Event = Message | Ping | Pong | CloseReceived
