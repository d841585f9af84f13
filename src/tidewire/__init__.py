"""tidewire: real-time communication over WebSockets for asyncio.

Public names are imported lazily (PEP 562) so that ``import tidewire.protocol``
never pulls in asyncio.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "serve",
    "connect",
    "WebSocket",
    "App",
    "Session",
    "Client",
    "CloseCode",
    "TidewireError",
    "ConnectionClosed",
]

_LAZY = {
    "serve": "tidewire.transport",
    "connect": "tidewire.transport",
    "WebSocket": "tidewire.transport",
    "App": "tidewire.realtime",
    "Session": "tidewire.realtime",
    "Client": "tidewire.realtime",
    "CloseCode": "tidewire.protocol.close",
    "TidewireError": "tidewire.errors",
    "ConnectionClosed": "tidewire.errors",
}

if TYPE_CHECKING:
    from tidewire.errors import ConnectionClosed, TidewireError
    from tidewire.protocol.close import CloseCode
    from tidewire.realtime import App, Client, Session
    from tidewire.transport import WebSocket, connect, serve


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tidewire' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
