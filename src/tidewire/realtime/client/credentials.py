"""Credentials: the client's token, fetched when needed, and the ``auth`` exchange.

A token is a string or a function (plain or async) returning one.  It is
cached, sent in an ``auth`` message on every connection, and fetched again
only after a close that asks for new credentials (REAUTH, 4200-4299).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

from tidewire.errors import Unauthorized
from tidewire.realtime.client.envelopes import error_from, str_or_none
from tidewire.realtime.client.link import Link

__all__ = ["Credentials", "Token"]

#: A token, or a function (plain or async) returning a fresh one.
Token: TypeAlias = str | Callable[[], str | Awaitable[str]]


class Credentials:
    """A token source with a cached value."""

    __slots__ = ("_token", "_value")

    def __init__(self, token: Token | None) -> None:
        """Use ``token`` (None: the client does not authenticate)."""
        self._token = token
        self._value: str | None = None

    @property
    def enabled(self) -> bool:
        """Whether there is a token to send."""
        return self._token is not None

    def forget(self) -> None:
        """Drop the cached token: the next connection fetches a fresh one."""
        self._value = None

    async def get(self) -> str:
        """The cached token, or a fresh one from the token function."""
        if self._value is None:
            token = self._token
            value: Any = token() if callable(token) else token
            if inspect.isawaitable(value):
                value = await value
            if not isinstance(value, str) or not value:
                raise Unauthorized("the token function returned no token")
            self._value = value
        return self._value

    async def authenticate(self, link: Link) -> str | None:
        """Send the token on ``link``; the user the server names, AttemptFailed if refused."""
        token = await self.get()
        reply = await link.request({"type": "auth", "token": token}, "auth")
        if reply["type"] == "error":
            raise await link.refused(error_from(reply))
        return str_or_none(reply.get("user"))
