"""Metrics: per-connection stats, global counters, debug logs, Prometheus and JSON renderers.

:class:`Metrics` is fed by the App at a handful of points (a connection
opened or closed, a message received, an envelope sent, a fan-out delivered)
and renders what it knows on demand: :meth:`Metrics.prometheus` for
``/metrics`` (the Prometheus text exposition format, version 0.0.4, written by
hand) and :meth:`Metrics.stats` for ``/stats``.  The transport already counts
messages and bytes per connection (``WebSocket.messages_in`` ... ``bytes_out``);
this module adds what only the messaging layer sees: payload bytes (for the
compression ratio), error codes sent, close codes and per-room traffic; drops
are the sessions' own (slow-consumer policies, :mod:`tidewire.realtime.flow`).

In debug mode every connection also keeps a :class:`DebugLog`, a ring buffer of
its last messages in both directions, each cut to a bounded size, exported as
JSON by ``/debug/connections/{id}``.  Tokens in ``auth`` messages are redacted
before they are stored.

:class:`HealthCheck` adds the broker to ``/health``: its probe, cached.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import math
import re
import time
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tidewire.protocol.close import CloseCode

if TYPE_CHECKING:
    from tidewire.realtime.app import App
    from tidewire.realtime.brokers.base import Broker
    from tidewire.realtime.session import Session
    from tidewire.transport import WebSocket

__all__ = [
    "DEFAULT_TOP",
    "HEALTH_CACHE",
    "HEALTH_PROBE_TIMEOUT",
    "MAX_TOP",
    "PROMETHEUS_CONTENT_TYPE",
    "ConnectionMetrics",
    "DebugLog",
    "Family",
    "HealthCheck",
    "Metrics",
    "escape_help",
    "escape_label_value",
    "render_prometheus",
]

#: The Content-Type of the text exposition format Prometheus scrapes.
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Entries in each top list of /stats unless ``?top=`` asks otherwise.
DEFAULT_TOP = 10
#: Most entries a top list may ask for: the answer stays small even with 10,000 connections.
MAX_TOP = 100
#: Closed connections whose debug log stays exportable (debug mode only): enough to
#: look at why a client just dropped, bounded so churn cannot grow memory.
RECENTLY_CLOSED = 32

#: Seconds /health reuses the broker's probe result: load balancers check every few
#: seconds, and a flood of checks must not become a flood of Redis round trips.
HEALTH_CACHE = 1.0
#: Seconds /health waits for the broker's probe: Redis answers in milliseconds, and
#: the check must answer well within a load balancer's timeout (often 2-5 s).
HEALTH_PROBE_TIMEOUT = 0.5

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_ERROR_PREFIX = '{"type":"error",'
_TRAFFIC = (
    "messages_in",
    "messages_out",
    "bytes_in",
    "bytes_out",
    "payload_bytes_in",
    "payload_bytes_out",
)


def _size(data: str | bytes) -> int:
    """UTF-8 length; ``str.isascii()`` is O(1) in CPython, so ASCII text costs no copy."""
    if isinstance(data, bytes) or data.isascii():
        return len(data)
    return len(data.encode("utf-8"))


def _redact(text: str) -> str:
    """``text`` with the value of a top-level ``token`` field replaced (auth messages)."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return text
    if isinstance(obj, dict) and "token" in obj:
        obj["token"] = "[redacted]"
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    return text


class DebugLog:
    """The last ``size`` messages of one connection, each cut to ``entry_bytes`` (a ring buffer).

    Memory per connection is bounded by ``size * entry_bytes`` plus a small
    constant per entry, however big or many the messages are.
    """

    __slots__ = ("entries", "entry_bytes", "recorded")

    def __init__(self, size: int, entry_bytes: int) -> None:
        """An empty log keeping ``size`` entries of at most ``entry_bytes`` bytes of data."""
        if size < 1 or entry_bytes < 1:
            raise ValueError(f"debug log size and entry bytes must be >= 1: {size}, {entry_bytes}")
        self.entries: deque[tuple[float, str, int, str, bool, bool]] = deque(maxlen=size)
        self.entry_bytes = entry_bytes
        #: Messages recorded since the connection opened (older ones fell out).
        self.recorded = 0

    def add(self, direction: str, data: str | bytes, size: int, now: float) -> None:
        """Record one message: ``direction`` is ``"in"`` or ``"out"``, ``size`` its bytes."""
        self.recorded += 1
        limit = self.entry_bytes
        if isinstance(data, bytes):
            half = limit // 2 or 1
            self.entries.append((now, direction, size, data[:half].hex(), size > half, True))
            return
        if direction == "in" and '"token"' in data:
            data = _redact(data)
        shown = data
        truncated = _size(data) > limit
        if truncated:
            shown = data.encode("utf-8")[:limit].decode("utf-8", "ignore")
        self.entries.append((now, direction, size, shown, truncated, False))

    def export(self) -> list[dict[str, Any]]:
        """The entries, oldest first, as JSON-ready dicts."""
        out = []
        for at, direction, size, data, truncated, binary in self.entries:
            entry: dict[str, Any] = {
                "at": round(at, 3),
                "direction": direction,
                "size": size,
                "data": data,
            }
            if truncated:
                entry["truncated"] = True
            if binary:
                entry["binary"] = True  # ``data`` is hex
            out.append(entry)
        return out


class ConnectionMetrics:
    """What the messaging layer counts for one connection (the transport counts the rest)."""

    __slots__ = ("session", "payload_in", "payload_out", "errors", "log")

    def __init__(self, session: Session, log: DebugLog | None) -> None:
        """Zero counters for ``session``; ``log`` in debug mode."""
        self.session = session
        self.payload_in = 0
        self.payload_out = 0
        self.errors = 0
        self.log = log


@dataclass(frozen=True, slots=True)
class Family:
    """One metric family: a name, ``counter`` or ``gauge``, a help text and its samples."""

    name: str
    kind: str
    help: str
    samples: tuple[tuple[tuple[tuple[str, str], ...], float], ...] = ()

    @classmethod
    def single(cls, name: str, kind: str, help: str, value: float) -> Family:
        """A family with one unlabelled sample."""
        return cls(name, kind, help, (((), value),))

    @classmethod
    def labelled(
        cls, name: str, kind: str, help: str, label: str, values: Mapping[Any, float]
    ) -> Family:
        """A family with one sample per ``values`` key, labelled ``label="key"`` (sorted)."""
        samples = tuple((((label, str(key)),), value) for key, value in values.items())
        return cls(name, kind, help, tuple(sorted(samples)))


def escape_help(text: str) -> str:
    r"""Escape a HELP text: backslash as ``\\`` and line feed as ``\n``."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def escape_label_value(value: str) -> str:
    r"""Escape a label value: backslash, double quote and line feed (``\\``, ``\"``, ``\n``)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _format_value(value: float) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def render_prometheus(families: Iterable[Family]) -> str:
    """The text exposition format: HELP and TYPE lines, then one line per sample.

    Raises ValueError for a metric or label name Prometheus would refuse.
    """
    lines: list[str] = []
    for family in families:
        if not _NAME.fullmatch(family.name):
            raise ValueError(f"invalid metric name {family.name!r}")
        if family.kind not in ("counter", "gauge"):
            raise ValueError(f"metric type must be counter or gauge, not {family.kind!r}")
        lines.append(f"# HELP {family.name} {escape_help(family.help)}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        for labels, value in family.samples:
            text = ""
            if labels:
                for label, _ in labels:
                    if not _LABEL.fullmatch(label) or label.startswith("__"):
                        raise ValueError(f"invalid label name {label!r} in {family.name}")
                pairs = ",".join(f'{k}="{escape_label_value(v)}"' for k, v in labels)
                text = "{" + pairs + "}"
            lines.append(f"{family.name}{text} {_format_value(value)}")
    return "\n".join(lines) + "\n"


def _close_code(session: Session) -> int:
    """The code the connection closed with: the one the server sent (an echo of the
    client's, or its own), else the one received, else 1006 (no close frame)."""
    proto = session.ws.proto
    if proto.close_sent is not None:
        return proto.close_sent.code
    if proto.close_rcvd is not None:
        return proto.close_rcvd.code
    return CloseCode.ABNORMAL_CLOSURE


class Metrics:
    """Counters and snapshots of one App; the App calls the ``on_*``-style hooks below."""

    def __init__(
        self, app: App, *, debug: bool = False, log_size: int = 100, entry_bytes: int = 1024
    ) -> None:
        """Count for ``app``; with ``debug``, keep a log of ``log_size`` entries per connection."""
        self.app = app
        self.debug = debug
        self.log_size = log_size
        self.entry_bytes = entry_bytes
        if debug:
            DebugLog(log_size, entry_bytes)  # validate now, not on the first connection
        self.started = time.monotonic()
        self.connections: dict[str, ConnectionMetrics] = {}
        #: Error envelopes sent, by code.
        self.errors: Counter[str] = Counter()
        #: Closed connections, by close code.
        self.close_codes: Counter[int] = Counter()
        #: Admin and API HTTP requests, by (endpoint, status).
        self.requests: Counter[tuple[str, int]] = Counter()
        #: Messages sent to each room (one per fan-out, not per receiver); live rooms only.
        self.room_messages: dict[str, int] = {}
        self._by_ws: dict[int, ConnectionMetrics] = {}
        self._closed_totals = dict.fromkeys(_TRAFFIC, 0)
        self._recent: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------------ hooks

    def opened(self, session: Session) -> None:
        """A connection was accepted."""
        log = DebugLog(self.log_size, self.entry_bytes) if self.debug else None
        record = ConnectionMetrics(session, log)
        self.connections[session.id] = record
        self._by_ws[session.ws.id] = record

    def received(self, session: Session, data: str | bytes) -> None:
        """The client sent ``data`` (one message)."""
        record = self.connections.get(session.id)
        if record is None:
            return
        size = _size(data)
        record.payload_in += size
        if record.log is not None:
            record.log.add("in", data, size, time.time())

    def sent(self, session: Session, envelope: Mapping[str, Any] | str, text: str) -> None:
        """``text`` (the encoded ``envelope``) was queued for the client."""
        record = self.connections.get(session.id)
        if record is None:
            return
        size = _size(text)
        record.payload_out += size
        # wire.encode() puts ``type`` first, so a prefix test finds every error envelope.
        if text.startswith(_ERROR_PREFIX):
            if isinstance(envelope, str):
                try:
                    envelope = json.loads(text)
                except (ValueError, RecursionError):
                    envelope = {}
            code = envelope.get("code") if isinstance(envelope, Mapping) else None
            self.errors[str(code)] += 1
            record.errors += 1
        if record.log is not None:
            record.log.add("out", text, size, time.time())

    def broadcast(self, receivers: list[WebSocket], text: str) -> None:
        """A fan-out queued ``text`` on ``receivers`` (the hub's ``on_broadcast`` hook)."""
        size = _size(text)
        now = time.time() if self.debug else 0.0
        by_ws = self._by_ws
        for ws in receivers:
            record = by_ws.get(ws.id)
            if record is not None:
                record.payload_out += size
                if record.log is not None:
                    record.log.add("out", text, size, now)

    def room_message(self, room: str) -> None:
        """A message was sent to ``room`` (counted once, whatever its size)."""
        rooms = self.room_messages
        rooms[room] = rooms.get(room, 0) + 1
        if len(rooms) > 2 * len(self.app.hub.rooms) + 1024:  # emits to rooms nobody is in
            self._forget_rooms()

    def _forget_rooms(self) -> None:
        live = self.app.hub.rooms
        self.room_messages = {k: v for k, v in self.room_messages.items() if k in live}

    def closed(self, session: Session) -> None:
        """A connection ended: count its close code and keep its traffic in the totals."""
        record = self.connections.pop(session.id, None)
        if record is None:
            return
        self._by_ws.pop(session.ws.id, None)
        if len(self.room_messages) > len(self.app.hub.rooms):
            self._forget_rooms()  # its rooms may have emptied: a new room of that name starts at 0
        self.close_codes[_close_code(session)] += 1
        totals = self._closed_totals
        for key, value in self._traffic(record).items():
            totals[key] += value
        if record.log is not None:
            export = self.export(record)
            export["connection"]["close_code"] = _close_code(session)
            self._recent[session.id] = export
            while len(self._recent) > RECENTLY_CLOSED:
                del self._recent[next(iter(self._recent))]

    # -------------------------------------------------------------- snapshots

    @staticmethod
    def _traffic(record: ConnectionMetrics) -> dict[str, int]:
        ws = record.session.ws
        return {
            "messages_in": ws.messages_in,
            "messages_out": ws.messages_out,
            "bytes_in": ws.bytes_in,
            "bytes_out": ws.bytes_out,
            "payload_bytes_in": record.payload_in,
            "payload_bytes_out": record.payload_out,
        }

    def totals(self) -> dict[str, int]:
        """Messages and bytes of every connection so far (open and closed).

        ``bytes_*`` are wire bytes (handshake and frame headers included, after
        compression); ``payload_bytes_*`` are the envelopes' UTF-8 bytes.
        """
        totals = dict(self._closed_totals)
        for record in self.connections.values():
            for key, value in self._traffic(record).items():
                totals[key] += value
        return totals

    def connection(self, record: ConnectionMetrics) -> dict[str, Any]:
        """The stats of one open connection, JSON-ready."""
        session = record.session
        ws = session.ws
        now, mono = time.time(), time.monotonic()
        names = [getattr(ext, "name", type(ext).__name__) for ext in ws.extensions]
        compressed = "permessage-deflate" in names
        ratio = None
        if compressed and record.payload_out:
            response = ws.response
            head = len(response.serialize()) if response is not None else 0
            ratio = round(max(0, ws.bytes_out - head) / record.payload_out, 3)
        return {
            "id": session.id,
            "user": session.user,
            "ip": session.ip,
            "connected_at": round(session.connected_at, 3),
            "last_activity": round(now - (mono - session.last_activity), 3),
            "messages_in": ws.messages_in,
            "messages_out": ws.messages_out,
            "bytes_in": ws.bytes_in,
            "bytes_out": ws.bytes_out,
            "payload_bytes_in": record.payload_in,
            "payload_bytes_out": record.payload_out,
            "compression": "permessage-deflate" if compressed else None,
            "compression_ratio": ratio,
            "buffered_amount": ws.buffered_amount,
            "drops": session.drops,
            "errors": record.errors,
            "latency": round(ws.latency, 6),
            "rooms": sorted(session.rooms),
            "channels": sorted(session.channels),
        }

    def export(self, record: ConnectionMetrics) -> dict[str, Any]:
        """``/debug/connections/{id}``: the connection's stats and its debug log."""
        log = record.log
        return {
            "connection": self.connection(record),
            "debug": log is not None,
            "recorded": log.recorded if log is not None else 0,
            "log": log.export() if log is not None else None,
        }

    def find(self, connection_id: str) -> dict[str, Any] | None:
        """The export of an open connection, or of a recently closed one in debug mode."""
        record = self.connections.get(connection_id)
        if record is not None:
            return self.export(record)
        return self._recent.get(connection_id)

    def stats(self, top: int = DEFAULT_TOP) -> dict[str, Any]:
        """``/stats``: gauges, totals, counters by kind, and the busiest connections and rooms."""
        hub = self.app.hub
        records = heapq.nlargest(
            top,
            self.connections.values(),
            key=lambda r: r.session.ws.messages_in + r.session.ws.messages_out,
        )
        rooms = heapq.nlargest(
            top,
            hub.rooms.values(),
            key=lambda room: (self.room_messages.get(room.name, 0), len(room.conns)),
        )
        return {
            "uptime_seconds": round(time.monotonic() - self.started, 3),
            "connections": len(self.connections),
            "users": len(hub.users),
            "rooms": len(hub.rooms),
            "channels": len(hub.subscribers),
            "totals": self.totals(),
            "events": dict(sorted(self.app.stats.items())),
            "errors": dict(sorted(self.errors.items())),
            "close_codes": {str(code): n for code, n in sorted(self.close_codes.items())},
            "top_connections": [self.connection(record) for record in records],
            "top_rooms": [
                {
                    "room": room.name,
                    "messages": self.room_messages.get(room.name, 0),
                    "connections": len(room.conns),
                    "users": len(room.users),
                }
                for room in rooms
            ],
        }

    def families(self) -> list[Family]:
        """Every metric family, in a stable order."""
        hub = self.app.hub
        totals = self.totals()
        buffered = sum(r.session.ws.buffered_amount for r in self.connections.values())
        requests = sorted(
            ((("endpoint", endpoint), ("status", str(status))), n)
            for (endpoint, status), n in self.requests.items()
        )
        return [
            Family.single(
                "tidewire_connections", "gauge", "Open connections.", len(self.connections)
            ),
            Family.single(
                "tidewire_users", "gauge", "Authenticated users connected.", len(hub.users)
            ),
            Family.single("tidewire_rooms", "gauge", "Rooms with a member.", len(hub.rooms)),
            Family.single(
                "tidewire_channels", "gauge", "Channels with a subscriber.", len(hub.subscribers)
            ),
            Family.single(
                "tidewire_connections_opened_total",
                "counter",
                "WebSocket connections accepted.",
                self.app.stats["connections"],
            ),
            Family.single(
                "tidewire_messages_received_total",
                "counter",
                "WebSocket messages received from clients.",
                totals["messages_in"],
            ),
            Family.single(
                "tidewire_messages_sent_total",
                "counter",
                "WebSocket messages sent to clients.",
                totals["messages_out"],
            ),
            Family.single(
                "tidewire_received_bytes_total",
                "counter",
                "Bytes received on WebSocket connections (wire, handshake included).",
                totals["bytes_in"],
            ),
            Family.single(
                "tidewire_sent_bytes_total",
                "counter",
                "Bytes sent on WebSocket connections (wire, after compression).",
                totals["bytes_out"],
            ),
            Family.single(
                "tidewire_messages_dropped_total",
                "counter",
                "Messages dropped for slow consumers (drop policy, or replaced under latest).",
                self.app.stats["dropped"] + self.app.stats["replaced"],
            ),
            Family.single(
                "tidewire_buffered_bytes",
                "gauge",
                "Bytes queued for clients and not yet written to their sockets.",
                buffered,
            ),
            Family.labelled(
                "tidewire_errors_total",
                "counter",
                "Error envelopes sent to clients, by code.",
                "code",
                self.errors,
            ),
            Family.labelled(
                "tidewire_closes_total",
                "counter",
                "Closed connections, by close code.",
                "code",
                self.close_codes,
            ),
            Family.labelled(
                "tidewire_events_total",
                "counter",
                "App events (publications, refusals, rate limits, slow consumers...).",
                "event",
                self.app.stats,
            ),
            Family(
                "tidewire_http_requests_total",
                "counter",
                "Admin and API HTTP requests, by endpoint and status.",
                tuple(requests),
            ),
            Family.single(
                "tidewire_uptime_seconds",
                "gauge",
                "Seconds since the App started counting.",
                round(time.monotonic() - self.started, 3),
            ),
        ]

    def prometheus(self) -> str:
        """``/metrics``: every family in the Prometheus text exposition format."""
        return render_prometheus(self.families())


class HealthCheck:
    """The broker's part of ``/health``: ``{"kind", "healthy", "probe_ms"}``.

    ``healthy`` comes from :meth:`Broker.probe` (for Redis: a message that
    went through Redis and came back through this node's subscription, so a
    dead subscription shows, python-socketio#1581).  A result is reused for
    ``cache`` seconds, and checks that arrive while a probe runs share it.
    """

    def __init__(
        self,
        broker: Broker,
        *,
        cache: float = HEALTH_CACHE,
        timeout: float = HEALTH_PROBE_TIMEOUT,
    ) -> None:
        """Probe ``broker`` with ``timeout``, at most once per ``cache`` seconds."""
        self.broker = broker
        self.cache = cache
        self.timeout = timeout
        self.probes = 0
        self._report: dict[str, Any] | None = None
        self._at = 0.0
        self._pending: asyncio.Task[dict[str, Any]] | None = None

    async def report(self) -> dict[str, Any]:
        """The latest report, probing again when it is older than ``cache`` seconds."""
        if self._report is not None and time.monotonic() - self._at < self.cache:
            return self._report
        if self._pending is None:
            self._pending = asyncio.get_running_loop().create_task(self._probe())
        # Shielded: a health request that goes away does not cancel the shared probe.
        return await asyncio.shield(self._pending)

    async def _probe(self) -> dict[str, Any]:
        started = time.monotonic()
        self.probes += 1
        try:
            healthy = await self.broker.probe(self.timeout)
        except Exception:  # noqa: BLE001 - a failing probe is an unhealthy broker
            healthy = False
        finally:
            self._pending = None
        elapsed = time.monotonic() - started
        report = {
            "kind": self.broker.kind,
            "healthy": bool(healthy),
            "probe_ms": round(elapsed * 1000, 3),
        }
        self._report, self._at = report, time.monotonic()
        return report
