"""Close codes (RFC 6455 section 7.4) and the close frame payload (section 5.5.1)."""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from tidewire.errors import ProtocolError

__all__ = [
    "CloseCode",
    "Close",
    "CloseAction",
    "action_for",
    "is_valid_received_code",
    "MAX_REASON_BYTES",
]

#: A control frame payload is at most 125 bytes; two of them hold the code.
MAX_REASON_BYTES = 123


class CloseCode(enum.IntEnum):
    """Registered close codes, plus tidewire's own 4xxx taxonomy."""

    NORMAL_CLOSURE = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS_RCVD = 1005  # never on the wire
    ABNORMAL_CLOSURE = 1006  # never on the wire
    INVALID_PAYLOAD = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_GATEWAY = 1014
    TLS_HANDSHAKE = 1015  # never on the wire
    # tidewire application codes (4000-4999 are private use, RFC 6455 7.4.2),
    # in ranges that tell a client what to do (see CloseAction, docs/protocol.md).
    # 4000-4099: reconnect now (with jitter); nothing is wrong with the client.
    RECONNECT = 4000
    SLOW_CONSUMER = 4001
    # 4100-4199: reconnect with exponential back-off.
    TRY_LATER = 4100
    IDLE = 4101
    # 4200-4299: get a fresh token, then reconnect.
    TOKEN_EXPIRED = 4200
    AUTH_TIMEOUT = 4201
    # 4500-4999: stop; reconnecting would fail the same way.
    FORBIDDEN = 4500
    BAD_REQUEST = 4501
    UNSUPPORTED_PROTOCOL = 4502


class CloseAction(enum.Enum):
    """What a client does after a close with a given code."""

    RECONNECT = "reconnect"
    BACKOFF = "backoff"
    REAUTH = "reauth"
    STOP = "stop"


_STANDARD_ACTIONS = {
    1000: CloseAction.STOP,
    1001: CloseAction.RECONNECT,
    1002: CloseAction.STOP,
    1003: CloseAction.STOP,
    1007: CloseAction.STOP,
    1008: CloseAction.STOP,
    1009: CloseAction.STOP,
    1010: CloseAction.STOP,
    1012: CloseAction.RECONNECT,
}


def action_for(code: int) -> CloseAction:
    """What a client should do after a close with ``code``.

    Normal closure and peer-fault codes stop; going-away and service-restart
    reconnect at once; the 4xxx ranges say it themselves; everything else
    (1006 abnormal, 1011, 1013, unknown codes) reconnects with back-off.
    """
    action = _STANDARD_ACTIONS.get(code)
    if action is not None:
        return action
    if 4000 <= code <= 4099:
        return CloseAction.RECONNECT
    if 4200 <= code <= 4299:
        return CloseAction.REAUTH
    if 4500 <= code <= 4999:
        return CloseAction.STOP
    return CloseAction.BACKOFF


_VALID_RECEIVED = frozenset(
    {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014}
)


def is_valid_received_code(code: int) -> bool:
    """True when ``code`` may appear in a close frame (RFC 6455 section 7.4)."""
    return code in _VALID_RECEIVED or 3000 <= code <= 4999


@dataclass(frozen=True, slots=True)
class Close:
    """The payload of a close frame: a code and a UTF-8 reason."""

    code: int
    reason: str = ""

    @classmethod
    def parse(cls, payload: bytes) -> Close:
        """Parse a close frame payload; raise ProtocolError when it is invalid.

        An empty payload means 1005 (no status).  One byte, an unknown code or
        a reason that is not UTF-8 is a protocol error (1002, or 1007 for UTF-8).
        """
        n = len(payload)
        if n == 0:
            return cls(CloseCode.NO_STATUS_RCVD, "")
        if n == 1:
            raise ProtocolError("close frame payload of 1 byte")
        (code,) = struct.unpack_from("!H", payload)
        if not is_valid_received_code(code):
            raise ProtocolError(f"invalid close code {code}")
        try:
            reason = payload[2:].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"close reason is not UTF-8: {exc.reason}", 1007) from None
        return cls(code, reason)

    def serialize(self) -> bytes:
        """The close frame payload; 1005 serializes to an empty payload."""
        if self.code == CloseCode.NO_STATUS_RCVD:
            return b""
        return struct.pack("!H", self.code) + self.reason.encode("utf-8")

    @staticmethod
    def truncate_reason(reason: str) -> str:
        """Shorten ``reason`` so its UTF-8 form fits in 123 bytes."""
        data = reason.encode("utf-8")
        if len(data) <= MAX_REASON_BYTES:
            return reason
        return data[: MAX_REASON_BYTES - 3].decode("utf-8", "ignore") + "..."
