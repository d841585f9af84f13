"""Client options: every default with its reason, the checks, and the back-off delay.

The table of options is docs/client-python.md; the constants here are the
single source of each default value.
"""

from __future__ import annotations

import random
import urllib.parse
from typing import Any, Final

from tidewire.realtime.wire import SUBPROTOCOL
from tidewire.transport import Options

__all__ = [
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
    "backoff_delay",
    "check_url",
    "check_options",
    "connect_kwargs",
]

#: First back-off step (seconds): short enough that a blip costs under a second.
DEFAULT_RECONNECT_BASE: Final = 0.5
#: Longest back-off step (seconds): 30 s bounds the reconnect storm of a fleet
#: of clients after an outage while keeping recovery within history_ttl (300 s).
DEFAULT_RECONNECT_CAP: Final = 30.0
#: Seconds a connection must stay open before the back-off starts over, so a
#: server that accepts and then drops at once is still backed off from.
DEFAULT_STABLE_AFTER: Final = 30.0
#: Seconds for TCP + TLS + the opening handshake + the server's hello (transport default).
DEFAULT_OPEN_TIMEOUT: Final = 10.0
#: Seconds a call, join or subscribe waits for its answer (the server's rpc_timeout).
DEFAULT_CALL_TIMEOUT: Final = 10.0
#: Seconds between app-level pings: under the App's idle_timeout (300 s) and
#: the 30-60 s idle timers of NATs and proxies.
DEFAULT_PING_INTERVAL: Final = 25.0
#: Seconds to wait for the pong before the server is treated as dead.
DEFAULT_PONG_TIMEOUT: Final = 10.0
#: Messages kept while offline: enough for a burst of chat, and flushed at once on
#: reconnect, so it stays well under the server's default burst (200 messages per
#: connection, docs/defaults.md): a bigger flush would be rate limited and, after
#: ten refusals, closed with 1008.
DEFAULT_OFFLINE_MAX_MESSAGES: Final = 100
#: Bytes (encoded JSON) kept while offline: 1 MiB, the transport's message limit.
DEFAULT_OFFLINE_MAX_BYTES: Final = 1024 * 1024
#: Seconds for a node's ``/health`` answer: a live node answers from memory in
#: milliseconds, and each skipped node delays the connection by at most this.
DEFAULT_HEALTH_TIMEOUT: Final = 1.0

#: Transport arguments the client sets itself (subprotocol, timeouts, keepalive).
_RESERVED_TRANSPORT: Final = frozenset({"subprotocols", "open_timeout", "sock", "ping_timeout"})
#: connect() arguments that are not transport Options fields.
_CONNECT_EXTRAS: Final = frozenset({"ssl", "origin", "headers", "extensions"})


def backoff_delay(
    attempt: int, *, base: float, cap: float, rng: random.Random | None = None
) -> float:
    """Seconds to wait before reconnect ``attempt`` (0-based): full jitter.

    ``uniform(0, min(cap, base * 2**attempt))``, the "full jitter" of AWS's
    back-off study: spreading clients over the whole window keeps a fleet that
    lost one server from reconnecting in lockstep.
    """
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, got {attempt}")
    # 2**attempt overflows float past ~1024; the cap is reached long before.
    window = min(cap, base * 2.0 ** min(attempt, 64))
    return (rng or random).uniform(0.0, window)


def check_url(url: str) -> None:
    """ValueError unless ``url`` is a ws:// or wss:// URL with a host."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"not a ws:// or wss:// URL: {url!r}")


def check_options(
    *,
    reconnect_base: float,
    reconnect_cap: float,
    max_attempts: int | None,
    stable_after: float,
    open_timeout: float,
    call_timeout: float,
    ping_interval: float | None,
    pong_timeout: float,
    offline_max_messages: int,
    offline_max_bytes: int,
    health_timeout: float,
) -> None:
    """ValueError naming the first option out of range (the Client's own options)."""
    for name, value in (
        ("reconnect_base", reconnect_base),
        ("reconnect_cap", reconnect_cap),
        ("open_timeout", open_timeout),
        ("call_timeout", call_timeout),
        ("pong_timeout", pong_timeout),
        ("health_timeout", health_timeout),
    ):
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value!r}")
    if stable_after < 0:
        raise ValueError(f"stable_after must be >= 0, got {stable_after!r}")
    if ping_interval is not None and not ping_interval > 0:
        raise ValueError(f"ping_interval must be > 0 or None, got {ping_interval!r}")
    if max_attempts is not None and max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1 or None, got {max_attempts!r}")
    if offline_max_messages < 0 or offline_max_bytes < 0:
        raise ValueError("offline_max_messages and offline_max_bytes must be >= 0")


def connect_kwargs(transport: dict[str, Any], *, open_timeout: float) -> dict[str, Any]:
    """The transport connect() arguments: the caller's, checked now, plus the client's own.

    TypeError for an argument the client sets itself or one connect() does not
    know; the transport's ValueError for a value out of range.
    """
    reserved = _RESERVED_TRANSPORT.intersection(transport)
    if reserved:
        raise TypeError(
            f"{', '.join(sorted(reserved))}: set by the client "
            "(use open_timeout=, pong_timeout=; the subprotocol is tidewire.v1)"
        )
    leftover = dict(transport)
    Options.from_kwargs(leftover)  # TypeError/ValueError now, not at the first connect
    unknown = set(leftover) - _CONNECT_EXTRAS
    if unknown:
        raise TypeError(f"unknown option(s): {', '.join(sorted(unknown))}")
    # The app-level heartbeat proves more than a protocol ping (the server's
    # app reads and answers, and it counts against the App's idle_timeout),
    # so the transport's own keepalive is off: one timer, one verdict.
    return {
        "ping_interval": None,
        "ping_timeout": None,
        **transport,
        "subprotocols": [SUBPROTOCOL],
        "open_timeout": open_timeout,
    }
