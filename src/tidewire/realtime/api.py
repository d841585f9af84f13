"""The App's HTTP endpoints on its own port: metrics, stats, debug export and the publishing API.

=================================  ======  ==============================================
endpoint                           method  answer
=================================  ======  ==============================================
``/metrics``                       GET     Prometheus text (public with ``metrics_public``)
``/stats?top=N``                   GET     JSON totals, counters, busiest connections/rooms
``/debug/connections/{id}``        GET     JSON stats and debug log of one connection
``/api/publish``                   POST    ``{channel, payload}`` -> ``{channel, offset, epoch}``
``/api/broadcast``                 POST    ``{room|user|connection|all, message}``
``/api/presence/{room}``           GET     the room's members
``/api/disconnect``                POST    ``{connection|user, code?, reason?}``
=================================  ======  ==============================================

Every endpoint but a public ``/metrics`` needs the App's ``admin_token`` as
``Authorization: Bearer <token>``, compared in constant time.  Without a
configured token they answer 404, exactly like a path that does not exist;
a missing or wrong token gets 401.  Then: 405 for another method, 400 for a
body that is not a JSON object or lacks a field, and the transport answers
413 for a body over ``max_body_size`` (64 KiB) before any route runs.
Errors are JSON: ``{"error": code, "message": text}``.  docs/operations.md
documents each endpoint with examples.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tidewire.errors import BrokerError, RealtimeError, Unauthorized
from tidewire.protocol.close import MAX_REASON_BYTES, is_valid_received_code
from tidewire.protocol.handshake import build_reject_response
from tidewire.protocol.http import Request, Response
from tidewire.realtime.brokers.base import Target
from tidewire.realtime.metrics import DEFAULT_TOP, MAX_TOP, PROMETHEUS_CONTENT_TYPE
from tidewire.realtime.wire import WireError, check_name, encode

if TYPE_CHECKING:
    from tidewire.realtime.app import App
    from tidewire.realtime.session import Session
    from tidewire.transport import Router

__all__ = ["AdminAPI", "HTTPProblem", "MIN_ADMIN_TOKEN_LENGTH", "Published", "publish"]

#: Shortest admin token accepted: 16 characters, as HMACVerifier's secrets; a
#: short token on an HTTP port can be guessed.
MIN_ADMIN_TOKEN_LENGTH = 16

#: Largest answer publish() reads from the API (it is a few dozen bytes).
_MAX_ANSWER = 64 * 1024

_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}

Endpoint = Callable[[Request], Awaitable[tuple[int, Any] | Response]]


class _Disabled(Exception):
    """No admin token is configured: answer as if the path did not exist."""


class HTTPProblem(Exception):
    """An HTTP error answer: ``status``, a short ``code`` and a message."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        """Describe the answer; ``headers`` are added to it (Allow, WWW-Authenticate)."""
        super().__init__(message)
        self.status = status
        self.code = code
        self.headers = headers or {}


def _json_response(status: int, obj: Any, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return Response.build(
        status, body.encode("utf-8"), {**_HEADERS, **(headers or {})}, "application/json"
    )


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _body(request: Request) -> dict[str, Any]:
    """The request body as a JSON object; HTTPProblem 400 otherwise."""
    if not request.body:
        raise HTTPProblem(400, "bad_json", "empty body: send a JSON object with Content-Length")
    try:
        obj = json.loads(request.body.decode("utf-8"), parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise HTTPProblem(400, "bad_json", f"malformed JSON: {str(exc)[:80]}") from None
    if not isinstance(obj, dict):
        raise HTTPProblem(
            400, "bad_json", f"the body must be a JSON object, not {type(obj).__name__}"
        )
    return obj


def _name(value: Any, what: str) -> str:
    try:
        return check_name(value, what)
    except WireError as exc:
        raise HTTPProblem(400, "invalid", str(exc)) from None


def _one_target(body: dict[str, Any], keys: tuple[str, ...]) -> str:
    given = [key for key in keys if key in body]
    if len(given) != 1:
        raise HTTPProblem(400, "invalid", f"give exactly one of {', '.join(keys)}")
    return given[0]


def _id_string(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 255:
        raise HTTPProblem(400, "invalid", f"{what} must be a string of 1-255 characters")
    return value


class AdminAPI:
    """The admin endpoints of one App; :meth:`register` adds them to its router."""

    def __init__(self, app: App, *, admin_token: str | None, metrics_public: bool) -> None:
        """``admin_token`` None disables every endpoint but a public /metrics."""
        if admin_token is not None and (
            not isinstance(admin_token, str) or len(admin_token) < MIN_ADMIN_TOKEN_LENGTH
        ):
            raise ValueError(
                f"admin_token must be a string of at least {MIN_ADMIN_TOKEN_LENGTH} characters"
            )
        self.app = app
        self._token = admin_token.encode("utf-8") if admin_token is not None else None
        self.metrics_public = metrics_public
        self._closing: set[asyncio.Task[None]] = set()

    def register(self, router: Router) -> None:
        """Route every endpoint on ``router``."""
        routes: list[tuple[str, str, str, Endpoint, bool]] = [
            ("/metrics", "metrics", "GET", self.metrics, self.metrics_public),
            ("/stats", "stats", "GET", self.stats, False),
            ("/debug/connections/{id}", "debug", "GET", self.debug_connection, False),
            ("/api/publish", "publish", "POST", self.api_publish, False),
            ("/api/broadcast", "broadcast", "POST", self.api_broadcast, False),
            ("/api/presence/{room}", "presence", "GET", self.api_presence, False),
            ("/api/disconnect", "disconnect", "POST", self.api_disconnect, False),
        ]
        for pattern, name, method, endpoint, public in routes:
            router.add_http(pattern, self._guard(name, method, endpoint, public))

    # ------------------------------------------------------------ the guard

    def _authorize(self, request: Request, public: bool) -> None:
        if public:
            return
        if self._token is None:
            raise _Disabled
        values = request.headers.get_all("Authorization")
        scheme, _, credentials = (values[0] if len(values) == 1 else "").partition(" ")
        given = credentials.strip().encode("utf-8")
        # compare_digest takes time independent of where the tokens differ.
        if not hmac.compare_digest(given, self._token) or scheme.lower() != "bearer":
            raise HTTPProblem(
                401,
                "unauthorized",
                "send the admin token as Authorization: Bearer <token>",
                {"WWW-Authenticate": 'Bearer realm="tidewire"'},
            )

    def _guard(
        self, name: str, method: str, endpoint: Endpoint, public: bool
    ) -> Callable[[Request], Awaitable[Response]]:
        async def responder(request: Request) -> Response:
            try:
                self._authorize(request, public)
                if request.method != method:
                    raise HTTPProblem(
                        405,
                        "method_not_allowed",
                        f"{request.path_only} takes {method}, not {request.method}",
                        {"Allow": method},
                    )
                answer = await endpoint(request)
                response = answer if isinstance(answer, Response) else _json_response(*answer)
            except _Disabled:
                # The transport's own answer to a path that does not exist.
                response = build_reject_response(404, f"not found: {request.path_only}")
            except HTTPProblem as problem:
                body = {"error": problem.code, "message": str(problem)}
                response = _json_response(problem.status, body, problem.headers)
            except BrokerError as exc:
                response = _json_response(503, {"error": exc.code, "message": str(exc)})
            self.app.metrics.requests[(name, response.status)] += 1
            return response

        return responder

    # ------------------------------------------------------------ endpoints

    async def metrics(self, request: Request) -> Response:
        """``GET /metrics``: the Prometheus text exposition format."""
        body = self.app.metrics.prometheus().encode("utf-8")
        return Response.build(200, body, _HEADERS, PROMETHEUS_CONTENT_TYPE)

    async def stats(self, request: Request) -> tuple[int, Any]:
        """``GET /stats?top=N``: totals, counters and the N busiest connections and rooms."""
        values = request.query.get("top", [str(DEFAULT_TOP)])
        top = values[-1]
        if not top.isdigit() or not 1 <= int(top) <= MAX_TOP:
            raise HTTPProblem(400, "invalid", f"top must be an integer from 1 to {MAX_TOP}")
        return 200, self.app.metrics.stats(int(top))

    async def debug_connection(self, request: Request) -> tuple[int, Any]:
        """``GET /debug/connections/{id}``: one connection's stats and debug log."""
        connection_id = urllib.parse.unquote(request.path_only.rsplit("/", 1)[-1])
        export = self.app.metrics.find(connection_id)
        if export is None:
            raise HTTPProblem(404, "no_connection", f"no connection {connection_id!r} here")
        return 200, export

    async def api_publish(self, request: Request) -> tuple[int, Any]:
        """``POST /api/publish`` ``{channel, payload}``: numbered, kept in history, delivered."""
        body = _body(request)
        channel = _name(body.get("channel"), "channel")
        if "payload" not in body:
            raise HTTPProblem(400, "invalid", "missing field 'payload'")
        result = await _publish_here(self.app, channel, body["payload"])
        return 200, {"channel": result.channel, "offset": result.offset, "epoch": result.epoch}

    async def api_broadcast(self, request: Request) -> tuple[int, Any]:
        """``POST /api/broadcast``: send ``message`` to a room, a user, a connection or all."""
        body = _body(request)
        key = _one_target(body, ("room", "user", "connection", "all"))
        message = body.get("message")
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            raise HTTPProblem(400, "invalid", "message must be an object with a string 'type'")
        if not message["type"]:
            raise HTTPProblem(400, "invalid", "message 'type' must not be empty")
        exclude = body.get("exclude")
        if exclude is not None:
            exclude = _id_string(exclude, "exclude")
        app, name = self.app, ""
        if key == "all":
            if body["all"] is not True:
                raise HTTPProblem(400, "invalid", "all must be true")
            target = Target.ALL
        elif key == "room":
            target, name = Target.ROOM, _name(body["room"], "room")
        elif key == "user":
            target, name = Target.USER, _id_string(body["user"], "user")
        else:
            target, name = Target.CONNECTION, _id_string(body["connection"], "connection")
        local = [s for s in app.hub.receivers(target, name) if s.id != exclude]
        if target is Target.ROOM:
            app.metrics.room_message(name)
        await app.broker.send(target, name, encode(message), exclude)
        answer = {"target": key, "name": name or None, "local_receivers": len(local)}
        return 200, answer

    async def api_presence(self, request: Request) -> tuple[int, Any]:
        """``GET /api/presence/{room}``: members on every node (connection counts, metadata)."""
        room = _name(urllib.parse.unquote(request.path_only.rsplit("/", 1)[-1]), "room")
        listing = await self.app.broker.presence_members(room)
        return 200, {
            "room": room,
            "count": listing.count,
            "connections": listing.connections,
            "members": [member.as_dict() for member in listing.members],
        }

    async def api_disconnect(self, request: Request) -> tuple[int, Any]:
        """``POST /api/disconnect`` ``{connection|user, code?, reason?}``: close them."""
        body = _body(request)
        key = _one_target(body, ("connection", "user"))
        name = _id_string(body[key], key)
        code = body.get("code", 1000)
        if isinstance(code, bool) or not isinstance(code, int) or not is_valid_received_code(code):
            raise HTTPProblem(
                400, "invalid", "code must be 1000-1003, 1007-1014 or 3000-4999 (RFC 6455 7.4)"
            )
        reason = body.get("reason", "")
        if not isinstance(reason, str) or len(reason.encode("utf-8")) > MAX_REASON_BYTES:
            raise HTTPProblem(
                400, "invalid", f"reason must be a string of at most {MAX_REASON_BYTES} bytes"
            )
        target = Target.CONNECTION if key == "connection" else Target.USER
        sessions = [s for s in self.app.hub.receivers(target, name) if s.open]
        loop = asyncio.get_running_loop()
        for session in sessions:
            task = loop.create_task(_close(session, code, reason))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        return 200, {"disconnected": len(sessions)}


async def _close(session: Session, code: int, reason: str) -> None:
    # The closing handshake runs apart from the HTTP answer: a client that never
    # answers must not hold the request for close_timeout.
    await session.close(code, reason)


# ---------------------------------------------------------------- the client side


@dataclass(frozen=True, slots=True)
class Published:
    """Where a publication landed: its channel, its offset and the channel's epoch."""

    channel: str
    offset: int
    epoch: str


async def _publish_here(app: App, channel: str, payload: Any) -> Published:
    publication = await app.publish(channel, payload)
    epoch, _offset = await app.broker.position(channel, app.clock())
    return Published(channel, publication.offset, epoch)


async def publish(
    app_or_url: App | str,
    channel: str,
    payload: Any,
    *,
    token: str | None = None,
    timeout: float = 10.0,
) -> Published:
    """Publish ``payload`` to ``channel`` from outside the App's handlers.

    ``app_or_url`` is the App's base URL (``"http://host:8080"``): the call
    POSTs ``/api/publish`` with ``Authorization: Bearer <token>`` (the App's
    ``admin_token``) in a worker thread, so the event loop never blocks.  Given
    an App in this process, it publishes directly and needs no token.

    Raises Unauthorized (401), RealtimeError with the API's error code for any
    other refusal (``invalid``, ``bad_json``, ``broker_unavailable``, and
    ``http_<status>`` without one), ValueError for a URL that is not http(s),
    and OSError when the App cannot be reached.
    """
    if not isinstance(app_or_url, str):
        return await _publish_here(app_or_url, check_name(channel, "channel"), payload)
    url = urllib.parse.urlsplit(app_or_url)
    if url.scheme not in ("http", "https") or not url.netloc:
        raise ValueError(f"expected an http:// or https:// base URL, got {app_or_url!r}")
    if token is None:
        raise ValueError("publishing over HTTP needs the App's admin token: token=...")
    endpoint = app_or_url.rstrip("/") + "/api/publish"
    body = json.dumps({"channel": channel, "payload": payload}, allow_nan=False).encode()
    answer = await asyncio.to_thread(_post, endpoint, body, token, timeout)
    return Published(str(answer["channel"]), int(answer["offset"]), str(answer["epoch"]))


def _post(url: str, body: bytes, token: str, timeout: float) -> dict[str, Any]:
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            data = response.read(_MAX_ANSWER)
    except urllib.error.HTTPError as exc:
        with exc:
            detail = exc.read(_MAX_ANSWER)
        code, message = f"http_{exc.code}", detail.decode("utf-8", "replace").strip()
        try:
            problem = json.loads(detail)
            code, message = str(problem["error"]), str(problem["message"])
        except (ValueError, KeyError, TypeError):
            pass
        text = f"POST {url}: HTTP {exc.code}: {message}"
        if exc.code == 401:
            raise Unauthorized(text) from None
        raise RealtimeError(text, code) from None
    answer = json.loads(data)
    if not isinstance(answer, dict):
        raise RealtimeError(f"POST {url}: unexpected answer {data[:80]!r}", "bad_answer")
    return answer
