"""Client: a reconnecting Python client for wire protocol v1 (docs/protocol.md).

One :class:`Client` keeps one logical session alive over as many WebSocket
connections as it takes.  After a drop it reconnects with exponential back-off
and full jitter, honouring the close-code taxonomy (:func:`action_for`), then
re-authenticates, rejoins its rooms, resubscribes its channels from the last
``(epoch, offset)`` it saw and flushes what was sent while it was offline, in
order.  With several URLs it spreads connections round-robin over the nodes
that pass their health check (:mod:`.nodes`).  Usage, options and events:
docs/client-python.md.

Concurrency model: one *runner* task owns the connection life cycle (pick a
node, connect, wait for the drop, back off, reconnect); each connection has a
*reader* task (:class:`.link.Link`) that answers heartbeats and RPC replies at
once and runs callbacks in arrival order (sync callbacks inline, async ones as
tasks started in that order, so a callback may await :meth:`Client.call`
without blocking the reader).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, overload

from tidewire.errors import ConnectionClosed, ConnectionClosedError, InvalidState, RealtimeError
from tidewire.protocol.close import CloseAction, CloseCode
from tidewire.realtime.client import requests
from tidewire.realtime.client.channels import ChannelCallback, Channels
from tidewire.realtime.client.credentials import Credentials, Token
from tidewire.realtime.client.dispatch import Dispatcher
from tidewire.realtime.client.envelopes import str_or_none
from tidewire.realtime.client.events import Callback, Emitter
from tidewire.realtime.client.link import AttemptFailed, Disconnect, Link, LinkLost, open_link
from tidewire.realtime.client.nodes import Nodes
from tidewire.realtime.client.options import (
    DEFAULT_CALL_TIMEOUT,
    DEFAULT_HEALTH_TIMEOUT,
    DEFAULT_OFFLINE_MAX_BYTES,
    DEFAULT_OFFLINE_MAX_MESSAGES,
    DEFAULT_OPEN_TIMEOUT,
    DEFAULT_PING_INTERVAL,
    DEFAULT_PONG_TIMEOUT,
    DEFAULT_RECONNECT_BASE,
    DEFAULT_RECONNECT_CAP,
    DEFAULT_STABLE_AFTER,
    backoff_delay,
    check_options,
    check_url,
    connect_kwargs,
)
from tidewire.realtime.client.queue import OfflineQueue
from tidewire.realtime.client.requests import RPCHandler, RPCHandlers
from tidewire.realtime.client.restore import rejoin
from tidewire.realtime.client.state import ClientState, Status
from tidewire.realtime.wire import encode

__all__ = ["Client"]

logger = logging.getLogger("tidewire.realtime.client")


class Client:
    """A reconnecting client for a tidewire App.

    >>> async with Client("ws://localhost:8080/ws", token=get_token) as client:
    ...     await client.join("lobby")
    ...     client.on("chat", print)
    ...     await client.send({"type": "chat", "room": "lobby", "text": "hi"})

    ``url`` is one URL or several: each connection then goes to the next
    healthy one, round-robin from a random start (``health_check``).
    ``token`` is a string or a function (plain or async) returning one; it is
    sent in an ``auth`` message on every connection and fetched again after a
    close that asks for new credentials (4200-4299).  Other keyword arguments
    go to the transport's ``connect()`` (``ssl``, ``headers``, ``origin``,
    ``max_message_size``, ``compression``, ``close_timeout`` ...).  Every
    option and its default: docs/client-python.md.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        token: Token | None = None,
        reconnect_base: float = DEFAULT_RECONNECT_BASE,
        reconnect_cap: float = DEFAULT_RECONNECT_CAP,
        max_attempts: int | None = None,
        stable_after: float = DEFAULT_STABLE_AFTER,
        open_timeout: float = DEFAULT_OPEN_TIMEOUT,
        call_timeout: float = DEFAULT_CALL_TIMEOUT,
        ping_interval: float | None = DEFAULT_PING_INTERVAL,
        pong_timeout: float = DEFAULT_PONG_TIMEOUT,
        offline_max_messages: int = DEFAULT_OFFLINE_MAX_MESSAGES,
        offline_max_bytes: int = DEFAULT_OFFLINE_MAX_BYTES,
        health_check: bool = True,
        health_timeout: float = DEFAULT_HEALTH_TIMEOUT,
        **transport: Any,
    ) -> None:
        """Configure the client; nothing connects until :meth:`connect`."""
        urls = [url] if isinstance(url, str) else list(url)
        if not urls:
            raise ValueError("at least one URL is needed")
        for one in urls:
            check_url(one)
        check_options(
            reconnect_base=reconnect_base,
            reconnect_cap=reconnect_cap,
            max_attempts=max_attempts,
            stable_after=stable_after,
            open_timeout=open_timeout,
            call_timeout=call_timeout,
            ping_interval=ping_interval,
            pong_timeout=pong_timeout,
            offline_max_messages=offline_max_messages,
            offline_max_bytes=offline_max_bytes,
            health_timeout=health_timeout,
        )
        self._connect_kwargs = connect_kwargs(transport, open_timeout=open_timeout)

        self.urls: tuple[str, ...] = tuple(urls)
        self.reconnect_base = reconnect_base
        self.reconnect_cap = reconnect_cap
        self.max_attempts = max_attempts
        self.stable_after = stable_after
        self.open_timeout = open_timeout
        self.call_timeout = call_timeout
        self.ping_interval = ping_interval
        self.pong_timeout = pong_timeout
        self.offline_max_messages = offline_max_messages
        self.offline_max_bytes = offline_max_bytes
        self.health_check = health_check
        self.health_timeout = health_timeout
        # The starting node comes from the random module (random.seed() makes it
        # repeatable); a single URL leaves its state alone.
        start = random.randrange(len(urls)) if len(urls) > 1 else 0
        self._nodes = Nodes(
            urls,
            start=start,
            health_check=health_check,
            health_timeout=health_timeout,
            ssl=transport.get("ssl"),
        )
        self._credentials = Credentials(token)
        self._rng = random.Random()

        self._events = Emitter()
        self._status = Status(lambda state: self._events.emit("state", state))
        self._closed_by_user = False
        self._runner: asyncio.Task[None] | None = None
        self._setup: Link | None = None
        self._attempt = 0
        self._ids = itertools.count(1)
        self._rpcs = RPCHandlers()
        self._rooms: dict[str, None] = {}
        self._channels = Channels(
            self._events.invoke, lambda channel: self._events.emit("recovery_failed", channel)
        )
        self._queue = OfflineQueue(offline_max_messages, offline_max_bytes)
        self._dispatch = Dispatcher(self._events, self._channels, self._rpcs)
        self.connection_id: str | None = None
        self.user: str | None = None

    def __repr__(self) -> str:
        return f"<Client {self.url} {self.state.value}>"

    # ------------------------------------------------------------------ state

    @property
    def state(self) -> ClientState:
        """CONNECTING, OPEN, RECONNECTING or CLOSED."""
        return self._status.state

    @property
    def url(self) -> str:
        """The URL of the current connection, or the one tried next."""
        link = self._status.link
        return link.url if link is not None else self._nodes.current

    @property
    def queued(self) -> int:
        """Messages waiting in the offline queue."""
        return len(self._queue)

    @property
    def queued_bytes(self) -> int:
        """Bytes (encoded JSON) waiting in the offline queue."""
        return self._queue.bytes

    @property
    def rooms(self) -> frozenset[str]:
        """Rooms joined; they are rejoined after every reconnect."""
        return frozenset(self._rooms)

    @property
    def channels(self) -> frozenset[str]:
        """Channels subscribed; they are resubscribed (and recovered) after every reconnect."""
        return self._channels.names

    def position(self, channel: str) -> tuple[str, int] | None:
        """The last ``(epoch, offset)`` seen on ``channel``, or None when not subscribed."""
        return self._channels.position(channel)

    # ------------------------------------------------------------- life cycle

    async def connect(self, *, retry: bool = False) -> None:
        """Open the first connection: hello, auth, rooms, channels, offline queue.

        With ``retry=False`` (the default) every URL is tried once (with several
        URLs, those that pass the health check) and the last error is raised
        (OSError, TimeoutError, HandshakeError, Unauthorized,
        ConnectionClosed...); the client stays CLOSED and connect() may be
        called again.  With ``retry=True`` it keeps trying with back-off, like
        a reconnect, until it is open, ``max_attempts`` is reached or the
        server says stop.  Once open, drops are handled in the background.
        """
        if self._closed_by_user:
            raise InvalidState("the client was closed; create a new Client")
        runner = self._runner
        if runner is not None and not runner.done():
            if self.state is not ClientState.CLOSED:
                raise InvalidState("connect() was already called")
            await asyncio.wait({runner})  # stopped a moment ago; let it finish
        loop = asyncio.get_running_loop()
        first: asyncio.Future[None] = loop.create_future()
        self._attempt = 0
        self._status.set(ClientState.CONNECTING)
        self._runner = loop.create_task(self._run(first, retry))
        try:
            await first
        except asyncio.CancelledError:
            self._runner.cancel()
            raise

    async def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Close for good: stop reconnecting, fail pending calls with ``disconnected``.

        What is still in the offline queue is discarded (see :attr:`queued`).
        Idempotent.
        """
        self._closed_by_user = True
        setup = self._setup
        if setup is not None:
            # Fail a connection being set up directly rather than only through
            # cancellation: its reads then end at once whatever they wait for.
            setup.ws.fail(CloseCode.GOING_AWAY, "client closed")
        link = self._status.link
        if link is not None:
            await link.ws.close(code, reason)
            if link.reader is not None:
                await asyncio.wait({link.reader})
        runner = self._runner
        if runner is not None and not runner.done():
            runner.cancel()
            await asyncio.wait({runner})
        self._finish(None)

    async def wait_closed(self) -> None:
        """Wait until the client is CLOSED (close(), a stop code, or giving up)."""
        runner = self._runner
        if runner is not None:
            await asyncio.wait({runner})

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _finish(self, error: BaseException | None) -> None:
        """Enter CLOSED; after close(), drop the offline queue (counted in the log)."""
        self._status.link = None
        if self._closed_by_user:
            self._queue.discard()
        self._status.set(ClientState.CLOSED)
        if error is not None:
            self._events.emit("error", error)

    async def _run(self, first: asyncio.Future[None], retry_first: bool) -> None:
        """The connection life cycle: pick a node, connect, wait for the drop, back off."""
        loop = asyncio.get_running_loop()
        failures = 0  # consecutive failed attempts, for max_attempts
        try:
            while not self._closed_by_user:
                # One round: the nodes in turn (healthy ones first) until one opens.
                tour = self._nodes.round()
                link: Link | None = None
                failed: AttemptFailed | None = None
                while link is None and (url := await tour.next()) is not None:
                    try:
                        link = await self._open_link(url)
                    except AttemptFailed as exc:
                        failed = exc
                        failures += 1
                        error, action = exc.error, exc.action
                        logger.info("connecting to %s failed: %r", url, error)
                        if self._closed_by_user:
                            return
                        once = not first.done() and not retry_first
                        if action is CloseAction.STOP or (once and tour.exhausted()):
                            self._give_up(first, error)
                            return
                        if self.max_attempts is not None and failures >= self.max_attempts:
                            gave_up = RealtimeError(
                                f"gave up after {failures} attempts "
                                f"(max_attempts={self.max_attempts}): {error!r}",
                                "reconnect_failed",
                            )
                            gave_up.__cause__ = error
                            self._give_up(first, gave_up)
                            return
                        if action is CloseAction.REAUTH:
                            self._credentials.forget()
                if link is None:
                    if failed is None:
                        continue  # nothing was tried (closed while probing)
                    if not first.done() and not retry_first:
                        self._give_up(first, failed.error)
                        return
                    await self._back_off(failed.action)  # every candidate failed once more
                    continue
                failures = 0
                if not first.done():
                    first.set_result(None)
                opened = loop.time()
                disconnect = await link.done
                if self._closed_by_user:
                    return
                if loop.time() - opened >= self.stable_after:
                    self._attempt = 0
                if disconnect.action is CloseAction.STOP:
                    stopped = ConnectionClosedError(disconnect.code, disconnect.reason)
                    self._give_up(first, stopped)
                    return
                if disconnect.action is CloseAction.REAUTH:
                    self._credentials.forget()
                await self._back_off(disconnect.action)
        finally:
            if not first.done():
                first.set_exception(
                    RealtimeError("the client was closed while connecting", "disconnected")
                )
            if self.state is not ClientState.CLOSED:
                self._finish(None)

    def _give_up(self, first: asyncio.Future[None], error: BaseException) -> None:
        if not first.done():
            first.set_exception(error)
            self._finish(None)
        else:
            self._finish(error)

    async def _back_off(self, action: CloseAction) -> None:
        """Sleep before the next attempt: a short jitter to reconnect, else full back-off."""
        if action is CloseAction.RECONNECT:
            delay = backoff_delay(
                0, base=self.reconnect_base, cap=self.reconnect_cap, rng=self._rng
            )
        else:
            delay = backoff_delay(
                self._attempt, base=self.reconnect_base, cap=self.reconnect_cap, rng=self._rng
            )
            self._attempt += 1
        logger.debug("reconnecting in %.3f s (%s)", delay, action.value)
        await asyncio.sleep(delay)

    # -------------------------------------------------------------- connecting

    async def _open_link(self, url: str) -> Link:
        """Connect to ``url`` and restore the session; AttemptFailed otherwise."""
        link = await open_link(
            url, self._connect_kwargs, ids=self._ids, open_timeout=self.open_timeout
        )
        if self._closed_by_user:
            # close() came as the handshake finished (Python 3.11's wait_for can
            # swallow that cancellation): do not go on with a closed client.
            link.ws.fail(CloseCode.GOING_AWAY, "client closed")
            raise AttemptFailed(RealtimeError("closed", "disconnected"), CloseAction.STOP)
        self._setup = link
        try:
            hello = await link.hello()
            self.connection_id = str_or_none(hello.get("id"))
            self.user = str_or_none(hello.get("user"))
            link.start(
                self._dispatch,
                self._link_lost,
                ping_interval=self.ping_interval,
                pong_timeout=self.pong_timeout,
            )
            await self._restore(link)
            self._queue.flush(link.send_nowait)
        except (asyncio.CancelledError, AttemptFailed):
            await link.abandon()
            raise
        except Exception as exc:
            action = await link.abandon()
            error: Exception = exc
            if isinstance(exc, LinkLost) and link.done.done():
                disconnect = link.done.result()
                error = ConnectionClosedError(disconnect.code, disconnect.reason)
            elif not isinstance(exc, RealtimeError | TimeoutError | OSError | LinkLost):
                logger.exception("restoring the session on %s failed", url)
            raise AttemptFailed(error, action) from None
        finally:
            self._setup = None
        self._status.link = link
        self._status.set(ClientState.OPEN)
        return link

    async def _restore(self, link: Link) -> None:
        """Authenticate, rejoin rooms and resubscribe channels (from their positions)."""
        if self._credentials.enabled:
            self.user = await self._credentials.authenticate(link)
        await rejoin(link, self._rooms, self._channels, lambda exc: self._events.emit("error", exc))

    # ---------------------------------------------------------------- reading

    def _link_lost(self, link: Link, disconnect: Disconnect) -> Disconnect:
        """A connection ended: pick the next action and tell the app (for the open one)."""
        if self._closed_by_user:
            disconnect = Disconnect(disconnect.code, disconnect.reason, CloseAction.STOP)
        if self._status.link is link:
            self._status.link = None
            self._events.emit("close", disconnect)
            # At once, not after the back-off: send() must queue from now on.
            stop = disconnect.action is CloseAction.STOP
            self._status.set(ClientState.CLOSED if stop else ClientState.RECONNECTING)
        return disconnect

    # ----------------------------------------------------------------- events

    @overload
    def on(self, event: str) -> Callable[[Callback], Callback]: ...

    @overload
    def on(self, event: str, callback: Callback) -> Callback: ...

    def on(
        self, event: str, callback: Callback | None = None
    ) -> Callback | Callable[[Callback], Callback]:
        """Call ``callback`` on ``event``; without one, a decorator.

        Events: ``"message"`` (every envelope, as received), an application
        type or server notice (``"chat"``, ``"userJoined"``...: the envelope),
        ``"state"`` (a ClientState), ``"close"`` (a Disconnect), ``"error"``
        (an exception), ``"recovery_failed"`` (a channel name).  Callbacks may
        be plain or async.
        """
        if callback is None:

            def register(cb: Callback) -> Callback:
                return self._events.on(event, cb)

            return register
        return self._events.on(event, callback)

    def off(self, event: str, callback: Callback) -> None:
        """Stop calling ``callback`` on ``event`` (no error when it was not registered)."""
        self._events.off(event, callback)

    def rpc(self, method: str) -> Callable[[RPCHandler], RPCHandler]:
        """Decorator: answer the server's ``rpc`` calls of ``method`` with ``handler(params)``.

        Raise a RealtimeError to answer with its code; any other exception
        answers ``handler_error``.  Unknown methods get ``no_such_method``.
        """

        def register(handler: RPCHandler) -> RPCHandler:
            return self._rpcs.register(method, handler)

        return register

    # ---------------------------------------------------------------- sending

    async def send(self, envelope: Mapping[str, Any]) -> None:
        """Send an envelope; while not open, queue it (flushed in order after reconnecting).

        Raises OfflineQueueFull when the queue is at ``offline_max_messages``
        or ``offline_max_bytes`` (the message is not queued), RealtimeError
        ``disconnected`` after close().  While open, waits when the transport's
        write buffer is full.  Delivery is at most once: a message sent just
        before a drop may be lost with the connection.
        """
        kind = envelope.get("type")
        if not isinstance(kind, str) or not kind:
            raise ValueError("an envelope needs a non-empty string 'type'")
        text = encode(dict(envelope))
        if self._closed_by_user:
            raise RealtimeError("the client is closed", "disconnected")
        link = self._status.link
        if self.state is ClientState.OPEN and link is not None:
            try:
                await link.ws.send(text)
                return
            except ConnectionClosed:
                pass  # not framed: dropped before we noticed; it goes to the queue
            if self._closed_by_user:
                raise RealtimeError("the client is closed", "disconnected")
        self._queue.put(text)

    async def emit(self, type: str, **fields: Any) -> None:
        """Send ``{"type": type, **fields}`` (see :meth:`send`)."""
        await self.send({"type": type, **fields})

    async def publish(self, channel: str, payload: Any) -> None:
        """Publish ``payload`` to ``channel`` (queued while offline, like :meth:`send`)."""
        await self.send({"type": "publish", "channel": channel, "payload": payload})

    # --------------------------------------------------------------- requests

    async def join(self, room: str, *, timeout: float | None = None) -> dict[str, Any]:
        """Join ``room`` and return the ``joined`` reply (members, count).

        The room is rejoined after every reconnect.  Raises the server's error
        as a RealtimeError (``forbidden`` as Rejected, ``limit``, ``invalid``...),
        or RealtimeError ``timeout`` / ``disconnected``.
        """
        reply = await self._ask({"type": "join", "room": room}, "joined", timeout)
        self._rooms[room] = None
        return {key: value for key, value in reply.items() if key != "id"}

    async def leave(self, room: str, *, timeout: float | None = None) -> None:
        """Leave ``room``; it is no longer rejoined after a reconnect."""
        self._rooms.pop(room, None)
        try:
            await self._ask({"type": "leave", "room": room}, "left", timeout)
        except RealtimeError as exc:
            if exc.code != "not_member":
                raise

    async def subscribe(
        self, channel: str, callback: ChannelCallback, *, timeout: float | None = None
    ) -> Callable[[], Awaitable[None]]:
        """Subscribe ``callback`` to ``channel``; return a coroutine function that unsubscribes.

        The callback gets every ``publish`` envelope once, in offset order,
        across reconnects: missed ones are recovered from the server's history
        before live ones; when they cannot be (history gone, server restarted)
        the client emits ``"recovery_failed"`` with the channel and goes on live.
        One subscription per channel (InvalidState for a second).
        """
        sub = self._channels.add(channel, callback)
        try:
            await self._ask({"type": "subscribe", "channel": channel}, "subscribed", timeout)
        except BaseException:
            self._channels.remove(sub)
            raise

        async def unsubscribe() -> None:
            if not self._channels.remove(sub):
                return
            link = self._status.link
            if self.state is ClientState.OPEN and link is not None:
                # A drop unsubscribes too: the server forgets a closed connection.
                with contextlib.suppress(RealtimeError, LinkLost, TimeoutError):
                    await link.request({"type": "unsubscribe", "channel": channel}, "unsubscribed")

        return unsubscribe

    async def call(self, method: str, params: Any = None, *, timeout: float | None = None) -> Any:
        """Call ``method`` on the server and return its result.

        Raises RPCError with the server's code (``no_such_method``,
        ``handler_error``, an app's own code), RPCTimeout after ``timeout``
        (default call_timeout, waiting for a reconnect included) and RPCError
        ``disconnected`` when the connection drops before the answer.
        """
        wait = self.call_timeout if timeout is None else timeout
        return await requests.call(
            self._status, method, params, wait, started=self._runner is not None
        )

    async def _ask(
        self, envelope: dict[str, Any], expect: str, timeout: float | None
    ) -> dict[str, Any]:
        """Wait for an open connection, send a request, return its reply; errors raised."""
        wait = self.call_timeout if timeout is None else timeout
        return await requests.ask(
            self._status, envelope, expect, wait, started=self._runner is not None
        )
