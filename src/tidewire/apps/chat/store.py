"""Chat history: SQLite by default (survives a restart), Redis when nodes share a broker.

Both stores have the same async interface (:class:`HistoryStore`), so the
chat's handlers do not care which one keeps the messages.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any, Protocol

__all__ = ["HistoryStore", "MessageStore", "RedisMessageStore"]


class HistoryStore(Protocol):
    """Where chat messages are kept."""

    async def add_message(self, room: str, user: str, text: str, ts: float) -> dict[str, Any]:
        """Store one message; return it as sent to clients (with its id)."""
        ...

    async def recent_messages(self, room: str, limit: int) -> list[dict[str, Any]]:
        """The last ``limit`` messages of ``room``, oldest first."""
        ...

    async def aclose(self) -> None:
        """Release the store."""
        ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    room TEXT NOT NULL,
    user TEXT NOT NULL,
    text TEXT NOT NULL,
    ts REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_room_id ON messages (room, id);
"""


class MessageStore:
    """Messages per room, oldest first; ``path`` ":memory:" keeps them in RAM only.

    Writes are small and local, so they run on the event loop thread: one
    INSERT in WAL mode takes tens of microseconds, less than a thread hop.
    """

    def __init__(self, path: str | Path = ":memory:") -> None:
        """Open (and create) the database at ``path``."""
        self.path = str(path)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        if self.path != ":memory:":
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)

    def add(self, room: str, user: str, text: str, ts: float) -> dict[str, Any]:
        """Store one message and return it as sent to clients (with its id)."""
        cursor = self.db.execute(
            "INSERT INTO messages (room, user, text, ts) VALUES (?, ?, ?, ?)",
            (room, user, text, ts),
        )
        return {"id": cursor.lastrowid, "room": room, "user": user, "text": text, "ts": ts}

    def recent(self, room: str, limit: int = 100) -> list[dict[str, Any]]:
        """The last ``limit`` messages of ``room``, oldest first."""
        rows = self.db.execute(
            "SELECT id, user, text, ts FROM messages WHERE room = ? ORDER BY id DESC LIMIT ?",
            (room, limit),
        ).fetchall()
        return [
            {"id": row[0], "room": room, "user": row[1], "text": row[2], "ts": row[3]}
            for row in reversed(rows)
        ]

    async def add_message(self, room: str, user: str, text: str, ts: float) -> dict[str, Any]:
        """:meth:`add`, for the async interface."""
        return self.add(room, user, text, ts)

    async def recent_messages(self, room: str, limit: int) -> list[dict[str, Any]]:
        """:meth:`recent`, for the async interface."""
        return self.recent(room, limit)

    async def aclose(self) -> None:
        """:meth:`close`, for the async interface."""
        self.close()

    def rooms(self) -> list[str]:
        """Rooms that have history, by name."""
        return [row[0] for row in self.db.execute("SELECT DISTINCT room FROM messages ORDER BY 1")]

    def close(self) -> None:
        """Close the database."""
        self.db.close()


#: Messages kept per room in Redis (the UI shows the last 100).
REDIS_MAX_PER_ROOM = 1000


class RedisMessageStore:
    """Messages in Redis, shared by every node on the broker: a list per room, newest last.

    Ids come from one INCR counter, so they are unique and increasing across
    nodes; each room keeps its last ``max_per_room`` messages (LTRIM).
    """

    def __init__(
        self, url: str, *, prefix: str = "tidewire:chat:", max_per_room: int = REDIS_MAX_PER_ROOM
    ) -> None:
        """Connect lazily to ``url``."""
        try:
            import redis.asyncio as redis_asyncio
        except ImportError as exc:  # pragma: no cover - the redis extra is installed in tests
            raise ImportError(
                "the Redis history needs redis: pip install 'tidewire[redis]'"
            ) from exc
        self.redis = redis_asyncio.from_url(url)
        self.prefix = prefix
        self.max_per_room = max_per_room

    async def add_message(self, room: str, user: str, text: str, ts: float) -> dict[str, Any]:
        """Append one message to the room's list."""
        message_id = int(await self.redis.incr(f"{self.prefix}ids"))
        message = {"id": message_id, "room": room, "user": user, "text": text, "ts": ts}
        key = f"{self.prefix}room:{room}"
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.rpush(key, json.dumps(message))
            pipe.ltrim(key, -self.max_per_room, -1)
            await pipe.execute()
        return message

    async def recent_messages(self, room: str, limit: int) -> list[dict[str, Any]]:
        """The last ``limit`` messages of the room, oldest first."""
        if limit <= 0:
            return []
        raw = await self.redis.lrange(f"{self.prefix}room:{room}", -limit, -1)
        return [json.loads(item) for item in raw]

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self.redis.aclose()
