"""Requests in both directions: the client's joins, subscribes and calls, and the server's calls.

:func:`ask` waits for an open connection, sends a request and maps its fate
to one exception type: the server's error envelope as its RealtimeError, no
answer in time as ``timeout``, a drop first as ``disconnected``.
:class:`RPCHandlers` answers the server's ``rpc`` envelopes.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import Any, TypeAlias

from tidewire.errors import RealtimeError, RPCError, RPCTimeout
from tidewire.realtime.client.envelopes import error_from
from tidewire.realtime.client.link import LinkLost
from tidewire.realtime.client.state import Status
from tidewire.realtime.wire import encode

__all__ = ["RPCHandler", "RPCHandlers", "ask", "call"]

logger = logging.getLogger("tidewire.realtime.client")

#: A handler for server-to-client RPCs: ``params -> result``, plain or async.
RPCHandler: TypeAlias = Callable[[Any], Any]


async def ask(
    status: Status, envelope: dict[str, Any], expect: str, wait: float, *, started: bool
) -> dict[str, Any]:
    """Wait for an open connection, send a request, return its reply; errors raised.

    ``wait`` bounds the whole request, waiting for a (re)connection included.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    link = await status.wait_open(deadline, wait, started=started)
    try:
        reply = await link.request(envelope, expect, max(0.0, deadline - loop.time()))
    except TimeoutError:
        raise RealtimeError(
            f"no answer to {envelope['type']!r} within {wait} s", "timeout"
        ) from None
    except LinkLost:
        raise RealtimeError(
            f"the connection dropped before {envelope['type']!r} was answered", "disconnected"
        ) from None
    if reply["type"] == "error":
        raise error_from(reply)
    return reply


async def call(status: Status, method: str, params: Any, wait: float, *, started: bool) -> Any:
    """Call ``method`` on the server: its result, or RPCError / RPCTimeout (see Client.call)."""
    envelope: dict[str, Any] = {"type": "rpc", "method": method}
    if params is not None:
        envelope["params"] = params
    try:
        reply = await ask(status, envelope, "rpc_result", wait, started=started)
    except RealtimeError as exc:
        if exc.code == "timeout":
            raise RPCTimeout(f"no answer to {method!r} within {wait} s") from None
        if isinstance(exc, RPCError):
            raise
        raise RPCError(str(exc), exc.code) from None
    error = reply.get("error")
    if error is not None:
        code = error.get("code") if isinstance(error, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        raise RPCError(str(message or "the call failed"), str(code or "handler_error"))
    return reply.get("result")


class RPCHandlers:
    """The client's handlers for the server's calls, by method name."""

    __slots__ = ("_handlers",)

    def __init__(self) -> None:
        """No handlers: every call is answered ``no_such_method``."""
        self._handlers: dict[str, RPCHandler] = {}

    def register(self, method: str, handler: RPCHandler) -> RPCHandler:
        """Answer calls of ``method`` with ``handler(params)`` (replacing any earlier one)."""
        self._handlers[method] = handler
        return handler

    async def answer(self, envelope: dict[str, Any]) -> str:
        """Run the handler of an ``rpc`` envelope; its encoded ``rpc_result``.

        A RealtimeError answers with its code, any other exception with
        ``handler_error``; an unknown method with ``no_such_method``.
        """
        call_id, method = envelope.get("id"), envelope.get("method")
        handler = self._handlers.get(method) if isinstance(method, str) else None
        reply: dict[str, Any] = {"type": "rpc_result", "id": call_id}
        if handler is None:
            reply["error"] = {"code": "no_such_method", "message": f"no such method {method!r}"}
        else:
            try:
                result = handler(envelope.get("params"))
                if inspect.isawaitable(result):
                    result = await result
                reply["result"] = result
            except RealtimeError as exc:
                reply["error"] = {"code": exc.code, "message": str(exc)}
            except Exception:
                logger.exception("client rpc handler %r failed", method)
                reply["error"] = {"code": "handler_error", "message": "the method failed"}
        try:
            return encode(reply)
        except (TypeError, ValueError):
            logger.exception("client rpc handler %r returned a value JSON cannot hold", method)
            error = {"code": "handler_error", "message": "the result is not JSON"}
            return encode({"type": "rpc_result", "id": call_id, "error": error})
