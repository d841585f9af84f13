"""Context: what a handler gets: the session, the message, and ways to answer and fan out."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tidewire.realtime.wire import ref_of

if TYPE_CHECKING:
    from tidewire.realtime.app import App
    from tidewire.realtime.auth import Identity
    from tidewire.realtime.channels import Publication
    from tidewire.realtime.session import Session

__all__ = ["Context"]


class Context:
    """One client message being handled.

    ``message`` is the decoded envelope (a middleware may replace it);
    ``type`` its type.  Fan-out methods go through the app's broker, so they
    reach the receivers on every node.
    """

    __slots__ = ("app", "session", "message", "params")

    def __init__(self, app: App, session: Session, message: dict[str, Any]) -> None:
        """A context for ``message`` from ``session``."""
        self.app = app
        self.session = session
        self.message = message
        #: For RPCs: the call's params (None when absent).
        self.params: Any = message.get("params")

    @property
    def type(self) -> str:
        """The message type."""
        return str(self.message.get("type"))

    @property
    def user(self) -> str | None:
        """The authenticated user, or None."""
        return self.session.user

    @property
    def identity(self) -> Identity | None:
        """The verified identity (user, claims, expiry), or None."""
        return self.session.identity

    def reply(self, type: str, /, **fields: Any) -> bool:
        """Send ``{"type": type, **fields}`` to the sender; carries the message's ``id`` if any."""
        envelope: dict[str, Any] = {"type": type, **fields}
        if "id" in self.message and "id" not in envelope:
            envelope["id"] = self.message["id"]
        return self.session.send(envelope)

    def error(self, code: str, message: str) -> bool:
        """Send an ``error`` envelope referring to this message."""
        return self.session.send(
            {"type": "error", "code": code, "message": message, "ref": ref_of(self.message)}
        )

    async def emit_room(
        self, room: str, type: str, /, *, exclude_self: bool = False, **fields: Any
    ) -> None:
        """Send to everyone in ``room`` (optionally not to the sender)."""
        exclude = self.session.id if exclude_self else None
        await self.app.emit_room(room, {"type": type, **fields}, exclude=exclude)

    async def emit_user(self, user: str, type: str, /, **fields: Any) -> None:
        """Send to every connection of ``user``."""
        await self.app.emit_user(user, {"type": type, **fields})

    async def emit_connection(self, connection_id: str, type: str, /, **fields: Any) -> None:
        """Send to one connection by id (on any node)."""
        await self.app.emit_connection(connection_id, {"type": type, **fields})

    async def broadcast(self, type: str, /, *, exclude_self: bool = False, **fields: Any) -> None:
        """Send to every connection of the app."""
        exclude = self.session.id if exclude_self else None
        await self.app.broadcast({"type": type, **fields}, exclude=exclude)

    async def publish(self, channel: str, payload: Any) -> Publication:
        """Publish to ``channel``'s subscribers; returns the numbered publication."""
        return await self.app.publish(channel, payload, publisher=self.session.key)

    async def call(self, method: str, params: Any = None, *, timeout: float | None = None) -> Any:
        """Call ``method`` on this client and return its result (see Session.call)."""
        return await self.session.call(method, params, timeout=timeout)
