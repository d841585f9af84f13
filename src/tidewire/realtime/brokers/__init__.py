"""Brokers: how nodes share fan-out, channel history and presence.

``RedisBroker`` is imported on first use (PEP 562), so this package works
without the ``redis`` extra; creating one without it raises ImportError.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tidewire.realtime.brokers.base import Broker, Node, Target
from tidewire.realtime.brokers.memory import MemoryBroker

if TYPE_CHECKING:
    from tidewire.realtime.brokers.redis import RedisBroker

__all__ = ["Broker", "MemoryBroker", "Node", "RedisBroker", "Target"]


def __getattr__(name: str) -> Any:
    """Import RedisBroker lazily."""
    if name == "RedisBroker":
        from tidewire.realtime.brokers.redis import RedisBroker

        return RedisBroker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
