"""Client side of the opening handshake (RFC 6455 section 4.1), then a Connection."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, cast

from tidewire._types import BytesLike
from tidewire.errors import HandshakeError, InvalidStatus
from tidewire.protocol import http
from tidewire.protocol.connection import Connection, MessageCodec, Side, State
from tidewire.protocol.extensions import (
    ClientExtensionFactory,
    build_client_offer,
    negotiate_client,
)
from tidewire.protocol.handshake import build_request, check_response, generate_key
from tidewire.protocol.http import Headers, Request, Response

__all__ = ["ClientProtocol"]


class ClientProtocol(Connection):
    """A client connection: builds the opening request, checks the response, then frames.

    Call :meth:`connect` to queue the request.  Once the response head is in,
    :attr:`response` is set and the state is OPEN, or :attr:`handshake_error`
    holds what was wrong with it and the state is CLOSED.
    """

    __slots__ = (
        "request",
        "response",
        "handshake_error",
        "subprotocol",
        "_key",
        "_factories",
        "_offered",
        "_head",
        "_refusal",
    )

    def __init__(
        self,
        host: str,
        path: str = "/",
        *,
        origin: str | None = None,
        subprotocols: Sequence[str] | None = None,
        extensions: Sequence[ClientExtensionFactory] = (),
        headers: Headers | None = None,
        **options: Any,
    ) -> None:
        """Prepare the request for ``host`` (with port if not default) and ``path``."""
        super().__init__(Side.CLIENT, state=State.CONNECTING, **options)
        self._key = generate_key()
        self._factories = list(extensions)
        self._offered = list(subprotocols or ())
        self.request: Request = build_request(
            host,
            path,
            self._key,
            origin=origin,
            subprotocols=self._offered or None,
            extensions=build_client_offer(self._factories),
            extra_headers=headers,
        )
        self.response: Response | None = None
        self.handshake_error: HandshakeError | None = None
        self.subprotocol: str | None = None
        self._head = bytearray()
        #: A refused handshake waiting for its body: (error, body start, body length).
        self._refusal: tuple[HandshakeError, int, int] | None = None

    def connect(self) -> Request:
        """Queue the opening request for sending and return it."""
        self._out.append(self.request.serialize())
        return self.request

    def receive_data(self, data: BytesLike) -> None:
        """Feed bytes: the response head while CONNECTING, frames once OPEN."""
        if self.state is not State.CONNECTING:
            Connection.receive_data(self, data)
            return
        self._head += data
        if self._refusal is not None:
            self._finish_refusal(eof=False)
            return
        try:
            parsed = http.parse_response(self._head)
            if parsed is None:
                return
            response, used = parsed
            self.response = response
            subprotocol, ext_params = check_response(
                response, self._key, offered_subprotocols=self._offered
            )
            extensions = negotiate_client(
                response.headers.get_all("Sec-WebSocket-Extensions"), self._factories
            )
        except HandshakeError as exc:
            if isinstance(exc, InvalidStatus) and self.response is not None:
                # Keep the server's explanation: read the body it framed with
                # Content-Length (at most MAX_REFUSAL_BODY bytes) before failing.
                length = _content_length(self.response)
                self._refusal = (exc, used, min(length, MAX_REFUSAL_BODY))
                self._finish_refusal(eof=False)
                return
            self._fail_handshake(exc)
            return
        del ext_params
        self.subprotocol = subprotocol
        self.extensions = list(extensions)
        for ext in extensions:
            if getattr(ext, "rsv1", False):
                self._codec = cast(MessageCodec, ext)
        self.state = State.OPEN
        pending = bytes(self._head[used:])
        self._head.clear()
        if pending:
            Connection.receive_data(self, pending)

    def receive_eof(self) -> None:
        """The server closed TCP; a refused handshake keeps the body received so far."""
        if self._refusal is not None:
            self._finish_refusal(eof=True)
        Connection.receive_eof(self)

    def _finish_refusal(self, *, eof: bool) -> None:
        assert self._refusal is not None
        exc, start, length = self._refusal
        body = bytes(self._head[start : start + length])
        if len(body) < length and not eof:
            return  # more of the body is on its way
        self._refusal = None
        if self.response is not None:
            self.response = dataclasses.replace(self.response, body=body)
            if isinstance(exc, InvalidStatus):
                exc.response = self.response
        self._fail_handshake(exc)

    def _fail_handshake(self, exc: HandshakeError) -> None:
        self.handshake_error = exc
        self.state = State.CLOSED
        self._discard = True


#: Most bytes of a refused handshake's body kept for InvalidStatus.response.body.
MAX_REFUSAL_BODY = 64 * 1024


def _content_length(response: Response) -> int:
    """The response's Content-Length, or 0 when absent or malformed."""
    value = response.headers.get("Content-Length")
    if value is None or not value.strip().isdigit():
        return 0
    return int(value.strip())
