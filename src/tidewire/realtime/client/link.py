"""Link: one WebSocket connection of a Client, from the handshake to its Disconnect.

Opening it (TCP, TLS, the opening handshake, then the server's ``connection``
hello), requests with ids and their replies, the app-level heartbeat, the
reader task, and the :class:`Disconnect` it ends with.  What the envelopes
mean, and restoring the session on a new link, is the Client's job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final, TypeAlias

from tidewire.errors import (
    ConnectionClosed,
    HandshakeError,
    InvalidStatus,
    RealtimeError,
)
from tidewire.protocol.close import CloseAction, CloseCode, action_for
from tidewire.realtime.client.envelopes import error_from, parse
from tidewire.realtime.wire import encode
from tidewire.transport import ClientConnection
from tidewire.transport import connect as ws_connect

__all__ = ["AttemptFailed", "Disconnect", "Link", "LinkLost", "open_link"]

logger = logging.getLogger("tidewire.realtime.client")

#: Frames read while waiting for the hello: it comes first, or an error then the close.
_MAX_FRAMES_BEFORE_HELLO: Final = 8

#: Called with each envelope the reader receives, in arrival order (None: not a v1 envelope).
Dispatch: TypeAlias = Callable[["Link", dict[str, Any] | None], None]
#: Called once when the link ended; returns the Disconnect to record (it may change the action).
OnLost: TypeAlias = Callable[["Link", "Disconnect"], "Disconnect"]


@dataclass(frozen=True, slots=True)
class Disconnect:
    """One connection ended: the close code and reason, and what the client does next.

    ``code`` is 1006 when no close frame arrived (network loss, or the server
    missed a heartbeat; ``reason`` says which).
    """

    code: int
    reason: str
    action: CloseAction


class LinkLost(Exception):
    """The connection a request was sent on is gone (mapped to ``disconnected``)."""


class AttemptFailed(Exception):
    """A connection attempt failed; ``action`` says whether trying again can help."""

    def __init__(self, error: BaseException, action: CloseAction) -> None:
        """Keep the error and the action it calls for."""
        super().__init__(str(error))
        self.error = error
        self.action = action


@dataclass(slots=True)
class _Pending:
    future: asyncio.Future[dict[str, Any]]
    expect: frozenset[str]


async def open_link(
    url: str, connect_kwargs: dict[str, Any], *, ids: Iterator[int], open_timeout: float
) -> Link:
    """Open the WebSocket connection to ``url``; AttemptFailed with its action otherwise."""
    try:
        ws = await ws_connect(url, **connect_kwargs)
    except InvalidStatus as exc:
        # 4xx answers (bad path, refused origin, 401/403) repeat the same way;
        # 408, 429 and 5xx (a draining or full server) are worth retrying.
        retry = exc.status >= HTTPStatus.INTERNAL_SERVER_ERROR or exc.status in (
            HTTPStatus.REQUEST_TIMEOUT,
            HTTPStatus.TOO_MANY_REQUESTS,
        )
        raise AttemptFailed(exc, CloseAction.BACKOFF if retry else CloseAction.STOP) from None
    except (HandshakeError, OSError, TimeoutError) as exc:
        raise AttemptFailed(exc, CloseAction.BACKOFF) from None
    return Link(ws, url, ids=ids, open_timeout=open_timeout)


class Link:
    """One WebSocket connection of the client and what hangs off it."""

    __slots__ = (
        "ws",
        "url",
        "pending",
        "pong",
        "reader",
        "heartbeat",
        "done",
        "dead_reason",
        "_ids",
        "_open_timeout",
    )

    def __init__(
        self, ws: ClientConnection, url: str, *, ids: Iterator[int], open_timeout: float
    ) -> None:
        """Wrap an open ``ws``; request ids come from ``ids`` (shared by the client's links)."""
        self.ws = ws
        self.url = url
        self.pending: dict[int, _Pending] = {}
        self.pong = asyncio.Event()
        self.reader: asyncio.Task[None] | None = None
        self.heartbeat: asyncio.Task[None] | None = None
        self.done: asyncio.Future[Disconnect] = asyncio.get_running_loop().create_future()
        self.dead_reason: str | None = None
        self._ids = ids
        self._open_timeout = open_timeout

    # ---------------------------------------------------------------- opening

    async def hello(self) -> dict[str, Any]:
        """Read the server's ``connection`` hello; a refusal raises its error."""
        ws = self.ws
        refusal: dict[str, Any] | None = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._open_timeout
        for _ in range(_MAX_FRAMES_BEFORE_HELLO):
            try:
                data = await asyncio.wait_for(ws.recv(), max(0.0, deadline - loop.time()))
            except ConnectionClosed as exc:
                error: BaseException = exc
                if refusal is not None:
                    error = error_from(refusal)
                raise AttemptFailed(error, action_for(exc.code)) from None
            envelope = parse(data)
            if envelope is None:
                continue
            if envelope["type"] == "connection":
                return envelope
            if envelope["type"] == "error":
                refusal = envelope
        raise RealtimeError("the server sent no connection hello", "bad_envelope")

    def start(
        self,
        dispatch: Dispatch,
        on_lost: OnLost,
        *,
        ping_interval: float | None,
        pong_timeout: float,
    ) -> None:
        """Start the reader (and the heartbeat unless ``ping_interval`` is None)."""
        loop = asyncio.get_running_loop()
        self.reader = loop.create_task(self._read(dispatch, on_lost))
        if ping_interval is not None:
            self.heartbeat = loop.create_task(self._heartbeat(ping_interval, pong_timeout))

    async def abandon(self) -> CloseAction:
        """End a link whose setup failed; return the action its close code calls for."""
        ws = self.ws
        if ws.close_code is None:
            ws.fail(CloseCode.GOING_AWAY, "setup failed")
        await ws.wait_closed_within(self._open_timeout)
        if self.reader is not None:
            await asyncio.wait({self.reader})
            return self.done.result().action
        return action_for(ws.close_code or CloseCode.ABNORMAL_CLOSURE)

    async def refused(self, error: RealtimeError) -> AttemptFailed:
        """The server refused our credentials: its close code (1008: stop) says what next.

        A server that keeps the connection open gets open_timeout to close it;
        then the client stops too, since the same token would be refused again.
        """
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.done), self._open_timeout)
        if self.done.done():
            return AttemptFailed(error, self.done.result().action)
        return AttemptFailed(error, CloseAction.STOP)

    # --------------------------------------------------------------- requests

    def send_nowait(self, text: str) -> None:
        """Write ``text`` now; LinkLost when the connection is already closed."""
        try:
            self.ws.send_nowait(text)
        except ConnectionClosed:
            raise LinkLost() from None

    async def request(
        self, envelope: dict[str, Any], expect: str, timeout: float | None = None
    ) -> dict[str, Any]:
        """Send ``envelope`` with a fresh id; its reply (or an ``error`` for it).

        TimeoutError after ``timeout`` (default open_timeout), LinkLost when the
        connection ends first.
        """
        request_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[request_id] = _Pending(future, frozenset({expect}))
        try:
            self.send_nowait(encode({**envelope, "id": request_id}))
            wait = self._open_timeout if timeout is None else timeout
            return await asyncio.wait_for(future, wait)
        finally:
            self.pending.pop(request_id, None)

    def resolve(self, envelope: dict[str, Any]) -> bool:
        """Hand a reply (or an ``error`` with its ``ref``) to its request; False if none waits."""
        kind = envelope["type"]
        ref = envelope.get("ref" if kind == "error" else "id")
        if not isinstance(ref, int):
            return False
        pending = self.pending.get(ref)
        if pending is None or not (kind in pending.expect or kind == "error"):
            return False
        del self.pending[ref]
        if not pending.future.done():
            pending.future.set_result(envelope)
        return True

    # ---------------------------------------------------------------- reading

    async def _read(self, dispatch: Dispatch, on_lost: OnLost) -> None:
        """Dispatch every envelope until the connection closes."""
        try:
            while True:
                data = await self.ws.recv()
                dispatch(self, parse(data))
        except ConnectionClosed:
            pass
        except Exception:
            logger.exception("client reader failed on %s", self.url)
            self.ws.fail(CloseCode.INTERNAL_ERROR, "client error")
            await self.ws.wait_closed_within(self._open_timeout)
        finally:
            self._lost(on_lost)

    def _lost(self, on_lost: OnLost) -> None:
        """The connection ended: fail its requests, work out the Disconnect, resolve ``done``."""
        if self.heartbeat is not None:
            self.heartbeat.cancel()
        for pending in self.pending.values():
            if not pending.future.done():
                pending.future.set_exception(LinkLost())
        self.pending.clear()
        if self.dead_reason is not None:
            code, reason = int(CloseCode.ABNORMAL_CLOSURE), self.dead_reason
        else:
            code = self.ws.close_code or CloseCode.ABNORMAL_CLOSURE
            reason = self.ws.close_reason or ""
        disconnect = on_lost(self, Disconnect(code, reason, action_for(code)))
        if not self.done.done():
            self.done.set_result(disconnect)

    async def _heartbeat(self, interval: float, pong_timeout: float) -> None:
        """Ping every ``interval``; no pong within ``pong_timeout``: the server is dead."""
        ping = encode({"type": "ping"})
        while not self.done.done():
            await asyncio.sleep(interval)
            self.pong.clear()
            try:
                self.ws.send_nowait(ping)
            except ConnectionClosed:
                return
            try:
                await asyncio.wait_for(self.pong.wait(), pong_timeout)
            except TimeoutError:
                self.dead_reason = f"no pong within pong_timeout={pong_timeout} s"
                logger.info("%s: %s; reconnecting", self.url, self.dead_reason)
                self.ws.fail(CloseCode.GOING_AWAY, "heartbeat timeout")
                return
