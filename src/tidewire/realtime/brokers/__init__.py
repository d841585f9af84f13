"""Brokers: how nodes share fan-out, channel history and presence."""

from __future__ import annotations

from tidewire.realtime.brokers.base import Broker, Node, Target
from tidewire.realtime.brokers.memory import MemoryBroker

__all__ = ["Broker", "MemoryBroker", "Node", "Target"]
