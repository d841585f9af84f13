"""Server side of the opening handshake (RFC 6455 section 4.2), then a Connection."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, cast

from tidewire._types import BytesLike
from tidewire.errors import HandshakeError, InvalidState
from tidewire.protocol import http
from tidewire.protocol.connection import Connection, MessageCodec, Side, State
from tidewire.protocol.extensions import ServerExtensionFactory, negotiate_server
from tidewire.protocol.handshake import (
    build_accept_response,
    build_reject_response,
    check_request,
    is_upgrade_request,
    parse_subprotocol_header,
    select_subprotocol,
)
from tidewire.protocol.http import Headers, Request, Response

__all__ = ["ServerProtocol"]


class ServerProtocol(Connection):
    """A server connection that starts in CONNECTING and parses the opening request.

    ``receive_data`` first collects the request head; once complete it is
    available as :attr:`request` (and the driver decides: :meth:`accept` for
    an upgrade, or :meth:`send_response` for any other answer).  Bytes that
    followed the head are kept and parsed as frames after :meth:`accept`.
    A malformed head sets :attr:`handshake_error` and queues the error
    response (400, 426 or 431, with a one-line reason).

    A plain-HTTP request (no Upgrade header) with a Content-Length body is
    complete only once the body arrived; then :attr:`request` holds it in
    ``body``.  Bodies over ``max_body`` are refused with 413 before any of
    them is buffered (RFC 9112 section 6.3, :func:`~tidewire.protocol.http.request_body_size`).
    ``Expect: 100-continue`` gets its interim 100 (RFC 9110 section 10.1.1).
    """

    __slots__ = (
        "request",
        "response",
        "handshake_error",
        "subprotocol",
        "_factories",
        "_subprotocols",
        "_select",
        "_head",
        "_max_line",
        "_max_headers",
        "_max_head",
        "_max_body",
        "_pending",
        "_body_size",
    )

    def __init__(
        self,
        *,
        extensions: Sequence[ServerExtensionFactory] = (),
        subprotocols: Sequence[str] | None = None,
        select_subprotocol: Callable[[Sequence[str]], str | None] | None = None,
        max_line: int = http.MAX_LINE_BYTES,
        max_headers: int = http.MAX_HEADERS,
        max_head: int = http.MAX_HEADER_BYTES,
        max_body: int | None = http.MAX_BODY_BYTES,
        **options: Any,
    ) -> None:
        """``extensions`` are factories offered to the client, ``subprotocols`` the
        ones supported in order of preference; ``max_body`` bounds plain-HTTP
        request bodies; other options go to :class:`Connection`.
        """
        super().__init__(Side.SERVER, state=State.CONNECTING, **options)
        self.request: Request | None = None
        self.response: Response | None = None
        self.handshake_error: HandshakeError | None = None
        self.subprotocol: str | None = None
        self._factories = list(extensions)
        self._subprotocols = list(subprotocols or ())
        self._select = select_subprotocol
        self._head = bytearray()
        self._max_line = max_line
        self._max_headers = max_headers
        self._max_head = max_head
        self._max_body = max_body
        #: A plain-HTTP request head whose body of ``_body_size`` bytes is still arriving.
        self._pending: Request | None = None
        self._body_size = 0

    def receive_data(self, data: BytesLike) -> None:
        """Feed bytes: the request head while CONNECTING, frames once OPEN."""
        if self.state is not State.CONNECTING:
            Connection.receive_data(self, data)
            return
        if self.handshake_error is not None:
            return
        if self._pending is not None:
            self._head += data
            self._body_received()
            return
        if self.request is not None:
            # Frames a client pipelined after its request wait for accept(), but
            # a client may not send before the 101 (section 4.1): bound them.
            if len(self._head) + len(data) > self._max_head:
                self._head.clear()
                self.reject(
                    HandshakeError(
                        f"{len(data)} more bytes before the handshake completed: "
                        f"over max_head={self._max_head}",
                        400,
                    )
                )
                return
            self._head += data
            return
        self._head += data
        try:
            parsed = http.parse_request(
                self._head,
                max_line=self._max_line,
                max_headers=self._max_headers,
                max_head=self._max_head,
            )
        except HandshakeError as exc:
            self.handshake_error = exc
            self._head.clear()
            self.send_response(build_reject_response(exc.status, str(exc)))
            return
        if parsed is not None:
            request, used = parsed
            del self._head[:used]
            self._expect_body(request)

    def _expect_body(self, request: Request) -> None:
        """Complete ``request`` now, or once its Content-Length body arrived."""
        if is_upgrade_request(request):
            # An opening handshake has no body: what follows it are frames.
            self.request = request
            return
        try:
            size = http.request_body_size(request.headers, self._max_body)
        except HandshakeError as exc:
            self._head.clear()
            self.reject(exc)
            return
        if size == 0:
            self.request = request
            return
        self._pending, self._body_size = request, size
        expect = (request.headers.get("Expect") or "").lower()
        if expect == "100-continue" and len(self._head) < size:
            self._out.append(b"HTTP/1.1 100 Continue\r\n\r\n")
        self._body_received()

    def _body_received(self) -> None:
        pending, size = self._pending, self._body_size
        if pending is None or len(self._head) < size:
            return
        body = bytes(self._head[:size])
        # Bytes after the body would be a pipelined request: the answer closes
        # the connection (Connection: close), so they are dropped.
        self._head.clear()
        self._pending = None
        self.request = replace(pending, body=body)

    def accept(self, request: Request | None = None, *, headers: Headers | None = None) -> Response:
        """Validate the upgrade request, negotiate, and queue the 101 response.

        Raises :class:`HandshakeError` (and queues the matching error response)
        when the request is not a valid WebSocket opening handshake, and
        :class:`InvalidState` once the request was already answered.
        """
        if self.state is not State.CONNECTING:
            # A second 101 (or one after an error response) would corrupt the stream.
            raise InvalidState(f"cannot accept: connection is {self.state.name}")
        request = request or self.request
        if request is None:
            raise HandshakeError("no request received yet", 400)
        try:
            key = check_request(request)
            offered = parse_subprotocol_header(request.headers.get_all("Sec-WebSocket-Protocol"))
            ext_header, extensions = negotiate_server(
                request.headers.get_all("Sec-WebSocket-Extensions"), self._factories
            )
        except ValueError as exc:
            error = HandshakeError(f"bad handshake header: {exc}", 400)
            self.reject(error)
            raise error from None
        except HandshakeError as exc:
            self.reject(exc)
            raise
        if self._select is not None:
            subprotocol = self._select(offered)
        else:
            subprotocol = select_subprotocol(offered, self._subprotocols)
        self.subprotocol = subprotocol
        response = build_accept_response(
            key, subprotocol=subprotocol, extensions=ext_header, extra_headers=headers
        )
        self.extensions = list(extensions)
        codec = None
        for ext in extensions:
            if getattr(ext, "rsv1", False):
                codec = cast(MessageCodec, ext)
        self._codec = codec
        self.response = response
        self._out.append(response.serialize())
        self.state = State.OPEN
        pending = bytes(self._head)
        self._head.clear()
        if pending:
            Connection.receive_data(self, pending)
        return response

    def reject(self, error: HandshakeError) -> Response:
        """Queue the error response for ``error`` (its status and one-line reason)."""
        response = self.send_response(build_reject_response(error.status, str(error)))
        self.handshake_error = error
        return response

    def send_response(self, response: Response) -> Response:
        """Queue any non-101 response; the connection is then done (Connection: close).

        Raises :class:`InvalidState` once the request was already answered.
        """
        if self.state is not State.CONNECTING:
            raise InvalidState(f"cannot send an HTTP response: connection is {self.state.name}")
        self.response = response
        self._out.append(response.serialize())
        self._discard = True
        self.state = State.CLOSED
        return response

    def close_expected(self) -> bool:
        """After a non-101 answer, the server closes the TCP connection at once."""
        if self.response is not None and self.response.status != 101:
            return True
        return Connection.close_expected(self)
