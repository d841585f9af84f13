"""connect(): open a WebSocket client connection (ws:// or wss://)."""

from __future__ import annotations

import asyncio
import ssl as ssl_module
import urllib.parse
from collections.abc import Generator, Sequence
from typing import Any, cast

from tidewire.errors import HandshakeError
from tidewire.protocol.client import ClientProtocol
from tidewire.protocol.connection import State
from tidewire.protocol.deflate import ClientDeflateFactory
from tidewire.protocol.extensions import ClientExtensionFactory
from tidewire.protocol.http import Headers
from tidewire.transport.connection import WebSocket
from tidewire.transport.options import Options

__all__ = ["connect", "ClientConnection", "parse_uri"]


def parse_uri(uri: str) -> tuple[bool, str, int, str]:
    """Split a ws/wss URI into (secure, host, port, resource); ValueError if invalid."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme not in ("ws", "wss"):
        raise ValueError(f"not a ws:// or wss:// URI: {uri!r}")
    if parts.fragment:
        raise ValueError(f"a WebSocket URI cannot have a fragment: {uri!r}")
    if not parts.hostname:
        raise ValueError(f"no host in URI: {uri!r}")
    secure = parts.scheme == "wss"
    port = parts.port or (443 if secure else 80)
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return secure, parts.hostname, port, resource


class ClientConnection(WebSocket):
    """The client side of one connection."""

    def __init__(
        self, proto: ClientProtocol, options: Options, loop: asyncio.AbstractEventLoop
    ) -> None:
        """Drive ``proto``; :attr:`opened` resolves after the 101 response."""
        super().__init__(proto, options, loop)
        self.cproto = proto
        self._request = proto.request
        self.opened: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Send the opening request."""
        super().connection_made(transport)
        self.cproto.connect()
        self._flush()

    def data_received(self, data: bytes) -> None:
        """Response bytes while CONNECTING, frames after."""
        proto = self.cproto
        if proto.state is not State.CONNECTING:
            WebSocket.data_received(self, data)
            return
        self.bytes_in += len(data)
        proto.receive_data(data)
        if proto.handshake_error is not None:
            if not self.opened.done():
                self.opened.set_exception(proto.handshake_error)
            if self.transport is not None:
                self.transport.abort()
            return
        if cast(State, proto.state) is not State.CONNECTING:
            self._response = proto.response
            if not self.opened.done():
                self.opened.set_result(None)
            self.start_keepalive()
            self._process_received()

    def connection_lost(self, exc: BaseException | None) -> None:
        """Fail the pending open, if any."""
        proto = self.cproto
        if not self.opened.done() and proto.state is State.CONNECTING:
            proto.receive_eof()  # a refused handshake keeps the body that did arrive
        super().connection_lost(exc)
        if not self.opened.done():
            if proto.handshake_error is not None:
                self.opened.set_exception(proto.handshake_error)
                return
            self.opened.set_exception(
                ConnectionError(f"connection closed during the opening handshake: {exc or 'EOF'}")
            )


class _Connect:
    """What connect() returns: ``await`` it or use it with ``async with``."""

    def __init__(self, uri: str, kwargs: dict[str, Any]) -> None:
        self.uri = uri
        self.kwargs = kwargs
        self.ws: ClientConnection | None = None

    def __await__(self) -> Generator[Any, None, ClientConnection]:
        return self._open().__await__()

    async def __aenter__(self) -> ClientConnection:
        self.ws = await self._open()
        return self.ws

    async def __aexit__(self, *exc: object) -> None:
        if self.ws is not None:
            await self.ws.close()

    async def _open(self) -> ClientConnection:
        kwargs = dict(self.kwargs)
        ssl: ssl_module.SSLContext | bool | None = kwargs.pop("ssl", None)
        origin: str | None = kwargs.pop("origin", None)
        subprotocols: Sequence[str] | None = kwargs.pop("subprotocols", None)
        headers = kwargs.pop("headers", None)
        sock = kwargs.pop("sock", None)
        custom_extensions: Sequence[ClientExtensionFactory] | None = kwargs.pop("extensions", None)
        options = Options.from_kwargs(kwargs)
        if kwargs:
            raise TypeError(f"unknown option(s): {', '.join(sorted(kwargs))}")
        secure, host, port, resource = parse_uri(self.uri)
        if secure and (ssl is None or ssl is True):
            ssl = ssl_module.create_default_context()
        elif not secure and ssl:
            raise ValueError("ssl= given for a ws:// URI; use wss://")
        default_port = 443 if secure else 80
        host_header = host if port == default_port else f"{host}:{port}"
        if ":" in host and port == default_port:
            host_header = f"[{host}]"
        elif ":" in host:
            host_header = f"[{host}]:{port}"
        factories: list[ClientExtensionFactory] = []
        if custom_extensions is not None:
            factories = list(custom_extensions)
        elif options.compression:
            factories.append(
                ClientDeflateFactory(
                    client_max_window_bits=True,
                    mem_level=options.compression_mem_level,
                    compress_level=options.compression_level,
                    min_size=options.compression_threshold,
                )
            )
        extra = headers if isinstance(headers, Headers) or headers is None else Headers(headers)
        loop = asyncio.get_running_loop()

        def factory() -> ClientConnection:
            proto = ClientProtocol(
                host_header,
                resource,
                origin=origin,
                subprotocols=subprotocols,
                extensions=factories,
                headers=extra,
                max_message_size=options.max_message_size,
                max_frame_size=options.max_frame_size,
                defer_failure=True,
            )
            return ClientConnection(proto, options, loop)

        async def establish() -> ClientConnection:
            if sock is not None:
                _, ws = await loop.create_connection(
                    factory, sock=sock, ssl=ssl or None, server_hostname=host if ssl else None
                )
            else:
                _, ws = await loop.create_connection(
                    factory, host, port, ssl=ssl or None, server_hostname=host if ssl else None
                )
            try:
                await ws.opened
            except BaseException:
                if ws.transport is not None:
                    ws.transport.abort()
                raise
            return ws

        try:
            return await asyncio.wait_for(establish(), options.open_timeout)
        except TimeoutError:
            raise TimeoutError(
                f"opening handshake with {self.uri} timed out after "
                f"open_timeout={options.open_timeout}s"
            ) from None
        except HandshakeError:
            raise


def connect(uri: str, **kwargs: Any) -> _Connect:
    """Connect to a WebSocket server; ``await`` it or use ``async with``.

    Keyword arguments: ``ssl`` (an SSLContext for wss), ``origin``,
    ``subprotocols``, ``headers`` (extra request headers), ``sock``,
    ``extensions`` (client extension factories, replacing the default
    permessage-deflate offer), and any
    :class:`~tidewire.transport.options.Options` field.
    """
    return _Connect(uri, kwargs)
