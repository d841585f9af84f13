"""Outgoing flow control: slow-consumer policies and opt-in batching.

A client that does not read cannot be allowed to grow server memory, but what
to do about it depends on the data:

* ``disconnect`` (the default): past ``max_outgoing_bytes`` of unread
  backlog the client is closed with SLOW_CONSUMER (4001); it reconnects and
  recovers from channel history.
* ``drop``: volatile messages (typing notices, game ticks) past the same
  limit are dropped and counted; the connection stays.
* ``latest``: for tickers and cursors, while the connection's write buffer is
  above its high-water mark only the newest message per key is kept; the kept
  ones are written, in order, when the buffer drains.

Policies are chosen per app, per room and per message type
(:meth:`~tidewire.realtime.App.slow_consumer_policy`); the most specific wins.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

__all__ = ["Policy", "SlowConsumerPolicy", "DISCONNECT", "type_of", "latest_key", "batch_text"]


class Policy(enum.Enum):
    """What happens to messages for a client that does not keep up."""

    DISCONNECT = "disconnect"
    DROP = "drop"
    LATEST = "latest"


@dataclass(frozen=True, slots=True)
class SlowConsumerPolicy:
    """A policy and, for ``latest``, the envelope fields that identify "the same thing"."""

    kind: Policy
    #: For LATEST: fields whose values (with the type) form the key; () keys by type only.
    key: tuple[str, ...] = ()


DISCONNECT = SlowConsumerPolicy(Policy.DISCONNECT)

_PREFIX = '{"type":"'


def type_of(text: str) -> str | None:
    """The ``type`` of an envelope encoded by :func:`~tidewire.realtime.wire.encode`.

    encode() always writes ``type`` first, so the type is read without parsing
    the JSON (this runs once per fan-out, not per receiver).
    """
    if not text.startswith(_PREFIX):
        return None
    end = text.find('"', len(_PREFIX))
    if end < 0:
        return None
    kind = text[len(_PREFIX) : end]
    return None if "\\" in kind else kind


def latest_key(text: str, policy: SlowConsumerPolicy) -> Hashable:
    """The key under which a ``latest`` message replaces older ones."""
    if not policy.key:
        return type_of(text)
    envelope: dict[str, Any] = json.loads(text)
    values = tuple(_hashable(envelope.get(name)) for name in policy.key)
    return (envelope.get("type"), values)


def _hashable(value: Any) -> Hashable:
    return value if isinstance(value, str | int | float | bool | None) else repr(value)


def batch_text(texts: list[str]) -> str:
    """One ``batch`` envelope holding already-encoded envelopes (no re-encoding)."""
    return '{"type":"batch","messages":[' + ",".join(texts) + "]}"
