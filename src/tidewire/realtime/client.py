"""Client: a reconnecting Python client for wire protocol v1 (docs/protocol.md).

One :class:`Client` keeps one logical session alive over as many WebSocket
connections as it takes.  After a drop it reconnects with exponential back-off
and full jitter, honouring the close-code taxonomy (:func:`action_for`), then
re-authenticates, rejoins its rooms, resubscribes its channels from the last
``(epoch, offset)`` it saw and flushes what was sent while it was offline, in
order.  Usage, options and events: docs/client-python.md.

Concurrency model: one *runner* task owns the connection life cycle (connect,
wait for the drop, back off, reconnect); each connection has a *reader* task
that answers heartbeats and RPC replies at once and runs callbacks in arrival
order (sync callbacks inline, async ones as tasks started in that order, so a
callback may await :meth:`Client.call` without blocking the reader).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import inspect
import json
import logging
import random
import urllib.parse
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final, TypeAlias, overload

from tidewire.errors import (
    ConnectionClosed,
    ConnectionClosedError,
    HandshakeError,
    InvalidState,
    InvalidStatus,
    RateLimited,
    RealtimeError,
    Rejected,
    RPCError,
    RPCTimeout,
    Unauthorized,
)
from tidewire.protocol.close import CloseAction, CloseCode, action_for
from tidewire.realtime.wire import SUBPROTOCOL, encode
from tidewire.transport import ClientConnection, Options
from tidewire.transport import connect as ws_connect

__all__ = [
    "Client",
    "ClientState",
    "Disconnect",
    "OfflineQueueFull",
    "backoff_delay",
    "DEFAULT_RECONNECT_BASE",
    "DEFAULT_RECONNECT_CAP",
    "DEFAULT_STABLE_AFTER",
    "DEFAULT_OPEN_TIMEOUT",
    "DEFAULT_CALL_TIMEOUT",
    "DEFAULT_PING_INTERVAL",
    "DEFAULT_PONG_TIMEOUT",
    "DEFAULT_OFFLINE_MAX_MESSAGES",
    "DEFAULT_OFFLINE_MAX_BYTES",
]

logger = logging.getLogger("tidewire.realtime.client")

#: First back-off step (seconds): short enough that a blip costs under a second.
DEFAULT_RECONNECT_BASE: Final = 0.5
#: Longest back-off step (seconds): 30 s bounds the reconnect storm of a fleet
#: of clients after an outage while keeping recovery within history_ttl (300 s).
DEFAULT_RECONNECT_CAP: Final = 30.0
#: Seconds a connection must stay open before the back-off starts over, so a
#: server that accepts and then drops at once is still backed off from.
DEFAULT_STABLE_AFTER: Final = 30.0
#: Seconds for TCP + TLS + the opening handshake + the server's hello (transport default).
DEFAULT_OPEN_TIMEOUT: Final = 10.0
#: Seconds a call, join or subscribe waits for its answer (the server's rpc_timeout).
DEFAULT_CALL_TIMEOUT: Final = 10.0
#: Seconds between app-level pings: under the App's idle_timeout (300 s) and
#: the 30-60 s idle timers of NATs and proxies.
DEFAULT_PING_INTERVAL: Final = 25.0
#: Seconds to wait for the pong before the server is treated as dead.
DEFAULT_PONG_TIMEOUT: Final = 10.0
#: Messages kept while offline: enough for a burst of chat, and flushed at once on
#: reconnect, so it stays well under the server's default burst (200 messages per
#: connection, docs/defaults.md): a bigger flush would be rate limited and, after
#: ten refusals, closed with 1008.
DEFAULT_OFFLINE_MAX_MESSAGES: Final = 100
#: Bytes (encoded JSON) kept while offline: 1 MiB, the transport's message limit.
DEFAULT_OFFLINE_MAX_BYTES: Final = 1024 * 1024

#: Transport arguments the client sets itself (subprotocol, timeouts, keepalive).
_RESERVED_TRANSPORT: Final = frozenset({"subprotocols", "open_timeout", "sock", "ping_timeout"})
#: Frames read while waiting for the hello: it comes first, or an error then the close.
_MAX_FRAMES_BEFORE_HELLO: Final = 8
#: connect() arguments that are not transport Options fields.
_CONNECT_EXTRAS: Final = frozenset({"ssl", "origin", "headers", "extensions"})

#: A token, or a function (plain or async) returning a fresh one.
Token: TypeAlias = str | Callable[[], str | Awaitable[str]]
#: An event callback, plain or async; its arguments depend on the event.
Callback: TypeAlias = Callable[..., Any]
#: A channel callback: gets each ``publish`` envelope once, in offset order.
ChannelCallback: TypeAlias = Callable[[dict[str, Any]], Any]
#: A handler for server-to-client RPCs: ``params -> result``, plain or async.
RPCHandler: TypeAlias = Callable[[Any], Any]


class ClientState(enum.Enum):
    """Where a :class:`Client` is in its life cycle."""

    CONNECTING = "connecting"
    OPEN = "open"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Disconnect:
    """One connection ended: the close code and reason, and what the client does next.

    ``code`` is 1006 when no close frame arrived (network loss, or the server
    missed a heartbeat; ``reason`` says which).
    """

    code: int
    reason: str
    action: CloseAction


class OfflineQueueFull(RealtimeError):
    """send() while offline with the offline queue at its limit; nothing was queued.

    ``what`` names the limit ("messages" or "bytes"), ``limit`` its value and
    ``size`` what the queue would have held with this message.
    """

    code = "offline_queue_full"

    def __init__(self, what: str, limit: int, size: int) -> None:
        """Name the limit that fired."""
        super().__init__(f"offline queue full: {size} {what} > offline_max_{what}={limit}")
        self.what = what
        self.limit = limit
        self.size = size


def backoff_delay(
    attempt: int, *, base: float, cap: float, rng: random.Random | None = None
) -> float:
    """Seconds to wait before reconnect ``attempt`` (0-based): full jitter.

    ``uniform(0, min(cap, base * 2**attempt))``, the "full jitter" of AWS's
    back-off study: spreading clients over the whole window keeps a fleet that
    lost one server from reconnecting in lockstep.
    """
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, got {attempt}")
    # 2**attempt overflows float past ~1024; the cap is reached long before.
    window = min(cap, base * 2.0 ** min(attempt, 64))
    return (rng or random).uniform(0.0, window)


class _LinkLost(Exception):
    """The connection a request was sent on is gone (mapped to ``disconnected``)."""


class _AttemptFailed(Exception):
    """A connection attempt failed; ``action`` says whether trying again can help."""

    def __init__(self, error: BaseException, action: CloseAction) -> None:
        super().__init__(str(error))
        self.error = error
        self.action = action


@dataclass(slots=True)
class _Pending:
    future: asyncio.Future[dict[str, Any]]
    expect: frozenset[str]


@dataclass(slots=True)
class _Subscription:
    channel: str
    callback: ChannelCallback
    epoch: str | None = None
    offset: int = 0


class _Link:
    """One WebSocket connection of the client and what hangs off it."""

    __slots__ = ("ws", "url", "pending", "pong", "reader", "heartbeat", "done", "dead_reason")

    def __init__(self, ws: ClientConnection, url: str) -> None:
        self.ws = ws
        self.url = url
        self.pending: dict[int, _Pending] = {}
        self.pong = asyncio.Event()
        self.reader: asyncio.Task[None] | None = None
        self.heartbeat: asyncio.Task[None] | None = None
        self.done: asyncio.Future[Disconnect] = asyncio.get_running_loop().create_future()
        self.dead_reason: str | None = None


class Client:
    """A reconnecting client for a tidewire App.

    >>> async with Client("ws://localhost:8080/ws", token=get_token) as client:
    ...     await client.join("lobby")
    ...     client.on("chat", print)
    ...     await client.send({"type": "chat", "room": "lobby", "text": "hi"})

    ``url`` is one URL or several (round-robin with failover).  ``token`` is a
    string or a function (plain or async) returning one; it is sent in an
    ``auth`` message on every connection and fetched again after a close that
    asks for new credentials (4200-4299).  Other keyword arguments go to the
    transport's ``connect()`` (``ssl``, ``headers``, ``origin``,
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
        **transport: Any,
    ) -> None:
        """Configure the client; nothing connects until :meth:`connect`."""
        urls = [url] if isinstance(url, str) else list(url)
        if not urls:
            raise ValueError("at least one URL is needed")
        for one in urls:
            _check_url(one)
        for name, value in (
            ("reconnect_base", reconnect_base),
            ("reconnect_cap", reconnect_cap),
            ("open_timeout", open_timeout),
            ("call_timeout", call_timeout),
            ("pong_timeout", pong_timeout),
        ):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        if stable_after < 0:
            raise ValueError(f"stable_after must be >= 0, got {stable_after!r}")
        if ping_interval is not None and not ping_interval > 0:
            raise ValueError(f"ping_interval must be > 0 or None, got {ping_interval!r}")
        if max_attempts is not None and max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1 or None, got {max_attempts!r}")
        if offline_max_messages < 0 or offline_max_bytes < 0:
            raise ValueError("offline_max_messages and offline_max_bytes must be >= 0")
        reserved = _RESERVED_TRANSPORT.intersection(transport)
        if reserved:
            raise TypeError(
                f"{', '.join(sorted(reserved))}: set by the client "
                "(use open_timeout=, pong_timeout=; the subprotocol is tidewire.v1)"
            )
        leftover = dict(transport)
        Options.from_kwargs(leftover)  # TypeError/ValueError now, not at the first connect
        unknown = set(leftover) - _CONNECT_EXTRAS
        if unknown:
            raise TypeError(f"unknown option(s): {', '.join(sorted(unknown))}")

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
        # The app-level heartbeat proves more than a protocol ping (the server's
        # app reads and answers, and it counts against the App's idle_timeout),
        # so the transport's own keepalive is off: one timer, one verdict.
        self._connect_kwargs: dict[str, Any] = {
            "ping_interval": None,
            "ping_timeout": None,
            **transport,
            "subprotocols": [SUBPROTOCOL],
            "open_timeout": open_timeout,
        }
        self._token = token
        self._token_value: str | None = None
        self._rng = random.Random()

        self._state = ClientState.CLOSED
        self._closed_by_user = False
        self._runner: asyncio.Task[None] | None = None
        self._link: _Link | None = None
        self._setup: _Link | None = None
        self._state_changed: asyncio.Future[None] | None = None
        self._url_index = 0
        self._attempt = 0
        self._next_id = 0
        self._listeners: dict[str, list[Callback]] = {}
        self._rpcs: dict[str, RPCHandler] = {}
        self._rooms: dict[str, None] = {}
        self._subs: dict[str, _Subscription] = {}
        self._queue: deque[tuple[str, int]] = deque()
        self._queued_bytes = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self.connection_id: str | None = None
        self.user: str | None = None

    def __repr__(self) -> str:
        return f"<Client {self.url} {self._state.value}>"

    # ------------------------------------------------------------------ state

    @property
    def state(self) -> ClientState:
        """CONNECTING, OPEN, RECONNECTING or CLOSED."""
        return self._state

    @property
    def url(self) -> str:
        """The URL of the current connection, or the one tried next."""
        link = self._link
        return link.url if link is not None else self.urls[self._url_index]

    @property
    def queued(self) -> int:
        """Messages waiting in the offline queue."""
        return len(self._queue)

    @property
    def queued_bytes(self) -> int:
        """Bytes (encoded JSON) waiting in the offline queue."""
        return self._queued_bytes

    @property
    def rooms(self) -> frozenset[str]:
        """Rooms joined; they are rejoined after every reconnect."""
        return frozenset(self._rooms)

    @property
    def channels(self) -> frozenset[str]:
        """Channels subscribed; they are resubscribed (and recovered) after every reconnect."""
        return frozenset(self._subs)

    def position(self, channel: str) -> tuple[str, int] | None:
        """The last ``(epoch, offset)`` seen on ``channel``, or None when not subscribed."""
        sub = self._subs.get(channel)
        if sub is None or sub.epoch is None:
            return None
        return sub.epoch, sub.offset

    def _set_state(self, state: ClientState) -> None:
        if state is self._state:
            return
        self._state = state
        waiter = self._state_changed
        if waiter is not None:
            self._state_changed = None
            if not waiter.done():
                waiter.set_result(None)
        self._emit("state", state)

    # ------------------------------------------------------------- life cycle

    async def connect(self, *, retry: bool = False) -> None:
        """Open the first connection: hello, auth, rooms, channels, offline queue.

        With ``retry=False`` (the default) every URL is tried once and the last
        error is raised (OSError, TimeoutError, HandshakeError, Unauthorized,
        ConnectionClosed...); the client stays CLOSED and connect() may be
        called again.  With ``retry=True`` it keeps trying with back-off, like
        a reconnect, until it is open, ``max_attempts`` is reached or the
        server says stop.  Once open, drops are handled in the background.
        """
        if self._closed_by_user:
            raise InvalidState("the client was closed; create a new Client")
        runner = self._runner
        if runner is not None and not runner.done():
            if self._state is not ClientState.CLOSED:
                raise InvalidState("connect() was already called")
            await asyncio.wait({runner})  # stopped a moment ago; let it finish
        loop = asyncio.get_running_loop()
        first: asyncio.Future[None] = loop.create_future()
        self._attempt = 0
        self._set_state(ClientState.CONNECTING)
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
        link = self._link
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
        self._link = None
        if self._closed_by_user and self._queue:
            logger.info("client closed with %d queued messages discarded", len(self._queue))
            self._queue.clear()
            self._queued_bytes = 0
        self._set_state(ClientState.CLOSED)
        if error is not None:
            self._emit("error", error)

    async def _run(self, first: asyncio.Future[None], retry_first: bool) -> None:
        """The connection life cycle: connect, wait for the drop, back off, reconnect."""
        loop = asyncio.get_running_loop()
        failures = 0  # consecutive failed attempts, for max_attempts
        round_failures = 0  # URLs failed since one last worked, for failover
        try:
            while not self._closed_by_user:
                try:
                    link = await self._open_link()
                except _AttemptFailed as failed:
                    failures += 1
                    round_failures += 1
                    error, action = failed.error, failed.action
                    logger.info("connecting to %s failed: %r", self.url, error)
                    # Failover: a URL that just failed is tried again after the others.
                    self._url_index = (self._url_index + 1) % len(self.urls)
                    if self._closed_by_user:
                        return
                    once = not first.done() and not retry_first
                    if action is CloseAction.STOP or (once and round_failures >= len(self.urls)):
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
                        self._token_value = None
                    if round_failures % len(self.urls) == 0:  # every URL failed once more
                        await self._back_off(action)
                    continue
                failures = round_failures = 0
                if not first.done():
                    first.set_result(None)
                opened = loop.time()
                disconnect = await link.done
                if self._closed_by_user:
                    return
                if loop.time() - opened >= self.stable_after:
                    self._attempt = 0
                if disconnect.action is CloseAction.STOP:
                    error = ConnectionClosedError(disconnect.code, disconnect.reason)
                    self._give_up(first, error)
                    return
                if disconnect.action is CloseAction.REAUTH:
                    self._token_value = None
                await self._back_off(disconnect.action)
        finally:
            if not first.done():
                first.set_exception(
                    RealtimeError("the client was closed while connecting", "disconnected")
                )
            if self._state is not ClientState.CLOSED:
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

    async def _open_link(self) -> _Link:
        """Connect to the current URL and restore the session; _AttemptFailed otherwise."""
        url = self.urls[self._url_index]
        try:
            ws = await ws_connect(url, **self._connect_kwargs)
        except InvalidStatus as exc:
            # 4xx answers (bad path, refused origin, 401/403) repeat the same way;
            # 408, 429 and 5xx (a draining or full server) are worth retrying.
            retry = exc.status >= HTTPStatus.INTERNAL_SERVER_ERROR or exc.status in (
                HTTPStatus.REQUEST_TIMEOUT,
                HTTPStatus.TOO_MANY_REQUESTS,
            )
            raise _AttemptFailed(exc, CloseAction.BACKOFF if retry else CloseAction.STOP) from None
        except (HandshakeError, OSError, TimeoutError) as exc:
            raise _AttemptFailed(exc, CloseAction.BACKOFF) from None
        if self._closed_by_user:
            # close() came as the handshake finished (Python 3.11's wait_for can
            # swallow that cancellation): do not go on with a closed client.
            ws.fail(CloseCode.GOING_AWAY, "client closed")
            raise _AttemptFailed(RealtimeError("closed", "disconnected"), CloseAction.STOP)
        link = _Link(ws, url)
        self._setup = link
        try:
            await self._hello(link)
            loop = asyncio.get_running_loop()
            link.reader = loop.create_task(self._read(link))
            if self.ping_interval is not None:
                link.heartbeat = loop.create_task(self._heartbeat(link, self.ping_interval))
            await self._restore(link)
            self._flush(link)
        except (asyncio.CancelledError, _AttemptFailed):
            await self._abandon(link)
            raise
        except Exception as exc:
            action = await self._abandon(link)
            error: Exception = exc
            if isinstance(exc, _LinkLost) and link.done.done():
                disconnect = link.done.result()
                error = ConnectionClosedError(disconnect.code, disconnect.reason)
            elif not isinstance(exc, RealtimeError | TimeoutError | OSError | _LinkLost):
                logger.exception("restoring the session on %s failed", url)
            raise _AttemptFailed(error, action) from None
        finally:
            self._setup = None
        self._link = link
        self._set_state(ClientState.OPEN)
        return link

    async def _abandon(self, link: _Link) -> CloseAction:
        """End a connection whose setup failed; return the action its close code calls for."""
        ws = link.ws
        if ws.close_code is None:
            ws.fail(CloseCode.GOING_AWAY, "setup failed")
        await ws.wait_closed_within(self.open_timeout)
        if link.reader is not None:
            await asyncio.wait({link.reader})
            return link.done.result().action
        return action_for(ws.close_code or CloseCode.ABNORMAL_CLOSURE)

    async def _refused(self, link: _Link, error: RealtimeError) -> _AttemptFailed:
        """The server refused our credentials: its close code (1008: stop) says what next.

        A server that keeps the connection open gets open_timeout to close it;
        then the client stops too, since the same token would be refused again.
        """
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(link.done), self.open_timeout)
        if link.done.done():
            return _AttemptFailed(error, link.done.result().action)
        return _AttemptFailed(error, CloseAction.STOP)

    async def _hello(self, link: _Link) -> None:
        """Read the server's ``connection`` hello; a refusal raises its error."""
        ws = link.ws
        refusal: dict[str, Any] | None = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.open_timeout
        for _ in range(_MAX_FRAMES_BEFORE_HELLO):
            try:
                data = await asyncio.wait_for(ws.recv(), max(0.0, deadline - loop.time()))
            except ConnectionClosed as exc:
                error: BaseException = exc
                if refusal is not None:
                    error = _error_from(refusal)
                raise _AttemptFailed(error, action_for(exc.code)) from None
            envelope = _parse(data)
            if envelope is None:
                continue
            if envelope["type"] == "connection":
                self.connection_id = _str_or_none(envelope.get("id"))
                self.user = _str_or_none(envelope.get("user"))
                return
            if envelope["type"] == "error":
                refusal = envelope
        raise RealtimeError("the server sent no connection hello", "bad_envelope")

    async def _restore(self, link: _Link) -> None:
        """Authenticate, rejoin rooms and resubscribe channels (from their positions)."""
        if self._token is not None:
            token = await self._get_token()
            reply = await self._request(link, {"type": "auth", "token": token}, "auth")
            if reply["type"] == "error":
                raise await self._refused(link, _error_from(reply))
            self.user = _str_or_none(reply.get("user"))
        requests: list[tuple[str, str, Awaitable[dict[str, Any]]]] = []
        for room in list(self._rooms):
            join = {"type": "join", "room": room}
            requests.append(("room", room, self._request(link, join, "joined")))
        for sub in list(self._subs.values()):
            if sub.epoch is None:
                continue  # its own subscribe() request is still in flight
            subscribe: dict[str, Any] = {"type": "subscribe", "channel": sub.channel}
            subscribe["since"] = {"epoch": sub.epoch, "offset": sub.offset}
            requests.append(("channel", sub.channel, self._request(link, subscribe, "subscribed")))
        replies = await asyncio.gather(*(r[2] for r in requests), return_exceptions=True)
        for (kind, name, _), outcome in zip(requests, replies, strict=True):
            if isinstance(outcome, BaseException):
                raise outcome
            reply = outcome
            if reply["type"] == "error":
                # Refused now (e.g. no longer allowed): forget it and tell the app.
                if kind == "room":
                    self._rooms.pop(name, None)
                else:
                    self._subs.pop(name, None)
                self._emit("error", _error_from(reply))

    def _flush(self, link: _Link) -> None:
        """Send the offline queue in order; no await, so nothing can slip in between."""
        queue, ws = self._queue, link.ws
        for _ in range(len(queue)):
            text, size = queue[0]
            try:
                ws.send_nowait(text)
            except ConnectionClosed:
                raise _LinkLost() from None
            queue.popleft()
            self._queued_bytes -= size

    async def _get_token(self) -> str:
        """The cached token, or a fresh one from the token function."""
        if self._token_value is None:
            token = self._token
            value: Any = token() if callable(token) else token
            if inspect.isawaitable(value):
                value = await value
            if not isinstance(value, str) or not value:
                raise Unauthorized("the token function returned no token")
            self._token_value = value
        return self._token_value

    # ---------------------------------------------------------------- reading

    async def _read(self, link: _Link) -> None:
        """Dispatch every envelope of ``link`` until it closes."""
        try:
            while True:
                data = await link.ws.recv()
                envelope = _parse(data)
                if envelope is None:
                    self._emit("error", RealtimeError("not a v1 envelope", "bad_envelope"))
                    continue
                self._dispatch(link, envelope)
        except ConnectionClosed:
            pass
        except Exception:
            logger.exception("client reader failed on %s", link.url)
            link.ws.fail(CloseCode.INTERNAL_ERROR, "client error")
            await link.ws.wait_closed_within(self.open_timeout)
        finally:
            self._link_lost(link)

    def _dispatch(self, link: _Link, envelope: dict[str, Any]) -> None:
        kind: str = envelope["type"]
        if kind == "batch":  # opt-in server batching: each element as if on its own
            for item in envelope.get("messages", ()):
                if isinstance(item, dict) and isinstance(item.get("type"), str):
                    self._dispatch(link, item)
            return
        self._emit("message", envelope)
        if kind == "pong":
            link.pong.set()
            return
        if kind == "publish":
            self._publication(envelope)
            return
        if kind == "rpc":
            self._spawn(self._answer_rpc(link, envelope))
            return
        if kind == "subscribed":
            self._subscribed(envelope)
        ref = envelope.get("ref" if kind == "error" else "id")
        if isinstance(ref, int):
            pending = link.pending.get(ref)
            if pending is not None and (kind in pending.expect or kind == "error"):
                del link.pending[ref]
                if not pending.future.done():
                    pending.future.set_result(envelope)
                return
        if kind == "error":
            self._emit("error", _error_from(envelope))
        elif kind == "rpc_result":
            logger.debug("late or unknown rpc_result %r dropped", envelope.get("id"))
        else:
            self._emit(kind, envelope)

    def _subscribed(self, envelope: dict[str, Any]) -> None:
        """Take a channel's position; deliver recovered publications before any live one."""
        sub = self._subs.get(str(envelope.get("channel")))
        epoch, offset = envelope.get("epoch"), envelope.get("offset")
        if sub is None or not isinstance(epoch, str) or not isinstance(offset, int):
            return
        if envelope.get("recovered") is False:
            sub.epoch, sub.offset = epoch, offset
            self._emit("recovery_failed", sub.channel)
            return
        if sub.epoch != epoch:
            sub.epoch, sub.offset = epoch, offset
        for publication in envelope.get("publications") or ():
            if isinstance(publication, dict):
                self._publication(publication)
        sub.offset = max(sub.offset, offset)

    def _publication(self, envelope: dict[str, Any]) -> None:
        """Deliver a publication once: offsets at or below the last one seen are dropped."""
        sub = self._subs.get(str(envelope.get("channel")))
        if sub is None:
            return
        offset = envelope.get("offset")
        if isinstance(offset, int):
            if sub.epoch is not None and offset <= sub.offset:
                logger.debug("duplicate publication %s@%d dropped", sub.channel, offset)
                return
            sub.offset = offset
        self._invoke(sub.callback, (envelope,), f"channel {sub.channel!r}")

    def _link_lost(self, link: _Link) -> None:
        """A connection ended: fail its requests, pick the next action, tell the app."""
        if link.heartbeat is not None:
            link.heartbeat.cancel()
        for pending in link.pending.values():
            if not pending.future.done():
                pending.future.set_exception(_LinkLost())
        link.pending.clear()
        if link.dead_reason is not None:
            code, reason = int(CloseCode.ABNORMAL_CLOSURE), link.dead_reason
        else:
            code = link.ws.close_code or CloseCode.ABNORMAL_CLOSURE
            reason = link.ws.close_reason or ""
        action = CloseAction.STOP if self._closed_by_user else action_for(code)
        disconnect = Disconnect(code, reason, action)
        if self._link is link:
            self._link = None
            self._emit("close", disconnect)
            # At once, not after the back-off: send() must queue from now on.
            stop = action is CloseAction.STOP
            self._set_state(ClientState.CLOSED if stop else ClientState.RECONNECTING)
        if not link.done.done():
            link.done.set_result(disconnect)

    async def _heartbeat(self, link: _Link, interval: float) -> None:
        """Ping every ``interval``; no pong within pong_timeout: the server is dead."""
        ping = encode({"type": "ping"})
        while not link.done.done():
            await asyncio.sleep(interval)
            link.pong.clear()
            try:
                link.ws.send_nowait(ping)
            except ConnectionClosed:
                return
            try:
                await asyncio.wait_for(link.pong.wait(), self.pong_timeout)
            except TimeoutError:
                link.dead_reason = f"no pong within pong_timeout={self.pong_timeout} s"
                logger.info("%s: %s; reconnecting", link.url, link.dead_reason)
                link.ws.fail(CloseCode.GOING_AWAY, "heartbeat timeout")
                return

    async def _answer_rpc(self, link: _Link, envelope: dict[str, Any]) -> None:
        """Run a server-to-client RPC and send its ``rpc_result``."""
        call_id, method = envelope.get("id"), envelope.get("method")
        handler = self._rpcs.get(method) if isinstance(method, str) else None
        reply: dict[str, Any] = {"type": "rpc_result", "id": call_id}
        if handler is None:
            reply["error"] = {"code": "no_such_method", "message": f"no such method {method!r}"}
        else:
            try:
                result = handler(envelope.get("params"))
                if inspect.isawaitable(result):
                    result = await result
                reply["result"] = result
            except RealtimeError as exc:
                reply["error"] = {"code": exc.code, "message": str(exc)}
            except Exception:
                logger.exception("client rpc handler %r failed", method)
                reply["error"] = {"code": "handler_error", "message": "the method failed"}
        try:
            text = encode(reply)
        except (TypeError, ValueError):
            logger.exception("client rpc handler %r returned a value JSON cannot hold", method)
            error = {"code": "handler_error", "message": "the result is not JSON"}
            text = encode({"type": "rpc_result", "id": call_id, "error": error})
        with contextlib.suppress(ConnectionClosed):
            link.ws.send_nowait(text)

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
                self._listeners.setdefault(event, []).append(cb)
                return cb

            return register
        self._listeners.setdefault(event, []).append(callback)
        return callback

    def off(self, event: str, callback: Callback) -> None:
        """Stop calling ``callback`` on ``event`` (no error when it was not registered)."""
        callbacks = self._listeners.get(event)
        if callbacks and callback in callbacks:
            callbacks.remove(callback)

    def rpc(self, method: str) -> Callable[[RPCHandler], RPCHandler]:
        """Decorator: answer the server's ``rpc`` calls of ``method`` with ``handler(params)``.

        Raise a RealtimeError to answer with its code; any other exception
        answers ``handler_error``.  Unknown methods get ``no_such_method``.
        """

        def register(handler: RPCHandler) -> RPCHandler:
            self._rpcs[method] = handler
            return handler

        return register

    def _emit(self, event: str, *args: Any) -> None:
        for callback in list(self._listeners.get(event, ())):
            self._invoke(callback, args, event)

    def _invoke(self, callback: Callback, args: tuple[Any, ...], what: str) -> None:
        """Run a callback: plain ones now, async ones as a task; failures go to "error"."""
        try:
            result = callback(*args)
        except Exception as exc:
            self._callback_failed(what, exc)
            return
        if inspect.isawaitable(result):
            task = self._spawn(result)
            task.add_done_callback(lambda t: self._task_done(t, what))

    def _task_done(self, task: asyncio.Task[Any], what: str) -> None:
        if not task.cancelled() and isinstance(task.exception(), Exception):
            exc = task.exception()
            assert isinstance(exc, Exception)
            self._callback_failed(what, exc)

    def _callback_failed(self, what: str, exc: Exception) -> None:
        logger.error("callback for %s failed", what, exc_info=exc)
        if what != "error":
            self._emit("error", exc)

    def _spawn(self, awaitable: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(awaitable)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

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
        link = self._link
        if self._state is ClientState.OPEN and link is not None:
            try:
                await link.ws.send(text)
                return
            except ConnectionClosed:
                pass  # not framed: dropped before we noticed; it goes to the queue
            if self._closed_by_user:
                raise RealtimeError("the client is closed", "disconnected")
        self._enqueue(text)

    async def emit(self, type: str, **fields: Any) -> None:
        """Send ``{"type": type, **fields}`` (see :meth:`send`)."""
        await self.send({"type": type, **fields})

    async def publish(self, channel: str, payload: Any) -> None:
        """Publish ``payload`` to ``channel`` (queued while offline, like :meth:`send`)."""
        await self.send({"type": "publish", "channel": channel, "payload": payload})

    def _enqueue(self, text: str) -> None:
        size = len(text.encode("utf-8"))
        if len(self._queue) + 1 > self.offline_max_messages:
            raise OfflineQueueFull("messages", self.offline_max_messages, len(self._queue) + 1)
        if self._queued_bytes + size > self.offline_max_bytes:
            raise OfflineQueueFull("bytes", self.offline_max_bytes, self._queued_bytes + size)
        self._queue.append((text, size))
        self._queued_bytes += size

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
        if channel in self._subs:
            raise InvalidState(f"already subscribed to {channel!r}")
        sub = _Subscription(channel, callback)
        self._subs[channel] = sub
        try:
            await self._ask({"type": "subscribe", "channel": channel}, "subscribed", timeout)
        except BaseException:
            if self._subs.get(channel) is sub:
                del self._subs[channel]
            raise

        async def unsubscribe() -> None:
            if self._subs.get(channel) is not sub:
                return
            del self._subs[channel]
            link = self._link
            if self._state is ClientState.OPEN and link is not None:
                # A drop unsubscribes too: the server forgets a closed connection.
                with contextlib.suppress(RealtimeError, _LinkLost, TimeoutError):
                    await self._request(
                        link, {"type": "unsubscribe", "channel": channel}, "unsubscribed"
                    )

        return unsubscribe

    async def call(self, method: str, params: Any = None, *, timeout: float | None = None) -> Any:
        """Call ``method`` on the server and return its result.

        Raises RPCError with the server's code (``no_such_method``,
        ``handler_error``, an app's own code), RPCTimeout after ``timeout``
        (default call_timeout, waiting for a reconnect included) and RPCError
        ``disconnected`` when the connection drops before the answer.
        """
        envelope: dict[str, Any] = {"type": "rpc", "method": method}
        if params is not None:
            envelope["params"] = params
        wait = self.call_timeout if timeout is None else timeout
        try:
            reply = await self._ask(envelope, "rpc_result", wait)
        except RealtimeError as exc:
            if exc.code == "timeout":
                raise RPCTimeout(f"no answer to {method!r} within {wait} s") from None
            if isinstance(exc, RPCError):
                raise
            raise RPCError(str(exc), exc.code) from None
        error = reply.get("error")
        if error is not None:
            code = error.get("code") if isinstance(error, dict) else None
            message = error.get("message") if isinstance(error, dict) else None
            raise RPCError(str(message or "the call failed"), str(code or "handler_error"))
        return reply.get("result")

    async def _ask(
        self, envelope: dict[str, Any], expect: str, timeout: float | None
    ) -> dict[str, Any]:
        """Wait for an open connection, send a request, return its reply; errors raised."""
        wait = self.call_timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        link = await self._wait_open(deadline, wait)
        try:
            reply = await self._request(link, envelope, expect, max(0.0, deadline - loop.time()))
        except TimeoutError:
            raise RealtimeError(
                f"no answer to {envelope['type']!r} within {wait} s", "timeout"
            ) from None
        except _LinkLost:
            raise RealtimeError(
                f"the connection dropped before {envelope['type']!r} was answered", "disconnected"
            ) from None
        if reply["type"] == "error":
            raise _error_from(reply)
        return reply

    async def _wait_open(self, deadline: float, wait: float) -> _Link:
        """The open connection; waits through (re)connecting until ``deadline``."""
        loop = asyncio.get_running_loop()
        while True:
            link = self._link
            if self._state is ClientState.OPEN and link is not None:
                return link
            if self._state is ClientState.CLOSED:
                if self._runner is None:
                    raise InvalidState("call connect() first")
                raise RealtimeError("the client is closed", "disconnected")
            if self._state_changed is None or self._state_changed.done():
                self._state_changed = loop.create_future()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise RealtimeError(f"not connected within {wait} s", "timeout")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._state_changed), remaining)

    async def _request(
        self,
        link: _Link,
        envelope: dict[str, Any],
        expect: str,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Send ``envelope`` with a fresh id on ``link``; its reply (or an ``error`` for it)."""
        self._next_id += 1
        request_id = self._next_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        link.pending[request_id] = _Pending(future, frozenset({expect}))
        try:
            try:
                link.ws.send_nowait(encode({**envelope, "id": request_id}))
            except ConnectionClosed:
                raise _LinkLost() from None
            wait = self.open_timeout if timeout is None else timeout
            return await asyncio.wait_for(future, wait)
        finally:
            link.pending.pop(request_id, None)


def _check_url(url: str) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"not a ws:// or wss:// URL: {url!r}")


def _parse(data: str | bytes) -> dict[str, Any] | None:
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


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _error_from(envelope: Mapping[str, Any]) -> RealtimeError:
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
