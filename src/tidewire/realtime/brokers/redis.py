"""The Redis broker: fan-out across nodes through pub/sub, channel history in Redis Streams.

Every node subscribes to one pub/sub channel, ``{prefix}fanout``.  Per
channel, a hash holds the ``epoch`` and the last offset (``top``) and a stream
holds the history; a Lua script numbers a publication, appends it and
PUBLISHes it in one atomic step, so every node sees publications in offset
order and a node restart loses nothing that Redis kept.  Room presence lives
in Redis too (:mod:`tidewire.realtime.brokers.redis_presence`), with a node
expiry so a dead node's members disappear.  docs/scale-out.md describes the
keys, the messages and what is (and is not) guaranteed.

Needs the ``redis`` extra (``pip install 'tidewire[redis]'``); importing this
module without it works, creating a :class:`RedisBroker` raises ImportError.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar
from urllib.parse import urlsplit

from tidewire.errors import BrokerError
from tidewire.realtime.brokers.base import Broker, Node, Target
from tidewire.realtime.brokers.redis_presence import (
    DEFAULT_PRESENCE_REFRESH,
    DEFAULT_PRESENCE_TTL,
    SCRIPTS,
    RedisPresence,
)
from tidewire.realtime.channels import Publication, Recovery, new_epoch
from tidewire.realtime.presence import PresenceUpdate, RoomPresence
from tidewire.realtime.wire import encode

try:
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import RedisError
except ImportError:  # pragma: no cover - exercised only without the extra
    _HAVE_REDIS = False
else:
    _HAVE_REDIS = True

if TYPE_CHECKING:
    from redis.asyncio.client import PubSub
    from redis.commands.core import AsyncScript

__all__ = ["RedisBroker"]

logger = logging.getLogger("tidewire.realtime.redis")

_T = TypeVar("_T")

#: Key prefix: one Redis can serve several apps (and tests) side by side.
DEFAULT_PREFIX = "tidewire:"
#: How long an idle channel keeps its epoch and last offset: 720 h, Centrifugo's
#: history meta TTL (feature-anchors §3.3).  Past it the channel starts a new epoch.
DEFAULT_META_TTL = 720 * 3600.0
#: Seconds without any pub/sub traffic before the subscriber sends PING; no answer
#: within as long again means the connection is dead (the Socket.IO Redis Streams
#: adapter: heartbeat 5 s, node timeout 10 s).
DEFAULT_KEEPALIVE = 5.0
#: Seconds a Redis command may take: loopback and LAN answers take milliseconds, so
#: 2 s means Redis is gone or stuck, and a client's publish should fail, not hang.
DEFAULT_COMMAND_TIMEOUT = 2.0
#: Seconds start() waits for the first subscription before it returns anyway
#: (reconnecting in the background: a node must come up even while Redis is down).
DEFAULT_START_TIMEOUT = 5.0
#: Command connections per node.  Redis runs commands one at a time, so more
#: connections add no throughput; concurrent publishes beyond this wait for one
#: (up to ``command_timeout``) instead of failing (redis-py's plain pool raises).
DEFAULT_MAX_CONNECTIONS = 16
#: Reconnect back-off: the first retry soon (a Redis restart takes ~100 ms), then
#: doubling with jitter up to 5 s (python-socketio: 1 -> 5 s, reset after success).
DEFAULT_RECONNECT_BASE = 0.1
DEFAULT_RECONNECT_CAP = 5.0

# Lua: the history of one channel.  KEYS[1] is the hash {epoch, top}, KEYS[2] the
# stream; entry ids are "<offset>-0", fields t (publish time), p (payload JSON) and
# u (publisher JSON).  A new epoch starts whenever the hash is missing: Redis lost
# it (restart without persistence, flush, expiry), so the history is not trusted.
_LUA_COMMON = """
local function ensure(meta, log, candidate, meta_ttl_ms)
  if redis.call('HSETNX', meta, 'epoch', candidate) == 1 then
    redis.call('HSET', meta, 'top', 0)
    redis.call('DEL', log)
  end
  if meta_ttl_ms > 0 then redis.call('PEXPIRE', meta, meta_ttl_ms) end
  local state = redis.call('HMGET', meta, 'epoch', 'top')
  return state[1], tonumber(state[2])
end

local function offset_of(id)
  return tonumber(string.match(id, '^(%d+)'))
end

local function prune(log, horizon)
  while true do
    local head = redis.call('XRANGE', log, '-', '+', 'COUNT', 16)
    if #head == 0 then return end
    for _, entry in ipairs(head) do
      if tonumber(entry[2][2]) >= horizon then
        redis.call('XTRIM', log, 'MINID', entry[1])
        return
      end
    end
    redis.call('XTRIM', log, 'MINID', (offset_of(head[#head][1]) + 1) .. '-0')
  end
end
"""

# ARGV: candidate epoch, meta ttl ms, size, ttl s ('' none), now, payload JSON,
# publisher JSON, stream ttl ms, fanout channel, message header start, text head,
# text tail.  Returns {epoch, offset}.
_PUBLISH_LUA = (
    _LUA_COMMON
    + """
local meta, log = KEYS[1], KEYS[2]
local epoch = ensure(meta, log, ARGV[1], tonumber(ARGV[2]))
local top = redis.call('HINCRBY', meta, 'top', 1)
local size = tonumber(ARGV[3])
if size > 0 then
  redis.call('XADD', log, 'MAXLEN', size, top .. '-0', 't', ARGV[5], 'p', ARGV[6], 'u', ARGV[7])
  if ARGV[4] ~= '' then prune(log, tonumber(ARGV[5]) - tonumber(ARGV[4])) end
  local log_ttl_ms = tonumber(ARGV[8])
  if log_ttl_ms > 0 then redis.call('PEXPIRE', log, log_ttl_ms) end
end
redis.call('PUBLISH', ARGV[9],
  ARGV[10] .. ',"' .. epoch .. '",' .. top .. ']\\n' .. ARGV[11] .. top .. ARGV[12])
return {epoch, top}
"""
)

# ARGV: candidate epoch, meta ttl ms, ttl s ('' none), now, epoch seen, offset seen.
# Returns {recovered 0/1, epoch, top[, entries after the offset seen]}.
_RECOVER_LUA = (
    _LUA_COMMON
    + """
local meta, log = KEYS[1], KEYS[2]
local epoch, top = ensure(meta, log, ARGV[1], tonumber(ARGV[2]))
if ARGV[3] ~= '' then prune(log, tonumber(ARGV[4]) - tonumber(ARGV[3])) end
local offset = tonumber(ARGV[6])
if ARGV[5] ~= epoch or offset > top then return {0, epoch, top} end
if offset == top then return {1, epoch, top} end
local first = redis.call('XRANGE', log, '-', '+', 'COUNT', 1)
local oldest = top + 1
if #first > 0 then oldest = offset_of(first[1][1]) end
if offset + 1 < oldest then return {0, epoch, top} end
return {1, epoch, top, redis.call('XRANGE', log, (offset + 1) .. '-0', '+')}
"""
)

# ARGV: candidate epoch, meta ttl ms.  Returns {epoch, top}.
_POSITION_LUA = (
    _LUA_COMMON
    + """
local epoch, top = ensure(KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[2]))
return {epoch, top}
"""
)


class _Stale(Exception):
    """The subscription connection stopped answering (no PONG within the keepalive)."""


class RedisBroker(Broker):
    """Fan-out, channel history and presence shared by every node connected to one Redis.

    ``url`` is a redis-py URL (``redis://[:password@]host:port/db``,
    ``rediss://`` for TLS).  ``history_size`` and ``history_ttl`` bound each
    channel's history as in :class:`MemoryBroker` (``history_ttl=None``: no
    age limit); ``meta_ttl`` is how long an idle channel keeps its epoch and
    offset (None: forever).  ``node_id`` names this node in messages and in
    ``CLIENT LIST`` (random by default; unique per node, since a node ignores
    the sends carrying its own id); ``prefix`` starts every key and the
    pub/sub channel.  ``clock`` gives the time used when the broker catches
    up by itself after a reconnect (the App passes ``now`` everywhere else):
    give it the App's clock when that is not :func:`time.time` (the App does
    this itself only for the MemoryBroker it creates).

    Presence is kept in Redis, cluster-wide: a node refreshes its own
    connections every ``presence_refresh`` seconds, and one that stops
    (killed, cut off) has its members removed ``presence_ttl`` seconds after
    its last refresh, judged by Redis's clock.

    Delivery: :meth:`send` writes to this node's receivers at once, then
    PUBLISHes for the other nodes (each node ignores its own ``send``
    messages).  :meth:`publish` reaches every node, this one included,
    through Redis, in offset order.  While Redis is unreachable both raise
    :class:`~tidewire.errors.BrokerError` (``send`` after the local delivery),
    the subscriber reconnects with back-off, and :attr:`healthy` is False.
    """

    kind: ClassVar[str] = "redis"

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        history_size: int = 100,
        history_ttl: float | None = 300.0,
        meta_ttl: float | None = DEFAULT_META_TTL,
        node_id: str | None = None,
        prefix: str = DEFAULT_PREFIX,
        keepalive: float = DEFAULT_KEEPALIVE,
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        reconnect_base: float = DEFAULT_RECONNECT_BASE,
        reconnect_cap: float = DEFAULT_RECONNECT_CAP,
        presence_ttl: float = DEFAULT_PRESENCE_TTL,
        presence_refresh: float = DEFAULT_PRESENCE_REFRESH,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Configure; nothing connects before :meth:`start`."""
        if not _HAVE_REDIS:
            raise ImportError("RedisBroker needs redis: pip install 'tidewire[redis]'")
        if history_size < 0:
            raise ValueError(f"history_size must be >= 0, got {history_size}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections}")
        for name, value in (
            ("history_ttl", history_ttl),
            ("meta_ttl", meta_ttl),
            ("keepalive", keepalive),
            ("command_timeout", command_timeout),
            ("reconnect_base", reconnect_base),
            ("reconnect_cap", reconnect_cap),
            ("presence_ttl", presence_ttl),
            ("presence_refresh", presence_refresh),
        ):
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if presence_refresh >= presence_ttl:
            raise ValueError(
                f"presence_refresh must be < presence_ttl ({presence_ttl}), got {presence_refresh}"
            )
        self.url = url
        self.history_size = history_size
        self.history_ttl = history_ttl
        self.meta_ttl = meta_ttl
        self.node_id = node_id or secrets.token_hex(6)
        self.prefix = prefix
        self.keepalive = keepalive
        self.command_timeout = command_timeout
        self.max_connections = max_connections
        self.start_timeout = start_timeout
        self.reconnect_base = reconnect_base
        self.reconnect_cap = reconnect_cap
        self.presence_ttl = presence_ttl
        self.presence_refresh = presence_refresh
        self.clock = clock
        #: The pub/sub channel every node listens on.
        self.fanout = f"{prefix}fanout"
        #: Counters: reconnects, catch_up (publications re-read after a gap),
        #: unrecoverable (channels whose subscribers were told to refetch), malformed.
        self.stats: Counter[str] = Counter()
        self._where = _redact(url)
        self._node: Node | None = None
        self._client: aioredis.Redis | None = None
        self._sub_client: aioredis.Redis | None = None
        self._scripts: dict[str, AsyncScript] = {}
        self._reader: asyncio.Task[None] | None = None
        self._ready: asyncio.Event | None = None
        self._subscribed = False
        self._closing = False
        #: channel -> (epoch, offset) last delivered here, for channels with local subscribers.
        self._positions: dict[str, tuple[str, int]] = {}
        #: channel -> the oldest position a local subscriber was given, while nothing
        #: was delivered here yet: where a catch-up after a reconnect starts.
        self._hints: dict[str, tuple[str, int]] = {}
        self._probes: dict[str, asyncio.Future[None]] = {}
        self._presence = RedisPresence(
            prefix=prefix,
            node_id=self.node_id,
            ttl=presence_ttl,
            refresh=presence_refresh,
            timeout=command_timeout,
            run=self._run_script,
            notify=self._presence_changed,
        )

    def __repr__(self) -> str:
        state = "up" if self._subscribed else "down"
        return f"<RedisBroker {self._where} node={self.node_id} {state}>"

    # ---------------------------------------------------------------- keys

    def meta_key(self, channel: str) -> str:
        """The hash holding ``channel``'s ``epoch`` and ``top`` (last offset)."""
        return f"{self.prefix}ch:{{{channel}}}:meta"

    def log_key(self, channel: str) -> str:
        """The stream holding ``channel``'s history."""
        return f"{self.prefix}ch:{{{channel}}}:log"

    def presence_key(self, room: str, part: str) -> str:
        """``room``'s presence ``members`` or ``conns`` hash, or ``on:<node>`` set."""
        return f"{self.prefix}presence:{{{room}}}:{part}"

    # ----------------------------------------------------------- lifecycle

    async def start(self, node: Node) -> None:
        """Connect, subscribe and deliver to ``node``; waits up to ``start_timeout`` for Redis.

        When Redis cannot be reached in time, start() logs a warning and
        returns: the subscriber keeps retrying, :attr:`healthy` stays False
        and every send/publish raises BrokerError until Redis answers.
        """
        if self._reader is not None:
            raise RuntimeError("RedisBroker already started")
        self._node = node
        self._closing = False
        options: dict[str, Any] = {
            "decode_responses": True,
            "socket_timeout": self.command_timeout,
            "socket_connect_timeout": self.command_timeout,
            # No silent retries: a failure must reach the caller (BrokerError) or
            # the subscriber loop (reconnect, catch up), never be papered over.
            "retry": Retry(NoBackoff(), 0),
            "client_name": f"tidewire-{self.node_id}",
        }
        pool = aioredis.BlockingConnectionPool.from_url(
            self.url,
            max_connections=self.max_connections,
            timeout=self.command_timeout,
            **options,
        )
        self._client = aioredis.Redis.from_pool(pool)
        self._sub_client = aioredis.Redis.from_url(self.url, **options)
        self._scripts = {
            name: self._client.register_script(source)
            for name, source in (
                ("publish", _PUBLISH_LUA),
                ("recover", _RECOVER_LUA),
                ("position", _POSITION_LUA),
                *SCRIPTS.items(),
            )
        }
        self._ready = ready = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(
            self._run(), name=f"tidewire-redis-{self.node_id}"
        )
        self._presence.start()
        try:
            await asyncio.wait_for(ready.wait(), self.start_timeout)
        except TimeoutError:
            logger.warning(
                "Redis at %s not reachable within %s s; retrying in the background",
                self._where,
                self.start_timeout,
            )

    async def close(self) -> None:
        """Stop the subscriber and close the connections (history stays in Redis)."""
        await self._presence.stop()
        if self._subscribed:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.command_timeout):
                    await self._presence.retire()
        self._closing = True
        reader, self._reader = self._reader, None
        if reader is not None:
            # redis-py writes through asyncio.wait_for, which on Python 3.11 can
            # swallow a cancellation (gh-86296): cancel until the task has ended.
            while not reader.done():
                reader.cancel()
                await asyncio.wait({reader}, timeout=0.1)
            if not reader.cancelled() and reader.exception() is not None:
                logger.error("Redis subscriber ended with %r", reader.exception())
        self._subscribed = False
        self._node = None
        self._positions.clear()
        self._hints.clear()
        for future in self._probes.values():
            future.cancel()
        self._probes.clear()
        for client in (self._client, self._sub_client):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.aclose()
        self._client = self._sub_client = None

    @property
    def healthy(self) -> bool:
        """Whether this node's subscription is up (deliveries from other nodes arrive)."""
        return self._subscribed

    async def probe(self, timeout: float = 1.0) -> bool:
        """PUBLISH a probe and wait up to ``timeout`` s for this node's subscriber to get it.

        Proves the whole path (command connection, Redis, subscription) for
        ``/health``; False when any part is down or slow.
        """
        client = self._client
        if client is None or not self._subscribed:
            return False
        token = secrets.token_hex(8)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._probes[token] = future
        message = _header("?", self.node_id, token) + "\n"
        try:
            async with asyncio.timeout(timeout):
                await client.publish(self.fanout, message)
                await future
        except (TimeoutError, RedisError, OSError):
            return False
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # our caller is cancelled, not just the probe (close() ends probes)
            return False
        finally:
            self._probes.pop(token, None)
        return True

    # ------------------------------------------------------------ delivery

    async def send(self, target: Target, name: str, text: str, exclude: str | None = None) -> None:
        """Deliver to this node's receivers at once, then PUBLISH for the other nodes."""
        node = self._node
        if node is not None:
            node.deliver(target, name, text, exclude)
            if target is Target.CONNECTION and node.receivers(target, name):
                return  # connection ids are unique across nodes: it is here, nowhere else
        message = _header("s", self.node_id, target.value, name, exclude) + "\n" + text
        client = self._require(f"send to {target.value} {name!r}")
        await self._guard(f"send to {target.value} {name!r}", client.publish(self.fanout, message))

    async def publish(
        self, channel: str, payload: Any, *, publisher: str | None, now: float
    ) -> Publication:
        """Number, store and PUBLISH atomically (one Lua script); every node delivers it."""
        envelope = Publication(channel, 0, payload, now, publisher).envelope()
        del envelope["offset"]
        # The publish envelope ends with its offset, known only inside the script.
        head = encode(envelope)[:-1] + ',"offset":'
        payload_json = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
        ttl = self.history_ttl
        args: list[str | int | float] = [
            new_epoch(),
            _ms(self.meta_ttl),
            self.history_size,
            "" if ttl is None else repr(float(ttl)),
            repr(float(now)),
            payload_json,
            json.dumps(publisher),
            0 if ttl is None else _ms(ttl) + 1000,
            self.fanout,
            _header("p", self.node_id, channel)[:-1],
            head,
            "}",
        ]
        what = f"publish to {channel!r}"
        script = self._script("publish", what)
        keys = [self.meta_key(channel), self.log_key(channel)]
        epoch, offset = await self._guard(what, script(keys=keys, args=args))
        return Publication(channel, int(offset), payload, now, publisher)

    async def recover(self, channel: str, epoch: str, offset: int, now: float) -> Recovery:
        """Read what ``(epoch, offset)`` missed from the channel's stream."""
        what = f"recover {channel!r}"
        script = self._script("recover", what)
        ttl = self.history_ttl
        args: list[str | int] = [
            new_epoch(),
            _ms(self.meta_ttl),
            "" if ttl is None else repr(float(ttl)),
            repr(float(now)),
            epoch,
            offset,
        ]
        keys = [self.meta_key(channel), self.log_key(channel)]
        reply = await self._guard(what, script(keys=keys, args=args))
        recovered, current, top = bool(reply[0]), str(reply[1]), int(reply[2])
        self._seen(channel, current, top)
        entries = reply[3] if len(reply) > 3 else []
        pubs = tuple(_publication(channel, entry) for entry in entries)
        return Recovery(recovered, current, top, pubs)

    async def position(self, channel: str, now: float) -> tuple[str, int]:
        """The channel's ``(epoch, top)``, starting an epoch for a channel Redis does not know."""
        what = f"read the position of {channel!r}"
        script = self._script("position", what)
        keys = [self.meta_key(channel), self.log_key(channel)]
        args: list[str | int] = [new_epoch(), _ms(self.meta_ttl)]
        epoch, top = await self._guard(what, script(keys=keys, args=args))
        self._seen(channel, str(epoch), int(top))
        return str(epoch), int(top)

    # ------------------------------------------------------------ presence

    async def presence_join(
        self, room: str, member: str, conn_id: str, meta: Mapping[str, Any]
    ) -> PresenceUpdate:
        """Register the connection in Redis: one script decides "first" atomically."""
        return await self._presence.join(room, member, conn_id, meta)

    async def presence_leave(self, room: str, conn_id: str) -> PresenceUpdate:
        """Remove the connection: one script decides "last"; repaired later if it fails."""
        return await self._presence.leave(room, conn_id)

    async def presence_members(
        self, room: str, limit: int | None = None, *, meta: bool = True
    ) -> RoomPresence:
        """The room's members on every live node (dead nodes' expired entries swept first)."""
        return await self._presence.members(room, limit, meta)

    async def presence_rooms(self) -> list[tuple[str, int]]:
        """Rooms with members on any live node, with member counts."""
        return await self._presence.rooms()

    async def refresh_presence(self) -> None:
        """Push this node's presence expiry, sweep dead nodes and repair, now.

        The background loop does the same every ``presence_refresh`` seconds.
        """
        await self._presence.tick()

    def _presence_changed(self, room: str, member: str, joined: bool, count: int) -> None:
        listener = self.on_presence_change
        if listener is None:
            return
        try:
            listener(room, member, joined, count)
        except Exception:
            logger.exception("presence listener failed for room %r", room)

    async def _run_script(self, name: str, what: str, args: Sequence[str | int]) -> Any:
        script = self._script(name, what)
        return await self._guard(what, script(keys=[], args=list(args)))

    # ------------------------------------------------------------- helpers

    def _require(self, what: str) -> aioredis.Redis:
        client = self._client
        if client is None:
            raise BrokerError(f"cannot {what}: the Redis broker is not started")
        return client

    def _script(self, name: str, what: str) -> AsyncScript:
        self._require(what)
        return self._scripts[name]

    async def _guard(self, what: str, call: Awaitable[_T]) -> _T:
        """Await a Redis call; a Redis or socket failure becomes BrokerError."""
        try:
            return await call
        except (RedisError, OSError, TimeoutError) as exc:
            logger.debug("%s failed on Redis at %s: %r", what, self._where, exc)
            raise BrokerError(
                f"cannot {what}: Redis is unavailable ({type(exc).__name__}); try again later"
            ) from exc

    def _seen(self, channel: str, epoch: str, top: int) -> None:
        """Note a position a local subscriber was given, for a catch-up after a reconnect.

        Not a delivered position: publications at or below ``top`` may still be
        on their way through the subscription, and other local subscribers,
        given older positions, need them.
        """
        if channel in self._positions:
            return
        hint = self._hints.get(channel)
        if hint is None or hint[0] != epoch or top < hint[1]:
            self._hints[channel] = (epoch, top)

    # ---------------------------------------------------------- subscriber

    async def _run(self) -> None:
        """Subscribe, catch up, listen; on any failure reconnect with back-off. Never raises."""
        attempt = 0
        while not self._closing:
            pubsub: PubSub | None = None
            try:
                assert self._sub_client is not None
                pubsub = self._sub_client.pubsub()
                await pubsub.subscribe(self.fanout)
                await self._confirm(pubsub)
                await self._resync()
                if attempt:
                    self.stats["reconnects"] += 1
                    logger.info("Redis at %s: subscription restored", self._where)
                self._subscribed = True
                if attempt:
                    self._presence.wake()  # Redis may have restarted empty: re-register
                attempt = 0
                if self._ready is not None:
                    self._ready.set()
                await self._listen(pubsub)
            except asyncio.CancelledError:
                self._subscribed = False
                raise
            except Exception as exc:
                if self._closing:
                    return
                why = f"{type(exc).__name__}: {exc}"
                if self._subscribed or attempt == 0:
                    logger.warning("Redis at %s: subscription down (%s)", self._where, why)
                else:
                    logger.debug("Redis at %s: reconnect failed (%s)", self._where, why)
                self._subscribed = False
                # Pooled command connections died with the server: drop them so the
                # next command opens a fresh one instead of failing on a stale one.
                if self._client is not None:
                    with contextlib.suppress(Exception):
                        await self._client.connection_pool.disconnect()
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(self._backoff(attempt))
            attempt += 1

    def _backoff(self, attempt: int) -> float:
        """Half fixed, half random ("equal jitter"): spread out, yet never a hot loop."""
        delay = min(self.reconnect_cap, self.reconnect_base * 2.0 ** min(attempt, 32))
        return delay / 2 + random.uniform(0, delay / 2)

    async def _confirm(self, pubsub: PubSub) -> None:
        """Wait for SUBSCRIBE's confirmation: from then on no publication can slip by."""
        async with asyncio.timeout(self.command_timeout):
            while True:
                response = await pubsub.parse_response(block=True)
                if isinstance(response, list) and response and response[0] == "subscribe":
                    return

    async def _listen(self, pubsub: PubSub) -> None:
        """Handle messages until the connection fails or stops answering PING."""
        pinged = False
        while not self._closing:
            response = await pubsub.parse_response(block=False, timeout=self.keepalive)
            if response is None:
                if pinged:
                    raise _Stale(f"no PONG within {self.keepalive} s")
                self._forget_unfollowed()
                await pubsub.ping()
                pinged = True
                continue
            pinged = False
            if isinstance(response, list) and len(response) == 3 and response[0] == "message":
                await self._handle(str(response[2]))

    async def _handle(self, data: str) -> None:
        """One fan-out message: ``<JSON header>\\n<encoded envelope>``."""
        try:
            message = _decode(data)
        except (ValueError, TypeError, IndexError) as exc:
            self.stats["malformed"] += 1
            logger.warning("malformed fan-out message dropped (%s): %.80r", exc, data)
            return
        node = self._node
        if isinstance(message, _Probe):
            future = self._probes.get(message.token) if message.origin == self.node_id else None
            if future is not None and not future.done():
                future.set_result(None)
        elif node is None:
            return
        elif isinstance(message, _Send):
            if message.origin != self.node_id:
                _deliver(node, message.target, message.name, message.text, message.exclude)
        else:
            await self._publication(node, message)

    async def _publication(self, node: Node, message: _Pub) -> None:
        """Deliver a live publication in order, once; fill a gap from the stream first."""
        channel, epoch, offset = message.channel, message.epoch, message.offset
        if not node.receivers(Target.CHANNEL, channel):
            self._positions.pop(channel, None)
            self._hints.pop(channel, None)
            return
        self._hints.pop(channel, None)
        last = self._positions.get(channel)
        if last is not None and (last[0] != epoch or offset > last[1] + 1):
            await self._catch_up(node, channel, last)
            last = self._positions.get(channel)
        if last is not None and last[0] == epoch and offset <= last[1]:
            return  # delivered already, by a catch-up
        self._positions[channel] = (epoch, offset)
        _deliver(node, Target.CHANNEL, channel, message.text, None)

    def _forget_unfollowed(self) -> None:
        """Drop the positions of channels nobody here follows any more (when idle)."""
        node = self._node
        if node is None:
            return
        for table in (self._positions, self._hints):
            for channel in [c for c in table if not node.receivers(Target.CHANNEL, c)]:
                del table[channel]

    async def _resync(self) -> None:
        """After (re)subscribing: deliver what local subscribers missed while we were away."""
        node = self._node
        if node is None:
            return
        starts = {**self._hints, **self._positions}
        for channel, last in starts.items():
            if node.receivers(Target.CHANNEL, channel):
                await self._catch_up(node, channel, last)
            else:
                self._positions.pop(channel, None)
                self._hints.pop(channel, None)

    async def _catch_up(self, node: Node, channel: str, last: tuple[str, int]) -> None:
        """Deliver the publications after ``last`` from history, or tell subscribers to refetch.

        A lost history (new epoch, or a gap older than the history keeps)
        reaches the subscribers as an unsolicited ``subscribed`` with
        ``recovered: false`` and the new position (docs/protocol.md §7: a
        ``subscribed`` with another epoch means "subscribe again with since").
        """
        recovery = await self.recover(channel, last[0], last[1], self.clock())
        if recovery.recovered:
            for pub in recovery.publications:
                self.stats["catch_up"] += 1
                _deliver(node, Target.CHANNEL, channel, encode(pub.envelope()), None)
        else:
            self.stats["unrecoverable"] += 1
            notice = {
                "type": "subscribed",
                "channel": channel,
                "epoch": recovery.epoch,
                "offset": recovery.offset,
                "recovered": False,
                "publications": [],
            }
            _deliver(node, Target.CHANNEL, channel, encode(notice), None)
        self._positions[channel] = (recovery.epoch, recovery.offset)
        self._hints.pop(channel, None)


@dataclass(frozen=True, slots=True)
class _Send:
    """A ``send`` from node ``origin``: deliver ``text`` to ``target``/``name``."""

    origin: str
    target: Target
    name: str
    exclude: str | None
    text: str


@dataclass(frozen=True, slots=True)
class _Pub:
    """A channel publication: ``text`` is its ``publish`` envelope."""

    channel: str
    epoch: str
    offset: int
    text: str


@dataclass(frozen=True, slots=True)
class _Probe:
    """A health probe; only the node that sent it looks at it."""

    origin: str
    token: str


def _decode(data: str) -> _Send | _Pub | _Probe:
    """Split a fan-out message: ``["s",origin,target,name,exclude]``, ``["p",origin,
    channel,epoch,offset]`` or ``["?",origin,token]``, a newline, then the envelope text.
    """
    header, _, text = data.partition("\n")
    fields = json.loads(header)
    if not isinstance(fields, list) or len(fields) < 3:
        raise ValueError("the header is not a JSON array of 3 or more fields")
    kind, origin = fields[0], str(fields[1])
    if kind == "s":
        exclude = fields[4]
        if exclude is not None and not isinstance(exclude, str):
            raise TypeError(f"exclude must be a string or null, not {exclude!r}")
        return _Send(origin, Target(fields[2]), str(fields[3]), exclude, text)
    if kind == "p":
        offset = fields[4]
        if not isinstance(offset, int):
            raise TypeError(f"offset must be an integer, not {offset!r}")
        return _Pub(str(fields[2]), str(fields[3]), offset, text)
    if kind == "?":
        return _Probe(origin, str(fields[2]))
    raise ValueError(f"unknown message kind {kind!r}")


def _deliver(node: Node, target: Target, name: str, text: str, exclude: str | None) -> None:
    """Call the node; a bug in it is logged, never allowed to end the subscriber."""
    try:
        node.deliver(target, name, text, exclude)
    except Exception:
        logger.exception("delivery to %s %r failed", target.value, name)


def _header(*fields: str | None) -> str:
    """The compact JSON array that starts every fan-out message."""
    return json.dumps(list(fields), ensure_ascii=False, separators=(",", ":"))


def _publication(channel: str, entry: Any) -> Publication:
    """A stream entry ``[id, [t, time, p, payload, u, publisher]]`` as a Publication."""
    entry_id, flat = entry
    fields = dict(zip(flat[::2], flat[1::2], strict=True))
    return Publication(
        channel,
        int(str(entry_id).split("-", 1)[0]),
        json.loads(fields["p"]),
        float(fields["t"]),
        json.loads(fields["u"]),
    )


def _ms(seconds: float | None) -> int:
    """Seconds as whole milliseconds for PEXPIRE (0: no expiry)."""
    return 0 if seconds is None else max(1, int(seconds * 1000))


def _redact(url: str) -> str:
    """``url`` without credentials, for logs."""
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return parts._replace(netloc=f"***@{host}{port}").geturl()
