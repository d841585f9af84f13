"""Presence: who is in which room, per member, across every node (docs/protocol.md §6).

A *member* is a user, or the connection id of an anonymous connection; one
member may be in a room through several connections (tabs, devices, nodes).
Presence answers three questions: is this the member's **first** connection
in the room (``userJoined``), its **last** (``userLeft``), and who is there.

The broker keeps the registry (:meth:`Broker.presence_join` and friends), so
every node sees the same members; :class:`PresenceTable` is the exact,
in-process registry the in-memory broker uses.  Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Member", "PresenceTable", "PresenceUpdate", "RoomPresence"]


@dataclass(frozen=True, slots=True)
class PresenceUpdate:
    """The answer to a join or a leave.

    ``changed`` is True when the join was the member's first connection in the
    room, or the leave its last (tell the room); ``count`` is the number of
    members in the room afterwards; ``member`` is who joined or left (for a
    leave: the member the connection had joined as; None when it was not in
    the room).
    """

    changed: bool
    count: int
    member: str | None


@dataclass(frozen=True, slots=True)
class Member:
    """One member of a room: its connections there and their metadata, merged."""

    user: str
    connections: int
    meta: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        """The member as the ``presence`` RPC returns it."""
        return {"user": self.user, "connections": self.connections, "meta": self.meta}


@dataclass(frozen=True, slots=True)
class RoomPresence:
    """A room's members: ``count`` members with ``connections`` connections.

    ``members`` is sorted by name, and complete, or empty when the caller's
    ``limit`` was below ``count`` (listing a big room costs O(members)).
    """

    count: int
    connections: int
    members: tuple[Member, ...] = ()

    @property
    def names(self) -> list[str]:
        """The member names, sorted."""
        return [member.user for member in self.members]


def merge(metas: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One member's metadata: its connections' metadata merged, later joins winning."""
    merged: dict[str, Any] = {}
    for meta in metas:
        merged.update(meta)
    return merged


class PresenceTable:
    """Exact presence of one process: room -> member -> connection id -> metadata."""

    __slots__ = ("rooms", "_owners")

    def __init__(self) -> None:
        """No rooms yet."""
        self.rooms: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
        #: room -> connection id -> the member it joined as.
        self._owners: dict[str, dict[str, str]] = {}

    def join(self, room: str, member: str, conn_id: str, meta: Mapping[str, Any]) -> PresenceUpdate:
        """Add a connection (its ``meta`` is copied); ``changed``: the member's first here."""
        owners = self._owners.setdefault(room, {})
        members = self.rooms.setdefault(room, {})
        owner = owners.get(conn_id)
        if owner is not None:
            # Joining twice is allowed; a connection keeps the member it first joined as.
            if owner == member:
                members[owner][conn_id] = dict(meta)
            return PresenceUpdate(False, len(members), owner)
        owners[conn_id] = member
        conns = members.setdefault(member, {})
        conns[conn_id] = dict(meta)
        return PresenceUpdate(len(conns) == 1, len(members), member)

    def leave(self, room: str, conn_id: str) -> PresenceUpdate:
        """Remove a connection; ``changed``: it was its member's last here."""
        owners = self._owners.get(room)
        member = owners.pop(conn_id, None) if owners is not None else None
        if owners is None or member is None:
            return PresenceUpdate(False, len(self.rooms.get(room, ())), None)
        members = self.rooms[room]
        conns = members[member]
        del conns[conn_id]
        last = not conns
        if last:
            del members[member]
        if not members:
            del self.rooms[room], self._owners[room]
        return PresenceUpdate(last, len(members), member)

    def members(self, room: str, limit: int | None = None, *, meta: bool = True) -> RoomPresence:
        """The room's members, listed when there are at most ``limit`` (None: always)."""
        members = self.rooms.get(room)
        if not members:
            return RoomPresence(0, 0)
        connections = len(self._owners[room])
        if limit is not None and len(members) > limit:
            return RoomPresence(len(members), connections)
        listed = tuple(
            Member(user, len(conns), merge(list(conns.values())) if meta else {})
            for user, conns in sorted(members.items())
        )
        return RoomPresence(len(members), connections, listed)

    def counts(self) -> list[tuple[str, int]]:
        """Every room with a member, and its member count, sorted by room."""
        return sorted((room, len(members)) for room, members in self.rooms.items())
