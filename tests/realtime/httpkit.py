"""A raw HTTP/1.1 client for the App's admin and API endpoints (bounded waits, no dependency).

Written by hand on asyncio streams so the tests see exactly the status, headers and body
the server wrote, and can send what a well-behaved library never would (a wrong
Content-Length, a body that is not JSON).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from typing import Any

from tidewire.transport import Server

#: Seconds for one whole request and answer.
HTTP_TIMEOUT = 5.0

#: An admin token long enough for App(admin_token=...).
ADMIN_TOKEN = "admin-token-0123456789abcdef"


@dataclass
class Answer:
    """One HTTP response: status, headers (lower-case names) and body."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON (the Content-Type must say so)."""
        assert self.headers.get("content-type", "").startswith("application/json"), self.headers
        return json.loads(self.body)

    @property
    def text(self) -> str:
        """The body as UTF-8 text."""
        return self.body.decode("utf-8")


async def http(
    server: Server,
    method: str,
    path: str,
    *,
    token: str | None = None,
    body: bytes | None = None,
    json_body: Any = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    """Send one request to ``server`` and read the answer until the server closes."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    if json_body is not None:
        body = json.dumps(json_body).encode()
        lines.append("Content-Type: application/json")
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    lines.extend(f"{name}: {value}" for name, value in (headers or {}).items())
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")
    async with asyncio.timeout(HTTP_TIMEOUT):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write(raw)
            data = await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    head, _, payload = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    return Answer(int(status_line.split()[1]), parsed, payload)
