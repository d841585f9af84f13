"""Sans-I/O RFC 6455 and RFC 7692: bytes in, events out; no asyncio, no sockets."""

from __future__ import annotations

from tidewire.protocol.close import Close, CloseCode
from tidewire.protocol.connection import Connection, Side, State
from tidewire.protocol.events import CloseReceived, Event, Message, Ping, Pong
from tidewire.protocol.frames import Opcode, serialize_frame
from tidewire.protocol.http import Headers, Request, Response

__all__ = [
    "Close",
    "CloseCode",
    "CloseReceived",
    "Connection",
    "Event",
    "Headers",
    "Message",
    "Opcode",
    "Ping",
    "Pong",
    "Request",
    "Response",
    "Side",
    "State",
    "serialize_frame",
]
