"""Every limit and timeout of the messaging layer: one frozen dataclass, each with its reason.

``None`` disables a limit or a timer.  docs/defaults.md lists the same table.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

__all__ = ["AppOptions"]


@dataclass(frozen=True, slots=True, kw_only=True)
class AppOptions:
    """Options of :class:`~tidewire.realtime.App`; all keyword-only."""

    #: Open connections per app; beyond it new upgrades get HTTP 503.
    max_connections: int | None = 10_000
    #: Rooms one connection may be in; Centrifugo and the anchors use 128.
    max_rooms_per_connection: int = 128
    #: Channels one connection may subscribe to.
    max_channels_per_connection: int = 128
    #: Largest client message (bytes); chat and RPC envelopes are small, and a
    #: smaller limit than the transport's 1 MiB bounds what a JSON parse can cost.
    max_message_size: int = 64 * 1024
    #: Seconds without any client message (an app-level ping counts) before the
    #: connection is closed with IDLE (4101) and reason "idle".  Clients ping every 25 s.
    idle_timeout: float | None = 300.0
    #: Seconds an unauthenticated connection may wait before sending ``auth``
    #: when auth is required (Centrifugo uses 10 s); then closed with AUTH_TIMEOUT.
    auth_timeout: float = 10.0
    #: Default timeout of RPCs in both directions (Phoenix's push timeout).
    rpc_timeout: float = 10.0
    #: Client RPCs one connection may have running at once; more get an error.
    max_concurrent_rpcs: int = 16
    #: Application messages of one connection waiting for their handler; the
    #: connection stops being read beyond it (backpressure, never unbounded).
    max_pending_messages: int = 64
    #: Bytes queued for a connection that has not read them; beyond it the
    #: slow consumer is closed with SLOW_CONSUMER (4001) so it reconnects and recovers.
    max_outgoing_bytes: int = 1024 * 1024
    #: Slow-consumer policy unless a room or message type has its own
    #: (``disconnect``, ``drop`` or ``latest``; see tidewire.realtime.flow).
    slow_consumer: str = "disconnect"
    #: Opt-in batching: seconds to collect messages for one client into one
    #: ``batch`` envelope (fewer frames and syscalls for chatty rooms); None sends each at once.
    batch_interval: float | None = None
    #: A batch is sent early once it holds this many bytes.
    max_batch_bytes: int = 64 * 1024
    #: Publications kept per channel for recovery (Centrifugo's default order of magnitude).
    history_size: int = 100
    #: Seconds a publication stays in history; about 2 minutes covers a reconnect (Ably, Socket.IO).
    history_ttl: float | None = 300.0
    #: Members listed in ``joined``; bigger rooms get only the ``count`` (listing
    #: and sorting 10,000 names per join would make joining a big room O(N)).
    max_members_listed: int = 1000
    #: Rooms with at most this many users get ``userJoined``/``userLeft`` per user;
    #: bigger ones get a batched ``presence`` count (N joins would cost N^2 messages).
    presence_events_max: int = 100
    #: Seconds between the batched ``presence`` counts of a big room.
    presence_interval: float = 1.0
    #: Debug mode (``App(debug=True)``): messages kept per connection, both
    #: directions, in a ring buffer exported by /debug/connections/{id}.
    debug_log_size: int = 100
    #: Debug mode: bytes of each logged message kept (the rest is cut), so a
    #: connection's log holds at most debug_log_size * debug_entry_bytes of data.
    debug_entry_bytes: int = 1024

    def with_(self, **changes: Any) -> AppOptions:
        """A copy with ``changes`` applied (unknown names raise TypeError)."""
        return replace(self, **changes)

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> AppOptions:
        """Pop every option name from ``kwargs`` and build AppOptions from them."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: kwargs.pop(k) for k in list(kwargs) if k in names})
