"""The chat's web pages: the UI at ``/`` and its static files, with a strict CSP."""

from __future__ import annotations

from tidewire.protocol import Request, Response
from tidewire.realtime import App, static_file

__all__ = ["CONTENT_SECURITY_POLICY", "add_routes"]

#: Only this origin's scripts, styles and WebSocket; no inline script, no plugins,
#: no framing: user text can never become code even if a rendering bug slipped in.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

_FILES = {
    "/": "static/index.html",
    "/static/chat.js": "static/chat.js",
    "/static/chat.css": "static/chat.css",
}


def _page(path: str) -> Response:
    base = static_file("tidewire.apps.chat", _FILES[path])
    headers = base.headers.copy()
    headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    headers["Referrer-Policy"] = "no-referrer"
    return Response(base.status, base.reason, headers, base.body)


def add_routes(app: App) -> None:
    """Serve the UI from ``app``'s port."""
    for path in _FILES:

        def responder(request: Request, path: str = path) -> Response:
            return _page(path)

        app.router.add_http(path, responder)
