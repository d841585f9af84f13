"""App: the real-time application: handlers, middleware, auth, limits, rooms, channels, RPC.

Speaks wire protocol v1 (docs/protocol.md) over tidewire's transport.  Each
connection has a reader (the transport handler task) that answers control
messages at once (``ping``, ``auth``, ``rpc_result``) and a worker that runs
the other messages in the order they arrived; client RPCs run concurrently
(bounded per connection), so a handler may await ``ctx.call()`` without
blocking the reader.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Generator, Mapping, Sequence
from typing import Any

from tidewire.errors import (
    BrokerError,
    ConnectionClosed,
    RateLimited,
    RealtimeError,
    Rejected,
    TokenExpired,
    Unauthorized,
)
from tidewire.protocol.close import CloseCode
from tidewire.realtime import rpc as rpc_errors
from tidewire.realtime.api import AdminAPI
from tidewire.realtime.auth import Identity, Verifier, extract_token, verify
from tidewire.realtime.brokers.base import Broker, Target
from tidewire.realtime.brokers.memory import MemoryBroker
from tidewire.realtime.channels import Publication
from tidewire.realtime.commands import BUILTIN_RPCS, COMMANDS
from tidewire.realtime.context import Context
from tidewire.realtime.flow import Policy, SlowConsumerPolicy
from tidewire.realtime.hub import Hub
from tidewire.realtime.limits import RateLimiter, RateLimits
from tidewire.realtime.metrics import HealthCheck, Metrics
from tidewire.realtime.middleware import Middleware, run_chain
from tidewire.realtime.options import AppOptions
from tidewire.realtime.session import Session
from tidewire.realtime.static import client_js
from tidewire.realtime.wire import SUBPROTOCOL, WireError, decode, encode, error_envelope, ref_of
from tidewire.transport import Router, Server, WebSocket, serve

__all__ = ["App", "Handler", "RPCHandler"]

logger = logging.getLogger("tidewire.realtime")

Handler = Callable[[Context], Awaitable[Any]]
RPCHandler = Callable[[Context, Any], Awaitable[Any]]
SessionHook = Callable[[Session], Awaitable[Any]]
RoomHook = Callable[[Session, str], Awaitable[Any]]
AuthHook = Callable[[Session, Identity], Awaitable[Any]]
#: ``(session, name, action) -> bool``; action is "join", "subscribe", "publish" or "see".
Authorizer = Callable[[Session, str, str], bool | Awaitable[bool]]

_CONTROL = frozenset({"ping", "auth", "rpc_result"})
_STOP: Any = object()


class App:
    """A real-time application.

    >>> app = App()
    >>> @app.on("chat", fields={"text": str})
    ... async def chat(ctx):
    ...     room, text = ctx.message["room"], ctx.message["text"]
    ...     await ctx.emit_room(room, "chat", user=ctx.user, text=text)

    ``auth`` is a token verifier (``HMACVerifier``, ``JWTVerifier`` or any
    callable returning an Identity); with one, every message but ``auth`` and
    ``ping`` is refused until the client authenticated (``auth_required``).
    ``admin_token`` enables the admin endpoints (``/stats``, ``/debug/...``,
    ``/api/...``; docs/operations.md), ``metrics_public`` serves ``/metrics``
    without it, and ``debug`` keeps a log of each connection's last messages.
    Other keyword arguments are :class:`AppOptions`.
    """

    def __init__(
        self,
        *,
        auth: Verifier | None = None,
        auth_required: bool | None = None,
        rate_limits: RateLimits | None = RateLimits(),  # noqa: B008 - frozen, shared safely
        broker: Broker | None = None,
        path: str = "/ws",
        clock: Callable[[], float] = time.time,
        admin_token: str | None = None,
        metrics_public: bool = False,
        debug: bool = False,
        **options: Any,
    ) -> None:
        """Configure the app; see the class docstring."""
        self.options = AppOptions.from_kwargs(options)
        if options:
            raise TypeError(f"unknown option(s): {', '.join(sorted(options))}")
        self.verifier = auth
        self.auth_required = auth is not None if auth_required is None else auth_required
        if self.auth_required and auth is None:
            raise ValueError("auth_required=True needs an auth verifier")
        self.limiter = RateLimiter(rate_limits) if rate_limits is not None else None
        self.broker: Broker = broker or MemoryBroker(
            history_size=self.options.history_size,
            history_ttl=self.options.history_ttl,
            clock=clock,
        )
        # Presence changes no local join or leave made (a dead node's members
        # expired, a repair after a Redis outage) are announced like the others.
        self.broker.on_presence_change = self._presence_changed
        self.path = path
        self.clock = clock
        self.policies: dict[tuple[str | None, str | None], SlowConsumerPolicy] = {
            (None, None): SlowConsumerPolicy(Policy(self.options.slow_consumer))
        }
        self.hub = Hub(self.policy_for, batching=self.options.batch_interval is not None)
        self.handlers: dict[str, tuple[Handler, Mapping[str, Any] | None]] = {}
        self.rpcs: dict[str, RPCHandler] = dict(BUILTIN_RPCS)
        self.middleware: list[Middleware] = []
        self.connect_hooks: list[SessionHook] = []
        self.disconnect_hooks: list[SessionHook] = []
        self.auth_hooks: list[AuthHook] = []
        self.join_hooks: list[RoomHook] = []
        self.leave_hooks: list[RoomHook] = []
        self.authorizer: Authorizer | None = None
        self.stats: Counter[str] = Counter()
        self.router = Router()
        self.router.add_websocket(path, self)
        self.router.add_http("/tidewire.js", client_js)
        self.metrics = Metrics(
            self,
            debug=debug,
            log_size=self.options.debug_log_size,
            entry_bytes=self.options.debug_entry_bytes,
        )
        self.hub.on_broadcast = self.metrics.broadcast
        self.api = AdminAPI(self, admin_token=admin_token, metrics_public=metrics_public)
        self.api.register(self.router)
        self._started = False
        self._sweeper: asyncio.Task[None] | None = None
        self._presence_dirty: set[str] = set()
        self._background: set[asyncio.Task[Any]] = set()
        self._health = HealthCheck(self.broker)

    # ----------------------------------------------------------- registration

    def on(
        self, type: str, *, fields: Mapping[str, Any] | None = None
    ) -> Callable[[Handler], Handler]:
        """Decorator: handle client messages of ``type`` with ``async def h(ctx)``.

        ``fields`` maps required field names to types (or tuples of types);
        a message that lacks one gets an ``invalid`` error.  A handler that
        returns a dict with a ``type`` has it sent to the sender as the reply.
        """
        if type in COMMANDS or type in _CONTROL or type == "rpc":
            raise ValueError(f"{type!r} is a reserved message type (docs/protocol.md)")

        def register(handler: Handler) -> Handler:
            self.handlers[type] = (handler, fields)
            return handler

        return register

    def rpc(self, method: str) -> Callable[[RPCHandler], RPCHandler]:
        """Decorator: answer client RPC ``method`` with ``async def m(ctx, params)``."""

        def register(handler: RPCHandler) -> RPCHandler:
            self.rpcs[method] = handler
            return handler

        return register

    def use(self, middleware: Middleware) -> Middleware:
        """Add ``async def mw(ctx, call_next)``; middleware runs in the order added."""
        self.middleware.append(middleware)
        return middleware

    def on_connect(self, hook: SessionHook) -> SessionHook:
        """Run ``hook(session)`` when a client connects; raising a RealtimeError refuses it."""
        self.connect_hooks.append(hook)
        return hook

    def on_disconnect(self, hook: SessionHook) -> SessionHook:
        """Run ``hook(session)`` after a client disconnected (rooms already left)."""
        self.disconnect_hooks.append(hook)
        return hook

    def on_auth(self, hook: AuthHook) -> AuthHook:
        """Run ``hook(session, identity)`` before a session first takes an identity.

        Raising Unauthorized (or any RealtimeError) refuses it: error, then close 1008.
        """
        self.auth_hooks.append(hook)
        return hook

    def on_join(self, hook: RoomHook) -> RoomHook:
        """Run ``hook(session, room)`` after a session joined a room."""
        self.join_hooks.append(hook)
        return hook

    def on_leave(self, hook: RoomHook) -> RoomHook:
        """Run ``hook(session, room)`` after a session left a room."""
        self.leave_hooks.append(hook)
        return hook

    def authorize_with(self, authorizer: Authorizer) -> Authorizer:
        """Set ``authorizer(session, name, action) -> bool`` for rooms and channels.

        ``action`` is ``join`` (a room), ``see`` (a room in rooms.list and
        presence), ``subscribe`` or ``publish`` (a channel).  False refuses
        with a ``forbidden`` error.  Without one, everything is allowed.
        """
        self.authorizer = authorizer
        return authorizer

    def slow_consumer_policy(
        self,
        policy: str,
        *,
        room: str | None = None,
        type: str | None = None,
        key: tuple[str, ...] = (),
    ) -> None:
        """Choose what happens to messages for clients that do not keep up.

        ``policy`` is ``disconnect``, ``drop`` or ``latest`` (see
        :mod:`tidewire.realtime.flow`), for messages of ``type``, in ``room``,
        or both; the most specific rule wins (type and room, then type, then
        room, then the app's ``slow_consumer`` option).  For ``latest``,
        ``key`` names the envelope fields that identify one ticker or cursor.
        """
        self.policies[(room, type)] = SlowConsumerPolicy(Policy(policy), tuple(key))

    def policy_for(self, room: str | None, type: str | None) -> SlowConsumerPolicy:
        """The slow-consumer policy for a message of ``type`` sent to ``room``."""
        policies = self.policies
        if len(policies) == 1:
            return policies[(None, None)]
        return (
            policies.get((room, type))
            or policies.get((None, type))
            or policies.get((room, None))
            or policies[(None, None)]
        )

    # ------------------------------------------------------------- fan-out API

    async def emit_room(
        self, room: str, envelope: dict[str, Any], *, exclude: str | None = None
    ) -> None:
        """Send ``envelope`` to everyone in ``room`` (``exclude``: a connection id)."""
        self.metrics.room_message(room)
        await self.broker.send(Target.ROOM, room, encode(envelope), exclude)

    async def emit_user(self, user: str, envelope: dict[str, Any]) -> None:
        """Send ``envelope`` to every connection of ``user``."""
        await self.broker.send(Target.USER, user, encode(envelope))

    async def emit_connection(self, connection_id: str, envelope: dict[str, Any]) -> None:
        """Send ``envelope`` to one connection by id."""
        await self.broker.send(Target.CONNECTION, connection_id, encode(envelope))

    async def broadcast(self, envelope: dict[str, Any], *, exclude: str | None = None) -> None:
        """Send ``envelope`` to every connection."""
        await self.broker.send(Target.ALL, "", encode(envelope), exclude)

    async def publish(
        self, channel: str, payload: Any, *, publisher: str | None = None
    ) -> Publication:
        """Publish ``payload`` to ``channel``: numbered, kept in history, delivered."""
        self.stats["publications"] += 1
        return await self.broker.publish(channel, payload, publisher=publisher, now=self.clock())

    # ------------------------------------------------------------ rooms, authz

    async def authorize(self, session: Session, name: str, action: str) -> None:
        """Raise Rejected ``forbidden`` unless the authorizer allows ``action`` on ``name``."""
        if not await self._allowed(session, name, action):
            raise Rejected(f"not allowed to {action} {name!r}", "forbidden")

    async def may_see(self, session: Session, room: str) -> bool:
        """Whether ``session`` may see ``room`` in rooms.list and presence."""
        return await self._allowed(session, room, "see")

    async def _allowed(self, session: Session, name: str, action: str) -> bool:
        if self.authorizer is None:
            return True
        result = self.authorizer(session, name, action)
        if inspect.isawaitable(result):
            result = await result
        return bool(result)

    async def join(self, session: Session, room: str, *, ref: Any = None) -> None:
        """Put ``session`` in ``room``: authorize, reply ``joined``, tell the others.

        Membership is registered with the broker first (cluster-wide presence:
        docs/protocol.md §6).  When the broker cannot be reached the join
        fails with BrokerError (``broker_unavailable``) and the session is not
        in the room, on this node or any other.  Once ``joined`` is sent the
        session is in the room; a ``userJoined`` the broker could not carry to
        the other nodes is logged, not reported to the joiner.
        """
        limit = self.options.max_members_listed
        update = None
        if room not in session.rooms:
            most = self.options.max_rooms_per_connection
            if len(session.rooms) >= most:
                raise RealtimeError(f"at most {most} rooms per connection", "limit")
            await self.authorize(session, room, "join")
            key = session.key
            update = await self.broker.presence_join(room, key, session.id, session.metadata)
            try:
                listing = await self.broker.presence_members(room, limit, meta=False)
            except BaseException:
                await self._unregister(room, session.id)
                raise
            if session.closing:
                # Disconnected meanwhile: its cleanup did not see this room.
                await self._unregister(room, session.id)
                return
            self.hub.join(session, room, key)
        else:
            listing = await self.broker.presence_members(room, limit, meta=False)
        reply: dict[str, Any] = {"type": "joined", "room": room, "count": listing.count}
        if listing.count <= limit:
            reply["members"] = listing.names
        if ref is not None:
            reply["id"] = ref
        session.send(reply)
        if update is not None and update.changed:
            await self._presence_event(
                room, "userJoined", update.member or session.key, listing.count, session.id
            )
        for hook in self.join_hooks:
            await hook(session, room)

    async def _unregister(self, room: str, conn_id: str) -> None:
        """Undo a join that did not complete; the broker repairs what this cannot."""
        try:
            await self.broker.presence_leave(room, conn_id)
        except BrokerError as exc:
            logger.warning("could not undo the join of %s to %r: %s", conn_id, room, exc)

    async def leave(self, session: Session, room: str) -> None:
        """Take ``session`` out of ``room``; the others get ``userLeft`` after its user's last.

        The session stops getting the room's messages at once.  When the
        broker cannot be reached the leave still succeeds here; the broker
        removes the stale registration once Redis answers again, and the
        ``userLeft`` (if it was the member's last connection) goes out then.
        """
        if room not in session.rooms:
            return
        entry = self.hub.rooms.get(room)
        key = entry.key_of(session) if entry is not None else session.key
        self.hub.leave(session, room)
        try:
            update = await self.broker.presence_leave(room, session.id)
        except BrokerError as exc:
            self.stats["presence_errors"] += 1
            # Expected in bulk during an outage; counted, and repaired by the broker.
            logger.debug("leave of %s from %r not registered yet: %s", session.id, room, exc)
        else:
            if update.changed:
                await self._presence_event(room, "userLeft", update.member or key, update.count)
        for hook in self.leave_hooks:
            await hook(session, room)

    async def _presence_event(
        self, room: str, kind: str, user: str, count: int, exclude: str | None = None
    ) -> None:
        """``userJoined``/``userLeft`` in small rooms; a batched ``presence`` count in big ones.

        ``count`` is the room's member count after the change, on every node.
        Per-user events in a room of N users cost O(N) each, so N joins cost
        O(N^2) deliveries: 10,000 joins would be 100 million messages.  Above
        ``presence_events_max`` users the room gets at most one
        ``{"type":"presence","room":R,"count":N}`` per ``presence_interval``.
        Like every room message, the event is at most once across nodes: one
        the broker cannot carry is logged and counted (``presence_events_lost``).
        """
        if count + (kind == "userLeft") <= self.options.presence_events_max:
            envelope = {"type": kind, "room": room, "user": user}
            try:
                await self.emit_room(room, envelope, exclude=exclude)
            except BrokerError as exc:
                self.stats["presence_events_lost"] += 1
                logger.debug("%s for %r in %r reached this node only: %s", kind, user, room, exc)
            return
        if not self._presence_dirty:
            loop = asyncio.get_running_loop()
            loop.call_later(self.options.presence_interval, self._flush_presence)
        self._presence_dirty.add(room)

    def _presence_changed(self, room: str, member: str, joined: bool, count: int) -> None:
        """The broker's listener: a change no join or leave here made (an expired node)."""
        kind = "userJoined" if joined else "userLeft"
        self._spawn(self._presence_event(room, kind, member, count))

    def _flush_presence(self) -> None:
        rooms, self._presence_dirty = self._presence_dirty, set()
        for room in rooms:
            self._spawn(self._presence_count(room))

    async def _presence_count(self, room: str) -> None:
        """Send a big room its member count on every node."""
        try:
            count = (await self.broker.presence_members(room, 0, meta=False)).count
            if count:
                await self.emit_room(room, {"type": "presence", "room": room, "count": count})
        except BrokerError as exc:
            self.stats["presence_events_lost"] += 1
            logger.debug("presence count of %r not sent: %s", room, exc)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------ health

    async def health(self, stats: dict[str, Any] | None = None) -> dict[str, Any]:
        """The ``/health`` body: the transport's ``stats`` plus the broker's probe.

        ``status`` is ``degraded`` (HTTP 503) while the broker's probe fails:
        a node whose subscription is dead must leave the load balancer
        (centrifugo#1189).  The probe is cached for HEALTH_CACHE seconds and
        shared by concurrent checks, so a flood of checks costs Redis little.
        """
        body = dict(stats or {"status": "ok"})
        report = await self._health.report()
        body["broker"] = report
        if not report["healthy"] and body.get("status") == "ok":
            body["status"] = "degraded"
        return body

    # ----------------------------------------------------------------- serving

    def serve(
        self, host: str | None = "127.0.0.1", port: int | None = 8080, **kwargs: Any
    ) -> _Serving:
        """Listen on ``host:port``; ``await`` it or use ``async with``.

        Keyword arguments go to :func:`tidewire.serve` (TLS, origins,
        transport options).  WebSocket clients connect to ``self.path``.
        """
        kwargs.setdefault("max_connections", self.options.max_connections)
        kwargs.setdefault("max_message_size", self.options.max_message_size)
        kwargs.setdefault("subprotocols", [SUBPROTOCOL])
        kwargs.setdefault("select_subprotocol", _select_subprotocol)
        kwargs.setdefault("health", self.health)
        return _Serving(self, host, port, kwargs)

    async def start(self) -> None:
        """Start the broker and the idle sweeper (idempotent; serve() calls it)."""
        if self._started:
            return
        self._started = True
        await self.broker.start(self.hub)
        if self.options.idle_timeout is not None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_idle())

    async def close(self) -> None:
        """Stop the sweeper and the broker."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self._started:
            self._started = False
            await self.broker.close()

    async def _sweep_idle(self) -> None:
        timeout = self.options.idle_timeout
        assert timeout is not None
        while True:
            await asyncio.sleep(min(timeout / 4, 30.0))
            horizon = time.monotonic() - timeout
            for session in list(self.hub.sessions.values()):
                if session.last_activity < horizon and not session.closing:
                    self.stats["idle_closed"] += 1
                    session.fail(CloseCode.IDLE, "idle")

    # ------------------------------------------------------------- connection

    async def __call__(self, ws: WebSocket) -> None:
        """The transport handler: run one client connection to the end."""
        await self.start()
        session = Session(ws, self)
        self.stats["connections"] += 1
        self.metrics.opened(session)
        if not await self._accept(session):
            # Refused before the hello: no rooms, no disconnect hooks to run.
            self.metrics.closed(session)
            if session.expiry_timer is not None:
                session.expiry_timer.cancel()
            return
        auth_timer: asyncio.TimerHandle | None = None
        worker: asyncio.Task[None] | None = None
        try:
            self.hub.add(session)
            hello: dict[str, Any] = {"type": "connection", "id": session.id, "version": 1}
            if session.user is not None:
                hello["user"] = session.user
            session.send(hello)
            session.flush()  # the hello never waits for a batch interval
            loop = asyncio.get_running_loop()
            if self.auth_required and session.identity is None:
                auth_timer = loop.call_later(
                    self.options.auth_timeout, self._auth_deadline, session
                )
            queue: asyncio.Queue[Any] = asyncio.Queue(self.options.max_pending_messages)
            worker = loop.create_task(self._work(session, queue))
            with contextlib.suppress(ConnectionClosed):
                async for data in ws:
                    session.last_activity = time.monotonic()
                    await self._receive(session, data, queue)
        finally:
            if auth_timer is not None:
                auth_timer.cancel()
            if worker is not None:
                worker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await worker
            await self._cleanup(session)

    async def _accept(self, session: Session) -> bool:
        """Header/subprotocol/query token and connect hooks; False when refused (closed)."""
        ws = session.ws
        if self.verifier is not None and ws.request is not None:
            token, _source = extract_token(ws.request)
            if token is not None:
                try:
                    identity = await verify(self.verifier, token, now=self.clock())
                    await self._run_auth_hooks(session, identity)
                except RealtimeError as exc:
                    await self._refuse(session, exc)
                    return False
                self._authenticated(session, identity)
        try:
            for hook in self.connect_hooks:
                await hook(session)
        except RealtimeError as exc:
            await self._refuse(session, exc)
            return False
        return True

    async def _refuse(self, session: Session, exc: RealtimeError) -> None:
        session.send(error_envelope(exc.code, str(exc), "connection"))
        self.stats["refused"] += 1
        await session.close(_refusal_code(exc), str(exc))

    def _authenticated(self, session: Session, identity: Identity) -> None:
        first = session.identity is None
        session.identity = identity
        if first:
            self.hub.identify(session)
        if session.expiry_timer is not None:
            session.expiry_timer.cancel()
            session.expiry_timer = None
        if identity.expires_at is not None:
            delay = max(0.0, identity.expires_at - self.clock())
            session.expiry_timer = asyncio.get_running_loop().call_later(
                delay, self._expired, session
            )

    def _expired(self, session: Session) -> None:
        self.stats["tokens_expired"] += 1
        session.fail(CloseCode.TOKEN_EXPIRED, "token expired")

    def _auth_deadline(self, session: Session) -> None:
        if session.identity is None and not session.closing:
            self.stats["auth_timeouts"] += 1
            limit = self.options.auth_timeout
            session.fail(CloseCode.AUTH_TIMEOUT, f"no auth message within {limit} s")

    async def _receive(
        self, session: Session, data: str | bytes, queue: asyncio.Queue[Any]
    ) -> None:
        """Rate-limit, decode, gate on auth, then answer or queue one client message.

        Malformed messages count against the rate limits and as strikes too, so
        a flood of garbage ends in close 1008 like any other abuse.
        """
        self.stats["messages_in"] += 1
        self.metrics.received(session, data)
        bad: WireError | None = None
        try:
            message = decode(data)
        except WireError as exc:
            bad, message = exc, {}
        kind: str = message.get("type", "")
        limiter = self.limiter
        if limiter is not None:
            retry = limiter.check(
                conn_id=session.id,
                user=session.user,
                ip=session.ip,
                msg_type=kind or None,
                now=time.monotonic(),
            )
            if retry > 0.0:
                self.stats["rate_limited"] += 1
                exc_rl = RateLimited(retry_after=retry)
                ref = bad.ref if bad is not None else ref_of(message)
                envelope = error_envelope(exc_rl.code, str(exc_rl), ref)
                envelope["retry_after"] = round(retry, 3)
                session.send(envelope)
                self._strike(session, "rate limit exceeded repeatedly")
                return
        if bad is not None:
            self._reject(session, bad.code, str(bad), bad.ref)
            self._strike(session, "too many malformed messages")
            return
        if kind == "ping":
            pong: dict[str, Any] = {"type": "pong"}
            if "id" in message:
                pong["id"] = message["id"]
            session.send(pong)
        elif kind == "auth":
            await self._auth_message(session, message)
        elif kind == "rpc_result":
            session.calls.resolve(message)
        elif self.auth_required and session.identity is None:
            self._reject(session, "unauthorized", "authenticate first", ref_of(message))
        elif kind == "rpc":
            self._start_rpc(session, message)
        else:
            await queue.put(message)

    async def _run_auth_hooks(self, session: Session, identity: Identity) -> None:
        if session.identity is None:
            for hook in self.auth_hooks:
                await hook(session, identity)

    def _strike(self, session: Session, reason: str) -> None:
        if self.limiter is not None and self.limiter.strike(session.id, time.monotonic()):
            self.stats["abuse_closed"] += 1
            session.fail(CloseCode.POLICY_VIOLATION, reason)

    def _reject(self, session: Session, code: str, text: str, ref: Any) -> None:
        self.stats["errors"] += 1
        session.send(error_envelope(code, text, ref))

    async def _auth_message(self, session: Session, message: dict[str, Any]) -> None:
        if self.verifier is None:
            self._reject(session, "unauthorized", "this server takes no tokens", ref_of(message))
            return
        try:
            identity = await verify(self.verifier, message["token"], now=self.clock())
            if session.identity is not None and identity.user != session.identity.user:
                raise Unauthorized("a connection cannot change its user")
            await self._run_auth_hooks(session, identity)
        except RealtimeError as exc:
            self.stats["auth_failures"] += 1
            session.send(error_envelope(exc.code, str(exc), ref_of(message)))
            session.fail(_refusal_code(exc), str(exc))
            return
        self._authenticated(session, identity)
        reply: dict[str, Any] = {"type": "auth", "status": "success", "user": identity.user}
        if identity.expires_at is not None:
            reply["expires_at"] = identity.expires_at
        if "id" in message:
            reply["id"] = message["id"]
        session.send(reply)

    # --------------------------------------------------------------- dispatch

    async def _work(self, session: Session, queue: asyncio.Queue[Any]) -> None:
        """Run queued messages one at a time, in arrival order."""
        while True:
            message = await queue.get()
            await self._dispatch(Context(self, session, message))

    async def _dispatch(self, ctx: Context) -> None:
        try:
            result = await run_chain(self.middleware, ctx, self._endpoint)
        except RealtimeError as exc:
            self._reject(ctx.session, exc.code, str(exc), ref_of(ctx.message))
            return
        except Exception:
            logger.exception("handler for %r failed on session %s", ctx.type, ctx.session.id)
            self._reject(ctx.session, "handler_error", "the handler failed", ref_of(ctx.message))
            return
        if isinstance(result, dict) and isinstance(result.get("type"), str):
            if "id" in ctx.message and "id" not in result:
                result = {**result, "id": ctx.message["id"]}
            try:
                text = encode(result)
            except (TypeError, ValueError):
                # Raising here would end the worker: the connection would stop answering.
                logger.exception("handler for %r returned a reply JSON cannot hold", ctx.type)
                ref = ref_of(ctx.message)
                self._reject(ctx.session, "handler_error", "the handler failed", ref)
                return
            ctx.session.send(text)

    async def _endpoint(self, ctx: Context) -> Any:
        kind = ctx.type
        command = COMMANDS.get(kind)
        if command is not None:
            return await command(ctx)
        entry = self.handlers.get(kind)
        if entry is None:
            raise RealtimeError(f"no handler for message type {kind!r}", "unknown_type")
        handler, fields = entry
        if fields:
            _check_fields(ctx.message, fields)
        return await handler(ctx)

    def _start_rpc(self, session: Session, message: dict[str, Any]) -> None:
        if session.rpcs_running >= self.options.max_concurrent_rpcs:
            limit = self.options.max_concurrent_rpcs
            session.send(
                _rpc_error(
                    message["id"], rpc_errors.TOO_MANY_CALLS, f"at most {limit} calls at once"
                )
            )
            return
        session.rpcs_running += 1
        task = asyncio.get_running_loop().create_task(self._run_rpc(session, message))
        task.add_done_callback(lambda _t: _finished_rpc(session))

    async def _run_rpc(self, session: Session, message: dict[str, Any]) -> None:
        call_id, method = message["id"], message["method"]
        self.stats["rpc_calls"] += 1
        handler = self.rpcs.get(method)
        if handler is None:
            session.send(
                _rpc_error(call_id, rpc_errors.NO_SUCH_METHOD, f"no such method {method!r}")
            )
            return
        ctx = Context(self, session, message)

        async def endpoint(c: Context) -> Any:
            return await handler(c, c.params)

        timeout = self.options.rpc_timeout
        scope = asyncio.timeout(timeout)
        try:
            async with scope:
                result = await run_chain(self.middleware, ctx, endpoint)
        except TimeoutError as exc:
            if scope.expired():
                text = f"the method took longer than {timeout} s"
                session.send(_rpc_error(call_id, "timeout", text))
            else:  # a timeout inside the method, e.g. its own ctx.call() to the client
                session.send(
                    {"type": "rpc_result", "id": call_id, "error": rpc_errors.error_body(exc)}
                )
        except Exception as exc:
            if not isinstance(exc, RealtimeError):
                logger.exception("rpc %r failed on session %s", method, session.id)
            session.send({"type": "rpc_result", "id": call_id, "error": rpc_errors.error_body(exc)})
        else:
            try:
                text = encode({"type": "rpc_result", "id": call_id, "result": result})
            except (TypeError, ValueError):
                # Raising here would leave the caller without an answer until its timeout.
                logger.exception("rpc %r returned a result JSON cannot hold", method)
                text = encode(_rpc_error(call_id, rpc_errors.HANDLER_ERROR, "the method failed"))
            session.send(text)

    async def _cleanup(self, session: Session) -> None:
        session.closing = True
        if session.expiry_timer is not None:
            session.expiry_timer.cancel()
            session.expiry_timer = None
        session.calls.fail_all("the client disconnected")
        for room in list(session.rooms):
            with contextlib.suppress(Exception):
                await self.leave(session, room)
        self.hub.remove(session)
        self.metrics.closed(session)
        if self.limiter is not None:
            self.limiter.forget(session.id)
        for hook in self.disconnect_hooks:
            try:
                await hook(session)
            except Exception:
                logger.exception("disconnect hook failed on session %s", session.id)


def _refusal_code(exc: RealtimeError) -> int:
    """4200 (get a fresh token, then reconnect) for expired credentials, else 1008 (stop)."""
    return CloseCode.TOKEN_EXPIRED if isinstance(exc, TokenExpired) else CloseCode.POLICY_VIOLATION


def _finished_rpc(session: Session) -> None:
    session.rpcs_running -= 1


def _rpc_error(call_id: Any, code: str, message: str) -> dict[str, Any]:
    return {"type": "rpc_result", "id": call_id, "error": {"code": code, "message": message}}


def _check_fields(message: dict[str, Any], fields: Mapping[str, Any]) -> None:
    for name, kind in fields.items():
        if name not in message:
            raise WireError("invalid", f"missing field {name!r}", ref_of(message))
        value = message[name]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float)):
            names = "/".join(k.__name__ for k in kind) if isinstance(kind, tuple) else kind.__name__
            raise WireError("invalid", f"field {name!r} must be {names}", ref_of(message))


def _select_subprotocol(offered: Sequence[str]) -> str | None:
    return SUBPROTOCOL if SUBPROTOCOL in offered else None


class _Serving:
    """What App.serve() returns: ``await`` it (a started Server) or ``async with`` it."""

    def __init__(
        self, app: App, host: str | None, port: int | None, kwargs: dict[str, Any]
    ) -> None:
        self.app, self.host, self.port, self.kwargs = app, host, port, kwargs
        self.server: Server | None = None

    async def _start(self) -> Server:
        await self.app.start()
        self.server = await serve(self.app.router, self.host, self.port, **self.kwargs)
        return self.server

    def __await__(self) -> Generator[Any, None, Server]:
        return self._start().__await__()

    async def __aenter__(self) -> Server:
        return await self._start()

    async def __aexit__(self, *exc: object) -> None:
        if self.server is not None:
            await self.server.shutdown(spread=0.0)
        await self.app.close()
