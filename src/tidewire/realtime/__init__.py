"""The messaging layer: App, sessions, rooms, channels, RPC, auth and limits (docs/protocol.md)."""

from __future__ import annotations

from tidewire.realtime.api import Published, publish
from tidewire.realtime.app import App
from tidewire.realtime.auth import HMACVerifier, Identity, JWTVerifier, sign_token
from tidewire.realtime.brokers import Broker, MemoryBroker
from tidewire.realtime.channels import Publication
from tidewire.realtime.client import (
    Client,
    ClientState,
    Disconnect,
    OfflineQueueFull,
    backoff_delay,
)
from tidewire.realtime.context import Context
from tidewire.realtime.limits import RateLimit, RateLimits
from tidewire.realtime.metrics import Metrics
from tidewire.realtime.options import AppOptions
from tidewire.realtime.session import Session
from tidewire.realtime.static import static_file
from tidewire.realtime.wire import SUBPROTOCOL

__all__ = [
    "App",
    "AppOptions",
    "Broker",
    "Client",
    "ClientState",
    "Context",
    "Disconnect",
    "HMACVerifier",
    "Identity",
    "JWTVerifier",
    "MemoryBroker",
    "Metrics",
    "OfflineQueueFull",
    "Publication",
    "Published",
    "RateLimit",
    "RateLimits",
    "SUBPROTOCOL",
    "Session",
    "backoff_delay",
    "publish",
    "sign_token",
    "static_file",
]
