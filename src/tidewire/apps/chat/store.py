"""Chat history in SQLite: survives a restart; the last N messages of a room on join."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

__all__ = ["MessageStore"]

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

    def rooms(self) -> list[str]:
        """Rooms that have history, by name."""
        return [row[0] for row in self.db.execute("SELECT DISTINCT room FROM messages ORDER BY 1")]

    def close(self) -> None:
        """Close the database."""
        self.db.close()
