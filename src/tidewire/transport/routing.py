"""Paths to WebSocket handlers and plain-HTTP responders, with typed path parameters."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from tidewire.protocol.http import Request, Response

__all__ = ["Router", "Route", "Handler", "HttpResponder"]

Handler = Callable[..., Awaitable[None]]
HttpResponder = Callable[[Request], Response | Awaitable[Response]]

_CONVERTERS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "str": (r"[^/]+", str),
    "int": (r"-?[0-9]{1,18}", int),
    "float": (r"-?[0-9]{1,18}(?:\.[0-9]{1,18})?", float),
    "path": (r".{1,2048}", str),
}
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::([a-z]+))?\}")


@dataclass(frozen=True, slots=True)
class Route:
    """One compiled path pattern such as ``/ws/chat/{room}`` or ``/item/{id:int}``."""

    pattern: str
    regex: re.Pattern[str]
    converters: tuple[tuple[str, Callable[[str], Any]], ...]
    target: Any

    @classmethod
    def compile(cls, pattern: str, target: Any) -> Route:
        """Compile ``pattern``; parameter types are str (default), int, float, path."""
        if not pattern.startswith("/"):
            raise ValueError(f"route pattern must start with '/': {pattern!r}")
        parts: list[str] = []
        convs: list[tuple[str, Callable[[str], Any]]] = []
        last = 0
        for match in _PARAM.finditer(pattern):
            parts.append(re.escape(pattern[last : match.start()]))
            name, kind = match.group(1), match.group(2) or "str"
            if kind not in _CONVERTERS:
                raise ValueError(f"unknown path parameter type {kind!r} in {pattern!r}")
            regex, conv = _CONVERTERS[kind]
            parts.append(f"(?P<{name}>{regex})")
            convs.append((name, conv))
            last = match.end()
        parts.append(re.escape(pattern[last:]))
        return cls(pattern, re.compile("".join(parts) + r"\Z"), tuple(convs), target)

    def match(self, path: str) -> dict[str, Any] | None:
        """The converted parameters when ``path`` matches, else None."""
        found = self.regex.match(path)
        if found is None:
            return None
        return {name: conv(found.group(name)) for name, conv in self.converters}


class Router:
    """WebSocket routes and HTTP routes, matched in the order they were added."""

    def __init__(self) -> None:
        """An empty router."""
        self.websocket_routes: list[Route] = []
        self.http_routes: list[Route] = []

    def websocket(self, pattern: str) -> Callable[[Handler], Handler]:
        """Decorator: ``@router.websocket("/ws/{room}")``; params land in ``ws.path_params``."""

        def register(handler: Handler) -> Handler:
            self.add_websocket(pattern, handler)
            return handler

        return register

    def add_websocket(self, pattern: str, handler: Handler) -> None:
        """Route upgrade requests matching ``pattern`` to ``handler(ws)``."""
        self.websocket_routes.append(Route.compile(pattern, handler))

    def add_http(self, pattern: str, responder: HttpResponder) -> None:
        """Route plain HTTP requests matching ``pattern`` to ``responder(request)``."""
        self.http_routes.append(Route.compile(pattern, responder))

    def match_websocket(self, path: str) -> tuple[Handler, dict[str, Any]] | None:
        """The handler and its path parameters for ``path``, or None (404)."""
        return _first(self.websocket_routes, path)

    def match_http(self, path: str) -> tuple[HttpResponder, dict[str, Any]] | None:
        """The responder and its path parameters for ``path``, or None (404)."""
        return _first(self.http_routes, path)


def _first(routes: list[Route], path: str) -> tuple[Any, dict[str, Any]] | None:
    for route in routes:
        params = route.match(path)
        if params is not None:
            return route.target, params
    return None
