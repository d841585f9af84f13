"""Reading the server's envelopes (docs/protocol.md): decoding, and errors as exceptions."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from tidewire.errors import RateLimited, RealtimeError, Rejected, Unauthorized

__all__ = ["parse", "error_from", "str_or_none"]


def parse(data: str | bytes) -> dict[str, Any] | None:
    """An envelope (a JSON object with a string type), or None."""
    if not isinstance(data, str):
        return None
    try:
        envelope = json.loads(data)
    except ValueError:
        return None
    if not isinstance(envelope, dict) or not isinstance(envelope.get("type"), str):
        return None
    return envelope


def str_or_none(value: Any) -> str | None:
    """``value`` when it is a string, else None (for optional envelope fields)."""
    return value if isinstance(value, str) else None


def error_from(envelope: Mapping[str, Any]) -> RealtimeError:
    """The exception an ``error`` envelope stands for (Unauthorized, RateLimited...)."""
    code = str(envelope.get("code") or "error")
    message = str(envelope.get("message") or code)
    if code == "unauthorized":
        return Unauthorized(message)
    if code == "rate_limited":
        retry = envelope.get("retry_after")
        return RateLimited(message, float(retry) if isinstance(retry, int | float) else 0.0)
    if code in ("rejected", "forbidden"):
        return Rejected(message, code)
    return RealtimeError(message, code)
