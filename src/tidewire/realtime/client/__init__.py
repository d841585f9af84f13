"""The reconnecting Python client for wire protocol v1 (docs/client-python.md).

The public names live here; the modules behind them each do one job:

- :mod:`.options`      defaults with their reasons, option checks, back-off delay
- :mod:`.client`       :class:`Client`: the public API, the state machine's driver, the
  reconnect loop
- :mod:`.state`        :class:`ClientState` and waiting for OPEN
- :mod:`.nodes`        which URL next: round-robin from a random start, ``/health`` probes
- :mod:`.link`         one connection: handshake, hello, requests, heartbeat, reader
- :mod:`.credentials`  the token and the ``auth`` exchange
- :mod:`.restore`      rooms rejoined and channels resubscribed on a new connection
- :mod:`.dispatch`     where each envelope from the server goes
- :mod:`.channels`     subscriptions, positions, recovery, each publication once
- :mod:`.requests`     joins, subscribes and calls to the server; the server's calls
- :mod:`.queue`        the bounded offline queue
- :mod:`.events`       event callbacks, plain or async
- :mod:`.envelopes`    decoding the server's envelopes, errors as exceptions
"""

from __future__ import annotations

from tidewire.realtime.client.client import Client
from tidewire.realtime.client.link import Disconnect
from tidewire.realtime.client.options import (
    DEFAULT_CALL_TIMEOUT,
    DEFAULT_HEALTH_TIMEOUT,
    DEFAULT_OFFLINE_MAX_BYTES,
    DEFAULT_OFFLINE_MAX_MESSAGES,
    DEFAULT_OPEN_TIMEOUT,
    DEFAULT_PING_INTERVAL,
    DEFAULT_PONG_TIMEOUT,
    DEFAULT_RECONNECT_BASE,
    DEFAULT_RECONNECT_CAP,
    DEFAULT_STABLE_AFTER,
    backoff_delay,
)
from tidewire.realtime.client.queue import OfflineQueueFull
from tidewire.realtime.client.state import ClientState

__all__ = [
    "Client",
    "ClientState",
    "Disconnect",
    "OfflineQueueFull",
    "backoff_delay",
    "DEFAULT_RECONNECT_BASE",
    "DEFAULT_RECONNECT_CAP",
    "DEFAULT_STABLE_AFTER",
    "DEFAULT_OPEN_TIMEOUT",
    "DEFAULT_CALL_TIMEOUT",
    "DEFAULT_PING_INTERVAL",
    "DEFAULT_PONG_TIMEOUT",
    "DEFAULT_OFFLINE_MAX_MESSAGES",
    "DEFAULT_OFFLINE_MAX_BYTES",
    "DEFAULT_HEALTH_TIMEOUT",
]
