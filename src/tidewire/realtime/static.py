"""Static files the App serves over plain HTTP on its port (the browser client)."""

from __future__ import annotations

import functools
from importlib import resources

from tidewire.protocol.http import Request, Response

__all__ = ["client_js", "static_file"]

_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
}


@functools.cache
def static_file(package: str, name: str) -> Response:
    """A 200 response with the package data file ``name`` of ``package`` (read once)."""
    body = resources.files(package).joinpath(name).read_bytes()
    suffix = name[name.rfind(".") :]
    headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
    return Response.build(
        200, body, headers, content_type=_TYPES.get(suffix, "application/octet-stream")
    )


def client_js(request: Request) -> Response:
    """``GET /tidewire.js``: the browser client, a plain ES module."""
    return static_file("tidewire", "static/tidewire.js")
