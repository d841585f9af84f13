"""Wire protocol v1 (docs/protocol.md): decode, validate and encode envelopes.

Every message is a JSON object in a text frame with a string ``type``.  The
types below are reserved; every other type is an application type dispatched
to ``@app.on`` handlers.  Pure functions: no I/O, no clock.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

from tidewire.errors import RealtimeError

__all__ = [
    "PROTOCOL_VERSION",
    "SUBPROTOCOL",
    "CLIENT_TYPES",
    "SERVER_TYPES",
    "WireError",
    "decode",
    "encode",
    "error_envelope",
    "check_name",
    "ref_of",
    "MAX_NAME_LENGTH",
]

PROTOCOL_VERSION: Final = 1
#: Offered by clients in Sec-WebSocket-Protocol; selected by the server when offered.
SUBPROTOCOL: Final = "tidewire.v1"

#: Reserved types a client may send.
CLIENT_TYPES: Final = frozenset(
    {"auth", "join", "leave", "subscribe", "unsubscribe", "publish", "rpc", "rpc_result", "ping"}
)
#: Reserved types the server sends.
SERVER_TYPES: Final = frozenset(
    {
        "connection",
        "auth",
        "joined",
        "left",
        "userJoined",
        "userLeft",
        "presence",
        "subscribed",
        "unsubscribed",
        "publish",
        "published",
        "rpc",
        "rpc_result",
        "pong",
        "error",
        "batch",
    }
)
#: Reserved types a client may not send (only the server emits them).
_SERVER_ONLY: Final = SERVER_TYPES - CLIENT_TYPES

#: Longest room or channel name (characters); Centrifugo and the anchors use 255.
MAX_NAME_LENGTH: Final = 255
# Letters, digits and a few separators: names end up in logs, Redis keys and
# URLs, so no spaces, quotes or control characters.
_NAME = re.compile(r"[A-Za-z0-9_.:@/#=+\-]+")
_MAX_ID_LENGTH: Final = 64


class WireError(RealtimeError):
    """A message that breaks docs/protocol.md; ``ref`` names the offending message."""

    def __init__(self, code: str, message: str, ref: Any = None) -> None:
        super().__init__(message, code)
        self.ref = ref


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_decoder = json.JSONDecoder(parse_constant=_no_constants)


def decode(data: str | bytes) -> dict[str, Any]:
    """Parse one client frame into an envelope; raise :class:`WireError` when it is not one.

    Codes: ``bad_json`` (binary frame, not JSON, NaN/Infinity, nesting too deep),
    ``bad_envelope`` (not an object, ``type`` missing or not a string, a bad ``id``,
    a server-only type), ``invalid`` (a reserved type with missing or wrong fields).
    """
    if not isinstance(data, str):
        raise WireError("bad_json", "binary frames are not part of protocol v1; send JSON text")
    try:
        obj = _decoder.decode(data)
    except (ValueError, RecursionError) as exc:
        raise WireError("bad_json", f"malformed JSON: {str(exc)[:80]}") from None
    if not isinstance(obj, dict):
        raise WireError("bad_envelope", f"a message must be a JSON object, not {_kind(obj)}")
    kind = obj.get("type")
    if not isinstance(kind, str) or not kind:
        raise WireError("bad_envelope", "a message needs a non-empty string 'type'")
    if "id" in obj:
        _check_id(obj["id"], kind)
    if kind in _SERVER_ONLY:
        raise WireError("bad_envelope", f"type {kind!r} is sent by the server only", ref_of(obj))
    check = _CHECKS.get(kind)
    if check is not None:
        check(obj)
    return obj


def _kind(obj: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(obj), "a number"
    )


def _check_id(value: Any, kind: str) -> None:
    ok = (isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**53) or (
        isinstance(value, str) and 0 < len(value) <= _MAX_ID_LENGTH
    )
    if not ok:
        raise WireError(
            "bad_envelope",
            f"'id' must be an integer or a string of 1-{_MAX_ID_LENGTH} characters",
            kind,
        )


def ref_of(envelope: dict[str, Any]) -> Any:
    """What an error reply refers to: the message's ``id`` when it has one, else its type."""
    ref = envelope.get("id")
    return ref if ref is not None else envelope.get("type")


def check_name(name: Any, what: str) -> str:
    """Validate a room or channel name; raise :class:`WireError` ``invalid`` naming the rule."""
    if not isinstance(name, str):
        raise WireError("invalid", f"{what} must be a string")
    if not name or len(name) > MAX_NAME_LENGTH:
        raise WireError(
            "invalid", f"{what} must be 1-{MAX_NAME_LENGTH} characters, got {len(name)}"
        )
    if not _NAME.fullmatch(name):
        raise WireError("invalid", f"{what} may contain only letters, digits and _ . : @ / # = + -")
    return name


def _field(obj: dict[str, Any], key: str, what: str) -> None:
    try:
        check_name(obj.get(key), what)
    except WireError as exc:
        exc.ref = ref_of(obj)
        raise


def _check_auth(obj: dict[str, Any]) -> None:
    token = obj.get("token")
    if not isinstance(token, str) or not token:
        raise WireError("invalid", "auth needs a non-empty string 'token'", ref_of(obj))


def _check_room(obj: dict[str, Any]) -> None:
    _field(obj, "room", "room")


def _check_channel(obj: dict[str, Any]) -> None:
    _field(obj, "channel", "channel")


def _check_subscribe(obj: dict[str, Any]) -> None:
    _field(obj, "channel", "channel")
    since = obj.get("since")
    if since is None:
        return
    if not isinstance(since, dict):
        raise WireError("invalid", "'since' must be an object {epoch, offset}", ref_of(obj))
    epoch, offset = since.get("epoch"), since.get("offset")
    if not isinstance(epoch, str) or not _is_count(offset):
        raise WireError(
            "invalid",
            "'since' needs a string 'epoch' and a non-negative integer 'offset'",
            ref_of(obj),
        )


def _check_publish(obj: dict[str, Any]) -> None:
    _field(obj, "channel", "channel")
    if "payload" not in obj:
        raise WireError("invalid", "publish needs a 'payload'", ref_of(obj))


def _check_rpc(obj: dict[str, Any]) -> None:
    if "id" not in obj:
        raise WireError("invalid", "rpc needs an 'id'", "rpc")
    method = obj.get("method")
    if not isinstance(method, str) or not method or len(method) > MAX_NAME_LENGTH:
        raise WireError(
            "invalid", f"rpc needs a string 'method' of 1-{MAX_NAME_LENGTH} characters", obj["id"]
        )


def _check_rpc_result(obj: dict[str, Any]) -> None:
    if "id" not in obj:
        raise WireError("invalid", "rpc_result needs the 'id' of the call", "rpc_result")
    has_result, error = "result" in obj, obj.get("error")
    if has_result == (error is not None):
        raise WireError(
            "invalid", "rpc_result needs exactly one of 'result' and 'error'", obj["id"]
        )
    if error is not None and not (
        isinstance(error, dict)
        and isinstance(error.get("code"), str)
        and isinstance(error.get("message"), str)
    ):
        raise WireError(
            "invalid", "rpc_result 'error' must be {code: string, message: string}", obj["id"]
        )


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


_CHECKS: Final = {
    "auth": _check_auth,
    "join": _check_room,
    "leave": _check_room,
    "subscribe": _check_subscribe,
    "unsubscribe": _check_channel,
    "publish": _check_publish,
    "rpc": _check_rpc,
    "rpc_result": _check_rpc_result,
}

_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def encode(envelope: dict[str, Any]) -> str:
    """Serialize an envelope: compact JSON, ``type`` first, UTF-8 kept as is, NaN refused.

    ``type`` comes first so fan-out can read it without parsing
    (:func:`tidewire.realtime.flow.type_of`).  Raises ValueError for NaN.
    """
    if "type" in envelope and next(iter(envelope)) != "type":
        envelope = {"type": envelope["type"], **envelope}
    return _encoder.encode(envelope)


def error_envelope(code: str, message: str, ref: Any = None) -> dict[str, Any]:
    """``{"type":"error","code":C,"message":S,"ref":R}`` (``ref`` left out when None)."""
    envelope: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if ref is not None:
        envelope["ref"] = ref
    return envelope
