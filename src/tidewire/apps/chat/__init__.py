"""The chat application: `tidewire serve` (handlers, SQLite history, web UI)."""

from __future__ import annotations

from tidewire.apps.chat.handlers import ChatLimits, build_app
from tidewire.apps.chat.store import HistoryStore, MessageStore, RedisMessageStore

__all__ = ["ChatLimits", "HistoryStore", "MessageStore", "RedisMessageStore", "build_app"]
