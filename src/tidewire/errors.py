"""The whole tidewire exception tree.

One class per action a caller would take; facts live in attributes.  This
module imports nothing from tidewire so that every layer may use it.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "TidewireError",
    "ProtocolError",
    "PayloadTooBig",
    "HandshakeError",
    "InvalidStatus",
    "ConnectionClosed",
    "ConnectionClosedOK",
    "ConnectionClosedError",
    "InvalidState",
    "ConcurrencyError",
    "RealtimeError",
    "Rejected",
    "Unauthorized",
    "TokenExpired",
    "RateLimited",
    "RPCError",
    "RPCTimeout",
    "BrokerError",
]


class TidewireError(Exception):
    """Root of every exception tidewire raises on purpose."""


class ProtocolError(TidewireError):
    """The peer broke RFC 6455 or RFC 7692.

    ``close_code`` is the close code the connection is failed with
    (1002 protocol error, 1007 invalid payload data, 1010 mandatory extension).
    """

    def __init__(self, message: str, close_code: int = 1002) -> None:
        super().__init__(message)
        self.close_code = close_code


class PayloadTooBig(ProtocolError):
    """A size limit fired (RFC 6455 section 7.4.1, close code 1009).

    ``what`` names the limit ("message", "frame", "inflated"), ``limit`` its
    value in bytes and ``size`` the size seen (at least).
    """

    def __init__(self, what: str, limit: int, size: int) -> None:
        super().__init__(f"{what} too big: {size} bytes > max_{what}_size={limit}", 1009)
        self.what = what
        self.limit = limit
        self.size = size


class HandshakeError(TidewireError):
    """The opening handshake failed; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class InvalidStatus(HandshakeError):
    """Client side: the server answered with something other than 101."""

    def __init__(self, message: str, response: Any, status: int) -> None:
        super().__init__(message, status)
        self.response = response


class ConnectionClosed(TidewireError):
    """The connection is closed; ``code``/``reason`` are what was received.

    ``rcvd`` and ``sent`` hold the close frames received and sent, if any.
    """

    def __init__(self, code: int, reason: str, rcvd: Any = None, sent: Any = None) -> None:
        super().__init__(f"connection closed: code={code} reason={reason!r}")
        self.code = code
        self.reason = reason
        self.rcvd = rcvd
        self.sent = sent


class ConnectionClosedOK(ConnectionClosed):
    """The connection closed normally (1000 or 1001 both ways)."""


class ConnectionClosedError(ConnectionClosed):
    """The connection closed with an error or without a close handshake."""


class InvalidState(TidewireError, RuntimeError):
    """Local misuse: an operation not allowed in the connection's current state."""


class ConcurrencyError(TidewireError, RuntimeError):
    """Two coroutines tried to read (or stream-send) on one connection at once."""


class RealtimeError(TidewireError):
    """Errors of the messaging layer; ``code`` (a short string) goes on the wire.

    Raise one from a handler or middleware and the client gets
    ``{"type":"error","code":code,"message":str(exc)}`` (or an ``rpc_result``
    error for an RPC).
    """

    code = "error"

    def __init__(self, message: str = "", code: str | None = None) -> None:
        super().__init__(message or self.__class__.__name__)
        if code is not None:
            self.code = code


class Rejected(RealtimeError):
    """A middleware, validator or authorization hook refused the message."""

    code = "rejected"


class Unauthorized(RealtimeError):
    """Missing, invalid or expired credentials."""

    code = "unauthorized"


class TokenExpired(Unauthorized):
    """The credentials expired: get a fresh token (close 4200 asks the client to)."""

    code = "token_expired"


class RateLimited(RealtimeError):
    """A rate limit fired; ``retry_after`` seconds until a token is available."""

    code = "rate_limited"

    def __init__(self, message: str = "", retry_after: float = 0.0) -> None:
        super().__init__(message or f"rate limited; retry after {retry_after:.3f} s")
        self.retry_after = retry_after


class RPCError(RealtimeError):
    """An RPC failed; ``code`` is no_such_method, handler_error, disconnected, ..."""

    code = "handler_error"


class RPCTimeout(RPCError, TimeoutError):
    """An RPC got no answer within its timeout."""

    code = "timeout"


class BrokerError(RealtimeError):
    """The broker (e.g. Redis) is unreachable or refused an operation."""

    code = "broker_unavailable"
