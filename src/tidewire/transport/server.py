"""serve(): listen, run the opening handshake, route, run handlers, drain on shutdown."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import random
import ssl as ssl_module
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator, Sequence
from typing import Any

from tidewire.errors import HandshakeError
from tidewire.protocol.close import CloseCode
from tidewire.protocol.connection import State
from tidewire.protocol.deflate import ServerDeflateFactory
from tidewire.protocol.handshake import build_reject_response, is_upgrade_request
from tidewire.protocol.http import Request, Response
from tidewire.protocol.server import ServerProtocol
from tidewire.transport.connection import WebSocket
from tidewire.transport.options import Options
from tidewire.transport.routing import Handler, Router

__all__ = ["serve", "Server", "ServerConnection", "ProcessRequest", "HealthHook"]

logger = logging.getLogger("tidewire.server")

ProcessRequest = Callable[
    ["ServerConnection", Request], Response | None | Awaitable[Response | None]
]
#: ``health(stats) -> body``: extends the ``/health`` answer; 200 when the body's
#: ``status`` is ``"ok"``, else 503 (a draining server answers 503 without asking).
HealthHook = Callable[[dict[str, Any]], dict[str, Any] | Awaitable[dict[str, Any]]]


class ServerConnection(WebSocket):
    """The server side of one connection: handshake, routing, then the handler."""

    def __init__(self, server: Server) -> None:
        """Create the protocol for one accepted TCP connection of ``server``."""
        options = server.options
        factories = []
        if options.compression:
            factories.append(
                ServerDeflateFactory(
                    server_max_window_bits=options.compression_window_bits,
                    mem_level=options.compression_mem_level,
                    compress_level=options.compression_level,
                    min_size=options.compression_threshold,
                )
            )
        proto = ServerProtocol(
            extensions=factories,
            subprotocols=server.subprotocols,
            select_subprotocol=server.select_subprotocol,
            max_line=options.max_line,
            max_headers=options.max_headers,
            max_head=options.max_head,
            max_body=options.max_body_size,
            max_message_size=options.max_message_size,
            max_frame_size=options.max_frame_size,
            defer_failure=True,
        )
        super().__init__(proto, options, server.loop)
        self.server = server
        self.sproto = proto
        self.handler_task: asyncio.Task[None] | None = None
        self._open_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Register with the server and start the opening-handshake deadline."""
        super().connection_made(transport)
        self.server.connections.add(self)
        timeout = self.options.open_timeout
        if timeout is not None:
            self._open_timer = self.loop.call_later(timeout, self._open_timed_out)

    def _open_timed_out(self) -> None:
        if self.proto.state is State.CONNECTING and self.transport is not None:
            logger.debug("opening handshake timed out for %s", self.remote_address)
            self.transport.abort()

    def connection_lost(self, exc: BaseException | None) -> None:
        """Unregister and account the connection's traffic."""
        super().connection_lost(exc)
        if self._open_timer is not None:
            self._open_timer.cancel()
        self.server.connections.discard(self)
        self.server.account(self)

    def data_received(self, data: bytes) -> None:
        """Handshake bytes while CONNECTING, frames after."""
        proto = self.sproto
        if proto.state is not State.CONNECTING:
            WebSocket.data_received(self, data)
            return
        self.bytes_in += len(data)
        proto.receive_data(data)
        if proto.handshake_error is not None:
            logger.debug("bad handshake from %s: %s", self.remote_address, proto.handshake_error)
            self._flush()
            return
        if proto.request is not None and self.request is None:
            self._request = proto.request
            self.server.dispatch(self, proto.request)
        elif proto.request is None:
            self._flush()  # a "100 Continue" while the request body is on its way

    def respond(self, response: Response) -> None:
        """Answer the request with a plain HTTP response and close."""
        self.sproto.send_response(response)
        self._response = response
        self._flush()

    def upgrade(self, handler: Handler, params: dict[str, Any]) -> None:
        """Accept the upgrade (101) and start ``handler(ws)``."""
        try:
            self._response = self.sproto.accept()
        except HandshakeError as exc:
            logger.debug("rejected handshake from %s: %s", self.remote_address, exc)
            self._flush()
            return
        if self._open_timer is not None:
            self._open_timer.cancel()
        self.path_params = params
        self.server.upgrades += 1
        self.start_keepalive()
        self._process_received()  # frames pipelined after the request
        task = self.loop.create_task(self._run(handler))
        self.handler_task = task
        self.server.handler_tasks.add(task)
        task.add_done_callback(self.server.handler_tasks.discard)

    async def _run(self, handler: Handler) -> None:
        code, reason = CloseCode.NORMAL_CLOSURE, ""
        try:
            await handler(self)
        except asyncio.CancelledError:
            code, reason = CloseCode.GOING_AWAY, "server shutting down"
        except Exception as exc:  # noqa: BLE001 - a handler bug must not kill the server
            if not isinstance(exc, ConnectionError) and self.proto.state is State.OPEN:
                logger.exception("handler failed on connection %s", self.id)
                code, reason = CloseCode.INTERNAL_ERROR, "internal error"
        try:
            await self.close(code, reason)
        except Exception:  # noqa: BLE001
            self._abort()


class Server:
    """A listening WebSocket server; create it with :func:`serve`."""

    def __init__(
        self,
        handler: Handler | Router,
        host: str | None,
        port: int | None,
        *,
        options: Options,
        ssl: ssl_module.SSLContext | None = None,
        origins: Sequence[str | None] | None = None,
        max_connections: int | None = None,
        subprotocols: Sequence[str] | None = None,
        select_subprotocol: Callable[[Sequence[str]], str | None] | None = None,
        process_request: ProcessRequest | None = None,
        health_path: str | None = "/health",
        health: HealthHook | None = None,
        reuse_port: bool = False,
        sock: Any = None,
    ) -> None:
        """See :func:`serve` for the meaning of each argument."""
        if isinstance(handler, Router):
            self.router = handler
        else:
            self.router = Router()
            self.router.add_websocket("/{path:path}", handler)
            self.router.add_websocket("/", handler)
        self.host = host
        self.port = port
        self.options = options
        self.ssl = ssl
        self.origins = None if origins is None else list(origins)
        self.max_connections = max_connections
        self.subprotocols = list(subprotocols or ())
        self.select_subprotocol = select_subprotocol
        self.process_request = process_request
        self.health_path = health_path
        self.health = health
        self.reuse_port = reuse_port
        self.sock = sock
        self.loop = asyncio.get_event_loop()
        self.connections: set[ServerConnection] = set()
        self.handler_tasks: set[asyncio.Task[None]] = set()
        self.started = time.monotonic()
        self.draining = False
        self.upgrades = 0
        self.http_requests = 0
        self.totals = {"messages_in": 0, "messages_out": 0, "bytes_in": 0, "bytes_out": 0}
        self._server: asyncio.Server | None = None

    # -------------------------------------------------------------- lifecycle

    async def start(self) -> Server:
        """Start listening."""
        self.loop = asyncio.get_running_loop()
        if self.sock is not None:
            self._server = await self.loop.create_server(
                lambda: ServerConnection(self), sock=self.sock, ssl=self.ssl
            )
        else:
            self._server = await self.loop.create_server(
                lambda: ServerConnection(self),
                self.host,
                self.port or 0,
                ssl=self.ssl,
                reuse_port=self.reuse_port or None,
            )
        if self.port == 0 or self.port is None:
            self.port = self.sockets[0].getsockname()[1]
        return self

    @property
    def sockets(self) -> list[Any]:
        """The listening sockets."""
        return list(self._server.sockets) if self._server is not None else []

    @property
    def url(self) -> str:
        """``ws://host:port/`` (or wss) of the first listening socket."""
        host, port = self.sockets[0].getsockname()[:2]
        if ":" in host:
            host = f"[{host}]"
        return f"{'wss' if self.ssl else 'ws'}://{host}:{port}/"

    async def serve_forever(self) -> None:
        """Serve until cancelled."""
        assert self._server is not None
        await self._server.serve_forever()

    def close(self) -> None:
        """Stop listening and close every connection with 1001 (see shutdown)."""
        if self._server is not None:
            self._server.close()
        for ws in list(self.connections):
            if ws.proto.state is State.OPEN:
                ws.loop.create_task(ws.close(CloseCode.GOING_AWAY, "server shutting down"))
            elif ws.proto.state is State.CONNECTING and ws.transport is not None:
                ws.transport.abort()

    async def shutdown(
        self, timeout: float | None = None, *, batch: int = 100, spread: float = 1.0
    ) -> None:
        """Graceful drain: /health 503, new upgrades 503, 1001 in jittered batches.

        Connections are closed ``batch`` at a time, each batch after a random
        delay within ``spread`` seconds, so thousands of clients do not
        reconnect at the same instant; after ``timeout`` (default
        close_timeout) the rest are aborted and handler tasks awaited.
        """
        self.draining = True
        # The listener stays open while draining: load balancers must be able to
        # read /health's 503, and late upgrades get a 503 rather than a refusal.
        timeout = self.options.close_timeout if timeout is None else timeout
        conns = [ws for ws in self.connections if ws.proto.state is State.OPEN]
        random.shuffle(conns)
        closers = []
        for i in range(0, len(conns), batch):
            delay = random.uniform(0, spread) if len(conns) > batch else 0.0
            closers.append(self.loop.create_task(self._close_batch(conns[i : i + batch], delay)))
        for ws in list(self.connections):
            if ws.proto.state is State.CONNECTING and ws.transport is not None:
                ws.transport.abort()
        pending = [ws.wait_closed() for ws in list(self.connections)]
        if pending:
            try:
                limit = None if timeout is None else timeout + spread  # None: no limit
                await asyncio.wait_for(asyncio.gather(*pending), limit)
            except TimeoutError:
                for ws in list(self.connections):
                    ws._abort()
        if self._server is not None:
            self._server.close()
        for ws in list(self.connections):
            if ws.proto.state is State.CONNECTING:
                ws._abort()  # accepted while draining and still mid-request
        for task in closers:
            task.cancel()
        await asyncio.gather(*closers, return_exceptions=True)
        await self._await_handlers(timeout)
        if self._server is not None:
            await self._server.wait_closed()

    async def _close_batch(self, batch: list[ServerConnection], delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        for ws in batch:
            if ws.proto.state is State.OPEN:
                ws.proto.send_close(CloseCode.GOING_AWAY, "server shutting down")
                ws._flush()
                ws._read_until_close()

    async def _await_handlers(self, timeout: float | None) -> None:
        tasks = [task for task in self.handler_tasks if not task.done()]
        if not tasks:
            return
        done, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=1.0)

    async def wait_closed(self) -> None:
        """Wait until the listener and every handler are done."""
        if self._server is not None:
            await self._server.wait_closed()
        tasks = list(self.handler_tasks)
        if tasks:
            await asyncio.wait(tasks, timeout=self.options.close_timeout)

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown(spread=0.0)

    # --------------------------------------------------------------- requests

    def account(self, ws: WebSocket) -> None:
        """Add a finished connection's counters to the server totals."""
        totals = self.totals
        totals["messages_in"] += ws.messages_in
        totals["messages_out"] += ws.messages_out
        totals["bytes_in"] += ws.bytes_in
        totals["bytes_out"] += ws.bytes_out

    def stats(self) -> dict[str, Any]:
        """Counters for /health: open connections, uptime, messages and bytes."""
        live = {k: v for k, v in self.totals.items()}
        for ws in self.connections:
            live["messages_in"] += ws.messages_in
            live["messages_out"] += ws.messages_out
            live["bytes_in"] += ws.bytes_in
            live["bytes_out"] += ws.bytes_out
        open_count = sum(1 for ws in self.connections if ws.proto.state is State.OPEN)
        return {
            "status": "draining" if self.draining else "ok",
            "connections": open_count,
            "uptime_seconds": round(time.monotonic() - self.started, 3),
            **live,
            "http_requests": self.http_requests,
        }

    def dispatch(self, ws: ServerConnection, request: Request) -> None:
        """Route one complete request head: hook, HTTP route, or upgrade."""
        if self.process_request is not None:
            try:
                result = self.process_request(ws, request)
            except Exception:  # noqa: BLE001 - a hook bug answers 500, not a dropped socket
                logger.exception("process_request failed")
                result = build_reject_response(500, "internal error")
            if inspect.isawaitable(result):
                self._spawn(self._finish_async(ws, request, result))
                return
            if result is not None:
                ws.respond(result)
                return
        self._route(ws, request)

    async def _finish_async(
        self, ws: ServerConnection, request: Request, result: Awaitable[Response | None]
    ) -> None:
        try:
            response = await result
        except Exception:  # noqa: BLE001
            logger.exception("process_request failed")
            response = build_reject_response(500, "internal error")
        if ws.transport is None or ws.transport.is_closing():
            return
        if response is not None:
            ws.respond(response)
        else:
            self._route(ws, request)

    def _route(self, ws: ServerConnection, request: Request) -> None:
        if not is_upgrade_request(request):
            self.http_requests += 1
            logger.debug(
                "plain HTTP %s %s from %s", request.method, request.path, ws.remote_address
            )
            try:
                answer = self._http(request)
            except Exception:  # noqa: BLE001
                logger.exception("HTTP route failed for %s", request.path_only)
                answer = build_reject_response(500, "internal error")
            if isinstance(answer, Response):
                ws.respond(answer)
            else:
                self._spawn(self._finish_http(ws, answer))
            return
        path = request.path_only
        if self.draining:
            ws.respond(build_reject_response(503, "server is shutting down"))
            return
        match = self.router.match_websocket(path)
        if match is None:
            ws.respond(build_reject_response(404, f"no WebSocket route for {path}"))
            return
        if self.origins is not None:
            origins = request.headers.get_all("Origin")
            if len(origins) > 1:
                ws.respond(build_reject_response(400, "more than one Origin header"))
                return
            origin = origins[0] if origins else None
            if origin not in self.origins:
                ws.respond(build_reject_response(403, f"origin not allowed: {origin}"))
                return
        if self.max_connections is not None:
            open_count = sum(1 for c in self.connections if c.proto.state is not State.CONNECTING)
            if open_count >= self.max_connections:
                ws.respond(
                    build_reject_response(
                        503, f"too many connections: max_connections={self.max_connections}"
                    )
                )
                return
        ws.upgrade(*match)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        # Tracked with the handlers so shutdown() awaits (or cancels) it too.
        task = self.loop.create_task(coro)
        self.handler_tasks.add(task)
        task.add_done_callback(self.handler_tasks.discard)

    async def _finish_http(self, ws: ServerConnection, answer: Awaitable[Response]) -> None:
        try:
            response = await answer
        except Exception:  # noqa: BLE001
            logger.exception("HTTP route failed")
            response = build_reject_response(500, "internal error")
        if ws.transport is not None and not ws.transport.is_closing():
            ws.respond(response)

    def _http(self, request: Request) -> Response | Awaitable[Response]:
        path = request.path_only
        if self.health_path is not None and path == self.health_path:
            stats = self.stats()
            if self.health is None or self.draining:
                return _health_response(stats)
            extended = self.health(stats)
            if inspect.isawaitable(extended):
                return self._await_health(extended)
            return _health_response(extended)
        match = self.router.match_http(path)
        if match is not None:
            responder, _params = match
            result = responder(request)
            if isinstance(result, Response) or inspect.isawaitable(result):
                return result
        return build_reject_response(404, f"not found: {path}")

    async def _await_health(self, extended: Awaitable[dict[str, Any]]) -> Response:
        return _health_response(await extended)


def _health_response(body: dict[str, Any]) -> Response:
    """200 when ``status`` is ``"ok"``, else 503: load balancers read only the status."""
    status = 200 if body.get("status") == "ok" else 503
    return Response.build(status, json.dumps(body).encode(), content_type="application/json")


class _Serve:
    """What serve() returns: ``await`` it or use it with ``async with``."""

    def __init__(self, server: Server) -> None:
        self.server = server

    def __await__(self) -> Generator[Any, None, Server]:
        return self.server.start().__await__()

    async def __aenter__(self) -> Server:
        return await self.server.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.server.shutdown(spread=0.0)


def serve(
    handler: Handler | Router,
    host: str | None = "127.0.0.1",
    port: int | None = 0,
    *,
    ssl: ssl_module.SSLContext | None = None,
    origins: Sequence[str | None] | None = None,
    max_connections: int | None = None,
    subprotocols: Sequence[str] | None = None,
    select_subprotocol: Callable[[Sequence[str]], str | None] | None = None,
    process_request: ProcessRequest | None = None,
    health_path: str | None = "/health",
    health: HealthHook | None = None,
    reuse_port: bool = False,
    sock: Any = None,
    **options: Any,
) -> _Serve:
    """Serve WebSocket connections with ``handler(ws)`` (or a Router) on host:port.

    ``origins`` lists the allowed Origin values (None allows any: only safe
    without cookie auth, see docs on cross-site WebSocket hijacking);
    ``max_connections`` answers 503 beyond it; ``process_request(ws, request)``
    may return a Response to answer any request itself.  ``health_path``
    answers the server's :meth:`Server.stats` as JSON (200, 503 while
    draining); ``health(stats)`` may return a richer body instead, answered
    200 when its ``status`` is ``"ok"`` and 503 otherwise.  Other keyword
    arguments are :class:`~tidewire.transport.options.Options`.
    """
    opts = Options.from_kwargs(options)
    if options:
        raise TypeError(f"unknown option(s): {', '.join(sorted(options))}")
    return _Serve(
        Server(
            handler,
            host,
            port,
            options=opts,
            ssl=ssl,
            origins=origins,
            max_connections=max_connections,
            subprotocols=subprotocols,
            select_subprotocol=select_subprotocol,
            process_request=process_request,
            health_path=health_path,
            health=health,
            reuse_port=reuse_port,
            sock=sock,
        )
    )
