"""Client side of the opening handshake (RFC 6455 section 4.1), then a Connection."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from tidewire._types import BytesLike
from tidewire.errors import HandshakeError
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
            self.handshake_error = exc
            self.state = State.CLOSED
            self._discard = True
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
