"""The chat's server side: usernames, rooms, messages with history, typing indicators.

Wire messages (on top of docs/protocol.md):

* the client authenticates with ``{"type":"auth","token":"NAME:KEY"}``: NAME is
  the username, KEY a random secret the browser keeps, so a second tab of the
  same person shares the name while someone else cannot take it while it is online;
* ``{"type":"chat","room":R,"text":T}`` -> everyone in R gets
  ``{"type":"chat","room":R,"user":U,"text":T,"ts":SECONDS,"id":N}``;
* ``{"type":"typing","room":R,"typing":true|false}`` -> the others in R get
  ``{"type":"typing","room":R,"user":U,"typing":...}``;
* after ``joined`` the client gets ``{"type":"history","room":R,"messages":[...]}``
  with the last ``history`` messages.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from tidewire.apps.chat.store import HistoryStore, MessageStore
from tidewire.errors import RealtimeError, Unauthorized
from tidewire.realtime import App, Context, Identity, RateLimit, RateLimits, Session
from tidewire.realtime.brokers import Broker

__all__ = ["ChatLimits", "build_app", "NameRegistry"]

_USERNAME = re.compile(r"[A-Za-z0-9_.\-]+")
_KEY = re.compile(r"[A-Za-z0-9_\-]{8,64}")


@dataclass(frozen=True, slots=True, kw_only=True)
class ChatLimits:
    """Limits of the chat, each enforced with a clear error."""

    #: Longest username (characters).
    max_username: int = 32
    #: Longest room name (characters); the wire protocol allows 255, a UI shows far fewer.
    max_room: int = 64
    #: Longest message (characters).
    max_text: int = 2000
    #: Messages shown on joining a room.
    history: int = 100
    #: Chat messages per user: 5 per second with bursts of 10.
    chat_rate: RateLimit = RateLimit(5.0, 10.0)


class NameRegistry:
    """Which browser key holds each username while it has connections."""

    def __init__(self) -> None:
        """No names taken."""
        self.holders: dict[str, tuple[str, int]] = {}

    def claim(self, name: str, key: str) -> None:
        """Take ``name`` for ``key`` (a second connection of the same key is fine)."""
        held = self.holders.get(name)
        if held is not None and held[0] != key:
            raise Unauthorized(f"the name {name!r} is taken; pick another")
        self.holders[name] = (key, (held[1] if held else 0) + 1)

    def release(self, name: str) -> None:
        """One connection holding ``name`` went away."""
        held = self.holders.get(name)
        if held is None:
            return
        if held[1] <= 1:
            del self.holders[name]
        else:
            self.holders[name] = (held[0], held[1] - 1)


def build_app(
    store: HistoryStore | None = None,
    limits: ChatLimits | None = None,
    *,
    broker: Broker | None = None,
    admin_token: str | None = None,
) -> App:
    """The chat App on ``store`` (in-memory SQLite when None) and ``broker`` (in-memory)."""
    store = store if store is not None else MessageStore()
    limits = limits or ChatLimits()
    names = NameRegistry()

    def verify(token: str) -> Identity:
        name, _, key = token.partition(":")
        if not name or len(name) > limits.max_username or not _USERNAME.fullmatch(name):
            raise Unauthorized(
                f"a username is 1-{limits.max_username} letters, digits, '_', '.' or '-'"
            )
        if not _KEY.fullmatch(key):
            raise Unauthorized("malformed client key")
        return Identity(name, {"key": key})

    app = App(
        broker=broker,
        admin_token=admin_token,
        auth=verify,
        rate_limits=RateLimits(per_type={"chat": limits.chat_rate, "typing": RateLimit(5, 10)}),
    )

    @app.on_auth
    async def claim_name(session: Session, identity: Identity) -> None:
        names.claim(identity.user, str(identity.claims.get("key")))

    @app.on_disconnect
    async def release(session: Session) -> None:
        if session.user is not None:
            names.release(session.user)

    def room_of(ctx: Context) -> str:
        room = ctx.message.get("room")
        if not isinstance(room, str) or room not in ctx.session.rooms:
            raise RealtimeError("join the room first", "not_member")
        return room

    @app.on_join
    async def send_history(session: Session, room: str) -> None:
        messages = await store.recent_messages(room, limits.history)
        session.emit("history", room=room, messages=messages)

    @app.authorize_with
    def rooms_fit(session: Session, name: str, action: str) -> bool:
        if action == "join" and len(name) > limits.max_room:
            raise RealtimeError(f"a room name is at most {limits.max_room} characters", "invalid")
        return True

    node = secrets.token_hex(4)

    @app.rpc("chat.node")
    async def node_id(ctx: Context, params: Any) -> str:
        """Which server process this connection landed on (random per process)."""
        return node

    @app.on("chat", fields={"room": str, "text": str})
    async def chat(ctx: Context) -> None:
        room, text = room_of(ctx), ctx.message["text"].strip()
        if not text:
            raise RealtimeError("empty message", "invalid")
        if len(text) > limits.max_text:
            raise RealtimeError(
                f"a message is at most {limits.max_text} characters, got {len(text)}", "invalid"
            )
        assert ctx.user is not None
        message = await store.add_message(room, ctx.user, text, time.time())
        await ctx.emit_room(room, "chat", **message)

    @app.on("typing", fields={"room": str, "typing": bool})
    async def typing(ctx: Context) -> None:
        room = room_of(ctx)
        await ctx.emit_room(
            room,
            "typing",
            exclude_self=True,
            room=room,
            user=ctx.user,
            typing=ctx.message["typing"],
        )

    return app
