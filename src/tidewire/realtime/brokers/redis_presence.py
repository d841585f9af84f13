"""Presence in Redis: which member is in which room through which connection, on any node.

Keys (``P`` is the broker's prefix; docs/scale-out.md has the table):

* ``Ppresence:{R}:members``: hash member -> its number of connections in room R
  (``HLEN`` is the member count);
* ``Ppresence:{R}:conns``: hash connection id -> JSON ``[member, node, meta]``;
* ``Ppresence:{R}:on:<node>``: set of the connection ids node holds in R;
* ``Ppresence:rooms``: hash room -> member count, for ``rooms.list``;
* ``Pnode:<node>:rooms``: set of the rooms where node holds connections;
* ``Pnodes``: sorted set node -> expiry (milliseconds, Redis's clock).

Every script first removes connections of nodes whose expiry passed (the
*sweep*, SWEEP_BATCH at most per script), so a reader does not see a member of
a dead node past its expiry, and the first/last decisions are made in the same
atomic step.
Each node pushes its own expiry ``presence_ttl`` ahead every
``presence_refresh`` seconds.  Time is Redis's (``TIME``), so node clocks do
not matter.  Scripts name keys they compute (a sweep reaches rooms it cannot
know in advance), so presence needs one Redis (or a primary), not Redis Cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tidewire.errors import BrokerError
from tidewire.realtime.presence import Member, PresenceUpdate, RoomPresence, merge

__all__ = [
    "DEFAULT_PRESENCE_REFRESH",
    "DEFAULT_PRESENCE_TTL",
    "SCRIPTS",
    "SWEEP_BATCH",
    "RedisPresence",
]

logger = logging.getLogger("tidewire.realtime.redis")

#: Seconds a node's presence entries outlive its last refresh: past it a node that
#: died without leaving (SIGKILL, power loss, partition) has its members removed.
#: Socket.IO's Redis adapters time nodes out after 10-60 s; 30 s tolerates a
#: Redis failover or a long GC pause without flapping presence.
DEFAULT_PRESENCE_TTL = 30.0
#: Seconds between a node's refreshes: a third of the TTL, so two refreshes can
#: be lost before a live node's members expire.
DEFAULT_PRESENCE_REFRESH = 10.0

#: Connections of dead nodes one script removes at most (about 16 ms of Redis time,
#: measured): a dead node that held 100,000 connections is swept over 100 scripts,
#: never blocking Redis for the 1.6 s one script would take.
SWEEP_BATCH = 1000

#: Calls a named script: ``run(name, what, args)``; failures raise BrokerError.
Runner = Callable[[str, str, Sequence[str | int]], Awaitable[Any]]
#: ``notify(room, member, joined, count)``: a change no local join or leave made.
Notifier = Callable[[str, str, bool, int], None]

_COMMON = """
local P = ARGV[1]

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function base(room) return P .. 'presence:{' .. room .. '}:' end
local function node_rooms(node) return P .. 'node:' .. node .. ':rooms' end

local function recount(room)
  local n = redis.call('HLEN', base(room) .. 'members')
  if n == 0 then
    redis.call('HDEL', P .. 'presence:rooms', room)
  else
    redis.call('HSET', P .. 'presence:rooms', room, n)
  end
  return n
end

local function event(events, room, member, joined, count)
  events[#events + 1] = room
  events[#events + 1] = member
  events[#events + 1] = joined
  events[#events + 1] = count
end

-- Remove a connection; the member when it was the member's last in the room.
local function drop(room, conn, node)
  local b = base(room)
  local entry = redis.call('HGET', b .. 'conns', conn)
  local member = false
  if entry then
    local info = cjson.decode(entry)
    node = info[2]
    redis.call('HDEL', b .. 'conns', conn)
    if redis.call('HINCRBY', b .. 'members', info[1], -1) <= 0 then
      redis.call('HDEL', b .. 'members', info[1])
      member = info[1]
    end
  end
  if node then
    redis.call('SREM', b .. 'on:' .. node, conn)
    if redis.call('EXISTS', b .. 'on:' .. node) == 0 then
      redis.call('SREM', node_rooms(node), room)
    end
  end
  return member
end

-- Add a connection; the member when it is the member's first in the room.
local function add(room, conn, member, entry, node)
  local b = base(room)
  redis.call('HSET', b .. 'conns', conn, entry)
  redis.call('SADD', b .. 'on:' .. node, conn)
  redis.call('SADD', node_rooms(node), room)
  return redis.call('HINCRBY', b .. 'members', member, 1) == 1
end

-- Remove the connections of nodes whose expiry passed, at most SWEEP_BATCH of
-- them; returns the events and 1 when some may remain (the caller sweeps again).
local function sweep(now)
  local events, budget = {}, @SWEEP_BATCH@
  local dead = redis.call('ZRANGEBYSCORE', P .. 'nodes', '-inf', '(' .. now)
  for _, node in ipairs(dead) do
    local rooms = node_rooms(node)
    for _, room in ipairs(redis.call('SMEMBERS', rooms)) do
      local on = base(room) .. 'on:' .. node
      local conns = redis.call('SPOP', on, budget)
      for _, conn in ipairs(conns) do
        local member = drop(room, conn, node)
        local n = recount(room)
        if member then event(events, room, member, 0, n) end
      end
      budget = budget - #conns
      if redis.call('EXISTS', on) == 0 then redis.call('SREM', rooms, room) end
      if budget <= 0 then return events, 1 end
    end
    if redis.call('EXISTS', rooms) == 0 then redis.call('ZREM', P .. 'nodes', node) end
  end
  return events, 0
end

-- Push the node's expiry; 1 when it was not alive (new, expired, swept, or Redis lost it).
local function beat(node, now, ttl)
  local score = redis.call('ZSCORE', P .. 'nodes', node)
  redis.call('ZADD', P .. 'nodes', now + ttl, node)
  if score and tonumber(score) >= now then return 0 end
  return 1
end
"""

# ARGV: prefix, ttl ms, node, room, member, conn, entry.
# Returns {first, count, member, lost, events}.
_JOIN = (
    _COMMON
    + """
local ttl, node, room, member, conn, entry =
  tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local now = now_ms()
local lost = beat(node, now, ttl)
local events = sweep(now)
local first = 0
local old = redis.call('HGET', base(room) .. 'conns', conn)
if not old then
  if add(room, conn, member, entry, node) then first = 1 end
elseif cjson.decode(old)[1] == member then
  redis.call('HSET', base(room) .. 'conns', conn, entry)
else
  member = cjson.decode(old)[1]
end
return {first, recount(room), member, lost, events}
"""
)

# ARGV: prefix, ttl ms, node, room, conn.  Returns {last, count, member or '', lost, events}.
_LEAVE = (
    _COMMON
    + """
local ttl, node, room, conn = tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]
local now = now_ms()
local lost = beat(node, now, ttl)
local events = sweep(now)
local old = redis.call('HGET', base(room) .. 'conns', conn)
local member, last = '', 0
if old then member = cjson.decode(old)[1] end
if drop(room, conn, node) then last = 1 end
return {last, recount(room), member, lost, events}
"""
)

# ARGV: prefix, room, limit (-1: no limit), with metadata ('1' or '0').
# Returns {count, connections, events, entries}: the connections' entries with
# metadata, else the members hash flattened (member, connections, ...).
_MEMBERS = (
    _COMMON
    + """
local events = sweep(now_ms())
local b = base(ARGV[2])
local count = redis.call('HLEN', b .. 'members')
local conns = redis.call('HLEN', b .. 'conns')
local limit = tonumber(ARGV[3])
if limit >= 0 and count > limit then return {count, conns, events, {}} end
if ARGV[4] == '1' then return {count, conns, events, redis.call('HVALS', b .. 'conns')} end
return {count, conns, events, redis.call('HGETALL', b .. 'members')}
"""
)

# ARGV: prefix.  Returns {events, [room, count, ...]}.
_ROOMS = (
    _COMMON
    + """
local events = sweep(now_ms())
return {events, redis.call('HGETALL', P .. 'presence:rooms')}
"""
)

# ARGV: prefix, ttl ms, node, list rooms ('1' or '0').
# Returns {lost, events, the node's rooms when lost or asked, more to sweep}.
_BEAT = (
    _COMMON
    + """
local node = ARGV[3]
local now = now_ms()
local lost = beat(node, now, tonumber(ARGV[2]))
local events, more = sweep(now)
local rooms = {}
if lost == 1 or ARGV[4] == '1' then rooms = redis.call('SMEMBERS', node_rooms(node)) end
return {lost, events, rooms, more}
"""
)

# ARGV: prefix, ttl ms, node, room, then conn, member, entry for each connection the
# node holds in the room.  Makes Redis agree: removes the node's other connections
# there, adds missing ones, refreshes metadata.  Returns {lost, events}.
_HEAL = (
    _COMMON
    + """
local ttl, node, room = tonumber(ARGV[2]), ARGV[3], ARGV[4]
local now = now_ms()
local lost = beat(node, now, ttl)
local events = sweep(now)
local b = base(room)
local on = b .. 'on:' .. node
local want = {}
for i = 5, #ARGV, 3 do want[ARGV[i]] = true end
for _, conn in ipairs(redis.call('SMEMBERS', on)) do
  if not want[conn] then
    local member = drop(room, conn, node)
    local n = recount(room)
    if member then event(events, room, member, 0, n) end
  end
end
for i = 5, #ARGV, 3 do
  local conn, member, entry = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local old = redis.call('HGET', b .. 'conns', conn)
  if not old then
    if add(room, conn, member, entry, node) then event(events, room, member, 1, recount(room)) end
  elseif cjson.decode(old)[1] == member then
    redis.call('HSET', b .. 'conns', conn, entry)
    redis.call('SADD', on, conn)
  end
end
recount(room)
if redis.call('EXISTS', on) == 0 then redis.call('SREM', node_rooms(node), room) end
return {lost, events}
"""
)

# ARGV: prefix, node.  The node is closing: expire it now; the next sweep (any
# node's) removes what it still holds and announces it.
_RETIRE = """
local P = ARGV[1]
if redis.call('ZSCORE', P .. 'nodes', ARGV[2]) then
  redis.call('ZADD', P .. 'nodes', 0, ARGV[2])
end
return 1
"""

#: The presence scripts by name, registered by RedisBroker.start().
SCRIPTS: dict[str, str] = {
    name: source.replace("@SWEEP_BATCH@", str(SWEEP_BATCH))
    for name, source in {
        "presence_join": _JOIN,
        "presence_leave": _LEAVE,
        "presence_members": _MEMBERS,
        "presence_rooms": _ROOMS,
        "presence_beat": _BEAT,
        "presence_heal": _HEAL,
        "presence_retire": _RETIRE,
    }.items()
}


@dataclass
class _RoomLock:
    """Serializes this node's presence calls for one room (see RedisPresence)."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class RedisPresence:
    """This node's side of the presence registry.

    The node remembers what it registered (room -> connection -> member and
    entry), so Redis can be made to agree again whenever it may not: after a
    call that failed or was cancelled (the script may or may not have run),
    after Redis lost the data, or after other nodes took this node for dead.
    A node's calls for one room run one at a time, so a repair never races a
    join or leave of the same room on the same node.
    """

    def __init__(
        self,
        *,
        prefix: str,
        node_id: str,
        ttl: float,
        refresh: float,
        timeout: float,
        run: Runner,
        notify: Notifier,
    ) -> None:
        """Nothing runs before :meth:`start`; ``timeout`` bounds waiting for a room's turn."""
        self.prefix = prefix
        self.node_id = node_id
        self.ttl = ttl
        self.refresh = refresh
        self.timeout = timeout
        self._run = run
        self._notify = notify
        self._ttl_ms = max(1, int(ttl * 1000))
        #: room -> connection id -> (member, entry JSON): what this node holds.
        self.local: dict[str, dict[str, tuple[str, str]]] = {}
        #: Rooms where Redis may disagree with :attr:`local`.
        self.dirty: set[str] = set()
        self._heal_all = False
        self._locks: dict[str, _RoomLock] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.registered = False

    # ----------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Start the refresh loop (its first round runs at once)."""
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(
            self._loop(), name=f"tidewire-presence-{self.node_id}"
        )

    def wake(self) -> None:
        """Refresh now (the subscription came back: Redis may have restarted empty)."""
        self._wake.set()

    async def stop(self) -> None:
        """Stop the refresh loop."""
        task, self._task = self._task, None
        if task is not None:
            # As RedisBroker.close(): on Python 3.11 redis-py can swallow a cancellation.
            while not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=0.1)

    async def retire(self) -> None:
        """Mark this node expired now: the others remove and announce what it still holds."""
        if self.registered:
            await self._run("presence_retire", "retire the node", [self.prefix, self.node_id])

    # ------------------------------------------------------------- calls

    async def join(
        self, room: str, member: str, conn_id: str, meta: Mapping[str, Any]
    ) -> PresenceUpdate:
        """Register a connection; see Broker.presence_join."""
        entry = json.dumps([member, self.node_id, dict(meta)], separators=(",", ":"))
        async with self._room(room, f"join room {room!r}"):
            local = self.local.setdefault(room, {})
            local[conn_id] = (member, entry)
            self.registered = True
            try:
                reply = await self._run(
                    "presence_join",
                    f"join room {room!r}",
                    [self.prefix, self._ttl_ms, self.node_id, room, member, conn_id, entry],
                )
            except BaseException:
                local.pop(conn_id, None)
                self.dirty.add(room)  # the script may have run: remove it later
                raise
        first, count, who, lost, events = reply
        self._after(int(lost), events)
        return PresenceUpdate(bool(first), int(count), str(who))

    async def leave(self, room: str, conn_id: str) -> PresenceUpdate:
        """Remove a connection; see Broker.presence_leave."""
        # Forgotten here first, whatever happens next: the refresh must never
        # register again a connection that left.
        local = self.local.get(room)
        if local is not None:
            local.pop(conn_id, None)
        what = f"leave room {room!r}"
        try:
            async with self._room(room, what):
                reply = await self._run(
                    "presence_leave", what, [self.prefix, self._ttl_ms, self.node_id, room, conn_id]
                )
                if not self.local.get(room, True) and room not in self.dirty:
                    del self.local[room]
        except BaseException:
            self.dirty.add(room)  # the refresh loop removes it (and announces it)
            raise
        last, count, who, lost, events = reply
        self._after(int(lost), events)
        return PresenceUpdate(bool(last), int(count), str(who) or None)

    async def members(self, room: str, limit: int | None, meta: bool) -> RoomPresence:
        """The room's members; see Broker.presence_members."""
        reply = await self._run(
            "presence_members",
            f"read the members of room {room!r}",
            [self.prefix, room, -1 if limit is None else limit, "1" if meta else "0"],
        )
        count, connections, events, entries = reply
        self._after(0, events)
        if not meta:
            pairs = zip(entries[::2], entries[1::2], strict=True)
            listed = tuple(Member(str(m), int(n), {}) for m, n in sorted(pairs))
            return RoomPresence(int(count), int(connections), listed)
        by_member: dict[str, list[dict[str, Any]]] = {}
        for text in entries:
            member, _node, data = json.loads(text)
            by_member.setdefault(member, []).append(data)
        listed = tuple(
            Member(member, len(metas), merge(metas)) for member, metas in sorted(by_member.items())
        )
        return RoomPresence(int(count), int(connections), listed)

    async def rooms(self) -> list[tuple[str, int]]:
        """Rooms with members; see Broker.presence_rooms."""
        events, flat = await self._run("presence_rooms", "list the rooms", [self.prefix])
        self._after(0, events)
        return sorted(
            (str(room), int(count)) for room, count in zip(flat[::2], flat[1::2], strict=True)
        )

    # ------------------------------------------------------------ helpers

    @contextlib.asynccontextmanager
    async def _room(self, room: str, what: str) -> AsyncIterator[None]:
        """This node's turn for ``room``; BrokerError when Redis is too slow to give one.

        Bounded, so calls queued behind a hung Redis fail after ``timeout``
        like the call they wait for, instead of one timeout after another.
        """
        holder = self._locks.get(room)
        if holder is None:
            holder = self._locks[room] = _RoomLock()
        holder.users += 1
        try:
            try:
                async with asyncio.timeout(self.timeout):
                    await holder.lock.acquire()
            except TimeoutError:
                raise BrokerError(
                    f"cannot {what}: Redis is unavailable (too slow); try again later"
                ) from None
            try:
                yield
            finally:
                holder.lock.release()
        finally:
            holder.users -= 1
            if holder.users == 0:
                del self._locks[room]

    def _after(self, lost: int, events: Sequence[Any]) -> None:
        """Act on what a script reported: repair if we were lost, announce changes."""
        if lost and not self._heal_all:
            self._heal_all = True
            self._wake.set()
        for i in range(0, len(events) - 3, 4):
            room, member, joined, count = events[i : i + 4]
            self._notify(str(room), str(member), bool(int(joined)), int(count))

    async def _loop(self) -> None:
        """Refresh every ``refresh`` seconds (or when woken); never raises."""
        while True:
            self._wake.clear()
            try:
                await self.tick()
            except BrokerError as exc:  # Redis is down: the next round retries
                logger.debug("presence refresh of node %s failed: %s", self.node_id, exc)
            except Exception:
                logger.exception("presence refresh of node %s failed", self.node_id)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.refresh):
                    await self._wake.wait()

    async def tick(self) -> None:
        """One refresh: push this node's expiry, sweep dead nodes, repair what may disagree."""
        heal_all = self._heal_all
        self._heal_all = False
        args: list[str | int] = [self.prefix, self._ttl_ms, self.node_id]
        try:
            lost, events, rooms, more = await self._run(
                "presence_beat", "refresh presence", [*args, "1" if heal_all else "0"]
            )
        except BaseException:
            self._heal_all = self._heal_all or heal_all
            raise
        self._after(0, events)
        while int(more):  # a big dead node: sweep it SWEEP_BATCH connections at a time
            _, events, _, more = await self._run("presence_beat", "refresh presence", [*args, "0"])
            self._after(0, events)
        if int(lost) or heal_all:
            # Redis may lack anything we hold, and may hold what we no longer do.
            self.dirty.update(self.local)
            self.dirty.update(str(room) for room in rooms)
        for room in sorted(self.dirty):
            self.dirty.discard(room)
            try:
                await self._heal(room)
            except BaseException:
                self.dirty.add(room)
                raise

    async def _heal(self, room: str) -> None:
        async with self._room(room, f"repair room {room!r}"):
            local = self.local.get(room, {})
            args: list[str | int] = [self.prefix, self._ttl_ms, self.node_id, room]
            for conn_id, (member, entry) in local.items():
                args += [conn_id, member, entry]
            lost, events = await self._run("presence_heal", f"repair room {room!r}", args)
            if not local and room in self.local and not self.local[room]:
                del self.local[room]
        self._after(int(lost), events)
