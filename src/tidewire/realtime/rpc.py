"""RPC in both directions: ids, timeouts and typed errors.

Errors on the wire are ``{"code": C, "message": S}`` with C one of
``no_such_method``, ``invalid_params``, ``handler_error``, ``timeout``,
``disconnected``, ``too_many_calls`` or an application's own
:class:`~tidewire.errors.RealtimeError` code.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from tidewire.errors import RealtimeError, RPCError, RPCTimeout

__all__ = [
    "PendingCalls",
    "error_body",
    "NO_SUCH_METHOD",
    "HANDLER_ERROR",
    "DISCONNECTED",
    "TOO_MANY_CALLS",
]

NO_SUCH_METHOD: Final = "no_such_method"
HANDLER_ERROR: Final = "handler_error"
DISCONNECTED: Final = "disconnected"
TOO_MANY_CALLS: Final = "too_many_calls"


class PendingCalls:
    """Calls this side made and waits for: one Future per id, failed on disconnect."""

    __slots__ = ("_next", "_waiting")

    def __init__(self) -> None:
        """No calls yet; ids start at 1."""
        self._next = 0
        self._waiting: dict[int, asyncio.Future[Any]] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def open(self) -> tuple[int, asyncio.Future[Any]]:
        """A new call id and the Future its result will land in."""
        self._next += 1
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[self._next] = fut
        return self._next, fut

    async def wait(self, call_id: int, fut: asyncio.Future[Any], timeout: float | None) -> Any:
        """The call's result; RPCTimeout after ``timeout`` seconds; RPCError on an error reply."""
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise RPCTimeout(f"no answer to call {call_id} within {timeout} s") from None
        finally:
            self._waiting.pop(call_id, None)

    def resolve(self, envelope: dict[str, Any]) -> bool:
        """Settle the call an ``rpc_result`` answers; False when no such call waits."""
        call_id = envelope.get("id")
        fut = self._waiting.pop(call_id, None) if isinstance(call_id, int) else None
        if fut is None or fut.done():
            return False
        error = envelope.get("error")
        if error is not None:
            fut.set_exception(RPCError(str(error.get("message", "")), str(error.get("code"))))
        else:
            fut.set_result(envelope.get("result"))
        return True

    def fail_all(self, reason: str) -> None:
        """Fail every waiting call with ``disconnected``."""
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(RPCError(reason, DISCONNECTED))
        self._waiting.clear()


def error_body(exc: BaseException) -> dict[str, str]:
    """The ``error`` object of an ``rpc_result`` for ``exc`` (internal errors stay opaque)."""
    if isinstance(exc, RealtimeError):
        return {"code": exc.code, "message": str(exc)}
    return {"code": HANDLER_ERROR, "message": "the method failed"}
