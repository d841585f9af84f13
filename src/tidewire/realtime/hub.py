"""Hub: this node's sessions, users, rooms and channel subscribers, and local fan-out.

Fan-out encodes an envelope once and hands the same text to
:func:`tidewire.transport.broadcast`, which frames it once per compression
profile and writes the same bytes to every receiver.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

# Through the package: ``from tidewire.transport import broadcast`` names a submodule too,
# and realtime may use only what tidewire.transport exports (tests/test_layers.py).
import tidewire.transport as transport
from tidewire.realtime.brokers.base import Target
from tidewire.realtime.flow import DISCONNECT, SlowConsumerPolicy, type_of

if TYPE_CHECKING:
    from tidewire.realtime.session import Session

__all__ = ["Hub", "Room"]

_V = TypeVar("_V")


class Room:
    """The local members of one room, by connection and by user (this node only)."""

    __slots__ = ("name", "conns", "users", "keys")

    def __init__(self, name: str) -> None:
        """An empty room."""
        self.name = name
        self.conns: dict[str, Session] = {}
        self.users: dict[str, dict[str, Session]] = {}
        #: The key each connection joined under: an anonymous session that
        #: authenticates later changes its ``key`` but stays listed under the old one.
        self.keys: dict[str, str] = {}

    def add(self, session: Session, key: str | None = None) -> bool:
        """Add a connection (under ``key``, default its own); True when its user's first here."""
        key = self.keys.setdefault(session.id, session.key if key is None else key)
        self.conns[session.id] = session
        sessions = self.users.setdefault(key, {})
        sessions[session.id] = session
        return len(sessions) == 1

    def remove(self, session: Session) -> bool:
        """Remove a connection; True when it was its user's last in the room."""
        self.conns.pop(session.id, None)
        key = self.keys.pop(session.id, session.key)
        sessions = self.users.get(key)
        if sessions is None:
            return False
        sessions.pop(session.id, None)
        if sessions:
            return False
        del self.users[key]
        return True

    def key_of(self, session: Session) -> str:
        """The key ``session`` is listed under in this room."""
        return self.keys.get(session.id, session.key)


class Hub:
    """Local registry and delivery; implements the broker's :class:`Node` callback."""

    def __init__(
        self,
        policy_for: Callable[[str | None, str | None], SlowConsumerPolicy] = lambda r, t: (
            DISCONNECT
        ),
        *,
        batching: bool = False,
    ) -> None:
        """Nothing connected yet; ``policy_for(room, type)`` picks slow-consumer policies."""
        self.policy_for = policy_for
        self.batching = batching
        self.sessions: dict[str, Session] = {}
        self.users: dict[str, dict[str, Session]] = {}
        self.rooms: dict[str, Room] = {}
        self.subscribers: dict[str, dict[str, Session]] = {}
        #: Called with the receivers and the text after each broadcast (the App's metrics).
        self.on_broadcast: Callable[[list[transport.WebSocket], str], None] | None = None
        #: channel -> session id -> publications held back while its ``subscribed``
        #: reply is being prepared; then the offset that reply covered (:meth:`hold`).
        self.held: dict[str, dict[str, list[str]]] = {}
        self.floors: dict[str, dict[str, int]] = {}
        self.deliveries = 0

    # --------------------------------------------------------------- registry

    def add(self, session: Session) -> None:
        """Register a connected session."""
        self.sessions[session.id] = session

    def identify(self, session: Session) -> None:
        """Index a session under its user once it authenticated."""
        if session.user is not None:
            self.users.setdefault(session.user, {})[session.id] = session

    def remove(self, session: Session) -> None:
        """Forget a session everywhere (rooms are left by the caller first)."""
        self.sessions.pop(session.id, None)
        if session.user is not None:
            sessions = self.users.get(session.user)
            if sessions is not None:
                sessions.pop(session.id, None)
                if not sessions:
                    del self.users[session.user]
        for channel in list(session.channels):
            self.unsubscribe(session, channel)

    def join(self, session: Session, room: str, key: str | None = None) -> bool:
        """Add ``session`` to ``room`` (as ``key``); True when its user was not here yet.

        Local only: who is in the room on every node is the broker's presence.
        """
        entry = self.rooms.get(room)
        if entry is None:
            entry = self.rooms[room] = Room(room)
        session.rooms.add(room)
        return entry.add(session, key)

    def leave(self, session: Session, room: str) -> bool:
        """Remove ``session`` from ``room``; True when it was its user's last connection there."""
        session.rooms.discard(room)
        entry = self.rooms.get(room)
        if entry is None:
            return False
        last = entry.remove(session)
        if not entry.conns:
            del self.rooms[room]
        return last

    def members(self, room: str) -> list[str]:
        """The users (or anonymous connection ids) in ``room``, sorted."""
        entry = self.rooms.get(room)
        return sorted(entry.users) if entry is not None else []

    def subscribe(self, session: Session, channel: str) -> None:
        """Deliver ``channel``'s publications to ``session``."""
        self.subscribers.setdefault(channel, {})[session.id] = session
        session.channels.add(channel)

    def unsubscribe(self, session: Session, channel: str) -> None:
        """Stop delivering ``channel`` to ``session``."""
        self.release(session, channel)
        session.channels.discard(channel)
        subs = self.subscribers.get(channel)
        if subs is not None:
            subs.pop(session.id, None)
            if not subs:
                del self.subscribers[channel]

    def hold(self, session: Session, channel: str) -> None:
        """Keep ``channel``'s deliveries to ``session`` aside until :meth:`release`.

        Subscribing awaits the broker for the channel's position; a publication
        delivered meanwhile must reach the client after the ``subscribed``
        reply, and only if the reply's offset does not already cover it.
        """
        self.held.setdefault(channel, {})[session.id] = []

    def release(self, session: Session, channel: str, after: int | None = None) -> list[str]:
        """Stop holding; the texts held back for ``session``, in delivery order.

        With ``after`` (the offset the reply covered), publications at or below
        it are left out, and dropped for ``session`` when they arrive later
        until a newer one does: a broker may answer before its subscriber has
        delivered the publications it counted (Redis: two connections).
        """
        texts = _pop(self.held, channel, session.id) or []
        _pop(self.floors, channel, session.id)
        if after is None:
            return texts
        self.floors.setdefault(channel, {})[session.id] = after
        return [text for text in texts if self._past_floor(channel, session.id, text)]

    def _screen_sessions(self, channel: str, sessions: list[Session], text: str) -> list[Session]:
        """Hold ``text`` for sessions being subscribed; drop publications a reply covered."""
        held = self.held.get(channel, {})
        keep = []
        for session in sessions:
            texts = held.get(session.id)
            if texts is not None:
                texts.append(text)
            elif self._past_floor(channel, session.id, text):
                keep.append(session)
        return keep

    def _past_floor(self, channel: str, session_id: str, text: str) -> bool:
        """False for a publication at or below the session's floor; a newer one lifts it."""
        floors = self.floors.get(channel)
        floor = floors.get(session_id) if floors else None
        if floor is None:
            return True
        offset = _publish_offset(text)
        if offset is not None and offset <= floor:
            return False
        _pop(self.floors, channel, session_id)
        return True

    # --------------------------------------------------------------- delivery

    def receivers(self, target: Target, name: str) -> list[Session]:
        """The local sessions a delivery to ``target``/``name`` reaches."""
        if target is Target.ROOM:
            entry = self.rooms.get(name)
            return list(entry.conns.values()) if entry is not None else []
        if target is Target.CHANNEL:
            return list(self.subscribers.get(name, {}).values())
        if target is Target.USER:
            return list(self.users.get(name, {}).values())
        if target is Target.CONNECTION:
            session = self.sessions.get(name)
            return [session] if session is not None else []
        return list(self.sessions.values())

    def deliver(self, target: Target, name: str, text: str, exclude: str | None) -> None:
        """Write ``text`` to every local receiver that keeps up, framed once for all.

        Receivers that lag get their slow-consumer policy
        (:mod:`tidewire.realtime.flow`) instead; with opt-in batching each
        receiver's batch takes the text.
        """
        sessions = self.receivers(target, name)
        if target is Target.CHANNEL and (name in self.held or name in self.floors):
            sessions = self._screen_sessions(name, sessions, text)
        if not sessions:
            return
        room = name if target is Target.ROOM else None
        policy = self.policy_for(room, type_of(text))
        if self.batching:
            for session in sessions:
                if session.id != exclude:
                    self.deliveries += session.send(text, policy=policy)
            return
        ready = [s.ws for s in sessions if s.id != exclude and s.admit(text, policy)]
        if ready:
            self.deliveries += transport.broadcast(ready, text)
            if self.on_broadcast is not None:
                self.on_broadcast(ready, text)


def _pop(table: dict[str, dict[str, _V]], channel: str, session_id: str) -> _V | None:
    """Remove and return ``table[channel][session_id]``, dropping an emptied channel."""
    entries = table.get(channel)
    if entries is None:
        return None
    value = entries.pop(session_id, None)
    if not entries:
        del table[channel]
    return value


def _publish_offset(text: str) -> int | None:
    """The offset of an encoded ``publish`` envelope; None for any other message."""
    if type_of(text) != "publish":
        return None
    offset = json.loads(text).get("offset")
    return offset if isinstance(offset, int) and not isinstance(offset, bool) else None
