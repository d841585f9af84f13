"""asyncio transport: serve() and connect() on asyncio.Protocol, driving the protocol core."""

from __future__ import annotations

from tidewire.transport.broadcast import broadcast
from tidewire.transport.client import ClientConnection, connect
from tidewire.transport.connection import Data, WebSocket
from tidewire.transport.options import DEFAULTS, Options
from tidewire.transport.routing import Router
from tidewire.transport.server import Server, ServerConnection, serve

__all__ = [
    "ClientConnection",
    "DEFAULTS",
    "Data",
    "Options",
    "Router",
    "Server",
    "ServerConnection",
    "WebSocket",
    "broadcast",
    "connect",
    "serve",
]
