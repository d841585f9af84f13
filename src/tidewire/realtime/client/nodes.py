"""Nodes: which server a Client connects to next, round-robin over the healthy ones.

With several URLs, every connection attempt takes the next URL in the list,
wrapping around, starting at a random offset per client so that a fleet of
clients given the same list spreads over all the nodes.  With ``health_check``
each candidate is probed first with ``GET /health`` on its host and port
(``http://`` for ``ws://``, ``https://`` for ``wss://``, the transport's
health route): one that does not answer 200 within ``health_timeout`` (a
draining server answers 503; a dead one does not answer) is skipped for this
round.  When every node fails its probe, each is tried in turn anyway: the
health route itself may be what is broken (a proxy that does not forward it),
and the connection attempt then gives the verdict.

A *round* is one pass over the list; the Client backs off only after a round
in which every candidate failed.
"""

from __future__ import annotations

import asyncio
import logging
import ssl as ssl_module
import urllib.parse
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any, Final

from tidewire.realtime.client.options import DEFAULT_HEALTH_TIMEOUT

__all__ = ["HEALTH_PATH", "Nodes", "Round", "probe_health"]

logger = logging.getLogger("tidewire.realtime.client")

#: Where a tidewire server answers its health check (the transport's default route).
HEALTH_PATH: Final = "/health"


async def probe_health(
    url: str, *, timeout: float, ssl: ssl_module.SSLContext | None = None
) -> int | None:
    """The HTTP status of ``GET /health`` on the node of the ws(s) ``url``, or None.

    None when the node does not answer a status line within ``timeout``
    seconds (refused, unreachable, TLS failure, not HTTP).  ``ssl`` is the
    context for ``wss://`` URLs (default: the system's trust store).
    """
    parts = urllib.parse.urlsplit(url)
    secure = parts.scheme == "wss"
    host = parts.hostname or ""
    default_port = 443 if secure else 80
    port = parts.port or default_port
    host_header = f"[{host}]" if ":" in host else host
    if port != default_port:
        host_header = f"{host_header}:{port}"
    request = (
        f"GET {HEALTH_PATH} HTTP/1.1\r\nHost: {host_header}\r\n"
        "Accept: application/json\r\nConnection: close\r\n\r\n"
    ).encode("ascii")
    context = (ssl or ssl_module.create_default_context()) if secure else None

    async def exchange() -> int | None:
        reader, writer = await asyncio.open_connection(
            host, port, ssl=context, server_hostname=host if context else None
        )
        try:
            writer.write(request)
            line = await reader.readline()
        finally:
            writer.close()
        fields = line.split(None, 2)
        if len(fields) >= 2 and fields[0].startswith(b"HTTP/1.") and fields[1].isdigit():
            return int(fields[1])
        return None

    try:
        return await asyncio.wait_for(exchange(), timeout)
    except (OSError, TimeoutError, ValueError):  # ssl.SSLError is an OSError
        return None


class Nodes:
    """The server URLs, where the next round starts, and the health probe's settings."""

    __slots__ = ("urls", "current", "_next", "_probe", "_timeout", "_ssl", "_default_ssl")

    def __init__(
        self,
        urls: Sequence[str],
        *,
        start: int = 0,
        health_check: bool = True,
        health_timeout: float = DEFAULT_HEALTH_TIMEOUT,
        ssl: Any = None,
    ) -> None:
        """Rotate over ``urls`` from index ``start``; probe only with more than one URL.

        ``ssl`` is the transport's ``ssl`` argument: an SSLContext is used for
        the probe of ``wss://`` URLs too.
        """
        self.urls = tuple(urls)
        #: The URL being tried, or the one tried next.
        self.current = self.urls[start % len(self.urls)]
        self._next = start % len(self.urls)
        self._probe = health_check and len(self.urls) > 1
        self._timeout = health_timeout
        self._ssl = ssl if isinstance(ssl, ssl_module.SSLContext) else None
        self._default_ssl: ssl_module.SSLContext | None = None

    def round(self) -> Round:
        """A pass over the nodes, starting after the last one tried."""
        return Round(self, self._next)

    def take(self, index: int) -> str:
        """Try ``urls[index]`` now; the next round starts after it."""
        self.current = self.urls[index]
        self._next = (index + 1) % len(self.urls)
        return self.current

    @property
    def probing(self) -> bool:
        """Whether candidates are probed (health_check with more than one URL)."""
        return self._probe

    async def healthy(self, url: str) -> bool:
        """Whether the node of ``url`` answers ``GET /health`` with 200 in time."""
        context = self._ssl
        if context is None and urllib.parse.urlsplit(url).scheme == "wss":
            if self._default_ssl is None:
                self._default_ssl = ssl_module.create_default_context()
            context = self._default_ssl
        status = await probe_health(url, timeout=self._timeout, ssl=context)
        if status == HTTPStatus.OK:
            return True
        answer = "no answer" if status is None else f"HTTP {status}"
        logger.info(
            "%s skipped: GET %s gave %s (health_timeout=%s s)",
            url,
            HEALTH_PATH,
            answer,
            self._timeout,
        )
        return False


class Round:
    """One pass over the nodes: the healthy ones in order, or all when none is healthy."""

    __slots__ = ("_nodes", "_start", "_step", "_probe", "_found")

    def __init__(self, nodes: Nodes, start: int) -> None:
        """Begin at ``nodes.urls[start]``."""
        self._nodes = nodes
        self._start = start
        self._step = 0
        self._probe = nodes.probing
        self._found = False

    def exhausted(self) -> bool:
        """Whether :meth:`next` would end the round without trying another URL."""
        return self._step >= len(self._nodes.urls) and (not self._probe or self._found)

    async def next(self) -> str | None:
        """The next URL to try in this round, or None when the round is over."""
        nodes = self._nodes
        count = len(nodes.urls)
        while True:
            while self._step < count:
                index = (self._start + self._step) % count
                self._step += 1
                if not self._probe or await nodes.healthy(nodes.urls[index]):
                    self._found = True
                    return nodes.take(index)
            if not self._probe or self._found:
                return None
            # Every probe failed: the health route may be what is broken, so try
            # each node anyway and let the connection attempt decide.
            logger.info("no node answered %s with 200; trying each in turn", HEALTH_PATH)
            self._probe = False
            self._step = 0
